//! A classification cache for MySQL statements keyed by their shape: a client that sends
//! the same statement with new values (a connector's text protocol, an ORM, a loop of
//! `INSERT`s) pays the exact lexer once per statement and sqlparser once per shape.
//!
//! It follows PostgreSQL's cache (`crate::sql::cache`) and keeps its rules:
//! - The key is the statement's significant tokens as the exact lexer ([`super::lexer`])
//!   split them under the session's `sql_mode` and character set, with every string and
//!   number replaced by a tag of its kind (a number keeps its form, digits collapsed:
//!   `1.5e3` is `9.9e9`). Each token is written with its kind, length and a separator,
//!   and entries are compared by the whole key, never by a hash, so a collision cannot
//!   hand one statement another's classification. Lexing is done before the key is made,
//!   so what changes where a literal ends (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`, the
//!   character set) is already in the tokens; rendering and parsing them depend on the
//!   tokens alone.
//! - Only what sqlparser gives is cached ([`super::statement`]'s `parsed`): statements
//!   recognised by their keywords (`SET`, `LOAD DATA`, `PREPARE ... FROM '...'`, `KILL`,
//!   `USE`, ...) and the scans that run on every statement (server files, `LOAD_FILE`,
//!   the `mysql` schema, foreign engines, versioned comments) are done every time.
//! - A classification that read a literal's value (`WHERE 1 = 1` against `WHERE 1 = 0`:
//!   every row or none) is never shared, nor is a statement with a hex or bit literal.
//!
//! What is cached is a classification, a pure function of the tokens: the policy still
//! judges every statement with the policy, grants and agent in force.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use super::lexer::{Kind, Token};
use crate::sql::{
    Classified,
    cache::{MAX_KEY_BYTES, MAX_SHAPES},
    classify::reading_literals,
};

fn shapes() -> &'static Mutex<HashMap<String, Arc<Option<Classified>>>> {
    static SHAPES: OnceLock<Mutex<HashMap<String, Arc<Option<Classified>>>>> = OnceLock::new();
    SHAPES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// What `classify` gives for `tokens` (one reading's significant tokens), from the cache
/// when a statement of the same shape was classified without reading a literal.
pub(super) fn classified(
    tokens: &[Token],
    classify: impl FnOnce() -> Option<Classified>,
) -> Option<Classified> {
    let Some(key) = shape_key(tokens) else {
        return classify();
    };
    let lock = || {
        shapes()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(cached) = lock().get(&key).cloned() {
        return cached.as_ref().clone();
    }
    let (classified, literal_read) = reading_literals(classify);
    if !literal_read {
        let mut shapes = lock();
        if shapes.len() >= MAX_SHAPES {
            shapes.clear();
        }
        shapes.insert(key, Arc::new(classified.clone()));
    }
    classified
}

/// The cache key of `tokens`, or `None` when they are not shared.
fn shape_key(tokens: &[Token]) -> Option<String> {
    let mut key = String::with_capacity(128);
    for token in tokens {
        key.push('\u{1}');
        match &token.kind {
            Kind::Str => key.push('s'),
            Kind::Number => {
                key.push('n');
                let mut in_digits = false;
                for c in token.value.chars() {
                    if c.is_ascii_digit() {
                        if !in_digits {
                            key.push('9');
                        }
                        in_digits = true;
                    } else {
                        key.push(c);
                        in_digits = false;
                    }
                }
            }
            Kind::HexStr | Kind::BitStr => return None,
            kind => {
                let tag = match kind {
                    Kind::Word => 'w',
                    Kind::Ident => 'i',
                    Kind::Variable => 'v',
                    Kind::Punct => 'p',
                    // Not in a reading's tokens; kept apart all the same.
                    _ => 'o',
                };
                let _ = write!(key, "{tag}{}:{}", token.value.len(), token.value);
                if tag == 'o' {
                    let _ = write!(key, "{:?}", token.kind);
                }
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
    use super::{super::lexer::Lexer, *};
    use crate::sql::mysql::MysqlSqlMode;

    fn key(sql: &str, mode: &MysqlSqlMode) -> Option<String> {
        let (tokens, _) = Lexer::new(sql, 0, mode).statement().unwrap();
        let significant: Vec<Token> = tokens
            .into_iter()
            .filter(|token| !matches!(token.kind, Kind::Space | Kind::Semicolon))
            .collect();
        shape_key(&significant)
    }

    #[test]
    fn same_shape_shares_a_key_across_values_and_whitespace() {
        let mode = MysqlSqlMode::default();
        let a = key("SELECT c FROM sbtest1 WHERE id=10", &mode);
        assert!(a.is_some());
        assert_eq!(a, key("SELECT c  FROM sbtest1 WHERE id = 99", &mode));
        assert_ne!(a, key("SELECT c FROM sbtest2 WHERE id=10", &mode));
        assert_ne!(a, key("SELECT c FROM sbtest1 WHERE id='10'", &mode));
        assert_ne!(a, key("SELECT c FROM sbtest1 WHERE id=1.5", &mode));
        assert_eq!(
            key("SELECT 'a\\' OR 1' FROM t", &mode),
            key("SELECT 'b' FROM t", &mode)
        );
        assert_eq!(key("SELECT X'ab' FROM t", &mode), None);
    }

    #[test]
    fn a_classification_that_read_a_literal_is_not_reused() {
        let context = crate::sql::mysql::MysqlContext::default();
        let class = |sql: &str| {
            crate::sql::mysql::classify_mysql(sql.as_bytes(), &context)[0]
                .classified
                .operation
        };
        use crate::policy::Operation;
        for _ in 0..2 {
            assert_eq!(
                class("UPDATE cache_t1 SET a = 1 WHERE 1 = 0"),
                Operation::Write
            );
            assert_eq!(
                class("UPDATE cache_t1 SET a = 1 WHERE 1 = 1"),
                Operation::Dangerous
            );
            assert_eq!(
                class("DELETE FROM cache_t2 WHERE '1abc'"),
                Operation::Dangerous
            );
            assert_eq!(class("DELETE FROM cache_t2 WHERE '0abc'"), Operation::Write);
            assert_eq!(
                class("UPDATE cache_t3 SET a = 2 WHERE id = 3"),
                Operation::Write
            );
            assert_eq!(
                class("UPDATE cache_t3 SET a = 5 WHERE id = 9"),
                Operation::Write
            );
        }
        let key_of = |sql: &str| key(sql, &MysqlSqlMode::default()).unwrap();
        let map = shapes().lock().unwrap();
        assert!(map.contains_key(&key_of("UPDATE cache_t3 SET a = 2 WHERE id = 3")));
        assert!(!map.contains_key(&key_of("UPDATE cache_t1 SET a = 1 WHERE 1 = 0")));
        assert!(!map.contains_key(&key_of("DELETE FROM cache_t2 WHERE '0abc'")));
    }

    #[test]
    fn cached_and_uncached_classifications_agree() {
        let context = crate::sql::mysql::MysqlContext::default();
        for sql in [
            "SELECT c FROM sbtest1 WHERE id = 5",
            "SELECT LOAD_FILE('/etc/passwd') FROM dual",
            "SELECT * FROM mysql.user WHERE user = 'root'",
            "INSERT INTO t (a, b) VALUES (1, 'x')",
            "SELECT a INTO OUTFILE '/tmp/x' FROM t",
        ] {
            let first = crate::sql::mysql::classify_mysql(sql.as_bytes(), &context);
            let again = crate::sql::mysql::classify_mysql(sql.as_bytes(), &context);
            assert_eq!(first, again, "{sql}");
        }
    }

    #[test]
    fn lexing_modes_make_different_keys() {
        // Under ANSI_QUOTES "x" is a column, else a string.
        let ansi = MysqlSqlMode {
            ansi_quotes: true,
            ..MysqlSqlMode::default()
        };
        assert_ne!(
            key("SELECT \"x\" FROM t", &MysqlSqlMode::default()),
            key("SELECT \"x\" FROM t", &ansi)
        );
    }
}
