//! The control server's accept loop and per-connection HTTP handling.
//!
//! Each connection is authorized once, when accepted, then served by hyper on its own
//! task, so a slow or malicious client holds up nobody else. Handlers run on blocking
//! threads because the backend does store I/O.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinSet,
};
use tracing::{debug, info, warn};

use super::{
    SharedBackend,
    auth::{Authorizer, PeerInfo, Refusal},
    routes::{self, ApiError, Reply},
};

/// Largest request body accepted; requests are small JSON documents.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Connections served at once; further ones are closed right away.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's head, and its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (EMFILE and the like) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the control API on `listener` until `shutdown` completes, then lets in-flight
/// requests finish (up to a few seconds) and returns. The socket file is left in place.
pub async fn serve(
    listener: UnixListener,
    authorizer: Authorizer,
    backend: SharedBackend,
    shutdown: impl Future<Output = ()>,
) {
    let authorizer = Arc::new(authorizer);
    let (stop_sender, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => {
                    warn!(limit = MAX_CONNECTIONS, "too many control connections, closing a new one");
                    drop(stream);
                }
                Ok((stream, _)) => {
                    connections.spawn(connection(
                        stream,
                        Arc::clone(&authorizer),
                        Arc::clone(&backend),
                        stop.clone(),
                    ));
                }
                Err(error) => {
                    warn!(%error, "control socket accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    warn!(%error, "control connection task failed");
                }
            }
        }
    }
    info!(open = connections.len(), "control server shutting down");
    // Ignored: every receiver may already be gone.
    let _ = stop_sender.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "control connections still open after the grace period, aborting them"
        );
        connections.shutdown().await;
    }
}

/// What the connection's peer may do, decided once at accept.
#[derive(Clone)]
enum Access {
    Allowed(Arc<PeerInfo>),
    Refused(Arc<Refusal>),
}

async fn connection(
    stream: UnixStream,
    authorizer: Arc<Authorizer>,
    backend: SharedBackend,
    mut stop: watch::Receiver<bool>,
) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(error) => {
            warn!(%error, "cannot read the control peer's credentials, closing");
            return;
        }
    };
    let decision = tokio::task::spawn_blocking(move || {
        authorizer.authorize(cred.uid(), cred.gid(), cred.pid())
    })
    .await;
    let access = match decision {
        Ok(Ok(peer)) => {
            debug!(peer = %peer.display_name(), pid = ?peer.pid, "control connection");
            Access::Allowed(Arc::new(peer))
        }
        Ok(Err(refusal)) => {
            warn!(
                peer = %refusal.peer.display_name(),
                pid = ?refusal.peer.pid,
                reason = %refusal.reason,
                "control connection refused"
            );
            let refusal = Arc::new(refusal);
            let report = Arc::clone(&refusal);
            let backend = Arc::clone(&backend);
            let reported = tokio::task::spawn_blocking(move || {
                backend.refused(&report.peer, &report.reason);
            })
            .await;
            if let Err(error) = reported {
                warn!(%error, "reporting a refused control connection failed");
            }
            Access::Refused(refusal)
        }
        Err(error) => {
            warn!(%error, "authorizing a control connection failed, closing");
            return;
        }
    };

    let service = service_fn(move |request| handle(request, access.clone(), Arc::clone(&backend)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(error) = result {
        debug!(%error, "control connection ended with an error");
    }
}

/// Completes when the server asks connections to finish (or is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // Either outcome means stop; the guard must not live across an await.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

async fn handle(
    request: Request<Incoming>,
    access: Access,
    backend: SharedBackend,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer = match access {
        Access::Allowed(peer) => peer,
        Access::Refused(refusal) => {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "access to the sluice control API denied: {}",
                    refusal.reason
                ),
            );
            return Ok(respond(error.into_reply(), &[], true));
        }
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(error) => return Ok(respond(error.into_reply(), &[], true)),
    };

    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let dispatched = tokio::task::spawn_blocking(move || {
        routes::dispatch(
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            body,
            &peer,
            backend.as_ref(),
        )
    })
    .await;
    let (reply, allow) = match dispatched {
        Ok(Ok(reply)) => (reply, Vec::new()),
        Ok(Err(mut error)) => {
            let allow = std::mem::take(&mut error.allow);
            (error.into_reply(), allow)
        }
        Err(error) => {
            warn!(%error, %method, %uri, "control handler failed");
            (
                ApiError::internal("the handler failed").into_reply(),
                Vec::new(),
            )
        }
    };
    debug!(%method, %uri, status = reply.status.as_u16(), "control request");
    Ok(respond(reply, &allow, false))
}

/// The body, at most [`MAX_BODY_BYTES`], within [`READ_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let collected =
        tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body took too long",
                )
            })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )),
        Err(error) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {error}"
        ))),
    }
}

fn respond(reply: Reply, allow: &[hyper::Method], close: bool) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !allow.is_empty() {
        let methods: Vec<&str> = allow.iter().map(hyper::Method::as_str).collect();
        if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
            headers.insert(header::ALLOW, value);
        }
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
