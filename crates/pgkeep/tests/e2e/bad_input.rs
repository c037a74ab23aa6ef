//! Bad input on the command line is refused with one error line, never a panic (exit 101).

use pgkeep_testkit::ClusterOptions;

use crate::common::env;

/// `expire --backup` with a multi-byte character where a digit of the id belongs used to
/// panic slicing the id; it is an ordinary "not a backup id" error now.
#[test]
fn expire_with_a_non_ascii_backup_id_fails_with_one_line() {
    let env = env();
    let pg = env.cluster("src", ClusterOptions::default());
    let repo = env.path("repo");
    env.pgkeep(["init", "--repo"]).arg(&repo).arg("--pgdata").arg(pg.pgdata()).ok();
    for id in ["20261121-00000é", "2026112é-000000F", "20261121-000000é", "é"] {
        let out = env.pgkeep(["expire", "--repo"]).arg(&repo).arg("--backup").arg(id).fails();
        assert_ne!(out.code, Some(101), "{id}: panicked: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{id}: {}", out.stderr);
        let line = out.one_error_line();
        assert!(line.contains("is not a backup id") && line.contains("; hint:"), "{line}");
    }
}
