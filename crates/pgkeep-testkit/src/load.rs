//! Write load that remembers exactly what it committed, so tests can say which rows must (and
//! must not) exist after a restore.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::TestCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Delete,
}

/// One committed transaction: `seq` is its position in commit order.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub seq: u64,
    pub op: Op,
    pub id: i64,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Committed>>>,
    handle: Option<tokio::task::JoinHandle<Result<(), String>>>,
    rt: tokio::runtime::Handle,
}

impl Load {
    /// Single-row insert transactions into `table` (created if missing).
    pub fn inserts(cluster: &TestCluster, rt: &tokio::runtime::Runtime, table: &str) -> Load {
        Self::start(cluster, rt, table, 0)
    }

    /// Inserts, and every `delete_every`-th transaction deletes the oldest live row.
    pub fn inserts_and_deletes(
        cluster: &TestCluster,
        rt: &tokio::runtime::Runtime,
        table: &str,
        delete_every: u64,
    ) -> Load {
        Self::start(cluster, rt, table, delete_every)
    }

    fn start(cluster: &TestCluster, rt: &tokio::runtime::Runtime, table: &str, delete_every: u64) -> Load {
        cluster.sql(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, payload text NOT NULL, created timestamptz NOT NULL DEFAULT clock_timestamp())"
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Committed>>> = Arc::new(Mutex::new(Vec::new()));
        let conn = cluster.conn();
        let (s, l, t) = (stop.clone(), log.clone(), table.to_string());
        let handle = rt.spawn(async move {
            let c = conn.connect().await.map_err(|e| e.to_string())?;
            let ins = format!("INSERT INTO {t} (payload) VALUES (md5(random()::text)) RETURNING id");
            let del = format!("DELETE FROM {t} WHERE id = (SELECT min(id) FROM {t}) RETURNING id");
            let mut n: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let (sql, op) = if delete_every > 0 && n.is_multiple_of(delete_every) {
                    (&del, Op::Delete)
                } else {
                    (&ins, Op::Insert)
                };
                let rows = c.client.query(sql.as_str(), &[]).await.map_err(|e| e.to_string())?;
                if let Some(r) = rows.first() {
                    let id: i64 = r.get(0);
                    let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
                    let seq = g.len() as u64;
                    g.push(Committed { seq, op, id });
                }
            }
            Ok(())
        });
        Load { stop, log, handle: Some(handle), rt: rt.handle().clone() }
    }

    /// Commits so far.
    pub fn committed(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A copy of the commit log so far (the load keeps running).
    pub fn log(&self) -> Vec<Committed> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Everything with `seq < mark()` was committed before this call returned.
    pub fn mark(&self) -> u64 {
        self.committed() as u64
    }

    /// Block until at least `n` transactions have committed.
    pub fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.committed() < n {
            assert!(Instant::now() < deadline, "load generator stalled at {} commits", self.committed());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop and return the commit log.
    pub fn stop(mut self) -> Vec<Committed> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            match self.rt.block_on(h) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("load generator failed: {e}"),
                Err(e) => panic!("load generator panicked: {e}"),
            }
        }
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rows that exist after applying the commits with `seq < upto`.
    pub fn live_ids(log: &[Committed], upto: u64) -> BTreeSet<i64> {
        let mut s = BTreeSet::new();
        for c in log.iter().filter(|c| c.seq < upto) {
            match c.op {
                Op::Insert => s.insert(c.id),
                Op::Delete => s.remove(&c.id),
            };
        }
        s
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
