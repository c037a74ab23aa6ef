//! Throughput of segment validation and of the decoder over the WAL fixtures.
//!
//! `cargo bench -p pgkeep-wal --bench scan` (release build, one thread). Set
//! `PGKEEP_BENCH_SEGMENT=/path/to/000000010000000000000003` to also measure a real
//! 16 MiB segment (its expectations come from its file name).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgkeep_wal::{validate_segment, Lsn, SegmentExpectations, WalDecoder};

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
