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
    /// The child's own high-water mark (VmHWM), see [`timed`].
    pub max_rss_kib: u64,
}

/// The highest VmHWM of `pid` read every 5 ms until `done` is set; 0 when never read.
fn sample_hwm(pid: libc::pid_t, done: &std::sync::atomic::AtomicBool) -> u64 {
    let mut peak = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB"));
        peak = peak.max(hwm.and_then(|v| v.parse().ok()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    peak
}

/// Run `cmd` to completion; panic with its output on failure.
///
/// Peak RSS is the child's VmHWM, read from /proc every 5 ms while it runs (growth in its last
/// 5 ms is missed): wait4's ru_maxrss is not the child's own once the parent is large, because
/// a child forked (as `Command` does when it sets a uid) from this process starts as a copy of
/// it, and Linux carries that copy's high-water mark across exec into ru_maxrss. A
/// child too short to be read once reports ru_maxrss.
// The child is reaped with wait4 (to get its own rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn timed(cmd: &mut Command, what: &str) -> Run {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let done = std::sync::atomic::AtomicBool::new(false);
    let (rc, hwm) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_hwm(pid, &done));
        // SAFETY: waiting for our own child; status and usage are valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (rc, sampler.join().expect("sampler"))
    });
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
    Run { wall, max_rss_kib: if hwm > 0 { hwm } else { usage.ru_maxrss as u64 } }
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
