//! `pgkeep wal verify`: is the archive whole and intact?
//!
//! Per timeline (its start taken from the `.history` files):
//! - continuity: every segment from the required start to the timeline's end is present.
//!   The required start is the oldest complete backup's start segment (or, with no backup, the
//!   oldest archived segment; for a timeline with a parent, its switch segment). A timeline's
//!   end is its newest archived segment, and at least the segment before a child's switch
//!   point (the child's first file holds the rest of that segment). A `.partial` counts for
//!   the last segment of a timeline.
//! - integrity: every archived segment is read back (stored checksums verified) and every
//!   record validated (`validate_segment`, the same check `archive-push` makes, with the
//!   previous segment so a record crossing into it is CRC-checked too).
//! - each complete backup's WAL range (start..stop segment) is present and intact.
//! - each complete backup's newer timelines: those branched from its timeline after it began,
//!   which `recovery_target_timeline = latest` follows (a promoted copy that archived here
//!   leaves one).
//!
//! `.history` and `.backup` files are parsed. Exit 0 only when nothing is missing or damaged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Instant;

use pgkeep_wal::{
    parse_timeline_history, parse_wal_file_name, xlog_file_name, Lsn, SegmentExpectations, TimeLineHistoryEntry,
    TimeLineID, WalFileName, XLogSegNo,
};
use serde::Serialize;

use super::archived::{fetch_plain, fetch_segment, Archived};
use super::timelines::{descendants, NewerTimeline};
use crate::repo::catalog;
use crate::repo::{layout, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct TimelineReport {
    pub timeline: TimeLineID,
    /// The timeline it branched from, and where (from its `.history` file).
    pub parent: Option<TimeLineID>,
    pub switch_point: Option<Lsn>,
    /// First and last segment required on this timeline.
    pub first: Option<String>,
    pub last: Option<String>,
    pub segments_checked: usize,
    pub missing: Vec<String>,
    pub damaged: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BadFile {
    pub file: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupWal {
    pub id: String,
    pub start_wal: String,
    pub stop_wal: String,
    /// True when every segment start..stop is present and intact.
    pub ok: bool,
    pub missing: Vec<String>,
    pub damaged: Vec<String>,
    /// Timelines that branched from the backup's after it began (recovery to `latest`
    /// follows the newest).
    pub newer_timelines: Vec<NewerTimeline>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub repo: String,
    pub ok: bool,
    pub timelines: Vec<TimelineReport>,
    pub segments_checked: usize,
    /// Plain bytes of WAL read back and validated.
    pub bytes_checked: u64,
    /// Segments that should be in the archive and are not.
    pub missing_segments: Vec<String>,
    /// Archived files that fail their checksums or whose WAL is invalid.
    pub damaged_segments: Vec<BadFile>,
    pub backups: Vec<BackupWal>,
    pub duration_seconds: f64,
}

#[derive(Default)]
struct Timeline {
    segments: BTreeMap<XLogSegNo, String>,
    partials: BTreeMap<XLogSegNo, String>,
    history: Option<Vec<TimeLineHistoryEntry>>,
}

pub fn verify(repo: &Repository) -> crate::Result<VerifyReport> {
    let started = Instant::now();
    let seg_size = repo.info().wal_segment_size;
    let objects = repo.storage().list(layout::WAL_PREFIX)?;
    let mut tls: BTreeMap<TimeLineID, Timeline> = BTreeMap::new();
    let mut damaged: Vec<BadFile> = Vec::new();
    let mut backup_files = Vec::new();
    for o in &objects {
        let name = o.key.rsplit('/').next().unwrap_or(&o.key).to_string();
        match parse_wal_file_name(&name, seg_size) {
            Some(WalFileName::Segment { tli, segno }) => {
                tls.entry(tli).or_default().segments.insert(segno, name);
            }
            Some(WalFileName::Partial { tli, segno }) => {
                tls.entry(tli).or_default().partials.insert(segno, name);
            }
            Some(WalFileName::History { tli }) => {
                let entry = tls.entry(tli).or_default();
                match fetch_plain(repo, &name) {
                    Ok(Some(b)) => match std::str::from_utf8(&b)
                        .map_err(|e| e.to_string())
                        .and_then(|t| parse_timeline_history(t).map_err(|e| e.to_string()))
                    {
                        Ok(h) => entry.history = Some(h),
                        Err(e) => damaged.push(BadFile { file: name, problem: e }),
                    },
                    Ok(None) => {}
                    Err(e) => damaged.push(BadFile { file: name, problem: e }),
                }
            }
            Some(WalFileName::BackupHistory { .. }) => backup_files.push(name),
            None => damaged.push(BadFile {
                file: o.key.clone(),
                problem: "not a WAL file name (stray object in the archive)".into(),
            }),
        }
    }
    for name in backup_files {
        match fetch_plain(repo, &name) {
            Ok(Some(b)) => {
                let parsed = std::str::from_utf8(&b)
                    .map_err(|e| e.to_string())
                    .and_then(|t| pgkeep_wal::parse_backup_label(t).map_err(|e| e.to_string()));
                if let Err(e) = parsed {
                    damaged.push(BadFile { file: name, problem: e });
                }
            }
            Ok(None) => {}
            Err(e) => damaged.push(BadFile { file: name, problem: e }),
        }
    }

    let backups = catalog::complete(repo)?;
    let oldest_start: Option<XLogSegNo> = backups
        .iter()
        .filter_map(|b| match parse_wal_file_name(&b.start_wal, seg_size) {
            Some(WalFileName::Segment { segno, .. }) => Some(segno),
            _ => None,
        })
        .min();

    // Where each timeline branched off its parent, and where children branched off it.
    let fork = |tli: TimeLineID| -> Option<(TimeLineID, Lsn)> {
        tls.get(&tli).and_then(|t| t.history.as_ref()).and_then(|h| h.last()).map(|e| (e.tli, e.end))
    };
    let mut child_forks: BTreeMap<TimeLineID, Vec<Lsn>> = BTreeMap::new();
    for &tli in tls.keys() {
        if let Some((parent, at)) = fork(tli) {
            child_forks.entry(parent).or_default().push(at);
        }
    }

    let sysid = repo.info().system_identifier_u64();
    let major = repo.info().pg_major;
    let mut reports = Vec::new();
    let mut missing_all = Vec::new();
    let mut status: BTreeMap<String, bool> = BTreeMap::new(); // name -> intact
    let mut checked = 0usize;
    let mut bytes = 0u64;
    let tli_list: Vec<TimeLineID> = tls.keys().copied().collect();
    for tli in tli_list {
        let t = &tls[&tli];
        let parent = fork(tli);
        let begin_seg = parent.map(|(_, at)| at.segment_number(seg_size));
        let present_min = t.segments.keys().next().copied().or_else(|| t.partials.keys().next().copied());
        let present_max = t.segments.keys().next_back().copied();
        let child_max = child_forks
            .get(&tli)
            .and_then(|v| v.iter().map(|l| l.segment_number(seg_size)).max())
            .map(|s| s.saturating_sub(1));
        let first = match (oldest_start, begin_seg) {
            (Some(o), Some(b)) => Some(o.max(b)),
            (Some(o), None) => Some(o),
            (None, Some(b)) => Some(b),
            (None, None) => present_min,
        };
        let last = match (present_max, child_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut required: BTreeSet<XLogSegNo> = BTreeSet::new();
        if let (Some(f), Some(l)) = (first, last) {
            if f <= l {
                required.extend(f..=l);
            }
        }
        let mut todo: BTreeSet<XLogSegNo> = required.clone();
        todo.extend(t.segments.keys().copied());
        let mut tr = TimelineReport {
            timeline: tli,
            parent: parent.map(|p| p.0),
            switch_point: parent.map(|p| p.1),
            first: required.first().map(|s| xlog_file_name(tli, *s, seg_size)),
            last: required.last().map(|s| xlog_file_name(tli, *s, seg_size)),
            segments_checked: 0,
            missing: Vec::new(),
            damaged: Vec::new(),
        };
        let mut previous: Option<(XLogSegNo, Vec<u8>)> = None;
        for segno in todo {
            let name = match t.segments.get(&segno) {
                Some(n) => n.clone(),
                None => match t.partials.get(&segno) {
                    Some(p) if Some(segno) == last || t.segments.range(segno..).next().is_none() => p.clone(),
                    _ => {
                        let n = xlog_file_name(tli, segno, seg_size);
                        tr.missing.push(n.clone());
                        missing_all.push(n);
                        previous = None;
                        continue;
                    }
                },
            };
            let expect =
                SegmentExpectations { tli, segno, seg_size, system_identifier: Some(sysid), pg_major: Some(major) };
            let prev = previous.as_ref().filter(|(s, _)| *s + 1 == segno).map(|(_, d)| d.as_slice());
            checked += 1;
            tr.segments_checked += 1;
            match fetch_segment(repo, &name, &expect, prev) {
                Archived::Intact { data, .. } => {
                    bytes += data.len() as u64;
                    status.insert(name.clone(), true);
                    previous = Some((segno, data));
                }
                Archived::Damaged(problem) => {
                    status.insert(name.clone(), false);
                    tr.damaged.push(name.clone());
                    damaged.push(BadFile { file: name, problem });
                    previous = None;
                }
                Archived::Absent => {
                    // Listed a moment ago, gone now (pruned concurrently).
                    tr.missing.push(name.clone());
                    missing_all.push(name);
                    previous = None;
                }
            }
        }
        reports.push(tr);
    }

    let histories: BTreeMap<TimeLineID, Vec<TimeLineHistoryEntry>> =
        tls.iter().filter_map(|(t, tl)| tl.history.clone().map(|h| (*t, h))).collect();
    let mut backup_reports = Vec::new();
    for b in &backups {
        let mut bw = BackupWal {
            id: b.id.clone(),
            start_wal: b.start_wal.clone(),
            stop_wal: b.stop_wal.clone(),
            ok: true,
            missing: Vec::new(),
            damaged: Vec::new(),
            newer_timelines: descendants(&histories, b.timeline, b.start_lsn),
        };
        let range = match (parse_wal_file_name(&b.start_wal, seg_size), parse_wal_file_name(&b.stop_wal, seg_size)) {
            (Some(WalFileName::Segment { tli, segno: s }), Some(WalFileName::Segment { tli: stop_tli, segno: e })) => {
                Some((tli, s, stop_tli, e))
            }
            _ => None,
        };
        match range {
            Some((tli, s, stop_tli, e)) => {
                for segno in s..=e.max(s) {
                    let t = if segno == e { stop_tli } else { tli };
                    let name = xlog_file_name(t, segno, seg_size);
                    match status.get(&name) {
                        Some(true) => {}
                        Some(false) => bw.damaged.push(name),
                        None => bw.missing.push(name),
                    }
                }
            }
            None => bw.missing.push(format!("{}..{} (not segment names)", b.start_wal, b.stop_wal)),
        }
        bw.ok = bw.missing.is_empty() && bw.damaged.is_empty();
        backup_reports.push(bw);
    }
    missing_all.sort();
    missing_all.dedup();
    let ok = missing_all.is_empty() && damaged.is_empty() && backup_reports.iter().all(|b| b.ok);
    Ok(VerifyReport {
        repo: repo.location().to_string(),
        ok,
        timelines: reports,
        segments_checked: checked,
        bytes_checked: bytes,
        missing_segments: missing_all,
        damaged_segments: damaged,
        backups: backup_reports,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// `; newer timeline(s) …` naming what a restore to the end of the archive would follow.
pub fn newer_note(newer: &[NewerTimeline]) -> String {
    if newer.is_empty() {
        return String::new();
    }
    let names: Vec<String> =
        newer.iter().map(|n| format!("{} (from timeline {} at {})", n.timeline, n.parent, n.switch_point)).collect();
    format!(
        "; newer timeline(s) {}: a restore to the end follows the newest (restore --target-timeline current stays on the backup's)",
        names.join(", ")
    )
}

pub fn render(r: &VerifyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "archive of repository {}", r.repo);
    if r.timelines.is_empty() {
        let _ = writeln!(s, "no WAL archived yet");
    }
    for t in &r.timelines {
        let from = match (t.parent, t.switch_point) {
            (Some(p), Some(at)) => format!(" (branched from timeline {p} at {at})"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "timeline {}{from}: {} .. {}, {} segment(s) checked, {} missing, {} damaged",
            t.timeline,
            t.first.as_deref().unwrap_or("-"),
            t.last.as_deref().unwrap_or("-"),
            t.segments_checked,
            t.missing.len(),
            t.damaged.len()
        );
    }
    for m in &r.missing_segments {
        let _ = writeln!(s, "MISSING  {m}");
    }
    for d in &r.damaged_segments {
        let _ = writeln!(s, "DAMAGED  {}: {}", d.file, d.problem);
    }
    for b in &r.backups {
        if b.ok {
            let _ = write!(s, "backup {}: WAL {} .. {} present and intact", b.id, b.start_wal, b.stop_wal);
            let _ = writeln!(s, "{}", newer_note(&b.newer_timelines));
        } else {
            let mut what = Vec::new();
            if !b.missing.is_empty() {
                what.push(format!("missing {}", b.missing.join(", ")));
            }
            if !b.damaged.is_empty() {
                what.push(format!("damaged {}", b.damaged.join(", ")));
            }
            let _ = writeln!(
                s,
                "backup {}: NOT RESTORABLE, WAL {}{}",
                b.id,
                what.join("; "),
                newer_note(&b.newer_timelines)
            );
        }
    }
    let _ = write!(
        s,
        "{} segment(s), {} checked in {:.1}s",
        r.segments_checked,
        crate::fsutil::human_bytes(r.bytes_checked),
        r.duration_seconds
    );
    if r.ok {
        let _ = write!(s, "\narchive is complete and intact");
    } else {
        let _ = write!(
            s,
            "\narchive has {} missing and {} damaged file(s); next step: take a new backup now (pgkeep backup): recovery cannot pass a missing or damaged segment, so the backups before it cannot reach the present; if the server's pg_wal still holds such a segment, archive it again (pgkeep archive-push, after removing the damaged object from the repository); then find out what removed or damaged the archive's files",
            r.missing_segments.len(),
            r.damaged_segments.len()
        );
    }
    s
}
