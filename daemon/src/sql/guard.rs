//! Limits that keep hostile SQL from exhausting the stack.
//!
//! sqlparser bounds its own recursion (nested parentheses, subqueries), but it builds
//! chains such as `1+1+1+...`, `a::int::int...`, `a[1][1]...` or `SELECT 1 UNION SELECT 1
//! ...` in a loop, one tree level per link, and dropping such a tree recurses once per
//! level. A few tens of thousands of links overflow a 2 MiB thread stack, so before
//! parsing we bound the depth such chains can reach, from the tokens alone.

use sqlparser::{
    keywords::Keyword,
    tokenizer::{Token, TokenWithSpan},
};

use super::SqlError;

/// The longest SQL text classified, in bytes. Longer text is an error (unparsed).
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// The most tokens a chain of operators can span, summed along the deepest path of
/// nested parentheses and brackets. Parsing and dropping a tree that deep takes under
/// 1 MiB of stack even in a debug build (measured: about 200 bytes a level). Lists are
/// not chains: each item between commas counts on its own, so `IN (...)` lists and
/// `VALUES` of any length pass.
pub const MAX_NESTING_COST: usize = 4096;

/// One open group (the whole text, or a parenthesis or bracket).
#[derive(Default)]
struct Group {
    /// Tokens in the current comma-separated item, a nested group counting as one.
    item_len: usize,
    /// The highest cost of the groups nested in the current item.
    item_children: usize,
    /// `UNION`/`INTERSECT`/`EXCEPT` seen so far: a chain of set operations spans commas
    /// (`SELECT 1, 2 UNION SELECT 3, 4 ...`), so it counts for every item.
    set_operations: usize,
    /// The highest cost of the items seen so far.
    cost: usize,
}

impl Group {
    /// Ends the current item (at a comma, a semicolon or the group's end).
    fn close_item(&mut self) {
        self.cost = self.cost.max(self.item_cost());
        self.item_len = 0;
        self.item_children = 0;
    }

    /// What the current item costs so far.
    fn item_cost(&self) -> usize {
        self.item_len + self.item_children + self.set_operations
    }
}

/// Errors when a comma-free run of tokens, plus the runs of the groups it is nested
/// in, is longer than [`MAX_NESTING_COST`]. Any tree sqlparser builds in a loop has one
/// level per link of such a run, so its depth stays below that bound. Linear time.
pub(super) fn check_nesting(tokens: &[TokenWithSpan]) -> Result<(), SqlError> {
    let mut stack = vec![Group::default()];
    for token in tokens {
        match token.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen | Token::LBracket => stack.push(Group::default()),
            Token::RParen | Token::RBracket if stack.len() > 1 => {
                if let Some(mut group) = stack.pop() {
                    group.close_item();
                    if let Some(parent) = stack.last_mut() {
                        parent.item_len += 1;
                        parent.item_children = parent.item_children.max(group.cost);
                    }
                }
            }
            Token::Comma => {
                if let Some(group) = stack.last_mut() {
                    group.close_item();
                }
            }
            Token::SemiColon => {
                if let Some(group) = stack.last_mut() {
                    group.close_item();
                    group.set_operations = 0;
                }
            }
            Token::Word(ref word) => {
                if let Some(group) = stack.last_mut() {
                    group.item_len += 1;
                    if matches!(
                        word.keyword,
                        Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT
                    ) {
                        group.set_operations += 1;
                    }
                }
            }
            _ => {
                if let Some(group) = stack.last_mut() {
                    group.item_len += 1;
                }
            }
        }
        // The current item's running cost bounds what the finished item will cost.
        if let Some(group) = stack.last()
            && group.item_cost() > MAX_NESTING_COST
        {
            return Err(SqlError::TooComplex);
        }
    }
    // Close groups left open (the parser will reject them, but count them anyway).
    while let Some(mut group) = stack.pop() {
        group.close_item();
        if group.cost > MAX_NESTING_COST {
            return Err(SqlError::TooComplex);
        }
        if let Some(parent) = stack.last_mut() {
            parent.item_len += 1;
            parent.item_children = parent.item_children.max(group.cost);
        }
    }
    Ok(())
}
