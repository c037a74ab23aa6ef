//! Which relation fork and segment a PGDATA path holds, as PostgreSQL names them
//! (`GetRelationPath`, common/relpath.c): `global/<rel>`, `base/<db>/<rel>`,
//! `pg_tblspc/<spc>/PG_<major>_<catver>/<db>/<rel>`, then `_fsm`/`_vm`/`_init` for the fork and
//! `.<n>` for the n-th segment of RELSEG_SIZE blocks.

/// `GLOBALTABLESPACE_OID`, `DEFAULTTABLESPACE_OID`. // catalog/pg_tablespace.dat
pub const GLOBALTABLESPACE_OID: u32 = 1664;
pub const DEFAULTTABLESPACE_OID: u32 = 1663;
/// `ForkNumber`. // common/relpath.h
pub const FSM_FORKNUM: u8 = 1;
pub const VISIBILITYMAP_FORKNUM: u8 = 2;

/// One fork of one relation (`RelFileLocator` + `ForkNumber`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFork {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
}

/// A relation data file: its fork and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelFile {
    pub fork: RelFork,
    pub segno: u32,
}

fn oid(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return None;
    }
    s.parse().ok().filter(|v| *v != 0)
}

/// The relation file a PGDATA-relative path names; None for every other file (temporary
/// relations `t<backend>_<rel>` included: they are never backed up).
pub fn parse(path: &str) -> Option<RelFile> {
    let parts: Vec<&str> = path.split('/').collect();
    let (spc, db, name) = match parts.as_slice() {
        ["global", name] => (GLOBALTABLESPACE_OID, 0, *name),
        ["base", db, name] => (DEFAULTTABLESPACE_OID, oid(db)?, *name),
        ["pg_tblspc", spc, version, db, name] if version.starts_with("PG_") => (oid(spc)?, oid(db)?, *name),
        _ => return None,
    };
    let (name, segno) = match name.split_once('.') {
        Some((n, seg)) => (n, oid(seg)?),
        None => (name, 0),
    };
    let (rel, fork) = match name.split_once('_') {
        Some((r, "fsm")) => (r, FSM_FORKNUM),
        Some((r, "vm")) => (r, VISIBILITYMAP_FORKNUM),
        Some((r, "init")) => (r, 3),
        Some(_) => return None,
        None => (name, 0),
    };
    Some(RelFile { fork: RelFork { spc, db, rel: oid(rel)?, fork }, segno })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_paths_parse_like_relpath() {
        let f = |spc, db, rel, fork, segno| Some(RelFile { fork: RelFork { spc, db, rel, fork }, segno });
        assert_eq!(parse("base/5/16384"), f(1663, 5, 16384, 0, 0));
        assert_eq!(parse("base/5/16384.3"), f(1663, 5, 16384, 0, 3));
        assert_eq!(parse("base/5/16384_fsm"), f(1663, 5, 16384, 1, 0));
        assert_eq!(parse("base/5/16384_vm.1"), f(1663, 5, 16384, 2, 1));
        assert_eq!(parse("base/5/16384_init"), f(1663, 5, 16384, 3, 0));
        assert_eq!(parse("global/1262"), f(1664, 0, 1262, 0, 0));
        assert_eq!(parse("pg_tblspc/16390/PG_15_202209061/16401/16402"), f(16390, 16401, 16402, 0, 0));
        for other in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "global/pg_control",
            "base/5/t3_16384",
            "pg_xact/0000",
            "base/5/16384.0",
            "base/5/16384_xyz",
            "pg_tblspc/16390/PG_15_202209061/16401",
            "base/05/16384",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
