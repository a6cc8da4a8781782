//! `[identity]` in sluice.toml: the issuers whose tokens the daemon accepts.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::jwt::Algorithm;

/// `[identity]`: every issuer the daemon verifies tokens of.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// `[[identity.issuer]]`, one per CI system (or cluster).
    pub issuer: Vec<IssuerConfig>,
}

/// One trusted issuer of workload identity tokens.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// What policies and `sluice run --identity` call it (`github`).
    pub name: String,
    /// The exact `iss` of its tokens, also the base of OIDC discovery.
    pub issuer: String,
    /// The `aud` tokens must carry to be accepted here (sluice's audience).
    pub audience: String,
    /// The signature algorithms accepted; the token's own `alg` must be one of them.
    pub algorithms: Vec<String>,
    /// A JWKS file to use instead of fetching (hosts that cannot reach the issuer).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The JWKS URL; found through `/.well-known/openid-configuration` when absent.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// How long the last fetched key set stays usable while the issuer cannot be reached.
    #[serde(default = "default_max_stale")]
    pub max_stale: String,
    /// How often the key set is fetched again in the background.
    #[serde(default = "default_refresh")]
    pub refresh: String,
    /// The least time between two fetches caused by a token with an unknown `kid`.
    #[serde(default = "default_refetch_cooldown")]
    pub refetch_cooldown: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// The claims copied into every record of a run (besides `iss` and `sub`).
    #[serde(default)]
    pub record: Vec<String>,
}

fn default_max_stale() -> String {
    "24h".into()
}
fn default_refresh() -> String {
    "10m".into()
}
fn default_refetch_cooldown() -> String {
    "30s".into()
}
fn default_leeway() -> String {
    "60s".into()
}

/// An issuer's settings, checked and parsed.
#[derive(Clone, Debug)]
pub struct Issuer {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_uri: Option<String>,
    pub max_stale: Duration,
    pub refresh: Duration,
    pub refetch_cooldown: Duration,
    pub leeway: Duration,
    pub record: Vec<String>,
}

impl IdentityConfig {
    /// Checks every issuer; the error names the offending key.
    pub fn validate(&self) -> Result<Vec<Issuer>, String> {
        let mut issuers: Vec<Issuer> = Vec::with_capacity(self.issuer.len());
        for config in &self.issuer {
            let issuer = config
                .check()
                .map_err(|error| format!("identity.issuer `{}`: {error}", config.name))?;
            if issuers.iter().any(|other| other.name == issuer.name) {
                return Err(format!(
                    "identity.issuer `{}` is defined twice",
                    issuer.name
                ));
            }
            issuers.push(issuer);
        }
        Ok(issuers)
    }
}

impl IssuerConfig {
    fn check(&self) -> Result<Issuer, String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err("`name` must be 1-64 letters, digits, '-', '_' or '.'".into());
        }
        super::http::check_url(&self.issuer).map_err(|error| format!("issuer: {error}"))?;
        if let Some(uri) = &self.jwks_uri {
            super::http::check_url(uri).map_err(|error| format!("jwks_uri: {error}"))?;
        }
        if self.audience.is_empty() {
            return Err("`audience` must not be empty".into());
        }
        if self.algorithms.is_empty() {
            return Err("`algorithms` must list at least one algorithm (like \"RS256\")".into());
        }
        let algorithms = self
            .algorithms
            .iter()
            .map(|name| name.parse::<Algorithm>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Issuer {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            algorithms,
            jwks_file: self.jwks_file.clone(),
            jwks_uri: self.jwks_uri.clone(),
            max_stale: parse_duration("max_stale", &self.max_stale)?,
            refresh: parse_duration("refresh", &self.refresh)?,
            refetch_cooldown: parse_duration("refetch_cooldown", &self.refetch_cooldown)?,
            leeway: parse_duration("leeway", &self.leeway)?,
            record: self.record.clone(),
        })
    }
}

/// `500ms`, `30s`, `10m`, `24h` or `7d`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{key}` = {text:?} is not a duration like \"30s\" or \"24h\""))?;
    let seconds = |factor: u64| Duration::from_secs(number.saturating_mul(factor));
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(format!(
            "`{key}` = {text:?} is not a duration like \"30s\" or \"24h\" (units ms, s, m, h, d)"
        )),
    }
}
