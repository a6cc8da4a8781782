//! How `sluice run --identity` obtains the job's token, and which environment variables
//! it keeps from the agent.
//!
//! A variable that holds a token (GitLab's `id_tokens`, CircleCI's `CIRCLE_OIDC_TOKEN*`)
//! is always removed from the agent's environment; `--scrub-token-source` also removes
//! what lets the agent mint further tokens (GitHub's `ACTIONS_ID_TOKEN_REQUEST_*`,
//! Buildkite's agent access token).

use std::{path::PathBuf, str::FromStr};

/// Where the token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// GitHub Actions: `ACTIONS_ID_TOKEN_REQUEST_URL` with `ACTIONS_ID_TOKEN_REQUEST_TOKEN`,
    /// for the issuer's audience.
    Github,
    /// GitLab CI: the `id_tokens` variable named here.
    Gitlab(String),
    /// Buildkite: `buildkite-agent oidc request-token --audience AUD`.
    Buildkite,
    /// CircleCI: `CIRCLE_OIDC_TOKEN_V2`, else `CIRCLE_OIDC_TOKEN`.
    Circleci,
    /// A projected service-account token file.
    Kubernetes(PathBuf),
    /// Any file holding the token.
    File(PathBuf),
}

impl FromStr for TokenSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, argument) = match text.split_once('=') {
            Some((kind, argument)) => (kind, Some(argument)),
            None => (text, None),
        };
        let needs = |what: &str| {
            argument
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("--identity {kind}={what} needs the {what}"))
        };
        match kind {
            "github" => Ok(Self::Github),
            "gitlab" => Ok(Self::Gitlab(needs("VARIABLE")?)),
            "buildkite" => Ok(Self::Buildkite),
            "circleci" => Ok(Self::Circleci),
            "kubernetes" => Ok(Self::Kubernetes(needs("PATH")?.into())),
            "file" => Ok(Self::File(needs("PATH")?.into())),
            _ => Err(format!(
                "unknown identity source {kind:?} (expected github, gitlab=VAR, buildkite, circleci, kubernetes=PATH or file=PATH)"
            )),
        }
    }
}

/// GitHub's issuer URL, which `--identity github` takes the audience for.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

impl TokenSource {
    /// The issuer name this source's tokens are usually configured under.
    pub fn usual_issuer_name(&self) -> Option<&'static str> {
        match self {
            Self::Github => Some("github"),
            Self::Gitlab(_) => Some("gitlab"),
            Self::Buildkite => Some("buildkite"),
            Self::Circleci => Some("circleci"),
            Self::Kubernetes(_) => Some("kubernetes"),
            Self::File(_) => None,
        }
    }

    /// Variables that hold the token itself: never passed to the agent.
    pub fn token_variables(&self) -> Vec<String> {
        match self {
            Self::Gitlab(variable) => vec![variable.clone()],
            Self::Circleci => vec!["CIRCLE_OIDC_TOKEN".into(), "CIRCLE_OIDC_TOKEN_V2".into()],
            _ => Vec::new(),
        }
    }

    /// Variables that let the agent mint more tokens (`--scrub-token-source`).
    pub fn minting_variables(&self) -> &'static [&'static str] {
        match self {
            Self::Github => &[
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            ],
            Self::Buildkite => &["BUILDKITE_AGENT_ACCESS_TOKEN"],
            _ => &[],
        }
    }

    /// Obtains the token; `audience` is the issuer's configured audience (GitHub and
    /// Buildkite mint a token for it).
    pub async fn obtain(&self, audience: &str) -> Result<String, String> {
        let token = match self {
            Self::Github => {
                let url = std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL").map_err(|_| {
                    "ACTIONS_ID_TOKEN_REQUEST_URL is not set: is this a GitHub Actions job with `permissions: id-token: write`?".to_owned()
                })?;
                let bearer = std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
                    .map_err(|_| "ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set".to_owned())?;
                let separator = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{separator}audience={}", percent_encode(audience));
                let body = super::http::get(&url, Some(&bearer))
                    .await
                    .map_err(|error| format!("GitHub's token request failed: {error}"))?;
                #[derive(serde::Deserialize)]
                struct Answer {
                    value: String,
                }
                serde_json::from_slice::<Answer>(&body)
                    .map_err(|_| "GitHub's token request answered without a `value`".to_owned())?
                    .value
            }
            Self::Gitlab(variable) => std::env::var(variable).map_err(|_| {
                format!("{variable} is not set (declare it under `id_tokens:` in .gitlab-ci.yml)")
            })?,
            Self::Circleci => std::env::var("CIRCLE_OIDC_TOKEN_V2")
                .or_else(|_| std::env::var("CIRCLE_OIDC_TOKEN"))
                .map_err(|_| {
                    "neither CIRCLE_OIDC_TOKEN_V2 nor CIRCLE_OIDC_TOKEN is set".to_owned()
                })?,
            Self::Buildkite => {
                let output = tokio::process::Command::new("buildkite-agent")
                    .args(["oidc", "request-token", "--audience", audience])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .await
                    .map_err(|error| format!("cannot run buildkite-agent: {error}"))?;
                if !output.status.success() {
                    return Err(format!(
                        "buildkite-agent oidc request-token failed ({})",
                        output.status
                    ));
                }
                String::from_utf8(output.stdout)
                    .map_err(|_| "buildkite-agent printed a token that is not text".to_owned())?
            }
            Self::Kubernetes(path) | Self::File(path) => {
                std::fs::read_to_string(path).map_err(|error| {
                    format!("cannot read the token from {}: {error}", path.display())
                })?
            }
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        Ok(token)
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!("github".parse(), Ok(TokenSource::Github));
        assert_eq!(
            "gitlab=SLUICE_ID_TOKEN".parse(),
            Ok(TokenSource::Gitlab("SLUICE_ID_TOKEN".into()))
        );
        assert_eq!(
            "kubernetes=/var/run/secrets/tokens/sluice".parse(),
            Ok(TokenSource::Kubernetes(
                "/var/run/secrets/tokens/sluice".into()
            ))
        );
        assert!("gitlab".parse::<TokenSource>().is_err());
        assert!("file=".parse::<TokenSource>().is_err());
        assert!("jenkins".parse::<TokenSource>().is_err());
        assert_eq!(
            percent_encode("sluice:prod runners"),
            "sluice%3Aprod%20runners"
        );
    }
}
