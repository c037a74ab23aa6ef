//! `pgkeep rpo`: how much data a failure could cost right now, from the running server's own
//! statistics and the repository.
//!
//! Figures (all times are the server's clock, so a skewed client clock does not matter):
//! - `seconds_between_checkpoints`: seconds since the checkpoint statistics were reset
//!   divided by the number of checkpoints since (`pg_stat_bgwriter`, `pg_stat_checkpointer` on
//!   17+); null before the first checkpoint.
//! - `archive_lag_seconds`: how old the WAL is that exists only on this server: 0 when
//!   nothing is waiting to be archived and the current segment holds no WAL yet, otherwise
//!   the time since `pg_stat_archiver.last_archived_time` (everything written after the last
//!   archived segment is local only); null when nothing was archived since the statistics
//!   were reset or archiving is off.
//! - `worst_case_loss_seconds_local_wal`: the damaged-newest-WAL case without an archive.
//!   Crash recovery starts at the last checkpoint's redo point; if WAL after it is lost, so is
//!   every commit since (the `pg_resetwal` case). A checkpoint becomes the restart point only
//!   when it completes, so the window is the time since the last checkpoint, and at worst one
//!   interval plus the time a checkpoint takes: `max(since last checkpoint, interval × (1 +
//!   checkpoint_completion_target))`, the interval being the observed mean capped at
//!   `checkpoint_timeout` (which it is when no checkpoint was counted yet).
//! - `worst_case_loss_seconds_with_archive`: WAL in the archive survives the server; what is
//!   lost is what was not archived yet. While archiving is failing or behind, that is the
//!   archive lag (growing); otherwise `max(archive_timeout, archive lag)`, since a segment is
//!   switched and archived at least every `archive_timeout`. Null when archiving is off, or
//!   when `archive_timeout` is 0 (a quiet segment can then stay unarchived indefinitely).
//! - `worst_case_loss_seconds`: the smaller of the two (both safety nets exist), or whichever
//!   is known.
//! - Backup ages: seconds since the newest complete backup's stop time, and since the stop
//!   time of the newest backup whose latest restore drill passed (`repo::verdict`).

use std::fmt::Write;

use chrono::{DateTime, Utc};
use pgkeep_wal::{parse_wal_file_name, xlog_file_name, Lsn, WalFileName};
use serde::{Deserialize, Serialize};

use crate::pg::version::checkpoint_stats_sql;
use crate::pg::{query_err, ConnParams, ServerInfo};
use crate::repo::{catalog, verdict, Repository};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Checkpoints (timed + requested) since `since`.
    pub count: i64,
    pub since: Option<DateTime<Utc>>,
    pub last_checkpoint_time: Option<DateTime<Utc>>,
    pub seconds_since_last_checkpoint: Option<f64>,
    pub redo_lsn: Option<Lsn>,
    pub checkpoint_timeout_seconds: f64,
    pub checkpoint_completion_target: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveStats {
    pub archive_mode: String,
    /// archive_mode is on and an archive_command or archive_library is set.
    pub archiving: bool,
    pub archive_timeout_seconds: u64,
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// The last attempt failed (no success since the last failure).
    pub failing: bool,
    pub current_lsn: Option<Lsn>,
    /// The segment the next WAL goes to.
    pub current_wal: Option<String>,
    /// Completed segments waiting for archive_command (`.ready` files; null without the
    /// privilege to list archive_status).
    pub segments_waiting: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupAge {
    pub id: String,
    pub stop_time: DateTime<Utc>,
    pub age_seconds: f64,
    pub verified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpoReport {
    pub server_version_num: u32,
    /// The server's database system identifier (decimal string, as in the repository).
    pub system_identifier: String,
    pub timeline: u32,
    pub server_time: DateTime<Utc>,
    pub seconds_between_checkpoints: Option<f64>,
    pub archive_lag_seconds: Option<f64>,
    pub archive_timeout_seconds: u64,
    pub worst_case_loss_seconds: Option<f64>,
    pub worst_case_loss_seconds_local_wal: Option<f64>,
    pub worst_case_loss_seconds_with_archive: Option<f64>,
    pub newest_backup_age_seconds: Option<f64>,
    pub newest_verified_backup_age_seconds: Option<f64>,
    pub checkpoints: CheckpointStats,
    pub archive: ArchiveStats,
    pub newest_backup: Option<BackupAge>,
    pub newest_verified_backup: Option<BackupAge>,
    /// The oldest point in time the repository can restore to (end of its oldest backup).
    pub recoverable_from: Option<DateTime<Utc>>,
    /// The repository consulted for backup ages, if any.
    pub repo: Option<String>,
    pub notes: Vec<String>,
    /// What to do first, when something stands out.
    pub advice: Vec<String>,
    /// False when a configured repository could not be read.
    pub ok: bool,
}

/// Where backup ages come from.
pub enum RepoSource<'a> {
    None,
    Unavailable { location: String, why: String },
    Repo(&'a Repository),
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (a - b).num_microseconds().map(|us| us as f64 / 1e6).unwrap_or(f64::MAX).max(0.0)
}

pub fn rpo(conn: &ConnParams, repo: RepoSource<'_>, rt: &tokio::runtime::Handle) -> crate::Result<RpoReport> {
    let c = rt.block_on(conn.connect())?;
    let server = rt.block_on(ServerInfo::read(&c))?;
    let q = |sql: &str, what: &str| {
        rt.block_on(c.client.query_one(sql, &[])).map_err(|e| crate::Error::from(query_err(what, &e)))
    };
    let row = q(checkpoint_stats_sql(server.major), "read checkpoint statistics")?;
    let ckpt_count: i64 = row.get(0);
    let ckpt_reset: Option<DateTime<Utc>> = row.get(1);
    let row = q(
        "SELECT clock_timestamp(), pg_postmaster_start_time(), \
         (SELECT checkpoint_time FROM pg_control_checkpoint()), \
         (SELECT redo_lsn::text FROM pg_control_checkpoint()), \
         (SELECT setting::float8 FROM pg_settings WHERE name = 'checkpoint_timeout'), \
         (SELECT setting::float8 FROM pg_settings WHERE name = 'checkpoint_completion_target')",
        "read checkpoint settings",
    )?;
    let now: DateTime<Utc> = row.get(0);
    let postmaster_start: DateTime<Utc> = row.get(1);
    let last_ckpt: Option<DateTime<Utc>> = row.get(2);
    let redo: Option<String> = row.get(3);
    let ckpt_timeout: f64 = row.get::<_, Option<f64>>(4).unwrap_or(300.0);
    let completion: f64 = row.get::<_, Option<f64>>(5).unwrap_or(0.9);
    let row = q(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, \
         last_failed_time, stats_reset FROM pg_stat_archiver",
        "read pg_stat_archiver",
    )?;
    let archived_count: i64 = row.get(0);
    let last_archived_wal: Option<String> = row.get(1);
    let last_archived_time: Option<DateTime<Utc>> = row.get(2);
    let failed_count: i64 = row.get(3);
    let last_failed_wal: Option<String> = row.get(4);
    let last_failed_time: Option<DateTime<Utc>> = row.get(5);
    let (current_lsn, current_wal) = if server.in_recovery {
        (None, None)
    } else {
        let r = q("SELECT pg_current_wal_lsn()::text", "read the WAL position")?;
        let lsn = r.get::<_, String>(0).parse::<Lsn>().ok();
        // Not pg_walfile_name(): at a segment boundary it names the previous segment.
        (
            lsn,
            lsn.map(|l| {
                xlog_file_name(server.timeline, l.segment_number(server.wal_segment_size), server.wal_segment_size)
            }),
        )
    };
    // Needs superuser or pg_monitor; without it the count is unknown, not an error.
    let segments_waiting: Option<i64> = rt
        .block_on(c.client.query_one("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'", &[]))
        .ok()
        .map(|r| r.get(0));

    let mut notes = Vec::new();
    let mut advice = Vec::new();
    let since = ckpt_reset.unwrap_or(postmaster_start);
    let seconds_between = (ckpt_count > 0).then(|| secs(now, since) / ckpt_count as f64);
    let since_last = last_ckpt.map(|t| secs(now, t));
    let interval = seconds_between.map_or(ckpt_timeout, |m| m.min(ckpt_timeout));
    let local = Some(since_last.unwrap_or(0.0).max(interval * (1.0 + completion)));

    let archiving = server.archive_mode != "off"
        && (server.archive_command.as_deref().is_some_and(|c| !c.trim().is_empty())
            || server.archive_library.is_some());
    let failing = match (last_failed_time, last_archived_time) {
        (Some(f), Some(a)) => f > a,
        (Some(_), None) => true,
        _ => false,
    };
    let seg_size = server.wal_segment_size;
    let nothing_written_since_switch = current_lsn.is_some_and(|l| l.segment_offset(seg_size) == 0);
    let last_archived_segno = last_archived_wal.as_deref().and_then(|n| match parse_wal_file_name(n, seg_size) {
        Some(WalFileName::Segment { segno, .. }) => Some(segno),
        _ => None,
    });
    let current_segno = current_lsn.map(|l| l.segment_number(seg_size));
    let caught_up = segments_waiting
        .map_or_else(|| matches!((last_archived_segno, current_segno), (Some(a), Some(c)) if a + 1 >= c), |w| w == 0);
    let archive_lag = if !archiving {
        notes.push(format!("archiving is off (archive_mode = {}, no archive_command)", server.archive_mode));
        None
    } else if caught_up && nothing_written_since_switch && !failing {
        Some(0.0)
    } else {
        match last_archived_time {
            Some(t) => Some(secs(now, t)),
            None => {
                notes.push("nothing was archived since the archiver statistics were reset".into());
                None
            }
        }
    };
    let with_archive = if !archiving {
        None
    } else if failing || !caught_up {
        archive_lag
    } else if server.archive_timeout_seconds > 0 {
        Some((server.archive_timeout_seconds as f64).max(archive_lag.unwrap_or(0.0)))
    } else {
        notes.push("archive_timeout is 0: a quiet segment can stay unarchived indefinitely, so the loss with the archive is unbounded".into());
        advice.push("set archive_timeout (e.g. 60) so that WAL reaches the archive within a bounded time".into());
        None
    };
    if failing {
        advice.push(format!(
            "archiving is failing ({} failure(s), last for {} at {}): fix archive_command (see the server log); until then the WAL since {} exists only on this server",
            failed_count,
            last_failed_wal.clone().unwrap_or_else(|| "?".into()),
            last_failed_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
            last_archived_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "the start".into())
        ));
    }
    let worst = match (local, with_archive) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    let mut ok = true;
    let mut newest = None;
    let mut newest_verified = None;
    let mut recoverable_from = None;
    let repo_desc = match repo {
        RepoSource::None => {
            notes.push("no repository given: backup ages are unknown (pass --repo)".into());
            None
        }
        RepoSource::Unavailable { location, why } => {
            ok = false;
            notes.push(format!("repository {location} could not be read: {why}"));
            Some(location)
        }
        RepoSource::Repo(r) => {
            if r.info().system_identifier_u64() != server.system_identifier {
                ok = false;
                notes.push(format!(
                    "repository {} belongs to database system {}, this server is {}",
                    r.location(),
                    r.info().system_identifier,
                    server.system_identifier
                ));
            } else {
                let mut backups = catalog::complete(r)?;
                backups.sort_by_key(|b| b.stop_time);
                recoverable_from = crate::report::list::recoverable_from(backups.iter().map(|b| &b.stop_time));
                newest = backups.last().map(|b| BackupAge {
                    id: b.id.clone(),
                    stop_time: b.stop_time,
                    age_seconds: secs(now, b.stop_time),
                    verified_at: None,
                });
                for b in backups.iter().rev() {
                    if let Some(v) = verdict::latest(r, &b.id)? {
                        if v.ok {
                            newest_verified = Some(BackupAge {
                                id: b.id.clone(),
                                stop_time: b.stop_time,
                                age_seconds: secs(now, b.stop_time),
                                verified_at: Some(v.verified_at),
                            });
                            break;
                        }
                    }
                }
                if newest.is_none() {
                    advice.push(
                        "there is no backup: the archive alone cannot restore anything; run pgkeep backup".into(),
                    );
                } else if newest_verified.is_none() {
                    advice.push("no backup has passed a restore drill yet: run pgkeep verify".into());
                }
            }
            Some(r.location().to_string())
        }
    };

    Ok(RpoReport {
        server_version_num: server.version_num,
        system_identifier: server.system_identifier.to_string(),
        timeline: server.timeline,
        server_time: now,
        seconds_between_checkpoints: seconds_between,
        archive_lag_seconds: archive_lag,
        archive_timeout_seconds: server.archive_timeout_seconds,
        worst_case_loss_seconds: worst,
        worst_case_loss_seconds_local_wal: local,
        worst_case_loss_seconds_with_archive: with_archive,
        newest_backup_age_seconds: newest.as_ref().map(|b| b.age_seconds),
        newest_verified_backup_age_seconds: newest_verified.as_ref().map(|b| b.age_seconds),
        checkpoints: CheckpointStats {
            count: ckpt_count,
            since: Some(since),
            last_checkpoint_time: last_ckpt,
            seconds_since_last_checkpoint: since_last,
            redo_lsn: redo.and_then(|r| r.parse().ok()),
            checkpoint_timeout_seconds: ckpt_timeout,
            checkpoint_completion_target: completion,
        },
        archive: ArchiveStats {
            archive_mode: server.archive_mode.clone(),
            archiving,
            archive_timeout_seconds: server.archive_timeout_seconds,
            archived_count,
            last_archived_wal,
            last_archived_time,
            failed_count,
            last_failed_wal,
            last_failed_time,
            failing,
            current_lsn,
            current_wal,
            segments_waiting,
        },
        newest_backup: newest,
        recoverable_from,
        newest_verified_backup: newest_verified,
        repo: repo_desc,
        notes,
        advice,
        ok,
    })
}

fn dur(v: Option<f64>) -> String {
    match v {
        None => "unknown".into(),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 7200.0 => format!("{:.1} min", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        Some(s) => format!("{:.1} days", s / 86400.0),
    }
}

pub fn render(r: &RpoReport) -> String {
    let mut s = String::new();
    let c = &r.checkpoints;
    let _ = writeln!(
        s,
        "checkpoints: {} since {}, every {} on average (checkpoint_timeout {}), last one {} ago",
        c.count,
        c.since.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "?".into()),
        dur(r.seconds_between_checkpoints),
        dur(Some(c.checkpoint_timeout_seconds)),
        dur(c.seconds_since_last_checkpoint)
    );
    let a = &r.archive;
    if a.archiving {
        let _ = writeln!(
            s,
            "archive: {} archived (last {} at {}), {} failed{}, {} segment(s) waiting, lag {}, archive_timeout {}",
            a.archived_count,
            a.last_archived_wal.as_deref().unwrap_or("-"),
            a.last_archived_time.map(|t| t.format("%H:%M:%S UTC").to_string()).unwrap_or_else(|| "-".into()),
            a.failed_count,
            if a.failing { " (FAILING now)" } else { "" },
            a.segments_waiting.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            dur(r.archive_lag_seconds),
            if r.archive_timeout_seconds > 0 { dur(Some(r.archive_timeout_seconds as f64)) } else { "off".into() }
        );
    } else {
        let _ = writeln!(s, "archive: off");
    }
    let age = |b: &Option<BackupAge>| match b {
        Some(b) => format!("{} ({} old)", b.id, dur(Some(b.age_seconds))),
        None => "none".into(),
    };
    if r.repo.is_some() {
        let _ = writeln!(
            s,
            "newest backup: {}; newest verified backup: {}",
            age(&r.newest_backup),
            age(&r.newest_verified_backup)
        );
        if let Some(t) = r.recoverable_from {
            let _ = writeln!(s, "recoverable from: {} (end of the oldest backup)", t.format("%Y-%m-%d %H:%M:%S UTC"));
        }
    }
    let _ = writeln!(
        s,
        "worst-case data loss: {} with only local WAL (damaged newest WAL: everything since the last checkpoint), {} with the archive (what is not archived yet)",
        dur(r.worst_case_loss_seconds_local_wal),
        dur(r.worst_case_loss_seconds_with_archive)
    );
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if r.advice.is_empty() {
        let _ = write!(s, "next step: none needed; worst case now {}", dur(r.worst_case_loss_seconds));
    } else {
        let _ = write!(s, "next step: {}", r.advice.join("; "));
    }
    s
}
