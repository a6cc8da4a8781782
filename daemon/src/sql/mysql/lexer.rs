//! An exact MySQL/MariaDB lexer: where every literal, identifier, comment and statement
//! ends, as the server's own lexer (`sql_lex.cc`) decides it.
//!
//! Hand-written because no crate lexes MySQL text the way the server does: sqlparser's
//! tokenizer always treats `\` as an escape (wrong under `NO_BACKSLASH_ESCAPES`), always
//! reads `"..."` as a string (wrong under `ANSI_QUOTES`), inlines `/*!...*/` but drops
//! MariaDB's executed `/*M!...*/` comments, and ignores version numbers. Each of those
//! lets an agent show the classifier one statement while the server runs another. This
//! lexer only splits and labels; the parsing is left to sqlparser, which is fed a
//! canonical rendering of these tokens (see [`render`]).
//!
//! Whenever the server's reading of the text could depend on something this lexer does
//! not know, it fails: unterminated literals and comments, `/*` inside any comment (nesting
//! differs between servers and between executed and skipped versioned comments), a
//! comment or `;` inside a versioned comment, a literal containing `*/` inside a versioned
//! comment (a skipped comment ends there, an executed one does not), `*/` outside a
//! comment, control characters and `\` outside literals, and characters outside the Basic
//! Multilingual Plane in unquoted identifiers.

use super::MysqlSqlMode;

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// An unquoted identifier or keyword, as written.
    Word,
    /// A quoted identifier (`` `x` ``, or `"x"` under `ANSI_QUOTES`); `value` is the name.
    Ident,
    /// A string literal (`'x'`, `"x"` without `ANSI_QUOTES`, `N'x'`); `value` is its text.
    Str,
    /// `X'...'` or `x'...'`: `value` is the hex digits.
    HexStr,
    /// `B'...'` or `b'...'`: `value` is the binary digits.
    BitStr,
    /// A number (`1`, `1.5e3`, `.5`, `0x1f`, `0b01`), as written.
    Number,
    /// A user variable `@name` or system variable `@@[scope.]name`, as written.
    Variable,
    /// An operator or punctuation, as written (`(`, `,`, `:=`, `<=>`, `@`, ...).
    Punct,
    /// `;` at the top level: the end of a statement.
    Semicolon,
    /// Whitespace or an ordinary comment (including optimizer hints `/*+ ... */`).
    Space,
    /// The start of a versioned comment, whose contents the server may execute.
    VersionOpen(Versioned),
    /// The `*/` that ends a versioned comment.
    VersionClose,
}

/// The opening of a versioned comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Versioned {
    /// `/*M!`: MariaDB only (MySQL reads it as an ordinary comment).
    pub mariadb_only: bool,
    /// The version number after `!`, if any, and how many digits it had.
    pub version: Option<(u32, u8)>,
}

/// One token: its kind, where it is in the text and, for literals and quoted identifiers,
/// the value it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    pub value: String,
}

impl Token {
    /// The word in upper case if this is an unquoted word, else `None`.
    pub fn keyword(&self) -> Option<String> {
        (self.kind == Kind::Word).then(|| self.value.to_ascii_uppercase())
    }

    /// Whether this is the unquoted word `word` (any case).
    pub fn is(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.value.eq_ignore_ascii_case(word)
    }

    /// Whether this is the punctuation `text`.
    pub fn is_punct(&self, text: &str) -> bool {
        self.kind == Kind::Punct && self.value == text
    }

    /// An identifier's name: an unquoted word or a quoted identifier.
    pub fn name(&self) -> Option<&str> {
        matches!(self.kind, Kind::Word | Kind::Ident).then_some(self.value.as_str())
    }
}

/// Why the text cannot be split with certainty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LexError {
    #[error("unterminated {0} at byte {1}")]
    Unterminated(&'static str, usize),
    #[error("{0} at byte {1} makes the statement's extent ambiguous")]
    Ambiguous(&'static str, usize),
    #[error("unexpected character at byte {0}")]
    Unexpected(usize),
}

/// Multi-character operators, longest first.
const OPERATORS: &[&str] = &[
    "<=>", "->>", "<=", ">=", "<>", "!=", "<<", ">>", "&&", "||", ":=", "->",
];

/// Single-character punctuation and operators.
const PUNCTUATION: &str = "()[]{},.+-*/%^&|~!<>=?:";

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// What the server's `my_iscntrl` or `my_isspace` accepts after `--` to start a comment.
fn ends_double_dash(c: Option<char>) -> bool {
    c.is_none_or(|c| is_space(c) || c.is_ascii_control())
}

/// A character of an unquoted identifier. MySQL allows U+0080..U+FFFF in them.
fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || ('\u{80}'..='\u{ffff}').contains(&c)
}

/// The lexer over one text, from one position, under one `sql_mode`.
pub(super) struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    mode: &'a MysqlSqlMode,
    /// The end of the versioned comment being lexed (its `*/`), if inside one.
    version_end: Option<usize>,
}

impl<'a> Lexer<'a> {
    pub fn new(text: &'a str, pos: usize, mode: &'a MysqlSqlMode) -> Self {
        Self {
            text,
            pos,
            mode,
            version_end: None,
        }
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    /// The end of the text the current token may extend to: the versioned comment's `*/`
    /// when inside one.
    fn limit(&self) -> usize {
        self.version_end.unwrap_or(self.text.len())
    }

    /// Lexes one statement: every token up to and including the next top-level `;`, or to
    /// the end of the text. Returns the tokens and where the next statement starts.
    pub fn statement(mut self) -> Result<(Vec<Token>, usize), LexError> {
        let mut tokens = Vec::new();
        while self.pos < self.text.len() {
            if let Some(end) = self.version_end
                && self.pos >= end
            {
                tokens.push(Token {
                    kind: Kind::VersionClose,
                    start: end,
                    end: end + 2,
                    value: String::new(),
                });
                self.pos = end + 2;
                self.version_end = None;
                continue;
            }
            let token = self.token()?;
            let done = token.kind == Kind::Semicolon;
            if token.end > self.limit() {
                // A literal ran past the `*/` that ends the versioned comment: a skipped
                // comment ends at that `*/`, an executed one does not.
                return Err(LexError::Ambiguous(
                    "a literal spanning the end of a versioned comment",
                    token.start,
                ));
            }
            tokens.push(token);
            if done {
                break;
            }
        }
        if self.version_end.is_some() {
            return Err(LexError::Unterminated("versioned comment", self.pos));
        }
        Ok((tokens, self.pos))
    }

    fn token(&mut self) -> Result<Token, LexError> {
        let start = self.pos;
        let c = self.peek().ok_or(LexError::Unexpected(start))?;
        let in_version = self.version_end.is_some();
        let token = |kind: Kind, end: usize, value: String| Token {
            kind,
            start,
            end,
            value,
        };
        // Comments first: `#`, `-- `, `/* */` and versioned comments.
        if c == '#' || (self.rest().starts_with("--") && ends_double_dash(self.peek_at(2))) {
            if in_version {
                return Err(LexError::Ambiguous(
                    "a comment inside a versioned comment",
                    start,
                ));
            }
            let end = self
                .rest()
                .find('\n')
                .map_or(self.text.len(), |offset| start + offset + 1);
            self.pos = end;
            return Ok(token(Kind::Space, end, String::new()));
        }
        if self.rest().starts_with("/*") {
            if in_version {
                return Err(LexError::Ambiguous(
                    "a comment inside a versioned comment",
                    start,
                ));
            }
            return self.block_comment();
        }
        if self.rest().starts_with("*/") {
            return Err(LexError::Ambiguous("`*/` outside a comment", start));
        }
        if is_space(c) {
            let len = self
                .rest()
                .find(|c: char| !is_space(c))
                .unwrap_or(self.rest().len());
            self.pos += len;
            return Ok(token(Kind::Space, self.pos, String::new()));
        }
        if c == ';' {
            if in_version {
                return Err(LexError::Ambiguous("`;` inside a versioned comment", start));
            }
            self.pos += 1;
            return Ok(token(Kind::Semicolon, self.pos, ";".to_owned()));
        }
        if c == '\'' || (c == '"' && !self.mode.ansi_quotes) {
            self.pos += 1;
            let value = self.quoted(c, true)?;
            return Ok(token(Kind::Str, self.pos, value));
        }
        if c == '`' || (c == '"' && self.mode.ansi_quotes) {
            self.pos += 1;
            let value = self.quoted(c, false)?;
            return Ok(token(Kind::Ident, self.pos, value));
        }
        // `N'...'`, `X'...'`, `B'...'`: the prefix letter directly followed by `'`.
        if matches!(c, 'n' | 'N' | 'x' | 'X' | 'b' | 'B') && self.peek_at(1) == Some('\'') {
            self.pos += 2;
            let value = self.quoted('\'', c.eq_ignore_ascii_case(&'n'))?;
            let kind = match c.to_ascii_lowercase() {
                'n' => Kind::Str,
                'x' if value.len() % 2 == 0 && value.chars().all(|c| c.is_ascii_hexdigit()) => {
                    Kind::HexStr
                }
                'b' if value.chars().all(|c| c == '0' || c == '1') => Kind::BitStr,
                _ => return Err(LexError::Unexpected(start)),
            };
            return Ok(token(kind, self.pos, value));
        }
        if c == '@' {
            return self.variable();
        }
        if c.is_ascii_digit() || (c == '.' && self.peek_at(1).is_some_and(|c| c.is_ascii_digit())) {
            return self.number_or_word();
        }
        if is_ident_char(c) {
            let len = self
                .rest()
                .find(|c: char| !is_ident_char(c))
                .unwrap_or(self.rest().len());
            if self
                .rest()
                .get(len..)
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| c > '\u{ffff}')
            {
                return Err(LexError::Unexpected(start + len));
            }
            self.pos += len;
            let word = self
                .text
                .get(start..self.pos)
                .unwrap_or_default()
                .to_owned();
            return Ok(token(Kind::Word, self.pos, word));
        }
        for operator in OPERATORS {
            if self.rest().starts_with(operator) {
                self.pos += operator.len();
                return Ok(token(Kind::Punct, self.pos, (*operator).to_owned()));
            }
        }
        if PUNCTUATION.contains(c) {
            self.pos += 1;
            return Ok(token(Kind::Punct, self.pos, c.to_string()));
        }
        Err(LexError::Unexpected(start))
    }

    /// `/* ... */`, or the opening of a versioned comment.
    fn block_comment(&mut self) -> Result<Token, LexError> {
        let start = self.pos;
        let body_start = start + 2;
        let body = self.text.get(body_start..).unwrap_or_default();
        let close = body
            .find("*/")
            .ok_or(LexError::Unterminated("comment", start))?;
        let (mariadb_only, marker_len) = if body.starts_with('!') {
            (false, 1)
        } else if body.starts_with("M!") {
            (true, 2)
        } else {
            if body.get(..close).is_some_and(|inner| inner.contains("/*")) {
                return Err(LexError::Ambiguous("a nested comment", start));
            }
            self.pos = body_start + close + 2;
            return Ok(Token {
                kind: Kind::Space,
                start,
                end: self.pos,
                value: String::new(),
            });
        };
        // A version number: five digits, or six (MariaDB's; MySQL's five-digit reading
        // of six digits is decided by the caller).
        let after_marker = body.get(marker_len..).unwrap_or_default();
        let digits = after_marker
            .bytes()
            .take(6)
            .take_while(u8::is_ascii_digit)
            .count();
        let version = match digits {
            5 | 6 => after_marker
                .get(..digits)
                .and_then(|number| number.parse().ok())
                .map(|number| (number, digits as u8)),
            0 => None,
            _ => return Err(LexError::Ambiguous("a short version number", start)),
        };
        let contents = body_start + marker_len + version.map_or(0, |(_, digits)| digits as usize);
        if contents > body_start + close {
            return Err(LexError::Ambiguous("a versioned comment's marker", start));
        }
        self.pos = contents;
        self.version_end = Some(body_start + close);
        Ok(Token {
            kind: Kind::VersionOpen(Versioned {
                mariadb_only,
                version,
            }),
            start,
            end: contents,
            value: String::new(),
        })
    }

    /// The rest of a quoted string or identifier after its opening `quote`; the quote
    /// doubled stands for itself, and in strings (unless `NO_BACKSLASH_ESCAPES`) `\`
    /// escapes the next character. Returns the decoded value.
    fn quoted(&mut self, quote: char, string: bool) -> Result<String, LexError> {
        let start = self.pos;
        let backslash = string && !self.mode.no_backslash_escapes;
        let mut value = String::new();
        let mut chars = self.rest().char_indices().peekable();
        while let Some((offset, c)) = chars.next() {
            if c == quote {
                if chars.peek().is_some_and(|&(_, next)| next == quote) {
                    chars.next();
                    value.push(quote);
                    continue;
                }
                self.pos = start + offset + 1;
                return Ok(value);
            }
            if c == '\\' && backslash {
                let Some((_, escaped)) = chars.next() else {
                    break;
                };
                match escaped {
                    '0' => value.push('\0'),
                    'b' => value.push('\x08'),
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    't' => value.push('\t'),
                    'Z' => value.push('\x1a'),
                    // Kept with the backslash: LIKE patterns read them as escapes.
                    '%' | '_' => {
                        value.push('\\');
                        value.push(escaped);
                    }
                    other => value.push(other),
                }
                continue;
            }
            value.push(c);
        }
        Err(LexError::Unterminated(
            if string {
                "string"
            } else {
                "quoted identifier"
            },
            start.saturating_sub(1),
        ))
    }

    /// `@name`, `@@name`, `@@scope.name`; or `@` alone (before a quoted name, as in
    /// `'user'@'host'` or `@'var'`).
    fn variable(&mut self) -> Result<Token, LexError> {
        let start = self.pos;
        let rest = self.rest();
        let (prefix, name_char): (usize, fn(char) -> bool) = if rest.starts_with("@@") {
            (2, |c| {
                c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.'
            })
        } else {
            (1, |c| {
                c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.'
            })
        };
        let name = rest.get(prefix..).unwrap_or_default();
        let len = name.find(|c: char| !name_char(c)).unwrap_or(name.len());
        if name
            .get(len..)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| !c.is_ascii())
        {
            // The server's host-name and variable states stop at bytes it does not
            // class as alphanumeric; which those are depends on its character tables.
            return Err(LexError::Unexpected(start + prefix + len));
        }
        if len == 0 {
            if prefix == 2 {
                return Err(LexError::Unexpected(start));
            }
            self.pos += 1;
            return Ok(Token {
                kind: Kind::Punct,
                start,
                end: self.pos,
                value: "@".to_owned(),
            });
        }
        self.pos += prefix + len;
        Ok(Token {
            kind: Kind::Variable,
            start,
            end: self.pos,
            value: self
                .text
                .get(start..self.pos)
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// A number, or an identifier that starts with digits (`1abc`, `0xZZ`), which MySQL
    /// allows. After `ident.` the server reads an identifier even if it starts with a
    /// digit; the caller renders such words quoted.
    fn number_or_word(&mut self) -> Result<Token, LexError> {
        let start = self.pos;
        let rest = self.rest();
        let word_len = rest.find(|c: char| !is_ident_char(c)).unwrap_or(rest.len());
        let bytes = rest.as_bytes();
        let number_len = if rest.starts_with("0x") || rest.starts_with("0b") {
            let digits = rest
                .get(2..)
                .unwrap_or_default()
                .bytes()
                .take_while(|b| {
                    if rest.starts_with("0x") {
                        b.is_ascii_hexdigit()
                    } else {
                        *b == b'0' || *b == b'1'
                    }
                })
                .count();
            if digits > 0 && 2 + digits == word_len {
                2 + digits
            } else {
                0
            }
        } else {
            let mut i = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            if bytes.get(i) == Some(&b'.') {
                i += 1;
                i += bytes
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
            }
            if matches!(bytes.get(i), Some(b'e' | b'E')) {
                let mut j = i + 1;
                if matches!(bytes.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                let exponent = bytes
                    .get(j..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if exponent > 0 {
                    i = j + exponent;
                }
            }
            i
        };
        let after = rest.get(number_len..).and_then(|rest| rest.chars().next());
        if number_len > 0 && !after.is_some_and(is_ident_char) {
            self.pos += number_len;
            return Ok(Token {
                kind: Kind::Number,
                start,
                end: self.pos,
                value: rest.get(..number_len).unwrap_or_default().to_owned(),
            });
        }
        // Digits followed by identifier characters: an identifier.
        if rest.starts_with('.') || word_len == 0 {
            return Err(LexError::Unexpected(start));
        }
        if rest
            .get(word_len..)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c > '\u{ffff}')
        {
            return Err(LexError::Unexpected(start + word_len));
        }
        self.pos += word_len;
        Ok(Token {
            kind: Kind::Word,
            start,
            end: self.pos,
            value: rest.get(..word_len).unwrap_or_default().to_owned(),
        })
    }
}
