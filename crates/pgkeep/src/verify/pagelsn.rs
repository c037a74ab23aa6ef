//! The page-LSN check: no page of any relation file (heap, index, every fork) may carry an LSN
//! beyond the end of the WAL that recovery replayed.
//!
//! PostgreSQL writes a data page only after the WAL up to that page's LSN is flushed
//! (`FlushBuffer` → `XLogFlush`), so in any copy taken atomically — or bracketed by the backup
//! API — every page's `pd_lsn` is at or before the end of the copied WAL. A page with a later
//! LSN was copied after WAL that the copy does not contain: the copy mixes moments. Such a copy
//! can start cleanly and pass `bt_index_check`; the change that page holds is then not
//! covered by WAL, and the next write to the page fails (`xlog flush request … is not
//! satisfied`) or, worse, the application writes keys the index does not know.
//!
//! The scan runs on the scratch copy *before* the server starts (recovery and the checks
//! rewrite pages), so it sees exactly what was copied. The end of WAL is known only once
//! recovery is done, so the scan keeps the pages whose LSN lies after a lower bound that the
//! end of WAL cannot precede (the redo point recovery starts from), and [`ScanResult::beyond`]
//! evaluates them afterwards.
//!
//! Page header (storage/bufpage.h): `pd_lsn` is the first 8 bytes, a `PageXLogRecPtr`
//! `{ uint32 xlogid; uint32 xrecoff; }` in host byte order: LSN = xlogid << 32 | xrecoff.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use pgkeep_wal::Lsn;

use super::VerifyError;
use crate::progress::Progress;
use crate::repo::seal::read_full;

/// Pages kept per file above the lower bound (the count beyond the end of WAL is exact below
/// this; above it the report says "at least").
const MAX_KEPT_PER_FILE: usize = 4096;

/// One relation segment file: `base/5/16384_vm.1` is relation `base/5/16384`, fork `vm`,
/// segment 1.
#[derive(Debug, Clone)]
pub struct RelFile {
    /// Path relative to PGDATA as `pg_relation_filepath()` prints it (no fork, no segment).
    pub rel_path: String,
    pub fork: &'static str,
    pub segno: u32,
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, Clone, Default)]
pub struct FileScan {
    pub pages: u64,
    pub max_lsn: u64,
    /// (block number within the relation fork, LSN) of pages after the lower bound.
    pub kept: Vec<(u64, u64)>,
    pub truncated: bool,
}

#[derive(Debug, Default)]
pub struct ScanResult {
    pub lower_bound: Lsn,
    pub files: Vec<(RelFile, FileScan)>,
    pub pages: u64,
    pub bytes: u64,
    /// Files that could not be read (named with the error).
    pub unreadable: Vec<String>,
}

/// Pages of one relation fork beyond the end of WAL.
#[derive(Debug, Clone)]
pub struct Beyond {
    pub rel_path: String,
    pub fork: &'static str,
    pub pages: u64,
    pub at_least: bool,
    pub first_block: u64,
    pub max_lsn: Lsn,
}

impl ScanResult {
    /// Relation forks with pages whose LSN is after `end`.
    pub fn beyond(&self, end: Lsn) -> Vec<Beyond> {
        let mut by_rel: BTreeMap<(String, &'static str), Beyond> = BTreeMap::new();
        for (f, s) in &self.files {
            if s.max_lsn <= end.0 {
                continue;
            }
            let over: Vec<&(u64, u64)> = s.kept.iter().filter(|(_, l)| *l > end.0).collect();
            let b = by_rel.entry((f.rel_path.clone(), f.fork)).or_insert_with(|| Beyond {
                rel_path: f.rel_path.clone(),
                fork: f.fork,
                pages: 0,
                at_least: false,
                first_block: u64::MAX,
                max_lsn: Lsn(0),
            });
            b.pages += over.len() as u64;
            b.at_least |= s.truncated;
            if let Some(first) = over.iter().map(|(blk, _)| *blk).min() {
                b.first_block = b.first_block.min(first);
            }
            b.max_lsn = Lsn(b.max_lsn.0.max(s.max_lsn));
        }
        by_rel.into_values().collect()
    }
}

/// Parse a relation file name: `16384`, `16384.2`, `16384_fsm`, `16384_vm.1`, `16384_init`.
fn parse_name(name: &str) -> Option<(&str, &'static str, u32)> {
    let (base, seg) = match name.split_once('.') {
        Some((b, s)) => (b, s.parse::<u32>().ok()?),
        None => (name, 0),
    };
    let (node, fork) = match base.split_once('_') {
        Some((n, "fsm")) => (n, "fsm"),
        Some((n, "vm")) => (n, "vm"),
        Some((n, "init")) => (n, "init"),
        Some(_) => return None,
        None => (base, "main"),
    };
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((node, fork, seg))
}

/// Every relation file of the cluster at `pgdata`: `global/`, `base/<db>/`, and
/// `pg_tblspc/<oid>/<PG_version_catversion>/<db>/`. Temporary relations (`t3_16384`) are not
/// matched; unlogged relations (those with an `_init` fork) contribute only their init fork,
/// since their other forks are reset at the end of recovery and are not WAL-logged.
pub fn relation_files(pgdata: &Path) -> Result<Vec<RelFile>, VerifyError> {
    let mut dirs: Vec<(PathBuf, String)> = vec![(pgdata.join("global"), "global".into())];
    let list = |d: &Path| -> Result<Vec<fs::DirEntry>, VerifyError> {
        let mut v = Vec::new();
        for e in
            fs::read_dir(d).map_err(|e| VerifyError::Scan { path: d.display().to_string(), detail: e.to_string() })?
        {
            v.push(e.map_err(|e| VerifyError::Scan { path: d.display().to_string(), detail: e.to_string() })?);
        }
        Ok(v)
    };
    for e in list(&pgdata.join("base"))? {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.bytes().all(|b| b.is_ascii_digit()) {
            dirs.push((e.path(), format!("base/{n}")));
        }
    }
    let tblspc = pgdata.join("pg_tblspc");
    if tblspc.is_dir() {
        for t in list(&tblspc)? {
            let oid = t.file_name().to_string_lossy().into_owned();
            for v in list(&t.path())? {
                let ver = v.file_name().to_string_lossy().into_owned();
                if !ver.starts_with("PG_") || !v.path().is_dir() {
                    continue;
                }
                for d in list(&v.path())? {
                    let db = d.file_name().to_string_lossy().into_owned();
                    if db.bytes().all(|b| b.is_ascii_digit()) && d.path().is_dir() {
                        dirs.push((d.path(), format!("pg_tblspc/{oid}/{ver}/{db}")));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (dir, rel_dir) in dirs {
        let entries = list(&dir)?;
        let names: HashSet<String> = entries.iter().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((node, fork, segno)) = parse_name(&name) else { continue };
            if fork != "init" && names.contains(&format!("{node}_init")) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            out.push(RelFile { rel_path: format!("{rel_dir}/{node}"), fork, segno, path: e.path(), size: meta.len() });
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.size));
    Ok(out)
}

/// Read every page of every relation file with `jobs` threads.
pub fn scan(
    pgdata: &Path,
    lower_bound: Lsn,
    block_size: u32,
    relseg_blocks: u32,
    jobs: usize,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<ScanResult, VerifyError> {
    let files = relation_files(pgdata)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    progress.phase("page-LSN scan", Some(total));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<FileScan, String>)>> = Mutex::new(Vec::new());
    let bs = block_size.max(512) as usize;
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = files.get(i) else { break };
                let r = scan_file(f, lower_bound, bs, relseg_blocks as u64, progress).map_err(|e| e.to_string());
                results.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
            });
        }
    });
    progress.finish_phase();
    if cancel.load(Ordering::Relaxed) {
        return Err(VerifyError::Interrupted { what: "the page-LSN scan".into() });
    }
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut out = ScanResult { lower_bound, ..Default::default() };
    for (i, r) in results {
        let f = files[i].clone();
        match r {
            Ok(s) => {
                out.pages += s.pages;
                out.bytes += f.size;
                out.files.push((f, s));
            }
            Err(e) => out.unreadable.push(format!("{}: {e}", f.path.display())),
        }
    }
    Ok(out)
}

fn scan_file(
    f: &RelFile,
    lower: Lsn,
    bs: usize,
    relseg_blocks: u64,
    progress: &dyn Progress,
) -> std::io::Result<FileScan> {
    let mut file = File::open(&f.path)?;
    let mut buf = vec![0u8; bs * 128];
    let mut s = FileScan::default();
    let mut block = f.segno as u64 * relseg_blocks;
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        // A trailing partial page (a file copied while it was being extended) has no header
        // worth reading; whole pages only.
        for page in buf[..n].chunks_exact(bs) {
            let xlogid = u32::from_ne_bytes([page[0], page[1], page[2], page[3]]) as u64;
            let xrecoff = u32::from_ne_bytes([page[4], page[5], page[6], page[7]]) as u64;
            let lsn = (xlogid << 32) | xrecoff;
            s.pages += 1;
            s.max_lsn = s.max_lsn.max(lsn);
            if lsn > lower.0 {
                if s.kept.len() < MAX_KEPT_PER_FILE {
                    s.kept.push((block, lsn));
                } else {
                    s.truncated = true;
                }
            }
            block += 1;
        }
        progress.advance(n as u64);
        if n < buf.len() {
            break;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        assert_eq!(parse_name("16384"), Some(("16384", "main", 0)));
        assert_eq!(parse_name("16384.2"), Some(("16384", "main", 2)));
        assert_eq!(parse_name("16384_vm.1"), Some(("16384", "vm", 1)));
        assert_eq!(parse_name("16384_fsm"), Some(("16384", "fsm", 0)));
        assert_eq!(parse_name("16384_init"), Some(("16384", "init", 0)));
        assert_eq!(parse_name("t3_16384"), None);
        assert_eq!(parse_name("pg_filenode.map"), None);
        assert_eq!(parse_name("PG_VERSION"), None);
        assert_eq!(parse_name("16384_xyz"), None);
    }

    #[test]
    fn pages_beyond_the_end_are_found_and_unlogged_main_forks_skipped() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base/5");
        fs::create_dir_all(&base).unwrap();
        fs::create_dir_all(d.path().join("global")).unwrap();
        let page = |lsn: u64| {
            let mut p = vec![0u8; 8192];
            p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
            p[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
            p
        };
        let mut rel = Vec::new();
        for l in [0x100u64, 0x3000, 0x200, 0x5000] {
            rel.extend(page(l));
        }
        fs::write(base.join("16384"), &rel).unwrap();
        // An unlogged relation: main fork with a wild LSN, and its init fork.
        fs::write(base.join("16390"), page(0xFFFF_FFFF)).unwrap();
        fs::write(base.join("16390_init"), page(0)).unwrap();
        let cancel = AtomicBool::new(false);
        let r = scan(d.path(), Lsn(0x150), 8192, 131072, 2, &crate::progress::NoProgress, &cancel).unwrap();
        assert_eq!(r.pages, 5);
        let b = r.beyond(Lsn(0x2000));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].rel_path, "base/5/16384");
        assert_eq!(b[0].pages, 2);
        assert_eq!(b[0].first_block, 1);
        assert_eq!(b[0].max_lsn, Lsn(0x5000));
        assert!(r.beyond(Lsn(0x5000)).is_empty());
    }
}
