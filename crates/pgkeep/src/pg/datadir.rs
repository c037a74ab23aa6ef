//! Which paths of a data directory a backup copies. Follows PostgreSQL's own list
//! (backend/backup/basebackup.c: excludeDirContents, excludeFiles; unlogged and temporary
//! relations) so a restored cluster starts exactly as one from pg_basebackup would.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directories kept (empty) but whose contents are skipped: recreated or reset at start-up.
pub const EXCLUDE_DIR_CONTENTS: &[&str] = &[
    "pg_stat_tmp",  // statistics temp files (PG_STAT_TMP_DIR)
    "pg_replslot",  // slots are not valid on a restored copy
    "pg_dynshmem",  // removed at start-up (dsm_cleanup_for_mmap)
    "pg_notify",    // removed at start-up (AsyncShmemInit)
    "pg_serial",    // only for debugging after restart (SerialInit)
    "pg_snapshots", // removed at start-up (DeleteAllExportedSnapshotFiles)
    "pg_subtrans",  // zeroed at start-up (StartupSUBTRANS)
];

/// Files never copied, by exact name anywhere in PGDATA's top level.
pub const EXCLUDE_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// Prefix-matched names skipped at any depth.
const EXCLUDE_PREFIXES: &[&str] = &["pg_internal.init", "pgsql_tmp"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Link,
}

/// One path to back up, relative to PGDATA (tablespaces as `pg_tblspc/<oid>/...`).
#[derive(Debug, Clone)]
pub struct PathEntry {
    pub rel: String,
    pub abs: PathBuf,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub target: Option<String>,
}

/// A tablespace found under pg_tblspc.
#[derive(Debug, Clone)]
pub struct FoundTablespace {
    pub oid: u32,
    pub location: PathBuf,
}

/// The result of scanning a data directory.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<PathEntry>,
    pub tablespaces: Vec<FoundTablespace>,
    /// Real location of pg_wal (differs from PGDATA/pg_wal when it is a symlink).
    pub wal_dir: PathBuf,
}

/// Walk PGDATA (and the tablespaces linked from pg_tblspc) applying the skip rules.
pub fn scan(pgdata: &Path) -> io::Result<Scan> {
    let mut scan = Scan {
        wal_dir: fs::canonicalize(pgdata.join("pg_wal")).unwrap_or_else(|_| pgdata.join("pg_wal")),
        ..Default::default()
    };
    walk_dir(pgdata, "", 0, &mut scan)?;
    Ok(scan)
}

fn meta_entry(rel: String, abs: PathBuf, kind: Kind, md: &fs::Metadata) -> PathEntry {
    PathEntry {
        rel,
        abs,
        kind,
        size: if kind == Kind::File { md.len() } else { 0 },
        mode: md.permissions().mode() & 0o7777,
        mtime: md.mtime(),
        target: None,
    }
}

fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn walk_dir(dir: &Path, rel: &str, depth: usize, scan: &mut Scan) -> io::Result<()> {
    let mut names: Vec<(String, PathBuf)> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect(),
        // A directory dropped while we walk (e.g. DROP DATABASE) is simply gone; WAL replay agrees.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    names.sort();
    let unlogged = unlogged_relfilenodes(&names);
    for (name, abs) in names {
        let child_rel = join_rel(rel, &name);
        if depth == 0 && EXCLUDE_FILES.contains(&name.as_str()) {
            continue;
        }
        if EXCLUDE_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let md = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ft = md.file_type();
        // pg_wal (and pg_tblspc links) may be symlinks; follow them where PostgreSQL does.
        if depth == 0 && name == "pg_wal" {
            let real = fs::metadata(&abs)?;
            scan.entries.push(meta_entry(child_rel.clone(), abs.clone(), Kind::Dir, &real));
            // Keep archive_status so the restored server finds the directory it expects.
            let status = abs.join("archive_status");
            if let Ok(m) = fs::metadata(&status) {
                scan.entries.push(meta_entry(format!("{child_rel}/archive_status"), status, Kind::Dir, &m));
            }
            continue;
        }
        if rel == "pg_tblspc" && ft.is_symlink() {
            let Ok(oid) = name.parse::<u32>() else { continue };
            let target = fs::read_link(&abs)?;
            let real = fs::metadata(&abs)?;
            let mut e = meta_entry(child_rel.clone(), abs.clone(), Kind::Link, &real);
            e.target = Some(target.to_string_lossy().into_owned());
            scan.entries.push(e);
            scan.tablespaces.push(FoundTablespace { oid, location: target.clone() });
            walk_dir(&abs, &child_rel, depth + 1, scan)?;
            continue;
        }
        if ft.is_symlink() {
            let target = fs::read_link(&abs)?;
            let mut e = meta_entry(child_rel, abs, Kind::Link, &md);
            e.target = Some(target.to_string_lossy().into_owned());
            scan.entries.push(e);
            continue;
        }
        if ft.is_dir() {
            scan.entries.push(meta_entry(child_rel.clone(), abs.clone(), Kind::Dir, &md));
            if depth == 0 && EXCLUDE_DIR_CONTENTS.contains(&name.as_str()) {
                continue;
            }
            walk_dir(&abs, &child_rel, depth + 1, scan)?;
            continue;
        }
        if !ft.is_file() {
            continue; // sockets, fifos: nothing PostgreSQL needs
        }
        if is_in_relation_dir(rel) {
            if is_temp_relation(&name) {
                continue;
            }
            if let Some(node) = relfilenode_of(&name) {
                if unlogged.contains(&node) && !name.ends_with("_init") {
                    continue;
                }
            }
        }
        scan.entries.push(meta_entry(child_rel, abs, Kind::File, &md));
    }
    Ok(())
}

/// base/<db> and pg_tblspc/<oid>/<PG_xx_cat>/<db> hold relation files.
fn is_in_relation_dir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    matches!(parts.as_slice(), ["base", _]) || matches!(parts.as_slice(), ["pg_tblspc", _, _, _])
}

/// `t3_16384`, `t3_16384_fsm`, `t3_16384.1`: temporary relations (common/relpath.h).
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, node)) = rest.split_once('_') else { return false };
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && relfilenode_of(node).is_some()
}

/// `16384`, `16384.2`, `16384_fsm`, `16384_vm`, `16384_init` → 16384.
fn relfilenode_of(name: &str) -> Option<u64> {
    let digits_end = name.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(name.len());
    if digits_end == 0 {
        return None;
    }
    let (num, rest) = name.split_at(digits_end);
    let rest_ok = rest.is_empty()
        || matches!(rest, "_fsm" | "_vm" | "_init")
        || (rest.starts_with('.') && rest.len() > 1 && rest[1..].bytes().all(|b| b.is_ascii_digit()))
        || ["_fsm.", "_vm.", "_init."]
            .iter()
            .any(|p| rest.starts_with(p) && rest[p.len()..].bytes().all(|b| b.is_ascii_digit()));
    if !rest_ok {
        return None;
    }
    num.parse().ok()
}

/// Relations with an init fork are unlogged: only the init fork is copied (reset on start-up).
fn unlogged_relfilenodes(names: &[(String, PathBuf)]) -> std::collections::HashSet<u64> {
    names.iter().filter_map(|(n, _)| n.strip_suffix("_init")).filter_map(|n| n.parse::<u64>().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names() {
        assert_eq!(relfilenode_of("16384"), Some(16384));
        assert_eq!(relfilenode_of("16384.12"), Some(16384));
        assert_eq!(relfilenode_of("16384_fsm"), Some(16384));
        assert_eq!(relfilenode_of("16384_init"), Some(16384));
        assert_eq!(relfilenode_of("PG_VERSION"), None);
        assert_eq!(relfilenode_of("pg_filenode.map"), None);
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t12_16384_fsm"));
        assert!(!is_temp_relation("16384"));
    }

    #[test]
    fn skip_rules_on_a_fake_datadir() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in ["base/5", "global", "pg_wal/archive_status", "pg_replslot/slot1", "pg_stat_tmp", "base/5/pgsql_tmp"]
        {
            fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "global/pg_control",
            "global/pg_internal.init",
            "base/5/1259",
            "base/5/16400",
            "base/5/16400_fsm",
            "base/5/16400_init",
            "base/5/16400.1",
            "base/5/t3_16500",
            "pg_wal/000000010000000000000001",
            "pg_replslot/slot1/state",
            "pg_stat_tmp/x",
            "base/5/pgsql_tmp/pgsql_tmp1.0",
        ] {
            fs::write(p.join(f), b"x").unwrap();
        }
        let s = scan(p).unwrap();
        let rels: Vec<&str> = s.entries.iter().map(|e| e.rel.as_str()).collect();
        for must in [
            "PG_VERSION",
            "global/pg_control",
            "base/5/1259",
            "base/5/16400_init",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_replslot",
            "pg_stat_tmp",
        ] {
            assert!(rels.contains(&must), "{must} missing from {rels:?}");
        }
        for never in [
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "global/pg_internal.init",
            "base/5/16400",
            "base/5/16400_fsm",
            "base/5/16400.1",
            "base/5/t3_16500",
            "pg_wal/000000010000000000000001",
            "pg_replslot/slot1",
            "pg_stat_tmp/x",
            "base/5/pgsql_tmp",
        ] {
            assert!(!rels.contains(&never), "{never} must be skipped");
        }
    }
}
