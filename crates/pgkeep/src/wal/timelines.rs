//! Timelines newer than a backup's that recovery from it can follow. A restored copy that was
//! promoted while archiving into the repository leaves a `.history` file there, and
//! `recovery_target_timeline = latest` (PostgreSQL's default) then follows the copy's timeline
//! instead of production's: `restore` and `wal verify` name such timelines before anything is
//! replayed.

use std::collections::BTreeMap;

use pgkeep_wal::{history_file_name, parse_timeline_history, Lsn, TimeLineHistoryEntry, TimeLineID};
use serde::Serialize;

use super::archived::fetch_plain;
use crate::repo::Repository;

/// A timeline that branched (directly or through others) from the backup's timeline after the
/// backup started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewerTimeline {
    pub timeline: TimeLineID,
    /// The timeline it branched from, and where.
    pub parent: TimeLineID,
    pub switch_point: Lsn,
}

/// Which timelines descend from `tli` after `from`, given each timeline's history (ancestors
/// oldest first, as in its `.history` file).
pub fn descendants(
    histories: &BTreeMap<TimeLineID, Vec<TimeLineHistoryEntry>>,
    tli: TimeLineID,
    from: Lsn,
) -> Vec<NewerTimeline> {
    histories
        .iter()
        .filter(|(t, h)| **t > tli && h.iter().any(|e| e.tli == tli && e.end > from))
        .filter_map(|(t, h)| h.last().map(|p| NewerTimeline { timeline: *t, parent: p.tli, switch_point: p.end }))
        .collect()
}

/// The archived history of every timeline after `tli`, probed upwards until one is absent,
/// exactly as recovery looks for the newest timeline (`findNewestTimeLine`). A history file
/// that cannot be read or parsed is an error: recovery would stop on it too.
pub fn probe_after(
    repo: &Repository,
    tli: TimeLineID,
) -> Result<BTreeMap<TimeLineID, Vec<TimeLineHistoryEntry>>, String> {
    let mut out = BTreeMap::new();
    let mut t = tli;
    while let Some(next) = t.checked_add(1) {
        let name = history_file_name(next);
        let Some(bytes) = fetch_plain(repo, &name)? else { break };
        let text = std::str::from_utf8(&bytes).map_err(|e| format!("archived {name}: {e}"))?;
        let history = parse_timeline_history(text).map_err(|e| format!("archived {name}: {e}"))?;
        out.insert(next, history);
        t = next;
    }
    Ok(out)
}

/// The timeline recovery ends on for `recovery_target_timeline = target` (None: `latest`).
pub fn followed(
    histories: &BTreeMap<TimeLineID, Vec<TimeLineHistoryEntry>>,
    tli: TimeLineID,
    target: Option<&str>,
) -> TimeLineID {
    match target {
        None | Some("latest") => histories.keys().next_back().copied().unwrap_or(tli).max(tli),
        Some("current") => tli,
        Some(n) => n.parse().unwrap_or(tli),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tli: TimeLineID, end: u64) -> TimeLineHistoryEntry {
        TimeLineHistoryEntry { tli, begin: Lsn::INVALID, end: Lsn(end), reason: String::new() }
    }

    #[test]
    fn only_branches_after_the_backup_start_descend() {
        let mut h = BTreeMap::new();
        h.insert(2, vec![entry(1, 0x500_0000)]);
        h.insert(3, vec![entry(1, 0x500_0000), entry(2, 0x900_0000)]);
        h.insert(4, vec![entry(1, 0x200_0000)]);
        let d = descendants(&h, 1, Lsn(0x300_0000));
        assert_eq!(d.iter().map(|n| n.timeline).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(d[1].parent, 2);
        assert!(descendants(&h, 1, Lsn(0x600_0000)).is_empty());
        assert_eq!(followed(&h, 1, None), 4);
        assert_eq!(followed(&h, 1, Some("current")), 1);
        assert_eq!(followed(&h, 1, Some("3")), 3);
    }
}
