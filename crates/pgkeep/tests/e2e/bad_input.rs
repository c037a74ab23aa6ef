//! Bad input on the command line is refused with one error line, never a panic (exit 101).

use pgkeep_testkit::ClusterOptions;

use crate::common::{env, read_manifest, Setup};

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

/// A pending snapshot backup whose manifest says `wal_segment_size = 0` (the repository is
/// writable by the database's OS user): `list` refreshes pending backups and computed its
/// WAL range by dividing by that size. It reports the backup (or an error) now, no panic.
#[test]
fn pending_manifest_with_segment_size_zero_does_not_panic_list() {
    let s = Setup::new();
    let real = s.backup();
    let mut m = read_manifest(&s.repo, &real);
    let id = "20200101-000000F";
    m["id"] = id.into();
    m["wal_segment_size"] = 0.into();
    m["snapshots"] = serde_json::json!([]);
    let (framed, _) =
        pgkeep::repo::frame::encode(&serde_json::to_vec(&m).unwrap(), pgkeep::repo::frame::Compression::Zstd(3));
    let dir = s.repo.join(pgkeep::repo::layout::backup_dir(id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pending"), framed).unwrap();
    // The bogus size names WAL that is not archived: do not wait the default minute for it.
    let config = s.env.path("pgkeep.toml");
    std::fs::write(&config, "archive_timeout = 1\n").unwrap();
    for args in [&["list"][..], &["list", "--json"]] {
        let out = s.pgkeep(args).arg("--config").arg(&config).run();
        assert_ne!(out.code, Some(101), "{args:?} panicked: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
}
