//! Shared pieces of sluice's end-to-end tests: a real daemon per test, real sinks on
//! loopback, and the real `sluice` CLI to drive and inspect it.
//!
//! Every test daemon gets its own managed cgroup root, bpffs directory, redirect port,
//! control socket and store, so tests run in parallel without seeing each other.
//! These tests need root (cgroups, eBPF): `cargo xtask test` runs them so.

pub mod http;
pub mod kube;
pub mod mysql;
pub mod oidc;
pub mod pki;
pub mod postgres;
pub mod ssh;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

static NEXT_DAEMON: AtomicUsize = AtomicUsize::new(0);

/// The `sluice` binary under test.
pub fn sluice_bin() -> PathBuf {
    std::env::var_os("SLUICE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice"),
        PathBuf::from,
    )
}

/// The probe binary (built with this package's tests).
pub fn probe_bin() -> PathBuf {
    std::env::var_os("SLUICE_PROBE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice-probe"),
        PathBuf::from,
    )
}

/// The PostgreSQL probe binary (tokio-postgres, built with this package's tests).
pub fn pgprobe_bin() -> PathBuf {
    std::env::var_os("SLUICE_PGPROBE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice-pgprobe"),
        PathBuf::from,
    )
}

/// Agent `probe` may reach TCP on 127.0.0.2 and ::1 (resources `sinks-v4` and
/// `sinks-v6`, rules `probe-reaches-sinks-v4` and `-v6`); everything else is denied.
pub const PROBE_SINKS_POLICY: &str = r#"
[[agent]]
name = "probe"

[[resource]]
name = "sinks-v4"
addresses = ["127.0.0.2"]
ports = ["1-65535"]
protocol = "tcp"

[[resource]]
name = "sinks-v6"
addresses = ["::1"]
ports = ["1-65535"]
protocol = "tcp"

[[rule]]
name = "probe-reaches-sinks-v4"
agent = "probe"
resource = "sinks-v4"
operations = ["connect"]
action = "allow"

[[rule]]
name = "probe-reaches-sinks-v6"
agent = "probe"
resource = "sinks-v6"
operations = ["connect"]
action = "allow"
"#;

/// How many times slower than a normal machine this one runs, from
/// `SLUICE_TEST_SLOWDOWN` (default 1): `cargo xtask vm-test` sets it in its emulated
/// guests. Waits for the daemon (start, records) are multiplied by it; nothing a test
/// asserts about behaviour is.
pub fn slowdown() -> u32 {
    std::env::var("SLUICE_TEST_SLOWDOWN")
        .ok()
        .and_then(|factor| factor.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Fails the test early and clearly when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests attach eBPF programs and manage cgroups: run them as root (cargo xtask test)"
    );
}

/// The lowest port of the kernel's ephemeral range (source ports of outgoing
/// connections and of sockets bound to port 0).
fn ephemeral_ports_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port nothing on loopback uses now (TCP and UDP, IPv4 and IPv6), for a server a
/// test starts later. It is taken from below the kernel's ephemeral range: a port
/// from that range, once released, can be taken by any outgoing connection of the
/// tests running in parallel before the server binds it (seen as a daemon failing to
/// start with "Address already in use").
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const FLOOR: u32 = 10_000;
    let start = ephemeral_ports_start();
    if start <= FLOOR + 1000 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on loopback");
    }
    let span = start - FLOOR;
    // Processes running tests side by side start at different places and step by a
    // prime, so they rarely try the same ports.
    let seed = std::process::id().wrapping_mul(7919);
    let free = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && (TcpListener::bind(("::1", port)).is_ok() || TcpListener::bind(("::1", 0)).is_err())
    };
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::SeqCst) as u32;
        let port = FLOOR + seed.wrapping_add(step.wrapping_mul(7907)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if free(port) {
            return port;
        }
    }
    panic!("no free port on loopback below {start}");
}

/// The cgroup2 mount, from /proc/mounts.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("no cgroup2 mount")
}

/// A daemon of its own for one test.
pub struct TestDaemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub port: u16,
    pub cgroup_root: PathBuf,
    pub bpffs_dir: PathBuf,
    pub control_socket: PathBuf,
    /// The resolver's UDP port (agents' DNS lands there).
    pub dns_port: u16,
    log_path: PathBuf,
}

impl TestDaemon {
    /// Writes a config and the given policy, starts the daemon and waits until it answers.
    pub fn start(policy: &str) -> Self {
        Self::start_with_credentials(policy, "")
    }

    /// The same, with a credentials file (root-owned, 0600) holding `credentials`.
    pub fn start_with_credentials(policy: &str, credentials: &str) -> Self {
        Self::start_full(policy, credentials, &[], "")
    }

    /// The same, with the resolver forwarding to `dns_upstreams`.
    pub fn start_with_dns(policy: &str, dns_upstreams: &[SocketAddr]) -> Self {
        Self::start_full(policy, "", dns_upstreams, "")
    }

    /// The same, with `extra_config` (TOML) merged into the generated configuration:
    /// its tables add keys to the generated ones (`[control] admin_group = ...`).
    pub fn start_with_config(policy: &str, credentials: &str, extra_config: &str) -> Self {
        Self::start_full(policy, credentials, &[], extra_config)
    }

    fn start_full(
        policy: &str,
        credentials: &str,
        dns_upstreams: &[SocketAddr],
        extra_config: &str,
    ) -> Self {
        require_root();
        let n = NEXT_DAEMON.fetch_add(1, Ordering::SeqCst);
        let name = format!("sluice-test-{}-{n}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).expect("policy dir");
        std::fs::write(policy_dir.join("test.toml"), policy).expect("write policy");
        let port = free_port();
        let dns_port = free_port();
        // Never the host's resolvers: an agent's query must not leave the machine.
        let no_upstream = ["127.0.53.53:53".parse().expect("loopback address")];
        let dns_upstreams = if dns_upstreams.is_empty() {
            &no_upstream[..]
        } else {
            dns_upstreams
        };
        let upstreams: Vec<String> = dns_upstreams
            .iter()
            .map(|a| format!("{:?}", a.to_string()))
            .collect();
        let cgroup_root = cgroup2_mount().join(&name);
        let bpffs_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let control_socket = dir.path().join("control.sock");
        let config_path = dir.path().join("sluice.toml");
        let credentials_path = dir.path().join("credentials.toml");
        std::fs::write(&credentials_path, credentials).expect("write credentials");
        std::fs::set_permissions(
            &credentials_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod credentials");
        let config = format!(
            "[daemon]\nstate_dir = {state:?}\npolicy_dir = {policy:?}\ncredentials_file = {credentials:?}\n\
             [redirect]\nport = {port}\n\
             [cgroup]\nroot = {root:?}\nbpffs_dir = {bpffs:?}\n\
             [control]\nsocket = {socket:?}\n\
             [dns]\nport = {dns_port}\nupstreams = [{upstreams}]\n",
            state = dir.path().join("state"),
            policy = policy_dir,
            credentials = credentials_path,
            root = cgroup_root,
            bpffs = bpffs_dir,
            socket = control_socket,
            upstreams = upstreams.join(", "),
        );
        let config = merge_config(&config, extra_config);
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("daemon.log");
        let mut daemon = Self {
            child: None,
            dir,
            config_path,
            port,
            cgroup_root,
            bpffs_dir,
            control_socket,
            dns_port,
            log_path,
        };
        daemon.launch();
        daemon
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the daemon runs")
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("daemon log");
        let child = Command::new(sluice_bin())
            .arg("--config")
            .arg(&self.config_path)
            .arg("daemon")
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start sluice daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30) * slowdown();
        loop {
            let status = self.sluice(&["status", "--json"]);
            if status.status.success() {
                return;
            }
            if let Some(exit) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited with {exit} during start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the daemon without letting it clean up (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same configuration and state.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs the `sluice` CLI against this daemon.
    pub fn sluice(&self, args: &[&str]) -> Output {
        Command::new(sluice_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run sluice")
    }

    /// Waits until a statement of `agent` whose SQL contains `sql` is held, and returns
    /// the hold as `sluice approvals list --json` shows it.
    pub fn wait_for_statement_hold(&self, agent: &str, sql: &str) -> Value {
        self.wait_for_hold(Duration::from_secs(20) * slowdown(), |hold| {
            hold["agent"].as_str() == Some(agent)
                && hold["sql"].as_str().is_some_and(|text| text.contains(sql))
        })
    }

    /// Waits up to `within` for a pending approval that `wanted` picks, listed by
    /// `sluice approvals list --json`; panics with the daemon's log if none comes.
    pub fn wait_for_hold(&self, within: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let output = self.sluice(&["approvals", "list", "--json"]);
            let list: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
            if let Some(hold) = list.into_iter().find(|hold| wanted(hold)) {
                return hold;
            }
            assert!(Instant::now() < deadline, "no hold: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `program args` as agent `agent` through `sluice run`.
    pub fn run_agent(&self, agent: &str, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["run", "--agent", agent, "--", program];
        all.extend_from_slice(args);
        self.sluice(&all)
    }

    /// Runs the probe as `agent` and parses its JSON report.
    pub fn probe(&self, agent: &str, args: &[&str]) -> Value {
        let probe = probe_bin();
        let mut all = vec![probe.to_str().expect("utf-8 probe path")];
        all.extend_from_slice(args);
        self.probe_with(agent, &[], &all)
    }

    /// Runs `command` (which must end up running the probe) as `agent`, with extra
    /// `sluice run` options, and parses the probe's JSON report.
    pub fn probe_with(&self, agent: &str, run_options: &[&str], command: &[&str]) -> Value {
        let mut all = vec!["run", "--agent", agent];
        all.extend_from_slice(run_options);
        all.push("--");
        all.extend_from_slice(command);
        let output = self.sluice(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "probe printed no JSON ({e}); status {}, stdout {stdout:?}, stderr {:?}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// `sluice sessions list --json`, newest first.
    pub fn sessions(&self, agent: Option<&str>) -> Vec<Value> {
        let mut args = vec!["sessions", "list", "--json", "--limit", "100000"];
        if let Some(agent) = agent {
            args.extend_from_slice(&["--agent", agent]);
        }
        let output = self.sluice(&args);
        assert!(
            output.status.success(),
            "sessions list failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("sessions list JSON")
    }

    /// `sluice status --json`, asserting success.
    pub fn status_json(&self) -> Value {
        let output = self.sluice(&["status", "--json"]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// `sluice sessions show ID --json` (the session and its statements), asserting
    /// success.
    pub fn show_session(&self, id: u64) -> Value {
        let output = self.sluice(&["sessions", "show", &id.to_string(), "--json"]);
        assert!(output.status.success(), "sessions show failed: {output:?}");
        serde_json::from_slice(&output.stdout).expect("sessions show JSON")
    }

    /// Waits for a closed session of `agent` and shows the newest one
    /// ([`TestDaemon::show_session`]).
    pub fn show_newest_closed_session(&self, agent: &str) -> Value {
        let sessions = self.wait_for_sessions(Some(agent), "a closed session", |s| {
            s.iter().any(|s| text(s, "state") == "closed")
        });
        let id = sessions
            .iter()
            .find(|s| text(s, "state") == "closed")
            .and_then(|s| s["id"].as_u64())
            .expect("session id");
        self.show_session(id)
    }

    /// Waits until `agent`'s session to `destination` is closed, and returns it.
    pub fn closed_session(&self, agent: &str, destination: &str) -> Value {
        let is_it =
            |s: &Value| text(s, "destination") == destination && text(s, "state") == "closed";
        let sessions = self.wait_for_sessions(Some(agent), "the closed session", |sessions| {
            sessions.iter().any(is_it)
        });
        sessions.into_iter().find(is_it).expect("closed session")
    }

    /// Waits until `predicate` holds for the session list (close records are batched).
    pub fn wait_for_sessions(
        &self,
        agent: Option<&str>,
        what: &str,
        predicate: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15) * slowdown();
        loop {
            let sessions = self.sessions(agent);
            if predicate(&sessions) {
                return sessions;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; sessions: {sessions:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
        let _ = self.sluice(&["detach"]);
        remove_cgroup_tree(&self.cgroup_root);
    }
}

/// `base` with the tables and keys of `extra` merged in (extra wins on a clash).
fn merge_config(base: &str, extra: &str) -> String {
    if extra.trim().is_empty() {
        return base.to_owned();
    }
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                    merge(existing, table);
                }
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut merged: toml::Table = toml::from_str(base).expect("the generated config is TOML");
    merge(
        &mut merged,
        toml::from_str(extra).expect("the extra config is TOML"),
    );
    toml::to_string(&merged).expect("config as TOML")
}

/// Removes a cgroup directory tree bottom-up (cgroup dirs are removed with rmdir).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A TCP server on a loopback address that greets each connection with
/// `SINK <its address>` and echoes lines back; it records every peer it saw.
pub struct Sink {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    lines: Arc<Mutex<HashMap<SocketAddr, Vec<String>>>>,
}

impl Sink {
    pub fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind sink {addr}: {e}"));
        let addr = listener.local_addr().expect("sink address");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(HashMap::new()));
        let (peers_in, lines_in) = (Arc::clone(&peers), Arc::clone(&lines));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                peers_in.lock().unwrap().push(peer);
                let lines = Arc::clone(&lines_in);
                std::thread::spawn(move || serve_sink_connection(stream, addr, peer, &lines));
            }
        });
        Self { addr, peers, lines }
    }

    /// Every peer address that connected so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// The lines received from `peer`.
    pub fn lines_from(&self, peer: SocketAddr) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .get(&peer)
            .cloned()
            .unwrap_or_default()
    }
}

fn serve_sink_connection(
    stream: TcpStream,
    addr: SocketAddr,
    peer: SocketAddr,
    lines: &Mutex<HashMap<SocketAddr, Vec<String>>>,
) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if writeln!(writer, "SINK {addr}").is_err() {
        return;
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        lines
            .lock()
            .unwrap()
            .entry(peer)
            .or_default()
            .push(line.clone());
        if writeln!(writer, "{line}").is_err() {
            return;
        }
    }
}

/// Asserts that a probe report says the kernel refused the attempt (`EPERM`).
pub fn assert_probe_refused(report: &Value) {
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        text(report, "error").contains("PermissionDenied"),
        "{report}"
    );
}

/// A field of a JSON object as a string, or "".
pub fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// A memory figure of process `pid` from `/proc/PID/status`, in KiB: `"VmRSS:"` (now)
/// or `"VmHWM:"` (the peak so far).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("field in /proc/PID/status")
}
