//! `pgkeep wal inspect [PGDATA]`: for a cluster that will not start (or that crashed), what
//! crash recovery would replay, what is damaged, which commits are at risk, and whether the
//! archive holds intact copies that lose nothing.
//!
//! 1. `global/pg_control` is parsed here (CRC-32C checked), never via pg_controldata.
//! 2. `pgkeep_wal::inspect_wal` reads `pg_wal` from the redo point as crash recovery would,
//!    judges where it stops (end of WAL or damage), and salvages CRC-valid records after a
//!    damaged spot, so the commits beyond it are counted.
//! 3. With a repository, each damaged segment is looked up in the archive (`NAME`, then
//!    `NAME.partial`), checked (frame checksums, every record), and the inspection is run again
//!    with the intact copies in place of the damaged files: that second run says what the
//!    server would replay after the printed `archive-get` lines.
//!
//! Needs no running server and no repository (then it says the archive was not consulted).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use pgkeep_wal::{
    inspect_wal, parse_pg_control, CommitInfo, ControlFileData, FileState, Lsn, ReplayStart, ReplayStop,
    SegmentExpectations, SegmentFile, TimestampTz, WalFileName, WalInspection,
};
use serde::Serialize;

use super::archived::{fetch_segment, Archived};
use super::{shell_quote, WalError};
use crate::repo::{RepoLocation, Repository};

/// Where the archive is, if anywhere.
pub enum ArchiveSource<'a> {
    None,
    /// A repository was configured but could not be opened.
    Unavailable {
        location: String,
        why: String,
    },
    Repo(&'a Repository),
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    pub count: usize,
    pub xids: Vec<u32>,
    pub first_commit_time: Option<TimestampTz>,
    pub last_commit_time: Option<TimestampTz>,
}

impl CommitSummary {
    fn of<'a>(commits: impl Iterator<Item = &'a CommitInfo>) -> CommitSummary {
        let v: Vec<&CommitInfo> = commits.collect();
        CommitSummary {
            count: v.len(),
            xids: v.iter().map(|c| c.xid).collect(),
            first_commit_time: v.iter().map(|c| c.time).min(),
            last_commit_time: v.iter().map(|c| c.time).max(),
        }
    }
}

/// What the archive holds for one damaged segment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ArchiveCopy {
    NotConsulted,
    Absent,
    Damaged {
        file: String,
        detail: String,
    },
    /// `file` is the archived name (`NAME` or `NAME.partial`); `end_of_wal` where its WAL ends.
    Intact {
        file: String,
        end_of_wal: Lsn,
        partial: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct DamagedReport {
    pub file: String,
    pub kind: pgkeep_wal::ProblemKind,
    pub lsn: Option<Lsn>,
    pub offset: Option<u32>,
    pub problem: String,
    pub archive: ArchiveCopy,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveGetStep {
    /// Name in the archive.
    pub file: String,
    /// Where it goes (`PGDATA/pg_wal/<segment>`).
    pub dest: String,
    /// The exact command line.
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveConsulted {
    pub consulted: bool,
    pub repo: Option<String>,
    /// Why it was not consulted.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub pgdata: String,
    pub system_identifier: String,
    pub pg_major: Option<u32>,
    /// pg_control's state, as pg_controldata prints it ("in production" after a crash).
    pub cluster_state: String,
    pub timeline: u32,
    pub checkpoint_lsn: Lsn,
    pub redo_lsn: Lsn,
    /// True when nothing is damaged (exit 0).
    pub ok: bool,
    /// File names of the damaged segments.
    pub damaged_segments: Vec<String>,
    pub damaged: Vec<DamagedReport>,
    /// End of the last record crash recovery can replay from the redo point.
    pub last_valid_lsn: Lsn,
    pub checkpoint_reachable: bool,
    pub stop: ReplayStop,
    /// Commits after the redo point (replayable or salvaged): what pg_resetwal would drop.
    pub commits_after_redo: CommitSummary,
    /// Commits lost if the server is brought up on this pg_wal (or with pg_resetwal).
    pub commits_at_risk: usize,
    pub at_risk: CommitSummary,
    /// Commits still lost after the archive-get steps (null when the archive was not consulted).
    pub commits_at_risk_with_archive: Option<usize>,
    /// True when something is damaged and the archive's intact copies bring back every commit.
    pub recoverable_from_archive: bool,
    pub archive: ArchiveConsulted,
    pub archive_get: Vec<ArchiveGetStep>,
    /// The safest next step, one line each.
    pub next_steps: Vec<String>,
    pub replayed_records: u64,
    pub salvaged_records: u64,
    pub files: Vec<FileState>,
    pub notes: Vec<String>,
}

/// Reads pg_control and pg_wal of `pgdata` and judges them; `archive` is consulted for
/// intact copies of damaged segments.
pub fn inspect(pgdata: &Path, archive: ArchiveSource<'_>) -> crate::Result<InspectReport> {
    let control_path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&control_path).map_err(|e| WalError::Read {
        path: control_path.display().to_string(),
        detail: e.to_string(),
        hint: "pass the data directory (wal inspect PGDATA, --pgdata or PGDATA) and run as its owner or root".into(),
    })?;
    let control = parse_pg_control(&bytes)
        .map_err(|e| WalError::Control { path: control_path.display().to_string(), detail: e.to_string() })?;
    let start = ReplayStart::from_control(&control);
    let wal_dir = pgdata.join("pg_wal");
    let names = list_dir(&wal_dir)?;
    let local = inspect_wal(&start, &names, &mut |n| load(&wal_dir.join(n)));

    let mut notes = local.notes.clone();
    if pgdata.join("backup_label").exists() {
        notes.push("backup_label is present: this directory is a restored backup, and recovery starts from the label's checkpoint, not pg_control's".into());
    }
    if control.state == pgkeep_wal::DBState::DB_IN_PRODUCTION && pgdata.join("postmaster.pid").exists() {
        notes.push("postmaster.pid is present: the server may still be running (or crashed); a running server keeps writing the newest segment".into());
    }

    let all_commits: Vec<CommitInfo> = local.commits_after_redo().cloned().collect();
    let mut copies: BTreeMap<String, ArchiveCopy> = BTreeMap::new();
    let mut consulted = ArchiveConsulted { consulted: false, repo: None, reason: None };
    let mut with_archive: Option<WalInspection> = None;
    let mut steps = Vec::new();
    let mut repo_loc: Option<RepoLocation> = None;
    // The suggested archive-get commands must name the key of an encrypted repository.
    let mut key_arg = String::new();
    match archive {
        ArchiveSource::None => {
            consulted.reason = Some("no repository given (--repo, PGKEEP_REPO or the config file)".into())
        }
        ArchiveSource::Unavailable { location, why } => {
            consulted.repo = Some(location);
            consulted.reason = Some(why);
        }
        ArchiveSource::Repo(repo) => {
            consulted.repo = Some(repo.location().to_string());
            if repo.info().system_identifier_u64() != control.system_identifier {
                consulted.reason = Some(format!(
                    "the repository belongs to database system {}, this data directory to {}",
                    repo.info().system_identifier,
                    control.system_identifier
                ));
            } else if local.damaged {
                consulted.consulted = true;
                repo_loc = Some(repo.location().clone());
                if let Some(k) = repo.key_file() {
                    key_arg = format!(" --encryption-key-file {}", shell_quote(&k.display().to_string()));
                }
                let mut substitutes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for d in &local.damaged_segments {
                    let (copy, data) = archived_copy(repo, &control, &start, &d.file);
                    if let Some(data) = data {
                        substitutes.insert(d.file.clone(), data);
                    }
                    copies.insert(d.file.clone(), copy);
                }
                if !substitutes.is_empty() {
                    let mut all_names: BTreeSet<String> = names.iter().cloned().collect();
                    all_names.extend(substitutes.keys().cloned());
                    let all_names: Vec<String> = all_names.into_iter().collect();
                    let sim = inspect_wal(&start, &all_names, &mut |n| match substitutes.get(n) {
                        Some(d) => SegmentFile::Data(d.clone()),
                        None => load(&wal_dir.join(n)),
                    });
                    with_archive = Some(sim);
                }
            } else {
                consulted.consulted = true;
            }
        }
    }

    // What the archive changes.
    let reach = |i: &WalInspection| if i.checkpoint_reachable { i.replay_end } else { start.redo };
    let at_risk_with_archive: Option<Vec<&CommitInfo>> = if !consulted.consulted {
        None
    } else if !local.damaged {
        Some(Vec::new())
    } else {
        let end = with_archive.as_ref().map(reach).unwrap_or(reach(&local));
        Some(all_commits.iter().filter(|c| c.lsn >= end).collect())
    };
    let recoverable = local.damaged
        && with_archive.as_ref().is_some_and(|s| s.checkpoint_reachable)
        && at_risk_with_archive.as_ref().is_some_and(|v| v.is_empty());

    let pgdata_abs = std::fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_path_buf());
    if let Some(loc) = &repo_loc {
        let exe = pgkeep_exe();
        let run_as = run_as_prefix(&pgdata_abs);
        for (seg, copy) in &copies {
            if let ArchiveCopy::Intact { file, .. } = copy {
                let dest = pgdata_abs.join("pg_wal").join(seg);
                let command = format!(
                    "{run_as}{} --repo {}{key_arg} archive-get {} {}",
                    shell_quote(&exe),
                    shell_quote(&loc.to_string()),
                    shell_quote(file),
                    shell_quote(&dest.display().to_string())
                );
                steps.push(ArchiveGetStep { file: file.clone(), dest: dest.display().to_string(), command });
            }
        }
    }

    let damaged: Vec<DamagedReport> = local
        .damaged_segments
        .iter()
        .map(|d| DamagedReport {
            file: d.file.clone(),
            kind: d.problem.kind,
            lsn: d.problem.lsn,
            offset: d.problem.offset,
            problem: d.problem.detail.clone(),
            archive: copies.get(&d.file).cloned().unwrap_or(ArchiveCopy::NotConsulted),
        })
        .collect();
    let mut report = InspectReport {
        pgdata: pgdata_abs.display().to_string(),
        system_identifier: control.system_identifier.to_string(),
        pg_major: control.pg_major(),
        cluster_state: control.state.to_string(),
        timeline: start.timeline,
        checkpoint_lsn: start.checkpoint,
        redo_lsn: start.redo,
        ok: !local.damaged,
        damaged_segments: local.damaged_segments.iter().map(|d| d.file.clone()).collect(),
        damaged,
        last_valid_lsn: local.replay_end,
        checkpoint_reachable: local.checkpoint_reachable,
        stop: local.stop.clone(),
        commits_after_redo: CommitSummary::of(all_commits.iter()),
        commits_at_risk: local.commits_at_risk.len(),
        at_risk: CommitSummary::of(local.commits_at_risk.iter()),
        commits_at_risk_with_archive: at_risk_with_archive.as_ref().map(|v| v.len()),
        recoverable_from_archive: recoverable,
        archive: consulted,
        archive_get: steps,
        next_steps: Vec::new(),
        replayed_records: local.replayed_records,
        salvaged_records: local.salvaged_records,
        files: local.files.clone(),
        notes,
    };
    report.next_steps = next_steps(&report, &control, at_risk_with_archive.as_deref());
    Ok(report)
}

/// The archive's copy of a damaged segment: `NAME` first, then `NAME.partial`.
fn archived_copy(
    repo: &Repository,
    control: &ControlFileData,
    start: &ReplayStart,
    seg: &str,
) -> (ArchiveCopy, Option<Vec<u8>>) {
    let Some(WalFileName::Segment { tli, segno }) = pgkeep_wal::parse_wal_file_name(seg, start.seg_size) else {
        return (ArchiveCopy::Absent, None);
    };
    let expect = SegmentExpectations {
        tli,
        segno,
        seg_size: start.seg_size,
        system_identifier: Some(control.system_identifier),
        pg_major: control.pg_major(),
    };
    let mut first_damage = None;
    for name in [seg.to_string(), format!("{seg}.partial")] {
        match fetch_segment(repo, &name, &expect, None) {
            Archived::Intact { data, summary } => {
                let copy =
                    ArchiveCopy::Intact { file: name, end_of_wal: summary.end_of_valid_wal, partial: summary.partial };
                return (copy, Some(data));
            }
            Archived::Damaged(detail) => {
                first_damage.get_or_insert(ArchiveCopy::Damaged { file: name, detail });
            }
            Archived::Absent => {}
        }
    }
    (first_damage.unwrap_or(ArchiveCopy::Absent), None)
}

fn list_dir(dir: &Path) -> crate::Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| WalError::Read {
        path: dir.display().to_string(),
        detail: e.to_string(),
        hint: "run as the data directory's owner or root".into(),
    })?;
    let mut v: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    v.sort();
    Ok(v)
}

fn load(path: &Path) -> SegmentFile {
    match std::fs::read(path) {
        Ok(d) => SegmentFile::Data(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SegmentFile::Missing,
        Err(e) => SegmentFile::Unreadable(format!("cannot read {}: {e}", path.display())),
    }
}

/// The pgkeep binary to put in printed command lines.
fn pgkeep_exe() -> String {
    std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "pgkeep".into())
}

/// `sudo -u OWNER ` when root prints lines for a data directory owned by someone else (the
/// restored files must belong to the server's user).
fn run_as_prefix(pgdata: &Path) -> String {
    if !crate::fsutil::running_as_root() {
        return String::new();
    }
    match crate::fsutil::owner_of(pgdata) {
        Ok((uid, _)) if uid != 0 => match crate::pg::OsUser::by_uid(uid) {
            Some(u) if on_path("sudo") => format!("sudo -u {} ", shell_quote(&u.name)),
            // runuser (util-linux) is there for root on every Linux.
            Some(u) => format!("runuser -u {} -- ", shell_quote(&u.name)),
            None => String::new(),
        },
        _ => String::new(),
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn xids(s: &CommitSummary) -> String {
    const SHOW: usize = 20;
    let mut v: Vec<String> = s.xids.iter().take(SHOW).map(|x| x.to_string()).collect();
    if s.xids.len() > SHOW {
        v.push(format!("… {} more", s.xids.len() - SHOW));
    }
    v.join(", ")
}

fn when(s: &CommitSummary) -> String {
    match (s.first_commit_time, s.last_commit_time) {
        (Some(a), Some(b)) if a == b => format!(", committed at {a}"),
        (Some(a), Some(b)) => format!(", committed between {a} and {b}"),
        _ => String::new(),
    }
}

fn next_steps(
    r: &InspectReport,
    control: &ControlFileData,
    at_risk_with_archive: Option<&[&CommitInfo]>,
) -> Vec<String> {
    let pgdata = shell_quote(&r.pgdata);
    let mut s = Vec::new();
    if r.ok {
        s.push(format!(
            "nothing is damaged: crash recovery replays from {} to {} ({} commit(s) after the checkpoint); start the server normally",
            r.redo_lsn, r.last_valid_lsn, r.commits_after_redo.count
        ));
        return s;
    }
    // Damage after the checkpoint: PostgreSQL starts and ends crash recovery at the damage
    // without an error, so the loss is silent unless said first.
    if r.checkpoint_reachable && r.commits_at_risk > 0 {
        s.push(format!(
            "a plain start loses {} commit(s): the server starts, but crash recovery ends at {} in {} without an error and the commits after it (xids {}{}) are gone; do not start the server on this pg_wal as it is",
            r.commits_at_risk,
            r.stop.lsn,
            r.stop.file,
            xids(&r.at_risk),
            when(&r.at_risk)
        ));
    }
    s.push("do not run pg_resetwal: it starts the server without the commits below and can leave tables and indexes inconsistent".into());
    let keep_dir = format!("{}.wal-damaged", r.pgdata);
    let files: Vec<String> =
        r.damaged.iter().filter(|d| d.kind != pgkeep_wal::ProblemKind::Missing).map(|d| d.file.clone()).collect();
    if !files.is_empty() {
        let list: Vec<String> = files.iter().map(|f| shell_quote(&format!("{}/pg_wal/{f}", r.pgdata))).collect();
        s.push(format!(
            "keep the damaged file(s) for investigation: mkdir -p {} && cp -p {} {}/",
            shell_quote(&keep_dir),
            list.join(" "),
            shell_quote(&keep_dir)
        ));
    }
    if r.recoverable_from_archive {
        s.push(format!(
            "the archive holds intact copies that recover everything: all {} commit(s) after the checkpoint come back. With the server stopped, run:",
            r.commits_after_redo.count
        ));
        for g in &r.archive_get {
            s.push(format!("  {}", g.command));
        }
        s.push(format!("then start the server on {pgdata}; crash recovery replays the restored WAL"));
        return s;
    }
    if !r.archive_get.is_empty() {
        let left = at_risk_with_archive.map(|v| v.len()).unwrap_or(r.commits_at_risk);
        s.push(format!(
            "the archive holds intact copies of some damaged segments; they bring back all but {left} of the {} commit(s) at risk:",
            r.commits_at_risk
        ));
        for g in &r.archive_get {
            s.push(format!("  {}", g.command));
        }
    }
    let risk = &r.at_risk;
    let lost = match at_risk_with_archive {
        Some(v) if !r.archive_get.is_empty() => v.len(),
        _ => risk.count,
    };
    let why = if !r.archive.consulted {
        format!(
            "the archive was not consulted ({}): run again with --repo to look for intact copies. ",
            r.archive.reason.clone().unwrap_or_default()
        )
    } else if r.archive_get.is_empty() {
        "no intact copy in the archive: ".to_string()
    } else {
        String::new()
    };
    if lost > 0 {
        s.push(format!("{why}these {lost} commit(s) are at risk (xids {}{})", xids(risk), when(risk)));
    } else {
        s.push(format!(
            "{why}no commit is at risk, but the damaged WAL must be replaced before the server can replay past it"
        ));
    }
    s.push(format!(
        "keep a copy of the whole data directory before changing anything (cp -a {pgdata} {}), then restore the newest backup and replay the archive (pgkeep restore --to NEWDIR); commits found only in the damaged local WAL cannot be replayed by PostgreSQL",
        shell_quote(&format!("{}.copy", r.pgdata))
    ));
    let _ = control;
    s
}

/// Human text; ends with the next step.
pub fn render(r: &InspectReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "data directory {} (system identifier {}, PostgreSQL {}, state \"{}\")",
        r.pgdata,
        r.system_identifier,
        r.pg_major.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
        r.cluster_state
    );
    let _ = writeln!(s, "checkpoint {} (redo {}, timeline {})", r.checkpoint_lsn, r.redo_lsn, r.timeline);
    let _ = writeln!(
        s,
        "replay from the redo point: {} record(s), last valid LSN {}, stops at {} in {}: {}",
        r.replayed_records, r.last_valid_lsn, r.stop.lsn, r.stop.file, r.stop.detail
    );
    if !r.checkpoint_reachable {
        let _ = writeln!(s, "the checkpoint record at {} cannot be read: the server will not start", r.checkpoint_lsn);
    }
    if r.damaged.is_empty() {
        let _ = writeln!(s, "damaged segments: none");
    } else {
        let _ = writeln!(s, "damaged segments:");
        for d in &r.damaged {
            let copy = match &d.archive {
                ArchiveCopy::NotConsulted => "archive not consulted".to_string(),
                ArchiveCopy::Absent => "not in the archive".to_string(),
                ArchiveCopy::Damaged { file, detail } => format!("archive copy {file} is damaged too: {detail}"),
                ArchiveCopy::Intact { file, end_of_wal, .. } => {
                    format!("intact copy in the archive: {file} (WAL to {end_of_wal})")
                }
            };
            let _ = writeln!(s, "  {}: {} [{copy}]", d.file, d.problem);
        }
    }
    let c = &r.commits_after_redo;
    let _ = writeln!(
        s,
        "commits after the redo point (what pg_resetwal would throw away): {}{}{}",
        c.count,
        if c.count > 0 { format!(" (xids {})", xids(c)) } else { String::new() },
        when(c)
    );
    if !r.ok {
        let _ = writeln!(
            s,
            "commits at risk: {}{}",
            r.commits_at_risk,
            match r.commits_at_risk_with_archive {
                Some(n) => format!(" ({n} after restoring the archive's copies)"),
                None => String::new(),
            }
        );
        if r.salvaged_records > 0 {
            let _ = writeln!(
                s,
                "{} CRC-checked record(s) were salvaged after the damage (they show what was written; PostgreSQL cannot replay them from here)",
                r.salvaged_records
            );
        }
    }
    let _ = writeln!(
        s,
        "archive: {}",
        if r.archive.consulted {
            format!("consulted ({})", r.archive.repo.clone().unwrap_or_default())
        } else {
            format!("not consulted: {}", r.archive.reason.clone().unwrap_or_default())
        }
    );
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let _ = writeln!(s, "safest next step:");
    let mut n = 0;
    for l in &r.next_steps {
        if l.starts_with("  ") {
            let _ = writeln!(s, "  {l}");
        } else {
            n += 1;
            let _ = writeln!(s, "{n}. {l}");
        }
    }
    s.trim_end().to_string()
}
