//! Claims as policies match them: a verified token's claims, and the patterns an
//! `[[agent]] identity` or a rule's `when` requires of them.
//!
//! Matching: every key must match; a list of patterns means any of them; `*` matches any
//! run of characters (including `/`) and `?` one character; a claim the token does not
//! carry never matches, not even `*`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A token's claims as text: scalars as one value, arrays of scalars as each of their
/// values; objects and nulls are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims(pub BTreeMap<String, Vec<String>>);

impl Claims {
    /// The claims of a JWT payload.
    pub fn from_payload(payload: &serde_json::Map<String, serde_json::Value>) -> Self {
        let scalar = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Number(number) => Some(number.to_string()),
            serde_json::Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        };
        let mut claims = BTreeMap::new();
        for (name, value) in payload {
            let values: Vec<String> = match value {
                serde_json::Value::Array(items) => items.iter().filter_map(scalar).collect(),
                other => scalar(other).into_iter().collect(),
            };
            if !values.is_empty() {
                claims.insert(name.clone(), values);
            }
        }
        Self(claims)
    }

    /// A claims object as `policy explain --claims` takes it (`{"ref": "refs/heads/main"}`).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| format!("claims are not JSON: {error}"))?;
        match value {
            serde_json::Value::Object(map) => Ok(Self::from_payload(&map)),
            _ => Err("claims must be a JSON object".into()),
        }
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .and_then(|values| values.first())
            .map(String::as_str)
    }
}

/// What a policy requires of claims: claim name → any of these patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClaimPatterns(pub BTreeMap<String, Vec<String>>);

impl ClaimPatterns {
    /// Reads `{ name = "pattern" | ["pattern", ...] }`; the error says what is wrong.
    pub fn from_toml(table: &toml::value::Table) -> Result<Self, String> {
        let mut patterns = BTreeMap::new();
        for (name, value) in table {
            let list = match value {
                toml::Value::String(text) => vec![text.clone()],
                toml::Value::Integer(number) => vec![number.to_string()],
                toml::Value::Boolean(flag) => vec![flag.to_string()],
                toml::Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(text) => Ok(text.clone()),
                        toml::Value::Integer(number) => Ok(number.to_string()),
                        toml::Value::Boolean(flag) => Ok(flag.to_string()),
                        other => Err(format!(
                            "claim `{name}`: a pattern is a string, not a {}",
                            other.type_str()
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                toml::Value::Array(_) => {
                    return Err(format!("claim `{name}`: the list of patterns is empty"));
                }
                other => {
                    return Err(format!(
                        "claim `{name}`: a pattern is a string or a list of strings, not a {}",
                        other.type_str()
                    ));
                }
            };
            patterns.insert(name.clone(), list);
        }
        if patterns.is_empty() {
            return Err("`claims` must name at least one claim".into());
        }
        Ok(Self(patterns))
    }

    /// Whether `claims` meet every requirement.
    pub fn matches(&self, claims: &Claims) -> bool {
        self.0.iter().all(|(name, patterns)| {
            claims.0.get(name).is_some_and(|values| {
                values
                    .iter()
                    .any(|value| patterns.iter().any(|pattern| glob(pattern, value)))
            })
        })
    }

    /// The first requirement `claims` do not meet, for explanations.
    pub fn first_mismatch(&self, claims: &Claims) -> Option<String> {
        self.0.iter().find_map(|(name, patterns)| {
            let met = claims.0.get(name).is_some_and(|values| {
                values
                    .iter()
                    .any(|value| patterns.iter().any(|pattern| glob(pattern, value)))
            });
            (!met).then(|| match claims.0.get(name) {
                None => format!("claim `{name}` is missing"),
                Some(values) => format!(
                    "claim `{name}` is {:?}, not {}",
                    values.join(","),
                    patterns.join(" or ")
                ),
            })
        })
    }

    /// Whether `name` is required to be exactly one value (no glob, no alternatives).
    pub fn pins(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|patterns| {
            patterns.len() == 1 && !patterns[0].contains(['*', '?']) && !patterns[0].is_empty()
        })
    }
}

impl std::fmt::Display for ClaimPatterns {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, patterns)| format!("{name}={}", patterns.join("|")))
            .collect();
        formatter.write_str(&parts.join(" "))
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and how much text it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') => {
                p += 1;
                t += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Issuers whose tokens any organisation can obtain, and the claim that names the
/// owner (organisation, group) in them. An agent bound to one of these must pin its
/// owner claim, or another organisation's job could present a token that matches.
pub const SHARED_ISSUERS: &[(&str, &[&str])] = &[
    (
        "https://token.actions.githubusercontent.com",
        &["repository_owner_id", "enterprise_id"],
    ),
    ("https://gitlab.com", &["namespace_id", "project_id"]),
    ("https://agent.buildkite.com", &["organization_id"]),
    ("https://oidc.circleci.com", &["oidc.circleci.com/org-id"]),
];

/// The owner claims an agent bound to `issuer_url` must pin, when the issuer is shared.
pub fn owner_claims(issuer_url: &str) -> Option<&'static [&'static str]> {
    let url = issuer_url.trim_end_matches('/');
    SHARED_ISSUERS
        .iter()
        .find(|(shared, _)| url == *shared || url.starts_with(&format!("{shared}/")))
        .map(|(_, claims)| *claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        Claims::from_json(json).expect("claims")
    }

    fn patterns(toml_text: &str) -> ClaimPatterns {
        let table: toml::value::Table = toml::from_str(toml_text).expect("toml");
        ClaimPatterns::from_toml(&table).expect("patterns")
    }

    #[test]
    fn globs() {
        assert!(glob("refs/heads/main", "refs/heads/main"));
        assert!(!glob("refs/heads/main", "refs/heads/main2"));
        assert!(glob("refs/heads/*", "refs/heads/feature/x"));
        assert!(glob(
            "acme/api/.github/workflows/deploy.yml@*",
            "acme/api/.github/workflows/deploy.yml@refs/heads/main"
        ));
        assert!(!glob("acme/api/*", "acme/apix"));
        assert!(glob("v?.*", "v1.2"));
        assert!(!glob("v?", "v12"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn every_key_must_match_and_lists_mean_any() {
        let token = claims(
            r#"{"ref":"refs/heads/main","repository_id":123456,"actor":"alice","groups":["dev","ops"]}"#,
        );
        assert!(patterns(r#"ref = "refs/heads/main""#).matches(&token));
        assert!(patterns(r#"repository_id = "123456""#).matches(&token));
        assert!(patterns("repository_id = 123456").matches(&token));
        assert!(patterns(r#"ref = ["refs/heads/release/*", "refs/heads/main"]"#).matches(&token));
        assert!(patterns(r#"groups = "ops""#).matches(&token));
        assert!(
            !patterns(
                r#"ref = "refs/heads/main"
actor = "bob""#
            )
            .matches(&token)
        );
        let feature = claims(r#"{"ref":"refs/heads/feature/x","actor":"alice"}"#);
        assert!(!patterns(r#"ref = "refs/heads/main""#).matches(&feature));
        assert_eq!(
            patterns(r#"ref = "refs/heads/main""#)
                .first_mismatch(&feature)
                .as_deref(),
            Some("claim `ref` is \"refs/heads/feature/x\", not refs/heads/main")
        );
    }

    #[test]
    fn a_missing_claim_never_matches_not_even_star() {
        let token = claims(r#"{"ref":"refs/heads/main"}"#);
        assert!(!patterns(r#"environment = "*""#).matches(&token));
        assert!(
            patterns(r#"environment = "*""#)
                .first_mismatch(&token)
                .is_some_and(|m| m.contains("missing"))
        );
        let nulls = claims(r#"{"environment":null,"ref":"x"}"#);
        assert!(!patterns(r#"environment = "*""#).matches(&nulls));
    }

    #[test]
    fn empty_pattern_lists_are_refused() {
        let table: toml::value::Table = toml::from_str("ref = []").expect("toml");
        assert!(ClaimPatterns::from_toml(&table).is_err());
        let table: toml::value::Table = toml::from_str("").expect("toml");
        assert!(ClaimPatterns::from_toml(&table).is_err());
        let table: toml::value::Table = toml::from_str("ref = { a = 1 }").expect("toml");
        assert!(ClaimPatterns::from_toml(&table).is_err());
    }

    #[test]
    fn shared_issuers_and_pins() {
        assert!(owner_claims("https://token.actions.githubusercontent.com").is_some());
        assert!(owner_claims("https://gitlab.com/").is_some());
        assert!(owner_claims("https://oidc.circleci.com/org/0f3a").is_some());
        assert!(owner_claims("https://gitlab.acme.internal").is_none());
        assert!(owner_claims("https://kubernetes.default.svc").is_none());
        let pinned = patterns(r#"repository_owner_id = "42""#);
        assert!(pinned.pins("repository_owner_id"));
        assert!(!patterns(r#"repository_owner_id = "4*""#).pins("repository_owner_id"));
        assert!(!patterns(r#"repository_owner_id = ["1", "2"]"#).pins("repository_owner_id"));
        assert!(!pinned.pins("namespace_id"));
    }
}
