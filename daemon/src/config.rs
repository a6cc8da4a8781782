//! The daemon's configuration file (TOML).
//!
//! Every key has an embedded default, so an empty file (or none at all) is a working
//! configuration. Unknown keys are errors: a misspelt security setting must not be
//! silently ignored.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where `sluice` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluice.toml";

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub redirect: RedirectConfig,
    pub cgroup: CgroupConfig,
    pub store: StoreConfig,
    pub control: ControlConfig,
    /// The agents' DNS resolver.
    pub dns: crate::dns::DnsConfig,
    pub approvals: ApprovalsConfig,
    pub metrics: MetricsConfig,
    /// Continuous exporters of the event log (`[[export]]`), each with its own cursor.
    #[serde(rename = "export")]
    pub exports: Vec<crate::export::config::ExporterConfig>,
    /// Workload identity: the token issuers whose CI jobs' tokens the daemon verifies.
    pub identity: crate::workload::IdentityConfig,
    /// The web console (`[ui]`); off unless `listen` is set.
    pub ui: crate::ui::UiConfig,
}

/// Paths the daemon owns.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Holds the store and anything else the daemon persists. Created 0700.
    pub state_dir: PathBuf,
    /// The policy directory: every `*.toml` file in it is loaded.
    pub policy_dir: PathBuf,
    /// Upstream credentials the daemon logs in with for resources that name one.
    /// Must be owned by root and mode 0600 (or stricter); a missing file means none.
    pub credentials_file: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/sluice"),
            policy_dir: PathBuf::from("/etc/sluice/policies"),
            credentials_file: PathBuf::from("/etc/sluice/credentials.toml"),
        }
    }
}

/// The redirect listener that every agent connection lands on.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    pub port: u16,
    pub ipv4: Ipv4Addr,
    /// Set to `false` on hosts without IPv6 loopback; IPv6 connects then fail closed.
    pub ipv6_enabled: bool,
    pub ipv6: Ipv6Addr,
    /// How long an upstream connect may take before the session is closed.
    pub upstream_connect_timeout_ms: u64,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            port: 15001,
            ipv4: Ipv4Addr::LOCALHOST,
            ipv6_enabled: true,
            ipv6: Ipv6Addr::LOCALHOST,
            upstream_connect_timeout_ms: 10_000,
        }
    }
}

/// The managed cgroup and where the programs' links and maps are pinned.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// The managed cgroup root: relative paths are taken under the cgroup2 mount found
    /// in /proc/mounts; absolute paths are used as they are.
    pub root: PathBuf,
    /// A directory on bpffs for the pinned links and maps, so that the programs stay
    /// attached (fail closed) while the daemon is down.
    pub bpffs_dir: PathBuf,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("sluice"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/sluice"),
        }
    }
}

/// The session store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Upper bound on how long a batched write waits for its group flush.
    pub flush_interval_ms: u64,
    /// When audit events must be on disk: `strict` (before the action they describe
    /// goes upstream) or `batched` (within `flush_interval_ms`).
    pub durability: AuditDurability,
    /// Drop events (and closed sessions) older than this many days.
    pub retain_days: Option<u64>,
    /// Drop the oldest events once the event log holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

/// The `[store] durability` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDurability {
    /// Every event is flushed before the action it describes is forwarded.
    #[default]
    Strict,
    /// Events are flushed at least every `flush_interval_ms`.
    Batched,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 20,
            durability: AuditDurability::Strict,
            retain_days: None,
            max_bytes: None,
        }
    }
}

/// The control API (the CLI's way in).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// The unix socket the CLI talks to.
    pub socket: PathBuf,
    /// Members of this group may use the control API besides root.
    pub admin_group: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/sluice/control.sock"),
            admin_group: None,
        }
    }
}

/// Statements held for a human (`review` rules).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long a held statement waits when its rule names no `timeout` ("90s",
    /// "10m", "1h"); then it is denied.
    pub default_timeout: String,
    /// Where each hold is announced (`[[approvals.webhook]]`).
    pub webhook: Vec<WebhookConfig>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            default_timeout: "5m".into(),
            webhook: Vec::new(),
        }
    }
}

/// One webhook that is POSTed to when a statement is held.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

/// The body a webhook receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// sluice's own JSON document (see docs/api.md).
    #[default]
    Json,
    /// `{"text": ...}`, as Slack incoming webhooks (and compatible chat tools) take it.
    Slack,
}

/// The Prometheus endpoint; off unless `listen` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback `ip:port` to serve `GET /metrics` on.
    pub listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// Reads `path`; a missing file at the default path means "all defaults".
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                String::new()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Parses TOML text; the error names the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| {
            let location = error
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!("{line}:{column}: ")
                })
                .unwrap_or_default();
            format!("{location}{}", error.message())
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.redirect.port == 0 {
            return Err("redirect.port must not be 0".into());
        }
        // The programs keep agents off the daemon's listeners by address, which holds
        // only for loopback ones (a wildcard listener is on every address of the host).
        if !self.redirect.ipv4.is_loopback() || !self.redirect.ipv6.is_loopback() {
            return Err(format!(
                "redirect.ipv4 and redirect.ipv6 must be loopback addresses (127.0.0.0/8, ::1), \
                 not {} and {}",
                self.redirect.ipv4, self.redirect.ipv6
            ));
        }
        if self.store.flush_interval_ms == 0 {
            return Err("store.flush_interval_ms must be at least 1".into());
        }
        crate::export::config::validate_all(&self.exports)?;
        if self.store.retain_days == Some(0) {
            return Err("store.retain_days must be at least 1".into());
        }
        if self.store.max_bytes.is_some_and(|max| max < 4096) {
            return Err("store.max_bytes must be at least 4096".into());
        }
        crate::approvals::parse_duration(&self.approvals.default_timeout)
            .map_err(|error| format!("approvals.default_timeout: {error}"))?;
        for webhook in &self.approvals.webhook {
            crate::approvals::webhook::check_url(&webhook.url)
                .map_err(|error| format!("approvals.webhook: {error}"))?;
        }
        self.identity.validate()?;
        self.ui.validate()?;
        if let Some(listen) = self.metrics.listen
            && !listen.ip().is_loopback()
        {
            return Err(format!(
                "metrics.listen must be a loopback address (127.0.0.0/8 or ::1), not {listen}: \
                 the metrics reveal agents' activity"
            ));
        }
        Ok(())
    }

    /// The store directory inside the state directory.
    pub fn store_dir(&self) -> PathBuf {
        self.daemon.state_dir.join("store")
    }
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_listener_must_be_on_loopback() {
        for text in [
            "[redirect]\nipv4 = \"0.0.0.0\"\n",
            "[redirect]\nipv4 = \"10.1.2.3\"\n",
            "[redirect]\nipv6 = \"::\"\n",
        ] {
            let error = Config::parse(text).expect("parses").validate().unwrap_err();
            assert!(error.contains("loopback"), "{text}: {error}");
        }
        let config = Config::parse("[redirect]\nipv4 = \"127.0.0.9\"\n").expect("parses");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn empty_text_is_all_defaults() {
        let config = Config::parse("").expect("empty config parses");
        assert_eq!(config.redirect.port, 15001);
        assert_eq!(config.cgroup.root, PathBuf::from("sluice"));
        assert_eq!(config.daemon.state_dir, PathBuf::from("/var/lib/sluice"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let error = Config::parse("[redirect]\nport = 1\nprot = 2\n").expect_err("unknown key");
        assert!(error.starts_with("3:1: "), "{error}");
        assert!(error.contains("prot"), "{error}");
    }

    #[test]
    fn metrics_only_listen_on_loopback() {
        let config = Config::parse("[metrics]\nlisten = \"0.0.0.0:9464\"\n").expect("parses");
        let error = config.validate().expect_err("non-loopback refused");
        assert!(error.contains("loopback"), "{error}");
        let config = Config::parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").expect("parses");
        assert!(config.validate().is_ok());
        assert!(Config::parse("").expect("parses").metrics.listen.is_none());
    }

    #[test]
    fn approvals_settings_are_checked() {
        let config = Config::parse(
            "[approvals]\ndefault_timeout = \"90s\"\n[[approvals.webhook]]\nurl = \"http://127.0.0.1:1/hook\"\nformat = \"slack\"\n",
        )
        .expect("parses");
        assert!(config.validate().is_ok());
        assert_eq!(config.approvals.webhook[0].format, WebhookFormat::Slack);
        let config = Config::parse("[approvals]\ndefault_timeout = \"soon\"\n").expect("parses");
        assert!(config.validate().is_err());
        let config = Config::parse("[[approvals.webhook]]\nurl = \"ftp://x/\"\n").expect("parses");
        assert!(config.validate().is_err());
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
