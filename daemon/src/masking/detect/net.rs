//! IPv4 and IPv6 addresses. Candidates are cut at word boundaries and validated with
//! std's parsers, so `1.2.3.4.5`, `999.1.1.1`, `12:30:45` and MAC addresses do not
//! match.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{ALNUM, Detector, HEX, IP6, Span, at, class, is, prev, run_end_max, span};

/// `255.255.255.255`
const MAX_V4: usize = 15;
/// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`
const MAX_V6: usize = 45;

/// An IPv4 address starting at word start `i` (a digit).
pub(super) fn ipv4(v: &[u8], i: usize) -> Option<Span> {
    // Not the tail of a dotted number or of a time (`12:15:00.123`).
    let glued = match prev(v, i) {
        Some(b'.' | b'_') => true,
        Some(b':') => i >= 2 && is(v, i - 2, super::DIGIT),
        _ => false,
    };
    if glued {
        return None;
    }
    let rest = v.get(i..).unwrap_or_default();
    let window = rest.get(..MAX_V4 + 2).unwrap_or(rest);
    let run = window
        .iter()
        .position(|&b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(window.len());
    if run > MAX_V4 + 1 {
        return None;
    }
    let mut end = i + run;
    if is(v, end, ALNUM) || at(v, end) == Some(b'_') {
        return None;
    }
    // A full stop after the address ends the sentence.
    if prev(v, end) == Some(b'.') {
        end -= 1;
    }
    let text = v.get(i..end)?;
    if text.iter().filter(|&&b| b == b'.').count() != 3 {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    text.parse::<Ipv4Addr>()
        .ok()
        .map(|_| span(i, end, Detector::Ipv4))
}

/// The IPv6 address whose first colon is at `c`, if any. Colons after the first in a
/// run are glued to what precedes them and rejected at once, so each run is scanned
/// forward once (and never further than an address can be long).
pub(super) fn ipv6_at_colon(v: &[u8], c: usize) -> Option<Span> {
    // `":"` in JSON, `key: value`: no hex digit or colon next to this one.
    let near = |b: Option<u8>| b.is_some_and(|b| b == b':' || class(b) & HEX != 0);
    if !near(prev(v, c)) && !near(at(v, c + 1)) {
        return None;
    }
    // An address starts with at most four hex digits before its first colon.
    let mut start = c;
    while c - start < 4 && start > 0 && is(v, start - 1, HEX) {
        start -= 1;
    }
    if prev(v, start).is_some_and(|b| class(b) & IP6 != 0 || b == b'_') {
        return None;
    }
    let end = run_end_max(v, start, IP6, MAX_V6 + 2);
    candidate(v, start, end)
}

fn candidate(v: &[u8], start: usize, mut end: usize) -> Option<Span> {
    if end - start > MAX_V6 + 1 {
        return None;
    }
    if prev(v, end) == Some(b'.') {
        end -= 1;
    }
    let text = v.get(start..end)?;
    // One pass for cheap shape checks before the parser: only hex digits, colons and
    // dots; eight groups (seven colons) or a `::`; dots only as an IPv4 tail (three,
    // after the last colon, which then needs six colons or a `::`).
    let (mut colons, mut dots, mut hex, mut compressed, mut dot_before_colon) =
        (0, 0, false, false, false);
    let mut last = 0u8;
    for &b in text {
        match b {
            b':' => {
                colons += 1;
                compressed |= last == b':';
                dot_before_colon |= dots > 0;
            }
            b'.' => dots += 1,
            _ if class(b) & HEX != 0 => hex = true,
            _ => return None,
        }
        last = b;
    }
    let shape = match dots {
        0 => compressed || colons == 7,
        3 => !dot_before_colon && (compressed || colons == 6),
        _ => false,
    };
    if colons < 2 || !hex || !shape {
        return None;
    }
    let parses = |t: &[u8]| {
        std::str::from_utf8(t)
            .ok()
            .is_some_and(|s| s.parse::<Ipv6Addr>().is_ok())
    };
    if parses(text) {
        return Some(span(start, end, Detector::Ipv6));
    }
    // `fe80::1:` at the end of a phrase: drop a lone trailing colon.
    let trimmed = text.strip_suffix(b":").filter(|t| !t.ends_with(b":"))?;
    parses(trimmed).then(|| span(start, end - 1, Detector::Ipv6))
}
