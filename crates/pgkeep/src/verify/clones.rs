//! Drills of snapshot backups: where each volume's clone goes, which backups a drill can
//! clone at all, and throwing the clones away again.
//!
//! A snapshot can only be cloned on its own file system (a btrfs snapshot of a snapshot, a
//! FICLONE of an image; a command driver's clone wherever `restore_command` makes it), so the
//! clones cannot live in the scratch directory: each goes beside its original volume as
//! `<original>.pgkeep-verify-<backup id>-<pid>` (reflink images: `<stem>.pgkeep-verify-…
//! .<ext>`, loop-mounted at `<stem>.pgkeep-verify-…`). [`Clones`] records every clone the
//! moment it exists and discards them with their drivers when the drill ends — on success,
//! on failure, on SIGINT, and on a panic (`Drop`).
//!
//! A drill refuses, before anything is created, a backup whose clones it could not remove:
//! EBS (new volumes would have to be created, attached and mounted on this machine) and
//! command volumes without `discard_command`. Leaving a clone behind would break the drill's
//! promise to leave nothing behind, and a clone pgkeep cannot remove is one nobody notices.

use std::path::{Path, PathBuf};

use super::VerifyError;
use crate::backup::snapshot::{
    driver, records_from_values, DriverKind, RestoredVolume, SnapshotConfig, SnapshotRecord,
};
use crate::repo::manifest::Manifest;

/// Clones made by one drill, discarded newest first.
pub struct Clones {
    cfg: SnapshotConfig,
    rt: tokio::runtime::Handle,
    made: Vec<(SnapshotRecord, RestoredVolume)>,
}

impl Clones {
    pub fn new(cfg: SnapshotConfig, rt: tokio::runtime::Handle) -> Clones {
        Clones { cfg, rt, made: Vec::new() }
    }

    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    pub fn add(&mut self, rec: SnapshotRecord, restored: RestoredVolume) {
        self.made.push((rec, restored));
    }

    /// Discard every clone; the error names each one left behind and why.
    pub fn discard(&mut self) -> Result<(), VerifyError> {
        let mut left = Vec::new();
        while let Some((rec, restored)) = self.made.pop() {
            let r = driver(rec.driver, &self.cfg, &self.rt).and_then(|d| d.discard(&rec, &restored, &self.cfg));
            match r {
                Ok(()) => tracing::debug!("discarded the drill's clone {} of volume {}", restored.created, rec.volume),
                Err(e) => left.push((restored.created.clone(), e.to_string())),
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        Err(VerifyError::ClonesLeft {
            paths: left.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", "),
            detail: left.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("; "),
        })
    }
}

impl Drop for Clones {
    fn drop(&mut self) {
        if let Err(e) = self.discard() {
            tracing::warn!("{e}");
        }
    }
}

/// `<name>.pgkeep-verify-<backup id>-<pid>` — and for reflink images
/// `<stem>.pgkeep-verify-<backup id>-<pid>.<ext>`, so the driver's mount point for it (the
/// image path without its extension) is `<stem>.pgkeep-verify-…`, never the original.
pub fn drill_target(rec: &SnapshotRecord, tag: &str) -> PathBuf {
    let source = Path::new(&rec.source);
    let name =
        |p: Option<&std::ffi::OsStr>| p.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| rec.volume.clone());
    match rec.driver {
        DriverKind::Reflink => {
            let ext = source.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "img".into());
            source.with_file_name(format!("{}.{tag}.{ext}", name(source.file_stem())))
        }
        _ => source.with_file_name(format!("{}.{tag}", name(source.file_name()))),
    }
}

/// Refuse, before anything is created, a snapshot backup whose clones a drill could not make
/// on this machine or could not remove afterwards.
pub fn refuse_unsupported(m: &Manifest, cfg: &SnapshotConfig) -> Result<(), VerifyError> {
    if m.snapshot_layout.is_none() {
        return Ok(());
    }
    // An unreadable record is the backup's problem: the drill's restore step reports it.
    let Ok(records) = records_from_values(&m.id, &m.snapshots) else { return Ok(()) };
    let id = &m.id;
    if records.iter().any(|r| r.driver == DriverKind::Ebs) {
        return Err(VerifyError::SnapshotDrill {
            detail: format!(
                "backup {id} is an EBS snapshot backup: its drill would need new volumes created, attached and mounted on this machine, which `pgkeep verify` does not do (nothing was created); hint: `pgkeep restore --backup {id} --attach-to INSTANCE` (a post-attach hook mounts them), then `pgkeep verify --pgdata <the restored data directory>` (it recovers through the archive), and delete the volumes afterwards"
            ),
        });
    }
    for r in records.iter().filter(|r| r.driver == DriverKind::Command) {
        let vol = cfg.volume(&r.volume);
        let missing: Vec<&str> = [
            ("restore_command", vol.and_then(|v| v.restore_command.as_deref())),
            ("discard_command", vol.and_then(|v| v.discard_command.as_deref())),
        ]
        .into_iter()
        .filter(|(_, c)| c.is_none_or(|c| c.trim().is_empty()))
        .map(|(k, _)| k)
        .collect();
        if !missing.is_empty() {
            return Err(VerifyError::SnapshotDrill {
                detail: format!(
                    "backup {id}: volume {} (command driver) has no {} in the config file, so a drill could not {} its clone; refusing rather than leave a clone behind (nothing was created); hint: set {} for [[volume]] {:?} (discard_command removes PGKEEP_RESTORE_PATH)",
                    r.volume,
                    missing.join(" and no "),
                    if missing.contains(&"restore_command") { "make" } else { "remove" },
                    missing.join(" and "),
                    r.volume
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::snapshot::SnapshotState;

    fn rec(driver: DriverKind, source: &str) -> SnapshotRecord {
        SnapshotRecord {
            volume: "data".into(),
            driver,
            snapshot_id: "x".into(),
            source: source.into(),
            volume_id: None,
            device: None,
            stripe_group: None,
            started_at: chrono::Utc::now(),
            acknowledged_at: chrono::Utc::now(),
            state: SnapshotState::Completed,
            detail: Default::default(),
        }
    }

    #[test]
    fn drill_targets_sit_beside_the_original_and_never_name_it() {
        let tag = "pgkeep-verify-20261121-064300F-42";
        assert_eq!(
            drill_target(&rec(DriverKind::Btrfs, "/srv/fs/data"), tag),
            PathBuf::from("/srv/fs/data.pgkeep-verify-20261121-064300F-42")
        );
        assert_eq!(
            drill_target(&rec(DriverKind::Command, "/srv/pg/wal"), tag),
            PathBuf::from("/srv/pg/wal.pgkeep-verify-20261121-064300F-42")
        );
        // The reflink driver mounts a clone image at the image path without its extension.
        let img = drill_target(&rec(DriverKind::Reflink, "/xfs/data.img"), tag);
        assert_eq!(img, PathBuf::from("/xfs/data.pgkeep-verify-20261121-064300F-42.img"));
        assert_eq!(img.with_extension(""), PathBuf::from("/xfs/data.pgkeep-verify-20261121-064300F-42"));
        let img = drill_target(&rec(DriverKind::Reflink, "/xfs/disk"), tag);
        assert_eq!(img, PathBuf::from("/xfs/disk.pgkeep-verify-20261121-064300F-42.img"));
        assert_ne!(img.with_extension(""), PathBuf::from("/xfs/disk"));
    }
}
