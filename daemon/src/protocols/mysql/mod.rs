//! The MySQL and MariaDB proxy: every command judged, every result relayed (and
//! masked) in order.
//!
//! A MySQL session is strictly request/response: the client sends one command (its
//! packets start again at sequence id 0), the server answers, and only then does the
//! next command count. So one loop serves a session: read the agent's command, decide
//! it through the [`Pipeline`], forward it or answer it with the daemon's own ERR
//! packet, then relay the server's whole answer, renumbering the packets the daemon
//! rewrites (masked rows, OK packets without session state, a swallowed LOCAL INFILE
//! request). Clients that send commands back to back (PREPARE then EXECUTE with
//! statement id -1) are served in the same order: their bytes wait in the socket.
//!
//! - [`packet`]: framing by hand on `bytes` (see its doc for why not `mysql_common`).
//! - [`wire`]: the messages and capability bits.
//! - [`handshake`]: the mirrored greeting and the login, brokered or relayed.
//! - [`auth`]: native, caching_sha2 and ed25519 answers.
//! - [`response`]: relaying result sets, OK/ERR, prepared statement replies; row masking.
//! - [`kill`]: which connection ids an agent may `KILL`.
//! - [`tls`]: upstream verify-full and agent-side TLS.

mod auth;
mod handshake;
mod kill;
mod packet;
mod response;
mod tls;
mod wire;

use std::{collections::HashMap, sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use self::{
    kill::{KillGuard, KillRegistry},
    packet::{FrameError, Packet, PacketDecoder},
    response::{Expect, MaskSpec, Outcome},
    wire::{DecodeError, ErrPacket, caps},
};
use crate::{
    approvals::Outcome as HoldOutcome,
    pipeline::{
        BoxFuture, ByteStream, Class, Closed, Details, HeldRecords, Operation, OperationRecord,
        Pipeline, SessionInfo, Upstream, approval_record, refusal_text,
    },
    policy::{Action, AgentTls, Decision, Protocol},
    protocols::ProtocolHandler,
    sql::{
        Classified,
        mysql::{
            MysqlContext, MysqlStatement, PreparedNames, ServerFlavor, SessionChange,
            classify_mysql, parse_sql_mode,
        },
    },
};

/// The largest logical packet the proxy reassembles (a row, a statement): beyond it the
/// session ends, failing closed. The server's own `max_allowed_packet` bounds what it
/// sends; this bounds what the daemon holds in memory per session.
pub const MAX_PACKET: usize = 256 * 1024 * 1024;
/// While a statement is held for review, the agent's further bytes are read (to notice
/// it going away) up to this much.
const MAX_BUFFERED_WHILE_HELD: usize = 1024 * 1024;

// Command bytes.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
pub(crate) const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_PING: u8 = 0x0E;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1A;
const COM_STMT_FETCH: u8 = 0x1C;
const COM_RESET_CONNECTION: u8 = 0x1F;

/// ER_SPECIFIC_ACCESS_DENIED_ERROR: what an agent gets for a refused command.
const ER_DENIED: u16 = 1227;
/// ER_UNKNOWN_STMT_HANDLER.
const ER_UNKNOWN_STATEMENT: u16 = 1243;
/// ER_EMPTY_QUERY.
const ER_EMPTY_QUERY: u16 = 1065;

/// The statement the daemon runs after login so that the server reports every change
/// of `sql_mode` (and keeps reporting the character set, which it does by default).
const TRACK_SQL_MODE: &str = "SET @@session.session_track_system_variables = \
     IF(@@session.session_track_system_variables IN ('', '*'), \
        IF(@@session.session_track_system_variables = '*', '*', 'sql_mode,character_set_client'), \
        CONCAT(@@session.session_track_system_variables, ',sql_mode,character_set_client'))";
const READ_SESSION: &str = "SELECT @@session.sql_mode, @@session.character_set_client";

/// Errors that end a MySQL session. Each becomes the session's close reason.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("agent i/o: {0}")]
    AgentIo(std::io::Error),
    #[error("upstream i/o: {0}")]
    UpstreamIo(std::io::Error),
    #[error("protocol_error: malformed packet from the agent: {0}")]
    AgentFrame(FrameError),
    #[error("protocol_error: malformed packet from the server: {0}")]
    ServerFrame(FrameError),
    #[error("protocol_error: malformed message from the agent: {0}")]
    AgentMessage(DecodeError),
    #[error("protocol_error: malformed message from the server: {0}")]
    ServerMessage(DecodeError),
    #[error("protocol_error: {0}")]
    Unsupported(String),
    #[error("client_closed: {0}")]
    AgentClosed(&'static str),
    #[error("upstream_closed: {0}")]
    UpstreamClosed(&'static str),
    #[error("upstream_refused: {0}")]
    UpstreamRefused(String),
    #[error("upstream_auth_failed: {0}")]
    UpstreamAuth(String),
    #[error("upstream_auth_failed: unsupported: {0}")]
    UnsupportedAuth(String),
    #[error("credential_missing: `{0}` is not in the credentials file")]
    MissingCredential(String),
    #[error("upstream_tls: {0}")]
    Tls(String),
    #[error("session_setup_failed: {0}")]
    SetUp(String),
    #[error("audit_log_unavailable: {0}")]
    Audit(crate::store::StoreError),
}

/// One side of the session: its stream, what was read and not yet decoded, what is
/// queued to be written.
pub struct Conn {
    stream: Box<dyn ByteStream>,
    buffer: BytesMut,
    decoder: PacketDecoder,
    out: BytesMut,
    /// Whether this is the agent's side (for the byte counts and error kinds).
    agent: bool,
    counts: Option<Arc<crate::relay::ByteCounts>>,
}

impl Conn {
    fn new(stream: Box<dyn ByteStream>, limit: usize, agent: bool) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
            decoder: PacketDecoder::new(limit),
            out: BytesMut::with_capacity(16 * 1024),
            agent,
            counts: None,
        }
    }

    fn io_error(&self, error: std::io::Error) -> ProxyError {
        if self.agent {
            ProxyError::AgentIo(error)
        } else {
            ProxyError::UpstreamIo(error)
        }
    }

    fn frame_error(&self, error: FrameError) -> ProxyError {
        if self.agent {
            ProxyError::AgentFrame(error)
        } else {
            ProxyError::ServerFrame(error)
        }
    }

    /// A packet already buffered, without reading.
    fn buffered(&mut self) -> Result<Option<Packet>, ProxyError> {
        self.decoder
            .decode(&mut self.buffer)
            .map_err(|e| self.frame_error(e))
    }

    /// The next packet; `None` when the peer closed between packets.
    async fn read(&mut self) -> Result<Option<Packet>, ProxyError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(Some(packet));
            }
            if !self.read_more().await? {
                if self.decoder.is_mid_packet(&self.buffer) {
                    return Err(self.frame_error(FrameError::Truncated {
                        buffered: self.buffer.len(),
                    }));
                }
                return Ok(None);
            }
        }
    }

    /// Reads what the socket has; `false` at its end.
    async fn read_more(&mut self) -> Result<bool, ProxyError> {
        let read = self
            .stream
            .read_buf(&mut self.buffer)
            .await
            .map_err(|e| self.io_error(e))?;
        if self.agent
            && let Some(counts) = &self.counts
        {
            counts
                .up
                .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(read > 0)
    }

    /// Queues `payload` as a packet from sequence id `seq`; returns the next id.
    fn queue(&mut self, seq: u8, payload: &[u8]) -> u8 {
        packet::encode(seq, payload, &mut self.out)
    }

    async fn flush(&mut self) -> Result<(), ProxyError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| self.io_error(e))?;
        if self.agent
            && let Some(counts) = &self.counts
        {
            counts
                .down
                .fetch_add(self.out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.out.clear();
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    async fn into_tls(self, agent_tls: &AgentTls) -> Result<Self, ProxyError> {
        let stream = tls::accept(self.stream, agent_tls).await?;
        Ok(Self { stream, ..self })
    }

    async fn into_tls_client(self, session: &SessionInfo) -> Result<Self, ProxyError> {
        let stream =
            tls::connect(self.stream, &session.resource.tls, session.upstream_addr).await?;
        Ok(Self { stream, ..self })
    }
}

/// The MySQL/MariaDB handler of the protocol registry. Connection ids span sessions:
/// an agent's `KILL` arrives on a connection of its own.
#[derive(Default)]
pub struct Handler {
    kills: Arc<KillRegistry>,
}

impl ProtocolHandler for Handler {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
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
            match run(&session, agent, upstream, &self.kills).await {
                Ok(reason) => Closed::from(reason),
                Err(error) => {
                    tracing::warn!(%error, "mysql session ended");
                    Closed::from(error.to_string())
                }
            }
        })
    }
}

/// A statement the agent prepared, as judged then.
struct Prepared {
    classified: Classified,
    summary: String,
    params: u16,
    /// Parameter types from the last EXECUTE that bound them.
    param_types: Vec<u8>,
    /// The result columns of its last EXECUTE, for the rows a cursor FETCH returns.
    columns: Vec<wire::Column>,
    /// How the rows of its open cursor are masked.
    cursor_mask: Option<MaskSpec>,
}

/// The state of one logged-in session.
struct Proxy<'s> {
    session: &'s SessionInfo,
    pipeline: Pipeline<'s>,
    agent: Conn,
    upstream: Conn,
    agent_caps: u64,
    upstream_caps: u64,
    statements: HashMap<u32, Prepared>,
    /// The server's "last prepared" statement (for statement id -1); `None` after a
    /// PREPARE the daemon refused, so that an EXECUTE of -1 is refused too.
    last_prepared: Option<u32>,
    /// How the server reads statement text now: `sql_mode`, client character set,
    /// server version, current database.
    context: MysqlContext,
    /// Whether `context.sql_mode` is known (from the server's session tracking): when
    /// it is not, every statement is refused.
    sql_mode_known: bool,
    /// Classes of the SQL-level `PREPARE name FROM '...'` statements, for `EXECUTE name`.
    names: PreparedNames,
    kills: &'s Arc<KillRegistry>,
    _kill_guard: KillGuard,
}

async fn run(
    session: &SessionInfo,
    agent: Box<dyn ByteStream>,
    upstream: Box<dyn ByteStream>,
    kills: &Arc<KillRegistry>,
) -> Result<String, ProxyError> {
    let mut agent = Conn::new(agent, MAX_PACKET, true);
    agent.counts = Some(Arc::clone(&session.counts));
    let logged_in = handshake::login(session, agent, upstream, MAX_PACKET).await?;
    let kill_guard = kills.register(
        session.upstream_addr,
        logged_in.connection_id,
        &session.identity.agent,
    );
    tracing::info!(
        connection_id = logged_in.connection_id,
        user = %logged_in.user,
        "mysql session logged in"
    );
    let mut proxy = Proxy {
        session,
        pipeline: Pipeline::new(session),
        agent: logged_in.agent,
        upstream: logged_in.upstream,
        agent_caps: logged_in.agent_caps,
        upstream_caps: logged_in.upstream_caps,
        statements: HashMap::new(),
        last_prepared: None,
        context: MysqlContext {
            charset: charset_name(logged_in.charset).to_owned(),
            server: ServerFlavor::from_greeting(&logged_in.version),
            schema: logged_in.database,
            ..MysqlContext::default()
        },
        sql_mode_known: false,
        names: PreparedNames::default(),
        kills,
        _kill_guard: kill_guard,
    };
    proxy.set_up_tracking().await?;
    proxy.serve().await
}

/// The character set of a collation id a client sends at login (the common ones; the
/// server's session tracking reports the name itself from then on).
fn charset_name(collation: u8) -> &'static str {
    match collation {
        33 | 83 | 192..=215 => "utf8mb3",
        45 | 46 | 224..=247 => "utf8mb4",
        8 | 5 | 15 | 31 | 47 | 48 | 49 | 94 => "latin1",
        11 | 65 => "ascii",
        63 => "binary",
        1 | 84 => "big5",
        28 | 87 => "gbk",
        13 | 88 => "sjis",
        95 | 96 => "cp932",
        _ => "unknown",
    }
}

/// The refusal an agent gets.
fn denial_packet(kind: &str, decision: &Decision) -> Bytes {
    let mut payload = BytesMut::new();
    ErrPacket::new(
        ER_DENIED,
        "42000",
        format!(
            "sluice: {kind} denied by policy rule `{}`: {}",
            decision.rule, decision.reason
        ),
    )
    .encode(&mut payload);
    payload.freeze()
}

/// A decision the daemon makes itself, whatever the policy says.
fn fixed_denial(session: &SessionInfo, rule: &str, reason: String) -> Decision {
    Decision {
        action: Action::Deny,
        rule: rule.into(),
        reason,
        resource: Some(session.resource.name.clone()),
        mask: None,
        timeout: None,
    }
}

fn fixed_allow(session: &SessionInfo, rule: &str, reason: String) -> Decision {
    Decision {
        action: Action::Allow,
        ..fixed_denial(session, rule, reason)
    }
}

/// The name of a command the proxy refuses, for records and errors.
fn refused_command(command: u8) -> (&'static str, Class) {
    match command {
        0x05 => ("COM_CREATE_DB", Class::Ddl),
        0x06 => ("COM_DROP_DB", Class::Ddl),
        0x07 => ("COM_REFRESH", Class::Admin),
        0x08 => ("COM_SHUTDOWN", Class::Dangerous),
        0x09 => ("COM_STATISTICS", Class::Admin),
        0x0A => ("COM_PROCESS_INFO", Class::Admin),
        0x0C => ("COM_PROCESS_KILL", Class::Admin),
        0x0D => ("COM_DEBUG", Class::Admin),
        0x11 => ("COM_CHANGE_USER", Class::Dcl),
        0x12 => ("COM_BINLOG_DUMP", Class::Dangerous),
        0x13 => ("COM_TABLE_DUMP", Class::Dangerous),
        0x15 => ("COM_REGISTER_SLAVE", Class::Dangerous),
        0x1B => ("COM_SET_OPTION", Class::Admin),
        0x1D => ("COM_DAEMON", Class::Admin),
        0x1E => ("COM_BINLOG_DUMP_GTID", Class::Dangerous),
        0xFA => ("COM_STMT_BULK_EXECUTE", Class::Unparsed),
        0xFE => ("COM_MULTI", Class::Unparsed),
        _ => ("unknown command", Class::Unparsed),
    }
}

impl<'s> Proxy<'s> {
    fn session_track_upstream(&self) -> bool {
        self.upstream_caps & caps::SESSION_TRACK != 0
    }

    /// Asks the server to report `sql_mode` changes and reads the current value.
    async fn set_up_tracking(&mut self) -> Result<(), ProxyError> {
        self.sql_mode_known = false;
        if !self.session_track_upstream() {
            tracing::warn!("the server does not track session state: statements are refused");
            return Ok(());
        }
        let track = self.session_track_upstream();
        handshake::own_query(&mut self.upstream, TRACK_SQL_MODE, track).await?;
        let answer = handshake::own_query(&mut self.upstream, READ_SESSION, track).await?;
        if let [Some(mode), charset, ..] = answer.row.as_slice() {
            self.context.sql_mode = parse_sql_mode(&String::from_utf8_lossy(mode));
            self.sql_mode_known = true;
            if let Some(charset) = charset {
                self.context.charset = String::from_utf8_lossy(charset).into_owned();
            }
        }
        Ok(())
    }

    async fn serve(&mut self) -> Result<String, ProxyError> {
        loop {
            self.agent.flush().await?;
            let Some(packet) = self.agent.read().await? else {
                self.upstream.shutdown().await;
                return Ok("client_closed".into());
            };
            let Some(command) = packet.first() else {
                return Err(ProxyError::Unsupported("an empty command packet".into()));
            };
            match command {
                COM_QUIT => {
                    self.forward(&packet).await?;
                    self.upstream.shutdown().await;
                    return Ok("client_closed".into());
                }
                COM_QUERY => self.query(packet).await?,
                COM_STMT_PREPARE => self.prepare(packet).await?,
                COM_STMT_EXECUTE => self.execute(packet).await?,
                COM_STMT_FETCH => self.fetch(packet).await?,
                COM_INIT_DB => self.init_db(packet).await?,
                COM_FIELD_LIST => self.field_list(packet).await?,
                COM_PING | COM_STMT_RESET => {
                    self.forward(&packet).await?;
                    self.relay(Expect::Simple, packet.next_seq, None).await?;
                }
                COM_RESET_CONNECTION => {
                    self.forward(&packet).await?;
                    let outcome = self.relay(Expect::Simple, packet.next_seq, None).await?;
                    if outcome.error.is_none() {
                        // The server forgot its prepared statements and session
                        // variables, tracking included.
                        self.statements.clear();
                        self.last_prepared = None;
                        self.set_up_tracking().await?;
                    }
                }
                COM_STMT_SEND_LONG_DATA | COM_STMT_CLOSE => self.no_reply_statement(packet).await?,
                other => self.refuse_command(other, &packet).await?,
            }
        }
    }

    /// Forwards the agent's command upstream as it came (the same sequence ids).
    async fn forward(&mut self, packet: &Packet) -> Result<(), ProxyError> {
        self.pipeline
            .flush_audit()
            .await
            .map_err(ProxyError::Audit)?;
        self.upstream.queue(packet.seq, &packet.payload);
        self.upstream.flush().await
    }

    /// Answers the agent's command with the daemon's own packet.
    async fn answer(&mut self, seq: u8, payload: &[u8]) -> Result<(), ProxyError> {
        self.pipeline
            .flush_audit()
            .await
            .map_err(ProxyError::Audit)?;
        self.agent.queue(seq, payload);
        self.agent.flush().await
    }

    /// Classifies SQL text as the server will read it in this session.
    fn classify(&self, sql: &[u8]) -> Vec<MysqlStatement> {
        if !self.sql_mode_known {
            return vec![unparsed_statement(format!(
                "<{} bytes, not read: the session's sql_mode is unknown>",
                sql.len()
            ))];
        }
        classify_mysql(sql, &self.context)
    }

    fn operation(&self, statement: &MysqlStatement) -> Operation {
        let mut operation = Operation::sql(
            Protocol::Mysql,
            &statement.classified,
            statement.summary.clone(),
        );
        if let Details::Sql { database, .. } = &mut operation.details {
            database.clone_from(&self.context.schema);
        }
        operation
    }

    /// Applies what a statement the server ran changed in the session (tracked
    /// variables from its OK packet come on top, in [`Self::relay`]).
    fn ran(&mut self, statement: &MysqlStatement) {
        self.names.record(statement);
        for change in &statement.session {
            match change {
                SessionChange::SqlMode(Some(mode)) => self.context.sql_mode = mode.clone(),
                SessionChange::Charset(Some(charset)) => self.context.charset.clone_from(charset),
                SessionChange::Schema(schema) => self.context.schema = Some(schema.clone()),
                // Computed values arrive through session tracking.
                SessionChange::SqlMode(None) | SessionChange::Charset(None) => {}
            }
        }
    }

    async fn query(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let started = Instant::now();
        let sql = packet.payload.slice(1..);
        let mut statements = self.classify(&sql);
        let mut statement = match statements.len() {
            1 => statements.remove(0),
            0 => {
                let mut statement = unparsed_statement(String::new());
                statement.classified.operation = Class::Read;
                statement.classified.kind = "EMPTY".into();
                let operation = self.operation(&statement);
                let decision = fixed_denial(
                    self.session,
                    "mysql-empty-query",
                    "the text holds no statement".into(),
                );
                let mut record = self.pipeline.record(&operation, &decision);
                let mut payload = BytesMut::new();
                ErrPacket::new(ER_EMPTY_QUERY, "42000", "Query was empty").encode(&mut payload);
                record.error = Some("42000: Query was empty".into());
                self.answer(packet.next_seq, &payload).await?;
                self.finish(record, started, None).await;
                return Ok(());
            }
            _ => {
                // Multi-statements are off on this connection: the server would refuse
                // the text whole. The first statement the policy refuses tells the agent
                // why; the record carries the whole text's summary.
                let mut refused = None;
                for statement in &mut statements {
                    self.names.resolve(statement);
                    let decision = self.pipeline.judge(&self.operation(statement));
                    if decision.action != Action::Allow {
                        refused = Some((statement.clone(), decision));
                        break;
                    }
                }
                let (mut statement, decision) = match refused {
                    Some(found) => found,
                    None => (
                        statements.remove(0),
                        fixed_denial(
                            self.session,
                            "mysql-multi-statements",
                            "several statements in one query: multi-statements are off \
                             through sluice"
                                .into(),
                        ),
                    ),
                };
                let decision = Decision {
                    action: Action::Deny,
                    ..decision
                };
                statement.summary = statements_summary(&statements, &statement);
                let operation = self.operation(&statement);
                return self
                    .refuse(packet.next_seq, &operation, &decision, started)
                    .await;
            }
        };
        self.names.resolve(&mut statement);
        if mentions_session_tracking(&sql) {
            let operation = self.operation(&statement);
            let decision = fixed_denial(
                self.session,
                "mysql-session-tracking",
                "the daemon tracks sql_mode through session_track_system_variables, which \
                 agents may not change"
                    .into(),
            );
            return self
                .refuse(packet.next_seq, &operation, &decision, started)
                .await;
        }
        if let Some((id, _)) = statement.kill {
            return self.kill(packet, &statement, id, started).await;
        }
        let operation = self.operation(&statement);
        let (decision, masker) = self.pipeline.judge_with_mask(&operation);
        let mask = masker.map(|masker| MaskSpec {
            masker,
            tables: statement.classified.tables_read.clone(),
        });
        let outcome = self
            .run_judged(packet, operation, decision, mask, started, Expect::Text)
            .await?;
        if outcome.is_some_and(|outcome| outcome.error.is_none()) {
            self.ran(&statement);
        }
        Ok(())
    }

    /// Forwards a judged command (holding it first under `review`), relays the answer
    /// and records it; or refuses it.
    async fn run_judged(
        &mut self,
        packet: Packet,
        operation: Operation,
        decision: Decision,
        mask: Option<MaskSpec>,
        started: Instant,
        expect: Expect,
    ) -> Result<Option<Outcome>, ProxyError> {
        let mut record = self.pipeline.record(&operation, &decision);
        match decision.action {
            Action::Deny => {
                record.error = Some(format!("42000: {}", decision.reason));
                self.answer(packet.next_seq, &denial_packet(&operation.verb, &decision))
                    .await?;
                self.finish(record, started, None).await;
                return Ok(None);
            }
            Action::Review => {
                self.pipeline
                    .flush_audit()
                    .await
                    .map_err(ProxyError::Audit)?;
                let held = HeldRecords::new(vec![record], &self.session.store);
                let Some(first) = held.records.first() else {
                    return Ok(None);
                };
                let agent = &mut self.agent;
                let resolution = self
                    .pipeline
                    .hold(first, &decision, agent_gone(agent))
                    .await;
                let Some(mut held_record) = held.release().pop() else {
                    return Ok(None);
                };
                held_record.approval = Some(approval_record(&resolution));
                match resolution.outcome {
                    HoldOutcome::Approved => record = held_record,
                    HoldOutcome::Withdrawn => {
                        self.session
                            .record_withdrawn(vec![held_record], &resolution)
                            .await;
                        return Err(ProxyError::AgentClosed("while a statement was held"));
                    }
                    HoldOutcome::Denied | HoldOutcome::TimedOut => {
                        let text = refusal_text(&resolution);
                        held_record.error = Some(format!("42000: {text}"));
                        let mut payload = BytesMut::new();
                        ErrPacket::new(
                            ER_DENIED,
                            "42000",
                            format!(
                                "sluice: {} {text} (approval {}, rule `{}`)",
                                operation.verb, resolution.id, decision.rule
                            ),
                        )
                        .encode(&mut payload);
                        self.answer(packet.next_seq, &payload).await?;
                        self.finish(held_record, started, None).await;
                        return Ok(None);
                    }
                }
            }
            Action::Allow => {}
        }
        self.forward(&packet).await?;
        let outcome = self.relay(expect, packet.next_seq, mask.as_ref()).await?;
        self.finish(record, started, Some(&outcome)).await;
        Ok(Some(outcome))
    }

    /// Refuses with the daemon's ERR packet and records it.
    async fn refuse(
        &mut self,
        seq: u8,
        operation: &Operation,
        decision: &Decision,
        started: Instant,
    ) -> Result<(), ProxyError> {
        let mut record = self.pipeline.record(operation, decision);
        record.error = Some(format!("42000: {}", decision.reason));
        self.answer(seq, &denial_packet(&operation.verb, decision))
            .await?;
        self.finish(record, started, None).await;
        Ok(())
    }

    /// Completes and stores a record.
    async fn finish(
        &mut self,
        mut record: OperationRecord,
        started: Instant,
        outcome: Option<&Outcome>,
    ) {
        let elapsed = started.elapsed();
        crate::metrics::global().statement(elapsed);
        record.duration_us = Some(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
        if let Some(outcome) = outcome {
            record.rows = Some(outcome.rows.max(outcome.affected));
            record.tag = outcome.tag.clone();
            if record.error.is_none() {
                record.error.clone_from(&outcome.error);
            }
            record.masked.clone_from(&outcome.masked);
            record.nulled = outcome.nulled;
            if outcome.masked.values().sum::<u64>() + outcome.nulled > 0 {
                crate::metrics::global()
                    .masked(outcome.masked.values().sum::<u64>() + outcome.nulled);
            }
            if outcome.local_infile {
                self.record_local_infile().await;
            }
        }
        self.session.store_result(record).await;
    }

    /// The server asked for a client file (LOAD DATA LOCAL): it got an empty one.
    async fn record_local_infile(&mut self) {
        let operation = Operation::new(
            Protocol::Mysql,
            Class::Dangerous,
            "LOCAL INFILE",
            "<the server asked for a client file>".into(),
        );
        let decision = fixed_denial(
            self.session,
            "mysql-local-infile",
            "the daemon never reads a file for an agent: the server got an empty file".into(),
        );
        let mut record = self.pipeline.record(&operation, &decision);
        record.error =
            Some("the server's LOCAL INFILE request was answered with an empty file".into());
        if let Err(error) = self.pipeline.flush_audit().await {
            tracing::error!(%error, "cannot record a LOCAL INFILE request");
        }
        self.session.store_result(record).await;
    }

    /// `KILL [QUERY] n`: only for connection ids of the agent's own sessions, whatever
    /// the policy says of `admin`.
    async fn kill(
        &mut self,
        packet: Packet,
        statement: &MysqlStatement,
        id: u64,
        started: Instant,
    ) -> Result<(), ProxyError> {
        let operation = self.operation(statement);
        let own = u32::try_from(id).is_ok_and(|id| {
            self.kills
                .owned_by(self.session.upstream_addr, id, &self.session.identity.agent)
        });
        if own {
            let decision = fixed_allow(
                self.session,
                "mysql-kill-own-session",
                format!("connection {id} is a session of this agent"),
            );
            self.run_judged(packet, operation, decision, None, started, Expect::Text)
                .await?;
            return Ok(());
        }
        let decision = fixed_denial(
            self.session,
            "mysql-kill-foreign-session",
            format!("connection {id} is not a session of this agent"),
        );
        self.refuse(packet.next_seq, &operation, &decision, started)
            .await
    }

    async fn refuse_command(&mut self, command: u8, packet: &Packet) -> Result<(), ProxyError> {
        let (name, class) = refused_command(command);
        let operation = Operation::new(
            Protocol::Mysql,
            class,
            name,
            format!("<{name} (0x{command:02x})>"),
        );
        let decision = fixed_denial(
            self.session,
            "mysql-command-refused",
            format!("{name} is never relayed through sluice"),
        );
        self.refuse(packet.next_seq, &operation, &decision, Instant::now())
            .await
    }

    async fn init_db(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let started = Instant::now();
        let name = String::from_utf8_lossy(&packet.payload[1..]).into_owned();
        let mut operation = Operation::new(
            Protocol::Mysql,
            Class::Read,
            "USE",
            format!("USE `{}`", name.replace('`', "``")),
        );
        operation.targets = vec![name.clone()];
        let decision = self.pipeline.judge(&operation);
        let outcome = self
            .run_judged(packet, operation, decision, None, started, Expect::Simple)
            .await?;
        if outcome.is_some_and(|o| o.error.is_none()) {
            self.context.schema = Some(name);
        }
        Ok(())
    }

    async fn field_list(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let started = Instant::now();
        let table = {
            let mut reader = wire::Reader::new(&packet.payload[1..], "COM_FIELD_LIST");
            String::from_utf8_lossy(reader.nul_str()).into_owned()
        };
        let mut operation = Operation::new(
            Protocol::Mysql,
            Class::Read,
            "FIELD LIST",
            format!("SHOW COLUMNS FROM `{}`", table.replace('`', "``")),
        );
        operation.targets = vec![table];
        let decision = self.pipeline.judge(&operation);
        self.run_judged(
            packet,
            operation,
            decision,
            None,
            started,
            Expect::FieldList,
        )
        .await
        .map(|_| ())
    }

    async fn prepare(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let started = Instant::now();
        let sql = packet.payload.slice(1..);
        let mut statements = self.classify(&sql);
        let mut statement = match statements.len() {
            1 => statements.remove(0),
            _ => unparsed_statement(statements_summary(
                &statements,
                &unparsed_statement(String::new()),
            )),
        };
        self.names.resolve(&mut statement);
        let operation = self.operation(&statement);
        let mut decision = self.pipeline.judge(&operation);
        if mentions_session_tracking(&sql) {
            decision = fixed_denial(
                self.session,
                "mysql-session-tracking",
                "agents may not change session_track_system_variables".into(),
            );
        }
        if decision.action == Action::Deny {
            // An EXECUTE of statement id -1 now means this refused one.
            self.last_prepared = None;
            return self
                .refuse(packet.next_seq, &operation, &decision, started)
                .await;
        }
        // A statement under review is held when it is executed, not prepared.
        self.forward(&packet).await?;
        let outcome = self.relay(Expect::Prepare, packet.next_seq, None).await?;
        match outcome.prepared {
            Some((id, params, _columns)) => {
                self.statements.insert(
                    id,
                    Prepared {
                        summary: operation.summary.clone(),
                        classified: statement.classified,
                        params,
                        param_types: Vec::new(),
                        columns: Vec::new(),
                        cursor_mask: None,
                    },
                );
                self.last_prepared = Some(id);
            }
            None => self.last_prepared = None,
        }
        Ok(())
    }

    /// The statement an id names (-1: the last one prepared).
    fn statement_id(&self, raw: u32) -> Option<u32> {
        if raw == u32::MAX {
            self.last_prepared
        } else {
            Some(raw)
        }
    }

    async fn unknown_statement(&mut self, seq: u8, raw: u32) -> Result<(), ProxyError> {
        let mut payload = BytesMut::new();
        ErrPacket::new(
            ER_UNKNOWN_STATEMENT,
            "HY000",
            format!("Unknown prepared statement handler ({raw}) given to mysqld_stmt_execute"),
        )
        .encode(&mut payload);
        self.answer(seq, &payload).await
    }

    async fn execute(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let started = Instant::now();
        let mut reader = wire::Reader::new(&packet.payload[1..], "COM_STMT_EXECUTE");
        let raw = reader.u32().map_err(ProxyError::AgentMessage)?;
        let flags = reader.u8().map_err(ProxyError::AgentMessage)?;
        let _iterations = reader.u32().map_err(ProxyError::AgentMessage)?;
        let Some(id) = self.statement_id(raw) else {
            return self.unknown_statement(packet.next_seq, raw).await;
        };
        let Some(prepared) = self.statements.get_mut(&id) else {
            return self.unknown_statement(packet.next_seq, raw).await;
        };
        let parameters =
            response::parameter_summary(&mut reader, prepared.params, &mut prepared.param_types);
        let mut operation = Operation::sql(
            Protocol::Mysql,
            &prepared.classified,
            prepared.summary.clone(),
        );
        if let Details::Sql { database, .. } = &mut operation.details {
            database.clone_from(&self.context.schema);
        }
        operation.parameters = parameters;
        // Judged again: the policy may have changed since the PREPARE.
        let (decision, masker) = self.pipeline.judge_with_mask(&operation);
        let mask = masker.map(|masker| MaskSpec {
            masker,
            tables: prepared.classified.tables_read.clone(),
        });
        let cursor = flags & 0x07 != 0;
        let outcome = self
            .run_judged(
                packet,
                operation,
                decision,
                mask.clone(),
                started,
                Expect::Binary,
            )
            .await?;
        if let (Some(outcome), Some(prepared)) = (outcome, self.statements.get_mut(&id)) {
            prepared.columns = outcome.columns;
            prepared.cursor_mask = if cursor { mask } else { None };
        }
        Ok(())
    }

    async fn fetch(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let mut reader = wire::Reader::new(&packet.payload[1..], "COM_STMT_FETCH");
        let raw = reader.u32().map_err(ProxyError::AgentMessage)?;
        let Some(prepared) = self
            .statement_id(raw)
            .and_then(|id| self.statements.get(&id))
        else {
            return self.unknown_statement(packet.next_seq, raw).await;
        };
        // The rows of an EXECUTE already judged and recorded.
        let columns = prepared.columns.clone();
        let mask = prepared.cursor_mask.clone();
        self.forward(&packet).await?;
        self.relay(Expect::Fetch(columns), packet.next_seq, mask.as_ref())
            .await?;
        Ok(())
    }

    /// SEND_LONG_DATA and CLOSE: no reply. For a statement the daemon does not know
    /// (refused, or never prepared) nothing is sent upstream.
    async fn no_reply_statement(&mut self, packet: Packet) -> Result<(), ProxyError> {
        let mut reader = wire::Reader::new(&packet.payload[1..], "a statement command");
        let raw = reader.u32().map_err(ProxyError::AgentMessage)?;
        let Some(id) = self.statement_id(raw) else {
            return Ok(());
        };
        if !self.statements.contains_key(&id) {
            return Ok(());
        }
        if packet.first() == Some(COM_STMT_CLOSE) {
            self.statements.remove(&id);
        }
        self.forward(&packet).await
    }

    /// Relays the server's answer; see [`response`].
    async fn relay(
        &mut self,
        expect: Expect,
        seq: u8,
        mask: Option<&MaskSpec>,
    ) -> Result<Outcome, ProxyError> {
        let outcome = response::relay(self, expect, seq, mask).await?;
        if let Some(mode) = &outcome.sql_mode {
            tracing::debug!(sql_mode = %mode, "sql_mode changed");
            self.context.sql_mode = parse_sql_mode(mode);
        }
        if let Some(charset) = &outcome.charset_client {
            self.context.charset.clone_from(charset);
        }
        if let Some(schema) = &outcome.schema {
            self.context.schema = Some(schema.clone());
        }
        Ok(outcome)
    }
}

/// Completes when the agent closes (or breaks) its connection; reads (and keeps) what
/// it sends meanwhile, up to a limit.
async fn agent_gone(agent: &mut Conn) {
    loop {
        if agent.buffer.len() >= MAX_BUFFERED_WHILE_HELD {
            std::future::pending::<()>().await;
        }
        match agent.read_more().await {
            Ok(true) => {}
            _ => return,
        }
    }
}

/// Whether SQL text names `session_track` anywhere (a statement that could turn the
/// daemon's `sql_mode` tracking off is refused, however it is written).
fn mentions_session_tracking(sql: &[u8]) -> bool {
    sql.windows(13)
        .any(|window| window.eq_ignore_ascii_case(b"session_track"))
}

/// A statement entry for text the daemon does not read.
fn unparsed_statement(summary: String) -> MysqlStatement {
    MysqlStatement {
        classified: Classified::unparsed(),
        summary,
        prepares: None,
        executes: None,
        deallocates: None,
        session: Vec::new(),
        kill: None,
    }
}

/// The summaries of several statements sent as one text, for the record of its refusal.
fn statements_summary(statements: &[MysqlStatement], refused: &MysqlStatement) -> String {
    if statements.is_empty() {
        return refused.summary.clone();
    }
    statements
        .iter()
        .map(|statement| statement.summary.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tracking_is_spotted_in_any_case() {
        assert!(mentions_session_tracking(
            b"SET @@SESSION_TRACK_system_variables=''"
        ));
        assert!(!mentions_session_tracking(b"SELECT 1"));
    }

    #[test]
    fn login_collations_name_their_character_set() {
        assert_eq!(charset_name(45), "utf8mb4");
        assert_eq!(charset_name(8), "latin1");
        assert_eq!(charset_name(28), "gbk");
        assert_eq!(charset_name(200), "utf8mb3");
    }

    #[test]
    fn refused_commands_have_names_and_classes() {
        assert_eq!(refused_command(0x08), ("COM_SHUTDOWN", Class::Dangerous));
        assert_eq!(refused_command(0x1B).0, "COM_SET_OPTION");
        assert_eq!(refused_command(0x12).0, "COM_BINLOG_DUMP");
        assert_eq!(refused_command(0x77).0, "unknown command");
    }
}
