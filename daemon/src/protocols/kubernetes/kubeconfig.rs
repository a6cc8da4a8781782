//! The kubeconfig an agent gets for a `kubernetes` resource: the cluster's own server
//! URL (so redirection, not configuration, brings kubectl to sluice), sluice's CA as
//! the only trusted authority (kubectl trusts nothing else for the API server), and no
//! user credentials. The user entry holds a placeholder token only so that kubectl
//! does not prompt for a password; sluice strips it and injects the resource's own.

use base64::Engine as _;

use crate::policy::{HostPattern, Resource};

/// The token kubeconfigs carry instead of a credential.
pub const PLACEHOLDER_TOKEN: &str = "sluice-injects-the-real-credential";

/// The server URL of `resource`: its first exact host name, else its first address,
/// on its first port.
pub fn server_url(resource: &Resource) -> Option<String> {
    let port = resource.ports.first()?.first;
    let host = resource
        .hostnames
        .iter()
        .find_map(|pattern| match pattern {
            HostPattern::Exact(name) => Some(name.clone()),
            HostPattern::Below(_) => None,
        })
        .or_else(|| {
            let address = resource.addresses.first()?.addr();
            Some(match address {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            })
        })?;
    Some(format!("https://{host}:{port}"))
}

/// The kubeconfig (YAML) for `resource` at `server`, trusting `ca_pem`.
pub fn kubeconfig(
    resource_name: &str,
    server: &str,
    ca_pem: &str,
    namespace: Option<&str>,
) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let namespace = namespace
        .map(|namespace| format!("    namespace: {}\n", yaml_string(namespace)))
        .unwrap_or_default();
    let name = yaml_string(resource_name);
    format!(
        "# Written by `sluice kubeconfig`: the cluster's server, sluice's CA, no credentials.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         contexts:\n\
         - name: {name}\n  context:\n    cluster: {name}\n    user: sluice-agent\n{namespace}\
         current-context: {name}\n\
         users:\n\
         - name: sluice-agent\n  user:\n    token: {PLACEHOLDER_TOKEN}\n",
        server = yaml_string(server),
    )
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::Policy;

    #[test]
    fn the_kubeconfig_keeps_the_server_and_carries_only_the_sluice_ca() {
        let policy = Policy::from_sources(&[(
            PathBuf::from("k.toml"),
            r#"
[[resource]]
name = "prod"
addresses = ["10.0.0.1"]
ports = [6443]
protocol = "kubernetes"

[[resource]]
name = "named"
addresses = ["10.0.0.2"]
hostnames = ["api.prod.example"]
ports = [443]
protocol = "kubernetes"
"#
            .into(),
        )])
        .expect("loads");
        let prod = policy.resource("prod").expect("prod");
        assert_eq!(server_url(prod).as_deref(), Some("https://10.0.0.1:6443"));
        let named = policy.resource("named").expect("named");
        assert_eq!(
            server_url(named).as_deref(),
            Some("https://api.prod.example:443")
        );
        let text = kubeconfig("prod", "https://10.0.0.1:6443", "PEM", Some("shop"));
        assert!(text.contains("server: \"https://10.0.0.1:6443\""), "{text}");
        assert!(text.contains("certificate-authority-data: UEVN"), "{text}");
        assert!(text.contains("namespace: \"shop\""), "{text}");
        assert!(text.contains(PLACEHOLDER_TOKEN));
        assert!(!text.contains("client-key"));
    }
}
