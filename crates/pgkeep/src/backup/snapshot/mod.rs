//! Snapshot backups: volumes snapshotted inside the non-exclusive backup bracket.
//!
//! # The driver contract
//!
//! A [`SnapshotDriver`] turns configured volumes (`[[volume]]` in the config file) into
//! point-in-time snapshots and back. Whatever the driver, callers rely on this:
//!
//! - [`SnapshotDriver::snapshot`] returns only once the point in time of every snapshot it
//!   reports is fixed ("acknowledged": btrfs/reflink finished, EBS `pending`, a command exited 0).
//!   pg_backup_stop is called right after the last acknowledgement; completion may come later.
//! - A driver that reports `atomic_multi_volume` snapshots all volumes of one call at one
//!   point in time (EBS `CreateSnapshots`); others are snapshotted one by one, so volumes of
//!   one striped file system (`stripe_group`) are then frozen with fsfreeze around the calls.
//! - On failure a driver reports the snapshots it did take ([`SnapshotFailure::taken`]) so the
//!   caller can delete them: nothing a failed backup created outlives it unnoticed.
//! - [`SnapshotDriver::delete`] is idempotent: a snapshot that is already gone is a success.
//! - [`SnapshotDriver::restore`] never writes over an existing, non-empty target (invariant 7).
//! - [`SnapshotDriver::discard`] removes exactly what `restore` reported (a restore drill's
//!   clone) and nothing else; already gone is a success.
//! - Nothing here prints; secrets (cloud credentials) are never part of a record or message.
//!
//! The flow around the drivers (coverage check, hooks, freeze, pg_backup_start/stop, WAL
//! confirmation, commit) lives in [`run`]; restore in `crate::restore::snapshot`.

pub mod btrfs;
pub mod command;
pub mod coverage;
#[cfg(feature = "ebs")]
pub mod ebs;
pub mod expire;
pub mod freeze;
pub mod reflink;
pub mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

// The config-file and stored-record types live below `backup` (config and repo read them);
// re-exported so every `backup::snapshot::…` path keeps working.
pub use crate::config::snapshot::{DriverKind, EbsConfig, HookSpec, HooksConfig, SnapshotSettings, VolumeConfig};
pub use crate::repo::snapshot_layout::{SnapshotLayout, TablespacePath, VolumePath};

/// Everything snapshot backups read from the config file.
#[derive(Debug, Clone, Default)]
pub struct SnapshotConfig {
    pub volumes: Vec<VolumeConfig>,
    pub hooks: HooksConfig,
    pub ebs: EbsConfig,
    pub settings: SnapshotSettings,
}

impl SnapshotConfig {
    pub fn from_file(f: &crate::config::FileConfig) -> SnapshotConfig {
        SnapshotConfig {
            volumes: f.volume.clone(),
            hooks: f.hooks.clone().unwrap_or_default(),
            ebs: f.ebs.clone().unwrap_or_default(),
            settings: f.snapshot.clone().unwrap_or_default(),
        }
    }

    pub fn hook_timeout(&self, spec: &HookSpec) -> Duration {
        Duration::from_secs(spec.timeout().or(self.hooks.timeout).unwrap_or(300))
    }

    pub fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.wait_timeout.unwrap_or(86_400))
    }

    pub fn volume(&self, name: &str) -> Option<&VolumeConfig> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

/// Check the `[[volume]]` list before anything runs.
pub fn validate(volumes: &[VolumeConfig]) -> Result<(), SnapshotError> {
    let mut names = std::collections::BTreeSet::new();
    for v in volumes {
        let bad = |what: &str| SnapshotError::Config(format!("[[volume]] {:?}: {what}", v.name));
        if v.name.is_empty()
            || !v.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(bad("name must be non-empty letters, digits, '.', '_' or '-'"));
        }
        if !names.insert(v.name.clone()) {
            return Err(bad("the name is used twice"));
        }
        let Some(kind) = v.driver else {
            return Err(bad("driver is missing; hint: driver = \"btrfs\" | \"reflink\" | \"ebs\" | \"command\""));
        };
        match &v.path {
            Some(p) if p.is_absolute() => {}
            Some(_) => return Err(bad("path must be absolute")),
            None if kind == DriverKind::Ebs => {
                return Err(bad("path is missing; hint: for ebs, path is the mount point of the file system on the volume (pgkeep maps PGDATA, pg_wal and tablespaces onto volumes by path)"))
            }
            None => return Err(bad("path is missing")),
        }
        match kind {
            DriverKind::Ebs => {
                if !cfg!(feature = "ebs") {
                    return Err(bad("this pgkeep was built without the `ebs` feature; hint: build with `--features ebs` (on by default)"));
                }
                match &v.volume_id {
                    Some(id) if id.starts_with("vol-") => {}
                    Some(id) => return Err(bad(&format!("volume_id {id:?} is not an EBS volume id (vol-…)"))),
                    None => return Err(bad("volume_id = \"vol-…\" is missing")),
                }
            }
            DriverKind::Command => {
                if v.snapshot_command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return Err(bad("snapshot_command is missing (the command driver runs it to take a snapshot)"));
                }
            }
            DriverKind::Btrfs => {
                if v.stripe_group.is_some() {
                    return Err(bad("btrfs subvolumes take no stripe_group: each btrfs snapshot is atomic and btrfs itself spans its devices (a frozen btrfs cannot take snapshots)"));
                }
            }
            DriverKind::Reflink => {}
        }
    }
    // A stripe group is one file system: one driver for all members.
    let mut groups: BTreeMap<&str, DriverKind> = BTreeMap::new();
    for v in volumes {
        if let (Some(g), Some(k)) = (&v.stripe_group, v.driver) {
            if let Some(prev) = groups.insert(g, k) {
                if prev != k {
                    return Err(SnapshotError::Config(format!(
                        "stripe_group {g:?} mixes drivers {prev} and {k}; members of one striped file system use one driver"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// What a driver can do; the flow checks these instead of matching on the driver.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DriverFeatures {
    /// One call snapshots several volumes at one point in time.
    pub atomic_multi_volume: bool,
    /// Snapshots may be acknowledged before they are complete (`pending`).
    pub async_completion: bool,
    /// Restore produces a local directory tree (clone) rather than cloud volumes.
    pub local_restore: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
}

/// One snapshot of one volume, as stored with the backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub volume: String,
    pub driver: DriverKind,
    /// Driver's snapshot id: btrfs/reflink the snapshot's path, ebs `snap-…`, command its output.
    pub snapshot_id: String,
    /// What was snapshotted (subvolume or image path, EBS volume id, command volume path).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// ebs: the device name the volume was attached at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_group: Option<String>,
    /// When the snapshot was requested.
    pub started_at: DateTime<Utc>,
    /// When the driver acknowledged it (its point in time is fixed by then).
    pub acknowledged_at: DateTime<Utc>,
    pub state: SnapshotState,
    /// Driver details (reflink: fstype of the image's file system).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
}

/// Context of one backup's snapshot calls.
#[derive(Debug, Clone)]
pub struct SnapContext {
    pub backup_id: String,
    pub system_identifier: u64,
}

/// What a failed snapshot call leaves: the error, and the snapshots it did take.
#[derive(Debug)]
pub struct SnapshotFailure {
    pub error: Box<SnapshotError>,
    pub taken: Vec<SnapshotRecord>,
}

impl SnapshotFailure {
    pub fn new(error: SnapshotError, taken: Vec<SnapshotRecord>) -> SnapshotFailure {
        SnapshotFailure { error: Box::new(error), taken }
    }
}

impl From<SnapshotError> for SnapshotFailure {
    fn from(error: SnapshotError) -> Self {
        SnapshotFailure::new(error, Vec::new())
    }
}

/// Where restore should put one volume's clone.
#[derive(Debug, Clone)]
pub struct RestoreRequest<'a> {
    pub record: &'a SnapshotRecord,
    pub config: Option<&'a VolumeConfig>,
    /// `--volume NAME=PATH`, or None for the default (beside the original).
    pub target: Option<PathBuf>,
}

/// A restored volume.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredVolume {
    pub volume: String,
    pub snapshot_id: String,
    /// Where the volume's content now appears (the clone's root), when on this machine.
    pub root: Option<String>,
    /// What restore created: a clone path, an image path, an EBS volume id.
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
}

impl RestoredVolume {
    /// A clone that appears at `path` on this machine (btrfs, reflink, command drivers).
    pub fn local(rec: &SnapshotRecord, path: &std::path::Path) -> RestoredVolume {
        RestoredVolume {
            volume: rec.volume.clone(),
            snapshot_id: rec.snapshot_id.clone(),
            root: Some(path.display().to_string()),
            created: path.display().to_string(),
            device: None,
            attached_to: None,
        }
    }
}

/// Options of a set-level restore (EBS).
#[derive(Debug, Clone, Default)]
pub struct RestoreSetOptions {
    pub availability_zone: Option<String>,
    pub attach_to: Option<String>,
    pub backup_id: String,
}

pub trait SnapshotDriver: Send + Sync {
    fn kind(&self) -> DriverKind;
    fn features(&self) -> DriverFeatures;
    /// The directory tree a snapshot of `vol` contains, as PostgreSQL's paths see it now
    /// (btrfs: the subvolume; reflink: where the image's file system is mounted; ebs/command:
    /// the mount point). Used by the coverage check.
    fn root(&self, vol: &VolumeConfig) -> Result<PathBuf, SnapshotError>;
    /// Everything that can be checked before pg_backup_start.
    fn preflight(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<(), SnapshotError>;
    /// Snapshot `vols` (one volume, or several when `atomic_multi_volume`). Returns once every
    /// snapshot is acknowledged.
    fn snapshot(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<Vec<SnapshotRecord>, SnapshotFailure>;
    /// Update `state` of pending snapshots.
    fn refresh(&self, recs: &mut [SnapshotRecord], cfg: &SnapshotConfig) -> Result<(), SnapshotError>;
    /// Delete one snapshot; already gone is a success.
    fn delete(&self, rec: &SnapshotRecord, cfg: &SnapshotConfig) -> Result<(), SnapshotError>;
    /// Restore the snapshots of one backup that this driver took.
    fn restore(
        &self,
        reqs: &[RestoreRequest<'_>],
        opts: &RestoreSetOptions,
        cfg: &SnapshotConfig,
    ) -> Result<Vec<RestoredVolume>, SnapshotError>;
    /// Remove a clone this driver's `restore` made from `rec` (restore drills throw theirs
    /// away): btrfs deletes the subvolume, reflink unmounts and removes the image, command
    /// runs `discard_command`. Already gone is a success; anything else at that path is left
    /// alone and reported.
    fn discard(
        &self,
        rec: &SnapshotRecord,
        restored: &RestoredVolume,
        cfg: &SnapshotConfig,
    ) -> Result<(), SnapshotError>;
}

/// The driver for `kind`.
pub fn driver(
    kind: DriverKind,
    cfg: &SnapshotConfig,
    rt: &tokio::runtime::Handle,
) -> Result<Box<dyn SnapshotDriver>, SnapshotError> {
    let _ = (cfg, rt);
    Ok(match kind {
        DriverKind::Btrfs => Box::new(btrfs::Btrfs),
        DriverKind::Reflink => Box::new(reflink::Reflink),
        DriverKind::Command => Box::new(command::CommandDriver),
        #[cfg(feature = "ebs")]
        DriverKind::Ebs => Box::new(ebs::Ebs::new(cfg, rt.clone())?),
        #[cfg(not(feature = "ebs"))]
        DriverKind::Ebs => {
            return Err(SnapshotError::Config(
                "this pgkeep was built without the `ebs` feature; hint: build with `--features ebs` (on by default)"
                    .into(),
            ))
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Bad `[[volume]]`/`[hooks]`/`[ebs]` configuration (exit status 2).
    #[error("{0}")]
    Config(String),
    #[error("refusing the snapshot backup: {what} {path} is not on any configured volume{detail}; nothing was started; hint: add a [[volume]] whose snapshot contains {path} (or take a file copy with --driver files)")]
    Uncovered { what: String, path: String, detail: String },
    #[error("volume {volume} ({driver}): {op} failed: {detail}{hint}")]
    Driver { volume: String, driver: DriverKind, op: &'static str, detail: String, hint: String },
    #[error("{detail}")]
    Hook { hook: String, detail: String },
    #[error("cannot freeze {path}: {detail}; hint: fsfreeze needs root and a file system that supports freezing (xfs, ext4)")]
    Freeze { path: String, detail: String },
    #[error("snapshot {snapshot} of volume {volume} did not complete within {secs}s (state {state}); hint: raise [snapshot] wait_timeout or use --no-wait and finish later with `pgkeep backup --finish`")]
    WaitTimeout { volume: String, snapshot: String, secs: u64, state: String },
    #[error("snapshot backup {id} failed: {cause}; {cleanup}; no usable backup was listed{hint}")]
    Aborted { id: String, cause: String, cleanup: String, hint: String },
    #[error("{0}")]
    Other(String),
}

impl SnapshotError {
    pub fn driver(vol: &VolumeConfig, op: &'static str, detail: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Driver {
            volume: vol.name.clone(),
            driver: vol.kind(),
            op,
            detail: detail.to_string().replace('\n', " "),
            hint: String::new(),
        }
    }

    pub fn with_hint(self, h: &str) -> SnapshotError {
        match self {
            SnapshotError::Driver { volume, driver, op, detail, .. } => {
                SnapshotError::Driver { volume, driver, op, detail, hint: format!("; hint: {h}") }
            }
            other => other,
        }
    }

    pub fn rec(rec: &SnapshotRecord, op: &'static str, detail: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Driver {
            volume: rec.volume.clone(),
            driver: rec.driver,
            op,
            detail: format!("{} ({})", detail.to_string().replace('\n', " "), rec.snapshot_id),
            hint: String::new(),
        }
    }

    /// A failed backup: the cause's own hint moves to the end of the message.
    pub fn aborted(id: &str, cause: String, cleanup: String) -> SnapshotError {
        let (cause, hint) = match cause.split_once("; hint: ") {
            Some((c, h)) => (c.to_string(), format!("; hint: {h}")),
            None => (cause, "; hint: fix the cause named above, then run `pgkeep backup` again".to_string()),
        };
        SnapshotError::Aborted { id: id.to_string(), cause, cleanup, hint }
    }

    pub fn is_usage(&self) -> bool {
        matches!(self, SnapshotError::Config(_))
    }
}

/// Run a program (no shell), returning stdout; errors carry stderr's first lines.
pub(crate) fn run_tool(prog: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.lines().filter(|l| !l.trim().is_empty()).take(3).collect::<Vec<_>>().join(" | ");
        Err(format!(
            "{prog} {}: {} ({})",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            err,
            out.status
        ))
    }
}

/// "a/b" of `path` relative to `root` ("" when equal).
pub(crate) fn rel_of(path: &Path, root: &Path) -> Option<String> {
    path.strip_prefix(root).ok().map(|r| r.to_string_lossy().into_owned())
}

/// Stored form of the records (the manifest's `snapshots` list).
pub fn records_to_values(recs: &[SnapshotRecord]) -> Vec<serde_json::Value> {
    recs.iter().filter_map(|r| serde_json::to_value(r).ok()).collect()
}

pub fn records_from_values(id: &str, vals: &[serde_json::Value]) -> Result<Vec<SnapshotRecord>, SnapshotError> {
    vals.iter()
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| {
                SnapshotError::Other(format!(
                    "backup {id}: a snapshot record in the manifest is unreadable ({e}); hint: the manifest was written by an incompatible pgkeep"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<SnapshotConfig, String> {
        let f: crate::config::FileConfig = toml::from_str(t).map_err(|e| e.to_string())?;
        let c = SnapshotConfig::from_file(&f);
        validate(&c.volumes).map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn the_minimal_volume_config_works_as_written() {
        let c = parse(
            r#"
[[volume]]
name = "data"
driver = "btrfs"          # btrfs | reflink | ebs | command
path = "/srv/pg/data"     # btrfs: the subvolume; reflink: the image file; ebs: use volume_id = "vol-…"
"#,
        )
        .unwrap();
        assert_eq!(c.volumes.len(), 1);
        assert_eq!(c.volumes[0].kind(), DriverKind::Btrfs);
        assert_eq!(c.volumes[0].path(), Path::new("/srv/pg/data"));
    }

    #[test]
    fn hooks_ebs_and_stripe_groups() {
        let c = parse(
            r#"
[hooks]
before = "echo before"
complete = { command = "echo done", timeout = 5 }
post-attach = "mount /pgdata"
timeout = 60

[ebs]
instance_id = "i-0123"
region = "eu-west-1"

[[volume]]
name = "d1"
driver = "command"
path = "/pgdata"
stripe_group = "md0"
snapshot_command = "true"

[[volume]]
name = "d2"
driver = "command"
path = "/pgdata"
stripe_group = "md0"
snapshot_command = "true"
"#,
        )
        .unwrap();
        assert_eq!(c.hooks.before.as_ref().unwrap().command(), "echo before");
        assert_eq!(c.hook_timeout(c.hooks.before.as_ref().unwrap()), Duration::from_secs(60));
        assert_eq!(c.hook_timeout(c.hooks.complete.as_ref().unwrap()), Duration::from_secs(5));
        assert_eq!(c.hooks.post_attach.as_ref().unwrap().command(), "mount /pgdata");
        assert_eq!(c.ebs.instance_id.as_deref(), Some("i-0123"));
    }

    #[test]
    fn bad_volume_configs_are_refused_with_the_volume_named() {
        let e = parse("[[volume]]\nname = \"w\"\ndriver = \"ebs\"\npath = \"/x\"\n").unwrap_err();
        assert!(e.contains("\"w\"") && e.contains("volume_id"), "{e}");
        let e = parse("[[volume]]\nname = \"w\"\ndriver = \"btrfs\"\n").unwrap_err();
        assert!(e.contains("path is missing"), "{e}");
        let e = parse("[[volume]]\nname = \"w\"\ndriver = \"btrfs\"\npath = \"/x\"\npaht = \"/y\"\n").unwrap_err();
        assert!(e.contains("paht"), "{e}");
        let e = parse("[[volume]]\nname = \"w\"\ndriver = \"zfs\"\npath = \"/x\"\n").unwrap_err();
        assert!(e.contains("zfs"), "{e}");
        let e =
            parse("[[volume]]\nname = \"a\"\ndriver = \"btrfs\"\npath = \"/x\"\nstripe_group = \"g\"\n").unwrap_err();
        assert!(e.contains("stripe_group"), "{e}");
    }

    #[test]
    fn aborted_messages_end_with_the_hint() {
        let e = SnapshotError::aborted("X", "it broke; hint: fix it".into(), "deleted snapshot(s) a".into());
        assert_eq!(
            e.to_string(),
            "snapshot backup X failed: it broke; deleted snapshot(s) a; no usable backup was listed; hint: fix it"
        );
    }
}
