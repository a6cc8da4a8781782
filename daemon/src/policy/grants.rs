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
