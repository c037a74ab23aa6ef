//! Tablespaces outside PGDATA (acceptance 2).

use crate::common::Setup;

#[test]
fn tablespace_outside_pgdata_is_restored_with_tablespace_map() {
    let s = Setup::new();
    let ts = s.env.owned_dir("ts_original");
    s.pg.sql(&format!("CREATE TABLESPACE ts1 LOCATION '{}'", ts.display()));
    s.pg.sql(
        "CREATE TABLE t_ts (id int PRIMARY KEY, v text) TABLESPACE ts1;
         INSERT INTO t_ts SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
         CREATE INDEX t_ts_v ON t_ts (v) TABLESPACE ts1;",
    );
    let oid = s.pg.int("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let b = s.pgkeep(["backup"]).json();
    assert_eq!(b["tablespaces"][0]["oid"], oid);
    assert_eq!(b["tablespaces"][0]["location"], ts.display().to_string());
    s.pg.sql("INSERT INTO t_ts SELECT g, 'after backup' FROM generate_series(20001, 20100) g");
    s.pg.switch_and_wait_archived(&s.repo);

    // Without a map the original location is the target; it is in use, so restore refuses
    // before writing anything.
    let d1 = s.env.path("refused");
    let out = s.pgkeep(["restore", "--to"]).arg(&d1).fails();
    let line = out.one_error_line();
    assert!(line.contains(&format!("tablespace {oid}")) && line.contains(&ts.display().to_string()), "{line}");
    assert!(!d1.exists(), "a refused restore must not create the target");

    let d2 = s.env.path("restored");
    let new_ts = s.env.path("ts_restored");
    let r = s.restore(&d2, &["--tablespace-map", &format!("{oid}={}", new_ts.display()), "--target-action", "promote"]);
    assert_eq!(r["tablespaces"][0]["path"], new_ts.display().to_string());
    // Restored files belong to whoever ran restore (root here); hand them to the server's user.
    s.env.chown(&new_ts);
    let restored = s.start_restored("restored", &d2);
    restored.wait_promoted();
    assert_eq!(restored.int("SELECT count(*) FROM t_ts"), 20100);
    assert_eq!(restored.int("SELECT count(*) FROM t_ts WHERE v = repeat('x', 100)"), 20000);
    assert_eq!(restored.scalar(&format!("SELECT pg_tablespace_location({oid})")), new_ts.display().to_string());
    let link = std::fs::read_link(d2.join(format!("pg_tblspc/{oid}"))).expect("tablespace link");
    assert_eq!(link, new_ts);
    // The relation files really live in the mapped directory.
    let rel = restored.scalar("SELECT pg_relation_filepath('t_ts')");
    let (_, tail) = rel.split_once(&format!("pg_tblspc/{oid}/")).expect("path in tablespace");
    assert!(new_ts.join(tail).exists(), "{} missing", new_ts.join(tail).display());
}
