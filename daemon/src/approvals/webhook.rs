//! Announcing held statements to webhooks: sluice's JSON, or a Slack-compatible
//! `{"text": ...}`.
//!
//! Announcing is best effort and must never slow a session down: a hold only queues
//! its announcement ([`Notifier::announce`] never waits), one task POSTs them, each
//! request bounded by [`REQUEST_TIMEOUT`], and when [`QUEUE_CAPACITY`] announcements
//! are already waiting the new one is dropped and logged. The hold itself does not
//! depend on any webhook: the CLI lists every hold. Plain hyper (HTTP/1.1 over one
//! connection per request) and rustls with the system trust store for `https`, since both
//! are in the tree already and a pooled client buys nothing at this rate.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use serde::Serialize;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::TlsConnector;

use super::HeldStatement;
use crate::config::{WebhookConfig, WebhookFormat};

/// Announcements waiting to be sent, at most.
pub const QUEUE_CAPACITY: usize = 256;
/// The longest one webhook request may take, connect to response head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a webhook URL: `http://` or `https://`, with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    Target::parse(url).map(|_| ())
}

/// Where one webhook goes.
#[derive(Clone, Debug)]
struct Target {
    /// The URL as logs show it: scheme and authority only, since the path of a chat
    /// tool's incoming webhook (Slack's `/services/T…/B…/…`) is its secret.
    shown: String,
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` for the Host header.
    authority: String,
    path: String,
    format: WebhookFormat,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|error| format!("invalid URL {url:?}: {error}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Self {
            shown: format!("{}://{authority}/…", if tls { "https" } else { "http" }),
            tls,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            host,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            format: WebhookFormat::Json,
        })
    }
}

/// Queues announcements for the webhooks' sender task.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Arc<HeldStatement>>,
}

impl Notifier {
    /// Starts the sender task (on the current tokio runtime); `None` when there are
    /// no webhooks. With the web console on, `console_url` (its base URL) makes each
    /// announcement link to the hold's page.
    pub fn start(
        webhooks: &[WebhookConfig],
        console_url: Option<String>,
    ) -> Result<Option<Self>, String> {
        if webhooks.is_empty() {
            return Ok(None);
        }
        let targets = webhooks
            .iter()
            .map(|webhook| {
                Target::parse(&webhook.url).map(|target| Target {
                    format: webhook.format,
                    ..target
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(send_all(targets, receiver, tls_config()?, console_url));
        Ok(Some(Self { queue }))
    }

    /// Queues the announcement of a hold; never waits.
    pub fn announce(&self, held: &HeldStatement) {
        if let Err(error) = self.queue.try_send(Arc::new(held.clone())) {
            tracing::warn!(
                approval = held.id,
                %error,
                "approval webhook announcement dropped: the webhooks are not keeping up"
            );
        }
    }
}

fn tls_config() -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(crate::trust::default_roots().roots.iter().cloned());
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|error| error.to_string())
}

async fn send_all(
    targets: Vec<Target>,
    mut receiver: mpsc::Receiver<Arc<HeldStatement>>,
    tls: Arc<ClientConfig>,
    console_url: Option<String>,
) {
    while let Some(held) = receiver.recv().await {
        for target in &targets {
            let body = match body(target.format, &held, console_url.as_deref()) {
                Ok(body) => body,
                Err(error) => {
                    tracing::error!(%error, "cannot encode an approval webhook body");
                    continue;
                }
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, post(target, body, &tls)).await {
                Ok(Ok(status)) if status.is_success() => {
                    tracing::debug!(approval = held.id, url = %target.shown, "approval webhook sent");
                }
                Ok(Ok(status)) => tracing::warn!(
                    approval = held.id,
                    url = %target.shown,
                    status = status.as_u16(),
                    "approval webhook refused the announcement"
                ),
                Ok(Err(error)) => tracing::warn!(
                    approval = held.id,
                    url = %target.shown,
                    %error,
                    "approval webhook failed"
                ),
                Err(_) => tracing::warn!(
                    approval = held.id,
                    url = %target.shown,
                    "approval webhook timed out after {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            }
        }
    }
}

/// The generic JSON announcement: the hold, and how to decide it.
#[derive(Serialize)]
struct JsonAnnouncement<'a> {
    event: &'static str,
    #[serde(flatten)]
    held: &'a HeldStatement,
    approve_command: String,
    deny_command: String,
    /// The hold's page in the web console, when it is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    console_url: Option<String>,
}

/// A Slack incoming-webhook message.
#[derive(Serialize)]
struct SlackMessage {
    text: String,
}

fn body(
    format: WebhookFormat,
    held: &HeldStatement,
    console_url: Option<&str>,
) -> Result<Vec<u8>, serde_json::Error> {
    let approve = format!("sluice approve {} --reason \"...\"", held.id);
    let deny = format!("sluice deny {} --reason \"...\"", held.id);
    let page = console_url.map(|base| format!("{base}/approvals/{}", held.id));
    match format {
        WebhookFormat::Json => serde_json::to_vec(&JsonAnnouncement {
            event: "approval_requested",
            held,
            approve_command: approve,
            deny_command: deny,
            console_url: page,
        }),
        WebhookFormat::Slack => serde_json::to_vec(&SlackMessage {
            text: format!(
                "sluice: approval {id} needed. Agent `{agent}` (pid {pid}, uid {uid}) sent a {kind} \
                 to `{resource}`, held by rule `{rule}`:\n```{sql}```\n{identity}Approve: `{approve}`\n\
                 Deny: `{deny}`\n{page}Denied automatically if nobody decides within {timeout}.",
                id = held.id,
                agent = held.agent,
                pid = held.pid,
                uid = held.uid,
                kind = held.kind,
                resource = held.resource,
                rule = held.rule,
                sql = held.sql.replace("```", "'''"),
                timeout = super::describe(Duration::from_secs(held.timeout_seconds)),
                page = page
                    .map(|page| format!("In the console: {page}\n"))
                    .unwrap_or_default(),
                identity = held
                    .identity
                    .as_ref()
                    .map(|identity| format!("Identity: {}\n", identity.summary()))
                    .unwrap_or_default(),
            ),
        }),
    }
}

async fn post(
    target: &Target,
    body: Vec<u8>,
    tls: &Arc<ClientConfig>,
) -> Result<hyper::StatusCode, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let request = Request::post(&target.path)
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("sluice/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| error.to_string())?;
    if target.tls {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| format!("`{}` is not a valid TLS server name", target.host))?;
        let stream = TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP: {error}"))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    driver.abort();
    response
        .map(|response| response.status())
        .map_err(|error| format!("HTTP: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("https://hooks.slack.com/services/T/B/X").is_ok());
        for bad in [
            "ftp://x/",
            "127.0.0.1:80",
            "http://",
            "http://user:pw@host/",
        ] {
            assert!(check_url(bad).is_err(), "{bad} accepted");
        }
        let target = Target::parse("http://[::1]:9/a?b=c").expect("parse");
        assert_eq!((target.host.as_str(), target.port), ("::1", 9));
        assert_eq!(target.path, "/a?b=c");
    }

    fn held() -> HeldStatement {
        let now = time::OffsetDateTime::now_utc();
        HeldStatement {
            id: 17,
            session_id: 4,
            statement_seq: 2,
            agent: "bot".into(),
            pid: 4711,
            uid: 1000,
            resource: "orders-db".into(),
            sql: "DELETE FROM orders WHERE id = ?".into(),
            kind: "DELETE".into(),
            operation: "write".into(),
            rule: "writes-need-review".into(),
            reason: "rule sends to review".into(),
            waiting_since: now,
            timeout_seconds: 600,
            expires_at: now + Duration::from_secs(600),
            identity: None,
        }
    }

    #[test]
    fn the_json_body_is_the_hold_and_how_to_decide_it() {
        let body: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Json, &held(), None).expect("body"))
                .expect("JSON");
        assert_eq!(body["event"], "approval_requested");
        assert_eq!(body["id"], 17);
        assert_eq!(body["sql"], "DELETE FROM orders WHERE id = ?");
        assert_eq!(
            body["approve_command"],
            "sluice approve 17 --reason \"...\""
        );
        assert!(body.get("console_url").is_none(), "{body}");
        let linked: serde_json::Value = serde_json::from_slice(
            &super::body(WebhookFormat::Json, &held(), Some("http://127.0.0.1:9470"))
                .expect("body"),
        )
        .expect("JSON");
        assert_eq!(linked["console_url"], "http://127.0.0.1:9470/approvals/17");
    }

    #[test]
    fn the_slack_body_is_one_text_field() {
        let body: serde_json::Value = serde_json::from_slice(
            &body(
                WebhookFormat::Slack,
                &held(),
                Some("https://sluice.example.com"),
            )
            .expect("body"),
        )
        .expect("JSON");
        let object = body.as_object().expect("object");
        assert_eq!(object.len(), 1, "{body}");
        let text = object["text"].as_str().expect("text");
        for part in [
            "approval 17",
            "`bot`",
            "pid 4711",
            "sluice approve 17",
            "10m",
            "In the console: https://sluice.example.com/approvals/17",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }
}
