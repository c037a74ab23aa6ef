//! Restore guards and backup listing (acceptance 6 and friends).

use crate::common::Setup;

#[test]
fn restore_into_a_non_empty_directory_is_refused() {
    let s = Setup::new();
    s.backup();
    let dir = s.env.path("occupied");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "operator's file").unwrap();
    let out = s.pgkeep(["restore", "--to"]).arg(&dir).fails();
    assert!(out.one_error_line().contains("not empty"), "{}", out.stderr);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keep.txt")], "nothing may be added to the directory");
    assert_eq!(std::fs::read_to_string(dir.join("keep.txt")).unwrap(), "operator's file");
}

#[test]
fn list_shows_lsns_times_sizes_and_state() {
    let s = Setup::new();
    let id = s.backup();
    let list = s.pgkeep(["list"]).json();
    let b = &list[0];
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["state"], "complete");
    for k in ["start_lsn", "stop_lsn", "start_time", "stop_time", "size", "stored_size", "start_wal", "stop_wal"] {
        assert!(!b[k].is_null(), "{k} missing in {b}");
    }
    assert!(b["verified"].is_null());
    let text = s.pgkeep(["list"]).ok().stdout;
    assert!(text.contains(&id) && text.contains("complete"), "{text}");
}

#[test]
fn restored_data_directory_has_mode_0700_and_recovery_settings() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    s.backup();
    let dir = s.env.path("restored");
    s.restore(&dir, &["--target", "immediate", "--target-action", "promote"]);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(dir.join("recovery.signal").exists());
    assert!(dir.join("backup_label").exists());
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("restore_command") && auto.contains("archive-get %f"), "{auto}");
    assert!(auto.contains("recovery_target = 'immediate'"), "{auto}");
    // Excluded paths are absent; their directories exist.
    assert!(!dir.join("postmaster.pid").exists());
    assert!(dir.join("pg_wal/archive_status").is_dir());
    assert!(dir.join("pg_replslot").is_dir());
    let restored = s.start_restored("restored", &dir);
    restored.wait_promoted();
}
