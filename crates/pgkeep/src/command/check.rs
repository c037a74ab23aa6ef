//! `pgkeep check`: everything that must be true for backups to be restorable, each failure one
//! line saying what to change. Stops early only when there is nothing left to check against.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pg::{ConnParams, ServerInfo};
use crate::repo::{layout, RepoLocation, Repository};

#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to change, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<CheckItem>,
}

struct Items(Vec<CheckItem>);

impl Items {
    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.0.push(CheckItem { name: name.into(), ok: true, detail: detail.into(), hint: None });
    }
    fn fail(&mut self, name: &str, detail: impl Into<String>, hint: impl Into<String>) {
        self.0.push(CheckItem { name: name.into(), ok: false, detail: detail.into(), hint: Some(hint.into()) });
    }
    fn done(self) -> CheckReport {
        CheckReport { ok: self.0.iter().all(|c| c.ok), checks: self.0 }
    }
}

pub fn check(
    location: &RepoLocation,
    key: Option<&Path>,
    conn: &ConnParams,
    pgdata: Option<&Path>,
    archive_timeout: Duration,
    rt: tokio::runtime::Handle,
) -> CheckReport {
    let mut items = Items(Vec::new());
    let client = match rt.block_on(conn.connect()) {
        Ok(c) => {
            items.pass("connection", conn.describe());
            c
        }
        Err(e) => {
            items.fail(
                "connection",
                e.to_string(),
                "fix the connection settings (PGHOST, PGPORT, PGUSER or --pg), then run check again",
            );
            return items.done();
        }
    };
    let server = match rt.block_on(ServerInfo::read(&client)) {
        Ok(s) => s,
        Err(e) => {
            items.fail(
                "server settings",
                e.to_string(),
                "connect as a superuser or a role with pg_read_all_settings and EXECUTE on pg_control_system()",
            );
            return items.done();
        }
    };

    if server.wal_level == "replica" || server.wal_level == "logical" {
        items.pass("wal_level", &server.wal_level);
    } else {
        items.fail(
            "wal_level",
            format!("wal_level = {}", server.wal_level),
            "set wal_level = replica in postgresql.conf and restart the server",
        );
    }
    if server.archive_mode == "on" || server.archive_mode == "always" {
        items.pass("archive_mode", &server.archive_mode);
    } else {
        items.fail(
            "archive_mode",
            format!("archive_mode = {}", server.archive_mode),
            "set archive_mode = on in postgresql.conf and restart the server",
        );
    }
    let cmd = server.archive_command.clone().unwrap_or_default();
    if server.archive_library.is_some() {
        items.fail(
            "archive_command",
            format!(
                "archive_library = {} is set, so archive_command is ignored",
                server.archive_library.clone().unwrap_or_default()
            ),
            "unset archive_library and set archive_command = 'pgkeep archive-push %p'",
        );
    } else if cmd.contains("pgkeep") && cmd.contains("archive-push") && cmd.contains("%p") {
        items.pass("archive_command", &cmd);
    } else if server.archive_command.is_none() {
        items.fail(
            "archive_command",
            "cannot read archive_command (insufficient privilege)",
            "run check as a superuser or grant pg_read_all_settings",
        );
    } else {
        items.fail(
            "archive_command",
            format!("archive_command = '{cmd}' does not call pgkeep archive-push"),
            format!(
                "set archive_command = 'pgkeep --repo {location} archive-push %p' and reload (SELECT pg_reload_conf())"
            ),
        );
    }

    if let Some(p) = pgdata {
        match std::fs::read(p.join("global/pg_control")) {
            Ok(b)
                if b.len() >= 8
                    && u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) == server.system_identifier =>
            {
                items.pass("data directory", p.display().to_string())
            }
            Ok(_) => items.fail(
                "data directory",
                format!("{} belongs to another cluster than the server", p.display()),
                "point --pgdata / PGDATA at the data directory of the server you connect to",
            ),
            Err(e) => items.fail(
                "data directory",
                format!("{}: {e}", p.display()),
                "run pgkeep as the data directory's owner, or fix --pgdata / PGDATA",
            ),
        }
    }

    let repo = match Repository::open(location, key, rt.clone()) {
        Ok(r) => r,
        Err(e) => {
            items.fail("repository", e.to_string(), format!("run `pgkeep init --repo {location}`"));
            return items.done();
        }
    };
    match repo.check_cluster(server.system_identifier, server.major) {
        Ok(()) => items.pass("repository", format!("{location} (system identifier {})", repo.info().system_identifier)),
        Err(e) => {
            items.fail("repository", e.to_string(), "use a repository initialized for this cluster");
            return items.done();
        }
    }
    if let Some(source) = repo.storage().raw().credential_source() {
        match source {
            Ok(source) => items.pass("credentials", source),
            Err((e, hint)) => items.fail("credentials", e, hint),
        }
    }
    if !repo.storage().features().posix {
        match repo.storage().raw().probe_conditional_create() {
            Ok(()) => items.pass("conditional create", "a second create-if-absent of a probe object was refused"),
            Err(e) => items.fail(
                "conditional create",
                e.to_string(),
                "use a store that honours If-None-Match: * on PUT; pgkeep must never overwrite archived WAL",
            ),
        }
    }
    let probe = format!("check/probe-{}", std::process::id());
    let before_put = chrono::Utc::now();
    let st = repo.storage();
    match st
        .put(&probe, bytes::Bytes::from_static(b"pgkeep check"))
        .and_then(|_| st.head(&probe))
        .and_then(|h| st.delete(&probe).map(|_| h))
    {
        Ok(h) => {
            items.pass("repository writable", "wrote, read back and removed a probe object");
            if let (false, Some(h)) = (st.features().posix, h) {
                clock_skew(&mut items, before_put, chrono::Utc::now(), h.modified);
            }
        }
        Err(e) => items.fail(
            "repository writable",
            e.to_string(),
            "make the repository writable by this user and by the server's OS user",
        ),
    }

    // The round trip: force a segment switch and watch it arrive.
    let started = Instant::now();
    let switched = rt.block_on(async {
        client.scalar("SELECT pg_create_restore_point('pgkeep check')").await?;
        client.scalar("SELECT pg_walfile_name(pg_switch_wal())").await
    });
    match switched {
        Ok(Some(segment)) => {
            let key = layout::wal_key(&segment);
            let deadline = started + archive_timeout;
            loop {
                match repo.storage().head(&key) {
                    Ok(Some(_)) => {
                        items.pass(
                            "archive round trip",
                            format!("{segment} arrived in {:.1}s", started.elapsed().as_secs_f64()),
                        );
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                    Ok(None) => {
                        let failed = rt
                            .block_on(client.scalar("SELECT coalesce(last_failed_wal || ' at ' || last_failed_time, 'none') FROM pg_stat_archiver"))
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        items.fail(
                            "archive round trip",
                            format!("{segment} did not arrive within {}s (last failed archive: {failed})", archive_timeout.as_secs()),
                            "check the server log for archive_command errors; the repository must be writable by the server's OS user",
                        );
                        break;
                    }
                    Err(e) => {
                        items.fail("archive round trip", e.to_string(), "check the repository");
                        break;
                    }
                }
            }
        }
        Ok(None) => items.fail("archive round trip", "pg_switch_wal returned nothing", "check the server"),
        Err(e) => items.fail(
            "archive round trip",
            e.to_string(),
            "connect as a role allowed to run pg_switch_wal() (superuser or granted EXECUTE)",
        ),
    }
    items.done()
}

/// An object store stamps objects with its own clock: how far it is from ours (S3 refuses
/// requests signed more than 15 minutes off, and recovery targets are our clock's times).
fn clock_skew(
    items: &mut Items,
    before: chrono::DateTime<chrono::Utc>,
    after: chrono::DateTime<chrono::Utc>,
    stored: chrono::DateTime<chrono::Utc>,
) {
    // Last-Modified has whole seconds: allow one on either side of the request.
    let early = before - chrono::Duration::seconds(1);
    let late = after + chrono::Duration::seconds(1);
    let skew = if stored < early {
        (stored - early).num_seconds()
    } else if stored > late {
        (stored - late).num_seconds()
    } else {
        0
    };
    let detail = match skew {
        0 => "the store's clock agrees with this host's (within a second)".to_string(),
        s if s > 0 => format!("the store's clock is {s}s ahead of this host's"),
        s => format!("the store's clock is {}s behind this host's", -s),
    };
    if skew.abs() > 300 {
        items.fail("clock skew", detail, "synchronize this host's clock (chrony, systemd-timesyncd)");
    } else {
        items.pass("clock skew", detail);
    }
}
