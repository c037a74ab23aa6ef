//! Shared set-up: a cluster archiving into an initialized repository.

use std::path::{Path, PathBuf};

use pgkeep_testkit::{ClusterOptions, PgkeepCmd, TestCluster, TestEnv};

/// pgkeep with --repo, --pg and --pgdata for `pg` and `repo`. Global options come first, so
/// `restore --to` and its value stay together when the caller appends the command.
pub fn cluster_cmd(env: &TestEnv, repo: &Path, pg: &TestCluster) -> PgkeepCmd {
    env.pgkeep(["--repo"]).arg(repo).arg("--pg").arg(pg.conninfo()).arg("--pgdata").arg(pg.pgdata())
}

pub fn env() -> TestEnv {
    TestEnv::new(env!("CARGO_BIN_EXE_pgkeep"))
}

pub struct Setup {
    pub pg: TestCluster,
    pub repo: PathBuf,
    pub env: TestEnv,
}

impl Setup {
    /// A running cluster whose archive_command pushes into `repo`, and `pgkeep init` done.
    pub fn new() -> Setup {
        Self::with(|o| o)
    }

    pub fn with(f: impl FnOnce(ClusterOptions) -> ClusterOptions) -> Setup {
        let env = env();
        let repo = env.path("repo");
        let mut pg = env.cluster("src", f(ClusterOptions::archiving_to(&repo)));
        pg.start();
        let s = Setup { pg, repo, env };
        s.pgkeep(["init"]).ok();
        s
    }

    /// pgkeep with --repo, --pg and --pgdata for this setup.
    pub fn pgkeep<I, S>(&self, args: I) -> PgkeepCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cluster_cmd(&self.env, &self.repo, &self.pg);
        for a in args {
            c = c.arg(a);
        }
        c
    }

    /// Take a backup and return its id.
    pub fn backup(&self) -> String {
        let r = self.pgkeep(["backup"]).json();
        r["id"].as_str().expect("backup id").to_string()
    }

    /// Restore into `dir` with extra arguments; returns the report.
    pub fn restore(&self, dir: &Path, extra: &[&str]) -> serde_json::Value {
        let mut c = self.pgkeep(["restore", "--to"]).arg(dir);
        for a in extra {
            c = c.arg(a);
        }
        c.json()
    }

    /// Start a restored data directory (archiving off so it cannot touch the repository).
    pub fn start_restored(&self, name: &str, dir: &Path) -> TestCluster {
        let mut c = self.env.cluster_on(name, dir);
        c.set("archive_mode", "off");
        c.start();
        c
    }

    /// The WAL objects in the archive: (key, bytes) for every file, sorted.
    pub fn archive_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let wal = self.repo.join("wal");
        walk(&wal, &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap_or_default()));
        }
    }
}

/// Manifest of a backup, read straight from the repository files.
pub fn read_manifest(repo: &Path, id: &str) -> serde_json::Value {
    let framed = std::fs::read(repo.join(format!("backup/{id}/manifest"))).expect("manifest");
    let plain = pgkeep::repo::frame::decode(&framed, "manifest").expect("decode manifest");
    serde_json::from_slice(&plain).expect("manifest json")
}
