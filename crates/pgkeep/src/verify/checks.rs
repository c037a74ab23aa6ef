//! The checks that run inside the drill's server, database by database, `jobs` sessions at a
//! time, in stages (so each stage's time can be reported):
//!
//! 1. `amcheck`: `bt_index_parent_check(index, heapallindexed => true)` on every btree index
//!    (`bt_index_check(index, true)` when the server is still in recovery, where the parent
//!    check cannot run);
//! 2. `verify_heapam(table, check_toast => true)` on every table, TOAST table and materialized
//!    view; its "xmin/xmax … equals or exceeds next valid transaction ID" reports are counted
//!    separately as the transaction-horizon check;
//! 3. read every row: `COPY (SELECT * FROM ONLY t) TO STDOUT`, output discarded, so checksum
//!    failures, missing commit-log pages (`could not access status of transaction`) and
//!    damaged TOAST surface;
//! 4. duplicates on every primary key, unique constraint and unique index, found by a GROUP BY
//!    with index scans disabled (a damaged index cannot hide its own duplicates).
//!
//! amcheck is created in a schema of its own (`pgkeep_verify`) where it is not installed, and
//! dropped again before any dump is taken.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::report::{DatabaseReport, MAX_ERRORS};
use super::VerifyError;
use crate::pg::{describe, ConnParams, PgClient};

/// Schema pgkeep creates amcheck in when a database lacks it.
pub const OWN_SCHEMA: &str = "pgkeep_verify";

/// Session settings for every checking connection.
const SESSION_SQL: &str = "SET search_path = pg_catalog, pg_temp; SET enable_indexscan = off; \
    SET enable_indexonlyscan = off; SET enable_bitmapscan = off; SET statement_timeout = 0; \
    SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
    SET default_transaction_read_only = off; SET max_parallel_workers_per_gather = 0";

#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub allow_conn: bool,
    pub invalid: bool,
}

#[derive(Debug, Clone)]
struct Table {
    oid: u32,
    name: String,
    kind: String,
    populated: bool,
}

#[derive(Debug, Clone)]
struct Index {
    oid: u32,
    name: String,
    table: String,
    table_kind: String,
    usable: bool,
    unique: bool,
    keys: Vec<String>,
    predicate: Option<String>,
    nulls_not_distinct: bool,
}

/// Problems found by one stage in one database.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Found {
    pub count: u64,
    pub first: Vec<String>,
}

impl Found {
    pub fn push(&mut self, msg: String) {
        self.count += 1;
        if self.first.len() < MAX_ERRORS {
            self.first.push(msg);
        }
    }

    pub fn merge(&mut self, o: &Found) {
        self.count += o.count;
        for m in &o.first {
            if self.first.len() < MAX_ERRORS {
                self.first.push(m.clone());
            }
        }
    }
}

/// Everything the checks found in one database.
#[derive(Debug, Default)]
pub struct DbOutcome {
    pub report: DatabaseReport,
    pub amcheck: Found,
    pub heapam: Found,
    pub horizon: Found,
    pub read: Found,
    pub unique: Found,
    /// Tables whose only verify_heapam findings are transaction-horizon ones.
    pub horizon_tables: u64,
    /// Seconds spent per stage.
    pub seconds: HashMap<&'static str, f64>,
    /// `pg_relation_filepath` → qualified relation name, for naming page-LSN findings.
    pub file_names: HashMap<String, String>,
    /// amcheck was created by the drill (in [`OWN_SCHEMA`]) and must be dropped again.
    pub created_schema: bool,
}

pub struct Ctx<'a> {
    pub conn: &'a ConnParams,
    pub jobs: usize,
    pub in_recovery: bool,
    pub server_version_num: u32,
}

fn q(e: &tokio_postgres::Error) -> String {
    describe(e)
}

/// The databases of the cluster.
pub async fn databases(c: &PgClient) -> Result<Vec<Database>, String> {
    let rows = c
        .client
        .query("SELECT datname, datallowconn, datconnlimit = -2 FROM pg_database ORDER BY datname = 'postgres' DESC, datname", &[])
        .await
        .map_err(|e| q(&e))?;
    let mut v = Vec::new();
    for r in &rows {
        v.push(Database {
            name: r.try_get(0).map_err(|e| q(&e))?,
            allow_conn: r.try_get(1).map_err(|e| q(&e))?,
            invalid: r.try_get::<_, Option<bool>>(2).map_err(|e| q(&e))?.unwrap_or(false),
        });
    }
    Ok(v)
}

async fn connect(conn: &ConnParams, db: &str) -> Result<PgClient, String> {
    let c = conn.with_dbname(db).connect().await.map_err(|e| e.to_string())?;
    c.client.batch_execute(SESSION_SQL).await.map_err(|e| q(&e))?;
    Ok(c)
}

/// Make amcheck callable: returns (quoted schema, created by us).
async fn ensure_amcheck(c: &PgClient) -> Result<(String, bool), VerifyError> {
    let setup_err = |detail: String| VerifyError::DbSetup { detail };
    let row = c
        .client
        .query_opt(
            "SELECT quote_ident(n.nspname), e.extversion FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'",
            &[],
        )
        .await
        .map_err(|e| setup_err(q(&e)))?;
    if let Some(r) = row {
        let schema: String = r.try_get(0).map_err(|e| setup_err(q(&e)))?;
        let version: String = r.try_get(1).map_err(|e| setup_err(q(&e)))?;
        // verify_heapam arrived in amcheck 1.3 (PostgreSQL 14).
        if version.as_str() < "1.3" {
            c.client.batch_execute("ALTER EXTENSION amcheck UPDATE").await.map_err(|e| setup_err(q(&e)))?;
        }
        return Ok((schema, false));
    }
    let sql = format!("CREATE SCHEMA {OWN_SCHEMA}; CREATE EXTENSION amcheck SCHEMA {OWN_SCHEMA}");
    if let Err(e) = c.client.batch_execute(&sql).await {
        let d = q(&e);
        if d.contains("extension control file") || d.contains("is not available") {
            return Err(VerifyError::AmcheckMissing { detail: d });
        }
        return Err(setup_err(d));
    }
    Ok((OWN_SCHEMA.to_string(), true))
}

/// Drop what [`ensure_amcheck`] created (before dumps, so they show the backup as it was).
pub async fn drop_own_schema(conn: &ConnParams, db: &str) -> Result<(), String> {
    let c = connect(conn, db).await?;
    c.client.batch_execute(&format!("DROP SCHEMA IF EXISTS {OWN_SCHEMA} CASCADE")).await.map_err(|e| q(&e))
}

/// Check one database. `shared` includes the shared catalogs (done in the first database only).
/// Returns Err only for problems of the environment (amcheck not installed here).
pub async fn check_database(ctx: &Ctx<'_>, db: &str, shared: bool) -> Result<DbOutcome, VerifyError> {
    let mut out =
        DbOutcome { report: DatabaseReport { name: db.to_string(), ..Default::default() }, ..Default::default() };
    let main = match connect(ctx.conn, db).await {
        Ok(c) => c,
        Err(e) => {
            out.report.error = Some(format!("cannot connect: {e}"));
            return Ok(out);
        }
    };
    let (schema, created) = match ensure_amcheck(&main).await {
        Ok(x) => x,
        Err(e @ VerifyError::AmcheckMissing { .. }) => return Err(e),
        Err(e) => {
            out.report.error = Some(e.to_string());
            return Ok(out);
        }
    };
    out.created_schema = created;
    let (tables, indexes) = match list_objects(&main, shared, ctx.server_version_num).await {
        Ok(x) => x,
        Err(e) => {
            out.report.error = Some(format!("cannot list relations: {e}"));
            return Ok(out);
        }
    };
    if let Ok(rows) = main
        .client
        .query(
            "SELECT pg_relation_filepath(c.oid), format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pg_relation_filepath(c.oid) IS NOT NULL",
            &[],
        )
        .await
    {
        for r in rows {
            if let (Ok(path), Ok(name)) = (r.try_get(0), r.try_get(1)) {
                out.file_names.insert(path, name);
            }
        }
    }
    let mut clients = vec![main];
    for _ in 1..ctx.jobs.max(1) {
        match connect(ctx.conn, db).await {
            Ok(c) => clients.push(c),
            Err(_) => break,
        }
    }
    let clients: Vec<Mutex<Option<Arc<PgClient>>>> =
        clients.into_iter().map(|c| Mutex::new(Some(Arc::new(c)))).collect();

    // 1. amcheck on every usable btree index.
    let func = if ctx.in_recovery { "bt_index_check" } else { "bt_index_parent_check" };
    out.report.amcheck_function = func.to_string();
    let sql = format!("SELECT {schema}.{func}($1::oid::regclass, true)");
    let usable: Vec<Index> = indexes.iter().filter(|i| i.usable).cloned().collect();
    let t = Instant::now();
    let (results, left) = parallel(ctx, db, &clients, usable, |c, ix| {
        let sql = sql.clone();
        async move {
            match c.client.execute(sql.as_str(), &[&ix.oid]).await {
                Ok(_) => (1u64, Vec::new()),
                Err(e) => (1, vec![format!("index {} on {}: {}", ix.name, ix.table, q(&e))]),
            }
        }
    })
    .await;
    for (n, errs) in results {
        out.report.indexes_checked += n;
        for e in errs {
            out.amcheck.push(format!("[{db}] {e}"));
        }
    }
    not_run(&mut out.amcheck, db, left, "indexes");
    out.seconds.insert("amcheck", t.elapsed().as_secs_f64());

    // 2. verify_heapam on every table.
    let sql = format!(
        "SELECT blkno, offnum, attnum, msg FROM {schema}.verify_heapam($1::oid::regclass, on_error_stop => false, check_toast => true, skip => 'none')"
    );
    let t = Instant::now();
    let (results, left) = parallel(ctx, db, &clients, tables.clone(), |c, tb| {
        let sql = sql.clone();
        async move {
            let mut heap = Vec::new();
            let mut horizon = Vec::new();
            match c.client.query(sql.as_str(), &[&tb.oid]).await {
                Ok(rows) => {
                    for r in rows {
                        let blk: Option<i64> = r.try_get(0).ok().flatten();
                        let off: Option<i32> = r.try_get(1).ok().flatten();
                        let att: Option<i32> = r.try_get(2).ok().flatten();
                        let msg: Option<String> = r.try_get(3).ok().flatten();
                        let msg = msg.unwrap_or_default();
                        let mut line = format!("table {}", tb.name);
                        if let Some(b) = blk {
                            line.push_str(&format!(" block {b}"));
                        }
                        if let Some(o) = off {
                            line.push_str(&format!(" offset {o}"));
                        }
                        if let Some(a) = att {
                            line.push_str(&format!(" attribute {a}"));
                        }
                        line.push_str(&format!(": {msg}"));
                        if is_horizon(&msg) {
                            horizon.push(line);
                        } else {
                            heap.push(line);
                        }
                    }
                }
                Err(e) => heap.push(format!("table {}: {}", tb.name, q(&e))),
            }
            (heap, horizon)
        }
    })
    .await;
    out.report.tables_checked = results.len() as u64;
    not_run(&mut out.heapam, db, left, "tables");
    for (heap, horizon) in results {
        if heap.is_empty() && !horizon.is_empty() {
            out.horizon_tables += 1;
        }
        for e in heap {
            out.heapam.push(format!("[{db}] {e}"));
        }
        for e in horizon {
            out.horizon.push(format!("[{db}] {e}"));
        }
    }
    out.seconds.insert("verify_heapam", t.elapsed().as_secs_f64());

    // 3. Read every row of every table.
    let readable: Vec<Table> =
        tables.iter().filter(|t| (t.kind == "r" || t.kind == "m") && t.populated).cloned().collect();
    let t = Instant::now();
    let (results, left) = parallel(ctx, db, &clients, readable, |c, tb| async move {
        let sql = format!("COPY (SELECT * FROM ONLY {}) TO STDOUT", tb.name);
        let mut rows = 0u64;
        let mut bytes = 0u64;
        let stream = match c.client.copy_out(sql.as_str()).await {
            Ok(s) => s,
            Err(e) => return (0, 0, Some(format!("table {}: {}", tb.name, q(&e)))),
        };
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    bytes += b.len() as u64;
                    rows += b.iter().filter(|&&x| x == b'\n').count() as u64;
                }
                Err(e) => return (rows, bytes, Some(format!("table {} after {rows} rows: {}", tb.name, q(&e)))),
            }
        }
        (rows, bytes, None)
    })
    .await;
    for (rows, bytes, err) in results {
        out.report.rows_read += rows;
        out.report.bytes_read += bytes;
        if let Some(e) = err {
            out.read.push(format!("[{db}] {e}"));
        }
    }
    not_run(&mut out.read, db, left, "tables");
    out.seconds.insert("read_all", t.elapsed().as_secs_f64());

    // 4. Duplicate keys, found without the index.
    let uniques: Vec<Index> = indexes
        .iter()
        .filter(|i| i.unique && i.usable && matches!(i.table_kind.as_str(), "r" | "m" | "t"))
        .cloned()
        .collect();
    let t = Instant::now();
    let (results, left) = parallel(ctx, db, &clients, uniques, |c, ix| async move {
        let sql = duplicate_query(&ix);
        match c.client.simple_query(&sql).await {
            Ok(msgs) => {
                let mut errs = Vec::new();
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        errs.push(format!(
                            "duplicate key in {} on {}: {} occurs {} times",
                            ix.name,
                            ix.table,
                            r.get(0).unwrap_or("?"),
                            r.get(1).unwrap_or("?")
                        ));
                    }
                }
                (1u64, errs)
            }
            Err(e) => (1, vec![format!("index {} on {}: duplicate check failed: {}", ix.name, ix.table, q(&e))]),
        }
    })
    .await;
    for (n, errs) in results {
        out.report.unique_checked += n;
        for e in errs {
            out.unique.push(format!("[{db}] {e}"));
        }
    }
    not_run(&mut out.unique, db, left, "unique indexes");
    out.seconds.insert("unique", t.elapsed().as_secs_f64());

    out.report.problems = out.amcheck.count + out.heapam.count + out.horizon.count + out.read.count + out.unique.count;
    out.report.ok = out.report.problems == 0 && out.report.error.is_none();
    Ok(out)
}

fn not_run(found: &mut Found, db: &str, left: usize, what: &str) {
    if left > 0 {
        found.push(format!("[{db}] {left} {what} not checked: the server stopped accepting connections"));
    }
}

/// verify_heapam's transaction-horizon reports: an xmin/xmax (or multixact) the cluster has
/// not reached yet — tuples written by transactions the WAL never saw.
pub fn is_horizon(msg: &str) -> bool {
    msg.contains("equals or exceeds next valid")
}

fn duplicate_query(ix: &Index) -> String {
    let keys = ix.keys.join(", ");
    let mut conds: Vec<String> = Vec::new();
    if let Some(p) = &ix.predicate {
        conds.push(format!("({p})"));
    }
    if !ix.nulls_not_distinct {
        for k in &ix.keys {
            conds.push(format!("({k}) IS NOT NULL"));
        }
    }
    let wh = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    format!(
        "SELECT ROW({keys})::text, count(*) FROM ONLY {}{wh} GROUP BY {keys} HAVING count(*) > 1 LIMIT {}",
        ix.table, MAX_ERRORS
    )
}

async fn list_objects(c: &PgClient, shared: bool, version_num: u32) -> Result<(Vec<Table>, Vec<Index>), String> {
    let rows = c
        .client
        .query(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relispopulated \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence IN ('p', 'u') AND (NOT c.relisshared OR $1) \
             ORDER BY c.relpages DESC, c.oid",
            &[&shared],
        )
        .await
        .map_err(|e| q(&e))?;
    let mut tables = Vec::new();
    for r in &rows {
        tables.push(Table {
            oid: r.try_get(0).map_err(|e| q(&e))?,
            name: r.try_get(1).map_err(|e| q(&e))?,
            kind: r.try_get(2).map_err(|e| q(&e))?,
            populated: r.try_get::<_, Option<bool>>(3).map_err(|e| q(&e))?.unwrap_or(false),
        });
    }
    let nnd = if version_num >= 150000 { "i.indnullsnotdistinct" } else { "false" };
    let sql = format!(
        "SELECT c.oid, format('%I.%I', n.nspname, c.relname), format('%I.%I', tn.nspname, t.relname), t.relkind::text, \
           i.indisvalid AND i.indisready AND i.indislive, i.indisunique, \
           ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts::int) k ORDER BY k), \
           pg_get_expr(i.indpred, i.indrelid, true), {nnd} \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
         JOIN pg_am am ON am.oid = c.relam \
         WHERE am.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence IN ('p', 'u') AND (NOT c.relisshared OR $1) \
         ORDER BY c.relpages DESC, c.oid"
    );
    let rows = c.client.query(sql.as_str(), &[&shared]).await.map_err(|e| q(&e))?;
    let mut indexes = Vec::new();
    for r in &rows {
        // A key column the catalog cannot describe makes the index unusable for the duplicate
        // check (never a panic on what the server sent).
        let keys: Vec<Option<String>> = r.try_get(6).map_err(|e| q(&e))?;
        let complete = keys.iter().all(Option::is_some);
        indexes.push(Index {
            oid: r.try_get(0).map_err(|e| q(&e))?,
            name: r.try_get(1).map_err(|e| q(&e))?,
            table: r.try_get(2).map_err(|e| q(&e))?,
            table_kind: r.try_get(3).map_err(|e| q(&e))?,
            usable: r.try_get::<_, Option<bool>>(4).map_err(|e| q(&e))?.unwrap_or(false),
            unique: r.try_get::<_, Option<bool>>(5).map_err(|e| q(&e))?.unwrap_or(false) && complete,
            keys: keys.into_iter().flatten().collect(),
            predicate: r.try_get(7).map_err(|e| q(&e))?,
            nulls_not_distinct: r.try_get::<_, Option<bool>>(8).map_err(|e| q(&e))?.unwrap_or(false),
        });
    }
    Ok((tables, indexes))
}

/// Run `f` over `items` with one worker per client; a worker whose session died (a crashed
/// backend makes the server drop every session) reconnects and carries on. Returns the
/// results and how many items no session could run (the server is gone).
async fn parallel<T, R, F, Fut>(
    ctx: &Ctx<'_>,
    db: &str,
    clients: &[Mutex<Option<Arc<PgClient>>>],
    items: Vec<T>,
    f: F,
) -> (Vec<R>, usize)
where
    F: Fn(Arc<PgClient>, T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let queue = Mutex::new(items.into_iter().collect::<VecDeque<T>>());
    let results: Mutex<Vec<R>> = Mutex::new(Vec::new());
    let workers = clients.iter().map(|slot| {
        let (queue, results, f) = (&queue, &results, &f);
        async move {
            let mut client = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            loop {
                let item = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(item) = item else { break };
                if client.as_ref().is_none_or(|c| c.client.is_closed()) {
                    client = reconnect(ctx.conn, db).await.map(Arc::new);
                }
                let Some(c) = client.clone() else {
                    // The server is gone for good: leave the item for a worker that can run it.
                    queue.lock().unwrap_or_else(|p| p.into_inner()).push_front(item);
                    break;
                };
                let r = f(c, item).await;
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            }
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = client;
        }
    });
    futures::future::join_all(workers).await;
    let left = queue.into_inner().unwrap_or_else(|p| p.into_inner()).len();
    (results.into_inner().unwrap_or_else(|p| p.into_inner()), left)
}

/// After a backend crash the server restarts (crash recovery); wait up to a minute for it.
async fn reconnect(conn: &ConnParams, db: &str) -> Option<PgClient> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = connect(conn, db).await {
            return Some(c);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_query_ignores_nulls_and_honours_predicates() {
        let ix = Index {
            oid: 1,
            name: "public.u".into(),
            table: "public.t".into(),
            table_kind: "r".into(),
            usable: true,
            unique: true,
            keys: vec!["a".into(), "lower(b)".into()],
            predicate: Some("c > 0".into()),
            nulls_not_distinct: false,
        };
        let s = duplicate_query(&ix);
        assert_eq!(
            s,
            "SELECT ROW(a, lower(b))::text, count(*) FROM ONLY public.t WHERE (c > 0) AND (a) IS NOT NULL AND (lower(b)) IS NOT NULL GROUP BY a, lower(b) HAVING count(*) > 1 LIMIT 20"
        );
    }

    #[test]
    fn horizon_messages() {
        assert!(is_horizon("xmin 1234 equals or exceeds next valid transaction ID 0:1000"));
        assert!(!is_horizon("line pointer redirection to item at offset 9 exceeds maximum offset 8"));
    }
}
