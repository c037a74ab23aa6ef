//! Test harness for pgkeep: real PostgreSQL clusters in temp directories (Unix socket in that
//! directory, a free port, stopped on drop, run as an unprivileged OS user when the tests run
//! as root), the pgkeep binary copied where that user can run it, a command runner, and load
//! generators that remember exactly what they committed.
//!
//! Nothing here fakes PostgreSQL, the file system or the repository.

pub mod cluster;
pub mod cmd;
pub mod env;
pub mod load;
pub mod moto;
pub mod proxy;
pub mod s3;
pub mod volumes;

pub use cluster::{ClusterOptions, TestCluster};
pub use cmd::{CmdOutput, PgkeepCmd};
pub use env::TestEnv;
pub use load::{Committed, Load, Op};
pub use moto::MotoServer;
pub use proxy::FaultProxy;
pub use s3::S3Store;
pub use volumes::{cluster_at, require_root, Mounts};
