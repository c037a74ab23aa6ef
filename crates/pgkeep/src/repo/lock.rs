//! Repository locks with `std::fs::File::try_lock`: the kernel drops them when the process
//! dies, so a killed backup never leaves a stale lock behind.
//!
//! The lock file lives in the repository (`lock/<name>.lock`) and, like every other file
//! there, belongs to the repository's owner even when root takes it: the server's OS user
//! (cron, archive_command) must be able to take it next.
//!
//! Object stores have no `flock`: there the lock is a lease object (`lease.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{RepoError, Repository};
use crate::fsutil;

pub struct RepoLock {
    _held: Held,
    path: PathBuf,
}

/// Where a repository's locks live: inside a local repository, else in the temp directory.
fn lock_dir(repo: &Repository) -> PathBuf {
    match repo.storage().local_root() {
        Some(root) => root.join("lock"),
        None => {
            let h = crc32c::crc32c(repo.storage().location().as_bytes());
            std::env::temp_dir().join(format!("pgkeep-lock-{h:08x}"))
        }
    }
}

/// What a holder writes into its lock file (and a backup's start marker records: pid, host),
/// so `list` can tell which backup a held lock belongs to.
pub fn holder_line(pid: u32, host: &str) -> String {
    format!("pid {pid} on {host}")
}

/// Hand `path` to the owner of the local repository's root when root created it there.
fn hand_over(repo: &Repository, path: &Path) {
    let (Some(root), true) = (repo.storage().local_root(), fsutil::running_as_root()) else { return };
    match fsutil::owner_of(root) {
        Ok((uid, gid)) if uid != 0 => {
            if let Err(e) = fsutil::chown(path, uid, gid) {
                tracing::warn!("cannot hand {} to the repository's owner (uid {uid}): {e}", path.display());
            }
        }
        _ => {}
    }
}

/// Released on drop: the kernel drops the `flock`, the lease deletes its object.
enum Held {
    File(#[allow(dead_code)] File),
    Lease(#[allow(dead_code)] super::lease::Lease),
}

impl RepoLock {
    /// Take the named lock (e.g. "backup") or fail at once if another process holds it.
    pub fn acquire(repo: &Repository, name: &str) -> Result<RepoLock, RepoError> {
        if !repo.storage().features().posix {
            let key = super::layout::lock_key(name);
            let lease = super::lease::Lease::acquire(repo.storage().raw(), &key, name)?;
            let path = PathBuf::from(format!("{}/{key}", repo.storage().location()));
            return Ok(RepoLock { _held: Held::Lease(lease), path });
        }
        let dir = lock_dir(repo);
        let lock_err = |e: std::io::Error| RepoError::Lock { path: dir.display().to_string(), detail: e.to_string() };
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(&dir).map_err(lock_err)?;
        }
        // Every time, not only on creation: this also repairs a lock directory or file that an
        // older pgkeep run as root left owned by root.
        hand_over(repo, &dir);
        let path = dir.join(format!("{name}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o660)
            .open(&path)
            .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                "; hint: run pgkeep as the repository's owner, or once as root (which hands the lock file to the owner)"
            } else {
                ""
            };
            RepoError::Lock { path: path.display().to_string(), detail: format!("{e}{hint}") }
        })?;
        hand_over(repo, &path);
        // `held_by` takes a shared lock for an instant: a few short retries keep a concurrent
        // `pgkeep list` from failing a backup. A real holder still fails it within ~0.1 s.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    return Err(RepoError::Locked {
                        what: name.to_string(),
                        path: path.display().to_string(),
                        holder: holder.trim().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(RepoError::Lock { path: path.display().to_string(), detail: e.to_string() })
                }
            }
        }
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", holder_line(std::process::id(), &crate::hostname()));
        Ok(RepoLock { _held: Held::File(file), path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// The holder line of the named lock while a live process holds it; None when nobody does (or
/// the lock was never taken, or cannot be opened). Creates nothing and never blocks.
pub fn held_by(repo: &Repository, name: &str) -> Option<String> {
    if !repo.storage().features().posix {
        return super::lease::live_holder(repo.storage().raw(), &super::layout::lock_key(name));
    }
    let path = lock_dir(repo).join(format!("{name}.lock"));
    let file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        // Free: dropping the file releases the shared lock at once.
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            Some(fs::read_to_string(&path).unwrap_or_default().trim().to_string())
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}
