//! Issue 9's WAL transport benchmark, two parts, each against a peer measured in the same run.
//!
//! 1. Per-call cost on a local repository, the same 16 MiB segment on the same file system,
//!    rounds interleaved, medians: `archive-push` against `cp SEG DIR && sync -f DIR/SEG`
//!    (target ≤ 1.15×), `archive-get` against `cp` without a prefetch hit (≤ 1.5×) and with one
//!    (≤ 0.2×). Every command runs through `sh -c`, as PostgreSQL runs archive_command.
//! 2. PITR replay of at least `--segments` archived segments from S3 (s3s-fs, or moto with
//!    `--server moto`) behind the testkit's fault proxy adding `--latency-ms` to every request:
//!    the same restore with `archive_get_queue = 8` and with `= 0` (target ≥ 4× faster with the
//!    queue), and the same recovery with `restore_command = cp` from a local directory holding
//!    the same segments: how fast PostgreSQL replays them when fetching is free, which bounds
//!    what any queue can gain. Two workloads, one after the other on one cluster: WAL with
//!    nothing to apply (logical messages) first, while the base backup is small, then row
//!    inserts.
//!
//!   cargo build --release -p pgkeep -p pgkeep-bench && target/release/wal-transport [--rounds 15] [--segments 64] [--latency-ms 100] [--only per-call|replay] [--server s3s-fs|moto]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgkeep_bench::{arg, pgkeep_release_binary, timed};
use pgkeep_testkit::{ClusterOptions, S3Server, S3Store, TestCluster, TestEnv};

fn main() {
    let rounds: usize = arg("--rounds", 15);
    let segments: u64 = arg("--segments", 64);
    let latency_ms: u64 = arg("--latency-ms", 100);
    // s3s-fs (Rust) by default: moto (Python) serves one object at a time, and at 8 MB a
    // segment its throughput, not the latency, bounded what the queue could fetch.
    let server = match arg("--server", String::from("s3s-fs")).as_str() {
        "moto" => S3Server::Moto,
        _ => S3Server::S3sFs,
    };
    let only: String = arg("--only", String::new());
    let pgkeep = pgkeep_release_binary();
    if only != "replay" {
        per_call(&pgkeep, rounds);
    }
    if only != "per-call" {
        replay(&pgkeep, server, segments, latency_ms);
    }
}

fn sh(script: &str, cwd: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).current_dir(cwd);
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_call(pgkeep: &Path, rounds: usize) {
    let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
    let exe = env.pgkeep.display().to_string();
    let repo = env.path("repo");
    let mut pg = env.cluster("percall", ClusterOptions::archiving_to(&repo));
    pg.start();
    let mut init = Command::new(&exe);
    init.arg("--repo").arg(&repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata()).arg("init");
    timed(&mut init, "pgkeep init");
    pg.sql("CREATE TABLE t (id int, pad text)");
    let mut segs = Vec::new();
    for _ in 0..3 {
        // A segment full of ordinary records (not a switch's zero tail): what a busy server archives.
        pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 150000) g");
        segs.push(pg.switch_and_wait_archived(&repo));
    }
    let (prev, seg) = (segs[1].clone(), segs[2].clone());
    // The segment beside its predecessor, as in pg_wal; the same bytes for every contender.
    let work = env.path("work");
    std::fs::create_dir_all(&work).expect("mkdir work");
    for s in [&prev, &seg] {
        let mut g = Command::new(&exe);
        g.arg("--repo").arg(&repo).arg("archive-get").arg(s).arg(work.join(s));
        timed(&mut g, "archive-get");
    }
    let push_repo = env.path("push-repo");
    assert!(Command::new("cp").arg("-a").arg(&repo).arg(&push_repo).status().expect("cp").success());
    let stored = push_repo.join(pgkeep::repo::layout::wal_key(&seg));
    assert!(stored.exists(), "{} stored", stored.display());
    let cp_dir = env.path("cp-dir");
    let get_dir = env.path("get-dir");
    for d in [&cp_dir, &get_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // A data directory being restored: pg_control for the system identifier, pg_wal for %p.
    let pgdata = env.path("restoring").join("data");
    std::fs::create_dir_all(pgdata.join("global")).expect("mkdir");
    std::fs::create_dir_all(pgdata.join("pg_wal")).expect("mkdir");
    std::fs::copy(pg.pgdata().join("global/pg_control"), pgdata.join("global/pg_control")).expect("pg_control");
    let noqueue = env.path("noqueue.toml");
    std::fs::write(&noqueue, "archive_get_queue = 0\n").expect("config");
    let queued = env.path("queue8.toml");
    std::fs::write(&queued, format!("archive_get_queue = 8\nspool_dir = \"{}\"\n", env.path("spool").display()))
        .expect("config");
    let seg_path = work.join(&seg);
    let (w, r) = (work.display(), repo.display());
    let (mut push, mut cp_sync, mut get, mut cp, mut hit, mut cp_hit, mut version, mut bare) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&stored);
        push.push(
            timed(
                &mut sh(&format!("\"{exe}\" --repo \"{}\" archive-push \"{w}/{seg}\"", push_repo.display()), &work),
                "push",
            )
            .wall,
        );
        let _ = std::fs::remove_file(cp_dir.join(&seg));
        cp_sync.push(
            timed(
                &mut sh(&format!("cp \"{w}/{seg}\" \"{d}\" && sync -f \"{d}/{seg}\"", d = cp_dir.display()), &work),
                "cp",
            )
            .wall,
        );
        let _ = std::fs::remove_file(get_dir.join(&seg));
        let script = format!(
            "\"{exe}\" --config \"{}\" --repo \"{r}\" archive-get {seg} \"{}/{seg}\"",
            noqueue.display(),
            get_dir.display()
        );
        get.push(timed(&mut sh(&script, &work), "get").wall);
        let _ = std::fs::remove_file(get_dir.join(&seg));
        cp.push(timed(&mut sh(&format!("cp \"{w}/{seg}\" \"{}/{seg}\"", get_dir.display()), &work), "cp").wall);
        // Fill the spool with `seg` (the prefetcher after its predecessor), then time the call it serves.
        let get_q = |name: &str| {
            format!("\"{exe}\" --config \"{}\" --repo \"{r}\" archive-get {name} pg_wal/RECOVERYXLOG", queued.display())
        };
        // PostgreSQL removes RECOVERYXLOG before running restore_command, so neither contender
        // replaces a file (ext4 flushes a file renamed or truncated over an existing one).
        let recoveryxlog = pgdata.join("pg_wal/RECOVERYXLOG");
        // The prefetcher a call would start detached, run in the foreground: it spools `seg`,
        // finds the end of the archive after it, marks it and leaves.
        timed(&mut sh(&format!("{} --prefetch-only", get_q(&prev)), &pgdata), "prefetcher");
        hit.push(timed(&mut sh(&get_q(&seg), &pgdata), "get from the spool").wall);
        let restored = std::fs::read(&recoveryxlog).expect("restored");
        assert!(restored == std::fs::read(&seg_path).expect("seg"), "the spool served other bytes");
        let _ = std::fs::remove_file(&recoveryxlog);
        cp_hit.push(timed(&mut sh(&format!("cp \"{w}/{seg}\" pg_wal/RECOVERYXLOG"), &pgdata), "cp").wall);
        let _ = std::fs::remove_file(&recoveryxlog);
        version.push(timed(&mut sh(&format!("\"{exe}\" --version"), &work), "version").wall);
        bare.push(timed(&mut sh("/bin/true", &work), "true").wall);
    }
    let (push, cp_sync, get, cp, hit, cp_hit, version, bare) = (
        median(push),
        median(cp_sync),
        median(get),
        median(cp),
        median(hit),
        median(cp_hit),
        median(version),
        median(bare),
    );
    println!("per call, one 16 MiB segment, local repository, median of {rounds} (ms):");
    println!(
        "  archive-push {:7.2}   cp+sync -f {:7.2}   ratio {:.2} (target <= 1.15)",
        ms(push),
        ms(cp_sync),
        ratio(push, cp_sync)
    );
    println!(
        "  archive-get  {:7.2}   cp         {:7.2}   ratio {:.2} (target <= 1.5, no prefetch hit)",
        ms(get),
        ms(cp),
        ratio(get, cp)
    );
    println!(
        "  archive-get  {:7.2}   cp         {:7.2}   ratio {:.2} (target <= 0.2, prefetch hit)",
        ms(hit),
        ms(cp_hit),
        ratio(hit, cp_hit)
    );
    println!("  pgkeep --version {:.2} (process start-up)", ms(version));
    // What any restore_command costs here before it does anything: PostgreSQL runs it through
    // `sh -c`. A hit cannot be cheaper than this; its own part is what lies above it.
    println!(
        "  sh -c /bin/true {:.2} = {:.2}x cp: the floor of any call; a hit's own part (hit - floor) {:.2}x cp",
        ms(bare),
        ratio(bare, cp_hit),
        (hit.as_secs_f64() - bare.as_secs_f64()) / cp_hit.as_secs_f64()
    );
    pg.stop();
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn replay(pgkeep: &Path, server: S3Server, segments: u64, latency_ms: u64) {
    let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
    let store = S3Store::start_on_behind_proxy(&env, server, "replay", "");
    let proxy = store.proxy.as_ref().expect("proxy");
    let s3_table = std::fs::read_to_string(&store.config).expect("config");
    let spool = env.owned_dir("spool");
    let write_config = |name: &str, keys: &str| {
        let p = env.path(name);
        std::fs::write(&p, format!("{keys}\n{s3_table}")).expect("config");
        pgkeep::fsutil::set_mode(&p, 0o644).expect("chmod");
        p
    };
    let push_cfg = write_config("push.toml", &format!("archive_async = true\nspool_dir = \"{}\"", spool.display()));
    let queue8 = write_config("queue8.toml", "archive_get_queue = 8");
    let queue0 = write_config("queue0.toml", "archive_get_queue = 0");
    let url = store.url("db");
    let vars: Vec<String> = store.env().iter().map(|(k, v)| format!("{k}='{v}'")).collect();
    // Every segment also goes to a plain directory: the peer that shows how fast PostgreSQL
    // replays these segments when fetching costs only a local `cp`.
    let plain = env.owned_dir("plain-archive");
    let archive = format!(
        "cp \"%p\" \"{}/%f\" && {} \"{}\" --config \"{}\" --repo \"{url}\" archive-push \"%p\"",
        plain.display(),
        vars.join(" "),
        env.pgkeep.display(),
        push_cfg.display()
    );
    let mut pg = env.cluster(
        "replay",
        ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &archive)
            .with("max_wal_size", "4GB")
            .with("checkpoint_timeout", "30min"),
    );
    pg.start();
    let pgk = |cfg: &Path, args: &[&str]| {
        let mut c = Command::new(&env.pgkeep);
        c.arg("--quiet").arg("--config").arg(cfg).arg("--repo").arg(&url);
        c.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata()).args(args);
        for (k, v) in store.env() {
            c.env(k, v);
        }
        c.current_dir("/");
        c
    };
    timed(&mut pgk(&push_cfg, &["init"]), "init");
    let workloads = [
        // Sixteen 1 MiB logical-decoding messages a segment: WAL that recovery reads and
        // CRC-checks but applies nothing from, so what is left is the transport itself, where
        // the queue hides the per-request latency.
        (
            "1 MiB logical messages (nothing to apply)",
            "m",
            "SELECT pg_logical_emit_message(false, 'pgkeep-bench', \
             (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768))) FROM generate_series(1, 16)",
        ),
        // ~100-byte rows, ~150 000 records a segment: PostgreSQL's replay takes longer to apply
        // them than a fetch takes, so the replay, not the transport, bounds the ratio (the
        // local-cp line shows by how much). ~1 KB rows were tried: their recovery from a local
        // directory took as long (9.2 s against 8.7 s for 64 segments).
        ("row inserts (~100-byte rows)", "t", "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g"),
    ];
    for (label, table, write_wal) in workloads {
        timed(&mut pgk(&push_cfg, &["backup"]), "backup");
        let start = pg.scalar("SELECT pg_current_wal_lsn()");
        pg.sql(&format!("CREATE TABLE {table} (id int, pad text)"));
        // Until `segments` segments of WAL follow the backup.
        while pg.int(&format!("SELECT (pg_current_wal_lsn() - '{start}'::pg_lsn)::bigint")) < (segments as i64) << 24 {
            pg.sql(write_wal);
        }
        // The restored copy must have this row: the replay reached the target.
        pg.sql(&format!("INSERT INTO {table} VALUES (-1, 'marker')"));
        let target = pg.scalar("SELECT pg_current_wal_lsn()");
        let last = pg.switch_wal();
        wait_archived(&pg, &store, &last);
        let rows = pg.scalar(&format!("SELECT count(*) FROM {table}"));
        proxy.set_latency(Duration::from_millis(latency_ms));
        println!("PITR replay of {segments}+ segments of {label} from S3 with {latency_ms} ms per request:");
        let mut times = Vec::new();
        let runs = [
            ("archive_get_queue = 0", &queue0, false),
            ("archive_get_queue = 8", &queue8, false),
            ("restore_command = cp from a local directory", &queue0, true),
        ];
        for (run, cfg, local_cp) in runs {
            let dir = env.owned_dir(&format!("restore-{table}-{}", times.len())).join("data");
            let t = Instant::now();
            let to = dir.to_str().expect("utf-8");
            timed(
                &mut pgk(cfg, &["restore", "--target-lsn", &target, "--target-action", "promote", "--to", to]),
                "restore",
            );
            if local_cp {
                // The last setting in postgresql.auto.conf wins.
                let conf = dir.join("postgresql.auto.conf");
                let mut text = std::fs::read_to_string(&conf).expect("postgresql.auto.conf");
                text.push_str(&format!("restore_command = 'cp \"{}/%f\" \"%p\"'\n", plain.display()));
                std::fs::write(&conf, text).expect("postgresql.auto.conf");
            }
            let restored = t.elapsed();
            let requests = proxy.requests();
            let mut c = env.cluster_on(&format!("r{table}{}", times.len()), &dir);
            c.set("archive_mode", "off");
            for (k, v) in store.env() {
                c.env(k, &v);
            }
            c.start();
            c.wait_promoted();
            let total = t.elapsed();
            assert_eq!(c.scalar(&format!("SELECT count(*) FROM {table}")), rows, "the restored copy has every row");
            println!(
                "  {run}: {:.1} s (restore {:.1} s, recovery {:.1} s, {} requests)",
                total.as_secs_f64(),
                restored.as_secs_f64(),
                (total - restored).as_secs_f64(),
                proxy.requests() - requests
            );
            times.push(total);
            c.stop();
        }
        proxy.set_latency(Duration::ZERO);
        println!("  ratio {:.2}x faster with the queue (target >= 4)", ratio(times[0], times[1]));
        println!(
            "  queue 8 takes {:.2}x the local-cp replay; the most any queue could gain here: {:.2}x",
            ratio(times[1], times[2]),
            ratio(times[0], times[2])
        );
    }
}

fn wait_archived(pg: &TestCluster, store: &S3Store, last: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let ready = pg.pgdata().join("pg_wal/archive_status");
    loop {
        let pending = std::fs::read_dir(&ready)
            .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".ready")))
            .unwrap_or(true);
        if !pending {
            break;
        }
        assert!(Instant::now() < deadline, "archiving did not catch up");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(store.keys("db/wal/").iter().any(|k| k.ends_with(last)), "{last} archived");
}
