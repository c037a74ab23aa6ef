//! The repository: identity (`pgkeep.info`), framed objects over a [`Storage`] backend,
//! backup manifests, the backup catalog and locks.

pub mod azure;
pub mod catalog;
pub mod frame;
pub mod gcs;
pub mod info;
pub mod layout;
pub mod lease;
pub mod lock;
pub mod manifest;
// Only object stores upload in parts.
#[cfg_attr(not(any(feature = "s3", feature = "azure", feature = "gcs")), allow(dead_code))]
mod multipart;
pub mod objects;
#[cfg_attr(not(any(feature = "s3", feature = "azure", feature = "gcs")), allow(dead_code))]
pub mod part_pool;
pub(crate) mod remote;
pub mod s3;
pub mod seal;
pub mod snapshot_layout;
pub mod storage;
pub mod verdict;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Handle;

pub use frame::{Compression, FrameError, FrameSummary};
pub use info::RepoInfo;
pub use manifest::Manifest;
pub use objects::{ObjectWriter, Objects};
pub use seal::{KeyError, KeyFile};
pub use storage::{ObjectInfo, PutOutcome, RepoLocation, Storage, StorageError, StoreSettings};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "repository {location} is not initialized; hint: run `pgkeep init` with --repo {location} for this cluster"
    )]
    NotInitialized { location: String },
    #[error("repository {location} belongs to another cluster (system identifier {repo}, this cluster {cluster}); hint: use a separate --repo per cluster")]
    ForeignCluster { location: String, repo: String, cluster: String },
    #[error("repository {location} holds PostgreSQL {repo} backups but the server runs PostgreSQL {cluster}; hint: initialize a new repository after a major upgrade")]
    MajorMismatch { location: String, repo: u32, cluster: u32 },
    #[error("repository {location}: {what} is not valid JSON ({detail}); hint: the object is damaged, restore it from a copy of the repository")]
    BadJson { location: String, what: String, detail: String },
    #[error("repository {location} has format {found}, this pgkeep reads format {supported}; hint: use a matching pgkeep version")]
    Format { location: String, found: u32, supported: u32 },
    #[error("another pgkeep {what} holds the lock {path} ({holder}); hint: wait for it to finish")]
    Locked { what: String, path: String, holder: String },
    #[error("cannot take the lock {path}: {detail}")]
    Lock { path: String, detail: String },
    #[error("backup {id} is not in repository {location}; hint: `pgkeep list` shows the backups")]
    NoSuchBackup { location: String, id: String },
    #[error("backup {id} in repository {location} is incomplete (no manifest: it was interrupted or is still running) and cannot be used")]
    Incomplete { location: String, id: String },
}

/// An opened, initialized repository.
#[derive(Clone)]
pub struct Repository {
    objects: Objects,
    info: RepoInfo,
    location: RepoLocation,
    /// The key file that opened an encrypted repository (absolute): commands pgkeep writes for
    /// PostgreSQL (restore_command) must name it too.
    key_file: Option<std::path::PathBuf>,
}

impl Repository {
    /// Open an initialized repository; an encrypted one needs its key file (`key`), a plain
    /// one refuses a key (the operator expects encryption that is not there). Nothing is
    /// written before the key has been checked.
    pub fn open(location: &RepoLocation, key: Option<&std::path::Path>, rt: Handle) -> crate::Result<Repository> {
        let storage = Storage::open(location, rt, false).map_err(|e| match e {
            StorageError::Io { op: "open", .. } => {
                crate::Error::Repo(RepoError::NotInitialized { location: location.to_string() })
            }
            other => other.into(),
        })?;
        let info = read_info(&storage)?.ok_or_else(|| RepoError::NotInitialized { location: location.to_string() })?;
        let sealed = info.format == info::REPO_FORMAT_SEALED;
        if info.format != info::REPO_FORMAT && !sealed {
            return Err(RepoError::Format {
                location: location.to_string(),
                found: info.format,
                supported: info::REPO_FORMAT_SEALED,
            }
            .into());
        }
        let loc = location.to_string();
        let (data_key, key_file) = match (&info.encryption, key) {
            (Some(enc), Some(path)) if sealed => {
                let kf = KeyFile::load(path)?;
                let dk = seal::DataKey::unwrap(enc, &kf, &info.system_identifier, &loc)?;
                (Some(dk), Some(kf.path().to_path_buf()))
            }
            (Some(_), None) if sealed => return Err(KeyError::Required { location: loc }.into()),
            (None, Some(path)) if !sealed => {
                return Err(KeyError::NotEncrypted { location: loc, file: path.display().to_string() }.into())
            }
            (None, None) if !sealed => (None, None),
            _ => {
                return Err(KeyError::Damaged {
                    location: loc,
                    detail: format!("format {} does not match its encryption section", info.format),
                }
                .into())
            }
        };
        Ok(Repository { objects: Objects::new(storage, data_key), info, location: location.clone(), key_file })
    }

    /// Wrap storage and info that are already known (used by `init`).
    pub fn from_parts(objects: Objects, info: RepoInfo, location: RepoLocation) -> Repository {
        Repository { objects, info, location, key_file: None }
    }

    /// The repository's objects (sealed and opened here when the repository is encrypted).
    pub fn storage(&self) -> &Objects {
        &self.objects
    }

    /// The key file that opened this (encrypted) repository.
    pub fn key_file(&self) -> Option<&std::path::Path> {
        self.key_file.as_deref()
    }

    pub fn info(&self) -> &RepoInfo {
        &self.info
    }

    pub fn location(&self) -> &RepoLocation {
        &self.location
    }

    pub fn runtime(&self) -> &Handle {
        self.objects.runtime()
    }

    /// Refuse to work for a cluster this repository does not belong to.
    pub fn check_cluster(&self, system_identifier: u64, pg_major: u32) -> Result<(), RepoError> {
        if self.info.system_identifier_u64() != system_identifier {
            return Err(RepoError::ForeignCluster {
                location: self.location.to_string(),
                repo: self.info.system_identifier.clone(),
                cluster: system_identifier.to_string(),
            });
        }
        if self.info.pg_major != pg_major {
            return Err(RepoError::MajorMismatch {
                location: self.location.to_string(),
                repo: self.info.pg_major,
                cluster: pg_major,
            });
        }
        Ok(())
    }

    /// Store a small framed object (replaces atomically).
    pub fn put_framed(&self, key: &str, plain: &[u8]) -> crate::Result<FrameSummary> {
        let (framed, summary) = frame::encode(plain, Compression::Zstd(3));
        self.objects.put(key, Bytes::from(framed))?;
        Ok(summary)
    }

    /// Read and verify a small framed object.
    pub fn get_framed(&self, key: &str) -> crate::Result<Vec<u8>> {
        let framed = self.objects.get(key)?;
        Ok(frame::decode(&framed, &format!("repository object '{key}'"))?)
    }

    /// Read an object and check it whole (sizes, CRC, BLAKE3) without keeping its content: a
    /// 16 MiB segment is decoded through a small buffer, not into a fresh 16 MiB one.
    pub fn check_framed(&self, key: &str) -> crate::Result<FrameSummary> {
        let framed = self.objects.get(key)?;
        let what = format!("repository object '{key}'");
        Ok(frame::copy(&framed[..], framed.len() as u64, &mut std::io::sink(), &what)?)
    }

    pub fn put_json<T: Serialize>(&self, key: &str, value: &T) -> crate::Result<FrameSummary> {
        let json = serde_json::to_vec_pretty(value).map_err(|e| crate::Error::other(e.to_string()))?;
        self.put_framed(key, &json)
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> crate::Result<T> {
        let plain = self.get_framed(key)?;
        serde_json::from_slice(&plain).map_err(|e| {
            RepoError::BadJson { location: self.location.to_string(), what: key.to_string(), detail: e.to_string() }
                .into()
        })
    }

    /// A committed backup's `backup_label`, checked against the hash its manifest recorded;
    /// None when the stored copy does not match (the caller names the consequence).
    pub fn backup_label(&self, m: &Manifest) -> crate::Result<Option<Vec<u8>>> {
        let label = self.get_framed(&layout::backup_label_key(&m.id))?;
        Ok((hex::encode(blake3::hash(&label).as_bytes()) == m.backup_label_blake3).then_some(label))
    }

    /// Load a committed backup's manifest.
    pub fn manifest(&self, id: &str) -> crate::Result<Manifest> {
        match self.get_json(&layout::manifest_key(id)) {
            Ok(m) => Ok(m),
            Err(crate::Error::Storage(StorageError::NotFound { .. })) => {
                if self.objects.head(&layout::backup_started_key(id))?.is_some() {
                    Err(RepoError::Incomplete { location: self.location.to_string(), id: id.to_string() }.into())
                } else {
                    Err(RepoError::NoSuchBackup { location: self.location.to_string(), id: id.to_string() }.into())
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Read `pgkeep.info` if present.
pub fn read_info(storage: &Storage) -> crate::Result<Option<RepoInfo>> {
    let framed = match storage.get(layout::INFO_KEY) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let plain = frame::decode(&framed, "repository info (pgkeep.info)")?;
    let info = serde_json::from_slice(&plain).map_err(|e| RepoError::BadJson {
        location: storage.location().to_string(),
        what: layout::INFO_KEY.to_string(),
        detail: e.to_string(),
    })?;
    Ok(Some(info))
}
