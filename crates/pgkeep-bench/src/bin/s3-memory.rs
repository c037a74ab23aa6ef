//! Issue 9, acceptance 7: peak RSS of `pgkeep backup` into an S3 repository (moto_server on
//! 127.0.0.1, from the testkit) of a cluster with a table of --table-gb (default 2) GB of
//! random bytes, against the same backup into a local repository in the same run (the peer:
//! what the multipart machinery adds). Peak RSS is the wait4 rusage of the pgkeep process.
//! `--pgbench-scale N` adds pgbench tables (many relation files of compressible pages, so many
//! writers of both kinds, bundles and large objects, are open at once).
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench && target/release/s3-memory [--table-gb 2] [--pgbench-scale 0] [--jobs N] [--server moto|s3s-fs]
//!
//! Target: peak RSS of the S3 backup < 200 MB, whatever the database size.

use std::process::Command;

use pgkeep::pg::instance::run_as;
use pgkeep_bench::{arg, mib_per_s, pgkeep_release_binary, timed};
use pgkeep_testkit::{ClusterOptions, S3Server, S3Store, TestEnv};

const TARGET_MB: u64 = 200;

fn main() {
    let table_gb: u64 = arg("--table-gb", 2);
    let pgbench_scale: u32 = arg("--pgbench-scale", 0);
    let jobs: usize = arg("--jobs", pgkeep::config::default_jobs());
    let pgkeep = pgkeep_release_binary();
    let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
    // moto (default) or s3s-fs: a fast store drains parts sooner, so buffers churn faster.
    let server = match arg("--server", String::from("moto")).as_str() {
        "s3s-fs" => S3Server::S3sFs,
        _ => S3Server::Moto,
    };
    let s3 = S3Store::start_on(&env, server, "pgkeep-bench", "");
    let url = s3.url("memory");
    let local = env.path("local-repo");
    // Both repositories get every segment, so both backups can complete.
    let archive = format!("{} && {}", env.archive_command(&local), s3.archive_command(&env, &url));
    let mut pg = env.cluster(
        "bench",
        ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &archive)
            .with("max_wal_size", "8GB")
            .with("checkpoint_timeout", "30min"),
    );
    pg.start();
    let pgk = |repo: &str, args: &[&str]| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--quiet").arg("--config").arg(&s3.config).arg("--repo").arg(repo);
        c.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata()).args(args);
        c.envs(s3.env());
        run_as(&mut c, env.owner.as_ref());
        c.current_dir("/");
        c
    };
    timed(&mut pgk(&url, &["init"]), "pgkeep init (s3)");
    std::fs::create_dir_all(&local).expect("local repo dir");
    env.chown(&local);
    let local = local.display().to_string();
    timed(&mut pgk(&local, &["init"]), "pgkeep init (local)");

    if pgbench_scale > 0 {
        eprintln!("loading pgbench scale {pgbench_scale} …");
        pg.pgbench(&["-i", "-s", &pgbench_scale.to_string(), "-q"]);
    }
    eprintln!("loading {table_gb} GB of random bytes …");
    pg.sql("CREATE EXTENSION IF NOT EXISTS pgcrypto");
    let rows = table_gb * 1024 * 1024 * 1024 / 1000;
    pg.sql(&format!(
        "CREATE TABLE random_data AS SELECT g AS id, gen_random_bytes(1000) AS payload FROM generate_series(1, {rows}) g"
    ));
    pg.sql("CHECKPOINT");
    let db_bytes = pg.int("SELECT sum(pg_database_size(oid))::bigint FROM pg_database") as u64;
    // The load's WAL must be archived first: a backup waits only so long for its last segment.
    let seg = pg.switch_wal();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    while pg.scalar("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg {
        assert!(std::time::Instant::now() < deadline, "the load's WAL was not archived within 30 min");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }

    let jobs_arg = jobs.to_string();
    eprintln!("backup into {local} …");
    let peer = timed(&mut pgk(&local, &["backup", "--jobs", &jobs_arg]), "pgkeep backup (local)");
    eprintln!("backup into {url} …");
    let s3_run = timed(&mut pgk(&url, &["backup", "--jobs", &jobs_arg]), "pgkeep backup (s3)");

    let mb = |kib: u64| kib / 1024;
    println!(
        "s3-memory: database {:.2} GiB, --jobs {jobs}: backup to s3:// peak RSS {} MB ({:.0} MiB/s), to a local repository {} MB ({:.0} MiB/s); ratio s3/local {:.2}",
        db_bytes as f64 / (1u64 << 30) as f64,
        mb(s3_run.max_rss_kib),
        mib_per_s(db_bytes, s3_run.wall),
        mb(peer.max_rss_kib),
        mib_per_s(db_bytes, peer.wall),
        s3_run.max_rss_kib as f64 / peer.max_rss_kib.max(1) as f64
    );
    let ok = mb(s3_run.max_rss_kib) < TARGET_MB;
    println!(
        "target: peak RSS of backup to S3 < {TARGET_MB} MB: {} MB — {}",
        mb(s3_run.max_rss_kib),
        if ok { "met" } else { "MISSED" }
    );
}
