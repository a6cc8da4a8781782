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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 20,
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
        if self.store.flush_interval_ms == 0 {
            return Err("store.flush_interval_ms must be at least 1".into());
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
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
