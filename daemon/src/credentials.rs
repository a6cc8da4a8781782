//! Upstream credentials that the daemon holds so that agents never do.
//!
//! A resource in the policy names a credential; the daemon logs in upstream with it and
//! the agent connects without any password. The file must be owned by root and closed
//! to group and others, because anyone who can read it holds every brokered secret.
//!
//! ```toml
//! [orders-db]
//! user = "orders_app"
//! password = "..."
//!
//! [deploy-key]                       # SSH: a private key (root-only file) ...
//! private_key_file = "/etc/sluice/deploy_ed25519"
//! user = "deploy"                    # optional: else the user the agent named
//!
//! [web-hosts-ca]                     # ... or a short-lived user certificate signed
//! ssh_user_ca = true                 # by sluice's SSH CA (sshd: TrustedUserCAKeys)
//! ```

use std::{
    collections::HashMap,
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Errors loading the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} must be owned by root and not readable by group or others (it is mode {mode:o}, uid {uid}): run `chown root: {path} && chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32, uid: u32 },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A secret that never shows up in Debug output or logs.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// One upstream login: `user` and `password` (databases, HTTP basic), or for HTTP
/// resources `bearer`, or a `header` and its `value`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Required for passwords; for SSH keys optional (the user the agent named).
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: Secret,
    /// Overrides the database the agent asked for.
    pub database: Option<String>,
    /// HTTP: sent as `Authorization: Bearer ...`.
    pub bearer: Option<Secret>,
    /// HTTP: the name of the header `value` is sent in.
    pub header: Option<String>,
    /// HTTP: the value of `header`.
    pub value: Option<Secret>,
    /// HTTPS and Kubernetes: a client certificate (PEM chain) the daemon presents
    /// upstream, with `key_file` (PEM private key).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// SSH: the private key (OpenSSH format) the daemon logs in with.
    pub private_key_file: Option<PathBuf>,
    /// SSH: log in with a short-lived user certificate from sluice's SSH CA, for a
    /// fresh key, without forwarding or pty permissions.
    #[serde(default)]
    pub ssh_user_ca: bool,
}

impl Credential {
    /// Whether the entry is an SSH key or certificate (no password needed).
    pub fn is_ssh(&self) -> bool {
        self.private_key_file.is_some() || self.ssh_user_ca
    }

    /// Whether the entry is a TLS client certificate (`cert_file` and `key_file`).
    pub fn is_client_certificate(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Which shape the entry has, or why it has none.
    pub fn check(&self) -> Result<(), String> {
        if self.private_key_file.is_some() && self.ssh_user_ca {
            return Err("holds both `private_key_file` and `ssh_user_ca`".into());
        }
        if self.is_ssh() {
            // An SSH entry may name the upstream user; it holds nothing else.
            return match (
                self.password.expose().is_empty(),
                self.bearer.is_none()
                    && self.header.is_none()
                    && self.value.is_none()
                    && !self.is_client_certificate(),
            ) {
                (true, true) => Ok(()),
                _ => {
                    Err("an SSH key entry holds no `password`, `bearer` or `header`/`value`".into())
                }
            };
        }
        let login = !self.user.is_empty() || !self.password.expose().is_empty();
        let shapes = [
            login,
            self.bearer.is_some(),
            self.header.is_some() || self.value.is_some(),
            self.is_client_certificate(),
        ];
        match shapes.iter().filter(|&&shape| shape).count() {
            1 if self.cert_file.is_some() != self.key_file.is_some() => {
                Err("`cert_file` and `key_file` go together".into())
            }
            1 if self.header.is_some() != self.value.is_some() => {
                Err("`header` and `value` go together".into())
            }
            1 if login && (self.user.is_empty() || self.password.expose().is_empty()) => {
                Err("`user` and `password` go together".into())
            }
            1 => Ok(()),
            0 => Err(
                "needs `user` and `password`, `bearer`, `header` and `value`, `cert_file` and `key_file`, or (SSH) `private_key_file` or `ssh_user_ca = true`"
                    .into(),
            ),
            _ => Err(
                "holds more than one of `user`/`password`, `bearer`, `header`/`value` and `cert_file`/`key_file`".into(),
            ),
        }
    }
}

/// Every credential, by name.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_name: HashMap<String, Credential>,
}

impl Credentials {
    /// Reads `path`; a missing file means no credentials.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mode = metadata.mode() & 0o777;
        if metadata.uid() != 0 || mode & 0o077 != 0 {
            return Err(CredentialsError::Exposed {
                path: path.to_owned(),
                mode,
                uid: metadata.uid(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let by_name: HashMap<String, Credential> =
            toml::from_str(&text).map_err(|error| CredentialsError::Parse {
                path: path.to_owned(),
                // toml's message quotes the offending line, which may hold a password.
                message: error
                    .span()
                    .map(|span| {
                        let (line, column) = crate::config::line_column(&text, span.start);
                        format!("{line}:{column}: invalid credentials entry")
                    })
                    .unwrap_or_else(|| "invalid credentials file".into()),
            })?;
        for (name, credential) in &by_name {
            credential
                .check()
                .map_err(|problem| CredentialsError::Parse {
                    path: path.to_owned(),
                    message: format!("[{name}]: {problem}"),
                })?;
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The HMAC key of the `hash` masking strategy: `state_dir/mask.key`, 32 random bytes
/// created (0600) on first start and kept, so hashed values still join across
/// restarts. Never logged, never sent anywhere.
pub fn load_or_create_mask_key(state_dir: &Path) -> Result<Vec<u8>, CredentialsError> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let path = state_dir.join("mask.key");
    let read_error = |source| CredentialsError::Read {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {
            return Err(CredentialsError::Parse {
                path: path.clone(),
                message: "the mask key is shorter than 32 bytes".into(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(read_error(error)),
    }
    let key: [u8; 32] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(read_error)?;
    file.write_all(&key).map_err(read_error)?;
    file.sync_all().map_err(read_error)?;
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("credentials.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn loads_a_private_file_and_hides_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[orders]\nuser = \"app\"\npassword = \"s3cr3t\"\n",
            0o600,
        );
        let credentials = Credentials::load(&path).unwrap();
        let orders = credentials.get("orders").unwrap();
        assert_eq!(orders.user, "app");
        assert_eq!(orders.password.expose(), "s3cr3t");
        assert!(!format!("{credentials:?}").contains("s3cr3t"));
    }

    #[test]
    fn ssh_entries_need_no_password_and_others_need_a_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[key]\nprivate_key_file = \"/etc/sluice/k\"\n[ca]\nssh_user_ca = true\nuser = \"deploy\"\n",
            0o600,
        );
        let credentials = Credentials::load(&path).unwrap();
        assert!(credentials.get("key").unwrap().is_ssh());
        assert_eq!(credentials.get("ca").unwrap().user, "deploy");
        let path = write(dir.path(), "[x]\npassword = \"p\"\n", 0o600);
        assert!(Credentials::load(&path).is_err());
    }

    #[test]
    fn client_certificates_need_both_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[bot]\ncert_file = \"/etc/sluice/bot.pem\"\nkey_file = \"/etc/sluice/bot.key\"\n",
            0o600,
        );
        let credentials = Credentials::load(&path).unwrap();
        assert!(credentials.get("bot").unwrap().is_client_certificate());
        for bad in [
            "[bot]\ncert_file = \"/etc/sluice/bot.pem\"\n",
            "[bot]\ncert_file = \"/a\"\nkey_file = \"/b\"\nbearer = \"t0123456789\"\n",
            "[bot]\ncert_file = \"/a\"\nkey_file = \"/b\"\nprivate_key_file = \"/c\"\n",
        ] {
            let path = write(dir.path(), bad, 0o600);
            assert!(Credentials::load(&path).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_group_or_world_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "", 0o644);
        assert!(matches!(
            Credentials::load(&path),
            Err(CredentialsError::Exposed { .. })
        ));
    }

    #[test]
    fn parse_errors_do_not_echo_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[x]\npassword = \"leak\nuser=1", 0o600);
        let error = Credentials::load(&path).unwrap_err().to_string();
        assert!(!error.contains("leak"), "{error}");
    }

    #[test]
    fn a_missing_file_means_no_credentials() {
        assert!(
            Credentials::load(Path::new("/nonexistent/credentials.toml"))
                .unwrap()
                .is_empty()
        );
    }
}
