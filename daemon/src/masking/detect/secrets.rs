//! Credentials: JWTs, AWS keys, GitHub tokens and PEM private key blocks. Each is
//! anchored on a fixed prefix or shape, so checking a position is cheap.

use memchr::memmem;

use super::{
    ALNUM, B64, B64URL, DIGIT, Detector, LOWER, Span, UPPER, at, class, is, prev, run_end,
    run_end_max, span,
};

const PEM_BEGIN: &[u8] = b"-----BEGIN ";
const PEM_END: &[u8] = b"-----END ";
const PEM_DASHES: &[u8] = b"-----";
/// Longest label we accept between `BEGIN ` and the dashes.
const PEM_LABEL: usize = 64;

/// A PEM private key block starting at the `-` at `i`, through its END line; a block
/// that never ends (a truncated value) runs to the end of the value.
pub(super) fn pem_block(v: &[u8], i: usize) -> Option<Span> {
    let rest = v.get(i..)?;
    let after_begin = rest.strip_prefix(PEM_BEGIN)?;
    let window = after_begin.get(..=PEM_LABEL).unwrap_or(after_begin);
    let label_len = memmem::find(window, PEM_DASHES)?;
    let label = window.get(..label_len)?;
    let label_ok = label.ends_with(b"PRIVATE KEY")
        && label
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ');
    if !label_ok {
        return None;
    }
    let body = i + PEM_BEGIN.len() + label_len + PEM_DASHES.len();
    let end = memmem::find(v.get(body..).unwrap_or_default(), PEM_END)
        .and_then(|e| {
            let label_start = body + e + PEM_END.len();
            let tail = v.get(label_start..).unwrap_or_default();
            let window = tail.get(..=PEM_LABEL).unwrap_or(tail);
            memmem::find(window, PEM_DASHES).map(|d| label_start + d + PEM_DASHES.len())
        })
        .unwrap_or(v.len());
    Some(span(i, end, Detector::PrivateKey))
}

/// A JWT (JWS compact form) at word start `i`: three base64url segments (the last may
/// be empty for `alg: none`) whose first decodes to a JSON object with an `"alg"`.
pub(super) fn jwt(v: &[u8], i: usize) -> Option<Span> {
    // `{"` and `{ ` encode as `ey`, `{` and a line break or tab as `ew`.
    if !matches!(at(v, i + 1), Some(b'y' | b'w')) || matches!(prev(v, i), Some(b'-' | b'_' | b'.'))
    {
        return None;
    }
    let header_end = run_end(v, i, B64URL);
    if at(v, header_end) != Some(b'.') {
        return None;
    }
    let payload_end = run_end(v, header_end + 1, B64URL);
    if payload_end == header_end + 1 || at(v, payload_end) != Some(b'.') {
        return None;
    }
    let end = run_end(v, payload_end + 1, B64URL);
    // A fourth segment makes it something else (a JWE has five).
    if at(v, end) == Some(b'.') && is(v, end + 1, B64URL) {
        return None;
    }
    header_has_alg(v.get(i..header_end)?).then(|| span(i, end, Detector::Jwt))
}

/// Does the base64url `header` decode to `{ ... "alg" ... }`? Looks at the first 512
/// decoded bytes, which any real header fits in.
fn header_has_alg(header: &[u8]) -> bool {
    let mut out = [0u8; 512];
    let mut n = 0;
    for chunk in header.chunks(4) {
        let mut acc = 0u32;
        for (k, &c) in chunk.iter().enumerate() {
            let Some(sextet) = base64url_value(c) else {
                return false;
            };
            acc |= u32::from(sextet) << (18 - 6 * k);
        }
        let bytes = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return false,
        };
        for shift in [16, 8, 0].into_iter().take(bytes) {
            let Some(slot) = out.get_mut(n) else {
                break;
            };
            *slot = (acc >> shift) as u8;
            n += 1;
        }
        if n >= out.len() {
            break;
        }
    }
    let decoded = out.get(..n).unwrap_or_default();
    let json = decoded.trim_ascii_start();
    json.first() == Some(&b'{') && memmem::find(json, b"\"alg\"").is_some()
}

fn base64url_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// An AWS access key id at word start `i`: `AKIA` (long-term) or `ASIA` (temporary)
/// and 16 uppercase letters or digits.
pub(super) fn aws_key_id(v: &[u8], i: usize) -> Option<Span> {
    let rest = v.get(i..)?;
    if !(rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA")) {
        return None;
    }
    let end = run_end_max(v, i + 4, UPPER | DIGIT, 17);
    (end == i + 20 && !is(v, end, ALNUM)).then(|| span(i, end, Detector::AwsAccessKey))
}

/// Length of an AWS secret access key.
pub(super) const SECRET_LEN: usize = 40;
/// Class changes (upper/lower/digit/symbol) a random 40-character key has: about 25 on
/// average, 13 is four standard deviations below. Words, paths and identifiers have
/// far fewer.
const SECRET_MIN_CHANGES: usize = 13;

/// A secret-looking key starting at `i`: exactly 40 characters of the base64 alphabet
/// (an AWS secret access key's shape), mixing upper case, lower case and digits the way
/// random strings do. Hex digests (one case) and longer base64 blobs do not match.
pub(super) fn secret_key(v: &[u8], i: usize) -> Option<Span> {
    if prev(v, i).is_some_and(|b| class(b) & B64 != 0) {
        return None;
    }
    let end = run_end_max(v, i, B64, SECRET_LEN + 1);
    if end - i != SECRET_LEN || at(v, end) == Some(b'=') {
        return None;
    }
    let key = v.get(i..end)?;
    let kind = |b: u8| match class(b) & ALNUM {
        UPPER => 0u8,
        LOWER => 1,
        DIGIT => 2,
        _ => 3,
    };
    let mut seen = [false; 4];
    let mut changes = 0;
    let mut last = None;
    for &b in key {
        let k = kind(b);
        if let Some(slot) = seen.get_mut(usize::from(k)) {
            *slot = true;
        }
        if last.is_some_and(|l| l != k) {
            changes += 1;
        }
        last = Some(k);
    }
    let mixed = seen.get(..3).is_some_and(|s| s.iter().all(|&x| x));
    (mixed && changes >= SECRET_MIN_CHANGES).then(|| span(i, end, Detector::AwsAccessKey))
}

const GITHUB_PREFIXES: [&[u8]; 5] = [b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_"];
const GITHUB_PAT: &[u8] = b"github_pat_";

/// A GitHub token at word start `i`: `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and 30+
/// letters or digits (36 today), or a fine-grained `github_pat_` token.
pub(super) fn github_token(v: &[u8], i: usize) -> Option<Span> {
    if prev(v, i) == Some(b'_') {
        return None;
    }
    let rest = v.get(i..)?;
    let glued = |end: usize| is(v, end, ALNUM) || at(v, end) == Some(b'_');
    if rest.starts_with(GITHUB_PAT) {
        let from = i + GITHUB_PAT.len();
        let tail = v.get(from..).unwrap_or_default();
        let end = from
            + tail
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                .unwrap_or(tail.len());
        return (end - from >= 22 && !glued(end)).then(|| span(i, end, Detector::GithubToken));
    }
    if GITHUB_PREFIXES.iter().any(|p| rest.starts_with(p)) {
        let from = i + 4;
        let end = run_end(v, from, ALNUM);
        return (end - from >= 30 && !glued(end)).then(|| span(i, end, Detector::GithubToken));
    }
    None
}
