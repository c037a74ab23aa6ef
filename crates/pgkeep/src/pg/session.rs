//! The non-exclusive backup session. pg_backup_start and pg_backup_stop must run in the same
//! session; if the session ends in between, the server aborts the backup. So this type owns the
//! connection: dropping it on any error path closes the backup (invariant 5).

use std::time::Duration;

use chrono::{DateTime, Utc};
use pgkeep_wal::Lsn;

use super::version::{backup_start_sql, backup_stop_sql};
use super::{query_err, PgClient, PgError};

#[derive(Debug, Clone)]
pub struct StartPoint {
    pub lsn: Lsn,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct StopPoint {
    pub lsn: Lsn,
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub time: DateTime<Utc>,
}

pub struct BackupSession {
    client: Option<PgClient>,
    major: u32,
}

impl BackupSession {
    /// Start a non-exclusive backup on `client`, which the session then owns.
    pub async fn start(
        client: PgClient,
        major: u32,
        label: &str,
        fast: bool,
    ) -> Result<(BackupSession, StartPoint), PgError> {
        let row = client
            .client
            .query_one(backup_start_sql(major), &[&label, &fast])
            .await
            .map_err(|e| query_err("pg_backup_start", &e))?;
        let lsn_text: String = row.get(0);
        let session = BackupSession { client: Some(client), major };
        let lsn = lsn_text
            .parse()
            .map_err(|_| PgError::Server(format!("pg_backup_start returned an unreadable LSN {lsn_text:?}")))?;
        let time = session.now().await?;
        Ok((session, StartPoint { lsn, time }))
    }

    fn client(&self) -> Result<&PgClient, PgError> {
        self.client.as_ref().ok_or_else(|| PgError::Server("backup session already closed".into()))
    }

    pub async fn now(&self) -> Result<DateTime<Utc>, PgError> {
        let row = self
            .client()?
            .client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .map_err(|e| query_err("clock_timestamp()", &e))?;
        Ok(row.get(0))
    }

    /// Stop the backup. With `wait_for_archive`, the server waits until the last segment is
    /// archived; `timeout` bounds that wait (a stuck archive_command must not hang pgkeep).
    pub async fn stop(mut self, wait_for_archive: bool, timeout: Duration) -> Result<StopPoint, PgError> {
        let client = self.client.take().ok_or_else(|| PgError::Server("backup session already closed".into()))?;
        let ms = timeout.as_millis().max(1);
        client.simple(&format!("SET statement_timeout = {ms}")).await?;
        let row = client
            .client
            .query_one(backup_stop_sql(self.major), &[&wait_for_archive])
            .await
            .map_err(|e| {
                let mut err = query_err("pg_backup_stop", &e);
                if let Some(db) = e.as_db_error() {
                    if db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED {
                        err = PgError::Server(format!(
                            "the server did not archive the backup's last WAL segment within {}s; hint: check archive_command and the server log (pg_stat_archiver.last_failed_wal)",
                            timeout.as_secs()
                        ));
                    }
                }
                err
            })?;
        let lsn_text: String = row.get(0);
        let lsn = lsn_text
            .parse()
            .map_err(|_| PgError::Server(format!("pg_backup_stop returned an unreadable LSN {lsn_text:?}")))?;
        let backup_label: String = row.get(1);
        let spc: Option<String> = row.get(2);
        let time: DateTime<Utc> = row.get(3);
        let _ = client.simple("RESET statement_timeout").await;
        Ok(StopPoint { lsn, backup_label, tablespace_map: spc.filter(|s| !s.trim().is_empty()), time })
    }

    /// Abort explicitly: end the session so the server drops the backup. (Dropping does the same.)
    pub fn abort(mut self) {
        self.client.take();
    }
}

/// Fields of a backup_label file.
#[derive(Debug, Clone, Default)]
pub struct BackupLabel {
    pub start_lsn: Option<Lsn>,
    pub start_wal: Option<String>,
    pub checkpoint_lsn: Option<Lsn>,
    pub start_timeline: Option<u32>,
    pub label: Option<String>,
}

/// Parse backup_label ("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)" …).
pub fn parse_backup_label(text: &str) -> BackupLabel {
    let mut l = BackupLabel::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(": ") else { continue };
        match k {
            "START WAL LOCATION" => {
                let mut it = v.split_whitespace();
                l.start_lsn = it.next().and_then(|s| s.parse().ok());
                l.start_wal = v.split_once("(file ").and_then(|(_, f)| f.strip_suffix(')')).map(str::to_string);
            }
            "CHECKPOINT LOCATION" => l.checkpoint_lsn = v.trim().parse().ok(),
            "START TIMELINE" => l.start_timeline = v.trim().parse().ok(),
            "LABEL" => l.label = Some(v.to_string()),
            _ => {}
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_fields() {
        let t = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-21 06:43:00 UTC\nLABEL: pgkeep x\nSTART TIMELINE: 1\n";
        let l = parse_backup_label(t);
        assert_eq!(l.start_lsn, Some(Lsn(0x2000028)));
        assert_eq!(l.start_wal.as_deref(), Some("000000010000000000000002"));
        assert_eq!(l.checkpoint_lsn, Some(Lsn(0x2000060)));
        assert_eq!(l.start_timeline, Some(1));
        assert_eq!(l.label.as_deref(), Some("pgkeep x"));
    }
}
