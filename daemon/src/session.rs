//! The life of one redirected connection: identify, decide, record, relay, record.
//!
//! Every path through here ends with a stored record, and the open record of an
//! allowed session is durable before the first byte goes upstream. Whenever a step
//! cannot be completed (no identity, no store, no upstream) the agent's connection is
//! reset: the daemon fails closed.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use crate::{
    bpf::Interception,
    cgroup::ManagedRoot,
    credentials::Credentials,
    events::{Activity, Context, Event},
    identity::{self, Redirected},
    policy::{Action, AgentFacts, Decision, Protocol},
    proxy::postgres::{PgSession, cancel::CancelRegistry},
    relay::{self, ByteCounts, reset},
    store::{Durability, SessionRecord, SessionState, Store},
};

pub use crate::policy::PolicyHandle;

/// What every session needs, shared.
pub struct SessionContext {
    pub interception: Arc<Interception>,
    /// The agents' DNS resolver; `None` when `[dns] port = 0`.
    pub dns: Option<Arc<crate::dns::Resolver>>,
    pub root: Arc<ManagedRoot>,
    pub policy: Arc<PolicyHandle>,
    pub store: Store,
    pub upstream_connect_timeout: Duration,
    pub credentials: Arc<Credentials>,
    pub cancels: Arc<CancelRegistry>,
    /// The HMAC key of the `hash` masking strategy.
    pub mask_key: Arc<[u8]>,
    /// Where statements under `review` rules wait for a human.
    pub approvals: Arc<crate::approvals::ApprovalBroker>,
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
                crate::metrics::global().connection("unidentified");
                let record = unidentified_record(id, peer, &error.to_string());
                store_final(&context.store, &record, Activity::session_open(&record)).await;
                reset(agent);
                return;
            }
        };
    let identity = &redirected.identity;
    tracing::Span::current().record("agent", identity.agent.as_str());
    // One snapshot decides and names the resource, so a reload in between cannot
    // leave a decoded resource relayed undecoded.
    let policy = context.policy.current();
    let facts = AgentFacts {
        agent: &identity.agent,
        uid: identity.uid,
        exe: identity.exe.as_deref().map(Path::new),
    };
    // A resource named by host name matches only addresses the resolver gave this agent.
    let host_names = context
        .dns
        .as_ref()
        .map(|dns| {
            dns.names()
                .names(&identity.agent, redirected.destination.ip())
        })
        .unwrap_or_default();
    let by_host_name = policy
        .resource_for_host_names(redirected.destination, &host_names)
        .cloned();
    let mut decision = match &by_host_name {
        Some(resource) => policy.decide_with_grants(
            &context.policy.grants(),
            &facts,
            Some(&resource.name),
            crate::policy::Operation::Connect,
            OffsetDateTime::now_utc(),
        ),
        None => policy.decide_connection_with_grants(
            &context.policy.grants(),
            &facts,
            redirected.destination,
            OffsetDateTime::now_utc(),
        ),
    };
    if decision.action == Action::Allow
        && let Some(resource) = &by_host_name
        && let Some(denial) = crate::dns::check_server_name(&agent, resource, &host_names).await
    {
        decision = denial;
    }
    let mut record = open_record(id, &redirected, &decision);
    crate::metrics::global().decision("connection", decision.action);

    if decision.action != Action::Allow {
        crate::metrics::global().connection("denied");
        tracing::info!(
            agent = %identity.agent,
            destination = %redirected.destination,
            rule = %decision.rule,
            "connection denied"
        );
        record.close(OffsetDateTime::now_utc(), "denied".into());
        store_final(&context.store, &record, Activity::session_open(&record)).await;
        reset(agent);
        return;
    }

    let writing = std::time::Instant::now();
    // In strict mode the session_open event is durable with the record, before any
    // byte goes upstream.
    let opened_event = Event::now(
        Context::of_session(&record),
        Activity::session_open(&record),
    );
    let opened = tokio::time::timeout(
        OPEN_RECORD_TIMEOUT,
        context.store.put_session_with_events(
            &record,
            &[opened_event],
            context.store.audit_durability(),
        ),
    )
    .await;
    let written = matches!(opened, Ok(Ok(_)));
    crate::metrics::global().store_write("session", true, written, writing.elapsed());
    crate::metrics::global().connection(if written { "allowed" } else { "record_failed" });
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

    // DNS over TCP is answered by the resolver; the server the agent named is never dialled.
    if redirected.destination.port() == crate::dns::DNS_PORT
        && let Some(resolver) = &context.dns
    {
        drop(policy);
        let counts = ByteCounts::default();
        let close_reason = crate::dns::serve_tcp(
            resolver,
            agent,
            identity,
            redirected.source,
            redirected.destination,
            id,
            &counts,
        )
        .await;
        (record.bytes_up, record.bytes_down) = counts.snapshot();
        record.close(OffsetDateTime::now_utc(), close_reason);
        store_close(&context.store, &record, "dns").await;
        return;
    }

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
            store_final(&context.store, &record, Activity::session_close(&record)).await;
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
    let protocol = match &resource {
        Some(resource) if resource.protocol == Protocol::Postgres => "postgres",
        Some(resource) if resource.protocol == Protocol::Ssh => "ssh",
        _ => "tcp",
    };
    let close_reason = match resource {
        Some(resource) if resource.protocol == Protocol::Postgres => {
            let session = PgSession {
                session_id: id,
                agent: identity.agent.clone(),
                pid: identity.pid,
                uid: identity.uid,
                exe: identity.exe.as_deref().map(Into::into),
                resource,
                upstream_addr: redirected.destination,
                policy: Arc::clone(&context.policy),
                credentials: Arc::clone(&context.credentials),
                cancels: Arc::clone(&context.cancels),
                store: context.store.clone(),
                mask_key: Arc::clone(&context.mask_key),
                approvals: Arc::clone(&context.approvals),
                audit_context: Context {
                    protocol: Some("postgres".into()),
                    ..Context::of_session(&record)
                },
            };
            crate::proxy::postgres::proxy(session, agent, upstream, &counts).await
        }
        Some(resource) if resource.protocol == Protocol::Ssh => {
            match crate::protocols::ssh::configure(
                &resource,
                resource.known_hosts.as_deref(),
                &context.credentials,
                redirected.destination,
                &host_names,
            ) {
                Err(error) => {
                    tracing::warn!(%error, "ssh session not set up");
                    error.to_string()
                }
                Ok(config) => {
                    let gate = crate::protocols::ssh::interim::InterimGate {
                        policy: Arc::clone(&context.policy),
                        store: context.store.clone(),
                        agent: identity.agent.clone(),
                        uid: identity.uid,
                        exe: identity.exe.as_deref().map(Into::into),
                        resource: resource.name.clone(),
                        session_id: id,
                        seq: Default::default(),
                    };
                    crate::protocols::ssh::proxy::serve(
                        &gate,
                        config,
                        Box::new(agent),
                        Box::new(upstream),
                    )
                    .await
                }
            }
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
    store_close(&context.store, &record, protocol).await;
}

/// Stores a session's closed record and its `session_close` event.
async fn store_close(store: &Store, record: &SessionRecord, protocol: &str) {
    let context = Context {
        protocol: Some(protocol.to_owned()),
        ..Context::of_session(record)
    };
    let closed = Event::now(context, Activity::session_close(record));
    if let Err(error) = store
        .put_session_with_events(record, &[closed], store.audit_durability())
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
async fn store_final(store: &Store, record: &SessionRecord, activity: Activity) {
    let event = Event::now(Context::of_session(record), activity);
    if let Err(error) = store
        .put_session_with_events(record, &[event], Durability::Durable)
        .await
    {
        tracing::error!(%error, id = record.id, "cannot record the refused connection");
    }
}
