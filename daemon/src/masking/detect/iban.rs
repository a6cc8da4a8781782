//! IBANs: two-letter country code, two check digits, up to 30 letters and digits,
//! written compact (`DE89370400440532013000`) or in groups of four
//! (`DE89 3704 0044 0532 0130 00`). Verified by the ISO 13616 mod-97 checksum, which
//! rejects all but about 1% of look-alikes.

use super::{ALNUM, DIGIT, Detector, Span, UPPER, at, is, run_end_max, span};

const MIN_LEN: usize = 15;
const MAX_LEN: usize = 34;

/// An IBAN starting at word start `i` (an uppercase letter).
pub(super) fn at_upper(v: &[u8], i: usize) -> Option<Span> {
    let shape =
        is(v, i, UPPER) && is(v, i + 1, UPPER) && is(v, i + 2, DIGIT) && is(v, i + 3, DIGIT);
    if !shape {
        return None;
    }
    let end = run_end_max(v, i, UPPER | DIGIT, MAX_LEN + 1);
    let len = end - i;
    if (MIN_LEN..=MAX_LEN).contains(&len) && !is(v, end, ALNUM) && valid(v, i, end) {
        return Some(span(i, end, Detector::Iban));
    }
    if len != 4 {
        return None;
    }
    // Groups of four separated by single spaces; the last may be shorter.
    let mut ends = [(0usize, 0usize); MAX_LEN / 4 + 1];
    let mut count = 0;
    let mut total = 4;
    let mut p = end;
    while at(v, p) == Some(b' ') {
        let group_end = run_end_max(v, p + 1, UPPER | DIGIT, 5);
        let group = group_end - (p + 1);
        if group == 0 || group > 4 || total + group > MAX_LEN || is(v, group_end, ALNUM) {
            break;
        }
        total += group;
        p = group_end;
        if let Some(slot) = ends.get_mut(count) {
            *slot = (p, total);
            count += 1;
        }
        if group < 4 {
            break;
        }
    }
    ends.get(..count)
        .unwrap_or_default()
        .iter()
        .rev()
        .find(|&&(end, total)| total >= MIN_LEN && valid(v, i, end))
        .map(|&(end, _)| span(i, end, Detector::Iban))
}

/// The mod-97 check of the IBAN in `v[start..end]` (spaces ignored): moved to the back,
/// the first four characters included, with letters as 10..35, the number is 1 mod 97.
fn valid(v: &[u8], start: usize, end: usize) -> bool {
    let mut chars = [0u8; MAX_LEN];
    let mut n = 0;
    for &b in v.get(start..end).unwrap_or_default() {
        if b == b' ' {
            continue;
        }
        match chars.get_mut(n) {
            Some(slot) => *slot = b,
            None => return false,
        }
        n += 1;
    }
    let Some(chars) = chars.get(..n) else {
        return false;
    };
    // Check digits 00, 01 and 99 are never issued.
    let check = chars.get(2..4).unwrap_or_default();
    if matches!(check, b"00" | b"01" | b"99") {
        return false;
    }
    let (head, tail) = chars.split_at(4.min(chars.len()));
    let remainder = tail.iter().chain(head).fold(0u32, |r, &c| {
        if c.is_ascii_digit() {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c.saturating_sub(b'A')) + 10) % 97
        }
    });
    remainder == 1
}
