//! WAL integrity and forensics: `wal verify` (the archive: continuity per timeline, every
//! record of every segment, each backup's WAL range) and `wal inspect` (a data directory that
//! will not start: what is damaged, what would be lost, how to lose nothing). The format work
//! lives in `pgkeep_wal` (`validate_segment`, `inspect_wal`); this module does the I/O, asks
//! the archive, and renders.

pub mod archived;
pub mod inspect;
pub mod timelines;
pub mod verify;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot read {path}: {detail}; hint: {hint}")]
    Read { path: String, detail: String, hint: String },
    #[error("{path} is damaged: {detail}; the WAL cannot be located without it; hint: do not run pg_resetwal; keep a copy of the data directory and restore the newest backup (pgkeep restore), which replays the archive")]
    Control { path: String, detail: String },
}

/// Quotes a word for a POSIX shell when it needs it (for the command lines pgkeep prints).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::shell_quote("/var/lib/pg/pg_wal/0001"), "/var/lib/pg/pg_wal/0001");
        assert_eq!(super::shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
