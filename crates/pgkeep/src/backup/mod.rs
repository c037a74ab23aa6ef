//! One backup: a plan (what to copy, which tablespaces), then a run bracketed by the
//! non-exclusive backup session, then WAL confirmation, then the manifest commit.

pub mod changed;
pub mod files;
pub mod hooks;
pub mod id;
pub mod incremental;
pub mod plan;
pub mod relfile;
pub mod run;
pub mod snapshot;
pub mod throttle;

pub use incremental::{BackupType, IncrementalBy};
pub use run::{run, BackupOptions, BackupReport, ReadReport};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("WAL archiving is not set up on the server ({detail}); a backup without its WAL cannot be restored; hint: set archive_mode = on and archive_command = 'pgkeep archive-push %p' (with --repo or PGKEEP_REPO), restart, then run `pgkeep check`")]
    ArchivingOff { detail: String },
    #[error(
        "wal_level is {level}; a backup needs replica or logical; hint: set wal_level = replica and restart the server"
    )]
    WalLevel { level: String },
    #[error("the server is in recovery (a standby); backups from standbys are not supported yet; hint: run pgkeep backup against the primary")]
    Standby,
    #[error("data directory {pgdata} does not belong to the server at {server} ({detail}); hint: pass the right --pgdata / PGDATA, or connect to the server that owns it")]
    WrongPgdata { pgdata: String, server: String, detail: String },
    #[error("cannot read {path}: {detail}; hint: run pgkeep as the data directory's owner (or root)")]
    Read { path: String, detail: String },
    #[error("WAL segment {segment} of backup {id} did not reach the archive within {secs}s; the backup is not committed; hint: check archive_command, `pgkeep check`, and pg_stat_archiver")]
    WalMissing { id: String, segment: String, secs: u64 },
    #[error("archived WAL segment {segment} needed by backup {id} is damaged: {detail}")]
    WalDamaged { id: String, segment: String, detail: String },
    #[error("{0}")]
    Other(String),
}
