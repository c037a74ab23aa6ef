//! The edge cases testdata/wal/README.md promises, asserted on the fixtures themselves.

mod common;

use common::*;
use pgkeep_wal::{parse_backup_label, parse_timeline_history, LeadingContinuation, Lsn, RecordKind, WalFileName};

fn summary(name: &str) -> pgkeep_wal::SegmentSummary {
    validate_segment(&read(name), &expect(name), None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn fixture_inventory() {
    let kinds: Vec<WalFileName> = files().into_iter().map(|(_, k)| k).collect();
    let count = |f: fn(&WalFileName) -> bool| kinds.iter().filter(|k| f(k)).count();
    assert!(count(|k| matches!(k, WalFileName::Segment { tli: 1, .. })) >= 7);
    assert!(count(|k| matches!(k, WalFileName::Segment { tli: 2, .. })) >= 2);
    assert_eq!(count(|k| matches!(k, WalFileName::Partial { .. })), 1);
    assert_eq!(count(|k| matches!(k, WalFileName::History { tli: 2 })), 1);
    assert_eq!(count(|k| matches!(k, WalFileName::BackupHistory { .. })), 1);
    let total: u64 = std::fs::read_dir(fixture_dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(total < 11 * 1024 * 1024, "fixtures grew to {total} bytes");
}

#[test]
fn segment_edge_cases() {
    // 08: starts inside a record from a segment not shipped; ends with a switch.
    let s = summary("000000010000000000000008");
    assert!(matches!(s.leading, LeadingContinuation::Unverified { bytes } if bytes > 0));
    assert!(s.ends_with_switch);
    // 09: commits, an abort, subtransactions, two-phase commit, the restore point, a
    // checkpoint, and the start of the 2.2 MB record that continues into 0A.
    let s = summary("000000010000000000000009");
    assert!(s.continues_into_next && !s.ends_with_switch);
    assert!(s.commits >= 4 && s.aborts >= 2 && s.checkpoints >= 1 && s.full_page_images > 0);
    assert_eq!(s.restore_points.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["pgkeep-fixture-rp"]);
    // 0A: entirely inside that record.
    let s = summary("00000001000000000000000A");
    assert_eq!((s.records, s.first_record, s.continues_into_next), (0, None, true));
    // 0B: the record ends, TOAST inserts follow and the last one crosses into 0C.
    let s = summary("00000001000000000000000B");
    assert!(s.continues_into_next && s.records > 100);
    // 0C: ends with pg_switch_wal().
    assert!(summary("00000001000000000000000C").ends_with_switch);
    // 0D: the base backup (checkpoint, backup end, switch).
    let d: Vec<RecordKind> = decode_files(&["00000001000000000000000D"]).iter().map(|r| r.kind().unwrap()).collect();
    assert!(d.iter().any(|k| matches!(k, RecordKind::BackupEnd { .. })));
    assert!(d.iter().any(|k| matches!(k, RecordKind::Checkpoint { online: true, .. })));
    // 0E: the switch the primary writes at shutdown when archiving.
    assert!(summary("00000001000000000000000E").ends_with_switch);
}

#[test]
fn promotion_to_timeline_2() {
    let history = parse_timeline_history(std::str::from_utf8(&read("00000002.history")).unwrap()).unwrap();
    assert_eq!(history.len(), 1);
    let switch_point = history[0].end;
    assert_eq!((history[0].tli, history[0].begin), (1, Lsn(0)));
    assert_eq!(history[0].reason, "no recovery target specified");

    // The first timeline-2 segment begins with pages copied from timeline 1.
    let s = summary("00000002000000000000000F");
    assert_eq!(s.tli, 2);
    assert_eq!(s.page_timelines.0, 1);
    let recs = decode_files(&["00000002000000000000000F"]);
    let eor = recs.iter().find(|r| matches!(r.kind(), Ok(RecordKind::EndOfRecovery { .. }))).unwrap();
    assert_eq!(eor.lsn, switch_point);
    assert!(matches!(eor.kind().unwrap(), RecordKind::EndOfRecovery { tli: 2, prev_tli: 1, .. }));
    let s10 = summary("000000020000000000000010");
    assert_eq!(s10.page_timelines, (2, 2));

    // The old timeline's last segment, as a .partial, stops right before the switch point.
    let p = "00000001000000000000000F.partial";
    let s = validate_partial_segment(&read(p), &expect(p), None).unwrap();
    let end = s.partial_end.unwrap();
    assert!(end.zero_filled);
    assert_eq!(end.stopped_at, switch_point);
    assert!(s.last_record.unwrap() < switch_point);
}

#[test]
fn backup_history_file() {
    let (name, kind) = files().into_iter().find(|(_, k)| matches!(k, WalFileName::BackupHistory { .. })).unwrap();
    let b = parse_backup_label(std::str::from_utf8(&read(&name)).unwrap()).unwrap();
    let WalFileName::BackupHistory { tli, segno, offset } = kind else { unreachable!() };
    assert_eq!(b.start_wal_location, Lsn::from_segment_offset(segno, offset, SEG));
    assert_eq!(b.start_wal_file, pgkeep_wal::xlog_file_name(tli, segno, SEG));
    assert_eq!(b.backup_method.as_deref(), Some("streamed"));
    // The backup's checkpoint and end record are in the WAL where the file says.
    let recs = decode_files(&[&b.start_wal_file]);
    let cp = recs.iter().find(|r| Some(r.lsn) == b.checkpoint_location).expect("checkpoint record");
    assert!(matches!(cp.kind().unwrap(), RecordKind::Checkpoint { redo, .. } if redo == b.start_wal_location));
    assert!(recs.iter().any(|r| r.kind().unwrap() == RecordKind::BackupEnd { start: b.start_wal_location }));
}

#[cfg(feature = "serde")]
#[test]
fn summaries_serialize_with_lsn_strings() {
    let s = summary("00000001000000000000000D");
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["start"], "0/D00000");
    assert_eq!(v["leading"]["kind"], "none");
    assert!(v["end_of_valid_wal"].as_str().unwrap().starts_with("0/D"));
    let back: Lsn = serde_json::from_value(v["start"].clone()).unwrap();
    assert_eq!(back, Lsn(0xD00000));
    let c = pgkeep_wal::parse_pg_control(&read("pg_control")).unwrap();
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["state"], "DB_SHUTDOWNED");
    assert!(v["checkPointCopy"]["redo"].is_string());
}
