//! `pgkeep list`: every backup with its LSNs, times, size, state and verification verdict.

use chrono::{DateTime, Utc};
use pgkeep_wal::Lsn;
use serde::Serialize;

use crate::repo::catalog::{self, BackupState};
use crate::repo::{verdict, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct ListedBackup {
    pub id: String,
    pub state: BackupState,
    pub driver: Option<String>,
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
}

pub fn list(repo: &Repository) -> crate::Result<Vec<ListedBackup>> {
    let mut out = Vec::new();
    for e in catalog::list(repo)? {
        let s = e.summary.as_ref();
        // A damaged verdict must not hide the backups: it counts as never verified.
        let verdict = match s {
            Some(_) => verdict::latest(repo, &e.id).unwrap_or_else(|err| {
                tracing::warn!("backup {}: its newest verification verdict cannot be read ({err})", e.id);
                None
            }),
            None => None,
        };
        out.push(ListedBackup {
            id: e.id.clone(),
            state: e.state,
            driver: s.map(|m| m.driver.clone()).or_else(|| e.started.as_ref().map(|m| m.driver.clone())),
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
        });
    }
    Ok(out)
}
