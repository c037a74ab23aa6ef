//! The process-wide budget of buffered bytes of object-store writers: every byte a writer holds
//! before it is sent, and every part being sent, lives in one of [`POOL_PARTS`] buffers of
//! [`PART_SIZE`] bytes. So part buffers never take more than `POOL_PARTS × PART_SIZE` (96 MiB),
//! whatever `--jobs`, the number of open writers or the size of the database.
//!
//! Buffers are kept and lent again, never freed: a fresh 8 MiB buffer per part costs 2048 page
//! faults, and once glibc has raised its mmap threshold past 8 MiB (it does after the first
//! such buffer is freed) the buffers come from per-thread arenas that keep freed memory, which
//! is how a backup of many files reached 259 MiB with a bound of 64 MiB in flight.
//!
//! Deadlock: a writer waits for a buffer only while it holds none, but the same thread may hold
//! another writer's partly filled buffer (a backup worker keeps its bundle open while it writes
//! a large file). With at most [`MAX_WRITER_THREADS`] such threads one buffer is always free,
//! in flight (and so coming back), or held by a thread that is not waiting.

use std::sync::{Arc, Condvar, LazyLock, Mutex};

use bytes::Bytes;

/// Size of the parts a streaming writer sends; S3 needs at least 5 MiB per part.
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;
/// Buffers of the process-wide pool.
pub(crate) const POOL_PARTS: usize = 12;
/// Threads that may write to object stores at once, each holding at most one idle partial
/// buffer (backup workers; one buffer more for the thread that stores pg_control).
pub const MAX_WRITER_THREADS: usize = POOL_PARTS - 2;

/// The pool every object-store writer of this process draws from.
pub(crate) fn global() -> &'static Arc<PartPool> {
    static POOL: LazyLock<Arc<PartPool>> = LazyLock::new(|| PartPool::new(POOL_PARTS, PART_SIZE));
    &POOL
}

#[derive(Debug, Default)]
struct State {
    /// Buffers given back, kept for the next borrower.
    free: Vec<Vec<u8>>,
    lent: usize,
    /// The most buffers ever lent at once.
    high_water: usize,
}

/// A fixed number of equal buffers; [`PartPool::take`] blocks while all are lent.
#[derive(Debug)]
pub(crate) struct PartPool {
    state: Mutex<State>,
    returned: Condvar,
    parts: usize,
    part_size: usize,
}

impl PartPool {
    pub(crate) fn new(parts: usize, part_size: usize) -> Arc<PartPool> {
        Arc::new(PartPool { state: Mutex::default(), returned: Condvar::new(), parts, part_size })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer of `part_size` capacity; waits while every buffer is lent. Blocking:
    /// never call it from an async task (buffers come back from the runtime's tasks).
    pub(crate) fn take(self: &Arc<Self>) -> PartBuf {
        let mut st = self.lock();
        while st.lent >= self.parts {
            st = self.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.lent += 1;
        st.high_water = st.high_water.max(st.lent);
        // Allocated on first use only: a small backup never reserves the whole budget.
        let buf = st.free.pop().unwrap_or_else(|| Vec::with_capacity(self.part_size));
        PartBuf { buf, pool: self.clone() }
    }

    /// The most buffers lent at once so far.
    #[cfg(test)]
    pub(crate) fn high_water(&self) -> usize {
        self.lock().high_water
    }
}

/// A lent buffer; it goes back to its pool when dropped (also as the owner of the [`Bytes`] of
/// [`PartBuf::into_bytes`], once the last clone of those is dropped).
#[derive(Debug)]
pub(crate) struct PartBuf {
    buf: Vec<u8>,
    pool: Arc<PartPool>,
}

impl PartBuf {
    /// Append as much of `data` as fits; how many bytes were taken.
    pub(crate) fn fill(&mut self, data: &[u8]) -> usize {
        let n = (self.pool.part_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    pub(crate) fn is_full(&self) -> bool {
        self.buf.len() >= self.pool.part_size
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The content without a copy; the buffer is lent until every clone is dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PartBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PartBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut st = self.pool.lock();
        st.lent -= 1;
        st.free.push(buf);
        drop(st);
        self.pool.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Backup workers, each with a bundle holding a partly filled buffer while it streams a
    /// large object whose full parts go to a sender that holds them a while (a part in flight),
    /// never hold more than the pool's buffers, reuse them, and all finish (none waits forever)
    /// when there is one buffer more than such threads.
    #[test]
    fn writers_never_hold_more_than_the_budget() {
        const PARTS: usize = 4;
        let pool = PartPool::new(PARTS, 1024);
        let (tx, rx) = mpsc::channel::<Bytes>();
        let sender = std::thread::spawn(move || {
            let mut sent = 0usize;
            for part in rx {
                std::thread::sleep(Duration::from_millis(1));
                sent += part.len();
            }
            sent
        });
        let workers: Vec<_> = (0..PARTS - 1)
            .map(|w| {
                let (pool, tx) = (pool.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut bundle = pool.take();
                    assert_eq!(bundle.fill(&[w as u8; 100]), 100);
                    for _ in 0..5 {
                        let data = vec![w as u8; 10_000];
                        let mut rest = &data[..];
                        let mut part: Option<PartBuf> = None;
                        while !rest.is_empty() {
                            let buf = part.get_or_insert_with(|| pool.take());
                            rest = &rest[buf.fill(rest)..];
                            if buf.is_full() {
                                let full = part.take().expect("filled above");
                                assert!(full.as_ref().iter().all(|&b| b == w as u8));
                                tx.send(full.into_bytes()).unwrap();
                            }
                        }
                        tx.send(part.take().expect("a partial last part").into_bytes()).unwrap();
                    }
                    tx.send(bundle.into_bytes()).unwrap();
                })
            })
            .collect();
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(sender.join().unwrap(), (PARTS - 1) * (5 * 10_000 + 100), "every byte went out once");
        assert!(pool.high_water() <= PARTS, "held {} buffers, budget {PARTS}", pool.high_water());
        let st = pool.lock();
        assert_eq!(st.lent, 0, "every buffer came back");
        assert!(st.free.len() <= PARTS && st.free.iter().all(|b| b.capacity() >= 1024 && b.is_empty()));
    }
}
