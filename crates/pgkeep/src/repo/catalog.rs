//! The backup catalog: which backups exist and in what state, read from the repository itself
//! (no separate index that could disagree with the objects).

use serde::Serialize;

use super::layout;
use super::manifest::{ManifestSummary, StartedMarker};
use super::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    /// Manifest committed: usable.
    Complete,
    /// Started but never committed (interrupted, failed, or still running): never restored.
    Incomplete,
    /// Snapshot backup taken with `--no-wait` whose snapshots are not all completed yet:
    /// committed later by `pgkeep list` / `pgkeep backup --finish`; never restored until then.
    Pending,
}

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub id: String,
    pub state: BackupState,
    pub summary: Option<ManifestSummary>,
    pub started: Option<StartedMarker>,
}

/// Every backup directory in the repository, oldest first (ids sort by time).
pub fn list(repo: &Repository) -> crate::Result<Vec<CatalogEntry>> {
    let ids = repo.storage().list_dirs(layout::BACKUP_PREFIX)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let summary: Option<ManifestSummary> = match repo.get_json(&layout::manifest_key(&id)) {
            Ok(s) => Some(s),
            Err(crate::Error::Storage(e)) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let started: Option<StartedMarker> = repo.get_json(&layout::backup_started_key(&id)).ok();
        let mut state = if summary.is_some() { BackupState::Complete } else { BackupState::Incomplete };
        let mut summary = summary;
        if summary.is_none() {
            let key = crate::backup::snapshot::run::pending_key(&id);
            if let Ok(p) = repo.get_json::<ManifestSummary>(&key) {
                summary = Some(p);
                state = BackupState::Pending;
            }
        }
        out.push(CatalogEntry { id, state, summary, started });
    }
    Ok(out)
}

/// Complete backups only, oldest first.
pub fn complete(repo: &Repository) -> crate::Result<Vec<ManifestSummary>> {
    Ok(list(repo)?.into_iter().filter(|e| e.state == BackupState::Complete).filter_map(|e| e.summary).collect())
}
