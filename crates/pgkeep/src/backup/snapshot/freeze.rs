//! fsfreeze for the members of one striped file system that are snapshotted one by one:
//! FIFREEZE before the first snapshot request, FITHAW right after the last acknowledgement.
//! [`Frozen`] thaws on drop, so every path out of the snapshot step (errors, panics in the
//! drivers' threads) thaws the file system. While anything is frozen, SIGINT, SIGTERM, SIGHUP
//! and SIGQUIT are held back ([`SignalHold`]) and delivered after the thaw: a stop request in
//! those milliseconds must not leave the server's file system frozen. (SIGKILL cannot be held.)

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
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
    // Dropped after the thaw (fields drop in declaration order, after Drop::drop).
    _signals: SignalHold,
}

const HELD: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The first termination signal that arrived while held (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// Nesting count and the dispositions to restore when the last hold ends.
static HOLDS: Mutex<(usize, Vec<(libc::c_int, libc::sigaction)>)> = Mutex::new((0, Vec::new()));

extern "C" fn remember(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    let _ = PENDING.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Holds termination signals back while it lives; re-delivers the first one when the last
/// hold ends.
pub struct SignalHold(());

impl SignalHold {
    pub fn new() -> SignalHold {
        let mut holds = HOLDS.lock().unwrap_or_else(|p| p.into_inner());
        if holds.0 == 0 {
            PENDING.store(0, Ordering::SeqCst);
            holds.1.clear();
            for sig in HELD {
                // SAFETY: installing a handler that only stores into an atomic; the previous
                // disposition is saved and restored when the last hold ends.
                unsafe {
                    let mut new: libc::sigaction = std::mem::zeroed();
                    new.sa_sigaction = remember as extern "C" fn(libc::c_int) as usize;
                    libc::sigemptyset(&mut new.sa_mask);
                    let mut old: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(sig, &new, &mut old) == 0 {
                        holds.1.push((sig, old));
                    }
                }
            }
        }
        holds.0 += 1;
        SignalHold(())
    }
}

impl Default for SignalHold {
    fn default() -> Self {
        SignalHold::new()
    }
}

impl Drop for SignalHold {
    fn drop(&mut self) {
        let mut holds = HOLDS.lock().unwrap_or_else(|p| p.into_inner());
        holds.0 = holds.0.saturating_sub(1);
        if holds.0 > 0 {
            return;
        }
        for (sig, old) in holds.1.drain(..) {
            // SAFETY: restoring the disposition saved by SignalHold::new.
            unsafe {
                libc::sigaction(sig, &old, std::ptr::null_mut());
            }
        }
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 {
            tracing::warn!(
                "signal {sig} arrived while a file system was frozen; delivering it now that all are thawed"
            );
            // SAFETY: re-raising a signal to ourselves with its original disposition.
            unsafe {
                libc::raise(sig);
            }
        }
    }
}

impl Frozen {
    /// Freeze the file system holding `path` (needs root).
    pub fn freeze(path: &Path) -> Result<Frozen, SnapshotError> {
        let err = |detail: String| SnapshotError::Freeze { path: path.display().to_string(), detail };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let signals = SignalHold::new();
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
        Ok(Frozen { file: Some(file), path: path.to_path_buf(), since: Instant::now(), _signals: signals })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    static DELIVERED: AtomicBool = AtomicBool::new(false);

    extern "C" fn test_handler(_: libc::c_int) {
        DELIVERED.store(true, Ordering::SeqCst);
    }

    /// A signal that arrives during a hold reaches the original handler only when the last
    /// (nested) hold ends — i.e. after every file system is thawed.
    #[test]
    fn termination_signals_wait_for_the_last_hold() {
        // SAFETY: a handler that only stores into an atomic (nextest runs each test in its own
        // process, so the disposition change cannot leak into other tests).
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = test_handler as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGHUP, &act, std::ptr::null_mut()), 0);
        }
        let outer = SignalHold::new();
        let inner = SignalHold::new();
        // SAFETY: raising a signal to ourselves; it is handled by `remember` while held.
        unsafe { libc::raise(libc::SIGHUP) };
        assert!(!DELIVERED.load(Ordering::SeqCst), "delivered while held");
        drop(inner);
        assert!(!DELIVERED.load(Ordering::SeqCst), "delivered while the outer hold lives");
        drop(outer);
        assert!(DELIVERED.load(Ordering::SeqCst), "not re-delivered after the last hold");
    }
}
