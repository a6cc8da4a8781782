//! `cargo xtask bench`: what sluice costs, measured side by side with talking to
//! PostgreSQL directly and through PgBouncer, written to `BENCHMARKS.md`.
//!
//! One run installs what it needs (PgBouncer, bpftool, perf), builds sluice in release
//! mode, starts a private PostgreSQL, PgBouncer and sluice daemons on loopback, and
//! runs every scenario for several rounds. Within a round the ways to the server take
//! turns (direct, PgBouncer, sluice batched, sluice strict, sluice with masking), so a
//! noisy machine slows them alike and the ratios stay fair; the report gives the median
//! of the rounds. The scenarios are listed in `BENCHMARKS.md` itself.
//!
//! The load generators are the real tools (`pgbench`, a Python client); the bench
//! shells out to them and to `perf`/`bpftool` rather than reimplementing them.

mod http;
mod idle;
mod pgbench;
mod probes;
mod report;
mod servers;
mod sysbench;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::shell::{note, part, run, step};
use pgbench::PgbenchResult;
use servers::{DATABASE, PG_HOST, PgBouncer, Postgres, Scratch, Sluice, StoreMode};

/// Debian packages only the bench needs (the test suite does not).
pub const BENCH_PACKAGES: &[&str] = &["pgbouncer", "bpftool", "linux-perf", "wrk"];

/// The agent whose rule allows everything, and the one whose rule also masks.
const AGENT: &str = "bench";
const MASKED_AGENT: &str = "bench-masked";

/// How big and how long a run is.
#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    /// Seconds per pgbench run.
    pub seconds: u64,
    /// pgbench scale factor (100,000 accounts each).
    pub scale: u32,
    /// Rows of the large result set (about 200 bytes each).
    pub large_rows: u64,
    /// Idle-connection counts to measure the daemon's memory at.
    pub idle_counts: Vec<usize>,
    pub masking_megabytes: u64,
    pub recording_events: u64,
    pub output: PathBuf,
    /// Only these parts (`pgbench`, `large`, `connect`, `profile`, `idle`, `internals`);
    /// all when empty. For developing the bench: the report then has gaps.
    pub only: Vec<String>,
    /// The command line, for the report.
    pub command: String,
    /// Measure this sluice binary instead of building one (to compare two builds).
    pub binary: Option<PathBuf>,
}

impl Options {
    pub fn full(output: PathBuf) -> Self {
        Self {
            rounds: 3,
            seconds: 5,
            scale: 10,
            large_rows: 1_000_000,
            idle_counts: vec![1_000, 10_000],
            masking_megabytes: 200,
            recording_events: 50_000,
            output,
            only: Vec::new(),
            command: "cargo xtask bench".to_owned(),
            binary: None,
        }
    }

    /// Small and short, for developing the bench itself: the figures are not stable.
    pub fn quick(output: PathBuf) -> Self {
        Self {
            rounds: 1,
            seconds: 2,
            scale: 2,
            large_rows: 50_000,
            idle_counts: vec![200, 1_000],
            masking_megabytes: 16,
            recording_events: 5_000,
            output,
            only: Vec::new(),
            command: "cargo xtask bench --quick".to_owned(),
            binary: None,
        }
    }
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// One way from pgbench to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Way {
    Direct,
    PgBouncer,
    SluiceBatched,
    SluiceStrict,
    SluiceMask,
}

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::PgBouncer => "PgBouncer (session)",
            Way::SluiceBatched => "sluice, batched",
            Way::SluiceStrict => "sluice, strict",
            Way::SluiceMask => "sluice, batched + mask",
        }
    }

    pub fn is_sluice(self) -> bool {
        matches!(
            self,
            Way::SluiceBatched | Way::SluiceStrict | Way::SluiceMask
        )
    }
}

/// A pgbench workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub clients: u32,
    args: Vec<String>,
    ways: Vec<Way>,
}

/// One way's runs of one workload.
#[derive(Clone, Debug)]
pub struct WayRuns {
    pub way: Way,
    pub runs: Vec<PgbenchResult>,
    /// CPU µs the proxy (PgBouncer or the daemon) spent per transaction, per run.
    pub proxy_cpu_us: Vec<f64>,
    /// The proxy's context switches per transaction, per run.
    pub proxy_switches: Vec<f64>,
}

/// Everything a run measured, for the report.
pub struct Results {
    pub options: Options,
    pub machine: report::Machine,
    pub notes: Vec<String>,
    pub workloads: Vec<(Workload, Vec<WayRuns>)>,
    /// Payload bytes of the large result set, and MB/s per way per round.
    pub large_bytes: u64,
    pub large: Vec<(Way, Vec<f64>)>,
    /// Connection cost per way: per-transaction latency of `pgbench -C` in ms.
    pub connect: Vec<(Way, Vec<PgbenchResult>)>,
    /// eBPF program counters over the sluice connection runs, and connections made.
    pub bpf: Vec<probes::ProgStats>,
    pub bpf_connections: u64,
    /// The daemon's CPU seconds (user + system) over the same sluice connection runs.
    pub connect_daemon_cpu_s: f64,
    pub idle: Option<idle::IdleResult>,
    pub masking_mb_s: Option<f64>,
    pub recording: Vec<(String, f64)>,
    /// sysbench against MariaDB, directly and through sluice.
    pub sysbench: Option<sysbench::Measured>,
    /// HTTPS with wrk: direct, nginx reverse proxy, sluice.
    pub http: Option<http::Measured>,
    pub perf: Option<String>,
    /// CPU seconds per thread group of the batched daemon over the pgbench runs.
    pub daemon_threads: Vec<(String, f64)>,
    /// One 4 KiB fdatasync where the stores live, ms: median and mean.
    pub fdatasync_ms: Option<(f64, f64)>,
    pub minutes: f64,
}

pub fn run_bench(workspace: &Path, options: Options) -> Result<()> {
    let started = Instant::now();
    step("setup", || {
        crate::setup::all(workspace)?;
        crate::setup::ensure_packages(BENCH_PACKAGES)
    })?;
    let target = crate::target_dir(workspace).join("release");
    // With a given binary, the components' example is built only when missing.
    let prebuilt = options.binary.is_some()
        && (!options.wants("internals") || target.join("examples/bench_internals").exists());
    step("build", || {
        if prebuilt {
            note("measuring the given binary; nothing to build");
            return Ok(());
        }
        run(crate::shell::cargo(workspace).args([
            "build",
            "--release",
            "-p",
            "sluice",
            "--bin",
            "sluice",
            "--example",
            "bench_internals",
        ]))
    })?;
    let binary = options
        .binary
        .clone()
        .unwrap_or_else(|| target.join("sluice"));
    let internals = target.join("examples/bench_internals");
    let machine = report::Machine::read()?;
    let mut results = Results {
        options: options.clone(),
        machine,
        notes: Vec::new(),
        workloads: Vec::new(),
        large_bytes: 0,
        large: Vec::new(),
        connect: Vec::new(),
        bpf: Vec::new(),
        bpf_connections: 0,
        connect_daemon_cpu_s: 0.0,
        idle: None,
        masking_mb_s: None,
        recording: Vec::new(),
        sysbench: None,
        http: None,
        perf: None,
        daemon_threads: Vec::new(),
        fdatasync_ms: None,
        minutes: 0.0,
    };
    let scratch = Scratch::create()?;
    // A part that fails is reported and the others still run, so one broken part does
    // not throw away a quarter hour of figures; the command fails at the end.
    let mut failed: Vec<String> = Vec::new();
    let bench_started = Instant::now();
    println!("\n=== servers ===");
    {
        let postgres = Postgres::start(&scratch)?;
        prepare_database(&postgres, &options, &mut results)?;
        let bouncer = PgBouncer::start(&scratch, &postgres)?;
        let policy = bench_policy(postgres.port);
        let strict = match Sluice::start(
            &scratch,
            &binary,
            "strict",
            &policy,
            StoreMode::Strict,
            None,
        ) {
            Ok(strict) => Some(strict),
            Err(error) if format!("{error:#}").contains("durability") => {
                results.notes.push(
                    "This daemon has no `[store] durability` setting yet: sluice ran with its \
                     built-in durability only (session records durable, statement records \
                     batched), shown as `sluice, batched`; no strict figures."
                        .to_owned(),
                );
                None
            }
            Err(error) => return Err(error),
        };
        let mode = if strict.is_some() {
            StoreMode::Batched
        } else {
            StoreMode::Default
        };
        let batched = Sluice::start(&scratch, &binary, "batched", &policy, mode, None)?;
        let bench = Bench {
            postgres: &postgres,
            bouncer: &bouncer,
            batched: &batched,
            strict: strict.as_ref(),
            scratch: &scratch,
            options: &options,
        };
        attempt(&options, &mut failed, "pgbench", "pgbench", || {
            let daemon = batched.pid()?;
            results.fdatasync_ms = Some(probes::fdatasync_latency_ms(&scratch.path)?);
            let threads_before = probes::cpu_seconds_by_thread(daemon)?;
            for workload in bench.workloads() {
                let runs = bench.run_workload(&workload)?;
                results.workloads.push((workload, runs));
            }
            results.daemon_threads = probes::cpu_seconds_by_thread(daemon)?
                .into_iter()
                .map(|(group, seconds)| {
                    let before = threads_before.get(&group).copied().unwrap_or(0.0);
                    (group, seconds - before)
                })
                .filter(|(_, seconds)| *seconds > 0.0)
                .collect();
            Ok(())
        });
        attempt(&options, &mut failed, "large", "large result set", || {
            results.large = bench.large_result(results.large_bytes)?;
            Ok(())
        });
        attempt(&options, &mut failed, "connect", "connection cost", || {
            bench.connection_cost(&mut results)
        });
        attempt(&options, &mut failed, "profile", "profile", || {
            if probes::perf_works() {
                results.perf = Some(bench.profile()?);
            } else {
                results
                    .notes
                    .push("`perf` does not work on this machine: no profile.".to_owned());
            }
            Ok(())
        });
    }
    attempt(
        &options,
        &mut failed,
        "sysbench",
        "sysbench on MariaDB",
        || {
            results.sysbench = Some(sysbench::run(&scratch, &binary, &options)?);
            Ok(())
        },
    );
    attempt(&options, &mut failed, "http", "HTTPS with wrk", || {
        results.http = Some(http::run(&scratch, &binary, &options)?);
        Ok(())
    });
    attempt(&options, &mut failed, "idle", "idle connections", || {
        results.idle = Some(idle::run(&scratch, &binary, &options.idle_counts)?);
        Ok(())
    });
    attempt(
        &options,
        &mut failed,
        "internals",
        "masking and recording alone",
        || internals_bench(&internals, &options, &mut results),
    );
    results.minutes = bench_started.elapsed().as_secs_f64() / 60.0;
    results.machine.load_after = report::load_average();
    for failure in &failed {
        results
            .notes
            .push(format!("A part of this run failed: {failure}"));
    }
    step("report", || {
        let text = report::render(&results, &options.output)?;
        fs::write(&options.output, text)
            .with_context(|| format!("writing {}", options.output.display()))?;
        note(&format!(
            "wrote {} ({:.1} min in all, {:.1} min measuring)",
            options.output.display(),
            started.elapsed().as_secs_f64() / 60.0,
            results.minutes
        ));
        Ok(())
    })?;
    if !failed.is_empty() {
        bail!("{} part(s) failed:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

/// Runs `body` as step `title` when `part` is wanted, recording its failure.
fn attempt(
    options: &Options,
    failed: &mut Vec<String>,
    part: &str,
    title: &str,
    body: impl FnOnce() -> Result<()>,
) {
    if options.wants(part)
        && let Err(error) = step(title, body)
    {
        failed.push(format!("{error:#}"));
    }
}

/// The bench policy: both agents may do anything on the server; the masked agent's
/// results go through a PII profile (e-mail columns hashed, detectors redacting).
fn bench_policy(pg_port: u16) -> String {
    format!(
        "[[agent]]\nname = \"{AGENT}\"\n\n[[agent]]\nname = \"{MASKED_AGENT}\"\n\n\
         [[resource]]\nname = \"pg\"\naddresses = [\"{PG_HOST}\"]\nports = [{pg_port}]\n\
         protocol = \"postgres\"\n\n\
         [[rule]]\nname = \"bench-allow\"\nagent = \"{AGENT}\"\nresource = \"pg\"\n\
         operations = [\"*\"]\naction = \"allow\"\n\n\
         [[rule]]\nname = \"bench-masked-allow\"\nagent = \"{MASKED_AGENT}\"\nresource = \"pg\"\n\
         operations = [\"*\"]\naction = \"allow\"\nmask = \"pii\"\n\n\
         [[mask]]\nname = \"pii\"\n\n\
         [[mask.rule]]\ncolumn = \"*email*\"\nstrategy = \"hash\"\n\n\
         [[mask.rule]]\ndetectors = [\"*\"]\nstrategy = \"redact\"\n"
    )
}

/// `pgbench -i` and the large-result table.
fn prepare_database(postgres: &Postgres, options: &Options, results: &mut Results) -> Result<()> {
    part(&format!(
        "database `{DATABASE}`: pgbench scale {}",
        options.scale
    ));
    postgres.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    crate::shell::capture(
        Command::new(postgres.bin.join("pgbench"))
            .args(["-i", "-q", "-s", &options.scale.to_string()])
            .args([
                "-h",
                PG_HOST,
                "-p",
                &postgres.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(DATABASE),
    )
    .context("pgbench -i")?;
    if !options.wants("large") {
        return Ok(());
    }
    part(&format!("table bench_rows: {} rows", options.large_rows));
    // About 200 bytes a row: a name, an e-mail, and a note of which a third carries a
    // card number, like a customer table an agent might read whole.
    postgres.psql(
        DATABASE,
        &format!(
            "CREATE TABLE bench_rows (id int, name text, email text, note text);\n\
             INSERT INTO bench_rows SELECT g, 'Customer ' || g, 'user' || g || '@example.com', \
             CASE g % 3 WHEN 0 THEN 'paid with card 4111 1111 1111 1111, ref ' \
             ELSE 'no payment details on file, ref ' END || repeat(md5(g::text), 4) \
             FROM generate_series(1, {}) g",
            options.large_rows
        ),
    )?;
    // Separately: psql runs a multi-statement -c in one transaction, VACUUM cannot.
    postgres.psql(DATABASE, "VACUUM ANALYZE")?;
    let bytes = postgres.psql(
        DATABASE,
        "SELECT sum(octet_length(id::text) + octet_length(name) + octet_length(email) \
         + octet_length(note)) FROM bench_rows",
    )?;
    results.large_bytes = bytes.trim().parse().context("bench_rows size")?;
    note(&format!("{} bytes of row data", results.large_bytes));
    Ok(())
}

struct Bench<'a> {
    postgres: &'a Postgres,
    bouncer: &'a PgBouncer,
    batched: &'a Sluice,
    strict: Option<&'a Sluice>,
    scratch: &'a Scratch,
    options: &'a Options,
}

impl Bench<'_> {
    fn sluice_ways(&self, with_mask: bool) -> Vec<Way> {
        let mut ways = vec![Way::SluiceBatched];
        if self.strict.is_some() {
            ways.push(Way::SluiceStrict);
        }
        if with_mask {
            ways.push(Way::SluiceMask);
        }
        ways
    }

    fn workloads(&self) -> Vec<Workload> {
        let mut workloads = Vec::new();
        for mode in ["simple", "prepared"] {
            for clients in [1, 8] {
                let mut ways = vec![Way::Direct, Way::PgBouncer];
                ways.extend(self.sluice_ways(true));
                workloads.push(Workload {
                    name: format!("select-only, {mode}"),
                    clients,
                    args: vec!["-S".into(), "-M".into(), mode.into()],
                    ways,
                });
            }
        }
        for clients in [1, 8] {
            let mut ways = vec![Way::Direct, Way::PgBouncer];
            ways.extend(self.sluice_ways(false));
            workloads.push(Workload {
                name: "TPC-B-like (writes), simple".to_owned(),
                clients,
                args: vec!["-M".into(), "simple".into()],
                ways,
            });
        }
        workloads
    }

    /// pgbench by `way`: its host and port, wrapped in `sluice run` for sluice.
    fn pgbench(&self, way: Way) -> Command {
        let program = self.postgres.bin.join("pgbench");
        let (mut cmd, host, port) = match way {
            Way::Direct => (Command::new(&program), PG_HOST, self.postgres.port),
            Way::PgBouncer => (Command::new(&program), "127.0.0.1", self.bouncer.port),
            Way::SluiceBatched => (
                self.batched.agent_command(AGENT, &program),
                PG_HOST,
                self.postgres.port,
            ),
            Way::SluiceStrict => (
                self.strict
                    .unwrap_or(self.batched)
                    .agent_command(AGENT, &program),
                PG_HOST,
                self.postgres.port,
            ),
            Way::SluiceMask => (
                self.batched.agent_command(MASKED_AGENT, &program),
                PG_HOST,
                self.postgres.port,
            ),
        };
        cmd.args(["-h", host, "-p", &port.to_string(), "-U", "postgres", "-n"]);
        cmd
    }

    fn proxy_pid(&self, way: Way) -> Result<Option<u32>> {
        Ok(match way {
            Way::Direct => None,
            Way::PgBouncer => Some(self.bouncer.pid()?),
            Way::SluiceBatched | Way::SluiceMask => Some(self.batched.pid()?),
            Way::SluiceStrict => Some(self.strict.unwrap_or(self.batched).pid()?),
        })
    }

    fn log_dir(&self) -> Result<PathBuf> {
        let dir = self.scratch.path.join("pgbench-logs");
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn run_workload(&self, workload: &Workload) -> Result<Vec<WayRuns>> {
        part(&format!(
            "{}, {} client(s)",
            workload.name, workload.clients
        ));
        let mut all: Vec<WayRuns> = workload
            .ways
            .iter()
            .map(|&way| WayRuns {
                way,
                runs: Vec::new(),
                proxy_cpu_us: Vec::new(),
                proxy_switches: Vec::new(),
            })
            .collect();
        for round in 1..=self.options.rounds {
            for runs in &mut all {
                let mut cmd = self.pgbench(runs.way);
                cmd.args(&workload.args)
                    .args(["-c", &workload.clients.to_string()])
                    .args(["-j", &workload.clients.min(2).to_string()])
                    .args(["-T", &self.options.seconds.to_string()])
                    .arg(DATABASE);
                let proxy = self.proxy_pid(runs.way)?;
                let cpu_before = proxy.map(probes::cpu_seconds).transpose()?;
                let switches_before = proxy.map(probes::context_switches).transpose()?;
                let result = pgbench::run(cmd, &self.log_dir()?, true)?;
                if let (Some(pid), Some(before)) = (proxy, cpu_before) {
                    let used = probes::cpu_seconds(pid)? - before;
                    runs.proxy_cpu_us
                        .push(used * 1e6 / result.transactions.max(1) as f64);
                }
                if let (Some(pid), Some(before)) = (proxy, switches_before) {
                    let switches = probes::context_switches(pid)?.saturating_sub(before);
                    runs.proxy_switches
                        .push(switches as f64 / result.transactions.max(1) as f64);
                }
                note(&format!(
                    "round {round}: {:<24} {:>9.0} tps  p50 {:>6.0} µs  p99 {:>6.0} µs",
                    runs.way.label(),
                    result.tps,
                    result.p50_us,
                    result.p99_us
                ));
                runs.runs.push(result);
            }
        }
        Ok(all)
    }

    /// `SELECT * FROM bench_rows` once per round per way; MB/s of row data.
    fn large_result(&self, bytes: u64) -> Result<Vec<(Way, Vec<f64>)>> {
        let script = self.scratch.path.join("large.sql");
        fs::write(&script, "SELECT * FROM bench_rows;\n")?;
        let mut all: Vec<(Way, Vec<f64>)> = [Way::Direct, Way::SluiceBatched, Way::SluiceMask]
            .into_iter()
            .map(|way| (way, Vec::new()))
            .collect();
        for round in 1..=self.options.rounds {
            for (way, rates) in &mut all {
                let mut cmd = self.pgbench(*way);
                cmd.arg("-f")
                    .arg(&script)
                    .args(["-c", "1", "-t", "1"])
                    .arg(DATABASE);
                let proxy = self.proxy_pid(*way)?;
                let cpu_before = proxy.map(probes::cpu_seconds).transpose()?;
                let result = pgbench::run(cmd, &self.log_dir()?, false)?;
                let rate = bytes as f64 / 1e6 / (result.latency_avg_ms / 1e3);
                // The daemon's CPU per MB of rows, which the machine's load moves less
                // than MB/s.
                let cpu = match (proxy, cpu_before) {
                    (Some(pid), Some(before)) => format!(
                        "  daemon CPU {:.1} ms per MB",
                        (probes::cpu_seconds(pid)? - before) * 1e3 / (bytes as f64 / 1e6)
                    ),
                    _ => String::new(),
                };
                note(&format!(
                    "round {round}: {:<24} {rate:>7.1} MB/s{cpu}",
                    way.label()
                ));
                rates.push(rate);
            }
        }
        Ok(all)
    }

    /// `pgbench -C` (a new connection per transaction) directly and through sluice, with
    /// `bpf_stats` on to read what the eBPF programs cost per connection.
    fn connection_cost(&self, results: &mut Results) -> Result<()> {
        let daemon = self.batched.pid()?;
        let _stats = probes::BpfStatsGuard::enable()?;
        let mut all: Vec<(Way, Vec<PgbenchResult>)> = [Way::Direct, Way::SluiceBatched]
            .into_iter()
            .map(|way| (way, Vec::new()))
            .collect();
        let mut bpf_total: std::collections::BTreeMap<u32, probes::ProgStats> = Default::default();
        let mut connections = 0;
        let mut daemon_cpu_s = 0.0;
        for round in 1..=self.options.rounds {
            for (way, runs) in &mut all {
                let mut cmd = self.pgbench(*way);
                cmd.args(["-C", "-S", "-M", "simple", "-c", "1"])
                    .args(["-T", &self.options.seconds.to_string()])
                    .arg(DATABASE);
                let before = probes::bpf_prog_stats(daemon)?;
                let cpu_before = probes::cpu_seconds(daemon)?;
                let result = pgbench::run(cmd, &self.log_dir()?, false)?;
                if way.is_sluice() {
                    daemon_cpu_s += probes::cpu_seconds(daemon)? - cpu_before;
                    let after = probes::bpf_prog_stats(daemon)?;
                    for (id, stats) in after {
                        let old = before.get(&id).cloned().unwrap_or_default();
                        let total = bpf_total.entry(id).or_insert_with(|| probes::ProgStats {
                            name: stats.name.clone(),
                            ..Default::default()
                        });
                        total.run_time_ns += stats.run_time_ns.saturating_sub(old.run_time_ns);
                        total.run_cnt += stats.run_cnt.saturating_sub(old.run_cnt);
                    }
                    // Each transaction is one connection, plus pgbench's first one.
                    connections += result.transactions + 1;
                }
                note(&format!(
                    "round {round}: {:<24} {:>7.3} ms per connect+query  (connect {:.3} ms)",
                    way.label(),
                    result.latency_avg_ms,
                    result.connection_ms.unwrap_or(0.0)
                ));
                runs.push(result);
            }
        }
        results.connect = all;
        results.bpf = bpf_total.into_values().collect();
        results.bpf_connections = connections;
        results.connect_daemon_cpu_s = daemon_cpu_s;
        Ok(())
    }

    /// A `perf` profile of the daemon during an 8-client prepared select-only run.
    fn profile(&self) -> Result<String> {
        let seconds = self.options.seconds.max(4);
        let mut cmd = self.pgbench(Way::SluiceBatched);
        cmd.args(["-S", "-M", "prepared", "-c", "8", "-j", "2"])
            .args(["-T", &(seconds + 2).to_string()])
            .arg(DATABASE)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut pgbench = cmd.spawn().context("starting pgbench for the profile")?;
        std::thread::sleep(std::time::Duration::from_secs(1));
        let profile = probes::perf_profile(
            self.batched.pid()?,
            seconds,
            &self.scratch.path.join("perf.data"),
        );
        let _ = pgbench.wait();
        let profile = profile?;
        note(&format!("daemon profile (self time):\n{profile}"));
        Ok(profile)
    }
}

/// The masking engine and the store on their own (`daemon/examples/bench_internals.rs`).
fn internals_bench(binary: &Path, options: &Options, results: &mut Results) -> Result<()> {
    let values = |args: &[String]| -> Result<Vec<(String, f64)>> {
        let output = crate::shell::capture(Command::new(binary).args(args))?;
        Ok(output
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    };
    let mut masking = Vec::new();
    let mut recording: Vec<Vec<(String, f64)>> = Vec::new();
    for round in 1..=options.rounds {
        let measured = values(&["masking".into(), options.masking_megabytes.to_string()])?;
        // Per core: MB per second of the masking thread's own CPU time, which other
        // processes on a shared machine do not change (wall-clock MB/s they do).
        let rate = lookup(&measured, "mb_per_cpu_s")?;
        note(&format!(
            "round {round}: masking {rate:.1} MB per CPU-second ({:.1} MB/s wall clock)",
            lookup(&measured, "mb_per_s")?
        ));
        masking.push(rate);
        let measured = values(&["recording".into(), options.recording_events.to_string()])?;
        note(&format!(
            "round {round}: recording batched {:.0} events/s, strict {:.0} events/s",
            lookup(&measured, "batched_events_per_s")?,
            lookup(&measured, "strict_events_per_s")?
        ));
        recording.push(measured);
    }
    results.masking_mb_s = Some(report::median(&masking));
    for mode in ["batched", "strict"] {
        let key = format!("{mode}_events_per_s");
        let rates: Vec<f64> = recording
            .iter()
            .map(|measured| lookup(measured, &key))
            .collect::<Result<_>>()?;
        results
            .recording
            .push((mode.to_owned(), report::median(&rates)));
    }
    Ok(())
}

fn lookup(values: &[(String, f64)], key: &str) -> Result<f64> {
    match values.iter().find(|(k, _)| k == key) {
        Some((_, value)) => Ok(*value),
        None => bail!("bench_internals printed no `{key}`"),
    }
}
