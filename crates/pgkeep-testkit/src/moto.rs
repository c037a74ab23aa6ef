//! `moto_server` (PyPI `moto[server]`, installed by scripts/setup.sh into a venv) on
//! 127.0.0.1 and a free port, for the EBS driver's and the s3:// tests; stopped on drop.
//! boto3 from the same venv is the tests' independent view of what pgkeep did to the (fake)
//! EC2 and S3 APIs. Its S3 enforces If-None-Match and If-Match on PUT (moto 5.1+).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup.sh puts the venv (override with PGKEEP_MOTO_VENV).
pub const DEFAULT_VENV: &str = "/opt/pgkeep-venv";

pub struct MotoServer {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    venv: PathBuf,
    log: PathBuf,
}

impl MotoServer {
    /// Start moto_server; panics with a hint when the venv is missing.
    pub fn start(log_dir: &std::path::Path) -> MotoServer {
        let venv = PathBuf::from(std::env::var("PGKEEP_MOTO_VENV").unwrap_or_else(|_| DEFAULT_VENV.into()));
        let bin = venv.join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: the EBS tests need moto_server; run `bash scripts/setup.sh` (it creates the venv {} with moto[server])",
            bin.display(),
            venv.display()
        );
        let port = pgkeep::pg::instance::free_port();
        let log = log_dir.join(format!("moto-{port}.log"));
        let logf = std::fs::File::create(&log).expect("moto log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut m = MotoServer { child, port, endpoint, venv, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = m.child.try_wait() {
                panic!("moto_server exited ({s}): {}", std::fs::read_to_string(&m.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 60s");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Make sure it answers API calls, not only accepts connections.
        m.python("import boto3; ec2().describe_regions()");
        m
    }

    /// The venv holding moto and boto3.
    pub fn venv(&self) -> &std::path::Path {
        &self.venv
    }

    /// Environment that points an AWS SDK at this server with dummy credentials.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// Run a Python snippet with boto3 (`ec2()` and `s3()` return clients for this server); returns
    /// stdout. Panics with stderr on failure.
    pub fn python(&self, script: &str) -> String {
        boto_python(&self.venv, &self.endpoint, ("testing", "testing"), script)
    }

    /// Run a snippet that prints one JSON document, and parse it.
    pub fn json(&self, script: &str) -> serde_json::Value {
        let out = self.python(script);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a Python snippet with the venv's boto3 against any S3/EC2 endpoint signed with
/// `(access key, secret key)`; `ec2()` and `s3()` return clients for it. Returns stdout; panics
/// with stderr on failure.
pub fn boto_python(venv: &std::path::Path, endpoint: &str, (access, secret): (&str, &str), script: &str) -> String {
    let prelude = format!(
        "import json, boto3\ndef ec2():\n    return boto3.client('ec2', endpoint_url='{endpoint}', region_name='us-east-1')\ndef s3():\n    return boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1')\n"
    );
    let out = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env("AWS_ACCESS_KEY_ID", access)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .expect("run venv python");
    assert!(out.status.success(), "python failed: {}\n{}", String::from_utf8_lossy(&out.stderr), script);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
