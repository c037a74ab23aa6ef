//! A GCS emulator (PyPI `gcp-storage-emulator`, installed by scripts/setup.sh into the venv
//! that holds moto) on 127.0.0.1 and a free port, in memory, stopped on drop, with a bucket for
//! `gs://` repository tests; its JSON API (Python's urllib) is the tests' independent view.
//!
//! What it does with object_store's requests (XML API): it stores a PUT but answers without
//! the ETag object_store requires (so the put is an error to pgkeep), ignores
//! `x-goog-if-generation-match: 0` (a second create replaces the object), and has no XML
//! list, delete or multipart upload. So pgkeep must refuse it, and that refusal is what the
//! tests show. (fake-gcs-server 1.54, the other candidate on PyPI, rejects XML PUTs outright.)
//!
//! Credentials: a service account file (GOOGLE_SERVICE_ACCOUNT) with `disable_oauth`, the form
//! object_store documents for emulators; its `private_key` is distinctive so a test can grep for
//! it, and no request ever goes to a metadata server.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::moto::DEFAULT_VENV;
use crate::TestEnv;

/// The service account's private key as it appears in the credentials file.
pub const PRIVATE_KEY: &str = "pgkeepGcsTestPrivateKey+5e1d9c3b7a2f4e6d8c0b";

pub struct GcsEmulator {
    child: Child,
    pub port: u16,
    pub bucket: String,
    /// `[gcs]` settings pointing at this server; readable by the server's OS user.
    pub config: PathBuf,
    /// The service account file (mode 0600, owned by the server's OS user).
    pub credentials: PathBuf,
    venv: PathBuf,
    log: PathBuf,
}

impl GcsEmulator {
    /// Start the emulator and create `bucket`; panics with a hint when it is not installed.
    pub fn start(env: &TestEnv, bucket: &str) -> GcsEmulator {
        let venv = PathBuf::from(std::env::var("PGKEEP_MOTO_VENV").unwrap_or_else(|_| DEFAULT_VENV.into()));
        let bin = venv.join("bin/gcp-storage-emulator");
        assert!(
            bin.exists(),
            "{} is missing: the gs:// tests need it; run `bash scripts/setup.sh` (it installs gcp-storage-emulator into {})",
            bin.display(),
            venv.display()
        );
        let port = pgkeep::pg::instance::free_port();
        let log = env.path(&format!("gcs-{port}.log"));
        let logf = std::fs::File::create(&log).expect("gcs emulator log");
        let child = Command::new(&bin)
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--in-memory"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let dir = env.owned_dir(&format!("gcs-{port}"));
        let credentials = dir.join("service-account.json");
        std::fs::write(
            &credentials,
            format!(
                "{{\"type\": \"service_account\", \"client_email\": \"pgkeep@test.invalid\", \"private_key_id\": \"k1\", \"private_key\": \"{PRIVATE_KEY}\", \"disable_oauth\": true}}\n"
            ),
        )
        .expect("write credentials");
        pgkeep::fsutil::set_mode(&credentials, 0o600).expect("chmod credentials");
        env.chown(&dir);
        let config = env.path(&format!("pgkeep-gcs-{port}.toml"));
        let mut g = GcsEmulator { child, port, bucket: bucket.to_string(), config, credentials, venv, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = g.child.try_wait() {
                panic!("gcp-storage-emulator exited ({s}): {}", std::fs::read_to_string(&g.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "gcp-storage-emulator did not listen on {port} within 60s");
            std::thread::sleep(Duration::from_millis(100));
        }
        g.python(&format!("api('POST', '/storage/v1/b?project=pgkeep', {{'name': '{bucket}'}})"));
        std::fs::write(&g.config, format!("[gcs]\nendpoint = \"{}\"\nmax_retries = 1\n", g.endpoint()))
            .expect("write config");
        pgkeep::fsutil::set_mode(&g.config, 0o644).expect("chmod config");
        g
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("gs://{}/{prefix}", self.bucket)
    }

    /// What pgkeep needs: the service account file, only in the environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("GOOGLE_SERVICE_ACCOUNT", self.credentials.display().to_string())]
    }

    /// Run a Python snippet with `api(method, path, json_body=None)` (returns the parsed JSON
    /// answer of the emulator's JSON API); returns stdout. Panics with stderr on failure.
    pub fn python(&self, script: &str) -> String {
        let prelude = format!(
            "import json, urllib.request\ndef api(method, path, body=None):\n    data = None if body is None else json.dumps(body).encode()\n    req = urllib.request.Request('{e}' + path, data=data, method=method, headers={{'content-type': 'application/json'}})\n    with urllib.request.urlopen(req) as r:\n        text = r.read()\n        return json.loads(text) if text else None\n",
            e = self.endpoint()
        );
        let out = Command::new(self.venv.join("bin/python"))
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run venv python");
        assert!(out.status.success(), "python failed: {}\n{}", String::from_utf8_lossy(&out.stderr), script);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every object name below `prefix`, sorted (the JSON API's view).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.python(&format!(
            "import urllib.parse\nr = api('GET', '/storage/v1/b/{b}/o?prefix=' + urllib.parse.quote('{prefix}'))\nprint(json.dumps(sorted(o['name'] for o in (r or {{}}).get('items', []))))",
            b = self.bucket
        ));
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("key list");
        v.as_array().expect("key list").iter().map(|k| k.as_str().unwrap_or_default().to_string()).collect()
    }
}

impl Drop for GcsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
