//! sysbench against MariaDB, directly and through sluice: `oltp_read_only` and
//! `oltp_point_select` at 1 and 8 threads with prepared statements, and at 1 thread over
//! the text protocol (`--db-ps-mode=disable`: values inlined in each statement, as most
//! connectors send them, so each is classified anew).
//!
//! The part starts its own MariaDB (a data directory in the scratch directory, a free
//! port on 127.0.0.2), fills it with `sysbench prepare` directly, and runs a sluice
//! daemon whose MySQL resource brokers the server's credential: the agent's sysbench
//! gives no password, the daemon logs in, judges and records every statement. Ways take
//! turns within a round, as for pgbench; the report gives the median of the rounds.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options,
    servers::{Scratch, Sluice, StoreMode, free_port},
};
use crate::shell::{capture, note, part};

/// Where MariaDB listens: not 127.0.0.1, so the agent's connections are redirected.
const HOST: &str = "127.0.0.2";
const USER: &str = "bench";
const PASSWORD: &str = "bench-mysql-pw";
const TABLES: u32 = 4;
const TABLE_SIZE: u32 = 10_000;

/// The workloads, thread counts and sysbench `--db-ps-mode`s the part measures.
pub const WORKLOADS: &[(&str, u32, &str)] = &[
    ("oltp_read_only", 1, "auto"),
    ("oltp_read_only", 8, "auto"),
    ("oltp_point_select", 1, "auto"),
    ("oltp_point_select", 8, "auto"),
    ("oltp_read_only", 1, "disable"),
    ("oltp_point_select", 1, "disable"),
];

/// What one sysbench run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct SysbenchResult {
    pub qps: f64,
    pub tps: f64,
    pub p95_ms: f64,
    pub errors: u64,
}

/// Per workload: (name, threads, `--db-ps-mode`, direct runs, sluice runs).
pub type Measured = Vec<(
    String,
    u32,
    &'static str,
    Vec<SysbenchResult>,
    Vec<SysbenchResult>,
)>;

struct MariaDb {
    child: Child,
    port: u16,
    socket: PathBuf,
    dir: PathBuf,
}

impl MariaDb {
    fn start(scratch: &Scratch) -> Result<Self> {
        let dir = scratch.path.join("mariadb");
        let data = dir.join("data");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        capture(
            Command::new("mariadb-install-db")
                .args(["--no-defaults", "--user=root", "--skip-test-db"])
                .arg("--auth-root-authentication-method=normal")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display())),
        )
        .context("mariadb-install-db (install mariadb-server: cargo xtask setup)")?;
        let port = free_port(HOST)?;
        let socket = dir.join("mysqld.sock");
        let log = dir.join("error.log");
        let mut child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--user=root", "--skip-name-resolve", "--skip-log-bin"])
            .arg(format!("--bind-address={HOST}"))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--innodb-buffer-pool-size=256M",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-connections=500",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mariadbd")?;
        let address: SocketAddr = format!("{HOST}:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mariadbd exited ({status}):\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("mariadbd did not listen on {address}");
            }
            sleep(Duration::from_millis(100));
        }
        let server = Self {
            child,
            port,
            socket,
            dir,
        };
        server.admin(&format!(
            "CREATE DATABASE sbtest; CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON sbtest.* TO '{USER}'@'%'"
        ))?;
        Ok(server)
    }

    fn admin(&self, sql: &str) -> Result<String> {
        capture(
            Command::new("mariadb")
                .args(["--no-defaults", "-u", "root", "-N", "-B"])
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-e", sql]),
        )
        .with_context(|| format!("admin SQL: {sql}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// sysbench's arguments for `server`, with the password only for direct runs.
fn sysbench_args(server: &MariaDb, lua: &str, direct: bool) -> Vec<String> {
    let mut args = vec![
        lua.to_owned(),
        "--db-driver=mysql".to_owned(),
        format!("--mysql-host={HOST}"),
        format!("--mysql-port={}", server.port),
        format!("--mysql-user={USER}"),
        "--mysql-db=sbtest".to_owned(),
        "--mysql-ssl=off".to_owned(),
        format!("--tables={TABLES}"),
        format!("--table-size={TABLE_SIZE}"),
    ];
    if direct {
        args.push(format!("--mysql-password={PASSWORD}"));
    }
    args
}

/// The policy: agent `bench` may do anything on the server, logged in by the daemon.
fn policy(port: u16) -> String {
    format!(
        "[[agent]]\nname = \"bench\"\n\n\
         [[resource]]\nname = \"mariadb\"\naddresses = [\"{HOST}\"]\nports = [{port}]\n\
         protocol = \"mysql\"\ncredential = \"mariadb-bench\"\n\n\
         [[rule]]\nname = \"bench-allow\"\nagent = \"bench\"\nresource = \"mariadb\"\n\
         operations = [\"*\"]\naction = \"allow\"\n"
    )
}

/// Runs the part: servers up, tables filled, every workload per round per way.
pub fn run(scratch: &Scratch, binary: &Path, options: &Options) -> Result<Measured> {
    let server = MariaDb::start(scratch)?;
    part(&format!(
        "sysbench prepare: {TABLES} tables of {TABLE_SIZE} rows"
    ));
    capture(
        Command::new("sysbench")
            .args(sysbench_args(&server, "oltp_read_only", true))
            .arg("prepare"),
    )
    .context("sysbench prepare")?;
    // The daemon reads its credentials file at start.
    let daemon_dir = scratch.path.join("sluice-mysql");
    fs::create_dir_all(&daemon_dir)?;
    let credentials = daemon_dir.join("credentials.toml");
    fs::write(
        &credentials,
        format!("[mariadb-bench]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n"),
    )?;
    root_only(&credentials)?;
    let daemon = Sluice::start(
        scratch,
        binary,
        "mysql",
        &policy(server.port),
        StoreMode::Batched,
        None,
    )?;
    let mut measured: Measured = WORKLOADS
        .iter()
        .map(|(lua, threads, mode)| ((*lua).to_owned(), *threads, *mode, Vec::new(), Vec::new()))
        .collect();
    for round in 1..=options.rounds {
        for (lua, threads, mode, direct, through) in &mut measured {
            for via_sluice in [false, true] {
                let mut command = if via_sluice {
                    daemon.agent_command("bench", "sysbench")
                } else {
                    Command::new("sysbench")
                };
                command
                    .args(sysbench_args(&server, lua, !via_sluice))
                    .arg(format!("--threads={threads}"))
                    .arg(format!("--time={}", options.seconds))
                    .arg(format!("--db-ps-mode={mode}"))
                    .arg("run");
                let output = capture(&mut command)
                    .with_context(|| format!("sysbench {lua} ({threads} threads)"))?;
                let result =
                    parse(&output).with_context(|| format!("sysbench {lua} printed:\n{output}"))?;
                note(&format!(
                    "round {round}: {lua} x{threads} ps-mode {mode} {}: {:.0} QPS, p95 {:.2} ms",
                    if via_sluice { "sluice" } else { "direct" },
                    result.qps,
                    result.p95_ms
                ));
                if via_sluice {
                    through.push(result);
                } else {
                    direct.push(result);
                }
            }
        }
    }
    drop(daemon);
    Ok(measured)
}

/// The credentials file is root-only, as the daemon requires.
fn root_only(path: &Path) -> Result<()> {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Throughput, latency and errors from sysbench's summary.
pub fn parse(report: &str) -> Result<SysbenchResult> {
    let mut result = SysbenchResult::default();
    let per_second = |line: &str| -> Option<f64> {
        let open = line.find('(')?;
        line.get(open + 1..)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut saw_queries = false;
    for line in report.lines() {
        let line = line.trim();
        if line.starts_with("queries:") {
            result.qps = per_second(line).unwrap_or_default();
            saw_queries = true;
        } else if line.starts_with("transactions:") {
            result.tps = per_second(line).unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("95th percentile:") {
            result.p95_ms = rest.trim().parse().unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("ignored errors:") {
            result.errors = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_default();
        }
    }
    if !saw_queries || result.qps <= 0.0 {
        bail!("no queries per second in sysbench's report");
    }
    Ok(result)
}

/// The report's section.
pub fn render(measured: &Measured) -> String {
    let median = |runs: &[SysbenchResult], field: fn(&SysbenchResult) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    let mut out = String::from(
        "## MySQL/MariaDB (sysbench)\n\n\
         sysbench 1.0 against a private MariaDB on loopback (4 tables of 10,000 rows, \
         prepared statements where sysbench uses them, or the text protocol where the \
         workload says so), directly and as an agent whose sluice resource brokers the \
         login and judges and records every statement (batched store).\n\n\
         | workload | threads | direct QPS | sluice QPS | sluice / direct | direct p95 ms | sluice p95 ms | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (lua, threads, mode, direct, through) in measured {
        let direct_qps = median(direct, |r| r.qps);
        let sluice_qps = median(through, |r| r.qps);
        let errors: u64 = direct.iter().chain(through).map(|r| r.errors).sum();
        out.push_str(&format!(
            "| {lua}{} | {threads} | {direct_qps:.0} | {sluice_qps:.0} | {:.2} | {:.2} | {:.2} | {errors} |\n",
            if *mode == "disable" {
                " (text protocol)"
            } else {
                ""
            },
            if direct_qps > 0.0 { sluice_qps / direct_qps } else { 0.0 },
            median(direct, |r| r.p95_ms),
            median(through, |r| r.p95_ms),
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_gives_throughput_latency_and_errors() {
        let report = "SQL statistics:\n    queries performed:\n        read: 1400\n\
            \n    transactions:                        100    (19.95 per sec.)\n\
            \n    queries:                             1600   (319.20 per sec.)\n\
            \n    ignored errors:                      0      (0.00 per sec.)\n\
            \nLatency (ms):\n         min:   1.10\n         95th percentile:  2.52\n";
        let result = parse(report).unwrap();
        assert!((result.qps - 319.2).abs() < 1e-9);
        assert!((result.tps - 19.95).abs() < 1e-9);
        assert!((result.p95_ms - 2.52).abs() < 1e-9);
        assert_eq!(result.errors, 0);
        assert!(parse("nothing").is_err());
    }
}
