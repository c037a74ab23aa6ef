//! Locks on object stores, where there is no `flock`: a lock object created only if absent,
//! holding who holds it and until when (a lease). The holder renews the lease from a thread;
//! a lock whose lease ran out (its holder died or lost the store) is taken over, with a log
//! line, by replacing exactly the stale object (If-Match on its ETag), so two processes on two
//! hosts never both hold it.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::storage::{ObjectVersion, Storage};
use super::RepoError;

/// How long a lease lasts without renewal, and how often the holder renews it.
const LEASE: Duration = Duration::from_secs(60);
const RENEW_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    started_at: DateTime<Utc>,
    lease_expires_at: DateTime<Utc>,
}

impl Holder {
    fn mine(started_at: DateTime<Utc>) -> Holder {
        let lease = chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::seconds(60));
        Holder { host: crate::hostname(), pid: std::process::id(), started_at, lease_expires_at: Utc::now() + lease }
    }

    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn describe(&self) -> String {
        format!(
            "pid {} on {} since {}, lease until {}",
            self.pid,
            self.host,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.lease_expires_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// The live holder of the lease at `key` as `pid N on HOST` (the line a local lock file holds,
/// which `list` matches against a backup's start marker); None when absent, unreadable or expired.
pub fn live_holder(storage: &Storage, key: &str) -> Option<String> {
    let (bytes, _) = storage.get_versioned(key).ok()??;
    let h: Holder = serde_json::from_slice(&bytes).ok()?;
    (h.lease_expires_at > Utc::now()).then(|| super::lock::holder_line(h.pid, &h.host))
}

/// A held lease; released (the object deleted if still ours) on drop.
pub struct Lease {
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<Option<ObjectVersion>>>,
    storage: Storage,
    key: String,
}

impl Lease {
    pub fn acquire(storage: &Storage, key: &str, what: &str) -> Result<Lease, RepoError> {
        let lock_err = |e: super::StorageError| RepoError::Lock {
            path: format!("{}/{key}", storage.location()),
            detail: e.to_string(),
        };
        let started_at = Utc::now();
        // A few rounds: the lock may be released or taken between our look and our write.
        for _ in 0..3 {
            if let Some(version) = storage.create_versioned(key, Holder::mine(started_at).bytes()).map_err(lock_err)? {
                return Ok(Self::hold(storage, key, version, started_at));
            }
            let Some((bytes, version)) = storage.get_versioned(key).map_err(lock_err)? else { continue };
            let holder: Option<Holder> = serde_json::from_slice(&bytes).ok();
            if let Some(h) = holder.as_ref().filter(|h| h.lease_expires_at > Utc::now()) {
                return Err(RepoError::Locked {
                    what: what.to_string(),
                    path: format!("{}/{key}", storage.location()),
                    holder: h.describe(),
                });
            }
            if let Some(new) =
                storage.replace_versioned(key, Holder::mine(started_at).bytes(), &version).map_err(lock_err)?
            {
                let was = holder.map(|h| h.describe()).unwrap_or_else(|| "an unreadable lock object".into());
                tracing::warn!("taking over the expired lock {}/{key} ({was})", storage.location());
                return Ok(Self::hold(storage, key, new, started_at));
            }
        }
        Err(RepoError::Lock {
            path: format!("{}/{key}", storage.location()),
            detail: "the lock object kept changing; hint: another pgkeep is taking it, try again".into(),
        })
    }

    fn hold(storage: &Storage, key: &str, version: ObjectVersion, started_at: DateTime<Utc>) -> Lease {
        let (tx, rx) = mpsc::channel::<()>();
        let (st, k) = (storage.clone(), key.to_string());
        let renewer = std::thread::spawn(move || {
            let mut version = version;
            // Until told to stop (or the sender is dropped): renew, keeping the last version.
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(RENEW_EVERY) {
                match st.replace_versioned(&k, Holder::mine(started_at).bytes(), &version) {
                    Ok(Some(new)) => version = new,
                    Ok(None) => {
                        tracing::error!(
                            "lost the lock {}/{k}: another pgkeep took it over (this one did not renew its lease in time)",
                            st.location()
                        );
                        return None;
                    }
                    // The next round retries; the lease has 45 s of slack.
                    Err(e) => tracing::warn!("could not renew the lock {}/{k}: {e}", st.location()),
                }
            }
            Some(version)
        });
        Lease { stop: Some(tx), renewer: Some(renewer), storage: storage.clone(), key: key.to_string() }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        let mine = self.renewer.take().and_then(|h| h.join().ok()).flatten();
        // Delete only our own lock object (a taker's would be another version).
        if let Some(mine) = mine {
            if let Ok(Some((_, now))) = self.storage.get_versioned(&self.key) {
                if now == mine {
                    let _ = self.storage.delete(&self.key);
                }
            }
        }
    }
}
