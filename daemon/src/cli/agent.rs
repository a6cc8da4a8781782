//! `sluice agent enable|disable`: make a systemd service one of sluice's agents.
//!
//! An agent host runs its agents as services; `sluice run` is for commands. A service
//! joins the managed tree by running in the agent's slice below the managed root
//! (`Slice=sluice-AGENT.slice` under `sluice.slice`), which is the same cgroup
//! `sluice run --agent AGENT` uses (see `crate::cgroup`). The drop-in written here says
//! so, and restricts the service's socket families with `RestrictAddressFamilies=`:
//! systemd's own seccomp filter, standing in for the one `sluice run` installs. Like
//! that filter it does not see io_uring's IORING_OP_SOCKET; the BPF LSM does, where it
//! runs (`sluice status`, row `packet_socket`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;

use super::CliError;
use crate::{
    cgroup::{agent_slice_name, validate_agent_name},
    config::Config,
};

/// The drop-in's file name inside `UNIT.d/`.
const DROP_IN_NAME: &str = "sluice-agent.conf";

/// The socket families an agent service may create: the ones sluice mediates (inet),
/// and the ones that reach nothing beyond the host (unix, netlink, AF_ALG). The same
/// list as `sluice run`'s seccomp filter and the LSM's socket_create program.
const AGENT_ADDRESS_FAMILIES: &str = "AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_ALG";

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Make systemd run UNIT as agent NAME: writes a drop-in with `Slice=` (the agent's
    /// slice under the managed root) and `RestrictAddressFamilies=`, then reloads
    /// systemd. Restart the unit to move it.
    Enable {
        /// The service (`reporter` or `reporter.service`).
        unit: String,
        /// The agent's name, as policies name it.
        #[arg(long)]
        agent: String,
        /// Where unit drop-ins go.
        #[arg(long, default_value = "/etc/systemd/system")]
        systemd_dir: PathBuf,
        /// Do not run `systemctl daemon-reload`.
        #[arg(long)]
        no_reload: bool,
    },
    /// Remove the drop-in `enable` wrote; the unit leaves the managed tree when it
    /// restarts.
    Disable {
        unit: String,
        #[arg(long, default_value = "/etc/systemd/system")]
        systemd_dir: PathBuf,
        #[arg(long)]
        no_reload: bool,
    },
}

/// Runs `sluice agent ...`.
pub fn run(config: &Config, command: AgentCommand) -> Result<ExitCode, CliError> {
    match command {
        AgentCommand::Enable {
            unit,
            agent,
            systemd_dir,
            no_reload,
        } => {
            let unit = service_name(&unit)?;
            validate_agent_name(&agent)?;
            let prefix = slice_prefix(&config.cgroup.root)?;
            let path = drop_in_path(&systemd_dir, &unit);
            let dir = path.parent().unwrap_or(&systemd_dir);
            fs::create_dir_all(dir).map_err(|error| {
                CliError::System(format!("cannot create {}: {error}", dir.display()))
            })?;
            fs::write(&path, drop_in(&unit, &agent, &prefix)).map_err(|error| {
                CliError::System(format!("cannot write {}: {error}", path.display()))
            })?;
            println!("wrote {}", path.display());
            reload(no_reload)?;
            println!(
                "{unit} runs as agent {agent} in {} from its next start: systemctl restart {unit}",
                agent_slice_name(&prefix, &agent)
            );
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Disable {
            unit,
            systemd_dir,
            no_reload,
        } => {
            let unit = service_name(&unit)?;
            let path = drop_in_path(&systemd_dir, &unit);
            match fs::remove_file(&path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    println!(
                        "{unit} is not a sluice agent ({} is absent)",
                        path.display()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                Err(error) => {
                    return Err(CliError::System(format!(
                        "cannot remove {}: {error}",
                        path.display()
                    )));
                }
            }
            reload(no_reload)?;
            println!("{unit} leaves the managed tree when it restarts");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn reload(skip: bool) -> Result<(), CliError> {
    if skip {
        return Ok(());
    }
    let status = std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .map_err(|error| {
            CliError::System(format!("cannot run systemctl daemon-reload: {error}"))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::System(format!(
            "systemctl daemon-reload failed ({status})"
        )))
    }
}

/// `reporter` → `reporter.service`; refuses anything that is not a plain service name.
fn service_name(unit: &str) -> Result<String, CliError> {
    let name = if unit.ends_with(".service") {
        unit.to_owned()
    } else if unit.contains('.') && !unit.contains('@') {
        return Err(CliError::System(format!(
            "{unit} is not a service: agents are .service units"
        )));
    } else {
        format!("{unit}.service")
    };
    let stem = name.trim_end_matches(".service");
    let valid = !stem.is_empty()
        && name.len() <= 255
        && stem.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':' | b'\\')
        });
    if valid {
        Ok(name)
    } else {
        Err(CliError::System(format!("invalid unit name {unit:?}")))
    }
}

/// `sluice` for `[cgroup] root = "sluice.slice"`; agent services need a slice root.
fn slice_prefix(root: &Path) -> Result<String, CliError> {
    root.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(".slice"))
        .filter(|prefix| !prefix.is_empty() && !prefix.contains('-'))
        .map(str::to_owned)
        .ok_or_else(|| {
            CliError::System(format!(
                "the managed root {} is not a top-level systemd slice: services can join it \
                 only with [cgroup] root = \"sluice.slice\" (the packaged configuration)",
                root.display()
            ))
        })
}

fn drop_in_path(systemd_dir: &Path, unit: &str) -> PathBuf {
    systemd_dir.join(format!("{unit}.d")).join(DROP_IN_NAME)
}

/// The drop-in that makes `unit` agent `agent`.
fn drop_in(unit: &str, agent: &str, prefix: &str) -> String {
    let slice = agent_slice_name(prefix, agent);
    format!(
        "# Written by `sluice agent enable {unit} --agent {agent}`; `sluice agent disable {unit}`\n\
         # removes it. {unit} runs as sluice agent {agent}: every connection it makes is\n\
         # redirected to the sluice daemon, judged by policy and recorded.\n\
         [Unit]\n\
         # If the daemon is down its programs stay attached: the agent's connections fail.\n\
         Wants=sluice.service\n\
         After=sluice.service\n\
         \n\
         [Service]\n\
         Slice={slice}\n\
         # Instead of `sluice run`'s seccomp filter: sockets only in the families sluice\n\
         # mediates or that reach nothing beyond this host. io_uring's IORING_OP_SOCKET is\n\
         # not covered; the BPF LSM covers it where it runs (`sluice status`).\n\
         RestrictAddressFamilies={AGENT_ADDRESS_FAMILIES}\n\
         # An agent running as root could leave its cgroup: give the unit a User=.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_puts_the_service_in_the_agents_slice_with_its_families_restricted() {
        let text = drop_in("reporter.service", "ci-bot", "sluice");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.contains(&r"Slice=sluice-ci\x2dbot.slice"), "{text}");
        assert!(
            lines.contains(&"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_ALG"),
            "{text}"
        );
        assert!(lines.contains(&"After=sluice.service"), "{text}");
    }

    #[test]
    fn only_service_units_with_plain_names_are_accepted() {
        assert_eq!(service_name("reporter").unwrap(), "reporter.service");
        assert_eq!(
            service_name("reporter.service").unwrap(),
            "reporter.service"
        );
        assert_eq!(service_name("worker@3").unwrap(), "worker@3.service");
        for bad in ["", "../x", "a/b.service", "x.socket", "sluice.slice", "a b"] {
            assert!(service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services_join_only_a_top_level_slice_root() {
        assert_eq!(slice_prefix(Path::new("sluice.slice")).unwrap(), "sluice");
        assert_eq!(
            slice_prefix(Path::new("/sys/fs/cgroup/sluice.slice")).unwrap(),
            "sluice"
        );
        assert!(slice_prefix(Path::new("sluice")).is_err());
        assert!(slice_prefix(Path::new("a-b.slice")).is_err());
    }

    #[test]
    fn enable_writes_the_drop_in_and_disable_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            cgroup: crate::config::CgroupConfig {
                root: "sluice.slice".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let enable = AgentCommand::Enable {
            unit: "reporter".into(),
            agent: "reporter".into(),
            systemd_dir: dir.path().to_owned(),
            no_reload: true,
        };
        run(&config, enable).unwrap();
        let path = dir.path().join("reporter.service.d/sluice-agent.conf");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\nSlice=sluice-reporter.slice\n"), "{text}");
        let disable = AgentCommand::Disable {
            unit: "reporter.service".into(),
            systemd_dir: dir.path().to_owned(),
            no_reload: true,
        };
        run(&config, disable).unwrap();
        assert!(!path.exists());
        // An invalid agent name writes nothing.
        let bad = AgentCommand::Enable {
            unit: "reporter".into(),
            agent: "../x".into(),
            systemd_dir: dir.path().to_owned(),
            no_reload: true,
        };
        assert!(run(&config, bad).is_err());
        assert!(!path.exists());
    }
}
