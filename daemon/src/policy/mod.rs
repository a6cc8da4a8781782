//! The policy: who may reach what, and do which operations there.
//!
//! One model serves every protocol: agents (processes, by managed cgroup and optionally
//! uid and executable), resources (addresses and ports speaking a protocol) and rules
//! (agent × resource × operation classes → allow, deny or review). Nothing matches by
//! default, so anything not allowed is denied. The file format and the decision
//! semantics are documented for users in `policies/README.md`; this module is their
//! single implementation, so the daemon, the per-statement checks and `sluice policy
//! check` cannot disagree.

mod grants;
mod http_path;
mod live;
mod load;
mod model;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use grants::{Grant, GrantState};
pub use http_path::{TargetError, method_class, normalise_path};
pub use live::{
    ExplainError, ExplainQuestion, ExplainedStatement, Explanation, KubernetesQuestion,
    PolicyHandle, RejectedReload, ReloadStatus, unmaskable_output,
};
pub use load::{DEFAULT_DENY_RULE, Diagnostic, PolicyErrors};
pub use model::AgentIdentity;
pub use model::{
    Action, Agent, AgentTls, HostPattern, HttpNarrowing, KubernetesNarrowing, KubernetesRequest,
    Location, Operation, OperationSet, PortRange, Protocol, Resource, Rule, Selector, SshNarrowing,
    SupportedProtocols, TlsMode, UnknownOperation, UpstreamTls, command_glob_matches, glob_matches,
    ref_glob_matches,
};
use model::{OperationMatch, Specificity};

use crate::store::record::DecisionRecord;

/// What the daemon knows about the process behind a connection.
#[derive(Clone, Copy, Debug)]
pub struct AgentFacts<'a> {
    /// The managed cgroup the process runs in.
    pub agent: &'a str,
    pub uid: u32,
    /// The process's executable; `None` when it could not be read.
    pub exe: Option<&'a Path>,
    /// The verified workload identity of the process's agent run, if any.
    pub workload: Option<&'a crate::workload::Verified>,
}

/// The outcome of a policy question, with the rule that settled it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule's name, or [`DEFAULT_DENY_RULE`].
    pub rule: String,
    /// A sentence for humans.
    pub reason: String,
    /// The resource the question was about, if any.
    pub resource: Option<String>,
    /// The mask profile for what an allowing rule lets through.
    #[serde(default)]
    pub mask: Option<String>,
    /// For `review`: the deciding rule's hold timeout (`None`: the daemon's default).
    #[serde(default)]
    pub timeout: Option<std::time::Duration>,
}

impl Decision {
    /// The decision as a session record stores it.
    pub fn record(&self) -> DecisionRecord {
        DecisionRecord {
            action: self.action.to_string(),
            rule: self.rule.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// How much a policy defines (for `sluice status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    pub agents: usize,
    pub resources: usize,
    pub rules: usize,
}

/// A loaded, checked policy. Immutable: a reload builds a new one.
///
/// The default policy has no rules and so denies everything.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    agents: Vec<Agent>,
    resources: Vec<Resource>,
    rules: Vec<Rule>,
    masks: std::collections::BTreeMap<String, crate::masking::MaskProfile>,
}

/// The best rule so far while deciding.
struct Candidate<'p> {
    rule: &'p Rule,
    specificity: Specificity,
    action: Action,
}

impl Policy {
    /// Loads every `*.toml` file directly in `dir`, sorted by file name (dot-files are
    /// skipped). A directory without policy files is valid and denies everything; a
    /// missing directory is an error.
    ///
    /// `supported` is what this sluice can enforce (the binary asks its protocol
    /// registry): a resource of any other protocol is an error, since its rules would
    /// never be applied.
    pub fn load_dir(dir: &Path, supported: &SupportedProtocols) -> Result<Policy, PolicyErrors> {
        let policy = load::load_dir(dir)?;
        policy.check_enforceable(supported)?;
        Ok(policy)
    }

    /// Refuses a policy that names what `supported` cannot enforce: a resource whose
    /// protocol no handler decodes.
    pub fn check_enforceable(&self, supported: &SupportedProtocols) -> Result<(), PolicyErrors> {
        let diagnostics: Vec<Diagnostic> = self
            .resources
            .iter()
            .filter(|resource| !supported.contains(resource.protocol))
            .map(|resource| Diagnostic {
                file: resource.location.file.clone(),
                line: resource.location.line,
                column: resource.location.column,
                message: format!(
                    "resource `{}`: protocol `{}` is not decoded by this sluice yet: its rules could not be enforced",
                    resource.name, resource.protocol
                ),
            })
            .collect();
        if diagnostics.is_empty() {
            Ok(())
        } else {
            Err(PolicyErrors(diagnostics))
        }
    }

    /// The mask profile named `name`.
    pub fn mask_profile(&self, name: &str) -> Option<&crate::masking::MaskProfile> {
        self.masks.get(name)
    }

    /// Builds a policy from `(path, text)` pairs, taken in the order given.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Policy, PolicyErrors> {
        load::from_sources(sources)
    }

    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|resource| resource.name == name)
    }

    pub fn counts(&self) -> PolicyCounts {
        PolicyCounts {
            agents: self.agents.len(),
            resources: self.resources.len(),
            rules: self.rules.len(),
        }
    }

    /// The resource a destination belongs to: the most specific match (longest prefix,
    /// then narrowest port range), the first defined on a tie.
    ///
    /// An IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`) is matched as the IPv4 address
    /// it reaches.
    pub fn resource_for(&self, destination: SocketAddr) -> Option<&Resource> {
        let destination = canonical(destination);
        let mut best: Option<(&Resource, _)> = None;
        for resource in &self.resources {
            if let Some(quality) = resource.match_destination(destination)
                && best
                    .as_ref()
                    .is_none_or(|(_, best_quality)| quality > *best_quality)
            {
                best = Some((resource, quality));
            }
        }
        best.map(|(resource, _)| resource)
    }

    /// The resource a destination belongs to by host name: of the resources whose
    /// `hostnames` match one of `names` (what the resolver told this agent the
    /// destination's address stands for) and whose ports hold the destination's port,
    /// the most specific (an exact name beats a wildcard, a longer wildcard a shorter
    /// one, then the narrowest port range), the first defined on a tie. A match by
    /// host name is more specific than any match by address.
    pub fn resource_for_host_names(
        &self,
        destination: SocketAddr,
        names: &[String],
    ) -> Option<&Resource> {
        if names.is_empty() {
            return None;
        }
        let mut best: Option<(&Resource, _)> = None;
        for resource in &self.resources {
            if let Some(quality) = resource.match_host_names(destination.port(), names)
                && best
                    .as_ref()
                    .is_none_or(|(_, best_quality)| quality > *best_quality)
            {
                best = Some((resource, quality));
            }
        }
        best.map(|(resource, _)| resource)
    }

    /// Whether the process may open a connection to `destination`.
    pub fn decide_connection(&self, agent: &AgentFacts<'_>, destination: SocketAddr) -> Decision {
        let destination = canonical(destination);
        let resource = self
            .resource_for(destination)
            .map(|resource| resource.name.as_str());
        let target = match resource {
            Some(name) => format!("{destination} (resource `{name}`)"),
            None => format!("{destination} (no resource)"),
        };
        self.decide_about(agent, resource, Operation::Connect, &target)
    }

    /// Whether the process may perform `operation` on `resource` (`None`: a destination
    /// that is no resource, which only rules for `*` match).
    pub fn decide(
        &self,
        agent: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
    ) -> Decision {
        let target = match resource {
            Some(name) => format!("resource `{name}`"),
            None => "a destination that is no resource".to_owned(),
        };
        self.decide_about(agent, resource, operation, &target)
    }

    /// Whether the process may send one HTTP request: `operation` is the method's class;
    /// rules narrowed by `http = { methods, paths, hosts }` count only when the request
    /// matches them, and then count as more specific than rules without.
    pub fn decide_http(
        &self,
        agent: &AgentFacts<'_>,
        resource: &str,
        operation: Operation,
        request: (&str, &str, &str),
    ) -> Decision {
        let (method, host, path) = request;
        let target = format!("resource `{resource}` ({method} {host}{path})");
        self.decide_about_with(agent, Some(resource), operation, &target, |rule| {
            rule.ssh.is_none()
                && rule
                    .http
                    .as_ref()
                    .is_none_or(|http| http.matches(method, host, path))
        })
    }

    /// Whether the process may send one Kubernetes API request: `operation` is its
    /// class; rules narrowed by `kubernetes = { ... }` count only when the request
    /// matches them, and then count as more specific than rules without. A
    /// `pods/portforward` request counts only under rules whose `kubernetes.resources`
    /// names `pods/portforward` itself, so it is denied by default.
    pub fn decide_kubernetes(
        &self,
        agent: &AgentFacts<'_>,
        resource: &str,
        operation: Operation,
        request: &KubernetesRequest<'_>,
        summary: &str,
    ) -> Decision {
        let target = format!("resource `{resource}` ({summary})");
        let portforward = request.is_resource_request
            && request.api_group.is_empty()
            && request.resource == "pods"
            && request.subresource == "portforward";
        self.decide_about_with(agent, Some(resource), operation, &target, |rule| {
            let narrowed = rule.ssh.is_none()
                && rule
                    .kubernetes
                    .as_ref()
                    .is_none_or(|narrowing| narrowing.matches(request));
            let opted_in = !portforward
                || rule
                    .kubernetes
                    .as_ref()
                    .is_some_and(|narrowing| narrowing.names_resource("pods/portforward"));
            narrowed && opted_in
        })
    }

    /// The rule called `name`.
    pub fn rule_named(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.name == name)
    }

    /// [`Self::decide`] for an SSH request with its command line: rules narrowed by
    /// `ssh = { commands }` count only when one of their globs matches `command`.
    pub fn decide_command(
        &self,
        agent: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
        command: Option<&str>,
    ) -> Decision {
        let target = match resource {
            Some(name) => format!("resource `{name}`"),
            None => "a destination that is no resource".to_owned(),
        };
        self.decide_about_with(agent, resource, operation, &target, |rule| {
            ((rule.http.is_none() && rule.kubernetes.is_none()) || operation == Operation::Connect)
                && narrowing_admits(rule, operation, command)
        })
    }

    fn decide_about(
        &self,
        facts: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
        target: &str,
    ) -> Decision {
        // A rule narrowed by `http`, `kubernetes` or `ssh` speaks only about those
        // requests (`decide_http`, `decide_kubernetes`, `decide_command`); for any other
        // operation it only implies connecting.
        self.decide_about_with(facts, resource, operation, target, |rule| {
            (rule.http.is_none() && rule.kubernetes.is_none() && rule.ssh.is_none())
                || operation == Operation::Connect
        })
    }

    fn decide_about_with(
        &self,
        facts: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
        target: &str,
        admit: impl Fn(&Rule) -> bool,
    ) -> Decision {
        let same_name = self.agents.iter().find(|agent| agent.name == facts.agent);
        let identified = same_name.filter(|agent| agent.satisfies_constraints(facts));
        let best = self.best_rule(identified, resource, operation, |rule| {
            rule.applies_to(facts) && admit(rule)
        });

        let mut constraint_note = match (same_name, identified) {
            (Some(agent), None) => match agent
                .identity
                .as_ref()
                .and_then(|required| required.mismatch(facts.workload))
            {
                Some(why) => format!(
                    " (the process is not agent `{}`: {why}; so only rules for \"*\" applied)",
                    agent.name
                ),
                None => format!(
                    " (the process, uid {}, does not meet agent `{}`'s uid/exe constraints, so only rules for \"*\" applied)",
                    facts.uid, agent.name
                ),
            },
            _ => String::new(),
        };
        if let Some(unmet) = self.best_rule(identified, resource, operation, |rule| {
            !rule.applies_to(facts) && admit(rule)
        }) && best.as_ref().is_none_or(|best| {
            best.action != Action::Allow && unmet.specificity >= best.specificity
        }) {
            let why = match (&unmet.rule.when, facts.workload) {
                (Some(when), Some(workload)) => {
                    when.first_mismatch(&workload.claims).unwrap_or_default()
                }
                _ => "the run has no verified workload identity".to_owned(),
            };
            constraint_note.push_str(&format!(
                " (rule `{}` ({}) does not apply: its `when` claims do not hold, {why})",
                unmet.rule.name, unmet.rule.location
            ));
        }
        let resource = resource.map(str::to_owned);
        let Some(best) = best else {
            return Decision {
                action: Action::Deny,
                rule: DEFAULT_DENY_RULE.to_owned(),
                reason: format!(
                    "no rule matches {operation} by agent `{}` on {target}, so it is denied{constraint_note}",
                    facts.agent
                ),
                resource,
                mask: None,
                timeout: None,
            };
        };
        let rule = best.rule;
        let reason = if best.specificity.operation == OperationMatch::Implied {
            format!(
                "rule `{}` ({}) {} {} by agent `{}` there, which implies connect to {target}{constraint_note}",
                rule.name,
                rule.location,
                verb(rule.action),
                rule.operations,
                facts.agent,
            )
        } else {
            format!(
                "rule `{}` ({}) {} {operation} by agent `{}` on {target}{constraint_note}",
                rule.name,
                rule.location,
                verb(best.action),
                facts.agent
            )
        };
        Decision {
            action: best.action,
            rule: rule.name.clone(),
            reason,
            resource,
            mask: rule.mask.clone(),
            timeout: rule.timeout,
        }
    }
}

/// Whether a rule's `ssh = { commands }` narrowing lets it judge `operation`: always
/// for `connect` (it implies connecting), otherwise only an SSH request whose command
/// matches. An unnarrowed rule (or an `ssh` table without `commands`) always can.
fn narrowing_admits(rule: &Rule, operation: Operation, command: Option<&str>) -> bool {
    match &rule.ssh {
        None => true,
        Some(narrowing) => operation == Operation::Connect || narrowing.admits(command),
    }
}

impl Policy {
    /// The mask profile of the most specific `allow` rule for `operation`, ignoring
    /// every `deny` and `review` rule: what an allow rule would have applied.
    pub(crate) fn allow_mask(
        &self,
        facts: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
    ) -> Option<String> {
        let identified = self
            .agents
            .iter()
            .find(|agent| agent.name == facts.agent)
            .filter(|agent| agent.satisfies_constraints(facts));
        self.best_rule(identified, resource, operation, |rule| {
            rule.action == Action::Allow
                && rule.applies_to(facts)
                && narrowing_admits(rule, operation, None)
        })
        .filter(|best| best.action == Action::Allow)
        .and_then(|best| best.rule.mask.clone())
    }

    /// Whether the process counts as the policy's agent `facts.agent`: true when no
    /// `[[agent]]` of that name exists, else when it meets its constraints.
    pub(crate) fn admits_named_agent(&self, facts: &AgentFacts<'_>) -> bool {
        self.agents
            .iter()
            .find(|agent| agent.name == facts.agent)
            .is_none_or(|agent| agent.satisfies_constraints(facts))
    }

    /// The most specific matching rule among those `admit` accepts.
    fn best_rule(
        &self,
        identified: Option<&Agent>,
        resource: Option<&str>,
        operation: Operation,
        admit: impl Fn(&Rule) -> bool,
    ) -> Option<Candidate<'_>> {
        let mut best: Option<Candidate<'_>> = None;
        for rule in self.rules.iter().filter(|rule| admit(rule)) {
            let agent_named = match &rule.agent {
                Selector::Any => false,
                Selector::Named(name) if identified.is_some_and(|agent| &agent.name == name) => {
                    true
                }
                Selector::Named(_) => continue,
            };
            let resource_named = match &rule.resource {
                Selector::Any => false,
                Selector::Named(name) if resource == Some(name.as_str()) => true,
                Selector::Named(_) => continue,
            };
            let (operation_match, action) = match rule.operations.match_of(operation) {
                Some(operation_match) => (operation_match, rule.action),
                // Statements can only be judged on a connection that was let through.
                None if operation == Operation::Connect && rule.action != Action::Deny => {
                    (OperationMatch::Implied, Action::Allow)
                }
                None => continue,
            };
            let candidate = Candidate {
                rule,
                specificity: Specificity {
                    agent_named,
                    resource_named,
                    operation: operation_match,
                    narrowed: rule.http.is_some() || rule.kubernetes.is_some(),
                    conditioned: rule.when.is_some(),
                },
                action,
            };
            let better = best.as_ref().is_none_or(|best| {
                (candidate.specificity, candidate.action.severity())
                    > (best.specificity, best.action.severity())
            });
            if better {
                best = Some(candidate);
            }
        }
        best
    }
}

/// Lists every problem in the policy directory; empty when it loads cleanly with what
/// `supported` can enforce.
pub fn check_dir(dir: &Path, supported: &SupportedProtocols) -> Vec<Diagnostic> {
    match Policy::load_dir(dir, supported) {
        Ok(_) => Vec::new(),
        Err(PolicyErrors(diagnostics)) => diagnostics,
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Allow => "allows",
        Action::Deny => "denies",
        Action::Review => "sends to review",
    }
}

fn canonical(destination: SocketAddr) -> SocketAddr {
    SocketAddr::new(destination.ip().to_canonical(), destination.port())
}
