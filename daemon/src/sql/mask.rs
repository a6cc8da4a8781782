//! Statement text for records, without the values in it.
//!
//! Session records keep what an agent ran, but not the data it sent: e-mail addresses,
//! passwords in `ALTER ROLE`, tokens in `INSERT`s. The tokenizer (not a regex, which
//! cannot tell a quote inside a dollar-quoted string from one that ends a literal) finds
//! the literals, and each becomes `?`.

use sqlparser::{
    dialect::PostgreSqlDialect,
    tokenizer::{Token, Tokenizer, Whitespace},
};

use super::MAX_SQL_BYTES;

/// `sql` with every string literal (`'...'`, `E'...'`, `U&'...'`, `$tag$...$tag$`,
/// `B'...'`, `X'...'`) and number replaced by `?`. Comments are dropped (a space stays in
/// their place): they may carry values too. Identifiers, keywords, operators,
/// parameters (`$1`) and other whitespace are kept as written.
///
/// Text that does not tokenize or is longer than [`MAX_SQL_BYTES`] gives
/// `<unparsable statement: N bytes>`, never the text itself.
pub fn literals_masked(sql: &str) -> String {
    let placeholder = || format!("<unparsable statement: {} bytes>", sql.len());
    if sql.len() > MAX_SQL_BYTES {
        return placeholder();
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(false)
        .tokenize()
    else {
        return placeholder();
    };
    masked_tokens(&tokens, sql.len())
}

/// [`literals_masked`] of text already tokenized (without unescaping) and within
/// [`MAX_SQL_BYTES`].
pub(super) fn masked_tokens(tokens: &[Token], len: usize) -> String {
    let mut masked = String::with_capacity(len);
    for token in tokens {
        match token {
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => masked.push('?'),
            Token::Whitespace(Whitespace::SingleLineComment { .. })
            | Token::Whitespace(Whitespace::MultiLineComment(_)) => masked.push(' '),
            Token::EOF => {}
            Token::Whitespace(Whitespace::Space) => masked.push(' '),
            Token::Comma => masked.push(','),
            Token::Eq => masked.push('='),
            other => {
                use std::fmt::Write as _;
                let _ = write!(masked, "{other}");
            }
        }
    }
    masked
}
