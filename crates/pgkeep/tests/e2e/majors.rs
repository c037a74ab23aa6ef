//! The core cases on every supported major (issue 10): real servers of 14, 16, 17 and 18
//! (scripts/setup.sh installs them under /opt/pgkeep-pg/<major>) and Debian's 15. One test
//! function per major per case, so nextest runs them in parallel; each case is kept small
//! (pgbench scale 1, seconds of load) because the whole suite still runs on 15 elsewhere.
//!
//! Clients (psql, pgbench, pg_waldump) are Debian's 15: the packages of the other majors hold
//! server binaries only. pgbench 15 initialises and drives 16–18 servers fine.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use pgkeep_testkit::TestCluster;
use pgkeep_wal::{Lsn, RecordKind, WalDecoder};
use serde_json::Value;

use crate::common::Setup;
use crate::pitr::{backup_under_load, BackupUnderLoad};
use crate::wal::{mkdir, objects_under, parse_waldump_line, pgkeep_at, record_byte_offsets, segno_of, Rng, SEG};

/// `mod <case> { fn pg14() … fn pg18() }`, each calling `<case>(major)`.
macro_rules! on_majors {
    ($case:ident: $($major:literal => $name:ident),+) => {
        mod $case {
            $(
                #[test]
                fn $name() {
                    super::$case($major);
                }
            )+
        }
    };
}

on_majors!(backup_pitr_verify: 14 => pg14, 15 => pg15, 16 => pg16, 17 => pg17, 18 => pg18);
on_majors!(damaged_wal_is_refused_and_inspected: 14 => pg14, 15 => pg15, 16 => pg16, 17 => pg17, 18 => pg18);
on_majors!(decoder_agrees_with_the_server: 14 => pg14, 15 => pg15, 16 => pg16, 17 => pg17, 18 => pg18);

fn server_major(pg: &TestCluster) -> u32 {
    pg.int("SELECT current_setting('server_version_num')::int / 10000") as u32
}

/// A cluster of `major` archiving into an initialized repository.
fn setup(major: u32, settings: &[(&str, &str)]) -> Setup {
    let s = Setup::with(|mut o| {
        o = o.major(major);
        for (k, v) in settings {
            o = o.with(k, v);
        }
        o
    });
    assert_eq!(server_major(&s.pg), major, "the cluster runs on PostgreSQL {major}");
    s
}

/// Acceptance 1: init, check, a backup under pgbench and insert load, PITR to a time between two
/// committed rows (every row before present, none after), restore to the end equal to the
/// source, a `verify` drill that passes with the binaries found automatically, `wal verify`
/// clean, `rpo` reading this major's checkpoint statistics.
fn backup_pitr_verify(major: u32) {
    let s = setup(major, &[("track_commit_timestamp", "on")]);
    s.pgkeep(["check"]).ok();
    let BackupUnderLoad { backup_id, target, before } = backup_under_load(&s, "1", 100);

    let dir = s.env.path("pitr");
    let r = s.restore(&dir, &["--target-time", &target, "--target-action", "promote"]);
    assert_eq!(r["backup"], backup_id.as_str());
    {
        let restored = s.start_restored("pitr", &dir);
        restored.wait_promoted();
        assert_eq!(server_major(&restored), major);
        assert_eq!(restored.column("SELECT id FROM events ORDER BY id"), before, "exactly the rows up to {target}");
    }

    let q_sum = "SELECT sum(abalance)::text FROM pgbench_accounts";
    let q_hist = "SELECT count(*) FROM pgbench_history";
    let q_events = "SELECT count(*) FROM events";
    let source = (s.pg.scalar(q_sum), s.pg.int(q_hist), s.pg.int(q_events));
    assert!(source.1 > 0, "pgbench committed transactions");
    let dir = s.env.path("end");
    s.restore(&dir, &[]);
    {
        let restored = s.start_restored("end", &dir);
        restored.wait_promoted();
        assert_eq!((restored.scalar(q_sum), restored.int(q_hist), restored.int(q_events)), source);
    }

    // No --pg-bin: the drill finds this major's binaries where setup.sh put them.
    let scratch = mkdir(&s.env.path("scratch"));
    pgkeep::fsutil::set_mode(&scratch, 0o755).unwrap();
    let r = s.pgkeep(["verify", "latest"]).env("TMPDIR", &scratch).json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert!(r["pg_version"].as_str().unwrap().starts_with(&format!("{major}.")), "{r:#}");
    let amcheck = r["checks"].as_array().unwrap().iter().find(|c| c["name"] == "amcheck").unwrap();
    assert_eq!(amcheck["status"], "passed", "{r:#}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "the drill left its scratch directory");

    let r = s.pgkeep(["wal", "verify"]).json();
    assert_eq!(r["ok"], true, "{r:#}");
    // Checkpoint counters come from pg_stat_checkpointer on 17+, pg_stat_bgwriter before.
    let r = s.pgkeep(["rpo"]).json();
    assert!(r["checkpoints"]["count"].as_i64().unwrap() >= 1, "{r:#}");
    assert_eq!(r["newest_verified_backup"]["id"], backup_id.as_str(), "{r:#}");
}

/// Acceptance 2: a byte flipped inside a record of a real archived segment of this major is
/// refused by `archive-push`; `wal inspect` on a killed cluster whose newest segment's first
/// 8 KiB are zeroed names that segment and the exact commits after the redo point.
fn damaged_wal_is_refused_and_inspected(major: u32) {
    let mut s = setup(major, &[("autovacuum", "off")]);
    s.pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat(md5(g::text), 1 + g % 20) FROM generate_series(1, 2000) g; \
         CHECKPOINT; UPDATE t SET v = v || 'x' WHERE id % 7 = 0;",
    );
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let work = mkdir(&s.env.path("work"));
    let good_path = work.join(&seg);
    s.pgkeep(["archive-get", &seg]).arg(&good_path).ok();
    let good = std::fs::read(&good_path).unwrap();
    assert_eq!(
        pgkeep_wal::version::by_page_magic(u16::from_le_bytes([good[0], good[1]])).map(|v| v.major),
        Some(major),
        "the segment carries PostgreSQL {major}'s page magic"
    );
    let fresh = s.env.path("fresh");
    pgkeep_at(&s, &fresh).arg("init").ok();
    let offsets = record_byte_offsets(&good, segno_of(&seg));
    assert!(offsets.len() > 50_000, "record bytes in the segment: {}", offsets.len());
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let bad_path = mkdir(&s.env.path("flipped")).join(&seg);
    for i in 0..8 {
        let off = offsets[(rng.next() % offsets.len() as u64) as usize];
        let mut bad = good.clone();
        bad[off] ^= (rng.next() % 255 + 1) as u8;
        std::fs::write(&bad_path, &bad).unwrap();
        let out = pgkeep_at(&s, &fresh).arg("archive-push").arg(&bad_path).run();
        assert_ne!(out.code, Some(0), "flip {i} (seed {seed}) at offset {off} was accepted");
        let line = out.one_error_line();
        assert!(line.contains(&seg) && line.contains("refusing to archive") && line.contains("hint:"), "{line}");
        assert!(objects_under(&fresh.join("wal")).is_empty(), "flip {i} (seed {seed}) left an object");
    }
    pgkeep_at(&s, &fresh).arg("archive-push").arg(&good_path).ok();
    assert_eq!(objects_under(&fresh.join("wal")).len(), 1);

    // The crash: the redo point in an intact, archived segment; then a fresh segment holding
    // 12 kB of non-transactional message (so the commits lie past its first 8 KiB) and four
    // commits; kill -9; the first 8 KiB of that newest segment zeroed.
    s.pg.sql("CREATE TABLE crash (id int PRIMARY KEY, v text)");
    s.pg.sql("CHECKPOINT");
    s.pg.switch_and_wait_archived(&s.repo);
    s.pg.sql("SELECT pg_logical_emit_message(false, 'pgkeep', repeat('z', 12000))");
    let xids: Vec<u64> = (1..=4)
        .map(|i| {
            s.pg.int(&format!("INSERT INTO crash VALUES ({i}, 'after') RETURNING pg_current_xact_id()::text::bigint"))
                as u64
        })
        .collect();
    let newest = s.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    s.pg.crash();
    let wal_file = s.pg.pgdata().join("pg_wal").join(&newest);
    let mut bytes = std::fs::read(&wal_file).unwrap();
    bytes[..8192].fill(0);
    std::fs::write(&wal_file, &bytes).unwrap();

    let out = s.env.pgkeep(["wal", "inspect", "--json"]).arg(s.pg.pgdata()).run();
    assert_eq!(out.code, Some(1), "damage exits 1: {}\n{}", out.stdout, out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["pg_major"], major, "{r:#}");
    assert_eq!(r["damaged_segments"], serde_json::json!([newest]), "{r:#}");
    assert_eq!(r["commits_at_risk"], 4, "{r:#}");
    assert_eq!(r["at_risk"]["xids"], serde_json::json!(xids), "{r:#}");
}

/// One record as the server's own reader sees it.
#[derive(Debug, PartialEq)]
struct OracleRecord {
    lsn: Lsn,
    rmgr: String,
    xid: u32,
    tot_len: u32,
    blocks: Vec<BlockRef>,
}

/// (block_id, spc, db, rel, fork, block, has image)
type BlockRef = (u8, u32, u32, u32, u8, u32, bool);

/// Acceptance 4: on a real segment of each major, the decoder agrees record by record with
/// `pg_walinspect` (16–18) or `pg_waldump` (15): LSN, length, rmgr, xid, block references.
/// PostgreSQL 14 ships neither with these packages (pg_walinspect is 15+, and 15's pg_waldump
/// refuses 14's page magic): there the decoder must read every record and find exactly the
/// commits the server reported.
fn decoder_agrees_with_the_server(major: u32) {
    let s = setup(major, &[("autovacuum", "off"), ("wal_keep_size", "1GB")]);
    if major >= 16 {
        s.pg.sql("CREATE EXTENSION pg_walinspect");
    }
    let first = s.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    s.pg.sql(
        "CREATE TABLE w (id int PRIMARY KEY, v text); \
         INSERT INTO w SELECT g, md5(g::text) || repeat('p', g % 100) FROM generate_series(1, 20000) g; \
         CHECKPOINT; UPDATE w SET v = 'u' WHERE id % 300 = 0; DELETE FROM w WHERE id % 1000 = 1;",
    );
    s.pg.sql("VACUUM w");
    s.pg.sql("SELECT pg_logical_emit_message(true, 'pgkeep', repeat('big', 20000))");
    s.pg.sql(
        "BEGIN; INSERT INTO w VALUES (-1, 'a'); SAVEPOINT s1; INSERT INTO w VALUES (-2, 'b'); RELEASE s1; COMMIT;",
    );
    s.pg.sql("BEGIN; INSERT INTO w VALUES (-3, 'aborted'); ROLLBACK;");
    let mut commit_xids = Vec::new();
    for i in 0..5 {
        commit_xids.push(
            s.pg.int(&format!("INSERT INTO w VALUES ({}, 'c') RETURNING pg_current_xact_id()::text::bigint", -10 - i))
                as u32,
        );
    }
    let end: Lsn = s.pg.scalar("SELECT pg_current_wal_insert_lsn()").parse().unwrap();
    let last = s.pg.switch_wal();
    let start = Lsn::segment_start(segno_of(&first), SEG);

    let wal_dir = s.pg.pgdata().join("pg_wal");
    let mut dec = WalDecoder::new(start, SEG).unwrap();
    let mut ours = Vec::new();
    for segno in segno_of(&first)..=segno_of(&last) {
        let name = pgkeep_wal::xlog_file_name(1, segno, SEG);
        dec.feed(&std::fs::read(wal_dir.join(&name)).unwrap());
        while let Some(r) = dec.next_record().unwrap_or_else(|e| panic!("decoding {name}: {e}")) {
            assert_eq!(r.pg_major(), major);
            if r.lsn < end {
                ours.push(r);
            }
        }
    }
    assert!(ours.len() > 20_000, "records decoded: {}", ours.len());
    let commits: Vec<u32> = ours
        .iter()
        .filter_map(|r| match r.kind() {
            Ok(RecordKind::Commit { xid, .. }) => Some(xid),
            _ => None,
        })
        .collect();
    for x in &commit_xids {
        assert!(commits.contains(x), "commit of xid {x} decoded");
    }
    let mine: Vec<OracleRecord> = ours
        .iter()
        .map(|r| OracleRecord {
            lsn: r.lsn,
            rmgr: r.rmgr_name(),
            xid: r.xid(),
            tot_len: r.header.xl_tot_len,
            blocks: r
                .blocks
                .iter()
                .map(|b| {
                    (b.block_id, b.rnode.spcNode, b.rnode.dbNode, b.rnode.relNode, b.forknum, b.blkno, b.has_image)
                })
                .collect(),
        })
        .collect();
    let theirs = match major {
        14 => return,
        15 => waldump_records(&wal_dir, &first, &last, end),
        _ => walinspect_records(&s.pg, start, end),
    };
    let first_diff = mine.iter().zip(&theirs).position(|(a, b)| a != b);
    if let Some(i) = first_diff {
        panic!("PostgreSQL {major}: record {i} differs:\n ours   {:?}\n theirs {:?}", mine[i], theirs[i]);
    }
    assert_eq!(mine.len(), theirs.len(), "record count");
    assert!(theirs.iter().any(|r| r.blocks.len() > 1), "records with several block references were compared");
    assert!(theirs.iter().any(|r| r.blocks.iter().any(|b| b.6)), "full-page images were compared");
}

/// `pg_get_wal_records_info` and `pg_get_wal_block_info` (pg_walinspect, 16+) on [start, end).
fn walinspect_records(pg: &TestCluster, start: Lsn, end: Lsn) -> Vec<OracleRecord> {
    let rows = pg.column(&format!(
        "SELECT concat_ws(' ', start_lsn, xid, resource_manager, record_length) \
         FROM pg_get_wal_records_info('{start}', '{end}') ORDER BY start_lsn"
    ));
    let mut out: Vec<OracleRecord> = rows
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            OracleRecord {
                lsn: f[0].parse().unwrap(),
                xid: f[1].parse().unwrap(),
                rmgr: f[2].to_string(),
                tot_len: f[3].parse().unwrap(),
                blocks: Vec::new(),
            }
        })
        .collect();
    let blocks = pg.column(&format!(
        "SELECT concat_ws(' ', start_lsn, block_id, reltablespace, reldatabase, relfilenode, relforknumber, \
         relblocknumber, coalesce(block_fpi_length, 0) > 0) \
         FROM pg_get_wal_block_info('{start}', '{end}', false) ORDER BY start_lsn, block_id"
    ));
    for l in blocks {
        let f: Vec<&str> = l.split(' ').collect();
        let lsn: Lsn = f[0].parse().unwrap();
        let i = out.binary_search_by(|r| r.lsn.cmp(&lsn)).unwrap_or_else(|_| panic!("block of unknown record {lsn}"));
        out[i].blocks.push((
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            f[5].parse().unwrap(),
            f[6].parse().unwrap(),
            f[7] == "t",
        ));
    }
    out
}

/// Debian's pg_waldump 15 over the segments, records before `end`.
fn waldump_records(dir: &Path, first: &str, last: &str, end: Lsn) -> Vec<OracleRecord> {
    let out = Command::new("/usr/lib/postgresql/15/bin/pg_waldump")
        .arg("-p")
        .arg(dir)
        .arg(first)
        .arg(last)
        .env("LC_ALL", "C")
        .output()
        .expect("pg_waldump 15 (Debian's postgresql-15)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Zeros after the last record end pg_waldump's read of the last segment.
    assert!(out.status.success() || stderr.contains("got 0"), "pg_waldump: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (lsn, rmgr, xid, tot_len, desc) = parse_waldump_line(l).expect("a pg_waldump record line");
            let blocks = waldump_blocks(&desc).unwrap_or_else(|| panic!("unparsed block references: {l}"));
            OracleRecord { lsn, rmgr, xid, tot_len, blocks }
        })
        .filter(|r| r.lsn < end)
        .collect()
}

/// The block references in a pg_waldump description: "… blkref #0: rel 1663/5/1247 [fork
/// fsm] blk 14 [FPW]".
fn waldump_blocks(desc: &str) -> Option<Vec<BlockRef>> {
    let mut blocks = Vec::new();
    for part in desc.split("blkref #").skip(1) {
        let (id, part) = part.split_once(": rel ")?;
        let mut words = part.split([' ', ',']).filter(|w| !w.is_empty());
        let rel: Vec<u32> = words.next()?.split('/').map(|x| x.parse().ok()).collect::<Option<_>>()?;
        let mut fork = 0;
        let mut w = words.next()?;
        if w == "fork" {
            let name = words.next()?;
            fork = ["main", "fsm", "vm", "init"].iter().position(|f| *f == name)? as u8;
            w = words.next()?;
        }
        if w != "blk" || rel.len() != 3 {
            return None;
        }
        let blk = words.next()?.parse().ok()?;
        blocks.push((id.parse().ok()?, rel[0], rel[1], rel[2], fork, blk, words.next() == Some("FPW")));
    }
    Some(blocks)
}

/// Acceptance 3: `verify` of a PostgreSQL 17 backup on a machine with only 15's binaries (the
/// others hidden in a mount namespace; needs root, as CI is) or with 15's given fails before
/// restoring anything, with one line naming 17 and --pg-bin; with --pg-bin at 17's binaries it
/// passes. A `--dump` with only 15's pg_dump says so before the drill starts.
#[test]
fn verify_of_a_17_backup_needs_17s_binaries() {
    let s = setup(17, &[]);
    s.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let id = s.backup();
    let scratch = mkdir(&s.env.path("scratch"));
    pgkeep::fsutil::set_mode(&scratch, 0o755).unwrap();
    let fifteen = "/usr/lib/postgresql/15/bin";
    for via_config in [false, true] {
        let cmd = if via_config {
            let cfg = s.env.path("pgkeep.toml");
            std::fs::write(&cfg, format!("pg_bin_dir = \"{fifteen}\"\n")).unwrap();
            s.pgkeep(["--config"]).arg(&cfg).arg("verify").arg(&id)
        } else {
            s.pgkeep(["verify", &id, "--pg-bin", fifteen])
        };
        let out = cmd.env("TMPDIR", &scratch).run();
        assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
        let line = out.one_error_line();
        assert!(line.contains("PostgreSQL 17") && line.contains("--pg-bin") && line.contains("15"), "{line}");
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "nothing restored");
    }
    // A machine with only 15's binaries (the other majors hidden in a mount namespace): the
    // search finds nothing for 17, without any flag.
    let out = s.pgkeep(["verify", &id]).env("TMPDIR", &scratch).hiding(Path::new("/opt/pgkeep-pg")).run();
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    let line = out.one_error_line();
    assert!(line.contains("17") && line.contains("--pg-bin"), "{line}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "nothing restored");
    let listed = s.pgkeep(["list"]).json();
    assert!(listed[0]["verified"].is_null(), "a refused drill stores no verdict: {listed:#}");

    // Debian's pg_dump 15 cannot dump a 17 server: said before the drill starts.
    let dumps = s.env.path("dumps");
    let out = s.pgkeep(["verify", &id, "--dump"]).arg(&dumps).env("TMPDIR", &scratch).run();
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    let line = out.one_error_line();
    assert!(line.contains("pg_dump") && line.contains("17") && line.contains("15"), "{line}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "nothing restored");

    // Restore refuses binaries of another major before writing anything.
    let dir = s.env.path("restored");
    let out = s.pgkeep(["--pg-bin", fifteen, "restore", "--to"]).arg(&dir).run();
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(out.one_error_line().contains("PostgreSQL 17"), "{}", out.stderr);
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().count() == 0, "restore wrote into {}", dir.display());

    let r = s.pgkeep(["verify", &id, "--pg-bin", "/opt/pgkeep-pg/17/bin"]).env("TMPDIR", &scratch).json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert!(r["pg_version"].as_str().unwrap().starts_with("17."), "{r:#}");
}
