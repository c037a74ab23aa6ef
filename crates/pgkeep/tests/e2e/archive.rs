//! The WAL archive's guarantees (acceptance 4, invariants 2 and 3).

use std::path::{Path, PathBuf};

use pgkeep_testkit::ClusterOptions;

use crate::common::Setup;

/// A real archived segment, fetched back with archive-get into `dir/<name>`.
fn fetch(s: &Setup, name: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    s.pgkeep(["archive-get", name]).arg(&p).ok();
    p
}

fn assert_refused(s: &Setup, file: &Path, expect: &[&str]) {
    let before = s.archive_snapshot();
    let out = s.pgkeep(["archive-push"]).arg(file).fails();
    let line = out.one_error_line();
    for e in expect {
        assert!(line.contains(e), "expected {e:?} in: {line}");
    }
    assert!(line.contains("hint:"), "the line should say what to do: {line}");
    assert_eq!(s.archive_snapshot(), before, "a refused push must leave the archive unchanged");
}

#[test]
fn identical_repush_succeeds() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let good = fetch(&s, &seg, &s.env.path("work"));
    let before = s.archive_snapshot();
    let out = s.pgkeep(["archive-push"]).arg(&good).ok();
    assert!(out.stdout.contains("already archived"), "{}", out.stdout);
    assert_eq!(s.archive_snapshot(), before);
}

#[test]
fn segment_from_another_cluster_is_refused() {
    let s = Setup::new();
    let mut other = s.env.cluster("other", ClusterOptions::default());
    other.start();
    other.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let name = other.switch_wal();
    let work = s.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let foreign = work.join(&name);
    std::fs::copy(other.pgdata().join("pg_wal").join(&name), &foreign).unwrap();
    assert_refused(&s, &foreign, &[&name, "database system", "another cluster"]);
}

#[test]
fn segment_with_damaged_page_headers_is_refused() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let good = std::fs::read(fetch(&s, &seg, &s.env.path("work"))).unwrap();
    let dir = s.env.path("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(&seg);

    // Bad magic on the third page.
    let mut bad = good.clone();
    bad[2 * 8192] ^= 0xFF;
    std::fs::write(&p, &bad).unwrap();
    assert_refused(&s, &p, &[&seg, "magic"]);

    // A page whose address does not match its place in the file.
    let mut bad = good.clone();
    bad[5 * 8192 + 9] ^= 0x01; // inside xlp_pageaddr
    std::fs::write(&p, &bad).unwrap();
    assert_refused(&s, &p, &[&seg]);

    // Truncated.
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    assert_refused(&s, &p, &[&seg]);

    // Not a WAL file name at all.
    let junk = dir.join("notes.txt");
    std::fs::write(&junk, b"hello").unwrap();
    assert_refused(&s, &junk, &["notes.txt", "not a WAL"]);
}

/// Two servers continuing from the same copy both write segment N; the second one is refused
/// and the first one's copy is kept.
#[test]
fn different_content_under_an_existing_name_is_refused_and_the_stored_copy_kept() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t (v text)");
    let mut src = s.pg;
    let repo = s.repo.clone();
    let env = s.env;
    src.stop();
    let copy_dir = env.path("copy");
    let st = std::process::Command::new("cp").arg("-a").arg(src.pgdata()).arg(&copy_dir).status().unwrap();
    assert!(st.success());
    src.start();
    let mut copy = env.cluster_on("copy", &copy_dir);
    copy.set("archive_mode", "off");
    copy.start();

    src.sql("INSERT INTO t SELECT 'source ' || g FROM generate_series(1, 1000) g");
    copy.sql("INSERT INTO t SELECT 'diverged copy ' || g FROM generate_series(1, 1000) g");
    let seg_src = src.switch_and_wait_archived(&repo);
    let seg_copy = copy.switch_wal();
    assert_eq!(seg_src, seg_copy, "both servers should complete the same segment name");
    let s = Setup { pg: src, repo, env };
    let stored_before = s.archive_snapshot();

    let work = s.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let diverged = work.join(&seg_copy);
    std::fs::copy(copy_dir.join("pg_wal").join(&seg_copy), &diverged).unwrap();
    assert_refused(&s, &diverged, &[&seg_copy, "different", "stored copy is kept"]);
    assert_eq!(s.archive_snapshot(), stored_before);
    // The stored copy is still the source's, not the diverged one.
    let back = fetch(&s, &seg_src, &s.env.path("back"));
    assert_ne!(std::fs::read(back).unwrap(), std::fs::read(&diverged).unwrap());
}

#[test]
fn history_partial_and_backup_files_are_handled() {
    let s = Setup::new();
    s.backup();
    // The server archives the backup history file through archive_command, asynchronously:
    // the backup waits for its WAL segments, not for this file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let backups = loop {
        let found: Vec<String> =
            walk_names(&s.repo.join("wal")).into_iter().filter(|n| n.ends_with(".backup")).collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(backups.len(), 1, "expected one .backup file in the archive");

    let work = s.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let hist = work.join("00000002.history");
    std::fs::write(&hist, "1\t0/3000000\tno recovery target specified\n").unwrap();
    s.pgkeep(["archive-push"]).arg(&hist).ok();
    s.pgkeep(["archive-push"]).arg(&hist).ok();
    let back = s.env.path("back");
    std::fs::create_dir_all(&back).unwrap();
    s.pgkeep(["archive-get", "00000002.history"]).arg(back.join("h")).ok();
    assert_eq!(std::fs::read(back.join("h")).unwrap(), std::fs::read(&hist).unwrap());
    let bad_hist = work.join("00000003.history");
    std::fs::write(&bad_hist, "this is not a timeline history\n").unwrap();
    assert_refused(&s, &bad_hist, &["00000003.history"]);

    s.pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let full = fetch(&s, &seg, &work.join("seg"));
    let partial = work.join(format!("{seg}.partial"));
    std::fs::copy(&full, &partial).unwrap();
    s.pgkeep(["archive-push"]).arg(&partial).ok();
    let out = s.pgkeep(["archive-push"]).arg(&partial).ok();
    assert!(out.stdout.contains("already archived"));
}

#[test]
fn archive_get_missing_exits_1_and_damaged_exits_126() {
    let s = Setup::new();
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let out = s.pgkeep(["archive-get", "0000000100000000000000FE"]).arg(s.env.path("x")).run();
    assert_eq!(out.code, Some(1), "a missing file is 'not available' for PostgreSQL: {}", out.stderr);
    assert!(!s.env.path("x").exists());

    let obj = s.repo.join(pgkeep::repo::layout::wal_key(&seg));
    let mut b = std::fs::read(&obj).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&obj, b).unwrap();
    let out = s.pgkeep(["archive-get", &seg]).arg(s.env.path("y")).run();
    assert_eq!(out.code, Some(126), "damage must stop recovery, not end it early: {}", out.stderr);
    assert!(out.one_error_line().contains(&seg));
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk_names(&e.path()));
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// archive-get streams the decoded segment into a temp file while it checks it: whatever check
/// fails (the stored bytes' CRC, the content's BLAKE3, the WAL records of a segment framed
/// correctly around damaged content), exit 126, the name PostgreSQL asked for keeps what it
/// held (nothing, or an older file), and no temp is left.
#[test]
fn archive_get_streaming_refuses_every_damage_and_leaves_no_file_under_the_requested_name() {
    use pgkeep::repo::frame;
    let s = Setup::new();
    s.pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g");
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let good = std::fs::read(fetch(&s, &seg, &s.env.path("work"))).unwrap();
    let obj = s.repo.join(pgkeep::repo::layout::wal_key(&seg));
    let stored = std::fs::read(&obj).unwrap();
    let t = stored.len() - frame::TRAILER_LEN;
    let reseal = |b: &mut Vec<u8>| {
        let crc = crc32c::crc32c(&b[t..t + 52]);
        b[t + 52..t + 56].copy_from_slice(&crc.to_le_bytes());
    };
    // A flipped bit late in the compressed payload: most chunks are written before it shows.
    let mut late_flip = stored.clone();
    late_flip[t - 100] ^= 0x10;
    // The BLAKE3 in the trailer differs (the trailer's own CRC made to match).
    let mut wrong_hash = stored.clone();
    wrong_hash[t + 16] ^= 0x01;
    reseal(&mut wrong_hash);
    // A correct frame around content with a damaged record: only the WAL checks see it.
    let mut bad_wal = good.clone();
    bad_wal[3 * 8192 + 100] ^= 0xFF;
    let (bad_wal, _) = frame::encode(&bad_wal, frame::Compression::Zstd(3));

    let out = s.env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    for (case, bytes) in [("late flip", &late_flip), ("wrong BLAKE3", &wrong_hash), ("damaged record", &bad_wal)] {
        std::fs::write(&obj, bytes).unwrap();
        for prior in [None, Some(b"an older file".as_slice())] {
            let dest = out.join("RECOVERYXLOG");
            let _ = std::fs::remove_file(&dest);
            if let Some(p) = prior {
                std::fs::write(&dest, p).unwrap();
            }
            let o = s.pgkeep(["archive-get", &seg]).arg(&dest).run();
            assert_eq!(o.code, Some(126), "{case}: damage must stop recovery: {}", o.stderr);
            let line = o.one_error_line();
            assert!(line.contains(&seg) && line.contains("hint:"), "{case}: {line}");
            assert_eq!(std::fs::read(&dest).ok().as_deref(), prior, "{case}: the requested name is untouched");
            let names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "RECOVERYXLOG")
                .collect();
            assert!(names.is_empty(), "{case}: no temp is left: {names:?}");
        }
    }
    // The stored copy restored: fetched whole and byte for byte.
    std::fs::write(&obj, &stored).unwrap();
    assert_eq!(std::fs::read(fetch(&s, &seg, &s.env.path("again"))).unwrap(), good);
}
