//! What a protocol handler is given for one session, and how it opens nested ones.
//!
//! `session.rs` identifies the agent, decides the connection, records it and (unless
//! the handler dials itself) dials the upstream; then it hands the handler a
//! [`SessionInfo`], the agent's stream and the [`Upstream`]. The handler decodes, asks
//! the [`super::Pipeline`] to judge, hold and record each operation, and returns why
//! the session ended.
//!
//! A handler that carries connections inside its own (an HTTP CONNECT tunnel, an SSH
//! `direct-tcpip` channel) opens each as a nested session through
//! [`SessionInfo::nested`]: same agent, new destination, judged as a new connection,
//! recorded as a new session linked to its parent, then dispatched like any other.

use std::{future::Future, net::SocketAddr, path::Path, pin::Pin, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    approvals::ApprovalBroker,
    credentials::Credentials,
    events::Context,
    identity::Identity,
    policy::{AgentFacts, PolicyHandle, Resource},
    relay::ByteCounts,
    store::Store,
};

/// A boxed future, for the object-safe traits of handlers and nested dispatch.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connection to the agent or the upstream: plain TCP, TLS over it, a tunnel inside
/// another session's stream...
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> ByteStream for T {}

/// The upstream side handed to a handler.
pub enum Upstream {
    /// `session.rs` dialled [`SessionInfo::upstream_addr`] (plain TCP, no delay set).
    Dialled(Box<dyn ByteStream>),
    /// The handler dials itself (its [`Dial`] said so): TLS with SNI, a name to
    /// resolve, a per-request upstream...
    NotDialled,
}

/// Who dials a handler's upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// `session.rs` dials before the handler runs; an unreachable upstream closes the
    /// session as `upstream_unreachable` without calling the handler.
    BySession,
    /// The handler dials ([`SessionInfo::upstream_connect_timeout`] is its budget).
    ByHandler,
}

/// How a handler's session ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Closed {
    /// The session's close reason (`client_closed`, `upstream_closed`,
    /// `protocol_error: ...`).
    pub reason: String,
    /// The daemon's own address on the upstream connection, when the handler dialled
    /// it, to match server-side logs.
    pub upstream_local: Option<String>,
}

impl From<String> for Closed {
    fn from(reason: String) -> Self {
        Self {
            reason,
            upstream_local: None,
        }
    }
}

/// Everything a protocol handler knows about its session.
pub struct SessionInfo {
    pub session_id: u64,
    /// The session this one was opened inside (a CONNECT tunnel, an SSH forward).
    pub parent_session: Option<u64>,
    /// The process behind the connection, as identified at accept time (a nested
    /// session inherits its parent's).
    pub identity: Identity,
    /// The policy resource the destination matched.
    pub resource: Resource,
    /// Where the agent was connecting to.
    pub upstream_addr: SocketAddr,
    /// The host name the agent used for it, when known (the resolver's answer, a
    /// CONNECT authority, an SSH forward's host).
    pub host_name: Option<String>,
    /// Every name the resolver gave this agent for the destination's address (within
    /// their TTL), or the nested target's name; empty when none is known.
    pub host_names: Vec<String>,
    pub policy: Arc<PolicyHandle>,
    pub store: Store,
    pub credentials: Arc<Credentials>,
    /// Where operations under `review` rules wait for a human.
    pub approvals: Arc<ApprovalBroker>,
    /// The HMAC key of the `hash` masking strategy.
    pub mask_key: Arc<[u8]>,
    /// Who and where, for the session's audit events (protocol set).
    pub audit_context: Context,
    /// Bytes agent → upstream and back, as the agent sees them; the session record's
    /// counts come from here.
    pub counts: Arc<ByteCounts>,
    pub upstream_connect_timeout: Duration,
    /// Opens nested sessions (tunnels, forwards) through the registry.
    pub nested: Arc<dyn NestedDispatch>,
}

impl SessionInfo {
    /// The facts the policy decides on.
    pub fn facts(&self) -> AgentFacts<'_> {
        AgentFacts {
            agent: &self.identity.agent,
            uid: self.identity.uid,
            exe: self.identity.exe.as_deref().map(Path::new),
            workload: self.identity.workload.as_deref(),
        }
    }
}

/// A connection carried inside a session, to be judged and dispatched as its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedTarget {
    /// Where it goes.
    pub destination: SocketAddr,
    /// The host name the agent asked for (CONNECT's authority, the forward's host):
    /// resources named by host name match on it.
    pub host_name: Option<String>,
    /// How it was opened, for records and logs: `http_connect`, `ssh_direct_tcpip`.
    pub via: &'static str,
}

/// Why a nested connection was not opened. The parent tells its agent in its own
/// protocol (a 403, a channel-open failure) and goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NestedRefusal {
    /// The policy refused it (the nested session is recorded as denied).
    #[error("denied by policy rule `{rule}`: {reason}")]
    Denied { rule: String, reason: String },
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The open record could not be made durable: refused, failing closed.
    #[error("cannot record the session: {0}")]
    NotRecorded(String),
}

/// A nested session that was allowed, recorded and (for [`Dial::BySession`] handlers)
/// dialled: give it the agent's side of the tunnel to run it to its end.
pub trait NestedSession: Send {
    /// The nested session's id.
    fn id(&self) -> u64;
    /// Runs the session over `agent` and records its end; returns its close reason.
    fn serve(self: Box<Self>, agent: Box<dyn ByteStream>) -> BoxFuture<'static, String>;
}

/// Opens nested sessions; implemented by `session.rs` over the protocol registry.
pub trait NestedDispatch: Send + Sync {
    fn open<'a>(
        &'a self,
        parent: &'a SessionInfo,
        target: NestedTarget,
    ) -> BoxFuture<'a, Result<Box<dyn NestedSession>, NestedRefusal>>;
}
