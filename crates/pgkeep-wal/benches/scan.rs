//! Throughput of segment validation and of the decoder over the WAL fixtures.
//!
//! `cargo bench -p pgkeep-wal --bench scan` (release build, one thread). Set
//! `PGKEEP_BENCH_SEGMENT=/path/to/000000010000000000000003` to also measure a real
//! 16 MiB segment (its expectations come from its file name).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgkeep_wal::{inspect_wal, validate_segment, Lsn, ReplayStart, SegmentExpectations, SegmentFile, WalDecoder};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/wal")
}

/// Runs `f` over `bytes` bytes repeatedly for about a second; returns MB/s (10^6 bytes).
fn measure(label: &str, bytes: usize, mut f: impl FnMut()) {
    f(); // warm up
    let start = Instant::now();
    let mut rounds = 0u32;
    while start.elapsed() < Duration::from_secs(1) || rounds < 3 {
        f();
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let mbs = bytes as f64 * rounds as f64 / secs / 1e6;
    println!("{label:<48} {mbs:>8.0} MB/s  ({rounds} rounds of {bytes} bytes)");
}

fn main() {
    let seg: u32 = 1024 * 1024;
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).expect("testdata/wal") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(e) = SegmentExpectations::from_file_name(&name, seg) {
            if !name.ends_with(".partial") {
                segments.push((name.clone(), e, std::fs::read(fixture_dir().join(&name)).unwrap()));
            }
        }
    }
    segments.sort_by(|a, b| a.0.cmp(&b.0));
    // Segments full of records (no long zero tail after a switch) are the honest measure.
    let busy: Vec<_> = segments.iter().filter(|(n, _, _)| ["9", "B", "C"].iter().any(|s| n.ends_with(s))).collect();
    let busy_bytes: usize = busy.iter().map(|(_, _, d)| d.len()).sum();
    measure("validate_segment, busy fixture segments", busy_bytes, || {
        for (_, e, d) in &busy {
            black_box(validate_segment(d, e, None).unwrap());
        }
    });
    let all_bytes: usize = segments.iter().map(|(_, _, d)| d.len()).sum();
    measure("validate_segment, all fixture segments", all_bytes, || {
        for (_, e, d) in &segments {
            black_box(validate_segment(d, e, None).unwrap());
        }
    });
    measure("WalDecoder (records decoded and copied), busy", busy_bytes, || {
        for (_, e, d) in &busy {
            let mut dec = WalDecoder::new(Lsn::segment_start(e.segno, seg), seg).unwrap();
            dec.feed(d);
            while let Some(r) = dec.next_record().unwrap() {
                black_box(r);
            }
        }
    });
    // wal inspect: replay of timeline 1 from 09 as crash recovery would, then the same with
    // 09's header foreign, so that every record is found again by the salvage scan.
    let tl1: Vec<_> = segments.iter().filter(|(n, e, _)| e.tli == 1 && !n.ends_with('8')).collect();
    let tl1_bytes: usize = tl1.iter().map(|(_, _, d)| d.len()).sum();
    let names: Vec<String> = tl1.iter().map(|(n, _, _)| n.clone()).collect();
    let control = pgkeep_wal::parse_pg_control(&std::fs::read(fixture_dir().join("pg_control")).unwrap()).unwrap();
    let first = Lsn::segment_start(9, seg).0 + 40;
    let start = ReplayStart {
        system_identifier: control.system_identifier,
        pg_major: Some(15),
        seg_size: seg,
        timeline: 1,
        redo: Lsn(first),
        checkpoint: Lsn(first),
    };
    let run = |damage: bool| {
        let r = inspect_wal(&start, &names, &mut |n| {
            let Some(mut d) = tl1.iter().find(|(m, _, _)| m == n).map(|(_, _, d)| d.clone()) else {
                return SegmentFile::Missing;
            };
            if damage && n.ends_with('9') {
                d[24] ^= 1;
            }
            SegmentFile::Data(d)
        });
        assert_eq!(r.damaged, damage);
        black_box(r);
    };
    measure("inspect_wal, intact timeline 1 (replay)", tl1_bytes, || run(false));
    measure("inspect_wal, foreign header on 09 (salvage)", tl1_bytes, || run(true));
    if let Ok(path) = std::env::var("PGKEEP_BENCH_SEGMENT") {
        let data = std::fs::read(&path).expect("PGKEEP_BENCH_SEGMENT");
        let name = PathBuf::from(&path).file_name().unwrap().to_string_lossy().into_owned();
        let e = SegmentExpectations::from_file_name(&name, data.len() as u32).expect("a segment file name");
        let s = validate_segment(&data, &e, None).expect("a valid segment");
        println!("{name}: {} records", s.records);
        measure(&format!("validate_segment, {name}"), data.len(), || {
            black_box(validate_segment(&data, &e, None).unwrap());
        });
    }
}
