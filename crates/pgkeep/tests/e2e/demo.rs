//! The README's first command runs `pgkeep demo`; it must pass.

use crate::common::env;

#[test]
fn demo_restores_exactly_the_rows_committed_before_the_target() {
    let env = env();
    let out = env.pgkeep(["demo", "--json"]).env("TMPDIR", env.root()).ok();
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["ok"], true, "{}", out.stdout);
    assert_eq!(r["expected_rows"], r["restored_rows"]);
    assert!(r["rows_written_during_backup"].as_u64().unwrap() > 0);
    // Nothing left behind without --keep.
    let left: Vec<_> = std::fs::read_dir(env.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgkeep-demo-"))
        .collect();
    assert!(left.is_empty(), "demo left {left:?}");
}
