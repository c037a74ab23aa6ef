//! A backup killed half-way (acceptance 3).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::Setup;

#[test]
fn sigkill_mid_copy_leaves_no_usable_backup_and_the_next_backup_succeeds() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-s", "3", "-q"]);
    let first = s.backup();

    // A slow backup (--max-rate) that we kill while it copies.
    let mut cmd = s.pgkeep(["backup", "--max-rate", "2M"]);
    let mut child = cmd.command().stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn backup");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let l = lines.next().expect("backup ended before copying").expect("read stderr");
        if l.contains("copy files") {
            break;
        }
    }
    // Wait until data is really being written into the new backup, then kill.
    let backups = s.repo.join("backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_id = loop {
        let found = std::fs::read_dir(&backups)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|id| {
                id != &first
                    && std::fs::read_dir(backups.join(id).join("data")).map(|mut d| d.next().is_some()).unwrap_or(false)
            });
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < deadline, "the second backup never started writing data");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    let list = s.pgkeep(["list"]).json();
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, vec![(first.clone(), "complete".to_string()), (killed_id.clone(), "incomplete".to_string())]);

    // The server no longer holds the killed backup's session.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .pg
        .int("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgkeep' AND pid <> pg_backend_pid()")
        > 0
    {
        assert!(Instant::now() < deadline, "the killed backup's session is still open");
        std::thread::sleep(Duration::from_millis(50));
    }

    // restore never picks it: latest is the complete one, and asking for it by id fails.
    s.pg.switch_and_wait_archived(&s.repo);
    let r = s.restore(&s.env.path("r1"), &[]);
    assert_eq!(r["backup"], first.as_str());
    let out = s.pgkeep(["restore", "--backup", &killed_id, "--to"]).arg(s.env.path("r2")).fails();
    assert!(out.one_error_line().contains("incomplete"), "{}", out.stderr);

    // The next backup succeeds and cleans up the interrupted one.
    let third = s.pgkeep(["backup"]).json();
    assert_eq!(third["removed_incomplete"][0], killed_id.as_str());
    let list = s.pgkeep(["list"]).json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![first.as_str(), third["id"].as_str().unwrap()]);
    assert!(list.as_array().unwrap().iter().all(|b| b["state"] == "complete"));
}
