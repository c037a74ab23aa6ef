//! `az://CONTAINER/PREFIX` repositories against Azurite on 127.0.0.1 (issue 9): the whole
//! story through Azure Blob Storage, archive-push's never-overwrite rule, an unreachable store
//! failing with one line (archive-get: 126). The account key reaches pgkeep only through
//! AZURE_STORAGE_ACCOUNT_KEY; no output and no stored blob ever contains it.

use std::path::Path;
use std::time::Duration;

use pgkeep_testkit::{Azurite, TestEnv};

use crate::common;
use crate::object_stores::{
    lease_taken_over_only_when_expired, never_overwrites_and_unreachable_fails, whole_story, Store, StoreSetup,
};

impl Store for Azurite {
    fn url(&self, prefix: &str) -> String {
        Azurite::url(self, prefix)
    }
    fn config(&self) -> &Path {
        &self.config
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        Azurite::env(self)
    }
    fn archive_command(&self, env: &TestEnv, url: &str) -> String {
        Azurite::archive_command(self, env, url)
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        Azurite::keys(self, prefix)
    }
    fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        Azurite::objects(self, prefix)
    }
    fn wait_for_key(&self, key: &str, timeout: Duration) {
        Azurite::wait_for_key(self, key, timeout)
    }
    fn secret(&self) -> &'static str {
        pgkeep_testkit::azurite::ACCOUNT_KEY
    }
    fn config_with_endpoint(&self, endpoint: &str) -> String {
        format!("[azure]\nuse_emulator = true\nendpoint = \"{endpoint}\"\nmax_retries = 2\n")
    }
    fn put(&self, key: &str, body: &str) {
        self.node(&format!(
            "await az('PUT', '{}/{key}', {{}}, {{'x-ms-blob-type': 'BlockBlob'}}, {body:?});",
            self.container
        ));
    }
}

fn setup(prefix: &str, settings: &[(&str, &str)]) -> StoreSetup<Azurite> {
    let env = common::env();
    let store = Azurite::start(&env, "pgkeep-test");
    StoreSetup::new(env, store, prefix, settings)
}

/// init proves Azurite refuses a second create (If-None-Match: *), check names the account
/// key as the credential source, and the whole story runs through Azure Blob Storage.
#[test]
fn azure_repository_backup_archive_pitr_restore_verify_under_load() {
    let s = setup("db1/main", &[("track_commit_timestamp", "on")]);
    whole_story(&s, "Azure account key from AZURE_STORAGE_ACCOUNT_KEY", |_| {});
}

/// A different segment under an archived name is refused and the stored blob kept; an
/// unreachable store makes archive-get exit 126 and backup fail with one line.
#[test]
fn azure_archive_never_overwrites_and_unreachable_store_fails_cleanly() {
    never_overwrites_and_unreachable_fails(setup("db2", &[]));
}

/// The backup lock on Azure is a lease blob: a live lease (another host's) makes backup refuse
/// with one line naming the holder; an expired one is taken over (a replace only if its ETag
/// is unchanged) with a log line, and the lock blob is gone when the backup ends.
#[test]
fn azure_backup_lock_is_a_lease_taken_over_only_when_expired() {
    let s = setup("db4", &[]);
    lease_taken_over_only_when_expired(&s);
    s.assert_no_secret_anywhere(&[]);
}

/// No storage account anywhere (no `[azure] account`, no AZURE_STORAGE_ACCOUNT_NAME): one
/// configuration error line, exit 2, before any request.
#[test]
fn azure_without_a_storage_account_is_one_config_error() {
    let env = common::env();
    let config = env.path("azure.toml");
    std::fs::write(&config, "[azure]\nmax_retries = 1\n").unwrap();
    let mut c = env.pgkeep(["--config"]).arg(&config).arg("--repo").arg("az://backups/db1").arg("list");
    for v in ["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_USE_EMULATOR", "AZURE_STORAGE_ENDPOINT"] {
        c.command().env_remove(v);
    }
    let o = c.run();
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    let line = o.one_error_line();
    assert!(
        line.contains("az://backups/db1") && line.contains("no storage account") && line.contains("hint:"),
        "{line}"
    );
}
