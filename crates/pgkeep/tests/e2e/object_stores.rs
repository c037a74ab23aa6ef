//! What the object-store tests of every backend share: a cluster archiving into a store
//! through its config file, pgkeep runs whose outputs are all kept for a final secret check,
//! and the whole story (init, check, backup under load, archive, list, verify, wal verify,
//! PITR, restore to the end) plus archive-push's never-overwrite rule and an unreachable
//! store. Each backend's module supplies a [`Store`]: an emulator with an independent view.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgkeep_testkit::{ClusterOptions, CmdOutput, Load, PgkeepCmd, TestCluster, TestEnv};

/// A store under test, seen through its own API (never through pgkeep's code).
pub trait Store {
    fn url(&self, prefix: &str) -> String;
    /// The config file with this store's settings.
    fn config(&self) -> &Path;
    /// The environment that carries the credentials.
    fn env(&self) -> Vec<(&'static str, String)>;
    fn archive_command(&self, env: &TestEnv, url: &str) -> String;
    fn keys(&self, prefix: &str) -> Vec<String>;
    fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)>;
    fn wait_for_key(&self, key: &str, timeout: Duration);
    /// The secret that must appear in no output and no stored object.
    fn secret(&self) -> &'static str;
    /// Config file text reaching the same store through `endpoint`.
    fn config_with_endpoint(&self, endpoint: &str) -> String;
    /// Store `body` under `key` (full key, prefix included), as another host would.
    fn put(&self, key: &str, body: &str);
}

/// A cluster archiving into `store` under a prefix, `pgkeep init` done.
pub struct StoreSetup<S: Store> {
    pub pg: TestCluster,
    pub store: S,
    pub url: String,
    pub outputs: RefCell<Vec<String>>,
    pub env: TestEnv,
}

impl<S: Store> StoreSetup<S> {
    pub fn new(env: TestEnv, store: S, prefix: &str, settings: &[(&str, &str)]) -> StoreSetup<S> {
        let url = store.url(prefix);
        let mut opts = ClusterOptions::default()
            .with("archive_mode", "on")
            .with("archive_command", &store.archive_command(&env, &url));
        for (k, v) in settings {
            opts = opts.with(k, v);
        }
        let mut pg = env.cluster("src", opts);
        for (k, v) in store.env() {
            pg.env(k, &v);
        }
        pg.start();
        let s = StoreSetup { pg, store, url, outputs: RefCell::new(Vec::new()), env };
        let init = s.json(s.cmd(&["init"]));
        assert_eq!(init["created"], true, "{init}");
        assert_eq!(init["repo"], s.url.as_str());
        s
    }

    /// pgkeep with the store's config, repository, connection, data directory and credentials.
    pub fn cmd(&self, args: &[&str]) -> PgkeepCmd {
        self.cmd_with(self.store.config(), args)
    }

    pub fn cmd_with(&self, config: &Path, args: &[&str]) -> PgkeepCmd {
        let mut c = self.env.pgkeep(["--config"]).arg(config).arg("--repo").arg(&self.url);
        c = c.arg("--pg").arg(self.pg.conninfo()).arg("--pgdata").arg(self.pg.pgdata());
        for (k, v) in self.store.env() {
            c = c.env(k, v);
        }
        for a in args {
            c = c.arg(a);
        }
        c
    }

    pub fn keep(&self, o: CmdOutput) -> CmdOutput {
        self.outputs.borrow_mut().push(format!("{}\n{}\n{}", o.line, o.stdout, o.stderr));
        o
    }

    pub fn ok(&self, c: PgkeepCmd) -> CmdOutput {
        let o = self.keep(c.run());
        assert_eq!(o.code, Some(0), "`{}` failed:\nstdout: {}\nstderr: {}", o.line, o.stdout, o.stderr);
        o
    }

    pub fn json(&self, c: PgkeepCmd) -> serde_json::Value {
        let o = self.ok(c.arg("--json"));
        serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("`{}` did not print JSON ({e}): {}", o.line, o.stdout))
    }

    /// The repository's prefix inside the bucket/container, with a trailing `/`.
    pub fn prefix(&self) -> String {
        self.url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('/'))
            .map(|(_, p)| format!("{p}/"))
            .unwrap_or_default()
    }

    /// Force a segment switch and wait until it is in the store.
    pub fn switch_and_wait_archived(&self) -> String {
        self.pg.sql("SELECT pg_create_restore_point('store test switch')");
        let seg = self.pg.switch_wal();
        let key = format!("{}{}", self.prefix(), pgkeep::repo::layout::wal_key(&seg));
        self.store.wait_for_key(&key, Duration::from_secs(60));
        seg
    }

    /// A restored data directory started with the credentials in its environment (its
    /// restore_command is pgkeep's own), archiving off.
    pub fn start_restored(&self, name: &str, dir: &Path) -> TestCluster {
        let mut c = self.env.cluster_on(name, dir);
        c.set("archive_mode", "off");
        for (k, v) in self.store.env() {
            c.env(k, &v);
        }
        c.start();
        c
    }

    /// Nothing pgkeep printed, no stored object and no file it wrote holds the secret.
    pub fn assert_no_secret_anywhere(&self, restored: &[&Path]) {
        let secret = self.store.secret();
        for out in self.outputs.borrow().iter() {
            assert!(!out.contains(secret), "a pgkeep output contains the secret:\n{out}");
        }
        for (key, bytes) in self.store.objects("") {
            assert!(!contains(&bytes, secret.as_bytes()), "stored object {key} contains the secret");
        }
        for dir in restored {
            for f in ["postgresql.auto.conf", "postgresql.conf"] {
                let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                assert!(!text.contains(secret), "{f} of {} contains the secret", dir.display());
            }
        }
        let config = std::fs::read_to_string(self.store.config()).expect("config");
        assert!(!config.contains(secret));
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The whole story: init (conditional create proven by init's probe, which leaves nothing),
/// check (credential source named, conditional create), a backup under write load (its lease
/// lock released afterwards), WAL through archive_command, list, verify, wal verify, PITR to a
/// time between two marker rows, restore to the end (restored rows equal the source), rpo,
/// expire. `credential_source` is what check must name; `stored(backup id)` checks what only the
/// backend can (e.g. S3 storage classes), once the backup and its WAL are stored.
pub fn whole_story<S: Store>(s: &StoreSetup<S>, credential_source: &str, stored: impl FnOnce(&str)) {
    let p = s.prefix();
    let keys = s.store.keys(&p);
    assert!(keys.contains(&format!("{p}pgkeep.info")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("probe")), "init's probe objects must be deleted: {keys:?}");

    let check = s.json(s.cmd(&["check", "--archive-timeout", "60"]));
    assert_eq!(check["ok"], true, "{check}");
    let item = |name: &str| check["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned();
    let creds = item("credentials").expect("a credentials check for an object store");
    assert!(creds["detail"].as_str().unwrap().contains(credential_source), "the source, not the value: {creds}");
    assert_eq!(item("conditional create").expect("a conditional-create check")["ok"], true);
    assert_eq!(item("clock skew").expect("the store's clock is compared")["ok"], true);

    s.pg.sql("CREATE TABLE markers (name text PRIMARY KEY)");
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    // Hex noise zstd cannot shrink below one 8 MiB part: that file goes up in parts.
    s.pg.sql("CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 250000) g");
    let load = Load::inserts(&s.pg, &s.env.rt, "events");
    load.wait_for(100);
    let mut bench = s.pg.tool("pgbench").args(["-n", "-c", "2", "-T", "5", "postgres"]).spawn().expect("pgbench");
    let backup = s.json(s.cmd(&["backup"]));
    let id = backup["id"].as_str().expect("backup id").to_string();
    assert_eq!(s.store.keys(&format!("{p}lock/")), Vec::<String>::new(), "the lease is released after the backup");
    load.wait_for(load.committed() + 200);
    s.pg.sql("INSERT INTO markers VALUES ('before')");
    let target = s.pg.scalar("SELECT clock_timestamp()");
    load.wait_for(load.committed() + 200);
    s.pg.sql("INSERT INTO markers VALUES ('after')");
    assert!(bench.wait().expect("pgbench").success());
    let log = load.stop();
    s.switch_and_wait_archived();
    assert!(!s.store.keys(&format!("{p}backup/{id}/data/")).is_empty(), "the backup's data objects are stored");
    assert_eq!(s.store.keys(&format!("{p}backup/{id}/manifest")).len(), 1);
    stored(&id);

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
        "restore_command reaches the store with the same settings: {auto}"
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
    let rpo = s.json(s.cmd(&["rpo"]));
    assert_eq!(rpo["repo"], s.url.as_str(), "{rpo}");
    assert!(rpo["newest_verified_backup_age_seconds"].is_number(), "verify's verdict read back from the store: {rpo}");
    s.json(s.cmd(&["expire", "--backup", &id]));
    assert_eq!(s.json(s.cmd(&["list"])), serde_json::json!([]));
    assert_eq!(s.store.keys(&format!("{p}backup/{id}/")), Vec::<String>::new(), "expire deleted its objects");
    s.assert_no_secret_anywhere(&[&pitr_dir, &end_dir]);
}

/// archive-push: an identical re-push exits 0, a different segment under an archived name is
/// refused and the stored copy kept; through an endpoint where nothing listens archive-get
/// exits 126 and backup fails with one line naming the object.
pub fn never_overwrites_and_unreachable_fails<S: Store>(s: StoreSetup<S>) {
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
    let StoreSetup { pg: mut src, store, url, outputs, env } = s;
    let copy_dir = env.path("copy");
    src.stop();
    let st = std::process::Command::new("cp").arg("-a").arg(src.pgdata()).arg(&copy_dir).status().unwrap();
    assert!(st.success());
    src.start();
    let s = StoreSetup { pg: src, store, url, outputs, env };
    let mut copy = s.env.cluster_on("copy", &copy_dir);
    copy.set("archive_mode", "off");
    copy.start();
    s.pg.sql("INSERT INTO t SELECT 'source again ' || g FROM generate_series(1, 1000) g");
    copy.sql("INSERT INTO t SELECT 'diverged copy ' || g FROM generate_series(1, 1000) g");
    let seg_src = s.switch_and_wait_archived();
    let seg_copy = copy.switch_wal();
    assert_eq!(seg_src, seg_copy);
    let diverged = work.join(format!("diverged/{seg_copy}"));
    std::fs::create_dir_all(diverged.parent().unwrap()).unwrap();
    std::fs::copy(copy_dir.join("pg_wal").join(&seg_copy), &diverged).unwrap();
    copy.stop();
    let key = format!("{}{}", s.prefix(), pgkeep::repo::layout::wal_key(&seg_src));
    let stored_before = s.store.objects(&key);
    assert_eq!(stored_before.len(), 1);
    let o = s.keep(s.cmd(&["archive-push"]).arg(&diverged).fails());
    let line = o.one_error_line();
    assert!(line.contains("different") && line.contains("stored copy is kept"), "{line}");
    assert_eq!(s.store.objects(&key), stored_before);

    let dead = dead_config(&s.env, &s.store);
    let started = Instant::now();
    let o = s.keep(s.cmd_with(&dead, &["archive-get", &seg]).arg(work.join("got")).run());
    assert_eq!(o.code, Some(126), "an unreachable store must stop recovery: {}", o.stderr);
    let line = o.one_error_line();
    assert!(line.contains("pgkeep.info") && line.contains("hint:"), "{line}");
    let o = s.keep(s.cmd_with(&dead, &["backup"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("pgkeep.info") && line.contains("hint:"), "one line naming the object: {line}");
    assert!(started.elapsed() < Duration::from_secs(90), "retries are bounded: {:?}", started.elapsed());
    s.assert_no_secret_anywhere(&[]);
}

/// A config file for `store` whose endpoint is a port where nothing listens.
pub fn dead_config(env: &TestEnv, store: &impl Store) -> PathBuf {
    let dead = env.path("dead.toml");
    let port = pgkeep::pg::instance::free_port();
    std::fs::write(&dead, store.config_with_endpoint(&format!("http://127.0.0.1:{port}"))).unwrap();
    pgkeep::fsutil::set_mode(&dead, 0o644).unwrap();
    dead
}

/// The backup lock is a lease object: a live lease (another host's) makes backup refuse with one
/// line naming the holder and write nothing; an expired one is taken over (replaced only if
/// unchanged) with a log line; the lock object is gone when the backup ends.
pub fn lease_taken_over_only_when_expired<S: Store>(s: &StoreSetup<S>) {
    let p = s.prefix();
    let plant = |expires: &str| {
        let holder = serde_json::json!({"host": "otherhost", "pid": 4242, "started_at": "2026-01-01T00:00:00Z", "lease_expires_at": expires});
        s.store.put(&format!("{p}lock/backup.lock"), &holder.to_string());
    };
    plant("2999-01-01T00:00:00Z");
    let o = s.keep(s.cmd(&["backup"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("holds the lock") && line.contains("pid 4242 on otherhost"), "{line}");
    assert_eq!(s.store.keys(&format!("{p}backup/")), Vec::<String>::new(), "a refused backup writes nothing");

    plant("2020-01-01T00:00:00Z");
    let o = s.ok(s.cmd(&["backup"]));
    assert!(o.stderr.contains("taking over the expired lock") && o.stderr.contains("otherhost"), "{}", o.stderr);
    assert_eq!(s.store.keys(&format!("{p}lock/")), Vec::<String>::new(), "the lease is released after the backup");
}
