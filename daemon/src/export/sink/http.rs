//! A small HTTP/1.1 client for the HEC and webhook sinks: one kept-alive connection,
//! TLS by rustls for `https`, reconnecting after any failure.
//!
//! hyper-util's pooled client would pull in its `client-legacy` stack for what is one
//! connection to one host; hyper's own `client::conn` does the protocol.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, Uri, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{SinkError, syslog::client_config};

/// Bound on one request, connect to last byte of the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of an answer's body kept (for error messages).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub struct HttpClient {
    uri: Uri,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// An answer: status and (the start of) the body.
struct Answer {
    status: u16,
    body: String,
}

impl HttpClient {
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, SinkError> {
        let uri: Uri = url
            .parse()
            .map_err(|error| SinkError::Config(format!("{url:?} is not a URL: {error}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(SinkError::Config(format!(
                    "{url:?}: use http:// or https://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| SinkError::Config(format!("{url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if https {
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| SinkError::Config(format!("{host:?} is not a server name")))?;
            let config = client_config(ca_file)?;
            Some((TlsConnector::from(Arc::new(config)), server_name))
        } else {
            None
        };
        Ok(Self {
            uri,
            authority,
            tls,
            sender: None,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// POSTs `body` to `path_and_query` with `headers`; `Ok` when `acknowledged` takes
    /// the answer's status, otherwise [`SinkError::Status`] with the start of its body.
    pub async fn deliver(
        &mut self,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Bytes,
        acknowledged: impl Fn(u16) -> bool,
    ) -> Result<(), SinkError> {
        let answer = self.post(path_and_query, headers, body).await?;
        if acknowledged(answer.status) {
            Ok(())
        } else {
            Err(SinkError::Status {
                status: answer.status,
                body: answer.body.chars().take(200).collect(),
            })
        }
    }

    /// POSTs `body` to `path_and_query` with `headers`; any answer is `Ok`.
    async fn post(
        &mut self,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Answer, SinkError> {
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange(path_and_query, headers, body),
        )
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                Err(SinkError::Timeout(REQUEST_TIMEOUT.as_secs()))
            }
        }
    }

    async fn exchange(
        &mut self,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Answer, SinkError> {
        if self.sender.as_ref().is_none_or(|sender| sender.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| SinkError::Http("no connection".into()))?;
        sender
            .ready()
            .await
            .map_err(|error| SinkError::Http(error.to_string()))?;
        let mut request = Request::post(path_and_query)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|error| SinkError::Http(error.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| SinkError::Http(error.to_string()))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|collected| String::from_utf8_lossy(&collected.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok(Answer { status, body })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|source| SinkError::Io {
                what: format!("cannot connect to {}", self.authority),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let handshake_error = |error: hyper::Error| SinkError::Http(error.to_string());
        match &self.tls {
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake_error)?;
                tokio::spawn(connection);
                Ok(sender)
            }
            Some((connector, server_name)) => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|error| {
                        SinkError::Tls(format!("handshake with {}: {error}", self.authority))
                    })?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(handshake_error)?;
                tokio::spawn(connection);
                Ok(sender)
            }
        }
    }
}
