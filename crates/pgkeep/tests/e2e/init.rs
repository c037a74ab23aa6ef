//! `pgkeep init` binds a repository to exactly one cluster.

use pgkeep_testkit::ClusterOptions;

use crate::common::{env, Setup};

#[test]
fn init_is_idempotent_for_the_same_cluster_and_refuses_another() {
    let s = Setup::new();
    let again = s.pgkeep(["init"]).json();
    assert_eq!(again["created"], false);
    let info = std::fs::read(s.repo.join("pgkeep.info")).unwrap();

    let mut other = s.env.cluster("other", ClusterOptions::default());
    other.start();
    let out = s.env.pgkeep(["init", "--repo"]).arg(&s.repo).arg("--pg").arg(other.conninfo()).fails();
    let line = out.one_error_line();
    assert!(line.contains("belongs to another cluster") && line.contains("hint:"), "{line}");
    assert_eq!(std::fs::read(s.repo.join("pgkeep.info")).unwrap(), info, "the binding must not change");

    // backup against the wrong cluster is refused the same way
    let out = s.env.pgkeep(["backup", "--repo"]).arg(&s.repo).arg("--pg").arg(other.conninfo()).fails();
    assert!(out.one_error_line().contains("belongs to another cluster"), "{}", out.stderr);
}

#[test]
fn init_from_the_data_directory_alone_and_repository_owned_by_the_server_user() {
    let env = env();
    let mut pg = env.cluster("src", ClusterOptions::default());
    pg.start();
    let server_sysid = pg.scalar("SELECT system_identifier FROM pg_control_system()");
    pg.stop();
    let repo = env.path("repo");
    let r = env.pgkeep(["init", "--repo"]).arg(&repo).arg("--pgdata").arg(pg.pgdata()).json();
    assert_eq!(r["system_identifier"], server_sysid.as_str());
    assert_eq!(r["wal_segment_size"], 16 * 1024 * 1024);
    if let Some(owner) = &env.owner {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&repo).unwrap().uid(), owner.uid, "archive_command runs as the server's user");
    }
}

#[test]
fn commands_on_an_uninitialized_repository_say_so() {
    let env = env();
    let repo = env.path("nothing-here");
    let dir = env.path("seg");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("000000010000000000000001");
    std::fs::write(&f, vec![0u8; 16 * 1024 * 1024]).unwrap();
    for args in [vec!["list"], vec!["archive-push", f.to_str().unwrap()]] {
        let out = env.pgkeep(["--repo"]).arg(&repo).arg(args[0]);
        let out = args[1..].iter().fold(out, |c, a| c.arg(a)).fails();
        let line = out.one_error_line();
        assert!(line.contains("not initialized") && line.contains("pgkeep init"), "{line}");
    }
}
