//! Pins: a pinned backup is kept whatever the rules say (`pgkeep pin ID` / `unpin ID`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RetentionError;
use crate::repo::{layout, Repository};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinReport {
    pub backup: String,
    pub pinned: bool,
    pub pinned_at: Option<DateTime<Utc>>,
}

pub fn pin(repo: &Repository, id: &str) -> crate::Result<PinReport> {
    if repo.storage().head(&layout::manifest_key(id))?.is_none() {
        return Err(RetentionError::NotComplete { id: id.to_string() }.into());
    }
    let r = PinReport { backup: id.to_string(), pinned: true, pinned_at: Some(Utc::now()) };
    repo.put_json(&layout::pin_key(id), &r)?;
    repo.storage().sync_object(&layout::pin_key(id))?;
    Ok(r)
}

pub fn unpin(repo: &Repository, id: &str) -> crate::Result<PinReport> {
    if repo.storage().head(&layout::pin_key(id))?.is_none() {
        return Err(RetentionError::NotPinned { id: id.to_string() }.into());
    }
    remove(repo, id)?;
    Ok(PinReport { backup: id.to_string(), pinned: false, pinned_at: None })
}

/// Drop a pin (absent is fine): after unpin, and after its backup was deleted.
pub fn remove(repo: &Repository, id: &str) -> crate::Result<()> {
    repo.storage().delete_durable(&layout::pin_key(id))?;
    Ok(())
}

/// Ids of pinned backups.
pub fn pinned(repo: &Repository) -> crate::Result<BTreeSet<String>> {
    let prefix = format!("{}/", layout::PIN_PREFIX);
    Ok(repo
        .storage()
        .list(layout::PIN_PREFIX)?
        .into_iter()
        .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string))
        .collect())
}
