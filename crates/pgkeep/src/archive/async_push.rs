//! `archive_async`: one archive-push call also pushes the other segments PostgreSQL marked
//! ready, `archive_push_jobs` at a time, so per-request latency of an object store stops
//! bounding the archiving rate. Each one stored is recorded in the spool; PostgreSQL's later
//! call for it finds the record and returns at once. A record is written only after the push
//! returned, i.e. once the segment is durable in the repository, and it names the repository
//! and the segment's BLAKE3, so a record of another repository or of a file since re-created
//! is never trusted. A killed pusher leaves at most unrecorded segments, pushed again later.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::push::{push, PushOutcome, PushReport};
use super::spool::{self, SpoolDir, Transport, RECORD_SUFFIX, TMP_PREFIX};
use super::ArchiveError;
use crate::repo::{RepoLocation, Repository};

/// What the spool remembers of a segment stored ahead of PostgreSQL's request.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PushRecord {
    repository: String,
    file: String,
    size: u64,
    blake3: String,
}

/// The repository's identity as the pusher saw it when it opened it: a repository re-created at
/// the same location is another repository.
const IDENTITY: &str = "identity";

/// archive-push with `archive_async`. Anything that is not a complete segment in a `pg_wal`
/// directory (history files, `.partial`, a manual push of a copy) is pushed on its own.
pub fn push_async(
    t: &Transport,
    location: &RepoLocation,
    open: impl Fn() -> crate::Result<Repository>,
    path: &Path,
) -> crate::Result<PushReport> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(pgdata) = spool::pgdata_of_wal_path(path) else { return push(&open()?, path) };
    let Some(sysid) = spool::segment_system_identifier(path).filter(|_| is_segment_name(&name)) else {
        return push(&open()?, path);
    };
    let root = t.spool_root(&pgdata)?;
    let wal_dir = path.parent().map(crate::fsutil::absolute).unwrap_or_default();
    let dir = SpoolDir::open(&root, &format!("push-{}", spool::spool_key(&[&location.to_string()], sysid)), &wal_dir)?;
    if let Some(r) = recorded(&dir, &name, path) {
        return Ok(r);
    }
    // Another call may be pushing this very segment in its batch: wait for it, then look again.
    let _lock = dir.lock()?;
    if let Some(r) = recorded(&dir, &name, path) {
        return Ok(r);
    }
    let repo = open()?;
    let identity = format!("{location} system {} created {}", repo.info().system_identifier, repo.info().created_at);
    if std::fs::read_to_string(dir.file(IDENTITY)).ok().as_deref() != Some(identity.as_str()) {
        for n in dir.names() {
            dir.remove(&n);
        }
        dir.write(IDENTITY, identity.as_bytes()).map_err(|e| spool::spool_error(&dir.path, e))?;
    }
    clean(&dir, &wal_dir);
    let batch = batch(&dir, &wal_dir, &name, t.push_jobs * 2);
    run_batch(&repo, &dir, &wal_dir, &identity, &name, batch, t.push_jobs)
}

/// A complete segment's name (history, backup history and `.partial` files go on their own).
fn is_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The report for a segment already stored by an earlier call, if its record matches this file
/// and the repository; the record is consumed (PostgreSQL does not ask twice).
fn recorded(dir: &SpoolDir, name: &str, path: &Path) -> Option<PushReport> {
    let rec_name = format!("{name}{RECORD_SUFFIX}");
    let rec: PushRecord = dir.read_json(&rec_name)?;
    let identity = std::fs::read_to_string(dir.file(IDENTITY)).ok()?;
    let (size, hash) = file_blake3(path).ok()?;
    if rec.repository != identity || rec.file != name || rec.size != size || rec.blake3 != hash {
        tracing::info!("the spool record of {name} does not match this file or repository; pushing it again");
        dir.remove(&rec_name);
        return None;
    }
    dir.remove(&rec_name);
    Some(PushReport { file: name.to_string(), outcome: PushOutcome::ArchivedAhead, size, stored_size: 0, blake3: hash })
}

fn file_blake3(path: &Path) -> std::io::Result<(u64, String)> {
    let f = std::fs::File::open(path)?;
    // SAFETY: read-only mapping of a completed segment, which the server no longer writes.
    let m = unsafe { memmap2::MmapOptions::new().populate().map(&f)? };
    Ok((m.len() as u64, blake3::hash(&m).to_hex().to_string()))
}

/// Records of segments no longer in pg_wal (archived, acknowledged, recycled) and temps of a
/// killed pusher.
fn clean(dir: &SpoolDir, wal_dir: &Path) {
    for n in dir.names() {
        let stale = match n.strip_suffix(RECORD_SUFFIX) {
            Some(seg) => !wal_dir.join(seg).exists(),
            None => n.starts_with(TMP_PREFIX),
        };
        if stale {
            dir.remove(&n);
        }
    }
}

/// This segment first, then the oldest other ready segments not yet recorded, `limit` in all.
fn batch(dir: &SpoolDir, wal_dir: &Path, own: &str, limit: usize) -> Vec<String> {
    let mut ready: Vec<String> = std::fs::read_dir(wal_dir.join("archive_status"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ready").map(str::to_string))
                .filter(|n| n != own && is_segment_name(n) && !dir.file(&format!("{n}{RECORD_SUFFIX}")).exists())
                .collect()
        })
        .unwrap_or_default();
    ready.sort();
    let mut out = vec![own.to_string()];
    out.extend(ready.into_iter().take(limit.saturating_sub(1)));
    out
}

/// Push the batch with `jobs` threads; record every other segment once stored, return this
/// segment's result. A failure of another segment is left for PostgreSQL's call for it.
fn run_batch(
    repo: &Repository,
    dir: &SpoolDir,
    wal_dir: &Path,
    identity: &str,
    own: &str,
    batch: Vec<String>,
    jobs: usize,
) -> crate::Result<PushReport> {
    let queue = Mutex::new(batch.into_iter().collect::<VecDeque<_>>());
    let own_result: Mutex<Option<crate::Result<PushReport>>> = Mutex::new(None);
    let next = || queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(name) = next() {
                    let res = push(repo, &wal_dir.join(&name));
                    if name == own {
                        *own_result.lock().unwrap_or_else(|p| p.into_inner()) = Some(res);
                        continue;
                    }
                    match res {
                        Ok(r) => {
                            let rec = PushRecord {
                                repository: identity.to_string(),
                                file: r.file.clone(),
                                size: r.size,
                                blake3: r.blake3.clone(),
                            };
                            if let Err(e) = dir.write_json(&format!("{name}{RECORD_SUFFIX}"), &rec) {
                                tracing::warn!(
                                    "archived {name} ahead but cannot record it in {}: {e}",
                                    dir.path.display()
                                );
                            }
                        }
                        Err(e) => {
                            tracing::warn!("pushing {name} ahead failed (PostgreSQL's own call will retry it): {e}")
                        }
                    }
                }
            });
        }
    });
    own_result.into_inner().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(|| {
        Err(ArchiveError::Write { dest: own.to_string(), detail: "the pusher thread ended without a result".into() }
            .into())
    })
}
