//! XLOG rmgr records: checkpoints, switches, restore points, end of recovery.
//! // catalog/pg_control.h, access/xlog_internal.h

#![allow(non_snake_case)]

use super::{RecordKind, RmgrDataError, RM_XLOG_ID};
use crate::bytes::{c_string, i32_at, i64_at, u32_at, u64_at, u8_at};
use crate::lsn::{pg_time_t, Lsn, Oid, TimeLineID, TimestampTz, TransactionId};
use crate::version::{ControlLayout, PgVersion};

/// // catalog/pg_control.h
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
/// // catalog/pg_control.h
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
/// // catalog/pg_control.h
pub const XLOG_NOOP: u8 = 0x20;
/// // catalog/pg_control.h
pub const XLOG_NEXTOID: u8 = 0x30;
/// // catalog/pg_control.h
pub const XLOG_SWITCH: u8 = 0x40;
/// // catalog/pg_control.h
pub const XLOG_BACKUP_END: u8 = 0x50;
/// // catalog/pg_control.h
pub const XLOG_PARAMETER_CHANGE: u8 = 0x60;
/// // catalog/pg_control.h
pub const XLOG_RESTORE_POINT: u8 = 0x70;
/// // catalog/pg_control.h
pub const XLOG_FPW_CHANGE: u8 = 0x80;
/// // catalog/pg_control.h
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
/// // catalog/pg_control.h
pub const XLOG_FPI_FOR_HINT: u8 = 0xA0;
/// // catalog/pg_control.h
pub const XLOG_FPI: u8 = 0xB0;
/// // catalog/pg_control.h
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// 17+. // catalog/pg_control.h
pub const XLOG_CHECKPOINT_REDO: u8 = 0xE0;

/// Length of a restore point name buffer (`MAXFNAMELEN`). // access/xlog_internal.h
pub const MAXFNAMELEN: usize = 64;

/// `FullTransactionId`: epoch in the high 32 bits, xid in the low. // access/transam.h
pub type FullTransactionId = u64;

/// Body of checkpoint records, also kept in pg_control. // catalog/pg_control.h
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CheckPoint {
    /// Where replay must start (the REDO point).
    pub redo: Lsn,
    pub ThisTimeLineID: TimeLineID,
    /// Differs from `ThisTimeLineID` only in the checkpoint that starts a timeline.
    pub PrevTimeLineID: TimeLineID,
    pub fullPageWrites: bool,
    /// 17+ only (`None` before).
    pub wal_level: Option<i32>,
    pub nextXid: FullTransactionId,
    pub nextOid: Oid,
    pub nextMulti: u32,
    pub nextMultiOffset: u32,
    pub oldestXid: TransactionId,
    pub oldestXidDB: Oid,
    pub oldestMulti: u32,
    pub oldestMultiDB: Oid,
    pub time: pg_time_t,
    pub oldestCommitTsXid: TransactionId,
    pub newestCommitTsXid: TransactionId,
    pub oldestActiveXid: TransactionId,
}

/// `sizeof(CheckPoint)` in every supported layout (13–18). // catalog/pg_control.h
pub const SIZEOF_CHECKPOINT: usize = 88;

impl CheckPoint {
    /// Reads a `CheckPoint` laid out as `layout` says, from its first byte.
    pub fn parse(b: &[u8], layout: ControlLayout) -> Option<CheckPoint> {
        if b.len() < SIZEOF_CHECKPOINT {
            return None;
        }
        Some(CheckPoint {
            redo: Lsn(u64_at(b, 0)?),
            ThisTimeLineID: u32_at(b, 8)?,
            PrevTimeLineID: u32_at(b, 12)?,
            fullPageWrites: u8_at(b, 16)? != 0,
            // C alignment leaves 3 bytes after the bool; 17 put an int in the 4 after those.
            wal_level: if layout.checkpoint_has_wal_level() { Some(i32_at(b, 20)?) } else { None },
            nextXid: u64_at(b, 24)?,
            nextOid: u32_at(b, 32)?,
            nextMulti: u32_at(b, 36)?,
            nextMultiOffset: u32_at(b, 40)?,
            oldestXid: u32_at(b, 44)?,
            oldestXidDB: u32_at(b, 48)?,
            oldestMulti: u32_at(b, 52)?,
            oldestMultiDB: u32_at(b, 56)?,
            time: i64_at(b, 64)?,
            oldestCommitTsXid: u32_at(b, 72)?,
            newestCommitTsXid: u32_at(b, 76)?,
            oldestActiveXid: u32_at(b, 80)?,
        })
    }

    /// `nextXid` as pg_controldata prints it: `epoch:xid`.
    pub fn next_xid_display(&self) -> String {
        format!("{}:{}", self.nextXid >> 32, self.nextXid as u32)
    }
}

pub(super) fn decode(info: u8, data: &[u8], version: &PgVersion) -> Result<RecordKind, RmgrDataError> {
    let err = || RmgrDataError { rmgr: "XLOG", info, len: data.len() };
    Ok(match info {
        XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
            let cp = CheckPoint::parse(data, version.control_layout).ok_or_else(err)?;
            RecordKind::Checkpoint {
                online: info == XLOG_CHECKPOINT_ONLINE,
                redo: cp.redo,
                tli: cp.ThisTimeLineID,
                prev_tli: cp.PrevTimeLineID,
                next_xid: cp.nextXid,
                checkpoint: cp,
            }
        }
        XLOG_SWITCH => RecordKind::Switch,
        // xl_restore_point { TimestampTz rp_time; char rp_name[MAXFNAMELEN]; }
        XLOG_RESTORE_POINT => {
            let name = data.get(8..8 + MAXFNAMELEN).ok_or_else(err)?;
            RecordKind::RestorePoint { name: c_string(name), time: TimestampTz(i64_at(data, 0).ok_or_else(err)?) }
        }
        // xl_end_of_recovery { TimestampTz end_time; TimeLineID ThisTimeLineID, PrevTimeLineID; ... }
        XLOG_END_OF_RECOVERY => RecordKind::EndOfRecovery {
            time: TimestampTz(i64_at(data, 0).ok_or_else(err)?),
            tli: u32_at(data, 8).ok_or_else(err)?,
            prev_tli: u32_at(data, 12).ok_or_else(err)?,
        },
        // xl_overwrite_contrecord { XLogRecPtr overwritten_lsn; TimestampTz overwrite_time; }
        XLOG_OVERWRITE_CONTRECORD => RecordKind::OverwriteContrecord {
            overwritten_lsn: Lsn(u64_at(data, 0).ok_or_else(err)?),
            time: TimestampTz(i64_at(data, 8).ok_or_else(err)?),
        },
        XLOG_BACKUP_END => RecordKind::BackupEnd { start: Lsn(u64_at(data, 0).ok_or_else(err)?) },
        _ => RecordKind::Other { rmid: RM_XLOG_ID, info },
    })
}
