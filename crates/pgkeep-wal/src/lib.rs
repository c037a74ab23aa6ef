//! PostgreSQL's on-disk WAL and pg_control formats, for pgkeep.
//!
//! Pure code: every function is handed bytes (or text) and returns values; nothing here
//! reads files, spawns processes, prints or blocks. Structures keep PostgreSQL's names so
//! they can be read beside the C headers they mirror. Input is never trusted: every read is
//! bounds-checked and damaged or hostile bytes produce errors, never panics.
//!
//! PostgreSQL 15 is the tested major; the page magics and layouts of 13–17 are known
//! ([`version`]), and anything else is reported as unknown rather than misread. Layouts
//! assume a little-endian host (x86-64, aarch64).
//!
//! # API at a glance
//!
//! Positions and names:
//! - [`Lsn`] (`XLogRecPtr`): `Display`/`FromStr` as `X/Y`, `Lsn::INVALID`,
//!   [`Lsn::segment_number`], [`Lsn::segment_offset`], [`Lsn::segment_start`].
//! - [`xlog_file_name`], [`history_file_name`], [`backup_history_file_name`],
//!   [`parse_wal_file_name`] → [`WalFileName`] (`Segment`, `Partial`, `History`, `BackupHistory`).
//!
//! Validating a segment before it is acknowledged (`archive-push`):
//! - [`validate_segment`]`(data, &`[`SegmentExpectations`]`, previous_segment) ->
//!   Result<`[`SegmentSummary`]`, `[`SegmentError`]`>` for a complete segment;
//! - [`validate_partial_segment`] for a `.partial` (the WAL may stop early).
//!
//! Reading records:
//! - [`WalDecoder`]: `new(start, seg_size)`, `feed(&[u8])`, `next_record() ->
//!   Result<Option<`[`DecodedRecord`]`>, `[`DecodeError`]`>`; handles records crossing pages and
//!   segments, switch records, and overwritten continuation records.
//! - [`DecodedRecord::kind`] → [`RecordKind`] (`Commit`, `Abort`, `CommitPrepared`,
//!   `AbortPrepared`, `Prepare`, `Checkpoint`, `RestorePoint`, `Switch`, `EndOfRecovery`,
//!   `OverwriteContrecord`, `BackupEnd`, `Other`).
//!
//! Other files:
//! - [`parse_pg_control`] → [`ControlFileData`] (CRC-checked; control versions 1300 and 1700).
//! - [`parse_timeline_history`] → `Vec<`[`TimeLineHistoryEntry`]`>`; [`parse_backup_label`]
//!   for `backup_label` and `.backup` files.
//!
//! With the `serde` feature, report types implement `Serialize`; [`Lsn`] and
//! [`TimestampTz`] serialize as their display strings.

mod bytes;
pub mod control;
pub mod decoder;
pub mod file_name;
pub mod history;
pub mod lsn;
pub mod page;
mod reader;
pub mod record;
pub mod rmgr;
pub mod validate;
pub mod version;

pub use control::{parse_pg_control, ControlError, ControlFileData, DBState};
pub use decoder::{DecodeError, DecodedRecord, DecoderOptions, WalDecoder};
pub use file_name::{
    backup_history_file_name, history_file_name, is_valid_wal_seg_size, parse_wal_file_name,
    xlog_file_name, WalFileName,
};
pub use history::{
    parse_backup_label, parse_timeline_history, timeline_of, BackupLabel, BackupLabelError,
    HistoryError, TimeLineHistoryEntry,
};
pub use lsn::{Lsn, Oid, ParseLsnError, TimeLineID, TimestampTz, TransactionId, XLogSegNo};
pub use page::{PageError, XLogLongPageHeaderData, XLogPageHeaderData, XLOG_BLCKSZ};
pub use record::{DecodedBkpBlock, RecordError, RelFileNode, XLogRecord};
pub use rmgr::{CheckPoint, RecordKind};
pub use validate::{
    validate_partial_segment, validate_segment, LeadingContinuation, PartialEnd, RestorePointInfo,
    SegmentError, SegmentExpectations, SegmentSummary,
};
