//! sluice's SSH certificate authority: how an unchanged `ssh` trusts the daemon.
//!
//! The daemon ends every intercepted SSH connection itself, so the agent's `ssh` sees
//! the daemon's host key instead of the server's. One Ed25519 CA key in the state
//! directory (root-only) signs, per connection, a fresh host key with a host
//! certificate that lives minutes; `sluice ssh-ca install` writes one
//! `@cert-authority * KEY` line into the system known_hosts, and OpenSSH then accepts
//! the certificate silently, even under `StrictHostKeyChecking=yes`. A fresh key per
//! connection means no key a client ever wrote down can be reused.
//!
//! OpenSSH requires the certificate's principal to be the name the user typed (or the
//! IP literal); a certificate without principals is valid for any name. So the
//! principals are the names this agent resolved to the destination through sluice's
//! resolver plus the IP literal, and when no name is known the certificate has none
//! and lives only [`UNNAMED_LIFETIME`].

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use russh::keys::{
    Certificate, PrivateKey,
    ssh_key::{self, Algorithm, LineEnding, certificate::CertType},
};

/// The file in the state directory holding the CA's private key.
pub const CA_KEY_FILE: &str = "ssh-ca.key";
/// How long a host certificate with principals lives.
pub const NAMED_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long a certificate without principals (valid for any host name) lives.
pub const UNNAMED_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Clock skew tolerated between the daemon and the client (same host, but still).
const BACKDATE: Duration = Duration::from_secs(60);
/// The comment that marks the line `sluice ssh-ca install` manages.
pub const KNOWN_HOSTS_MARKER: &str = "sluice-ssh-ca";

/// Errors of the SSH CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an OpenSSH private key: {source}")]
    Parse {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error("ssh key: {0}")]
    Key(#[from] ssh_key::Error),
}

/// The CA key that signs host certificates (and, when a credential names it, user
/// certificates for upstream logins).
#[derive(Clone)]
pub struct SshCa {
    key: PrivateKey,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SshCa({})", self.fingerprint())
    }
}

/// A host key and the certificate presented with it on one connection.
pub struct HostIdentity {
    pub key: PrivateKey,
    pub certificate: Certificate,
}

impl SshCa {
    /// Reads `state_dir/ssh-ca.key`, creating it (0600) on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        let path = state_dir.join(CA_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key = PrivateKey::from_openssh(text.as_bytes())
                    .map_err(|source| CaError::Parse { path, source })?;
                return Ok(Self { key });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CaError::Read { path, source }),
        }
        let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        key.set_comment(KNOWN_HOSTS_MARKER);
        let text = key.to_openssh(LineEnding::LF)?;
        let write_error = |source| CaError::Write {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(write_error)?;
        file.write_all(text.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        Ok(Self { key })
    }

    /// A CA from a key already in memory (tests).
    pub fn from_key(key: PrivateKey) -> Self {
        Self { key }
    }

    /// The CA's public key in OpenSSH form (`ssh-ed25519 AAAA...`).
    pub fn public_key_openssh(&self) -> String {
        let mut public = self.key.public_key().clone();
        public.set_comment("");
        public
            .to_openssh()
            .map(|line| line.trim_end().to_owned())
            .unwrap_or_default()
    }

    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    }

    /// The known_hosts line that makes OpenSSH trust every host certificate this CA signs.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "@cert-authority * {} {KNOWN_HOSTS_MARKER}",
            self.public_key_openssh()
        )
    }

    /// A fresh Ed25519 host key and its certificate for one connection.
    ///
    /// `principals` empty: valid for any host name, for [`UNNAMED_LIFETIME`] only.
    /// `key_id` names the original destination, so `ssh -v` shows it.
    pub fn host_identity(
        &self,
        principals: &[String],
        key_id: &str,
    ) -> Result<HostIdentity, CaError> {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        let lifetime = if principals.is_empty() {
            UNNAMED_LIFETIME
        } else {
            NAMED_LIFETIME
        };
        let mut builder = self.builder(&key, lifetime)?;
        builder.cert_type(CertType::Host)?;
        builder.key_id(key_id)?;
        if principals.is_empty() {
            builder.all_principals_valid()?;
        } else {
            for principal in principals {
                builder.valid_principal(principal.clone())?;
            }
        }
        let certificate = builder.sign(&self.key)?;
        Ok(HostIdentity { key, certificate })
    }

    /// A short-lived user certificate for `user` on `key`, for an upstream login with
    /// an sshd that trusts this CA (`TrustedUserCAKeys`). It carries no extension at
    /// all: no pty, no port, agent or X11 forwarding, no user rc.
    pub fn user_certificate(
        &self,
        key: &PrivateKey,
        user: &str,
        key_id: &str,
        lifetime: Duration,
    ) -> Result<Certificate, CaError> {
        let mut builder = self.builder(key, lifetime)?;
        builder.cert_type(CertType::User)?;
        builder.key_id(key_id)?;
        builder.valid_principal(user)?;
        Ok(builder.sign(&self.key)?)
    }

    fn builder(
        &self,
        key: &PrivateKey,
        lifetime: Duration,
    ) -> Result<ssh_key::certificate::Builder, CaError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let valid_after = now.saturating_sub(BACKDATE).as_secs();
        let valid_before = (now + lifetime).as_secs();
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce);
        let mut builder = ssh_key::certificate::Builder::new(
            nonce.to_vec(),
            key.public_key().key_data().clone(),
            valid_after,
            valid_before,
        )?;
        builder.serial(rand::random())?;
        Ok(builder)
    }
}

/// `text` (a known_hosts file) with sluice's CA line in place of any earlier one.
pub fn with_ca_line(text: &str, line: &str) -> String {
    let mut out = without_ca_line(text);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// `text` without the line `sluice ssh-ca install` wrote.
pub fn without_ca_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let is_ours = line.starts_with("@cert-authority ")
            && line.trim_end().ends_with(&format!(" {KNOWN_HOSTS_MARKER}"));
        if !is_ours {
            out.push_str(line);
        }
    }
    out
}

/// Writes `text` to `path` through a temporary file and a rename, keeping the mode
/// readable by everyone (known_hosts is public and `ssh` runs as any user).
pub fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("sluice-tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_key_is_created_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = SshCa::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SshCa::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
    }

    #[test]
    fn host_certificates_name_the_principals_and_verify_against_the_ca() {
        let ca = SshCa::from_key(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap());
        let names = vec!["git.example".to_owned(), "10.0.0.5".to_owned()];
        let identity = ca.host_identity(&names, "10.0.0.5:22").unwrap();
        let certificate = &identity.certificate;
        assert_eq!(certificate.cert_type(), CertType::Host);
        assert_eq!(certificate.valid_principals(), names.as_slice());
        assert!(certificate.critical_options().is_empty());
        let ca_fingerprint = ca.key.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        certificate.validate([&ca_fingerprint]).unwrap();
        assert_eq!(
            certificate.public_key(),
            identity.key.public_key().key_data()
        );
        let lifetime = certificate.valid_before() - certificate.valid_after();
        assert!(lifetime <= (NAMED_LIFETIME + BACKDATE).as_secs());
    }

    #[test]
    fn without_names_the_certificate_is_short_and_has_no_principals() {
        let ca = SshCa::from_key(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap());
        let identity = ca.host_identity(&[], "10.0.0.5:22").unwrap();
        assert!(identity.certificate.valid_principals().is_empty());
        let lifetime = identity.certificate.valid_before() - identity.certificate.valid_after();
        assert!(lifetime <= (UNNAMED_LIFETIME + BACKDATE).as_secs());
        // Every connection gets its own key.
        let other = ca.host_identity(&[], "10.0.0.5:22").unwrap();
        assert_ne!(identity.key.public_key(), other.key.public_key());
    }

    #[test]
    fn user_certificates_carry_no_permissions() {
        let ca = SshCa::from_key(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap());
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let certificate = ca
            .user_certificate(&key, "deploy", "sluice", Duration::from_secs(60))
            .unwrap();
        assert_eq!(certificate.cert_type(), CertType::User);
        assert_eq!(certificate.valid_principals(), ["deploy".to_owned()]);
        assert!(certificate.extensions().is_empty());
    }

    #[test]
    fn install_replaces_and_uninstall_removes_only_our_line() {
        let ca = SshCa::from_key(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap());
        let line = ca.known_hosts_line();
        let existing =
            "host1 ssh-ed25519 AAAAkey\n@cert-authority *.corp ssh-ed25519 AAAAother corp";
        let installed = with_ca_line(existing, &line);
        assert_eq!(
            installed,
            format!("{existing}\n{line}\n"),
            "appended after the existing lines"
        );
        assert_eq!(with_ca_line(&installed, &line), installed, "idempotent");
        assert_eq!(without_ca_line(&installed), format!("{existing}\n"));
        assert!(line.starts_with("@cert-authority * ssh-ed25519 "));
    }
}
