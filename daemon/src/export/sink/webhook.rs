//! A generic HTTP(S) webhook: one POST per page, one event per line (NDJSON for the
//! JSON formats, plain text for CEF). Acknowledged by any 2xx; anything else is sent
//! again after a backoff.

use bytes::Bytes;

use super::{Line, SinkError, content_type, credential_secret, http::HttpClient};
use crate::{credentials::Credentials, export::config::WebhookConfig};

pub struct WebhookSink {
    client: HttpClient,
    path: String,
    headers: Vec<(String, String)>,
}

impl WebhookSink {
    pub fn new(config: &WebhookConfig, credentials: &Credentials) -> Result<Self, SinkError> {
        let client = HttpClient::new(&config.url, config.ca_file.as_deref())?;
        let path = client
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string);
        let mut headers: Vec<(String, String)> = config
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        headers.push(("content-type".into(), content_type(config.format).into()));
        if let (Some(header), Some(credential)) = (&config.secret_header, &config.secret_credential)
        {
            headers.push((header.clone(), credential_secret(credentials, credential)?));
        }
        for (name, value) in &headers {
            hyper::header::HeaderName::try_from(name.as_str())
                .map_err(|_| SinkError::Config(format!("{name:?} is not a header name")))?;
            hyper::header::HeaderValue::try_from(value.as_str()).map_err(|_| {
                SinkError::Config(format!("the value of header {name} is not valid"))
            })?;
        }
        Ok(Self {
            client,
            path,
            headers,
        })
    }

    pub async fn send(&mut self, lines: &[Line]) -> Result<(), SinkError> {
        let mut body = Vec::new();
        for line in lines {
            body.extend_from_slice(line.text.as_bytes());
            body.push(b'\n');
        }
        self.client
            .deliver(&self.path, &self.headers, Bytes::from(body), |status| {
                (200..300).contains(&status)
            })
            .await
    }
}
