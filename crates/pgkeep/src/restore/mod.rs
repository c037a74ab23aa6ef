//! Restore: choose the backup for a target, plan, materialise files (checksums verified),
//! then write backup_label, tablespace_map and the recovery settings. pg_control is put in
//! place last, so an interrupted restore leaves a directory PostgreSQL refuses to start.

pub mod delta;
pub mod locate;
pub mod materialize;
pub mod plan;
pub mod recovery;
pub mod snapshot;
pub mod target;

pub use plan::{RestoreOptions, RestorePlan, RestoreReport};
pub use target::{RecoveryTarget, TargetAction};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "{dir} is not empty; refusing to restore over existing files; hint: restore into a new or empty directory"
    )]
    TargetNotEmpty { dir: String },
    #[error("no complete backup in repository {location}; hint: run `pgkeep backup` first (`pgkeep list` shows incomplete ones)")]
    NoBackups { location: String },
    #[error("no complete backup ended before the target {target} (the oldest usable ended at {oldest}); hint: pick a later target or an older repository")]
    NoBackupForTarget { target: String, oldest: String },
    #[error("invalid {what} {value:?}: {hint}")]
    BadTarget { what: &'static str, value: String, hint: String },
    #[error(
        "invalid --tablespace-map {value:?}; hint: use OID=DIR with the OID from `pgkeep list --json` (tablespaces)"
    )]
    BadTablespaceMap { value: String },
    #[error("backup {id} has no tablespace with OID {oid} (it has: {have})")]
    UnknownTablespace { id: String, oid: u32, have: String },
    #[error(
        "tablespace {oid} would be restored to {dir}, which is not empty; hint: pass --tablespace-map {oid}=EMPTY_DIR"
    )]
    TablespaceNotEmpty { oid: u32, dir: String },
    #[error("restoring {path} from backup {id} failed: {detail}; the target directory {dir} is incomplete (PostgreSQL will not start on it); hint: remove it, then restore again or from another backup")]
    File { id: String, path: String, dir: String, detail: String },
    #[error("refusing a delta restore into {dir}: it is neither empty nor a PostgreSQL data directory (no PG_VERSION and global/pg_control); nothing was written; hint: name the data directory of a copy of this cluster, or an empty directory")]
    DeltaNotDataDir { dir: String },
    #[error("refusing a delta restore into {dir}: a server is running on it ({why}); nothing was written; hint: stop it first (pg_ctl -D {dir} stop -m fast), then run the delta restore again")]
    DeltaRunning { dir: String, why: String },
    #[error("refusing a delta restore into {dir}: cannot read its system identifier from global/pg_control ({detail}); nothing was written; hint: restore into an empty directory instead")]
    DeltaControl { dir: String, detail: String },
    #[error("refusing a delta restore into {dir}: it is the data directory of another cluster (system identifier {found}; backup {id} is of {expected}); nothing was written; hint: delta restore refreshes copies of the backup's own cluster; restore into an empty directory instead")]
    DeltaForeign { dir: String, found: String, id: String, expected: String },
    #[error("refusing a delta restore into {dir}: tablespace {oid} would be rewritten in {ts}, which holds files but is not this data directory's (its pg_tblspc/{oid} links to {link}); nothing was written; hint: pass --tablespace-map {oid}=DIR with the directory its pg_tblspc/{oid} links to")]
    DeltaTablespace { dir: String, oid: u32, ts: String, link: String },
    #[error("delta restore of {path} from backup {id} failed: {detail}; {dir} is incomplete (PostgreSQL will not start on it); hint: fix the cause and run the delta restore again, or restore another backup")]
    DeltaFile { id: String, path: String, dir: String, detail: String },
    #[error("cannot read {path} of backup {id}: {detail}")]
    Content { id: String, path: String, detail: String },
    #[error("cannot write {path}: {detail}")]
    Write { path: String, detail: String },
    #[error("refusing to restore backup {id}: its manifest's {problem}; nothing was written; hint: the manifest was altered or damaged in the repository; restore another backup and check who can write the repository")]
    BadManifest { id: String, problem: String },
    #[error("refusing to restore backup {id}: its stored backup_label {detail}; nothing was written; hint: restore another backup (`pgkeep list`)")]
    BadLabel { id: String, detail: String },
    #[error("the recovery target {target} is not in the archived WAL after any complete backup (searched from {from}); hint: check the name or xid; WAL the server has not archived yet cannot be replayed, so run SELECT pg_switch_wal() on it and restore again")]
    TargetNotArchived { target: String, from: String },
}
