//! fsfreeze of a striped file system's members (acceptance 6, second half). Needs root: an XFS
//! file system is loop-mounted and frozen.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgkeep_testkit::Mounts;

use crate::common::env;
use crate::snapshot_util::{failed_backup_id, listed, pgkeep_sessions, SnapSetup};

/// Probe without blocking: freezing an already frozen file system fails with EBUSY.
fn probe(mount: &Path) -> String {
    format!(
        "if fsfreeze --freeze {m} 2>/dev/null; then fsfreeze --unfreeze {m}; echo thawed; else echo frozen; fi",
        m = mount.display()
    )
}

/// True when the file system is not frozen (thawing an unfrozen one fails with EINVAL).
fn is_thawed(mount: &Path) -> bool {
    let out = Command::new("fsfreeze").arg("--unfreeze").arg(mount).output().expect("fsfreeze");
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Invalid argument")
}

/// A write into `mount` that must finish quickly (it would block on a frozen file system).
fn write_completes(mount: &Path) -> bool {
    let p = mount.join("probe-after");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(&p, "x").and_then(|_| std::fs::File::open(&p)?.sync_all()).is_ok());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
}

/// Acceptance 6 (root): two volumes of one striped file system (stripe_group, command driver)
/// on a loop-mounted XFS that holds PGDATA. The file system is frozen while their snapshots
/// are requested (the first snapshot command sees it frozen) and thawed even when the second
/// snapshot call fails; the backup then fails cleanly. With both calls succeeding the backup
/// completes and reports how long the group was frozen.
#[test]
fn snapshot_freeze_root_loop_mounted_xfs_is_thawed_when_a_snapshot_fails() {
    let env = env();
    let mounts = Mounts::new(&env);
    let xfs = mounts.loop_fs(&env.path("xfs.img"), &env.path("xfs"), "xfs", 512);
    pgkeep::fsutil::set_mode(&xfs, 0o755).unwrap();
    let log = env.path("freeze.log");
    std::fs::write(&log, "").unwrap();
    let s = SnapSetup::new(env, Some(mounts), &xfs.join("pgdata"), None);
    let member = |name: &str, snapshot: &str| {
        format!(
            "[[volume]]\nname = \"{name}\"\ndriver = \"command\"\npath = \"{}\"\nstripe_group = \"md0\"\n\
             snapshot_command = '{snapshot}'\ndelete_command = 'echo \"delete $PGKEEP_SNAPSHOT_ID\" >> {log}'\ncommand_timeout = 20\n\n",
            xfs.display(),
            log = log.display()
        )
    };
    let ok_member = |name: &str| {
        member(name, &format!("echo \"{name} $({})\" >> {}; echo snap-{name}", probe(&xfs), log.display()))
    };
    let failing = member("b", "echo simulated SAN failure >&2; exit 1");
    s.configure(&(ok_member("a") + &failing));
    let out = s.pgkeep(["backup"]).fails();
    let line = out.one_error_line().to_string();
    eprintln!("{line}");
    assert!(line.contains("volume b (command): snapshot failed") && line.contains("simulated SAN failure"), "{line}");
    assert!(line.contains("deleted snapshot(s) snap-a"), "{line}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("a frozen"), "the first member's snapshot must run with the file system frozen: {text}");
    assert!(text.contains("delete snap-a"), "{text}");
    assert!(is_thawed(&xfs), "{} must be thawed after the failed snapshot", xfs.display());
    assert!(write_completes(&xfs), "writes to {} must not block", xfs.display());
    let failed = failed_backup_id(&line);
    assert!(listed(&s).is_empty(), "nothing usable from {failed}");
    assert_eq!(pgkeep_sessions(&s.pg), 0);
    s.pg.sql("CREATE TABLE after_failure AS SELECT 1 AS x");

    // Both members succeed: complete, and the freeze lasted well under a second.
    std::fs::write(&log, "").unwrap();
    s.configure(&(ok_member("a") + &ok_member("b")));
    let b = s.pgkeep(["backup"]).json();
    let frozen = b["snapshot"]["frozen"]["md0"].as_f64().expect("frozen seconds reported");
    assert!(frozen < 5.0, "frozen for {frozen}s");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("a frozen") && text.contains("b frozen"), "{text}");
    assert!(is_thawed(&xfs) && write_completes(&xfs));
    assert_eq!(b["snapshot"]["layout"]["frozen"][0], "md0");
    eprintln!("stripe group md0 frozen for {:.3}s while 2 snapshot commands ran", frozen);
}
