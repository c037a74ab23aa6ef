//! `archive-get`: fetch, verify, write. A missing file is normal (end of archive, probing for
//! timelines); anything pgkeep does not positively know must stop recovery instead of ending it
//! early, so the binary maps every error to an exit status PostgreSQL treats as fatal.

use std::io::Write;
use std::path::Path;

use pgkeep_wal::WalFileName;
use serde::Serialize;

use super::ArchiveError;
use crate::fsutil;
use crate::repo::frame;
use crate::repo::{layout, RepoInfo, Repository, StorageError};

/// The exit status for "the repository was opened and holds no such file": PostgreSQL treats
/// 1..=125 as "not in the archive" and ends recovery there.
pub const NOT_FOUND_EXIT: u8 = 1;
/// The exit status for everything else (any error, a panic): PostgreSQL treats a status above
/// 125 as fatal and stops instead of promoting on partial WAL.
pub const FATAL_EXIT: u8 = 126;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum GetOutcome {
    /// `prefetched`: served from the spool, fetched and checked ahead by an earlier call.
    Restored {
        file: String,
        size: u64,
        prefetched: bool,
    },
    NotFound {
        file: String,
    },
    /// `--prefetch-only`: the segments after `after` that this run put into the spool.
    Prefetched {
        after: String,
        segments: usize,
    },
}

pub fn get(repo: &Repository, name: &str, dest: &Path) -> crate::Result<GetOutcome> {
    let Some(plain) = fetch_checked(repo, name)? else {
        return Ok(GetOutcome::NotFound { file: name.to_string() });
    };
    write_dest(dest, &plain)
        .map_err(|e| ArchiveError::Write { dest: dest.display().to_string(), detail: e.to_string() })?;
    Ok(GetOutcome::Restored { file: name.to_string(), size: plain.len() as u64, prefetched: false })
}

/// Fetch an archived file and check it fully: frame sizes and CRCs, the content's BLAKE3, and
/// for WAL every page header and record (as archive-push did before storing it: a copy damaged
/// or swapped since must stop recovery, not feed it). `None`: the archive has no such file.
pub fn fetch_checked(repo: &Repository, name: &str) -> crate::Result<Option<Vec<u8>>> {
    let info = repo.info();
    let Some(kind) = pgkeep_wal::parse_wal_file_name(name, info.wal_segment_size) else {
        return Err(ArchiveError::UnknownRequest { name: name.to_string() }.into());
    };
    let damaged = |detail: String| ArchiveError::Damaged { name: name.to_string(), detail };
    let key = layout::wal_key(name);
    let framed = match repo.storage().get(&key) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) if !occupied(repo, &key) => return Ok(None),
        Err(StorageError::NotFound { .. }) => {
            return Err(damaged(format!("'{key}' exists but is not a regular file")).into());
        }
        Err(e) => return Err(damaged(e.to_string()).into()),
    };
    let what = format!("archived {name}");
    let trailer = frame::trailer_of(&framed, &what).map_err(|e| damaged(e.to_string()))?;
    let plain = frame::decode_crc_only(&framed, &what).map_err(|e| damaged(e.to_string()))?;
    // The hash and the record checks are independent passes over the decoded bytes: one core each.
    let (hashed, valid) = std::thread::scope(|s| {
        let hasher = s.spawn(|| blake3::hash(&plain));
        let valid = validate(info, kind, &plain);
        (hasher.join(), valid)
    });
    let hashed = hashed.map_err(|_| crate::Error::other("archive-get: the hashing thread panicked"))?;
    if *hashed.as_bytes() != trailer.blake3 {
        let detail = "checksum mismatch (BLAKE3 of the content differs from the one recorded)".to_string();
        return Err(damaged(frame::FrameError::Damaged { what, detail }.to_string()).into());
    }
    valid.map_err(damaged)?;
    Ok(Some(plain))
}

/// The checks archive-push made before storing the file, repeated on the way out.
fn validate(info: &RepoInfo, kind: WalFileName, data: &[u8]) -> Result<(), String> {
    match kind {
        WalFileName::Segment { .. } | WalFileName::Partial { .. } => {
            super::check_segment(info, kind, data, None).map_err(|e| e.to_string())
        }
        WalFileName::History { .. } => {
            let text = std::str::from_utf8(data).map_err(|_| "the history file is not text".to_string())?;
            pgkeep_wal::parse_timeline_history(text).map(|_| ()).map_err(|e| e.to_string())
        }
        WalFileName::BackupHistory { .. } => Ok(()),
    }
}

/// Whether something other than an object (a directory, a dangling symlink) sits at `key` in a
/// local repository: the store reports it as absent, but it is damage, not "no such file".
fn occupied(repo: &Repository, key: &str) -> bool {
    repo.storage().local_root().is_some_and(|root| root.join(key).symlink_metadata().is_ok())
}

/// Write the restored file atomically (temp name beside it, rename), so a killed or failing
/// archive-get never leaves a partial file under the name PostgreSQL reads. Not fsynced:
/// PostgreSQL does not need it (after a crash it asks for the segment again), and the flush
/// was most of archive-get's cost. A destination that exists and is not a regular file (a
/// device, a FIFO, a symlink) is written through in place: renaming over it would replace
/// the node.
pub fn write_dest(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let special = std::fs::symlink_metadata(dest).is_ok_and(|m| !m.file_type().is_file());
    if special {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(dest)?;
        return f.write_all(data);
    }
    // 0o666 under the server's umask: the mode a plain create gives (PostgreSQL's 0077 → 0600).
    fsutil::write_replace(dest, data, 0o666, false)
}
