//! `pgkeep verify --pgdata` on copies of data directories (issue 5, acceptance 2, 3, 4):
//! crash-inconsistent copies made the way the field reports describe, an index damaged on
//! purpose, and the promise that the given directory is never modified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgkeep_testkit::{Load, TestCluster};

use crate::common::Setup;
use crate::verify::{assert_nothing_left, check, scratch_parent};

/// Copy a directory tree (files, directories, symlinks), optionally skipping top-level names.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let ft = e.file_type().unwrap();
        let dest = to.join(&name);
        if ft.is_dir() {
            copy_tree(&e.path(), &dest, &[]);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else if ft.is_file() {
            // A file may vanish while a live server runs (temp files); the copy is crash-style.
            let _ = std::fs::copy(e.path(), &dest);
        }
    }
}

/// Every file under `dir` with its size, mode, mtime and content hash.
fn fingerprint(dir: &Path) -> BTreeMap<String, (u64, u32, i64, u64)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            if m.is_file() {
                std::fs::read(e.path()).unwrap().hash(&mut h);
            }
            out.insert(
                e.path().display().to_string(),
                (m.len(), m.mode(), m.mtime_nsec() + m.mtime() * 1_000_000_000, h.finish()),
            );
        }
    }
    out
}

/// The failed checks' first errors, for the test log (what the damage looked like).
fn show(title: &str, r: &serde_json::Value) {
    println!("{title}: {}", r["summary"]);
    for c in r["checks"].as_array().unwrap().iter().filter(|c| c["status"] == "failed") {
        println!("  {}: {}", c["name"], c["detail"]);
        for e in c["errors"].as_array().unwrap().iter().take(4) {
            println!("    {}", e.as_str().unwrap_or(""));
        }
    }
}

pub(crate) fn errors(c: &serde_json::Value) -> String {
    c["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect::<Vec<_>>().join("\n")
}

/// `pgkeep --pgdata DIR verify [--wal-dir W] --json`, expected to fail; returns the report.
pub(crate) fn verify_copy_fails(s: &Setup, dir: &Path, wal_dir: Option<&Path>, parent: &Path) -> serde_json::Value {
    let before = fingerprint(dir);
    let mut c = s.env.pgkeep(["--pgdata"]).arg(dir).arg("verify").arg("--json").arg("--scratch").arg(parent);
    if let Some(w) = wal_dir {
        c = c.arg("--wal-dir").arg(w);
    }
    let out = c.fails();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(before, fingerprint(dir), "verify --pgdata modified {}", dir.display());
    assert_nothing_left(parent);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// A cluster under a steady insert/delete load, its checkpoints under our control.
pub(crate) fn workload_setup(extra: &[(&str, &str)]) -> Setup {
    Setup::with(|mut o| {
        for (k, v) in [("checkpoint_timeout", "1h"), ("max_wal_size", "2GB"), ("autovacuum", "off")] {
            o = o.with(k, v);
        }
        for (k, v) in extra {
            o = o.with(k, v);
        }
        o
    })
}

fn wait_more(load: &Load, n: usize) {
    load.wait_for(load.committed() + n);
}

/// Steps 1-5 of the test below on `s` (a [`workload_setup`]): the data directory copy, the
/// WAL copy, and the id of the pgkeep backup taken under the same load.
pub(crate) fn copy_with_checkpoints_between(s: &Setup) -> (PathBuf, PathBuf, String) {
    s.pg.sql("CREATE TABLE t (id bigserial PRIMARY KEY, payload text NOT NULL, created timestamptz NOT NULL DEFAULT clock_timestamp()); INSERT INTO t (payload) SELECT md5(g::text) FROM generate_series(1, 2000) g; CHECKPOINT;");
    let heap = s.pg.scalar("SELECT pg_relation_filepath('t')");
    let load = Load::inserts_and_deletes(&s.pg, &s.env.rt, "t", 4);
    wait_more(&load, 300);

    // A pgkeep backup of the same workload, while it runs.
    let backup_id = s.backup();

    let wal_copy = s.env.path("wal-volume");
    copy_tree(&s.pg.pgdata().join("pg_wal"), &wal_copy, &[]);
    wait_more(&load, 500);
    s.pg.sql("CHECKPOINT");
    let data_copy = s.env.path("data-volume");
    // Everything but t's heap, pg_control and the commit log: those are copied after B.
    let heap_name = Path::new(&heap).file_name().unwrap().to_string_lossy().into_owned();
    let heap_dir = Path::new(&heap).parent().unwrap().to_path_buf();
    copy_tree(s.pg.pgdata(), &data_copy, &["pg_wal", "pg_xact", "global", "base", "postmaster.pid"]);
    for db in std::fs::read_dir(s.pg.pgdata().join("base")).unwrap().flatten() {
        let rel = Path::new("base").join(db.file_name());
        let skip: Vec<String> = if rel == heap_dir {
            vec![heap_name.clone(), format!("{heap_name}_fsm"), format!("{heap_name}_vm")]
        } else {
            vec![]
        };
        let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
        copy_tree(&db.path(), &data_copy.join(&rel), &skip);
    }
    wait_more(&load, 1000);
    s.pg.sql("CHECKPOINT");
    for suffix in ["", "_fsm", "_vm"] {
        let from = s.pg.pgdata().join(format!("{heap}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, data_copy.join(format!("{heap}{suffix}"))).unwrap();
        }
    }
    copy_tree(&s.pg.pgdata().join("pg_xact"), &data_copy.join("pg_xact"), &[]);
    copy_tree(&s.pg.pgdata().join("global"), &data_copy.join("global"), &[]);
    std::fs::create_dir_all(data_copy.join("pg_wal")).unwrap();
    load.stop();
    s.env.chown(&data_copy);
    s.env.chown(&wal_copy);
    (data_copy, wal_copy, backup_id)
}

/// Acceptance 2: the data directory and pg_wal copied at different moments while inserts and
/// deletes run, with checkpoints in between — as in the field report (an EC2 primary whose
/// volumes were snapshotted one after the other, then forced to start with `pg_resetwal`).
///
/// How the copy is made, and why each signature must appear:
/// 1. `t` holds 2000 rows; CHECKPOINT; a load inserts and deletes rows in `t`.
/// 2. pg_wal is copied (the WAL volume, first).
/// 3. After 500 more commits, CHECKPOINT A: every page dirtied so far is on disk.
/// 4. The data directory is copied file by file while the load runs — here: everything except
///    `t`'s heap, `global/` (pg_control) and `pg_xact` now, so `t_pkey` is copied as of A.
/// 5. After 1000 more commits, CHECKPOINT B flushes `t`'s heap with those rows; the heap,
///    `global/` and `pg_xact` are copied now.
///
/// Damage: (a) as copied, pg_control names checkpoint B, written long after the copied WAL
/// ends, so the server cannot start: `invalid primary checkpoint record` then
/// `PANIC: could not locate a valid checkpoint record` — reported by the `start` check with
/// the server's log lines.
/// (b) "fixed" with `pg_resetwal -f`, the server starts (B's next transaction ID, commit
/// log as of B), and `t`'s heap holds ~750 committed, visible rows inserted after `t_pkey`
/// was copied: amcheck's heapallindexed check names `t_pkey`
/// (`heap tuple (…) from table "t" lacks matching index tuple within index "t_pkey"`). The
/// sequence (copied at A) hands out those ids again: the next inserts duplicate keys.
///
/// A pgkeep backup taken under the same load verifies clean.
#[test]
fn verify_pgdata_crash_inconsistent_copy_with_checkpoints_between_fails_also_after_pg_resetwal() {
    let s = workload_setup(&[]);
    let (data_copy, wal_copy, backup_id) = copy_with_checkpoints_between(&s);

    let parent = scratch_parent(&s.env);
    // (a) As copied: the server cannot start.
    let r = verify_copy_fails(&s, &data_copy, Some(&wal_copy), &parent);
    show("crash-inconsistent copy as copied", &r);
    let start = check(&r, "start");
    assert_eq!(start["status"], "failed", "{r:#}");
    let lines = errors(start);
    assert!(
        lines.contains("could not locate a valid checkpoint record")
            || lines.contains("invalid primary checkpoint record"),
        "{lines}"
    );
    assert!(start["detail"].as_str().unwrap().contains("PANIC"), "{start:#}");
    assert_eq!(check(&r, "amcheck")["status"], "not_run");

    // (b) Forced to start with pg_resetwal, as the field report did.
    let forced = s.env.path("forced");
    copy_tree(&data_copy, &forced, &["pg_wal"]);
    copy_tree(&wal_copy, &forced.join("pg_wal"), &[]);
    s.env.chown(&forced);
    let o = s.pg.owner_tool("pg_resetwal").arg("-f").arg("-D").arg(&forced).output().unwrap();
    assert!(o.status.success(), "pg_resetwal: {}", String::from_utf8_lossy(&o.stderr));
    let r = verify_copy_fails(&s, &forced, None, &parent);
    assert_eq!(check(&r, "start")["status"], "passed", "pg_resetwal makes it start: {r:#}");
    let amcheck = check(&r, "amcheck");
    assert_eq!(amcheck["status"], "failed", "{r:#}");
    let e = errors(amcheck);
    assert!(e.contains("index public.t_pkey on public.t") && e.contains("lacks matching index tuple"), "{e}");
    show("crash-inconsistent copy after pg_resetwal", &r);

    // The pgkeep backup of the same workload is clean.
    let r = s.pgkeep(["verify", backup_id.as_str()]).env("TMPDIR", &parent).json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_nothing_left(&parent);
}

/// Steps 1-4 of the test below on `s` (a [`workload_setup`] with `shared_buffers = 1MB` and
/// `bgwriter_lru_maxpages = 0`): the data directory copy, the WAL copy, and the flush LSN
/// when the WAL was copied.
pub(crate) fn copy_without_checkpoint_between(s: &Setup) -> (PathBuf, PathBuf, String) {
    s.pg.sql("CREATE TABLE t (id bigserial PRIMARY KEY, payload text NOT NULL, created timestamptz NOT NULL DEFAULT clock_timestamp()); INSERT INTO t (payload) SELECT md5(g::text) FROM generate_series(1, 2000) g;");
    s.pg.sql("CREATE TABLE churn AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 50000) g; CREATE INDEX churn_id ON churn (id); CHECKPOINT;");
    let checkpoint_before = s.pg.scalar("SELECT checkpoint_lsn::text FROM pg_control_checkpoint()");
    let load = Load::inserts_and_deletes(&s.pg, &s.env.rt, "t", 4);
    wait_more(&load, 300);
    let wal_copy = s.env.path("wal-volume");
    copy_tree(&s.pg.pgdata().join("pg_wal"), &wal_copy, &[]);
    let copied_at = s.pg.scalar("SELECT pg_current_wal_flush_lsn()::text");
    wait_more(&load, 2000);
    load.stop();
    for _ in 0..2 {
        s.pg.sql("SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(pad) FROM churn WHERE id > 0");
    }
    assert_eq!(
        s.pg.scalar("SELECT checkpoint_lsn::text FROM pg_control_checkpoint()"),
        checkpoint_before,
        "a checkpoint ran between the copies"
    );
    let data_copy = s.env.path("data-volume");
    copy_tree(s.pg.pgdata(), &data_copy, &["pg_wal", "postmaster.pid"]);
    std::fs::create_dir_all(data_copy.join("pg_wal")).unwrap();
    s.env.chown(&data_copy);
    s.env.chown(&wal_copy);
    (data_copy, wal_copy, copied_at)
}

/// Acceptance 3: the data volume copied seconds after the pg_wal volume under write load, no
/// checkpoint in between. Such a copy starts cleanly (`redo done at …`) — and is still reported
/// as failed, by the page-LSN and heap checks, with the relations named.
///
/// How the copy is made, and why each signature must appear:
/// 1. `t` holds 2000 rows; CHECKPOINT C (pg_control names C; C is in every copy below).
/// 2. A load inserts and deletes rows in `t`; pg_wal is copied (the WAL volume, first).
/// 3. 2000 more commits, then the load stops. No checkpoint runs (checkpoint_timeout 1h,
///    max_wal_size 2GB), but shared_buffers is tiny (1MB) and an index scan over a 1500-page
///    table pushes every dirty buffer out: `t`'s heap and `t_pkey` pages changed after the WAL
///    copy reach the disk, each after its WAL was flushed — WAL the copy does not have.
/// 4. The data directory is copied.
///
/// Damage: crash recovery replays C … end of the copied WAL and the server starts. But the
/// rightmost `t_pkey` leaf and `t`'s newest heap pages carry LSNs beyond that end (page-LSN
/// check, both named); heap pages created after the WAL copy have no full-page image in it,
/// so replay leaves them as copied: their rows' xmin is beyond the next transaction ID the
/// recovered server knows (horizon check names `t`).
#[test]
fn verify_pgdata_copy_without_checkpoint_between_starts_but_fails_page_lsn_and_horizon() {
    let s = workload_setup(&[("shared_buffers", "1MB"), ("bgwriter_lru_maxpages", "0")]);
    let (data_copy, wal_copy, copied_at) = copy_without_checkpoint_between(&s);

    let parent = scratch_parent(&s.env);
    let r = verify_copy_fails(&s, &data_copy, Some(&wal_copy), &parent);
    show(&format!("copy without checkpoint between (WAL copied at about {copied_at})"), &r);
    let start = check(&r, "start");
    assert_eq!(start["status"], "passed", "the copy starts cleanly: {r:#}");
    assert!(start["detail"].as_str().unwrap().contains("redo done at"), "{start:#}");
    let page = check(&r, "page_lsn");
    assert_eq!(page["status"], "failed", "{r:#}");
    let e = errors(page);
    assert!(e.contains("relation public.t ("), "{e}");
    assert!(e.contains("relation public.t_pkey ("), "{e}");
    let horizon = check(&r, "xid_horizon");
    assert_eq!(horizon["status"], "failed", "{r:#}");
    assert!(errors(horizon).contains("table public.t "), "{horizon:#}");
    // Whatever amcheck says (bt_index_check passes such copies), the copy is reported failed.
    assert_eq!(r["ok"], false);
}

/// Acceptance 4: an index corrupted on purpose in a restored copy (bytes of one leaf page
/// overwritten with the server stopped) is reported by name; so are duplicate keys smuggled
/// past a primary key.
#[test]
fn verify_pgdata_names_a_corrupted_index_and_duplicate_keys() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL); CREATE INDEX accounts_owner ON accounts (owner); INSERT INTO accounts SELECT g, 'owner ' || g FROM generate_series(1, 20000) g;");
    s.pg.sql("CREATE TABLE tags (id int PRIMARY KEY, tag text); INSERT INTO tags SELECT g, 'tag' FROM generate_series(1, 100) g;");
    s.backup();
    s.pg.switch_and_wait_archived(&s.repo);
    let restored = s.env.path("restored");
    s.restore(&restored, &[]);
    let mut copy: TestCluster = s.start_restored("restored", &restored);
    copy.wait_promoted();
    let file = copy.scalar("SELECT pg_relation_filepath('accounts_owner')");
    // A duplicate key the primary key cannot see: the index is marked non-unique for a moment.
    copy.sql("UPDATE pg_index SET indisunique = false WHERE indexrelid = 'tags_pkey'::regclass");
    copy.sql("INSERT INTO tags VALUES (7, 'again')");
    copy.sql("UPDATE pg_index SET indisunique = true WHERE indexrelid = 'tags_pkey'::regclass");
    copy.sql("CHECKPOINT");
    copy.stop();
    // Overwrite 1 KiB in the middle of block 1 (a leaf; block 0 is the metapage).
    let path = restored.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 2 * 8192);
    for b in &mut bytes[8192 + 3000..8192 + 4024] {
        *b = 0x7f;
    }
    std::fs::write(&path, &bytes).unwrap();
    std::thread::sleep(Duration::from_millis(10));

    let parent = scratch_parent(&s.env);
    let r = verify_copy_fails(&s, &restored, None, &parent);
    let amcheck = check(&r, "amcheck");
    assert_eq!(amcheck["status"], "failed", "{r:#}");
    let e = errors(amcheck);
    assert!(e.contains("index public.accounts_owner on public.accounts"), "{e}");
    let unique = check(&r, "unique");
    assert_eq!(unique["status"], "failed", "{r:#}");
    assert!(
        errors(unique).contains("duplicate key in public.tags_pkey on public.tags: (7) occurs 2 times"),
        "{unique:#}"
    );
    assert_eq!(check(&r, "clone")["status"], "passed");
    assert_eq!(r["source"]["kind"], "pgdata");
    drop(copy);
}

/// A loop-mounted btrfs file system, unmounted on drop (root only).
struct Btrfs {
    mnt: std::path::PathBuf,
}

impl Btrfs {
    fn new(dir: &Path) -> Option<Btrfs> {
        if !pgkeep::fsutil::running_as_root() {
            return None;
        }
        let img = dir.join("btrfs.img");
        let mnt = dir.join("btrfs");
        std::fs::create_dir_all(&mnt).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(512 << 20).unwrap();
        let ok = |c: &mut std::process::Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if !ok(std::process::Command::new("mkfs.btrfs").arg("-q").arg(&img))
            || !ok(std::process::Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&mnt))
        {
            return None;
        }
        pgkeep::fsutil::set_mode(&mnt, 0o755).unwrap();
        Some(Btrfs { mnt })
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).output();
    }
}

/// `verify --pgdata` on btrfs clones the copy with FICLONE (reflinks: no data copied) into a
/// scratch directory beside it, and leaves the source untouched. Root only (loop mount); it
/// says so and passes without root or btrfs-progs.
#[test]
fn verify_pgdata_on_btrfs_uses_reflink_clones_root_only() {
    let env = crate::common::env();
    let Some(fs) = Btrfs::new(env.root()) else {
        eprintln!("skipped: needs root and btrfs-progs for a loop-mounted btrfs");
        return;
    };
    let home = fs.mnt.join("pg");
    std::fs::create_dir_all(&home).unwrap();
    env.chown(&home);
    let pgdata = home.join("data");
    {
        let mut inst = pgkeep::pg::Instance::new(
            env.bin.clone(),
            &pgdata,
            &home,
            pgkeep::pg::instance::free_port(),
            env.owner.clone(),
        );
        inst.initdb(&pgkeep::pg::instance::InitdbOptions { data_checksums: true, wal_segsize_mb: None }).unwrap();
        inst.start(Duration::from_secs(60)).unwrap();
        let rt = &env.rt;
        let c = rt.block_on(inst.conn("postgres").connect()).unwrap();
        rt.block_on(c.simple("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; ALTER TABLE t ADD PRIMARY KEY (id)")).unwrap();
        drop(c);
        inst.stop(pgkeep::pg::StopMode::Fast).unwrap();
    }
    let before = fingerprint(&pgdata);
    let r = env.pgkeep(["--pgdata"]).arg(&pgdata).arg("verify").json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["source"]["clone_method"], "reflink", "{r:#}");
    assert_eq!(before, fingerprint(&pgdata));
    // The scratch directory went beside the copy (same file system) and is gone.
    let left: Vec<_> = std::fs::read_dir(&fs.mnt)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgkeep-verify-"))
        .collect();
    assert!(left.is_empty());
    let left: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgkeep-verify-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A restored base backup that was never started (`backup_label`, `recovery.signal`, empty
/// pg_wal) is drilled through its archive: the clone keeps `recovery.signal`, so the drill's
/// server fetches WAL with the copy's own `restore_command`. Without it the server would find
/// no checkpoint record and the drill would fail a good copy.
#[test]
fn verify_pgdata_on_a_fresh_restore_recovers_through_the_archive() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; ALTER TABLE t ADD PRIMARY KEY (id);");
    s.backup();
    s.pg.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(20001, 20500) g");
    s.pg.switch_and_wait_archived(&s.repo);
    let dir = s.env.path("fresh");
    s.restore(&dir, &[]);
    s.env.chown(&dir);
    let parent = scratch_parent(&s.env);
    let before = fingerprint(&dir);
    let out = s.env.pgkeep(["--pgdata"]).arg(&dir).arg("verify").arg("--json").arg("--scratch").arg(&parent).run();
    let r: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {} {}", out.stdout, out.stderr));
    show("fresh restore", &r);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(r["ok"], true);
    assert_eq!(before, fingerprint(&dir), "verify --pgdata modified {}", dir.display());
    assert_nothing_left(&parent);
}
