//! The scan as it was before it was made faster (commit a19930b), kept as the tests'
//! oracle: the fast scan must find exactly the spans this one finds, in the same order.

use super::{
    ALNUM, B64, DIGIT, Detector, DetectorSet, Span, UPPER, at, class, email, iban, is, net,
    numbers, run_end, secrets,
};

/// Appends the raw (unsorted, possibly overlapping) matches of `set` in `value` to
/// `out`.
pub(super) fn scan(value: &[u8], set: DetectorSet, out: &mut Vec<Span>) {
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
        let word_end = run_end(v, i, ALNUM);
        let mut next = word_end;
        if after_gap {
            let hit = if kind & DIGIT != 0 {
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
