//! S3 and S3-compatible repositories (`s3://BUCKET/PREFIX`): the `[s3]` settings, the URL, and
//! (with the `s3` cargo feature) the object_store client behind [`super::Storage`].
//!
//! Credentials come from aws-config's standard chain (environment, shared config and
//! credentials files with AWS_PROFILE, SSO, web identity, ECS, EC2 instance metadata), handed
//! to object_store through its `CredentialProvider` interface, so an instance role just works.
//! Nothing here ever formats a secret: errors carry the chain's own messages, and the source
//! reported by `check` is the provider's name.

use std::path::PathBuf;

use serde::Deserialize;

/// The `[s3]` table of the config file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// An S3-compatible store (MinIO, Ceph RGW, Garage): `https://host:port`. Default: AWS,
    /// or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL from the environment.
    pub endpoint: Option<String>,
    /// Default: the AWS chain's region (AWS_REGION, the profile, instance metadata), else
    /// us-east-1.
    pub region: Option<String>,
    /// `https://endpoint/BUCKET/key` instead of `https://BUCKET.endpoint/key`. Default: false
    /// for AWS, true for a custom endpoint (what S3-compatible stores expect).
    pub force_path_style: Option<bool>,
    /// PEM file of a private CA (an on-premises store), trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// x-amz-storage-class of every stored object (e.g. STANDARD_IA); default: the bucket's.
    pub storage_class: Option<String>,
    /// Retries of one request after throttling, 5xx, timeouts and connection errors (default 5).
    pub max_retries: Option<usize>,
    /// Seconds after which one request is not retried any more (default 60).
    pub retry_timeout: Option<u64>,
}

/// An `s3://BUCKET/PREFIX` location with the settings that say how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty (the bucket's root).
    pub prefix: String,
    pub settings: S3Settings,
    /// The config file the settings came from: restore_command passes it on, so the restored
    /// server's archive-get reaches the same store.
    pub config_file: Option<PathBuf>,
}

impl S3Location {
    /// Parse `s3://BUCKET[/PREFIX]`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<S3Location, String> {
        let valid_bucket = |b: &str| {
            (3..=63).contains(&b.len())
                && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        };
        let (bucket, prefix) = super::remote::split_url(
            url,
            "s3",
            "an S3 bucket",
            valid_bucket,
            "3 to 63 lowercase letters, digits, '.' and '-'",
        )?;
        Ok(S3Location { bucket, prefix, settings: S3Settings::default(), config_file: None })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::remote::fmt_url(f, "s3", &self.bucket, &self.prefix)
    }
}

/// Whether requests to `endpoint` (None: AWS, always HTTPS) hash their payload into the SigV4
/// signature. Over TLS they do not (UNSIGNED-PAYLOAD, as AWS SDKs do over HTTPS): TLS already
/// authenticates every byte, every frame carries its own checksums, and SHA-256 would be a
/// second full pass over all data sent. Plain HTTP (an emulator, a private network) signs it.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn signs_payload(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|e| e.starts_with("http://"))
}

#[cfg(feature = "s3")]
pub(crate) use client::open;

#[cfg(feature = "s3")]
mod client {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
    use object_store::aws::{AmazonS3Builder, AwsCredential};
    use object_store::{Attribute, Attributes, Certificate, CredentialProvider, ObjectStore, RetryConfig};
    use tokio::runtime::Handle;

    use super::S3Location;
    use crate::repo::multipart::MultipartTarget;
    use crate::repo::remote;
    use crate::repo::storage::StorageError;

    /// What the S3 backend keeps beside the store: the credential chain (for `check`), the
    /// attributes every stored object gets, the multipart side and the retry limits.
    #[derive(Debug)]
    pub(crate) struct Remote {
        chain: Arc<AwsChain>,
        pub(crate) attributes: Attributes,
        pub(crate) multipart: MultipartTarget,
        retry: RetryConfig,
    }

    impl crate::repo::remote::Remote for Remote {
        /// Names the provider that supplied them (e.g. "EnvironmentVariable", "ProfileFile",
        /// "IMDSv2").
        fn credential_source(&self, rt: &Handle) -> Result<String, String> {
            rt.block_on(self.chain.get_credential()).map_err(|e| super::super::storage::one_line(&e))?;
            let name = self.chain.source.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
            Ok(format!("AWS credentials from {name}"))
        }

        fn credential_hint(&self) -> &'static str {
            "give this OS user (and the server's) AWS credentials: an instance role, AWS_PROFILE with ~/.aws/credentials, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        }

        fn attributes(&self) -> Attributes {
            self.attributes.clone()
        }

        fn multipart(&self) -> &MultipartTarget {
            &self.multipart
        }

        fn retry_after(&self, e: &object_store::Error, attempt: usize, elapsed: Duration) -> Option<Duration> {
            remote::retry_after(&self.retry, e, attempt, elapsed)
        }
    }

    fn bad(loc: &S3Location, detail: String, hint: &str) -> StorageError {
        StorageError::Config { location: loc.to_string(), detail, hint: hint.into() }
    }

    /// The store for `loc`, its keys relative to the prefix.
    pub(crate) fn open(loc: &S3Location, rt: &Handle) -> Result<(Arc<dyn ObjectStore>, Remote), StorageError> {
        let s = &loc.settings;
        let sdk = rt.block_on(load_aws_config(s.region.as_deref()));
        let region =
            s.region.clone().or_else(|| sdk.region().map(|r| r.to_string())).unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = s
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok().filter(|v| !v.is_empty()))
            .or_else(|| sdk.endpoint_url().map(str::to_string));
        let mut options = remote::client_options(endpoint.as_deref());
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                bad(loc, format!("cannot read ca_file {}: {e}", ca.display()), "fix [s3] ca_file in the config file")
            })?;
            let unusable = |detail: String| {
                bad(
                    loc,
                    format!("ca_file {} holds no usable PEM certificate: {detail}", ca.display()),
                    "[s3] ca_file must be a PEM file of the CA that signed the store's certificate",
                )
            };
            let certs = Certificate::from_pem_bundle(&pem).map_err(|e| unusable(e.to_string()))?;
            // A file without a single PEM block parses as an empty bundle: refuse it here, or
            // every request would fail later on an untrusted certificate.
            if certs.is_empty() {
                return Err(unusable("no BEGIN CERTIFICATE block".to_string()));
            }
            for c in certs {
                options = options.with_root_certificate(c);
            }
        }
        let retry = remote::retry_config(s.max_retries, s.retry_timeout);
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&loc.bucket)
            .with_region(&region)
            .with_retry(retry.clone())
            .with_unsigned_payload(!super::signs_payload(endpoint.as_deref()));
        match endpoint {
            Some(ep) => {
                if s.force_path_style == Some(false) {
                    // object_store takes a virtual-hosted endpoint with the bucket in it.
                    let (scheme, host) = ep.split_once("://").unwrap_or(("https", ep.as_str()));
                    b = b
                        .with_endpoint(format!("{scheme}://{}.{host}", loc.bucket))
                        .with_virtual_hosted_style_request(true);
                } else {
                    b = b.with_endpoint(ep);
                }
            }
            None => b = b.with_virtual_hosted_style_request(!s.force_path_style.unwrap_or(false)),
        }
        let chain = Arc::new(AwsChain {
            provider: sdk.credentials_provider(),
            cached: tokio::sync::Mutex::new(None),
            source: std::sync::Mutex::new(None),
        });
        let store =
            b.with_client_options(options).with_credentials(chain.clone()).build().map_err(|e| {
                bad(loc, super::super::storage::one_line(&e), "check the [s3] settings in the config file")
            })?;
        let store = Arc::new(store);
        let multipart = MultipartTarget::new(store.clone(), &loc.prefix);
        let store = remote::under_prefix(store, &loc.prefix);
        let mut attributes = Attributes::new();
        if let Some(class) = &s.storage_class {
            attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        Ok((store, Remote { chain, attributes, multipart, retry }))
    }

    async fn load_aws_config(region: Option<&str>) -> aws_config::SdkConfig {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let https =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https);
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        loader.load().await
    }

    /// aws-config's credential chain as an object_store credential provider, cached until
    /// five minutes before the credentials expire (object_store asks for every request; IMDS
    /// and STS must not be asked that often).
    struct AwsChain {
        provider: Option<SharedCredentialsProvider>,
        cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
        source: std::sync::Mutex<Option<String>>,
    }

    /// Never shows the credentials (object_store requires Debug of a provider).
    impl std::fmt::Debug for AwsChain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("AwsChain")
        }
    }

    const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

    #[async_trait::async_trait]
    impl CredentialProvider for AwsChain {
        type Credential = AwsCredential;

        async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
            let mut cached = self.cached.lock().await;
            if let Some((c, expiry)) = &*cached {
                if expiry.is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE_EXPIRY) {
                    return Ok(c.clone());
                }
            }
            // Unauthenticated: the storage layer then hints at credentials, not the network.
            let no_creds = |detail: String| object_store::Error::Unauthenticated {
                path: "(any)".into(),
                source: format!("no AWS credentials ({detail})").into(),
            };
            let provider = self.provider.as_ref().ok_or_else(|| no_creds("no credential chain".into()))?;
            let creds =
                provider.provide_credentials().await.map_err(|e| no_creds(super::super::storage::one_line(&e)))?;
            let credential = Arc::new(AwsCredential {
                key_id: creds.access_key_id().to_string(),
                secret_key: creds.secret_access_key().to_string(),
                token: creds.session_token().map(str::to_string),
            });
            *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(provider_name(&creds));
            *cached = Some((credential.clone(), creds.expiry()));
            Ok(credential)
        }
    }

    /// aws-credential-types has no accessor for the provider's name; its Debug output (which
    /// redacts the secret) starts with it: `Credentials { provider_name: "Environment", ..`.
    fn provider_name(c: &aws_credential_types::Credentials) -> String {
        let dbg = format!("{c:?}");
        dbg.split("provider_name: \"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("unknown").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let l = S3Location::parse("s3://my-bucket/db1/main/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", "db1/main"));
        assert_eq!(l.to_string(), "s3://my-bucket/db1/main");
        assert_eq!(S3Location::parse("s3://my-bucket").unwrap().to_string(), "s3://my-bucket");
        assert!(S3Location::parse("s3://My_Bucket/x").is_err());
        assert!(S3Location::parse("s3://bucket/a/../b").is_err());
        assert!(S3Location::parse("s3://bucket/a//b").is_err());
    }

    #[test]
    fn payload_is_signed_only_without_tls() {
        assert!(signs_payload(Some("http://127.0.0.1:9000")));
        assert!(!signs_payload(Some("https://minio.internal:9000")));
        assert!(!signs_payload(None), "AWS is reached over HTTPS");
    }
}
