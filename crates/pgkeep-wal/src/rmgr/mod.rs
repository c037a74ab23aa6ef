//! Resource managers, and decoding the few record kinds a backup tool cares about
//! (transaction ends, checkpoints, switches, restore points, end of recovery).
//! // access/rmgrlist.h, access/rmgr.h

pub mod storage;
pub mod xact;
pub mod xlog;

use crate::lsn::{Lsn, TimeLineID, TimestampTz, TransactionId};
use crate::version::PgVersion;

pub use storage::{storage_change, StorageChange};
pub use xlog::CheckPoint;

/// // access/rmgrlist.h
pub const RM_XLOG_ID: u8 = 0;
/// // access/rmgrlist.h
pub const RM_XACT_ID: u8 = 1;
/// Highest built-in rmgr id (`RM_MAX_BUILTIN_ID`, the same in 13–18: no rmgr was added since 13's LogicalMessage). // access/rmgr.h, access/rmgrlist.h
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// First id available to extensions' custom rmgrs (15+). // access/rmgr.h
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// Built-in rmgr names, as pg_waldump prints them. // access/rmgrlist.h
pub const RMGR_NAMES: [&str; RM_MAX_BUILTIN_ID as usize + 1] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// Name of a built-in rmgr, `None` for custom or unknown ids.
pub fn rmgr_name(rmid: u8) -> Option<&'static str> {
    RMGR_NAMES.get(rmid as usize).copied()
}

/// `RmgrIdIsValid`: built-in, or in the custom range where the major allows custom rmgrs.
/// // access/rmgr.h
pub fn rmid_is_valid(rmid: u8, version: &PgVersion) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || (version.has_custom_rmgrs && rmid >= RM_MIN_CUSTOM_ID)
}

/// What a record means, for the kinds pgkeep acts on. Everything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "kind", rename_all = "snake_case"))]
pub enum RecordKind {
    /// A transaction commit; `xid` is the top-level transaction.
    Commit {
        xid: TransactionId,
        commit_time: TimestampTz,
        subxacts: Vec<TransactionId>,
    },
    Abort {
        xid: TransactionId,
        abort_time: TimestampTz,
        subxacts: Vec<TransactionId>,
    },
    /// `COMMIT PREPARED`; `xid` is the prepared transaction's.
    CommitPrepared {
        xid: TransactionId,
        commit_time: TimestampTz,
        subxacts: Vec<TransactionId>,
        gid: Option<String>,
    },
    AbortPrepared {
        xid: TransactionId,
        abort_time: TimestampTz,
        subxacts: Vec<TransactionId>,
        gid: Option<String>,
    },
    /// `PREPARE TRANSACTION` of `xid`.
    Prepare {
        xid: TransactionId,
    },
    /// A checkpoint record (`online` = `XLOG_CHECKPOINT_ONLINE`, otherwise a shutdown or
    /// end-of-recovery checkpoint). `checkpoint` is the whole `CheckPoint` body.
    Checkpoint {
        online: bool,
        redo: Lsn,
        tli: TimeLineID,
        prev_tli: TimeLineID,
        next_xid: u64,
        checkpoint: CheckPoint,
    },
    RestorePoint {
        name: String,
        time: TimestampTz,
    },
    Switch,
    EndOfRecovery {
        tli: TimeLineID,
        prev_tli: TimeLineID,
        time: TimestampTz,
    },
    /// Marks that the record at `overwritten_lsn` was never completed (15+, and backported).
    OverwriteContrecord {
        overwritten_lsn: Lsn,
        time: TimestampTz,
    },
    /// End of an online backup that started with redo at `start`.
    BackupEnd {
        start: Lsn,
    },
    Other {
        rmid: u8,
        info: u8,
    },
}

/// Why a record's main data could not be read as its kind says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rmgr} record with info {info:02X} has malformed main data ({len} bytes)")]
pub struct RmgrDataError {
    pub rmgr: &'static str,
    pub info: u8,
    pub len: usize,
}

/// Decodes the kinds listed in [`RecordKind`] from a record's rmgr, info bits, xid and
/// main data.
pub fn record_kind(
    rmid: u8,
    xl_info: u8,
    xl_xid: TransactionId,
    main_data: &[u8],
    version: &PgVersion,
) -> Result<RecordKind, RmgrDataError> {
    let info = xl_info & crate::record::XLR_RMGR_INFO_MASK;
    match rmid {
        RM_XACT_ID => xact::decode(xl_info, xl_xid, main_data, version),
        RM_XLOG_ID => xlog::decode(info, main_data, version),
        _ => Ok(RecordKind::Other { rmid, info }),
    }
}
