//! An S3 bucket on moto_server or s3s-fs (127.0.0.1, a free port) for `s3://` repository
//! tests, with credentials only pgkeep sees (a shared credentials file) and boto3 as the tests'
//! independent view of what pgkeep stored. Two independent S3 implementations: what passes on
//! both is not an accident of one server.

use std::path::PathBuf;
use std::time::Duration;

use crate::moto::{boto_python, MotoServer};
use crate::proxy::FaultProxy;
use crate::s3s::S3sFsServer;
use crate::tls::TlsTerminator;
use crate::TestEnv;

/// The secret access key pgkeep signs with: distinctive, so a test can grep every output and
/// every stored object for it.
pub const SECRET_KEY: &str = "pgkeepTestSecret+9f3b2c7d1e5a4b6c8d0e";
pub const ACCESS_KEY: &str = "AKIAPGKEEPTEST000001";

/// What pgkeep reaches the server through (the tests' boto3 always talks to it directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Direct,
    Proxy,
    Tls,
}

/// Which S3 implementation serves the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Server {
    Moto,
    S3sFs,
}

pub struct S3Store {
    /// Always running (its boto3 venv is the tests' client); serves the bucket unless `s3s` does.
    pub moto: MotoServer,
    /// s3s-fs, when the bucket lives there instead of in moto.
    pub s3s: Option<S3sFsServer>,
    pub bucket: String,
    /// `[s3]` settings pointing at this server; readable by the server's OS user.
    pub config: PathBuf,
    /// A shared credentials file (`[default]`), owned by the server's OS user, mode 0600.
    pub credentials: PathBuf,
    /// An empty AWS config file, so nothing from a real ~/.aws/config leaks in.
    pub aws_config: PathBuf,
    /// The fault proxy the config file's `endpoint` points at, when started behind one.
    pub proxy: Option<FaultProxy>,
    /// The TLS terminator the config file's `endpoint` points at (with `ca_file`), when
    /// started behind one.
    pub tls: Option<TlsTerminator>,
}

impl S3Store {
    /// Start moto_server, create `bucket`, and write the config and credentials files into
    /// the test's directory.
    pub fn start(env: &TestEnv, bucket: &str) -> S3Store {
        Self::start_with(env, bucket, "")
    }

    /// Like [`S3Store::start`], with more `[s3]` lines in the config file.
    pub fn start_with(env: &TestEnv, bucket: &str, extra_s3_settings: &str) -> S3Store {
        Self::start_inner(env, bucket, extra_s3_settings, Front::Direct, S3Server::Moto)
    }

    /// Like [`S3Store::start_with`], on the given S3 implementation.
    pub fn start_on(env: &TestEnv, server: S3Server, bucket: &str, extra_s3_settings: &str) -> S3Store {
        Self::start_inner(env, bucket, extra_s3_settings, Front::Direct, server)
    }

    /// Like [`S3Store::start_with`], with pgkeep reaching moto through a [`FaultProxy`]
    /// (`store.proxy`); boto3 (the tests' view) still talks to moto directly.
    pub fn start_behind_proxy(env: &TestEnv, bucket: &str, extra_s3_settings: &str) -> S3Store {
        Self::start_inner(env, bucket, extra_s3_settings, Front::Proxy, S3Server::Moto)
    }

    /// Like [`S3Store::start_behind_proxy`], on the given S3 implementation.
    pub fn start_on_behind_proxy(env: &TestEnv, server: S3Server, bucket: &str, extra_s3_settings: &str) -> S3Store {
        Self::start_inner(env, bucket, extra_s3_settings, Front::Proxy, server)
    }

    /// Like [`S3Store::start_with`], with pgkeep reaching moto over TLS through a
    /// [`TlsTerminator`] (`store.tls`) whose private CA the config's `ca_file` names: an
    /// on-premises store behind its own CA. boto3 still talks to moto directly.
    pub fn start_behind_tls(env: &TestEnv, bucket: &str, extra_s3_settings: &str) -> S3Store {
        Self::start_inner(env, bucket, extra_s3_settings, Front::Tls, S3Server::Moto)
    }

    fn start_inner(env: &TestEnv, bucket: &str, extra_s3_settings: &str, front: Front, server: S3Server) -> S3Store {
        let moto = MotoServer::start(env.root());
        let s3s =
            (server == S3Server::S3sFs).then(|| S3sFsServer::start(env.root(), ACCESS_KEY, SECRET_KEY, &[bucket]));
        let (port, direct) = match &s3s {
            Some(s) => (s.port, s.endpoint.clone()),
            None => (moto.port, moto.endpoint.clone()),
        };
        let proxy = (front == Front::Proxy).then(|| FaultProxy::start(port));
        let tls = (front == Front::Tls).then(|| TlsTerminator::start(env, port));
        let endpoint = match (&proxy, &tls) {
            (Some(p), _) => p.endpoint(),
            (_, Some(t)) => t.endpoint(),
            _ => direct,
        };
        let ca_file = tls.as_ref().map(|t| format!("ca_file = \"{}\"\n", t.ca.display())).unwrap_or_default();
        if s3s.is_none() {
            moto.python(&format!("s3().create_bucket(Bucket='{bucket}')"));
        }
        let dir = env.owned_dir("aws");
        let credentials = dir.join("credentials");
        std::fs::write(
            &credentials,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .expect("write credentials");
        pgkeep::fsutil::set_mode(&credentials, 0o600).expect("chmod credentials");
        let aws_config = dir.join("config");
        std::fs::write(&aws_config, "").expect("write aws config");
        env.chown(&dir);
        let config = env.path("pgkeep-s3.toml");
        std::fs::write(
            &config,
            format!("[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n{ca_file}{extra_s3_settings}\n"),
        )
        .expect("write config");
        pgkeep::fsutil::set_mode(&config, 0o644).expect("chmod config");
        S3Store { moto, s3s, bucket: bucket.to_string(), config, credentials, aws_config, proxy, tls }
    }

    /// Run a boto3 snippet (`s3()` is a client) against the server holding the bucket.
    pub fn python(&self, script: &str) -> String {
        match &self.s3s {
            Some(s) => boto_python(self.moto.venv(), &s.endpoint, (ACCESS_KEY, SECRET_KEY), script),
            None => self.moto.python(script),
        }
    }

    fn json(&self, script: &str) -> serde_json::Value {
        let out = self.python(script);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment pgkeep (and the server running archive_command/restore_command) needs:
    /// where the credentials are, and no instance metadata lookups off EC2.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_SHARED_CREDENTIALS_FILE", self.credentials.display().to_string()),
            ("AWS_CONFIG_FILE", self.aws_config.display().to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// archive_command pushing into `url` through the config file, credentials via env.
    pub fn archive_command(&self, env: &TestEnv, url: &str) -> String {
        let vars: Vec<String> = self.env().iter().map(|(k, v)| format!("{k}='{v}'")).collect();
        format!(
            "{} \"{}\" --config \"{}\" --repo \"{url}\" archive-push \"%p\"",
            vars.join(" "),
            env.pgkeep.display(),
            self.config.display()
        )
    }

    /// Every key below `prefix`, sorted (boto3's view).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let v = self.json(&format!(
            "c = s3(); keys = []\nfor page in c.get_paginator('list_objects_v2').paginate(Bucket='{}', Prefix='{prefix}'):\n    keys += [o['Key'] for o in page.get('Contents', [])]\nprint(json.dumps(sorted(keys)))",
            self.bucket
        ));
        v.as_array().expect("key list").iter().map(|k| k.as_str().unwrap_or_default().to_string()).collect()
    }

    /// (size, storage class) of one object, from HeadObject.
    pub fn head(&self, key: &str) -> (u64, String) {
        let v = self.json(&format!(
            "h = s3().head_object(Bucket='{}', Key='{key}')\nprint(json.dumps([h['ContentLength'], h.get('StorageClass', 'STANDARD')]))",
            self.bucket
        ));
        (v[0].as_u64().expect("size"), v[1].as_str().unwrap_or_default().to_string())
    }

    /// Every object below `prefix` with its bytes, sorted by key.
    pub fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        self.python(&format!(
            "import os\nc = s3()\nfor page in c.get_paginator('list_objects_v2').paginate(Bucket='{b}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        p = os.path.join('{d}', o['Key'].replace('/', '%'))\n        c.download_file('{b}', o['Key'], p)",
            b = self.bucket,
            d = dir.path().display()
        ));
        crate::read_dumped_objects(dir.path())
    }

    /// Wait until `key` exists (e.g. an archived segment).
    pub fn wait_for_key(&self, key: &str, timeout: Duration) {
        self.python(&format!(
            "import time\nc = s3(); end = time.time() + {secs}\nwhile True:\n    r = c.list_objects_v2(Bucket='{b}', Prefix='{key}')\n    if any(o['Key'] == '{key}' for o in r.get('Contents', [])): break\n    assert time.time() < end, '{key} did not appear within {secs}s'\n    time.sleep(0.1)",
            secs = timeout.as_secs(),
            b = self.bucket
        ));
    }
}
