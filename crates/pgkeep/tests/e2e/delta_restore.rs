//! Delta restore (issue 12, acceptance 4): `restore --delta --to EXISTING_PGDATA` refreshes a
//! stopped copy of the same cluster writing only what differs, rewinds a diverged former
//! primary, and refuses running servers, other clusters' directories and non-data directories
//! before writing anything.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use std::process::Stdio;

use pgkeep_testkit::{ClusterOptions, PgkeepCmd, TestCluster};
use serde_json::Value;

use crate::common::{read_manifest, Setup};
use crate::snapshot_util::amcheck;

/// Every path below `dir` (links not followed): kind, mode, size and BLAKE3 of the content.
fn fingerprint(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let what = if md.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                walk(root, &p, out);
                format!("dir {:o}", md.mode())
            } else {
                let h = blake3::hash(&std::fs::read(&p).unwrap_or_default());
                format!("file {:o} {} {}", md.mode(), md.len(), h.to_hex())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Per table of schema public: row count and a checksum over all columns of all rows.
fn table_sums(c: &TestCluster) -> BTreeMap<String, String> {
    let tables = c.column("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1");
    tables
        .into_iter()
        .map(|t| {
            let sum = c.scalar(&format!(
                "SELECT count(*) || ':' || md5(coalesce(string_agg(md5(x::text), '' ORDER BY md5(x::text)), '')) FROM {t} x"
            ));
            (t, sum)
        })
        .collect()
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    gone.id()
}

/// Run with --json; returns the report and the bytes the process passed to write calls
/// (`wchar` of /proc/PID/io, read once it has exited but before it is reaped): a count
/// independent of what pgkeep reports. (`write_bytes` is no such count: the kernel charges a
/// whole large folio of page cache for one dirtied block.)
fn json_counting_writes(c: PgkeepCmd) -> (Value, u64) {
    let mut c = c.arg("--json");
    let child = c.command().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pgkeep");
    // SAFETY: waitid fills the zeroed siginfo we own; WNOWAIT leaves the child unreaped.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::waitid(libc::P_PID, child.id(), &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    let io = std::fs::read_to_string(format!("/proc/{}/io", child.id())).expect("read /proc/PID/io");
    let wchar = io
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wchar in {io}"));
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "delta restore failed: {stderr}");
    (serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")), wchar)
}

/// WAL segment files (and anything else but archive_status) in `pgdata`'s pg_wal.
fn wal_files(pgdata: &Path) -> Vec<String> {
    std::fs::read_dir(pgdata.join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "archive_status")
        .collect()
}

/// Paths below `dir` owned by root (a server running as its owner could not open them).
fn root_owned(dir: &Path) -> Vec<String> {
    fingerprint(dir)
        .keys()
        .filter(|rel| std::fs::symlink_metadata(dir.join(rel)).unwrap().uid() == 0)
        .cloned()
        .collect()
}

/// A source (of `major`, default Debian's) with table t (50 000 rows) and its backup A.
fn table_t_backed_up(major: Option<u32>) -> (Setup, String) {
    let s = Setup::with(|o| match major {
        Some(m) => o.major(m),
        None => o,
    });
    s.pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g;",
    );
    let a = s.backup();
    (s, a)
}

fn delta(s: &Setup, dir: &Path, extra: &[&str]) -> Value {
    let mut c = s.pgkeep(["restore", "--delta", "--to"]).arg(dir);
    for a in extra {
        c = c.arg(a);
    }
    c.json()
}

/// A copy one 1 %-change behind (UPDATEs over the tables, a new table, a dropped table, a
/// table in a mapped tablespace, a marker) is refreshed writing at most 5 % of the database's
/// bytes — counted by pgkeep and by the kernel — and then equals the source.
#[test]
fn delta_restore_refreshes_a_copy_one_change_behind_writing_few_bytes() {
    let s = Setup::new();
    s.pg.pgbench(&["-i", "-q", "-s", "5"]);
    let ts_src = s.env.owned_dir("ts_src");
    s.pg.sql(&format!("CREATE TABLESPACE ts1 LOCATION '{}'", ts_src.display()));
    s.pg.sql(
        "CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts1;
         INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE TABLE to_drop (id int PRIMARY KEY, v text);
         INSERT INTO to_drop SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    );
    s.pg.sql("VACUUM ANALYZE");
    let oid = s.pg.int("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let dropped_file = s.pg.scalar("SELECT pg_relation_filepath('to_drop')");
    let a = s.backup();

    let copy = s.env.path("copy_data");
    let ts_copy = s.env.path("ts_copy");
    let map = format!("{oid}={}", ts_copy.display());
    s.restore(&copy, &["--backup", &a, "--tablespace-map", &map]);
    s.env.chown(&ts_copy);
    let mut c = s.start_restored("copy", &copy);
    c.wait_promoted();
    c.stop();
    assert!(copy.join(&dropped_file).is_file(), "the copy has the table dropped later");
    assert!(!wal_files(&copy).is_empty(), "the copy's own WAL is in its pg_wal");

    // About 1 % of the accounts' blocks: ten runs of 500 consecutive rows.
    for start in (1..=500_000).step_by(50_000) {
        s.pg.sql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid BETWEEN {start} AND {}",
            start + 499
        ));
    }
    s.pg.sql(
        "UPDATE pgbench_tellers SET tbalance = tbalance + 1;
         UPDATE pgbench_branches SET bbalance = bbalance - 1;
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 7, now());
         UPDATE in_ts SET v = 'changed' WHERE id BETWEEN 5000 AND 5100;
         CREATE TABLE added (id int PRIMARY KEY, v text);
         INSERT INTO added SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         DROP TABLE to_drop;
         CREATE TABLE marker (note text);
         INSERT INTO marker VALUES ('after backup A');",
    );
    let b = s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let db_bytes = s.pg.int("SELECT sum(pg_database_size(oid)) FROM pg_database") as u64;
    let source = table_sums(&s.pg);

    // A pid file left by a crash names a process that no longer exists: stale, not running.
    let gone_pid = dead_pid();
    std::fs::write(
        copy.join("postmaster.pid"),
        format!("{gone_pid}\n{}\n0\n5432\n/tmp\n\n  0 2147483000\nready\n", copy.display()),
    )
    .unwrap();

    // Without the map the tablespace would go to its original location, the source's.
    let before = fingerprint(&copy);
    let out = s.pgkeep(["restore", "--delta", "--backup", &b, "--to"]).arg(&copy).fails();
    let line = out.one_error_line();
    assert!(line.contains(&format!("tablespace {oid}")) && line.contains(&ts_src.display().to_string()), "{line}");
    assert_eq!(fingerprint(&copy), before);

    let cmd = s.pgkeep(["restore", "--delta", "--to"]).arg(&copy);
    let (r, wchar) = json_counting_writes(cmd.arg("--backup").arg(&b).arg("--tablespace-map").arg(&map));
    eprintln!("{r:#}\nwrite(2) bytes of the process: {wchar}, database: {db_bytes}");
    let written = r["bytes_written"].as_u64().unwrap();
    let limit = db_bytes / 20;
    assert!(written <= limit, "bytes_written {written} > 5 % of {db_bytes}");
    assert!(wchar <= limit, "the kernel counted {wchar} bytes passed to write calls > 5 % of {db_bytes}");
    assert!(written > 0, "{r:#}");
    for k in ["files_changed", "files_created", "files_removed", "files_unchanged"] {
        assert!(r[k].as_u64().unwrap() > 0, "{k}: {r:#}");
    }
    assert_eq!(r["backup"], b.as_str());

    assert!(!copy.join(&dropped_file).exists(), "the dropped table's file must be gone");
    assert!(wal_files(&copy).is_empty(), "old WAL left in pg_wal: {:?}", wal_files(&copy));
    assert!(!copy.join("postmaster.pid").exists());
    assert!(copy.join("backup_label").is_file() && copy.join("recovery.signal").is_file());
    assert_eq!(std::fs::read_link(copy.join(format!("pg_tblspc/{oid}"))).unwrap(), ts_copy);
    if pgkeep::fsutil::running_as_root() {
        assert_eq!(root_owned(&copy), Vec::<String>::new());
        assert_eq!(root_owned(&ts_copy), Vec::<String>::new());
    }

    let c = s.start_restored("copy2", &copy);
    c.wait_promoted();
    assert_eq!(table_sums(&c), source);
    assert_eq!(c.scalar("SELECT note FROM marker"), "after backup A");
    assert_eq!(c.scalar("SELECT to_regclass('to_drop') IS NULL"), "t");
    assert_eq!(amcheck(&c), Vec::<String>::new());
    let rel = c.scalar("SELECT pg_relation_filepath('in_ts')");
    let (_, tail) = rel.split_once(&format!("pg_tblspc/{oid}/")).expect("in the tablespace");
    assert!(ts_copy.join(tail).is_file());
}

/// A restored copy that was promoted and written to (a former primary on its own timeline) is
/// rewound by a delta restore from the original's backup: its WAL is not replayed, its
/// writes are gone, and it equals the source.
#[test]
fn delta_restore_rewinds_a_diverged_former_primary() {
    rewind_a_diverged_former_primary(None);
}

/// The same on the oldest and the newest supported major (issue 12, acceptance 5).
#[test]
fn delta_restore_rewinds_a_diverged_former_primary_pg14() {
    rewind_a_diverged_former_primary(Some(14));
}

#[test]
fn delta_restore_rewinds_a_diverged_former_primary_pg18() {
    rewind_a_diverged_former_primary(Some(18));
}

fn rewind_a_diverged_former_primary(major: Option<u32>) {
    let (s, a) = table_t_backed_up(major);
    if let Some(m) = major {
        assert_eq!(s.pg.int("SELECT current_setting('server_version_num')::int / 10000"), m as i64);
    }
    let former = s.env.path("former");
    s.restore(&former, &["--backup", &a]);
    let mut f = s.start_restored("former", &former);
    f.wait_promoted();
    f.sql(
        "UPDATE t SET v = 'diverged' WHERE id % 10 = 0;
         INSERT INTO t SELECT g, 'only on the former primary' FROM generate_series(50001, 60000) g;
         CREATE TABLE only_former AS SELECT 1 AS x;
         CHECKPOINT;",
    );
    f.stop();

    s.pg.sql(
        "UPDATE t SET v = 'source' WHERE id % 100 = 1;
         CREATE TABLE marker AS SELECT 'source after A'::text AS note;",
    );
    let b = s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let source = table_sums(&s.pg);

    let r = delta(&s, &former, &["--backup", &b]);
    assert!(r["files_changed"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["files_removed"].as_u64().unwrap() > 0, "{r:#}");
    assert!(wal_files(&former).is_empty(), "the diverged WAL must not stay: {:?}", wal_files(&former));

    let c = s.start_restored("rewound", &former);
    c.wait_promoted();
    assert_eq!(table_sums(&c), source);
    assert_eq!(c.int("SELECT count(*) FROM t WHERE v IN ('diverged', 'only on the former primary')"), 0);
    assert_eq!(c.scalar("SELECT to_regclass('only_former') IS NULL"), "t");
    assert_eq!(c.scalar("SELECT note FROM marker"), "source after A");
    assert_eq!(amcheck(&c), Vec::<String>::new());
}

/// Refused with one line naming why, nothing changed: a running server's directory, another
/// cluster's (initdb'd separately), a directory that is no data directory. An empty directory
/// gets a plain restore.
#[test]
fn delta_restore_refuses_running_foreign_and_non_data_directories() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g");
    let id = s.backup();

    let copy = s.env.path("copy");
    s.restore(&copy, &["--backup", &id]);
    let mut c = s.env.cluster_on("copy", &copy);
    c.set("archive_mode", "off").set("autovacuum", "off");
    c.start();
    c.wait_promoted();
    // An idle server with nothing dirty writes nothing to its directory.
    c.sql("CHECKPOINT");
    let before = fingerprint(&copy);
    let out = s.pgkeep(["restore", "--delta", "--backup", &id, "--to"]).arg(&copy).fails();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = out.one_error_line();
    assert!(line.contains("a server is running on it") && line.contains(&copy.display().to_string()), "{line}");
    assert_eq!(fingerprint(&copy), before, "a refused delta restore changed the running server's directory");
    c.stop();

    // Stopped, but a pid file of a dead postmaster whose shared memory is still attached
    // (backends that outlived a killed postmaster): PostgreSQL itself would refuse to start.
    // SAFETY: a private segment, attached by this process only, removed below.
    let shmid = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
    assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
    let at = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
    assert_ne!(at as isize, -1, "shmat: {}", std::io::Error::last_os_error());
    let pid_file = format!("{}\n{}\n0\n5432\n/tmp\n\n  0 {shmid}\nready\n", dead_pid(), copy.display());
    std::fs::write(copy.join("postmaster.pid"), pid_file).unwrap();
    let before = fingerprint(&copy);
    let out = s.pgkeep(["restore", "--delta", "--backup", &id, "--to"]).arg(&copy).fails();
    let line = out.one_error_line();
    assert!(line.contains(&format!("shared memory segment {shmid}")) && line.contains("attached"), "{line}");
    assert_eq!(fingerprint(&copy), before);
    unsafe {
        libc::shmdt(at);
        libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
    }

    let other = s.env.cluster("other", ClusterOptions::default());
    let before = fingerprint(other.pgdata());
    let out = s.pgkeep(["restore", "--delta", "--backup", &id, "--to"]).arg(other.pgdata()).fails();
    let line = out.one_error_line();
    assert!(line.contains("another cluster") && line.contains("system identifier"), "{line}");
    assert_eq!(fingerprint(other.pgdata()), before);

    let stray = s.env.path("stray");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("notes.txt"), "not a database").unwrap();
    let before = fingerprint(&stray);
    let out = s.pgkeep(["restore", "--delta", "--backup", &id, "--to"]).arg(&stray).fails();
    assert!(out.one_error_line().contains("neither empty nor a PostgreSQL data directory"), "{}", out.stderr);
    assert_eq!(fingerprint(&stray), before);

    let empty = s.env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let r = delta(&s, &empty, &["--backup", &id]);
    assert_eq!(r["files_created"], r["files"], "{r:#}");
    assert_eq!(r["bytes_written"], r["size"], "{r:#}");
    assert!(empty.join("global/pg_control").is_file() && empty.join("backup_label").is_file());
}

/// A damaged object met half-way fails with one line naming the file; the directory is left
/// without pg_control (PostgreSQL refuses to start on it), and once the repository is intact
/// again a second run finishes the job.
#[test]
fn interrupted_delta_restore_leaves_an_unstartable_directory_and_a_rerun_finishes() {
    let (s, a) = table_t_backed_up(None);
    let copy = s.env.path("copy_data");
    s.restore(&copy, &["--backup", &a]);
    s.pg.sql("UPDATE t SET v = 'changed' WHERE id BETWEEN 100 AND 300");
    let b = s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let source = table_sums(&s.pg);

    // Damage the middle of t's frame in backup B.
    let rel = s.pg.scalar("SELECT pg_relation_filepath('t')");
    let m = read_manifest(&s.repo, &b);
    let e = m["entries"].as_array().unwrap().iter().find(|e| e["path"] == rel.as_str()).expect("t in the manifest");
    let object = m["objects"][e["object"].as_u64().unwrap() as usize]["name"].as_str().unwrap();
    let key = s.repo.join(pgkeep::repo::layout::data_key(&b, object));
    let good = std::fs::read(&key).unwrap();
    let mut bad = good.clone();
    let at = (e["offset"].as_u64().unwrap_or(0) + e["length"].as_u64().unwrap() / 2) as usize;
    bad[at] ^= 0x5a;
    std::fs::write(&key, &bad).unwrap();

    let out = s.pgkeep(["restore", "--delta", "--backup", &b, "--to"]).arg(&copy).fails();
    let line = out.one_error_line();
    assert!(line.contains(&rel) && line.contains("will not start"), "{line}");
    assert!(!copy.join("global/pg_control").exists(), "pg_control must stay away until the end");

    std::fs::write(&key, &good).unwrap();
    let r = delta(&s, &copy, &["--backup", &b]);
    assert!(r["files_changed"].as_u64().unwrap() > 0, "{r:#}");
    let c = s.start_restored("copy", &copy);
    c.wait_promoted();
    assert_eq!(table_sums(&c), source);
}

/// The path strace (-y) shows for the fd that `call`'s first argument names on `line`.
fn traced_fd_path<'l>(line: &'l str, call: &str) -> Option<&'l str> {
    let rest = &line[line.find(&format!("{call}("))? + call.len() + 1..];
    let start = rest.find('<')? + 1;
    Some(&rest[start..start + rest[start..].find('>')?])
}

/// Durability order, traced with strace: every file written is fsynced after its last write,
/// with its directory, all before pg_control is renamed into place; then `global/` is fsynced.
#[test]
fn delta_restore_fsyncs_every_changed_file_and_directory_before_pg_control() {
    let (s, a) = table_t_backed_up(None);
    let copy = s.env.path("copy_data");
    s.restore(&copy, &["--backup", &a]);
    s.pg.sql("UPDATE t SET v = 'changed' WHERE id BETWEEN 100 AND 300; CREATE TABLE t2 AS SELECT 1 AS x");
    let b = s.backup();

    let trace = s.env.path("strace.txt");
    let mut c = s.pgkeep(["restore", "--delta", "--backup", &b, "--to"]).arg(&copy);
    let cmd = c.command();
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-s", "512", "-e", "trace=pwrite64,fsync,fdatasync,rename,renameat,renameat2", "-o"])
        .arg(&trace)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()
        .expect("strace (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = t.lines().collect();
    let publish = lines
        .iter()
        .rposition(|l| {
            l.contains("rename") && l.contains("pg_control.pgkeep-restore\", ") && l.contains("/global/pg_control\"")
        })
        .unwrap_or_else(|| panic!("pg_control was not renamed into place:\n{t}"));
    let fsynced =
        |path: &str, after: usize| lines[after..publish].iter().any(|l| traced_fd_path(l, "fsync") == Some(path));
    let mut last_write: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(p) = traced_fd_path(l, "pwrite64") {
            assert!(i < publish, "{p} written after pg_control was published");
            last_write.insert(p, i);
        }
    }
    assert!(last_write.len() >= 3, "too few files written to judge: {last_write:?}");
    for (path, at) in &last_write {
        assert!(fsynced(path, *at), "{path} not fsynced after its last write and before pg_control");
        let dir = Path::new(path).parent().unwrap().display().to_string();
        assert!(fsynced(&dir, 0), "directory {dir} not fsynced before pg_control");
    }
    let global = copy.join("global").display().to_string();
    assert!(
        lines[publish..].iter().any(|l| traced_fd_path(l, "fsync") == Some(global.as_str())),
        "global/ not fsynced after pg_control was published"
    );
}

/// On an S3 repository (moto): each changed file's content comes from a ranged read of its
/// object, and the refreshed copy equals the source.
#[cfg(feature = "s3")]
#[test]
fn delta_restore_from_an_s3_repository() {
    use crate::object_stores::StoreSetup;
    use pgkeep_testkit::{S3Server, S3Store};

    let env = crate::common::env();
    let store = S3Store::start_on(&env, S3Server::Moto, "pgkeep-test", "");
    let s = StoreSetup::new(env, store, "db1/delta", &[]);
    s.pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g;",
    );
    let id = |r: Value| r["id"].as_str().unwrap().to_string();
    let a = id(s.json(s.cmd(&["backup"])));
    let copy = s.env.path("copy_data");
    s.json(s.cmd(&["restore", "--backup", &a, "--to", copy.to_str().unwrap()]));
    s.pg.sql("UPDATE t SET v = 'changed' WHERE id BETWEEN 100 AND 300; CREATE TABLE t2 AS SELECT 1 AS x");
    let b = id(s.json(s.cmd(&["backup"])));
    s.switch_and_wait_archived();
    let source = table_sums(&s.pg);

    let r = s.json(s.cmd(&["restore", "--delta", "--backup", &b, "--to", copy.to_str().unwrap()]));
    assert!(r["files_changed"].as_u64().unwrap() > 0 && r["files_created"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["bytes_written"].as_u64().unwrap() < r["size"].as_u64().unwrap() / 4, "{r:#}");
    let c = s.start_restored("copy", &copy);
    c.wait_promoted();
    assert_eq!(table_sums(&c), source);
}

/// A delta restore of an incremental backup assembles each differing file from the chain
/// (full + changed blocks) and compares it with the copy: the copy, one change behind the
/// incremental, ends equal to the source with only part of the database written.
#[test]
fn delta_restore_of_an_incremental_backup_equals_the_source() {
    let (s, a) = table_t_backed_up(None);
    let copy = s.env.path("copy_data");
    s.restore(&copy, &["--backup", &a]);
    let mut c = s.start_restored("copy", &copy);
    c.wait_promoted();
    c.stop();

    s.pg.sql(
        "UPDATE t SET v = 'changed' WHERE id BETWEEN 20000 AND 20400;
         CREATE TABLE marker (note text);
         INSERT INTO marker VALUES ('in the incremental');",
    );
    let incr = s.pgkeep(["backup", "--type", "incr"]).json();
    assert_eq!(incr["type"], "incr", "{incr:#}");
    assert_eq!(incr["reference"], a.as_str(), "{incr:#}");
    let b = incr["id"].as_str().unwrap().to_string();
    s.pg.switch_and_wait_archived(&s.repo);
    let source = table_sums(&s.pg);
    let db_bytes = s.pg.int("SELECT sum(pg_database_size(oid)) FROM pg_database") as u64;

    let r = delta(&s, &copy, &["--backup", &b]);
    let written = r["bytes_written"].as_u64().unwrap();
    assert!(r["files_changed"].as_u64().unwrap() > 0, "{r:#}");
    assert!(written < db_bytes / 4, "bytes_written {written} of a {db_bytes}-byte database: {r:#}");

    let c = s.start_restored("copy2", &copy);
    c.wait_promoted();
    assert_eq!(table_sums(&c), source);
    assert_eq!(c.scalar("SELECT note FROM marker"), "in the incremental");
    assert_eq!(amcheck(&c), Vec::<String>::new());
}
