//! Damaged, foreign and truncated segments are refused with the right error, and no input
//! makes anything panic.

mod common;

use common::*;
use pgkeep_wal::page::{SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ};
use pgkeep_wal::{LeadingContinuation, Lsn, SegmentError, SegmentExpectations, WalDecoder};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte_nonzero(&mut self) -> u8 {
        (self.below(255) + 1) as u8
    }
}

const SEG9: &str = "000000010000000000000009";

fn strict(name: &str) -> SegmentExpectations {
    SegmentExpectations { system_identifier: Some(sysid()), pg_major: Some(15), ..expect(name) }
}

fn seg_start(name: &str) -> u64 {
    Lsn::segment_start(expect(name).segno, SEG).0
}

/// File offsets of every byte of every record that starts and ends inside the segment
/// (page headers in between excluded).
fn record_bytes(name: &str) -> Vec<(usize, Lsn)> {
    let start = seg_start(name);
    let end = start + SEG as u64;
    let mut out = Vec::new();
    for r in decode_files(&[name]) {
        if r.lsn.0 < start || r.end_lsn.0 > end {
            continue;
        }
        let mut lsn = r.lsn.0;
        while lsn < r.end_lsn.0 {
            let in_page = (lsn % XLOG_BLCKSZ as u64) as usize;
            let header =
                if (lsn - start) < XLOG_BLCKSZ as u64 { SIZE_OF_XLOG_LONG_PHD } else { SIZE_OF_XLOG_SHORT_PHD };
            if in_page < header {
                lsn += (header - in_page) as u64;
                continue;
            }
            out.push(((lsn - start) as usize, r.lsn));
            lsn += 1;
        }
    }
    out
}

#[test]
fn fixtures_are_accepted_with_strict_expectations() {
    for (name, _, _) in segments() {
        validate_segment(&read(&name), &strict(&name), None).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn bad_magic_at_offset_zero() {
    let mut d = read(SEG9);
    d[0] = 0;
    d[1] = 0;
    let e = validate_segment(&d, &strict(SEG9), None).unwrap_err();
    assert_eq!(e, SegmentError::BadMagic { offset: 0, found: 0, expected: Some(0xD110) });
    assert_eq!(e.to_string(), "invalid page magic 0000 at offset 0 (expected D110)");
    // Without an expected major the message says no known major uses it.
    let e = validate_segment(&d, &expect(SEG9), None).unwrap_err();
    assert!(e.to_string().starts_with("invalid page magic 0000 at offset 0 (not a known WAL magic"), "{e}");
    // Another major's magic is refused when 15 is expected, accepted (and reported) when not.
    let mut d16 = read(SEG9);
    for page in (0..d16.len()).step_by(XLOG_BLCKSZ) {
        d16[page..page + 2].copy_from_slice(&0xD113u16.to_le_bytes());
    }
    let e = validate_segment(&d16, &strict(SEG9), None).unwrap_err();
    assert_eq!(e, SegmentError::BadMagic { offset: 0, found: 0xD113, expected: Some(0xD110) });
    // A magic changed on a later page only.
    let mut d = read(SEG9);
    d[5 * XLOG_BLCKSZ] ^= 0x01;
    assert!(matches!(
        validate_segment(&d, &expect(SEG9), None),
        Err(SegmentError::BadMagic { offset: 40960, expected: Some(0xD110), .. })
    ));
}

#[test]
fn foreign_system_identifier() {
    let d = read(SEG9);
    let mut other = strict(SEG9);
    other.system_identifier = Some(sysid() + 1);
    let e = validate_segment(&d, &other, None).unwrap_err();
    assert_eq!(e, SegmentError::SystemIdentifier { found: sysid(), expected: sysid() + 1 });
    assert_eq!(e.to_string(), format!("segment belongs to database system {}, not {}", sysid(), sysid() + 1));
}

#[test]
fn wrong_page_address() {
    let mut d = read(SEG9);
    let off = 7 * XLOG_BLCKSZ;
    let wrong = seg_start(SEG9) + 3 * XLOG_BLCKSZ as u64;
    d[off + 8..off + 16].copy_from_slice(&wrong.to_le_bytes());
    let e = validate_segment(&d, &strict(SEG9), None).unwrap_err();
    assert_eq!(
        e,
        SegmentError::PageAddress {
            offset: off as u32,
            expected: Lsn(seg_start(SEG9) + off as u64),
            found: Lsn(wrong)
        }
    );
    // The same file presented under another segment number.
    let mut renamed = strict(SEG9);
    renamed.segno += 1;
    assert!(matches!(validate_segment(&read(SEG9), &renamed, None), Err(SegmentError::PageAddress { offset: 0, .. })));
}

#[test]
fn page_timeline_newer_than_the_file_name() {
    let name = "000000020000000000000010";
    let mut e = strict(name);
    e.tli = 1;
    assert!(matches!(validate_segment(&read(name), &e, None), Err(SegmentError::Timeline { found: 2, .. })));
}

#[test]
fn flipped_byte_inside_a_record_fails_its_crc() {
    let d = read(SEG9);
    let recs = decode_files(&[SEG9]);
    // a record wholly on one page, past its header
    let r = recs
        .iter()
        .find(|r| r.header.xl_tot_len > 60 && r.lsn.page_start() == Lsn(r.end_lsn.0 - 1).page_start())
        .unwrap();
    let mut bad = d.clone();
    let off = (r.lsn.0 - seg_start(SEG9)) as usize + 40;
    bad[off] ^= 0x04;
    let e = validate_segment(&bad, &strict(SEG9), None).unwrap_err();
    assert_eq!(e, SegmentError::RecordCrc { lsn: r.lsn });
    assert_eq!(e.to_string(), format!("record at {} fails its CRC check", r.lsn));
}

#[test]
fn truncated_file() {
    let d = read(SEG9);
    let e = validate_segment(&d[..d.len() - 8192], &strict(SEG9), None).unwrap_err();
    assert_eq!(e, SegmentError::WrongLength { len: SEG as usize - 8192, expected: SEG });
    assert!(matches!(validate_segment(&[], &strict(SEG9), None), Err(SegmentError::WrongLength { len: 0, .. })));
}

#[test]
fn zeroed_tail_without_switch_record() {
    let d = read(SEG9);
    let recs = decode_files(&[SEG9]);
    // From the start of a record in the middle of the file.
    let r = &recs[recs.len() / 2];
    let mut bad = d.clone();
    let off = (r.lsn.0 - seg_start(SEG9)) as usize;
    bad[off..].fill(0);
    assert_eq!(validate_segment(&bad, &strict(SEG9), None), Err(SegmentError::UnexpectedEnd { lsn: r.lsn }));
    // From a page boundary that a record continues over: WAL ends at that record's start.
    let crossing =
        recs.iter().find(|x| x.lsn.0 > r.lsn.0 && x.lsn.page_start() != Lsn(x.end_lsn.0 - 1).page_start()).unwrap();
    let mut bad = d.clone();
    let page = (Lsn(crossing.end_lsn.0 - 1).page_start().0 - seg_start(SEG9)) as usize;
    bad[page..].fill(0);
    assert_eq!(validate_segment(&bad, &strict(SEG9), None), Err(SegmentError::UnexpectedEnd { lsn: crossing.lsn }));
    // The same bytes are a valid .partial that stops there.
    let s = validate_partial_segment(&bad, &strict(SEG9), None).unwrap();
    let end = s.partial_end.expect("partial end");
    assert!(end.zero_filled, "{end:?}");
    assert_eq!(end.stopped_at, crossing.lsn);
    assert!(s.records > 0 && !s.continues_into_next);
}

#[test]
fn data_after_the_switch_record() {
    let name = "00000001000000000000000D";
    let s = validate_segment(&read(name), &strict(name), None).unwrap();
    assert!(s.ends_with_switch);
    let mut bad = read(name);
    bad[500_000] = 1;
    let e = validate_segment(&bad, &strict(name), None).unwrap_err();
    assert!(matches!(e, SegmentError::AfterSwitch { offset: 500_000, .. }), "{e}");
    // Right after the switch record, on its own page.
    let mut bad = read(name);
    let after = (s.end_of_valid_wal.maxalign().0 - seg_start(name)) as usize;
    bad[after + 3] = 0x7f;
    assert!(matches!(validate_segment(&bad, &strict(name), None), Err(SegmentError::AfterSwitch { .. })));
}

#[test]
fn previous_segment_problems() {
    let b = read("00000001000000000000000B");
    let c = read("00000001000000000000000C");
    let ec = strict("00000001000000000000000C");
    // A damaged tail of the record that crosses into C shows as that record's CRC failure.
    let crossing = match validate_segment(&c, &ec, Some(&b)).unwrap().leading {
        LeadingContinuation::Verified { record } => record,
        other => panic!("{other:?}"),
    };
    let mut b_bad = b.clone();
    let last = b_bad.len() - 3;
    b_bad[last] ^= 0x20;
    assert_eq!(validate_segment(&c, &ec, Some(&b_bad)), Err(SegmentError::RecordCrc { lsn: crossing }));
    // A segment that is not the previous one is not used, and the summary says why.
    let s = validate_segment(&c, &ec, Some(&read("00000001000000000000000D"))).unwrap();
    assert!(matches!(s.leading, LeadingContinuation::Unverified { .. }));
    assert!(s.note.is_some());
    // A previous segment whose WAL ends at a record boundary cannot be continued: replace
    // the record that crosses into C with a switch record.
    let b_start = seg_start("00000001000000000000000B");
    let before = decode_files(&["00000001000000000000000B"]).into_iter().rfind(|r| r.lsn < crossing).unwrap();
    let mut switch = Vec::new();
    switch.extend_from_slice(&24u32.to_le_bytes());
    switch.extend_from_slice(&0u32.to_le_bytes());
    switch.extend_from_slice(&before.lsn.0.to_le_bytes());
    switch.extend_from_slice(&[0x40, 0, 0, 0, 0, 0, 0, 0]);
    let crc = pgkeep_wal::record::record_crc(&switch).unwrap();
    switch[20..24].copy_from_slice(&crc.to_le_bytes());
    let mut b_clean = b.clone();
    let at = (crossing.0 - b_start) as usize;
    b_clean[at..].fill(0);
    b_clean[at..at + 24].copy_from_slice(&switch);
    let e = validate_segment(&c, &ec, Some(&b_clean)).unwrap_err();
    assert!(matches!(e, SegmentError::ContinuationMismatch { .. }), "{e}");
}

#[test]
fn partial_segments() {
    let name = "00000001000000000000000F.partial";
    let s = validate_partial_segment(&read(name), &strict(name), None).unwrap();
    let end = s.partial_end.clone().unwrap();
    assert!(end.zero_filled);
    assert_eq!(s.records, 1);
    assert_eq!(end.end_of_wal, s.end_of_valid_wal);
    // As a full segment it is refused: it stops early without a switch.
    assert!(matches!(validate_segment(&read(name), &strict(name), None), Err(SegmentError::UnexpectedEnd { .. })));
    // WAL that resumes after the point where it stopped is damage, not an end.
    let mut bad = read(SEG9);
    bad[10 * XLOG_BLCKSZ..11 * XLOG_BLCKSZ].fill(0);
    let e = validate_partial_segment(&bad, &strict(SEG9), None).unwrap_err();
    assert!(matches!(e, SegmentError::DataAfterEnd { offset, .. } if offset as usize == 11 * XLOG_BLCKSZ), "{e}");
    // A record failing its CRC with more records after it on the page.
    let recs = decode_files(&[SEG9]);
    let r = &recs[40];
    let mut bad = read(SEG9);
    bad[(r.lsn.0 - seg_start(SEG9)) as usize + 20] ^= 1;
    assert!(matches!(validate_partial_segment(&bad, &strict(SEG9), None), Err(SegmentError::DataAfterEnd { .. })));
    // A .partial shorter than a segment ends where the file ends.
    let short = &read(SEG9)[..100_000];
    let s = validate_partial_segment(short, &strict(SEG9), None).unwrap();
    assert!(s.partial_end.is_some() && s.records > 0);
}

/// Every single-byte change inside a record must be caught. `PGKEEP_WAL_FLIPS` raises the
/// number of flips per segment (200 by default).
#[test]
fn random_byte_flips_inside_records_are_all_detected() {
    let flips: usize = std::env::var("PGKEEP_WAL_FLIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    for name in [SEG9, "00000001000000000000000B", "00000001000000000000000C", "000000010000000000000008"] {
        let d = read(name);
        let bytes = record_bytes(name);
        assert!(bytes.len() > 50_000, "{name}: {} record bytes", bytes.len());
        let mut rng = Rng(0x5EED_0000 + d.len() as u64 + bytes.len() as u64);
        let mut bad = d.clone();
        for i in 0..flips {
            let (off, rec) = bytes[rng.below(bytes.len())];
            let x = rng.byte_nonzero();
            bad[off] ^= x;
            let r = pgkeep_wal::validate_segment(&bad, &strict(name), None);
            let size = [CHUNK_SIZES[i % CHUNK_SIZES.len()]];
            assert_streamed_same_in(&size, &bad, &strict(name), None, false, &r);
            assert!(r.is_err(), "{name}: flip {x:02X} at offset {off} (record {rec}) went unnoticed");
            bad[off] ^= x;
        }
        assert_eq!(bad, d);
    }
}

fn no_panic_on(data: &[u8], e: &SegmentExpectations, rng: &mut Rng) {
    // One chunk size per call, in turn: the streaming validator must agree on garbage too.
    let size = [CHUNK_SIZES[rng.below(CHUNK_SIZES.len())]];
    let whole = pgkeep_wal::validate_segment(data, e, None);
    assert_streamed_same_in(&size, data, e, None, false, &whole);
    let whole = pgkeep_wal::validate_partial_segment(data, e, None);
    assert_streamed_same_in(&size, data, e, None, true, &whole);
    let whole = pgkeep_wal::validate_segment(data, e, Some(data));
    assert_streamed_same_in(&size, data, e, Some(data), false, &whole);
    let start = Lsn::segment_start(e.segno, e.seg_size);
    let mut dec = WalDecoder::new(start, e.seg_size).unwrap();
    let mut pos = 0;
    while pos < data.len() {
        let n = (1 + rng.below(20_000)).min(data.len() - pos);
        dec.feed(&data[pos..pos + n]);
        pos += n;
        while let Ok(Some(r)) = dec.next_record() {
            let _ = r.kind();
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(42);
    let e = strict(SEG9);
    let good = read(SEG9);
    // Pure noise, and noise behind a valid first page header.
    for i in 0..60 {
        let len = match i % 3 {
            0 => rng.below(3 * XLOG_BLCKSZ),
            1 => SEG as usize,
            _ => rng.below(SEG as usize),
        };
        let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && d.len() >= SIZE_OF_XLOG_LONG_PHD {
            d[..SIZE_OF_XLOG_LONG_PHD].copy_from_slice(&good[..SIZE_OF_XLOG_LONG_PHD]);
        }
        no_panic_on(&d, &e, &mut rng);
    }
    // A real segment with a burst of changes and maybe a cut.
    for _ in 0..150 {
        let mut d = good.clone();
        for _ in 0..1 + rng.below(30) {
            let off = rng.below(d.len());
            d[off] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            d.truncate(rng.below(d.len()));
        }
        no_panic_on(&d, &e, &mut rng);
    }
    // Mutated pairs of previous and current segment (reassembly across the boundary).
    let (b, c) = (read("00000001000000000000000B"), read("00000001000000000000000C"));
    let ec = strict("00000001000000000000000C");
    for _ in 0..60 {
        let (mut pb, mut pc) = (b.clone(), c.clone());
        for _ in 0..1 + rng.below(8) {
            let off = pb.len() - 1 - rng.below(3 * XLOG_BLCKSZ);
            pb[off] = rng.next() as u8;
            let off = rng.below(2 * XLOG_BLCKSZ);
            pc[off] = rng.next() as u8;
        }
        let _ = validate_segment(&pc, &ec, Some(&pb));
        let _ = validate_partial_segment(&pc, &ec, Some(&pb));
    }
    // The other parsers.
    for _ in 0..2000 {
        let len = rng.below(400);
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = pgkeep_wal::parse_pg_control(&b);
        let text: String = b.iter().map(|&c| (c % 96 + 32) as char).map(|c| if c == '~' { '\n' } else { c }).collect();
        let _ = pgkeep_wal::parse_timeline_history(&text);
        let _ = pgkeep_wal::parse_backup_label(&text);
        let _ = pgkeep_wal::parse_wal_file_name(&text, SEG);
        let _ = text.parse::<Lsn>();
        let mut blocks = Vec::new();
        let _ = pgkeep_wal::record::decode_body(&b, pgkeep_wal::version::by_major(15).unwrap(), &mut blocks);
        let _ = pgkeep_wal::rmgr::record_kind(
            (rng.next() % 3) as u8,
            rng.next() as u8,
            1,
            &b,
            pgkeep_wal::version::by_major(15).unwrap(),
        );
    }
    let mut pgc = read("pg_control");
    for _ in 0..500 {
        let off = rng.below(300);
        pgc[off] ^= rng.byte_nonzero();
        let _ = pgkeep_wal::parse_pg_control(&pgc);
    }
}

/// A .partial whose leading record (begun in the previous segment) breaks off inside it.
#[test]
fn partial_segment_cut_inside_the_leading_record() {
    let nine = read(SEG9);
    let a = "00000001000000000000000A";
    let mut d = read(a);
    d[5 * XLOG_BLCKSZ..].fill(0);
    let s = validate_partial_segment(&d, &strict(a), Some(&nine)).unwrap();
    let end = s.partial_end.expect("partial end");
    assert!(end.stopped_at < Lsn(seg_start(a)), "{end:?}");
    assert!(end.zero_filled);
    assert_eq!(s.records, 0);
    assert!(matches!(validate_segment(&d, &strict(a), Some(&nine)), Err(SegmentError::UnexpectedEnd { .. })));
}
