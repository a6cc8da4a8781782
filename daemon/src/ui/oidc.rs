//! Sign-in through an OpenID provider: the authorization code flow with PKCE (RFC 7636)
//! and a confidential client (`[ui.oidc]`, the secret in the credentials file).
//!
//! The browser is sent to the provider with a fresh `state`, `nonce` and code
//! challenge; the provider sends it back to `/oidc/callback` with a code, which the
//! daemon exchanges (with the verifier and the client secret) for an ID token. The ID
//! token's signature is checked against the provider's published keys, and its issuer,
//! audience, expiry and nonce against what was asked. Its `groups` claim decides the
//! role: a member of one of `approver_groups` approves, anyone else views. The person's
//! issuer, subject, email and groups are recorded with every decision they make.
//!
//! Discovery, key sets and signature checks reuse the workload identity's code
//! (`workload::http`, `workload::jwt`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde::Deserialize;

use super::{
    OidcConfig,
    auth::{Role, WebUser, random_token},
};
use crate::{
    approvals::ApproverIdentity,
    workload::{
        http,
        jwt::{self, JwkSet},
    },
};

/// How long a browser may spend at the provider before its sign-in is forgotten.
const PENDING_LIFETIME: Duration = Duration::from_secs(600);
/// Sign-ins in progress kept at once.
const MAX_PENDING: usize = 10_000;
/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_SECONDS: i64 = 60;

#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Pending {
    verifier: String,
    nonce: String,
    expires: Instant,
}

/// The console's OpenID client.
pub struct Oidc {
    config: OidcConfig,
    client_secret: String,
    redirect_uri: String,
    discovery: tokio::sync::Mutex<Option<Discovery>>,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: String,
}

impl Oidc {
    /// A client for `config`, with the secret from the credentials file, answering at
    /// `base_url/oidc/callback`.
    pub fn new(config: OidcConfig, client_secret: String, base_url: &str) -> Self {
        Self {
            config,
            client_secret,
            redirect_uri: format!("{base_url}/oidc/callback"),
            discovery: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The provider's endpoints, discovered once (again after a failure).
    async fn discovery(&self) -> Result<Discovery, String> {
        let mut cached = self.discovery.lock().await;
        if let Some(discovery) = cached.as_ref() {
            return Ok(discovery.clone());
        }
        let issuer = self.config.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let body = http::get(&url, None)
            .await
            .map_err(|error| format!("OIDC discovery: {error}"))?;
        let discovery: Discovery = serde_json::from_slice(&body)
            .map_err(|error| format!("OIDC discovery at {url}: {error}"))?;
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(format!(
                "OIDC discovery at {url} names issuer {:?}, not the configured {issuer:?}",
                discovery.issuer
            ));
        }
        for endpoint in [
            &discovery.authorization_endpoint,
            &discovery.token_endpoint,
            &discovery.jwks_uri,
        ] {
            http::check_url(endpoint).map_err(|error| format!("OIDC discovery: {error}"))?;
        }
        *cached = Some(discovery.clone());
        Ok(discovery)
    }

    /// Where to send the browser to sign in, and the sign-in's `state`.
    pub async fn authorization_url(&self) -> Result<(String, String), String> {
        let discovery = self.discovery().await?;
        let (state, nonce, verifier) = (random_token()?, random_token()?, random_token()?);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()),
        );
        {
            let now = Instant::now();
            let mut pending = lock(&self.pending);
            pending.retain(|_, sign_in| sign_in.expires > now);
            if pending.len() >= MAX_PENDING {
                return Err("too many sign-ins in progress".into());
            }
            pending.insert(
                state.clone(),
                Pending {
                    verifier,
                    nonce: nonce.clone(),
                    expires: now + PENDING_LIFETIME,
                },
            );
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", self.config.client_id.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("scope", "openid email profile groups"),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .finish();
        let separator = if discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok((
            format!("{}{separator}{query}", discovery.authorization_endpoint),
            state,
        ))
    }

    /// Finishes a sign-in from the callback's query string: the person, or why not.
    pub async fn finish(&self, query: &str) -> Result<WebUser, String> {
        let parameter = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        if let Some(error) = parameter("error") {
            return Err(format!(
                "the identity provider refused: {error} {}",
                parameter("error_description").unwrap_or_default()
            ));
        }
        let state = parameter("state").ok_or("the callback has no state")?;
        let code = parameter("code").ok_or("the callback has no code")?;
        let pending = lock(&self.pending)
            .remove(&state)
            .filter(|pending| pending.expires > Instant::now())
            .ok_or("this sign-in is unknown, used or too old; start again")?;
        let discovery = self.discovery().await?;
        let answer = http::post_form(
            &discovery.token_endpoint,
            (&self.config.client_id, &self.client_secret),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &pending.verifier),
            ],
        )
        .await
        .map_err(|error| format!("the token request failed: {error}"))?;
        let answer: TokenAnswer = serde_json::from_slice(&answer)
            .map_err(|error| format!("the token endpoint's answer has no ID token: {error}"))?;
        let identity = self
            .verify_id_token(&discovery, &answer.id_token, &pending.nonce)
            .await?;
        let approver = identity
            .groups
            .iter()
            .any(|group| self.config.approver_groups.contains(group));
        Ok(WebUser {
            // Not a person's uid: the daemon looks at `identity` for these users.
            uid: u32::MAX,
            gid: u32::MAX,
            name: Some(
                identity
                    .email
                    .clone()
                    .or_else(|| identity.username.clone())
                    .unwrap_or_else(|| identity.subject.clone()),
            ),
            role: if approver {
                Role::Approver
            } else {
                Role::Viewer
            },
            method: "oidc",
            identity: Some(identity),
        })
    }

    async fn verify_id_token(
        &self,
        discovery: &Discovery,
        token: &str,
        nonce: &str,
    ) -> Result<ApproverIdentity, String> {
        let refused = |why: String| format!("the ID token is refused: {why}");
        let parsed = jwt::parse(token, &jwt::Algorithm::ALL).map_err(|e| refused(e.to_string()))?;
        let keys = http::get(&discovery.jwks_uri, None)
            .await
            .map_err(|error| refused(format!("cannot fetch the provider's keys: {error}")))?;
        let keys: JwkSet = serde_json::from_slice(&keys)
            .map_err(|error| refused(format!("the provider's key set: {error}")))?;
        let key = match &parsed.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| refused("no published key matches its kid".into()))?;
        parsed.verify(key).map_err(|e| refused(e.to_string()))?;
        let claims = &parsed.claims;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        if text("iss").as_deref().map(|iss| iss.trim_end_matches('/'))
            != Some(discovery.issuer.trim_end_matches('/'))
        {
            return Err(refused(format!("issuer {:?}", text("iss"))));
        }
        let audience_ok = match claims.get("aud") {
            Some(serde_json::Value::String(aud)) => *aud == self.config.client_id,
            Some(serde_json::Value::Array(auds)) => auds
                .iter()
                .any(|aud| aud.as_str() == Some(self.config.client_id.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(refused("it is not for this client (aud)".into()));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let exp = claims.get("exp").and_then(serde_json::Value::as_i64);
        if exp.is_none_or(|exp| exp + LEEWAY_SECONDS < now) {
            return Err(refused("it has expired".into()));
        }
        if claims
            .get("iat")
            .and_then(serde_json::Value::as_i64)
            .is_some_and(|iat| iat > now + LEEWAY_SECONDS)
        {
            return Err(refused("it was issued in the future".into()));
        }
        if text("nonce").as_deref() != Some(nonce) {
            return Err(refused("its nonce is not this sign-in's".into()));
        }
        let subject = text("sub").ok_or_else(|| refused("it has no subject".into()))?;
        let groups = match claims.get("groups") {
            Some(serde_json::Value::Array(groups)) => groups
                .iter()
                .filter_map(|group| group.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(group)) => vec![group.clone()],
            _ => Vec::new(),
        };
        Ok(ApproverIdentity {
            issuer: discovery.issuer.clone(),
            subject,
            email: text("email"),
            username: text("preferred_username"),
            groups,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
