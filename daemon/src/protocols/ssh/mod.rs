//! SSH: transparent interception with a host CA, brokered logins, per-channel judging
//! and terminal recording.
//!
//! `ca.rs` is how an unchanged `ssh` trusts the daemon, `proxy.rs` the connection
//! (russh on both sides), `command.rs` how a command line becomes an operation class
//! (terminal recordings are the core's `crate::recording`), `sftp.rs` how SFTP file
//! requests are judged one by one. This file turns a
//! session's resource and credential into the proxy's configuration.

pub mod ca;
pub mod command;
mod handler;
pub mod pack;
pub mod proxy;
mod push;
pub mod sftp;

pub use handler::Handler;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use russh::keys::{PrivateKey, ssh_key::Algorithm};

use self::{
    ca::SshCa,
    proxy::{ProxyConfig, UpstreamLogin},
};
use crate::{credentials::Credentials, policy::Resource};

/// How long a user certificate from sluice's CA lives: one login.
const USER_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The daemon's SSH CA, loaded (or created) at start from the state directory.
static DAEMON_CA: OnceLock<SshCa> = OnceLock::new();

/// Loads the CA from `state_dir` (creating it on first start); called once at start.
pub fn prepare(state_dir: &Path) -> Result<(), ca::CaError> {
    let ca = SshCa::load_or_create(state_dir)?;
    tracing::info!(fingerprint = %ca.fingerprint(), "ssh host CA ready");
    let _ = DAEMON_CA.set(ca);
    Ok(())
}

/// Why an SSH session cannot be set up; the close reason.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("ssh_ca_missing: the daemon's SSH CA is not loaded")]
    NoCa,
    #[error("ssh_ca: {0}")]
    Ca(#[from] ca::CaError),
    #[error("credential_missing: resource `{0}` names no credential")]
    NoCredential(String),
    #[error("credential_missing: `{0}` is not in the credentials file")]
    UnknownCredential(String),
    #[error(
        "credential_invalid: `{0}` has no `private_key_file` and no `ssh_user_ca`: it is not an SSH credential"
    )]
    NotSsh(String),
    #[error("credential_invalid: {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("known_hosts_missing: resource `{0}` pins no upstream host keys (`known_hosts`)")]
    NoKnownHosts(String),
}

/// The proxy's configuration for one connection to `destination` of `resource`.
/// `host_names`: the names this agent resolved to the destination (principals).
pub fn configure(
    resource: &Resource,
    known_hosts: Option<&Path>,
    credentials: &Credentials,
    destination: SocketAddr,
    host_names: &[String],
) -> Result<ProxyConfig, SetupError> {
    let ca = DAEMON_CA.get().ok_or(SetupError::NoCa)?;
    let known_hosts = known_hosts
        .ok_or_else(|| SetupError::NoKnownHosts(resource.name.clone()))?
        .to_owned();
    let name = resource
        .credential
        .as_deref()
        .ok_or_else(|| SetupError::NoCredential(resource.name.clone()))?;
    let credential = credentials
        .get(name)
        .ok_or_else(|| SetupError::UnknownCredential(name.to_owned()))?;
    let user = (!credential.user.is_empty()).then(|| credential.user.clone());
    let (key, certificate) = if let Some(path) = &credential.private_key_file {
        let key = russh::keys::load_secret_key(path, None).map_err(|error| SetupError::Key {
            path: path.clone(),
            message: error.to_string(),
        })?;
        (key, None)
    } else if credential.ssh_user_ca {
        // The certificate's principal must be the login user; without a fixed user
        // the agent's is used, which is only known at login: sign for the credential's.
        let key =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(ca::CaError::from)?;
        let principal = user.clone().unwrap_or_else(|| "root".into());
        let certificate = ca.user_certificate(
            &key,
            &principal,
            &format!("sluice:{}", resource.name),
            USER_CERTIFICATE_LIFETIME,
        )?;
        (key, Some(certificate))
    } else {
        return Err(SetupError::NotSsh(name.to_owned()));
    };
    let ip = destination.ip().to_string();
    let mut principals: Vec<String> = host_names.to_vec();
    if !principals.is_empty() {
        principals.push(ip.clone());
    }
    let identity = ca.host_identity(&principals, &destination.to_string())?;
    let mut pinned_names = vec![ip];
    pinned_names.extend(host_names.iter().cloned());
    Ok(ProxyConfig {
        identity,
        login: UpstreamLogin {
            user,
            key: Arc::new(key),
            certificate,
            known_hosts,
            host_names: pinned_names,
            port: destination.port(),
        },
        destination,
    })
}
