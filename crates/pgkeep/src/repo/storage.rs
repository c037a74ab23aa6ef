//! The storage contract every repository backend implements, over the `object_store` crate.
//!
//! Contract (what callers may rely on, whatever the backend):
//! - `put`/`put_new`/`create_writer(..).finish()` return only once the object is durable
//!   (local: temp file, fsync, rename or link, fsync directory; S3: a completed PUT).
//! - Objects appear atomically: a reader sees all of an object or nothing; a writer killed
//!   half-way leaves no object under the final key.
//! - `put_new` never replaces an existing object (`PutMode::Create`).
//! - Keys are `/`-separated relative paths of ASCII letters, digits, `.`, `_`, `-`.
//!
//! The API is blocking: pgkeep's file workers are plain threads, and this layer bridges into
//! the async `object_store` with the runtime handle. Never call it from inside an async task.

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetRange, GetResultPayload, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload,
};
use tokio::runtime::Handle;

use crate::fsutil;

/// Where a repository lives, as the operator wrote it (`/path` or `s3://bucket/prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    Local(PathBuf),
}

impl RepoLocation {
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        if let Some(rest) = s.strip_prefix("file://") {
            return Ok(RepoLocation::Local(PathBuf::from(rest)));
        }
        if s.contains("://") {
            return Err(StorageError::Unsupported {
                location: s.to_string(),
                hint: "only local paths are supported by this build; use an absolute path".into(),
            });
        }
        if s.is_empty() {
            return Err(StorageError::Unsupported {
                location: s.to_string(),
                hint: "the repository location is empty; set --repo or PGKEEP_REPO".into(),
            });
        }
        Ok(RepoLocation::Local(fsutil::absolute(Path::new(s))))
    }
}

impl std::fmt::Display for RepoLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoLocation::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What a backend can do; commands check these instead of matching on the backend.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Features {
    /// `put_new` is an atomic create-if-absent.
    pub atomic_create: bool,
    /// Objects are files on a local file system (ownership and locks apply).
    pub posix: bool,
}

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object '{key}' is not in the repository at {location}")]
    NotFound { location: String, key: String },
    #[error("object '{key}' already exists in the repository at {location}")]
    AlreadyExists { location: String, key: String },
    #[error("repository {location}: cannot {op} '{key}': {detail}; hint: {hint}")]
    Io { location: String, op: &'static str, key: String, detail: String, hint: String },
    #[error("repository location '{location}' is not supported; hint: {hint}")]
    Unsupported { location: String, hint: String },
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// Files created by root in a repository owned by another user are handed to that user, so
/// `archive_command` (running as the server's user) can always write where `backup` wrote.
#[derive(Debug, Clone, Copy)]
struct Ownership {
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone)]
struct LocalExtras {
    root: PathBuf,
    owner: Option<Ownership>,
}

/// A repository backend handle: cheap to clone, safe to share between worker threads.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    rt: Handle,
    location: String,
    local: Option<LocalExtras>,
}

/// Size of the parts a streaming writer sends; S3 needs at least 5 MiB per part.
const PART_SIZE: usize = 8 * 1024 * 1024;

impl Storage {
    /// Open a backend. A local repository directory is created when `create` is set.
    pub fn open(loc: &RepoLocation, rt: Handle, create: bool) -> Result<Self, StorageError> {
        match loc {
            RepoLocation::Local(root) => {
                let location = root.display().to_string();
                if create && !root.exists() {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o750)
                        .create(root)
                        .map_err(|e| io_err(&location, "create the repository directory", "", &e))?;
                }
                if !root.is_dir() {
                    return Err(StorageError::Io {
                        location: location.clone(),
                        op: "open",
                        key: String::new(),
                        detail: "no such directory".into(),
                        hint: "create it with `pgkeep init` or check --repo / PGKEEP_REPO".into(),
                    });
                }
                let fs_store = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| os_err(&location, "open", "", e))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                let owner = if fsutil::running_as_root() {
                    match fsutil::owner_of(root) {
                        Ok((uid, gid)) if uid != 0 => Some(Ownership { uid, gid }),
                        _ => None,
                    }
                } else {
                    None
                };
                Ok(Storage {
                    store: Arc::new(fs_store),
                    rt,
                    location,
                    local: Some(LocalExtras { root: root.clone(), owner }),
                })
            }
        }
    }

    pub fn features(&self) -> Features {
        Features { atomic_create: true, posix: self.local.is_some() }
    }

    /// The repository's local root directory, when it is on a local file system.
    pub fn local_root(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.root.as_path())
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn runtime(&self) -> &Handle {
        &self.rt
    }

    fn path(key: &str) -> ObjPath {
        ObjPath::from(key)
    }

    /// Create missing parent directories of `key` durably (fsync of each new entry's parent),
    /// owned by the repository owner when root writes into someone else's repository
    /// (object_store would create them as the current user).
    fn prepare_parent(&self, key: &str) -> Result<(), StorageError> {
        let Some(local) = &self.local else { return Ok(()) };
        let mut dir = local.root.clone();
        let parts: Vec<&str> = key.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push(part);
            if dir.is_dir() {
                continue;
            }
            match DirBuilder::new().mode(0o750).create(&dir) {
                Ok(()) => {
                    if let Some(owner) = local.owner {
                        fsutil::chown(&dir, owner.uid, owner.gid)
                            .map_err(|e| io_err(&self.location, "set the owner of", key, &e))?;
                    }
                    if let Some(parent) = dir.parent() {
                        fsutil::fsync_dir(parent).map_err(|e| io_err(&self.location, "sync", key, &e))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&self.location, "create a directory for", key, &e)),
            }
        }
        Ok(())
    }

    fn finish_owner(&self, key: &str) -> Result<(), StorageError> {
        if let Some(LocalExtras { root, owner: Some(owner) }) = &self.local {
            fsutil::chown(&root.join(key), owner.uid, owner.gid)
                .map_err(|e| io_err(&self.location, "set the owner of", key, &e))?;
        }
        Ok(())
    }

    /// Store `data` under `key`, replacing any previous object atomically.
    pub fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.prepare_parent(key)?;
        let path = Self::path(key);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(data)))
            .map_err(|e| os_err(&self.location, "write", key, e))?;
        self.finish_owner(key)
    }

    /// Store `data` under `key` only if no object exists there.
    pub fn put_new(&self, key: &str, data: Bytes) -> Result<PutOutcome, StorageError> {
        self.put_new_parts(key, vec![data])
    }

    /// Like [`Storage::put_new`] for an object given in parts (no concatenation of large data).
    pub fn put_new_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<PutOutcome, StorageError> {
        self.prepare_parent(key)?;
        let path = Self::path(key);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        let payload: PutPayload = parts.into_iter().collect();
        match self.rt.block_on(self.store.put_opts(&path, payload, opts)) {
            Ok(_) => {
                self.finish_owner(key)?;
                Ok(PutOutcome::Created)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(os_err(&self.location, "write", key, e)),
        }
    }

    /// A streaming writer; the object exists only after [`ObjectWriter::finish`].
    pub fn create_writer(&self, key: &str) -> Result<ObjectWriter, StorageError> {
        self.prepare_parent(key)?;
        let sink = match &self.local {
            Some(local) => {
                let dest = local.root.join(key);
                let (file, staging) = create_staging(&dest).map_err(|e| io_err(&self.location, "write", key, &e))?;
                Sink::File { file: io::BufWriter::with_capacity(1024 * 1024, file), staging, dest }
            }
            None => Sink::Parts { buf: Vec::with_capacity(64 * 1024), upload: None },
        };
        Ok(ObjectWriter { storage: self.clone(), key: key.to_string(), sink, written: 0, done: false })
    }

    pub fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = Self::path(key);
        let res = self.rt.block_on(async {
            let r = self.store.get(&path).await?;
            r.bytes().await
        });
        res.map_err(|e| os_err(&self.location, "read", key, e))
    }

    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let path = Self::path(key);
        self.rt.block_on(self.store.get_range(&path, range)).map_err(|e| os_err(&self.location, "read", key, e))
    }

    /// A reader over `key` (or a byte range of it) that streams without buffering the object.
    pub fn open_reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>, StorageError> {
        let path = Self::path(key);
        let opts = GetOptions { range: range.clone().map(GetRange::Bounded), ..Default::default() };
        let res =
            self.rt.block_on(self.store.get_opts(&path, opts)).map_err(|e| os_err(&self.location, "read", key, e))?;
        let span = res.range.clone();
        match res.payload {
            GetResultPayload::File(mut file, _) => {
                file.seek(SeekFrom::Start(span.start)).map_err(|e| io_err(&self.location, "read", key, &e))?;
                Ok(Box::new(io::BufReader::with_capacity(256 * 1024, file.take(span.end - span.start))))
            }
            GetResultPayload::Stream(stream) => {
                Ok(Box::new(StreamReader { rt: self.rt.clone(), stream, chunk: Bytes::new() }))
            }
        }
    }

    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let path = Self::path(key);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(m) => Ok(Some(ObjectInfo { key: key.to_string(), size: m.size, modified: m.last_modified })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(&self.location, "stat", key, e)),
        }
    }

    /// Every object below `prefix` (recursive), sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let path = Self::path(prefix);
        let mut out = self.rt.block_on(async {
            let mut s = self.store.list(Some(&path));
            let mut v = Vec::new();
            while let Some(m) = s.next().await {
                let m = m?;
                v.push(ObjectInfo { key: m.location.to_string(), size: m.size, modified: m.last_modified });
            }
            Ok::<_, object_store::Error>(v)
        });
        if let Err(object_store::Error::NotFound { .. }) = out {
            out = Ok(Vec::new());
        }
        let mut v = out.map_err(|e| os_err(&self.location, "list", prefix, e))?;
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// The immediate "sub-directories" (common prefixes) below `prefix`, names only, sorted.
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = Self::path(prefix);
        let res = self.rt.block_on(self.store.list_with_delimiter(Some(&path)));
        let res = match res {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(os_err(&self.location, "list", prefix, e)),
        };
        let mut v: Vec<String> = res.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        v.sort();
        Ok(v)
    }

    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = Self::path(key);
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(&self.location, "delete", key, e)),
        }
    }

    /// Delete `key` and return only once the deletion is durable, for deletions that must be
    /// on disk before the next step (expire: the manifest before its snapshots). object_store's
    /// local delete does not sync the directory, so local repositories fsync it here (or the
    /// nearest parent left, when emptied directories were cleaned up); object stores
    /// acknowledge a DELETE only once it is done.
    pub fn delete_durable(&self, key: &str) -> Result<(), StorageError> {
        self.delete(key)?;
        let Some(local) = &self.local else { return Ok(()) };
        let mut dir = local.root.join(key);
        while dir.pop() && dir.starts_with(&local.root) {
            if dir.is_dir() {
                return fsutil::fsync_dir(&dir).map_err(|e| io_err(&self.location, "sync the deletion of", key, &e));
            }
        }
        Ok(())
    }

    /// Delete every object below `prefix`.
    pub fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        for o in self.list(prefix)? {
            self.delete(&o.key)?;
        }
        if let Some(local) = &self.local {
            // Staging files (`name#N`) of killed writers are invisible to list(); remove the
            // directory tree so nothing is left behind.
            let dir = local.root.join(prefix);
            if dir.is_dir() {
                fs::remove_dir_all(&dir).map_err(|e| io_err(&self.location, "delete", prefix, &e))?;
                if let Some(parent) = dir.parent() {
                    let _ = fsutil::fsync_dir(parent);
                }
            }
        }
        Ok(())
    }
}

/// Streaming writer. Local repositories write a staging file beside the object and rename it
/// into place durably at `finish` (the same contract object_store's local backend keeps, without
/// a buffer copy and a thread hop per part); other backends upload parts as they fill, and
/// small objects go out in a single PUT.
pub struct ObjectWriter {
    storage: Storage,
    key: String,
    sink: Sink,
    written: u64,
    done: bool,
}

enum Sink {
    File { file: io::BufWriter<std::fs::File>, staging: PathBuf, dest: PathBuf },
    Parts { buf: Vec<u8>, upload: Option<Box<dyn MultipartUpload>> },
}

/// A new staging file `<dest>#<digits>`: object_store's naming, so listings never show it.
fn create_staging(dest: &Path) -> io::Result<(std::fs::File, PathBuf)> {
    let mut n = std::process::id() as u64 * 1000;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&staging) {
            Ok(f) => return Ok((f, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    }
}

impl ObjectWriter {
    fn flush_part(&mut self) -> io::Result<()> {
        let Sink::Parts { buf, upload } = &mut self.sink else { return Ok(()) };
        if buf.is_empty() {
            return Ok(());
        }
        let st = &self.storage;
        if upload.is_none() {
            let path = Storage::path(&self.key);
            let up = st
                .rt
                .block_on(st.store.put_multipart(&path))
                .map_err(|e| io::Error::other(os_err(&st.location, "write", &self.key, e)))?;
            *upload = Some(up);
        }
        let data = std::mem::replace(buf, Vec::with_capacity(PART_SIZE));
        let fut = upload.as_mut().expect("upload was just created").put_part(PutPayload::from(data));
        st.rt.block_on(fut).map_err(|e| io::Error::other(os_err(&st.location, "write", &self.key, e)))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Complete the object durably; returns its size.
    pub fn finish(mut self) -> Result<u64, StorageError> {
        let st = self.storage.clone();
        let key = self.key.clone();
        let ioe = |e: io::Error| io_err(&st.location, "write", &key, &e);
        match &mut self.sink {
            Sink::File { file, staging, dest } => {
                file.flush().map_err(ioe)?;
                file.get_ref().sync_all().map_err(ioe)?;
                std::fs::rename(&*staging, &*dest).map_err(ioe)?;
                if let Some(parent) = dest.parent() {
                    fsutil::fsync_dir(parent).map_err(ioe)?;
                }
                self.done = true;
                st.finish_owner(&key)?;
            }
            Sink::Parts { upload: None, buf } => {
                let data = std::mem::take(buf);
                self.done = true;
                st.put(&key, Bytes::from(data))?;
            }
            Sink::Parts { upload: Some(_), .. } => {
                self.flush_part().map_err(ioe)?;
                let Sink::Parts { upload, .. } = &mut self.sink else { unreachable!("matched above") };
                let mut up = upload.take().expect("upload present");
                self.done = true;
                st.rt.block_on(up.complete()).map_err(|e| os_err(&st.location, "write", &key, e))?;
                st.finish_owner(&key)?;
            }
        }
        Ok(self.written)
    }
}

impl io::Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::File { file, .. } => file.write_all(data)?,
            Sink::Parts { buf, .. } => {
                buf.extend_from_slice(data);
                if buf.len() >= PART_SIZE {
                    self.flush_part()?;
                }
            }
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &mut self.sink {
            Sink::File { staging, .. } => {
                let _ = std::fs::remove_file(&*staging);
            }
            Sink::Parts { upload, .. } => {
                if let Some(mut up) = upload.take() {
                    let _ = self.storage.rt.block_on(up.abort());
                }
            }
        }
    }
}

struct StreamReader {
    rt: Handle,
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

fn hint_for(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::PermissionDenied => {
            "the repository must be readable and writable by the user running pgkeep (archive_command runs as the PostgreSQL server's OS user)"
        }
        io::ErrorKind::StorageFull => "the repository's file system is full; free space or expire old backups",
        _ => "check the repository's file system and permissions",
    }
}

fn io_err(location: &str, op: &'static str, key: &str, e: &io::Error) -> StorageError {
    StorageError::Io {
        location: location.to_string(),
        op,
        key: key.to_string(),
        detail: e.to_string(),
        hint: hint_for(e.kind()).to_string(),
    }
}

fn os_err(location: &str, op: &'static str, key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => {
            StorageError::NotFound { location: location.to_string(), key: key.to_string() }
        }
        object_store::Error::AlreadyExists { .. } => {
            StorageError::AlreadyExists { location: location.to_string(), key: key.to_string() }
        }
        other => {
            let kind = io_kind_of(&other);
            StorageError::Io {
                location: location.to_string(),
                op,
                key: key.to_string(),
                detail: one_line(&other),
                hint: hint_for(kind).to_string(),
            }
        }
    }
}

fn io_kind_of(e: &(dyn std::error::Error + 'static)) -> io::ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ioe) = err.downcast_ref::<io::Error>() {
            return ioe.kind();
        }
        cur = err.source();
    }
    io::ErrorKind::Other
}

/// object_store errors nest their causes; keep the innermost cause on one line.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg = format!("{msg}: {m}");
        }
        cur = s.source();
    }
    msg.replace('\n', " ")
}
