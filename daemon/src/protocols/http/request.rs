//! What a request is, in the form the upstream will act on: its method's class, its
//! normalised path and the host it names. Everything here is pure so that the hostile
//! shapes agents try can be unit-tested one by one.
//!
//! Paths are judged after the normalisation servers themselves do (RFC 3986 §6.2.2:
//! percent-decode unreserved characters, resolve dot-segments; plus merging duplicate
//! slashes, which many servers and frameworks do). What stays ambiguous (an encoded
//! slash, dot or backslash, a dot-segment climbing above the root, a NUL, a malformed
//! escape) is refused, because a server may read it differently from the glob.

/// The headers agents use to make a server act as another method.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The names of a query's parameters (never the values), in order, without repeats.
pub fn query_parameter_names(query: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let name = pair.split('=').next().unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let name = percent_decode_lossy(name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The value of `_method` in an `application/x-www-form-urlencoded` body.
pub fn form_method(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (percent_decode_lossy(name) == "_method")
            .then(|| percent_decode_lossy(value).to_ascii_uppercase())
    })
}

fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = bytes.get(index + 1..index + 3)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(value) = u8::from_str_radix(text, 16)
        {
            out.push(value);
            index += 3;
            continue;
        }
        out.push(if bytes[index] == b'+' {
            b' '
        } else {
            bytes[index]
        });
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A host (from Host, `:authority` or an absolute-form target) without its port, in
/// lower case, without a trailing dot and without IPv6 brackets.
pub fn host_without_port(authority: &str) -> String {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

pub use crate::policy::{TargetError, glob_matches, method_class, normalise_path};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Operation;

    #[test]
    fn methods_have_classes() {
        assert_eq!(method_class("GET"), Operation::Read);
        assert_eq!(method_class("HEAD"), Operation::Read);
        assert_eq!(method_class("OPTIONS"), Operation::Read);
        assert_eq!(method_class("POST"), Operation::Write);
        assert_eq!(method_class("PATCH"), Operation::Write);
        assert_eq!(method_class("DELETE"), Operation::Dangerous);
        assert_eq!(method_class("TRACE"), Operation::Dangerous);
        assert_eq!(method_class("CONNECT"), Operation::Dangerous);
        assert_eq!(method_class("PROPFIND"), Operation::Unparsed);
    }

    #[test]
    fn paths_are_normalised_as_servers_read_them() {
        assert_eq!(normalise_path("/a/b").unwrap(), "/a/b");
        assert_eq!(normalise_path("/a//b").unwrap(), "/a/b");
        assert_eq!(normalise_path("/a/./b").unwrap(), "/a/b");
        assert_eq!(normalise_path("/a/x/../b").unwrap(), "/a/b");
        assert_eq!(normalise_path("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalise_path("/a/").unwrap(), "/a/");
        assert_eq!(normalise_path("/").unwrap(), "/");
        assert_eq!(normalise_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalise_path("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(
            normalise_path("/a%2fb"),
            Err(TargetError::EncodedDelimiter('/'))
        );
        assert_eq!(
            normalise_path("/a/%2e%2e/b"),
            Err(TargetError::EncodedDelimiter('.'))
        );
        assert_eq!(
            normalise_path("/a%5cb"),
            Err(TargetError::EncodedDelimiter('\\'))
        );
        assert_eq!(normalise_path("/../etc"), Err(TargetError::AboveRoot));
        assert_eq!(normalise_path("/a/../../etc"), Err(TargetError::AboveRoot));
        assert_eq!(normalise_path("/a%zz"), Err(TargetError::BadEscape));
        assert_eq!(normalise_path("/a%2"), Err(TargetError::BadEscape));
        assert_eq!(normalise_path("/a%00"), Err(TargetError::Forbidden));
        assert_eq!(normalise_path("/a\\b"), Err(TargetError::Forbidden));
        assert_eq!(normalise_path("a/b"), Err(TargetError::NotAbsolute));
    }

    #[test]
    fn query_names_only() {
        assert_eq!(
            query_parameter_names(Some("token=abc&page=2&token=x&flag")),
            vec!["token", "page", "flag"]
        );
        assert!(query_parameter_names(None).is_empty());
    }

    #[test]
    fn form_method_is_found() {
        assert_eq!(form_method(b"a=1&_method=delete"), Some("DELETE".into()));
        assert_eq!(form_method(b"a=1"), None);
    }

    #[test]
    fn hosts_lose_ports_and_case() {
        assert_eq!(
            host_without_port("API.Example.test:443"),
            "api.example.test"
        );
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("example.test."), "example.test");
        assert_eq!(host_without_port("user@example.test:1"), "example.test");
    }

    #[test]
    fn globs_match_segments() {
        assert!(glob_matches(
            "/repos/acme/*/issues/*/comments",
            "/repos/acme/api/issues/7/comments"
        ));
        assert!(!glob_matches(
            "/repos/acme/*/issues",
            "/repos/acme/a/b/issues"
        ));
        assert!(glob_matches("/public/**", "/public/a/b/c"));
        assert!(glob_matches("/x", "/x"));
        assert!(!glob_matches("/x", "/x/"));
        assert!(glob_matches("*", "anything.test"));
    }
}
