//! `pgkeep expire`: gather the facts, plan, and (unless a dry run) execute the plan under the
//! backup lock. Also `expire --backup ID` with the policy's refusal.

use chrono::{DateTime, Utc};
use pgkeep_wal::{parse_wal_file_name, WalFileName};
use serde::Serialize;

use super::plan::{self, BackupFacts, ExpirePlan, PlanError, WalObject};
use super::{pins, RetentionConfig, RetentionError};
use crate::backup::snapshot::expire::{check_id, expire_locked, ExpireReport as OneReport};
use crate::backup::snapshot::SnapshotConfig;
use crate::repo::catalog::{self, BackupState};
use crate::repo::lock::RepoLock;
use crate::repo::{layout, verdict, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    pub dry_run: bool,
    #[serde(flatten)]
    pub plan: ExpirePlan,
    /// Snapshots deleted with their backups.
    pub deleted_snapshots: Vec<String>,
    /// What could not be done (one line each); the next `expire` retries it.
    pub failed: Vec<String>,
    /// Staging files of killed writers removed (local repositories; not part of the plan).
    pub staging_files_removed: usize,
    /// Multipart uploads of killed writers aborted (object stores; not part of the plan).
    pub uploads_aborted: usize,
}

/// The time rules measure from. `PGKEEP_NOW` (RFC 3339) overrides the clock for tests that
/// need a recovery window over backups taken seconds apart; it is read here only.
pub fn now() -> crate::Result<DateTime<Utc>> {
    match std::env::var("PGKEEP_NOW") {
        Ok(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| RetentionError::BadNow(s).into()),
        Err(_) => Ok(Utc::now()),
    }
}

/// The configured policy, refused when it cannot keep anything.
pub fn policy(cfg: Option<&RetentionConfig>) -> crate::Result<&RetentionConfig> {
    let p = cfg.ok_or(RetentionError::NoPolicy)?;
    if !p.has_backup_rule() {
        return Err(RetentionError::NoRule.into());
    }
    Ok(p)
}

/// Every backup's facts (oldest first) and every archived WAL file.
pub fn gather(repo: &Repository) -> crate::Result<(Vec<BackupFacts>, Vec<WalObject>)> {
    let seg_size = repo.info().wal_segment_size;
    let pinned = pins::pinned(repo)?;
    let mut backups = Vec::new();
    for e in catalog::list(repo)? {
        let s = e.summary.as_ref().filter(|_| e.state == BackupState::Complete);
        let verified = s.and_then(|_| verdict::latest_or_none(repo, &e.id));
        let start_segno = s.and_then(|m| match parse_wal_file_name(&m.start_wal, seg_size) {
            Some(WalFileName::Segment { segno, .. }) => Some(segno),
            _ => None,
        });
        let bytes = repo.storage().list(&layout::backup_dir(&e.id))?.iter().map(|o| o.size).sum();
        backups.push(BackupFacts {
            pinned: pinned.contains(&e.id),
            id: e.id,
            state: e.state,
            timeline: s.map(|m| m.timeline),
            stop_timeline: s.map(|m| m.stop_timeline),
            start_segno,
            stop_time: s.map(|m| m.stop_time),
            verified: verified.map(|v| v.ok),
            bytes,
            chain: s.map(|m| m.chain.clone()).unwrap_or_default(),
        });
    }
    let wal = repo
        .storage()
        .list(layout::WAL_PREFIX)?
        .into_iter()
        .map(|o| WalObject { name: o.key.rsplit('/').next().unwrap_or(&o.key).to_string(), bytes: o.size })
        .collect();
    Ok((backups, wal))
}

/// The plan for the repository as it is now.
pub fn plan_now(repo: &Repository, policy: &RetentionConfig) -> crate::Result<ExpirePlan> {
    let (backups, wal) = gather(repo)?;
    make_plan(repo, policy, &backups, &wal)
}

fn make_plan(
    repo: &Repository,
    policy: &RetentionConfig,
    backups: &[BackupFacts],
    wal: &[WalObject],
) -> crate::Result<ExpirePlan> {
    plan::plan(policy, backups, wal, repo.info().wal_segment_size, now()?).map_err(|e| match e {
        PlanError::KeepsNothing => RetentionError::KeepsNothing {
            complete: backups.iter().filter(|b| b.state == BackupState::Complete).count(),
        }
        .into(),
    })
}

/// `pgkeep expire [--dry-run]`: apply the policy.
pub fn expire(
    repo: &Repository,
    snap: &SnapshotConfig,
    policy: &RetentionConfig,
    dry_run: bool,
) -> crate::Result<ExpireReport> {
    // A dry run takes no lock: it changes nothing, and may run beside a backup.
    let _lock = if dry_run { None } else { Some(RepoLock::acquire(repo, "backup")?) };
    let plan = plan_now(repo, policy)?;
    let mut report = ExpireReport {
        dry_run,
        plan,
        deleted_snapshots: Vec::new(),
        failed: Vec::new(),
        staging_files_removed: 0,
        uploads_aborted: 0,
    };
    if dry_run {
        return Ok(report);
    }
    for b in &report.plan.backups {
        test_pause(&format!("backup {}", b.id));
        match expire_locked(repo, snap, &b.id, false) {
            Ok(r) => report.deleted_snapshots.extend(r.deleted_snapshots),
            Err(e) => report.failed.push(e.to_string()),
        }
        if let Err(e) = pins::remove(repo, &b.id) {
            report.failed.push(e.to_string());
        }
    }
    // WAL goes only once no expired backup can still be restored: a backup whose manifest
    // survived (its deletion failed) still needs its WAL.
    let mut survivors = Vec::new();
    for b in &report.plan.backups {
        if repo.storage().head(&layout::manifest_key(&b.id))?.is_some() {
            survivors.push(b.id.clone());
        }
    }
    if !survivors.is_empty() {
        report
            .failed
            .push(format!("no WAL was expired because backup(s) {} could not be deleted", survivors.join(", ")));
        return Ok(report);
    }
    for w in &report.plan.wal {
        test_pause(&format!("wal {}", w.name));
        if let Err(e) = repo.storage().delete(&layout::wal_key(&w.name)) {
            report.failed.push(e.to_string());
        }
    }
    // A live writer holds a lock on its staging file, so only killed writers' files go.
    for prefix in [layout::WAL_PREFIX, layout::BACKUP_PREFIX] {
        match repo.storage().remove_stale_staging_under(prefix) {
            Ok(n) => report.staging_files_removed += n,
            Err(e) => report.failed.push(e.to_string()),
        }
    }
    // Uploads recorded by killed writers (repo/multipart.rs); we hold the backup lock, so no
    // writer of this repository is alive.
    match repo.storage().raw().abort_stale_uploads() {
        Ok(n) => report.uploads_aborted = n,
        Err(e) => report.failed.push(e.to_string()),
    }
    Ok(report)
}

/// `pgkeep expire --backup ID`: the primitive, but with a policy configured it refuses to
/// delete the only backup the policy keeps, and it refuses a pinned backup, unless `force`.
pub fn expire_one(
    repo: &Repository,
    snap: &SnapshotConfig,
    policy: Option<&RetentionConfig>,
    id: &str,
    force: bool,
) -> crate::Result<OneReport> {
    check_id(id)?;
    let _lock = RepoLock::acquire(repo, "backup")?;
    if !force {
        if pins::pinned(repo)?.contains(id) {
            return Err(RetentionError::Pinned { id: id.to_string() }.into());
        }
        let (backups, wal) = gather(repo)?;
        let dependents: Vec<&str> =
            backups.iter().filter(|b| b.chain.iter().any(|c| c == id)).map(|b| b.id.as_str()).collect();
        if !dependents.is_empty() {
            return Err(RetentionError::ChainBase { id: id.to_string(), dependents: dependents.join(", ") }.into());
        }
        if let Some(p) = policy.filter(|p| p.has_backup_rule()) {
            if let Ok(plan) = make_plan(repo, p, &backups, &wal) {
                if plan.kept.len() == 1 && plan.kept[0].id == id {
                    return Err(RetentionError::LastKept { id: id.to_string() }.into());
                }
            }
        }
    }
    let r = expire_locked(repo, snap, id, force)?;
    pins::remove(repo, id)?;
    Ok(r)
}

/// Crash tests: with `PGKEEP_TEST_EXPIRE_PAUSE` set, print each step to stderr and wait that
/// many milliseconds before it, so a test can SIGKILL expire between (and during) deletions.
fn test_pause(step: &str) {
    if let Some(ms) = std::env::var("PGKEEP_TEST_EXPIRE_PAUSE").ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!("test pause before {step}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
