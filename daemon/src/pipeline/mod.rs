//! The protocol-neutral L7 pipeline: judge, hold, mask and record each operation.
//!
//! Every protocol handler (see `crate::protocols`) decodes its own wire format and
//! nothing else. For each request it builds an [`Operation`] and asks its session's
//! [`Pipeline`]:
//!
//! 1. [`Pipeline::judge`] / [`Pipeline::judge_with_mask`]: the policy snapshot, grants
//!    and (for an allowing rule with a mask profile) the compiled [`Masker`], rebuilt
//!    when the policy generation changes. Judging again at execute time is calling it
//!    again: the snapshot is read per call.
//! 2. [`Pipeline::record`]: the operation record, numbered in the session, with its
//!    `statement` event queued; [`Pipeline::flush_audit`] writes the queued events
//!    (durably in strict mode) and must run before anything goes upstream.
//! 3. [`Pipeline::hold`] for a `review` decision: the approvals broker, its
//!    `approval_requested`/`approval_decided` events, and withdrawal when the future
//!    the protocol supplies says the agent went away. [`HeldRecords`] records held
//!    operations as not run should the session be torn down mid-wait.
//! 4. [`SessionInfo::store_result`] once the upstream answered (or never will).
//!
//! The protocol acts on the answers (forwards, refuses in its own words, masks rows)
//! and never re-implements them.

mod details;
mod operation;
mod session;

use std::{collections::HashMap, future::Future, sync::Arc, time::Instant};

pub use details::Details;
pub use operation::{Class, MAX_SUMMARY, Operation, truncated};
pub use session::{
    BoxFuture, ByteStream, Closed, Dial, NestedDispatch, NestedRefusal, NestedSession,
    NestedTarget, SessionInfo, Upstream,
};

use crate::{
    approvals::{HoldRequest, Outcome, Resolution},
    events::{Activity, Event},
    masking::Masker,
    policy::{Action, Decision},
    store::{ApprovalRecord, Durability, Store, StoreError},
};

pub use crate::store::OperationRecord;

/// A session's judging and recording state: operation numbers, the mask profiles
/// compiled so far, and the events not yet written.
pub struct Pipeline<'s> {
    session: &'s SessionInfo,
    seq: u64,
    /// Compiled mask profiles by name, with the policy generation each was built from,
    /// so that a reload reaches open sessions at their next operation.
    maskers: HashMap<String, (u64, Arc<Masker>)>,
    /// `statement` events decided but not yet written.
    audit: Vec<Event>,
}

impl<'s> Pipeline<'s> {
    pub fn new(session: &'s SessionInfo) -> Self {
        Self {
            session,
            seq: 0,
            maskers: HashMap::new(),
            audit: Vec::new(),
        }
    }

    pub fn session(&self) -> &'s SessionInfo {
        self.session
    }

    /// Decides `operation` on the session's resource with the policy in force now and
    /// the grants. An operation whose output cannot be masked is refused under a mask
    /// profile.
    pub fn judge(&self, operation: &Operation) -> Decision {
        let session = self.session;
        session.policy.decide_operation(
            &session.facts(),
            &session.resource.name,
            operation.class,
            operation.unmaskable.as_deref(),
        )
    }

    /// [`Self::judge`], and when an allowing (or reviewing) rule names a mask profile,
    /// the compiled masker for what comes back. Fails closed: a profile that cannot be
    /// compiled turns the decision into a denial.
    pub fn judge_with_mask(&mut self, operation: &Operation) -> (Decision, Option<Arc<Masker>>) {
        let mut decision = self.judge(operation);
        let Some(profile) = decision.mask.clone() else {
            return (decision, None);
        };
        // A held operation is masked like an allowed one once approved.
        if decision.action == Action::Deny {
            return (decision, None);
        }
        match self.masker(&profile) {
            Some(masker) => (decision, Some(masker)),
            None => {
                decision.action = Action::Deny;
                decision.reason = format!(
                    "{}; but mask profile `{profile}` is not usable",
                    decision.reason
                );
                (decision, None)
            }
        }
    }

    /// The compiled mask profile `profile` of the policy in force; `None` when it does
    /// not exist or cannot be compiled.
    pub fn masker(&mut self, profile: &str) -> Option<Arc<Masker>> {
        let generation = self.session.policy.generation();
        if let Some((built_from, masker)) = self.maskers.get(profile)
            && *built_from == generation
        {
            return Some(Arc::clone(masker));
        }
        let policy = self.session.policy.current();
        let masker = match Masker::new(policy.mask_profile(profile)?, &self.session.mask_key) {
            Ok(masker) => Arc::new(masker),
            Err(error) => {
                tracing::error!(%error, profile, "mask profile unusable: refusing what it covers");
                return None;
            }
        };
        self.maskers
            .insert(profile.to_owned(), (generation, Arc::clone(&masker)));
        Some(masker)
    }

    /// The record of a judged operation, numbered next in the session, with its
    /// `statement` event queued for [`Self::flush_audit`].
    pub fn record(&mut self, operation: &Operation, decision: &Decision) -> OperationRecord {
        crate::metrics::global().decision("statement", decision.action);
        self.seq += 1;
        let record = self.operation_record(operation, decision, self.seq);
        self.requeue(&record);
        record
    }

    /// The record of a judged operation numbered `seq`, and nothing else: no event
    /// queued, no decision counted (for protocols that number and announce operations
    /// themselves).
    pub fn operation_record(
        &self,
        operation: &Operation,
        decision: &Decision,
        seq: u64,
    ) -> OperationRecord {
        OperationRecord {
            protocol: operation.protocol.to_string(),
            tables: operation.targets.clone(),
            details: operation.details.clone(),
            params: operation.parameters.len(),
            parameters: operation.parameters.clone(),
            identity: self
                .session
                .identity
                .workload
                .as_ref()
                .map(|workload| workload.record.clone()),
            ..OperationRecord::begun(
                self.session.session_id,
                seq,
                operation.summary.clone(),
                operation.class.to_string(),
                operation.verb.clone(),
                decision.record(),
            )
        }
    }

    /// Queues the `statement` event of `record` again, replacing the one queued for the
    /// same operation (for what is learnt after the record was made).
    pub fn requeue(&mut self, record: &OperationRecord) {
        let activity = Activity::statement(record);
        if let Some(queued) = self.audit.iter_mut().rev().find(|event| {
            matches!(event.activity, Activity::Statement { statement_seq, .. } if statement_seq == record.seq)
        }) {
            queued.activity = activity;
            return;
        }
        self.audit
            .push(Event::now(self.session.audit_context.clone(), activity));
    }

    /// Writes the queued `statement` events (durably in strict mode). Call it before
    /// forwarding anything upstream: a failure must end the session.
    pub async fn flush_audit(&mut self) -> Result<(), StoreError> {
        if self.audit.is_empty() {
            return Ok(());
        }
        let store = &self.session.store;
        store
            .append_all(std::mem::take(&mut self.audit), store.audit_durability())
            .await
            .map(|_| ())
    }

    /// Holds one operation under `review` with the approvals broker until a human
    /// decides, the hold times out, or `agent_gone` completes (the protocol's signal
    /// that the agent went away: the hold is withdrawn). Writes the
    /// `approval_requested` and `approval_decided` events. Fails closed: a hold that
    /// cannot be made is denied.
    pub async fn hold<F>(
        &self,
        record: &OperationRecord,
        decision: &Decision,
        agent_gone: F,
    ) -> Resolution
    where
        F: Future<Output = ()>,
    {
        let session = self.session;
        let request = HoldRequest {
            session_id: session.session_id,
            statement_seq: record.seq,
            agent: session.identity.agent.clone(),
            pid: session.identity.pid,
            uid: session.identity.uid,
            resource: session.resource.name.clone(),
            sql: record.sql.clone(),
            kind: record.kind.clone(),
            operation: record.operation.clone(),
            rule: decision.rule.clone(),
            reason: decision.reason.clone(),
            timeout: decision.timeout,
        };
        let mut hold = match session.approvals.hold(request) {
            Ok(hold) => hold,
            Err(error) => {
                tracing::error!(%error, "cannot hold an operation for approval: denying it");
                return Resolution {
                    id: 0,
                    outcome: Outcome::Denied,
                    approver: None,
                    reason: format!("it could not be held for approval: {error}"),
                    waited: std::time::Duration::ZERO,
                };
            }
        };
        let started = Instant::now();
        session
            .audit(Activity::ApprovalRequested {
                approval_id: hold.id(),
                statement_seq: record.seq,
                rule: decision.rule.clone(),
                timeout_s: decision
                    .timeout
                    .unwrap_or_else(|| session.approvals.default_timeout())
                    .as_secs(),
            })
            .await;
        let resolution = tokio::select! {
            resolution = hold.resolution() => resolution,
            // Gone (or broken): dropping the hold below withdraws it.
            () = agent_gone => Resolution {
                id: hold.id(),
                outcome: Outcome::Withdrawn,
                approver: None,
                reason: "the agent's session ended while the statement waited".into(),
                waited: started.elapsed(),
            },
        };
        drop(hold);
        crate::metrics::global().approval(resolution.outcome);
        session
            .audit(Activity::ApprovalDecided {
                approval_id: resolution.id,
                statement_seq: record.seq,
                outcome: resolution.outcome.as_str().to_owned(),
                approver_uid: resolution.approver.as_ref().and_then(|a| a.uid),
                approver_name: resolution.approver.as_ref().and_then(|a| a.name.clone()),
                reason: Some(resolution.reason.clone()),
                waited_ms: resolution.waited.as_millis().min(u128::from(u64::MAX)) as u64,
            })
            .await;
        resolution
    }
}

impl SessionInfo {
    /// Appends an audit event about this session; a failure is logged.
    pub async fn audit(&self, activity: Activity) {
        let durability = self.store.audit_durability();
        if let Err(error) = self
            .store
            .append(Event::now(self.audit_context.clone(), activity), durability)
            .await
        {
            tracing::error!(%error, "cannot append an event to the audit log");
        }
    }

    /// Stores a finished operation's record with its `statement_result` event. Batched;
    /// in strict mode it waits until the record is in the store's journal (no disk
    /// sync: the result goes to the agent, not upstream), so an agent never sees an
    /// answer whose record a daemon crash could lose.
    pub async fn store_result(&self, record: OperationRecord) {
        store_result(&self.store, &self.audit_context, record).await;
    }

    /// Records the operations of a request whose agent left while they were held.
    pub async fn record_withdrawn(&self, records: Vec<OperationRecord>, resolution: &Resolution) {
        for mut record in records {
            record.error = Some(format!(
                "not run: the session ended while approval {} was pending",
                resolution.id
            ));
            if let Err(error) = self.store.put_statement(&record, Durability::Batched).await {
                tracing::error!(%error, seq = record.seq, "cannot record an operation");
            }
        }
    }
}

/// [`SessionInfo::store_result`] with the session's store and audit context, for a
/// record stored after its session's task has gone.
pub async fn store_result(
    store: &Store,
    context: &crate::events::Context,
    record: OperationRecord,
) {
    let writing = Instant::now();
    let result = Event::now(context.clone(), Activity::statement_result(&record));
    let written = if store.audit_durability() == Durability::Durable {
        store
            .put_statement_with_events_committed(&record, &[result])
            .await
    } else {
        store
            .put_statement_with_events(&record, &[result], Durability::Batched)
            .await
    };
    crate::metrics::global().store_write("statement", false, written.is_ok(), writing.elapsed());
    if let Err(error) = written {
        tracing::error!(%error, seq = record.seq, "cannot record an operation");
    }
}

/// Operations of a request while it is held. Should the session be torn down
/// meanwhile (the upstream went away, which drops the waiting task), dropping this
/// records them as not run, so that no operation record is lost.
pub struct HeldRecords {
    pub records: Vec<OperationRecord>,
    store: Store,
}

impl HeldRecords {
    pub fn new(records: Vec<OperationRecord>, store: &Store) -> Self {
        Self {
            records,
            store: store.clone(),
        }
    }

    /// The records, now the hold is over.
    pub fn release(mut self) -> Vec<OperationRecord> {
        std::mem::take(&mut self.records)
    }
}

impl Drop for HeldRecords {
    fn drop(&mut self) {
        let records = std::mem::take(&mut self.records);
        if records.is_empty() {
            return;
        }
        let store = self.store.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                operations = records.len(),
                "held operations not recorded: no runtime"
            );
            return;
        };
        runtime.spawn(async move {
            for mut record in records {
                record.error.get_or_insert_with(|| {
                    "not run: the session ended while it waited for approval".into()
                });
                if let Err(error) = store.put_statement(&record, Durability::Batched).await {
                    tracing::error!(%error, seq = record.seq, "cannot record an operation");
                }
            }
        });
    }
}

/// How a held operation's approval ended, as its record keeps it.
pub fn approval_record(resolution: &Resolution) -> ApprovalRecord {
    ApprovalRecord {
        id: resolution.id,
        outcome: resolution.outcome.as_str().to_owned(),
        approver_uid: resolution.approver.as_ref().and_then(|a| a.uid),
        approver_name: resolution.approver.as_ref().and_then(|a| a.name.clone()),
        approver_identity: resolution
            .approver
            .as_ref()
            .and_then(|a| a.identity.clone()),
        reason: resolution.reason.clone(),
        waited_ms: resolution.waited.as_millis().min(u128::from(u64::MAX)) as u64,
    }
}

/// Why a held operation did not run, for the agent: `denied by root (uid 0): not in
/// change window`, `not approved: nobody decided within 5m`.
pub fn refusal_text(resolution: &Resolution) -> String {
    match (&resolution.outcome, &resolution.approver) {
        (Outcome::Denied, Some(approver)) => match approver.uid {
            Some(uid) => format!(
                "denied by {} (uid {uid}): {}",
                approver.name.as_deref().unwrap_or("an approver"),
                resolution.reason
            ),
            None => format!(
                "denied by {}: {}",
                approver.name.as_deref().unwrap_or("an approver"),
                resolution.reason
            ),
        },
        _ => format!("not approved: {}", resolution.reason),
    }
}
