//! Where PostgreSQL's paths lie inside a snapshot set: stored in a snapshot backup's manifest
//! (`snapshot_layout`), so it is a repository record, written by the snapshot backup flow and read
//! by restore.

use serde::{Deserialize, Serialize};

/// Where a PostgreSQL path lives inside a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumePath {
    pub volume: String,
    /// Path relative to the volume's root ("" for the root itself).
    pub rel: String,
    /// The absolute path on the source machine when the backup was taken.
    pub original: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TablespacePath {
    pub oid: u32,
    pub name: String,
    #[serde(flatten)]
    pub at: VolumePath,
}

/// How PostgreSQL's paths map onto the snapshot set (stored in the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotLayout {
    pub pgdata: VolumePath,
    /// The real location of pg_wal.
    pub pg_wal: VolumePath,
    /// pg_wal was a symbolic link (to another directory or volume).
    pub pg_wal_is_link: bool,
    #[serde(default)]
    pub tablespaces: Vec<TablespacePath>,
    /// Seconds between the first and the last snapshot acknowledgement.
    pub snapshot_spread_seconds: f64,
    /// Stripe groups frozen with fsfreeze while their snapshots were requested.
    #[serde(default)]
    pub frozen: Vec<String>,
}
