//! `pgkeep restore`: build a [`RestorePlan`] (which backup, where every tablespace goes, which
//! recovery settings) and check it before touching the disk; then run it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::materialize::{self, Chain, PathMap};
use super::recovery::{self, ArchiveMode, RecoverySettings};
use super::target::{self, RecoveryTarget, TargetAction};
use super::RestoreError;
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::catalog;
use crate::repo::manifest::Manifest;
use crate::repo::{FrameError, Repository};
use crate::wal::timelines::{self, NewerTimeline};
use pgkeep_wal::TimeLineID;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub to: PathBuf,
    /// Backup id, `latest`, or None (choose by target).
    pub backup: Option<String>,
    pub target: RecoveryTarget,
    pub action: Option<TargetAction>,
    pub inclusive: bool,
    pub timeline: Option<String>,
    pub tablespace_map: Vec<(u32, PathBuf)>,
    pub jobs: usize,
    /// Off unless `--archive-mode preserve`: a copy must not archive into the source's repository.
    pub archive_mode: ArchiveMode,
}

/// Parse `OID=DIR`.
pub fn parse_tablespace_map(s: &str) -> Result<(u32, PathBuf), RestoreError> {
    let bad = || RestoreError::BadTablespaceMap { value: s.to_string() };
    let (oid, dir) = s.split_once('=').ok_or_else(bad)?;
    let oid = oid.trim().parse().map_err(|_| bad())?;
    if dir.is_empty() {
        return Err(bad());
    }
    Ok((oid, PathBuf::from(dir)))
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredTablespace {
    pub oid: u32,
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup: String,
    pub pgdata: String,
    pub target: RecoveryTarget,
    pub files: u64,
    pub size: u64,
    pub duration_seconds: f64,
    pub tablespaces: Vec<RestoredTablespace>,
    pub recovery_settings: Vec<(String, String)>,
    /// `off`: the copy cannot archive into the source's repository; `preserve`: as the source.
    pub archive_mode: ArchiveMode,
    #[serde(flatten)]
    pub timelines: TimelineView,
}

/// The backup's timeline, the timelines newer than it in the archive and the one recovery
/// ends on: a timeline a restored copy left behind is named before it is replayed.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineView {
    pub timeline: TimeLineID,
    pub recovery_timeline: TimeLineID,
    pub newer_timelines: Vec<NewerTimeline>,
}

impl TimelineView {
    pub fn of(repo: &Repository, m: &Manifest, target_timeline: Option<&str>) -> crate::Result<TimelineView> {
        let histories = timelines::probe_after(repo, m.timeline)
            .map_err(|e| crate::Error::other(format!("cannot read the archive's timeline history: {e}; hint: recovery would stop on it too; repair or remove that file in the repository")))?;
        Ok(TimelineView {
            timeline: m.timeline,
            recovery_timeline: timelines::followed(&histories, m.timeline, target_timeline),
            newer_timelines: timelines::descendants(&histories, m.timeline, m.start_lsn),
        })
    }
}

pub struct RestorePlan {
    pub manifest: Manifest,
    /// The backups the manifest's changed blocks rest on, and itself (itself alone for a full).
    pub chain: Chain,
    pub map: PathMap,
    pub settings: RecoverySettings,
    pub jobs: usize,
    /// Fetched and checked before anything is written.
    pub label: Vec<u8>,
    pub timelines: TimelineView,
}

/// Refuse a manifest that would write outside the target (it is input: whoever can write the
/// repository can edit it), before anything is created.
pub fn check_manifest(id: &str, m: &Manifest) -> Result<(), RestoreError> {
    if m.id != id {
        return Err(RestoreError::BadManifest {
            id: id.to_string(),
            problem: format!("id {:?} is not the backup's", m.id),
        });
    }
    m.validate().map_err(|p| RestoreError::BadManifest { id: id.to_string(), problem: p.to_string() })
}

/// The backup's `backup_label`, fetched and checked against its manifest.
pub fn fetch_label(repo: &Repository, m: &Manifest) -> crate::Result<Vec<u8>> {
    let bad = |detail: String| RestoreError::BadLabel { id: m.id.clone(), detail };
    match repo.backup_label(m) {
        Ok(Some(label)) => Ok(label),
        Ok(None) => Err(bad("does not match the checksum recorded in the manifest".into()).into()),
        Err(crate::Error::Frame(FrameError::Damaged { detail, .. })) => {
            Err(bad(format!("is damaged ({detail})")).into())
        }
        Err(e) => Err(e),
    }
}

impl RestorePlan {
    pub fn build(repo: &Repository, opts: &RestoreOptions) -> crate::Result<RestorePlan> {
        Self::build_into(repo, opts, true)
    }

    /// `empty`: refuse a target or tablespace directory that holds anything (false for a
    /// delta restore, which rewrites an existing data directory).
    pub fn build_into(repo: &Repository, opts: &RestoreOptions, empty: bool) -> crate::Result<RestorePlan> {
        let to = crate::fsutil::absolute(&opts.to);
        if empty
            && !fsutil::is_absent_or_empty(&to)
                .map_err(|e| RestoreError::Write { path: to.display().to_string(), detail: e.to_string() })?
        {
            return Err(RestoreError::TargetNotEmpty { dir: to.display().to_string() }.into());
        }
        let id = choose_backup_id(repo, opts.backup.as_deref(), &opts.target, opts.timeline.as_deref())?;
        let manifest = repo.manifest(&id)?;
        check_manifest(&id, &manifest)?;
        let label = fetch_label(repo, &manifest)?;
        let chain = Chain::load(repo, manifest.clone())?;
        let timelines = TimelineView::of(repo, &manifest, opts.timeline.as_deref())?;
        let mut tablespaces = BTreeMap::new();
        for (oid, dir) in &opts.tablespace_map {
            if !manifest.tablespaces.iter().any(|t| t.oid == *oid) {
                let have: Vec<String> =
                    manifest.tablespaces.iter().map(|t| format!("{} ({})", t.oid, t.name)).collect();
                return Err(RestoreError::UnknownTablespace {
                    id: id.clone(),
                    oid: *oid,
                    have: if have.is_empty() { "none".into() } else { have.join(", ") },
                }
                .into());
            }
            tablespaces.insert(*oid, crate::fsutil::absolute(dir));
        }
        for t in &manifest.tablespaces {
            tablespaces.entry(t.oid).or_insert_with(|| PathBuf::from(&t.location));
        }
        for (oid, dir) in tablespaces.iter().filter(|_| empty) {
            let empty = fsutil::is_absent_or_empty(dir)
                .map_err(|e| RestoreError::Write { path: dir.display().to_string(), detail: e.to_string() })?;
            if !empty {
                return Err(RestoreError::TablespaceNotEmpty { oid: *oid, dir: dir.display().to_string() }.into());
            }
        }
        let settings = RecoverySettings {
            restore_command: recovery::restore_command(repo.location(), repo.key_file()),
            target: opts.target.clone(),
            action: opts.action,
            inclusive: opts.inclusive,
            timeline: opts.timeline.clone(),
            archive_mode: opts.archive_mode,
        };
        Ok(RestorePlan {
            manifest,
            chain,
            map: PathMap { pgdata: to, tablespaces },
            settings,
            jobs: opts.jobs,
            label,
            timelines,
        })
    }

    pub fn run(&self, repo: &Repository, progress: Arc<dyn Progress>) -> crate::Result<RestoreReport> {
        let began = Instant::now();
        let m = &self.manifest;
        materialize::create_structure(m, &self.map)?;
        progress.phase("restore files", Some(m.size));
        let mut stats = materialize::write_files(repo, m, &self.map, self.jobs, progress.as_ref())?;
        let assembled = materialize::write_chain_files(repo, &self.chain, &self.map, self.jobs, progress.as_ref())?;
        stats.files += assembled.files;
        stats.bytes += assembled.bytes;
        progress.finish_phase();

        self.write_label_and_recovery(repo)?;
        materialize::sync_restored(m, &self.map)?;
        materialize::publish_pg_control(&self.map)?;
        Ok(self.report(stats.files, stats.bytes, began))
    }

    /// backup_label, tablespace_map and the recovery settings (each durable); returns the
    /// paths written.
    pub fn write_label_and_recovery(&self, repo: &Repository) -> Result<Vec<PathBuf>, RestoreError> {
        let m = &self.manifest;
        let pgdata = &self.map.pgdata;
        let mut written = vec![pgdata.join("backup_label")];
        materialize::write_small(&pgdata.join("backup_label"), &self.label)?;
        if m.tablespace_map_blake3.is_some() || !self.map.tablespaces.is_empty() {
            let mut text = String::new();
            for (oid, dir) in &self.map.tablespaces {
                text.push_str(&format!("{oid} {}\n", dir.display()));
            }
            materialize::write_small(&pgdata.join("tablespace_map"), text.as_bytes())?;
            written.push(pgdata.join("tablespace_map"));
        }
        let note = format!("recovery settings written by pgkeep restore of backup {} ({})", m.id, self.settings.target);
        recovery::write(pgdata, &self.settings, &note).map_err(|e| RestoreError::Write {
            path: pgdata.join("postgresql.auto.conf").display().to_string(),
            detail: e.to_string(),
        })?;
        written.push(pgdata.join("postgresql.auto.conf"));
        written.push(pgdata.join("recovery.signal"));
        if let Some(warning) = recovery::key_file_warning(pgdata, repo.key_file()) {
            tracing::warn!("{warning}");
        }
        Ok(written)
    }

    /// The report of a restore that wrote `files` files of `bytes` bytes since `began`.
    pub fn report(&self, files: u64, bytes: u64, began: Instant) -> RestoreReport {
        let m = &self.manifest;
        RestoreReport {
            backup: m.id.clone(),
            pgdata: self.map.pgdata.display().to_string(),
            target: self.settings.target.clone(),
            files,
            size: bytes,
            duration_seconds: began.elapsed().as_secs_f64(),
            tablespaces: m
                .tablespaces
                .iter()
                .map(|t| RestoredTablespace {
                    oid: t.oid,
                    name: t.name.clone(),
                    path: self.map.tablespaces.get(&t.oid).map(|p| p.display().to_string()).unwrap_or_default(),
                })
                .collect(),
            recovery_settings: self.settings.pairs().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            archive_mode: self.settings.archive_mode,
            timelines: self.timelines.clone(),
        }
    }
}

/// The backup to restore: `id` as given, `latest`, or (None) the newest that reaches `target`
/// (for an xid or restore point: whose end its record in the archived WAL follows, on the
/// timeline recovery takes).
pub fn choose_backup_id(
    repo: &Repository,
    backup: Option<&str>,
    target: &RecoveryTarget,
    timeline: Option<&str>,
) -> crate::Result<String> {
    Ok(match backup {
        Some(id) if id != "latest" => id.to_string(),
        choice => {
            let complete = catalog::complete(repo)?;
            if complete.is_empty() {
                return Err(RestoreError::NoBackups { location: repo.location().to_string() }.into());
            }
            if choice == Some("latest") {
                complete.last().map(|b| b.id.clone()).unwrap_or_default()
            } else if let Some(b) = super::locate::choose(repo, &complete, target, timeline)? {
                b.id.clone()
            } else {
                target::choose(&complete, target)?.id.clone()
            }
        }
    })
}
