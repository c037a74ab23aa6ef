//! Where archive-push spends its time on one 16 MiB segment: read, validate, hash, compress.
//!
//!   target/release/push-profile SEGMENT_FILE

use std::time::Instant;

use sha2_free::blake3;

mod sha2_free {
    pub fn blake3(b: &[u8]) -> [u8; 32] {
        let (_, s) = pgkeep::repo::frame::encode(b, pgkeep::repo::Compression::None);
        s.blake3
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("segment file");
    let t = Instant::now();
    let data = std::fs::read(&path).unwrap();
    let read = t.elapsed();
    let name = std::path::Path::new(&path).file_name().unwrap().to_string_lossy().into_owned();
    let t = Instant::now();
    let kind = pgkeep_wal::parse_wal_file_name(&name, data.len() as u32);
    let exp = match kind {
        Some(pgkeep_wal::WalFileName::Segment { tli, segno }) => pgkeep_wal::SegmentExpectations {
            tli,
            segno,
            seg_size: data.len() as u32,
            system_identifier: None,
            pg_major: None,
        },
        _ => panic!("not a segment"),
    };
    let r = pgkeep_wal::validate_segment(&data, &exp, None);
    let validate = t.elapsed();
    let t = Instant::now();
    let _ = blake3(&data);
    let hash = t.elapsed();
    let mut out = Vec::new();
    for level in [1, 3, -1] {
        let t = Instant::now();
        let (f, _) = pgkeep::repo::frame::encode(&data, pgkeep::repo::Compression::Zstd(level));
        out.push((level, t.elapsed(), f.len()));
    }
    println!("read {read:?} validate {validate:?} ({:?}) blake3+crc {hash:?}", r.map(|s| s.records));
    for (l, d, n) in out {
        println!("zstd level {l}: {d:?} → {} KiB (includes blake3)", n / 1024);
    }
}
