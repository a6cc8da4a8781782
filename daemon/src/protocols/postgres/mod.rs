//! The PostgreSQL proxy: every statement judged, every result streamed back.
//!
//! Two loops run per session. The agent loop reads the agent's frames, classifies and
//! judges each statement (simple and extended protocol), forwards what is allowed and,
//! for what is not, queues a response of its own. The server loop reads the server's
//! frames in order, completes the statement records, remaps BackendKeyData, and writes
//! to the agent, inserting the queued denials exactly where the server's answer to that
//! request would have been. A denied statement never reaches the server and the session
//! stays usable.
//!
//! The ordering rests on one queue of [`Pending`] entries: one per request the server
//! will answer, pushed before the request is written upstream, so the server loop always
//! knows whose answer it is reading.
//!
//! Both loops run in the session's one task (polled together by `run`), so they share
//! that queue directly ([`Handoff`]) instead of through a channel, whose every send
//! would wake the task once more; only a denial, which no server frame will follow,
//! wakes the server loop. A statement's result record is stored once its answer has
//! been written to the agent in batched mode ([`Completed`]), before it in strict mode.

pub mod cancel;
pub mod codec;
mod mask;
mod startup;
mod tls;

use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::AtomicBool,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf},
    sync::Notify,
};

use self::{
    cancel::{CancelGuard, CancelRegistry, CancelTarget},
    codec::{
        BackendMessage, DecodeError, Diagnostic, EncodeError, Format, Frame, FrameDecoder,
        FrameError, FrontendMessage, Severity, TransactionStatus,
        backend::{encode_backend_key_data, encode_error_response, encode_ready_for_query},
        frontend::{Target, encode_cancel_request},
    },
    mask::ActiveMask,
    startup::{Opening, authenticate_upstream, brokered_parameters, read_opening},
};
use crate::{
    approvals::{Outcome, Resolution},
    masking::Masker,
    pipeline::{
        BoxFuture, ByteStream, Closed, Details, HeldRecords, Operation, Pipeline, SessionInfo,
        Upstream, approval_record, refusal_text,
    },
    policy::{Action, Decision, Protocol, TlsMode},
    protocols::ProtocolHandler,
    relay::ByteCounts,
    sql::{self, Classified},
    store::{Durability, StatementRecord, Store},
};

/// SQLSTATE for a statement the policy refused: insufficient_privilege.
const DENIED_SQLSTATE: &str = "42501";
/// While a statement is held, the agent's further bytes are read (to notice it going
/// away) up to this much; beyond it they wait in the socket.
const MAX_BUFFERED_WHILE_HELD: usize = 1024 * 1024;

/// Errors that end a PostgreSQL session. Each becomes the session's close reason.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("agent i/o: {0}")]
    AgentIo(std::io::Error),
    #[error("upstream i/o: {0}")]
    UpstreamIo(std::io::Error),
    #[error("protocol_error: malformed frame from the agent: {0}")]
    AgentFrame(FrameError),
    #[error("protocol_error: malformed frame from the server: {0}")]
    ServerFrame(FrameError),
    #[error("protocol_error: malformed message from the agent: {0}")]
    AgentMessage(DecodeError),
    #[error("protocol_error: malformed message from the server: {0}")]
    ServerMessage(DecodeError),
    #[error("protocol_error: the agent sent no StartupMessage")]
    NoStartup,
    #[error("protocol_error: unexpected message {0:?} from the agent")]
    UnexpectedMessage(char),
    #[error("upstream_auth_failed: {0}")]
    UpstreamAuth(String),
    #[error("upstream_auth_failed: unsupported method: {0}")]
    UnsupportedAuth(String),
    #[error("credential_missing: `{0}` is not in the credentials file")]
    MissingCredential(String),
    #[error("encoding: {0}")]
    Encode(EncodeError),
    #[error("upstream_tls: {0}")]
    Tls(String),
    #[error("audit_log_unavailable: {0}")]
    Audit(crate::store::StoreError),
}

/// The PostgreSQL handler of the protocol registry. Its cancel keys span sessions: a
/// CancelRequest arrives on a connection of its own.
#[derive(Default)]
pub struct Handler {
    cancels: Arc<CancelRegistry>,
}

impl ProtocolHandler for Handler {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
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
            let session = PgSession {
                info: session,
                cancels: Arc::clone(&self.cancels),
            };
            Closed::from(proxy(&session, agent, upstream).await)
        })
    }
}

/// What the proxy needs to know about its session: the pipeline's, and the cancel keys.
struct PgSession {
    info: SessionInfo,
    cancels: Arc<CancelRegistry>,
}

impl std::ops::Deref for PgSession {
    type Target = SessionInfo;

    fn deref(&self) -> &SessionInfo {
        &self.info
    }
}

/// Runs the session to its end and returns the close reason.
async fn proxy(
    session: &PgSession,
    agent: Box<dyn ByteStream>,
    upstream: Box<dyn ByteStream>,
) -> String {
    match run(session, agent, upstream, &session.counts).await {
        Ok(reason) => reason,
        Err(error) => {
            tracing::warn!(%error, "postgres session ended");
            error.to_string()
        }
    }
}

async fn run(
    session: &PgSession,
    agent: Box<dyn ByteStream>,
    upstream: Box<dyn ByteStream>,
    counts: &ByteCounts,
) -> Result<String, ProxyError> {
    let mut agent_buffer = BytesMut::with_capacity(8 * 1024);
    let mut agent_decoder = FrameDecoder::frontend();
    let mut agent_tcp = agent;
    let agent_tls = session.resource.agent_tls.as_ref();
    let mut opening = read_opening(
        &mut agent_tcp,
        &mut agent_buffer,
        &mut agent_decoder,
        counts,
        agent_tls.is_some(),
    )
    .await?;
    let mut agent: Box<dyn ByteStream> = match (&opening, agent_tls) {
        (Opening::TlsRequested, Some(agent_tls)) => {
            agent_tcp
                .write_all(b"S")
                .await
                .map_err(ProxyError::AgentIo)?;
            let mut stream: Box<dyn ByteStream> =
                Box::new(tls::accept(agent_tcp, agent_tls).await?);
            opening = read_opening(
                &mut stream,
                &mut agent_buffer,
                &mut agent_decoder,
                counts,
                false,
            )
            .await?;
            stream
        }
        _ => agent_tcp,
    };
    let mut upstream: Box<dyn ByteStream> = match session.resource.tls.mode {
        // Passthrough is refused at load for anything but http resources.
        TlsMode::Disable | TlsMode::Passthrough => Box::new(upstream),
        TlsMode::VerifyFull => {
            match tls::connect(upstream, &session.resource.tls, session.upstream_addr).await {
                Ok(stream) => Box::new(stream),
                Err(error) => {
                    send_fatal(
                        &mut agent,
                        "08001",
                        &format!(
                            "sluice: no verified TLS connection to `{}`: {error}",
                            session.resource.name
                        ),
                    )
                    .await;
                    return Err(error);
                }
            }
        }
    };
    let (version, parameters) = match opening {
        Opening::Cancel { pid, secret_key } => {
            return forward_cancel(session, &mut upstream, pid, &secret_key).await;
        }
        Opening::TlsRequested => return Err(ProxyError::UnexpectedMessage('S')),
        Opening::Session {
            version,
            parameters,
        } => (version, parameters),
    };

    let mut server_buffer = BytesMut::with_capacity(64 * 1024);
    let mut server_decoder = FrameDecoder::backend();
    match &session.resource.credential {
        Some(name) => {
            let Some(credential) = session.credentials.get(name) else {
                send_fatal(
                    &mut agent,
                    "28000",
                    &format!("sluice: credential `{name}` is not configured on this host"),
                )
                .await;
                return Err(ProxyError::MissingCredential(name.clone()));
            };
            let startup =
                startup::startup_message(version, &brokered_parameters(&parameters, credential))?;
            upstream
                .write_all(&startup)
                .await
                .map_err(ProxyError::UpstreamIo)?;
            if let Err(error) = authenticate_upstream(
                &mut upstream,
                &mut server_buffer,
                &mut server_decoder,
                credential,
            )
            .await
            {
                send_fatal(
                    &mut agent,
                    "28P01",
                    &format!(
                        "sluice: could not log in to `{}` with its brokered credential: {error}",
                        session.resource.name
                    ),
                )
                .await;
                return Err(error);
            }
            // The agent asked for no password and is told it is in.
            const AUTHENTICATION_OK: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];
            agent
                .write_all(&AUTHENTICATION_OK)
                .await
                .map_err(ProxyError::AgentIo)?;
            counts.down.fetch_add(
                AUTHENTICATION_OK.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        None => {
            let startup = startup::startup_message(version, &parameters)?;
            upstream
                .write_all(&startup)
                .await
                .map_err(ProxyError::UpstreamIo)?;
        }
    }

    let (agent_read, agent_write) = tokio::io::split(agent);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let handoff = Handoff::default();
    let backslash_quoting = AtomicBool::new(false);
    let mut agent_loop = AgentLoop {
        session,
        pipeline: Pipeline::new(&session.info),
        backslash_quoting: &backslash_quoting,
        read: agent_read,
        write: upstream_write,
        buffer: agent_buffer,
        decoder: agent_decoder,
        handoff: &handoff,
        statements: HashMap::new(),
        portals: HashMap::new(),
        skip_until_sync: false,
        counts,
        review: None,
    };
    let mut server_loop = ServerLoop {
        session,
        backslash_quoting: &backslash_quoting,
        read: upstream_read,
        write: agent_write,
        buffer: server_buffer,
        decoder: server_decoder,
        handoff: &handoff,
        queue: VecDeque::new(),
        completed: Completed::new(session),
        status: TransactionStatus::Idle,
        rows: 0,
        query_index: 0,
        cancel_guard: None,
        counts,
        statement_columns: HashMap::new(),
        portal_columns: HashMap::new(),
        active_mask: None,
    };
    let agent_side = agent_loop.run();
    let server_side = server_loop.run();
    tokio::pin!(agent_side, server_side);
    tokio::select! {
        result = &mut agent_side => match result {
            // The agent is done sending; let the server's last answers reach it.
            Ok(()) => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server_side).await;
                Ok("client_closed".into())
            }
            Err(error) => Err(error),
        },
        result = &mut server_side => match result {
            Ok(()) => Ok("upstream_closed".into()),
            Err(error) => Err(error),
        },
    }
}

async fn forward_cancel(
    session: &PgSession,
    upstream: &mut Box<dyn ByteStream>,
    pid: i32,
    secret_key: &[u8],
) -> Result<String, ProxyError> {
    let Some(target) = session
        .cancels
        .lookup(&session.identity.agent, pid, secret_key)
    else {
        tracing::warn!("cancel request with an unknown key refused");
        return Ok("cancel_refused: unknown key".into());
    };
    if target.upstream != session.upstream_addr {
        return Ok("cancel_refused: key belongs to another upstream".into());
    }
    let mut request = BytesMut::new();
    encode_cancel_request(target.pid, &target.secret_key, &mut request)
        .map_err(ProxyError::Encode)?;
    upstream
        .write_all(&request)
        .await
        .map_err(ProxyError::UpstreamIo)?;
    let _ = upstream.shutdown().await;
    tracing::info!("cancel request forwarded");
    Ok("cancel_forwarded".into())
}

/// Sends a FATAL error to the agent during start-up (best effort: it is closing).
async fn send_fatal(agent: &mut Box<dyn ByteStream>, code: &str, message: &str) {
    let mut bytes = BytesMut::new();
    if encode_error_response(&Diagnostic::new(Severity::Fatal, code, message), &mut bytes).is_ok() {
        let _ = agent.write_all(&bytes).await;
        let _ = agent.shutdown().await;
    }
}

/// The agent loop's [`Pending`] entries on their way to the server loop, in order.
#[derive(Default)]
struct Handoff {
    queue: Mutex<VecDeque<Pending>>,
    /// Wakes the server loop for a denial: no server frame may come to do it.
    denial: Notify,
}

impl Handoff {
    fn push(&self, pending: Pending) {
        let denial = matches!(pending, Pending::Denied { .. });
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(pending);
        if denial {
            self.denial.notify_one();
        }
    }

    /// Moves every entry pushed so far to the end of `queue`.
    fn take_into(&self, queue: &mut VecDeque<Pending>) {
        queue.extend(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..),
        );
    }
}

/// Statement records the server's answers completed, waiting for those answers to be
/// written to the agent (batched mode only: storing a record encodes and queues it,
/// which need not delay the agent). Strict mode stores each record before the agent
/// can see its answer. Should the session's task be dropped in between, the records
/// are stored from a task of their own: none is lost.
struct Completed {
    deferred: bool,
    records: VecDeque<StatementRecord>,
    store: Store,
    context: crate::events::Context,
}

impl Completed {
    fn new(session: &SessionInfo) -> Self {
        Self {
            deferred: session.store.audit_durability() == Durability::Batched,
            records: VecDeque::new(),
            store: session.store.clone(),
            context: session.audit_context.clone(),
        }
    }
}

impl Drop for Completed {
    fn drop(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.records);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                operations = records.len(),
                "completed operations not recorded: no runtime"
            );
            return;
        };
        let store = self.store.clone();
        let context = self.context.clone();
        runtime.spawn(async move {
            for record in records {
                crate::pipeline::store_result(&store, &context, record).await;
            }
        });
    }
}

/// A request the server will answer, or a response the daemon gives instead.
enum Pending {
    /// A simple Query; its statements complete one per CommandComplete.
    Query {
        statements: Vec<StatementRecord>,
        /// Per statement, how to mask its result set.
        masks: Vec<Option<ResultMask>>,
        started: Instant,
    },
    Parse,
    Bind,
    Describe {
        target: Target,
        name: String,
    },
    Execute {
        record: Box<StatementRecord>,
        started: Instant,
        mask: Option<ResultMask>,
        portal: String,
        statement: String,
        /// The Bind's result formats (zero, one, or one per column).
        formats: Vec<Format>,
    },
    Close,
    Sync,
    /// The daemon's own answer: an ErrorResponse, followed by ReadyForQuery when the
    /// refused request was one the server would have ended with one.
    Denied {
        error: Bytes,
        ready_for_query: bool,
        records: Vec<StatementRecord>,
    },
}

/// How one result set is masked: the profile, and the tables the statement reads.
#[derive(Clone)]
struct ResultMask {
    masker: Arc<Masker>,
    tables: Vec<String>,
}

/// A statement as judged when the agent prepared it.
struct Prepared {
    operation: Operation,
}

#[derive(Clone)]
struct PortalInfo {
    statement_name: String,
    prepared: Arc<Prepared>,
    /// The bound parameters as recorded: format and size, never the value.
    parameters: Vec<String>,
    formats: Vec<Format>,
}

struct AgentLoop<'a> {
    session: &'a PgSession,
    /// Judges, holds and records this session's statements.
    pipeline: Pipeline<'a>,
    /// Set by the server loop when the server reports `standard_conforming_strings`
    /// off: its string literals then differ from what the classifier reads.
    backslash_quoting: &'a AtomicBool,
    read: ReadHalf<Box<dyn ByteStream>>,
    write: WriteHalf<Box<dyn ByteStream>>,
    buffer: BytesMut,
    decoder: FrameDecoder,
    handoff: &'a Handoff,
    statements: HashMap<String, Arc<Prepared>>,
    /// Portal → (its statement name and statement, parameters bound, result formats).
    portals: HashMap<String, PortalInfo>,
    skip_until_sync: bool,
    counts: &'a ByteCounts,
    /// A statement a `review` rule holds: set by `handle`, awaited by `run` before it
    /// reads the next frame.
    review: Option<Review>,
}

/// A request held back until a human decides on its `review` statements.
enum Review {
    /// A simple Query (or fast-path call): forwarded whole once every held statement
    /// in it is approved.
    Query {
        frame: Bytes,
        records: Vec<StatementRecord>,
        masks: Vec<Option<ResultMask>>,
        started: Instant,
        /// Index into `records` and the decision, per held statement.
        held: Vec<(usize, Decision)>,
    },
    /// An Execute of a portal whose statement a `review` rule covers.
    Execute {
        frame: Bytes,
        decision: Decision,
        /// `Pending::Execute`, pushed when approved.
        pending: Pending,
    },
}

impl AgentLoop<'_> {
    async fn run(&mut self) -> Result<(), ProxyError> {
        let mut out = BytesMut::with_capacity(8 * 1024);
        loop {
            while let Some(frame) = self
                .decoder
                .decode(&mut self.buffer)
                .map_err(ProxyError::AgentFrame)?
            {
                if self.handle(frame, &mut out)? {
                    self.flush(&mut out).await?;
                    let _ = self.write.shutdown().await;
                    return Ok(());
                }
                if let Some(review) = self.review.take() {
                    // What came before goes upstream now; the server loop keeps
                    // delivering its answers while this statement waits.
                    self.flush(&mut out).await?;
                    if !self.await_review(review, &mut out).await? {
                        let _ = self.write.shutdown().await;
                        return Ok(());
                    }
                }
            }
            self.flush(&mut out).await?;
            let read = self
                .read
                .read_buf(&mut self.buffer)
                .await
                .map_err(ProxyError::AgentIo)?;
            if read == 0 {
                if !self.buffer.is_empty() {
                    return Err(ProxyError::AgentFrame(FrameError::Truncated {
                        buffered: self.buffer.len(),
                    }));
                }
                let _ = self.write.shutdown().await;
                return Ok(());
            }
            self.counts
                .up
                .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn flush(&mut self, out: &mut BytesMut) -> Result<(), ProxyError> {
        // The statements' events are written (durably in strict mode) before anything
        // goes upstream.
        self.pipeline
            .flush_audit()
            .await
            .map_err(ProxyError::Audit)?;
        if !out.is_empty() {
            self.write
                .write_all(out)
                .await
                .map_err(ProxyError::UpstreamIo)?;
            out.clear();
        }
        Ok(())
    }

    fn push(&self, pending: Pending) {
        self.handoff.push(pending);
    }

    /// Handles one frame; `true` when the agent terminated the session.
    fn handle(&mut self, frame: Frame, out: &mut BytesMut) -> Result<bool, ProxyError> {
        let message = FrontendMessage::decode(&frame).map_err(ProxyError::AgentMessage)?;
        if self.skip_until_sync
            && !matches!(message, FrontendMessage::Sync | FrontendMessage::Terminate)
        {
            // After a refusal the server would discard everything up to Sync; so do we.
            return Ok(false);
        }
        match message {
            FrontendMessage::Query { sql } => {
                let started = Instant::now();
                let (classified, summary) = sql::classify_and_mask(sql);
                let mut records = Vec::with_capacity(classified.len());
                let mut masks = Vec::with_capacity(classified.len());
                let mut refusal = None;
                let mut held = Vec::new();
                for statement in classified {
                    let operation = Operation::sql(Protocol::Postgres, &statement, summary.clone());
                    let (decision, mask) = self.judge_with_mask(&operation);
                    if decision.action == Action::Deny && refusal.is_none() {
                        refusal = Some((statement.kind.clone(), decision.clone()));
                    }
                    records.push(self.pipeline.record(&operation, &decision));
                    if decision.action == Action::Review {
                        held.push((records.len() - 1, decision));
                    }
                    masks.push(mask);
                }
                match refusal {
                    None if !held.is_empty() => {
                        self.review = Some(Review::Query {
                            frame: Bytes::copy_from_slice(frame.as_bytes()),
                            records,
                            masks,
                            started,
                            held,
                        });
                    }
                    None => {
                        self.push(Pending::Query {
                            statements: records,
                            masks,
                            started,
                        });
                        out.extend_from_slice(frame.as_bytes());
                    }
                    Some((kind, decision)) => {
                        let error = denial(&kind, &decision)?;
                        for record in &mut records {
                            record.error = Some(if record.decision.action == "allow" {
                                "not run: another statement in the same query was refused".into()
                            } else {
                                format!("{DENIED_SQLSTATE}: {}", decision.reason)
                            });
                        }
                        self.push(Pending::Denied {
                            error,
                            ready_for_query: true,
                            records,
                        });
                    }
                }
            }
            FrontendMessage::Parse(parse) => {
                let (mut classified, summary) = sql::classify_and_mask(parse.query);
                // The extended protocol allows one statement per Parse; an empty
                // string is a valid (empty) statement.
                let statement = match classified.len() {
                    1 => classified.remove(0),
                    0 => empty_statement(),
                    _ => Classified::unparsed(),
                };
                let operation = Operation::sql(Protocol::Postgres, &statement, summary);
                let decision = self.judge(&operation);
                let prepared = Arc::new(Prepared { operation });
                // A statement under review is held when it is executed, not prepared.
                if decision.action == Action::Deny {
                    let record = self.pipeline.record(&prepared.operation, &decision);
                    self.refuse_extended(&prepared.operation.verb, &decision, record)?;
                    return Ok(false);
                }
                self.statements.insert(parse.statement.to_owned(), prepared);
                self.push(Pending::Parse);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Bind(bind) => {
                if let Some(prepared) = self.statements.get(bind.statement) {
                    self.portals.insert(
                        bind.portal.to_owned(),
                        PortalInfo {
                            statement_name: bind.statement.to_owned(),
                            prepared: Arc::clone(prepared),
                            parameters: bind
                                .params
                                .iter()
                                .enumerate()
                                .map(|(i, value)| match value {
                                    None => "NULL".to_owned(),
                                    Some(value) => format!(
                                        "{}:{}",
                                        match bind.param_format(i) {
                                            Format::Text => "text",
                                            Format::Binary => "binary",
                                        },
                                        value.len()
                                    ),
                                })
                                .collect(),
                            formats: bind.result_formats.clone(),
                        },
                    );
                }
                self.push(Pending::Bind);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Describe { target, name } => {
                self.push(Pending::Describe {
                    target,
                    name: name.to_owned(),
                });
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Execute { portal, .. } => {
                let started = Instant::now();
                let Some(info) = self.portals.get(portal).cloned() else {
                    // Unknown portal: the server reports the error itself.
                    let record = self.unknown_record();
                    self.push(Pending::Execute {
                        record: Box::new(record),
                        started,
                        mask: None,
                        portal: portal.to_owned(),
                        statement: String::new(),
                        formats: Vec::new(),
                    });
                    out.extend_from_slice(frame.as_bytes());
                    return Ok(false);
                };
                // Judged again: the policy may have changed since the Parse.
                let mut operation = info.prepared.operation.clone();
                operation.parameters = info.parameters;
                let (decision, mask) = self.judge_with_mask(&operation);
                let record = self.pipeline.record(&operation, &decision);
                if decision.action == Action::Deny {
                    self.refuse_extended(&operation.verb, &decision, record)?;
                    return Ok(false);
                }
                let pending = Pending::Execute {
                    record: Box::new(record),
                    started,
                    mask,
                    portal: portal.to_owned(),
                    statement: info.statement_name,
                    formats: info.formats,
                };
                if decision.action == Action::Review {
                    self.review = Some(Review::Execute {
                        frame: Bytes::copy_from_slice(frame.as_bytes()),
                        decision,
                        pending,
                    });
                    return Ok(false);
                }
                self.push(pending);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Close { target, name } => {
                match target {
                    Target::Statement => self.statements.remove(name),
                    Target::Portal => self.portals.remove(name).map(|info| info.prepared),
                };
                self.push(Pending::Close);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Sync => {
                self.skip_until_sync = false;
                self.push(Pending::Sync);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::FunctionCall(_) => {
                // The fast-path interface (libpq's large objects) runs a function by
                // OID, with no SQL to read: judged as the most sensitive class.
                let mut statement = Classified::unparsed();
                statement.operation = crate::policy::Operation::Dangerous;
                statement.kind = "FUNCTION CALL".into();
                let operation = Operation::sql(
                    Protocol::Postgres,
                    &statement,
                    sql::literals_masked("<fast-path function call>"),
                );
                let decision = self.judge(&operation);
                let mut record = self.pipeline.record(&operation, &decision);
                if decision.action == Action::Review {
                    self.review = Some(Review::Query {
                        frame: Bytes::copy_from_slice(frame.as_bytes()),
                        records: vec![record],
                        masks: vec![None],
                        started: Instant::now(),
                        held: vec![(0, decision)],
                    });
                    return Ok(false);
                }
                if decision.action != Action::Allow {
                    record.error = Some(format!("{DENIED_SQLSTATE}: {}", decision.reason));
                    self.push(Pending::Denied {
                        error: denial(&statement.kind, &decision)?,
                        ready_for_query: true,
                        records: vec![record],
                    });
                    return Ok(false);
                }
                self.push(Pending::Query {
                    statements: vec![record],
                    masks: vec![None],
                    started: Instant::now(),
                });
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Terminate => {
                out.extend_from_slice(frame.as_bytes());
                return Ok(true);
            }
            FrontendMessage::Flush
            | FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail { .. }
            | FrontendMessage::AuthResponse(_) => out.extend_from_slice(frame.as_bytes()),
            FrontendMessage::Startup(_)
            | FrontendMessage::SslRequest
            | FrontendMessage::GssEncRequest
            | FrontendMessage::CancelRequest(_) => {
                return Err(ProxyError::UnexpectedMessage(
                    frame.tag().map_or('?', char::from),
                ));
            }
        }
        Ok(false)
    }

    /// Queues an ErrorResponse for a refused extended-protocol message and discards the
    /// agent's messages up to its Sync, as the server would after an error.
    fn refuse_extended(
        &mut self,
        kind: &str,
        decision: &Decision,
        mut record: StatementRecord,
    ) -> Result<(), ProxyError> {
        record.error = Some(format!("{DENIED_SQLSTATE}: {}", decision.reason));
        self.push(Pending::Denied {
            error: denial(kind, decision)?,
            ready_for_query: false,
            records: vec![record],
        });
        self.skip_until_sync = true;
        Ok(())
    }

    /// Holds the statements of `review` until a human decides, then forwards the request
    /// (into `out`) or queues the agent's refusal. `false` when the agent went away
    /// while waiting (the held statements are recorded as withdrawn).
    async fn await_review(
        &mut self,
        review: Review,
        out: &mut BytesMut,
    ) -> Result<bool, ProxyError> {
        match review {
            Review::Query {
                frame,
                records,
                masks,
                started,
                held,
            } => {
                let mut guarded = HeldRecords::new(records, &self.session.store);
                let mut refused = None;
                for (index, decision) in held {
                    let Some(record) = guarded.records.get(index) else {
                        continue;
                    };
                    let resolution = self.hold(record, &decision).await;
                    if let Some(record) = guarded.records.get_mut(index) {
                        record.approval = Some(approval_record(&resolution));
                    }
                    if resolution.outcome == Outcome::Withdrawn {
                        self.session
                            .record_withdrawn(guarded.release(), &resolution)
                            .await;
                        return Ok(false);
                    }
                    if resolution.outcome != Outcome::Approved {
                        refused = Some((index, decision, resolution));
                        break;
                    }
                }
                let mut records = guarded.release();
                match refused {
                    None => {
                        self.push(Pending::Query {
                            statements: records,
                            masks,
                            started,
                        });
                        out.extend_from_slice(&frame);
                    }
                    Some((index, decision, resolution)) => {
                        let kind = records
                            .get(index)
                            .map(|record| record.kind.clone())
                            .unwrap_or_default();
                        for (i, record) in records.iter_mut().enumerate() {
                            record.error = Some(if i == index {
                                format!("{DENIED_SQLSTATE}: {}", refusal_text(&resolution))
                            } else {
                                "not run: another statement in the same query was not approved"
                                    .into()
                            });
                        }
                        self.push(Pending::Denied {
                            error: review_denial(&kind, &decision, &resolution)?,
                            ready_for_query: true,
                            records,
                        });
                    }
                }
            }
            Review::Execute {
                frame,
                decision,
                pending,
            } => {
                let Pending::Execute {
                    record,
                    started,
                    mask,
                    portal,
                    statement,
                    formats,
                } = pending
                else {
                    return Ok(true);
                };
                let guarded = HeldRecords::new(vec![*record], &self.session.store);
                let Some(held) = guarded.records.first() else {
                    return Ok(true);
                };
                let resolution = self.hold(held, &decision).await;
                let Some(record) = guarded.release().pop() else {
                    return Ok(true);
                };
                let mut record = Box::new(record);
                record.approval = Some(approval_record(&resolution));
                match resolution.outcome {
                    Outcome::Approved => {
                        self.push(Pending::Execute {
                            record,
                            started,
                            mask,
                            portal,
                            statement,
                            formats,
                        });
                        out.extend_from_slice(&frame);
                    }
                    Outcome::Withdrawn => {
                        self.session
                            .record_withdrawn(vec![*record], &resolution)
                            .await;
                        return Ok(false);
                    }
                    Outcome::Denied | Outcome::TimedOut => {
                        record.error =
                            Some(format!("{DENIED_SQLSTATE}: {}", refusal_text(&resolution)));
                        self.push(Pending::Denied {
                            error: review_denial(&record.kind, &decision, &resolution)?,
                            ready_for_query: false,
                            records: vec![*record],
                        });
                        self.skip_until_sync = true;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Holds one statement with the broker and waits for its resolution, reading the
    /// agent's further bytes meanwhile to notice it going away.
    async fn hold(&mut self, record: &StatementRecord, decision: &Decision) -> Resolution {
        let read = &mut self.read;
        let buffer = &mut self.buffer;
        let counts = self.counts;
        let agent_gone = async move {
            loop {
                if buffer.len() >= MAX_BUFFERED_WHILE_HELD {
                    // Beyond this the agent's bytes wait in the socket.
                    std::future::pending::<()>().await;
                }
                match read.read_buf(buffer).await {
                    Ok(read) if read > 0 => {
                        counts
                            .up
                            .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => return,
                }
            }
        };
        self.pipeline.hold(record, decision, agent_gone).await
    }

    /// Judges `operation` and, when an allowing rule names a mask profile, prepares
    /// the masking of its result. Fails closed when the mask cannot be applied.
    fn judge_with_mask(&mut self, operation: &Operation) -> (Decision, Option<ResultMask>) {
        if let Some(refused) = self.refuse_unreadable_literals() {
            return (refused, None);
        }
        let (decision, masker) = self.pipeline.judge_with_mask(operation);
        let mask = masker.map(|masker| ResultMask {
            masker,
            tables: match &operation.details {
                Details::Sql { tables_read, .. } => tables_read.clone(),
                _ => Vec::new(),
            },
        });
        (decision, mask)
    }

    fn judge(&self, operation: &Operation) -> Decision {
        self.refuse_unreadable_literals()
            .unwrap_or_else(|| self.pipeline.judge(operation))
    }

    /// A denial of every statement while the server reads string literals differently
    /// from the statement parser.
    fn refuse_unreadable_literals(&self) -> Option<Decision> {
        if !self
            .backslash_quoting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        Some(Decision {
            action: Action::Deny,
            rule: "standard-conforming-strings-off".into(),
            reason: "the server has standard_conforming_strings off, so it reads backslashes \
                     in string literals differently from the statement parser: refused"
                .into(),
            resource: Some(self.session.resource.name.clone()),
            mask: None,
            timeout: None,
        })
    }

    fn unknown_record(&mut self) -> StatementRecord {
        let operation = Operation::sql(
            Protocol::Postgres,
            &Classified::unparsed(),
            sql::literals_masked("<unknown portal>"),
        );
        let decision = Decision {
            action: Action::Allow,
            rule: "-".into(),
            reason: "the server rejects unknown portals itself".into(),
            resource: None,
            mask: None,
            timeout: None,
        };
        self.pipeline.record(&operation, &decision)
    }
}

/// An empty Parse: valid in the protocol, and harmless.
fn empty_statement() -> Classified {
    let mut statement = Classified::unparsed();
    statement.operation = crate::policy::Operation::Read;
    statement.kind = "EMPTY".into();
    statement
}

/// The ErrorResponse an agent gets for a refused statement.
fn denial(kind: &str, decision: &Decision) -> Result<Bytes, ProxyError> {
    let message = format!("sluice: {kind} denied by policy rule `{}`", decision.rule);
    error_response(message, decision.reason.clone())
}

/// The ErrorResponse an agent gets for a held statement that was not approved.
fn review_denial(
    kind: &str,
    decision: &Decision,
    resolution: &Resolution,
) -> Result<Bytes, ProxyError> {
    error_response(
        format!(
            "sluice: {kind} {} (approval {}, rule `{}`)",
            refusal_text(resolution),
            resolution.id,
            decision.rule
        ),
        decision.reason.clone(),
    )
}

fn error_response(message: String, detail: String) -> Result<Bytes, ProxyError> {
    let mut bytes = BytesMut::new();
    encode_error_response(
        &Diagnostic::new(Severity::Error, DENIED_SQLSTATE, message).with_detail(detail),
        &mut bytes,
    )
    .map_err(ProxyError::Encode)?;
    Ok(bytes.freeze())
}

struct ServerLoop<'a> {
    session: &'a PgSession,
    backslash_quoting: &'a AtomicBool,
    read: ReadHalf<Box<dyn ByteStream>>,
    write: WriteHalf<Box<dyn ByteStream>>,
    buffer: BytesMut,
    decoder: FrameDecoder,
    handoff: &'a Handoff,
    queue: VecDeque<Pending>,
    completed: Completed,
    status: TransactionStatus,
    /// DataRows since the last completion.
    rows: u64,
    /// Which statement of the Query at the head completes next.
    query_index: usize,
    cancel_guard: Option<CancelGuard>,
    counts: &'a ByteCounts,
    /// Result columns learned from Describe, by statement and by portal name.
    statement_columns: HashMap<String, Vec<Column>>,
    portal_columns: HashMap<String, Vec<Column>>,
    /// The masking of the result set being streamed, if any.
    active_mask: Option<ActiveMask>,
}

/// A result column, as RowDescription announced it.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    table_oid: u32,
    type_oid: u32,
    format: Format,
}

fn columns_of(frame: &Frame) -> Result<Vec<Column>, ProxyError> {
    match BackendMessage::decode(frame).map_err(ProxyError::ServerMessage)? {
        BackendMessage::RowDescription { fields } => Ok(fields
            .into_iter()
            .map(|field| Column {
                name: field.name.into_owned(),
                table_oid: field.table_oid,
                type_oid: field.type_oid,
                format: field.format,
            })
            .collect()),
        _ => Ok(Vec::new()),
    }
}

impl ServerLoop<'_> {
    async fn run(&mut self) -> Result<(), ProxyError> {
        let result = self.relay().await;
        self.store_completed().await;
        result
    }

    async fn relay(&mut self) -> Result<(), ProxyError> {
        let mut out = BytesMut::with_capacity(64 * 1024);
        loop {
            // Frames may already be buffered (the login read past AuthenticationOk).
            self.handoff.take_into(&mut self.queue);
            while let Some(frame) = self
                .decoder
                .decode(&mut self.buffer)
                .map_err(ProxyError::ServerFrame)?
            {
                let data_row = frame.tag() == Some(b'D');
                self.emit_denials(&mut out).await?;
                self.handle(frame, &mut out).await?;
                if data_row {
                    // The rest of the result's rows in the buffer follow its first.
                    self.rows += mask::take_data_rows(
                        &mut self.buffer,
                        self.active_mask.as_mut(),
                        codec::frame::DEFAULT_MAX_FRAME_LEN,
                        &mut out,
                    );
                }
            }
            self.emit_denials(&mut out).await?;
            if !out.is_empty() {
                self.write
                    .write_all(&out)
                    .await
                    .map_err(ProxyError::AgentIo)?;
                // Counted as the agent receives it, the daemon's own answers included.
                self.counts
                    .down
                    .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
                out.clear();
            }
            self.store_completed().await;
            tokio::select! {
                () = self.handoff.denial.notified() => {}
                read = self.read.read_buf(&mut self.buffer) => {
                    let read = read.map_err(ProxyError::UpstreamIo)?;
                    if read == 0 {
                        if !self.buffer.is_empty() {
                            return Err(ProxyError::ServerFrame(FrameError::Truncated {
                                buffered: self.buffer.len(),
                            }));
                        }
                        self.finish_all("the server closed the connection").await;
                        let _ = self.write.shutdown().await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Writes the daemon's own answers that have reached the head of the queue.
    async fn emit_denials(&mut self, out: &mut BytesMut) -> Result<(), ProxyError> {
        while let Some(Pending::Denied { .. }) = self.queue.front() {
            let Some(Pending::Denied {
                error,
                ready_for_query,
                records,
            }) = self.queue.pop_front()
            else {
                break;
            };
            out.extend_from_slice(&error);
            if ready_for_query {
                encode_ready_for_query(self.status, out);
            }
            for record in records {
                self.store(record).await;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), ProxyError> {
        match frame.tag() {
            Some(b'D') => {
                self.rows += 1;
                if self.active_mask.is_none() {
                    self.activate_for_execute();
                }
                match &mut self.active_mask {
                    Some(active) => active.mask_row(&frame, out)?,
                    None => out.extend_from_slice(frame.as_bytes()),
                }
                return Ok(());
            }
            Some(b'Z') => {
                if let BackendMessage::ReadyForQuery { status } =
                    BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)?
                {
                    self.status = status;
                }
                match self.queue.pop_front() {
                    Some(Pending::Query {
                        statements,
                        started,
                        ..
                    }) => {
                        self.finish_query(statements, started, None).await;
                    }
                    Some(Pending::Sync) | None => {}
                    Some(other) => self.queue.push_front(other),
                }
            }
            Some(b'C' | b'I' | b's' | b'V') => {
                let tag = match BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)? {
                    BackendMessage::CommandComplete { tag } => Some(tag.into_owned()),
                    BackendMessage::PortalSuspended => Some("(suspended)".to_owned()),
                    BackendMessage::FunctionCallResponse { .. } => Some("FUNCTION CALL".to_owned()),
                    _ => None,
                };
                self.complete(tag, None).await;
            }
            Some(b'E') => {
                let error =
                    match BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)? {
                        BackendMessage::ErrorResponse(diagnostic) => format!(
                            "{}: {}",
                            diagnostic.code().unwrap_or("?"),
                            diagnostic.message().unwrap_or_default()
                        ),
                        _ => "error".into(),
                    };
                self.server_error(error).await;
            }
            Some(b'1' | b'2' | b'3' | b'n') => {
                if matches!(
                    self.queue.front(),
                    Some(
                        Pending::Parse | Pending::Bind | Pending::Close | Pending::Describe { .. }
                    )
                ) {
                    self.queue.pop_front();
                }
            }
            Some(b'T') => match self.queue.front() {
                Some(Pending::Describe { .. }) => {
                    let columns = columns_of(&frame)?;
                    if let Some(Pending::Describe { target, name }) = self.queue.pop_front() {
                        match target {
                            Target::Statement => self.statement_columns.insert(name, columns),
                            Target::Portal => self.portal_columns.insert(name, columns),
                        };
                    }
                }
                Some(Pending::Query { masks, .. }) => {
                    if let Some(Some(mask)) = masks.get(self.query_index) {
                        let mask = mask.clone();
                        let columns = columns_of(&frame)?;
                        self.active_mask = Some(ActiveMask::new(&mask, Some(&columns)));
                    }
                }
                _ => {}
            },
            Some(b'R') => {
                // Channel binding ties SCRAM to the TLS channel the agent is not on: offer
                // the agent only the unbound mechanisms.
                if let BackendMessage::Authentication(codec::backend::Authentication::Sasl {
                    mechanisms,
                }) = BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)?
                    && mechanisms.iter().any(|m| m.ends_with("-PLUS"))
                {
                    let mut body = BytesMut::new();
                    body.extend_from_slice(&10i32.to_be_bytes());
                    for mechanism in mechanisms.iter().filter(|m| !m.ends_with("-PLUS")) {
                        body.extend_from_slice(mechanism.as_bytes());
                        body.extend_from_slice(&[0]);
                    }
                    body.extend_from_slice(&[0]);
                    out.extend_from_slice(b"R");
                    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                    out.extend_from_slice(&body);
                    return Ok(());
                }
            }
            Some(b'S') => {
                if let BackendMessage::ParameterStatus { name, value } =
                    BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)?
                    && name == "standard_conforming_strings"
                {
                    self.backslash_quoting
                        .store(value != "on", std::sync::atomic::Ordering::Release);
                }
            }
            Some(b'K') => {
                if let BackendMessage::BackendKeyData { pid, secret_key } =
                    BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)?
                {
                    let (agent_pid, agent_key, guard) =
                        self.session.cancels.register(CancelTarget {
                            agent: self.session.identity.agent.clone(),
                            upstream: self.session.upstream_addr,
                            pid,
                            secret_key,
                        });
                    self.cancel_guard = Some(guard);
                    encode_backend_key_data(agent_pid, &agent_key, out)
                        .map_err(ProxyError::Encode)?;
                    return Ok(());
                }
            }
            _ => {}
        }
        out.extend_from_slice(frame.as_bytes());
        Ok(())
    }

    /// Starts masking the rows of the Execute at the head, if its rule has a profile.
    fn activate_for_execute(&mut self) {
        if let Some(Pending::Execute {
            mask: Some(mask),
            portal,
            statement,
            formats,
            ..
        }) = self.queue.front()
        {
            let columns = match self.portal_columns.get(portal) {
                Some(columns) => Some(columns.clone()),
                // A statement's Describe announces text; the Bind chose the formats.
                None => self.statement_columns.get(statement).map(|columns| {
                    columns
                        .iter()
                        .enumerate()
                        .map(|(i, column)| Column {
                            format: match formats.as_slice() {
                                [] => Format::Text,
                                [one] => *one,
                                many => many.get(i).copied().unwrap_or(Format::Text),
                            },
                            ..column.clone()
                        })
                        .collect()
                }),
            };
            self.active_mask = Some(ActiveMask::new(mask, columns.as_deref()));
        }
    }

    /// A CommandComplete (or its kin) for the request at the head.
    async fn complete(&mut self, tag: Option<String>, error: Option<String>) {
        let rows = std::mem::take(&mut self.rows);
        let masking = self.active_mask.take().map(|active| active.counts());
        if let Some((masked, nulled)) = &masking {
            crate::metrics::global().masked(masked.values().sum::<u64>() + nulled);
        }
        match self.queue.front_mut() {
            Some(Pending::Query {
                statements,
                started,
                ..
            }) => {
                let started = *started;
                if let Some(record) = statements.get_mut(self.query_index) {
                    finish(record, started, rows, tag, error);
                    if let Some((masked, nulled)) = masking {
                        record.masked = masked;
                        record.nulled = nulled;
                    }
                }
                self.query_index += 1;
            }
            Some(Pending::Execute { .. }) => {
                if let Some(Pending::Execute {
                    mut record,
                    started,
                    ..
                }) = self.queue.pop_front()
                {
                    finish(&mut record, started, rows, tag, error);
                    if let Some((masked, nulled)) = masking {
                        record.masked = masked;
                        record.nulled = nulled;
                    }
                    self.store(*record).await;
                }
            }
            _ => {}
        }
    }

    /// An ErrorResponse from the server. In the extended protocol the server now skips
    /// to the next Sync, so every request queued before it is answered by this error.
    async fn server_error(&mut self, error: String) {
        match self.queue.front() {
            Some(Pending::Query { .. }) => {
                self.complete(None, Some(error)).await;
                // The rest of a failed simple Query does not run.
            }
            _ => {
                let mut first = true;
                while let Some(front) = self.queue.front() {
                    if matches!(front, Pending::Sync | Pending::Query { .. }) {
                        break;
                    }
                    match self.queue.pop_front() {
                        Some(Pending::Execute {
                            mut record,
                            started,
                            ..
                        }) => {
                            let reason = if first {
                                error.clone()
                            } else {
                                "not run: an earlier message failed".into()
                            };
                            finish(&mut record, started, 0, None, Some(reason));
                            self.store(*record).await;
                        }
                        Some(Pending::Denied { records, .. }) => {
                            // The server's error comes first; the agent sees only it.
                            for mut record in records {
                                record.error = Some("not run: an earlier message failed".into());
                                self.store(record).await;
                            }
                        }
                        _ => {}
                    }
                    first = false;
                }
                self.rows = 0;
                self.active_mask = None;
            }
        }
    }

    async fn finish_query(
        &mut self,
        statements: Vec<StatementRecord>,
        started: Instant,
        error: Option<&str>,
    ) {
        let completed = std::mem::take(&mut self.query_index);
        for (index, mut record) in statements.into_iter().enumerate() {
            if index >= completed && record.tag.is_none() && record.error.is_none() {
                let reason = error.unwrap_or("not run: an earlier statement failed");
                finish(&mut record, started, 0, None, Some(reason.to_owned()));
            }
            self.store(record).await;
        }
    }

    /// Records whatever was still waiting when the server went away.
    async fn finish_all(&mut self, reason: &str) {
        while let Some(pending) = self.queue.pop_front() {
            match pending {
                Pending::Query {
                    statements,
                    started,
                    ..
                } => {
                    self.finish_query(statements, started, Some(reason)).await;
                }
                Pending::Execute {
                    mut record,
                    started,
                    ..
                } => {
                    finish(&mut record, started, 0, None, Some(reason.to_owned()));
                    self.store(*record).await;
                }
                Pending::Denied { records, .. } => {
                    for record in records {
                        self.store(record).await;
                    }
                }
                _ => {}
            }
        }
    }

    async fn store(&mut self, record: StatementRecord) {
        if self.completed.deferred {
            self.completed.records.push_back(record);
        } else {
            self.session.store_result(record).await;
        }
    }

    /// Stores the records whose answers have been written to the agent.
    async fn store_completed(&mut self) {
        while let Some(record) = self.completed.records.pop_front() {
            self.session.store_result(record).await;
        }
    }
}

fn finish(
    record: &mut StatementRecord,
    started: Instant,
    rows: u64,
    tag: Option<String>,
    error: Option<String>,
) {
    crate::metrics::global().statement(started.elapsed());
    record.duration_us = Some(started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64);
    record.rows = Some(tag.as_deref().and_then(rows_from_tag).unwrap_or(rows));
    record.tag = tag;
    if record.error.is_none() {
        record.error = error;
    }
}

/// Rows affected, from a command tag like `INSERT 0 3`, `UPDATE 7` or `SELECT 5`.
fn rows_from_tag(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_the_command_tag() {
        assert_eq!(rows_from_tag("INSERT 0 3"), Some(3));
        assert_eq!(rows_from_tag("UPDATE 7"), Some(7));
        assert_eq!(rows_from_tag("SELECT 5"), Some(5));
        assert_eq!(rows_from_tag("CREATE TABLE"), None);
    }
}
