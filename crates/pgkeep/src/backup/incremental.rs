//! `backup --type incr|diff`: choosing the reference backup, and for each file of PGDATA
//! whether it is read whole (and why) or only its changed blocks.

use std::collections::{BTreeMap, HashMap};

use pgkeep_wal::Lsn;
use serde::{Deserialize, Serialize};

use super::changed::ChangeSet;
use super::plan::{FileTask, ReadMode};
use super::relfile::{self, FSM_FORKNUM};
use super::BackupError;
use crate::repo::catalog;
use crate::repo::manifest::{Entry, EntryKind, Manifest, BLCKSZ};
use crate::repo::Repository;

/// `--type` / `[backup] type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    #[default]
    Full,
    /// Changes since the newest complete backup.
    Incr,
    /// Changes since the newest complete full backup.
    Diff,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incr => "incr",
            BackupType::Diff => "diff",
        }
    }
}

/// `--incremental-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IncrementalBy {
    /// Block references of the archived WAL between the reference and this backup.
    #[default]
    Wal,
    /// Page LSNs: every block is read, those changed since the reference's start are kept.
    Checksum,
}

impl IncrementalBy {
    pub fn as_str(self) -> &'static str {
        match self {
            IncrementalBy::Wal => "wal",
            IncrementalBy::Checksum => "checksum",
        }
    }
}

/// Why files were read whole (reason → count), for the report.
pub const NOT_IN_REFERENCE: &str = "not in reference";
pub const NOT_A_RELATION: &str = "not a relation file";
pub const FSM_FORK: &str = "free space map (not WAL-logged)";
pub const CREATED: &str = "created after the reference";
pub const DB_COPIED: &str = "database copied at file level";

/// The reference of a new incremental: its manifest, and the chain the new backup joins.
pub struct Reference {
    pub manifest: Manifest,
    pub chain: Vec<String>,
}

/// The newest complete files backup (`incr`) or full files backup (`diff`) of this cluster;
/// None when there is none (the backup is then taken full).
pub fn choose_reference(repo: &Repository, kind: BackupType) -> crate::Result<Option<Reference>> {
    let found =
        catalog::newest_complete(repo, |s| s.driver == "files" && (kind == BackupType::Incr || s.kind == "full"))?;
    let Some(summary) = found else { return Ok(None) };
    let manifest = repo.manifest(&summary.id)?;
    manifest.validate().map_err(|p| {
        BackupError::Other(format!(
            "reference backup {} has a bad manifest: {p}; hint: take a full backup (`pgkeep backup --type full`)",
            summary.id
        ))
    })?;
    let mut chain = manifest.chain.clone();
    chain.push(manifest.id.clone());
    Ok(Some(Reference { manifest, chain }))
}

/// Decide, for each file of the plan, what to read. Returns the reason counts of whole reads.
pub fn assign(
    files: &mut [FileTask],
    reference: &Manifest,
    by: IncrementalBy,
    changes: Option<&ChangeSet>,
    relseg_size: u32,
) -> BTreeMap<String, u64> {
    let in_ref: HashMap<&str, &Entry> =
        reference.entries.iter().filter(|e| e.kind == EntryKind::File).map(|e| (e.path.as_str(), e)).collect();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for t in files.iter_mut() {
        let decision = decide(t, &in_ref, reference.start_lsn, by, changes, relseg_size);
        if let Err(why) = &decision {
            *reasons.entry((*why).to_string()).or_default() += 1;
        }
        t.read = decision.unwrap_or(ReadMode::Whole);
    }
    reasons
}

fn decide(
    t: &FileTask,
    in_ref: &HashMap<&str, &Entry>,
    since: Lsn,
    by: IncrementalBy,
    changes: Option<&ChangeSet>,
    relseg_size: u32,
) -> Result<ReadMode, &'static str> {
    let rf = relfile::parse(&t.rel).ok_or(NOT_A_RELATION)?;
    if !in_ref.contains_key(t.rel.as_str()) {
        return Err(NOT_IN_REFERENCE);
    }
    // Not properly WAL-logged (PostgreSQL 17's incremental backup copies it whole too).
    if rf.fork.fork == FSM_FORKNUM {
        return Err(FSM_FORK);
    }
    let Some(changes) = changes.filter(|_| by == IncrementalBy::Wal) else {
        return Ok(ReadMode::PagesSince(since));
    };
    if let Some((why, _)) = &changes.uncertain {
        return Err(why);
    }
    if changes.created.contains(&rf.fork) {
        return Err(CREATED);
    }
    if changes.copied_dbs.contains(&(rf.fork.spc, rf.fork.db)) {
        return Err(DB_COPIED);
    }
    let first = u64::from(rf.segno) * u64::from(relseg_size);
    let end = first + t.size.div_ceil(BLCKSZ).min(u64::from(relseg_size));
    let to_local = |b: u64| u32::try_from(b - first).unwrap_or(u32::MAX);
    let mut ranges: Vec<[u32; 2]> = Vec::new();
    let mut push = |b: u64| {
        let b = to_local(b);
        match ranges.last_mut() {
            Some(r) if r[1] == b => r[1] += 1,
            Some(r) if r[1] > b => {}
            _ => ranges.push([b, b + 1]),
        }
    };
    let cut = changes.truncated.get(&rf.fork).map(|c| u64::from(*c)).unwrap_or(u64::MAX);
    if let Some(blocks) = changes.blocks.get(&rf.fork) {
        let lo = u32::try_from(first).unwrap_or(u32::MAX);
        for b in blocks.range(lo..) {
            let b = u64::from(*b);
            if b >= end.min(cut) {
                break;
            }
            push(b);
        }
    }
    // Every block from a truncation's cut point on was written after it (or is new).
    for b in cut.max(first)..end {
        push(b);
    }
    Ok(ReadMode::Blocks(ranges))
}

/// `--incremental-by checksum`: a page changed since `since` (its LSN is at or after it), or a
/// new page (all zeros, no LSN yet) the reference may hold older content for.
pub fn page_is_newer(page: &[u8], since: Lsn) -> bool {
    let word = |o: usize| page.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
    // PageHeaderData.pd_lsn: { xlogid, xrecoff }. // storage/bufpage.h
    let lsn = (u64::from(word(0)) << 32) | u64::from(word(4));
    lsn >= since.0 || page.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::relfile::RelFork;

    fn task(rel: &str, blocks: u64) -> FileTask {
        FileTask {
            rel: rel.into(),
            abs: rel.into(),
            size: blocks * BLCKSZ,
            mode: 0o600,
            mtime: 0,
            read: ReadMode::Whole,
        }
    }

    #[test]
    fn changed_blocks_map_to_segments_and_reasons() {
        let fork = |rel, fork| RelFork { spc: 1663, db: 5, rel, fork };
        let mut changes = ChangeSet::default();
        changes.blocks.insert(fork(100, 0), [1, 2, 3, 7, 131_072 + 4].into_iter().collect());
        changes.truncated.insert(fork(101, 0), 2);
        changes.blocks.insert(fork(101, 0), [0].into_iter().collect());
        changes.created.insert(fork(102, 0));
        changes.copied_dbs.insert((1663, 6));
        let mut files = vec![
            task("base/5/100", 10),
            task("base/5/100.1", 10),
            task("base/5/101", 4),
            task("base/5/102", 1),
            task("base/5/100_fsm", 3),
            task("base/6/200", 1),
            task("base/5/300", 1),
            task("base/5/PG_VERSION", 0),
            task("base/5/103", 2),
        ];
        let mut reference = crate::repo::manifest::test_manifest("r");
        for p in
            ["base/5/100", "base/5/100.1", "base/5/101", "base/5/102", "base/5/100_fsm", "base/6/200", "base/5/103"]
        {
            let mut e: Entry =
                serde_json::from_value(serde_json::json!({"path": p, "kind": "file", "mode": 384})).unwrap();
            e.size = BLCKSZ;
            reference.entries.push(e);
        }
        let reasons = assign(&mut files, &reference, IncrementalBy::Wal, Some(&changes), 131_072);
        let reads: Vec<&ReadMode> = files.iter().map(|f| &f.read).collect();
        assert_eq!(reads[0], &ReadMode::Blocks(vec![[1, 4], [7, 8]]));
        assert_eq!(reads[1], &ReadMode::Blocks(vec![[4, 5]]));
        assert_eq!(reads[2], &ReadMode::Blocks(vec![[0, 1], [2, 4]]));
        assert_eq!(reads[8], &ReadMode::Blocks(vec![]));
        for i in [3, 4, 5, 6, 7] {
            assert_eq!(reads[i], &ReadMode::Whole, "{}", files[i].rel);
        }
        let expect: BTreeMap<String, u64> =
            [(CREATED, 1), (FSM_FORK, 1), (DB_COPIED, 1), (NOT_IN_REFERENCE, 1), (NOT_A_RELATION, 1)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(reasons, expect);
        // An uncertain walk reads every relation file whole, under its reason.
        changes.uncertain = Some((super::super::changed::WAL_GAP, "x".into()));
        let reasons = assign(&mut files, &reference, IncrementalBy::Wal, Some(&changes), 131_072);
        assert_eq!(reasons.get("wal gap"), Some(&6));
    }

    #[test]
    fn checksum_mode_keeps_newer_and_new_pages() {
        let mut page = vec![0u8; BLCKSZ as usize];
        assert!(page_is_newer(&page, Lsn(0x3000028)));
        page[4..8].copy_from_slice(&0x2000000u32.to_le_bytes());
        assert!(!page_is_newer(&page, Lsn(0x3000028)));
        page[4..8].copy_from_slice(&0x3000028u32.to_le_bytes());
        assert!(page_is_newer(&page, Lsn(0x3000028)));
    }
}
