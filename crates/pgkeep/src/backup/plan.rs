//! What one files-driver backup will copy, decided before the first byte moves.

use std::path::{Path, PathBuf};

use crate::pg::datadir::{self, Kind, PathEntry};

#[derive(Debug, Clone)]
pub struct FileTask {
    pub rel: String,
    pub abs: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// What of the file is stored (incremental backups decide per file).
    pub read: ReadMode,
}

/// How much of a file a backup reads and stores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// The whole file (full backups; files an incremental cannot vouch for).
    #[default]
    Whole,
    /// Only these `[first, end)` block ranges (changed blocks found in the WAL); empty: nothing.
    Blocks(Vec<[u32; 2]>),
    /// Every block, keeping those whose page LSN is at or after this one, and new (all-zero)
    /// pages (`--incremental-by checksum`).
    PagesSince(pgkeep_wal::Lsn),
}

#[derive(Debug)]
pub struct BackupPlan {
    pub pgdata: PathBuf,
    /// Directories and symlinks, recreated as they were.
    pub structure: Vec<PathEntry>,
    /// Regular files, largest first (keeps workers evenly busy).
    pub files: Vec<FileTask>,
    /// global/pg_control, copied after everything else (as basebackup.c does).
    pub pg_control: FileTask,
    pub tablespaces: Vec<datadir::FoundTablespace>,
    pub total_bytes: u64,
}

impl BackupPlan {
    pub fn build(pgdata: &Path) -> std::io::Result<BackupPlan> {
        let scan = datadir::scan(pgdata)?;
        let mut structure = Vec::new();
        let mut files = Vec::new();
        let mut pg_control = None;
        for e in scan.entries {
            match e.kind {
                Kind::File => {
                    let t = FileTask {
                        rel: e.rel.clone(),
                        abs: e.abs.clone(),
                        size: e.size,
                        mode: e.mode,
                        mtime: e.mtime,
                        read: ReadMode::Whole,
                    };
                    if e.rel == "global/pg_control" {
                        pg_control = Some(t);
                    } else {
                        files.push(t);
                    }
                }
                Kind::Dir | Kind::Link => structure.push(e),
            }
        }
        let pg_control = pg_control.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no global/pg_control", pgdata.display()))
        })?;
        files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.rel.cmp(&b.rel)));
        let total_bytes = files.iter().map(|f| f.size).sum::<u64>() + pg_control.size;
        Ok(BackupPlan {
            pgdata: pgdata.to_path_buf(),
            structure,
            files,
            pg_control,
            tablespaces: scan.tablespaces,
            total_bytes,
        })
    }
}
