//! Restore-drill verdicts, stored beside a backup (`backup/<id>/verify/<stamp>`), one object
//! per drill, so the manifest is never rewritten. `list` and `rpo` read the newest one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{layout, Repository};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub backup_id: String,
    pub verified_at: DateTime<Utc>,
    /// True only when every check passed.
    pub ok: bool,
    pub duration_seconds: f64,
    /// Server version that ran the drill (e.g. "15.18").
    pub pg_version: String,
    /// One line for `list` and logs.
    pub summary: String,
    /// The drill's full report (checks, their results, first errors verbatim).
    pub report: serde_json::Value,
}

/// Store a verdict; returns its key.
pub fn store(repo: &Repository, v: &Verdict) -> crate::Result<String> {
    let stamp = v.verified_at.format("%Y%m%dT%H%M%S%.6fZ").to_string();
    let key = layout::verdict_key(&v.backup_id, &stamp);
    repo.put_json(&key, v)?;
    Ok(key)
}

/// The newest verdict for a backup, if it was ever verified.
pub fn latest(repo: &Repository, backup_id: &str) -> crate::Result<Option<Verdict>> {
    let objects = repo.storage().list(&layout::verdict_prefix(backup_id))?;
    match objects.last() {
        Some(o) => Ok(Some(repo.get_json(&o.key)?)),
        None => Ok(None),
    }
}

/// [`latest`] for listings: a damaged verdict must not hide the backups, so it counts as never
/// verified (with a warning).
pub fn latest_or_none(repo: &Repository, backup_id: &str) -> Option<Verdict> {
    latest(repo, backup_id).unwrap_or_else(|err| {
        tracing::warn!("backup {backup_id}: its newest verification verdict cannot be read ({err})");
        None
    })
}
