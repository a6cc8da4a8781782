//! A real MariaDB server per test, the real `mariadb` client tools run directly or as an
//! agent through `sluice run`, and policies for a MySQL resource.
//!
//! Every [`MariaServer`] has its own data directory (mariadb-install-db), a free port on
//! `127.0.0.2`, a unix socket inside its temporary directory, and a general query log
//! of every statement the server received. The tests (root) administer it over the
//! unix socket as `root`, which is never redirected; agents reach it over TCP, through
//! the daemon.
//!
//! ```no_run
//! use sluice_tests::{TestDaemon, mysql::{MariaServer, MyRule}};
//!
//! let db = MariaServer::start();
//! db.admin("CREATE DATABASE shop");
//! db.create_user("app", "app-pw");
//! let daemon = TestDaemon::start_with_credentials(
//!     &db.policy(&["bot"], Some("shop-app"), &[MyRule::allow("bot", &["read"])]),
//!     &db.credentials("shop-app", "app", "app-pw"),
//! );
//! let output = db.client_as(&daemon, "bot", "shop", &["-e", "SELECT 1"]);
//! ```

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{TestDaemon, require_root, sluice_bin};

/// The address the server listens on: not 127.0.0.1, so agents' connections to it are
/// redirected to the daemon like connections to a remote database.
pub const HOST: &str = "127.0.0.2";

/// How long one client tool may run before the test fails.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

pub struct MariaServer {
    dir: tempfile::TempDir,
    socket: PathBuf,
    general_log: PathBuf,
    error_log: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// The Debian binaries, by name.
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed: run `cargo xtask setup` (Debian mariadb-server)");
}

impl MariaServer {
    /// A fresh server: installs a data directory, starts `mariadbd` on a free port and
    /// waits until it answers. `root` logs in over the socket without a password.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`MariaServer::start`] with TLS on, from this certificate and key (PEM) signed by
    /// `ca` (its path).
    pub fn start_tls(certificate: &Path, key: &Path, ca: &Path) -> Self {
        Self::start_with(&[
            format!("--ssl-cert={}", certificate.display()),
            format!("--ssl-key={}", key.display()),
            format!("--ssl-ca={}", ca.display()),
        ])
    }

    fn start_with(extra_args: &[String]) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("sluice-maria-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        // Its own temporary directory: servers (and the bootstrap) name temporary
        // tables by pid in a shared /tmp, which other tests' processes also clean.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("tmpdir");
        let install = Command::new(tool("mariadb-install-db"))
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let mut server = Self {
            socket: dir.path().join("mysqld.sock"),
            general_log: dir.path().join("general.log"),
            error_log: dir.path().join("error.log"),
            dir,
            port: 0,
            child: None,
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let child = Command::new(tool("mariadbd"))
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .args(["--user=root", "--skip-name-resolve", "--skip-log-bin"])
                .arg(format!("--bind-address={HOST}"))
                .arg(format!("--port={}", server.port))
                .arg(format!("--socket={}", server.socket.display()))
                .arg(format!(
                    "--pid-file={}",
                    server.dir.path().join("mysqld.pid").display()
                ))
                .arg("--general-log=1")
                .arg(format!(
                    "--general-log-file={}",
                    server.general_log.display()
                ))
                .arg(format!("--log-error={}", server.error_log.display()))
                .args([
                    "--max-allowed-packet=256M",
                    "--innodb-buffer-pool-size=64M",
                    "--innodb-log-file-size=48M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--max-connections=300",
                    "--character-set-server=utf8mb4",
                ])
                .args(extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mariadbd");
            server.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if server.try_admin("SELECT 1").status.success() {
                    server.admin("INSTALL SONAME 'auth_ed25519'");
                    return server;
                }
                if let Some(exit) = server
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    last_error = format!("mariadbd exited with {exit}: {}", server.error_log());
                    server.child = None;
                    break;
                }
                if Instant::now() > deadline {
                    panic!("MariaDB did not start: {}", server.error_log());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !last_error.contains("already in use") {
                break;
            }
        }
        panic!("MariaDB did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.2:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(HOST.parse().expect("host"), self.port)
    }

    /// The server's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// The general query log so far: every statement the server received.
    pub fn general_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.general_log).unwrap_or_default()).into_owned()
    }

    /// Runs `sql` as root over the socket; its output is tab-separated, no headers.
    pub fn try_admin(&self, sql: &str) -> Output {
        Command::new(tool("mariadb"))
            .args(["--no-defaults", "-u", "root", "-N", "-B"])
            .arg("--default-character-set=utf8mb4")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb")
    }

    /// [`Self::try_admin`], asserting success; returns stdout.
    pub fn admin(&self, sql: &str) -> String {
        let output = self.try_admin(sql);
        assert!(
            output.status.success(),
            "admin SQL failed: {sql}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A user `name`@`%` with a native password and every privilege on `shop.*`.
    pub fn create_user(&self, name: &str, password: &str) {
        self.admin(&format!(
            "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'; \
             GRANT ALL ON shop.* TO '{name}'@'%'"
        ));
    }

    /// A user `name`@`%` authenticated by MariaDB's ed25519 plugin.
    pub fn create_ed25519_user(&self, name: &str, password: &str) {
        self.admin(&format!(
            "CREATE USER '{name}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{password}'); \
             GRANT ALL ON shop.* TO '{name}'@'%'"
        ));
    }

    /// A policy with `agents`, the resource `db` (this server, `protocol = "mysql"`,
    /// brokering `credential` when given) and `rules`.
    pub fn policy(&self, agents: &[&str], credential: Option<&str>, rules: &[MyRule]) -> String {
        let mut policy = String::new();
        for agent in agents {
            policy.push_str(&format!("[[agent]]\nname = {agent:?}\n\n"));
        }
        policy.push_str(&format!(
            "[[resource]]\nname = \"db\"\naddresses = [\"{HOST}\"]\nports = [{}]\nprotocol = \"mysql\"\n",
            self.port
        ));
        if let Some(credential) = credential {
            policy.push_str(&format!("credential = {credential:?}\n"));
        }
        policy.push('\n');
        for rule in rules {
            policy.push_str(&rule.toml());
        }
        policy
    }

    /// A credentials file entry.
    pub fn credentials(&self, name: &str, user: &str, password: &str) -> String {
        format!("[{name}]\nuser = {user:?}\npassword = {password:?}\n")
    }

    /// The `mariadb` client's arguments for this server over TCP.
    pub fn client_args(&self, user: &str, database: &str) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            "--protocol=TCP".into(),
            format!("--host={HOST}"),
            format!("--port={}", self.port),
            format!("--user={user}"),
            "--skip-ssl".into(),
            "--default-character-set=utf8mb4".into(),
            "--max-allowed-packet=64M".into(),
            database.into(),
        ]
    }

    /// `mariadb` run directly (not through sluice) as `user` with `password`.
    pub fn client_direct(
        &self,
        user: &str,
        password: &str,
        database: &str,
        args: &[&str],
    ) -> Output {
        let mut command = Command::new(tool("mariadb"));
        command
            .args(self.client_args(user, database))
            .arg(format!("--password={password}"))
            .args(args);
        run_with_timeout(command, None)
    }

    /// `mariadb` run as agent `agent` through sluice, with no password.
    pub fn client_as(
        &self,
        daemon: &TestDaemon,
        agent: &str,
        database: &str,
        args: &[&str],
    ) -> Output {
        let mut command = agent_command(daemon, agent, &tool("mariadb"));
        command
            .args(self.client_args("agent-user", database))
            .args(args);
        run_with_timeout(command, None)
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.error_log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "MariaDB error log:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// `program` run as `agent` through `sluice run`; add its arguments.
pub fn agent_command(daemon: &TestDaemon, agent: &str, program: &Path) -> Command {
    let mut command = Command::new(sluice_bin());
    command
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["run", "--agent", agent, "--"])
        .arg(program)
        .env("SLUICE_LOG", "warn");
    command
}

/// Runs `command` (stdin from `input`), killing it after [`TOOL_TIMEOUT`].
pub fn run_with_timeout(mut command: Command, input: Option<Vec<u8>>) -> Output {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn client");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let id = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(TOOL_TIMEOUT).is_err() {
            // SAFETY: kill(2) on the child's pid; at worst it has exited already.
            unsafe {
                libc::kill(id as i32, libc::SIGKILL);
            }
        }
    });
    let output = child.wait_with_output().expect("wait for client");
    let _ = done_tx.send(());
    output
}

/// A free port on [`HOST`].
fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.2");
    listener.local_addr().expect("local addr").port()
}

/// One `[[rule]]` for the `db` resource.
#[derive(Clone, Debug)]
pub struct MyRule {
    pub name: String,
    pub agent: String,
    pub operations: Vec<String>,
    pub action: String,
    /// Extra TOML lines (`mask = "pii"`, `timeout = "5s"`).
    pub extra: String,
}

impl MyRule {
    pub fn new(agent: &str, operations: &[&str], action: &str) -> Self {
        let ops: Vec<&str> = operations
            .iter()
            .map(|op| if *op == "*" { "all" } else { op })
            .collect();
        Self {
            name: format!("{agent}-{action}-{}", ops.join("-")),
            agent: agent.to_owned(),
            operations: operations.iter().map(|op| (*op).to_owned()).collect(),
            action: action.to_owned(),
            extra: String::new(),
        }
    }

    pub fn allow(agent: &str, operations: &[&str]) -> Self {
        Self::new(agent, operations, "allow")
    }

    pub fn deny(agent: &str, operations: &[&str]) -> Self {
        Self::new(agent, operations, "deny")
    }

    pub fn review(agent: &str, operations: &[&str]) -> Self {
        Self::new(agent, operations, "review")
    }

    pub fn with(mut self, line: &str) -> Self {
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }

    fn toml(&self) -> String {
        let operations = self
            .operations
            .iter()
            .map(|op| format!("{op:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[[rule]]\nname = {:?}\nagent = {:?}\nresource = \"db\"\noperations = [{operations}]\naction = {:?}\n{}\n",
            self.name, self.agent, self.action, self.extra
        )
    }
}
