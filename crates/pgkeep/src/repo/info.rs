//! The repository's identity: which cluster it belongs to. Written by `init`, read by every
//! command; `archive-push` refuses WAL whose system identifier differs (invariant 3).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const REPO_FORMAT: u32 = 1;
/// The format of an encrypted repository: every object but `pgkeep.info` is sealed
/// (docs/repo-format.md). A pgkeep that reads only format 1 refuses it instead of failing on
/// every object.
pub const REPO_FORMAT_SEALED: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoInfo {
    /// Repository format version (docs/repo-format.md).
    pub format: u32,
    /// pg_control's system identifier, as a decimal string (u64 does not survive JSON readers
    /// that use doubles).
    pub system_identifier: String,
    pub pg_major: u32,
    pub pg_version_num: u32,
    /// Checked when read: WAL file names and LSN arithmetic divide by it.
    #[serde(deserialize_with = "super::manifest::checked_wal_segment_size")]
    pub wal_segment_size: u32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// Present exactly in encrypted repositories (format 2): the wrapped data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::seal::EncryptionInfo>,
}

impl RepoInfo {
    pub fn system_identifier_u64(&self) -> u64 {
        self.system_identifier.parse().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::RepoInfo;

    fn info_json(seg: u32) -> String {
        format!(
            r#"{{"format":1,"system_identifier":"7","pg_major":15,"pg_version_num":150018,"wal_segment_size":{seg},"created_at":"2026-12-03T00:00:00Z","created_by":"t"}}"#
        )
    }

    #[test]
    fn an_impossible_wal_segment_size_is_refused_when_read() {
        assert!(serde_json::from_str::<RepoInfo>(&info_json(16 << 20)).is_ok());
        for bad in [0, 3 << 20, 2 << 30] {
            let err = serde_json::from_str::<RepoInfo>(&info_json(bad)).unwrap_err().to_string();
            assert!(err.contains("wal_segment_size"), "{err}");
        }
    }
}
