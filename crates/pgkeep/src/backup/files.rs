//! The files driver's worker: stream each file through a frame (zstd + BLAKE3) into the
//! repository. Small files are appended to per-worker bundles (one durable object per ~64 MiB
//! instead of one per file); large files get an object of their own.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::plan::{FileTask, ReadMode};
use super::throttle::Throttle;
use super::BackupError;
use crate::progress::Progress;
use crate::repo::frame::{Compression, FrameWriter};
use crate::repo::layout;
use crate::repo::manifest::BLCKSZ;
use crate::repo::{ObjectWriter, Objects};

/// Files at or below this size go into bundles.
pub const BUNDLE_FILE_LIMIT: u64 = 4 * 1024 * 1024;
/// A bundle is closed once it holds this many stored bytes.
pub const BUNDLE_TARGET: u64 = 64 * 1024 * 1024;
const READ_CHUNK: usize = 1024 * 1024;

/// One stored file.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub rel: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub blake3: [u8; 32],
    /// None: an incremental entry with no changed block (nothing stored).
    pub object: Option<String>,
    pub offset: u64,
    pub length: u64,
    /// Incremental entries: the blocks the frame holds.
    pub blocks: Option<Vec<[u32; 2]>>,
}

/// What `store_file` wrote for one file.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The file's size (for block entries: as found when the copy began).
    pub size: u64,
    /// BLAKE3 of the frame's plain content.
    pub blake3: [u8; 32],
    pub blocks: Option<Vec<[u32; 2]>>,
}

#[derive(Debug, Default)]
pub struct CopyOutcome {
    pub files: Vec<StoredFile>,
    /// (object name, stored size)
    pub objects: Vec<(String, u64)>,
    /// Files that disappeared before we could open them (dropped relations): WAL replay agrees.
    pub vanished: Vec<String>,
}

pub struct CopyParams<'a> {
    pub storage: &'a Objects,
    pub backup_id: &'a str,
    pub compression: Compression,
    pub jobs: usize,
    pub throttle: Option<&'a Throttle>,
    pub progress: &'a dyn Progress,
    /// Bytes read from PGDATA (the incremental report's `bytes_read`).
    pub bytes_read: &'a AtomicU64,
}

struct Shared<'a> {
    params: &'a CopyParams<'a>,
    tasks: &'a [FileTask],
    next_task: AtomicUsize,
    next_object: AtomicU32,
    failed: AtomicBool,
    out: Mutex<CopyOutcome>,
}

/// Copy `tasks` with `params.jobs` worker threads.
pub fn copy_files(params: &CopyParams<'_>, tasks: &[FileTask]) -> crate::Result<CopyOutcome> {
    let shared = Shared {
        params,
        tasks,
        next_task: AtomicUsize::new(0),
        next_object: AtomicU32::new(0),
        failed: AtomicBool::new(false),
        out: Mutex::new(CopyOutcome::default()),
    };
    let mut jobs = params.jobs.clamp(1, tasks.len().max(1));
    if let Some(limit) = params.storage.writer_threads_limit().filter(|l| jobs > *l) {
        // More would let every buffer of the object-store part budget sit in bundles that
        // wait for their worker's large file, which would then wait for a buffer forever.
        tracing::info!("copying with {limit} workers instead of {jobs}: the most an object store's part budget serves");
        jobs = limit;
    }
    let results: Vec<crate::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs).map(|_| s.spawn(|| worker(&shared))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(crate::Error::other("a backup worker panicked"))))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(shared.out.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn new_object(shared: &Shared<'_>) -> crate::Result<ObjectWriter> {
    let n = shared.next_object.fetch_add(1, Ordering::Relaxed);
    let key = layout::data_key(shared.params.backup_id, &format!("{n:06}"));
    Ok(shared.params.storage.create_writer(&key)?)
}

fn object_name(w: &ObjectWriter) -> String {
    w.key().rsplit('/').next().unwrap_or_default().to_string()
}

fn worker(shared: &Shared<'_>) -> crate::Result<()> {
    let mut bundle: Option<ObjectWriter> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    let res = (|| -> crate::Result<()> {
        loop {
            if shared.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = shared.next_task.fetch_add(1, Ordering::Relaxed);
            let Some(task) = shared.tasks.get(i) else { break };
            if task.read == ReadMode::Blocks(Vec::new()) {
                // Nothing changed: the entry points at the chain, no read, no object.
                let stored =
                    Stored { size: task.size, blake3: *blake3::hash(&[]).as_bytes(), blocks: Some(Vec::new()) };
                record(&mut shared.out.lock().unwrap_or_else(|p| p.into_inner()), task, Some(stored), None, 0, 0);
                continue;
            }
            if stored_bytes(task) > BUNDLE_FILE_LIMIT {
                let mut own = new_object(shared)?;
                let stored = store_file(task, &mut own, shared.params, &mut buf)?;
                if stored.is_none() {
                    drop(own); // nothing written: the object is abandoned, never created
                    shared.out.lock().unwrap_or_else(|p| p.into_inner()).vanished.push(task.rel.clone());
                    continue;
                }
                let object = object_name(&own);
                let length = own.written();
                let size = own.finish()?;
                let mut out = shared.out.lock().unwrap_or_else(|p| p.into_inner());
                record(&mut out, task, stored, Some(object.clone()), 0, length);
                out.objects.push((object, size));
            } else {
                if bundle.is_none() {
                    bundle = Some(new_object(shared)?);
                }
                let sink = bundle.as_mut().expect("bundle was just opened");
                let offset = sink.written();
                let stored = store_file(task, sink, shared.params, &mut buf)?;
                let length = sink.written() - offset;
                let object = object_name(sink);
                let out = &mut shared.out.lock().unwrap_or_else(|p| p.into_inner());
                record(out, task, stored, Some(object), offset, length);
                if sink.written() >= BUNDLE_TARGET {
                    finish_bundle(shared, bundle.take())?;
                }
            }
        }
        finish_bundle(shared, bundle.take())
    })();
    if res.is_err() {
        shared.failed.store(true, Ordering::Relaxed);
    }
    res
}

/// Bytes a task puts into its frame (what decides bundle or own object).
fn stored_bytes(task: &FileTask) -> u64 {
    match &task.read {
        ReadMode::Blocks(b) => b.iter().map(|[a, e]| u64::from(e - a) * BLCKSZ).sum(),
        _ => task.size,
    }
}

fn record(
    out: &mut CopyOutcome,
    task: &FileTask,
    stored: Option<Stored>,
    object: Option<String>,
    offset: u64,
    length: u64,
) {
    match stored {
        Some(st) => out.files.push(StoredFile {
            rel: task.rel.clone(),
            size: st.size,
            mode: task.mode,
            mtime: task.mtime,
            blake3: st.blake3,
            object,
            offset,
            length,
            blocks: st.blocks,
        }),
        None => out.vanished.push(task.rel.clone()),
    }
}

fn finish_bundle(shared: &Shared<'_>, bundle: Option<ObjectWriter>) -> crate::Result<()> {
    if let Some(b) = bundle {
        let name = object_name(&b);
        if b.written() == 0 {
            return Ok(()); // every file in it vanished: nothing to store
        }
        let size = b.finish()?;
        shared.out.lock().unwrap_or_else(|p| p.into_inner()).objects.push((name, size));
    }
    Ok(())
}

/// Stream one file (or its chosen blocks) into `sink` as a frame. None when the file vanished
/// before it was opened.
pub fn store_file(
    task: &FileTask,
    sink: &mut ObjectWriter,
    params: &CopyParams<'_>,
    buf: &mut [u8],
) -> crate::Result<Option<Stored>> {
    let read_err = |e: io::Error| BackupError::Read { path: task.abs.display().to_string(), detail: e.to_string() };
    let mut f = match File::open(&task.abs) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e).into()),
    };
    let mut fw = FrameWriter::new(&mut *sink, params.compression).map_err(|e| write_err(params, &e))?;
    let account = |n: usize| {
        if let Some(t) = params.throttle {
            t.consume(n as u64);
        }
        params.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        params.progress.advance(n as u64);
    };
    let mut blocks = None;
    match &task.read {
        ReadMode::Whole => loop {
            let n = match f.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e).into()),
            };
            fw.write_all(&buf[..n]).map_err(|e| write_err(params, &e))?;
            account(n);
        },
        ReadMode::Blocks(ranges) => {
            let bs = BLCKSZ as usize;
            let mut page = vec![0u8; bs];
            for [first, end] in ranges {
                for blk in *first..*end {
                    // A block cut off by a truncation after the backup started reads as zeros:
                    // replay of this backup's WAL truncates again.
                    let n = read_at_full(&f, &mut page, u64::from(blk) * bs as u64).map_err(read_err)?;
                    page[n..].fill(0);
                    fw.write_all(&page).map_err(|e| write_err(params, &e))?;
                    account(n);
                }
            }
            blocks = Some(ranges.clone());
        }
        ReadMode::PagesSince(since) => {
            let bs = BLCKSZ as usize;
            let mut kept: Vec<[u32; 2]> = Vec::new();
            let mut page = vec![0u8; bs];
            let mut blk = 0u32;
            loop {
                let n = read_at_full(&f, &mut page, u64::from(blk) * bs as u64).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                account(n);
                page[n..].fill(0);
                if super::incremental::page_is_newer(&page, *since) {
                    fw.write_all(&page).map_err(|e| write_err(params, &e))?;
                    match kept.last_mut() {
                        Some(r) if r[1] == blk => r[1] += 1,
                        _ => kept.push([blk, blk + 1]),
                    }
                }
                if n < bs {
                    break;
                }
                blk += 1;
            }
            blocks = Some(kept);
        }
    }
    let (_, summary) = fw.finish().map_err(|e| write_err(params, &e))?;
    let size = match &task.read {
        ReadMode::Blocks(_) => task.size,
        ReadMode::PagesSince(_) => {
            blocks.iter().flatten().map(|r| u64::from(r[1]) * BLCKSZ).max().unwrap_or(0).max(task.size)
        }
        ReadMode::Whole => summary.plain_size,
    };
    Ok(Some(Stored { size, blake3: summary.blake3, blocks }))
}

/// `pread` until `buf` is full or the file ends; the number of bytes read.
fn read_at_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn write_err(params: &CopyParams<'_>, e: &io::Error) -> crate::Error {
    // ObjectWriter wraps storage errors in io::Error::other; surface the storage message.
    crate::Error::other(format!("repository {}: write failed: {e}", params.storage.location()))
}
