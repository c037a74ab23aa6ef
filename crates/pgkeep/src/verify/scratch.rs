//! The drill's scratch directory, and cloning a data directory into it (`verify --pgdata`).
//!
//! Layout: `<parent>/pgkeep-verify-XXXXXX/{data,tblspc/<oid>,run}`; `run` holds the server's
//! Unix socket, log and configuration files. The whole tree belongs to the OS user that runs
//! the drill's server, and is removed when the [`Scratch`] is dropped (also on errors and
//! panics); [`Scratch::remove`] reports a failure to remove it.
//!
//! Cloning never writes to the source: files are cloned with the `FICLONE` ioctl (btrfs, XFS
//! with reflink, bcachefs: instant, shares blocks copy-on-write) and copied when the file
//! system cannot clone (ext4, or source and scratch on different file systems).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::VerifyError;
use crate::fsutil;
use crate::pg::OsUser;

/// Longest socket path a Unix socket accepts (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 100;

pub struct Scratch {
    pub root: PathBuf,
    pub data: PathBuf,
    pub tblspc: PathBuf,
    pub run: PathBuf,
    /// Where the server's socket lives (`run`, or a short directory in /tmp when `run` is too
    /// long for a socket path).
    pub socket_dir: PathBuf,
    dir: Option<tempfile::TempDir>,
    short_socket_dir: Option<tempfile::TempDir>,
}

impl Scratch {
    /// A new scratch directory under `parent`, owned by `owner` when running as root.
    pub fn create(parent: &Path, owner: Option<&OsUser>) -> Result<Scratch, VerifyError> {
        let err = |e: io::Error| VerifyError::Scratch { path: parent.display().to_string(), detail: e.to_string() };
        fs::create_dir_all(parent).map_err(err)?;
        let dir = tempfile::Builder::new().prefix("pgkeep-verify-").tempdir_in(parent).map_err(err)?;
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let tblspc = root.join("tblspc");
        let run = root.join("run");
        for d in [&data, &tblspc, &run] {
            fs::DirBuilder::new().mode(0o700).create(d).map_err(err)?;
        }
        let mut short_socket_dir = None;
        let socket_dir = if run.as_os_str().len() + 20 > MAX_SOCKET_PATH {
            let t = tempfile::Builder::new().prefix("pgkeep-sock-").tempdir_in("/tmp").map_err(err)?;
            let p = t.path().to_path_buf();
            short_socket_dir = Some(t);
            p
        } else {
            run.clone()
        };
        let s = Scratch { root, data, tblspc, run, socket_dir, dir: Some(dir), short_socket_dir };
        s.hand_over(owner)?;
        Ok(s)
    }

    /// Give the tree to the server's OS user (no-op unless root).
    pub fn hand_over(&self, owner: Option<&OsUser>) -> Result<(), VerifyError> {
        if let Some(o) = owner {
            if fsutil::running_as_root() {
                for p in [&self.root, &self.socket_dir] {
                    fsutil::chown_tree(p, o.uid, o.gid)
                        .map_err(|e| VerifyError::Scratch { path: p.display().to_string(), detail: e.to_string() })?;
                }
            }
        }
        Ok(())
    }

    /// Remove everything; the error names what could not be removed.
    pub fn remove(&mut self) -> Result<(), VerifyError> {
        let mut first_err = None;
        for t in [self.short_socket_dir.take(), self.dir.take()].into_iter().flatten() {
            let p = t.path().to_path_buf();
            if let Err(e) = t.close() {
                // One retry: a server process that just exited may have left a file behind.
                if p.exists() {
                    if let Err(e2) = fs::remove_dir_all(&p) {
                        first_err.get_or_insert(VerifyError::Cleanup {
                            path: p.display().to_string(),
                            detail: format!("{e}; {e2}"),
                        });
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// How a tree was cloned.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneStats {
    pub files: u64,
    pub bytes: u64,
    /// Files cloned with FICLONE (copy-on-write, no data copied).
    pub reflinked: u64,
    /// Files copied byte for byte.
    pub copied: u64,
}

impl CloneStats {
    pub fn method(&self) -> &'static str {
        match (self.reflinked, self.copied) {
            (0, _) => "copy",
            (_, 0) => "reflink",
            _ => "reflink+copy",
        }
    }

    fn add(&mut self, o: CloneStats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.reflinked += o.reflinked;
        self.copied += o.copied;
    }
}

/// Files of a live server that must not reach the clone: the lock file (a running PID would
/// make the drill's server refuse to start) and signal files (a copy of a standby would
/// otherwise wait for WAL forever, or want a restore_command). One exception: a restored base
/// backup that was never started (`backup_label` and `recovery.signal`) keeps its
/// `recovery.signal`, because its WAL is in the archive its `restore_command` names, not in
/// its (empty) pg_wal.
const SKIP_IN_CLONE: &[&str] = &["postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal"];

/// Clone a data directory (and its tablespaces, and optionally a separate WAL directory) into
/// `scratch`. The source is only read. Tablespace links in the clone point into
/// `scratch.tblspc`, and `pg_wal` is a real directory there (a symlinked pg_wal is followed).
pub fn clone_pgdata(
    src: &Path,
    wal_dir: Option<&Path>,
    scratch: &Scratch,
    cancel: &AtomicBool,
) -> Result<CloneStats, VerifyError> {
    let mut stats = CloneStats::default();
    let unstarted_restore = src.join("backup_label").is_file() && src.join("recovery.signal").is_file();
    let rd = fs::read_dir(src).map_err(|e| clone_err(src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| clone_err(src, e))?;
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        let from = entry.path();
        let to = scratch.data.join(&name);
        if SKIP_IN_CLONE.contains(&name_s.as_ref()) && !(unstarted_restore && name_s == "recovery.signal") {
            continue;
        }
        match name_s.as_ref() {
            "pg_wal" => {
                let wal_src = wal_dir.map(Path::to_path_buf).unwrap_or_else(|| from.clone());
                stats.add(clone_tree(&wal_src, &to, true, cancel)?);
            }
            "pg_tblspc" => {
                fs::DirBuilder::new().mode(0o700).create(&to).map_err(|e| clone_err(&to, e))?;
                for t in fs::read_dir(&from).map_err(|e| clone_err(&from, e))? {
                    let t = t.map_err(|e| clone_err(&from, e))?;
                    let oid = t.file_name();
                    let dest = scratch.tblspc.join(&oid);
                    // Follows the link: the tablespace's files, wherever they live.
                    stats.add(clone_tree(&t.path(), &dest, true, cancel)?);
                    std::os::unix::fs::symlink(&dest, to.join(&oid)).map_err(|e| clone_err(&to, e))?;
                }
            }
            _ => stats.add(clone_tree(&from, &to, false, cancel)?),
        }
    }
    if let Some(w) = wal_dir {
        if !scratch.data.join("pg_wal").exists() {
            stats.add(clone_tree(w, &scratch.data.join("pg_wal"), true, cancel)?);
        }
    }
    fs::create_dir_all(scratch.data.join("pg_wal/archive_status")).map_err(|e| clone_err(&scratch.data, e))?;
    Ok(stats)
}

fn clone_err(p: &Path, e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Clone { path: p.display().to_string(), detail: e.to_string() }
}

/// Clone one file or directory tree. `follow` follows a symlink at `from` itself.
fn clone_tree(from: &Path, to: &Path, follow: bool, cancel: &AtomicBool) -> Result<CloneStats, VerifyError> {
    if cancel.load(Ordering::Relaxed) {
        return Err(VerifyError::Interrupted { what: "cloning the data directory".into() });
    }
    let meta = if follow { fs::metadata(from) } else { fs::symlink_metadata(from) }.map_err(|e| clone_err(from, e))?;
    let mut stats = CloneStats::default();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(|e| clone_err(from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| clone_err(to, e))?;
    } else if meta.is_dir() {
        fs::DirBuilder::new().mode(0o700).create(to).map_err(|e| clone_err(to, e))?;
        let _ = fs::set_permissions(to, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777 | 0o700));
        for e in fs::read_dir(from).map_err(|e| clone_err(from, e))? {
            let e = e.map_err(|e| clone_err(from, e))?;
            let name = e.file_name();
            stats.add(clone_tree(&e.path(), &to.join(&name), false, cancel)?);
        }
    } else if meta.is_file() {
        let reflinked = clone_file(from, to, meta.permissions().mode() & 0o777 | 0o600)?;
        stats.files = 1;
        stats.bytes = meta.len();
        if reflinked {
            stats.reflinked = 1;
        } else {
            stats.copied = 1;
        }
    }
    // Sockets, FIFOs and devices have no place in a data directory; they are skipped.
    Ok(stats)
}

/// FICLONE, else a plain copy. Returns true when the file was reflinked.
pub fn clone_file(from: &Path, to: &Path, mode: u32) -> Result<bool, VerifyError> {
    let src = File::open(from).map_err(|e| clone_err(from, e))?;
    let dst = OpenOptions::new().write(true).create_new(true).mode(mode).open(to).map_err(|e| clone_err(to, e))?;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    // EOPNOTSUPP/ENOTTY/EINVAL (no reflink support), EXDEV (different file systems): copy.
    let mut r = io::BufReader::with_capacity(1 << 20, src);
    let mut w = io::BufWriter::with_capacity(1 << 20, dst);
    io::copy(&mut r, &mut w).map_err(|e| clone_err(to, e))?;
    Ok(false)
}
