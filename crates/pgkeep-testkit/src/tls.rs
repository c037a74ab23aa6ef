//! A TLS terminator on 127.0.0.1 in front of a plain-HTTP server (an S3 emulator), with a
//! private CA made for the occasion: what an on-premises store behind its own CA looks like to
//! pgkeep (`[s3] endpoint = "https://…"`, `ca_file`). Stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TestEnv;

pub struct TlsTerminator {
    pub port: u16,
    /// PEM of the CA that signed the server's certificate (for `ca_file`).
    pub ca: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsTerminator {
    /// Terminate TLS on a free port and forward each connection to 127.0.0.1:`upstream`.
    pub fn start(env: &TestEnv, upstream: u16) -> TlsTerminator {
        let dir = env.owned_dir("tls");
        let (cert, key, ca) = certificates(&dir, "pgkeep-test-ca");
        let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
            .expect("leaf certificate")
            .collect::<Result<_, _>>()
            .expect("leaf certificate PEM");
        let key = PrivateKeyDer::from_pem_file(&key).expect("leaf key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tls-terminator")
            .enable_io()
            .build()
            .expect("runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind TLS terminator");
        let port = listener.local_addr().expect("address").port();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that gives up on the handshake (e.g. one that does not trust
                    // the CA) just ends its connection.
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsTerminator { port, ca, runtime: Some(runtime) }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A CA named `ca_name` and a leaf for 127.0.0.1/localhost it signs, made with the `openssl`
/// command in `dir`: (leaf certificate, leaf key, CA certificate), all PEM, readable by anyone
/// (the server's OS user reads the CA through `ca_file`). A CA and a leaf rather than one
/// self-signed certificate: rustls refuses a CA certificate used as a server's.
pub fn certificates(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key, ca) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    let (ca_key, csr, ext) = (dir.join("ca.key"), dir.join("leaf.csr"), dir.join("leaf.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    let p = |p: &Path| p.display().to_string();
    let subject = format!("/CN={ca_name}");
    let steps: [Vec<String>; 3] = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject]
            .iter()
            .map(|s| s.to_string())
            .chain(
                ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]
                    .map(String::from),
            )
            .chain(["-keyout".into(), p(&ca_key), "-out".into(), p(&ca)])
            .collect(),
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
            .map(String::from)
            .into_iter()
            .chain(["-keyout".into(), p(&key), "-out".into(), p(&csr)])
            .collect(),
        ["x509", "-req", "-days", "2", "-CAcreateserial"]
            .map(String::from)
            .into_iter()
            .chain(["-in".into(), p(&csr), "-CA".into(), p(&ca), "-CAkey".into(), p(&ca_key)])
            .chain(["-extfile".into(), p(&ext), "-out".into(), p(&cert)])
            .collect(),
    ];
    for args in steps {
        let ok = Command::new("openssl").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(ok.is_ok_and(|s| s.success()), "openssl {args:?} failed (apt-get install openssl)");
    }
    for f in [&cert, &key, &ca] {
        pgkeep::fsutil::set_mode(f, 0o644).expect("chmod");
    }
    (cert, key, ca)
}
