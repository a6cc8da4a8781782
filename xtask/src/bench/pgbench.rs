//! Running `pgbench` and reading what it measured: throughput from its summary, and
//! latency percentiles from its per-transaction log (`--log`), which the summary does
//! not give.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// What one pgbench run measured.
#[derive(Clone, Debug, Default)]
pub struct PgbenchResult {
    pub tps: f64,
    pub transactions: u64,
    /// Mean latency in ms, from the summary.
    pub latency_avg_ms: f64,
    /// From the per-transaction log, in µs; 0 when the run was not logged.
    pub p50_us: f64,
    pub p99_us: f64,
    /// `average connection time` (with `-C`), in ms.
    pub connection_ms: Option<f64>,
}

/// Runs `cmd` (a pgbench command line, possibly wrapped in `sluice run`), to which
/// `--log --log-prefix` into `log_dir` is added when `log_latencies`; parses the result
/// and removes the logs.
pub fn run(mut cmd: Command, log_dir: &Path, log_latencies: bool) -> Result<PgbenchResult> {
    let prefix = log_dir.join("pgbench_log");
    if log_latencies {
        cmd.arg("--log")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    let line = crate::shell::display(&cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("`{line}` failed ({}):\n{stdout}\n{stderr}", output.status);
    }
    let mut result =
        parse_summary(&stdout).with_context(|| format!("`{line}` printed:\n{stdout}"))?;
    if log_latencies {
        let mut latencies = Vec::with_capacity(result.transactions as usize);
        for entry in fs::read_dir(log_dir)? {
            let path = entry?.path();
            let is_log = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("pgbench_log."));
            if is_log {
                read_latencies(&fs::read_to_string(&path)?, &mut latencies);
                fs::remove_file(&path)?;
            }
        }
        latencies.sort_unstable();
        result.p50_us = percentile(&latencies, 0.50);
        result.p99_us = percentile(&latencies, 0.99);
    }
    Ok(result)
}

/// The numbers in pgbench's summary.
fn parse_summary(stdout: &str) -> Result<PgbenchResult> {
    let mut result = PgbenchResult::default();
    // `-t` runs print `processed: 10/10`, `-T` runs `processed: 10`.
    let number_after = |line: &str, key: &str| -> Option<f64> {
        line.strip_prefix(key)?
            .split_whitespace()
            .next()?
            .split('/')
            .next()?
            .parse()
            .ok()
    };
    let mut saw_tps = false;
    for line in stdout.lines() {
        if let Some(n) = number_after(line, "number of transactions actually processed:") {
            result.transactions = n as u64;
        } else if let Some(ms) = number_after(line, "latency average =") {
            result.latency_avg_ms = ms;
        } else if let Some(ms) = number_after(line, "average connection time =") {
            result.connection_ms = Some(ms);
        } else if let Some(tps) = number_after(line, "tps =") {
            result.tps = tps;
            saw_tps = true;
        }
    }
    if !saw_tps || result.transactions == 0 {
        bail!("no tps or no transactions in pgbench's summary");
    }
    Ok(result)
}

/// Appends the latency (µs, third field) of every line of a pgbench transaction log:
/// `client_id transaction_no time script_no time_epoch time_us`.
fn read_latencies(log: &str, latencies: &mut Vec<u64>) {
    latencies.extend(
        log.lines()
            .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()),
    );
}

/// The `q` quantile (nearest rank) of sorted values; 0 when there are none.
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).map_or(0.0, |&v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_pgbench_15_is_parsed() {
        let stdout = "transaction type: <builtin: select only>\n\
            scaling factor: 10\nquery mode: prepared\nnumber of clients: 8\n\
            number of threads: 2\nmaximum number of tries: 1\nduration: 5 s\n\
            number of transactions actually processed: 150012\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 0.266 ms\ninitial connection time = 12.345 ms\n\
            tps = 30002.400000 (without initial connection time)\n";
        let result = parse_summary(stdout).unwrap();
        assert_eq!(result.transactions, 150_012);
        assert!((result.tps - 30002.4).abs() < 1e-6);
        assert!((result.latency_avg_ms - 0.266).abs() < 1e-9);
        assert_eq!(result.connection_ms, None);
    }

    #[test]
    fn reconnecting_runs_report_connection_time() {
        let stdout = "number of transactions actually processed: 900\n\
            latency average = 5.5 ms\naverage connection time = 2.25 ms\n\
            tps = 181.8 (including reconnection times)\n";
        assert_eq!(parse_summary(stdout).unwrap().connection_ms, Some(2.25));
    }

    #[test]
    fn runs_with_a_transaction_count_are_parsed() {
        let stdout = "number of transactions actually processed: 3/3\n\
            latency average = 119.637 ms\ntps = 8.358618 (without initial connection time)\n";
        let result = parse_summary(stdout).unwrap();
        assert_eq!(result.transactions, 3);
        assert!((result.latency_avg_ms - 119.637).abs() < 1e-9);
    }

    #[test]
    fn a_run_without_transactions_is_an_error() {
        assert!(parse_summary("pgbench: error: connection refused\n").is_err());
    }

    #[test]
    fn latencies_come_from_the_third_field() {
        let mut latencies = Vec::new();
        read_latencies(
            "0 1 140 0 1700000000 1234\n1 1 95 0 1700000000 1300\nbad\n",
            &mut latencies,
        );
        assert_eq!(latencies, [140, 95]);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
