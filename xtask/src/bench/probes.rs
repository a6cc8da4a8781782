//! What the bench reads from the kernel about a running process: CPU time and resident
//! memory from `/proc`, the eBPF programs' run-time counters (`bpf_stats`) from the
//! fdinfo of the program fds the daemon holds, and `perf` profiles.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::shell::capture;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, all threads) `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// User + system seconds from a `/proc/.../stat` file (a process's or a thread's).
fn cpu_seconds_of(path: &str) -> Result<f64> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the state field.
    let ticks = |index: usize| -> Result<f64> {
        Ok(fields
            .get(index)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// Context switches (voluntary and not) of every thread of `pid` so far; threads that
/// ended are not counted, so read it around a run whose threads live throughout.
pub fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = fs::read_to_string(entry?.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

/// The latency of one 4 KiB write + fdatasync in `dir` (where the daemons' stores
/// live), in ms: the median and the mean of 200. Group commit cannot make a durable
/// write cheaper than this; it can only share one among the statements waiting.
pub fn fdatasync_latency_ms(dir: &Path) -> Result<(f64, f64)> {
    use std::io::Write as _;
    let path = dir.join("fdatasync-probe");
    let mut file =
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut samples = Vec::with_capacity(200);
    let block = [0x5a_u8; 4096];
    for _ in 0..200 {
        file.write_all(&block)?;
        let started = std::time::Instant::now();
        file.sync_data()?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    drop(file);
    let _ = fs::remove_file(&path);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    Ok((super::report::median(&samples), mean))
}

/// CPU seconds per thread group of `pid`: threads are grouped by name with a trailing
/// `-<number>` dropped (`sled-io-3` counts as `sled-io`).
pub fn cpu_seconds_by_thread(pid: u32) -> Result<BTreeMap<String, f64>> {
    let mut groups = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = entry?.path();
        let (Ok(comm), Ok(tid)) = (
            fs::read_to_string(task.join("comm")),
            task.file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .parse::<u32>(),
        ) else {
            continue;
        };
        let Ok(seconds) = cpu_seconds_of(&format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let comm = comm.trim();
        let group = match comm.rsplit_once('-') {
            Some((base, number)) if number.chars().all(|c| c.is_ascii_digit()) => base,
            _ => comm,
        };
        *groups.entry(group.to_owned()).or_insert(0.0) += seconds;
    }
    Ok(groups)
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// One eBPF program's counters.
#[derive(Clone, Debug, Default)]
pub struct ProgStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The counters of every eBPF program `pid` holds an fd of, by program id. The
/// counters only move while `kernel.bpf_stats_enabled` is 1 (see [`BpfStatsGuard`]).
pub fn bpf_prog_stats(pid: u32) -> Result<BTreeMap<u32, ProgStats>> {
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let is_prog = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fdinfo = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(entry.file_name());
        let Ok(text) = fs::read_to_string(&fdinfo) else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(key))?
                .trim()
                .parse()
                .ok()
        };
        let Some(id) = field("prog_id:") else {
            continue;
        };
        programs.insert(
            id as u32,
            ProgStats {
                name: prog_name(id as u32).unwrap_or_else(|| format!("prog {id}")),
                run_time_ns: field("run_time_ns:").unwrap_or(0),
                run_cnt: field("run_cnt:").unwrap_or(0),
            },
        );
    }
    Ok(programs)
}

/// The program's name, from `bpftool` when it is installed.
fn prog_name(id: u32) -> Option<String> {
    let json = capture(
        Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string(), "--json"])
            .stderr(Stdio::null()),
    )
    .ok()?;
    let start = json.find("\"name\":\"")? + "\"name\":\"".len();
    let end = json.get(start..)?.find('"')? + start;
    json.get(start..end).map(str::to_owned)
}

/// Turns `kernel.bpf_stats_enabled` on, and restores its old value on drop.
pub struct BpfStatsGuard {
    old: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsGuard {
    pub fn enable() -> Result<Self> {
        let old = fs::read_to_string(BPF_STATS_SYSCTL)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_owned();
        fs::write(BPF_STATS_SYSCTL, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(Self { old })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS_SYSCTL, &self.old);
    }
}

/// Whether `perf` can count events here (it needs a PMU or at least software events).
pub fn perf_works() -> bool {
    Command::new("perf")
        .args(["stat", "-e", "task-clock", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Samples `pid` with call graphs for `seconds`, then returns the hottest symbols
/// (self time, percent) as `perf report` prints them.
pub fn perf_profile(pid: u32, seconds: u64, data_file: &Path) -> Result<String> {
    // DWARF call graphs: the release build keeps no frame pointers, but its unwind
    // tables let perf walk the stacks, so the report can say what each part costs with
    // what it calls.
    let record = Command::new("perf")
        .args(["record", "-F", "199", "--call-graph", "dwarf,8192", "-o"])
        .arg(data_file)
        .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("could not start perf record")?;
    if !record.success() {
        bail!("perf record failed ({record})");
    }
    let report = capture(
        Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none"])
            .args(["--sort", "dso,symbol", "--percent-limit", "1.5", "-i"])
            .arg(data_file),
    )?;
    let self_time = report
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .take(20)
        // Drop the empty caller columns `-g none` leaves at the end of each line.
        .map(|line| line.trim_end_matches([' ', '-']).to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    // With callees: the parts of the statement path, each with what it calls.
    let children = capture(
        Command::new("perf")
            .args(["report", "--stdio", "--children", "-g", "none"])
            .args(["--sort", "symbol", "--percent-limit", "1", "-i"])
            .arg(data_file),
    )
    .unwrap_or_default();
    let parts: Vec<String> = children
        .lines()
        .filter(|line| PROFILE_PARTS.iter().any(|part| line.contains(part)))
        .map(|line| line.trim_end_matches([' ', '-']).to_owned())
        .collect();
    if parts.is_empty() {
        return Ok(self_time);
    }
    Ok(format!(
        "{self_time}\n\nwith callees (children, self, symbol):\n{}",
        parts.join("\n")
    ))
}

/// The functions whose share with callees the profile shows: the agent and server
/// loops, classification, the recording hand-over, the store writer and sled, socket
/// writes and scheduling.
const PROFILE_PARTS: &[&str] = &[
    "postgres::AgentLoop::handle",
    "postgres::AgentLoop::flush",
    "postgres::ServerLoop::run",
    "sql::cache::classify_and_mask",
    "pipeline::Pipeline::record",
    "store::writer::Writer::apply",
    "sled::transaction::Transactional::transaction",
    "sled::threadpool::perform_work",
    "[k] __x64_sys_sendto",
    "[k] __x64_sys_recvfrom",
    "[k] schedule",
];
