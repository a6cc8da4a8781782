use std::time::Instant;

use super::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    mask: Vec<MaskProfile>,
}

fn profiles(toml_text: &str) -> Vec<MaskProfile> {
    match toml::from_str::<PolicyFile>(toml_text) {
        Ok(file) => file.mask,
        Err(e) => panic!("{e}"),
    }
}

fn masker(toml_text: &str) -> Masker {
    let profile = profiles(toml_text).into_iter().next();
    match profile.map(|p| Masker::new(&p, KEY)) {
        Some(Ok(m)) => m,
        other => panic!("{other:?}"),
    }
}

fn text_col(name: &str) -> ColumnInfo<'_> {
    ColumnInfo {
        name,
        table: None,
        text_like: true,
    }
}

/// The masked value as a string, `"<unchanged>"` or `"<null>"`.
fn masked(m: &Masker, plan: &ColumnPlan, column: usize, value: &str) -> String {
    match m.mask_value(plan, column, value.as_bytes()) {
        MaskOutcome::Unchanged => "<unchanged>".to_owned(),
        MaskOutcome::Nulled => "<null>".to_owned(),
        MaskOutcome::Masked { value, .. } => String::from_utf8_lossy(&value).into_owned(),
    }
}

const PII: &str = r#"
[[mask]]
name = "pii"

[[mask.rule]]
table = "customers"
column = "ssn"
strategy = "partial"
keep_last = 4

[[mask.rule]]
column = "*email*"
strategy = "hash"

[[mask.rule]]
column = "*secret*"
strategy = "redact"

[[mask.rule]]
detectors = ["credit_card", "email"]
strategy = "hash"

[[mask.rule]]
detectors = ["*"]
strategy = "redact"
"#;

#[test]
fn the_toml_shape() {
    let parsed = profiles(PII);
    let [profile] = parsed.as_slice() else {
        panic!("one profile expected");
    };
    assert_eq!(profile.name, "pii");
    assert_eq!(profile.rule.len(), 5);
    assert_eq!(
        profile.rule.first(),
        Some(&MaskRule {
            table: Some("customers".into()),
            column: Some("ssn".into()),
            detectors: None,
            strategy: StrategyKind::Partial,
            keep_last: Some(4),
        })
    );
    assert!(profile.check().is_ok());

    // Unknown keys and strategies are errors.
    for bad in [
        "[[mask]]\nname = \"x\"\ncolour = 1",
        "[[mask]]\nname = \"x\"\n[[mask.rule]]\ncolumn = \"a\"\nstrategy = \"hash\"\nextra = 1",
        "[[mask]]\nname = \"x\"\n[[mask.rule]]\ncolumn = \"a\"\nstrategy = \"shuffle\"",
        "[[mask]]\nname = \"x\"\n[[mask.rule]]\ncolumn = \"a\"",
    ] {
        assert!(toml::from_str::<PolicyFile>(bad).is_err(), "{bad}");
    }
}

#[test]
fn invalid_profiles_are_rejected_with_the_rule_number() {
    let rule = |extra: &str| {
        format!(
            "[[mask]]\nname = \"p\"\n[[mask.rule]]\ncolumn = \"a\"\nstrategy = \"redact\"\n[[mask.rule]]\n{extra}"
        )
    };
    let cases = [
        ("strategy = \"redact\"", RuleProblem::NoTarget),
        (
            "detectors = []\nstrategy = \"redact\"",
            RuleProblem::EmptyDetectors,
        ),
        (
            "detectors = [\"email\", \"passport\"]\nstrategy = \"redact\"",
            RuleProblem::UnknownDetector("passport".into()),
        ),
        (
            "column = \"\"\nstrategy = \"redact\"",
            RuleProblem::EmptyColumn,
        ),
        (
            "table = \" \"\nstrategy = \"redact\"",
            RuleProblem::BadTable(" ".into()),
        ),
        (
            "column = \"a\"\nstrategy = \"hash\"\nkeep_last = 2",
            RuleProblem::KeepLastWithoutPartial,
        ),
    ];
    for (extra, problem) in cases {
        let parsed = profiles(&rule(extra));
        let result = parsed.first().map(|p| Masker::new(p, KEY).map(drop));
        assert_eq!(
            result,
            Some(Err(MaskError::Rule {
                profile: "p".into(),
                rule: 2,
                problem
            })),
            "{extra}"
        );
    }
    let unnamed = MaskProfile {
        name: String::new(),
        rule: vec![],
    };
    assert_eq!(unnamed.check(), Err(MaskError::EmptyName));
}

#[test]
fn hashing_needs_a_real_key_and_other_strategies_need_none() {
    let parsed = profiles(PII);
    let Some(pii) = parsed.first() else {
        panic!("no profile");
    };
    assert!(matches!(
        Masker::new(pii, b"short"),
        Err(MaskError::KeyTooShort { len: 5, .. })
    ));
    let redact_only =
        profiles("[[mask]]\nname = \"r\"\n[[mask.rule]]\ncolumn = \"*\"\nstrategy = \"redact\"");
    assert!(
        redact_only
            .first()
            .is_some_and(|p| Masker::new(p, b"").is_ok())
    );
}

#[test]
fn plans_pick_column_rules_first_then_detectors() {
    let m = masker(PII);
    let columns = [
        ColumnInfo {
            name: "SSN",
            table: Some("public.Customers"),
            text_like: true,
        },
        ColumnInfo {
            name: "ssn",
            table: Some("employees"),
            text_like: true,
        },
        text_col("contact_email"),
        text_col("notes"),
        ColumnInfo {
            name: "api_secret",
            table: None,
            text_like: false,
        },
        ColumnInfo {
            name: "id",
            table: None,
            text_like: false,
        },
    ];
    let plan = m.plan(&columns);
    let actions: Vec<_> = (0..plan.len()).map(|c| plan.action(c)).collect();
    assert_eq!(
        actions,
        [
            ColumnAction::WholeValue,
            ColumnAction::Detectors,
            ColumnAction::WholeValue,
            ColumnAction::Detectors,
            ColumnAction::Null,
            ColumnAction::Keep,
        ]
    );
    assert!(plan.masks_anything());
    assert_eq!(plan.action(99), ColumnAction::Null);

    // Column rules mask the whole value.
    assert_eq!(masked(&m, &plan, 0, "123-45-6789"), "***-**-6789");
    assert_eq!(masked(&m, &plan, 4, "\x00\x01"), "<null>");
    assert_eq!(masked(&m, &plan, 5, "\x00\x01"), "<unchanged>");
    assert_eq!(masked(&m, &plan, 99, "x"), "<null>");
    let hashed = masked(&m, &plan, 2, "bob@example.com");
    assert!(hashed.starts_with(HASH_PREFIX), "{hashed}");
    assert_eq!(hashed.len(), HASH_PREFIX.len() + 2 * HASH_BYTES);

    // Detector rules mask spans; the first rule naming a detector sets its strategy.
    let note = "Ask bob@example.com (SSN 123-45-6789, card 4111 1111 1111 1111) - thanks";
    let out = masked(&m, &plan, 3, note);
    assert_eq!(
        out,
        format!(
            "Ask {hashed} (SSN [US_SSN], card {}) - thanks",
            masked(&m, &plan, 3, "4111 1111 1111 1111")
        )
    );
    assert_eq!(masked(&m, &plan, 3, "nothing to see"), "<unchanged>");

    // Counters: values masked per column.
    assert_eq!(plan.masked_counts(), [1, 0, 1, 2, 1, 0]);
    assert_eq!(plan.masked(99), 0);
}

#[test]
fn scoped_detector_rules_and_first_match_wins() {
    let m = masker(
        r#"
[[mask]]
name = "scoped"

[[mask.rule]]
column = "notes"
detectors = ["ipv4"]
strategy = "partial"
keep_last = 3

[[mask.rule]]
table = "audit"
detectors = ["ipv4", "email"]
strategy = "redact"

[[mask.rule]]
table = "audit"
column = "payload"
strategy = "redact"

[[mask.rule]]
column = "pay*"
strategy = "hash"
"#,
    );
    let cols = [
        ColumnInfo {
            name: "notes",
            table: Some("audit"),
            text_like: true,
        },
        ColumnInfo {
            name: "who",
            table: Some("audit"),
            text_like: true,
        },
        ColumnInfo {
            name: "payload",
            table: Some("audit"),
            text_like: true,
        },
        ColumnInfo {
            name: "payload",
            table: Some("other"),
            text_like: true,
        },
        ColumnInfo {
            name: "notes",
            table: None,
            text_like: true,
        },
    ];
    let plan = m.plan(&cols);
    let v = "from 10.1.2.3 by a@b.io";
    assert_eq!(masked(&m, &plan, 0, v), "from **.*.2.3 by [EMAIL]");
    assert_eq!(masked(&m, &plan, 1, v), "from [IPV4] by [EMAIL]");
    assert_eq!(masked(&m, &plan, 2, v), REDACTED);
    assert!(masked(&m, &plan, 3, v).starts_with(HASH_PREFIX));
    assert_eq!(masked(&m, &plan, 4, v), "from **.*.2.3 by a@b.io");
}

#[test]
fn hashes_are_deterministic_keyed_and_joinable() {
    let rules = "[[mask]]\nname = \"h\"\n[[mask.rule]]\ncolumn = \"*\"\nstrategy = \"hash\"\n[[mask.rule]]\ndetectors = [\"email\"]\nstrategy = \"hash\"";
    let parsed = profiles(rules);
    let Some(profile) = parsed.first() else {
        panic!("no profile");
    };
    let a = Masker::new(profile, KEY).ok();
    let b = Masker::new(profile, b"another key, long enough to use").ok();
    let (Some(a), Some(b)) = (a, b) else {
        panic!("maskers");
    };
    let plan_a = a.plan(&[text_col("x"), text_col("y")]);
    let plan_b = b.plan(&[text_col("x")]);
    let one = masked(&a, &plan_a, 0, "alice@example.com");
    assert_eq!(one, masked(&a, &plan_a, 0, "alice@example.com"));
    // Same value in another column: same output, so joins still work.
    assert_eq!(one, masked(&a, &plan_a, 1, "alice@example.com"));
    assert_ne!(one, masked(&a, &plan_a, 0, "alice@example.org"));
    assert_ne!(one, masked(&b, &plan_b, 0, "alice@example.com"));
    // Known answer: HMAC-SHA-256(KEY, "alice@example.com"), first 16 bytes. Outputs
    // must not change between versions, or joins across sessions break.
    assert_eq!(one, "h:841240d2a5b6654b3ae21fc4499db7b7");

    // A detected span hashes like the same whole value.
    let detector_masker = masker(
        "[[mask]]\nname = \"d\"\n[[mask.rule]]\ndetectors = [\"email\"]\nstrategy = \"hash\"",
    );
    let plan_e = detector_masker.plan(&[text_col("notes")]);
    assert_eq!(
        masked(&detector_masker, &plan_e, 0, "to alice@example.com!"),
        format!("to {one}!")
    );
}

#[test]
fn partial_never_reveals_more_than_half() {
    let mut out = Vec::new();
    let mut partial = |value: &[u8], keep: usize| {
        out.clear();
        strategy::partial(value, keep, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert_eq!(partial(b"4111111111111111", 4), "************1111");
    assert_eq!(partial(b"4111 1111 1111 1111", 4), "**** **** **** 1111");
    assert_eq!(partial(b"12345678", 100), "****5678");
    assert_eq!(partial(b"abc", 4), "**c");
    assert_eq!(partial(b"a", 4), "*");
    assert_eq!(partial(b"", 4), "");
    assert_eq!(partial(b"secret", 0), "******");
    // Characters, not bytes: "Zoë Smith" has 8.
    assert_eq!(partial("Zoë Smith".as_bytes(), 4), "*** *mith");
    assert_eq!(partial("Zoë Smith".as_bytes(), 9), "*** *mith");
    assert_eq!(partial("ééééé".as_bytes(), 3), "***éé");
    // Not UTF-8: bytes are characters.
    assert_eq!(partial(b"\xe9\xe9\xe9\xe9", 4), "**\u{fffd}\u{fffd}");

    for len in 0..40 {
        let value: String = "a1-".chars().cycle().take(len).collect();
        for keep in 0..45 {
            let out = partial(value.as_bytes(), keep);
            let total = value.bytes().filter(u8::is_ascii_alphanumeric).count();
            let shown = out.bytes().filter(u8::is_ascii_alphanumeric).count();
            assert!(shown * 2 <= total, "{value:?} keep {keep}: {out:?}");
            assert_eq!(out.len(), value.len());
        }
    }
}

#[test]
fn whole_value_strategies_on_odd_values() {
    let m = masker(
        "[[mask]]\nname = \"w\"\n[[mask.rule]]\ncolumn = \"r\"\nstrategy = \"redact\"\n[[mask.rule]]\ncolumn = \"p\"\nstrategy = \"partial\"\n[[mask.rule]]\ncolumn = \"h\"\nstrategy = \"hash\"",
    );
    let plan = m.plan(&[text_col("r"), text_col("p"), text_col("h")]);
    for value in [&b""[..], b"\xff\xfe\x00", &[b'x'; 1 << 20]] {
        for column in 0..3 {
            let outcome = m.mask_value(&plan, column, value);
            let MaskOutcome::Masked {
                value: out,
                detector,
            } = outcome
            else {
                panic!("column {column} not masked");
            };
            assert_eq!(detector, None);
            if column == 1 {
                assert_eq!(out.len(), value.len());
            } else {
                assert!(out.len() <= 34);
            }
        }
    }
}

#[test]
fn outcomes_never_show_values() {
    let m = masker(PII);
    let plan = m.plan(&[text_col("notes")]);
    let outcome = m.mask_value(&plan, 0, b"mail bob@example.com now");
    let shown = format!("{outcome:?} {plan:?} {m:?}");
    assert!(!shown.contains("bob"), "{shown}");
    assert!(shown.contains("email"), "{shown}");
    assert_eq!(
        outcome.into_wire(b"original").map(|c| c.len()),
        Some("mail ".len() + 34 + " now".len())
    );
    assert_eq!(MaskOutcome::Nulled.into_wire(b"x"), None);
    assert_eq!(
        MaskOutcome::Unchanged.into_wire(b"x").as_deref(),
        Some(&b"x"[..])
    );
}

#[test]
fn the_detector_of_the_first_span_is_reported() {
    let m = masker(PII);
    let plan = m.plan(&[text_col("notes")]);
    let outcome = m.mask_value(&plan, 0, b"10.0.0.1 then bob@example.com");
    assert!(matches!(
        outcome,
        MaskOutcome::Masked {
            detector: Some("ipv4"),
            ..
        }
    ));
}

#[test]
fn maskers_are_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Masker>();
    shared::<ColumnPlan>();
    fn sendable<T: Send>() {}
    sendable::<MaskOutcome<'static>>();
}

/// Realistic rows: ids, names, timestamps, amounts, statuses, e-mail columns, free text
/// with occasional PII and JSON. Prints MB/s; run with `--release -- --nocapture`.
#[test]
fn throughput() {
    let m = masker(
        "[[mask]]\nname = \"all\"\n[[mask.rule]]\ndetectors = [\"*\"]\nstrategy = \"redact\"",
    );
    let names = [
        "id",
        "name",
        "email",
        "created_at",
        "amount",
        "status",
        "notes",
        "payload",
    ];
    let columns: Vec<_> = names.iter().map(|n| text_col(n)).collect();
    let plan = m.plan(&columns);
    let notes = [
        "Customer called about the delayed shipment, promised a refund within 5 business days.",
        "Left a voicemail. Follow up next week; prefers e-mail over phone.",
        "VIP customer since 2019. Card ending 4242 on file, billing address verified.",
        "Reach me at jane.roe@example.org or +1 (555) 123-4567 after 5pm.",
        "Order #100234 split into two parcels; tracking numbers sent on 2024-03-02.",
    ];
    let payloads = [
        r#"{"event":"checkout","items":[{"sku":"A-1002","qty":2,"price":19.99}],"ip":"203.0.113.7","ua":"Mozilla/5.0 (X11; Linux x86_64)"}"#,
        r#"{"event":"login","user_id":88213,"success":true,"mfa":"totp","ts":"2024-03-02T10:15:00Z"}"#,
        r#"{"event":"view","path":"/products/kitchen/knives?page=2&sort=price","referrer":"https://example.com/"}"#,
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for i in 0..2000usize {
        rows.push(vec![
            (100_000 + i).to_string(),
            format!("Customer Number{i}"),
            format!("user{i}@example.com"),
            format!(
                "2024-03-{:02} 12:{:02}:{:02}.123456+00",
                i % 28 + 1,
                i % 60,
                (i * 7) % 60
            ),
            format!("{}.{:02}", i * 37 % 10_000, i % 100),
            ["shipped", "pending", "cancelled", "delivered"]
                .get(i % 4)
                .copied()
                .unwrap_or_default()
                .to_owned(),
            notes
                .get(i % notes.len())
                .copied()
                .unwrap_or_default()
                .to_owned(),
            payloads
                .get(i % payloads.len())
                .copied()
                .unwrap_or_default()
                .to_owned(),
        ]);
    }
    let bytes: usize = rows.iter().flatten().map(String::len).sum();
    // Debug builds are an order of magnitude slower: keep `cargo test` quick.
    let rounds = if cfg!(debug_assertions) { 3 } else { 200 };
    let started = Instant::now();
    let mut changed = 0usize;
    for _ in 0..rounds {
        for row in &rows {
            for (c, value) in row.iter().enumerate() {
                if !m.mask_value(&plan, c, value.as_bytes()).is_unchanged() {
                    changed += 1;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mb = (bytes * rounds) as f64 / 1e6;
    println!(
        "masking throughput: {:.0} MB/s ({mb:.1} MB in {secs:.3}s, {} values masked of {}, avg value {} bytes)",
        mb / secs,
        changed / rounds,
        rows.len() * names.len(),
        bytes / (rows.len() * names.len())
    );
    assert!(changed > 0);
}

/// The hasher is HMAC-SHA-256 exactly: compared with the `hmac` crate for keys shorter
/// than, as long as and longer than a block, and values across the padding boundaries.
#[test]
fn the_hasher_is_hmac_sha256() {
    use hmac::{Hmac, KeyInit, Mac};
    let keys: Vec<Vec<u8>> = [16usize, 32, 55, 63, 64, 65, 100, 200]
        .iter()
        .map(|&len| (0..len).map(|i| (i * 7 + len) as u8).collect())
        .collect();
    for key in &keys {
        let Some(hasher) = strategy::Hasher::new(key) else {
            panic!("no hasher for a {}-byte key", key.len());
        };
        for len in 0..300usize {
            let value: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
                Ok(mac) => mac,
                Err(e) => panic!("{e}"),
            };
            mac.update(&value);
            let tag = mac.finalize().into_bytes();
            let expected: String = HASH_PREFIX.to_owned()
                + &tag
                    .iter()
                    .take(HASH_BYTES)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>();
            let mut out = Vec::new();
            hasher.write(&value, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                expected,
                "key {} bytes, value {len} bytes",
                key.len()
            );
        }
    }
}

/// `mask_into` appends exactly what `mask_value` returns, after whatever the buffer
/// held, and reports the same outcome.
#[test]
fn mask_into_appends_what_mask_value_returns() {
    let m = masker(PII);
    let columns = [
        ColumnInfo {
            name: "ssn",
            table: Some("customers"),
            text_like: true,
        },
        text_col("email"),
        text_col("my_secret"),
        text_col("note"),
        ColumnInfo {
            name: "amount",
            table: None,
            text_like: false,
        },
    ];
    let plan = m.plan(&columns);
    let values: [&[u8]; 6] = [
        b"123-45-6789",
        b"no pii here",
        b"card 4111 1111 1111 1111 and jane@example.com, ip 10.1.2.3",
        b"",
        b"\xff\xfe\x00",
        b"AKIAIOSFODNN7EXAMPLE",
    ];
    let mut scratch = MaskScratch::default();
    let mut out = b"before".to_vec();
    for column in 0..columns.len() + 1 {
        for value in values {
            let expected = m.mask_value(&plan, column, value);
            let kept = out.len();
            let written = m.mask_into(&plan, column, value, &mut scratch, &mut out);
            let appended = out.get(kept..).unwrap_or_default().to_vec();
            match expected {
                MaskOutcome::Unchanged => {
                    assert_eq!(written, Written::Unchanged);
                    assert!(appended.is_empty());
                }
                MaskOutcome::Nulled => {
                    assert_eq!(written, Written::Nulled);
                    assert!(appended.is_empty());
                }
                MaskOutcome::Masked { value, detector } => {
                    assert_eq!(written, Written::Masked { detector });
                    assert_eq!(appended, value.into_owned());
                }
            }
        }
    }
    assert!(out.starts_with(b"before"));
}
