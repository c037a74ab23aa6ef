//! One `Config`: file < environment < flags. Clap already layers flags over environment
//! variables; this module adds the TOML file underneath and applies defaults.

pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::GlobalArgs;
use crate::repo::RepoLocation;
use snapshot::{EbsConfig, HooksConfig, SnapshotSettings, VolumeConfig};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgkeep/pgkeep.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("no repository given; hint: pass --repo DIR, set PGKEEP_REPO, or set `repo` in the config file")]
    NoRepo,
    #[error("no data directory given; hint: pass --pgdata DIR, set PGDATA, or set `pgdata` in the config file")]
    NoPgdata,
    #[error("{0}")]
    Invalid(String),
}

/// The TOML file's shape. Unknown keys are errors: a typo must not silently disable a setting.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub repo: Option<String>,
    pub pg: Option<String>,
    pub pgdata: Option<PathBuf>,
    pub jobs: Option<usize>,
    pub compress_level: Option<i32>,
    pub archive_timeout: Option<u64>,
    pub max_rate: Option<String>,
    /// Key file of an encrypted repository (32 random bytes, mode 0600 or 0400).
    pub encryption_key_file: Option<PathBuf>,
    /// Server binaries of the cluster's major for servers pgkeep starts (`--pg-bin`).
    pub pg_bin_dir: Option<PathBuf>,
    /// Snapshot volumes (`[[volume]]`); when present, `pgkeep backup` takes snapshot backups.
    #[serde(default)]
    pub volume: Vec<VolumeConfig>,
    /// Snapshot backup hooks (`[hooks]`).
    pub hooks: Option<HooksConfig>,
    /// AWS EBS settings (`[ebs]`).
    pub ebs: Option<EbsConfig>,
    /// Settings shared by the snapshot drivers (`[snapshot]`).
    pub snapshot: Option<SnapshotSettings>,
    /// How to reach an `s3://` repository (`[s3]`).
    pub s3: Option<crate::repo::s3::S3Settings>,
    /// How to reach an `az://` repository (`[azure]`).
    pub azure: Option<crate::repo::azure::AzureSettings>,
    /// How to reach a `gs://` repository (`[gcs]`).
    pub gcs: Option<crate::repo::gcs::GcsSettings>,
    /// Retention policy (`[retention]`); without it nothing is expired automatically.
    pub retention: Option<crate::retention::RetentionConfig>,
    /// `pgkeep backup` settings (`[backup]`).
    pub backup: Option<crate::retention::BackupSettings>,
    /// Parallel WAL transport (`archive::Transport` reads these four).
    /// archive-push also pushes the other `.ready` segments, in parallel, recording them in the spool.
    pub archive_async: Option<bool>,
    /// Where archive-push records and archive-get prefetches (default: `pgkeep-spool` beside PGDATA).
    pub spool_dir: Option<PathBuf>,
    /// Parallel pushes of one archive-push call with `archive_async` (default 4).
    pub archive_push_jobs: Option<usize>,
    /// Segments archive-get fetches ahead into the spool (default 8; 0: no prefetch).
    pub archive_get_queue: Option<usize>,
    /// Prometheus textfile refreshed after backup, verify, expire, archive-push and rpo
    /// (`report::metrics`).
    pub metrics_textfile: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub repo: Option<String>,
    pub pg: Option<String>,
    pub pgdata: Option<PathBuf>,
    pub jobs: usize,
    pub compress_level: i32,
    pub archive_timeout: Duration,
    pub max_rate: Option<u64>,
    pub encryption_key_file: Option<PathBuf>,
    pub pg_bin_dir: Option<PathBuf>,
    pub file: FileConfig,
    pub config_path: Option<PathBuf>,
}

impl Config {
    /// Build the configuration from the command line (which already folded in the environment)
    /// and the config file.
    pub fn load(g: &GlobalArgs) -> Result<Config, ConfigError> {
        let (file, config_path) = match &g.config {
            Some(p) => (read_file(p)?, Some(p.clone())),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                (read_file(Path::new(DEFAULT_CONFIG_PATH))?, Some(PathBuf::from(DEFAULT_CONFIG_PATH)))
            }
            None => (FileConfig::default(), None),
        };
        let jobs = file.jobs.unwrap_or_else(default_jobs).max(1);
        let max_rate = match &file.max_rate {
            Some(s) => Some(parse_rate(s)?),
            None => None,
        };
        Ok(Config {
            repo: g.repo.clone().or_else(|| file.repo.clone()),
            pg: g.pg.clone().or_else(|| file.pg.clone()),
            pgdata: g.pgdata.clone().or_else(|| file.pgdata.clone()),
            jobs,
            compress_level: file.compress_level.unwrap_or(1),
            archive_timeout: Duration::from_secs(file.archive_timeout.unwrap_or(60)),
            max_rate,
            encryption_key_file: g.encryption_key_file.clone().or_else(|| file.encryption_key_file.clone()),
            pg_bin_dir: g.pg_bin.clone().or_else(|| file.pg_bin_dir.clone()),
            file,
            config_path,
        })
    }

    pub fn repo_location(&self) -> Result<RepoLocation, crate::Error> {
        let r = self.repo.as_deref().ok_or(ConfigError::NoRepo)?;
        let settings = crate::repo::StoreSettings {
            s3: self.file.s3.as_ref(),
            azure: self.file.azure.as_ref(),
            gcs: self.file.gcs.as_ref(),
        };
        Ok(RepoLocation::parse_with(r, settings, self.config_path.as_deref())?)
    }

    pub fn require_pgdata(&self) -> Result<&Path, ConfigError> {
        self.pgdata.as_deref().ok_or(ConfigError::NoPgdata)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File { path: path.display().to_string(), detail: e.to_string() })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        detail: e.to_string().replace('\n', " ").trim().to_string(),
    })
}

pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// "50M" → 52428800 bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1024u64),
        Some('m' | 'M') => (&t[..t.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| {
        ConfigError::Invalid(format!("invalid rate {s:?}; hint: use bytes per second with K, M or G, e.g. 50M"))
    })?;
    if n <= 0.0 {
        return Err(ConfigError::Invalid(format!("invalid rate {s:?}: must be positive")));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1024").unwrap(), 1024);
        assert_eq!(parse_rate("2K").unwrap(), 2048);
        assert_eq!(parse_rate("1.5M").unwrap(), 1572864);
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("repo = '/x'\nrepoo = '/y'").unwrap_err();
        assert!(e.to_string().contains("repoo"));
    }
}
