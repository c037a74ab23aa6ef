//! A throw-away PostgreSQL cluster for one test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgkeep::pg::instance::{free_port, run_as, InitdbOptions};
use pgkeep::pg::{ConnParams, Instance, InstanceError, PgBin, PgClient, StopMode};

use crate::env::TestEnv;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Archive with `pgkeep archive-push` into this repository.
    pub archive_repo: Option<PathBuf>,
    pub wal_segsize_mb: Option<u32>,
    pub data_checksums: bool,
    /// Extra postgresql.conf settings.
    pub settings: Vec<(String, String)>,
    /// Server binaries of this major (found as pgkeep finds them: Debian's, then
    /// /opt/pgkeep-pg/<major>/bin where scripts/setup.sh installs them); `None`: the test
    /// environment's default (Debian's newest).
    pub pg_major: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            archive_repo: None,
            wal_segsize_mb: None,
            data_checksums: true,
            settings: Vec::new(),
            pg_major: None,
        }
    }
}

impl ClusterOptions {
    pub fn archiving_to(repo: &Path) -> Self {
        ClusterOptions { archive_repo: Some(repo.to_path_buf()), ..Default::default() }
    }

    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.settings.push((k.into(), v.into()));
        self
    }

    pub fn major(mut self, major: u32) -> Self {
        self.pg_major = Some(major);
        self
    }
}

/// Server binaries of `major`; a machine without them fails the test (never skips it).
pub fn server_bin(major: u32) -> PgBin {
    PgBin::for_major(major, None, "a test cluster")
        .unwrap_or_else(|e| panic!("{e} (scripts/setup.sh installs 14, 16, 17 and 18)"))
}

pub struct TestCluster {
    pub inst: Instance,
    pub name: String,
    /// Client programs (psql, pgbench, pg_waldump): the server's own where it has them, else
    /// the environment's (Debian's; its psql and pgbench work against newer servers for the
    /// plain SQL and `pgbench -i` the tests use).
    client_bin: PgBin,
    rt: tokio::runtime::Handle,
}

impl TestCluster {
    pub(crate) fn create(env: &TestEnv, name: &str, opts: ClusterOptions) -> TestCluster {
        let home = env.owned_dir(name);
        Self::create_at(env, name, &home.join("data"), opts)
    }

    /// Like `create`, with the data directory at `pgdata` (socket and log in the test's
    /// directory `name`).
    pub(crate) fn create_at(env: &TestEnv, name: &str, pgdata: &Path, opts: ClusterOptions) -> TestCluster {
        let home = env.owned_dir(name);
        let pgdata = pgdata.to_path_buf();
        let bin = opts.pg_major.map_or_else(|| env.bin.clone(), server_bin);
        let inst = Instance::new(bin, &pgdata, &home, free_port(), env.owner.clone());
        inst.initdb(&InitdbOptions { data_checksums: opts.data_checksums, wal_segsize_mb: opts.wal_segsize_mb })
            .unwrap_or_else(|e| panic!("initdb {name}: {e}"));
        let mut conf: Vec<(&str, String)> = vec![
            ("wal_level", "replica".into()),
            ("max_wal_senders", "4".into()),
            ("shared_buffers", "32MB".into()),
            ("max_connections", "40".into()),
            ("log_checkpoints", "on".into()),
            ("log_line_prefix", "%m [%p] ".into()),
        ];
        match &opts.archive_repo {
            Some(repo) => {
                conf.push(("archive_mode", "on".into()));
                conf.push(("archive_command", env.archive_command(repo)));
            }
            None => conf.push(("archive_mode", "off".into())),
        }
        for (k, v) in &opts.settings {
            conf.push((k.as_str(), v.clone()));
        }
        inst.append_conf(&conf).expect("write postgresql.conf");
        TestCluster { inst, name: name.to_string(), client_bin: env.bin.clone(), rt: env.rt.handle().clone() }
    }

    pub(crate) fn on_existing(env: &TestEnv, name: &str, pgdata: &Path) -> TestCluster {
        let home = env.owned_dir(name);
        env.chown(pgdata);
        // A restored copy runs on the binaries of its own major (PG_VERSION says which).
        let major = std::fs::read_to_string(pgdata.join("PG_VERSION")).ok().and_then(|v| v.trim().parse::<u32>().ok());
        let bin = match major {
            Some(m) if env.bin.major().ok() != Some(m) => server_bin(m),
            _ => env.bin.clone(),
        };
        let inst = Instance::new(bin, pgdata, &home, free_port(), env.owner.clone());
        TestCluster { inst, name: name.to_string(), client_bin: env.bin.clone(), rt: env.rt.handle().clone() }
    }

    pub fn pgdata(&self) -> &Path {
        &self.inst.pgdata
    }

    /// Override a setting on the command line at start (beats postgresql[.auto].conf).
    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.inst.set(k, v);
        self
    }

    /// An environment variable of the server (inherited by archive_command and
    /// restore_command) from the next start on.
    pub fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.inst.env(k, v);
        self
    }

    pub fn start(&mut self) -> &mut Self {
        if let Err(e) = self.try_start() {
            panic!("cluster {} did not start: {e}", self.name);
        }
        self
    }

    pub fn try_start(&mut self) -> Result<(), InstanceError> {
        self.inst.start(Duration::from_secs(180))
    }

    pub fn stop(&mut self) {
        self.inst.stop(StopMode::Fast).expect("stop");
    }

    pub fn kill9(&mut self) {
        self.inst.kill9();
    }

    /// A crash: kill -9 of the postmaster, then wait until its children (which notice the
    /// postmaster's death and exit) are gone too, so the data directory can be inspected,
    /// changed and started again.
    pub fn crash(&mut self) {
        self.kill9();
        let dir = std::fs::canonicalize(self.pgdata()).unwrap_or_else(|_| self.pgdata().to_path_buf());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = processes_in(&dir);
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "server processes {left:?} of {} outlived the postmaster", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn conn(&self) -> ConnParams {
        self.inst.conn("postgres")
    }

    /// libpq conninfo for `--pg`.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={} dbname=postgres",
            self.inst.socket_dir.display(),
            self.inst.port,
            self.inst.superuser
        )
    }

    fn client(&self) -> PgClient {
        self.rt.block_on(self.conn().connect()).unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// Run statements; panics with the server's message on error.
    pub fn sql(&self, sql: &str) {
        if let Err(e) = self.try_sql(sql) {
            panic!("{} on {}: {e}", sql, self.name);
        }
    }

    pub fn try_sql(&self, sql: &str) -> Result<(), String> {
        let c = self.rt.block_on(self.conn().connect()).map_err(|e| e.to_string())?;
        self.rt.block_on(c.simple(sql)).map_err(|e| e.to_string())
    }

    /// First column of every row, as text (NULL → "").
    pub fn column(&self, sql: &str) -> Vec<String> {
        let c = self.client();
        let msgs =
            self.rt.block_on(c.client.simple_query(sql)).unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.name));
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            })
            .collect()
    }

    pub fn scalar(&self, sql: &str) -> String {
        self.column(sql).into_iter().next().unwrap_or_else(|| panic!("{sql} returned no row"))
    }

    pub fn int(&self, sql: &str) -> i64 {
        let s = self.scalar(sql);
        s.parse().unwrap_or_else(|_| panic!("{sql} returned {s:?}, not an integer"))
    }

    /// Wait until the server has left recovery (a restored copy that promotes).
    pub fn wait_promoted(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(c) = self.rt.block_on(self.conn().connect()) {
                if let Ok(Some(v)) = self.rt.block_on(c.scalar("SELECT pg_is_in_recovery()")) {
                    if v == "f" {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "{} did not finish recovery: {}", self.name, self.inst.log_tail(20));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Force a segment switch; returns the name of the segment that was completed.
    pub fn switch_wal(&self) -> String {
        self.scalar("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Force a switch and wait until that segment is in `repo`'s archive.
    pub fn switch_and_wait_archived(&self, repo: &Path) -> String {
        // Make sure there is something to switch away from.
        self.sql("SELECT pg_create_restore_point('test switch')");
        let seg = self.switch_wal();
        wait_for_file_in_archive(repo, &seg, Duration::from_secs(60));
        seg
    }

    /// Run a PostgreSQL client tool (pgbench, psql, …) against this cluster.
    pub fn tool(&self, name: &str) -> Command {
        let own = self.inst.bin.tool(name);
        let mut cmd = Command::new(if own.is_file() { own } else { self.client_bin.tool(name) });
        cmd.arg("-h")
            .arg(&self.inst.socket_dir)
            .arg("-p")
            .arg(self.inst.port.to_string())
            .arg("-U")
            .arg(&self.inst.superuser);
        cmd
    }

    /// Run a server-side tool as the data directory's owner (pg_ctl, pg_resetwal, …).
    pub fn owner_tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.inst.bin.tool(name));
        run_as(&mut cmd, self.inst.owner.as_ref());
        cmd.current_dir("/");
        cmd
    }

    pub fn pgbench(&self, args: &[&str]) {
        let out = self.tool("pgbench").args(args).arg("postgres").output().expect("run pgbench");
        assert!(out.status.success(), "pgbench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.inst.log_tail(n)
    }
}

/// Pids of the processes whose working directory is `dir` (every PostgreSQL server process
/// runs in its data directory).
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

/// Poll the repository until the WAL file is archived.
pub fn wait_for_file_in_archive(repo: &Path, name: &str, timeout: Duration) {
    let key = pgkeep::repo::layout::wal_key(name);
    let path = repo.join(key);
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{name} did not reach the archive at {} within {timeout:?}", repo.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}
