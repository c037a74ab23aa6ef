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
use crate::repo::seal::read_full;
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
        let Some((size, Sink::Memory(plain))) = fetch_checked_into(repo, name, Sink::Memory(Vec::new()), dest)? else {
            return Ok(GetOutcome::NotFound { file: name.to_string() });
        };
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(dest).map_err(write_err)?;
        f.write_all(&plain).map_err(write_err)?;
        return Ok(GetOutcome::Restored { file: name.to_string(), size, prefetched: false });
    }
    // The temp file is written while the checks run; it is renamed into place only after they
    // passed, and removed (dropped) when any failed.
    let (staged, file) = Staged::create(dest).map_err(write_err)?;
    let Some((size, _)) = fetch_checked_into(repo, name, Sink::File(file), dest)? else {
        return Ok(GetOutcome::NotFound { file: name.to_string() });
    };
    staged.commit().map_err(write_err)?;
    Ok(GetOutcome::Restored { file: name.to_string(), size, prefetched: false })
}

/// Where [`fetch_checked_into`] puts the content while checking it: a file (a temp name that
/// is renamed only after the checks passed) or memory (a destination that must not see a byte
/// before then).
pub enum Sink {
    File(std::fs::File),
    Memory(Vec<u8>),
}

/// Decoded bytes move between the decoding and the hashing/writing thread in chunks this
/// large, in at most this many recycled buffers: small enough to stay in cache, so no 16 MiB
/// buffer is ever allocated and faulted in page by page (that was a third of a fetch's CPU).
/// 32–128 KiB chunks saved up to 240 page faults but no CPU (more hand-overs).
const CHUNK: usize = 256 * 1024;
const BUFFERS: usize = 4;

/// Fetch an archived file into `sink` and check it fully: frame sizes and CRCs, the content's
/// BLAKE3, and for WAL every page header and record (as archive-push did before storing it: a
/// copy damaged or swapped since must stop recovery, not feed it). `None`: the archive has no
/// such file. The content's size and the sink are returned only when every check passed; a
/// file sink may hold any prefix of the content otherwise.
/// `dest` names the sink's file in errors.
pub fn fetch_checked_into(
    repo: &Repository,
    name: &str,
    sink: Sink,
    dest: &Path,
) -> crate::Result<Option<(u64, Sink)>> {
    let write_failed =
        |e: std::io::Error| ArchiveError::Write { dest: dest.display().to_string(), detail: e.to_string() };
    let info = repo.info();
    let Some(kind) = pgkeep_wal::parse_wal_file_name(name, info.wal_segment_size) else {
        return Err(ArchiveError::UnknownRequest { name: name.to_string() }.into());
    };
    let damaged = |detail: String| ArchiveError::Damaged { name: name.to_string(), detail };
    let key = layout::wal_key(name);
    // Mapped on a local repository: 1200 fewer page faults than reading 5 MB into fresh memory.
    let framed = match repo.storage().get_mapped(&key) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) if !occupied(repo, &key) => return Ok(None),
        Err(StorageError::NotFound { .. }) => {
            return Err(damaged(format!("'{key}' exists but is not a regular file")).into());
        }
        Err(e) => return Err(damaged(e.to_string()).into()),
    };
    let what = format!("archived {name}");
    let trailer = frame::trailer_of(&framed, &what).map_err(|e| damaged(e.to_string()))?;
    let validator = super::segment_validator(info, kind, None);
    let streaming = validator.is_some();
    let (streamed, sink, verdict) = stream(&framed, &what, trailer.plain_size, sink, validator);
    drop(framed);
    let size = match streamed {
        Streamed::Damaged(detail) => return Err(damaged(detail).into()),
        Streamed::Hashed(digest) if digest != trailer.blake3 => {
            let detail = "checksum mismatch (BLAKE3 of the content differs from the one recorded)".to_string();
            return Err(damaged(frame::FrameError::Damaged { what, detail }.to_string()).into());
        }
        Streamed::Hashed(_) => trailer.plain_size,
        Streamed::WriteFailed(e) => return Err(write_failed(e).into()),
    };
    // Segments were validated as they were decoded; other files (a timeline history) are
    // checked from what was written: page-cache pages, mapped at once.
    let checked = match (&sink, verdict) {
        (_, Some(verdict)) => verdict.map_err(|e| e.to_string()),
        _ if streaming => Err("the segment was not validated to its end".to_string()),
        (Sink::Memory(plain), None) => validate(info, kind, plain),
        (Sink::File(_), None) if size == 0 => validate(info, kind, &[]),
        (Sink::File(f), None) => {
            // SAFETY: the temp is this process's own file under a name only pgkeep uses, not
            // written by anyone while mapped; a file system that cannot map it is read instead.
            match unsafe { memmap2::MmapOptions::new().populate().map(f) } {
                Ok(map) => validate(info, kind, &map),
                Err(_) => validate(info, kind, &read_back(f).map_err(write_failed)?),
            }
        }
    };
    checked.map_err(damaged)?;
    Ok(Some((size, sink)))
}

enum Streamed {
    /// Decoded to its end with sizes and CRC as recorded; the BLAKE3 of what was decoded.
    Hashed([u8; 32]),
    Damaged(String),
    WriteFailed(std::io::Error),
}

type Verdict = Option<Result<(), pgkeep_wal::SegmentError>>;

/// Decode `framed` on this thread while another hashes, writes and validates the chunks: the
/// two overlap on the cores there are (validating on a third thread measured slower on two
/// cores). Stops at `limit` bytes (the trailer's size), so a forged payload cannot fill the
/// disk. The verdict is the validator's, when one was given and saw every chunk.
fn stream(
    framed: &[u8],
    what: &str,
    limit: u64,
    mut sink: Sink,
    mut validator: Option<pgkeep_wal::SegmentValidator<'static>>,
) -> (Streamed, Sink, Verdict) {
    // The reader still CRCs what it reads: the frame's CRC covers the stored (compressed)
    // bytes, which the BLAKE3 of the decoded content does not, and costs ~2 % of a call.
    let mut reader = match frame::FrameReader::unhashed(framed, framed.len() as u64, what) {
        Ok(r) => r,
        Err(e) => return (Streamed::Damaged(e.to_string()), sink, None),
    };
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(Vec::new());
    }
    let (streamed, verdict) = std::thread::scope(|s| {
        let sink = &mut sink;
        let writer = s.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            let mut failed = None;
            for buf in full_rx {
                hasher.update(&buf);
                if failed.is_none() {
                    failed = match sink {
                        Sink::File(f) => f.write_all(&buf).err(),
                        Sink::Memory(v) => {
                            v.extend_from_slice(&buf);
                            None
                        }
                    };
                }
                if let Some(v) = &mut validator {
                    v.feed(&buf);
                }
                // The decoder may have stopped already: then the buffer is not needed.
                let _ = free_tx.send(buf);
            }
            (<[u8; 32]>::from(hasher.finalize()), failed, validator.map(|v| v.finish().map(drop)))
        });
        let mut decoded = 0u64;
        let outcome = loop {
            let Ok(mut buf) = free_rx.recv() else { break Err("the writing thread stopped".to_string()) };
            buf.resize(CHUNK, 0);
            match read_full(&mut reader, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    decoded += n as u64;
                    if decoded > limit {
                        break Err(format!("{what} decodes to more bytes than its trailer records"));
                    }
                    buf.truncate(n);
                    if full_tx.send(buf).is_err() {
                        break Err("the writing thread stopped".to_string());
                    }
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        drop(full_tx);
        match (outcome, writer.join()) {
            (Err(detail), _) => (Streamed::Damaged(detail), None),
            (Ok(()), Err(_)) => (Streamed::Damaged("the writing thread panicked".to_string()), None),
            (Ok(()), Ok((_, Some(e), _))) => (Streamed::WriteFailed(e), None),
            (Ok(()), Ok((digest, None, verdict))) => (Streamed::Hashed(digest), verdict),
        }
    });
    (streamed, sink, verdict)
}

/// The whole file from its start.
fn read_back(mut f: &std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(0))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
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
        let (staged, mut f) = Staged::create(dest)?;
        f.write_all(data)?;
        Ok(staged)
    }

    /// The empty temp file, open for writing and reading back.
    pub fn create(dest: &Path) -> std::io::Result<(Staged, std::fs::File)> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let staged = Staged { tmp: dir.join(format!(".{name}.pgkeep-tmp")), dest: dest.to_path_buf() };
        // 0o666 under the server's umask: the mode a plain create gives (PostgreSQL's 0077 → 0600).
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .open(&staged.tmp)?;
        Ok((staged, f))
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
