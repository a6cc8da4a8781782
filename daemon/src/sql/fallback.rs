//! Keyword recognition for the few PostgreSQL statements sqlparser cannot parse.
//!
//! Only statements whose grammar has no expressions are recognised, so nothing after
//! the keywords can raise their class (`VACUUM` cannot call a function), plus `DO` and
//! `DROP`, which are already the most sensitive class. Anything else stays unparsed.

use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{Classified, Flag};
use crate::policy::Operation;

/// Leading keywords, the kind they give and their class.
const KEYWORD_STATEMENTS: &[(&[&str], Operation)] = &[
    (&["CHECKPOINT"], Operation::Admin),
    (&["VACUUM"], Operation::Admin),
    (&["CLUSTER"], Operation::Admin),
    (&["REINDEX"], Operation::Admin),
    (&["ALTER", "SYSTEM"], Operation::Admin),
    (&["DO"], Operation::Dangerous),
    (&["DROP"], Operation::Dangerous),
    (&["GRANT"], Operation::Dcl),
    (&["REVOKE"], Operation::Dcl),
    (&["ALTER", "DEFAULT", "PRIVILEGES"], Operation::Dcl),
    (&["REASSIGN", "OWNED"], Operation::Dcl),
    (&["REFRESH", "MATERIALIZED", "VIEW"], Operation::Write),
    (&["ALTER", "SEQUENCE"], Operation::Ddl),
    (&["CREATE", "SEQUENCE"], Operation::Ddl),
];

/// Recognises one statement (the tokens between two semicolons) by its leading
/// keywords, or gives `None`.
pub(super) fn by_keywords(tokens: &[TokenWithSpan]) -> Option<Classified> {
    // The first few words, upper case; quoted identifiers are not keywords.
    let words: Vec<String> = tokens
        .iter()
        .filter(|token| !matches!(token.token, Token::Whitespace(_)))
        .take(3)
        .map_while(|token| match &token.token {
            Token::Word(word) if word.quote_style.is_none() => {
                Some(word.value.to_ascii_uppercase())
            }
            _ => None,
        })
        .collect();
    let (keywords, operation) = KEYWORD_STATEMENTS.iter().find(|(keywords, _)| {
        keywords.len() <= words.len() && keywords.iter().zip(&words).all(|(a, b)| a == b)
    })?;
    let mut flags = vec![Flag::KeywordOnly];
    let kind = match *keywords {
        ["DO"] => {
            flags.push(Flag::AnonymousCode);
            "DO".to_owned()
        }
        ["DROP"] => {
            flags.push(Flag::Drop);
            // `DROP INDEX`, `DROP OWNED`: the object type is the second word.
            match words.get(1) {
                Some(object) => format!("DROP {object}"),
                None => "DROP".to_owned(),
            }
        }
        keywords => keywords.join(" "),
    };
    Some(Classified {
        operation: *operation,
        kind,
        tables_read: Vec::new(),
        tables_written: Vec::new(),
        functions: Vec::new(),
        flags,
    })
}
