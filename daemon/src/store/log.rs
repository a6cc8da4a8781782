//! The record log: statements and audit events live only here, in the store's own
//! append-only segment log (`log/` in the store, see `segment.rs`), not in sled.
//!
//! Each group commit of the writer is one log record (see `journal.rs` for the
//! payload: the group's session, statement and event entries, events with their seq,
//! prev hash and hash). sled keeps sessions (with counts, grants, recordings and the
//! store's bookkeeping): a group that holds sessions is applied to sled after it is
//! logged, and sled records (`meta` `log_applied`) the newest LSN it applied, so the
//! groups a crash kept from sled are replayed into it at open. Statements and events
//! cost one `write` of their group and no sled insert.
//!
//! # Finding records
//!
//! [`LogIndex`] is built at open by reading the log once, and kept up to date by the
//! writer:
//! * per session with statements: the segments that hold them and its statement seqs
//!   (as runs), so a session's statements are read from its segments only, and a
//!   rewrite of a statement is told from a new one (counts);
//! * sparse event marks (`(lsn, first event seq at or after it)`, one per 64 KiB of
//!   log), so `events_after(seq)` starts reading near the event, through the
//!   segment's own sparse index of offsets;
//! * the newest event (the chain's head) and the oldest kept.
//!
//! A session's statements are the last write of each `(session, seq)` in log order.
//!
//! # Upgrade
//!
//! A store written before the log held statements and events (no `meta` `log_format`)
//! is migrated at its first open: its journal (`journal/`) is replayed into sled as
//! before, sled's `events` and `statements` trees are copied into the log (events in
//! seq order, with their stored hashes, so the chain verifies unchanged), then
//! `log_format` is set and the two trees are emptied. A crash during the migration
//! leaves `log_format` unset and the trees whole: the next open starts it again.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
};

use sled::Transactional;

use super::{
    COUNTS_KEY, LAST_SESSION_ID_KEY, StatementRecord, StoreCounts, StoreError, decode_session_key,
    decode_statement,
    events::{ChainLink, EventLogState, decode_stored, split_value},
    journal::{self, Entry, SEGMENT_BYTES, entries, push_event, push_statement},
    segment::{LogError, SegmentLog, Span, scan_span},
    writer::RecordSummary,
};
use crate::events::StoredEvent;

/// The log's directory inside the store.
pub(super) const LOG_DIR: &str = "log";
/// `meta` key: the newest log LSN whose sessions sled holds, `u64` big-endian.
pub(super) const LOG_APPLIED_KEY: &[u8] = b"log_applied";
/// `meta` key: present once statements and events live in the log (its version).
pub(super) const LOG_FORMAT_KEY: &[u8] = b"log_format";
/// `meta` key: the newest LSN retention removed (segments at or below it are gone).
pub(super) const LOG_DROPPED_KEY: &[u8] = b"log_dropped_through";
/// A sparse event mark per this many bytes of log.
const MARK_EVERY: u64 = 64 * 1024;
/// Groups written by the migration are cut at about this size.
const MIGRATION_GROUP_BYTES: usize = 1024 * 1024;

pub(super) fn log_error(error: LogError) -> StoreError {
    StoreError::Journal(error.to_string())
}

/// One session's statements in the log.
#[derive(Default)]
struct SessionStatements {
    /// The stored seqs, as sorted, disjoint, non-adjacent inclusive runs.
    runs: Vec<(u64, u64)>,
    /// First LSNs of the segments holding them, ascending.
    segments: Vec<u64>,
}

impl SessionStatements {
    /// Notes `seq` stored; `true` when it was not before.
    fn insert(&mut self, seq: u64) -> bool {
        let runs = &mut self.runs;
        let at = runs.partition_point(|&(_, end)| end.saturating_add(1) < seq);
        if let Some(&(start, end)) = runs.get(at) {
            if start <= seq && seq <= end {
                return false;
            }
            if end.saturating_add(1) == seq {
                runs[at].1 = seq;
                if let Some(&(next_start, next_end)) = runs.get(at + 1)
                    && next_start == seq.saturating_add(1)
                {
                    runs[at].1 = next_end;
                    runs.remove(at + 1);
                }
                return true;
            }
            if seq.saturating_add(1) == start {
                runs[at].0 = seq;
                return true;
            }
        }
        runs.insert(at, (seq, seq));
        true
    }
}

/// What the log holds, in memory (see the module docs).
#[derive(Default)]
pub(super) struct LogIndex {
    sessions: HashMap<u64, SessionStatements>,
    /// Distinct statements stored.
    pub statements: u64,
    /// `(lsn, seq)`: every event at or after record `lsn` has a seq of `seq` or more.
    marks: Vec<(u64, u64)>,
    bytes_since_mark: u64,
    /// The oldest event kept.
    pub first_event: Option<u64>,
    /// The newest event logged ([`ChainLink::GENESIS`] when none).
    pub head: Option<ChainLink>,
}

/// What noting one group changed.
#[derive(Default)]
pub(super) struct Noted {
    pub new_statements: u64,
}

impl LogIndex {
    /// Notes group `lsn` (in the segment starting at `segment_first`).
    pub fn note(&mut self, lsn: u64, segment_first: u64, payload: &[u8]) -> Result<Noted, String> {
        let mut noted = Noted::default();
        if self.marks.is_empty() || self.bytes_since_mark >= MARK_EVERY {
            let next = self.head.map_or(1, |head| head.seq + 1);
            self.marks.push((lsn, next));
            self.bytes_since_mark = 0;
        }
        self.bytes_since_mark += payload.len() as u64;
        for entry in entries(payload)? {
            match entry {
                Entry::Statement { key, .. } => {
                    let (session_id, seq) = split_key(&key);
                    let session = self.sessions.entry(session_id).or_default();
                    if session.segments.last() != Some(&segment_first) {
                        session.segments.push(segment_first);
                    }
                    if session.insert(seq) {
                        self.statements += 1;
                        noted.new_statements += 1;
                    }
                }
                Entry::Event { seq, value } => {
                    // A value too short to be an event is `verify`'s to report.
                    let hash = split_value(value).map_or([0; 32], |(_, hash, _)| hash);
                    self.first_event.get_or_insert(seq);
                    self.head = Some(ChainLink { seq, hash });
                }
                Entry::Session { .. } => {}
            }
        }
        Ok(noted)
    }

    /// The LSN to start reading at to find event `seq`.
    fn start_for_event(&self, seq: u64) -> u64 {
        let at = self.marks.partition_point(|&(_, next)| next <= seq);
        match at {
            0 => 0,
            at => self.marks[at - 1].0,
        }
    }
}

/// A statement retention carries forward: its key (session id, seq) and value.
pub(super) type CarriedStatement = ([u8; 16], Vec<u8>);

fn split_key(key: &[u8; 16]) -> (u64, u64) {
    let mut session = [0; 8];
    let mut seq = [0; 8];
    session.copy_from_slice(&key[..8]);
    seq.copy_from_slice(&key[8..]);
    (u64::from_be_bytes(session), u64::from_be_bytes(seq))
}

/// The log and its index, shared by the writer (which appends) and readers (which
/// take a snapshot of where to read and read the files without holding it).
pub(super) struct LogShared {
    inner: Mutex<LogInner>,
}

pub(super) struct LogInner {
    pub log: SegmentLog,
    pub index: LogIndex,
    /// The last event retention dropped: the oldest kept event links to it.
    pub base: ChainLink,
}

impl LogShared {
    pub fn new(inner: LogInner) -> Self {
        Self {
            inner: Mutex::new(inner),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every stored statement of `session_id`, in seq order.
    pub fn statements(&self, session_id: u64) -> Result<Vec<StatementRecord>, StoreError> {
        let spans: Vec<Span> = {
            let inner = self.lock();
            let Some(session) = inner.index.sessions.get(&session_id) else {
                return Ok(Vec::new());
            };
            session
                .segments
                .iter()
                .filter_map(|first| inner.log.segment_span(*first))
                .collect()
        };
        let mut found: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let wanted = session_id.to_be_bytes();
        for span in &spans {
            scan_span(span, 0, |lsn, payload| {
                for entry in entries(payload).map_err(|reason| corrupt_group(span, lsn, reason))? {
                    if let Entry::Statement { key, value } = entry
                        && key[..8] == wanted
                    {
                        found.insert(split_key(&key).1, value.to_vec());
                    }
                }
                Ok(true)
            })
            .map_err(log_error)?;
        }
        found
            .into_iter()
            .map(|(seq, value)| decode_statement(session_id, seq, &value))
            .collect()
    }

    /// Up to `limit` events numbered `first..=last`, oldest first.
    pub fn events(
        &self,
        first: u64,
        last: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut found = Vec::new();
        if first > last || limit == 0 {
            return Ok(found);
        }
        let spans = {
            let inner = self.lock();
            inner.log.spans_from(inner.index.start_for_event(first))
        };
        let mut error = None;
        for span in &spans {
            let more = scan_span(span, 0, |lsn, payload| {
                for entry in entries(payload).map_err(|reason| corrupt_group(span, lsn, reason))? {
                    if let Entry::Event { seq, value } = entry {
                        if seq < first {
                            continue;
                        }
                        if seq > last || found.len() >= limit {
                            return Ok(false);
                        }
                        match decode_stored(seq, value) {
                            Ok(event) => found.push(event),
                            Err(decode) => {
                                error = Some(decode);
                                return Ok(false);
                            }
                        }
                    }
                }
                Ok(true)
            })
            .map_err(log_error)?;
            if !more {
                break;
            }
        }
        match error {
            Some(error) => Err(error),
            None => Ok(found),
        }
    }

    /// The statements in the segments up to LSN `dropped_through` (which retention is
    /// about to remove) of sessions not in `removed`, with no later write in a kept
    /// segment: what retention carries forward, so that a session that stays keeps its
    /// statements. The last write of each key wins.
    pub fn carried_statements(
        &self,
        dropped_through: u64,
        removed: &std::collections::HashSet<u64>,
    ) -> Result<Vec<CarriedStatement>, StoreError> {
        let (dropped, sessions): (Vec<Span>, HashMap<u64, Vec<u64>>) = {
            let inner = self.lock();
            let dropped = inner
                .log
                .spans_from(0)
                .into_iter()
                .filter(|span| span.last_lsn <= dropped_through)
                .collect();
            let sessions = inner
                .index
                .sessions
                .iter()
                .filter(|(id, _)| !removed.contains(id))
                .map(|(id, session)| (*id, session.segments.clone()))
                .collect();
            (dropped, sessions)
        };
        let mut carried: BTreeMap<[u8; 16], Vec<u8>> = BTreeMap::new();
        for span in &dropped {
            scan_span(span, 0, |lsn, payload| {
                for entry in entries(payload).map_err(|reason| corrupt_group(span, lsn, reason))? {
                    if let Entry::Statement { key, value } = entry
                        && !removed.contains(&split_key(&key).0)
                    {
                        carried.insert(key, value.to_vec());
                    }
                }
                Ok(true)
            })
            .map_err(log_error)?;
        }
        // A later write of the same statement in a segment that stays wins.
        let mut kept_segments: Vec<u64> = carried
            .keys()
            .filter_map(|key| sessions.get(&split_key(key).0))
            .flatten()
            .copied()
            .filter(|first| *first > dropped_through)
            .collect();
        kept_segments.sort_unstable();
        kept_segments.dedup();
        let spans: Vec<Span> = {
            let inner = self.lock();
            kept_segments
                .iter()
                .filter_map(|first| inner.log.segment_span(*first))
                .collect()
        };
        for span in &spans {
            scan_span(span, 0, |lsn, payload| {
                for entry in entries(payload).map_err(|reason| corrupt_group(span, lsn, reason))? {
                    if let Entry::Statement { key, .. } = entry {
                        carried.remove(&key);
                    }
                }
                Ok(true)
            })
            .map_err(log_error)?;
        }
        Ok(carried.into_iter().collect())
    }

    /// Hands every event logged, oldest first, to `visit` until it returns `false`.
    pub fn walk_events(&self, mut visit: impl FnMut(u64, &[u8]) -> bool) -> Result<(), StoreError> {
        let spans = self.lock().log.spans_from(0);
        for span in &spans {
            let more = scan_span(span, 0, |lsn, payload| {
                for entry in entries(payload).map_err(|reason| corrupt_group(span, lsn, reason))? {
                    if let Entry::Event { seq, value } = entry
                        && !visit(seq, value)
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .map_err(log_error)?;
            if !more {
                break;
            }
        }
        Ok(())
    }
}

fn corrupt_group(span: &Span, lsn: u64, reason: String) -> LogError {
    LogError::Corrupt {
        path: span.path.clone(),
        offset: 0,
        reason: format!("record {lsn}: {reason}"),
    }
}

/// The sled side of the store, as the log needs it at open.
pub(super) struct Trees<'a> {
    pub db: &'a sled::Db,
    pub sessions: &'a sled::Tree,
    pub meta: &'a sled::Tree,
}

/// Opens the log in `dir` (migrating an older store first), builds its index and
/// replays into sled the sessions of every group it has not applied.
pub(super) fn open(dir: &Path, trees: &Trees<'_>) -> Result<LogInner, StoreError> {
    if trees
        .meta
        .get(LOG_FORMAT_KEY)
        .map_err(StoreError::Read)?
        .is_none()
    {
        migrate(dir, trees)?;
    } else {
        remove_leftovers(dir, trees)?;
    }
    let (mut log, recovery) =
        SegmentLog::open(&dir.join(LOG_DIR), SEGMENT_BYTES, 1).map_err(log_error)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "store log: a torn tail (a group never made durable) was cut off"
        );
    }
    // A retention pass that ended before its files were removed.
    let dropped = read_u64(trees.meta, LOG_DROPPED_KEY)?;
    if dropped > 0 {
        log.remove_through(dropped).map_err(log_error)?;
    }
    let applied = read_u64(trees.meta, LOG_APPLIED_KEY)?;
    let state = EventLogState::read(trees.meta)?;
    let mut index = LogIndex::default();
    let mut replayed = 0u64;
    for span in log.spans_from(0) {
        scan_span(&span, 0, |lsn, payload| {
            index
                .note(lsn, span.segment_first_lsn, payload)
                .map_err(|reason| corrupt_group(&span, lsn, reason))?;
            if lsn > applied {
                replay_sessions(trees, lsn, payload)
                    .map_err(|error| corrupt_group(&span, lsn, error.to_string()))?;
                replayed += 1;
            }
            Ok(true)
        })
        .map_err(log_error)?;
    }
    if replayed > 0 {
        trees.db.flush().map_err(StoreError::Flush)?;
        tracing::info!(
            groups = replayed,
            "store log: replayed the sessions sled had not flushed"
        );
    }
    Ok(LogInner {
        log,
        index,
        base: state.base,
    })
}

/// Rebuilds the index of what `spans` hold (after retention removed segments).
pub(super) fn reindex(spans: &[Span]) -> Result<LogIndex, StoreError> {
    let mut index = LogIndex::default();
    for span in spans {
        scan_span(span, 0, |lsn, payload| {
            index
                .note(lsn, span.segment_first_lsn, payload)
                .map_err(|reason| corrupt_group(span, lsn, reason))?;
            Ok(true)
        })
        .map_err(log_error)?;
    }
    Ok(index)
}

/// A `u64` (big-endian) that `meta` keeps under `key`; 0 when it has none.
pub(super) fn read_u64(meta: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match meta.get(key).map_err(StoreError::Read)? {
        Some(value) => decode_session_key(&value),
        None => Ok(0),
    }
}

/// Applies the session entries of group `lsn` to sled, as one transaction with the
/// counts, the highest session id and `log_applied`.
fn replay_sessions(trees: &Trees<'_>, lsn: u64, payload: &[u8]) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("log record {lsn}"),
        reason,
    };
    let entries = entries(payload).map_err(corrupt)?;
    if !entries
        .iter()
        .any(|entry| matches!(entry, Entry::Session { .. }))
    {
        return Ok(());
    }
    let result: sled::transaction::TransactionResult<(), StoreError> = (trees.sessions, trees.meta)
        .transaction(|(sessions, meta)| {
            let abort = sled::transaction::ConflictableTransactionError::Abort;
            let mut counts: Option<StoreCounts> = match meta.get(COUNTS_KEY)? {
                Some(value) => Some(serde_json::from_slice(&value).map_err(|source| {
                    abort(StoreError::Decode {
                        key: "meta counts".into(),
                        source,
                    })
                })?),
                None => None,
            };
            let mut last_session_id = match meta.get(LAST_SESSION_ID_KEY)? {
                Some(value) => decode_session_key(&value).map_err(abort)?,
                None => 0,
            };
            for entry in &entries {
                if let Entry::Session { id, value } = *entry {
                    let previous = sessions
                        .insert(&id.to_be_bytes(), value)?
                        .map(|old| RecordSummary::decode(id, &old))
                        .transpose()
                        .map_err(abort)?;
                    let current = RecordSummary::decode(id, value).map_err(abort)?;
                    if let Some(counts) = counts.as_mut() {
                        counts.record_transition(previous, current);
                    }
                    last_session_id = last_session_id.max(id);
                }
            }
            if let Some(counts) = counts {
                let encoded = super::encode_counts(&counts).map_err(abort)?;
                meta.insert(COUNTS_KEY, encoded)?;
            }
            meta.insert(LAST_SESSION_ID_KEY, &last_session_id.to_be_bytes()[..])?;
            meta.insert(LOG_APPLIED_KEY, &lsn.to_be_bytes()[..])?;
            Ok(())
        });
    match result {
        Ok(()) => Ok(()),
        Err(sled::transaction::TransactionError::Abort(error)) => Err(error),
        Err(sled::transaction::TransactionError::Storage(error)) => Err(StoreError::Commit(error)),
    }
}

/// An older store: its journal replayed into sled, then sled's events and statements
/// copied into a fresh log (see the module docs).
fn migrate(dir: &Path, trees: &Trees<'_>) -> Result<(), StoreError> {
    let open_error = |source| StoreError::Open {
        path: dir.to_owned(),
        source,
    };
    let statements = trees
        .db
        .open_tree(super::STATEMENTS_TREE)
        .map_err(open_error)?;
    let events = trees
        .db
        .open_tree(super::events::EVENTS_TREE)
        .map_err(open_error)?;
    let log_dir = dir.join(LOG_DIR);
    // What an interrupted migration left is written again.
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .map_err(|error| StoreError::Journal(error.to_string()))?;
    }
    let journal_dir = dir.join(journal::JOURNAL_DIR);
    if journal_dir.exists() {
        journal::recover(
            dir,
            &journal::Trees {
                db: trees.db,
                sessions: trees.sessions,
                statements: &statements,
                meta: trees.meta,
                events: &events,
            },
        )?;
    }
    let (mut log, _) = SegmentLog::open(&log_dir, SEGMENT_BYTES, 1).map_err(log_error)?;
    let mut payload = Vec::new();
    let mut copied = (0u64, 0u64);
    let cut = |payload: &mut Vec<u8>, log: &mut SegmentLog, force: bool| {
        if payload.len() >= MIGRATION_GROUP_BYTES || (force && !payload.is_empty()) {
            log.append(payload).map_err(log_error)?;
            payload.clear();
        }
        Ok::<_, StoreError>(())
    };
    for entry in events.iter() {
        let (key, value) = entry.map_err(StoreError::Read)?;
        push_event(&mut payload, super::events::decode_seq(&key)?, &value);
        copied.0 += 1;
        cut(&mut payload, &mut log, false)?;
    }
    for entry in statements.iter() {
        let (key, value) = entry.map_err(StoreError::Read)?;
        let key: [u8; 16] = key
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::CorruptStatementKey { len: key.len() })?;
        push_statement(&mut payload, &key, &value);
        copied.1 += 1;
        cut(&mut payload, &mut log, false)?;
    }
    cut(&mut payload, &mut log, true)?;
    log.sync().map_err(log_error)?;
    trees
        .meta
        .insert(LOG_APPLIED_KEY, &log.last_lsn().to_be_bytes()[..])
        .map_err(StoreError::Commit)?;
    trees
        .meta
        .insert(LOG_FORMAT_KEY, &1u64.to_be_bytes()[..])
        .map_err(StoreError::Commit)?;
    trees.db.flush().map_err(StoreError::Flush)?;
    if copied != (0, 0) {
        tracing::info!(
            events = copied.0,
            statements = copied.1,
            "store: moved events and statements from sled into the store's log"
        );
    }
    drop(log);
    remove_leftovers(dir, trees)
}

/// Empties what sled and the old journal held before the log did, once migrated.
fn remove_leftovers(dir: &Path, trees: &Trees<'_>) -> Result<(), StoreError> {
    let mut cleared = false;
    for name in [super::STATEMENTS_TREE, super::events::EVENTS_TREE] {
        if trees
            .db
            .tree_names()
            .iter()
            .any(|tree| tree.as_ref() == name.as_bytes())
        {
            let tree = trees
                .db
                .open_tree(name)
                .map_err(|source| StoreError::Open {
                    path: dir.to_owned(),
                    source,
                })?;
            if !tree.is_empty() {
                tree.clear().map_err(StoreError::Commit)?;
                cleared = true;
            }
        }
    }
    if trees
        .meta
        .remove(journal::JOURNAL_APPLIED_KEY)
        .map_err(StoreError::Commit)?
        .is_some()
    {
        cleared = true;
    }
    if cleared {
        trees.db.flush().map_err(StoreError::Flush)?;
    }
    let journal_dir = dir.join(journal::JOURNAL_DIR);
    if journal_dir.exists() {
        std::fs::remove_dir_all(&journal_dir)
            .map_err(|error| StoreError::Journal(error.to_string()))?;
    }
    Ok(())
}

/// Rewrites the events of the record log in the (closed) store `dir` as a root
/// attacker would: `edit` may change an event's stored value or remove it (`None`),
/// and every record's checksum is recomputed, so that only the hash chain can tell.
#[cfg(test)]
pub(super) fn tamper_events(dir: &Path, mut edit: impl FnMut(u64, &mut Option<Vec<u8>>)) {
    let log_dir = dir.join(LOG_DIR);
    let mut paths: Vec<_> = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let bytes = std::fs::read(&path).expect("read segment");
        let mut rewritten = Vec::new();
        let mut offset = 0;
        while offset + super::segment::FRAME_HEADER <= bytes.len() {
            let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("len"));
            let lsn = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().expect("lsn"));
            let start = offset + super::segment::FRAME_HEADER;
            let payload = &bytes[start..start + len as usize];
            let mut edited = Vec::new();
            for entry in entries(payload).expect("entries") {
                match entry {
                    Entry::Session { id, value } => journal::push_session(&mut edited, id, value),
                    Entry::Statement { key, value } => push_statement(&mut edited, &key, value),
                    Entry::Event { seq, value } => {
                        let mut value = Some(value.to_vec());
                        edit(seq, &mut value);
                        if let Some(value) = value {
                            push_event(&mut edited, seq, &value);
                        }
                    }
                }
            }
            rewritten.extend_from_slice(&(edited.len() as u32).to_le_bytes());
            rewritten.extend_from_slice(&super::segment::crc(lsn, &edited).to_le_bytes());
            rewritten.extend_from_slice(&lsn.to_le_bytes());
            rewritten.extend_from_slice(&edited);
            offset = start + len as usize;
        }
        std::fs::write(&path, rewritten).expect("write segment");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_runs_tell_new_seqs_from_rewrites() {
        let mut session = SessionStatements::default();
        for seq in [5, 1, 2, 4, 3, 10, 8, 9] {
            assert!(session.insert(seq), "{seq}");
        }
        assert_eq!(session.runs, [(1, 5), (8, 10)]);
        for seq in [1, 3, 5, 8, 10] {
            assert!(!session.insert(seq), "{seq}");
        }
        assert!(session.insert(7));
        assert!(session.insert(6));
        assert_eq!(session.runs, [(1, 10)]);
        assert!(session.insert(0));
        assert!(session.insert(u64::MAX));
        assert!(!session.insert(u64::MAX));
        assert_eq!(session.runs, [(0, 10), (u64::MAX, u64::MAX)]);
    }
}
