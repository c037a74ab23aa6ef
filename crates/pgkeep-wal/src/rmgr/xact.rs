//! Transaction-end records. // access/xact.h, backend/access/rmgrdesc/xactdesc.c

use super::{RecordKind, RmgrDataError};
use crate::bytes::Cursor;
use crate::lsn::{TimestampTz, TransactionId};
use crate::version::PgVersion;

/// // access/xact.h
pub const XLOG_XACT_COMMIT: u8 = 0x00;
/// // access/xact.h
pub const XLOG_XACT_PREPARE: u8 = 0x10;
/// // access/xact.h
pub const XLOG_XACT_ABORT: u8 = 0x20;
/// // access/xact.h
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// // access/xact.h
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// // access/xact.h
pub const XLOG_XACT_ASSIGNMENT: u8 = 0x50;
/// // access/xact.h
pub const XLOG_XACT_INVALIDATIONS: u8 = 0x60;
/// The operation part of `xl_info`. // access/xact.h
pub const XLOG_XACT_OPMASK: u8 = 0x70;
/// An `xl_xact_xinfo` follows the fixed part. // access/xact.h
pub const XLOG_XACT_HAS_INFO: u8 = 0x80;

/// `xinfo` bits saying which optional parts follow, in this order. // access/xact.h
pub const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
/// // access/xact.h
pub const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
/// // access/xact.h
pub const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
/// // access/xact.h
pub const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
/// // access/xact.h
pub const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
/// // access/xact.h
pub const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
/// // access/xact.h
pub const XACT_XINFO_HAS_AE_LOCKS: u32 = 1 << 6;
/// // access/xact.h
pub const XACT_XINFO_HAS_GID: u32 = 1 << 7;
/// 15+. // access/xact.h
pub const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// sizeof(RelFileNode). // storage/relfilenode.h
const SIZEOF_RELFILENODE: usize = 12;
/// sizeof(SharedInvalidationMessage). // storage/sinval.h
const SIZEOF_INVAL_MSG: usize = 16;

/// The parts of `xl_xact_commit` / `xl_xact_abort` a backup tool uses, following
/// `ParseCommitRecord` / `ParseAbortRecord`. // access/xact.h xl_xact_parsed_commit
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct xl_xact_parsed {
    pub xact_time: TimestampTz,
    pub xinfo: u32,
    pub subxacts: Vec<TransactionId>,
    pub twophase_xid: Option<TransactionId>,
    pub twophase_gid: Option<String>,
}

/// Parses a commit (`is_commit`) or abort record's main data.
pub fn parse_end_record(info: u8, data: &[u8], is_commit: bool, version: &PgVersion) -> Option<xl_xact_parsed> {
    let mut c = Cursor::new(data);
    let mut p = xl_xact_parsed { xact_time: TimestampTz(c.i64()?), ..Default::default() };
    if info & XLOG_XACT_HAS_INFO != 0 {
        p.xinfo = c.u32()?;
    }
    if p.xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        c.skip(8)?; // xl_xact_dbinfo
    }
    if p.xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = usize::try_from(c.i32()?).ok()?;
        if n > c.remaining() / 4 {
            return None;
        }
        p.subxacts = (0..n).map(|_| c.u32()).collect::<Option<Vec<_>>>()?;
    }
    if p.xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = usize::try_from(c.i32()?).ok()?;
        c.skip(n.checked_mul(SIZEOF_RELFILENODE)?)?;
    }
    if p.xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = usize::try_from(c.i32()?).ok()?;
        c.skip(n.checked_mul(version.sizeof_xact_stats_item)?)?;
    }
    if is_commit && p.xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = usize::try_from(c.i32()?).ok()?;
        c.skip(n.checked_mul(SIZEOF_INVAL_MSG)?)?;
    }
    if p.xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        p.twophase_xid = Some(c.u32()?);
        if p.xinfo & XACT_XINFO_HAS_GID != 0 {
            p.twophase_gid = Some(String::from_utf8_lossy(c.cstr()?).into_owned());
        }
    }
    Some(p)
}

pub(super) fn decode(
    xl_info: u8,
    xl_xid: TransactionId,
    data: &[u8],
    version: &PgVersion,
) -> Result<RecordKind, RmgrDataError> {
    let op = xl_info & XLOG_XACT_OPMASK;
    let err = || RmgrDataError { rmgr: "Transaction", info: xl_info & 0xF0, len: data.len() };
    Ok(match op {
        XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED => {
            let p = parse_end_record(xl_info, data, true, version).ok_or_else(err)?;
            if op == XLOG_XACT_COMMIT {
                RecordKind::Commit { xid: xl_xid, commit_time: p.xact_time, subxacts: p.subxacts }
            } else {
                RecordKind::CommitPrepared {
                    xid: p.twophase_xid.ok_or_else(err)?,
                    commit_time: p.xact_time,
                    subxacts: p.subxacts,
                    gid: p.twophase_gid,
                }
            }
        }
        XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED => {
            let p = parse_end_record(xl_info, data, false, version).ok_or_else(err)?;
            if op == XLOG_XACT_ABORT {
                RecordKind::Abort { xid: xl_xid, abort_time: p.xact_time, subxacts: p.subxacts }
            } else {
                RecordKind::AbortPrepared {
                    xid: p.twophase_xid.ok_or_else(err)?,
                    abort_time: p.xact_time,
                    subxacts: p.subxacts,
                    gid: p.twophase_gid,
                }
            }
        }
        XLOG_XACT_PREPARE => RecordKind::Prepare { xid: xl_xid },
        _ => RecordKind::Other { rmid: super::RM_XACT_ID, info: xl_info & 0xF0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v15() -> &'static PgVersion {
        crate::version::by_major(15).unwrap()
    }

    #[test]
    fn commit_with_subxacts_and_twophase() {
        let mut d = Vec::new();
        d.extend_from_slice(&1234i64.to_le_bytes());
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE
            | XACT_XINFO_HAS_GID;
        d.extend_from_slice(&xinfo.to_le_bytes());
        d.extend_from_slice(&[5, 0, 0, 0, 0x7f, 6, 0, 0]);
        d.extend_from_slice(&2i32.to_le_bytes());
        d.extend_from_slice(&740u32.to_le_bytes());
        d.extend_from_slice(&741u32.to_le_bytes());
        d.extend_from_slice(&1i32.to_le_bytes());
        d.extend_from_slice(&[0u8; 16]);
        d.extend_from_slice(&739u32.to_le_bytes());
        d.extend_from_slice(b"fx\0");
        let p = parse_end_record(XLOG_XACT_HAS_INFO, &d, true, v15()).unwrap();
        assert_eq!(p.subxacts, vec![740, 741]);
        assert_eq!(p.twophase_xid, Some(739));
        assert_eq!(p.twophase_gid.as_deref(), Some("fx"));
        assert_eq!(p.xact_time, TimestampTz(1234));
        // Every truncation is refused, never a panic.
        for n in 0..d.len() {
            let _ = parse_end_record(XLOG_XACT_HAS_INFO, &d[..n], true, v15());
        }
        assert!(parse_end_record(XLOG_XACT_HAS_INFO, &d[..20], true, v15()).is_none());
    }

    #[test]
    fn huge_counts_are_refused() {
        let mut d = vec![0u8; 8];
        d.extend_from_slice(&XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
        d.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(parse_end_record(XLOG_XACT_HAS_INFO, &d, true, v15()).is_none());
        let mut d = vec![0u8; 8];
        d.extend_from_slice(&XACT_XINFO_HAS_RELFILENODES.to_le_bytes());
        d.extend_from_slice(&(-1i32).to_le_bytes());
        assert!(parse_end_record(XLOG_XACT_HAS_INFO, &d, true, v15()).is_none());
    }
}
