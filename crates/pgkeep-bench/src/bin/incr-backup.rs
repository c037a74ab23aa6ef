//! Issue 12's benchmark (acceptance 3): block-level incremental backups on a pgbench database
//! (default scale 150, ≈ 2.2 GB) after changing ≈ 1 % of its blocks, against pgkeep's own full
//! backup and pgBackRest 2.45 `--type=incr` with `repo1-bundle=y repo1-block=y` on the same
//! change, in the same run; then restore of a chain of 5 (full + 4 incr) against a full.
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench && target/release/incr-backup [--scale 150] [--every 500]
//!
//! (Named incr-backup: cargo forbids a binary named `incremental`, the name of its own build
//! directory.)
//!
//! Targets: incr time <= 10 % of a full's; bytes read from PGDATA (the report's counter)
//! <= 5 % of the database; stored bytes <= 3x the changed blocks (pages whose LSN is newer than
//! the full's start, counted with pageinspect); >= 3x faster than pgBackRest's incr; restore of
//! the chain of 5 <= 1.25x a full's restore.

use std::process::Command;
use std::time::{Duration, Instant};

use pgkeep_bench::{arg, best, timed, LocalBench, Run};
use pgkeep_testkit::TestCluster;

fn main() {
    let scale: u32 = arg("--scale", 150);
    // Rows of one 61-row group in `every` of pgbench_accounts are updated per change: with the
    // new row versions and index entries that is ≈ 1 % of the database's blocks at 500.
    let every: u32 = arg("--every", 500);
    let bench = LocalBench::start("bench");
    let (env, pg) = (&bench.env, &bench.pg);
    let pgk = |args: &[&str]| bench.pgkeep(args);

    eprintln!("loading pgbench scale {scale} …");
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
    pg.sql("CREATE EXTENSION IF NOT EXISTS pageinspect");
    pg.sql("CHECKPOINT");
    let db_bytes: u64 = pg.int("SELECT sum(pg_database_size(oid))::bigint FROM pg_database") as u64;

    let pbr_dir = env.owned_dir("pgbackrest");
    let pbr_conf = pbr_dir.join("pgbackrest.conf");
    let extra = "repo1-bundle=y\nrepo1-block=y\nbeta=y\n";
    std::fs::write(&pbr_conf, bench.pgbackrest_conf(&pbr_dir, "bench", &pbr_dir.join("repo"), extra)).unwrap();
    env.chown(&pbr_dir);
    let pbr = |args: &[&str]| {
        let mut c = Command::new("pgbackrest");
        c.arg(format!("--config={}", pbr_conf.display())).arg("--stanza=bench").args(args);
        bench.as_owner(c)
    };
    timed(&mut pbr(&["stanza-create"]), "pgbackrest stanza-create");

    // Warm the page cache so every tool reads from memory alike.
    timed(&mut pgk(&["backup"]), "pgkeep backup (warm-up)");
    let full_pbr = timed(&mut pbr(&["--type=full", "backup"]), "pgbackrest full backup");
    let (full, full_report) = backup_json(&pgk(&["--json", "backup", "--type", "full"]), "pgkeep full backup");
    let full_start = full_report["start_lsn"].as_str().unwrap_or("0/0").to_string();

    change_one_percent(pg, 1, every);
    let changed = changed_bytes(pg, &full_start);
    let pbr_incr = timed(&mut pbr(&["--type=incr", "backup"]), "pgbackrest incr backup");
    let (incr, incr_report) = backup_json(&pgk(&["--json", "backup", "--type", "incr"]), "pgkeep incr backup");
    assert_eq!(incr_report["reference"], full_report["id"], "the incr refers to the full");

    // A chain of 5: three more incrementals, each after another 1 % change.
    let mut last = incr_report["id"].as_str().unwrap_or_default().to_string();
    for round in 2..=4 {
        change_one_percent(pg, round, every);
        let (_, r) = backup_json(&pgk(&["--json", "backup", "--type", "incr"]), "pgkeep incr backup (chain)");
        last = r["id"].as_str().unwrap_or_default().to_string();
    }
    let restores = env.owned_dir("restores");
    let mut r_full = Vec::new();
    let mut r_chain = Vec::new();
    // Each restore starts with no dirty pages of the previous one still being written back
    // (a restore fsyncs what it wrote; a backlog left by the one before would be timed too).
    let settle = || {
        let _ = Command::new("sync").status();
    };
    for i in 0..2 {
        settle();
        let d = restores.join(format!("full-{i}"));
        let id = full_report["id"].as_str().unwrap_or_default();
        r_full.push(timed(&mut pgk(&["restore", "--backup", id, "--to", d.to_str().unwrap()]), "restore full"));
        let _ = std::fs::remove_dir_all(&d);
        settle();
        let d = restores.join(format!("chain-{i}"));
        r_chain.push(timed(&mut pgk(&["restore", "--backup", &last, "--to", d.to_str().unwrap()]), "restore chain"));
        let _ = std::fs::remove_dir_all(&d);
    }

    let read = incr_report["bytes_read"].as_u64().unwrap_or(0);
    let stored = incr_report["stored_size"].as_u64().unwrap_or(0);
    let mib = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "database: {:.0} MiB; changed blocks (page LSN newer than the full's start): {:.1} MiB ({:.1} %)",
        mib(db_bytes),
        mib(changed),
        100.0 * changed as f64 / db_bytes as f64
    );
    println!("backup full  pgkeep      {:7.2} s", full.as_secs_f64());
    println!("backup full  pgBackRest  {:7.2} s", full_pbr.wall.as_secs_f64());
    println!(
        "backup incr  pgkeep      {:7.2} s  read {:.1} MiB, stored {:.1} MiB, {} file(s) read whole",
        incr.as_secs_f64(),
        mib(read),
        mib(stored),
        incr_report["files_read_whole"]
    );
    println!("backup incr  pgBackRest  {:7.2} s", pbr_incr.wall.as_secs_f64());
    println!("phases (s)   pgkeep full: {}", phases(&full_report));
    println!("             pgkeep incr: {}", phases(&incr_report));
    let (rf, rc) = (best(&r_full), best(&r_chain));
    println!("restore full             {:7.2} s", rf.wall.as_secs_f64());
    println!("restore chain of 5       {:7.2} s (peak RSS {} MiB)", rc.wall.as_secs_f64(), rc.max_rss_kib / 1024);
    println!("ratios:");
    let pct = |a: f64, b: f64| 100.0 * a / b;
    println!(
        "  incr time / full time:            {:5.1} % (target <= 10 %)",
        pct(incr.as_secs_f64(), full.as_secs_f64())
    );
    println!("  bytes read / database:            {:5.1} % (target <= 5 %)", pct(read as f64, db_bytes as f64));
    println!("  stored / changed blocks:          {:5.2}x (target <= 3x)", stored as f64 / changed.max(1) as f64);
    println!(
        "  pgBackRest incr / pgkeep incr:    {:5.2}x (target >= 3x)",
        pbr_incr.wall.as_secs_f64() / incr.as_secs_f64()
    );
    println!("  restore chain of 5 / full:        {:5.2}x (target <= 1.25x)", ratio(rc, rf));
}

/// The report's `phases` as `name seconds` pairs.
fn phases(report: &serde_json::Value) -> String {
    let list = report["phases"].as_array().cloned().unwrap_or_default();
    let each = list
        .iter()
        .map(|p| format!("{} {:.3}", p["phase"].as_str().unwrap_or("?"), p["seconds"].as_f64().unwrap_or(0.0)));
    each.collect::<Vec<_>>().join(", ")
}

fn ratio(a: Run, b: Run) -> f64 {
    a.wall.as_secs_f64() / b.wall.as_secs_f64()
}

/// Run a `--json` backup; its wall time and report.
fn backup_json(cmd: &Command, what: &str) -> (Duration, serde_json::Value) {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let started = Instant::now();
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let wall = started.elapsed();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    (wall, serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON: {e}")))
}

/// The rows of one 61-row group in `every` of pgbench_accounts, plus pgbench's own tables.
fn change_one_percent(pg: &TestCluster, round: u32, every: u32) {
    pg.sql(&format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE (aid / 61) % {every} = {round}"));
    pg.sql("UPDATE pgbench_branches SET bbalance = bbalance + 1");
    pg.sql("CHECKPOINT");
}

/// Bytes of the main-fork blocks of database `postgres` whose page LSN is after `since`.
fn changed_bytes(pg: &TestCluster, since: &str) -> u64 {
    let sql = format!(
        "SELECT count(*) * 8192 FROM pg_class c, LATERAL generate_series(0, pg_relation_size(c.oid) / 8192 - 1) b \
         WHERE c.relkind IN ('r', 'i', 't', 'm', 'S') AND pg_relation_size(c.oid) > 0 \
           AND (page_header(get_raw_page(c.oid::regclass::text, 'main', b::int))).lsn > '{since}'::pg_lsn"
    );
    pg.int(&sql) as u64
}
