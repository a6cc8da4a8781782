//! The form an HTTP request path is judged in: what the upstream will act on.
//!
//! Paths are normalised as servers normalise them (RFC 3986 §6.2.2: percent-decode
//! unreserved characters, resolve dot-segments; plus merging duplicate slashes, which
//! many servers do) before a rule's `http.paths` globs see them. What stays ambiguous
//! (an encoded slash, dot or backslash, a dot-segment climbing above the root, a
//! control character, a malformed escape) is refused, because a server may read it
//! differently from the glob. Used by the HTTP proxy and by `policy explain --http`.

/// Why a request target cannot be judged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path encodes a `{0}` (servers disagree on what it means)")]
    EncodedDelimiter(char),
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    #[error("the path holds a control character, a backslash or a NUL")]
    Forbidden,
    #[error("the path does not start with `/`")]
    NotAbsolute,
}

/// Normalises the path of a request target (without its query): percent-decodes
/// unreserved characters, merges slashes, resolves `.` and `..`. Refuses what a server
/// could read differently.
pub fn normalise_path(path: &str) -> Result<String, TargetError> {
    if !path.starts_with('/') {
        return Err(TargetError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let hex = bytes
                .get(index + 1..index + 3)
                .ok_or(TargetError::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| TargetError::BadEscape)?;
            let value = u8::from_str_radix(text, 16).map_err(|_| TargetError::BadEscape)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(TargetError::BadEscape);
            }
            match value {
                b'/' | b'.' | b'\\' | b'?' | b'#' | b';' => {
                    return Err(TargetError::EncodedDelimiter(char::from(value)));
                }
                0..=0x1f | 0x7f => return Err(TargetError::Forbidden),
                _ if is_unreserved(value) => decoded.push(char::from(value)),
                _ => {
                    // Reserved or non-ASCII: keep it encoded, in upper case.
                    decoded.push('%');
                    decoded.push_str(&text.to_ascii_uppercase());
                }
            }
            index += 3;
            continue;
        }
        if byte == b'\\' || byte < 0x20 || byte == 0x7f {
            return Err(TargetError::Forbidden);
        }
        decoded.push(char::from(byte));
        index += 1;
    }
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
            }
            other => segments.push(other),
        }
    }
    let mut normalised = String::with_capacity(decoded.len());
    for segment in &segments {
        normalised.push('/');
        normalised.push_str(segment);
    }
    if normalised.is_empty() || trailing_slash {
        normalised.push('/');
    }
    Ok(normalised)
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~')
}

/// The operation class of an HTTP method.
pub fn method_class(method: &str) -> super::Operation {
    match method {
        "GET" | "HEAD" | "OPTIONS" => super::Operation::Read,
        "POST" | "PUT" | "PATCH" => super::Operation::Write,
        "DELETE" | "TRACE" | "CONNECT" => super::Operation::Dangerous,
        _ => super::Operation::Unparsed,
    }
}
