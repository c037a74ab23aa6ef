//! Multipart uploads of large objects to an object store, with parts uploaded in parallel and
//! memory bounded, and every upload recorded in the repository so a killed writer's upload
//! can be aborted later instead of leaking storage (object stores keep the parts of an
//! unfinished upload, and bill for them, until it is completed or aborted).
//!
//! Memory: every part, filling or being sent, is a buffer of the process-wide pool
//! (repo/part_pool.rs), so all writers together buffer at most its budget; a writer keeps at
//! most [`PARTS_IN_FLIGHT`] of its parts in flight, so one large object does not take every
//! buffer while other writers wait.
//!
//! Records: before the first part goes up, `uploads/<run>/<n>` (layout.rs) holds the key and
//! upload id; it is deleted once the upload is completed or aborted. `pgkeep backup` (the
//! only writer of multipart objects, under the backup lock) aborts every upload recorded by
//! another run before it starts ([`super::storage::Storage::abort_stale_uploads`]). A writer
//! killed between creating the upload and storing its record leaves an upload with no part
//! and no record; only the store's lifecycle rule removes that one.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{Attributes, MultipartId, PutMultipartOptions};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::layout;
use super::part_pool::{self, PartPool};
use super::storage::{Storage, StorageError};

/// Parts of one writer being sent while it fills the next.
pub(crate) const PARTS_IN_FLIGHT: usize = 4;

/// The multipart side of an object store: the store without the repository prefix (keys are
/// prefixed here), the prefix, and the pool part buffers come from.
pub(crate) struct MultipartTarget {
    store: Arc<dyn MultipartStore>,
    prefix: String,
    pool: Arc<PartPool>,
}

impl std::fmt::Debug for MultipartTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MultipartTarget({:?})", self.prefix)
    }
}

impl MultipartTarget {
    pub(crate) fn new(store: Arc<dyn MultipartStore>, prefix: &str) -> MultipartTarget {
        MultipartTarget { store, prefix: prefix.to_string(), pool: part_pool::global().clone() }
    }

    /// Where writers of this store take their buffers.
    pub(crate) fn pool(&self) -> &Arc<PartPool> {
        &self.pool
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// What an upload record holds: enough to abort the upload from another process.
#[derive(Debug, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    upload_id: String,
    host: String,
    pid: u32,
}

/// This process's name among upload records: pid and start time, so two runs never share it.
fn run_name() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{}-{nanos}", std::process::id())
    })
}

fn next_record_key() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    layout::upload_record_key(run_name(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// One multipart upload in progress.
pub(crate) struct Upload {
    storage: Storage,
    key: String,
    path: ObjPath,
    id: MultipartId,
    record: String,
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    done: Vec<PartId>,
    finished: bool,
}

impl Upload {
    /// Create the upload and store its record, before any part is sent.
    pub(crate) fn begin(storage: &Storage, key: &str, attributes: Attributes) -> Result<Upload, StorageError> {
        let mp = storage.multipart().expect("multipart uploads only on object stores");
        let path = mp.path(key);
        let opts = PutMultipartOptions { attributes, ..Default::default() };
        let id = storage
            .retry_interrupted(|| mp.store.create_multipart_opts(&path, opts.clone()))
            .0
            .map_err(|e| storage.remote_err("write", key, e))?;
        let record = next_record_key();
        let body = UploadRecord {
            key: key.to_string(),
            upload_id: id.clone(),
            host: crate::hostname(),
            pid: std::process::id(),
        };
        let json = serde_json::to_vec(&body).expect("a record serializes");
        if let Err(e) = storage.put(&record, json.into()) {
            let _ = storage.retry_interrupted(|| mp.store.abort_multipart(&path, &id));
            return Err(e);
        }
        Ok(Upload {
            storage: storage.clone(),
            key: key.to_string(),
            path,
            id,
            record,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            finished: false,
        })
    }

    /// Send one part (a pool buffer's bytes: the buffer returns to the pool once the part is
    /// sent) in the background; blocks while this writer has [`PARTS_IN_FLIGHT`] parts in
    /// flight. An earlier part's failure surfaces here.
    pub(crate) fn put_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let mp = self.storage.multipart().expect("multipart target");
        let (store, path, id) = (mp.store.clone(), self.path.clone(), self.id.clone());
        let idx = self.done.len() + self.in_flight.len();
        self.in_flight
            .push_back(self.storage.runtime().spawn(async move { store.put_part(&path, &id, idx, data.into()).await }));
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), StorageError> {
        let Some(h) = self.in_flight.pop_front() else { return Ok(()) };
        let part = match self.storage.runtime().block_on(h) {
            Ok(r) => r.map_err(|e| self.storage.remote_err("write", &self.key, e))?,
            Err(e) => {
                return Err(self.storage.remote_err("write", &self.key, object_store::Error::JoinError { source: e }))
            }
        };
        self.done.push(part);
        Ok(())
    }

    /// Wait for every part, complete the upload (the object appears now, whole), drop the
    /// record. `size`: the bytes written, to recognise a completion whose answer was lost.
    pub(crate) fn complete(mut self, size: u64) -> Result<(), StorageError> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let mp = self.storage.multipart().expect("multipart target");
        let parts = std::mem::take(&mut self.done);
        let res = self.storage.runtime().block_on(mp.store.complete_multipart(&self.path, &self.id, parts));
        if let Err(e) = res {
            // A retried completion of an upload that the first attempt completed is answered
            // "no such upload": the object is there with every byte.
            let landed = self.storage.head(&self.key).ok().flatten().is_some_and(|o| o.size == size);
            if !landed {
                return Err(self.storage.remote_err("write", &self.key, e));
            }
        }
        self.finished = true;
        self.storage.delete(&self.record)
    }

    /// Stop sending, abort the upload (its parts are freed), drop the record.
    fn abort(&mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        let mp = self.storage.multipart().expect("multipart target");
        let (aborted, _) = self.storage.retry_interrupted(|| mp.store.abort_multipart(&self.path, &self.id));
        match aborted {
            Ok(()) => {
                let _ = self.storage.delete(&self.record);
            }
            // The record stays, so the next backup's clean-up aborts it.
            Err(e) => tracing::warn!("cannot abort the upload of '{}' (left for the next backup): {e}", self.key),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished {
            self.abort();
        }
    }
}

/// Abort every upload recorded by another run and delete its records; how many. Only safe
/// while no other writer runs (the caller holds the backup lock).
pub(crate) fn abort_stale(storage: &Storage) -> Result<usize, StorageError> {
    let Some(mp) = storage.multipart() else { return Ok(0) };
    let own = format!("{}/{}/", layout::UPLOADS_PREFIX, run_name());
    let mut aborted = 0;
    for o in storage.list(layout::UPLOADS_PREFIX)? {
        if o.key.starts_with(&own) {
            continue;
        }
        let bytes = storage.get(&o.key)?;
        match serde_json::from_slice::<UploadRecord>(&bytes) {
            Ok(r) => {
                let path = mp.path(&r.key);
                match storage.retry_interrupted(|| mp.store.abort_multipart(&path, &r.upload_id)).0 {
                    // Gone already: completed (its object belongs to a backup that is
                    // complete or removed as incomplete) or aborted before the record went.
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(storage.remote_err("abort the upload of", &r.key, e)),
                }
                tracing::info!(
                    "aborted the unfinished upload of '{}' left by pid {} on {} (a killed backup)",
                    r.key,
                    r.pid,
                    r.host
                );
                aborted += 1;
            }
            Err(e) => tracing::warn!("removing unreadable upload record '{}': {e}", o.key),
        }
        storage.delete(&o.key)?;
    }
    Ok(aborted)
}
