//! TLS from the daemon to a PostgreSQL server (rustls).
//!
//! PostgreSQL negotiates TLS inside its own protocol: SSLRequest, a one-byte answer,
//! then the handshake. The daemon does this for resources with `tls.mode =
//! "verify-full"`: the chain must lead to a trusted CA (the resource's `ca_file`, or the
//! host's system trust store) and the certificate must name the server (`server_name`, or the
//! address the agent dialled). A server that declines TLS ends the session: no silent
//! downgrade.

use std::{net::SocketAddr, sync::Arc};

use bytes::BytesMut;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use super::{ProxyError, codec::frontend::encode_ssl_request};
use crate::policy::{AgentTls, UpstreamTls};

/// Asks the server for TLS and completes a verified handshake.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut upstream: S,
    tls: &UpstreamTls,
    destination: SocketAddr,
) -> Result<TlsStream<S>, ProxyError> {
    let config = client_config(tls)?;
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| destination.ip().to_string());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| ProxyError::Tls(format!("`{name}` is not a valid server name")))?;

    let mut request = BytesMut::new();
    encode_ssl_request(&mut request);
    upstream
        .write_all(&request)
        .await
        .map_err(ProxyError::UpstreamIo)?;
    let answer = upstream.read_u8().await.map_err(ProxyError::UpstreamIo)?;
    if answer != b'S' {
        return Err(ProxyError::Tls(
            "the server does not offer TLS, and the resource requires it".into(),
        ));
    }
    TlsConnector::from(Arc::new(config))
        .connect(server_name, upstream)
        .await
        .map_err(|error| ProxyError::Tls(format!("handshake with `{name}`: {error}")))
}

fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, ProxyError> {
    crate::trust::upstream_client_config(tls).map_err(ProxyError::Tls)
}

/// Terminates an agent's TLS with the resource's certificate (after the daemon
/// answered its SSLRequest with 'S').
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    agent: S,
    tls: &AgentTls,
) -> Result<tokio_rustls::server::TlsStream<S>, ProxyError> {
    let config = crate::trust::agent_server_config(tls).map_err(ProxyError::Tls)?;
    TlsAcceptor::from(Arc::new(config))
        .accept(agent)
        .await
        .map_err(|error| ProxyError::Tls(format!("handshake with the agent: {error}")))
}
