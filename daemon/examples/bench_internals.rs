//! Throughput of two daemon components on their own, for `cargo xtask bench`: the
//! masking engine over a generated row corpus, and statement recording into the store
//! (its record log) in both durability modes.
//!
//! An example rather than a `sluice` subcommand, so the shipped binary carries no
//! benchmark code. Build and run it in release mode:
//!
//! ```sh
//! cargo run --release -p sluice --example bench_internals -- masking 64
//! cargo run --release -p sluice --example bench_internals -- recording 20000
//! ```
//!
//! Output is one `key value` pair per line, which `cargo xtask bench` parses.

use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sluice::{
    masking::{ColumnInfo, MaskProfile, MaskRule, MaskScratch, Masker, StrategyKind, Written},
    store::{DecisionRecord, Durability, StatementRecord, Store, StoreOptions},
};
use time::OffsetDateTime;

/// Concurrent writers in the recording benchmark: many sessions at once, as under load,
/// so that durable writes share group commits the way they do in the daemon.
const RECORDING_WRITERS: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["masking", megabytes] => masking(megabytes.parse().context("megabytes")?),
        ["recording", events] => recording(events.parse().context("events")?),
        _ => bail!("usage: bench_internals masking MEGABYTES | recording EVENTS"),
    }
}

/// The shipped detectors, as a policy would use them: e-mail columns hashed, every
/// detector on every text column redacted.
fn pii_profile() -> MaskProfile {
    let rule = |column: Option<&str>, detectors: Option<Vec<String>>, strategy| MaskRule {
        table: None,
        column: column.map(str::to_owned),
        detectors,
        strategy,
        keep_last: None,
    };
    MaskProfile {
        name: "bench-pii".to_owned(),
        rule: vec![
            rule(Some("*email*"), None, StrategyKind::Hash),
            rule(None, Some(vec!["*".to_owned()]), StrategyKind::Redact),
        ],
    }
}

const COLUMNS: [&str; 5] = ["id", "name", "email", "phone", "note"];

const FIRST_NAMES: [&str; 8] = [
    "Alice", "Bruno", "Chiara", "Dmitri", "Emeka", "Fatima", "Goran", "Hana",
];
const LAST_NAMES: [&str; 8] = [
    "Nguyen", "Okafor", "Rossi", "Schmidt", "Tanaka", "Usman", "Varga", "Weber",
];
const NOTES: [&str; 6] = [
    "Customer asked about the delivery window for the second order; call back next week.",
    "Paid with card {card}, receipt sent, no further action needed at this point.",
    "Changed shipping address after the parcel left the warehouse, refund requested.",
    "Escalated to billing: SSN {ssn} was given over the phone, please verify identity.",
    "Prefers contact by e-mail at {email}, not by phone during office hours.",
    "Loyalty tier upgraded, voucher code WINTER-2026 applied to the next purchase.",
];

/// A card number that passes the Luhn check, spaced in groups of four.
fn luhn_card(seed: u64) -> String {
    let mut digits: Vec<u32> = format!("4{:014}", seed % 100_000_000_000_000)
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    let mut card = String::new();
    for (i, d) in digits.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            card.push(' ');
        }
        let _ = write!(card, "{d}");
    }
    card
}

/// One customer row as text values, about 200 bytes, a third of them with PII in the
/// free-text note.
fn corpus_row(n: u64) -> [String; 5] {
    let first = FIRST_NAMES[(n % 8) as usize];
    let last = LAST_NAMES[(n / 8 % 8) as usize];
    let email = format!(
        "{}.{}{}@example.com",
        first.to_lowercase(),
        last.to_lowercase(),
        n
    );
    let note = NOTES[(n % 6) as usize]
        .replace("{card}", &luhn_card(n.wrapping_mul(7919)))
        .replace(
            "{ssn}",
            &format!(
                "{:03}-{:02}-{:04}",
                100 + n % 600,
                10 + n % 89,
                1000 + n % 8999
            ),
        )
        .replace("{email}", &email);
    [
        n.to_string(),
        format!("{first} {last}"),
        email,
        format!("+1 415 555 {:04}", n % 10_000),
        note,
    ]
}

fn masking(megabytes: usize) -> Result<()> {
    let masker = Masker::new(&pii_profile(), &[7; 32]).context("bench profile")?;
    let columns: Vec<ColumnInfo<'_>> = COLUMNS
        .iter()
        .map(|name| ColumnInfo {
            name,
            table: Some("customers"),
            text_like: true,
        })
        .collect();
    // A corpus of distinct rows, cycled until the requested volume is masked.
    let corpus: Vec<[String; 5]> = (0..10_000).map(corpus_row).collect();
    let corpus_bytes: usize = corpus.iter().flatten().map(String::len).sum();
    let passes = (megabytes * 1_000_000).div_ceil(corpus_bytes).max(1);

    let started = Instant::now();
    let cpu_started = thread_cpu_seconds();
    let mut out_bytes = 0usize;
    let mut changed = 0u64;
    // As the proxies do: each row's values written into one reused output buffer, a
    // value copied when it is unchanged and masked into the buffer otherwise.
    let mut scratch = MaskScratch::default();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    for _ in 0..passes {
        // A plan per result set, as the proxy does; here a result set is one pass.
        let plan = masker.plan(&columns);
        for row in &corpus {
            for (column, value) in row.iter().enumerate() {
                let value = value.as_bytes();
                match masker.mask_into(&plan, column, value, &mut scratch, &mut out) {
                    Written::Unchanged => out.extend_from_slice(value),
                    Written::Masked { .. } | Written::Nulled => changed += 1,
                }
            }
            if out.len() > 60 * 1024 {
                out_bytes += out.len();
                out.clear();
            }
        }
    }
    out_bytes += out.len();
    let elapsed = started.elapsed();
    let cpu = thread_cpu_seconds() - cpu_started;
    let in_bytes = corpus_bytes * passes;
    println!("rows {}", corpus.len() * passes);
    println!("input_bytes {in_bytes}");
    println!("output_bytes {out_bytes}");
    println!("masked_values {changed}");
    println!("seconds {:.6}", elapsed.as_secs_f64());
    println!(
        "mb_per_s {:.1}",
        in_bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    // Per second of this thread's CPU time: what one core does, whatever else the
    // machine runs (a loaded machine takes the core away, not the work per byte).
    println!("cpu_seconds {cpu:.6}");
    println!("mb_per_cpu_s {:.1}", in_bytes as f64 / 1e6 / cpu.max(1e-9));
    Ok(())
}

/// CPU time (user + system) this thread has used, from `/proc/thread-self/stat`, in
/// clock ticks of 10 ms: about 1 % of a 200 MB run.
fn thread_cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses: utime is the
            // 14th field of the line, the 12th after `)`.
            let rest = stat.get(stat.rfind(')')? + 1..)?.to_owned();
            let fields: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(fields.iter().sum::<u64>())
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

fn statement(session_id: u64, seq: u64) -> StatementRecord {
    StatementRecord {
        session_id,
        seq,
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = ?".to_owned(),
        operation: "read".to_owned(),
        kind: "SELECT".to_owned(),
        protocol: "postgres".into(),
        details: Default::default(),
        tables: vec!["pgbench_accounts".to_owned()],
        params: 1,
        parameters: vec!["text:6".to_owned()],
        decision: DecisionRecord {
            action: "allow".to_owned(),
            rule: "bench-allow".to_owned(),
            reason: "rule `bench-allow` allows read by agent `bench` on resource `pg`".to_owned(),
        },
        started_at: OffsetDateTime::now_utc(),
        duration_us: Some(120),
        rows: Some(1),
        tag: Some("SELECT 1".to_owned()),
        error: None,
        masked: Default::default(),
        nulled: 0,
        approval: None,
        identity: None,
    }
}

fn recording(events: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for (name, durability) in [
        ("batched", Durability::Batched),
        ("strict", Durability::Durable),
    ] {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("store"), StoreOptions::default())?;
        let elapsed = runtime.block_on(write_statements(&store, durability, events))?;
        println!("{name}_events {events}");
        println!("{name}_seconds {:.6}", elapsed.as_secs_f64());
        println!(
            "{name}_events_per_s {:.0}",
            events as f64 / elapsed.as_secs_f64()
        );
        println!("{name}_flushes {}", store.stats().flushes);
    }
    Ok(())
}

/// Writes `events` statements from [`RECORDING_WRITERS`] concurrent sessions and waits
/// until all of them are on disk, so both modes are timed to the same end point.
async fn write_statements(store: &Store, durability: Durability, events: u64) -> Result<Duration> {
    let per_writer = events.div_ceil(RECORDING_WRITERS as u64);
    let template = Arc::new(statement(0, 0));
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..RECORDING_WRITERS as u64 {
        let store = store.clone();
        let template = Arc::clone(&template);
        writers.spawn(async move {
            let mut record = (*template).clone();
            record.session_id = writer + 1;
            for seq in 1..=per_writer {
                record.seq = seq;
                store.put_statement(&record, durability).await?;
            }
            Ok::<_, sluice::store::StoreError>(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result??;
    }
    store.flush().await?;
    Ok(started.elapsed())
}
