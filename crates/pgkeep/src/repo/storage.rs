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
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use tokio::runtime::Handle;

use super::azure::{AzureLocation, AzureSettings};
use super::gcs::{GcsLocation, GcsSettings};
use super::multipart::{MultipartTarget, Upload};
use super::part_pool::PartBuf;
use super::remote::Remote;
use super::s3::{S3Location, S3Settings};
use crate::fsutil;

/// Where a repository lives, as the operator wrote it (`/path`, `s3://bucket/prefix`,
/// `az://container/prefix`, `gs://bucket/prefix`). The one place that picks a backend from
/// the URL (with [`Storage::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    Local(PathBuf),
    S3(Box<S3Location>),
    Azure(Box<AzureLocation>),
    Gcs(Box<GcsLocation>),
}

/// The config file's object-store tables (`[s3]`, `[azure]`, `[gcs]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreSettings<'a> {
    pub s3: Option<&'a S3Settings>,
    pub azure: Option<&'a AzureSettings>,
    pub gcs: Option<&'a GcsSettings>,
}

impl RepoLocation {
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        Self::parse_with(s, StoreSettings::default(), None)
    }

    /// Parse with the config file's object-store tables (`config_file`: where they came from).
    pub fn parse_with(s: &str, settings: StoreSettings, config_file: Option<&Path>) -> Result<Self, StorageError> {
        if let Some(rest) = s.strip_prefix("file://") {
            return Ok(RepoLocation::Local(PathBuf::from(rest)));
        }
        let unsupported = |hint: String| StorageError::Unsupported { location: s.to_string(), hint };
        let config_file = config_file.map(fsutil::absolute);
        if s.starts_with("s3://") {
            let mut loc = S3Location::parse(s).map_err(unsupported)?;
            loc.settings = settings.s3.cloned().unwrap_or_default();
            loc.config_file = config_file;
            return Ok(RepoLocation::S3(Box::new(loc)));
        }
        if s.starts_with("az://") {
            let mut loc = AzureLocation::parse(s).map_err(unsupported)?;
            loc.settings = settings.azure.cloned().unwrap_or_default();
            loc.config_file = config_file;
            return Ok(RepoLocation::Azure(Box::new(loc)));
        }
        if s.starts_with("gs://") {
            let mut loc = GcsLocation::parse(s).map_err(unsupported)?;
            loc.settings = settings.gcs.cloned().unwrap_or_default();
            loc.config_file = config_file;
            return Ok(RepoLocation::Gcs(Box::new(loc)));
        }
        if s.contains("://") {
            return Err(unsupported(
                "use a local path, s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX".into(),
            ));
        }
        if s.is_empty() {
            return Err(StorageError::Unsupported {
                location: s.to_string(),
                hint: "the repository location is empty; set --repo or PGKEEP_REPO".into(),
            });
        }
        Ok(RepoLocation::Local(fsutil::absolute(Path::new(s))))
    }

    /// `--repo "…"` (and, for an object store configured in a file, `--config "…"`): what a
    /// pgkeep run elsewhere (restore_command) needs to reach this repository.
    pub fn command_args(&self) -> String {
        let config_file = match self {
            RepoLocation::Local(_) => None,
            RepoLocation::S3(l) => l.config_file.as_ref(),
            RepoLocation::Azure(l) => l.config_file.as_ref(),
            RepoLocation::Gcs(l) => l.config_file.as_ref(),
        };
        match config_file {
            Some(f) => format!("--config \"{}\" --repo \"{self}\"", f.display()),
            None => format!("--repo \"{self}\""),
        }
    }
}

impl std::fmt::Display for RepoLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoLocation::Local(p) => write!(f, "{}", p.display()),
            RepoLocation::S3(l) => write!(f, "{l}"),
            RepoLocation::Azure(l) => write!(f, "{l}"),
            RepoLocation::Gcs(l) => write!(f, "{l}"),
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
    #[error("repository {location}: {detail}; hint: {hint}")]
    Config { location: String, detail: String, hint: String },
    #[error("repository location '{location}' is not supported; hint: {hint}")]
    Unsupported { location: String, hint: String },
    /// A sealed object (encrypted repository, repo/objects.rs) that does not authenticate;
    /// `detail` names the object.
    #[error(
        "repository {location}: {detail}; hint: the stored copy cannot be trusted, use another backup or archive copy"
    )]
    Sealed { location: String, key: String, detail: String },
    #[error("repository {location} does not enforce conditional create: a second create-if-absent (If-None-Match: *) of '{key}' replaced the object; pgkeep refuses a store that could overwrite archived WAL; hint: use a store or version that honours If-None-Match on PUT (AWS S3, MinIO, Ceph RGW 18+)")]
    NoConditionalCreate { location: String, key: String },
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
    remote: Option<Arc<dyn Remote>>,
}

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
                    remote: None,
                })
            }
            #[cfg(feature = "s3")]
            RepoLocation::S3(l) => {
                // Nothing to create: the bucket is the operator's, and a prefix is only a name.
                let _ = create;
                let (store, remote) = super::s3::open(l, &rt)?;
                Ok(Storage { store, rt, location: l.to_string(), local: None, remote: Some(Arc::new(remote)) })
            }
            #[cfg(feature = "azure")]
            RepoLocation::Azure(l) => {
                let (store, remote) = super::azure::open(l)?;
                Ok(Storage { store, rt, location: l.to_string(), local: None, remote: Some(remote) })
            }
            #[cfg(feature = "gcs")]
            RepoLocation::Gcs(l) => {
                let (store, remote) = super::gcs::open(l)?;
                Ok(Storage { store, rt, location: l.to_string(), local: None, remote: Some(remote) })
            }
            #[allow(unreachable_patterns)]
            other => {
                let (what, feature) = match other {
                    RepoLocation::Azure(_) => ("Azure Blob", "azure"),
                    RepoLocation::Gcs(_) => ("Google Cloud Storage", "gcs"),
                    _ => ("S3", "s3"),
                };
                Err(StorageError::Unsupported {
                    location: other.to_string(),
                    hint: format!(
                        "this pgkeep was built without {what} support; build it with the cargo feature `{feature}`"
                    ),
                })
            }
        }
    }

    /// Which credential source an object store's requests are signed with (never a secret),
    /// or why none resolved with what to do about it; None for local repositories.
    pub fn credential_source(&self) -> Option<Result<String, (String, &'static str)>> {
        let r = self.remote.as_ref()?;
        Some(r.credential_source(&self.rt).map_err(|e| (e, r.credential_hint())))
    }

    /// Attributes every new object gets (the configured storage class).
    fn attributes(&self) -> object_store::Attributes {
        self.remote.as_ref().map(|r| r.attributes()).unwrap_or_default()
    }

    /// The multipart side of an object store; None for local repositories.
    pub(crate) fn multipart(&self) -> Option<&MultipartTarget> {
        self.remote.as_ref().map(|r| r.multipart())
    }

    /// How many threads may write objects at once (each may keep one writer's partly filled
    /// part while it writes another object, see repo/part_pool.rs); None: no limit (local).
    pub fn writer_threads_limit(&self) -> Option<usize> {
        self.multipart().map(|_| super::part_pool::MAX_WRITER_THREADS)
    }

    /// Run a request again after a dropped connection or a timeout, within the store's retry
    /// limits (`max_retries`, `retry_timeout` of `[s3]`, `[azure]`, `[gcs]`). object_store retries 5xx and throttling for every request but a broken
    /// connection only for idempotent ones; the requests wrapped here are not (conditional PUT,
    /// POST, DELETE) yet safe to repeat, each caller handling "it had landed after all".
    /// Returns the result and whether it was retried.
    pub(crate) fn retry_interrupted<T, F, Fut>(&self, mut op: F) -> (object_store::Result<T>, bool)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let res = self.rt.block_on(op());
            let pause = res.as_ref().err().and_then(|e| self.retry_pause(e, attempt, started.elapsed()));
            match (pause, &res) {
                (Some(pause), Err(e)) => {
                    tracing::info!("retrying after an interrupted request ({attempt}): {}", one_line(e));
                    std::thread::sleep(pause);
                    attempt += 1;
                }
                _ => return (res, attempt > 0),
            }
        }
    }

    /// The pause before repeating a request that failed with `e`; None: do not repeat it.
    fn retry_pause(
        &self,
        e: &object_store::Error,
        attempt: usize,
        elapsed: std::time::Duration,
    ) -> Option<std::time::Duration> {
        self.remote.as_ref().and_then(|r| r.retry_after(e, attempt, elapsed))
    }

    pub(crate) fn remote_err(&self, op: &'static str, key: &str, e: object_store::Error) -> StorageError {
        os_err(&self.location, op, key, e)
    }

    /// Abort the multipart uploads that killed writers of other runs left unfinished (their
    /// records, see repo/multipart.rs) and delete the records; how many. Call only while
    /// holding the backup lock. Local repositories have none.
    pub fn abort_stale_uploads(&self) -> Result<usize, StorageError> {
        super::multipart::abort_stale(self)
    }

    /// Prove that `put_new` is a real create-if-absent on this store: create a probe object,
    /// create it again (which must be refused), delete it. Local repositories link into place,
    /// which the kernel makes exclusive, so only object stores are probed.
    pub fn probe_conditional_create(&self) -> Result<(), StorageError> {
        if self.local.is_some() {
            return Ok(());
        }
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let key = format!("probe/create-{}-{nanos}", std::process::id());
        let first = self.put_new(&key, Bytes::from_static(b"pgkeep conditional-create probe 1"));
        let second = first.as_ref().ok().map(|_| self.put_new(&key, Bytes::from_static(b"pgkeep probe 2")));
        let deleted = self.delete(&key);
        match (first?, second) {
            (PutOutcome::Created, Some(Ok(PutOutcome::AlreadyExists))) => deleted,
            (PutOutcome::Created, Some(Ok(PutOutcome::Created))) => {
                Err(StorageError::NoConditionalCreate { location: self.location.clone(), key })
            }
            (PutOutcome::Created, Some(Err(e))) => Err(e),
            // Nobody else writes this key: an existing object is a store that lies.
            _ => Err(StorageError::NoConditionalCreate { location: self.location.clone(), key }),
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
        self.put_parts(key, vec![data])
    }

    /// Like [`Storage::put`] for an object given in parts.
    pub fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), StorageError> {
        self.prepare_parent(key)?;
        if let Some(local) = &self.local {
            self.put_local(local, key, &parts, false)?;
            return self.finish_owner(key);
        }
        let path = Self::path(key);
        let payload: PutPayload = parts.into_iter().collect();
        let opts = PutOptions { attributes: self.attributes(), ..Default::default() };
        self.rt
            .block_on(self.store.put_opts(&path, payload, opts))
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
        if let Some(local) = &self.local {
            let outcome = self.put_local(local, key, &parts, true)?;
            if outcome == PutOutcome::Created {
                self.finish_owner(key)?;
            }
            return Ok(outcome);
        }
        let path = Self::path(key);
        let opts = PutOptions { mode: PutMode::Create, attributes: self.attributes(), ..Default::default() };
        let payload: PutPayload = parts.iter().cloned().collect();
        match self.retry_interrupted(|| self.store.put_opts(&path, payload.clone(), opts.clone())) {
            (Ok(_), _) => {
                self.finish_owner(key)?;
                Ok(PutOutcome::Created)
            }
            // The interrupted attempt may have landed: then the object holds exactly our bytes.
            (Err(object_store::Error::AlreadyExists { .. }), true) if self.holds(key, &parts)? => {
                Ok(PutOutcome::Created)
            }
            (Err(object_store::Error::AlreadyExists { .. }), _) => Ok(PutOutcome::AlreadyExists),
            (Err(e), _) => Err(os_err(&self.location, "write", key, e)),
        }
    }

    /// Whether the stored object `key` is exactly `parts` concatenated.
    fn holds(&self, key: &str, parts: &[Bytes]) -> Result<bool, StorageError> {
        let stored = self.get(key)?;
        let mut rest = &stored[..];
        for p in parts {
            let Some(tail) = rest.strip_prefix(&p[..]) else { return Ok(false) };
            rest = tail;
        }
        Ok(rest.is_empty())
    }

    /// A local put through a locked staging file (see [`create_staging`]): write, fsync, then
    /// link (`create`: never replaces) or rename into place, fsync the directory.
    fn put_local(
        &self,
        local: &LocalExtras,
        key: &str,
        parts: &[Bytes],
        create: bool,
    ) -> Result<PutOutcome, StorageError> {
        let dest = local.root.join(key);
        let ioe = |e: io::Error| io_err(&self.location, "write", key, &e);
        // `file` holds the staging lock until it is dropped at the end of this function.
        let (mut file, staging) = create_staging(&dest).map_err(ioe)?;
        let mut renamed = false;
        let res = (|| -> io::Result<PutOutcome> {
            for p in parts {
                file.write_all(p)?;
            }
            file.sync_all()?;
            if !create {
                fs::rename(&staging, &dest)?;
                renamed = true;
                return Ok(PutOutcome::Created);
            }
            match fs::hard_link(&staging, &dest) {
                Ok(()) => Ok(PutOutcome::Created),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(e),
            }
        })();
        if !renamed {
            // Still ours (we hold its lock): no other writer can have taken the name.
            let _ = fs::remove_file(&staging);
        }
        let outcome = res.map_err(ioe)?;
        if outcome == PutOutcome::Created {
            if let Some(parent) = dest.parent() {
                fsutil::fsync_dir(parent).map_err(ioe)?;
            }
        }
        Ok(outcome)
    }

    /// Make an existing object durable before acknowledging it: fsync its file and every
    /// directory from its own up to the repository root. The writer that stored it may still be
    /// between its link and its directory fsync (or have created a parent directory another
    /// writer saw first), and a crash must not take back what a caller was told is stored.
    /// Other backends: a completed PUT is durable already.
    pub fn sync_object(&self, key: &str) -> Result<(), StorageError> {
        let Some(local) = &self.local else { return Ok(()) };
        let path = local.root.join(key);
        let ioe = |e: io::Error| io_err(&self.location, "sync", key, &e);
        fs::File::open(&path).and_then(|f| f.sync_all()).map_err(ioe)?;
        let mut dir = path.parent();
        while let Some(d) = dir {
            fsutil::fsync_dir(d).map_err(ioe)?;
            if d == local.root {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Remove the staging files `<key>#<digits>` that killed writers of `key` left behind;
    /// returns how many. A live writer's staging file is never removed: every pgkeep writer
    /// holds an exclusive `flock` on its staging file from creation until it is renamed or
    /// unlinked, so a file that can be locked has no writer. (A writer that does not lock, such
    /// as an older pgkeep, may lose its staging file: its put then fails and is retried.)
    /// Objects themselves are never touched. Other backends have no staging files.
    pub fn remove_stale_staging(&self, key: &str) -> Result<usize, StorageError> {
        let Some(local) = &self.local else { return Ok(0) };
        let path = local.root.join(key);
        let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Ok(0);
        };
        self.remove_staging_in(dir, Some(base), false)
    }

    /// [`Storage::remove_stale_staging`] for every key below `prefix` (recursive): the
    /// repository-wide clean-up, e.g. `remove_stale_staging_under(layout::WAL_PREFIX)`.
    pub fn remove_stale_staging_under(&self, prefix: &str) -> Result<usize, StorageError> {
        let Some(local) = &self.local else { return Ok(0) };
        self.remove_staging_in(&local.root.join(prefix), None, true)
    }

    fn remove_staging_in(&self, dir: &Path, base: Option<&str>, recurse: bool) -> Result<usize, StorageError> {
        let shown = dir.strip_prefix(self.local_root().unwrap_or(Path::new(""))).unwrap_or(dir);
        let ioe = |e: io::Error| io_err(&self.location, "remove staging files in", &shown.display().to_string(), &e);
        let entries = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ioe(e)),
        };
        let mut removed = 0;
        let mut here = 0;
        for entry in entries {
            let entry = entry.map_err(ioe)?;
            let path = entry.path();
            if entry.file_type().map_err(ioe)?.is_dir() {
                if recurse {
                    removed += self.remove_staging_in(&path, None, true)?;
                }
                continue;
            }
            let name = entry.file_name();
            let Some((object, n)) = name.to_str().and_then(|n| n.rsplit_once('#')) else { continue };
            let staging = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            if staging && base.is_none_or(|b| b == object) && remove_if_unlocked(&path).map_err(ioe)? {
                here += 1;
            }
        }
        if here > 0 {
            fsutil::fsync_dir(dir).map_err(ioe)?;
        }
        Ok(removed + here)
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
            None => Sink::Parts { buf: None, upload: None },
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

    /// `get` for a caller that only reads the bytes: on a local repository the object file is
    /// mapped read-only instead of read, so its page-cache pages are used in place rather than
    /// copied into fresh memory that faults in page by page. Objects are only ever replaced by
    /// rename and removed by unlink, which leave a mapping intact. Anything the mapping cannot
    /// serve (no such file, not a regular file, a file system without mmap) takes `get`,
    /// which reports it as it always does.
    pub fn get_mapped(&self, key: &str) -> Result<Bytes, StorageError> {
        if let Some(local) = &self.local {
            let mapped =
                std::fs::File::open(local.root.join(key)).ok().filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
            // SAFETY: read-only, of a file pgkeep never writes in place (see above).
            if let Some(map) = mapped.and_then(|f| unsafe { memmap2::MmapOptions::new().populate().map(&f) }.ok()) {
                return Ok(Bytes::from_owner(map));
            }
        }
        self.get(key)
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
        match self.retry_interrupted(|| self.store.delete(&path)).0 {
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

/// One stored state of an object: its ETag and, where the store has one, its version. GCS
/// replaces conditionally on the generation (object_store's `version`), S3 and Azure on the
/// ETag, so both travel together.
#[derive(Debug, Clone)]
pub struct ObjectVersion(object_store::UpdateVersion);

impl ObjectVersion {
    fn new(e_tag: Option<String>, version: Option<String>) -> ObjectVersion {
        ObjectVersion(object_store::UpdateVersion { e_tag, version })
    }
}

/// The same state: same ETag where both have one, else the same version.
impl PartialEq for ObjectVersion {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0.e_tag, &other.0.e_tag) {
            (Some(a), Some(b)) => a == b,
            _ => self.0.version == other.0.version,
        }
    }
}

/// Versioned writes for objects that coordinate processes (lease locks): every call returns
/// the object's new version, and a replace happens only if the stored object is still the
/// given version (If-Match). Object stores only: local repositories use `flock`.
impl Storage {
    /// Create `key` if absent; its version, or None when an object exists.
    pub fn create_versioned(&self, key: &str, data: Bytes) -> Result<Option<ObjectVersion>, StorageError> {
        self.put_versioned(key, data, PutMode::Create)
    }

    /// Replace `key` only if it is still `version`; the new version, or None when it changed
    /// or is gone.
    pub fn replace_versioned(
        &self,
        key: &str,
        data: Bytes,
        version: &ObjectVersion,
    ) -> Result<Option<ObjectVersion>, StorageError> {
        self.put_versioned(key, data, PutMode::Update(version.0.clone()))
    }

    /// A conditional PUT; the new version, or None when the condition did not hold.
    fn put_versioned(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Option<ObjectVersion>, StorageError> {
        let opts = PutOptions { mode, ..Default::default() };
        let path = Self::path(key);
        let payload = PutPayload::from(data.clone());
        match self.retry_interrupted(|| self.store.put_opts(&path, payload.clone(), opts.clone())) {
            (Ok(r), _) => Ok(Some(ObjectVersion::new(r.e_tag, r.version))),
            (
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotFound { .. },
                ),
                retried,
            ) => self.ours_after_retry(key, &data, retried),
            (Err(e), _) => Err(os_err(&self.location, "write", key, e)),
        }
    }

    /// A conditional write refused after a retry: when the interrupted attempt had landed, the
    /// object holds our bytes and its version is ours. (Lease objects carry the holder's pid
    /// and a timestamp, so equal bytes are never another process's.)
    fn ours_after_retry(&self, key: &str, data: &Bytes, retried: bool) -> Result<Option<ObjectVersion>, StorageError> {
        if !retried {
            return Ok(None);
        }
        Ok(self.get_versioned(key)?.and_then(|(stored, v)| (stored == *data).then_some(v)))
    }

    /// The object and its version, None when absent.
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, StorageError> {
        let res = self.rt.block_on(async {
            let r = self.store.get(&Self::path(key)).await?;
            let version = ObjectVersion::new(r.meta.e_tag.clone(), r.meta.version.clone());
            Ok::<_, object_store::Error>((r.bytes().await?, version))
        });
        match res {
            Ok(v) => Ok(Some(v)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(&self.location, "read", key, e)),
        }
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
    File {
        file: io::BufWriter<std::fs::File>,
        staging: PathBuf,
        dest: PathBuf,
    },
    /// `buf`: the part being filled, a buffer of the process-wide pool (repo/part_pool.rs),
    /// taken at the first byte after the previous part went out.
    Parts {
        buf: Option<PartBuf>,
        upload: Option<Box<Upload>>,
    },
}

/// A new staging file `<dest>#<digits>` (object_store's naming, so listings never show it),
/// exclusively locked for as long as the returned file is open: the lock is how clean-up tells a
/// live writer's staging file from a killed one's ([`Storage::remove_stale_staging`]).
fn create_staging(dest: &Path) -> io::Result<(std::fs::File, PathBuf)> {
    let mut n = std::process::id() as u64 * 1000;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&staging) {
            Ok(f) => {
                f.lock()?;
                // A clean-up may have locked and removed the new file before we locked it.
                if is_same_file(&f, &staging)? {
                    return Ok((f, staging));
                }
                n += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `path` still names the open file `f`.
fn is_same_file(f: &std::fs::File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = f.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == open.dev() && m.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove a staging file no writer holds (see [`create_staging`]); false when it is locked or
/// already gone. The lock is held across the check and the unlink, and the name is re-checked
/// under it, so the file removed is the one found unlocked.
fn remove_if_unlocked(path: &Path) -> io::Result<bool> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    if !is_same_file(&f, path)? {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl ObjectWriter {
    fn flush_part(&mut self) -> io::Result<()> {
        let Sink::Parts { buf, upload } = &mut self.sink else { return Ok(()) };
        let Some(data) = buf.take().filter(|b| !b.is_empty()) else { return Ok(()) };
        let st = &self.storage;
        if upload.is_none() {
            *upload = Some(Box::new(Upload::begin(st, &self.key, st.attributes()).map_err(io::Error::other)?));
        }
        upload.as_mut().expect("upload was just created").put_part(data.into_bytes()).map_err(io::Error::other)
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
                let data = buf.take().map(PartBuf::into_bytes).unwrap_or_default();
                self.done = true;
                st.put(&key, data)?;
            }
            Sink::Parts { upload: Some(_), .. } => {
                self.flush_part().map_err(ioe)?;
                let Sink::Parts { upload, .. } = &mut self.sink else { unreachable!("matched above") };
                let up = upload.take().expect("upload present");
                self.done = true;
                up.complete(self.written)?;
            }
        }
        Ok(self.written)
    }
}

impl io::Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::File { file, .. } => file.write_all(data)?,
            Sink::Parts { .. } => {
                let mut rest = data;
                while let Sink::Parts { buf, .. } = &mut self.sink {
                    if rest.is_empty() {
                        break;
                    }
                    let pool = self.storage.multipart().expect("parts only on object stores").pool();
                    let part = buf.get_or_insert_with(|| pool.take());
                    rest = &rest[part.fill(rest)..];
                    if part.is_full() {
                        self.flush_part()?;
                    }
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
            // Dropping an unfinished upload aborts it (repo/multipart.rs).
            Sink::Parts { upload, .. } => drop(upload.take()),
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

const REMOTE_HINT: &str =
    "check that the object store is reachable (the [s3] endpoint, the network) and that the bucket exists; requests were retried";
const TLS_TRUST_HINT: &str = "the store's TLS certificate is not trusted here: if a private CA signed it, name that CA's PEM file in the config ([s3] ca_file); otherwise check the endpoint's host name";
const REMOTE_AUTH_HINT: &str = "give this OS user AWS credentials (an instance role, AWS_PROFILE with ~/.aws/credentials, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) whose policy allows s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket; `pgkeep check` names the credential source";

/// (unreachable, refused) hints of the object store at `location`.
fn remote_hints(location: &str) -> (&'static str, &'static str) {
    if location.starts_with("az://") {
        (super::azure::REACH_HINT, super::azure::AUTH_HINT)
    } else if location.starts_with("gs://") {
        (super::gcs::REACH_HINT, super::gcs::AUTH_HINT)
    } else {
        (REMOTE_HINT, REMOTE_AUTH_HINT)
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
            let detail = one_line(&other);
            let hint = match &other {
                object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => {
                    remote_hints(location).1
                }
                // rustls's words for a server certificate this host does not trust.
                object_store::Error::Generic { .. } if detail.contains("invalid peer certificate") => TLS_TRUST_HINT,
                object_store::Error::Generic { store, .. } if *store != "LocalFileSystem" => remote_hints(location).0,
                _ => hint_for(io_kind_of(&other)),
            };
            StorageError::Io {
                location: location.to_string(),
                op,
                key: key.to_string(),
                detail,
                hint: hint.to_string(),
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
pub(crate) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn s3_locations_carry_their_settings_and_config_file() {
        let s3 = S3Settings { region: Some("eu-west-1".into()), ..Default::default() };
        let settings = StoreSettings { s3: Some(&s3), ..Default::default() };
        let l = RepoLocation::parse_with("s3://b-1/x/y/", settings, Some(Path::new("/etc/p.toml"))).unwrap();
        assert_eq!(l.to_string(), "s3://b-1/x/y");
        assert_eq!(l.command_args(), "--config \"/etc/p.toml\" --repo \"s3://b-1/x/y\"");
        let RepoLocation::S3(inner) = &l else { panic!("not s3: {l:?}") };
        assert_eq!(inner.settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(RepoLocation::parse("/r").unwrap().command_args(), "--repo \"/r\"");
        assert!(RepoLocation::parse("gcs://bucket/x").is_err());
        let az = AzureSettings { account: Some("acct".into()), ..Default::default() };
        let settings = StoreSettings { azure: Some(&az), ..Default::default() };
        let l = RepoLocation::parse_with("az://box/p", settings, Some(Path::new("/etc/p.toml"))).unwrap();
        assert_eq!(l.command_args(), "--config \"/etc/p.toml\" --repo \"az://box/p\"");
        let RepoLocation::Azure(inner) = &l else { panic!("not azure: {l:?}") };
        assert_eq!(inner.settings.account.as_deref(), Some("acct"));
        let l = RepoLocation::parse("gs://bucket/x").unwrap();
        assert!(matches!(&l, RepoLocation::Gcs(g) if g.bucket == "bucket" && g.prefix == "x"), "{l:?}");
        assert!(RepoLocation::parse("s3://B/x").is_err());
    }

    #[test]
    fn local_puts_leave_no_staging_files_and_create_never_replaces() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let st = Storage::open(&RepoLocation::Local(dir.path().to_path_buf()), rt.handle().clone(), false).unwrap();
        let parts = |s: &'static str| vec![Bytes::from_static(s.as_bytes())];
        assert_eq!(st.put_new_parts("a/k", parts("one")).unwrap(), PutOutcome::Created);
        assert_eq!(st.put_new_parts("a/k", parts("two")).unwrap(), PutOutcome::AlreadyExists);
        assert_eq!(st.get("a/k").unwrap(), "one");
        st.put_parts("a/k", parts("three")).unwrap();
        assert_eq!(st.get("a/k").unwrap(), "three");
        assert_eq!(names(&dir.path().join("a")), ["k"]);
    }

    #[test]
    fn a_mapped_get_reads_what_get_reads_and_fails_as_get_fails() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let st = Storage::open(&RepoLocation::Local(dir.path().to_path_buf()), rt.handle().clone(), false).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        st.put_new("w/big", Bytes::from(big.clone())).unwrap();
        st.put_new("w/empty", Bytes::new()).unwrap();
        assert_eq!(st.get_mapped("w/big").unwrap(), big);
        assert_eq!(st.get_mapped("w/empty").unwrap(), "");
        // The mapping stays valid when the object is replaced (rename) or removed (unlink).
        let mapped = st.get_mapped("w/big").unwrap();
        st.put_parts("w/big", vec![Bytes::from_static(b"replaced")]).unwrap();
        st.delete("w/big").unwrap();
        assert_eq!(mapped, big);
        // What a mapping cannot serve is reported as `get` reports it.
        fs::create_dir(dir.path().join("w/dir")).unwrap();
        for key in ["w/missing", "w/dir"] {
            let (mapped, read) = (st.get_mapped(key).unwrap_err(), st.get(key).unwrap_err());
            assert!(mapped.is_not_found() && read.is_not_found(), "{key}: {mapped} / {read}");
            assert_eq!(mapped.to_string(), read.to_string());
        }
    }

    #[test]
    fn stale_staging_files_are_removed_and_locked_ones_kept() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let st = Storage::open(&RepoLocation::Local(dir.path().to_path_buf()), rt.handle().clone(), false).unwrap();
        st.put_new("w/x/k", Bytes::from_static(b"object")).unwrap();
        let d = dir.path().join("w/x");
        for n in ["k#1", "k#2", "k#", "k#1a", "other#3"] {
            fs::write(d.join(n), b"").unwrap();
        }
        let (live, live_path) = create_staging(&d.join("k")).unwrap();
        assert_eq!(st.remove_stale_staging("w/x/k").unwrap(), 2);
        assert!(live_path.exists(), "a locked staging file is a live writer's");
        fs::rename(&live_path, d.join("k#9")).unwrap();
        assert_eq!(names(&d), ["k", "k#", "k#1a", "k#9", "other#3"]);
        assert_eq!(st.remove_stale_staging_under("w").unwrap(), 1, "only other#3; the live one is locked");
        drop(live);
        assert_eq!(st.remove_stale_staging_under("w").unwrap(), 1);
        assert_eq!(names(&d), ["k", "k#", "k#1a"]);
    }
}
