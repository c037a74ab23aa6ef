//! The README's commands are a contract: CI runs exactly the README's test command.

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_cmd = ci.lines().last().unwrap().trim();
    let readme_cmd = readme.lines().find(|l| l.contains("cargo nextest run")).expect("test command in README");
    assert_eq!(readme_cmd.trim(), format!("bash scripts/setup.sh && {ci_cmd}"));
    assert!(readme.lines().any(|l| l.trim() == "bash scripts/setup.sh && cargo run -p pgkeep -- demo"));
}
