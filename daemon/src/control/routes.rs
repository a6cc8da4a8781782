//! Every route of the control API, in one table ([`ROUTES`]), and their handlers.
//!
//! Adding a route is one line in the table plus a handler `fn(&Call) -> Result<Reply,
//! ApiError>`. Handlers run on a blocking thread, so they may call the backend (and its
//! store I/O) directly. Matching, 404, 405 and query/body decoding live here and nowhere
//! else.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    api::{ControlBackend, DEFAULT_SESSION_LIMIT, ErrorBody, SessionQuery},
    auth::PeerInfo,
    query,
};

/// A handler: answers one request.
pub type Handler = fn(&Call<'_>) -> Result<Reply, ApiError>;

/// One route: a method and a path pattern whose `{name}` segments capture.
pub struct Route {
    pub method: Method,
    pub pattern: &'static str,
    pub handler: Handler,
}

/// The routing table.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        pattern: "/v1/status",
        handler: status,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/sessions",
        handler: list_sessions,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/sessions/{id}",
        handler: get_session,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/sessions/{id}/statements",
        handler: session_statements,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/sessions/{id}/recordings",
        handler: session_recordings,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/policy/reload",
        handler: reload_policy,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/policy/explain",
        handler: explain,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/grants",
        handler: list_grants,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/grants",
        handler: create_grant,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/grants/{id}/revoke",
        handler: revoke_grant,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/approvals",
        handler: list_approvals,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/approvals/decided",
        handler: decided_approvals,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/approvals/{id}/approve",
        handler: approve,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/approvals/{id}/deny",
        handler: deny,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/events",
        handler: events,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/events/verify",
        handler: verify_events,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/identity/runs",
        handler: bind_run,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/ui/login",
        handler: ui_login,
    },
];

fn decided_approvals(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    Reply::json(&call.backend.decided_approvals()?)
}

/// A one-time sign-in URL for the web console, for the peer who asks.
fn ui_login(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let request: crate::ui::LoginRequest = if call.body.is_empty() {
        crate::ui::LoginRequest::default()
    } else {
        call.json_body()?
    };
    Reply::json_with_status(
        StatusCode::CREATED,
        &call.backend.ui_login(call.peer, &request)?,
    )
}

/// The body holds a token: it is decoded here and handed on, never logged.
fn bind_run(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let request: crate::workload::BindRequest = call.json_body()?;
    Reply::json_with_status(
        StatusCode::CREATED,
        &call.backend.bind_run(call.peer, request)?,
    )
}

fn verify_events(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    Reply::json(&call.backend.verify_events()?)
}

fn events(call: &Call<'_>) -> Result<Reply, ApiError> {
    use crate::export::select::{DEFAULT_EVENT_LIMIT, EventQuery, MAX_EVENT_LIMIT};
    call.only_query_params(&["after", "limit", "session", "since"])?;
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        call.query_param(name)?
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{name} must be a non-negative integer, not {text:?}"
                    ))
                })
            })
            .transpose()
    };
    let limit = match number("limit")? {
        None => DEFAULT_EVENT_LIMIT,
        Some(limit) => usize::try_from(limit)
            .ok()
            .filter(|limit| (1..=MAX_EVENT_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be between 1 and {MAX_EVENT_LIMIT}"))
            })?,
    };
    let since = call
        .query_param("since")?
        .map(|text| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|error| {
                    ApiError::bad_request(format!(
                        "since must be an RFC 3339 time ({error}), not {text:?}"
                    ))
                })
        })
        .transpose()?;
    let query = EventQuery {
        after: number("after")?.unwrap_or(0),
        limit,
        session: number("session")?,
        since,
    };
    Reply::json(&call.backend.events(&query)?)
}

fn list_approvals(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    Reply::json(&call.backend.approvals()?)
}

fn approve(call: &Call<'_>) -> Result<Reply, ApiError> {
    decide_approval(call, true)
}

fn deny(call: &Call<'_>) -> Result<Reply, ApiError> {
    decide_approval(call, false)
}

/// The approver is the connection's peer (`SO_PEERCRED`), never a field of the body.
fn decide_approval(call: &Call<'_>, approve: bool) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let id = call.param("id")?;
    let id = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("approval id must be a number, not {id:?}")))?;
    let decision: super::api::ApprovalDecision = call.json_body()?;
    Reply::json(
        &call
            .backend
            .decide_approval(call.peer, id, approve, &decision.reason)?,
    )
}

fn reload_policy(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    Reply::json(&call.backend.reload_policy()?)
}

fn explain(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let question: crate::policy::ExplainQuestion = call.json_body()?;
    Reply::json(&call.backend.explain(&question)?)
}

fn list_grants(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    Reply::json(&call.backend.grants()?)
}

fn create_grant(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let request: super::api::GrantRequest = call.json_body()?;
    let grant = call.backend.create_grant(call.peer, request)?;
    Reply::json_with_status(StatusCode::CREATED, &grant)
}

fn revoke_grant(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let id = call.param("id")?;
    let id = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("grant id must be a number, not {id:?}")))?;
    let request: super::api::RevokeRequest = if call.body.is_empty() {
        super::api::RevokeRequest::default()
    } else {
        call.json_body()?
    };
    Reply::json(&call.backend.revoke_grant(call.peer, id, request)?)
}

fn status(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    Reply::json(&call.backend.status())
}

fn list_sessions(call: &Call<'_>) -> Result<Reply, ApiError> {
    const TEXT_FILTERS: [&str; 6] = [
        "agent",
        "resource",
        "protocol",
        "decision",
        "repository",
        "actor",
    ];
    call.only_query_params(&[
        "agent",
        "limit",
        "resource",
        "protocol",
        "decision",
        "since",
        "until",
        "repository",
        "actor",
    ])?;
    let mut texts = Vec::new();
    for name in TEXT_FILTERS {
        let value = call.query_param(name)?.map(str::to_owned);
        if value.as_deref() == Some("") {
            return Err(ApiError::bad_request(format!("{name} must not be empty")));
        }
        texts.push(value);
    }
    let [agent, resource, protocol, decision, repository, actor]: [Option<String>; 6] = texts
        .try_into()
        .map_err(|_| ApiError::internal("filter count"))?;
    let time = |name: &str| -> Result<Option<time::OffsetDateTime>, ApiError> {
        call.query_param(name)?
            .map(|text| {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        ApiError::bad_request(format!(
                            "{name} must be an RFC 3339 time (2026-12-06T04:00:00Z), not {text:?}"
                        ))
                    })
            })
            .transpose()
    };
    let (since, until) = (time("since")?, time("until")?);
    let limit = match call.query_param("limit")? {
        None => DEFAULT_SESSION_LIMIT,
        Some(limit) => limit.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "limit must be a non-negative integer, not {limit:?}"
            ))
        })?,
    };
    let sessions = call
        .backend
        .list_sessions(&SessionQuery {
            agent,
            limit,
            resource,
            protocol,
            decision,
            since,
            until,
            repository,
            actor,
        })
        .map_err(|error| ApiError::internal(error.message))?;
    Reply::json(&sessions)
}

fn get_session(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let id = session_id(call)?;
    match call.backend.get_session(id) {
        Ok(Some(session)) => Reply::json(&session),
        Ok(None) => Err(ApiError::not_found(format!("no session {id}"))),
        Err(error) => Err(ApiError::internal(error.message)),
    }
}

fn session_statements(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let id = session_id(call)?;
    match call.backend.statements(id) {
        Ok(Some(statements)) => Reply::json(&statements),
        Ok(None) => Err(ApiError::not_found(format!("no session {id}"))),
        Err(error) => Err(ApiError::internal(error.message)),
    }
}

fn session_recordings(call: &Call<'_>) -> Result<Reply, ApiError> {
    call.only_query_params(&[])?;
    let id = session_id(call)?;
    match call.backend.recordings(id) {
        Ok(recordings) => Reply::json(&recordings),
        Err(error) => Err(ApiError::internal(error.message)),
    }
}

/// The `{id}` capture as a session id.
fn session_id(call: &Call<'_>) -> Result<u64, ApiError> {
    let id = call.param("id")?;
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("session id must be a number, not {id:?}")))
}

/// Everything a handler gets to see of a request.
pub struct Call<'a> {
    /// The authorized peer (later: recorded as the approver).
    pub peer: &'a PeerInfo,
    pub backend: &'a dyn ControlBackend,
    /// `{name}` captures of the route's pattern.
    pub params: Vec<(&'static str, String)>,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub body: Bytes,
}

impl Call<'_> {
    /// A `{name}` capture of the route's pattern.
    pub fn param(&self, name: &str) -> Result<&str, ApiError> {
        self.params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| ApiError::internal(format!("route has no {{{name}}} segment")))
    }

    /// A query parameter given at most once.
    pub fn query_param(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.query.iter().filter(|(key, _)| key == name);
        let first = values.next().map(|(_, value)| value.as_str());
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter {name:?} given more than once"
            )));
        }
        Ok(first)
    }

    /// Refuses parameters the route does not know, so a misspelt filter is an error
    /// rather than silently ignored.
    pub fn only_query_params(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self
            .query
            .iter()
            .find(|(key, _)| !allowed.contains(&key.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}"
            ))),
        }
    }

    /// The request body as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
    }
}

/// A successful response: a status and a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Reply {
    /// 200 with `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, ApiError> {
        Self::json_with_status(StatusCode::OK, value)
    }

    pub fn json_with_status<T: Serialize + ?Sized>(
        status: StatusCode,
        value: &T,
    ) -> Result<Self, ApiError> {
        let mut body = serde_json::to_vec(value)
            .map_err(|error| ApiError::internal(format!("cannot encode the response: {error}")))?;
        body.push(b'\n');
        Ok(Self { status, body })
    }
}

/// An error response: `{"error": message}` with `status`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// For 405: the methods the path does accept.
    pub allow: Vec<Method>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn into_reply(self) -> Reply {
        let mut body = serde_json::to_vec(&ErrorBody {
            error: self.message,
        })
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
        body.push(b'\n');
        Reply {
            status: self.status,
            body,
        }
    }
}

/// Finds the route for `method` and `path` and runs it. Blocking (the handlers are).
pub fn dispatch(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
    peer: &PeerInfo,
    backend: &dyn ControlBackend,
) -> Result<Reply, ApiError> {
    let mut allow = Vec::new();
    for route in ROUTES {
        let Some(params) = match_pattern(route.pattern, path) else {
            continue;
        };
        if route.method != *method {
            allow.push(route.method.clone());
            continue;
        }
        let query = query::parse(query.unwrap_or("")).map_err(ApiError::bad_request)?;
        let call = Call {
            peer,
            backend,
            params,
            query,
            body,
        };
        return (route.handler)(&call);
    }
    if allow.is_empty() {
        return Err(ApiError::not_found(format!(
            "no such route: {method} {path}"
        )));
    }
    let mut error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} does not accept {method}"),
    );
    error.allow = allow;
    Err(error)
}

/// The `{name}` captures if `path` matches `pattern` segment by segment.
fn match_pattern(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    let mut params = Vec::new();
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some(expected), Some(segment)) => {
                if let Some(name) = expected
                    .strip_prefix('{')
                    .and_then(|rest| rest.strip_suffix('}'))
                {
                    if segment.is_empty() {
                        return None;
                    }
                    params.push((name, segment.to_owned()));
                } else if expected != segment {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        assert_eq!(match_pattern("/v1/status", "/v1/status"), Some(vec![]));
        assert_eq!(match_pattern("/v1/status", "/v1/status/"), None);
        assert_eq!(match_pattern("/v1/status", "/v1/statusx"), None);
        assert_eq!(
            match_pattern("/v1/sessions/{id}", "/v1/sessions/42"),
            Some(vec![("id", "42".to_owned())])
        );
        assert_eq!(match_pattern("/v1/sessions/{id}", "/v1/sessions/"), None);
        assert_eq!(match_pattern("/v1/sessions/{id}", "/v1/sessions/4/x"), None);
        assert_eq!(
            match_pattern("/v1/sessions/{id}/statements", "/v1/sessions/4/statements"),
            Some(vec![("id", "4".to_owned())])
        );
        assert_eq!(
            match_pattern("/v1/sessions/{id}/statements", "/v1/sessions//statements"),
            None
        );
    }

    #[test]
    fn every_pattern_is_distinct() {
        for (index, route) in ROUTES.iter().enumerate() {
            assert!(route.pattern.starts_with("/v1/"), "{}", route.pattern);
            for other in ROUTES.iter().skip(index + 1) {
                assert!(
                    route.pattern != other.pattern || route.method != other.method,
                    "duplicate route {} {}",
                    route.method,
                    route.pattern
                );
            }
        }
    }
}
