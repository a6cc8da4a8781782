//! TLS for MySQL sessions (rustls): to the server with `tls.mode = "verify-full"`, and
//! from agents when the resource terminates agent-side TLS.
//!
//! MySQL negotiates TLS inside its login: the client sends the 32-byte prefix of its
//! login request with the SSL capability, then the TLS handshake, then the full login
//! request over TLS. The server's certificate must chain to the resource's `ca_file`
//! (or the host's system trust store) and name the server (`server_name`, or the address the agent
//! dialled). A server that does not offer TLS ends the session: no silent downgrade.

use std::{net::SocketAddr, sync::Arc};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ProxyError;
use crate::{
    pipeline::ByteStream,
    policy::{AgentTls, UpstreamTls},
};

/// Completes a verified TLS handshake with the server (after the SSL request).
pub async fn connect(
    upstream: Box<dyn ByteStream>,
    tls: &UpstreamTls,
    destination: SocketAddr,
) -> Result<Box<dyn ByteStream>, ProxyError> {
    let config = client_config(tls)?;
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| destination.ip().to_string());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| ProxyError::Tls(format!("`{name}` is not a valid server name")))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(server_name, upstream)
        .await
        .map_err(|error| ProxyError::Tls(format!("handshake with `{name}`: {error}")))?;
    Ok(Box::new(stream))
}

fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, ProxyError> {
    crate::trust::upstream_client_config(tls).map_err(ProxyError::Tls)
}

/// Terminates an agent's TLS with the resource's certificate.
pub async fn accept(
    agent: Box<dyn ByteStream>,
    tls: &AgentTls,
) -> Result<Box<dyn ByteStream>, ProxyError> {
    let config = crate::trust::agent_server_config(tls).map_err(ProxyError::Tls)?;
    let stream = TlsAcceptor::from(Arc::new(config))
        .accept(agent)
        .await
        .map_err(|error| ProxyError::Tls(format!("handshake with the agent: {error}")))?;
    Ok(Box::new(stream))
}
