//! Shared helpers for the fixture tests.
#![allow(dead_code)]

use std::path::PathBuf;

use pgkeep_wal::{parse_wal_file_name, SegmentExpectations, WalFileName};

/// Segment size of the fixture cluster (`initdb --wal-segsize=1`).
pub const SEG: u32 = 1024 * 1024;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/wal")
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

/// Every WAL file in the fixture directory with its parsed name, sorted.
pub fn files() -> Vec<(String, WalFileName)> {
    let mut v: Vec<(String, WalFileName)> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let parsed = parse_wal_file_name(&name, SEG)?;
            Some((name, parsed))
        })
        .collect();
    v.sort();
    v
}

/// Full segments (not .partial), sorted by timeline then segment.
pub fn segments() -> Vec<(String, u32, u64)> {
    files()
        .into_iter()
        .filter_map(|(n, f)| match f {
            WalFileName::Segment { tli, segno } => Some((n, tli, segno)),
            _ => None,
        })
        .collect()
}

pub fn expect(name: &str) -> SegmentExpectations {
    SegmentExpectations::from_file_name(name, SEG).expect("segment name")
}

/// The system identifier of the fixture cluster, from pg_control.
pub fn sysid() -> u64 {
    pgkeep_wal::parse_pg_control(&read("pg_control")).expect("fixture pg_control").system_identifier
}
