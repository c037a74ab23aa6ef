//! `archive-push`: nothing foreign or damaged enters the archive (invariant 3), nothing stored
//! is ever replaced (invariant 2), and success means durable.

use std::path::Path;

use pgkeep_wal::{parse_wal_file_name, WalFileName};
use serde::Serialize;

use super::ArchiveError;
use crate::repo::frame::{self, Compression};
use crate::repo::{layout, PutOutcome, Repository};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushOutcome {
    /// Stored now.
    Stored,
    /// An identical copy was already in the archive.
    AlreadyArchived,
    /// The stored copy failed its checks and was replaced by this (validated) file.
    ReplacedDamaged,
    /// Stored earlier by a parallel push (`archive_async`), as its spool record shows.
    ArchivedAhead,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub file: String,
    pub outcome: PushOutcome,
    pub size: u64,
    pub stored_size: u64,
    pub blake3: String,
}

/// Compression for WAL: level 1 keeps archive_command fast; WAL compresses well anyway.
const WAL_COMPRESSION: Compression = Compression::Zstd(1);

pub fn push(repo: &Repository, path: &Path) -> crate::Result<PushReport> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ArchiveError::UnknownName { name: path.display().to_string() })?;
    let info = repo.info();
    let seg_size = info.wal_segment_size;
    let kind = parse_wal_file_name(&name, seg_size).ok_or_else(|| ArchiveError::UnknownName { name: name.clone() })?;
    let input = Input::open(path, seg_size)
        .map_err(|e| ArchiveError::Read { path: path.display().to_string(), detail: e.to_string() })?;
    let data: &[u8] = input.bytes();
    // Validation (which may read the previous segment back) and compression + hashing are
    // independent passes over the same bytes: run them side by side. archive_command latency
    // bounds how fast a busy server can archive.
    let (validated, encoded) = std::thread::scope(|s| {
        let encoder = s.spawn(|| frame::encode_parts(data, WAL_COMPRESSION));
        let validated = validate(repo, path, &name, kind, data);
        (validated, encoder.join())
    });
    validated?;
    let encoded = encoded.map_err(|_| crate::Error::other("archive-push: the compression thread panicked"))?;
    let summary = encoded.summary;

    let key = layout::wal_key(&name);
    let digest = hex::encode(summary.blake3);
    let report = |outcome| PushReport {
        file: name.clone(),
        outcome,
        size: data.len() as u64,
        stored_size: summary.framed_size,
        blake3: digest.clone(),
    };
    let storage = repo.storage();
    // A push of this file killed mid-write left a staging file that nothing else removes.
    if let Err(e) = storage.remove_stale_staging(&key) {
        tracing::warn!("{e}");
    }
    let parts = encoded.into_parts();
    // On an object store every look is a round trip: create first (the conditional create
    // refuses an existing object anyway) and read the stored copy only when there is one. A
    // local repository looks first, so a re-push never writes and flushes 16 MiB in vain.
    let mut look = storage.features().posix;
    // Two rounds at most: another push may store the file between our look and our write.
    for _ in 0..2 {
        let stored = if look { stored_copy(repo, &key, &name)? } else { Stored::Absent };
        look = true;
        match stored {
            Stored::Absent => match storage.put_new_parts(&key, parts.clone())? {
                PutOutcome::Created => return Ok(report(PushOutcome::Stored)),
                PutOutcome::AlreadyExists => continue,
            },
            Stored::Intact(h) if h == summary.blake3 => {
                // The push that stored it may not have synced it yet; we acknowledge it now.
                storage.sync_object(&key)?;
                return Ok(report(PushOutcome::AlreadyArchived));
            }
            Stored::Intact(h) => {
                return Err(ArchiveError::Conflict { name, stored: hex::encode(h), new: digest }.into());
            }
            Stored::Damaged(detail) => {
                // This file validated and the stored copy cannot be read back: keeping the
                // stored one would let PostgreSQL recycle the only good copy.
                tracing::warn!("the archived copy of {name} is damaged ({detail}); replacing it with the validated file being pushed");
                storage.put_parts(&key, parts)?;
                return Ok(report(PushOutcome::ReplacedDamaged));
            }
        }
    }
    Err(ArchiveError::Write { dest: key, detail: "the object kept changing while archiving".into() }.into())
}

/// What the archive holds under a key, checked in full (decoded, sizes, CRC and BLAKE3): the
/// trailer alone says what the object should hold, not that it still does.
enum Stored {
    Absent,
    Intact([u8; 32]),
    Damaged(String),
}

fn stored_copy(repo: &Repository, key: &str, name: &str) -> crate::Result<Stored> {
    let framed = match repo.storage().get(key) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Stored::Absent),
        // A sealed copy that does not authenticate is damaged like one failing its checksum.
        Err(e) if crate::repo::objects::is_damaged(&e) => return Ok(Stored::Damaged(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    match frame::copy(&framed[..], framed.len() as u64, &mut std::io::sink(), &format!("archived {name}")) {
        Ok(s) => Ok(Stored::Intact(s.blake3)),
        Err(frame::FrameError::Damaged { detail, .. }) => Ok(Stored::Damaged(detail)),
        Err(e) => Err(e.into()),
    }
}

/// The file being archived. A complete segment is mapped rather than read: PostgreSQL never
/// changes or truncates a segment it has handed to archive_command, and mapping the page
/// cache avoids copying 16 MiB into fresh memory. Anything else is read.
enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Input {
    fn open(path: &Path, seg_size: u32) -> std::io::Result<Input> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == seg_size as u64 {
            // SAFETY: the mapping is read-only and the file is a completed WAL segment, which
            // the server neither writes nor truncates while archiving it.
            if let Ok(m) = unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
                return Ok(Input::Mapped(m));
            }
        }
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut v)?;
        Ok(Input::Read(v))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

fn validate(repo: &Repository, path: &Path, name: &str, kind: WalFileName, data: &[u8]) -> crate::Result<()> {
    let info = repo.info();
    let invalid =
        |detail: String, hint: &str| ArchiveError::Invalid { name: name.to_string(), detail, hint: hint.to_string() };
    const DAMAGED_HINT: &str =
        "the file is damaged or truncated; keep it for investigation and check the server's storage";
    match kind {
        WalFileName::Segment { tli, segno } | WalFileName::Partial { tli, segno } => {
            let archived = || {
                let previous = previous_segment(repo, tli, segno, data);
                super::check_segment(info, kind, data, previous.as_deref())
            };
            // The previous segment usually still lies beside this one: reading it there saves
            // a round trip to the repository. Only if the check fails with it does the
            // archived copy decide (the local one may have been damaged since it was archived).
            let res = match local_previous(path, tli, segno, info.wal_segment_size, data) {
                Some(prev) => super::check_segment(info, kind, data, Some(prev.bytes())).or_else(|_| archived()),
                None => archived(),
            };
            if let Err(e) = res {
                let hint = match e {
                    pgkeep_wal::SegmentError::SystemIdentifier { .. } => {
                        "this WAL comes from another cluster; archive_command must point at this cluster's own repository"
                    }
                    _ => DAMAGED_HINT,
                };
                return Err(invalid(e.to_string(), hint).into());
            }
        }
        WalFileName::History { .. } => {
            let text =
                std::str::from_utf8(data).map_err(|_| invalid("history file is not text".into(), DAMAGED_HINT))?;
            pgkeep_wal::parse_timeline_history(text).map_err(|e| invalid(e.to_string(), DAMAGED_HINT))?;
        }
        WalFileName::BackupHistory { .. } => {
            let text = std::str::from_utf8(data)
                .map_err(|_| invalid("backup history file is not text".into(), DAMAGED_HINT))?;
            if !text.starts_with("START WAL LOCATION:") {
                return Err(
                    invalid("backup history file does not start with START WAL LOCATION".into(), DAMAGED_HINT).into()
                );
            }
        }
    }
    Ok(())
}

/// Whether the segment begins with the tail of a record started in the previous one: xlp_info
/// (access/xlog_internal.h) bit XLP_FIRST_IS_CONTRECORD = 0x0001.
fn continues_record(data: &[u8]) -> bool {
    data.get(2..4).is_some_and(|b| u16::from_le_bytes([b[0], b[1]]) & 0x0001 != 0)
}

/// The previous segment of the same timeline from the directory `path` lies in, when this
/// segment continues a record from it and it is there whole.
fn local_previous(path: &Path, tli: u32, segno: u64, seg_size: u32, data: &[u8]) -> Option<Input> {
    if !continues_record(data) || segno == 0 {
        return None;
    }
    let prev = path.parent()?.join(pgkeep_wal::xlog_file_name(tli, segno - 1, seg_size));
    Input::open(&prev, seg_size).ok().filter(|i| i.bytes().len() == seg_size as usize)
}

/// When a segment begins with the tail of a record started in the previous segment, the
/// previous segment (if archived) lets that record's CRC be checked too.
fn previous_segment(repo: &Repository, tli: u32, segno: u64, data: &[u8]) -> Option<Vec<u8>> {
    if !continues_record(data) || segno == 0 {
        return None;
    }
    let seg_size = repo.info().wal_segment_size;
    let prev = pgkeep_wal::xlog_file_name(tli, segno - 1, seg_size);
    if let Some(d) = fetch_unhashed(repo, &prev) {
        return Some(d);
    }
    // The first segment of a timeline continues a record of its parent's WAL: the previous
    // segment is archived under the timeline that was current there.
    let history = repo.get_framed(&layout::wal_key(&pgkeep_wal::history_file_name(tli))).ok()?;
    let history = pgkeep_wal::parse_timeline_history(std::str::from_utf8(&history).ok()?).ok()?;
    let at = pgkeep_wal::Lsn::segment_start(segno - 1, seg_size);
    let parent = pgkeep_wal::timeline_of(&history, tli, at);
    if parent == tli {
        return None;
    }
    let prev = pgkeep_wal::xlog_file_name(parent, segno - 1, seg_size);
    fetch_unhashed(repo, &prev)
}

/// An archived segment checked by its CRCs only: it is re-validated record by record anyway.
fn fetch_unhashed(repo: &Repository, name: &str) -> Option<Vec<u8>> {
    let framed = repo.storage().get(&layout::wal_key(name)).ok()?;
    frame::decode_crc_only(&framed, name).ok()
}
