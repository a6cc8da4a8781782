//! Interim judging for the SSH proxy until the shared pipeline lands: the policy's
//! class decision per request, one statement record each. Replaced by the pipeline
//! adapter.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

use super::proxy::{Gate, Outcome, Request, Verdict};
use crate::{
    policy::{Action, AgentFacts, PolicyHandle},
    store::{Durability, StatementRecord, Store},
};

pub struct InterimGate {
    pub policy: Arc<PolicyHandle>,
    pub store: Store,
    pub agent: String,
    pub uid: u32,
    pub exe: Option<PathBuf>,
    pub resource: String,
    pub session_id: u64,
    pub seq: AtomicU64,
}

impl Gate for InterimGate {
    type Ticket = StatementRecord;

    async fn decide(
        &self,
        request: Request,
        _agent_gone: oneshot::Receiver<()>,
    ) -> Verdict<Self::Ticket> {
        let facts = AgentFacts {
            agent: &self.agent,
            uid: self.uid,
            exe: self.exe.as_deref(),
        };
        let mut decision =
            self.policy
                .current()
                .decide(&facts, Some(&self.resource), request.class);
        if let Some(why) = request.refused {
            decision.action = Action::Deny;
            decision.rule = "ssh".into();
            decision.reason = why.into();
        }
        let record = StatementRecord::begun(
            self.session_id,
            self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            request.summary.clone(),
            request.class.to_string(),
            request.verb.clone(),
            decision.record(),
        );
        let allowed = decision.action == Action::Allow;
        if let Err(error) = self.store.put_statement(&record, Durability::Durable).await {
            tracing::error!(%error, "cannot record an ssh request: refusing it");
            return Verdict {
                allowed: false,
                message: "the request could not be recorded".into(),
                ticket: record,
            };
        }
        Verdict {
            allowed,
            message: format!(
                "denied by policy rule `{}`: {}",
                decision.rule, decision.reason
            ),
            ticket: record,
        }
    }

    async fn finish(&self, mut record: StatementRecord, outcome: Outcome) {
        record.duration_us = outcome
            .started
            .map(|started| started.elapsed().as_micros() as u64);
        record.tag = Some(match (&outcome.exit_status, &outcome.exit_signal) {
            (_, Some(signal)) => format!("signal {signal}"),
            (Some(status), None) => format!("exit {status}"),
            (None, None) => "no exit status".into(),
        });
        record.rows = Some(outcome.bytes_out);
        record.error = outcome.error;
        if let Err(error) = self.store.put_statement(&record, Durability::Batched).await {
            tracing::error!(%error, "cannot record an ssh request's end");
        }
    }

    async fn forward(
        &self,
        host: String,
        port: u16,
        _channel: russh::Channel<russh::server::Msg>,
    ) -> Result<(), String> {
        Err(format!("forwarding to {host}:{port} is not supported yet"))
    }
}
