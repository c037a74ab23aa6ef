//! command: user-supplied commands for any other snapshot mechanism (LVM, ZFS, a SAN).
//!
//! Each runs as `sh -c COMMAND` with `PGKEEP_VOLUME_NAME`, `PGKEEP_VOLUME_PATH`,
//! `PGKEEP_BACKUP_ID` and, where one exists, `PGKEEP_SNAPSHOT_ID` / `PGKEEP_RESTORE_PATH`:
//! - `snapshot_command` takes the snapshot and prints its id as the last line of stdout
//!   (default id: `<volume>@<backup id>`); exiting 0 means the point in time is fixed;
//! - `status_command` (optional) prints `pending`, `completed` or `error`; without it a
//!   snapshot is completed when `snapshot_command` exits;
//! - `delete_command` deletes PGKEEP_SNAPSHOT_ID (without it, deleting is refused);
//! - `restore_command` makes the snapshot's content appear at PGKEEP_RESTORE_PATH;
//! - `discard_command` (optional) removes what `restore_command` made at PGKEEP_RESTORE_PATH
//!   (a restore drill's clone); without it `pgkeep verify` refuses this volume's backups
//!   rather than leave a clone behind it cannot remove.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;

use super::{
    DriverFeatures, DriverKind, RestoreRequest, RestoreSetOptions, RestoredVolume, SnapContext, SnapshotConfig,
    SnapshotDriver, SnapshotError, SnapshotFailure, SnapshotRecord, SnapshotState, VolumeConfig,
};
use crate::backup::hooks::run_shell;

pub struct CommandDriver;

fn timeout(vol: Option<&VolumeConfig>) -> Duration {
    Duration::from_secs(vol.and_then(|v| v.command_timeout).unwrap_or(300))
}

fn base_env(name: &str, path: &str, backup_id: &str) -> Vec<(String, String)> {
    vec![
        ("PGKEEP_VOLUME_NAME".into(), name.into()),
        ("PGKEEP_VOLUME_PATH".into(), path.into()),
        ("PGKEEP_BACKUP_ID".into(), backup_id.into()),
    ]
}

fn rec_env(rec: &SnapshotRecord) -> Vec<(String, String)> {
    let backup = rec.detail.get("backup_id").cloned().unwrap_or_default();
    let mut env = base_env(&rec.volume, &rec.source, &backup);
    env.push(("PGKEEP_SNAPSHOT_ID".into(), rec.snapshot_id.clone()));
    env
}

impl SnapshotDriver for CommandDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Command
    }

    fn features(&self) -> DriverFeatures {
        DriverFeatures { atomic_multi_volume: false, async_completion: true, local_restore: true }
    }

    fn root(&self, vol: &VolumeConfig) -> Result<PathBuf, SnapshotError> {
        let p = vol.mount.as_deref().unwrap_or(vol.path());
        std::fs::canonicalize(p)
            .map_err(|e| SnapshotError::driver(vol, "find the volume path", format!("{}: {e}", p.display())))
    }

    fn preflight(&self, vols: &[&VolumeConfig], _ctx: &SnapContext) -> Result<(), SnapshotError> {
        for v in vols {
            if !v.path().exists() {
                return Err(SnapshotError::driver(v, "check", format!("{} does not exist", v.path().display())));
            }
        }
        Ok(())
    }

    fn snapshot(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<Vec<SnapshotRecord>, SnapshotFailure> {
        let mut taken = Vec::new();
        for v in vols {
            let cmd = v.snapshot_command.as_deref().unwrap_or_default();
            let env = base_env(&v.name, &v.path().display().to_string(), &ctx.backup_id);
            let started_at = Utc::now();
            let out = match run_shell(&format!("snapshot_command of volume {}", v.name), cmd, &env, timeout(Some(v))) {
                Ok(o) => o,
                Err(e) => return Err(SnapshotFailure::new(SnapshotError::driver(v, "snapshot", e), taken)),
            };
            let acknowledged_at = Utc::now();
            let id = out
                .stdout
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}@{}", v.name, ctx.backup_id));
            let mut detail = std::collections::BTreeMap::new();
            detail.insert("backup_id".to_string(), ctx.backup_id.clone());
            taken.push(SnapshotRecord {
                volume: v.name.clone(),
                driver: DriverKind::Command,
                snapshot_id: id,
                source: v.path().display().to_string(),
                volume_id: None,
                device: None,
                stripe_group: v.stripe_group.clone(),
                started_at,
                acknowledged_at,
                state: if v.status_command.is_some() { SnapshotState::Pending } else { SnapshotState::Completed },
                detail,
            });
        }
        Ok(taken)
    }

    fn refresh(&self, recs: &mut [SnapshotRecord], cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        for r in recs.iter_mut().filter(|r| r.state == SnapshotState::Pending) {
            let vol = cfg.volume(&r.volume);
            let Some(cmd) = vol.and_then(|v| v.status_command.as_deref()) else {
                return Err(SnapshotError::rec(r, "refresh", "no status_command is configured for this volume"));
            };
            let out = run_shell(&format!("status_command of volume {}", r.volume), cmd, &rec_env(r), timeout(vol))
                .map_err(|e| SnapshotError::rec(r, "refresh", e))?;
            let state = out.stdout.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("").to_ascii_lowercase();
            r.state = match state.as_str() {
                "completed" | "complete" | "done" => SnapshotState::Completed,
                "pending" | "running" => SnapshotState::Pending,
                "error" | "failed" => SnapshotState::Error,
                other => {
                    return Err(SnapshotError::rec(
                        r,
                        "refresh",
                        format!("status_command printed {other:?}; expected pending, completed or error"),
                    ))
                }
            };
        }
        Ok(())
    }

    fn delete(&self, rec: &SnapshotRecord, cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        let vol = cfg.volume(&rec.volume);
        let Some(cmd) = vol.and_then(|v| v.delete_command.as_deref()) else {
            return Err(SnapshotError::rec(rec, "delete", "no delete_command is configured for this volume")
                .with_hint("set delete_command, or delete the snapshot by hand"));
        };
        run_shell(&format!("delete_command of volume {}", rec.volume), cmd, &rec_env(rec), timeout(vol))
            .map_err(|e| SnapshotError::rec(rec, "delete", e))?;
        Ok(())
    }

    fn restore(
        &self,
        reqs: &[RestoreRequest<'_>],
        opts: &RestoreSetOptions,
        cfg: &SnapshotConfig,
    ) -> Result<Vec<RestoredVolume>, SnapshotError> {
        let mut out = Vec::new();
        for r in reqs {
            let rec = r.record;
            let vol = cfg.volume(&rec.volume);
            let Some(cmd) = vol.and_then(|v| v.restore_command.as_deref()) else {
                return Err(SnapshotError::rec(rec, "restore", "no restore_command is configured for this volume"));
            };
            let target = r
                .target
                .clone()
                .unwrap_or_else(|| super::btrfs::default_target(Path::new(&rec.source), &opts.backup_id));
            super::btrfs::prepare_target(&rec.volume, &target)?;
            let mut env = rec_env(rec);
            env.push(("PGKEEP_RESTORE_PATH".into(), target.display().to_string()));
            run_shell(&format!("restore_command of volume {}", rec.volume), cmd, &env, timeout(vol))
                .map_err(|e| SnapshotError::rec(rec, "restore", e))?;
            out.push(RestoredVolume::local(rec, &target));
        }
        Ok(out)
    }

    fn discard(
        &self,
        rec: &SnapshotRecord,
        restored: &RestoredVolume,
        cfg: &SnapshotConfig,
    ) -> Result<(), SnapshotError> {
        let vol = cfg.volume(&rec.volume);
        let target = Path::new(&restored.created);
        let Some(cmd) = vol.and_then(|v| v.discard_command.as_deref()) else {
            return Err(SnapshotError::rec(
                rec,
                "discard the restored clone",
                format!("no discard_command is configured for this volume; {} is left in place", target.display()),
            )
            .with_hint("set discard_command (it removes PGKEEP_RESTORE_PATH), and remove the clone by hand"));
        };
        let mut env = rec_env(rec);
        env.push(("PGKEEP_RESTORE_PATH".into(), restored.created.clone()));
        run_shell(&format!("discard_command of volume {}", rec.volume), cmd, &env, timeout(vol)).map_err(|e| {
            SnapshotError::rec(rec, "discard the restored clone", e)
                .with_hint(&format!("remove {} by hand", target.display()))
        })?;
        // An empty mount point the command left is pgkeep's to remove; anything more means the
        // clone is still there.
        let empty_dir = std::fs::read_dir(target).map(|mut it| it.next().is_none());
        match empty_dir {
            Err(_) if std::fs::symlink_metadata(target).is_err() => Ok(()),
            Ok(true) => std::fs::remove_dir(target).map_err(|e| {
                SnapshotError::rec(rec, "discard the restored clone", format!("{}: {e}", target.display()))
            }),
            _ => Err(SnapshotError::rec(
                rec,
                "discard the restored clone",
                format!("discard_command succeeded but {} still exists", target.display()),
            )
            .with_hint("discard_command must remove PGKEEP_RESTORE_PATH; remove it by hand")),
        }
    }
}
