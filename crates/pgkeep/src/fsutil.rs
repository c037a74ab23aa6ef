//! Durable local-file primitives shared by restore, snapshot and instance code: fsync of files
//! and directories, write-then-rename, ownership when running as root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// `p` as an absolute path (relative paths are taken from the current directory), for paths
/// that end up in recovery settings, links and reports.
pub fn absolute(p: &Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// fsync a directory so entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `syncfs(2)` once per file system holding any of `paths` (errors since Linux 5.8 report
/// writeback failures of that file system).
pub fn syncfs_all(paths: &[std::path::PathBuf]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = Vec::new();
    for p in paths {
        let dir = File::open(p)?;
        let dev = dir.metadata()?.dev();
        if done.contains(&dev) {
            continue;
        }
        // SAFETY: syncfs on a valid, open file descriptor.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        done.push(dev);
    }
    Ok(())
}

/// Write `data` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
/// The temp name is fixed (a retry after a kill reuses it) and removed when a step fails;
/// `mode` is subject to the umask.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replace(path, data, mode, true)?;
    fsync_dir(parent_dir(path))
}

/// Write `path` through a temp file beside it and a rename, so no reader ever sees a partial
/// file; `sync`: the temp file is fsynced before the rename (the directory is the caller's).
/// The temp file is removed when anything fails.
pub fn write_replace(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent_dir(path).join(format!(".{name}.pgkeep-tmp"));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// The directory holding `path`; a bare file name (restore_command may get a relative %p) has
/// the empty path as parent, which is ".".
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// True when the process runs with root's effective uid.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Owner (uid, gid) of a path.
pub fn owner_of(path: &Path) -> io::Result<(u32, u32)> {
    let m = fs::metadata(path)?;
    Ok((m.uid(), m.gid()))
}

/// Change owner without following a final symlink.
pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Recursively change ownership of a tree (does not follow symlinks).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    chown(path, uid, gid)?;
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Set permission bits.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A directory is "empty" for restore purposes when it does not exist or has no entries.
pub fn is_absent_or_empty(path: &Path) -> io::Result<bool> {
    match fs::read_dir(path) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Human-readable byte count (binary units), for reports.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
