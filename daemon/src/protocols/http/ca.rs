//! sluice's local certificate authority, and the leaf certificates it mints per server
//! name so that the daemon can terminate the agent's TLS.
//!
//! The CA lives in `state_dir/ca/`: `ca.pem` (the certificate) and `ca.key` (its
//! ECDSA P-256 key, mode 0600 in a 0700 directory, root-only). It is generated on the
//! daemon's first start and kept, so agents that trust it keep trusting it across
//! restarts; `sluice ca rotate` replaces it. The public half is also written next to the
//! control socket (`ca.pem`, and `ca-bundle.pem` = system roots + the CA) for
//! `sluice run` to hand to agents.
//!
//! Leaves follow what strict verifiers (Go ≥ 1.25, Python `ssl`) require: an authority
//! key identifier equal to the CA's subject key identifier, serverAuth EKU, the name in
//! the SAN, short validity backdated for clock skew, and no subject key identifier.

use std::{
    collections::HashMap,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{pki_types::CertificateDer, sign::CertifiedKey};
use sha2::Digest as _;
use time::OffsetDateTime;

/// How long a minted leaf is valid after it was made.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far back a leaf's (and the CA's) validity starts, for agents with skewed clocks.
const BACKDATE: Duration = Duration::from_secs(2 * 24 * 3600);
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Leaves are re-minted well before they expire.
const LEAF_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The cache never holds more leaves than this; it is emptied when full.
const MAX_CACHED_LEAVES: usize = 4096;

/// The CA's common name, as agents and `openssl x509` show it.
pub const CA_COMMON_NAME: &str = "sluice local interception CA";

/// Errors making, loading or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} must be owned by root and mode 0600 (it is mode {mode:o}, uid {uid})")]
    Exposed { path: PathBuf, mode: u32, uid: u32 },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot mint a certificate for {name}: {message}")]
    Mint { name: String, message: String },
}

/// Where the CA's files are.
#[derive(Clone, Debug)]
pub struct CaPaths {
    pub dir: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    pub fn in_state_dir(state_dir: &Path) -> Self {
        let dir = state_dir.join("ca");
        Self {
            certificate: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            dir,
        }
    }
}

/// The loaded CA and its cache of leaves.
pub struct LocalCa {
    certificate_pem: String,
    certificate_der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, OffsetDateTime)>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA from `paths`, generating it when neither file exists.
    pub fn load_or_create(paths: &CaPaths) -> Result<Self, CaError> {
        if !paths.certificate.exists() && !paths.key.exists() {
            Self::generate(paths)?;
        }
        Self::load(paths)
    }

    /// Replaces the CA with a new one (agents must be given the new certificate).
    pub fn rotate(paths: &CaPaths) -> Result<Self, CaError> {
        for path in [&paths.certificate, &paths.key] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CaError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        Self::generate(paths)?;
        Self::load(paths)
    }

    /// Loads an existing CA; the key must be root-only.
    pub fn load(paths: &CaPaths) -> Result<Self, CaError> {
        use std::os::unix::fs::MetadataExt as _;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        let metadata = std::fs::metadata(&paths.key).map_err(io(&paths.key))?;
        let mode = metadata.mode() & 0o777;
        if metadata.uid() != 0 || mode & 0o077 != 0 {
            return Err(CaError::Exposed {
                path: paths.key.clone(),
                mode,
                uid: metadata.uid(),
            });
        }
        let key_pem = std::fs::read_to_string(&paths.key).map_err(io(&paths.key))?;
        let certificate_pem =
            std::fs::read_to_string(&paths.certificate).map_err(io(&paths.certificate))?;
        let invalid = |path: &Path, message: String| CaError::Invalid {
            path: path.to_owned(),
            message,
        };
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|error| invalid(&paths.key, error.to_string()))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&certificate_pem, key)
            .map_err(|error| invalid(&paths.certificate, error.to_string()))?;
        let certificate_der = rustls::pki_types::pem::PemObject::from_pem_slice(
            certificate_pem.as_bytes(),
        )
        .map_err(|error: rustls::pki_types::pem::Error| {
            invalid(&paths.certificate, error.to_string())
        })?;
        Ok(Self {
            certificate_pem,
            certificate_der,
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    fn generate(paths: &CaPaths) -> Result<(), CaError> {
        let mint = |message: String| CaError::Mint {
            name: CA_COMMON_NAME.into(),
            message,
        };
        create_private_dir(&paths.dir)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|error| mint(error.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CA_COMMON_NAME);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "sluice");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        let certificate = params
            .self_signed(&key)
            .map_err(|error| mint(error.to_string()))?;
        write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&paths.certificate, certificate.pem().as_bytes(), 0o644)?;
        Ok(())
    }

    /// The CA certificate as PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// SHA-256 of the CA certificate, as colon-separated hex (what browsers show).
    pub fn fingerprint(&self) -> String {
        let digest = sha2::Sha256::digest(self.certificate_der.as_ref());
        digest
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A certificate and key for `name` (a DNS name, or an IP address when the agent
    /// sent no SNI), minted on first use and cached.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut leaves = self
            .leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((leaf, expires)) = leaves.get(name)
            && *expires - LEAF_REFRESH > now
        {
            return Ok(Arc::clone(leaf));
        }
        let (leaf, expires) = self.mint(name, now)?;
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(name.to_owned(), (Arc::clone(&leaf), expires));
        Ok(leaf)
    }

    fn mint(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, OffsetDateTime), CaError> {
        let fail = |message: String| CaError::Mint {
            name: name.to_owned(),
            message,
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|error| fail(error.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                name.to_owned()
                    .try_into()
                    .map_err(|error: rcgen::Error| fail(error.to_string()))?,
            ),
        }];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let expires = now + LEAF_VALIDITY;
        params.not_before = now - BACKDATE;
        params.not_after = expires;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|error| fail(error.to_string()))?;
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|error| fail(error.to_string()))?;
        let chain = vec![certificate.der().clone(), self.certificate_der.clone()];
        Ok((Arc::new(CertifiedKey::new(chain, signing_key)), expires))
    }
}

/// A positive 16-byte serial.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `path` atomically (a temporary file renamed over it) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let temporary = path.with_extension("tmp");
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// The system's trusted roots as PEM (Debian's bundle, or what `SSL_CERT_FILE` names);
/// empty when there is none.
pub fn system_roots_pem() -> String {
    let candidates = [
        std::env::var_os("SSL_CERT_FILE").map(PathBuf::from),
        Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
        Some(PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt")),
        Some(PathBuf::from("/etc/ssl/cert.pem")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default()
}

/// Writes the public files agents need into `dir` (world-readable): `ca.pem` and
/// `ca-bundle.pem` (the system roots followed by the CA). Returns the bundle's path.
pub fn publish(ca_pem: &str, dir: &Path) -> Result<PathBuf, CaError> {
    let mut bundle = system_roots_pem();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    write_file(&dir.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    let path = dir.join("ca-bundle.pem");
    write_file(&path, bundle.as_bytes(), 0o644)?;
    Ok(path)
}

/// The environment variables common runtimes read their trusted roots from; `sluice
/// run` points each at the combined bundle.
pub const TRUST_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "AWS_CA_BUNDLE",
    "DENO_CERT",
];

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn the_ca_is_made_once_root_only_and_signs_verifiable_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_state_dir(dir.path());
        let ca = LocalCa::load_or_create(&paths).unwrap();
        let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = LocalCa::load_or_create(&paths).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());

        let leaf = ca.leaf("api.example.test").unwrap();
        assert!(Arc::ptr_eq(&leaf, &ca.leaf("api.example.test").unwrap()));
        // A rustls client that trusts only the CA accepts the leaf for that name.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf verifies against the CA");
        let other = rustls::pki_types::ServerName::try_from("other.example.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &leaf.cert[0],
                    &leaf.cert[1..],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .is_err()
        );
        let ip_leaf = ca.leaf("127.0.0.1").unwrap();
        let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(
                &ip_leaf.cert[0],
                &[],
                &ip,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("IP leaf verifies");

        let rotated = LocalCa::rotate(&paths).unwrap();
        assert_ne!(rotated.fingerprint(), ca.fingerprint());
    }

    #[test]
    fn the_leaf_names_the_ca_key_as_its_authority() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&CaPaths::in_state_dir(dir.path())).unwrap();
        let leaf = ca.leaf("x.test").unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.certificate_der).unwrap();
        let (_, leaf_cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        let ski = ca_cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .expect("CA has an SKI");
        let aki = leaf_cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .expect("leaf has an AKI");
        assert_eq!(ski, aki);
        assert!(
            leaf_cert.validity().not_before.timestamp()
                < OffsetDateTime::now_utc().unix_timestamp() - 3600
        );
    }
}
