//! btrfs: a volume is a subvolume; a snapshot is a read-only snapshot of it
//! (`btrfs subvolume snapshot -r`, atomic and instant), kept in `snapshot_dir` (default
//! `.pgkeep-snapshots/` beside the subvolume) as `<backup id>/<volume name>`; restore is a
//! writable snapshot of that snapshot at the target path.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::{
    run_tool, DriverFeatures, DriverKind, RestoreRequest, RestoreSetOptions, RestoredVolume, SnapContext,
    SnapshotConfig, SnapshotDriver, SnapshotError, SnapshotFailure, SnapshotRecord, SnapshotState, VolumeConfig,
};

pub struct Btrfs;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

/// True when `p` is on btrfs.
pub fn is_btrfs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BTRFS_SUPER_MAGIC
    }
}

/// True when `p` is the root of a btrfs subvolume (inode 256 on btrfs).
pub fn is_subvolume(p: &Path) -> bool {
    is_btrfs(p) && std::fs::metadata(p).map(|m| m.is_dir() && m.ino() == 256).unwrap_or(false)
}

fn snapshot_dir(vol: &VolumeConfig) -> PathBuf {
    match &vol.snapshot_dir {
        Some(d) => d.clone(),
        None => vol.path().parent().unwrap_or(Path::new("/")).join(".pgkeep-snapshots"),
    }
}

fn btrfs(args: &[&OsStr]) -> Result<String, String> {
    run_tool("btrfs", args)
}

/// Default restore target: beside the original, suffixed with the backup id.
pub fn default_target(original: &Path, backup_id: &str) -> PathBuf {
    let name = original.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "volume".into());
    original.with_file_name(format!("{name}-{backup_id}"))
}

/// Refuse a target that exists and is not an empty directory; remove an empty one (the clone
/// takes its place).
pub fn prepare_target(volume: &str, target: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(target) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(SnapshotError::Other(format!(
                    "restore target {} for volume {volume} exists and is not empty; refusing to restore over it; hint: pass --volume {volume}=NEW_PATH",
                    target.display()
                )));
            }
            std::fs::remove_dir(target)
                .map_err(|e| SnapshotError::Other(format!("cannot replace empty {}: {e}", target.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(target).is_ok() {
                return Err(SnapshotError::Other(format!(
                    "restore target {} for volume {volume} exists; hint: pass --volume {volume}=NEW_PATH",
                    target.display()
                )));
            }
            Ok(())
        }
        Err(_) => Err(SnapshotError::Other(format!(
            "restore target {} for volume {volume} exists and is not a directory; hint: pass --volume {volume}=NEW_PATH",
            target.display()
        ))),
    }
}

impl SnapshotDriver for Btrfs {
    fn kind(&self) -> DriverKind {
        DriverKind::Btrfs
    }

    fn features(&self) -> DriverFeatures {
        DriverFeatures { atomic_multi_volume: false, async_completion: false, local_restore: true }
    }

    fn root(&self, vol: &VolumeConfig) -> Result<PathBuf, SnapshotError> {
        std::fs::canonicalize(vol.path()).map_err(|e| SnapshotError::driver(vol, "find the subvolume", e))
    }

    fn preflight(&self, vols: &[&VolumeConfig], _ctx: &SnapContext) -> Result<(), SnapshotError> {
        for v in vols {
            if !is_subvolume(v.path()) {
                return Err(SnapshotError::driver(
                    v,
                    "check",
                    format!("{} is not a btrfs subvolume", v.path().display()),
                )
                .with_hint("path must be the subvolume itself (`btrfs subvolume list` shows them)"));
            }
            let dir = snapshot_dir(v);
            std::fs::create_dir_all(&dir).map_err(|e| {
                SnapshotError::driver(v, "create the snapshot directory", format!("{}: {e}", dir.display()))
                    .with_hint("set snapshot_dir to a directory on the same btrfs file system")
            })?;
            if !is_btrfs(&dir) {
                return Err(SnapshotError::driver(
                    v,
                    "check",
                    format!("snapshot directory {} is not on btrfs", dir.display()),
                )
                .with_hint("set snapshot_dir to a directory on the same btrfs file system"));
            }
        }
        Ok(())
    }

    fn snapshot(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<Vec<SnapshotRecord>, SnapshotFailure> {
        let mut taken = Vec::new();
        for v in vols {
            let dir = snapshot_dir(v).join(&ctx.backup_id);
            let dest = dir.join(&v.name);
            let started_at = Utc::now();
            let res = std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display())).and_then(|_| {
                btrfs(&[
                    OsStr::new("subvolume"),
                    OsStr::new("snapshot"),
                    OsStr::new("-r"),
                    v.path().as_os_str(),
                    dest.as_os_str(),
                ])
            });
            if let Err(detail) = res {
                return Err(SnapshotFailure::new(SnapshotError::driver(v, "snapshot", detail), taken));
            }
            taken.push(SnapshotRecord {
                volume: v.name.clone(),
                driver: DriverKind::Btrfs,
                snapshot_id: dest.display().to_string(),
                source: v.path().display().to_string(),
                volume_id: None,
                device: None,
                stripe_group: v.stripe_group.clone(),
                started_at,
                acknowledged_at: Utc::now(),
                state: SnapshotState::Completed,
                detail: Default::default(),
            });
        }
        Ok(taken)
    }

    fn refresh(&self, _recs: &mut [SnapshotRecord], _cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn delete(&self, rec: &SnapshotRecord, _cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        let p = Path::new(&rec.snapshot_id);
        if std::fs::symlink_metadata(p).is_err() {
            return Ok(());
        }
        btrfs(&[OsStr::new("subvolume"), OsStr::new("delete"), p.as_os_str()])
            .map_err(|e| SnapshotError::rec(rec, "delete", e))?;
        // The per-backup directory goes when its last snapshot does.
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
            let target =
                r.target.clone().unwrap_or_else(|| default_target(Path::new(&r.record.source), &opts.backup_id));
            prepare_target(&r.record.volume, &target)?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SnapshotError::rec(r.record, "restore", format!("{}: {e}", parent.display())))?;
            }
            btrfs(&[
                OsStr::new("subvolume"),
                OsStr::new("snapshot"),
                OsStr::new(&r.record.snapshot_id),
                target.as_os_str(),
            ])
            .map_err(|e| {
                SnapshotError::rec(r.record, "restore", e)
                    .with_hint("the target must be on the same btrfs file system as the snapshot")
            })?;
            out.push(RestoredVolume::local(r.record, &target));
        }
        Ok(out)
    }

    fn discard(
        &self,
        rec: &SnapshotRecord,
        restored: &RestoredVolume,
        _cfg: &SnapshotConfig,
    ) -> Result<(), SnapshotError> {
        let p = Path::new(&restored.created);
        if std::fs::symlink_metadata(p).is_err() {
            return Ok(());
        }
        if !is_subvolume(p) {
            return Err(SnapshotError::rec(
                rec,
                "discard the restored clone",
                format!("{} is not a btrfs subvolume, so it is not the clone; left in place", p.display()),
            ));
        }
        btrfs(&[OsStr::new("subvolume"), OsStr::new("delete"), p.as_os_str()]).map_err(|e| {
            SnapshotError::rec(rec, "discard the restored clone", e)
                .with_hint(&format!("delete it by hand: btrfs subvolume delete {}", p.display()))
        })?;
        Ok(())
    }
}
