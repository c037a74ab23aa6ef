//! `archive_get_queue`: archive-get fetches the requested segment and the next ones of its
//! timeline in parallel, each checked in full (frame, BLAKE3, every record) before it enters
//! the spool; PostgreSQL's later calls are served by a rename, without opening the repository.
//! Recovery asks for one segment at a time, so this turns N round trips into one.
//!
//! The spool is keyed by repository, data directory and system identifier (pg_control), so
//! another restore never sees it. A spooled segment is used only while it is exactly the file
//! that was checked (inode, size, change time, CRC-32C) and while no timeline history fetched
//! since makes it wrong (its timeline ended before it). Prefetch stops at the first segment the
//! archive does not have and never changes the answer for the requested one.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use pgkeep_wal::{Lsn, TimeLineID, WalFileName};
use serde::{Deserialize, Serialize};

use super::get::{fetch_checked, get, write_dest, GetOutcome};
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
    crc32c: u32,
}

/// Timeline ends learnt from the history files recovery fetched: (timeline, end LSN).
const TIMELINES: &str = "timelines";

/// Marks (by its mtime) that a prefetcher found the end of the archive.
const END: &str = "end";

pub fn get_prefetching(
    t: &Transport,
    location: &RepoLocation,
    pgdata: Option<&Path>,
    open: impl Fn() -> crate::Result<Repository>,
    name: &str,
    dest: &Path,
    prefetch_only: bool,
) -> crate::Result<GetOutcome> {
    let pgdata = pgdata.map(crate::fsutil::absolute).or_else(|| spool::pgdata_of_wal_path(dest));
    let control = pgdata.as_deref().and_then(|d| {
        let bytes = std::fs::read(d.join("global/pg_control")).ok()?;
        pgkeep_wal::parse_pg_control(&bytes).ok()
    });
    let (Some(pgdata), Some(control)) = (pgdata, control) else { return get(&open()?, name, dest) };
    if t.get_queue == 0 {
        return get(&open()?, name, dest);
    }
    let seg_size = control.xlog_seg_size;
    let dir = t.spool_root(&pgdata).and_then(|root| {
        let key = spool::spool_key(&[&location.to_string(), &pgdata.to_string_lossy()], control.system_identifier);
        SpoolDir::open(&root, &format!("get-{key}"), &pgdata)
    });
    let dir = match dir {
        Ok(d) => d,
        Err(e) => {
            // Prefetch only saves time: recovery goes on without it (the line says how to fix it).
            tracing::warn!("fetching without prefetch: {e}");
            return get(&open()?, name, dest);
        }
    };
    let spooled = Spooled { dir: &dir, repository: location.to_string(), seg_size };
    match pgkeep_wal::parse_wal_file_name(name, seg_size) {
        Some(WalFileName::Segment { tli, segno }) if prefetch_only => {
            let Some(_lock) = dir.try_lock() else {
                return Ok(GetOutcome::Prefetched { after: name.to_string(), segments: 0 });
            };
            let window = spooled.window(tli, segno, t.get_queue);
            spooled.clean(&window);
            let segments = spooled.prefetch(&open()?, &window);
            Ok(GetOutcome::Prefetched { after: name.to_string(), segments })
        }
        Some(WalFileName::Segment { tli, segno }) => {
            if let Some(out) = spooled.serve(name, tli, segno, dest) {
                spooled.top_up(tli, segno, t.get_queue);
                return Ok(out);
            }
            // A prefetcher may be fetching this very segment: wait for it, then look again.
            let lock = dir.lock()?;
            if let Some(out) = spooled.serve(name, tli, segno, dest) {
                drop(lock);
                spooled.top_up(tli, segno, t.get_queue);
                return Ok(out);
            }
            spooled.fetch_with_queue(&open()?, name, tli, segno, t.get_queue, dest)
        }
        Some(WalFileName::History { .. }) => {
            let repo = open()?;
            let out = get(&repo, name, dest)?;
            if matches!(out, GetOutcome::Restored { .. }) {
                let _lock = dir.lock()?;
                spooled.learn_history(dest);
            }
            Ok(out)
        }
        _ => get(&open()?, name, dest),
    }
}

struct Spooled<'a> {
    dir: &'a SpoolDir,
    repository: String,
    seg_size: u32,
}

impl Spooled<'_> {
    /// Serve `name` from the spool when it holds exactly the checked file and no known timeline
    /// switch makes it wrong; anything else is discarded (the caller fetches it directly).
    fn serve(&self, name: &str, tli: TimeLineID, segno: u64, dest: &Path) -> Option<GetOutcome> {
        let rec_name = format!("{name}{RECORD_SUFFIX}");
        let rec: SpoolRecord = self.dir.read_json(&rec_name)?;
        let path = self.dir.file(name);
        let usable = rec.repository == self.repository
            && rec.file == name
            && !self.beyond_switch(tli, segno)
            && std::fs::metadata(&path).is_ok_and(|m| {
                (m.len(), m.ino(), m.ctime(), m.ctime_nsec()) == (rec.size, rec.ino, rec.ctime, rec.ctime_nsec)
            })
            && file_crc(&path).is_ok_and(|c| c == rec.crc32c);
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

    /// Fetch `name` and the next `queue` segments of its timeline in parallel; write `name` to
    /// `dest` and spool the others in order up to the first one the archive lacks.
    fn fetch_with_queue(
        &self,
        repo: &Repository,
        name: &str,
        tli: TimeLineID,
        segno: u64,
        queue: usize,
        dest: &Path,
    ) -> crate::Result<GetOutcome> {
        let ahead = self.window(tli, segno, queue);
        self.clean(&ahead);
        let own = std::thread::scope(|s| {
            s.spawn(|| self.prefetch(repo, &ahead));
            fetch_checked(repo, name)
        });
        let Some(plain) = own? else { return Ok(GetOutcome::NotFound { file: name.to_string() }) };
        write_dest(dest, &plain)
            .map_err(|e| super::ArchiveError::Write { dest: dest.display().to_string(), detail: e.to_string() })?;
        Ok(GetOutcome::Restored { file: name.to_string(), size: plain.len() as u64, prefetched: false })
    }

    /// The segments after `segno` that recovery will ask for next: up to `queue`, none past a
    /// known end of the timeline.
    fn window(&self, tli: TimeLineID, segno: u64, queue: usize) -> Vec<String> {
        (segno + 1..=segno + queue as u64)
            .take_while(|s| !self.beyond_switch(tli, *s))
            .map(|s| pgkeep_wal::xlog_file_name(tli, s, self.seg_size))
            .collect()
    }

    /// Fetch the window's missing segments in parallel and commit them in order; after the
    /// first one missing or failing nothing is kept (recovery ends or switches there).
    fn prefetch(&self, repo: &Repository, window: &[String]) -> usize {
        let fetched: Vec<(&str, Option<u32>)> = std::thread::scope(|s| {
            let workers: Vec<_> = window
                .iter()
                .filter(|n| !self.dir.file(n).exists())
                .map(|n| (n.as_str(), s.spawn(move || self.fetch_to_temp(repo, n))))
                .collect();
            workers.into_iter().map(|(n, w)| (n, w.join().unwrap_or(None))).collect()
        });
        let mut gap = false;
        let mut kept = 0;
        for (n, crc) in fetched {
            gap |= crc.is_none();
            if gap || crc.is_some_and(|c| self.commit(n, c).is_err()) {
                self.dir.remove(&format!("{TMP_PREFIX}{n}"));
                self.dir.remove(n);
            } else {
                kept += 1;
            }
        }
        if gap {
            // Tells hits not to start another prefetcher for a while: the archive ends here.
            let _ = self.dir.write(END, b"");
        }
        kept
    }

    /// After a hit: when fewer than half the window is spooled, a prefetcher process tops it
    /// up while PostgreSQL replays what it has, unless one is running or the archive ended
    /// within the window moments ago.
    fn top_up(&self, tli: TimeLineID, segno: u64, queue: usize) {
        let window = self.window(tli, segno, queue);
        let have = window.iter().filter(|n| self.dir.file(n).exists()).count();
        let recently_ended = std::fs::metadata(self.dir.file(END))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < std::time::Duration::from_secs(10)));
        if window.is_empty() || have * 2 > window.len() || recently_ended || self.dir.busy() {
            return;
        }
        // The same command line plus --prefetch-only, detached: PostgreSQL does not wait for it.
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

    /// Fetch and check one segment into the spool's temp name; its CRC-32C, or None when the
    /// archive lacks it or it fails any check (then PostgreSQL's own call reports it).
    fn fetch_to_temp(&self, repo: &Repository, name: &str) -> Option<u32> {
        let res = fetch_checked(repo, name).and_then(|plain| {
            let Some(plain) = plain else { return Ok(None) };
            self.dir
                .write_raw(&format!("{TMP_PREFIX}{name}"), &plain)
                .map_err(|e| crate::Error::other(e.to_string()))?;
            Ok(Some(crc32c::crc32c(&plain)))
        });
        res.unwrap_or_else(|e| {
            tracing::info!("not prefetching {name}: {e}");
            None
        })
    }

    /// Move a checked temp into place and record exactly that file (the rename changes its
    /// change time, so the record is taken after it).
    fn commit(&self, name: &str, crc32c: u32) -> std::io::Result<()> {
        std::fs::rename(self.dir.file(&format!("{TMP_PREFIX}{name}")), self.dir.file(name))?;
        let m = std::fs::metadata(self.dir.file(name))?;
        let rec = SpoolRecord {
            repository: self.repository.clone(),
            file: name.to_string(),
            size: m.len(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
            crc32c,
        };
        self.dir.write_json(&format!("{name}{RECORD_SUFFIX}"), &rec)
    }

    /// Keep only the segments of the coming window: older ones were served or skipped, others
    /// belong to a timeline recovery left; temps are a killed prefetcher's (we hold the lock).
    fn clean(&self, window: &[String]) {
        for n in self.dir.names() {
            let seg = n.strip_suffix(RECORD_SUFFIX).unwrap_or(&n);
            if n == TIMELINES || n == END || window.iter().any(|w| w == seg) {
                continue;
            }
            self.dir.remove(&n);
        }
    }

    /// Whether a timeline history fetched during this recovery says `tli` ended before this
    /// segment starts.
    fn beyond_switch(&self, tli: TimeLineID, segno: u64) -> bool {
        let ends: Vec<(TimeLineID, u64)> = self.dir.read_json(TIMELINES).unwrap_or_default();
        let start = segno.saturating_mul(self.seg_size as u64);
        ends.iter().any(|(t, end)| *t == tli && start >= *end)
    }

    /// Remember where the timelines of a fetched history file end and drop the spooled
    /// segments that lie beyond.
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
            self.clean(&[]);
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

/// CRC-32C of a spooled file (16 GB/s here: the check costs far less than the copy it replaces).
fn file_crc(path: &Path) -> std::io::Result<u32> {
    let f = std::fs::File::open(path)?;
    // SAFETY: read-only mapping of a spool file only pgkeep writes, under temp names first.
    let m = unsafe { memmap2::MmapOptions::new().populate().map(&f)? };
    Ok(crc32c::crc32c(&m))
}
