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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Activity, Context, Event, SCHEMA_VERSION},
        store::{Durability, StoreOptions},
    };

    fn event(session_id: u64, time: OffsetDateTime) -> Event {
        Event {
            version: SCHEMA_VERSION,
            time,
            host: "h".into(),
            context: Context {
                session_id: Some(session_id),
                ..Context::default()
            },
            activity: Activity::SessionClose {
                reason: "client_closed".into(),
                bytes_up: 1,
                bytes_down: 2,
                duration_ms: 3,
            },
        }
    }

    #[tokio::test]
    async fn pages_filter_by_session_and_time_and_say_where_to_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store"), StoreOptions::default()).expect("open");
        let start = time::macros::datetime!(2026-01-01 00:00 UTC);
        for index in 0..10_i64 {
            let session = if index % 2 == 0 { 1 } else { 2 };
            store
                .append(
                    event(session, start + time::Duration::minutes(index)),
                    Durability::Durable,
                )
                .await
                .expect("append");
        }
        let seqs = |page: &EventPage| page.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let query = EventQuery {
            after: 0,
            limit: 3,
            session: Some(2),
            since: None,
        };
        let first = select_events(&store, &query).expect("select");
        assert_eq!(seqs(&first), [2, 4, 6]);
        assert!(first.more);
        let second = select_events(
            &store,
            &EventQuery {
                after: first.next_after,
                ..query.clone()
            },
        )
        .expect("select");
        assert_eq!(seqs(&second), [8, 10]);
        assert!(!second.more);
        let since = select_events(
            &store,
            &EventQuery {
                after: 0,
                limit: 100,
                session: None,
                since: Some(start + time::Duration::minutes(7)),
            },
        )
        .expect("select");
        assert_eq!(seqs(&since), [8, 9, 10]);
        assert!(!since.more);
    }
}
