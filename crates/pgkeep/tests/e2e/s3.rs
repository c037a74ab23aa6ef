//! `s3://BUCKET/PREFIX` repositories against moto_server's S3 on 127.0.0.1, and the whole story
//! also on s3s-fs, a second S3 implementation (issue 9, acceptance 1 and 2 for S3): the whole
//! story through an object store, archive-push's
//! never-overwrite rule on S3, a store that ignores If-None-Match refused, and an unreachable
//! store failing with one line (archive-get: 126). Credentials reach pgkeep only through a
//! shared credentials file; no output and no stored object ever contains the secret key.

use std::path::Path;
use std::time::{Duration, Instant};

use pgkeep_testkit::s3::SECRET_KEY;
use pgkeep_testkit::{ClusterOptions, FaultProxy, S3Server, S3Store, TestEnv};

use crate::common;
use crate::object_stores::{
    lease_taken_over_only_when_expired, never_overwrites_and_unreachable_fails, whole_story, Store, StoreSetup,
};

impl Store for S3Store {
    fn url(&self, prefix: &str) -> String {
        S3Store::url(self, prefix)
    }
    fn config(&self) -> &Path {
        &self.config
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        S3Store::env(self)
    }
    fn archive_command(&self, env: &TestEnv, url: &str) -> String {
        S3Store::archive_command(self, env, url)
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        S3Store::keys(self, prefix)
    }
    fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        S3Store::objects(self, prefix)
    }
    fn wait_for_key(&self, key: &str, timeout: Duration) {
        S3Store::wait_for_key(self, key, timeout)
    }
    fn secret(&self) -> &'static str {
        SECRET_KEY
    }
    fn config_with_endpoint(&self, endpoint: &str) -> String {
        format!("[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n")
    }
    fn put(&self, key: &str, body: &str) {
        self.python(&format!("s3().put_object(Bucket='{}', Key='{key}', Body={body:?})", self.bucket));
    }
}

/// A cluster archiving into an S3 repository (more `[s3]` lines: `s3_settings`), `pgkeep
/// init` done.
fn setup(prefix: &str, settings: &[(&str, &str)], s3_settings: &str) -> StoreSetup<S3Store> {
    setup_on(S3Server::Moto, prefix, settings, s3_settings)
}

fn setup_on(server: S3Server, prefix: &str, settings: &[(&str, &str)], s3_settings: &str) -> StoreSetup<S3Store> {
    let env = common::env();
    let store = S3Store::start_on(&env, server, "pgkeep-test", s3_settings);
    StoreSetup::new(env, store, prefix, settings)
}

/// The whole story on S3 (`whole_story`), and the configured storage class on every object,
/// single PUT or multipart.
#[test]
fn s3_repository_backup_archive_pitr_restore_verify_under_load() {
    let s = setup("db1/main", &[("track_commit_timestamp", "on")], "storage_class = \"STANDARD_IA\"\nmax_retries = 3");
    whole_story(&s, "AWS credentials from ProfileFile", |id| {
        // The noise table went up as a multipart upload of 8 MiB parts.
        let heads: Vec<(u64, String)> =
            s.store.keys(&format!("db1/main/backup/{id}/data/")).iter().map(|k| s.store.head(k)).collect();
        assert!(heads.iter().any(|(size, _)| *size > 8 << 20), "a data object larger than one part: {heads:?}");
        assert!(heads.iter().all(|(_, class)| class == "STANDARD_IA"), "{heads:?}");
        let wal_keys = s.store.keys("db1/main/wal/");
        assert_eq!(s.store.head(&wal_keys[0]).1, "STANDARD_IA");
    });
}

/// The whole story on s3s-fs, an S3 implementation independent of moto that checks SigV4
/// signatures and conditional PUTs (it keeps no storage class and refuses one).
#[test]
fn s3_repository_story_on_a_second_implementation_s3s_fs() {
    let s = setup_on(S3Server::S3sFs, "db1/main", &[("track_commit_timestamp", "on")], "max_retries = 3");
    whole_story(&s, "AWS credentials from ProfileFile", |id| {
        let heads: Vec<u64> =
            s.store.keys(&format!("db1/main/backup/{id}/data/")).iter().map(|k| s.store.head(k).0).collect();
        assert!(heads.iter().any(|size| *size > 8 << 20), "a data object larger than one part: {heads:?}");
    });
}

/// archive-push into S3: an identical re-push exits 0, a different file under an archived name
/// is refused and the stored copy kept; an unreachable store makes archive-get exit 126 and
/// backup fail with one line naming the object; the secret is never printed.
#[test]
fn s3_archive_never_overwrites_and_unreachable_store_fails_cleanly() {
    never_overwrites_and_unreachable_fails(setup("db2", &[], ""));
}

/// The backup lock on an object store is a lease object: a live lease (another host's) makes
/// backup refuse with one line naming the holder; an expired one is taken over with a log
/// line; the lock object is removed when the backup ends.
#[test]
fn s3_backup_lock_is_a_lease_taken_over_only_when_expired() {
    let s = setup("db4", &[], "");
    lease_taken_over_only_when_expired(&s);
    // The repository named by PGKEEP_REPO, and by `repo = "s3://…"` in the config file.
    let mut by_env = s.env.pgkeep(["--config"]).arg(&s.store.config).arg("list").env("PGKEEP_REPO", &s.url);
    for (k, v) in s.store.env() {
        by_env = by_env.env(k, v);
    }
    let list = s.json(by_env);
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    let with_repo = s.env.path("with-repo.toml");
    let cfg = std::fs::read_to_string(&s.store.config).unwrap();
    std::fs::write(&with_repo, format!("repo = \"{}\"\n{cfg}", s.url)).unwrap();
    let mut by_file = s.env.pgkeep(["--config"]).arg(&with_repo).arg("wal").arg("verify");
    for (k, v) in s.store.env() {
        by_file = by_file.env(k, v);
    }
    assert_eq!(s.json(by_file)["ok"], true);
    s.assert_no_secret_anywhere(&[]);
}

/// While a backup runs, its lease is renewed (the expiry moves on) and a second backup on the
/// same prefix is refused naming the holder; the lease is gone when the first one ends.
#[test]
fn s3_running_backup_renews_its_lease_and_excludes_a_second_one() {
    let s = setup("db5", &[], "");
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let key = "db5/lock/backup.lock";
    let mut first = s.cmd(&["backup", "--max-rate", "1M"]);
    first.command().stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = first.command().spawn().expect("spawn backup");
    s.store.wait_for_key(key, Duration::from_secs(60));
    let expiry = || {
        let v = s
            .store
            .moto
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
    assert_eq!(s.store.keys("db5/lock/"), Vec::<String>::new(), "the lease is released after the backup");
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

/// `[s3] endpoint = "https://…"` with `ca_file`: a store behind a private CA (the testkit's TLS
/// terminator in front of moto). Over TLS pgkeep sends unsigned payloads (TLS protects them):
/// init's conditional-create probe, a backup with a multipart object, archive-push and
/// archive-get all go through it, and the restored copy has every row; `--jobs 16` copies with
/// the 10 workers an object store's part budget serves. A `ca_file` of a CA
/// that did not sign the server's certificate fails with one line naming the store; one that
/// holds no certificate is one configuration error.
#[test]
fn s3_over_tls_behind_a_private_ca_backs_up_archives_and_restores() {
    let env = common::env();
    let store = S3Store::start_behind_tls(&env, "pgkeep-test", "max_retries = 1");
    let s = StoreSetup::new(env, store, "tls", &[]);
    let check = s.json(s.cmd(&["check"]));
    assert_eq!(check["ok"], true, "{check}");
    // ~25 MB of hex: a data object larger than one 8 MiB part even compressed.
    s.pg.sql("CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) AS pad FROM generate_series(1, 300000) g");
    // More workers than the part budget serves: capped, so no worker waits for a buffer forever.
    let o = s.ok(s.cmd(&["-v", "backup", "--jobs", "16", "--json"]));
    assert!(o.stderr.contains("copying with 10 workers instead of 16"), "{}", o.stderr);
    let backup: serde_json::Value = serde_json::from_str(&o.stdout).expect("backup report");
    let id = backup["id"].as_str().expect("backup id").to_string();
    let sizes: Vec<u64> = s.store.keys(&format!("tls/backup/{id}/data/")).iter().map(|k| s.store.head(k).0).collect();
    assert!(sizes.iter().any(|size| *size > 8 << 20), "a multipart object: {sizes:?}");
    s.pg.sql("CREATE TABLE marker AS SELECT 'after the backup' AS m");
    s.switch_and_wait_archived();
    let rows = s.pg.scalar("SELECT count(*) FROM big");
    let dir = s.env.path("restored");
    s.ok(s.cmd(&["restore", "--to", dir.to_str().expect("utf-8")]));
    let restored = s.start_restored("restored", &dir);
    restored.wait_promoted();
    assert_eq!(restored.scalar("SELECT count(*) FROM big"), rows);
    assert_eq!(restored.scalar("SELECT m FROM marker"), "after the backup");
    drop(restored);

    // Another CA: the server's certificate does not verify.
    let other = s.env.owned_dir("other-ca");
    let (_, _, other_ca) = pgkeep_testkit::tls::certificates(&other, "not-the-store-ca");
    // The store's own config with another ca_file.
    let store_ca = s.store.tls.as_ref().expect("tls").ca.display().to_string();
    let s3_table = |ca: &Path| {
        let config = std::fs::read_to_string(&s.store.config).unwrap();
        assert!(config.contains(&format!("ca_file = \"{store_ca}\"")), "{config}");
        config.replace(&store_ca, &ca.display().to_string())
    };
    let wrong = s.env.path("wrong-ca.toml");
    std::fs::write(&wrong, s3_table(&other_ca)).unwrap();
    let o = s.keep(s.cmd_with(&wrong, &["list"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("pgkeep.info") && line.contains("certificate"), "{line}");
    assert!(line.contains("hint: the store's TLS certificate is not trusted here"), "{line}");
    // A ca_file without a certificate in it.
    let not_pem = s.env.path("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let bad = s.env.path("bad-ca.toml");
    std::fs::write(&bad, s3_table(&not_pem)).unwrap();
    let o = s.keep(s.cmd_with(&bad, &["list"]).fails());
    let line = o.one_error_line();
    assert!(line.contains("ca_file") && line.contains("hint:"), "{line}");
    assert_eq!(o.code, Some(2), "a configuration error: {line}");
    s.assert_no_secret_anywhere(&[&dir]);
}
