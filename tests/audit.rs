//! The audit event log end to end: a real daemon, a real PostgreSQL server on
//! 127.0.0.2 and the real psql as the agent.
//!
//! The store's record log (where statements and events live) is read and tampered with
//! through its files, as a root attacker on the host would: the log's own checksums are
//! recomputed, so only the hash chain can tell.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    postgres::{PgCommand, PgServer, Rule},
    sluice_bin,
};

const AGENT: &str = "writer";
const PASSWORD: &str = "writer-secret";
/// Bytes before an event's JSON in a stored value: prev hash and hash.
const VALUE_HEADER: usize = 64;

fn setup(extra_config: &str) -> (PgServer, TestDaemon) {
    let pg = PgServer::start();
    pg.create_role(AGENT, PASSWORD);
    pg.create_database("audit", AGENT);
    let daemon = TestDaemon::start_with_config(
        &pg.policy(&[AGENT], &[Rule::allow(AGENT, &["*"])]),
        "",
        extra_config,
    );
    (pg, daemon)
}

/// psql as the agent on database `audit`, stopping at the first error.
fn psql(daemon: &TestDaemon, pg: &PgServer) -> PgCommand {
    PgCommand::agent(daemon, AGENT, "psql")
        .password(PASSWORD)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.conninfo(AGENT, "audit"))
}

fn store_dir(daemon: &TestDaemon) -> PathBuf {
    daemon.dir.path().join("state").join("store")
}

/// Bytes of a log record's frame before its payload: length, CRC-32, LSN.
const FRAME_HEADER: usize = 16;
/// The kind byte of an event entry in a record's payload.
const EVENT_ENTRY: u8 = 3;

/// One record of the store's log: its segment file, where it starts, its LSN, and the
/// event entries of its payload as `(seq, value range in the file)`.
struct LogRecord {
    path: PathBuf,
    offset: usize,
    lsn: u64,
    len: usize,
    events: Vec<(u64, std::ops::Range<usize>)>,
}

/// The store's log segment files, oldest first.
fn log_segments(store: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(store.join("log"))
        .expect("the store's log directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    paths.sort();
    paths
}

/// Every record of the log, parsed from its files as documented in docs/events.md
/// (a record torn by the kill at the very end is left out, as the daemon would).
fn log_records(store: &Path) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for path in log_segments(store) {
        let bytes = std::fs::read(&path).expect("read a log segment");
        let mut offset = 0;
        while offset + FRAME_HEADER <= bytes.len() {
            let len =
                u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("len")) as usize;
            let lsn = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().expect("lsn"));
            let start = offset + FRAME_HEADER;
            if start + len > bytes.len() {
                break;
            }
            let mut events = Vec::new();
            let mut at = start;
            while at < start + len {
                let kind = bytes[at];
                let key_len = if kind == 2 { 16 } else { 8 };
                let key = &bytes[at + 1..at + 1 + key_len];
                let value_len = u32::from_le_bytes(
                    bytes[at + 1 + key_len..at + 5 + key_len]
                        .try_into()
                        .expect("value len"),
                ) as usize;
                let value = at + 5 + key_len..at + 5 + key_len + value_len;
                if kind == EVENT_ENTRY {
                    events.push((
                        u64::from_be_bytes(key.try_into().expect("seq")),
                        value.clone(),
                    ));
                }
                at = value.end;
            }
            records.push(LogRecord {
                path: path.clone(),
                offset,
                lsn,
                len,
                events,
            });
            offset = start + len;
        }
    }
    records
}

/// Every stored event as `(seq, event JSON)`, read from the log's files (the daemon
/// must be down).
fn read_events(store: &Path) -> Vec<(u64, Value)> {
    let mut events = Vec::new();
    for record in log_records(store) {
        let bytes = std::fs::read(&record.path).expect("read a log segment");
        for (seq, value) in record.events {
            let event = serde_json::from_slice(&bytes[value.start + VALUE_HEADER..value.end])
                .expect("event JSON");
            events.push((seq, event));
        }
    }
    events
}

/// CRC-32 (IEEE), as the log's frames carry it.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites event `seq`'s stored value in place in its log file (same length) and
/// recomputes its record's checksum, as a root attacker would.
fn rewrite_event(store: &Path, seq: u64, edit: impl FnOnce(&mut [u8])) {
    let record = log_records(store)
        .into_iter()
        .find(|record| record.events.iter().any(|(found, _)| *found == seq))
        .expect("the event's record");
    let (_, value) = record
        .events
        .iter()
        .find(|(found, _)| *found == seq)
        .expect("the event")
        .clone();
    let mut bytes = std::fs::read(&record.path).expect("read the segment");
    edit(&mut bytes[value]);
    let start = record.offset + FRAME_HEADER;
    let crc = crc32(&[
        &record.lsn.to_le_bytes(),
        &(record.len as u32).to_le_bytes(),
        &bytes[start..start + record.len],
    ]);
    bytes[record.offset + 4..record.offset + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&record.path, bytes).expect("write the segment");
}

fn verify(daemon: &TestDaemon, args: &[&str]) -> (Output, Value) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let output = daemon.sluice(&all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "verify printed no JSON ({error}): status {}, stdout {:?}, stderr {:?}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

fn activity_type(event: &Value) -> &str {
    event["activity"]["type"].as_str().unwrap_or_default()
}

/// Kills the daemon (SIGKILL, as a crash would); these tests then read the store's
/// files directly.
fn stop(daemon: &mut TestDaemon) {
    daemon.kill();
}

#[test]
fn a_changed_event_is_reported_by_seq() {
    let (pg, mut daemon) = setup("");
    let output = psql(&daemon, &pg)
        .args(["-c", "CREATE TABLE notes (id int, body text)"])
        .output();
    assert!(output.status.success(), "{output:?}");
    let output = psql(&daemon, &pg)
        .args([
            "-c",
            "INSERT INTO notes VALUES (1, 'first')",
            "-c",
            "SELECT * FROM notes",
        ])
        .output();
    assert!(output.status.success(), "{output:?}");

    // A destination the policy does not allow: refused, and recorded as such.
    let refused = PgCommand::agent(&daemon, AGENT, "psql")
        .args(["-X", "-c", "SELECT 1", "-d"])
        .arg("host=127.0.0.3 port=5432 user=writer dbname=audit sslmode=disable")
        .output();
    assert!(!refused.status.success(), "{refused:?}");

    let (output, report) = verify(&daemon, &[]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["chain_break"], Value::Null);
    stop(&mut daemon);

    // Every kind of event the run produced, with who and where.
    let events = read_events(&store_dir(&daemon));
    let types: BTreeSet<&str> = events.iter().map(|(_, e)| activity_type(e)).collect();
    for expected in [
        "daemon",
        "policy_reload",
        "session_open",
        "session_close",
        "statement",
        "statement_result",
    ] {
        assert!(types.contains(expected), "no {expected} event in {types:?}");
    }
    let denied = events
        .iter()
        .find(|(_, e)| {
            activity_type(e) == "session_open" && e["activity"]["decision"]["action"] == "deny"
        })
        .map(|(_, e)| e)
        .expect("the refused connection's session_open event");
    assert_eq!(
        denied["context"]["destination"], "127.0.0.3:5432",
        "{denied}"
    );
    assert_eq!(denied["context"]["agent"], AGENT, "{denied}");
    assert_eq!(
        denied["activity"]["decision"]["rule"], "default-deny",
        "{denied}"
    );
    let (insert_seq, insert) = events
        .iter()
        .find(|(_, e)| activity_type(e) == "statement" && e["activity"]["kind"] == "INSERT")
        .expect("the INSERT's statement event");
    assert_eq!(insert["context"]["agent"], AGENT);
    assert_eq!(insert["context"]["resource"], "pg");
    assert_eq!(insert["context"]["protocol"], "postgres");
    assert!(insert["context"]["pid"].as_u64().is_some_and(|pid| pid > 0));
    assert!(
        insert["context"]["exe"]
            .as_str()
            .is_some_and(|exe| exe.ends_with("/psql"))
    );
    assert_eq!(insert["context"]["destination"], pg.addr().to_string());
    assert_eq!(insert["activity"]["sql"], "INSERT INTO notes VALUES (?, ?)");
    assert!(
        !insert.to_string().contains("first"),
        "a literal leaked: {insert}"
    );
    let insert_seq = *insert_seq;

    // A root attacker rewrites one byte of the event in the log's file (and its
    // record's checksum).
    rewrite_event(&store_dir(&daemon), insert_seq, |value| {
        let text = String::from_utf8(value[VALUE_HEADER..].to_vec()).expect("UTF-8 JSON");
        let at = VALUE_HEADER + text.find("\"INSERT\"").expect("kind in the event") + 1;
        value[at] = b'U';
    });

    // Offline: the CLI opens the store itself.
    let (output, report) = verify(&daemon, &[]);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["chain_break"]["seq"], insert_seq, "{report:#}");
    assert_eq!(report["chain_break"]["kind"], "hash_mismatch", "{report:#}");
    let human = daemon.sluice(&["verify"]);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains(&format!("broken at seq {insert_seq}: hash mismatch")),
        "{human:?}"
    );

    // Online: the daemon walks the same chain and reports the same event.
    daemon.restart();
    let (output, report) = verify(&daemon, &[]);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["chain_break"]["seq"], insert_seq, "{report:#}");
}

#[test]
fn damaged_store_files_give_a_clear_verify_error() {
    let (pg, mut daemon) = setup("");
    let mut script = String::from("CREATE TABLE marker_table_0123456789 (id int);\n");
    for id in 0..50 {
        script.push_str(&format!(
            "INSERT INTO marker_table_0123456789 VALUES ({id});\n"
        ));
    }
    let output = psql(&daemon, &pg).stdin(script.into_bytes()).output();
    assert!(output.status.success(), "{output:?}");
    stop(&mut daemon);

    // Flip a byte of the marker wherever the store's files hold it (its checksums
    // left as they were: damage, not an edit).
    let store = store_dir(&daemon);
    let mut flipped = 0;
    let files = std::fs::read_dir(&store)
        .expect("store dir")
        .map(|entry| entry.expect("entry").path())
        .chain(log_segments(&store));
    for path in files {
        if !path.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read store file");
        let marker = b"marker_table_0123456789";
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            bytes[at + 3] ^= 0x20;
            std::fs::write(&path, bytes).expect("write store file");
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the marker is in none of the store's files");

    let output = daemon.sluice(&["verify"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "verify panicked: {stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout {stdout}, stderr {stderr}"
    );
    assert!(
        stdout.contains("event log broken at seq") || stderr.contains("cannot verify the store"),
        "no clear report: stdout {stdout}, stderr {stderr}"
    );

    // A daemon does not carry on from a store that lost flushed events: their numbers
    // would be handed out again.
    if stdout.contains("truncated") {
        let mut start = std::process::Command::new(sluice_bin())
            .arg("--config")
            .arg(&daemon.config_path)
            .arg("daemon")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = start.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = start.kill();
                panic!("the daemon started on a store that lost events");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut start.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success());
        assert!(stderr.contains("the event log lost events"), "{stderr}");
    }
}

/// Rows (numbered from 1) to load; far more than the load runs before the kill.
const LOAD_ROWS: usize = 20_000;
const LOAD_SQL: &str = "INSERT INTO load VALUES (?);";

/// Loads numbered rows through the daemon, one INSERT per statement (row n is
/// statement n of the loading session), and kills the daemon with SIGKILL once the
/// server holds at least 300 of them. Returns the rows the server holds and the
/// statement numbers of the load's recorded `statement` events.
fn load_then_kill_9(pg: &PgServer, daemon: &mut TestDaemon) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let output = psql(daemon, pg)
        .args(["-c", "CREATE TABLE load (n int PRIMARY KEY)"])
        .output();
    assert!(output.status.success(), "{output:?}");
    let script: String = (1..=LOAD_ROWS)
        .map(|n| format!("INSERT INTO load VALUES ({n});\n"))
        .collect();
    let mut load = psql(daemon, pg).timeout(Duration::from_secs(600)).spawn();
    {
        use std::io::Write as _;
        let mut stdin = load.stdin.take().expect("psql stdin");
        std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
    }
    let count = || -> usize {
        pg.psql_local("postgres", "audit", "SELECT count(*) FROM load")
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count() < 300 {
        assert!(
            Instant::now() < deadline,
            "the load did not start:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(daemon);
    let _ = load.kill();
    let _ = load.wait();

    let rows: BTreeSet<u64> = pg
        .psql_local("postgres", "audit", "SELECT n FROM load ORDER BY n")
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    assert!(
        rows.len() >= 300 && rows.len() < LOAD_ROWS,
        "{} rows",
        rows.len()
    );
    let events = read_events(&store_dir(daemon));
    let load_session = events
        .iter()
        .find(|(_, e)| activity_type(e) == "statement" && e["activity"]["sql"] == LOAD_SQL)
        .map(|(_, e)| e["context"]["session_id"].clone())
        .expect("statement events of the load");
    let recorded = events
        .iter()
        .filter(|(_, e)| {
            activity_type(e) == "statement"
                && e["context"]["session_id"] == load_session
                && e["activity"]["sql"] == LOAD_SQL
                && e["activity"]["decision"]["action"] == "allow"
        })
        .filter_map(|(_, e)| e["activity"]["statement_seq"].as_u64())
        .collect();
    (rows, recorded)
}

/// Restarts the daemon and checks the chain is whole and holds at least `min` events.
fn restart_and_verify(daemon: &mut TestDaemon, min: usize) {
    daemon.restart();
    let (output, report) = verify(daemon, &[]);
    assert!(output.status.success(), "{report:#}\n{}", daemon.log());
    assert_eq!(report["chain_break"], Value::Null);
    assert!(
        report["events"].as_u64().is_some_and(|n| n as usize >= min),
        "{report:#}"
    );
}

#[test]
fn after_kill_9_every_row_the_server_holds_has_its_statement_event() {
    let (pg, mut daemon) = setup("[store]\ndurability = \"strict\"\n");
    let (rows, recorded) = load_then_kill_9(&pg, &mut daemon);
    let missing: Vec<&u64> = rows.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "{} of {} rows have no statement event, first {:?}",
        missing.len(),
        rows.len(),
        &missing[..missing.len().min(10)]
    );
    restart_and_verify(&mut daemon, rows.len());
}

/// Strict mode after SIGKILL mid-load: every statement psql printed an answer for is in
/// `sluice sessions show` once the daemon is back (its record reached the store's journal
/// before the answer reached the agent).
#[test]
fn after_kill_9_in_strict_mode_every_answered_statement_is_in_sessions_show() {
    let (pg, mut daemon) = setup("[store]\ndurability = \"strict\"\n");
    let output = psql(&daemon, &pg)
        .args(["-c", "CREATE TABLE answered (n int PRIMARY KEY)"])
        .output();
    assert!(output.status.success(), "{output:?}\n{}", daemon.log());
    let script: String = (1..=LOAD_ROWS)
        .map(|n| format!("INSERT INTO answered VALUES ({n});\n"))
        .collect();
    // Not quiet: psql prints `INSERT 0 1` for each answer it gets.
    let mut load = PgCommand::agent(&daemon, AGENT, "psql")
        .password(PASSWORD)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.conninfo(AGENT, "audit"))
        .timeout(Duration::from_secs(600))
        .spawn();
    {
        use std::io::Write as _;
        let mut stdin = load.stdin.take().expect("psql stdin");
        std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
    }
    let stdout = load.stdout.take().expect("psql stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut text);
        text
    });
    let count = || -> usize {
        pg.psql_local("postgres", "audit", "SELECT count(*) FROM answered")
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count() < 500 {
        assert!(
            Instant::now() < deadline,
            "the load did not start:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill();
    // psql loses its connection and exits, printing what it was answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.try_wait().expect("wait for psql").is_none() {
        assert!(Instant::now() < deadline, "psql did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let printed = reader.join().expect("stdout reader");
    let answered = printed.lines().filter(|line| *line == "INSERT 0 1").count() as u64;
    assert!(
        answered >= 500 && answered < LOAD_ROWS as u64,
        "{answered} answers"
    );

    daemon.restart();
    let listed = daemon.sluice(&["sessions", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let sessions: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    let load_session = sessions
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|session| session["id"].as_u64())
        .max()
        .expect("the load's session");
    let shown = daemon.sluice(&["sessions", "show", &load_session.to_string(), "--json"]);
    assert!(shown.status.success(), "{shown:?}");
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("show JSON");
    let recorded: BTreeSet<u64> = shown["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .filter(|statement| statement["sql"] == "INSERT INTO answered VALUES (?);")
        .filter_map(|statement| statement["seq"].as_u64())
        .collect();
    let missing: Vec<u64> = (1..=answered)
        .filter(|seq| !recorded.contains(seq))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {answered} answered statements are not in session {load_session}, first {:?}; it shows {} statements, the first {:#}",
        missing.len(),
        &missing[..missing.len().min(10)],
        shown["statements"].as_array().map_or(0, Vec::len),
        shown["statements"][0]
    );
    // The answered ones carry their results.
    let results = shown["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .filter(|statement| {
            statement["seq"].as_u64().is_some_and(|seq| seq <= answered)
                && statement["tag"] == "INSERT 0 1"
        })
        .count() as u64;
    assert_eq!(results, answered);
    restart_and_verify(&mut daemon, answered as usize);
}

#[test]
fn after_kill_9_in_batched_mode_only_the_newest_events_are_missing() {
    let (pg, mut daemon) = setup("[store]\ndurability = \"batched\"\nflush_interval_ms = 200\n");
    let (rows, recorded) = load_then_kill_9(&pg, &mut daemon);
    // Whatever was lost is the tail: no row is missing its event while a later one
    // has it, and the store reopens with a whole chain.
    let newest_recorded = recorded.last().copied().unwrap_or(0);
    let holes: Vec<&u64> = rows
        .difference(&recorded)
        .filter(|row| **row < newest_recorded)
        .collect();
    assert!(
        holes.is_empty(),
        "rows without events before event {newest_recorded}: {holes:?}"
    );
    assert!(!recorded.is_empty());
    restart_and_verify(&mut daemon, recorded.len());
}

#[test]
fn retention_by_size_drops_old_events_records_it_and_verify_passes() {
    let (pg, mut daemon) = setup("[store]\nmax_bytes = 1073741824\n");
    let mut script = String::from("CREATE TABLE filler (id int);\n");
    for id in 0..200 {
        script.push_str(&format!("INSERT INTO filler VALUES ({id});\n"));
    }
    let output = psql(&daemon, &pg).stdin(script.into_bytes()).output();
    assert!(output.status.success(), "{output:?}");
    stop(&mut daemon);
    let before = read_events(&store_dir(&daemon));
    assert!(before.len() > 400, "{} events", before.len());

    let config = std::fs::read_to_string(&daemon.config_path).expect("read config");
    assert!(config.contains("max_bytes = 1073741824"), "{config}");
    std::fs::write(
        &daemon.config_path,
        config.replace("max_bytes = 1073741824", "max_bytes = 16384"),
    )
    .expect("write config");
    daemon.restart();

    // Retention runs at start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (output, report) = verify(&daemon, &[]);
        assert!(output.status.success(), "{report:#}\n{}", daemon.log());
        if report["dropped_before"].as_u64().unwrap_or(0) > 0 {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dropped: {report:#}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["chain_break"], Value::Null);
    let dropped_before = report["dropped_before"].as_u64().expect("dropped_before");
    assert_eq!(
        report["first_seq"].as_u64(),
        Some(dropped_before + 1),
        "{report:#}"
    );
    stop(&mut daemon);

    let after = read_events(&store_dir(&daemon));
    assert_eq!(after.first().map(|(seq, _)| *seq), Some(dropped_before + 1));
    let retention = after
        .iter()
        .find(|(_, e)| activity_type(e) == "retention")
        .map(|(_, e)| e)
        .expect("a retention event");
    assert_eq!(retention["activity"]["reason"], "size");
    assert_eq!(retention["activity"]["first_dropped_seq"], 1);
    assert_eq!(retention["activity"]["last_dropped_seq"], dropped_before);
    // What the pass kept is within the limit (events appended since are not counted).
    let retention_seq = after
        .iter()
        .find(|(_, e)| activity_type(e) == "retention")
        .map(|(seq, _)| *seq)
        .expect("retention seq");
    // The log is cut whole segments at a time: what it keeps before the retention
    // event's record is within the limit.
    let kept_bytes: usize = log_records(&store_dir(&daemon))
        .iter()
        .take_while(|record| !record.events.iter().any(|(seq, _)| *seq == retention_seq))
        .map(|record| FRAME_HEADER + record.len)
        .sum();
    assert!(kept_bytes <= 16384, "{kept_bytes} bytes of log kept");
    let (output, report) = verify(&daemon, &[]);
    assert!(output.status.success(), "{report:#}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs: {status}");
        Self { dir }
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(self.dir.path().join("filler")).expect("filler");
        let chunk = vec![0xa5_u8; 64 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_new_sessions_and_the_daemon_keeps_running() {
    let state = Tmpfs::mount("32m");
    let pg = PgServer::start();
    pg.create_role(AGENT, PASSWORD);
    pg.create_database("audit", AGENT);
    let mut daemon = TestDaemon::start_with_config(
        &pg.policy(&[AGENT], &[Rule::allow(AGENT, &["*"])]),
        "",
        &format!(
            "[daemon]\nstate_dir = {:?}\n",
            state.dir.path().join("state")
        ),
    );
    let output = psql(&daemon, &pg).args(["-c", "SELECT 1"]).output();
    assert!(output.status.success(), "{output:?}");

    state.fill();
    let mark = pg.server_log().len();
    let output = psql(&daemon, &pg)
        .args(["-c", "SELECT 'after the disk filled'"])
        .output();
    assert!(
        !output.status.success(),
        "a session ran unrecorded: {output:?}"
    );
    let server_log = pg.server_log_since(mark);
    assert!(
        !server_log.contains("after the disk filled"),
        "the statement reached the server:\n{server_log}"
    );
    assert!(
        PgServer::tcp_connections_in(&server_log).is_empty(),
        "the server was dialled:\n{server_log}"
    );
    let log = daemon.log();
    assert!(
        log.contains("cannot record the session: refusing it"),
        "no clear message in the daemon's log:\n{log}"
    );
    // Still running and answering.
    let status = daemon.sluice(&["status", "--json"]);
    assert!(status.status.success(), "{status:?}\n{log}");
    daemon.kill();
}
