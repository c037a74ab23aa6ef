//! Shared helpers for the fixture tests.
#![allow(dead_code)]

use std::path::PathBuf;

use pgkeep_wal::{parse_wal_file_name, SegmentExpectations, WalFileName};

/// Segment size of the fixture cluster (`initdb --wal-segsize=1`).
pub const SEG: u32 = 1024 * 1024;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/wal")
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

/// Every WAL file in the fixture directory with its parsed name, sorted.
pub fn files() -> Vec<(String, WalFileName)> {
    let mut v: Vec<(String, WalFileName)> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let parsed = parse_wal_file_name(&name, SEG)?;
            Some((name, parsed))
        })
        .collect();
    v.sort();
    v
}

/// Full segments (not .partial), sorted by timeline then segment.
pub fn segments() -> Vec<(String, u32, u64)> {
    files()
        .into_iter()
        .filter_map(|(n, f)| match f {
            WalFileName::Segment { tli, segno } => Some((n, tli, segno)),
            _ => None,
        })
        .collect()
}

pub fn expect(name: &str) -> SegmentExpectations {
    SegmentExpectations::from_file_name(name, SEG).expect("segment name")
}

/// The system identifier of the fixture cluster, from pg_control.
pub fn sysid() -> u64 {
    pgkeep_wal::parse_pg_control(&read("pg_control")).expect("fixture pg_control").system_identifier
}

/// Decodes the given files (consecutive segments of one timeline) with one decoder started
/// at the first one's start, and returns every record.
pub fn decode_files(names: &[&str]) -> Vec<pgkeep_wal::DecodedRecord> {
    let first = names.first().expect("at least one file");
    let e = expect(first);
    let mut dec = pgkeep_wal::WalDecoder::new(pgkeep_wal::Lsn::segment_start(e.segno, SEG), SEG).expect("decoder");
    let mut out = Vec::new();
    for n in names {
        dec.feed(&read(n));
        while let Some(r) = dec.next_record().unwrap_or_else(|e| panic!("decoding {names:?}: {e}")) {
            out.push(r);
        }
    }
    out
}

/// Names of the full segments of timeline `tli`, in order.
pub fn timeline_segments(tli: u32) -> Vec<String> {
    segments().into_iter().filter(|(_, t, _)| *t == tli).map(|(n, _, _)| n).collect()
}

/// Writes a synthetic segment the way PostgreSQL lays records out: MAXALIGNed starts,
/// page headers at every page, continuation pages flagged with `xlp_rem_len`.
pub struct SegBuilder {
    pub start: u64,
    pub data: Vec<u8>,
    /// Next write position (LSN).
    pub pos: u64,
    pub prev: u64,
    pub tli: u32,
    pub sysid: u64,
}

pub const BLCKSZ: u64 = 8192;

impl SegBuilder {
    pub fn new(segno: u64, sysid: u64, tli: u32) -> SegBuilder {
        let start = segno * SEG as u64;
        let mut b = SegBuilder { start, data: vec![0; SEG as usize], pos: start, prev: 0, tli, sysid };
        b.page_header(start, 0, 0);
        b.pos = start + 40;
        b
    }

    pub fn page_header(&mut self, page: u64, info: u16, rem_len: u32) {
        let off = (page - self.start) as usize;
        let long = off == 0;
        let info = info | if long { 0x0002 } else { 0 };
        let d = &mut self.data[off..];
        d[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        d[2..4].copy_from_slice(&info.to_le_bytes());
        d[4..8].copy_from_slice(&self.tli.to_le_bytes());
        d[8..16].copy_from_slice(&page.to_le_bytes());
        d[16..20].copy_from_slice(&rem_len.to_le_bytes());
        if long {
            d[24..32].copy_from_slice(&self.sysid.to_le_bytes());
            d[32..36].copy_from_slice(&SEG.to_le_bytes());
            d[36..40].copy_from_slice(&(BLCKSZ as u32).to_le_bytes());
        }
    }

    /// Writes filler records until the next record starts at `lsn` (WAL has no gaps).
    pub fn seek(&mut self, lsn: u64) {
        assert!(lsn >= self.pos && lsn % 8 == 0);
        while self.pos < lsn {
            let mut at = self.pos;
            if at % BLCKSZ == 0 {
                at += 24;
            }
            let page_end = (at / BLCKSZ + 1) * BLCKSZ;
            let gap = if lsn < page_end { lsn - at } else { page_end - at };
            assert!(gap >= 32, "cannot place a filler of {gap} bytes at {at:X}");
            let n = if gap - 26 < 256 { gap - 26 } else { gap - 29 } as usize;
            self.data_record(n);
        }
        assert_eq!(self.pos, lsn);
    }

    /// Appends a record with the given body; returns its LSN.
    pub fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> u64 {
        let mut r = Vec::new();
        r.extend_from_slice(&((24 + body.len()) as u32).to_le_bytes());
        r.extend_from_slice(&xid.to_le_bytes());
        r.extend_from_slice(&self.prev.to_le_bytes());
        r.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(body);
        let crc = pgkeep_wal::record::record_crc(&r).unwrap();
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        self.raw(&r)
    }

    /// Appends bytes as one record, crossing pages as needed; returns where it starts.
    pub fn raw(&mut self, r: &[u8]) -> u64 {
        if self.pos % BLCKSZ == 0 {
            self.page_header(self.pos, 0, 0);
            self.pos += if self.pos == self.start { 40 } else { 24 };
        }
        let lsn = self.pos;
        let mut written = 0;
        while written < r.len() && self.pos < self.start + SEG as u64 {
            if self.pos % BLCKSZ == 0 {
                let rem = (r.len() - written) as u32;
                self.page_header(self.pos, 0x0001, rem);
                self.pos += 24;
            }
            let room = (BLCKSZ - self.pos % BLCKSZ) as usize;
            let n = room.min(r.len() - written);
            let off = (self.pos - self.start) as usize;
            self.data[off..off + n].copy_from_slice(&r[written..written + n]);
            written += n;
            self.pos += n as u64;
        }
        self.pos = self.pos.div_ceil(8) * 8;
        self.prev = lsn;
        lsn
    }

    /// A record with `n` bytes of main data (rmid 21, LogicalMessage: no rmgr checks).
    pub fn data_record(&mut self, n: usize) -> u64 {
        let mut body = Vec::new();
        if n < 256 {
            body.extend_from_slice(&[255, n as u8]);
        } else {
            body.push(254);
            body.extend_from_slice(&(n as u32).to_le_bytes());
        }
        body.extend((0..n).map(|i| (i * 7 + 3) as u8));
        self.record(21, 0x00, 0, &body)
    }

    pub fn switch(&mut self) -> u64 {
        self.record(0, 0x40, 0, &[])
    }
}

/// Chunk sizes the streaming validator is fed in: single bytes, odd sizes, a page less one,
/// a page, and more than a chunk of archive-get's pipeline.
pub const CHUNK_SIZES: [usize; 5] = [1, 7, 8191, 8192, 65537];

/// Feeds `data` to a [`pgkeep_wal::SegmentValidator`] in chunks of every size of
/// [`CHUNK_SIZES`] and asserts each verdict equals `whole` (same summary, same error).
pub fn assert_streamed_same(
    data: &[u8],
    expect: &SegmentExpectations,
    previous: Option<&[u8]>,
    partial: bool,
    whole: &Result<pgkeep_wal::SegmentSummary, pgkeep_wal::SegmentError>,
) {
    assert_streamed_same_in(&CHUNK_SIZES, data, expect, previous, partial, whole);
}

/// [`assert_streamed_same`] with the given chunk sizes (loops over many damaged copies take
/// one size per copy, in turn, to stay fast).
pub fn assert_streamed_same_in(
    sizes: &[usize],
    data: &[u8],
    expect: &SegmentExpectations,
    previous: Option<&[u8]>,
    partial: bool,
    whole: &Result<pgkeep_wal::SegmentSummary, pgkeep_wal::SegmentError>,
) {
    for &size in sizes {
        let mut v = if partial {
            pgkeep_wal::SegmentValidator::partial(expect, previous)
        } else {
            pgkeep_wal::SegmentValidator::new(expect, previous)
        };
        for chunk in data.chunks(size) {
            v.feed(chunk);
        }
        let streamed = v.finish();
        assert_eq!(&streamed, whole, "fed in chunks of {size} bytes (partial: {partial})");
    }
}

/// `pgkeep_wal::validate_segment`, checked against the streaming validator on the way: every
/// test that validates a fixture or a damaged copy also proves the two agree.
pub fn validate_segment(
    data: &[u8],
    expect: &SegmentExpectations,
    previous: Option<&[u8]>,
) -> Result<pgkeep_wal::SegmentSummary, pgkeep_wal::SegmentError> {
    let whole = pgkeep_wal::validate_segment(data, expect, previous);
    assert_streamed_same(data, expect, previous, false, &whole);
    whole
}

/// `pgkeep_wal::validate_partial_segment`, checked against the streaming validator likewise.
pub fn validate_partial_segment(
    data: &[u8],
    expect: &SegmentExpectations,
    previous: Option<&[u8]>,
) -> Result<pgkeep_wal::SegmentSummary, pgkeep_wal::SegmentError> {
    let whole = pgkeep_wal::validate_partial_segment(data, expect, previous);
    assert_streamed_same(data, expect, previous, true, &whole);
    whole
}
