//! `--max-rate`: a shared byte budget across workers (like pg_basebackup's --max-rate).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    rate: u64,
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    pub fn new(bytes_per_second: u64) -> Throttle {
        Throttle { rate: bytes_per_second.max(1), state: Mutex::new((Instant::now(), 0)) }
    }

    /// Account for `n` bytes; sleep if we are ahead of the allowed rate.
    pub fn consume(&self, n: u64) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.1 += n;
            let due = Duration::from_secs_f64(st.1 as f64 / self.rate as f64);
            due.saturating_sub(st.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}
