//! Azure Blob Storage repositories (`az://CONTAINER/PREFIX`): the `[azure]` settings, the URL,
//! and (with the `azure` cargo feature) object_store's Azure client behind [`super::Storage`].
//!
//! Credentials come from where object_store looks for them (AZURE_STORAGE_ACCOUNT_KEY, a SAS
//! token, a bearer token, a service principal's client secret, workload identity, the Azure
//! CLI, managed identity), never from pgkeep's config file, and are never formatted: `check`
//! names the source only.

use std::path::PathBuf;

use serde::Deserialize;

/// The `[azure]` table of the config file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    /// The storage account. Default: AZURE_STORAGE_ACCOUNT_NAME (with `use_emulator`:
    /// Azurite's `devstoreaccount1`).
    pub account: Option<String>,
    /// The account's blob endpoint for sovereign clouds and private endpoints
    /// (`https://ACCOUNT.blob.core.usgovcloudapi.net`). With `use_emulator`, the emulator's
    /// address (`http://127.0.0.1:10000`, the default; also AZURITE_BLOB_STORAGE_URL).
    pub endpoint: Option<String>,
    /// Azurite (or another emulator): path-style URLs `ENDPOINT/ACCOUNT/CONTAINER`, and its
    /// documented development key unless AZURE_STORAGE_ACCOUNT_KEY or a SAS token is given.
    pub use_emulator: Option<bool>,
    /// Retries of one request after throttling, 5xx, timeouts and connection errors (default 5).
    pub max_retries: Option<usize>,
    /// Seconds after which one request is not retried any more (default 60).
    pub retry_timeout: Option<u64>,
}

/// An `az://CONTAINER/PREFIX` location with the settings that say how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureLocation {
    pub container: String,
    /// Without leading or trailing `/`; may be empty (the container's root).
    pub prefix: String,
    pub settings: AzureSettings,
    /// The config file the settings came from (restore_command passes it on).
    pub config_file: Option<PathBuf>,
}

impl AzureLocation {
    /// Parse `az://CONTAINER[/PREFIX]`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<AzureLocation, String> {
        // Azure's rule: 3 to 63 of [a-z0-9-], starting and ending with a letter or digit, no "--".
        let valid = |c: &str| {
            (3..=63).contains(&c.len())
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
                && !c.contains("--")
        };
        let (container, prefix) = super::remote::split_url(
            url,
            "az",
            "an Azure container",
            valid,
            "3 to 63 lowercase letters, digits and single '-' inside",
        )?;
        Ok(AzureLocation { container, prefix, settings: AzureSettings::default(), config_file: None })
    }
}

impl std::fmt::Display for AzureLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::remote::fmt_url(f, "az", &self.container, &self.prefix)
    }
}

/// Hints for failed requests (storage.rs picks them by the location's scheme).
pub(crate) const REACH_HINT: &str = "check that the storage account is reachable (the [azure] endpoint, the network) and that the container exists; requests were retried";
pub(crate) const AUTH_HINT: &str = "give this OS user Azure credentials (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, a service principal with AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID, workload or managed identity) allowed to read, write, delete and list blobs; `pgkeep check` names the credential source";

#[cfg(feature = "azure")]
pub(crate) use client::open;

#[cfg(feature = "azure")]
mod client {
    use std::sync::Arc;

    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

    use super::AzureLocation;
    use crate::repo::multipart::MultipartTarget;
    use crate::repo::remote;
    use crate::repo::storage::{one_line, StorageError};

    /// Azurite's documented development account and key (public, the same in every install).
    const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
    const EMULATOR_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const EMULATOR_URL: &str = "http://127.0.0.1:10000";

    fn is_set(b: &MicrosoftAzureBuilder, key: AzureConfigKey) -> bool {
        b.get_config_value(&key).is_some_and(|v| !v.is_empty())
    }

    fn is_true(b: &MicrosoftAzureBuilder, key: AzureConfigKey) -> bool {
        b.get_config_value(&key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
    }

    /// Which credential object_store will use, in its own order of preference.
    fn source(b: &MicrosoftAzureBuilder) -> &'static str {
        use AzureConfigKey::*;
        if is_set(b, Token) {
            "bearer token from AZURE_STORAGE_TOKEN"
        } else if is_set(b, AccessKey) {
            "account key from AZURE_STORAGE_ACCOUNT_KEY"
        } else if is_set(b, ClientId) && is_set(b, AuthorityId) && is_set(b, FederatedTokenFile) {
            "workload identity (AZURE_FEDERATED_TOKEN_FILE)"
        } else if is_set(b, ClientId) && is_set(b, ClientSecret) && is_set(b, AuthorityId) {
            "service principal client secret (AZURE_CLIENT_SECRET)"
        } else if is_set(b, SasKey) {
            "SAS token from AZURE_STORAGE_SAS_TOKEN"
        } else if is_true(b, UseAzureCli) {
            "Azure CLI login"
        } else {
            "managed identity"
        }
    }

    /// The store for `loc`, its keys relative to the prefix.
    pub(crate) fn open(loc: &AzureLocation) -> Result<remote::Opened, StorageError> {
        let s = &loc.settings;
        let bad = |detail: String| StorageError::Config {
            location: loc.to_string(),
            detail,
            hint: "check the [azure] settings in the config file and the AZURE_* environment".into(),
        };
        let retry = remote::retry_config(s.max_retries, s.retry_timeout);
        let mut b = MicrosoftAzureBuilder::from_env().with_container_name(&loc.container).with_retry(retry.clone());
        if let Some(account) = &s.account {
            b = b.with_account(account);
        }
        let mut dev_key = false;
        let emulator = s.use_emulator.unwrap_or_else(|| is_true(&b, AzureConfigKey::UseEmulator));
        let endpoint = if emulator {
            // object_store's own emulator mode ignores the endpoint; the same path-style URLs
            // through a configured endpoint reach an emulator anywhere.
            let account = b.get_config_value(&AzureConfigKey::AccountName).unwrap_or_else(|| EMULATOR_ACCOUNT.into());
            let base = s
                .endpoint
                .clone()
                .or_else(|| std::env::var("AZURITE_BLOB_STORAGE_URL").ok().filter(|v| !v.is_empty()))
                .unwrap_or_else(|| EMULATOR_URL.into());
            use AzureConfigKey::*;
            if ![AccessKey, SasKey, Token].into_iter().any(|k| is_set(&b, k)) {
                b = b.with_access_key(EMULATOR_KEY);
                dev_key = true;
            }
            b = b.with_account(&account).with_use_emulator(false);
            Some(format!("{}/{account}", base.trim_end_matches('/')))
        } else {
            s.endpoint.clone().or_else(|| b.get_config_value(&AzureConfigKey::Endpoint))
        };
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep.clone());
        }
        if b.get_config_value(&AzureConfigKey::AccountName).is_none() {
            return Err(bad(
                "no storage account: set [azure] account or AZURE_STORAGE_ACCOUNT_NAME (or use_emulator = true)".into(),
            ));
        }
        let source = if dev_key { "emulator development key" } else { source(&b) };
        let store = b
            .with_client_options(remote::client_options(endpoint.as_deref()))
            .build()
            .map_err(|e| bad(one_line(&e)))?;
        let store = Arc::new(store);
        let creds = remote::ProviderRemote {
            credentials: store.credentials().clone(),
            what: format!("Azure {source}"),
            hint: super::AUTH_HINT,
            multipart: MultipartTarget::new(store.clone(), &loc.prefix),
            retry,
        };
        Ok((remote::under_prefix(store, &loc.prefix), Arc::new(creds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let l = AzureLocation::parse("az://backups/db1/main/").unwrap();
        assert_eq!((l.container.as_str(), l.prefix.as_str()), ("backups", "db1/main"));
        assert_eq!(l.to_string(), "az://backups/db1/main");
        assert_eq!(AzureLocation::parse("az://backups").unwrap().to_string(), "az://backups");
        for bad in ["az://Backups/x", "az://b/x", "az://a--b/x", "az://-ab/x", "az://a.b/x", "az://abc/a/../b"] {
            assert!(AzureLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
