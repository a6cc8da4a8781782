//! Workload identity: the OIDC token a CI job (or a Kubernetes pod) was issued, verified
//! and bound to the agent run it started, so that every record of that run names the
//! repository, commit, workflow run and person behind it, and policies can require them.
//!
//! - [`config`]: `[[identity.issuer]]` in sluice.toml.
//! - [`jwt`]: the token's signature (ring), with the algorithm from configuration only.
//! - [`jwks`]: each issuer's keys: discovery, refresh, refetch on unknown `kid`,
//!   persistence, `max_stale`.
//! - [`claims`]: claim matching for policies, and the shared-issuer list.
//! - [`runs`]: the verified identity bound to a run's cgroup until the run ends.
//! - [`source`]: how `sluice run --identity` obtains the token in a CI job.
//!
//! The raw token is never stored or logged: records carry the issuer, the subject, the
//! claims the issuer's `record` list names, and the token's SHA-256.

pub mod claims;
pub mod config;
pub mod http;
pub mod jwks;
pub mod jwt;
#[cfg(test)]
mod policy_tests;
pub mod runs;
pub mod source;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

pub use claims::{ClaimPatterns, Claims};
pub use config::{IdentityConfig, Issuer, IssuerConfig};
pub use runs::Runs;

/// The verified identity of an agent run, as session records, operation records and
/// audit events carry it. Part of the stable record format: fields may be added only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// The configured issuer's name (`github`).
    pub issuer: String,
    /// The token's `iss`.
    pub issuer_url: String,
    /// The token's `sub` (`repo:acme/api:ref:refs/heads/main`).
    pub subject: String,
    /// The claims the issuer's `record` list names, as text (arrays joined by `,`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Hex SHA-256 of the raw token: ties the record to the token without keeping it.
    pub token_sha256: String,
    /// When the daemon verified the token.
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
}

impl RunIdentity {
    /// The person behind the run (`actor`, `user_login`), when the claims name one.
    pub fn actor(&self) -> Option<&str> {
        ["actor", "user_login", "build_creator"]
            .iter()
            .find_map(|name| self.claims.get(*name))
            .map(String::as_str)
    }

    /// The organisation or group the run belongs to, when the claims name one.
    pub fn owner(&self) -> Option<&str> {
        ["repository_owner", "namespace_path", "organization_slug"]
            .iter()
            .find_map(|name| self.claims.get(*name))
            .map(String::as_str)
    }

    /// One line for humans: `github repo:acme/api ref:refs/heads/main sha:9f1c… run:4411 actor:alice`.
    pub fn summary(&self) -> String {
        const LABELS: &[(&str, &[&str])] = &[
            ("repo", &["repository", "project_path", "pipeline_slug"]),
            ("ref", &["ref"]),
            ("sha", &["sha", "commit"]),
            ("run", &["run_id", "pipeline_id", "build_number"]),
            ("actor", &["actor", "user_login"]),
        ];
        let mut line = self.issuer.clone();
        let mut shown = 0;
        for (label, names) in LABELS {
            if let Some(value) = names.iter().find_map(|name| self.claims.get(*name)) {
                line.push_str(&format!(" {label}:{value}"));
                shown += 1;
            }
        }
        if shown == 0 {
            line.push_str(&format!(" sub:{}", self.subject));
        }
        line
    }
}

/// A verified token: what records carry, and every claim for policies to match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub record: RunIdentity,
    /// Every scalar claim of the token (not recorded; policies match on these).
    pub claims: Claims,
}

/// Why a token is not accepted. The messages never contain the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Jws(#[from] jwt::JwsError),
    #[error("issuer {0:?} is not configured ([[identity.issuer]] in sluice.toml)")]
    UnknownIssuer(String),
    #[error("the token's issuer {found:?} is not {expected:?}")]
    WrongIssuer { found: String, expected: String },
    #[error("the token's audience {found:?} does not include {expected:?}")]
    WrongAudience {
        found: Vec<String>,
        expected: String,
    },
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("the token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("the token was issued in the future ({iat}, now {now})")]
    IssuedInFuture { iat: u64, now: u64 },
    #[error("the token was already used (jti {0:?}): each token binds one run")]
    Replayed(String),
    #[error(
        "no key {kid:?} in the issuer's key set{}",
        last_error.as_deref().map(|e| format!(" (last fetch: {e})")).unwrap_or_default()
    )]
    UnknownKey {
        kid: String,
        last_error: Option<String>,
    },
    #[error(
        "the issuer's key set is {age_secs}s old, past max_stale ({max_stale_secs}s), and could not be refreshed{}",
        last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    StaleKeys {
        age_secs: u64,
        max_stale_secs: u64,
        last_error: Option<String>,
    },
}

/// Hex SHA-256 of `token`.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Tokens already used, until they expire; persisted so a restart does not forget.
#[derive(Default, Serialize, Deserialize)]
struct ReplayCache {
    /// `ISSUER jti` → seconds since the epoch after which the entry can go.
    seen: HashMap<String, u64>,
}

/// Verifies tokens of the configured issuers.
pub struct Verifier {
    issuers: Vec<Arc<jwks::IssuerKeys>>,
    replay: Mutex<ReplayCache>,
    replay_file: Option<PathBuf>,
}

impl Verifier {
    /// `state_dir`: where key sets and the replay cache persist (`None`: memory only).
    pub fn new(issuers: Vec<Issuer>, state_dir: Option<&Path>) -> Self {
        let dir = state_dir.map(|dir| dir.join("identity"));
        if let Some(dir) = &dir {
            use std::os::unix::fs::DirBuilderExt as _;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join("jwks"));
        }
        let replay_file = dir.as_ref().map(|dir| dir.join("replay.json"));
        let replay = replay_file
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default();
        Self {
            issuers: issuers
                .into_iter()
                .map(|issuer| {
                    Arc::new(jwks::IssuerKeys::new(
                        issuer,
                        dir.as_ref().map(|dir| dir.join("jwks")).as_deref(),
                    ))
                })
                .collect(),
            replay: Mutex::new(replay),
            replay_file,
        }
    }

    /// Every configured issuer.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<jwks::IssuerKeys>> {
        self.issuers.iter()
    }

    /// Refreshes every issuer's keys every `refresh`, for as long as the daemon runs.
    pub fn spawn_refresh(self: &Arc<Self>) {
        for keys in &self.issuers {
            let keys = Arc::clone(keys);
            tokio::spawn(async move {
                loop {
                    if let Err(error) = keys.refresh().await {
                        tracing::warn!(issuer = %keys.issuer.name, %error, "cannot refresh the key set; keeping the last good one");
                    }
                    tokio::time::sleep(keys.issuer.refresh).await;
                }
            });
        }
    }

    /// Verifies `token` against the issuer its `iss` names (exactly), and marks its
    /// `jti` used. The checks: algorithm in the issuer's allow-list (never `none` or
    /// HMAC), signature by the issuer's key named `kid`, `iss`, `aud`, `exp`, `nbf`,
    /// `iat` (with the issuer's leeway), and no earlier use of the same `jti`.
    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let token = token.trim();
        // Which issuer: the unverified `iss` only picks the configuration; everything is
        // then checked against that configuration.
        let claimed_issuer = jwt::parse(token, &jwt::Algorithm::ALL)?
            .claims
            .get("iss")
            .and_then(|iss| iss.as_str().map(str::to_owned))
            .ok_or(VerifyError::MissingClaim("iss"))?;
        let keys = self
            .issuers
            .iter()
            .find(|keys| keys.issuer.issuer == claimed_issuer)
            .ok_or_else(|| VerifyError::UnknownIssuer(claimed_issuer.clone()))?;
        let issuer = &keys.issuer;
        let parsed = jwt::parse(token, &issuer.algorithms)?;
        let kid = parsed.kid.clone().ok_or(jwt::JwsError::NoKid)?;
        let key = keys.key(&kid).await?;
        parsed.verify(&key)?;

        let claims = &parsed.claims;
        let text = |name: &'static str| {
            claims
                .get(name)
                .and_then(|value| value.as_str())
                .ok_or(VerifyError::MissingClaim(name))
        };
        let number = |name: &'static str| claims.get(name).and_then(serde_json::Value::as_u64);
        let iss = text("iss")?;
        if iss != issuer.issuer {
            return Err(VerifyError::WrongIssuer {
                found: iss.to_owned(),
                expected: issuer.issuer.clone(),
            });
        }
        let audiences: Vec<String> = match claims.get("aud") {
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            Some(serde_json::Value::Array(many)) => many
                .iter()
                .filter_map(|aud| aud.as_str().map(str::to_owned))
                .collect(),
            _ => return Err(VerifyError::MissingClaim("aud")),
        };
        if !audiences.contains(&issuer.audience) {
            return Err(VerifyError::WrongAudience {
                found: audiences,
                expected: issuer.audience.clone(),
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let leeway = issuer.leeway.as_secs();
        let exp = number("exp").ok_or(VerifyError::MissingClaim("exp"))?;
        if now > exp.saturating_add(leeway) {
            return Err(VerifyError::Expired { exp, now });
        }
        if let Some(nbf) = number("nbf")
            && now.saturating_add(leeway) < nbf
        {
            return Err(VerifyError::NotYetValid { nbf, now });
        }
        if let Some(iat) = number("iat")
            && now.saturating_add(leeway) < iat
        {
            return Err(VerifyError::IssuedInFuture { iat, now });
        }
        let subject = text("sub")?.to_owned();
        let hash = token_sha256(token);
        // Tokens without a `jti` (some Kubernetes versions) are each usable once too.
        let jti = text("jti").map_or_else(|_| format!("sha256:{hash}"), str::to_owned);
        self.mark_used(&issuer.name, &jti, exp.saturating_add(leeway), now)?;

        let all = Claims::from_payload(claims);
        let recorded = issuer
            .record
            .iter()
            .filter_map(|name| {
                all.0
                    .get(name)
                    .map(|values| (name.clone(), values.join(",")))
            })
            .collect();
        Ok(Verified {
            record: RunIdentity {
                issuer: issuer.name.clone(),
                issuer_url: issuer.issuer.clone(),
                subject,
                claims: recorded,
                token_sha256: hash,
                verified_at: OffsetDateTime::now_utc(),
            },
            claims: all,
        })
    }

    fn mark_used(&self, issuer: &str, jti: &str, until: u64, now: u64) -> Result<(), VerifyError> {
        let mut cache = self
            .replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.seen.retain(|_, expires| *expires >= now);
        let key = format!("{issuer} {jti}");
        if cache.seen.contains_key(&key) {
            return Err(VerifyError::Replayed(jti.to_owned()));
        }
        cache.seen.insert(key, until);
        if let Some(path) = &self.replay_file
            && let Err(error) = jwks::persist(path, &*cache)
        {
            tracing::warn!(path = %path.display(), %error, "cannot persist the replay cache");
        }
        Ok(())
    }
}

/// The body of `POST /v1/identity/runs`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// The agent the run is for (`sluice run --agent`).
    pub agent: String,
    /// When set, the token must verify as this configured issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The raw token. Never logged, stored or echoed.
    pub token: String,
}

impl std::fmt::Debug for BindRequest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BindRequest")
            .field("agent", &self.agent)
            .field("issuer", &self.issuer)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The answer of `POST /v1/identity/runs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindAnswer {
    /// The run's cgroup directory: the launcher moves itself into it and execs the agent.
    pub run_dir: PathBuf,
    /// The verified identity every record of the run will carry.
    pub identity: RunIdentity,
}

/// The daemon's workload identity: the verifier and the bound runs.
pub struct Workload {
    pub verifier: Arc<Verifier>,
    pub runs: Arc<Runs>,
}

impl Workload {
    /// Sets identity up from `[identity]`, persisting under `state_dir`, and (inside a
    /// tokio runtime) starts the key refresh and the run watcher. The runs become what
    /// [`runs::installed`] answers, for identifying connections.
    pub fn start(config: &IdentityConfig, state_dir: &Path) -> Result<Self, String> {
        let issuers = config.validate()?;
        let verifier = Arc::new(Verifier::new(issuers, Some(state_dir)));
        let runs = Arc::new(Runs::new(Some(state_dir)));
        runs::install(Arc::clone(&runs));
        verifier.spawn_refresh();
        runs.spawn_watch();
        Ok(Self { verifier, runs })
    }
}

/// The configured issuers as `(name, issuer URL)`, which policies may name. Set from
/// sluice.toml by the daemon and by `sluice policy check`/`explain` before they load a
/// policy; empty otherwise (then any `identity` in a policy is refused).
static KNOWN_ISSUERS: std::sync::RwLock<Vec<(String, String)>> = std::sync::RwLock::new(Vec::new());

/// Makes `config`'s issuers the ones policies may name.
pub fn set_known_issuers(config: &IdentityConfig) {
    let issuers = config
        .issuer
        .iter()
        .map(|issuer| (issuer.name.clone(), issuer.issuer.clone()))
        .collect();
    *KNOWN_ISSUERS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = issuers;
}

/// The issuers policies may name, as `(name, issuer URL)`.
pub fn known_issuers() -> Vec<(String, String)> {
    KNOWN_ISSUERS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

impl Verified {
    /// An identity as stated (not verified), for `sluice policy explain --claims`.
    pub fn stated(issuer: &str, claims: &serde_json::Map<String, serde_json::Value>) -> Self {
        let claims = Claims::from_payload(claims);
        Self {
            record: RunIdentity {
                issuer: issuer.to_owned(),
                issuer_url: String::new(),
                subject: claims.first("sub").unwrap_or_default().to_owned(),
                claims: BTreeMap::new(),
                token_sha256: String::new(),
                verified_at: OffsetDateTime::now_utc(),
            },
            claims,
        }
    }
}
