//! Which PostgreSQL binaries run a cluster: those of the cluster's own major, since a server
//! refuses a data directory of another major (`database files are incompatible with server`).
//!
//! Order: the operator's directory (`--pg-bin` / `pg_bin_dir`, which must hold that major),
//! Debian's `/usr/lib/postgresql/<major>/bin`, `/opt/pgkeep-pg/<major>/bin` (where
//! scripts/setup.sh installs majors Debian does not ship), then `pg_config --bindir` when
//! `pg_config` reports that major.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::InstanceError;

/// Debian's per-major installations.
const DEBIAN_DIR: &str = "/usr/lib/postgresql";
/// scripts/setup.sh's per-major installations (`<major>/bin`).
pub const PGKEEP_PG_DIR: &str = "/opt/pgkeep-pg";

/// A directory of PostgreSQL binaries.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// Server binaries when any major will do (demo, tests): `explicit`, else Debian's newest,
    /// else `pg_config --bindir`, else PATH.
    pub fn find_any(explicit: Option<&Path>) -> Result<PgBin, InstanceError> {
        if let Some(dir) = explicit {
            return PgBin::at(dir);
        }
        if let Some(m) = installed_majors(Path::new(DEBIAN_DIR)).last() {
            return Ok(PgBin { dir: per_major(DEBIAN_DIR, *m) });
        }
        if let Some((dir, _)) = pg_config() {
            if dir.join("postgres").exists() {
                return Ok(PgBin { dir });
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for p in std::env::split_paths(&path) {
                if p.join("postgres").exists() && p.join("initdb").exists() {
                    return Ok(PgBin { dir: p });
                }
            }
        }
        Err(InstanceError::BinariesNotFound { detail: String::new() })
    }

    /// The operator's directory, which must hold a postgres binary.
    pub fn at(dir: &Path) -> Result<PgBin, InstanceError> {
        if dir.join("postgres").is_file() {
            Ok(PgBin { dir: dir.to_path_buf() })
        } else {
            Err(InstanceError::NotBinDir { dir: dir.display().to_string() })
        }
    }

    /// Server binaries of `major` for `what` (e.g. "backup 20261207-101500F"), in the order
    /// the module documents; `explicit` of another major is refused, never used.
    pub fn for_major(major: u32, explicit: Option<&Path>, what: &str) -> Result<PgBin, InstanceError> {
        if let Some(dir) = explicit {
            let bin = PgBin::at(dir)?;
            let found = bin.major()?;
            if found != major {
                return Err(InstanceError::WrongMajor {
                    dir: dir.display().to_string(),
                    found,
                    major,
                    what: what.to_string(),
                });
            }
            return Ok(bin);
        }
        for root in [DEBIAN_DIR, PGKEEP_PG_DIR] {
            let dir = per_major(root, major);
            if dir.join("postgres").is_file() {
                return Ok(PgBin { dir });
            }
        }
        if let Some((dir, m)) = pg_config() {
            if m == major && dir.join("postgres").is_file() {
                return Ok(PgBin { dir });
            }
        }
        Err(InstanceError::NoBinariesForMajor {
            major,
            what: what.to_string(),
            looked: format!(
                "{}, {}, pg_config --bindir",
                per_major(DEBIAN_DIR, major).display(),
                per_major(PGKEEP_PG_DIR, major).display()
            ),
        })
    }

    /// A directory with `pg_dump` and `pg_dumpall` able to dump a server of `major` (pg_dump
    /// refuses servers newer than itself): these binaries' own, else Debian's newest, else
    /// PATH's. Asked before a drill starts, so a `--dump` that cannot work fails first.
    pub fn dump_tools_for(&self, major: u32) -> Result<PgBin, InstanceError> {
        let mut candidates = vec![self.dir.clone()];
        candidates.extend(installed_majors(Path::new(DEBIAN_DIR)).iter().rev().map(|m| per_major(DEBIAN_DIR, *m)));
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        let mut newest: Option<(u32, PathBuf)> = None;
        for dir in candidates {
            let tool = dir.join("pg_dump");
            if !tool.is_file() || !dir.join("pg_dumpall").is_file() {
                continue;
            }
            let Some(m) = tool_major(&tool, "--version") else { continue };
            if m >= major {
                return Ok(PgBin { dir });
            }
            if newest.as_ref().is_none_or(|(n, _)| m > *n) {
                newest = Some((m, tool));
            }
        }
        Err(InstanceError::PgDumpTooOld {
            major,
            found: match newest {
                Some((m, tool)) => format!("PostgreSQL {m}'s ({})", tool.display()),
                None => "none (no pg_dump beside the server binaries, in /usr/lib/postgresql or on PATH)".into(),
            },
        })
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Major version of these binaries (`postgres --version`).
    pub fn major(&self) -> Result<u32, InstanceError> {
        tool_major(&self.tool("postgres"), "--version").ok_or_else(|| InstanceError::Spawn {
            tool: format!("{} --version", self.tool("postgres").display()),
            detail: "no version in its output".into(),
        })
    }
}

fn per_major(root: &str, major: u32) -> PathBuf {
    Path::new(root).join(major.to_string()).join("bin")
}

/// Majors with a postgres binary under `root/<major>/bin`, oldest first.
fn installed_majors(root: &Path) -> Vec<u32> {
    let mut majors: Vec<u32> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .filter(|m: &u32| root.join(m.to_string()).join("bin/postgres").is_file())
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    majors
}

/// `pg_config --bindir` and the major `pg_config --version` reports.
fn pg_config() -> Option<(PathBuf, u32)> {
    let major = tool_major(Path::new("pg_config"), "--version")?;
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some((dir, major))
}

/// The major in a `--version` line: "postgres (PostgreSQL) 17.10", "PostgreSQL 15.18 (Debian)".
fn tool_major(tool: &Path, arg: &str) -> Option<u32> {
    let out = Command::new(tool).arg(arg).output().ok()?;
    parse_version_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version_major(text: &str) -> Option<u32> {
    let mut words = text.split_whitespace().skip_while(|w| !w.contains("PostgreSQL"));
    words.nth(1)?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines() {
        assert_eq!(parse_version_major("postgres (PostgreSQL) 17.10\n"), Some(17));
        assert_eq!(parse_version_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_version_major("PostgreSQL 18.4"), Some(18));
        assert_eq!(parse_version_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_version_major("nonsense"), None);
    }
}
