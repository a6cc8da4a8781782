//! Just-in-time grants, daemon side: create, revoke, expire, and keep the live policy's
//! view of them current.
//!
//! The decision semantics live in `policy::grants`; this module owns their life cycle.
//! Every change is written to the store (flushed) before the live view changes, so a
//! grant in force is always on disk. Each creation, expiry and revocation is also a
//! `grant` event in the audit log, with who (the control peer's uid and name) and why:
//! a grant is recorded before it takes effect, and refused when it cannot be. Expiry
//! needs no one: decisions ignore a grant past its `expires_at` at once, and
//! [`run_expiry`] records each expiry once, shortly after it happens.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::{
    events::{Activity, Context, Event},
    policy::{Grant, GrantState, Operation, PolicyHandle},
    store::{Durability, Store, StoreError},
};

/// The longest a grant may run: grants are for a task, not a standing permission.
pub const MAX_GRANT_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a grant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{0}")]
    Invalid(String),
    #[error("no grant {0}")]
    NotFound(u64),
    #[error("grant {id} is already {state}")]
    NotActive { id: u64, state: &'static str },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("grant {id} is {change}, but its audit event could not be recorded: {source}")]
    Unrecorded {
        id: u64,
        change: &'static str,
        source: StoreError,
    },
}

/// A grant as requested.
#[derive(Clone, Debug)]
pub struct NewGrant {
    pub agent: String,
    pub resource: String,
    pub operations: Vec<Operation>,
    pub duration: Duration,
    pub reason: String,
}

/// Who changed a grant: the control connection's `SO_PEERCRED` uid and its user name.
#[derive(Clone, Debug)]
pub struct Actor {
    pub uid: u32,
    pub name: Option<String>,
}

impl Actor {
    /// The authorized control peer.
    pub fn from_peer(peer: &crate::control::PeerInfo) -> Self {
        Self {
            uid: peer.uid,
            name: peer.user.clone(),
        }
    }
}

/// The daemon's grants.
pub struct GrantBook {
    store: Store,
    /// To append events from the blocking threads the control API calls in on.
    runtime: tokio::runtime::Handle,
    policy: Arc<PolicyHandle>,
    /// Serializes changes, so ids are handed out once and the live view follows the
    /// store in order.
    changes: std::sync::Mutex<()>,
    /// Woken when a grant is created, so the expiry task re-plans.
    created: Notify,
}

impl GrantBook {
    /// Loads the grants from the store into the live policy. Blocking; must be called
    /// inside the daemon's runtime.
    pub fn load(store: Store, policy: Arc<PolicyHandle>) -> Result<Self, GrantError> {
        let book = Self {
            store,
            runtime: tokio::runtime::Handle::current(),
            policy,
            changes: std::sync::Mutex::new(()),
            created: Notify::new(),
        };
        book.refresh()?;
        Ok(book)
    }

    /// Every grant, newest first.
    pub fn list(&self) -> Result<Vec<Grant>, GrantError> {
        let mut grants = self.store.grants()?;
        grants.reverse();
        Ok(grants)
    }

    /// Creates a grant that is in force from now on. Blocking.
    pub fn create(&self, request: NewGrant, by: &Actor) -> Result<Grant, GrantError> {
        if matches!(request.agent.as_str(), "" | "." | ".." | "*") || request.agent.contains('/') {
            return Err(GrantError::Invalid(format!(
                "agent must be one managed cgroup name, not {:?}",
                request.agent
            )));
        }
        if self.policy.current().resource(&request.resource).is_none() {
            return Err(GrantError::Invalid(format!(
                "the policy defines no resource `{}`",
                request.resource
            )));
        }
        if request.operations.is_empty() {
            return Err(GrantError::Invalid(
                "a grant needs at least one operation class".into(),
            ));
        }
        if request.duration.is_zero() || request.duration > MAX_GRANT_DURATION {
            return Err(GrantError::Invalid(format!(
                "the duration must be between 1s and {}d",
                MAX_GRANT_DURATION.as_secs() / 86_400
            )));
        }
        if request.reason.trim().is_empty() {
            return Err(GrantError::Invalid("a grant needs a reason".into()));
        }
        let mut operations = request.operations;
        operations.sort();
        operations.dedup();

        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        let grant = Grant {
            id: self.store.last_grant_id()? + 1,
            agent: request.agent,
            resource: request.resource,
            operations,
            reason: request.reason,
            created_at: now,
            expires_at: now + request.duration,
            created_by_uid: by.uid,
            created_by: by.name.clone(),
            state: GrantState::Active,
            ended_at: None,
            revoked_by_uid: None,
            revoked_by: None,
            revoke_reason: None,
        };
        self.record(&grant, "created", Some(by), Some(grant.reason.clone()))
            .map_err(|source| GrantError::Unrecorded {
                id: grant.id,
                change: "not created",
                source,
            })?;
        self.store.put_grant(&grant)?;
        self.refresh()?;
        self.created.notify_one();
        tracing::info!(
            grant = grant.id,
            agent = %grant.agent,
            resource = %grant.resource,
            operations = ?grant.operation_names(),
            expires_at = %grant.expires_at,
            by_uid = by.uid,
            by = by.name.as_deref().unwrap_or_default(),
            reason = %grant.reason,
            "grant created"
        );
        Ok(grant)
    }

    /// Revokes an active grant: the next decision is taken without it. Blocking.
    pub fn revoke(&self, id: u64, by: &Actor, reason: Option<String>) -> Result<Grant, GrantError> {
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut grant = self.store.get_grant(id)?.ok_or(GrantError::NotFound(id))?;
        let now = OffsetDateTime::now_utc();
        if grant.state != GrantState::Active {
            return Err(GrantError::NotActive {
                id,
                state: grant.state.as_str(),
            });
        }
        if !grant.in_force_at(now) {
            // Past its expiry: it expired, whatever the expiry task has recorded yet.
            return Err(GrantError::NotActive {
                id,
                state: GrantState::Expired.as_str(),
            });
        }
        grant.state = GrantState::Revoked;
        grant.ended_at = Some(now);
        grant.revoked_by_uid = Some(by.uid);
        grant.revoked_by = by.name.clone();
        grant.revoke_reason = reason;
        // In force at once; then recorded (a failure is reported, the revocation stands).
        self.store.put_grant(&grant)?;
        self.refresh()?;
        self.record(&grant, "revoked", Some(by), grant.revoke_reason.clone())
            .map_err(|source| GrantError::Unrecorded {
                id,
                change: "revoked",
                source,
            })?;
        tracing::info!(
            grant = grant.id,
            agent = %grant.agent,
            resource = %grant.resource,
            by_uid = by.uid,
            by = by.name.as_deref().unwrap_or_default(),
            reason = grant.revoke_reason.as_deref().unwrap_or_default(),
            "grant revoked"
        );
        Ok(grant)
    }

    /// Records every active grant whose time is up as expired. Blocking.
    fn expire_due(&self) -> Result<(), GrantError> {
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        for mut grant in self.store.grants()? {
            if grant.state != GrantState::Active || grant.in_force_at(now) {
                continue;
            }
            // Recorded first: if that fails, the grant stays active on disk (decisions
            // already ignore it) and the next pass tries again, so the expiry is
            // recorded exactly once.
            self.record(&grant, "expired", None, None)?;
            grant.state = GrantState::Expired;
            grant.ended_at = Some(grant.expires_at);
            self.store.put_grant(&grant)?;
            tracing::info!(
                grant = grant.id,
                agent = %grant.agent,
                resource = %grant.resource,
                expires_at = %grant.expires_at,
                "grant expired"
            );
        }
        self.refresh()
    }

    /// Appends the `grant` event for `change`, durably. Blocking.
    fn record(
        &self,
        grant: &Grant,
        change: &str,
        by: Option<&Actor>,
        reason: Option<String>,
    ) -> Result<u64, StoreError> {
        let event = Event::now(
            Context {
                agent: Some(grant.agent.clone()),
                resource: Some(grant.resource.clone()),
                ..Context::default()
            },
            Activity::Grant {
                grant_id: grant.id,
                change: change.to_owned(),
                agent: grant.agent.clone(),
                resource: grant.resource.clone(),
                operations: grant.operation_names(),
                expires_at: Some(grant.expires_at),
                by_uid: by.map(|actor| actor.uid),
                by_name: by.and_then(|actor| actor.name.clone()),
                reason,
            },
        );
        self.runtime
            .block_on(self.store.append(event, Durability::Durable))
    }

    /// Hands the live policy the active grants, as stored.
    fn refresh(&self) -> Result<(), GrantError> {
        let active = self
            .store
            .grants()?
            .into_iter()
            .filter(|grant| grant.state == GrantState::Active)
            .collect();
        self.policy.set_grants(active);
        Ok(())
    }

    /// When the next active grant runs out.
    fn next_expiry(&self) -> Option<OffsetDateTime> {
        self.policy
            .grants()
            .iter()
            .map(|grant| grant.expires_at)
            .min()
    }
}

/// How long to wait before retrying after the store failed to record an expiry.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// Records expiries as they happen, for the daemon's lifetime.
pub async fn run_expiry(book: Arc<GrantBook>) {
    loop {
        let wait = match book.next_expiry() {
            None => Duration::from_secs(3600),
            Some(at) => (at - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = book.created.notified() => continue,
        }
        let expiring = Arc::clone(&book);
        let result = tokio::task::spawn_blocking(move || expiring.expire_due()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot record a grant's expiry (decisions already ignore it)");
                tokio::time::sleep(EXPIRY_RETRY).await;
            }
            Err(error) => {
                tracing::error!(%error, "the grant expiry task failed");
                tokio::time::sleep(EXPIRY_RETRY).await;
            }
        }
    }
}

/// Parses a duration like `90s`, `30m`, `2h` or `1d` (one number, one unit).
///
/// Hand-written: the four units grants need do not justify a crate.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 2h or 1d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 90s, 30m, 2h or 1d"
            ));
        }
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_one_number_and_one_unit() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "",
            "30",
            "m",
            "1.5h",
            "-3s",
            "3 s",
            "3w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
