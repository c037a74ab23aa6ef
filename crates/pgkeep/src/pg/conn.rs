//! Connections resolved the way libpq does it: `--pg CONNINFO` first, then PGHOST, PGPORT,
//! PGUSER, PGDATABASE, PGPASSWORD / ~/.pgpass, PGAPPNAME, PGCONNECT_TIMEOUT, then libpq's
//! defaults (Unix socket directory, port 5432, OS user name).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use super::{describe, OsUser, PgError};

/// Socket directories libpq builds commonly default to (Debian first).
const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/run/postgresql", "/tmp"];

#[derive(Clone)]
pub struct ConnParams {
    cfg: Config,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password (invariant 8).
        write!(f, "ConnParams({})", self.describe())
    }
}

impl ConnParams {
    /// Resolve connection parameters from a conninfo string (optional) and the environment.
    pub fn resolve(conninfo: Option<&str>) -> Result<ConnParams, PgError> {
        let mut cfg: Config = match conninfo {
            Some(s) if !s.trim().is_empty() => {
                s.parse().map_err(|e: tokio_postgres::Error| PgError::BadConninfo(describe(&e)))?
            }
            _ => Config::new(),
        };
        if cfg.get_hosts().is_empty() {
            match std::env::var("PGHOST").ok().filter(|s| !s.is_empty()) {
                Some(h) => {
                    for part in h.split(',') {
                        add_host(&mut cfg, part);
                    }
                }
                None => {
                    let dir = DEFAULT_SOCKET_DIRS.iter().find(|d| Path::new(d).is_dir()).copied().unwrap_or("/tmp");
                    cfg.host_path(dir);
                }
            }
        }
        if cfg.get_ports().is_empty() {
            let port = std::env::var("PGPORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5432);
            cfg.port(port);
        }
        if cfg.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .ok()
                .filter(|s| !s.is_empty())
                .or_else(|| OsUser::current().map(|u| u.name))
                .unwrap_or_else(|| "postgres".into());
            cfg.user(&user);
        }
        if cfg.get_dbname().is_none() {
            let db = std::env::var("PGDATABASE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| cfg.get_user().unwrap_or("postgres").to_string());
            cfg.dbname(&db);
        }
        if cfg.get_password().is_none() {
            if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|s| !s.is_empty()) {
                cfg.password(pw);
            } else if let Some(pw) = pgpass_lookup(&cfg) {
                cfg.password(pw);
            }
        }
        if cfg.get_application_name().is_none() {
            let app = std::env::var("PGAPPNAME").unwrap_or_else(|_| "pgkeep".into());
            cfg.application_name(&app);
        }
        if cfg.get_connect_timeout().is_none() {
            let secs = std::env::var("PGCONNECT_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
            cfg.connect_timeout(Duration::from_secs(secs));
        }
        Ok(ConnParams { cfg })
    }

    /// Parameters for a private instance listening only on a Unix socket.
    pub fn unix(socket_dir: &Path, port: u16, user: &str, dbname: &str) -> ConnParams {
        let mut cfg = Config::new();
        cfg.host_path(socket_dir).port(port).user(user).dbname(dbname).application_name("pgkeep");
        cfg.connect_timeout(Duration::from_secs(10));
        ConnParams { cfg }
    }

    pub fn with_dbname(&self, db: &str) -> ConnParams {
        let mut c = self.clone();
        c.cfg.dbname(db);
        c
    }

    pub fn user(&self) -> &str {
        self.cfg.get_user().unwrap_or("")
    }

    pub fn dbname(&self) -> &str {
        self.cfg.get_dbname().unwrap_or("")
    }

    /// Host/port/user/dbname, never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .cfg
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.cfg.get_ports().iter().map(|p| p.to_string()).collect();
        format!(
            "host={} port={} user={} dbname={}",
            hosts.join(","),
            ports.join(","),
            self.cfg.get_user().unwrap_or(""),
            self.cfg.get_dbname().unwrap_or("")
        )
    }

    /// A libpq conninfo string (without password) that other tools (psql, pg_dump) accept.
    pub fn libpq_conninfo(&self) -> String {
        self.describe()
    }

    /// Connect; the connection task runs on the current runtime until the client is dropped.
    pub async fn connect(&self) -> Result<PgClient, PgError> {
        let (client, connection) = self.cfg.connect(NoTls).await.map_err(|e| self.connect_error(&e))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(PgClient { client, task })
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> PgError {
        let detail = describe(e);
        let hint = if detail.contains("role") && detail.contains("does not exist") {
            "set PGUSER or pass --pg \"user=postgres\" (libpq defaults to the OS user name)"
        } else if detail.contains("database") && detail.contains("does not exist") {
            "set PGDATABASE or pass --pg \"dbname=postgres\""
        } else if detail.contains("password") {
            "set PGPASSWORD or add the password to ~/.pgpass"
        } else {
            "is the server running? set PGHOST/PGPORT (a socket directory or host name) or pass --pg"
        };
        PgError::Connect { target: self.describe(), detail, hint: hint.to_string() }
    }
}

fn add_host(cfg: &mut Config, h: &str) {
    if h.starts_with('/') {
        cfg.host_path(h);
    } else {
        cfg.host(h);
    }
}

/// libpq's password file: hostname:port:database:username:password, `*` wildcards, first match.
fn pgpass_lookup(cfg: &Config) -> Option<String> {
    let path = match std::env::var("PGPASSFILE") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").ok()?).join(".pgpass"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let host = match cfg.get_hosts().first()? {
        Host::Tcp(s) => s.clone(),
        Host::Unix(_) => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let db = cfg.get_dbname().unwrap_or("");
    let user = cfg.get_user().unwrap_or("");
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let m = |f: &str, v: &str| f == "*" || f == v;
        if m(&fields[0], &host) && m(&fields[1], &port) && m(&fields[2], db) && m(&fields[3], user) {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("non-empty").push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out
}

/// A connected client; dropping it closes the session (and so aborts an open backup).
pub struct PgClient {
    pub client: Client,
    task: JoinHandle<()>,
}

impl PgClient {
    pub async fn simple(&self, sql: &str) -> Result<(), PgError> {
        self.client.batch_execute(sql).await.map_err(|e| super::query_err(sql, &e))
    }

    /// First column of the first row as text (NULL → None).
    pub async fn scalar(&self, sql: &str) -> Result<Option<String>, PgError> {
        let rows = self.client.simple_query(sql).await.map_err(|e| super::query_err(sql, &e))?;
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return Ok(r.get(0).map(str::to_string));
            }
        }
        Ok(None)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        // The connection future ends when the client goes; nothing to wait for.
        let _ = &self.task;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(split_pgpass(r"h:5432:db:u:pa\:ss"), vec!["h", "5432", "db", "u", "pa:ss"]);
        assert_eq!(split_pgpass("*:*:*:u:x:y"), vec!["*", "*", "*", "u", "x:y"]);
    }

    #[test]
    fn describe_never_shows_password() {
        let p = ConnParams::resolve(Some("host=/tmp port=5 user=a dbname=b password=sekrit")).unwrap();
        assert!(!format!("{p:?}").contains("sekrit"));
        assert!(!p.describe().contains("sekrit"));
    }
}
