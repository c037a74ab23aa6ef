//! Parallel WAL transport (issue 9, acceptance 5): archive_async pushes the ready segments in
//! parallel and records them in the spool; archive_get_queue prefetches into the spool.
//! Segments come from a real cluster; the pushes and fetches are the real binary's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgkeep_testkit::{ClusterOptions, PgkeepCmd, TestCluster, TestEnv};

use crate::common::{cluster_cmd, env};

/// A stopped cluster whose archive_command always failed, so `n` completed segments wait in
/// pg_wal with `.ready` files (as PostgreSQL leaves them for archive_command), and an
/// initialised local repository. Returns the segment names, oldest first.
fn ready_segments(env: &TestEnv, n: usize) -> (TestCluster, PathBuf, Vec<String>) {
    let repo = env.path("repo");
    let mut pg =
        env.cluster("src", ClusterOptions::default().with("archive_mode", "on").with("archive_command", "false"));
    pg.start();
    cluster_cmd(env, &repo, &pg).arg("init").ok();
    pg.sql("CREATE TABLE t (v text)");
    let mut segs = Vec::new();
    for i in 0..n {
        pg.sql(&format!("INSERT INTO t SELECT 'row {i} ' || g FROM generate_series(1, 2000) g"));
        segs.push(pg.switch_wal());
    }
    pg.stop();
    for s in &segs {
        assert!(ready(&pg, s).exists(), "{s} should wait for archiving");
    }
    (pg, repo, segs)
}

fn ready(pg: &TestCluster, seg: &str) -> PathBuf {
    pg.pgdata().join("pg_wal/archive_status").join(format!("{seg}.ready"))
}

/// A spool directory and a config file with `archive_async` and `jobs` pushers.
fn async_config(env: &TestEnv, jobs: usize) -> (PathBuf, PathBuf) {
    let spool = env.owned_dir("spool");
    let body = format!("archive_async = true\narchive_push_jobs = {jobs}\nspool_dir = \"{}\"\n", spool.display());
    (spool.clone(), config(env, "async.toml", &body))
}

/// A config file with the transport keys (and `[s3]` lines when given).
fn config(env: &TestEnv, name: &str, body: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, body).unwrap();
    pgkeep::fsutil::set_mode(&p, 0o644).unwrap();
    p
}

/// archive-push as PostgreSQL runs it: in PGDATA, `%p` = pg_wal/NAME.
fn push_cmd(env: &TestEnv, cfg: &Path, repo: &Path, pg: &TestCluster, seg: &str) -> PgkeepCmd {
    let mut c = env
        .pgkeep(["--json", "--config"])
        .arg(cfg)
        .arg("--repo")
        .arg(repo)
        .arg("archive-push")
        .arg(format!("pg_wal/{seg}"));
    c.command().current_dir(pg.pgdata());
    c
}

/// Every file in the spool's directories.
fn spool_entries(spool: &Path) -> Vec<PathBuf> {
    let dirs = std::fs::read_dir(spool).into_iter().flatten().flatten();
    let mut out: Vec<PathBuf> =
        dirs.flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten().map(|f| f.path())).collect();
    out.sort();
    out
}

fn spool_records(spool: &Path) -> Vec<(PathBuf, String)> {
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    spool_entries(spool)
        .into_iter()
        .filter_map(|p| Some((p.clone(), name(&p).strip_suffix(".ok")?.to_string())))
        .collect()
}

/// The archived copy of `seg` (fetched and fully checked by archive-get) equals `expected`.
fn assert_archived(env: &TestEnv, repo: &Path, seg: &str, expected: &Path) {
    let out = env.path("fetched");
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join(seg);
    env.pgkeep(["--repo"]).arg(repo).args_get(seg, &dest).ok();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(expected).unwrap(), "{seg}: archived copy differs");
    std::fs::remove_file(&dest).unwrap();
}

trait GetArgs {
    fn args_get(self, seg: &str, dest: &Path) -> PgkeepCmd;
}

impl GetArgs for PgkeepCmd {
    fn args_get(self, seg: &str, dest: &Path) -> PgkeepCmd {
        self.arg("archive-get").arg(seg).arg(dest)
    }
}

#[test]
fn async_push_stores_ready_segments_ahead_and_a_later_call_returns_without_pushing_again() {
    let env = env();
    let (pg, repo, segs) = ready_segments(&env, 6);
    let (spool, cfg) = async_config(&env, 2);

    let r = push_cmd(&env, &cfg, &repo, &pg, &segs[0]).json();
    assert_eq!(r["outcome"], "stored", "{r}");
    // jobs × 2 = 4 in one call: this segment and the three oldest other ready ones, recorded.
    let recorded: Vec<String> = spool_records(&spool).into_iter().map(|(_, s)| s).collect();
    assert_eq!(recorded, segs[1..4].to_vec(), "records of the segments pushed ahead");
    for s in &segs[..4] {
        assert!(wal_object(&repo, s).is_some(), "{s} not in the repository");
    }
    // Spool files belong to the server's OS user (archive_command runs as that user).
    let (uid, _) = pgkeep::fsutil::owner_of(pg.pgdata()).unwrap();
    for (p, _) in spool_records(&spool) {
        assert_eq!(pgkeep::fsutil::owner_of(&p).unwrap().0, uid, "{} owned by another user", p.display());
    }

    // PostgreSQL's call for segment 2: answered from the record, the stored object untouched.
    let obj = wal_object(&repo, &segs[1]).expect("stored ahead");
    let before = std::fs::metadata(&obj).unwrap();
    let r = push_cmd(&env, &cfg, &repo, &pg, &segs[1]).json();
    assert_eq!(r["outcome"], "archived-ahead", "{r}");
    let after = std::fs::metadata(&obj).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((before.ino(), before.mtime_nsec()), (after.ino(), after.mtime_nsec()), "re-uploaded");
    assert!(!spool_records(&spool).iter().any(|(_, s)| s == &segs[1]), "a used record is consumed");

    // A file re-created under a recorded name is not trusted: its record names another hash,
    // so it is pushed for real, and different content is refused.
    let third = pg.pgdata().join("pg_wal").join(&segs[2]);
    let mut bytes = std::fs::read(&third).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&third, &bytes).unwrap();
    let out = push_cmd(&env, &cfg, &repo, &pg, &segs[2]).fails();
    assert!(out.one_error_line().contains(&segs[2]), "{}", out.stderr);
    assert!(out.one_error_line().contains("hint:"), "{}", out.stderr);

    // A record of another repository is not trusted either: same spool, another repository.
    let repo2 = env.path("repo2");
    let mut pg2 = pg;
    pg2.start();
    cluster_cmd(&env, &repo2, &pg2).arg("init").ok();
    pg2.stop();
    let r = push_cmd(&env, &cfg, &repo2, &pg2, &segs[3]).json();
    assert_eq!(r["outcome"], "stored", "a record for another repository must not count: {r}");
}

/// The object holding an archived segment in a local repository.
fn wal_object(repo: &Path, seg: &str) -> Option<PathBuf> {
    walk(&repo.join("wal")).into_iter().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == seg))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// SIGKILL of the pusher at random moments, 20 times: every segment archive-push acknowledged
/// (exit 0) is in the repository and verifies, and every spool record names a segment that is.
#[test]
fn sigkill_of_the_pusher_never_loses_an_acknowledged_segment() {
    let env = env();
    let (pg, repo, segs) = ready_segments(&env, 30);
    let (spool, cfg) = async_config(&env, 3);
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut acked: Vec<String> = Vec::new();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    // PostgreSQL's archiver: the oldest .ready first, marked .done on exit 0.
    while let Some(seg) = segs.iter().find(|s| ready(&pg, s).exists()).cloned() {
        assert!(Instant::now() < deadline, "archiving did not finish");
        let mut cmd = push_cmd(&env, &cfg, &repo, &pg, &seg);
        let mut child =
            cmd.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        let code = if kills < 20 {
            std::thread::sleep(Duration::from_millis(rand() % 80));
            match child.try_wait().unwrap() {
                Some(st) => st.code(),
                None => {
                    child.kill().unwrap(); // SIGKILL, by the child's own id
                    child.wait().unwrap();
                    kills += 1;
                    None
                }
            }
        } else {
            child.wait().unwrap().code()
        };
        if code == Some(0) {
            std::fs::rename(ready(&pg, &seg), ready(&pg, &seg).with_extension("done")).unwrap();
            acked.push(seg.clone());
        }
        // Whatever moment the kill hit: a record only ever names a segment that is stored.
        for (_, s) in spool_records(&spool) {
            assert_archived(&env, &repo, &s, &pg.pgdata().join("pg_wal").join(&s));
        }
    }
    assert_eq!(kills, 20, "the pusher should have been killed 20 times");
    assert_eq!(acked.len(), segs.len());
    for s in &acked {
        assert_archived(&env, &repo, s, &pg.pgdata().join("pg_wal").join(s));
    }
}

/// A data directory being restored, as restore_command sees it: pg_control of the source
/// (system identifier) and an empty pg_wal.
fn restoring_pgdata(env: &TestEnv, src: &TestCluster) -> PathBuf {
    let d = env.owned_dir("restore").join("data");
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::create_dir_all(d.join("pg_wal")).unwrap();
    std::fs::copy(src.pgdata().join("global/pg_control"), d.join("global/pg_control")).unwrap();
    env.chown(&d);
    d
}

/// restore_command as PostgreSQL runs it: in PGDATA, `%p` = pg_wal/RECOVERYXLOG.
fn get_cmd(env: &TestEnv, cfg: &Path, repo: &Path, pgdata: &Path, seg: &str) -> PgkeepCmd {
    let mut c = env
        .pgkeep(["--json", "--config"])
        .arg(cfg)
        .arg("--repo")
        .arg(repo)
        .args_get(seg, Path::new("pg_wal/RECOVERYXLOG"));
    c.command().current_dir(pgdata);
    c
}

/// The segments the spool holds (not their records).
fn spooled(spool: &Path) -> Vec<String> {
    let names = spool_entries(spool).into_iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned());
    names.filter(|n| n.len() == 24).collect()
}

fn spool_file(spool: &Path, seg: &str) -> PathBuf {
    std::fs::read_dir(spool).unwrap().flatten().map(|d| d.path().join(seg)).find(|p| p.exists()).expect("spooled")
}

/// Polls until a prefetcher marked the end of the archive and left (its in-flight list is gone).
fn wait_prefetcher_ended(spool: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let names = || -> Vec<String> {
        spool_entries(spool).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    let ended = |names: Vec<String>| names.iter().any(|n| n == "end") && !names.iter().any(|n| n == "fetching");
    while !ended(names()) {
        assert!(Instant::now() < deadline, "the prefetcher did not reach the end of the archive: {:?}", names());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster archiving into a local repository with `n` switched segments, and a config with
/// `archive_get_queue = 8` and its own spool.
fn archived_segments(env: &TestEnv, n: usize) -> (TestCluster, PathBuf, Vec<String>) {
    let repo = env.path("repo");
    let mut pg = env.cluster("src", ClusterOptions::archiving_to(&repo));
    pg.start();
    cluster_cmd(env, &repo, &pg).arg("init").ok();
    pg.sql("CREATE TABLE t (id int, pad text)");
    let mut segs = Vec::new();
    for _ in 0..n {
        pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
        segs.push(pg.switch_and_wait_archived(&repo));
    }
    (pg, repo, segs)
}

/// `archived_segments` plus a data directory being restored, its spool and a config with
/// `archive_get_queue = 8` using that spool.
struct Queued {
    pg: TestCluster,
    repo: PathBuf,
    segs: Vec<String>,
    pgdata: PathBuf,
    spool: PathBuf,
    cfg: PathBuf,
}

fn queued_restore(env: &TestEnv, n: usize) -> Queued {
    let (pg, repo, segs) = archived_segments(env, n);
    let pgdata = restoring_pgdata(env, &pg);
    let spool = env.owned_dir("spool");
    let cfg = config(env, "get.toml", &format!("archive_get_queue = 8\nspool_dir = \"{}\"\n", spool.display()));
    Queued { pg, repo, segs, pgdata, spool, cfg }
}

/// `seg` fetched without any queue: what every other way of getting it must yield.
fn direct_fetch(env: &TestEnv, repo: &Path, seg: &str) -> Vec<u8> {
    let direct = config(env, "direct.toml", "archive_get_queue = 0\n");
    let p = env.path("reference");
    env.pgkeep(["--config"]).arg(&direct).arg("--repo").arg(repo).args_get(seg, &p).ok();
    std::fs::read(&p).unwrap()
}

/// restore_command returns as soon as its own segment is in place: the prefetcher it starts is
/// detached, and fills the window after the call returned.
#[test]
fn a_restore_command_returns_before_its_prefetch_finished() {
    let env = env();
    let Queued { pg: _pg, repo, segs, pgdata, spool, cfg } = queued_restore(&env, 10);
    let r = get_cmd(&env, &cfg, &repo, &pgdata, &segs[0]).json();
    assert_eq!(r["prefetched"], false, "{r}");
    let at_return = spooled(&spool);
    // Eight segments fetched and checked in full take far longer than this look.
    assert!(at_return.len() < 8, "the call waited for its prefetch: {at_return:?} already spooled");
    let deadline = Instant::now() + Duration::from_secs(120);
    while spooled(&spool) != segs[1..9].to_vec() {
        assert!(Instant::now() < deadline, "the prefetcher did not fill the window: {:?}", spooled(&spool));
        std::thread::sleep(Duration::from_millis(20));
    }
    let direct = config(&env, "direct.toml", "archive_get_queue = 0\n");
    for s in &segs[1..9] {
        let r = get_cmd(&env, &cfg, &repo, &pgdata, s).json();
        assert_eq!(r["prefetched"], true, "{s}: {r}");
        let reference = env.path("reference");
        env.pgkeep(["--config"]).arg(&direct).arg("--repo").arg(&repo).args_get(s, &reference).ok();
        let restored = pgdata.join("pg_wal/RECOVERYXLOG");
        assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&reference).unwrap(), "{s}");
        std::fs::remove_file(&restored).unwrap();
    }
}

/// SIGKILL of the prefetcher at random moments: whatever it left in the spool (temps, a segment
/// renamed but not recorded), every later call restores exactly the archived bytes.
#[test]
fn a_killed_prefetcher_leaves_nothing_that_is_served() {
    let env = env();
    let (pg, repo, segs) = archived_segments(&env, 6);
    let pgdata = restoring_pgdata(&env, &pg);
    let direct = config(&env, "direct.toml", "archive_get_queue = 0\n");
    let reference: Vec<Vec<u8>> = segs
        .iter()
        .map(|s| {
            let p = env.path("reference");
            env.pgkeep(["--config"]).arg(&direct).arg("--repo").arg(&repo).args_get(s, &p).ok();
            std::fs::read(&p).unwrap()
        })
        .collect();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let mut leftovers = 0;
    for round in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Each round its own spool, so a prefetcher started by an earlier round's calls
        // cannot tidy up after this round's kill.
        let spool = env.owned_dir(&format!("spool-{round}"));
        let cfg = config(&env, "get.toml", &format!("archive_get_queue = 8\nspool_dir = \"{}\"\n", spool.display()));
        let mut prefetcher = get_cmd(&env, &cfg, &repo, &pgdata, &segs[0]).arg("--prefetch-only");
        let mut child = prefetcher
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(seed % 120));
        child.kill().unwrap(); // SIGKILL, by the child's own id
        child.wait().unwrap();
        let names: Vec<String> =
            spool_entries(&spool).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        leftovers += names.iter().filter(|n| n.starts_with(".tmp-")).count();
        for (s, want) in segs[1..].iter().zip(&reference[1..]) {
            let r = get_cmd(&env, &cfg, &repo, &pgdata, s).json();
            assert_eq!(r["outcome"], "restored", "round {round}, {s}: {r}");
            let restored = pgdata.join("pg_wal/RECOVERYXLOG");
            assert!(std::fs::read(&restored).unwrap() == *want, "round {round}: {s} restored other bytes ({names:?})");
            std::fs::remove_file(&restored).unwrap();
        }
    }
    eprintln!("{leftovers} temp files left by killed prefetchers");
}

#[test]
fn prefetch_serves_from_the_spool_and_drops_changed_files_and_switched_timelines() {
    let env = env();
    let repo = env.path("repo");
    let mut pg = env.cluster("src", ClusterOptions::archiving_to(&repo));
    pg.start();
    cluster_cmd(&env, &repo, &pg).arg("init").ok();
    pg.sql("CREATE TABLE t (v text)");
    let mut segs = Vec::new();
    for i in 0..6 {
        pg.sql(&format!("INSERT INTO t SELECT 'row {i} ' || g FROM generate_series(1, 2000) g"));
        segs.push(pg.switch_and_wait_archived(&repo));
    }
    let pgdata = restoring_pgdata(&env, &pg);
    let spool = env.owned_dir("spool");
    let cfg = config(&env, "get.toml", &format!("archive_get_queue = 8\nspool_dir = \"{}\"\n", spool.display()));
    let reference = |seg: &str| direct_fetch(&env, &repo, seg);
    let recoveryxlog = pgdata.join("pg_wal/RECOVERYXLOG");

    // The first call fetches segs[0]; a prefetcher it starts spools the rest, stopping where
    // the archive ends.
    let r = get_cmd(&env, &cfg, &repo, &pgdata, &segs[0]).json();
    assert_eq!(r["prefetched"], false, "{r}");
    assert_eq!(std::fs::read(&recoveryxlog).unwrap(), reference(&segs[0]));
    wait_prefetcher_ended(&spool);
    assert_eq!(spooled(&spool), segs[1..].to_vec(), "the next segments, up to the first missing one");
    let owner = pgkeep::fsutil::owner_of(&pgdata).unwrap().0;
    assert_eq!(pgkeep::fsutil::owner_of(&spool_file(&spool, &segs[1])).unwrap().0, owner, "spool file owner");

    // Served by a rename, identical to a direct fetch.
    let r = get_cmd(&env, &cfg, &repo, &pgdata, &segs[1]).json();
    assert_eq!(r["prefetched"], true, "{r}");
    assert_eq!(std::fs::read(&recoveryxlog).unwrap(), reference(&segs[1]));

    // A corrupted spool file is not used: fetched again, the right bytes.
    let f = spool_file(&spool, &segs[2]);
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&f, &bytes).unwrap();
    let r = get_cmd(&env, &cfg, &repo, &pgdata, &segs[2]).json();
    assert_eq!(r["prefetched"], false, "a changed spool file must not be served: {r}");
    assert_eq!(std::fs::read(&recoveryxlog).unwrap(), reference(&segs[2]));

    // A newer timeline's history says timeline 1 ended inside segs[3]: the prefetched segs[4]
    // and later are wrong for this recovery and are never served.
    let seg3_start: u64 = u64::from_str_radix(&segs[3][16..], 16).unwrap() * (16 << 20);
    let history = env.path("history").join("00000002.history");
    std::fs::create_dir_all(history.parent().unwrap()).unwrap();
    std::fs::write(&history, format!("1\t0/{:X}\tno recovery target specified\n", seg3_start + 0x100)).unwrap();
    cluster_cmd(&env, &repo, &pg).arg("archive-push").arg(&history).ok();
    let r = get_cmd(&env, &cfg, &repo, &pgdata, "00000002.history").json();
    assert_eq!(r["outcome"], "restored", "{r}");
    assert!(!spooled(&spool).contains(&segs[4]), "a segment beyond the switch stays in the spool");
    // segs[3] holds the switch point: still timeline 1's valid WAL up to it, still served.
    let r = get_cmd(&env, &cfg, &repo, &pgdata, &segs[3]).json();
    assert_eq!(r["prefetched"], true, "{r}");
    let r = get_cmd(&env, &cfg, &repo, &pgdata, &segs[4]).json();
    assert_eq!(r["prefetched"], false, "{r}");
    assert_eq!(std::fs::read(&recoveryxlog).unwrap(), reference(&segs[4]));
    assert!(spooled(&spool).is_empty(), "nothing is prefetched beyond the switch: {:?}", spooled(&spool));

    // The end of the archive: still exit 1 ("not found"), whatever the queue did.
    let next = pgkeep_wal::xlog_file_name(1, u64::from_str_radix(&segs[5][16..], 16).unwrap() + 1, 16 << 20);
    let out = get_cmd(&env, &cfg, &repo, &pgdata, &next).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
}

/// Acceptance 5: with 100 ms added to every S3 request, a pgbench load writing at least 64
/// segments is archived without the `.ready` backlog ever exceeding archive_push_jobs × 2.
/// (1 MiB segments keep the load short; per-request latency, not bytes, is what is tested.)
#[cfg(feature = "s3")]
#[test]
fn with_100ms_per_request_a_pgbench_load_is_archived_without_a_ready_backlog() {
    use pgkeep_testkit::S3Store;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const JOBS: usize = 4;
    let env = env();
    let store = S3Store::start_behind_proxy(&env, "backlog", "");
    let spool = env.owned_dir("spool");
    // The transport keys are top-level: they go before the store's `[s3]` table.
    let s3_table = std::fs::read_to_string(&store.config).unwrap();
    let keys = format!("archive_async = true\narchive_push_jobs = {JOBS}\nspool_dir = \"{}\"\n", spool.display());
    std::fs::write(&store.config, format!("{keys}{s3_table}")).unwrap();
    let url = store.url("db1");
    let opts = ClusterOptions { wal_segsize_mb: Some(1), ..ClusterOptions::default() }
        .with("archive_mode", "on")
        .with("archive_command", &store.archive_command(&env, &url));
    let mut pg = env.cluster("src", opts);
    pg.start();
    let mut init = env.pgkeep(["--config"]).arg(&store.config).arg("--repo").arg(&url);
    init = init.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata()).arg("init");
    for (k, v) in store.env() {
        init = init.env(k, v);
    }
    init.ok();
    // A steady write load: pgbench clients inserting 1000 rows per transaction, ~4 MiB of WAL
    // a second — faster than one push at a time gets through 100 ms round trips.
    pg.sql("CREATE TABLE load (id int, pad text)");
    let script = env.path("load.sql");
    std::fs::write(&script, "INSERT INTO load SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g;\n").unwrap();
    let proxy = store.proxy.as_ref().unwrap();
    proxy.set_latency(Duration::from_millis(100));
    let requests_before = proxy.requests();

    let status = pg.pgdata().join("pg_wal/archive_status");
    let ready_now = || {
        let rd = std::fs::read_dir(&status);
        rd.map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".ready")).count()).unwrap_or(0)
    };
    let stop = AtomicBool::new(false);
    let worst = AtomicUsize::new(0);
    let start_lsn = pg.scalar("SELECT pg_current_wal_lsn()");
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                worst.fetch_max(ready_now(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Stops the sampler however this scope ends (a failed assertion must not hang it).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let deadline = Instant::now() + Duration::from_secs(240);
        let script = script.to_string_lossy();
        while pg.int(&format!("SELECT (pg_current_wal_lsn() - '{start_lsn}'::pg_lsn)::bigint")) < 64 << 20 {
            assert!(Instant::now() < deadline, "the load did not write 64 segments in time");
            pg.pgbench(&["-n", "-c", "2", "-j", "2", "-R", "30", "-T", "5", "-f", &script]);
        }
        pg.switch_wal();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready_now() > 0 {
            assert!(Instant::now() < deadline, "archiving fell behind: {} segments still ready", ready_now());
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let archived =
        store.keys("db1/wal/").iter().filter(|k| k.rsplit('/').next().is_some_and(|n| n.len() == 24)).count();
    assert!(archived >= 64, "only {archived} segments archived");
    assert!(proxy.requests() > requests_before + 64, "the pushes went through the latency proxy");
    let worst = worst.load(Ordering::Relaxed);
    eprintln!("worst .ready backlog {worst} ({archived} segments archived)");
    assert!(worst <= JOBS * 2, "the .ready backlog reached {worst} (limit archive_push_jobs × 2 = {})", JOBS * 2);
}

/// A real recovery through the queue: PostgreSQL's restore_command with the default spool
/// beside the restored data directory; most segments come from the spool and every row is back.
#[test]
fn a_restore_replays_through_the_prefetch_queue() {
    let s = crate::common::Setup::new();
    s.backup();
    s.pg.sql("CREATE TABLE t (id int, pad text)");
    for _ in 0..12 {
        s.pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
        s.pg.switch_and_wait_archived(&s.repo);
    }
    let rows = s.pg.scalar("SELECT count(*) FROM t");
    s.pg.switch_and_wait_archived(&s.repo);
    // The restored directory's parent belongs to the server's OS user: the default spool works.
    let dir = s.env.owned_dir("pitr").join("data");
    s.restore(&dir, &[]);
    let copy = s.start_restored("pitr", &dir);
    copy.wait_promoted();
    assert_eq!(copy.scalar("SELECT count(*) FROM t"), rows);
    let log = copy.log_tail(400);
    let served = log.matches("from the prefetch spool").count();
    assert!(served >= 8, "most segments should come from the spool, {served} did:\n{log}");
    assert!(s.env.path("pitr").join("pgkeep-spool").is_dir(), "the default spool is beside PGDATA");
}

/// A spool hit is served before clap, logging and the runtime are set up (archive/fast_get.rs,
/// the call forms restore_command uses: no --json): the checked bytes, the same report, nothing
/// printed with -q, and a call naming another repository never gets this one's spooled segment.
#[test]
fn the_start_up_fast_path_serves_spool_hits_of_its_own_repository_only() {
    let env = env();
    let Queued { pg: _pg, repo, segs, pgdata, spool, cfg } = queued_restore(&env, 5);
    let reference = |seg: &str| direct_fetch(&env, &repo, seg);
    // Another repository holding the same segments but the last.
    let other = env.path("other-repo");
    assert!(std::process::Command::new("cp").arg("-a").arg(&repo).arg(&other).status().unwrap().success());
    std::fs::remove_file(other.join(pgkeep::repo::layout::wal_key(&segs[4]))).unwrap();
    let get = |pre: &[&str], repo: &Path, seg: &str| {
        let mut c = env.pgkeep(pre).arg("--config").arg(&cfg).arg(format!("--repo={}", repo.display()));
        c = c.arg("archive-get").arg(seg).arg("pg_wal/RECOVERYXLOG");
        c.command().current_dir(&pgdata);
        c
    };
    let recoveryxlog = pgdata.join("pg_wal/RECOVERYXLOG");

    let out = get(&[], &repo, &segs[0]).ok();
    assert!(!out.stdout.contains("prefetch spool"), "{}", out.stdout);
    wait_prefetcher_ended(&spool);
    assert_eq!(spooled(&spool), segs[1..].to_vec());

    std::fs::remove_file(&recoveryxlog).unwrap();
    let out = get(&[], &repo, &segs[1]).ok();
    assert_eq!(out.stdout.trim(), format!("restored {} (16.0 MiB) from the prefetch spool", segs[1]));
    assert_eq!(std::fs::read(&recoveryxlog).unwrap(), reference(&segs[1]));
    assert!(!spooled(&spool).contains(&segs[1]), "served by a rename out of the spool");

    std::fs::remove_file(&recoveryxlog).unwrap();
    let out = get(&["-q"], &repo, &segs[2]).ok();
    assert_eq!(out.stdout, "", "-q prints nothing");
    assert_eq!(std::fs::read(&recoveryxlog).unwrap(), reference(&segs[2]));
    assert!(!spooled(&spool).contains(&segs[2]));

    // segs[4] waits in this repository's spool; the other repository does not hold it.
    std::fs::remove_file(&recoveryxlog).unwrap();
    let out = get(&[], &other, &segs[4]).run();
    assert_eq!(out.code, Some(1), "not in the other repository, whatever this one's spool holds: {}", out.stderr);
    assert!(!recoveryxlog.exists());
    assert!(spooled(&spool).contains(&segs[4]), "this repository's spool is untouched");
}
