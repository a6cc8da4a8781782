//! Turns a run's [`Results`] into `BENCHMARKS.md`: the machine, medians per scenario,
//! ratios, and each target met or missed by how much.
//!
//! The hand-written analysis below [`ANALYSIS_HEADING`] in an existing file is carried
//! over unchanged, so a new run refreshes the figures without losing the findings.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Result;

use super::{Results, Way, WayRuns, pgbench::PgbenchResult};
use crate::shell::capture;

/// Everything from this heading on is kept from the previous `BENCHMARKS.md`.
pub const ANALYSIS_HEADING: &str = "## What limits each figure";

/// The machine a run was taken on.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub date: String,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    pub fn read() -> Result<Self> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown CPU".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        Ok(Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")?
                .trim()
                .to_owned(),
            date: capture(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?
                .trim()
                .to_owned(),
            load_before: load_average(),
            load_after: String::new(),
        })
    }
}

/// The 1-minute load average.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn median_of(runs: &[PgbenchResult], field: impl Fn(&PgbenchResult) -> f64) -> f64 {
    median(&runs.iter().map(field).collect::<Vec<_>>())
}

fn tps(runs: &[WayRuns], way: Way) -> Option<f64> {
    runs.iter()
        .find(|r| r.way == way)
        .map(|r| median_of(&r.runs, |run| run.tps))
}

fn p50(runs: &[WayRuns], way: Way) -> Option<f64> {
    runs.iter()
        .find(|r| r.way == way)
        .map(|r| median_of(&r.runs, |run| run.p50_us))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub fn render(results: &Results, previous: &Path) -> Result<String> {
    let options = &results.options;
    let machine = &results.machine;
    let mut out = String::new();
    writeln!(out, "# sluice benchmarks\n")?;
    writeln!(
        out,
        "Produced by `{}` on {}: {} cores ({}), Linux {}. Load average {} at the start \
         and {} at the end of the run{}. {} round(s) per figure, {} s per pgbench run, \
         pgbench scale {}; every figure is the median of the rounds, and within a round \
         the ways took turns. Measuring took {:.1} minutes.\n",
        options.command,
        machine.date,
        machine.cores,
        machine.cpu,
        machine.kernel,
        machine.load_before,
        machine.load_after,
        if machine.load_before.parse::<f64>().unwrap_or(0.0) > 0.5 {
            " (the machine was not idle, so absolute figures are noisy; the ratios, \
             measured side by side, are the fairer reading)"
        } else {
            ""
        },
        options.rounds,
        options.seconds,
        options.scale,
        results.minutes,
    )?;
    writeln!(
        out,
        "Everything runs on loopback: a private PostgreSQL {} (fsync off, so the server \
         costs the same for every way), PgBouncer in session mode, and sluice daemons \
         (release build) whose agents reach the server through the eBPF redirect, the \
         PostgreSQL decoder, per-statement policy and statement recording. `batched` and \
         `strict` are the store's durability modes; `+ mask` adds a PII profile (e-mail \
         columns hashed, every detector on every text column). Proxy CPU is the user+system \
         time of PgBouncer or the daemon per transaction.\n",
        super::servers::pg_bin_dir()
            .ok()
            .and_then(|bin| Some(bin.parent()?.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    )?;
    for note in &results.notes {
        writeln!(out, "> {note}\n")?;
    }

    targets(&mut out, results)?;

    writeln!(out, "## pgbench\n")?;
    writeln!(
        out,
        "| workload | clients | way | TPS | p50 µs | p99 µs | proxy CPU µs/tx | proxy switches/tx | TPS / direct | TPS / PgBouncer |"
    )?;
    writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (workload, runs) in &results.workloads {
        let direct = tps(runs, Way::Direct);
        let bouncer = tps(runs, Way::PgBouncer);
        for way_runs in runs {
            let way_tps = median_of(&way_runs.runs, |r| r.tps);
            let ratio = |base: Option<f64>| match base {
                Some(base) if base > 0.0 && way_runs.way != Way::Direct => {
                    format!("{:.2}", way_tps / base)
                }
                _ => String::new(),
            };
            let cpu = if way_runs.proxy_cpu_us.is_empty() {
                String::new()
            } else {
                format!("{:.1}", median(&way_runs.proxy_cpu_us))
            };
            let switches = if way_runs.proxy_switches.is_empty() {
                String::new()
            } else {
                format!("{:.1}", median(&way_runs.proxy_switches))
            };
            writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                workload.name,
                workload.clients,
                way_runs.way.label(),
                way_tps,
                median_of(&way_runs.runs, |r| r.p50_us),
                median_of(&way_runs.runs, |r| r.p99_us),
                cpu,
                switches,
                ratio(direct),
                if way_runs.way == Way::PgBouncer {
                    String::new()
                } else {
                    ratio(bouncer)
                },
            )?;
        }
    }
    writeln!(out)?;
    if !results.daemon_threads.is_empty() {
        let total: f64 = results.daemon_threads.iter().map(|(_, s)| s).sum();
        writeln!(
            out,
            "Where the batched daemon's CPU went over all its pgbench runs (`batched` and \
             `+ mask`), by thread (from `/proc/PID/task/*/stat`):\n"
        )?;
        writeln!(out, "| threads | CPU s | share |\n|---|---:|---:|")?;
        let mut threads = results.daemon_threads.clone();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (group, seconds) in &threads {
            writeln!(
                out,
                "| `{group}` | {seconds:.1} | {:.0} % |",
                seconds * 100.0 / total.max(f64::MIN_POSITIVE)
            )?;
        }
        writeln!(out)?;
    }

    writeln!(
        out,
        "## Large result set\n\n`SELECT * FROM bench_rows`: {} rows, {:.1} MB of row data \
         (id, name, e-mail, a note of which a third holds a card number), one client, \
         received in full by pgbench.\n",
        options.large_rows,
        results.large_bytes as f64 / 1e6
    )?;
    writeln!(out, "| way | MB/s | / direct |\n|---|---:|---:|")?;
    let direct_rate = results
        .large
        .iter()
        .find(|(way, _)| *way == Way::Direct)
        .map(|(_, rates)| median(rates));
    for (way, rates) in &results.large {
        let rate = median(rates);
        let ratio = match direct_rate {
            Some(direct) if *way != Way::Direct && direct > 0.0 => format!("{:.2}", rate / direct),
            _ => String::new(),
        };
        writeln!(out, "| {} | {rate:.1} | {ratio} |", way.label())?;
    }
    writeln!(out)?;

    writeln!(
        out,
        "## Connection cost\n\n`pgbench -C -S -c 1`: a new connection for every \
         transaction, so each one is connect, authenticate, one query, disconnect.\n"
    )?;
    writeln!(
        out,
        "| way | ms per connect + query | pgbench's connection time, ms |\n|---|---:|---:|"
    )?;
    for (way, runs) in &results.connect {
        writeln!(
            out,
            "| {} | {:.3} | {:.3} |",
            way.label(),
            median_of(runs, |r| r.latency_avg_ms),
            median_of(runs, |r| r.connection_ms.unwrap_or(0.0))
        )?;
    }
    if results.bpf_connections > 0 {
        writeln!(
            out,
            "\nThe daemon's CPU time (user + system, `/proc/PID/stat`) over the sluice runs: \
             {:.0} µs per connection (accept, identify, authenticate, one query, close).",
            results.connect_daemon_cpu_s * 1e6 / results.bpf_connections as f64
        )?;
    }
    writeln!(
        out,
        "\nThe eBPF programs' own cost (`kernel.bpf_stats_enabled`, run_time_ns and \
         run_cnt of each program the daemon loaded) over the sluice runs, {} connections:\n",
        results.bpf_connections
    )?;
    writeln!(
        out,
        "| program | runs per connection | ns per run | ns per connection |\n|---|---:|---:|---:|"
    )?;
    let connections = results.bpf_connections.max(1) as f64;
    for prog in &results.bpf {
        writeln!(
            out,
            "| {} | {:.2} | {:.0} | {:.0} |",
            prog.name,
            prog.run_cnt as f64 / connections,
            prog.run_time_ns as f64 / prog.run_cnt.max(1) as f64,
            prog.run_time_ns as f64 / connections
        )?;
    }
    let (least, most) = connect_path_bounds(results);
    writeln!(
        out,
        "| **connect path** (connect4/6, getpeername4/6; sock_ops in builds before `f4eb4be`, since which skb_egress files the record from the SYN) | | | **{least:.0}** |",
    )?;
    writeln!(
        out,
        "| **connect path with skb_egress** (every packet it saw, the SYN's filing among them: an upper bound) | | | **{most:.0}** |",
    )?;
    writeln!(
        out,
        "| **all programs** | | | **{:.0}** |\n",
        bpf_ns_per_connection(results, false)
    )?;

    if let Some(idle) = &results.idle {
        writeln!(
            out,
            "## Idle connections\n\nA managed client opens plain TCP connections to a sink \
             through the daemon and holds them; the daemon's VmRSS was {} KiB before the \
             first.\n",
            idle.baseline_kib
        )?;
        writeln!(
            out,
            "| idle connections | daemon RSS KiB | KiB per connection |\n|---:|---:|---:|"
        )?;
        for (count, rss, per) in &idle.points {
            writeln!(out, "| {count} | {rss} | {per:.1} |")?;
        }
        writeln!(out)?;
        if let Some(clamped) = &idle.clamped {
            writeln!(out, "> {clamped}.\n")?;
        }
    }

    writeln!(
        out,
        "## Components alone\n\n`daemon/examples/bench_internals.rs`, release build, one \
         thread for masking:\n"
    )?;
    writeln!(out, "| component | figure |\n|---|---:|")?;
    if let Some(rate) = results.masking_mb_s {
        writeln!(
            out,
            "| masking engine, PII profile over a generated customer-row corpus | {rate:.1} MB per CPU-second |"
        )?;
    }
    for (mode, rate) in &results.recording {
        writeln!(
            out,
            "| statement recording into the store (its record log), {mode}, 64 concurrent writers | {rate:.0} events/s |"
        )?;
    }
    writeln!(out)?;

    if let Some(profile) = &results.perf {
        writeln!(
            out,
            "## Daemon profile\n\n`perf record --call-graph dwarf` on the daemon during an \
             8-client prepared select-only run through sluice (batched); self time by DSO and \
             symbol, entries over 1.5 %, then the statement path's parts with their callees:\n\n\
             ```text\n{profile}\n```\n"
        )?;
    }

    let kept = fs::read_to_string(previous)
        .ok()
        .and_then(|text| text.find(ANALYSIS_HEADING).map(|at| text[at..].to_owned()));
    match kept {
        Some(analysis) => out.push_str(&analysis),
        None => writeln!(
            out,
            "{ANALYSIS_HEADING}\n\nNot written for this run yet: see the profile above."
        )?,
    }
    Ok(out)
}

/// The programs an agent's connect goes through to be redirected.
fn on_connect_path(name: &str) -> bool {
    [
        "sluice_connect4",
        "sluice_connect6",
        "sluice_sock_ops",
        "sluice_getpeername4",
        "sluice_getpeername6",
    ]
    .contains(&name)
}

/// The eBPF connect path per connection, in ns, as bounds: without the record's filing
/// where skb_egress does it (the connect-path programs alone), and with every packet
/// skb_egress saw (the SYN's filing is one of them; the others are the connection's
/// later packets, which the bench cannot tell apart in `run_time_ns`).
fn connect_path_bounds(results: &Results) -> (f64, f64) {
    let least = bpf_ns_per_connection(results, true);
    let egress: u64 = results
        .bpf
        .iter()
        .filter(|p| p.name == "sluice_skb_egress")
        .map(|p| p.run_time_ns)
        .sum();
    (
        least,
        least + egress as f64 / results.bpf_connections.max(1) as f64,
    )
}

/// eBPF run time per connection: of the connect path only, or of every program.
fn bpf_ns_per_connection(results: &Results, connect_path_only: bool) -> f64 {
    let total: u64 = results
        .bpf
        .iter()
        .filter(|p| !connect_path_only || on_connect_path(&p.name))
        .map(|p| p.run_time_ns)
        .sum();
    total as f64 / results.bpf_connections.max(1) as f64
}

/// The median of `field` of `way`'s runs of `runs`.
fn way_median(runs: &[WayRuns], way: Way, field: impl Fn(&PgbenchResult) -> f64) -> Option<f64> {
    runs.iter()
        .find(|r| r.way == way)
        .map(|r| median_of(&r.runs, field))
}

fn way_cpu(runs: &[WayRuns], way: Way) -> Option<f64> {
    runs.iter()
        .find(|r| r.way == way && !r.proxy_cpu_us.is_empty())
        .map(|r| median(&r.proxy_cpu_us))
}

/// The worst of `figure` over the workloads `select` picks, with the workload's name;
/// worst is the lowest, or the highest when `highest_is_worst`.
fn worst(
    results: &Results,
    select: impl Fn(&super::Workload) -> bool,
    figure: impl Fn(&[WayRuns]) -> Option<f64>,
    highest_is_worst: bool,
) -> Option<(String, f64)> {
    results
        .workloads
        .iter()
        .filter(|(workload, _)| select(workload))
        .filter_map(|(workload, runs)| {
            Some((
                format!("{}, {} client(s)", workload.name, workload.clients),
                figure(runs)?,
            ))
        })
        .reduce(|a, b| {
            let b_worse = if highest_is_worst {
                b.1 > a.1
            } else {
                b.1 < a.1
            };
            if b_worse { b } else { a }
        })
}

/// The targets of issue 15, each met or missed by the figures of this run.
fn targets(out: &mut String, results: &Results) -> Result<()> {
    if let Some(measured) = &results.sysbench {
        out.push_str(&super::sysbench::render(measured));
    }
    if let Some(measured) = &results.http {
        out.push_str(&super::http::render(measured));
    }
    writeln!(out, "## Targets\n\n| target | measured | |\n|---|---|---|")?;
    let select_only = |w: &super::Workload| w.name.starts_with("select-only");
    let tpcb = |w: &super::Workload| w.name.starts_with("TPC-B");
    let vs_bouncer =
        |way: Way| move |runs: &[WayRuns]| Some(tps(runs, way)? / tps(runs, Way::PgBouncer)?);
    let mut row = |target: &str,
                   found: Option<(String, f64)>,
                   show: &dyn Fn(f64) -> String,
                   met: &dyn Fn(f64) -> bool|
     -> Result<()> {
        if let Some((name, value)) = found {
            writeln!(
                out,
                "| {target} | {} ({name}) | {} |",
                show(value),
                verdict(met(value))
            )?;
        }
        Ok(())
    };
    let times = |value: f64| format!("{value:.2}×");
    row(
        "select-only TPS at 8 clients, batched, simple and prepared ≥ 1.0× PgBouncer",
        worst(
            results,
            |w| select_only(w) && w.clients == 8,
            vs_bouncer(Way::SluiceBatched),
            false,
        ),
        &times,
        &|v| v >= 1.0,
    )?;
    row(
        "TPC-B TPS at 8 clients, batched ≥ 1.0× PgBouncer",
        worst(
            results,
            |w| tpcb(w) && w.clients == 8,
            vs_bouncer(Way::SluiceBatched),
            false,
        ),
        &times,
        &|v| v >= 1.0,
    )?;
    row(
        "select-only TPS at 1 client, batched ≥ 1.0× PgBouncer",
        worst(
            results,
            |w| select_only(w) && w.clients == 1,
            vs_bouncer(Way::SluiceBatched),
            false,
        ),
        &times,
        &|v| v >= 1.0,
    )?;
    row(
        "daemon CPU per select-only transaction ≤ 1.3× PgBouncer's (8 clients)",
        worst(
            results,
            |w| select_only(w) && w.clients == 8,
            |runs| Some(way_cpu(runs, Way::SluiceBatched)? / way_cpu(runs, Way::PgBouncer)?),
            true,
        ),
        &times,
        &|v| v <= 1.3,
    )?;
    row(
        "added p50 at 1 client, batched (select-only, against direct) ≤ +25 µs",
        worst(
            results,
            |w| select_only(w) && w.clients == 1,
            |runs| Some(p50(runs, Way::SluiceBatched)? - p50(runs, Way::Direct)?),
            true,
        ),
        &|v| format!("+{v:.0} µs"),
        &|v| v <= 25.0,
    )?;
    row(
        "p99 at 1 client, batched (select-only) ≤ 1.5× PgBouncer's p99",
        worst(
            results,
            |w| select_only(w) && w.clients == 1,
            |runs| {
                Some(
                    way_median(runs, Way::SluiceBatched, |r| r.p99_us)?
                        / way_median(runs, Way::PgBouncer, |r| r.p99_us)?,
                )
            },
            true,
        ),
        &times,
        &|v| v <= 1.5,
    )?;
    if let Some((fsync_p50, fsync_mean)) = results.fdatasync_ms {
        // Group commit shares one flush among the statements waiting: at 8 clients at
        // most 8, so no more than 8 statements per fdatasync. The median is the disk's
        // own latency; the mean also holds other processes' bursts on a shared machine,
        // which would flatter the ratio.
        let ceiling_tps = |w: &super::Workload| {
            let statements = if w.name.starts_with("TPC-B") {
                7.0
            } else {
                1.0
            };
            f64::from(w.clients) * 1e3 / fsync_p50 / statements
        };
        let found = results
            .workloads
            .iter()
            .filter(|(w, _)| w.clients == 8 && select_only(w))
            .filter_map(|(w, runs)| {
                Some((
                    format!(
                        "{}, {:.0} TPS against a ceiling of {:.0}",
                        w.name,
                        tps(runs, Way::SluiceStrict)?,
                        ceiling_tps(w)
                    ),
                    tps(runs, Way::SluiceStrict)? / ceiling_tps(w),
                ))
            })
            .reduce(|a, b| if b.1 < a.1 { b } else { a });
        row(
            &format!(
                "strict at 8 clients ≥ 0.8× the group-commit ceiling (fdatasync here: {fsync_p50:.2} ms median, {fsync_mean:.2} ms mean; ceiling = 8 statements per median fdatasync)"
            ),
            found,
            &times,
            &|v| v >= 0.8,
        )?;
    }
    row(
        "`+ mask` on pgbench within 5% of batched",
        worst(
            results,
            |_| true,
            |runs| Some(tps(runs, Way::SluiceMask)? / tps(runs, Way::SluiceBatched)?),
            false,
        ),
        &times,
        &|v| v >= 0.95,
    )?;
    let direct_rate = results
        .large
        .iter()
        .find(|(way, _)| *way == Way::Direct)
        .map(|(_, rates)| median(rates));
    let masked_rate = results
        .large
        .iter()
        .find(|(way, _)| *way == Way::SluiceMask)
        .map(|(_, rates)| median(rates));
    if let (Some(direct), Some(masked)) = (direct_rate, masked_rate) {
        row(
            "large result set, masked ≥ 0.9× direct",
            Some((
                "MB/s against direct".to_owned(),
                masked / direct.max(f64::MIN_POSITIVE),
            )),
            &times,
            &|v| v >= 0.9,
        )?;
    }
    if results.bpf_connections > 0 {
        let (least, most) = connect_path_bounds(results);
        let status = if most <= 1_500.0 {
            "met"
        } else if least > 1_500.0 {
            "**missed**"
        } else {
            "**not shown**"
        };
        writeln!(
            out,
            "| eBPF connect path ≤ 1.5 µs per connection | between {:.2} µs (connect4/6, getpeername; sock_ops in builds before `f4eb4be`) and {:.2} µs (with all of skb_egress's packets): since `f4eb4be` the record is filed by skb_egress from the SYN, and the bench cannot split one packet's share of it; {:.2} µs with every program | {status} |",
            least / 1e3,
            most / 1e3,
            bpf_ns_per_connection(results, false) / 1e3,
        )?;
    }
    if let Some(rate) = results.masking_mb_s {
        writeln!(
            out,
            "| masking ≥ 300 MB/s per core | {rate:.0} MB/s | {} |",
            verdict(rate >= 300.0)
        )?;
    }
    if let Some((count, _, per)) = results.idle.as_ref().and_then(|idle| idle.points.last()) {
        writeln!(
            out,
            "| daemon memory per idle connection ≤ 12 KiB | {per:.1} KiB at {count} | {} |",
            verdict(*per <= 12.0)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
