//! Value-based detectors: find sensitive spans inside a value whatever its column is
//! called.
//!
//! Column rules only help when the schema names things honestly; free-text columns,
//! JSON blobs and `SELECT notes || ' ' || email` do not. Detectors look at the bytes.
//!
//! All patterns are ASCII, so the scan works on bytes: a value that is not valid UTF-8
//! (a `LATIN1` client encoding, say) is scanned like any other and can never make a
//! detector panic; non-ASCII bytes simply never belong to a match. One forward pass
//! visits each word start once and dispatches on its first byte; every detector's work
//! at a position is bounded or skipped past afterwards, so a scan is linear in the value
//! and allocates nothing unless something matches.

mod email;
mod iban;
mod net;
mod numbers;
mod secrets;

use std::ops::Range;

/// A kind of sensitive value. Names are stable: they appear in policies and records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    Email,
    CreditCard,
    UsSsn,
    Iban,
    Phone,
    Jwt,
    AwsAccessKey,
    GithubToken,
    PrivateKey,
    Ipv4,
    Ipv6,
}

impl Detector {
    /// Every detector, in a fixed order.
    pub const ALL: [Detector; 11] = [
        Detector::Email,
        Detector::CreditCard,
        Detector::UsSsn,
        Detector::Iban,
        Detector::Phone,
        Detector::Jwt,
        Detector::AwsAccessKey,
        Detector::GithubToken,
        Detector::PrivateKey,
        Detector::Ipv4,
        Detector::Ipv6,
    ];

    /// The stable name used in policies and records.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::UsSsn => "us_ssn",
            Detector::Iban => "iban",
            Detector::Phone => "phone",
            Detector::Jwt => "jwt",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::GithubToken => "github_token",
            Detector::PrivateKey => "private_key",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
        }
    }

    /// The detector called `name`, if any.
    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    /// What `redact` writes in place of a match: `[EMAIL]`, `[CREDIT_CARD]`, ...
    pub fn marker(self) -> &'static str {
        match self {
            Detector::Email => "[EMAIL]",
            Detector::CreditCard => "[CREDIT_CARD]",
            Detector::UsSsn => "[US_SSN]",
            Detector::Iban => "[IBAN]",
            Detector::Phone => "[PHONE]",
            Detector::Jwt => "[JWT]",
            Detector::AwsAccessKey => "[AWS_ACCESS_KEY]",
            Detector::GithubToken => "[GITHUB_TOKEN]",
            Detector::PrivateKey => "[PRIVATE_KEY]",
            Detector::Ipv4 => "[IPV4]",
            Detector::Ipv6 => "[IPV6]",
        }
    }

    /// Position in [`Detector::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of detectors (a bit set; copying it is free).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DetectorSet(u16);

impl DetectorSet {
    pub const EMPTY: DetectorSet = DetectorSet(0);
    pub const ALL: DetectorSet = DetectorSet((1 << Detector::ALL.len()) - 1);

    pub fn contains(self, detector: Detector) -> bool {
        self.0 & detector.bit() != 0
    }

    pub fn insert(&mut self, detector: Detector) {
        self.0 |= detector.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Detector> {
        Detector::ALL.into_iter().filter(move |d| self.contains(*d))
    }

    fn any(self, of: &[Detector]) -> bool {
        of.iter().any(|d| self.contains(*d))
    }
}

impl FromIterator<Detector> for DetectorSet {
    fn from_iter<I: IntoIterator<Item = Detector>>(iter: I) -> Self {
        let mut set = DetectorSet::EMPTY;
        for d in iter {
            set.insert(d);
        }
        set
    }
}

/// A match: the byte range `start..end` of the value is a `detector` hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

impl Span {
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// Finds the spans of `value` that the detectors in `set` match: sorted, and merged
/// where they overlap (see [`merge`]). Allocates only when something matches.
pub fn find(value: &[u8], set: DetectorSet) -> Vec<Span> {
    let mut spans = Vec::new();
    scan(value, set, &mut spans);
    merge(&mut spans);
    spans
}

/// Sorts `spans` and merges overlapping ones. A merged span keeps the detector of the
/// span that starts first (the longest one on a tie), so a JWT that happens to
/// contain a key-like substring stays one `jwt` span.
pub fn merge(spans: &mut Vec<Span>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut kept = 0;
    for i in 1..spans.len() {
        let (Some(&next), Some(current)) = (spans.get(i), spans.get(kept)) else {
            break;
        };
        if next.start < current.end {
            let end = current.end.max(next.end);
            if let Some(current) = spans.get_mut(kept) {
                current.end = end;
            }
        } else {
            kept += 1;
            if let Some(slot) = spans.get_mut(kept) {
                *slot = next;
            }
        }
    }
    spans.truncate(kept + 1);
}

/// Appends the raw (unsorted, possibly overlapping) matches of `set` in `value` to
/// `out`.
pub(crate) fn scan(value: &[u8], set: DetectorSet, out: &mut Vec<Span>) {
    if set.is_empty() {
        return;
    }
    let v = value;
    let numbers = set.any(&[Detector::CreditCard, Detector::UsSsn, Detector::Phone]);
    let mut i = 0;
    // Whether `v[i]` follows a non-alphanumeric byte (or starts the value).
    let mut after_gap = true;
    while let Some(&b) = v.get(i) {
        let kind = class(b);
        if kind & ALNUM == 0 {
            // Detectors anchored on punctuation.
            let hit = match b {
                b'@' if set.contains(Detector::Email) => email::at_sign(v, i),
                b'-' if set.contains(Detector::PrivateKey) => secrets::pem_block(v, i),
                b':' if set.contains(Detector::Ipv6) => net::ipv6_at_colon(v, i),
                b'/' | b'+' if set.contains(Detector::AwsAccessKey) => secrets::secret_key(v, i),
                _ => None,
            };
            i = match hit {
                Some(span) => {
                    let next = span.end.max(i + 1);
                    out.push(span);
                    after_gap = !is(v, next - 1, ALNUM);
                    next
                }
                None => {
                    after_gap = true;
                    i + 1
                }
            };
            continue;
        }
        let word_end = word_end(v, i);
        let mut next = word_end;
        if after_gap {
            // Digits glued to a letter (`3c59dc04...`, `12th`) end no number and no
            // address: both need a non-alphanumeric byte after their last digit.
            let glued_digits = kind & DIGIT != 0
                && v.get(i..word_end)
                    .is_some_and(|word| word.iter().any(|&b| class(b) & DIGIT == 0));
            let hit = if glued_digits {
                None
            } else if kind & DIGIT != 0 {
                // An IPv4 address starts with 1-3 digits and a dot.
                let ip = if set.contains(Detector::Ipv4)
                    && word_end - i <= 3
                    && at(v, word_end) == Some(b'.')
                    && is(v, word_end + 1, DIGIT)
                {
                    net::ipv4(v, i)
                } else {
                    None
                };
                ip.or_else(|| numbers.then(|| numbers::at_digit(v, i, set)).flatten())
            } else if kind & UPPER != 0 {
                let iban = if set.contains(Detector::Iban) {
                    iban::at_upper(v, i)
                } else {
                    None
                };
                iban.or_else(|| {
                    set.contains(Detector::AwsAccessKey)
                        .then(|| secrets::aws_key_id(v, i))
                        .flatten()
                })
            } else if b == b'e' && set.contains(Detector::Jwt) {
                secrets::jwt(v, i)
            } else if b == b'g' && set.contains(Detector::GithubToken) {
                secrets::github_token(v, i)
            } else {
                None
            };
            // A 40-character secret is this word alone or continues with `+` or `/`.
            let secret_shaped = match (word_end - i).cmp(&secrets::SECRET_LEN) {
                std::cmp::Ordering::Less => matches!(at(v, word_end), Some(b'+' | b'/')),
                std::cmp::Ordering::Equal => !is(v, word_end, B64),
                std::cmp::Ordering::Greater => false,
            };
            let hit = hit.or_else(|| {
                (secret_shaped && set.contains(Detector::AwsAccessKey))
                    .then(|| secrets::secret_key(v, i))
                    .flatten()
            });
            if let Some(span) = hit {
                next = next.max(span.end);
                out.push(span);
            }
        }
        after_gap = !is(v, next - 1, ALNUM);
        i = next;
    }
}

// Byte classes, one table lookup per byte.

const DIGIT: u8 = 1;
const UPPER: u8 = 2;
const LOWER: u8 = 4;
const ALNUM: u8 = DIGIT | UPPER | LOWER;
/// Standard base64 alphabet without padding: alnum, `+`, `/`.
const B64: u8 = 8;
/// base64url alphabet: alnum, `-`, `_`.
const B64URL: u8 = 16;
const HEX: u8 = 32;
/// Characters of an e-mail address's local part (RFC 5322 atext and `.`).
const LOCAL: u8 = 64;
/// Characters of an IPv6 candidate run: alnum, `:` and `.`.
const IP6: u8 = 128;

static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut k = 0;
        if c.is_ascii_digit() {
            k |= DIGIT | HEX;
        }
        if c.is_ascii_uppercase() {
            k |= UPPER;
        }
        if c.is_ascii_lowercase() {
            k |= LOWER;
        }
        if matches!(c, b'a'..=b'f' | b'A'..=b'F') {
            k |= HEX;
        }
        if c.is_ascii_alphanumeric() {
            k |= B64 | B64URL | LOCAL | IP6;
        }
        if matches!(c, b'+' | b'/') {
            k |= B64;
        }
        if matches!(c, b'-' | b'_') {
            k |= B64URL;
        }
        if matches!(
            c,
            b'.' | b'!'
                | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
                | b'-'
        ) {
            k |= LOCAL;
        }
        if matches!(c, b':' | b'.') {
            k |= IP6;
        }
        t[b] = k;
        b += 1;
    }
    t
}

fn class(b: u8) -> u8 {
    CLASSES[usize::from(b)]
}

fn is(v: &[u8], i: usize, mask: u8) -> bool {
    v.get(i).is_some_and(|&b| class(b) & mask != 0)
}

fn prev(v: &[u8], i: usize) -> Option<u8> {
    i.checked_sub(1).and_then(|j| v.get(j).copied())
}

fn at(v: &[u8], i: usize) -> Option<u8> {
    v.get(i).copied()
}

/// The first index at or after `from` whose byte is not in `mask` (or the length).
fn run_end(v: &[u8], from: usize, mask: u8) -> usize {
    let rest = v.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .position(|&b| class(b) & mask == 0)
        .unwrap_or(rest.len())
}

/// [`run_end`] for [`ALNUM`], eight bytes at a time: the end of the word at `from`.
///
/// The scan ends every word here, and most words are shorter than eight bytes, so
/// one step usually finds the end without a per-byte loop (and its mispredicted exit).
fn word_end(v: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(chunk) = v.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        let outside = non_alnum(u64::from_le_bytes(chunk));
        if outside != 0 {
            return i + (outside.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    run_end(v, i, ALNUM)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is not an ASCII letter or digit.
fn non_alnum(x: u64) -> u64 {
    let ascii = x & !HIGH;
    // Per byte, `b + (0x80 - k)` sets the high bit exactly when `b >= k`: bytes are at
    // most 0x7f here, so no sum carries into the next byte.
    let at_least = |y: u64, k: u8| y.wrapping_add(ONES * u64::from(0x80 - k)) & HIGH;
    let digit = at_least(ascii, b'0') & !at_least(ascii, b'9' + 1);
    // Upper case folds onto lower case; what else folds lands outside `a..=z`.
    let folded = ascii | (ONES * 0x20);
    let letter = at_least(folded, b'a') & !at_least(folded, b'z' + 1);
    !(digit | letter) & HIGH | (x & HIGH)
}

/// Like [`run_end`] but stops looking after `limit` bytes.
fn run_end_max(v: &[u8], from: usize, mask: u8, limit: usize) -> usize {
    let rest = v.get(from..).unwrap_or_default();
    let rest = rest.get(..limit).unwrap_or(rest);
    from + rest
        .iter()
        .position(|&b| class(b) & mask == 0)
        .unwrap_or(rest.len())
}

fn span(start: usize, end: usize, detector: Detector) -> Span {
    Span {
        start,
        end,
        detector,
    }
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
