//! `sluice ssh-ca`: make OpenSSH on this host trust sluice's SSH CA.
//!
//! The daemon ends intercepted SSH connections with a host certificate signed by its
//! CA (see `protocols/ssh/ca.rs`, reached through the registry); one `@cert-authority *
//! KEY` line in the system known_hosts makes every `ssh` on the host accept it
//! silently, even under `StrictHostKeyChecking=yes`. The CA key lives in the state
//! directory and only root (this CLI) and the daemon read it.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::CliError;
use crate::{
    config::Config,
    protocols::ssh_ca::{SshCa, replace_file, with_ca_line, without_ca_line},
};

/// The system-wide known_hosts OpenSSH reads by default.
pub const SYSTEM_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

#[derive(Debug, Subcommand)]
pub enum SshCaCommand {
    /// Trust the CA: add (or replace) its `@cert-authority *` line in the known_hosts.
    Install {
        /// The known_hosts file to change.
        #[arg(long, default_value = SYSTEM_KNOWN_HOSTS)]
        known_hosts: PathBuf,
    },
    /// Stop trusting it: remove the line `install` wrote (nothing else).
    Uninstall {
        #[arg(long, default_value = SYSTEM_KNOWN_HOSTS)]
        known_hosts: PathBuf,
    },
    /// Print the CA's known_hosts line (for hosts and containers that do not share
    /// this one's /etc/ssh).
    Show,
}

pub fn run(config: &Config, command: SshCaCommand) -> Result<ExitCode, CliError> {
    let state_dir = &config.daemon.state_dir;
    let ca = || {
        std::fs::create_dir_all(state_dir)
            .map_err(|error| CliError::System(format!("{}: {error}", state_dir.display())))?;
        SshCa::load_or_create(state_dir).map_err(|error| CliError::System(error.to_string()))
    };
    let read = |path: &PathBuf| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(CliError::System(format!("{}: {error}", path.display()))),
    };
    let write = |path: &PathBuf, text: &str| {
        replace_file(path, text)
            .map_err(|error| CliError::System(format!("{}: {error}", path.display())))
    };
    match command {
        SshCaCommand::Install { known_hosts } => {
            let ca = ca()?;
            let text = read(&known_hosts)?;
            write(&known_hosts, &with_ca_line(&text, &ca.known_hosts_line()))?;
            println!(
                "{}: OpenSSH now trusts sluice's SSH CA ({})",
                known_hosts.display(),
                ca.fingerprint()
            );
        }
        SshCaCommand::Uninstall { known_hosts } => {
            let text = read(&known_hosts)?;
            let without = without_ca_line(&text);
            if without != text {
                write(&known_hosts, &without)?;
                println!("{}: sluice's SSH CA line removed", known_hosts.display());
            } else {
                println!("{}: no sluice SSH CA line", known_hosts.display());
            }
        }
        SshCaCommand::Show => println!("{}", ca()?.known_hosts_line()),
    }
    Ok(ExitCode::SUCCESS)
}
