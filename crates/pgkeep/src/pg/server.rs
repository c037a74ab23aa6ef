//! What pgkeep needs to know about a running server, read in one round trip.

use std::collections::HashMap;

use super::version::{major_of, MIN_SUPPORTED_MAJOR};
use super::{query_err, PgClient, PgError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    pub version_num: u32,
    pub major: u32,
    pub system_identifier: u64,
    /// None when the role may not read it (needs pg_read_all_settings).
    pub data_directory: Option<String>,
    pub wal_segment_size: u32,
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: Option<String>,
    pub archive_library: Option<String>,
    pub archive_timeout_seconds: u64,
    pub data_checksums: bool,
    pub in_recovery: bool,
    pub timeline: u32,
}

const SETTINGS: &[&str] = &[
    "server_version_num",
    "data_directory",
    "wal_segment_size",
    "wal_level",
    "archive_mode",
    "archive_command",
    "archive_library",
    "archive_timeout",
    "data_checksums",
];

impl ServerInfo {
    pub async fn read(c: &PgClient) -> Result<ServerInfo, PgError> {
        let rows = c
            .client
            .query("SELECT name, setting FROM pg_settings WHERE name = ANY($1)", &[&SETTINGS])
            .await
            .map_err(|e| query_err("read server settings", &e))?;
        let mut s: HashMap<String, String> = HashMap::new();
        for r in rows {
            s.insert(r.get(0), r.get(1));
        }
        let get = |k: &str| s.get(k).cloned();
        let version_num: u32 = get("server_version_num").and_then(|v| v.parse().ok()).unwrap_or(0);
        let major = major_of(version_num);
        if major < MIN_SUPPORTED_MAJOR {
            return Err(PgError::Unsupported { version: version_num });
        }
        let row = c
            .client
            .query_one(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text, pg_is_in_recovery(), \
                 (SELECT timeline_id FROM pg_control_checkpoint())",
                &[],
            )
            .await
            .map_err(|e| query_err("read pg_control_system() (needs superuser or EXECUTE on it)", &e))?;
        let sysid: String = row.get(0);
        let in_recovery: bool = row.get(1);
        let timeline: i32 = row.get(2);
        let timeline = if in_recovery {
            timeline as u32
        } else {
            // pg_control_checkpoint lags a promotion until the next checkpoint; ask the WAL position.
            let r = c
                .client
                .query_one("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int", &[])
                .await
                .map_err(|e| query_err("read current timeline", &e))?;
            r.get::<_, i32>(0) as u32
        };
        Ok(ServerInfo {
            version_num,
            major,
            system_identifier: sysid.parse().unwrap_or(0),
            data_directory: get("data_directory"),
            wal_segment_size: get("wal_segment_size").and_then(|v| v.parse().ok()).unwrap_or(16 * 1024 * 1024),
            wal_level: get("wal_level").unwrap_or_default(),
            archive_mode: get("archive_mode").unwrap_or_default(),
            archive_command: get("archive_command"),
            archive_library: get("archive_library").filter(|s| !s.is_empty()),
            archive_timeout_seconds: get("archive_timeout").and_then(|v| v.parse().ok()).unwrap_or(0),
            data_checksums: get("data_checksums").map(|v| v == "on").unwrap_or(false),
            in_recovery,
            timeline,
        })
    }

    /// Tablespaces other than pg_default/pg_global: (oid, name, location).
    pub async fn tablespaces(c: &PgClient) -> Result<Vec<(u32, String, String)>, PgError> {
        let rows = c
            .client
            .query(
                "SELECT oid::int8, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
                &[],
            )
            .await
            .map_err(|e| query_err("list tablespaces", &e))?;
        Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u32, r.get(1), r.get(2))).collect())
    }
}
