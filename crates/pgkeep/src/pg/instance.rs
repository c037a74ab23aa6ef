//! Private local PostgreSQL instances: initdb, start, stop, as the data directory's owner.
//!
//! PostgreSQL refuses to run as root, so when pgkeep runs as root every server process (and
//! initdb) runs as the owner of the data directory. Instances listen only on a Unix socket in a
//! directory of their own (`listen_addresses = ''`), so they never collide with real servers.
//! The postmaster is started directly (no shell, no pg_ctl) so settings need no quoting.

use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bin::PgBin;
use super::ConnParams;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("PostgreSQL server binaries not found{detail}; hint: install Debian's `postgresql` package or pass --pg-bin DIR (config: pg_bin_dir) with the directory holding initdb and postgres")]
    BinariesNotFound { detail: String },
    #[error("no PostgreSQL {major} server binaries for {what} (looked in {looked}); hint: install PostgreSQL {major}'s server binaries or pass --pg-bin DIR (config: pg_bin_dir) with their bin directory")]
    NoBinariesForMajor { major: u32, what: String, looked: String },
    #[error("--pg-bin {dir} holds PostgreSQL {found} binaries, but {what} is PostgreSQL {major}; hint: pass --pg-bin DIR (config: pg_bin_dir) with PostgreSQL {major}'s bin directory")]
    WrongMajor { dir: String, found: u32, major: u32, what: String },
    #[error("--pg-bin {dir} holds no postgres binary; hint: pass --pg-bin DIR (config: pg_bin_dir) with the directory holding initdb, pg_ctl and postgres")]
    NotBinDir { dir: String },
    #[error("--dump needs pg_dump of PostgreSQL {major} or newer for a PostgreSQL {major} server, but the newest found is {found}; hint: install PostgreSQL {major}'s client programs or pass --pg-bin DIR (config: pg_bin_dir) with a directory holding pg_dump and pg_dumpall of {major} or newer")]
    PgDumpTooOld { major: u32, found: String },
    #[error("cannot run {tool}: {detail}")]
    Spawn { tool: String, detail: String },
    #[error("initdb of {pgdata} failed: {detail}")]
    Initdb { pgdata: String, detail: String },
    #[error("PostgreSQL on {pgdata} did not start: {log}")]
    StartFailed { pgdata: String, log: String },
    #[error("PostgreSQL on {pgdata} was not ready after {secs}s: {log}")]
    StartTimeout { pgdata: String, secs: u64, log: String },
    #[error("OS user {name:?} does not exist; hint: create it (e.g. `useradd --system --create-home {name}`) or set PGKEEP_RUN_AS to an unprivileged user")]
    NoSuchUser { name: String },
    #[error("{pgdata} is owned by root and PostgreSQL refuses to run as root; hint: chown -R it to the unprivileged user that should run the server")]
    OwnedByRoot { pgdata: String },
    #[error("{0}")]
    Io(String),
}

impl InstanceError {
    /// Binaries the operator must install or name (--pg-bin): exit 2, like other usage errors.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            InstanceError::BinariesNotFound { .. }
                | InstanceError::NoBinariesForMajor { .. }
                | InstanceError::WrongMajor { .. }
                | InstanceError::NotBinDir { .. }
                | InstanceError::PgDumpTooOld { .. }
        )
    }
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> InstanceError {
    InstanceError::Io(format!("{what}: {e}"))
}

/// An OS account (from the password database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    fn from_passwd(p: &libc::passwd) -> OsUser {
        // SAFETY: getpwnam_r/getpwuid_r filled these with valid NUL-terminated strings.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(p.pw_name).to_string_lossy().into_owned(),
                CStr::from_ptr(p.pw_dir).to_string_lossy().into_owned(),
            )
        };
        OsUser { name, uid: p.pw_uid, gid: p.pw_gid, home: PathBuf::from(home) }
    }

    pub fn by_name(name: &str) -> Option<OsUser> {
        let cname = CString::new(name).ok()?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call; buf outlives the use of pw's strings.
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(Self::from_passwd(&pw))
    }

    pub fn by_uid(uid: u32) -> Option<OsUser> {
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(Self::from_passwd(&pw))
    }

    pub fn current() -> Option<OsUser> {
        // SAFETY: geteuid cannot fail.
        Self::by_uid(unsafe { libc::geteuid() })
    }

    /// The owner of a path.
    pub fn owner_of(path: &Path) -> Option<OsUser> {
        let (uid, _) = fsutil::owner_of(path).ok()?;
        Self::by_uid(uid)
    }

    /// Who runs servers pgkeep starts itself (demo, drills): the current user, or when root,
    /// PGKEEP_RUN_AS (default `postgres`).
    pub fn for_private_servers() -> Result<OsUser, InstanceError> {
        if !fsutil::running_as_root() {
            return OsUser::current().ok_or_else(|| InstanceError::NoSuchUser { name: "(current uid)".into() });
        }
        let name = std::env::var("PGKEEP_RUN_AS").unwrap_or_else(|_| "postgres".into());
        OsUser::by_name(&name).ok_or(InstanceError::NoSuchUser { name })
    }
}

/// Make `cmd` run as `user` when we are root (std drops supplementary groups for us).
pub fn run_as(cmd: &mut Command, user: Option<&OsUser>) {
    if let Some(u) = user {
        if fsutil::running_as_root() && u.uid != 0 {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("USER", &u.name).env("LOGNAME", &u.name).env("HOME", &u.home);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM: wait for sessions to end.
    Smart,
    /// SIGINT: abort sessions, checkpoint, exit.
    Fast,
    /// SIGQUIT: exit now; crash recovery at next start.
    Immediate,
}

#[derive(Debug, Clone, Default)]
pub struct InitdbOptions {
    pub data_checksums: bool,
    pub wal_segsize_mb: Option<u32>,
}

/// A PostgreSQL server on a private Unix socket.
pub struct Instance {
    pub pgdata: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub owner: Option<OsUser>,
    /// The database superuser (initdb's -U; the owner's name by default).
    pub superuser: String,
    pub bin: PgBin,
    pub log_path: PathBuf,
    settings: Vec<(String, String)>,
    /// Environment variables of the postmaster (and so of archive_command/restore_command).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Start the postmaster in a process group of its own, so a terminal's Ctrl-C reaches only
    /// pgkeep, which then stops the server itself (restore drills).
    own_process_group: bool,
}

impl Instance {
    /// `socket_dir` and the log file's directory must be writable by `owner`.
    pub fn new(bin: PgBin, pgdata: &Path, socket_dir: &Path, port: u16, owner: Option<OsUser>) -> Instance {
        let superuser = owner
            .as_ref()
            .map(|o| o.name.clone())
            .or_else(|| OsUser::current().map(|u| u.name))
            .unwrap_or_else(|| "postgres".into());
        let log_path = socket_dir.join(format!("postgres-{port}.log"));
        Instance {
            pgdata: pgdata.to_path_buf(),
            port,
            socket_dir: socket_dir.to_path_buf(),
            owner,
            superuser,
            bin,
            log_path,
            settings: Vec::new(),
            env: Vec::new(),
            child: None,
            own_process_group: false,
        }
    }

    /// Put the postmaster in its own process group: SIGINT from the terminal then reaches
    /// only pgkeep, which stops the server itself before it cleans up.
    pub fn own_process_group(&mut self) -> &mut Self {
        self.own_process_group = true;
        self
    }

    /// initdb a new cluster at `pgdata` (trust authentication: the socket is private).
    pub fn initdb(&self, opts: &InitdbOptions) -> Result<(), InstanceError> {
        let mut cmd = Command::new(self.bin.tool("initdb"));
        cmd.arg("-D").arg(&self.pgdata).arg("-U").arg(&self.superuser);
        cmd.args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"]);
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        if let Some(mb) = opts.wal_segsize_mb {
            cmd.arg(format!("--wal-segsize={mb}"));
        }
        cmd.current_dir(self.pgdata.parent().unwrap_or(Path::new("/")));
        run_as(&mut cmd, self.owner.as_ref());
        let out = cmd.output().map_err(|e| InstanceError::Spawn { tool: "initdb".into(), detail: e.to_string() })?;
        if !out.status.success() {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " | ");
            if detail.is_empty() {
                detail = format!("exit status {}", out.status);
            }
            return Err(InstanceError::Initdb { pgdata: self.pgdata.display().to_string(), detail });
        }
        Ok(())
    }

    /// A setting passed as `-c name=value` at every start (beats postgresql.conf and .auto.conf).
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        self.settings.retain(|(k, _)| k != name);
        self.settings.push((name.to_string(), value));
        self
    }

    /// An environment variable of the server at every start (its archive_command and
    /// restore_command inherit it).
    pub fn env(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// Append settings to postgresql.conf (for clusters this process creates).
    pub fn append_conf(&self, lines: &[(&str, String)]) -> Result<(), InstanceError> {
        use std::io::Write;
        let path = self.pgdata.join("postgresql.conf");
        let mut f = OpenOptions::new().append(true).open(&path).map_err(|e| io_err(path.display(), e))?;
        for (k, v) in lines {
            writeln!(f, "{k} = '{}'", v.replace('\'', "''")).map_err(|e| io_err(path.display(), e))?;
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Start the server and wait until it accepts connections (or, in recovery without hot
    /// standby, until it leaves the starting state).
    pub fn start(&mut self, timeout: Duration) -> Result<(), InstanceError> {
        self.start_with(timeout, &|| false)
    }

    /// [`Instance::start`], giving up (server left running: call `stop`) as soon as `cancel`
    /// returns true; the error is then a `StartTimeout` carrying the log so far.
    pub fn start_with(&mut self, timeout: Duration, cancel: &dyn Fn() -> bool) -> Result<(), InstanceError> {
        if fsutil::running_as_root() {
            if let Ok((0, _)) = fsutil::owner_of(&self.pgdata) {
                return Err(InstanceError::OwnedByRoot { pgdata: self.pgdata.display().to_string() });
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| io_err(self.log_path.display(), e))?;
        if let Some(o) = &self.owner {
            if fsutil::running_as_root() {
                let _ = fsutil::chown(&self.log_path, o.uid, o.gid);
            }
        }
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(self.bin.tool("postgres"));
        cmd.arg("-D").arg(&self.pgdata);
        cmd.arg("-c").arg(format!("port={}", self.port));
        cmd.arg("-c").arg("listen_addresses=");
        cmd.arg("-c").arg(format!("unix_socket_directories={}", self.socket_dir.display()));
        cmd.arg("-c").arg("logging_collector=off");
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null());
        cmd.stdout(log.try_clone().map_err(|e| io_err("log file", e))?);
        cmd.stderr(log);
        cmd.current_dir(&self.pgdata);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.own_process_group {
            cmd.process_group(0);
        }
        run_as(&mut cmd, self.owner.as_ref());
        let child = cmd.spawn().map_err(|e| InstanceError::Spawn { tool: "postgres".into(), detail: e.to_string() })?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    let tail = self.log_since(log_offset, 12);
                    return Err(InstanceError::StartFailed {
                        pgdata: self.pgdata.display().to_string(),
                        log: format!("postgres exited with {status}; log: {tail}"),
                    });
                }
            }
            // A postmaster killed with -9 leaves its pid file (saying "ready") behind: only the
            // file of the postmaster just started counts.
            let ours = self.child.as_ref().map(|c| c.id());
            if let Some((pid, status)) = self.pid_file_status() {
                if Some(pid) == ours && (status == "ready" || status == "standby") && self.socket_path().exists() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline || cancel() {
                let tail = self.log_since(log_offset, 12);
                return Err(InstanceError::StartTimeout {
                    pgdata: self.pgdata.display().to_string(),
                    secs: timeout.as_secs(),
                    log: tail,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the postmaster to exit on its own (e.g. recovery_target_action = shutdown).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>, InstanceError> {
        let deadline = Instant::now() + timeout;
        while let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Ok(Some(st));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Line 1 (the postmaster's pid) and line 8 (starting / stopping / ready / standby) of
    /// postmaster.pid.
    fn pid_file_status(&self) -> Option<(u32, String)> {
        let text = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        text.lines().nth(7).map(|s| (pid, s.trim().to_string()))
    }

    /// Stop the server and wait for it to exit (escalating to SIGKILL after a minute).
    pub fn stop(&mut self, mode: StopMode) -> Result<(), InstanceError> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let sig = match mode {
            StopMode::Smart => libc::SIGTERM,
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // Backends outlive the postmaster for a moment after an immediate stop; wait for the
        // pid file to go so a restart on this directory does not trip over them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.pgdata.join("postmaster.pid").exists() && Instant::now() < deadline && mode != StopMode::Immediate {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL the postmaster (a crash, for tests and drills).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Connection parameters for this instance as its superuser.
    pub fn conn(&self, dbname: &str) -> ConnParams {
        ConnParams::unix(&self.socket_dir, self.port, &self.superuser, dbname)
    }

    /// The last `n` lines of the server log written since `offset`.
    pub fn log_since(&self, offset: u64, n: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.log_since(0, n)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.stop(StopMode::Immediate);
    }
}

/// A TCP port that was free a moment ago (used to name the instance's Unix socket and keep
/// its shared memory key distinct).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(54329)
}
