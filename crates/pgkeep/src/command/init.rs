//! `pgkeep init`: create the repository and record which cluster it belongs to.

use std::path::Path;

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;

use crate::pg::{ConnParams, ServerInfo};
use crate::repo::info::{RepoInfo, REPO_FORMAT, REPO_FORMAT_SEALED};
use crate::repo::seal::DataKey;
use crate::repo::{
    frame, layout, read_info, Compression, KeyError, KeyFile, PutOutcome, RepoError, RepoLocation, Storage,
};
use crate::{fsutil, Error};

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub repo: String,
    pub system_identifier: String,
    pub pg_major: u32,
    pub wal_segment_size: u32,
    /// false when the repository was already initialized for this cluster.
    pub created: bool,
    pub owner: Option<String>,
    /// Objects are sealed under a data key wrapped by the key file.
    pub encrypted: bool,
}

/// Facts about the cluster, from the server and/or its data directory.
#[derive(Clone, Copy)]
struct ClusterFacts {
    system_identifier: u64,
    pg_major: u32,
    pg_version_num: u32,
    wal_segment_size: u32,
}

pub fn init(
    location: &RepoLocation,
    conn: Option<&ConnParams>,
    pgdata: Option<&Path>,
    key: Option<&Path>,
    rt: tokio::runtime::Handle,
) -> crate::Result<InitReport> {
    // A bad key file is refused before anything is created.
    let key_file = key.map(KeyFile::load).transpose()?;
    let from_server = match conn {
        Some(c) => match rt.block_on(async {
            let client = c.connect().await?;
            ServerInfo::read(&client).await
        }) {
            Ok(s) => Some(s),
            Err(e) if pgdata.is_none() => return Err(e.into()),
            Err(_) => None,
        },
        None => None,
    };
    let from_pgdata = match pgdata {
        Some(p) => Some(read_pgdata(p)?),
        None => None,
    };
    let facts = match (&from_server, &from_pgdata) {
        (Some(s), Some(d)) => {
            if s.system_identifier != d.system_identifier {
                return Err(Error::other(format!(
                    "{} belongs to system identifier {} but the server you connected to is {}; hint: point --pgdata and the connection at the same cluster",
                    pgdata.map(|p| p.display().to_string()).unwrap_or_default(),
                    d.system_identifier,
                    s.system_identifier
                )));
            }
            ClusterFacts {
                system_identifier: s.system_identifier,
                pg_major: s.major,
                pg_version_num: s.version_num,
                wal_segment_size: s.wal_segment_size,
            }
        }
        (Some(s), None) => ClusterFacts {
            system_identifier: s.system_identifier,
            pg_major: s.major,
            pg_version_num: s.version_num,
            wal_segment_size: s.wal_segment_size,
        },
        (None, Some(d)) => ClusterFacts { ..*d },
        (None, None) => return Err(crate::config::ConfigError::NoPgdata.into()),
    };

    let storage = Storage::open(location, rt, true)?;
    let mut owner = None;
    // Root initializing for a cluster owned by someone else: hand the repository to that
    // user, because archive_command runs as the server's OS user and must write here.
    if let (Some(root), Some(p)) = (storage.local_root(), pgdata) {
        if fsutil::running_as_root() {
            if let Some(u) = crate::pg::OsUser::owner_of(p) {
                if u.uid != 0 {
                    fsutil::chown_tree(root, u.uid, u.gid)
                        .map_err(|e| Error::other(format!("cannot give {} to {}: {e}", root.display(), u.name)))?;
                    owner = Some(u.name);
                }
            }
        }
    }
    // Reopen so the storage sees the (possibly new) owner.
    let storage = Storage::open(location, storage.runtime().clone(), false)?;
    let system_identifier = facts.system_identifier.to_string();
    let encryption = match &key_file {
        Some(kf) => Some(DataKey::generate()?.wrap(kf, &system_identifier)?),
        None => None,
    };
    let info = RepoInfo {
        format: if encryption.is_some() { REPO_FORMAT_SEALED } else { REPO_FORMAT },
        system_identifier,
        pg_major: facts.pg_major,
        pg_version_num: facts.pg_version_num,
        wal_segment_size: facts.wal_segment_size,
        created_at: Utc::now(),
        created_by: format!("pgkeep {}", env!("CARGO_PKG_VERSION")),
        encryption,
    };
    let report = |created| InitReport {
        repo: location.to_string(),
        system_identifier: info.system_identifier.clone(),
        pg_major: info.pg_major,
        wal_segment_size: info.wal_segment_size,
        created,
        owner: owner.clone(),
        encrypted: info.encryption.is_some(),
    };
    if let Some(existing) = read_info(&storage)? {
        return same_repo(location, &existing, &info, key_file.as_ref()).map(|_| report(false));
    }
    // An object store that ignores If-None-Match could let a push overwrite archived WAL:
    // refuse it before the repository exists.
    storage.probe_conditional_create()?;
    let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::other(e.to_string()))?;
    let (framed, _) = frame::encode(&json, Compression::None);
    match storage.put_new(layout::INFO_KEY, Bytes::from(framed))? {
        PutOutcome::Created => Ok(report(true)),
        PutOutcome::AlreadyExists => {
            let existing = read_info(&storage)?.ok_or_else(|| Error::other("repository info vanished during init"))?;
            same_repo(location, &existing, &info, key_file.as_ref()).map(|_| report(false))
        }
    }
}

/// `init` of an existing repository succeeds when it is this cluster's and the key (or its
/// absence) matches how it was initialized.
fn same_repo(location: &RepoLocation, existing: &RepoInfo, new: &RepoInfo, key: Option<&KeyFile>) -> crate::Result<()> {
    same_cluster(location, existing, new)?;
    let loc = location.to_string();
    match (&existing.encryption, key) {
        (Some(enc), Some(kf)) => {
            DataKey::unwrap(enc, kf, &existing.system_identifier, &loc)?;
        }
        (Some(_), None) => return Err(KeyError::Required { location: loc }.into()),
        (None, Some(kf)) => {
            return Err(KeyError::NotEncrypted { location: loc, file: kf.path().display().to_string() }.into())
        }
        (None, None) => {}
    }
    Ok(())
}

fn same_cluster(location: &RepoLocation, existing: &RepoInfo, new: &RepoInfo) -> crate::Result<()> {
    if existing.system_identifier != new.system_identifier {
        return Err(RepoError::ForeignCluster {
            location: location.to_string(),
            repo: existing.system_identifier.clone(),
            cluster: new.system_identifier.clone(),
        }
        .into());
    }
    if existing.pg_major != new.pg_major {
        return Err(RepoError::MajorMismatch {
            location: location.to_string(),
            repo: existing.pg_major,
            cluster: new.pg_major,
        }
        .into());
    }
    Ok(())
}

fn read_pgdata(pgdata: &Path) -> crate::Result<ClusterFacts> {
    let control_path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&control_path).map_err(|e| {
        Error::other(format!("cannot read {}: {e}; hint: check --pgdata / PGDATA", control_path.display()))
    })?;
    let control =
        pgkeep_wal::parse_pg_control(&bytes).map_err(|e| Error::other(format!("{}: {e}", control_path.display())))?;
    let version = std::fs::read_to_string(pgdata.join("PG_VERSION")).unwrap_or_default();
    let pg_major: u32 = version.trim().parse().unwrap_or(0);
    Ok(ClusterFacts {
        system_identifier: control.system_identifier,
        pg_major,
        pg_version_num: pg_major * 10000,
        wal_segment_size: control.xlog_seg_size,
    })
}
