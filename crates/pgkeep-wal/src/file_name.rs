//! WAL, timeline-history and backup-history file names. // access/xlog_internal.h

use crate::lsn::{Lsn, TimeLineID, XLogSegNo};

/// Length of a segment file name (`XLOG_FNAME_LEN`). // access/xlog_internal.h
pub const XLOG_FNAME_LEN: usize = 24;

/// Smallest and largest `wal_segment_size` (`WalSegMinSize`, `WalSegMaxSize`).
/// // access/xlog_internal.h
pub const WAL_SEG_MIN_SIZE: u32 = 1024 * 1024;
pub const WAL_SEG_MAX_SIZE: u32 = 1024 * 1024 * 1024;

/// `IsValidWalSegSize`: a power of two from 1 MiB to 1 GiB. // access/xlog_internal.h
pub const fn is_valid_wal_seg_size(size: u32) -> bool {
    size.is_power_of_two() && size >= WAL_SEG_MIN_SIZE && size <= WAL_SEG_MAX_SIZE
}

/// Segments per 4 GiB "xlogid" (`XLogSegmentsPerXLogId`): the middle 8 hex digits of a
/// segment name count these, the last 8 the segment within one. // access/xlog_internal.h
///
/// An invalid size of 0 counts as 1 (see [`Lsn::segment_number`]): the result is never 0.
pub const fn segments_per_xlog_id(seg_size: u32) -> u64 {
    0x1_0000_0000 / if seg_size == 0 { 1 } else { seg_size as u64 }
}

/// `XLogFileName`: `TTTTTTTTXXXXXXXXYYYYYYYY`. // access/xlog_internal.h
pub fn xlog_file_name(tli: TimeLineID, segno: XLogSegNo, seg_size: u32) -> String {
    let per = segments_per_xlog_id(seg_size);
    format!("{:08X}{:08X}{:08X}", tli, (segno / per) as u32, (segno % per) as u32)
}

/// `TLHistoryFileName`: `TTTTTTTT.history`. // access/xlog_internal.h
pub fn history_file_name(tli: TimeLineID) -> String {
    format!("{tli:08X}.history")
}

/// `BackupHistoryFileName`: the segment name of the backup's start, then its offset in
/// that segment: `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`. // access/xlog_internal.h
pub fn backup_history_file_name(tli: TimeLineID, start: Lsn, seg_size: u32) -> String {
    format!(
        "{}.{:08X}.backup",
        xlog_file_name(tli, start.segment_number(seg_size), seg_size),
        start.segment_offset(seg_size)
    )
}

/// The kinds of file that appear in `pg_wal/` and in a WAL archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "kind", rename_all = "snake_case"))]
pub enum WalFileName {
    /// A complete segment.
    Segment { tli: TimeLineID, segno: XLogSegNo },
    /// The last, incomplete segment of a timeline that was left at promotion or written by
    /// pg_receivewal (`.partial`).
    Partial { tli: TimeLineID, segno: XLogSegNo },
    /// A timeline history file (`.history`).
    History { tli: TimeLineID },
    /// A backup history file (`.backup`); `offset` is the backup start's offset in `segno`.
    BackupHistory { tli: TimeLineID, segno: XLogSegNo, offset: u32 },
}

impl WalFileName {
    pub fn tli(&self) -> TimeLineID {
        match *self {
            WalFileName::Segment { tli, .. }
            | WalFileName::Partial { tli, .. }
            | WalFileName::History { tli }
            | WalFileName::BackupHistory { tli, .. } => tli,
        }
    }

    /// The file name this value was parsed from.
    pub fn file_name(&self, seg_size: u32) -> String {
        match *self {
            WalFileName::Segment { tli, segno } => xlog_file_name(tli, segno, seg_size),
            WalFileName::Partial { tli, segno } => {
                format!("{}.partial", xlog_file_name(tli, segno, seg_size))
            }
            WalFileName::History { tli } => history_file_name(tli),
            WalFileName::BackupHistory { tli, segno, offset } => {
                format!("{}.{offset:08X}.backup", xlog_file_name(tli, segno, seg_size))
            }
        }
    }
}

fn hex8(s: &str) -> Option<u32> {
    // PostgreSQL only ever writes uppercase and checks names with
    // strspn(.., "0123456789ABCDEF"), so lowercase is a foreign file.
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Timeline and segment number of a 24-character segment name, refusing timeline 0 and a
/// low part that does not fit the segment size (e.g. `...00000100` with 16 MiB segments).
fn parse_segment(name: &str, seg_size: u32) -> Option<(TimeLineID, XLogSegNo)> {
    if name.len() != XLOG_FNAME_LEN || !is_valid_wal_seg_size(seg_size) {
        return None;
    }
    let tli = hex8(name.get(0..8)?)?;
    let log = hex8(name.get(8..16)?)? as u64;
    let seg = hex8(name.get(16..24)?)? as u64;
    let per = segments_per_xlog_id(seg_size);
    if tli == 0 || seg >= per {
        return None;
    }
    Some((tli, log * per + seg))
}

/// Recognises the names PostgreSQL gives archived files; anything else is `None`.
///
/// ```
/// use pgkeep_wal::{parse_wal_file_name, WalFileName};
/// let seg = 16 * 1024 * 1024;
/// assert_eq!(
///     parse_wal_file_name("000000010000000000000003", seg),
///     Some(WalFileName::Segment { tli: 1, segno: 3 })
/// );
/// assert_eq!(parse_wal_file_name("00000002.history", seg), Some(WalFileName::History { tli: 2 }));
/// ```
pub fn parse_wal_file_name(name: &str, seg_size: u32) -> Option<WalFileName> {
    if let Some(stem) = name.strip_suffix(".partial") {
        let (tli, segno) = parse_segment(stem, seg_size)?;
        return Some(WalFileName::Partial { tli, segno });
    }
    if let Some(stem) = name.strip_suffix(".history") {
        let tli = hex8(stem)?;
        return (tli != 0).then_some(WalFileName::History { tli });
    }
    if let Some(stem) = name.strip_suffix(".backup") {
        let (seg_part, off_part) = (stem.get(..XLOG_FNAME_LEN)?, stem.get(XLOG_FNAME_LEN..)?);
        let off_part = off_part.strip_prefix('.')?;
        let (tli, segno) = parse_segment(seg_part, seg_size)?;
        let offset = hex8(off_part)?;
        if offset >= seg_size {
            return None;
        }
        return Some(WalFileName::BackupHistory { tli, segno, offset });
    }
    let (tli, segno) = parse_segment(name, seg_size)?;
    Some(WalFileName::Segment { tli, segno })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u32 = 16 * 1024 * 1024;
    const MB1: u32 = 1024 * 1024;

    #[test]
    fn names_round_trip() {
        assert_eq!(xlog_file_name(1, 3, MB16), "000000010000000000000003");
        assert_eq!(xlog_file_name(1, 0x100, MB16), "000000010000000100000000");
        assert_eq!(xlog_file_name(2, 0x1000, MB1), "000000020000000100000000");
        assert_eq!(history_file_name(0x1A), "0000001A.history");
        assert_eq!(backup_history_file_name(1, Lsn(0x3000028), MB16), "000000010000000000000003.00000028.backup");
        let cases = [
            ("000000010000000000000003", WalFileName::Segment { tli: 1, segno: 3 }),
            ("0000000A00000001000000FF", WalFileName::Segment { tli: 10, segno: 0x1FF }),
            ("000000010000000000000003.partial", WalFileName::Partial { tli: 1, segno: 3 }),
            ("00000002.history", WalFileName::History { tli: 2 }),
            ("000000010000000000000003.00000028.backup", WalFileName::BackupHistory { tli: 1, segno: 3, offset: 0x28 }),
        ];
        for (name, want) in cases {
            assert_eq!(parse_wal_file_name(name, MB16), Some(want), "{name}");
            assert_eq!(want.file_name(MB16), name);
        }
    }

    #[test]
    fn rejects_foreign_names() {
        for bad in [
            "",
            "00000001000000000000003",
            "0000000100000000000000030",
            "00000001000000000000000g",
            "00000001000000000000000a",
            "000000000000000000000003",
            "000000010000000000000100",
            "000000010000000000000003.partia",
            "0000001.history",
            "00000000.history",
            "000000010000000000000003.backup",
            "000000010000000000000003.01000000.backup",
            "000000010000000000000003_00000028.backup",
            "000000010000000000000003.0000002.backup",
            "000000010000000000000003.gz",
            "ééééééééééééééééééééééé",
        ] {
            assert_eq!(parse_wal_file_name(bad, MB16), None, "{bad:?}");
        }
        // With 1 MiB segments the low part may reach 0xFFF.
        assert_eq!(
            parse_wal_file_name("000000010000000000000FFF", MB1),
            Some(WalFileName::Segment { tli: 1, segno: 0xFFF })
        );
        assert_eq!(parse_wal_file_name("000000010000000000000003", 12345), None);
    }
}
