//! The audit event log inside the store: numbering, hash chain, layout and verification.
//!
//! | tree     | key                 | value                                                   |
//! |----------|---------------------|---------------------------------------------------------|
//! | `events` | seq, `u64` BE       | prev hash (32 bytes), hash (32 bytes), the event's JSON |
//! | `meta`   | `event_log`         | `EventLogState` as JSON                               |
//!
//! `hash = SHA-256(seq as 8 bytes BE ‖ prev hash ‖ event JSON as stored)`. The JSON is
//! hashed exactly as stored and never re-serialized, so adding schema fields later does
//! not change old hashes. Only the writer thread appends (see `writer.rs`): seq and
//! chain are assigned in one place, in commit order.
//!
//! Besides sled, the writer keeps `events.head` next to the database: the seq and hash
//! of the newest event known to be flushed, rewritten after each flush. sled recovers
//! from a damaged log by dropping everything after the damage; the head file is how
//! such a loss is noticed (by `verify` and by opening the store) instead of the
//! shortened chain passing as whole.
//!
//! Hex is hand-written (a dozen lines): no hex crate is in the tree.

use std::{path::Path, time::Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use super::{
    Durability, MAX_RECORD_BYTES, SessionRecord, StatementRecord, Store, StoreError,
    writer::{
        AppendRequest, Command, PutRequest, RecordSummary, RetentionOutcome, RetentionRule,
        StatementPut,
    },
};
use crate::events::{Activity, Event, StoredEvent};

impl Store {
    /// Appends `event` to the log and returns its seq. With [`Durability::Durable`] it
    /// returns once the event is flushed; with [`Durability::Batched`] once it is
    /// committed (visible to readers), to be flushed within the flush interval.
    pub async fn append(&self, event: Event, durability: Durability) -> Result<u64, StoreError> {
        let encoded = encode_event(&event)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append(AppendRequest {
            encoded,
            queued_at: Instant::now(),
            reply: Some(reply),
            durable: durability == Durability::Durable,
        }))
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends `events` in order (sharing group commits). With [`Durability::Durable`]
    /// it returns the last seq once all are flushed; with [`Durability::Batched`] it
    /// returns `None` as soon as they are queued (a failed commit is logged by the
    /// writer), so a hot path never waits for the writer; the writer keeps them staged
    /// with its other batched writes, committed and flushed within the flush interval.
    pub async fn append_all(
        &self,
        events: Vec<Event>,
        durability: Durability,
    ) -> Result<Option<u64>, StoreError> {
        let durable = durability == Durability::Durable;
        let mut answers = Vec::with_capacity(if durable { events.len() } else { 0 });
        for event in &events {
            let reply = durable.then(|| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                reply
            });
            self.send(Command::Append(AppendRequest {
                encoded: encode_event(event)?,
                queued_at: Instant::now(),
                reply,
                durable,
            }))
            .await?;
        }
        if !durable {
            return Ok(None);
        }
        let mut last = None;
        for answer in answers {
            last = Some(answer.await.map_err(|_| StoreError::Closed)??);
        }
        Ok(last)
    }

    /// How events are to be written under the configured `[store] durability`.
    pub fn audit_durability(&self) -> Durability {
        self.inner.audit_durability
    }

    /// Writes a session record and appends `events` in one atomic commit (see
    /// [`Store::put_session`] for what `durability` waits for).
    pub async fn put_session_with_events(
        &self,
        record: &SessionRecord,
        events: &[Event],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut put = PutRequest {
            id: record.id,
            encoded: super::encode_record(record)?,
            summary: RecordSummary::of(record),
            events: events.iter().map(encode_event).collect::<Result<_, _>>()?,
            queued_at: Instant::now(),
            reply: None,
        };
        self.send_waiting(durability, |reply| {
            put.reply = reply;
            Command::Put(put)
        })
        .await
    }

    /// Writes a statement record and appends `events` in one atomic commit.
    pub async fn put_statement_with_events(
        &self,
        record: &StatementRecord,
        events: &[Event],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut put = StatementPut {
            key: super::statement_key(record.session_id, record.seq),
            encoded: super::encode_statement(record)?,
            events: events.iter().map(encode_event).collect::<Result<_, _>>()?,
            queued_at: Instant::now(),
            reply: None,
            committed_only: false,
        };
        self.send_waiting(durability, |reply| {
            put.reply = reply;
            Command::PutStatement(put)
        })
        .await
    }

    /// Writes a statement record and appends `events` in one atomic commit, returning
    /// once that commit is in the store's journal: it then survives the daemon's death
    /// (kill -9), and is made durable against power loss by the next group sync, at
    /// most the flush interval later. For strict mode's results: an agent never sees an
    /// answer whose record a daemon crash could lose, at the cost of one writer round
    /// trip rather than a disk sync.
    pub async fn put_statement_with_events_committed(
        &self,
        record: &StatementRecord,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::PutStatement(StatementPut {
            key: super::statement_key(record.session_id, record.seq),
            encoded: super::encode_statement(record)?,
            events: events.iter().map(encode_event).collect::<Result<_, _>>()?,
            queued_at: Instant::now(),
            reply: Some(reply),
            committed_only: true,
        }))
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn send_waiting(
        &self,
        durability: Durability,
        command: impl FnOnce(Option<super::writer::Reply<()>>) -> Command,
    ) -> Result<(), StoreError> {
        match durability {
            Durability::Batched => self.send(command(None)).await,
            Durability::Durable => {
                let (reply, answer) = oneshot::channel();
                self.send(command(Some(reply))).await?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
        }
    }

    /// Up to `limit` stored events with a seq above `after_seq`, oldest first. Only
    /// flushed events are returned, so a reader never sees an event a crash could undo.
    pub fn events_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let durable = *self.inner.durable_events.borrow();
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.inner.records.events(first, durable, limit)
    }

    /// The newest flushed seq, updated after every flush: wait on it for new events.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.inner.durable_events.clone()
    }

    /// The oldest stored seq (after retention), or `None` when the log is empty.
    pub fn first_event_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.records.lock().index.first_event)
    }

    /// Walks the chain of the live store (see `verify`); events appended meanwhile
    /// are left for the next run.
    pub fn verify_events(&self) -> Result<VerifyReport, StoreError> {
        // A retention pass during the walk moves the base: walk again.
        let mut report = verify_log(&self.inner.records, None)?;
        for _ in 0..3 {
            if report.chain_break.is_none() {
                break;
            }
            let again = verify_log(&self.inner.records, None)?;
            if again.chain_break == report.chain_break {
                break;
            }
            report = again;
        }
        Ok(report)
    }

    /// Runs one retention pass now; `None` when nothing was old or big enough to drop.
    pub async fn retain(
        &self,
        rule: RetentionRule,
    ) -> Result<Option<RetentionOutcome>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Retain {
            rule,
            now: OffsetDateTime::now_utc(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Verifies the store in `dir` without a daemon: opens sled directly (it allows one
/// process at a time) and the record log, walks the chain and checks it against
/// `events.head`.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StoreError> {
    let open_error = |source| StoreError::Open {
        path: dir.to_owned(),
        source,
    };
    if !dir.join("db").exists() && !dir.join("conf").exists() {
        return Err(StoreError::Corrupt {
            what: dir.display().to_string(),
            reason: "no store here".into(),
        });
    }
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .map_err(open_error)?;
    let meta = db.open_tree(super::META_TREE).map_err(open_error)?;
    let sessions = db.open_tree(super::SESSIONS_TREE).map_err(open_error)?;
    // As the daemon's next start would: an older store is migrated, and the sessions
    // of groups a crash kept from sled are applied.
    let records = super::log::open(
        dir,
        &super::log::Trees {
            db: &db,
            sessions: &sessions,
            meta: &meta,
        },
    )?;
    verify_log(&super::log::LogShared::new(records), read_head_file(dir)?)
}

/// Walks the record log's events (see [`ChainWalk`]).
fn verify_log(
    records: &super::log::LogShared,
    flushed_head: Option<ChainLink>,
) -> Result<VerifyReport, StoreError> {
    let state = {
        let inner = records.lock();
        EventLogState {
            head: inner.index.head.unwrap_or(inner.base),
            base: inner.base,
            events: 0,
            bytes: 0,
        }
    };
    let mut chain = ChainWalk::new(state, flushed_head);
    records.walk_events(|seq, value| chain.visit(seq, value))?;
    Ok(chain.finish())
}

/// Refuses to open a store whose log ends before the head file's event: sled lost
/// flushed events (damaged files), and appending would reuse their numbers.
pub(super) fn check_flushed_head(dir: &Path, stored_head: ChainLink) -> Result<(), StoreError> {
    match read_head_file(dir)? {
        Some(flushed) if flushed.seq > stored_head.seq => Err(StoreError::LostEvents {
            flushed_seq: flushed.seq,
            stored_seq: stored_head.seq,
        }),
        _ => Ok(()),
    }
}

fn encode_event(event: &Event) -> Result<Vec<u8>, StoreError> {
    let activity = event.activity.type_name();
    let encoded =
        serde_json::to_vec(event).map_err(|source| StoreError::EncodeEvent { activity, source })?;
    if encoded.len() > MAX_RECORD_BYTES - VALUE_HEADER {
        return Err(StoreError::EventTooLarge {
            activity,
            len: encoded.len(),
            max: MAX_RECORD_BYTES - VALUE_HEADER,
        });
    }
    Ok(encoded)
}

/// The sled tree holding the event log, keyed by seq.
pub(super) const EVENTS_TREE: &str = "events";
/// `meta` key of the `EventLogState`.
pub(super) const EVENT_LOG_KEY: &[u8] = b"event_log";
/// The file, in the store directory, naming the newest flushed event.
pub(super) const HEAD_FILE: &str = "events.head";
/// The `prev_hash` of event 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Bytes before the JSON in a stored value: prev hash and hash.
const VALUE_HEADER: usize = 64;

/// One link of the chain: an event's seq and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl ChainLink {
    /// Before the first event: seq 0, all-zero hash.
    pub const GENESIS: ChainLink = ChainLink {
        seq: 0,
        hash: GENESIS_HASH,
    };
}

/// The event log's bookkeeping, committed with every change to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EventLogState {
    /// The newest event ([`ChainLink::GENESIS`] when none was ever written).
    pub head: ChainLink,
    /// The last event dropped by retention: the oldest stored event links to it.
    pub base: ChainLink,
    /// Events stored.
    pub events: u64,
    /// Bytes of stored events, keys and values: what `max_bytes` bounds.
    pub bytes: u64,
}

impl Default for EventLogState {
    fn default() -> Self {
        Self {
            head: ChainLink::GENESIS,
            base: ChainLink::GENESIS,
            events: 0,
            bytes: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct EventLogStateJson {
    last_seq: u64,
    last_hash: String,
    base_seq: u64,
    base_hash: String,
    events: u64,
    bytes: u64,
}

impl EventLogState {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&EventLogStateJson {
            last_seq: self.head.seq,
            last_hash: to_hex(&self.head.hash),
            base_seq: self.base.seq,
            base_hash: to_hex(&self.base.hash),
            events: self.events,
            bytes: self.bytes,
        })
        .map_err(StoreError::EncodeCounts)
    }

    pub fn decode(value: &[u8]) -> Result<Self, String> {
        let json: EventLogStateJson =
            serde_json::from_slice(value).map_err(|error| error.to_string())?;
        let hash = |hex: &str| from_hex(hex).ok_or_else(|| format!("bad hash {hex:?}"));
        Ok(Self {
            head: ChainLink {
                seq: json.last_seq,
                hash: hash(&json.last_hash)?,
            },
            base: ChainLink {
                seq: json.base_seq,
                hash: hash(&json.base_hash)?,
            },
            events: json.events,
            bytes: json.bytes,
        })
    }

    /// The stored state; default for a store that never had an event.
    pub fn read(meta: &sled::Tree) -> Result<Self, StoreError> {
        match meta.get(EVENT_LOG_KEY).map_err(StoreError::Read)? {
            None => Ok(Self::default()),
            Some(value) => Self::decode(&value).map_err(|reason| StoreError::Corrupt {
                what: "meta event_log".into(),
                reason,
            }),
        }
    }
}

/// `SHA-256(seq BE ‖ prev ‖ json)`.
pub fn chain_hash(seq: u64, prev: &[u8; 32], json: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(seq.to_be_bytes());
    hasher.update(prev);
    hasher.update(json);
    hasher.finalize().into()
}

/// The stored value of an event.
pub(super) fn encode_value(prev: &[u8; 32], hash: &[u8; 32], json: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER + json.len());
    value.extend_from_slice(prev);
    value.extend_from_slice(hash);
    value.extend_from_slice(json);
    value
}

/// A stored value cut into prev hash, hash and JSON; `None` when too short.
pub(super) fn split_value(value: &[u8]) -> Option<([u8; 32], [u8; 32], &[u8])> {
    let (prev, rest) = value.split_first_chunk::<32>()?;
    let (hash, json) = rest.split_first_chunk::<32>()?;
    Some((*prev, *hash, json))
}

pub(super) fn decode_seq(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        what: "event key".into(),
        reason: format!("{} bytes long, expected 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes one stored event (without checking its hash: that is `verify`'s job).
pub(super) fn decode_stored(seq: u64, value: &[u8]) -> Result<StoredEvent, StoreError> {
    let (prev, hash, json) = split_value(value).ok_or_else(|| StoreError::Corrupt {
        what: format!("event {seq}"),
        reason: format!("value is {} bytes, shorter than its header", value.len()),
    })?;
    let event: Event = serde_json::from_slice(json).map_err(|source| StoreError::Decode {
        key: format!("event {seq}"),
        source,
    })?;
    Ok(StoredEvent {
        seq,
        prev_hash: to_hex(&prev),
        hash: to_hex(&hash),
        event,
    })
}

/// The `time` of a stored event's JSON, without decoding the rest.
pub(super) fn event_time(seq: u64, json: &[u8]) -> Result<OffsetDateTime, StoreError> {
    #[derive(Deserialize)]
    struct EventTime {
        #[serde(with = "time::serde::rfc3339")]
        time: OffsetDateTime,
    }
    serde_json::from_slice::<EventTime>(json)
        .map(|stamped| stamped.time)
        .map_err(|source| StoreError::Decode {
            key: format!("event {seq}"),
            source,
        })
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

pub fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut bytes = [0; 32];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(bytes)
}

/// Records `head` as flushed, atomically (write then rename). Not fsynced: it must only
/// survive the daemon's death, and it never names more than sled has flushed.
pub(super) fn write_head_file(dir: &Path, head: ChainLink) -> std::io::Result<()> {
    // The writer and the checkpoint thread both write it: one at a time.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _writing = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let temporary = dir.join(format!("{HEAD_FILE}.tmp"));
    std::fs::write(&temporary, format!("{} {}\n", head.seq, to_hex(&head.hash)))?;
    std::fs::rename(&temporary, dir.join(HEAD_FILE))
}

/// The flushed head named by the head file; `None` when there is none.
pub(super) fn read_head_file(dir: &Path) -> Result<Option<ChainLink>, StoreError> {
    let path = dir.join(HEAD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::Corrupt {
                what: path.display().to_string(),
                reason: error.to_string(),
            });
        }
    };
    let corrupt = || StoreError::Corrupt {
        what: path.display().to_string(),
        reason: format!("expected `SEQ HASH`, found {:?}", text.trim()),
    };
    let (seq, hash) = text.trim().split_once(' ').ok_or_else(corrupt)?;
    Ok(Some(ChainLink {
        seq: seq.parse().map_err(|_| corrupt())?,
        hash: from_hex(hash).ok_or_else(corrupt)?,
    }))
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Events checked.
    pub events: u64,
    /// The oldest and newest stored event (`None` when the log is empty).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The events before `first_seq` that retention dropped (0 when none).
    pub dropped_before: u64,
    /// The first break, walking from the oldest event; `None` when the chain is whole.
    pub chain_break: Option<ChainBreak>,
}

/// Where the chain breaks and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The event at fault (for a missing event, the seq that should be there).
    pub seq: u64,
    pub kind: BreakKind,
    /// A sentence saying what was expected and what was found.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The stored hash is not the hash of the stored event: it was changed.
    HashMismatch,
    /// The event does not link to the one before it: that one was rewritten or replaced.
    PrevLinkBroken,
    /// An event number is missing.
    SeqGap,
    /// The stored bytes are not an event.
    Undecodable,
    /// The newest events are missing: the log ends before its recorded head.
    Truncated,
    /// Retention dropped events, but the `retention` event recording it is missing.
    MissingRetentionRecord,
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            BreakKind::HashMismatch => "hash mismatch",
            BreakKind::PrevLinkBroken => "broken prev link",
            BreakKind::SeqGap => "seq gap",
            BreakKind::Undecodable => "undecodable value",
            BreakKind::Truncated => "truncated",
            BreakKind::MissingRetentionRecord => "missing retention record",
        })
    }
}

/// Walks the log from the oldest stored event to the recorded head and reports the
/// first break: events are handed to [`ChainWalk::visit`] in log order, then
/// [`ChainWalk::finish`] checks the end.
pub(super) struct ChainWalk {
    state: EventLogState,
    flushed_head: Option<ChainLink>,
    report: VerifyReport,
    previous: ChainLink,
    retention_recorded: bool,
    flushed_head_seen: bool,
    /// A break was found: the report is final.
    done: bool,
}

impl ChainWalk {
    /// `state` holds the head and base to walk between; `flushed_head` is the head
    /// file's link, when there is one.
    pub fn new(state: EventLogState, flushed_head: Option<ChainLink>) -> Self {
        Self {
            state,
            flushed_head,
            report: VerifyReport {
                events: 0,
                first_seq: None,
                last_seq: None,
                dropped_before: state.base.seq,
                chain_break: None,
            },
            previous: state.base,
            retention_recorded: state.base.seq == 0,
            flushed_head_seen: flushed_head.is_none_or(|head| head.seq == 0),
            done: false,
        }
    }

    fn fail(&mut self, seq: u64, kind: BreakKind, detail: String) -> bool {
        self.report.chain_break = Some(ChainBreak { seq, kind, detail });
        self.done = true;
        false
    }

    /// Checks one stored event; `false` once the walk is over.
    pub fn visit(&mut self, seq: u64, value: &[u8]) -> bool {
        // Appended after the bookkeeping was read.
        if self.done || seq > self.state.head.seq {
            return false;
        }
        self.report.first_seq.get_or_insert(seq);
        let expected = self.previous.seq + 1;
        if seq != expected {
            let detail = if seq > expected {
                format!("expected event {expected}, found event {seq}: events are missing")
            } else {
                format!(
                    "event {seq} is older than the log's base {}",
                    self.previous.seq
                )
            };
            return self.fail(expected, BreakKind::SeqGap, detail);
        }
        let Some((prev, hash, json)) = split_value(value) else {
            return self.fail(
                seq,
                BreakKind::Undecodable,
                format!("{} bytes, shorter than an event's header", value.len()),
            );
        };
        if prev != self.previous.hash {
            let detail = format!(
                "prev_hash {} is not the hash {} of event {}: that event was rewritten or replaced",
                to_hex(&prev),
                to_hex(&self.previous.hash),
                self.previous.seq
            );
            return self.fail(seq, BreakKind::PrevLinkBroken, detail);
        }
        let computed = chain_hash(seq, &prev, json);
        if computed != hash {
            let detail = format!(
                "stored hash {} but the event hashes to {}: the event was changed",
                to_hex(&hash),
                to_hex(&computed)
            );
            return self.fail(seq, BreakKind::HashMismatch, detail);
        }
        let event: Event = match serde_json::from_slice(json) {
            Ok(event) => event,
            Err(error) => {
                return self.fail(
                    seq,
                    BreakKind::Undecodable,
                    format!("not an event: {error}"),
                );
            }
        };
        if let Activity::Retention {
            last_dropped_seq,
            last_dropped_hash,
            ..
        } = &event.activity
            && *last_dropped_seq == self.state.base.seq
            && from_hex(last_dropped_hash) == Some(self.state.base.hash)
        {
            self.retention_recorded = true;
        }
        if let Some(head) = self.flushed_head
            && head.seq == seq
        {
            if head.hash != hash {
                let detail = format!(
                    "event {seq} was flushed with hash {} but the store holds {}: the log was rewritten from here",
                    to_hex(&head.hash),
                    to_hex(&hash)
                );
                return self.fail(seq, BreakKind::PrevLinkBroken, detail);
            }
            self.flushed_head_seen = true;
        }
        self.report.events += 1;
        self.report.last_seq = Some(seq);
        self.previous = ChainLink { seq, hash };
        true
    }

    /// The report, once every event was visited.
    pub fn finish(mut self) -> VerifyReport {
        if self.done {
            return self.report;
        }
        let previous = self.previous;
        if previous.seq != self.state.head.seq || previous.hash != self.state.head.hash {
            self.fail(
                previous.seq + 1,
                BreakKind::Truncated,
                format!(
                    "the log ends at event {} but its head is event {}",
                    previous.seq, self.state.head.seq
                ),
            );
            return self.report;
        }
        if let Some(head) = self.flushed_head
            && !self.flushed_head_seen
            && head.seq > previous.seq
        {
            self.fail(
                previous.seq + 1,
                BreakKind::Truncated,
                format!(
                    "events {}..={} were flushed but are gone from the store (damaged files?)",
                    previous.seq + 1,
                    head.seq
                ),
            );
            return self.report;
        }
        if !self.retention_recorded {
            let base = self.state.base.seq;
            self.fail(
                base,
                BreakKind::MissingRetentionRecord,
                format!("events up to {base} were dropped but no retention event records it"),
            );
        }
        self.report
    }
}
