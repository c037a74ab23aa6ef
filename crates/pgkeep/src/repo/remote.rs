//! What the object-store backends (s3.rs, azure.rs, gcs.rs) share: the `SCHEME://NAME/PREFIX`
//! form of their URLs, the retry policy and HTTP client options, and [`Remote`], what a
//! backend keeps beside its store for `check` and for new objects.

/// Split `SCHEME://NAME[/PREFIX]`; `valid_name` judges the bucket (container) name, described
/// by `name_rule` in the error. The prefix is returned without leading or trailing `/`.
pub(crate) fn split_url(
    url: &str,
    scheme: &str,
    what: &str,
    valid_name: impl Fn(&str) -> bool,
    name_rule: &str,
) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{what} repository is written {scheme}://NAME/PREFIX"))?;
    let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_name(name) {
        return Err(format!("'{name}' is not {what} name ({name_rule})"));
    }
    let prefix = prefix.trim_matches('/');
    let valid_prefix = prefix.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if !prefix.is_empty() && !valid_prefix {
        return Err(format!(
            "'{prefix}' is not a usable prefix (use letters, digits, '.', '_', '-' and '/' between parts)"
        ));
    }
    Ok((name.to_string(), prefix.to_string()))
}

/// `SCHEME://NAME/PREFIX`, or `SCHEME://NAME` for an empty prefix.
pub(crate) fn fmt_url(f: &mut std::fmt::Formatter<'_>, scheme: &str, name: &str, prefix: &str) -> std::fmt::Result {
    if prefix.is_empty() {
        write!(f, "{scheme}://{name}")
    } else {
        write!(f, "{scheme}://{name}/{prefix}")
    }
}

/// What an object-store backend keeps beside its store.
pub(crate) trait Remote: Send + Sync {
    /// Resolve credentials now; what supplied them (e.g. "AWS credentials from ProfileFile",
    /// "Azure account key from AZURE_STORAGE_ACCOUNT_KEY"), never their value. The error is
    /// one line.
    fn credential_source(&self, rt: &tokio::runtime::Handle) -> Result<String, String>;

    /// What to do when credentials do not resolve or are refused.
    fn credential_hint(&self) -> &'static str;

    /// Attributes every new object gets (e.g. a storage class).
    fn attributes(&self) -> object_store::Attributes {
        object_store::Attributes::new()
    }

    /// The multipart side of the store (repo/multipart.rs).
    fn multipart(&self) -> &super::multipart::MultipartTarget;

    /// How long to wait before repeating a request that `e` ended, None when it must not be
    /// repeated (see [`retry_after`]).
    fn retry_after(
        &self,
        e: &object_store::Error,
        attempt: usize,
        elapsed: std::time::Duration,
    ) -> Option<std::time::Duration>;
}

/// A [`Remote`] around an object_store credential provider whose source the backend worked
/// out from its configuration (`what`: e.g. "Azure account key from AZURE_STORAGE_ACCOUNT_KEY").
#[cfg(any(feature = "azure", feature = "gcs"))]
pub(crate) struct ProviderRemote<C> {
    pub(crate) credentials: std::sync::Arc<dyn object_store::CredentialProvider<Credential = C>>,
    pub(crate) what: String,
    pub(crate) hint: &'static str,
    pub(crate) multipart: super::multipart::MultipartTarget,
    pub(crate) retry: object_store::RetryConfig,
}

#[cfg(any(feature = "azure", feature = "gcs"))]
impl<C: Send + Sync + 'static> Remote for ProviderRemote<C> {
    fn credential_source(&self, rt: &tokio::runtime::Handle) -> Result<String, String> {
        rt.block_on(self.credentials.get_credential()).map_err(|e| super::storage::one_line(&e))?;
        Ok(self.what.clone())
    }

    fn credential_hint(&self) -> &'static str {
        self.hint
    }

    fn multipart(&self) -> &super::multipart::MultipartTarget {
        &self.multipart
    }

    fn retry_after(
        &self,
        e: &object_store::Error,
        attempt: usize,
        elapsed: std::time::Duration,
    ) -> Option<std::time::Duration> {
        retry_after(&self.retry, e, attempt, elapsed)
    }
}

/// An opened object store (keys relative to the repository's prefix) and its [`Remote`].
#[cfg(any(feature = "azure", feature = "gcs"))]
pub(crate) type Opened = (std::sync::Arc<dyn object_store::ObjectStore>, std::sync::Arc<dyn Remote>);

#[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
pub(crate) use client::{client_options, retry_after, retry_config, under_prefix};

#[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
mod client {
    use std::time::Duration;

    use std::sync::Arc;

    use object_store::client::{HttpError, HttpErrorKind};
    use object_store::prefix::PrefixStore;
    use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

    /// Keys stay relative to the prefix, so the repository format is the local one.
    pub(crate) fn under_prefix<T: ObjectStore>(store: Arc<T>, prefix: &str) -> Arc<dyn ObjectStore> {
        if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        }
    }

    /// How long to wait before repeating a request that `e` ended, None when it must not be
    /// repeated: only a connection broken or timed out after the request was sent (object_store
    /// repeats those for idempotent requests only), within `max_retries` and `retry_timeout`,
    /// with object_store's backoff settings.
    pub(crate) fn retry_after(
        retry: &RetryConfig,
        e: &object_store::Error,
        attempt: usize,
        elapsed: Duration,
    ) -> Option<Duration> {
        if attempt >= retry.max_retries || elapsed >= retry.retry_timeout || !interrupted(e) {
            return None;
        }
        let b = &retry.backoff;
        let pause = b.init_backoff.mul_f64(b.base.powi(attempt as i32));
        Some(pause.min(b.max_backoff))
    }

    fn interrupted(e: &object_store::Error) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(h) = err.downcast_ref::<HttpError>() {
                return matches!(h.kind(), HttpErrorKind::Interrupted | HttpErrorKind::Timeout);
            }
            cur = err.source();
        }
        false
    }

    /// Retries after throttling, 5xx, timeouts and connection errors: `max_retries` (default
    /// 5) with 100 ms–5 s backoff, none after `retry_timeout` seconds (default 60).
    pub(crate) fn retry_config(max_retries: Option<usize>, retry_timeout: Option<u64>) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: max_retries.unwrap_or(5),
            retry_timeout: Duration::from_secs(retry_timeout.unwrap_or(60)),
        }
    }

    /// 60 s per request, 5 s to connect; plain HTTP only for an `http://` endpoint (an
    /// emulator or a store on a private network). Installs rustls' ring provider: reqwest is
    /// built without a bundled one (see Cargo.toml).
    pub(crate) fn client_options(endpoint: Option<&str>) -> ClientOptions {
        // Err only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientOptions::new()
            .with_timeout(Duration::from_secs(60))
            .with_connect_timeout(Duration::from_secs(5))
            .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_name_and_prefix() {
        let ok = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase());
        assert_eq!(split_url("az://box/a/b/", "az", "an X", ok, "r"), Ok(("box".into(), "a/b".into())));
        assert_eq!(split_url("az://box", "az", "an X", ok, "r"), Ok(("box".into(), String::new())));
        assert!(split_url("gs://box/a", "az", "an X", ok, "r").unwrap_err().contains("az://NAME/PREFIX"));
        assert!(split_url("az://Box/a", "az", "an X", ok, "r").unwrap_err().contains("is not an X name (r)"));
        assert!(split_url("az://box/a/../b", "az", "an X", ok, "r").is_err());
        assert!(split_url("az://box/a//b", "az", "an X", ok, "r").is_err());
    }
}
