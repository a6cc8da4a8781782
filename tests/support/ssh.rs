//! A real OpenSSH server per test, and the real `ssh`, `scp`, `sftp`, `git` and
//! `rsync` as agents through `sluice run`.
//!
//! Every [`SshServer`] is its own `sshd` (Debian's openssh-server) on a free port of
//! [`HOST`], with its own configuration, host key and `authorized_keys` holding only
//! the key the daemon logs in with ([`SshServer::credentials`]). It accepts public keys
//! only, so an agent with no key of its own cannot get in directly.
//!
//! Clients never read the host's files: `-F /dev/null`, no identity, no ssh-agent,
//! an empty user known_hosts of the test's own and a global known_hosts holding only
//! what `sluice ssh-ca install --known-hosts` wrote, with `StrictHostKeyChecking=yes`.

use std::{
    io::Write as _,
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{TestDaemon, free_port, require_root, sluice_bin};

/// The address the servers listen on: not 127.0.0.1, so agents' connections to them
/// are redirected to the daemon like connections to a remote host.
pub const HOST: &str = "127.0.0.3";

/// How long one client tool may run before the test fails.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// One sshd, killed and deleted on drop.
pub struct SshServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The key the daemon logs in with (private, OpenSSH format).
    pub client_key: PathBuf,
    /// The server's host public key line (`ssh-ed25519 AAAA...`).
    pub host_public_key: String,
    log_path: PathBuf,
    child: Child,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "sluice-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen (install openssh-client: cargo xtask setup)");
    assert!(status.success(), "ssh-keygen failed");
}

impl SshServer {
    pub fn start() -> Self {
        Self::start_with(|_| String::new())
    }

    /// An sshd whose configuration also has the lines `extra(its directory)` returns.
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("sluice-sshd-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let host_key = dir.path().join("host_key");
        let client_key = dir.path().join("sluice_key");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).expect("authorized_keys");
        let host_public_key = std::fs::read_to_string(host_key.with_extension("pub"))
            .expect("host key")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {HOST}:{port}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile {pid}\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AllowTcpForwarding yes\n\
                 AllowAgentForwarding yes\n\
                 X11Forwarding no\n\
                 AcceptEnv LANG LC_* GIT_PROTOCOL\n\
                 Subsystem sftp internal-sftp\n\
                 RekeyLimit 1M\n\
                 LogLevel VERBOSE\n\
                 {extra}",
                host_key = host_key.display(),
                authorized = authorized.display(),
                pid = dir.path().join("sshd.pid").display(),
                extra = extra(dir.path()),
            ),
        )
        .expect("sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let log_path = dir.path().join("sshd.log");
        let log = std::fs::File::create(&log_path).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/sshd (install openssh-server: cargo xtask setup)");
        let server = Self {
            dir,
            port,
            client_key,
            host_public_key,
            log_path,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((HOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not come up:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A known_hosts file pinning this server's host key (for the resource).
    pub fn pinned_known_hosts(&self) -> PathBuf {
        let path = self.dir.path().join("pinned_known_hosts");
        std::fs::write(
            &path,
            format!("[{HOST}]:{} {}\n", self.port, self.host_public_key),
        )
        .expect("pinned known_hosts");
        path
    }

    /// A credentials file entry `[name]` logging in with the daemon's key.
    pub fn credentials(&self, name: &str) -> String {
        format!(
            "[{name}]\nprivate_key_file = {:?}\n",
            self.client_key.display().to_string()
        )
    }

    /// A policy with agent(s), this server as resource `resource` (protocol ssh,
    /// credential `ssh-key`, pinned known_hosts), and `rules` (TOML) appended.
    pub fn policy(&self, resource: &str, agents: &[&str], rules: &str) -> String {
        let mut policy = String::new();
        for agent in agents {
            policy.push_str(&format!("[[agent]]\nname = {agent:?}\n\n"));
        }
        policy.push_str(&format!(
            "[[resource]]\nname = {resource:?}\naddresses = [{HOST:?}]\nports = [{port}]\n\
             protocol = \"ssh\"\ncredential = \"ssh-key\"\nknown_hosts = {known:?}\n\n{rules}",
            port = self.port,
            known = self.pinned_known_hosts().display().to_string(),
        ));
        policy
    }

    /// Runs `ssh` straight to this server (not as an agent), with `identity` or none.
    pub fn direct_ssh(&self, identity: Option<&Path>, command: &str) -> Output {
        let known = self.dir.path().join("direct_known_hosts");
        std::fs::write(
            &known,
            format!("[{HOST}]:{} {}\n", self.port, self.host_public_key),
        )
        .expect("known_hosts");
        let identity = identity.map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o"])
            .arg(format!("IdentityFile={identity}"))
            .args(["-o", "IdentityAgent=none", "-o"])
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                &format!("root@{HOST}"),
                command,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client side of an agent: its own empty user known_hosts and a global
/// known_hosts with sluice's CA line, written by `sluice ssh-ca install`.
pub struct SshClient {
    pub dir: tempfile::TempDir,
    pub user_known_hosts: PathBuf,
    pub global_known_hosts: PathBuf,
}

impl SshClient {
    /// Installs the daemon's CA line into a fresh global known_hosts of the test's own.
    pub fn new(daemon: &TestDaemon) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-ssh-client-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let user_known_hosts = dir.path().join("known_hosts");
        std::fs::write(&user_known_hosts, "").expect("known_hosts");
        let global_known_hosts = dir.path().join("ssh_known_hosts");
        std::fs::write(&global_known_hosts, "# the test's own global known_hosts\n")
            .expect("ssh_known_hosts");
        let installed = daemon.sluice(&[
            "ssh-ca",
            "install",
            "--known-hosts",
            global_known_hosts.to_str().expect("utf-8 path"),
        ]);
        assert!(
            installed.status.success(),
            "sluice ssh-ca install: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
        Self {
            dir,
            user_known_hosts,
            global_known_hosts,
        }
    }

    /// The options every agent tool gets: no config, no keys, no ssh-agent, strict host
    /// key checking against the test's own known_hosts files.
    pub fn options(&self) -> Vec<String> {
        [
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            "IdentityFile=none".to_owned(),
            "-o".to_owned(),
            "IdentityAgent=none".to_owned(),
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", self.user_known_hosts.display()),
            "-o".to_owned(),
            format!("GlobalKnownHostsFile={}", self.global_known_hosts.display()),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
        ]
        .into()
    }

    /// `ssh [extra] -p PORT root@HOST command` as `agent`.
    pub fn ssh(
        &self,
        daemon: &TestDaemon,
        agent: &str,
        server: &SshServer,
        extra: &[&str],
        command: &str,
    ) -> Output {
        let mut args = self.options();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend([
            "-p".to_owned(),
            server.port.to_string(),
            format!("root@{HOST}"),
        ]);
        if !command.is_empty() {
            args.push(command.to_owned());
        }
        self.run(daemon, agent, "ssh", &args, None)
    }

    /// The `GIT_SSH_COMMAND` for git as an agent.
    pub fn git_ssh_command(&self) -> String {
        format!("ssh {}", self.options().join(" "))
    }

    /// Runs `program args` as `agent`, with `stdin` fed from a file when given.
    pub fn run(
        &self,
        daemon: &TestDaemon,
        agent: &str,
        program: &str,
        args: &[String],
        stdin: Option<&Path>,
    ) -> Output {
        self.run_with_env(daemon, agent, program, args, stdin, &[])
    }

    pub fn run_with_env(
        &self,
        daemon: &TestDaemon,
        agent: &str,
        program: &str,
        args: &[String],
        stdin: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Output {
        let mut command = Command::new(sluice_bin());
        command
            .arg("--config")
            .arg(&daemon.config_path)
            .args(["run", "--agent", agent, "--", program])
            .args(args)
            .env("SLUICE_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match stdin {
            Some(path) => command.stdin(std::fs::File::open(path).expect("stdin file")),
            None => command.stdin(Stdio::null()),
        };
        let child = command.spawn().expect("run agent");
        wait_with_timeout(child, TOOL_TIMEOUT)
    }

    /// Whether any known_hosts file this client uses holds `key` (`ssh-ed25519 AAAA...`
    /// or just its base64).
    pub fn known_hosts_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.user_known_hosts).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(&self.global_known_hosts).unwrap_or_default());
        text
    }
}

/// Waits for `child` (reading its output meanwhile), killing it after `timeout`.
pub fn wait_with_timeout(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match result.recv_timeout(timeout) {
        Ok(output) => output.expect("tool output"),
        Err(_) => {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            // Its children may hold the pipes open: do not wait for them.
            panic!("tool timed out after {timeout:?}");
        }
    }
}

/// Writes `bytes` to a new file in `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(bytes).expect("write");
    path
}
