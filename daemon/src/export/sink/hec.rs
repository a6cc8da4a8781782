//! Splunk HTTP Event Collector: `POST /services/collector/event` with
//! `Authorization: Splunk <token>`, a page of events as concatenated JSON envelopes
//! (`{"time":..,"host":..,"source":"sluice","sourcetype":..,"event":..}`).
//!
//! Acknowledged by a 200. Anything else (503 when Splunk's queues are full, 429, any
//! 5xx, but also 4xx such as a bad token) is an error: the same page is sent again
//! after a backoff, so nothing is skipped and order is kept. A 200 means Splunk took
//! the events, not that they are indexed (indexer acknowledgement is not used).

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Line, SinkError, credential_secret, http::HttpClient};
use crate::{credentials::Credentials, export::config::HecConfig};

/// HEC's event endpoint.
pub const EVENT_PATH: &str = "/services/collector/event";

pub struct HecSink {
    client: HttpClient,
    path: String,
    headers: Vec<(String, String)>,
    json_events: bool,
    index: Option<String>,
    sourcetype: String,
}

impl HecSink {
    pub fn new(config: &HecConfig, credentials: &Credentials) -> Result<Self, SinkError> {
        let client = HttpClient::new(&config.url, config.ca_file.as_deref())?;
        let path = match client.uri().path() {
            "" | "/" => EVENT_PATH.to_owned(),
            path => path.to_owned(),
        };
        let token = match (&config.token_credential, &config.token) {
            (Some(name), _) => credential_secret(credentials, name)?,
            (None, Some(token)) => token.clone(),
            (None, None) => return Err(SinkError::Config("no HEC token configured".into())),
        };
        Ok(Self {
            client,
            path,
            headers: vec![
                ("authorization".into(), format!("Splunk {token}")),
                ("content-type".into(), "application/json".into()),
            ],
            json_events: config.format.is_json(),
            index: config.index.clone(),
            sourcetype: config
                .sourcetype
                .clone()
                .unwrap_or_else(|| format!("sluice:{}", config.format)),
        })
    }

    pub async fn send(&mut self, lines: &[Line]) -> Result<(), SinkError> {
        let mut body = Vec::new();
        for line in lines {
            let event = if self.json_events {
                serde_json::from_str(&line.text)
                    .unwrap_or_else(|_| Value::String(line.text.clone()))
            } else {
                Value::String(line.text.clone())
            };
            let seconds = line.time.unix_timestamp_nanos() as f64 / 1e9;
            let mut envelope = json!({
                "time": (seconds * 1000.0).round() / 1000.0,
                "host": line.host,
                "source": "sluice",
                "sourcetype": self.sourcetype,
                "event": event,
            });
            if let Some(index) = &self.index {
                envelope["index"] = json!(index);
            }
            serde_json::to_writer(&mut body, &envelope)
                .map_err(|error| SinkError::Http(error.to_string()))?;
            body.push(b'\n');
        }
        self.client
            .deliver(&self.path, &self.headers, Bytes::from(body), |status| {
                status == 200
            })
            .await
    }
}
