//! One test's world: a temp directory the server's OS user can use, a copy of the pgkeep
//! binary it can execute, a tokio runtime for queries and load.

use std::path::{Path, PathBuf};

use pgkeep::fsutil;
use pgkeep::pg::{OsUser, PgBin};

use crate::cluster::{ClusterOptions, TestCluster};
use crate::cmd::PgkeepCmd;

pub struct TestEnv {
    // Field order matters for Drop: clusters hold paths inside `dir`.
    pub rt: tokio::runtime::Runtime,
    pub owner: Option<OsUser>,
    pub bin: PgBin,
    pub pgkeep: PathBuf,
    dir: tempfile::TempDir,
}

impl TestEnv {
    /// `pgkeep_exe` is `env!("CARGO_BIN_EXE_pgkeep")` of the calling test crate.
    pub fn new(pgkeep_exe: &str) -> TestEnv {
        let dir = tempfile::Builder::new().prefix("pgkeep-test-").tempdir().expect("create temp dir");
        fsutil::set_mode(dir.path(), 0o755).expect("chmod temp dir");
        let owner = if fsutil::running_as_root() {
            let name = std::env::var("PGKEEP_TEST_USER").unwrap_or_else(|_| "postgres".into());
            Some(OsUser::by_name(&name).unwrap_or_else(|| {
                panic!("tests run as root need an unprivileged OS user {name:?} for PostgreSQL (create it, or set PGKEEP_TEST_USER); .ci/run creates it")
            }))
        } else {
            None
        };
        let bin = PgBin::find_any(None).unwrap_or_else(|e| panic!("{e}"));
        // The server's OS user must be able to run pgkeep from archive_command/restore_command;
        // a checkout under /root is not reachable for it, so copy the binary here.
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir).expect("mkdir bin");
        let pgkeep = bin_dir.join("pgkeep");
        std::fs::copy(pgkeep_exe, &pgkeep).unwrap_or_else(|e| panic!("copy {pgkeep_exe}: {e}"));
        fsutil::set_mode(&pgkeep, 0o755).expect("chmod pgkeep");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        TestEnv { rt, owner, bin, pgkeep, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A directory owned by the server's OS user (for data directories, tablespaces).
    pub fn owned_dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        fsutil::set_mode(&p, 0o700).expect("chmod");
        self.chown(&p);
        p
    }

    /// Hand a tree to the server's OS user (no-op when not root).
    pub fn chown(&self, p: &Path) {
        if let Some(o) = &self.owner {
            fsutil::chown_tree(p, o.uid, o.gid).expect("chown");
        }
    }

    /// A new cluster (initdb'ed, configured, not started).
    pub fn cluster(&self, name: &str, opts: ClusterOptions) -> TestCluster {
        TestCluster::create(self, name, opts)
    }

    /// A cluster on an existing data directory (a restored copy): chowned to the server user.
    pub fn cluster_on(&self, name: &str, pgdata: &Path) -> TestCluster {
        TestCluster::on_existing(self, name, pgdata)
    }

    /// Run the pgkeep binary (as the test process's user) with the given arguments.
    pub fn pgkeep<I, S>(&self, args: I) -> PgkeepCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        PgkeepCmd::new(&self.pgkeep, args)
    }

    /// archive_command line for a repository.
    pub fn archive_command(&self, repo: &Path) -> String {
        format!("\"{}\" --repo \"{}\" archive-push \"%p\"", self.pgkeep.display(), repo.display())
    }
}
