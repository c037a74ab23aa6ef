//! Prometheus metrics (text exposition format 0.0.4): `pgkeep metrics` prints them, and
//! `metrics_textfile` is refreshed after `backup`, `verify`, `expire`, `archive-push` and `rpo`
//! for node_exporter's textfile collector. docs/metrics.md lists every metric.
//!
//! Each command only knows some of the figures (archive-push must not list the repository), so
//! a refresh replaces the families it computed, for its repository, and keeps everything else
//! the file held: the file is always the union of the newest figures of every source.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::list::ListedBackup;
use super::rpo::RpoReport;
use crate::repo::catalog::BackupState;
use crate::repo::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// The labels every sample carries: which repository and which database system.
#[derive(Debug, Clone, Serialize)]
pub struct Labels {
    pub repo: String,
    pub system_identifier: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// A label besides `repo` and `system_identifier` (e.g. `state`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<(&'static str, String)>,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Family {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub help: &'static str,
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics textfile {path}: {detail}; hint: the directory must exist and be writable by every user that runs pgkeep (root and the server's OS user)")]
    Textfile { path: String, detail: String },
}

fn timestamp(t: &DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

fn age(now: &DateTime<Utc>, t: Option<&DateTime<Utc>>) -> f64 {
    // No such backup: an infinite age, so "older than" alerts fire instead of staying silent.
    t.map_or(f64::INFINITY, |t| (timestamp(now) - timestamp(t)).max(0.0))
}

struct Builder {
    labels: Labels,
    out: Vec<Family>,
}

impl Builder {
    fn new(labels: Labels) -> Builder {
        Builder { labels, out: Vec::new() }
    }

    /// One sample; `None` (the figure is unknown) gives a family without samples, which is
    /// not printed but still replaces an old figure in the textfile.
    fn one(&mut self, name: &'static str, kind: Kind, help: &'static str, value: Option<f64>) {
        let samples = value.map(|value| Sample { label: None, value }).into_iter().collect();
        self.many(name, kind, help, samples);
    }

    fn many(&mut self, name: &'static str, kind: Kind, help: &'static str, samples: Vec<Sample>) {
        self.out.push(Family { name, kind, help, labels: self.labels.clone(), samples });
    }
}

/// The repository's figures: backups, their drills, its size, how far back it can restore.
pub fn repository(repo: &Repository, now: DateTime<Utc>) -> crate::Result<Vec<Family>> {
    let backups = super::list::list(repo, None)?;
    let size: u64 = repo.storage().list("")?.iter().map(|o| o.size).sum();
    let labels = Labels { repo: repo.location().to_string(), system_identifier: repo.info().system_identifier.clone() };
    Ok(repository_families(labels, &backups, size, now))
}

fn repository_families(labels: Labels, backups: &[ListedBackup], size: u64, now: DateTime<Utc>) -> Vec<Family> {
    let complete: Vec<&ListedBackup> = backups.iter().filter(|b| b.state == BackupState::Complete).collect();
    let newest = complete.iter().filter(|b| b.stop_time.is_some()).max_by_key(|b| b.stop_time);
    let newest_verified =
        complete.iter().filter(|b| b.verified == Some(true) && b.stop_time.is_some()).max_by_key(|b| b.stop_time);
    let last_drill = backups.iter().filter(|b| b.verified_at.is_some()).max_by_key(|b| b.verified_at);
    let mut b = Builder::new(labels);
    use Kind::Gauge;
    b.one(
        "pgkeep_backup_newest_end_timestamp_seconds",
        Gauge,
        "End (stop time) of the newest complete backup, Unix time.",
        newest.and_then(|n| n.stop_time.as_ref()).map(timestamp),
    );
    b.one(
        "pgkeep_backup_newest_age_seconds",
        Gauge,
        "Seconds since the newest complete backup ended (+Inf without one).",
        Some(age(&now, newest.and_then(|n| n.stop_time.as_ref()))),
    );
    b.one(
        "pgkeep_backup_newest_verified_end_timestamp_seconds",
        Gauge,
        "End of the newest complete backup whose latest restore drill passed, Unix time.",
        newest_verified.and_then(|n| n.stop_time.as_ref()).map(timestamp),
    );
    b.one(
        "pgkeep_backup_newest_verified_age_seconds",
        Gauge,
        "Seconds since the newest verified backup ended (+Inf without one).",
        Some(age(&now, newest_verified.and_then(|n| n.stop_time.as_ref()))),
    );
    let duration =
        newest.and_then(|n| Some((timestamp(n.stop_time.as_ref()?) - timestamp(n.start_time.as_ref()?)).max(0.0)));
    b.one("pgkeep_backup_last_duration_seconds", Gauge, "Duration of the newest complete backup.", duration);
    b.one(
        "pgkeep_backup_last_size_bytes",
        Gauge,
        "Bytes of the database the newest complete backup holds.",
        newest.and_then(|n| n.size).map(|s| s as f64),
    );
    b.one(
        "pgkeep_backup_last_stored_bytes",
        Gauge,
        "Bytes the newest complete backup occupies in the repository (compressed).",
        newest.and_then(|n| n.stored_size).map(|s| s as f64),
    );
    let states = [
        BackupState::Complete,
        BackupState::Incomplete,
        BackupState::Running,
        BackupState::Pending,
        BackupState::Damaged,
    ];
    let per_state = states
        .iter()
        .map(|s| Sample {
            label: Some(("state", state_name(*s))),
            value: backups.iter().filter(|b| b.state == *s).count() as f64,
        })
        .collect();
    b.many("pgkeep_backups", Gauge, "Backups in the repository by state.", per_state);
    b.one(
        "pgkeep_verify_last_success",
        Gauge,
        "1 when the most recent restore drill (of any backup) passed, 0 when it failed.",
        last_drill.map(|d| if d.verified == Some(true) { 1.0 } else { 0.0 }),
    );
    b.one(
        "pgkeep_verify_last_timestamp_seconds",
        Gauge,
        "When the most recent restore drill ran, Unix time.",
        last_drill.and_then(|d| d.verified_at.as_ref()).map(timestamp),
    );
    b.one(
        "pgkeep_recoverable_from_timestamp_seconds",
        Gauge,
        "The oldest point in time the repository can restore to (end of its oldest complete backup), Unix time.",
        backups.iter().find_map(|b| b.recoverable_from.as_ref()).map(timestamp),
    );
    b.one("pgkeep_repository_size_bytes", Gauge, "Bytes of every object in the repository.", Some(size as f64));
    b.one(
        "pgkeep_repository_read_timestamp_seconds",
        Gauge,
        "When the repository figures above were read, Unix time.",
        Some(timestamp(&now)),
    );
    b.out
}

fn state_name(s: BackupState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// `pgkeep rpo`'s figures: archive lag, worst-case loss, checkpoint interval, the archiver.
pub fn rpo(r: &RpoReport, repo: &str) -> Vec<Family> {
    let mut b = Builder::new(Labels { repo: repo.to_string(), system_identifier: r.system_identifier.clone() });
    use Kind::{Counter, Gauge};
    // Unbounded (archiving off, or archive_timeout = 0) is +Inf: a threshold alert fires.
    let unbounded = |v: Option<f64>| Some(v.unwrap_or(f64::INFINITY));
    b.one(
        "pgkeep_archive_lag_seconds",
        Gauge,
        "Age of the WAL that exists only on the server (0 when everything is archived).",
        r.archive_lag_seconds,
    );
    b.one(
        "pgkeep_rpo_worst_case_loss_seconds",
        Gauge,
        "Worst-case data loss now: the smaller of the two figures below.",
        unbounded(r.worst_case_loss_seconds),
    );
    b.one(
        "pgkeep_rpo_worst_case_loss_local_wal_seconds",
        Gauge,
        "Worst-case loss if the newest WAL is damaged and there is no archive.",
        unbounded(r.worst_case_loss_seconds_local_wal),
    );
    b.one(
        "pgkeep_rpo_worst_case_loss_with_archive_seconds",
        Gauge,
        "Worst-case loss with the archive: what is not archived yet (+Inf when unbounded).",
        unbounded(r.worst_case_loss_seconds_with_archive),
    );
    b.one(
        "pgkeep_checkpoint_interval_seconds",
        Gauge,
        "Mean seconds between checkpoints since the statistics were reset.",
        r.seconds_between_checkpoints,
    );
    b.one(
        "pgkeep_server_archived_segments_total",
        Counter,
        "WAL files the server archived (pg_stat_archiver.archived_count).",
        Some(r.archive.archived_count as f64),
    );
    b.one(
        "pgkeep_server_archive_failures_total",
        Counter,
        "Failed archive_command runs (pg_stat_archiver.failed_count).",
        Some(r.archive.failed_count as f64),
    );
    b.one(
        "pgkeep_archive_waiting_segments",
        Gauge,
        "Completed WAL segments waiting for archive_command (.ready files).",
        r.archive.segments_waiting.map(|w| w as f64),
    );
    b.one(
        "pgkeep_rpo_timestamp_seconds",
        Gauge,
        "When the server figures above were read (server clock), Unix time.",
        Some(timestamp(&r.server_time)),
    );
    b.out
}

/// The server's figures and whether it answered (`pgkeep_server_up`).
pub fn server(r: Option<&RpoReport>, repo: &Repository) -> Vec<Family> {
    let labels = Labels { repo: repo.location().to_string(), system_identifier: repo.info().system_identifier.clone() };
    let mut b = Builder::new(labels);
    b.one(
        "pgkeep_server_up",
        Kind::Gauge,
        "1 when the server's figures (archive lag, worst-case loss) could be read, else 0.",
        Some(if r.is_some() { 1.0 } else { 0.0 }),
    );
    let mut out = b.out;
    out.extend(r.map(|r| rpo(r, &repo.location().to_string())).unwrap_or_default());
    out
}

/// [`server`] from `pgkeep rpo --json`'s report (what the textfile refresh after `rpo` gets).
pub fn rpo_from_json(json: &serde_json::Value, repo: &Repository) -> Vec<Family> {
    serde_json::from_value::<RpoReport>(json.clone()).map(|r| server(Some(&r), repo)).unwrap_or_default()
}

/// archive-push's counters as the textfile holds them (for `pgkeep metrics`).
pub fn archive_push_from_textfile(path: &Path, repo: &str) -> Vec<Family> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    if sample_value(&old, "pgkeep_archive_pushed_segments_total", repo).is_none() {
        return Vec::new();
    }
    let system_identifier = label_value(&old, repo, "system_identifier").unwrap_or_default();
    archive_push(&old, Labels { repo: repo.to_string(), system_identifier }, None, Utc::now())
}

/// archive-push's own counters: carried over from the existing file, advanced by this run
/// (`Some(succeeded)`).
fn archive_push(old: &str, labels: Labels, run: Option<bool>, now: DateTime<Utc>) -> Vec<Family> {
    let prev = |name: &str| sample_value(old, name, &labels.repo).unwrap_or(0.0);
    let mut b = Builder::new(labels.clone());
    b.one(
        "pgkeep_archive_pushed_segments_total",
        Kind::Counter,
        "WAL files archive-push acknowledged to PostgreSQL (durable in the repository).",
        Some(prev("pgkeep_archive_pushed_segments_total") + if run == Some(true) { 1.0 } else { 0.0 }),
    );
    b.one(
        "pgkeep_archive_push_failures_total",
        Kind::Counter,
        "archive-push runs that failed (PostgreSQL retries them).",
        Some(prev("pgkeep_archive_push_failures_total") + if run == Some(false) { 1.0 } else { 0.0 }),
    );
    let last = match run {
        Some(true) => Some(timestamp(&now)),
        _ => sample_value(old, "pgkeep_archive_last_push_timestamp_seconds", &labels.repo),
    };
    b.one(
        "pgkeep_archive_last_push_timestamp_seconds",
        Kind::Gauge,
        "When archive-push last acknowledged a WAL file, Unix time.",
        last,
    );
    b.out
}

/// The text exposition format of `families`.
pub fn render(families: &[Family]) -> String {
    let mut s = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(s, "# HELP {} {}", f.name, f.help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(s, "# TYPE {} {}", f.name, f.kind.as_str());
        for line in sample_lines(f) {
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

fn sample_lines(f: &Family) -> Vec<String> {
    f.samples
        .iter()
        .map(|smp| {
            let mut labels = format!(
                "repo=\"{}\",system_identifier=\"{}\"",
                escape(&f.labels.repo),
                escape(&f.labels.system_identifier)
            );
            if let Some((k, v)) = &smp.label {
                let _ = write!(labels, ",{k}=\"{}\"", escape(v));
            }
            format!("{}{{{labels}}} {}", f.name, value(smp.value))
        })
        .collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The `repo="…"` matcher of a repository's sample lines.
fn repo_label(repo: &str) -> String {
    format!("{{repo=\"{}\",", escape(repo))
}

/// Family name of a line of the file (comment or sample).
fn family_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")).unwrap_or(line);
    let end = rest.find(['{', ' ']).unwrap_or(rest.len());
    (!rest.starts_with('#') && end > 0).then(|| &rest[..end])
}

fn sample_value(text: &str, name: &str, repo: &str) -> Option<f64> {
    let matcher = format!("{name}{}", repo_label(repo));
    let line = text.lines().find(|l| l.starts_with(&matcher))?;
    match line.rsplit(' ').next()? {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

fn label_value(text: &str, repo: &str, label: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(&repo_label(repo)) && !l.starts_with('#'))?;
    let start = line.find(&format!("{label}=\""))? + label.len() + 2;
    let end = start + line[start..].find('"')?;
    Some(line[start..end].to_string())
}

/// `old` with `fresh`'s samples in place of the samples it held for the same families and
/// repository; other families and other repositories' samples are kept as they were.
fn merge(old: &str, fresh: &[Family]) -> String {
    // Family name -> (its comment lines in the old file, the sample lines kept).
    let mut order: Vec<String> = Vec::new();
    let mut kept: std::collections::HashMap<String, (Vec<String>, Vec<String>)> = Default::default();
    for line in old.lines().filter(|l| !l.trim().is_empty()) {
        let Some(name) = family_of(line) else { continue };
        if !kept.contains_key(name) {
            order.push(name.to_string());
        }
        let entry = kept.entry(name.to_string()).or_default();
        if line.starts_with('#') {
            entry.0.push(line.to_string());
        } else if !fresh.iter().any(|f| f.name == name && line.contains(&repo_label(&f.labels.repo))) {
            entry.1.push(line.to_string());
        }
    }
    for f in fresh {
        if !kept.contains_key(f.name) {
            order.push(f.name.to_string());
        }
        kept.entry(f.name.to_string()).or_default().1.extend(sample_lines(f));
    }
    let mut s = String::new();
    for name in order {
        let (comments, samples) = &kept[&name];
        // A figure that became unknown (e.g. no verified backup left) leaves no empty family.
        if samples.is_empty() {
            continue;
        }
        match fresh.iter().find(|f| f.name == name) {
            Some(f) => {
                let header = render(std::slice::from_ref(f));
                header.lines().take(2).for_each(|h| {
                    let _ = writeln!(s, "{h}");
                });
            }
            None => comments.iter().for_each(|c| {
                let _ = writeln!(s, "{c}");
            }),
        }
        samples.iter().for_each(|l| {
            let _ = writeln!(s, "{l}");
        });
    }
    s
}

/// The textfile refresh after a command: what to put in, given the file's current text.
pub enum Refresh<'a> {
    /// Families computed by the command.
    Families(Vec<Family>),
    /// archive-push's counters for `repo`; the system identifier comes from the file, else
    /// from the pushed WAL file.
    ArchivePush { repo: String, wal_file: &'a Path, ok: bool },
}

/// Rewrite `path` (write then rename, fsynced) with `refresh` merged into what it holds. Writers
/// (archive-push runs while a backup does) take turns on a lock file beside it.
pub fn refresh_textfile(path: &Path, refresh: Refresh<'_>) -> Result<(), MetricsError> {
    let err = |e: io::Error| MetricsError::Textfile { path: path.display().to_string(), detail: e.to_string() };
    let _lock = lock_beside(path).map_err(err)?;
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e)),
    };
    let fresh = match refresh {
        Refresh::Families(f) => f,
        Refresh::ArchivePush { repo, wal_file, ok } => {
            let system_identifier = label_value(&old, &repo, "system_identifier")
                .filter(|s| !s.is_empty())
                .or_else(|| wal_system_identifier(wal_file))
                .unwrap_or_default();
            archive_push(&old, Labels { repo, system_identifier }, Some(ok), Utc::now())
        }
    };
    crate::fsutil::write_atomic(path, merge(&old, &fresh).as_bytes(), 0o644).map_err(err)
}

/// `<file>.lock` beside the textfile (node_exporter reads only `*.prom`). flock needs no write
/// access, so a lock file another user created is opened read-only.
fn lock_beside(path: &Path) -> io::Result<File> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path: PathBuf = path.with_file_name(name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&lock_path)
        .or_else(|_| File::open(&lock_path))?;
    f.lock()?;
    Ok(f)
}

/// The system identifier in a WAL segment's first (long) page header.
fn wal_system_identifier(wal_file: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 40];
    File::open(wal_file).ok()?.read_exact(&mut head).ok()?;
    let long = pgkeep_wal::XLogLongPageHeaderData::parse(&head)?;
    long.std.is_long().then(|| long.xlp_sysid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fam(name: &'static str, repo: &str, v: f64) -> Family {
        Family {
            name,
            kind: Kind::Gauge,
            help: "h",
            labels: Labels { repo: repo.into(), system_identifier: "7".into() },
            samples: vec![Sample { label: None, value: v }],
        }
    }

    #[test]
    fn merge_replaces_only_the_same_family_and_repository() {
        let old = render(&[fam("pgkeep_a", "/r1", 1.0), fam("pgkeep_a", "/r2", 2.0), fam("pgkeep_b", "/r1", 3.0)]);
        let text = merge(&old, &[fam("pgkeep_a", "/r1", 9.0)]);
        assert_eq!(sample_value(&text, "pgkeep_a", "/r1"), Some(9.0));
        assert_eq!(sample_value(&text, "pgkeep_a", "/r2"), Some(2.0));
        assert_eq!(sample_value(&text, "pgkeep_b", "/r1"), Some(3.0));
        assert_eq!(text.matches("# TYPE pgkeep_a gauge").count(), 1, "{text}");
    }

    #[test]
    fn archive_push_counts_on_from_the_file() {
        let l = || Labels { repo: "s3://b/p \"x\"".into(), system_identifier: "42".into() };
        let now = Utc::now();
        let one = render(&archive_push("", l(), Some(true), now));
        let two = render(&archive_push(&one, l(), Some(false), now));
        assert_eq!(sample_value(&two, "pgkeep_archive_pushed_segments_total", &l().repo), Some(1.0));
        assert_eq!(sample_value(&two, "pgkeep_archive_push_failures_total", &l().repo), Some(1.0));
        assert_eq!(label_value(&two, &l().repo, "system_identifier").as_deref(), Some("42"));
    }

    #[test]
    fn values_in_exposition_format() {
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(12.0), "12");
        assert_eq!(value(0.25), "0.25");
    }
}
