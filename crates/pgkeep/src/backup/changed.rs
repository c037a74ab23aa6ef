//! Changed blocks between a reference backup and this one, from the WAL: every block
//! reference of every record from the reference's start LSN up to this backup's start LSN,
//! plus what block references do not show (relation files created, truncated, databases
//! copied at file level). When the walk cannot be sure of everything it says why, and the
//! caller reads every relation file whole.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use pgkeep_wal::{
    history_file_name, parse_timeline_history, xlog_file_name, DecoderOptions, Lsn, StorageChange, TimeLineID,
    WalDecoder,
};

use super::relfile::{RelFork, VISIBILITYMAP_FORKNUM};
use crate::repo::Repository;
use crate::wal::archived::fetch_plain;

/// Why the walk could not vouch for every block: every relation file is read whole.
pub const WAL_GAP: &str = "wal gap";
pub const TIMELINE: &str = "timeline not descending from the reference";
pub const UNDECODABLE: &str = "undecodable record";

/// What the walk found.
#[derive(Debug, Default)]
pub struct ChangeSet {
    /// Block numbers referenced per fork (relation-relative, not per segment).
    pub blocks: HashMap<RelFork, BTreeSet<u32>>,
    /// Forks created (smgr create): read whole.
    pub created: HashSet<RelFork>,
    /// (tablespace, database) directories created by copying files: read whole.
    pub copied_dbs: HashSet<(u32, u32)>,
    /// Forks truncated: the smallest length (blocks) they were cut to; every block from there
    /// on in the current file is read (it was written after the cut, or it is new).
    pub truncated: HashMap<RelFork, u32>,
    /// Set when the walk is incomplete: the reason (one of the constants above) and a detail.
    pub uncertain: Option<(&'static str, String)>,
    /// Records walked.
    pub records: u64,
}

/// Where the walk starts and ends.
pub struct WalRange {
    pub from: Lsn,
    pub from_timeline: TimeLineID,
    pub to: Lsn,
    pub to_timeline: TimeLineID,
    pub seg_size: u32,
    pub pg_major: u32,
    pub system_identifier: u64,
}

/// Walk the archived WAL of `range` (segments not archived yet, such as the one holding this
/// backup's start, come from `wal_dir`, the cluster's pg_wal; the decoder checks their page
/// addresses, system identifier and record CRCs just the same).
pub fn walk(repo: &Repository, wal_dir: &Path, range: &WalRange) -> ChangeSet {
    let mut set = ChangeSet::default();
    let tli_of = match segment_timelines(repo, range) {
        Ok(f) => f,
        Err(why) => {
            set.uncertain = Some((TIMELINE, why));
            return set;
        }
    };
    let opts = DecoderOptions {
        pg_major: Some(range.pg_major),
        system_identifier: Some(range.system_identifier),
        max_timeline: Some(range.to_timeline),
    };
    let mut dec = match WalDecoder::with_options(range.from, range.seg_size, opts) {
        Ok(d) => d,
        Err(e) => {
            set.uncertain = Some((UNDECODABLE, e.to_string()));
            return set;
        }
    };
    let first = range.from.segment_number(range.seg_size);
    let last = Lsn(range.to.0.saturating_sub(1)).segment_number(range.seg_size);
    let names: Vec<(u64, String)> =
        (first..=last).map(|segno| (segno, xlog_file_name(tli_of(segno), segno, range.seg_size))).collect();
    // One thread fetches and decompresses the next segments while this one decodes.
    let done = std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        sc.spawn(move || {
            for (segno, name) in names {
                let data = load_segment(repo, wal_dir, &name);
                let failed = data.is_err();
                if tx.send((segno, data)).is_err() || failed {
                    break;
                }
            }
        });
        for (segno, data) in rx {
            let data = match data {
                Ok(d) => d,
                Err(why) => {
                    set.uncertain = Some((WAL_GAP, why));
                    return true;
                }
            };
            let seg_start = Lsn::segment_start(segno, range.seg_size).0;
            let skip = usize::try_from(range.from.0.saturating_sub(seg_start)).unwrap_or(usize::MAX).min(data.len());
            dec.feed(&data[skip..]);
            loop {
                if dec.next_lsn() >= range.to {
                    return true;
                }
                match dec.next_record() {
                    Ok(Some(rec)) if rec.lsn >= range.to => return true,
                    Ok(Some(rec)) => {
                        set.records += 1;
                        if let Err(why) = note(&mut set, &rec) {
                            set.uncertain = Some((UNDECODABLE, format!("record at {}: {why}", rec.lsn)));
                            return true;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        set.uncertain = Some((UNDECODABLE, e.to_string()));
                        return true;
                    }
                }
            }
        }
        false
    });
    if done {
        return set;
    }
    if dec.next_lsn() < range.to {
        set.uncertain = Some((UNDECODABLE, format!("the WAL ends at {} before {}", dec.next_lsn(), range.to)));
    }
    set
}

/// A segment's bytes: the archived copy (its frame's sizes and CRCs checked; the decoder then
/// checks every page header and record CRC, so the frame's BLAKE3 would only add a pass over
/// 16 MiB, as for archive-push's previous segment), else pg_wal's file; or why neither.
fn load_segment(repo: &Repository, wal_dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    let key = crate::repo::layout::wal_key(name);
    match repo.storage().get(&key) {
        Ok(framed) => crate::repo::frame::decode_crc_only(&framed, &format!("archived {name}"))
            .map_err(|e| format!("archived segment {name}: {e}")),
        Err(crate::repo::StorageError::NotFound { .. }) => {
            std::fs::read(wal_dir.join(name)).map_err(|_| format!("segment {name} is neither archived nor in pg_wal"))
        }
        Err(e) => Err(format!("archived segment {name}: {e}")),
    }
}

fn note(set: &mut ChangeSet, rec: &pgkeep_wal::DecodedRecord) -> Result<(), String> {
    for b in &rec.blocks {
        if b.forknum > 3 {
            return Err(format!("block reference to fork {}", b.forknum));
        }
        let fork = RelFork { spc: b.rnode.spcNode, db: b.rnode.dbNode, rel: b.rnode.relNode, fork: b.forknum };
        set.blocks.entry(fork).or_default().insert(b.blkno);
    }
    let fork_of =
        |r: &pgkeep_wal::RelFileNode, fork: u8| RelFork { spc: r.spcNode, db: r.dbNode, rel: r.relNode, fork };
    match rec.storage_change().map_err(|e| e.to_string())? {
        Some(StorageChange::SmgrCreate { rnode, forkNum }) => {
            set.created.insert(fork_of(&rnode, forkNum));
        }
        Some(StorageChange::SmgrTruncate { blkno, rnode, flags }) => {
            use pgkeep_wal::rmgr::storage::{SMGR_TRUNCATE_HEAP, SMGR_TRUNCATE_VM};
            let mut cut = |fork: RelFork, len: u32| {
                let e = set.truncated.entry(fork).or_insert(len);
                *e = (*e).min(len);
            };
            if flags & SMGR_TRUNCATE_HEAP != 0 {
                cut(fork_of(&rnode, 0), blkno);
            }
            // The map's own cut point is computed from `blkno`; its pages are few, so every one
            // is read again.
            if flags & SMGR_TRUNCATE_VM != 0 {
                cut(fork_of(&rnode, VISIBILITYMAP_FORKNUM), 0);
            }
        }
        Some(StorageChange::DbaseCreateFileCopy { db_id, tablespace_id, .. })
        | Some(StorageChange::DbaseCreateWalLog { db_id, tablespace_id }) => {
            set.copied_dbs.insert((tablespace_id, db_id));
        }
        Some(StorageChange::DbaseDrop { .. }) | None => {}
    }
    Ok(())
}

/// The timeline whose file holds each segment of the range (as recovery picks them: the newest
/// timeline of this backup's history that began at or before the segment), or why the
/// reference is not on this backup's history.
fn segment_timelines(repo: &Repository, r: &WalRange) -> Result<Box<dyn Fn(u64) -> TimeLineID>, String> {
    if r.from_timeline == r.to_timeline {
        let tli = r.to_timeline;
        return Ok(Box::new(move |_| tli));
    }
    let name = history_file_name(r.to_timeline);
    let text = match fetch_plain(repo, &name) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(format!("{name} is not in the archive")),
        Err(why) => return Err(format!("{name}: {why}")),
    };
    let history = parse_timeline_history(&String::from_utf8_lossy(&text)).map_err(|e| e.to_string())?;
    match history.iter().find(|e| e.tli == r.from_timeline) {
        Some(e) if e.end > r.from => {}
        _ => {
            return Err(format!(
                "timeline {} (the reference's, at {}) is not an ancestor of timeline {} there",
                r.from_timeline, r.from, r.to_timeline
            ))
        }
    }
    // (first segment of the timeline, timeline), newest first.
    let seg = r.seg_size;
    let mut starts: Vec<(u64, TimeLineID)> =
        vec![(history.last().map(|e| Lsn(e.end.0).segment_number(seg)).unwrap_or(0), r.to_timeline)];
    for (i, e) in history.iter().enumerate().rev() {
        let begin = if i == 0 { 0 } else { history[i - 1].end.segment_number(seg) };
        starts.push((begin, e.tli));
    }
    Ok(Box::new(move |segno| starts.iter().find(|(s, _)| *s <= segno).map(|(_, t)| *t).unwrap_or(1)))
}
