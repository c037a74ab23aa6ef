//! Point-in-time recovery under write load (acceptance 1).

use pgkeep_testkit::Load;

use crate::common::Setup;

/// A backup taken while pgbench (scale `scale`) and single-row inserts into `events` run, and a
/// target time between two committed rows.
pub(crate) struct BackupUnderLoad {
    pub backup_id: String,
    pub target: String,
    /// `events` ids committed at or before `target`, from the source's commit timestamps.
    pub before: Vec<String>,
}

/// Needs `track_commit_timestamp = on`: the rows before the target are the source's own
/// record of what committed when.
pub(crate) fn backup_under_load(s: &Setup, scale: &str, min_rows: usize) -> BackupUnderLoad {
    s.pg.pgbench(&["-i", "-s", scale, "-q"]);
    let load = Load::inserts(&s.pg, &s.env.rt, "events");
    load.wait_for(min_rows / 3);
    let mut bench = s.pg.tool("pgbench").args(["-n", "-c", "2", "-T", "4", "postgres"]).spawn().expect("pgbench");
    let backup_id = s.backup();
    load.wait_for(load.committed() + min_rows);
    let target = s.pg.scalar("SELECT clock_timestamp()");
    load.wait_for(load.committed() + min_rows);
    assert!(bench.wait().expect("pgbench").success());
    let log = load.stop();
    s.pg.switch_and_wait_archived(&s.repo);

    let before =
        s.pg.column(&format!("SELECT id FROM events WHERE pg_xact_commit_timestamp(xmin) <= '{target}' ORDER BY id"));
    let after = s.pg.int(&format!("SELECT count(*) FROM events WHERE pg_xact_commit_timestamp(xmin) > '{target}'"));
    assert!(
        before.len() >= min_rows && after as usize >= min_rows,
        "the target must fall between commits: {} before, {after} after",
        before.len()
    );
    assert_eq!(before.len() + after as usize, log.len());
    BackupUnderLoad { backup_id, target, before }
}

/// Backup taken while pgbench and single-row inserts run; restore to a time between two
/// commits: every row committed at or before the target is there, none after.
#[test]
fn pitr_to_a_time_between_two_commits_under_write_load() {
    let s = Setup::with(|o| o.with("track_commit_timestamp", "on"));
    let BackupUnderLoad { backup_id, target, before } = backup_under_load(&s, "2", 300);

    let dir = s.env.path("restored");
    let r = s.restore(&dir, &["--target-time", &target, "--target-action", "promote"]);
    assert_eq!(r["backup"], backup_id.as_str());
    let restored = s.start_restored("restored", &dir);
    restored.wait_promoted();
    let got = restored.column("SELECT id FROM events ORDER BY id");
    assert_eq!(got.len(), before.len(), "rows committed up to the target");
    assert_eq!(got, before, "exactly the rows committed at or before {target}");
    assert_eq!(restored.scalar("SELECT count(*) FROM pgbench_accounts"), "200000");
}

/// With no target, recovery replays the whole archive: the copy equals the source.
#[test]
fn restore_without_target_reaches_the_end_of_the_archive() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let mut bench = s.pg.tool("pgbench").args(["-n", "-c", "2", "-T", "4", "postgres"]).spawn().expect("pgbench");
    s.backup();
    assert!(bench.wait().expect("pgbench").success());
    // More committed work after the backup, spread over several segments.
    s.pg.pgbench(&["-n", "-c", "1", "-t", "500"]);
    s.pg.switch_and_wait_archived(&s.repo);
    s.pg.pgbench(&["-n", "-c", "1", "-t", "300"]);
    s.pg.switch_and_wait_archived(&s.repo);
    let q_sum = "SELECT sum(abalance)::text FROM pgbench_accounts";
    let q_hist = "SELECT count(*) FROM pgbench_history";
    let (src_sum, src_hist) = (s.pg.scalar(q_sum), s.pg.int(q_hist));
    assert!(src_hist > 800);

    let dir = s.env.path("restored");
    s.restore(&dir, &[]);
    let restored = s.start_restored("restored", &dir);
    restored.wait_promoted();
    assert_eq!(restored.scalar(q_sum), src_sum);
    assert_eq!(restored.int(q_hist), src_hist);
    assert_eq!(restored.int("SELECT count(*) FROM pgbench_accounts"), 200000);
}

/// Restore to a named restore point and to an LSN; both stop exactly there.
#[test]
fn pitr_to_restore_point_and_lsn() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE marks (name text PRIMARY KEY)");
    s.backup();
    s.pg.sql("INSERT INTO marks VALUES ('a')");
    s.pg.sql("SELECT pg_create_restore_point('after_a')");
    s.pg.sql("INSERT INTO marks VALUES ('b')");
    let lsn = s.pg.scalar("SELECT pg_current_wal_insert_lsn()");
    s.pg.sql("INSERT INTO marks VALUES ('c')");
    s.pg.switch_and_wait_archived(&s.repo);

    let d1 = s.env.path("by_name");
    s.restore(&d1, &["--target-name", "after_a", "--target-action", "promote"]);
    let r1 = s.start_restored("by_name", &d1);
    r1.wait_promoted();
    assert_eq!(r1.column("SELECT name FROM marks ORDER BY 1"), vec!["a"]);

    let d2 = s.env.path("by_lsn");
    s.restore(&d2, &["--target-lsn", &lsn, "--target-action", "promote"]);
    let r2 = s.start_restored("by_lsn", &d2);
    r2.wait_promoted();
    assert_eq!(r2.column("SELECT name FROM marks ORDER BY 1"), vec!["a", "b"]);
}
