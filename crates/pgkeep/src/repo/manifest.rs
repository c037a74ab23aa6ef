//! The backup manifest: the commit record of a backup (invariant 1). Written last, after every
//! data object, backup_label/tablespace_map and the WAL from start to stop are durable; a backup
//! without one is incomplete and never restored.

use chrono::{DateTime, Utc};
use pgkeep_wal::Lsn;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FORMAT: u32 = 1;

/// PostgreSQL's `BLCKSZ`: the unit of `Entry::blocks`. Incremental backups are refused on a
/// cluster built with another block size.
pub const BLCKSZ: u64 = 8192;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub label: String,
    /// `full`, `incr` (relative to the newest backup before it) or `diff` (relative to the
    /// newest full).
    pub kind: String,
    /// `incr`/`diff`: the backup this one stores the changed blocks against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `incr`/`diff`: the backups a restore reads, from the full to `reference`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// `incr`/`diff`: how changed blocks were found: `wal` or `checksum` (page LSNs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_by: Option<String>,
    /// `files`, or the snapshot driver(s) used.
    pub driver: String,
    pub pgkeep_version: String,
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub pg_major: u32,
    /// Checked when read: everything derived from it divides by it.
    #[serde(deserialize_with = "checked_wal_segment_size")]
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
    /// Incremental backups, relation files: the blocks this backup's frame holds, as
    /// `[first, end)` ranges (ascending, disjoint), the frame being those blocks in order. The
    /// file is then the previous backup of the chain's content with these blocks replaced,
    /// cut or zero-extended to `size`; `[]` (no object) when nothing changed. Absent: the
    /// frame holds the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<[u32; 2]>>,
}

impl Entry {
    /// Number of blocks in `blocks` (0 for a whole-file entry).
    pub fn block_count(&self) -> u64 {
        self.blocks.iter().flatten().map(|[a, b]| u64::from(b.saturating_sub(*a))).sum()
    }
}

/// Serde check for every stored `wal_segment_size` (manifests, pgkeep.info).
pub(crate) fn checked_wal_segment_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if pgkeep_wal::is_valid_wal_seg_size(n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!("wal_segment_size {n} is not a power of two between 1 MiB and 1 GiB")))
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
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

/// What makes a manifest unsafe to restore: the entry (or field) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    pub entry: String,
    pub problem: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.entry, self.problem)
    }
}

/// `rel` is relative and normalised: no leading `/`, no empty, `.` or `..` component.
pub fn is_normal_relative(rel: &str) -> bool {
    !rel.is_empty() && !rel.contains('\0') && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `path` is absolute and normalised (what a tablespace location must be).
fn is_normal_absolute(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(is_normal_relative)
}

impl Manifest {
    /// The repository is writable by the database's OS user, so a restore (often run as root)
    /// treats the manifest as input: every path stays inside PGDATA or a tablespace, links
    /// exist only where PostgreSQL has them, every file lies inside its object.
    pub fn validate(&self) -> Result<(), ManifestProblem> {
        let bad = |entry: String, problem: &str| Err(ManifestProblem { entry, problem: problem.to_string() });
        if !pgkeep_wal::is_valid_wal_seg_size(self.wal_segment_size) {
            return bad(
                format!("wal_segment_size {}", self.wal_segment_size),
                "is not a power of two between 1 MiB and 1 GiB",
            );
        }
        self.validate_chain()?;
        for o in &self.objects {
            if o.name.contains('/') || !is_normal_relative(&o.name) {
                return bad(format!("object {:?}", o.name), "is not a plain object name");
            }
        }
        let mut oids = std::collections::BTreeSet::new();
        for t in &self.tablespaces {
            if !oids.insert(t.oid) {
                return bad(format!("tablespace {}", t.oid), "is listed twice");
            }
            if !is_normal_absolute(&t.location) {
                return bad(
                    format!("tablespace {} location {:?}", t.oid, t.location),
                    "is not an absolute, normalised path",
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.entries {
            let name = || format!("entry {:?}", e.path);
            if !is_normal_relative(&e.path) {
                return bad(name(), "is not a relative, normalised path inside the data directory");
            }
            if !seen.insert(e.path.as_str()) {
                return bad(name(), "is listed twice");
            }
            // pg_tblspc/<oid> is the tablespace's link; everything below it is the tablespace.
            let tablespace = match e.path.strip_prefix("pg_tblspc/") {
                Some(rest) => {
                    let (oid, tail) = rest.split_once('/').unwrap_or((rest, ""));
                    match oid.parse::<u32>() {
                        Ok(oid) if oids.contains(&oid) => Some(tail.is_empty()),
                        _ => return bad(name(), "is below pg_tblspc but not in a tablespace of this backup"),
                    }
                }
                None => None,
            };
            match e.kind {
                EntryKind::Link if tablespace == Some(true) || e.path == "pg_wal" => {}
                EntryKind::Link => {
                    return bad(
                        name(),
                        "is a symbolic link where PostgreSQL has none (only pg_wal and pg_tblspc/<oid>)",
                    )
                }
                _ if tablespace == Some(true) => return bad(name(), "must be the tablespace's symbolic link"),
                EntryKind::Dir => {}
                EntryKind::File if e.blocks.as_ref().is_some_and(|b| b.is_empty()) && e.object.is_none() => {
                    if e.length != 0 {
                        return bad(name(), "has no changed blocks and no object but a stored length");
                    }
                }
                EntryKind::File => {
                    if let Some(blocks) = &e.blocks {
                        if self.kind == "full" {
                            return bad(name(), "has changed blocks in a full backup");
                        }
                        let size_blocks = e.size.div_ceil(BLCKSZ);
                        let mut next = 0u32;
                        for [first, end] in blocks {
                            if first >= end || *first < next || u64::from(*end) > size_blocks {
                                return bad(
                                    name(),
                                    &format!(
                                        "has block range [{first}, {end}) out of order or beyond its size ({} blocks)",
                                        size_blocks
                                    ),
                                );
                            }
                            next = *end;
                        }
                    }
                    let Some(object) = e.object.and_then(|i| self.objects.get(i as usize)) else {
                        return bad(name(), "names no data object of this backup");
                    };
                    match e.offset.checked_add(e.length) {
                        Some(end) if end <= object.size => {}
                        _ => {
                            return bad(
                                name(),
                                &format!(
                                    "lies outside its object {} (offset {} + length {} > size {})",
                                    object.name, e.offset, e.length, object.size
                                ),
                            )
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A backup id as stored: a plain name (the repository's own ids are `YYYYMMDD-HHMMSSF`).
fn is_plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Manifest {
    /// `kind`, `reference` and `chain` agree: a full names no reference; an incremental's chain
    /// ends with its reference, holds plain ids once each, and never itself.
    fn validate_chain(&self) -> Result<(), ManifestProblem> {
        let bad = |problem: String| Err(ManifestProblem { entry: format!("backup {}", self.id), problem });
        match self.kind.as_str() {
            "full" => {
                if self.reference.is_some() || !self.chain.is_empty() {
                    return bad("is a full backup but names a reference or chain".into());
                }
            }
            "incr" | "diff" => {
                let Some(reference) = &self.reference else {
                    return bad(format!("is an {} backup without a reference", self.kind));
                };
                if self.chain.last() != Some(reference) {
                    return bad(format!(
                        "has a chain {:?} that does not end with its reference {reference}",
                        self.chain
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for id in &self.chain {
                    if !is_plain_id(id) || id == &self.id || !seen.insert(id) {
                        return bad(format!("has a chain entry {id:?} that is not a distinct earlier backup id"));
                    }
                }
                if self.kind == "diff" && self.chain.len() != 1 {
                    return bad("is a diff backup whose chain is not just its full".into());
                }
            }
            other => return bad(format!("has an unknown kind {other:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let entry = |path: &str, kind| Entry {
            path: path.into(),
            kind,
            mode: 0o700,
            size: 0,
            mtime: 0,
            blake3: None,
            object: None,
            offset: 0,
            length: 0,
            target: None,
            blocks: None,
        };
        let mut file = entry("base/1/1259", EntryKind::File);
        (file.object, file.offset, file.length) = (Some(0), 10, 90);
        let mut json = serde_json::json!({
            "format": 1, "id": "20261121-065522F", "label": "", "kind": "full", "driver": "files",
            "pgkeep_version": "0", "system_identifier": "1", "pg_version_num": 150000, "pg_major": 15,
            "wal_segment_size": 16777216, "data_checksums": true, "timeline": 1, "stop_timeline": 1,
            "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "start_wal": "", "stop_wal": "",
            "start_time": "2026-11-21T06:55:22Z", "stop_time": "2026-11-21T06:55:23Z",
            "backup_window_seconds": 1.0, "backup_label_blake3": "", "tablespace_map_blake3": null,
            "tablespaces": [{"oid": 16384, "name": "ts", "location": "/srv/ts"}],
            "size": 0, "stored_size": 0, "file_count": 1,
            "objects": [{"name": "000000", "size": 100}], "entries": [],
        });
        json["entries"] = serde_json::to_value(vec![
            entry("base", EntryKind::Dir),
            file,
            entry("pg_tblspc/16384", EntryKind::Link),
            entry("pg_tblspc/16384/PG_15_202209061", EntryKind::Dir),
        ])
        .unwrap();
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_manifest_pgkeep_writes_is_valid() {
        assert_eq!(manifest().validate(), Ok(()));
    }

    #[test]
    fn paths_links_offsets_and_segment_size_are_checked() {
        let refused = |edit: &dyn Fn(&mut Manifest)| {
            let mut m = manifest();
            edit(&mut m);
            m.validate().expect_err("must be refused")
        };
        for bad in ["../x", "/etc/x", "base//x", "base/./x", "base/", ""] {
            let p = refused(&|m| m.entries[1].path = bad.into());
            assert_eq!(p.entry, format!("entry {bad:?}"));
        }
        assert!(refused(&|m| m.entries[2].path = "base/evil".into()).problem.contains("symbolic link"));
        assert!(refused(&|m| m.entries[3].path = "pg_tblspc/99/x".into()).problem.contains("tablespace"));
        assert!(refused(&|m| m.entries[1].offset = u64::MAX).problem.contains("outside its object"));
        assert!(refused(&|m| m.entries[1].object = Some(7)).problem.contains("no data object"));
        assert!(refused(&|m| m.objects[0].name = "../../x".into()).entry.starts_with("object"));
        assert!(refused(&|m| m.tablespaces[0].location = "/srv/../etc".into()).entry.starts_with("tablespace"));
        assert!(refused(&|m| m.wal_segment_size = 3 << 20).entry.starts_with("wal_segment_size"));
        let mut json = serde_json::to_value(manifest()).unwrap();
        json["wal_segment_size"] = 0.into();
        let e = serde_json::from_value::<Manifest>(json).unwrap_err().to_string();
        assert!(e.contains("wal_segment_size 0"), "{e}");
    }
}

/// A full files backup's manifest with no entries, started at 0/3000028 (unit tests).
#[cfg(test)]
pub(crate) fn test_manifest(id: &str) -> Manifest {
    serde_json::from_value(serde_json::json!({
        "format": 1, "id": id, "label": "", "kind": "full", "driver": "files",
        "pgkeep_version": "0", "system_identifier": "1", "pg_version_num": 150000, "pg_major": 15,
        "wal_segment_size": 16777216, "data_checksums": true, "timeline": 1, "stop_timeline": 1,
        "start_lsn": "0/3000028", "stop_lsn": "0/3000100", "start_wal": "", "stop_wal": "",
        "start_time": "2026-11-21T07:00:00Z", "stop_time": "2026-11-21T07:00:01Z",
        "backup_window_seconds": 1.0, "backup_label_blake3": "", "tablespace_map_blake3": null,
        "tablespaces": [], "size": 0, "stored_size": 0, "file_count": 0, "objects": [], "entries": [],
    }))
    .expect("test manifest")
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    fn incr() -> Manifest {
        let mut m = test_manifest("20261121-070000F");
        m.kind = "incr".into();
        m.reference = Some("20261121-065522F".into());
        m.chain = vec!["20261121-060000F".into(), "20261121-065522F".into()];
        m.incremental_by = Some("wal".into());
        m.objects = vec![DataObject { name: "000000".into(), size: 100 }];
        m.entries = serde_json::from_value(serde_json::json!([
            {"path": "base", "kind": "dir", "mode": 448},
            {"path": "base/1/1259", "kind": "file", "mode": 384, "size": 81920, "object": 0,
             "offset": 0, "length": 100, "blocks": [[0, 2], [5, 10]]},
            {"path": "base/1/1260", "kind": "file", "mode": 384, "size": 8192, "blocks": []},
        ]))
        .unwrap();
        m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        m
    }

    #[test]
    fn an_incremental_manifest_is_valid_and_round_trips() {
        let m = incr();
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(m.entries[1].block_count(), 7);
        let back: Manifest = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(back.chain, m.chain);
        assert_eq!(back.entries[1].blocks, Some(vec![[0, 2], [5, 10]]));
        // Summaries carry what `list` shows.
        let s: ManifestSummary = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!((s.kind.as_str(), s.reference.as_deref()), ("incr", Some("20261121-065522F")));
    }

    #[test]
    fn blocks_and_chains_are_checked() {
        let refused = |edit: &dyn Fn(&mut Manifest)| {
            let mut m = incr();
            edit(&mut m);
            m.validate().expect_err("must be refused")
        };
        assert!(refused(&|m| m.entries[1].blocks = Some(vec![[5, 10], [0, 2]])).problem.contains("out of order"));
        assert!(refused(&|m| m.entries[1].blocks = Some(vec![[0, 11]])).problem.contains("beyond its size"));
        assert!(refused(&|m| m.entries[1].blocks = Some(vec![[3, 3]])).problem.contains("block range"));
        assert!(refused(&|m| m.entries[2].length = 5).problem.contains("no changed blocks"));
        assert!(refused(&|m| m.reference = None).problem.contains("without a reference"));
        assert!(refused(&|m| m.chain.pop().map(|_| ()).unwrap_or(())).problem.contains("does not end"));
        assert!(refused(&|m| m.chain[0] = "../x".into()).problem.contains("chain entry"));
        assert!(refused(&|m| m.chain[0] = m.id.clone()).problem.contains("chain entry"));
        assert!(refused(&|m| m.kind = "diff".into()).problem.contains("diff"));
        assert!(refused(&|m| m.kind = "weekly".into()).problem.contains("unknown kind"));
        assert!(refused(&|m| {
            m.kind = "full".into();
            m.reference = None;
            m.chain.clear();
        })
        .problem
        .contains("changed blocks in a full"));
    }
}
