//! `pgkeep expire --backup ID`: delete one backup, snapshots included (the primitive that
//! retention policies build on).
//!
//! Order: the manifest (or pending record) goes first, so the backup is unusable before any
//! of its parts disappears; then its snapshots; then the rest of its objects. A snapshot that
//! cannot be deleted keeps the backup on record (incomplete, with its snapshot list) so that
//! running expire again retries. The manifest's removal is durable (directory synced) before
//! the first snapshot is touched.

use serde::Serialize;

use super::run::{delete_records, pending_key, snapshots_key, SnapshotProgress};
use super::{records_from_values, SnapshotConfig, SnapshotError, SnapshotRecord};
use crate::repo::catalog;
use crate::repo::lock::RepoLock;
use crate::repo::manifest::{Manifest, StartedMarker};
use crate::repo::{layout, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    pub backup: String,
    pub driver: Option<String>,
    /// Snapshot ids deleted.
    pub deleted_snapshots: Vec<String>,
    /// True when every object of the backup is gone from the repository.
    pub removed: bool,
    /// Why the backup was damaged (a record of it could not be read), when it was.
    pub damaged: Option<String>,
    /// True when a damaged record may have named snapshots that were not deleted (`--force`).
    pub snapshots_unknown: bool,
}

/// A record of the backup: absent, read, or present but unreadable (the reason).
enum Record<T> {
    Absent,
    Read(T),
    Damaged(String),
}

impl<T> Record<T> {
    fn value(&self) -> Option<&T> {
        match self {
            Record::Read(v) => Some(v),
            _ => None,
        }
    }
}

fn read_record<T: serde::de::DeserializeOwned>(repo: &Repository, key: &str) -> Record<T> {
    match repo.get_json(key) {
        Ok(v) => Record::Read(v),
        Err(crate::Error::Storage(e)) if e.is_not_found() => Record::Absent,
        Err(e) => Record::Damaged(catalog::reason(&e)),
    }
}

/// Delete backup `id`. A backup whose manifest, pending record or snapshot record cannot be
/// read is deleted too, except that the snapshots such a record named are then unknown: unless
/// its start marker or data objects show a files backup (no snapshots), that needs `force`
/// (after the operator deleted the snapshots by hand), so no snapshot is orphaned silently.
pub fn expire(repo: &Repository, cfg: &SnapshotConfig, id: &str, force: bool) -> crate::Result<ExpireReport> {
    check_id(id)?;
    let _lock = RepoLock::acquire(repo, "backup")?;
    expire_locked(repo, cfg, id, force)
}

pub fn check_id(id: &str) -> crate::Result<()> {
    if !crate::backup::id::is_backup_id(id) {
        return Err(SnapshotError::Config(format!(
            "{id:?} is not a backup id; hint: `pgkeep list` shows the ids (e.g. 20261121-023000F)"
        ))
        .into());
    }
    Ok(())
}

/// [`expire`] for a caller that already holds the backup lock (retention runs many).
pub fn expire_locked(repo: &Repository, cfg: &SnapshotConfig, id: &str, force: bool) -> crate::Result<ExpireReport> {
    let manifest: Record<Manifest> = read_record(repo, &layout::manifest_key(id));
    let pending: Record<Manifest> = read_record(repo, &pending_key(id));
    let progress: Record<SnapshotProgress> = read_record(repo, &snapshots_key(id));
    let started: Option<StartedMarker> = repo.get_json(&layout::backup_started_key(id)).ok();
    let exists = !matches!((&manifest, &pending, &progress), (Record::Absent, Record::Absent, Record::Absent))
        || repo.storage().head(&layout::backup_started_key(id))?.is_some();
    if !exists {
        return Err(
            crate::repo::RepoError::NoSuchBackup { location: repo.location().to_string(), id: id.to_string() }.into()
        );
    }
    let damaged: Vec<String> = [("manifest", reason_of(&manifest)), ("pending record", reason_of(&pending))]
        .into_iter()
        .chain([("snapshot record", reason_of(&progress))])
        .filter_map(|(what, why)| why.map(|w| format!("its {what} cannot be read ({w})")))
        .collect();
    let mut driver = started.as_ref().map(|m| m.driver.clone());
    // A files backup has no snapshots to lose: its start marker says so, or (marker unreadable)
    // its data objects do (snapshot backups store none).
    let files_backup = driver.as_deref() == Some("files")
        || (!damaged.is_empty() && !repo.storage().list(&layout::data_prefix(id))?.is_empty());
    let snapshots_unknown = !damaged.is_empty() && !files_backup;
    if snapshots_unknown && !force {
        return Err(SnapshotError::Other(format!(
            "backup {id}: {}, so the snapshots it recorded are unknown; nothing was deleted; hint: delete the backup's snapshots by hand ({}), then run `pgkeep expire --backup {id} --force`",
            damaged.join(" and "),
            match &driver {
                Some(d) => format!("driver {d}"),
                None => "driver unknown".to_string(),
            }
        ))
        .into());
    }
    let mut recs: Vec<SnapshotRecord> = Vec::new();
    for m in manifest.value().into_iter().chain(pending.value()) {
        driver = Some(m.driver.clone());
        recs.extend(records_from_values(id, &m.snapshots)?);
    }
    if let Some(p) = progress.value() {
        for r in &p.snapshots {
            if !recs.iter().any(|x| x.snapshot_id == r.snapshot_id) {
                recs.push(r.clone());
            }
        }
    }
    // Unusable first, durably: a crash after a snapshot is deleted must never leave a
    // manifest that names it.
    if !recs.is_empty() {
        repo.put_json(&snapshots_key(id), &SnapshotProgress { id: id.to_string(), snapshots: recs.clone() })?;
    }
    if !recs.is_empty() {
        repo.put_json(&layout::expiring_key(id), &chrono::Utc::now())?;
        repo.storage().sync_object(&layout::expiring_key(id))?;
    }
    for key in [layout::manifest_key(id), pending_key(id)] {
        repo.storage().delete_durable(&key)?;
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
    Ok(ExpireReport {
        backup: id.to_string(),
        driver,
        deleted_snapshots: deleted,
        removed: true,
        damaged: (!damaged.is_empty()).then(|| damaged.join("; ")),
        snapshots_unknown,
    })
}

fn reason_of<T>(r: &Record<T>) -> Option<&str> {
    match r {
        Record::Damaged(why) => Some(why),
        _ => None,
    }
}
