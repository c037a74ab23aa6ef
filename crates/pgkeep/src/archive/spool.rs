//! The local spool of the parallel WAL transport: one directory per repository, cluster and
//! purpose beside the data directory. archive-push keeps there a record of each segment it
//! stored ahead of PostgreSQL's request; archive-get keeps the segments it fetched ahead.
//! Nothing in the spool is needed for safety: a lost or stale spool only costs a fetch or a push.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ArchiveError;
use crate::config::Config;
use crate::fsutil;

/// The parallel WAL transport settings (`archive_async`, `spool_dir`, `archive_push_jobs`,
/// `archive_get_queue` in the config file).
#[derive(Debug, Clone)]
pub struct Transport {
    pub archive_async: bool,
    pub spool_dir: Option<PathBuf>,
    pub push_jobs: usize,
    pub get_queue: usize,
}

impl Transport {
    pub fn from_config(cfg: &Config) -> Transport {
        let f = &cfg.file;
        Transport {
            archive_async: f.archive_async.unwrap_or(false),
            spool_dir: f.spool_dir.clone(),
            push_jobs: f.archive_push_jobs.unwrap_or(4).max(1),
            get_queue: f.archive_get_queue.unwrap_or(8),
        }
    }

    /// The spool root for the cluster in `pgdata`: `spool_dir`, or `pgkeep-spool` in the data
    /// directory's parent. Inside PGDATA it is refused: a base backup would copy it and a restore
    /// into an empty directory would find it occupied.
    pub fn spool_root(&self, pgdata: &Path) -> Result<PathBuf, ArchiveError> {
        let root = match &self.spool_dir {
            Some(d) => fsutil::absolute(d),
            None => pgdata.parent().unwrap_or(Path::new("/")).join("pgkeep-spool"),
        };
        if root.starts_with(pgdata) {
            return Err(spool_error(&root, format!("it lies inside the data directory {}", pgdata.display())));
        }
        Ok(root)
    }
}

/// The data directory a WAL path (archive_command's `%p`, restore_command's `%p`) lies in:
/// PostgreSQL runs both commands in PGDATA with `pg_wal/NAME`. Only a parent named `pg_wal` counts,
/// so a manual call with another destination never guesses a spool.
pub fn pgdata_of_wal_path(p: &Path) -> Option<PathBuf> {
    let abs = fsutil::absolute(p);
    let wal_dir = abs.parent()?;
    (wal_dir.file_name()? == "pg_wal").then(|| wal_dir.parent().map(Path::to_path_buf)).flatten()
}

/// `<hash of the parts>-<system identifier>`: a spool never mixes repositories or clusters.
pub fn spool_key(parts: &[&str], system_identifier: u64) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    format!("{}-{system_identifier}", &h.finalize().to_hex()[..16])
}

/// One spool directory. Files are created for the owner of the data directory (archive_command
/// and restore_command run as that user, also when root ran pgkeep by hand).
pub struct SpoolDir {
    pub path: PathBuf,
    owner: Option<(u32, u32)>,
}

impl SpoolDir {
    pub fn open(root: &Path, name: &str, owner_of: &Path) -> Result<SpoolDir, ArchiveError> {
        Self::create(root, name, owner_of).map_err(|e| spool_error(root, e))
    }

    fn create(root: &Path, name: &str, owner_of: &Path) -> io::Result<SpoolDir> {
        let owner = if fsutil::running_as_root() { Some(fsutil::owner_of(owner_of)?) } else { None };
        let path = root.join(name);
        let spool = SpoolDir { path, owner };
        for d in [root, spool.path.as_path()] {
            match fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => spool.own(d)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(spool)
    }

    fn own(&self, p: &Path) -> io::Result<()> {
        match self.owner {
            Some((uid, gid)) => fsutil::chown(p, uid, gid),
            None => Ok(()),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The spool's lock, waited for: one pusher (or prefetcher) at a time.
    pub fn lock(&self) -> Result<File, ArchiveError> {
        let f = self.lock_file().map_err(|e| spool_error(&self.path, e))?;
        f.lock().map_err(|e| spool_error(&self.path, e))?;
        Ok(f)
    }

    /// The lock if it is free now (a prefetcher that finds another running just leaves).
    pub fn try_lock(&self) -> Option<File> {
        let f = self.lock_file().ok()?;
        f.try_lock().ok()?;
        Some(f)
    }

    /// Whether another process holds the lock at this moment.
    pub fn busy(&self) -> bool {
        self.try_lock().is_none()
    }

    fn lock_file(&self) -> io::Result<File> {
        let p = self.file("lock");
        let f = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&p)?;
        self.own(&p)?;
        Ok(f)
    }

    /// Write a spool file by temp + rename, without fsync: after a crash a missing or torn
    /// record only makes pgkeep do the work again.
    pub fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = format!("{TMP_PREFIX}{name}");
        let res = self.write_raw(&tmp, data).and_then(|()| fs::rename(self.file(&tmp), self.file(name)));
        if res.is_err() {
            self.remove(&tmp);
        }
        res
    }

    /// Create or overwrite `name` in place, owned by the server's OS user.
    pub fn write_raw(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.create_file(name)?.write_all(data)
    }

    /// Create or truncate `name`, owned by the server's OS user, open for writing and reading back.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let p = self.file(name);
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&p)?;
        self.own(&p)?;
        Ok(f)
    }

    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> io::Result<()> {
        self.write(name, &serde_json::to_vec(v).map_err(io::Error::other)?)
    }

    /// A JSON record, or None when it is absent or unreadable (a torn record is no record).
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        serde_json::from_slice(&fs::read(self.file(name)).ok()?).ok()
    }

    pub fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.file(name));
    }

    /// File names in the spool (records, segments, temps; not the lock).
    pub fn names(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.path) else { return Vec::new() };
        rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "lock").collect()
    }
}

pub fn spool_error(path: &Path, detail: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Spool { path: path.display().to_string(), detail: detail.to_string() }
}

/// Prefix of files being written; only the lock holder writes them, so any it finds are a
/// killed writer's leftovers.
pub const TMP_PREFIX: &str = ".tmp-";

/// Suffix of a record beside (or instead of) the file it describes.
pub const RECORD_SUFFIX: &str = ".ok";

/// The system identifier in a WAL segment's first (long) page header, without reading more.
pub fn segment_system_identifier(path: &Path) -> Option<u64> {
    let mut head = [0u8; 32];
    let mut f = File::open(path).ok()?;
    io::Read::read_exact(&mut f, &mut head).ok()?;
    // XLogLongPageHeaderData: the 20-byte short header padded to 24, then xlp_sysid.
    Some(u64::from_le_bytes(head[24..32].try_into().ok()?))
}
