//! Error policy.
//!
//! - Every module owns one `thiserror` enum; this file only gathers them into [`Error`] so
//!   commands can use `?` across modules. `anyhow` lives in the binary alone.
//! - A message is one line an operator can act on: lowercase, names the object (segment, file,
//!   backup id, repository path), says what is wrong, and ends with `; hint: …` where there is a
//!   next step. No message contains a password or key (invariant 8).
//! - Nothing that came from disk or the network is `unwrap()`ed; damaged input is an error value.
//! - The binary maps errors to exit codes: 1 for a failed operation, 2 for bad usage/config
//!   (see [`Error::exit_code`]); 0 only when a command did everything it says. `archive-get`
//!   is the exception: 1 only for "no such file", 126 for every error (src/main.rs).

use crate::{archive, backup, config, pg, repo, restore, retention, verify, wal};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Repo(#[from] repo::RepoError),
    #[error(transparent)]
    Storage(#[from] repo::StorageError),
    #[error(transparent)]
    Key(#[from] repo::KeyError),
    #[error(transparent)]
    Frame(#[from] repo::FrameError),
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    #[error(transparent)]
    Instance(#[from] pg::InstanceError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Snapshot(#[from] backup::snapshot::SnapshotError),
    #[error(transparent)]
    Retention(#[from] retention::RetentionError),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// 2 for problems the operator fixes in the command line or config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Key(k) if k.is_usage() => 2,
            Error::Storage(repo::StorageError::Config { .. } | repo::StorageError::Unsupported { .. }) => 2,
            Error::Snapshot(s) if s.is_usage() => 2,
            Error::Instance(i) if i.is_usage() => 2,
            Error::Retention(r) if r.is_usage() => 2,
            // PostgreSQL treats a restore_command exit status above 125 as fatal: recovery stops
            // instead of ending early at a damaged or unreadable archive copy.
            Error::Archive(archive::ArchiveError::Damaged { .. }) => 126,
            // 130 after SIGINT, as a shell reports it; 2 for a bad --memory.
            Error::Verify(e) => e.exit_code(),
            _ => 1,
        }
    }

    pub fn other(msg: impl Into<String>) -> Self {
        Error::Other(msg.into())
    }
}
