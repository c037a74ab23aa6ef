//! Prometheus metrics (issue 13): `metrics_textfile` after backup, verify, archive-push and rpo,
//! read with a strict text-format parser and held against docs/metrics.md; `pgkeep metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pgkeep_testkit::prom::{self, PromFamily};

use crate::common::Setup;
use crate::verify::{scratch_parent, VerifyCmd};

/// docs/metrics.md's table: name -> (type, unit).
fn documented() -> BTreeMap<String, (String, String)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `pgkeep_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        out.insert(cells[1].trim_matches('`').to_string(), (cells[2].to_string(), cells[3].to_string()));
    }
    assert!(out.len() >= 20, "docs/metrics.md lists {} metrics", out.len());
    out
}

fn parse(text: &str) -> BTreeMap<String, PromFamily> {
    let families = prom::parse(text).unwrap_or_else(|e| panic!("not the Prometheus text format: {e}\n{text}"));
    families.into_iter().map(|f| (f.name.clone(), f)).collect()
}

fn value(f: &BTreeMap<String, PromFamily>, name: &str) -> f64 {
    let fam = f.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", f.keys()));
    assert_eq!(fam.samples.len(), 1, "{name}: {:?}", fam.samples);
    fam.samples[0].value
}

/// Every documented metric present with its documented type, named after its unit, carrying
/// `repo` and `system_identifier`; nothing undocumented.
fn assert_documented(f: &BTreeMap<String, PromFamily>, repo: &Path, sysid: &str, text: &str, unknown: &[&str]) {
    let docs = documented();
    for (name, (kind, unit)) in docs.iter().filter(|(n, _)| !unknown.contains(&n.as_str())) {
        let fam = f.get(name).unwrap_or_else(|| panic!("documented metric {name} missing from:\n{text}"));
        assert_eq!(&fam.kind, kind, "{name}: type");
        assert!(fam.help.as_deref().is_some_and(|h| !h.is_empty()), "{name}: no HELP");
        match unit.as_str() {
            "" => assert!(!name.ends_with("_seconds") && !name.ends_with("_bytes"), "{name}: unit"),
            u => assert!(name.ends_with(&format!("_{u}")), "{name}: unit {u}"),
        }
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name}: counters end in _total");
        for s in &fam.samples {
            assert_eq!(s.labels.get("repo").map(String::as_str), Some(repo.to_str().unwrap()), "{name}: {s:?}");
            assert_eq!(s.labels.get("system_identifier").map(String::as_str), Some(sysid), "{name}: {s:?}");
        }
    }
    let undocumented: Vec<&String> = f.keys().filter(|n| !docs.contains_key(*n)).collect();
    assert!(undocumented.is_empty(), "metrics missing from docs/metrics.md: {undocumented:?}");
}

fn wait_for(path: &Path, what: &str, ok: impl Fn(&BTreeMap<String, PromFamily>) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.is_empty() && ok(&parse(&text)) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} did not show up in {}:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Acceptance 1: backup and verify with `metrics_textfile` set; after a failed verify the
/// verify-result metric is 0.
#[test]
fn metrics_textfile_has_every_documented_metric_and_a_failed_verify_sets_it_to_zero() {
    let mut s = Setup::new();
    let sysid = s.pg.scalar("SELECT system_identifier::text FROM pg_control_system()");
    // The server's OS user runs archive-push and writes the file too.
    let dir = s.env.owned_dir("textfile");
    pgkeep::fsutil::set_mode(&dir, 0o755).unwrap();
    let prom_file = dir.join("pgkeep.prom");
    let config = s.env.path("pgkeep.toml");
    std::fs::write(
        &config,
        format!(
            "repo = {:?}\nmetrics_textfile = {:?}\narchive_timeout = 60\n",
            s.repo.to_str().unwrap(),
            prom_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let archive = format!("\"{}\" --config \"{}\" archive-push \"%p\"", s.env.pgkeep.display(), config.display());
    s.pg.sql(&format!("ALTER SYSTEM SET archive_command = '{}'", archive.replace('\'', "''")));
    s.pg.sql("SELECT pg_reload_conf()");
    s.pg.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g");

    let before = chrono::Utc::now().timestamp() as f64;
    let id = s.pgkeep(["--config"]).arg(&config).arg("backup").json()["id"].as_str().unwrap().to_string();
    let parent = scratch_parent(&s.env);
    s.pgkeep(["--config"]).arg(&config).arg("verify").arg(&id).in_scratch(&parent).ok();
    s.pg.switch_wal();
    wait_for(&prom_file, "archive-push's counter", |f| {
        f.get("pgkeep_archive_pushed_segments_total").is_some_and(|p| p.samples[0].value >= 1.0)
    });
    s.pgkeep(["--config"]).arg(&config).arg("rpo").ok();

    let text = std::fs::read_to_string(&prom_file).unwrap();
    let f = parse(&text);
    assert_documented(&f, &s.repo, &sysid, &text, &[]);
    assert_eq!(value(&f, "pgkeep_verify_last_success"), 1.0, "{text}");
    assert!(value(&f, "pgkeep_backup_newest_end_timestamp_seconds") >= before, "{text}");
    assert_eq!(
        value(&f, "pgkeep_backup_newest_verified_end_timestamp_seconds"),
        value(&f, "pgkeep_backup_newest_end_timestamp_seconds")
    );
    assert!(value(&f, "pgkeep_backup_newest_age_seconds") < 600.0, "{text}");
    assert!(value(&f, "pgkeep_backup_last_size_bytes") > 1e6, "{text}");
    assert!(value(&f, "pgkeep_repository_size_bytes") >= value(&f, "pgkeep_backup_last_stored_bytes"));
    let complete = f["pgkeep_backups"].samples.iter().find(|s| s.labels["state"] == "complete").unwrap();
    assert_eq!(complete.value, 1.0);
    assert_eq!(value(&f, "pgkeep_server_up"), 1.0);
    assert_eq!(value(&f, "pgkeep_archive_push_failures_total"), 0.0, "{text}");
    assert!(value(&f, "pgkeep_server_archived_segments_total") >= 1.0, "{text}");

    // Damage one stored data object: the next drill fails, and the file says so.
    let data = s.repo.join(format!("backup/{id}/data"));
    let victim = largest_file(&data);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    s.pgkeep(["--config"]).arg(&config).arg("verify").arg(&id).in_scratch(&parent).fails();
    let text = std::fs::read_to_string(&prom_file).unwrap();
    let f = parse(&text);
    assert_eq!(value(&f, "pgkeep_verify_last_success"), 0.0, "{text}");
    // No verified backup left: its age is infinite, its end time unknown (left out).
    assert_eq!(value(&f, "pgkeep_backup_newest_verified_age_seconds"), f64::INFINITY, "{text}");
    let gone = "pgkeep_backup_newest_verified_end_timestamp_seconds";
    assert!(!f.contains_key(gone), "{text}");
    // The archive-push and server families written by other commands are still there.
    assert_documented(&f, &s.repo, &sysid, &text, &[gone]);

    // `pgkeep metrics` on stdout: the same families, the archive counters taken from the file.
    let out = s.pgkeep(["--config"]).arg(&config).arg("metrics").ok();
    let m = parse(&out.stdout);
    assert_documented(&m, &s.repo, &sysid, &out.stdout, &[gone]);
    assert_eq!(value(&m, "pgkeep_verify_last_success"), 0.0);

    // A textfile that cannot be written is a warning, not a failed backup.
    let bad = s.env.path("bad.toml");
    std::fs::write(
        &bad,
        format!("repo = {:?}\nmetrics_textfile = \"/nonexistent/dir/pgkeep.prom\"\n", s.repo.to_str().unwrap()),
    )
    .unwrap();
    let out = s.pgkeep(["--config"]).arg(&bad).arg("backup").ok();
    assert!(
        out.stderr.contains("metrics textfile /nonexistent/dir/pgkeep.prom") && out.stderr.contains("hint:"),
        "{}",
        out.stderr
    );
    s.pg.stop();
}

fn largest_file(dir: &Path) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let len = e.metadata().unwrap().len();
            if p.is_dir() {
                stack.push(p);
            } else if best.as_ref().is_none_or(|(b, _)| len > *b) {
                best = Some((len, p));
            }
        }
    }
    best.expect("a data object").1
}
