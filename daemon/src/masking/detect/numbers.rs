//! Digit-group detectors: payment card numbers (Luhn), US social security numbers and
//! phone numbers.
//!
//! All three are runs of digit groups with separators, so one parser reads the groups
//! that follow a word start (at most 19 digits' worth) and the candidates are tried
//! longest first. Groups joined by `-` or `.` belong together: a candidate may only
//! start or end where the neighbouring character is not glued to it (so the `2023` of
//! `ORD-2023-...` and the `12` of `12:30` never start or end a match).

use super::{ALNUM, DIGIT, Detector, DetectorSet, Span, at, class, is, prev, run_end_max, span};

/// More digits than any card (19) or phone number (15) has.
const MAX_DIGITS: usize = 19;
const MAX_GROUPS: usize = 20;

#[derive(Clone, Copy, Default)]
struct Group {
    start: usize,
    end: usize,
}

impl Group {
    fn len(self) -> usize {
        self.end - self.start
    }
}

/// Separators between digit groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Sep {
    #[default]
    Space,
    Dash,
    Dot,
    /// `)`, `) ` or `)-`: closes an area code.
    Close,
    /// ` (`: opens an area code after a country code.
    Open,
}

/// The separator at `p` and its length, if a digit follows it.
fn separator(v: &[u8], p: usize) -> Option<(Sep, usize)> {
    let (sep, len) = match (at(v, p), at(v, p + 1)) {
        (Some(b')'), Some(b' ' | b'-')) => (Sep::Close, 2),
        (Some(b')'), _) => (Sep::Close, 1),
        (Some(b' '), Some(b'(')) => (Sep::Open, 2),
        (Some(b' '), _) => (Sep::Space, 1),
        (Some(b'-'), _) => (Sep::Dash, 1),
        (Some(b'.'), _) => (Sep::Dot, 1),
        _ => return None,
    };
    is(v, p + len, DIGIT).then_some((sep, len))
}

/// May a match start at `pos`? Not if the byte before is part of a word, or a `-./+`
/// (or a `:` after a digit) glued to one.
fn left_ok(v: &[u8], pos: usize) -> bool {
    let before = pos.checked_sub(2);
    match prev(v, pos) {
        None => true,
        Some(b) if class(b) & ALNUM != 0 || b == b'_' => false,
        Some(b'-' | b'.' | b'/' | b'+') => !before.is_some_and(|j| is(v, j, ALNUM)),
        Some(b':') => !before.is_some_and(|j| is(v, j, DIGIT)),
        Some(_) => true,
    }
}

/// May a match end at `pos` (exclusive)? The mirror image of [`left_ok`].
fn right_ok(v: &[u8], pos: usize) -> bool {
    match at(v, pos) {
        None => true,
        Some(b) if class(b) & ALNUM != 0 || b == b'_' => false,
        Some(b'-' | b'.' | b'/' | b'+') => !is(v, pos + 1, ALNUM),
        Some(b':') => !is(v, pos + 1, DIGIT),
        Some(_) => true,
    }
}

/// A card number, SSN or phone number starting with the digit at word start `i`.
pub(super) fn at_digit(v: &[u8], i: usize, set: DetectorSet) -> Option<Span> {
    let before = prev(v, i);
    let plus = before == Some(b'+') && left_ok(v, i.saturating_sub(1));
    let paren = before == Some(b'(');
    if !plus && !left_ok(v, i) {
        return None;
    }

    if is_date(v, i) || !enough_digits(v, i) {
        return None;
    }
    let mut groups = [Group::default(); MAX_GROUPS];
    let mut seps = [Sep::default(); MAX_GROUPS];
    let mut count = 0;
    let mut digits = 0;
    let mut p = i;
    while count < MAX_GROUPS {
        let end = run_end_max(v, p, DIGIT, MAX_DIGITS + 1);
        if let Some(g) = groups.get_mut(count) {
            *g = Group { start: p, end };
        }
        count += 1;
        digits += end - p;
        if digits > MAX_DIGITS {
            break;
        }
        match separator(v, end) {
            Some((sep, len)) => {
                if let Some(s) = seps.get_mut(count - 1) {
                    *s = sep;
                }
                p = end + len;
            }
            None => break,
        }
    }

    let candidate = Candidate {
        v,
        plus,
        paren,
        set,
    };
    for last in (0..count).rev() {
        let (Some(groups), Some(seps), Some(end)) = (
            groups.get(..=last),
            seps.get(..last),
            groups.get(last).map(|g| g.end),
        ) else {
            continue;
        };
        if !right_ok(v, end) {
            continue;
        }
        if let Some((detector, start)) = candidate.classify(groups, seps) {
            return Some(span(
                if start { i.saturating_sub(1) } else { i },
                end,
                detector,
            ));
        }
    }
    None
}

/// `YYYY-MM-DD` (or with dots): the most common digit groups in rows, and never a
/// card, SSN or phone number.
fn is_date(v: &[u8], i: usize) -> bool {
    let d = |k: usize| is(v, i + k, DIGIT);
    let sep = at(v, i + 4);
    d(0) && d(1)
        && d(2)
        && d(3)
        && matches!(sep, Some(b'-' | b'.'))
        && d(5)
        && d(6)
        && at(v, i + 7) == sep
        && d(8)
        && d(9)
        && !is(v, i + 10, DIGIT)
}

/// Does the token at `i` have the 9 digits the shortest candidate (an SSN) needs?
/// Most numbers (ids, amounts, times) do not, and leave here cheaply.
fn enough_digits(v: &[u8], i: usize) -> bool {
    let mut digits = 0;
    let mut p = i;
    for _ in 0..MAX_GROUPS {
        let end = run_end_max(v, p, DIGIT, MAX_DIGITS + 1);
        digits += end - p;
        if digits >= 9 {
            return true;
        }
        match separator(v, end) {
            Some((_, len)) => p = end + len,
            None => return false,
        }
    }
    false
}

struct Candidate<'v> {
    v: &'v [u8],
    plus: bool,
    paren: bool,
    set: DetectorSet,
}

impl Candidate<'_> {
    /// What `groups` (joined by `seps`) is, and whether the match includes the `+` or
    /// `(` before the first group.
    fn classify(&self, groups: &[Group], seps: &[Sep]) -> Option<(Detector, bool)> {
        let digits: usize = groups.iter().map(|g| g.len()).sum();
        // By length alone: an SSN has 9 digits, a card 13-19, a phone number 10-15
        // with `+` and 10-11 without.
        let possible = if self.plus {
            (10..=15).contains(&digits)
        } else {
            digits == 9 || (10..=11).contains(&digits) || (13..=MAX_DIGITS).contains(&digits)
        };
        if !possible {
            return None;
        }
        let mut buf = [0u8; MAX_DIGITS];
        let mut n = 0;
        for g in groups {
            for &d in self.v.get(g.start..g.end).unwrap_or_default() {
                if let Some(slot) = buf.get_mut(n) {
                    *slot = d - b'0';
                    n += 1;
                }
            }
        }
        let digit_values = buf.get(..n).unwrap_or_default();

        if !self.plus {
            if self.set.contains(Detector::UsSsn) && is_ssn(groups, seps, digit_values) {
                return Some((Detector::UsSsn, false));
            }
            if self.set.contains(Detector::CreditCard) && is_card(groups, seps, digit_values) {
                return Some((Detector::CreditCard, false));
            }
        }
        if self.set.contains(Detector::Phone) {
            return self.phone(groups, seps, digit_values);
        }
        None
    }

    fn phone(&self, groups: &[Group], seps: &[Sep], digits: &[u8]) -> Option<(Detector, bool)> {
        if self.plus {
            // E.164: up to 15 digits, no leading zero; any of our separators.
            let ok = (10..=15).contains(&digits.len()) && digits.first() != Some(&0);
            return ok.then_some((Detector::Phone, true));
        }
        if !(10..=11).contains(&digits.len()) || groups.len() < 3 {
            return None;
        }
        let lens = || groups.iter().map(|g| g.len());
        // Groups of up to four digits; the last has three or more, except in the
        // all-pairs form (`06 12 34 56 78`).
        let last_ok = groups.last().is_some_and(|g| g.len() >= 3) || lens().all(|l| l <= 2);
        if lens().any(|l| l > 4) || !last_ok {
            return None;
        }
        // `(555) 123-4567`: the first separator closes the area code.
        let paren_form = self.paren && seps.first() == Some(&Sep::Close);
        let rest = if paren_form {
            seps.get(1..).unwrap_or_default()
        } else {
            seps
        };
        // The other separators are all the same: `555-123 4567` or a date followed by
        // a number (`2023-10-15 1234`) are not phone numbers.
        let first = rest.first().copied();
        if !rest.iter().all(|s| Some(*s) == first) || matches!(first, Some(Sep::Close | Sep::Open))
        {
            return None;
        }
        // `1 234 567 890` is a number with thousands separators.
        if lens().skip(1).all(|l| l == 3) {
            return None;
        }
        // Four dotted groups of up to three digits are IPv4-shaped.
        if first == Some(Sep::Dot) && groups.len() == 4 && lens().all(|l| l <= 3) {
            return None;
        }
        Some((Detector::Phone, paren_form))
    }
}

fn is_ssn(groups: &[Group], seps: &[Sep], digits: &[u8]) -> bool {
    let shape = groups.len() == 3
        && groups.iter().map(|g| g.len()).eq([3, 2, 4])
        && matches!(seps, [Sep::Dash, Sep::Dash] | [Sep::Space, Sep::Space]);
    if !shape {
        return false;
    }
    let number = |range: std::ops::Range<usize>| {
        digits
            .get(range)
            .unwrap_or_default()
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let (area, group, serial) = (number(0..3), number(3..5), number(5..9));
    // Never issued: area 000, 666 and 900-999, group 00, serial 0000.
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn is_card(groups: &[Group], seps: &[Sep], digits: &[u8]) -> bool {
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == 0) {
        return false;
    }
    // One run of digits, or groups of 3+ digits with one kind of separator.
    let grouped = match seps.first() {
        None => true,
        Some(first) => {
            matches!(first, Sep::Space | Sep::Dash)
                && seps.iter().all(|s| s == first)
                && groups.iter().all(|g| g.len() >= 3)
        }
    };
    grouped && luhn(digits)
}

/// The Luhn checksum: doubling every second digit from the right, the sum is a
/// multiple of 10.
pub(super) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &d)| {
            let d = u32::from(d);
            if k % 2 == 1 {
                let twice = d * 2;
                if twice > 9 { twice - 9 } else { twice }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}
