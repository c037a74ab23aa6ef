//! Block-level incremental backups (issue 12, acceptance 1 and 2): `backup --type incr|diff`
//! with changed blocks from the archived WAL, chains restored file by file, PITR inside a chain,
//! and the fall-back to whole files when the WAL has a gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pgkeep_testkit::TestCluster;

use crate::common::Setup;
use crate::snapshot_util::amcheck;

/// psql's unaligned output of `sql` in database `db`.
fn psql(c: &TestCluster, db: &str, sql: &str) -> String {
    let out = c.tool("psql").args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]).output().expect("psql");
    assert!(out.status.success(), "{sql} in {db}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every permanent table of every database but the templates: row count and a hash over all
/// columns of every row ("equals the source").
fn fingerprint(c: &TestCluster) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for db in c.column("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1") {
        let tables = psql(
            c,
            &db,
            "SELECT string_agg(quote_ident(relname), ' ' ORDER BY relname) FROM pg_class \
             WHERE relkind = 'r' AND relpersistence = 'p' AND relnamespace = 'public'::regnamespace",
        );
        for t in tables.split_whitespace() {
            let v = psql(
                c,
                &db,
                &format!("SELECT count(*) || ' rows, hash ' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM {t} x"),
            );
            out.insert(format!("{db}.{t}"), v);
        }
    }
    out
}

/// Tables of every kind the WAL walk must get right, created before the full backup.
fn schema(s: &Setup, ts: &Path) {
    s.pg.sql(&format!("CREATE TABLESPACE ts1 LOCATION '{}'", ts.display()));
    s.pg.sql(
        "CREATE TABLE t_drop AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE TABLE t_trunc (id int PRIMARY KEY, v text);
         INSERT INTO t_trunc SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE TABLE t_move (id int PRIMARY KEY, v text);
         INSERT INTO t_move SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE TABLE t_vac (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
         INSERT INTO t_vac SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g;
         CREATE UNLOGGED TABLE t_unlogged (id int PRIMARY KEY, v text);
         INSERT INTO t_unlogged SELECT g, 'u' FROM generate_series(1, 1000) g;
         CREATE TABLE marker (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());",
    );
    for db in ["tmpl", "moved"] {
        s.pg.sql(&format!("CREATE DATABASE {db}"));
        psql(&s.pg, db, "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g");
    }
}

/// One round of changes of every kind (`round` makes the names unique).
fn changes(s: &Setup, round: u32) {
    changes_spread(s, round, 100);
}

/// `changes`, updating the rows of one block in `every` of pgbench_accounts (61 rows a block).
fn changes_spread(s: &Setup, round: u32, every: u32) {
    let pg = &s.pg;
    // Spread over the table; and the other pgbench tables.
    pg.sql(&format!("UPDATE pgbench_accounts SET abalance = abalance + {round} WHERE (aid / 61) % {every} = {round}"));
    pg.sql(&format!("UPDATE pgbench_branches SET bbalance = bbalance + {round}"));
    pg.pgbench(&["-n", "-c", "1", "-t", "200"]);
    pg.sql(&format!("CREATE TABLE t_new_{round} AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g"));
    pg.sql(&format!(
        "INSERT INTO t_unlogged SELECT g, 'r{round}' FROM generate_series({round} * 10000, {round} * 10000 + 50) g"
    ));
    match round {
        1 => {
            pg.sql("DROP TABLE t_drop");
            pg.sql("TRUNCATE t_trunc; INSERT INTO t_trunc SELECT g, 'after truncate' FROM generate_series(1, 100) g");
            // Vacuum cuts the heap's empty tail (an smgr truncate record).
            pg.sql("DELETE FROM t_vac WHERE id > 5000");
            pg.sql("VACUUM t_vac");
        }
        2 => {
            // 14 copies files for every CREATE DATABASE; 15+ only with this strategy.
            let major = pg.int("SELECT current_setting('server_version_num')::int / 10000");
            let strategy = if major >= 15 { " STRATEGY FILE_COPY" } else { "" };
            psql(pg, "postgres", &format!("CREATE DATABASE copied TEMPLATE tmpl{strategy}"));
            pg.sql("ALTER TABLE t_move SET TABLESPACE ts1");
        }
        3 => {
            psql(pg, "postgres", "ALTER DATABASE moved SET TABLESPACE ts1");
            psql(pg, "copied", "UPDATE items SET v = 'changed' WHERE id % 10 = 0");
        }
        _ => {
            // Cut to nothing, then extended again: blocks past the cut must not come back
            // from an older backup.
            pg.sql("DELETE FROM t_vac");
            pg.sql("VACUUM t_vac");
            pg.sql(&format!("INSERT INTO t_vac SELECT g, 'round {round}' FROM generate_series(1, 2000) g"));
        }
    }
}

fn backup(s: &Setup, kind: &str) -> serde_json::Value {
    let r = s.pgkeep(["backup", "--type", kind]).json();
    assert_eq!(r["type"], kind, "{r:#}");
    r
}

/// The restored copy equals the source's `expected` fingerprint, is amcheck-clean and has the
/// unlogged table empty (init fork only).
fn assert_equals_source(restored: &TestCluster, expected: &BTreeMap<String, String>) {
    let got = fingerprint(restored);
    assert_eq!(&got, expected, "the restored copy differs from the source");
    assert_eq!(amcheck(restored), Vec::<String>::new());
    assert_eq!(restored.int("SELECT count(*) FROM t_unlogged"), 0);
}

/// Insert marker `n` and return the commit time after it.
fn marker(s: &Setup, n: i32) -> String {
    s.pg.sql(&format!("INSERT INTO marker (n) VALUES ({n})"));
    s.pg.scalar("SELECT clock_timestamp()")
}

/// full → incr → incr → diff → incr, every kind of change between them; the last restores to
/// the end of the archive and to a marker between two changes, equal to the source each time;
/// a restore drill passes on a backup in the middle of the chain.
#[test]
fn incremental_chain_restores_to_the_end_and_to_a_marker() {
    let s = Setup::with(|o| o.with("track_commit_timestamp", "on"));
    let ts = s.env.owned_dir("ts1");
    s.pg.pgbench(&["-i", "-s", "3", "-q"]);
    schema(&s, &ts);
    let full = backup(&s, "full");
    let full_id = full["id"].as_str().unwrap().to_string();
    assert_eq!(full["bytes_read"].as_u64(), full["size"].as_u64(), "{full:#}");

    changes(&s, 1);
    let i1 = backup(&s, "incr");
    assert_eq!(i1["reference"], full_id.as_str(), "{i1:#}");
    assert_eq!(i1["incremental_by"], "wal");
    // Only changed blocks of the relations: far less than the database was read.
    let (read, size) = (i1["bytes_read"].as_u64().unwrap(), i1["size"].as_u64().unwrap());
    assert!(read * 3 < size, "an incremental read {read} of {size} bytes: {i1:#}");
    let reasons = &i1["whole_file_reasons"];
    assert!(reasons["not in reference"].as_u64().unwrap() >= 1, "{i1:#}");
    assert!(reasons.get("wal gap").is_none(), "{i1:#}");
    let m1 = crate::common::read_manifest(&s.repo, i1["id"].as_str().unwrap());
    assert_eq!(m1["kind"], "incr");
    assert_eq!(m1["chain"], serde_json::json!([full_id]));
    let with_blocks = m1["entries"].as_array().unwrap().iter().filter(|e| e.get("blocks").is_some()).count();
    assert!(with_blocks > 10, "relation files stored as changed blocks: {with_blocks}");

    changes(&s, 2);
    let i2 = backup(&s, "incr");
    assert_eq!(i2["reference"], i1["id"]);
    let reasons = &i2["whole_file_reasons"];
    assert!(
        reasons["database copied at file level"].as_u64().unwrap_or(0) + reasons["not in reference"].as_u64().unwrap()
            > 5,
        "{i2:#}"
    );

    changes(&s, 3);
    let d = backup(&s, "diff");
    assert_eq!(d["reference"], full_id.as_str(), "a diff refers to the full: {d:#}");

    changes(&s, 4);
    let i3 = backup(&s, "incr");
    assert_eq!(i3["reference"], d["id"]);
    let m3 = crate::common::read_manifest(&s.repo, i3["id"].as_str().unwrap());
    assert_eq!(m3["chain"], serde_json::json!([full_id, d["id"]]));

    // A marker, the target after it, then one more change and a final marker.
    marker(&s, 1);
    let target = marker(&s, 2);
    let at_target = fingerprint(&s.pg);
    changes(&s, 5);
    marker(&s, 3);
    let at_end = fingerprint(&s.pg);
    s.pg.switch_and_wait_archived(&s.repo);

    let listed = s.pgkeep(["list"]).json();
    let kinds: Vec<&str> = listed.as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds, ["full", "incr", "incr", "diff", "incr"], "{listed:#}");
    assert_eq!(listed[4]["reference"], d["id"]);

    let (r, restored) = restore_copy(&s, "end", &["--backup", i3["id"].as_str().unwrap()]);
    assert_eq!(r["backup"], i3["id"]);
    assert_equals_source(&restored, &at_end);
    assert_eq!(restored.column("SELECT n FROM marker ORDER BY n"), ["1", "2", "3"]);
    drop(restored);

    let (r, restored) = restore_copy(&s, "pitr", &["--target-time", &target]);
    assert_eq!(r["backup"], i3["id"], "the newest backup before the target is the last incremental");
    assert_equals_source(&restored, &at_target);
    assert_eq!(restored.column("SELECT n FROM marker ORDER BY n"), ["1", "2"]);
    drop(restored);

    // A restore drill on a backup in the middle of the chain.
    let v = s.pgkeep(["verify"]).arg(i2["id"].as_str().unwrap()).json();
    assert_eq!(v["ok"], true, "{v:#}");
}

/// Restore into `<name>` (tablespace ts1 into `ts_<name>`: the source still uses its own) with
/// `extra` arguments, promote and start it; the report and the running copy.
fn restore_copy(s: &Setup, name: &str, extra: &[&str]) -> (serde_json::Value, TestCluster) {
    let oid = s.pg.int("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let dir = s.env.path(name);
    let ts = s.env.path(&format!("ts_{name}"));
    let map = format!("{oid}={}", ts.display());
    let mut args = vec!["--target-action", "promote", "--tablespace-map", &map];
    args.extend(extra);
    let r = s.restore(&dir, &args);
    s.env.chown(&ts);
    (r, start_copy(s, name, &dir))
}

fn start_copy(s: &Setup, name: &str, dir: &Path) -> TestCluster {
    let restored = s.start_restored(name, dir);
    restored.wait_promoted();
    restored
}

/// The walk begins before pg_backup_start, on what is archived, and learns where to stop when
/// the checkpoint is done. With an archiver a second behind, the segments of the change are
/// not archived when the walk begins: it waits, then reads them from pg_wal. The incremental
/// vouches for every block (no whole-file fallback) and restores equal to the source, with no
/// write after the backup for replay to paper over a missed block.
#[test]
fn incremental_walk_overlaps_the_checkpoint_and_reads_unarchived_wal_from_pg_wal() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    backup(&s, "full");
    let slow = format!("sleep 1 && {}", s.env.archive_command(&s.repo));
    s.pg.sql(&format!("ALTER SYSTEM SET archive_command = '{}'", slow.replace('\'', "''")));
    s.pg.sql("SELECT pg_reload_conf()");
    // ≥ 2 segments of WAL (full-page images after the full's checkpoint), still .ready.
    s.pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 7");
    s.pg.sql("UPDATE pgbench_accounts SET filler = 'x' WHERE aid % 3 = 0");
    let pending = s.pg.int("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'");
    assert!(pending >= 1, "segments of the change wait for the archiver ({pending} .ready)");
    let expected = fingerprint(&s.pg);

    // A backup that fails before it learns its start (pg_backup_start refuses a label over
    // 1024 bytes) stops the walk waiting for the archive: it fails, it does not hang.
    let long = "x".repeat(2000);
    let failed = s.pgkeep(["backup", "--type", "incr", "--label", &long]).fails();
    let errors: Vec<&str> = failed.stderr.lines().filter(|l| l.starts_with("pgkeep: error:")).collect();
    assert!(errors.len() == 1 && errors[0].contains("label too long"), "{}", failed.stderr);

    let i = backup(&s, "incr");
    assert!(i.get("wal_walk_detail").is_none(), "the walk vouched for every block: {i:#}");
    assert!(i["whole_file_reasons"].get("wal gap").is_none(), "{i:#}");
    let (read, size) = (i["bytes_read"].as_u64().unwrap(), i["size"].as_u64().unwrap());
    assert!(read < size, "changed blocks only: read {read} of {size}");
    let phases: Vec<&str> = i["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(
        phases,
        ["prepare", "checkpoint", "list_files", "wal_walk", "copy", "stop", "confirm_wal", "manifest"],
        "{i:#}"
    );

    let dir = s.env.path("restored");
    s.restore(&dir, &["--backup", i["id"].as_str().unwrap(), "--target-action", "promote"]);
    let restored = start_copy(&s, "restored", &dir);
    assert_eq!(fingerprint(&restored), expected, "the restored copy differs from the source");
}

/// A WAL segment between the reference and the new backup deleted from a copy of the
/// repository: the incremental reads every relation file whole, says why, and restores equal
/// to the source.
#[test]
fn incremental_over_a_wal_gap_reads_files_whole_and_restores() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    backup(&s, "full");
    s.pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0");
    let gone = s.pg.switch_and_wait_archived(&s.repo);
    s.pg.pgbench(&["-n", "-c", "1", "-t", "300"]);
    s.pg.switch_and_wait_archived(&s.repo);

    // The copy, without that segment; the cluster archives into the copy from now on.
    let copy = s.env.path("repo-copy");
    let st = std::process::Command::new("cp").arg("-a").arg(&s.repo).arg(&copy).status().expect("cp");
    assert!(st.success());
    let key = copy.join(pgkeep::repo::layout::wal_key(&gone));
    std::fs::remove_file(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    s.pg.sql(&format!("ALTER SYSTEM SET archive_command = '{}'", s.env.archive_command(&copy).replace('\'', "''")));
    s.pg.sql("SELECT pg_reload_conf()");
    // The segment must be gone from pg_wal as well, or the walk would read it there.
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.pg.pgdata().join("pg_wal").join(&gone).exists() {
        assert!(Instant::now() < deadline, "{gone} stays in pg_wal");
        s.pg.switch_and_wait_archived(&copy);
        s.pg.sql("CHECKPOINT");
    }

    let cmd = || crate::common::cluster_cmd(&s.env, &copy, &s.pg);
    let r = cmd().arg("backup").arg("--type").arg("incr").json();
    assert_eq!(r["type"], "incr", "{r:#}");
    let whole = r["whole_file_reasons"]["wal gap"].as_u64().unwrap_or(0);
    assert!(whole > 10, "every relation file read whole for the gap: {r:#}");
    assert!(r["wal_walk_detail"].as_str().unwrap_or("").contains(&gone), "{r:#}");
    s.pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 70 = 0");
    let expected = fingerprint(&s.pg);
    s.pg.switch_and_wait_archived(&copy);

    let dir = s.env.path("restored");
    let out = cmd().arg("restore").arg("--target-action").arg("promote").arg("--to").arg(&dir).json();
    assert_eq!(out["backup"], r["id"]);
    let restored = start_copy(&s, "restored", &dir);
    assert_eq!(fingerprint(&restored), expected);
    assert_eq!(amcheck(&restored), Vec::<String>::new());
}

/// Retention treats a chain as a unit: `full = 1` keeps the newest backup, an incremental, and
/// the full it rests on; `expire --backup` refuses that full. `[backup] type = "incr"` makes
/// `backup` incremental without `--type`.
#[test]
fn retention_keeps_the_chain_of_a_kept_incremental() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let config = s.env.path("pgkeep.toml");
    std::fs::write(&config, "[retention]\nfull = 1\n\n[backup]\ntype = \"incr\"\n").unwrap();
    let with_config = |args: &[&str]| {
        let mut c = s.pgkeep(["--config"]).arg(&config);
        for a in args {
            c = c.arg(a);
        }
        c
    };
    let old = backup(&s, "full");
    let full = backup(&s, "full");
    s.pg.pgbench(&["-n", "-c", "1", "-t", "100"]);
    let incr = with_config(&["backup"]).json();
    assert_eq!((incr["type"].as_str(), &incr["reference"]), (Some("incr"), &full["id"]), "{incr:#}");

    let r = with_config(&["expire"]).json();
    let kept: Vec<(&str, &str)> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["kept_by"][0].as_str().unwrap()))
        .collect();
    assert_eq!(kept, [(full["id"].as_str().unwrap(), "chain"), (incr["id"].as_str().unwrap(), "full")], "{r:#}");
    let expired: Vec<&str> = r["backups"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(expired, [old["id"].as_str().unwrap()]);
    assert!(s.repo.join(format!("backup/{}/manifest", full["id"].as_str().unwrap())).exists());

    let out = s.pgkeep(["expire", "--backup"]).arg(full["id"].as_str().unwrap()).fails();
    let line = out.one_error_line();
    assert!(line.contains(incr["id"].as_str().unwrap()) && line.contains("hint:"), "{line}");
    assert!(s.repo.join(format!("backup/{}/manifest", full["id"].as_str().unwrap())).exists());
}

/// `--incremental-by checksum` (no WAL needed): every block read, those newer than the
/// reference's start kept; the restore equals the source after changes of every kind.
#[test]
fn checksum_incremental_restores_equal_to_the_source() {
    let s = Setup::new();
    let ts = s.env.owned_dir("ts1");
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    schema(&s, &ts);
    let full = backup(&s, "full");
    for round in 1..=4 {
        changes(&s, round);
    }
    let r = s.pgkeep(["backup", "--type", "incr", "--incremental-by", "checksum"]).json();
    assert_eq!((r["type"].as_str(), r["incremental_by"].as_str()), (Some("incr"), Some("checksum")), "{r:#}");
    assert_eq!(r["reference"], full["id"]);
    assert_eq!(r["bytes_read"], r["size"], "every block is read: {r:#}");
    let m = crate::common::read_manifest(&s.repo, r["id"].as_str().unwrap());
    let unchanged = m["entries"].as_array().unwrap().iter().filter(|e| e["blocks"] == serde_json::json!([])).count();
    assert!(unchanged > 10, "relation files with no block newer than the reference: {unchanged}");
    let accounts = m["entries"].as_array().unwrap().iter().filter(|e| e.get("blocks").is_some()).count();
    assert!(accounts > 100, "relation files stored as blocks: {accounts}");
    marker(&s, 1);
    let expected = fingerprint(&s.pg);
    s.pg.switch_and_wait_archived(&s.repo);

    let (_, restored) = restore_copy(&s, "restored", &[]);
    assert_equals_source(&restored, &expected);
}

/// wal_level = minimal skips WAL for relations created in the same transaction, which the
/// walk could not see: PostgreSQL refuses archiving with it, and so does `backup`.
#[test]
fn wal_level_minimal_is_refused_for_archiving_and_backups() {
    let env = crate::common::env();
    let repo = env.path("repo");
    let mut pg = env.cluster(
        "minimal",
        pgkeep_testkit::ClusterOptions::archiving_to(&repo).with("wal_level", "minimal").with("max_wal_senders", "0"),
    );
    let e = pg.try_start().expect_err("archive_mode = on with wal_level = minimal must not start");
    assert!(format!("{e}").contains("wal_level") || pg.log_tail(20).contains("wal_level"), "{e}");
    pg.set("archive_mode", "off");
    pg.start();
    env.pgkeep(["--repo"]).arg(&repo).arg("--pg").arg(pg.conninfo()).arg("init").ok();
    let out = crate::common::cluster_cmd(&env, &repo, &pg).arg("backup").arg("--type").arg("incr").fails();
    let line = out.one_error_line();
    assert!(line.contains("wal_level is minimal") && line.contains("hint:"), "{line}");
}

/// full → incr → diff on PostgreSQL 14 and 18 (the WAL formats and dbase records differ), every
/// kind of change between them, restored to the end equal to the source.
fn chain_on_major(major: u32) {
    let s = Setup::with(|o| o.major(major));
    let ts = s.env.owned_dir("ts1");
    s.pg.pgbench(&["-i", "-s", "1", "-q"]);
    schema(&s, &ts);
    let full = backup(&s, "full");
    changes(&s, 1);
    changes(&s, 2);
    let i = backup(&s, "incr");
    assert_eq!(i["reference"], full["id"]);
    assert!(i["whole_file_reasons"].get("undecodable record").is_none(), "{i:#}");
    changes(&s, 3);
    changes(&s, 4);
    let d = backup(&s, "diff");
    assert_eq!(d["reference"], full["id"]);
    assert!(d["bytes_read"].as_u64().unwrap() * 2 < d["size"].as_u64().unwrap(), "{d:#}");
    marker(&s, 1);
    let expected = fingerprint(&s.pg);
    s.pg.switch_and_wait_archived(&s.repo);

    let (r, restored) = restore_copy(&s, "restored", &[]);
    assert_eq!(r["backup"], d["id"]);
    assert_equals_source(&restored, &expected);
}

mod chain_on_major {
    #[test]
    fn pg14() {
        super::chain_on_major(14);
    }
    #[test]
    fn pg18() {
        super::chain_on_major(18);
    }
}

/// Acceptance 1 at size: a pgbench database of more than 2 GB, ≈ 1 % of its blocks changed
/// plus every kind of change, one incremental; restored to the end and to a marker between two
/// changes, equal to the source each time; the incremental read a small part of the database.
#[test]
fn incremental_of_a_2gb_database_restores_to_the_end_and_to_a_marker() {
    let s = Setup::with(|o| o.with("max_wal_size", "4GB").with("track_commit_timestamp", "on"));
    let ts = s.env.owned_dir("ts1");
    s.pg.pgbench(&["-i", "-s", "150", "-q"]);
    schema(&s, &ts);
    let db = s.pg.int("SELECT pg_database_size('postgres')") as u64;
    assert!(db > 2_000_000_000, "the database has {db} bytes");
    let full = backup(&s, "full");
    // One 61-row group in 1500 per round: with new row versions and index entries, ≈ 1 % of
    // the database's blocks over three rounds (the incr-backup benchmark counts them).
    for round in 1..=3 {
        changes_spread(&s, round, 1500);
    }
    let incr = backup(&s, "incr");
    assert_eq!(incr["reference"], full["id"]);
    let read = incr["bytes_read"].as_u64().unwrap();
    assert!(read * 10 < db, "the incremental read {read} of {db} bytes: {incr:#}");

    marker(&s, 1);
    let target = marker(&s, 2);
    let at_target = fingerprint(&s.pg);
    changes_spread(&s, 4, 1500);
    marker(&s, 3);
    let at_end = fingerprint(&s.pg);
    s.pg.switch_and_wait_archived(&s.repo);

    for (name, extra, expected, markers) in [
        ("end", &[][..], &at_end, &["1", "2", "3"][..]),
        ("pitr", &["--target-time", target.as_str()][..], &at_target, &["1", "2"][..]),
    ] {
        let (r, restored) = restore_copy(&s, name, extra);
        assert_eq!(r["backup"], incr["id"]);
        assert_equals_source(&restored, expected);
        assert_eq!(restored.column("SELECT n FROM marker ORDER BY n"), markers);
    }
}

/// Timelines: a copy restored from the full and promoted (timeline 2, archiving into the same
/// repository) takes an incremental of that full: the walk follows the switch through the
/// history file, reads changed blocks only and restores equal to the copy. Production, still on
/// timeline 1, then takes an incremental whose newest reference is the copy's (timeline 2 is
/// not its ancestor): every relation file is read whole, the report says why, and it restores
/// equal to production.
#[test]
fn incremental_across_timelines_follows_the_history_or_reads_whole() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let full = backup(&s, "full");

    let dir = s.env.path("copy");
    s.restore(&dir, &["--target", "immediate", "--target-action", "promote", "--archive-mode", "preserve"]);
    let mut copy = s.env.cluster_on("copy", &dir);
    copy.start();
    copy.wait_promoted();
    copy.pgbench(&["-n", "-c", "1", "-t", "200"]);
    copy.switch_and_wait_archived(&s.repo);
    let on_copy = |args: &[&str]| {
        let mut c = crate::common::cluster_cmd(&s.env, &s.repo, &copy);
        for a in args {
            c = c.arg(a);
        }
        c
    };
    let ci = on_copy(&["backup", "--type", "incr"]).json();
    assert_eq!((ci["timeline"].as_u64(), &ci["reference"]), (Some(2), &full["id"]), "{ci:#}");
    assert!(ci.get("wal_walk_detail").is_none(), "the walk follows timeline 2's history: {ci:#}");
    assert!(ci["bytes_read"].as_u64().unwrap() * 2 < ci["size"].as_u64().unwrap(), "{ci:#}");
    copy.pgbench(&["-n", "-c", "1", "-t", "50"]);
    let copy_state = fingerprint(&copy);
    copy.switch_and_wait_archived(&s.repo);
    copy.stop();

    s.pg.pgbench(&["-n", "-c", "1", "-t", "100"]);
    let pi = backup(&s, "incr");
    assert_eq!(pi["reference"], ci["id"], "{pi:#}");
    let reasons = &pi["whole_file_reasons"];
    assert!(reasons["timeline not descending from the reference"].as_u64().unwrap_or(0) > 10, "{pi:#}");
    let prod_state = fingerprint(&s.pg);
    s.pg.switch_and_wait_archived(&s.repo);

    let d = s.env.path("copy-restored");
    let r = s.restore(&d, &["--backup", ci["id"].as_str().unwrap(), "--target-action", "promote"]);
    assert_eq!(r["recovery_timeline"], 2, "{r}");
    assert_eq!(fingerprint(&start_copy(&s, "copy-restored", &d)), copy_state);

    let d = s.env.path("prod-restored");
    let r = s.restore(&d, &["--target-timeline", "current", "--target-action", "promote"]);
    assert_eq!(r["backup"], pi["id"]);
    assert_eq!(fingerprint(&start_copy(&s, "prod-restored", &d)), prod_state);
}
