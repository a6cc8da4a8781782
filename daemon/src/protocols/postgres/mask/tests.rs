//! The in-place row path against the decoded one (decode, mask each value on its own,
//! encode), on generated rows: same bytes out, same counts.

use super::*;
use crate::masking::{DetectorSet, MaskProfile, MaskRule, StrategyKind, detect};
use crate::protocols::postgres::codec::FrameDecoder;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn rule(column: Option<&str>, detectors: Option<&[&str]>, strategy: StrategyKind) -> MaskRule {
    MaskRule {
        table: None,
        column: column.map(str::to_owned),
        detectors: detectors.map(|d| d.iter().map(|s| (*s).to_owned()).collect()),
        strategy,
        keep_last: None,
    }
}

fn masker() -> Arc<Masker> {
    let profile = MaskProfile {
        name: "pii".to_owned(),
        rule: vec![
            rule(Some("*email*"), None, StrategyKind::Hash),
            rule(Some("ssn"), None, StrategyKind::Partial),
            rule(Some("secret"), None, StrategyKind::Redact),
            rule(None, Some(&["credit_card"]), StrategyKind::Hash),
            rule(None, Some(&["*"]), StrategyKind::Redact),
        ],
    };
    match Masker::new(&profile, KEY) {
        Ok(masker) => Arc::new(masker),
        Err(e) => panic!("{e}"),
    }
}

fn column(name: &str, type_oid: u32, format: Format) -> Column {
    Column {
        name: name.to_owned(),
        table_oid: 16_384,
        type_oid,
        format,
    }
}

/// id int4, name text, email text, note text, ssn text, secret int8 (binary), n int8
/// (text), flag bool, raw bytea (binary), big int4 (binary).
fn columns() -> Vec<Column> {
    vec![
        column("id", 23, Format::Text),
        column("name", 25, Format::Text),
        column("email", 25, Format::Text),
        column("note", 25, Format::Text),
        column("ssn", 1043, Format::Text),
        column("secret", 20, Format::Binary),
        column("n", 20, Format::Text),
        column("flag", 16, Format::Text),
        column("raw", 17, Format::Binary),
        column("big", 23, Format::Binary),
    ]
}

const VALUES: &[&[u8]] = &[
    b"",
    b"42",
    b"-2147483648",
    b"4111111111111111",
    b"Jane Doe",
    b"jane.doe@example.com",
    b"paid with card 4111 1111 1111 1111, ref 3c59dc048e8850243be8079a5c74d079",
    b"call +1 415 555 2671 or mail x@y.org from 10.0.0.1",
    b"123-45-6789",
    b"AKIAIOSFODNN7EXAMPLE and wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    b"\xff\xfe latin1 \xe9 DE89370400440532013000",
    b"t",
    b"\x00\x00\x00\x07",
];

const INTEGERS: &[&[u8]] = &[b"0", b"42", b"-2147483648", b"2147483647", b"1234567890"];

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn frame_of(bytes: &[u8]) -> Frame {
    let mut buffer = BytesMut::from(bytes);
    match FrameDecoder::backend().decode(&mut buffer) {
        Ok(Some(frame)) => frame,
        other => panic!("not one frame: {other:?}"),
    }
}

fn row(values: &[Option<&[u8]>]) -> Frame {
    let mut bytes = BytesMut::new();
    if let Err(e) = encode_data_row(values, &mut bytes) {
        panic!("{e}");
    }
    frame_of(&bytes)
}

fn result_mask(tables: &[&str]) -> ResultMask {
    ResultMask {
        masker: masker(),
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
    }
}

#[test]
fn rows_masked_in_place_equal_rows_masked_through_the_codec() {
    let mut rng = Rng(15);
    let columns = columns();
    for (tables, known) in [(&[][..], true), (&["a", "b"][..], true), (&[][..], false)] {
        let mask = result_mask(tables);
        let known_columns = known.then_some(columns.as_slice());
        let mut fast = ActiveMask::new(&mask, known_columns);
        let mut oracle = ActiveMask::new(&mask, known_columns);
        for _ in 0..3_000 {
            // Mostly the announced width; sometimes more or fewer values.
            let width = match rng.below(10) {
                0 => rng.below(columns.len() + 3),
                _ => columns.len(),
            };
            // What the server sends for the type: int4 and bool text in `id` and
            // `flag`, anything in the others.
            let values: Vec<Option<&[u8]>> = (0..width)
                .map(|column| match (rng.below(8), column) {
                    (0, _) => None,
                    (_, 0) => INTEGERS.get(rng.below(INTEGERS.len())).copied(),
                    (_, 7) => Some(if rng.below(2) == 0 {
                        &b"t"[..]
                    } else {
                        &b"f"[..]
                    }),
                    _ => VALUES.get(rng.below(VALUES.len())).copied(),
                })
                .collect();
            let frame = row(&values);
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            let (ra, rb) = (
                fast.mask_row(&frame, &mut a),
                oracle.mask_row_decoded(&frame, &mut b),
            );
            assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
            assert_eq!(a, b, "row {values:?}");
        }
        assert_eq!(fast.counts(), oracle.counts());
        if known {
            assert!(fast.counts().0.values().sum::<u64>() > 0);
        }
    }
}

#[test]
fn a_result_with_nothing_to_mask_is_forwarded_untouched() {
    let mask = result_mask(&[]);
    // pgbench's `SELECT abalance`: an int4 in text, which no detector can match.
    let columns = [column("abalance", 23, Format::Text)];
    let mut active = ActiveMask::new(&mask, Some(&columns));
    assert!(active.forward_rows);
    let frame = row(&[Some(b"-4242")]);
    let mut out = BytesMut::new();
    assert!(active.mask_row(&frame, &mut out).is_ok());
    assert_eq!(&out[..], &frame.as_bytes()[..]);
    // The same column in binary is not text, so detectors do not apply either.
    let columns = [column("abalance", 23, Format::Binary)];
    assert!(ActiveMask::new(&mask, Some(&columns)).forward_rows);
    // A text column is scanned.
    let columns = [column("note", 25, Format::Text)];
    assert!(!ActiveMask::new(&mask, Some(&columns)).forward_rows);
}

#[test]
fn malformed_rows_are_reported_as_the_codec_reports_them() {
    let mask = result_mask(&[]);
    let columns = columns();
    let mut active = ActiveMask::new(&mask, Some(&columns));
    let good = row(&[Some(b"1"), Some(b"jane@example.com")]);
    let body = good.as_bytes()[5..].to_vec();
    let frame_with = |body: &[u8]| {
        let mut bytes = vec![b'D'];
        bytes.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        bytes.extend_from_slice(body);
        frame_of(&bytes)
    };
    let mut negative_count = body.clone();
    negative_count[0] = 0xff;
    let mut long_value = body.clone();
    long_value[2..6].copy_from_slice(&1_000i32.to_be_bytes());
    let mut bad_length = body.clone();
    bad_length[2..6].copy_from_slice(&(-2i32).to_be_bytes());
    let mut trailing = body.clone();
    trailing.push(0);
    for bad in [
        &body[..1],
        &body[..body.len() - 1],
        &negative_count[..],
        &long_value[..],
        &bad_length[..],
        &trailing[..],
    ] {
        let mut out = BytesMut::from(&b"kept"[..]);
        let result = active.mask_row(&frame_with(bad), &mut out);
        assert!(
            matches!(result, Err(ProxyError::ServerMessage(_))),
            "{result:?}"
        );
        assert_eq!(&out[..], b"kept");
    }
}

/// [`NO_MATCH_TYPES`]: the text of every int2, boundary int4/oid values and a sample
/// of the rest match no detector.
#[test]
fn no_detector_matches_small_integers() {
    let mut spans = Vec::new();
    let mut check = |text: &str| {
        spans.clear();
        spans.extend(detect::find(text.as_bytes(), DetectorSet::ALL));
        assert!(spans.is_empty(), "{text}: {spans:?}");
    };
    for n in i16::MIN..=i16::MAX {
        check(&n.to_string());
    }
    let mut rng = Rng(23);
    for _ in 0..200_000 {
        check(&(rng.next() as i32).to_string());
        check(&(rng.next() as u32).to_string());
    }
    for n in [
        i64::from(i32::MIN),
        -1_000_000_000,
        999_999_999,
        1_000_000_000,
    ]
    .into_iter()
    .chain([i64::from(i32::MAX), i64::from(u32::MAX), 4_111_111_111])
    {
        check(&n.to_string());
    }
    check("t");
    check("f");
}

/// [`take_data_rows`] writes what [`ActiveMask::mask_row`] writes row by row, and stops
/// at the first frame it must leave to the decoder.
#[test]
fn runs_of_rows_are_taken_as_row_by_row() {
    let mut rng = Rng(7);
    let columns = columns();
    let mask = result_mask(&[]);
    let int_only = [column("abalance", 23, Format::Text)];
    for (masked, width) in [
        (None, columns.len()),
        (Some(Some(&columns[..])), columns.len()),
        (Some(None), columns.len()),
        (Some(Some(&int_only[..])), 1),
    ] {
        let rows: Vec<Frame> = (0..200)
            .map(|_| {
                let values: Vec<Option<&[u8]>> = (0..width)
                    .map(|_| match rng.below(8) {
                        0 => None,
                        _ => VALUES.get(rng.below(VALUES.len())).copied(),
                    })
                    .collect();
                row(&values)
            })
            .collect();
        let mut expected = BytesMut::new();
        let mut oracle = masked.map(|known| ActiveMask::new(&mask, known));
        for frame in &rows {
            match &mut oracle {
                Some(active) => {
                    assert!(active.mask_row(frame, &mut expected).is_ok());
                }
                None => expected.extend_from_slice(frame.as_bytes()),
            }
        }
        // The rows, then what ends the run: a CommandComplete and a partial row.
        let mut buffer = BytesMut::new();
        for frame in &rows {
            buffer.extend_from_slice(frame.as_bytes());
        }
        let after = b"C\x00\x00\x00\x0dSELECT 200\x00D\x00\x00";
        buffer.extend_from_slice(after);
        let mut active = masked.map(|known| ActiveMask::new(&mask, known));
        let mut out = BytesMut::from(&b"head"[..]);
        let taken = take_data_rows(&mut buffer, active.as_mut(), 1 << 20, &mut out);
        assert_eq!(taken, 200);
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &expected[..]);
        assert_eq!(&buffer[..], &after[..]);
        if let (Some(a), Some(b)) = (&active, &oracle) {
            assert_eq!(a.counts(), b.counts());
        }
    }
}

/// A malformed row, an oversized length or a partial row ends the run before it, with
/// nothing of it written.
#[test]
fn a_run_stops_before_what_it_cannot_take() {
    let columns = columns();
    let mask = result_mask(&[]);
    let good = row(&[Some(b"1"), Some(b"jane@example.com")]);
    let mut malformed = good.as_bytes().to_vec();
    malformed.push(0);
    let len = (malformed.len() - 1) as i32;
    malformed[1..5].copy_from_slice(&len.to_be_bytes());
    let mut negative = good.as_bytes().to_vec();
    negative[1..5].copy_from_slice(&(-1i32).to_be_bytes());
    let mut short = good.as_bytes().to_vec();
    short[1..5].copy_from_slice(&3i32.to_be_bytes());
    let partial = &good.as_bytes()[..good.len() - 1];
    for (bad, masked_only) in [
        (&malformed[..], true),
        (&negative[..], false),
        (&short[..], false),
        (partial, false),
    ] {
        for masked in [false, true] {
            let mut buffer = BytesMut::from(good.as_bytes().as_ref());
            buffer.extend_from_slice(bad);
            let mut active = masked.then(|| ActiveMask::new(&mask, Some(&columns)));
            let mut out = BytesMut::new();
            let taken = take_data_rows(&mut buffer, active.as_mut(), 1 << 20, &mut out);
            if masked || !masked_only {
                assert_eq!(taken, 1, "{bad:?}");
                assert_eq!(&buffer[..], bad);
            } else {
                // Unmasked, a malformed body is relayed like any other.
                assert_eq!(taken, 2);
            }
        }
    }
    // Over the limit.
    let mut buffer = BytesMut::from(good.as_bytes().as_ref());
    let mut out = BytesMut::new();
    assert_eq!(
        take_data_rows(&mut buffer, None, good.len() - 2, &mut out),
        0
    );
    assert_eq!(&buffer[..], &good.as_bytes()[..]);
    assert!(out.is_empty());
}
