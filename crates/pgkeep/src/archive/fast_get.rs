//! restore_command's common case during a replay with a prefetch queue: the segment waits in
//! the spool and serving it is one rename. PostgreSQL runs one process per segment, so what
//! the binary does before that rename (building clap's whole command tree, logging, the async
//! runtime) would cost more than the rename itself. The binary asks this module first: it
//! recognises only the plain forms of an `archive-get NAME DEST` call and serves only a spool
//! hit; anything else (another flag, a miss, a config error) goes the full way, which reports it.

use std::ffi::OsString;
use std::path::PathBuf;

use super::prefetch::serve_spooled;
use super::{GetOutcome, Transport};
use crate::cli::GlobalArgs;
use crate::config::Config;

/// An `archive-get NAME DEST` command line in one of the forms this path understands.
pub struct FastGet {
    global: GlobalArgs,
    name: String,
    dest: PathBuf,
}

/// The global options taking a value that may accompany the call, with the environment
/// variable each falls back to (as in cli.rs).
const VALUED: [(&str, Option<&str>); 6] = [
    ("--config", Some("PGKEEP_CONFIG")),
    ("--repo", Some("PGKEEP_REPO")),
    ("--pgdata", Some("PGDATA")),
    ("--encryption-key-file", Some("PGKEEP_ENCRYPTION_KEY_FILE")),
    ("--pg", None),
    ("--pg-bin", Some("PGKEEP_PG_BINDIR")),
];

impl FastGet {
    /// The call, if the arguments (without the program name) are `archive-get`, its two
    /// operands, and only the options in [`VALUED`] and `-q`/`--quiet`, each at most once,
    /// anywhere. None for everything else: clap decides then.
    pub fn recognise(args: impl Iterator<Item = OsString>) -> Option<FastGet> {
        let mut values: [Option<String>; VALUED.len()] = Default::default();
        let (mut sub, mut quiet, mut operands) = (false, false, Vec::new());
        let mut args = args.map(|a| a.into_string().ok());
        while let Some(a) = args.next() {
            let a = a?;
            if a == "-q" || a == "--quiet" {
                if quiet {
                    return None;
                }
                quiet = true;
            } else if a.starts_with("--") {
                let (flag, inline) = match a.split_once('=') {
                    Some((f, v)) => (f.to_string(), Some(v.to_string())),
                    None => (a.clone(), None),
                };
                let i = VALUED.iter().position(|(f, _)| *f == flag)?;
                let v = match inline {
                    Some(v) => v,
                    None => args.next()??,
                };
                if values[i].is_some() || v.is_empty() || v.starts_with('-') {
                    return None;
                }
                values[i] = Some(v);
            } else if a.starts_with('-') {
                return None;
            } else if !sub {
                if a != "archive-get" {
                    return None;
                }
                sub = true;
            } else {
                operands.push(a);
            }
        }
        let [name, dest]: [String; 2] = operands.try_into().ok()?;
        if !sub {
            return None;
        }
        for (i, (_, var)) in VALUED.iter().enumerate() {
            if values[i].is_none() {
                if let Some(var) = var {
                    match std::env::var(var) {
                        Ok(v) if v.is_empty() => return None,
                        Ok(v) => values[i] = Some(v),
                        Err(std::env::VarError::NotUnicode(_)) => return None,
                        Err(std::env::VarError::NotPresent) => {}
                    }
                }
            }
        }
        let [config, repo, pgdata, key, pg, pg_bin] = values;
        let global = GlobalArgs {
            config: config.map(PathBuf::from),
            repo,
            encryption_key_file: key.map(PathBuf::from),
            pg,
            pgdata: pgdata.map(PathBuf::from),
            pg_bin: pg_bin.map(PathBuf::from),
            quiet,
            ..GlobalArgs::default()
        };
        Some(FastGet { global, name, dest: PathBuf::from(dest) })
    }

    /// Whether the report is to be left out (`--quiet`).
    pub fn quiet(&self) -> bool {
        self.global.quiet
    }

    /// The segment served from the spool, or None (no hit, or anything the full path must
    /// handle, including a metrics file to refresh).
    pub fn serve(&self) -> Option<GetOutcome> {
        let cfg = Config::load(&self.global).ok()?;
        if cfg.file.metrics_textfile.is_some() {
            return None;
        }
        let location = cfg.repo_location().ok()?;
        let t = Transport::from_config(&cfg);
        serve_spooled(&t, &location, cfg.pgdata.as_deref(), &self.name, &self.dest)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn recognise(line: &str) -> Option<FastGet> {
        FastGet::recognise(line.split_whitespace().map(OsString::from))
    }

    // Every option given, so no environment variable is consulted.
    const ALL: &str = "--config=/c --repo /r --pgdata /d --encryption-key-file /k --pg x --pg-bin /b";

    #[test]
    fn only_plain_archive_get_calls_are_recognised() {
        let g = recognise(&format!("{ALL} archive-get 000000010000000000000003 pg_wal/RECOVERYXLOG")).unwrap();
        assert_eq!((g.name.as_str(), g.dest.as_path()), ("000000010000000000000003", Path::new("pg_wal/RECOVERYXLOG")));
        assert_eq!(g.global.config.as_deref(), Some(Path::new("/c")));
        assert_eq!(g.global.repo.as_deref(), Some("/r"));
        assert!(!g.quiet());
        // Options after the subcommand are global too; -q is understood.
        let g = recognise(&format!("archive-get -q A B {ALL}")).unwrap();
        assert!(g.quiet());
        assert_eq!((g.name.as_str(), g.global.pg.as_deref()), ("A", Some("x")));
        for other in [
            format!("{ALL} archive-get A"),
            format!("{ALL} archive-get A B C"),
            format!("{ALL} archive-push A"),
            format!("{ALL} archive-get A B --prefetch-only"),
            format!("{ALL} --json archive-get A B"),
            format!("{ALL} -v archive-get A B"),
            format!("{ALL} -qv archive-get A B"),
            format!("{ALL} --help archive-get A B"),
            format!("{ALL} --repo /other archive-get A B"),
            format!("{ALL} -q -q archive-get A B"),
            format!("{ALL} archive-get -- A B"),
            "--config=/c --repo --pgdata /d archive-get A B".to_string(),
            format!("A {ALL} archive-get B"),
        ] {
            assert!(recognise(&other).is_none(), "{other}");
        }
    }
}
