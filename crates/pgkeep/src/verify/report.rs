//! What a restore drill found: the report printed with `--json`, stored (whole) inside the
//! verdict, and rendered as text for operators.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use pgkeep_wal::Lsn;
use serde::Serialize;

/// What was drilled.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DrillSource {
    /// A backup in the repository, restored into scratch and recovered to `target`.
    Backup { backup_id: String, target: String, driver: String },
    /// A copy of a data directory (`verify --pgdata`), cloned into scratch first.
    Pgdata { path: String, wal_dir: Option<String>, clone_method: String },
}

impl DrillSource {
    pub fn describe(&self) -> String {
        match self {
            DrillSource::Backup { backup_id, target, .. } => format!("backup {backup_id} (recovered to {target})"),
            DrillSource::Pgdata { path, wal_dir: Some(w), .. } => format!("data directory {path} with WAL from {w}"),
            DrillSource::Pgdata { path, .. } => format!("data directory {path}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// An earlier step failed (e.g. the server did not start), so this check could not run.
    NotRun,
}

/// One check of the drill (see docs/architecture.md, "Restore drills").
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// `restore`, `start`, `page_lsn`, `amcheck`, `verify_heapam`, `xid_horizon`, `read_all`,
    /// `unique`, `assertions`, `dump`.
    pub name: String,
    pub ok: bool,
    pub status: CheckStatus,
    /// One line: what was checked, or what went wrong.
    pub detail: String,
    /// How many problems were found in all.
    pub error_count: u64,
    /// The first problems, verbatim (server messages as the server wrote them).
    pub errors: Vec<String>,
}

/// How many problems a check keeps verbatim.
pub const MAX_ERRORS: usize = 20;

impl CheckResult {
    pub fn passed(name: &str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            ok: true,
            status: CheckStatus::Passed,
            detail: detail.into(),
            error_count: 0,
            errors: Vec::new(),
        }
    }

    pub fn failed(name: &str, detail: impl Into<String>, errors: Vec<String>, error_count: u64) -> CheckResult {
        let mut errors = errors;
        errors.truncate(MAX_ERRORS);
        CheckResult {
            name: name.into(),
            ok: false,
            status: CheckStatus::Failed,
            detail: detail.into(),
            error_count: error_count.max(1),
            errors,
        }
    }

    pub fn not_run(name: &str, why: &str) -> CheckResult {
        CheckResult {
            name: name.into(),
            ok: false,
            status: CheckStatus::NotRun,
            detail: format!("not run: {why}"),
            error_count: 0,
            errors: Vec::new(),
        }
    }
}

/// Per-database figures (acceptance 1: databases, indexes and tables checked, rows read).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseReport {
    pub name: String,
    pub ok: bool,
    /// btree indexes checked with amcheck.
    pub indexes_checked: u64,
    /// Which amcheck function: `bt_index_parent_check` (heapallindexed) or `bt_index_check`.
    pub amcheck_function: String,
    /// Tables (incl. TOAST tables and materialized views) checked with verify_heapam.
    pub tables_checked: u64,
    /// Rows read with COPY … TO STDOUT (every table, every column).
    pub rows_read: u64,
    pub bytes_read: u64,
    /// Primary keys, unique constraints and unique indexes checked for duplicates.
    pub unique_checked: u64,
    /// Problems found in this database (all checks).
    pub problems: u64,
    /// Set when the database could not be checked at all (connection or set-up failed).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssertionResult {
    /// The comment line before the statement, else the statement's first 80 characters.
    pub name: String,
    /// FILE:LINE of the statement.
    pub location: String,
    pub database: String,
    pub sql: String,
    pub ok: bool,
    /// `true`, `false`, `NULL`, `2 rows`, or the error.
    pub result: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DumpFile {
    /// Database name, or `(globals)`.
    pub database: String,
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    /// `restore` (or `clone`), `page_lsn_scan`, `recovery`, `amcheck`, `verify_heapam`,
    /// `read_all`, `unique`, `assertions`, `dump`, `cleanup`.
    pub name: String,
    pub seconds: f64,
}

/// The whole drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// True only when every check passed.
    pub ok: bool,
    pub source: DrillSource,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    /// Server version that ran the drill (e.g. "15.8"), when it started.
    pub pg_version: Option<String>,
    /// End of the WAL that recovery replayed; no page may carry a later LSN.
    pub end_of_wal: Option<Lsn>,
    /// Where `end_of_wal` came from (`pg_last_wal_replay_lsn()`, or the insert position when
    /// no WAL was replayed).
    pub end_of_wal_source: Option<String>,
    pub phases: Vec<PhaseTime>,
    pub checks: Vec<CheckResult>,
    pub databases: Vec<DatabaseReport>,
    pub assertions: Vec<AssertionResult>,
    pub dumps: Vec<DumpFile>,
    /// The drill server's notable log lines (recovery progress, warnings, errors), verbatim.
    pub server_log: Vec<String>,
    /// Repository key of the stored verdict (backups only).
    pub verdict_key: Option<String>,
    /// One line for `list`, logs and the verdict.
    pub summary: String,
}

impl DrillReport {
    pub fn phase_seconds(&self, name: &str) -> f64 {
        self.phases.iter().filter(|p| p.name == name).map(|p| p.seconds).sum()
    }

    /// `passed: …` or `FAILED: …`.
    pub fn make_summary(&self) -> String {
        let idx: u64 = self.databases.iter().map(|d| d.indexes_checked).sum();
        let tables: u64 = self.databases.iter().map(|d| d.tables_checked).sum();
        let rows: u64 = self.databases.iter().map(|d| d.rows_read).sum();
        if self.ok {
            format!(
                "passed: {} database(s), {idx} indexes, {tables} tables, {rows} rows read, {} assertion(s)",
                self.databases.len(),
                self.assertions.len()
            )
        } else {
            let failed: Vec<String> = self
                .checks
                .iter()
                .filter(|c| c.status == CheckStatus::Failed)
                .map(|c| if c.error_count > 1 { format!("{} ({})", c.name, c.error_count) } else { c.name.clone() })
                .collect();
            let first = self
                .checks
                .iter()
                .find(|c| c.status == CheckStatus::Failed)
                // The start check's detail holds the decisive FATAL/PANIC line; elsewhere
                // the first error says most.
                .map(|c| match c.name.as_str() {
                    "start" => c.detail.clone(),
                    _ => c.errors.first().cloned().unwrap_or_else(|| c.detail.clone()),
                });
            let mut s = format!("FAILED: {}", failed.join(", "));
            if let Some(f) = first {
                let f: String = f.chars().take(300).collect();
                let _ = write!(s, "; first: {f}");
            }
            s
        }
    }
}

/// Human text for one drill.
pub fn render(r: &DrillReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "verify {}: {} in {:.1}s{}",
        r.source.describe(),
        if r.ok { "PASSED" } else { "FAILED" },
        r.duration_seconds,
        r.pg_version.as_ref().map(|v| format!(" (PostgreSQL {v})")).unwrap_or_default()
    );
    let phases: Vec<String> = r.phases.iter().map(|p| format!("{} {:.1}s", p.name, p.seconds)).collect();
    let _ = writeln!(s, "phases: {}", phases.join(", "));
    if !r.databases.is_empty() {
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>8} {:>12} {:>7}  result",
            "database", "indexes", "tables", "rows read", "unique"
        );
        for d in &r.databases {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>8} {:>12} {:>7}  {}",
                d.name,
                d.indexes_checked,
                d.tables_checked,
                d.rows_read,
                d.unique_checked,
                match (&d.error, d.ok) {
                    (Some(e), _) => format!("FAILED: {e}"),
                    (None, true) => "ok".into(),
                    (None, false) => format!("FAILED ({} problem(s))", d.problems),
                }
            );
        }
    }
    for c in &r.checks {
        let tag = match c.status {
            CheckStatus::Passed => "ok     ",
            CheckStatus::Failed => "FAILED ",
            CheckStatus::NotRun => "not run",
        };
        let _ = writeln!(s, "{tag} {}: {}", c.name, c.detail);
        for e in &c.errors {
            let _ = writeln!(s, "          {e}");
        }
        if c.error_count > c.errors.len() as u64 && !c.errors.is_empty() {
            let _ = writeln!(s, "          … {} more", c.error_count - c.errors.len() as u64);
        }
    }
    for a in &r.assertions {
        let _ = writeln!(
            s,
            "{} assertion {:?} ({}, database {}): {}",
            if a.ok { "ok     " } else { "FAILED " },
            a.name,
            a.location,
            a.database,
            a.result
        );
    }
    for d in &r.dumps {
        let _ = writeln!(s, "dump {} → {} ({})", d.database, d.path, crate::fsutil::human_bytes(d.size));
    }
    if !r.ok && !r.server_log.is_empty() {
        let _ = writeln!(s, "server log:");
        for l in r.server_log.iter().take(30) {
            let _ = writeln!(s, "  {l}");
        }
    }
    if let Some(k) = &r.verdict_key {
        let _ = writeln!(s, "verdict stored as {k}");
    }
    s.trim_end().to_string()
}

/// Human text for several drills (`verify all`).
pub fn render_all(rs: &[DrillReport]) -> String {
    if rs.is_empty() {
        return "no complete backups to verify".into();
    }
    let mut s = String::new();
    for r in rs {
        s.push_str(&render(r));
        s.push_str("\n\n");
    }
    let failed = rs.iter().filter(|r| !r.ok).count();
    if failed == 0 {
        let _ = write!(s, "all {} backup(s) verified", rs.len());
    } else {
        let _ = write!(s, "{failed} of {} backup(s) FAILED verification", rs.len());
    }
    s
}
