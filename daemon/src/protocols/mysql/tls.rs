//! TLS for MySQL sessions (rustls): to the server with `tls.mode = "verify-full"`, and
//! from agents when the resource terminates agent-side TLS.
//!
//! MySQL negotiates TLS inside its login: the client sends the 32-byte prefix of its
//! login request with the SSL capability, then the TLS handshake, then the full login
//! request over TLS. The server's certificate must chain to the resource's `ca_file`
//! (or the Mozilla roots) and name the server (`server_name`, or the address the agent
//! dialled). A server that does not offer TLS ends the session: no silent downgrade.

use std::{net::SocketAddr, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
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
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let file_error = |e: &dyn std::fmt::Display| {
                ProxyError::Tls(format!("CA file {}: {e}", path.display()))
            };
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| file_error(&e))? {
                roots
                    .add(certificate.map_err(|e| file_error(&e))?)
                    .map_err(|e| file_error(&e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// Terminates an agent's TLS with the resource's certificate.
pub async fn accept(
    agent: Box<dyn ByteStream>,
    tls: &AgentTls,
) -> Result<Box<dyn ByteStream>, ProxyError> {
    let file_error = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        ProxyError::Tls(format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| file_error(&tls.cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&tls.cert_file, &e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| file_error(&tls.key_file, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ProxyError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| ProxyError::Tls(format!("agent certificate: {e}")))?;
    let stream = TlsAcceptor::from(Arc::new(config))
        .accept(agent)
        .await
        .map_err(|error| ProxyError::Tls(format!("handshake with the agent: {error}")))?;
    Ok(Box::new(stream))
}
