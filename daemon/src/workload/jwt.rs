//! Compact JWS (the JWT wire form) checked with `ring`, and the JWK keys that check it.
//!
//! Why not a JWT crate: the one widely used (`jsonwebtoken`) now needs aws-lc-rs or the
//! RustCrypto stack as its backend, while `ring` is already in the tree through rustls;
//! and the part that matters here is small and must be exact: the algorithm comes from
//! the issuer's configured allow-list (never from the token alone), `none` and HMAC are
//! refused before anything else, and the key is the issuer's key named by `kid`.

use std::{fmt, str::FromStr};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde::{Deserialize, Serialize};

/// A signature algorithm sluice verifies. HMAC (`HS*`) and `none` are not among them:
/// a shared secret cannot prove which issuer signed, and `none` signs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Every algorithm sluice can verify.
    pub const ALL: [Algorithm; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];
}

impl fmt::Display for Algorithm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("none") || text.to_ascii_uppercase().starts_with("HS") {
            return Err(format!(
                "algorithm {text:?} is never accepted: `none` is unsigned and HMAC is a shared secret"
            ));
        }
        Self::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown algorithm {text:?} (expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )
            })
    }
}

/// One key of a JWKS, as published (RFC 7517). Unknown members are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A JWKS document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The key named `kid`.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|key| key.kid.as_deref() == Some(kid))
    }
}

/// Why a token's form or signature is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is never accepted")]
    Forbidden(String),
    #[error("algorithm {alg} is not among the issuer's configured algorithms ({allowed})")]
    NotAllowed { alg: String, allowed: String },
    #[error("the token names no key (`kid`)")]
    NoKid,
    #[error("key {kid:?} cannot verify {alg}: {why}")]
    KeyMismatch {
        kid: String,
        alg: Algorithm,
        why: String,
    },
    #[error("the signature does not verify")]
    BadSignature,
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `header.payload` as sent: what the signature covers.
    signed: &'t str,
    signature: Vec<u8>,
    /// The payload's JSON.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The most a token may weigh: real ID tokens are 1-3 KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Splits and decodes `token`, refusing `none`, HMAC and any algorithm not in `allowed`.
pub fn parse<'t>(token: &'t str, allowed: &[Algorithm]) -> Result<Parsed<'t>, JwsError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwsError::Malformed(format!(
            "longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|error| JwsError::Malformed(format!("{what} is not base64url: {error}")))
    };
    let header: Header = serde_json::from_slice(&decode(header, "the header")?)
        .map_err(|error| JwsError::Malformed(format!("the header is not JSON: {error}")))?;
    if header.alg.eq_ignore_ascii_case("none") || header.alg.to_ascii_uppercase().starts_with("HS")
    {
        return Err(JwsError::Forbidden(header.alg));
    }
    if header.crit.is_some() {
        return Err(JwsError::Malformed(
            "critical header extensions (`crit`) are not understood".into(),
        ));
    }
    let alg = allowed
        .iter()
        .copied()
        .find(|algorithm| algorithm.as_str() == header.alg)
        .ok_or_else(|| JwsError::NotAllowed {
            alg: header.alg.clone(),
            allowed: allowed
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let claims = serde_json::from_slice(&decode(payload, "the payload")?).map_err(|error| {
        JwsError::Malformed(format!("the payload is not a JSON object: {error}"))
    })?;
    let signature = decode(signature, "the signature")?;
    let signed_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    Ok(Parsed {
        alg,
        kid: header.kid,
        signed: &token[..signed_len],
        signature,
        claims,
    })
}

impl Parsed<'_> {
    /// Checks the signature with `key`, which must suit the algorithm.
    pub fn verify(&self, key: &Jwk) -> Result<(), JwsError> {
        let kid = key.kid.clone().unwrap_or_default();
        let mismatch = |why: &str| JwsError::KeyMismatch {
            kid: kid.clone(),
            alg: self.alg,
            why: why.to_owned(),
        };
        if key
            .alg
            .as_deref()
            .is_some_and(|alg| alg != self.alg.as_str())
        {
            return Err(mismatch("the key is published for another algorithm"));
        }
        if key.use_.as_deref().is_some_and(|use_| use_ != "sig") {
            return Err(mismatch("the key is not a signing key"));
        }
        let member = |value: &Option<String>, name: &str| -> Result<Vec<u8>, JwsError> {
            let text = value
                .as_deref()
                .ok_or_else(|| mismatch(&format!("the key has no `{name}`")))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| mismatch(&format!("the key's `{name}` is not base64url")))
        };
        let message = self.signed.as_bytes();
        let verified = match self.alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                if key.kty != "RSA" {
                    return Err(mismatch("not an RSA key"));
                }
                let parameters: &signature::RsaParameters = match self.alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                signature::RsaPublicKeyComponents {
                    n: member(&key.n, "n")?,
                    e: member(&key.e, "e")?,
                }
                .verify(parameters, message, &self.signature)
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let (curve, algorithm): (&str, &'static dyn VerificationAlgorithm) =
                    if self.alg == Algorithm::ES256 {
                        ("P-256", &signature::ECDSA_P256_SHA256_FIXED)
                    } else {
                        ("P-384", &signature::ECDSA_P384_SHA384_FIXED)
                    };
                if key.kty != "EC" || key.crv.as_deref() != Some(curve) {
                    return Err(mismatch(&format!("not an EC {curve} key")));
                }
                // The uncompressed point: 0x04 || x || y.
                let mut point = vec![4u8];
                point.extend(member(&key.x, "x")?);
                point.extend(member(&key.y, "y")?);
                UnparsedPublicKey::new(algorithm, point).verify(message, &self.signature)
            }
            Algorithm::EdDSA => {
                if key.kty != "OKP" || key.crv.as_deref() != Some("Ed25519") {
                    return Err(mismatch("not an Ed25519 key"));
                }
                UnparsedPublicKey::new(&signature::ED25519, member(&key.x, "x")?)
                    .verify(message, &self.signature)
            }
        };
        verified.map_err(|_| JwsError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use ring::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
    };

    use super::*;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES256 key, its JWK, and a token signer.
    fn es256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("parse");
        let point = pair.public_key().as_ref().to_vec();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some("k1".into()),
            alg: Some("ES256".into()),
            use_: Some("sig".into()),
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(b64(&point[1..33])),
            y: Some(b64(&point[33..65])),
        };
        (pair, jwk)
    }

    fn sign(pair: &EcdsaKeyPair, header: &str, payload: &str) -> String {
        let signed = format!("{}.{}", b64(header), b64(payload));
        let signature = pair
            .sign(&SystemRandom::new(), signed.as_bytes())
            .expect("sign");
        format!("{signed}.{}", b64(signature.as_ref()))
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_only() {
        let (pair, jwk) = es256();
        let token = sign(&pair, r#"{"alg":"ES256","kid":"k1"}"#, r#"{"sub":"x"}"#);
        let parsed = parse(&token, &[Algorithm::ES256]).expect("parses");
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims["sub"], "x");
        parsed.verify(&jwk).expect("verifies");
        let (_, other) = es256();
        assert_eq!(parsed.verify(&other), Err(JwsError::BadSignature));
        let rsa = Jwk {
            kty: "RSA".into(),
            ..jwk.clone()
        };
        assert!(matches!(
            parsed.verify(&rsa),
            Err(JwsError::KeyMismatch { .. })
        ));
        let for_other_alg = Jwk {
            alg: Some("ES384".into()),
            ..jwk
        };
        assert!(matches!(
            parsed.verify(&for_other_alg),
            Err(JwsError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn none_hmac_unlisted_algorithms_and_odd_shapes_are_refused_before_any_key() {
        let (pair, _) = es256();
        let payload = r#"{"sub":"x"}"#;
        for alg in ["none", "None", "HS256", "hs512"] {
            let token = format!(
                "{}.{}.",
                b64(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#)),
                b64(payload)
            );
            assert_eq!(
                parse(&token, &Algorithm::ALL).err(),
                Some(JwsError::Forbidden(alg.into())),
                "{alg}"
            );
            assert!(
                alg.parse::<Algorithm>().is_err(),
                "{alg} is never configurable"
            );
        }
        let token = sign(&pair, r#"{"alg":"ES256","kid":"k1"}"#, payload);
        assert!(matches!(
            parse(&token, &[Algorithm::RS256]),
            Err(JwsError::NotAllowed { .. })
        ));
        let critical = sign(
            &pair,
            r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#,
            payload,
        );
        assert!(matches!(
            parse(&critical, &Algorithm::ALL),
            Err(JwsError::Malformed(_))
        ));
        for malformed in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(
                    parse(malformed, &Algorithm::ALL),
                    Err(JwsError::Malformed(_))
                ),
                "{malformed:.20}"
            );
        }
    }
}
