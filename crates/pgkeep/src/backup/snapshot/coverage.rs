//! The coverage check, run before every snapshot backup: PGDATA, the real location of pg_wal
//! and every tablespace must each lie inside the snapshot of one configured volume; otherwise
//! the backup is refused with the uncovered path named (a snapshot set that misses pg_wal or a
//! tablespace restores into a cluster that cannot start, or silently lacks relations).
//!
//! A path P is covered by volume V when P lies below V's root (what V's snapshot contains, see
//! [`super::SnapshotDriver::root`]) *and* on the same device: a file system mounted below the
//! root, or a nested btrfs subvolume (btrfs gives every subvolume its own device number), is
//! not part of V's snapshot. The longest matching root wins.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{SnapshotError, SnapshotLayout, TablespacePath, VolumePath};

/// PostgreSQL's paths, resolved to where they really are.
#[derive(Debug, Clone)]
pub struct PgPaths {
    pub pgdata: PathBuf,
    pub pg_wal: PathBuf,
    pub pg_wal_is_link: bool,
    /// (oid, name, real location)
    pub tablespaces: Vec<(u32, String, PathBuf)>,
}

fn canon(p: &Path) -> Result<PathBuf, SnapshotError> {
    std::fs::canonicalize(p).map_err(|e| SnapshotError::Other(format!("cannot resolve {}: {e}", p.display())))
}

impl PgPaths {
    /// Resolve PGDATA, pg_wal (following its link) and the tablespaces (`(oid, name)` from the
    /// server; locations from the `pg_tblspc` links, which is what PostgreSQL itself follows).
    pub fn resolve(pgdata: &Path, tablespaces: &[(u32, String, String)]) -> Result<PgPaths, SnapshotError> {
        let pgdata_c = canon(pgdata)?;
        let wal = pgdata.join("pg_wal");
        let pg_wal_is_link = std::fs::symlink_metadata(&wal).map(|m| m.file_type().is_symlink()).unwrap_or(false);
        let pg_wal = canon(&wal)?;
        let mut ts = Vec::new();
        for (oid, name, location) in tablespaces {
            let link = pgdata.join("pg_tblspc").join(oid.to_string());
            let real = match std::fs::canonicalize(&link) {
                Ok(p) => p,
                Err(_) => canon(Path::new(location))?,
            };
            ts.push((*oid, name.clone(), real));
        }
        Ok(PgPaths { pgdata: pgdata_c, pg_wal, pg_wal_is_link, tablespaces: ts })
    }
}

/// A volume's root as it is now.
#[derive(Debug, Clone)]
pub struct Root {
    pub volume: String,
    pub root: PathBuf,
}

/// Map every PostgreSQL path onto a volume, or refuse naming the first uncovered one.
pub fn check(paths: &PgPaths, roots: &[Root]) -> Result<SnapshotLayout, SnapshotError> {
    let pgdata = locate(&paths.pgdata, roots).ok_or_else(|| uncovered("PGDATA", &paths.pgdata, None))?;
    let pg_wal = locate(&paths.pg_wal, roots).ok_or_else(|| {
        uncovered(
            "pg_wal",
            &paths.pg_wal,
            if paths.pg_wal_is_link {
                Some(format!(" (the real location of {}/pg_wal)", paths.pgdata.display()))
            } else {
                None
            },
        )
    })?;
    let mut tablespaces = Vec::new();
    for (oid, name, real) in &paths.tablespaces {
        let at = locate(real, roots).ok_or_else(|| {
            uncovered(&format!("tablespace {name} (oid {oid}) at"), real, Some(format!(" (pg_tblspc/{oid})")))
        })?;
        tablespaces.push(TablespacePath { oid: *oid, name: name.clone(), at });
    }
    Ok(SnapshotLayout {
        pgdata,
        pg_wal,
        pg_wal_is_link: paths.pg_wal_is_link,
        tablespaces,
        snapshot_spread_seconds: 0.0,
        frozen: Vec::new(),
    })
}

fn uncovered(what: &str, path: &Path, detail: Option<String>) -> SnapshotError {
    SnapshotError::Uncovered {
        what: what.to_string(),
        path: path.display().to_string(),
        detail: detail.unwrap_or_default(),
    }
}

fn dev_of(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.dev())
}

fn locate(path: &Path, roots: &[Root]) -> Option<VolumePath> {
    let dev = dev_of(path)?;
    roots
        .iter()
        .filter(|r| path.starts_with(&r.root) && dev_of(&r.root) == Some(dev))
        .max_by_key(|r| r.root.components().count())
        .map(|r| VolumePath {
            volume: r.volume.clone(),
            rel: super::rel_of(path, &r.root).unwrap_or_default(),
            original: path.display().to_string(),
        })
}

/// Mount point and file system type of the mount whose source is `device` (from
/// /proc/self/mountinfo), e.g. the loop device backing a reflink image.
pub fn mount_of_source(device: &Path) -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in text.lines() {
        // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split(' ');
        let root = l.nth(3)?;
        let mount = l.next()?;
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let source = r.next()?;
        if root == "/" && Path::new(&unescape(source)) == device {
            return Some((PathBuf::from(unescape(mount)), fstype.to_string()));
        }
    }
    None
}

/// True when `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    text.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(&unescape(m)) == want)
}

/// The loop device whose backing file is `image`, if any (/sys/block/loop*/loop/backing_file).
pub fn loop_device_of(image: &Path) -> Option<PathBuf> {
    let image = std::fs::canonicalize(image).ok()?;
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file")) else { continue };
        if Path::new(back.trim()) == image {
            return Some(PathBuf::from(format!("/dev/{name}")));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_root_on_the_same_device_wins_and_uncovered_paths_are_named() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        let data = base.join("vol/data");
        std::fs::create_dir_all(data.join("pg_wal")).unwrap();
        std::fs::create_dir_all(base.join("elsewhere/ts")).unwrap();
        let paths = PgPaths::resolve(&data, &[]).unwrap();
        let roots = vec![
            Root { volume: "outer".into(), root: base.clone() },
            Root { volume: "vol".into(), root: base.join("vol") },
        ];
        let l = check(&paths, &roots).unwrap();
        assert_eq!(l.pgdata.volume, "vol");
        assert_eq!(l.pgdata.rel, "data");
        assert_eq!(l.pg_wal.rel, "data/pg_wal");

        let paths = PgPaths {
            tablespaces: vec![(16384, "ts1".into(), base.join("elsewhere/ts"))],
            ..PgPaths::resolve(&data, &[]).unwrap()
        };
        let e = check(&paths, &roots[1..]).unwrap_err().to_string();
        assert!(e.contains(&base.join("elsewhere/ts").display().to_string()) && e.contains("ts1"), "{e}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
