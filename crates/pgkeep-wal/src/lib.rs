//! PostgreSQL's on-disk WAL and pg_control formats, for pgkeep.
//!
//! Pure code: every function is handed bytes (or text) and returns values; nothing here
//! reads files, spawns processes, prints or blocks. Structures keep PostgreSQL's names so
//! they can be read beside the C headers they mirror. Input is never trusted: every read is
//! bounds-checked and damaged or hostile bytes produce errors, never panics.
//!
//! PostgreSQL 14–18 are tested (15 most deeply); the page magics and layouts of 13–18 are known
//! ([`version`]), and anything else is reported as unknown rather than misread. Layouts
//! assume a little-endian host (x86-64, aarch64).
//!
//! # API at a glance
//!
//! Positions and names ([`lsn`], [`file_name`]):
//! - `pub struct Lsn(pub u64)` (`XLogRecPtr`): `Display`/`FromStr` as `X/Y` (`0/16B3740`),
//!   `Ord`, `Hash`, `Copy`, `Lsn::INVALID`, `fn segment_number(self, seg_size: u32) -> XLogSegNo`,
//!   `fn segment_offset(self, seg_size: u32) -> u32`,
//!   `fn segment_start(segno: XLogSegNo, seg_size: u32) -> Lsn`.
//! - `type TimeLineID = u32`, `type XLogSegNo = u64`, [`TimestampTz`] (µs since 2000-01-01,
//!   displayed like PostgreSQL in UTC).
//! - `fn xlog_file_name(tli: TimeLineID, segno: XLogSegNo, seg_size: u32) -> String`,
//!   [`history_file_name`], [`backup_history_file_name`],
//!   `fn parse_wal_file_name(name: &str, seg_size: u32) -> Option<WalFileName>` with
//!   [`WalFileName`] `Segment{tli, segno}`, `Partial{tli, segno}`, `History{tli}`,
//!   `BackupHistory{tli, segno, offset}`.
//!
//! Validating a segment before it is acknowledged ([`validate`]):
//! - `fn validate_segment(data: &[u8], expect: &SegmentExpectations, previous_segment:
//!   Option<&[u8]>) -> Result<SegmentSummary, SegmentError>` for a complete segment;
//! - `fn validate_partial_segment(..same..) -> Result<SegmentSummary, SegmentError>` for a
//!   `.partial`, where the WAL may stop early ([`SegmentSummary::partial_end`] says where and
//!   whether the rest is zero-filled).
//! - [`SegmentValidator`]: the same checks fed in chunks (`new`/`partial(expect, previous)`,
//!   `feed(&[u8])`, `finish() -> Result<SegmentSummary, SegmentError>`), with exactly the
//!   verdicts of the two functions above, which are this validator fed once.
//! - [`SegmentExpectations`] `{ tli, segno, seg_size, system_identifier: Option<u64>,
//!   pg_major: Option<u32> }` (or `SegmentExpectations::from_file_name(name, seg_size)`).
//! - [`SegmentError`] names the offset or LSN: `BadMagic`, `PageAddress`, `Timeline`,
//!   `SystemIdentifier`, `SegmentSize`, `WrongLength`, `RecordCrc`, `InvalidRecord`,
//!   `UnexpectedEnd`, `AfterSwitch`, `DataAfterEnd`, ...
//!
//! Reading records ([`decoder`], [`rmgr`]):
//! - [`WalDecoder`]: `fn new(start: Lsn, seg_size: u32) -> Result<WalDecoder, DecodeError>`,
//!   `fn with_options(start, seg_size, DecoderOptions)`, `fn feed(&mut self, bytes: &[u8])`,
//!   `fn next_record(&mut self) -> Result<Option<DecodedRecord>, DecodeError>`. Handles records
//!   crossing pages and segments, switch records, and overwritten continuation records.
//! - [`DecodedRecord`] `{ lsn, end_lsn, header: XLogRecord, blocks: Vec<DecodedBkpBlock>, .. }`
//!   with `main_data()`, `block_data(i)`, `block_image(i)`, `raw()`, `rmgr_name()`, and
//!   `fn kind(&self) -> Result<RecordKind, RmgrDataError>`.
//! - [`RecordKind`]: `Commit{xid, commit_time, subxacts}`, `Abort{..}`, `CommitPrepared{..}`,
//!   `AbortPrepared{..}`, `Prepare{xid}`, `Checkpoint{online, redo, tli, prev_tli, next_xid,
//!   checkpoint}`, `RestorePoint{name, time}`, `Switch`, `EndOfRecovery{tli, prev_tli, time}`,
//!   `OverwriteContrecord{..}`, `BackupEnd{start}`, `Other{rmid, info}`.
//!
//! Forensics ([`inspect`]):
//! - `fn inspect_wal(start: &ReplayStart, files: &[String], load: &mut dyn FnMut(&str) ->
//!   SegmentFile) -> WalInspection`: replays from pg_control's redo point as crash recovery
//!   would, judges the stop (end of WAL or damage), salvages CRC-valid records after it, and
//!   lists damaged segments ([`Problem`], [`ProblemKind`]) and the commits at risk.
//!
//! Other files ([`control`], [`history`]):
//! - `fn parse_pg_control(bytes: &[u8]) -> Result<ControlFileData, ControlError>`
//!   (CRC-32C checked; control versions 1300 = PostgreSQL 13–16, 1700 = 17, 1800 = 18).
//! - `fn parse_timeline_history(text: &str) -> Result<Vec<TimeLineHistoryEntry>, HistoryError>`,
//!   [`timeline_of`], and `fn parse_backup_label(text: &str) -> Result<BackupLabel,
//!   BackupLabelError>` for `backup_label` and `.backup` files.
//!
//! Lower layers are public too: [`page`] (page headers and their validation), [`record`]
//! (`XLogRecord`, [`record::record_crc`], [`record::decode_body`]) and [`version`] (what
//! differs per major).
//!
//! With the `serde` feature, report types implement `Serialize`; [`Lsn`] (also
//! `Deserialize`) and [`TimestampTz`] serialize as their display strings.

mod bytes;
pub mod control;
pub mod decoder;
pub mod file_name;
pub mod history;
pub mod inspect;
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
    backup_history_file_name, history_file_name, is_valid_wal_seg_size, parse_wal_file_name, xlog_file_name,
    WalFileName,
};
pub use history::{
    parse_backup_label, parse_timeline_history, timeline_of, BackupLabel, BackupLabelError, HistoryError,
    TimeLineHistoryEntry,
};
pub use inspect::{
    inspect_wal, CommitInfo, DamagedSegment, FileRole, FileState, Problem, ProblemKind, ReplayStart, ReplayStop,
    SegmentFile, StopCause, WalInspection,
};
pub use lsn::{Lsn, Oid, ParseLsnError, TimeLineID, TimestampTz, TransactionId, XLogSegNo};
pub use page::{PageError, XLogLongPageHeaderData, XLogPageHeaderData, XLOG_BLCKSZ};
pub use record::{DecodedBkpBlock, RecordError, RelFileNode, XLogRecord};
pub use rmgr::{CheckPoint, RecordKind, RmgrDataError, StorageChange};
pub use validate::{
    validate_partial_segment, validate_segment, LeadingContinuation, PartialEnd, RestorePointInfo, SegmentError,
    SegmentExpectations, SegmentSummary, SegmentValidator,
};
