//! The `[[export]]` entries of the daemon's configuration: one per exporter.
//!
//! ```toml
//! [[export]]
//! kind = "syslog"            # file | syslog | hec | webhook
//! name = "siem"              # names the cursor: keep it stable
//! format = "cef"             # ocsf | ecs | cef | jsonl
//! address = "10.0.0.5:6514"
//! transport = "tls"          # tcp | tls
//! ca_file = "/etc/sluice/siem-ca.pem"
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::Format;

/// One exporter. The `kind` key picks the variant; unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExporterConfig {
    File(FileConfig),
    Syslog(SyslogConfig),
    Hec(HecConfig),
    Webhook(WebhookConfig),
}

/// JSON lines (or CEF lines) appended to a file, rotated by size.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: String,
    pub format: Format,
    pub path: PathBuf,
    /// Rotate before the file would grow past this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` newest ... `PATH.N`); older ones are deleted.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

/// RFC 5424 messages over TCP (RFC 6587 octet counting) or TLS (RFC 5425).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub name: String,
    pub format: Format,
    /// `host:port` of the collector.
    pub address: String,
    #[serde(default)]
    pub transport: SyslogTransport,
    /// CA certificates (PEM) that sign the collector's certificate; the system's web
    /// roots when absent. TLS only.
    pub ca_file: Option<PathBuf>,
    /// The name the collector's certificate must carry; the host of `address` when absent.
    pub server_name: Option<String>,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// The syslog facility (13, log audit, by default).
    #[serde(default = "default_facility")]
    pub facility: u8,
    /// Events per page written at once.
    #[serde(default = "default_page_size")]
    pub batch_size: usize,
}

/// TCP or TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    #[default]
    Tcp,
    Tls,
}

/// Splunk's HTTP Event Collector. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    pub name: String,
    pub format: Format,
    /// `https://splunk:8088` (the path `/services/collector/event` is added when absent).
    pub url: String,
    /// The credentials-file entry whose `password` is the HEC token (preferred: the
    /// credentials file is root-only).
    pub token_credential: Option<String>,
    /// The token itself, when it may sit in the configuration file.
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub index: Option<String>,
    pub sourcetype: Option<String>,
    /// Events per request, at most.
    #[serde(default = "default_hec_batch")]
    pub batch_size: usize,
    /// How long to wait for a fuller batch once some events are ready.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
}

impl std::fmt::Debug for HecConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HecConfig")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("url", &self.url)
            .field("token_credential", &self.token_credential)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("index", &self.index)
            .field("sourcetype", &self.sourcetype)
            .field("batch_size", &self.batch_size)
            .field("batch_interval_ms", &self.batch_interval_ms)
            .finish()
    }
}

/// Any HTTP(S) endpoint: a POST per page, one event per line.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub format: Format,
    pub url: String,
    /// Extra request headers, e.g. a static API key.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A header whose value is a secret: `(header name, credentials entry)`.
    pub secret_header: Option<String>,
    pub secret_credential: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_page_size")]
    pub batch_size: usize,
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_keep() -> u32 {
    5
}
fn default_app_name() -> String {
    "sluice".into()
}
fn default_facility() -> u8 {
    13
}
fn default_page_size() -> usize {
    500
}
fn default_hec_batch() -> usize {
    100
}
fn default_batch_interval_ms() -> u64 {
    200
}

impl ExporterConfig {
    pub fn name(&self) -> &str {
        match self {
            ExporterConfig::File(config) => &config.name,
            ExporterConfig::Syslog(config) => &config.name,
            ExporterConfig::Hec(config) => &config.name,
            ExporterConfig::Webhook(config) => &config.name,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            ExporterConfig::File(config) => config.format,
            ExporterConfig::Syslog(config) => config.format,
            ExporterConfig::Hec(config) => config.format,
            ExporterConfig::Webhook(config) => config.format,
        }
    }

    /// `file`, `syslog`, `hec` or `webhook`.
    pub fn kind(&self) -> &'static str {
        match self {
            ExporterConfig::File(_) => "file",
            ExporterConfig::Syslog(_) => "syslog",
            ExporterConfig::Hec(_) => "hec",
            ExporterConfig::Webhook(_) => "webhook",
        }
    }

    /// Most events read and sent at once.
    pub fn page_size(&self) -> usize {
        match self {
            ExporterConfig::File(_) => default_page_size(),
            ExporterConfig::Syslog(config) => config.batch_size,
            ExporterConfig::Hec(config) => config.batch_size,
            ExporterConfig::Webhook(config) => config.batch_size,
        }
    }

    /// How long to wait for a fuller page once some events are ready.
    pub fn batch_interval_ms(&self) -> u64 {
        match self {
            ExporterConfig::Hec(config) => config.batch_interval_ms,
            ExporterConfig::Webhook(config) => config.batch_interval_ms,
            ExporterConfig::File(_) | ExporterConfig::Syslog(_) => 0,
        }
    }

    /// Checks what serde cannot: names usable as cursor file names, sizes, pairs.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.name();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        {
            return Err(format!(
                "export name {name:?} must be 1 to 64 letters, digits, `-` or `_`"
            ));
        }
        if self.page_size() == 0 || self.page_size() > 10_000 {
            return Err(format!(
                "export {name}: batch_size must be between 1 and 10000"
            ));
        }
        match self {
            ExporterConfig::File(file) if file.max_bytes < 4096 => {
                Err(format!("export {name}: max_bytes must be at least 4096"))
            }
            ExporterConfig::Hec(hec) if hec.token.is_some() == hec.token_credential.is_some() => {
                Err(format!(
                    "export {name}: give exactly one of token_credential (preferred) and token"
                ))
            }
            ExporterConfig::Webhook(webhook)
                if webhook.secret_header.is_some() != webhook.secret_credential.is_some() =>
            {
                Err(format!(
                    "export {name}: secret_header and secret_credential go together"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Checks every entry and that names are unique (each names a cursor).
pub fn validate_all(exporters: &[ExporterConfig]) -> Result<(), String> {
    for (index, exporter) in exporters.iter().enumerate() {
        exporter.validate()?;
        if exporters[..index]
            .iter()
            .any(|other| other.name() == exporter.name())
        {
            return Err(format!(
                "two exports are named {:?}: each name keeps its own cursor",
                exporter.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    #[test]
    fn export_entries_parse_by_kind() {
        let config = Config::parse(
            "[[export]]\nkind = \"syslog\"\nname = \"siem\"\nformat = \"cef\"\naddress = \"127.0.0.1:6514\"\ntransport = \"tls\"\n\
             [[export]]\nkind = \"hec\"\nname = \"splunk\"\nformat = \"ocsf\"\nurl = \"https://127.0.0.1:8088\"\ntoken_credential = \"splunk\"\n",
        )
        .expect("parses");
        assert_eq!(config.exports.len(), 2);
        assert_eq!(config.exports[0].kind(), "syslog");
        assert!(matches!(
            &config.exports[0],
            ExporterConfig::Syslog(SyslogConfig {
                transport: SyslogTransport::Tls,
                facility: 13,
                ..
            })
        ));
        assert_eq!(config.exports[1].format(), Format::Ocsf);
        validate_all(&config.exports).expect("valid");
    }

    #[test]
    fn unknown_keys_kinds_and_clashing_names_are_errors() {
        let unknown = Config::parse(
            "[[export]]\nkind = \"file\"\nname = \"f\"\nformat = \"jsonl\"\npath = \"/tmp/x\"\nmax_byte = 1\n",
        )
        .expect_err("unknown key");
        assert!(unknown.contains("max_byte"), "{unknown}");
        assert!(
            Config::parse("[[export]]\nkind = \"kafka\"\nname = \"k\"\nformat = \"jsonl\"\n")
                .is_err()
        );
        let file = |name: &str| {
            ExporterConfig::File(FileConfig {
                name: name.into(),
                format: Format::Jsonl,
                path: "/tmp/x".into(),
                max_bytes: 1 << 20,
                keep: 1,
            })
        };
        assert!(validate_all(&[file("a"), file("a")]).is_err());
        assert!(validate_all(&[file("../etc")]).is_err());
        validate_all(&[file("a"), file("b")]).expect("distinct names");
    }
}
