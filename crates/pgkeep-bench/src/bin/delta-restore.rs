//! Issue 12, acceptance 3 (delta part): refreshing a copy one 1 %-change behind with
//! `restore --delta` against a full `restore` of the same backup into an empty directory, in
//! the same run: bytes written (each report's own count) and wall time.
//!
//! Data: pgbench at --scale (default 140, about 2.1 GB). The copy is a restore of backup A
//! that was started (recovered, promoted) and stopped; then --change-pct (default 1) % of
//! pgbench_accounts' rows are updated in 20 runs of consecutive rows (so about that share of
//! its blocks, plus the new row versions), the tellers and branches too; backup B.
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench && target/release/delta-restore [--scale 140] [--change-pct 1]
//!
//! Target (issue 12, acceptance 4): the delta restore writes at most 5 % of the database's bytes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgkeep::pg::instance::run_as;
use pgkeep_bench::{arg, pgkeep_release_binary, timed};
use pgkeep_testkit::{ClusterOptions, TestEnv};

/// Run a pgkeep command printing JSON; its wall time and report.
fn run_json(mut c: Command, what: &str) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    let out = c.arg("--json").output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let wall = started.elapsed();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: no JSON report: {e}"));
    eprintln!("{what}: {:.1}s", wall.as_secs_f64());
    (wall, report)
}

fn main() {
    let scale: u32 = arg("--scale", 140);
    let change_pct: f64 = arg("--change-pct", 1.0);
    let pgkeep = pgkeep_release_binary();
    let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
    let repo = env.path("repo");
    // Big enough that loading pgbench checkpoints rarely.
    let opts = ClusterOptions::archiving_to(&repo).with("max_wal_size", "8GB").with("shared_buffers", "256MB");
    let mut pg = env.cluster("source", opts);
    pg.start();
    let pgk = |args: &[&str], to: &Path| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--quiet").arg("--repo").arg(&repo).args(args).arg(to);
        c
    };
    let mut init = Command::new(&env.pgkeep);
    init.arg("init").arg("--repo").arg(&repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
    timed(&mut init, "pgkeep init");

    eprintln!("loading pgbench scale {scale} …");
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
    pg.sql("CHECKPOINT");
    let backup = |what: &str| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--quiet").arg("--repo").arg(&repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        c.arg("backup");
        run_as(&mut c, env.owner.as_ref());
        c.current_dir("/");
        let (_, r) = run_json(c, what);
        r["id"].as_str().expect("backup id").to_string()
    };
    let a = backup("backup A");

    let copy = env.path("copy");
    run_json(pgk(&["restore", "--backup", &a, "--to"], &copy), "restore A into the copy");
    {
        let mut c = env.cluster_on("copy", &copy);
        c.set("archive_mode", "off");
        c.start();
        c.wait_promoted();
        c.stop();
    }

    let rows = scale as u64 * 100_000;
    let runs = 20u64;
    let per_run = ((rows as f64 * change_pct / 100.0) / runs as f64).max(1.0) as u64;
    eprintln!("changing {change_pct} % of pgbench_accounts ({runs} runs of {per_run} rows) …");
    for i in 0..runs {
        let start = 1 + i * (rows / runs);
        pg.sql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {start} AND {}",
            start + per_run - 1
        ));
    }
    pg.sql("UPDATE pgbench_tellers SET tbalance = tbalance + 1; UPDATE pgbench_branches SET bbalance = bbalance + 1");
    let b = backup("backup B");
    let db_bytes = pg.int("SELECT sum(pg_database_size(oid))::bigint FROM pg_database") as u64;
    pg.stop();

    let fresh = env.path("fresh");
    let (full_wall, full) = run_json(pgk(&["restore", "--backup", &b, "--to"], &fresh), "full restore of B");
    let _ = std::fs::remove_dir_all(&fresh);
    let (delta_wall, delta) =
        run_json(pgk(&["restore", "--delta", "--backup", &b, "--to"], &copy), "delta restore of B onto the copy");

    let full_bytes = full["size"].as_u64().unwrap_or(0);
    let delta_bytes = delta["bytes_written"].as_u64().unwrap_or(0);
    println!(
        "delta restore vs full restore of the same backup (pgbench scale {scale}, {change_pct} % of accounts changed)"
    );
    println!("database: {:.0} MiB; backup: {} files", db_bytes as f64 / 1_048_576.0, full["files"]);
    println!("full restore:  {:>10} bytes written in {:>6.1}s", full_bytes, full_wall.as_secs_f64());
    println!(
        "delta restore: {:>10} bytes written in {:>6.1}s ({} files changed, {} created, {} removed, {} unchanged)",
        delta_bytes,
        delta_wall.as_secs_f64(),
        delta["files_changed"],
        delta["files_created"],
        delta["files_removed"],
        delta["files_unchanged"]
    );
    let of_db = delta_bytes as f64 / db_bytes as f64;
    println!("bytes written, delta/full: {:.4}", delta_bytes as f64 / full_bytes as f64);
    println!(
        "bytes written, delta/database: {of_db:.4} (target ≤ 0.05: {})",
        if of_db <= 0.05 { "met" } else { "NOT met" }
    );
    println!("time, delta/full: {:.3}", delta_wall.as_secs_f64() / full_wall.as_secs_f64());
}
