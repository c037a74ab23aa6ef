//! Issue 8, points 1, 4 and 8 (first part): archive-get's exit status tells PostgreSQL the truth
//! (1 only for "no such file", 126 for everything else), a re-push never trusts an unverified
//! stored copy and is durable before it says so, and killed pushes leave no staging files.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use pgkeep::repo::{frame, layout};
use pgkeep_testkit::{PgkeepCmd, TestEnv};

use crate::common::{self, Setup};

fn dev_full() -> File {
    File::options().write(true).open("/dev/full").expect("open /dev/full")
}

fn code(c: PgkeepCmd) -> (Option<i32>, String) {
    let o = c.run();
    (o.code, o.stderr)
}

/// An archived segment and an intact copy of it at `work/<name>`.
fn archived_segment(s: &Setup) -> (String, PathBuf) {
    s.pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let work = s.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let p = work.join(&seg);
    s.pgkeep(["archive-get", &seg]).arg(&p).ok();
    (seg, p)
}

fn archive_get(env: &TestEnv, repo: &Path, name: &str, dest: &Path) -> PgkeepCmd {
    env.pgkeep(["--repo"]).arg(repo).arg("archive-get").arg(name).arg(dest)
}

/// PostgreSQL ends recovery on any restore_command status up to 125; nothing here is "no such
/// file", so each must be 126: a repository that is not there, a bad config file, a bad command
/// line, and a panic (stderr on a full device makes the error line's print panic).
#[test]
fn archive_get_without_a_usable_repository_or_config_exits_126() {
    let env = common::env();
    let dest = env.path("x");
    let seg = "000000010000000000000001";
    let (c, err) = code(archive_get(&env, Path::new("/nonexistent"), seg, &dest));
    assert_eq!(c, Some(126), "an unopened repository is not 'no such file': {err}");
    assert!(err.contains("/nonexistent"), "{err}");

    let cfg = env.path("bad.toml");
    std::fs::write(&cfg, "bogus_key = 1\n").unwrap();
    let (c, err) = code(
        env.pgkeep(["--config"]).arg(&cfg).arg("--repo").arg("/nonexistent").arg("archive-get").arg(seg).arg(&dest),
    );
    assert_eq!(c, Some(126), "a config error under restore_command must stop recovery: {err}");

    let (c, err) = code(env.pgkeep(["--repo", "/nonexistent", "archive-get", seg]));
    assert_eq!(c, Some(126), "a parse error under restore_command must stop recovery: {err}");
    let (c, _) = code(env.pgkeep(["archive-get", "--help"]));
    assert_eq!(c, Some(0), "--help is not an error");

    let mut c = archive_get(&env, Path::new("/nonexistent"), seg, &dest);
    c.command().stderr(dev_full());
    assert_eq!(c.run().code, Some(126), "a panic (printing to a full stderr) must stop recovery");
    assert!(!dest.exists());
}

#[test]
fn archive_get_exits_1_only_for_a_missing_file_and_126_otherwise() {
    let s = Setup::new();
    let (seg, good) = archived_segment(&s);
    let out = s.env.path("out");
    std::fs::create_dir_all(&out).unwrap();

    let (c, err) = code(archive_get(&s.env, &s.repo, "0000000100000000000000FE", &out.join("a")));
    assert_eq!(c, Some(1), "{err}");
    let (c, err) = code(archive_get(&s.env, &s.repo, "00000009.history", &out.join("a")));
    assert_eq!(c, Some(1), "{err}");
    assert!(!out.join("a").exists());

    // restore_command with %p where %f belongs: not a name pgkeep could hold.
    let (c, err) = code(archive_get(&s.env, &s.repo, "pg_wal/RECOVERYXLOG", &out.join("a")));
    assert_eq!(c, Some(126), "{err}");

    let (c, err) = code(archive_get(&s.env, &s.repo, &seg, &out.join("no/such/dir/x")));
    assert_eq!(c, Some(126), "a destination that cannot be written must stop recovery: {err}");
    let (c, err) = code(archive_get(&s.env, &s.repo, &seg, Path::new("/dev/full")));
    assert_eq!(c, Some(126), "ENOSPC on the destination must stop recovery: {err}");
    assert!(err.contains("/dev/full"), "{err}");

    let dest = out.join("RECOVERYXLOG");
    let mut c = archive_get(&s.env, &s.repo, &seg, &dest);
    c.command().stdout(dev_full());
    let o = c.run();
    assert_eq!(o.code, Some(126), "a failed report write is an error, not a panic (101): {}", o.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&good).unwrap(), "the file was restored");
    let temps: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains("pgkeep-tmp"))
        .collect();
    assert!(temps.is_empty(), "no temp file is left behind: {temps:?}");

    // Something that is not an object where the segment belongs is damage, not absence.
    let name = "0000000100000000000000FD";
    std::fs::create_dir(s.repo.join(layout::wal_key(name))).unwrap();
    let (c, err) = code(archive_get(&s.env, &s.repo, name, &out.join("a")));
    assert_eq!(c, Some(126), "{err}");

    // A repository whose pgkeep.info cannot be read is not one that holds no such file.
    let info = s.repo.join(layout::INFO_KEY);
    std::fs::rename(&info, s.env.path("info.saved")).unwrap();
    std::fs::create_dir(&info).unwrap();
    let (c, err) = code(archive_get(&s.env, &s.repo, "0000000100000000000000FE", &out.join("b")));
    assert_eq!(c, Some(126), "{err}");
}

/// Needs root: runs archive-get as the server's OS user against a pgkeep.info it cannot read.
#[test]
fn archive_get_with_an_unreadable_repository_info_exits_126_root() {
    pgkeep_testkit::volumes::require_root("reading as another user");
    let s = Setup::new();
    let owner = s.env.owner.clone().expect("root runs tests with an OS user for the server");
    let out = s.env.owned_dir("out");
    let info = s.repo.join(layout::INFO_KEY);
    pgkeep::fsutil::set_mode(&info, 0o000).unwrap();
    let mut c = archive_get(&s.env, &s.repo, "0000000100000000000000FE", &out.join("a"));
    c.command().uid(owner.uid).gid(owner.gid);
    let o = c.run();
    assert_eq!(o.code, Some(126), "EACCES on pgkeep.info is not 'no such file': {}", o.stderr);
    assert!(o.one_error_line().contains("pgkeep.info"), "{}", o.stderr);
}

/// A stored copy whose payload rotted must not make a re-push of the good file "already
/// archived": PostgreSQL would then recycle the only good copy.
#[test]
fn repush_over_a_damaged_stored_copy_replaces_it() {
    let s = Setup::new();
    let (seg, good) = archived_segment(&s);
    let obj = s.repo.join(layout::wal_key(&seg));
    let mut b = std::fs::read(&obj).unwrap();
    b[frame::HEADER_LEN + 100] ^= 0x10; // payload, not the trailer that holds the hash
    std::fs::write(&obj, &b).unwrap();

    let o = s.pgkeep(["archive-push"]).arg(&good).ok();
    assert!(o.stdout.contains("replaced a damaged stored copy"), "{}", o.stdout);
    assert!(o.stderr.contains("damaged"), "the replacement is logged: {}", o.stderr);
    let stored = frame::decode(&std::fs::read(&obj).unwrap(), "stored").expect("stored copy decodes");
    assert_eq!(stored, std::fs::read(&good).unwrap());
    let o = s.pgkeep(["archive-push"]).arg(&good).ok();
    assert!(o.stdout.contains("already archived"), "{}", o.stdout);
}

/// "Already archived" is an acknowledgement PostgreSQL recycles on: the object and its
/// directory entry must be on disk first (the push that stored it may still be syncing).
#[test]
fn identical_repush_syncs_the_object_and_its_directory() {
    let s = Setup::new();
    let (seg, good) = archived_segment(&s);
    let trace = s.env.path("strace.txt");
    let mut c = s.pgkeep(["archive-push"]).arg(&good);
    let cmd = c.command();
    let exe = PathBuf::from(cmd.get_program());
    let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
    let st = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(exe)
        .args(args)
        .stdout(Stdio::piped())
        .output()
        .expect("strace (scripts/setup.sh installs it)");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(String::from_utf8_lossy(&st.stdout).contains("already archived"));
    let t = std::fs::read_to_string(&trace).unwrap();
    let obj = s.repo.join(layout::wal_key(&seg));
    let dir = obj.parent().unwrap();
    assert!(t.contains(&format!("<{}>)", obj.display())), "no fsync of the object:\n{t}");
    assert!(t.contains(&format!("<{}>)", dir.display())), "no fsync of its directory:\n{t}");
}

/// A push killed mid-write leaves `<key>#N`; the next push of that segment removes it, but
/// never one a live push is writing (it holds a lock on its staging file).
#[test]
fn push_removes_stale_staging_files_and_keeps_live_ones() {
    let s = Setup::new();
    let (seg, good) = archived_segment(&s);
    let obj = s.repo.join(layout::wal_key(&seg));
    let staging = |n: u32| PathBuf::from(format!("{}#{n}", obj.display()));
    std::fs::write(staging(7), b"half a segment").unwrap();
    std::fs::write(staging(8), b"being written").unwrap();
    let live = File::options().write(true).open(staging(8)).unwrap();
    live.lock().unwrap();

    s.pgkeep(["archive-push"]).arg(&good).ok();
    assert!(!staging(7).exists(), "a killed push's staging file is removed");
    assert!(staging(8).exists(), "a live push's staging file is kept");
    drop(live);

    // The repository-wide clean-up (backup's stale clean-up) finds them anywhere under wal/.
    let other = s.repo.join("wal/0000000500000000/00000005000000000000000A#3");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"x").unwrap();
    s.backup();
    assert!(!other.exists(), "backup removes stale staging files under wal/");
    assert!(!staging(8).exists(), "its writer is gone now");
    assert!(obj.exists());
}
