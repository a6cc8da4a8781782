//! Just-in-time grants: time-bound extra permissions for one agent on one resource.
//!
//! A grant exists to let through what the policy files refuse (by a `deny` or `review`
//! rule, or by default-deny) for a while, without editing them. It is consulted only
//! after the policy: a statement the policy already allows keeps the policy's decision,
//! mask and rule. What a grant lets through is masked like what an allow rule would
//! have let through (see [`Policy::decide_with_grants`]), so a grant never widens what
//! the agent may *see*. Precedence is documented for users in `policies/README.md`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Action, AgentFacts, Decision, Operation, Policy};

/// Where a grant is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    Active,
    Expired,
    Revoked,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// One grant, as stored and as `GET /v1/grants` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// 1, 2, 3... never reused; decisions name it `grant:ID`.
    pub id: u64,
    /// The managed cgroup name of the agent.
    pub agent: String,
    /// The resource's name in the policy.
    pub resource: String,
    /// The operation classes it allows.
    pub operations: Vec<Operation>,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Who created it (`SO_PEERCRED` of the control connection).
    pub created_by_uid: u32,
    pub created_by: Option<String>,
    pub state: GrantState,
    /// When it expired or was revoked.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub ended_at: Option<OffsetDateTime>,
    pub revoked_by_uid: Option<u32>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

impl Grant {
    /// Whether it counts for a decision taken at `now`: active and not yet expired,
    /// even if the expiry has not been recorded yet.
    pub fn in_force_at(&self, now: OffsetDateTime) -> bool {
        self.state == GrantState::Active && now < self.expires_at
    }

    /// The operation names, for records and events.
    pub fn operation_names(&self) -> Vec<String> {
        self.operations
            .iter()
            .map(|operation| operation.as_str().to_owned())
            .collect()
    }

    fn covers(&self, agent: &str, resource: &str, operation: Operation) -> bool {
        self.agent == agent
            && self.resource == resource
            // A grant for statements implies the connection they need.
            && (operation == Operation::Connect || self.operations.contains(&operation))
    }
}

impl Policy {
    /// [`Policy::decide`], then the grants in force at `now`.
    ///
    /// A grant changes only a decision that is not `allow`: it then allows, names itself
    /// as the rule (`grant:ID`) and carries the mask profile of the most specific
    /// `allow` rule for the statement's class, or, when there is none, for `read` (the
    /// mask that governs what this agent may see of this resource). A process that
    /// fails the `uids`/`exe` constraints of the policy's agent of that name gets no
    /// grant. Of several grants that apply, the oldest is named.
    pub fn decide_with_grants(
        &self,
        grants: &[Grant],
        facts: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
        now: OffsetDateTime,
    ) -> Decision {
        let decision = self.decide(facts, resource, operation);
        self.apply_grants(decision, grants, facts, operation, now)
    }

    /// [`Policy::decide_http`], then the grants in force at `now`.
    pub fn decide_http_with_grants(
        &self,
        grants: &[Grant],
        facts: &AgentFacts<'_>,
        resource: &str,
        operation: Operation,
        request: (&str, &str, &str),
        now: OffsetDateTime,
    ) -> Decision {
        let decision = self.decide_http(facts, resource, operation, request);
        self.apply_grants(decision, grants, facts, operation, now)
    }

    /// [`Policy::decide_kubernetes`], then the grants in force at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_kubernetes_with_grants(
        &self,
        grants: &[Grant],
        facts: &AgentFacts<'_>,
        resource: &str,
        operation: Operation,
        request: &super::KubernetesRequest<'_>,
        summary: &str,
        now: OffsetDateTime,
    ) -> Decision {
        let decision = self.decide_kubernetes(facts, resource, operation, request, summary);
        self.apply_grants(decision, grants, facts, operation, now)
    }
    /// [`Policy::decide_command`], then the grants in force at `now`.
    pub fn decide_command_with_grants(
        &self,
        grants: &[Grant],
        facts: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
        command: Option<&str>,
        now: OffsetDateTime,
    ) -> Decision {
        let decision = self.decide_command(facts, resource, operation, command);
        self.apply_grants(decision, grants, facts, operation, now)
    }

    /// [`Policy::decide_connection`], then the grants in force at `now`: a grant for
    /// any class on the destination's resource implies connecting to it.
    pub fn decide_connection_with_grants(
        &self,
        grants: &[Grant],
        facts: &AgentFacts<'_>,
        destination: SocketAddr,
        now: OffsetDateTime,
    ) -> Decision {
        let decision = self.decide_connection(facts, destination);
        self.apply_grants(decision, grants, facts, Operation::Connect, now)
    }

    fn apply_grants(
        &self,
        decision: Decision,
        grants: &[Grant],
        facts: &AgentFacts<'_>,
        operation: Operation,
        now: OffsetDateTime,
    ) -> Decision {
        if decision.action == Action::Allow {
            return decision;
        }
        let Some(resource) = decision.resource.as_deref() else {
            return decision;
        };
        let Some(grant) = grants
            .iter()
            .filter(|grant| {
                grant.in_force_at(now) && grant.covers(facts.agent, resource, operation)
            })
            .min_by_key(|grant| grant.id)
        else {
            return decision;
        };
        if !self.admits_named_agent(facts) {
            return decision;
        }
        let mask = self
            .allow_mask(facts, Some(resource), operation)
            .or_else(|| self.allow_mask(facts, Some(resource), Operation::Read));
        let expires = grant
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let granter = grant
            .created_by
            .clone()
            .unwrap_or_else(|| format!("uid {}", grant.created_by_uid));
        Decision {
            action: Action::Allow,
            rule: format!("grant:{}", grant.id),
            reason: format!(
                "grant {} (by {granter}, until {expires}, reason {:?}) allows {operation} by agent `{}` on resource `{resource}`; without it: {}",
                grant.id, grant.reason, facts.agent, decision.reason
            ),
            resource: decision.resource,
            mask,
            timeout: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;

    const POLICY: &str = r#"
[[agent]]
name = "ci-bot"
uids = [1000]

[[resource]]
name = "orders-db"
addresses = ["127.0.0.2"]
ports = [5432]
protocol = "postgres"

[[resource]]
name = "other-db"
addresses = ["127.0.0.3"]
ports = [5432]
protocol = "postgres"

[[rule]]
name = "reads"
agent = "ci-bot"
resource = "orders-db"
operations = ["read"]
action = "allow"
mask = "pii"

[[rule]]
name = "no-ddl"
agent = "ci-bot"
resource = "orders-db"
operations = ["ddl"]
action = "deny"

[[rule]]
name = "admin-review"
agent = "ci-bot"
resource = "orders-db"
operations = ["admin"]
action = "review"

[[rule]]
name = "everyone-dcl-masked"
agent = "*"
resource = "orders-db"
operations = ["dcl"]
action = "allow"
mask = "strict"

[[rule]]
name = "but-not-ci-bot"
agent = "ci-bot"
resource = "orders-db"
operations = ["dcl"]
action = "deny"

[[mask]]
name = "pii"

[[mask]]
name = "strict"
"#;

    fn policy() -> Policy {
        match Policy::from_sources(&[(PathBuf::from("test.toml"), POLICY.to_owned())]) {
            Ok(policy) => policy,
            Err(errors) => panic!("policy should load:\n{errors}"),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn grant(id: u64, operations: &[Operation]) -> Grant {
        Grant {
            id,
            agent: "ci-bot".into(),
            resource: "orders-db".into(),
            operations: operations.to_vec(),
            reason: "migration".into(),
            created_at: now(),
            expires_at: now() + Duration::from_secs(60),
            created_by_uid: 0,
            created_by: Some("root".into()),
            state: GrantState::Active,
            ended_at: None,
            revoked_by_uid: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    fn ci_bot(uid: u32) -> AgentFacts<'static> {
        AgentFacts {
            agent: "ci-bot",
            uid,
            exe: None,
            workload: None,
        }
    }

    fn decide(grants: &[Grant], operation: Operation) -> Decision {
        policy().decide_with_grants(grants, &ci_bot(1000), Some("orders-db"), operation, now())
    }

    #[test]
    fn a_grant_beats_default_deny_deny_and_review_for_its_classes_only() {
        let grants = [grant(
            7,
            &[Operation::Write, Operation::Ddl, Operation::Admin],
        )];
        for operation in [Operation::Write, Operation::Ddl, Operation::Admin] {
            let decision = decide(&grants, operation);
            assert_eq!(decision.action, Action::Allow, "{operation}: {decision:?}");
            assert_eq!(decision.rule, "grant:7");
            assert!(decision.reason.contains("migration") && decision.reason.contains("root"));
        }
        let without = decide(&[], Operation::Ddl);
        assert_eq!(
            (without.action, without.rule.as_str()),
            (Action::Deny, "no-ddl")
        );
        let review = decide(&[], Operation::Admin);
        assert_eq!(review.action, Action::Review);
        let dangerous = decide(&grants, Operation::Dangerous);
        assert_eq!(dangerous.rule, "default-deny");
    }

    #[test]
    fn a_grant_never_replaces_an_allow_and_keeps_the_allow_rules_masks() {
        let grants = [grant(
            7,
            &[Operation::Read, Operation::Write, Operation::Dcl],
        )];
        let read = decide(&grants, Operation::Read);
        assert_eq!(
            (read.rule.as_str(), read.mask.as_deref()),
            ("reads", Some("pii"))
        );
        // No allow rule for write: the reader's mask.
        let write = decide(&grants, Operation::Write);
        assert_eq!(
            (write.rule.as_str(), write.mask.as_deref()),
            ("grant:7", Some("pii"))
        );
        // A deny overrode an allow rule with a mask: that allow rule's mask comes back.
        let dcl = decide(&grants, Operation::Dcl);
        assert_eq!(
            (dcl.rule.as_str(), dcl.mask.as_deref()),
            ("grant:7", Some("strict"))
        );
    }

    #[test]
    fn expired_revoked_foreign_and_unqualified_grants_do_not_count() {
        let mut expired = grant(1, &[Operation::Write]);
        expired.expires_at = now() - Duration::from_secs(1);
        let mut revoked = grant(2, &[Operation::Write]);
        revoked.state = GrantState::Revoked;
        let mut elsewhere = grant(3, &[Operation::Write]);
        elsewhere.resource = "other-db".into();
        let mut someone_else = grant(4, &[Operation::Write]);
        someone_else.agent = "other-bot".into();
        let grants = [expired, revoked, elsewhere, someone_else];
        assert_eq!(decide(&grants, Operation::Write).rule, "default-deny");

        // A process failing the agent's uid constraint is not that agent.
        let granted = [grant(5, &[Operation::Write])];
        let stranger = policy().decide_with_grants(
            &granted,
            &ci_bot(4242),
            Some("orders-db"),
            Operation::Write,
            now(),
        );
        assert_eq!(stranger.action, Action::Deny);
    }

    #[test]
    fn a_grant_implies_connecting_and_the_oldest_applying_grant_is_named() {
        let grants = [grant(9, &[Operation::Write]), grant(8, &[Operation::Write])];
        let policy = policy();
        let stranger_agent = AgentFacts {
            agent: "other-bot",
            uid: 1000,
            exe: None,
            workload: None,
        };
        let mut foreign = grant(10, &[Operation::Write]);
        foreign.agent = "other-bot".into();
        foreign.resource = "other-db".into();
        // No rule names other-db: only the grant lets the connection through.
        let destination = "127.0.0.3:5432".parse().expect("address");
        let denied = policy.decide_connection_with_grants(&[], &stranger_agent, destination, now());
        assert_eq!(denied.action, Action::Deny);
        let connect =
            policy.decide_connection_with_grants(&[foreign], &stranger_agent, destination, now());
        assert_eq!(
            (connect.action, connect.rule.as_str()),
            (Action::Allow, "grant:10")
        );
        assert_eq!(decide(&grants, Operation::Write).rule, "grant:8");
    }
}
