//! Damage in the repository is detected on read and named (acceptance 5).

use crate::common::{read_manifest, Setup};

fn flip(path: &std::path::Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn flipped_byte_in_a_data_object_fails_restore_naming_the_file() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE victim AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g; CHECKPOINT;");
    let rel = s.pg.scalar("SELECT pg_relation_filepath('victim')");
    let id = s.backup();
    let m = read_manifest(&s.repo, &id);
    let entry = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == rel.as_str())
        .expect("relation in manifest")
        .clone();
    let object = &m["objects"][entry["object"].as_u64().unwrap() as usize]["name"];
    let path = s.repo.join(format!("backup/{id}/data/{}", object.as_str().unwrap()));
    let offset = entry.get("offset").and_then(|o| o.as_u64()).unwrap_or(0);
    let length = entry["length"].as_u64().unwrap();
    flip(&path, offset + length / 2);

    let dir = s.env.path("restored");
    let out = s.pgkeep(["restore", "--to"]).arg(&dir).fails();
    let line = out.one_error_line();
    assert!(line.contains(&rel), "the error must name {rel}: {line}");
    assert!(line.contains(&id), "the error must name the backup: {line}");
    // PostgreSQL cannot be started on the half-restored directory: no pg_control.
    assert!(!dir.join("global/pg_control").exists());
}

#[test]
fn truncated_data_object_fails_restore_naming_the_file() {
    let s = Setup::new();
    s.pg.sql("CREATE TABLE victim AS SELECT g AS id FROM generate_series(1, 1000) g; CHECKPOINT;");
    let id = s.backup();
    let m = read_manifest(&s.repo, &id);
    // Truncate the largest object by a few bytes.
    let objs = m["objects"].as_array().unwrap();
    let biggest =
        objs.iter().max_by_key(|o| o["size"].as_u64().unwrap()).unwrap()["name"].as_str().unwrap().to_string();
    let path = s.repo.join(format!("backup/{id}/data/{biggest}"));
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    let out = s.pgkeep(["restore", "--to"]).arg(s.env.path("restored")).fails();
    let line = out.one_error_line();
    assert!(line.contains("restoring") && line.contains(&id), "{line}");
}
