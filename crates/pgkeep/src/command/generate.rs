//! `pgkeep generate man DIR` / `pgkeep generate completions SHELL DIR` (hidden): the man pages
//! and shell completions the Debian package ships, generated from the clap definitions so they
//! cannot drift from `--help`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Serialize;

use crate::cli::Cli;
use crate::Error;

#[derive(Debug, Serialize)]
pub struct Generated {
    pub files: Vec<PathBuf>,
}

fn err(dir: &Path, e: std::io::Error) -> Error {
    Error::other(format!("cannot write into {}: {e}; hint: create the directory first", dir.display()))
}

/// pgkeep.1 and one page per visible subcommand (pgkeep-backup.1, pgkeep-wal-verify.1, …).
pub fn man(dir: &Path) -> crate::Result<Generated> {
    clap_mangen::generate_to(Cli::command(), dir).map_err(|e| err(dir, e))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "1")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pgkeep"))
        })
        .collect();
    files.sort();
    Ok(Generated { files })
}

pub fn completions(shell: clap_complete::Shell, dir: &Path) -> crate::Result<Generated> {
    let path = clap_complete::generate_to(shell, &mut Cli::command(), "pgkeep", dir).map_err(|e| err(dir, e))?;
    Ok(Generated { files: vec![path] })
}
