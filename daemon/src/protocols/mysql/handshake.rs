//! The login: mirror the server's greeting to the agent, take the agent's login
//! request, and log in upstream — with the resource's brokered credential, or by
//! relaying the agent's own authentication when the resource names none.
//!
//! The daemon connects upstream first, so the agent sees the server's real version and
//! connection id (JDBC and dump tools read both). Capabilities the proxy does not
//! speak are removed from what each side is offered (see [`caps::STRIPPED`]); the
//! agent's login request, with them removed, is what the server gets, so both sides
//! agree on every bit that shapes later packets — except SESSION_TRACK, which the
//! daemon always asks the server for (it tracks `sql_mode`) and removes from OK packets
//! for agents that did not ask for it.

use bytes::{Bytes, BytesMut};
use rand::RngExt as _;

use super::{
    Conn, ProxyError,
    auth::Plugin,
    packet::Packet,
    wire::{ErrPacket, Greeting, LoginRequest, OkPacket, caps},
};
use crate::{
    credentials::Credential,
    pipeline::{ByteStream, SessionInfo},
    policy::TlsMode,
};

/// MySQL error codes the daemon answers with.
pub const ER_ACCESS_DENIED: u16 = 1045;

/// Both sides logged in.
pub struct LoggedIn {
    pub agent: Conn,
    pub upstream: Conn,
    /// What the agent negotiated (shapes the packets it gets).
    pub agent_caps: u64,
    /// What the server negotiated with the daemon.
    pub upstream_caps: u64,
    pub connection_id: u32,
    /// The server's version string, as its greeting gave it.
    pub version: String,
    pub charset: u8,
    pub database: Option<String>,
    pub user: String,
}

/// The capabilities offered to the agent: the server's, less what the proxy strips;
/// SSL only when the resource terminates agent-side TLS.
fn offered_to_agent(server: u64, agent_tls: bool) -> u64 {
    let mut offered = server & !caps::STRIPPED & !caps::SSL;
    if agent_tls {
        offered |= caps::SSL;
    }
    offered
}

/// A 20-byte challenge of printable characters, as servers send.
fn fresh_nonce() -> Vec<u8> {
    let mut rng = rand::rng();
    (0..20).map(|_| rng.random_range(0x21u8..0x7f)).collect()
}

pub async fn login(
    session: &SessionInfo,
    mut agent: Conn,
    upstream: Box<dyn ByteStream>,
    limit: usize,
) -> Result<LoggedIn, ProxyError> {
    let mut upstream = Conn::new(upstream, limit, false);
    let greeting_packet = upstream
        .read()
        .await?
        .ok_or(ProxyError::UpstreamClosed("before its greeting"))?;
    if greeting_packet.first() == Some(0xFF) {
        // The server refused the connection (too many connections, host blocked):
        // the agent gets the same answer.
        agent.queue(0, &greeting_packet.payload);
        agent.flush().await?;
        let error = ErrPacket::decode(&greeting_packet.payload)
            .map(|e| e.message)
            .unwrap_or_default();
        return Err(ProxyError::UpstreamRefused(error));
    }
    let greeting = Greeting::decode(&greeting_packet.payload).map_err(ProxyError::ServerMessage)?;
    if greeting.capabilities & caps::PROTOCOL_41 == 0 {
        return Err(ProxyError::Unsupported(
            "the server does not speak protocol 4.1".into(),
        ));
    }
    let credential = match &session.resource.credential {
        Some(name) => match session.credentials.get(name) {
            Some(credential) => Some(credential),
            None => {
                let mut payload = BytesMut::new();
                ErrPacket::new(
                    ER_ACCESS_DENIED,
                    "28000",
                    format!("sluice: credential `{name}` is not configured on this host"),
                )
                .encode(&mut payload);
                // Before the greeting, an error is the whole exchange.
                agent.queue(0, &payload);
                agent.flush().await?;
                return Err(ProxyError::MissingCredential(name.clone()));
            }
        },
        None => None,
    };
    let agent_tls = session.resource.agent_tls.as_ref();
    let offered = offered_to_agent(greeting.capabilities, agent_tls.is_some());
    let agent_greeting = Greeting {
        capabilities: offered,
        // A brokered login ignores what the agent answers, so it gets a challenge of
        // the daemon's own and the plain native plugin.
        nonce: if credential.is_some() {
            fresh_nonce()
        } else {
            greeting.nonce.clone()
        },
        plugin: if credential.is_some() {
            "mysql_native_password".into()
        } else {
            greeting.plugin.clone()
        },
        ..greeting.clone()
    };
    let mut payload = BytesMut::new();
    agent_greeting.encode(&mut payload);
    agent.queue(0, &payload);
    agent.flush().await?;

    let mut request_packet = agent
        .read()
        .await?
        .ok_or(ProxyError::AgentClosed("during the login"))?;
    let mut request =
        LoginRequest::decode(&request_packet.payload).map_err(ProxyError::AgentMessage)?;
    if request.ssl_request {
        let Some(agent_tls) = agent_tls else {
            return Err(ProxyError::Unsupported(
                "the agent asked for TLS, which this resource does not offer".into(),
            ));
        };
        agent = agent.into_tls(agent_tls).await?;
        request_packet = agent
            .read()
            .await?
            .ok_or(ProxyError::AgentClosed("during the login"))?;
        request =
            LoginRequest::decode(&request_packet.payload).map_err(ProxyError::AgentMessage)?;
    }
    let agent_caps = request.capabilities & offered;
    tracing::debug!(
        client_plugin = request.plugin.as_deref().unwrap_or_default(),
        "agent login request"
    );

    // What the server is asked for: the agent's choices, plus what the daemon needs.
    let needed = caps::PROTOCOL_41
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::PLUGIN_AUTH_LENENC_DATA
        | caps::SESSION_TRACK;
    let mut upstream_caps =
        (agent_caps & !caps::SSL | needed) & greeting.capabilities & !caps::STRIPPED;
    let mut upstream_seq = 1u8;
    let upstream_tls = session.resource.tls.mode == TlsMode::VerifyFull;
    if upstream_tls {
        if greeting.capabilities & caps::SSL == 0 {
            let error = ProxyError::Tls(
                "the server does not offer TLS, and the resource requires it".into(),
            );
            refuse_login(&mut agent, request_packet.next_seq, &error.to_string()).await;
            return Err(error);
        }
        upstream_caps |= caps::SSL;
        let prefix = LoginRequest {
            capabilities: upstream_caps,
            max_packet: request.max_packet,
            charset: request.charset,
            ssl_request: true,
            ..LoginRequest::default()
        };
        let mut payload = BytesMut::new();
        prefix.encode(&mut payload);
        upstream_seq = upstream.queue(upstream_seq, &payload);
        upstream.flush().await?;
        upstream = match upstream.into_tls_client(session).await {
            Ok(upstream) => upstream,
            Err(error) => {
                refuse_login(
                    &mut agent,
                    request_packet.next_seq,
                    &format!(
                        "sluice: no verified TLS connection to `{}`: {error}",
                        session.resource.name
                    ),
                )
                .await;
                return Err(error);
            }
        };
    }

    let database = request
        .database
        .clone()
        .or_else(|| {
            credential
                .and_then(|c| c.database.clone())
                .map(String::into_bytes)
        })
        .filter(|db| !db.is_empty());
    let final_ok = match credential {
        Some(credential) => {
            let plugin = Plugin::from_name(&greeting.plugin).unwrap_or(Plugin::NativePassword);
            let upstream_request = LoginRequest {
                capabilities: upstream_caps,
                max_packet: request.max_packet,
                charset: request.charset,
                ssl_request: false,
                user: credential.user.clone().into_bytes(),
                auth_response: plugin
                    .respond(credential.password.expose().as_bytes(), &greeting.nonce),
                database: database.clone(),
                plugin: Some(if Plugin::from_name(&greeting.plugin).is_some() {
                    greeting.plugin.clone()
                } else {
                    "mysql_native_password".into()
                }),
                attributes: request.attributes.clone(),
            };
            let mut payload = BytesMut::new();
            upstream_request.encode(&mut payload);
            upstream.queue(upstream_seq, &payload);
            upstream.flush().await?;
            match authenticate_upstream(&mut upstream, credential, upstream_tls).await {
                Ok(ok) => ok,
                Err(error) => {
                    refuse_login(
                        &mut agent,
                        request_packet.next_seq,
                        &format!(
                            "sluice: could not log in to `{}` with its brokered credential: {error}",
                            session.resource.name
                        ),
                    )
                    .await;
                    return Err(error);
                }
            }
        }
        None => {
            let upstream_request = LoginRequest {
                capabilities: upstream_caps,
                database: database.clone(),
                ..request.clone()
            };
            let mut payload = BytesMut::new();
            upstream_request.encode(&mut payload);
            let seq = upstream.queue(upstream_seq, &payload);
            upstream.flush().await?;
            relay_authentication(&mut agent, &mut upstream, request_packet.next_seq, seq).await?
        }
    };
    // The agent is told it is in, in the shape it negotiated.
    let ok = OkPacket::decode(&final_ok.payload, upstream_caps & caps::SESSION_TRACK != 0)
        .map_err(ProxyError::ServerMessage)?;
    let mut payload = BytesMut::new();
    ok.encode(agent_caps & caps::SESSION_TRACK != 0, &mut payload);
    agent.queue(request_packet.next_seq, &payload);
    agent.flush().await?;
    Ok(LoggedIn {
        agent,
        upstream,
        agent_caps,
        upstream_caps,
        connection_id: greeting.connection_id,
        version: String::from_utf8_lossy(&greeting.version).into_owned(),
        charset: request.charset,
        database: database.map(|db| String::from_utf8_lossy(&db).into_owned()),
        user: String::from_utf8_lossy(&request.user).into_owned(),
    })
}

/// Answers the agent's login with an error and closes (best effort).
async fn refuse_login(agent: &mut Conn, seq: u8, message: &str) {
    let mut payload = BytesMut::new();
    ErrPacket::new(ER_ACCESS_DENIED, "28000", message).encode(&mut payload);
    agent.queue(seq, &payload);
    let _ = agent.flush().await;
    agent.shutdown().await;
}

/// Completes the daemon's own login: auth switches, caching_sha2's fast and full
/// paths, MariaDB's ed25519. Returns the server's final OK packet.
async fn authenticate_upstream(
    upstream: &mut Conn,
    credential: &Credential,
    over_tls: bool,
) -> Result<Packet, ProxyError> {
    let password = credential.password.expose().as_bytes();
    let mut plugin_in_use: Option<Plugin> = None;
    for _ in 0..8 {
        let packet = upstream
            .read()
            .await?
            .ok_or(ProxyError::UpstreamClosed("during the login"))?;
        let seq = packet.next_seq;
        match packet.first() {
            Some(0x00) => return Ok(packet),
            Some(0xFF) => {
                let error =
                    ErrPacket::decode(&packet.payload).map_err(ProxyError::ServerMessage)?;
                return Err(ProxyError::UpstreamAuth(format!(
                    "{} ({}): {}",
                    error.code, error.sql_state, error.message
                )));
            }
            Some(0xFE) => {
                // Auth switch: the plugin's name, then its challenge.
                let body = packet.payload.slice(1..);
                let mut reader = super::wire::Reader::new(&body, "an auth switch request");
                let name = String::from_utf8_lossy(reader.nul_str()).into_owned();
                let nonce = reader.rest();
                let plugin = Plugin::from_name(&name).ok_or_else(|| {
                    ProxyError::UnsupportedAuth(format!("the server asks for plugin `{name}`"))
                })?;
                if plugin == Plugin::ClearPassword && !over_tls {
                    return Err(ProxyError::UnsupportedAuth(
                        "the server asks for the password in clear text over an unencrypted \
                         connection"
                            .into(),
                    ));
                }
                plugin_in_use = Some(plugin);
                let response = plugin.respond(password, nonce);
                upstream.queue(seq, &response);
                upstream.flush().await?;
            }
            Some(0x01) => match packet.payload.get(1) {
                // caching_sha2_password: the fast path worked; the OK follows.
                Some(0x03) if plugin_in_use != Some(Plugin::Ed25519) => {}
                // Full authentication: the password itself, which only goes over TLS.
                Some(0x04) if over_tls => {
                    let mut clear = password.to_vec();
                    clear.push(0);
                    upstream.queue(seq, &clear);
                    upstream.flush().await?;
                }
                Some(0x04) => {
                    return Err(ProxyError::UnsupportedAuth(
                        "caching_sha2_password full authentication needs TLS to the server \
                         (set tls.mode = \"verify-full\" on the resource) or a cached login"
                            .into(),
                    ));
                }
                _ => {
                    return Err(ProxyError::UnsupportedAuth(
                        "unexpected extra authentication data from the server".into(),
                    ));
                }
            },
            _ => {
                return Err(ProxyError::UpstreamAuth(
                    "unexpected packet during the login".into(),
                ));
            }
        }
    }
    Err(ProxyError::UpstreamAuth(
        "the server kept asking for more authentication".into(),
    ))
}

/// Relays the agent's own authentication exchange (no brokered credential) until the
/// server's OK, renumbering between the two sides (a TLS request on one side only
/// shifts the sequence ids). The agent's auth bytes are relayed, never logged.
async fn relay_authentication(
    agent: &mut Conn,
    upstream: &mut Conn,
    agent_seq: u8,
    upstream_seq: u8,
) -> Result<Packet, ProxyError> {
    let shift = upstream_seq.wrapping_sub(agent_seq);
    loop {
        let packet = upstream
            .read()
            .await?
            .ok_or(ProxyError::UpstreamClosed("during the login"))?;
        match packet.first() {
            Some(0x00) => return Ok(packet),
            Some(0xFF) => {
                agent.queue(packet.seq.wrapping_sub(shift), &packet.payload);
                agent.flush().await?;
                let message = ErrPacket::decode(&packet.payload)
                    .map(|e| e.message)
                    .unwrap_or_default();
                return Err(ProxyError::UpstreamAuth(message));
            }
            _ => {}
        }
        agent.queue(packet.seq.wrapping_sub(shift), &packet.payload);
        agent.flush().await?;
        let fast_path_done = packet.payload[..] == [0x01, 0x03];
        if fast_path_done {
            continue;
        }
        let answer = agent
            .read()
            .await?
            .ok_or(ProxyError::AgentClosed("during the login"))?;
        upstream.queue(answer.seq.wrapping_add(shift), &answer.payload);
        upstream.flush().await?;
    }
}

/// Sends the daemon's own statement on the upstream connection and reads its answer
/// to the end: the OK (with any tracked variables), or the one-row result.
pub async fn own_query(
    upstream: &mut Conn,
    sql: &str,
    session_track: bool,
) -> Result<OwnAnswer, ProxyError> {
    let mut payload = BytesMut::with_capacity(sql.len() + 1);
    payload.extend_from_slice(&[super::COM_QUERY]);
    payload.extend_from_slice(sql.as_bytes());
    upstream.queue(0, &payload);
    upstream.flush().await?;
    let mut answer = OwnAnswer::default();
    let mut in_rows = false;
    let mut columns_left: Option<u64> = None;
    loop {
        let packet = upstream
            .read()
            .await?
            .ok_or(ProxyError::UpstreamClosed("during the session set-up"))?;
        let payload: Bytes = packet.payload;
        match payload.first() {
            Some(0xFF) => {
                let error = ErrPacket::decode(&payload).map_err(ProxyError::ServerMessage)?;
                return Err(ProxyError::SetUp(format!(
                    "{}: {}",
                    error.code, error.message
                )));
            }
            Some(0x00) if columns_left.is_none() && !in_rows => {
                let ok =
                    OkPacket::decode(&payload, session_track).map_err(ProxyError::ServerMessage)?;
                answer.variables = ok.system_variables();
                return Ok(answer);
            }
            _ if super::wire::is_end_marker(&payload) => {
                if in_rows {
                    return Ok(answer);
                }
                // The EOF after the column definitions (without DEPRECATE_EOF).
                in_rows = true;
            }
            _ => match columns_left {
                None => {
                    columns_left = Some(
                        super::wire::Reader::new(&payload, "a column count")
                            .lenenc_int()
                            .map_err(ProxyError::ServerMessage)?,
                    );
                }
                Some(0) => {
                    in_rows = true;
                    let mut reader = super::wire::Reader::new(&payload, "a row");
                    while reader.remaining() > 0 {
                        answer.row.push(
                            reader
                                .lenenc_bytes()
                                .map_err(ProxyError::ServerMessage)?
                                .map(<[u8]>::to_vec),
                        );
                    }
                }
                Some(n) => columns_left = Some(n - 1),
            },
        }
    }
}

/// What one of the daemon's own statements returned.
#[derive(Default)]
pub struct OwnAnswer {
    pub variables: Vec<(Vec<u8>, Vec<u8>)>,
    pub row: Vec<Option<Vec<u8>>>,
}
