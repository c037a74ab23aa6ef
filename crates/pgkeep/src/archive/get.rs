//! `archive-get`: fetch, verify, write. A missing file is normal (end of archive, probing for
//! timelines); anything pgkeep does not positively know must stop recovery instead of ending it
//! early, so the binary maps every error to an exit status PostgreSQL treats as fatal.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use pgkeep_wal::WalFileName;
use serde::Serialize;

use super::ArchiveError;
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
    let write_err = |e: std::io::Error| ArchiveError::Write { dest: dest.display().to_string(), detail: e.to_string() };
    // A destination that exists and is not a regular file (a device, a FIFO, a symlink) is
    // written through in place, and only after every check: renaming over it would replace
    // the node, and what it feeds must never see unchecked bytes.
    if std::fs::symlink_metadata(dest).is_ok_and(|m| !m.file_type().is_file()) {
        let Some((plain, ())) = fetch_checked_with(repo, name, |_| ())? else {
            return Ok(GetOutcome::NotFound { file: name.to_string() });
        };
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(dest).map_err(write_err)?;
        f.write_all(&plain).map_err(write_err)?;
        return Ok(GetOutcome::Restored { file: name.to_string(), size: plain.len() as u64, prefetched: false });
    }
    // The temp file is written while the checks run; it is renamed into place only after they passed.
    let Some((plain, staged)) = fetch_checked_with(repo, name, |plain| Staged::write(dest, plain))? else {
        return Ok(GetOutcome::NotFound { file: name.to_string() });
    };
    staged.and_then(Staged::commit).map_err(write_err)?;
    Ok(GetOutcome::Restored { file: name.to_string(), size: plain.len() as u64, prefetched: false })
}

/// Fetch an archived file and check it fully: frame sizes and CRCs, the content's BLAKE3, and
/// for WAL every page header and record (as archive-push did before storing it: a copy damaged
/// or swapped since must stop recovery, not feed it). `None`: the archive has no such file.
/// `stage` (e.g. writing the bytes to a temp file) runs on a thread of its own beside the
/// checks; its result is returned only when every check passed, else dropped.
pub fn fetch_checked_with<R: Send>(
    repo: &Repository,
    name: &str,
    stage: impl FnOnce(&[u8]) -> R + Send,
) -> crate::Result<Option<(Vec<u8>, R)>> {
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
    drop(framed);
    // The hash, the record checks and the staging are independent passes over the decoded
    // bytes: they overlap on the cores there are.
    let (hashed, valid, staged) = std::thread::scope(|s| {
        let hasher = s.spawn(|| blake3::hash(&plain));
        let stager = s.spawn(|| stage(&plain));
        let valid = validate(info, kind, &plain);
        (hasher.join(), valid, stager.join())
    });
    let panicked = |_| crate::Error::other("archive-get: a checking thread panicked");
    let (hashed, staged) = (hashed.map_err(panicked)?, staged.map_err(panicked)?);
    if *hashed.as_bytes() != trailer.blake3 {
        let detail = "checksum mismatch (BLAKE3 of the content differs from the one recorded)".to_string();
        return Err(damaged(frame::FrameError::Damaged { what, detail }.to_string()).into());
    }
    valid.map_err(damaged)?;
    Ok(Some((plain, staged)))
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
/// was most of archive-get's cost.
pub fn write_dest(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    Staged::write(dest, data)?.commit()
}

/// A file written under a temp name beside its destination, renamed into place by `commit`
/// and removed when dropped uncommitted (a failed check, an error).
pub struct Staged {
    tmp: std::path::PathBuf,
    dest: std::path::PathBuf,
}

impl Staged {
    pub fn write(dest: &Path, data: &[u8]) -> std::io::Result<Staged> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let staged = Staged { tmp: dir.join(format!(".{name}.pgkeep-tmp")), dest: dest.to_path_buf() };
        // 0o666 under the server's umask: the mode a plain create gives (PostgreSQL's 0077 → 0600).
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o666).open(&staged.tmp)?;
        f.write_all(data)?;
        Ok(staged)
    }

    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        self.tmp = std::path::PathBuf::new();
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
