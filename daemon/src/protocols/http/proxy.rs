//! The proxy loop of one HTTP(S) connection: recognise, intercept, then judge, forward
//! and record each request.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Body, Frame, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    sync::Mutex,
};

use super::{
    ca::LocalCa,
    h1guard::H1RequestGuard,
    h2guard::{H2RequestGuard, MALFORMED_MARKER},
    request::{
        METHOD_OVERRIDE_HEADERS, form_method, host_without_port, method_class, normalise_path,
        query_parameter_names,
    },
    scrub::{Scrubber, StreamScrubber},
    tls,
};
use crate::{
    approvals::{Outcome, Resolution},
    events::{Activity, Event},
    masking::Masker,
    pipeline::{ByteStream, Details, Operation, Pipeline, SessionInfo, approval_record},
    policy::{Action, Decision, TlsMode},
    relay::ByteCounts,
    store::{ApprovalRecord, Durability, StatementRecord},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long the agent has to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a form body read to find a `_method` field.
const MAX_FORM_BODY: usize = 1024 * 1024;
/// The most of a response body buffered to mask it; above it the response is refused.
const MAX_MASKED_BODY: usize = 8 * 1024 * 1024;

/// What the first bytes of a connection say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    TlsClientHello,
    Http1,
    H2Preface,
    Connect,
    Other,
}

/// Recognises a connection by its first bytes; `None` when more bytes are needed.
pub fn recognise(bytes: &[u8]) -> Option<FirstBytes> {
    let first = *bytes.first()?;
    if first == 0x16 {
        return Some(FirstBytes::TlsClientHello);
    }
    let token_len = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match bytes.get(token_len) {
        None if token_len < 16 => None,
        Some(b' ') if token_len > 0 => Some(match &bytes[..token_len] {
            b"PRI" => FirstBytes::H2Preface,
            b"CONNECT" => FirstBytes::Connect,
            _ => FirstBytes::Http1,
        }),
        _ => Some(FirstBytes::Other),
    }
}

/// Runs the connection to its end and returns the close reason and the daemon's own
/// address on the upstream connection. The handler dials itself: a `CONNECT` is
/// answered by sluice (the proxy the agent named), never dialled.
pub async fn serve(
    session: SessionInfo,
    ca: Arc<LocalCa>,
    agent: Box<dyn ByteStream>,
    dialect: Option<Arc<dyn Dialect>>,
) -> (String, Option<String>) {
    let mut agent = agent;
    let counts = Arc::clone(&session.counts);
    let mut first = Vec::with_capacity(64);
    let kind = loop {
        if let Some(kind) = recognise(&first) {
            break kind;
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout(FIRST_BYTES_TIMEOUT, agent.read(&mut chunk)).await {
            Ok(Ok(0)) => return ("closed before sending anything".into(), None),
            Ok(Ok(read)) => first.extend_from_slice(&chunk[..read]),
            Ok(Err(error)) => return (format!("agent i/o: {error}"), None),
            Err(_) => {
                return (
                    "protocol_error: the agent sent nothing to recognise".into(),
                    None,
                );
            }
        }
    };
    if kind == FirstBytes::TlsClientHello
        && session.host_name.is_some()
        && let Err(reason) = check_server_name(&session, &mut first, &mut agent).await
    {
        let shared = Shared::new(session, ca);
        shared.record_refusal("", &reason).await;
        tracing::warn!(%reason, "TLS server name refused");
        return (format!("denied: {reason}"), None);
    }
    let mut shared = Shared::new(session, ca);
    shared.dialect = dialect;
    let shared = Arc::new(shared);
    if kind == FirstBytes::Connect {
        let reason = connect_tunnel(&shared, first, agent).await;
        return (reason, None);
    }
    if kind == FirstBytes::Other {
        shared
            .record_refusal(
                "",
                "the connection is neither TLS nor HTTP (an http resource only carries HTTP)",
            )
            .await;
        tracing::warn!("not HTTP on an http resource: refused");
        return ("protocol_error: not HTTP on an http resource".into(), None);
    }
    let upstream = match tokio::time::timeout(
        shared.session.upstream_connect_timeout,
        tokio::net::TcpStream::connect(shared.session.upstream_addr),
    )
    .await
    {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => return (format!("upstream_unreachable: {error}"), None),
        Err(_) => return ("upstream_unreachable: timed out".into(), None),
    };
    let _ = upstream.set_nodelay(true);
    let upstream_local = upstream.local_addr().ok().map(|addr| addr.to_string());
    let upstream: Box<dyn ByteStream> = Box::new(upstream);
    let tally = Arc::new(Tally::default());
    let reason = dispatch(shared, kind, first, agent, upstream, &counts, &tally).await;
    counts
        .up
        .fetch_add(tally.up.load(Ordering::Relaxed), Ordering::Relaxed);
    counts
        .down
        .fetch_add(tally.down.load(Ordering::Relaxed), Ordering::Relaxed);
    (reason, upstream_local)
}

/// The most of a ClientHello read to find its server name: one full TLS record.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// For a resource matched by host name: reads the rest of the ClientHello into
/// `first` and checks that it asks for one of the resource's names that this agent
/// resolved to the address. The session's own look at the first bytes gives up after a
/// moment (a server may speak first), so an agent that waits before its ClientHello is
/// checked here, before the upstream is dialled with the name it asked for.
async fn check_server_name(
    session: &SessionInfo,
    first: &mut Vec<u8>,
    agent: &mut Box<dyn ByteStream>,
) -> Result<(), String> {
    loop {
        if let Some(opening) = crate::dns::sni::parse(first) {
            return match crate::dns::server_name_refusal(
                &opening,
                &session.resource,
                &session.host_names,
            ) {
                None => Ok(()),
                Some(reason) => Err(reason),
            };
        }
        if first.len() >= MAX_CLIENT_HELLO {
            return Err("the ClientHello is too large to read its server name".into());
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(FIRST_BYTES_TIMEOUT, agent.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("the agent closed before its ClientHello was complete".into()),
            Ok(Ok(read)) => first.extend_from_slice(chunk.get(..read).unwrap_or_default()),
            Ok(Err(error)) => return Err(format!("agent i/o: {error}")),
            Err(_) => return Err("the ClientHello did not complete in time".into()),
        }
    }
}

/// The most of a CONNECT request head read.
const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// `CONNECT host:port`, from agents that honour HTTPS_PROXY: what follows is a new
/// connection to that destination, judged again and recorded as a session of its own
/// (linked to this one), then served by its resource's protocol (intercepted again
/// when it is an `http` resource).
async fn connect_tunnel(
    shared: &Shared,
    mut head: Vec<u8>,
    mut agent: Box<dyn ByteStream>,
) -> String {
    let session = &shared.session;
    shared
        .session
        .counts
        .up
        .fetch_add(head.len() as u64, Ordering::Relaxed);
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_CONNECT_HEAD {
            return "protocol_error: CONNECT head too long".into();
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(FIRST_BYTES_TIMEOUT, agent.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => {
                session.counts.up.fetch_add(read as u64, Ordering::Relaxed);
                head.extend_from_slice(&chunk[..read]);
            }
            _ => return "protocol_error: incomplete CONNECT request".into(),
        }
    };
    let leftover = head.split_off(end);
    if let Err(problem) = check_head(&head) {
        let _ = agent.write_all(&raw_response(400, problem)).await;
        shared.record_refusal("CONNECT", problem).await;
        return format!("protocol_error: {problem}");
    }
    let line = String::from_utf8_lossy(&head);
    let authority = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let host = super::request::host_without_port(&authority);
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok());
    let Some(port) = port.filter(|_| !host.is_empty()) else {
        let _ = agent
            .write_all(&raw_response(400, "CONNECT needs host:port"))
            .await;
        shared
            .record_refusal("CONNECT", "CONNECT needs host:port")
            .await;
        return "protocol_error: CONNECT without host:port".into();
    };
    let (destination, host_name) = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => (std::net::SocketAddr::new(ip, port), None),
        Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(mut addresses) => match addresses.next() {
                Some(address) => (address, Some(host.clone())),
                None => {
                    let _ = agent
                        .write_all(&raw_response(502, "no address for the host"))
                        .await;
                    return format!("http_connect: no address for {host}");
                }
            },
            Err(error) => {
                let _ = agent
                    .write_all(&raw_response(502, "the host does not resolve"))
                    .await;
                return format!("http_connect: {host} does not resolve: {error}");
            }
        },
    };
    let target = crate::pipeline::NestedTarget {
        destination,
        host_name,
        via: "http_connect",
    };
    match session.nested.open(session, target).await {
        Ok(nested) => {
            let id = nested.id();
            let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
            if let Err(error) = agent.write_all(established).await {
                return format!("agent i/o: {error}");
            }
            session
                .counts
                .down
                .fetch_add(established.len() as u64, Ordering::Relaxed);
            tracing::info!(tunnel_session = id, %authority, "CONNECT tunnel opened");
            let reason = nested.serve(Box::new(Prefixed::new(leftover, agent))).await;
            format!("http_connect: tunnel session {id}: {reason}")
        }
        Err(crate::pipeline::NestedRefusal::Denied { rule, reason }) => {
            let body =
                serde_json::json!({ "error": "denied by sluice", "rule": rule, "reason": reason });
            let _ = agent.write_all(&raw_json_response(403, &body)).await;
            format!("http_connect: {authority} denied by rule `{rule}`")
        }
        Err(refusal) => {
            let _ = agent
                .write_all(&raw_response(502, &refusal.to_string()))
                .await;
            format!("http_connect: {refusal}")
        }
    }
}

fn raw_response(status: u16, reason: &str) -> Vec<u8> {
    raw_json_response(
        status,
        &serde_json::json!({ "error": "refused by sluice", "reason": reason }),
    )
}

fn raw_json_response(status: u16, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    let text = StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error");
    format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn dispatch(
    shared: Arc<Shared>,
    kind: FirstBytes,
    first: Vec<u8>,
    mut agent: Box<dyn ByteStream>,
    upstream: Box<dyn ByteStream>,
    counts: &ByteCounts,
    tally: &Arc<Tally>,
) -> String {
    let passthrough = shared.session.resource.tls.mode == TlsMode::Passthrough;
    match kind {
        FirstBytes::TlsClientHello if passthrough => {
            let mut upstream = upstream;
            counts.up.fetch_add(first.len() as u64, Ordering::Relaxed);
            if let Err(error) = upstream.write_all(&first).await {
                return format!("upstream i/o: {error}");
            }
            tracing::info!("TLS passthrough (resource says tls.mode = passthrough)");
            match tokio::io::copy_bidirectional(&mut agent, &mut upstream).await {
                Ok((up, down)) => {
                    counts.up.fetch_add(up, Ordering::Relaxed);
                    counts.down.fetch_add(down, Ordering::Relaxed);
                    "tls_passthrough: closed".into()
                }
                Err(error) => format!("tls_passthrough: {error}"),
            }
        }
        FirstBytes::TlsClientHello => {
            let agent = Counted::new(Prefixed::new(first, agent), tally);
            intercept_tls(shared, agent, upstream).await
        }
        FirstBytes::Http1 => {
            let agent = Counted::new(Prefixed::new(first, agent), tally);
            serve_plain(shared, agent, upstream, false).await
        }
        FirstBytes::H2Preface => {
            let agent = Counted::new(Prefixed::new(first, agent), tally);
            serve_plain(shared, agent, upstream, true).await
        }
        FirstBytes::Connect | FirstBytes::Other => {
            "protocol_error: not served here (recognised before dialling)".into()
        }
    }
}

async fn serve_plain<S>(
    shared: Arc<Shared>,
    agent: S,
    upstream: Box<dyn ByteStream>,
    h2: bool,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sender = match Upstream::handshake(upstream, h2).await {
        Ok(sender) => sender,
        Err(error) => return format!("upstream i/o: {error}"),
    };
    let connection = Connection {
        shared,
        upstream: sender,
        sni: None,
        scheme: "http",
        upgrades: Default::default(),
    };
    connection.serve(agent, h2).await
}

async fn intercept_tls<S>(shared: Arc<Shared>, agent: S, upstream: Box<dyn ByteStream>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), agent);
    let start = match acceptor.await {
        Ok(start) => start,
        Err(error) => {
            shared
                .record_refusal("", &format!("not a TLS ClientHello: {error}"))
                .await;
            return format!("protocol_error: bad ClientHello: {error}");
        }
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let resource = &shared.session.resource;
    let roots = match tls::roots_for(resource.tls.ca_file.as_deref()) {
        Ok(roots) => roots,
        Err(error) => return format!("upstream_tls: {error}"),
    };
    // A client-certificate credential is presented in the upstream handshake itself.
    let identity = match resource
        .credential
        .as_ref()
        .and_then(|name| shared.session.credentials.get(name))
        .filter(|credential| credential.is_client_certificate())
    {
        Some(credential) => match (&credential.cert_file, &credential.key_file) {
            (Some(cert_file), Some(key_file)) => match tls::client_identity(cert_file, key_file) {
                Ok(identity) => Some(identity),
                Err(error) => {
                    shared
                        .record_refusal("", &format!("credential_invalid: {error}"))
                        .await;
                    return format!("upstream_tls: {error}");
                }
            },
            _ => None,
        },
        None => None,
    };
    let client_config = match tls::client_config(roots, tls::usable_alpn(&offered), identity) {
        Ok(config) => config,
        Err(error) => return format!("upstream_tls: {error}"),
    };
    let Some(name) = tls::upstream_name(
        sni.as_deref(),
        resource.tls.server_name.as_deref(),
        shared.session.upstream_addr.ip(),
    ) else {
        return "protocol_error: the SNI is not a valid server name".into();
    };
    let upstream = match tokio_rustls::TlsConnector::from(client_config)
        .connect(name, upstream)
        .await
    {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%error, "upstream certificate not verified: the agent's handshake is refused");
            shared
                .record_refusal(
                    "",
                    &format!("the upstream's certificate was not verified: {error}"),
                )
                .await;
            return format!("upstream_tls: certificate not verified: {error}");
        }
    };
    let chosen = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let leaf_name = sni
        .clone()
        .unwrap_or_else(|| shared.session.upstream_addr.ip().to_string());
    let leaf = match shared.ca.leaf(&leaf_name) {
        Ok(leaf) => leaf,
        Err(error) => return format!("local_ca: {error}"),
    };
    let server_config = match tls::server_config(leaf, chosen.clone()) {
        Ok(config) => config,
        Err(error) => return format!("local_ca: {error}"),
    };
    let agent = match start.into_stream(server_config).await {
        Ok(agent) => agent,
        Err(error) if tls::is_distrust(&error) => {
            tracing::warn!(%error, "client does not trust the sluice CA");
            shared
                .record_refusal(
                    "",
                    &format!("client does not trust the sluice CA ({error}): give it the bundle `sluice run` sets in SSL_CERT_FILE, or run `sluice ca install`"),
                )
                .await;
            return format!("client does not trust the sluice CA: {error}");
        }
        Err(error) => return format!("agent_tls: {error}"),
    };
    let h2 = chosen.as_deref() == Some(tls::H2);
    let sender = match Upstream::handshake(upstream, h2).await {
        Ok(sender) => sender,
        Err(error) => return format!("upstream i/o: {error}"),
    };
    let connection = Connection {
        shared,
        upstream: sender,
        sni,
        scheme: "https",
        upgrades: Default::default(),
    };
    connection.serve(agent, h2).await
}

/// The client end towards the upstream.
#[derive(Clone)]
enum Upstream {
    H1(Arc<Mutex<hyper::client::conn::http1::SendRequest<ProxyBody>>>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

impl Upstream {
    async fn handshake<S>(io: S, h2: bool) -> Result<Self, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(io))
                    .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream h2 connection ended");
                }
            });
            Ok(Self::H2(sender))
        } else {
            let (sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "upstream connection ended");
                }
            });
            Ok(Self::H1(Arc::new(Mutex::new(sender))))
        }
    }

    async fn send(&self, request: Request<ProxyBody>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Self::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await
            }
            Self::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }
}

/// What every request of the connection shares.
struct Shared {
    session: SessionInfo,
    ca: Arc<LocalCa>,
    seq: AtomicU64,
    /// A protocol spoken over HTTP (Kubernetes) that judges and answers requests in
    /// its own terms; `None` for plain HTTP.
    dialect: Option<Arc<dyn Dialect>>,
    /// The injected header and the scrubber of its secrets, made at the connection's
    /// first forwarded request: the resource and the credentials are the session's, so
    /// every request of the connection would build the same (the scrubber's forms took
    /// about a hundred allocations per request).
    injection: std::sync::OnceLock<Result<Injection, String>>,
    /// Compiled mask profiles by name, with the policy generation each was built from
    /// (a reload reaches the connection at its next request), as the pipeline keeps
    /// them for SQL sessions.
    maskers: std::sync::Mutex<std::collections::HashMap<String, (u64, Arc<Masker>)>>,
}

/// A credential injected into every request of a connection, and the scrubber of its
/// secrets.
struct Injection {
    header: (HeaderName, HeaderValue),
    scrubber: Scrubber,
}

/// A protocol carried over HTTP that judges, answers and filters requests in its own
/// terms (Kubernetes). Everything else (interception, upstream verification, credential
/// injection and scrubbing, holds, records) stays this module's.
pub trait Dialect: Send + Sync {
    /// Judges one request whose path is already normalised; `Err` refuses it with a
    /// status and a reason.
    fn judge(
        &self,
        session: &SessionInfo,
        request: &hyper::http::request::Parts,
        path: &str,
    ) -> Result<Judged, (StatusCode, String)>;
    /// The JSON body of an answer sluice gives instead of the upstream's (a denial
    /// names its rule).
    fn answer(&self, status: StatusCode, rule: Option<&str>, reason: &str) -> serde_json::Value;
}

/// A dialect's judgement of one request.
pub struct Judged {
    pub decision: Decision,
    /// The request as the pipeline records it (bytes and status are added here).
    pub operation: Operation,
    pub exchange: Box<dyn Exchange>,
}

/// What a dialect does to one allowed request on its way.
pub trait Exchange: Send {
    /// Adjusts the headers sent upstream (after hop-by-hop removal, before injection).
    fn upstream_headers(&mut self, _headers: &mut HeaderMap) {}
    /// A filter for the response body; `Err` refuses the response.
    fn response_filter(
        &mut self,
        _status: StatusCode,
        _headers: &HeaderMap,
    ) -> Result<Option<Box<dyn BodyFilter>>, String> {
        Ok(None)
    }
    /// Relays an upgraded connection (101) to its end; by default, bytes both ways. The
    /// request's record is finished with what it returns, once it ends.
    fn relay(
        self: Box<Self>,
        agent: hyper::upgrade::Upgraded,
        upstream: hyper::upgrade::Upgraded,
    ) -> Pin<Box<dyn std::future::Future<Output = Relayed> + Send>> {
        Box::pin(async move {
            let mut agent = TokioIo::new(agent);
            let mut upstream = TokioIo::new(upstream);
            let result = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
            let (bytes_up, bytes_down) = result.as_ref().map_or((0, 0), |counts| *counts);
            Relayed {
                bytes_up,
                bytes_down,
                error: result.err().map(|error| error.to_string()),
                ..Relayed::default()
            }
        })
    }
}

/// What a dialect's relay of an upgraded connection saw, for the request's record.
#[derive(Debug, Default)]
pub struct Relayed {
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The record's tag instead of the HTTP status (`exit 3`).
    pub tag: Option<String>,
    /// Added to the record's parameters (`stream=websocket ...`, `stdout=12`).
    pub parameters: Vec<String>,
    pub error: Option<String>,
    /// A terminal recording (asciicast v3), stored with the request's record.
    pub recording: Option<Vec<u8>>,
}

/// Rewrites a response body as it streams.
pub trait BodyFilter: Send {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8>;
    fn finish(&mut self) -> Vec<u8>;
    /// What was masked or withheld, by kind, for the record.
    fn masked(&self) -> std::collections::BTreeMap<String, u64>;
}

impl Shared {
    fn new(session: SessionInfo, ca: Arc<LocalCa>) -> Self {
        Self {
            session,
            ca,
            seq: AtomicU64::new(1),
            dialect: None,
            injection: std::sync::OnceLock::new(),
            maskers: Default::default(),
        }
    }

    /// The header to inject with `credential` (the resource's, the same for every
    /// request of the connection) and the scrubber of its secrets.
    fn injection(&self, credential: &crate::credentials::Credential) -> Result<&Injection, &str> {
        self.injection
            .get_or_init(|| {
                injection(credential).map(|(name, value, secrets)| Injection {
                    header: (name, value),
                    scrubber: Scrubber::new(secrets.iter().map(String::as_str)),
                })
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// The compiled mask profile `profile` of the policy in force; `None` when it does
    /// not exist or cannot be compiled (the request is then refused).
    fn masker(&self, profile: &str) -> Option<Arc<Masker>> {
        let generation = self.session.policy.generation();
        let mut maskers = self
            .maskers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_from, masker)) = maskers.get(profile)
            && *built_from == generation
        {
            return Some(Arc::clone(masker));
        }
        let policy = self.session.policy.current();
        let masker = match Masker::new(policy.mask_profile(profile)?, &self.session.mask_key) {
            Ok(masker) => Arc::new(masker),
            Err(error) => {
                tracing::error!(%error, profile, "mask profile unusable: refusing what it covers");
                return None;
            }
        };
        maskers.insert(profile.to_owned(), (generation, Arc::clone(&masker)));
        Some(masker)
    }

    /// Records a connection-level refusal as a request record of its own.
    async fn record_refusal(&self, method: &str, reason: &str) {
        let decision = Decision {
            action: Action::Deny,
            rule: "http".into(),
            reason: reason.to_owned(),
            resource: Some(self.session.resource.name.clone()),
            mask: None,
            timeout: None,
        };
        let mut facts = RequestFacts::new(
            self.seq.fetch_add(1, Ordering::Relaxed),
            method,
            String::new(),
            String::new(),
        );
        facts.error = Some(reason.to_owned());
        self.finish(&facts, &decision).await;
    }

    /// Records a finished request: its result alone when its `statement` event was
    /// already written, else both.
    async fn finish(&self, facts: &RequestFacts, decision: &Decision) {
        crate::metrics::global().decision("statement", decision.action);
        let record = facts.record(self, decision);
        if facts.announced {
            self.session.store_result(record).await;
        } else {
            self.store(record).await;
        }
    }

    /// Records a dialect's upgraded stream once it ended: its bytes, what the dialect
    /// decoded, and its terminal recording.
    async fn finish_relayed(&self, mut facts: RequestFacts, decision: &Decision, relayed: Relayed) {
        facts.bytes_up += relayed.bytes_up;
        facts.bytes_down += relayed.bytes_down;
        facts.relayed_tag = relayed.tag;
        facts.relayed_parameters = relayed.parameters;
        if facts.error.is_none() {
            facts.error = relayed.error;
        }
        if let Some(cast) = relayed.recording
            && let Err(error) = self
                .session
                .store
                .put_recording(self.session.session_id, facts.seq, cast)
                .await
        {
            tracing::error!(%error, seq = facts.seq, "cannot store a terminal recording");
        }
        self.finish(&facts, decision).await;
    }

    async fn store(&self, record: StatementRecord) {
        let events = [
            Event::now(
                self.session.audit_context.clone(),
                Activity::statement(&record),
            ),
            Event::now(
                self.session.audit_context.clone(),
                Activity::statement_result(&record),
            ),
        ];
        if let Err(error) = self
            .session
            .store
            .put_statement_with_events(&record, &events, Durability::Batched)
            .await
        {
            tracing::error!(%error, seq = record.seq, "cannot record a request");
        }
    }

    /// Judges one method on one host and path: the policy, the rules' `http`
    /// narrowing and the grants in force.
    fn judge(&self, method: &str, host: &str, path: &str) -> Decision {
        let policy = self.session.policy.current();
        policy.decide_http_with_grants(
            &self.session.policy.grants(),
            &self.session.facts(),
            &self.session.resource.name,
            method_class(method),
            (method, host, path),
            time::OffsetDateTime::now_utc(),
        )
    }
}

/// The facts of one request, as recorded.
struct RequestFacts {
    seq: u64,
    method: String,
    host: String,
    path: String,
    query_names: Vec<String>,
    header_names: Vec<String>,
    operation: String,
    started_at: time::OffsetDateTime,
    started: Instant,
    status: Option<u16>,
    bytes_up: u64,
    bytes_down: u64,
    credential: Option<String>,
    masked: std::collections::BTreeMap<String, u64>,
    error: Option<String>,
    approval: Option<ApprovalRecord>,
    /// Its `statement` event is written (before it went upstream).
    announced: bool,
    /// Set by a dialect: the request as it records it.
    dialect_operation: Option<Operation>,
    /// What a dialect's relay of an upgraded connection reported.
    relayed_tag: Option<String>,
    relayed_parameters: Vec<String>,
}

impl RequestFacts {
    fn new(seq: u64, method: &str, host: String, path: String) -> Self {
        Self {
            seq,
            method: method.to_owned(),
            operation: method_class(method).to_string(),
            host,
            path,
            query_names: Vec::new(),
            header_names: Vec::new(),
            started_at: time::OffsetDateTime::now_utc(),
            started: Instant::now(),
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            credential: None,
            masked: Default::default(),
            error: None,
            approval: None,
            announced: false,
            dialect_operation: None,
            relayed_tag: None,
            relayed_parameters: Vec::new(),
        }
    }

    /// The text a record shows for the request: method, host, path and the query's
    /// parameter names (never their values).
    fn line(&self) -> String {
        if let Some(operation) = &self.dialect_operation {
            return operation.summary.clone();
        }
        let mut line = format!("{} {}{}", self.method, self.host, self.path);
        if !self.query_names.is_empty() {
            line.push('?');
            line.push_str(&self.query_names.join("&"));
        }
        line
    }

    /// The request as an operation of the pipeline.
    fn operation(&self) -> Operation {
        let mut parameters = vec![
            format!("bytes_up={}", self.bytes_up),
            format!("bytes_down={}", self.bytes_down),
        ];
        if let Some(credential) = &self.credential {
            parameters.push(format!("credential={credential}"));
        }
        parameters.extend(self.relayed_parameters.iter().cloned());
        if let Some(operation) = &self.dialect_operation {
            let mut operation = operation.clone();
            operation.parameters.extend(parameters);
            return operation;
        }
        parameters.extend(
            self.header_names
                .iter()
                .map(|name| format!("header={name}")),
        );
        Operation {
            protocol: crate::policy::Protocol::Http,
            class: self
                .operation
                .parse()
                .unwrap_or(crate::policy::Operation::Unparsed),
            verb: "http".into(),
            targets: if self.host.is_empty() {
                Vec::new()
            } else {
                vec![self.host.clone()]
            },
            summary: crate::pipeline::truncated(self.line()),
            parameters,
            details: Details::Http {
                method: self.method.clone(),
                host: self.host.clone(),
                path: self.path.clone(),
                query_keys: self.query_names.clone(),
                status: self.status,
            },
            unmaskable: None,
        }
    }

    /// The request's operation record (the pipeline's shape), numbered in the
    /// connection's order.
    fn record(&self, shared: &Shared, decision: &Decision) -> StatementRecord {
        let mut record =
            Pipeline::new(&shared.session).operation_record(&self.operation(), decision, self.seq);
        record.started_at = self.started_at;
        record.params = self.query_names.len();
        record.duration_us =
            Some(self.started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64);
        record.tag = self
            .relayed_tag
            .clone()
            .or_else(|| self.status.map(|status| status.to_string()));
        record.error = self.error.clone();
        record.masked = self.masked.clone();
        record.approval = self.approval.clone();
        record
    }
}

/// One agent connection's request loop.
struct Connection {
    shared: Arc<Shared>,
    upstream: Upstream,
    /// The SNI of an intercepted connection: every request must name it.
    sni: Option<String>,
    scheme: &'static str,
    /// Relays of upgraded connections (WebSocket), awaited before the session ends.
    upgrades: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Connection {
    async fn serve<S>(self, agent: S, h2: bool) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = Arc::new(self);
        if h2 {
            // h2 resets a stream with connection-specific fields before the handler
            // sees it: the guard marks such requests so they are answered 400.
            return Self::run(this, H2RequestGuard::new(agent), true).await;
        }
        // hyper accepts some smuggling shapes silently (it lets Transfer-Encoding win
        // over Content-Length, folds repeated equal lengths, takes a bare LF as a line
        // end): the first request's head is checked here, before hyper reads it.
        let mut agent = agent;
        let head = match first_head(&mut agent).await {
            Ok(head) => head,
            Err(error) => return format!("agent i/o: {error}"),
        };
        if let Err(problem) = check_head(&head) {
            this.refuse_raw(&mut agent, &head, problem).await;
            return format!("protocol_error: {problem}");
        }
        // Every later request of the connection is checked the same way.
        Self::run(this, H1RequestGuard::new(Prefixed::new(head, agent)), false).await
    }

    async fn run<S>(this: Arc<Self>, agent: S, h2: bool) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = {
            let this = Arc::clone(&this);
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let this = Arc::clone(&this);
                // After an upgrade or CONNECT head the agent's bytes are no longer
                // checked as HTTP/1.1 (h1guard): unless it was granted, the connection
                // ends with the answer.
                let connect = request.method() == hyper::Method::CONNECT;
                let leaves_http =
                    !h2 && (request.headers().contains_key(header::UPGRADE) || connect);
                async move {
                    let mut response = this.handle(request).await;
                    let granted = response.status() == StatusCode::SWITCHING_PROTOCOLS
                        || (connect && response.status().is_success());
                    if leaves_http && !granted {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let io = TokioIo::new(agent);
        let result = if h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        } else {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
        };
        let upgrades = std::mem::take(
            &mut *this
                .upgrades
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for relay in upgrades {
            let _ = relay.await;
        }
        match result {
            Ok(()) => "closed".into(),
            Err(error) if error.is_parse() || error.is_parse_too_large() => {
                format!("protocol_error: malformed request: {error}")
            }
            Err(error) => format!("agent: {error}"),
        }
    }

    /// Answers a request hyper must not see with 400, records it and closes.
    async fn refuse_raw<S>(&self, agent: &mut S, head: &[u8], problem: &str)
    where
        S: AsyncWrite + Unpin,
    {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default();
        let target = words.next().unwrap_or_default();
        let mut facts = RequestFacts::new(
            self.shared.seq.fetch_add(1, Ordering::Relaxed),
            method,
            String::new(),
            target.split('?').next().unwrap_or_default().to_owned(),
        );
        facts.status = Some(400);
        facts.error = Some(problem.to_owned());
        tracing::info!(problem, "malformed request refused");
        let decision = Decision {
            action: Action::Deny,
            rule: "http".into(),
            reason: problem.to_owned(),
            resource: Some(self.shared.session.resource.name.clone()),
            mask: None,
            timeout: None,
        };
        self.shared.finish(&facts, &decision).await;
        let body =
            serde_json::json!({ "error": "refused by sluice", "reason": problem }).to_string();
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = agent.write_all(response.as_bytes()).await;
        let _ = agent.shutdown().await;
    }

    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let shared = &self.shared;
        let upgrade = request.headers().contains_key(header::UPGRADE)
            && request.version() == hyper::Version::HTTP_11;
        let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let mut body = Some(body);
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
        let method = parts.method.as_str().to_owned();
        let mut facts = RequestFacts::new(seq, &method, String::new(), String::new());
        facts.header_names = header_names(&parts.headers);
        facts.query_names = query_parameter_names(parts.uri.query());

        if let Some(problem) = parts.headers.get(MALFORMED_MARKER) {
            let problem = String::from_utf8_lossy(problem.as_bytes()).into_owned();
            facts.header_names.retain(|name| name != MALFORMED_MARKER);
            facts.path = parts.uri.path().to_owned();
            facts.host = parts
                .uri
                .authority()
                .map(|authority| host_without_port(authority.as_str()))
                .unwrap_or_default();
            return self.refuse(facts, StatusCode::BAD_REQUEST, &problem).await;
        }

        // Smuggling shapes hyper lets through: both framings, or several lengths.
        let headers = &parts.headers;
        if headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH)
        {
            return self
                .refuse(
                    facts,
                    StatusCode::BAD_REQUEST,
                    "both Content-Length and Transfer-Encoding",
                )
                .await;
        }
        if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
            return self
                .refuse(
                    facts,
                    StatusCode::BAD_REQUEST,
                    "more than one Content-Length",
                )
                .await;
        }
        if headers.get_all(header::HOST).iter().count() > 1 {
            return self
                .refuse(facts, StatusCode::BAD_REQUEST, "more than one Host")
                .await;
        }

        // The host the request names, as the upstream will read it.
        let authority = parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|host| host.to_str().ok())
                    .map(str::to_owned)
            });
        let Some(authority) = authority else {
            return self
                .refuse(facts, StatusCode::BAD_REQUEST, "the request names no host")
                .await;
        };
        let host = host_without_port(&authority);
        facts.host = host.clone();
        if let (Some(uri_host), Some(header_host)) = (
            parts.uri.authority().map(|a| host_without_port(a.as_str())),
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_without_port),
        ) && uri_host != header_host
        {
            return self
                .refuse(
                    facts,
                    StatusCode::MISDIRECTED_REQUEST,
                    "the request target and Host name different hosts",
                )
                .await;
        }
        if let Some(sni) = &self.sni
            && *sni != host
        {
            return self
                .refuse(
                    facts,
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!("the request names host {host} but the TLS connection is for {sni}"),
                )
                .await;
        }
        let resource = &shared.session.resource;
        if self.sni.is_none()
            && !resource.hostnames.is_empty()
            && !resource
                .hostnames
                .iter()
                .any(|pattern| pattern.match_name(&host).is_some())
        {
            return self
                .refuse(
                    facts,
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!("host {host} is not a name of resource `{}`", resource.name),
                )
                .await;
        }

        let raw_path = parts.uri.path().to_owned();
        let path = match normalise_path(&raw_path) {
            Ok(path) => path,
            Err(error) => {
                facts.path = raw_path;
                return self
                    .refuse(facts, StatusCode::BAD_REQUEST, &error.to_string())
                    .await;
            }
        };
        facts.path = path.clone();
        if let Some(dialect) = shared.dialect.clone() {
            return self
                .handle_dialect(&*dialect, parts, body, agent_upgrade, facts, &host, &path)
                .await;
        }

        // Method overrides are judged as the method they name, along with the real one.
        let mut methods = vec![method.clone()];
        for name in METHOD_OVERRIDE_HEADERS {
            for value in &parts.headers.get_all(*name) {
                match value.to_str() {
                    Ok(value) => methods.push(value.trim().to_ascii_uppercase()),
                    Err(_) => {
                        return self
                            .refuse(
                                facts,
                                StatusCode::BAD_REQUEST,
                                "an unreadable method-override header",
                            )
                            .await;
                    }
                }
            }
        }
        let mut buffered_body: Option<Bytes> = None;
        if method == "POST"
            && parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| {
                    value
                        .to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                })
        {
            // Judged before the body is read, then again with its `_method`.
            let decision = self.judge_all(&methods, &host, &path);
            if decision.action == Action::Deny {
                return self.deny(facts, decision).await;
            }
            let Some(incoming) = body.take() else {
                return self
                    .refuse(
                        facts,
                        StatusCode::BAD_REQUEST,
                        "the form body was already read",
                    )
                    .await;
            };
            match http_body_util::Limited::new(incoming, MAX_FORM_BODY)
                .collect()
                .await
            {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    if let Some(named) = form_method(&bytes) {
                        methods.push(named);
                    }
                    buffered_body = Some(bytes);
                }
                Err(error) => {
                    return self
                        .refuse(facts, StatusCode::PAYLOAD_TOO_LARGE, &format!("the form body could not be read within {MAX_FORM_BODY} bytes: {error}"))
                        .await;
                }
            }
        }
        let mut decision = self.judge_all(&methods, &host, &path);
        if let Some(named) = methods.get(1) {
            facts.operation = method_class(named).max(method_class(&method)).to_string();
        }

        if decision.action == Action::Review {
            let resolution = self.hold(&facts, &decision).await;
            facts.approval = Some(approval_record(&resolution));
            if resolution.outcome != Outcome::Approved {
                decision.action = Action::Deny;
                decision.reason = format!(
                    "{} (approval {} {}: {})",
                    decision.reason,
                    resolution.id,
                    resolution.outcome.as_str(),
                    resolution.reason
                );
                return self.deny(facts, decision).await;
            }
            decision.action = Action::Allow;
        }
        if decision.action != Action::Allow {
            return self.deny(facts, decision).await;
        }

        let body = match (buffered_body, body) {
            (Some(bytes), _) => Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
            (None, Some(incoming)) => incoming.map_err(BoxError::from).boxed_unsync(),
            (None, None) => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        };
        self.forward(parts, body, agent_upgrade, facts, decision, &host, &path)
            .await
    }

    /// Judges, holds and forwards a request of a [`Dialect`].
    #[allow(clippy::too_many_arguments)]
    async fn handle_dialect(
        &self,
        dialect: &dyn Dialect,
        parts: hyper::http::request::Parts,
        body: Option<Incoming>,
        agent_upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut facts: RequestFacts,
        host: &str,
        path: &str,
    ) -> Response<ProxyBody> {
        let judged = match dialect.judge(&self.shared.session, &parts, path) {
            Ok(judged) => judged,
            Err((status, reason)) => return self.refuse(facts, status, &reason).await,
        };
        let mut decision = judged.decision;
        facts.operation = judged.operation.class.to_string();
        facts.dialect_operation = Some(judged.operation);
        if decision.action == Action::Review {
            let resolution = self.hold(&facts, &decision).await;
            facts.approval = Some(approval_record(&resolution));
            if resolution.outcome != Outcome::Approved {
                decision.action = Action::Deny;
                decision.reason = format!(
                    "{} (approval {} {}: {})",
                    decision.reason,
                    resolution.id,
                    resolution.outcome.as_str(),
                    resolution.reason
                );
                return self.deny(facts, decision).await;
            }
            decision.action = Action::Allow;
        }
        if decision.action != Action::Allow {
            return self.deny(facts, decision).await;
        }
        let body = match body {
            Some(incoming) => incoming.map_err(BoxError::from).boxed_unsync(),
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        };
        self.forward_with(
            parts,
            body,
            agent_upgrade,
            facts,
            decision,
            (host, path),
            Some(judged.exchange),
        )
        .await
    }

    /// The strictest decision over every method the request may be acted on as.
    fn judge_all(&self, methods: &[String], host: &str, path: &str) -> Decision {
        let mut worst: Option<Decision> = None;
        for method in methods {
            let decision = self.shared.judge(method, host, path);
            if worst
                .as_ref()
                .is_none_or(|current| severity(decision.action) > severity(current.action))
            {
                worst = Some(decision);
            }
        }
        worst.unwrap_or_else(|| self.shared.judge("GET", host, path))
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: ProxyBody,
        agent_upgrade: Option<hyper::upgrade::OnUpgrade>,
        facts: RequestFacts,
        decision: Decision,
        host: &str,
        path: &str,
    ) -> Response<ProxyBody> {
        self.forward_with(
            parts,
            body,
            agent_upgrade,
            facts,
            decision,
            (host, path),
            None,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward_with(
        &self,
        parts: hyper::http::request::Parts,
        body: ProxyBody,
        agent_upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut facts: RequestFacts,
        decision: Decision,
        (host, path): (&str, &str),
        mut exchange: Option<Box<dyn Exchange>>,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let resource = &shared.session.resource;
        let upgrade = agent_upgrade.is_some();

        // The credential, only now that the upstream's certificate has been verified.
        let mut scrubber = Scrubber::default();
        let mut injected: Option<(HeaderName, HeaderValue)> = None;
        let mut strip_agent_credentials = false;
        if let Some(name) = &resource.credential {
            let Some(credential) = shared.session.credentials.get(name) else {
                return self
                    .refuse(
                        facts,
                        StatusCode::BAD_GATEWAY,
                        &format!("credential `{name}` is not in the credentials file"),
                    )
                    .await;
            };
            if credential.is_client_certificate() {
                // Presented in the upstream TLS handshake; the agent's own credentials
                // are still stripped below.
                if self.scheme != "https" {
                    return self
                        .refuse(
                            facts,
                            StatusCode::BAD_GATEWAY,
                            &format!("credential `{name}` is a client certificate, which needs TLS upstream"),
                        )
                        .await;
                }
                strip_agent_credentials = true;
                facts.credential = Some(name.clone());
            } else {
                match shared.injection(credential) {
                    Ok(Injection {
                        header,
                        scrubber: secrets,
                    }) => {
                        scrubber = secrets.clone();
                        injected = Some(header.clone());
                        facts.credential = Some(name.clone());
                    }
                    Err(problem) => {
                        return self
                            .refuse(
                                facts,
                                StatusCode::BAD_GATEWAY,
                                &format!("credential `{name}`: {problem}"),
                            )
                            .await;
                    }
                }
            }
        }
        let masker = decision
            .mask
            .as_deref()
            .and_then(|profile| shared.masker(profile));
        if decision.mask.is_some() && masker.is_none() {
            return self
                .refuse(
                    facts,
                    StatusCode::BAD_GATEWAY,
                    "the rule's mask profile cannot be applied",
                )
                .await;
        }
        let inspect = masker.is_some() || !scrubber.is_empty();

        // Re-serialised: hyper writes the request line and headers anew.
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if is_hop_by_hop(name) && !(upgrade && name == header::UPGRADE) {
                continue;
            }
            if name == header::HOST {
                continue;
            }
            if (injected.is_some() || strip_agent_credentials)
                && (name == header::AUTHORIZATION
                    || injected
                        .as_ref()
                        .is_some_and(|(injected, _)| injected == name))
            {
                continue;
            }
            if name == header::TE {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if parts
            .headers
            .get(header::TE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.to_ascii_lowercase().contains("trailers"))
        {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if inspect {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let Some(exchange) = &mut exchange {
            exchange.upstream_headers(&mut headers);
        }
        if let Some((name, value)) = &injected {
            headers.insert(name.clone(), value.clone());
        }
        let query = parts
            .uri
            .query()
            .map(|query| format!("?{query}"))
            .unwrap_or_default();
        let authority = parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| host.to_owned());
        let uri = match &self.upstream {
            Upstream::H1(_) => format!("{path}{query}"),
            Upstream::H2(_) => format!("{}://{authority}{path}{query}", self.scheme),
        };
        let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
        if let Upstream::H1(_) = &self.upstream {
            builder = builder.header(header::HOST, authority.as_str());
        }
        let Some(builder_headers) = builder.headers_mut() else {
            return self
                .refuse(
                    facts,
                    StatusCode::BAD_REQUEST,
                    "the request cannot be re-serialised",
                )
                .await;
        };
        builder_headers.extend(headers);
        let bytes_up = Arc::new(AtomicU64::new(facts.bytes_up));
        let counter = Arc::clone(&bytes_up);
        let body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = Arc::clone(&body_failed);
        let body: ProxyBody = body
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            })
            .map_err(move |error| {
                failed.store(true, Ordering::Relaxed);
                error
            })
            .boxed_unsync();
        let upstream_request = match builder.body(body) {
            Ok(request) => request,
            Err(error) => {
                return self
                    .refuse(
                        facts,
                        StatusCode::BAD_REQUEST,
                        &format!("the request cannot be re-serialised: {error}"),
                    )
                    .await;
            }
        };
        // The `statement` event is handed to the audit log before the request goes
        // upstream (durably written first in strict mode; batched, it is queued with the
        // writer and committed within the flush interval, as for SQL statements), and
        // the daemon fails closed when it cannot be. Batched, the request does not wait
        // for the writer (waiting for its commit per request cost 40-50 % of the requests/s).
        let announcement = facts.record(shared, &decision);
        let session = &shared.session;
        if let Err(error) = session
            .store
            .append_all(
                vec![Event::now(
                    session.audit_context.clone(),
                    Activity::statement(&announcement),
                )],
                session.store.audit_durability(),
            )
            .await
        {
            return self
                .refuse(
                    facts,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("audit_log_unavailable: {error}"),
                )
                .await;
        }
        facts.announced = true;
        let mut response = match self.upstream.send(upstream_request).await {
            Ok(response) => response,
            Err(error) if body_failed.load(Ordering::Relaxed) => {
                facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                return self
                    .refuse(
                        facts,
                        StatusCode::BAD_REQUEST,
                        &format!("malformed request body: {error}"),
                    )
                    .await;
            }
            Err(error) => {
                facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                return self
                    .refuse(
                        facts,
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream: {error}"),
                    )
                    .await;
            }
        };
        let status = response.status();
        facts.status = Some(status.as_u16());
        let mut filter = None;
        // Also for a 101: a dialect learns the upgrade's answer (and may refuse it).
        if let Some(exchange) = &mut exchange {
            match exchange.response_filter(status, response.headers()) {
                Ok(chosen) => filter = chosen,
                Err(problem) => {
                    facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                    return self.refuse(facts, StatusCode::BAD_GATEWAY, &problem).await;
                }
            }
        }

        // A dialect's upgraded stream is recorded when it ends: the 101's (empty) body
        // hands the request's facts over to the relay instead of finishing the record.
        let mut hand_over = None;
        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(agent_upgrade) = agent_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let handed = exchange.is_some().then(|| {
                let (sender, receiver) = tokio::sync::oneshot::channel::<RequestFacts>();
                hand_over = Some(sender);
                (receiver, Arc::clone(shared), decision.clone())
            });
            let relay = tokio::spawn(async move {
                let relayed = match (agent_upgrade.await, upstream_upgrade.await) {
                    (Ok(agent), Ok(upstream)) => match exchange {
                        Some(exchange) => Some(exchange.relay(agent, upstream).await),
                        None => {
                            let mut agent = TokioIo::new(agent);
                            let mut upstream = TokioIo::new(upstream);
                            let _ = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
                            None
                        }
                    },
                    _ => {
                        tracing::debug!("upgrade did not complete");
                        Some(Relayed {
                            error: Some("the upgrade did not complete".into()),
                            ..Relayed::default()
                        })
                    }
                };
                if let (Some((receiver, shared, decision)), Some(relayed)) = (handed, relayed)
                    && let Ok(facts) = receiver.await
                {
                    shared.finish_relayed(facts, &decision, relayed).await;
                }
            });
            self.upgrades
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(relay);
        }

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(
            &mut parts.headers,
            status == StatusCode::SWITCHING_PROTOCOLS,
        );
        let mut scrubbed_headers = 0;
        if !scrubber.is_empty() {
            for value in parts.headers.values_mut() {
                let (clean, count) = scrubber.scrub(value.as_bytes());
                if count > 0 {
                    scrubbed_headers += count;
                    *value =
                        HeaderValue::from_bytes(&clean).unwrap_or(HeaderValue::from_static(""));
                }
            }
        }
        if scrubbed_headers > 0 {
            *facts.masked.entry("scrubbed".into()).or_default() += scrubbed_headers;
        }
        // A body that must be read but came compressed (although sluice asked for
        // identity) is decoded within the masking cap, or refused.
        let encoding = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let encoded = !encoding.is_empty() && !encoding.trim().eq_ignore_ascii_case("identity");
        let body: ProxyBody = if (inspect || filter.is_some()) && encoded {
            let coding = match super::decode::Coding::from_header(&encoding) {
                Ok(coding) => coding,
                Err(problem) => {
                    facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                    return self.refuse(facts, StatusCode::BAD_GATEWAY, &problem).await;
                }
            };
            let compressed = match http_body_util::Limited::new(body, MAX_MASKED_BODY)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                    return self
                        .refuse(facts, StatusCode::BAD_GATEWAY, &format!("the compressed response could not be read within {MAX_MASKED_BODY} bytes to inspect it: {error}"))
                        .await;
                }
            };
            match super::decode::decode(coding, &compressed, MAX_MASKED_BODY) {
                Ok(decoded) => {
                    parts.headers.remove(header::CONTENT_ENCODING);
                    parts.headers.remove(header::CONTENT_LENGTH);
                    Full::new(Bytes::from(decoded))
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }
                Err(problem) => {
                    facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                    return self.refuse(facts, StatusCode::BAD_GATEWAY, &problem).await;
                }
            }
        } else {
            body.map_err(|error| Box::new(error) as BoxError)
                .boxed_unsync()
        };

        if let Some(masker) = masker {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let collected = match collect_capped(body, MAX_MASKED_BODY).await {
                Ok(collected) => collected,
                Err(error) => {
                    facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                    return self
                        .refuse(facts, StatusCode::BAD_GATEWAY, &format!("the response could not be masked within {MAX_MASKED_BODY} bytes: {error}"))
                        .await;
                }
            };
            let masked = match super::mask::mask_body(&masker, &content_type, &collected) {
                Ok((masked, counts)) => {
                    for (key, count) in counts {
                        *facts.masked.entry(key).or_default() += count;
                    }
                    masked
                }
                Err(problem) => {
                    facts.bytes_up = bytes_up.load(Ordering::Relaxed);
                    return self.refuse(facts, StatusCode::BAD_GATEWAY, &problem).await;
                }
            };
            let (masked, scrubbed) = scrubber.scrub(&masked);
            if scrubbed > 0 {
                *facts.masked.entry("scrubbed".into()).or_default() += scrubbed;
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            let body = Full::new(Bytes::from(masked)).map_err(|never| match never {});
            let mut recorded =
                Recorded::new(body, None, facts, decision, Arc::clone(shared), bytes_up);
            recorded.filter = filter;
            recorded.hand_over = hand_over;
            return Response::from_parts(parts, recorded.boxed_unsync());
        }
        if filter.is_some() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let stream_scrubber = (!scrubber.is_empty()).then(|| {
            parts.headers.remove(header::CONTENT_LENGTH);
            StreamScrubber::new(scrubber)
        });
        let mut recorded = Recorded::new(
            body,
            stream_scrubber,
            facts,
            decision,
            Arc::clone(shared),
            bytes_up,
        );
        recorded.filter = filter;
        recorded.hand_over = hand_over;
        Response::from_parts(parts, recorded.boxed_unsync())
    }

    async fn hold(&self, facts: &RequestFacts, decision: &Decision) -> Resolution {
        let record = facts.record(&self.shared, decision);
        // hyper gives no signal that the agent left while its request waits; the hold's
        // timeout bounds the wait.
        Pipeline::new(&self.shared.session)
            .hold(&record, decision, std::future::pending())
            .await
    }

    async fn deny(&self, mut facts: RequestFacts, decision: Decision) -> Response<ProxyBody> {
        facts.status = Some(403);
        tracing::info!(request = %facts.line(), rule = %decision.rule, "request denied");
        let body = match &self.shared.dialect {
            Some(dialect) => dialect.answer(
                StatusCode::FORBIDDEN,
                Some(&decision.rule),
                &decision.reason,
            ),
            None => serde_json::json!({
                "error": "denied by sluice",
                "rule": decision.rule,
                "reason": decision.reason,
            }),
        };
        self.shared.finish(&facts, &decision).await;
        json_response(StatusCode::FORBIDDEN, &body)
    }

    /// Answers a request that cannot be judged or forwarded, and records it.
    async fn refuse(
        &self,
        mut facts: RequestFacts,
        status: StatusCode,
        reason: &str,
    ) -> Response<ProxyBody> {
        tracing::info!(request = %facts.line(), status = status.as_u16(), reason, "request refused");
        facts.status = Some(status.as_u16());
        facts.error = Some(reason.to_owned());
        let decision = Decision {
            action: Action::Deny,
            rule: "http".into(),
            reason: reason.to_owned(),
            resource: Some(self.shared.session.resource.name.clone()),
            mask: None,
            timeout: None,
        };
        self.shared.finish(&facts, &decision).await;
        let body = match &self.shared.dialect {
            Some(dialect) => dialect.answer(status, None, reason),
            None => serde_json::json!({ "error": "refused by sluice", "reason": reason }),
        };
        json_response(status, &body)
    }
}

/// A whole body, or an error once it passes `cap` bytes.
async fn collect_capped(mut body: ProxyBody, cap: usize) -> Result<Bytes, String> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| error.to_string())?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > cap {
                return Err("length limit exceeded".into());
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

fn severity(action: Action) -> u8 {
    match action {
        Action::Allow => 0,
        Action::Review => 1,
        Action::Deny => 2,
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn header_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "http2-settings",
    ] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// The header to inject for a credential, and the secrets to scrub from responses.
fn injection(
    credential: &crate::credentials::Credential,
) -> Result<(HeaderName, HeaderValue, Vec<String>), String> {
    use base64::Engine as _;
    let (name, value, secrets) = if let Some(bearer) = &credential.bearer {
        (
            header::AUTHORIZATION,
            format!("Bearer {}", bearer.expose()),
            vec![bearer.expose().to_owned()],
        )
    } else if let (Some(name), Some(value)) = (&credential.header, &credential.value) {
        (
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?,
            value.expose().to_owned(),
            vec![value.expose().to_owned()],
        )
    } else {
        let pair = format!("{}:{}", credential.user, credential.password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&pair);
        (
            header::AUTHORIZATION,
            format!("Basic {encoded}"),
            vec![pair, credential.password.expose().to_owned()],
        )
    };
    if secrets
        .iter()
        .any(|secret| secret.len() < super::scrub::MIN_SECRET_LEN)
    {
        return Err(format!(
            "secrets shorter than {} characters cannot be scrubbed from responses reliably",
            super::scrub::MIN_SECRET_LEN
        ));
    }
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| "the secret is not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok((name, value, secrets))
}

/// A response body on its way to the agent: counted, scrubbed when a credential was
/// injected, and recorded when it ends (or the agent drops it).
struct Recorded<B> {
    inner: B,
    /// A dialect's rewrite of the body, before scrubbing.
    filter: Option<Box<dyn BodyFilter>>,
    scrubber: Option<StreamScrubber>,
    queued: std::collections::VecDeque<Frame<Bytes>>,
    ended: bool,
    facts: Option<RequestFacts>,
    decision: Decision,
    shared: Arc<Shared>,
    bytes_up: Arc<AtomicU64>,
    bytes_down: u64,
    /// For a dialect's upgrade: where the facts go (the relay records them when the
    /// stream ends) instead of being recorded now.
    hand_over: Option<tokio::sync::oneshot::Sender<RequestFacts>>,
}

impl<B> Recorded<B> {
    fn new(
        inner: B,
        scrubber: Option<StreamScrubber>,
        facts: RequestFacts,
        decision: Decision,
        shared: Arc<Shared>,
        bytes_up: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            filter: None,
            scrubber,
            queued: Default::default(),
            ended: false,
            facts: Some(facts),
            decision,
            shared,
            bytes_up,
            bytes_down: 0,
            hand_over: None,
        }
    }
}

impl<B> Drop for Recorded<B> {
    fn drop(&mut self) {
        let Some(mut facts) = self.facts.take() else {
            return;
        };
        facts.bytes_up = self.bytes_up.load(Ordering::Relaxed);
        facts.bytes_down = self.bytes_down;
        if let Some(filter) = &self.filter {
            for (key, count) in filter.masked() {
                *facts.masked.entry(key).or_default() += count;
            }
        }
        if let Some(scrubber) = &self.scrubber
            && scrubber.count > 0
        {
            *facts.masked.entry("scrubbed".into()).or_default() += scrubber.count;
        }
        if let Some(hand_over) = self.hand_over.take() {
            match hand_over.send(facts) {
                Ok(()) => return,
                // The relay is gone (the upgrade never happened): record it here.
                Err(returned) => facts = returned,
            }
        }
        if !self.ended && facts.error.is_none() {
            facts.error =
                Some("the response did not finish (the agent or upstream went away)".into());
        }
        crate::metrics::global().decision("statement", self.decision.action);
        let record = facts.record(&self.shared, &self.decision);
        let announced = facts.announced;
        let shared = Arc::clone(&self.shared);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if announced {
                    shared.session.store_result(record).await;
                } else {
                    shared.store(record).await;
                }
            });
        }
    }
}

impl<B> Body for Recorded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.queued.pop_front() {
                if let Some(data) = frame.data_ref() {
                    this.bytes_down += data.len() as u64;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match &mut this.scrubber {
                        _ if this.filter.is_some() => {
                            let filtered = this
                                .filter
                                .as_mut()
                                .map(|filter| filter.push(&data))
                                .unwrap_or_default();
                            // A filter hands out whole units (an event, an item), so
                            // each is scrubbed whole: holding a tail back for a
                            // secret split across chunks would stall a watch's last
                            // event until the next one.
                            let filtered = match &mut this.scrubber {
                                Some(scrubber) => scrubber.scrub_value(&filtered),
                                None => filtered,
                            };
                            if !filtered.is_empty() {
                                this.queued.push_back(Frame::data(Bytes::from(filtered)));
                            }
                        }
                        Some(scrubber) => {
                            let clean = scrubber.push(&data);
                            if !clean.is_empty() {
                                this.queued.push_back(Frame::data(Bytes::from(clean)));
                            }
                        }
                        None => this.queued.push_back(Frame::data(data)),
                    },
                    Err(mut frame) => {
                        if let Some(scrubber) = &mut this.scrubber {
                            let rest = scrubber.finish();
                            if !rest.is_empty() {
                                this.queued.push_back(Frame::data(Bytes::from(rest)));
                            }
                            // Trailers (gRPC's status and message) are scrubbed too.
                            for value in frame
                                .trailers_mut()
                                .into_iter()
                                .flat_map(|t| t.values_mut())
                            {
                                let clean = scrubber.scrub_value(value.as_bytes());
                                if clean != value.as_bytes() {
                                    *value = HeaderValue::from_bytes(&clean)
                                        .unwrap_or(HeaderValue::from_static(""));
                                }
                            }
                        }
                        this.queued.push_back(frame);
                    }
                },
                Poll::Ready(None) => {
                    this.ended = true;
                    if let Some(filter) = &mut this.filter {
                        let rest = filter.finish();
                        let rest = match &mut this.scrubber {
                            Some(scrubber) => scrubber.push(&rest),
                            None => rest,
                        };
                        if !rest.is_empty() {
                            this.queued.push_back(Frame::data(Bytes::from(rest)));
                        }
                    }
                    if let Some(scrubber) = &mut this.scrubber {
                        let rest = scrubber.finish();
                        if !rest.is_empty() {
                            this.queued.push_back(Frame::data(Bytes::from(rest)));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.queued.is_empty()
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let take = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..take]);
            this.offset += take;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(context, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(context, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

/// The agent's stream, counting the session's bytes each way. Owned counters, so the
/// stream can outlive the session's borrow (hyper keeps it for upgrades).
struct Counted<S> {
    inner: S,
    counts: Arc<Tally>,
}

/// The session's byte counters, shared with the tasks hyper spawns.
#[derive(Default)]
struct Tally {
    up: AtomicU64,
    down: AtomicU64,
}

impl<S> Counted<S> {
    fn new(inner: S, counts: &Arc<Tally>) -> Self {
        Self {
            inner,
            counts: Arc::clone(counts),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(context, buf);
        let read = buf.filled().len() - before;
        self.counts.up.fetch_add(read as u64, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(context, buf);
        if let Poll::Ready(Ok(written)) = &result {
            self.counts
                .down
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

/// The most of a first request head read before hyper takes over.
const MAX_FIRST_HEAD: usize = 64 * 1024;

/// Reads the first request's head (through the blank line) without consuming more
/// than needed beyond it; what was read is handed to hyper after the check.
async fn first_head<S: AsyncRead + Unpin>(agent: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n")
            || head.windows(2).any(|w| w == b"\n\n")
            || head.len() >= MAX_FIRST_HEAD
        {
            return Ok(head);
        }
        let read = tokio::time::timeout(FIRST_BYTES_TIMEOUT, agent.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request head"))??;
        if read == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&chunk[..read]);
    }
}

/// The smuggling shapes refused in a request head: both framings, several lengths,
/// obsolete line folding, a bare CR or LF.
pub fn check_head(bytes: &[u8]) -> Result<(), &'static str> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 2)
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|at| at + 1))
        .unwrap_or(bytes.len());
    let head = &bytes[..end];
    for (index, &byte) in head.iter().enumerate() {
        if byte == b'\r' && head.get(index + 1) != Some(&b'\n') {
            return Err("a bare CR in the request head");
        }
        if byte == b'\n' && (index == 0 || head[index - 1] != b'\r') {
            return Err("a bare LF in the request head");
        }
    }
    let mut lengths = 0;
    let mut chunked = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("obsolete line folding in the request head");
        }
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        }
    }
    if lengths > 1 {
        return Err("more than one Content-Length");
    }
    if lengths == 1 && chunked {
        return Err("both Content-Length and Transfer-Encoding");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smuggling_shapes_in_a_head_are_refused() {
        let ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(check_head(ok), Ok(()));
        assert!(
            check_head(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .is_err()
        );
        assert!(
            check_head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n")
                .is_err()
        );
        assert!(check_head(b"GET / HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n").is_err());
        assert!(check_head(b"GET / HTTP/1.1\nHost: a\n\n").is_err());
        assert!(check_head(b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n").is_err());
        // Bytes after the head (a body) are not the head's business.
        assert_eq!(
            check_head(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n\r\r"),
            Ok(())
        );
    }

    #[test]
    fn first_bytes_say_what_a_connection_is() {
        assert_eq!(recognise(b""), None);
        assert_eq!(
            recognise(&[0x16, 0x03, 0x01]),
            Some(FirstBytes::TlsClientHello)
        );
        assert_eq!(recognise(b"GET / HTTP/1.1\r\n"), Some(FirstBytes::Http1));
        assert_eq!(recognise(b"GE"), None);
        assert_eq!(
            recognise(b"GET http://x/ HTTP/1.1"),
            Some(FirstBytes::Http1)
        );
        assert_eq!(
            recognise(b"PRI * HTTP/2.0\r\n"),
            Some(FirstBytes::H2Preface)
        );
        assert_eq!(
            recognise(b"CONNECT x:443 HTTP/1.1"),
            Some(FirstBytes::Connect)
        );
        assert_eq!(recognise(b"SSH-2.0-OpenSSH"), Some(FirstBytes::Other));
        assert_eq!(recognise(b"\x00\x00\x00\x08"), Some(FirstBytes::Other));
        assert_eq!(recognise(b" GET"), Some(FirstBytes::Other));
    }
}
