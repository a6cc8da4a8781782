//! The Kubernetes [`Dialect`] of the HTTP proxy: judges each request in Kubernetes
//! terms, answers refusals as API `Status` objects, and masks Secrets on their way back.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use hyper::{
    HeaderMap, StatusCode,
    header::{self, HeaderValue},
};

use super::{
    mask::{DEFAULT_UNIT_CAP, SecretFilter, Shape},
    request::{RequestInfo, Sensitivity, impersonates, request_info, sensitivity},
    stream::{self, StreamKind},
};
use crate::{
    pipeline::{Details, Operation, SessionInfo},
    policy::{AgentFacts, Decision, KubernetesRequest, Policy, Protocol},
    protocols::{BodyFilter, Dialect, Exchange, Judged, Relayed},
};

/// Judges and answers Kubernetes API requests.
#[derive(Default)]
pub struct Kubernetes;

impl Kubernetes {
    pub fn dialect() -> Arc<dyn Dialect> {
        Arc::new(Self)
    }
}

/// A request as the policy sees it.
pub fn policy_request(info: &RequestInfo) -> KubernetesRequest<'_> {
    KubernetesRequest {
        is_resource_request: info.is_resource_request,
        verb: &info.verb,
        api_group: &info.api_group,
        resource: &info.resource,
        subresource: &info.subresource,
        namespace: &info.namespace,
        name: &info.name,
    }
}

/// Whether the rule that decided lets Secrets through in plain: its `kubernetes.resources`
/// names `secrets` itself (not through `*`).
pub fn secrets_in_plain(policy: &Policy, decision: &Decision) -> bool {
    policy
        .rule_named(&decision.rule)
        .and_then(|rule| rule.kubernetes.as_ref())
        .is_some_and(|narrowing| narrowing.names_resource("secrets"))
}

/// The record's text for a request: `delete pods -n shop web`, with what makes it
/// high-risk.
pub fn summary(info: &RequestInfo, sensitivity: Sensitivity) -> String {
    match sensitivity {
        Sensitivity::Impersonation => format!("{} (impersonating)", info.summary()),
        _ => info.summary(),
    }
}

impl Dialect for Kubernetes {
    fn judge(
        &self,
        session: &SessionInfo,
        request: &hyper::http::request::Parts,
        path: &str,
    ) -> Result<Judged, (StatusCode, String)> {
        let info = request_info(request.method.as_str(), path, request.uri.query())
            .map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?;
        let impersonating = impersonates(request.headers.keys().map(|name| name.as_str()));
        let sensitivity = sensitivity(&info, impersonating);
        let class = sensitivity.class();
        let summary = summary(&info, sensitivity);
        let policy = session.policy.current();
        let facts: AgentFacts<'_> = session.facts();
        let decision = policy.decide_kubernetes_with_grants(
            &session.policy.grants(),
            &facts,
            &session.resource.name,
            class,
            &policy_request(&info),
            &summary,
            time::OffsetDateTime::now_utc(),
        );
        let mask_secrets =
            sensitivity == Sensitivity::SecretRead && !secrets_in_plain(&policy, &decision);
        let mut parameters = vec![format!("verb={}", info.verb), format!("risk={sensitivity}")];
        if info.is_resource_request {
            parameters.push(format!("group={}", info.api_group));
            parameters.push(format!("resource={}", info.resource));
            if !info.subresource.is_empty() {
                parameters.push(format!("subresource={}", info.subresource));
            }
            if !info.namespace.is_empty() {
                parameters.push(format!("namespace={}", info.namespace));
            }
            if !info.name.is_empty() {
                parameters.push(format!("name={}", info.name));
            }
        }
        if mask_secrets {
            parameters.push("secrets=masked".into());
        }
        let target = if info.is_resource_request {
            let mut target = info.resource_path();
            if !info.api_group.is_empty() {
                target = format!("{}.{target}", info.api_group);
            }
            if !info.namespace.is_empty() && info.resource != "namespaces" {
                target = format!("{}/{target}", info.namespace);
            }
            if !info.name.is_empty() {
                target = format!("{target}/{}", info.name);
            }
            target
        } else {
            info.path.clone()
        };
        let details = Details::Kubernetes {
            verb: info.verb.clone(),
            group: info.api_group.clone(),
            resource: info.resource.clone(),
            subresource: (!info.subresource.is_empty()).then(|| info.subresource.clone()),
            namespace: (!info.namespace.is_empty()).then(|| info.namespace.clone()),
            name: (!info.name.is_empty()).then(|| info.name.clone()),
        };
        let operation = Operation {
            protocol: Protocol::Kubernetes,
            class,
            verb: "kubernetes".into(),
            targets: vec![target],
            summary: crate::pipeline::truncated(summary),
            parameters,
            details,
            unmaskable: None,
        };
        Ok(Judged {
            decision,
            operation,
            exchange: Box::new(KubeExchange {
                mask_secrets,
                watch: info.verb == "watch",
                terminal: info.resource == "pods"
                    && matches!(info.subresource.as_str(), "exec" | "attach"),
                stream: None,
                subprotocol: None,
            }),
        })
    }

    fn answer(&self, status: StatusCode, rule: Option<&str>, reason: &str) -> serde_json::Value {
        status_object(status, rule, reason)
    }
}

/// A `meta/v1 Status` failure, as the API server writes it, so kubectl prints
/// `Error from server (Forbidden): ...`.
pub fn status_object(status: StatusCode, rule: Option<&str>, reason: &str) -> serde_json::Value {
    let kube_reason = match status.as_u16() {
        400 | 421 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        429 => "TooManyRequests",
        504 => "Timeout",
        _ => "InternalError",
    };
    let message = match rule {
        Some(rule) => format!("sluice denied this request (rule {rule}): {reason}"),
        None => format!("sluice refused this request: {reason}"),
    };
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": kube_reason,
        "details": { "causes": [ { "reason": "SluicePolicy", "message": rule.unwrap_or("sluice") } ] },
        "code": status.as_u16(),
    })
}

/// One allowed request on its way.
struct KubeExchange {
    mask_secrets: bool,
    watch: bool,
    /// `pods/exec` or `pods/attach`: a terminal whose streams are recorded.
    terminal: bool,
    /// How it streams once upgraded.
    stream: Option<StreamKind>,
    /// The WebSocket subprotocol the API server chose.
    subprotocol: Option<String>,
}

impl Exchange for KubeExchange {
    fn upstream_headers(&mut self, headers: &mut HeaderMap) {
        self.stream = StreamKind::of(headers);
        if self.terminal && self.stream == Some(StreamKind::WebSocket) {
            stream::offer_decodable(headers);
        }
        if !self.mask_secrets {
            return;
        }
        // The body must be read: JSON, not protobuf, and not compressed.
        let wants_protobuf = headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|value| value.to_str().map_or(true, |v| v.contains("protobuf")));
        if wants_protobuf || !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    fn response_filter(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Option<Box<dyn BodyFilter>>, String> {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.subprotocol = headers
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            if self.terminal
                && self.stream == Some(StreamKind::WebSocket)
                && !self
                    .subprotocol
                    .as_deref()
                    .is_some_and(|chosen| stream::DECODED_SUBPROTOCOLS.contains(&chosen))
            {
                return Err(format!(
                    "the API server chose WebSocket subprotocol {:?}, which sluice cannot record: refused",
                    self.subprotocol.as_deref().unwrap_or("(none)")
                ));
            }
            return Ok(None);
        }
        if !self.mask_secrets {
            return Ok(None);
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim_start().starts_with("application/json"));
        if !json {
            return Err(
                "the Secret response is not JSON, so its values cannot be masked: withheld".into(),
            );
        }
        let shape = if self.watch {
            Shape::Events
        } else {
            Shape::Document
        };
        Ok(Some(Box::new(MaskingFilter(SecretFilter::new(
            shape,
            DEFAULT_UNIT_CAP,
        )))))
    }

    fn relay(
        self: Box<Self>,
        agent: hyper::upgrade::Upgraded,
        upstream: hyper::upgrade::Upgraded,
    ) -> Pin<Box<dyn Future<Output = Relayed> + Send>> {
        (*self).relay_stream(agent, upstream)
    }
}

impl KubeExchange {
    fn relay_stream(
        self,
        agent: hyper::upgrade::Upgraded,
        upstream: hyper::upgrade::Upgraded,
    ) -> Pin<Box<dyn Future<Output = Relayed> + Send>> {
        match (self.stream, self.terminal) {
            (Some(StreamKind::WebSocket), true) => Box::pin(stream::relay_websocket(
                agent,
                upstream,
                self.subprotocol.unwrap_or_default(),
            )),
            (Some(StreamKind::WebSocket), false) => Box::pin(stream::relay_counted(
                agent,
                upstream,
                format!("websocket {}", self.subprotocol.unwrap_or_default()),
            )),
            (Some(StreamKind::Spdy), _) => {
                Box::pin(stream::relay_counted(agent, upstream, "spdy".into()))
            }
            _ => Box::pin(stream::relay_counted(agent, upstream, "other".into())),
        }
    }
}

struct MaskingFilter(SecretFilter);

impl BodyFilter for MaskingFilter {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.0.push(chunk)
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.finish()
    }

    fn masked(&self) -> BTreeMap<String, u64> {
        self.0.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_kubernetes_status_objects() {
        let status = status_object(
            StatusCode::FORBIDDEN,
            Some("no-deletes"),
            "deletes are refused",
        );
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(status["code"], 403);
        let message = status["message"].as_str().expect("message");
        assert!(message.contains("no-deletes") && message.contains("deletes are refused"));
        assert_eq!(
            status_object(StatusCode::BAD_REQUEST, None, "bad")["reason"],
            "BadRequest"
        );
        assert_eq!(
            status_object(StatusCode::BAD_GATEWAY, None, "x")["reason"],
            "InternalError"
        );
    }

    #[test]
    fn secret_reads_ask_for_uncompressed_json() {
        let mut exchange = KubeExchange {
            mask_secrets: true,
            watch: false,
            terminal: false,
            stream: None,
            subprotocol: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf,application/json"),
        );
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        exchange.upstream_headers(&mut headers);
        assert_eq!(headers[header::ACCEPT], "application/json");
        assert_eq!(headers[header::ACCEPT_ENCODING], "identity");
        let mut protobuf = HeaderMap::new();
        protobuf.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
        );
        assert!(exchange.response_filter(StatusCode::OK, &protobuf).is_err());
    }
}

#[cfg(test)]
mod policy_tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        policy::Action,
        protocols::kubernetes::request::{parse_described, sensitivity},
    };

    fn example() -> Policy {
        let text = include_str!("../../../../policies/examples/kubernetes-deployer.toml");
        let extra = r#"
[[rule]]
name = "deployer-reads-shop-secrets-plain"
agent = "deployer"
resource = "prod-cluster"
operations = ["read"]
kubernetes = { namespaces = ["shop-secrets"], resources = ["secrets"] }
action = "allow"

[[rule]]
name = "deployer-forwards-to-db"
agent = "deployer"
resource = "prod-cluster"
operations = ["admin"]
kubernetes = { namespaces = ["shop"], resources = ["pods/portforward"], names = ["db-*"] }
action = "allow"

[[rule]]
name = "deployer-execs-in-dev"
agent = "deployer"
resource = "prod-cluster"
operations = ["admin"]
kubernetes = { namespaces = ["dev"], resources = ["pods/*"] }
action = "allow"
"#;
        Policy::from_sources(&[(PathBuf::from("k.toml"), format!("{text}{extra}"))])
            .unwrap_or_else(|errors| panic!("loads: {errors}"))
    }

    fn decide(policy: &Policy, described: &str) -> Decision {
        let info = parse_described(described).expect("described");
        let facts = AgentFacts {
            agent: "deployer",
            uid: 1000,
            exe: None,
            workload: None,
        };
        policy.decide_kubernetes(
            &facts,
            "prod-cluster",
            sensitivity(&info, false).class(),
            &policy_request(&info),
            &info.summary(),
        )
    }

    #[test]
    fn rules_narrow_by_verb_group_resource_namespace_and_name() {
        let policy = example();
        let action = |described: &str| decide(&policy, described).action;
        assert_eq!(action("get pods -n shop web"), Action::Allow);
        assert_eq!(action("list pods -n shop-eu"), Action::Allow);
        assert_eq!(action("patch deployments.apps -n shop web"), Action::Allow);
        assert_eq!(action("create configmaps -n shop-eu"), Action::Allow);
        assert_eq!(action("get pods/log -n shop web"), Action::Allow);
        assert_eq!(action("list pods -n kube-system"), Action::Deny);
        assert_eq!(action("create secrets -n shop"), Action::Deny);
        assert_eq!(action("delete pods -n shop web"), Action::Review);
        assert_eq!(action("delete pods -n shop-eu web"), Action::Deny);
        assert_eq!(action("delete namespaces shop"), Action::Deny);
        assert_eq!(action("delete nodes worker-1"), Action::Deny);
        assert_eq!(action("create pods/exec -n shop web"), Action::Deny);
        assert_eq!(action("get pods/exec -n dev web"), Action::Allow);
        // Discovery reads count under narrowed read rules.
        assert_eq!(action("get /api"), Action::Allow);
        assert_eq!(action("get /version"), Action::Allow);
    }

    #[test]
    fn portforward_needs_a_rule_that_names_it() {
        let policy = example();
        assert_eq!(
            decide(&policy, "create pods/portforward -n shop db-0").action,
            Action::Allow
        );
        assert_eq!(
            decide(&policy, "create pods/portforward -n shop web").action,
            Action::Deny
        );
        // `pods/*` covers exec in dev, but not port-forwarding.
        assert_eq!(
            decide(&policy, "create pods/portforward -n dev web").action,
            Action::Deny
        );
    }

    #[test]
    fn secrets_are_plain_only_under_a_rule_that_names_them() {
        let policy = example();
        let masked = decide(&policy, "get secrets -n shop db");
        assert_eq!(masked.action, Action::Allow);
        assert!(!secrets_in_plain(&policy, &masked));
        let plain = decide(&policy, "get secrets -n shop-secrets db");
        assert_eq!(plain.action, Action::Allow);
        assert!(secrets_in_plain(&policy, &plain));
    }

    #[test]
    fn kubernetes_narrowing_on_another_protocol_is_a_load_error_and_never_broadens() {
        let text = r#"
[[agent]]
name = "deployer"

[[resource]]
name = "db"
addresses = ["10.0.0.5"]
ports = [5432]
protocol = "postgres"

[[rule]]
agent = "deployer"
resource = "db"
operations = ["read"]
kubernetes = { namespaces = ["shop"] }
action = "allow"
"#;
        assert!(Policy::from_sources(&[(PathBuf::from("k.toml"), text.into())]).is_err());
        // On a kubernetes resource, a narrowed rule says nothing about other questions
        // than Kubernetes requests (beyond implying connect).
        let policy = example();
        let facts = AgentFacts {
            agent: "deployer",
            uid: 1000,
            exe: None,
            workload: None,
        };
        assert_eq!(
            policy
                .decide(
                    &facts,
                    Some("prod-cluster"),
                    crate::policy::Operation::Write
                )
                .action,
            Action::Deny
        );
        assert_eq!(
            policy
                .decide(
                    &facts,
                    Some("prod-cluster"),
                    crate::policy::Operation::Connect
                )
                .action,
            Action::Allow
        );
    }

    #[test]
    fn malformed_narrowing_is_a_load_error() {
        let base = include_str!("../../../../policies/examples/kubernetes-deployer.toml");
        for bad in [
            r#"kubernetes = { verbs = ["destroy"] }"#,
            r#"kubernetes = { resources = ["Pods"] }"#,
            r#"kubernetes = { resources = ["pods/"] }"#,
            r#"kubernetes = { namespaces = [] }"#,
            r#"kubernetes = { labels = ["a"] }"#,
        ] {
            let text = format!(
                "{base}\n[[rule]]\nagent = \"deployer\"\nresource = \"prod-cluster\"\noperations = [\"read\"]\n{bad}\naction = \"allow\"\n"
            );
            assert!(
                Policy::from_sources(&[(PathBuf::from("k.toml"), text)]).is_err(),
                "{bad}"
            );
        }
    }
}
