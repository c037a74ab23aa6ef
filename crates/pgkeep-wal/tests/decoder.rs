//! WalDecoder behaviour: chunked input, arbitrary start positions, and edge cases built
//! with synthetic segments (split record headers, overwritten continuation records).

mod common;

use common::*;
use pgkeep_wal::{DecodeError, DecoderOptions, Lsn, RecordKind, SegmentError, SegmentExpectations, WalDecoder};

fn all_timeline1() -> (Vec<u8>, Lsn) {
    let names = timeline_segments(1);
    let mut all = Vec::new();
    for n in &names {
        all.extend_from_slice(&read(n));
    }
    (all, Lsn::segment_start(expect(&names[0]).segno, SEG))
}

fn decode_chunked(data: &[u8], start: Lsn, mut chunk: impl FnMut(usize) -> usize) -> Vec<(Lsn, Vec<u8>)> {
    let mut dec = WalDecoder::new(start, SEG).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = chunk(i).min(data.len() - pos);
        i += 1;
        dec.feed(&data[pos..pos + n]);
        pos += n;
        while let Some(r) = dec.next_record().unwrap() {
            out.push((r.lsn, r.raw().to_vec()));
        }
    }
    out
}

#[test]
fn chunk_size_does_not_matter() {
    let (all, start) = all_timeline1();
    let whole = decode_chunked(&all, start, |_| usize::MAX);
    assert!(whole.len() > 2000);
    let first_two = 2 * SEG as usize;
    let tiny = decode_chunked(&all[..first_two], start, |i| 1 + i % 13);
    assert_eq!(&whole[..tiny.len()], &tiny[..]);
    for size in [100, 8191, 8192, 65_537] {
        assert_eq!(decode_chunked(&all, start, |_| size), whole, "chunks of {size}");
    }
}

#[test]
fn starts_at_a_record_or_at_a_page_inside_a_record() {
    let (all, start) = all_timeline1();
    let whole = decode_chunked(&all, start, |_| usize::MAX);
    // At a record in the middle of segment 9.
    let k = whole.iter().position(|(l, _)| l.segment_number(SEG) == 9).unwrap() + 100;
    let at = whole[k].0;
    let from = decode_chunked(&all[(at.0 - start.0) as usize..], at, |_| 5000);
    assert_eq!(&from[..], &whole[k..]);
    // At a page boundary inside the 2.2 MB record: its tail is skipped.
    let big = whole.iter().find(|(_, r)| r.len() > 2_000_000).unwrap();
    let page = Lsn(big.0 .0 + 1_000_000).page_start();
    let from = decode_chunked(&all[(page.0 - start.0) as usize..], page, |_| 70_000);
    let next = whole.iter().position(|(l, _)| *l > big.0).unwrap();
    assert_eq!(&from[..], &whole[next..]);
    // Not a possible record start.
    assert!(matches!(WalDecoder::new(Lsn(at.0 + 4), SEG), Err(DecodeError::InvalidStart { .. })));
    assert!(matches!(WalDecoder::new(Lsn(0x900010), SEG), Err(DecodeError::InvalidStart { .. })));
}

#[test]
fn decoder_enforces_the_expected_system_and_major() {
    let d = read("000000010000000000000009");
    let mut dec = WalDecoder::with_options(
        Lsn(0x900000),
        SEG,
        DecoderOptions { system_identifier: Some(1), ..Default::default() },
    )
    .unwrap();
    dec.feed(&d);
    assert!(matches!(dec.next_record(), Err(DecodeError::Page(pgkeep_wal::PageError::SystemIdentifier { .. }))));
    // The error sticks.
    assert!(dec.next_record().is_err());
    let mut dec =
        WalDecoder::with_options(Lsn(0x900000), SEG, DecoderOptions { pg_major: Some(16), ..Default::default() })
            .unwrap();
    dec.feed(&d);
    assert!(dec
        .next_record()
        .unwrap_err()
        .to_string()
        .starts_with("invalid page magic D110 at 0/900000 (expected D113)"));
    let mut dec = WalDecoder::new(Lsn(0x900000), SEG).unwrap();
    dec.feed(&d);
    dec.next_record().unwrap();
    assert_eq!((dec.pg_major(), dec.system_identifier()), (Some(15), Some(sysid())));
}

fn strict_synth(segno: u64) -> SegmentExpectations {
    SegmentExpectations { tli: 1, segno, seg_size: SEG, system_identifier: Some(77), pg_major: Some(15) }
}

fn synth_records(b: &SegBuilder) -> Result<Vec<pgkeep_wal::DecodedRecord>, DecodeError> {
    let mut dec = WalDecoder::new(Lsn(b.start), SEG)?;
    dec.feed(&b.data);
    let mut v = Vec::new();
    while let Some(r) = dec.next_record()? {
        v.push(r);
    }
    Ok(v)
}

#[test]
fn record_header_split_across_pages() {
    let mut b = SegBuilder::new(5, 77, 1);
    b.data_record(100);
    b.seek(b.start + BLCKSZ - 16);
    let split = b.data_record(300);
    b.switch();
    let recs = synth_records(&b).unwrap();
    let r = recs.iter().find(|r| r.lsn == Lsn(split)).expect("the split record");
    assert_eq!(r.main_data().len(), 300);
    assert_eq!(r.lsn.page_offset(), 8192 - 16);
    let s = validate_segment(&b.data, &strict_synth(5), None).unwrap();
    assert_eq!((s.records as usize, s.ends_with_switch), (recs.len(), true));
    // Damage in the part of the header on the second page.
    let mut bad = b.data.clone();
    bad[BLCKSZ as usize + 24 + 2] ^= 0x01;
    assert!(validate_segment(&bad, &strict_synth(5), None).is_err());
}

#[test]
fn overwritten_continuation_record_is_dropped() {
    let mut b = SegBuilder::new(6, 77, 1);
    let r1 = b.data_record(50);
    b.seek(b.start + BLCKSZ - 200);
    let last_good = b.prev;
    let aborted = b.data_record(1000); // crosses into page 1 ...
                                       // ... but page 1 was rewritten after a crash: the continuation never made it.
    let page1 = b.start + BLCKSZ;
    b.data[BLCKSZ as usize..2 * BLCKSZ as usize].fill(0);
    b.page_header(page1, 0x0008, 0);
    b.pos = page1 + 24;
    b.prev = last_good;
    let mut body = vec![255, 16];
    body.extend_from_slice(&aborted.to_le_bytes());
    body.extend_from_slice(&123456i64.to_le_bytes());
    let ow = b.record(0, 0xD0, 0, &body);
    b.switch();
    let recs = synth_records(&b).unwrap();
    assert_eq!(recs.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), vec![r1, last_good, ow, b.prev]);
    assert_eq!(recs[2].after_overwritten, Some(Lsn(aborted)));
    assert!(recs.iter().all(|r| r.lsn.0 != aborted));
    assert_eq!(
        recs[2].kind().unwrap(),
        RecordKind::OverwriteContrecord { overwritten_lsn: Lsn(aborted), time: pgkeep_wal::TimestampTz(123456) }
    );
    let s = validate_segment(&b.data, &strict_synth(6), None).unwrap();
    assert_eq!(s.records, 4);
}

#[test]
fn old_style_empty_pages_after_a_switch_are_accepted() {
    let mut b = SegBuilder::new(7, 77, 1);
    b.data_record(10);
    b.switch();
    let mut page = b.pos.div_ceil(BLCKSZ) * BLCKSZ;
    while page < b.start + SEG as u64 {
        b.page_header(page, 0, 0);
        page += BLCKSZ;
    }
    validate_segment(&b.data, &strict_synth(7), None).unwrap();
    // ...but not one that claims to continue a record.
    b.page_header(b.start + 9 * BLCKSZ, 0x0001, 10);
    assert!(matches!(validate_segment(&b.data, &strict_synth(7), None), Err(SegmentError::AfterSwitch { .. })));
}

#[test]
fn timelines_inside_a_segment() {
    // A segment that starts a timeline: parent pages first, then the new timeline.
    let mut b = SegBuilder::new(8, 77, 1);
    b.data_record(5000);
    b.tli = 2;
    b.data_record(9000);
    b.switch();
    let mut e = strict_synth(8);
    e.tli = 2;
    let s = validate_segment(&b.data, &e, None).unwrap();
    assert_eq!(s.page_timelines, (1, 2));
    // Going back to an older timeline is not possible.
    let mut bad = b.data.clone();
    bad[4] = 2;
    bad[BLCKSZ as usize + 4] = 1;
    assert!(matches!(validate_segment(&bad, &e, None), Err(SegmentError::Timeline { found: 1, offset: 8192, .. })));
}

#[test]
fn block_headers_that_do_not_add_up() {
    // A record whose CRC is right but whose main data header claims more than is there.
    let mut b = SegBuilder::new(9, 77, 1);
    b.record(21, 0, 0, &[255, 200, 1, 2, 3]);
    b.switch();
    let e = validate_segment(&b.data, &strict_synth(9), None).unwrap_err();
    assert!(matches!(e, SegmentError::InvalidRecord { .. }), "{e}");
    assert!(e.to_string().contains("add up"), "{e}");
    // The same in a record that continues into the next segment (no CRC possible there).
    let mut b = SegBuilder::new(10, 77, 1);
    b.seek(b.start + SEG as u64 - 3 * BLCKSZ);
    let mut body = vec![254];
    body.extend_from_slice(&100_000u32.to_le_bytes());
    body.extend(std::iter::repeat_n(9, 50_000 - 5));
    b.record(21, 0, 0, &body);
    let e = validate_segment(&b.data, &strict_synth(10), None).unwrap_err();
    assert!(matches!(e, SegmentError::InvalidRecord { .. }), "{e}");
}

#[test]
fn partial_synthetic_segment_with_cut_record() {
    let mut b = SegBuilder::new(11, 77, 1);
    b.data_record(100);
    let cut = b.data_record(20_000);
    // The stream stopped in the middle of the second record: its last page never arrived.
    let last_page = (cut + 20_000) / BLCKSZ * BLCKSZ;
    b.data[(last_page - b.start) as usize..].fill(0);
    let s = validate_partial_segment(&b.data, &strict_synth(11), None).unwrap();
    let end = s.partial_end.unwrap();
    assert_eq!(end.stopped_at, Lsn(cut));
    assert!(end.zero_filled);
    assert_eq!(s.records, 1);
}

#[test]
fn feed_at_skips_the_rest_of_a_switched_segment_and_refuses_a_needed_gap() {
    let (all, start) = all_timeline1();
    let whole = decode_chunked(&all, start, |_| 1 << 16);
    let mut dec = WalDecoder::new(start, SEG).unwrap();
    let mut got = Vec::new();
    let (mut pos, mut skipped) = (0usize, 0usize);
    while pos < all.len() {
        let at = start.0 + pos as u64;
        // After a switch the decoder needs nothing more of this segment: go to the next one.
        let seg_end = (at / u64::from(SEG) + 1) * u64::from(SEG);
        if dec.next_lsn().0 >= seg_end && at < seg_end {
            skipped += (seg_end - at) as usize;
            pos = (seg_end - start.0) as usize;
            continue;
        }
        let n = (1usize << 16).min(all.len() - pos);
        assert!(dec.feed_at(Lsn(at), &all[pos..pos + n]));
        pos += n;
        while let Some(r) = dec.next_record().unwrap() {
            got.push((r.lsn, r.raw().to_vec()));
        }
    }
    assert!(skipped > 0, "the fixtures hold a segment that ends in a switch");
    assert_eq!(got, whole, "skipping what follows a switch loses no record");

    // Bytes fed twice are taken once; a gap the decoder still needs is refused.
    let mut dec = WalDecoder::new(start, SEG).unwrap();
    assert!(dec.feed_at(start, &all[..1 << 16]));
    assert!(dec.feed_at(start, &all[..1 << 17]));
    assert_eq!(dec.fed_until(), Lsn(start.0 + (1 << 17)));
    assert!(!dec.feed_at(Lsn(start.0 + (1 << 20)), &all[1 << 20..(1 << 20) + 8192]));
    assert_eq!(dec.fed_until(), Lsn(start.0 + (1 << 17)), "a refused feed feeds nothing");
}
