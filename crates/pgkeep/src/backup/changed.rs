//! Changed blocks between a reference backup and this one, from the WAL: every block
//! reference of every record from the reference's start LSN up to this backup's start LSN,
//! plus what block references do not show (relation files created, truncated, databases
//! copied at file level). When the walk cannot be sure of everything it says why, and the
//! caller reads every relation file whole.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use pgkeep_wal::{
    history_file_name, parse_timeline_history, xlog_file_name, DecoderOptions, Lsn, StorageChange, TimeLineID,
    WalDecoder,
};

use super::relfile::{RelFork, VISIBILITYMAP_FORKNUM};
use crate::repo::frame::FrameReader;
use crate::repo::seal::read_full;
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

/// Where the walk starts, and the timeline it ends on. Where it ends (this backup's start LSN)
/// is learnt while it runs: see [`WalEnd`].
pub struct WalRange {
    pub from: Lsn,
    pub from_timeline: TimeLineID,
    pub to_timeline: TimeLineID,
    pub seg_size: u32,
    pub pg_major: u32,
    pub system_identifier: u64,
}

/// This backup's start LSN, which the walk learns while it runs: it begins before
/// pg_backup_start so that walking the archived WAL overlaps the checkpoint. Until the end is
/// known every archived record is noted (records past the end only add blocks, which is
/// safe); then the walk stops there.
pub struct WalEnd {
    state: Mutex<EndState>,
    changed: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EndState {
    Unknown,
    At(Lsn),
    /// The backup failed before it learnt its start: the walk stops, its result unused.
    Abandoned,
}

impl WalEnd {
    pub fn unknown() -> Self {
        WalEnd { state: Mutex::new(EndState::Unknown), changed: Condvar::new() }
    }

    pub fn set(&self, to: Lsn) {
        self.put(EndState::At(to));
    }

    fn put(&self, s: EndState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
        self.changed.notify_all();
    }

    fn get(&self) -> EndState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the end changes or `timeout` passes (a segment may be archived meanwhile).
    fn wait_unknown(&self, timeout: Duration) {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout_while(guard, timeout, |s| *s == EndState::Unknown);
    }
}

/// Abandons the walk when dropped before its end was set: whatever path leaves the backup
/// early, a walk waiting for the archive stops instead of waiting forever.
pub struct AbandonUnlessSet<'a>(pub &'a WalEnd);

impl Drop for AbandonUnlessSet<'_> {
    fn drop(&mut self) {
        if self.0.get() == EndState::Unknown {
            self.0.put(EndState::Abandoned);
        }
    }
}

/// Decompressed WAL travels from the fetching thread to the decoding one in chunks of this
/// size, in buffers that are handed back: no segment is ever held whole, and a segment that
/// ends in an XLOG_SWITCH is not decompressed past the switch.
const CHUNK: usize = 1 << 20;

/// How often a walk waiting for the backup's start looks for newly archived segments.
const ARCHIVE_POLL: Duration = Duration::from_millis(50);

/// Bytes of one segment from `offset` on (relative to the segment's start).
struct Chunk {
    segno: u64,
    offset: u64,
    buf: Vec<u8>,
}

/// Walk the archived WAL of `range` up to `end` (segments not archived yet, such as the one
/// holding this backup's start, come from `wal_dir`, the cluster's pg_wal, once the end is
/// known; the decoder checks their page addresses, system identifier and record CRCs just the
/// same). One thread fetches and decompresses while this one decodes.
pub fn walk(repo: &Repository, wal_dir: &Path, range: &WalRange, end: &WalEnd) -> ChangeSet {
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
    // Where the decoder needs bytes from: the fetcher skips the rest of a segment past it.
    let needed = AtomicU64::new(range.from.0);
    let fetch = Fetch { repo, wal_dir, range, end, tli_of: tli_of.as_ref(), needed: &needed };
    let done = std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, String>>(4);
        let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        sc.spawn(move || fetch.run(&tx, &spare));
        for chunk in rx {
            let chunk = match chunk {
                Ok(c) => c,
                Err(why) => {
                    set.uncertain = Some((WAL_GAP, why));
                    return true;
                }
            };
            let at = Lsn(Lsn::segment_start(chunk.segno, range.seg_size).0 + chunk.offset);
            let fed = dec.feed_at(at, &chunk.buf);
            let _ = give_back.send(chunk.buf);
            if !fed {
                set.uncertain = Some((UNDECODABLE, format!("the WAL before {at} was skipped while still needed")));
                return true;
            }
            // Read once per chunk: an end learnt in the middle of one only means a few more
            // records are noted, which is safe.
            let to = match end.get() {
                EndState::At(to) => to,
                EndState::Abandoned => return true,
                EndState::Unknown => Lsn(u64::MAX),
            };
            loop {
                if dec.next_lsn() >= to {
                    return true;
                }
                match dec.next_record() {
                    Ok(Some(rec)) if rec.lsn >= to => return true,
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
            needed.store(dec.next_lsn().0, Ordering::Relaxed);
        }
        false
    });
    if done {
        return set;
    }
    if let EndState::At(to) = end.get() {
        if dec.next_lsn() < to {
            set.uncertain = Some((UNDECODABLE, format!("the WAL ends at {} before {to}", dec.next_lsn())));
        }
    }
    set
}

/// The fetching side of a walk.
struct Fetch<'a> {
    repo: &'a Repository,
    wal_dir: &'a Path,
    range: &'a WalRange,
    end: &'a WalEnd,
    tli_of: &'a (dyn Fn(u64) -> TimeLineID + Send + Sync),
    needed: &'a AtomicU64,
}

type ChunkSender = std::sync::mpsc::SyncSender<Result<Chunk, String>>;

impl Fetch<'_> {
    /// Send every segment from the walk's first to the one holding the end, in chunks; stop
    /// at the first one that cannot be had (sent as an error) or when the decoder hangs up.
    fn run(&self, tx: &ChunkSender, spare: &std::sync::mpsc::Receiver<Vec<u8>>) {
        let seg = self.range.seg_size;
        let mut segno = self.range.from.segment_number(seg);
        loop {
            let end = self.end.get();
            match end {
                EndState::Abandoned => return,
                EndState::At(to) if segno > Lsn(to.0.saturating_sub(1)).segment_number(seg) => return,
                _ => {}
            }
            let name = xlog_file_name((self.tli_of)(segno), segno, seg);
            let source = match self.open(&name, end) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    // Not archived yet and the end unknown: it may be archived any moment.
                    self.end.wait_unknown(ARCHIVE_POLL);
                    continue;
                }
                Err(why) => {
                    let _ = tx.send(Err(why));
                    return;
                }
            };
            match self.stream(segno, &name, source, tx, spare) {
                Ok(true) => segno += 1,
                Ok(false) => return,
                Err(why) => {
                    let _ = tx.send(Err(why));
                    return;
                }
            }
        }
    }

    /// A segment's bytes as a reader: the archived copy (its frame's sizes and CRC are checked
    /// when read to the end; the decoder checks every page header and record CRC, so the
    /// frame's BLAKE3 is not computed, and a segment that ends in a switch is not read to its
    /// end), else pg_wal's file once the end is known; `None` to wait for the archive.
    fn open(&self, name: &str, end: EndState) -> Result<Option<Box<dyn Read + Send>>, String> {
        let key = crate::repo::layout::wal_key(name);
        match self.repo.storage().get(&key) {
            Ok(framed) => {
                let len = framed.len() as u64;
                let r = FrameReader::unhashed(std::io::Cursor::new(framed), len, &format!("archived segment {name}"))
                    .map_err(|e| e.to_string())?;
                Ok(Some(Box::new(r)))
            }
            Err(crate::repo::StorageError::NotFound { .. }) if end == EndState::Unknown => Ok(None),
            Err(crate::repo::StorageError::NotFound { .. }) => std::fs::File::open(self.wal_dir.join(name))
                .map(|f| Some(Box::new(f) as Box<dyn Read + Send>))
                .map_err(|_| format!("segment {name} is neither archived nor in pg_wal")),
            Err(e) => Err(format!("archived segment {name}: {e}")),
        }
    }

    /// Send one segment in chunks; `false` when the decoder has hung up.
    fn stream(
        &self,
        segno: u64,
        name: &str,
        mut r: Box<dyn Read + Send>,
        tx: &ChunkSender,
        spare: &std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<bool, String> {
        let seg = u64::from(self.range.seg_size);
        let seg_start = Lsn::segment_start(segno, self.range.seg_size).0;
        let mut offset = 0u64;
        while offset < seg {
            // Past a switch the decoder needs nothing more of this segment.
            if self.needed.load(Ordering::Relaxed) >= seg_start + seg {
                return Ok(true);
            }
            let mut buf = spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            buf.resize(CHUNK.min((seg - offset) as usize), 0);
            let n = read_full(&mut r, &mut buf).map_err(|e| format!("segment {name}: {e}"))?;
            if n == 0 {
                return Err(format!("segment {name} ends after {offset} bytes"));
            }
            buf.truncate(n);
            if tx.send(Ok(Chunk { segno, offset, buf })).is_err() {
                return Ok(false);
            }
            offset += n as u64;
        }
        Ok(true)
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
fn segment_timelines(repo: &Repository, r: &WalRange) -> Result<Box<dyn Fn(u64) -> TimeLineID + Send + Sync>, String> {
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
