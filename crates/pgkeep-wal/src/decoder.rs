//! A streaming WAL decoder: feed it bytes in order, take records out.

use crate::file_name::is_valid_wal_seg_size;
use crate::lsn::{Lsn, TransactionId};
use crate::page::{PageError, PageRules, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ};
use crate::reader::{Reader, Source, Step};
use crate::record::{decode_body, DecodedBkpBlock, RecordError, RecordLayout, XLogRecord};
use crate::rmgr::{self, RecordKind, RmgrDataError};
use crate::version::{self, PgVersion};

fn expected_prev(e: &Option<Lsn>) -> String {
    match e {
        Some(l) => format!("expected {l}"),
        None => "expected an earlier position".to_string(),
    }
}

fn record_of(r: &Option<Lsn>) -> String {
    match r {
        Some(l) => format!("the record at {l}"),
        None => "the record continued there".to_string(),
    }
}

/// Why the WAL cannot be read further. Every variant names the LSN concerned. The end of
/// the written WAL in a partially filled segment shows up as [`DecodeError::RecordLength`]
/// with `len` 0 or a zero page ([`DecodeError::is_end_of_wal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("invalid record length {len} at {lsn}")]
    RecordLength { lsn: Lsn, len: u32 },
    #[error("record at {lsn} has invalid resource manager id {rmid}")]
    ResourceManager { lsn: Lsn, rmid: u8 },
    #[error("record at {lsn} has prev-link {found} ({})", expected_prev(.expected))]
    PrevLink { lsn: Lsn, found: Lsn, expected: Option<Lsn> },
    #[error("page at {lsn} begins with the rest of a record where a new record should start")]
    UnexpectedContrecord { lsn: Lsn },
    #[error("page at {lsn} does not continue {}", record_of(.record))]
    MissingContrecord { lsn: Lsn, record: Option<Lsn> },
    #[error("page at {lsn} says {found} bytes of {} remain (expected {expected})", record_of(.record))]
    ContrecordLength { lsn: Lsn, record: Option<Lsn>, found: u32, expected: u32 },
    #[error("record at {lsn} fails its CRC check")]
    Crc { lsn: Lsn },
    #[error("invalid record at {lsn}: {reason}")]
    Record { lsn: Lsn, reason: RecordError },
    #[error("cannot start decoding at {lsn}: {reason}")]
    InvalidStart { lsn: Lsn, reason: &'static str },
}

impl DecodeError {
    /// The LSN the error is about.
    pub fn lsn(&self) -> Lsn {
        match self {
            DecodeError::Page(p) => p.lsn(),
            DecodeError::RecordLength { lsn, .. }
            | DecodeError::ResourceManager { lsn, .. }
            | DecodeError::PrevLink { lsn, .. }
            | DecodeError::UnexpectedContrecord { lsn }
            | DecodeError::MissingContrecord { lsn, .. }
            | DecodeError::ContrecordLength { lsn, .. }
            | DecodeError::Crc { lsn }
            | DecodeError::Record { lsn, .. }
            | DecodeError::InvalidStart { lsn, .. } => *lsn,
        }
    }

    /// True for what unwritten space looks like: a zero record length or a zero page.
    pub fn is_end_of_wal(&self) -> bool {
        match self {
            DecodeError::RecordLength { len: 0, .. } => true,
            DecodeError::Page(p) => p.is_zero_page(),
            _ => false,
        }
    }
}

/// One record, decoded. Holds a copy of the record's bytes; block images, block data and
/// main data are slices of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    pub lsn: Lsn,
    /// First byte after the record (not rounded up to the alignment).
    pub end_lsn: Lsn,
    pub header: XLogRecord,
    pub blocks: Vec<DecodedBkpBlock>,
    pub layout: RecordLayout,
    /// Set on the first record after a record that was abandoned because its continuation
    /// was overwritten (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`): the abandoned record's LSN.
    pub after_overwritten: Option<Lsn>,
    raw: Vec<u8>,
    version: &'static PgVersion,
}

impl DecodedRecord {
    /// The whole record as stored in the WAL (header included, page headers removed).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn main_data(&self) -> &[u8] {
        self.raw.get(self.layout.main_data.clone()).unwrap_or(&[])
    }

    /// Payload of block reference `i` (not its image).
    pub fn block_data(&self, i: usize) -> &[u8] {
        self.blocks.get(i).and_then(|b| self.raw.get(b.data.clone())).unwrap_or(&[])
    }

    /// Stored (possibly compressed, hole removed) page image of block reference `i`.
    pub fn block_image(&self, i: usize) -> &[u8] {
        self.blocks.get(i).and_then(|b| self.raw.get(b.bkp_image.clone())).unwrap_or(&[])
    }

    pub fn rmid(&self) -> u8 {
        self.header.xl_rmid
    }

    /// Name pg_waldump shows for the rmgr (`custom###` for custom ones).
    pub fn rmgr_name(&self) -> String {
        match rmgr::rmgr_name(self.header.xl_rmid) {
            Some(n) => n.to_string(),
            None => format!("custom{:03}", self.header.xl_rmid),
        }
    }

    pub fn xid(&self) -> TransactionId {
        self.header.xl_xid
    }

    /// Total length minus full-page images, as pg_waldump's `len (rec/tot)` shows first.
    pub fn rec_len(&self) -> u32 {
        self.header.xl_tot_len - self.layout.fpi_len
    }

    /// The PostgreSQL major whose format the record was decoded with.
    pub fn pg_major(&self) -> u32 {
        self.version.major
    }

    /// What the record does to relation files beyond its block references (smgr create and
    /// truncate, database copies and drops); `None` for every other record.
    pub fn storage_change(&self) -> Result<Option<rmgr::StorageChange>, RmgrDataError> {
        rmgr::storage_change(self.header.xl_rmid, self.header.xl_info, self.main_data(), self.version)
    }

    /// What the record means (commits, checkpoints, ...).
    pub fn kind(&self) -> Result<RecordKind, RmgrDataError> {
        rmgr::record_kind(self.header.xl_rmid, self.header.xl_info, self.header.xl_xid, self.main_data(), self.version)
    }
}

/// What the decoder checks WAL pages against; unset fields are learnt from the first page.
/// A decoder started in the middle of a page has not seen that page's header: give
/// `pg_major` then, or records before the next page are decoded with the tested major's
/// (15) block-image flags.
#[derive(Clone, Debug, Default)]
pub struct DecoderOptions {
    /// Required major (its page magic is enforced); `None` accepts any known one, then
    /// sticks to it.
    pub pg_major: Option<u32>,
    pub system_identifier: Option<u64>,
    /// Highest page timeline accepted.
    pub max_timeline: Option<u32>,
}

/// WAL is never read from this position on: the last 4 GiB of the address space, a segment
/// boundary for every segment size. Keeping every position the reader computes (a page or
/// segment further, a record's end) below `u64::MAX` makes LSNs read from a damaged or hostile
/// pg_control or manifest unable to overflow, and no real cluster writes 16 EiB of WAL.
pub const READ_LIMIT: Lsn = Lsn(0xFFFF_FFFF_0000_0000);

/// Feed-bytes / next-record WAL decoder.
///
/// Created at a position and fed the WAL bytes from that position on, in order and in
/// chunks of any size. At a page boundary (for instance a segment start) a record tail that
/// began earlier is skipped; elsewhere the position must be the start of a record. Records
/// crossing pages and segments are reassembled, after an `XLOG_SWITCH` the rest of the
/// segment is passed over, and a record whose continuation was overwritten
/// (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`) is dropped as PostgreSQL does.
///
/// ```no_run
/// # fn demo(segment: &[u8]) -> Result<(), pgkeep_wal::DecodeError> {
/// use pgkeep_wal::{Lsn, WalDecoder};
/// let mut dec = WalDecoder::new(Lsn(0x3000000), 16 * 1024 * 1024)?;
/// dec.feed(segment);
/// while let Some(rec) = dec.next_record()? {
///     println!("{} {} {:?}", rec.lsn, rec.rmgr_name(), rec.kind());
/// }
/// # Ok(()) }
/// ```
pub struct WalDecoder {
    reader: Reader,
    buf: Vec<u8>,
    buf_start: u64,
    failed: Option<DecodeError>,
    blocks: Vec<DecodedBkpBlock>,
}

impl WalDecoder {
    /// A decoder reading from `start` in WAL with segments of `seg_size` bytes.
    pub fn new(start: Lsn, seg_size: u32) -> Result<WalDecoder, DecodeError> {
        WalDecoder::with_options(start, seg_size, DecoderOptions::default())
    }

    pub fn with_options(start: Lsn, seg_size: u32, opts: DecoderOptions) -> Result<WalDecoder, DecodeError> {
        if !is_valid_wal_seg_size(seg_size) {
            return Err(DecodeError::InvalidStart { lsn: start, reason: "invalid wal segment size" });
        }
        if start >= READ_LIMIT {
            return Err(DecodeError::InvalidStart { lsn: start, reason: "past the end of the wal address space" });
        }
        let version = match opts.pg_major {
            Some(m) => Some(
                version::by_major(m)
                    .ok_or(DecodeError::InvalidStart { lsn: start, reason: "unknown PostgreSQL major" })?,
            ),
            None => None,
        };
        let rules =
            PageRules { seg_size, version, system_identifier: opts.system_identifier, max_tli: opts.max_timeline };
        let off = start.page_offset() as usize;
        let reader = if off == 0 {
            Reader::at_page(rules, start.0)
        } else {
            let header = if start.segment_offset(seg_size) < XLOG_BLCKSZ as u32 {
                SIZE_OF_XLOG_LONG_PHD
            } else {
                SIZE_OF_XLOG_SHORT_PHD
            };
            if off % 8 != 0 || off < header {
                return Err(DecodeError::InvalidStart {
                    lsn: start,
                    reason: "not a page boundary and not a possible record start",
                });
            }
            Reader::idle(rules, start.0)
        };
        Ok(WalDecoder { reader, buf: Vec::new(), buf_start: start.0, failed: None, blocks: Vec::new() })
    }

    /// Appends the next bytes of WAL.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.compact();
        if self.buf.is_empty() {
            // After a switch record the reader jumps to the next segment: bytes before that
            // are never looked at.
            let need = self.reader.min_needed();
            if need > self.buf_start {
                let skip = usize::try_from(need - self.buf_start).unwrap_or(usize::MAX).min(bytes.len());
                bytes = &bytes[skip..];
                self.buf_start += skip as u64;
            }
        }
        // Bytes past the read limit are never WAL this decoder reads.
        let room = usize::try_from(READ_LIMIT.0.saturating_sub(self.fed_until().0)).unwrap_or(usize::MAX);
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Appends bytes that begin at `at`. Bytes already fed are not fed again, and `at` may lie
    /// past the end of what was fed when the decoder needs nothing before it (the rest of a
    /// segment after an `XLOG_SWITCH`, which a reader need not fetch). Returns false, feeding
    /// nothing, when the skipped bytes are still needed.
    pub fn feed_at(&mut self, at: Lsn, bytes: &[u8]) -> bool {
        let fed = self.fed_until().0;
        if at.0 > fed {
            if self.reader.min_needed() < at.0 {
                return false;
            }
            self.buf.clear();
            self.buf_start = at.0;
            self.feed(bytes);
        } else {
            let skip = usize::try_from(fed - at.0).unwrap_or(usize::MAX).min(bytes.len());
            self.feed(&bytes[skip..]);
        }
        true
    }

    fn compact(&mut self) {
        let need = self.reader.min_needed();
        let drop = usize::try_from(need.saturating_sub(self.buf_start)).unwrap_or(usize::MAX).min(self.buf.len());
        if drop > 0 && (drop >= self.buf.len() / 2 || drop >= 1 << 20) {
            self.buf.drain(..drop);
            self.buf_start += drop as u64;
        }
    }

    /// The next complete record, `Ok(None)` when more bytes are needed. After an error the
    /// decoder stays failed and returns the same error.
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.step();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn step(&mut self) -> Result<Option<DecodedRecord>, DecodeError> {
        let src = Source { start: self.buf_start, data: &self.buf };
        let raw = match self.reader.next(&src)? {
            Step::NeedMore => return Ok(None),
            Step::Record(r) => r,
        };
        let version = raw.version;
        let layout = decode_body(raw.bytes, version, &mut self.blocks)
            .map_err(|reason| DecodeError::Record { lsn: Lsn(raw.lsn), reason })?;
        Ok(Some(DecodedRecord {
            lsn: Lsn(raw.lsn),
            end_lsn: Lsn(raw.end),
            header: raw.header,
            blocks: self.blocks.clone(),
            layout,
            raw: raw.bytes.to_vec(),
            after_overwritten: raw.after_overwritten.map(Lsn),
            version,
        }))
    }

    /// Where the next record is expected (or the page it starts on).
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.reader.next)
    }

    /// LSN of the last record returned.
    pub fn last_record(&self) -> Option<Lsn> {
        self.reader.prev.map(Lsn)
    }

    /// End of the bytes fed so far.
    pub fn fed_until(&self) -> Lsn {
        Lsn(self.buf_start + self.buf.len() as u64)
    }

    /// The major learnt from the page headers (or given).
    pub fn pg_major(&self) -> Option<u32> {
        self.reader.pages.version().map(|v| v.major)
    }

    pub fn system_identifier(&self) -> Option<u64> {
        self.reader.pages.system_identifier()
    }
}
