//! Retention (`[retention]`, `pgkeep expire`, pins): a history of 10 backups over 3 timelines
//! (production, then two restored copies promoted on purpose while archiving into the same
//! repository), and each rule applied to a copy of that repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pgkeep_testkit::{TestCluster, TestEnv};
use pgkeep_wal::{parse_wal_file_name, WalFileName};
use serde_json::Value;

use crate::common::{cluster_cmd, Setup};

const SEG: u32 = 16 * 1024 * 1024;

/// One backup of the history: its id, timeline, and the time just after the marker row
/// named after it was committed (a point inside its range, for PITR).
struct Taken {
    id: String,
    marker: String,
    marker_time: String,
}

fn take(env: &TestEnv, repo: &Path, pg: &TestCluster, n: usize) -> Taken {
    let b = cluster_cmd(env, repo, pg).arg("backup").json();
    let marker = format!("m{n:02}");
    pg.sql(&format!("INSERT INTO marks VALUES ('{marker}')"));
    let marker_time = pg.scalar("SELECT clock_timestamp()::text");
    pg.sql("INSERT INTO marks VALUES ('after')");
    pg.sql("DELETE FROM marks WHERE name = 'after'");
    pg.switch_and_wait_archived(repo);
    Taken { id: b["id"].as_str().unwrap().to_string(), marker, marker_time }
}

/// A copy restored from the newest backup, promoted with archiving preserved: a new timeline
/// archiving into the same repository.
fn promoted_copy(s: &Setup, name: &str, from: &TestCluster) -> TestCluster {
    let dir = s.env.path(name);
    let mut r = cluster_cmd(&s.env, &s.repo, from).arg("restore").arg("--to").arg(&dir);
    for a in ["--target", "immediate", "--target-action", "promote", "--archive-mode", "preserve"] {
        r = r.arg(a);
    }
    r.json();
    let mut c = s.env.cluster_on(name, &dir);
    c.start();
    c.wait_promoted();
    c
}

struct History {
    s: Setup,
    taken: Vec<Taken>,
    /// Stop time (RFC 3339) of each backup, from `list`.
    stops: Vec<String>,
}

fn build_history() -> History {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE marks (name text PRIMARY KEY)");
    let mut taken = Vec::new();
    for n in 1..=3 {
        taken.push(take(&s.env, &s.repo, &s.pg, n));
    }
    // Timeline 2: a copy of production's newest backup, promoted; production stops.
    let mut a = promoted_copy(&s, "copy_a", &s.pg);
    let mut prod = s;
    prod.pg.stop();
    for n in 4..=5 {
        taken.push(take(&prod.env, &prod.repo, &a, n));
    }
    // Timeline 3: a copy of the newest backup (on timeline 2), promoted.
    let b = promoted_copy(&prod, "copy_b", &a);
    a.stop();
    for n in 6..=10 {
        taken.push(take(&prod.env, &prod.repo, &b, n));
    }
    let list = prod.pgkeep(["list"]).json();
    let tlis: BTreeSet<u64> = list.as_array().unwrap().iter().map(|b| b["timeline"].as_u64().unwrap()).collect();
    assert_eq!(tlis, BTreeSet::from([1, 2, 3]), "{list}");
    let stops = list.as_array().unwrap().iter().map(|b| b["stop_time"].as_str().unwrap().to_string()).collect();
    // The drills the `verified` rule counts: two pass; the newer backups are never verified.
    for i in [1, 4, 6] {
        prod.pgkeep(["verify", &taken[i].id]).ok();
    }
    History { s: prod, taken, stops }
}

/// A copy of the history's repository, with a config file holding `policy`.
fn repo_copy(h: &History, name: &str, policy: &str) -> (PathBuf, PathBuf) {
    let repo = h.s.env.path(name);
    let st = std::process::Command::new("cp").arg("-a").arg(&h.s.repo).arg(&repo).status().unwrap();
    assert!(st.success());
    let config = h.s.env.path(&format!("{name}.toml"));
    std::fs::write(&config, format!("[retention]\n{policy}\n")).unwrap();
    (repo, config)
}

fn pgkeep(h: &History, repo: &Path, config: &Path) -> pgkeep_testkit::PgkeepCmd {
    h.s.env.pgkeep(["--repo"]).arg(repo).arg("--config").arg(config)
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

/// Expire with `policy`, then check: exactly `keep` (indexes into the history) remain, no
/// WAL segment before the oldest kept backup's start remains, `wal verify` is clean, every
/// kept backup restores, and PITR from each kept one to a point in its range reaches its marker.
fn apply(h: &History, name: &str, policy: &str, now: Option<&str>, pin: Option<usize>, keep: &[usize]) -> Value {
    let (repo, config) = repo_copy(h, name, policy);
    let cmd = |args: &[&str]| {
        let mut c = pgkeep(h, &repo, &config);
        if let Some(t) = now {
            c = c.env("PGKEEP_NOW", t);
        }
        for a in args {
            c = c.arg(a);
        }
        c
    };
    if let Some(i) = pin {
        cmd(&["pin", &h.taken[i].id]).ok();
    }
    let dry = cmd(&["expire", "--dry-run"]).json();
    let real = cmd(&["expire"]).json();
    assert_eq!(real["failed"], serde_json::json!([]), "{real}");
    for k in ["backups", "wal", "kept", "bytes_freed", "wal_cutoff_segno", "recoverable_from"] {
        assert_eq!(dry[k], real[k], "{name}: dry run and run differ in {k}");
    }
    assert!(!real["wal"].as_array().unwrap().is_empty() && real["bytes_freed"].as_u64().unwrap() > 0, "{real}");
    // Timeline 3 holds kept backups: its history and its ancestors' stay.
    for tli in [2, 3] {
        assert!(repo.join(format!("wal/history/0000000{tli}.history")).exists(), "{name}: history {tli}");
    }
    let want: Vec<String> = keep.iter().map(|&i| h.taken[i].id.clone()).collect();
    assert_eq!(ids(&real, "kept"), want, "{name}: {real}");
    let list = cmd(&["list"]).json();
    let listed: Vec<String> = list.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, want, "{name}: {list}");
    assert!(list.as_array().unwrap().iter().all(|b| b["expires_next"] == false), "{list}");
    assert_eq!(list[0]["recoverable_from"], list[0]["stop_time"], "{list}");

    // No segment (or .partial, .backup) older than the oldest kept backup's start remains.
    let cutoff = match parse_wal_file_name(list[0]["start_wal"].as_str().unwrap(), SEG) {
        Some(WalFileName::Segment { segno, .. }) => segno,
        x => panic!("{x:?}"),
    };
    assert_eq!(real["wal_cutoff_segno"], cutoff, "{real}");
    let mut left = 0;
    for d in std::fs::read_dir(repo.join("wal")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let n = f.file_name().to_string_lossy().to_string();
            if let Some(
                WalFileName::Segment { segno, .. }
                | WalFileName::Partial { segno, .. }
                | WalFileName::BackupHistory { segno, .. },
            ) = parse_wal_file_name(&n, SEG)
            {
                assert!(segno >= cutoff, "{name}: {n} is older than the cut-off");
                left += 1;
            }
        }
    }
    assert!(left > 0);
    let v = cmd(&["wal", "verify"]).json();
    assert_eq!(v["ok"], true, "{name}: {v}");

    for &i in keep {
        let t = &h.taken[i];
        let dir = h.s.env.path(&format!("{name}_r{i}"));
        let mut r = cmd(&["restore", "--backup", &t.id, "--target-timeline", "current", "--target-action", "promote"]);
        // Every kept backup: PITR to a point inside its range (just after its marker row).
        r = r.arg("--target-time").arg(&t.marker_time);
        r.arg("--to").arg(&dir).json();
        let mut c = h.s.env.cluster_on(&format!("{name}_r{i}"), &dir);
        c.set("archive_mode", "off");
        c.start();
        c.wait_promoted();
        let marks = c.column("SELECT name FROM marks ORDER BY 1");
        assert!(marks.contains(&t.marker), "{name}: PITR from {} lacks its marker: {marks:?}", t.id);
        assert!(!marks.contains(&"after".to_string()), "{marks:?}");
        c.stop();
    }
    real
}

/// Acceptance 1 and 2: `full = 3`, `recovery_window`, `verified = 2` and a pin each keep
/// exactly the backups the rule says, over 10 backups on 3 timelines; the dry run's plan is
/// exactly what the run did.
#[test]
fn each_rule_keeps_exactly_what_it_says_over_three_timelines() {
    let h = build_history();
    apply(&h, "full3", "full = 3", None, None, &[7, 8, 9]);
    // The window starts just before backup 7 ended: 7..10 inside, 6 the newest before.
    let stop7 = chrono::DateTime::parse_from_rfc3339(&h.stops[6]).unwrap();
    let now = (stop7 - chrono::Duration::milliseconds(1) + chrono::Duration::hours(1)).to_rfc3339();
    apply(&h, "window", "recovery_window = \"1h\"", Some(&now), None, &[5, 6, 7, 8, 9]);
    apply(&h, "verified2", "verified = 2", None, None, &[4, 6]);
    let r = apply(&h, "pin", "full = 1", None, Some(1), &[1, 9]);
    assert_eq!(r["kept"][0]["kept_by"], serde_json::json!(["pinned"]), "{r}");
}

/// Pins, the refusals of `expire --backup`, `backup.expire_after`, and `recoverable_from` in
/// `rpo`; without a `[retention]` table `expire` deletes nothing.
#[test]
fn pins_refusals_and_expire_after() {
    let s = Setup::new();
    let config = s.env.path("pgkeep.toml");
    std::fs::write(&config, "[retention]\nfull = 1\n\n[backup]\nexpire_after = true\n").unwrap();
    let with_config = |args: &[&str]| {
        let mut c = s.pgkeep(["--config"]).arg(&config);
        for a in args {
            c = c.arg(a);
        }
        c
    };
    let b1 = s.backup();
    let out = s.pgkeep(["expire"]).fails();
    assert_eq!(out.code, Some(2));
    let line = out.one_error_line();
    assert!(line.contains("[retention]") && line.contains("hint:"), "{line}");

    let p = s.pgkeep(["pin", &b1]).json();
    assert_eq!(p["pinned"], true, "{p}");
    let b2 = s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let b3 = with_config(&["backup"]).json();
    let b3 = b3["id"].as_str().map(str::to_string).unwrap_or_else(|| panic!("{b3}"));
    let list = with_config(&["list"]).json();
    let listed: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b["pinned"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, vec![(b1.clone(), true), (b3.clone(), false)], "backup.expire_after expired {b2}: {list}");

    let out = with_config(&["expire", "--backup", &b1]).fails();
    assert!(out.one_error_line().contains("is pinned"), "{}", out.stderr);
    s.pgkeep(["unpin", &b1]).ok();
    let list = with_config(&["list"]).json();
    assert_eq!(list[0]["expires_next"], true, "{list}");
    assert_eq!(list[1]["expires_next"], false, "{list}");
    let text = with_config(&["list"]).ok().stdout;
    assert!(text.contains("expires it next") && text.contains("recoverable from"), "{text}");

    let out = with_config(&["expire", "--backup", &b3]).fails();
    assert!(out.one_error_line().contains("last backup the [retention] policy keeps"), "{}", out.stderr);
    assert_eq!(with_config(&["list"]).json().as_array().unwrap().len(), 2);

    let rpo = s.pgkeep(["rpo"]).json();
    assert_eq!(rpo["recoverable_from"], list[0]["stop_time"], "{rpo}");
    let x = with_config(&["expire", "--dry-run"]).json();
    assert_eq!(ids(&x, "backups"), vec![b1.clone()], "{x}");
    assert_eq!(x["dry_run"], true);
    assert_eq!(with_config(&["list"]).json().as_array().unwrap().len(), 2, "a dry run deletes nothing");
    s.pgkeep(["expire", "--backup", &b1]).ok();
    let rpo = s.pgkeep(["rpo"]).json();
    assert_eq!(rpo["recoverable_from"], with_config(&["list"]).json()[0]["stop_time"], "{rpo}");
}

/// Acceptance 4: SIGKILL of `expire` at 30 random moments (between and during its
/// deletions; the repository is put back when a run gets to the end): every backup `list`
/// shows as complete still restores and has its WAL, and the next `expire` completes.
/// Segments archived while expire runs are never lost.
#[test]
fn sigkill_of_expire_leaves_every_listed_backup_restorable() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t (n int)");
    for _ in 0..3 {
        s.backup();
        s.pg.sql("INSERT INTO t SELECT generate_series(1, 1000)");
        s.pg.switch_and_wait_archived(&s.repo);
    }
    let config = s.env.path("pgkeep.toml");
    std::fs::write(&config, "[retention]\nfull = 1\n").unwrap();
    let pristine = s.env.path("repo.orig");
    let cp = |from: &Path, to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        assert!(std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
    };
    cp(&s.repo, &pristine);
    check_listed_backups_restore(&s, &pristine, 0);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill-point seed {seed}");
    let mut rng = seed | 1;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let cmd = |args: &[&str]| {
        let mut c = s.pgkeep(["--config"]).arg(&config);
        for a in args {
            c = c.arg(a);
        }
        c
    };
    let steps = {
        let plan = cmd(&["expire", "--dry-run"]).json();
        plan["backups"].as_array().unwrap().len() + plan["wal"].as_array().unwrap().len()
    };
    assert!(steps > 3, "{steps}");
    let (mut kills, mut round, mut finished) = (0, 0, 0);
    while kills < 30 {
        round += 1;
        // Pause 60 ms before each step; kill after a random number of steps, at a random
        // moment of the pause or of the step after it.
        let mut c = cmd(&["expire"]).env("PGKEEP_TEST_EXPIRE_PAUSE", "60");
        let mut child =
            c.command().stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
        let kill_after = next(steps as u64 / 2 + 1) as usize;
        let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
        let (mut seen, mut line, mut killed) = (0, String::new(), false);
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0 {
            if line.contains("test pause before") {
                if seen == kill_after {
                    std::thread::sleep(std::time::Duration::from_millis(next(100)));
                    child.kill().unwrap();
                    killed = true;
                    break;
                }
                seen += 1;
            }
            line.clear();
        }
        let status = child.wait().unwrap();
        check_listed_backups_restore(&s, &pristine, round);
        if killed {
            kills += 1;
        } else {
            assert!(status.success(), "round {round}: expire failed");
            assert_eq!(cmd(&["list"]).json().as_array().unwrap().len(), 1);
            let v = s.pgkeep(["wal", "verify"]).json();
            assert_eq!(v["ok"], true, "round {round}: {v}");
            finished += 1;
            cp(&pristine, &s.repo);
        }
        assert!(round < 200, "expire does not progress");
    }
    // The last killed run is completed by the next one.
    let r = cmd(&["expire"]).json();
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");
    assert_eq!(cmd(&["list"]).json().as_array().unwrap().len(), 1);
    eprintln!("{kills} kills over {round} rounds, {finished} runs to the end");

    // archive-push during an expire: what it archives (newer than the cut-off) stays.
    cp(&pristine, &s.repo);
    let mut c = cmd(&["expire"]).env("PGKEEP_TEST_EXPIRE_PAUSE", "200");
    let child = c.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut pushed = Vec::new();
    for _ in 0..3 {
        s.pg.sql("INSERT INTO t SELECT generate_series(1, 100)");
        pushed.push(s.pg.switch_and_wait_archived(&s.repo));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    for seg in pushed {
        assert!(s.repo.join(format!("wal/{}/{seg}", &seg[..16])).exists(), "{seg} was lost");
    }
    let v = s.pgkeep(["wal", "verify"]).json();
    assert_eq!(v["ok"], true, "{v}");
}

/// Every backup `list` shows as complete restores (every object read back and checked) and
/// has every WAL segment from its start to its stop in the archive. A backup whose objects are
/// exactly those it had before any expire ran (`pristine`, where it was restored once) is not
/// restored again; any change to them, and it is.
fn check_listed_backups_restore(s: &Setup, pristine: &Path, round: usize) {
    let list = s.pgkeep(["list"]).json();
    for b in list.as_array().unwrap().iter().filter(|b| b["state"] == "complete") {
        let id = b["id"].as_str().unwrap();
        let key = format!("backup/{id}");
        if round == 0 || files(&s.repo.join(&key)) != files(&pristine.join(&key)) {
            let dir = s.env.path(&format!("kill{round}_{id}"));
            s.pgkeep(["restore", "--backup", id, "--target", "immediate", "--to"]).arg(&dir).ok();
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let seg = |k: &str| match parse_wal_file_name(b[k].as_str().unwrap(), SEG) {
            Some(WalFileName::Segment { tli, segno }) => (tli, segno),
            x => panic!("{x:?}"),
        };
        let ((tli, first), (_, last)) = (seg("start_wal"), seg("stop_wal"));
        for segno in first..=last {
            let name = pgkeep_wal::xlog_file_name(tli, segno, SEG);
            let key = pgkeep::repo::layout::wal_key(&name);
            assert!(s.repo.join(&key).exists(), "round {round}: backup {id} is listed but {name} is gone");
        }
    }
}

/// Every file below `dir` with its size and content hash.
fn files(dir: &Path) -> Vec<(PathBuf, u64, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), data.len() as u64, crc32c::crc32c(&data)));
            }
        }
    }
    out.sort();
    out
}

/// Acceptance 3 (root, loop-mounted btrfs): a snapshot backup the policy drops goes with its
/// snapshots; a snapshot whose deletion fails keeps the backup on record (unusable, its
/// snapshots listed for deletion) and the next `expire` retries and finishes.
#[test]
fn snapshot_btrfs_root_expire_deletes_snapshots_and_retries_a_failed_deletion() {
    let w = crate::snapshot_btrfs::btrfs_world(false);
    let s = &w.s;
    let b1 = s.pgkeep(["backup"]).json();
    let b2 = s.pgkeep(["backup"]).json();
    s.pg.switch_and_wait_archived(&s.repo);
    let snaps = |b: &Value| -> Vec<PathBuf> {
        b["snapshot"]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| PathBuf::from(v["snapshot_id"].as_str().unwrap()))
            .collect()
    };
    let (old, new) = (snaps(&b1), snaps(&b2));
    assert_eq!(old.len(), 3, "{b1}");
    let config = std::fs::read_to_string(&s.config).unwrap();
    s.configure(&format!("{config}\n[retention]\nfull = 1\n"));
    // An immutable parent directory makes `btrfs subvolume delete` fail for one snapshot.
    let stuck = old[0].parent().unwrap().to_path_buf();
    let chattr = |flag: &str| {
        let st = std::process::Command::new("chattr").arg(flag).arg(&stuck).status().unwrap();
        assert!(st.success(), "chattr {flag} {}", stuck.display());
    };
    chattr("+i");
    let out = s.pgkeep(["expire", "--json"]).run();
    chattr("-i");
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(r["failed"][0].as_str().unwrap().contains("could not be deleted"), "{r}");
    let id1 = b1["id"].as_str().unwrap();
    let listed = crate::snapshot_util::listed(s);
    assert_eq!(listed[0], (id1.to_string(), "incomplete".to_string()), "{listed:?}");
    assert_eq!(listed[1].1, "complete", "{listed:?}");
    let list = s.pgkeep(["list"]).json();
    assert_eq!(list[0]["pending_deletion"], true, "{list}");
    assert_eq!(list[1]["pending_deletion"], false, "{list}");
    assert!(s.pgkeep(["list"]).ok().stdout.contains("snapshot deletion pending"));
    assert!(old[0].exists(), "the stuck snapshot is still there");

    let r = s.pgkeep(["expire"]).json();
    assert_eq!(ids(&r, "backups"), vec![id1.to_string()], "{r}");
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");
    let listed = crate::snapshot_util::listed(s);
    assert_eq!(listed, vec![(b2["id"].as_str().unwrap().to_string(), "complete".to_string())]);
    for p in &old {
        assert!(!p.exists(), "{} survived expire", p.display());
    }
    for p in &new {
        assert!(p.exists(), "{} of the kept backup is gone", p.display());
    }
}

/// Acceptance 5: the same policy on an `s3://` repository (moto on 127.0.0.1): the dry run
/// equals the run, exactly the newest backup stays with every object of the others gone, no
/// WAL older than its start remains, `wal verify` is clean and the kept backup restores.
#[cfg(feature = "s3")]
#[test]
fn s3_repository_expires_like_a_local_one() {
    use pgkeep_testkit::{ClusterOptions, S3Server, S3Store};
    let env = crate::common::env();
    let s3 = S3Store::start_on(&env, S3Server::Moto, "pgkeep-test", "");
    let url = s3.url("ret");
    let opts =
        ClusterOptions::default().with("archive_mode", "on").with("archive_command", &s3.archive_command(&env, &url));
    let mut pg = env.cluster("src", opts);
    pg.start();
    let config = env.path("pgkeep.toml");
    std::fs::write(&config, std::fs::read_to_string(&s3.config).unwrap() + "\n[retention]\nfull = 1\n").unwrap();
    let cmd = |args: &[&str]| {
        let mut c = env.pgkeep(["--config"]).arg(&config).arg("--repo").arg(&url);
        c = c.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        for (k, v) in s3.env() {
            c = c.env(k, v);
        }
        for a in args {
            c = c.arg(a);
        }
        c
    };
    cmd(&["init"]).ok();
    pg.sql("CREATE TABLE t (n int)");
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(cmd(&["backup"]).json()["id"].as_str().unwrap().to_string());
        pg.sql("INSERT INTO t SELECT generate_series(1, 100)");
        pg.sql("SELECT pg_create_restore_point('switch')");
        let seg = pg.switch_wal();
        s3.wait_for_key(&format!("ret/{}", pgkeep::repo::layout::wal_key(&seg)), std::time::Duration::from_secs(60));
    }
    // What a writer killed mid-upload leaves: an unfinished multipart upload (one part stored)
    // and its record under uploads/ (repo/multipart.rs). expire aborts it and drops the record.
    s3.python(&format!(
        "c = s3(); k = 'ret/backup/{id}/data/killed'\nu = c.create_multipart_upload(Bucket='{b}', Key=k)['UploadId']\nc.upload_part(Bucket='{b}', Key=k, UploadId=u, PartNumber=1, Body=b'x' * 1024)\nc.put_object(Bucket='{b}', Key='ret/uploads/dead-run/0', Body=json.dumps({{'key': 'backup/{id}/data/killed', 'upload_id': u, 'host': 'gone', 'pid': 1}}))",
        id = taken[0],
        b = s3.bucket
    ));
    let uploads =
        || s3.python(&format!("print(len(s3().list_multipart_uploads(Bucket='{}').get('Uploads', [])))", s3.bucket));
    assert_eq!(uploads().trim(), "1");
    let dry = cmd(&["expire", "--dry-run"]).json();
    let real = cmd(&["expire"]).json();
    assert_eq!(real["uploads_aborted"], 1, "{real}");
    assert_eq!(uploads().trim(), "0", "the killed writer's upload is aborted");
    assert!(s3.keys("ret/uploads/").is_empty(), "its record is deleted");
    for k in ["backups", "wal", "kept", "bytes_freed", "wal_cutoff_segno"] {
        assert_eq!(dry[k], real[k], "dry run and run differ in {k}");
    }
    assert_eq!(ids(&real, "backups"), taken[..2].to_vec(), "{real}");
    assert!(!real["wal"].as_array().unwrap().is_empty(), "{real}");
    for id in &taken[..2] {
        assert!(s3.keys(&format!("ret/backup/{id}/")).is_empty(), "every object of {id} is deleted");
    }
    let list = cmd(&["list"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], taken[2].as_str());
    let cutoff = real["wal_cutoff_segno"].as_u64().unwrap();
    for k in s3.keys("ret/wal/") {
        let name = k.rsplit('/').next().unwrap();
        if let Some(WalFileName::Segment { segno, .. } | WalFileName::Partial { segno, .. }) =
            parse_wal_file_name(name, SEG)
        {
            assert!(segno >= cutoff, "{k} is older than the cut-off");
        }
    }
    assert_eq!(cmd(&["wal", "verify"]).json()["ok"], true);
    let dir = env.path("restored");
    cmd(&["restore", "--target", "immediate", "--target-action", "promote", "--to"]).arg(&dir).json();
    let mut c = env.cluster_on("restored", &dir);
    c.set("archive_mode", "off");
    for (k, v) in s3.env() {
        c.env(k, &v);
    }
    c.start();
    c.wait_promoted();
    assert_eq!(c.int("SELECT count(*) FROM t"), 200);
}

/// Acceptance 3 for EBS (moto): the policy deletes the dropped backup's snapshots; while the
/// EC2 API is unreachable the backup stays on record, unusable, and the next `expire` deletes
/// its snapshots and finishes.
#[cfg(feature = "ebs")]
#[test]
fn snapshot_ebs_expire_deletes_snapshots_and_retries_when_ec2_fails() {
    use crate::snapshot_ebs::{ebs_config, tagged_snapshots, with_aws};
    let env = crate::common::env();
    let moto = pgkeep_testkit::MotoServer::start(env.root());
    let vols = moto.json(
        "c = ec2()\nprint(json.dumps([c.create_volume(AvailabilityZone='us-east-1a', Size=10)['VolumeId'] for _ in range(2)]))",
    );
    let vol = |i: usize| vols[i].as_str().unwrap().to_string();
    let (m_data, m_wal) = (env.owned_dir("mnt-data"), env.owned_dir("mnt-wal"));
    let s = crate::snapshot_util::SnapSetup::new(env, None, &m_data.join("pgdata"), Some(&m_wal.join("pg_wal")));
    let (v0, v1) = (vol(0), vol(1));
    let good = [("data", v0.as_str(), m_data.as_path()), ("wal", v1.as_str(), m_wal.as_path())];
    s.configure(&ebs_config(&good, "[retention]\nfull = 1\n"));
    let b1 = with_aws(s.pgkeep(["backup"]), &moto).json()["id"].as_str().unwrap().to_string();
    let b2 = with_aws(s.pgkeep(["backup"]), &moto).json()["id"].as_str().unwrap().to_string();
    s.pg.switch_and_wait_archived(&s.repo);
    assert_eq!(tagged_snapshots(&moto, &b1).len(), 2);

    let out = with_aws(s.pgkeep(["expire", "--json"]), &moto).env("AWS_ENDPOINT_URL", "http://127.0.0.1:1").run();
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(r["failed"][0].as_str().unwrap().contains("could not be deleted"), "{r}");
    assert_eq!(tagged_snapshots(&moto, &b1).len(), 2, "nothing deleted while EC2 is unreachable");
    let listed = crate::snapshot_util::listed(&s);
    assert_eq!(listed[0], (b1.clone(), "incomplete".to_string()), "{listed:?}");
    assert_eq!(s.pgkeep(["list"]).json()[0]["pending_deletion"], true);

    let r = with_aws(s.pgkeep(["expire"]), &moto).json();
    assert_eq!(ids(&r, "backups"), vec![b1.clone()], "{r}");
    assert_eq!(r["deleted_snapshots"].as_array().unwrap().len(), 2, "{r}");
    assert!(tagged_snapshots(&moto, &b1).is_empty());
    assert_eq!(tagged_snapshots(&moto, &b2).len(), 2);
    assert_eq!(crate::snapshot_util::listed(&s), vec![(b2, "complete".to_string())]);
}
