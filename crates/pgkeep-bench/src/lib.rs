//! Shared pieces of pgkeep's benchmarks: timing a child process with its peak RSS, running
//! tools as the server's OS user, finding the release binary. Benchmarks print ratios against
//! peers measured in the same run; they are never timed tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgkeep::pg::instance::run_as;
use pgkeep_testkit::{ClusterOptions, TestCluster, TestEnv};

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
    let (rc, wall, hwm) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_hwm(pid, &done));
        // SAFETY: waiting for our own child; status and usage are valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        // Read the clock before joining the sampler: it may sleep up to one interval before it
        // sees `done`, which would add as much as 5 ms to a call that takes a few.
        let wall = started.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (rc, wall, sampler.join().expect("sampler"))
    });
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

/// A benchmark's cluster, archiving into a local pgkeep repository that `init` has made, with
/// settings that keep checkpoints out of the timings. Field order matters for Drop: the
/// cluster stops before the environment's directory goes.
pub struct LocalBench {
    pub pg: TestCluster,
    pub repo: PathBuf,
    pub env: TestEnv,
}

impl LocalBench {
    /// A started cluster named `name` and an initialised repository, with the release binary.
    pub fn start(name: &str) -> Self {
        let pgkeep = pgkeep_release_binary();
        let env = TestEnv::new(pgkeep.to_str().expect("utf-8 path"));
        let repo = env.path("pgkeep-repo");
        let mut pg = env.cluster(
            name,
            ClusterOptions::archiving_to(&repo)
                .with("shared_buffers", "256MB")
                .with("max_wal_size", "8GB")
                .with("checkpoint_timeout", "30min"),
        );
        pg.start();
        let mut init = Command::new(&env.pgkeep);
        init.arg("init").arg("--repo").arg(&repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata());
        timed(&mut init, "pgkeep init");
        LocalBench { pg, repo, env }
    }

    /// `cmd` run as the server's OS user, from `/`.
    pub fn as_owner(&self, mut cmd: Command) -> Command {
        run_as(&mut cmd, self.env.owner.as_ref());
        cmd.current_dir("/");
        cmd
    }

    /// `pgkeep --quiet` on this repository, cluster and data directory, as the server's user.
    pub fn pgkeep(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.env.pgkeep);
        c.arg("--quiet")
            .arg("--repo")
            .arg(&self.repo)
            .arg("--pg")
            .arg(self.pg.conninfo())
            .arg("--pgdata")
            .arg(self.pg.pgdata())
            .args(args);
        self.as_owner(c)
    }

    /// A pgBackRest configuration for this cluster: zst level 1, process-max 2, fast start, no
    /// archive check (pgBackRest's archiving is not set up), logs and locks under `dir`,
    /// `extra_global` lines added to `[global]`.
    pub fn pgbackrest_conf(&self, dir: &Path, stanza: &str, repo_path: &Path, extra_global: &str) -> String {
        format!(
            "[global]\nrepo1-path={}\n{extra_global}lock-path={}/lock\nlog-path={}/log\nlog-level-console=warn\nlog-level-file=off\ncompress-type=zst\ncompress-level=1\nprocess-max=2\narchive-check=n\nstart-fast=y\n\n[{stanza}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\npg1-user={}\n",
            repo_path.display(),
            dir.display(),
            dir.display(),
            self.pg.pgdata().display(),
            self.pg.inst.socket_dir.display(),
            self.pg.inst.port,
            self.pg.inst.superuser
        )
    }
}
