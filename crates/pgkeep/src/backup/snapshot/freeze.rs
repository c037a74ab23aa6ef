//! fsfreeze for the members of one striped file system that are snapshotted one by one:
//! FIFREEZE before the first snapshot request, FITHAW right after the last acknowledgement.
//! [`Frozen`] thaws on drop, so every path out of the snapshot step (errors, panics in the
//! drivers' threads) thaws the file system.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::SnapshotError;

// linux/fs.h: #define FIFREEZE _IOWR('X', 119, int), FITHAW _IOWR('X', 120, int)
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// A frozen file system; thawed when dropped.
pub struct Frozen {
    file: Option<File>,
    path: PathBuf,
    since: Instant,
}

impl Frozen {
    /// Freeze the file system holding `path` (needs root).
    pub fn freeze(path: &Path) -> Result<Frozen, SnapshotError> {
        let err = |detail: String| SnapshotError::Freeze { path: path.display().to_string(), detail };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        // SAFETY: FIFREEZE takes an int argument that the kernel ignores; fd is valid.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FIFREEZE as _, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let detail = match e.raw_os_error() {
                Some(libc::EBUSY) => "it is already frozen (by another tool?)".to_string(),
                Some(libc::EOPNOTSUPP) => "the file system does not support freezing".to_string(),
                Some(libc::EPERM) => "permission denied (fsfreeze needs root)".to_string(),
                _ => e.to_string(),
            };
            return Err(err(detail));
        }
        Ok(Frozen { file: Some(file), path: path.to_path_buf(), since: Instant::now() })
    }

    /// Thaw now; returns how long the file system was frozen (seconds).
    pub fn thaw(mut self) -> Result<f64, SnapshotError> {
        let secs = self.since.elapsed().as_secs_f64();
        self.thaw_inner().map(|_| secs)
    }

    fn thaw_inner(&mut self) -> Result<(), SnapshotError> {
        if let Some(f) = self.file.take() {
            // SAFETY: as above; FITHAW on the fd FIFREEZE was issued on.
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), FITHAW as _, 0) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(SnapshotError::Freeze {
                    path: self.path.display().to_string(),
                    detail: format!("thaw failed: {e}; run `fsfreeze --unfreeze {}` now", self.path.display()),
                });
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.file.is_some() {
            if let Err(e) = self.thaw_inner() {
                tracing::error!("{e}");
            }
        }
    }
}
