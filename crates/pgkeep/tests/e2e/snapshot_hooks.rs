//! Hooks, the coverage check and pending snapshots (acceptance 5 and the first half of 6),
//! with the command driver on plain directories (no root needed).

use std::path::{Path, PathBuf};

use crate::common::env;
use crate::snapshot_util::{backup_history_label, failed_backup_id, listed, pgkeep_sessions, SnapSetup};

struct CmdWorld {
    s: SnapSetup,
    data: PathBuf,
    wal: PathBuf,
    ts: PathBuf,
    log: PathBuf,
}

/// PGDATA, pg_wal and a tablespace in three directories ("volumes"); every command appends a
/// line to `log`.
fn cmd_world() -> CmdWorld {
    let env = env();
    let (data, wal, ts) = (env.owned_dir("vol-data"), env.owned_dir("vol-wal"), env.owned_dir("vol-ts"));
    let log = env.path("commands.log");
    std::fs::write(&log, "").unwrap();
    let s = SnapSetup::new(env, None, &data.join("pgdata"), Some(&wal.join("pg_wal")));
    s.tablespace("ts1", &ts.join("tbs"));
    s.pg.sql("CREATE TABLE t (id int PRIMARY KEY) TABLESPACE ts1; INSERT INTO t SELECT generate_series(1, 100)");
    CmdWorld { s, data, wal, ts, log }
}

fn volume(name: &str, path: &Path, log: &Path, extra: &str) -> String {
    format!(
        "[[volume]]\nname = \"{name}\"\ndriver = \"command\"\npath = \"{}\"\n\
         snapshot_command = 'echo \"snapshot $PGKEEP_VOLUME_NAME $PGKEEP_VOLUME_PATH $PGKEEP_BACKUP_ID\" >> {log}; echo \"snap-$PGKEEP_VOLUME_NAME-$PGKEEP_BACKUP_ID\"'\n\
         delete_command = 'echo \"delete $PGKEEP_SNAPSHOT_ID\" >> {log}'\n{extra}\n",
        path.display(),
        log = log.display()
    )
}

fn hook(name: &str, log: &Path, tail: &str) -> String {
    format!(
        "{name} = {{ command = 'echo \"{name} id=$PGKEEP_BACKUP_ID start=$PGKEEP_START_LSN stop=${{PGKEEP_STOP_LSN:-none}} hook=$PGKEEP_HOOK\" >> {}{tail}', timeout = 30 }}\n",
        log.display()
    )
}

/// Acceptance 5: `before`, `after` and `complete` run in that order around the snapshots with
/// PGKEEP_BACKUP_ID, PGKEEP_START_LSN and (complete only) PGKEEP_STOP_LSN; a failing `before`
/// hook aborts: no snapshot taken, pg_backup_stop called (its backup history file exists and
/// no pgkeep session is left on the server), nothing usable listed.
#[test]
fn snapshot_hooks_run_in_order_and_a_failing_before_hook_aborts_cleanly() {
    let w = cmd_world();
    let s = &w.s;
    let vols =
        volume("data", &w.data, &w.log, "") + &volume("wal", &w.wal, &w.log, "") + &volume("ts", &w.ts, &w.log, "");
    let hooks =
        format!("[hooks]\n{}{}{}", hook("before", &w.log, ""), hook("after", &w.log, ""), hook("complete", &w.log, ""));
    s.configure(&format!("{hooks}\n{vols}"));
    let b = s.pgkeep(["backup"]).json();
    let id = b["id"].as_str().unwrap();
    let (start, stop) = (b["start_lsn"].as_str().unwrap(), b["stop_lsn"].as_str().unwrap());
    let log = std::fs::read_to_string(&w.log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 6, "{log}");
    assert_eq!(lines[0], format!("before id={id} start={start} stop=none hook=before"));
    let mut snaps: Vec<&str> = lines[1..4].to_vec();
    snaps.sort();
    assert_eq!(
        snaps,
        vec![
            format!("snapshot data {} {id}", w.data.display()),
            format!("snapshot ts {} {id}", w.ts.display()),
            format!("snapshot wal {} {id}", w.wal.display()),
        ]
    );
    assert_eq!(lines[4], format!("after id={id} start={start} stop=none hook=after"));
    assert_eq!(lines[5], format!("complete id={id} start={start} stop={stop} hook=complete"));
    let ran: Vec<&str> =
        b["snapshot"]["hooks"].as_array().unwrap().iter().map(|h| h["hook"].as_str().unwrap()).collect();
    assert_eq!(ran, ["before", "after", "complete"]);
    let recs = b["snapshot"]["snapshots"].as_array().unwrap();
    assert!(recs.iter().any(|r| r["snapshot_id"] == format!("snap-data-{id}")), "{b}");
    let text = s.pgkeep(["list"]).ok().stdout;
    assert!(text.contains(id) && text.contains("complete"), "{text}");

    // A failing before hook.
    std::fs::write(&w.log, "").unwrap();
    let hooks = format!(
        "[hooks]\n{}{}{}",
        hook("before", &w.log, "; echo storage array busy >&2; exit 7"),
        hook("after", &w.log, ""),
        hook("complete", &w.log, "")
    );
    s.configure(&format!("{hooks}\n{vols}"));
    let out = s.pgkeep(["backup"]).fails();
    let line = out.one_error_line().to_string();
    eprintln!("{line}");
    assert!(
        line.contains("before hook") && line.contains("exit status 7") && line.contains("storage array busy"),
        "{line}"
    );
    assert!(line.contains("pg_backup_stop was called") && line.contains("no snapshot had been taken"), "{line}");
    let failed = failed_backup_id(&line);
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert_eq!(log.lines().count(), 1, "only the before hook ran: {log}");
    assert_eq!(pgkeep_sessions(&s.pg), 0, "no backup session may be left on the server");
    assert!(
        backup_history_label(&w.wal.join("pg_wal"), &failed).is_some(),
        "pg_backup_stop must have run for {failed}"
    );
    assert_eq!(listed(s), vec![(id.to_string(), "complete".to_string())], "nothing usable from the failed run");
    // The server is not stuck in backup mode: another backup works at once.
    s.configure(&vols);
    let text = s.pgkeep(["backup"]).ok().stdout;
    assert!(text.contains("pg_backup_start..pg_backup_stop window") && text.contains("spread"), "{text}");
    eprintln!("{text}");

    // A failing after hook: the snapshots taken are deleted.
    std::fs::write(&w.log, "").unwrap();
    s.configure(&format!("[hooks]\n{}\n{vols}", hook("after", &w.log, "; exit 3")));
    let out = s.pgkeep(["backup"]).fails();
    let line = out.one_error_line().to_string();
    eprintln!("{line}");
    assert!(line.contains("after hook") && line.contains("deleted snapshot(s)"), "{line}");
    let failed = failed_backup_id(&line);
    let log = std::fs::read_to_string(&w.log).unwrap();
    for v in ["data", "wal", "ts"] {
        assert!(log.contains(&format!("delete snap-{v}-{failed}")), "{log}");
    }
    assert_eq!(listed(s).iter().filter(|(_, st)| st == "complete").count(), 2);
}

/// Acceptance 6 (first half): a configuration that leaves pg_wal or a tablespace on no
/// configured volume is refused before anything starts, naming the path.
#[test]
fn snapshot_coverage_check_names_the_uncovered_path() {
    let w = cmd_world();
    let s = &w.s;
    // Only PGDATA's volume: the real pg_wal (a symlink target elsewhere) is uncovered.
    s.configure(&volume("data", &w.data, &w.log, ""));
    let out = s.pgkeep(["backup"]).fails();
    let line = out.one_error_line();
    eprintln!("{line}");
    let real_wal = std::fs::canonicalize(w.wal.join("pg_wal")).unwrap();
    assert!(line.contains(&format!("pg_wal {}", real_wal.display())), "{line}");
    assert!(line.contains("is not on any configured volume") && line.contains("hint:"), "{line}");
    assert_eq!(out.code, Some(1));

    // pg_wal covered, the tablespace not.
    s.configure(&(volume("data", &w.data, &w.log, "") + &volume("wal", &w.wal, &w.log, "")));
    let out = s.pgkeep(["backup"]).fails();
    let line = out.one_error_line();
    eprintln!("{line}");
    let real_ts = std::fs::canonicalize(w.ts.join("tbs")).unwrap();
    assert!(line.contains("tablespace ts1") && line.contains(&real_ts.display().to_string()), "{line}");
    // Nothing was started: no snapshot command ran, no backup is on record.
    assert_eq!(std::fs::read_to_string(&w.log).unwrap(), "");
    assert!(listed(s).is_empty());
    assert!(!s.repo.join("backup").exists() || std::fs::read_dir(s.repo.join("backup")).unwrap().next().is_none());

    // An incremental is a files-driver backup: with snapshot volumes configured it is refused
    // in one line, before any snapshot command runs.
    s.configure(
        &(volume("data", &w.data, &w.log, "") + &volume("wal", &w.wal, &w.log, "") + &volume("ts", &w.ts, &w.log, "")),
    );
    let out = s.pgkeep(["backup", "--type", "incr"]).fails();
    let line = out.one_error_line();
    assert!(line.contains("--type incr applies to the files driver") && line.contains("hint:"), "{line}");
    assert_eq!(std::fs::read_to_string(&w.log).unwrap(), "");
    assert!(listed(s).is_empty());

    // `--driver files` still takes a file copy with the same config.
    let b = s.pgkeep(["backup", "--driver", "files"]).json();
    assert_eq!(b["driver"], "files");
    // expire works for files backups too.
    let e = s.pgkeep(["expire", "--backup", b["id"].as_str().unwrap()]).json();
    assert_eq!(e["removed"], true);
    assert!(listed(s).is_empty());
    let out = s.pgkeep(["expire", "--backup", b["id"].as_str().unwrap()]).fails();
    assert!(out.one_error_line().contains("is not in repository"), "{}", out.stderr);
}

/// Pending snapshots: `--no-wait` records them as pending (listed, never restored), `pgkeep
/// list` commits the backup once they complete; a snapshot that never completes within the
/// wait timeout fails the backup and its snapshots are deleted.
#[test]
fn snapshot_pending_no_wait_list_commits_and_wait_timeout_cleans_up() {
    let w = cmd_world();
    let s = &w.s;
    let states = s.env.path("states");
    std::fs::create_dir_all(&states).unwrap();
    let status = format!("status_command = 'cat {}/$PGKEEP_VOLUME_NAME 2>/dev/null || echo pending'", states.display());
    let vols = volume("data", &w.data, &w.log, &status)
        + &volume("wal", &w.wal, &w.log, &status)
        + &volume("ts", &w.ts, &w.log, &status);
    s.configure(&vols);
    let b = s.pgkeep(["backup", "--no-wait"]).json();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["snapshot"]["state"], "pending", "{b}");
    assert_eq!(listed(s), vec![(id.clone(), "pending".to_string())]);
    let out = s.pgkeep(["restore", "--backup", "latest"]).fails();
    assert!(out.one_error_line().contains("no complete backup"), "{}", out.stderr);
    // Two of three complete: still pending.
    std::fs::write(states.join("data"), "completed\n").unwrap();
    std::fs::write(states.join("wal"), "completed\n").unwrap();
    assert_eq!(listed(s), vec![(id.clone(), "pending".to_string())]);
    std::fs::write(states.join("ts"), "completed\n").unwrap();
    assert_eq!(listed(s), vec![(id.clone(), "complete".to_string())]);
    let m = crate::common::read_manifest(&s.repo, &id);
    assert!(m["snapshots"].as_array().unwrap().iter().all(|r| r["state"] == "completed"), "{m}");

    // backup --finish waits for a pending one.
    for v in ["data", "wal", "ts"] {
        std::fs::remove_file(states.join(v)).unwrap();
    }
    let b2 = s.pgkeep(["backup", "--no-wait"]).json();
    let id2 = b2["id"].as_str().unwrap().to_string();
    let states2 = states.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        for v in ["data", "wal", "ts"] {
            std::fs::write(states2.join(v), "completed\n").unwrap();
        }
    });
    let f = s.pgkeep(["backup", "--finish"]).json();
    t.join().unwrap();
    assert_eq!(f[0]["id"], id2.as_str());
    assert_eq!(f[0]["state"], "complete", "{f}");

    // Never completing: the wait times out, the snapshots are deleted, nothing is listed.
    for v in ["data", "wal", "ts"] {
        std::fs::remove_file(states.join(v)).unwrap();
    }
    std::fs::write(&w.log, "").unwrap();
    s.configure(&format!("[snapshot]\nwait_timeout = 1\n\n{vols}"));
    let out = s.pgkeep(["backup"]).fails();
    let line = out.one_error_line().to_string();
    eprintln!("{line}");
    assert!(line.contains("did not complete within 1s") && line.contains("deleted snapshot(s)"), "{line}");
    let failed = failed_backup_id(&line);
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert_eq!(log.lines().filter(|l| l.starts_with("delete ") && l.ends_with(&failed)).count(), 3, "{log}");
    assert_eq!(listed(s), vec![(id, "complete".to_string()), (id2, "complete".to_string())]);
}
