//! A real PostgreSQL server per test, the real client tools run directly or as an agent
//! through `sluice run`, and policies for a PostgreSQL resource.
//!
//! Every [`PgServer`] is its own cluster (initdb takes about half a second): its own
//! data directory in a temporary directory owned by the `postgres` user, a free port on
//! `127.0.0.2` (and `::1` when it can be bound), a unix socket inside the temporary
//! directory, and a log of every connection and statement the server executed.
//! PostgreSQL refuses to run as root, so the server runs as `postgres`; the tests (root)
//! reach it as superuser over the unix socket, which is never redirected.
//!
//! ```no_run
//! use sluice_tests::{TestDaemon, postgres::{PgCommand, PgServer, Rule}};
//!
//! let pg = PgServer::start();
//! pg.create_role("analyst", "analyst-pw");
//! pg.create_database("shop", "analyst");
//! let daemon = TestDaemon::start(&pg.policy(&["analyst"], &[Rule::allow("analyst", &["*"])]));
//! let output = PgCommand::agent(&daemon, "analyst", "psql")
//!     .password("analyst-pw")
//!     .args(["-X", "-c", "SELECT 1", &pg.conninfo("analyst", "shop")])
//!     .success();
//! ```

use std::{
    ffi::OsStr,
    io::Write as _,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{TestDaemon, pgprobe_bin, require_root, sluice_bin};

/// The address the server listens on: not 127.0.0.1, so agents' connections to it are
/// redirected to the daemon like connections to a remote database.
pub const HOST: &str = "127.0.0.2";

/// The `postgres` superuser's password (for TCP connections; the unix socket trusts).
pub const SUPERUSER_PASSWORD: &str = "sluice-test-superuser";

/// How long one client tool may run before the test fails (and the tool is killed).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The password of role `app` in [`shop_server`].
pub const APP_PASSWORD: &str = "app-secret-pw";

/// A server with role `app` (password [`APP_PASSWORD`]) owning database `shop` and a
/// table `orders` with 3 rows: (1, 'tea'), (2, 'cake'), (3, 'jam').
pub fn shop_server() -> PgServer {
    let server = PgServer::start();
    server.create_role("app", APP_PASSWORD);
    server.create_database("shop", "app");
    server.psql_local(
        "app",
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, item text); \
         INSERT INTO orders VALUES (1, 'tea'), (2, 'cake'), (3, 'jam');",
    );
    server
}

/// The newest installed PostgreSQL's binary directory (`/usr/lib/postgresql/N/bin`), or
/// `$SLUICE_PG_BIN`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install postgresql (cargo xtask setup)")
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no PostgreSQL server under /usr/lib/postgresql/*/bin")
}

/// A PostgreSQL program (`psql`, `pgbench`, `pg_dump`, `pg_restore`, ...) of the server's
/// version. The real binary, not Debian's `pg_wrapper`, so `exe` in session records is
/// `.../bin/<tool>`.
pub fn pg_bin(tool: &str) -> PathBuf {
    pg_bin_dir().join(tool)
}

/// One PostgreSQL cluster, stopped (immediately) and deleted on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    ipv6: bool,
    pg_stat_statements: bool,
    running: bool,
}

impl PgServer {
    /// initdb (`--auth-local=trust --auth-host=scram-sha-256`, superuser `postgres` with
    /// [`SUPERUSER_PASSWORD`]), then start on a free port and wait until it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// [`PgServer::start`] with `ssl = on` using this certificate and key (PEM), and
    /// TCP clients without TLS rejected: only a verified TLS client gets in.
    pub fn start_tls_only(certificate_pem: &str, key_pem: &str) -> Self {
        Self::start_with_tls(Some((certificate_pem, key_pem)))
    }

    fn start_with_tls(tls: Option<(&str, &str)>) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("tempdir");
        chown_postgres(dir.path());
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().to_path_buf();
        let log_path = dir.path().join("server.log");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).expect("write pwfile");
        chown_postgres(&pwfile);
        let pg_stat_statements = pg_bin_dir()
            .parent()
            .and_then(|lib| lib.file_name())
            .is_some_and(|version| {
                Path::new("/usr/share/postgresql")
                    .join(version)
                    .join("extension/pg_stat_statements.control")
                    .exists()
            });
        let mut server = Self {
            dir,
            data_dir,
            socket_dir,
            log_path,
            port: 0,
            ipv6: false,
            pg_stat_statements,
            running: false,
        };

        let initdb = as_postgres(&pg_bin("initdb"), server.dir.path())
            .arg("-D")
            .arg(&server.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--no-locale", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        // initdb's host lines cover 127.0.0.1 and ::1 only; the daemon (and direct test
        // connections) may come from any loopback address.
        let hba = server.data_dir.join("pg_hba.conf");
        let mut hba_text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        hba_text.push_str("\nhost all all 127.0.0.0/8 scram-sha-256\n");
        if tls.is_some() {
            // First match wins: plain TCP is turned away before any host line.
            hba_text = format!(
                "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{hba_text}"
            );
        }
        std::fs::write(&hba, hba_text).expect("write pg_hba.conf");

        let mut conf = format!(
            "\n# sluice tests\n\
             unix_socket_directories = '{socket}'\n\
             max_connections = 200\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             log_destination = 'stderr'\n\
             logging_collector = off\n\
             log_statement = 'all'\n\
             log_connections = on\n\
             log_disconnections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             lc_messages = 'C'\n",
            socket = server.socket_dir.display(),
        );
        if let Some((certificate, key)) = tls {
            let certificate_path = server.data_dir.join("server.crt");
            let key_path = server.data_dir.join("server.key");
            std::fs::write(&certificate_path, certificate).expect("write server.crt");
            std::fs::write(&key_path, key).expect("write server.key");
            std::fs::set_permissions(
                &key_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod server.key");
            chown_postgres(&certificate_path);
            chown_postgres(&key_path);
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        if server.pg_stat_statements {
            conf.push_str(
                "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
            );
        }
        let conf_path = server.data_dir.join("postgresql.conf");
        let mut conf_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .expect("open postgresql.conf");
        conf_file
            .write_all(conf.as_bytes())
            .expect("write postgresql.conf");

        // A port free on 127.0.0.2 (and ::1) may be taken before the server binds it:
        // try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let (port, ipv6) = free_pg_port();
            server.port = port;
            server.ipv6 = ipv6;
            let listen = if ipv6 {
                format!("{HOST},::1")
            } else {
                HOST.to_owned()
            };
            let log_len = server.server_log().len();
            let start = as_postgres(&pg_bin("pg_ctl"), server.dir.path())
                .arg("-D")
                .arg(&server.data_dir)
                .arg("-l")
                .arg(&server.log_path)
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-c listen_addresses='{listen}' -c port={port}"))
                .arg("start")
                .output()
                .expect("run pg_ctl start");
            if start.status.success() {
                server.running = true;
                // The server goes on without ::1 when it could not bind it after all.
                server.ipv6 = ipv6
                    && server.server_log()[log_len..]
                        .contains(&format!("listening on IPv6 address \"::1\", port {port}"));
                return server;
            }
            last_error = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&start.stdout),
                String::from_utf8_lossy(&start.stderr),
                &server.server_log()[log_len..]
            );
            if !last_error.contains("already in use") {
                break;
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    /// `127.0.0.2:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(HOST.parse().expect("host"), self.port)
    }

    /// `[::1]:PORT` when the server listens on IPv6 loopback too.
    pub fn addr_v6(&self) -> Option<SocketAddr> {
        self.ipv6
            .then(|| SocketAddrV6::new(Ipv6Addr::LOCALHOST, self.port, 0, 0).into())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's unix socket (`host=` for local connections).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory (owned by `postgres`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether `pg_stat_statements` is preloaded (`CREATE EXTENSION` it per database).
    pub fn has_pg_stat_statements(&self) -> bool {
        self.pg_stat_statements
    }

    /// A libpq connection string for `user` on `dbname` at 127.0.0.2 (no password: give
    /// it with [`PgCommand::password`]).
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={HOST} port={} user={user} dbname={dbname} sslmode=disable gssencmode=disable",
            self.port
        )
    }

    /// The same at `::1`.
    pub fn conninfo_v6(&self, user: &str, dbname: &str) -> String {
        assert!(self.ipv6, "the server does not listen on ::1");
        format!(
            "host=::1 port={} user={user} dbname={dbname} sslmode=disable gssencmode=disable",
            self.port
        )
    }

    /// Runs `sql` (any psql script, meta-commands included) as superuser on database
    /// `postgres` over the unix socket; panics on any error. Returns the unaligned,
    /// tuples-only output without the trailing newline.
    pub fn psql_admin(&self, sql: &str) -> String {
        self.psql_local("postgres", "postgres", sql)
    }

    /// Runs `sql` as `user` on `dbname` over the unix socket (trusted, no password, not
    /// redirected); panics on any error. Output as [`PgServer::psql_admin`].
    pub fn psql_local(&self, user: &str, dbname: &str, sql: &str) -> String {
        let output = self.try_psql_local(user, dbname, sql);
        assert!(
            output.status.success(),
            "psql as {user} on {dbname} failed ({}):\n{sql}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("psql printed UTF-8")
            .trim_end_matches('\n')
            .to_owned()
    }

    /// [`PgServer::psql_local`] without the check: stops at the first error.
    pub fn try_psql_local(&self, user: &str, dbname: &str, sql: &str) -> Output {
        PgCommand::direct("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", user, "-d", dbname])
            .stdin(sql.as_bytes().to_vec())
            .output()
    }

    /// A login role with a (SCRAM) password.
    pub fn create_role(&self, name: &str, password: &str) {
        self.psql_admin(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            ident(name),
            literal(password)
        ));
    }

    /// A database owned by `owner`, whose `public` schema `owner` owns too.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.psql_admin(&format!(
            "CREATE DATABASE {} OWNER {}",
            ident(name),
            ident(owner)
        ));
        self.psql_local(
            "postgres",
            name,
            &format!("ALTER SCHEMA public OWNER TO {}", ident(owner)),
        );
    }

    /// Everything the server logged so far: with `log_statement = 'all'` and
    /// `log_connections = on`, every statement it executed and every connection it
    /// received (`connection received: host=127.0.0.1 port=N`).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log after `mark` (a length of [`PgServer::server_log`] taken earlier).
    pub fn server_log_since(&self, mark: usize) -> String {
        self.server_log().get(mark..).unwrap_or_default().to_owned()
    }

    /// The TCP peers the server logged connections from (`host:port`), in order.
    pub fn tcp_connections_in(log: &str) -> Vec<String> {
        log.lines()
            .filter_map(|line| {
                line.split_once("connection received: host=")?
                    .1
                    .split_once(" port=")
            })
            .filter(|(host, _)| *host != "[local]")
            .map(|(host, port)| {
                let port = port.split_whitespace().next().unwrap_or_default();
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            })
            .collect()
    }

    /// Waits (bounded) until the server log satisfies `predicate`; returns the log.
    pub fn wait_for_log(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.server_log();
            if predicate(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} in the server log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A policy with `agents`, the resource `pg` (this server's addresses and port,
    /// `protocol = "postgres"`) and `rules`.
    pub fn policy(&self, agents: &[&str], rules: &[Rule]) -> String {
        let mut addresses = vec![HOST];
        if self.ipv6 {
            addresses.push("::1");
        }
        pg_policy(&addresses, self.port, agents, rules)
    }

    /// Stops the server now (`pg_ctl stop -m immediate`); drop does it otherwise.
    pub fn stop(&mut self) {
        // Also after a failed start, which may leave a postmaster behind.
        let was_running = std::mem::take(&mut self.running);
        if !was_running && !self.data_dir.join("postmaster.pid").exists() {
            return;
        }
        let _ = as_postgres(&pg_bin("pg_ctl"), self.dir.path())
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "PostgreSQL log ({}):\n{}",
                self.log_path.display(),
                tail(&self.server_log(), 200)
            );
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| match line.char_indices().nth(300) {
            Some((cut, _)) => format!("{}[... {} bytes]", &line[..cut], line.len() - cut),
            None => (*line).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `program` run as the `postgres` user in `cwd`.
fn as_postgres(program: &Path, cwd: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program)
        .current_dir(cwd)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null());
    command
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown postgres {}", path.display());
    if path.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .expect("chmod tempdir");
    }
}

/// A port free on 127.0.0.2, and whether it is free on ::1 too.
fn free_pg_port() -> (u16, bool) {
    for _ in 0..20 {
        let v4 = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.2");
        let port = v4.local_addr().expect("local addr").port();
        match TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            Ok(_) => return (port, true),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(_) => return (port, false),
        }
    }
    panic!("no port free on both 127.0.0.2 and ::1");
}

/// `name` as an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// One `[[rule]]` for the `pg` resource.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub agent: String,
    pub operations: Vec<String>,
    pub action: String,
}

impl Rule {
    /// A rule named `AGENT-ACTION-OPS` (`*` spelt `all`); rename with [`Rule::named`].
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

    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }
}

/// A policy: `agents`, one resource `pg` at `addresses` and `port` with
/// `protocol = "postgres"`, and `rules` (all on `pg`).
pub fn pg_policy(addresses: &[&str], port: u16, agents: &[&str], rules: &[Rule]) -> String {
    let quoted = |items: &[String]| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut policy = String::new();
    for agent in agents {
        policy.push_str(&format!("[[agent]]\nname = {agent:?}\n\n"));
    }
    let addresses: Vec<String> = addresses.iter().map(|a| (*a).to_owned()).collect();
    policy.push_str(&format!(
        "[[resource]]\nname = \"pg\"\naddresses = [{}]\nports = [{port}]\nprotocol = \"postgres\"\n\n",
        quoted(&addresses)
    ));
    for rule in rules {
        policy.push_str(&format!(
            "[[rule]]\nname = {:?}\nagent = {:?}\nresource = \"pg\"\noperations = [{}]\naction = {:?}\n\n",
            rule.name,
            rule.agent,
            quoted(&rule.operations),
            rule.action
        ));
    }
    policy
}

/// Starts the tokio-postgres probe ([`pgprobe_bin`]) with `args` as `agent` (with extra
/// `sluice run` options), `stdin` written to it and closed, stdout and stderr piped.
pub fn spawn_pgprobe(
    daemon: &TestDaemon,
    agent: &str,
    run_options: &[&str],
    args: &[&str],
    stdin: &str,
) -> Child {
    let mut child = Command::new(sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["run", "--agent", agent])
        .args(run_options)
        .arg("--")
        .arg(pgprobe_bin())
        .args(args)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgprobe");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .expect("write pgprobe's stdin");
    child
}

/// A PostgreSQL client tool run either directly (outside any managed cgroup, not
/// redirected) or as an agent through `sluice run`, with a clean libpq environment
/// (`PG*` variables removed, `PGCLIENTENCODING=UTF8`, `PGCONNECT_TIMEOUT=10`,
/// `LC_ALL=C.UTF-8`), and a bounded run time ([`TOOL_TIMEOUT`]).
pub struct PgCommand {
    command: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    what: String,
}

impl PgCommand {
    /// `tool` (see [`pg_bin`]) run by the test process itself.
    pub fn direct(tool: &str) -> Self {
        Self::new(Command::new(pg_bin(tool)), tool.to_owned())
    }

    /// `tool` run as `agent`: `sluice run --agent AGENT -- /usr/lib/postgresql/N/bin/TOOL`.
    pub fn agent(daemon: &TestDaemon, agent: &str, tool: &str) -> Self {
        Self::agent_with_options(daemon, agent, &[], tool)
    }

    /// The same with extra `sluice run` options (`--user nobody`, ...).
    pub fn agent_with_options(
        daemon: &TestDaemon,
        agent: &str,
        run_options: &[&str],
        tool: &str,
    ) -> Self {
        let mut command = Command::new(sluice_bin());
        command
            .arg("--config")
            .arg(&daemon.config_path)
            .args(["run", "--agent", agent])
            .args(run_options)
            .arg("--")
            .arg(pg_bin(tool))
            .env("SLUICE_LOG", "warn");
        Self::new(command, format!("{tool} as agent {agent}"))
    }

    fn new(mut command: Command, what: String) -> Self {
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("PG")) {
                command.env_remove(key);
            }
        }
        command
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("LC_ALL", "C.UTF-8")
            .env("PSQLRC", "/dev/null");
        Self {
            command,
            stdin: None,
            timeout: TOOL_TIMEOUT,
            what,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// The password, as `PGPASSWORD` in the tool's environment.
    pub fn password(self, password: &str) -> Self {
        self.env("PGPASSWORD", password)
    }

    /// Bytes fed to the tool's stdin (otherwise stdin is empty).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the tool with piped stdin/stdout/stderr (for tests that act while it runs,
    /// like cancelling a query); the caller owns the child.
    pub fn spawn(mut self) -> Child {
        self.command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.what))
    }

    /// Runs to completion and returns what it printed; kills it and panics after the
    /// timeout.
    pub fn output(self) -> Output {
        let (what, timeout, stdin) = (self.what.clone(), self.timeout, self.stdin.clone());
        let mut child = self.spawn();
        let mut input = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            if let Some(bytes) = stdin {
                // The tool may exit without reading it all (e.g. on a connection error).
                let _ = input.write_all(&bytes);
            }
        });
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + timeout;
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().expect("wait for tool") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what} did not finish within {timeout:?}; stderr so far: {}",
                    String::from_utf8_lossy(&stderr.join().unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = writer.join();
        Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// [`PgCommand::output`], asserting that the tool exited 0.
    pub fn success(self) -> Output {
        let what = self.what.clone();
        let output = self.output();
        assert!(
            output.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            match std::str::from_utf8(&output.stdout) {
                Ok(text) => tail(text, 50),
                Err(_) => format!("({} bytes, not text)", output.stdout.len()),
            },
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
