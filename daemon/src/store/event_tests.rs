//! The event log against real sled databases: chain, verify, retention, durability.

use std::time::Duration;

use tempfile::TempDir;

use super::{
    events::{
        ChainBreak, EventLogState, GENESIS_HASH, HEAD_FILE, chain_hash, encode_value, split_value,
        to_hex, verify_dir,
    },
    *,
};
use crate::events::{Activity, Context, Event};

fn options() -> StoreOptions {
    StoreOptions {
        flush_interval: Duration::from_millis(20),
        queue_capacity: 64,
        audit_durability: Durability::Durable,
    }
}

fn daemon_event(change: &str) -> Event {
    Event::now(
        Context::default(),
        Activity::Daemon {
            change: change.into(),
            version: "test".into(),
        },
    )
}

fn dns_event(name: &str) -> Event {
    Event::now(
        Context {
            agent: Some("agent-a".into()),
            pid: Some(42),
            ..Context::default()
        },
        Activity::Dns {
            name: name.into(),
            query_type: "A".into(),
            rcode: "NOERROR".into(),
            answers: vec!["127.0.0.2".into()],
        },
    )
}

/// Rewrites one stored event in the closed store's log files, keeping the log's
/// checksums valid.
fn rewrite_event(dir: &std::path::Path, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut edit = Some(edit);
    super::log::tamper_events(dir, |at, value| {
        if at == seq
            && let (Some(value), Some(edit)) = (value.as_mut(), edit.take())
        {
            edit(value);
        }
    });
}

/// Removes one stored event from the closed store's log files.
fn remove_event(dir: &std::path::Path, seq: u64) {
    super::log::tamper_events(dir, |at, value| {
        if at == seq {
            *value = None;
        }
    });
}

/// The first break the offline `verify` reports (the test expects one).
fn first_offline_break(dir: &std::path::Path) -> ChainBreak {
    verify_dir(dir)
        .expect("verify")
        .chain_break
        .expect("a break")
}

/// The first break `verify` reports on a live store (the test expects one).
fn first_break(store: &Store) -> ChainBreak {
    store
        .verify_events()
        .expect("verify")
        .chain_break
        .expect("a break")
}

#[tokio::test]
async fn appends_are_numbered_and_chained_across_restarts() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    assert_eq!(
        store
            .append(daemon_event("started"), Durability::Durable)
            .await
            .expect("append"),
        1
    );
    assert_eq!(
        store
            .append(dns_event("a.example"), Durability::Batched)
            .await
            .expect("append"),
        2
    );
    store.flush().await.expect("flush");
    drop(store);

    let store = Store::open(dir.path(), options()).expect("reopen");
    assert_eq!(
        store
            .append(daemon_event("stopped"), Durability::Durable)
            .await
            .expect("append"),
        3
    );
    let events = store.events_after(0, 10).expect("read");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[0].prev_hash, to_hex(&GENESIS_HASH));
    assert_eq!(events[1].prev_hash, events[0].hash);
    assert_eq!(events[2].prev_hash, events[1].hash);
    assert_eq!(events[1].event.activity.type_name(), "dns");
    assert_eq!(store.events_after(1, 1).expect("read")[0].seq, 2);
    assert!(store.events_after(3, 10).expect("read").is_empty());
    let report = store.verify_events().expect("verify");
    assert_eq!(report.chain_break, None);
    assert_eq!(
        (report.first_seq, report.last_seq, report.events),
        (Some(1), Some(3), 3)
    );
}

#[tokio::test]
async fn subscribers_see_the_flushed_seq() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    let mut durable = store.subscribe_events();
    assert_eq!(*durable.borrow_and_update(), 0);
    let seq = store
        .append(dns_event("b.example"), Durability::Batched)
        .await
        .expect("append");
    tokio::time::timeout(
        Duration::from_secs(5),
        durable.wait_for(|flushed| *flushed >= seq),
    )
    .await
    .expect("flushed within the interval")
    .expect("writer alive");
    assert_eq!(store.events_after(0, 10).expect("read").len(), 1);
}

#[tokio::test]
async fn events_written_with_a_record_share_its_commit() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    let record = SessionRecord::refused(7, "test", "because");
    store
        .put_session_with_events(&record, &[dns_event("c.example")], Durability::Durable)
        .await
        .expect("put");
    assert!(store.get_session(7).expect("read").is_some());
    assert_eq!(store.events_after(0, 10).expect("read").len(), 1);
}

#[tokio::test]
async fn verify_reports_the_first_break_exactly() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    for index in 0..5 {
        store
            .append(
                dns_event(&format!("host{index}.example")),
                Durability::Durable,
            )
            .await
            .expect("append");
    }
    drop(store);
    // A changed value: the hash no longer matches, online and offline.
    rewrite_event(dir.path(), 3, |value| {
        let at = value.len() - 5;
        value[at] ^= 0x01;
    });
    let store = Store::open(dir.path(), options()).expect("reopen");
    let report = store.verify_events().expect("verify");
    let found = report.chain_break.expect("a break");
    assert_eq!((found.seq, found.kind), (3, BreakKind::HashMismatch));
    assert_eq!(report.events, 2);
    drop(store);
    let found = first_offline_break(dir.path());
    assert_eq!((found.seq, found.kind), (3, BreakKind::HashMismatch));

    // A rewritten event with a recomputed hash: the next one no longer links to it.
    rewrite_event(dir.path(), 3, |value| {
        let (prev, _, json) = split_value(value).expect("split");
        let mut json = json.to_vec();
        let at = json.len() - 5;
        json[at] ^= 0x02;
        *value = encode_value(&prev, &chain_hash(3, &prev, &json), &json);
    });
    let found = first_offline_break(dir.path());
    assert_eq!((found.seq, found.kind), (4, BreakKind::PrevLinkBroken));

    // Garbage: undecodable.
    rewrite_event(dir.path(), 3, |value| *value = b"short".to_vec());
    let found = first_offline_break(dir.path());
    assert_eq!((found.seq, found.kind), (3, BreakKind::Undecodable));

    // A removed event: a gap.
    remove_event(dir.path(), 3);
    let found = first_offline_break(dir.path());
    assert_eq!((found.seq, found.kind), (3, BreakKind::SeqGap));

    // The newest event removed: truncated (the head file names it).
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    for index in 0..3 {
        store
            .append(dns_event(&format!("h{index}")), Durability::Durable)
            .await
            .expect("append");
    }
    drop(store);
    remove_event(dir.path(), 3);
    let found = first_offline_break(dir.path());
    assert_eq!((found.seq, found.kind), (3, BreakKind::Truncated));
}

#[tokio::test]
async fn offline_verify_notices_flushed_events_gone_and_open_refuses() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    for index in 0..4 {
        store
            .append(dns_event(&format!("h{index}")), Durability::Durable)
            .await
            .expect("append");
    }
    drop(store);
    assert_eq!(verify_dir(dir.path()).expect("verify").chain_break, None);
    // The log lost its last two events (a root attacker cut them out, checksums
    // recomputed).
    remove_event(dir.path(), 3);
    remove_event(dir.path(), 4);
    let found = verify_dir(dir.path())
        .expect("verify")
        .chain_break
        .expect("a break");
    assert_eq!((found.seq, found.kind), (3, BreakKind::Truncated));
    assert!(matches!(
        Store::open(dir.path(), options()),
        Err(StoreError::LostEvents {
            flushed_seq: 4,
            stored_seq: 2
        })
    ));
}

#[tokio::test]
async fn retention_by_size_drops_the_oldest_and_keeps_the_chain_verifiable() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    let closed = SessionRecord::refused(1, "test", "old");
    store
        .put_session_with_events(&closed, &[dns_event("old.example")], Durability::Durable)
        .await
        .expect("put");
    // A session that stays open, and the closed one, each with statements in the
    // segment that goes.
    let open = SessionRecord {
        state: SessionState::Open,
        ended_at: None,
        ..SessionRecord::refused(2, "test", "open")
    };
    store
        .put_session(&open, Durability::Durable)
        .await
        .expect("put");
    for (session_id, seq) in [(1, 1), (2, 1), (2, 2)] {
        let record = StatementRecord::begun(
            session_id,
            seq,
            "SELECT ?".into(),
            "read".into(),
            "SELECT".into(),
            DecisionRecord {
                action: "allow".into(),
                rule: "r".into(),
                reason: "allowed".into(),
            },
        );
        store
            .put_statement(&record, Durability::Batched)
            .await
            .expect("statement");
    }
    for index in 0..40 {
        store
            .append(
                dns_event(&format!("host{index}.example")),
                Durability::Batched,
            )
            .await
            .expect("append");
    }
    store.flush().await.expect("flush");
    assert_eq!(store.events_after(0, 100).expect("read").len(), 41);
    let log_bytes = |store: &Store| store.inner.records.lock().log.total_bytes();
    let before = log_bytes(&store);
    let rule = RetentionRule {
        max_age: None,
        max_bytes: Some(before / 2),
    };
    let outcome = store
        .retain(rule)
        .await
        .expect("retain")
        .expect("dropped some");
    assert_eq!(outcome.first_dropped_seq, 1);
    assert_eq!(outcome.reason, "size");
    assert_eq!(outcome.sessions_dropped, 1);
    assert!(store.get_session(1).expect("read").is_none());
    assert_eq!(store.counts().expect("counts").sessions, 1);
    // The open session keeps its statements; the dropped one's went with it.
    assert_eq!(
        store
            .statements(2)
            .expect("statements")
            .iter()
            .map(|statement| statement.seq)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(store.statements(1).expect("statements").is_empty());
    assert_eq!(store.counts().expect("counts").statements, 2);
    assert_eq!(outcome.statements_dropped, 1);
    let after = log_bytes(&store);
    assert!(after <= before / 2, "{after} > {}", before / 2);
    assert_eq!(
        store.inner.records.lock().base.seq,
        outcome.last_dropped_seq
    );
    assert_eq!(
        EventLogState::read(&store.inner.meta)
            .expect("state")
            .base
            .seq,
        outcome.last_dropped_seq
    );

    let first = store.first_event_seq().expect("first").expect("some left");
    assert_eq!(first, outcome.last_dropped_seq + 1);
    let newest = store
        .events_after(outcome.retention_seq - 1, 1)
        .expect("read");
    match &newest[0].event.activity {
        Activity::Retention {
            last_dropped_seq,
            reason,
            ..
        } => {
            assert_eq!(
                (*last_dropped_seq, reason.as_str()),
                (outcome.last_dropped_seq, "size")
            );
        }
        other => panic!("expected a retention event, got {other:?}"),
    }
    let report = store.verify_events().expect("verify");
    assert_eq!(report.chain_break, None);
    assert_eq!(report.first_seq, Some(first));
    assert_eq!(report.dropped_before, outcome.last_dropped_seq);
    // Under the limit now: nothing more to drop.
    assert_eq!(store.retain(rule).await.expect("retain"), None);

    // Deleting the retention event is noticed even with the chain relinked around it.
    drop(store);
    assert_eq!(verify_dir(dir.path()).expect("verify").chain_break, None);
}

#[tokio::test]
async fn retention_by_age_drops_only_old_events() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    let mut old = dns_event("old.example");
    old.time -= time::Duration::days(10);
    store
        .append(old, Durability::Durable)
        .await
        .expect("append");
    // Retention drops whole segments of the log: the old event's is sealed.
    seal(&store);
    store
        .append(dns_event("new.example"), Durability::Durable)
        .await
        .expect("append");
    let rule = RetentionRule {
        max_age: Some(Duration::from_secs(86_400)),
        max_bytes: None,
    };
    let outcome = store.retain(rule).await.expect("retain").expect("dropped");
    assert_eq!(
        (
            outcome.first_dropped_seq,
            outcome.last_dropped_seq,
            outcome.reason
        ),
        (1, 1, "age")
    );
    assert_eq!(store.first_event_seq().expect("first"), Some(2));
    assert_eq!(store.verify_events().expect("verify").chain_break, None);
}

#[tokio::test]
async fn a_removed_retention_record_is_a_break() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    for index in 0..4 {
        let mut event = dns_event(&format!("h{index}"));
        event.time -= time::Duration::days(10 - index);
        store
            .append(event, Durability::Durable)
            .await
            .expect("append");
        seal(&store);
    }
    let rule = RetentionRule {
        max_age: Some(Duration::from_secs(86_400 * 8 + 43_200)),
        max_bytes: None,
    };
    let outcome = store.retain(rule).await.expect("retain").expect("dropped");
    assert_eq!(outcome.last_dropped_seq, 2);
    // The retention event (seq 5) is the head: drop it, and the head file with it.
    drop(store);
    remove_event(dir.path(), 5);
    std::fs::remove_file(dir.path().join(HEAD_FILE)).expect("remove events.head");
    let found = first_offline_break(dir.path());
    assert_eq!(
        (found.seq, found.kind),
        (2, BreakKind::MissingRetentionRecord)
    );
    let found = first_break(&Store::open(dir.path(), options()).expect("reopen"));
    assert_eq!(
        (found.seq, found.kind),
        (2, BreakKind::MissingRetentionRecord)
    );
}

/// Seals the log's active segment (the writer is idle between awaited appends).
fn seal(store: &Store) {
    store.inner.records.lock().log.seal().expect("seal");
}

#[tokio::test]
async fn batched_append_all_stays_staged_and_is_flushed_within_the_interval() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            flush_interval: Duration::from_secs(2),
            ..options()
        },
    )
    .expect("open");
    let mut durable = store.subscribe_events();
    let commits = store.stats().commits;
    for round in 0..10 {
        let queued = store
            .append_all(
                vec![dns_event(&format!("{round}.example")), daemon_event("x")],
                Durability::Batched,
            )
            .await
            .expect("append_all");
        assert_eq!(queued, None, "batched append_all does not wait");
    }
    // Nobody waits on them: they are not committed one by one (as a batched `append`
    // is), but together once the oldest is due.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.stats().commits, commits, "still staged");
    tokio::time::timeout(
        Duration::from_secs(10),
        durable.wait_for(|flushed| *flushed >= 20),
    )
    .await
    .expect("flushed within the interval")
    .expect("writer alive");
    assert!(store.stats().commits - commits <= 2);
    let events = store.events_after(0, 100).expect("read");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(store.verify_events().expect("verify").chain_break, None);
}
