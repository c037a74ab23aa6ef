//! Which backup reaches an xid or restore-point target: unlike a time or an LSN, such a target
//! says nothing about where it lies until its record is found in the archived WAL. Recovery
//! from a backup that ended after the record fails ("recovery ended before configured recovery
//! target was reached"), so the WAL after each backup is decoded, newest backup first, and
//! every segment is read at most twice.

use std::collections::BTreeSet;

use pgkeep_wal::{
    xlog_file_name, DecoderOptions, Lsn, RecordKind, SegmentExpectations, TimeLineHistoryEntry, TimeLineID, WalDecoder,
    XLogSegNo,
};

use super::target::RecoveryTarget;
use super::RestoreError;
use crate::repo::manifest::ManifestSummary;
use crate::repo::Repository;
use crate::wal::archived::{fetch_segment, Archived};
use crate::wal::timelines;

enum Wanted<'a> {
    Xid(u32),
    Name(&'a str),
}

impl Wanted<'_> {
    fn matches(&self, kind: &RecordKind) -> bool {
        match (self, kind) {
            // recovery_target_xid stops at the transaction's commit or abort.
            (
                Wanted::Xid(want),
                RecordKind::Commit { xid, .. }
                | RecordKind::Abort { xid, .. }
                | RecordKind::CommitPrepared { xid, .. }
                | RecordKind::AbortPrepared { xid, .. },
            ) => xid == want,
            (Wanted::Name(want), RecordKind::RestorePoint { name, .. }) => name == want,
            _ => false,
        }
    }
}

/// The newest of `backups` (oldest first) from which recovery reaches `target`, an xid or a
/// restore point; None for other targets (they are chosen from the catalog alone).
pub fn choose<'a>(
    repo: &Repository,
    backups: &'a [ManifestSummary],
    target: &RecoveryTarget,
    timeline: Option<&str>,
) -> crate::Result<Option<&'a ManifestSummary>> {
    let wanted = match target {
        // PostgreSQL reads the xid as 64 bits and keeps the low 32 (an epoch may be given);
        // `parse_xid` made sure it parses.
        RecoveryTarget::Xid(x) => Wanted::Xid(x.parse::<u64>().map(|v| v as u32).unwrap_or(0)),
        RecoveryTarget::Name(n) => Wanted::Name(n),
        _ => return Ok(None),
    };
    let mut scan = Scan { repo, seg_size: repo.info().wal_segment_size, found: BTreeSet::new(), lowest: None };
    for b in backups.iter().rev() {
        let histories = timelines::probe_after(repo, b.timeline).map_err(crate::Error::other)?;
        let end = timelines::followed(&histories, b.timeline, timeline);
        let chain = Chain::new(b.timeline, end, histories.get(&end), scan.seg_size);
        scan.run(b.start_lsn.segment_number(scan.seg_size), &chain, &wanted);
        // Replay from this backup stops at the first match after its start; before its end
        // that is a stop before consistency, which PostgreSQL refuses.
        match scan.found.range(b.start_lsn..).next() {
            Some(at) if *at >= b.stop_lsn => return Ok(Some(b)),
            _ => continue,
        }
    }
    Err(match scan.found.iter().next() {
        Some(at) => RestoreError::NoBackupForTarget {
            target: format!("{target} (at {at})"),
            oldest: backups.first().map(|b| b.stop_lsn.to_string()).unwrap_or_else(|| "(none)".into()),
        },
        None => RestoreError::TargetNotArchived {
            target: target.to_string(),
            from: backups
                .first()
                .map(|b| xlog_file_name(b.timeline, b.start_lsn.segment_number(scan.seg_size), scan.seg_size))
                .unwrap_or_default(),
        },
    }
    .into())
}

/// The timeline each segment is read from, as recovery along `end` would: the newest timeline
/// of the chain that has begun by that segment.
struct Chain {
    /// (first segment, timeline), oldest first.
    begins: Vec<(XLogSegNo, TimeLineID)>,
}

impl Chain {
    fn new(start: TimeLineID, end: TimeLineID, history: Option<&Vec<TimeLineHistoryEntry>>, seg_size: u32) -> Chain {
        let mut begins = vec![(0, start)];
        if let Some(h) = history {
            let mut parent_end: Option<Lsn> = None;
            for e in h.iter().filter(|e| e.tli >= start) {
                if let Some(at) = parent_end {
                    begins.push((at.segment_number(seg_size), e.tli));
                }
                parent_end = Some(e.end);
            }
            if let Some(at) = parent_end {
                begins.push((at.segment_number(seg_size), end));
            }
        }
        Chain { begins }
    }

    fn timeline(&self, segno: XLogSegNo) -> TimeLineID {
        self.begins.iter().rev().find(|(s, _)| *s <= segno).map(|(_, t)| *t).unwrap_or(self.begins[0].1)
    }
}

struct Scan<'r> {
    repo: &'r Repository,
    seg_size: u32,
    /// Where matching records start.
    found: BTreeSet<Lsn>,
    /// Lowest segment decoded so far (everything from it to the end of the archive is done).
    lowest: Option<XLogSegNo>,
}

impl Scan<'_> {
    /// Decode from segment `from` up to what an earlier run covered (plus its first segment,
    /// for a record crossing into it), or to the end of the archived WAL.
    fn run(&mut self, from: XLogSegNo, chain: &Chain, wanted: &Wanted<'_>) {
        if self.lowest.is_some_and(|l| from >= l) {
            return;
        }
        let limit = self.lowest;
        self.lowest = Some(from);
        let info = self.repo.info();
        let opts = DecoderOptions {
            pg_major: Some(info.pg_major),
            system_identifier: Some(info.system_identifier_u64()),
            max_timeline: None,
        };
        let Ok(mut decoder) = WalDecoder::with_options(Lsn::segment_start(from, self.seg_size), self.seg_size, opts)
        else {
            return;
        };
        let mut previous: Option<Vec<u8>> = None;
        let mut segno = from;
        loop {
            if limit.is_some_and(|l| segno > l) {
                return;
            }
            let tli = chain.timeline(segno);
            let name = xlog_file_name(tli, segno, self.seg_size);
            let expect = SegmentExpectations {
                tli,
                segno,
                seg_size: self.seg_size,
                system_identifier: Some(info.system_identifier_u64()),
                pg_major: Some(info.pg_major),
            };
            // Recovery cannot pass a missing or damaged segment, so neither does the search.
            let data = match fetch_segment(self.repo, &name, &expect, previous.as_deref()) {
                Archived::Intact { data, .. } => data,
                Archived::Absent | Archived::Damaged(_) => return,
            };
            decoder.feed(&data);
            loop {
                match decoder.next_record() {
                    Ok(Some(rec)) => {
                        if rec.kind().is_ok_and(|k| wanted.matches(&k)) {
                            self.found.insert(rec.lsn);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            previous = Some(data);
            segno += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_reads_each_segment_from_the_newest_begun_timeline() {
        let seg = 16 * 1024 * 1024;
        let h = vec![
            TimeLineHistoryEntry { tli: 1, begin: Lsn::INVALID, end: Lsn(0x500_0060), reason: String::new() },
            TimeLineHistoryEntry { tli: 2, begin: Lsn(0x500_0060), end: Lsn(0x900_0000), reason: String::new() },
        ];
        let c = Chain::new(1, 3, Some(&h), seg);
        assert_eq!(c.timeline(4), 1);
        assert_eq!(c.timeline(5), 2);
        assert_eq!(c.timeline(8), 2);
        assert_eq!(c.timeline(9), 3);
        assert_eq!(Chain::new(1, 1, None, seg).timeline(7), 1);
    }
}
