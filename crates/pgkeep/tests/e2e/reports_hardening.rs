//! Reports that must not mislead an operator (issue 8, points 11-13): the snapshot spread of
//! the command driver, `wal inspect`'s salvage note and advice, `verify --pgdata`'s verdicts.

use std::path::Path;

use pgkeep_testkit::ClusterOptions;
use pgkeep_wal::page::SIZE_OF_XLOG_LONG_PHD;
use pgkeep_wal::{parse_wal_file_name, Lsn, WalDecoder, WalFileName};
use serde_json::Value;

use crate::common::{env, Setup};
use crate::snapshot_util::SnapSetup;
use crate::verify::{check, scratch_parent};
use crate::verify_pgdata::{
    copy_with_checkpoints_between, copy_without_checkpoint_between, errors, verify_copy_fails, workload_setup,
};

const SEG: u32 = 16 * 1024 * 1024;

/// Point 11: the spread is measured between the acknowledgements (a command returning), not
/// between the requests. The wal volume's snapshot_command takes 2 s to fix its point in
/// time, the data volume's none: requested together, acknowledged ~2 s apart. No root needed
/// (command driver on plain directories).
#[test]
fn command_snapshot_spread_is_measured_between_acknowledgements() {
    let env = env();
    let (data, wal) = (env.owned_dir("vol-data"), env.owned_dir("vol-wal"));
    let s = SnapSetup::new(env, None, &data.join("pgdata"), Some(&wal.join("pg_wal")));
    let volume = |name: &str, path: &Path, pause: &str| {
        format!(
            "[[volume]]\nname = \"{name}\"\ndriver = \"command\"\npath = \"{}\"\n\
             snapshot_command = '{pause}echo \"snap-$PGKEEP_VOLUME_NAME\"'\ndelete_command = 'true'\n",
            path.display()
        )
    };
    s.configure(&(volume("data", &data, "") + &volume("wal", &wal, "sleep 2; ")));
    let b = s.pgkeep(["backup"]).json();
    let snap = &b["snapshot"];
    let spread = snap["snapshot_spread_seconds"].as_f64().unwrap();
    assert!(spread >= 1.5, "the wal snapshot was fixed 2 s after the data snapshot: spread {spread}: {b}");
    let at = |v: &str, field: &str| {
        let r = snap["snapshots"].as_array().unwrap().iter().find(|r| r["volume"] == v).unwrap();
        chrono::DateTime::parse_from_rfc3339(r[field].as_str().unwrap()).unwrap()
    };
    let acked = (at("wal", "acknowledged_at") - at("data", "acknowledged_at")).num_milliseconds();
    assert!(acked >= 1500, "acknowledged {acked} ms apart: {b}");
    // The text report names the acknowledgement times and the spread between them.
    let text = s.pgkeep(["backup"]).ok().stdout;
    eprintln!("{text}");
    assert!(text.contains("snapshot acknowledged spread"), "{text}");
    let spread_text: f64 = text
        .split("acknowledged spread ")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!(spread_text >= 1.5, "{text}");
    assert_eq!(text.matches(", acknowledged ").count(), 2, "{text}");
}

/// The first bytes of segment 1 of a freshly initialised other cluster: a long page header
/// naming another database system.
fn foreign_header(s: &Setup) -> Vec<u8> {
    let other = s.env.cluster("other", ClusterOptions::default());
    let seg = std::fs::read(other.pgdata().join("pg_wal/000000010000000000000001")).unwrap();
    seg[..SIZE_OF_XLOG_LONG_PHD].to_vec()
}

fn overwrite_header(file: &Path, header: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[..header.len()].copy_from_slice(header);
    std::fs::write(file, &bytes).unwrap();
}

/// Records from `from` to the end of the written WAL in `segment` (an intact copy), decoded.
fn records_from(segment: &[u8], segno: u64, from: Lsn) -> u64 {
    let mut dec = WalDecoder::new(Lsn::segment_start(segno, SEG), SEG).unwrap();
    dec.feed(segment);
    let mut n = 0;
    while let Ok(Some(r)) = dec.next_record() {
        if r.lsn >= from {
            n += 1;
        }
    }
    n
}

/// A WAL record header as it would look at an 8-byte aligned position: a plausible length
/// (32 MiB, running past the segment), a prev-link before it, a valid rmgr, and a CRC that is
/// not the record's — hex, for `decode(…, 'hex')`.
const LOOK_ALIKE: &str = concat!("00000002", "00000000", "0001000000000000", "00", "01", "0000", "00000000");

/// Point 12, first half: the crash scenario of wal.rs with an intact copy of the newest
/// segment archived as `.partial`, on a real cluster. The damage is a page header in the middle
/// of a logical message whose last bytes are 29 record-header look-alikes (the message's
/// data starts at offset 55 of its record, so 1 + 19000 bytes put them on 8-byte boundaries);
/// 3 commits follow. Salvage scans the message's remaining pages 8 bytes at a time: the
/// look-alikes are not records (no valid CRC) and must not be reported as "29 record(s) …
/// cross a segment boundary"; the salvaged records are exactly the intact copy's records
/// after the message.
#[test]
fn wal_inspect_counts_only_crc_valid_records_after_the_stop() {
    let mut s = Setup::with(|o| o.with("autovacuum", "off"));
    s.pg.sql("CREATE TABLE crash (id int PRIMARY KEY)");
    s.pg.switch_and_wait_archived(&s.repo);
    s.pg.sql("CHECKPOINT");
    let msg_end: Lsn = s
        .pg
        .scalar(&format!(
            "SELECT pg_logical_emit_message(false, 'p', decode('00' || repeat('00', 19000) || repeat('{LOOK_ALIKE}', 29), 'hex'))::text"
        ))
        .parse()
        .unwrap();
    for i in 1..=3 {
        s.pg.sql(&format!("INSERT INTO crash VALUES ({i})"));
    }
    let seg = s.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let segno = match parse_wal_file_name(&seg, SEG) {
        Some(WalFileName::Segment { segno, .. }) => segno,
        other => panic!("{other:?}"),
    };
    assert_eq!(msg_end.segment_number(SEG), segno, "the message and the commits share the newest segment");
    let wal_file = s.pg.pgdata().join("pg_wal").join(&seg);
    let partial = s.env.owned_dir("work").join(format!("{seg}.partial"));
    std::fs::copy(&wal_file, &partial).unwrap();
    s.pgkeep(["archive-push"]).arg(&partial).ok();
    s.pg.crash();
    // A bad magic on the page holding the message's byte 4700 bytes before its end: after
    // the message's start, before its look-alikes.
    let page = (msg_end.0 - 4700) / 8192 * 8192;
    let mut bytes = std::fs::read(&wal_file).unwrap();
    let off = (page - Lsn::segment_start(segno, SEG).0) as usize;
    bytes[off..off + 2].copy_from_slice(&[0xEF, 0xBE]);
    std::fs::write(&wal_file, &bytes).unwrap();

    let r = s.pgkeep(["wal", "inspect", "--json"]).run();
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let r: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(r["stop"]["lsn"], Lsn(page).to_string(), "{r:#}");
    assert_eq!(r["checkpoint_reachable"], true, "{r:#}");
    assert_eq!(r["recoverable_from_archive"], true, "{r:#}");
    assert_eq!(r["commits_at_risk"], 3, "{r:#}");
    assert_eq!(r["commits_at_risk_with_archive"], 0);
    let notes = r["notes"].as_array().unwrap();
    assert!(!notes.iter().any(|n| n.as_str().unwrap().contains("segment boundary")), "{notes:?}");
    let intact = records_from(&std::fs::read(&partial).unwrap(), segno, msg_end);
    assert!(intact >= 6, "3 inserts and their commits at least: {intact}");
    assert_eq!(r["salvaged_records"], intact, "salvaged records are the intact copy's records: {r:#}");
    let text = s.pgkeep(["wal", "inspect"]).fails().stdout;
    eprintln!("{text}");
    assert!(!text.contains("cross a segment boundary"), "{text}");
    assert!(text.contains("recover everything"), "{text}");
}

/// Point 12, second half, on a real cluster: CHECKPOINT, 4 commits, pg_switch_wal, 6 commits
/// in the new segment, kill -9, another cluster's header over the new segment. The checkpoint
/// is intact, so PostgreSQL starts — and silently ends crash recovery at the damage. The advice
/// must open with that loss (before "do not run pg_resetwal"), and a plain start proves it.
#[test]
fn wal_inspect_says_first_that_a_plain_start_loses_the_commits_after_the_damage() {
    let mut s = Setup::with(|o| o.with("autovacuum", "off"));
    s.pg.sql("CREATE TABLE t (id int PRIMARY KEY)");
    s.pg.switch_and_wait_archived(&s.repo);
    s.pg.sql("CHECKPOINT");
    for i in 1..=4 {
        s.pg.sql(&format!("INSERT INTO t VALUES ({i})"));
    }
    s.pg.switch_wal();
    let lost: Vec<u64> = (5..=10)
        .map(|i| s.pg.int(&format!("INSERT INTO t VALUES ({i}) RETURNING pg_current_xact_id()::text::bigint")) as u64)
        .collect();
    // After the switch the insert position sits on the boundary, which pg_walfile_name
    // names by the previous segment: ask once the commits are written.
    let seg = s.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())");
    s.pg.crash();
    let header = foreign_header(&s);
    overwrite_header(&s.pg.pgdata().join("pg_wal").join(&seg), &header);

    let out = s.env.pgkeep(["wal", "inspect", "--json"]).arg(s.pg.pgdata()).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["checkpoint_reachable"], true, "{r:#}");
    assert_eq!(r["damaged_segments"], serde_json::json!([seg]));
    assert_eq!(r["commits_at_risk"], lost.len(), "{r:#}");
    assert_eq!(r["at_risk"]["xids"], serde_json::json!(lost));
    let steps: Vec<&str> = r["next_steps"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(steps[0].starts_with(&format!("a plain start loses {} commit(s)", lost.len())), "{steps:#?}");
    let resetwal = steps.iter().position(|l| l.contains("do not run pg_resetwal")).unwrap();
    assert!(resetwal > 0, "{steps:#?}");
    let text = s.env.pgkeep(["wal", "inspect"]).arg(s.pg.pgdata()).fails().stdout;
    eprintln!("{text}");
    assert!(text.contains(&format!("1. a plain start loses {} commit(s)", lost.len())), "{text}");

    // What the advice warns of: the server starts and the 6 commits are gone.
    s.pg.start();
    assert_eq!(s.pg.column("SELECT id FROM t ORDER BY id"), ["1", "2", "3", "4"]);
}

/// No check detail carries the drill server's resource-usage tail.
fn assert_no_usage_tail(r: &Value) {
    for c in r["checks"].as_array().unwrap() {
        assert!(!c["detail"].as_str().unwrap().contains("system usage:"), "{c:#}");
    }
    assert!(!r["summary"].as_str().unwrap().contains("system usage:"), "{}", r["summary"]);
}

/// Point 13, a copy that starts (data volume copied after the WAL volume, no checkpoint
/// between): the tables xid_horizon fails are not also called sound by verify_heapam, whose
/// passing count leaves them out (the verdict documented in docs/architecture.md); the start
/// line ends before PostgreSQL's `system usage: …`.
#[test]
fn verify_pgdata_gives_one_verdict_per_table_and_drops_the_usage_tail() {
    let s = workload_setup(&[("shared_buffers", "1MB"), ("bgwriter_lru_maxpages", "0")]);
    let (data_copy, wal_copy, _) = copy_without_checkpoint_between(&s);
    let parent = scratch_parent(&s.env);
    let r = verify_copy_fails(&s, &data_copy, Some(&wal_copy), &parent);
    let start = check(&r, "start");
    assert_eq!(start["status"], "passed", "{r:#}");
    assert!(start["detail"].as_str().unwrap().contains("redo done at"), "{start:#}");
    assert_no_usage_tail(&r);
    let horizon = check(&r, "xid_horizon");
    assert_eq!(horizon["status"], "failed", "{r:#}");
    let flagged: std::collections::BTreeSet<String> = horizon["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.split(" block ").next().map(str::to_string))
        .collect();
    assert!(!flagged.is_empty(), "{horizon:#}");
    let heap = check(&r, "verify_heapam");
    let detail = heap["detail"].as_str().unwrap();
    let tables: u64 = r["databases"].as_array().unwrap().iter().map(|d| d["tables_checked"].as_u64().unwrap()).sum();
    assert!(!detail.starts_with(&format!("{tables} tables are sound")), "every table called sound: {heap:#}");
    if heap["status"] == "passed" {
        // "S of T tables are sound; K table(s) hold only tuples beyond …, reported by xid_horizon"
        let num = |after: &str| -> u64 {
            let rest = if after.is_empty() { detail } else { detail.split(after).nth(1).unwrap_or("") };
            rest.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("{detail}"))
        };
        let (sound, total, other) = (num(""), num(" of "), num("sound; "));
        assert_eq!(total, tables, "{detail}");
        assert_eq!(sound + other, tables, "{detail}");
        assert!(other >= flagged.len() as u64, "{detail}: xid_horizon names {flagged:?}");
        assert!(detail.ends_with("reported by xid_horizon"), "{detail}");
    }
    let text = s.env.pgkeep(["--pgdata"]).arg(&data_copy).arg("verify").arg("--wal-dir").arg(&wal_copy);
    let text = text.arg("--scratch").arg(&parent).fails().stdout;
    eprintln!("{text}");
    assert!(!text.contains(&format!("ok      verify_heapam: {tables} tables are sound")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("ok") && l.contains("system usage:")), "{text}");
}

/// Point 13, a copy that cannot start (checkpoints between the copies: pg_control names a
/// checkpoint beyond the copied WAL): the page-LSN scan ran before the start, and its result is
/// reported — failed, naming `t`'s heap file, whose pages were written after the copied WAL
/// ends — not "not run".
#[test]
fn verify_pgdata_reports_the_page_lsn_scan_when_the_start_fails() {
    let s = workload_setup(&[]);
    let (data_copy, wal_copy, _) = copy_with_checkpoints_between(&s);
    let heap_file = s.pg.scalar("SELECT pg_relation_filepath('t')");
    let parent = scratch_parent(&s.env);
    let r = verify_copy_fails(&s, &data_copy, Some(&wal_copy), &parent);
    assert_eq!(check(&r, "start")["status"], "failed", "{r:#}");
    assert_no_usage_tail(&r);
    let page = check(&r, "page_lsn");
    assert_eq!(page["status"], "failed", "the scan ran before the start: {r:#}");
    assert!(page["detail"].as_str().unwrap().contains("copy's pg_wal"), "{page:#}");
    let e = errors(page);
    assert!(e.contains(&format!("({heap_file}, main fork)")), "{e}");
    assert_eq!(check(&r, "amcheck")["status"], "not_run");
}
