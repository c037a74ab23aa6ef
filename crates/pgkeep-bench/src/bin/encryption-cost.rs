//! Issue 9's encryption benchmark: backup and restore throughput into a plain and an
//! encrypted repository, same cluster, same run, rounds interleaved so both see the same page
//! cache and machine load. Prints MB/s and the encrypted/plain ratio (target: >= 0.90).
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench && target/release/encryption-cost [--scale 20] [--random-mb 100] [--runs 3]

use std::process::Command;

use pgkeep::pg::instance::run_as;
use pgkeep_bench::{arg, best, mib_per_s, pgkeep_release_binary, timed, Run};
use pgkeep_testkit::{ClusterOptions, TestEnv};

fn main() {
    let scale: u32 = arg("--scale", 20);
    let random_mb: u64 = arg("--random-mb", 100);
    let runs: usize = arg("--runs", 3);
    let pgkeep = pgkeep_release_binary();
    let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
    let owner = env.owner.clone();
    let plain = env.path("plain-repo");
    let sealed = env.path("sealed-repo");
    let key = env.path("repo.key");
    let mut k = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").expect("urandom"), &mut k).expect("key");
    std::fs::write(&key, k).expect("write key");
    pgkeep::fsutil::set_mode(&key, 0o600).expect("chmod key");
    env.chown(&key);
    // One archive_command feeding both repositories, so each backup finds its WAL.
    let exe = env.pgkeep.display().to_string();
    let archive = format!(
        "\"{exe}\" --repo \"{}\" archive-push \"%p\" && \"{exe}\" --repo \"{}\" --encryption-key-file \"{}\" archive-push \"%p\"",
        plain.display(),
        sealed.display(),
        key.display()
    );
    let mut pg = env.cluster(
        "bench",
        ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &archive)
            .with("shared_buffers", "256MB")
            .with("max_wal_size", "8GB")
            .with("checkpoint_timeout", "30min"),
    );
    pg.start();
    let pgk = |repo: &std::path::Path, encrypted: bool, args: &[&str]| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--quiet").arg("--repo").arg(repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        if encrypted {
            c.arg("--encryption-key-file").arg(&key);
        }
        c.args(args);
        run_as(&mut c, owner.as_ref());
        c.current_dir("/");
        c
    };
    for (repo, enc) in [(&plain, false), (&sealed, true)] {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--repo").arg(repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        if enc {
            c.arg("--encryption-key-file").arg(&key);
        }
        timed(c.arg("init"), "pgkeep init");
    }
    eprintln!("loading pgbench scale {scale} and {random_mb} MB of random bytes …");
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
    pg.sql("CREATE EXTENSION IF NOT EXISTS pgcrypto");
    let rows = random_mb * 1024 * 1024 / 1000;
    pg.sql(&format!(
        "CREATE TABLE random_data AS SELECT g AS id, gen_random_bytes(1000) AS payload FROM generate_series(1, {rows}) g"
    ));
    pg.sql("CHECKPOINT");
    let db_bytes = pg.int("SELECT sum(pg_database_size(oid))::bigint FROM pg_database") as u64;
    timed(&mut pgk(&plain, false, &["backup"]), "warm-up backup");

    let (mut bp, mut be, mut rp, mut re): (Vec<Run>, Vec<Run>, Vec<Run>, Vec<Run>) = Default::default();
    let restores = env.owned_dir("restores");
    for i in 0..runs {
        eprintln!("round {} of {runs} …", i + 1);
        // Alternate which goes first, so neither always meets a cache the other warmed.
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for enc in order {
            let (repo, b) = if enc { (&sealed, &mut be) } else { (&plain, &mut bp) };
            b.push(timed(&mut pgk(repo, enc, &["backup"]), "backup"));
        }
        for enc in order {
            let (repo, out) = if enc { (&sealed, &mut re) } else { (&plain, &mut rp) };
            let d = restores.join(format!("r-{enc}-{i}"));
            out.push(timed(&mut pgk(repo, enc, &["restore", "--to", d.to_str().expect("utf-8")]), "restore"));
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    let line = |what: &str, p: &[Run], e: &[Run]| {
        let (p, e) = (best(p), best(e));
        let (mp, me) = (mib_per_s(db_bytes, p.wall), mib_per_s(db_bytes, e.wall));
        println!(
            "{what:8} plain {mp:7.1} MiB/s  encrypted {me:7.1} MiB/s  ratio {:.3} (target >= 0.90)  peak RSS {} / {} MiB",
            me / mp,
            p.max_rss_kib / 1024,
            e.max_rss_kib / 1024
        );
    };
    println!("database {} MiB (pgbench scale {scale} + {random_mb} MB random), best of {runs}", db_bytes / 1_048_576);
    line("backup", &bp, &be);
    line("restore", &rp, &re);
}
