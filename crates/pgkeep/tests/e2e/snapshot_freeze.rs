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

/// Root: SIGTERM to pgkeep while a stripe group is frozen is held back until the file system
/// is thawed, then delivered. Without the hold the default action would kill pgkeep with the
/// server's file system still frozen.
#[test]
fn snapshot_freeze_root_sigterm_during_the_freeze_is_delivered_after_the_thaw() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;
    let env = env();
    let mounts = Mounts::new(&env);
    let xfs = mounts.loop_fs(&env.path("xfs.img"), &env.path("xfs"), "xfs", 512);
    pgkeep::fsutil::set_mode(&xfs, 0o755).unwrap();
    let entered = env.path("entered");
    let release = env.path("release");
    let s = SnapSetup::new(env, Some(mounts), &xfs.join("pgdata"), None);
    // Member a's snapshot command signals that it runs (inside the frozen window) and waits
    // for the test's go-ahead; member b returns at once.
    let member = |name: &str, snapshot: &str| {
        format!(
            "[[volume]]\nname = \"{name}\"\ndriver = \"command\"\npath = \"{}\"\nstripe_group = \"md0\"\n\
             snapshot_command = '{snapshot}'\ncommand_timeout = 60\n\n",
            xfs.display()
        )
    };
    let waiting = format!(
        "touch {e}; for i in $(seq 600); do [ -e {r} ] && break; sleep 0.05; done; echo snap-a",
        e = entered.display(),
        r = release.display()
    );
    s.configure(&(member("a", &waiting) + &member("b", "echo snap-b")));
    let mut cmd = s.pgkeep(["backup"]);
    let mut child =
        cmd.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !entered.exists() {
        assert!(Instant::now() < deadline, "the snapshot command never ran");
        assert!(child.try_wait().unwrap().is_none(), "pgkeep ended before snapshotting");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_thawed(&xfs), "{} should be frozen while the snapshot is requested", xfs.display());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let held_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < held_until {
        assert!(child.try_wait().unwrap().is_none(), "SIGTERM killed pgkeep while the file system was frozen");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&release, "").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "the held SIGTERM is delivered after the thaw: {status:?}");
    assert!(is_thawed(&xfs), "{} must be thawed", xfs.display());
    assert!(write_completes(&xfs), "writes to {} must not block", xfs.display());
    let states: Vec<String> = listed(&s).into_iter().map(|(_, state)| state).collect();
    assert_eq!(states, vec!["incomplete".to_string()], "an interrupted backup is never usable");
}
