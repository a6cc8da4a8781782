//! The format of a group commit's payload, and the journal of older stores.
//!
//! Every group commit of the writer is one record of the store's record log (see
//! `log.rs`); its payload is a sequence of entries, each
//! `kind (1 byte) ‖ key (8 or 16 bytes) ‖ value length (u32 LE) ‖ value`: sessions
//! (key: id), statements (key: session id, seq) and events (key: seq; value as
//! stored: prev hash, hash, JSON), so a replay rebuilds the same chain.
//!
//! Before statements and events moved into the record log, the same groups were
//! appended to a journal (`journal/`) in front of sled, which held everything, and
//! sled recorded the journal LSN it applied (`meta` `journal_applied`). [`recover`]
//! still replays such a journal into sled, once, when an older store is migrated
//! (see `log.rs`).

use std::path::Path;

use sled::Transactional;

use super::{
    COUNTS_KEY, LAST_SESSION_ID_KEY, StoreCounts, StoreError, decode_session_key,
    events::{ChainLink, EVENT_LOG_KEY, EventLogState, split_value},
    segment::SegmentLog,
    writer::RecordSummary,
};

/// The journal's directory inside the store.
pub(super) const JOURNAL_DIR: &str = "journal";
/// `meta` key of the newest journal LSN applied to sled, `u64` big-endian.
pub(super) const JOURNAL_APPLIED_KEY: &[u8] = b"journal_applied";
/// Size at which a journal segment is sealed and a new one started.
pub(super) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

const SESSION: u8 = 1;
const STATEMENT: u8 = 2;
const EVENT: u8 = 3;

/// Appends a session entry to a group's payload.
pub(super) fn push_session(payload: &mut Vec<u8>, id: u64, value: &[u8]) {
    push(payload, SESSION, &id.to_be_bytes(), value);
}

/// Appends a statement entry (key: session id, seq) to a group's payload.
pub(super) fn push_statement(payload: &mut Vec<u8>, key: &[u8; 16], value: &[u8]) {
    push(payload, STATEMENT, key, value);
}

/// Appends an event entry (its stored value: prev hash, hash, JSON).
pub(super) fn push_event(payload: &mut Vec<u8>, seq: u64, value: &[u8]) {
    push(payload, EVENT, &seq.to_be_bytes(), value);
}

fn push(payload: &mut Vec<u8>, kind: u8, key: &[u8], value: &[u8]) {
    payload.reserve(1 + key.len() + 4 + value.len());
    payload.push(kind);
    payload.extend_from_slice(key);
    payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
    payload.extend_from_slice(value);
}

/// One entry of a journaled group.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry<'a> {
    Session { id: u64, value: &'a [u8] },
    Statement { key: [u8; 16], value: &'a [u8] },
    Event { seq: u64, value: &'a [u8] },
}

/// The entries of a group's payload; an error names what is wrong (a record that
/// passed its checksum but does not parse was written by something else).
pub(super) fn entries(payload: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let mut entries = Vec::new();
    let mut rest = payload;
    while let Some((&kind, after_kind)) = rest.split_first() {
        let key_len = match kind {
            SESSION | EVENT => 8,
            STATEMENT => 16,
            other => return Err(format!("unknown entry kind {other}")),
        };
        let (key, after_key) = after_kind
            .split_at_checked(key_len)
            .ok_or("entry key cut short")?;
        let (len, after_len) = after_key
            .split_first_chunk::<4>()
            .ok_or("entry length cut short")?;
        let (value, next) = after_len
            .split_at_checked(u32::from_le_bytes(*len) as usize)
            .ok_or("entry value cut short")?;
        let be = |bytes: &[u8]| -> Result<u64, String> {
            Ok(u64::from_be_bytes(
                bytes.try_into().map_err(|_| "bad key".to_owned())?,
            ))
        };
        entries.push(match kind {
            SESSION => Entry::Session {
                id: be(key)?,
                value,
            },
            EVENT => Entry::Event {
                seq: be(key)?,
                value,
            },
            _ => Entry::Statement {
                key: key.try_into().map_err(|_| "bad key".to_owned())?,
                value,
            },
        });
        rest = next;
    }
    Ok(entries)
}

/// The sled side the journal is replayed into.
pub(super) struct Trees<'a> {
    pub db: &'a sled::Db,
    pub sessions: &'a sled::Tree,
    pub statements: &'a sled::Tree,
    pub meta: &'a sled::Tree,
    pub events: &'a sled::Tree,
}

fn journal_error(error: super::segment::LogError) -> StoreError {
    StoreError::Journal(error.to_string())
}

/// Opens the journal in `dir` and replays into sled every group it has not applied;
/// returns the journal and how many groups were replayed.
pub(super) fn recover(dir: &Path, trees: &Trees<'_>) -> Result<(SegmentLog, u64), StoreError> {
    let applied = super::log::read_u64(trees.meta, JOURNAL_APPLIED_KEY)?;
    let (mut journal, recovery) =
        SegmentLog::open(&dir.join(JOURNAL_DIR), SEGMENT_BYTES, applied + 1)
            .map_err(journal_error)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "journal: a torn tail (a group never made durable) was cut off"
        );
    }
    let groups = journal.read_after(applied).map_err(journal_error)?;
    let replayed = groups.len() as u64;
    for (lsn, payload) in groups {
        apply(trees, lsn, &payload)?;
    }
    if replayed > 0 {
        trees.db.flush().map_err(StoreError::Flush)?;
        tracing::info!(
            groups = replayed,
            "journal: replayed what the store had not flushed"
        );
    }
    let applied = super::log::read_u64(trees.meta, JOURNAL_APPLIED_KEY)?;
    journal.remove_through(applied).map_err(journal_error)?;
    Ok((journal, replayed))
}

/// Applies one journaled group as one sled transaction.
fn apply(trees: &Trees<'_>, lsn: u64, payload: &[u8]) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("journal group {lsn}"),
        reason,
    };
    let entries = entries(payload).map_err(corrupt)?;
    let result: sled::transaction::TransactionResult<(), StoreError> =
        (trees.sessions, trees.statements, trees.meta, trees.events).transaction(
            |(sessions, statements, meta, events)| {
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
                let mut state = match meta.get(EVENT_LOG_KEY)? {
                    Some(value) => EventLogState::decode(&value).map_err(|reason| {
                        abort(StoreError::Corrupt {
                            what: "meta event_log".into(),
                            reason,
                        })
                    })?,
                    None => EventLogState::default(),
                };
                let mut last_session_id = match meta.get(LAST_SESSION_ID_KEY)? {
                    Some(value) => decode_session_key(&value).map_err(abort)?,
                    None => 0,
                };
                for entry in &entries {
                    match *entry {
                        Entry::Session { id, value } => {
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
                        Entry::Statement { key, value } => {
                            let previous = statements.insert(&key, value)?;
                            if let (Some(counts), None) = (counts.as_mut(), previous) {
                                counts.statements = counts.statements.saturating_add(1);
                            }
                        }
                        Entry::Event { seq, value } => {
                            if seq <= state.head.seq {
                                continue;
                            }
                            let (prev, hash, _) = split_value(value).ok_or_else(|| {
                                abort(StoreError::Corrupt {
                                    what: format!("journaled event {seq}"),
                                    reason: "shorter than an event's header".into(),
                                })
                            })?;
                            if seq != state.head.seq + 1 || prev != state.head.hash {
                                return Err(abort(StoreError::Corrupt {
                                    what: format!("journal group {lsn}"),
                                    reason: format!(
                                        "event {seq} does not follow the stored head, event {}",
                                        state.head.seq
                                    ),
                                }));
                            }
                            events.insert(&seq.to_be_bytes(), value)?;
                            state.head = ChainLink { seq, hash };
                            state.events += 1;
                            state.bytes += (8 + value.len()) as u64;
                        }
                    }
                }
                if let Some(counts) = counts {
                    let encoded = super::encode_counts(&counts).map_err(abort)?;
                    meta.insert(COUNTS_KEY, encoded)?;
                }
                meta.insert(EVENT_LOG_KEY, state.encode().map_err(abort)?)?;
                meta.insert(LAST_SESSION_ID_KEY, &last_session_id.to_be_bytes()[..])?;
                meta.insert(JOURNAL_APPLIED_KEY, &lsn.to_be_bytes()[..])?;
                Ok(())
            },
        );
    match result {
        Ok(()) => Ok(()),
        Err(sled::transaction::TransactionError::Abort(error)) => Err(error),
        Err(sled::transaction::TransactionError::Storage(error)) => Err(StoreError::Commit(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_payloads_round_trip() {
        let mut payload = Vec::new();
        push_session(&mut payload, 7, b"{\"id\":7}");
        let key = {
            let mut key = [0; 16];
            key[7] = 7;
            key[15] = 2;
            key
        };
        push_statement(&mut payload, &key, b"{}");
        push_event(&mut payload, 41, &[1; 70]);
        assert_eq!(
            entries(&payload).expect("parses"),
            [
                Entry::Session {
                    id: 7,
                    value: b"{\"id\":7}"
                },
                Entry::Statement { key, value: b"{}" },
                Entry::Event {
                    seq: 41,
                    value: &[1; 70]
                },
            ]
        );
        assert!(entries(&payload[..payload.len() - 1]).is_err());
        assert!(entries(&[9]).is_err());
    }
}
