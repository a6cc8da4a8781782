//! Daemon-wide audit events and the retention task.
//!
//! Sessions and statements record their own events (`session.rs`, the PostgreSQL
//! proxy); this module holds what the daemon itself records: starting and stopping,
//! policy reloads, refusals made outside a session, and the periodic retention pass
//! that bounds the event log (see `docs/events.md`).

use std::time::Duration;

use crate::{
    config::StoreConfig,
    events::{Activity, Context, Event},
    store::{Durability, RetentionRule, SessionRecord, Store},
};

/// How often retention looks for events to drop. A pass that finds nothing reads one
/// event, so this can be frequent enough to keep the log near `max_bytes` under load.
const RETENTION_PERIOD: Duration = Duration::from_secs(60);

/// Appends a daemon-wide event with `durability`; a failure is logged (the daemon has
/// nothing to refuse here) and returned.
pub async fn record(store: &Store, activity: Activity, durability: Durability) -> Option<u64> {
    let kind = activity.type_name();
    match store
        .append(Event::now(Context::default(), activity), durability)
        .await
    {
        Ok(seq) => Some(seq),
        Err(error) => {
            tracing::error!(%error, kind, "cannot record an audit event");
            None
        }
    }
}

/// The `daemon` event for `change` (`started`, `stopped`).
pub fn daemon_change(change: &str) -> Activity {
    Activity::Daemon {
        change: change.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Records a connection refused outside a session (by the kernel, or at the control
/// socket): its record and its `session_open` event, in one commit.
pub async fn record_refused(store: &Store, record: &SessionRecord) -> Result<(), String> {
    let event = Event::now(Context::of_session(record), Activity::session_open(record));
    store
        .put_session_with_events(record, &[event], Durability::Batched)
        .await
        .map_err(|error| error.to_string())
}

/// Records a policy reload from any trigger, without blocking the caller.
pub fn record_policy_reload(store: &Store, activity: Activity) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("cannot record the policy reload: no runtime");
        return;
    };
    let store = store.clone();
    runtime.spawn(async move {
        let durability = store.audit_durability();
        record(&store, activity, durability).await;
    });
}

/// The retention rule `[store]` configures; `None` when nothing is ever dropped.
pub fn retention_rule(config: &StoreConfig) -> Option<RetentionRule> {
    let rule = RetentionRule {
        max_age: config
            .retain_days
            .map(|days| Duration::from_secs(days.saturating_mul(86_400))),
        max_bytes: config.max_bytes,
    };
    (rule.max_age.is_some() || rule.max_bytes.is_some()).then_some(rule)
}

/// Applies `rule` now and then every minute, until the store shuts down.
pub async fn run_retention(store: Store, rule: RetentionRule) {
    let mut ticks = tokio::time::interval(RETENTION_PERIOD);
    loop {
        ticks.tick().await;
        match store.retain(rule).await {
            Ok(_) => {}
            Err(crate::store::StoreError::Closed) => return,
            Err(error) => tracing::error!(%error, "retention pass failed"),
        }
    }
}
