//! Timeline history files (`TTTTTTTT.history`) and backup history / `backup_label` text.
//! // backend/access/transam/timeline.c, backend/access/transam/xlogbackup.c

use crate::lsn::{Lsn, TimeLineID};

/// One ancestor timeline: WAL of `tli` is valid from `begin` up to (not including) `end`,
/// where the next timeline forked off. // access/timeline.h TimeLineHistoryEntry
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TimeLineHistoryEntry {
    pub tli: TimeLineID,
    pub begin: Lsn,
    pub end: Lsn,
    /// Free text PostgreSQL wrote about why the timeline ended.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("timeline history line {line}: expected a numeric timeline id, found \"{text}\"")]
    TimelineId { line: usize, text: String },
    #[error("timeline history line {line}: expected a switch point like 0/3000000, found \"{text}\"")]
    SwitchPoint { line: usize, text: String },
    #[error("timeline history line {line}: timeline {tli} does not follow {previous} (ids must increase)")]
    NotIncreasing { line: usize, tli: TimeLineID, previous: TimeLineID },
    #[error("timeline history line {line}: switch point {lsn} is before the previous one {previous}")]
    SwitchPointBackwards { line: usize, lsn: Lsn, previous: Lsn },
}

/// Parses a history file: one `parentTLI<TAB>switchpoint<TAB>reason` line per ancestor,
/// blank lines and `#` comments ignored. Returns the ancestors oldest first; the timeline
/// the file is named after is not itself listed (it runs from the last `end` onwards).
pub fn parse_timeline_history(text: &str) -> Result<Vec<TimeLineHistoryEntry>, HistoryError> {
    let mut out: Vec<TimeLineHistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (tli_text, rest) = split_word(l);
        let tli: TimeLineID =
            tli_text.parse().map_err(|_| HistoryError::TimelineId { line, text: tli_text.to_string() })?;
        let (lsn_text, reason) = split_word(rest);
        let end: Lsn = lsn_text.parse().map_err(|_| HistoryError::SwitchPoint { line, text: lsn_text.to_string() })?;
        let begin = match out.last() {
            Some(prev) => {
                if tli <= prev.tli {
                    return Err(HistoryError::NotIncreasing { line, tli, previous: prev.tli });
                }
                if end < prev.end {
                    return Err(HistoryError::SwitchPointBackwards { line, lsn: end, previous: prev.end });
                }
                prev.end
            }
            None => Lsn::INVALID,
        };
        out.push(TimeLineHistoryEntry { tli, begin, end, reason: reason.to_string() });
    }
    Ok(out)
}

/// First whitespace-separated word and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(n) => (&s[..n], s[n..].trim()),
        None => (s, ""),
    }
}

/// The timeline a position belongs to, given the history of `target` (the timeline the
/// history file is named after).
pub fn timeline_of(history: &[TimeLineHistoryEntry], target: TimeLineID, lsn: Lsn) -> TimeLineID {
    history.iter().find(|e| lsn < e.end).map(|e| e.tli).unwrap_or(target)
}

/// Contents of a backup history file (`.backup`) or of the `backup_label` returned by
/// `pg_backup_stop` (which lacks the STOP lines). // backend/access/transam/xlogbackup.c
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BackupLabel {
    pub start_wal_location: Lsn,
    pub start_wal_file: String,
    pub stop_wal_location: Option<Lsn>,
    pub checkpoint_location: Option<Lsn>,
    pub backup_method: Option<String>,
    pub backup_from: Option<String>,
    pub start_time: Option<String>,
    pub label: Option<String>,
    pub start_timeline: Option<TimeLineID>,
    pub stop_time: Option<String>,
    pub stop_timeline: Option<TimeLineID>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupLabelError {
    #[error("backup label has no START WAL LOCATION line")]
    MissingStart,
    #[error("backup label line \"{0}\" is not understood")]
    BadLine(String),
}

/// Parses `backup_label` / backup history text; unknown keys are ignored.
pub fn parse_backup_label(text: &str) -> Result<BackupLabel, BackupLabelError> {
    let mut b = BackupLabel::default();
    let mut have_start = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(BackupLabelError::BadLine(line.to_string()));
        };
        let bad = || BackupLabelError::BadLine(line.to_string());
        let lsn_of = |v: &str| v.split_whitespace().next().and_then(|s| s.parse::<Lsn>().ok()).ok_or_else(bad);
        match key {
            "START WAL LOCATION" => {
                b.start_wal_location = lsn_of(value)?;
                // "0/D00028 (file 00000001000000000000000D)"
                b.start_wal_file =
                    value.split_once("(file ").and_then(|(_, f)| f.strip_suffix(')')).ok_or_else(bad)?.to_string();
                have_start = true;
            }
            "STOP WAL LOCATION" => b.stop_wal_location = Some(lsn_of(value)?),
            "CHECKPOINT LOCATION" => b.checkpoint_location = Some(lsn_of(value)?),
            "BACKUP METHOD" => b.backup_method = Some(value.to_string()),
            "BACKUP FROM" => b.backup_from = Some(value.to_string()),
            "START TIME" => b.start_time = Some(value.to_string()),
            "LABEL" => b.label = Some(value.to_string()),
            "START TIMELINE" => b.start_timeline = Some(value.trim().parse().map_err(|_| bad())?),
            "STOP TIME" => b.stop_time = Some(value.to_string()),
            "STOP TIMELINE" => b.stop_timeline = Some(value.trim().parse().map_err(|_| bad())?),
            _ => {}
        }
    }
    if !have_start {
        return Err(BackupLabelError::MissingStart);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines() {
        let h = parse_timeline_history(
            "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/50000A8\tbefore 2024-01-01 00:00:00+00\n",
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[0],
            TimeLineHistoryEntry {
                tli: 1,
                begin: Lsn(0),
                end: Lsn(0x3000000),
                reason: "no recovery target specified".into()
            }
        );
        assert_eq!(h[1].begin, Lsn(0x3000000));
        assert_eq!(h[1].reason, "before 2024-01-01 00:00:00+00");
        assert_eq!(timeline_of(&h, 3, Lsn(0x2FFFFFF)), 1);
        assert_eq!(timeline_of(&h, 3, Lsn(0x3000000)), 2);
        assert_eq!(timeline_of(&h, 3, Lsn(0x6000000)), 3);
        assert_eq!(parse_timeline_history("").unwrap(), vec![]);
        assert_eq!(parse_timeline_history("1\t0/10").unwrap()[0].reason, "");
    }

    #[test]
    fn history_errors() {
        assert!(matches!(parse_timeline_history("x\t0/1\tr"), Err(HistoryError::TimelineId { line: 1, .. })));
        assert!(matches!(parse_timeline_history("1\n"), Err(HistoryError::SwitchPoint { line: 1, .. })));
        assert!(matches!(
            parse_timeline_history("2\t0/1\ta\n1\t0/2\tb"),
            Err(HistoryError::NotIncreasing { line: 2, tli: 1, previous: 2 })
        ));
        let e = parse_timeline_history("1\t0/5\ta\n2\t0/2\tb").unwrap_err();
        assert_eq!(e.to_string(), "timeline history line 2: switch point 0/2 is before the previous one 0/5");
    }

    #[test]
    fn backup_label() {
        let t = "START WAL LOCATION: 0/D00028 (file 00000001000000000000000D)\nSTOP WAL LOCATION: 0/D00100 (file 00000001000000000000000D)\nCHECKPOINT LOCATION: 0/D00060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-21 06:48:41 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\nSTOP TIME: 2026-11-21 06:48:41 UTC\nSTOP TIMELINE: 1\n";
        let b = parse_backup_label(t).unwrap();
        assert_eq!(b.start_wal_location, Lsn(0xD00028));
        assert_eq!(b.start_wal_file, "00000001000000000000000D");
        assert_eq!(b.stop_wal_location, Some(Lsn(0xD00100)));
        assert_eq!(b.checkpoint_location, Some(Lsn(0xD00060)));
        assert_eq!(b.label.as_deref(), Some("pg_basebackup base backup"));
        assert_eq!(b.stop_timeline, Some(1));
        assert_eq!(parse_backup_label("LABEL: x\n"), Err(BackupLabelError::MissingStart));
        assert!(parse_backup_label("START WAL LOCATION: nope").is_err());
    }
}
