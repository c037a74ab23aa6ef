//! Recovery targets: parsing what the operator typed, and which backup can reach them.

use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone, Utc};
use pgkeep_wal::Lsn;
use serde::Serialize;

use super::RestoreError;
use crate::repo::manifest::ManifestSummary;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum RecoveryTarget {
    /// Replay everything in the archive.
    End,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Xid(String),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetAction {
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::End => write!(f, "end of archive"),
            RecoveryTarget::Immediate => write!(f, "immediate (backup consistency point)"),
            RecoveryTarget::Time(t) => write!(f, "time {}", pg_timestamp(t)),
            RecoveryTarget::Lsn(l) => write!(f, "lsn {l}"),
            RecoveryTarget::Xid(x) => write!(f, "xid {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// A timestamp PostgreSQL parses unambiguously: UTC with microseconds and an explicit zone.
pub fn pg_timestamp(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Accepts RFC 3339, PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f][+TZ]` and `… UTC`; a time without
/// a zone is local time (what an operator reading a wall clock means).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, RestoreError> {
    let t = s.trim();
    let t = t.strip_suffix(" UTC").map(|x| format!("{x}+00:00")).unwrap_or_else(|| t.to_string());
    if let Ok(d) = DateTime::parse_from_rfc3339(&t) {
        return Ok(d.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(d) = DateTime::<FixedOffset>::parse_from_str(&t, fmt) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&t, fmt) {
            if let Some(d) = Local.from_local_datetime(&n).earliest() {
                return Ok(d.with_timezone(&Utc));
            }
        }
    }
    Err(RestoreError::BadTarget {
        what: "--target-time",
        value: s.to_string(),
        hint: "use e.g. \"2026-11-21 10:15:00+00\" or RFC 3339 \"2026-11-21T10:15:00Z\"".into(),
    })
}

pub fn parse_lsn(s: &str) -> Result<Lsn, RestoreError> {
    s.trim().parse().map_err(|_| RestoreError::BadTarget {
        what: "--target-lsn",
        value: s.to_string(),
        hint: "use the X/Y form, e.g. 0/16B3740".into(),
    })
}

pub fn parse_xid(s: &str) -> Result<String, RestoreError> {
    let t = s.trim();
    // PostgreSQL reads 64 bits (an epoch may lead) and keeps the low 32.
    if t.bytes().all(|b| b.is_ascii_digit()) && t.parse::<u64>().is_ok() {
        Ok(t.to_string())
    } else {
        Err(RestoreError::BadTarget {
            what: "--target-xid",
            value: s.to_string(),
            hint: "use a transaction id number".into(),
        })
    }
}

/// `--target-timeline`: what PostgreSQL's recovery_target_timeline accepts.
pub fn parse_timeline(s: &str) -> Result<String, RestoreError> {
    let t = s.trim();
    match t {
        "latest" | "current" => Ok(t.to_string()),
        _ if t.parse::<u32>().is_ok_and(|n| n >= 1) => Ok(t.to_string()),
        _ => Err(RestoreError::BadTarget {
            what: "--target-timeline",
            value: s.to_string(),
            hint: "use latest, current or a timeline number".into(),
        }),
    }
}

/// The backup to restore for `target`: newest complete backup that can reach it.
/// Backups are given oldest first.
pub fn choose<'a>(
    backups: &'a [ManifestSummary],
    target: &RecoveryTarget,
) -> Result<&'a ManifestSummary, RestoreError> {
    let usable: Vec<&ManifestSummary> = match target {
        RecoveryTarget::Time(t) => backups.iter().filter(|b| b.stop_time <= *t).collect(),
        RecoveryTarget::Lsn(l) => backups.iter().filter(|b| b.stop_lsn <= *l).collect(),
        _ => backups.iter().collect(),
    };
    match usable.last() {
        Some(b) => Ok(b),
        None => {
            let oldest = backups.first().map(|b| match target {
                RecoveryTarget::Lsn(_) => b.stop_lsn.to_string(),
                _ => pg_timestamp(&b.stop_time),
            });
            Err(RestoreError::NoBackupForTarget {
                target: target.to_string(),
                oldest: oldest.unwrap_or_else(|| "(none)".into()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats() {
        let want = Utc.with_ymd_and_hms(2026, 11, 21, 10, 15, 0).unwrap();
        for s in [
            "2026-11-21 10:15:00+00",
            "2026-11-21T10:15:00Z",
            "2026-11-21 12:15:00+02:00",
            "2026-11-21 10:15:00 UTC",
            "2026-11-21 10:15:00.000+0000",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        assert!(parse_time("yesterday").is_err());
        assert_eq!(pg_timestamp(&want), "2026-11-21 10:15:00.000000+00");
    }
}
