//! Writing a backup's files into place: one worker per data object at a time, frames decoded
//! and checked (size, BLAKE3 from the object, BLAKE3 from the manifest), each file fsynced.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::RestoreError;
use crate::progress::Progress;
use crate::repo::frame;
use crate::repo::manifest::{Entry, EntryKind, Manifest};
use crate::repo::{layout, Repository};

/// Name pg_control gets until everything else is durable.
pub const PG_CONTROL_TEMP: &str = "global/pg_control.pgkeep-restore";

/// Where each manifest path goes.
pub struct PathMap {
    pub pgdata: PathBuf,
    /// tablespace oid → destination directory
    pub tablespaces: BTreeMap<u32, PathBuf>,
}

impl PathMap {
    pub fn dest(&self, rel: &str) -> PathBuf {
        if let Some(rest) = rel.strip_prefix("pg_tblspc/") {
            let (oid, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let (Ok(oid), false) = (oid.parse::<u32>(), tail.is_empty()) {
                if let Some(dir) = self.tablespaces.get(&oid) {
                    return dir.join(tail);
                }
            }
        }
        if rel == "global/pg_control" {
            return self.pgdata.join(PG_CONTROL_TEMP);
        }
        self.pgdata.join(rel)
    }
}

fn werr(path: &Path, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Write { path: path.display().to_string(), detail: e.to_string() }
}

/// Directories and symlinks (tablespace links point at their mapped destinations).
pub fn create_structure(m: &Manifest, map: &PathMap) -> Result<(), RestoreError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&map.pgdata).map_err(|e| werr(&map.pgdata, e))?;
    crate::fsutil::set_mode(&map.pgdata, 0o700).map_err(|e| werr(&map.pgdata, e))?;
    for dir in map.tablespaces.values() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| werr(dir, e))?;
    }
    let mut dirs: Vec<&Entry> = m.entries.iter().filter(|e| e.kind == EntryKind::Dir).collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    for d in dirs {
        let p = map.dest(&d.path);
        fs::DirBuilder::new().recursive(true).mode((d.mode & 0o777) | 0o700).create(&p).map_err(|e| werr(&p, e))?;
    }
    // Link targets come from the map, never from the manifest (`Manifest::validate` allows
    // links only at pg_tblspc/<oid> of a listed tablespace and at pg_wal).
    for l in m.entries.iter().filter(|e| e.kind == EntryKind::Link) {
        let link = map.pgdata.join(&l.path);
        let oid = l.path.strip_prefix("pg_tblspc/").and_then(|o| o.parse::<u32>().ok());
        let Some(target) = oid.and_then(|oid| map.tablespaces.get(&oid)) else {
            // pg_wal: the restore has no separate WAL directory, and recovery reads the archive.
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&link).map_err(|e| werr(&link, e))?;
            continue;
        };
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(|e| werr(parent, e))?;
        }
        std::os::unix::fs::symlink(target, &link).map_err(|e| werr(&link, e))?;
    }
    Ok(())
}

pub struct FileStats {
    pub files: u64,
    pub bytes: u64,
}

/// Restore every file the backup holds whole with `jobs` workers; returns counts. Files held
/// as changed blocks (incremental backups) are [`write_chain_files`]'s.
pub fn write_files(
    repo: &Repository,
    m: &Manifest,
    map: &PathMap,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<FileStats, RestoreError> {
    // Group file entries by object, in offset order.
    let mut by_object: BTreeMap<u32, Vec<&Entry>> = BTreeMap::new();
    for e in m.entries.iter().filter(|e| e.kind == EntryKind::File && e.blocks.is_none()) {
        let Some(obj) = e.object else {
            return Err(RestoreError::File {
                id: m.id.clone(),
                path: e.path.clone(),
                dir: map.pgdata.display().to_string(),
                detail: "manifest entry names no data object".into(),
            });
        };
        by_object.entry(obj).or_default().push(e);
    }
    let mut work: Vec<(u32, Vec<&Entry>)> = by_object.into_iter().collect();
    for (_, v) in work.iter_mut() {
        v.sort_by_key(|e| e.offset);
    }
    work.sort_by_key(|(o, _)| std::cmp::Reverse(m.objects.get(*o as usize).map(|x| x.size).unwrap_or(0)));

    in_parallel(&work, jobs, |(obj, entries)| restore_object(repo, m, map, *obj, entries, progress))
}

/// Run `task` over `work` on `jobs` threads, summing its (files, bytes); the first error
/// stops the others from taking more work and is returned.
fn in_parallel<T: Sync>(
    work: &[T],
    jobs: usize,
    task: impl Fn(&T) -> Result<(u64, u64), RestoreError> + Sync,
) -> Result<FileStats, RestoreError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RestoreError>> = Mutex::new(None);
    let stats = Mutex::new(FileStats { files: 0, bytes: 0 });
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, work.len().max(1)) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = work.get(i) else { break };
                    match task(item) {
                        Ok((n, b)) => {
                            let mut st = stats.lock().unwrap_or_else(|p| p.into_inner());
                            st.files += n;
                            st.bytes += b;
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(stats.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn restore_object(
    repo: &Repository,
    m: &Manifest,
    map: &PathMap,
    obj: u32,
    entries: &[&Entry],
    progress: &dyn Progress,
) -> Result<(u64, u64), RestoreError> {
    let fail = |path: &str, detail: String| RestoreError::File {
        id: m.id.clone(),
        path: path.to_string(),
        dir: map.pgdata.display().to_string(),
        detail,
    };
    let object = m
        .objects
        .get(obj as usize)
        .ok_or_else(|| fail(&entries[0].path, format!("manifest names missing object #{obj}")))?;
    let key = layout::data_key(&m.id, &object.name);
    let mut reader = repo.storage().open_reader(&key, None).map_err(|e| fail(&entries[0].path, e.to_string()))?;
    let mut pos = 0u64;
    let mut bytes = 0u64;
    for e in entries {
        if e.offset < pos {
            return Err(fail(&e.path, "overlapping entries in the manifest".into()));
        }
        if e.offset > pos {
            io::copy(&mut (&mut reader).take(e.offset - pos), &mut io::sink())
                .map_err(|x| fail(&e.path, x.to_string()))?;
        }
        let mut w = create_dest(map, e).map_err(|x| fail(&e.path, x))?;
        let what = format!("file {} (object {} of backup {})", e.path, object.name, m.id);
        let summary = frame::copy(&mut reader, e.length, &mut w, &what).map_err(|x| fail(&e.path, x.to_string()))?;
        if let Some(recorded) = &e.blake3 {
            if hex::encode(summary.blake3) != *recorded {
                return Err(fail(&e.path, "content does not match the checksum recorded in the manifest".into()));
            }
        }
        // No fsync here: a thousand fsyncs serialise on the file system journal and stall the
        // workers' file creation (measured: restore twice as slow). `sync_restored` makes
        // everything durable with one syncfs per file system before pg_control is published.
        w.into_inner().map_err(|x| fail(&e.path, x.to_string()))?;
        pos = e.offset.saturating_add(e.length);
        bytes += summary.plain_size;
        progress.advance(summary.plain_size);
    }
    Ok((entries.len() as u64, bytes))
}

/// A restored file, created (never over an existing one) with the entry's mode, buffered.
fn create_dest(map: &PathMap, e: &Entry) -> Result<BufWriter<fs::File>, String> {
    let dest = map.dest(&e.path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode((e.mode & 0o777) | 0o600)
        .open(&dest)
        .map(|f| BufWriter::with_capacity(256 * 1024, f))
        .map_err(|x| format!("cannot create {}: {x}", dest.display()))
}

/// Make every restored file and directory durable: `syncfs` on each file system involved (the
/// data directory's and each tablespace's), as PostgreSQL's `--sync-method=syncfs` does. It
/// also flushes unrelated dirty data of those file systems, but one call replaces a thousand
/// journal commits. Where
/// syncfs is unavailable, every restored file and directory is fsynced.
pub fn sync_restored(m: &Manifest, map: &PathMap) -> Result<(), RestoreError> {
    let mut roots = vec![map.pgdata.clone()];
    roots.extend(map.tablespaces.values().cloned());
    match crate::fsutil::syncfs_all(&roots) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            for entry in &m.entries {
                let p = map.dest(&entry.path);
                match entry.kind {
                    EntryKind::File => std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| werr(&p, e))?,
                    EntryKind::Dir => crate::fsutil::fsync_dir(&p).map_err(|e| werr(&p, e))?,
                    EntryKind::Link => {}
                }
            }
            for r in &roots {
                crate::fsutil::fsync_dir(r).map_err(|e| werr(r, e))?;
            }
            Ok(())
        }
        Err(e) => Err(werr(&map.pgdata, format!("syncfs failed: {e}"))),
    }
}

/// Final step: pg_control under its real name, durably.
pub fn publish_pg_control(map: &PathMap) -> Result<(), RestoreError> {
    let tmp = map.pgdata.join(PG_CONTROL_TEMP);
    let real = map.pgdata.join("global/pg_control");
    fs::rename(&tmp, &real).map_err(|e| werr(&real, e))?;
    crate::fsutil::fsync_dir(&map.pgdata.join("global")).map_err(|e| werr(&real, e))
}

/// Write a small file durably (backup_label, tablespace_map).
pub fn write_small(path: &Path, data: &[u8]) -> Result<(), RestoreError> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| werr(path, e))?;
    f.write_all(data).map_err(|e| werr(path, e))?;
    f.sync_all().map_err(|e| werr(path, e))
}

/// A backup with the backups its blocks rest on: the full first, the backup itself last (a
/// full alone for a full).
pub struct Chain {
    pub manifests: Vec<Manifest>,
    /// Per manifest: file path → entry index.
    index: Vec<std::collections::HashMap<String, usize>>,
}

impl Chain {
    /// The chain of `m`: each backup its `chain` names, read and checked (valid, same cluster,
    /// and itself resting on the same backups as `m` says), so a file is never assembled from
    /// another lineage's blocks.
    pub fn load(repo: &Repository, m: Manifest) -> crate::Result<Chain> {
        let bad = |problem: String| RestoreError::BadManifest { id: m.id.clone(), problem };
        let mut manifests = Vec::with_capacity(m.chain.len() + 1);
        for (i, id) in m.chain.iter().enumerate() {
            let member = repo.manifest(id).map_err(|e| {
                crate::Error::other(format!(
                    "backup {} rests on backup {id}, which cannot be read: {e}; hint: restore another backup (`pgkeep list`)",
                    m.id
                ))
            })?;
            super::plan::check_manifest(id, &member)?;
            if member.system_identifier != m.system_identifier || member.chain != m.chain[..i] {
                return Err(bad(format!("chain member {id} is of another cluster or chain")).into());
            }
            manifests.push(member);
        }
        manifests.push(m);
        Ok(Chain::of(manifests))
    }

    /// A chain from manifests already read and checked, oldest first.
    pub fn of(manifests: Vec<Manifest>) -> Chain {
        let index = manifests
            .iter()
            .map(|m| {
                m.entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.kind == EntryKind::File)
                    .map(|(i, e)| (e.path.clone(), i))
                    .collect()
            })
            .collect();
        Chain { manifests, index }
    }

    /// The backup being restored.
    pub fn target(&self) -> &Manifest {
        self.manifests.last().expect("a chain holds at least its backup")
    }
}

/// One backup's frame for a file: the whole file (`blocks` None) or some blocks of it.
struct Layer {
    reader: Option<frame::FrameReader<Box<dyn Read + Send>>>,
    blocks: Option<Vec<[u32; 2]>>,
    cursor: usize,
    size: u64,
    blake3: Option<String>,
    what: String,
}

impl Layer {
    /// Whether this frame holds block `i` (called with increasing `i`).
    fn has(&mut self, i: u32) -> bool {
        let Some(ranges) = &self.blocks else { return false };
        while ranges.get(self.cursor).is_some_and(|r| r[1] <= i) {
            self.cursor += 1;
        }
        ranges.get(self.cursor).is_some_and(|r| r[0] <= i)
    }

    fn read_into(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let what = &self.what;
        let r = self.reader.as_mut().ok_or_else(|| io::Error::other(format!("{what}: no stored frame")))?;
        r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                io::Error::new(io::ErrorKind::InvalidData, format!("{what}: holds fewer bytes than its entry lists"))
            }
            _ => e,
        })
    }

    /// Read the frame to its end (which checks it) and compare with the manifest's hash.
    fn finish(&mut self) -> io::Result<()> {
        let Some(r) = self.reader.as_mut() else { return Ok(()) };
        io::copy(r, &mut io::sink())?;
        let got = r.summary().map(|s| hex::encode(s.blake3));
        if let (Some(want), Some(got)) = (&self.blake3, got) {
            if *want != got {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: content does not match the checksum recorded in the manifest", self.what),
                ));
            }
        }
        Ok(())
    }
}

/// The plain content of one file of a chain's last backup, assembled block by block: each
/// block from the newest backup whose frame holds it, zeros where a backup's size cut it off.
/// Every frame it uses is read to its end, so each is checked (frame BLAKE3 and the manifest's
/// hash) before `read` returns 0; an error instead means the content must not be used.
pub struct EntryContent {
    layers: Vec<Layer>,
    size: u64,
    next_block: u64,
    block: Vec<u8>,
    block_pos: usize,
    block_len: usize,
    scratch: Vec<u8>,
    done: bool,
}

impl EntryContent {
    /// The file's size in the backup.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fill_block(&mut self) -> io::Result<bool> {
        let bs = crate::repo::manifest::BLCKSZ;
        if self.next_block * bs >= self.size {
            if !self.done {
                self.done = true;
                for l in &mut self.layers {
                    l.finish()?;
                }
            }
            return Ok(false);
        }
        let i = self.next_block;
        let blk = u32::try_from(i).map_err(|_| io::Error::other("block number out of range"))?;
        // Newest first: the first frame holding the block wins; a backup whose size ends
        // before it means zeros (the file was cut, then extended again).
        let mut source = None;
        for (j, l) in self.layers.iter_mut().enumerate().rev() {
            if l.blocks.is_none() {
                source = (i * bs < l.size).then_some(j);
                break;
            }
            if l.has(blk) {
                source = Some(j);
                break;
            }
            if i * bs >= l.size {
                break;
            }
        }
        self.block.fill(0);
        for (j, l) in self.layers.iter_mut().enumerate() {
            let n = if l.blocks.is_none() {
                l.size.saturating_sub(i * bs).min(bs) as usize
            } else if l.has(blk) {
                bs as usize
            } else {
                0
            };
            if n == 0 {
                continue;
            }
            let into = if source == Some(j) { &mut self.block[..n] } else { &mut self.scratch[..n] };
            l.read_into(into)?;
        }
        self.block_len = (self.size - i * bs).min(bs) as usize;
        self.block_pos = 0;
        self.next_block += 1;
        Ok(true)
    }
}

impl Read for EntryContent {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            if self.block_pos == self.block_len && !self.fill_block()? {
                break;
            }
            let k = (self.block_len - self.block_pos).min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&self.block[self.block_pos..self.block_pos + k]);
            self.block_pos += k;
            n += k;
        }
        Ok(n)
    }
}

/// The content of file `path` (a manifest path) as of `chain`'s last backup, for a backup of
/// any kind: a reader yielding exactly `size()` bytes, checked as it is read (see
/// [`EntryContent`]). Errors name the file and the backup.
pub fn open_entry_content(repo: &Repository, chain: &Chain, path: &str) -> Result<EntryContent, RestoreError> {
    let target = chain.target();
    let fail = |detail: String| RestoreError::File {
        id: target.id.clone(),
        path: path.to_string(),
        dir: String::new(),
        detail,
    };
    let mut layers = Vec::new();
    for (m, index) in chain.manifests.iter().zip(&chain.index).rev() {
        let e = index
            .get(path)
            .and_then(|i| m.entries.get(*i))
            .ok_or_else(|| fail(format!("backup {} of its chain has no file {path}", m.id)))?;
        let what = format!("file {path} of backup {}", m.id);
        let reader = match e.object.and_then(|o| m.objects.get(o as usize)) {
            Some(object) => {
                let key = layout::data_key(&m.id, &object.name);
                let end = e.offset.saturating_add(e.length);
                let raw = repo.storage().open_reader(&key, Some(e.offset..end)).map_err(|x| fail(x.to_string()))?;
                Some(frame::FrameReader::new(raw, e.length, &what).map_err(|x| fail(x.to_string()))?)
            }
            None if e.blocks.as_ref().is_some_and(|b| b.is_empty()) => None,
            None => return Err(fail(format!("backup {} names no data object for it", m.id))),
        };
        let whole = e.blocks.is_none();
        layers.push(Layer {
            reader,
            blocks: e.blocks.clone(),
            cursor: 0,
            size: e.size,
            blake3: e.blake3.clone(),
            what,
        });
        if whole {
            break;
        }
    }
    if layers.last().is_some_and(|l| l.blocks.is_some()) {
        return Err(fail("no backup of its chain holds the whole file".into()));
    }
    layers.reverse();
    let bs = crate::repo::manifest::BLCKSZ as usize;
    Ok(EntryContent {
        size: layers.last().map(|l| l.size).unwrap_or(0),
        layers,
        next_block: 0,
        block: vec![0; bs],
        block_pos: 0,
        block_len: 0,
        scratch: vec![0; bs],
        done: false,
    })
}

/// Restore the files of `chain`'s last backup that it holds as changed blocks, each written
/// once from its assembled content (`jobs` workers).
pub fn write_chain_files(
    repo: &Repository,
    chain: &Chain,
    map: &PathMap,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<FileStats, RestoreError> {
    let m = chain.target();
    let work: Vec<&Entry> = m.entries.iter().filter(|e| e.kind == EntryKind::File && e.blocks.is_some()).collect();
    in_parallel(&work, jobs, |e| {
        let n = write_assembled(repo, chain, map, e)?;
        progress.advance(n);
        Ok((1, n))
    })
}

fn write_assembled(repo: &Repository, chain: &Chain, map: &PathMap, e: &Entry) -> Result<u64, RestoreError> {
    let fail = |detail: String| RestoreError::File {
        id: chain.target().id.clone(),
        path: e.path.clone(),
        dir: map.pgdata.display().to_string(),
        detail,
    };
    let mut content = open_entry_content(repo, chain, &e.path)?;
    let mut w = create_dest(map, e).map_err(fail)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = content.read(&mut buf).map_err(|x| fail(x.to_string()))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(|x| fail(x.to_string()))?;
        total += n as u64;
    }
    // Durability: `sync_restored` (one syncfs) before pg_control is published.
    w.into_inner().map_err(|x| fail(x.to_string()))?;
    Ok(total)
}
