//! The answers to the server's authentication challenges, computed from the brokered
//! password: mysql_native_password, caching_sha2_password's scramble, and MariaDB's
//! client_ed25519 signature. Hashing comes from `sha1`/`sha2` and the curve from
//! `curve25519-dalek`; what is written here is only each plugin's recipe.

use curve25519_dalek::{EdwardsPoint, Scalar};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};

/// The authentication plugins the daemon can answer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    NativePassword,
    CachingSha2,
    Ed25519,
    /// Sends the password itself; only over TLS.
    ClearPassword,
}

impl Plugin {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mysql_native_password" | "" => Some(Self::NativePassword),
            "caching_sha2_password" => Some(Self::CachingSha2),
            "client_ed25519" => Some(Self::Ed25519),
            "mysql_clear_password" => Some(Self::ClearPassword),
            _ => None,
        }
    }

    /// The answer to `nonce` for `password`.
    pub fn respond(self, password: &[u8], nonce: &[u8]) -> Vec<u8> {
        match self {
            Self::NativePassword => native_password(password, nonce),
            Self::CachingSha2 => caching_sha2(password, nonce),
            Self::Ed25519 => ed25519_signature(password, nonce).to_vec(),
            Self::ClearPassword => {
                let mut out = password.to_vec();
                out.push(0);
                out
            }
        }
    }
}

/// The challenge nonce without the NUL some servers append to it.
fn nonce20(nonce: &[u8]) -> &[u8] {
    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
    nonce.get(..20).unwrap_or(nonce)
}

/// SHA1(password) XOR SHA1(nonce ‖ SHA1(SHA1(password))); empty for no password.
pub fn native_password(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut hasher = Sha1::new();
    hasher.update(nonce20(nonce));
    hasher.update(stage2);
    let mix = hasher.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// SHA256(password) XOR SHA256(SHA256(SHA256(password)) ‖ nonce); empty for none.
pub fn caching_sha2(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let mut hasher = Sha256::new();
    hasher.update(stage2);
    hasher.update(nonce20(nonce));
    let mix = hasher.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// MariaDB's client_ed25519: an Ed25519 signature of the nonce whose secret is the
/// SHA-512 of the password (of any length), not of a 32-byte seed.
pub fn ed25519_signature(password: &[u8], nonce: &[u8]) -> [u8; 64] {
    let az: [u8; 64] = Sha512::digest(password).into();
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&az[..32]);
    secret[0] &= 248;
    secret[31] &= 63;
    secret[31] |= 64;
    let a = Scalar::from_bytes_mod_order(secret);
    let public = EdwardsPoint::mul_base(&a).compress();

    let mut hasher = Sha512::new();
    hasher.update(&az[32..]);
    hasher.update(nonce);
    let r = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    let big_r = EdwardsPoint::mul_base(&r).compress();

    let mut hasher = Sha512::new();
    hasher.update(big_r.as_bytes());
    hasher.update(public.as_bytes());
    hasher.update(nonce);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    let s = k * a + r;

    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(big_r.as_bytes());
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

/// The public key MariaDB stores for an ed25519 user (`ed25519_password(...)`),
/// base64 without padding; used by the tests to check the signature's key.
#[cfg(test)]
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    let az: [u8; 64] = Sha512::digest(password).into();
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&az[..32]);
    secret[0] &= 248;
    secret[31] &= 63;
    secret[31] |= 64;
    EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(secret))
        .compress()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn native_password_scramble_matches_the_server_check() {
        // The server stores SHA1(SHA1(password)) and checks
        // SHA1(response XOR SHA1(nonce ‖ stored)) == stored.
        let nonce: Vec<u8> = (0..20).map(|i| i * 7 + 3).collect();
        let response = native_password(b"s3cret", &nonce);
        let stored = Sha1::digest(Sha1::digest(b"s3cret"));
        let mut hasher = Sha1::new();
        hasher.update(&nonce);
        hasher.update(stored);
        let mix = hasher.finalize();
        let stage1: Vec<u8> = response
            .iter()
            .zip(mix.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(Sha1::digest(&stage1), stored);
        assert!(native_password(b"", &nonce).is_empty());
        // A trailing NUL on the nonce is not part of it.
        let mut with_nul = nonce.clone();
        with_nul.push(0);
        assert_eq!(native_password(b"s3cret", &with_nul), response);
    }

    #[test]
    fn caching_sha2_scramble_matches_the_server_check() {
        let nonce: Vec<u8> = (0..20).map(|i| 255 - i).collect();
        let response = caching_sha2(b"pw", &nonce);
        let stored = Sha256::digest(Sha256::digest(b"pw"));
        let mut hasher = Sha256::new();
        hasher.update(stored);
        hasher.update(&nonce);
        let mix = hasher.finalize();
        let stage1: Vec<u8> = response
            .iter()
            .zip(mix.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(Sha256::digest(&stage1), stored);
    }

    #[test]
    fn ed25519_signature_verifies_as_standard_ed25519() {
        // Verify R ‖ S against the public key: S·B == R + H(R ‖ A ‖ M)·A.
        let nonce = [0x5a; 32];
        let signature = ed25519_signature(b"correct horse", &nonce);
        let public =
            curve25519_dalek::edwards::CompressedEdwardsY(ed25519_public_key(b"correct horse"))
                .decompress()
                .unwrap();
        let big_r =
            curve25519_dalek::edwards::CompressedEdwardsY(signature[..32].try_into().unwrap())
                .decompress()
                .unwrap();
        let s = Scalar::from_canonical_bytes(signature[32..].try_into().unwrap()).unwrap();
        let mut hasher = Sha512::new();
        hasher.update(&signature[..32]);
        hasher.update(public.compress().as_bytes());
        hasher.update(nonce);
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        assert_eq!(EdwardsPoint::mul_base(&s), big_r + k * public);
        assert_ne!(hex(&signature), hex(&ed25519_signature(b"other", &nonce)));
    }
}
