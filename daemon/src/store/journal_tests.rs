//! The journal in front of sled: durable writes wait for one journal sync (shared by a
//! group), and a store whose sled never flushed them gets them back from the journal.
//!
//! As in `tests.rs`, a crash is a copy of the store's files taken while it runs.

use std::{path::Path, time::Duration};

use time::macros::datetime;

use super::{
    events::verify_dir,
    journal::{JOURNAL_DIR, SEGMENT_BYTES},
    log::LOG_DIR,
    *,
};
use crate::events::{Activity, Context, Event};

/// sled flushes only when told: what a copy holds past that came from the journal.
fn options(durability: Durability) -> StoreOptions {
    StoreOptions {
        flush_interval: Duration::from_secs(3600),
        queue_capacity: 256,
        audit_durability: durability,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn crash_copy(store: &Store, scratch: &Path, name: &str) -> std::path::PathBuf {
    let copy = scratch.join(name);
    copy_dir(store.path(), &copy);
    copy
}

fn session(id: u64) -> SessionRecord {
    SessionRecord {
        agent: "agent-a".into(),
        destination: "127.0.0.1:5432".into(),
        state: SessionState::Open,
        ended_at: None,
        close_reason: None,
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "r".into(),
            reason: "allowed".into(),
        },
        started_at: datetime!(2025-01-02 03:04:05 UTC),
        ..SessionRecord::refused(id, "r", "allowed")
    }
}

fn statement(session_id: u64, seq: u64) -> StatementRecord {
    StatementRecord {
        started_at: datetime!(2025-01-02 03:04:05 UTC),
        ..StatementRecord::begun(
            session_id,
            seq,
            format!("INSERT INTO load VALUES (?) -- {seq}"),
            "write".into(),
            "INSERT".into(),
            DecisionRecord {
                action: "allow".into(),
                rule: "r".into(),
                reason: "allowed".into(),
            },
        )
    }
}

fn statement_event(record: &StatementRecord) -> Event {
    Event::now(
        Context {
            session_id: Some(record.session_id),
            ..Context::default()
        },
        Activity::statement(record),
    )
}

/// The record log's segment files.
fn segments(store: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(store.join(LOG_DIR))
        .expect("log dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn durable_events_survive_a_crash_that_sled_never_flushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    store
        .put_session(&session(1), Durability::Durable)
        .await
        .expect("session");
    for seq in 1..=20 {
        let record = statement(1, seq);
        store
            .append(statement_event(&record), Durability::Durable)
            .await
            .expect("durable event");
        store
            .put_statement_with_events(&record, &[], Durability::Batched)
            .await
            .expect("record");
    }
    let stats = store.stats();
    assert_eq!(
        stats.flushes, 21,
        "one journal sync per durable write: {stats:?}"
    );
    let copy = crash_copy(&store, dir.path(), "crash");

    let report = verify_dir(&copy).expect("offline verify applies the journal");
    assert_eq!(report.chain_break, None, "{report:?}");
    assert_eq!(report.last_seq, Some(20));
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    let events = crashed.events_after(0, 100).expect("events");
    assert_eq!(events.len(), 20);
    for (seq, stored) in (1..).zip(&events) {
        assert!(
            matches!(stored.event.activity, Activity::Statement { statement_seq, .. } if statement_seq == seq),
            "{stored:?}"
        );
    }
    assert_eq!(crashed.get_session(1).expect("get"), Some(session(1)));
    // Every record written before the last durable write went with its group.
    assert_eq!(crashed.statements(1).expect("statements").len(), 19);
    assert_eq!(crashed.counts().expect("counts").statements, 19);
    assert_eq!(crashed.verify_events().expect("verify").chain_break, None);
}

#[tokio::test]
async fn a_committed_result_survives_the_daemons_death_without_a_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    store
        .put_session(&session(3), Durability::Durable)
        .await
        .expect("session");
    let syncs = store.stats().flushes;
    let record = statement(3, 1);
    let result = Event::now(Context::default(), Activity::statement_result(&record));
    store
        .put_statement_with_events_committed(&record, &[result])
        .await
        .expect("committed");
    // Journaled (the page cache survives a killed process), not synced.
    assert_eq!(store.stats().flushes, syncs);
    let copy = crash_copy(&store, dir.path(), "crash");
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    assert_eq!(crashed.statements(3).expect("statements"), vec![record]);
    assert_eq!(crashed.events_after(0, 10).expect("events").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_durable_writers_share_journal_syncs() {
    const SESSIONS: u64 = 16;
    const STATEMENTS: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    let tasks: Vec<_> = (1..=SESSIONS)
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                store.put_session(&session(id), Durability::Durable).await?;
                for seq in 1..=STATEMENTS {
                    let record = statement(id, seq);
                    store
                        .append_all(vec![statement_event(&record)], Durability::Durable)
                        .await?;
                    store
                        .put_statement_with_events_committed(&record, &[])
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("writes");
    }
    let stats = store.stats();
    let durable_writes = SESSIONS * (STATEMENTS + 1);
    assert!(
        stats.flushes < durable_writes,
        "no sync was shared: {stats:?}"
    );
    let copy = crash_copy(&store, dir.path(), "crash");
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    assert_eq!(
        crashed.counts().expect("counts").statements,
        SESSIONS * STATEMENTS
    );
    for id in 1..=SESSIONS {
        assert_eq!(
            crashed.statements(id).expect("statements").len() as u64,
            STATEMENTS
        );
    }
    assert_eq!(crashed.verify_events().expect("verify").chain_break, None);
}

#[tokio::test]
async fn a_torn_journal_tail_is_cut_and_the_rest_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    for id in 1..=5 {
        store
            .put_session(&session(id), Durability::Durable)
            .await
            .expect("session");
    }
    let copy = crash_copy(&store, dir.path(), "crash");
    // Half a sixth group, as a crash mid-write (or a power cut before its sync)
    // leaves it.
    let last = segments(&copy).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 1, 2, 3, 4, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    std::fs::write(&last, &bytes).expect("write");

    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    let ids: Vec<u64> = crashed
        .list_sessions(&SessionFilter::default())
        .expect("list")
        .iter()
        .map(|record| record.id)
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(
        std::fs::metadata(&last).expect("meta").len() as usize,
        whole
    );
    // Writing carries on after the last whole group.
    crashed
        .put_session(&session(6), Durability::Durable)
        .await
        .expect("after recovery");
}

#[tokio::test]
async fn a_damaged_journal_group_fails_the_open_instead_of_losing_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    for id in 1..=5 {
        store
            .put_session(&session(id), Durability::Durable)
            .await
            .expect("session");
    }
    let copy = crash_copy(&store, dir.path(), "crash");
    let last = segments(&copy).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    // Inside the first group: whole groups follow it.
    bytes[30] ^= 0x20;
    std::fs::write(&last, &bytes).expect("write");
    match Store::open(&copy, options(Durability::Durable)) {
        Err(StoreError::Journal(reason)) => assert!(reason.contains("corrupt"), "{reason}"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a store whose journal lost a durable group opened"),
    }
}

#[tokio::test]
async fn statements_and_events_stay_in_the_log_across_segments_and_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, options(Durability::Durable)).expect("open");
    store
        .put_session(&session(1), Durability::Durable)
        .await
        .expect("session");
    // Enough statement text for a few segments.
    let big = "x".repeat(60_000);
    let mut seq = 0;
    let mut logged = 0;
    while logged < 3 * SEGMENT_BYTES as usize {
        seq += 1;
        let record = StatementRecord {
            sql: big.clone(),
            ..statement(1, seq)
        };
        let event = statement_event(&record);
        store
            .put_statement_with_events_committed(&record, &[event])
            .await
            .expect("put");
        logged += 2 * big.len();
    }
    assert!(segments(&path).len() >= 3, "{:?}", segments(&path));
    store.flush().await.expect("flush");
    // The log is where they live: flushing sled removes nothing.
    assert!(segments(&path).len() >= 3, "{:?}", segments(&path));
    // Events are found by seq in any segment, through the sparse marks.
    for first in [1, seq / 2, seq] {
        let found = store.events_after(first - 1, 2).expect("events");
        assert_eq!(found[0].seq, first);
        assert!(found.len() <= 2);
    }
    drop(store);
    let reopened = Store::open(&path, options(Durability::Durable)).expect("reopen");
    let statements = reopened.statements(1).expect("statements");
    assert_eq!(statements.len() as u64, seq);
    assert!(
        statements
            .iter()
            .zip(1..)
            .all(|(statement, n)| statement.seq == n)
    );
    assert_eq!(reopened.counts().expect("counts").statements, seq);
    assert_eq!(reopened.events_after(seq - 3, 10).expect("events").len(), 3);
    assert_eq!(reopened.verify_events().expect("verify").chain_break, None);
}

/// A store written before statements and events moved to the log: sled's trees hold
/// them, and its journal holds a group sled never applied.
#[tokio::test]
async fn an_older_store_is_migrated_into_the_log() {
    use super::{
        events::{EVENT_LOG_KEY, EVENTS_TREE, EventLogState, chain_hash, encode_value},
        journal::{JOURNAL_APPLIED_KEY, push_event, push_statement},
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut head = events::ChainLink::GENESIS;
    let event_value = |head: &mut events::ChainLink, seq: u64| {
        let record = statement(1, seq);
        let json = serde_json::to_vec(&statement_event(&record)).expect("json");
        let hash = chain_hash(seq, &head.hash, &json);
        let value = encode_value(&head.hash, &hash, &json);
        *head = events::ChainLink { seq, hash };
        value
    };
    {
        let db = sled::open(&path).expect("sled");
        let sessions = db.open_tree(SESSIONS_TREE).expect("tree");
        let statements = db.open_tree(STATEMENTS_TREE).expect("tree");
        let events = db.open_tree(EVENTS_TREE).expect("tree");
        let meta = db.open_tree(META_TREE).expect("tree");
        sessions
            .insert(session_key(1), encode_record(&session(1)).expect("encode"))
            .expect("insert");
        for seq in 1..=3 {
            statements
                .insert(
                    statement_key(1, seq),
                    encode_statement(&statement(1, seq)).expect("encode"),
                )
                .expect("insert");
            events
                .insert(seq.to_be_bytes(), event_value(&mut head, seq))
                .expect("insert");
        }
        let state = EventLogState {
            head,
            events: 3,
            ..EventLogState::default()
        };
        meta.insert(EVENT_LOG_KEY, state.encode().expect("encode"))
            .expect("insert");
        meta.insert(JOURNAL_APPLIED_KEY, &5u64.to_be_bytes()[..])
            .expect("insert");
        db.flush().expect("flush");
        // The journal's group 6: statement 4 and its event, never applied to sled.
        let (mut journal, _) =
            segment::SegmentLog::open(&path.join(JOURNAL_DIR), SEGMENT_BYTES, 6).expect("journal");
        let mut payload = Vec::new();
        push_statement(
            &mut payload,
            &statement_key(1, 4),
            &encode_statement(&statement(1, 4)).expect("encode"),
        );
        push_event(&mut payload, 4, &event_value(&mut head, 4));
        assert_eq!(journal.append(&payload).expect("append"), 6);
        journal.sync().expect("sync");
    }
    let report = verify_dir(&path).expect("offline verify migrates");
    assert_eq!(report.chain_break, None, "{report:?}");
    assert_eq!(report.last_seq, Some(4));
    let store = Store::open(&path, options(Durability::Durable)).expect("open");
    assert!(!path.join(JOURNAL_DIR).exists(), "the old journal is gone");
    assert_eq!(
        store
            .statements(1)
            .expect("statements")
            .iter()
            .map(|statement| statement.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(store.counts().expect("counts").statements, 4);
    assert_eq!(store.events_after(0, 10).expect("events").len(), 4);
    // New events continue the migrated chain.
    store
        .append(statement_event(&statement(1, 5)), Durability::Durable)
        .await
        .expect("append");
    assert_eq!(store.verify_events().expect("verify").chain_break, None);
    drop(store);
    let db = sled::open(&path).expect("sled");
    assert!(db.open_tree(EVENTS_TREE).expect("tree").is_empty());
    assert!(db.open_tree(STATEMENTS_TREE).expect("tree").is_empty());
}
