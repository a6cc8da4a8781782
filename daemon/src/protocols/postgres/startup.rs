//! The opening of a PostgreSQL session: encryption requests, cancel requests, and the
//! upstream login when the daemon brokers the credential.

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::{
    md5_hash,
    sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256},
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    ProxyError,
    codec::{
        BackendMessage, Frame, FrameDecoder, FrontendMessage,
        backend::{Authentication, encode_encryption_refused},
        frontend::{
            ProtocolVersion, encode_password_message, encode_sasl_initial_response,
            encode_sasl_response, encode_startup,
        },
    },
};
use crate::{credentials::Credential, relay::ByteCounts};

/// What the agent opened the connection for.
pub enum Opening {
    /// A session: the StartupMessage's version and parameters.
    Session {
        version: ProtocolVersion,
        parameters: Vec<(String, String)>,
    },
    /// A request to cancel another session's query.
    Cancel { pid: i32, secret_key: Bytes },
    /// An SSLRequest, to be answered 'S' and followed by the TLS handshake (only when
    /// the caller said TLS is available).
    TlsRequested,
}

/// Reads frames until a whole one is buffered; `None` at a clean end of stream.
pub async fn next_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    buffer: &mut BytesMut,
    decoder: &mut FrameDecoder,
    from_agent: bool,
) -> Result<Option<Frame>, ProxyError> {
    loop {
        let frame = decoder.decode(buffer).map_err(|error| {
            if from_agent {
                ProxyError::AgentFrame(error)
            } else {
                ProxyError::ServerFrame(error)
            }
        })?;
        if let Some(frame) = frame {
            return Ok(Some(frame));
        }
        let read = stream.read_buf(buffer).await.map_err(|error| {
            if from_agent {
                ProxyError::AgentIo(error)
            } else {
                ProxyError::UpstreamIo(error)
            }
        })?;
        if read == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else if from_agent {
                Err(ProxyError::AgentFrame(
                    super::codec::FrameError::Truncated {
                        buffered: buffer.len(),
                    },
                ))
            } else {
                Err(ProxyError::ServerFrame(
                    super::codec::FrameError::Truncated {
                        buffered: buffer.len(),
                    },
                ))
            };
        }
    }
}

/// Answers GSSENCRequest (and SSLRequest, unless `tls_available`) with 'N' until the
/// agent sends its StartupMessage or a CancelRequest.
pub async fn read_opening<S: AsyncRead + AsyncWrite + Unpin>(
    agent: &mut S,
    buffer: &mut BytesMut,
    decoder: &mut FrameDecoder,
    counts: &ByteCounts,
    tls_available: bool,
) -> Result<Opening, ProxyError> {
    loop {
        let frame = next_frame(agent, buffer, decoder, true)
            .await?
            .ok_or(ProxyError::NoStartup)?;
        counts
            .up
            .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
        match FrontendMessage::decode(&frame).map_err(ProxyError::AgentMessage)? {
            FrontendMessage::SslRequest if tls_available => {
                // Bytes sent before the handshake would be read as if they had come
                // through TLS (CVE-2021-23214): refuse them.
                if !buffer.is_empty() {
                    return Err(ProxyError::UnexpectedMessage('S'));
                }
                return Ok(Opening::TlsRequested);
            }
            FrontendMessage::SslRequest | FrontendMessage::GssEncRequest => {
                let mut refusal = BytesMut::new();
                encode_encryption_refused(&mut refusal);
                agent
                    .write_all(&refusal)
                    .await
                    .map_err(ProxyError::AgentIo)?;
            }
            FrontendMessage::CancelRequest(cancel) => {
                return Ok(Opening::Cancel {
                    pid: cancel.pid,
                    secret_key: cancel.secret_key,
                });
            }
            FrontendMessage::Startup(startup) => {
                return Ok(Opening::Session {
                    version: startup.version,
                    parameters: startup
                        .parameters
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                });
            }
            _ => return Err(ProxyError::NoStartup),
        }
    }
}

/// Encodes the StartupMessage for the upstream.
pub fn startup_message(
    version: ProtocolVersion,
    parameters: &[(String, String)],
) -> Result<BytesMut, ProxyError> {
    let parameters: Vec<(&str, &str)> = parameters
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut message = BytesMut::new();
    encode_startup(version, &parameters, &mut message).map_err(ProxyError::Encode)?;
    Ok(message)
}

/// The agent's parameters with the brokered user (and database, if set) in place.
pub fn brokered_parameters(
    parameters: &[(String, String)],
    credential: &Credential,
) -> Vec<(String, String)> {
    let mut brokered: Vec<(String, String)> = parameters
        .iter()
        .filter(|(k, _)| k != "user" && !(k == "database" && credential.database.is_some()))
        .cloned()
        .collect();
    brokered.insert(0, ("user".into(), credential.user.clone()));
    if let Some(database) = &credential.database {
        brokered.insert(1, ("database".into(), database.clone()));
    }
    brokered
}

/// Logs in upstream with `credential` after the StartupMessage was sent, answering
/// cleartext, MD5 and SCRAM-SHA-256 challenges. Returns once the server has sent
/// AuthenticationOk (which is consumed, not forwarded).
pub async fn authenticate_upstream<S: AsyncRead + AsyncWrite + Unpin>(
    upstream: &mut S,
    buffer: &mut BytesMut,
    decoder: &mut FrameDecoder,
    credential: &Credential,
) -> Result<(), ProxyError> {
    let password = credential.password.expose().as_bytes();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = next_frame(upstream, buffer, decoder, false)
            .await?
            .ok_or_else(|| ProxyError::UpstreamAuth("the server closed the connection".into()))?;
        let message = BackendMessage::decode(&frame).map_err(ProxyError::ServerMessage)?;
        let mut reply = BytesMut::new();
        match message {
            BackendMessage::Authentication(Authentication::Ok) => return Ok(()),
            BackendMessage::Authentication(Authentication::CleartextPassword) => {
                encode_password_message(password, &mut reply).map_err(ProxyError::Encode)?;
            }
            BackendMessage::Authentication(Authentication::Md5Password { salt }) => {
                let hash = md5_hash(credential.user.as_bytes(), password, salt);
                encode_password_message(hash.as_bytes(), &mut reply).map_err(ProxyError::Encode)?;
            }
            BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(ProxyError::UnsupportedAuth(format!(
                        "SASL mechanisms {mechanisms:?}"
                    )));
                }
                let client = ScramSha256::new(password, ChannelBinding::unsupported());
                encode_sasl_initial_response(SCRAM_SHA_256, Some(client.message()), &mut reply)
                    .map_err(ProxyError::Encode)?;
                scram = Some(client);
            }
            BackendMessage::Authentication(Authentication::SaslContinue { data }) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ProxyError::UpstreamAuth("SASL continue before start".into()))?;
                client
                    .update(&data)
                    .map_err(|e| ProxyError::UpstreamAuth(e.to_string()))?;
                encode_sasl_response(client.message(), &mut reply).map_err(ProxyError::Encode)?;
            }
            BackendMessage::Authentication(Authentication::SaslFinal { data }) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ProxyError::UpstreamAuth("SASL final before start".into()))?;
                // Verifies the server's signature: the server proved it knows the password.
                client
                    .finish(&data)
                    .map_err(|e| ProxyError::UpstreamAuth(e.to_string()))?;
                continue;
            }
            BackendMessage::Authentication(Authentication::Unsupported { code, .. }) => {
                return Err(ProxyError::UnsupportedAuth(format!("method {code}")));
            }
            BackendMessage::ErrorResponse(diagnostic) => {
                return Err(ProxyError::UpstreamAuth(format!(
                    "{}: {}",
                    diagnostic.code().unwrap_or("?"),
                    diagnostic.message().unwrap_or("authentication failed")
                )));
            }
            BackendMessage::NoticeResponse(_) => continue,
            _ => {
                return Err(ProxyError::UpstreamAuth(
                    "unexpected message during authentication".into(),
                ));
            }
        }
        upstream
            .write_all(&reply)
            .await
            .map_err(ProxyError::UpstreamIo)?;
    }
}
