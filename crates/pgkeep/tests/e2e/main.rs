//! pgkeep's integration tests: one binary, one module per area. Every test runs real
//! PostgreSQL clusters (started by pgkeep-testkit) and the real pgkeep binary.
//! Tests that need root (loop devices, btrfs) say so in their names and doc comments; CI runs
//! as root.

mod common;

mod archive;
mod archive_async;
mod archive_hardening;
#[cfg(feature = "azure")]
mod azure;
mod backup_restore;
mod bad_input;
mod catalog_hardening;
mod check;
mod corruption;
mod delta_restore;
mod demo;
mod docs;
mod encryption;
#[cfg(feature = "gcs")]
mod gcs;
mod incremental;
mod init;
mod interrupted;
mod json_docs;
mod majors;
mod metrics;
#[cfg(any(feature = "s3", feature = "azure"))]
mod object_stores;
mod packaging;
mod pitr;
mod reports_hardening;
mod restore_hardening;
mod retention;
mod rpo;
#[cfg(feature = "s3")]
mod s3;
#[cfg(feature = "s3")]
mod s3_faults;
mod snapshot_btrfs;
#[cfg(feature = "ebs")]
mod snapshot_ebs;
mod snapshot_freeze;
mod snapshot_hooks;
mod snapshot_reflink;
mod snapshot_util;
mod tablespace;
mod verify;
mod verify_pgdata;
mod verify_snapshot;
mod wal;
