//! `archive-get`: fetch, verify, write. A missing file is normal (end of archive, probing for
//! timelines); a damaged or unreadable one must stop recovery instead of ending it early, so the
//! binary maps it to an exit status PostgreSQL treats as fatal.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::ArchiveError;
use crate::repo::frame;
use crate::repo::{layout, Repository, StorageError};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum GetOutcome {
    Restored { file: String, size: u64 },
    NotFound { file: String },
}

pub fn get(repo: &Repository, name: &str, dest: &Path) -> crate::Result<GetOutcome> {
    if pgkeep_wal::parse_wal_file_name(name, repo.info().wal_segment_size).is_none() {
        return Err(ArchiveError::UnknownName { name: name.to_string() }.into());
    }
    let key = layout::wal_key(name);
    let framed = match repo.storage().get(&key) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(GetOutcome::NotFound { file: name.to_string() }),
        Err(e) => return Err(ArchiveError::Damaged { name: name.to_string(), detail: e.to_string() }.into()),
    };
    let plain = frame::decode(&framed, &format!("archived {name}"))
        .map_err(|e| ArchiveError::Damaged { name: name.to_string(), detail: e.to_string() })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(dest)?;
        f.write_all(&plain)?;
        f.sync_all()
    };
    write().map_err(|e| ArchiveError::Write { dest: dest.display().to_string(), detail: e.to_string() })?;
    Ok(GetOutcome::Restored { file: name.to_string(), size: plain.len() as u64 })
}
