//! WAL positions, segment arithmetic and the small scalar types shared by every module.

use std::fmt;
use std::str::FromStr;

/// Timeline identifier. // access/xlogdefs.h
pub type TimeLineID = u32;
/// Physical WAL segment number (LSN / segment size). // access/xlogdefs.h
pub type XLogSegNo = u64;
/// 32-bit transaction id. // c.h
pub type TransactionId = u32;
/// Object id. // postgres_ext.h
pub type Oid = u32;
/// Seconds since the Unix epoch, as stored in pg_control and checkpoints. // pgtime.h
#[allow(non_camel_case_types)]
pub type pg_time_t = i64;

/// Records start on MAXALIGN (8-byte) boundaries on every platform PostgreSQL supports
/// with 64-bit WAL pointers. // c.h MAXIMUM_ALIGNOF
pub const MAXIMUM_ALIGNOF: u64 = 8;

/// Rounds up to the next MAXALIGN boundary. // c.h MAXALIGN
#[inline]
pub const fn maxalign(x: u64) -> u64 {
    (x + (MAXIMUM_ALIGNOF - 1)) & !(MAXIMUM_ALIGNOF - 1)
}

/// A segment size usable as a divisor: 0 (never valid) counts as 1.
const fn seg_divisor(seg_size: u32) -> u64 {
    if seg_size == 0 {
        1
    } else {
        seg_size as u64
    }
}

/// A WAL position (`XLogRecPtr`). Prints and parses as PostgreSQL does: `16/B374D848`,
/// uppercase hex, no zero padding. // access/xlogdefs.h
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: no position. // access/xlogdefs.h
    pub const INVALID: Lsn = Lsn(0);

    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// Segment holding this byte (`XLByteToSeg`). // access/xlog_internal.h
    ///
    /// The segment functions take sizes read from files (a manifest, `pgkeep.info`): an
    /// invalid size of 0 computes as 1 and products saturate, so a bad size gives wrong
    /// numbers, never a panic. Callers that read a size check [`crate::is_valid_wal_seg_size`].
    pub const fn segment_number(self, seg_size: u32) -> XLogSegNo {
        self.0 / seg_divisor(seg_size)
    }

    /// Segment holding the byte just before this position (`XLByteToPrevSeg`): the
    /// segment a record *ending* here was written to. // access/xlog_internal.h
    pub const fn prev_segment_number(self, seg_size: u32) -> XLogSegNo {
        self.0.saturating_sub(1) / seg_divisor(seg_size)
    }

    /// Offset inside its segment (`XLogSegmentOffset`). // access/xlog_internal.h
    pub const fn segment_offset(self, seg_size: u32) -> u32 {
        (self.0 & (seg_divisor(seg_size) - 1)) as u32
    }

    /// First byte of a segment (`XLogSegNoOffsetToRecPtr` with offset 0). // access/xlog_internal.h
    pub const fn segment_start(segno: XLogSegNo, seg_size: u32) -> Lsn {
        Lsn(segno.saturating_mul(seg_size as u64))
    }

    /// Position `offset` bytes into segment `segno`.
    pub const fn from_segment_offset(segno: XLogSegNo, offset: u32, seg_size: u32) -> Lsn {
        Lsn(segno.saturating_mul(seg_size as u64).saturating_add(offset as u64))
    }

    /// Offset inside its WAL page.
    pub const fn page_offset(self) -> u32 {
        (self.0 % crate::page::XLOG_BLCKSZ as u64) as u32
    }

    /// Start of the WAL page holding this byte.
    pub const fn page_start(self) -> Lsn {
        Lsn(self.0 - self.0 % crate::page::XLOG_BLCKSZ as u64)
    }

    pub const fn checked_add(self, n: u64) -> Option<Lsn> {
        match self.0.checked_add(n) {
            Some(v) => Some(Lsn(v)),
            None => None,
        }
    }

    /// Bytes from `earlier` to `self`, or `None` when `earlier` is later.
    pub const fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// Rounded up to the record alignment.
    pub const fn maxalign(self) -> Lsn {
        Lsn(maxalign(self.0))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Lsn {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> u64 {
        v.0
    }
}

/// An LSN string that is not `X/Y` with 1–8 hex digits on each side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN \"{0}\" (expected two hex numbers like 0/16B3740)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Accepts what PostgreSQL's `pg_lsn` input accepts: `hi/lo`, 1–8 hex digits each,
    /// either case.
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
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
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC, as in commit and restore-point
/// records. Displays like PostgreSQL's UTC output: `2024-05-01 12:00:00.123456 UTC`.
/// // datatype/timestamp.h
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct TimestampTz(pub i64);

/// Seconds between 1970-01-01 and 2000-01-01 (`POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE` days).
/// // datatype/timestamp.h
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl TimestampTz {
    /// Microseconds since the Unix epoch.
    pub const fn to_unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    pub const fn from_unix_micros(us: i64) -> TimestampTz {
        TimestampTz(us.saturating_sub(PG_EPOCH_UNIX_SECS * 1_000_000))
    }
}

impl fmt::Display for TimestampTz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.to_unix_micros();
        let secs = us.div_euclid(1_000_000);
        let frac = us.rem_euclid(1_000_000);
        let (date, hms) = civil_from_unix(secs);
        write!(f, "{date} {hms}.{frac:06} UTC")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for TimestampTz {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Formats Unix seconds as `YYYY-MM-DD` and `HH:MM:SS` (proleptic Gregorian, UTC).
pub fn civil_from_unix(secs: i64) -> (String, String) {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0x16B3740).to_string(), "0/16B3740");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x0000_0016_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parse_round_trips() {
        for s in ["0/0", "0/16B3740", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("0/16b3740".parse::<Lsn>().unwrap(), Lsn(0x16B3740));
        for bad in ["", "/", "0/", "/0", "0-1", "123456789/0", "0/g", "0/1/2", " 0/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_math() {
        let seg = 16 * 1024 * 1024;
        let l: Lsn = "1/2A000028".parse().unwrap();
        assert_eq!(l.segment_number(seg), 0x12A);
        assert_eq!(l.segment_offset(seg), 0x28);
        assert_eq!(Lsn::segment_start(0x12A, seg), "1/2A000000".parse().unwrap());
        assert_eq!(Lsn(0x3000000).prev_segment_number(seg), 2);
        assert_eq!(Lsn(0x3000001).prev_segment_number(seg), 3);
        assert_eq!(Lsn(13).maxalign(), Lsn(16));
        assert_eq!(Lsn(16).maxalign(), Lsn(16));
    }

    #[test]
    fn timestamps() {
        assert_eq!(TimestampTz(0).to_string(), "2000-01-01 00:00:00.000000 UTC");
        // 2026-11-21 06:48:41.188271 UTC
        let t = TimestampTz::from_unix_micros(1_795_243_721_188_271);
        assert_eq!(t.to_string(), "2026-11-21 06:48:41.188271 UTC");
        assert_eq!(TimestampTz(-1).to_string(), "1999-12-31 23:59:59.999999 UTC");
    }
}
