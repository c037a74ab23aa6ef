//! Retention: what to keep, what to expire — backups, their WAL and their snapshots from one
//! policy (`[retention]`), plus pins.
//!
//! `plan` is a pure function of the catalog, the WAL listing and the time; `run` gathers those
//! from the repository under the backup lock and executes the plan (backups first, each
//! through the `expire --backup` primitive: manifest, snapshots, objects; then WAL), so a
//! dry run shows exactly what a run does and a crash at any point leaves only backups that
//! still have all they need.

pub mod config;
pub mod pins;
pub mod plan;
pub mod run;

pub use config::{BackupSettings, RetentionConfig};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("no [retention] table in the config file, so nothing is expired; hint: add one (full, recovery_window, verified, wal; see README \"Retention\"), or delete one backup with `pgkeep expire --backup ID`")]
    NoPolicy,
    #[error("the [retention] table sets no rule that keeps backups; hint: set full, recovery_window or verified")]
    NoRule,
    #[error("the [retention] policy keeps none of the {complete} complete backup(s) (verified = N counts only backups whose restore drill passed); nothing was deleted; hint: run `pgkeep verify`, or add a rule such as full = 1")]
    KeepsNothing { complete: usize },
    #[error("backup {id} is the last backup the [retention] policy keeps; nothing was deleted; hint: add --force to delete it anyway")]
    LastKept { id: String },
    #[error("backup {id} is the base of incremental backup(s) {dependents}, which cannot be restored without it; nothing was deleted; hint: expire those first, or add --force")]
    ChainBase { id: String, dependents: String },
    #[error("backup {id} is pinned; nothing was deleted; hint: `pgkeep unpin {id}` first, or add --force")]
    Pinned { id: String },
    #[error("backup {id} is not pinned; hint: `pgkeep list` shows the pinned backups")]
    NotPinned { id: String },
    #[error(
        "backup {id} is not a complete backup, so it cannot be pinned; hint: `pgkeep list` shows the complete ones"
    )]
    NotComplete { id: String },
    #[error(
        "PGKEEP_NOW {0:?} is not an RFC 3339 time; hint: it is for tests only, e.g. 2026-11-21T10:00:00Z, or unset it"
    )]
    BadNow(String),
}

impl RetentionError {
    pub fn is_usage(&self) -> bool {
        matches!(self, RetentionError::NoPolicy | RetentionError::NoRule | RetentionError::BadNow(_))
    }
}
