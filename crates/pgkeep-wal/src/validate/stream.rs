//! [`SegmentValidator`]: segment validation fed in chunks, so a reader can check WAL while it
//! decodes or downloads it instead of holding the whole segment first. `validate_segment` is
//! this validator fed once, so both give the same verdicts by construction.
//!
//! The record reader already keeps its place across chunks; what it still needs of the bytes
//! seen (at most the page it is on) is kept in `carry`. The checks after the records end look
//! at the rest of the segment: after a switch record they run page by page as bytes arrive;
//! after a failure (damage, or the end of a `.partial`'s WAL) the rest is kept from the failing
//! page on and checked at the end, as the whole-segment code does.

use super::{
    check_after_switch, check_nothing_after, full_segment_error, is_zero, page_error, scan_previous,
    LeadingContinuation, PartialEnd, PrevOutcome, SegmentError, SegmentExpectations, SegmentSummary, Stats, Window,
};
use crate::decoder::DecodeError;
use crate::file_name::is_valid_wal_seg_size;
use crate::lsn::{maxalign, Lsn};
use crate::page::{PageInfo, PageRules, PageValidator, SIZE_OF_XLOG_LONG_PHD, XLOG_BLCKSZ};
use crate::reader::{Pending, Reader, Source, Step};
use crate::record::{check_record_prefix, decode_body, DecodedBkpBlock};
use crate::rmgr::{xlog, RM_XLOG_ID};
use crate::version::{self, PgVersion};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting the first page's long header.
    Start,
    Records,
    /// After the switch record: the rest is checked page by page.
    Switched,
    /// The reader failed: the rest is kept for the checks at the end.
    Failed,
    /// The verdict is an error already; only the length still counts (it is reported first).
    Refused,
}

/// What the first page said.
struct Identity {
    p0: PageInfo,
    version: &'static PgVersion,
    sysid: u64,
}

/// Validates a segment (or `.partial`) fed in chunks of any size; [`SegmentValidator::finish`]
/// gives exactly what [`super::validate_segment`] / [`super::validate_partial_segment`] give
/// for the concatenated bytes.
pub struct SegmentValidator<'p> {
    expect: SegmentExpectations,
    previous: Option<&'p [u8]>,
    partial: bool,
    /// Errors found before any byte (reported in the whole-segment order: size, length, rest).
    size_error: Option<SegmentError>,
    setup_error: Option<SegmentError>,
    want: Option<&'static PgVersion>,
    seg_start: u64,
    /// Bytes fed so far (the file's length at the end).
    fed: usize,
    phase: Phase,
    refusal: Option<SegmentError>,
    identity: Option<Identity>,
    reader: Option<Reader>,
    /// Bytes from offset `carry_off` the reader still needs (within one page).
    carry: Vec<u8>,
    carry_off: usize,
    note: Option<String>,
    from_prev_bytes: usize,
    stats: Stats,
    blocks: Vec<DecodedBkpBlock>,
    leading: LeadingContinuation,
    last_end: Option<u64>,
    switch: Option<(Lsn, u64)>,
    /// After a switch: an incomplete page from offset `after_off` (when empty, the offset of
    /// the next byte to check).
    after: Vec<u8>,
    after_off: usize,
    failure: Option<DecodeError>,
    /// After a failure: everything from offset `tail_off` on.
    tail: Vec<u8>,
    tail_off: usize,
}

impl<'p> SegmentValidator<'p> {
    /// For a complete segment; `previous_segment` as for [`super::validate_segment`].
    pub fn new(expect: &SegmentExpectations, previous_segment: Option<&'p [u8]>) -> SegmentValidator<'p> {
        SegmentValidator::with(expect, previous_segment, false)
    }

    /// For a `.partial` segment, as [`super::validate_partial_segment`].
    pub fn partial(expect: &SegmentExpectations, previous_segment: Option<&'p [u8]>) -> SegmentValidator<'p> {
        SegmentValidator::with(expect, previous_segment, true)
    }

    pub(super) fn with(
        expect: &SegmentExpectations,
        previous: Option<&'p [u8]>,
        partial: bool,
    ) -> SegmentValidator<'p> {
        let seg_size = expect.seg_size;
        let size_error = (!is_valid_wal_seg_size(seg_size)).then_some(SegmentError::InvalidSegmentSize(seg_size));
        let want = expect.pg_major.map(|m| version::by_major(m).ok_or(SegmentError::UnknownMajor { major: m }));
        let seg_start = expect
            .segno
            .checked_mul(seg_size as u64)
            .filter(|s| s.checked_add(seg_size as u64).is_some())
            .ok_or(SegmentError::InvalidSegmentNumber(expect.segno));
        let setup_error = match (&want, &seg_start) {
            (Some(Err(e)), _) | (_, Err(e)) => Some(e.clone()),
            _ => None,
        };
        let stopped = size_error.is_some() || setup_error.is_some();
        SegmentValidator {
            expect: expect.clone(),
            previous,
            partial,
            size_error,
            setup_error,
            want: want.and_then(Result::ok),
            seg_start: seg_start.unwrap_or(0),
            fed: 0,
            phase: if stopped { Phase::Refused } else { Phase::Start },
            refusal: None,
            identity: None,
            reader: None,
            carry: Vec::new(),
            carry_off: 0,
            note: None,
            from_prev_bytes: 0,
            stats: Stats::default(),
            blocks: Vec::new(),
            leading: LeadingContinuation::None,
            last_end: None,
            switch: None,
            after: Vec::new(),
            after_off: 0,
            failure: None,
            tail: Vec::new(),
            tail_off: 0,
        }
    }

    /// The next bytes of the file.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut off = self.fed;
        self.fed = self.fed.saturating_add(bytes.len());
        // Beyond a segment's size only the length matters: it is refused as too long.
        let cap = self.expect.seg_size as usize;
        let mut chunk = &bytes[..bytes.len().min(cap.saturating_sub(off))];
        while !chunk.is_empty() {
            match self.phase {
                Phase::Refused => return,
                Phase::Failed => {
                    self.tail.extend_from_slice(chunk);
                    return;
                }
                Phase::Switched => {
                    self.feed_after(off, chunk);
                    return;
                }
                Phase::Start => {
                    let take = (SIZE_OF_XLOG_LONG_PHD - self.carry.len()).min(chunk.len());
                    self.carry.extend_from_slice(&chunk[..take]);
                    (off, chunk) = (off + take, &chunk[take..]);
                    if self.carry.len() == SIZE_OF_XLOG_LONG_PHD {
                        self.start();
                    }
                }
                Phase::Records if !self.carry.is_empty() => {
                    // Complete the carried page, then read it: the reader never needs bytes
                    // of two pages at once.
                    let page_end = (self.carry_off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
                    // The carry never reaches past its page; were it to, take all (no stall).
                    let take = match page_end.saturating_sub(off).min(chunk.len()) {
                        0 => chunk.len(),
                        n => n,
                    };
                    self.carry.extend_from_slice(&chunk[..take]);
                    (off, chunk) = (off + take, &chunk[take..]);
                    if off >= page_end {
                        self.read_carry();
                    }
                }
                Phase::Records => {
                    self.read(off, chunk);
                    if self.phase == Phase::Records {
                        let need = self.min_needed().max(off);
                        if let Some(rest) = chunk.get(need - off..) {
                            self.carry.extend_from_slice(rest);
                            self.carry_off = need;
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The verdict on everything fed.
    pub fn finish(mut self) -> Result<SegmentSummary, SegmentError> {
        if let Some(e) = self.size_error.take() {
            return Err(e);
        }
        let seg_size = self.expect.seg_size;
        let len_ok = if self.partial {
            self.fed >= SIZE_OF_XLOG_LONG_PHD && self.fed <= seg_size as usize
        } else {
            self.fed == seg_size as usize
        };
        if !len_ok {
            return Err(SegmentError::WrongLength { len: self.fed, expected: seg_size });
        }
        if let Some(e) = self.setup_error.take() {
            return Err(e);
        }
        if self.phase == Phase::Start {
            self.start();
        }
        if self.phase == Phase::Records && !self.carry.is_empty() {
            self.read_carry();
        }
        if self.phase == Phase::Switched && !self.after.is_empty() {
            let after = std::mem::take(&mut self.after);
            self.check_after(self.after_off, &after);
        }
        if let Some(e) = self.refusal.take() {
            return Err(e);
        }
        let (Some(id), Some(reader)) = (self.identity.take(), self.reader.take()) else {
            return Err(SegmentError::PageHeader { offset: 0, detail: "first page header not understood".into() });
        };
        let (seg_start, seg_end, fed) = (self.seg_start, self.seg_start + seg_size as u64, self.fed);
        let mut leading = self.leading;
        let last_end = self.last_end;
        let mut continues_into_next = false;
        let mut unverified = reader.skipped;
        if id.p0.contrecord && leading == LeadingContinuation::None {
            leading = LeadingContinuation::Unverified { bytes: reader.skipped };
        }
        let mut partial_end = None;
        let pending_start = match reader.pending() {
            Pending::Record { start, .. } => Some(start),
            _ => None,
        };
        if let Some(e) = self.failure.take() {
            let data = Window { base: self.tail_off, bytes: &self.tail };
            if !self.partial {
                return Err(full_segment_error(e, data, seg_start, pending_start));
            }
            let stop = pending_start.map(Lsn).unwrap_or(e.lsn());
            // The page the reader was on when it gave up (for a record spanning pages, the
            // page where it failed, not where it began).
            let fail_page = Lsn(reader.min_needed().max(e.lsn().0)).page_start();
            check_nothing_after(data, seg_start, fail_page, &e, id.version)?;
            let stop_off = stop.0.saturating_sub(seg_start) as usize;
            let page_end = (stop_off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
            let zero_filled = e.is_end_of_wal()
                && match pending_start {
                    // A record cut short at a page that was never written.
                    Some(_) => true,
                    None => data.get(stop_off..page_end.min(data.len())).is_some_and(is_zero),
                };
            partial_end = Some(PartialEnd {
                end_of_wal: Lsn(last_end.unwrap_or(seg_start).max(seg_start)),
                stopped_at: stop,
                zero_filled,
                reason: e.to_string(),
            });
        } else if self.switch.is_none() {
            match reader.pending() {
                Pending::Record { start, total, got } if fed == seg_size as usize => {
                    continues_into_next = true;
                    if start >= seg_start {
                        // Its CRC needs the next segment, but its headers must already add up.
                        check_record_prefix(got, total, id.version).map_err(|reason| SegmentError::InvalidRecord {
                            lsn: Lsn(start),
                            reason: reason.to_string(),
                        })?;
                        unverified += got.len() as u64;
                    } else {
                        let here = got.len().saturating_sub(self.from_prev_bytes) as u64;
                        unverified += here;
                        leading = LeadingContinuation::Unverified { bytes: here };
                    }
                }
                Pending::Skipping if fed == seg_size as usize => continues_into_next = true,
                Pending::None if reader.next >= seg_end => {}
                pending => {
                    // A .partial file shorter than a segment ends here.
                    let stopped_at = match pending {
                        Pending::Record { start, .. } => Lsn(start),
                        _ => Lsn(reader.next.min(seg_start + fed as u64)),
                    };
                    partial_end = Some(PartialEnd {
                        end_of_wal: Lsn(last_end.unwrap_or(seg_start).max(seg_start)),
                        stopped_at,
                        zero_filled: false,
                        reason: format!("the file ends at offset {fed}"),
                    });
                }
            }
        }
        let end_of_valid_wal =
            if continues_into_next { Lsn(seg_end) } else { Lsn(last_end.unwrap_or(seg_start).max(seg_start)) };
        let p0 = id.p0;
        let (lo, hi) = reader.tli_range.unwrap_or((p0.xlp_tli, p0.xlp_tli));
        let stats = self.stats;
        Ok(SegmentSummary {
            tli: self.expect.tli,
            segno: self.expect.segno,
            start: Lsn(seg_start),
            pg_major: id.version.major,
            system_identifier: id.sysid,
            page_timelines: (lo.min(p0.xlp_tli), hi.max(p0.xlp_tli)),
            first_record: stats.first,
            last_record: stats.last,
            end_of_valid_wal,
            records: stats.records,
            ends_with_switch: self.switch.is_some(),
            continues_into_next,
            leading,
            unverified_bytes: unverified,
            commits: stats.commits,
            aborts: stats.aborts,
            first_commit_time: stats.first_commit,
            last_commit_time: stats.last_commit,
            checkpoints: stats.checkpoints,
            last_checkpoint: stats.last_checkpoint,
            restore_points: stats.restore_points,
            full_page_images: stats.fpis,
            partial: self.partial,
            partial_end,
            note: self.note,
        })
    }

    fn refuse(&mut self, e: SegmentError) {
        self.refusal = Some(e);
        self.phase = Phase::Refused;
    }

    /// Offset of the first byte the reader still needs.
    fn min_needed(&self) -> usize {
        self.reader.as_ref().map_or(0, |r| r.min_needed().saturating_sub(self.seg_start) as usize)
    }

    /// The first page on its own (the identity errors come first), then the reader, which
    /// may begin inside the previous segment's last record.
    fn start(&mut self) {
        let seg_start = self.seg_start;
        let mut first = PageValidator::new(PageRules {
            seg_size: self.expect.seg_size,
            version: self.want,
            system_identifier: self.expect.system_identifier,
            max_tli: Some(self.expect.tli),
        });
        let p0 = match first.check(&self.carry, Lsn(seg_start)) {
            Ok(p) => p,
            Err(e) => return self.refuse(page_error(e, seg_start)),
        };
        let (Some(version), Some(sysid)) = (first.version(), first.system_identifier()) else {
            return self
                .refuse(SegmentError::PageHeader { offset: 0, detail: "first page header not understood".into() });
        };
        let rules = PageRules {
            seg_size: self.expect.seg_size,
            version: Some(version),
            system_identifier: Some(sysid),
            max_tli: Some(self.expect.tli),
        };
        let mut reader = None;
        if p0.contrecord {
            if let (Some(prev), Some(prev_start)) = (self.previous, seg_start.checked_sub(self.expect.seg_size as u64))
            {
                match scan_previous(prev, prev_start, &rules) {
                    PrevOutcome::InRecord(r) => {
                        if let Pending::Record { got, .. } = r.pending() {
                            self.from_prev_bytes = got.len();
                        }
                        reader = Some(*r);
                    }
                    PrevOutcome::EndsCleanly(at) => {
                        return self.refuse(SegmentError::ContinuationMismatch {
                            detail: format!(
                                "segment begins inside a record, but the previous segment's wal ends at a record boundary ({at})"
                            ),
                        })
                    }
                    PrevOutcome::Unusable(why) => self.note = Some(why),
                }
            }
        }
        let mut reader = reader.unwrap_or_else(|| Reader::at_page(rules, seg_start));
        reader.skipped = 0;
        reader.tli_range = None;
        self.reader = Some(reader);
        self.identity = Some(Identity { p0, version, sysid });
        self.carry_off = 0;
        self.phase = Phase::Records;
    }

    /// Reads the carried bytes and keeps what the reader still needs of them.
    fn read_carry(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        self.read(self.carry_off, &carry);
        self.carry = carry;
        let end = self.carry_off + self.carry.len();
        let need = self.min_needed().clamp(self.carry_off, end);
        if self.phase != Phase::Records || need == end {
            self.carry.clear();
            self.carry_off = end;
        } else {
            self.carry.drain(..need - self.carry_off);
            self.carry_off = need;
        }
    }

    /// Reads the records in `data` (at offset `off`, where the reader's bytes continue).
    fn read(&mut self, off: usize, data: &[u8]) {
        let seg_start = self.seg_start;
        let src = Source { start: seg_start + off as u64, data };
        let Some(version) = self.identity.as_ref().map(|i| i.version) else { return };
        let Some(reader) = self.reader.as_mut() else { return };
        loop {
            match reader.next(&src) {
                Ok(Step::Record(raw)) => {
                    let lsn = Lsn(raw.lsn);
                    let layout = match decode_body(raw.bytes, version, &mut self.blocks) {
                        Ok(l) => l,
                        Err(reason) => {
                            return self.refuse(SegmentError::InvalidRecord { lsn, reason: reason.to_string() })
                        }
                    };
                    self.last_end = Some(raw.end);
                    if raw.lsn < seg_start {
                        self.leading = LeadingContinuation::Verified { record: lsn };
                        continue;
                    }
                    let main = raw.bytes.get(layout.main_data.clone()).unwrap_or(&[]);
                    let fpis = self.blocks.iter().filter(|b| b.has_image).count() as u64;
                    self.stats.note(lsn, &raw.header, main, fpis);
                    if raw.header.xl_rmid == RM_XLOG_ID && raw.header.rmgr_info() == xlog::XLOG_SWITCH {
                        let end = raw.end;
                        self.switch = Some((lsn, end));
                        self.phase = Phase::Switched;
                        self.after_off = maxalign(end).saturating_sub(seg_start) as usize;
                        return self.feed_after(off, data);
                    }
                }
                Ok(Step::NeedMore) => return,
                Err(e) => {
                    // The checks at the end look at the failing page and what follows it.
                    let page = (e.lsn().0.min(reader.min_needed()).saturating_sub(seg_start) as usize) / XLOG_BLCKSZ
                        * XLOG_BLCKSZ;
                    let keep = page.max(off);
                    self.tail_off = keep;
                    self.tail = data.get(keep - off..).unwrap_or(&[]).to_vec();
                    self.failure = Some(e);
                    self.phase = Phase::Failed;
                    return;
                }
            }
        }
    }

    /// Bytes after the switch record, checked a whole page at a time (`after` collects a page
    /// that arrives in pieces).
    fn feed_after(&mut self, off: usize, data: &[u8]) {
        let from = self.after_off + self.after.len();
        let Some(skip) = from.checked_sub(off) else { return };
        let (mut off, mut data) = match data.get(skip..) {
            Some(d) => (from, d),
            None => return,
        };
        while !data.is_empty() && self.phase == Phase::Switched {
            if self.after.is_empty() && off % XLOG_BLCKSZ == 0 && data.len() >= XLOG_BLCKSZ {
                let whole = data.len() - data.len() % XLOG_BLCKSZ;
                self.check_after(off, &data[..whole]);
                (off, data) = (off + whole, &data[whole..]);
                self.after_off = off;
                continue;
            }
            let page_end = (self.after_off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
            let take = (page_end - off).min(data.len());
            self.after.extend_from_slice(&data[..take]);
            (off, data) = (off + take, &data[take..]);
            if off == page_end {
                let after = std::mem::take(&mut self.after);
                self.check_after(self.after_off, &after);
                self.after = after;
                self.after.clear();
                self.after_off = page_end;
            }
        }
    }

    fn check_after(&mut self, off: usize, bytes: &[u8]) {
        let (Some((lsn, end)), Some(id)) = (self.switch, self.identity.as_ref()) else { return };
        if let Err(e) = check_after_switch(Window { base: off, bytes }, self.seg_start, lsn, end, id.version) {
            self.refuse(e);
        }
    }
}
