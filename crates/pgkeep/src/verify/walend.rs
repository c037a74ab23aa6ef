//! The end of the WAL a copied data directory's `pg_wal` holds, found without a server: when
//! the drill's server does not start, page LSNs are still judged against it (a page written
//! after the copy's WAL ends is evidence whatever the start said).

use std::path::Path;

use pgkeep_wal::{
    parse_wal_file_name, validate_partial_segment, ControlFileData, Lsn, SegmentExpectations, WalFileName,
};

/// End of the last complete record in the newest segment of `wal_dir` on pg_control's
/// timeline (or an ancestor's); `None` when that segment is not valid WAL (the end is then
/// unknown, not guessed).
pub fn copy_wal_end(wal_dir: &Path, control: &ControlFileData) -> Option<Lsn> {
    let seg_size = control.xlog_seg_size;
    let tli_max = control.checkPointCopy.ThisTimeLineID;
    let newest = std::fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| match parse_wal_file_name(&n, seg_size) {
            Some(WalFileName::Segment { tli, segno }) if tli <= tli_max => Some((segno, tli, n)),
            _ => None,
        })
        .max()?;
    let (segno, tli, name) = newest;
    let data = std::fs::read(wal_dir.join(&name)).ok()?;
    let expect = SegmentExpectations {
        tli,
        segno,
        seg_size,
        system_identifier: Some(control.system_identifier),
        pg_major: control.pg_major(),
    };
    validate_partial_segment(&data, &expect, None).ok().map(|s| s.end_of_valid_wal)
}
