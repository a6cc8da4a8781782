//! A classification cache keyed by a statement's shape, so that a client that sends the
//! same statement with new values (pgbench, an ORM, a migration loop) pays the lexer
//! once per statement and sqlparser once per shape instead of once per statement.
//!
//! The key is the statement's token sequence, from the same tokenizer the classifier
//! uses, with whitespace and comments left out (the parser skips them) and every
//! literal replaced by a tag of its kind. Each token is written with a separator and
//! names carry their quoting and length, so two token sequences never share a key:
//! entries are compared by the whole key, never by a hash alone, so a collision cannot
//! hand one statement another's classification.
//!
//! Only a classification that cannot depend on the literals is shared:
//! - each statement in the text must start with `SELECT`, `INSERT`, `UPDATE`, `DELETE`,
//!   `WITH`, `VALUES` or transaction control (no `SET`, `COPY`, `CREATE`, `EXPLAIN`,
//!   `DO`, ...: their literals name parameters, files, programs and code);
//! - no cast (`::`, `CAST`: `'pg_authid'::regclass` names a table), no call of
//!   `set_config` or of a function in [`super::SENSITIVE_FUNCTIONS`] (their arguments
//!   name files, sequences and settings), no escape-string or Unicode literal (unescaping
//!   can fail where the shape lexed);
//! - and the classifier did not read a literal's value while classifying it (`WHERE
//!   1 = 1` against `WHERE 1 = 2`; see `classify::reading_literals`).
//!
//! Everything else is classified every time. What is cached is the classification, a
//! pure function of the text: the policy still judges every statement with the policy,
//! grants and role in force, so the key needs no policy epoch or role. Statements are
//! lexed as UTF-8 with `standard_conforming_strings` on, cached or not; the proxy refuses
//! every statement while the server says otherwise.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use sqlparser::{
    dialect::PostgreSqlDialect,
    tokenizer::{Token, Tokenizer},
};

use super::{Classified, MAX_SQL_BYTES, classify, classify_or_unparsed, functions, mask};

/// Shapes kept; past it the cache starts over (a client rarely has this many).
pub(super) const MAX_SHAPES: usize = 4096;
/// Longest key kept: long statements are rare and cost more to hold than to parse.
pub(super) const MAX_KEY_BYTES: usize = 4096;

/// The statements that start a shareable statement (lower case).
const SHAREABLE_STARTS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "with",
    "values",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "savepoint",
    "release",
];

fn shapes() -> &'static Mutex<HashMap<String, Arc<Vec<Classified>>>> {
    static SHAPES: OnceLock<Mutex<HashMap<String, Arc<Vec<Classified>>>>> = OnceLock::new();
    SHAPES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// [`classify_or_unparsed`] and [`super::literals_masked`] of `sql`, lexing it once and
/// parsing it only when its shape is not cached or cannot be shared.
pub fn classify_and_mask(sql: &str) -> (Vec<Classified>, String) {
    if sql.len() > MAX_SQL_BYTES {
        return (classify_or_unparsed(sql), super::literals_masked(sql));
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(false)
        .tokenize()
    else {
        return (classify_or_unparsed(sql), super::literals_masked(sql));
    };
    let summary = mask::masked_tokens(&tokens, sql.len());
    let Some(key) = shape_key(&tokens) else {
        return (classify_or_unparsed(sql), summary);
    };
    let lock = || {
        shapes()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(classified) = lock().get(&key).cloned() {
        return (classified.as_ref().clone(), summary);
    }
    let (classified, literal_read) = classify::reading_literals(|| super::classify(sql));
    match classified {
        Ok(classified) => {
            if !literal_read {
                let mut shapes = lock();
                if shapes.len() >= MAX_SHAPES {
                    shapes.clear();
                }
                shapes.insert(key, Arc::new(classified.clone()));
            }
            (classified, summary)
        }
        Err(_) => (vec![Classified::unparsed()], summary),
    }
}

/// The cache key of `tokens`, or `None` when the statement's literals may carry meaning.
fn shape_key(tokens: &[Token]) -> Option<String> {
    let mut key = String::with_capacity(128);
    let mut at_start = true;
    let mut previous_word: Option<&str> = None;
    for token in tokens {
        let word = match token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Word(word) => Some(word),
            _ => None,
        };
        if at_start {
            let starts_shareable = word.is_some_and(|word| {
                word.quote_style.is_none()
                    && SHAREABLE_STARTS
                        .iter()
                        .any(|start| word.value.eq_ignore_ascii_case(start))
            });
            if !starts_shareable && !matches!(token, Token::SemiColon) {
                return None;
            }
        }
        at_start = matches!(token, Token::SemiColon);
        if matches!(token, Token::LParen)
            && let Some(name) = previous_word
        {
            let name = name.to_ascii_lowercase();
            if name == "set_config" || functions::function_class(&name).is_some() {
                return None;
            }
        }
        previous_word = word.map(|word| word.value.as_str());
        key.push('\u{1}');
        match token {
            Token::Word(word) => {
                if word.value.eq_ignore_ascii_case("cast") {
                    return None;
                }
                let quote = word.quote_style.unwrap_or(' ');
                let _ = write!(key, "w{quote}{}:{}", word.value.len(), word.value);
            }
            Token::DoubleColon
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_) => return None,
            Token::Number(_, long) => {
                let _ = write!(key, "n{long}");
            }
            Token::SingleQuotedString(_) => key.push('s'),
            Token::DollarQuotedString(_) => key.push('d'),
            Token::NationalStringLiteral(_) => key.push('N'),
            Token::HexStringLiteral(_) => key.push('x'),
            Token::SingleQuotedByteStringLiteral(_) => key.push('b'),
            Token::Comma => key.push(','),
            Token::Eq => key.push('='),
            Token::LParen => key.push('('),
            Token::RParen => key.push(')'),
            Token::Period => key.push('.'),
            Token::SemiColon => key.push(';'),
            Token::Mul => key.push('*'),
            Token::Plus => key.push('+'),
            Token::Minus => key.push('-'),
            // Anything rarer keeps its whole structure (Debug escapes its strings).
            other => {
                let _ = write!(key, "{other:?}");
            }
        }
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(sql: &str) -> bool {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .with_unescape(false)
            .tokenize()
            .unwrap();
        shape_key(&tokens).is_some()
    }

    #[test]
    fn same_shape_shares_a_key_across_values_and_whitespace() {
        let key = |sql: &str| {
            let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
                .with_unescape(false)
                .tokenize()
                .unwrap();
            shape_key(&tokens).unwrap()
        };
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 1;"),
            key("SELECT abalance  FROM pgbench_accounts /* x */ WHERE aid = 98765;")
        );
        assert_ne!(
            key("SELECT a FROM t WHERE aid = 1"),
            key("SELECT a FROM \"t\" WHERE aid = 1")
        );
        assert_ne!(key("SELECT 1"), key("SELECT '1'"));
    }

    #[test]
    fn meaning_carrying_literals_are_never_shared() {
        for sql in [
            "SET search_path = 'x'",
            "SELECT set_config('role', 'admin', false)",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT 'pg_authid'::regclass",
            "SELECT CAST('pg_authid' AS regclass)",
            "COPY t FROM PROGRAM 'id'",
            "SELECT 1; SET role = 'x'",
            "SELECT E'\\\\x'",
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            "DO $$ BEGIN END $$",
        ] {
            assert!(!cached(sql), "{sql}");
        }
        assert!(cached(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
        ));
        assert!(cached("BEGIN; UPDATE t SET a = a + 1 WHERE id = 2; END;"));
    }

    #[test]
    fn a_classification_that_read_a_literal_is_not_reused() {
        let (always, _) = classify_and_mask("DELETE FROM t WHERE 1 = 1");
        let (never, summary) = classify_and_mask("DELETE FROM t WHERE 1 = 2");
        assert_eq!(summary, "DELETE FROM t WHERE ? = ?");
        assert!(always[0].flags.contains(&super::super::Flag::NoWhere));
        assert!(!never[0].flags.contains(&super::super::Flag::NoWhere));
        // And the other way round, after the first one was seen.
        let (again, _) = classify_and_mask("DELETE FROM t WHERE 1 = 1");
        assert!(again[0].flags.contains(&super::super::Flag::NoWhere));
    }

    #[test]
    fn cached_and_uncached_classifications_agree() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 3;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
            "DELETE FROM t",
            "SELECT * FROM t FOR UPDATE",
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        ] {
            for _ in 0..2 {
                let (classified, summary) = classify_and_mask(sql);
                assert_eq!(classified, classify_or_unparsed(sql), "{sql}");
                assert_eq!(summary, super::super::literals_masked(sql), "{sql}");
            }
        }
    }
}
