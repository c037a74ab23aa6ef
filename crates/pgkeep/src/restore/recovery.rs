//! Recovery settings for a restored data directory (PostgreSQL 12+: postgresql.auto.conf plus
//! recovery.signal). Settings a previous restore left behind are removed first: a stale
//! recovery_target_time would silently stop the new recovery early. `archive_mode = 'off'` is
//! written too unless preserved: a copy that keeps the source's archive_command archives into
//! the production repository, and its `.history` file then leads the next restore to the end
//! (`recovery_target_timeline = latest`) along the copy's timeline instead of production's.

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::target::{pg_timestamp, RecoveryTarget, TargetAction};
use crate::fsutil;

/// Keys this module owns in postgresql.auto.conf.
const RECOVERY_KEYS: &[&str] = &[
    "restore_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_timeline",
];

/// Whether the restored copy may archive (`--archive-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveMode {
    /// `archive_mode = 'off'` in postgresql.auto.conf.
    #[default]
    Off,
    /// The source's archive settings, for a restore that becomes the new primary.
    Preserve,
}

impl ArchiveMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveMode::Off => "off",
            ArchiveMode::Preserve => "preserve",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub action: Option<TargetAction>,
    pub inclusive: bool,
    pub timeline: Option<String>,
    pub archive_mode: ArchiveMode,
}

impl RecoverySettings {
    /// The name = value pairs, in the order written.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("restore_command", self.restore_command.clone())];
        match &self.target {
            RecoveryTarget::End => {}
            RecoveryTarget::Immediate => v.push(("recovery_target", "immediate".into())),
            RecoveryTarget::Time(t) => v.push(("recovery_target_time", pg_timestamp(t))),
            RecoveryTarget::Lsn(l) => v.push(("recovery_target_lsn", l.to_string())),
            RecoveryTarget::Xid(x) => v.push(("recovery_target_xid", x.clone())),
            RecoveryTarget::Name(n) => v.push(("recovery_target_name", n.clone())),
        }
        let has_target = !matches!(self.target, RecoveryTarget::End);
        if has_target {
            if let Some(a) = self.action {
                v.push(("recovery_target_action", a.as_str().into()));
            }
            if !self.inclusive && !matches!(self.target, RecoveryTarget::Immediate) {
                v.push(("recovery_target_inclusive", "off".into()));
            }
        }
        if let Some(t) = &self.timeline {
            v.push(("recovery_target_timeline", t.clone()));
        }
        if self.archive_mode == ArchiveMode::Off {
            v.push(("archive_mode", "off".into()));
        }
        v
    }
}

/// `"<pgkeep>" --repo "<repo>" archive-get %f "%p"`, with the absolute path of this binary,
/// `--config` when an object store's settings came from a config file, and for an encrypted
/// repository `--encryption-key-file "<file>"` (absolute): the server runs restore_command
/// without pgkeep's flags or environment.
pub fn restore_command(repo: &crate::repo::RepoLocation, key_file: Option<&Path>) -> String {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "pgkeep".into());
    let key = key_file.map(|k| format!(" --encryption-key-file \"{}\"", k.display())).unwrap_or_default();
    format!("\"{exe}\" {}{key} archive-get %f \"%p\"", repo.command_args())
}

/// restore_command runs as the server's OS user (the data directory's owner), and a key file
/// is readable by its owner only: say so when the two differ, before recovery fails on it.
pub fn key_file_warning(pgdata: &Path, key_file: Option<&Path>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let key = key_file?;
    let server_uid = fsutil::owner_of(pgdata).ok()?.0;
    let key_uid = fs::metadata(key).ok()?.uid();
    (server_uid != 0 && server_uid != key_uid).then(|| {
        format!(
            "restore_command runs as the owner of {} (uid {server_uid}), who cannot read the key file {} (owner uid {key_uid}, readable by its owner only); hint: give that user its own copy (`install -o <server user> -m 600 {} <path>`) and point restore_command's --encryption-key-file at it",
            pgdata.display(),
            key.display(),
            key.display()
        )
    })
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') {
        return None;
    }
    let end = t.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(t.len());
    Some(&t[..end])
}

/// Rewrite postgresql.auto.conf and create recovery.signal.
pub fn write(pgdata: &Path, s: &RecoverySettings, note: &str) -> io::Result<()> {
    let auto = pgdata.join("postgresql.auto.conf");
    let old = match fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let owned = |k: &str| RECOVERY_KEYS.contains(&k) || (k == "archive_mode" && s.archive_mode == ArchiveMode::Off);
    let mut out = String::new();
    for line in old.lines() {
        if key_of(line).is_some_and(owned) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("# {note}\n"));
    for (k, v) in s.pairs() {
        out.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    fsutil::write_atomic(&auto, out.as_bytes(), 0o600)?;
    fsutil::write_atomic(&pgdata.join("recovery.signal"), b"", 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_settings_are_replaced() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("postgresql.auto.conf"),
            "work_mem = '8MB'\nrecovery_target_time = '2020-01-01'\nrestore_command='x'\narchive_mode = 'on'\n",
        )
        .unwrap();
        let s = RecoverySettings {
            restore_command: "pgkeep archive-get %f \"%p\"".into(),
            target: RecoveryTarget::Name("before 'upgrade'".into()),
            action: Some(TargetAction::Promote),
            inclusive: false,
            timeline: None,
            archive_mode: ArchiveMode::Off,
        };
        write(d.path(), &s, "restored by test").unwrap();
        let t = fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap();
        assert!(t.contains("work_mem = '8MB'"));
        assert!(!t.contains("2020-01-01"));
        assert!(t.contains("recovery_target_name = 'before ''upgrade'''"));
        assert!(t.contains("recovery_target_action = 'promote'"));
        assert!(t.contains("recovery_target_inclusive = 'off'"));
        assert!(t.contains("archive_mode = 'off'") && !t.contains("archive_mode = 'on'"), "{t}");
        assert!(d.path().join("recovery.signal").exists());
    }
}
