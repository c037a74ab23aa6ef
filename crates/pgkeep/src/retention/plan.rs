//! The policy as a pure function: catalog facts + WAL listing + now → [`ExpirePlan`]. The
//! real run executes exactly this plan, so `--dry-run` shows what a run would do.
//!
//! WAL: one cut-off segment number, the oldest kept backup's start segment, applied to every
//! timeline. A kept backup needs its own timeline (and the timelines recovery may follow from
//! it) from its start on, all of which lie at or after the cut-off; applying the same cut-off
//! everywhere also keeps each timeline's remaining WAL contiguous, which is what
//! `wal verify` checks. `.partial` and `.backup` files follow their segment. A `.history`
//! file goes only when no kept WAL or backup is on its timeline or a newer one: recovery
//! probes history files upwards until one is missing, so none may go missing below a live one.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pgkeep_wal::{parse_wal_file_name, TimeLineID, WalFileName, XLogSegNo};
use serde::Serialize;

use super::config::{RetentionConfig, WalRetention};
use crate::repo::catalog::BackupState;

/// What the plan needs to know of one backup.
#[derive(Debug, Clone)]
pub struct BackupFacts {
    pub id: String,
    pub state: BackupState,
    /// Complete backups only: timeline, start segment and end time.
    pub timeline: Option<TimeLineID>,
    pub stop_timeline: Option<TimeLineID>,
    pub start_segno: Option<XLogSegNo>,
    pub stop_time: Option<DateTime<Utc>>,
    /// Outcome of the newest restore drill.
    pub verified: Option<bool>,
    pub pinned: bool,
    /// Bytes its objects take in the repository.
    pub bytes: u64,
    /// Incremental backups: the backups it rests on (its manifest's `chain`).
    pub chain: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct WalObject {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptBackup {
    pub id: String,
    /// Which rules keep it: `full`, `recovery_window`, `verified`, `pinned`, and `chain` for a
    /// backup a kept incremental rests on.
    pub kept_by: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredBackup {
    pub id: String,
    pub state: BackupState,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredWal {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpirePlan {
    pub kept: Vec<KeptBackup>,
    /// Oldest first: complete backups outside every rule, and stale incomplete ones.
    pub backups: Vec<ExpiredBackup>,
    /// Oldest first (by timeline, then name), history files last.
    pub wal: Vec<ExpiredWal>,
    /// First segment number kept on every timeline (None: no WAL is expired).
    pub wal_cutoff_segno: Option<XLogSegNo>,
    pub bytes_freed: u64,
    /// End of the oldest kept backup: the oldest point the repository restores to afterwards.
    pub recoverable_from: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The rules keep no complete backup although some exist.
    KeepsNothing,
}

/// Apply `policy` to `backups` (oldest first) and the archive's `wal` at `now`.
pub fn plan(
    policy: &RetentionConfig,
    backups: &[BackupFacts],
    wal: &[WalObject],
    seg_size: u32,
    now: DateTime<Utc>,
) -> Result<ExpirePlan, PlanError> {
    let complete: Vec<&BackupFacts> = backups.iter().filter(|b| b.state == BackupState::Complete).collect();
    let mut kept_by: BTreeMap<&str, Vec<&'static str>> = BTreeMap::new();
    let newest_first = || complete.iter().rev().copied();
    if let Some(n) = policy.full {
        for b in newest_first().take(n as usize) {
            kept_by.entry(b.id.as_str()).or_default().push("full");
        }
    }
    if let Some(n) = policy.verified {
        for b in newest_first().filter(|b| b.verified == Some(true)).take(n as usize) {
            kept_by.entry(b.id.as_str()).or_default().push("verified");
        }
    }
    if let Some(w) = &policy.recovery_window {
        let since = now - chrono::Duration::from_std(w.length).unwrap_or(chrono::Duration::MAX);
        let ended = |b: &BackupFacts| b.stop_time.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let inside = newest_first().filter(|b| ended(b) >= since);
        let before = newest_first().find(|b| ended(b) < since);
        for b in inside.chain(before) {
            kept_by.entry(b.id.as_str()).or_default().push("recovery_window");
        }
    }
    for b in complete.iter().filter(|b| b.pinned) {
        kept_by.entry(b.id.as_str()).or_default().push("pinned");
    }
    kept_by.retain(|_, rules| !rules.is_empty());
    // A chain is a unit: whatever a kept incremental rests on is kept with it.
    let needed: BTreeSet<&str> = complete
        .iter()
        .filter(|b| kept_by.contains_key(b.id.as_str()))
        .flat_map(|b| b.chain.iter().map(String::as_str))
        .collect();
    for b in complete.iter().filter(|b| needed.contains(b.id.as_str())) {
        kept_by.entry(b.id.as_str()).or_default().push("chain");
    }
    if kept_by.is_empty() && !complete.is_empty() {
        return Err(PlanError::KeepsNothing);
    }
    let is_kept = |b: &BackupFacts| kept_by.contains_key(b.id.as_str());
    let kept: Vec<KeptBackup> = complete
        .iter()
        .filter(|b| is_kept(b))
        .map(|b| KeptBackup { id: b.id.clone(), kept_by: kept_by[b.id.as_str()].clone() })
        .collect();
    // Pending, damaged and running backups are never touched: only incomplete ones (killed
    // runs, or expired backups whose snapshots are still to be deleted) and complete ones
    // outside every rule.
    let expired: Vec<ExpiredBackup> = backups
        .iter()
        .filter(|b| match b.state {
            BackupState::Complete => !is_kept(b),
            BackupState::Incomplete => true,
            _ => false,
        })
        .map(|b| ExpiredBackup { id: b.id.clone(), state: b.state, bytes: b.bytes })
        .collect();

    let kept_facts: Vec<&BackupFacts> = complete.iter().filter(|b| is_kept(b)).copied().collect();
    let cutoff = match policy.wal {
        WalRetention::None => None,
        // Without a complete backup (kept or not) nothing can be restored from WAL alone, and
        // the first backup will need what is being archived now: keep it all.
        WalRetention::Backups => kept_facts.iter().filter_map(|b| b.start_segno).min(),
    };
    let wal_plan = match cutoff {
        Some(c) => wal_to_expire(wal, seg_size, c, &kept_facts),
        None => Vec::new(),
    };
    let bytes_freed = expired.iter().map(|b| b.bytes).chain(wal_plan.iter().map(|w| w.bytes)).sum();
    Ok(ExpirePlan {
        kept,
        backups: expired,
        wal: wal_plan,
        wal_cutoff_segno: cutoff,
        bytes_freed,
        recoverable_from: kept_facts.iter().filter_map(|b| b.stop_time).min(),
    })
}

fn wal_to_expire(wal: &[WalObject], seg_size: u32, cutoff: XLogSegNo, kept: &[&BackupFacts]) -> Vec<ExpiredWal> {
    let parsed: Vec<(&WalObject, Option<WalFileName>)> =
        wal.iter().map(|w| (w, parse_wal_file_name(&w.name, seg_size))).collect();
    // Timelines with kept WAL or a kept backup.
    let mut live: BTreeSet<TimeLineID> =
        kept.iter().flat_map(|b| b.timeline.into_iter().chain(b.stop_timeline)).collect();
    for (_, f) in &parsed {
        match f {
            Some(WalFileName::Segment { tli, segno } | WalFileName::Partial { tli, segno }) if *segno >= cutoff => {
                live.insert(*tli);
            }
            _ => {}
        }
    }
    let newest_live = live.last().copied().unwrap_or(0);
    // History files last: a crash part-way never leaves a timeline's segments without one.
    let mut out: Vec<(bool, TimeLineID, &str, u64)> = parsed
        .iter()
        .filter_map(|(w, f)| {
            let (history, tli, goes) = match f {
                Some(
                    WalFileName::Segment { tli, segno }
                    | WalFileName::Partial { tli, segno }
                    | WalFileName::BackupHistory { tli, segno, .. },
                ) => (false, *tli, *segno < cutoff),
                Some(WalFileName::History { tli }) => (true, *tli, *tli > newest_live),
                // Not a WAL file name: not ours to judge (wal verify reports it).
                None => return None,
            };
            goes.then_some((history, tli, w.name.as_str(), w.bytes))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, _, name, bytes)| ExpiredWal { name: name.to_string(), bytes }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::config::parse_window;
    use pgkeep_wal::{history_file_name, xlog_file_name};

    const SEG: u32 = 16 * 1024 * 1024;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap()
    }

    /// Backup `n` on timeline `tli`, starting in segment `10 * n`, ended at hour `n`.
    fn b(n: u64, tli: u32) -> BackupFacts {
        BackupFacts {
            id: format!("b{n:02}"),
            state: BackupState::Complete,
            timeline: Some(tli),
            stop_timeline: Some(tli),
            start_segno: Some(10 * n),
            stop_time: Some(t(n as i64)),
            verified: None,
            pinned: false,
            bytes: 100,
            chain: Vec::new(),
        }
    }

    #[test]
    fn a_kept_incremental_keeps_its_chain() {
        let mut backups: Vec<BackupFacts> = (1..=5).map(|n| b(n, 1)).collect();
        // b01 full, b02 incr of it, b03 diff of b01, b04 incr of b03, b05 full.
        backups[1].chain = vec!["b01".into()];
        backups[2].chain = vec!["b01".into()];
        backups[3].chain = vec!["b01".into(), "b03".into()];
        let policy = RetentionConfig { full: Some(2), ..Default::default() };
        let p = plan(&policy, &backups, &[], SEG, t(10)).unwrap();
        let kept: Vec<(&str, &[&str])> = p.kept.iter().map(|k| (k.id.as_str(), k.kept_by.as_slice())).collect();
        assert_eq!(
            kept,
            [("b01", &["chain"][..]), ("b03", &["chain"][..]), ("b04", &["full"][..]), ("b05", &["full"][..])]
        );
        let expired: Vec<&str> = p.backups.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(expired, ["b02"]);
    }

    fn seg(tli: u32, segno: u64) -> WalObject {
        WalObject { name: xlog_file_name(tli, segno, SEG), bytes: 1 }
    }

    fn ids<T>(v: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
        v.iter().map(|x| f(x).to_string()).collect()
    }

    fn policy(toml: &str) -> RetentionConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn full_keeps_the_newest_n_and_cuts_wal_at_the_oldest_kept_start() {
        let backups: Vec<BackupFacts> = (1..=5).map(|n| b(n, 1)).collect();
        let wal: Vec<WalObject> = (5..60).map(|s| seg(1, s)).collect();
        let p = plan(&policy("full = 3"), &backups, &wal, SEG, t(10)).unwrap();
        assert_eq!(ids(&p.kept, |k| &k.id), ["b03", "b04", "b05"]);
        assert_eq!(ids(&p.backups, |k| &k.id), ["b01", "b02"]);
        assert_eq!(p.wal_cutoff_segno, Some(30));
        assert_eq!(p.wal.len(), 25, "segments 5..30 go");
        assert_eq!(p.wal.last().unwrap().name, xlog_file_name(1, 29, SEG));
        assert_eq!(p.bytes_freed, 200 + 25);
        assert_eq!(p.recoverable_from, Some(t(3)));
    }

    #[test]
    fn recovery_window_keeps_the_backups_inside_and_the_newest_before() {
        let backups: Vec<BackupFacts> = (1..=6).map(|n| b(n, 1)).collect();
        let mut w = policy("");
        w.recovery_window = Some(parse_window("150min").unwrap());
        // Window since hour 3.5: b04..b06 ended inside, b03 is the newest before it.
        let p = plan(&w, &backups, &[], SEG, DateTime::from_timestamp(1_800_000_000 + 6 * 3600, 0).unwrap()).unwrap();
        assert_eq!(ids(&p.kept, |k| &k.id), ["b03", "b04", "b05", "b06"]);
        assert_eq!(ids(&p.backups, |k| &k.id), ["b01", "b02"]);
    }

    #[test]
    fn verified_counts_only_passed_drills_and_rules_combine() {
        let mut backups: Vec<BackupFacts> = (1..=6).map(|n| b(n, 1)).collect();
        backups[1].verified = Some(true);
        backups[3].verified = Some(true);
        backups[4].verified = Some(false);
        backups[0].verified = Some(true);
        let p = plan(&policy("verified = 2"), &backups, &[], SEG, t(10)).unwrap();
        assert_eq!(ids(&p.kept, |k| &k.id), ["b02", "b04"]);
        let p = plan(&policy("verified = 2\nfull = 1"), &backups, &[], SEG, t(10)).unwrap();
        assert_eq!(ids(&p.kept, |k| &k.id), ["b02", "b04", "b06"]);
        assert_eq!(p.kept[2].kept_by, ["full"]);
        // No passed drill at all: refusing beats deleting every backup.
        for x in backups.iter_mut() {
            x.verified = None;
        }
        assert_eq!(plan(&policy("verified = 2"), &backups, &[], SEG, t(10)), Err(PlanError::KeepsNothing));
    }

    #[test]
    fn a_pin_keeps_an_old_backup_and_its_wal() {
        let mut backups: Vec<BackupFacts> = (1..=4).map(|n| b(n, 1)).collect();
        backups[0].pinned = true;
        let wal: Vec<WalObject> = (10..45).map(|s| seg(1, s)).collect();
        let p = plan(&policy("full = 1"), &backups, &wal, SEG, t(10)).unwrap();
        assert_eq!(ids(&p.kept, |k| &k.id), ["b01", "b04"]);
        assert_eq!(p.kept[0].kept_by, ["pinned"]);
        assert_eq!(ids(&p.backups, |k| &k.id), ["b02", "b03"]);
        assert_eq!(p.wal_cutoff_segno, Some(10));
        assert!(p.wal.is_empty());
    }

    #[test]
    fn only_complete_and_incomplete_backups_are_expired() {
        let mut backups: Vec<BackupFacts> = (1..=5).map(|n| b(n, 1)).collect();
        backups[0].state = BackupState::Incomplete;
        backups[1].state = BackupState::Pending;
        backups[2].state = BackupState::Damaged;
        let p = plan(&policy("full = 1"), &backups, &[], SEG, t(10)).unwrap();
        assert_eq!(ids(&p.backups, |k| &k.id), ["b01", "b04"]);
        assert_eq!(p.backups[0].state, BackupState::Incomplete);
    }

    #[test]
    fn wal_none_keeps_every_file() {
        let backups: Vec<BackupFacts> = (1..=3).map(|n| b(n, 1)).collect();
        let wal: Vec<WalObject> = (0..40).map(|s| seg(1, s)).collect();
        let p = plan(&policy("full = 1\nwal = \"none\""), &backups, &wal, SEG, t(10)).unwrap();
        assert!(p.wal.is_empty());
        assert_eq!(p.wal_cutoff_segno, None);
        assert_eq!(p.backups.len(), 2);
    }

    #[test]
    fn timelines_partials_and_history_files() {
        // Timeline 2 branched from 1 in segment 15, timeline 3 from 2 in segment 25; the
        // kept backup (b03) is on timeline 3 and starts in segment 30.
        let backups = vec![b(1, 1), b(2, 2), b(3, 3)];
        let mut wal: Vec<WalObject> = (8..16).map(|s| seg(1, s)).collect();
        wal.push(WalObject { name: format!("{}.partial", xlog_file_name(1, 16, SEG)), bytes: 1 });
        wal.push(WalObject { name: format!("{}.00000028.backup", xlog_file_name(1, 10, SEG)), bytes: 1 });
        wal.extend((15..26).map(|s| seg(2, s)));
        wal.push(WalObject { name: format!("{}.partial", xlog_file_name(2, 26, SEG)), bytes: 1 });
        wal.extend((25..40).map(|s| seg(3, s)));
        // Timeline 1 carried on after the branches (a restored copy was promoted instead).
        wal.extend((30..35).map(|s| seg(1, s)));
        wal.push(WalObject { name: format!("{}.partial", xlog_file_name(3, 31, SEG)), bytes: 1 });
        for tli in [2, 3, 4] {
            wal.push(WalObject { name: history_file_name(tli), bytes: 1 });
        }
        let p = plan(&policy("full = 1"), &backups, &wal, SEG, t(10)).unwrap();
        assert_eq!(p.wal_cutoff_segno, Some(30));
        let gone: BTreeSet<String> = p.wal.iter().map(|w| w.name.clone()).collect();
        for w in &wal {
            let expected_gone = match parse_wal_file_name(&w.name, SEG).unwrap() {
                WalFileName::Segment { segno, .. }
                | WalFileName::Partial { segno, .. }
                | WalFileName::BackupHistory { segno, .. } => segno < 30,
                // Timeline 4 has no WAL and no backup, and no newer timeline is live.
                WalFileName::History { tli } => tli == 4,
            };
            assert_eq!(gone.contains(&w.name), expected_gone, "{}", w.name);
        }
        // History files go last, and segments oldest first per timeline.
        assert_eq!(p.wal.last().unwrap().name, history_file_name(4));
        assert_eq!(p.wal[0].name, xlog_file_name(1, 8, SEG));
    }

    #[test]
    fn without_backups_nothing_is_expired() {
        let wal: Vec<WalObject> = (0..5).map(|s| seg(1, s)).collect();
        let p = plan(&policy("full = 2"), &[], &wal, SEG, t(0)).unwrap();
        assert!(p.wal.is_empty() && p.backups.is_empty() && p.kept.is_empty());
    }
}
