//! The record reader shared by [`crate::WalDecoder`] and segment validation: it walks
//! records through whatever contiguous bytes it is handed, validates each page header once,
//! checks every record header and CRC, and reassembles records that cross pages. It copies
//! record bytes only when a record crosses a page boundary.
//!
//! It never assumes more bytes than it is given: when the bytes run out it reports
//! [`Step::NeedMore`] and keeps its place (including a half-assembled record), so the same
//! reader can continue over the next chunk.

use crate::bytes::u32_at;
use crate::decoder::DecodeError;
use crate::lsn::{maxalign, Lsn};
use crate::page::{PageInfo, PageRules, PageValidator, XLOG_BLCKSZ};
use crate::record::{record_crc, XLogRecord, MAX_RECORD_LENGTH, SIZE_OF_XLOG_RECORD};
use crate::rmgr::{self, RM_XLOG_ID};
use crate::version::PgVersion;

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;

/// Contiguous WAL bytes starting at LSN `start`.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub start: u64,
    pub data: &'a [u8],
}

impl<'a> Source<'a> {
    /// Bytes from `lsn` to the end of its page, or fewer when the source ends first.
    #[inline]
    fn avail(&self, lsn: u64) -> &'a [u8] {
        let Some(off) = lsn.checked_sub(self.start) else {
            return &[];
        };
        let Ok(off) = usize::try_from(off) else {
            return &[];
        };
        if off >= self.data.len() {
            return &[];
        }
        let page_left = (BLCKSZ - lsn % BLCKSZ) as usize;
        let end = self.data.len().min(off + page_left);
        &self.data[off..end]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Next record starts at `Reader::next` (a page boundary means "after that header").
    Idle,
    /// Skipping the tail of a record whose start is not available; `remaining` is `None`
    /// on the first page, where the page header says how much.
    Skip { page: u64, remaining: Option<u32> },
    /// Assembling a record that crosses pages; `buf` holds what we have.
    Gather { start: u64, total: u32, page: u64, header_checked: bool },
}

/// What the reader is in the middle of when it ran out of bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pending<'a> {
    None,
    /// Skipping continuation bytes of a record that began before the data.
    Skipping,
    /// A record starting at `start` with `total` bytes, of which `got` are at hand.
    Record {
        start: u64,
        total: u32,
        got: &'a [u8],
    },
}

pub(crate) enum Step<'r> {
    Record(RawRecord<'r>),
    /// The bytes ran out.
    NeedMore,
}

/// A record whose header, placement and CRC are verified.
pub(crate) struct RawRecord<'r> {
    pub lsn: u64,
    /// First byte after the record (not aligned).
    pub end: u64,
    pub header: XLogRecord,
    pub bytes: &'r [u8],
    pub version: &'static PgVersion,
    /// The record abandoned just before this one (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
    pub after_overwritten: Option<u64>,
}

pub(crate) struct Reader {
    pub pages: PageValidator,
    checked: Option<PageInfo>,
    /// Where the next record starts (or the page it starts on).
    pub next: u64,
    /// Start of the last record returned; `None` until one has been.
    pub prev: Option<u64>,
    state: State,
    buf: Vec<u8>,
    /// Continuation bytes passed over without their record (not CRC-checked).
    pub skipped: u64,
    /// Set when a half-read record was abandoned because the page that should continue it
    /// carries `XLP_FIRST_IS_OVERWRITE_CONTRECORD`.
    pub overwritten: Option<u64>,
    /// Lowest and highest page timeline seen.
    pub tli_range: Option<(u32, u32)>,
    fallback: &'static PgVersion,
}

impl Reader {
    /// A reader positioned at a page boundary; a record tail at the start of that page is
    /// skipped.
    pub fn at_page(rules: PageRules, page: u64) -> Reader {
        let mut r = Reader::idle(rules, page);
        r.state = State::Skip { page, remaining: None };
        r
    }

    /// A reader positioned where a record starts (or at a page boundary whose page begins
    /// with a new record).
    pub fn idle(rules: PageRules, next: u64) -> Reader {
        let fallback = rules
            .version
            .unwrap_or_else(|| crate::version::by_major(crate::version::TESTED_MAJOR).expect("tested major is known"));
        Reader {
            pages: PageValidator::new(rules),
            checked: None,
            next,
            prev: None,
            state: State::Idle,
            buf: Vec::new(),
            skipped: 0,
            overwritten: None,
            tli_range: None,
            fallback,
        }
    }

    /// The major whose formats apply: learnt from the pages, or the expected one.
    pub fn version(&self) -> &'static PgVersion {
        self.pages.version().unwrap_or(self.fallback)
    }

    /// Lowest LSN the reader will still look at; bytes before it can be dropped.
    pub fn min_needed(&self) -> u64 {
        match self.state {
            State::Idle => self.next,
            State::Skip { page, .. } | State::Gather { page, .. } => page,
        }
    }

    pub fn pending(&self) -> Pending<'_> {
        match self.state {
            State::Idle => Pending::None,
            State::Skip { .. } => Pending::Skipping,
            State::Gather { start, total, .. } => Pending::Record { start, total, got: &self.buf },
        }
    }

    /// Validates (once) and returns the header of the page at `page`; `None` when the
    /// header is not all there.
    fn page(&mut self, src: &Source<'_>, page: u64) -> Result<Option<PageInfo>, DecodeError> {
        if let Some(p) = self.checked {
            if p.lsn.0 == page {
                return Ok(Some(p));
            }
        }
        let avail = src.avail(page);
        let need = if Lsn(page).segment_offset(self.pages.rules.seg_size) == 0 {
            crate::page::SIZE_OF_XLOG_LONG_PHD
        } else {
            crate::page::SIZE_OF_XLOG_SHORT_PHD
        };
        if avail.len() < need {
            return Ok(None);
        }
        let info = self.pages.check(avail, Lsn(page))?;
        self.tli_range = Some(match self.tli_range {
            None => (info.xlp_tli, info.xlp_tli),
            Some((lo, hi)) => (lo.min(info.xlp_tli), hi.max(info.xlp_tli)),
        });
        self.checked = Some(info);
        Ok(Some(info))
    }

    /// `ValidXLogRecordHeader`: a known rmgr and a prev-link pointing at the record before
    /// (or, with nothing read yet, at least backwards).
    fn check_header(&self, lsn: u64, hdr: &XLogRecord) -> Result<(), DecodeError> {
        if !rmgr::rmid_is_valid(hdr.xl_rmid, self.version()) {
            return Err(DecodeError::ResourceManager { lsn: Lsn(lsn), rmid: hdr.xl_rmid });
        }
        let ok = match self.prev {
            Some(p) => hdr.xl_prev.0 == p,
            None => hdr.xl_prev.0 < lsn,
        };
        if !ok {
            return Err(DecodeError::PrevLink { lsn: Lsn(lsn), found: hdr.xl_prev, expected: self.prev.map(Lsn) });
        }
        Ok(())
    }

    /// Bookkeeping once a record is complete and its CRC verified; hands back the LSN of a
    /// record abandoned just before it.
    fn complete(&mut self, lsn: u64, end: u64, hdr: &XLogRecord, bytes: &[u8]) -> Result<Option<u64>, DecodeError> {
        if record_crc(bytes) != Some(hdr.xl_crc) {
            return Err(DecodeError::Crc { lsn: Lsn(lsn) });
        }
        self.prev = Some(lsn);
        self.next = maxalign(end);
        if hdr.xl_rmid == RM_XLOG_ID && hdr.rmgr_info() == rmgr::xlog::XLOG_SWITCH {
            // The switch record takes the rest of its segment.
            let seg = self.pages.rules.seg_size as u64;
            self.next = self.next.div_ceil(seg) * seg;
        }
        self.state = State::Idle;
        Ok(self.overwritten.take())
    }

    /// Reads the next record from `src`.
    pub fn next<'r>(&'r mut self, src: &Source<'r>) -> Result<Step<'r>, DecodeError> {
        loop {
            match self.state {
                State::Skip { page, remaining } => {
                    let Some(p) = self.page(src, page)? else {
                        return Ok(Step::NeedMore);
                    };
                    let remaining = match remaining {
                        None if !p.contrecord => {
                            self.state = State::Idle;
                            self.next = page;
                            continue;
                        }
                        None => p.xlp_rem_len,
                        Some(_) if p.overwrite_contrecord => {
                            self.state = State::Idle;
                            self.next = page;
                            continue;
                        }
                        Some(r) => {
                            if !p.contrecord {
                                return Err(DecodeError::MissingContrecord { lsn: Lsn(page), record: None });
                            }
                            if p.xlp_rem_len != r {
                                return Err(DecodeError::ContrecordLength {
                                    lsn: Lsn(page),
                                    record: None,
                                    found: p.xlp_rem_len,
                                    expected: r,
                                });
                            }
                            r
                        }
                    };
                    let room = (XLOG_BLCKSZ - p.header_size) as u32;
                    if remaining <= room {
                        self.skipped += remaining as u64;
                        self.next = maxalign(page + p.header_size as u64 + remaining as u64);
                        self.state = State::Idle;
                    } else {
                        self.skipped += room as u64;
                        self.state = State::Skip { page: page + BLCKSZ, remaining: Some(remaining - room) };
                    }
                }
                State::Idle => {
                    let mut pos = self.next;
                    if pos % BLCKSZ == 0 {
                        let Some(p) = self.page(src, pos)? else {
                            return Ok(Step::NeedMore);
                        };
                        if p.contrecord {
                            return Err(DecodeError::UnexpectedContrecord { lsn: Lsn(pos) });
                        }
                        pos += p.header_size as u64;
                    }
                    let avail = src.avail(pos);
                    let Some(tot_len) = u32_at(avail, 0) else {
                        return Ok(Step::NeedMore);
                    };
                    if (tot_len as usize) < SIZE_OF_XLOG_RECORD || tot_len > MAX_RECORD_LENGTH {
                        return Err(DecodeError::RecordLength { lsn: Lsn(pos), len: tot_len });
                    }
                    let page_left = (BLCKSZ - pos % BLCKSZ) as usize;
                    let header_on_page = page_left >= SIZE_OF_XLOG_RECORD;
                    if header_on_page {
                        let Some(hdr) = XLogRecord::parse(avail) else {
                            return Ok(Step::NeedMore);
                        };
                        self.check_header(pos, &hdr)?;
                        if tot_len as usize <= page_left {
                            let Some(bytes) = avail.get(..tot_len as usize) else {
                                return Ok(Step::NeedMore);
                            };
                            let end = pos + tot_len as u64;
                            let after_overwritten = self.complete(pos, end, &hdr, bytes)?;
                            return Ok(Step::Record(RawRecord {
                                lsn: pos,
                                end,
                                header: hdr,
                                bytes,
                                version: self.version(),
                                after_overwritten,
                            }));
                        }
                    }
                    let Some(first) = avail.get(..page_left) else {
                        return Ok(Step::NeedMore);
                    };
                    self.buf.clear();
                    self.buf.reserve((tot_len as usize).min(4 * XLOG_BLCKSZ));
                    self.buf.extend_from_slice(first);
                    self.state = State::Gather {
                        start: pos,
                        total: tot_len,
                        page: pos - pos % BLCKSZ + BLCKSZ,
                        header_checked: header_on_page,
                    };
                }
                State::Gather { start, total, page, header_checked } => {
                    let Some(p) = self.page(src, page)? else {
                        return Ok(Step::NeedMore);
                    };
                    if p.overwrite_contrecord {
                        // The rest of this record was never written; the server wrote a new
                        // record here instead. Drop it, as PostgreSQL's reader does.
                        self.overwritten = Some(start);
                        self.state = State::Idle;
                        self.next = page;
                        continue;
                    }
                    if !p.contrecord {
                        return Err(DecodeError::MissingContrecord { lsn: Lsn(page), record: Some(Lsn(start)) });
                    }
                    let got = self.buf.len() as u32;
                    if p.xlp_rem_len != total - got {
                        return Err(DecodeError::ContrecordLength {
                            lsn: Lsn(page),
                            record: Some(Lsn(start)),
                            found: p.xlp_rem_len,
                            expected: total - got,
                        });
                    }
                    let take = (p.xlp_rem_len as usize).min(XLOG_BLCKSZ - p.header_size);
                    let data_at = page + p.header_size as u64;
                    let Some(piece) = src.avail(data_at).get(..take) else {
                        return Ok(Step::NeedMore);
                    };
                    self.buf.extend_from_slice(piece);
                    let mut header_checked = header_checked;
                    if !header_checked && self.buf.len() >= SIZE_OF_XLOG_RECORD {
                        if let Some(hdr) = XLogRecord::parse(&self.buf) {
                            self.check_header(start, &hdr)?;
                        }
                        header_checked = true;
                    }
                    if self.buf.len() == total as usize {
                        let end = data_at + take as u64;
                        let Some(hdr) = XLogRecord::parse(&self.buf) else {
                            return Err(DecodeError::RecordLength { lsn: Lsn(start), len: total });
                        };
                        let buf = std::mem::take(&mut self.buf);
                        let done = self.complete(start, end, &hdr, &buf);
                        self.buf = buf;
                        let after_overwritten = done?;
                        return Ok(Step::Record(RawRecord {
                            lsn: start,
                            end,
                            header: hdr,
                            bytes: &self.buf,
                            version: self.version(),
                            after_overwritten,
                        }));
                    }
                    self.state = State::Gather { start, total, page: page + BLCKSZ, header_checked };
                }
            }
        }
    }
}
