//! The end of the WAL a copied data directory's `pg_wal` holds, found without a server: when
//! the drill's server does not start, page LSNs are still judged against it (a page written
//! after the copy's WAL ends is evidence whatever the start said).

use std::path::Path;

use pgkeep_wal::{
    parse_wal_file_name, validate_partial_segment, ControlFileData, Lsn, SegmentExpectations, WalFileName,
    XLogPageHeaderData,
};

/// End of the last complete record in the newest segment of `wal_dir` that holds WAL of this
/// history (pg_control's timeline or an ancestor's). Pre-allocated and recycled files (a zero
/// or older first page) are passed over; `None` when the newest written segment is not valid
/// WAL: the end is then unknown, not guessed.
pub fn copy_wal_end(wal_dir: &Path, control: &ControlFileData) -> Option<Lsn> {
    let seg_size = control.xlog_seg_size;
    let tli_max = control.checkPointCopy.ThisTimeLineID;
    let mut segs: Vec<(u64, u32, String)> = std::fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| match parse_wal_file_name(&n, seg_size) {
            Some(WalFileName::Segment { tli, segno }) if tli <= tli_max => Some((segno, tli, n)),
            _ => None,
        })
        .collect();
    segs.sort();
    for (segno, tli, name) in segs.into_iter().rev() {
        let data = std::fs::read(wal_dir.join(&name)).ok()?;
        let start = segno.checked_mul(seg_size as u64)?;
        let header = XLogPageHeaderData::parse(&data)?;
        if header.xlp_magic == 0 || header.xlp_pageaddr.0 < start {
            continue;
        }
        if header.xlp_pageaddr.0 != start {
            return None;
        }
        let expect = SegmentExpectations {
            tli,
            segno,
            seg_size,
            system_identifier: Some(control.system_identifier),
            pg_major: control.pg_major(),
        };
        return validate_partial_segment(&data, &expect, None).ok().map(|s| s.end_of_valid_wal);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/wal");
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    #[test]
    fn the_newest_written_segment_decides_and_recycled_files_are_passed_over() {
        let control = pgkeep_wal::parse_pg_control(&fixture("pg_control")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let last = "00000001000000000000000E";
        let data = fixture(last);
        std::fs::write(dir.path().join(last), &data).unwrap();
        // A recycled segment under a future name: its pages carry 09's addresses.
        std::fs::write(dir.path().join("00000001000000000000000F"), fixture("000000010000000000000009")).unwrap();
        let expect = SegmentExpectations::from_file_name(last, control.xlog_seg_size).unwrap();
        let want = validate_partial_segment(&data, &expect, None).unwrap().end_of_valid_wal;
        assert!(want.0 > 0xE00000, "{want}");
        assert_eq!(copy_wal_end(dir.path(), &control), Some(want));

        // The newest written segment damaged: unknown, not the end of an older one.
        let mut bad = data.clone();
        bad[0x1000] ^= 0x40;
        std::fs::write(dir.path().join(last), &bad).unwrap();
        std::fs::write(dir.path().join("00000001000000000000000D"), fixture("00000001000000000000000D")).unwrap();
        assert_eq!(copy_wal_end(dir.path(), &control), None);
    }
}
