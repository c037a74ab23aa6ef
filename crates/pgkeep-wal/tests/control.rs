//! pg_control of the fixture cluster against pg_controldata's view of the same file: the
//! committed output (always) and a live run of pg_controldata 15 (required; CI installs it,
//! `PG_CONTROLDATA` overrides the path).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use pgkeep_wal::{parse_pg_control, xlog_file_name, ControlError, ControlFileData};

const DEFAULT_PG_CONTROLDATA: &str = "/usr/lib/postgresql/15/bin/pg_controldata";

fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// `strftime("%c")` in the C locale, UTC: how pg_controldata prints times under TZ=UTC.
fn c_locale_time(secs: i64) -> String {
    let (date, hms) = pgkeep_wal::lsn::civil_from_unix(secs);
    let days = secs.div_euclid(86_400);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [date[5..7].parse::<usize>().unwrap() - 1];
    let day: u32 = date[8..10].parse().unwrap();
    format!("{wd} {month} {day:>2} {hms} {}", &date[0..4])
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// What pg_controldata prints for each field, computed from the parsed struct.
fn expected(c: &ControlFileData) -> Vec<(&'static str, String)> {
    let cp = &c.checkPointCopy;
    vec![
        ("pg_control version number", c.pg_control_version.to_string()),
        ("Catalog version number", c.catalog_version_no.to_string()),
        ("Database system identifier", c.system_identifier.to_string()),
        ("Database cluster state", c.state.to_string()),
        ("pg_control last modified", c_locale_time(c.time)),
        ("Latest checkpoint location", c.checkPoint.to_string()),
        ("Latest checkpoint's REDO location", cp.redo.to_string()),
        (
            "Latest checkpoint's REDO WAL file",
            xlog_file_name(cp.ThisTimeLineID, cp.redo.segment_number(c.xlog_seg_size), c.xlog_seg_size),
        ),
        ("Latest checkpoint's TimeLineID", cp.ThisTimeLineID.to_string()),
        ("Latest checkpoint's PrevTimeLineID", cp.PrevTimeLineID.to_string()),
        ("Latest checkpoint's full_page_writes", on_off(cp.fullPageWrites).to_string()),
        ("Latest checkpoint's NextXID", cp.next_xid_display()),
        ("Latest checkpoint's NextOID", cp.nextOid.to_string()),
        ("Latest checkpoint's NextMultiXactId", cp.nextMulti.to_string()),
        ("Latest checkpoint's NextMultiOffset", cp.nextMultiOffset.to_string()),
        ("Latest checkpoint's oldestXID", cp.oldestXid.to_string()),
        ("Latest checkpoint's oldestXID's DB", cp.oldestXidDB.to_string()),
        ("Latest checkpoint's oldestActiveXID", cp.oldestActiveXid.to_string()),
        ("Latest checkpoint's oldestMultiXid", cp.oldestMulti.to_string()),
        ("Latest checkpoint's oldestMulti's DB", cp.oldestMultiDB.to_string()),
        ("Latest checkpoint's oldestCommitTsXid", cp.oldestCommitTsXid.to_string()),
        ("Latest checkpoint's newestCommitTsXid", cp.newestCommitTsXid.to_string()),
        ("Time of latest checkpoint", c_locale_time(cp.time)),
        ("Fake LSN counter for unlogged rels", c.unloggedLSN.to_string()),
        ("Minimum recovery ending location", c.minRecoveryPoint.to_string()),
        ("Min recovery ending loc's timeline", c.minRecoveryPointTLI.to_string()),
        ("Backup start location", c.backupStartPoint.to_string()),
        ("Backup end location", c.backupEndPoint.to_string()),
        ("End-of-backup record required", if c.backupEndRequired { "yes" } else { "no" }.to_string()),
        ("wal_level setting", c.wal_level_name().to_string()),
        ("wal_log_hints setting", on_off(c.wal_log_hints).to_string()),
        ("max_connections setting", c.MaxConnections.to_string()),
        ("max_worker_processes setting", c.max_worker_processes.to_string()),
        ("max_wal_senders setting", c.max_wal_senders.to_string()),
        ("max_prepared_xacts setting", c.max_prepared_xacts.to_string()),
        ("max_locks_per_xact setting", c.max_locks_per_xact.to_string()),
        ("track_commit_timestamp setting", on_off(c.track_commit_timestamp).to_string()),
        ("Maximum data alignment", c.maxAlign.to_string()),
        ("Database block size", c.blcksz.to_string()),
        ("Blocks per segment of large relation", c.relseg_size.to_string()),
        ("WAL block size", c.xlog_blcksz.to_string()),
        ("Bytes per WAL segment", c.xlog_seg_size.to_string()),
        ("Maximum length of identifiers", c.nameDataLen.to_string()),
        ("Maximum columns in an index", c.indexMaxKeys.to_string()),
        ("Maximum size of a TOAST chunk", c.toast_max_chunk_size.to_string()),
        ("Size of a large-object chunk", c.loblksize.to_string()),
        ("Float8 argument passing", if c.float8ByVal { "by value" } else { "by reference" }.to_string()),
        ("Data page checksum version", c.data_checksum_version.to_string()),
        ("Mock authentication nonce", c.mock_authentication_nonce.iter().map(|b| format!("{b:02x}")).collect()),
    ]
}

fn check_against(text: &str, c: &ControlFileData, source: &str) {
    let f = fields(text);
    let want = expected(c);
    for (key, value) in &want {
        assert_eq!(f.get(*key), Some(value), "{source}: {key}");
    }
    // Every line pg_controldata prints is covered, except one constant.
    let covered = want.len() + 1; // "Date/time type storage"
    assert_eq!(f.len(), covered, "{source}: fields not compared: {:?}", f.keys().collect::<Vec<_>>());
}

#[test]
fn fixture_pg_control_matches_committed_pg_controldata_output() {
    let c = parse_pg_control(&read("pg_control")).unwrap();
    let text = String::from_utf8(read("pg_controldata.txt")).unwrap();
    check_against(&text, &c, "pg_controldata.txt");
    assert_eq!(c.pg_major(), Some(15));
    assert_eq!(c.floatFormat, pgkeep_wal::control::FLOATFORMAT_VALUE);
    assert!(c.state.is_clean_shutdown());
}

#[test]
fn fixture_pg_control_matches_live_pg_controldata() {
    let bin = std::env::var_os("PG_CONTROLDATA").map(PathBuf::from).unwrap_or_else(|| DEFAULT_PG_CONTROLDATA.into());
    assert!(
        bin.exists(),
        "pg_controldata not found at {}: install PostgreSQL 15 (Debian: apt-get install postgresql-15) or set PG_CONTROLDATA",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("pgkeep-wal-control-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("global")).unwrap();
    std::fs::write(dir.join("global/pg_control"), read("pg_control")).unwrap();
    let out = Command::new(bin).arg("-D").arg(&dir).env("TZ", "UTC").env("LC_ALL", "C").output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "pg_controldata: {}", String::from_utf8_lossy(&out.stderr));
    let c = parse_pg_control(&read("pg_control")).unwrap();
    check_against(&String::from_utf8_lossy(&out.stdout), &c, "pg_controldata");
}

#[test]
fn damaged_pg_control_is_refused() {
    let good = read("pg_control");
    let mut bad = good.clone();
    bad[60] ^= 0x10;
    let e = parse_pg_control(&bad).unwrap_err();
    assert!(matches!(e, ControlError::Crc { .. }));
    assert_eq!(e.to_string(), "pg_control checksum mismatch (the file is damaged)");
    assert!(matches!(parse_pg_control(&good[..100]), Err(ControlError::TooShort { .. })));
    let mut other = good.clone();
    other[8..12].copy_from_slice(&1201u32.to_le_bytes());
    assert_eq!(parse_pg_control(&other), Err(ControlError::UnknownVersion { found: 1201 }));
}
