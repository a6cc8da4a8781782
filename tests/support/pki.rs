//! Throwaway certificates for TLS tests: a fresh CA per call, and a server certificate
//! it signed.

use std::path::{Path, PathBuf};

/// A CA and a server certificate signed by it, as PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

impl TestPki {
    /// A new CA and a certificate for `host` (subject alternative name and common name)
    /// signed by it.
    pub fn for_host(host: &str) -> Self {
        Self::for_hosts(&[host])
    }

    /// A new CA and a certificate for every name in `hosts` (subject alternative names;
    /// the first is also the common name) signed by it.
    pub fn for_hosts(hosts: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let names: Vec<String> = hosts.iter().map(|host| (*host).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server params");
        if let Some(first) = hosts.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        let certificate = params.signed_by(&key, &issuer).expect("server certificate");
        Self {
            ca_pem: ca.pem(),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` in `dir`: (ca, certificate, key).
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let paths = (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        );
        std::fs::write(&paths.0, &self.ca_pem).expect("write CA");
        std::fs::write(&paths.1, &self.certificate_pem).expect("write certificate");
        std::fs::write(&paths.2, &self.key_pem).expect("write key");
        paths
    }
}
