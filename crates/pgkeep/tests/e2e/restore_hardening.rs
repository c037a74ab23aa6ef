//! Restore treats the repository as input and keeps restored copies away from it (issue 8:
//! points 2, 3, 5 and the label-first order of 8).

use std::path::Path;

use pgkeep::repo::frame::{self, Compression};
use pgkeep_testkit::cluster::wait_for_file_in_archive;
use serde_json::{json, Value};

use crate::common::{read_manifest, Setup};

/// Replace a backup's manifest in the repository, framed as pgkeep frames it.
fn write_manifest(repo: &Path, id: &str, m: &Value) {
    let plain = serde_json::to_vec_pretty(m).unwrap();
    let (framed, _) = frame::encode(&plain, Compression::Zstd(3));
    std::fs::write(repo.join(format!("backup/{id}/manifest")), framed).unwrap();
}

/// Index of the entry with `path` in the manifest's entries.
fn entry(m: &Value, path: &str) -> usize {
    m["entries"].as_array().unwrap().iter().position(|e| e["path"] == path).unwrap_or_else(|| panic!("no {path}"))
}

/// A manifest edit, what the error must name, and the path it would have written.
type Case = (&'static str, Box<dyn Fn(&mut Value)>, String, std::path::PathBuf);

fn is_absent_or_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true)
}

/// A manifest edited by whoever can write the repository must not make restore write outside
/// its target: `..`, absolute paths, links outside pg_wal/pg_tblspc, objects overrun,
/// wal_segment_size 0. Each is refused with one line naming the entry, before anything exists.
#[test]
fn tampered_manifest_is_refused_before_anything_is_written() {
    let s = Setup::new();
    let id = s.backup();
    let original = read_manifest(&s.repo, &id);
    let outside = s.env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let version = entry(&original, "PG_VERSION");

    let dotdot = "../escaped_dotdot".to_string();
    let absolute = s.env.path("escaped_absolute").display().to_string();
    let cases: Vec<Case> = vec![
        (
            "dotdot",
            Box::new({
                let p = dotdot.clone();
                move |m: &mut Value| m["entries"][version]["path"] = json!(p)
            }),
            dotdot.clone(),
            s.env.path("escaped_dotdot"),
        ),
        (
            "absolute",
            Box::new({
                let p = absolute.clone();
                move |m: &mut Value| m["entries"][version]["path"] = json!(p)
            }),
            absolute.clone(),
            s.env.path("escaped_absolute"),
        ),
        (
            "link",
            Box::new({
                let target = outside.display().to_string();
                move |m: &mut Value| {
                    m["entries"][version]["path"] = json!("base/evil/PG_VERSION");
                    let link = json!({"path": "base/evil", "kind": "link", "mode": 0o777, "target": target});
                    m["entries"].as_array_mut().unwrap().insert(0, link);
                }
            }),
            "base/evil".into(),
            outside.join("PG_VERSION"),
        ),
        (
            "overflow",
            Box::new(move |m: &mut Value| {
                m["entries"][version]["offset"] = json!(u64::MAX - 10);
                m["entries"][version]["length"] = json!(100);
            }),
            "PG_VERSION".into(),
            s.env.path("nothing_here"),
        ),
        (
            "segsize",
            Box::new(|m: &mut Value| m["wal_segment_size"] = json!(0)),
            "wal_segment_size".into(),
            s.env.path("nothing_here"),
        ),
    ];
    for (name, edit, named, would_be) in cases {
        let mut m = original.clone();
        edit(&mut m);
        write_manifest(&s.repo, &id, &m);
        let dir = s.env.path(&format!("restored_{name}"));
        let out = s.pgkeep(["restore", "--backup", &id, "--to"]).arg(&dir).fails();
        assert_eq!(out.code, Some(1), "{name}: {}", out.stderr);
        let line = out.one_error_line();
        eprintln!("{name}: {line}");
        assert!(line.contains(&named), "{name}: the error must name {named}: {line}");
        assert!(is_absent_or_empty(&dir), "{name}: the target must stay empty");
        assert!(std::fs::symlink_metadata(&would_be).is_err(), "{name}: {} was written", would_be.display());
    }
    assert!(is_absent_or_empty(&outside));

    // The untouched manifest still restores.
    write_manifest(&s.repo, &id, &original);
    s.restore(&s.env.path("restored_ok"), &[]);
}

/// A damaged stored backup_label is found before the first file is written.
#[test]
fn damaged_backup_label_fails_restore_before_any_file_is_written() {
    let s = Setup::new();
    let id = s.backup();
    let label = s.repo.join(format!("backup/{id}/backup_label"));
    let mut bytes = std::fs::read(&label).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&label, bytes).unwrap();
    let dir = s.env.path("restored");
    let out = s.pgkeep(["restore", "--to"]).arg(&dir).fails();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.one_error_line().contains("backup_label"), "{}", out.stderr);
    assert!(is_absent_or_empty(&dir), "nothing may be written before backup_label is checked");
}

/// The restored copy does not archive: archive_mode = 'off' in postgresql.auto.conf, and a
/// promoted copy adds nothing to the repository. `--archive-mode preserve` keeps archiving.
#[test]
fn restored_copy_does_not_archive_into_the_repository() {
    let s = Setup::new();
    s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let before = s.archive_snapshot();

    let dir = s.env.path("copy");
    let r = s.restore(&dir, &["--target", "immediate", "--target-action", "promote"]);
    assert_eq!(r["archive_mode"], "off");
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive_mode = 'off'"), "{auto}");
    // Started as an operator would: nothing on the command line overrides the files.
    let mut copy = s.env.cluster_on("copy", &dir);
    copy.start();
    copy.wait_promoted();
    assert_eq!(copy.scalar("SHOW archive_mode"), "off");
    copy.sql("CREATE TABLE after_promote AS SELECT 1 AS x");
    copy.switch_wal();
    copy.sql("CHECKPOINT");
    // With archive_mode off nothing is even queued for archiving.
    let queued: Vec<_> = std::fs::read_dir(dir.join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ready"))
        .collect();
    assert!(queued.is_empty(), "{queued:?}");
    copy.stop();
    // Production may archive meanwhile; the copy's files would be timeline 2 or a .partial.
    let after = s.archive_snapshot();
    let added: Vec<&String> = after.iter().map(|(k, _)| k).filter(|k| !before.iter().any(|(b, _)| b == *k)).collect();
    assert!(added.iter().all(|k| !k.contains("/00000002") && !k.ends_with(".partial")), "{added:?}");

    let kept = s.env.path("kept");
    let r = s.restore(&kept, &["--target", "immediate", "--archive-mode", "preserve"]);
    assert_eq!(r["archive_mode"], "preserve");
    let auto = std::fs::read_to_string(kept.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("archive_mode"), "{auto}");
}

/// A copy restored with `--archive-mode preserve` and promoted leaves timeline 2 in the
/// repository: `restore` and `wal verify` name it, and `--target-timeline current` restores
/// along production's timeline (the row written before the branch, not the copy's row).
#[test]
fn a_stray_timeline_is_named_and_current_stays_on_the_backups() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE marks (name text PRIMARY KEY)");
    let id = s.backup();

    let dir = s.env.path("copy");
    s.restore(&dir, &["--target", "immediate", "--target-action", "promote", "--archive-mode", "preserve"]);
    let mut copy = s.env.cluster_on("copy", &dir);
    copy.start();
    copy.wait_promoted();
    copy.sql("INSERT INTO marks VALUES ('copy')");
    copy.switch_and_wait_archived(&s.repo);
    wait_for_file_in_archive(&s.repo, "00000002.history", std::time::Duration::from_secs(60));
    copy.stop();

    s.pg.sql("INSERT INTO marks VALUES ('production')");
    s.pg.switch_and_wait_archived(&s.repo);

    let verify = s.pgkeep(["wal", "verify", "--json"]).run();
    let v: Value = serde_json::from_str(&verify.stdout).unwrap_or_else(|e| panic!("{e}: {}", verify.stdout));
    let b = v["backups"].as_array().unwrap().iter().find(|b| b["id"] == id.as_str()).unwrap();
    assert_eq!(b["newer_timelines"][0]["timeline"], 2, "{b}");
    let text = s.pgkeep(["wal", "verify"]).run().stdout;
    eprintln!("{text}");
    assert!(text.contains("newer timeline(s) 2"), "{text}");

    let latest = s.env.path("latest");
    let r = s.restore(&latest, &[]);
    assert_eq!(r["newer_timelines"][0]["timeline"], 2, "{r}");
    assert_eq!(r["recovery_timeline"], 2, "{r}");
    let text = s.pgkeep(["restore", "--to"]).arg(s.env.path("latest_text")).ok().stdout;
    eprintln!("{text}");
    assert!(text.contains("timeline 2") && text.contains("--target-timeline current"), "{text}");

    let current = s.env.path("current");
    let r = s.restore(&current, &["--target-timeline", "current", "--target-action", "promote"]);
    assert_eq!(r["recovery_timeline"], 1, "{r}");
    let restored = s.start_restored("current", &current);
    restored.wait_promoted();
    assert_eq!(restored.column("SELECT name FROM marks ORDER BY 1"), vec!["production"]);

    let bad = s.pgkeep(["restore", "--target-timeline", "newest", "--to"]).arg(s.env.path("bad")).fails();
    assert!(bad.one_error_line().contains("--target-timeline"), "{}", bad.stderr);
}

/// `--target-xid` and `--target-name` pick the newest backup that ended before the target's
/// record (found in the archived WAL), not the newest backup.
#[test]
fn xid_and_name_targets_pick_the_backup_that_ended_before_them() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE marks (name text PRIMARY KEY)");
    let a = s.backup();
    let xid = s.pg.scalar("INSERT INTO marks VALUES ('marker1') RETURNING txid_current()");
    s.pg.sql("SELECT pg_create_restore_point('rp1')");
    s.pg.sql("INSERT INTO marks VALUES ('marker2')");
    let b = s.backup();
    assert_ne!(a, b);
    s.pg.switch_and_wait_archived(&s.repo);

    let by_xid = s.env.path("by_xid");
    let r = s.restore(&by_xid, &["--target-xid", &xid, "--target-action", "promote"]);
    assert_eq!(r["backup"], a.as_str(), "{r}");
    let c = s.start_restored("by_xid", &by_xid);
    c.wait_promoted();
    assert_eq!(c.column("SELECT name FROM marks ORDER BY 1"), vec!["marker1"]);

    let by_name = s.env.path("by_name");
    let r = s.restore(&by_name, &["--target-name", "rp1", "--target-action", "promote"]);
    assert_eq!(r["backup"], a.as_str(), "{r}");
    let c = s.start_restored("by_name", &by_name);
    c.wait_promoted();
    assert_eq!(c.column("SELECT name FROM marks ORDER BY 1"), vec!["marker1"]);

    let nowhere = s.env.path("nowhere");
    let out = s.pgkeep(["restore", "--target-name", "no_such_point", "--to"]).arg(&nowhere).fails();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.one_error_line().contains("no_such_point"), "{}", out.stderr);
    assert!(is_absent_or_empty(&nowhere));
}

/// Snapshot restores write archive_mode = 'off' too (command driver: copies as snapshots).
#[test]
fn snapshot_restore_turns_archiving_off_unless_preserved() {
    let env = crate::common::env();
    let vdata = env.owned_dir("vol-data");
    let snaps = env.path("snaps");
    let s = crate::snapshot_util::SnapSetup::new(env, None, &vdata.join("pgdata"), None);
    s.configure(&format!(
        "[[volume]]\nname = \"data\"\ndriver = \"command\"\npath = \"{path}\"\n\
         snapshot_command = 'mkdir -p {snaps} && cp -a \"$PGKEEP_VOLUME_PATH\" \"{snaps}/$PGKEEP_BACKUP_ID\" 2>/dev/null; test -d \"{snaps}/$PGKEEP_BACKUP_ID\" && echo \"{snaps}/$PGKEEP_BACKUP_ID\"'\n\
         restore_command = 'cp -a \"$PGKEEP_SNAPSHOT_ID\" \"$PGKEEP_RESTORE_PATH\"'\n",
        path = vdata.display(),
        snaps = snaps.display()
    ));
    let b = s.pgkeep(["backup"]).json();
    assert_eq!(b["driver"], "command", "{b}");
    for (mode, name) in [(None, "off"), (Some("preserve"), "preserve")] {
        let clone = s.env.path(&format!("clone-{name}"));
        let mut c = s.pgkeep(["restore", "--backup", "latest", "--volume"]).arg(format!("data={}", clone.display()));
        if let Some(m) = mode {
            c = c.arg("--archive-mode").arg(m);
        }
        let r = c.json();
        assert_eq!(r["archive_mode"], name, "{r}");
        let auto = std::fs::read_to_string(clone.join("pgdata/postgresql.auto.conf")).unwrap();
        assert_eq!(auto.contains("archive_mode = 'off'"), mode.is_none(), "{auto}");
    }
}
