//! Human approvals: statements a `review` rule holds until someone decides.
//!
//! One [`ApprovalBroker`] is shared by every session. A session that meets a `review`
//! decision asks it for a [`Hold`] and awaits the hold's [`Resolution`]; only that
//! session waits. Administrators list the holds and approve or deny them through the
//! control API, which passes the approver's `SO_PEERCRED` identity along. Each hold
//! resolves exactly once, whichever comes first: approved, denied, timed out (which
//! denies), or withdrawn (the session went away). "Exactly once" rests on one thing:
//! whoever removes the hold from the broker's table decides it.
//!
//! - [`ids`]: approval ids that are never reused, across restarts too.
//! - [`webhook`]: announcing each hold to configured webhooks, bounded and best effort.

pub mod ids;
pub mod webhook;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use self::{ids::IdAllocator, webhook::Notifier};

/// The longest hold timeout accepted, in a rule or as the default.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest reason an approver may give.
pub const MAX_REASON_CHARS: usize = 1000;

/// A duration in a policy or configuration file that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?}: {why} (write a whole number and a unit: \"1500ms\", \"90s\", \"10m\", \"2h\")"
)]
pub struct DurationError {
    pub text: String,
    pub why: &'static str,
}

/// Parses `90s`, `10m`, `2h`, `1500ms`: a whole number and one unit, from 1 ms to
/// [`MAX_TIMEOUT`]. Hand-written: the format is one number and a unit, and no duration
/// crate is in the tree.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let error = |why| DurationError {
        text: text.to_owned(),
        why,
    };
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| error("no number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        "" => return Err(error("no unit")),
        _ => return Err(error("unknown unit")),
    };
    if duration.is_zero() {
        return Err(error("must be longer than zero"));
    }
    if duration > MAX_TIMEOUT {
        return Err(error("longer than 7 days"));
    }
    Ok(duration)
}

/// A statement held for review, as `GET /v1/approvals` and the webhooks show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatement {
    /// The approval id: what `sluice approve` and `sluice deny` take.
    pub id: u64,
    pub session_id: u64,
    /// The statement's `seq` within its session.
    pub statement_seq: u64,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub resource: String,
    /// The statement with every literal replaced by `?`, as recorded.
    pub sql: String,
    pub kind: String,
    pub operation: String,
    /// The `review` rule that holds it, and the policy's sentence about it.
    pub rule: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub waiting_since: OffsetDateTime,
    pub timeout_seconds: u64,
    /// When the hold times out and the statement is denied.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The verified workload identity of the agent run that asked (repository, actor...),
    /// so the approver sees who is behind it; absent for runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::workload::RunIdentity>,
}

/// What a session knows about the statement it asks to hold.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub session_id: u64,
    pub statement_seq: u64,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub resource: String,
    pub sql: String,
    pub kind: String,
    pub operation: String,
    pub rule: String,
    pub reason: String,
    /// The rule's own timeout; the broker's default when `None`.
    pub timeout: Option<Duration>,
}

/// Who decided a hold: the control connection's peer (`SO_PEERCRED`), or a person
/// signed in to the web console through an identity provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    /// The local uid; `None` for someone signed in through an identity provider.
    pub uid: Option<u32>,
    /// The user name of `uid`, or the provider's name for the person (email).
    pub name: Option<String>,
    /// Who the identity provider says the person is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ApproverIdentity>,
}

/// A person as an OpenID provider vouched for them (the ID token's claims), recorded
/// with each decision they make in the web console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverIdentity {
    /// The provider's issuer URL (`iss`).
    pub issuer: String,
    /// The provider's id for the person (`sub`).
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `preferred_username`, when the provider gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl ApproverIdentity {
    /// Whether this person is the one behind the run `identity` (its actor claim names
    /// them by user name, email or subject, ignoring case).
    pub fn is_behind(&self, identity: &crate::workload::RunIdentity) -> bool {
        let Some(actor) = identity.actor() else {
            return false;
        };
        let email_user = self
            .email
            .as_deref()
            .and_then(|email| email.split_once('@'))
            .map(|(user, _)| user);
        [
            self.username.as_deref(),
            self.email.as_deref(),
            email_user,
            Some(self.subject.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|name| name.eq_ignore_ascii_case(actor))
    }
}

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Denied,
    /// Nobody decided within the timeout: denied.
    TimedOut,
    /// The session went away while waiting.
    Withdrawn,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed_out",
            Self::Withdrawn => "withdrawn",
        }
    }
}

/// The end of a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub id: u64,
    pub outcome: Outcome,
    /// `None` unless a human decided.
    pub approver: Option<Approver>,
    /// The approver's reason, or why the daemon decided.
    pub reason: String,
    pub waited: Duration,
}

/// Why a decision on a hold was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no statement is held for approval {0} (decided, timed out, or never held)")]
    NotFound(u64),
    #[error(
        "uid {uid} may not decide approval {id}: the held statement was sent by a process of the same uid, and nobody approves their own statement"
    )]
    SelfApproval { id: u64, uid: u32 },
    #[error(
        "{who} may not decide approval {id}: the held statement's run was started by them ({actor}), and nobody approves their own statement"
    )]
    SelfApprovalByIdentity { id: u64, who: String, actor: String },
    #[error("approval {0} was withdrawn: the agent's session ended while it waited")]
    Withdrawn(u64),
    #[error("a reason is required (at most {MAX_REASON_CHARS} characters)")]
    BadReason,
}

/// Why a statement could not be held; the session then refuses it (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Ids(#[from] ids::IdError),
}

/// A human's decision, as sent to the waiting session.
struct Verdict {
    approved: bool,
    approver: Approver,
    reason: String,
}

struct Waiting {
    held: HeldStatement,
    verdict: oneshot::Sender<Verdict>,
}

/// The holds of every session, and how to announce them.
pub struct ApprovalBroker {
    holds: Mutex<BTreeMap<u64, Waiting>>,
    ids: Mutex<IdAllocator>,
    default_timeout: Duration,
    notifier: Option<Notifier>,
    /// Bumped whenever a hold is added or leaves the table, so that live views (the
    /// web console's queue) know when to read the list again.
    changes: tokio::sync::watch::Sender<u64>,
    /// The last holds that ended, newest first, for the console's "decided" list.
    decided: Mutex<std::collections::VecDeque<Decided>>,
}

/// How many ended holds [`ApprovalBroker::recent_decisions`] keeps.
pub const RECENT_DECISIONS: usize = 50;

/// A hold that ended, as `GET /v1/approvals/decided` lists it: what was held, how it
/// ended, and who decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    pub held: HeldStatement,
    /// `approved`, `denied`, `timed_out` or `withdrawn`.
    pub outcome: String,
    /// Who decided; `null` unless a human did.
    pub approver: Option<Approver>,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub decided_at: OffsetDateTime,
}

impl ApprovalBroker {
    /// A broker whose ids live in `id_file`; holds without a rule timeout wait
    /// `default_timeout`; each hold is announced through `notifier`, if any.
    pub fn new(
        id_file: &std::path::Path,
        default_timeout: Duration,
        notifier: Option<Notifier>,
    ) -> Result<Self, ids::IdError> {
        Ok(Self {
            holds: Mutex::new(BTreeMap::new()),
            ids: Mutex::new(IdAllocator::open(id_file)?),
            default_timeout,
            notifier,
            changes: tokio::sync::watch::Sender::new(0),
            decided: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Changes whenever the list of holds does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// The last holds that ended (at most [`RECENT_DECISIONS`]), newest first.
    pub fn recent_decisions(&self) -> Vec<Decided> {
        self.decided
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn remember(
        &self,
        held: HeldStatement,
        outcome: Outcome,
        approver: Option<Approver>,
        reason: &str,
    ) {
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        decided.push_front(Decided {
            held,
            outcome: outcome.as_str().to_owned(),
            approver,
            reason: reason.to_owned(),
            decided_at: OffsetDateTime::now_utc(),
        });
        decided.truncate(RECENT_DECISIONS);
    }

    /// How long a hold waits when its rule names no timeout.
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Waiting>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a statement until it is decided, times out or the returned [`Hold`] is
    /// dropped. Blocking only for the rare id reservation (one small fsync).
    pub fn hold(self: &Arc<Self>, request: HoldRequest) -> Result<Hold, HoldError> {
        let id = self
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate()?;
        let timeout = request.timeout.unwrap_or(self.default_timeout);
        let now = OffsetDateTime::now_utc();
        let held = HeldStatement {
            id,
            session_id: request.session_id,
            statement_seq: request.statement_seq,
            agent: request.agent,
            pid: request.pid,
            uid: request.uid,
            resource: request.resource,
            sql: request.sql,
            kind: request.kind,
            operation: request.operation,
            rule: request.rule,
            reason: request.reason,
            waiting_since: now,
            timeout_seconds: timeout.as_secs(),
            expires_at: now + timeout,
            // The asking process waits for the answer, so its run is still bound.
            identity: crate::workload::runs::identity_of_pid(request.pid),
        };
        let (sender, receiver) = oneshot::channel();
        tracing::info!(
            approval = id,
            rule = %held.rule,
            timeout_s = timeout.as_secs(),
            "statement held for approval"
        );
        // In the table before anyone hears of it, so a quick decision finds it.
        let announcement = self.notifier.as_ref().map(|_| held.clone());
        crate::metrics::global().held_approvals.inc();
        self.table().insert(
            id,
            Waiting {
                held,
                verdict: sender,
            },
        );
        self.changed();
        if let (Some(notifier), Some(held)) = (&self.notifier, announcement) {
            notifier.announce(&held);
        }
        Ok(Hold {
            broker: Arc::clone(self),
            id,
            receiver,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
            started: Instant::now(),
            resolved: false,
        })
    }

    /// Every statement waiting now, oldest first.
    pub fn list(&self) -> Vec<HeldStatement> {
        self.table()
            .values()
            .map(|waiting| waiting.held.clone())
            .collect()
    }

    /// Approves or denies hold `id` for `approver`. The approver may not share the
    /// held process's uid.
    pub fn decide(
        &self,
        id: u64,
        approve: bool,
        approver: Approver,
        reason: &str,
    ) -> Result<HeldStatement, DecideError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(DecideError::BadReason);
        }
        let waiting = {
            let mut table = self.table();
            let held = table.get(&id).ok_or(DecideError::NotFound(id))?;
            if approver.uid == Some(held.held.uid) {
                return Err(DecideError::SelfApproval {
                    id,
                    uid: held.held.uid,
                });
            }
            if let (Some(person), Some(run)) = (&approver.identity, &held.held.identity)
                && person.is_behind(run)
            {
                return Err(DecideError::SelfApprovalByIdentity {
                    id,
                    who: approver
                        .name
                        .clone()
                        .unwrap_or_else(|| person.subject.clone()),
                    actor: run.actor().unwrap_or_default().to_owned(),
                });
            }
            table.remove(&id).ok_or(DecideError::NotFound(id))?
        };
        let outcome = if approve {
            Outcome::Approved
        } else {
            Outcome::Denied
        };
        self.remember(
            waiting.held.clone(),
            outcome,
            Some(approver.clone()),
            reason,
        );
        self.changed();
        crate::metrics::global().held_approvals.dec();
        let held = waiting.held;
        waiting
            .verdict
            .send(Verdict {
                approved: approve,
                approver,
                reason: reason.to_owned(),
            })
            .map_err(|_| DecideError::Withdrawn(id))?;
        Ok(held)
    }

    /// Takes hold `id` out of the table, ended for `outcome`; `true` when it was still
    /// there.
    fn remove(&self, id: u64, outcome: Outcome, reason: &str) -> bool {
        let removed = self.table().remove(&id);
        let Some(waiting) = removed else {
            return false;
        };
        self.remember(waiting.held, outcome, None, reason);
        crate::metrics::global().held_approvals.dec();
        self.changed();
        true
    }
}

/// One held statement, owned by the session that waits on it. Dropping it before it
/// resolved withdraws it.
pub struct Hold {
    broker: Arc<ApprovalBroker>,
    id: u64,
    receiver: oneshot::Receiver<Verdict>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    started: Instant,
    resolved: bool,
}

impl Hold {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the decision or the timeout. Cancel-safe: dropping the future and
    /// calling again keeps waiting on the same hold.
    pub async fn resolution(&mut self) -> Resolution {
        let verdict = match tokio::time::timeout_at(self.deadline, &mut self.receiver).await {
            Ok(verdict) => verdict.ok(),
            // The timeout decides only if it takes the hold out first; otherwise a
            // decision took it and its verdict is on the way.
            Err(_)
                if self.broker.remove(
                    self.id,
                    Outcome::TimedOut,
                    &format!("nobody approved it within {}", describe(self.timeout)),
                ) =>
            {
                self.resolved = true;
                tracing::info!(approval = self.id, "approval timed out: denied");
                return Resolution {
                    id: self.id,
                    outcome: Outcome::TimedOut,
                    approver: None,
                    reason: format!("nobody approved it within {}", describe(self.timeout)),
                    waited: self.started.elapsed(),
                };
            }
            Err(_) => (&mut self.receiver).await.ok(),
        };
        self.resolved = true;
        let waited = self.started.elapsed();
        match verdict {
            Some(verdict) => {
                let outcome = if verdict.approved {
                    Outcome::Approved
                } else {
                    Outcome::Denied
                };
                tracing::info!(
                    approval = self.id,
                    outcome = outcome.as_str(),
                    approver_uid = ?verdict.approver.uid,
                    "approval decided"
                );
                Resolution {
                    id: self.id,
                    outcome,
                    approver: Some(verdict.approver),
                    reason: verdict.reason,
                    waited,
                }
            }
            // The sender went away without a verdict: fail closed.
            None => Resolution {
                id: self.id,
                outcome: Outcome::Denied,
                approver: None,
                reason: "the approval was lost".into(),
                waited,
            },
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.resolved
            && self.broker.remove(
                self.id,
                Outcome::Withdrawn,
                "the agent's session ended while the statement waited",
            )
        {
            tracing::info!(
                approval = self.id,
                "approval withdrawn: the session ended while it waited"
            );
        }
    }
}

/// `90s`, `5m`, `2h` for messages.
pub fn describe(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds == 0 {
        format!("{}ms", duration.as_millis())
    } else if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(dir: &tempfile::TempDir, timeout: Duration) -> Arc<ApprovalBroker> {
        Arc::new(ApprovalBroker::new(&dir.path().join("ids"), timeout, None).expect("broker"))
    }

    fn request(uid: u32, timeout: Option<Duration>) -> HoldRequest {
        HoldRequest {
            session_id: 7,
            statement_seq: 3,
            agent: "bot".into(),
            pid: 42,
            uid,
            resource: "db".into(),
            sql: "DELETE FROM t WHERE id = ?".into(),
            kind: "DELETE".into(),
            operation: "write".into(),
            rule: "writes-need-review".into(),
            reason: "rule sends to review".into(),
            timeout,
        }
    }

    fn admin(uid: u32) -> Approver {
        Approver {
            uid: Some(uid),
            name: Some("admin".into()),
            identity: None,
        }
    }

    #[test]
    fn a_person_is_behind_the_run_their_actor_claim_names() {
        let run = crate::workload::RunIdentity {
            issuer: "github".into(),
            issuer_url: "https://token.actions.githubusercontent.com".into(),
            subject: "repo:acme/api:ref:refs/heads/main".into(),
            claims: [("actor".to_owned(), "Alice".to_owned())].into(),
            token_sha256: String::new(),
            verified_at: OffsetDateTime::UNIX_EPOCH,
        };
        let person = |username: Option<&str>, email: Option<&str>| ApproverIdentity {
            issuer: "https://login.example.com".into(),
            subject: "00u1".into(),
            email: email.map(str::to_owned),
            username: username.map(str::to_owned),
            groups: vec!["sre".into()],
        };
        assert!(person(Some("alice"), None).is_behind(&run));
        assert!(person(None, Some("alice@example.com")).is_behind(&run));
        assert!(!person(Some("bob"), Some("bob@example.com")).is_behind(&run));
        let mut anonymous = run.clone();
        anonymous.claims.clear();
        assert!(!person(Some("alice"), None).is_behind(&anonymous));
    }

    #[test]
    fn durations_parse_with_a_unit_and_within_bounds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "90", "s", "0s", "1.5s", "-1s", "10 m", "8d", "200h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn an_approval_resolves_the_hold_once_with_the_approver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = broker(&dir, Duration::from_secs(60));
        let mut hold = broker.hold(request(1000, None)).expect("hold");
        let listed = broker.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].timeout_seconds, 60);
        broker
            .decide(hold.id(), true, admin(0), "ticket OPS-42")
            .expect("approved");
        let resolution = hold.resolution().await;
        assert_eq!(resolution.outcome, Outcome::Approved);
        assert_eq!(resolution.approver, Some(admin(0)));
        assert_eq!(resolution.reason, "ticket OPS-42");
        assert!(broker.list().is_empty());
        let recent = broker.recent_decisions();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].outcome, "approved");
        assert_eq!(recent[0].approver, Some(admin(0)));
        assert_eq!(recent[0].reason, "ticket OPS-42");
        // A second decision finds nothing.
        assert_eq!(
            broker.decide(hold.id(), false, admin(0), "late"),
            Err(DecideError::NotFound(hold.id()))
        );
    }

    #[tokio::test]
    async fn the_agents_own_uid_cannot_decide_and_a_reason_is_required() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = broker(&dir, Duration::from_secs(60));
        let hold = broker.hold(request(1000, None)).expect("hold");
        assert!(matches!(
            broker.decide(hold.id(), true, admin(1000), "me"),
            Err(DecideError::SelfApproval { uid: 1000, .. })
        ));
        assert_eq!(
            broker.decide(hold.id(), true, admin(0), "  "),
            Err(DecideError::BadReason)
        );
        assert_eq!(broker.list().len(), 1, "still held");
    }

    #[tokio::test]
    async fn a_rule_timeout_denies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = broker(&dir, Duration::from_secs(300));
        let mut hold = broker
            .hold(request(1000, Some(Duration::from_millis(50))))
            .expect("hold");
        let resolution = hold.resolution().await;
        assert_eq!(resolution.outcome, Outcome::TimedOut);
        assert_eq!(resolution.approver, None);
        assert!(broker.list().is_empty());
        assert_eq!(
            broker.decide(hold.id(), true, admin(0), "too late"),
            Err(DecideError::NotFound(hold.id()))
        );
    }

    #[tokio::test]
    async fn dropping_a_hold_withdraws_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = broker(&dir, Duration::from_secs(60));
        let hold = broker.hold(request(1000, None)).expect("hold");
        let id = hold.id();
        drop(hold);
        assert!(broker.list().is_empty());
        assert_eq!(
            broker.decide(id, true, admin(0), "gone"),
            Err(DecideError::NotFound(id))
        );
    }
}
