//! One real segment and pg_control of each major besides 15 (testdata/wal/pg<major>/, made by
//! testdata/wal/make-major-fixtures.sh on the servers scripts/setup.sh installs): the decoder
//! reads every record with that major's layouts and agrees with what the server itself said
//! when the segment was written (pg_walinspect on 16–18; the commit xids on every major, the
//! only oracle 14 has), and pg_control parses as that major's.

mod common;

use std::path::PathBuf;

use pgkeep_wal::{parse_pg_control, DecodedRecord, Lsn, RecordKind, WalDecoder};

use common::{fixture_dir, SEG};

fn dir(major: u32) -> PathBuf {
    fixture_dir().join(format!("pg{major}"))
}

fn text(major: u32, name: &str) -> String {
    std::fs::read_to_string(dir(major).join(name)).unwrap_or_else(|e| panic!("pg{major}/{name}: {e}"))
}

/// The segment's name and bytes.
fn segment(major: u32) -> (String, Vec<u8>) {
    let name = std::fs::read_dir(dir(major))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no segment in pg{major}/"));
    let bytes = std::fs::read(dir(major).join(&name)).unwrap();
    (name, bytes)
}

/// Every record from the segment's start up to the fixture's end LSN (range.txt).
fn records(major: u32) -> Vec<DecodedRecord> {
    let (name, bytes) = segment(major);
    assert_eq!(bytes.len(), SEG as usize);
    let range = text(major, "range.txt");
    let (start, end) = range.trim().split_once(' ').unwrap();
    let (start, end): (Lsn, Lsn) = (start.parse().unwrap(), end.parse().unwrap());
    let segno = u64::from_str_radix(&name[8..16], 16).unwrap() * 0x1_0000_0000 / SEG as u64
        + u64::from_str_radix(&name[16..24], 16).unwrap();
    let mut dec = WalDecoder::new(Lsn::segment_start(segno, SEG), SEG).unwrap();
    dec.feed(&bytes);
    let mut out = Vec::new();
    while let Some(r) = dec.next_record().unwrap_or_else(|e| panic!("pg{major} {name}: {e}")) {
        assert_eq!(r.pg_major(), major, "page magic of {name}");
        if r.lsn >= end {
            break;
        }
        out.push(r);
    }
    assert_eq!(out.first().map(|r| r.lsn), Some(start));
    out
}

fn commits_match_the_server(major: u32) {
    let recs = records(major);
    assert!(recs.len() > 900, "pg{major}: {} records", recs.len());
    let ours: Vec<u32> = recs
        .iter()
        .filter_map(|r| match r.kind() {
            Ok(RecordKind::Commit { xid, .. }) => Some(xid),
            _ => None,
        })
        .collect();
    for x in text(major, "commits.txt").lines() {
        let x: u32 = x.trim().parse().unwrap();
        assert!(ours.contains(&x), "pg{major}: the commit of xid {x} was not decoded");
    }
    let aborts = recs.iter().filter(|r| matches!(r.kind(), Ok(RecordKind::Abort { .. }))).count();
    assert!(aborts >= 1, "pg{major}: the aborted transaction");
    let (_, bytes) = segment(major);
    let control = parse_pg_control(&std::fs::read(dir(major).join("pg_control")).unwrap()).unwrap();
    assert_eq!(control.pg_major(), Some(major));
    assert_eq!(control.system_identifier, u64::from_le_bytes(bytes[24..32].try_into().unwrap()));
    assert_eq!(control.checkPointCopy.wal_level, if major >= 17 { Some(1) } else { None });
    assert_eq!(control.default_char_signedness, if major >= 18 { Some(true) } else { None });
    assert_eq!(control.data_checksum_version, 1);
    assert_eq!(control.xlog_seg_size, SEG);
}

/// Each record as "lsn rmgr xid total_length block…", pg_walinspect's lines.
fn agrees_with_walinspect(major: u32) {
    let ours: Vec<String> = records(major)
        .iter()
        .map(|r| {
            let mut l = format!("{} {} {} {} ", r.lsn, r.rmgr_name(), r.xid(), r.header.xl_tot_len);
            let blocks: Vec<String> = r
                .blocks
                .iter()
                .map(|b| {
                    format!(
                        "{}:{}/{}/{}/{}/{}/{}",
                        b.block_id,
                        b.rnode.spcNode,
                        b.rnode.dbNode,
                        b.rnode.relNode,
                        b.forknum,
                        b.blkno,
                        if b.has_image { "t" } else { "f" }
                    )
                })
                .collect();
            l.push_str(&blocks.join(" "));
            l
        })
        .collect();
    let theirs: Vec<String> = text(major, "walinspect.txt").lines().map(str::to_string).collect();
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(o, t, "pg{major}: record {i}");
    }
    assert_eq!(ours.len(), theirs.len(), "pg{major}: record count");
    assert!(theirs.iter().any(|l| l.contains("/t")), "full-page images compared");
}

#[test]
fn pg14_segment_decodes_with_the_servers_commits() {
    commits_match_the_server(14);
}

#[test]
fn pg16_segment_agrees_with_pg_walinspect() {
    commits_match_the_server(16);
    agrees_with_walinspect(16);
}

#[test]
fn pg17_segment_agrees_with_pg_walinspect() {
    commits_match_the_server(17);
    agrees_with_walinspect(17);
}

#[test]
fn pg18_segment_agrees_with_pg_walinspect() {
    commits_match_the_server(18);
    agrees_with_walinspect(18);
}
