//! `pgkeep backup` with the files driver.
//!
//! Order matters (invariants 1 and 5): start marker → pg_backup_start (session held) → copy
//! files → pg_control last → pg_backup_stop → backup_label/tablespace_map stored → every WAL
//! segment start..stop confirmed in the archive and verified → manifest (the commit).
//! Any error before the manifest leaves no usable backup; dropping the session aborts the
//! server-side backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgkeep_wal::{xlog_file_name, Lsn};
use serde::Serialize;

use super::changed::{self, WalRange};
use super::files::{copy_files, store_file, CopyParams, StoredFile};
use super::incremental::{self, BackupType, IncrementalBy, Reference};
use super::plan::{BackupPlan, ReadMode};
use super::throttle::Throttle;
use super::{id, BackupError};
use crate::pg::session::parse_backup_label;
use crate::pg::{BackupSession, ConnParams, PgClient, ServerInfo};
use crate::progress::Progress;
use crate::repo::catalog::{self, BackupState};
use crate::repo::frame::Compression;
use crate::repo::lock::RepoLock;
use crate::repo::manifest::{
    DataObject, Entry, EntryKind, Manifest, StartedMarker, Tablespace, BLCKSZ, MANIFEST_FORMAT,
};
use crate::repo::{layout, Repository};

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub label: Option<String>,
    pub jobs: usize,
    pub max_rate: Option<u64>,
    pub archive_timeout: Duration,
    pub compress_level: i32,
    pub fast_checkpoint: bool,
    /// `--type` (or `[backup] type`).
    pub backup_type: BackupType,
    pub incremental_by: IncrementalBy,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub driver: String,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub duration_seconds: f64,
    pub backup_window_seconds: f64,
    pub files: u64,
    pub size: u64,
    pub stored_size: u64,
    pub tablespaces: Vec<Tablespace>,
    pub removed_incomplete: Vec<String>,
    /// `full`, `incr` or `diff` (a `full` when an incremental found no backup to refer to).
    #[serde(rename = "type")]
    pub backup_type: String,
    #[serde(flatten)]
    pub reads: ReadReport,
    /// Wall time of each phase, in order (files driver; empty for snapshot backups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseTime>,
    /// Snapshot backups: the snapshot set, spread, hooks, state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<super::snapshot::run::SnapshotReport>,
}

/// One phase of a backup and its wall time: where a slow backup spent its time.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    pub phase: &'static str,
    pub seconds: f64,
}

/// Times consecutive phases: each `end` closes the phase begun at the previous one.
struct PhaseClock {
    last: Instant,
    phases: Vec<PhaseTime>,
}

impl PhaseClock {
    fn since(began: Instant) -> Self {
        PhaseClock { last: began, phases: Vec::new() }
    }

    fn end(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases.push(PhaseTime { phase, seconds: (now - self.last).as_secs_f64() });
        self.last = now;
    }
}

/// What a files backup read from PGDATA, and (incremental) why files were read whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental_by: Option<String>,
    pub files_read_whole: u64,
    /// Reason → number of files read whole for it (incremental backups).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub whole_file_reasons: BTreeMap<String, u64>,
    /// What made the WAL walk uncertain, when it was (every relation file is then read whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_walk_detail: Option<String>,
    pub bytes_read: u64,
}

/// Everything a backup needs, resolved by the command entry point.
pub struct BackupInputs<'a> {
    pub repo: &'a Repository,
    pub conn: &'a ConnParams,
    pub pgdata: Option<&'a Path>,
    pub options: &'a BackupOptions,
    pub progress: Arc<dyn Progress>,
}

pub fn run(inputs: BackupInputs<'_>) -> crate::Result<BackupReport> {
    let began = Instant::now();
    let repo = inputs.repo;
    let rt = repo.runtime().clone();
    let progress = inputs.progress.clone();

    let client = rt.block_on(inputs.conn.connect())?;
    let server = rt.block_on(ServerInfo::read(&client))?;
    repo.check_cluster(server.system_identifier, server.major)?;
    check_server(&server)?;
    let pgdata = resolve_pgdata(inputs.pgdata, &server, inputs.conn)?;

    let _lock = RepoLock::acquire(repo, "backup")?;
    let removed_incomplete = remove_stale(repo)?;

    let reference = match inputs.options.backup_type {
        BackupType::Full => None,
        kind => {
            let r = incremental::choose_reference(repo, kind)?;
            if r.is_none() {
                tracing::warn!("no complete files backup to base a {} backup on: taking a full backup", kind.as_str());
            }
            r
        }
    };
    if let Some(r) = &reference {
        if r.manifest.system_identifier != server.system_identifier.to_string() || r.manifest.pg_major != server.major {
            return Err(BackupError::Other(format!(
                "reference backup {} is of another cluster or major (system identifier {}, PostgreSQL {}); hint: take a full backup (`pgkeep backup --type full`)",
                r.manifest.id, r.manifest.system_identifier, r.manifest.pg_major
            ))
            .into());
        }
    }

    // The WAL walk of an incremental starts now, on the segments already archived, so that it
    // overlaps everything up to the end of the checkpoint; it learns where to stop when
    // pg_backup_start returns.
    let walk_end = changed::WalEnd::unknown();
    let walk_range =
        reference.as_ref().filter(|_| inputs.options.incremental_by == IncrementalBy::Wal).map(|r| WalRange {
            from: r.manifest.start_lsn,
            from_timeline: r.manifest.timeline,
            to_timeline: server.timeline,
            seg_size: server.wal_segment_size,
            pg_major: server.major,
            system_identifier: server.system_identifier,
        });
    let wal_dir = pgdata.join("pg_wal");
    std::thread::scope(|sc| {
        let walker = walk_range.as_ref().map(|range| sc.spawn(|| changed::walk(repo, &wal_dir, range, &walk_end)));
        let _abandon = changed::AbandonUnlessSet(&walk_end);
        let taken: Vec<String> = repo.storage().list_dirs(layout::BACKUP_PREFIX)?;
        let backup_id = id::new_id(Utc::now(), &taken);
        let marker = StartedMarker {
            id: backup_id.clone(),
            started_at: Utc::now(),
            host: crate::hostname(),
            pid: std::process::id(),
            driver: "files".into(),
        };
        repo.put_json(&layout::backup_started_key(&backup_id), &marker)?;

        let what = What {
            id: &backup_id,
            opts: inputs.options,
            reference: reference.as_ref(),
            began,
            walk: walker.map(|w| (w, &walk_end)),
        };
        finish(
            repo,
            &backup_id,
            take(repo, &server, client, &pgdata, what, progress.as_ref()),
            removed_incomplete,
            began,
        )
    })
}

/// The report of a backup that succeeded; or, after a failure (not a kill), the backup's
/// objects removed: nothing usable is ever listed.
fn finish(
    repo: &Repository,
    backup_id: &str,
    result: crate::Result<BackupReport>,
    removed_incomplete: Vec<String>,
    began: Instant,
) -> crate::Result<BackupReport> {
    match result {
        Ok(mut report) => {
            report.removed_incomplete = removed_incomplete;
            report.duration_seconds = began.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            let _ = repo.storage().delete_prefix(&layout::backup_dir(backup_id));
            Err(e)
        }
    }
}

pub(crate) fn check_server(server: &ServerInfo) -> Result<(), BackupError> {
    if server.in_recovery {
        return Err(BackupError::Standby);
    }
    if server.wal_level != "replica" && server.wal_level != "logical" {
        return Err(BackupError::WalLevel { level: server.wal_level.clone() });
    }
    if server.archive_mode != "on" && server.archive_mode != "always" {
        return Err(BackupError::ArchivingOff { detail: format!("archive_mode = {}", server.archive_mode) });
    }
    let cmd = server.archive_command.as_deref().unwrap_or("").trim();
    if server.archive_library.is_none() && (cmd.is_empty() || cmd == "(disabled)") {
        return Err(BackupError::ArchivingOff { detail: "archive_command is empty".into() });
    }
    Ok(())
}

/// PGDATA as given (checked against the server) or the server's data_directory.
pub(crate) fn resolve_pgdata(
    given: Option<&Path>,
    server: &ServerInfo,
    conn: &ConnParams,
) -> Result<PathBuf, BackupError> {
    let pgdata = match (given, &server.data_directory) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => return Err(BackupError::Other(
            "the data directory is unknown (the role cannot read data_directory); hint: pass --pgdata or set PGDATA"
                .into(),
        )),
    };
    let control = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&control)
        .map_err(|e| BackupError::Read { path: control.display().to_string(), detail: e.to_string() })?;
    // ControlFileData starts with system_identifier (catalog/pg_control.h).
    let sysid = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).unwrap_or(0);
    if sysid != server.system_identifier {
        return Err(BackupError::WrongPgdata {
            pgdata: pgdata.display().to_string(),
            server: conn.describe(),
            detail: format!("its system identifier is {sysid}, the server's is {}", server.system_identifier),
        });
    }
    Ok(pgdata)
}

/// Remove backups left incomplete by killed runs. Safe: we hold the backup lock, so none of
/// them is running.
pub(crate) fn remove_stale(repo: &Repository) -> crate::Result<Vec<String>> {
    if let Err(e) = repo.storage().remove_stale_staging_under(layout::WAL_PREFIX) {
        tracing::warn!("{e}");
    }
    // Before their backups go: a killed run's unfinished uploads hold storage nobody sees.
    if let Err(e) = repo.storage().raw().abort_stale_uploads() {
        tracing::warn!("{e}");
    }
    let mut removed = Vec::new();
    for (id, state) in catalog::states(repo)? {
        if state == BackupState::Incomplete {
            // Snapshots on record: only the snapshot flow (or expire) may remove it, after
            // deleting them.
            if repo.storage().head(&layout::snapshots_key(&id))?.is_some() {
                continue;
            }
            repo.storage().delete_prefix(&layout::backup_dir(&id))?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// The backup being taken: its id, options and (incremental) reference.
struct What<'a> {
    id: &'a str,
    opts: &'a BackupOptions,
    reference: Option<&'a Reference>,
    /// When the command began (the `prepare` phase ends where `take` begins).
    began: Instant,
    /// The incremental's WAL walk, running, and where it learns its end.
    walk: Option<(ScopedJoinHandle<'a, changed::ChangeSet>, &'a changed::WalEnd)>,
}

fn take(
    repo: &Repository,
    server: &ServerInfo,
    client: PgClient,
    pgdata: &Path,
    what: What<'_>,
    progress: &dyn Progress,
) -> crate::Result<BackupReport> {
    let mut clock = PhaseClock::since(what.began);
    clock.end("prepare");
    let (backup_id, opts, reference) = (what.id, what.opts, what.reference);
    let rt = repo.runtime().clone();
    let label = opts.label.clone().unwrap_or_else(|| format!("pgkeep backup {backup_id}"));
    let tablespaces_sql = rt.block_on(ServerInfo::tablespaces(&client))?;
    progress.phase("checkpoint (pg_backup_start)", None);
    let (walker, walk_end) = what.walk.unzip();
    let started = rt.block_on(BackupSession::start(client, server.major, &label, opts.fast_checkpoint));
    if let (Ok((_, start)), Some(end)) = (&started, walk_end) {
        end.set(start.lsn);
    }
    let (session, start) = started?;
    progress.finish_phase();
    clock.end("checkpoint");
    // From here on, returning early drops `session`, which ends the server-side backup.
    let mut plan = BackupPlan::build(pgdata)
        .map_err(|e| BackupError::Read { path: pgdata.display().to_string(), detail: e.to_string() })?;
    clock.end("list_files");
    let changes = walker.map(|w| {
        progress.phase("changed blocks (WAL walk)", None);
        let changes = w.join().expect("the WAL walk does not panic");
        progress.finish_phase();
        clock.end("wal_walk");
        changes
    });
    let window_start = Instant::now();
    let mut reads = ReadReport::default();
    if let Some(r) = reference {
        reads = choose_reads(pgdata, &mut plan, r, changes, opts.incremental_by)?;
    }
    let bytes_read = AtomicU64::new(0);
    let throttle = opts.max_rate.map(Throttle::new);
    let compression = Compression::Zstd(opts.compress_level);
    let params = CopyParams {
        storage: repo.storage(),
        backup_id,
        compression,
        jobs: opts.jobs,
        throttle: throttle.as_ref(),
        progress,
        bytes_read: &bytes_read,
    };
    progress.phase("copy files", Some(plan.total_bytes));
    let mut outcome = copy_files(&params, &plan.files)?;
    // pg_control goes last, in an object of its own.
    let control_key = layout::data_key(backup_id, "pg_control");
    let mut w = repo.storage().create_writer(&control_key)?;
    let mut buf = vec![0u8; 64 * 1024];
    let control = store_file(&plan.pg_control, &mut w, &params, &mut buf)?.ok_or_else(|| BackupError::Read {
        path: plan.pg_control.abs.display().to_string(),
        detail: "vanished".into(),
    })?;
    let length = w.written();
    let stored = w.finish()?;
    outcome.objects.push(("pg_control".into(), stored));
    outcome.files.push(StoredFile {
        rel: plan.pg_control.rel.clone(),
        size: control.size,
        mode: plan.pg_control.mode,
        mtime: plan.pg_control.mtime,
        blake3: control.blake3,
        object: Some("pg_control".into()),
        offset: 0,
        length,
        blocks: None,
    });
    reads.bytes_read = bytes_read.load(Ordering::Relaxed);
    reads.files_read_whole = 1 + plan.files.iter().filter(|f| f.read == ReadMode::Whole).count() as u64;
    progress.finish_phase();
    clock.end("copy");

    progress.phase("pg_backup_stop", None);
    let window = window_start.elapsed().as_secs_f64();
    // No server-side wait for archiving: PostgreSQL's own wait re-checks archive_status once per
    // second (a fixed second per backup), and only proves that *some* archive_command
    // succeeded. `confirm_wal` below waits for the segments in this repository itself and
    // reads them back, which is the guarantee invariant 1 needs.
    let stop = rt.block_on(session.stop(false, opts.archive_timeout))?;
    progress.finish_phase();
    clock.end("stop");

    let label_summary = repo.put_framed(&layout::backup_label_key(backup_id), stop.backup_label.as_bytes())?;
    let map_summary = match &stop.tablespace_map {
        Some(m) => Some(repo.put_framed(&layout::tablespace_map_key(backup_id), m.as_bytes())?),
        None => None,
    };

    let parsed = parse_backup_label(&stop.backup_label);
    let timeline = parsed.start_timeline.unwrap_or(server.timeline);
    let seg = server.wal_segment_size;
    let start_segno = start.lsn.segment_number(seg);
    let start_wal = parsed.start_wal.clone().unwrap_or_else(|| xlog_file_name(timeline, start_segno, seg));
    let stop_timeline = server.timeline;
    let stop_segno = Lsn(stop.lsn.0.saturating_sub(1)).segment_number(seg);
    let stop_wal = xlog_file_name(stop_timeline, stop_segno, seg);

    let tablespaces: Vec<Tablespace> =
        tablespaces_sql.into_iter().map(|(oid, name, location)| Tablespace { oid, name, location }).collect();
    let manifest = build_manifest(ManifestParts {
        id: backup_id,
        label: &label,
        server,
        timeline,
        stop_timeline,
        start_lsn: start.lsn,
        stop_lsn: stop.lsn,
        start_wal: &start_wal,
        stop_wal: &stop_wal,
        start_time: start.time,
        stop_time: stop.time,
        window,
        label_hash: hex::encode(label_summary.blake3),
        map_hash: map_summary.map(|s| hex::encode(s.blake3)),
        tablespaces: tablespaces.clone(),
        plan: &plan,
        outcome: &outcome,
        extra_stored: label_summary.framed_size + map_summary.map(|s| s.framed_size).unwrap_or(0),
        reference,
        kind: opts.backup_type,
        incremental_by: opts.incremental_by,
    });
    // Built while the archiver is still storing the last segment; written only once every
    // segment is confirmed (the manifest commits the backup).
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| crate::Error::other(e.to_string()))?;
    progress.phase("confirm WAL in archive", None);
    confirm_wal(repo, backup_id, timeline, start_segno, stop_segno, seg, opts.archive_timeout)?;
    progress.finish_phase();
    clock.end("confirm_wal");

    repo.put_framed(&layout::manifest_key(backup_id), &manifest_json)?;
    clock.end("manifest");

    Ok(BackupReport {
        id: backup_id.to_string(),
        driver: "files".into(),
        timeline,
        start_lsn: start.lsn,
        stop_lsn: stop.lsn,
        start_wal,
        stop_wal,
        start_time: start.time,
        stop_time: stop.time,
        duration_seconds: 0.0,
        backup_window_seconds: window,
        files: manifest.file_count,
        size: manifest.size,
        stored_size: manifest.stored_size,
        tablespaces,
        removed_incomplete: Vec::new(),
        backup_type: manifest.kind.clone(),
        reads,
        phases: clock.phases,
        snapshot: None,
    })
}

/// An incremental's reads: changed blocks from the WAL walk (or page LSNs), whole files where
/// it cannot vouch for them, with the reasons counted for the report.
fn choose_reads(
    pgdata: &Path,
    plan: &mut BackupPlan,
    r: &Reference,
    changes: Option<changed::ChangeSet>,
    by: IncrementalBy,
) -> crate::Result<ReadReport> {
    let control_path = pgdata.join("global/pg_control");
    let control =
        std::fs::read(&control_path).ok().and_then(|b| pgkeep_wal::parse_pg_control(&b).ok()).ok_or_else(|| {
            BackupError::Read { path: control_path.display().to_string(), detail: "not a readable pg_control".into() }
        })?;
    if u64::from(control.blcksz) != BLCKSZ {
        return Err(BackupError::Other(format!(
            "the cluster's block size is {} bytes; incremental backups need {BLCKSZ}; hint: take full backups (`--type full`)",
            control.blcksz
        ))
        .into());
    }
    let detail = changes.as_ref().and_then(|c| c.uncertain.as_ref()).map(|(why, d)| format!("{why}: {d}"));
    if let Some(d) = &detail {
        tracing::warn!(
            "the WAL since backup {} cannot vouch for every block ({d}): relation files are read whole",
            r.manifest.id
        );
    }
    let whole_file_reasons =
        incremental::assign(&mut plan.files, &r.manifest, by, changes.as_ref(), control.relseg_size);
    Ok(ReadReport {
        reference: Some(r.manifest.id.clone()),
        incremental_by: Some(by.as_str().into()),
        files_read_whole: 0,
        whole_file_reasons,
        wal_walk_detail: detail,
        bytes_read: 0,
    })
}

/// Wait until every segment from start to stop is in the archive, then read each back and
/// verify it (invariant 1: the backup is committed only with its WAL).
pub fn confirm_wal(
    repo: &Repository,
    backup_id: &str,
    timeline: u32,
    start_segno: u64,
    stop_segno: u64,
    seg_size: u32,
    timeout: Duration,
) -> crate::Result<()> {
    let deadline = Instant::now() + timeout;
    for segno in start_segno..=stop_segno {
        let name = xlog_file_name(timeline, segno, seg_size);
        let key = layout::wal_key(&name);
        // The archiver usually stores the last segment within tens of milliseconds of
        // pg_backup_stop: look often at first, then every 20 ms.
        let mut pause = Duration::from_millis(2);
        loop {
            if repo.storage().head(&key)?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(
                    BackupError::WalMissing { id: backup_id.into(), segment: name, secs: timeout.as_secs() }.into()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        repo.check_framed(&key).map_err(|e| BackupError::WalDamaged {
            id: backup_id.into(),
            segment: name.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

struct ManifestParts<'a> {
    id: &'a str,
    label: &'a str,
    server: &'a ServerInfo,
    timeline: u32,
    stop_timeline: u32,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    start_wal: &'a str,
    stop_wal: &'a str,
    start_time: DateTime<Utc>,
    stop_time: DateTime<Utc>,
    window: f64,
    label_hash: String,
    map_hash: Option<String>,
    tablespaces: Vec<Tablespace>,
    plan: &'a BackupPlan,
    outcome: &'a super::files::CopyOutcome,
    extra_stored: u64,
    reference: Option<&'a Reference>,
    kind: BackupType,
    incremental_by: IncrementalBy,
}

fn build_manifest(p: ManifestParts<'_>) -> Manifest {
    let mut objects: Vec<DataObject> =
        p.outcome.objects.iter().map(|(name, size)| DataObject { name: name.clone(), size: *size }).collect();
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    let index = |name: &str| objects.iter().position(|o| o.name == name).map(|i| i as u32);
    let mut entries: Vec<Entry> = Vec::new();
    for s in &p.plan.structure {
        entries.push(Entry {
            path: s.rel.clone(),
            kind: match s.kind {
                crate::pg::datadir::Kind::Dir => EntryKind::Dir,
                _ => EntryKind::Link,
            },
            mode: s.mode,
            size: 0,
            mtime: s.mtime,
            blake3: None,
            object: None,
            offset: 0,
            length: 0,
            target: s.target.clone(),
            blocks: None,
        });
    }
    for f in &p.outcome.files {
        entries.push(Entry {
            path: f.rel.clone(),
            kind: EntryKind::File,
            mode: f.mode,
            size: f.size,
            mtime: f.mtime,
            blake3: Some(hex::encode(f.blake3)),
            object: f.object.as_deref().and_then(index),
            offset: f.offset,
            length: f.length,
            target: None,
            blocks: f.blocks.clone(),
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let size = p.outcome.files.iter().map(|f| f.size).sum();
    let stored_size = objects.iter().map(|o| o.size).sum::<u64>() + p.extra_stored;
    Manifest {
        format: MANIFEST_FORMAT,
        id: p.id.to_string(),
        label: p.label.to_string(),
        kind: if p.reference.is_some() { p.kind.as_str().into() } else { "full".into() },
        reference: p.reference.map(|r| r.manifest.id.clone()),
        chain: p.reference.map(|r| r.chain.clone()).unwrap_or_default(),
        incremental_by: p.reference.map(|_| p.incremental_by.as_str().into()),
        driver: "files".into(),
        pgkeep_version: env!("CARGO_PKG_VERSION").into(),
        system_identifier: p.server.system_identifier.to_string(),
        pg_version_num: p.server.version_num,
        pg_major: p.server.major,
        wal_segment_size: p.server.wal_segment_size,
        data_checksums: p.server.data_checksums,
        timeline: p.timeline,
        stop_timeline: p.stop_timeline,
        start_lsn: p.start_lsn,
        stop_lsn: p.stop_lsn,
        start_wal: p.start_wal.to_string(),
        stop_wal: p.stop_wal.to_string(),
        start_time: p.start_time,
        stop_time: p.stop_time,
        backup_window_seconds: p.window,
        backup_label_blake3: p.label_hash,
        tablespace_map_blake3: p.map_hash,
        tablespaces: p.tablespaces,
        size,
        stored_size,
        file_count: p.outcome.files.len() as u64,
        objects,
        entries,
        snapshots: Vec::new(),
        snapshot_layout: None,
    }
}
