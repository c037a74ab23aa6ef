//! The backup manifest: the commit record of a backup (invariant 1). Written last, after every
//! data object, backup_label/tablespace_map and the WAL from start to stop are durable; a backup
//! without one is incomplete and never restored.

use chrono::{DateTime, Utc};
use pgkeep_wal::Lsn;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub label: String,
    /// `full` (incremental kinds later).
    pub kind: String,
    /// `files`, or the snapshot driver(s) used.
    pub driver: String,
    pub pgkeep_version: String,
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub pg_major: u32,
    pub wal_segment_size: u32,
    pub data_checksums: bool,
    pub timeline: u32,
    pub stop_timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// First and last WAL segment needed to make this backup consistent.
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Seconds between pg_backup_start returning and pg_backup_stop being called.
    pub backup_window_seconds: f64,
    pub backup_label_blake3: String,
    pub tablespace_map_blake3: Option<String>,
    pub tablespaces: Vec<Tablespace>,
    /// Plain bytes of all files.
    pub size: u64,
    /// Bytes stored in the repository for this backup (framed, compressed).
    pub stored_size: u64,
    pub file_count: u64,
    pub objects: Vec<DataObject>,
    pub entries: Vec<Entry>,
    /// Snapshot set of a snapshot backup (driver-specific records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<serde_json::Value>,
    /// Snapshot backups: where PGDATA, pg_wal and each tablespace lie inside the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_layout: Option<super::snapshot_layout::SnapshotLayout>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    /// Location on the source server when the backup was taken.
    pub location: String,
}

/// A data object of the backup: a bundle of small files or one large file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataObject {
    /// Key below `backup/<id>/data/`.
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Link,
}

/// One path of PGDATA (tablespaces as `pg_tblspc/<oid>/...`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero_i")]
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Index into `objects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<u32>,
    /// Offset and length of this file's frame inside the object.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub length: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i(v: &i64) -> bool {
    *v == 0
}

/// The fields `list` needs, parsed without materialising the file list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSummary {
    pub id: String,
    pub label: String,
    pub kind: String,
    pub driver: String,
    pub system_identifier: String,
    pub pg_major: u32,
    pub timeline: u32,
    pub stop_timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub backup_window_seconds: f64,
    pub size: u64,
    pub stored_size: u64,
    pub file_count: u64,
    #[serde(default)]
    pub tablespaces: Vec<Tablespace>,
}

/// Written at the start of a backup so an interrupted one is visible (and cleanable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartedMarker {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub host: String,
    pub pid: u32,
    pub driver: String,
}
