//! Running the pgkeep binary the way an operator would, and checking what it said.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

pub struct PgkeepCmd {
    cmd: Command,
    line: String,
}

#[derive(Debug)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub line: String,
}

impl PgkeepCmd {
    pub fn new<I, S>(exe: &Path, args: I) -> PgkeepCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(exe);
        let mut line = String::from("pgkeep");
        for a in args {
            line.push(' ');
            line.push_str(&a.as_ref().to_string_lossy());
            cmd.arg(a);
        }
        // Tests say everything explicitly; nothing leaks in from the developer's environment.
        for v in ["PGKEEP_REPO", "PGKEEP_CONFIG", "PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(v);
        }
        PgkeepCmd { cmd, line }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.line.push(' ');
        self.line.push_str(&a.as_ref().to_string_lossy());
        self.cmd.arg(a);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Run it in a private mount namespace where `dir` is an empty tmpfs: a machine without
    /// what `dir` holds (e.g. other majors' server binaries), nothing else changed. Needs root.
    pub fn hiding(self, dir: &Path) -> Self {
        crate::require_root("hiding a directory in a mount namespace");
        let mut wrapped = Command::new("unshare");
        wrapped.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
        wrapped.arg("mount -t tmpfs pgkeep-hide \"$0\" && exec \"$@\"").arg(dir);
        wrapped.arg(self.cmd.get_program()).args(self.cmd.get_args());
        for (k, v) in self.cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        PgkeepCmd { cmd: wrapped, line: format!("{} (without {})", self.line, dir.display()) }
    }

    pub fn run(mut self) -> CmdOutput {
        let out: Output = self.cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.line));
        CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            line: self.line,
        }
    }

    /// Run and require exit status 0.
    pub fn ok(self) -> CmdOutput {
        let o = self.run();
        assert_eq!(o.code, Some(0), "`{}` failed:\nstdout: {}\nstderr: {}", o.line, o.stdout, o.stderr);
        o
    }

    /// Run and require a failure.
    pub fn fails(self) -> CmdOutput {
        let o = self.run();
        assert!(
            o.code.is_some() && o.code != Some(0),
            "`{}` should have failed:\nstdout: {}\nstderr: {}",
            o.line,
            o.stdout,
            o.stderr
        );
        o
    }

    /// Run with --json and parse stdout.
    pub fn json(self) -> serde_json::Value {
        let o = self.arg("--json").ok();
        serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("`{}` did not print JSON ({e}): {}", o.line, o.stdout))
    }
}

impl CmdOutput {
    /// The error lines pgkeep printed (`pgkeep: error: ...`).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("pgkeep: error:")).collect()
    }

    /// Exactly one error line, returned.
    pub fn one_error_line(&self) -> &str {
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "`{}` should print exactly one error line, got: {}", self.line, self.stderr);
        lines[0]
    }
}
