//! The snapshot part of the config file (`[[volume]]`, `[hooks]`, `[ebs]`, `[snapshot]`):
//! plain data, parsed here so the config layer needs nothing from `backup`. The snapshot backup
//! module re-exports these types and gives them meaning.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which driver handles a volume (`driver = "…"` in `[[volume]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Btrfs,
    Reflink,
    Ebs,
    Command,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Btrfs => "btrfs",
            DriverKind::Reflink => "reflink",
            DriverKind::Ebs => "ebs",
            DriverKind::Command => "command",
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[volume]]` of the config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    pub driver: Option<DriverKind>,
    /// btrfs: the subvolume; reflink: the image file; ebs/command: the mount point of the file
    /// system on the volume (pgkeep maps PostgreSQL's paths onto volumes by path).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Members of one striped file system (RAID 0, LVM stripes) share a group name.
    #[serde(default)]
    pub stripe_group: Option<String>,
    /// ebs: the EBS volume id (`vol-…`).
    #[serde(default)]
    pub volume_id: Option<String>,
    /// ebs: device name to attach a restored volume at (default: where it is attached now).
    #[serde(default)]
    pub device: Option<String>,
    /// Mount point of the file system the volume holds (reflink: detected from the loop
    /// device when absent; ebs/command: defaults to `path`). Used for coverage and fsfreeze.
    #[serde(default)]
    pub mount: Option<PathBuf>,
    /// btrfs/reflink: where snapshots are kept (same file system as the volume; default: a
    /// `.pgkeep-snapshots` directory beside the subvolume or image).
    #[serde(default)]
    pub snapshot_dir: Option<PathBuf>,
    /// command: prints the snapshot id (last line of stdout); env PGKEEP_VOLUME_NAME,
    /// PGKEEP_VOLUME_PATH, PGKEEP_BACKUP_ID.
    #[serde(default)]
    pub snapshot_command: Option<String>,
    /// command: prints `pending`, `completed` or `error` for PGKEEP_SNAPSHOT_ID (default:
    /// snapshots are completed when snapshot_command exits).
    #[serde(default)]
    pub status_command: Option<String>,
    /// command: deletes PGKEEP_SNAPSHOT_ID.
    #[serde(default)]
    pub delete_command: Option<String>,
    /// command: makes PGKEEP_SNAPSHOT_ID's content appear at PGKEEP_RESTORE_PATH.
    #[serde(default)]
    pub restore_command: Option<String>,
    /// command: removes what restore_command made at PGKEEP_RESTORE_PATH (a restore drill's
    /// clone, `pgkeep verify`); without it, drills of this volume's backups are refused.
    #[serde(default)]
    pub discard_command: Option<String>,
    /// command: seconds each command may run (default 300).
    #[serde(default)]
    pub command_timeout: Option<u64>,
}

impl VolumeConfig {
    pub fn kind(&self) -> DriverKind {
        self.driver.unwrap_or(DriverKind::Btrfs)
    }

    /// `path`, which the snapshot flow's config check guarantees before anything runs.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("/"))
    }
}

/// A hook: a shell command line, or `{ command = "…", timeout = SECONDS }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HookSpec {
    Command(String),
    Full {
        command: String,
        #[serde(default)]
        timeout: Option<u64>,
    },
}

impl HookSpec {
    pub fn command(&self) -> &str {
        match self {
            HookSpec::Command(c) => c,
            HookSpec::Full { command, .. } => command,
        }
    }
    pub fn timeout(&self) -> Option<u64> {
        match self {
            HookSpec::Command(_) => None,
            HookSpec::Full { timeout, .. } => *timeout,
        }
    }
}

/// `[hooks]`: commands run around a snapshot backup (and after an EBS restore attaches).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// After pg_backup_start, before the first snapshot.
    #[serde(default)]
    pub before: Option<HookSpec>,
    /// After the last snapshot is acknowledged, before pg_backup_stop.
    #[serde(default)]
    pub after: Option<HookSpec>,
    /// After the backup is committed.
    #[serde(default)]
    pub complete: Option<HookSpec>,
    /// After `pgkeep restore` created (and attached) EBS volumes.
    #[serde(default, rename = "post-attach", alias = "post_attach")]
    pub post_attach: Option<HookSpec>,
    /// Default timeout of every hook, seconds (default 300).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `[ebs]`: where the EC2 API is and how restored volumes are created.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EbsConfig {
    /// AWS region (default: the standard chain: AWS_REGION, profile, instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// EC2 endpoint (default: the SDK's; the SDK also honours AWS_ENDPOINT_URL).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The instance the volumes are attached to: snapshots are then taken with one
    /// multi-volume `CreateSnapshots` call (one point in time for all of them).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Restore: availability zone for new volumes.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Restore: volume type of new volumes (default gp3).
    #[serde(default)]
    pub volume_type: Option<String>,
}

/// `[snapshot]`: settings shared by all drivers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Seconds to wait for every snapshot to be `completed` (default 86400).
    #[serde(default)]
    pub wait_timeout: Option<u64>,
}
