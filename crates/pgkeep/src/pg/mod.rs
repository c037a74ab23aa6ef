//! Everything that talks to PostgreSQL or its files: connections, server settings, the backup
//! session (start/stop held in one session), data-directory skip rules, version differences,
//! the server binaries matching a cluster's major, and private local instances (initdb /
//! start / stop as the data directory's owner).

pub mod bin;
pub mod conn;
pub mod datadir;
pub mod instance;
pub mod server;
pub mod session;
pub mod version;

pub use bin::PgBin;
pub use conn::{ConnParams, PgClient};
pub use instance::{Instance, InstanceError, OsUser, StopMode};
pub use server::ServerInfo;
pub use session::{BackupSession, StartPoint, StopPoint};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL ({target}): {detail}; hint: {hint}")]
    Connect { target: String, detail: String, hint: String },
    #[error("query failed ({what}): {detail}")]
    Query { what: String, detail: String },
    #[error("invalid connection string: {0}; hint: use libpq syntax, e.g. \"host=/var/run/postgresql user=postgres\"")]
    BadConninfo(String),
    #[error("PostgreSQL {version} is not supported (pgkeep needs 13 or newer)")]
    Unsupported { version: u32 },
    #[error("{0}")]
    Server(String),
}

/// One line from a tokio-postgres error: the server's message (and detail/hint) when there is one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; server hint: {h}"));
        }
        return s.replace('\n', " ");
    }
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s = format!("{s}: {m}");
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

pub(crate) fn query_err(what: &str, e: &tokio_postgres::Error) -> PgError {
    PgError::Query { what: what.to_string(), detail: describe(e) }
}
