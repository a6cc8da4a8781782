//! Syslog: RFC 5424 messages, framed by octet counting (RFC 6587 §3.4.1: `LEN SP MSG`),
//! over TCP or over TLS (RFC 5425, rustls).
//!
//! Acknowledged once written and flushed to the connection. Plain syslog has no
//! application-level acknowledgement, so a collector that dies while a page is in
//! flight can lose what it had not read yet. To keep that window small, the sink checks
//! before each page whether the collector closed the connection (a collector never
//! sends on it, so anything readable is its goodbye) and reconnects first; pages
//! written into a connection that then fails are sent again (at least once).
//!
//! The `syslog` crate frames nothing and speaks no TLS, and RFC 5424's header is one
//! `format!`: hand-written.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use time::{UtcOffset, macros::format_description};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{Line, SinkError};
use crate::export::config::{SyslogConfig, SyslogTransport};

/// Bound on connecting (and the TLS handshake) and on writing a page.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(15);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

pub struct SyslogSink {
    config: SyslogConfig,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connection: Option<Box<dyn Stream>>,
}

impl SyslogSink {
    pub fn new(config: SyslogConfig) -> Result<Self, SinkError> {
        let tls = match config.transport {
            SyslogTransport::Tcp => None,
            SyslogTransport::Tls => {
                let host = config
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&config.address).to_owned());
                let server_name = ServerName::try_from(host.clone())
                    .map_err(|_| SinkError::Config(format!("{host:?} is not a server name")))?;
                let client = client_config(config.ca_file.as_deref())?;
                Some((TlsConnector::from(Arc::new(client)), server_name))
            }
        };
        Ok(Self {
            config,
            tls,
            connection: None,
        })
    }

    pub async fn send(&mut self, lines: &[Line]) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for line in lines {
            let message = message(&self.config, line);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        if self
            .connection
            .as_mut()
            .is_some_and(|connection| peer_closed(connection.as_mut()))
        {
            tracing::info!(exporter = %self.config.name, "the syslog collector closed the connection; reconnecting");
            self.connection = None;
        }
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let written = tokio::time::timeout(NETWORK_TIMEOUT, async {
            connection.write_all(&frames).await?;
            connection.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.connection = Some(connection);
                Ok(())
            }
            Ok(Err(source)) => Err(SinkError::Io {
                what: format!("writing to {}", self.config.address),
                source,
            }),
            Err(_) => Err(SinkError::Timeout(NETWORK_TIMEOUT.as_secs())),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, SinkError> {
        let address = &self.config.address;
        let connected = tokio::time::timeout(NETWORK_TIMEOUT, async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(|source| SinkError::Io {
                    what: format!("cannot connect to {address}"),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            Ok::<Box<dyn Stream>, SinkError>(match &self.tls {
                None => Box::new(tcp),
                Some((connector, server_name)) => {
                    Box::new(connector.connect(server_name.clone(), tcp).await.map_err(
                        |error| SinkError::Tls(format!("handshake with {address}: {error}")),
                    )?)
                }
            })
        })
        .await;
        connected.map_err(|_| SinkError::Timeout(NETWORK_TIMEOUT.as_secs()))?
    }
}

/// Whether the collector has closed (or reset) the connection, without waiting.
fn peer_closed(stream: &mut dyn Stream) -> bool {
    let mut context = Context::from_waker(std::task::Waker::noop());
    let mut buffer = [0u8; 512];
    let mut buffer = ReadBuf::new(&mut buffer);
    match Pin::new(stream).poll_read(&mut context, &mut buffer) {
        Poll::Pending => false,
        Poll::Ready(Ok(())) => buffer.filled().is_empty(),
        Poll::Ready(Err(_)) => true,
    }
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`.
pub fn message(config: &SyslogConfig, line: &Line) -> String {
    let priority = u16::from(config.facility) * 8 + u16::from(line.syslog_severity.min(7));
    let timestamp = line
        .time
        .to_offset(UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap_or_else(|_| "-".into());
    format!(
        "<{priority}>1 {timestamp} {} {} {} {} - {}",
        header_field(&line.host, 255),
        header_field(&config.app_name, 48),
        std::process::id(),
        header_field(line.activity, 32),
        line.text
    )
}

/// A header field: printable US-ASCII without spaces, at most `max` long; `-` if empty.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .filter(|ch| ch.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    }
}

/// rustls with the given CA file, or the system trust store.
pub(super) fn client_config(ca_file: Option<&std::path::Path>) -> Result<ClientConfig, SinkError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let error = |e: &dyn std::fmt::Display| {
                SinkError::Config(format!("CA file {}: {e}", path.display()))
            };
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| error(&e))? {
                roots
                    .add(certificate.map_err(|e| error(&e))?)
                    .map_err(|e| error(&e))?;
            }
        }
        None => roots.extend(crate::trust::default_roots().roots.iter().cloned()),
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| SinkError::Tls(error.to_string()))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_rfc_5424() {
        let config = SyslogConfig {
            name: "s".into(),
            format: crate::export::Format::Cef,
            address: "127.0.0.1:514".into(),
            transport: SyslogTransport::Tcp,
            ca_file: None,
            server_name: None,
            app_name: "sluice".into(),
            facility: 13,
            batch_size: 10,
        };
        let line = Line {
            seq: 1,
            time: time::macros::datetime!(2026-01-02 03:04:05.123456789 +01:00),
            host: "my host".into(),
            activity: "session_open",
            syslog_severity: 4,
            text: "CEF:0|x".into(),
        };
        let message = message(&config, &line);
        let pid = std::process::id();
        assert_eq!(
            message,
            format!(
                "<108>1 2026-01-02T02:04:05.123456Z myhost sluice {pid} session_open - CEF:0|x"
            )
        );
        assert_eq!(host_of("[::1]:6514"), "::1");
        assert_eq!(host_of("logs.example:6514"), "logs.example");
    }
}
