//! WAL integrity and forensics on WAL written by real clusters (issue 3, acceptance 1–4):
//! record-level validation in `archive-push`, agreement with `pg_waldump`, the crash scenario
//! of `wal inspect`, and `wal verify` of the archive.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgkeep_testkit::{ClusterOptions, TestCluster};
use pgkeep_wal::page::{SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ};
use pgkeep_wal::{parse_wal_file_name, Lsn, RecordKind, WalDecoder, WalFileName};
use serde_json::Value;

use crate::common::Setup;

pub(crate) const SEG: u32 = 16 * 1024 * 1024;
const PG_WALDUMP: &str = "/usr/lib/postgresql/15/bin/pg_waldump";

/// xorshift64*: random offsets that can be replayed from the printed seed.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub(crate) fn segno_of(name: &str) -> u64 {
    match parse_wal_file_name(name, SEG) {
        Some(WalFileName::Segment { segno, .. }) => segno,
        other => panic!("{name} is not a segment name: {other:?}"),
    }
}

pub(crate) fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

/// File offsets of every byte of every record that starts and ends inside the segment, page
/// headers excluded (the bytes each record's CRC covers).
pub(crate) fn record_byte_offsets(segment: &[u8], segno: u64) -> Vec<usize> {
    let start = Lsn::segment_start(segno, SEG).0;
    let end = start + SEG as u64;
    let mut dec = WalDecoder::new(Lsn(start), SEG).unwrap();
    dec.feed(segment);
    let mut out = Vec::new();
    while let Some(r) = dec.next_record().expect("an intact segment decodes") {
        if r.lsn.0 < start || r.end_lsn.0 > end {
            continue;
        }
        let mut lsn = r.lsn.0;
        while lsn < r.end_lsn.0 {
            let in_page = (lsn % XLOG_BLCKSZ as u64) as usize;
            let header = if lsn - start < XLOG_BLCKSZ as u64 { SIZE_OF_XLOG_LONG_PHD } else { SIZE_OF_XLOG_SHORT_PHD };
            if in_page < header {
                lsn += (header - in_page) as u64;
                continue;
            }
            out.push((lsn - start) as usize);
            lsn += 1;
        }
    }
    out
}

/// pgkeep with an explicit repository (not the setup's).
pub(crate) fn pgkeep_at(s: &Setup, repo: &Path) -> pgkeep_testkit::PgkeepCmd {
    s.env.pgkeep(["--repo"]).arg(repo).arg("--pg").arg(s.pg.conninfo()).arg("--pgdata").arg(s.pg.pgdata())
}

pub(crate) fn objects_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(objects_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Acceptance 1: a byte flipped inside any record of a real segment is refused (every one of
/// ≥ 40 random offsets), the intact segment is accepted, truncated and foreign ones refused.
#[test]
fn archive_push_refuses_every_flipped_record_byte_and_truncated_or_foreign_segments() {
    let s = Setup::new();
    s.pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat(md5(g::text), 1 + g % 40) FROM generate_series(1, 3000) g; \
         CHECKPOINT; UPDATE t SET v = v || 'x' WHERE id % 7 = 0; \
         SELECT pg_logical_emit_message(true, 'pgkeep', repeat('m', 40000));",
    );
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let work = mkdir(&s.env.path("work"));
    let good_path = work.join(&seg);
    s.pgkeep(["archive-get", &seg]).arg(&good_path).ok();
    let good = std::fs::read(&good_path).unwrap();

    // A fresh repository for the same cluster, so nothing else is archived there.
    let fresh = s.env.path("fresh");
    pgkeep_at(&s, &fresh).arg("init").ok();
    let fresh_wal = fresh.join("wal");

    let offsets = record_byte_offsets(&good, segno_of(&seg));
    assert!(offsets.len() > 100_000, "the segment should hold plenty of record bytes: {}", offsets.len());
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let bad_dir = mkdir(&s.env.path("flipped"));
    let bad_path = bad_dir.join(&seg);
    const FLIPS: usize = 48;
    for i in 0..FLIPS {
        let off = offsets[(rng.next() % offsets.len() as u64) as usize];
        let mask = (rng.next() % 255 + 1) as u8;
        let mut bad = good.clone();
        bad[off] ^= mask;
        std::fs::write(&bad_path, &bad).unwrap();
        let out = pgkeep_at(&s, &fresh).arg("archive-push").arg(&bad_path).run();
        assert_ne!(
            out.code,
            Some(0),
            "flip {i} (seed {seed}): byte at offset {off} xor {mask:#04x} was accepted:\n{}",
            out.stdout
        );
        let line = out.one_error_line();
        assert!(line.contains(&seg) && line.contains("hint:"), "flip {i} (seed {seed}): {line}");
        assert!(line.contains("refusing to archive"), "flip {i} (seed {seed}): {line}");
        assert!(objects_under(&fresh_wal).is_empty(), "flip {i} (seed {seed}) left an object in the archive");
    }

    // Truncated: refused, archive unchanged.
    std::fs::write(&bad_path, &good[..good.len() - 8192]).unwrap();
    let line = pgkeep_at(&s, &fresh).arg("archive-push").arg(&bad_path).fails().one_error_line().to_string();
    assert!(line.contains(&seg) && line.contains("bytes long"), "{line}");
    // From another cluster: refused, naming the foreign system.
    let mut other = s.env.cluster("other", ClusterOptions::default());
    other.start();
    other.sql("CREATE TABLE x AS SELECT g FROM generate_series(1, 1000) g");
    let other_seg = other.switch_wal();
    let foreign = mkdir(&s.env.path("foreign")).join(&other_seg);
    std::fs::copy(other.pgdata().join("pg_wal").join(&other_seg), &foreign).unwrap();
    let line = pgkeep_at(&s, &fresh).arg("archive-push").arg(&foreign).fails().one_error_line().to_string();
    assert!(line.contains("database system") && line.contains("another cluster"), "{line}");
    assert!(objects_under(&fresh_wal).is_empty());

    // The intact segment is accepted.
    let out = pgkeep_at(&s, &fresh).arg("archive-push").arg(&good_path).ok();
    assert!(out.stdout.contains("archived"), "{}", out.stdout);
    assert_eq!(objects_under(&fresh_wal).len(), 1);
}

/// One line of pg_waldump output: (lsn, rmgr, xid, tot_len, desc).
pub(crate) fn parse_waldump_line(l: &str) -> Option<(Lsn, String, u32, u32, String)> {
    let rest = l.strip_prefix("rmgr: ")?;
    let (rmgr, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start().strip_prefix("len (rec/tot):")?;
    let (lens, rest) = rest.split_once(", tx:")?;
    let (_, tot) = lens.split_once('/')?;
    let (tx, rest) = rest.split_once(", lsn:")?;
    let (lsn, rest) = rest.split_once(", prev ")?;
    let (_, desc) = rest.split_once(", desc: ")?;
    Some((lsn.trim().parse().ok()?, rmgr.to_string(), tx.trim().parse().ok()?, tot.trim().parse().ok()?, desc.into()))
}

fn waldump(dir: &Path, first: &str, last: &str) -> Vec<(Lsn, String, u32, u32, String)> {
    assert!(
        Path::new(PG_WALDUMP).exists(),
        "{PG_WALDUMP} is missing: this test compares pgkeep's decoding with PostgreSQL's own reader; install postgresql-15"
    );
    let out = Command::new(PG_WALDUMP).arg("-p").arg(dir).arg(first).arg(last).env("LC_ALL", "C").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The end of the written WAL in the crashed cluster's last segment ends pg_waldump there.
    let normal_end = stderr.contains("invalid record length") && stderr.contains("got 0");
    assert!(out.status.success() || normal_end, "pg_waldump {first} {last} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| parse_waldump_line(l).unwrap_or_else(|| panic!("unparsed pg_waldump line: {l}")))
        .collect()
}

fn controldata(pg: &TestCluster, key: &str) -> String {
    let out = Command::new("/usr/lib/postgresql/15/bin/pg_controldata")
        .arg(pg.pgdata())
        .env("LC_ALL", "C")
        .output()
        .expect("pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim_start_matches(':').trim().to_string()))
        .unwrap_or_else(|| panic!("{key} not in pg_controldata output: {text}"))
}

/// Acceptance 2: records and commits decoded from real 16 MiB segments agree with pg_waldump
/// on the same files (count, LSNs, rmgr, xids, lengths, commit xids); the validator's counts
/// and `wal inspect`'s commits after the redo point agree too.
#[test]
fn decoding_agrees_with_pg_waldump_on_real_segments() {
    let env = crate::common::env();
    // wal_keep_size: the checkpoints must not remove the segments pg_waldump reads.
    let mut pg = env.cluster("dump", ClusterOptions::default().with("autovacuum", "off").with("wal_keep_size", "1GB"));
    pg.start();
    let first = pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    // More than a segment of WAL, FPIs after a checkpoint, a big record crossing pages,
    // subtransactions, an abort, a prepared-free mix of commits.
    pg.sql(
        "CREATE TABLE w (id int PRIMARY KEY, v text); \
         INSERT INTO w SELECT g, md5(g::text) || repeat('p', g % 100) FROM generate_series(1, 150000) g; \
         CHECKPOINT; UPDATE w SET v = 'u' WHERE id % 500 = 0;",
    );
    pg.sql("SELECT pg_logical_emit_message(true, 'pgkeep', repeat('big', 100000))");
    pg.sql("BEGIN; INSERT INTO w VALUES (-1, 'a'); SAVEPOINT s1; INSERT INTO w VALUES (-2, 'b'); RELEASE s1; COMMIT;");
    pg.sql("BEGIN; INSERT INTO w VALUES (-3, 'aborted'); ROLLBACK;");
    pg.sql("CHECKPOINT");
    let mut xids = Vec::new();
    for i in 0..25 {
        xids.push(
            pg.int(&format!(
                "INSERT INTO w VALUES ({}, 'after') RETURNING pg_current_xact_id()::text::bigint",
                -100 - i
            )) as u32,
        );
    }
    let last = pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.crash();
    assert!(segno_of(&last) > segno_of(&first), "the workload should span segments ({first} .. {last})");

    let wal_dir = pg.pgdata().join("pg_wal");
    let theirs = waldump(&wal_dir, &first, &last);
    let mut dec = WalDecoder::new(Lsn::segment_start(segno_of(&first), SEG), SEG).unwrap();
    let mut ours = Vec::new();
    let mut validated = (0u64, 0u64);
    for segno in segno_of(&first)..=segno_of(&last) {
        let name = pgkeep_wal::xlog_file_name(1, segno, SEG);
        let data = std::fs::read(wal_dir.join(&name)).unwrap();
        assert_eq!(data.len(), SEG as usize, "{name} is a real 16 MiB segment");
        if segno < segno_of(&last) {
            let sum = pgkeep_wal::validate_segment(
                &data,
                &pgkeep_wal::SegmentExpectations::from_file_name(&name, SEG).unwrap(),
                None,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            validated.0 += sum.records;
            validated.1 += sum.commits;
        }
        dec.feed(&data);
        loop {
            match dec.next_record() {
                Ok(Some(r)) => ours.push(r),
                Ok(None) => break,
                Err(e) if e.is_end_of_wal() && segno == segno_of(&last) => break,
                Err(e) => panic!("decoding {name}: {e}"),
            }
        }
    }
    assert!(theirs.len() > 10_000, "pg_waldump saw {} records", theirs.len());
    let first_diff = ours.iter().zip(&theirs).position(|(o, t)| o.lsn != t.0);
    assert_eq!(ours.len(), theirs.len(), "record count (first LSN difference at index {first_diff:?})");
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o.lsn, t.0);
        assert_eq!(o.rmgr_name(), t.1, "rmgr at {}", t.0);
        assert_eq!(o.xid(), t.2, "xid at {}", t.0);
        assert_eq!(o.header.xl_tot_len, t.3, "length at {}", t.0);
    }
    let our_commits: Vec<(Lsn, u32)> = ours
        .iter()
        .filter_map(|r| match r.kind() {
            Ok(RecordKind::Commit { xid, .. }) => Some((r.lsn, xid)),
            _ => None,
        })
        .collect();
    let their_commits: Vec<(Lsn, u32)> =
        theirs.iter().filter(|t| t.1 == "Transaction" && t.4.starts_with("COMMIT")).map(|t| (t.0, t.2)).collect();
    assert_eq!(our_commits, their_commits, "commit records and their xids");
    assert!(their_commits.iter().any(|c| c.1 == xids[0]) && their_commits.iter().any(|c| c.1 == xids[24]));
    let aborts = ours.iter().filter(|r| matches!(r.kind(), Ok(RecordKind::Abort { .. }))).count();
    assert_eq!(aborts, theirs.iter().filter(|t| t.1 == "Transaction" && t.4.starts_with("ABORT")).count());
    // The validator (what archive-push runs) counts, per segment, the records that start and
    // end in it (a record crossing a boundary is checked whole only with both segments).
    let last_start = Lsn::segment_start(segno_of(&last), SEG);
    let within: Vec<_> = ours
        .iter()
        .filter(|r| r.lsn < last_start && r.lsn.segment_number(SEG) == (r.end_lsn.0 - 1) / SEG as u64)
        .collect();
    assert_eq!(validated.0, within.len() as u64, "validator record count");
    let within_commits = within.iter().filter(|r| matches!(r.kind(), Ok(RecordKind::Commit { .. }))).count();
    assert_eq!(validated.1, within_commits as u64, "validator commits");

    // wal inspect on the crashed cluster: nothing damaged, and the commits after pg_control's
    // redo point are exactly pg_waldump's.
    let out = env.pgkeep(["wal", "inspect", "--json"]).arg(pg.pgdata()).run();
    assert_eq!(out.code, Some(0), "a plain crash is not damage: {}\n{}", out.stdout, out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    let redo: Lsn = r["redo_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(redo.to_string(), controldata(&pg, "Latest checkpoint's REDO location"));
    let want: Vec<u64> = their_commits.iter().filter(|c| c.0 >= redo).map(|c| c.1 as u64).collect();
    let got: Vec<u64> =
        r["commits_after_redo"]["xids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(got, want);
    assert!(got.len() >= 25);
    assert_eq!(r["damaged_segments"], serde_json::json!([]));
    assert_eq!(r["commits_at_risk"], 0);
}

/// Acceptance 3, the crash: 5 rows, CHECKPOINT, 3 more committed rows, kill -9, the first
/// bytes of the newest segment overwritten with another cluster's segment header.
///
/// How the newest segment gets into the archive before the crash without switching away
/// from it: a copy of the live file is pushed as `<segment>.partial` after the three commits
/// (what streaming archivers such as pg_receivewal keep for the segment in progress).
/// Commits are flushed before they return, so the copy holds all three; the server stays on
/// that segment until the crash. `wal inspect` must find the `.partial`, see that it replays
/// past every commit, and print the archive-get line that brings everything back.
#[test]
fn crash_with_a_foreign_header_on_the_newest_segment_is_diagnosed_and_recovered_from_the_archive() {
    let mut s = Setup::with(|o| o.with("autovacuum", "off"));
    s.pg.sql("CREATE TABLE crash (id int PRIMARY KEY, v text)");
    for i in 1..=5 {
        s.pg.sql(&format!("INSERT INTO crash VALUES ({i}, 'before the checkpoint')"));
    }
    // Start the scenario on a fresh segment: it will hold the checkpoint and the 3 commits.
    s.pg.switch_and_wait_archived(&s.repo);
    s.pg.sql("CHECKPOINT");
    let xids: Vec<u64> = (6..=8)
        .map(|i| {
            s.pg.int(&format!("INSERT INTO crash VALUES ({i}, 'after') RETURNING pg_current_xact_id()::text::bigint"))
                as u64
        })
        .collect();
    let seg = s.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let wal_file = s.pg.pgdata().join("pg_wal").join(&seg);
    let work = mkdir(&s.env.path("work"));
    let partial = work.join(format!("{seg}.partial"));
    std::fs::copy(&wal_file, &partial).unwrap();
    s.pgkeep(["archive-push"]).arg(&partial).ok();
    assert_eq!(s.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())"), seg, "still the newest segment");
    // A second repository of this cluster that never received that segment.
    let empty = s.env.path("empty-repo");
    pgkeep_at(&s, &empty).arg("init").ok();
    s.pg.crash();

    // Another cluster's segment header over the first bytes of ours.
    let other = s.env.cluster("other", ClusterOptions::default());
    let foreign = std::fs::read(other.pgdata().join("pg_wal/000000010000000000000001")).unwrap();
    let other_sysid = u64::from_le_bytes(foreign[24..32].try_into().unwrap());
    let mut bytes = std::fs::read(&wal_file).unwrap();
    bytes[..SIZE_OF_XLOG_LONG_PHD].copy_from_slice(&foreign[..SIZE_OF_XLOG_LONG_PHD]);
    std::fs::write(&wal_file, &bytes).unwrap();

    // PostgreSQL refuses to start on it.
    let err = s.pg.try_start().expect_err("the server must not start on a foreign WAL header").to_string();
    assert!(err.contains("different database system") || err.contains("checkpoint record"), "{err}");

    // Without a repository: the damage, the problem, the 3 commits at risk.
    let out = s.env.pgkeep(["wal", "inspect", "--json"]).arg(s.pg.pgdata()).run();
    assert_eq!(out.code, Some(1), "damage must exit 1: {}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["damaged_segments"], serde_json::json!([seg]));
    assert_eq!(r["damaged"][0]["kind"], "foreign_system_identifier");
    let problem = r["damaged"][0]["problem"].as_str().unwrap();
    assert!(problem.contains("foreign system identifier") && problem.contains(&other_sysid.to_string()), "{problem}");
    assert_eq!(r["commits_at_risk"], 3);
    assert_eq!(r["at_risk"]["xids"], serde_json::json!(xids));
    assert_eq!(r["recoverable_from_archive"], false);
    assert_eq!(r["archive"]["consulted"], false);
    assert_eq!(r["checkpoint_reachable"], false);
    assert_eq!(r["last_valid_lsn"], r["redo_lsn"]);
    let text = s.env.pgkeep(["wal", "inspect"]).arg(s.pg.pgdata()).fails().stdout;
    assert!(text.contains(&format!("{seg}: foreign system identifier")), "{text}");
    assert!(text.contains("archive was not consulted"), "{text}");
    assert!(text.trim_end().lines().any(|l| l.contains("these 3 commit(s) are at risk")), "{text}");

    // The damaged file is not accepted into the archive either.
    let damaged_copy = mkdir(&work.join("damaged")).join(&seg);
    std::fs::copy(&wal_file, &damaged_copy).unwrap();
    let line = s.pgkeep(["archive-push"]).arg(&damaged_copy).fails().one_error_line().to_string();
    assert!(line.contains("another cluster"), "{line}");

    // A repository without a copy: consulted, nothing intact, the same 3 commits at risk.
    let out = pgkeep_at(&s, &empty).arg("wal").arg("inspect").arg("--json").run();
    assert_eq!(out.code, Some(1));
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["archive"]["consulted"], true);
    assert_eq!(r["damaged"][0]["archive"]["state"], "absent");
    assert_eq!(r["recoverable_from_archive"], false);
    assert_eq!(r["commits_at_risk_with_archive"], 3);
    let text = pgkeep_at(&s, &empty).arg("wal").arg("inspect").fails().stdout;
    assert!(text.contains("no intact copy in the archive: these 3 commit(s) are at risk"), "{text}");

    // With the repository: the archived copy recovers everything.
    let r = s.pgkeep(["wal", "inspect", "--json"]).run();
    assert_eq!(r.code, Some(1));
    let r: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(r["damaged_segments"], serde_json::json!([seg]));
    assert_eq!(r["commits_at_risk"], 3);
    assert_eq!(r["recoverable_from_archive"], true, "{r:#}");
    assert_eq!(r["commits_at_risk_with_archive"], 0);
    assert_eq!(r["damaged"][0]["archive"]["state"], "intact");
    let steps = r["archive_get"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0]["file"], format!("{seg}.partial"));
    let command = steps[0]["command"].as_str().unwrap().to_string();
    let text = s.pgkeep(["wal", "inspect"]).fails().stdout;
    let tail: Vec<&str> = text.trim_end().lines().rev().take(4).collect();
    assert!(tail.iter().any(|l| l.trim() == command), "the output must end with the archive-get line:\n{text}");
    assert!(text.contains("recover everything"), "{text}");

    // Run exactly the printed line, then start: all 8 rows are there.
    let st = Command::new("sh").arg("-c").arg(&command).status().unwrap();
    assert!(st.success(), "{command}");
    s.pg.start();
    assert_eq!(s.pg.column("SELECT id FROM crash ORDER BY id"), (1..=8).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// Acceptance 4: `wal verify` names a segment deleted from the middle of the archive and a
/// corrupted stored object, and the backup whose WAL range the damage hits.
#[test]
fn wal_verify_names_a_missing_segment_and_a_corrupted_object() {
    let s = Setup::new();
    let id = s.backup();
    let mut segs = Vec::new();
    for i in 0..4 {
        s.pg.sql(&format!("CREATE TABLE v{i} AS SELECT g FROM generate_series(1, 20000) g"));
        segs.push(s.pg.switch_and_wait_archived(&s.repo));
    }
    let ok = s.pgkeep(["wal", "verify", "--json"]).ok();
    let r: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["backups"][0]["id"], id.as_str());
    assert_eq!(r["backups"][0]["ok"], true);
    assert!(r["segments_checked"].as_u64().unwrap() >= 5);

    // A branch: the backup restored and promoted to timeline 2, archiving into the same
    // repository. Continuity follows 00000002.history.
    let dir = s.env.path("branch");
    s.restore(&dir, &["--backup", &id, "--target", "immediate", "--target-action", "promote"]);
    let mut branch = s.env.cluster_on("branch", &dir);
    branch.set("archive_mode", "on");
    branch.set("archive_command", &s.env.archive_command(&s.repo));
    branch.start();
    branch.wait_promoted();
    branch.sql("CREATE TABLE on_branch AS SELECT g FROM generate_series(1, 1000) g");
    let tl2 = branch.switch_and_wait_archived(&s.repo);
    assert!(tl2.starts_with("00000002"), "{tl2}");
    pgkeep_testkit::cluster::wait_for_file_in_archive(&s.repo, "00000002.history", Duration::from_secs(60));
    branch.stop();
    let r = s.pgkeep(["wal", "verify"]).json();
    assert_eq!(r["ok"], true, "{r:#}");
    let tls = r["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 2, "{tls:?}");
    assert_eq!(tls[1]["timeline"], 2);
    assert_eq!(tls[1]["parent"], 1);
    assert_eq!(tls[1]["last"], tl2.as_str());

    let m = crate::common::read_manifest(&s.repo, &id);
    let stop_wal = m["stop_wal"].as_str().unwrap().to_string();
    let deleted = segs[1].clone();
    std::fs::remove_file(s.repo.join(pgkeep::repo::layout::wal_key(&deleted))).unwrap();
    let obj = s.repo.join(pgkeep::repo::layout::wal_key(&stop_wal));
    let mut b = std::fs::read(&obj).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(&obj, b).unwrap();

    let out = s.pgkeep(["wal", "verify", "--json"]).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(r["missing_segments"], serde_json::json!([deleted]));
    let damaged = r["damaged_segments"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0]["file"], stop_wal.as_str());
    assert!(damaged[0]["problem"].as_str().unwrap().contains("damaged"), "{}", damaged[0]["problem"]);
    assert_eq!(r["backups"][0]["ok"], false);
    assert_eq!(r["backups"][0]["damaged"], serde_json::json!([stop_wal]));

    let text = s.pgkeep(["wal", "verify"]).fails().stdout;
    assert!(text.contains(&format!("MISSING  {deleted}")), "{text}");
    assert!(text.contains(&format!("DAMAGED  {stop_wal}")), "{text}");
    assert!(text.contains(&format!("backup {id}: NOT RESTORABLE")), "{text}");
}
