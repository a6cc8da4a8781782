//! Just-in-time grants on disk, so they survive a restart of the daemon.
//!
//! Grants are few and written by administrators, so they bypass the group-commit
//! writer: each write goes straight to the `grants` tree and is flushed before the
//! call returns, so a grant the CLI reported as created or revoked is on disk.

use super::{Store, StoreError};
use crate::policy::Grant;

impl Store {
    /// Writes (creates or updates) a grant and flushes it. Blocking.
    pub fn put_grant(&self, grant: &Grant) -> Result<(), StoreError> {
        let value = serde_json::to_vec(grant).map_err(|source| StoreError::EncodeGrant {
            id: grant.id,
            source,
        })?;
        self.inner
            .grants
            .insert(grant.id.to_be_bytes(), value)
            .map_err(StoreError::Commit)?;
        self.inner.grants.flush().map_err(StoreError::Flush)?;
        Ok(())
    }

    /// Every grant ever made, oldest first.
    pub fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.inner
            .grants
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(StoreError::Read)?;
                decode_grant(&key, &value)
            })
            .collect()
    }

    /// One grant by id.
    pub fn get_grant(&self, id: u64) -> Result<Option<Grant>, StoreError> {
        let key = id.to_be_bytes();
        self.inner
            .grants
            .get(key)
            .map_err(StoreError::Read)?
            .map(|value| decode_grant(&key, &value))
            .transpose()
    }

    /// The highest grant id stored, 0 when none.
    pub fn last_grant_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .grants
            .last()
            .map_err(StoreError::Read)?
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }
}

fn decode_grant(key: &[u8], value: &[u8]) -> Result<Grant, StoreError> {
    let key = <[u8; 8]>::try_from(key).map_or_else(
        |_| format!("grants/<{} byte key>", key.len()),
        |id| format!("grants/{}", u64::from_be_bytes(id)),
    );
    serde_json::from_slice(value).map_err(|source| StoreError::Decode { key, source })
}
