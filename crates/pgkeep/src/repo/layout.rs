//! Object keys: the one place that knows where things live in a repository
//! (documented in docs/repo-format.md).

/// Repository identity and format version, written once by `init`.
pub const INFO_KEY: &str = "pgkeep.info";

pub const BACKUP_PREFIX: &str = "backup";
pub const WAL_PREFIX: &str = "wal";

/// `wal/<timeline+log, 16 hex>/<segment name>`: at most 256 (16 MiB segments) per directory.
pub fn wal_key(file_name: &str) -> String {
    if file_name.ends_with(".history") {
        format!("{WAL_PREFIX}/history/{file_name}")
    } else {
        let dir = file_name.get(..16).unwrap_or(file_name);
        format!("{WAL_PREFIX}/{dir}/{file_name}")
    }
}

pub fn backup_dir(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}")
}

/// Written first: a backup directory with this and no manifest is incomplete.
pub fn backup_started_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/started")
}

/// Written last: its presence is what makes a backup usable (invariant 1).
pub fn manifest_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/manifest")
}

/// A snapshot backup's snapshots, recorded as soon as they exist (before its manifest), so
/// a killed run's snapshots can still be found and deleted.
pub fn snapshots_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/snapshots")
}

/// A `--no-wait` snapshot backup's manifest while its snapshots are still completing: the
/// only record of them, so it is never deleted before they are.
pub fn pending_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/pending")
}

/// Written by expire just before it deletes the manifest: a backup without a manifest and
/// with this is being expired (its snapshots still to delete), not an interrupted backup.
pub fn expiring_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/expiring")
}

pub fn backup_label_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/backup_label")
}

pub fn tablespace_map_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/tablespace_map")
}

/// Where a files backup's data objects live (snapshot backups store none).
pub fn data_prefix(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/data")
}

pub fn data_key(id: &str, name: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/data/{name}")
}

/// Verification verdicts, one object per drill, never rewriting the manifest.
pub fn verdict_key(id: &str, stamp: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/verify/{stamp}")
}

pub fn verdict_prefix(id: &str) -> String {
    format!("{BACKUP_PREFIX}/{id}/verify")
}

/// Pins (`pgkeep pin ID`): one object per pinned backup, apart from the backup's own
/// objects so that a pin never makes a backup directory look like a backup.
pub const PIN_PREFIX: &str = "pin";

pub fn pin_key(id: &str) -> String {
    format!("{PIN_PREFIX}/{id}")
}

/// A repository lock: a `flock`ed file in a local repository, a lease object in an object store.
pub fn lock_key(name: &str) -> String {
    format!("lock/{name}.lock")
}

/// Records of multipart uploads in progress (repo/multipart.rs), so a killed writer's upload
/// can be aborted by the next backup.
pub const UPLOADS_PREFIX: &str = "uploads";

/// `uploads/<run>/<n>`: one record per upload, `run` naming the writing process.
pub fn upload_record_key(run: &str, n: u64) -> String {
    format!("{UPLOADS_PREFIX}/{run}/{n:06}")
}
