//! The catalog under faults (issue 8, points 6, 7, 8 last part, 9, 14): a damaged manifest or
//! pending record stops nothing and loses nothing, expire makes the manifest's removal durable
//! before it deletes snapshots, `list` tells a running backup from a killed one, the lock file
//! belongs to the repository's owner, and the lower modules know nothing of `backup`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{env, Setup};
use crate::snapshot_util::{listed, SnapSetup};

/// Flip one bit in the middle of a stored object.
fn flip_a_bit(path: &Path) {
    let mut b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = b.len() / 2;
    b[i] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

fn entry<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list.as_array().expect("list array").iter().find(|b| b["id"] == id)
}

/// Point 6: with one flipped bit in the older backup's manifest, `list` shows it `damaged`
/// (with the reason) and exits 0; `backup`, `restore` (latest), `wal verify` work; `expire
/// --backup` of the damaged one deletes it (a files backup: no snapshots to lose).
#[test]
fn a_damaged_manifest_is_listed_as_damaged_and_stops_nothing() {
    let s = Setup::new();
    let old = s.backup();
    let good = s.backup();
    flip_a_bit(&s.repo.join(format!("backup/{old}/manifest")));

    let list = s.pgkeep(["list"]).json();
    let e = entry(&list, &old).expect("damaged backup listed");
    assert_eq!(e["state"], "damaged", "{list}");
    assert!(e["damaged_reason"].as_str().is_some_and(|r| r.contains("manifest")), "{list}");
    assert_eq!(entry(&list, &good).expect("good backup")["state"], "complete");
    let text = s.pgkeep(["list"]).ok().stdout;
    assert!(text.contains("damaged") && text.contains("damaged: the manifest cannot be read"), "{text}");

    let newest = s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let out = s.pgkeep(["restore", "--json", "--to"]).arg(s.env.path("restored")).ok();
    let r: serde_json::Value = serde_json::from_str(&out.stdout).expect("restore report");
    assert_eq!(r["backup"], newest.as_str());
    assert!(out.stderr.contains(&format!("backup {old} is damaged and skipped")), "{}", out.stderr);
    s.pgkeep(["wal", "verify"]).json();

    let x = s.pgkeep(["expire", "--backup", &old]).json();
    assert_eq!(x["removed"], true, "{x}");
    assert!(x["damaged"].as_str().is_some_and(|d| d.contains("manifest")), "{x}");
    assert_eq!(x["snapshots_unknown"], false, "{x}");
    assert!(!s.repo.join(format!("backup/{old}")).exists());
    let list = s.pgkeep(["list"]).json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, vec![good.as_str(), newest.as_str()]);
}

/// PGDATA and pg_wal in two plain directories ("volumes") of the command driver; every
/// snapshot command appends to `log`.
struct CmdWorld {
    s: SnapSetup,
    data: PathBuf,
    wal: PathBuf,
    log: PathBuf,
}

fn cmd_world() -> CmdWorld {
    let env = env();
    let (data, wal) = (env.owned_dir("vol-data"), env.owned_dir("vol-wal"));
    let log = env.path("commands.log");
    std::fs::write(&log, "").unwrap();
    let s = SnapSetup::new(env, None, &data.join("pgdata"), Some(&wal.join("pg_wal")));
    CmdWorld { s, data, wal, log }
}

impl CmdWorld {
    /// Both volumes, with `extra` lines (status_command) and `hooks` (a `[hooks]` table body).
    fn configure(&self, extra: &str, hooks: &str) {
        let vol = |name: &str, path: &Path| {
            format!(
                "[[volume]]\nname = \"{name}\"\ndriver = \"command\"\npath = \"{}\"\n\
                 snapshot_command = 'echo \"snap-$PGKEEP_VOLUME_NAME-$PGKEEP_BACKUP_ID\"'\n\
                 delete_command = 'echo \"delete $PGKEEP_SNAPSHOT_ID\" >> {log}'\n{extra}\n",
                path.display(),
                log = self.log.display()
            )
        };
        let hooks = if hooks.is_empty() { String::new() } else { format!("[hooks]\n{hooks}\n") };
        self.s.configure(&format!("{hooks}{}{}", vol("data", &self.data), vol("wal", &self.wal)));
    }
}

/// Point 6: the damaged pending record of a `--no-wait` snapshot backup is the only record of
/// its snapshots: the next backup's stale clean-up keeps it (no snapshot deleted, listed
/// `damaged`), `expire` refuses without `--force` and deletes the repository objects with it.
#[test]
fn a_damaged_pending_record_survives_the_next_backups_cleanup() {
    let w = cmd_world();
    let s = &w.s;
    w.configure("status_command = 'echo pending'", "");
    let b = s.pgkeep(["backup", "--no-wait"]).json();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["snapshot"]["state"], "pending", "{b}");
    let pending = s.repo.join(format!("backup/{id}/pending"));
    flip_a_bit(&pending);

    w.configure("", "");
    let b2 = s.pgkeep(["backup"]).json();
    assert_eq!(b2["removed_incomplete"], serde_json::json!([]), "{b2}");
    assert!(pending.exists(), "the damaged pending record was deleted");
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(!log.contains(&id), "snapshots of the damaged backup were deleted: {log}");
    let b2id = b2["id"].as_str().unwrap().to_string();
    assert_eq!(listed(s), vec![(id.clone(), "damaged".to_string()), (b2id, "complete".to_string())]);

    let out = s.pgkeep(["expire", "--backup", &id]).fails();
    let line = out.one_error_line();
    assert!(line.contains("pending record cannot be read") && line.contains("--force"), "{line}");
    assert!(pending.exists(), "a refused expire deleted something");
    let x = s.pgkeep(["expire", "--backup", &id, "--force"]).json();
    assert_eq!(x["snapshots_unknown"], true, "{x}");
    assert!(!s.repo.join(format!("backup/{id}")).exists());
}

/// Point 7: expire unlinks the manifest, fsyncs the backup's directory, and only then runs the
/// first delete_command (traced with strace: unlink, fsync with the fd's path, execve).
#[test]
fn expire_syncs_the_manifest_removal_before_deleting_a_snapshot() {
    let w = cmd_world();
    let s = &w.s;
    w.configure("", "");
    let id = s.pgkeep(["backup"]).json()["id"].as_str().unwrap().to_string();
    let trace = s.env.path("expire.trace");
    let out = Command::new("strace")
        .args(["-f", "-y", "-s", "256", "-e", "trace=unlink,unlinkat,fsync,execve", "-o"])
        .arg(&trace)
        .arg(&s.env.pgkeep)
        .arg("--repo")
        .arg(&s.repo)
        .arg("--config")
        .arg(&s.config)
        .args(["expire", "--backup", &id])
        .output()
        .expect("run strace (scripts/setup.sh installs it)");
    assert!(out.status.success(), "expire under strace: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = std::fs::canonicalize(&s.repo).unwrap().join("backup").join(&id);
    let manifest = format!("{}/manifest\"", dir.display());
    let find = |from: usize, f: &dyn Fn(&str) -> bool| lines.iter().skip(from).position(|l| f(l)).map(|i| i + from);
    let unlink = find(0, &|l| l.contains("unlink") && l.contains(&manifest)).expect("manifest unlinked");
    let fsync = find(unlink, &|l| l.contains("fsync(") && l.contains(&format!("<{}>", dir.display())));
    let delete = find(0, &|l| l.contains("execve(") && l.contains("delete $PGKEEP_SNAPSHOT_ID")).expect("delete ran");
    let fsync = fsync.unwrap_or_else(|| panic!("no fsync of {} after the manifest's unlink:\n{text}", dir.display()));
    assert!(unlink < fsync && fsync < delete, "order unlink {unlink} < fsync {fsync} < delete {delete}:\n{text}");
}

/// Point 8: a backup whose process holds the backup lock (paused in its `before` hook) is
/// listed `running`; once killed, `incomplete`.
#[test]
fn list_tells_a_running_backup_from_a_killed_one() {
    let w = cmd_world();
    let s = &w.s;
    let (ready, go) = (s.env.path("ready"), s.env.path("go"));
    w.configure(
        "",
        &format!(
            "before = {{ command = 'touch {}; while [ ! -e {} ]; do sleep 0.05; done', timeout = 300 }}",
            ready.display(),
            go.display()
        ),
    );
    let mut cmd = s.pgkeep(["backup"]);
    let mut child = cmd.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn backup");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the backup never reached its before hook");
        assert!(child.try_wait().unwrap().is_none(), "the backup ended before its before hook");
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = listed(s);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].1, "running", "{running:?}");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    std::fs::write(&go, "").unwrap();
    assert_eq!(listed(s), vec![(running[0].0.clone(), "incomplete".to_string())]);
}

/// Point 9 (root): after root took the backup lock, the repository's owner (the server's OS
/// user, as cron runs it) can take it too.
#[test]
fn the_lock_file_root_created_belongs_to_the_repository_owner_root() {
    pgkeep_testkit::require_root("the lock-ownership test");
    let s = Setup::new();
    let (uid, gid) = pgkeep::fsutil::owner_of(&s.repo).unwrap();
    assert_ne!(uid, 0, "the test repository should belong to the server's OS user");
    s.backup();
    let user = s.env.owner.as_ref().expect("server OS user").name.clone();
    let out = Command::new("runuser")
        .args(["-u", &user, "--"])
        .arg(&s.env.pgkeep)
        .arg("--repo")
        .arg(&s.repo)
        .arg("--pg")
        .arg(s.pg.conninfo())
        .arg("--pgdata")
        .arg(s.pg.pgdata())
        .args(["backup", "--json"])
        .output()
        .expect("runuser");
    assert!(out.status.success(), "backup as {user}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pgkeep::fsutil::owner_of(&s.repo.join("lock/backup.lock")).unwrap(), (uid, gid));
}

/// Point 14: `repo/` and the config layer use nothing from `backup` (lower modules know nothing
/// of the ones above them).
#[test]
fn repo_and_config_modules_do_not_import_from_backup() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("config.rs")];
    for dir in [src.join("repo"), src.join("config")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "rs") {
                files.push(e.path());
            }
        }
    }
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, l) in text.lines().enumerate() {
            if l.contains("crate::backup") || l.contains("backup::") {
                found.push(format!("{}:{}: {}", f.display(), n + 1, l.trim()));
            }
        }
    }
    assert!(found.is_empty(), "lower modules import from backup:\n{}", found.join("\n"));
}
