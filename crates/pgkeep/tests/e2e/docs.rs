//! The README's commands are a contract: CI runs exactly the README's test command.

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_cmd = ci.lines().last().unwrap().trim();
    let readme_cmd = readme.lines().find(|l| l.contains("cargo nextest run")).expect("test command in README");
    assert_eq!(readme_cmd.trim(), format!("bash scripts/setup.sh && {ci_cmd}"));
    // The first command: the demo, built fast (no cloud SDKs) after a demo-only setup.
    let first = readme.lines().find(|l| l.contains("cargo run")).expect("demo command in README");
    assert_eq!(first.trim(), "bash scripts/setup.sh --demo && cargo run -p pgkeep --no-default-features -- demo");
    assert!(readme.find(first) < readme.find(readme_cmd), "the demo command comes first");
}
