//! The detached prefetcher (`archive-get … --prefetch-only`): one process per spool (its lock),
//! started by a call that served or fetched a segment, running while recovery consumes what it
//! spools. It keeps the `archive_get_queue` segments after recovery's position fetched or in
//! flight, so a refill never waits for the window to empty nor for a new process to open the
//! repository. Recovery's position is the newest spooled segment that was served (renamed away),
//! or a later segment a call had to fetch itself (`want`).
//!
//! Segments are committed in order (rename, then record): after the first one missing or
//! failing nothing more is spooled, and the end is marked. A killed prefetcher leaves temps and
//! perhaps a segment without a record, neither of which is ever served; the next one removes them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgkeep_wal::TimeLineID;

use super::prefetch::{Spooled, END, FETCHING};
use crate::repo::Repository;

/// How long the prefetcher stays with a full window while recovery takes nothing (the target
/// was reached, or the server stopped); a later call starts a new one.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// How often it looks for recovery's progress when no fetch finishes.
const POLL: Duration = Duration::from_millis(5);

/// Run the prefetcher for timeline `tli` after segment `after`; returns how many segments it
/// spooled. Leaves at once when another one holds the lock.
pub(super) fn run(
    sp: &Spooled,
    open: &dyn Fn() -> crate::Result<Repository>,
    tli: TimeLineID,
    after: u64,
    queue: usize,
) -> crate::Result<usize> {
    // A call probing whether a prefetcher runs holds the lock for an instant: look again.
    let lock = (0..3).find_map(|i| {
        if i > 0 {
            std::thread::sleep(POLL);
        }
        sp.dir.try_lock()
    });
    let Some(_lock) = lock else { return Ok(0) };
    // The call that started us may have left its miss in `want`; one on another timeline is stale.
    let after = match sp.take_wanted() {
        Some((t, s)) if t == tli => after.max(s),
        _ => after,
    };
    let mut state = State { pos: after, next: after + 1, commit_next: after + 1, ..State::default() };
    let window = sp.window(tli, state.pos, queue);
    sp.clean(&window);
    // Opening the repository takes round trips: a call for one of these meanwhile waits for us.
    let _ = sp.dir.write_json(FETCHING, &window);
    let repo = open().inspect_err(|_| sp.dir.remove(FETCHING))?;
    let kept = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(u64, Fetched)>();
        let mut idle_since = Instant::now();
        loop {
            if state.follow(sp, tli) {
                idle_since = Instant::now();
            }
            if state.left {
                break;
            }
            if !state.ended {
                while state.in_flight.len() < queue.max(1)
                    && state.next <= state.pos + queue as u64
                    && !sp.beyond_switch(tli, state.next)
                {
                    let (segno, name, repo, tx) = (state.next, sp.name(tli, state.next), &repo, tx.clone());
                    state.next += 1;
                    if sp.is_spooled(&name) {
                        // An earlier prefetcher's, still waiting for recovery.
                        state.done.insert(segno, Fetched::Already);
                        continue;
                    }
                    state.in_flight.insert(segno);
                    s.spawn(move || {
                        let fetched = if sp.fetch_to_temp(repo, &name) { Fetched::Checked } else { Fetched::Failed };
                        let _ = tx.send((segno, fetched));
                    });
                }
            }
            state.publish(sp, tli);
            if state.in_flight.is_empty() && (state.ended || idle_since.elapsed() > IDLE_LIMIT) {
                break;
            }
            if let Ok((segno, fetched)) = rx.recv_timeout(POLL) {
                state.in_flight.remove(&segno);
                if segno > state.pos && !state.ended {
                    state.done.insert(segno, fetched);
                } else {
                    sp.discard(&sp.name(tli, segno));
                }
            }
            state.commit(sp, tli);
        }
        state.kept
    });
    if state.ended {
        // Tells calls not to start another prefetcher for a while: the archive ends here.
        let _ = sp.dir.write(END, b"");
    }
    sp.dir.remove(FETCHING);
    Ok(kept)
}

/// What became of one segment of the window.
enum Fetched {
    /// Fetched and checked, in its temp file.
    Checked,
    /// Missing from the archive or failing a check.
    Failed,
    /// Already spooled (with its record) when its turn came.
    Already,
}

#[derive(Default)]
struct State {
    /// Recovery's position: the last segment it took.
    pos: u64,
    /// The next segment to fetch.
    next: u64,
    /// The next segment to commit (commits go in order).
    commit_next: u64,
    in_flight: BTreeSet<u64>,
    /// Fetched, waiting for their turn to commit.
    done: BTreeMap<u64, Fetched>,
    /// Committed and not yet taken by recovery.
    spooled: BTreeSet<u64>,
    ended: bool,
    /// Recovery went where this prefetcher does not follow: another timeline, or back (a
    /// restarted server replays from its last restartpoint). The next call starts a new one.
    left: bool,
    kept: usize,
    published: Vec<String>,
}

impl State {
    /// Move `pos` to where recovery is; true when it moved. Segments it passed are dropped.
    fn follow(&mut self, sp: &Spooled, tli: TimeLineID) -> bool {
        let taken = self.spooled.iter().copied().filter(|s| !sp.dir.file(&sp.name(tli, *s)).exists()).max();
        let wanted = match sp.take_wanted() {
            Some((t, s)) if t != tli || s <= self.pos => {
                self.left = true;
                None
            }
            Some((_, s)) => Some(s),
            None => None,
        };
        let pos = self.pos.max(taken.unwrap_or(0)).max(wanted.unwrap_or(0));
        if pos == self.pos {
            return false;
        }
        self.pos = pos;
        for s in self.spooled.iter().copied().filter(|s| *s <= pos).collect::<Vec<_>>() {
            self.spooled.remove(&s);
            sp.discard(&sp.name(tli, s));
        }
        for s in self.done.keys().copied().filter(|s| *s <= pos).collect::<Vec<_>>() {
            self.done.remove(&s);
            sp.discard(&sp.name(tli, s));
        }
        self.next = self.next.max(pos + 1);
        self.commit_next = self.commit_next.max(pos + 1);
        true
    }

    /// Commit the fetched segments that are next in order; the first one missing or failing
    /// ends prefetching.
    fn commit(&mut self, sp: &Spooled, tli: TimeLineID) {
        while let Some(fetched) = self.done.remove(&self.commit_next) {
            let name = sp.name(tli, self.commit_next);
            let committed = !self.ended
                && match fetched {
                    Fetched::Already => true,
                    Fetched::Checked => {
                        sp.commit(&name).is_ok() && {
                            self.kept += 1;
                            true
                        }
                    }
                    Fetched::Failed => false,
                };
            if committed {
                self.spooled.insert(self.commit_next);
            } else {
                self.ended = true;
                sp.discard(&name);
            }
            self.commit_next += 1;
        }
        if self.ended {
            for s in std::mem::take(&mut self.done).into_keys() {
                sp.discard(&sp.name(tli, s));
            }
        }
    }

    /// Write the names in flight (fetching or waiting to commit) when they changed.
    fn publish(&mut self, sp: &Spooled, tli: TimeLineID) {
        let names: Vec<String> = self.in_flight.iter().chain(self.done.keys()).map(|s| sp.name(tli, *s)).collect();
        if names != self.published {
            let _ = sp.dir.write_json(FETCHING, &names);
            self.published = names;
        }
    }
}
