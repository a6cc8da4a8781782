//! The life of one redirected connection: identify, decide, record, relay, record.
//!
//! Every path through here ends with a stored record, and the open record of an
//! allowed session is durable before the first byte goes upstream. Whenever a step
//! cannot be completed (no identity, no store, no upstream) the agent's connection is
//! reset: the daemon fails closed.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use crate::{
    bpf::Interception,
    cgroup::ManagedRoot,
    credentials::Credentials,
    identity::{self, Redirected},
    policy::{Action, AgentFacts, Decision, Policy, Protocol},
    proxy::postgres::{PgSession, cancel::CancelRegistry},
    relay::{self, ByteCounts, reset},
    store::{Durability, SessionRecord, SessionState, Store},
};

/// The live policy; replaced whole on reload, read per decision.
#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Installs a new policy for every decision from now on.
    pub fn replace(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

/// What every session needs, shared.
pub struct SessionContext {
    pub interception: Interception,
    pub root: Arc<ManagedRoot>,
    pub policy: Arc<PolicyHandle>,
    pub store: Store,
    pub upstream_connect_timeout: Duration,
    pub credentials: Arc<Credentials>,
    pub cancels: Arc<CancelRegistry>,
    /// The HMAC key of the `hash` masking strategy.
    pub mask_key: Arc<[u8]>,
}

/// The longest the open record may take to become durable before the session is
/// refused: a store that cannot write must not hold agents hanging.
const OPEN_RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles one accepted connection to the end.
pub async fn handle(
    context: Arc<SessionContext>,
    agent: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let id = context.store.next_session_id();
    let span = tracing::info_span!("session", id, %peer, agent = tracing::field::Empty);
    run(context, agent, id, peer, local).instrument(span).await;
}

async fn run(
    context: Arc<SessionContext>,
    agent: TcpStream,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let redirected =
        match identity::identify(&context.interception, &context.root, peer, local).await {
            Ok(redirected) => redirected,
            Err(error) => {
                tracing::warn!(%error, "unidentified connection refused");
                let record = unidentified_record(id, peer, &error.to_string());
                store_final(&context.store, &record).await;
                reset(agent);
                return;
            }
        };
    let identity = &redirected.identity;
    tracing::Span::current().record("agent", identity.agent.as_str());
    let policy = context.policy.current();
    let decision = policy.decide_connection(
        &AgentFacts {
            agent: &identity.agent,
            uid: identity.uid,
            exe: identity.exe.as_deref().map(Path::new),
        },
        redirected.destination,
    );
    let mut record = open_record(id, &redirected, &decision);

    if decision.action != Action::Allow {
        tracing::info!(
            agent = %identity.agent,
            destination = %redirected.destination,
            rule = %decision.rule,
            "connection denied"
        );
        record.close(OffsetDateTime::now_utc(), "denied".into());
        store_final(&context.store, &record).await;
        reset(agent);
        return;
    }

    let opened = tokio::time::timeout(
        OPEN_RECORD_TIMEOUT,
        context.store.put_session(&record, Durability::Durable),
    )
    .await;
    if let Err(error) = opened
        .map_err(|_| "timed out".to_owned())
        .and_then(|result| result.map_err(|e| e.to_string()))
    {
        tracing::error!(%error, "cannot record the session: refusing it");
        reset(agent);
        return;
    }
    tracing::info!(
        agent = %identity.agent,
        pid = identity.pid,
        destination = %redirected.destination,
        rule = %decision.rule,
        "session open"
    );

    let upstream = tokio::time::timeout(
        context.upstream_connect_timeout,
        TcpStream::connect(redirected.destination),
    )
    .await
    .map_err(|_| "timed out".to_owned())
    .and_then(|result| result.map_err(|e| e.to_string()));
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%error, "upstream unreachable");
            record.close(
                OffsetDateTime::now_utc(),
                format!("upstream_unreachable: {error}"),
            );
            store_final(&context.store, &record).await;
            reset(agent);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = agent.set_nodelay(true);
    record.upstream_local = upstream.local_addr().ok().map(|a| a.to_string());

    let counts = ByteCounts::default();
    let resource = decision
        .resource
        .as_deref()
        .and_then(|name| policy.resource(name))
        .cloned();
    drop(policy);
    let close_reason = match resource {
        Some(resource) if resource.protocol == Protocol::Postgres => {
            let session = PgSession {
                session_id: id,
                agent: identity.agent.clone(),
                uid: identity.uid,
                exe: identity.exe.as_deref().map(Into::into),
                resource,
                upstream_addr: redirected.destination,
                policy: Arc::clone(&context.policy),
                credentials: Arc::clone(&context.credentials),
                cancels: Arc::clone(&context.cancels),
                store: context.store.clone(),
                mask_key: Arc::clone(&context.mask_key),
            };
            crate::proxy::postgres::proxy(session, agent, upstream, &counts).await
        }
        _ => relay::relay(agent, upstream, &counts).await.close_reason(),
    };
    (record.bytes_up, record.bytes_down) = counts.snapshot();
    record.close(OffsetDateTime::now_utc(), close_reason);
    tracing::info!(
        bytes_up = record.bytes_up,
        bytes_down = record.bytes_down,
        reason = record.close_reason.as_deref().unwrap_or_default(),
        "session closed"
    );
    if let Err(error) = context
        .store
        .put_session(&record, Durability::Batched)
        .await
    {
        tracing::error!(%error, "cannot record the session's end");
    }
}

fn open_record(id: u64, redirected: &Redirected, decision: &Decision) -> SessionRecord {
    let identity = &redirected.identity;
    SessionRecord {
        id,
        state: SessionState::Open,
        agent: identity.agent.clone(),
        pid: identity.pid,
        tid: identity.tid,
        uid: identity.uid,
        gid: identity.gid,
        comm: identity.comm.clone(),
        exe: identity.exe.clone(),
        cgroup: identity.cgroup.clone(),
        source: redirected.source.to_string(),
        destination: redirected.destination.to_string(),
        upstream_local: None,
        transport: "tcp".into(),
        resource: decision.resource.clone(),
        decision: decision.record(),
        started_at: OffsetDateTime::now_utc(),
        ended_at: None,
        bytes_up: 0,
        bytes_down: 0,
        close_reason: None,
    }
}

/// A connection that reached the listener without a redirect record.
fn unidentified_record(id: u64, peer: SocketAddr, why: &str) -> SessionRecord {
    SessionRecord {
        source: peer.to_string(),
        ..SessionRecord::refused(id, "unidentified", why)
    }
}

/// Stores a record that will not change again; failures are logged (the connection
/// is already being refused).
async fn store_final(store: &Store, record: &SessionRecord) {
    if let Err(error) = store.put_session(record, Durability::Durable).await {
        tracing::error!(%error, id = record.id, "cannot record the refused connection");
    }
}
