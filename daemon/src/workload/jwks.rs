//! One issuer's signing keys: fetched through OIDC discovery (or read from `jwks_file`),
//! refreshed in the background, fetched again once when a token names an unknown `kid`
//! (at most once per `refetch_cooldown`), and persisted in the state directory so that a
//! daemon restarted while the issuer is unreachable still verifies. The last good set
//! is used for up to `max_stale` after it was fetched; after that, tokens are refused.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    VerifyError,
    config::Issuer,
    http,
    jwt::{Jwk, JwkSet},
};

/// The key set as persisted in `STATE/identity/jwks/NAME.json`.
#[derive(Serialize, Deserialize)]
struct Persisted {
    issuer: String,
    /// Seconds since the epoch when the set was fetched.
    fetched_at: u64,
    jwks: JwkSet,
}

#[derive(Default)]
struct State {
    set: Option<JwkSet>,
    fetched_at: Option<SystemTime>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The keys of one issuer.
pub struct IssuerKeys {
    pub issuer: Issuer,
    persist_to: Option<PathBuf>,
    state: Mutex<State>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl IssuerKeys {
    /// Starts from `jwks_file`, else from the set persisted under `dir` (when any).
    pub fn new(issuer: Issuer, dir: Option<&Path>) -> Self {
        let persist_to = dir.map(|dir| dir.join(format!("{}.json", issuer.name)));
        let keys = Self {
            persist_to,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            issuer,
        };
        if keys.issuer.jwks_file.is_some() {
            if let Err(error) = keys.read_file() {
                tracing::warn!(issuer = %keys.issuer.name, %error, "cannot read the JWKS file");
            }
        } else if let Some(path) = &keys.persist_to
            && let Ok(text) = std::fs::read(path)
        {
            match serde_json::from_slice::<Persisted>(&text) {
                Ok(saved) if saved.issuer == keys.issuer.issuer => {
                    let mut state = keys.lock();
                    state.set = Some(saved.jwks);
                    state.fetched_at =
                        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(saved.fetched_at));
                    tracing::info!(issuer = %keys.issuer.name, "using the persisted key set");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring an unreadable persisted key set")
                }
            }
        }
        keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_file(&self) -> Result<(), String> {
        let Some(path) = &self.issuer.jwks_file else {
            return Ok(());
        };
        let text = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let set: JwkSet = serde_json::from_slice(&text)
            .map_err(|error| format!("{}: not a JWKS: {error}", path.display()))?;
        let mut state = self.lock();
        state.set = Some(set);
        state.fetched_at = Some(SystemTime::now());
        Ok(())
    }

    /// Fetches the key set now (or re-reads `jwks_file`); the last good set stays on failure.
    pub async fn refresh(&self) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        self.lock().last_attempt = Some(Instant::now());
        let result = if self.issuer.jwks_file.is_some() {
            self.read_file()
        } else {
            self.fetch().await
        };
        let mut state = self.lock();
        state.last_error = result.as_ref().err().cloned();
        result
    }

    async fn fetch(&self) -> Result<(), String> {
        let jwks_uri = match &self.issuer.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover().await?,
        };
        let body = http::get(&jwks_uri, None)
            .await
            .map_err(|error| error.to_string())?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|error| format!("{jwks_uri}: not a JWKS: {error}"))?;
        let now = SystemTime::now();
        {
            let mut state = self.lock();
            state.set = Some(set.clone());
            state.fetched_at = Some(now);
        }
        if let Some(path) = &self.persist_to {
            let saved = Persisted {
                issuer: self.issuer.issuer.clone(),
                fetched_at: now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs()),
                jwks: set,
            };
            if let Err(error) = persist(path, &saved) {
                tracing::warn!(path = %path.display(), %error, "cannot persist the key set");
            }
        }
        tracing::info!(issuer = %self.issuer.name, %jwks_uri, "key set fetched");
        Ok(())
    }

    async fn discover(&self) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.issuer.trim_end_matches('/')
        );
        let body = http::get(&url, None)
            .await
            .map_err(|error| error.to_string())?;
        let discovery: Discovery = serde_json::from_slice(&body)
            .map_err(|error| format!("{url}: not an OpenID configuration: {error}"))?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it was
        // fetched for, exactly.
        if discovery.issuer != self.issuer.issuer {
            return Err(format!(
                "{url} names issuer {:?}, not {:?}",
                discovery.issuer, self.issuer.issuer
            ));
        }
        http::check_url(&discovery.jwks_uri)
            .map_err(|error| format!("{url}: jwks_uri: {error}"))?;
        Ok(discovery.jwks_uri)
    }

    /// The key named `kid`: from the current set while it is fresh enough, else after
    /// one fetch (rate-limited by `refetch_cooldown`).
    pub async fn key(&self, kid: &str) -> Result<Jwk, VerifyError> {
        // A key found in a set still fresh enough is used; an unknown `kid` or a set past
        // `max_stale` is a reason to fetch (at most once per cooldown).
        if let Ok(Some(key)) = self.usable_key(kid) {
            return Ok(key);
        }
        let cooled_down = self
            .lock()
            .last_attempt
            .is_none_or(|at| at.elapsed() >= self.issuer.refetch_cooldown);
        if cooled_down && let Err(error) = self.refresh().await {
            tracing::warn!(issuer = %self.issuer.name, %error, "cannot fetch the key set");
        }
        match self.usable_key(kid)? {
            Some(key) => Ok(key),
            None => Err(VerifyError::UnknownKey {
                kid: kid.to_owned(),
                last_error: self.lock().last_error.clone(),
            }),
        }
    }

    /// `Ok(None)`: no such key in the set (or no set yet); an error: the set is too old.
    fn usable_key(&self, kid: &str) -> Result<Option<Jwk>, VerifyError> {
        let state = self.lock();
        let Some(set) = &state.set else {
            return Ok(None);
        };
        if self.issuer.jwks_file.is_none()
            && let Some(fetched_at) = state.fetched_at
        {
            let age = fetched_at.elapsed().unwrap_or_default();
            if age > self.issuer.max_stale {
                return Err(VerifyError::StaleKeys {
                    age_secs: age.as_secs(),
                    max_stale_secs: self.issuer.max_stale.as_secs(),
                    last_error: state.last_error.clone(),
                });
            }
        }
        Ok(set.find(kid).cloned())
    }
}

/// Writes `value` as JSON to `path` (0600) through a temporary file and a rename.
pub(super) fn persist<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let text = serde_json::to_vec(value).map_err(|error| error.to_string())?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|error| error.to_string())?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|error| error.to_string())?;
    std::fs::rename(&temporary, path).map_err(|error| error.to_string())
}
