//! Azurite (npm `azurite`, installed by scripts/setup.sh into /opt/pgkeep-azurite) serving
//! Azure Blob Storage on 127.0.0.1 and a free port, its data in the test's directory, stopped
//! on drop, with a container for `az://` repository tests. The account and key are the test's
//! own (AZURITE_ACCOUNTS), so a test can grep for the key. Node's fetch and HMAC (signing
//! requests with the account key as the Blob REST API specifies) are the tests' independent
//! view of what was stored.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestEnv;

/// Where scripts/setup.sh installs Azurite (override with PGKEEP_AZURITE_DIR).
pub const DEFAULT_DIR: &str = "/opt/pgkeep-azurite";

pub const ACCOUNT: &str = "pgkeeptest";
/// The account key pgkeep signs with (base64, as Azure hands them out): distinctive, so a test
/// can grep every output and every stored object for it.
pub const ACCOUNT_KEY: &str = "cGdrZWVwQXp1cmVUZXN0U2VjcmV0KzdjNGUxYTliM2Q1ZjJlOGMwYjZhNGQ5ZjE=";

pub struct Azurite {
    child: Child,
    pub port: u16,
    pub container: String,
    /// `[azure]` settings pointing at this server; readable by the server's OS user.
    pub config: PathBuf,
    log: PathBuf,
}

impl Azurite {
    /// Start Azurite's blob service and create `container`; panics with a hint when Azurite is
    /// not installed.
    pub fn start(env: &TestEnv, container: &str) -> Azurite {
        let dir = PathBuf::from(std::env::var("PGKEEP_AZURITE_DIR").unwrap_or_else(|_| DEFAULT_DIR.into()));
        let bin = dir.join("node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: the az:// tests need Azurite; run `bash scripts/setup.sh` (it installs azurite@3 from npm into {})",
            bin.display(),
            dir.display()
        );
        let port = pgkeep::pg::instance::free_port();
        let data = env.path(&format!("azurite-{port}"));
        std::fs::create_dir_all(&data).expect("azurite data dir");
        let log = env.path(&format!("azurite-{port}.log"));
        let logf = std::fs::File::create(&log).expect("azurite log");
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--skipApiVersionCheck", "--location"])
            .arg(&data)
            .env("AZURITE_ACCOUNTS", format!("{ACCOUNT}:{ACCOUNT_KEY}"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let config = env.path(&format!("pgkeep-azure-{port}.toml"));
        let mut a = Azurite { child, port, container: container.to_string(), config, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = a.child.try_wait() {
                panic!("azurite exited ({s}): {}", std::fs::read_to_string(&a.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "azurite did not listen on {port} within 60s");
            std::thread::sleep(Duration::from_millis(100));
        }
        a.node(&format!("await az('PUT', '{container}', {{restype: 'container'}});"));
        std::fs::write(&a.config, format!("[azure]\nuse_emulator = true\nendpoint = \"{}\"\n", a.endpoint()))
            .expect("write config");
        pgkeep::fsutil::set_mode(&a.config, 0o644).expect("chmod config");
        a
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("az://{}/{prefix}", self.container)
    }

    /// What pgkeep (and the server running archive_command/restore_command) needs: the
    /// account and its key, only in the environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.into()), ("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY.into())]
    }

    /// archive_command pushing into `url` through the config file. The key is not in it (the
    /// server shows its settings to any client): the server's environment carries [`Self::env`].
    pub fn archive_command(&self, env: &TestEnv, url: &str) -> String {
        format!(
            "\"{}\" --config \"{}\" --repo \"{url}\" archive-push \"%p\"",
            env.pgkeep.display(),
            self.config.display()
        )
    }

    /// Run a Node snippet (top-level await) with `az(method, path, query, headers, body)`:
    /// a Blob REST request signed with the account key, returning the Response (it throws on
    /// a status >= 300); returns stdout. Panics with stderr on failure.
    pub fn node(&self, script: &str) -> String {
        let prelude = format!(
            r#"import crypto from 'crypto';
const ENDPOINT = 'http://127.0.0.1:{port}', ACCOUNT = '{ACCOUNT}', KEY = Buffer.from('{ACCOUNT_KEY}', 'base64');
async function az(method, path, query = {{}}, headers = {{}}, body = undefined) {{
  const h = {{ 'x-ms-date': new Date().toUTCString(), 'x-ms-version': '2021-08-06', ...headers }};
  // fetch would add a Content-Type of its own to a string body; it is part of the signature.
  if (body !== undefined && !h['Content-Type']) h['Content-Type'] = 'application/octet-stream';
  const len = body === undefined ? '' : String(Buffer.byteLength(body));
  const xms = Object.keys(h).filter(k => k.startsWith('x-ms-')).sort().map(k => k + ':' + h[k] + '\n').join('');
  const q = Object.keys(query).sort().map(k => '\n' + k + ':' + query[k]).join('');
  const sts = [method, '', '', len, '', h['Content-Type'] || '', '', '', '', '', '', ''].join('\n') + '\n'
    + xms + '/' + ACCOUNT + '/' + ACCOUNT + '/' + path + q;
  h['Authorization'] = 'SharedKey ' + ACCOUNT + ':' + crypto.createHmac('sha256', KEY).update(sts, 'utf8').digest('base64');
  const url = ENDPOINT + '/' + ACCOUNT + '/' + path + (Object.keys(query).length ? '?' + new URLSearchParams(query) : '');
  const r = await fetch(url, {{ method, headers: h, body }});
  if (r.status >= 300) throw new Error(method + ' ' + url + ': ' + r.status + ' ' + await r.text());
  return r;
}}
async function keys(prefix) {{
  let out = [], marker = '';
  for (;;) {{
    const q = {{ comp: 'list', restype: 'container', prefix }};
    if (marker) q.marker = marker;
    const x = await (await az('GET', '{container}', q)).text();
    out.push(...[...x.matchAll(/<Name>([^<]*)<\/Name>/g)].map(m => m[1]));
    marker = (x.match(/<NextMarker>([^<]*)<\/NextMarker>/) || [])[1];
    if (!marker) return out.sort();
  }}
}}
"#,
            port = self.port,
            container = self.container
        );
        let file = tempfile::Builder::new().suffix(".mjs").tempfile().expect("script file");
        std::fs::write(file.path(), format!("{prelude}\n{script}\n")).expect("write script");
        let out = Command::new("node").arg(file.path()).output().expect("run node");
        assert!(out.status.success(), "node failed: {}\n{}", String::from_utf8_lossy(&out.stderr), script);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every blob name below `prefix`, sorted (the List Blobs API's view).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.node(&format!("console.log(JSON.stringify(await keys('{prefix}')));"));
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("key list");
        v.as_array().expect("key list").iter().map(|k| k.as_str().unwrap_or_default().to_string()).collect()
    }

    /// Every blob below `prefix` with its bytes, sorted by name.
    pub fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        self.node(&format!(
            "const fs = await import('fs');\nfor (const k of await keys('{prefix}')) {{\n  const b = Buffer.from(await (await az('GET', '{c}/' + k)).arrayBuffer());\n  fs.writeFileSync('{d}/' + k.replaceAll('/', '%'), b);\n}}",
            c = self.container,
            d = dir.path().display()
        ));
        crate::read_dumped_objects(dir.path())
    }

    /// Wait until `key` exists (e.g. an archived segment).
    pub fn wait_for_key(&self, key: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.keys(key).iter().any(|k| k == key) {
            assert!(Instant::now() < deadline, "{key} did not appear within {timeout:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
