//! What a Kubernetes API request is, mapped exactly as the API server maps it
//! (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`), then given its operation
//! class. Pure, so every shape can be unit-tested.
//!
//! Judging on anything other than the API server's own reading would be an evasion
//! route: the same bytes must mean the same verb, resource, namespace and name to
//! sluice and to the server. The mapping therefore follows the server step by step:
//!
//! - a path of fewer than three segments, or not under `/api` or `/apis`, is a
//!   non-resource request (discovery, `/version`, `/openapi/…`, `/healthz`, `/livez`,
//!   `/readyz`, `/metrics`), its verb the lower-cased method;
//! - `/api/{version}` and `/apis/{group}/{version}` start a resource request (and
//!   `/apis/{group}/{version}` alone is group discovery, a non-resource request);
//! - the legacy `/watch/` and `/proxy/` prefixes set the verb;
//! - `namespaces/{ns}/` is skipped unless `status` or `finalize` follows;
//! - the rest is resource / name / subresource (`proxy` takes no subresource);
//! - a `get` without a name is `list`, or `watch` when `?watch` is set; a
//!   `fieldSelector` of `metadata.name=X` fills in the name; a `delete` without a name
//!   is `deletecollection`.
//!
//! Operation classes (see `policies/README.md`, "Kubernetes"): get/list/watch are
//! `read`; create/update/patch are `write`; delete/deletecollection are `dangerous`.
//! Whatever the method (WebSocket exec arrives as a GET): `pods/exec`, `pods/attach`,
//! `pods/portforward` and any `proxy` are `admin`; `serviceaccounts/token` and any
//! `Impersonate-*` header are `dcl`. Reads of `secrets` stay `read` but their values
//! are masked unless a rule names `secrets` (see [`Sensitivity`]).

use std::fmt;

use crate::policy::Operation;

/// The subresources that stay with the namespace in `namespaces/{ns}/{sub}`.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Why a request cannot be mapped (the API server answers these with an error too).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("unable to determine kind and namespace from url {0}")]
    SpecialVerbWithoutResource(String),
    #[error("the method {0} has no Kubernetes verb")]
    UnknownMethod(String),
    #[error("the path segment `{0}` is not valid (empty, `.`, `..` or an undecodable escape)")]
    BadSegment(String),
}

/// A request as the API server reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `false` for discovery, `/version`, `/openapi`, health and other non-API paths.
    pub is_resource_request: bool,
    /// The path as judged.
    pub path: String,
    /// Lower case: get, list, watch, create, update, patch, delete, deletecollection,
    /// proxy; for non-resource requests the lower-cased method.
    pub verb: String,
    /// `api` or `apis` (empty for non-resource requests).
    pub api_prefix: String,
    /// Empty for the core group.
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl RequestInfo {
    /// `resource` or `resource/subresource`, as RBAC and policies name it.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// Whether this is a read of the values of Secrets.
    pub fn reads_secrets(&self) -> bool {
        self.is_resource_request
            && self.api_group.is_empty()
            && self.resource == "secrets"
            && self.subresource.is_empty()
            && matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// The short form records, holds and errors show: `delete pods -n shop web`,
    /// `get /version`.
    pub fn summary(&self) -> String {
        if !self.is_resource_request {
            return format!("{} {}", self.verb, self.path);
        }
        let mut text = format!("{} {}", self.verb, self.resource_path());
        if !self.api_group.is_empty() {
            text = format!("{} {}.{}", self.verb, self.resource, self.api_group);
            if !self.subresource.is_empty() {
                text.push('/');
                text.push_str(&self.subresource);
            }
        }
        if !self.namespace.is_empty() && self.resource != "namespaces" {
            text.push_str(" -n ");
            text.push_str(&self.namespace);
        }
        if !self.name.is_empty() {
            text.push(' ');
            text.push_str(&self.name);
        }
        text
    }
}

/// Maps a request the way the API server does. `path` is the request's path
/// (percent-escapes allowed), `query` its raw query string.
pub fn request_info(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<RequestInfo, MappingError> {
    let mut info = RequestInfo {
        path: path.to_owned(),
        verb: method.to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let trimmed = path.trim_matches('/');
    let mut parts: Vec<String> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed
            .split('/')
            .map(decode_segment)
            .collect::<Result<_, _>>()?
    };
    if parts.len() < 3 || !matches!(parts[0].as_str(), "api" | "apis") {
        return Ok(info);
    }
    let prefix = parts.remove(0);
    if prefix == "apis" {
        // /apis/{group}/{version} alone is group discovery.
        if parts.len() < 3 {
            return Ok(info);
        }
        info.api_group = parts.remove(0);
    }
    info.api_prefix = prefix;
    info.is_resource_request = true;
    info.api_version = parts.remove(0);

    if matches!(parts[0].as_str(), "proxy" | "watch") {
        if parts.len() < 2 {
            return Err(MappingError::SpecialVerbWithoutResource(path.to_owned()));
        }
        info.verb = parts.remove(0);
    } else {
        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => return Err(MappingError::UnknownMethod(other.to_owned())),
        }
        .to_owned();
    }

    if parts[0] == "namespaces" && parts.len() > 1 {
        info.namespace = parts[1].clone();
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2].as_str()) {
            parts.drain(..2);
        }
    }

    let takes_subresource = info.verb != "proxy";
    if parts.len() >= 3 && takes_subresource {
        info.subresource = parts[2].clone();
    }
    if parts.len() >= 2 {
        info.name = parts[1].clone();
    }
    info.resource = parts[0].clone();

    let query = Query::parse(query.unwrap_or_default());
    if info.name.is_empty() && info.verb == "get" {
        info.verb = if query.watch() { "watch" } else { "list" }.to_owned();
        if let Some(name) = query.field_selector_name()
            && is_valid_path_segment_name(&name)
        {
            info.name = name;
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".into();
    }
    Ok(info)
}

/// Percent-decodes one path segment, as Go's `URL.Path` holds it.
fn decode_segment(segment: &str) -> Result<String, MappingError> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| MappingError::BadSegment(segment.to_owned()))?;
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains('/') {
        return Err(MappingError::BadSegment(segment.to_owned()));
    }
    Ok(decoded.into_owned())
}

/// `path.IsValidPathSegmentName`: what a name taken from a field selector must be.
fn is_valid_path_segment_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
}

/// The query parameters the mapping reads.
struct Query {
    watch: Option<String>,
    field_selector: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut watch = None;
        let mut field_selector = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            // Go keeps every value; the server's decoder reads the first.
            match key.as_ref() {
                "watch" if watch.is_none() => watch = Some(value.into_owned()),
                "fieldSelector" if field_selector.is_none() => {
                    field_selector = Some(value.into_owned())
                }
                _ => {}
            }
        }
        Self {
            watch,
            field_selector,
        }
    }

    /// The server's string-to-bool conversion: present and not `0`/`false` is true.
    fn watch(&self) -> bool {
        self.watch
            .as_deref()
            .is_some_and(|value| value != "0" && !value.eq_ignore_ascii_case("false"))
    }

    /// `RequiresExactMatch("metadata.name")` over the field selector.
    fn field_selector_name(&self) -> Option<String> {
        let terms = parse_field_selector(self.field_selector.as_deref()?)?;
        terms
            .into_iter()
            .find(|(field, exact, _)| field == "metadata.name" && *exact)
            .map(|(_, _, value)| value)
    }
}

/// Parses a field selector into (field, is `=`/`==`, value) terms, with the selector
/// escapes (`\,` `\=` `\!` `\\`); `None` when it does not parse (the server then
/// ignores the whole selector for the mapping).
fn parse_field_selector(selector: &str) -> Option<Vec<(String, bool, String)>> {
    let mut terms = Vec::new();
    if selector.is_empty() {
        return Some(terms);
    }
    // Split on unescaped commas.
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut chars = selector.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                current.push(chars.next()?);
            }
            ',' => pieces.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    pieces.push(current);
    for piece in pieces {
        let (field, exact, raw_value) = split_term(&piece)?;
        let field = field.trim();
        if field.is_empty() {
            return None;
        }
        terms.push((field.to_owned(), exact, unescape(raw_value)?));
    }
    Some(terms)
}

/// Splits `field!=value`, `field==value` or `field=value` at the first unescaped
/// operator.
fn split_term(piece: &str) -> Option<(&str, bool, &str)> {
    let bytes = piece.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            b'!' if bytes.get(index + 1) == Some(&b'=') => {
                return Some((&piece[..index], false, &piece[index + 2..]));
            }
            b'=' if bytes.get(index + 1) == Some(&b'=') => {
                return Some((&piece[..index], true, &piece[index + 2..]));
            }
            b'=' => return Some((&piece[..index], true, &piece[index + 1..])),
            _ => index += 1,
        }
    }
    None
}

fn unescape(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                escaped @ ('\\' | ',' | '=' | '!') => out.push(escaped),
                _ => return None,
            },
            '=' | ',' => return None,
            _ => out.push(c),
        }
    }
    Some(out)
}

/// Whether the request carries impersonation (`Impersonate-User`, `-Group`, `-Uid`,
/// `-Extra-*`): acting as someone else is judged as its own high-risk operation.
pub fn impersonates<'a>(header_names: impl IntoIterator<Item = &'a str>) -> bool {
    header_names
        .into_iter()
        .any(|name| name.len() >= 12 && name.as_bytes()[..12].eq_ignore_ascii_case(b"impersonate-"))
}

/// Why a request is in its class, for records and `policy explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    /// get, list, watch, non-resource reads.
    Read,
    /// A read of Secrets: class `read`, values masked unless a rule names `secrets`.
    SecretRead,
    /// create, update, patch.
    Write,
    /// delete, deletecollection.
    Delete,
    /// pods/exec, pods/attach: commands inside a workload.
    Exec,
    /// pods/portforward: only rules that name `pods/portforward` admit it.
    PortForward,
    /// `proxy` as a verb or a subresource.
    Proxy,
    /// serviceaccounts/token: mints a credential.
    TokenRequest,
    /// `Impersonate-*` headers: acts as another identity.
    Impersonation,
    /// A method with no Kubernetes meaning on a non-resource path.
    Unknown,
}

impl Sensitivity {
    /// The operation class policies name.
    pub fn class(self) -> Operation {
        match self {
            Self::Read | Self::SecretRead => Operation::Read,
            Self::Write => Operation::Write,
            Self::Delete => Operation::Dangerous,
            Self::Exec | Self::PortForward | Self::Proxy => Operation::Admin,
            Self::TokenRequest | Self::Impersonation => Operation::Dcl,
            Self::Unknown => Operation::Unparsed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::SecretRead => "secret-read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::Exec => "exec",
            Self::PortForward => "portforward",
            Self::Proxy => "proxy",
            Self::TokenRequest => "token-request",
            Self::Impersonation => "impersonation",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Sensitivity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The sensitivity of a mapped request; `impersonating` when it carries
/// `Impersonate-*` headers (which outranks everything but exec-like subresources).
pub fn sensitivity(info: &RequestInfo, impersonating: bool) -> Sensitivity {
    let core = info.api_group.is_empty();
    let streaming = core && info.resource == "pods";
    let by_request = if !info.is_resource_request {
        match info.verb.as_str() {
            "get" | "head" => Sensitivity::Read,
            _ => Sensitivity::Unknown,
        }
    } else if info.verb == "proxy" || info.subresource == "proxy" {
        Sensitivity::Proxy
    } else if streaming && matches!(info.subresource.as_str(), "exec" | "attach") {
        Sensitivity::Exec
    } else if streaming && info.subresource == "portforward" {
        Sensitivity::PortForward
    } else if core && info.resource == "serviceaccounts" && info.subresource == "token" {
        Sensitivity::TokenRequest
    } else {
        match info.verb.as_str() {
            "get" | "list" | "watch" if info.reads_secrets() => Sensitivity::SecretRead,
            "get" | "list" | "watch" => Sensitivity::Read,
            "create" | "update" | "patch" => Sensitivity::Write,
            "delete" | "deletecollection" => Sensitivity::Delete,
            _ => Sensitivity::Unknown,
        }
    };
    if impersonating
        && !matches!(
            by_request,
            Sensitivity::Exec | Sensitivity::PortForward | Sensitivity::Proxy
        )
    {
        return Sensitivity::Impersonation;
    }
    by_request
}

/// A request in the words of `policy explain --kubernetes "VERB RESOURCE [-n NS] [NAME]"`:
/// `get pods -n shop web`, `delete namespaces shop`, `create pods/exec -n shop web`,
/// `list deployments.apps -n shop`, `get /version`.
pub fn parse_described(text: &str) -> Result<RequestInfo, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (&verb, rest) = words
        .split_first()
        .ok_or("expected `VERB RESOURCE [-n NAMESPACE] [NAME]`")?;
    let verb = verb.to_ascii_lowercase();
    let (&target, rest) = rest
        .split_first()
        .ok_or("expected a resource after the verb")?;
    if target.starts_with('/') {
        if !rest.is_empty() {
            return Err(format!("unexpected `{}` after a path", rest.join(" ")));
        }
        return Ok(RequestInfo {
            path: target.to_owned(),
            verb,
            ..RequestInfo::default()
        });
    }
    let mut info = RequestInfo {
        is_resource_request: true,
        verb,
        ..RequestInfo::default()
    };
    let (resource, subresource) = match target.split_once('/') {
        Some((resource, subresource)) => (resource, subresource),
        None => (target, ""),
    };
    let (resource, group) = match resource.split_once('.') {
        Some((resource, group)) => (resource, group),
        None => (resource, ""),
    };
    info.resource = resource.to_ascii_lowercase();
    info.subresource = subresource.to_ascii_lowercase();
    info.api_group = group.to_ascii_lowercase();
    info.api_prefix = if group.is_empty() { "api" } else { "apis" }.into();
    let mut words = rest.iter();
    while let Some(&word) = words.next() {
        match word {
            "-n" | "--namespace" => {
                info.namespace = words.next().ok_or("`-n` needs a namespace")?.to_string();
            }
            _ if info.name.is_empty() => info.name = word.to_owned(),
            _ => return Err(format!("unexpected `{word}`")),
        }
    }
    if info.resource == "namespaces" && info.namespace.is_empty() {
        info.namespace = info.name.clone();
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(method: &str, target: &str) -> RequestInfo {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        request_info(method, path, query).expect("maps")
    }

    fn short(info: &RequestInfo) -> String {
        format!(
            "{} {}|{}|{}|{}|{}|{}",
            info.verb,
            info.api_group,
            info.api_version,
            info.namespace,
            info.resource,
            info.subresource,
            info.name
        )
    }

    #[test]
    fn core_group_paths_map_like_the_api_server() {
        let cases = [
            ("GET", "/api/v1/namespaces", "list |v1||namespaces||"),
            (
                "GET",
                "/api/v1/namespaces/other",
                "get |v1|other|namespaces||other",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods",
                "list |v1|other|pods||",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo",
                "get |v1|other|pods||foo",
            ),
            (
                "HEAD",
                "/api/v1/namespaces/other/pods/foo",
                "get |v1|other|pods||foo",
            ),
            ("GET", "/api/v1/pods", "list |v1||pods||"),
            (
                "POST",
                "/api/v1/namespaces/other/pods",
                "create |v1|other|pods||",
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/pods/foo",
                "update |v1|other|pods||foo",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/other/pods/foo",
                "patch |v1|other|pods||foo",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/other/pods/foo",
                "delete |v1|other|pods||foo",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/other/pods",
                "deletecollection |v1|other|pods||",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/shop",
                "delete |v1|shop|namespaces||shop",
            ),
            (
                "DELETE",
                "/api/v1/nodes/worker-1",
                "delete |v1||nodes||worker-1",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/log",
                "get |v1|other|pods|log|foo",
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/finalize",
                "update |v1|other|namespaces|finalize|other",
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/status",
                "update |v1|other|namespaces|status|other",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/exec/extra/parts",
                "get |v1|other|pods|exec|foo",
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(short(&map(method, path)), expected, "{method} {path}");
        }
    }

    #[test]
    fn named_groups_and_legacy_verbs_map_like_the_api_server() {
        let cases = [
            (
                "GET",
                "/apis/apps/v1/namespaces/shop/deployments",
                "list apps|v1|shop|deployments||",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                "patch apps|v1|shop|deployments|scale|web",
            ),
            (
                "GET",
                "/apis/apps/v1/deployments",
                "list apps|v1||deployments||",
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/other/pods",
                "watch |v1|other|pods||",
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/other/pods/foo",
                "watch |v1|other|pods||foo",
            ),
            (
                "GET",
                "/api/v1/proxy/namespaces/other/pods/foo/some/path",
                "proxy |v1|other|pods||foo",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/proxy/some/path",
                "get |v1|other|pods|proxy|foo",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/services/http:web:80/proxy/",
                "get |v1|other|services|proxy|http:web:80",
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(short(&map(method, path)), expected, "{method} {path}");
        }
    }

    #[test]
    fn watch_and_field_selectors_read_the_query_as_the_server_decodes_it() {
        let watch = |query: &str| map("GET", &format!("/api/v1/namespaces/a/pods?{query}")).verb;
        assert_eq!(watch("watch=true"), "watch");
        assert_eq!(watch("watch=1"), "watch");
        assert_eq!(watch("watch"), "watch");
        assert_eq!(watch("watch=TRUE"), "watch");
        assert_eq!(watch("watch=yes"), "watch");
        assert_eq!(watch("watch=false"), "list");
        assert_eq!(watch("watch=False"), "list");
        assert_eq!(watch("watch=0"), "list");
        assert_eq!(watch("watch=0&watch=1"), "list");
        assert_eq!(watch("labelSelector=app%3Dweb"), "list");

        let named = map(
            "GET",
            "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3Dweb-1&watch=1",
        );
        assert_eq!(
            (named.verb.as_str(), named.name.as_str()),
            ("watch", "web-1")
        );
        let double = map(
            "GET",
            "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3D%3Dweb",
        );
        assert_eq!(double.name, "web");
        let combined = map(
            "GET",
            "/api/v1/pods?fieldSelector=status.phase%3DRunning%2Cmetadata.name%3Dweb",
        );
        assert_eq!(combined.name, "web");
        let negated = map("GET", "/api/v1/pods?fieldSelector=metadata.name%21%3Dweb");
        assert_eq!(negated.name, "");
        let invalid = map("GET", "/api/v1/pods?fieldSelector=metadata.name%3D..");
        assert_eq!(invalid.name, "");
        let slash = map("GET", "/api/v1/pods?fieldSelector=metadata.name%3Da%2Fb");
        assert_eq!(slash.name, "");
        let broken = map("GET", "/api/v1/pods?fieldSelector=metadata.name");
        assert_eq!((broken.verb.as_str(), broken.name.as_str()), ("list", ""));
        // A delete with no name is deletecollection, whatever the selector says.
        let collection = map(
            "DELETE",
            "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3Dweb",
        );
        assert_eq!(
            (collection.verb.as_str(), collection.name.as_str()),
            ("deletecollection", "")
        );
    }

    #[test]
    fn non_resource_paths_are_not_resource_requests() {
        for path in [
            "/",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/openapi/v3/apis/apps/v1",
            "/healthz",
            "/livez",
            "/readyz",
            "/metrics",
            "/other/a/b/c",
        ] {
            let info = map("GET", path);
            assert!(!info.is_resource_request, "{path}");
            assert_eq!(info.verb, "get");
            assert_eq!(sensitivity(&info, false), Sensitivity::Read, "{path}");
        }
        let post = map("POST", "/version");
        assert_eq!(sensitivity(&post, false), Sensitivity::Unknown);
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert!(matches!(
            request_info("GET", "/api/v1/watch", None),
            Err(MappingError::SpecialVerbWithoutResource(_))
        ));
        assert!(matches!(
            request_info("GET", "/api/v1/proxy", None),
            Err(MappingError::SpecialVerbWithoutResource(_))
        ));
        assert!(matches!(
            request_info("OPTIONS", "/api/v1/pods", None),
            Err(MappingError::UnknownMethod(_))
        ));
        for path in [
            "/api/v1//pods",
            "/api/v1/namespaces/../pods",
            "/api/v1/namespaces/%2e%2e/pods",
            "/api/v1/namespaces/a%2Fb/pods",
            "/api/v1/namespaces/%ff/pods",
        ] {
            assert!(
                matches!(
                    request_info("GET", path, None),
                    Err(MappingError::BadSegment(_))
                ),
                "{path}"
            );
        }
        // Escapes the server would decode are decoded before judging.
        let decoded = map("GET", "/api/v1/namespaces/sh%6fp/pods");
        assert_eq!(decoded.namespace, "shop");
    }

    #[test]
    fn high_risk_requests_get_their_own_classes_whatever_the_method() {
        let class = |method: &str, path: &str| sensitivity(&map(method, path), false);
        for method in ["GET", "POST"] {
            assert_eq!(
                class(method, "/api/v1/namespaces/a/pods/web/exec"),
                Sensitivity::Exec
            );
            assert_eq!(
                class(method, "/api/v1/namespaces/a/pods/web/attach"),
                Sensitivity::Exec
            );
            assert_eq!(
                class(method, "/api/v1/namespaces/a/pods/web/portforward"),
                Sensitivity::PortForward
            );
            assert_eq!(
                class(method, "/api/v1/namespaces/a/pods/web/proxy/x"),
                Sensitivity::Proxy
            );
            assert_eq!(
                class(method, "/api/v1/nodes/n1/proxy/metrics"),
                Sensitivity::Proxy
            );
        }
        assert_eq!(
            class("GET", "/api/v1/proxy/namespaces/a/pods/web"),
            Sensitivity::Proxy
        );
        assert_eq!(
            class("POST", "/api/v1/namespaces/a/serviceaccounts/default/token"),
            Sensitivity::TokenRequest
        );
        assert_eq!(
            class("GET", "/api/v1/namespaces/a/secrets"),
            Sensitivity::SecretRead
        );
        assert_eq!(
            class("GET", "/api/v1/namespaces/a/secrets/db"),
            Sensitivity::SecretRead
        );
        assert_eq!(
            class("GET", "/api/v1/secrets?watch=1"),
            Sensitivity::SecretRead
        );
        assert_eq!(
            class("DELETE", "/api/v1/namespaces/a/secrets/db"),
            Sensitivity::Delete
        );
        assert_eq!(
            class("POST", "/api/v1/namespaces/a/secrets"),
            Sensitivity::Write
        );
        // A resource called secrets in another group is not the core Secret.
        assert_eq!(
            class("GET", "/apis/example.com/v1/namespaces/a/secrets"),
            Sensitivity::Read
        );
        assert_eq!(class("DELETE", "/api/v1/namespaces/a"), Sensitivity::Delete);
        assert_eq!(
            class("DELETE", "/api/v1/namespaces/a/pods"),
            Sensitivity::Delete
        );

        assert_eq!(Sensitivity::Exec.class(), Operation::Admin);
        assert_eq!(Sensitivity::PortForward.class(), Operation::Admin);
        assert_eq!(Sensitivity::Proxy.class(), Operation::Admin);
        assert_eq!(Sensitivity::TokenRequest.class(), Operation::Dcl);
        assert_eq!(Sensitivity::Impersonation.class(), Operation::Dcl);
        assert_eq!(Sensitivity::SecretRead.class(), Operation::Read);
        assert_eq!(Sensitivity::Delete.class(), Operation::Dangerous);
    }

    #[test]
    fn impersonation_headers_make_any_request_an_impersonation() {
        assert!(impersonates(["accept", "Impersonate-User"]));
        assert!(impersonates(["impersonate-extra-scopes"]));
        assert!(impersonates(["IMPERSONATE-GROUP"]));
        assert!(!impersonates(["accept", "authorization", "impersonate"]));
        let get = map("GET", "/api/v1/namespaces/a/pods");
        assert_eq!(sensitivity(&get, true), Sensitivity::Impersonation);
        let version = map("GET", "/version");
        assert_eq!(sensitivity(&version, true), Sensitivity::Impersonation);
        let exec = map("POST", "/api/v1/namespaces/a/pods/web/exec");
        assert_eq!(sensitivity(&exec, true), Sensitivity::Exec);
    }

    #[test]
    fn described_requests_parse_like_kubectl_words() {
        let info = parse_described("delete pods -n shop web").expect("parses");
        assert_eq!(short(&info), "delete ||shop|pods||web");
        assert_eq!(info.summary(), "delete pods -n shop web");
        let namespace = parse_described("delete namespaces shop").expect("parses");
        assert_eq!(namespace.namespace, "shop");
        let scale = parse_described("patch deployments.apps/scale -n shop web").expect("parses");
        assert_eq!(short(&scale), "patch apps||shop|deployments|scale|web");
        assert_eq!(scale.summary(), "patch deployments.apps/scale -n shop web");
        let exec = parse_described("create pods/exec -n shop web").expect("parses");
        assert_eq!(sensitivity(&exec, false), Sensitivity::Exec);
        let version = parse_described("get /version").expect("parses");
        assert!(!version.is_resource_request);
        assert!(parse_described("get").is_err());
        assert!(parse_described("get pods a b").is_err());
        assert!(parse_described("get pods -n").is_err());
    }
}
