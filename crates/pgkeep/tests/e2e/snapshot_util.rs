//! Shared set-up for the snapshot tests: a cluster whose PGDATA, pg_wal and tablespace live
//! where the test puts them (subvolumes, loop-mounted images, plain directories), a
//! repository, a config file, and the checks a restored copy must pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pgkeep_testkit::{cluster_at, ClusterOptions, Load, Mounts, PgkeepCmd, TestCluster, TestEnv};

use crate::common::cluster_cmd;

/// Field order is drop order: the cluster stops, then the file systems are unmounted, then
/// the test directory goes.
pub struct SnapSetup {
    pub pg: TestCluster,
    #[allow(dead_code)] // held for its Drop: unmounted after the cluster stopped
    pub mounts: Option<Mounts>,
    pub repo: PathBuf,
    pub config: PathBuf,
    pub env: TestEnv,
}

impl SnapSetup {
    /// A running cluster at `pgdata` (pg_wal linked to `waldir` when given), archiving into a
    /// fresh repository; `pgkeep init` done. `mounts` holds the file systems these live on.
    pub fn new(env: TestEnv, mounts: Option<Mounts>, pgdata: &Path, waldir: Option<&Path>) -> SnapSetup {
        let repo = env.path("repo");
        let mut pg = cluster_at(&env, "src", pgdata, waldir, ClusterOptions::archiving_to(&repo));
        pg.start();
        let config = env.path("pgkeep.toml");
        std::fs::write(&config, "").expect("write config");
        let s = SnapSetup { pg, mounts, repo, config, env };
        s.pgkeep(["init"]).ok();
        s
    }

    /// Replace the config file.
    pub fn configure(&self, toml: &str) {
        std::fs::write(&self.config, toml).expect("write config");
    }

    pub fn pgkeep<I, S>(&self, args: I) -> PgkeepCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cluster_cmd(&self.env, &self.repo, &self.pg).arg("--config").arg(&self.config);
        for a in args {
            c = c.arg(a);
        }
        c
    }

    /// A tablespace at `dir` (created, owned by the server user); returns its oid.
    pub fn tablespace(&self, name: &str, dir: &Path) -> i64 {
        std::fs::create_dir_all(dir).expect("mkdir tablespace");
        pgkeep::fsutil::set_mode(dir, 0o700).expect("chmod");
        self.env.chown(dir);
        self.pg.sql(&format!("CREATE TABLESPACE {name} LOCATION '{}'", dir.display()));
        self.pg.int(&format!("SELECT oid FROM pg_tablespace WHERE spcname = '{name}'"))
    }

    /// The table the load writes into, placed in `tablespace` (with its primary key).
    pub fn events_table(&self, tablespace: Option<&str>) {
        let ts = tablespace.map(|t| format!(" TABLESPACE {t}")).unwrap_or_default();
        let ix = tablespace.map(|t| format!(" USING INDEX TABLESPACE {t}")).unwrap_or_default();
        self.pg.sql(&format!(
            "CREATE TABLE events (id bigserial PRIMARY KEY{ix}, payload text NOT NULL, created timestamptz NOT NULL DEFAULT clock_timestamp()){ts};
             CREATE INDEX events_payload ON events (payload){ts};"
        ));
    }

    /// A restored data directory started as its own cluster (archiving off), promoted.
    pub fn start_restored(&self, name: &str, pgdata: &Path) -> TestCluster {
        let mut c = self.env.cluster_on(name, pgdata);
        c.set("archive_mode", "off");
        c.start();
        c.wait_promoted();
        c
    }
}

/// amcheck over a cluster: `bt_index_check(…, true)` on every btree index and `verify_heapam`
/// on every table; returns the problems found (empty: clean).
pub fn amcheck(c: &TestCluster) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = c.try_sql("CREATE EXTENSION IF NOT EXISTS amcheck") {
        return vec![format!("CREATE EXTENSION amcheck: {e}")];
    }
    // A damaged copy can make statements wait forever (a tuple locked by a transaction "from
    // the future"): every check is bounded.
    let btree = r#"SET statement_timeout = '120s'; DO $$ DECLARE r record; errs text := ''; n int := 0; BEGIN
        FOR r IN SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence = 'p' LOOP
            n := n + 1;
            BEGIN PERFORM bt_index_check(r.oid, true);
            EXCEPTION WHEN OTHERS THEN errs := errs || r.relname || ': ' || SQLERRM || '; ';
            END;
        END LOOP;
        IF n < 10 THEN RAISE EXCEPTION 'only % btree indexes found', n; END IF;
        IF errs <> '' THEN RAISE EXCEPTION 'bt_index_check: %', errs; END IF; END $$"#;
    if let Err(e) = c.try_sql(btree) {
        problems.push(e);
    }
    let heap = r#"SET statement_timeout = '120s'; DO $$ DECLARE msg text; BEGIN
        SELECT string_agg(c.relname || ' blk ' || v.blkno || ': ' || v.msg, '; ') INTO msg
          FROM (SELECT c.oid, c.relname FROM pg_class c WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p') c,
               LATERAL verify_heapam(c.oid) v;
        IF msg IS NOT NULL THEN RAISE EXCEPTION 'verify_heapam: %', left(msg, 2000); END IF; END $$"#;
    if let Err(e) = c.try_sql(heap) {
        problems.push(e);
    }
    problems
}

/// Duplicate values of `events.id` seen by a sequential scan (heap, not the index).
pub fn duplicate_keys(c: &TestCluster) -> Result<i64, String> {
    try_int(
        c,
        "SET statement_timeout = '60s'; SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off; \
         SELECT count(*) FROM (SELECT id FROM events GROUP BY id HAVING count(*) > 1) x",
    )
}

/// A query's integer result, or its error (for copies that may be damaged).
pub fn try_int(c: &TestCluster, sql: &str) -> Result<i64, String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.column(sql)));
    match r {
        Ok(v) => v.last().and_then(|s| s.parse().ok()).ok_or_else(|| format!("{sql}: no integer result")),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "query failed".into())),
    }
}

/// Rows of `events` in the restored copy versus what the load committed: (missing, extra).
pub fn compare_rows(c: &TestCluster, expected: &BTreeSet<i64>) -> (Vec<i64>, Vec<i64>) {
    let got: BTreeSet<i64> = c.column("SELECT id FROM events").iter().filter_map(|s| s.parse().ok()).collect();
    let missing = expected.difference(&got).copied().collect();
    let extra = got.difference(expected).copied().collect();
    (missing, extra)
}

/// The full check of a restored copy taken the pgkeep way: panics with everything found.
pub fn assert_clean_restore(c: &TestCluster, log: &[pgkeep_testkit::Committed]) {
    let problems = amcheck(c);
    assert!(problems.is_empty(), "amcheck on the restored copy: {problems:?}");
    assert_eq!(duplicate_keys(c).expect("duplicate check"), 0, "duplicate keys in the restored copy");
    let expected = Load::live_ids(log, log.len() as u64);
    let (missing, extra) = compare_rows(c, &expected);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "restored rows differ from the committed ones: {} missing (first {:?}), {} extra (first {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
}

/// The `.backup` history file pg_backup_stop wrote for `backup_id`, if any (proof that
/// pg_backup_stop ran for it).
pub fn backup_history_label(waldir: &Path, backup_id: &str) -> Option<String> {
    for e in std::fs::read_dir(waldir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".backup") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains(&format!("LABEL: pgkeep backup {backup_id}")) {
                return Some(text);
            }
        }
    }
    None
}

/// The backup id named in a "snapshot backup ID failed" error line.
pub fn failed_backup_id(line: &str) -> String {
    line.split("snapshot backup ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {line}"))
        .to_string()
}

/// Sessions of pgkeep still connected (an aborted backup must leave none).
pub fn pgkeep_sessions(c: &TestCluster) -> i64 {
    c.int("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgkeep' AND pid <> pg_backend_pid()")
}

/// Ids and states from `pgkeep list --json`.
pub fn listed(s: &SnapSetup) -> Vec<(String, String)> {
    let list = s.pgkeep(["list"]).json();
    list.as_array()
        .expect("list array")
        .iter()
        .map(|b| (b["id"].as_str().unwrap_or("").to_string(), b["state"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// Root: PGDATA and pg_wal on two 256 MB ext4 images stored on a loop-mounted reflink XFS of
/// `outer_mb`, configured as reflink volumes `data` and `wal`. Returns the set-up and the XFS
/// mount point (where the images and their snapshots live).
pub fn reflink_images_setup(env: TestEnv, outer_mb: u64) -> (SnapSetup, PathBuf) {
    let mounts = Mounts::new(&env);
    let outer = mounts.loop_fs(&env.path("xfs.img"), &env.path("xfs"), "xfs-reflink", outer_mb);
    let data_img = outer.join("data.img");
    let wal_img = outer.join("wal.img");
    let data = mounts.loop_fs(&data_img, &env.path("data"), "ext4", 256);
    let wal = mounts.loop_fs(&wal_img, &env.path("wal"), "ext4", 256);
    for d in [&data, &wal] {
        pgkeep::fsutil::set_mode(d, 0o755).unwrap();
    }
    let s = SnapSetup::new(env, Some(mounts), &data.join("pgdata"), Some(&wal.join("pg_wal")));
    s.configure(&format!(
        "[[volume]]\nname = \"data\"\ndriver = \"reflink\"\npath = \"{}\"\n\n[[volume]]\nname = \"wal\"\ndriver = \"reflink\"\npath = \"{}\"\n",
        data_img.display(),
        wal_img.display()
    ));
    (s, outer)
}
