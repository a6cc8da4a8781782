//! The agents' DNS resolver: a small forwarder inside the daemon.
//!
//! The programs send every UDP datagram an agent addresses to port 53 here instead
//! (replies appear to come from the server the agent asked), and TCP connections to
//! port 53 arrive through the redirect listener ([`serve_tcp`]). Each query is:
//!
//! 1. parsed (hickory-proto); malformed queries get FORMERR, or nothing when not even
//!    the header is there;
//! 2. judged by policy as the operation `read` on the resource the original server
//!    address (port 53) belongs to; refused queries get REFUSED and never leave;
//! 3. recorded (a session per UDP query or TCP connection, a statement per query)
//!    durably before it is forwarded, then again with the answer and its audit event
//!    (`dns`: name, type, rcode, answers) before the answer goes back;
//! 4. forwarded to the configured upstreams in turn (UDP with a timeout, TCP for TCP
//!    queries), never to the server the agent named; an answer that cannot be parsed or
//!    does not answer the question is SERVFAIL;
//! 5. mined for addresses: A/AAAA answers (through CNAME chains) teach the per-agent
//!    [`names::NameCache`] which host names an address stands for, so that policy
//!    resources can name hosts.
//!
//! In-flight UDP queries are bounded ([`DnsConfig::max_in_flight`]); past the bound,
//! datagrams are dropped and the agent's resolver retries. A truncated UDP answer is
//! passed on as it is: the agent retries over TCP, which is forwarded over TCP.
//!
//! Limits: the answer sent back is the upstream's, byte for byte but for the id (no
//! filtering of records); a host process outside the managed cgroup that sends to the
//! resolver from a port an agent's socket used moments before could be taken for that
//! agent (the egress record lives until the LRU map evicts it).

pub mod names;
pub mod sni;
mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::RData,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::{net::UdpSocket, sync::Semaphore};
use tracing::Instrument as _;

pub use names::NameCache;
pub use upstream::Transport;

use crate::{
    bpf::Interception,
    cgroup::ManagedRoot,
    events::{Activity, Context, Event},
    identity::{self, Identity},
    policy::{Action, AgentFacts, Decision, Operation, Protocol},
    session::PolicyHandle,
    store::{DecisionRecord, Durability, SessionRecord, SessionState, StatementRecord, Store},
};

/// The port agents address DNS servers on, over UDP and TCP.
pub const DNS_PORT: u16 = 53;

/// The `[dns]` section of the daemon's configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Upstream resolvers (`"ip:port"`), asked in order. Empty: the `nameserver`s of
    /// /etc/resolv.conf, port 53.
    pub upstreams: Vec<SocketAddr>,
    /// The resolver's UDP port on the redirect addresses. 0 turns the resolver off:
    /// agents' DNS is then refused in the kernel.
    pub port: u16,
    /// How long one upstream may take to answer before the next is asked.
    pub timeout_ms: u64,
    /// UDP queries being answered at once; more are dropped.
    pub max_in_flight: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            port: 15053,
            timeout_ms: 2_000,
            max_in_flight: 256,
        }
    }
}

impl DnsConfig {
    /// The upstreams to use: the configured ones, else /etc/resolv.conf's, never one
    /// of `own` (the resolver's own listeners, which would loop).
    pub fn effective_upstreams(&self, own: &[SocketAddr]) -> Vec<SocketAddr> {
        let candidates = if self.upstreams.is_empty() {
            resolv_conf_nameservers(Path::new("/etc/resolv.conf"))
        } else {
            self.upstreams.clone()
        };
        candidates
            .into_iter()
            .filter(|upstream| !own.contains(upstream))
            .collect()
    }
}

/// The `nameserver` lines of a resolv.conf, as `ip:53`.
pub fn resolv_conf_nameservers(path: &Path) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|address| {
            // A scoped IPv6 address (`fe80::1%eth0`) is not supported: skipped.
            address.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The resolver's shared state.
pub struct Resolver {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    policy: Arc<PolicyHandle>,
    store: Store,
    names: Arc<NameCache>,
    root: Arc<ManagedRoot>,
    in_flight: Arc<Semaphore>,
}

/// Who asked, and whom they meant to ask.
struct Asker<'a> {
    identity: &'a Identity,
    /// The agent's own address.
    source: SocketAddr,
    /// The server the agent addressed.
    server: SocketAddr,
    transport: Transport,
}

impl Resolver {
    pub fn new(
        config: &DnsConfig,
        upstreams: Vec<SocketAddr>,
        policy: Arc<PolicyHandle>,
        store: Store,
        names: Arc<NameCache>,
        root: Arc<ManagedRoot>,
    ) -> Self {
        if upstreams.is_empty() {
            tracing::error!(
                "no upstream DNS resolvers (set [dns] upstreams): every agent query gets SERVFAIL"
            );
        }
        Self {
            upstreams,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            policy,
            store,
            names,
            root,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        }
    }

    /// The per-agent host names the resolver has handed out.
    pub fn names(&self) -> &Arc<NameCache> {
        &self.names
    }

    /// Answers one query; `None` when nothing should be sent back. `session_id` and
    /// `seq` name the statement record the query gets.
    async fn answer(
        &self,
        asker: &Asker<'_>,
        query: &[u8],
        session_id: u64,
        seq: u64,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        let mut statement = StatementRecord::begun(
            session_id,
            seq,
            String::new(),
            Operation::Read.as_str().to_owned(),
            "dns".into(),
            DecisionRecord {
                action: Action::Deny.to_string(),
                rule: "dns:malformed".into(),
                reason: String::new(),
            },
        );
        statement.protocol = Protocol::Dns.as_str().to_owned();

        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(error) => {
                tracing::info!(%error, bytes = query.len(), "malformed DNS query");
                statement.sql = format!("<malformed: {} bytes>", query.len());
                statement.decision.reason = format!("the query could not be parsed: {error}");
                self.record_unanswered(
                    asker,
                    &mut statement,
                    "",
                    "",
                    "FORMERR",
                    Durability::Durable,
                )
                .await;
                return format_error(query);
            }
        };
        let question = match (
            request.metadata.message_type,
            request.metadata.op_code,
            request.queries.as_slice(),
        ) {
            (MessageType::Query, OpCode::Query, [question]) => question.clone(),
            _ => {
                statement.sql = "<not a single standard query>".into();
                statement.decision.reason =
                    "only standard queries with one question are answered".into();
                self.record_unanswered(
                    asker,
                    &mut statement,
                    "",
                    "",
                    "NOTIMP",
                    Durability::Durable,
                )
                .await;
                return encode(&reply_to(&request, ResponseCode::NotImp));
            }
        };
        let query_name = names::normalize(&question.name().to_ascii());
        let query_type = question.query_type().to_string();
        statement.sql = format!("{query_type} {query_name}");

        let decision = self.decide(asker);
        statement.decision = decision.record();
        if decision.action != Action::Allow {
            tracing::info!(name = %query_name, rule = %decision.rule, "DNS query refused");
            statement.duration_us = Some(elapsed_us(started));
            self.record_unanswered(
                asker,
                &mut statement,
                &query_name,
                &query_type,
                rcode_name(ResponseCode::Refused),
                Durability::Durable,
            )
            .await;
            return encode(&reply_to(&request, ResponseCode::Refused));
        }
        // The query leaves the host only once its record is durable.
        if !self
            .record_statement(&statement, None, Durability::Durable)
            .await
        {
            return encode(&reply_to(&request, ResponseCode::ServFail));
        }

        let (reply, response) = match self.forward(&request, asker.transport).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(name = %query_name, %error, "DNS query unanswered");
                statement.error = Some(error);
                statement.duration_us = Some(elapsed_us(started));
                self.record_unanswered(
                    asker,
                    &mut statement,
                    &query_name,
                    &query_type,
                    rcode_name(ResponseCode::ServFail),
                    self.store.audit_durability(),
                )
                .await;
                return encode(&reply_to(&request, ResponseCode::ServFail));
            }
        };
        let answers = self.learn(&asker.identity.agent, &query_name, &response);
        let rcode = rcode_name(response.metadata.response_code);
        tracing::info!(name = %query_name, rcode, answers = ?answers, "DNS query answered");
        statement.tag = Some(if answers.is_empty() {
            rcode.to_owned()
        } else {
            format!("{rcode} {}", answers.join(", "))
        });
        statement.duration_us = Some(elapsed_us(started));
        let event = self.dns_event(asker, &statement, &query_name, &query_type, rcode, answers);
        // The answer reaches the agent only once it is recorded as `[store]` asks.
        self.record_statement(&statement, Some(event), self.store.audit_durability())
            .await;
        Some(reply)
    }

    fn decide(&self, asker: &Asker<'_>) -> Decision {
        let policy = self.policy.current();
        let resource = policy
            .resource_for(asker.server)
            .map(|resource| resource.name.clone());
        policy.decide(
            &AgentFacts {
                agent: &asker.identity.agent,
                uid: asker.identity.uid,
                exe: asker.identity.exe.as_deref().map(Path::new),
                workload: asker.identity.workload.as_deref(),
            },
            resource.as_deref(),
            Operation::Read,
        )
    }

    /// Asks each upstream in turn. Returns the reply to send (the upstream's bytes with
    /// the agent's id) and its parse.
    async fn forward(
        &self,
        request: &Message,
        transport: Transport,
    ) -> Result<(Vec<u8>, Message), String> {
        let agent_id = request.metadata.id;
        let mut upstream_request = request.clone();
        let upstream_id: u16 = rand::random();
        upstream_request.metadata.id = upstream_id;
        let bytes = upstream_request
            .to_vec()
            .map_err(|error| format!("cannot encode the query: {error}"))?;
        let mut last_error = "no upstream resolvers configured".to_owned();
        for &server in &self.upstreams {
            let reply = match upstream::exchange(
                server,
                transport,
                &bytes,
                upstream_id,
                self.timeout,
            )
            .await
            {
                Ok(reply) => reply,
                Err(error) => {
                    last_error = error.to_string();
                    continue;
                }
            };
            let response = match Message::from_vec(&reply) {
                Ok(response) => response,
                Err(error) => {
                    last_error = format!("{server}: unparsable answer: {error}");
                    continue;
                }
            };
            if response.metadata.message_type != MessageType::Response
                || response.queries != request.queries
            {
                last_error = format!("{server}: the answer does not answer the question");
                continue;
            }
            let mut reply = reply;
            reply[..2].copy_from_slice(&agent_id.to_be_bytes());
            return Ok((reply, response));
        }
        Err(last_error)
    }

    /// Teaches the name cache what `response` says about `query_name`, following
    /// CNAMEs from it; returns the answers as text for the record.
    fn learn(&self, agent: &str, query_name: &str, response: &Message) -> Vec<String> {
        let mut chain = vec![query_name.to_owned()];
        let mut chain_ttl = u32::MAX;
        // CNAME records may come in any order: follow until nothing new joins.
        loop {
            let mut grew = false;
            for record in &response.answers {
                if let RData::CNAME(target) = &record.data {
                    let owner = names::normalize(&record.name.to_ascii());
                    let target = names::normalize(&target.0.to_ascii());
                    if chain.contains(&owner) && !chain.contains(&target) && chain.len() < 16 {
                        chain.push(target);
                        chain_ttl = chain_ttl.min(record.ttl);
                        grew = true;
                    }
                }
            }
            if !grew {
                break;
            }
        }
        let mut answers = Vec::new();
        for record in &response.answers {
            let owner = names::normalize(&record.name.to_ascii());
            let ip = match &record.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                RData::CNAME(target) => {
                    answers.push(format!("CNAME {}", names::normalize(&target.0.to_ascii())));
                    None
                }
                other => {
                    answers.push(format!("{} {other}", record.record_type()));
                    None
                }
            };
            let Some(ip) = ip else { continue };
            answers.push(format!("{} {ip}", record.record_type()));
            if response.metadata.response_code != ResponseCode::NoError || !chain.contains(&owner) {
                continue;
            }
            let ttl = Duration::from_secs(u64::from(chain_ttl.min(record.ttl)));
            for name in &chain {
                self.names.learn(agent, ip, name, ttl);
            }
        }
        answers
    }

    /// The audit event of one answered (or refused) query.
    fn dns_event(
        &self,
        asker: &Asker<'_>,
        statement: &StatementRecord,
        name: &str,
        query_type: &str,
        rcode: &str,
        answers: Vec<String>,
    ) -> Event {
        let identity = asker.identity;
        Event::now(
            Context {
                session_id: Some(statement.session_id),
                agent: Some(identity.agent.clone()),
                pid: Some(identity.pid),
                uid: Some(identity.uid),
                gid: Some(identity.gid),
                comm: Some(identity.comm.clone()),
                exe: identity.exe.clone(),
                cgroup: Some(identity.cgroup.clone()),
                resource: self
                    .policy
                    .current()
                    .resource_for(asker.server)
                    .map(|resource| resource.name.clone()),
                source: Some(asker.source.to_string()),
                destination: Some(asker.server.to_string()),
                transport: Some(asker.transport.as_str().to_owned()),
                protocol: Some("dns".into()),
                identity: identity
                    .workload
                    .as_ref()
                    .map(|workload| workload.record.clone()),
            },
            Activity::Dns {
                name: name.to_owned(),
                query_type: query_type.to_owned(),
                rcode: rcode.to_owned(),
                answers,
            },
        )
    }

    /// Writes a statement record, with its event if any; `false` when the store could
    /// not take it.
    /// Records a query that ends with `rcode` and no answers: its tag and its event.
    async fn record_unanswered(
        &self,
        asker: &Asker<'_>,
        statement: &mut StatementRecord,
        name: &str,
        query_type: &str,
        rcode: &str,
        durability: Durability,
    ) {
        statement.tag = Some(rcode.to_owned());
        let event = self.dns_event(asker, statement, name, query_type, rcode, Vec::new());
        self.record_statement(statement, Some(event), durability)
            .await;
    }

    async fn record_statement(
        &self,
        statement: &StatementRecord,
        event: Option<Event>,
        durability: Durability,
    ) -> bool {
        let events: Vec<Event> = event.into_iter().collect();
        match self
            .store
            .put_statement_with_events(statement, &events, durability)
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "cannot record a DNS query");
                false
            }
        }
    }

    /// A session record for DNS traffic from `asker`.
    fn session_record(&self, id: u64, asker: &Asker<'_>, decision: &Decision) -> SessionRecord {
        let identity = asker.identity;
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
            source: asker.source.to_string(),
            destination: asker.server.to_string(),
            upstream_local: None,
            parent_session: None,
            identity: identity
                .workload
                .as_ref()
                .map(|workload| workload.record.clone()),
            transport: asker.transport.as_str().to_owned(),
            resource: decision.resource.clone(),
            decision: decision.record(),
            started_at: OffsetDateTime::now_utc(),
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            close_reason: None,
        }
    }

    /// Serves one UDP listener forever.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, interception: Arc<Interception>) {
        let socket = Arc::new(socket);
        let local = match socket.local_addr() {
            Ok(local) => local,
            Err(error) => {
                tracing::error!(%error, "DNS listener has no address");
                return;
            }
        };
        let mut buffer = vec![0u8; upstream::MAX_MESSAGE];
        loop {
            let (length, peer) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(error) => {
                    tracing::warn!(%error, "DNS receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                tracing::warn!(%peer, "too many DNS queries in flight: datagram dropped");
                continue;
            };
            let query = buffer.get(..length).unwrap_or_default().to_vec();
            let origin = interception.dns_origin(peer, local);
            let resolver = Arc::clone(&self);
            let socket = Arc::clone(&socket);
            let id = self.store.next_session_id();
            let span = tracing::info_span!("dns", id, %peer, agent = tracing::field::Empty);
            tokio::spawn(
                async move {
                    let _permit = permit;
                    resolver.udp_query(&socket, peer, origin, &query, id).await;
                }
                .instrument(span),
            );
        }
    }

    async fn udp_query(
        &self,
        socket: &UdpSocket,
        peer: SocketAddr,
        origin: Option<sluice_common::Origin>,
        query: &[u8],
        id: u64,
    ) {
        let identified = origin
            .ok_or_else(|| format!("no redirect record for DNS from {peer}: not from an agent"))
            .and_then(|origin| {
                identity::identity_of(&self.root, &origin)
                    .map(|identity| (identity, identity::destination_of(&origin)))
                    .map_err(|error| error.to_string())
            });
        let (identity, server) = match identified {
            Ok(identified) => identified,
            Err(why) => {
                tracing::warn!(%why, "unidentified DNS query refused");
                let record = SessionRecord {
                    source: peer.to_string(),
                    transport: "udp".into(),
                    ..SessionRecord::refused(id, "unidentified", why)
                };
                if let Err(error) = self.store.put_session(&record, Durability::Durable).await {
                    tracing::error!(%error, "cannot record a refused DNS query");
                }
                if let Some(reply) = Message::from_vec(query)
                    .ok()
                    .and_then(|request| encode(&reply_to(&request, ResponseCode::Refused)))
                {
                    let _ = socket.send_to(&reply, peer).await;
                }
                return;
            }
        };
        tracing::Span::current().record("agent", identity.agent.as_str());
        let asker = Asker {
            identity: &identity,
            source: peer,
            server,
            transport: Transport::Udp,
        };
        let decision = self.decide(&asker);
        let mut record = self.session_record(id, &asker, &decision);
        record.bytes_up = query.len() as u64;
        if let Err(error) = self.store.put_session(&record, Durability::Durable).await {
            tracing::error!(%error, "cannot record a DNS query: refusing it");
            if let Some(reply) = Message::from_vec(query)
                .ok()
                .and_then(|request| encode(&reply_to(&request, ResponseCode::ServFail)))
            {
                let _ = socket.send_to(&reply, peer).await;
            }
            return;
        }
        let reply = self.answer(&asker, query, id, 1).await;
        let mut close_reason = "dns_answered".to_owned();
        if let Some(reply) = &reply {
            record.bytes_down = reply.len() as u64;
            if let Err(error) = socket.send_to(reply, peer).await {
                close_reason = format!("client_error: {error}");
            }
        } else {
            close_reason = "dns_dropped".into();
        }
        record.close(OffsetDateTime::now_utc(), close_reason);
        if let Err(error) = self.store.put_session(&record, Durability::Batched).await {
            tracing::error!(%error, "cannot record the end of a DNS query");
        }
    }
}

/// Serves DNS over one TCP connection the redirect listener accepted (original port
/// 53), whose session record is already open and durable. Returns the close reason.
pub async fn serve_tcp(
    resolver: &Resolver,
    mut stream: tokio::net::TcpStream,
    identity: &Identity,
    source: SocketAddr,
    server: SocketAddr,
    session_id: u64,
    counts: &crate::relay::ByteCounts,
) -> String {
    let asker = Asker {
        identity,
        source,
        server,
        transport: Transport::Tcp,
    };
    let idle = Duration::from_secs(30);
    let mut seq = 0;
    loop {
        let query = match tokio::time::timeout(idle, upstream::read_framed(&mut stream)).await {
            Err(_) => return "idle_timeout".into(),
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) => return "client_closed".into(),
            Ok(Err(error)) => return format!("client_error: {error}"),
        };
        counts
            .up
            .fetch_add(query.len() as u64 + 2, std::sync::atomic::Ordering::Relaxed);
        seq += 1;
        let Some(reply) = resolver.answer(&asker, &query, session_id, seq).await else {
            return "dns_malformed".into();
        };
        if let Err(error) = upstream::write_framed(&mut stream, &reply).await {
            return format!("client_error: {error}");
        }
        counts
            .down
            .fetch_add(reply.len() as u64 + 2, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long a connection to a host-named resource is watched for a ClientHello before
/// it is handed on. Protocols where the server speaks first wait this long; an agent
/// that stays silent longer is checked when its first bytes come (see
/// [`ServerName::NotYetSent`]).
pub const SERVER_NAME_WAIT: Duration = Duration::from_millis(500);

/// What the first look at a host-named connection found.
#[derive(Debug)]
pub enum ServerName {
    /// Its first bytes were seen and pass: no TLS, or TLS for a name it may ask for.
    Checked,
    /// Nothing came within the wait: the first bytes must still be checked with
    /// [`first_bytes_check`] before any reaches the upstream.
    NotYetSent,
}

/// For a connection allowed to `resource` by host name: a denial when it opens with a
/// TLS ClientHello naming a host that is not one of the resource's `hostnames`, or not
/// one the resolver gave this agent for the address (`resolved`), or that cannot be
/// read.
pub async fn check_server_name(
    agent: &tokio::net::TcpStream,
    resource: &crate::policy::Resource,
    resolved: &[String],
) -> Result<ServerName, Decision> {
    let opening = sni::peek_opening(agent, SERVER_NAME_WAIT).await;
    if opening == sni::Opening::Silent {
        return Ok(ServerName::NotYetSent);
    }
    match server_name_refusal(&opening, resource, resolved) {
        None => Ok(ServerName::Checked),
        Some(reason) => Err(server_name_denial(resource, reason)),
    }
}

/// The decision recorded for a connection refused by the server-name check.
pub fn server_name_denial(resource: &crate::policy::Resource, reason: String) -> Decision {
    Decision {
        action: Action::Deny,
        rule: "tls-server-name".into(),
        reason,
        resource: Some(resource.name.clone()),
        mask: None,
        timeout: None,
    }
}

/// The check a relay applies to a host-named connection's first bytes when they came
/// after [`SERVER_NAME_WAIT`]: the same rule as [`check_server_name`].
pub fn first_bytes_check<'a>(
    resource: &'a crate::policy::Resource,
    resolved: &'a [String],
) -> crate::relay::FirstBytesCheck<'a> {
    Box::new(move |bytes: &[u8]| match sni::parse(bytes) {
        None => crate::relay::FirstBytes::NeedMore,
        Some(opening) => match server_name_refusal(&opening, resource, resolved) {
            None => crate::relay::FirstBytes::Pass,
            Some(reason) => crate::relay::FirstBytes::Refuse(reason),
        },
    })
}

/// Why a connection to host-named `resource` that opened with `opening` is refused,
/// if it is: a ClientHello must ask for one of the resource's names that the resolver
/// gave this agent for the address.
pub fn server_name_refusal(
    opening: &sni::Opening,
    resource: &crate::policy::Resource,
    resolved: &[String],
) -> Option<String> {
    match opening {
        sni::Opening::NotTls | sni::Opening::TlsWithoutName | sni::Opening::Silent => None,
        sni::Opening::Unreadable(why) => Some(format!(
            "the connection to resource `{}` starts like TLS but its server name cannot be read ({why}), so it is denied",
            resource.name
        )),
        sni::Opening::Tls(name) => {
            let name = names::normalize(name);
            let in_resource = resource
                .hostnames
                .iter()
                .any(|pattern| pattern.match_name(&name).is_some());
            if in_resource && resolved.contains(&name) {
                None
            } else {
                Some(format!(
                    "TLS asks for `{name}`, which is not a host name of resource `{}` that this agent resolved to this address, so it is denied",
                    resource.name
                ))
            }
        }
    }
}

/// Binds the resolver's UDP listeners on the redirect addresses. IPv6 failing is
/// reported, not fatal: IPv6 queries then go unanswered (fail closed).
pub fn bind_udp(
    ipv4: std::net::Ipv4Addr,
    ipv6: Option<std::net::Ipv6Addr>,
    port: u16,
) -> std::io::Result<Vec<UdpSocket>> {
    let bind = |address: SocketAddr| -> std::io::Result<UdpSocket> {
        let socket = std::net::UdpSocket::bind(address)?;
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket)
    };
    let mut sockets = vec![bind(SocketAddr::new(IpAddr::V4(ipv4), port))?];
    if let Some(ipv6) = ipv6 {
        match bind(SocketAddr::new(IpAddr::V6(ipv6), port)) {
            Ok(socket) => sockets.push(socket),
            Err(error) => {
                tracing::error!(%error, "IPv6 DNS listener unavailable: IPv6 DNS from agents goes unanswered");
            }
        }
    }
    Ok(sockets)
}

/// An answer to `request` with no records and `code`.
fn reply_to(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    if request.metadata.op_code == OpCode::Query {
        reply.queries = request.queries.clone();
    }
    reply
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message
        .to_vec()
        .inspect_err(|error| tracing::warn!(%error, "cannot encode a DNS reply"))
        .ok()
}

/// FORMERR for a query that did not parse, built from its header alone; `None` when
/// there is no header (or it is itself a response: answering could loop).
fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = vec![0u8; 12];
    reply[..2].copy_from_slice(&header[..2]);
    // QR set, the opcode and RD kept, RA set, RCODE 1 (FORMERR).
    reply[2] = 0x80 | (header[2] & 0x79);
    reply[3] = 0x80 | 0x01;
    Some(reply)
}

/// The RFC mnemonic of a response code (`NOERROR`, `NXDOMAIN`...), as dig prints it.
fn rcode_name(code: ResponseCode) -> &'static str {
    match u16::from(code) {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => "RCODE",
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read_with_port_53() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver ::1\nnameserver fe80::1%eth0\n",
        )
        .unwrap();
        assert_eq!(
            resolv_conf_nameservers(&path),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn own_listeners_are_never_upstreams() {
        let config = DnsConfig {
            upstreams: vec![
                "127.0.0.1:15053".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
            ],
            ..DnsConfig::default()
        };
        assert_eq!(
            config.effective_upstreams(&["127.0.0.1:15053".parse().unwrap()]),
            vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn format_errors_keep_the_id_and_need_a_query_header() {
        let reply = format_error(&[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff]).unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[3] & 0x0f, 1);
        assert!(reply[2] & 0x80 != 0 && reply[2] & 0x01 != 0);
        assert!(format_error(&[1, 2, 3]).is_none());
        // A response is never answered.
        assert!(format_error(&[0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
