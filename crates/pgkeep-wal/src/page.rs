//! WAL page headers and their validation. // access/xlog_internal.h

use crate::bytes::{u16_at, u32_at, u64_at};
use crate::lsn::{Lsn, TimeLineID};
use crate::version::{self, PgVersion};

/// Size of a WAL page. Every supported build uses the default; a page header announcing
/// another size is reported, not followed. // pg_config.h XLOG_BLCKSZ
pub const XLOG_BLCKSZ: usize = 8192;

/// `SizeOfXLogShortPHD`: MAXALIGN(sizeof(XLogPageHeaderData)). // access/xlog_internal.h
pub const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
/// `SizeOfXLogLongPHD`: MAXALIGN(sizeof(XLogLongPageHeaderData)). // access/xlog_internal.h
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

/// The page starts with the rest of a record begun on an earlier page. // access/xlog_internal.h
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page carries `XLogLongPageHeaderData` (first page of a segment). // access/xlog_internal.h
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Full-page images starting on this page are optional (13–18: still defined in REL_18_STABLE). // access/xlog_internal.h
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;

/// Header at the start of every WAL page. // access/xlog_internal.h
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct XLogPageHeaderData {
    pub xlp_magic: u16,
    pub xlp_info: u16,
    /// Timeline of the first record that starts on the page.
    pub xlp_tli: TimeLineID,
    pub xlp_pageaddr: Lsn,
    /// Bytes of a record continued from the previous page (with `XLP_FIRST_IS_CONTRECORD`).
    pub xlp_rem_len: u32,
}

/// Header of a segment's first page. // access/xlog_internal.h
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct XLogLongPageHeaderData {
    pub std: XLogPageHeaderData,
    /// `system_identifier` of the cluster that wrote the segment.
    pub xlp_sysid: u64,
    pub xlp_seg_size: u32,
    pub xlp_xlog_blcksz: u32,
}

impl XLogPageHeaderData {
    /// Reads the short header; `None` when fewer than 24 bytes are given.
    pub fn parse(b: &[u8]) -> Option<XLogPageHeaderData> {
        Some(XLogPageHeaderData {
            xlp_magic: u16_at(b, 0)?,
            xlp_info: u16_at(b, 2)?,
            xlp_tli: u32_at(b, 4)?,
            xlp_pageaddr: Lsn(u64_at(b, 8)?),
            xlp_rem_len: u32_at(b, 16)?,
        })
    }

    pub fn is_long(&self) -> bool {
        self.xlp_info & XLP_LONG_HEADER != 0
    }

    pub fn is_contrecord(&self) -> bool {
        self.xlp_info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// `XLogPageHeaderSize`: where record data starts on the page. // access/xlog_internal.h
    pub fn header_size(&self) -> usize {
        if self.is_long() {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        }
    }
}

impl XLogLongPageHeaderData {
    /// Reads the long header; `None` when fewer than 40 bytes are given.
    pub fn parse(b: &[u8]) -> Option<XLogLongPageHeaderData> {
        Some(XLogLongPageHeaderData {
            std: XLogPageHeaderData::parse(b)?,
            xlp_sysid: u64_at(b, 24)?,
            xlp_seg_size: u32_at(b, 32)?,
            xlp_xlog_blcksz: u32_at(b, 36)?,
        })
    }
}

fn expected_magic(e: &Option<u16>) -> String {
    match e {
        Some(m) => format!("expected {m:04X}"),
        None => format!("not the magic of any known PostgreSQL major: {}", version::known_majors()),
    }
}

/// A page header that cannot belong to the WAL being read. Each names the page by LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("wal page at {lsn} is cut short: {len} bytes where its header needs {need}")]
    Truncated { lsn: Lsn, len: usize, need: usize },
    #[error("invalid page magic {found:04X} at {lsn} ({})", expected_magic(.expected))]
    BadMagic { lsn: Lsn, found: u16, expected: Option<u16> },
    #[error("invalid page info bits {info:04X} at {lsn}")]
    InfoBits { lsn: Lsn, info: u16 },
    #[error("first page of the segment at {lsn} lacks the long header (info bits {info:04X})")]
    MissingLongHeader { lsn: Lsn, info: u16 },
    #[error("page at {lsn} has a long header but is not the first page of a segment")]
    UnexpectedLongHeader { lsn: Lsn },
    #[error("wal segment at {lsn} belongs to database system {found}, not {expected}")]
    SystemIdentifier { lsn: Lsn, found: u64, expected: u64 },
    #[error("wal segment at {lsn} says its segment size is {found} bytes (expected {expected})")]
    SegmentSize { lsn: Lsn, found: u32, expected: u32 },
    #[error("wal segment at {lsn} says its page size is {found} bytes (expected 8192)")]
    BlockSize { lsn: Lsn, found: u32 },
    #[error("page at {lsn} carries page address {found} (a page from elsewhere in the wal)")]
    PageAddress { lsn: Lsn, found: Lsn },
    #[error("page at {lsn} has timeline {found}, newer than the file's timeline {max}")]
    TimelineAhead { lsn: Lsn, found: TimeLineID, max: TimeLineID },
    #[error("page at {lsn} has timeline {found}, older than timeline {previous} of an earlier page")]
    TimelineBackwards { lsn: Lsn, found: TimeLineID, previous: TimeLineID },
    #[error("page at {lsn} has timeline 0")]
    TimelineZero { lsn: Lsn },
    #[error("page at {lsn} has xlp_rem_len {rem_len} inconsistent with its info bits {info:04X}")]
    RemainingLength { lsn: Lsn, info: u16, rem_len: u32 },
}

impl PageError {
    /// LSN of the page the error is about.
    pub fn lsn(&self) -> Lsn {
        match *self {
            PageError::Truncated { lsn, .. }
            | PageError::BadMagic { lsn, .. }
            | PageError::InfoBits { lsn, .. }
            | PageError::MissingLongHeader { lsn, .. }
            | PageError::UnexpectedLongHeader { lsn }
            | PageError::SystemIdentifier { lsn, .. }
            | PageError::SegmentSize { lsn, .. }
            | PageError::BlockSize { lsn, .. }
            | PageError::PageAddress { lsn, .. }
            | PageError::TimelineAhead { lsn, .. }
            | PageError::TimelineBackwards { lsn, .. }
            | PageError::TimelineZero { lsn }
            | PageError::RemainingLength { lsn, .. } => lsn,
        }
    }

    /// True when the page is simply not written yet (all-zero header): how the end of WAL
    /// looks in a partially filled or pre-allocated segment.
    pub fn is_zero_page(&self) -> bool {
        matches!(self, PageError::BadMagic { found: 0, .. })
    }
}

/// What a page header must match. Fields left `None` are learnt from the first page seen
/// and enforced from then on.
#[derive(Clone, Debug)]
pub struct PageRules {
    pub seg_size: u32,
    pub version: Option<&'static PgVersion>,
    pub system_identifier: Option<u64>,
    /// Highest acceptable `xlp_tli` (the timeline in the file name, when known).
    pub max_tli: Option<TimeLineID>,
}

/// The parts of a validated header the record reader needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    pub lsn: Lsn,
    pub header_size: usize,
    pub xlp_info: u16,
    pub xlp_tli: TimeLineID,
    pub xlp_rem_len: u32,
    pub contrecord: bool,
    pub overwrite_contrecord: bool,
}

/// Validates consecutive page headers, learning the major and system identifier from the
/// first page and requiring the timeline never to go backwards.
#[derive(Clone, Debug)]
pub struct PageValidator {
    pub rules: PageRules,
    last_tli: TimeLineID,
}

impl PageValidator {
    pub fn new(rules: PageRules) -> PageValidator {
        PageValidator { rules, last_tli: 0 }
    }

    pub fn version(&self) -> Option<&'static PgVersion> {
        self.rules.version
    }

    pub fn system_identifier(&self) -> Option<u64> {
        self.rules.system_identifier
    }

    /// Checks the header of the page at `lsn` (page-aligned); `page` holds at least the
    /// header (more is ignored).
    pub fn check(&mut self, page: &[u8], lsn: Lsn) -> Result<PageInfo, PageError> {
        let hdr = XLogPageHeaderData::parse(page).ok_or(PageError::Truncated {
            lsn,
            len: page.len(),
            need: SIZE_OF_XLOG_SHORT_PHD,
        })?;
        let version = match self.rules.version {
            Some(v) if v.xlog_page_magic == hdr.xlp_magic => v,
            Some(v) => {
                return Err(PageError::BadMagic { lsn, found: hdr.xlp_magic, expected: Some(v.xlog_page_magic) })
            }
            None => version::by_page_magic(hdr.xlp_magic).ok_or(PageError::BadMagic {
                lsn,
                found: hdr.xlp_magic,
                expected: None,
            })?,
        };
        if hdr.xlp_info & !version.xlp_all_flags != 0 {
            return Err(PageError::InfoBits { lsn, info: hdr.xlp_info });
        }
        let at_segment_start = lsn.segment_offset(self.rules.seg_size) == 0;
        if hdr.is_long() {
            if !at_segment_start {
                return Err(PageError::UnexpectedLongHeader { lsn });
            }
            let long = XLogLongPageHeaderData::parse(page).ok_or(PageError::Truncated {
                lsn,
                len: page.len(),
                need: SIZE_OF_XLOG_LONG_PHD,
            })?;
            if let Some(expected) = self.rules.system_identifier {
                if long.xlp_sysid != expected {
                    return Err(PageError::SystemIdentifier { lsn, found: long.xlp_sysid, expected });
                }
            }
            if long.xlp_seg_size != self.rules.seg_size {
                return Err(PageError::SegmentSize { lsn, found: long.xlp_seg_size, expected: self.rules.seg_size });
            }
            if long.xlp_xlog_blcksz as usize != XLOG_BLCKSZ {
                return Err(PageError::BlockSize { lsn, found: long.xlp_xlog_blcksz });
            }
            self.rules.system_identifier = Some(long.xlp_sysid);
        } else if at_segment_start {
            return Err(PageError::MissingLongHeader { lsn, info: hdr.xlp_info });
        }
        if hdr.xlp_pageaddr != lsn {
            return Err(PageError::PageAddress { lsn, found: hdr.xlp_pageaddr });
        }
        if hdr.xlp_tli == 0 {
            return Err(PageError::TimelineZero { lsn });
        }
        if let Some(max) = self.rules.max_tli {
            if hdr.xlp_tli > max {
                return Err(PageError::TimelineAhead { lsn, found: hdr.xlp_tli, max });
            }
        }
        if hdr.xlp_tli < self.last_tli {
            return Err(PageError::TimelineBackwards { lsn, found: hdr.xlp_tli, previous: self.last_tli });
        }
        let contrecord = hdr.is_contrecord();
        let overwrite = hdr.xlp_info & version.xlp_first_is_overwrite_contrecord != 0;
        // PostgreSQL sets xlp_rem_len exactly when it sets XLP_FIRST_IS_CONTRECORD, and a
        // page cannot both continue a record and replace a lost continuation.
        if (contrecord && (hdr.xlp_rem_len == 0 || overwrite)) || (!contrecord && hdr.xlp_rem_len != 0) {
            return Err(PageError::RemainingLength { lsn, info: hdr.xlp_info, rem_len: hdr.xlp_rem_len });
        }
        self.last_tli = hdr.xlp_tli;
        self.rules.version = Some(version);
        Ok(PageInfo {
            lsn,
            header_size: hdr.header_size(),
            xlp_info: hdr.xlp_info,
            xlp_tli: hdr.xlp_tli,
            xlp_rem_len: hdr.xlp_rem_len,
            contrecord,
            overwrite_contrecord: overwrite,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn long_page(lsn: u64, tli: u32, info: u16, rem: u32, sysid: u64, seg: u32) -> Vec<u8> {
        let mut p = vec![0u8; XLOG_BLCKSZ];
        p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        p[2..4].copy_from_slice(&(info | XLP_LONG_HEADER).to_le_bytes());
        p[4..8].copy_from_slice(&tli.to_le_bytes());
        p[8..16].copy_from_slice(&lsn.to_le_bytes());
        p[16..20].copy_from_slice(&rem.to_le_bytes());
        p[24..32].copy_from_slice(&sysid.to_le_bytes());
        p[32..36].copy_from_slice(&seg.to_le_bytes());
        p[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
        p
    }

    fn rules() -> PageRules {
        PageRules { seg_size: 1 << 20, version: None, system_identifier: Some(42), max_tli: Some(2) }
    }

    #[test]
    fn accepts_a_good_first_page_and_learns_the_major() {
        let mut v = PageValidator::new(rules());
        let info = v.check(&long_page(0x100000, 1, 0, 0, 42, 1 << 20), Lsn(0x100000)).unwrap();
        assert_eq!(info.header_size, SIZE_OF_XLOG_LONG_PHD);
        assert_eq!(v.version().unwrap().major, 15);
    }

    #[test]
    fn each_field_is_checked() {
        let good = long_page(0x100000, 1, 0, 0, 42, 1 << 20);
        let at = Lsn(0x100000);
        let check = |p: &[u8]| PageValidator::new(rules()).check(p, at).unwrap_err();
        let mut p = good.clone();
        p[0] = 0;
        p[1] = 0;
        let e = check(&p);
        assert!(e.is_zero_page());
        assert!(e.to_string().starts_with("invalid page magic 0000 at 0/100000 (not the magic"), "{e}");
        let mut p = good.clone();
        p[2] |= 0x10;
        assert!(matches!(check(&p), PageError::InfoBits { .. }));
        let mut p = good.clone();
        p[24] ^= 1;
        assert_eq!(check(&p), PageError::SystemIdentifier { lsn: at, found: 43, expected: 42 });
        let mut p = good.clone();
        p[8] = 0x20;
        assert!(matches!(check(&p), PageError::PageAddress { .. }));
        let mut p = good.clone();
        p[4] = 3;
        assert!(matches!(check(&p), PageError::TimelineAhead { found: 3, max: 2, .. }));
        let mut p = good.clone();
        p[34] = 0x20;
        assert!(matches!(check(&p), PageError::SegmentSize { .. }));
        let mut p = good.clone();
        p[16] = 1;
        assert!(matches!(check(&p), PageError::RemainingLength { .. }));
        assert!(matches!(check(&good[..30]), PageError::Truncated { need: 40, .. }));
        assert!(matches!(
            PageValidator::new(rules()).check(&good, Lsn(0x102000)),
            Err(PageError::UnexpectedLongHeader { .. })
        ));
        let mut want16 = rules();
        want16.version = crate::version::by_major(16);
        let e = PageValidator::new(want16).check(&good, at).unwrap_err();
        assert_eq!(e.to_string(), "invalid page magic D110 at 0/100000 (expected D113)");
    }
}
