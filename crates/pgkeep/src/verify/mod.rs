//! Restore drills: `pgkeep verify` proves a backup restores clean, and `verify --pgdata`
//! says whether any copy of a data directory (an AMI, a snapshot someone else took) is safe.
//!
//! A drill: materialise the copy ([`materialise_backup`]: a files backup restored into a
//! scratch directory, a snapshot backup's volumes cloned beside their originals ([`clones`]);
//! or [`scratch::clone_pgdata`]) → scan every page's LSN ([`pagelsn`]) → start a private
//! server on it and let it recover ([`server`]) → run the checks in every database
//! ([`checks`]) and the operator's assertions ([`assertions`]) → optional logical dumps → stop
//! the server, discard the clones, remove the scratch directory → store the verdict with the
//! backup. Nothing is left behind: not on success, not on failure, not on SIGINT
//! ([`interrupt`]).

pub mod assertions;
pub mod checks;
pub mod clones;
pub mod interrupt;
pub mod pagelsn;
pub mod report;
pub mod scratch;
pub mod server;
pub mod walend;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgkeep_wal::{ControlFileData, Lsn};

pub use interrupt::Interrupt;
pub use report::{CheckResult, CheckStatus, DrillReport, DrillSource};

use self::checks::Found;
use self::clones::Clones;
use self::report::{AssertionResult, DumpFile, PhaseTime};
use self::scratch::Scratch;
use crate::backup::snapshot::{records_from_values, SnapshotConfig};
use crate::pg::instance::free_port;
use crate::pg::{describe, ConnParams, Instance, OsUser, PgBin, PgClient, StopMode};
use crate::progress::Progress;
use crate::repo::manifest::Manifest;
use crate::repo::{catalog, verdict, Repository};
use crate::restore::{RecoveryTarget, RestoreError, RestoreOptions, RestorePlan, TargetAction};
use crate::{Error, Result};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{what} was interrupted; the drill's server was stopped and its scratch directory removed")]
    Interrupted { what: String },
    #[error("cannot create the drill's scratch directory under {path}: {detail}; hint: pass --scratch DIR on a file system with room for the restored copy")]
    Scratch { path: String, detail: String },
    #[error("cannot remove the drill's scratch directory {path}: {detail}; hint: remove it by hand")]
    Cleanup { path: String, detail: String },
    #[error("cannot clone {path} into the drill's scratch directory: {detail}; hint: check that it is readable and that the scratch file system has room (--scratch DIR)")]
    Clone { path: String, detail: String },
    #[error("cannot scan relation files in {path}: {detail}")]
    Scan { path: String, detail: String },
    #[error("{path} is not a PostgreSQL data directory ({detail}); hint: pass the directory that holds PG_VERSION and global/pg_control")]
    NotPgdata { path: String, detail: String },
    #[error("{path} is the data directory of a running server (postmaster pid {pid}); verify works on copies; hint: verify a backup (`pgkeep verify latest`) or a copy of the directory")]
    LiveServer { path: String, pid: i32 },
    #[error("the amcheck extension is not available to the drill's server ({detail}); hint: install Debian's postgresql-contrib package for this PostgreSQL major")]
    AmcheckMissing { detail: String },
    #[error("setting up the checks failed: {detail}")]
    DbSetup { detail: String },
    #[error("assertion file {path}: {detail}; hint: one SQL statement per assertion, each ending with `;` and returning one boolean")]
    AssertFile { path: String, detail: String },
    #[error("cannot write dumps to {path}: {detail}; hint: pass --dump with a writable directory")]
    DumpDir { path: String, detail: String },
    #[error("invalid --memory {value:?}; hint: megabytes, e.g. 256 or 1G (at least 64M)")]
    BadMemory { value: String },
    #[error("cannot connect to the drill's server on {socket}: {detail}; hint: the copy's bootstrap superuser may have another name: set PGKEEP_VERIFY_USER")]
    Connect { socket: String, detail: String },
    #[error("{detail}")]
    SnapshotDrill { detail: String },
    #[error("the drill could not remove its clone(s) {paths}: {detail}")]
    ClonesLeft { paths: String, detail: String },
}

impl VerifyError {
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Interrupted { .. } => 130,
            VerifyError::BadMemory { .. } => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Recover to this time instead of the backup's consistency point.
    pub target_time: Option<DateTime<Utc>>,
    pub asserts: Vec<PathBuf>,
    pub dump: Option<PathBuf>,
    /// Memory for the drill's server, MB.
    pub memory_mb: u64,
    /// Checks (and restore/scan workers) in parallel.
    pub jobs: usize,
    /// Where scratch directories go (default: TMPDIR; for --pgdata the source's parent first,
    /// so reflink clones can work).
    pub scratch: Option<PathBuf>,
    /// Seconds to wait for recovery to finish.
    pub recovery_timeout: Duration,
    /// `[[volume]]`s and the rest of the config file's snapshot settings: drills of snapshot
    /// backups clone and discard volumes with their drivers (command volumes need them).
    pub snapshot: SnapshotConfig,
    /// `--pg-bin` / `pg_bin_dir`: server binaries of the backup's (or copy's) major.
    pub pg_bin: Option<PathBuf>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            target_time: None,
            asserts: Vec::new(),
            dump: None,
            memory_mb: 256,
            jobs: 2,
            scratch: None,
            recovery_timeout: Duration::from_secs(6 * 3600),
            snapshot: SnapshotConfig::default(),
            pg_bin: None,
        }
    }
}

/// `256`, `256M`, `256MB`, `1G` → megabytes.
pub fn parse_memory(s: &str) -> std::result::Result<u64, VerifyError> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = if let Some(n) = t.strip_suffix('G') {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1)
    } else {
        (t, 1)
    };
    match num.trim().parse::<u64>() {
        Ok(n) if n * mult >= 64 => Ok(n * mult),
        _ => Err(VerifyError::BadMemory { value: s.to_string() }),
    }
}

/// What the materialise step produced.
pub struct Materialised {
    /// The data directory the drill's server runs on: `scratch.data`, or the clone of a
    /// snapshot backup's PGDATA volume.
    pub pgdata: PathBuf,
    /// Who owns `pgdata` and so runs the server (None: the drill's default user).
    pub owner: Option<OsUser>,
    pub control: Option<ControlFileData>,
    /// No page LSN at or below this needs remembering (the end of WAL cannot precede it).
    pub lower_bound: Lsn,
    /// End of the WAL the copy's own pg_wal holds (`verify --pgdata`), judged against when
    /// the server does not start; `None` when the WAL comes from the archive.
    pub wal_end: Option<Lsn>,
    pub pg_major: Option<u32>,
    /// The `restore` check (or `clone`): what was put in place.
    pub detail: String,
}

/// Why materialising failed: the backup itself (a failed drill, verdict stored) or the
/// machine (an error, nothing stored).
pub enum MaterialiseError {
    Backup(String),
    Env(Error),
}

/// Materialise backup `m` with recovery settings for `target` and
/// `recovery_target_action = promote`.
///
/// This is the one step of a drill that depends on how the backup was stored. Files backups
/// are restored object by object into `scratch.data` / `scratch.tblspc` with [`RestorePlan`]
/// (every object's checksums verified). Snapshot backups (`m.snapshot_layout`) are restored
/// with [`crate::restore::snapshot`]: every volume cloned beside its original (see
/// [`clones`]), each clone recorded in `clones` the moment it exists so the drill discards it
/// whatever happens next; pg_wal and tablespace links repointed, `backup_label` and the same
/// recovery settings written. Everything after this function runs on [`Materialised::pgdata`].
#[allow(clippy::too_many_arguments)]
pub fn materialise_backup(
    repo: &Repository,
    m: &Manifest,
    target: &RecoveryTarget,
    scratch: &Scratch,
    clones: &mut Clones,
    jobs: usize,
    progress: Arc<dyn Progress>,
    cancel: &AtomicBool,
) -> std::result::Result<Materialised, MaterialiseError> {
    if m.snapshot_layout.is_some() {
        return materialise_snapshot(repo, m, target, clones, jobs, cancel);
    }
    let opts = RestoreOptions {
        to: scratch.data.clone(),
        backup: Some(m.id.clone()),
        target: target.clone(),
        action: Some(TargetAction::Promote),
        inclusive: true,
        timeline: None,
        tablespace_map: m.tablespaces.iter().map(|t| (t.oid, scratch.tblspc.join(t.oid.to_string()))).collect(),
        jobs,
        archive_mode: crate::restore::recovery::ArchiveMode::Off,
    };
    let plan = RestorePlan::build(repo, &opts).map_err(classify_restore_error)?;
    // Run the restore on its own thread so SIGINT is noticed: removing the scratch data
    // directory under it makes the restore fail fast; the caller then reports the interrupt.
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| plan.run(repo, progress.clone()));
        while !h.is_finished() {
            if cancel.load(Ordering::SeqCst) {
                let _ = std::fs::remove_dir_all(&scratch.data);
                let _ = std::fs::remove_dir_all(&scratch.tblspc);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        h.join().unwrap_or_else(|_| Err(Error::other("the restore thread panicked")))
    });
    if cancel.load(Ordering::SeqCst) {
        return Err(MaterialiseError::Env(VerifyError::Interrupted { what: "the drill's restore".into() }.into()));
    }
    let r = result.map_err(classify_restore_error)?;
    let control = read_control(&scratch.data);
    let redo = control.as_ref().map(|c| c.checkPointCopy.redo).unwrap_or(Lsn(0));
    Ok(Materialised {
        pgdata: scratch.data.clone(),
        owner: None,
        lower_bound: Lsn(redo.0.min(m.start_lsn.0)),
        wal_end: None,
        pg_major: Some(m.pg_major),
        control,
        detail: format!(
            "restored {} files ({}) of backup {} in {:.1}s",
            r.files,
            crate::fsutil::human_bytes(r.size),
            m.id,
            r.duration_seconds
        ),
    })
}

fn read_control(pgdata: &Path) -> Option<ControlFileData> {
    std::fs::read(pgdata.join("global/pg_control")).ok().and_then(|b| pgkeep_wal::parse_pg_control(&b).ok())
}

/// A snapshot backup: each volume cloned by its driver beside its original (the only place a
/// snapshot can be cloned), restored the way `pgkeep restore` does it.
fn materialise_snapshot(
    repo: &Repository,
    m: &Manifest,
    target: &RecoveryTarget,
    clones: &mut Clones,
    jobs: usize,
    cancel: &AtomicBool,
) -> std::result::Result<Materialised, MaterialiseError> {
    let records = records_from_values(&m.id, &m.snapshots).map_err(|e| MaterialiseError::Backup(e.to_string()))?;
    let tag = format!("pgkeep-verify-{}-{}", m.id, std::process::id());
    let sopts = crate::restore::snapshot::SnapshotRestoreOptions {
        volumes: records.iter().map(|r| (r.volume.clone(), clones::drill_target(r, &tag))).collect(),
        availability_zone: None,
        attach_to: None,
    };
    let opts = RestoreOptions {
        to: PathBuf::new(),
        backup: Some(m.id.clone()),
        target: target.clone(),
        action: Some(TargetAction::Promote),
        inclusive: true,
        timeline: None,
        tablespace_map: Vec::new(),
        jobs,
        archive_mode: crate::restore::recovery::ArchiveMode::Off,
    };
    // Clones are instant (btrfs, reflink) or the operator's command (bounded by its
    // command_timeout): an interrupt is acted on when the restore returns.
    let mut made = Vec::new();
    let cfg = clones.config().clone();
    let result = crate::restore::snapshot::restore_tracked(repo, &cfg, m, &opts, &sopts, &mut made);
    for v in made {
        if let Some(rec) = records.iter().find(|r| r.volume == v.volume) {
            clones.add(rec.clone(), v);
        }
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(MaterialiseError::Env(VerifyError::Interrupted { what: "the drill's restore".into() }.into()));
    }
    let r = match result {
        Ok(r) => r,
        // A bad configuration is the operator's to fix, not a verdict on the backup.
        Err(e @ Error::Snapshot(crate::backup::snapshot::SnapshotError::Config(_))) => {
            return Err(MaterialiseError::Env(e))
        }
        Err(e) => return Err(MaterialiseError::Backup(e.to_string())),
    };
    let Some(pgdata) = r.pgdata.as_deref().map(PathBuf::from) else {
        return Err(MaterialiseError::Backup(format!(
            "the restored volumes of backup {} hold no data directory on this machine: {}",
            m.id, r.next
        )));
    };
    let control = read_control(&pgdata);
    let redo = control.as_ref().map(|c| c.checkPointCopy.redo).unwrap_or(Lsn(0));
    // The clone belongs to whoever owned the original: the server runs as that user.
    let owner = OsUser::owner_of(&pgdata).filter(|u| u.uid != 0 || !crate::fsutil::running_as_root());
    let cloned: Vec<String> =
        r.volumes.iter().map(|v| format!("{} → {}", v.volume, v.root.as_deref().unwrap_or(&v.created))).collect();
    Ok(Materialised {
        pgdata: pgdata.clone(),
        owner,
        lower_bound: Lsn(redo.0.min(m.start_lsn.0)),
        wal_end: None,
        pg_major: Some(m.pg_major),
        control,
        detail: format!(
            "cloned {} volume(s) of snapshot backup {} ({}) in {:.1}s: {}; data directory {}",
            r.volumes.len(),
            m.id,
            m.driver,
            r.duration_seconds,
            cloned.join(", "),
            pgdata.display()
        ),
    })
}

fn classify_restore_error(e: Error) -> MaterialiseError {
    match e {
        // The scratch disk, not the backup.
        Error::Restore(RestoreError::Write { .. }) | Error::Restore(RestoreError::TargetNotEmpty { .. }) => {
            MaterialiseError::Env(e)
        }
        other => MaterialiseError::Backup(other.to_string()),
    }
}

/// `verify [ID|latest|all]`: drill each selected backup, store each verdict.
pub fn verify_backups(
    repo: &Repository,
    selector: Option<&str>,
    opts: &VerifyOptions,
    progress: Arc<dyn Progress>,
    interrupt: &Interrupt,
) -> Result<Vec<DrillReport>> {
    let ids: Vec<String> = match selector {
        Some("all") => catalog::complete(repo)?.into_iter().map(|b| b.id).collect(),
        Some(id) if id != "latest" => vec![id.to_string()],
        _ => {
            let complete = catalog::complete(repo)?;
            let chosen = match &opts.target_time {
                Some(t) => crate::restore::target::choose(&complete, &RecoveryTarget::Time(*t))?.id.clone(),
                None => match complete.last() {
                    Some(b) => b.id.clone(),
                    None => {
                        return Err(RestoreError::NoBackups { location: repo.location().to_string() }.into());
                    }
                },
            };
            vec![chosen]
        }
    };
    // Refuse a snapshot backup a drill cannot clone and discard before any drill runs.
    for id in &ids {
        clones::refuse_unsupported(&repo.manifest(id)?, &opts.snapshot)?;
    }
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut o = opts.clone();
        if selector == Some("all") {
            o.dump = opts.dump.as_ref().map(|d| d.join(id));
        }
        if ids.len() > 1 {
            progress.note(&format!("verifying backup {id} ({}/{})", i + 1, ids.len()));
        }
        out.push(verify_backup(repo, id, &o, progress.clone(), interrupt)?);
    }
    Ok(out)
}

/// Drill one backup and store its verdict.
pub fn verify_backup(
    repo: &Repository,
    id: &str,
    opts: &VerifyOptions,
    progress: Arc<dyn Progress>,
    interrupt: &Interrupt,
) -> Result<DrillReport> {
    let m = repo.manifest(id)?;
    clones::refuse_unsupported(&m, &opts.snapshot)?;
    // Before anything is restored: a drill on binaries of another major cannot start.
    let bins = DrillBins::resolve(m.pg_major, opts, &format!("backup {}", m.id))?;
    let target = match opts.target_time {
        Some(t) => RecoveryTarget::Time(t),
        None => RecoveryTarget::Immediate,
    };
    let source = DrillSource::Backup { backup_id: m.id.clone(), target: target.to_string(), driver: m.driver.clone() };
    let owner = OsUser::for_private_servers()?;
    let parent = opts.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch::create(&parent, Some(&owner))?;
    let rt = repo.runtime().clone();
    let clones = Clones::new(opts.snapshot.clone(), rt.clone());
    let drill = Drill::new(source, opts, progress.clone(), rt, interrupt, owner, bins);
    let mut report = drill.run(scratch, clones, |scratch, clones| {
        progress.phase(&format!("restore backup {id}"), None);
        let r = materialise_backup(repo, &m, &target, scratch, clones, opts.jobs, progress.clone(), interrupt.flag());
        progress.finish_phase();
        r
    })?;
    let v = verdict::Verdict {
        backup_id: m.id.clone(),
        verified_at: report.started_at,
        ok: report.ok,
        duration_seconds: report.duration_seconds,
        pg_version: report.pg_version.clone().unwrap_or_else(|| format!("{} (did not start)", m.pg_major)),
        summary: report.summary.clone(),
        report: serde_json::to_value(&report).unwrap_or(serde_json::Value::Null),
    };
    report.verdict_key = Some(verdict::store(repo, &v)?);
    Ok(report)
}

/// `verify --pgdata DIR [--wal-dir DIR]`: drill a copy of a data directory without touching it.
pub fn verify_pgdata(
    dir: &Path,
    wal_dir: Option<&Path>,
    opts: &VerifyOptions,
    progress: Arc<dyn Progress>,
    rt: tokio::runtime::Handle,
    interrupt: &Interrupt,
) -> Result<DrillReport> {
    let src = std::fs::canonicalize(dir)
        .map_err(|e| VerifyError::NotPgdata { path: dir.display().to_string(), detail: e.to_string() })?;
    if !src.join("PG_VERSION").is_file() {
        return Err(
            VerifyError::NotPgdata { path: src.display().to_string(), detail: "no PG_VERSION file".into() }.into()
        );
    }
    if let Some(w) = wal_dir {
        if !w.is_dir() {
            return Err(VerifyError::NotPgdata {
                path: w.display().to_string(),
                detail: "--wal-dir is not a directory".into(),
            }
            .into());
        }
    }
    refuse_live_server(&src)?;
    let major = pgdata_major(&src)?;
    let bins = DrillBins::resolve(major, opts, &format!("the copy at {}", src.display()))?;
    // The server runs as the copy's owner when we are root (unless root owns it).
    let owner = match OsUser::owner_of(&src) {
        Some(u) if u.uid != 0 || !crate::fsutil::running_as_root() => u,
        _ => OsUser::for_private_servers()?,
    };
    // Reflink clones need the scratch directory on the source's file system: try its parent.
    let scratch = match &opts.scratch {
        Some(p) => Scratch::create(p, Some(&owner))?,
        None => match src.parent().map(|p| Scratch::create(p, Some(&owner))) {
            Some(Ok(s)) => s,
            _ => Scratch::create(&std::env::temp_dir(), Some(&owner))?,
        },
    };
    let mut method = String::from("copy");
    let source = DrillSource::Pgdata {
        path: src.display().to_string(),
        wal_dir: wal_dir.map(|w| w.display().to_string()),
        clone_method: String::new(),
    };
    let method_ref = &mut method;
    let clones = Clones::new(SnapshotConfig::default(), rt.clone());
    let drill = Drill::new(source, opts, progress.clone(), rt, interrupt, owner, bins);
    let mut report = drill.run(scratch, clones, |scratch, _| {
        progress.phase(&format!("clone {}", src.display()), None);
        let r = scratch::clone_pgdata(&src, wal_dir, scratch, interrupt.flag());
        progress.finish_phase();
        let stats = r.map_err(|e| MaterialiseError::Env(e.into()))?;
        *method_ref = stats.method().to_string();
        let control = read_control(&scratch.data);
        let wal_end = control.as_ref().and_then(|c| walend::copy_wal_end(&scratch.data.join("pg_wal"), c));
        let redo = control.as_ref().map(|c| c.checkPointCopy.redo).unwrap_or(Lsn(0));
        Ok(Materialised {
            pgdata: scratch.data.clone(),
            owner: None,
            // A copy whose WAL ends before pg_control's redo point does not start; its pages
            // between the two are judged against the WAL's end all the same.
            lower_bound: wal_end.map_or(redo, |e| Lsn(e.0.min(redo.0))),
            wal_end,
            pg_major: control.as_ref().and_then(|c| c.pg_major()),
            control,
            detail: format!(
                "cloned {} files ({}) by {} ({} reflinked, {} copied)",
                stats.files,
                crate::fsutil::human_bytes(stats.bytes),
                stats.method(),
                stats.reflinked,
                stats.copied
            ),
        })
    })?;
    if let DrillSource::Pgdata { clone_method, .. } = &mut report.source {
        *clone_method = method;
    }
    Ok(report)
}

/// The major in a data directory's PG_VERSION ("17"; "9.6" → 9).
fn pgdata_major(src: &Path) -> std::result::Result<u32, VerifyError> {
    let text = std::fs::read_to_string(src.join("PG_VERSION"))
        .map_err(|e| VerifyError::NotPgdata { path: src.display().to_string(), detail: format!("PG_VERSION: {e}") })?;
    text.trim().split('.').next().and_then(|m| m.parse().ok()).ok_or_else(|| VerifyError::NotPgdata {
        path: src.display().to_string(),
        detail: format!("PG_VERSION holds {:?}, not a PostgreSQL major", text.trim()),
    })
}

/// The binaries a drill runs: the server of the copy's major, and with `--dump` a pg_dump
/// at least as new. Both are found before the drill starts, so a machine without them fails
/// with one line instead of a restored copy the server then refuses.
struct DrillBins {
    server: PgBin,
    dump: Option<PgBin>,
}

impl DrillBins {
    fn resolve(major: u32, opts: &VerifyOptions, what: &str) -> Result<DrillBins> {
        let server = PgBin::for_major(major, opts.pg_bin.as_deref(), what)?;
        let dump = match &opts.dump {
            Some(_) => Some(server.dump_tools_for(major)?),
            None => None,
        };
        Ok(DrillBins { server, dump })
    }
}

/// A directory whose postmaster.pid names a live process that serves this very directory.
fn refuse_live_server(src: &Path) -> std::result::Result<(), VerifyError> {
    let Ok(text) = std::fs::read_to_string(src.join("postmaster.pid")) else { return Ok(()) };
    let mut lines = text.lines();
    let pid: i32 = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    let dir = lines.next().unwrap_or("").trim();
    if pid > 0 && Path::new(&format!("/proc/{pid}")).exists() && std::fs::canonicalize(dir).ok().as_deref() == Some(src)
    {
        return Err(VerifyError::LiveServer { path: src.display().to_string(), pid });
    }
    Ok(())
}

/// One drill in progress: the report being filled, and what it needs.
struct Drill<'a> {
    report: DrillReport,
    opts: &'a VerifyOptions,
    progress: Arc<dyn Progress>,
    rt: tokio::runtime::Handle,
    interrupt: &'a Interrupt,
    owner: OsUser,
    bins: DrillBins,
    began: Instant,
}

/// The server, the clones of a snapshot backup's volumes and the scratch directory: stopped,
/// discarded and removed in that order when dropped (fields drop in declaration order).
struct Running {
    inst: Option<Instance>,
    log_path: Option<PathBuf>,
    /// The data directory the server runs on, once materialised.
    pgdata: Option<PathBuf>,
    clones: Clones,
    scratch: Scratch,
}

impl Running {
    fn stop(&mut self) {
        if let Some(mut i) = self.inst.take() {
            let t = Instant::now();
            let _ = i.stop(StopMode::Immediate);
            tracing::debug!("postmaster stopped in {:.2}s", t.elapsed().as_secs_f64());
            wait_for_processes_to_leave(self.pgdata.as_deref().unwrap_or(&self.scratch.data));
            tracing::debug!("all server processes gone after {:.2}s", t.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        // `clones` (then `scratch`) are dropped next: their Drop discards (removes) them.
    }
}

/// After an immediate stop the postmaster has reaped its children; any process still working
/// in the scratch directory (a backend that outlived it) is waited for, briefly.
fn wait_for_processes_to_leave(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if processes_in(dir).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PIDs whose working directory is inside `dir` (PostgreSQL processes chdir to PGDATA).
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return v };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            let s = cwd.to_string_lossy();
            let s = s.strip_suffix(" (deleted)").unwrap_or(&s);
            if Path::new(s).starts_with(dir) {
                v.push(pid);
            }
        }
    }
    v
}

impl<'a> Drill<'a> {
    fn new(
        source: DrillSource,
        opts: &'a VerifyOptions,
        progress: Arc<dyn Progress>,
        rt: tokio::runtime::Handle,
        interrupt: &'a Interrupt,
        owner: OsUser,
        bins: DrillBins,
    ) -> Drill<'a> {
        Drill {
            report: DrillReport {
                ok: false,
                source,
                started_at: Utc::now(),
                duration_seconds: 0.0,
                pg_version: None,
                end_of_wal: None,
                end_of_wal_source: None,
                phases: Vec::new(),
                checks: Vec::new(),
                databases: Vec::new(),
                assertions: Vec::new(),
                dumps: Vec::new(),
                server_log: Vec::new(),
                verdict_key: None,
                summary: String::new(),
            },
            opts,
            progress,
            rt,
            interrupt,
            owner,
            bins,
            began: Instant::now(),
        }
    }

    fn phase(&mut self, name: &str, since: Instant) {
        self.report.phases.push(PhaseTime { name: name.into(), seconds: since.elapsed().as_secs_f64() });
    }

    fn check(&mut self, c: CheckResult) {
        self.report.checks.push(c);
    }

    fn interrupted(&self, what: &str) -> Result<()> {
        if self.interrupt.is_set() {
            return Err(VerifyError::Interrupted { what: what.into() }.into());
        }
        Ok(())
    }

    /// Run the drill on what `materialise` puts in `scratch` (or clones, recorded in
    /// `clones`); always stops the server, discards the clones and removes the scratch directory.
    fn run(
        mut self,
        scratch: Scratch,
        clones: Clones,
        materialise: impl FnOnce(&Scratch, &mut Clones) -> std::result::Result<Materialised, MaterialiseError>,
    ) -> Result<DrillReport> {
        // Validate what the operator passed before any work.
        let mut asserts = Vec::new();
        for a in &self.opts.asserts {
            asserts.extend(assertions::load(a)?);
        }
        if let Some(d) = &self.opts.dump {
            std::fs::create_dir_all(d)
                .map_err(|e| VerifyError::DumpDir { path: d.display().to_string(), detail: e.to_string() })?;
        }
        let mut running = Running { inst: None, log_path: None, pgdata: None, clones, scratch };
        let result = self.steps(&mut running, &asserts, materialise);
        let t = Instant::now();
        self.progress.phase("stop and clean up", None);
        running.stop();
        self.phase("stop", t);
        let t = Instant::now();
        if let Some(p) = &running.log_path {
            self.report.server_log = server::notable_log_lines(p, 60);
        }
        let discarded = running.clones.discard();
        let cleanup = running.scratch.remove();
        self.progress.finish_phase();
        self.phase("cleanup", t);
        result?;
        discarded?;
        cleanup?;
        self.interrupted("the drill")?;
        self.report.ok = !self.report.checks.is_empty() && self.report.checks.iter().all(|c| c.ok);
        self.report.duration_seconds = self.began.elapsed().as_secs_f64();
        self.report.summary = self.report.make_summary();
        Ok(self.report)
    }

    fn steps(
        &mut self,
        running: &mut Running,
        asserts: &[assertions::Assertion],
        materialise: impl FnOnce(&Scratch, &mut Clones) -> std::result::Result<Materialised, MaterialiseError>,
    ) -> Result<()> {
        let opts = self.opts;
        let progress = self.progress.clone();
        let rt = self.rt.clone();
        let is_backup = matches!(self.report.source, DrillSource::Backup { .. });

        // 1. Materialise the copy.
        let t = Instant::now();
        let name = if is_backup { "restore" } else { "clone" };
        let mat = match materialise(&running.scratch, &mut running.clones) {
            Ok(m) => {
                self.phase(name, t);
                self.check(CheckResult::passed(name, m.detail.clone()));
                m
            }
            Err(MaterialiseError::Backup(e)) => {
                self.phase(name, t);
                self.check(CheckResult::failed(name, "the backup cannot be restored", vec![e], 1));
                self.not_run_rest("the backup could not be restored", !asserts.is_empty());
                return Ok(());
            }
            Err(MaterialiseError::Env(e)) => return Err(e),
        };
        running.pgdata = Some(mat.pgdata.clone());
        if let Some(o) = &mat.owner {
            self.owner = o.clone();
        }
        self.interrupted("the drill")?;
        server::write_config(&running.scratch)?;
        running.scratch.hand_over(Some(&self.owner))?;

        // 2. Every page's LSN, before the server rewrites any of them.
        let t = Instant::now();
        let (bs, relseg) = match &mat.control {
            Some(c) if c.blcksz > 0 && c.relseg_size > 0 => (c.blcksz, c.relseg_size),
            _ => (8192, 131072),
        };
        let scan = pagelsn::scan(
            &mat.pgdata,
            mat.lower_bound,
            bs,
            relseg,
            opts.jobs,
            progress.as_ref(),
            self.interrupt.flag(),
        )?;
        self.phase("page_lsn_scan", t);

        // 3. Start the private server and let it recover (and promote).
        let t = Instant::now();
        let sc = &running.scratch;
        let mut inst =
            Instance::new(self.bins.server.clone(), &mat.pgdata, &sc.socket_dir, free_port(), Some(self.owner.clone()));
        inst.log_path = sc.run.join("postgres.log");
        inst.own_process_group();
        server::configure(&mut inst, sc, mat.control.as_ref(), mat.pg_major, opts.memory_mb, opts.jobs);
        progress.phase("recovery", None);
        let interrupt = self.interrupt;
        let deadline = Instant::now() + opts.recovery_timeout;
        let mut started = inst.start_with(opts.recovery_timeout, &|| interrupt.is_set());
        if started.is_ok() {
            // `start` returns at "standby" too (consistent, still recovering): wait for the
            // promotion, i.e. the postmaster's status "ready", or for the server to give up.
            started = wait_until_ready(&mut inst, deadline, interrupt);
        }
        progress.finish_phase();
        let log_path = inst.log_path.clone();
        running.log_path = Some(log_path.clone());
        running.inst = Some(inst);
        self.phase("recovery", t);
        self.interrupted("recovery of the drill's server")?;
        if let Err(e) = started {
            let lines = server::startup_errors(&log_path);
            let n = lines.len() as u64;
            let first = lines
                .iter()
                .find(|l| l.contains("PANIC:") || l.contains("FATAL:"))
                .map(|l| without_usage(l).to_string())
                .unwrap_or_else(|| e.to_string());
            self.check(CheckResult::failed(
                "start",
                format!("the server did not start on the copy: {first}"),
                lines,
                n,
            ));
            // The scan ran before the start: its pages are judged against the WAL the copy
            // holds, so a copy that mixes moments says so even when it cannot start.
            match mat.wal_end {
                Some(end) => {
                    let mut c = page_lsn_check(&scan, Some(end), &Default::default());
                    c.detail.push_str(" (end of the WAL in the copy's pg_wal: the server did not start)");
                    self.check(c);
                }
                None if is_backup => self.check(CheckResult::not_run(
                    "page_lsn",
                    "the server did not start, so the end of the WAL recovery replays from the archive is unknown",
                )),
                None => self.check(CheckResult::not_run(
                    "page_lsn",
                    "the server did not start and the newest segment in the copy's pg_wal is not valid WAL, so the end of its WAL is unknown",
                )),
            }
            self.not_run_rest("the server did not start", !asserts.is_empty());
            return Ok(());
        }
        let Some(inst) = running.inst.as_mut() else { return Ok(()) };
        let client = connect_superuser(&rt, inst)?;
        let info = rt
            .block_on(client.client.query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                 pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END",
                &[],
            ))
            .map_err(|e| VerifyError::Connect {
                socket: inst.socket_dir.display().to_string(),
                detail: describe(&e),
            })?;
        let bad =
            |e: tokio_postgres::Error| VerifyError::DbSetup { detail: format!("reading the server's state: {e}") };
        let version: String = info.try_get(0).map_err(bad)?;
        let version_num: i32 = info.try_get(1).map_err(bad)?;
        let in_recovery: bool = info.try_get(2).map_err(bad)?;
        let replay: Option<String> = info.try_get(3).map_err(bad)?;
        let insert: Option<String> = info.try_get(4).map_err(bad)?;
        self.report.pg_version = Some(version.split_whitespace().next().unwrap_or(&version).to_string());
        let (end, end_source) =
            match (replay.and_then(|s| s.parse::<Lsn>().ok()), insert.and_then(|s| s.parse::<Lsn>().ok())) {
                (Some(l), _) => (Some(l), "pg_last_wal_replay_lsn()"),
                (None, Some(l)) => (Some(l), "pg_current_wal_insert_lsn() at start (no WAL was replayed)"),
                _ => (None, "unknown"),
            };
        self.report.end_of_wal = end;
        self.report.end_of_wal_source = Some(end_source.into());
        let redo_line =
            server::notable_log_lines(&log_path, 60).into_iter().find(|l| l.contains("redo done")).unwrap_or_default();
        self.check(CheckResult::passed(
            "start",
            format!(
                "the server started and {}; end of WAL {} ({end_source}){}",
                if in_recovery { "is still in recovery" } else { "accepts writes" },
                end.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
                if redo_line.is_empty() { String::new() } else { format!("; {}", strip_prefix_ts(&redo_line)) }
            ),
        ));

        // 4. The checks, database by database.
        let conn = inst.conn("postgres");
        let dbs = rt
            .block_on(checks::databases(&client))
            .map_err(|e| VerifyError::DbSetup { detail: format!("listing databases: {e}") })?;
        let ctx =
            checks::Ctx { conn: &conn, jobs: opts.jobs.max(1), in_recovery, server_version_num: version_num as u32 };
        let (mut amcheck, mut heapam, mut horizon, mut read, mut unique) =
            (Found::default(), Found::default(), Found::default(), Found::default(), Found::default());
        let mut unreachable = Found::default();
        let mut horizon_tables = 0u64;
        let mut file_names = std::collections::HashMap::new();
        let mut stage_seconds: std::collections::BTreeMap<&'static str, f64> = Default::default();
        let mut own_schema_in: Vec<String> = Vec::new();
        let mut toggled: Vec<String> = Vec::new();
        let mut first = true;
        let mut func = String::new();
        for db in &dbs {
            if db.invalid {
                progress.note(&format!("database {} is invalid (an interrupted DROP DATABASE); skipped", db.name));
                continue;
            }
            if !db.allow_conn {
                let sql = format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(&db.name));
                if rt.block_on(client.client.batch_execute(&sql)).is_ok() {
                    toggled.push(db.name.clone());
                }
            }
            progress.phase(&format!("checks in database {}", db.name), None);
            let r = rt.block_on(async {
                tokio::select! {
                    r = checks::check_database(&ctx, &db.name, first) => Some(r),
                    _ = interrupt.wait() => None,
                }
            });
            progress.finish_phase();
            let Some(r) = r else { return Err(VerifyError::Interrupted { what: "the checks".into() }.into()) };
            let o = r?;
            first = false;
            for (k, v) in &o.seconds {
                *stage_seconds.entry(k).or_default() += v;
            }
            amcheck.merge(&o.amcheck);
            heapam.merge(&o.heapam);
            horizon_tables += o.horizon_tables;
            horizon.merge(&o.horizon);
            read.merge(&o.read);
            unique.merge(&o.unique);
            if let Some(e) = &o.report.error {
                unreachable.push(format!("[{}] {e}", db.name));
            }
            if o.created_schema {
                own_schema_in.push(db.name.clone());
            }
            if func.is_empty() {
                func = o.report.amcheck_function.clone();
            }
            file_names.extend(o.file_names);
            self.report.databases.push(o.report);
        }
        for k in ["amcheck", "verify_heapam", "read_all", "unique"] {
            let seconds = stage_seconds.get(k).copied().unwrap_or(0.0);
            self.report.phases.push(PhaseTime { name: k.to_string(), seconds });
        }
        let dbs_n = self.report.databases.len();
        let sum = |f: fn(&report::DatabaseReport) -> u64| -> u64 { self.report.databases.iter().map(f).sum() };
        let (n_idx, n_tab, n_rows, n_bytes, n_uni) = (
            sum(|d| d.indexes_checked),
            sum(|d| d.tables_checked),
            sum(|d| d.rows_read),
            sum(|d| d.bytes_read),
            sum(|d| d.unique_checked),
        );
        if unreachable.count > 0 {
            self.check(found_check("databases", "database(s) could not be checked", unreachable));
        }

        // Page LSNs against the end of WAL, relations named.
        self.check(page_lsn_check(&scan, end, &file_names));
        let ok_or = |name: &str, found: Found, passed: String, failed: &str| -> CheckResult {
            if found.count == 0 {
                CheckResult::passed(name, passed)
            } else {
                found_check(name, failed, found)
            }
        };
        let c = ok_or(
            "amcheck",
            amcheck,
            format!("{n_idx} btree indexes in {dbs_n} database(s) are sound ({func} with heapallindexed)"),
            "index corruption",
        );
        self.check(c);
        // A table whose only findings are transaction-horizon ones is xid_horizon's to report:
        // verify_heapam neither calls it sound nor counts it twice.
        let heap_passed = if horizon_tables == 0 {
            format!("{n_tab} tables are sound")
        } else {
            format!(
                "{} of {n_tab} tables are sound; {horizon_tables} table(s) hold only tuples beyond the next transaction ID, reported by xid_horizon",
                n_tab.saturating_sub(horizon_tables)
            )
        };
        let c = ok_or("verify_heapam", heapam, heap_passed, "heap corruption");
        self.check(c);
        let c = ok_or(
            "xid_horizon",
            horizon,
            format!("no tuple in {n_tab} tables carries an xmin/xmax at or beyond the next transaction ID"),
            "tuples written by transactions beyond the next transaction ID (the copy mixes moments)",
        );
        self.check(c);
        let c = ok_or(
            "read_all",
            read,
            format!("read {n_rows} rows ({}) from every table", crate::fsutil::human_bytes(n_bytes)),
            "rows could not be read",
        );
        self.check(c);
        let c = ok_or(
            "unique",
            unique,
            format!("{n_uni} primary keys, unique constraints and unique indexes hold no duplicates"),
            "duplicate keys",
        );
        self.check(c);

        // 5. The operator's assertions.
        if !asserts.is_empty() {
            let t = Instant::now();
            progress.phase("assertions", None);
            let results = rt.block_on(async {
                tokio::select! {
                    r = run_assertions(&conn, asserts) => Some(r),
                    _ = interrupt.wait() => None,
                }
            });
            progress.finish_phase();
            let Some(results) = results else {
                return Err(VerifyError::Interrupted { what: "the assertions".into() }.into());
            };
            self.phase("assertions", t);
            let failed: Vec<String> = results
                .iter()
                .filter(|a| !a.ok)
                .map(|a| {
                    format!("assertion {:?} ({}, database {}) returned {}", a.name, a.location, a.database, a.result)
                })
                .collect();
            let n = results.len();
            self.report.assertions = results;
            if failed.is_empty() {
                self.check(CheckResult::passed("assertions", format!("{n} assertion(s) returned true")));
            } else {
                let k = failed.len() as u64;
                self.check(CheckResult::failed(
                    "assertions",
                    format!("{k} of {n} assertion(s) did not return true"),
                    failed,
                    k,
                ));
            }
        }

        // Leave the databases as they came: drop what the drill created.
        for db in &own_schema_in {
            let _ = rt.block_on(checks::drop_own_schema(&conn, db));
        }
        for db in &toggled {
            let _ = rt.block_on(
                client.client.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", quote_ident(db))),
            );
        }
        drop(client);

        // 6. Logical dumps taken from the copy.
        if let Some(dir) = &opts.dump {
            let t = Instant::now();
            progress.phase("dump", None);
            let names: Vec<String> = dbs
                .iter()
                .filter(|d| d.allow_conn && !d.invalid && d.name != "template0")
                .map(|d| d.name.clone())
                .collect();
            let tools = self.bins.dump.clone().unwrap_or_else(|| inst.bin.clone());
            let r = dump_all(inst, &tools, dir, &names, interrupt);
            progress.finish_phase();
            self.phase("dump", t);
            self.interrupted("the dumps")?;
            match r {
                Ok(files) => {
                    let total: u64 = files.iter().map(|f| f.size).sum();
                    self.check(CheckResult::passed(
                        "dump",
                        format!(
                            "{} database dump(s) and the globals in {} ({})",
                            files.len() - 1,
                            dir.display(),
                            crate::fsutil::human_bytes(total)
                        ),
                    ));
                    self.report.dumps = files;
                }
                Err((files, errors)) => {
                    let n = errors.len() as u64;
                    self.report.dumps = files;
                    self.check(CheckResult::failed("dump", "pg_dump failed", errors, n));
                }
            }
        }
        Ok(())
    }

    /// Every check that could not run because an earlier step failed.
    fn not_run_rest(&mut self, why: &str, with_asserts: bool) {
        let mut names = vec!["start", "page_lsn", "amcheck", "verify_heapam", "xid_horizon", "read_all", "unique"];
        if with_asserts {
            names.push("assertions");
        }
        if self.opts.dump.is_some() {
            names.push("dump");
        }
        for n in names {
            if !self.report.checks.iter().any(|c| c.name == n) {
                self.report.checks.push(CheckResult::not_run(n, why));
            }
        }
    }
}

/// Wait for postmaster.pid's status line to say `ready`.
fn wait_until_ready(
    inst: &mut Instance,
    deadline: Instant,
    interrupt: &Interrupt,
) -> std::result::Result<(), crate::pg::InstanceError> {
    let pgdata = inst.pgdata.display().to_string();
    loop {
        let status = std::fs::read_to_string(inst.pgdata.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().nth(7).map(|l| l.trim().to_string()));
        if status.as_deref() == Some("ready") {
            return Ok(());
        }
        if !inst.is_running() {
            return Err(crate::pg::InstanceError::StartFailed { pgdata, log: inst.log_tail(12) });
        }
        if interrupt.is_set() || Instant::now() > deadline {
            return Err(crate::pg::InstanceError::StartTimeout { pgdata, secs: 0, log: inst.log_tail(12) });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn found_check(name: &str, what: &str, f: Found) -> CheckResult {
    CheckResult::failed(name, format!("{}: {what}", f.count), f.first, f.count)
}

fn strip_prefix_ts(line: &str) -> &str {
    // "2026-11-21 07:15:44.123 UTC [123] LOG:  redo done at 0/3000148 …" → from "redo".
    without_usage(line.find("redo done").map(|i| &line[i..]).unwrap_or(line))
}

/// A server line without its resource-usage tail ("… system usage: CPU: user: 0.01 s, …"):
/// timings of the drill's server say nothing about the copy.
fn without_usage(line: &str) -> &str {
    line.find(" system usage:").map(|i| line[..i].trim_end()).unwrap_or(line)
}

fn page_lsn_check(
    scan: &pagelsn::ScanResult,
    end: Option<Lsn>,
    names: &std::collections::HashMap<String, String>,
) -> CheckResult {
    let Some(end) = end else {
        return CheckResult::not_run("page_lsn", "the end of the replayed WAL is unknown");
    };
    let mut errors: Vec<String> = Vec::new();
    let mut pages = 0u64;
    let beyond = scan.beyond(end);
    for b in &beyond {
        pages += b.pages;
        let name = names.get(&b.rel_path).map(|n| format!("relation {n}")).unwrap_or_else(|| "relation file".into());
        errors.push(format!(
            "{name} ({}, {} fork): {}{} page(s) carry an LSN beyond the end of WAL {end} (first block {}, highest LSN {})",
            b.rel_path,
            b.fork,
            b.pages,
            if b.at_least { "+" } else { "" },
            b.first_block,
            b.max_lsn
        ));
    }
    for u in &scan.unreadable {
        errors.push(format!("cannot read {u}"));
    }
    if errors.is_empty() {
        return CheckResult::passed(
            "page_lsn",
            format!("{} pages in {} relation files, none beyond the end of WAL {end}", scan.pages, scan.files.len()),
        );
    }
    let n = errors.len() as u64;
    CheckResult::failed(
        "page_lsn",
        format!(
            "{pages} page(s) in {} relation fork(s) were written after the end of the WAL this copy holds ({end}): the copy mixes moments",
            beyond.len()
        ),
        errors,
        n,
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Connect as the copy's bootstrap superuser (role OID 10), whatever its name.
fn connect_superuser(rt: &tokio::runtime::Handle, inst: &mut Instance) -> Result<PgClient> {
    let candidates = server::superuser_candidates(inst.owner.as_ref().map(|o| o.name.as_str()));
    let mut last = String::new();
    for user in candidates {
        for db in ["postgres", "template1"] {
            let p = ConnParams::unix(&inst.socket_dir, inst.port, &user, db);
            match rt.block_on(p.connect()) {
                Ok(c) => {
                    let boot: Option<String> =
                        rt.block_on(c.scalar("SELECT rolname FROM pg_roles WHERE oid = 10")).ok().flatten();
                    inst.superuser = boot.clone().unwrap_or(user.clone());
                    if boot.as_deref().is_some_and(|b| b != user) {
                        let p = ConnParams::unix(&inst.socket_dir, inst.port, &inst.superuser, db);
                        return Ok(rt.block_on(p.connect())?);
                    }
                    return Ok(c);
                }
                Err(e) => last = e.to_string(),
            }
        }
    }
    Err(VerifyError::Connect { socket: inst.socket_dir.display().to_string(), detail: last }.into())
}

async fn run_assertions(conn: &ConnParams, asserts: &[assertions::Assertion]) -> Vec<AssertionResult> {
    let mut out = Vec::new();
    let mut clients: std::collections::HashMap<String, PgClient> = std::collections::HashMap::new();
    for a in asserts {
        if !clients.contains_key(&a.database) {
            match conn.with_dbname(&a.database).connect().await {
                Ok(c) => {
                    clients.insert(a.database.clone(), c);
                }
                Err(e) => {
                    out.push(assertion_result(a, false, format!("cannot connect: {e}")));
                    continue;
                }
            }
        }
        let Some(c) = clients.get(&a.database) else { continue };
        let (ok, result) = match c.client.query(a.sql.as_str(), &[]).await {
            Err(e) => (false, format!("an error: {}", describe(&e))),
            Ok(rows) if rows.len() != 1 => (false, format!("{} rows (one boolean expected)", rows.len())),
            Ok(rows) => match rows[0].try_get::<_, Option<bool>>(0) {
                Ok(Some(true)) => (true, "true".into()),
                Ok(Some(false)) => (false, "false".into()),
                Ok(None) => (false, "NULL".into()),
                Err(_) => (false, "a value that is not a boolean".into()),
            },
        };
        out.push(assertion_result(a, ok, result));
    }
    out
}

fn assertion_result(a: &assertions::Assertion, ok: bool, result: String) -> AssertionResult {
    AssertionResult {
        name: a.name.clone(),
        location: a.location.clone(),
        database: a.database.clone(),
        sql: a.sql.clone(),
        ok,
        result,
    }
}

/// libpq conninfo value quoting.
fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// File name for a database's dump (names may hold anything).
fn dump_file_name(db: &str) -> String {
    let safe: String = db
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' })
        .collect();
    format!("{safe}.dump")
}

type DumpFailure = (Vec<DumpFile>, Vec<String>);

/// `pg_dump -Fc` of each database and `pg_dumpall --globals-only`, from the drill's server.
fn dump_all(
    inst: &Instance,
    tools: &PgBin,
    dir: &Path,
    dbs: &[String],
    interrupt: &Interrupt,
) -> std::result::Result<Vec<DumpFile>, DumpFailure> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let base = format!(
        "host={} port={} user={}",
        conninfo_value(&inst.socket_dir.display().to_string()),
        inst.port,
        conninfo_value(&inst.superuser)
    );
    let mut jobs: Vec<(String, PathBuf, Command)> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for db in dbs {
        let mut name = dump_file_name(db);
        while !used.insert(name.clone()) {
            name = format!("_{name}");
        }
        let path = dir.join(&name);
        let mut cmd = Command::new(tools.tool("pg_dump"));
        cmd.arg("--format=custom")
            .arg("--file")
            .arg(&path)
            .arg("--dbname")
            .arg(format!("{base} dbname={}", conninfo_value(db)));
        jobs.push((db.clone(), path, cmd));
    }
    let path = dir.join("globals.sql");
    let mut cmd = Command::new(tools.tool("pg_dumpall"));
    cmd.arg("--globals-only").arg("--file").arg(&path).arg("--dbname").arg(format!("{base} dbname='postgres'"));
    jobs.push(("(globals)".into(), path, cmd));
    for (db, path, mut cmd) in jobs {
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        cmd.env_remove("PGPASSWORD").env_remove("PGSERVICE").env("PGAPPNAME", "pgkeep verify");
        let tool = if db == "(globals)" { "pg_dumpall" } else { "pg_dump" };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("cannot run {tool}: {e}"));
                continue;
            }
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if interrupt.is_set() => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        match status {
            Some(st) if st.success() => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                files.push(DumpFile { database: db, path: path.display().to_string(), size });
            }
            Some(st) => errors.push(format!("{tool} of {db} failed ({st}): {}", err.trim().replace('\n', " | "))),
            None => return Err((files, vec![format!("{tool} of {db} interrupted")])),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err((files, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256").unwrap(), 256);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert_eq!(parse_memory("1G").unwrap(), 1024);
        assert_eq!(parse_memory("2gb").unwrap(), 2048);
        assert!(parse_memory("16").is_err());
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn dump_names_are_safe() {
        assert_eq!(dump_file_name("app"), "app.dump");
        assert_eq!(dump_file_name("a/b c"), "a_b_c.dump");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
    }
}
