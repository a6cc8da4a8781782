//! The scale scenario: the daemon's resident memory per idle proxied connection.
//!
//! A managed Python client opens connections to a TCP sink on 127.0.0.3 and holds them;
//! each lands on the daemon, which records it, connects upstream and relays. Once the
//! sink has accepted every connection, the daemon's `VmRSS` is compared with its value
//! before the first one.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    probes::rss_kib,
    servers::{Scratch, Sluice, StoreMode},
};
use crate::shell::note;

const SINK_HOST: &str = "127.0.0.3";
const AGENT: &str = "bench-idle";

/// Opens (and holds) `N` more connections per line read, to `HOST:PORT`, and answers
/// each line with the total held.
const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
held = []
for line in sys.stdin:
    for _ in range(int(line)):
        held.append(socket.create_connection((host, port)))
    print(len(held), flush=True)
"#;

/// Accepts and holds connections on `HOST:PORT`, printing 0 once listening and then
/// the total after each.
const SINK: &str = r#"
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen(4096)
print(0, flush=True)
held = []
while True:
    held.append(listener.accept()[0])
    print(len(held), flush=True)
"#;

/// Resident memory measured at each number of idle connections.
#[derive(Clone, Debug)]
pub struct IdleResult {
    pub baseline_kib: u64,
    /// (connections, RSS KiB, KiB per connection over the baseline)
    pub points: Vec<(usize, u64, f64)>,
    /// Why the largest count was not reached, if it was not.
    pub clamped: Option<String>,
}

/// The hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn hard_nofile_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok())
        .context("no open-file limit in /proc/self/limits")
}

/// Measures at each count in `counts` (ascending), in one daemon started for this.
pub fn run(scratch: &Scratch, binary: &std::path::Path, counts: &[usize]) -> Result<IdleResult> {
    // The daemon holds two sockets per connection. Without CAP_SYS_RESOURCE no process
    // may go past this process's hard limit, so larger counts are clamped (and said so).
    let hard = hard_nofile_limit()?;
    let most_possible = (hard.saturating_sub(1024) / 2) as usize;
    let mut clamped = None;
    let counts: Vec<usize> = counts
        .iter()
        .map(|&count| {
            if count > most_possible {
                clamped = Some(format!(
                    "{count} idle connections need more open files than the hard limit \
                     here ({hard}, and no CAP_SYS_RESOURCE to raise it): measured at \
                     {most_possible} instead"
                ));
                most_possible
            } else {
                count
            }
        })
        .collect();
    let nofile = hard;
    // The sink is Python too: std's listener has a backlog of 128, and a burst of
    // upstream connects from the daemon overflows it (SYN retries then take seconds).
    let sink_port = super::servers::free_port(SINK_HOST)?;
    let mut sink = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .args(["--", "python3", "-c", SINK])
        .args([SINK_HOST, &sink_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the TCP sink")?;
    // usize::MAX until the sink says it listens.
    let accepted = Arc::new(AtomicUsize::new(usize::MAX));
    {
        let accepted = Arc::clone(&accepted);
        let stdout = sink.stdout.take().context("sink stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(count) = line.trim().parse() {
                    accepted.store(count, Ordering::SeqCst);
                }
            }
        });
    }
    wait_for_listener(&accepted)?;

    let policy = format!(
        "[[agent]]\nname = \"{AGENT}\"\n\n\
         [[resource]]\nname = \"sink\"\naddresses = [\"{SINK_HOST}\"]\nports = [{sink_port}]\n\n\
         [[rule]]\nname = \"idle-allow\"\nagent = \"{AGENT}\"\nresource = \"sink\"\n\
         operations = [\"connect\"]\naction = \"allow\"\n"
    );
    let daemon = Sluice::start(
        scratch,
        binary,
        "idle",
        &policy,
        StoreMode::Batched,
        Some(nofile),
    )?;
    let mut prlimit = Command::new("prlimit");
    prlimit
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(&daemon.binary)
        .arg("--config")
        .arg(&daemon.config)
        .args(["run", "--agent", AGENT, "--", "python3", "-c", CLIENT])
        .args([SINK_HOST, &sink_port.to_string()]);
    let mut client = prlimit
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the idle-connection client")?;
    let mut to_client = client.stdin.take().context("client stdin")?;
    let mut from_client = BufReader::new(client.stdout.take().context("client stdout")?);

    let pid = daemon.pid()?;
    settle();
    let baseline_kib = rss_kib(pid)?;
    let mut points = Vec::new();
    let mut open = 0;
    let result = (|| -> Result<()> {
        for &count in &counts {
            writeln!(to_client, "{}", count - open)?;
            let mut answer = String::new();
            from_client.read_line(&mut answer)?;
            if answer.trim().parse::<usize>().ok() != Some(count) {
                bail!("the idle client stopped at {open} connections: {answer:?}");
            }
            open = count;
            wait_for(&accepted, count)?;
            settle();
            let rss = rss_kib(pid)?;
            let per_connection = rss.saturating_sub(baseline_kib) as f64 / count as f64;
            note(&format!(
                "{count} idle connections: daemon RSS {rss} KiB ({per_connection:.1} KiB each over {baseline_kib} KiB)"
            ));
            points.push((count, rss, per_connection));
        }
        Ok(())
    })();
    drop(to_client);
    let _ = client.wait();
    let _ = sink.kill();
    let _ = sink.wait();
    result.with_context(|| format!("daemon log:\n{}", daemon.log()))?;
    Ok(IdleResult {
        baseline_kib,
        points,
        clamped,
    })
}

/// Lets the daemon finish recording and its allocator settle before memory is read.
fn settle() {
    sleep(Duration::from_secs(2));
}

fn wait_for_listener(accepted: &AtomicUsize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) == usize::MAX {
        if Instant::now() > deadline {
            bail!("the TCP sink did not start listening");
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wait_for(accepted: &AtomicUsize, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.load(Ordering::SeqCst) == usize::MAX || accepted.load(Ordering::SeqCst) < count {
        if Instant::now() > deadline {
            bail!(
                "the sink accepted only {} of {count} connections within 120 s",
                accepted.load(Ordering::SeqCst)
            );
        }
        sleep(Duration::from_millis(100));
    }
    Ok(())
}
