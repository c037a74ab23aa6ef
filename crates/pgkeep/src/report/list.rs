//! `pgkeep list`: every backup with its LSNs, times, size, state and verification verdict.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pgkeep_wal::Lsn;
use serde::Serialize;

use crate::repo::catalog::{self, BackupState};
use crate::repo::{verdict, Repository};
use crate::retention::{self, RetentionConfig};

#[derive(Debug, Clone, Serialize)]
pub struct ListedBackup {
    pub id: String,
    pub state: BackupState,
    pub driver: Option<String>,
    /// `full`, `incr` or `diff`.
    pub kind: Option<String>,
    /// `incr`/`diff`: the backup it stores changed blocks against.
    pub reference: Option<String>,
    pub label: Option<String>,
    pub timeline: Option<u32>,
    pub start_lsn: Option<Lsn>,
    pub stop_lsn: Option<Lsn>,
    pub start_wal: Option<String>,
    pub stop_wal: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub stop_time: Option<DateTime<Utc>>,
    pub size: Option<u64>,
    pub stored_size: Option<u64>,
    pub files: Option<u64>,
    /// Outcome of the newest restore drill: true, false, or null when never verified.
    pub verified: Option<bool>,
    pub verified_at: Option<DateTime<Utc>>,
    /// State `damaged`: why its manifest or pending record cannot be read.
    pub damaged_reason: Option<String>,
    /// Expired, but some of its snapshots are still to be deleted: never restored, and the
    /// next `pgkeep expire` retries (state `incomplete`).
    pub pending_deletion: bool,
    /// `pgkeep pin`ned: expire keeps it whatever the policy says.
    pub pinned: bool,
    /// The [retention] policy would expire it now (`pgkeep expire --dry-run` shows the plan).
    pub expires_next: bool,
    /// The oldest point in time the repository can restore to (the end of its oldest complete
    /// backup); the same on every entry, as `list --json` is an array of backups.
    pub recoverable_from: Option<DateTime<Utc>>,
}

/// The oldest point in time restorable from these complete backups: the end of the oldest
/// (a backup is consistent from its stop on).
pub fn recoverable_from<'a>(stops: impl IntoIterator<Item = &'a DateTime<Utc>>) -> Option<DateTime<Utc>> {
    stops.into_iter().min().copied()
}

pub fn list(repo: &Repository, policy: Option<&RetentionConfig>) -> crate::Result<Vec<ListedBackup>> {
    let pins = retention::pins::pinned(repo)?;
    // What the policy would expire next; a policy that cannot plan (it would keep nothing)
    // marks nothing here: `expire` itself says why.
    let next: BTreeSet<String> = match policy.filter(|p| p.has_backup_rule()) {
        Some(p) => match retention::run::plan_now(repo, p) {
            Ok(plan) => plan.backups.into_iter().map(|b| b.id).collect(),
            Err(e) => {
                tracing::warn!("the [retention] policy cannot be applied: {e}");
                BTreeSet::new()
            }
        },
        None => BTreeSet::new(),
    };
    let entries = catalog::list(repo)?;
    let oldest = recoverable_from(
        entries
            .iter()
            .filter(|e| e.state == BackupState::Complete)
            .filter_map(|e| e.summary.as_ref().map(|s| &s.stop_time)),
    );
    let mut out = Vec::new();
    for e in entries {
        let s = e.summary.as_ref();
        let verdict = s.and_then(|_| verdict::latest_or_none(repo, &e.id));
        out.push(ListedBackup {
            id: e.id.clone(),
            state: e.state,
            driver: s.map(|m| m.driver.clone()).or_else(|| e.started.as_ref().map(|m| m.driver.clone())),
            kind: s.map(|m| m.kind.clone()),
            reference: s.and_then(|m| m.reference.clone()),
            label: s.map(|m| m.label.clone()),
            timeline: s.map(|m| m.timeline),
            start_lsn: s.map(|m| m.start_lsn),
            stop_lsn: s.map(|m| m.stop_lsn),
            start_wal: s.map(|m| m.start_wal.clone()),
            stop_wal: s.map(|m| m.stop_wal.clone()),
            start_time: s.map(|m| m.start_time).or_else(|| e.started.as_ref().map(|m| m.started_at)),
            stop_time: s.map(|m| m.stop_time),
            size: s.map(|m| m.size),
            stored_size: s.map(|m| m.stored_size),
            files: s.map(|m| m.file_count),
            verified: verdict.as_ref().map(|v| v.ok),
            verified_at: verdict.as_ref().map(|v| v.verified_at),
            damaged_reason: e.damaged.clone(),
            pending_deletion: e.state == BackupState::Incomplete
                && repo.storage().head(&crate::repo::layout::expiring_key(&e.id))?.is_some(),
            pinned: pins.contains(&e.id),
            expires_next: next.contains(&e.id),
            recoverable_from: oldest,
        });
    }
    Ok(out)
}
