//! Where exported events go. Each sink takes one page of rendered lines at a time and
//! returns only once the destination has acknowledged all of it (what that means is
//! per sink, below); the runner moves its cursor after that and never before.
//!
//! | sink | acknowledged when |
//! |---|---|
//! | [`file`] | written and `fsync`ed |
//! | [`syslog`] | written and flushed to the TCP (or TLS) connection |
//! | [`hec`] | Splunk answered 200 |
//! | [`webhook`] | the endpoint answered 2xx |

pub mod file;
pub mod hec;
mod http;
pub mod syslog;
pub mod webhook;

use time::OffsetDateTime;

use super::{Format, config::ExporterConfig};
use crate::credentials::Credentials;

/// One event, rendered, with what the sinks need besides the text.
#[derive(Clone, Debug)]
pub struct Line {
    pub seq: u64,
    pub time: OffsetDateTime,
    pub host: String,
    /// The activity's type (`session_open`...), for syslog's MSGID.
    pub activity: &'static str,
    /// RFC 5424 severity: 6 informational, 5 notice, 4 warning.
    pub syslog_severity: u8,
    pub text: String,
}

/// A sink failed; the page is sent again after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the receiver answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("timed out after {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Config(String),
}

/// A configured destination.
pub enum Sink {
    File(file::FileSink),
    Syslog(syslog::SyslogSink),
    Hec(hec::HecSink),
    Webhook(webhook::WebhookSink),
}

impl Sink {
    /// Builds the sink of `config`; nothing is connected yet.
    pub fn new(config: &ExporterConfig, credentials: &Credentials) -> Result<Self, SinkError> {
        Ok(match config {
            ExporterConfig::File(file) => Sink::File(file::FileSink::new(file.clone())),
            ExporterConfig::Syslog(syslog) => {
                Sink::Syslog(syslog::SyslogSink::new(syslog.clone())?)
            }
            ExporterConfig::Hec(hec) => Sink::Hec(hec::HecSink::new(hec, credentials)?),
            ExporterConfig::Webhook(webhook) => {
                Sink::Webhook(webhook::WebhookSink::new(webhook, credentials)?)
            }
        })
    }

    /// Delivers `lines`, in order; `Ok` means acknowledged.
    pub async fn send(&mut self, lines: &[Line]) -> Result<(), SinkError> {
        match self {
            Sink::File(sink) => sink.send(lines).await,
            Sink::Syslog(sink) => sink.send(lines).await,
            Sink::Hec(sink) => sink.send(lines).await,
            Sink::Webhook(sink) => sink.send(lines).await,
        }
    }
}

/// The content type of a body of `format` lines.
fn content_type(format: Format) -> &'static str {
    if format.is_json() {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// Reads a secret from the credentials file: the `password` of entry `name`.
fn credential_secret(credentials: &Credentials, name: &str) -> Result<String, SinkError> {
    credentials
        .get(name)
        .map(|credential| credential.password.expose().to_owned())
        .ok_or_else(|| {
            SinkError::Config(format!(
                "no credential `{name}` in the credentials file (its `password` is the secret)"
            ))
        })
}
