//! `pgkeep key rotate --new-key-file FILE`: rewrap the repository's data key under a new key
//! file. Only `pgkeep.info` changes (32 wrapped bytes), so no data is rewritten; it is replaced
//! with the storage contract's write-then-rename, so a crash leaves the old or the new wrap,
//! never neither.

use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

use crate::repo::lock::RepoLock;
use crate::repo::seal::DataKey;
use crate::repo::{frame, layout, read_info, Compression, KeyError, KeyFile, RepoError, Repository};
use crate::Error;

#[derive(Debug, Serialize)]
pub struct RotateReport {
    pub repo: String,
    /// Paths only: a key is never printed.
    pub old_key_file: String,
    pub new_key_file: String,
    pub wrapped_at: chrono::DateTime<chrono::Utc>,
}

pub fn rotate(repo: &Repository, new_key: &Path) -> crate::Result<RotateReport> {
    let location = repo.location().to_string();
    let Some(old_path) = repo.key_file() else {
        return Err(KeyError::NotEncrypted { location, file: new_key.display().to_string() }.into());
    };
    let new = KeyFile::load(new_key)?;
    let old = KeyFile::load(old_path)?;
    // One rotation at a time: two concurrent ones would each believe their key is current.
    let _lock = RepoLock::acquire(repo, "key")?;
    // Re-read under the lock: another rotation may have finished since the repository opened.
    let raw = repo.storage().raw();
    let info = read_info(raw)?.ok_or_else(|| RepoError::NotInitialized { location: location.clone() })?;
    let enc = info
        .encryption
        .as_ref()
        .ok_or_else(|| KeyError::NotEncrypted { location: location.clone(), file: new.path().display().to_string() })?;
    if DataKey::is_wrapped_by(enc, &new) {
        return Err(KeyError::SameKey { file: new.path().display().to_string() }.into());
    }
    let dk = DataKey::unwrap(enc, &old, &info.system_identifier, &location)?;
    let mut next = info.clone();
    next.encryption = Some(dk.wrap(&new, &info.system_identifier)?);
    let json = serde_json::to_vec_pretty(&next).map_err(|e| Error::other(e.to_string()))?;
    let (framed, _) = frame::encode(&json, Compression::None);
    raw.put(layout::INFO_KEY, Bytes::from(framed))?;
    // Read back what is stored now: success means the new key opens the repository.
    let stored = read_info(raw)?.ok_or_else(|| RepoError::NotInitialized { location: location.clone() })?;
    let stored_enc =
        stored.encryption.as_ref().ok_or_else(|| Error::other("pgkeep.info lost its encryption section"))?;
    DataKey::unwrap(stored_enc, &new, &stored.system_identifier, &location)?;
    Ok(RotateReport {
        repo: location,
        old_key_file: old.path().display().to_string(),
        new_key_file: new.path().display().to_string(),
        wrapped_at: stored_enc.wrapped_at,
    })
}
