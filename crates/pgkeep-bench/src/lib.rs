//! Shared pieces of pgkeep's benchmarks: timing a child process with its peak RSS, running
//! tools as the server's OS user, finding the release binary. Benchmarks print ratios against
//! peers measured in the same run; they are never timed tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Wall time and peak resident set size of one child process.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub wall: Duration,
    pub max_rss_kib: u64,
}

/// Run `cmd` to completion; panic with its output on failure.
// The child is reaped with wait4 (to get its own rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn timed(cmd: &mut Command, what: &str) -> Run {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; status and usage are valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(rc, pid, "{what}: wait4 failed");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("{what} failed (status {status}): {err}");
    }
    Run { wall, max_rss_kib: usage.ru_maxrss as u64 }
}

/// The best (fastest) of several runs.
pub fn best(runs: &[Run]) -> Run {
    *runs.iter().min_by_key(|r| r.wall).expect("at least one run")
}

/// The release pgkeep binary next to this benchmark binary.
pub fn pgkeep_release_binary() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let p = me.parent().expect("bin dir").join("pgkeep");
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build --release -p pgkeep -p pgkeep-bench`)",
        p.display()
    );
    p
}

pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1_048_576.0 / d.as_secs_f64()
}

/// Command-line `--name value` lookup with a default.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}
