//! What replaces a masked value or span: a redaction marker, a partial mask that keeps
//! a few trailing characters, or a keyed hash that stays joinable.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How a value (column rules) or a detected span (detector rules) is masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Replace with [`REDACTED`] (column rules) or the detector's marker, e.g. `[EMAIL]`
    /// (detector rules), so a reader still sees what kind of value was there.
    Redact,
    /// Replace every letter and digit with `*` except the last `keep_last` ones, and
    /// never more than half of them: `4111 1111 1111 1111` → `**** **** **** 1111`.
    /// Punctuation and spaces are kept, so the value's shape (and length) shows.
    Partial { keep_last: usize },
    /// [`HASH_PREFIX`] and the first [`HASH_BYTES`] bytes of HMAC-SHA-256(key, value) in
    /// lower-case hex: equal values give equal outputs, so masked columns still join
    /// and group, but nothing can be recovered without the key.
    Hash,
}

/// The marker of [`Strategy::Redact`] for whole values.
pub const REDACTED: &str = "[REDACTED]";
/// What every hashed value starts with.
pub const HASH_PREFIX: &str = "h:";
/// Bytes of the HMAC tag kept (hex doubles it).
pub const HASH_BYTES: usize = 16;
/// The shortest HMAC key accepted when a profile hashes: a short key would make the
/// hashes of guessable values (card numbers, SSNs) searchable.
pub const MIN_KEY_LEN: usize = 16;
/// Default `keep_last` of `partial`.
pub const DEFAULT_KEEP_LAST: usize = 4;

/// A keyed HMAC-SHA-256, set up once; cloning the keyed state per value skips
/// re-processing the key. The key itself is not kept.
#[derive(Clone)]
pub(crate) struct Hasher(Hmac<Sha256>);

impl Hasher {
    pub(crate) fn new(key: &[u8]) -> Option<Hasher> {
        Hmac::<Sha256>::new_from_slice(key).ok().map(Hasher)
    }

    /// Appends the masked form of `value`.
    pub(crate) fn write(&self, value: &[u8], out: &mut Vec<u8>) {
        let mut mac = self.0.clone();
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(HASH_PREFIX.as_bytes());
        for &b in tag.iter().take(HASH_BYTES) {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
    }
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// Appends `value` with its characters masked by `*` except the last `keep_last`
/// (at most half of them). Characters are ASCII letters and digits and non-ASCII
/// characters (UTF-8 characters, or single bytes if the value is not UTF-8); other
/// ASCII is kept as is.
pub(crate) fn partial(value: &[u8], keep_last: usize, out: &mut Vec<u8>) {
    let utf8 = std::str::from_utf8(value).is_ok();
    // Continuation bytes belong to the character before them.
    let starts_char = |b: u8| b.is_ascii_alphanumeric() || (b >= 0x80 && (!utf8 || b >= 0xc0));
    let continues = |b: u8| utf8 && (0x80..0xc0).contains(&b);
    let chars = value.iter().filter(|&&b| starts_char(b)).count();
    let keep = keep_last.min(chars / 2);
    let hidden = chars - keep;
    let mut seen = 0;
    let mut hiding = false;
    for &b in value {
        if starts_char(b) {
            seen += 1;
            hiding = seen <= hidden;
            out.push(if hiding { b'*' } else { b });
        } else if continues(b) {
            if !hiding {
                out.push(b);
            }
        } else {
            hiding = false;
            out.push(b);
        }
    }
}
