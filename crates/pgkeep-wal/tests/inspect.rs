//! `inspect_wal` over the fixture WAL laid out as a `pg_wal` directory: a clean end, and each
//! kind of damage, judged the way the module docs say.

mod common;

use std::collections::BTreeMap;

use common::*;
use pgkeep_wal::{
    inspect_wal, validate_segment, FileRole, Lsn, ProblemKind, RecordKind, ReplayStart, SegmentFile, StopCause,
    WalInspection,
};

/// Timeline 1's segments 09..0E plus timeline 2's files, as a pg_wal would hold them.
fn pg_wal() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (name, _, segno) in segments() {
        if segno >= 9 {
            m.insert(name.clone(), read(&name));
        }
    }
    m
}

/// pg_control as it would be after the fixture's `CHECKPOINT` at 0/92F7C0.
fn start_at_fixture_checkpoint() -> ReplayStart {
    let rec = decode_files(&["000000010000000000000009"])
        .into_iter()
        .find(|r| r.lsn == Lsn(0x92F7C0))
        .expect("checkpoint record in 09");
    let RecordKind::Checkpoint { redo, tli, .. } = rec.kind().unwrap() else { panic!("not a checkpoint") };
    ReplayStart {
        system_identifier: sysid(),
        pg_major: Some(15),
        seg_size: SEG,
        timeline: tli,
        redo,
        checkpoint: rec.lsn,
    }
}

fn run(start: &ReplayStart, files: &BTreeMap<String, Vec<u8>>) -> WalInspection {
    let names: Vec<String> = files.keys().cloned().collect();
    inspect_wal(start, &names, &mut |n| match files.get(n) {
        Some(d) => SegmentFile::Data(d.clone()),
        None => SegmentFile::Missing,
    })
}

/// Commits after `redo` on timeline 1, from the validator's per-segment counts.
fn commits_after(redo: Lsn) -> u64 {
    let names = timeline_segments(1);
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).filter(|n| *n >= "000000010000000000000009").collect();
    decode_files(&names)
        .iter()
        .filter(|r| r.lsn >= redo)
        .filter(|r| matches!(r.kind(), Ok(RecordKind::Commit { .. } | RecordKind::CommitPrepared { .. })))
        .count() as u64
}

#[test]
fn intact_wal_replays_to_the_end_and_nothing_is_at_risk() {
    let start = start_at_fixture_checkpoint();
    let r = run(&start, &pg_wal());
    assert!(!r.damaged, "{r:#?}");
    assert!(r.checkpoint_reachable);
    assert!(r.damaged_segments.is_empty());
    assert!(r.commits_at_risk.is_empty());
    // Timeline 1 ends with the switch in 0E; 0F of timeline 1 was never completed.
    assert_eq!(r.stop.cause, StopCause::NoNextFile);
    assert_eq!(r.stop.file, "00000001000000000000000F");
    assert_eq!(r.replay_end.segment_number(SEG), 0xE);
    assert_eq!(r.replayed_commits.len() as u64, commits_after(start.redo));
    assert!(r.replayed_commits.len() >= 3, "the fixture has commits after its checkpoint");
    assert_eq!(r.salvaged_records, 0);
    let role = |f: &str| r.files.iter().find(|s| s.file == f).map(|s| s.role);
    assert_eq!(role("00000001000000000000000B"), Some(FileRole::Replayed));
    assert_eq!(role("00000002000000000000000F"), Some(FileRole::OtherTimeline));
}

#[test]
fn foreign_header_on_a_middle_segment_is_damage_and_later_commits_are_salvaged() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    let seg = "00000001000000000000000C";
    let d = files.get_mut(seg).unwrap();
    d[24..32].copy_from_slice(&12345u64.to_le_bytes()); // xlp_sysid of the long header
    let r = run(&start, &files);
    assert!(r.damaged);
    assert!(r.checkpoint_reachable);
    assert_eq!(r.damaged_segments.len(), 1, "{:#?}", r.damaged_segments);
    let d = &r.damaged_segments[0];
    assert_eq!(d.file, seg);
    assert_eq!(d.problem.kind, ProblemKind::ForeignSystemIdentifier);
    assert!(d.problem.detail.contains("12345"), "{}", d.problem.detail);
    assert_eq!(r.stop.lsn, Lsn(0xC00000));
    // Everything after the checkpoint is either replayed or salvaged (0C's first record
    // crosses from 0B and is lost with the header; it is not a commit).
    let total = commits_after(start.redo);
    assert!(!r.salvaged_commits.is_empty(), "0C holds commit 734");
    assert_eq!(r.replayed_commits.len() + r.salvaged_commits.len(), total as usize);
    assert_eq!(r.commits_at_risk, r.salvaged_commits);
    assert!(r.salvaged_commits.iter().any(|c| c.xid == 734));
    // 0D and 0E were written after the damage: intact, but replay never reaches them.
    let role = |f: &str| r.files.iter().find(|s| s.file == f).map(|s| s.role);
    assert_eq!(role("00000001000000000000000D"), Some(FileRole::AfterDamage));
    assert_eq!(role(seg), Some(FileRole::Damaged));
}

#[test]
fn damage_before_the_checkpoint_puts_every_commit_after_redo_at_risk() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    let redo_seg = "000000010000000000000009";
    // The first bytes of the redo segment overwritten with another cluster's header.
    let d = files.get_mut(redo_seg).unwrap();
    d[24..32].copy_from_slice(&777u64.to_le_bytes());
    let r = run(&start, &files);
    assert!(r.damaged);
    assert!(!r.checkpoint_reachable);
    assert_eq!(r.replay_end, start.redo);
    assert_eq!(r.replayed_records, 0);
    assert_eq!(r.damaged_segments[0].file, redo_seg);
    assert_eq!(r.damaged_segments[0].problem.kind, ProblemKind::ForeignSystemIdentifier);
    assert!(r.damaged_segments[0].problem.detail.contains("cannot start"), "{}", r.damaged_segments[0].problem.detail);
    assert_eq!(r.commits_at_risk.len() as u64, commits_after(start.redo));
}

#[test]
fn a_flipped_byte_mid_segment_is_a_crc_mismatch_with_salvage_after_it() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    let seg = "00000001000000000000000B";
    // A TOAST insert well inside 0B.
    let victim = decode_files(&["00000001000000000000000B"])
        .into_iter()
        .filter(|r| r.lsn.0 > 0xB80000 && r.end_lsn.page_start() == r.lsn.page_start())
        .nth(3)
        .unwrap();
    let off = (victim.lsn.0 - 0xB00000) as usize + 30;
    files.get_mut(seg).unwrap()[off] ^= 0x20;
    let r = run(&start, &files);
    assert!(r.damaged);
    assert_eq!(r.damaged_segments.len(), 1);
    let p = &r.damaged_segments[0].problem;
    assert_eq!(p.kind, ProblemKind::CrcMismatch, "{p:?}");
    assert_eq!(p.lsn, Some(victim.lsn));
    assert!(p.detail.contains(&victim.lsn.to_string()));
    assert_eq!(r.replay_end, Lsn(victim.lsn.0).min(r.replay_end));
    assert!(r.salvaged_records > 100, "records after the flip are found again: {}", r.salvaged_records);
    assert!(r.salvaged_end.unwrap() > Lsn(0xE00000));
}

#[test]
fn a_missing_segment_with_wal_after_it_is_damage() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    files.remove("00000001000000000000000D");
    let r = run(&start, &files);
    assert!(r.damaged);
    assert_eq!(r.damaged_segments[0].file, "00000001000000000000000D");
    assert_eq!(r.damaged_segments[0].problem.kind, ProblemKind::Missing);
    assert!(r.salvaged_commits.iter().any(|c| c.lsn.segment_number(SEG) == 0xE), "0E's commit is salvaged");
}

#[test]
fn a_zeroed_segment_with_wal_after_it_is_damage() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    files.insert("00000001000000000000000C".into(), vec![0; SEG as usize]);
    let r = run(&start, &files);
    assert!(r.damaged);
    assert_eq!(r.damaged_segments[0].file, "00000001000000000000000C");
    assert_eq!(r.damaged_segments[0].problem.kind, ProblemKind::Zeroed);
}

#[test]
fn a_torn_last_record_and_recycled_files_are_the_end_of_wal_not_damage() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    // Damage the last record of timeline 1 (the switch in 0E); nothing follows it.
    let last = decode_files(&["00000001000000000000000E"]).into_iter().last().unwrap();
    let off = (last.lsn.0 - 0xE00000) as usize + 4;
    files.get_mut("00000001000000000000000E").unwrap()[off] ^= 0x01;
    // A recycled file with a future name: pages of an older segment.
    files.insert("00000001000000000000000F".into(), read("000000010000000000000009"));
    let r = run(&start, &files);
    assert!(!r.damaged, "{:#?}", r.damaged_segments);
    assert_eq!(r.stop.cause, StopCause::InvalidRecord);
    assert!(r.notes.iter().any(|n| n.contains("cut short")), "{:?}", r.notes);
    let role = |f: &str| r.files.iter().find(|s| s.file == f).map(|s| s.role);
    assert_eq!(role("00000001000000000000000F"), Some(FileRole::Unused));
}

#[test]
fn validator_and_inspection_agree_on_commit_counts() {
    // The commits the inspection replays from the first record of 09 equal the validator's
    // per-segment counts (itself checked against pg_waldump in waldump.rs).
    let first = decode_files(&["000000010000000000000009"]).into_iter().next().unwrap();
    let start = ReplayStart {
        system_identifier: sysid(),
        pg_major: Some(15),
        seg_size: SEG,
        timeline: 1,
        redo: first.lsn,
        checkpoint: first.lsn,
    };
    let r = run(&start, &pg_wal());
    assert!(!r.damaged);
    let mut validated = 0;
    for n in ["09", "0A", "0B", "0C", "0D", "0E"] {
        let name = format!("0000000100000000000000{n}");
        validated += validate_segment(&read(&name), &expect(&name), None).unwrap().commits;
    }
    assert_eq!(r.replayed_commits.len() as u64, validated);
}

/// Salvage reads a record that crosses into the next segment with that segment's bytes:
/// after a flipped byte in 0B, every later record is found again, 0B's last one (which ends in
/// 0C) included (issue 8, point 12: count the CRC-valid records, all of them).
#[test]
fn salvage_reads_records_across_segment_boundaries() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    let names = [
        "00000001000000000000000B",
        "00000001000000000000000C",
        "00000001000000000000000D",
        "00000001000000000000000E",
    ];
    let all = decode_files(&names);
    let victim = all
        .iter()
        .filter(|r| r.lsn.0 > 0xB80000 && r.end_lsn.page_start() == r.lsn.page_start())
        .nth(3)
        .unwrap()
        .clone();
    files.get_mut(names[0]).unwrap()[(victim.lsn.0 - 0xB00000) as usize + 30] ^= 0x20;
    let crossing = all.iter().filter(|x| x.lsn.0 < 0xC00000 && x.end_lsn.0 > 0xC00000).count();
    assert_eq!(crossing, 1, "0B's last record ends in 0C");
    let r = run(&start, &files);
    assert_eq!(r.stop.lsn, victim.lsn);
    let after: Vec<_> = all.iter().filter(|x| x.lsn > victim.lsn).collect();
    assert_eq!(r.salvaged_records, after.len() as u64, "every record after the flipped byte");
    assert_eq!(r.salvaged_end, after.last().map(|x| x.end_lsn));
    assert!(r.notes.iter().all(|n| !n.contains("segment boundary")), "{:?}", r.notes);
}

/// A page after the stop that holds only a record-header look-alike (a plausible length,
/// prev-link and rmgr, no valid CRC) adds nothing: not a salvaged record, not a record that
/// "crosses a segment boundary" (issue 8, point 12).
#[test]
fn header_look_alikes_after_the_stop_are_not_counted() {
    let start = start_at_fixture_checkpoint();
    let mut files = pg_wal();
    let seg = "00000001000000000000000C";
    let page = 50 * 8192; // 0/C64000, inside 0C's WAL (0/C007C8 .. 0/CA6198)
    let d = files.get_mut(seg).unwrap();
    d[page..page + 8192].fill(0);
    let mut fake = Vec::new();
    fake.extend_from_slice(&0x0200_0000u32.to_le_bytes()); // xl_tot_len: 32 MiB, past the segment
    fake.extend_from_slice(&0u32.to_le_bytes()); // xl_xid
    fake.extend_from_slice(&0x100u64.to_le_bytes()); // xl_prev: nonzero, before it
    fake.extend_from_slice(&[0, 1, 0, 0]); // xl_info, xl_rmid (XACT), padding
    fake.extend_from_slice(&0u32.to_le_bytes()); // xl_crc: wrong
    d[page + 64..page + 64 + fake.len()].copy_from_slice(&fake);
    let r = run(&start, &files);
    assert!(r.damaged, "{:?}", r.stop);
    assert_eq!(r.damaged_segments[0].file, seg);
    assert!(r.notes.iter().all(|n| !n.contains("segment boundary")), "{:?}", r.notes);
    let page_end = Lsn(0xC00000 + page as u64 + 8192);
    let all = decode_files(&[seg, "00000001000000000000000D", "00000001000000000000000E"]);
    let after = all.iter().filter(|x| x.lsn >= page_end).count() as u64;
    assert_eq!(r.salvaged_records, after, "only the real records after the zeroed page");
}
