//! `pgkeep expire --backup ID`: delete one backup, snapshots included (the primitive that
//! retention policies build on).
//!
//! Order: the manifest (or pending record) goes first, so the backup is unusable before any
//! of its parts disappears; then its snapshots; then the rest of its objects. A snapshot that
//! cannot be deleted keeps the backup on record (incomplete, with its snapshot list) so that
//! running expire again retries.

use serde::Serialize;

use super::run::{delete_records, pending_key, snapshots_key, SnapshotProgress};
use super::{records_from_values, SnapshotConfig, SnapshotError, SnapshotRecord};
use crate::repo::lock::RepoLock;
use crate::repo::manifest::Manifest;
use crate::repo::{layout, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    pub backup: String,
    pub driver: Option<String>,
    /// Snapshot ids deleted.
    pub deleted_snapshots: Vec<String>,
    /// True when every object of the backup is gone from the repository.
    pub removed: bool,
}

fn read_opt<T: serde::de::DeserializeOwned>(repo: &Repository, key: &str) -> crate::Result<Option<T>> {
    match repo.get_json(key) {
        Ok(v) => Ok(Some(v)),
        Err(crate::Error::Storage(e)) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn expire(repo: &Repository, cfg: &SnapshotConfig, id: &str) -> crate::Result<ExpireReport> {
    if !crate::backup::id::is_backup_id(id) {
        return Err(SnapshotError::Config(format!(
            "{id:?} is not a backup id; hint: `pgkeep list` shows the ids (e.g. 20261121-023000F)"
        ))
        .into());
    }
    let _lock = RepoLock::acquire(repo, "backup")?;
    let manifest: Option<Manifest> = read_opt(repo, &layout::manifest_key(id))?;
    let pending: Option<Manifest> = read_opt(repo, &pending_key(id))?;
    let progress: Option<SnapshotProgress> = read_opt(repo, &snapshots_key(id))?;
    let exists = manifest.is_some()
        || pending.is_some()
        || progress.is_some()
        || repo.storage().head(&layout::backup_started_key(id))?.is_some();
    if !exists {
        return Err(
            crate::repo::RepoError::NoSuchBackup { location: repo.location().to_string(), id: id.to_string() }.into()
        );
    }
    let mut recs: Vec<SnapshotRecord> = Vec::new();
    let mut driver = None;
    for m in manifest.iter().chain(pending.iter()) {
        driver = Some(m.driver.clone());
        recs.extend(records_from_values(id, &m.snapshots)?);
    }
    if let Some(p) = &progress {
        for r in &p.snapshots {
            if !recs.iter().any(|x| x.snapshot_id == r.snapshot_id) {
                recs.push(r.clone());
            }
        }
    }
    // Unusable first.
    if !recs.is_empty() {
        repo.put_json(&snapshots_key(id), &SnapshotProgress { id: id.to_string(), snapshots: recs.clone() })?;
    }
    for key in [layout::manifest_key(id), pending_key(id)] {
        match repo.storage().delete(&key) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (deleted, failed) = delete_records(&recs, cfg, repo.runtime());
    if !failed.is_empty() {
        let left: Vec<SnapshotRecord> = recs.iter().filter(|r| !deleted.contains(&r.snapshot_id)).cloned().collect();
        repo.put_json(&snapshots_key(id), &SnapshotProgress { id: id.to_string(), snapshots: left })?;
        return Err(SnapshotError::Other(format!(
            "backup {id} is no longer usable, but {} snapshot(s) could not be deleted: {}; hint: fix the cause and run `pgkeep expire --backup {id}` again",
            failed.len(),
            failed.join("; ")
        ))
        .into());
    }
    repo.storage().delete_prefix(&layout::backup_dir(id))?;
    Ok(ExpireReport { backup: id.to_string(), driver, deleted_snapshots: deleted, removed: true })
}
