//! Shipping the audit event log to where security teams read it.
//!
//! The event log in the store is the source of truth; this module turns its events into
//! the formats SIEMs ingest and ships them, continuously and at least once:
//!
//! - formats, pure functions over one [`StoredEvent`]: [`ocsf`] (OCSF 1.8 classes),
//!   [`ecs`] (Elastic Common Schema), [`cef`] (ArcSight CEF) and JSON lines (the stored
//!   event as it is);
//! - [`sink`]: where the lines go (a rotated file, syslog over TCP or TLS, Splunk HEC, a
//!   webhook);
//! - [`runner`]: one task per configured exporter, reading pages of events after its
//!   persisted [`cursor`] and moving the cursor only once the sink acknowledged them;
//! - [`config`]: the `[[export]]` entries of the daemon's configuration.
//!
//! `sluice export` formats with the same functions on the CLI's side, from events it
//! pages through the control API.

pub mod cef;
pub mod config;
pub mod cursor;
pub mod ecs;
pub mod ocsf;
pub mod runner;
pub mod select;
pub mod sink;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::events::{Activity, Context, StoredEvent};

/// The product name every format reports.
pub const PRODUCT: &str = "sluice";
/// The daemon's version, reported as the product version.
pub const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An output format: one line of text per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCSF 1.8 JSON, one class per activity (see [`ocsf`]).
    Ocsf,
    /// Elastic Common Schema JSON.
    Ecs,
    /// ArcSight Common Event Format.
    Cef,
    /// The stored event as it is (`{seq, prev_hash, hash, event}`).
    Jsonl,
}

impl Format {
    /// Whether each line is a JSON document (HEC then embeds it as an object).
    pub fn is_json(self) -> bool {
        !matches!(self, Format::Cef)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
            Format::Cef => "cef",
            Format::Jsonl => "jsonl",
        })
    }
}

/// An event could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("cannot render event {seq} as {format}: {source}")]
pub struct FormatError {
    pub seq: u64,
    pub format: Format,
    pub source: serde_json::Error,
}

/// `event` as one line of `format`, without the line end.
pub fn render(format: Format, event: &StoredEvent) -> Result<String, FormatError> {
    let error = |source| FormatError {
        seq: event.seq,
        format,
        source,
    };
    match format {
        Format::Ocsf => serde_json::to_string(&ocsf::event(event)).map_err(error),
        Format::Ecs => serde_json::to_string(&ecs::event(event)).map_err(error),
        Format::Cef => Ok(cef::event(event)),
        Format::Jsonl => serde_json::to_string(event).map_err(error),
    }
}

/// An `ip:port` from the event context, split; `None` when it is not one (the control
/// socket's refusals say `control-socket`).
fn socket_addr(text: Option<&str>) -> Option<SocketAddr> {
    text.and_then(|text| text.parse().ok())
}

/// The process behind an event as the JSON formats name it alike: `pid` and `name`
/// (its command), where known. Each format adds its own executable and user fields.
fn process_fields(context: &Context) -> Map<String, Value> {
    let mut process = Map::new();
    if let Some(pid) = context.pid {
        process.insert("pid".into(), json!(pid));
    }
    if let Some(comm) = &context.comm {
        process.insert("name".into(), json!(comm));
    }
    process
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(time: time::OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// How bad an event is, on one scale all formats map from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Informational,
    Low,
    Medium,
}

/// How bad an activity is.
fn severity_of(activity: &Activity) -> Severity {
    match activity {
        Activity::SessionOpen { decision } | Activity::Statement { decision, .. } => {
            decision_severity(&decision.action)
        }
        Activity::StatementResult { error: Some(_), .. } => Severity::Low,
        Activity::ApprovalRequested { .. } | Activity::Grant { .. } => Severity::Low,
        Activity::ApprovalDecided { outcome, .. } if outcome != "approved" => Severity::Low,
        Activity::PolicyReload { outcome, .. } if outcome != "applied" => Severity::Medium,
        Activity::Identity { outcome, .. } if outcome != "bound" => Severity::Medium,
        _ => Severity::Informational,
    }
}

/// An activity's RFC 5424 severity: 6 informational, 5 notice, 4 warning, 3 error.
pub fn syslog_severity(activity: &Activity) -> u8 {
    match severity_of(activity) {
        Severity::Informational => 6,
        Severity::Low => 5,
        Severity::Medium => 4,
    }
}

/// A policy decision's action as a severity: denials stand out.
fn decision_severity(action: &str) -> Severity {
    match action {
        "allow" => Severity::Informational,
        "review" => Severity::Low,
        _ => Severity::Medium,
    }
}
