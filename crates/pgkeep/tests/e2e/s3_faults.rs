//! An S3 repository through the testkit's fault proxy in front of moto (issue 9, acceptance 3
//! and the large-object rules): 200 ms per request and 5 % of requests failing with `503 Slow
//! Down` or a TCP reset do not stop backup, archiving or restore; a store that goes away makes
//! archive-get stop recovery (≥ 126) and backup fail with one line, and never leaves a backup
//! listed as usable that is not; a backup killed during a multipart upload leaves neither a
//! usable backup nor, after the next backup, an unfinished upload in the bucket.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pgkeep_testkit::{ClusterOptions, FaultProxy, PgkeepCmd, S3Store, TestCluster, TestEnv};

use crate::common;

const BUCKET: &str = "pgkeep-faults";

/// A cluster archiving through the proxy into `s3://pgkeep-faults/<prefix>`, `init` done.
struct Faulty {
    pg: TestCluster,
    s3: S3Store,
    url: String,
    env: TestEnv,
}

impl Faulty {
    fn new(prefix: &str, tune: impl FnOnce(&FaultProxy)) -> Faulty {
        let env = common::env();
        let s3 = S3Store::start_behind_proxy(&env, BUCKET, "");
        tune(s3.proxy.as_ref().expect("behind a proxy"));
        let url = s3.url(prefix);
        let opts = ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &s3.archive_command(&env, &url));
        let mut pg = env.cluster("src", opts);
        pg.start();
        let f = Faulty { pg, s3, url, env };
        f.cmd(&["init"]).ok();
        f
    }

    fn proxy(&self) -> &FaultProxy {
        self.s3.proxy.as_ref().expect("behind a proxy")
    }

    fn cmd(&self, args: &[&str]) -> PgkeepCmd {
        let mut c = self.env.pgkeep(["--config"]).arg(&self.s3.config).arg("--repo").arg(&self.url);
        c = c.arg("--pg").arg(self.pg.conninfo()).arg("--pgdata").arg(self.pg.pgdata());
        for (k, v) in self.s3.env() {
            c = c.env(k, v);
        }
        args.iter().fold(c, |c, a| c.arg(a))
    }

    /// (id, state) of every backup, as `list --json` says.
    fn states(&self) -> Vec<(String, String)> {
        let list = self.cmd(&["list"]).json();
        let field = |b: &serde_json::Value, k: &str| b[k].as_str().unwrap_or_default().to_string();
        list.as_array().expect("list array").iter().map(|b| (field(b, "id"), field(b, "state"))).collect()
    }

    /// Restore (latest unless `backup`) into a new directory and start it as a promoted copy.
    fn restore_and_start(&self, name: &str, backup: Option<&str>) -> (serde_json::Value, TestCluster) {
        let dir = self.env.path(name);
        let mut args = vec!["restore"];
        if let Some(id) = backup {
            args.extend(["--backup", id]);
        }
        let report = self.cmd(&args).arg("--to").arg(&dir).json();
        let mut c = self.env.cluster_on(name, &dir);
        c.set("archive_mode", "off");
        for (k, v) in self.s3.env() {
            c.env(k, &v);
        }
        c.start();
        c.wait_promoted();
        (report, c)
    }

    /// Unfinished multipart uploads in the bucket (boto3, straight to moto).
    fn open_uploads(&self) -> Vec<String> {
        let v = self.s3.moto.json(&format!(
            "r = s3().list_multipart_uploads(Bucket='{BUCKET}')\nprint(json.dumps([u['Key'] for u in r.get('Uploads', [])]))"
        ));
        v.as_array().expect("uploads").iter().map(|k| k.as_str().unwrap_or_default().to_string()).collect()
    }
}

/// `mb` MiB of random bytes in table `blob` (pgcrypto): incompressible, so its data object
/// goes up as a multipart upload of 8 MiB parts.
fn random_table(pg: &TestCluster, mb: usize) {
    pg.sql("CREATE EXTENSION IF NOT EXISTS pgcrypto");
    pg.sql(&format!(
        "CREATE TABLE blob AS SELECT g, gen_random_bytes(1024) AS b FROM generate_series(1, {}) g",
        mb * 1024
    ));
}

const CHECKS: [&str; 3] = [
    "SELECT md5(string_agg(b, '' ORDER BY g)) FROM blob",
    "SELECT sum(abalance)::text || ':' || count(*) FROM pgbench_accounts",
    "SELECT string_agg(v, ',' ORDER BY v) FROM markers",
];

/// 200 ms per request and 5 % of requests failed (half 503, half reset): backup (with a
/// multipart object), archive_command and restore all succeed on pgkeep's retries alone —
/// PostgreSQL never had to repeat an archive_command — and the restored rows equal the source.
#[test]
fn s3_faults_latency_and_failed_requests_do_not_stop_backup_archive_restore() {
    let f = Faulty::new("flaky", |p| {
        p.set_latency(Duration::from_millis(200));
        p.set_fault_rate(0.05);
    });
    f.pg.sql("CREATE TABLE markers (v text)");
    f.pg.pgbench(&["-i", "-s", "1", "-q"]);
    random_table(&f.pg, 20);
    let before = (f.proxy().requests(), f.proxy().faults());
    let backup = f.cmd(&["backup"]).json();
    let id = backup["id"].as_str().expect("backup id").to_string();
    let during = (f.proxy().requests() - before.0, f.proxy().faults() - before.1);
    assert!(during.1 >= 1, "the backup's {} requests met no fault: the test proves nothing", during.0);
    let sizes: Vec<u64> = f.s3.keys(&format!("flaky/backup/{id}/data/")).iter().map(|k| f.s3.head(k).0).collect();
    assert!(sizes.iter().any(|s| *s > 16 << 20), "a data object of several parts: {sizes:?}");
    assert_eq!(f.open_uploads(), Vec::<String>::new(), "every multipart upload was completed");
    assert_eq!(f.s3.keys("flaky/uploads/"), Vec::<String>::new(), "no upload record is left");

    f.pg.sql("INSERT INTO markers VALUES ('after backup')");
    for _ in 0..3 {
        f.pg.sql("INSERT INTO markers SELECT 'wal ' || g FROM generate_series(1, 100) g");
        let seg = f.pg.switch_wal();
        let key = format!("flaky/{}", pgkeep::repo::layout::wal_key(&seg));
        f.s3.wait_for_key(&key, Duration::from_secs(120));
    }
    let archiver =
        f.pg.scalar("SELECT archived_count || ' archived, ' || failed_count || ' failed' FROM pg_stat_archiver");
    assert!(archiver.ends_with(" 0 failed"), "archive-push must absorb the faults itself: {archiver}");
    assert_eq!(f.states(), vec![(id.clone(), "complete".to_string())]);

    let before = f.proxy().faults();
    let (report, restored) = f.restore_and_start("restored", None);
    assert_eq!(report["backup"], id.as_str());
    assert!(f.proxy().faults() > before, "the restore met faults too");
    for q in CHECKS {
        assert_eq!(restored.scalar(q), f.pg.scalar(q), "{q}");
    }
}

/// A store that goes away: archive-get exits ≥ 126 (recovery stops instead of promoting early)
/// and backup fails with one line naming the object, whether the store is gone before it
/// starts or vanishes while parts are going up; afterwards nothing but the first backup is
/// listed complete, and it restores.
#[test]
fn s3_faults_store_down_stops_archive_get_and_backup_and_lists_nothing_broken() {
    let f = Faulty::new("down", |_| {});
    f.pg.sql("CREATE TABLE markers (v text)");
    f.pg.sql("INSERT INTO markers VALUES ('first')");
    f.pg.pgbench(&["-i", "-s", "1", "-q"]);
    random_table(&f.pg, 40);
    let first = f.cmd(&["backup"]).json()["id"].as_str().expect("id").to_string();
    let seg = f.pg.switch_wal();
    f.s3.wait_for_key(&format!("down/{}", pgkeep::repo::layout::wal_key(&seg)), Duration::from_secs(60));

    f.proxy().set_down(true);
    let started = Instant::now();
    let got = f.env.path("got");
    let o = f.cmd(&["archive-get", &seg]).arg(&got).run();
    assert!(o.code.is_some_and(|c| c >= 126), "archive-get must stop recovery: {:?} {}", o.code, o.stderr);
    let line = o.one_error_line();
    assert!(line.contains("hint:"), "{line}");
    assert!(!got.exists(), "nothing is written when the store is down");
    let o = f.cmd(&["backup"]).fails();
    let line = o.one_error_line();
    assert!(line.contains("pgkeep.info") && line.contains("hint:"), "one line naming the object: {line}");
    assert!(started.elapsed() < Duration::from_secs(120), "retries are bounded: {:?}", started.elapsed());

    // The store vanishes in the middle of a backup: once data objects are going up.
    f.proxy().set_down(false);
    f.proxy().set_latency(Duration::from_millis(100));
    let mut cmd = f.cmd(&["backup"]);
    let child = cmd.command().stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn backup");
    let deadline = Instant::now() + Duration::from_secs(120);
    while f.open_uploads().is_empty() {
        assert!(Instant::now() < deadline, "the second backup never started a multipart upload");
        std::thread::sleep(Duration::from_millis(100));
    }
    f.proxy().set_down(true);
    let out = child.wait_with_output().expect("wait for backup");
    assert!(!out.status.success(), "a backup whose store vanished must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("pgkeep: error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(errors[0].contains("backup/") && errors[0].contains("hint:"), "it names the object: {}", errors[0]);

    f.proxy().set_down(false);
    f.proxy().set_latency(Duration::ZERO);
    let states = f.states();
    let complete: Vec<&str> = states.iter().filter(|(_, s)| s == "complete").map(|(id, _)| id.as_str()).collect();
    assert_eq!(complete, vec![first.as_str()], "only the first backup is usable: {states:?}");
    let (report, restored) = f.restore_and_start("restored", None);
    assert_eq!(report["backup"], first.as_str());
    assert_eq!(restored.scalar(CHECKS[0]), f.pg.scalar(CHECKS[0]));
}

/// SIGKILL while a ~100 MB object is being uploaded in parts: list never shows the killed
/// backup as usable; the next backup aborts its unfinished upload (recorded in the repository
/// before the first part) and succeeds; no upload and no record is left in the bucket.
#[test]
fn s3_faults_killed_multipart_upload_is_aborted_by_the_next_backup() {
    let f = Faulty::new("killed", |p| p.set_latency(Duration::from_millis(50)));
    f.pg.pgbench(&["-i", "-s", "1", "-q"]);
    f.pg.sql("CREATE TABLE markers (v text)");
    random_table(&f.pg, 100);
    let log = f.env.path("killed-backup.log");
    // Read at 10 MB/s, so the large object is still going up when the test looks.
    let mut cmd = f.cmd(&["backup", "--max-rate", "10M"]);
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut child = cmd.command().stdout(Stdio::null()).stderr(stderr).spawn().expect("spawn backup");
    // Kill once a part of the large object went up and its upload is on record.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let parts = f.s3.moto.json(&format!(
            "c = s3(); n = 0\nfor u in c.list_multipart_uploads(Bucket='{BUCKET}').get('Uploads', []):\n    n += len(c.list_parts(Bucket='{BUCKET}', Key=u['Key'], UploadId=u['UploadId']).get('Parts', []))\nprint(n)"
        ));
        if parts.as_u64().unwrap_or(0) >= 1 && !f.s3.keys("killed/uploads/").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no part of a multipart upload appeared");
        if child.try_wait().expect("poll backup").is_some() {
            panic!("the backup ended before it could be killed: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let leaked = f.open_uploads();
    assert!(!leaked.is_empty(), "the killed run left its upload open (what the clean-up must fix)");
    let states = f.states();
    assert!(states.iter().all(|(_, s)| s != "complete"), "the killed backup is not usable: {states:?}");

    // The killed run's lease lock outlives it by up to a minute (it cannot be told from a
    // live holder on another host); then the next backup takes the lock over.
    let deadline = Instant::now() + Duration::from_secs(120);
    let next = loop {
        let o = f.cmd(&["backup", "--json"]).run();
        if o.code == Some(0) {
            break serde_json::from_str::<serde_json::Value>(&o.stdout).expect("backup json");
        }
        assert!(o.one_error_line().contains("holds the lock"), "{}", o.stderr);
        assert!(Instant::now() < deadline, "the killed backup's lease never expired");
        std::thread::sleep(Duration::from_secs(2));
    };
    let killed: Vec<&str> = states.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(next["removed_incomplete"], serde_json::json!(killed), "{next}");
    assert_eq!(f.open_uploads(), Vec::<String>::new(), "the stale uploads were aborted (no storage leak)");
    assert_eq!(f.s3.keys("killed/uploads/"), Vec::<String>::new(), "and their records deleted");
    let id = next["id"].as_str().expect("id");
    assert_eq!(f.states(), vec![(id.to_string(), "complete".to_string())]);
    f.pg.sql("INSERT INTO markers VALUES ('after')");
    let seg = f.pg.switch_wal();
    f.s3.wait_for_key(&format!("killed/{}", pgkeep::repo::layout::wal_key(&seg)), Duration::from_secs(60));
    let (_, restored) = f.restore_and_start("restored", None);
    for q in CHECKS {
        assert_eq!(restored.scalar(q), f.pg.scalar(q), "{q}");
    }
}
