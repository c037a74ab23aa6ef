//! Reading WAL files back from the archive and checking them: the stored object's checksums
//! (frame), then every record (`validate_segment`, or `validate_partial_segment` for a
//! `.partial`).

use pgkeep_wal::{SegmentExpectations, SegmentSummary};

use crate::repo::{frame, layout, Repository, StorageError};

/// An archived WAL file, as found.
#[derive(Debug)]
pub enum Archived {
    Absent,
    /// Present but unusable: the stored object fails its checksums or its WAL is invalid.
    Damaged(String),
    Intact {
        data: Vec<u8>,
        summary: Box<SegmentSummary>,
    },
}

/// Fetches `name` (a segment or `.partial` name) and validates it against `expect`;
/// `previous` (the segment before it) lets a record continued from there be CRC-checked.
pub fn fetch_segment(repo: &Repository, name: &str, expect: &SegmentExpectations, previous: Option<&[u8]>) -> Archived {
    let data = match fetch_plain(repo, name) {
        Ok(Some(d)) => d,
        Ok(None) => return Archived::Absent,
        Err(why) => return Archived::Damaged(why),
    };
    let res = if name.ends_with(".partial") {
        pgkeep_wal::validate_partial_segment(&data, expect, previous)
    } else {
        pgkeep_wal::validate_segment(&data, expect, previous)
    };
    match res {
        Ok(summary) => Archived::Intact { data, summary: Box::new(summary) },
        Err(e) => Archived::Damaged(e.to_string()),
    }
}

/// The plain bytes of an archived file; `Ok(None)` when it is not there, `Err` (a
/// description) when the stored object cannot be read or fails its checksums.
pub fn fetch_plain(repo: &Repository, name: &str) -> Result<Option<Vec<u8>>, String> {
    let key = layout::wal_key(name);
    let framed = match repo.storage().get(&key) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("unreadable: {}", without_hint(&e.to_string()))),
    };
    frame::decode(&framed, &format!("archived {name}")).map(Some).map_err(|e| without_hint(&e.to_string()))
}

/// An inner error's text without its own `; hint: …` (the caller's line has the hint).
fn without_hint(s: &str) -> String {
    s.split("; hint:").next().unwrap_or(s).to_string()
}
