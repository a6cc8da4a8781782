//! The SSH protocol handler: the registry's entry point, and the [`Gate`] that puts
//! each channel request through the shared pipeline (judge, hold, record).
//!
//! One connection carries many channels that are judged concurrently, so they share
//! one [`Pipeline`] behind a lock held only to judge, number and flush a request; a
//! `review` hold runs outside it, so a held command stalls only its own channel.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};

use super::{
    command::{PushedRef, RefChange},
    proxy::{self, Gate, Outcome, Request, Verdict},
};
use crate::{
    approvals::Outcome as HoldOutcome,
    pipeline::{
        BoxFuture, ByteStream, Closed, Details, HeldRecords, NestedRefusal, NestedTarget,
        Operation, OperationRecord, Pipeline, SessionInfo, Upstream, approval_record, refusal_text,
    },
    policy::{Action, Decision, Protocol},
    relay::ByteCounts,
};

/// The registry's SSH handler.
#[derive(Default)]
pub struct Handler;

impl crate::protocols::ProtocolHandler for Handler {
    fn protocol(&self) -> Protocol {
        Protocol::Ssh
    }

    /// Loads (or on first start creates) the SSH host CA.
    fn prepare(
        &self,
        state_dir: &std::path::Path,
        _public_dir: Option<&std::path::Path>,
    ) -> Result<(), String> {
        super::prepare(state_dir).map_err(|error| format!("the SSH CA: {error}"))
    }

    fn serve<'a>(
        &'a self,
        session: SessionInfo,
        agent: Box<dyn ByteStream>,
        upstream: Upstream,
    ) -> BoxFuture<'a, Closed> {
        Box::pin(async move {
            let Upstream::Dialled(upstream) = upstream else {
                return Closed::from("upstream_unreachable: not dialled".to_owned());
            };
            let config = match super::configure(
                &session.resource,
                session.resource.known_hosts.as_deref(),
                &session.credentials,
                session.upstream_addr,
                &session.host_names,
            ) {
                Ok(config) => config,
                Err(error) => {
                    tracing::warn!(%error, "ssh session not set up");
                    return Closed::from(error.to_string());
                }
            };
            let gate = PipelineGate {
                session: &session,
                pipeline: tokio::sync::Mutex::new(Pipeline::new(&session)),
            };
            let agent = Box::new(Counted {
                inner: agent,
                counts: Arc::clone(&session.counts),
            });
            Closed::from(proxy::serve(&gate, config, agent, upstream).await)
        })
    }
}

/// The agent's stream, counted into the session record's byte counts.
struct Counted {
    inner: Box<dyn ByteStream>,
    counts: Arc<ByteCounts>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counts
            .up
            .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &result {
            self.counts
                .down
                .fetch_add(*written as u64, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The pipeline, shared by a connection's channels.
struct PipelineGate<'s> {
    session: &'s SessionInfo,
    pipeline: tokio::sync::Mutex<Pipeline<'s>>,
}

impl PipelineGate<'_> {
    fn operation(request: &Request) -> Operation {
        Operation {
            protocol: Protocol::Ssh,
            class: request.class,
            verb: request.verb.clone(),
            targets: Vec::new(),
            summary: crate::pipeline::truncated(request.summary.clone()),
            parameters: Vec::new(),
            details: Details::Ssh {
                request: request.request.to_owned(),
                command: request.command.clone(),
                forward: None,
            },
            // Terminal output and file streams cannot be masked: a rule with a mask
            // profile refuses SSH requests rather than let them through unmasked.
            unmaskable: Some("SSH channel data is not masked".into()),
        }
    }
}

impl PipelineGate<'_> {
    /// The policy's answer for `request`, before any hold: the pipeline's judge with
    /// the command line for `ssh = { commands }` narrowing; a mask profile refuses (SSH
    /// output cannot be masked); a push must respect the deciding rule's protected and
    /// read-only refs.
    fn judge(&self, request: &Request) -> Decision {
        let session = self.session;
        let mut decision = session.policy.decide_command(
            &session.facts(),
            &session.resource.name,
            request.class,
            request.command.as_deref(),
        );
        if decision.action != Action::Deny
            && let Some(profile) = &decision.mask
        {
            decision.action = Action::Deny;
            decision.reason = format!(
                "{}; but SSH channel data cannot be masked under mask profile `{profile}`",
                decision.reason
            );
        }
        if decision.action != Action::Deny
            && !request.pushed.is_empty()
            && let Some(why) = self.ref_protection(&decision, &request.pushed)
        {
            decision.action = Action::Deny;
            decision.reason = why;
        }
        if let Some(why) = request.refused {
            decision.action = Action::Deny;
            decision.rule = "ssh".into();
            decision.reason = format!("{why} by sluice");
        }
        decision
    }

    /// Why the rule that let a push through does not let these ref changes through
    /// (`ssh.read_only_refs`, `ssh.protected_refs`), if it does not. A grant is a
    /// person's explicit permission and protects nothing; a rule that is gone (a
    /// reload in between) protects everything.
    fn ref_protection(&self, decision: &Decision, pushed: &[PushedRef]) -> Option<String> {
        if decision.rule.starts_with("grant:") {
            return None;
        }
        let policy = self.session.policy.current();
        let Some(rule) = policy.rule_named(&decision.rule) else {
            return Some(format!(
                "rule `{}` is no longer in the policy (reloaded); the push is refused",
                decision.rule
            ));
        };
        let narrowing = rule.ssh.as_ref()?;
        for pushed in pushed {
            if narrowing.read_only(&pushed.name) {
                return Some(format!(
                    "{} is read-only under rule `{}` (ssh.read_only_refs): {} refused",
                    pushed.name,
                    rule.name,
                    pushed.change.verb()
                ));
            }
            if narrowing.protects(&pushed.name) {
                let why = match &pushed.change {
                    RefChange::Delete => "deleting it".to_owned(),
                    RefChange::Force(why) => format!("a force-push (not a fast-forward: {why})"),
                    RefChange::Create | RefChange::FastForward => continue,
                };
                return Some(format!(
                    "{} is protected by rule `{}` (ssh.protected_refs): {why} is refused",
                    pushed.name, rule.name
                ));
            }
        }
        None
    }
}

fn refused(decision: &Decision) -> String {
    format!(
        "denied by policy rule `{}`: {}",
        decision.rule, decision.reason
    )
}

impl Gate for PipelineGate<'_> {
    type Ticket = Option<OperationRecord>;

    async fn decide(
        &self,
        request: Request,
        agent_gone: oneshot::Receiver<()>,
    ) -> Verdict<Self::Ticket> {
        let operation = Self::operation(&request);
        let (decision, record) = {
            let mut pipeline = self.pipeline.lock().await;
            let decision = self.judge(&request);
            let record = pipeline.record(&operation, &decision);
            if let Err(error) = pipeline.flush_audit().await {
                tracing::error!(%error, "cannot record an ssh request: refusing it");
                return Verdict {
                    allowed: false,
                    message: "the request could not be recorded".into(),
                    ticket: Some(record),
                };
            }
            (decision, record)
        };
        match decision.action {
            Action::Allow => Verdict {
                allowed: true,
                message: String::new(),
                ticket: Some(record),
            },
            Action::Deny => Verdict {
                allowed: false,
                message: refused(&decision),
                ticket: Some(record),
            },
            Action::Review => {
                let guarded = HeldRecords::new(vec![record], &self.session.store);
                // `hold` only needs the session: a pipeline of its own keeps the shared
                // one free for the connection's other channels meanwhile.
                let holder = Pipeline::new(self.session);
                let gone = async move {
                    let _ = agent_gone.await;
                };
                let resolution = holder.hold(&guarded.records[0], &decision, gone).await;
                let Some(mut record) = guarded.release().pop() else {
                    return Verdict {
                        allowed: false,
                        message: "not approved".into(),
                        ticket: None,
                    };
                };
                record.approval = Some(approval_record(&resolution));
                match resolution.outcome {
                    HoldOutcome::Approved => Verdict {
                        allowed: true,
                        message: String::new(),
                        ticket: Some(record),
                    },
                    HoldOutcome::Withdrawn => {
                        self.session
                            .record_withdrawn(vec![record], &resolution)
                            .await;
                        Verdict {
                            allowed: false,
                            message: refusal_text(&resolution),
                            ticket: None,
                        }
                    }
                    HoldOutcome::Denied | HoldOutcome::TimedOut => Verdict {
                        allowed: false,
                        message: refusal_text(&resolution),
                        ticket: Some(record),
                    },
                }
            }
        }
    }

    fn refuses(&self, request: &Request) -> bool {
        self.judge(request).action == Action::Deny
    }

    async fn finish(&self, ticket: Self::Ticket, outcome: Outcome) {
        let Some(mut record) = ticket else {
            return;
        };
        record.duration_us = outcome
            .started
            .map(|started| u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        record.tag = match (&outcome.exit_status, &outcome.exit_signal) {
            (_, Some(signal)) => Some(format!("signal {signal}")),
            (Some(status), None) => Some(format!("exit {status}")),
            (None, None) => None,
        };
        record.rows = Some(outcome.bytes_out);
        record.parameters = vec![
            format!("stdin:{}", outcome.bytes_in),
            format!("stdout:{}", outcome.bytes_out),
            format!("stderr:{}", outcome.bytes_err),
        ];
        if record.error.is_none() {
            record.error = outcome.error;
        }
        if let Some(cast) = outcome.cast
            && cast.len() > 200
        {
            self.store_cast(&record, cast).await;
        }
        self.session.store_result(record).await;
    }

    async fn forward(
        &self,
        host: String,
        port: u16,
        channel: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
    ) -> Result<(), String> {
        let destination = match host.parse::<IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, port)),
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .ok()
                .and_then(|mut addresses| addresses.next()),
        };
        let Some(destination) = destination else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Err(format!("cannot resolve {host}"));
        };
        let request = Request {
            request: "direct-tcpip",
            class: crate::policy::Operation::Connect,
            verb: "direct-tcpip".into(),
            command: Some(format!("{host}:{port}")),
            summary: format!("direct-tcpip {host}:{port}"),
            refused: None,
            pushed: Vec::new(),
        };
        let operation = Self::operation(&request);
        let target = NestedTarget {
            destination,
            host_name: host.parse::<IpAddr>().is_err().then(|| host.clone()),
            via: "ssh_direct_tcpip",
        };
        let opened = self.session.nested.open(self.session, target).await;
        let decision = match &opened {
            Ok(nested) => Decision {
                action: Action::Allow,
                rule: format!("session {}", nested.id()),
                reason: format!("opened as session {}", nested.id()),
                resource: None,
                mask: None,
                timeout: None,
            },
            Err(refusal) => Decision {
                action: Action::Deny,
                rule: match refusal {
                    NestedRefusal::Denied { rule, .. } => rule.clone(),
                    _ => "ssh".into(),
                },
                reason: refusal.to_string(),
                resource: None,
                mask: None,
                timeout: None,
            },
        };
        let mut record = {
            let mut pipeline = self.pipeline.lock().await;
            let record = pipeline.record(&operation, &decision);
            let _ = pipeline.flush_audit().await;
            record
        };
        match opened {
            Ok(nested) => {
                reply.accept().await;
                // The forwarded stream is the nested session's: counted there, never
                // stored here.
                tokio::spawn(nested.serve(Box::new(channel.into_stream())));
                self.session.store_result(record).await;
                Ok(())
            }
            Err(refusal) => {
                record.error = Some(refusal.to_string());
                self.session.store_result(record).await;
                let failure = match refusal {
                    NestedRefusal::Denied { .. } => {
                        russh::ChannelOpenFailure::AdministrativelyProhibited
                    }
                    _ => russh::ChannelOpenFailure::ConnectFailed,
                };
                reply.reject(failure).await;
                drop(channel);
                Err(refusal.to_string())
            }
        }
    }
}

impl PipelineGate<'_> {
    /// Keeps a channel's terminal recording (asciicast v3) in the store, by session and
    /// operation number.
    async fn store_cast(&self, record: &OperationRecord, cast: Vec<u8>) {
        if let Err(error) = self
            .session
            .store
            .put_recording(record.session_id, record.seq, cast)
            .await
        {
            tracing::error!(%error, seq = record.seq, "cannot store a terminal recording");
        }
    }
}
