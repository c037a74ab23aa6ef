//! TEMPORARY STUB in main while the real crate is built on branch `wal`; replaced on merge.
use std::fmt;
use std::str::FromStr;

pub type TimeLineID = u32;
pub type XLogSegNo = u64;
pub const XLOG_BLCKSZ: usize = 8192;

#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
    pub fn segment_number(self, seg_size: u32) -> XLogSegNo {
        self.0 / seg_size as u64
    }
    pub fn segment_offset(self, seg_size: u32) -> u32 {
        (self.0 % seg_size as u64) as u32
    }
    pub fn segment_start(segno: XLogSegNo, seg_size: u32) -> Lsn {
        Lsn(segno * seg_size as u64)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected the form X/Y in hexadecimal, e.g. 0/16B3740")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| ParseLsnError(s.into()))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| ParseLsnError(s.into()))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| ParseLsnError(s.into()))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub fn xlog_file_name(tli: TimeLineID, segno: XLogSegNo, seg_size: u32) -> String {
    let per = 0x1_0000_0000u64 / seg_size as u64;
    format!("{:08X}{:08X}{:08X}", tli, segno / per, segno % per)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileName {
    Segment { tli: TimeLineID, segno: XLogSegNo },
    Partial { tli: TimeLineID, segno: XLogSegNo },
    History { tli: TimeLineID },
    BackupHistory { tli: TimeLineID, segno: XLogSegNo, offset: u32 },
}

pub fn parse_wal_file_name(name: &str, seg_size: u32) -> Option<WalFileName> {
    let hex = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
    let seg = |s: &str| -> Option<(TimeLineID, XLogSegNo)> {
        if s.len() != 24 || !hex(&s[0..8]) || !hex(&s[8..16]) || !hex(&s[16..24]) {
            return None;
        }
        let tli = u32::from_str_radix(&s[0..8], 16).ok()?;
        let log = u64::from_str_radix(&s[8..16], 16).ok()?;
        let sg = u64::from_str_radix(&s[16..24], 16).ok()?;
        let per = 0x1_0000_0000u64 / seg_size as u64;
        if sg >= per {
            return None;
        }
        Some((tli, log * per + sg))
    };
    if let Some(t) = name.strip_suffix(".history") {
        return hex(t).then(|| WalFileName::History { tli: u32::from_str_radix(t, 16).unwrap_or(0) });
    }
    if let Some(b) = name.strip_suffix(".partial") {
        return seg(b).map(|(tli, segno)| WalFileName::Partial { tli, segno });
    }
    if let Some(b) = name.strip_suffix(".backup") {
        let (s, off) = b.split_once('.')?;
        let (tli, segno) = seg(s)?;
        if !hex(off) {
            return None;
        }
        return Some(WalFileName::BackupHistory { tli, segno, offset: u32::from_str_radix(off, 16).ok()? });
    }
    seg(name).map(|(tli, segno)| WalFileName::Segment { tli, segno })
}

// ---- stub validation (header level only) ----
pub struct SegmentExpectations {
    pub tli: TimeLineID,
    pub segno: XLogSegNo,
    pub seg_size: u32,
    pub system_identifier: Option<u64>,
    pub pg_major: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct SegmentSummary {
    pub system_identifier: u64,
    pub pg_major: u32,
    pub records: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("file is {len} bytes, a WAL segment here is {expected}")]
    WrongLength { len: usize, expected: usize },
    #[error("invalid page magic {found:04X} at offset {offset}")]
    BadMagic { offset: usize, found: u16 },
    #[error("page at offset {offset} has address {found}, expected {expected}")]
    PageAddress { offset: usize, expected: Lsn, found: Lsn },
    #[error("page at offset {offset} is on timeline {found}, file is timeline {expected}")]
    Timeline { offset: usize, found: u32, expected: u32 },
    #[error("WAL is from a different database system: system identifier {found}, expected {expected}")]
    SystemIdentifier { found: u64, expected: u64 },
    #[error("segment size in header is {found}, expected {expected}")]
    SegmentSize { found: u32, expected: u32 },
}

fn magic_major(m: u16) -> Option<u32> {
    match m {
        0xD106 => Some(13),
        0xD10D => Some(14),
        0xD110 => Some(15),
        0xD113 => Some(16),
        0xD116 => Some(17),
        _ => None,
    }
}

pub fn validate_segment(data: &[u8], e: &SegmentExpectations, _previous_segment: Option<&[u8]>) -> Result<SegmentSummary, SegmentError> {
    if data.len() != e.seg_size as usize {
        return Err(SegmentError::WrongLength { len: data.len(), expected: e.seg_size as usize });
    }
    validate_pages(data, e, false)
}

pub fn validate_partial_segment(data: &[u8], e: &SegmentExpectations, _previous_segment: Option<&[u8]>) -> Result<SegmentSummary, SegmentError> {
    if data.len() != e.seg_size as usize {
        return Err(SegmentError::WrongLength { len: data.len(), expected: e.seg_size as usize });
    }
    validate_pages(data, e, true)
}

fn validate_pages(data: &[u8], e: &SegmentExpectations, partial: bool) -> Result<SegmentSummary, SegmentError> {
    let mut sum = SegmentSummary::default();
    let u16at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u32at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let mut off = 0;
    while off < data.len() {
        let magic = u16at(off);
        if magic == 0 && off > 0 && data[off..off + XLOG_BLCKSZ].iter().all(|&b| b == 0) {
            if partial || off > 0 {
                break;
            }
        }
        let Some(major) = magic_major(magic) else { return Err(SegmentError::BadMagic { offset: off, found: magic }) };
        sum.pg_major = major;
        let tli = u32at(off + 4);
        if tli > e.tli {
            return Err(SegmentError::Timeline { offset: off, found: tli, expected: e.tli });
        }
        let addr = Lsn(u64at(off + 8));
        let expected = Lsn(e.segno * e.seg_size as u64 + off as u64);
        if addr != expected {
            return Err(SegmentError::PageAddress { offset: off, expected, found: addr });
        }
        if off == 0 {
            let sysid = u64at(24);
            if let Some(x) = e.system_identifier {
                if x != sysid {
                    return Err(SegmentError::SystemIdentifier { found: sysid, expected: x });
                }
            }
            sum.system_identifier = sysid;
            let ss = u32at(32);
            if ss != e.seg_size {
                return Err(SegmentError::SegmentSize { found: ss, expected: e.seg_size });
            }
        }
        off += XLOG_BLCKSZ;
    }
    Ok(sum)
}

#[derive(Debug, Clone)]
pub struct TimeLineHistoryEntry {
    pub tli: TimeLineID,
    pub switch_lsn: Lsn,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid timeline history line {line}: {text:?}")]
pub struct HistoryError {
    pub line: usize,
    pub text: String,
}

pub fn parse_timeline_history(text: &str) -> Result<Vec<TimeLineHistoryEntry>, HistoryError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut it = t.split('\t');
        let err = || HistoryError { line: i + 1, text: l.to_string() };
        let tli = it.next().and_then(|s| s.trim().parse().ok()).ok_or_else(err)?;
        let lsn = it.next().and_then(|s| s.trim().parse().ok()).ok_or_else(err)?;
        out.push(TimeLineHistoryEntry { tli, switch_lsn: lsn, reason: it.collect::<Vec<_>>().join("\t") });
    }
    Ok(out)
}

pub struct ControlFileData {
    pub system_identifier: u64,
    pub xlog_seg_size: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("pg_control is too short ({0} bytes)")]
pub struct ControlError(usize);

pub fn parse_pg_control(b: &[u8]) -> Result<ControlFileData, ControlError> {
    if b.len() < 296 {
        return Err(ControlError(b.len()));
    }
    Ok(ControlFileData {
        system_identifier: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        xlog_seg_size: u32::from_le_bytes(b[228..232].try_into().unwrap()),
    })
}
