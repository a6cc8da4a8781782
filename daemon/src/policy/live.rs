//! The policy in force: the loaded files and the grants, swapped atomically, and the
//! one place live decisions are taken.
//!
//! The PostgreSQL proxy, the connection path and `sluice policy explain` all decide
//! through [`PolicyHandle`], so explain cannot disagree with what an agent gets. A
//! reload replaces the whole policy at once: a decision sees either the old or the new
//! one, and sessions pick up the new one at their next statement.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Action, AgentFacts, Decision, Grant, Operation, Policy};
use crate::sql::{self, Classified};

/// The live policy and grants; replaced whole on reload, read per decision.
#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
    grants: RwLock<Arc<Vec<Grant>>>,
    status: Mutex<ReloadStatus>,
}

/// What `sluice status` shows about the loaded policy and the reloads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// 1 for the policy loaded at start, +1 per applied reload.
    pub generation: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: OffsetDateTime,
    /// The most recent rejected reload, if any since start.
    pub last_rejected: Option<RejectedReload>,
}

/// A reload that was refused; the policy before it stayed in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedReload {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `sighup`, `file_change` or `api`.
    pub trigger: String,
    /// `FILE:LINE:COL: message` per problem.
    pub errors: Vec<String>,
}

/// One statement of an explained SQL text, judged as the proxy would.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedStatement {
    pub operation: Operation,
    pub kind: String,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    pub decision: Decision,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
            grants: RwLock::new(Arc::new(Vec::new())),
            status: Mutex::new(ReloadStatus {
                generation: 1,
                loaded_at: OffsetDateTime::now_utc(),
                last_rejected: None,
            }),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Installs a new policy for every decision from now on; returns its generation.
    pub fn replace(&self, policy: Policy) -> u64 {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        status.generation += 1;
        status.loaded_at = OffsetDateTime::now_utc();
        status.generation
    }

    /// Notes a refused reload (the policy in force does not change).
    pub fn rejected(&self, trigger: &str, errors: Vec<String>) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_rejected = Some(RejectedReload {
            at: OffsetDateTime::now_utc(),
            trigger: trigger.to_owned(),
            errors,
        });
    }

    /// The generation of the policy in force (see [`ReloadStatus::generation`]).
    pub fn generation(&self) -> u64 {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The grants decisions consult (active ones; expired ones are ignored by time).
    pub fn grants(&self) -> Arc<Vec<Grant>> {
        Arc::clone(&self.grants.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the grants decisions consult.
    pub fn set_grants(&self, grants: Vec<Grant>) {
        *self.grants.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(grants);
    }

    /// May the process perform `operation` on `resource`, grants included.
    pub fn decide(
        &self,
        facts: &AgentFacts<'_>,
        resource: Option<&str>,
        operation: Operation,
    ) -> Decision {
        self.current().decide_with_grants(
            &self.grants(),
            facts,
            resource,
            operation,
            OffsetDateTime::now_utc(),
        )
    }

    /// May the process run SSH request `operation` with `command`, grants included
    /// (rules narrowed by `ssh = { commands }` count when a glob matches).
    pub fn decide_command(
        &self,
        facts: &AgentFacts<'_>,
        resource: &str,
        operation: Operation,
        command: Option<&str>,
    ) -> Decision {
        self.current().decide_command_with_grants(
            &self.grants(),
            facts,
            Some(resource),
            operation,
            command,
            OffsetDateTime::now_utc(),
        )
    }

    /// May the process open a connection to `destination`, grants included.
    pub fn decide_connection(&self, facts: &AgentFacts<'_>, destination: SocketAddr) -> Decision {
        self.current().decide_connection_with_grants(
            &self.grants(),
            facts,
            destination,
            OffsetDateTime::now_utc(),
        )
    }

    /// The decision on one operation of a decoded protocol, as the pipeline takes it:
    /// [`Self::decide`], then an operation whose output cannot be masked (`unmaskable`
    /// says why) is refused under a mask profile.
    pub fn decide_operation(
        &self,
        facts: &AgentFacts<'_>,
        resource: &str,
        operation: Operation,
        unmaskable: Option<&str>,
    ) -> Decision {
        let mut decision = self.decide(facts, Some(resource), operation);
        if decision.action == Action::Allow
            && let Some(why) = unmaskable
            && let Some(profile) = &decision.mask
        {
            decision.action = Action::Deny;
            decision.reason = format!(
                "{}; but {why} under mask profile `{profile}`",
                decision.reason
            );
        }
        decision
    }

    /// The decision on one classified statement of a SQL resource, as the proxy takes
    /// it: COPY output is refused under a mask profile, since a COPY stream cannot be
    /// masked.
    pub fn decide_statement(
        &self,
        facts: &AgentFacts<'_>,
        resource: &str,
        statement: &Classified,
    ) -> Decision {
        self.decide_operation(
            facts,
            resource,
            statement.operation,
            unmaskable_output(statement),
        )
    }

    /// Classifies `sql` as the proxy for `dialect` does and decides each statement.
    pub fn explain_sql(
        &self,
        facts: &AgentFacts<'_>,
        resource: &str,
        dialect: sql::Dialect,
        sql_text: &str,
    ) -> Vec<ExplainedStatement> {
        sql::classify_dialect(dialect, sql_text)
            .into_iter()
            .map(|statement| ExplainedStatement {
                decision: self.decide_statement(facts, resource, &statement),
                operation: statement.operation,
                kind: statement.kind,
                tables_read: statement.tables_read,
                tables_written: statement.tables_written,
            })
            .collect()
    }
}

/// Why the output of `statement` cannot be masked, when it cannot (COPY TO's stream).
pub fn unmaskable_output(statement: &Classified) -> Option<&'static str> {
    (statement.kind.starts_with("COPY") && statement.tables_written.is_empty())
        .then_some("COPY output cannot be masked, so COPY TO is refused")
}

/// A question for `sluice policy explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuestion {
    /// The managed cgroup name.
    pub agent: String,
    /// The resource's name in the policy.
    pub resource: String,
    /// SQL to classify as the resource's proxy (PostgreSQL or MySQL) does; or else
    /// `operation`.
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub operation: Option<Operation>,
    /// An HTTP request, `METHOD URL` (`DELETE https://api.example.com/repos/x`, or a
    /// path alone), judged as the resource's HTTP proxy would.
    #[serde(default)]
    pub http: Option<String>,
    /// The process's uid; by default the first of the agent's `uids`, else 0.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The process's executable; by default the first of the agent's `exe`, else none.
    #[serde(default)]
    pub exe: Option<String>,
    /// The claims of the run's workload identity, as verified from the agent's `identity`
    /// issuer; absent: a run without a verified identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// A Kubernetes request (with `operation`, its class), as the kubernetes protocol
    /// maps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesQuestion>,
}

/// The Kubernetes request of an [`ExplainQuestion`]: the mapped fields, plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesQuestion {
    pub is_resource_request: bool,
    pub verb: String,
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    /// How records show it (`delete pods -n shop web`).
    pub summary: String,
}

/// The answer: how the statements are classified and decided, as they would be live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub agent: String,
    pub resource: String,
    /// The uid and executable the question was decided for.
    pub uid: u32,
    pub exe: Option<String>,
    /// Each statement (one for `operation`), in order.
    pub statements: Vec<ExplainedStatement>,
    /// What the agent gets: the first statement refused, else the first statement's.
    pub decision: Decision,
}

/// Why a question cannot be explained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("the policy defines no resource `{0}`")]
    UnknownResource(String),
    #[error("give exactly one of sql, http and operation")]
    SqlOrOperation,
    #[error("`{0}` is not `METHOD URL` (like `DELETE https://api.example.com/repos/x`)")]
    BadHttp(String),
    #[error("the request's path cannot be judged: {0}")]
    BadPath(super::TargetError),
    #[error(
        "resource `{resource}` speaks {protocol}: sluice decodes no SQL there, ask about an operation instead"
    )]
    NotSql { resource: String, protocol: String },
    #[error("the SQL text is empty")]
    EmptySql,
    #[error(
        "resource `{resource}` speaks {protocol}, not kubernetes: ask about an operation instead"
    )]
    NotKubernetes { resource: String, protocol: String },
}

/// `METHOD URL` → (method, host, normalised path); the URL may be a path alone.
fn split_http_request(request: &str) -> Result<(String, String, String), ExplainError> {
    let bad = || ExplainError::BadHttp(request.to_owned());
    let mut words = request.split_whitespace();
    let (Some(method), Some(url), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad());
    };
    let method = method.to_ascii_uppercase();
    let (host, rest) = match url.split_once("://") {
        Some((_, after)) => match after.find('/') {
            Some(slash) => (&after[..slash], &after[slash..]),
            None => (after, "/"),
        },
        None => ("", url),
    };
    let host = host.rsplit('@').next().unwrap_or_default();
    let host = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    let path = rest.split(['?', '#']).next().unwrap_or("/");
    let path = super::normalise_path(path).map_err(ExplainError::BadPath)?;
    Ok((
        method,
        host.trim_end_matches('.').to_ascii_lowercase(),
        path,
    ))
}

impl PolicyHandle {
    /// Explains a question through the same calls the live paths make.
    pub fn explain(&self, question: &ExplainQuestion) -> Result<Explanation, ExplainError> {
        let policy = self.current();
        let resource = policy
            .resource(&question.resource)
            .ok_or_else(|| ExplainError::UnknownResource(question.resource.clone()))?;
        let agent = policy
            .agents()
            .iter()
            .find(|agent| agent.name == question.agent);
        let uid = question.uid.unwrap_or_else(|| {
            agent
                .and_then(|agent| agent.uids.as_ref()?.first().copied())
                .unwrap_or(0)
        });
        let exe = question.exe.clone().or_else(|| {
            agent
                .and_then(|agent| agent.exe.as_ref()?.first())
                .map(|path| path.display().to_string())
        });
        let workload = question.claims.as_ref().map(|claims| {
            let issuer = agent
                .and_then(|agent| agent.identity.as_ref())
                .map_or("-", |identity| identity.issuer.as_str());
            crate::workload::Verified::stated(issuer, claims)
        });
        let facts = AgentFacts {
            agent: &question.agent,
            uid,
            exe: exe.as_deref().map(std::path::Path::new),
            workload: workload.as_ref(),
        };
        let statements = match (&question.sql, question.operation, &question.http) {
            (None, None, Some(request)) => {
                let (method, host, path) = split_http_request(request)?;
                let operation = super::method_class(&method);
                vec![ExplainedStatement {
                    operation,
                    kind: method.clone(),
                    tables_read: vec![format!("{host}{path}")],
                    tables_written: Vec::new(),
                    decision: self.current().decide_http_with_grants(
                        &self.grants(),
                        &facts,
                        &resource.name,
                        operation,
                        (&method, &host, &path),
                        OffsetDateTime::now_utc(),
                    ),
                }]
            }
            (Some(sql_text), None, None) => {
                let Some(dialect) = sql::Dialect::of(resource.protocol) else {
                    return Err(ExplainError::NotSql {
                        resource: resource.name.clone(),
                        protocol: resource.protocol.to_string(),
                    });
                };
                let statements = self.explain_sql(&facts, &resource.name, dialect, sql_text);
                if statements.is_empty() {
                    return Err(ExplainError::EmptySql);
                }
                statements
            }
            (None, Some(operation), None) if question.kubernetes.is_some() => {
                let Some(kube) = &question.kubernetes else {
                    return Err(ExplainError::SqlOrOperation);
                };
                if resource.protocol != super::Protocol::Kubernetes {
                    return Err(ExplainError::NotKubernetes {
                        resource: resource.name.clone(),
                        protocol: resource.protocol.to_string(),
                    });
                }
                let request = super::KubernetesRequest {
                    is_resource_request: kube.is_resource_request,
                    verb: &kube.verb,
                    api_group: &kube.api_group,
                    resource: &kube.resource,
                    subresource: &kube.subresource,
                    namespace: &kube.namespace,
                    name: &kube.name,
                };
                vec![ExplainedStatement {
                    operation,
                    kind: kube.summary.clone(),
                    tables_read: Vec::new(),
                    tables_written: Vec::new(),
                    decision: self.current().decide_kubernetes_with_grants(
                        &self.grants(),
                        &facts,
                        &resource.name,
                        operation,
                        &request,
                        &kube.summary,
                        OffsetDateTime::now_utc(),
                    ),
                }]
            }
            (None, Some(operation), None) => vec![ExplainedStatement {
                operation,
                kind: String::new(),
                tables_read: Vec::new(),
                tables_written: Vec::new(),
                decision: self.decide(&facts, Some(&resource.name), operation),
            }],
            _ => return Err(ExplainError::SqlOrOperation),
        };
        let decision = statements
            .iter()
            .find(|statement| statement.decision.action != Action::Allow)
            .or(statements.first())
            .map(|statement| statement.decision.clone())
            .ok_or(ExplainError::EmptySql)?;
        Ok(Explanation {
            agent: question.agent.clone(),
            resource: resource.name.clone(),
            uid,
            exe,
            statements,
            decision,
        })
    }
}
