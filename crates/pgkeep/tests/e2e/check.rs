//! `pgkeep check`.

use pgkeep_testkit::ClusterOptions;

use crate::common::{env, Setup};

#[test]
fn check_passes_on_a_correctly_configured_cluster() {
    let s = Setup::new();
    let out = s.pgkeep(["check"]).ok();
    assert!(out.stdout.contains("archive round trip"), "{}", out.stdout);
    assert!(!out.stdout.contains("FAILED"), "{}", out.stdout);
}

#[test]
fn check_names_each_wrong_setting_with_what_to_change() {
    let env = env();
    let repo = env.path("repo");
    let mut pg = env.cluster("src", ClusterOptions::default());
    pg.start();
    env.pgkeep(["init", "--repo"]).arg(&repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata()).ok();
    let out = env.pgkeep(["check", "--archive-timeout", "2", "--repo"]).arg(&repo).arg("--pg").arg(pg.conninfo()).run();
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let failed: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("FAILED")).collect();
    assert!(failed.iter().any(|l| l.contains("archive_mode") && l.contains("set archive_mode = on")), "{}", out.stdout);
    assert!(failed.iter().any(|l| l.contains("archive_command") && l.contains("archive-push %p")), "{}", out.stdout);
    assert!(failed.iter().all(|l| l.contains("change:")), "{}", out.stdout);
}

#[test]
fn backup_refuses_when_archiving_is_off() {
    let env = env();
    let repo = env.path("repo");
    let mut pg = env.cluster("src", ClusterOptions::default());
    pg.start();
    env.pgkeep(["init", "--repo"]).arg(&repo).arg("--pg").arg(pg.conninfo()).ok();
    let out = env.pgkeep(["backup", "--repo"]).arg(&repo).arg("--pg").arg(pg.conninfo()).fails();
    assert!(out.one_error_line().contains("archive_mode = on"), "{}", out.stderr);
}

#[test]
fn unreachable_server_is_one_clear_line() {
    let env = env();
    let out = env
        .pgkeep(["backup", "--repo"])
        .arg(env.path("repo"))
        .arg("--pg")
        .arg(format!("host={} port=1", env.root().display()))
        .fails();
    let line = out.one_error_line();
    assert!(line.contains("not initialized") || line.contains("cannot connect"), "{line}");
    let out = env
        .pgkeep(["check", "--repo"])
        .arg(env.path("repo"))
        .arg("--pg")
        .arg(format!("host={} port=1", env.root().display()))
        .run();
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("FAILED  connection"), "{}", out.stdout);
}

#[test]
fn wrong_flag_is_a_usage_error() {
    let env = env();
    let out = env.pgkeep(["restore", "--to", "/tmp/x", "--target-time", "2026-01-01", "--target-lsn", "0/1"]).run();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let out = env.pgkeep(["backup", "--no-such-flag"]).run();
    assert_eq!(out.code, Some(2));
}
