//! The WAL archive: `archive-push` (validate, store once, never replace) and `archive-get`.

pub mod async_push;
pub mod fast_get;
pub mod get;
pub mod prefetch;
mod prefetcher;
pub mod push;
pub mod spool;

pub use get::{get, GetOutcome, FATAL_EXIT, NOT_FOUND_EXIT};
pub use push::{push, PushOutcome, PushReport};
pub use spool::Transport;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{name} is not a WAL segment, .partial, .history or .backup file name; refusing to archive it; hint: archive_command must pass %p")]
    UnknownName { name: String },
    #[error("archive-get was asked for {name}, which is not a WAL segment, .partial, .history or .backup file name; recovery is stopped rather than ended; hint: restore_command must pass the name, then the destination: pgkeep archive-get %f \"%p\"")]
    UnknownRequest { name: String },
    #[error("cannot read {path}: {detail}; the archive is unchanged; hint: archive_command must pass %p (the file PostgreSQL wants archived) and run as the server's OS user")]
    Read { path: String, detail: String },
    #[error("refusing to archive {name}: {detail}; the archive is unchanged; hint: {hint}")]
    Invalid { name: String, detail: String, hint: String },
    #[error("refusing to archive {name}: the archive already holds a different {name} (stored blake3 {stored}, this file {new}); the stored copy is kept; hint: two servers may be archiving into one repository, or this server's WAL diverged (e.g. restored without a new timeline); investigate before changing anything")]
    Conflict { name: String, stored: String, new: String },
    #[error("cannot write {dest}: {detail}; hint: restore_command runs as the server's OS user, which must be able to write there (pgkeep archive-get %f \"%p\")")]
    Write { dest: String, detail: String },
    #[error("archive copy of {name} is unusable: {detail}; hint: recovery is stopped rather than ended early; repair the archive from another copy")]
    Damaged { name: String, detail: String },
    #[error("cannot use the WAL spool {path}: {detail}; hint: spool_dir must be a directory outside the data directory that the server's OS user can write (archive_command and restore_command run as that user)")]
    Spool { path: String, detail: String },
}

/// Every page header and record of a segment (or `.partial`) against the repository's cluster;
/// `previous` lets a record continued from the segment before be CRC-checked whole.
fn check_segment(
    info: &crate::repo::RepoInfo,
    kind: pgkeep_wal::WalFileName,
    data: &[u8],
    previous: Option<&[u8]>,
) -> Result<(), pgkeep_wal::SegmentError> {
    let Some(mut v) = segment_validator(info, kind, previous) else {
        return Ok(());
    };
    v.feed(data);
    v.finish().map(|_| ())
}

/// [`check_segment`] to be fed chunk by chunk (archive-get feeds it as it decodes, with no
/// previous segment): `None` for a file that is not a segment or `.partial`.
fn segment_validator<'p>(
    info: &crate::repo::RepoInfo,
    kind: pgkeep_wal::WalFileName,
    previous: Option<&'p [u8]>,
) -> Option<pgkeep_wal::SegmentValidator<'p>> {
    let (pgkeep_wal::WalFileName::Segment { tli, segno } | pgkeep_wal::WalFileName::Partial { tli, segno }) = kind
    else {
        return None;
    };
    let expect = pgkeep_wal::SegmentExpectations {
        tli,
        segno,
        seg_size: info.wal_segment_size,
        system_identifier: Some(info.system_identifier_u64()),
        pg_major: Some(info.pg_major),
    };
    Some(if matches!(kind, pgkeep_wal::WalFileName::Partial { .. }) {
        pgkeep_wal::SegmentValidator::partial(&expect, previous)
    } else {
        pgkeep_wal::SegmentValidator::new(&expect, previous)
    })
}
