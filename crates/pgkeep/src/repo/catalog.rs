//! The backup catalog: which backups exist and in what state, read from the repository itself
//! (no separate index that could disagree with the objects).
//!
//! One unreadable record must not stop the rest: a manifest or pending record that exists but
//! cannot be read is listed as `damaged` (with the reason), never chosen by restore, and never
//! removed as if it were a leftover (the pending record may be the only record of snapshots).

use serde::Serialize;

use super::layout;
use super::lock;
use super::manifest::{ManifestSummary, StartedMarker};
use super::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    /// Manifest committed: usable.
    Complete,
    /// Started but never committed (interrupted, killed or failed): never restored.
    Incomplete,
    /// Started, not committed, and the process that started it still holds the backup lock.
    /// Only [`list`] tells it from `incomplete`.
    Running,
    /// Snapshot backup taken with `--no-wait` whose snapshots are not all completed yet:
    /// committed later by `pgkeep list` / `pgkeep backup --finish`; never restored until then.
    Pending,
    /// Its manifest or pending record exists but cannot be read: never restored, never
    /// removed by clean-up (only `pgkeep expire --backup ID`).
    Damaged,
}

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub id: String,
    pub state: BackupState,
    pub summary: Option<ManifestSummary>,
    pub started: Option<StartedMarker>,
    /// Why a `damaged` backup's record cannot be read (one line).
    pub damaged: Option<String>,
}

/// Every backup's id and state, oldest first, from which objects exist: no manifest is read
/// (manifests carry the whole file list), so this is cheap enough for every backup's start.
/// A backup with a manifest or pending record is reported `complete` or `pending` even when
/// that record is damaged, so callers that remove `incomplete` backups never touch it; and
/// nothing is reported `running` (callers hold the backup lock).
pub fn states(repo: &Repository) -> crate::Result<Vec<(String, BackupState)>> {
    let mut out = Vec::new();
    for id in repo.storage().list_dirs(layout::BACKUP_PREFIX)? {
        let state = if repo.storage().head(&layout::manifest_key(&id))?.is_some() {
            BackupState::Complete
        } else if repo.storage().head(&layout::pending_key(&id))?.is_some() {
            BackupState::Pending
        } else {
            BackupState::Incomplete
        };
        out.push((id, state));
    }
    Ok(out)
}

/// A record that exists but cannot be read is `Err(reason)`; absent is `Ok(None)`.
fn read_record(repo: &Repository, key: &str) -> Result<Option<ManifestSummary>, String> {
    match repo.get_json(key) {
        Ok(s) => Ok(Some(s)),
        Err(crate::Error::Storage(e)) if e.is_not_found() => Ok(None),
        Err(e) => Err(reason(&e)),
    }
}

/// Every backup directory in the repository, oldest first (ids sort by time).
pub fn list(repo: &Repository) -> crate::Result<Vec<CatalogEntry>> {
    let ids = repo.storage().list_dirs(layout::BACKUP_PREFIX)?;
    let mut out = Vec::with_capacity(ids.len());
    // Probed once, only if some backup has no manifest: who holds the backup lock now.
    let mut holder: Option<Option<String>> = None;
    for id in ids {
        let (mut state, summary, damaged) = match read_record(repo, &layout::manifest_key(&id)) {
            Ok(Some(s)) => (BackupState::Complete, Some(s), None),
            Err(why) => (BackupState::Damaged, None, Some(format!("the manifest cannot be read: {why}"))),
            Ok(None) => match read_record(repo, &layout::pending_key(&id)) {
                Ok(Some(p)) => (BackupState::Pending, Some(p), None),
                Ok(None) => (BackupState::Incomplete, None, None),
                Err(why) => (BackupState::Damaged, None, Some(format!("the pending record cannot be read: {why}"))),
            },
        };
        // The start marker only describes backups without a manifest.
        let started: Option<StartedMarker> =
            if summary.is_none() { repo.get_json(&layout::backup_started_key(&id)).ok() } else { None };
        if let (BackupState::Incomplete, Some(m)) = (state, &started) {
            let held = holder.get_or_insert_with(|| lock::held_by(repo, "backup"));
            if held.as_deref() == Some(lock::holder_line(m.pid, &m.host).as_str()) {
                state = BackupState::Running;
            }
        }
        out.push(CatalogEntry { id, state, summary, started, damaged });
    }
    Ok(out)
}

/// Complete backups only, oldest first. Damaged ones are skipped with a warning: they are
/// never chosen, and they stop nothing else.
pub fn complete(repo: &Repository) -> crate::Result<Vec<ManifestSummary>> {
    let mut out = Vec::new();
    for e in list(repo)? {
        match (e.state, e.summary) {
            (BackupState::Complete, Some(s)) => out.push(s),
            (BackupState::Damaged, _) => warn_skipped(&e.id, &e.damaged.unwrap_or_default()),
            _ => {}
        }
    }
    Ok(out)
}

/// The newest complete backup that `wanted` accepts, reading manifests newest first and
/// stopping at it (a repository of many backups is not read whole to find the last one).
/// Damaged ones are skipped with the same warning as [`complete`].
pub fn newest_complete(
    repo: &Repository,
    wanted: impl Fn(&ManifestSummary) -> bool,
) -> crate::Result<Option<ManifestSummary>> {
    let mut ids = repo.storage().list_dirs(layout::BACKUP_PREFIX)?;
    ids.sort();
    for id in ids.iter().rev() {
        match read_record(repo, &layout::manifest_key(id)) {
            Ok(Some(s)) if wanted(&s) => return Ok(Some(s)),
            Ok(_) => {}
            Err(why) => warn_skipped(id, &format!("the manifest cannot be read: {why}")),
        }
    }
    Ok(None)
}

/// A damaged backup left out of a choice, and how to remove it.
fn warn_skipped(id: &str, detail: &str) {
    tracing::warn!("backup {id} is damaged and skipped ({detail}); hint: `pgkeep expire --backup {id}` removes it");
}

/// Why a record cannot be read, in one line for `list` and messages (the error's own hint is
/// dropped: the caller says what to do with a damaged backup).
pub fn reason(e: &crate::Error) -> String {
    let s = e.to_string();
    s.split_once("; hint: ").map(|(r, _)| r.to_string()).unwrap_or(s)
}
