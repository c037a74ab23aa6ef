//! reflink: a volume is an image file (e.g. a loop-mounted disk image); a snapshot is a
//! FICLONE copy of it on the same file system (XFS with reflink=1, btrfs): instant, sharing
//! blocks, taken at one point in time (the kernel writes the image's dirty pages back first).
//! The file system inside the image is found through its loop device; restore clones the
//! snapshot again and loop-mounts the clone.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::coverage::{is_mount_point, loop_device_of, mount_of_source};
use super::{
    run_tool, DriverFeatures, DriverKind, RestoreRequest, RestoreSetOptions, RestoredVolume, SnapContext,
    SnapshotConfig, SnapshotDriver, SnapshotError, SnapshotFailure, SnapshotRecord, SnapshotState, VolumeConfig,
};

pub struct Reflink;

// linux/fs.h: #define FICLONE _IOW(0x94, 9, int)
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Clone `src` to the new file `dest` (which must not exist) with FICLONE, durably.
pub fn clone_file(src: &Path, dest: &Path, mode: u32) -> std::io::Result<()> {
    let s = File::open(src)?;
    let d = OpenOptions::new().write(true).create_new(true).mode(mode).open(dest)?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are valid and owned here.
    let rc = unsafe { libc::ioctl(d.as_raw_fd(), FICLONE as _, s.as_raw_fd()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        drop(d);
        let _ = std::fs::remove_file(dest);
        return Err(match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => std::io::Error::other(format!(
                "{e}: the file system does not support reflinks (XFS needs mkfs.xfs -m reflink=1; btrfs works)"
            )),
            Some(libc::EXDEV) => std::io::Error::other(format!("{e}: source and clone must be on one file system")),
            _ => e,
        });
    }
    d.sync_all()?;
    if let Some(parent) = dest.parent() {
        crate::fsutil::fsync_dir(parent)?;
    }
    Ok(())
}

fn snapshot_dir(vol: &VolumeConfig) -> PathBuf {
    match &vol.snapshot_dir {
        Some(d) => d.clone(),
        None => vol.path().parent().unwrap_or(Path::new("/")).join(".pgkeep-snapshots"),
    }
}

/// Mount point and fstype of the file system inside the image (None when not loop-mounted).
fn mounted_at(vol: &VolumeConfig) -> Option<(PathBuf, String)> {
    let dev = loop_device_of(vol.path())?;
    mount_of_source(&dev)
}

/// `<dir>/<stem>-<id><.ext>` beside `image`.
fn default_image_target(image: &Path, backup_id: &str) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "volume".into());
    let name = match image.extension() {
        Some(ext) => format!("{stem}-{backup_id}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{backup_id}"),
    };
    image.with_file_name(name)
}

/// Where a clone image is mounted: the image path without its extension (or + ".mnt").
fn mount_point_for(image: &Path) -> PathBuf {
    if image.extension().is_some() {
        image.with_extension("")
    } else {
        let mut s = image.as_os_str().to_owned();
        s.push(".mnt");
        PathBuf::from(s)
    }
}

impl SnapshotDriver for Reflink {
    fn kind(&self) -> DriverKind {
        DriverKind::Reflink
    }

    fn features(&self) -> DriverFeatures {
        DriverFeatures { atomic_multi_volume: false, async_completion: false, local_restore: true }
    }

    fn root(&self, vol: &VolumeConfig) -> Result<PathBuf, SnapshotError> {
        if let Some(m) = &vol.mount {
            return std::fs::canonicalize(m).map_err(|e| SnapshotError::driver(vol, "find the mount point", e));
        }
        mounted_at(vol).map(|(m, _)| m).ok_or_else(|| {
            SnapshotError::driver(
                vol,
                "find the file system",
                format!("image {} is not loop-mounted", vol.path().display()),
            )
            .with_hint("mount it (mount -o loop IMAGE DIR) or set mount = \"DIR\" for this volume")
        })
    }

    fn preflight(&self, vols: &[&VolumeConfig], _ctx: &SnapContext) -> Result<(), SnapshotError> {
        for v in vols {
            let m = std::fs::metadata(v.path())
                .map_err(|e| SnapshotError::driver(v, "check", format!("{}: {e}", v.path().display())))?;
            if !m.is_file() {
                return Err(SnapshotError::driver(v, "check", format!("{} is not an image file", v.path().display()))
                    .with_hint("for the reflink driver, path is the volume's image file"));
            }
            let dir = snapshot_dir(v);
            std::fs::create_dir_all(&dir).map_err(|e| {
                SnapshotError::driver(v, "create the snapshot directory", format!("{}: {e}", dir.display()))
            })?;
        }
        Ok(())
    }

    fn snapshot(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<Vec<SnapshotRecord>, SnapshotFailure> {
        let mut taken = Vec::new();
        for v in vols {
            let dir = snapshot_dir(v).join(&ctx.backup_id);
            let dest = dir.join(v.path().file_name().unwrap_or_else(|| std::ffi::OsStr::new(&v.name)));
            let mut detail = std::collections::BTreeMap::new();
            if let Some((mount, fstype)) = mounted_at(v) {
                detail.insert("mount".to_string(), mount.display().to_string());
                detail.insert("fstype".to_string(), fstype);
            }
            let started_at = Utc::now();
            let res = std::fs::create_dir_all(&dir).and_then(|_| clone_file(v.path(), &dest, 0o600));
            if let Err(e) = res {
                return Err(SnapshotFailure::new(
                    SnapshotError::driver(
                        v,
                        "snapshot (FICLONE)",
                        format!("{} → {}: {e}", v.path().display(), dest.display()),
                    ),
                    taken,
                ));
            }
            let acknowledged_at = Utc::now();
            let _ = crate::fsutil::set_mode(&dest, 0o400);
            taken.push(SnapshotRecord {
                volume: v.name.clone(),
                driver: DriverKind::Reflink,
                snapshot_id: dest.display().to_string(),
                source: v.path().display().to_string(),
                volume_id: None,
                device: None,
                stripe_group: v.stripe_group.clone(),
                started_at,
                acknowledged_at,
                state: SnapshotState::Completed,
                detail,
            });
        }
        Ok(taken)
    }

    fn refresh(&self, _recs: &mut [SnapshotRecord], _cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn delete(&self, rec: &SnapshotRecord, _cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        let p = Path::new(&rec.snapshot_id);
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SnapshotError::rec(rec, "delete", e)),
        }
        if let Some(parent) = p.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    fn restore(
        &self,
        reqs: &[RestoreRequest<'_>],
        opts: &RestoreSetOptions,
        _cfg: &SnapshotConfig,
    ) -> Result<Vec<RestoredVolume>, SnapshotError> {
        let mut out = Vec::new();
        for r in reqs {
            let rec = r.record;
            let (image, mount) = match &r.target {
                Some(p) => (p.clone(), mount_point_for(p)),
                None => {
                    let image = default_image_target(Path::new(&rec.source), &opts.backup_id);
                    let mount = match rec.detail.get("mount") {
                        Some(m) => super::btrfs::default_target(Path::new(m), &opts.backup_id),
                        None => mount_point_for(&image),
                    };
                    (image, mount)
                }
            };
            if std::fs::symlink_metadata(&image).is_ok() {
                return Err(SnapshotError::Other(format!(
                    "restore target {} for volume {} exists; refusing to overwrite it; hint: pass --volume {}=NEW_IMAGE_PATH",
                    image.display(),
                    rec.volume,
                    rec.volume
                )));
            }
            let mode = std::fs::metadata(&rec.source)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                .unwrap_or(0o600);
            clone_file(Path::new(&rec.snapshot_id), &image, mode | 0o600)
                .map_err(|e| SnapshotError::rec(rec, "restore (FICLONE)", format!("→ {}: {e}", image.display())))?;
            let mut root = None;
            if let Some(fstype) = rec.detail.get("fstype") {
                let mounted = super::btrfs::prepare_target(&rec.volume, &mount).and_then(|_| {
                    std::fs::create_dir_all(&mount)
                        .map_err(|e| SnapshotError::rec(rec, "restore", format!("{}: {e}", mount.display())))?;
                    // A clone carries its original's file system UUID; XFS refuses a duplicate unless told.
                    let options = if fstype == "xfs" { "loop,nouuid" } else { "loop" };
                    run_tool("mount", &["-o".as_ref(), options.as_ref(), image.as_os_str(), mount.as_os_str()]).map_err(
                        |e| {
                            // Nothing half-made stays behind: the empty mount point and the clone go.
                            let _ = std::fs::remove_dir(&mount);
                            SnapshotError::rec(rec, "mount the restored image", e)
                        },
                    )
                });
                if let Err(e) = mounted {
                    let _ = std::fs::remove_file(&image);
                    return Err(e);
                }
                root = Some(mount.display().to_string());
            }
            out.push(RestoredVolume {
                volume: rec.volume.clone(),
                snapshot_id: rec.snapshot_id.clone(),
                root,
                created: image.display().to_string(),
                device: None,
                attached_to: None,
            });
        }
        Ok(out)
    }

    fn discard(
        &self,
        rec: &SnapshotRecord,
        restored: &RestoredVolume,
        _cfg: &SnapshotConfig,
    ) -> Result<(), SnapshotError> {
        let image = Path::new(&restored.created);
        let err = |detail: String, hint: String| {
            SnapshotError::rec(rec, "discard the restored clone", detail).with_hint(&hint)
        };
        // The clone's file system first (restore mounted it at `root`), then the image.
        if let Some(root) = restored.root.as_deref().map(Path::new) {
            if is_mount_point(root) {
                // A server that just stopped may hold the file system for a moment.
                let mut last = String::new();
                for attempt in 0..20 {
                    match run_tool("umount", &[root.as_os_str()]) {
                        Ok(_) => {
                            last.clear();
                            break;
                        }
                        Err(e) => last = e,
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100 * (attempt + 1).min(5)));
                }
                if !last.is_empty() {
                    return Err(err(
                        last,
                        format!("unmount {} and remove {} by hand", root.display(), image.display()),
                    ));
                }
            }
            match std::fs::remove_dir(root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(err(
                        format!("cannot remove the mount point {}: {e}", root.display()),
                        format!("remove {} and {} by hand", root.display(), image.display()),
                    ))
                }
            }
        }
        match std::fs::remove_file(image) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(
                format!("cannot remove {}: {e}", image.display()),
                format!("remove {} by hand", image.display()),
            )),
        }
    }
}
