//! Property tests: every parser of bytes that come from a data directory or a repository
//! (WAL pages and segments, records, pg_control, history files, backup labels, file names)
//! returns `Ok` or `Err` for any input, never panics. Inputs are random bytes and mutations
//! (bit flips, overwrites, truncations, splices, insertions, deletions) of the real fixture
//! files, some re-sealed with a correct CRC so the mutation reaches the code behind the check.
//!
//! Bounded and reproducible: a fixed seed (`PROPTEST_RNG_SEED` overrides it) and a fixed number
//! of cases per property, which `PGKEEP_FUZZ_SCALE` multiplies for a longer run
//! (`PGKEEP_FUZZ_SCALE=50 cargo nextest run -p pgkeep-wal --test fuzz`).

mod common;

use std::sync::OnceLock;

use common::*;
use pgkeep_wal::page::XLOG_BLCKSZ;
use pgkeep_wal::record::{check_record_prefix, decode_body, record_crc};
use pgkeep_wal::rmgr::record_kind;
use pgkeep_wal::version::KNOWN_VERSIONS;
use pgkeep_wal::{inspect_wal, ReplayStart, SegmentFile};
use pgkeep_wal::{
    parse_backup_label, parse_pg_control, parse_timeline_history, parse_wal_file_name, timeline_of,
    validate_partial_segment, validate_segment, DecoderOptions, Lsn, SegmentError, SegmentExpectations, WalDecoder,
    WalFileName,
};
use proptest::prelude::*;
use proptest::sample::Index;

#[path = "common/mutate.rs"]
mod mutate;
use mutate::{apply, config, in_place, mutated, mutations};

/// A full segment fixture with the file offsets of its records that lie on one page (whose
/// CRC can be recomputed in place after a mutation).
struct Segment {
    name: String,
    data: Vec<u8>,
    expect: SegmentExpectations,
    one_page_records: Vec<(usize, usize)>,
    record_starts: Vec<Lsn>,
}

fn segment_fixtures() -> &'static [Segment] {
    static S: OnceLock<Vec<Segment>> = OnceLock::new();
    S.get_or_init(|| {
        segments()
            .into_iter()
            .map(|(name, _, _)| {
                let data = read(&name);
                let expect = expect(&name);
                let start = Lsn::segment_start(expect.segno, SEG).0;
                let recs = decode_files(&[&name]);
                let one_page_records = recs
                    .iter()
                    .filter(|r| r.lsn.0 >= start && r.lsn.page_start() == Lsn(r.end_lsn.0 - 1).page_start())
                    .map(|r| ((r.lsn.0 - start) as usize, (r.end_lsn.0 - start) as usize))
                    .collect();
                let record_starts = recs.iter().map(|r| r.lsn).filter(|l| l.0 >= start).collect();
                Segment { name, data, expect, one_page_records, record_starts }
            })
            .collect()
    })
}

/// Recomputes the CRC of every one-page record the mutation left readable, so a damaged body
/// or block header is seen by the record decoder and the rmgr parsers rather than by the CRC.
fn reseal_records(data: &mut [u8], records: &[(usize, usize)]) {
    for &(start, _) in records {
        let Some(tot) = data.get(start..start + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) else {
            continue;
        };
        let end = start.saturating_add(tot as usize);
        let page_end = (start / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
        if end > page_end || end > data.len() {
            continue;
        }
        if let Some(crc) = record_crc(&data[start..end]) {
            data[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Every record of every fixture segment, as stored (header included), with its major.
fn fixture_records() -> &'static [Vec<u8>] {
    static R: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    R.get_or_init(|| {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for (name, _, _) in segments() {
            for r in decode_files(&[&name]) {
                // Keep the set small and varied: one record per rmgr/info/length class.
                if r.raw().len() < 64 * 1024
                    && !out.iter().any(|o| o[16..18] == r.raw()[16..18] && o.len() == r.raw().len())
                {
                    out.push(r.raw().to_vec());
                }
            }
        }
        out
    })
}

fn strict(e: &SegmentExpectations) -> SegmentExpectations {
    SegmentExpectations { system_identifier: Some(sysid()), pg_major: Some(15), ..e.clone() }
}

/// Runs the decoder over `data` in chunks whose sizes come from `cuts`, asking every record
/// what it means. It must stop with a record, `None` or an error; nothing else.
fn decode_all(start: Lsn, seg_size: u32, opts: DecoderOptions, data: &[u8], cuts: &[Index]) {
    let Ok(mut dec) = WalDecoder::with_options(start, seg_size, opts) else { return };
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = match cuts.get(i) {
            Some(c) => 1 + c.index(data.len() - pos),
            None => data.len() - pos,
        };
        i += 1;
        dec.feed(&data[pos..pos + n]);
        pos += n;
        while let Ok(Some(r)) = dec.next_record() {
            let _ = (r.kind(), r.rec_len(), r.rmgr_name(), r.main_data().len());
            for b in 0..r.blocks.len() {
                let _ = (r.block_data(b).len(), r.block_image(b).len());
            }
        }
    }
    let _ = (dec.next_lsn(), dec.last_record(), dec.fed_until(), dec.pg_major(), dec.system_identifier());
}

fn opts_strategy() -> impl Strategy<Value = DecoderOptions> {
    (
        prop_oneof![Just(None), (12..=18u32).prop_map(Some)],
        prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        prop_oneof![Just(None), any::<u32>().prop_map(Some)],
    )
        .prop_map(|(pg_major, system_identifier, max_timeline)| DecoderOptions {
            pg_major,
            system_identifier,
            max_timeline,
        })
}

proptest! {
    #![proptest_config(config(1000))]

    /// A mutated complete segment, alone and after its real predecessor, as a segment and as a
    /// `.partial`; half the time with the records' CRCs recomputed.
    #[test]
    fn validate_mutated_segments(which in any::<Index>(), muts in mutations(), reseal in any::<bool>(), prev in any::<bool>()) {
        let segs = segment_fixtures();
        let s = &segs[which.index(segs.len())];
        let mut d = mutated(&s.data, &muts);
        if reseal && muts.iter().all(in_place) {
            reseal_records(&mut d, &s.one_page_records);
        }
        let previous = segs.iter().find(|p| p.expect.tli == s.expect.tli && p.expect.segno + 1 == s.expect.segno);
        let previous = if prev { previous.map(|p| p.data.as_slice()) } else { None };
        let e = strict(&s.expect);
        let _ = validate_segment(&d, &e, previous);
        let _ = validate_partial_segment(&d, &e, previous);
        let _ = validate_segment(&d, &s.expect, None);
    }

    /// The predecessor mutated instead: the record that crosses into the segment is
    /// reassembled from damaged bytes.
    #[test]
    fn validate_with_mutated_previous_segment(which in any::<Index>(), muts in mutations()) {
        let segs = segment_fixtures();
        let pairs: Vec<(&Segment, &Segment)> = segs
            .iter()
            .filter_map(|s| segs.iter().find(|p| p.expect.tli == s.expect.tli && p.expect.segno + 1 == s.expect.segno).map(|p| (p, s)))
            .collect();
        let (p, s) = pairs[which.index(pairs.len())];
        let prev = mutated(&p.data, &muts);
        let _ = validate_segment(&s.data, &strict(&s.expect), Some(&prev));
        let _ = validate_partial_segment(&s.data, &strict(&s.expect), Some(&prev));
    }

    /// The decoder fed a mutated segment in random chunks, from the segment start or from a
    /// real record start, with random options.
    #[test]
    fn decode_mutated_segments(
        which in any::<Index>(),
        muts in mutations(),
        reseal in any::<bool>(),
        from_record in proptest::option::of(any::<Index>()),
        cuts in proptest::collection::vec(any::<Index>(), 0..8),
        opts in opts_strategy(),
    ) {
        let segs = segment_fixtures();
        let s = &segs[which.index(segs.len())];
        let mut d = mutated(&s.data, &muts);
        if reseal && muts.iter().all(in_place) {
            reseal_records(&mut d, &s.one_page_records);
        }
        let seg_start = Lsn::segment_start(s.expect.segno, SEG);
        let start = match from_record {
            Some(i) if !s.record_starts.is_empty() => s.record_starts[i.index(s.record_starts.len())],
            _ => seg_start,
        };
        let skip = ((start.0 - seg_start.0) as usize).min(d.len());
        decode_all(start, SEG, opts, &d[skip..], &cuts);
    }

    /// Short pieces of WAL: the first pages of a segment, mutated, as a `.partial` and through
    /// the decoder.
    #[test]
    fn first_pages_mutated(which in any::<Index>(), pages in 1..6usize, muts in mutations(), reseal in any::<bool>()) {
        let segs = segment_fixtures();
        let s = &segs[which.index(segs.len())];
        let mut d = mutated(&s.data[..pages * XLOG_BLCKSZ], &muts);
        if reseal && muts.iter().all(in_place) {
            reseal_records(&mut d, &s.one_page_records);
        }
        let _ = validate_partial_segment(&d, &strict(&s.expect), None);
        decode_all(Lsn::segment_start(s.expect.segno, SEG), SEG, DecoderOptions::default(), &d, &[]);
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes at any position with any segment size: decoder start checks, page
    /// validation and LSN arithmetic near the ends of the address space.
    #[test]
    fn decode_random_bytes_anywhere(
        start in prop_oneof![any::<u64>(), (u64::MAX - 4 * XLOG_BLCKSZ as u64)..=u64::MAX, Just(0u64)],
        seg_size in prop_oneof![Just(SEG), Just(16 << 20), any::<u32>()],
        head in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..3 * XLOG_BLCKSZ),
        cuts in proptest::collection::vec(any::<Index>(), 0..4),
        opts in opts_strategy(),
    ) {
        let mut d = bytes;
        // Half the time a plausible first page header, so the reader gets past it.
        if head && d.len() >= 40 {
            let good = &segment_fixtures()[0].data;
            d[..40].copy_from_slice(&good[..40]);
            d[8..16].copy_from_slice(&(start & !(XLOG_BLCKSZ as u64 - 1)).to_le_bytes());
        }
        decode_all(Lsn(start & !7), seg_size, opts, &d, &cuts);
    }

    /// Validation with any expectations: segment numbers and sizes that overflow.
    #[test]
    fn validate_with_any_expectations(
        tli in any::<u32>(),
        segno in prop_oneof![any::<u64>(), Just(u64::MAX), Just(u64::MAX / SEG as u64)],
        seg_size in prop_oneof![Just(SEG), any::<u32>(), Just(0u32)],
        pg_major in proptest::option::of(0..20u32),
        len in prop_oneof![0..200usize, Just(SEG as usize)],
    ) {
        let data = &segment_fixtures()[0].data;
        let e = SegmentExpectations { tli, segno, seg_size, system_identifier: None, pg_major };
        let d = &data[..len.min(data.len())];
        let _ = validate_segment(d, &e, Some(d));
        let _ = validate_partial_segment(d, &e, None);
    }

    /// A real record's bytes mutated (its length field sometimes made to agree), decoded
    /// with every major's rules, and its main data read as every rmgr/info would.
    #[test]
    fn record_bodies(which in any::<Index>(), muts in mutations(), fix_len in any::<bool>(), info in any::<u8>()) {
        let recs = fixture_records();
        let mut r = mutated(&recs[which.index(recs.len())], &muts);
        if fix_len && r.len() >= 4 {
            let n = r.len() as u32;
            r[..4].copy_from_slice(&n.to_le_bytes());
        }
        let mut blocks = Vec::new();
        for v in &KNOWN_VERSIONS {
            let tot = r.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
            let _ = check_record_prefix(&r, tot, v);
            let _ = check_record_prefix(&r[..r.len() / 2], tot, v);
            let main = match decode_body(&r, v, &mut blocks) {
                Ok(layout) => r.get(layout.main_data.clone()).unwrap_or(&[]),
                Err(_) => r.get(24..).unwrap_or(&[]),
            };
            let xid = r.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
            let rmid = r.get(17).copied().unwrap_or(0);
            let _ = record_kind(rmid, r.get(16).copied().unwrap_or(0), xid, main, v);
            for rmid in [0u8, 1] {
                let _ = record_kind(rmid, info, xid, main, v);
            }
        }
    }

    /// pg_control in both layouts (the fixture is 1300; 1700 is made from it), mutated,
    /// half the time with the CRC recomputed so the fields behind it are read.
    #[test]
    fn pg_control_mutated(v1700 in any::<bool>(), muts in mutations(), reseal in any::<bool>()) {
        let mut d = read("pg_control");
        if v1700 {
            d[8..12].copy_from_slice(&1700u32.to_le_bytes());
            reseal_control(&mut d);
        }
        apply(&mut d, &muts);
        if reseal {
            reseal_control(&mut d);
        }
        if let Ok(c) = parse_pg_control(&d) {
            let _ = (c.pg_major(), c.wal_level_name(), c.state.to_string(), c.checkPointCopy.next_xid_display());
        }
    }

    #[test]
    fn pg_control_random(bytes in proptest::collection::vec(any::<u8>(), 0..400), version in prop_oneof![Just(1300u32), Just(1700), any::<u32>()]) {
        let mut d = bytes;
        if d.len() >= 12 {
            d[8..12].copy_from_slice(&version.to_le_bytes());
        }
        reseal_control(&mut d);
        let _ = parse_pg_control(&d);
    }

    #[test]
    fn history_files(muts in mutations(), random in ".{0,200}", target in any::<u32>(), lsn in any::<u64>()) {
        let good = read("00000002.history");
        for text in [String::from_utf8_lossy(&mutated(&good, &muts)).into_owned(), random] {
            if let Ok(h) = parse_timeline_history(&text) {
                let _ = timeline_of(&h, target, Lsn(lsn));
            }
        }
    }

    #[test]
    fn backup_labels(muts in mutations(), from_label in any::<bool>(), random in "([A-Z ]{0,20}: [0-9A-F/ ()a-z]{0,40}\n){0,6}") {
        let good = if from_label { BACKUP_LABEL.as_bytes().to_vec() } else { read("00000001000000000000000D.00000028.backup") };
        let _ = parse_backup_label(&String::from_utf8_lossy(&mutated(&good, &muts)));
        let _ = parse_backup_label(&random);
    }

    /// Names: random text, and names built from the real parts; whatever parses must print
    /// back as the same name.
    #[test]
    fn wal_file_names(
        random in "[0-9A-Fa-f.partilhsbckuyé]{0,45}",
        tli in any::<u32>(),
        hi in any::<u32>(),
        lo in any::<u32>(),
        off in any::<u32>(),
        suffix in 0..5u8,
        seg_size in prop_oneof![Just(SEG), Just(16 << 20), Just(1 << 30), any::<u32>()],
    ) {
        let built = format!(
            "{tli:08X}{hi:08X}{lo:08X}{}",
            match suffix { 0 => String::new(), 1 => ".partial".into(), 2 => format!(".{off:08X}.backup"), 3 => ".history".into(), _ => format!("{off:X}") }
        );
        for name in [random.as_str(), built.as_str(), &built[..built.len() / 2]] {
            if let Some(f) = parse_wal_file_name(name, seg_size) {
                prop_assert_eq!(f.file_name(seg_size), name);
                if let WalFileName::Segment { .. } | WalFileName::Partial { .. } = f {
                    prop_assert!(SegmentExpectations::from_file_name(name, seg_size).is_some());
                }
            }
            let _ = name.parse::<Lsn>();
        }
    }
}

proptest! {
    #![proptest_config(config(5000))]

    /// Segment arithmetic on sizes and positions read from files (a manifest or
    /// `pgkeep.info` may say 0): wrong numbers at worst, never a division by zero or an
    /// overflow; unchanged for valid sizes.
    #[test]
    fn segment_arithmetic(lsn in any::<u64>(), segno in any::<u64>(), seg_size in prop_oneof![Just(0u32), Just(SEG), any::<u32>()], tli in any::<u32>(), off in any::<u32>()) {
        let l = Lsn(lsn);
        let n = l.segment_number(seg_size);
        let _ = (l.prev_segment_number(seg_size), l.segment_offset(seg_size), l.page_start(), l.page_offset());
        let _ = (Lsn::segment_start(segno, seg_size), Lsn::from_segment_offset(segno, off, seg_size));
        let _ = (pgkeep_wal::xlog_file_name(tli, segno, seg_size), pgkeep_wal::backup_history_file_name(tli, l, seg_size));
        // Times come from commit records and pg_control: any value must print.
        let _ = (pgkeep_wal::TimestampTz(lsn as i64).to_string(), pgkeep_wal::lsn::civil_from_unix(lsn as i64), l.to_string());
        if pgkeep_wal::is_valid_wal_seg_size(seg_size) {
            prop_assert_eq!(n, lsn / seg_size as u64);
            prop_assert_eq!(Lsn::from_segment_offset(n, l.segment_offset(seg_size), seg_size), l);
        }
    }
}

/// The fixture's pg_wal (timeline 1 from segment 09 on, and timeline 2) by name.
fn pg_wal() -> &'static std::collections::BTreeMap<String, Vec<u8>> {
    static W: OnceLock<std::collections::BTreeMap<String, Vec<u8>>> = OnceLock::new();
    W.get_or_init(|| {
        segment_fixtures().iter().filter(|s| s.expect.segno >= 9).map(|s| (s.name.clone(), s.data.clone())).collect()
    })
}

fn inspect(start: &ReplayStart, names: &[String], damaged: Option<(&str, &[u8])>) {
    let files = pg_wal();
    let _ = inspect_wal(start, names, &mut |n| match (damaged, files.get(n)) {
        (Some((d, bytes)), _) if d == n => SegmentFile::Data(bytes.to_vec()),
        (_, Some(b)) => SegmentFile::Data(b.clone()),
        (_, None) if n.ends_with('F') => SegmentFile::Unreadable("EIO".into()),
        _ => SegmentFile::Missing,
    });
}

/// The whole fixture pg_wal with one file replaced by `bytes`.
fn inspect_damaged(start: &ReplayStart, name: &str, bytes: &[u8]) {
    let names: Vec<String> = pg_wal().keys().cloned().collect();
    inspect(start, &names, Some((name, bytes)));
}

/// Crash recovery from a checkpoint whose redo is at `redo` on timeline 1.
fn start_at(redo: Lsn) -> ReplayStart {
    ReplayStart { redo, checkpoint: redo, timeline: 1, ..fixture_start() }
}

/// pg_control of the fixture cluster, as crash recovery would start from it.
fn fixture_start() -> ReplayStart {
    ReplayStart::from_control(&parse_pg_control(&read("pg_control")).expect("fixture pg_control"))
}

proptest! {
    #![proptest_config(config(200))]

    /// `wal inspect` on a damaged data directory: pg_control fields anything at all (they
    /// come from the same damaged disk), the files real, missing or unreadable.
    #[test]
    fn inspect_any_start(
        redo in prop_oneof![any::<u64>(), 0x900000..0x1200000u64, Just(u64::MAX)],
        checkpoint in prop_oneof![any::<u64>(), 0x900000..0x1200000u64],
        seg_size in prop_oneof![Just(SEG), Just(0u32), any::<u32>()],
        timeline in prop_oneof![1..4u32, any::<u32>()],
        pg_major in proptest::option::of(10..20u32),
        extra in proptest::collection::vec("[0-9A-F]{24}(\\.partial)?", 0..3),
    ) {
        let mut start = fixture_start();
        start.redo = Lsn(redo);
        start.checkpoint = Lsn(checkpoint);
        start.seg_size = seg_size;
        start.timeline = timeline;
        start.pg_major = pg_major;
        let mut names: Vec<String> = pg_wal().keys().cloned().collect();
        names.extend(extra);
        inspect(&start, &names, None);
    }

    /// The fixture's own start with one segment mutated (half the time resealed).
    #[test]
    fn inspect_mutated_segment(which in any::<Index>(), muts in mutations(), reseal in any::<bool>(), redo_at_record in proptest::option::of(any::<Index>())) {
        let segs: Vec<&Segment> = segment_fixtures().iter().filter(|s| s.expect.segno >= 9).collect();
        let s = segs[which.index(segs.len())];
        let mut d = mutated(&s.data, &muts);
        if reseal && muts.iter().all(in_place) {
            reseal_records(&mut d, &s.one_page_records);
        }
        let t1 = &segs[0].record_starts;
        let start = match redo_at_record {
            Some(i) => start_at(t1[i.index(t1.len())]),
            None => fixture_start(),
        };
        inspect_damaged(&start, &s.name, &d);
    }
}

/// The decoder's read limit: a start in the last 4 GiB is refused, and WAL fed up to the
/// limit is kept, nothing after it.
#[test]
fn decoder_stops_at_the_read_limit() {
    use pgkeep_wal::decoder::READ_LIMIT;
    assert!(WalDecoder::new(READ_LIMIT, SEG).is_err());
    assert!(WalDecoder::new(Lsn(!7), SEG).is_err());
    let mut dec = WalDecoder::new(Lsn(READ_LIMIT.0 - SEG as u64), SEG).expect("start below the limit");
    dec.feed(&vec![0u8; 2 * SEG as usize]);
    assert_eq!(dec.fed_until(), READ_LIMIT);
    assert!(dec.next_record().is_err());
}

/// Found by `inspect_mutated_segment`: a segment cut short mid-page (a torn copy in pg_wal),
/// its bytes shifted, made the salvage scan slice past the end of the file.
#[test]
fn inspect_a_shifted_segment_cut_mid_page() {
    let segs: Vec<&Segment> = segment_fixtures().iter().filter(|s| s.expect.segno >= 9).collect();
    let b = segs.iter().find(|s| s.name == "00000001000000000000000B").expect("segment 0B");
    let mut d = vec![0u8; 8];
    d.extend_from_slice(&b.data[..323_788]);
    inspect_damaged(&start_at(segs[0].record_starts[0]), &b.name, &d);
}

/// Re-sealing does what the mutated cases rely on: damage behind a recomputed CRC is
/// reported by the record decoder, not by the CRC check.
#[test]
fn resealed_damage_reaches_the_record_decoder() {
    let s = segment_fixtures().iter().find(|s| s.name == "000000010000000000000009").expect("segment 09");
    let &(start, _) = s.one_page_records.iter().find(|(a, b)| b - a > 24 && s.data[a + 24] <= 32).expect("a block ref");
    let mut d = s.data.clone();
    d[start + 24] = 200;
    let e = validate_segment(&d, &strict(&s.expect), None).unwrap_err();
    assert!(matches!(e, SegmentError::RecordCrc { .. }), "{e}");
    reseal_records(&mut d, &s.one_page_records);
    let e = validate_segment(&d, &strict(&s.expect), None).unwrap_err();
    assert!(e.to_string().contains("invalid block_id 200"), "{e}");
}

/// A `backup_label` as `pg_backup_stop` returns it (no STOP lines).
const BACKUP_LABEL: &str = "START WAL LOCATION: 0/D00028 (file 00000001000000000000000D)\nCHECKPOINT LOCATION: 0/D00060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-21 06:48:41 UTC\nLABEL: pgkeep 20261121-064841F\nSTART TIMELINE: 1\n";

fn reseal_control(d: &mut [u8]) {
    if d.len() >= 292 {
        let crc = crc32c::crc32c(&d[..288]);
        d[288..292].copy_from_slice(&crc.to_le_bytes());
    }
}
