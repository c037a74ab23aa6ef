//! The decoder against PostgreSQL's own reader: pg_waldump 15 over every fixture segment.
//!
//! These tests need PostgreSQL's binaries (CI installs them); without pg_waldump they fail
//! and say so rather than pass silently. `PG_WALDUMP` overrides the path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use pgkeep_wal::{validate_segment, DecodedRecord, LeadingContinuation, Lsn, RecordKind};

const DEFAULT_PG_WALDUMP: &str = "/usr/lib/postgresql/15/bin/pg_waldump";

fn pg_waldump() -> PathBuf {
    let p = std::env::var_os("PG_WALDUMP").map(PathBuf::from).unwrap_or_else(|| DEFAULT_PG_WALDUMP.into());
    assert!(
        p.exists(),
        "pg_waldump not found at {}: these tests compare the decoder with PostgreSQL's own WAL reader. \
         Install PostgreSQL 15 (Debian: apt-get install postgresql-15) or set PG_WALDUMP.",
        p.display()
    );
    p
}

/// One line of pg_waldump output.
#[derive(Debug)]
struct Dumped {
    rmgr: String,
    rec_len: u32,
    tot_len: u32,
    xid: u32,
    lsn: Lsn,
    prev: Lsn,
    desc: String,
}

fn parse_line(l: &str) -> Option<Dumped> {
    let rest = l.strip_prefix("rmgr: ")?;
    let (rmgr, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start().strip_prefix("len (rec/tot):")?;
    let (lens, rest) = rest.split_once(", tx:")?;
    let (rec, tot) = lens.split_once('/')?;
    let (tx, rest) = rest.split_once(", lsn:")?;
    let (lsn, rest) = rest.split_once(", prev ")?;
    let (prev, desc) = rest.split_once(", desc: ")?;
    Some(Dumped {
        rmgr: rmgr.to_string(),
        rec_len: rec.trim().parse().ok()?,
        tot_len: tot.trim().parse().ok()?,
        xid: tx.trim().parse().ok()?,
        lsn: lsn.trim().parse().ok()?,
        prev: prev.trim().parse().ok()?,
        desc: desc.to_string(),
    })
}

/// Runs pg_waldump over `dir` from segment `start` to `end` (inclusive).
fn waldump(dir: &Path, start: &str, end: &str) -> Vec<Dumped> {
    let out = Command::new(pg_waldump())
        .arg("-p")
        .arg(dir)
        .arg(start)
        .arg(end)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect("running pg_waldump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A segment without a record start, and the zero-filled end of a .partial, are how
    // pg_waldump's reading ends without the end segment's limit.
    let normal_end = stderr.contains("could not find a valid record after")
        || (stderr.contains("invalid record length") && stderr.contains("got 0"));
    if !out.status.success() && !normal_end {
        panic!("pg_waldump {start} {end} failed: {stderr}");
    }
    stdout
        .lines()
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparsed pg_waldump line: {}", &l[..l.len().min(200)])))
        .collect()
}

/// `blkref #N: rel S/D/R [fork F] blk B [FPW]` entries of a description.
fn blkrefs(desc: &str) -> Vec<(u8, [u32; 3], u8, u32, bool)> {
    let mut v = Vec::new();
    for part in desc.split("blkref #").skip(1) {
        let (id, rest) = part.split_once(": rel ").expect("blkref id");
        let mut words = rest.split_whitespace();
        let rel: Vec<u32> = words.next().expect("rel").split('/').map(|x| x.parse().expect("oid")).collect();
        let mut fork = 0;
        let mut w = words.next().expect("blk or fork");
        if w == "fork" {
            fork = match words.next().expect("fork name") {
                "main" => 0,
                "fsm" => 1,
                "vm" => 2,
                "init" => 3,
                f => panic!("fork {f}"),
            };
            w = words.next().expect("blk");
        }
        assert_eq!(w, "blk");
        let blk = words.next().expect("blkno").trim_end_matches(',').parse().expect("blkno");
        let fpw = words.next().is_some_and(|x| x.starts_with("FPW"));
        v.push((id.parse().expect("block id"), [rel[0], rel[1], rel[2]], fork, blk, fpw));
    }
    v
}

fn compare(ours: &[DecodedRecord], theirs: &[Dumped], what: &str) {
    let first_diff = ours.iter().zip(theirs).position(|(o, t)| o.lsn != t.lsn);
    assert_eq!(ours.len(), theirs.len(), "{what}: record count (first LSN difference at index {first_diff:?})");
    for (o, t) in ours.iter().zip(theirs) {
        let at = format!("{what}: record at {}", t.lsn);
        assert_eq!(o.lsn, t.lsn, "{at}");
        assert_eq!(o.rmgr_name(), t.rmgr, "{at}: rmgr");
        assert_eq!(o.header.xl_prev, t.prev, "{at}: prev");
        assert_eq!(o.xid(), t.xid, "{at}: xid");
        assert_eq!(o.header.xl_tot_len, t.tot_len, "{at}: total length");
        assert_eq!(o.rec_len(), t.rec_len, "{at}: length without full-page images");
        let ours_blocks: Vec<_> = o
            .blocks
            .iter()
            .map(|b| (b.block_id, [b.rnode.spcNode, b.rnode.dbNode, b.rnode.relNode], b.forknum, b.blkno, b.has_image))
            .collect();
        assert_eq!(ours_blocks, blkrefs(&t.desc), "{at}: block references");
        let kind = o.kind().unwrap_or_else(|e| panic!("{at}: {e}"));
        let d = &t.desc;
        match kind {
            RecordKind::Commit { xid, commit_time, subxacts } => {
                assert!(d.starts_with(&format!("COMMIT {commit_time}")), "{at}: {d}");
                assert_eq!(xid, t.xid);
                check_subxacts(d, &subxacts, &at);
            }
            RecordKind::Abort { xid, abort_time, subxacts } => {
                assert!(d.starts_with(&format!("ABORT {abort_time}")), "{at}: {d}");
                assert_eq!(xid, t.xid);
                check_subxacts(d, &subxacts, &at);
            }
            RecordKind::CommitPrepared { xid, commit_time, .. } => {
                assert!(d.starts_with(&format!("COMMIT_PREPARED {xid}: {commit_time}")), "{at}: {d}")
            }
            RecordKind::AbortPrepared { xid, abort_time, .. } => {
                assert!(d.starts_with(&format!("ABORT_PREPARED {xid}: {abort_time}")), "{at}: {d}")
            }
            RecordKind::Prepare { xid } => {
                assert!(d.starts_with("PREPARE "), "{at}: {d}");
                assert_eq!(xid, t.xid)
            }
            RecordKind::Checkpoint { online, redo, tli, prev_tli, next_xid, .. } => {
                let word = if online { "CHECKPOINT_ONLINE" } else { "CHECKPOINT_SHUTDOWN" };
                let want = format!(
                    "{word} redo {redo}; tli {tli}; prev tli {prev_tli}; fpw true; xid {}:{};",
                    next_xid >> 32,
                    next_xid as u32
                );
                assert!(d.starts_with(&want), "{at}: {d} (want {want})");
            }
            RecordKind::RestorePoint { name, .. } => {
                assert_eq!(d.trim_end(), format!("RESTORE_POINT {name}"), "{at}")
            }
            RecordKind::Switch => assert_eq!(d.trim_end(), "SWITCH", "{at}"),
            RecordKind::EndOfRecovery { tli, prev_tli, time } => {
                assert_eq!(d.trim_end(), format!("END_OF_RECOVERY tli {tli}; prev tli {prev_tli}; time {time}"), "{at}")
            }
            RecordKind::BackupEnd { start } => {
                assert_eq!(d.trim_end(), format!("BACKUP_END {start}"), "{at}")
            }
            RecordKind::OverwriteContrecord { .. } => {
                assert!(d.starts_with("OVERWRITE_CONTRECORD"), "{at}")
            }
            RecordKind::Other { rmid, .. } => assert_eq!(rmid, o.rmid()),
        }
    }
}

fn check_subxacts(desc: &str, subxacts: &[u32], at: &str) {
    let theirs: Vec<u32> = match desc.split_once("; subxacts: ") {
        Some((_, rest)) => {
            rest.split(';').next().unwrap_or("").split_whitespace().map(|x| x.parse().expect("subxact")).collect()
        }
        None => vec![],
    };
    assert_eq!(subxacts, &theirs[..], "{at}: subtransactions");
}

#[test]
fn each_fixture_segment_decodes_like_pg_waldump() {
    let segs = segments();
    assert!(segs.len() >= 8, "fixtures missing: {segs:?}");
    for (name, _, _) in &segs {
        let ours = decode_files(&[name]);
        let theirs = waldump(&fixture_dir(), name, name);
        compare(&ours, &theirs, name);
        // The validator counts exactly the records pg_waldump shows for the segment, minus
        // a final one that continues into the next segment (pg_waldump stops before it).
        let summary = validate_segment(&read(name), &expect(name), None).unwrap();
        assert_eq!(summary.records as usize, theirs.len(), "{name}: validator record count");
        assert_eq!(summary.first_record, theirs.first().map(|d| d.lsn), "{name}");
        assert_eq!(summary.last_record, theirs.last().map(|d| d.lsn), "{name}");
        let commits = theirs.iter().filter(|d| d.desc.starts_with("COMMIT")).count();
        assert_eq!(summary.commits as usize, commits, "{name}: commits");
    }
}

#[test]
fn each_timeline_decodes_like_pg_waldump_across_segment_boundaries() {
    for tli in [1, 2] {
        let names = timeline_segments(tli);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ours = decode_files(&refs);
        let theirs = waldump(&fixture_dir(), &names[0], names.last().expect("segments"));
        compare(&ours, &theirs, &format!("timeline {tli}"));
        if tli == 1 {
            let crossing =
                ours.iter().filter(|r| r.lsn.segment_number(SEG) != Lsn(r.end_lsn.0 - 1).segment_number(SEG)).count();
            assert!(crossing >= 2, "fixtures should have records crossing segment boundaries, found {crossing}");
        }
    }
}

#[test]
fn partial_segment_decodes_like_pg_waldump() {
    // pg_waldump only reads plain segment names: give it a copy named as a segment.
    let dir = std::env::temp_dir().join(format!("pgkeep-wal-partial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = "00000001000000000000000F";
    std::fs::write(dir.join(name), read(&format!("{name}.partial"))).unwrap();
    let theirs = waldump(&dir, name, name);
    std::fs::remove_dir_all(&dir).ok();
    let partial = read(&format!("{name}.partial"));
    let mut dec = pgkeep_wal::WalDecoder::new(Lsn::segment_start(15, SEG), SEG).unwrap();
    dec.feed(&partial);
    let mut ours = Vec::new();
    let end = loop {
        match dec.next_record() {
            Ok(Some(r)) => ours.push(r),
            Ok(None) => panic!("the .partial should end in unwritten space"),
            Err(e) => break e,
        }
    };
    assert!(end.is_end_of_wal(), "{end}");
    compare(&ours, &theirs, "partial");
}

/// The 2.2 MB logical message starts in segment 9, fills all of segment A and ends in B.
/// Its payload is compared byte for byte with pg_waldump's hex dump of it.
#[test]
fn record_crossing_two_segment_boundaries_has_the_bytes_pg_waldump_shows() {
    let theirs = waldump(&fixture_dir(), "000000010000000000000009", "00000001000000000000000B");
    let t = theirs.iter().find(|d| d.rmgr == "LogicalMessage").expect("logical message in pg_waldump output");
    let hex = t.desc.split_once("): ").expect("payload").1;
    let payload: Vec<u8> = hex.split_whitespace().map(|h| u8::from_str_radix(h, 16).expect("hex byte")).collect();
    assert_eq!(payload.len(), 2_200_000);

    let ours = decode_files(&["000000010000000000000009", "00000001000000000000000A", "00000001000000000000000B"]);
    let o = ours.iter().find(|r| r.lsn == t.lsn).expect("our record at the same LSN");
    assert_eq!(o.lsn.segment_number(SEG), 9);
    assert_eq!(o.end_lsn.segment_number(SEG), 0xB);
    // xl_logical_message: Oid dbId; bool transactional; Size prefix_size; Size message_size;
    // char message[] (prefix with its NUL, then the payload). // replication/message.h
    let main = o.main_data();
    let prefix_size = u64::from_le_bytes(main[8..16].try_into().unwrap()) as usize;
    let message_size = u64::from_le_bytes(main[16..24].try_into().unwrap()) as usize;
    assert_eq!(&main[24..24 + prefix_size], b"pgkeep-fixture\0");
    assert_eq!(message_size, payload.len());
    assert!(main[24 + prefix_size..] == payload[..], "reassembled payload differs from pg_waldump's");

    // The validator: segment A holds no record start at all.
    let a = validate_segment(&read("00000001000000000000000A"), &expect("00000001000000000000000A"), None).unwrap();
    assert_eq!((a.records, a.first_record, a.continues_into_next), (0, None, true));
}

/// The record that crosses from segment B into C is reassembled from both segments and its
/// CRC checked when the previous segment is given; it is the record pg_waldump shows there.
#[test]
fn record_crossing_into_next_segment_is_verified_with_previous_segment() {
    let theirs = waldump(&fixture_dir(), "00000001000000000000000B", "00000001000000000000000C");
    let c_start = Lsn::segment_start(0xC, SEG);
    let crossing = theirs.iter().rfind(|d| d.lsn < c_start).expect("record before C");
    let b = read("00000001000000000000000B");
    let c = read("00000001000000000000000C");
    let with_prev = validate_segment(&c, &expect("00000001000000000000000C"), Some(&b)).unwrap();
    assert_eq!(with_prev.leading, LeadingContinuation::Verified { record: crossing.lsn });
    let alone = validate_segment(&c, &expect("00000001000000000000000C"), None).unwrap();
    assert!(matches!(alone.leading, LeadingContinuation::Unverified { bytes } if bytes > 0));
    let b_summary = validate_segment(&b, &expect("00000001000000000000000B"), None).unwrap();
    assert!(b_summary.continues_into_next);
}
