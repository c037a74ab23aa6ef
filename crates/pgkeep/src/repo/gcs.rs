//! Google Cloud Storage repositories (`gs://BUCKET/PREFIX`): the `[gcs]` settings, the URL, and
//! (with the `gcs` cargo feature) object_store's GCS client behind [`super::Storage`].
//!
//! Credentials come from where object_store looks for them: a service account file
//! (GOOGLE_SERVICE_ACCOUNT) or key (GOOGLE_SERVICE_ACCOUNT_KEY), application default
//! credentials (GOOGLE_APPLICATION_CREDENTIALS, or gcloud's file in the home directory), else
//! the metadata server of a GCE instance. They are never in pgkeep's config file and never
//! formatted: `check` names the source only.
//!
//! Create-if-absent is `x-goog-if-generation-match: 0`; replacing a lock object only if it is
//! unchanged needs its generation (object_store's `version`), which storage.rs carries with
//! the ETag in [`super::storage::ObjectVersion`].

use std::path::PathBuf;

use serde::Deserialize;

/// The `[gcs]` table of the config file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsSettings {
    /// Another base URL than `https://storage.googleapis.com` (an emulator, a private endpoint).
    pub endpoint: Option<String>,
    /// Retries of one request after throttling, 5xx, timeouts and connection errors (default 5).
    pub max_retries: Option<usize>,
    /// Seconds after which one request is not retried any more (default 60).
    pub retry_timeout: Option<u64>,
}

/// A `gs://BUCKET/PREFIX` location with the settings that say how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsLocation {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty (the bucket's root).
    pub prefix: String,
    pub settings: GcsSettings,
    /// The config file the settings came from (restore_command passes it on).
    pub config_file: Option<PathBuf>,
}

impl GcsLocation {
    /// Parse `gs://BUCKET[/PREFIX]`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<GcsLocation, String> {
        // Google's rule: 3 to 63 of [a-z0-9_.-] (up to 222 with dots), starting and ending
        // with a letter or digit.
        let valid = |b: &str| {
            let max = if b.contains('.') { 222 } else { 63 };
            (3..=max).contains(&b.len())
                && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c))
                && b.starts_with(|c: char| c.is_ascii_alphanumeric())
                && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        let (bucket, prefix) = super::remote::split_url(
            url,
            "gs",
            "a GCS bucket",
            valid,
            "3 to 63 lowercase letters, digits, '_', '.' and '-', a letter or digit at each end",
        )?;
        Ok(GcsLocation { bucket, prefix, settings: GcsSettings::default(), config_file: None })
    }
}

impl std::fmt::Display for GcsLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::remote::fmt_url(f, "gs", &self.bucket, &self.prefix)
    }
}

/// Hints for failed requests (storage.rs picks them by the location's scheme).
pub(crate) const REACH_HINT: &str = "check that Cloud Storage is reachable (the [gcs] endpoint, the network) and that the bucket exists; requests were retried";
pub(crate) const AUTH_HINT: &str = "give this OS user Google credentials (GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT naming a service account file, or the instance's service account) with storage.objects.create, get, delete and list on the bucket; `pgkeep check` names the credential source";

#[cfg(feature = "gcs")]
pub(crate) use client::open;

#[cfg(feature = "gcs")]
mod client {
    use std::path::PathBuf;
    use std::sync::Arc;

    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};

    use super::GcsLocation;
    use crate::repo::multipart::MultipartTarget;
    use crate::repo::remote;
    use crate::repo::storage::{one_line, StorageError};

    /// Which credential object_store will use, in its own order of preference.
    fn source(b: &GoogleCloudStorageBuilder) -> &'static str {
        let set = |k: GoogleConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
        let gcloud_file = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config/gcloud/application_default_credentials.json"))
            .is_some_and(|p| p.exists());
        if set(GoogleConfigKey::ServiceAccount) {
            "service account file (GOOGLE_SERVICE_ACCOUNT)"
        } else if set(GoogleConfigKey::ServiceAccountKey) {
            "service account key (GOOGLE_SERVICE_ACCOUNT_KEY)"
        } else if set(GoogleConfigKey::ApplicationCredentials) {
            "application default credentials (GOOGLE_APPLICATION_CREDENTIALS)"
        } else if gcloud_file {
            "application default credentials (gcloud auth application-default login)"
        } else {
            "instance metadata server"
        }
    }

    /// The store for `loc`, its keys relative to the prefix.
    pub(crate) fn open(loc: &GcsLocation) -> Result<remote::Opened, StorageError> {
        let s = &loc.settings;
        let retry = remote::retry_config(s.max_retries, s.retry_timeout);
        let mut b = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&loc.bucket)
            .with_retry(retry.clone())
            .with_client_options(remote::client_options(s.endpoint.as_deref()));
        if let Some(ep) = &s.endpoint {
            b = b.with_base_url(ep.trim_end_matches('/'));
        }
        let source = source(&b);
        let store = b.build().map_err(|e| StorageError::Config {
            location: loc.to_string(),
            detail: one_line(&e),
            hint: "check the [gcs] settings in the config file and the GOOGLE_* credential environment".into(),
        })?;
        let store = Arc::new(store);
        let creds = remote::ProviderRemote {
            credentials: store.credentials().clone(),
            what: format!("Google {source}"),
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
        let l = GcsLocation::parse("gs://my_bucket.example/db1/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my_bucket.example", "db1"));
        assert_eq!(l.to_string(), "gs://my_bucket.example/db1");
        for bad in ["gs://Bucket/x", "gs://ab/x", "gs://_abc/x", "gs://abc-/x", "gs://abc/a//b", "s3://abc/x"] {
            assert!(GcsLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
