//! Repository locks with `std::fs::File::try_lock`: the kernel drops them when the process
//! dies, so a killed backup never leaves a stale lock behind. Object stores have no `flock`:
//! there the lock is a lease object (`lease.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use super::{RepoError, Repository};
use crate::fsutil;

pub struct RepoLock {
    _held: Held,
    path: PathBuf,
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
            let key = format!("lock/{name}.lock");
            let lease = super::lease::Lease::acquire(repo.storage(), &key, name)?;
            let path = PathBuf::from(format!("{}/{key}", repo.storage().location()));
            return Ok(RepoLock { _held: Held::Lease(lease), path });
        }
        let dir = match repo.storage().local_root() {
            Some(root) => root.join("lock"),
            None => {
                let h = crc32c::crc32c(repo.storage().location().as_bytes());
                std::env::temp_dir().join(format!("pgkeep-lock-{h:08x}"))
            }
        };
        let lock_err = |e: std::io::Error| RepoError::Lock { path: dir.display().to_string(), detail: e.to_string() };
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(&dir).map_err(lock_err)?;
            if let (Some(root), true) = (repo.storage().local_root(), fsutil::running_as_root()) {
                if let Ok((uid, gid)) = fsutil::owner_of(root) {
                    let _ = fsutil::chown(&dir, uid, gid);
                }
            }
        }
        let path = dir.join(format!("{name}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o660)
            .open(&path)
            .map_err(|e| RepoError::Lock { path: path.display().to_string(), detail: e.to_string() })?;
        match file.try_lock() {
            Ok(()) => {}
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
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {} on {}", std::process::id(), crate::hostname());
        Ok(RepoLock { _held: Held::File(file), path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
