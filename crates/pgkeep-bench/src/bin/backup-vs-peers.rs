//! Issue 2's benchmark: backup and restore throughput, archive-push latency and peak RSS of
//! pgkeep against pg_basebackup (-Ft --compress=client-zstd:1) and, when Debian's `pgbackrest`
//! is installed, pgBackRest (zst level 1, process-max 2) — on the same cluster, in the same run.
//!
//! Data: pgbench at --scale (default 50) plus a table of --random-mb (default 300) MB of
//! random bytes (pgbench data compresses ~20x, real data does not).
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench && target/release/backup-vs-peers [--scale 50] [--random-mb 300] [--runs 2]
//!
//! Targets (issue 2): backup >= 1.0x pg_basebackup and >= 2x pgBackRest; restore >= 1.0x
//! pgBackRest; archive-push per 16 MiB segment <= pgBackRest's; peak RSS < 200 MB.

use std::path::Path;
use std::process::Command;

use pgkeep_bench::{arg, best, mib_per_s, timed, LocalBench, Run};

fn main() {
    let scale: u32 = arg("--scale", 50);
    let random_mb: u64 = arg("--random-mb", 300);
    let runs: usize = arg("--runs", 2);
    let segments: usize = arg("--segments", 8);
    let bench = LocalBench::start("bench");
    let (env, pg, repo) = (&bench.env, &bench.pg, &bench.repo);
    let as_owner = |c: Command| bench.as_owner(c);
    let pgk = |args: &[&str]| bench.pgkeep(args);

    eprintln!("loading pgbench scale {scale} and {random_mb} MB of random bytes …");
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
    pg.sql("CREATE EXTENSION IF NOT EXISTS pgcrypto");
    let rows = random_mb * 1024 * 1024 / 1000;
    pg.sql(&format!("CREATE TABLE random_data AS SELECT g AS id, gen_random_bytes(1000) AS payload FROM generate_series(1, {rows}) g"));
    pg.sql("CHECKPOINT");
    let db_bytes: u64 = pg.int("SELECT sum(pg_database_size(oid))::bigint FROM pg_database") as u64;

    // Warm the page cache so every tool reads from memory alike.
    timed(&mut pgk(&["backup"]), "pgkeep backup (warm-up)");

    let have_pgbackrest =
        Command::new("pgbackrest").arg("version").output().map(|o| o.status.success()).unwrap_or(false);
    let pbr_dir = env.owned_dir("pgbackrest");
    let pbr_conf = pbr_dir.join("pgbackrest.conf");
    let write_conf = |stanza: &str, repo_path: &Path| bench.pgbackrest_conf(&pbr_dir, stanza, repo_path, "");
    let pbr = |args: &[&str]| {
        let mut c = Command::new("pgbackrest");
        c.arg(format!("--config={}", pbr_conf.display())).args(args);
        as_owner(c)
    };
    if have_pgbackrest {
        let text = write_conf("bench", &pbr_dir.join("repo"));
        std::fs::write(&pbr_conf, text).unwrap();
        env.chown(&pbr_dir);
        timed(&mut pbr(&["--stanza=bench", "stanza-create"]), "pgbackrest stanza-create");
    }

    let mut r_pgkeep = Vec::new();
    let mut r_basebackup = Vec::new();
    let mut r_pbr = Vec::new();
    let mut stored = 0u64;
    for i in 0..runs {
        eprintln!("backup round {} of {runs} …", i + 1);
        let out = env.owned_dir(&format!("basebackup-{i}"));
        let mut c = pg.tool("pg_basebackup");
        c.args(["-Ft", "--compress=client-zstd:1", "--checkpoint=fast", "-D"]).arg(out.join("b"));
        r_basebackup.push(timed(&mut c, "pg_basebackup"));
        let _ = std::fs::remove_dir_all(&out);
        if have_pgbackrest {
            r_pbr.push(timed(&mut pbr(&["--stanza=bench", "--type=full", "backup"]), "pgbackrest backup"));
        }
        r_pgkeep.push(timed(&mut pgk(&["backup"]), "pgkeep backup"));
    }
    let list = Command::new(&env.pgkeep).arg("--repo").arg(repo).arg("list").arg("--json").output().unwrap();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&list.stdout) {
        stored = v.as_array().and_then(|a| a.last()).and_then(|b| b["stored_size"].as_u64()).unwrap_or(0);
    }

    let mut rr_pgkeep = Vec::new();
    let mut rr_pbr = Vec::new();
    let restores = env.owned_dir("restores");
    for i in 0..runs {
        eprintln!("restore round {} of {runs} …", i + 1);
        let d = restores.join(format!("pgkeep-{i}"));
        rr_pgkeep.push(timed(&mut pgk(&["restore", "--to", d.to_str().unwrap()]), "pgkeep restore"));
        let _ = std::fs::remove_dir_all(&d);
        if have_pgbackrest {
            let d = env.owned_dir(&format!("restore-pbr-{i}"));
            rr_pbr.push(timed(
                &mut pbr(&["--stanza=bench", &format!("--pg1-path={}", d.display()), "restore"]),
                "pgbackrest restore",
            ));
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    // archive-push of real 16 MiB segments into fresh archives.
    let segs_dir = env.owned_dir("segments");
    let mut names: Vec<String> = walk(&repo.join("wal")).into_iter().filter(|n| n.len() == 24).collect();
    names.sort();
    names.truncate(segments);
    for n in &names {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--repo").arg(repo).arg("archive-get").arg(n).arg(segs_dir.join(n));
        timed(&mut c, "archive-get");
    }
    env.chown(&segs_dir);
    let repo2 = env.path("pgkeep-repo-push");
    let mut init2 = Command::new(&env.pgkeep);
    init2.arg("init").arg("--repo").arg(&repo2).arg("--pgdata").arg(pg.pgdata());
    timed(&mut init2, "pgkeep init (push)");
    if have_pgbackrest {
        let text = write_conf("push", &pbr_dir.join("repo-push"));
        std::fs::write(&pbr_conf, text).unwrap();
        env.chown(&pbr_dir);
        timed(&mut pbr(&["--stanza=push", "stanza-create"]), "pgbackrest stanza-create (push)");
    }
    let mut p_pgkeep = Vec::new();
    let mut p_pbr = Vec::new();
    for n in &names {
        let seg = segs_dir.join(n);
        let mut c = Command::new(&env.pgkeep);
        c.arg("--repo").arg(&repo2).arg("archive-push").arg(&seg);
        p_pgkeep.push(timed(&mut as_owner(c), "pgkeep archive-push"));
        if have_pgbackrest {
            p_pbr.push(timed(
                &mut pbr(&["--stanza=push", "archive-push", seg.to_str().unwrap()]),
                "pgbackrest archive-push",
            ));
        }
    }

    report(Report {
        db_bytes,
        stored,
        basebackup: best(&r_basebackup),
        pbr: (!r_pbr.is_empty()).then(|| best(&r_pbr)),
        pgkeep: best(&r_pgkeep),
        restore_pgkeep: best(&rr_pgkeep),
        restore_pbr: (!rr_pbr.is_empty()).then(|| best(&rr_pbr)),
        push_pgkeep: mean_ms(&p_pgkeep),
        push_pbr: (!p_pbr.is_empty()).then(|| mean_ms(&p_pbr)),
        rss_backup: r_pgkeep.iter().map(|r| r.max_rss_kib).max().unwrap_or(0),
        rss_restore: rr_pgkeep.iter().map(|r| r.max_rss_kib).max().unwrap_or(0),
        rss_push: p_pgkeep.iter().map(|r| r.max_rss_kib).max().unwrap_or(0),
        segments: names.len(),
    });
}

struct Report {
    db_bytes: u64,
    stored: u64,
    basebackup: Run,
    pbr: Option<Run>,
    pgkeep: Run,
    restore_pgkeep: Run,
    restore_pbr: Option<Run>,
    push_pgkeep: f64,
    push_pbr: Option<f64>,
    rss_backup: u64,
    rss_restore: u64,
    rss_push: u64,
    segments: usize,
}

fn report(r: Report) {
    let mb = |run: Run| mib_per_s(r.db_bytes, run.wall);
    println!(
        "database: {:.0} MiB (pgkeep stored {:.0} MiB)",
        r.db_bytes as f64 / 1_048_576.0,
        r.stored as f64 / 1_048_576.0
    );
    println!(
        "backup   pgkeep        {:7.1} s  {:7.1} MiB/s  peak RSS {} MiB",
        r.pgkeep.wall.as_secs_f64(),
        mb(r.pgkeep),
        r.rss_backup / 1024
    );
    println!("backup   pg_basebackup {:7.1} s  {:7.1} MiB/s", r.basebackup.wall.as_secs_f64(), mb(r.basebackup));
    if let Some(p) = r.pbr {
        println!("backup   pgBackRest    {:7.1} s  {:7.1} MiB/s", p.wall.as_secs_f64(), mb(p));
    }
    println!(
        "restore  pgkeep        {:7.1} s  {:7.1} MiB/s  peak RSS {} MiB",
        r.restore_pgkeep.wall.as_secs_f64(),
        mb(r.restore_pgkeep),
        r.rss_restore / 1024
    );
    if let Some(p) = r.restore_pbr {
        println!("restore  pgBackRest    {:7.1} s  {:7.1} MiB/s", p.wall.as_secs_f64(), mb(p));
    }
    println!(
        "archive-push per 16 MiB segment ({} segments): pgkeep {:.1} ms (peak RSS {} MiB)",
        r.segments,
        r.push_pgkeep,
        r.rss_push / 1024
    );
    if let Some(p) = r.push_pbr {
        println!("archive-push per 16 MiB segment ({} segments): pgBackRest {:.1} ms", r.segments, p);
    }
    println!("ratios (higher is better for pgkeep):");
    let ratio = |a: std::time::Duration, b: std::time::Duration| b.as_secs_f64() / a.as_secs_f64();
    println!("  backup  vs pg_basebackup: {:.2}x (target >= 1.0)", ratio(r.pgkeep.wall, r.basebackup.wall));
    if let Some(p) = r.pbr {
        println!("  backup  vs pgBackRest:    {:.2}x (target >= 2.0)", ratio(r.pgkeep.wall, p.wall));
    }
    if let Some(p) = r.restore_pbr {
        println!("  restore vs pgBackRest:    {:.2}x (target >= 1.0)", ratio(r.restore_pgkeep.wall, p.wall));
    }
    if let Some(p) = r.push_pbr {
        println!("  archive-push vs pgBackRest: {:.2}x (target >= 1.0: pgkeep no slower)", p / r.push_pgkeep);
    }
    println!(
        "  peak RSS: backup {} MiB, restore {} MiB, archive-push {} MiB (target < 200 MB)",
        r.rss_backup / 1024,
        r.rss_restore / 1024,
        r.rss_push / 1024
    );
}

fn mean_ms(runs: &[Run]) -> f64 {
    runs.iter().map(|r| r.wall.as_secs_f64() * 1000.0).sum::<f64>() / runs.len().max(1) as f64
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}
