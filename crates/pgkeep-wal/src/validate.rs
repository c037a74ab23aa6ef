//! Whole-segment validation: what `archive-push` runs before it acknowledges a segment.
//!
//! Every page header is checked (magic, address, timeline, the long header's system
//! identifier and sizes, flag bits, continuation lengths); every record that starts and
//! ends in the segment has its header, prev-link, CRC and block headers checked; after a
//! switch record the rest must be empty. A complete segment whose records stop early
//! without a switch is refused: that is what a truncated or zeroed copy looks like.

use crate::bytes::{i64_at, u32_at};
use crate::decoder::DecodeError;
use crate::file_name::{parse_wal_file_name, WalFileName};
use crate::lsn::{maxalign, Lsn, TimeLineID, TimestampTz, XLogSegNo};
use crate::page::{PageError, PageRules, XLogPageHeaderData, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ};
use crate::reader::{Pending, Reader, Source, Step};
use crate::record::XLogRecord;
use crate::rmgr::{xact, xlog, RM_XACT_ID, RM_XLOG_ID};
use crate::version::{self, PgVersion};

mod stream;
pub use stream::SegmentValidator;

/// What the segment must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentExpectations {
    /// Timeline from the file name: no page may carry a later one.
    pub tli: TimeLineID,
    pub segno: XLogSegNo,
    pub seg_size: u32,
    /// The repository's cluster; `None` accepts any (and reports what was found).
    pub system_identifier: Option<u64>,
    /// Required major; `None` accepts any known page magic.
    pub pg_major: Option<u32>,
}

impl SegmentExpectations {
    /// Expectations from a segment or `.partial` file name.
    pub fn from_file_name(name: &str, seg_size: u32) -> Option<SegmentExpectations> {
        match parse_wal_file_name(name, seg_size)? {
            WalFileName::Segment { tli, segno } | WalFileName::Partial { tli, segno } => {
                Some(SegmentExpectations { tli, segno, seg_size, system_identifier: None, pg_major: None })
            }
            _ => None,
        }
    }
}

/// The record that runs into the segment from the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "kind", rename_all = "snake_case"))]
pub enum LeadingContinuation {
    /// The segment starts with a new record.
    None,
    /// Reassembled with the previous segment and CRC-checked.
    Verified { record: Lsn },
    /// Its bytes here were passed over without a CRC check (no previous segment given, or
    /// the record began even earlier, or it continues past this segment).
    Unverified { bytes: u64 },
}

/// A named restore point found in the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RestorePointInfo {
    pub lsn: Lsn,
    pub name: String,
    pub time: TimestampTz,
}

/// What a validated segment contains.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SegmentSummary {
    pub tli: TimeLineID,
    pub segno: XLogSegNo,
    /// First byte of the segment.
    pub start: Lsn,
    pub pg_major: u32,
    pub system_identifier: u64,
    /// Lowest and highest `xlp_tli` of the pages read (a segment that starts a timeline
    /// has pages of the parent timeline before the switch point).
    pub page_timelines: (TimeLineID, TimeLineID),
    /// First and last record that start in this segment.
    pub first_record: Option<Lsn>,
    pub last_record: Option<Lsn>,
    /// End of the last complete record, or the segment end when a record continues into the
    /// next segment. For a `.partial`, where the written WAL stops.
    pub end_of_valid_wal: Lsn,
    /// Records that start in this segment and were completely checked.
    pub records: u64,
    pub ends_with_switch: bool,
    /// The last record continues into the next segment (its bytes here are not CRC-checked).
    pub continues_into_next: bool,
    pub leading: LeadingContinuation,
    /// Bytes of record data that could not be CRC-checked (continuations in or out).
    pub unverified_bytes: u64,
    /// Commits and aborts (prepared ones included).
    pub commits: u64,
    pub aborts: u64,
    pub first_commit_time: Option<TimestampTz>,
    pub last_commit_time: Option<TimestampTz>,
    pub checkpoints: u64,
    pub last_checkpoint: Option<Lsn>,
    pub restore_points: Vec<RestorePointInfo>,
    pub full_page_images: u64,
    /// Validated as a `.partial` (early end allowed).
    pub partial: bool,
    /// For a `.partial`: where and why its WAL stops (`None` when it runs to the end).
    pub partial_end: Option<PartialEnd>,
    /// Why the previous segment could not be used to verify the leading record.
    pub note: Option<String>,
}

/// Where the WAL of a `.partial` segment stops.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PartialEnd {
    /// End of the last complete record.
    pub end_of_wal: Lsn,
    /// Where reading stopped (the start of the first record that is not there).
    pub stopped_at: Lsn,
    /// True when it stops at zero-filled space, the normal end of a `.partial`. False when
    /// it stops at data that is not valid WAL (a torn last write, stale bytes of a recycled
    /// file, or damage to the last record, which cannot be told apart).
    pub zero_filled: bool,
    pub reason: String,
}

fn expected_magic(e: &Option<u16>) -> String {
    match e {
        Some(m) => format!("expected {m:04X}"),
        None => format!("not a known WAL magic; known majors: {}", version::known_majors()),
    }
}

/// Why a segment is refused. Page problems name the offset in the file, record problems
/// the record's LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("segment is {len} bytes long (expected {expected})")]
    WrongLength { len: usize, expected: u32 },
    #[error("invalid wal segment size {0} (a power of two from 1 MiB to 1 GiB)")]
    InvalidSegmentSize(u32),
    #[error("segment number {0:X} is out of range")]
    InvalidSegmentNumber(XLogSegNo),
    #[error("PostgreSQL {major} is not a known major (known: {})", version::known_majors())]
    UnknownMajor { major: u32 },
    #[error("invalid page magic {found:04X} at offset {offset} ({})", expected_magic(.expected))]
    BadMagic { offset: u32, found: u16, expected: Option<u16> },
    #[error("invalid page info bits {info:04X} at offset {offset}")]
    PageInfo { offset: u32, info: u16 },
    #[error("page at offset {offset} has address {found} (expected {expected})")]
    PageAddress { offset: u32, expected: Lsn, found: Lsn },
    #[error("page at offset {offset} has timeline {found}: {detail}")]
    Timeline { offset: u32, found: TimeLineID, detail: String },
    #[error("segment belongs to database system {found}, not {expected}")]
    SystemIdentifier { found: u64, expected: u64 },
    #[error("segment header says the segment size is {found} (expected {expected})")]
    SegmentSize { found: u32, expected: u32 },
    #[error("segment header says the wal page size is {found} (expected 8192)")]
    BlockSize { found: u32 },
    #[error("page at offset {offset}: {detail}")]
    PageHeader { offset: u32, detail: String },
    #[error("record at {lsn} fails its CRC check")]
    RecordCrc { lsn: Lsn },
    #[error("invalid record at {lsn}: {reason}")]
    InvalidRecord { lsn: Lsn, reason: String },
    #[error("wal ends at {lsn}, before the end of the segment and without a switch record (zero-filled after it: truncated or zeroed)")]
    UnexpectedEnd { lsn: Lsn },
    #[error("unexpected data at offset {offset} after the switch record at {switch}")]
    AfterSwitch { offset: u32, switch: Lsn },
    #[error("{detail}")]
    ContinuationMismatch { detail: String },
    #[error("valid wal resumes at offset {offset} after the wal stopped at {end}: the segment is damaged")]
    DataAfterEnd { offset: u32, end: Lsn },
}

/// Validates a complete segment (see the module docs). `previous_segment`, when given, is
/// the segment before it on the same WAL history; it lets the record that runs into this
/// segment be reassembled and CRC-checked.
pub fn validate_segment(
    data: &[u8],
    expect: &SegmentExpectations,
    previous_segment: Option<&[u8]>,
) -> Result<SegmentSummary, SegmentError> {
    validate(data, expect, previous_segment, false)
}

/// Validates a `.partial` segment: the same checks, but the WAL may stop anywhere (the rest
/// zero-filled, stale, or missing). Valid-looking pages after the point where the WAL stops
/// are reported as damage.
pub fn validate_partial_segment(
    data: &[u8],
    expect: &SegmentExpectations,
    previous_segment: Option<&[u8]>,
) -> Result<SegmentSummary, SegmentError> {
    validate(data, expect, previous_segment, true)
}

fn offset_of(lsn: Lsn, seg_start: u64) -> u32 {
    lsn.0.saturating_sub(seg_start) as u32
}

fn page_error(e: PageError, seg_start: u64) -> SegmentError {
    let offset = offset_of(e.lsn(), seg_start);
    match e {
        PageError::BadMagic { found, expected, .. } => SegmentError::BadMagic { offset, found, expected },
        PageError::InfoBits { info, .. } => SegmentError::PageInfo { offset, info },
        PageError::PageAddress { lsn, found } => SegmentError::PageAddress { offset, expected: lsn, found },
        PageError::SystemIdentifier { found, expected, .. } => SegmentError::SystemIdentifier { found, expected },
        PageError::SegmentSize { found, expected, .. } => SegmentError::SegmentSize { found, expected },
        PageError::BlockSize { found, .. } => SegmentError::BlockSize { found },
        PageError::TimelineAhead { found, max, .. } => {
            SegmentError::Timeline { offset, found, detail: format!("newer than the file's timeline {max}") }
        }
        PageError::TimelineBackwards { found, previous, .. } => SegmentError::Timeline {
            offset,
            found,
            detail: format!("older than timeline {previous} of an earlier page"),
        },
        PageError::TimelineZero { .. } => {
            SegmentError::Timeline { offset, found: 0, detail: "not a valid timeline".into() }
        }
        PageError::MissingLongHeader { info, .. } => SegmentError::PageHeader {
            offset,
            detail: format!("first page lacks the long header (info bits {info:04X})"),
        },
        PageError::UnexpectedLongHeader { .. } => {
            SegmentError::PageHeader { offset, detail: "long header on a page that does not start the segment".into() }
        }
        PageError::RemainingLength { info, rem_len, .. } => SegmentError::PageHeader {
            offset,
            detail: format!("xlp_rem_len {rem_len} inconsistent with info bits {info:04X}"),
        },
        PageError::Truncated { len, need, .. } => {
            SegmentError::PageHeader { offset, detail: format!("cut short: {len} bytes where the header needs {need}") }
        }
    }
}

/// Fast all-zero test (the inner fold vectorises).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(256).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// The bytes of a segment from offset `base` to the end of what was read: all of it for a
/// segment validated whole, the part kept by a [`SegmentValidator`] fed in chunks (the checks
/// that look back never need bytes before it). Offsets are from the segment's start.
#[derive(Clone, Copy)]
struct Window<'a> {
    base: usize,
    bytes: &'a [u8],
}

impl<'a> Window<'a> {
    fn len(&self) -> usize {
        self.base + self.bytes.len()
    }

    /// `data.get(range)`; `None` also for a range that starts before `base`.
    fn get(&self, r: std::ops::Range<usize>) -> Option<&'a [u8]> {
        let start = r.start.checked_sub(self.base)?;
        let end = r.end.checked_sub(self.base)?;
        self.bytes.get(start..end)
    }

    /// `&data[from..]`, empty before `base` or past the end.
    fn from(&self, from: usize) -> &'a [u8] {
        from.checked_sub(self.base).and_then(|s| self.bytes.get(s..)).unwrap_or(&[])
    }
}

/// A decode failure in a complete segment, as the segment error to report.
fn full_segment_error(e: DecodeError, data: Window<'_>, seg_start: u64, pending_start: Option<u64>) -> SegmentError {
    let page_rest_zero = |lsn: Lsn| {
        let off = lsn.0.saturating_sub(seg_start) as usize;
        let end = (off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
        data.get(off..end.min(data.len())).is_some_and(is_zero)
    };
    match e {
        DecodeError::Page(pe) => {
            if pe.is_zero_page() && page_rest_zero(pe.lsn()) {
                SegmentError::UnexpectedEnd { lsn: Lsn(pending_start.unwrap_or(pe.lsn().0)) }
            } else {
                page_error(pe, seg_start)
            }
        }
        DecodeError::RecordLength { lsn, len: 0 } if page_rest_zero(lsn) => SegmentError::UnexpectedEnd { lsn },
        DecodeError::Crc { lsn } => SegmentError::RecordCrc { lsn },
        other => {
            let lsn = match &other {
                DecodeError::MissingContrecord { record: Some(r), .. }
                | DecodeError::ContrecordLength { record: Some(r), .. } => *r,
                o => o.lsn(),
            };
            SegmentError::InvalidRecord { lsn, reason: reason_text(&other) }
        }
    }
}

/// A decode error's message without the leading LSN (the segment error carries it).
fn reason_text(e: &DecodeError) -> String {
    match e {
        DecodeError::RecordLength { len, .. } => format!("invalid record length {len}"),
        DecodeError::ResourceManager { rmid, .. } => format!("invalid resource manager id {rmid}"),
        DecodeError::PrevLink { found, expected: Some(x), .. } => format!("prev-link {found} (expected {x})"),
        DecodeError::PrevLink { found, expected: None, .. } => format!("prev-link {found} does not point backwards"),
        DecodeError::UnexpectedContrecord { .. } => {
            "page begins with the rest of a record where a new record should start".into()
        }
        DecodeError::MissingContrecord { lsn, .. } => {
            format!("the page at {lsn} does not continue it")
        }
        DecodeError::ContrecordLength { lsn, found, expected, .. } => {
            format!("the page at {lsn} says {found} bytes remain (expected {expected})")
        }
        DecodeError::Record { reason, .. } => reason.to_string(),
        other => other.to_string(),
    }
}

enum PrevOutcome {
    /// The previous segment ends inside a record: the reader is assembling it.
    InRecord(Box<Reader>),
    /// Its WAL ends at a record boundary at this LSN.
    EndsCleanly(Lsn),
    Unusable(String),
}

fn scan_previous(prev: &[u8], prev_start: u64, rules: &PageRules) -> PrevOutcome {
    if prev.len() != rules.seg_size as usize {
        return PrevOutcome::Unusable(format!(
            "previous segment is {} bytes long (expected {})",
            prev.len(),
            rules.seg_size
        ));
    }
    let mut r = Reader::at_page(rules.clone(), prev_start);
    let src = Source { start: prev_start, data: prev };
    loop {
        match r.next(&src) {
            Ok(Step::Record(_)) => {}
            Ok(Step::NeedMore) => break,
            Err(e) => return PrevOutcome::Unusable(format!("previous segment is unreadable: {e}")),
        }
    }
    match r.pending() {
        Pending::Record { .. } => PrevOutcome::InRecord(Box::new(r)),
        Pending::Skipping => PrevOutcome::Unusable("previous segment holds no record start".into()),
        Pending::None => PrevOutcome::EndsCleanly(Lsn(r.next)),
    }
}

#[derive(Default)]
struct Stats {
    records: u64,
    first: Option<Lsn>,
    last: Option<Lsn>,
    commits: u64,
    aborts: u64,
    first_commit: Option<TimestampTz>,
    last_commit: Option<TimestampTz>,
    checkpoints: u64,
    last_checkpoint: Option<Lsn>,
    restore_points: Vec<RestorePointInfo>,
    fpis: u64,
}

impl Stats {
    fn note(&mut self, lsn: Lsn, hdr: &XLogRecord, main: &[u8], fpis: u64) {
        self.records += 1;
        self.first.get_or_insert(lsn);
        self.last = Some(lsn);
        self.fpis += fpis;
        let info = hdr.rmgr_info();
        match hdr.xl_rmid {
            RM_XACT_ID => match info & xact::XLOG_XACT_OPMASK {
                xact::XLOG_XACT_COMMIT | xact::XLOG_XACT_COMMIT_PREPARED => {
                    self.commits += 1;
                    if let Some(t) = i64_at(main, 0) {
                        self.first_commit.get_or_insert(TimestampTz(t));
                        self.last_commit = Some(TimestampTz(t));
                    }
                }
                xact::XLOG_XACT_ABORT | xact::XLOG_XACT_ABORT_PREPARED => self.aborts += 1,
                _ => {}
            },
            RM_XLOG_ID => match info {
                xlog::XLOG_CHECKPOINT_ONLINE | xlog::XLOG_CHECKPOINT_SHUTDOWN => {
                    self.checkpoints += 1;
                    self.last_checkpoint = Some(lsn);
                }
                xlog::XLOG_RESTORE_POINT => {
                    if let (Some(t), Some(name)) = (i64_at(main, 0), main.get(8..8 + xlog::MAXFNAMELEN)) {
                        self.restore_points.push(RestorePointInfo {
                            lsn,
                            name: crate::bytes::c_string(name),
                            time: TimestampTz(t),
                        });
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// After a switch record PostgreSQL 15 leaves the rest of the segment zero; older servers
/// wrote empty pages with headers. Accept either, nothing else.
fn check_after_switch(
    data: Window<'_>,
    seg_start: u64,
    switch: Lsn,
    switch_end: u64,
    version: &PgVersion,
) -> Result<(), SegmentError> {
    let err = |off: usize| SegmentError::AfterSwitch { offset: off as u32, switch };
    let first_nonzero = |from: usize, b: &[u8]| b.iter().position(|&x| x != 0).map(|p| from + p);
    let from = maxalign(switch_end).saturating_sub(seg_start) as usize;
    if from >= data.len() {
        return Ok(());
    }
    let mut page = from - from % XLOG_BLCKSZ;
    if from % XLOG_BLCKSZ != 0 {
        let end = (page + XLOG_BLCKSZ).min(data.len());
        let rest = data.get(from..end).unwrap_or(&[]);
        if !is_zero(rest) {
            return Err(err(first_nonzero(from, rest).unwrap_or(from)));
        }
        page += XLOG_BLCKSZ;
    }
    // Pages before the window were checked with an earlier one.
    page = page.max(data.base);
    while page < data.len() {
        let p = data.get(page..(page + XLOG_BLCKSZ).min(data.len())).unwrap_or(&[]);
        if !is_zero(p) {
            let empty_page = XLogPageHeaderData::parse(p).is_some_and(|h| {
                h.xlp_magic == version.xlog_page_magic
                    && h.xlp_info & !crate::page::XLP_BKP_REMOVABLE == 0
                    && h.xlp_pageaddr.0 == seg_start + page as u64
                    && h.xlp_rem_len == 0
            }) && is_zero(p.get(SIZE_OF_XLOG_SHORT_PHD..).unwrap_or(&[]));
            if !empty_page {
                return Err(err(first_nonzero(page, p).unwrap_or(page)));
            }
        }
        page += XLOG_BLCKSZ;
    }
    Ok(())
}

/// For a `.partial`: once the WAL stopped (reading failed on `fail_page`), nothing after it
/// may look like WAL written for this position — that would make the stop damage, not the
/// end of what was written.
fn check_nothing_after(
    data: Window<'_>,
    seg_start: u64,
    fail_page: Lsn,
    err: &DecodeError,
    version: &PgVersion,
) -> Result<(), SegmentError> {
    let stop_page = fail_page.0.saturating_sub(seg_start) as usize;
    // A record wholly on its page that fails its CRC, followed by more data on that page.
    if let DecodeError::Crc { lsn } = err {
        let off = lsn.0.saturating_sub(seg_start) as usize;
        if let Some(tot) = data.get(off..off + 4).and_then(|b| u32_at(b, 0)) {
            let rec_end = off + tot as usize;
            let page_end = off - off % XLOG_BLCKSZ + XLOG_BLCKSZ;
            if rec_end <= page_end {
                let after = maxalign(rec_end as u64) as usize;
                let rest = data.get(after..page_end.min(data.len())).unwrap_or(&[]);
                if !is_zero(rest) {
                    return Err(SegmentError::DataAfterEnd { offset: after as u32, end: *lsn });
                }
            }
        }
    }
    let mut page = stop_page + XLOG_BLCKSZ;
    while page < data.len() {
        if let Some(h) = XLogPageHeaderData::parse(data.from(page)) {
            if h.xlp_magic == version.xlog_page_magic && h.xlp_pageaddr.0 == seg_start + page as u64 {
                return Err(SegmentError::DataAfterEnd { offset: page as u32, end: err.lsn() });
            }
        }
        page += XLOG_BLCKSZ;
    }
    Ok(())
}

fn validate(
    data: &[u8],
    expect: &SegmentExpectations,
    previous: Option<&[u8]>,
    partial: bool,
) -> Result<SegmentSummary, SegmentError> {
    let mut v = SegmentValidator::with(expect, previous, partial);
    v.feed(data);
    v.finish()
}
