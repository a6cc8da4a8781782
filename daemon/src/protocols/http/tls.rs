//! The two TLS ends of an intercepted connection.
//!
//! Upstream first: the daemon reads the agent's ClientHello (SNI and ALPN), dials the
//! original destination with the same SNI and ALPN and verifies the server against the
//! host's system trust store (or the resource's `tls.ca_file`), never against sluice's
//! own CA. Only then does it answer the agent, with a leaf for the SNI and exactly the
//! ALPN protocol the server chose, so h2 and HTTP/1.1 are mirrored faithfully.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// The ALPN protocols the daemon can speak on both sides.
pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";

/// Errors building a TLS end.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("cannot read client certificate or key {path}: {message}")]
    ClientCertificate { path: PathBuf, message: String },
    #[error("no trusted roots: the system store is empty and the resource names no ca_file")]
    NoRoots,
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's trusted roots (see [`crate::trust`]).
pub fn system_roots() -> Arc<RootCertStore> {
    crate::trust::default_roots()
}

/// The roots of a resource: its `ca_file`, else the system store.
pub fn roots_for(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsSetupError> {
    static BY_FILE: OnceLock<Mutex<HashMap<PathBuf, Arc<RootCertStore>>>> = OnceLock::new();
    let Some(path) = ca_file else {
        let roots = system_roots();
        return if roots.is_empty() {
            Err(TlsSetupError::NoRoots)
        } else {
            Ok(roots)
        };
    };
    let cache = BY_FILE.get_or_init(Mutex::default);
    if let Some(roots) = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(path)
    {
        return Ok(Arc::clone(roots));
    }
    let fail = |message: String| TlsSetupError::CaFile {
        path: path.to_owned(),
        message,
    };
    let mut store = RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(path).map_err(|error| fail(error.to_string()))?
    {
        store
            .add(certificate.map_err(|error| fail(error.to_string()))?)
            .map_err(|error| fail(error.to_string()))?;
    }
    if store.is_empty() {
        return Err(fail("it holds no certificate".into()));
    }
    let store = Arc::new(store);
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(path.to_owned(), Arc::clone(&store));
    Ok(store)
}

/// A client certificate chain and its key, presented upstream.
pub type ClientIdentity = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Reads a client certificate (PEM chain) and its private key (PEM).
pub fn client_identity(cert_file: &Path, key_file: &Path) -> Result<ClientIdentity, TlsSetupError> {
    use rustls::pki_types::PrivateKeyDer;
    let fail = |path: &Path, message: String| TlsSetupError::ClientCertificate {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| fail(cert_file, error.to_string()))?;
    if chain.is_empty() {
        return Err(fail(cert_file, "it holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| fail(key_file, error.to_string()))?;
    Ok((chain, key))
}

/// The client side towards the upstream, offering `alpn`, presenting `identity` when
/// the resource's credential is a client certificate.
pub fn client_config(
    roots: Arc<RootCertStore>,
    alpn: Vec<Vec<u8>>,
    identity: Option<ClientIdentity>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The server side towards the agent: `leaf`, and the one ALPN protocol upstream chose.
pub fn server_config(
    leaf: Arc<CertifiedKey>,
    alpn: Option<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneLeaf(leaf)));
    config.alpn_protocols = alpn.into_iter().collect();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct OneLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for OneLeaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The agent's offered ALPN protocols that the daemon can speak, in its order.
pub fn usable_alpn(offered: &[Vec<u8>]) -> Vec<Vec<u8>> {
    offered
        .iter()
        .filter(|protocol| protocol.as_slice() == H2 || protocol.as_slice() == HTTP11)
        .cloned()
        .collect()
}

/// The name to verify the upstream against: the agent's SNI, else the resource's
/// `tls.server_name`, else the destination address.
pub fn upstream_name(
    sni: Option<&str>,
    configured: Option<&str>,
    destination: IpAddr,
) -> Option<ServerName<'static>> {
    match sni.or(configured) {
        Some(name) => ServerName::try_from(name.to_owned()).ok(),
        None => Some(ServerName::IpAddress(destination.into())),
    }
}

/// Whether a failed agent handshake means the agent refused sluice's certificate.
pub fn is_distrust(error: &std::io::Error) -> bool {
    use rustls::AlertDescription as Alert;
    if matches!(
        error.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    ) {
        return true;
    }
    let Some(inner) = error.get_ref() else {
        return false;
    };
    matches!(
        inner.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::AlertReceived(
            Alert::UnknownCA
                | Alert::BadCertificate
                | Alert::CertificateUnknown
                | Alert::UnsupportedCertificate
                | Alert::AccessDenied
                | Alert::DecryptError
        ))
    )
}
