//! The console's HTTP server.
//!
//! Pages are one embedded shell (`assets/index.html`) whose script reads the path
//! (`/sessions/42`, `/approvals/7`: stable links a webhook message can point to) and
//! fetches its data from `/api/v1/...`. Those requests go to the control API's own
//! route table with the signed-in person as the peer; the console has no other way to
//! the store. What the bridge adds is the browser's part of access control: a live
//! session cookie for everything, the session's CSRF token for every POST, and the
//! approver role for the POSTs that decide (approve, deny, grant, revoke); every other
//! POST of the control API (policy reload, identity binding, sign-in URLs) stays with
//! the CLI.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::auth::{self, Role, SignIns, WebSession};
use crate::{
    approvals::ApprovalBroker,
    control::{SharedBackend, routes},
};

type Body = BoxBody<Bytes, Infallible>;

/// Connections served at once; more wait in the listener's backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a browser may take to send a request's head, and its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body: forms and small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How often the approvals stream repeats the queue when nothing changes (keeps
/// proxies from closing it, and notices a signed-out session).
const STREAM_REFRESH: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const SIGN_IN_HTML: &str = include_str!("assets/sign-in.html");
const APP_JS: &str = include_str!("assets/app.js");
const PLAYER_JS: &str = include_str!("assets/player.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const SIGNED_IN_HTML: &str = include_str!("assets/signed-in.html");

/// The pages the shell serves (their first path segment).
const PAGES: &[&str] = &["sessions", "approvals", "grants", "status"];

/// What the server needs: sign-ins, the control backend, and the approvals broker
/// (only to hear when its queue changes; the queue itself is read through the routes).
pub struct Console {
    pub sign_ins: Arc<SignIns>,
    /// Sign-in through an identity provider, when `[ui.oidc]` is set.
    pub oidc: Option<Arc<super::oidc::Oidc>>,
    pub backend: SharedBackend,
    pub approvals: Arc<ApprovalBroker>,
}

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the console: {source}")]
pub struct UiBindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the console's listener (before the programs attach, so they know its port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, UiBindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| UiBindError { addr, source })
}

/// Serves the console on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, console: Arc<Console>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "console accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let console = Arc::clone(&console);
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(64 * 1024);
            let service = service_fn(move |request| handle(request, Arc::clone(&console)));
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "console connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    console: Arc<Console>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let session = request
        .headers()
        .get(header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(auth::session_cookie)
        .and_then(|id| {
            console
                .sign_ins
                .session(id)
                .map(|session| (id.to_owned(), session))
        });
    let response = match (&method, path.as_str()) {
        (&Method::GET, "/assets/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/assets/player.js") => asset(PLAYER_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/assets/style.css") => asset(STYLE_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/") => redirect("/sessions", None),
        (&Method::GET, "/login") => {
            sign_in_page(&console, request.uri().query(), StatusCode::OK, "")
        }
        (&Method::GET, "/oidc/login") => oidc_start(&console).await,
        (&Method::GET, "/oidc/callback") => oidc_callback(&request, &console).await,
        (&Method::POST, "/login") => sign_in(request, &console).await,
        (&Method::POST, "/logout") => match session {
            Some((id, session)) if csrf_ok(&request, &session) => {
                console.sign_ins.end(&id);
                let mut response = json(StatusCode::OK, br#"{"signed_out":true}"#.to_vec());
                set_cookie(&mut response, &console.sign_ins.clearing_cookie());
                response
            }
            Some(_) => error(StatusCode::FORBIDDEN, "missing or wrong CSRF token"),
            None => error(StatusCode::UNAUTHORIZED, "not signed in"),
        },
        (&Method::GET, "/api/me") => match session {
            Some((_, session)) => me(&session),
            None => error(StatusCode::UNAUTHORIZED, "not signed in"),
        },
        (&Method::GET, "/api/approvals/stream") => match session {
            Some((id, _)) => approvals_stream(console, id),
            None => error(StatusCode::UNAUTHORIZED, "not signed in"),
        },
        (_, api) if api.starts_with("/api/v1/") => match session {
            Some((_, session)) => bridge(request, &console, &session).await,
            None => error(StatusCode::UNAUTHORIZED, "not signed in"),
        },
        (&Method::GET, page) if is_page(page) => match session {
            Some(_) => html(StatusCode::OK, INDEX_HTML.to_owned()),
            None => sign_in_page(&console, None, StatusCode::UNAUTHORIZED, ""),
        },
        _ => error(StatusCode::NOT_FOUND, "no such page"),
    };
    Ok(with_security_headers(response))
}

fn is_page(path: &str) -> bool {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default();
    let rest: Vec<&str> = segments.collect();
    PAGES.contains(&first)
        && match rest.as_slice() {
            [] => true,
            [id] => matches!(first, "sessions" | "approvals") && id.parse::<u64>().is_ok(),
            _ => false,
        }
}

/// `GET /login?token=...`: a page with a button that uses the token, so that a link
/// preview or prefetch cannot use it up.
fn sign_in_page(
    console: &Console,
    query: Option<&str>,
    status: StatusCode,
    message: &str,
) -> Response<Body> {
    let token = query
        .and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "token")
                .map(|(_, value)| value.into_owned())
        })
        .filter(|token| {
            token
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
        .unwrap_or_default();
    let page = SIGN_IN_HTML
        .replace("{{token}}", &token)
        .replace(
            "{{hidden_form}}",
            if token.is_empty() { "hidden" } else { "" },
        )
        .replace(
            "{{hidden_oidc}}",
            if console.oidc.is_some() { "" } else { "hidden" },
        )
        .replace("{{message}}", &escape_html(message));
    html(status, page)
}

/// `POST /login`: uses the one-time token and starts a browser session.
async fn sign_in(request: Request<Incoming>, console: &Console) -> Response<Body> {
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let token = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    match console.sign_ins.redeem(&token) {
        Some((id, _)) => redirect("/sessions", Some(&console.sign_ins.cookie(&id))),
        None => {
            tracing::warn!("console sign-in refused: the URL was used, expired or unknown");
            sign_in_page(
                console,
                None,
                StatusCode::FORBIDDEN,
                "This sign-in link was already used or has expired. Run `sluice ui login` for a new one.",
            )
        }
    }
}

/// The cookie that ties a sign-in at the identity provider to the browser that started
/// it (SameSite=Lax: it must come back on the provider's redirect, a cross-site GET).
const OIDC_STATE_COOKIE: &str = "sluice_oidc_state";

/// `GET /oidc/login`: off to the identity provider.
async fn oidc_start(console: &Console) -> Response<Body> {
    let Some(oidc) = &console.oidc else {
        return error(StatusCode::NOT_FOUND, "no identity provider is configured");
    };
    match oidc.authorization_url().await {
        Ok((url, state)) => {
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::SEE_OTHER;
            if let Ok(location) = HeaderValue::from_str(&url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            set_cookie(
                &mut response,
                &format!(
                    "{OIDC_STATE_COOKIE}={state}; Path=/oidc; HttpOnly; SameSite=Lax; Max-Age=600{}",
                    if console.sign_ins.secure() {
                        "; Secure"
                    } else {
                        ""
                    }
                ),
            );
            response
        }
        Err(message) => {
            tracing::warn!(%message, "cannot start an OIDC sign-in");
            sign_in_page(console, None, StatusCode::BAD_GATEWAY, &message)
        }
    }
}

/// `GET /oidc/callback`: the provider sends the browser back with a code.
async fn oidc_callback(request: &Request<Incoming>, console: &Console) -> Response<Body> {
    let Some(oidc) = &console.oidc else {
        return error(StatusCode::NOT_FOUND, "no identity provider is configured");
    };
    let query = request.uri().query().unwrap_or_default();
    let state = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "state")
        .map(|(_, value)| value.into_owned());
    let bound = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == OIDC_STATE_COOKIE && Some(value) == state.as_deref());
    let refuse = |message: String| {
        tracing::warn!(%message, "OIDC sign-in refused");
        sign_in_page(console, None, StatusCode::FORBIDDEN, &message)
    };
    if !bound {
        return refuse("this sign-in was not started in this browser; start again".into());
    }
    match oidc.finish(query).await {
        Ok(user) => {
            tracing::info!(
                user = %user.display_name(),
                role = ?user.role,
                identity = ?user.identity,
                "console sign-in through the identity provider"
            );
            match console.sign_ins.start_session(user) {
                // A page, not a redirect: after the provider's cross-site redirect, the
                // browser sends the SameSite=Strict cookie only on a same-site navigation.
                Some((id, _)) => {
                    let mut response = html(StatusCode::OK, SIGNED_IN_HTML.to_owned());
                    set_cookie(&mut response, &console.sign_ins.cookie(&id));
                    set_cookie(
                        &mut response,
                        &format!(
                            "{OIDC_STATE_COOKIE}=; Path=/oidc; HttpOnly; SameSite=Lax; Max-Age=0"
                        ),
                    );
                    response
                }
                None => refuse("too many console sessions".into()),
            }
        }
        Err(message) => refuse(message),
    }
}

fn me(session: &WebSession) -> Response<Body> {
    let body = serde_json::json!({
        "user": session.user,
        "csrf": session.csrf,
    });
    json(StatusCode::OK, body.to_string().into_bytes())
}

fn csrf_ok(request: &Request<Incoming>, session: &WebSession) -> bool {
    session.csrf_matches(
        request
            .headers()
            .get(auth::CSRF_HEADER)
            .and_then(|value| value.to_str().ok()),
    )
}

/// Whether a POST to control route `path` (`/v1/...`) is one an approver may make from
/// the console.
fn is_decision(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["v1", "approvals", _, "approve" | "deny"]
            | ["v1", "grants"]
            | ["v1", "grants", _, "revoke"]
    )
}

/// `/api/v1/...` → the control route `/v1/...`, as the signed-in person.
async fn bridge(
    request: Request<Incoming>,
    console: &Console,
    session: &WebSession,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request
        .uri()
        .path()
        .strip_prefix("/api")
        .unwrap_or_default()
        .to_owned();
    let query = request.uri().query().map(str::to_owned);
    match method {
        Method::GET => {}
        Method::POST => {
            if !csrf_ok(&request, session) {
                tracing::warn!(user = %session.user.display_name(), %path, "console request refused: missing or wrong CSRF token");
                return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
            }
            if !is_decision(&path) {
                return error(
                    StatusCode::FORBIDDEN,
                    "this request is not available through the console; use the sluice CLI",
                );
            }
            if session.user.role != Role::Approver {
                tracing::warn!(user = %session.user.display_name(), %path, "console request refused: viewers cannot decide");
                return error(
                    StatusCode::FORBIDDEN,
                    "viewers cannot approve, deny, grant or revoke",
                );
            }
        }
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST"),
    }
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let peer = session.user.peer();
    let backend = Arc::clone(&console.backend);
    let dispatched = tokio::task::spawn_blocking(move || {
        routes::dispatch(
            &method,
            &path,
            query.as_deref(),
            body,
            &peer,
            backend.as_ref(),
        )
    })
    .await;
    let reply = match dispatched {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => error.into_reply(),
        Err(_) => routes::ApiError::internal("the handler failed").into_reply(),
    };
    json(reply.status, reply.body)
}

/// `GET /api/approvals/stream`: the queue as server-sent events, sent again whenever it
/// changes, until the browser goes away or its session ends.
fn approvals_stream(console: Arc<Console>, session_id: String) -> Response<Body> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    let mut changes = console.approvals.subscribe();
    tokio::spawn(async move {
        loop {
            let Some(session) = console.sign_ins.session(&session_id) else {
                return;
            };
            // The queue and the last decisions, through the control routes.
            let mut events = String::new();
            for (event, path) in [
                ("approvals", "/v1/approvals"),
                ("decided", "/v1/approvals/decided"),
            ] {
                let peer = session.user.peer();
                let backend = Arc::clone(&console.backend);
                let listed = tokio::task::spawn_blocking(move || {
                    routes::dispatch(
                        &Method::GET,
                        path,
                        None,
                        Bytes::new(),
                        &peer,
                        backend.as_ref(),
                    )
                })
                .await;
                let data = match listed {
                    Ok(Ok(reply)) => String::from_utf8_lossy(&reply.body).trim().to_owned(),
                    _ => return,
                };
                events.push_str(&format!("event: {event}\ndata: {data}\n\n"));
            }
            if sender.send(Bytes::from(events)).await.is_err() {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(STREAM_REFRESH) => {}
                () = sender.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or broken",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body took too long",
        )),
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut response = Response::new(full(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": message })
            .to_string()
            .into_bytes(),
    )
}

fn redirect(location: &'static str, cookie: Option<&str>) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(cookie) = cookie {
        set_cookie(&mut response, cookie);
    }
    response
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Scripts, styles and connections only from the console itself; never framed; the
/// sign-in token never leaves in a Referer.
fn with_security_headers(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_stable_paths() {
        for page in [
            "/sessions",
            "/sessions/42",
            "/approvals",
            "/approvals/7",
            "/grants",
            "/status",
        ] {
            assert!(is_page(page), "{page}");
        }
        for other in ["/sessions/x", "/grants/3", "/sessions/4/5", "/secrets", "/"] {
            assert!(!is_page(other), "{other}");
        }
    }

    #[test]
    fn only_decisions_are_posted_through_the_console() {
        assert!(is_decision("/v1/approvals/3/approve"));
        assert!(is_decision("/v1/approvals/3/deny"));
        assert!(is_decision("/v1/grants"));
        assert!(is_decision("/v1/grants/9/revoke"));
        for other in [
            "/v1/policy/reload",
            "/v1/identity/runs",
            "/v1/ui/login",
            "/v1/policy/explain",
        ] {
            assert!(!is_decision(other), "{other}");
        }
    }
}
