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
    identity::{self, Identity, Redirected},
    pipeline::{
        BoxFuture, ByteStream, Dial, NestedDispatch, NestedRefusal, NestedSession, NestedTarget,
        SessionInfo, Upstream,
    },
    policy::{Action, AgentFacts, Decision, Resource},
    protocols::Registry,
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
    /// The protocol handlers: a resource's protocol picks its decoder here.
    pub registry: Arc<Registry>,
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

/// The policy's answer for a new connection, and the resource it is about.
struct Judged {
    decision: Decision,
    /// The resource, when the connection is allowed to one.
    resource: Option<Resource>,
    /// The host name the resource was matched by, if it was.
    host_name: Option<String>,
}

/// Decides a connection of `identity` to `destination`, which the agent knows by
/// `host_names` (resources named by host name match only those). One policy snapshot
/// decides and names the resource, so a reload in between cannot leave a decoded
/// resource relayed undecoded.
fn judge_connection(
    context: &SessionContext,
    identity: &Identity,
    destination: SocketAddr,
    host_names: &[String],
) -> (Judged, Option<Resource>) {
    let policy = context.policy.current();
    let facts = AgentFacts {
        agent: &identity.agent,
        uid: identity.uid,
        exe: identity.exe.as_deref().map(Path::new),
        workload: identity.workload.as_deref(),
    };
    let by_host_name = policy
        .resource_for_host_names(destination, host_names)
        .cloned();
    let decision = match &by_host_name {
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
            destination,
            OffsetDateTime::now_utc(),
        ),
    };
    let resource = decision
        .resource
        .as_deref()
        .and_then(|name| policy.resource(name))
        .cloned();
    let host_name = by_host_name
        .as_ref()
        .and_then(|_| host_names.first().cloned());
    (
        Judged {
            decision,
            resource,
            host_name,
        },
        by_host_name,
    )
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
    // A resource named by host name matches only addresses the resolver gave this agent.
    let host_names = context
        .dns
        .as_ref()
        .map(|dns| {
            dns.names()
                .names(&identity.agent, redirected.destination.ip())
        })
        .unwrap_or_default();
    let (mut judged, by_host_name) =
        judge_connection(&context, identity, redirected.destination, &host_names);
    // A host-named connection whose agent stayed silent through the first look has its
    // first bytes checked by whoever relays them.
    let mut unchecked_server_name = None;
    if judged.decision.action == Action::Allow
        && let Some(resource) = &by_host_name
    {
        match crate::dns::check_server_name(&agent, resource, &host_names).await {
            Ok(crate::dns::ServerName::Checked) => {}
            Ok(crate::dns::ServerName::NotYetSent) => unchecked_server_name = Some(resource),
            Err(denial) => judged.decision = denial,
        }
    }
    let decision = &judged.decision;
    let mut record = open_record(id, &redirected, decision);
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

    if let Err(error) = open_durably(&context.store, &record).await {
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

    let registry = Arc::clone(&context.registry);
    let handler = judged
        .resource
        .as_ref()
        .and_then(|resource| registry.handler(resource.protocol));
    let upstream = if handler.is_none_or(|handler| handler.dial() == Dial::BySession) {
        match dial(&context, redirected.destination).await {
            Ok(upstream) => Some(upstream),
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
        }
    } else {
        None
    };
    let _ = agent.set_nodelay(true);
    record.upstream_local = upstream
        .as_ref()
        .and_then(|upstream| upstream.local_addr().ok())
        .map(|a| a.to_string());

    let counts = Arc::new(ByteCounts::default());
    let (protocol, close_reason) = match (handler, judged.resource) {
        (Some(handler), Some(resource)) => {
            let protocol = resource.protocol.as_str();
            let info = session_info(
                &context,
                &record,
                None,
                identity.clone(),
                resource,
                (judged.host_name, host_names),
                Arc::clone(&counts),
            );
            let upstream = match upstream {
                Some(upstream) => Upstream::Dialled(Box::new(upstream)),
                None => Upstream::NotDialled,
            };
            let closed = handler.serve(info, Box::new(agent), upstream).await;
            if closed.upstream_local.is_some() {
                record.upstream_local = closed.upstream_local;
            }
            (protocol, closed.reason)
        }
        _ => match upstream {
            Some(upstream) => {
                let check = unchecked_server_name
                    .map(|resource| crate::dns::first_bytes_check(resource, &host_names));
                let end = relay::relay_checked(agent, upstream, &counts, check).await;
                if let (relay::RelayEnd::Refused { reason }, Some(resource)) =
                    (&end, unchecked_server_name)
                {
                    // Allowed at open, refused on its first bytes: the record ends as
                    // the denial it turned out to be.
                    tracing::warn!(%reason, "the agent's first bytes were refused");
                    let denial = crate::dns::server_name_denial(resource, reason.clone());
                    crate::metrics::global().decision("connection", denial.action);
                    record.decision = denial.record();
                }
                ("tcp", end.close_reason())
            }
            None => ("tcp", "upstream_unreachable: not dialled".to_owned()),
        },
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

/// Dials the upstream within the configured timeout, without Nagle's delay.
async fn dial(context: &SessionContext, destination: SocketAddr) -> Result<TcpStream, String> {
    let upstream = tokio::time::timeout(
        context.upstream_connect_timeout,
        TcpStream::connect(destination),
    )
    .await
    .map_err(|_| "timed out".to_owned())
    .and_then(|result| result.map_err(|e| e.to_string()))?;
    let _ = upstream.set_nodelay(true);
    Ok(upstream)
}

/// Makes an allowed session's open record and `session_open` event durable (in strict
/// mode) before any byte goes upstream; an error refuses the session.
async fn open_durably(store: &Store, record: &SessionRecord) -> Result<(), String> {
    let writing = std::time::Instant::now();
    let opened_event = Event::now(Context::of_session(record), Activity::session_open(record));
    let opened = tokio::time::timeout(
        OPEN_RECORD_TIMEOUT,
        store.put_session_with_events(record, &[opened_event], store.audit_durability()),
    )
    .await;
    let written = matches!(opened, Ok(Ok(_)));
    crate::metrics::global().store_write("session", true, written, writing.elapsed());
    crate::metrics::global().connection(if written { "allowed" } else { "record_failed" });
    opened
        .map_err(|_| "timed out".to_owned())
        .and_then(|result| result.map_err(|e| e.to_string()))
        .map(|_| ())
}

/// What a protocol handler gets to know about its session.
fn session_info(
    context: &Arc<SessionContext>,
    record: &SessionRecord,
    parent_session: Option<u64>,
    identity: Identity,
    resource: Resource,
    host_names: (Option<String>, Vec<String>),
    counts: Arc<ByteCounts>,
) -> SessionInfo {
    let (host_name, host_names) = host_names;
    let upstream_addr = record
        .destination
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    SessionInfo {
        session_id: record.id,
        parent_session,
        identity,
        audit_context: Context {
            protocol: Some(resource.protocol.to_string()),
            ..Context::of_session(record)
        },
        resource,
        upstream_addr,
        host_name,
        host_names,
        policy: Arc::clone(&context.policy),
        store: context.store.clone(),
        credentials: Arc::clone(&context.credentials),
        approvals: Arc::clone(&context.approvals),
        mask_key: Arc::clone(&context.mask_key),
        counts,
        upstream_connect_timeout: context.upstream_connect_timeout,
        nested: Arc::new(Nested {
            context: Arc::clone(context),
        }),
    }
}

/// Opens the connections handlers carry inside their own (CONNECT tunnels, SSH
/// forwards) as sessions of their own: the parent's agent, judged and recorded anew,
/// then dispatched through the registry.
struct Nested {
    context: Arc<SessionContext>,
}

impl NestedDispatch for Nested {
    fn open<'a>(
        &'a self,
        parent: &'a SessionInfo,
        target: NestedTarget,
    ) -> BoxFuture<'a, Result<Box<dyn NestedSession>, NestedRefusal>> {
        Box::pin(open_nested(Arc::clone(&self.context), parent, target))
    }
}

async fn open_nested(
    context: Arc<SessionContext>,
    parent: &SessionInfo,
    target: NestedTarget,
) -> Result<Box<dyn NestedSession>, NestedRefusal> {
    let id = context.store.next_session_id();
    let identity = parent.identity.clone();
    let host_names: Vec<String> = target
        .host_name
        .iter()
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let (judged, _) = judge_connection(&context, &identity, target.destination, &host_names);
    let redirected = Redirected {
        identity,
        source: parent
            .audit_context
            .source
            .as_deref()
            .and_then(|source| source.parse().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        destination: target.destination,
    };
    let mut record = open_record(id, &redirected, &judged.decision);
    record.parent_session = Some(parent.session_id);
    crate::metrics::global().decision("connection", judged.decision.action);
    tracing::info!(
        parent = parent.session_id,
        id,
        via = target.via,
        destination = %target.destination,
        action = %judged.decision.action,
        "nested connection"
    );
    if judged.decision.action != Action::Allow {
        crate::metrics::global().connection("denied");
        record.close(OffsetDateTime::now_utc(), "denied".into());
        store_final(&context.store, &record, Activity::session_open(&record)).await;
        return Err(NestedRefusal::Denied {
            rule: judged.decision.rule,
            reason: judged.decision.reason,
        });
    }
    open_durably(&context.store, &record)
        .await
        .map_err(NestedRefusal::NotRecorded)?;
    let dials = judged
        .resource
        .as_ref()
        .and_then(|resource| context.registry.handler(resource.protocol))
        .is_none_or(|handler| handler.dial() == Dial::BySession);
    let upstream = if dials {
        match dial(&context, target.destination).await {
            Ok(upstream) => Some(upstream),
            Err(error) => {
                record.close(
                    OffsetDateTime::now_utc(),
                    format!("upstream_unreachable: {error}"),
                );
                store_final(&context.store, &record, Activity::session_close(&record)).await;
                return Err(NestedRefusal::Unreachable(error));
            }
        }
    } else {
        None
    };
    record.upstream_local = upstream
        .as_ref()
        .and_then(|upstream| upstream.local_addr().ok())
        .map(|a| a.to_string());
    Ok(Box::new(OpenNested {
        context,
        record,
        identity: redirected.identity,
        resource: judged.resource,
        host_name: target.host_name,
        upstream,
    }))
}

/// A nested session allowed, recorded and dialled, waiting for its agent stream.
struct OpenNested {
    context: Arc<SessionContext>,
    record: SessionRecord,
    identity: Identity,
    resource: Option<Resource>,
    host_name: Option<String>,
    upstream: Option<TcpStream>,
}

impl NestedSession for OpenNested {
    fn id(&self) -> u64 {
        self.record.id
    }

    fn serve(self: Box<Self>, agent: Box<dyn ByteStream>) -> BoxFuture<'static, String> {
        let span = tracing::info_span!(
            "session",
            id = self.record.id,
            parent = self.record.parent_session
        );
        Box::pin(self.run(agent).instrument(span))
    }
}

impl OpenNested {
    async fn run(self, agent: Box<dyn ByteStream>) -> String {
        let Self {
            context,
            mut record,
            identity,
            resource,
            host_name,
            upstream,
        } = self;
        let counts = Arc::new(ByteCounts::default());
        let registry = Arc::clone(&context.registry);
        let handler = resource
            .as_ref()
            .and_then(|resource| registry.handler(resource.protocol));
        let (protocol, close_reason) = match (handler, resource) {
            (Some(handler), Some(resource)) => {
                let protocol = resource.protocol.as_str();
                let parent = record.parent_session;
                let info = session_info(
                    &context,
                    &record,
                    parent,
                    identity,
                    resource,
                    (host_name.clone(), host_name.into_iter().collect()),
                    Arc::clone(&counts),
                );
                let upstream = match upstream {
                    Some(upstream) => Upstream::Dialled(Box::new(upstream)),
                    None => Upstream::NotDialled,
                };
                let closed = handler.serve(info, agent, upstream).await;
                if closed.upstream_local.is_some() {
                    record.upstream_local = closed.upstream_local;
                }
                (protocol, closed.reason)
            }
            _ => match upstream {
                Some(upstream) => ("tcp", relay_boxed(agent, upstream, &counts).await),
                None => ("tcp", "upstream_unreachable: not dialled".to_owned()),
            },
        };
        (record.bytes_up, record.bytes_down) = counts.snapshot();
        record.close(OffsetDateTime::now_utc(), close_reason.clone());
        store_close(&context.store, &record, protocol).await;
        close_reason
    }
}

/// Relays a nested (boxed) agent stream to its upstream as opaque bytes.
async fn relay_boxed(
    mut agent: Box<dyn ByteStream>,
    mut upstream: TcpStream,
    counts: &ByteCounts,
) -> String {
    match tokio::io::copy_bidirectional(&mut agent, &mut upstream).await {
        Ok((up, down)) => {
            counts
                .up
                .fetch_add(up, std::sync::atomic::Ordering::Relaxed);
            counts
                .down
                .fetch_add(down, std::sync::atomic::Ordering::Relaxed);
            "client_closed".into()
        }
        Err(error) => format!("relay_error: {error}"),
    }
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
        parent_session: None,
        identity: identity
            .workload
            .as_ref()
            .map(|workload| workload.record.clone()),
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
