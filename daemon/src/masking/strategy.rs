//! What replaces a masked value or span: a redaction marker, a partial mask that keeps
//! a few trailing characters, or a keyed hash that stays joinable.

use bytes::BufMut;
use sha2::{Digest, Sha256, block_api::compress256};

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

/// A keyed HMAC-SHA-256, set up once: the key's inner and outer blocks are compressed
/// at construction and only those two SHA-256 states are kept (the key itself is not).
///
/// Hashing a value then costs the value's own compressions plus one for the outer hash,
/// run with `sha2`'s compression function. Cloning the `hmac` crate's keyed state and
/// finalising it per value cost as much again as the compressions themselves (zeroising
/// its block buffers byte by byte included): hashed columns are on every masked row.
/// The output is HMAC-SHA-256 exactly; the tests compare it with the `hmac` crate.
pub(crate) struct Hasher {
    inner: [u32; 8],
    outer: [u32; 8],
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_INIT: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
const BLOCK: usize = 64;

impl Hasher {
    pub(crate) fn new(key: &[u8]) -> Option<Hasher> {
        // RFC 2104: a key longer than a block is hashed first, then zero-padded.
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            let digest = Sha256::digest(key);
            block.get_mut(..digest.len())?.copy_from_slice(&digest);
        } else {
            block.get_mut(..key.len())?.copy_from_slice(key);
        }
        let keyed = |pad: u8| {
            let mut padded = block;
            for b in &mut padded {
                *b ^= pad;
            }
            let mut state = SHA256_INIT;
            compress256(&mut state, &[padded]);
            wipe(&mut padded);
            state
        };
        let hasher = Hasher {
            inner: keyed(0x36),
            outer: keyed(0x5c),
        };
        wipe(&mut block);
        Some(hasher)
    }

    /// Appends the masked form of `value`.
    pub(crate) fn write<B: BufMut>(&self, value: &[u8], out: &mut B) {
        let mut text = [0u8; HASH_PREFIX.len() + 2 * HASH_BYTES];
        self.write_into(value, &mut text);
        out.put_slice(&text);
    }

    /// `HASH_PREFIX` and the hex of the tag's first `HASH_BYTES` bytes, into `text`.
    pub(crate) fn write_into(
        &self,
        value: &[u8],
        text: &mut [u8; HASH_PREFIX.len() + 2 * HASH_BYTES],
    ) {
        let mut state = self.inner;
        let mut block = [0u8; BLOCK];
        let whole = value.len() - value.len() % BLOCK;
        let (blocks, tail) = value.split_at(whole);
        for chunk in blocks.chunks_exact(BLOCK) {
            if let Ok(chunk) = <[u8; BLOCK]>::try_from(chunk) {
                compress256(&mut state, &[chunk]);
            }
        }
        // The inner hash's input is the key block and the value.
        let bits = ((BLOCK + value.len()) as u64).wrapping_mul(8);
        finish(&mut state, &mut block, tail, bits);
        let mut digest = [0u8; 32];
        for (word, bytes) in state.iter().zip(digest.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        let mut tag = self.outer;
        finish(&mut tag, &mut block, &digest, ((BLOCK + 32) * 8) as u64);
        let (prefix, hex) = text.split_at_mut(HASH_PREFIX.len());
        prefix.copy_from_slice(HASH_PREFIX.as_bytes());
        let tag_bytes = tag.iter().flat_map(|w| w.to_be_bytes());
        for (b, pair) in tag_bytes.take(HASH_BYTES).zip(hex.chunks_exact_mut(2)) {
            if let [high, low] = pair {
                *high = HEX[usize::from(b >> 4)];
                *low = HEX[usize::from(b & 0x0f)];
            }
        }
        // What stays on the stack may contain the value and key-dependent states.
        wipe(&mut block);
        wipe(&mut digest);
        wipe_words(&mut state);
        wipe_words(&mut tag);
    }
}

/// Pads `tail` (under a block) with SHA-256's length padding and compresses it into
/// `state`, using `block` as the buffer.
fn finish(state: &mut [u32; 8], block: &mut [u8; BLOCK], tail: &[u8], bits: u64) {
    block.fill(0);
    if let Some(head) = block.get_mut(..tail.len()) {
        head.copy_from_slice(tail);
    }
    if let Some(marker) = block.get_mut(tail.len()) {
        *marker = 0x80;
    }
    if tail.len() >= BLOCK - 8 {
        compress256(state, &[*block]);
        block.fill(0);
    }
    if let Some(length) = block.get_mut(BLOCK - 8..) {
        length.copy_from_slice(&bits.to_be_bytes());
    }
    compress256(state, &[*block]);
}

/// Zeroes what held a value or a key-dependent state. `black_box` makes the zeroes
/// observable, so the stores are not dropped as dead (best effort, like the `hmac`
/// crate's zeroize feature that this replaces, at memset speed).
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

fn wipe_words(words: &mut [u32; 8]) {
    *words = [0; 8];
    std::hint::black_box(words);
}

impl Drop for Hasher {
    fn drop(&mut self) {
        wipe_words(&mut self.inner);
        wipe_words(&mut self.outer);
    }
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// Appends `value` with its characters masked by `*` except the last `keep_last`
/// (at most half of them). Characters are ASCII letters and digits and non-ASCII
/// characters (UTF-8 characters, or single bytes if the value is not UTF-8); other
/// ASCII is kept as is.
pub(crate) fn partial<B: BufMut>(value: &[u8], keep_last: usize, out: &mut B) {
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
            out.put_u8(if hiding { b'*' } else { b });
        } else if continues(b) {
            if !hiding {
                out.put_u8(b);
            }
        } else {
            hiding = false;
            out.put_u8(b);
        }
    }
}
