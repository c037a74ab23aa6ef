//! `archive-get`: fetch, verify, write. A missing file is normal (end of archive, probing for
//! timelines); anything pgkeep does not positively know must stop recovery instead of ending it
//! early, so the binary maps every error to an exit status PostgreSQL treats as fatal.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::ArchiveError;
use crate::fsutil;
use crate::repo::frame;
use crate::repo::{layout, Repository, StorageError};

/// The exit status for "the repository was opened and holds no such file": PostgreSQL treats
/// 1..=125 as "not in the archive" and ends recovery there.
pub const NOT_FOUND_EXIT: u8 = 1;
/// The exit status for everything else (any error, a panic): PostgreSQL treats a status above
/// 125 as fatal and stops instead of promoting on partial WAL.
pub const FATAL_EXIT: u8 = 126;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum GetOutcome {
    Restored { file: String, size: u64 },
    NotFound { file: String },
}

pub fn get(repo: &Repository, name: &str, dest: &Path) -> crate::Result<GetOutcome> {
    if pgkeep_wal::parse_wal_file_name(name, repo.info().wal_segment_size).is_none() {
        return Err(ArchiveError::UnknownRequest { name: name.to_string() }.into());
    }
    let key = layout::wal_key(name);
    let framed = match repo.storage().get(&key) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) if !occupied(repo, &key) => {
            return Ok(GetOutcome::NotFound { file: name.to_string() })
        }
        Err(StorageError::NotFound { .. }) => {
            let detail = format!("'{key}' exists but is not a regular file");
            return Err(ArchiveError::Damaged { name: name.to_string(), detail }.into());
        }
        Err(e) => return Err(ArchiveError::Damaged { name: name.to_string(), detail: e.to_string() }.into()),
    };
    let plain = frame::decode(&framed, &format!("archived {name}"))
        .map_err(|e| ArchiveError::Damaged { name: name.to_string(), detail: e.to_string() })?;
    write_dest(dest, &plain)
        .map_err(|e| ArchiveError::Write { dest: dest.display().to_string(), detail: e.to_string() })?;
    Ok(GetOutcome::Restored { file: name.to_string(), size: plain.len() as u64 })
}

/// Whether something other than an object (a directory, a dangling symlink) sits at `key` in a
/// local repository: the store reports it as absent, but it is damage, not "no such file".
fn occupied(repo: &Repository, key: &str) -> bool {
    repo.storage().local_root().is_some_and(|root| root.join(key).symlink_metadata().is_ok())
}

/// Write the restored file durably and atomically (temp name beside it, fsync, rename, fsync
/// the directory), so a killed or failing archive-get never leaves a partial file under the
/// name PostgreSQL reads. A destination that exists and is not a regular file (a device, a
/// FIFO, a symlink) is written through in place: renaming over it would replace the node.
fn write_dest(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let special = std::fs::symlink_metadata(dest).is_ok_and(|m| !m.file_type().is_file());
    if special {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(dest)?;
        f.write_all(data)?;
        return f.sync_all();
    }
    // 0o666 under the server's umask: the mode a plain create gives (PostgreSQL's 0077 → 0600).
    fsutil::write_atomic(dest, data, 0o666)
}
