//! `pgkeep backup` with snapshot volumes.
//!
//! Order (invariants 1, 5, 6): coverage check and driver preflight → lock, start marker →
//! pg_backup_start (session held) → `before` hook → every volume snapshot requested (in
//! parallel; striped groups atomically or frozen) → snapshot records stored → `after` hook →
//! pg_backup_stop as soon as every snapshot is acknowledged → backup_label/tablespace_map
//! stored → wait until every snapshot is `completed` (or `--no-wait`: pending, finished later)
//! → WAL start..stop confirmed in the archive → manifest (the commit) → `complete` hook.
//!
//! Any failure after pg_backup_start still calls pg_backup_stop, deletes the snapshots taken
//! (those that cannot be deleted stay recorded under the backup, which stays `incomplete`
//! until the next snapshot backup or `pgkeep expire` deletes them) and lists nothing usable.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgkeep_wal::{xlog_file_name, Lsn};
use serde::{Deserialize, Serialize};

use super::coverage::{self, PgPaths, Root};
use super::freeze::Frozen;
use super::{
    driver, records_from_values, records_to_values, validate, DriverKind, SnapContext, SnapshotConfig, SnapshotDriver,
    SnapshotError, SnapshotFailure, SnapshotLayout, SnapshotRecord, SnapshotState, VolumeConfig,
};
use crate::backup::hooks::{run_hook, HookRun};
use crate::backup::id;
use crate::backup::run::{check_server, confirm_wal, remove_stale, resolve_pgdata, BackupInputs, BackupReport};
use crate::pg::session::parse_backup_label;
use crate::pg::{BackupSession, ServerInfo};
use crate::repo::catalog::{self, BackupState};
use crate::repo::lock::RepoLock;
use crate::repo::manifest::{Manifest, StartedMarker, Tablespace, MANIFEST_FORMAT};
use crate::repo::{layout, Repository};

#[derive(Debug, Clone, Default)]
pub struct SnapshotRunOptions {
    /// Test knob (`--stagger-snapshots`): wait this long between volume snapshots.
    pub stagger: Option<Duration>,
    /// Record snapshots as pending instead of waiting for `completed`.
    pub no_wait: bool,
}

/// What a snapshot backup adds to [`BackupReport`].
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// `complete`, or `pending` (`--no-wait`: committed later by `list` / `backup --finish`).
    pub state: String,
    pub snapshots: Vec<SnapshotRecord>,
    /// Seconds between the first and the last snapshot acknowledgement.
    pub snapshot_spread_seconds: f64,
    /// Stripe groups frozen while their snapshots were requested, and for how long (s).
    pub frozen: BTreeMap<String, f64>,
    pub hooks: Vec<HookRun>,
    pub layout: SnapshotLayout,
}

/// The snapshots taken so far, stored under the backup as soon as they exist, so that a
/// killed run's snapshots can still be found and deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotProgress {
    pub id: String,
    pub snapshots: Vec<SnapshotRecord>,
}

fn drivers_for(
    cfg: &SnapshotConfig,
    kinds: impl IntoIterator<Item = DriverKind>,
    rt: &tokio::runtime::Handle,
) -> Result<BTreeMap<DriverKind, Box<dyn SnapshotDriver>>, SnapshotError> {
    let mut m = BTreeMap::new();
    for k in kinds {
        if let std::collections::btree_map::Entry::Vacant(e) = m.entry(k) {
            e.insert(driver(k, cfg, rt)?);
        }
    }
    Ok(m)
}

/// A set of volumes snapshotted by one driver call, possibly inside one freeze.
struct Unit<'a> {
    kind: DriverKind,
    vols: Vec<&'a VolumeConfig>,
    freeze: Option<(String, std::path::PathBuf)>,
}

fn plan_units<'a>(
    cfg: &'a SnapshotConfig,
    drivers: &BTreeMap<DriverKind, Box<dyn SnapshotDriver>>,
    roots: &[Root],
) -> Result<Vec<Unit<'a>>, SnapshotError> {
    let mut units: Vec<Unit<'a>> = Vec::new();
    for v in &cfg.volumes {
        let kind = v.kind();
        let atomic = drivers.get(&kind).map(|d| d.features().atomic_multi_volume).unwrap_or(false);
        if atomic {
            match units.iter_mut().find(|u| u.kind == kind) {
                Some(u) => u.vols.push(v),
                None => units.push(Unit { kind, vols: vec![v], freeze: None }),
            }
            continue;
        }
        match &v.stripe_group {
            None => units.push(Unit { kind, vols: vec![v], freeze: None }),
            Some(g) => {
                let root = roots.iter().find(|r| r.volume == v.name).map(|r| r.root.clone()).unwrap_or_default();
                match units.iter_mut().find(|u| u.freeze.as_ref().is_some_and(|(n, _)| n == g)) {
                    Some(u) => {
                        if u.freeze.as_ref().is_some_and(|(_, p)| *p != root) {
                            return Err(SnapshotError::Config(format!(
                                "stripe_group {g:?}: members are mounted at different places ({} and {}); members of one striped file system share one mount point",
                                u.freeze.as_ref().map(|(_, p)| p.display().to_string()).unwrap_or_default(),
                                root.display()
                            )));
                        }
                        u.vols.push(v)
                    }
                    None => units.push(Unit { kind, vols: vec![v], freeze: Some((g.clone(), root)) }),
                }
            }
        }
    }
    Ok(units)
}

struct Taken {
    records: Vec<SnapshotRecord>,
    frozen: BTreeMap<String, f64>,
}

/// The records of one unit, and (stripe group, seconds frozen) when it was frozen.
type UnitOutcome = (Vec<SnapshotRecord>, Option<(String, f64)>);

fn run_unit(
    u: &Unit<'_>,
    drivers: &BTreeMap<DriverKind, Box<dyn SnapshotDriver>>,
    ctx: &SnapContext,
) -> Result<UnitOutcome, SnapshotFailure> {
    let d = drivers.get(&u.kind).ok_or_else(|| SnapshotError::Other(format!("no {} driver", u.kind)))?;
    let frozen = match &u.freeze {
        Some((_, p)) => Some(Frozen::freeze(p)?),
        None => None,
    };
    let res = d.snapshot(&u.vols, ctx);
    // Thaw right after the acknowledgement, whatever happened (dropping thaws too).
    let thawed = match (frozen, &u.freeze) {
        (Some(f), Some((g, _))) => match f.thaw() {
            Ok(s) => Some((g.clone(), s)),
            Err(e) => {
                let taken = res.unwrap_or_else(|f| f.taken);
                return Err(SnapshotFailure::new(e, taken));
            }
        },
        _ => None,
    };
    res.map(|r| (r, thawed))
}

fn take_snapshots(
    units: &[Unit<'_>],
    drivers: &BTreeMap<DriverKind, Box<dyn SnapshotDriver>>,
    ctx: &SnapContext,
    stagger: Option<Duration>,
) -> Result<Taken, SnapshotFailure> {
    let mut taken = Taken { records: Vec::new(), frozen: BTreeMap::new() };
    let mut first_err = None;
    let results: Vec<_> = match stagger {
        Some(d) => {
            let mut v = Vec::new();
            for (i, u) in units.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(d);
                }
                let r = run_unit(u, drivers, ctx);
                let failed = r.is_err();
                v.push(r);
                if failed {
                    break;
                }
            }
            v
        }
        None => std::thread::scope(|s| {
            let handles: Vec<_> = units.iter().map(|u| s.spawn(|| run_unit(u, drivers, ctx))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err(SnapshotError::Other("a snapshot thread panicked".into()).into()))
                })
                .collect()
        }),
    };
    for r in results {
        match r {
            Ok((recs, fr)) => {
                taken.records.extend(recs);
                if let Some((g, s)) = fr {
                    taken.frozen.insert(g, s);
                }
            }
            Err(f) => {
                taken.records.extend(f.taken);
                first_err.get_or_insert(f.error);
            }
        }
    }
    match first_err {
        Some(error) => Err(SnapshotFailure { error, taken: taken.records }),
        None => Ok(taken),
    }
}

/// Delete `recs`; returns (deleted ids, failures).
pub fn delete_records(
    recs: &[SnapshotRecord],
    cfg: &SnapshotConfig,
    rt: &tokio::runtime::Handle,
) -> (Vec<String>, Vec<String>) {
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    let drivers = match drivers_for(cfg, recs.iter().map(|r| r.driver), rt) {
        Ok(d) => d,
        Err(e) => {
            failed
                .push(format!("{} ({e})", recs.iter().map(|r| r.snapshot_id.as_str()).collect::<Vec<_>>().join(", ")));
            return (deleted, failed);
        }
    };
    for r in recs {
        match drivers.get(&r.driver).map(|d| d.delete(r, cfg)) {
            Some(Ok(())) => deleted.push(r.snapshot_id.clone()),
            Some(Err(e)) => failed.push(e.to_string()),
            None => failed.push(format!("{}: no driver", r.snapshot_id)),
        }
    }
    (deleted, failed)
}

/// Remove a failed backup: its snapshots, then its repository objects. Snapshots that cannot
/// be deleted stay recorded (the backup stays `incomplete`; the next snapshot backup or
/// `pgkeep expire --backup ID` retries). Returns the sentence for the error message.
fn discard(repo: &Repository, cfg: &SnapshotConfig, id: &str, recs: &[SnapshotRecord]) -> String {
    let rt = repo.runtime().clone();
    let (deleted, failed) = delete_records(recs, cfg, &rt);
    let mut s = if recs.is_empty() {
        "no snapshot had been taken".to_string()
    } else if deleted.is_empty() {
        "no snapshot could be deleted".to_string()
    } else {
        format!("deleted snapshot(s) {}", deleted.join(", "))
    };
    if failed.is_empty() {
        let _ = repo.storage().delete_prefix(&layout::backup_dir(id));
    } else {
        let left: Vec<SnapshotRecord> = recs.iter().filter(|r| !deleted.contains(&r.snapshot_id)).cloned().collect();
        let _ = repo.put_json(&snapshots_key(id), &SnapshotProgress { id: id.to_string(), snapshots: left });
        s.push_str(&format!(
            "; ORPHANED (kept on record under backup {id}; retry with `pgkeep expire --backup {id}`): {}",
            failed.join("; ")
        ));
    }
    s
}

// The keys live with the other object keys; re-exported for the snapshot modules' callers.
pub use crate::repo::layout::{pending_key, snapshots_key};

/// Delete the snapshots of backups that a killed or failed run left behind, then their
/// directories. Called with the backup lock held.
pub fn cleanup_stale(repo: &Repository, cfg: &SnapshotConfig) -> crate::Result<Vec<String>> {
    let mut removed = Vec::new();
    for (id, state) in catalog::states(repo)? {
        if state != BackupState::Incomplete {
            continue;
        }
        let progress: Option<SnapshotProgress> = match repo.get_json(&snapshots_key(&id)) {
            Ok(p) => Some(p),
            Err(crate::Error::Storage(s)) if s.is_not_found() => None,
            // Its snapshots are unknown: keep the backup on record (remove_stale skips it too)
            // rather than stop this backup or lose track of them.
            Err(err) => {
                tracing::warn!("backup {id} is left in place: its snapshot record cannot be read ({err}); hint: delete its snapshots by hand, then `pgkeep expire --backup {id} --force`");
                continue;
            }
        };
        let Some(p) = progress else { continue };
        let (_, failed) = delete_records(&p.snapshots, cfg, repo.runtime());
        if failed.is_empty() {
            repo.storage().delete_prefix(&layout::backup_dir(&id))?;
            removed.push(id);
        }
    }
    Ok(removed)
}

fn lsn_env(id: &str, start: Lsn, stop: Option<Lsn>, pgdata: &Path) -> Vec<(String, String)> {
    let mut v = vec![
        ("PGKEEP_BACKUP_ID".to_string(), id.to_string()),
        ("PGKEEP_START_LSN".to_string(), start.to_string()),
        ("PGKEEP_PGDATA".to_string(), pgdata.display().to_string()),
    ];
    if let Some(s) = stop {
        v.push(("PGKEEP_STOP_LSN".to_string(), s.to_string()));
    }
    v
}

/// The driver name recorded for a backup: the kinds used, e.g. `btrfs` or `btrfs+ebs`.
fn driver_name(cfg: &SnapshotConfig) -> String {
    let kinds: std::collections::BTreeSet<&str> = cfg.volumes.iter().map(|v| v.kind().as_str()).collect();
    kinds.into_iter().collect::<Vec<_>>().join("+")
}

/// Take a snapshot backup.
pub fn backup(
    inputs: BackupInputs<'_>,
    cfg: &SnapshotConfig,
    sopts: &SnapshotRunOptions,
) -> crate::Result<BackupReport> {
    let began = Instant::now();
    let repo = inputs.repo;
    let rt = repo.runtime().clone();
    let progress = inputs.progress.clone();
    validate(&cfg.volumes)?;

    let client = rt.block_on(inputs.conn.connect())?;
    let server = rt.block_on(ServerInfo::read(&client))?;
    repo.check_cluster(server.system_identifier, server.major)?;
    check_server(&server)?;
    let pgdata = resolve_pgdata(inputs.pgdata, &server, inputs.conn)?;
    let drivers = drivers_for(cfg, cfg.volumes.iter().map(|v| v.kind()), &rt)?;

    // Coverage first: every PostgreSQL path on a configured volume, or nothing starts.
    let ts_sql = rt.block_on(ServerInfo::tablespaces(&client))?;
    let paths = PgPaths::resolve(&pgdata, &ts_sql)?;
    let mut roots = Vec::new();
    for v in &cfg.volumes {
        let d = drivers.get(&v.kind()).ok_or_else(|| SnapshotError::Other(format!("no {} driver", v.kind())))?;
        roots.push(Root { volume: v.name.clone(), root: d.root(v)? });
    }
    let mut layout = coverage::check(&paths, &roots)?;
    let units = plan_units(cfg, &drivers, &roots)?;

    let _lock = RepoLock::acquire(repo, "backup")?;
    let mut removed_incomplete = cleanup_stale(repo, cfg)?;
    removed_incomplete.extend(remove_stale(repo)?);

    let taken_ids: Vec<String> = repo.storage().list_dirs(layout::BACKUP_PREFIX)?;
    let backup_id = id::new_id(Utc::now(), &taken_ids);
    let ctx = SnapContext { backup_id: backup_id.clone(), system_identifier: server.system_identifier };
    for (kind, d) in &drivers {
        let vols: Vec<&VolumeConfig> = cfg.volumes.iter().filter(|v| v.kind() == *kind).collect();
        d.preflight(&vols, &ctx)?;
    }
    let marker = StartedMarker {
        id: backup_id.clone(),
        started_at: Utc::now(),
        host: crate::hostname(),
        pid: std::process::id(),
        driver: driver_name(cfg),
    };
    repo.put_json(&layout::backup_started_key(&backup_id), &marker)?;

    // What PostgreSQL fsyncs itself (data files at the checkpoint, WAL at commit) is in any
    // snapshot; files written without fsync (postgresql.conf edited a moment ago) are not in a
    // block-level snapshot until written back. Flush every volume's file system first, outside
    // the backup window.
    progress.phase("sync volumes", None);
    for r in &roots {
        if let Err(e) = syncfs(&r.root) {
            progress.note(&format!("cannot sync the file system of volume {} ({}): {e}", r.volume, r.root.display()));
        }
    }
    progress.finish_phase();
    let label = inputs.options.label.clone().unwrap_or_else(|| format!("pgkeep backup {backup_id}"));
    progress.phase("checkpoint (pg_backup_start)", None);
    let started = rt.block_on(BackupSession::start(client, server.major, &label, inputs.options.fast_checkpoint));
    let (session, start) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = repo.storage().delete_prefix(&layout::backup_dir(&backup_id));
            return Err(e.into());
        }
    };
    let window_start = Instant::now();
    progress.finish_phase();

    // Inside the bracket: before hook, snapshots, after hook. Whatever happens, pg_backup_stop
    // runs next.
    let mut hooks = Vec::new();
    let env = lsn_env(&backup_id, start.lsn, None, &pgdata);
    let bracket = (|| -> Result<Taken, SnapshotFailure> {
        if let Some(h) = run_hook("before", cfg.hooks.before.as_ref(), cfg, &env)? {
            hooks.push(h);
        }
        progress.phase("snapshot volumes", None);
        let taken = take_snapshots(&units, &drivers, &ctx, sopts.stagger)?;
        progress.finish_phase();
        // On record before anything else can fail, so the snapshots are never lost track of.
        let prog = SnapshotProgress { id: backup_id.clone(), snapshots: taken.records.clone() };
        if let Err(e) = repo.put_json(&snapshots_key(&backup_id), &prog) {
            return Err(SnapshotFailure::new(SnapshotError::Other(e.to_string()), taken.records));
        }
        let mut env2 = env.clone();
        env2.push((
            "PGKEEP_SNAPSHOT_IDS".into(),
            taken.records.iter().map(|r| format!("{}={}", r.volume, r.snapshot_id)).collect::<Vec<_>>().join(" "),
        ));
        match run_hook("after", cfg.hooks.after.as_ref(), cfg, &env2) {
            Ok(Some(h)) => hooks.push(h),
            Ok(None) => {}
            Err(e) => return Err(SnapshotFailure::new(e, taken.records)),
        }
        Ok(taken)
    })();
    let window = window_start.elapsed().as_secs_f64();

    let taken = match bracket {
        Ok(t) => t,
        Err(f) => {
            progress.finish_phase();
            // Close the backup on the server without waiting for the archive, then clean up.
            let stop = rt.block_on(session.stop(false, inputs.options.archive_timeout));
            let mut cleanup = discard(repo, cfg, &backup_id, &f.taken);
            cleanup = match stop {
                Ok(_) => format!("pg_backup_stop was called; {cleanup}"),
                Err(e) => {
                    format!("pg_backup_stop failed ({e}), the session was closed (which ends the backup); {cleanup}")
                }
            };
            return Err(SnapshotError::aborted(&backup_id, f.error.to_string(), cleanup).into());
        }
    };

    progress.phase("pg_backup_stop", None);
    let stopped = rt.block_on(session.stop(true, inputs.options.archive_timeout));
    progress.finish_phase();
    let abort = |cause: String, recs: &[SnapshotRecord]| -> crate::Error {
        let cleanup = discard(repo, cfg, &backup_id, recs);
        SnapshotError::aborted(&backup_id, cause, cleanup).into()
    };
    let stop = match stopped {
        Ok(s) => s,
        Err(e) => return Err(abort(e.to_string(), &taken.records)),
    };

    let mut records = taken.records;
    let rest = (|| -> crate::Result<(Manifest, bool)> {
        let label_summary = repo.put_framed(&layout::backup_label_key(&backup_id), stop.backup_label.as_bytes())?;
        let map_summary = match &stop.tablespace_map {
            Some(m) => Some(repo.put_framed(&layout::tablespace_map_key(&backup_id), m.as_bytes())?),
            None => None,
        };
        // Wait for completion (unless --no-wait).
        let pending = if sopts.no_wait {
            refresh_once(&mut records, cfg, &drivers)?;
            records.iter().any(|r| r.state == SnapshotState::Pending)
        } else {
            progress.phase("wait for snapshots to complete", None);
            wait_completed(&mut records, cfg, &drivers)?;
            progress.finish_phase();
            false
        };
        if let Some(bad) = records.iter().find(|r| r.state == SnapshotState::Error) {
            return Err(SnapshotError::rec(bad, "complete", "the snapshot is in state error").into());
        }
        let parsed = parse_backup_label(&stop.backup_label);
        let timeline = parsed.start_timeline.unwrap_or(server.timeline);
        let seg = server.wal_segment_size;
        let start_segno = start.lsn.segment_number(seg);
        let start_wal = parsed.start_wal.clone().unwrap_or_else(|| xlog_file_name(timeline, start_segno, seg));
        let stop_segno = Lsn(stop.lsn.0.saturating_sub(1)).segment_number(seg);
        let stop_wal = xlog_file_name(server.timeline, stop_segno, seg);
        progress.phase("confirm WAL in archive", None);
        confirm_wal(repo, &backup_id, timeline, start_segno, stop_segno, seg, inputs.options.archive_timeout)?;
        progress.finish_phase();

        // A request's start says nothing about when its point in time was fixed (a command may
        // take seconds to snapshot); the acknowledgements bound that.
        let times: Vec<DateTime<Utc>> = records.iter().map(|r| r.acknowledged_at).collect();
        let spread = match (times.iter().min(), times.iter().max()) {
            (Some(a), Some(b)) => (*b - *a).num_microseconds().unwrap_or(0) as f64 / 1e6,
            _ => 0.0,
        };
        layout.snapshot_spread_seconds = spread;
        layout.frozen = taken.frozen.keys().cloned().collect();
        let tablespaces: Vec<Tablespace> = ts_sql
            .iter()
            .map(|(oid, name, location)| Tablespace { oid: *oid, name: name.clone(), location: location.clone() })
            .collect();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: backup_id.clone(),
            label: label.clone(),
            kind: "full".into(),
            reference: None,
            chain: Vec::new(),
            incremental_by: None,
            driver: driver_name(cfg),
            pgkeep_version: env!("CARGO_PKG_VERSION").into(),
            system_identifier: server.system_identifier.to_string(),
            pg_version_num: server.version_num,
            pg_major: server.major,
            wal_segment_size: seg,
            data_checksums: server.data_checksums,
            timeline,
            stop_timeline: server.timeline,
            start_lsn: start.lsn,
            stop_lsn: stop.lsn,
            start_wal,
            stop_wal,
            start_time: start.time,
            stop_time: stop.time,
            backup_window_seconds: window,
            backup_label_blake3: hex::encode(label_summary.blake3),
            tablespace_map_blake3: map_summary.map(|s| hex::encode(s.blake3)),
            tablespaces,
            size: 0,
            stored_size: label_summary.framed_size + map_summary.map(|s| s.framed_size).unwrap_or(0),
            file_count: 0,
            objects: Vec::new(),
            entries: Vec::new(),
            snapshots: records_to_values(&records),
            snapshot_layout: Some(layout.clone()),
        };
        if pending {
            repo.put_json(&pending_key(&backup_id), &manifest)?;
        } else {
            repo.put_json(&layout::manifest_key(&backup_id), &manifest)?;
        }
        Ok((manifest, pending))
    })();
    let (manifest, pending) = match rest {
        Ok(x) => x,
        Err(e) => return Err(abort(e.to_string(), &records)),
    };
    // Committed (or recorded as pending): the progress record is no longer needed.
    let _ = repo.storage().delete(&snapshots_key(&backup_id));

    if !pending {
        let env3 = lsn_env(&backup_id, start.lsn, Some(stop.lsn), &pgdata);
        match run_hook("complete", cfg.hooks.complete.as_ref(), cfg, &env3) {
            Ok(Some(h)) => hooks.push(h),
            Ok(None) => {}
            Err(e) => {
                return Err(crate::Error::other(format!(
                    "backup {backup_id} is committed and usable, but {e}; hint: fix the complete hook (the backup itself needs nothing)"
                )))
            }
        }
    }

    Ok(BackupReport {
        id: backup_id,
        driver: manifest.driver.clone(),
        timeline: manifest.timeline,
        start_lsn: manifest.start_lsn,
        stop_lsn: manifest.stop_lsn,
        start_wal: manifest.start_wal.clone(),
        stop_wal: manifest.stop_wal.clone(),
        start_time: manifest.start_time,
        stop_time: manifest.stop_time,
        duration_seconds: began.elapsed().as_secs_f64(),
        backup_window_seconds: window,
        files: 0,
        size: 0,
        stored_size: manifest.stored_size,
        tablespaces: manifest.tablespaces.clone(),
        removed_incomplete,
        backup_type: "full".into(),
        reads: Default::default(),
        phases: Vec::new(),
        snapshot: Some(SnapshotReport {
            state: if pending { "pending".into() } else { "complete".into() },
            snapshots: records,
            snapshot_spread_seconds: layout.snapshot_spread_seconds,
            frozen: taken.frozen,
            hooks,
            layout,
        }),
    })
}

/// syncfs(2) of the file system holding `path`.
fn syncfs(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: syncfs on a valid, owned file descriptor.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn refresh_once(
    recs: &mut [SnapshotRecord],
    cfg: &SnapshotConfig,
    drivers: &BTreeMap<DriverKind, Box<dyn SnapshotDriver>>,
) -> Result<(), SnapshotError> {
    for (kind, d) in drivers {
        let mut mine: Vec<SnapshotRecord> = recs.iter().filter(|r| r.driver == *kind).cloned().collect();
        if mine.is_empty() {
            continue;
        }
        d.refresh(&mut mine, cfg)?;
        for m in mine {
            if let Some(r) = recs.iter_mut().find(|r| r.snapshot_id == m.snapshot_id && r.volume == m.volume) {
                *r = m;
            }
        }
    }
    Ok(())
}

fn wait_completed(
    recs: &mut [SnapshotRecord],
    cfg: &SnapshotConfig,
    drivers: &BTreeMap<DriverKind, Box<dyn SnapshotDriver>>,
) -> Result<(), SnapshotError> {
    let timeout = cfg.wait_timeout();
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        refresh_once(recs, cfg, drivers)?;
        if let Some(bad) = recs.iter().find(|r| r.state == SnapshotState::Error) {
            return Err(SnapshotError::rec(bad, "complete", "the snapshot went into state error"));
        }
        let Some(p) = recs.iter().find(|r| r.state == SnapshotState::Pending) else { return Ok(()) };
        if Instant::now() >= deadline {
            return Err(SnapshotError::WaitTimeout {
                volume: p.volume.clone(),
                snapshot: p.snapshot_id.clone(),
                secs: timeout.as_secs(),
                state: "pending".into(),
            });
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Outcome of finishing one pending backup.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    pub id: String,
    /// `complete`, `pending` (still), `failed` (a snapshot failed; the backup was removed) or
    /// `damaged` (its pending record cannot be read; left in place).
    pub state: String,
    pub detail: String,
}

/// Refresh pending backups: commit those whose snapshots all completed, remove those with a
/// failed snapshot. With `wait`, wait (up to the wait timeout) for each. Skips quietly when
/// another backup holds the lock and `wait` is off.
pub fn finish_pending(
    repo: &Repository,
    cfg: &SnapshotConfig,
    wait: bool,
    archive_timeout: Duration,
) -> crate::Result<Vec<Finished>> {
    let pending: Vec<String> =
        catalog::states(repo)?.into_iter().filter(|(_, s)| *s == BackupState::Pending).map(|(id, _)| id).collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let _lock = match RepoLock::acquire(repo, "backup") {
        Ok(l) => l,
        Err(e) if !wait => {
            tracing::info!("not refreshing pending backups: {e}");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    let rt = repo.runtime().clone();
    let mut out = Vec::new();
    for id in pending {
        // A damaged pending record is the only record of its snapshots: leave it alone.
        let mut m: Manifest = match repo.get_json(&pending_key(&id)) {
            Ok(m) => m,
            Err(e) => {
                out.push(Finished {
                    id,
                    state: "damaged".into(),
                    detail: format!("the pending record cannot be read: {e}"),
                });
                continue;
            }
        };
        let mut recs = records_from_values(&id, &m.snapshots)?;
        let drivers = drivers_for(cfg, recs.iter().map(|r| r.driver), &rt)?;
        let res = if wait { wait_completed(&mut recs, cfg, &drivers) } else { refresh_once(&mut recs, cfg, &drivers) };
        if let Err(e) = res {
            if recs.iter().any(|r| r.state == SnapshotState::Error) || wait {
                let cleanup = discard(repo, cfg, &id, &recs);
                out.push(Finished { id, state: "failed".into(), detail: format!("{e}; {cleanup}") });
            } else {
                out.push(Finished { id, state: "pending".into(), detail: format!("refresh failed: {e}") });
            }
            continue;
        }
        if recs.iter().any(|r| r.state == SnapshotState::Pending) {
            let n = recs.iter().filter(|r| r.state == SnapshotState::Pending).count();
            m.snapshots = records_to_values(&recs);
            repo.put_json(&pending_key(&id), &m)?;
            out.push(Finished { id, state: "pending".into(), detail: format!("{n} snapshot(s) still pending") });
            continue;
        }
        // Every snapshot completed: confirm the WAL again (cheap) and commit.
        let seg = m.wal_segment_size;
        let start_segno = m.start_lsn.segment_number(seg);
        let stop_segno = Lsn(m.stop_lsn.0.saturating_sub(1)).segment_number(seg);
        if let Err(e) = confirm_wal(repo, &id, m.timeline, start_segno, stop_segno, seg, archive_timeout) {
            out.push(Finished { id, state: "pending".into(), detail: format!("snapshots completed, but {e}") });
            continue;
        }
        m.snapshots = records_to_values(&recs);
        repo.put_json(&layout::manifest_key(&id), &m)?;
        let _ = repo.storage().delete(&pending_key(&id));
        let env = lsn_env(
            &id,
            m.start_lsn,
            Some(m.stop_lsn),
            Path::new(&m.snapshot_layout.as_ref().map(|l| l.pgdata.original.clone()).unwrap_or_default()),
        );
        let detail = match run_hook("complete", cfg.hooks.complete.as_ref(), cfg, &env) {
            Ok(_) => "every snapshot completed; committed".to_string(),
            Err(e) => format!("every snapshot completed; committed; but {e}"),
        };
        out.push(Finished { id, state: "complete".into(), detail });
    }
    Ok(out)
}
