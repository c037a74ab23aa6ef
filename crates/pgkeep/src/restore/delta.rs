//! `pgkeep restore --delta`: bring an existing, stopped data directory of the same cluster (a
//! dev/test copy, a former primary) to a backup's content while writing only what differs.
//!
//! Order, so that an interrupted run leaves a directory PostgreSQL refuses to start and a rerun
//! finishes the job: refusals (running server, foreign cluster, not a data directory) before
//! anything is written; pg_control moved aside; everything the backup does not have removed
//! (pg_wal's old segments among it: a diverged primary's WAL must never be replayed); missing
//! directories and links created; each file left alone when its size and BLAKE3 match the
//! manifest, else compared block by block with the backup's content and only differing blocks
//! rewritten, each changed file and its directory fsynced; backup_label, tablespace_map and the
//! recovery settings as a normal restore writes them; pg_control last.

mod blocks;
mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::materialize::{self, open_entry_content, PG_CONTROL_TEMP};
use super::plan::{RestoreOptions, RestorePlan, RestoreReport};
use super::RestoreError;
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::manifest::{Entry, EntryKind};
use crate::repo::Repository;
use blocks::{hash_file, rewrite_differing_blocks};
use target::check_target;

#[derive(Debug, Clone, Serialize)]
pub struct DeltaReport {
    #[serde(flatten)]
    pub restore: RestoreReport,
    /// Bytes of backup content written into files (differing blocks and new files).
    pub bytes_written: u64,
    /// Files that existed and had blocks rewritten or their length changed.
    pub files_changed: u64,
    /// Files the backup has and the directory lacked.
    pub files_created: u64,
    /// Files, links and directories the backup does not have, removed.
    pub files_removed: u64,
    /// Files whose size and BLAKE3 already matched the backup.
    pub files_unchanged: u64,
}

/// Delta restore into `opts.to`; an absent or empty directory gets a normal restore.
pub fn restore(repo: &Repository, opts: &RestoreOptions, progress: Arc<dyn Progress>) -> crate::Result<DeltaReport> {
    let to = fsutil::absolute(&opts.to);
    if fsutil::is_absent_or_empty(&to).map_err(|e| werr(&to, e))? {
        let r = RestorePlan::build(repo, opts)?.run(repo, progress)?;
        let (written, created) = (r.size, r.files);
        return Ok(DeltaReport {
            restore: r,
            bytes_written: written,
            files_changed: 0,
            files_created: created,
            files_removed: 0,
            files_unchanged: 0,
        });
    }
    let plan = RestorePlan::build_into(repo, opts, false)?;
    check_target(&plan)?;
    Delta::new(&plan)?.run(repo, progress)
}

fn werr(path: &Path, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Write { path: path.display().to_string(), detail: e.to_string() }
}

/// What the directory holds at a path, keyed by manifest path.
#[derive(Debug, Clone)]
enum Found {
    Dir { abs: PathBuf, mode: u32 },
    File { abs: PathBuf },
    Link { abs: PathBuf, target: PathBuf },
    Other { abs: PathBuf },
}

impl Found {
    fn abs(&self) -> &Path {
        match self {
            Found::Dir { abs, .. } | Found::File { abs } | Found::Link { abs, .. } | Found::Other { abs } => abs,
        }
    }
}

struct Delta<'p> {
    plan: &'p RestorePlan,
    /// Owner of the data directory: what root gives everything it creates.
    owner: Option<(u32, u32)>,
}

#[derive(Default)]
struct Counters {
    bytes_written: AtomicU64,
    changed: AtomicU64,
    created: AtomicU64,
    unchanged: AtomicU64,
    removed: AtomicU64,
}

impl<'p> Delta<'p> {
    fn new(plan: &'p RestorePlan) -> Result<Self, RestoreError> {
        let owner = if fsutil::running_as_root() {
            Some(fsutil::owner_of(&plan.map.pgdata).map_err(|e| werr(&plan.map.pgdata, e))?)
        } else {
            None
        };
        Ok(Delta { plan, owner })
    }

    fn chown(&self, p: &Path) -> Result<(), RestoreError> {
        match self.owner {
            Some((u, g)) => fsutil::chown(p, u, g).map_err(|e| werr(p, e)),
            None => Ok(()),
        }
    }

    fn run(&self, repo: &Repository, progress: Arc<dyn Progress>) -> crate::Result<DeltaReport> {
        let began = Instant::now();
        let map = &self.plan.map;
        let global = map.pgdata.join("global");
        // Without pg_control PostgreSQL refuses to start: from here until the new one is
        // published, an interrupted run cannot be started half-rewritten.
        if global.join("pg_control").is_file() {
            fs::rename(global.join("pg_control"), map.pgdata.join(PG_CONTROL_TEMP)).map_err(|e| werr(&global, e))?;
            fsutil::fsync_dir(&global).map_err(|e| werr(&global, e))?;
        }
        let found = self.survey()?;
        let n = Counters::default();
        let mut touched_dirs = BTreeSet::new();
        self.remove_extraneous(&found, &n, &mut touched_dirs)?;
        self.create_structure(&found, &mut touched_dirs)?;
        let m = &self.plan.manifest;
        progress.phase("delta restore", Some(m.size));
        let dirs = self.files(repo, &found, &n, progress.as_ref())?;
        progress.finish_phase();
        touched_dirs.extend(dirs);
        for p in self.plan.write_label_and_recovery(repo)? {
            self.chown(&p)?;
        }
        touched_dirs.insert(map.pgdata.clone());
        for d in &touched_dirs {
            if d.is_dir() {
                fsutil::fsync_dir(d).map_err(|e| werr(d, e))?;
            }
        }
        materialize::publish_pg_control(map)?;
        let files = m.entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64;
        let size = m.entries.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.size).sum();
        Ok(DeltaReport {
            restore: self.plan.report(files, size, began),
            bytes_written: n.bytes_written.into_inner(),
            files_changed: n.changed.into_inner(),
            files_created: n.created.into_inner(),
            files_removed: n.removed.into_inner(),
            files_unchanged: n.unchanged.into_inner(),
        })
    }

    /// Everything in PGDATA and the mapped tablespace directories, by manifest path. Links
    /// are not followed (a tablespace link may point at the old location), except pg_wal,
    /// whose contents are cleared wherever it lives.
    fn survey(&self) -> Result<BTreeMap<String, Found>, RestoreError> {
        let map = &self.plan.map;
        let mut out = BTreeMap::new();
        walk(&map.pgdata, "", &mut out).map_err(|e| werr(&map.pgdata, e))?;
        // A tablespace mapped inside PGDATA is known by its pg_tblspc/<oid> paths only, or its
        // files would be removed as strays under their PGDATA-relative names.
        out.retain(|_, f| !map.tablespaces.values().any(|t| f.abs().starts_with(t)));
        if let Some(Found::Link { target, .. }) = out.get("pg_wal") {
            let wal = map.pgdata.join(target);
            if wal.is_dir() {
                walk(&wal, "pg_wal", &mut out).map_err(|e| werr(&wal, e))?;
            }
        }
        for (oid, dir) in &map.tablespaces {
            if dir.is_dir() {
                walk(dir, &format!("pg_tblspc/{oid}"), &mut out).map_err(|e| werr(dir, e))?;
            }
        }
        // Moved aside by `run`: the existing pg_control is compared under its temporary name.
        if let Some(f) = out.remove(PG_CONTROL_TEMP) {
            out.insert("global/pg_control".into(), f);
        }
        Ok(out)
    }

    /// Whether what is at `rel` can stay (its content may still be rewritten).
    fn keeps(&self, rel: &str, f: &Found, want: &BTreeMap<&str, &Entry>) -> bool {
        let Some(e) = want.get(rel) else { return false };
        match (e.kind, f) {
            (EntryKind::File, Found::File { .. }) | (EntryKind::Dir, Found::Dir { .. }) => true,
            // pg_wal may be a directory or a link to one (a separate WAL volume) either way.
            (_, Found::Dir { .. } | Found::Link { .. }) if rel == "pg_wal" => true,
            (EntryKind::Link, Found::Link { target, .. }) => self.link_target(rel).is_some_and(|t| *target == t),
            _ => false,
        }
    }

    /// Where the tablespace link at `rel` must point.
    fn link_target(&self, rel: &str) -> Option<PathBuf> {
        let oid = rel.strip_prefix("pg_tblspc/")?.parse::<u32>().ok()?;
        self.plan.map.tablespaces.get(&oid).cloned()
    }

    fn remove_extraneous(
        &self,
        found: &BTreeMap<String, Found>,
        n: &Counters,
        touched: &mut BTreeSet<PathBuf>,
    ) -> Result<(), RestoreError> {
        let want: BTreeMap<&str, &Entry> = self.plan.manifest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        // Children sort after their parent: reverse order empties a directory before it goes.
        for (rel, f) in found.iter().rev() {
            if self.keeps(rel, f, &want) || foreign_in_tablespace(rel, &want) {
                continue;
            }
            let abs = f.abs();
            let res = match f {
                Found::Dir { .. } => fs::remove_dir(abs).or_else(|_| fs::remove_dir_all(abs)),
                _ => fs::remove_file(abs),
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(werr(abs, format!("cannot remove it: {e}"))),
            }
            tracing::debug!("{rel}: removed");
            n.removed.fetch_add(1, Ordering::Relaxed);
            if let Some(parent) = abs.parent() {
                touched.insert(parent.to_path_buf());
            }
        }
        Ok(())
    }

    /// Missing directories and tablespace links created, directory modes set.
    fn create_structure(
        &self,
        found: &BTreeMap<String, Found>,
        touched: &mut BTreeSet<PathBuf>,
    ) -> Result<(), RestoreError> {
        let map = &self.plan.map;
        fsutil::set_mode(&map.pgdata, 0o700).map_err(|e| werr(&map.pgdata, e))?;
        for dir in map.tablespaces.values() {
            self.mkdir(dir, 0o700, touched)?;
        }
        let mut entries: Vec<&Entry> = self.plan.manifest.entries.iter().collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        for e in entries {
            let still = found.get(&e.path).filter(|f| f.abs().symlink_metadata().is_ok());
            match e.kind {
                EntryKind::File => {}
                EntryKind::Dir => {
                    let mode = (e.mode & 0o777) | 0o700;
                    match still {
                        Some(Found::Dir { abs, mode: have }) if *have & 0o777 != mode => {
                            fsutil::set_mode(abs, mode).map_err(|x| werr(abs, x))?;
                        }
                        Some(Found::Dir { .. } | Found::Link { .. }) => {}
                        _ => self.mkdir(&map.dest(&e.path), mode, touched)?,
                    }
                }
                EntryKind::Link if still.is_some() => {}
                EntryKind::Link => {
                    let link = map.pgdata.join(&e.path);
                    match self.link_target(&e.path) {
                        Some(target) => {
                            std::os::unix::fs::symlink(&target, &link).map_err(|x| werr(&link, x))?;
                            self.chown(&link)?;
                            if let Some(parent) = link.parent() {
                                touched.insert(parent.to_path_buf());
                            }
                        }
                        // pg_wal: a directory, as a normal restore makes it.
                        None => self.mkdir(&link, 0o700, touched)?,
                    }
                }
            }
        }
        Ok(())
    }

    fn mkdir(&self, dir: &Path, mode: u32, touched: &mut BTreeSet<PathBuf>) -> Result<(), RestoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if !parent.is_dir() {
                self.mkdir(parent, 0o700, touched)?;
            }
            touched.insert(parent.to_path_buf());
        }
        fs::DirBuilder::new().mode(mode).create(dir).map_err(|e| werr(dir, e))?;
        fsutil::set_mode(dir, mode).map_err(|e| werr(dir, e))?;
        self.chown(dir)
    }

    /// Every file of the backup, `jobs` at a time, largest first; returns the directories
    /// whose entries changed.
    fn files(
        &self,
        repo: &Repository,
        found: &BTreeMap<String, Found>,
        n: &Counters,
        progress: &dyn Progress,
    ) -> Result<BTreeSet<PathBuf>, RestoreError> {
        let mut work: Vec<&Entry> = self.plan.manifest.entries.iter().filter(|e| e.kind == EntryKind::File).collect();
        work.sort_by_key(|e| std::cmp::Reverse(e.size));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<RestoreError>> = Mutex::new(None);
        let dirs: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
        std::thread::scope(|s| {
            for _ in 0..self.plan.jobs.clamp(1, work.len().max(1)) {
                s.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(e) = work.get(i) else { break };
                        let exists = matches!(found.get(&e.path), Some(Found::File { .. }));
                        match self.file(repo, e, exists, n) {
                            Ok(changed) => {
                                progress.advance(e.size);
                                if changed {
                                    let dest = self.plan.map.dest(&e.path);
                                    if let Some(parent) = dest.parent() {
                                        dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(parent.to_path_buf());
                                    }
                                }
                            }
                            Err(err) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(err);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(dirs.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// One file brought to the backup's content; true when anything on disk changed.
    fn file(&self, repo: &Repository, e: &Entry, exists: bool, n: &Counters) -> Result<bool, RestoreError> {
        let m = &self.plan.manifest;
        let dest = self.plan.map.dest(&e.path);
        let fail = |detail: String| RestoreError::DeltaFile {
            id: m.id.clone(),
            path: e.path.clone(),
            dir: self.plan.map.pgdata.display().to_string(),
            detail,
        };
        let mode = (e.mode & 0o777) | 0o600;
        if exists {
            let md = fs::metadata(&dest).map_err(|x| fail(x.to_string()))?;
            if md.permissions().mode() & 0o777 != mode {
                fsutil::set_mode(&dest, mode).map_err(|x| fail(x.to_string()))?;
            }
            // An incremental entry's BLAKE3 is of its stored blocks, not of the file.
            if md.len() == e.size
                && e.blocks.is_none()
                && e.blake3.as_deref().is_some_and(|b| hash_file(&dest).is_ok_and(|h| h == b))
            {
                n.unchanged.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
        }
        let mut content = open_entry_content(repo, &self.plan.chain, &e.path).map_err(|x| fail(x.to_string()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .mode(mode)
            .open(&dest)
            .map_err(|x| fail(format!("cannot open {}: {x}", dest.display())))?;
        if !exists {
            self.chown(&dest)?;
        }
        let written = rewrite_differing_blocks(&mut content, &file, e.size).map_err(|x| fail(x.to_string()))?;
        n.bytes_written.fetch_add(written.bytes, Ordering::Relaxed);
        tracing::debug!("{}: {} bytes written, length {} → {}", e.path, written.bytes, written.old_len, e.size);
        let changed = !exists || written.bytes > 0 || written.resized;
        if changed {
            file.sync_all().map_err(|x| fail(x.to_string()))?;
        }
        match (exists, changed) {
            (false, _) => n.created.fetch_add(1, Ordering::Relaxed),
            (true, true) => n.changed.fetch_add(1, Ordering::Relaxed),
            (true, false) => n.unchanged.fetch_add(1, Ordering::Relaxed),
        };
        Ok(changed)
    }
}

/// Whether `rel` lies in a tablespace directory's version subdirectory (`PG_15_202209061`)
/// the backup does not have: clusters of other majors may share the location, and their
/// files are not this restore's to remove.
fn foreign_in_tablespace(rel: &str, want: &BTreeMap<&str, &Entry>) -> bool {
    let parts: Vec<&str> = rel.splitn(4, '/').collect();
    parts.len() >= 3 && parts[0] == "pg_tblspc" && !want.contains_key(parts[..3].join("/").as_str())
}

/// Walk `dir` without following links, recording every entry under `prefix`.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Found>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let abs = entry.path();
        let md = fs::symlink_metadata(&abs)?;
        let ft = md.file_type();
        let f = if ft.is_symlink() {
            Found::Link { target: fs::read_link(&abs)?, abs }
        } else if ft.is_dir() {
            walk(&abs, &rel, out)?;
            Found::Dir { abs, mode: md.mode() & 0o7777 }
        } else if ft.is_file() {
            Found::File { abs }
        } else {
            Found::Other { abs }
        };
        out.insert(rel, f);
    }
    Ok(())
}
