//! Encryption at rest (issue 9, acceptance 4): an encrypted repository holds no readable byte
//! of the database, opens only with its key, detects every altered object by name, and a key
//! rotation leaves the data in place while the old key stops working.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgkeep_testkit::{ClusterOptions, PgkeepCmd, TestCluster, TestEnv};

use crate::common;

const MARKER: &str = "pgkeep-encryption-marker-7f3a9c";
const LATE_MARKER: &str = "pgkeep-late-wal-marker-c41d02";

/// A key file as an operator makes it (`head -c 32 /dev/urandom > F; chmod 600 F`), owned by
/// the server's OS user so archive_command and restore_command can read it.
fn key_file(env: &TestEnv, name: &str) -> PathBuf {
    let p = env.path(name);
    let mut key = [0u8; 32];
    let f = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut &f, &mut key).expect("32 random bytes");
    std::fs::write(&p, key).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    env.chown(&p);
    p
}

fn cmd(env: &TestEnv, repo: &Path, pg: &TestCluster, key: Option<&Path>) -> PgkeepCmd {
    let c = common::cluster_cmd(env, repo, pg);
    match key {
        Some(k) => c.arg("--encryption-key-file").arg(k),
        None => c,
    }
}

/// Every file below `dir` (the whole repository, staging and lock files included).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read repo dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// (path, size, mtime) of every file: proof that a refused command wrote nothing.
fn fingerprint(repo: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut v = Vec::new();
    files(repo, &mut v);
    let mut out: Vec<_> = v
        .into_iter()
        .filter(|p| !p.starts_with(repo.join("lock")))
        .map(|p| {
            let m = std::fs::metadata(&p).expect("stat");
            (p, m.len(), m.modified().expect("mtime"))
        })
        .collect();
    out.sort();
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).expect("read object");
    let i = at.min(b.len() - 1);
    b[i] ^= 0x01;
    std::fs::write(path, b).expect("write object");
}

#[test]
fn encrypted_repository_hides_data_opens_only_with_its_key_and_rotates() {
    let env = common::env();
    let repo = env.path("repo");
    let k1 = key_file(&env, "k1.key");
    let other = key_file(&env, "other.key");
    let k3 = key_file(&env, "k3.key");
    let archive = format!(
        "\"{}\" --repo \"{}\" --encryption-key-file \"{}\" archive-push \"%p\"",
        env.pgkeep.display(),
        repo.display(),
        k1.display()
    );
    let mut pg =
        env.cluster("src", ClusterOptions::default().with("archive_mode", "on").with("archive_command", &archive));
    pg.start();
    let init = cmd(&env, &repo, &pg, Some(&k1)).arg("init").json();
    assert_eq!(init["encrypted"], true, "{init}");
    let info = std::fs::read(repo.join("pgkeep.info")).expect("pgkeep.info");
    let info = String::from_utf8_lossy(&pgkeep::repo::frame::decode(&info, "pgkeep.info").expect("a plain frame"))
        .into_owned();
    assert!(info.contains("\"wrapped_key\"") && info.contains("\"format\": 2"), "pgkeep.info: {info}");

    pg.sql("CREATE TABLE secret (id int, v text)");
    pg.sql(&format!("INSERT INTO secret SELECT g, '{MARKER}-' || g FROM generate_series(1, 2000) g"));
    let backup = cmd(&env, &repo, &pg, Some(&k1)).arg("backup").json();
    let id = backup["id"].as_str().expect("backup id").to_string();
    // Only in WAL: written after the backup, archived by archive_command with the key.
    pg.sql(&format!("INSERT INTO secret VALUES (0, '{LATE_MARKER}')"));
    let late_segment = pg.switch_and_wait_archived(&repo);
    // An identical re-push is recognised through the seal (random salts make the stored bytes
    // differ each time, the opened content does not).
    let again =
        cmd(&env, &repo, &pg, Some(&k1)).arg("archive-push").arg(pg.pgdata().join("pg_wal").join(&late_segment)).json();
    assert_eq!(again["outcome"], "already-archived", "{again}");

    // Nothing stored contains the markers, and every object but pgkeep.info is sealed.
    let mut all = Vec::new();
    files(&repo, &mut all);
    let key_bytes = [std::fs::read(&k1).unwrap(), std::fs::read(&other).unwrap()];
    let mut sealed = 0;
    for f in &all {
        let b = std::fs::read(f).expect("read stored object");
        for m in [MARKER, LATE_MARKER] {
            assert!(!contains(&b, m.as_bytes()), "{} holds the plaintext marker {m}", f.display());
        }
        for k in &key_bytes {
            assert!(!contains(&b, k) && !contains(&b, hex::encode(k).as_bytes()), "{} holds a key", f.display());
        }
        let rel = f.strip_prefix(&repo).unwrap();
        if rel.starts_with("wal") || rel.starts_with("backup") {
            assert!(b.starts_with(b"PGKS"), "{} is not sealed", f.display());
            sealed += 1;
        }
    }
    assert!(sealed >= 5, "expected data, manifest, label and WAL objects, sealed {sealed}");

    // Restore with the key: the restored server replays the archive through the
    // restore_command pgkeep wrote (which must name the key file) and has both markers.
    let to = env.path("restored");
    cmd(&env, &repo, &pg, Some(&k1)).arg("restore").arg("--to").arg(&to).json();
    let auto = std::fs::read_to_string(to.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("--encryption-key-file \"{}\"", k1.display())), "restore_command: {auto}");
    {
        let mut r = env.cluster_on("restored", &to);
        r.set("archive_mode", "off");
        r.start();
        assert_eq!(r.int(&format!("SELECT count(*) FROM secret WHERE v LIKE '{MARKER}-%'")), 2000);
        assert_eq!(r.int(&format!("SELECT count(*) FROM secret WHERE v = '{LATE_MARKER}'")), 1);
        r.stop();
    }
    // The restore drill (its scratch restore replays WAL through archive-get) works too.
    let drill = cmd(&env, &repo, &pg, Some(&k1)).arg("verify").arg(&id).json();
    assert_eq!(drill["ok"], true, "{drill}");
    pg.stop();

    // The key can also come from the environment and from the config file.
    let listed = common::cluster_cmd(&env, &repo, &pg).env("PGKEEP_ENCRYPTION_KEY_FILE", &k1).arg("list").ok();
    assert!(listed.stdout.contains(&id), "{}", listed.stdout);
    let conf = env.path("pgkeep.toml");
    std::fs::write(&conf, format!("encryption_key_file = \"{}\"\n", k1.display())).unwrap();
    let listed = common::cluster_cmd(&env, &repo, &pg).arg("--config").arg(&conf).arg("list").ok();
    assert!(listed.stdout.contains(&id), "{}", listed.stdout);

    // Without the key and with another key: one clear line, exit 2 (archive-get: 126), and
    // nothing written.
    let before = fingerprint(&repo);
    let exposed = env.path("exposed.key");
    std::fs::copy(&k1, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let wal_file = pg.pgdata().join("pg_wal").join(&late_segment);
    let scratch = env.path("scratch");
    for (key, expect) in [
        (None, "is encrypted and no key was given"),
        (Some(other.as_path()), "does not open repository"),
        (Some(exposed.as_path()), "can be read by users other than its owner"),
    ] {
        let runs: Vec<(&str, PgkeepCmd)> = vec![
            ("list", cmd(&env, &repo, &pg, key).arg("list")),
            ("backup", cmd(&env, &repo, &pg, key).arg("backup")),
            ("restore", cmd(&env, &repo, &pg, key).arg("restore").arg("--to").arg(&scratch)),
            ("archive-push", cmd(&env, &repo, &pg, key).arg("archive-push").arg(&wal_file)),
            ("wal verify", cmd(&env, &repo, &pg, key).arg("wal").arg("verify")),
            ("init", cmd(&env, &repo, &pg, key).arg("init")),
            ("verify", cmd(&env, &repo, &pg, key).arg("verify").arg(&id)),
            ("key rotate", cmd(&env, &repo, &pg, key).arg("key").arg("rotate").arg("--new-key-file").arg(&k3)),
            ("archive-get", cmd(&env, &repo, &pg, key).arg("archive-get").arg(&late_segment).arg(scratch.join("seg"))),
        ];
        for (what, c) in runs {
            let o = c.fails();
            let line = o.one_error_line();
            assert!(line.contains(expect), "{what} with {key:?}: {line}");
            let want = if what == "archive-get" { 126 } else { 2 };
            assert_eq!(o.code, Some(want), "{what} with {key:?}: {line}");
        }
        assert!(!scratch.exists(), "a refused restore/archive-get created {}", scratch.display());
    }
    assert_eq!(fingerprint(&repo), before, "a refused command changed the repository");

    // Rotation: the new key opens it, the old one no longer does, the data was not rewritten.
    let data_before = fingerprint(&repo.join("backup"));
    let rot = cmd(&env, &repo, &pg, Some(&k1)).arg("key").arg("rotate").arg("--new-key-file").arg(&k3).ok();
    assert!(!rot.stdout.contains(&hex::encode(std::fs::read(&k3).unwrap())), "{}", rot.stdout);
    assert_eq!(fingerprint(&repo.join("backup")), data_before, "rotation rewrote data objects");
    let old = cmd(&env, &repo, &pg, Some(&k1)).arg("list").fails();
    assert!(old.one_error_line().contains("does not open repository"), "{}", old.stderr);
    assert_eq!(old.code, Some(2));
    let to2 = env.path("restored-after-rotation");
    cmd(&env, &repo, &pg, Some(&k3)).arg("restore").arg("--to").arg(&to2).json();
    {
        let mut r = env.cluster_on("restored2", &to2);
        r.set("archive_mode", "off");
        r.start();
        assert_eq!(r.int(&format!("SELECT count(*) FROM secret WHERE v = '{LATE_MARKER}'")), 1);
        r.stop();
    }

    // A flipped byte in a sealed WAL object: archive-get names it and exits 126.
    let wal_key = pgkeep::repo::layout::wal_key(&late_segment);
    flip_byte(&repo.join(&wal_key), 4000);
    let o = cmd(&env, &repo, &pg, Some(&k3)).arg("archive-get").arg(&late_segment).arg(env.path("seg")).fails();
    assert_eq!(o.code, Some(126), "{}", o.stderr);
    let line = o.one_error_line();
    assert!(line.contains(&wal_key) && line.contains("failed authentication"), "{line}");
    assert!(!env.path("seg").exists());

    // A flipped byte in a sealed data object: restore fails naming the object.
    let data = repo.join(format!("backup/{id}/data/000000"));
    flip_byte(&data, 100_000);
    let o = cmd(&env, &repo, &pg, Some(&k3)).arg("restore").arg("--to").arg(env.path("r3")).fails();
    let line = o.one_error_line();
    assert!(line.contains(&format!("backup/{id}/data/000000")) && line.contains("failed authentication"), "{line}");
}

#[test]
fn key_file_readable_by_others_or_of_the_wrong_size_is_refused_before_anything_is_created() {
    let env = common::env();
    let repo = env.path("repo");
    for (name, bytes, mode, expect) in [
        ("open.key", vec![1u8; 32], 0o644, "can be read by users other than its owner (mode 0644); hint: chmod 600"),
        ("group.key", vec![1u8; 32], 0o640, "can be read by users other than its owner (mode 0640)"),
        (
            "short.key",
            vec![1u8; 16],
            0o600,
            "holds 16 bytes, a key is exactly 32 random bytes; hint: create it with `head -c 32 /dev/urandom",
        ),
        ("hex.key", vec![b'a'; 65], 0o600, "holds more than 32 bytes"),
    ] {
        let k = env.path(name);
        std::fs::write(&k, bytes).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = env
            .pgkeep(["--repo"])
            .arg(&repo)
            .arg("--pgdata")
            .arg(env.path("no-such-pgdata"))
            .arg("--encryption-key-file")
            .arg(&k)
            .arg("init")
            .fails();
        assert_eq!(o.code, Some(2), "{}", o.stderr);
        assert!(o.one_error_line().contains(expect), "{name}: {}", o.stderr);
        assert!(!repo.exists(), "a refused init created the repository");
    }
}

#[test]
fn a_key_given_for_a_plain_repository_is_refused() {
    let s = common::Setup::new();
    let k = key_file(&s.env, "k.key");
    for args in [vec!["list"], vec!["backup"], vec!["key", "rotate", "--new-key-file"]] {
        let mut c = s.pgkeep(["--encryption-key-file"]).arg(&k);
        for a in &args {
            c = c.arg(a);
        }
        if args[0] == "key" {
            c = c.arg(&k);
        }
        let o = c.fails();
        assert_eq!(o.code, Some(2), "{args:?}: {}", o.stderr);
        assert!(o.one_error_line().contains("is not encrypted but an encryption key was given"), "{}", o.stderr);
    }
    // Plain repositories keep working without a key.
    s.pgkeep(["list"]).ok();
}
