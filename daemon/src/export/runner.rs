//! The exporters' tasks: each reads pages of events after its cursor, renders them,
//! hands them to its sink and, once the sink acknowledged the page, persists the cursor.
//!
//! - At least once: the cursor moves only after an acknowledgement, so after a crash,
//!   a restart or a sink outage an exporter resumes with the first unacknowledged
//!   event. Duplicates are bounded by one page (the one in flight when it stopped).
//! - In order, nothing skipped: a failed page is sent again, whole, until it is
//!   acknowledged; the exporter reads nothing else meanwhile.
//! - Bounded memory, backpressure: one page (at most `batch_size` events) is held per
//!   exporter; events wait in the store, not in memory, while a sink is slow or down.
//! - Exponential backoff after a failure, from 100 ms to 5 s, reset by a success.
//!
//! Only flushed events are read ([`Store::events_after`]), so nothing is exported that
//! a crash could take back.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::{sync::watch, task::JoinHandle};
use tracing::Instrument as _;

use super::{
    config::ExporterConfig,
    cursor::{CursorError, CursorFile},
    render,
    sink::{Line, Sink, SinkError},
    syslog_severity,
};
use crate::{credentials::Credentials, events::StoredEvent, store::Store};

/// First and longest pause after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle exporter looks at the log even without a notification.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long shutdown waits for a page in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An exporter could not be set up; the daemon does not start with a broken one.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export {name}: {source}")]
    Sink { name: String, source: SinkError },
    #[error("export {name}: {source}")]
    Cursor { name: String, source: CursorError },
}

/// One exporter's state, as `sluice status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExporterStatus {
    pub name: String,
    /// `file`, `syslog`, `hec` or `webhook`.
    pub kind: String,
    pub format: String,
    /// The seq of the last event the sink acknowledged.
    pub cursor: u64,
    /// Flushed events not acknowledged yet.
    pub lag: u64,
    /// Events acknowledged since the daemon started.
    pub exported: u64,
    /// The last failure, until the next success.
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_error_at: Option<OffsetDateTime>,
}

/// The running exporters.
pub struct Exporters {
    statuses: ExporterStatuses,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A view of the exporters' state for `sluice status`; clones share it.
#[derive(Clone)]
pub struct ExporterStatuses {
    states: Vec<Arc<Mutex<ExporterStatus>>>,
    durable: watch::Receiver<u64>,
}

impl ExporterStatuses {
    /// Every exporter's cursor, lag and last error.
    pub fn statuses(&self) -> Vec<ExporterStatus> {
        let durable = *self.durable.borrow();
        self.states
            .iter()
            .map(|state| {
                let mut status = lock(state).clone();
                status.lag = durable.saturating_sub(status.cursor);
                status
            })
            .collect()
    }
}

impl Exporters {
    /// Builds every configured sink and starts one task per exporter.
    pub fn start(
        configs: &[ExporterConfig],
        store: &Store,
        state_dir: &Path,
        credentials: &Credentials,
    ) -> Result<Self, ExportError> {
        let (stop, stopped) = watch::channel(false);
        let mut exporters = Self {
            statuses: ExporterStatuses {
                states: Vec::new(),
                durable: store.subscribe_events(),
            },
            stop,
            tasks: Vec::new(),
        };
        for config in configs {
            let name = config.name().to_owned();
            let sink = Sink::new(config, credentials).map_err(|source| ExportError::Sink {
                name: name.clone(),
                source,
            })?;
            let cursor_file = CursorFile::new(state_dir, &name);
            let cursor = cursor_file.load().map_err(|source| ExportError::Cursor {
                name: name.clone(),
                source,
            })?;
            let state = Arc::new(Mutex::new(ExporterStatus {
                name: name.clone(),
                kind: config.kind().into(),
                format: config.format().to_string(),
                cursor,
                lag: 0,
                exported: 0,
                last_error: None,
                last_error_at: None,
            }));
            let exporter = Exporter {
                config: config.clone(),
                sink,
                cursor_file,
                cursor,
                store: store.clone(),
                state: Arc::clone(&state),
                stop: stopped.clone(),
                backoff: FIRST_BACKOFF,
            };
            let span = tracing::info_span!("exporter", exporter = %name, kind = config.kind());
            exporters
                .tasks
                .push(tokio::spawn(exporter.run().instrument(span)));
            exporters.statuses.states.push(state);
            tracing::info!(exporter = %name, kind = config.kind(), format = %config.format(), cursor, "exporter started");
        }
        Ok(exporters)
    }

    /// A shareable view of the exporters' state.
    pub fn statuses(&self) -> ExporterStatuses {
        self.statuses.clone()
    }

    /// Stops the exporters, letting a page in flight finish for a few seconds.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

fn lock(state: &Mutex<ExporterStatus>) -> std::sync::MutexGuard<'_, ExporterStatus> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Exporter {
    config: ExporterConfig,
    sink: Sink,
    cursor_file: CursorFile,
    cursor: u64,
    store: Store,
    state: Arc<Mutex<ExporterStatus>>,
    stop: watch::Receiver<bool>,
    backoff: Duration,
}

/// Stopping was asked for.
struct Stopped;

impl Exporter {
    async fn run(mut self) {
        let mut durable = self.store.subscribe_events();
        loop {
            if *self.stop.borrow() {
                return;
            }
            let page = match self.read_page() {
                Ok(page) => page,
                Err(error) => {
                    self.failed(&error.to_string());
                    if self.pause().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if page.is_empty() {
                if self.wait_for_events(&mut durable).await.is_err() {
                    return;
                }
                continue;
            }
            let page =
                if page.len() < self.config.page_size() && self.config.batch_interval_ms() > 0 {
                    // A fuller batch is worth a short wait (HEC, webhooks).
                    if self
                        .sleep(Duration::from_millis(self.config.batch_interval_ms()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match self.read_page() {
                        Ok(fuller) if !fuller.is_empty() => fuller,
                        _ => page,
                    }
                } else {
                    page
                };
            if self.deliver(&page).await.is_err() {
                return;
            }
        }
    }

    fn read_page(&mut self) -> Result<Vec<StoredEvent>, crate::store::StoreError> {
        let page = self
            .store
            .events_after(self.cursor, self.config.page_size())?;
        if page.is_empty() {
            let durable = *self.store.subscribe_events().borrow();
            if durable < self.cursor {
                tracing::warn!(
                    cursor = self.cursor,
                    durable,
                    "the event log is shorter than this exporter's cursor (a new store?): exporting it from the start"
                );
                self.cursor = 0;
                return self.store.events_after(0, self.config.page_size());
            }
        }
        Ok(page)
    }

    /// Sends `page` until acknowledged, then persists the cursor.
    async fn deliver(&mut self, page: &[StoredEvent]) -> Result<(), Stopped> {
        let format = self.config.format();
        let mut lines = Vec::with_capacity(page.len());
        for event in page {
            match render(format, event) {
                Ok(text) => lines.push(Line {
                    seq: event.seq,
                    time: event.event.time,
                    host: event.event.host.clone(),
                    activity: event.event.activity.type_name(),
                    syslog_severity: syslog_severity(&event.event.activity),
                    text,
                }),
                Err(error) => {
                    // Cannot happen for the formats we have; never skip silently.
                    self.failed(&error.to_string());
                    return self.pause().await;
                }
            }
        }
        let Some(last) = page.last().map(|event| event.seq) else {
            return Ok(());
        };
        loop {
            match self.sink.send(&lines).await {
                Ok(()) => break,
                Err(error) => {
                    self.failed(&error.to_string());
                    self.pause().await?;
                }
            }
        }
        loop {
            let cursor_file = self.cursor_file.clone();
            let stored = tokio::task::spawn_blocking(move || cursor_file.store(last)).await;
            match stored {
                Ok(Ok(())) => break,
                Ok(Err(error)) => self.failed(&error.to_string()),
                Err(error) => self.failed(&error.to_string()),
            }
            self.pause().await?;
        }
        self.cursor = last;
        self.backoff = FIRST_BACKOFF;
        let mut state = lock(&self.state);
        state.cursor = last;
        state.exported = state.exported.saturating_add(page.len() as u64);
        state.last_error = None;
        state.last_error_at = None;
        Ok(())
    }

    fn failed(&self, error: &str) {
        tracing::warn!(cursor = self.cursor, %error, retry_in_ms = self.backoff.as_millis() as u64, "export failed; retrying");
        let mut state = lock(&self.state);
        state.last_error = Some(error.to_owned());
        state.last_error_at = Some(OffsetDateTime::now_utc());
    }

    /// Waits out the backoff, then doubles it.
    async fn pause(&mut self) -> Result<(), Stopped> {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.sleep(pause).await
    }

    async fn sleep(&mut self, duration: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            _ = self.stop.changed() => Err(Stopped),
        }
    }

    async fn wait_for_events(&mut self, durable: &mut watch::Receiver<u64>) -> Result<(), Stopped> {
        tokio::select! {
            changed = durable.changed() => {
                if changed.is_err() {
                    // The store is closing: look again later (or stop).
                    return self.sleep(IDLE_POLL).await;
                }
                Ok(())
            }
            () = tokio::time::sleep(IDLE_POLL) => Ok(()),
            _ = self.stop.changed() => Err(Stopped),
        }
    }
}
