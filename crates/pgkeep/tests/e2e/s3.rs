//! `s3://BUCKET/PREFIX` repositories against moto_server's S3 on 127.0.0.1 (issue 9,
//! acceptance 1 and 2 for S3): the whole story through an object store, archive-push's
//! never-overwrite rule on S3, a store that ignores If-None-Match refused, and an unreachable
//! store failing with one line (archive-get: 126). Credentials reach pgkeep only through a
//! shared credentials file; no output and no stored object ever contains the secret key.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use pgkeep_testkit::s3::SECRET_KEY;
use pgkeep_testkit::{ClusterOptions, CmdOutput, FaultProxy, Load, PgkeepCmd, S3Store, TestCluster, TestEnv};

use crate::common;

/// A cluster archiving into an S3 repository, `pgkeep init` done. Every pgkeep output is kept
/// for the final secret check.
struct S3Setup {
    pg: TestCluster,
    s3: S3Store,
    url: String,
    outputs: RefCell<Vec<String>>,
    env: TestEnv,
}

impl S3Setup {
    fn new(prefix: &str, settings: &[(&str, &str)]) -> S3Setup {
        Self::with_s3_settings(prefix, settings, "")
    }

    fn with_s3_settings(prefix: &str, settings: &[(&str, &str)], s3_settings: &str) -> S3Setup {
        let env = common::env();
        let s3 = S3Store::start_with(&env, "pgkeep-test", s3_settings);
        let url = s3.url(prefix);
        let mut opts = ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &s3.archive_command(&env, &url));
        for (k, v) in settings {
            opts = opts.with(k, v);
        }
        let mut pg = env.cluster("src", opts);
        pg.start();
        let s = S3Setup { pg, s3, url, outputs: RefCell::new(Vec::new()), env };
        let init = s.ok(s.cmd(&["init"]).arg("--json"));
        let init: serde_json::Value = serde_json::from_str(&init.stdout).expect("init json");
        assert_eq!(init["created"], true, "{init}");
        assert_eq!(init["repo"], s.url.as_str());
        s
    }

    /// pgkeep with the S3 config, repository, connection, data directory and credentials.
    fn cmd(&self, args: &[&str]) -> PgkeepCmd {
        self.cmd_with(&self.s3.config, args)
    }

    fn cmd_with(&self, config: &Path, args: &[&str]) -> PgkeepCmd {
        let mut c = self.env.pgkeep(["--config"]).arg(config).arg("--repo").arg(&self.url);
        c = c.arg("--pg").arg(self.pg.conninfo()).arg("--pgdata").arg(self.pg.pgdata());
        for (k, v) in self.s3.env() {
            c = c.env(k, v);
        }
        for a in args {
            c = c.arg(a);
        }
        c
    }

    fn keep(&self, o: CmdOutput) -> CmdOutput {
        self.outputs.borrow_mut().push(format!("{}\n{}\n{}", o.line, o.stdout, o.stderr));
        o
    }

    fn ok(&self, c: PgkeepCmd) -> CmdOutput {
        let o = self.keep(c.run());
        assert_eq!(o.code, Some(0), "`{}` failed:\nstdout: {}\nstderr: {}", o.line, o.stdout, o.stderr);
        o
    }

    fn json(&self, c: PgkeepCmd) -> serde_json::Value {
        let o = self.ok(c.arg("--json"));
        serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("`{}` did not print JSON ({e}): {}", o.line, o.stdout))
    }

    fn prefix(&self) -> String {
        self.url.trim_start_matches("s3://").split_once('/').map(|(_, p)| format!("{p}/")).unwrap_or_default()
    }

    /// Force a segment switch and wait until it is in the bucket.
    fn switch_and_wait_archived(&self) -> String {
        self.pg.sql("SELECT pg_create_restore_point('s3 test switch')");
        let seg = self.pg.switch_wal();
        self.wait_archived(&seg);
        seg
    }

    fn wait_archived(&self, seg: &str) {
        let key = format!("{}{}", self.prefix(), pgkeep::repo::layout::wal_key(seg));
        self.s3.wait_for_key(&key, Duration::from_secs(60));
    }

    /// A restored data directory started with the credentials in its environment (its
    /// restore_command is pgkeep's own), archiving off.
    fn start_restored(&self, name: &str, dir: &Path) -> TestCluster {
        let mut c = self.env.cluster_on(name, dir);
        c.set("archive_mode", "off");
        for (k, v) in self.s3.env() {
            c.env(k, &v);
        }
        c.start();
        c
    }

    /// Nothing pgkeep printed, no stored object and no file it wrote holds the secret key.
    fn assert_no_secret_anywhere(&self, restored: &[&Path]) {
        for out in self.outputs.borrow().iter() {
            assert!(!out.contains(SECRET_KEY), "a pgkeep output contains the secret key:\n{out}");
        }
        for (key, bytes) in self.s3.objects("") {
            assert!(!contains(&bytes, SECRET_KEY.as_bytes()), "stored object {key} contains the secret key");
        }
        for dir in restored {
            for f in ["postgresql.auto.conf", "postgresql.conf"] {
                let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                assert!(!text.contains(SECRET_KEY), "{f} of {} contains the secret key", dir.display());
            }
        }
        let config = std::fs::read_to_string(&self.s3.config).expect("config");
        assert!(!config.contains(SECRET_KEY));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The whole story on S3: init (conditional create proven), check (credential source named),
/// a backup under write load, WAL through archive_command, list, verify, wal verify, PITR to a
/// time between two marker rows, restore to the end; restored rows equal the source.
#[test]
fn s3_repository_backup_archive_pitr_restore_verify_under_load() {
    let s = S3Setup::with_s3_settings(
        "db1/main",
        &[("track_commit_timestamp", "on")],
        "storage_class = \"STANDARD_IA\"\nmax_retries = 3",
    );
    let keys = s.s3.keys("db1/main/");
    assert!(keys.contains(&"db1/main/pgkeep.info".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("probe")), "init's probe objects must be deleted: {keys:?}");

    let check = s.json(s.cmd(&["check", "--archive-timeout", "60"]));
    assert_eq!(check["ok"], true, "{check}");
    let item = |name: &str| check["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned();
    let creds = item("credentials").expect("a credentials check for an object store");
    assert!(creds["detail"].as_str().unwrap().contains("ProfileFile"), "the source, not the value: {creds}");
    assert_eq!(item("conditional create").expect("a conditional-create check")["ok"], true);
    assert_eq!(item("clock skew").expect("the store's clock is compared")["ok"], true);

    s.pg.sql("CREATE TABLE markers (name text PRIMARY KEY)");
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    // Hex noise zstd cannot shrink below one 8 MiB part: that file goes up as a multipart upload.
    s.pg.sql("CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 250000) g");
    let load = Load::inserts(&s.pg, &s.env.rt, "events");
    load.wait_for(100);
    let mut bench = s.pg.tool("pgbench").args(["-n", "-c", "2", "-T", "5", "postgres"]).spawn().expect("pgbench");
    let backup = s.json(s.cmd(&["backup"]));
    let id = backup["id"].as_str().expect("backup id").to_string();
    load.wait_for(load.committed() + 200);
    s.pg.sql("INSERT INTO markers VALUES ('before')");
    let target = s.pg.scalar("SELECT clock_timestamp()");
    load.wait_for(load.committed() + 200);
    s.pg.sql("INSERT INTO markers VALUES ('after')");
    assert!(bench.wait().expect("pgbench").success());
    let log = load.stop();
    s.switch_and_wait_archived();
    let data_keys = s.s3.keys(&format!("db1/main/backup/{id}/data/"));
    assert!(!data_keys.is_empty(), "the backup's data objects are in the bucket");
    // The noise table went up as a multipart upload of 8 MiB parts; every object,
    // single PUT or multipart, has the configured storage class.
    let heads: Vec<(u64, String)> = data_keys.iter().map(|k| s.s3.head(k)).collect();
    assert!(heads.iter().any(|(size, _)| *size > 8 << 20), "a data object larger than one part: {heads:?}");
    assert!(heads.iter().all(|(_, class)| class == "STANDARD_IA"), "{heads:?}");
    let wal_keys = s.s3.keys("db1/main/wal/");
    assert_eq!(s.s3.head(&wal_keys[0]).1, "STANDARD_IA");
    assert!(s.s3.keys(&format!("db1/main/backup/{id}/manifest")).len() == 1);

    let list = s.json(s.cmd(&["list"]));
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    assert_eq!(list[0]["state"], "complete");
    let verify = s.json(s.cmd(&["verify"]).arg(&id));
    assert_eq!(verify["ok"], true, "{verify}");
    let walv = s.json(s.cmd(&["wal", "verify"]));
    assert_eq!(walv["ok"], true, "{walv}");

    // Ground truth from the source: commit timestamps of every row.
    let before =
        s.pg.column(&format!("SELECT id FROM events WHERE pg_xact_commit_timestamp(xmin) <= '{target}' ORDER BY id"));
    let after = s.pg.int(&format!("SELECT count(*) FROM events WHERE pg_xact_commit_timestamp(xmin) > '{target}'"));
    assert!(before.len() > 100 && after > 100, "{} before, {after} after the target", before.len());
    assert_eq!(before.len() + after as usize, log.len());

    let pitr_dir = s.env.path("pitr");
    let r = s.json(s.cmd(&["restore", "--target-time", &target, "--target-action", "promote", "--to"]).arg(&pitr_dir));
    assert_eq!(r["backup"], id.as_str());
    let auto = std::fs::read_to_string(pitr_dir.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        auto.contains(&format!("--repo \"{}\"", s.url)) && auto.contains("--config"),
        "restore_command reaches the bucket with the same settings: {auto}"
    );
    let pitr = s.start_restored("pitr", &pitr_dir);
    pitr.wait_promoted();
    assert_eq!(pitr.column("SELECT name FROM markers ORDER BY 1"), vec!["before"]);
    assert_eq!(pitr.column("SELECT id FROM events ORDER BY id"), before, "exactly the rows up to {target}");

    let end_dir = s.env.path("end");
    s.json(s.cmd(&["restore", "--to"]).arg(&end_dir));
    let end = s.start_restored("end", &end_dir);
    end.wait_promoted();
    for q in [
        "SELECT string_agg(name, ',' ORDER BY name) FROM markers",
        "SELECT count(*) || ':' || sum(id) FROM events",
        "SELECT sum(abalance)::text FROM pgbench_accounts",
        "SELECT count(*) FROM pgbench_history",
        "SELECT md5(string_agg(t, '' ORDER BY g)) FROM noise",
    ] {
        assert_eq!(end.scalar(q), s.pg.scalar(q), "{q}");
    }
    s.assert_no_secret_anywhere(&[&pitr_dir, &end_dir]);
}

/// archive-push into S3: an identical re-push exits 0, a different file under an archived name
/// is refused and the stored copy kept; an unreachable store makes archive-get exit 126 and
/// backup fail with one line naming the object; the secret is never printed.
#[test]
fn s3_archive_never_overwrites_and_unreachable_store_fails_cleanly() {
    let s = S3Setup::new("db2", &[]);
    s.pg.sql("CREATE TABLE t (v text)");
    s.pg.sql("INSERT INTO t SELECT 'source ' || g FROM generate_series(1, 1000) g");
    let seg = s.switch_and_wait_archived();
    let work = s.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let fetched = work.join(&seg);
    s.ok(s.cmd(&["archive-get", &seg]).arg(&fetched));
    let out = s.ok(s.cmd(&["archive-push"]).arg(&fetched));
    assert!(out.stdout.contains("already archived"), "{}", out.stdout);

    // A diverged copy of the server writes the same segment name with other content.
    let mut src = s.pg;
    let copy_dir = s.env.path("copy");
    src.stop();
    let st = std::process::Command::new("cp").arg("-a").arg(src.pgdata()).arg(&copy_dir).status().unwrap();
    assert!(st.success());
    src.start();
    let mut copy = s.env.cluster_on("copy", &copy_dir);
    copy.set("archive_mode", "off");
    copy.start();
    let s = S3Setup { pg: src, ..s };
    s.pg.sql("INSERT INTO t SELECT 'source again ' || g FROM generate_series(1, 1000) g");
    copy.sql("INSERT INTO t SELECT 'diverged copy ' || g FROM generate_series(1, 1000) g");
    let seg_src = s.switch_and_wait_archived();
    let seg_copy = copy.switch_wal();
    assert_eq!(seg_src, seg_copy);
    let diverged = work.join(format!("diverged/{seg_copy}"));
    std::fs::create_dir_all(diverged.parent().unwrap()).unwrap();
    std::fs::copy(copy_dir.join("pg_wal").join(&seg_copy), &diverged).unwrap();
    copy.stop();
    let stored_before = s.s3.objects(&format!("db2/{}", pgkeep::repo::layout::wal_key(&seg_src)));
    assert_eq!(stored_before.len(), 1);
    let o = s.keep(s.cmd(&["archive-push"]).arg(&diverged).fails());
    let line = o.one_error_line();
    assert!(line.contains("different") && line.contains("stored copy is kept"), "{line}");
    assert_eq!(s.s3.objects(&format!("db2/{}", pgkeep::repo::layout::wal_key(&seg_src))), stored_before);

    // The same repository through an endpoint where nothing listens.
    let dead = s.env.path("dead.toml");
    let port = pgkeep::pg::instance::free_port();
    std::fs::write(&dead, format!("[s3]\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\n")).unwrap();
    let started = Instant::now();
    let o = s.keep(s.cmd_with(&dead, &["archive-get", &seg]).arg(work.join("got")).run());
    assert_eq!(o.code, Some(126), "an unreachable store must stop recovery: {}", o.stderr);
    let line = o.one_error_line();
    assert!(line.contains("127.0.0.1") || line.contains("pgkeep.info"), "{line}");
    let o = s.keep(s.cmd_with(&dead, &["backup"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("pgkeep.info") && line.contains("hint:"), "one line naming the object: {line}");
    assert!(started.elapsed() < Duration::from_secs(90), "retries are bounded: {:?}", started.elapsed());
    s.assert_no_secret_anywhere(&[]);
}

/// The backup lock on an object store is a lease object: a live lease (another host's) makes
/// backup refuse with one line naming the holder; an expired one is taken over with a log
/// line; the lock object is removed when the backup ends.
#[test]
fn s3_backup_lock_is_a_lease_taken_over_only_when_expired() {
    let s = S3Setup::new("db4", &[]);
    let key = "db4/lock/backup.lock";
    let plant = |expires: &str| {
        s.s3.moto.python(&format!(
            "s3().put_object(Bucket='pgkeep-test', Key='{key}', Body=json.dumps({{'host': 'otherhost', 'pid': 4242, 'started_at': '2026-01-01T00:00:00Z', 'lease_expires_at': '{expires}'}}))"
        ))
    };
    plant("2999-01-01T00:00:00Z");
    let o = s.keep(s.cmd(&["backup"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("holds the lock") && line.contains("pid 4242 on otherhost"), "{line}");
    assert_eq!(s.s3.keys("db4/backup/"), Vec::<String>::new(), "a refused backup writes nothing");

    plant("2020-01-01T00:00:00Z");
    let o = s.ok(s.cmd(&["backup"]));
    assert!(o.stderr.contains("taking over the expired lock") && o.stderr.contains("otherhost"), "{}", o.stderr);
    assert_eq!(s.s3.keys("db4/lock/"), Vec::<String>::new(), "the lease is released after the backup");
    // The repository named by PGKEEP_REPO, and by `repo = "s3://…"` in the config file.
    let mut by_env = s.env.pgkeep(["--config"]).arg(&s.s3.config).arg("list").env("PGKEEP_REPO", &s.url);
    for (k, v) in s.s3.env() {
        by_env = by_env.env(k, v);
    }
    let list = s.json(by_env);
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    let with_repo = s.env.path("with-repo.toml");
    let cfg = std::fs::read_to_string(&s.s3.config).unwrap();
    std::fs::write(&with_repo, format!("repo = \"{}\"\n{cfg}", s.url)).unwrap();
    let mut by_file = s.env.pgkeep(["--config"]).arg(&with_repo).arg("wal").arg("verify");
    for (k, v) in s.s3.env() {
        by_file = by_file.env(k, v);
    }
    assert_eq!(s.json(by_file)["ok"], true);
    s.assert_no_secret_anywhere(&[]);
}

/// While a backup runs, its lease is renewed (the expiry moves on) and a second backup on the
/// same prefix is refused naming the holder; the lease is gone when the first one ends.
#[test]
fn s3_running_backup_renews_its_lease_and_excludes_a_second_one() {
    let s = S3Setup::new("db5", &[]);
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let key = "db5/lock/backup.lock";
    let mut first = s.cmd(&["backup", "--max-rate", "1M"]);
    first.command().stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = first.command().spawn().expect("spawn backup");
    s.s3.wait_for_key(key, Duration::from_secs(60));
    let expiry = || {
        let v =
            s.s3.moto
                .json(&format!("print(s3().get_object(Bucket='pgkeep-test', Key='{key}')['Body'].read().decode())"));
        v["lease_expires_at"].as_str().unwrap_or_default().to_string()
    };
    let e1 = expiry();
    let o = s.keep(s.cmd(&["backup"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("holds the lock") && line.contains(&format!("on {}", pgkeep::hostname())), "{line}");
    // The live lease tells list that the backup is running, not killed (once its start marker,
    // written right after the lock, is there).
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let list = s.json(s.cmd(&["list"]));
        let states: Vec<String> =
            list.as_array().expect("list array").iter().filter_map(|b| b["state"].as_str().map(String::from)).collect();
        if !states.is_empty() || Instant::now() > deadline {
            break states;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(states, vec!["running".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(40);
    while expiry() == e1 {
        assert!(Instant::now() < deadline, "the lease was not renewed within 40 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("first backup");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    s.outputs.borrow_mut().push(format!("{}\n{err}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "the first backup must finish: {err}");
    assert_eq!(s.s3.keys("db5/lock/"), Vec::<String>::new(), "the lease is released after the backup");
    s.assert_no_secret_anywhere(&[]);
}

/// A store that ignores If-None-Match (moto behind a proxy that strips the header) is refused
/// by init with one line, and nothing is left in the bucket; check refuses it too.
#[test]
fn s3_store_that_ignores_if_none_match_is_refused() {
    let env = common::env();
    let s3 = S3Store::start(&env, "pgkeep-test");
    let mut pg = env.cluster("src", ClusterOptions::default());
    pg.start();
    let proxy = FaultProxy::start(s3.moto.port);
    proxy.set_strip_if_none_match(true);
    let config = env.path("stripping.toml");
    std::fs::write(&config, format!("[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\n", proxy.endpoint())).unwrap();
    let cmd = |cfg: &Path, args: &[&str]| {
        let mut c = env.pgkeep(["--config"]).arg(cfg).arg("--repo").arg(s3.url("db3"));
        c = c.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        for (k, v) in s3.env() {
            c = c.env(k, v);
        }
        for a in args {
            c = c.arg(a);
        }
        c
    };
    let o = cmd(&config, &["init"]).fails();
    let line = o.one_error_line();
    assert!(line.contains("does not enforce conditional create") && line.contains("hint:"), "{line}");
    assert!(proxy.requests() >= 1, "init went through the stripping proxy");
    assert_eq!(s3.keys("db3/"), Vec::<String>::new(), "a refused store gets no repository");

    // Initialized directly, then checked through the proxy: the check says so.
    cmd(&s3.config, &["init"]).ok();
    let o = cmd(&config, &["check", "--json", "--archive-timeout", "1"]).run();
    let r: serde_json::Value = serde_json::from_str(&o.stdout).expect("check json");
    let cc = r["checks"].as_array().unwrap().iter().find(|c| c["name"] == "conditional create").cloned();
    let cc = cc.expect("a conditional-create check");
    assert_eq!(cc["ok"], false, "{r}");
    assert!(cc["detail"].as_str().unwrap().contains("does not enforce conditional create"), "{cc}");
    assert_eq!(s3.keys("db3/"), vec!["db3/pgkeep.info".to_string()], "check's probes are deleted");
    for out in [&o.stdout, &o.stderr] {
        assert!(!out.contains(SECRET_KEY));
    }
}
