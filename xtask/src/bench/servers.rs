//! The processes a benchmark run talks to, each private to the run and on loopback: a
//! PostgreSQL cluster, a PgBouncer in session mode in front of it, and sluice daemons
//! with their own cgroup root, bpffs directory, redirect port, store and policy.
//!
//! Everything lives in one scratch directory ([`Scratch`]) that is removed at the end;
//! every server is stopped when its handle drops, also when the run fails half-way.

use std::{
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::shell::{capture, note, run};

/// The address PostgreSQL listens on: not 127.0.0.1, so that a managed process's
/// connections to it are redirected like connections to a remote database.
pub const PG_HOST: &str = "127.0.0.2";

/// The database every scenario uses.
pub const DATABASE: &str = "bench";

/// A directory for one run, removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// A sub-directory owned by the `postgres` user (PostgreSQL and PgBouncer refuse root).
    pub fn postgres_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The newest installed PostgreSQL's binary directory (`/usr/lib/postgresql/N/bin`).
pub fn pg_bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install postgresql (cargo xtask setup)")?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pgbench").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL with pgbench under /usr/lib/postgresql/*/bin")
}

/// A free TCP port on `host` (bound, then released).
pub fn free_port(host: &str) -> Result<u16> {
    let listener =
        TcpListener::bind((host, 0)).with_context(|| format!("no free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

fn wait_for_port(address: SocketAddr, what: &str, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) during start:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on {address} within 30 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop(child: &mut Child) {
    // SIGINT: a fast, clean shutdown for postgres, pgbouncer and the sluice daemon.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A private PostgreSQL cluster trusting loopback connections.
pub struct Postgres {
    child: Child,
    pub bin: PathBuf,
    pub port: u16,
    socket_dir: PathBuf,
}

impl Postgres {
    pub fn start(scratch: &Scratch) -> Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = scratch.postgres_dir("postgres")?;
        let data = dir.join("data");
        let log = dir.join("server.log");
        capture(
            as_postgres(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .args(["--no-locale", "--no-sync"]),
        )
        .context("initdb")?;
        let hba = data.join("pg_hba.conf");
        let mut hba_file = fs::OpenOptions::new().append(true).open(&hba)?;
        writeln!(hba_file, "host all all 127.0.0.0/8 trust")?;
        let port = free_port(PG_HOST)?;
        // Durability off: every way pays the same server cost, and the bench measures
        // what sits between client and server, not the disk.
        let conf = format!(
            "\n# cargo xtask bench\nlisten_addresses = '{PG_HOST}'\nport = {port}\n\
             unix_socket_directories = '{socket}'\nmax_connections = 100\n\
             shared_buffers = 128MB\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nautovacuum = off\nlc_messages = 'C'\n",
            socket = dir.display(),
        );
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?
            .write_all(conf.as_bytes())?;
        let log_file = fs::File::create(&log)?;
        run(Command::new("chown").arg("postgres:postgres").arg(&log))?;
        let mut child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting postgres")?;
        wait_for_port(
            SocketAddr::new(PG_HOST.parse()?, port),
            "postgres",
            &mut child,
            &log,
        )?;
        // Ready to accept TCP is not ready to serve: wait for a query to succeed.
        let server = Self {
            child,
            bin,
            port,
            socket_dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                bail!("postgres does not answer queries");
            }
            sleep(Duration::from_millis(200));
        }
        note(&format!("postgres on {PG_HOST}:{port}"));
        Ok(server)
    }

    /// Runs `sql` as superuser over the unix socket (never redirected); returns stdout.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        capture(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .arg("-h")
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-c", sql]),
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private PgBouncer, session pooling, in front of [`Postgres`].
pub struct PgBouncer {
    child: Child,
    pub port: u16,
}

impl PgBouncer {
    pub fn start(scratch: &Scratch, postgres: &Postgres) -> Result<Self> {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .context("pgbouncer is not installed (cargo xtask bench installs it)")?;
        let dir = scratch.postgres_dir("pgbouncer")?;
        let port = free_port("127.0.0.1")?;
        let userlist = dir.join("userlist.txt");
        fs::write(&userlist, "\"postgres\" \"\"\n")?;
        let config = dir.join("pgbouncer.ini");
        let log = dir.join("pgbouncer.log");
        fs::write(
            &config,
            format!(
                "[databases]\n{DATABASE} = host={PG_HOST} port={pg_port} dbname={DATABASE}\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {userlist}\n\
                 pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n\
                 logfile = {log}\npidfile = {pidfile}\n",
                pg_port = postgres.port,
                userlist = userlist.display(),
                log = log.display(),
                pidfile = dir.join("pgbouncer.pid").display(),
            ),
        )?;
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir))?;
        let mut child = as_postgres(&program)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbouncer")?;
        wait_for_port(
            SocketAddr::new("127.0.0.1".parse()?, port),
            "pgbouncer",
            &mut child,
            &log,
        )?;
        note(&format!("pgbouncer (session mode) on 127.0.0.1:{port}"));
        Ok(Self { child, port })
    }

    /// The pgbouncer process itself (runuser's child), for CPU accounting.
    pub fn pid(&self) -> Result<u32> {
        child_pid(self.child.id())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        stop(&mut self.child);
    }
}

/// The single child of `pid` (runuser forks the program it runs).
fn child_pid(pid: u32) -> Result<u32> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .with_context(|| format!("reading the children of {pid}"))?;
    children
        .split_whitespace()
        .next()
        .and_then(|child| child.parse().ok())
        .with_context(|| format!("process {pid} has no child"))
}

/// A sluice daemon for the bench: its own config, policy, state and cgroup root.
pub struct Sluice {
    child: Child,
    pub config: PathBuf,
    pub binary: PathBuf,
    dir: PathBuf,
    cgroup_root: PathBuf,
    bpffs_dir: PathBuf,
}

/// The `[store]` durability a daemon runs with, when the daemon has that setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    Default,
    Strict,
    Batched,
}

impl Sluice {
    /// Starts `binary` as a daemon named `name` with `policy`. `nofile` raises its
    /// open-file limit (the idle-connection scenario holds two sockets per connection).
    pub fn start(
        scratch: &Scratch,
        binary: &Path,
        name: &str,
        policy: &str,
        mode: StoreMode,
        nofile: Option<u64>,
    ) -> Result<Self> {
        let dir = scratch.path.join(format!("sluice-{name}"));
        let policy_dir = dir.join("policies");
        fs::create_dir_all(&policy_dir)?;
        fs::write(policy_dir.join("bench.toml"), policy)?;
        let unique = format!("sluice-bench-{}-{name}", std::process::id());
        let cgroup_root = cgroup2_mount()?.join(&unique);
        let bpffs_dir = PathBuf::from("/sys/fs/bpf").join(&unique);
        let port = free_port("127.0.0.1")?;
        // The DNS resolver is off (`port = 0`): the bench is TCP only, and its daemons
        // would otherwise share the default resolver port.
        let durability = match mode {
            StoreMode::Default => String::new(),
            StoreMode::Strict => "durability = \"strict\"\n".to_owned(),
            StoreMode::Batched => "durability = \"batched\"\n".to_owned(),
        };
        let config = dir.join("sluice.toml");
        fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = {state:?}\npolicy_dir = {policy:?}\n\
                 credentials_file = {credentials:?}\n\
                 [redirect]\nport = {port}\n\
                 [cgroup]\nroot = {root:?}\nbpffs_dir = {bpffs:?}\n\
                 [store]\n{durability}\
                 [dns]\nport = 0\n\
                 [control]\nsocket = {socket:?}\n",
                state = dir.join("state"),
                policy = policy_dir,
                credentials = dir.join("credentials.toml"),
                root = cgroup_root,
                bpffs = bpffs_dir,
                socket = dir.join("control.sock"),
            ),
        )?;
        let log = dir.join("daemon.log");
        let log_file = fs::File::create(&log)?;
        let mut cmd = match nofile {
            Some(limit) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut daemon = Self {
            child,
            config,
            binary: binary.to_owned(),
            dir,
            cgroup_root,
            bpffs_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = Command::new(binary)
                .arg("--config")
                .arg(&daemon.config)
                .args(["status", "--json"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                break;
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "sluice daemon `{name}` exited ({status}) during start:\n{}",
                    daemon.log()
                );
            }
            if Instant::now() > deadline {
                bail!("sluice daemon `{name}` did not come up:\n{}", daemon.log());
            }
            sleep(Duration::from_millis(100));
        }
        note(&format!("sluice daemon `{name}` (pid {})", daemon.pid()?));
        Ok(daemon)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's own pid (through `prlimit`, which execs, it is the child's).
    pub fn pid(&self) -> Result<u32> {
        Ok(self.child.id())
    }

    /// `sluice run --agent AGENT -- PROGRAM`: a command in the managed cgroup.
    pub fn agent_command(&self, agent: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["run", "--agent", agent, "--"])
            .arg(program);
        cmd
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        stop(&mut self.child);
        // The programs stay pinned and attached after the daemon stops (fail closed):
        // detach them and remove the bench's cgroups, as `sluice detach` does.
        let _ = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .arg("detach")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.bpffs_dir);
        remove_cgroup_tree(&self.cgroup_root);
    }
}

/// Removes a cgroup directory and its (empty) children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The cgroup2 mount, from /proc/mounts.
fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .context("no cgroup2 mount in /proc/mounts")
}
