//! The web console: sessions, timelines, terminal replay, approvals and grants in a
//! browser, for the people who approve and review but are not at a root shell on the
//! agent host.
//!
//! It is served by the daemon on its own loopback listener (`[ui] listen`) and reads
//! nothing on its own: every page's data comes from the control API's route table
//! ([`crate::control::routes::dispatch`]), called in-process with the signed-in person
//! as the peer, so the console, the CLI and `curl --unix-socket` see the same records
//! through the same code. The console adds only what a browser needs on top:
//!
//! - [`auth`]: sign-in (one-time URLs from `sluice ui login`), browser sessions in
//!   HttpOnly SameSite=Strict cookies, a CSRF token bound to each session, and roles
//!   (viewers see; approvers approve, deny, grant and revoke).
//! - [`server`]: the HTTP server: embedded assets (no CDN, works offline), the pages'
//!   shell, the `/api/v1/...` bridge to the control routes, and the approvals queue as
//!   server-sent events.
//!
//! The port is a daemon port: the eBPF programs refuse agents' connections to it in the
//! kernel, like the redirect listener's and the metrics endpoint's, and record each
//! refusal.

pub mod auth;
pub mod oidc;
pub mod server;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use auth::{LoginAnswer, LoginRequest, Role, SignIns};

/// `[ui]`: the web console; off unless `listen` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// A loopback `ip:port` to serve the console on (`127.0.0.1:9470`). Anything wider
    /// goes through the user's own reverse proxy, which terminates TLS.
    pub listen: Option<SocketAddr>,
    /// The console's address as browsers reach it (`https://sluice.example.com`), for
    /// the sign-in URLs `sluice ui login` prints; `http://LISTEN` by default. An
    /// `https://` address also marks the session cookie `Secure`.
    pub public_url: Option<String>,
    /// Sign-in through an OpenID Connect provider.
    pub oidc: Option<OidcConfig>,
}

/// `[ui.oidc]`: authorization code with PKCE against an OpenID provider.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    /// The name of the client secret in the credentials file.
    pub client_secret_credential: String,
    /// Members of these groups (the ID token's `groups` claim) may approve; everyone
    /// else who signs in is a viewer.
    #[serde(default)]
    pub approver_groups: Vec<String>,
}

impl UiConfig {
    /// Refuses what the daemon cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        let Some(listen) = self.listen else {
            if self.public_url.is_some() || self.oidc.is_some() {
                return Err(
                    "ui: public_url and [ui.oidc] need [ui] listen (the console is off without it)"
                        .into(),
                );
            }
            return Ok(());
        };
        if !listen.ip().is_loopback() {
            return Err(format!(
                "ui.listen must be a loopback address (127.0.0.0/8 or ::1), not {listen}: \
                 serve the console further through your own TLS-terminating reverse proxy \
                 and set ui.public_url"
            ));
        }
        if listen.port() == 0 {
            return Err("ui.listen needs a port".into());
        }
        if let Some(url) = &self.public_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .ok_or_else(|| {
                    format!("ui.public_url must be an http:// or https:// URL, not {url:?}")
                })?;
            if rest.is_empty() || rest.contains(['?', '#', ' ']) {
                return Err(format!(
                    "ui.public_url must be a scheme, a host and optionally a path, not {url:?}"
                ));
            }
        }
        if let Some(oidc) = &self.oidc {
            crate::workload::http::check_url(&oidc.issuer)
                .map_err(|error| format!("ui.oidc.issuer: {error}"))?;
            if oidc.client_id.is_empty() || oidc.client_secret_credential.is_empty() {
                return Err(
                    "ui.oidc: client_id and client_secret_credential must not be empty".into(),
                );
            }
        }
        Ok(())
    }

    /// The console's base URL without a trailing `/`.
    pub fn base_url(&self) -> Option<String> {
        let listen = self.listen?;
        Some(
            self.public_url
                .clone()
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> UiConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn the_console_listens_on_loopback_only() {
        assert!(parse("").validate().is_ok());
        assert!(parse("listen = \"127.0.0.1:9470\"").validate().is_ok());
        assert!(parse("listen = \"[::1]:9470\"").validate().is_ok());
        let error = parse("listen = \"0.0.0.0:9470\"")
            .validate()
            .expect_err("wildcard refused");
        assert!(error.contains("loopback"), "{error}");
        assert!(parse("public_url = \"https://x\"").validate().is_err());
        assert!(
            parse("listen = \"127.0.0.1:1\"\npublic_url = \"ftp://x\"")
                .validate()
                .is_err()
        );
        assert_eq!(
            parse("listen = \"127.0.0.1:9470\"\npublic_url = \"https://c.example/\"").base_url(),
            Some("https://c.example".into())
        );
        assert_eq!(
            parse("listen = \"127.0.0.1:9470\"").base_url(),
            Some("http://127.0.0.1:9470".into())
        );
    }

    #[test]
    fn unknown_and_unsupported_keys_are_load_errors() {
        assert!(toml::from_str::<UiConfig>("listen = \"127.0.0.1:1\"\nport = 2").is_err());
        let oidc = |issuer: &str| {
            parse(&format!(
                "listen = \"127.0.0.1:9470\"\n[oidc]\nissuer = {issuer:?}\nclient_id = \"c\"\nclient_secret_credential = \"s\"\n"
            ))
        };
        assert!(oidc("https://login.example.com").validate().is_ok());
        assert!(oidc("http://127.0.0.1:9000").validate().is_ok());
        assert!(oidc("http://login.example.com").validate().is_err());
    }
}
