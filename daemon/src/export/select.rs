//! Choosing events for `GET /v1/events` (and so for `sluice export`): a page after a
//! seq, optionally only one session's and only from a time on.
//!
//! Filters are applied while scanning the log in seq order, so a page says how far the
//! scan got (`next_after`) and the client continues from there; a scan stops after a
//! bounded number of events even when few matched, so one request stays short.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    events::StoredEvent,
    store::{Store, StoreError},
};

/// Events per page when the request names no `limit`.
pub const DEFAULT_EVENT_LIMIT: usize = 1000;
/// Largest `limit` accepted.
pub const MAX_EVENT_LIMIT: usize = 10_000;
/// Most events looked at by one request, matching or not.
const SCAN_BUDGET: usize = 100_000;
/// Events read from the store at a time while scanning.
const SCAN_CHUNK: usize = 1000;

/// The filter of `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    /// Only events with a greater seq.
    pub after: u64,
    /// At most this many.
    pub limit: usize,
    /// Only this session's events.
    pub session: Option<u64>,
    /// Only events at or after this time.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub since: Option<OffsetDateTime>,
}

/// One page of `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// The matching events, in seq order.
    pub events: Vec<StoredEvent>,
    /// Ask again with `after` = this to continue.
    pub next_after: u64,
    /// `false` once the scan reached the newest flushed event.
    pub more: bool,
}

/// The page of events `query` asks for.
pub fn select_events(store: &Store, query: &EventQuery) -> Result<EventPage, StoreError> {
    let mut page = EventPage {
        events: Vec::new(),
        next_after: query.after,
        more: true,
    };
    let mut scanned = 0;
    while page.events.len() < query.limit && scanned < SCAN_BUDGET {
        let chunk = store.events_after(page.next_after, SCAN_CHUNK)?;
        if chunk.is_empty() {
            page.more = false;
            break;
        }
        for event in chunk {
            scanned += 1;
            page.next_after = event.seq;
            if matches(query, &event) {
                page.events.push(event);
                if page.events.len() >= query.limit {
                    break;
                }
            }
        }
    }
    Ok(page)
}

fn matches(query: &EventQuery, event: &StoredEvent) -> bool {
    query
        .session
        .is_none_or(|session| event.event.context.session_id == Some(session))
        && query.since.is_none_or(|since| event.event.time >= since)
}
