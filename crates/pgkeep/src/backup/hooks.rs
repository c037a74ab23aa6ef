//! Hooks and user commands: `sh -c COMMAND` with an environment, a timeout (the whole process
//! group is killed when it runs out) and captured output.
//!
//! Hooks of a snapshot backup (`[hooks]` in the config file):
//! - `before`: after pg_backup_start, before the first snapshot;
//! - `after`: after the last snapshot is acknowledged, before pg_backup_stop;
//! - `complete`: after the backup is committed;
//! - `post-attach`: after `pgkeep restore` created and attached EBS volumes.
//!
//! Environment: `PGKEEP_HOOK` (the hook's name), `PGKEEP_BACKUP_ID`, `PGKEEP_START_LSN`, and
//! `PGKEEP_STOP_LSN` where it is known (only `complete`: `after` runs before pg_backup_stop),
//! plus whatever the caller adds. A failing `before`/`after` hook aborts the backup cleanly.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Output of a command that exited 0.
#[derive(Debug, Clone)]
pub struct ShellOutput {
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

/// Run `sh -c command` with `env` added; fail on a non-zero exit or after `timeout`.
/// `what` names the command in messages (e.g. "before hook").
pub fn run_shell(
    what: &str,
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ShellOutput, String> {
    let began = Instant::now();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Own process group, so a timeout kills the command and everything it started.
    cmd.process_group(0);
    // The command line is never echoed in messages: it may carry credentials (invariant 8).
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let pid = child.id() as i32;
    let rx_out = reader(child.stdout.take());
    let rx_err = reader(child.stderr.take());
    let deadline = began + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on our own child's process group; no memory is touched.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{what}: cannot wait for it: {e}")),
        }
    };
    // A background grandchild may keep the pipes open: do not wait for it forever.
    let stdout = rx_out.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let stderr = rx_err.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let seconds = began.elapsed().as_secs_f64();
    match status {
        None => Err(format!("{what} did not finish within {}s and was killed", timeout.as_secs())),
        Some(s) if s.success() => Ok(ShellOutput { stdout, stderr, seconds }),
        Some(s) => {
            let tail = last_lines(&stderr, 3);
            let code = s.code().map(|c| format!("exit status {c}")).unwrap_or_else(|| format!("{s}"));
            Err(format!(
                "{what} failed with {code}{}",
                if tail.is_empty() { String::new() } else { format!(": {tail}") }
            ))
        }
    }
}

fn reader<R: Read + Send + 'static>(src: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut r) = src {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
    } else {
        let _ = tx.send(String::new());
    }
    rx
}

/// The last `n` non-empty lines joined with " | ".
pub fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// One hook that ran.
#[derive(Debug, Clone, Serialize)]
pub struct HookRun {
    pub hook: String,
    pub seconds: f64,
}

/// Run hook `name` (if configured) with the standard environment.
pub fn run_hook(
    name: &str,
    spec: Option<&crate::backup::snapshot::HookSpec>,
    cfg: &crate::backup::snapshot::SnapshotConfig,
    env: &[(String, String)],
) -> Result<Option<HookRun>, crate::backup::snapshot::SnapshotError> {
    let Some(spec) = spec else { return Ok(None) };
    let mut full = vec![("PGKEEP_HOOK".to_string(), name.to_string())];
    full.extend(env.iter().cloned());
    let out = run_shell(&format!("{name} hook"), spec.command(), &full, cfg.hook_timeout(spec))
        .map_err(|detail| crate::backup::snapshot::SnapshotError::Hook { hook: name.to_string(), detail })?;
    Ok(Some(HookRun { hook: name.to_string(), seconds: out.seconds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_output_failure_and_timeout() {
        let env = vec![("PGKEEP_BACKUP_ID".to_string(), "X1".to_string())];
        let o = run_shell("t", "echo id=$PGKEEP_BACKUP_ID; echo oops >&2", &env, Duration::from_secs(5)).unwrap();
        assert_eq!(o.stdout.trim(), "id=X1");
        assert_eq!(o.stderr.trim(), "oops");
        let e = run_shell("t", "echo bad >&2; exit 3", &env, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("exit status 3") && e.contains("bad"), "{e}");
        let t = Instant::now();
        let e = run_shell("t", "sleep 30 & sleep 30", &env, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
