//! Restore of a snapshot backup: clone every volume (each driver restores its own snapshots),
//! repoint pg_wal and the tablespace links into the clones, make the data directory look like
//! a base backup (no postmaster.pid, empty pg_wal), write backup_label, tablespace_map and the
//! recovery settings. `pg_ctl start -D <pgdata>` then recovers to the end of the backup or to
//! the PITR target (invariant 6: the snapshot set is never started crash-consistent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::materialize;
use super::plan::{check_manifest, fetch_label, RestoreOptions, RestoredTablespace, TimelineView};
use super::recovery::{self, ArchiveMode, RecoverySettings};
use super::target::RecoveryTarget;
use crate::backup::hooks::{run_hook, HookRun};
use crate::backup::snapshot::{
    driver, records_from_values, DriverKind, RestoreRequest, RestoreSetOptions, RestoredVolume, SnapshotConfig,
    SnapshotError, SnapshotLayout, SnapshotRecord,
};
use crate::fsutil;
use crate::pg::datadir::{EXCLUDE_DIR_CONTENTS, EXCLUDE_FILES};
use crate::repo::manifest::{is_normal_relative, Manifest};
use crate::repo::Repository;

/// Options only snapshot restores have.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRestoreOptions {
    /// `--volume NAME=PATH`: where each volume's clone goes.
    pub volumes: Vec<(String, PathBuf)>,
    /// EBS: availability zone of the new volumes.
    pub availability_zone: Option<String>,
    /// EBS: attach the new volumes to this instance.
    pub attach_to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRestoreReport {
    pub backup: String,
    pub driver: String,
    /// The restored data directory (null when the volumes are not mounted on this machine).
    pub pgdata: Option<String>,
    pub pg_wal: Option<String>,
    pub volumes: Vec<RestoredVolume>,
    pub tablespaces: Vec<RestoredTablespace>,
    pub target: RecoveryTarget,
    pub recovery_settings: Vec<(String, String)>,
    /// `off`: the copy cannot archive into the source's repository; `preserve`: as the source.
    pub archive_mode: ArchiveMode,
    #[serde(flatten)]
    pub timelines: TimelineView,
    pub hooks: Vec<HookRun>,
    pub duration_seconds: f64,
    /// What the operator does next.
    pub next: String,
}

/// Parse `NAME=PATH`.
pub fn parse_volume_arg(s: &str) -> Result<(String, PathBuf), SnapshotError> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), crate::fsutil::absolute(Path::new(p)))),
        _ => Err(SnapshotError::Config(format!(
            "invalid --volume {s:?}; hint: use NAME=PATH with a volume name from the backup"
        ))),
    }
}

fn werr(path: &Path, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Other(format!("cannot write {}: {e}", path.display()))
}

pub fn restore(
    repo: &Repository,
    cfg: &SnapshotConfig,
    m: &Manifest,
    opts: &RestoreOptions,
    sopts: &SnapshotRestoreOptions,
) -> crate::Result<SnapshotRestoreReport> {
    let mut made = Vec::new();
    restore_tracked(repo, cfg, m, opts, sopts, &mut made)
}

/// [`restore`], reporting each volume's clone in `made` (which starts empty) as soon as it
/// exists — also when a later step fails — so a caller that throws the restore away (a restore
/// drill) can discard every clone. A clone a failed driver call left half-made at an explicit
/// target that did not exist before is reported too.
pub fn restore_tracked(
    repo: &Repository,
    cfg: &SnapshotConfig,
    m: &Manifest,
    opts: &RestoreOptions,
    sopts: &SnapshotRestoreOptions,
    made: &mut Vec<RestoredVolume>,
) -> crate::Result<SnapshotRestoreReport> {
    let archive_mode = opts.archive_mode;
    let began = Instant::now();
    let id = m.id.clone();
    let layout: &SnapshotLayout = m.snapshot_layout.as_ref().ok_or_else(|| {
        SnapshotError::Other(format!(
            "backup {id} has no snapshot layout in its manifest; hint: it was not taken by a snapshot driver"
        ))
    })?;
    let records = records_from_values(&id, &m.snapshots)?;
    for (name, _) in &sopts.volumes {
        if !records.iter().any(|r| &r.volume == name) {
            let have: Vec<&str> = records.iter().map(|r| r.volume.as_str()).collect();
            return Err(SnapshotError::Config(format!(
                "backup {id} has no volume {name:?} (it has: {}); hint: --volume NAME=PATH takes a volume name from the backup",
                have.join(", ")
            ))
            .into());
        }
    }
    check_manifest(&id, m)?;
    // The layout is input too: its paths must stay inside the clones.
    let mut rels = vec![("pgdata", &layout.pgdata.rel), ("pg_wal", &layout.pg_wal.rel)];
    rels.extend(layout.tablespaces.iter().map(|t| ("tablespace", &t.at.rel)));
    if let Some((what, rel)) = rels.into_iter().find(|(_, r)| !r.is_empty() && !is_normal_relative(r)) {
        return Err(super::RestoreError::BadManifest {
            id,
            problem: format!(
                "snapshot layout {what} path {rel:?} is not a relative, normalised path inside its volume"
            ),
        }
        .into());
    }
    let label = fetch_label(repo, m)?;
    let timelines = TimelineView::of(repo, m, opts.timeline.as_deref())?;

    // Each driver restores its own snapshots: local clones one volume per call (so each is
    // reported the moment it exists), cloud volumes as one set.
    let rt = repo.runtime().clone();
    let mut by_kind: BTreeMap<DriverKind, Vec<&SnapshotRecord>> = BTreeMap::new();
    for r in &records {
        by_kind.entry(r.driver).or_default().push(r);
    }
    let set = RestoreSetOptions {
        availability_zone: sopts.availability_zone.clone(),
        attach_to: sopts.attach_to.clone(),
        backup_id: id.clone(),
    };
    for (kind, recs) in &by_kind {
        let d = driver(*kind, cfg, &rt)?;
        let reqs: Vec<RestoreRequest<'_>> = recs
            .iter()
            .map(|r| RestoreRequest {
                record: r,
                config: cfg.volume(&r.volume),
                target: sopts.volumes.iter().find(|(n, _)| n == &r.volume).map(|(_, p)| p.clone()),
            })
            .collect();
        let one_by_one = d.features().local_restore;
        let batches: Vec<&[RestoreRequest<'_>]> = if one_by_one { reqs.chunks(1).collect() } else { vec![&reqs] };
        for batch in batches {
            let existed: Vec<bool> =
                batch.iter().map(|r| r.target.as_ref().is_some_and(|t| std::fs::symlink_metadata(t).is_ok())).collect();
            match d.restore(batch, &set, cfg) {
                Ok(v) => made.extend(v),
                Err(e) => {
                    let done: Vec<String> = made.iter().map(|v| v.created.clone()).collect();
                    let also = if done.is_empty() {
                        String::new()
                    } else {
                        format!(" (already restored: {})", done.join(", "))
                    };
                    if one_by_one {
                        for (r, existed) in batch.iter().zip(existed) {
                            match &r.target {
                                Some(t) if !existed && std::fs::symlink_metadata(t).is_ok() => {
                                    made.push(RestoredVolume {
                                        volume: r.record.volume.clone(),
                                        snapshot_id: r.record.snapshot_id.clone(),
                                        root: None,
                                        created: t.display().to_string(),
                                        device: None,
                                        attached_to: None,
                                    })
                                }
                                _ => {}
                            }
                        }
                    }
                    return Err(SnapshotError::Other(format!("restore of backup {id} failed: {e}{also}")).into());
                }
            }
        }
    }
    let restored: &[RestoredVolume] = made;

    let mut hooks = Vec::new();
    if sopts.attach_to.is_some() && by_kind.contains_key(&DriverKind::Ebs) {
        let vols: Vec<String> = restored
            .iter()
            .map(|v| {
                format!(
                    "{}={}:{}:{}",
                    v.volume,
                    v.created,
                    v.device.clone().unwrap_or_default(),
                    v.root.clone().unwrap_or_default()
                )
            })
            .collect();
        let env = vec![
            ("PGKEEP_BACKUP_ID".to_string(), id.clone()),
            ("PGKEEP_VOLUMES".to_string(), vols.join(" ")),
            ("PGKEEP_INSTANCE_ID".to_string(), sopts.attach_to.clone().unwrap_or_default()),
            ("PGKEEP_PGDATA".to_string(), layout.pgdata.original.clone()),
        ];
        if let Some(h) = run_hook("post-attach", cfg.hooks.post_attach.as_ref(), cfg, &env)? {
            hooks.push(h);
        }
    }

    let settings = RecoverySettings {
        restore_command: recovery::restore_command(repo.location(), repo.key_file()),
        target: opts.target.clone(),
        action: opts.action,
        inclusive: opts.inclusive,
        timeline: opts.timeline.clone(),
        archive_mode,
    };
    let root_of = |vol: &str| -> Option<PathBuf> {
        restored.iter().find(|v| v.volume == vol).and_then(|v| v.root.as_ref()).map(PathBuf::from)
    };
    let join = |root: PathBuf, rel: &str| if rel.is_empty() { root } else { root.join(rel) };
    let pgdata = root_of(&layout.pgdata.volume).map(|r| join(r, &layout.pgdata.rel));
    let mut report = SnapshotRestoreReport {
        backup: id.clone(),
        driver: m.driver.clone(),
        pgdata: None,
        pg_wal: None,
        volumes: restored.to_vec(),
        tablespaces: Vec::new(),
        target: settings.target.clone(),
        recovery_settings: settings.pairs().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        archive_mode,
        timelines,
        hooks,
        duration_seconds: 0.0,
        next: String::new(),
    };
    let Some(pgdata) = pgdata.filter(|p| p.join("PG_VERSION").exists()) else {
        report.next = format!(
            "the volumes are restored but the data directory is not visible on this machine; attach and mount them (--attach-to INSTANCE with a post-attach hook), then write backup {id}'s backup_label (stored in the repository) before starting PostgreSQL"
        );
        report.duration_seconds = began.elapsed().as_secs_f64();
        return Ok(report);
    };
    // Cloud volumes appear where a hook mounts them, which may be the original path: never
    // touch a data directory a live server runs on.
    if let Some(pid) = live_postmaster(&pgdata).filter(|_| by_kind.contains_key(&DriverKind::Ebs)) {
        report.next = format!(
            "the volumes are restored, but {} is in use by a running PostgreSQL (pid {pid}), so it is not the restored copy; mount the restored volumes (post-attach hook, or --volume NAME=PATH for where they appear), then restore again",
            pgdata.display()
        );
        report.duration_seconds = began.elapsed().as_secs_f64();
        return Ok(report);
    }
    let owner = fsutil::owner_of(&pgdata).ok();

    // Like a base backup: nothing the running server left behind.
    for f in EXCLUDE_FILES {
        let p = pgdata.join(f);
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).map_err(|e| werr(&p, e))?;
        }
    }
    for d in EXCLUDE_DIR_CONTENTS {
        clear_dir(&pgdata.join(d))?;
    }

    // pg_wal: into the clone of its volume, emptied (recovery reads the archive).
    let wal_dir = if layout.pg_wal_is_link {
        let root = root_of(&layout.pg_wal.volume).ok_or_else(|| {
            SnapshotError::Other(format!("volume {} (pg_wal) was not restored on this machine", layout.pg_wal.volume))
        })?;
        let wal = join(root, &layout.pg_wal.rel);
        relink(&pgdata.join("pg_wal"), &wal, owner)?;
        wal
    } else {
        pgdata.join("pg_wal")
    };
    clear_dir(&wal_dir)?;
    let status = wal_dir.join("archive_status");
    std::fs::create_dir_all(&status).map_err(|e| werr(&status, e))?;
    if let Some((u, g)) = owner {
        if fsutil::running_as_root() {
            let _ = fsutil::chown(&status, u, g);
        }
    }
    report.pg_wal = Some(wal_dir.display().to_string());

    // Tablespaces: links into the clones; tablespace_map says the same to PostgreSQL.
    let mut map_text = String::new();
    for t in &layout.tablespaces {
        let root = root_of(&t.at.volume).ok_or_else(|| {
            SnapshotError::Other(format!(
                "volume {} (tablespace {}) was not restored on this machine",
                t.at.volume, t.name
            ))
        })?;
        let loc = join(root, &t.at.rel);
        relink(&pgdata.join("pg_tblspc").join(t.oid.to_string()), &loc, owner)?;
        map_text.push_str(&format!("{} {}\n", t.oid, loc.display()));
        report.tablespaces.push(RestoredTablespace {
            oid: t.oid,
            name: t.name.clone(),
            path: loc.display().to_string(),
        });
    }

    let mut written = vec![pgdata.join("backup_label")];
    materialize::write_small(&pgdata.join("backup_label"), &label)?;
    if m.tablespace_map_blake3.is_some() || !layout.tablespaces.is_empty() {
        materialize::write_small(&pgdata.join("tablespace_map"), map_text.as_bytes())?;
        written.push(pgdata.join("tablespace_map"));
    }
    let note = format!("recovery settings written by pgkeep restore of snapshot backup {id} ({})", settings.target);
    recovery::write(&pgdata, &settings, &note).map_err(|e| werr(&pgdata.join("postgresql.auto.conf"), e))?;
    written.push(pgdata.join("postgresql.auto.conf"));
    written.push(pgdata.join("recovery.signal"));
    if let (Some((u, g)), true) = (owner, fsutil::running_as_root()) {
        for p in &written {
            fsutil::chown(p, u, g).map_err(|e| werr(p, e))?;
        }
    }
    fsutil::fsync_dir(&pgdata).map_err(|e| werr(&pgdata, e))?;

    report.next = format!("start the server on it (as its owner): pg_ctl -D {} start", pgdata.display());
    report.pgdata = Some(pgdata.display().to_string());
    report.duration_seconds = began.elapsed().as_secs_f64();
    Ok(report)
}

/// The pid in `pgdata/postmaster.pid` when that process is alive. Only meaningful where the
/// data directory is not a fresh clone (a clone carries its source's pid file).
fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Replace the symlink (or empty directory) at `link` with a link to `target`.
fn relink(link: &Path, target: &Path, owner: Option<(u32, u32)>) -> Result<(), SnapshotError> {
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link).map_err(|e| werr(link, e))?,
        Ok(m) if m.is_dir() => std::fs::remove_dir(link).map_err(|e| werr(link, e))?,
        Ok(_) => return Err(werr(link, "exists and is neither a link nor a directory")),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| werr(link, e))?;
    if let (Some((u, g)), true) = (owner, fsutil::running_as_root()) {
        fsutil::chown(link, u, g).map_err(|e| werr(link, e))?;
    }
    Ok(())
}

/// Remove everything inside `dir` (not `dir` itself); absent is fine.
fn clear_dir(dir: &Path) -> Result<(), SnapshotError> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in rd.flatten() {
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        r.map_err(|x| werr(&p, x))?;
    }
    Ok(())
}
