//! Packaging (issue 13): man pages and completions generated from the clap definitions, the
//! systemd units, and the Debian package built with cargo-deb from the tested binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use pgkeep_testkit::require_root;

use crate::common::env;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every visible subcommand, as `wal verify` is named on a man page: `wal-verify`.
fn subcommands() -> Vec<String> {
    fn walk(c: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{prefix}{}", s.get_name());
            out.push(name.clone());
            walk(s, &format!("{name}-"), out);
        }
    }
    let mut out = Vec::new();
    walk(&pgkeep::cli::Cli::command(), "", &mut out);
    assert!(out.len() > 15, "{out:?}");
    out
}

const UNITS: [&str; 6] = [
    "pgkeep-backup.service",
    "pgkeep-backup.timer",
    "pgkeep-verify.service",
    "pgkeep-verify.timer",
    "pgkeep-expire.service",
    "pgkeep-expire.timer",
];

#[test]
fn generated_man_pages_and_completions_name_every_subcommand() {
    let env = env();
    let man = env.path("man");
    let comp = env.path("completions");
    std::fs::create_dir_all(&man).unwrap();
    std::fs::create_dir_all(&comp).unwrap();
    // The example config is read on the way (every command loads --config): it must be valid.
    let example = root().join("packaging/pgkeep.toml.example");
    env.pgkeep(["--config"]).arg(&example).arg("generate").arg("man").arg(&man).ok();
    for shell in ["bash", "zsh", "fish"] {
        env.pgkeep(["generate", "completions", shell]).arg(&comp).ok();
    }
    let top = std::fs::read_to_string(man.join("pgkeep.1")).unwrap();
    let bash = std::fs::read_to_string(comp.join("pgkeep.bash")).unwrap();
    let zsh = std::fs::read_to_string(comp.join("_pgkeep")).unwrap();
    let fish = std::fs::read_to_string(comp.join("pgkeep.fish")).unwrap();
    for sub in subcommands() {
        let page = man.join(format!("pgkeep-{sub}.1"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{} is not a man page", page.display());
        let leaf = sub.rsplit('-').next().unwrap();
        let leaf = if sub.starts_with("archive-") { sub.as_str() } else { leaf };
        if !sub.contains('-') || sub.starts_with("archive-") {
            assert!(top.contains(&sub.replace('-', "\\-")), "pgkeep.1 does not mention {sub}");
        }
        for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
            assert!(text.contains(leaf), "{shell} completion lacks {sub}");
        }
    }
    assert!(!top.contains("generate"), "the hidden generate command is not documented");
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let env = env();
    let dir = env.path("units");
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for unit in UNITS {
        // The units name the installed binary; here the tested one stands in for it.
        let text = std::fs::read_to_string(root().join("packaging/systemd").join(unit)).unwrap();
        assert!(text.contains("/usr/bin/pgkeep") || unit.ends_with(".timer"), "{unit}");
        let p = dir.join(unit);
        std::fs::write(&p, text.replace("/usr/bin/pgkeep", env.pgkeep.to_str().unwrap())).unwrap();
        paths.push(p);
    }
    analyze(&paths);
    let verify = std::fs::read_to_string(root().join("packaging/systemd/pgkeep-verify.service")).unwrap();
    for line in ["User=postgres", "Type=oneshot", "Nice=19", "IOSchedulingClass=idle"] {
        assert!(verify.lines().any(|l| l == line), "pgkeep-verify.service lacks {line}");
    }
    for unit in ["pgkeep-backup.service", "pgkeep-expire.service"] {
        let text = std::fs::read_to_string(root().join("packaging/systemd").join(unit)).unwrap();
        assert!(text.contains("User=postgres\n") && text.contains("Type=oneshot\n"), "{unit}");
    }
}

/// `systemd-analyze verify`: exit 0 and not one complaint (unknown keys are only warned about).
fn analyze(paths: &[PathBuf]) {
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).args(paths).output().unwrap_or_else(|e| {
        panic!("cannot run systemd-analyze ({e}); hint: apt-get install systemd (scripts/setup.sh does)")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// Removes the package again, also when an assertion failed half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "pgkeep"]).output();
    }
}

/// Acceptance 2: the package builds (from the tested debug binary: no release build in the
/// suite), holds what the README says, and `dpkg -i` installs a pgkeep that runs. Needs root,
/// as CI has; removes the package afterwards.
#[test]
fn debian_package_holds_binary_units_config_man_pages_completions_and_installs_root() {
    require_root("installing the Debian package");
    let status = Command::new("dpkg").args(["-s", "pgkeep"]).output().unwrap();
    assert!(!status.status.success(), "a pgkeep package is installed already; hint: dpkg --purge pgkeep");
    let env = env();
    let out_dir = env.path("deb");
    let build = Command::new("bash")
        .arg(root().join("packaging/build-deb.sh"))
        .arg("--binary")
        .arg(&env.pgkeep)
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "build-deb.sh failed (cargo-deb missing? scripts/setup.sh installs it): {}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let list = Command::new("dpkg").arg("-c").arg(&deb).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let mut expected: Vec<String> = vec![
        "./usr/bin/pgkeep".into(),
        "./etc/pgkeep/pgkeep.toml.example".into(),
        "./usr/share/man/man1/pgkeep.1.gz".into(),
        "./usr/share/bash-completion/completions/pgkeep".into(),
        "./usr/share/zsh/vendor-completions/_pgkeep".into(),
        "./usr/share/fish/vendor_completions.d/pgkeep.fish".into(),
        "./usr/share/doc/pgkeep/metrics.md".into(),
        "./usr/share/doc/pgkeep/json.md".into(),
    ];
    expected.extend(UNITS.iter().map(|u| format!("./lib/systemd/system/{u}")));
    expected.extend(subcommands().iter().map(|s| format!("./usr/share/man/man1/pgkeep-{s}.1.gz")));
    for path in &expected {
        assert!(list.lines().any(|l| l.ends_with(&format!(" {path}"))), "{path} missing from the package:\n{list}");
    }

    let installed = Installed;
    let install = Command::new("dpkg").arg("-i").arg(&deb).output().unwrap();
    assert!(install.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&install.stderr));
    let version = Command::new("/usr/bin/pgkeep").arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("pgkeep {}", env!("CARGO_PKG_VERSION")));
    // The installed units, with the installed binary.
    let units: Vec<PathBuf> = UNITS.iter().map(|u| Path::new("/lib/systemd/system").join(u)).collect();
    analyze(&units);
    drop(installed);
    assert!(!Path::new("/usr/bin/pgkeep").exists(), "dpkg --purge left /usr/bin/pgkeep");
}
