use super::*;

/// `(detector, matched text)` for every merged match of all detectors.
fn hits(text: &str) -> Vec<(&'static str, String)> {
    hits_bytes(text.as_bytes())
}

fn hits_bytes(value: &[u8]) -> Vec<(&'static str, String)> {
    find(value, DetectorSet::ALL)
        .into_iter()
        .map(|s| {
            let text = value.get(s.range()).unwrap_or_default();
            (
                s.detector.name(),
                String::from_utf8_lossy(text).into_owned(),
            )
        })
        .collect()
}

fn one(detector: &'static str, text: &str) -> Vec<(&'static str, String)> {
    vec![(detector, text.to_owned())]
}

#[track_caller]
fn assert_whole(detector: &'static str, text: &str) {
    assert_eq!(hits(text), one(detector, text), "{text:?}");
    // And inside text, between spaces and punctuation.
    for wrapped in [
        format!("before {text} after"),
        format!("({text})"),
        format!("x: {text}, y"),
        format!("\"{text}\""),
    ] {
        assert_eq!(hits(&wrapped), one(detector, text), "{wrapped:?}");
    }
}

#[track_caller]
fn assert_not(detector: &'static str, text: &str) {
    assert!(
        hits(text).iter().all(|(d, _)| *d != detector),
        "{text:?}: {:?}",
        hits(text)
    );
}

#[track_caller]
fn assert_none(text: &str) {
    assert_eq!(hits(text), vec![], "{text:?}");
}

#[test]
fn names_round_trip_and_are_stable() {
    let names: Vec<_> = Detector::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        [
            "email",
            "credit_card",
            "us_ssn",
            "iban",
            "phone",
            "jwt",
            "aws_access_key",
            "github_token",
            "private_key",
            "ipv4",
            "ipv6"
        ]
    );
    for d in Detector::ALL {
        assert_eq!(Detector::from_name(d.name()), Some(d));
        assert_eq!(Detector::ALL.get(d.index()), Some(&d));
    }
    assert_eq!(Detector::from_name("EMAIL"), None);
    assert_eq!(DetectorSet::ALL.iter().count(), Detector::ALL.len());
}

#[test]
fn emails() {
    for e in [
        "john.doe@example.com",
        "j+tag@mail.example.co.uk",
        "x_y-z@sub-domain.example.org",
        "A.B@EXAMPLE.COM",
    ] {
        assert_whole("email", e);
    }
    assert_eq!(
        hits("mailto:bob@example.com."),
        one("email", "bob@example.com")
    );
    assert_eq!(hits("<.bob@example.com>"), one("email", "bob@example.com"));
    for text in [
        "user@localhost",
        "@example.com",
        "bob@",
        "a@b",
        "bob@example.c0m",
        "bob.@example.com",
        "two @ signs",
        "price @ 5.00",
    ] {
        assert_none(text);
    }
}

#[test]
fn credit_cards_are_luhn_checked() {
    for card in [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "3782 822463 10005",
        "4222222222222",
    ] {
        assert_whole("credit_card", card);
    }
    // A 19-digit number with a valid check digit.
    let mut digits = b"623456789012345678".to_vec();
    let check = (0..10u8)
        .find(|c| {
            let mut d: Vec<u8> = digits.iter().map(|b| b - b'0').collect();
            d.push(*c);
            numbers::luhn(&d)
        })
        .map(|c| b'0' + c);
    digits.extend(check);
    assert_whole(
        "credit_card",
        std::str::from_utf8(&digits).unwrap_or_default(),
    );

    for text in [
        "4111111111111112",      // bad Luhn
        "4111 1111 1111 1112",   // bad Luhn, grouped
        "0000000000000000",      // all zeros passes Luhn, is no card
        "4111-1111 1111-1111",   // mixed separators
        "41111111111111111111",  // 20 digits
        "x4111111111111111",     // part of a word
        "4111111111111111x",     // part of a word
        "ID-4111111111111111-9", // glued by dashes
        "411111111111",          // 12 digits
    ] {
        assert_none(text);
    }
}

#[test]
fn us_ssns_exclude_never_issued_ranges() {
    for ssn in ["123-45-6789", "078-05-1120", "899-99-9999", "123 45 6789"] {
        assert_whole("us_ssn", ssn);
    }
    for text in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123-45-67890",
        "1234-45-6789",
        "123-456-789",
        "123-45 6789",
        "123456789",
        "A123-45-6789",
    ] {
        assert_not("us_ssn", text);
    }
}

#[test]
fn ibans_are_mod97_checked() {
    for iban in [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "DE89 3704 0044 0532 0130 00",
        "GB82 WEST 1234 5698 7654 32",
    ] {
        assert_whole("iban", iban);
    }
    // A spaced IBAN followed by another upper-case word.
    assert_eq!(
        hits("DE89 3704 0044 0532 0130 00 EUR"),
        one("iban", "DE89 3704 0044 0532 0130 00")
    );
    for text in [
        "DE89370400440532013001",
        "GB83WEST12345698765432",
        "DE89 3704 0044 0532 0130 01",
        "de89370400440532013000",
        "DE893704004405320130000000000000000000",
        "XDE89370400440532013000",
        "DE89",
        "AB12CD",
    ] {
        assert_not("iban", text);
    }
}

#[test]
fn phones_need_ten_digits_and_phone_like_separators() {
    for phone in [
        "+1 (555) 123-4567",
        "+14155552671",
        "+44 20 7946 0958",
        "+33 6 12 34 56 78",
        "+49-30-1234567",
        "(555) 123-4567",
        "(555)123-4567",
        "555-123-4567",
        "555.123.4567",
        "555 123 4567",
        "1-800-555-1234",
        "06 12 34 56 78",
        "020 7946 0958",
    ] {
        assert_whole("phone", phone);
    }
    assert_eq!(
        hits("call 555-123-4567 or 555-987-6543."),
        vec![
            ("phone", "555-123-4567".to_owned()),
            ("phone", "555-987-6543".to_owned())
        ]
    );
    assert_eq!(hits("tel:+14155552671"), one("phone", "+14155552671"));
    assert_eq!(hits("(555-123-4567)"), one("phone", "555-123-4567"));
    for text in [
        "5551234567",          // no separators: an id
        "order 1234567890",    // same
        "ORD-2023-000123",     // order numbers
        "INV-555-123-4567",    // glued to a word
        "2023-000123-4567",    // long groups
        "2023-10-15 12:30:45", // timestamps
        "2023-10-15 1234",     // date and a number
        "15.10.2023 12",       // date and a number
        "1 234 567 890",       // thousands separators
        "1.234.567.890",       // thousands separators
        "+0 5551234567",       // no country code 0
        "0044 0532 0130 01",   // short last group
        "555-123-4567-8",      // glued to more digits
        "12:30 555-1234",      // seven digits
        "a+14155552671",       // a formula, not a number
    ] {
        assert_none(text);
    }
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn jwts_need_a_header_with_alg() {
    assert_whole("jwt", JWT);
    assert_eq!(
        hits(&format!("Authorization: Bearer {JWT}")),
        one("jwt", JWT)
    );
    // alg none: empty signature.
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
    assert_eq!(hits(unsigned), one("jwt", unsigned));
    for text in [
        // {"foo":"bar"}: no alg.
        "eyJmb28iOiJiYXIifQ.eyJ4IjoxfQ.c2ln",
        // Header is not base64url JSON.
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
        "eyJhbGci$.eyJ4IjoxfQ.c2ln",
        "eyes.are.blue",
        // Five segments: a JWE or something else.
        &format!("{JWT}.abc.def"),
    ] {
        assert_none(text);
    }
}

#[test]
fn a_jwt_with_secret_looking_parts_is_one_jwt_span() {
    // Header {"alg":"HS256"}, payload holding an AWS key id and an e-mail address.
    let payload = "eyJrZXkiOiJBS0lBSU9TRk9ETk43RVhBTVBMRSIsIm1haWwiOiJhQGIuY29tIn0";
    let token = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.AKIAIOSFODNN7EXAMPLE-ghp_x");
    assert_eq!(hits(&format!("t={token};")), one("jwt", &token));
}

#[test]
fn aws_keys() {
    assert_whole("aws_access_key", "AKIAIOSFODNN7EXAMPLE");
    assert_whole("aws_access_key", "ASIAY34FZKBOKMUTVV7A");
    assert_whole("aws_access_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    assert_eq!(
        hits("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        one("aws_access_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    );
    for text in [
        "AKIAIOSFODNN7EXAMPL",
        "AKIAIOSFODNN7EXAMPLE1",
        "AKIAiosfodnn7example",
        "XAKIAIOSFODNN7EXAMPLE",
        // SHA-1 hex digests, upper and lower case.
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709",
        // Identifiers and paths of 40 characters.
        "getUserAccountSettingsForOrganization2024",
        "/home/user/Documents/Project2023/file12.t",
        // Longer base64.
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYwJalrXUtnFEMI",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY==",
    ] {
        assert_none(text);
    }
}

#[test]
fn github_tokens() {
    let classic = "ghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8";
    assert_whole("github_token", classic);
    for prefix in ["gho_", "ghu_", "ghs_", "ghr_"] {
        let t = format!("{prefix}{}", classic.get(4..).unwrap_or_default());
        assert_whole("github_token", &t);
    }
    let fine = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW";
    assert_whole("github_token", fine);
    for text in [
        "ghp_short",
        "ghx_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8",
        "xghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8",
        "github_pat_short",
    ] {
        assert_none(text);
    }
}

#[test]
fn private_key_blocks() {
    let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1x+abc/def\nAKIAIOSFODNN7EXAMPLE\n-----END RSA PRIVATE KEY-----";
    assert_eq!(
        hits(&format!("key:\n{block}\nrest")),
        one("private_key", block)
    );
    let openssh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----";
    assert_whole("private_key", openssh);
    // Truncated: masked to the end of the value.
    let cut = "x -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    assert_eq!(
        hits(cut),
        one("private_key", cut.get(2..).unwrap_or_default())
    );
    for text in [
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "----- BEGIN",
    ] {
        assert_none(text);
    }
}

#[test]
fn ip_addresses() {
    for ip in ["192.168.1.100", "10.0.0.1", "255.255.255.255", "0.0.0.0"] {
        assert_whole("ipv4", ip);
    }
    assert_eq!(hits("db at 10.0.0.1:5432."), one("ipv4", "10.0.0.1"));
    assert_eq!(hits("net 10.0.0.0/8"), one("ipv4", "10.0.0.0"));
    for ip in [
        "2001:db8::1",
        "::1",
        "fe80::1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "::ffff:192.0.2.1",
    ] {
        assert_whole("ipv6", ip);
    }
    assert_eq!(hits("[2001:db8::1]:8080"), one("ipv6", "2001:db8::1"));
    assert_eq!(hits("fe80::1%eth0"), one("ipv6", "fe80::1"));
    assert_eq!(hits("addr fe80::1."), one("ipv6", "fe80::1"));
    for text in [
        "1.2.3.4.5",
        "999.1.1.1",
        "1.2.3",
        "v1.2.3.4",
        "01.02.03.04",
        "12:30:45",
        "2023-10-15T12:30:45Z",
        "00:1a:2b:3c:4d:5e",
        "std::io::Error",
        "::",
        "a:b:c",
        "1:2:3:4:5:6:7:8:9",
    ] {
        assert_none(text);
    }
}

#[test]
fn several_matches_in_free_text() {
    let text = "Customer Jane (jane@example.com, +44 20 7946 0958) paid with \
                4111 1111 1111 1111 from DE89370400440532013000; SSN 123-45-6789, \
                last login from 192.168.1.100 and 2001:db8::1.";
    assert_eq!(
        hits(text),
        vec![
            ("email", "jane@example.com".to_owned()),
            ("phone", "+44 20 7946 0958".to_owned()),
            ("credit_card", "4111 1111 1111 1111".to_owned()),
            ("iban", "DE89370400440532013000".to_owned()),
            ("us_ssn", "123-45-6789".to_owned()),
            ("ipv4", "192.168.1.100".to_owned()),
            ("ipv6", "2001:db8::1".to_owned()),
        ]
    );
}

#[test]
fn ordinary_values_match_nothing() {
    for text in [
        "",
        "Jane Doe",
        "42",
        "-17.50",
        "1234567.89",
        "2024-02-29",
        "2024-02-29 23:59:59.123456+00",
        "550e8400-e29b-41d4-a716-446655440000",
        "The quick brown fox jumps over the lazy dog.",
        "{\"id\": 12345, \"status\": \"shipped\", \"items\": [1, 2, 3]}",
        "https://example.com/path?q=1&r=2#frag",
        "C:\\Program Files\\App\\app.exe",
        "SELECT * FROM orders WHERE id = 12345",
        "ORD-2023-000123",
        "v2.14.3",
    ] {
        assert_none(text);
    }
}

#[test]
fn non_utf8_values_never_panic_and_ascii_secrets_are_still_found() {
    // LATIN1 "é" around a card number and an e-mail address.
    let mut value = b"caf\xe9 4111111111111111 \xff\xfe bob@example.com \xe9".to_vec();
    assert_eq!(
        hits_bytes(&value),
        vec![
            ("credit_card", "4111111111111111".to_owned()),
            ("email", "bob@example.com".to_owned())
        ]
    );
    // Arbitrary bytes, including every byte value next to every trigger.
    for b in 0..=255u8 {
        for trigger in [
            &b"@"[..],
            b":",
            b"-----BEGIN ",
            b"ey",
            b"gh",
            b"A",
            b"1",
            b"+1",
        ] {
            value.clear();
            value.push(b);
            value.extend_from_slice(trigger);
            value.push(b);
            let _ = find(&value, DetectorSet::ALL);
        }
    }
}

#[test]
fn truncated_candidates_at_the_end_of_a_value() {
    for text in [
        "4111 1111 1111 111",
        "+1 (555",
        "DE89 3704",
        "eyJhbGciOiJIUzI1NiJ9.",
        "eyJhbGciOiJIUzI1NiJ9.e",
        "-----BEGIN RSA PRIV",
        "AKIA",
        "ghp_",
        "bob@",
        "fe80:",
        "1.2.3.",
        "123-45-",
    ] {
        for cut in 0..=text.len() {
            let _ = find(
                text.as_bytes().get(..cut).unwrap_or_default(),
                DetectorSet::ALL,
            );
        }
    }
}

#[test]
fn only_the_requested_detectors_run() {
    let text = "bob@example.com 4111111111111111 10.0.0.1";
    let email_only: DetectorSet = [Detector::Email].into_iter().collect();
    let spans = find(text.as_bytes(), email_only);
    assert_eq!(spans.len(), 1);
    assert!(spans.iter().all(|s| s.detector == Detector::Email));
    assert!(find(text.as_bytes(), DetectorSet::EMPTY).is_empty());
}

#[test]
fn merge_keeps_the_first_longest_span() {
    let mut spans = vec![
        span(10, 20, Detector::AwsAccessKey),
        span(0, 30, Detector::Jwt),
        span(25, 40, Detector::Email),
        span(50, 60, Detector::Ipv4),
    ];
    merge(&mut spans);
    assert_eq!(
        spans,
        vec![span(0, 40, Detector::Jwt), span(50, 60, Detector::Ipv4)]
    );
}

/// Hostile 1 MiB values: every candidate kind repeated, or long runs of trigger
/// characters. Quadratic behaviour would take minutes; linear takes milliseconds.
#[test]
fn huge_values_scan_in_linear_time() {
    const MIB: usize = 1 << 20;
    let patterns: [&[u8]; 14] = [
        b"a",
        b"1",
        b"1 ",
        b"1-",
        b"@",
        b"a@",
        b"a.",
        b":",
        b"a:",
        b"ey",
        b"eyJ.",
        b"-----BEGIN PRIVATE KEY-----",
        b"4111 1111 1111 1111 ",
        b"DE89 ",
    ];
    for pattern in patterns {
        let value: Vec<u8> = pattern.iter().copied().cycle().take(MIB).collect();
        let started = std::time::Instant::now();
        let spans = find(&value, DetectorSet::ALL);
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "{:?}: {elapsed:?}",
            String::from_utf8_lossy(pattern)
        );
        assert!(
            spans
                .windows(2)
                .all(|w| matches!(w, [a, b] if a.end <= b.start))
        );
    }
    // One huge candidate of each kind.
    let mut long_local = vec![b'a'; MIB];
    long_local.extend_from_slice(b"@example.com");
    let spans = find(&long_local, DetectorSet::ALL);
    assert_eq!(spans.len(), 1);
    let mut long_jwt = b"eyJhbGciOiJIUzI1NiJ9.".to_vec();
    long_jwt.extend(std::iter::repeat_n(b'x', MIB));
    long_jwt.extend_from_slice(b".sig");
    assert_eq!(find(&long_jwt, DetectorSet::ALL).len(), 1);
}

/// [`non_alnum`] agrees with the class table for every byte in every lane.
#[test]
fn the_word_end_bit_trick_matches_the_class_table() {
    for b in 0..=255u8 {
        for lane in 0..8 {
            let mut bytes = [b'a'; 8];
            if let Some(slot) = bytes.get_mut(lane) {
                *slot = b;
            }
            let mask = non_alnum(u64::from_le_bytes(bytes));
            let expected = if class(b) & ALNUM == 0 {
                0x80u64 << (8 * lane)
            } else {
                0
            };
            assert_eq!(mask, expected, "byte {b:#04x} in lane {lane}");
        }
    }
}

/// Pieces the generated values are made of: every detector's matches, near misses,
/// glue and noise.
const PIECES: &[&[u8]] = &[
    b"4111 1111 1111 1111",
    b"4111111111111111",
    b"4111-1111-1111-1111",
    b"4111111111111112",
    b"123-45-6789",
    b"123 45 6789",
    b"666-45-6789",
    b"+1 415 555 2671",
    b"+14155552671",
    b"(555) 123-4567",
    b"555-123-4567",
    b"06 12 34 56 78",
    b"2023-10-15",
    b"12:30:45",
    b"jane.doe+x@mail.example.com",
    b"user@localhost",
    b"@handle",
    b"DE89370400440532013000",
    b"DE89 3704 0044 0532 0130 00",
    b"GB82WEST12345698765432",
    b"AKIAIOSFODNN7EXAMPLE",
    b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    b"ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    b"github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    b"eyJ0eXAiOiJKV1QifQ.e30.",
    b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----",
    b"10.0.0.1",
    b"999.1.1.1",
    b"1.2.3.4.5",
    b"fe80::1",
    b"2001:db8::ff00:42:8329",
    b"::ffff:1.2.3.4",
    b"std::io",
    b"3c59dc048e8850243be8079a5c74d079",
    b"12th",
    b"1a.2.3.4",
    b"4111a",
    b"555x123-4567",
    b"Customer",
    b"paid with card",
    b"every",
    b"eyes",
    b"ghost",
    b"WINTER-2026",
    b"INV-4111111111111111",
    b"v1.2.3.4",
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123",
    b"\xff\xfe\xe9",
    b"\xc3\xa9t\xc3\xa9",
];

const GLUE: &[&[u8]] = &[
    b" ", b"", b", ", b".", b"-", b"/", b"+", b":", b"@", b"(", b")", b"\n", b"_", b"=", b"\"",
];

/// splitmix64, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from.get((self.next() % from.len() as u64) as usize)
            .copied()
            .unwrap_or_default()
    }
}

fn generated(rng: &mut Rng) -> Vec<u8> {
    let mut value = Vec::new();
    for _ in 0..(rng.next() % 12) {
        match rng.next() % 8 {
            // A random printable or arbitrary byte run.
            0 => value.extend((0..rng.next() % 50).map(|_| {
                let b = rng.next() as u8;
                if b.is_multiple_of(4) { b } else { b % 95 + 32 }
            })),
            // A piece with one byte changed.
            1 => {
                let mut piece = rng.pick(PIECES).to_vec();
                let len = piece.len().max(1) as u64;
                if let Some(b) = piece.get_mut((rng.next() % len) as usize) {
                    *b = rng.pick(&[b"0", b"a", b"A", b" ", b"-", b".", b":"])[0];
                }
                value.extend_from_slice(&piece);
            }
            _ => value.extend_from_slice(rng.pick(PIECES)),
        }
        value.extend_from_slice(rng.pick(GLUE));
    }
    value
}

/// The scan finds exactly what the scan before it found (`reference.rs`), in the same
/// order, for every detector set, on generated values.
#[test]
fn the_scan_finds_what_the_reference_scan_finds() {
    let mut rng = Rng(2026);
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    let mut found = 0usize;
    for round in 0..60_000 {
        let value = generated(&mut rng);
        let set = if round % 3 == 0 {
            DetectorSet((rng.next() & u64::from(DetectorSet::ALL.0)) as u16)
        } else {
            DetectorSet::ALL
        };
        fast.clear();
        slow.clear();
        scan(&value, set, &mut fast);
        reference::scan(&value, set, &mut slow);
        assert_eq!(
            fast,
            slow,
            "set {set:?}, value {:?}",
            String::from_utf8_lossy(&value)
        );
        found += fast.len();
    }
    // The generator does reach the detectors.
    assert!(found > 50_000, "{found}");
}
