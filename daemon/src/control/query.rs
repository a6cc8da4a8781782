//! Query strings: the few lines of `application/x-www-form-urlencoded` handling the
//! control API needs, shared by server (decode) and client (encode).

/// Splits `a=1&b=x%20y` into decoded pairs; an error names a malformed percent-escape
/// or a value that is not UTF-8.
pub(crate) fn parse(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| format!("malformed percent-escape in {text:?}"))?;
                out.push(hex);
                index += 2;
            }
            _ => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_awkward_values() {
        for value in ["agent a", "a&b=c", "ünï", "100%", ""] {
            let query = format!("agent={}&limit=3", encode(value));
            assert_eq!(
                parse(&query).expect("parses"),
                vec![
                    ("agent".to_owned(), value.to_owned()),
                    ("limit".to_owned(), "3".to_owned())
                ]
            );
        }
    }

    #[test]
    fn malformed_escapes_are_errors() {
        assert!(parse("agent=%zz").is_err());
        assert!(parse("agent=%4").is_err());
        assert!(parse("agent=%ff").is_err());
        assert_eq!(parse("a+b=&&c").expect("parses").len(), 2);
    }
}
