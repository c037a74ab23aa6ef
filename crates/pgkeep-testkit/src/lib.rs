//! Test harness for pgkeep: real PostgreSQL clusters in temp directories (Unix socket in that
//! directory, a free port, stopped on drop, run as an unprivileged OS user when the tests run
//! as root), the pgkeep binary copied where that user can run it, a command runner, and load
//! generators that remember exactly what they committed.
//!
//! Nothing here fakes PostgreSQL, the file system or the repository.

pub mod azurite;
pub mod cluster;
pub mod cmd;
pub mod env;
pub mod gcs;
pub mod load;
pub mod moto;
pub mod prom;
pub mod proxy;
pub mod s3;
pub mod s3s;
pub mod tls;
pub mod volumes;

pub use azurite::Azurite;
pub use cluster::{server_bin, ClusterOptions, TestCluster};
pub use cmd::{CmdOutput, PgkeepCmd};
pub use env::TestEnv;
pub use gcs::GcsEmulator;
pub use load::{Committed, Load, Op};
pub use moto::MotoServer;
pub use proxy::FaultProxy;
pub use s3::{S3Server, S3Store};
pub use tls::TlsTerminator;
pub use volumes::{cluster_at, require_root, Mounts};

/// Objects an oracle dumped into `dir` as files (`%` for `/` in names): (key, bytes), sorted.
pub(crate) fn read_dumped_objects(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read objects")
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().replace('%', "/"), std::fs::read(e.path()).expect("read")))
        .collect();
    out.sort();
    out
}
