//! `sluice ca`: the local CA that intercepts agents' TLS to `http` resources.

use std::{path::Path, process::ExitCode};

use clap::Subcommand;

use super::CliError;
use crate::{
    config::Config,
    protocols::local_ca::{CaPaths, LocalCa, publish},
};

/// Where `sluice ca install` puts the certificate for `update-ca-certificates`.
const SYSTEM_STORE_COPY: &str = "/usr/local/share/ca-certificates/sluice-local-ca.crt";

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), its fingerprint and where agents' bundle is.
    Show,
    /// Replace the CA with a new one. Restart the daemon afterwards; agents must be
    /// given the new certificate (`sluice run` does it by itself).
    Rotate,
    /// Add the CA to the system trust store (update-ca-certificates), for agents not
    /// started with `sluice run`.
    Install,
    /// Remove the CA from the system trust store.
    Uninstall,
}

pub fn run(config: &Config, command: CaCommand) -> Result<ExitCode, CliError> {
    let paths = CaPaths::in_state_dir(&config.daemon.state_dir);
    let fail = |error: crate::protocols::local_ca::CaError| CliError::System(error.to_string());
    match command {
        CaCommand::Show => {
            let ca = LocalCa::load(&paths).map_err(fail)?;
            println!("certificate: {}", paths.certificate.display());
            println!("fingerprint (SHA-256): {}", ca.fingerprint());
            if let Some(bundle) = bundle_path(config) {
                println!("agents' bundle: {}", bundle.display());
            }
            print!("{}", ca.certificate_pem());
        }
        CaCommand::Rotate => {
            let ca = LocalCa::rotate(&paths).map_err(fail)?;
            if let Some(dir) = config.control.socket.parent()
                && dir.is_dir()
            {
                publish(ca.certificate_pem(), dir).map_err(fail)?;
            }
            if Path::new(SYSTEM_STORE_COPY).exists() {
                install(&ca)?;
            }
            println!("new CA: {}", ca.fingerprint());
            println!("restart the daemon to intercept with it");
        }
        CaCommand::Install => {
            let ca = LocalCa::load(&paths).map_err(fail)?;
            install(&ca)?;
            println!("installed {SYSTEM_STORE_COPY} ({})", ca.fingerprint());
        }
        CaCommand::Uninstall => {
            match std::fs::remove_file(SYSTEM_STORE_COPY) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(CliError::System(format!("{SYSTEM_STORE_COPY}: {error}")));
                }
            }
            update_ca_certificates(&["--fresh"])?;
            println!("removed the sluice CA from the system trust store");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The combined bundle (system roots + sluice CA) the daemon publishes for agents.
pub fn bundle_path(config: &Config) -> Option<std::path::PathBuf> {
    let path = config.control.socket.parent()?.join("ca-bundle.pem");
    path.is_file().then_some(path)
}

fn install(ca: &LocalCa) -> Result<(), CliError> {
    let target = Path::new(SYSTEM_STORE_COPY);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|error| CliError::System(format!("{}: {error}", dir.display())))?;
    }
    std::fs::write(target, ca.certificate_pem())
        .map_err(|error| CliError::System(format!("{SYSTEM_STORE_COPY}: {error}")))?;
    update_ca_certificates(&[])
}

fn update_ca_certificates(args: &[&str]) -> Result<(), CliError> {
    let status = std::process::Command::new("update-ca-certificates")
        .args(args)
        .status()
        .map_err(|error| CliError::System(format!("cannot run update-ca-certificates: {error}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::System(format!(
            "update-ca-certificates failed: {status}"
        )))
    }
}
