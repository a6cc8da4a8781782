//! The CLI's side of the control API: one HTTP/1.1 request per connection over the unix
//! socket, errors turned into sentences an operator can act on.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;
use tracing::debug;

use super::{
    api::{ErrorBody, StatusReport},
    query,
};
use crate::store::{SessionRecord, StatementRecord};

/// Largest response read; a long session listing stays well below it.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Default bound on a whole request, connect to last byte.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody accepting on it.
    #[error("the sluice daemon is not running (no control socket at {})", path.display())]
    NotRunning { path: PathBuf },
    /// The socket's mode kept us out, or the daemon refused us (HTTP 403).
    #[error("permission denied on the control socket {}: {reason}", path.display())]
    PermissionDenied { path: PathBuf, reason: String },
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The daemon answered with an error status; `message` is its `error` field.
    #[error("the daemon answered {status}: {message}")]
    Http { status: u16, message: String },
    #[error("the HTTP exchange with the daemon failed: {message}")]
    Protocol { message: String },
    #[error("the daemon's answer is not the expected JSON: {message}")]
    BadJson { message: String },
    #[error("the daemon did not answer within {} s", timeout.as_secs())]
    Timeout { timeout: Duration },
}

impl ClientError {
    /// The HTTP status, for errors the daemon answered with.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of the daemon's control socket.
#[derive(Clone, Debug)]
pub struct ControlClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ControlClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each request (connect to last byte); 30 s by default.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/sessions`, newest first; `limit` defaults to the server's (100).
    pub async fn list_sessions(
        &self,
        agent: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<SessionRecord>, ClientError> {
        let mut params = Vec::new();
        if let Some(agent) = agent {
            params.push(format!("agent={}", query::encode(agent)));
        }
        if let Some(limit) = limit {
            params.push(format!("limit={limit}"));
        }
        let mut path = String::from("/v1/sessions");
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        self.get(&path).await
    }

    /// `GET /v1/sessions/{id}`; `None` when there is no such session.
    pub async fn get_session(&self, id: u64) -> Result<Option<SessionRecord>, ClientError> {
        match self.get(&format!("/v1/sessions/{id}")).await {
            Ok(session) => Ok(Some(session)),
            Err(ClientError::Http { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `GET /v1/sessions/{id}/statements`, in seq order; `None` when there is no such
    /// session.
    pub async fn statements(&self, id: u64) -> Result<Option<Vec<StatementRecord>>, ClientError> {
        match self.get(&format!("/v1/sessions/{id}/statements")).await {
            Ok(statements) => Ok(Some(statements)),
            Err(ClientError::Http { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `GET /v1/sessions/{id}/recordings`: the session's terminal recordings.
    pub async fn recordings(
        &self,
        id: u64,
    ) -> Result<Vec<crate::control::api::Recording>, ClientError> {
        self.get(&format!("/v1/sessions/{id}/recordings")).await
    }

    /// `GET path_and_query`, the 2xx body decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        let body = self.send(Method::GET, path_and_query, None).await?;
        decode(&body)
    }

    /// `POST path_and_query` with `body` as JSON, the 2xx body decoded as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|error| ClientError::BadJson {
            message: format!("cannot encode the request: {error}"),
        })?;
        let body = self.send(Method::POST, path_and_query, Some(body)).await?;
        decode(&body)
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path_and_query, body))
            .await
            .map_err(|_| ClientError::Timeout {
                timeout: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| self.connect_error(source))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(protocol)?;
        // Drives the connection; it ends when the response is read and `sender` dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "control client connection ended with an error");
            }
        });

        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| ClientError::Protocol {
                message: format!("invalid request {path_and_query:?}: {error}"),
            })?;
        let response = sender.send_request(request).await.map_err(protocol)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| ClientError::Protocol {
                message: format!("cannot read the response: {error}"),
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let message = error_message(status, &body);
        if status == StatusCode::FORBIDDEN {
            return Err(ClientError::PermissionDenied {
                path: self.socket.clone(),
                reason: message,
            });
        }
        Err(ClientError::Http {
            status: status.as_u16(),
            message,
        })
    }

    fn connect_error(&self, source: std::io::Error) -> ClientError {
        let path = self.socket.clone();
        match source.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => ClientError::NotRunning { path },
            ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path,
                reason: "run as root or as a member of the sluice admin group".into(),
            },
            _ => ClientError::Connect { path, source },
        }
    }
}

fn protocol(error: hyper::Error) -> ClientError {
    ClientError::Protocol {
        message: error.to_string(),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|error| ClientError::BadJson {
        message: error.to_string(),
    })
}

/// The server's `error` field, else the body as text, else the status's reason.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_slice(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.chars().take(500).collect()
    }
}
