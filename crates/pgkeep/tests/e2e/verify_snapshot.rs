//! Restore drills of snapshot backups (issue 5 on issue 4's drivers): `pgkeep verify` clones
//! every volume beside its original (`<original>.pgkeep-verify-<id>-<pid>`), runs the drill on
//! the clone of PGDATA, and discards every clone afterwards — on success, on failure and on
//! SIGINT. Backups whose clones a drill could not remove are refused before anything is made.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgkeep_testkit::{Load, PgkeepCmd};

use crate::common::env;
use crate::snapshot_btrfs::btrfs_world;
use crate::snapshot_util::{reflink_images_setup, SnapSetup};
use crate::verify::{assert_nothing_left, check, scratch_parent, VerifyCmd};

const TAG: &str = ".pgkeep-verify-";

/// Every check of a clean drill passed, and the restore check says the volumes were cloned.
fn assert_clean_snapshot_drill(r: &serde_json::Value, id: &str, volumes: usize) {
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["source"]["backup_id"], id);
    for c in ["restore", "start", "page_lsn", "amcheck", "verify_heapam", "xid_horizon", "read_all", "unique"] {
        assert_eq!(check(r, c)["status"], "passed", "{c}: {r:#}");
    }
    let detail = check(r, "restore")["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains(&format!("cloned {volumes} volume(s) of snapshot backup {id}")), "{detail}");
    assert!(r["verdict_key"].as_str().unwrap().starts_with(&format!("backup/{id}/verify/")), "{r:#}");
}

/// What a drill could have left outside its scratch directory, below `dirs`: entries named
/// `*.pgkeep-verify-*`, mounts and loop devices of such paths, processes working in one.
/// (Only below `dirs`: other tests' drills run in parallel.)
fn drill_leftovers(dirs: &[&Path]) -> Vec<String> {
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| std::fs::canonicalize(d).unwrap()).collect();
    let ours = |p: &str| p.contains(TAG) && dirs.iter().any(|d| Path::new(p).starts_with(d));
    let mut left = Vec::new();
    for d in &dirs {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.contains(TAG) {
                left.push(format!("path {}", e.path().display()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| ours(m)) {
        left.push(format!("mount {m}"));
    }
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if ours(b.trim()) {
                left.push(format!("loop device {} on {}", e.file_name().to_string_lossy(), b.trim()));
            }
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if ours(&cwd.to_string_lossy()) {
                left.push(format!("process {} in {}", e.file_name().to_string_lossy(), cwd.display()));
            }
        }
    }
    left
}

/// Run `cmd` (a drill with a slow assertion), send SIGINT to its process group once the
/// assertions phase started, and return its exit code and stderr.
fn interrupt_during_assertions(mut cmd: PgkeepCmd, volumes: &Path) -> (Option<i32>, Vec<String>) {
    let mut child = cmd.command().process_group(0).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let l = lines.next().unwrap_or_else(|| panic!("verify ended before its assertions: {seen:?}")).unwrap();
        seen.push(l.clone());
        if l.contains("assertions") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!drill_leftovers(&[volumes]).is_empty(), "the drill's server should be running in its clone");
    // SAFETY: signalling the process group of our own child.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    seen.extend(lines.map_while(Result::ok));
    (status.code(), seen)
}

/// A btrfs snapshot backup taken under write load (PGDATA, pg_wal and a tablespace on three
/// subvolumes, snapshots 1 s apart) verifies clean: the drill clones the three subvolumes
/// beside the originals, recovers to the consistency point, every check passes, the verdict is
/// stored and listed. A failing drill (false assertion) and an interrupted one (SIGINT) also
/// discard their clones. After each: no clone subvolume, mount, scratch directory, socket or
/// process is left, and the backup's own snapshots are untouched.
#[test]
fn verify_snapshot_btrfs_root_backup_under_load_verifies_clean_and_leaves_nothing() {
    let began = Instant::now();
    let w = btrfs_world(true);
    let s = &w.s;
    let load = Load::inserts_and_deletes(&s.pg, &s.env.rt, "events", 4);
    load.wait_for(200);
    let b = s.pgkeep(["backup", "--stagger-snapshots", "1"]).json();
    load.wait_for(load.committed() + 100);
    let log = load.stop();
    s.pg.switch_and_wait_archived(&s.repo);
    assert_eq!(b["driver"], "btrfs", "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let subvolumes = || {
        let out = std::process::Command::new("btrfs").args(["subvolume", "list", "-o"]).arg(&w.fs).output().unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let before = subvolumes();
    assert_eq!(before.len(), 6, "three volumes and their three snapshots: {before:?}");
    let parent = scratch_parent(&s.env);

    let t = Instant::now();
    let r = s.pgkeep(["verify", "latest"]).in_scratch(&parent).json();
    let drill_seconds = t.elapsed().as_secs_f64();
    assert_clean_snapshot_drill(&r, &id, 3);
    let detail = check(&r, "restore")["detail"].as_str().unwrap().to_string();
    for v in ["data", "wal", "ts"] {
        let beside = format!("{v} → {}", w.fs.join(format!("{v}.pgkeep-verify-{id}-")).display());
        assert!(detail.contains(&beside), "clone of {v} beside its subvolume: {detail}");
    }
    assert!(
        detail.contains(&format!("data directory {}", w.fs.join(format!("data.pgkeep-verify-{id}-")).display())),
        "{detail}"
    );
    assert_eq!(r["source"]["driver"], "btrfs");
    let pg = r["databases"].as_array().unwrap().iter().find(|d| d["name"] == "postgres").unwrap().clone();
    // pgbench's 100000 accounts and the load's rows were all read from the clone.
    assert!(pg["rows_read"].as_u64().unwrap() >= 100_000, "{pg:#}");
    assert!(pg["tables_checked"].as_u64().unwrap() >= 5 && pg["indexes_checked"].as_u64().unwrap() >= 5, "{pg:#}");
    assert_nothing_left(&parent);
    let left = drill_leftovers(&[&w.fs]);
    assert!(left.is_empty(), "the drill left {left:?}");
    assert_eq!(subvolumes(), before, "only the drill's clones come and go");
    let listed = s.pgkeep(["list"]).json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["verified"], true, "{listed:#}");
    assert_eq!(listed[0]["verified_at"], r["started_at"]);

    // A failing drill discards its clones too.
    let asserts = s.env.path("asserts.sql");
    std::fs::write(
        &asserts,
        format!("-- the load's rows are there\nSELECT count(*) > 0 FROM events;\n-- impossible\nSELECT count(*) > {} FROM events;\n", log.len()),
    )
    .unwrap();
    let out = s.pgkeep(["verify", id.as_str(), "--json", "--assert"]).arg(&asserts).in_scratch(&parent).fails();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let f: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(f["ok"], false);
    assert_eq!(check(&f, "restore")["status"], "passed", "{f:#}");
    assert_eq!(check(&f, "assertions")["status"], "failed", "{f:#}");
    assert!(check(&f, "assertions")["errors"][0].as_str().unwrap().contains("impossible"), "{f:#}");
    assert_nothing_left(&parent);
    let left = drill_leftovers(&[&w.fs]);
    assert!(left.is_empty(), "the failed drill left {left:?}");

    // An interrupted drill (SIGINT while its server runs in the clones) discards them.
    let slow = s.env.path("slow.sql");
    std::fs::write(&slow, "SELECT pg_sleep(120) IS NOT NULL;\n").unwrap();
    let (code, stderr) =
        interrupt_during_assertions(s.pgkeep(["verify", "latest", "--assert"]).arg(&slow).in_scratch(&parent), &w.fs);
    assert_eq!(code, Some(130), "{stderr:?}");
    assert!(stderr.iter().any(|l| l.starts_with("pgkeep: error:") && l.contains("interrupted")), "{stderr:?}");
    assert_nothing_left(&parent);
    let left = drill_leftovers(&[&w.fs]);
    assert!(left.is_empty(), "the interrupted drill left {left:?}");
    assert_eq!(subvolumes(), before);
    // The failed drill's verdict is the latest; the interrupted one stored none.
    let listed = s.pgkeep(["list"]).json();
    assert_eq!(listed[0]["verified"], false, "{listed:#}");
    assert_eq!(listed[0]["verified_at"], f["started_at"]);
    eprintln!(
        "btrfs snapshot backup {id} verified in {drill_seconds:.1}s; test took {:.1}s",
        began.elapsed().as_secs_f64()
    );
}

/// A reflink snapshot backup (PGDATA and pg_wal on ext4 images stored on a reflink XFS)
/// verifies clean: the drill FICLONEs each snapshot image beside its original, loop-mounts the
/// clones, and afterwards unmounts them and removes the images.
#[test]
fn verify_snapshot_reflink_root_images_verify_clean_and_leave_nothing() {
    let env = env();
    let (s, outer) = reflink_images_setup(env, 1024);
    s.events_table(None);
    let load = Load::inserts_and_deletes(&s.pg, &s.env.rt, "events", 2);
    load.wait_for(100);
    let b = s.pgkeep(["backup"]).json();
    load.wait_for(load.committed() + 50);
    load.stop();
    s.pg.switch_and_wait_archived(&s.repo);
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["driver"], "reflink", "{b}");
    let outer_before: Vec<PathBuf> = std::fs::read_dir(&outer).unwrap().flatten().map(|e| e.path()).collect();

    let parent = scratch_parent(&s.env);
    let r = s.pgkeep(["verify", "latest"]).in_scratch(&parent).json();
    assert_clean_snapshot_drill(&r, &id, 2);
    let detail = check(&r, "restore")["detail"].as_str().unwrap().to_string();
    // Each clone image sits beside its original and is mounted beside it (not over it).
    let mounted_at = format!("data → {}", outer.join(format!("data.pgkeep-verify-{id}-")).display());
    assert!(detail.contains(&mounted_at), "{detail}");
    assert_nothing_left(&parent);
    let left = drill_leftovers(&[&outer, s.env.root()]);
    assert!(left.is_empty(), "the drill left {left:?}");
    let mut outer_after: Vec<PathBuf> = std::fs::read_dir(&outer).unwrap().flatten().map(|e| e.path()).collect();
    outer_after.sort();
    let mut outer_before = outer_before;
    outer_before.sort();
    assert_eq!(outer_after, outer_before);
    assert_eq!(s.pgkeep(["list"]).json()[0]["verified"], true);
}

/// The command driver: without `discard_command` a drill is refused before anything is made
/// (a clone pgkeep cannot remove would be left behind); with it, the drill runs
/// `restore_command` into `PGKEEP_RESTORE_PATH` beside each volume, verifies clean, and
/// `discard_command` removes every clone.
#[test]
fn verify_snapshot_command_driver_needs_discard_command_and_discards_its_clones() {
    let env = env();
    let (vdata, vwal) = (env.owned_dir("vol-data"), env.owned_dir("vol-wal"));
    let snaps = env.path("snaps");
    let log = env.path("commands.log");
    std::fs::write(&log, "").unwrap();
    let s = SnapSetup::new(env, None, &vdata.join("pgdata"), Some(&vwal.join("pg_wal")));
    s.pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    let volume = |name: &str, path: &Path, discard: bool| {
        // A "snapshot" is a copy taken inside the backup bracket (files that vanish while it
        // runs are skipped, as in a base backup); a "clone" is a copy of that.
        let d = if discard {
            format!(
                "discard_command = 'rm -rf \"$PGKEEP_RESTORE_PATH\" && echo \"discard $PGKEEP_VOLUME_NAME $PGKEEP_RESTORE_PATH\" >> {}'\n",
                log.display()
            )
        } else {
            String::new()
        };
        format!(
            "[[volume]]\nname = \"{name}\"\ndriver = \"command\"\npath = \"{path}\"\n\
             snapshot_command = 'mkdir -p {snaps} && cp -a \"$PGKEEP_VOLUME_PATH\" \"{snaps}/$PGKEEP_BACKUP_ID-$PGKEEP_VOLUME_NAME\" 2>/dev/null; test -d \"{snaps}/$PGKEEP_BACKUP_ID-$PGKEEP_VOLUME_NAME\" && echo \"{snaps}/$PGKEEP_BACKUP_ID-$PGKEEP_VOLUME_NAME\"'\n\
             restore_command = 'cp -a \"$PGKEEP_SNAPSHOT_ID\" \"$PGKEEP_RESTORE_PATH\" && echo \"restore $PGKEEP_VOLUME_NAME $PGKEEP_RESTORE_PATH\" >> {log}'\n\
             delete_command = 'rm -rf \"$PGKEEP_SNAPSHOT_ID\"'\n{d}\n",
            path = path.display(),
            snaps = snaps.display(),
            log = log.display()
        )
    };
    s.configure(&(volume("data", &vdata, false) + &volume("wal", &vwal, false)));
    let b = s.pgkeep(["backup"]).json();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["driver"], "command", "{b}");
    s.pg.switch_and_wait_archived(&s.repo);
    let parent = scratch_parent(&s.env);

    // No discard_command: refused up front, nothing restored.
    let out = s.pgkeep(["verify", "latest"]).in_scratch(&parent).fails();
    assert_eq!(out.code, Some(1));
    let line = out.one_error_line();
    assert!(line.contains("discard_command") && line.contains("nothing was created"), "{line}");
    assert!(line.contains(&id) && line.contains("\"data\""), "{line}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "no restore_command may have run");
    assert_nothing_left(&parent);
    assert!(s.pgkeep(["list"]).json()[0]["verified"].is_null(), "a refused drill stores no verdict");

    // With discard_command: the drill runs on the clones and removes them.
    s.configure(&(volume("data", &vdata, true) + &volume("wal", &vwal, true)));
    let r = s.pgkeep(["verify", "latest"]).in_scratch(&parent).json();
    assert_clean_snapshot_drill(&r, &id, 2);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for v in ["data", "wal"] {
        let clone = format!("{}.pgkeep-verify-{id}-", s.env.path(&format!("vol-{v}")).display());
        assert!(lines.iter().any(|l| l.starts_with(&format!("restore {v} {clone}"))), "{text}");
        assert!(lines.iter().any(|l| l.starts_with(&format!("discard {v} {clone}"))), "{text}");
    }
    assert!(lines[0].starts_with("restore") && lines[3].starts_with("discard"), "restores first: {text}");
    assert_nothing_left(&parent);
    let left = drill_leftovers(&[s.env.root()]);
    assert!(left.is_empty(), "the drill left {left:?}");
    assert_eq!(s.pgkeep(["list"]).json()[0]["verified"], true);
}
