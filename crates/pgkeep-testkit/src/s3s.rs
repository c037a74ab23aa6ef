//! `s3s-fs` (crates.io `s3s-fs`, an S3 server over a directory, installed by scripts/setup.sh
//! into /opt/s3s) on 127.0.0.1 and a free port: a second, independent S3 implementation beside
//! moto. It checks SigV4 signatures with the one access key it is started with and enforces
//! If-None-Match and If-Match on PUT. Stopped on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup.sh installs the binary (override with PGKEEP_S3S_FS).
pub const DEFAULT_S3S_FS: &str = "/opt/s3s/bin/s3s-fs";

pub struct S3sFsServer {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    /// The directory holding the buckets (one subdirectory each).
    pub root: PathBuf,
    log: PathBuf,
}

impl S3sFsServer {
    /// Start s3s-fs over `dir/s3s-root` with `buckets` created; panics with a hint when the
    /// binary is missing.
    pub fn start(dir: &Path, access_key: &str, secret_key: &str, buckets: &[&str]) -> S3sFsServer {
        let bin = PathBuf::from(std::env::var("PGKEEP_S3S_FS").unwrap_or_else(|_| DEFAULT_S3S_FS.into()));
        assert!(
            bin.exists(),
            "{} is missing: run `bash scripts/setup.sh` (it installs s3s-fs with cargo install)",
            bin.display()
        );
        let root = dir.join("s3s-root");
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).expect("create bucket directory");
        }
        let port = pgkeep::pg::instance::free_port();
        let log = dir.join(format!("s3s-fs-{port}.log"));
        let logf = std::fs::File::create(&log).expect("s3s-fs log");
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut s = S3sFsServer { child, port, endpoint: format!("http://127.0.0.1:{port}"), root, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("s3s-fs exited ({st}): {}", std::fs::read_to_string(&s.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port} within 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
}

impl Drop for S3sFsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
