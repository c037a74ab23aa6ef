//! Forensics for a data directory whose WAL may be damaged (`pgkeep wal inspect`): what
//! crash recovery would replay from pg_control's redo point, where and why it would stop,
//! whether that stop is the ordinary end of the written WAL or damage, and which committed
//! transactions lie after the redo point — the ones `pg_resetwal` would throw away.
//!
//! Pure like the rest of the crate: the caller hands over pg_control's facts
//! ([`ReplayStart`]), the names of the files in `pg_wal`, and a loader for their bytes.
//!
//! # How a stop is judged
//!
//! Crash recovery (backend/access/transam/xlogrecovery.c) reads from the redo point and
//! treats the first unreadable record as the end of WAL, whatever the reason. An ordinary
//! end looks like a zero page or zero record length (a pre-allocated segment), a page whose
//! header carries an older address (a recycled segment), a missing next file, or a last
//! record cut short by the crash. Damage is everything else, and any of these when there is
//! evidence that WAL was written beyond the stop:
//!
//! - a page header that no ordinary end produces (foreign system identifier, bad magic,
//!   a page address from the future, wrong segment size, impossible info bits);
//! - pages after the stop whose header carries their own address (written in this WAL
//!   history), in the same or a later segment;
//! - CRC-valid records after the stop ("salvage": every 8-byte aligned position of the pages
//!   that are not zero and not recycled is tried as a record start; a hit is read on with
//!   the ordinary decoder, so each salvaged record passed its header, prev-link and CRC
//!   checks);
//! - pg_control's checkpoint record lies beyond the stop (the server cannot start at all).
//!
//! Salvage works segment by segment: a record crossing from one salvaged segment into the
//! next is not counted. A whole segment copied from another cluster under the same name
//! reads as valid records once its header is passed; only its header betrays it.

use crate::control::ControlFileData;
use crate::decoder::{DecodeError, DecodedRecord, DecoderOptions, WalDecoder};
use crate::file_name::{parse_wal_file_name, xlog_file_name, WalFileName};
use crate::lsn::{maxalign, Lsn, TimeLineID, TimestampTz, TransactionId, XLogSegNo};
use crate::page::{
    PageError, PageRules, PageValidator, XLogLongPageHeaderData, XLogPageHeaderData, SIZE_OF_XLOG_LONG_PHD,
    SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ,
};
use crate::record::{record_crc, XLogRecord, MAX_RECORD_LENGTH, SIZE_OF_XLOG_RECORD};
use crate::rmgr::{self, RecordKind};
use crate::validate::{validate_partial_segment, SegmentError, SegmentExpectations};
use crate::version::{self, PgVersion};

/// Where crash recovery starts, from pg_control (`checkPointCopy`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ReplayStart {
    pub system_identifier: u64,
    /// The major that wrote pg_control (`None` when its catalog version is unknown).
    pub pg_major: Option<u32>,
    pub seg_size: u32,
    /// `checkPointCopy.ThisTimeLineID`: crash recovery reads this timeline (and its
    /// ancestors' files for earlier segments).
    pub timeline: TimeLineID,
    pub redo: Lsn,
    pub checkpoint: Lsn,
}

impl ReplayStart {
    pub fn from_control(c: &ControlFileData) -> ReplayStart {
        ReplayStart {
            system_identifier: c.system_identifier,
            pg_major: c.pg_major(),
            seg_size: c.xlog_seg_size,
            timeline: c.checkPointCopy.ThisTimeLineID,
            redo: c.checkPointCopy.redo,
            checkpoint: c.checkPoint,
        }
    }
}

/// A segment file as the loader found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentFile {
    Data(Vec<u8>),
    Missing,
    Unreadable(String),
}

/// A committed transaction found in the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CommitInfo {
    /// LSN of the commit record.
    pub lsn: Lsn,
    pub xid: TransactionId,
    pub time: TimestampTz,
    /// `COMMIT PREPARED` of a prepared transaction.
    pub prepared: bool,
}

impl CommitInfo {
    /// The commit a record carries, if it is one.
    pub fn of(rec: &DecodedRecord) -> Option<CommitInfo> {
        match rec.kind() {
            Ok(RecordKind::Commit { xid, commit_time, .. }) => {
                Some(CommitInfo { lsn: rec.lsn, xid, time: commit_time, prepared: false })
            }
            Ok(RecordKind::CommitPrepared { xid, commit_time, .. }) => {
                Some(CommitInfo { lsn: rec.lsn, xid, time: commit_time, prepared: true })
            }
            _ => None,
        }
    }
}

/// What is wrong with a segment, in the words an operator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
pub enum ProblemKind {
    /// The file is not in `pg_wal` although WAL continues after it (or replay needs it).
    Missing,
    Unreadable,
    /// Shorter than a segment.
    Truncated,
    /// The long page header names another database system.
    ForeignSystemIdentifier,
    BadMagic,
    /// Zero bytes where WAL must be (a zero page, or a zero record length).
    Zeroed,
    /// A page whose header carries another page's address.
    BadPageAddress,
    /// Another page-header problem (info bits, timeline, sizes, continuation lengths).
    InvalidPageHeader,
    CrcMismatch,
    /// A record header or body that is not valid (length, rmgr, prev-link, block headers).
    InvalidRecord,
}

/// One problem of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Problem {
    pub kind: ProblemKind,
    /// The record or page concerned.
    pub lsn: Option<Lsn>,
    /// Byte offset in the segment file.
    pub offset: Option<u32>,
    /// One line: what is wrong, with the numbers.
    pub detail: String,
}

impl Problem {
    fn at(kind: ProblemKind, lsn: Lsn, seg_size: u32, detail: String) -> Problem {
        Problem { kind, lsn: Some(lsn), offset: Some(lsn.segment_offset(seg_size)), detail }
    }

    /// Describes a decoding error met while reading.
    pub fn from_decode_error(e: &DecodeError, seg_size: u32) -> Problem {
        let lsn = e.lsn();
        let off = lsn.segment_offset(seg_size);
        match e {
            DecodeError::Page(p) => Problem::from_page_error(p, seg_size),
            DecodeError::RecordLength { len: 0, .. } => Problem::at(
                ProblemKind::Zeroed,
                lsn,
                seg_size,
                format!("zero bytes at {lsn} (offset {off}) where a record should start"),
            ),
            DecodeError::Crc { .. } => Problem::at(
                ProblemKind::CrcMismatch,
                lsn,
                seg_size,
                format!("CRC mismatch in the record at {lsn} (offset {off})"),
            ),
            other => Problem::at(ProblemKind::InvalidRecord, lsn, seg_size, other.to_string()),
        }
    }

    pub fn from_page_error(p: &PageError, seg_size: u32) -> Problem {
        let lsn = p.lsn();
        let off = lsn.segment_offset(seg_size);
        match *p {
            PageError::SystemIdentifier { found, expected, .. } => Problem::at(
                ProblemKind::ForeignSystemIdentifier,
                lsn,
                seg_size,
                format!(
                    "foreign system identifier: the segment header says database system {found}, this cluster is {expected}"
                ),
            ),
            PageError::BadMagic { found: 0, .. } => {
                Problem::at(ProblemKind::Zeroed, lsn, seg_size, format!("zeroed page at offset {off} ({lsn})"))
            }
            PageError::BadMagic { found, expected, .. } => Problem::at(
                ProblemKind::BadMagic,
                lsn,
                seg_size,
                match expected {
                    Some(x) => format!("bad magic {found:04X} in the page header at offset {off} (expected {x:04X})"),
                    None => format!("bad magic {found:04X} in the page header at offset {off}"),
                },
            ),
            PageError::PageAddress { found, .. } => Problem::at(
                ProblemKind::BadPageAddress,
                lsn,
                seg_size,
                format!(
                    "bad page address at offset {off}: the page header says {found}, expected {lsn}{}",
                    if found < lsn { " (an older page: stale or recycled content)" } else { "" }
                ),
            ),
            PageError::Truncated { .. } => Problem::at(ProblemKind::Truncated, lsn, seg_size, p.to_string()),
            _ => Problem::at(ProblemKind::InvalidPageHeader, lsn, seg_size, p.to_string()),
        }
    }

    /// Describes a whole-segment validation error of the segment starting at `seg_start`.
    pub fn from_segment_error(e: &SegmentError, seg_start: Lsn, seg_size: u32) -> Problem {
        let at_off = |off: u32| Lsn(seg_start.0 + off as u64);
        let mk = |kind, lsn: Lsn, detail: String| Problem::at(kind, lsn, seg_size, detail);
        match e {
            SegmentError::WrongLength { len, expected } => Problem {
                kind: ProblemKind::Truncated,
                lsn: None,
                offset: Some(*len as u32),
                detail: format!("truncated: {len} bytes, a segment has {expected}"),
            },
            SegmentError::SystemIdentifier { found, expected } => mk(
                ProblemKind::ForeignSystemIdentifier,
                seg_start,
                format!(
                    "foreign system identifier: the segment header says database system {found}, this cluster is {expected}"
                ),
            ),
            SegmentError::BadMagic { offset, found: 0, .. } => {
                mk(ProblemKind::Zeroed, at_off(*offset), format!("zeroed page at offset {offset}"))
            }
            SegmentError::BadMagic { offset, .. } => mk(ProblemKind::BadMagic, at_off(*offset), e.to_string()),
            SegmentError::PageAddress { offset, .. } => mk(ProblemKind::BadPageAddress, at_off(*offset), e.to_string()),
            SegmentError::RecordCrc { lsn } => mk(
                ProblemKind::CrcMismatch,
                *lsn,
                format!("CRC mismatch in the record at {lsn} (offset {})", lsn.segment_offset(seg_size)),
            ),
            SegmentError::InvalidRecord { lsn, .. } => mk(ProblemKind::InvalidRecord, *lsn, e.to_string()),
            SegmentError::UnexpectedEnd { lsn } => mk(ProblemKind::Zeroed, *lsn, e.to_string()),
            SegmentError::DataAfterEnd { end, .. } => mk(ProblemKind::InvalidRecord, *end, e.to_string()),
            SegmentError::AfterSwitch { offset, .. }
            | SegmentError::PageInfo { offset, .. }
            | SegmentError::Timeline { offset, .. }
            | SegmentError::PageHeader { offset, .. } => {
                mk(ProblemKind::InvalidPageHeader, at_off(*offset), e.to_string())
            }
            _ => mk(ProblemKind::InvalidPageHeader, seg_start, e.to_string()),
        }
    }
}

/// Why replay stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
pub enum StopCause {
    /// Zero bytes: the unwritten part of a segment.
    Zeroed,
    /// A page with an older address: a recycled segment not yet reused.
    RecycledPage,
    /// The next segment file does not exist.
    NoNextFile,
    /// A record that is not valid (torn by the crash, or damaged).
    InvalidRecord,
    /// A page header no ordinary end of WAL produces.
    BadPageHeader,
    Truncated,
    Unreadable,
}

/// Where and why crash recovery would stop reading.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ReplayStop {
    pub lsn: Lsn,
    /// The file that holds (or should hold) `lsn`.
    pub file: String,
    pub cause: StopCause,
    pub detail: String,
}

/// A segment that is damaged, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DamagedSegment {
    pub file: String,
    pub segno: XLogSegNo,
    pub problem: Problem,
}

/// The role of one file of `pg_wal` in recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
pub enum FileRole {
    /// Before the redo point: not needed by crash recovery.
    BeforeRedo,
    /// Read by replay.
    Replayed,
    Damaged,
    /// Written in this WAL history, intact, but after the damage: replay never gets there.
    AfterDamage,
    /// Pre-allocated or recycled, holding no WAL of this history.
    Unused,
    /// Another timeline than the one recovery follows.
    OtherTimeline,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FileState {
    pub file: String,
    pub role: FileRole,
}

/// The outcome of [`inspect_wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WalInspection {
    pub start: ReplayStart,
    /// End of the last record replay reaches (the redo point itself when not even the first
    /// record can be read).
    pub replay_end: Lsn,
    /// Whether pg_control's checkpoint record is among the records replay reads; without it
    /// PostgreSQL refuses to start ("could not locate a valid checkpoint record").
    pub checkpoint_reachable: bool,
    pub stop: ReplayStop,
    /// True when the stop is damage rather than the end of the written WAL.
    pub damaged: bool,
    pub damaged_segments: Vec<DamagedSegment>,
    pub replayed_records: u64,
    /// Commits replay reaches, after the redo point.
    pub replayed_commits: Vec<CommitInfo>,
    /// CRC-checked records found after the stop.
    pub salvaged_records: u64,
    pub salvaged_commits: Vec<CommitInfo>,
    /// End of the furthest salvaged record: WAL was written at least this far.
    pub salvaged_end: Option<Lsn>,
    /// Commits lost if the server is brought up on this WAL (or forced up with pg_resetwal):
    /// everything after the redo point when the checkpoint is unreachable, else the salvaged
    /// commits after the stop. Empty when nothing is damaged.
    pub commits_at_risk: Vec<CommitInfo>,
    pub files: Vec<FileState>,
    pub notes: Vec<String>,
}

impl WalInspection {
    /// Every commit after the redo point that was found (replayable or salvaged).
    pub fn commits_after_redo(&self) -> impl Iterator<Item = &CommitInfo> {
        self.replayed_commits.iter().chain(self.salvaged_commits.iter())
    }

    /// The furthest point WAL is known to have been written to.
    pub fn known_end(&self) -> Lsn {
        self.salvaged_end.map_or(self.replay_end, |s| s.max(self.replay_end))
    }
}

/// How a page looks, for deciding what was written in this WAL history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageClass {
    /// All zero.
    Zero,
    /// A valid-looking header with an older address (recycled segment).
    Stale,
    /// A valid header with its own address.
    Own,
    /// Anything else.
    Damaged,
}

struct Ctx<'a> {
    start: &'a ReplayStart,
    version: Option<&'static PgVersion>,
}

impl Ctx<'_> {
    fn rules(&self) -> PageRules {
        PageRules {
            seg_size: self.start.seg_size,
            version: self.version,
            system_identifier: Some(self.start.system_identifier),
            max_tli: Some(self.start.timeline),
        }
    }

    fn decoder_options(&self) -> DecoderOptions {
        DecoderOptions {
            pg_major: self.version.map(|v| v.major),
            system_identifier: Some(self.start.system_identifier),
            max_timeline: Some(self.start.timeline),
        }
    }

    fn seg_start(&self, segno: XLogSegNo) -> u64 {
        segno.saturating_mul(self.start.seg_size as u64)
    }

    fn classify(&self, data: &[u8], page_lsn: u64) -> PageClass {
        let Some(page) = data.get(..XLOG_BLCKSZ.min(data.len())) else { return PageClass::Damaged };
        if page.iter().all(|&b| b == 0) {
            return PageClass::Zero;
        }
        if PageValidator::new(self.rules()).check(page, Lsn(page_lsn)).is_ok() {
            return PageClass::Own;
        }
        let Some(h) = XLogPageHeaderData::parse(page) else { return PageClass::Damaged };
        let magic_ok = match self.version {
            Some(v) => v.xlog_page_magic == h.xlp_magic,
            None => version::by_page_magic(h.xlp_magic).is_some(),
        };
        let sysid_ok = !h.is_long()
            || XLogLongPageHeaderData::parse(page).is_some_and(|l| l.xlp_sysid == self.start.system_identifier);
        let aligned = h.xlp_pageaddr.0 % XLOG_BLCKSZ as u64 == 0;
        if magic_ok && sysid_ok && aligned && h.xlp_pageaddr.0 < page_lsn && h.xlp_tli != 0 {
            PageClass::Stale
        } else {
            PageClass::Damaged
        }
    }
}

/// Reads the WAL of a data directory as crash recovery would, and judges what it finds (see
/// the module docs). `files` are the names in `pg_wal` (anything that is not a segment name
/// is ignored); `load` returns a file's bytes by name.
pub fn inspect_wal(start: &ReplayStart, files: &[String], load: &mut dyn FnMut(&str) -> SegmentFile) -> WalInspection {
    let seg_size = start.seg_size;
    let ctx = Ctx { start, version: start.pg_major.and_then(version::by_major) };
    let mut notes = Vec::new();
    if ctx.version.is_none() {
        notes.push("pg_control does not name a known PostgreSQL major; the WAL page magic decides".to_string());
    }
    let redo_seg = start.redo.segment_number(seg_size);

    // Per segment number, the file of the newest timeline not after the one recovery follows.
    let mut chosen: std::collections::BTreeMap<XLogSegNo, (TimeLineID, String)> = Default::default();
    let mut file_states: Vec<FileState> = Vec::new();
    for name in files {
        if let Some(WalFileName::Segment { tli, segno }) = parse_wal_file_name(name, seg_size) {
            if tli > start.timeline {
                file_states.push(FileState { file: name.clone(), role: FileRole::OtherTimeline });
            } else if segno < redo_seg {
                file_states.push(FileState { file: name.clone(), role: FileRole::BeforeRedo });
            } else {
                let e = chosen.entry(segno).or_insert((tli, name.clone()));
                if tli > e.0 {
                    file_states.push(FileState { file: e.1.clone(), role: FileRole::OtherTimeline });
                    *e = (tli, name.clone());
                } else if e.1 != *name {
                    file_states.push(FileState { file: name.clone(), role: FileRole::OtherTimeline });
                }
            }
        }
    }
    let name_of = |segno: XLogSegNo| {
        chosen.get(&segno).map(|(_, n)| n.clone()).unwrap_or_else(|| xlog_file_name(start.timeline, segno, seg_size))
    };
    let mut role: std::collections::BTreeMap<XLogSegNo, FileRole> = Default::default();

    // Phase 1: replay from the redo point.
    let mut replayed_records = 0u64;
    let mut replayed_commits = Vec::new();
    let mut checkpoint_reachable = false;
    let mut replay_end = start.redo;
    let mut stop: Option<(ReplayStop, Option<Problem>, bool)> = None; // (stop, problem, hard)
    let mut current: Option<(XLogSegNo, Vec<u8>)> = None;
    let mut decoder = match WalDecoder::with_options(start.redo, seg_size, ctx.decoder_options()) {
        Ok(d) => Some(d),
        Err(e) => {
            let p = Problem::from_decode_error(&e, seg_size);
            stop = Some((
                ReplayStop {
                    lsn: start.redo,
                    file: name_of(redo_seg),
                    cause: StopCause::InvalidRecord,
                    detail: e.to_string(),
                },
                Some(p),
                true,
            ));
            None
        }
    };
    let mut segno = redo_seg;
    while let Some(dec) = decoder.as_mut() {
        let name = name_of(segno);
        let seg_start = ctx.seg_start(segno);
        let at = Lsn(seg_start.max(start.redo.0));
        let data = match load(&name) {
            SegmentFile::Data(d) => d,
            SegmentFile::Missing => {
                stop = Some((
                    ReplayStop {
                        lsn: at,
                        file: name.clone(),
                        cause: StopCause::NoNextFile,
                        detail: format!("{name} is not in pg_wal"),
                    },
                    Some(Problem {
                        kind: ProblemKind::Missing,
                        lsn: Some(at),
                        offset: None,
                        detail: format!("missing: {name} is not in pg_wal"),
                    }),
                    segno == redo_seg,
                ));
                break;
            }
            SegmentFile::Unreadable(why) => {
                stop = Some((
                    ReplayStop { lsn: at, file: name.clone(), cause: StopCause::Unreadable, detail: why.clone() },
                    Some(Problem {
                        kind: ProblemKind::Unreadable,
                        lsn: Some(at),
                        offset: None,
                        detail: format!("unreadable: {why}"),
                    }),
                    true,
                ));
                break;
            }
        };
        role.insert(segno, FileRole::Replayed);
        if segno == redo_seg {
            // The decoder starts in the middle of a page and so has not seen that page's
            // header, nor the segment's; PostgreSQL checks both before reading the record.
            let mut pages = vec![0u64];
            let redo_page = start.redo.page_start().0 - seg_start;
            if redo_page != 0 {
                pages.push(redo_page);
            }
            let mut bad = None;
            for off in pages {
                let page = data.get(off as usize..).unwrap_or(&[]);
                let page = &page[..page.len().min(XLOG_BLCKSZ)];
                if let Err(e) = PageValidator::new(ctx.rules()).check(page, Lsn(seg_start + off)) {
                    bad = Some(e);
                    break;
                }
            }
            if let Some(e) = bad {
                let (cause, hard) = page_stop_cause(&e);
                stop = Some((
                    ReplayStop { lsn: start.redo, file: name.clone(), cause, detail: e.to_string() },
                    Some(Problem::from_page_error(&e, seg_size)),
                    hard,
                ));
                current = Some((segno, data));
                break;
            }
        }
        let from = (at.0 - seg_start) as usize;
        dec.feed(data.get(from..).unwrap_or(&[]));
        let mut failed = None;
        loop {
            match dec.next_record() {
                Ok(Some(rec)) => {
                    replayed_records += 1;
                    replay_end = rec.end_lsn;
                    if rec.lsn == start.checkpoint {
                        checkpoint_reachable = true;
                    }
                    if let Some(c) = CommitInfo::of(&rec) {
                        replayed_commits.push(c);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            let (cause, hard) = match &e {
                DecodeError::Page(p) => page_stop_cause(p),
                DecodeError::RecordLength { len: 0, .. } => (StopCause::Zeroed, false),
                _ => (StopCause::InvalidRecord, false),
            };
            let lsn = e.lsn();
            let file = name_of(lsn.segment_number(seg_size));
            let seg_of_stop = lsn.segment_number(seg_size);
            stop = Some((
                ReplayStop { lsn, file, cause, detail: e.to_string() },
                Some(Problem::from_decode_error(&e, seg_size)),
                hard,
            ));
            current = if seg_of_stop == segno { Some((segno, data)) } else { None };
            break;
        }
        if data.len() < seg_size as usize {
            let lsn = Lsn(seg_start + data.len() as u64);
            stop = Some((
                ReplayStop {
                    lsn,
                    file: name.clone(),
                    cause: StopCause::Truncated,
                    detail: format!("{name} is {} bytes long, a segment has {seg_size}", data.len()),
                },
                Some(Problem {
                    kind: ProblemKind::Truncated,
                    lsn: Some(lsn),
                    offset: Some(data.len() as u32),
                    detail: format!("truncated: {} bytes, a segment has {seg_size}", data.len()),
                }),
                true,
            ));
            current = Some((segno, data));
            break;
        }
        segno += 1;
    }
    let (stop, stop_problem, hard) = stop.unwrap_or_else(|| {
        // Unreachable in practice (the loop ends with a stop), kept total.
        (
            ReplayStop {
                lsn: replay_end,
                file: name_of(replay_end.segment_number(seg_size)),
                cause: StopCause::NoNextFile,
                detail: "end of the files".into(),
            },
            None,
            false,
        )
    });
    let stop_seg = stop.lsn.segment_number(seg_size);

    // Phase 2: look past the stop for WAL that was written there.
    let mut salvaged = Salvage::default();
    let mut own_after = false;
    let mut later_damage: Vec<DamagedSegment> = Vec::new();
    let mut in_use_after: Vec<XLogSegNo> = Vec::new();
    let last_seg = chosen.keys().next_back().copied().unwrap_or(stop_seg).max(stop_seg);
    for s in stop_seg..=last_seg {
        let seg_start = ctx.seg_start(s);
        let data = match current.take() {
            Some((cs, d)) if cs == s => d,
            _ => {
                if !chosen.contains_key(&s) {
                    continue;
                }
                match load(&name_of(s)) {
                    SegmentFile::Data(d) => d,
                    _ => continue,
                }
            }
        };
        let from = if s == stop_seg { stop.lsn.0.max(seg_start) } else { seg_start };
        let stop_page = stop.lsn.page_start().0;
        let mut own_here = false;
        let mut page = from - from % XLOG_BLCKSZ as u64;
        while page < seg_start + data.len() as u64 {
            let off = (page - seg_start) as usize;
            if page > stop_page && ctx.classify(&data[off..], page) == PageClass::Own {
                own_here = true;
                break;
            }
            page += XLOG_BLCKSZ as u64;
        }
        let before = salvaged.records;
        salvage_segment(&ctx, &data, seg_start, from, &mut salvaged);
        let found_records = salvaged.records > before;
        if s != stop_seg {
            if own_here || found_records {
                in_use_after.push(s);
                let expect = SegmentExpectations {
                    tli: chosen.get(&s).map_or(start.timeline, |c| c.0),
                    segno: s,
                    seg_size,
                    system_identifier: Some(start.system_identifier),
                    pg_major: ctx.version.map(|v| v.major),
                };
                match validate_partial_segment(&data, &expect, None) {
                    Err(e) => {
                        later_damage.push(DamagedSegment {
                            file: name_of(s),
                            segno: s,
                            problem: Problem::from_segment_error(&e, Lsn(seg_start), seg_size),
                        });
                        role.insert(s, FileRole::Damaged);
                    }
                    Ok(_) => {
                        role.insert(s, FileRole::AfterDamage);
                    }
                }
            } else {
                role.insert(s, FileRole::Unused);
            }
        }
        own_after |= own_here;
    }
    let evidence = own_after || salvaged.records > 0;
    let damaged = hard || evidence || !checkpoint_reachable;
    let mut damaged_segments = Vec::new();
    if damaged {
        let mut p = stop_problem.unwrap_or(Problem {
            kind: ProblemKind::InvalidRecord,
            lsn: Some(stop.lsn),
            offset: Some(stop.lsn.segment_offset(seg_size)),
            detail: stop.detail.clone(),
        });
        if !checkpoint_reachable && start.checkpoint >= stop.lsn {
            p.detail.push_str(&format!(
                "; pg_control's checkpoint record at {} lies beyond it, so the server cannot start",
                start.checkpoint
            ));
        }
        damaged_segments.push(DamagedSegment { file: stop.file.clone(), segno: stop_seg, problem: p });
        role.insert(stop_seg, FileRole::Damaged);
        damaged_segments.extend(later_damage);
    } else if stop.cause == StopCause::InvalidRecord {
        notes.push(format!(
            "the last record at {} is not valid ({}); nothing follows it, so this is most likely a write cut short by the crash, which PostgreSQL also treats as the end of WAL",
            stop.lsn, stop.detail
        ));
    }
    let commits_at_risk: Vec<CommitInfo> = if !damaged {
        Vec::new()
    } else if checkpoint_reachable {
        salvaged.commits.clone()
    } else {
        replayed_commits.iter().chain(salvaged.commits.iter()).cloned().collect()
    };
    if salvaged.crossing_records > 0 {
        notes.push(format!(
            "{} record(s) after the stop cross a segment boundary and were not salvaged",
            salvaged.crossing_records
        ));
    }

    for (s, (_, name)) in &chosen {
        let r = role.get(s).copied().unwrap_or(if *s > stop_seg { FileRole::Unused } else { FileRole::Replayed });
        file_states.push(FileState { file: name.clone(), role: r });
    }
    if damaged && !chosen.contains_key(&stop_seg) {
        file_states.push(FileState { file: stop.file.clone(), role: FileRole::Damaged });
    }
    file_states.sort_by(|a, b| a.file.cmp(&b.file));

    WalInspection {
        start: start.clone(),
        replay_end,
        checkpoint_reachable,
        stop,
        damaged,
        damaged_segments,
        replayed_records,
        replayed_commits,
        salvaged_records: salvaged.records,
        salvaged_commits: salvaged.commits,
        salvaged_end: salvaged.end,
        commits_at_risk,
        files: file_states,
        notes,
    }
}

/// Cause of a stop at a page header, and whether it is damage whatever follows.
fn page_stop_cause(e: &PageError) -> (StopCause, bool) {
    match e {
        PageError::BadMagic { found: 0, .. } => (StopCause::Zeroed, false),
        PageError::PageAddress { lsn, found } if found < lsn && found.0 % XLOG_BLCKSZ as u64 == 0 => {
            (StopCause::RecycledPage, false)
        }
        PageError::Truncated { .. } => (StopCause::Truncated, true),
        _ => (StopCause::BadPageHeader, true),
    }
}

#[derive(Default)]
struct Salvage {
    records: u64,
    commits: Vec<CommitInfo>,
    end: Option<Lsn>,
    crossing_records: u64,
}

/// Finds CRC-valid records in `data` (one segment starting at `seg_start`) from `from` on,
/// skipping zero and recycled pages, and reads on from each with the decoder.
fn salvage_segment(ctx: &Ctx<'_>, data: &[u8], seg_start: u64, from: u64, out: &mut Salvage) {
    let end = seg_start + data.len() as u64;
    let blck = XLOG_BLCKSZ as u64;
    let mut pos = maxalign(from.max(seg_start));
    let mut class_page = u64::MAX;
    let mut class = PageClass::Zero;
    while pos + SIZE_OF_XLOG_RECORD as u64 <= end {
        let page = pos - pos % blck;
        let header = if page == seg_start { SIZE_OF_XLOG_LONG_PHD } else { SIZE_OF_XLOG_SHORT_PHD } as u64;
        if pos - page < header {
            pos = page + header;
            continue;
        }
        if class_page != page {
            class_page = page;
            class = ctx.classify(&data[(page - seg_start) as usize..], page);
        }
        if matches!(class, PageClass::Zero | PageClass::Stale) {
            pos = page + blck;
            continue;
        }
        match record_at(ctx, data, seg_start, pos) {
            RecordAt::No => pos += 8,
            RecordAt::CrossesSegment => {
                out.crossing_records += 1;
                pos += 8;
            }
            RecordAt::Yes => {
                let next = read_on(ctx, data, seg_start, pos, out);
                pos = maxalign(next.max(pos + 8));
            }
        }
    }
}

enum RecordAt {
    No,
    Yes,
    CrossesSegment,
}

/// Whether a record with a valid CRC starts at `pos` (page headers of the pages it spans are
/// skipped by size, not trusted).
fn record_at(ctx: &Ctx<'_>, data: &[u8], seg_start: u64, pos: u64) -> RecordAt {
    let off = (pos - seg_start) as usize;
    let Some(hdr) = data.get(off..).and_then(XLogRecord::parse) else { return RecordAt::No };
    let tot = hdr.xl_tot_len as usize;
    if tot < SIZE_OF_XLOG_RECORD
        || hdr.xl_tot_len > MAX_RECORD_LENGTH
        || hdr.xl_prev.0 == 0
        || hdr.xl_prev.0 >= pos
        || !ctx.version.is_none_or(|v| rmgr::rmid_is_valid(hdr.xl_rmid, v))
    {
        return RecordAt::No;
    }
    let blck = XLOG_BLCKSZ;
    let page_left = blck - off % blck;
    if tot <= page_left {
        let Some(rec) = data.get(off..off + tot) else { return RecordAt::No };
        return if record_crc(rec) == Some(hdr.xl_crc) { RecordAt::Yes } else { RecordAt::No };
    }
    let mut buf = Vec::with_capacity(tot.min(1 << 20));
    // A file cut short mid-page (a torn copy) ends before the page does.
    let Some(first) = data.get(off..off + page_left) else { return RecordAt::No };
    buf.extend_from_slice(first);
    let mut page = off + page_left;
    while buf.len() < tot {
        if page >= data.len() {
            return if data.len() == ctx.start.seg_size as usize { RecordAt::CrossesSegment } else { RecordAt::No };
        }
        let take = (tot - buf.len()).min(blck - SIZE_OF_XLOG_SHORT_PHD);
        let Some(piece) = data.get(page + SIZE_OF_XLOG_SHORT_PHD..page + SIZE_OF_XLOG_SHORT_PHD + take) else {
            return RecordAt::No;
        };
        buf.extend_from_slice(piece);
        page += blck;
    }
    if record_crc(&buf) == Some(hdr.xl_crc) {
        RecordAt::Yes
    } else {
        RecordAt::No
    }
}

/// Decodes from `pos` (a record start) until the WAL stops; returns where it stopped.
fn read_on(ctx: &Ctx<'_>, data: &[u8], seg_start: u64, pos: u64, out: &mut Salvage) -> u64 {
    let Ok(mut dec) = WalDecoder::with_options(Lsn(pos), ctx.start.seg_size, ctx.decoder_options()) else {
        return pos + 8;
    };
    dec.feed(&data[(pos - seg_start) as usize..]);
    loop {
        match dec.next_record() {
            Ok(Some(rec)) => {
                out.records += 1;
                out.end = Some(out.end.map_or(rec.end_lsn, |e| e.max(rec.end_lsn)));
                if let Some(c) = CommitInfo::of(&rec) {
                    out.commits.push(c);
                }
            }
            Ok(None) => return seg_start + data.len() as u64,
            Err(e) => return e.lsn().0.max(dec.next_lsn().0),
        }
    }
}
