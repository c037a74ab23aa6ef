//! Restore drills (issue 5): `pgkeep verify` on backups. Crash-inconsistent copies are in
//! verify_pgdata.rs.

use std::path::{Path, PathBuf};

use pgkeep_testkit::{Load, PgkeepCmd};

use crate::common::Setup;

/// TMPDIR for pgkeep runs: scratch directories go here, so a test can see that none is left.
pub fn scratch_parent(s: &pgkeep_testkit::TestEnv) -> PathBuf {
    let p = s.path("scratch");
    std::fs::create_dir_all(&p).unwrap();
    pgkeep::fsutil::set_mode(&p, 0o755).unwrap();
    p
}

/// Nothing left behind under `parent`: no scratch directory, no socket, no process working in it.
pub fn assert_nothing_left(parent: &Path) {
    let left: Vec<String> =
        std::fs::read_dir(parent).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.is_empty(), "the drill left {left:?} in {}", parent.display());
    let procs = pgkeep::verify::processes_in(parent);
    assert!(procs.is_empty(), "processes still run in {}: {procs:?}", parent.display());
    let sockets: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgkeep-sock-"))
        .collect();
    assert!(sockets.is_empty(), "socket directories left in /tmp: {sockets:?}");
}

pub trait VerifyCmd {
    fn in_scratch(self, parent: &Path) -> Self;
}

impl VerifyCmd for PgkeepCmd {
    fn in_scratch(self, parent: &Path) -> Self {
        self.env("TMPDIR", parent)
    }
}

/// The check called `name` in a drill report.
pub fn check<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {r:#}"))
}

/// A database with the kinds of objects a drill has to handle.
fn app_schema(s: &Setup) {
    s.pg.sql("CREATE DATABASE app");
    let c = s.env.cluster_on("app-view", s.pg.pgdata());
    drop(c);
    let conninfo = s.pg.conninfo().replace("dbname=postgres", "dbname=app");
    let out = s
        .pg
        .tool("psql")
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-d", &conninfo, "-c"])
        .arg(
            "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, note text);
             CREATE UNIQUE INDEX customers_email ON customers (lower(email));
             CREATE UNIQUE INDEX customers_note_partial ON customers (note) WHERE note IS NOT NULL AND id > 0;
             INSERT INTO customers SELECT g, 'c' || g || '@example.com', CASE WHEN g % 3 = 0 THEN repeat(md5(g::text), 200) END FROM generate_series(1, 3000) g;
             CREATE TABLE events (at timestamptz NOT NULL, customer int REFERENCES customers, payload jsonb) PARTITION BY RANGE (at);
             CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             CREATE INDEX ON events (customer);
             INSERT INTO events SELECT '2026-06-01'::timestamptz + g * interval '1 minute', 1 + g % 3000, jsonb_build_object('n', g) FROM generate_series(1, 5000) g;
             CREATE MATERIALIZED VIEW busy AS SELECT customer, count(*) FROM events GROUP BY customer;
             CREATE UNLOGGED TABLE scratchpad (k int PRIMARY KEY);
             INSERT INTO scratchpad SELECT generate_series(1, 100);",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Acceptance 1 and 7: a backup taken under write load verifies clean; the report lists each
/// database with indexes and tables checked and rows read, and the assertions; the verdict is
/// stored and `list --json` shows it.
#[test]
fn verify_good_backup_under_write_load_passes_and_list_shows_the_verdict() {
    let s = Setup::new();
    app_schema(&s);
    let load = Load::inserts_and_deletes(&s.pg, &s.env.rt, "orders", 5);
    load.wait_for(200);
    let id = s.backup();
    load.wait_for(load.committed() + 50);
    let log = load.stop();
    assert!(log.len() > 250);

    let listed = s.pgkeep(["list"]).json();
    assert!(listed[0]["verified"].is_null(), "never verified yet: {listed:#}");
    assert_eq!(s.pgkeep(["list"]).ok().stdout.lines().nth(1).map(|l| l.trim_end().ends_with("never")), Some(true));

    let asserts = s.env.path("checks.sql");
    std::fs::write(
        &asserts,
        "-- orders were written\nSELECT count(*) > 0 FROM orders;\n\\connect app\n-- every customer is there\nSELECT count(*) = 3000 FROM customers;\n",
    )
    .unwrap();
    let parent = scratch_parent(&s.env);
    let r = s.pgkeep(["verify", "latest", "--assert"]).arg(&asserts).in_scratch(&parent).json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["source"]["backup_id"], id.as_str());
    let dbs = r["databases"].as_array().unwrap();
    let names: Vec<&str> = dbs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    for want in ["postgres", "app", "template0", "template1"] {
        assert!(names.contains(&want), "database {want} not checked: {names:?}");
    }
    let app = dbs.iter().find(|d| d["name"] == "app").unwrap();
    assert!(app["indexes_checked"].as_u64().unwrap() >= 5, "{app:#}");
    assert!(app["tables_checked"].as_u64().unwrap() >= 4, "{app:#}");
    // 3000 customers + 5000 events + the materialized view's rows.
    assert!(app["rows_read"].as_u64().unwrap() >= 8000, "{app:#}");
    assert!(app["unique_checked"].as_u64().unwrap() >= 3, "{app:#}");
    assert_eq!(app["amcheck_function"], "bt_index_parent_check");
    let pg = dbs.iter().find(|d| d["name"] == "postgres").unwrap();
    assert!(pg["rows_read"].as_u64().unwrap() >= 200, "{pg:#}");
    for c in
        ["restore", "start", "page_lsn", "amcheck", "verify_heapam", "xid_horizon", "read_all", "unique", "assertions"]
    {
        assert_eq!(check(&r, c)["status"], "passed", "{c}: {r:#}");
    }
    let a = r["assertions"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["name"], "orders were written");
    assert_eq!(a[1]["database"], "app");
    assert!(a.iter().all(|x| x["ok"] == true && x["result"] == "true"));
    for p in ["restore", "page_lsn_scan", "recovery", "amcheck", "verify_heapam", "read_all", "unique", "cleanup"] {
        assert!(r["phases"].as_array().unwrap().iter().any(|x| x["name"] == p), "phase {p}: {r:#}");
    }
    assert!(r["verdict_key"].as_str().unwrap().starts_with(&format!("backup/{id}/verify/")));
    assert_nothing_left(&parent);

    // Acceptance 7: the verdict is in the repository and list shows it.
    let listed = s.pgkeep(["list"]).json();
    assert_eq!(listed[0]["verified"], true, "{listed:#}");
    assert_eq!(listed[0]["verified_at"], r["started_at"]);
    let text = s.pgkeep(["list"]).ok().stdout;
    assert!(text.lines().nth(1).unwrap().trim_end().ends_with("verified"), "{text}");
    // The human report names the checks and databases.
    let out = s.pgkeep(["verify", &id]).in_scratch(&parent).ok();
    println!("{}", out.stdout);
    assert!(out.stdout.contains("PASSED") && out.stdout.contains("app"), "{}", out.stdout);
    assert_nothing_left(&parent);
}

/// Acceptance 5: a false assertion fails the drill and is named; `--dump` writes dumps that
/// `pg_restore --list` reads. Also `--target-time` and `backup --verify`.
#[test]
fn verify_false_assertion_fails_naming_it_and_dumps_are_readable() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric NOT NULL); INSERT INTO ledger SELECT g, g % 100 - 10 FROM generate_series(1, 1000) g;");
    let id = s.backup();
    let asserts = s.env.path("asserts.sql");
    std::fs::write(
        &asserts,
        "-- the ledger has rows\nSELECT count(*) = 1000 FROM ledger;\n-- no negative amounts\nSELECT NOT EXISTS (SELECT 1 FROM ledger WHERE amount < 0);\n",
    )
    .unwrap();
    let dumps = s.env.path("dumps");
    let parent = scratch_parent(&s.env);
    let out = s
        .pgkeep(["verify", id.as_str(), "--json", "--assert"])
        .arg(&asserts)
        .arg("--dump")
        .arg(&dumps)
        .in_scratch(&parent)
        .fails();
    assert_eq!(out.code, Some(1));
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    let a = check(&r, "assertions");
    assert_eq!(a["status"], "failed");
    assert!(a["errors"][0].as_str().unwrap().contains("no negative amounts"), "{a:#}");
    assert!(a["errors"][0].as_str().unwrap().contains("returned false"), "{a:#}");
    assert!(r["summary"].as_str().unwrap().contains("assertions"), "{}", r["summary"]);
    assert_eq!(r["assertions"][0]["ok"], true);
    assert_eq!(r["assertions"][1]["ok"], false);
    // Every other check passed: only the assertion failed.
    for c in r["checks"].as_array().unwrap() {
        if c["name"] != "assertions" {
            assert_eq!(c["status"], "passed", "{c:#}");
        }
    }
    // The dumps: one per database (template0 aside) plus the globals, readable by pg_restore.
    let files: Vec<String> =
        r["dumps"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap().to_string()).collect();
    assert!(files.iter().any(|f| f.ends_with("postgres.dump")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("template1.dump")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("globals.sql")), "{files:?}");
    for f in files.iter().filter(|f| f.ends_with(".dump")) {
        let o = std::process::Command::new(s.env.bin.tool("pg_restore")).arg("--list").arg(f).output().unwrap();
        assert!(o.status.success(), "pg_restore --list {f}: {}", String::from_utf8_lossy(&o.stderr));
        if f.ends_with("postgres.dump") {
            let toc = String::from_utf8_lossy(&o.stdout);
            assert!(toc.contains("TABLE public ledger"), "{toc}");
            // The drill's own amcheck schema is not in the dump.
            assert!(!toc.contains("pgkeep_verify"), "{toc}");
        }
    }
    let globals = std::fs::read_to_string(dumps.join("globals.sql")).unwrap();
    assert!(globals.contains("CREATE ROLE"), "{globals}");
    assert_nothing_left(&parent);
    let listed = s.pgkeep(["list"]).json();
    assert_eq!(listed[0]["verified"], false, "{listed:#}");
    assert!(s.pgkeep(["list"]).ok().stdout.lines().nth(1).unwrap().trim_end().ends_with("FAILED"));

    // --target-time: recover past the backup to a moment after more commits.
    s.pg.sql("INSERT INTO ledger SELECT g, 1 FROM generate_series(1001, 1500) g");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let t = s.pg.scalar("SELECT now()::text");
    s.pg.sql("INSERT INTO ledger SELECT g, 1 FROM generate_series(1501, 1600) g");
    s.pg.switch_and_wait_archived(&s.repo);
    let when = s.env.path("when.sql");
    std::fs::write(&when, "SELECT count(*) = 1500 FROM ledger;\n").unwrap();
    let r =
        s.pgkeep(["verify", "latest", "--target-time", t.as_str(), "--assert"]).arg(&when).in_scratch(&parent).json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert!(r["source"]["target"].as_str().unwrap().starts_with("time"), "{r:#}");
    assert_nothing_left(&parent);

    // backup --verify: the drill right after the backup; its verdict is listed.
    let b = s.pgkeep(["backup", "--verify"]).env("TMPDIR", &parent).json();
    assert_eq!(b["verify"]["ok"], true, "{b:#}");
    let listed = s.pgkeep(["list"]).json();
    let last = listed.as_array().unwrap().last().unwrap();
    assert_eq!(last["id"], b["id"]);
    assert_eq!(last["verified"], true);
    assert_nothing_left(&parent);
}

/// Acceptance 6: nothing is left behind when the drill is interrupted with SIGINT (as a
/// terminal's Ctrl-C does it: to pgkeep's whole process group) in the middle of its checks.
#[test]
fn verify_interrupted_with_sigint_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let s = Setup::new();
    s.pg.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g");
    s.backup();
    let slow = s.env.path("slow.sql");
    std::fs::write(&slow, "SELECT pg_sleep(120) IS NOT NULL;\n").unwrap();
    let parent = scratch_parent(&s.env);
    let mut cmd = s.pgkeep(["verify", "latest", "--assert"]).arg(&slow).in_scratch(&parent);
    let mut child = cmd.command().process_group(0).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let l = lines.next().expect("verify ended before its assertions").unwrap();
        seen.push(l.clone());
        if l.contains("assertions") {
            break;
        }
    }
    // The server is up and the assertion is sleeping in it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let scratch: Vec<_> = std::fs::read_dir(&parent).unwrap().flatten().collect();
    assert_eq!(scratch.len(), 1, "one scratch directory while the drill runs");
    assert!(!pgkeep::verify::processes_in(&parent).is_empty(), "the drill's server should be running");
    let pgid = child.id() as i32;
    // SAFETY: signalling the process group of our own child.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the interrupted drill took too long to stop");
    assert_eq!(status.code(), Some(130), "stderr: {seen:?} {rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted") && l.starts_with("pgkeep: error:")), "{rest:?}");
    assert_nothing_left(&parent);
    // No verdict for an interrupted drill.
    let listed = s.pgkeep(["list"]).json();
    assert!(listed[0]["verified"].is_null(), "{listed:#}");
}
