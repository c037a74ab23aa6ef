//! `archive_get_queue`: a detached prefetcher process fetches the segments after the one
//! recovery asked for, each checked in full (frame, BLAKE3, every record) before it enters the
//! spool; PostgreSQL's later calls are served by a rename, without opening the repository.
//! A call returns as soon as its own segment is in place: fetching overlaps replay.
//!
//! The spool is keyed by repository, data directory and system identifier (pg_control), so
//! another restore never sees it. A spooled segment is used only while it is exactly the file
//! that was checked (inode, size, change time) and while no timeline history fetched since
//! makes it wrong (its timeline ended before it). Prefetch stops at the first segment the
//! archive does not have and never changes the answer for the requested one.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use pgkeep_wal::{Lsn, TimeLineID, WalFileName};
use serde::{Deserialize, Serialize};

use super::get::{fetch_checked_into, get, write_dest, GetOutcome, Sink};
use super::spool::{self, SpoolDir, Transport, RECORD_SUFFIX, TMP_PREFIX};
use crate::repo::{RepoLocation, Repository};

/// What the spool knows of a segment it holds: where it came from and exactly which file was
/// checked.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SpoolRecord {
    repository: String,
    file: String,
    size: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// Timeline ends learnt from the history files recovery fetched: (timeline, end LSN).
const TIMELINES: &str = "timelines";

/// Marks (by its mtime) that a prefetcher found the end of the archive.
pub(super) const END: &str = "end";

/// How long after a prefetcher found the end of the archive no other one is started.
const END_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// The segment the last call that missed asked for: the prefetcher follows recovery there.
const WANT: &str = "want";

/// The names a running prefetcher is fetching (JSON list), so a call for one of them waits for
/// it instead of fetching it a second time.
pub(super) const FETCHING: &str = "fetching";

/// The longest a call waits for a running prefetcher to deliver its segment.
const AWAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn get_prefetching(
    t: &Transport,
    location: &RepoLocation,
    pgdata: Option<&Path>,
    open: impl Fn() -> crate::Result<Repository>,
    name: &str,
    dest: &Path,
    prefetch_only: bool,
) -> crate::Result<GetOutcome> {
    let (dir, seg_size) = match spool_of(t, location, pgdata, dest) {
        Ok(Some(found)) => found,
        Ok(None) => return get(&open()?, name, dest),
        Err(e) => {
            // Prefetch only saves time: recovery goes on without it (the line says how to fix it).
            tracing::warn!("fetching without prefetch: {e}");
            return get(&open()?, name, dest);
        }
    };
    let spooled = Spooled { dir: &dir, repository: location.to_string(), seg_size };
    match pgkeep_wal::parse_wal_file_name(name, seg_size) {
        Some(WalFileName::Segment { tli, segno }) if prefetch_only => {
            let segments = super::prefetcher::run(&spooled, &open, tli, segno, t.get_queue)?;
            Ok(GetOutcome::Prefetched { after: name.to_string(), segments })
        }
        Some(WalFileName::Segment { tli, segno }) => {
            let served =
                spooled.serve(name, tli, segno, dest).or_else(|| spooled.await_prefetcher(name, tli, segno, dest));
            if let Some(out) = served {
                spooled.ensure_prefetcher(tli, segno, t.get_queue);
                return Ok(out);
            }
            // Recovery is ahead of the prefetcher (or none runs): tell it where recovery is,
            // fetch this segment alone and return as soon as it is in place.
            let _ = spooled.dir.write(WANT, name.as_bytes());
            let out = get(&open()?, name, dest)?;
            if matches!(out, GetOutcome::Restored { .. }) {
                spooled.ensure_prefetcher(tli, segno, t.get_queue);
            }
            Ok(out)
        }
        Some(WalFileName::History { .. }) => {
            let repo = open()?;
            let out = get(&repo, name, dest)?;
            if matches!(out, GetOutcome::Restored { .. }) {
                spooled.learn_history(dest);
            }
            Ok(out)
        }
        _ => get(&open()?, name, dest),
    }
}

/// The spool of the cluster being restored and its segment size; None without a queue or
/// without a data directory with a readable pg_control (a manual call elsewhere).
fn spool_of(
    t: &Transport,
    location: &RepoLocation,
    pgdata: Option<&Path>,
    dest: &Path,
) -> Result<Option<(SpoolDir, u32)>, super::ArchiveError> {
    if t.get_queue == 0 {
        return Ok(None);
    }
    let pgdata = pgdata.map(crate::fsutil::absolute).or_else(|| spool::pgdata_of_wal_path(dest));
    let control = pgdata.as_deref().and_then(|d| {
        let bytes = std::fs::read(d.join("global/pg_control")).ok()?;
        pgkeep_wal::parse_pg_control(&bytes).ok()
    });
    let (Some(pgdata), Some(control)) = (pgdata, control) else { return Ok(None) };
    let root = t.spool_root(&pgdata)?;
    let key = spool::spool_key(&[&location.to_string(), &pgdata.to_string_lossy()], control.system_identifier);
    let dir = SpoolDir::open(&root, &format!("get-{key}"), &pgdata)?;
    Ok(Some((dir, control.xlog_seg_size)))
}

/// Only a spool hit, for the binary's start-up fast path: the segment `name` as
/// [`get_prefetching`] would serve it from the spool (same record checks, same refill of the
/// queue), or None, and then the caller takes the full path.
pub fn serve_spooled(
    t: &Transport,
    location: &RepoLocation,
    pgdata: Option<&Path>,
    name: &str,
    dest: &Path,
) -> Option<GetOutcome> {
    let (dir, seg_size) = spool_of(t, location, pgdata, dest).ok()??;
    let Some(WalFileName::Segment { tli, segno }) = pgkeep_wal::parse_wal_file_name(name, seg_size) else {
        return None;
    };
    let spooled = Spooled { dir: &dir, repository: location.to_string(), seg_size };
    let out = spooled.serve(name, tli, segno, dest)?;
    spooled.ensure_prefetcher(tli, segno, t.get_queue);
    Some(out)
}

pub(super) struct Spooled<'a> {
    pub(super) dir: &'a SpoolDir,
    repository: String,
    seg_size: u32,
}

impl Spooled<'_> {
    /// Serve `name` from the spool when it holds exactly the checked file and no known timeline
    /// switch makes it wrong; anything else is discarded (the caller fetches it directly).
    /// The record proves the file is the one the prefetcher checked: only pgkeep writes the
    /// spool, under temp names first, and any later write, truncation or replacement changes
    /// the inode or the change time, which a user cannot set. So the bytes are not hashed
    /// again: on a hit that would cost more than the rename it guards.
    fn serve(&self, name: &str, tli: TimeLineID, segno: u64, dest: &Path) -> Option<GetOutcome> {
        let rec_name = format!("{name}{RECORD_SUFFIX}");
        let rec: SpoolRecord = self.dir.read_json(&rec_name)?;
        let path = self.dir.file(name);
        let usable = rec.repository == self.repository
            && rec.file == name
            && !self.beyond_switch(tli, segno)
            && std::fs::metadata(&path).is_ok_and(|m| {
                (m.len(), m.ino(), m.ctime(), m.ctime_nsec()) == (rec.size, rec.ino, rec.ctime, rec.ctime_nsec)
            });
        self.dir.remove(&rec_name);
        if !usable {
            tracing::info!(
                "the prefetched {name} is not usable (changed, or its timeline ended before it); fetching it again"
            );
            self.dir.remove(name);
            return None;
        }
        let moved = std::fs::rename(&path, dest).or_else(|_| {
            // Another file system (spool_dir elsewhere): copy, same atomic write as a fetch.
            let data = std::fs::read(&path)?;
            write_dest(dest, &data)?;
            std::fs::remove_file(&path)
        });
        match moved {
            Ok(()) => Some(GetOutcome::Restored { file: name.to_string(), size: rec.size, prefetched: true }),
            Err(e) => {
                tracing::info!("cannot move the prefetched {name} into place ({e}); fetching it again");
                self.dir.remove(name);
                None
            }
        }
    }

    /// A running prefetcher that is fetching `name` right now will have it in place sooner
    /// than a fetch of our own: wait for it while it runs and still lists `name` as in flight.
    fn await_prefetcher(&self, name: &str, tli: TimeLineID, segno: u64, dest: &Path) -> Option<GetOutcome> {
        let deadline = std::time::Instant::now() + AWAIT_LIMIT;
        loop {
            let fetching: Vec<String> = self.dir.read_json(FETCHING).unwrap_or_default();
            if !fetching.iter().any(|n| n == name) || !self.dir.busy() || std::time::Instant::now() > deadline {
                // It committed it, dropped it or left: one last look.
                return self.serve(name, tli, segno, dest);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            if let Some(out) = self.serve(name, tli, segno, dest) {
                return Some(out);
            }
        }
    }

    /// After a segment is in place: make sure a prefetcher runs (detached, so PostgreSQL replays
    /// while it fetches), unless one runs already, the window is full, or a prefetcher found
    /// the end of the archive moments ago.
    fn ensure_prefetcher(&self, tli: TimeLineID, segno: u64, queue: usize) {
        if self.dir.busy() {
            return;
        }
        let recently_ended = std::fs::metadata(self.dir.file(END))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < END_PAUSE));
        let window = self.window(tli, segno, queue);
        if recently_ended || window.iter().all(|n| self.dir.file(n).exists()) {
            return;
        }
        // The same command line plus --prefetch-only, in its own process group, output
        // discarded: the server waits for this process, not for the prefetcher.
        let Ok(exe) = std::env::current_exe() else { return };
        let spawned = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .arg("--prefetch-only")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        if let Err(e) = spawned {
            tracing::info!("cannot start a prefetcher: {e}");
        }
    }

    /// The segments after `segno` that recovery will ask for next: up to `queue`, none past a
    /// known end of the timeline.
    pub(super) fn window(&self, tli: TimeLineID, segno: u64, queue: usize) -> Vec<String> {
        (segno + 1..=segno + queue as u64)
            .take_while(|s| !self.beyond_switch(tli, *s))
            .map(|s| self.name(tli, s))
            .collect()
    }

    pub(super) fn name(&self, tli: TimeLineID, segno: u64) -> String {
        pgkeep_wal::xlog_file_name(tli, segno, self.seg_size)
    }

    /// Fetch and check one segment into the spool's temp name; false when the archive lacks it
    /// or it fails any check (then PostgreSQL's own call reports it).
    pub(super) fn fetch_to_temp(&self, repo: &Repository, name: &str) -> bool {
        // The temp is written while the checks run; it is committed only after they passed.
        let tmp = format!("{TMP_PREFIX}{name}");
        let res = self
            .dir
            .create_file(&tmp)
            .map_err(|e| crate::Error::other(e.to_string()))
            .and_then(|f| Ok(fetch_checked_into(repo, name, Sink::File(f), &self.dir.file(&tmp))?.is_some()));
        res.unwrap_or_else(|e| {
            tracing::info!("not prefetching {name}: {e}");
            false
        })
    }

    /// Whether `name` is spooled with its record (what `serve` looks at first).
    pub(super) fn is_spooled(&self, name: &str) -> bool {
        self.dir.file(&format!("{name}{RECORD_SUFFIX}")).exists() && self.dir.file(name).exists()
    }

    /// Move a checked temp into place and record exactly that file (the rename changes its
    /// change time, so the record is taken after it).
    pub(super) fn commit(&self, name: &str) -> std::io::Result<()> {
        std::fs::rename(self.dir.file(&format!("{TMP_PREFIX}{name}")), self.dir.file(name))?;
        let m = std::fs::metadata(self.dir.file(name))?;
        let rec = SpoolRecord {
            repository: self.repository.clone(),
            file: name.to_string(),
            size: m.len(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        };
        self.dir.write_json(&format!("{name}{RECORD_SUFFIX}"), &rec)
    }

    /// A segment, its record and its temp.
    pub(super) fn discard(&self, name: &str) {
        self.dir.remove(&format!("{name}{RECORD_SUFFIX}"));
        self.dir.remove(&format!("{TMP_PREFIX}{name}"));
        self.dir.remove(name);
    }

    /// Keep only the segments of the coming window: older ones were served or skipped, others
    /// belong to a timeline recovery left; temps are a killed prefetcher's (the caller holds
    /// the lock, so no live writer owns them).
    pub(super) fn clean(&self, window: &[String]) {
        for n in self.dir.names() {
            let seg = n.strip_suffix(RECORD_SUFFIX).unwrap_or(&n);
            if [TIMELINES, END, WANT, FETCHING].contains(&seg) || window.iter().any(|w| w == seg) {
                continue;
            }
            self.dir.remove(&n);
        }
    }

    /// The segment a call that found nothing in the spool asked for (recovery is there), once:
    /// the prefetcher consumes it.
    pub(super) fn take_wanted(&self) -> Option<(TimeLineID, u64)> {
        let name = std::fs::read_to_string(self.dir.file(WANT)).ok()?;
        self.dir.remove(WANT);
        match pgkeep_wal::parse_wal_file_name(name.trim(), self.seg_size)? {
            WalFileName::Segment { tli, segno } => Some((tli, segno)),
            _ => None,
        }
    }

    /// Whether a timeline history fetched during this recovery says `tli` ended before this
    /// segment starts.
    pub(super) fn beyond_switch(&self, tli: TimeLineID, segno: u64) -> bool {
        let ends: Vec<(TimeLineID, u64)> = self.dir.read_json(TIMELINES).unwrap_or_default();
        let start = segno.saturating_mul(self.seg_size as u64);
        ends.iter().any(|(t, end)| *t == tli && start >= *end)
    }

    /// Remember where the timelines of a fetched history file end and drop the spooled
    /// segments that lie beyond. Not under the prefetcher's lock (it may run for long): the
    /// file is replaced atomically, and serving checks it again, so a segment a running
    /// prefetcher commits beyond the switch is never used.
    fn learn_history(&self, file: &Path) {
        let Some(entries) =
            std::fs::read_to_string(file).ok().and_then(|t| pgkeep_wal::parse_timeline_history(&t).ok())
        else {
            return;
        };
        let mut ends: Vec<(TimeLineID, u64)> = self.dir.read_json(TIMELINES).unwrap_or_default();
        for e in entries {
            let Lsn(end) = e.end;
            if !ends.contains(&(e.tli, end)) {
                ends.push((e.tli, end));
            }
        }
        if let Err(e) = self.dir.write_json(TIMELINES, &ends) {
            tracing::warn!(
                "cannot record timeline switches in {}: {e}; dropping the prefetched segments",
                self.dir.path.display()
            );
            for n in self.dir.names() {
                if !n.starts_with(TMP_PREFIX) {
                    self.dir.remove(&n);
                }
            }
            return;
        }
        for n in self.dir.names() {
            let seg = n.strip_suffix(RECORD_SUFFIX).unwrap_or(&n);
            if let Some(WalFileName::Segment { tli, segno }) = pgkeep_wal::parse_wal_file_name(seg, self.seg_size) {
                if self.beyond_switch(tli, segno) {
                    self.dir.remove(&n);
                }
            }
        }
    }
}
