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
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ProxyError;
use crate::{policy::UpstreamTls, protocol::postgres::frontend::encode_ssl_request};

/// Asks the server for TLS and completes a verified handshake.
pub async fn connect(
    mut upstream: TcpStream,
    tls: &UpstreamTls,
    destination: SocketAddr,
) -> Result<TlsStream<TcpStream>, ProxyError> {
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
