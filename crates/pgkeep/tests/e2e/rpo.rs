//! `pgkeep rpo` on a running cluster (issue 3, acceptance 5): the fields are there, and they
//! move when checkpoints are forced, when archiving falls behind, and when backups appear.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Setup;

fn rpo(s: &Setup) -> Value {
    s.pgkeep(["rpo"]).json()
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} should be a number: {v:#}"))
}

/// Polls `rpo --json` until `cond` holds; `act` runs before each poll (to nudge the server).
fn poll(s: &Setup, what: &str, mut act: impl FnMut(), cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        act();
        let r = rpo(s);
        if cond(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: not reached; last report: {r:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rpo_fields_move_with_checkpoints_archive_lag_and_backups() {
    let s = Setup::with(|o| o.with("archive_timeout", "60").with("checkpoint_timeout", "300"));
    s.pg.switch_and_wait_archived(&s.repo);
    let r0 = rpo(&s);
    for k in ["seconds_between_checkpoints", "archive_lag_seconds", "worst_case_loss_seconds"] {
        assert!(r0.get(k).is_some(), "{k} missing: {r0:#}");
    }
    assert_eq!(r0["archive_timeout_seconds"], 60);
    let lag0 = num(&r0, "archive_lag_seconds");
    assert!(lag0 < 30.0, "just archived: {r0:#}");
    assert!(r0["newest_backup_age_seconds"].is_null());
    let local0 = num(&r0, "worst_case_loss_seconds_local_wal");
    let count0 = r0["checkpoints"]["count"].as_i64().unwrap();

    // Forced checkpoints: the mean interval and the local-WAL exposure shrink.
    for _ in 0..3 {
        s.pg.sql("CHECKPOINT");
    }
    let r1 = poll(&s, "checkpoint count", || {}, |r| r["checkpoints"]["count"].as_i64().unwrap() >= count0 + 3);
    let between1 = num(&r1, "seconds_between_checkpoints");
    if let Some(b0) = r0["seconds_between_checkpoints"].as_f64() {
        assert!(between1 < b0, "mean interval {b0} → {between1}");
    }
    assert!(r1["checkpoints"]["seconds_since_last_checkpoint"].as_f64().unwrap() < 30.0);
    let local1 = num(&r1, "worst_case_loss_seconds_local_wal");
    assert!(local1 < local0, "local-WAL worst case {local0} → {local1}");
    assert!(num(&r1, "worst_case_loss_seconds") <= local1);

    // Archiving fails: segments wait, the lag grows, the archive's worst case follows it.
    s.pg.sql("ALTER SYSTEM SET archive_command = 'false'");
    s.pg.sql("SELECT pg_reload_conf()");
    let failed0 = r1["archive"]["failed_count"].as_i64().unwrap();
    let mut n = 0;
    let r2 = poll(
        &s,
        "archiving failing",
        || {
            n += 1;
            s.pg.sql(&format!("CREATE TABLE lag{n} AS SELECT g FROM generate_series(1, 1000) g"));
            s.pg.switch_wal();
        },
        |r| r["archive"]["failed_count"].as_i64().unwrap() > failed0 && r["archive"]["failing"] == true,
    );
    let r3 = poll(
        &s,
        "archive lag growing",
        || {},
        |r| {
            r["archive_lag_seconds"].as_f64().is_some_and(|l| l > lag0 + 2.0)
                && r["archive"]["segments_waiting"].as_i64().unwrap_or(0) >= 1
        },
    );
    let lag3 = num(&r3, "archive_lag_seconds");
    assert!(num(&r3, "worst_case_loss_seconds_with_archive") >= lag3 - 0.001, "{r3:#}");
    assert!(
        r3["advice"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("archiving is failing")),
        "{r3:#}"
    );
    let text = s.pgkeep(["rpo"]).ok().stdout;
    assert!(text.contains("FAILING"), "{text}");
    let _ = r2;

    // Fixed: the backlog drains and the lag drops.
    s.pg.sql("ALTER SYSTEM RESET archive_command");
    s.pg.sql("SELECT pg_reload_conf()");
    let r4 = poll(
        &s,
        "archive caught up",
        || {},
        |r| r["archive"]["failing"] == false && r["archive"]["segments_waiting"].as_i64() == Some(0),
    );
    assert!(num(&r4, "archive_lag_seconds") < lag3, "{r4:#}");

    // Backups: an age appears; a passed restore drill gives the verified age.
    let id = s.backup();
    let r5 = rpo(&s);
    assert_eq!(r5["newest_backup"]["id"], id.as_str());
    assert!(num(&r5, "newest_backup_age_seconds") < 120.0);
    assert!(r5["newest_verified_backup_age_seconds"].is_null());
    let repo = pgkeep::repo::Repository::open(
        &pgkeep::repo::RepoLocation::parse(s.repo.to_str().unwrap()).unwrap(),
        None,
        s.env.rt.handle().clone(),
    )
    .unwrap();
    pgkeep::repo::verdict::store(
        &repo,
        &pgkeep::repo::verdict::Verdict {
            backup_id: id.clone(),
            verified_at: chrono::Utc::now(),
            ok: true,
            duration_seconds: 1.0,
            pg_version: "15".into(),
            summary: "test verdict".into(),
            report: serde_json::json!({}),
        },
    )
    .unwrap();
    let r6 = rpo(&s);
    assert_eq!(r6["newest_verified_backup"]["id"], id.as_str());
    assert!(num(&r6, "newest_verified_backup_age_seconds") < 120.0);
}
