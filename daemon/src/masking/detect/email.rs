//! E-mail addresses, found from their `@`: an RFC 5322 dot-atom local part (ASCII) and
//! a domain of at least two labels ending in an alphabetic top-level domain.

use super::{Detector, LOCAL, Span, at, is, prev, span};

const MAX_LOCAL: usize = 64;
const MAX_LABEL: usize = 63;
const MAX_DOMAIN: usize = 253;

/// The address around the `@` at `a`.
pub(super) fn at_sign(v: &[u8], a: usize) -> Option<Span> {
    let mut start = a;
    while a - start < MAX_LOCAL && start > 0 && is(v, start - 1, LOCAL) {
        start -= 1;
    }
    while start < a && at(v, start) == Some(b'.') {
        start += 1;
    }
    if start == a || prev(v, a) == Some(b'.') {
        return None;
    }

    let mut p = a + 1;
    let mut end = p;
    let mut labels = 0;
    let mut tld_alpha = false;
    loop {
        let rest = v.get(p..).unwrap_or_default();
        let window = rest.get(..=MAX_LABEL).unwrap_or(rest);
        let len = window
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-'))
            .unwrap_or(window.len());
        if len == 0 || len > MAX_LABEL {
            break;
        }
        labels += 1;
        end = p + len;
        tld_alpha = len >= 2 && window.iter().take(len).all(u8::is_ascii_alphabetic);
        if end - (a + 1) > MAX_DOMAIN {
            return None;
        }
        if at(v, end) == Some(b'.') && v.get(end + 1).is_some_and(u8::is_ascii_alphanumeric) {
            p = end + 1;
        } else {
            break;
        }
    }
    (labels >= 2 && tld_alpha).then(|| span(start, end, Detector::Email))
}
