//! The drill's private PostgreSQL: settings, the superuser to connect as, and its log.
//!
//! The server reads none of the copy's `postgresql.conf` (it may `include` files that are not
//! here, point `data_directory` at the original, or preload libraries this machine lacks): its
//! `config_file`, `hba_file` and `ident_file` are pgkeep's own, in the scratch `run/`
//! directory, and everything else is given with `-c`, which also beats whatever the copy's
//! `postgresql.auto.conf` says. It listens on a Unix socket in the scratch directory only
//! (`listen_addresses = ''`, socket mode 0700), never archives, never connects to a primary,
//! fsyncs nothing (the copy is thrown away), and keeps within `--memory`.

use std::fs;
use std::path::Path;

use pgkeep_wal::ControlFileData;

use super::scratch::Scratch;
use super::VerifyError;
use crate::pg::Instance;

/// Write pgkeep's own configuration files into `run/`.
pub fn write_config(scratch: &Scratch) -> Result<(), VerifyError> {
    let files: [(&str, &str); 3] = [
        ("drill.conf", "# pgkeep verify: every setting of the drill's server is given on its command line\n"),
        ("drill_hba.conf", "# pgkeep verify: only the drill itself, over the private socket\nlocal all all trust\n"),
        ("drill_ident.conf", ""),
    ];
    for (name, text) in files {
        let p = scratch.run.join(name);
        fs::write(&p, text)
            .map_err(|e| VerifyError::Scratch { path: p.display().to_string(), detail: e.to_string() })?;
    }
    Ok(())
}

/// Settings for the drill's server. `memory_mb` bounds shared memory plus what the `jobs`
/// checking sessions may use.
pub fn configure(
    inst: &mut Instance,
    scratch: &Scratch,
    control: Option<&ControlFileData>,
    major: Option<u32>,
    memory_mb: u64,
    jobs: usize,
) {
    let run = &scratch.run;
    let jobs = jobs.max(1) as u64;
    let mb = |v: u64| format!("{v}MB");
    let shared = (memory_mb / 4).max(16);
    let maint = (memory_mb / 4 / jobs).max(4);
    let work = (memory_mb / 8 / jobs).max(1);
    let path = |n: &str| run.join(n).display().to_string();
    let mut s: Vec<(&str, String)> = vec![
        ("config_file", path("drill.conf")),
        ("hba_file", path("drill_hba.conf")),
        ("ident_file", path("drill_ident.conf")),
        ("unix_socket_permissions", "0700".into()),
        ("ssl", "off".into()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("shared_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        // No sessions during recovery: the drill connects once the copy is consistent and
        // promoted (and the hot-standby parameter minimums do not apply).
        ("hot_standby", "off".into()),
        ("max_wal_senders", "0".into()),
        // Slots of the copy are restored at start-up and must fit.
        ("max_replication_slots", "64".into()),
        ("fsync", "off".into()),
        ("synchronous_commit", "off".into()),
        ("full_page_writes", "on".into()),
        ("autovacuum", "off".into()),
        ("jit", "off".into()),
        ("huge_pages", "off".into()),
        ("max_parallel_workers_per_gather", "0".into()),
        ("max_parallel_maintenance_workers", "0".into()),
        ("shared_buffers", mb(shared)),
        ("maintenance_work_mem", mb(maint)),
        ("work_mem", mb(work)),
        ("hash_mem_multiplier", "1".into()),
        ("temp_buffers", "1MB".into()),
        ("max_connections", (jobs + 6).to_string()),
        ("superuser_reserved_connections", "1".into()),
        ("statement_timeout", "0".into()),
        ("lock_timeout", "0".into()),
        ("idle_in_transaction_session_timeout", "0".into()),
        ("default_transaction_read_only", "off".into()),
        ("log_destination", "stderr".into()),
        ("log_line_prefix", "%m [%p] ".into()),
        ("log_min_messages", "warning".into()),
        ("log_checkpoints", "off".into()),
        ("log_connections", "off".into()),
        ("log_disconnections", "off".into()),
        ("log_statement", "none".into()),
        ("log_min_duration_statement", "-1".into()),
        ("cluster_name", "pgkeep-verify".into()),
    ];
    if major.is_none_or(crate::pg::version::has_archive_library) {
        s.push(("archive_library", String::new()));
    }
    // Prepared transactions and their locks are restored at start-up: allow as many as the
    // source did (pg_control records its settings).
    if let Some(c) = control {
        s.push(("max_prepared_transactions", c.max_prepared_xacts.max(0).to_string()));
        s.push(("max_locks_per_transaction", c.max_locks_per_xact.max(64).to_string()));
        s.push(("max_worker_processes", c.max_worker_processes.max(8).to_string()));
        // A copy with logical slots refuses to start below wal_level = logical.
        s.push(("wal_level", if c.wal_level_name() == "logical" { "logical" } else { "replica" }.into()));
        if c.track_commit_timestamp {
            s.push(("track_commit_timestamp", "on".into()));
        }
    }
    for (k, v) in s {
        inst.set(k, v);
    }
}

/// Notable lines of the server log: recovery milestones, warnings and errors, verbatim.
pub fn notable_log_lines(log: &Path, max: usize) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    const KEYS: &[&str] = &[
        "WARNING:",
        "ERROR:",
        "FATAL:",
        "PANIC:",
        "DETAIL:",
        "HINT:",
        "redo starts",
        "redo done",
        "invalid record",
        "invalid primary checkpoint",
        "consistent recovery state",
        "recovery stopping",
        "selected new timeline",
        "archive recovery complete",
        "database system was",
        "database system is ready",
        "could not",
        "terminated by signal",
    ];
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        if KEYS.iter().any(|k| l.contains(k)) {
            out.push(l.to_string());
        }
    }
    if out.len() > max {
        // Keep the start-up story and the latest errors.
        let tail = out.split_off(out.len() - max / 2);
        out.truncate(max - tail.len());
        out.push("…".into());
        out.extend(tail);
    }
    out
}

/// Lines that say why a server did not start (FATAL/PANIC and what explains them).
pub fn startup_errors(log: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| {
            ["FATAL:", "PANIC:", "ERROR:", "DETAIL:", "HINT:", "invalid", "could not", "terminated by signal"]
                .iter()
                .any(|k| l.contains(k))
        })
        .map(str::to_string)
        .collect()
}

/// Candidate superuser names for connecting to a copy: the bootstrap superuser's name is not
/// known before connecting; the first candidate that exists leads to it (role OID 10).
pub fn superuser_candidates(owner: Option<&str>) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(u) = std::env::var("PGKEEP_VERIFY_USER") {
        v.push(u);
    }
    if let Some(o) = owner {
        v.push(o.to_string());
    }
    v.push("postgres".into());
    if let Some(u) = crate::pg::OsUser::current() {
        v.push(u.name);
    }
    v.dedup();
    v
}
