//! The one place that branches on the server's major version.

/// `server_version_num` → major (150018 → 15, 90624 → 9).
pub fn major_of(version_num: u32) -> u32 {
    // 9.6 is 90624 → 9 (pgkeep does not support it; the number only feeds the error message).
    version_num / 10_000
}

pub const MIN_SUPPORTED_MAJOR: u32 = 13;

/// SQL that starts a non-exclusive backup: params ($1 label text, $2 fast bool) → lsn text.
pub fn backup_start_sql(major: u32) -> &'static str {
    if major >= 15 {
        "SELECT pg_backup_start($1, $2)::text"
    } else {
        "SELECT pg_start_backup($1, $2, false)::text"
    }
}

/// SQL that stops it: param ($1 wait_for_archive bool) → (lsn, labelfile, spcmapfile, now).
pub fn backup_stop_sql(major: u32) -> &'static str {
    if major >= 15 {
        "SELECT lsn::text, labelfile, spcmapfile, clock_timestamp() FROM pg_backup_stop($1)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile, clock_timestamp() FROM pg_stop_backup(false, $1)"
    }
}

/// `archive_library` exists (15+); naming it on an older server's command line stops the
/// server at start (`unrecognized configuration parameter`). // utils/misc/guc_tables.c
pub fn has_archive_library(major: u32) -> bool {
    major >= 15
}

/// View with checkpoint counters (moved to pg_stat_checkpointer in 17).
pub fn checkpoint_stats_sql(major: u32) -> &'static str {
    if major >= 17 {
        "SELECT num_timed + num_requested, stats_reset FROM pg_stat_checkpointer"
    } else {
        "SELECT checkpoints_timed + checkpoints_req, stats_reset FROM pg_stat_bgwriter"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn majors() {
        assert_eq!(major_of(150018), 15);
        assert_eq!(major_of(170002), 17);
        assert_eq!(major_of(90624), 9);
    }
}
