//! docs/json.md lists every `--json` output with its fields as a stable contract: run the
//! commands and fail on any top-level field it does not document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::common::Setup;
use crate::verify::{scratch_parent, VerifyCmd};

/// Section title -> documented top-level fields (a flattened object's fields included).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/json.md")).unwrap();
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut title = String::new();
    for line in doc.lines() {
        if let Some(t) = line.strip_prefix("## ").or_else(|| line.strip_prefix("### ")) {
            title = t.trim_matches('`').to_string();
        } else {
            sections.entry(title.clone()).or_default().push_str(&format!("{line}\n"));
        }
    }
    let names = |text: &str, all: bool| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for line in text.lines() {
            let scan = if line.starts_with("| `") {
                line.split('|').nth(1).unwrap_or("")
            } else if all || line.starts_with("Top level") {
                line
            } else {
                ""
            };
            out.extend(scan.split('`').skip(1).step_by(2).map(str::to_string));
        }
        out
    };
    let mut out = BTreeMap::new();
    for (title, text) in &sections {
        let mut fields = names(text, false);
        for line in text.lines().filter(|l| l.contains("(the fields of `")) {
            let inner = line.split('`').nth(1).unwrap();
            fields.extend(names(&sections[inner], false));
        }
        out.insert(title.clone(), fields);
    }
    out
}

fn check(docs: &BTreeMap<String, BTreeSet<String>>, section: &str, v: &Value) {
    let fields = docs.get(section).unwrap_or_else(|| panic!("docs/json.md has no section {section:?}"));
    let objects: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    assert!(!objects.is_empty(), "{section}: nothing printed to check");
    for o in objects {
        let keys = o.as_object().unwrap_or_else(|| panic!("{section}: not an object: {o}"));
        let missing: Vec<&String> = keys.keys().filter(|k| !fields.contains(*k)).collect();
        assert!(missing.is_empty(), "docs/json.md section {section:?} lacks {missing:?} (documented: {fields:?})");
    }
}

#[test]
fn every_json_field_the_commands_print_is_in_docs_json_md() {
    let s = Setup::new();
    let docs = documented();
    let json = |args: &[&str]| -> Value {
        let mut c = s.pgkeep(["--json"]);
        for a in args {
            c = c.arg(a);
        }
        let out = c.run();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}{}", out.stdout, out.stderr))
    };
    check(&docs, "init", &json(&["init"]));
    check(&docs, "check", &json(&["check"]));
    let backup = json(&["backup"]);
    check(&docs, "backup", &backup);
    let id = backup["id"].as_str().unwrap().to_string();
    check(&docs, "list", &json(&["list"]));
    let parent = scratch_parent(&s.env);
    let out = s.pgkeep(["--json", "verify", &id]).in_scratch(&parent).ok();
    check(&docs, "verify", &serde_json::from_str(&out.stdout).unwrap());
    check(&docs, "rpo", &json(&["rpo"]));
    check(&docs, "metrics", &json(&["metrics"]));
    check(&docs, "wal verify", &json(&["wal", "verify"]));
    check(&docs, "pin, unpin", &json(&["pin", &id]));
    check(&docs, "pin, unpin", &json(&["unpin", &id]));
    // A segment just archived is still in pg_wal (recycled only at the next checkpoint):
    // pushing it again is an idempotent re-push.
    let seg = s.pg.switch_and_wait_archived(&s.repo);
    let pushed = s.pg.pgdata().join("pg_wal").join(&seg);
    check(&docs, "archive-push", &json(&["archive-push", pushed.to_str().unwrap()]));
    let dest = s.env.path("fetched");
    check(&docs, "archive-get", &json(&["archive-get", &seg, dest.to_str().unwrap()]));
    let to = s.env.path("restored");
    check(&docs, "restore (files backups)", &json(&["restore", "--to", to.to_str().unwrap()]));
    let config = s.env.path("retention.toml");
    std::fs::write(&config, "[retention]\nfull = 1\n").unwrap();
    check(&docs, "expire", &json(&["--config", config.to_str().unwrap(), "expire", "--dry-run"]));
    check(&docs, "wal inspect", &json(&["wal", "inspect"]));
}
