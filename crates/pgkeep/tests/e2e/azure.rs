//! `az://CONTAINER/PREFIX` repositories against Azurite on 127.0.0.1 (issue 9): the whole
//! story through Azure Blob Storage, archive-push's never-overwrite rule, an unreachable store
//! failing with one line (archive-get: 126). The account key reaches pgkeep only through
//! AZURE_STORAGE_ACCOUNT_KEY; no output and no stored blob ever contains it.

use std::path::Path;
use std::time::Duration;

use pgkeep_testkit::{Azurite, TestEnv};

use crate::common;
use crate::object_stores::{never_overwrites_and_unreachable_fails, whole_story, Store, StoreSetup};

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
