//! TLS from the daemon to a PostgreSQL server (rustls).
//!
//! PostgreSQL negotiates TLS inside its own protocol: SSLRequest, a one-byte answer,
//! then the handshake. The daemon does this for resources with `tls.mode =
//! "verify-full"`: the chain must lead to a trusted CA (the resource's `ca_file`, or the
//! Mozilla roots) and the certificate must name the server (`server_name`, or the
//! address the agent dialled). A server that declines TLS ends the session: no silent
//! downgrade.

use std::{net::SocketAddr, sync::Arc};

use bytes::BytesMut;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
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
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|e| ProxyError::Tls(format!("CA file {}: {e}", path.display())))?;
            for certificate in certificates {
                let certificate = certificate
                    .map_err(|e| ProxyError::Tls(format!("CA file {}: {e}", path.display())))?;
                roots
                    .add(certificate)
                    .map_err(|e| ProxyError::Tls(format!("CA file {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// Terminates an agent's TLS with the resource's certificate (after the daemon
/// answered its SSLRequest with 'S').
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    agent: S,
    tls: &AgentTls,
) -> Result<tokio_rustls::server::TlsStream<S>, ProxyError> {
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
    TlsAcceptor::from(Arc::new(config))
        .accept(agent)
        .await
        .map_err(|error| ProxyError::Tls(format!("handshake with the agent: {error}")))
}
