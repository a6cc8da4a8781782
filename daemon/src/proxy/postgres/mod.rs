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

pub mod cancel;
mod startup;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};

use self::{
    cancel::{CancelGuard, CancelRegistry, CancelTarget},
    startup::{Opening, authenticate_upstream, brokered_parameters, read_opening},
};
use crate::{
    credentials::Credentials,
    policy::{Action, AgentFacts, Decision, Resource},
    protocol::postgres::{
        BackendMessage, DecodeError, Diagnostic, EncodeError, Frame, FrameDecoder, FrameError,
        FrontendMessage, Severity, TransactionStatus,
        backend::{encode_backend_key_data, encode_error_response, encode_ready_for_query},
        frontend::{Target, encode_cancel_request},
    },
    relay::ByteCounts,
    session::PolicyHandle,
    sql::{self, Classified},
    store::{DecisionRecord, Durability, StatementRecord, Store},
};

/// SQLSTATE for a statement the policy refused: insufficient_privilege.
const DENIED_SQLSTATE: &str = "42501";
/// Longest statement text kept in a record, after literal masking.
const MAX_RECORDED_SQL: usize = 16 * 1024;

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
}

/// What the proxy needs to know about its session.
pub struct PgSession {
    pub session_id: u64,
    pub agent: String,
    pub uid: u32,
    pub exe: Option<PathBuf>,
    pub resource: Resource,
    pub upstream_addr: SocketAddr,
    pub policy: Arc<PolicyHandle>,
    pub credentials: Arc<Credentials>,
    pub cancels: Arc<CancelRegistry>,
    pub store: Store,
}

/// Runs the session to its end and returns the close reason.
pub async fn proxy(
    session: PgSession,
    agent: TcpStream,
    upstream: TcpStream,
    counts: &ByteCounts,
) -> String {
    match run(&session, agent, upstream, counts).await {
        Ok(reason) => reason,
        Err(error) => {
            tracing::warn!(%error, "postgres session ended");
            error.to_string()
        }
    }
}

async fn run(
    session: &PgSession,
    mut agent: TcpStream,
    mut upstream: TcpStream,
    counts: &ByteCounts,
) -> Result<String, ProxyError> {
    let mut agent_buffer = BytesMut::with_capacity(8 * 1024);
    let mut agent_decoder = FrameDecoder::frontend();
    let (version, parameters) =
        match read_opening(&mut agent, &mut agent_buffer, &mut agent_decoder).await? {
            Opening::Cancel { pid, secret_key } => {
                return forward_cancel(session, &mut upstream, pid, &secret_key).await;
            }
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
            agent
                .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0])
                .await
                .map_err(ProxyError::AgentIo)?;
        }
        None => {
            let startup = startup::startup_message(version, &parameters)?;
            upstream
                .write_all(&startup)
                .await
                .map_err(ProxyError::UpstreamIo)?;
        }
    }

    let (agent_read, agent_write) = agent.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let (pending_sender, pending_receiver) = mpsc::unbounded_channel();
    let mut agent_loop = AgentLoop {
        session,
        read: agent_read,
        write: upstream_write,
        buffer: agent_buffer,
        decoder: agent_decoder,
        pending: pending_sender,
        statements: HashMap::new(),
        portals: HashMap::new(),
        skip_until_sync: false,
        seq: 0,
        counts,
    };
    let mut server_loop = ServerLoop {
        session,
        read: upstream_read,
        write: agent_write,
        buffer: server_buffer,
        decoder: server_decoder,
        pending: pending_receiver,
        queue: VecDeque::new(),
        status: TransactionStatus::Idle,
        rows: 0,
        query_index: 0,
        cancel_guard: None,
        counts,
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
    upstream: &mut TcpStream,
    pid: i32,
    secret_key: &[u8],
) -> Result<String, ProxyError> {
    let Some(target) = session.cancels.lookup(&session.agent, pid, secret_key) else {
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
async fn send_fatal(agent: &mut TcpStream, code: &str, message: &str) {
    let mut bytes = BytesMut::new();
    if encode_error_response(&Diagnostic::new(Severity::Fatal, code, message), &mut bytes).is_ok() {
        let _ = agent.write_all(&bytes).await;
        let _ = agent.shutdown().await;
    }
}

/// A request the server will answer, or a response the daemon gives instead.
enum Pending {
    /// A simple Query; its statements complete one per CommandComplete.
    Query {
        statements: Vec<StatementRecord>,
        started: Instant,
    },
    Parse,
    Bind,
    Describe,
    Execute {
        record: StatementRecord,
        started: Instant,
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

/// A statement as judged when the agent prepared it.
struct Prepared {
    classified: Classified,
    sql: String,
}

struct AgentLoop<'a> {
    session: &'a PgSession,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buffer: BytesMut,
    decoder: FrameDecoder,
    pending: mpsc::UnboundedSender<Pending>,
    statements: HashMap<String, Arc<Prepared>>,
    /// Portal → (its statement, how many parameters were bound).
    portals: HashMap<String, (Arc<Prepared>, usize)>,
    skip_until_sync: bool,
    seq: u64,
    counts: &'a ByteCounts,
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
        // The server loop only goes away when the session is ending anyway.
        let _ = self.pending.send(pending);
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
                let classified = sql::classify_or_unparsed(sql);
                let mut records = Vec::with_capacity(classified.len());
                let mut refusal = None;
                for statement in classified {
                    let decision = self.judge(&statement);
                    if decision.action != Action::Allow && refusal.is_none() {
                        refusal = Some((statement.kind.clone(), decision.clone()));
                    }
                    records.push(self.record(&statement, sql, 0, &decision));
                }
                match refusal {
                    None => {
                        self.push(Pending::Query {
                            statements: records,
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
                let mut classified = sql::classify_or_unparsed(parse.query);
                // The extended protocol allows one statement per Parse; an empty
                // string is a valid (empty) statement.
                let statement = match classified.len() {
                    1 => classified.remove(0),
                    0 => empty_statement(),
                    _ => Classified::unparsed(),
                };
                let decision = self.judge(&statement);
                let prepared = Arc::new(Prepared {
                    sql: parse.query.to_owned(),
                    classified: statement,
                });
                if decision.action != Action::Allow {
                    let record = self.record(&prepared.classified, &prepared.sql, 0, &decision);
                    self.refuse_extended(&prepared.classified.kind, &decision, record)?;
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
                        (Arc::clone(prepared), bind.params.len()),
                    );
                }
                self.push(Pending::Bind);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Describe { .. } => {
                self.push(Pending::Describe);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Execute { portal, .. } => {
                let started = Instant::now();
                let Some((prepared, params)) = self.portals.get(portal).cloned() else {
                    // Unknown portal: the server reports the error itself.
                    let record = self.unknown_record();
                    self.push(Pending::Execute { record, started });
                    out.extend_from_slice(frame.as_bytes());
                    return Ok(false);
                };
                // Judged again: the policy may have changed since the Parse.
                let decision = self.judge(&prepared.classified);
                let record = self.record(&prepared.classified, &prepared.sql, params, &decision);
                if decision.action != Action::Allow {
                    self.refuse_extended(&prepared.classified.kind, &decision, record)?;
                    return Ok(false);
                }
                self.push(Pending::Execute { record, started });
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Close { target, name } => {
                match target {
                    Target::Statement => self.statements.remove(name),
                    Target::Portal => self.portals.remove(name).map(|(p, _)| p),
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
                let decision = self.judge(&statement);
                let mut record = self.record(&statement, "<fast-path function call>", 0, &decision);
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

    fn judge(&self, statement: &Classified) -> Decision {
        let session = self.session;
        session.policy.current().decide(
            &AgentFacts {
                agent: &session.agent,
                uid: session.uid,
                exe: session.exe.as_deref(),
            },
            Some(&session.resource.name),
            statement.operation,
        )
    }

    fn record(
        &mut self,
        statement: &Classified,
        sql_text: &str,
        params: usize,
        decision: &Decision,
    ) -> StatementRecord {
        self.seq += 1;
        let mut sql = sql::literals_masked(sql_text);
        if sql.len() > MAX_RECORDED_SQL {
            let mut end = MAX_RECORDED_SQL;
            while !sql.is_char_boundary(end) {
                end -= 1;
            }
            sql.truncate(end);
            sql.push_str(" …");
        }
        StatementRecord {
            session_id: self.session.session_id,
            seq: self.seq,
            sql,
            operation: statement.operation.to_string(),
            kind: statement.kind.clone(),
            tables: statement
                .tables_read
                .iter()
                .chain(&statement.tables_written)
                .cloned()
                .collect(),
            params,
            decision: DecisionRecord {
                action: decision.action.to_string(),
                rule: decision.rule.clone(),
                reason: decision.reason.clone(),
            },
            started_at: OffsetDateTime::now_utc(),
            duration_us: None,
            rows: None,
            tag: None,
            error: None,
            masked: Default::default(),
            nulled: 0,
        }
    }

    fn unknown_record(&mut self) -> StatementRecord {
        let statement = Classified::unparsed();
        let decision = Decision {
            action: Action::Allow,
            rule: "-".into(),
            reason: "the server rejects unknown portals itself".into(),
            resource: None,
        };
        self.record(&statement, "<unknown portal>", 0, &decision)
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
    let message = match decision.action {
        Action::Review => format!(
            "sluice: {kind} needs a human's approval under rule `{}`, and approvals are not available yet: refused",
            decision.rule
        ),
        _ => format!("sluice: {kind} denied by policy rule `{}`", decision.rule),
    };
    let mut bytes = BytesMut::new();
    encode_error_response(
        &Diagnostic::new(Severity::Error, DENIED_SQLSTATE, message)
            .with_detail(decision.reason.clone()),
        &mut bytes,
    )
    .map_err(ProxyError::Encode)?;
    Ok(bytes.freeze())
}

struct ServerLoop<'a> {
    session: &'a PgSession,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buffer: BytesMut,
    decoder: FrameDecoder,
    pending: mpsc::UnboundedReceiver<Pending>,
    queue: VecDeque<Pending>,
    status: TransactionStatus,
    /// DataRows since the last completion.
    rows: u64,
    /// Which statement of the Query at the head completes next.
    query_index: usize,
    cancel_guard: Option<CancelGuard>,
    counts: &'a ByteCounts,
}

impl ServerLoop<'_> {
    async fn run(&mut self) -> Result<(), ProxyError> {
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut agent_done = false;
        loop {
            // Frames may already be buffered (the login read past AuthenticationOk).
            while let Ok(pending) = self.pending.try_recv() {
                self.queue.push_back(pending);
            }
            while let Some(frame) = self
                .decoder
                .decode(&mut self.buffer)
                .map_err(ProxyError::ServerFrame)?
            {
                self.emit_denials(&mut out).await?;
                self.handle(frame, &mut out).await?;
            }
            self.emit_denials(&mut out).await?;
            if !out.is_empty() {
                self.write
                    .write_all(&out)
                    .await
                    .map_err(ProxyError::AgentIo)?;
                out.clear();
            }
            tokio::select! {
                pending = self.pending.recv(), if !agent_done => match pending {
                    Some(pending) => self.queue.push_back(pending),
                    None => agent_done = true,
                },
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
                    self.counts.down.fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
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
                out.extend_from_slice(frame.as_bytes());
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
                    Some(Pending::Parse | Pending::Bind | Pending::Close | Pending::Describe)
                ) {
                    self.queue.pop_front();
                }
            }
            Some(b'T') => {
                if matches!(self.queue.front(), Some(Pending::Describe)) {
                    self.queue.pop_front();
                }
            }
            Some(b'K') => {
                if let BackendMessage::BackendKeyData { pid, secret_key } =
                    BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)?
                {
                    let (agent_pid, agent_key, guard) =
                        self.session.cancels.register(CancelTarget {
                            agent: self.session.agent.clone(),
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

    /// A CommandComplete (or its kin) for the request at the head.
    async fn complete(&mut self, tag: Option<String>, error: Option<String>) {
        let rows = std::mem::take(&mut self.rows);
        match self.queue.front_mut() {
            Some(Pending::Query {
                statements,
                started,
            }) => {
                let started = *started;
                if let Some(record) = statements.get_mut(self.query_index) {
                    finish(record, started, rows, tag, error);
                }
                self.query_index += 1;
            }
            Some(Pending::Execute { .. }) => {
                if let Some(Pending::Execute {
                    mut record,
                    started,
                }) = self.queue.pop_front()
                {
                    finish(&mut record, started, rows, tag, error);
                    self.store(record).await;
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
                        }) => {
                            let reason = if first {
                                error.clone()
                            } else {
                                "not run: an earlier message failed".into()
                            };
                            finish(&mut record, started, 0, None, Some(reason));
                            self.store(record).await;
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
                } => {
                    self.finish_query(statements, started, Some(reason)).await;
                }
                Pending::Execute {
                    mut record,
                    started,
                } => {
                    finish(&mut record, started, 0, None, Some(reason.to_owned()));
                    self.store(record).await;
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

    async fn store(&self, record: StatementRecord) {
        if let Err(error) = self
            .session
            .store
            .put_statement(&record, Durability::Batched)
            .await
        {
            tracing::error!(%error, seq = record.seq, "cannot record a statement");
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
