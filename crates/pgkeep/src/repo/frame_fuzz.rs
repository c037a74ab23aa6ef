//! Property tests of frame decoding: any bytes, and mutations of real frames made by the
//! encoder (some re-sealed with correct CRCs so the damage reaches the size checks, the zstd
//! decoder and the BLAKE3 check), give `Ok` or a `FrameError`, never a panic. The manifest's
//! JSON is read through the same path. Seeds, case counts and mutations are pgkeep-wal's
//! (`PGKEEP_FUZZ_SCALE` multiplies the counts).

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

#[path = "../../../pgkeep-wal/tests/common/mutate.rs"]
mod mutate;
use mutate::{apply, config, mutations};

/// A manifest as `backup` writes it (two entries, one bundle).
const MANIFEST: &str = r#"{"format":1,"id":"20261121-064841F","label":"nightly","kind":"full","driver":"files","pgkeep_version":"0.1.0","system_identifier":"7710514660753506577","pg_version_num":150018,"pg_major":15,"wal_segment_size":16777216,"data_checksums":true,"timeline":1,"stop_timeline":1,"start_lsn":"0/D00028","stop_lsn":"0/D00100","start_wal":"00000001000000000000000D","stop_wal":"00000001000000000000000D","start_time":"2026-11-21T06:48:41Z","stop_time":"2026-11-21T06:48:42Z","backup_window_seconds":1.2,"backup_label_blake3":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262","tablespace_map_blake3":null,"tablespaces":[],"size":8200,"stored_size":300,"file_count":2,"objects":[{"name":"bundle-0","size":300}],"entries":[{"path":"base","kind":"dir","mode":448},{"path":"PG_VERSION","kind":"file","mode":384,"size":3,"blake3":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262","object":0,"offset":0,"length":79},{"path":"pg_wal","kind":"link","mode":511,"target":"/srv/wal"}]}"#;

/// Real frames: empty, small, several zstd blocks, uncompressed; and the manifest.
fn frames() -> &'static [Vec<u8>] {
    static F: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        let big: Vec<u8> = (0..300_000u32).map(|i| ((i % 251) ^ (i / 4096)) as u8).collect();
        let mut v = Vec::new();
        for plain in [&b""[..], b"15\n", &big, MANIFEST.as_bytes()] {
            for c in [Compression::None, Compression::Zstd(3)] {
                v.push(encode(plain, c).0);
            }
        }
        v
    })
}

/// Rewrites the trailer's stored CRC and its own CRC to match the (damaged) frame, as a
/// writer that damaged the payload before framing it would have: only the content checks
/// are left to notice.
fn reseal(f: &mut [u8]) {
    if f.len() < FRAME_OVERHEAD as usize {
        return;
    }
    let t = f.len() - TRAILER_LEN;
    let stored = crc32c::crc32c(&f[..t]);
    f[t + 48..t + 52].copy_from_slice(&stored.to_le_bytes());
    let crc = crc32c::crc32c(&f[t..t + 52]);
    f[t + 52..t + 56].copy_from_slice(&crc.to_le_bytes());
}

/// Every way a frame is read: whole in memory, trailer only, streamed with its own length
/// and with a length a manifest might claim.
fn read_all_ways(f: &[u8], claimed_len: u64) {
    let _ = decode(f, "obj");
    let _ = decode_crc_only(f, "obj");
    let _ = trailer_of(f, "obj");
    if let Some(t) = f.len().checked_sub(TRAILER_LEN).and_then(|at| f.get(at..)) {
        let _ = parse_trailer(t, "obj");
    }
    let mut out = Vec::new();
    let _ = copy(f, f.len() as u64, &mut out, "obj");
    out.clear();
    let _ = copy(f, claimed_len, &mut out, "obj");
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn mutated_frames(which in any::<Index>(), muts in mutations(), resealed in any::<bool>(), claimed in any::<u64>()) {
        let fs = frames();
        let mut f = fs[which.index(fs.len())].clone();
        apply(&mut f, &muts);
        if resealed {
            reseal(&mut f);
        }
        read_all_ways(&f, claimed);
    }

    /// Trailers whose sizes are anything at all, with valid CRCs.
    #[test]
    fn trailer_sizes(which in any::<Index>(), plain in prop_oneof![any::<u64>(), (u64::MAX - 100)..=u64::MAX], payload in prop_oneof![any::<u64>(), (u64::MAX - 100)..=u64::MAX], claimed in prop_oneof![any::<u64>(), Just(u64::MAX)]) {
        let fs = frames();
        let mut f = fs[which.index(fs.len())].clone();
        let t = f.len() - TRAILER_LEN;
        f[t..t + 8].copy_from_slice(&plain.to_le_bytes());
        f[t + 8..t + 16].copy_from_slice(&payload.to_le_bytes());
        reseal(&mut f);
        read_all_ways(&f, claimed);
    }

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), header in any::<bool>(), claimed in any::<u64>()) {
        let mut f = bytes;
        if header && f.len() >= HEADER_LEN {
            f[..HEADER_LEN].copy_from_slice(&super::header(Compression::Zstd(3)));
        }
        reseal(&mut f);
        read_all_ways(&f, claimed);
    }

    /// A manifest read as `get_json` reads it: frame decode, then JSON; the JSON damaged
    /// before framing, so it gets past the checksums.
    #[test]
    fn manifests(muts in mutations()) {
        let mut json = MANIFEST.as_bytes().to_vec();
        apply(&mut json, &muts);
        let (f, _) = encode(&json, Compression::Zstd(3));
        if let Ok(plain) = decode(&f, "manifest") {
            let _ = serde_json::from_slice::<crate::repo::manifest::Manifest>(&plain);
            let _ = serde_json::from_slice::<crate::repo::manifest::ManifestSummary>(&plain);
        }
    }
}

/// Re-sealing does what the mutated cases rely on: damage behind recomputed CRCs is found by
/// the content checks.
#[test]
fn resealed_damage_reaches_the_content_checks() {
    let (mut f, _) = encode(b"some content", Compression::None);
    f[HEADER_LEN + 2] ^= 1;
    assert!(decode(&f, "obj").unwrap_err().to_string().contains("do not match their CRC"));
    reseal(&mut f);
    assert!(decode(&f, "obj").unwrap_err().to_string().contains("BLAKE3"));
}

#[test]
fn the_sample_manifest_parses() {
    let m: crate::repo::manifest::Manifest = serde_json::from_str(MANIFEST).unwrap();
    assert_eq!(m.entries.len(), 3);
}
