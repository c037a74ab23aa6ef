//! Issue 9, acceptance 8: pgkeep against pgBackRest on the same S3 server in the same run.
//!
//! One S3 server on 127.0.0.1 (s3s-fs when installed, else moto_server), behind the testkit's
//! fault proxy (which adds the per-request latency of the WAL measurements) and behind the
//! testkit's TLS terminator with a CA made here, because pgBackRest speaks S3 over TLS only; pgkeep goes through the
//! same TLS hop (its `[s3] ca_file`), so both pay the same transport. pgBackRest 2.45 does not
//! match IP addresses in a certificate, so it runs with `repo1-storage-verify-tls=n`. Measured:
//! Both tools use zstd level 1 and [`PROCESSES`] workers (pgBackRest `process-max`, pgkeep
//! `--jobs` for backup and restore, `archive_push_jobs`).
//! - full backup MiB/s (pgbench at --scale plus --random-mb MB of random bytes), best of --runs;
//! - restore MiB/s of that backup (materialisation only, no recovery);
//! - archive-push segments/s of --segments real 16 MiB segments with --latency-ms per request,
//!   driven as PostgreSQL drives archive_command (one call at a time, in order, `.ready` renamed
//!   to `.done` after each success): pgkeep with `archive_async`, pgBackRest with
//!   `archive-async=y process-max=4`;
//! - peak RSS of every pgkeep backup (wait4 rusage) against acceptance 7's 200 MB;
//! - PITR replay time: a restore to an LSN --segments segments past the backup, started, timed
//!   until promoted, with the same latency: pgkeep's `archive_get_queue` prefetch against
//!   pgBackRest's async archive-get.
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench
//!   target/release/s3-vs-pgbackrest [--scale 50] [--random-mb 300] [--runs 1] [--segments 64] [--latency-ms 100] [--server s3s-fs|moto]
//!
//! `--segments 0` stops after the backups and restores (no WAL measurements).
//!
//! Needs Debian's `pgbackrest` (`apt-get install pgbackrest`) and `openssl`, the venv of
//! scripts/setup.sh (boto3 creates the bucket) and, for the s3s-fs server,
//! `cargo install s3s-fs --version 0.14.1 --features binary --root /opt/s3s`.
//! Targets: backup >= 2x pgBackRest, restore >= 1.5x, archive-push >= 1x pgBackRest async,
//! PITR replay >= 1x pgBackRest async archive-get.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgkeep::pg::instance::{free_port, run_as};
use pgkeep_bench::{arg, best, mib_per_s, pgkeep_release_binary, timed, Run};
use pgkeep_testkit::{ClusterOptions, FaultProxy, MotoServer, TestCluster, TestEnv, TlsTerminator};

const BUCKET: &str = "bench";
const ACCESS_KEY: &str = "AKIAPGKEEPBENCH00001";
const SECRET_KEY: &str = "pgkeepBenchSecret0000000000000000000000";
/// Workers of either tool: pgBackRest's process-max, pgkeep's --jobs (and archive_push_jobs).
const PROCESSES: usize = 4;
/// Issue 9, acceptance 7: peak RSS of a backup to S3.
const RSS_TARGET_MB: u64 = 200;

fn main() {
    let scale: u32 = arg("--scale", 50);
    let random_mb: u64 = arg("--random-mb", 300);
    let runs: usize = arg("--runs", 1);
    let segments: usize = arg("--segments", 64);
    let latency = Duration::from_millis(arg("--latency-ms", 100));
    let server: String = arg("--server", String::from("auto"));
    let pgkeep = pgkeep_release_binary();
    let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
    assert!(
        Command::new("pgbackrest").arg("version").output().is_ok_and(|o| o.status.success()),
        "pgbackrest is not installed: apt-get install pgbackrest"
    );

    let s3 = S3Server::start(&env, &server);
    let proxy = FaultProxy::start(s3.port());
    let tls = TlsTerminator::start(&env, proxy.port());
    eprintln!("S3 server: {} on port {}, TLS on {}, proxy on {}", s3.name(), s3.port(), tls.port, proxy.port());

    let dir = env.owned_dir("bench");
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ];
    let spool = env.owned_dir("spool");
    // Each run gets its own spool: the cluster's archiver and the push measurement must not share one.
    let pgkeep_text = |spool_name: &str| {
        format!(
            "archive_async = true\narchive_push_jobs = {PROCESSES}\narchive_get_queue = 8\nspool_dir = \"{}\"\n\n[s3]\nendpoint = \"https://127.0.0.1:{}\"\nregion = \"us-east-1\"\nca_file = \"{}\"\nforce_path_style = true\n",
            spool.join(spool_name).display(),
            tls.port,
            tls.ca.display()
        )
    };
    let pgkeep_conf = dir.join("pgkeep.toml");
    write(&pgkeep_conf, &pgkeep_text("pgkeep"));
    let pgkeep_push_conf = dir.join("pgkeep-push.toml");
    write(&pgkeep_push_conf, &pgkeep_text("pgkeep-push"));
    let pbr_conf = dir.join("pgbackrest.conf");

    let exe = env.pgkeep.display().to_string();
    let pgkeep_repo = format!("s3://{BUCKET}/pgkeep");
    let archive = format!(
        "\"{exe}\" --config \"{}\" --repo {pgkeep_repo} archive-push \"%p\" && pgbackrest --config={} --stanza=bench archive-push \"%p\"",
        pgkeep_conf.display(),
        pbr_conf.display()
    );
    let mut pg = env.cluster(
        "src",
        ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &archive)
            .with("shared_buffers", "256MB")
            .with("max_wal_size", "8GB")
            .with("checkpoint_timeout", "30min"),
    );
    for (k, v) in aws_env {
        pg.env(k, v);
    }
    pg.start();
    let pg = pg;
    let pbr_text = |pg1_path: &Path, repo_path: &str, run: &str| {
        format!(
            "[global]\nrepo1-type=s3\nrepo1-path={repo_path}\nrepo1-s3-bucket={BUCKET}\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={}\nrepo1-s3-region=us-east-1\nrepo1-s3-key={ACCESS_KEY}\nrepo1-s3-key-secret={SECRET_KEY}\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\nlock-path={d}/lock-{run}\nlog-path={d}/log\nspool-path={d}/spool-{run}\nlog-level-console=warn\nlog-level-file=off\ncompress-type=zst\ncompress-level=1\nprocess-max={PROCESSES}\narchive-async=y\narchive-check=n\nstart-fast=y\n\n[bench]\npg1-path={}\npg1-socket-path={}\npg1-port={}\npg1-user={}\n",
            tls.port,
            pg1_path.display(),
            pg.inst.socket_dir.display(),
            pg.inst.port,
            pg.inst.superuser,
            d = dir.display(),
        )
    };
    write(&pbr_conf, &pbr_text(pg.pgdata(), "/pgbackrest", "main"));
    env.chown(&dir);

    let owner = env.owner.clone();
    let as_owner = |mut c: Command| {
        run_as(&mut c, owner.as_ref());
        c.current_dir("/");
        for (k, v) in aws_env {
            c.env(k, v);
        }
        c
    };
    let pgk = |args: &[&str]| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--quiet").arg("--config").arg(&pgkeep_conf).arg("--repo").arg(&pgkeep_repo);
        c.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata()).args(args);
        as_owner(c)
    };
    let pbr = |conf: &Path, args: &[&str]| {
        let mut c = Command::new("pgbackrest");
        c.arg(format!("--config={}", conf.display())).arg("--stanza=bench").args(args);
        as_owner(c)
    };
    timed(&mut pgk(&["init"]), "pgkeep init");
    timed(&mut pbr(&pbr_conf, &["stanza-create"]), "pgbackrest stanza-create");

    eprintln!("loading pgbench scale {scale} and {random_mb} MB of random bytes …");
    pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
    pg.sql("CREATE EXTENSION IF NOT EXISTS pgcrypto");
    let rows = random_mb * 1024 * 1024 / 1000;
    pg.sql(&format!(
        "CREATE TABLE random_data AS SELECT g AS id, gen_random_bytes(1000) AS payload FROM generate_series(1, {rows}) g"
    ));
    pg.sql("CHECKPOINT");
    let db_bytes = pg.int("SELECT sum(pg_database_size(oid))::bigint FROM pg_database") as u64;

    let jobs = PROCESSES.to_string();
    // Backups, alternating which tool goes first so neither always meets a cache the other warmed.
    let (mut b_pgkeep, mut b_pbr) = (Vec::new(), Vec::new());
    timed(&mut pgk(&["backup", "--jobs", &jobs]), "pgkeep backup (warm-up)");
    for i in 0..runs {
        eprintln!("backup round {} of {runs} …", i + 1);
        if i % 2 == 0 {
            b_pbr.push(timed(&mut pbr(&pbr_conf, &["--type=full", "backup"]), "pgbackrest backup"));
            b_pgkeep.push(timed(&mut pgk(&["backup", "--jobs", &jobs]), "pgkeep backup"));
        } else {
            b_pgkeep.push(timed(&mut pgk(&["backup", "--jobs", &jobs]), "pgkeep backup"));
            b_pbr.push(timed(&mut pbr(&pbr_conf, &["--type=full", "backup"]), "pgbackrest backup"));
        }
    }

    let (mut r_pgkeep, mut r_pbr) = (Vec::new(), Vec::new());
    let restores = env.owned_dir("restores");
    for i in 0..runs {
        eprintln!("restore round {} of {runs} …", i + 1);
        let d = restores.join(format!("pgkeep-{i}"));
        let to = d.to_str().expect("utf-8");
        r_pgkeep.push(timed(&mut pgk(&["restore", "--to", to, "--jobs", &jobs]), "pgkeep restore"));
        let _ = std::fs::remove_dir_all(&d);
        let d = env.owned_dir(&format!("restore-pbr-{i}"));
        r_pbr.push(timed(
            &mut pbr(&pbr_conf, &[&format!("--pg1-path={}", d.display()), "restore"]),
            "pgbackrest restore",
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    let mb = |r: Run| mib_per_s(db_bytes, r.wall);
    let ratio = |ours: Duration, theirs: Duration| theirs.as_secs_f64() / ours.as_secs_f64();
    let (bk, bp) = (best(&b_pgkeep), best(&b_pbr));
    let (rk, rp) = (best(&r_pgkeep), best(&r_pbr));
    println!(
        "S3 server: {} behind TLS (the testkit's terminator) and the testkit proxy, same for both tools",
        s3.name()
    );
    println!("database: {:.0} MiB", db_bytes as f64 / 1_048_576.0);
    let show = |what: &str, ours: Run, theirs: Run| {
        for (tool, r) in [("pgkeep", ours), ("pgBackRest", theirs)] {
            let (secs, rate, rss) = (r.wall.as_secs_f64(), mb(r), r.max_rss_kib / 1024);
            println!("{what:<8} {tool:<10} {secs:7.1} s {rate:7.1} MiB/s  peak RSS {rss} MiB");
        }
    };
    show("backup", bk, bp);
    show("restore", rk, rp);
    // Acceptance 7 in this run too: many relation files, pgbench's compressible pages, TLS.
    let rss_mb = b_pgkeep.iter().map(|r| r.max_rss_kib).max().unwrap_or(0) / 1024;
    println!(
        "target: peak RSS of every pgkeep backup < {RSS_TARGET_MB} MB: {rss_mb} MB — {}",
        if rss_mb < RSS_TARGET_MB { "met" } else { "MISSED" }
    );
    println!("ratios (pgkeep speed / pgBackRest speed; higher is better for pgkeep):");
    println!("  backup        {:.2}x (target >= 2.0)", ratio(bk.wall, bp.wall));
    println!("  restore       {:.2}x (target >= 1.5)", ratio(rk.wall, rp.wall));
    if segments == 0 {
        return;
    }

    // WAL past the backups for the replay: random bytes do not compress, like real WAL.
    eprintln!("writing {segments}+ segments of WAL …");
    let wal_rows = (segments as u64 + 2) * 16 * 1024 * 1024 / 1000;
    pg.sql(&format!(
        "CREATE TABLE wal_load AS SELECT g AS id, gen_random_bytes(1000) AS payload FROM generate_series(1, {wal_rows}) g"
    ));
    let target_lsn = pg.scalar("SELECT pg_current_wal_lsn()::text");
    let last = pg.switch_wal();
    wait_archived(&pg, &last);

    let replay_pgkeep = {
        let d = restores.join("pitr-pgkeep");
        let to = d.to_str().expect("utf-8");
        timed(
            &mut pgk(&["restore", "--to", to, "--target-lsn", &target_lsn, "--target-action", "promote"]),
            "pgkeep restore (pitr)",
        );
        replay(&env, "pitr-pgkeep-run", &d, &aws_env, &proxy, latency)
    };
    let replay_pbr = {
        let d = env.owned_dir("pitr-pbr");
        timed(
            &mut pbr(
                &pbr_conf,
                &[
                    &format!("--pg1-path={}", d.display()),
                    "--type=lsn",
                    &format!("--target={target_lsn}"),
                    "--target-action=promote",
                    "restore",
                ],
            ),
            "pgbackrest restore (pitr)",
        );
        replay(&env, "pitr-pbr-run", &d, &aws_env, &proxy, latency)
    };

    // archive-push as PostgreSQL drives it, into fresh repositories, real segments of this cluster.
    let push_names = archived_segments(&pg, segments);
    let fake = env.owned_dir("push-pgdata");
    let fake_wal = fake.join("pg_wal");
    std::fs::create_dir_all(fake_wal.join("archive_status")).expect("mkdir fake pg_wal");
    std::fs::create_dir_all(fake.join("global")).expect("mkdir global");
    std::fs::copy(pg.pgdata().join("global/pg_control"), fake.join("global/pg_control")).expect("copy pg_control");
    for n in &push_names {
        std::fs::copy(pg.pgdata().join("pg_wal").join(n), fake_wal.join(n))
            .or_else(|_| {
                let mut c = Command::new(&env.pgkeep);
                c.arg("--config").arg(&pgkeep_conf).arg("--repo").arg(&pgkeep_repo).arg("archive-get").arg(n);
                c.arg(fake_wal.join(n));
                for (k, v) in aws_env {
                    c.env(k, v);
                }
                timed(&mut c, "archive-get (segment for the push test)");
                Ok::<u64, std::io::Error>(0)
            })
            .expect("segment");
    }
    env.chown(&fake);
    let push_repo = format!("s3://{BUCKET}/pgkeep-push");
    let mut init = Command::new(&env.pgkeep);
    init.arg("--config").arg(&pgkeep_conf).arg("--repo").arg(&push_repo).arg("--pg").arg(pg.conninfo());
    init.arg("--pgdata").arg(pg.pgdata()).arg("init");
    timed(&mut as_owner(init), "pgkeep init (push)");
    let pbr_push_conf = dir.join("pgbackrest-push.conf");
    write(&pbr_push_conf, &pbr_text(pg.pgdata(), "/pgbackrest-push", "push"));
    env.chown(&dir);
    timed(&mut pbr(&pbr_push_conf, &["stanza-create"]), "pgbackrest stanza-create (push)");
    write(&pbr_push_conf, &pbr_text(&fake, "/pgbackrest-push", "push"));
    env.chown(&dir);

    proxy.set_latency(latency);
    let push_pgkeep = drive_pushes(&fake_wal, &push_names, |seg| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--config").arg(&pgkeep_push_conf).arg("--repo").arg(&push_repo).arg("archive-push").arg(seg);
        as_owner(c)
    });
    reset_ready(&fake_wal, &push_names);
    let push_pbr = drive_pushes(&fake_wal, &push_names, |seg| {
        let mut c = pbr(&pbr_push_conf, &["archive-push"]);
        c.arg(seg);
        c
    });
    proxy.set_latency(Duration::ZERO);

    let n = push_names.len() as f64;
    println!(
        "archive-push, {} segments, {} ms per request: pgkeep {:.2} seg/s, pgBackRest (async, process-max 4) {:.2} seg/s",
        push_names.len(),
        latency.as_millis(),
        n / push_pgkeep.as_secs_f64(),
        n / push_pbr.as_secs_f64()
    );
    println!(
        "PITR replay of {segments}+ segments, {} ms per request: pgkeep {:.1} s, pgBackRest (async archive-get) {:.1} s",
        latency.as_millis(),
        replay_pgkeep.as_secs_f64(),
        replay_pbr.as_secs_f64()
    );
    println!("  archive-push  {:.2}x (target >= 1.0)", ratio(push_pgkeep, push_pbr));
    println!("  PITR replay   {:.2}x (target >= 1.0)", ratio(replay_pgkeep, replay_pbr));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Start a restored data directory with `latency` added to every store request, time it until
/// recovery has promoted it, stop it.
fn replay(
    env: &TestEnv,
    name: &str,
    pgdata: &Path,
    aws_env: &[(&str, &str)],
    proxy: &FaultProxy,
    latency: Duration,
) -> Duration {
    let mut c: TestCluster = env.cluster_on(name, pgdata);
    for (k, v) in aws_env {
        c.env(k, v);
    }
    // The copy must not archive into either repository.
    c.set("archive_mode", "off");
    proxy.set_latency(latency);
    let started = Instant::now();
    c.start();
    c.wait_promoted();
    let t = started.elapsed();
    proxy.set_latency(Duration::ZERO);
    c.stop();
    t
}

/// Wait until the server reports `seg` (or a later one) archived.
fn wait_archived(pg: &TestCluster, seg: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let last = pg.scalar("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.as_str() >= seg {
            return;
        }
        assert!(Instant::now() < deadline, "{seg} was not archived within 10 minutes (last: {last})");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The names of `n` complete segments written by the WAL load (the newest archived ones).
fn archived_segments(pg: &TestCluster, n: usize) -> Vec<String> {
    let last = pg.scalar("SELECT last_archived_wal FROM pg_stat_archiver");
    let tli = u32::from_str_radix(&last[..8], 16).expect("timeline");
    let seg_size = 16 * 1024 * 1024;
    let lsn = pgkeep_wal::parse_wal_file_name(&last, seg_size);
    let segno = match lsn {
        Some(pgkeep_wal::WalFileName::Segment { segno, .. }) => segno,
        other => panic!("unexpected last archived file {last}: {other:?}"),
    };
    let first = segno.saturating_sub(n as u64);
    (first..segno).map(|s| pgkeep_wal::xlog_file_name(tli, s, seg_size)).collect()
}

/// Call `cmd(segment)` for each segment in order, one at a time, as the archiver does: a
/// failed call is retried (after PostgreSQL's one-second pause) and `.ready` becomes `.done`
/// after each success. Returns the total wall time.
fn drive_pushes(wal: &Path, names: &[String], cmd: impl Fn(&Path) -> Command) -> Duration {
    reset_ready(wal, names);
    let started = Instant::now();
    for n in names {
        let seg = wal.join(n);
        let mut failures = 0;
        loop {
            let out = cmd(&seg).stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("run archive-push");
            if out.status.success() {
                break;
            }
            failures += 1;
            assert!(failures < 5, "archive-push of {n} failed 5 times: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_secs(1));
        }
        let status = wal.join("archive_status");
        std::fs::rename(status.join(format!("{n}.ready")), status.join(format!("{n}.done"))).expect("mark done");
    }
    started.elapsed()
}

/// Every segment marked ready again (and nothing done), as a fresh archiver backlog.
fn reset_ready(wal: &Path, names: &[String]) {
    let status = wal.join("archive_status");
    for n in names {
        let _ = std::fs::remove_file(status.join(format!("{n}.done")));
        std::fs::write(status.join(format!("{n}.ready")), b"").expect("write .ready");
    }
    let _ = Command::new("chown").arg("-R").arg("--reference").arg(wal).arg(wal).status();
}

/// The S3 server both tools write to.
enum S3Server {
    Moto(MotoServer),
    S3sFs { child: Child, port: u16 },
}

impl S3Server {
    fn start(env: &TestEnv, which: &str) -> S3Server {
        let s3s = PathBuf::from(std::env::var("PGKEEP_S3S_FS").unwrap_or_else(|_| "/opt/s3s/bin/s3s-fs".into()));
        let use_s3s = match which {
            "moto" => false,
            "s3s-fs" => true,
            _ => s3s.exists(),
        };
        let moto = MotoServer::start(env.root());
        if !use_s3s {
            moto.python(&format!("s3().create_bucket(Bucket='{BUCKET}')"));
            return S3Server::Moto(moto);
        }
        let root = env.path("s3s-root");
        std::fs::create_dir_all(root.join(BUCKET)).expect("mkdir bucket");
        let port = free_port();
        let log = std::fs::File::create(env.path("s3s-fs.log")).expect("log");
        let child = Command::new(&s3s)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, "--domain", "127.0.0.1"])
            .arg(&root)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", s3s.display()));
        wait_listening(port, "s3s-fs");
        drop(moto);
        S3Server::S3sFs { child, port }
    }

    fn port(&self) -> u16 {
        match self {
            S3Server::Moto(m) => m.port,
            S3Server::S3sFs { port, .. } => *port,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            S3Server::Moto(_) => "moto_server",
            S3Server::S3sFs { .. } => "s3s-fs",
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let S3Server::S3sFs { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
