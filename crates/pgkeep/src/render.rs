//! Human-readable text for each report (the binary prints it; --json prints the report).

use std::fmt::Write;

use crate::archive::{GetOutcome, PushOutcome, PushReport};
use crate::backup::BackupReport;
use crate::command::check::CheckReport;
use crate::command::demo::DemoReport;
use crate::command::init::InitReport;
use crate::fsutil::human_bytes;
use crate::report::list::ListedBackup;
use crate::restore::RestoreReport;

pub fn init(r: &InitReport) -> String {
    let verb = if r.created { "initialized" } else { "already initialized" };
    let mut s = format!(
        "repository {} {verb} for system identifier {} (PostgreSQL {}, WAL segments of {})",
        r.repo,
        r.system_identifier,
        r.pg_major,
        human_bytes(r.wal_segment_size as u64)
    );
    if r.encrypted {
        s.push_str("; encrypted (keep the key file safe and backed up apart from the repository: without it nothing here can be restored)");
    }
    if let Some(o) = &r.owner {
        let _ = write!(s, "; owned by {o} so archive_command can write to it");
    }
    s
}

pub fn check(r: &CheckReport) -> String {
    let mut s = String::new();
    for c in &r.checks {
        if c.ok {
            let _ = writeln!(s, "ok      {}: {}", c.name, c.detail);
        } else {
            let _ = writeln!(s, "FAILED  {}: {}; change: {}", c.name, c.detail, c.hint.clone().unwrap_or_default());
        }
    }
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        s.push_str("all checks passed");
    } else {
        let _ = write!(s, "{failed} check(s) failed");
    }
    s
}

pub fn push(r: &PushReport) -> String {
    match r.outcome {
        PushOutcome::Stored => {
            format!("archived {} ({} → {})", r.file, human_bytes(r.size), human_bytes(r.stored_size))
        }
        PushOutcome::AlreadyArchived => format!("{} was already archived with identical content", r.file),
        PushOutcome::ArchivedAhead => format!("{} was archived ahead by a parallel push (spool record)", r.file),
        PushOutcome::ReplacedDamaged => {
            format!(
                "archived {}: replaced a damaged stored copy ({} → {})",
                r.file,
                human_bytes(r.size),
                human_bytes(r.stored_size)
            )
        }
    }
}

pub fn get(r: &GetOutcome) -> String {
    match r {
        GetOutcome::Restored { file, size, prefetched: false } => format!("restored {file} ({})", human_bytes(*size)),
        GetOutcome::Restored { file, size, prefetched: true } => {
            format!("restored {file} ({}) from the prefetch spool", human_bytes(*size))
        }
        GetOutcome::NotFound { file } => format!("{file} is not in the archive"),
        GetOutcome::Prefetched { after, segments } => format!("prefetched {segments} segment(s) after {after}"),
    }
}

pub fn backup(r: &BackupReport) -> String {
    if let Some(snap) = &r.snapshot {
        return snapshot_backup(r, snap);
    }
    let mut s = format!(
        "backup {} complete: {} files, {} (stored {}), timeline {}, WAL {} .. {} ({} .. {})\n",
        r.id,
        r.files,
        human_bytes(r.size),
        human_bytes(r.stored_size),
        r.timeline,
        r.start_lsn,
        r.stop_lsn,
        r.start_wal,
        r.stop_wal
    );
    if let Some(reference) = &r.reads.reference {
        let _ = writeln!(
            s,
            "{} backup of {reference}: read {} from PGDATA, {} file(s) whole{}",
            r.backup_type,
            human_bytes(r.reads.bytes_read),
            r.reads.files_read_whole,
            if r.reads.whole_file_reasons.is_empty() {
                String::new()
            } else {
                let why: Vec<String> = r.reads.whole_file_reasons.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!(" ({})", why.join(", "))
            }
        );
        if let Some(d) = &r.reads.wal_walk_detail {
            let _ = writeln!(s, "the WAL walk could not vouch for every block: {d}");
        }
    }
    let mb = r.size as f64 / 1_048_576.0;
    let _ = write!(
        s,
        "took {:.1}s ({:.0} MiB/s); pg_backup_start..pg_backup_stop window {:.1}s",
        r.duration_seconds,
        if r.duration_seconds > 0.0 { mb / r.duration_seconds } else { 0.0 },
        r.backup_window_seconds
    );
    for t in &r.tablespaces {
        let _ = write!(s, "\ntablespace {} (oid {}) at {}", t.name, t.oid, t.location);
    }
    if !r.removed_incomplete.is_empty() {
        let _ = write!(s, "\nremoved interrupted backup(s): {}", r.removed_incomplete.join(", "));
    }
    s
}

fn snapshot_backup(r: &BackupReport, snap: &crate::backup::snapshot::run::SnapshotReport) -> String {
    let mut s = format!(
        "snapshot backup {} {} ({}): {} snapshot(s), timeline {}, WAL {} .. {} ({} .. {})\n",
        r.id,
        if snap.state == "pending" { "taken, PENDING" } else { "complete" },
        r.driver,
        snap.snapshots.len(),
        r.timeline,
        r.start_lsn,
        r.stop_lsn,
        r.start_wal,
        r.stop_wal
    );
    let _ = write!(
        s,
        "took {:.1}s; pg_backup_start..pg_backup_stop window {:.3}s; first..last snapshot acknowledged spread {:.3}s",
        r.duration_seconds, r.backup_window_seconds, snap.snapshot_spread_seconds
    );
    for v in &snap.snapshots {
        let _ = write!(
            s,
            "\nvolume {} ({}): {} [{}] started {}, acknowledged {}",
            v.volume,
            v.driver,
            v.snapshot_id,
            format!("{:?}", v.state).to_lowercase(),
            v.started_at.format("%H:%M:%S%.3f"),
            v.acknowledged_at.format("%H:%M:%S%.3f")
        );
    }
    for (g, secs) in &snap.frozen {
        let _ = write!(s, "\nstripe group {g} frozen for {:.3}s", secs);
    }
    for h in &snap.hooks {
        let _ = write!(s, "\nhook {} ran ({:.2}s)", h.hook, h.seconds);
    }
    if snap.state == "pending" {
        let _ = write!(s, "\nnot usable until every snapshot completes: `pgkeep list` commits it then, `pgkeep backup --finish` waits for it");
    }
    if !r.removed_incomplete.is_empty() {
        let _ = write!(s, "\nremoved interrupted backup(s): {}", r.removed_incomplete.join(", "));
    }
    s
}

pub fn finished(r: &[crate::backup::snapshot::run::Finished]) -> String {
    if r.is_empty() {
        return "no pending snapshot backups".into();
    }
    r.iter().map(|f| format!("{} {}: {}", f.id, f.state, f.detail)).collect::<Vec<_>>().join("\n")
}

pub fn snapshot_restore(r: &crate::restore::snapshot::SnapshotRestoreReport) -> String {
    let mut s = format!("restored snapshot backup {} ({})\n", r.backup, r.driver);
    for v in &r.volumes {
        let _ = write!(s, "volume {}: {} → {}", v.volume, v.snapshot_id, v.created);
        if let Some(root) = &v.root {
            if root != &v.created {
                let _ = write!(s, " (mounted at {root})");
            }
        }
        if let (Some(i), Some(d)) = (&v.attached_to, &v.device) {
            let _ = write!(s, " attached to {i} at {d}");
        }
        s.push('\n');
    }
    if let Some(p) = &r.pgdata {
        let _ = writeln!(s, "data directory: {p}");
    }
    if let Some(w) = &r.pg_wal {
        let _ = writeln!(s, "pg_wal: {w}");
    }
    for t in &r.tablespaces {
        let _ = writeln!(s, "tablespace {} (oid {}) → {}", t.name, t.oid, t.path);
    }
    s.push_str(&restore_safety(r.archive_mode, &r.timelines));
    let _ = write!(s, "recovery target: {}\nnext: {}", r.target, r.next);
    s
}

pub fn expire(r: &crate::backup::snapshot::expire::ExpireReport) -> String {
    let mut s = format!("backup {} deleted", r.backup);
    if !r.deleted_snapshots.is_empty() {
        let _ = write!(s, " with its snapshot(s) {}", r.deleted_snapshots.join(", "));
    }
    if let Some(why) = &r.damaged {
        let _ = write!(s, " (it was damaged: {why})");
    }
    if r.snapshots_unknown {
        s.push_str("; the snapshots its damaged record named were not deleted by pgkeep (--force)");
    }
    s
}

pub fn expire_policy(r: &crate::retention::run::ExpireReport) -> String {
    let p = &r.plan;
    let verb = if r.dry_run { "would expire" } else { "expired" };
    let mut s = String::new();
    for b in &p.backups {
        let _ = writeln!(
            s,
            "{verb} backup {} ({}, {})",
            b.id,
            format!("{:?}", b.state).to_lowercase(),
            human_bytes(b.bytes)
        );
    }
    if let (Some(first), Some(last)) = (p.wal.first(), p.wal.last()) {
        let bytes: u64 = p.wal.iter().map(|w| w.bytes).sum();
        let _ =
            writeln!(s, "{verb} {} WAL file(s), {} .. {} ({})", p.wal.len(), first.name, last.name, human_bytes(bytes));
    }
    for k in &p.kept {
        let _ = writeln!(s, "kept backup {} ({})", k.id, k.kept_by.join(", "));
    }
    if let Some(t) = p.recoverable_from {
        let _ = writeln!(s, "recoverable from: {}", t.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    if r.uploads_aborted > 0 {
        let _ = writeln!(s, "aborted {} multipart upload(s) of killed writers", r.uploads_aborted);
    }
    if r.staging_files_removed > 0 {
        let _ = writeln!(s, "removed {} staging file(s) of killed writers", r.staging_files_removed);
    }
    for f in &r.failed {
        let _ = writeln!(s, "FAILED: {f}");
    }
    let _ = write!(s, "{} {}", if r.dry_run { "would free" } else { "freed" }, human_bytes(p.bytes_freed));
    if !r.failed.is_empty() {
        s.push_str("; hint: fix the cause and run `pgkeep expire` again: it retries what is left");
    }
    s
}

pub fn restore(r: &RestoreReport) -> String {
    let mut s = format!(
        "restored backup {} into {}: {} files, {} in {:.1}s\nrecovery target: {}\n",
        r.backup,
        r.pgdata,
        r.files,
        human_bytes(r.size),
        r.duration_seconds,
        r.target
    );
    for t in &r.tablespaces {
        let _ = writeln!(s, "tablespace {} (oid {}) → {}", t.name, t.oid, t.path);
    }
    s.push_str(&restore_safety(r.archive_mode, &r.timelines));
    let _ = write!(s, "next: start the server on it, e.g. pg_ctl -D {} start", r.pgdata);
    s
}

pub fn delta_restore(r: &crate::restore::delta::DeltaReport) -> String {
    format!(
        "delta restore: {} written; files: {} changed, {} created, {} removed, {} unchanged\n{}",
        human_bytes(r.bytes_written),
        r.files_changed,
        r.files_created,
        r.files_removed,
        r.files_unchanged,
        restore(&r.restore)
    )
}

/// What the restored copy will archive, and which newer timelines recovery would follow.
fn restore_safety(mode: crate::restore::recovery::ArchiveMode, t: &crate::restore::plan::TimelineView) -> String {
    let mut s = match mode {
        crate::restore::recovery::ArchiveMode::Off => {
            "archiving: off in the copy (archive_mode = 'off'), so it cannot archive into this repository; --archive-mode preserve keeps the source's\n".to_string()
        }
        crate::restore::recovery::ArchiveMode::Preserve => {
            "archiving: preserved from the source (archive_command runs once the copy is promoted)\n".to_string()
        }
    };
    for n in &t.newer_timelines {
        let _ = writeln!(
            s,
            "warning: the archive holds timeline {} (branched from timeline {} at {}), newer than the backup's timeline {}",
            n.timeline, n.parent, n.switch_point, t.timeline
        );
    }
    if t.recovery_timeline != t.timeline {
        let _ = writeln!(
            s,
            "warning: recovery follows timeline {}; if that timeline is not this cluster's own history (a restored copy that archived here), restore again with --target-timeline current",
            t.recovery_timeline
        );
    }
    s
}

pub fn list(r: &[ListedBackup]) -> String {
    if r.is_empty() {
        return "no backups".into();
    }
    let mut s = format!(
        "{:<17} {:<10} {:>3} {:<12} {:<12} {:<20} {:<20} {:>10} {:>10}  {}\n",
        "id", "state", "tli", "start lsn", "stop lsn", "start (UTC)", "stop (UTC)", "size", "stored", "verified"
    );
    for b in r {
        let t = |x: Option<chrono::DateTime<chrono::Utc>>| {
            x.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "{:<17} {:<10} {:>3} {:<12} {:<12} {:<20} {:<20} {:>10} {:>10}  {}",
            b.id,
            format!("{:?}", b.state).to_lowercase(),
            b.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            b.start_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            b.stop_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            t(b.start_time),
            t(b.stop_time),
            b.size.map(human_bytes).unwrap_or_else(|| "-".into()),
            b.stored_size.map(human_bytes).unwrap_or_else(|| "-".into()),
            match b.verified {
                Some(true) => "verified",
                Some(false) => "FAILED",
                None => "never",
            }
        );
        if let (Some(kind), Some(reference)) = (&b.kind, &b.reference) {
            let _ = writeln!(s, "  {kind} backup of {reference}");
        }
        if b.pinned || b.expires_next || b.pending_deletion {
            let _ = writeln!(
                s,
                "  {}",
                [
                    (b.pinned, "pinned"),
                    (b.expires_next, "the [retention] policy expires it next"),
                    (b.pending_deletion, "expired, snapshot deletion pending: `pgkeep expire` retries"),
                ]
                .iter()
                .filter_map(|(on, w)| on.then_some(*w))
                .collect::<Vec<_>>()
                .join("; ")
            );
        }
        if let Some(why) = &b.damaged_reason {
            let _ = writeln!(s, "  damaged: {why}");
        }
    }
    if let Some(t) = r.iter().find_map(|b| b.recoverable_from) {
        let _ = writeln!(s, "recoverable from: {}", t.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    s.trim_end().to_string()
}

pub fn demo(r: &DemoReport) -> String {
    let mut s = String::new();
    for step in &r.steps {
        let _ = writeln!(s, "• {step}");
    }
    let _ =
        write!(s, "{}", if r.ok { "demo passed: the restored rows match the source exactly" } else { "demo FAILED" });
    s
}

pub fn verify(r: &crate::verify::DrillReport) -> String {
    crate::verify::report::render(r)
}

pub fn key_rotate(r: &crate::command::key::RotateReport) -> String {
    format!(
        "repository {}: data key rewrapped under {}; {} no longer opens it (update encryption_key_file / PGKEEP_ENCRYPTION_KEY_FILE and restore_command settings that name it)",
        r.repo, r.new_key_file, r.old_key_file
    )
}
