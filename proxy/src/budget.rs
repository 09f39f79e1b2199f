//! Retry budget: automatic retries are allowed while they stay under a share of the requests of
//! the last [`WINDOW_SECS`] seconds plus a small floor per second, so a dying region cannot turn
//! every request into several (a retry storm).
//!
//! Lock-free: one bucket per second in a ring; a bucket is reset by whoever first writes to it in
//! a new second. Counts are approximate under races, which a budget tolerates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Window length.
pub const WINDOW_SECS: u64 = 10;
/// Default share of requests that may be retried.
pub const DEFAULT_PERCENT: u32 = 20;
/// Retries per second always allowed.
pub const MIN_PER_SEC: u64 = 3;

#[derive(Default)]
struct Bucket {
    sec: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A proxy-wide retry budget.
pub struct RetryBudget {
    start: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            start: Instant::now(),
            buckets: Default::default(),
        }
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (req, ret) = self.totals();
        f.debug_struct("RetryBudget")
            .field("requests", &req)
            .field("retries", &ret)
            .finish()
    }
}

impl RetryBudget {
    /// Seconds since start, +1 so that 0 marks a never-used bucket.
    fn now_sec(&self) -> u64 {
        self.start.elapsed().as_secs() + 1
    }

    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        let old = b.sec.load(Ordering::Acquire);
        if old != sec
            && b.sec
                .compare_exchange(old, sec, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    fn totals(&self) -> (u64, u64) {
        let now = self.now_sec();
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.sec.load(Ordering::Acquire);
                s != 0 && s + WINDOW_SECS > now
            })
            .fold((0, 0), |(q, r), b| {
                (
                    q + b.requests.load(Ordering::Acquire),
                    r + b.retries.load(Ordering::Acquire),
                )
            })
    }

    /// Counts one request.
    pub fn request(&self) {
        self.bucket(self.now_sec())
            .requests
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one retry from the budget if `percent` % of the window's requests (plus the floor)
    /// allows it.
    pub fn try_retry(&self, percent: u32) -> bool {
        let (requests, retries) = self.totals();
        let allowed = requests * u64::from(percent.min(100)) / 100 + MIN_PER_SEC * WINDOW_SECS;
        if retries >= allowed {
            return false;
        }
        self.bucket(self.now_sec())
            .retries
            .fetch_add(1, Ordering::AcqRel);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_share_plus_floor() {
        let b = RetryBudget::default();
        // No traffic: only the floor (3/s over 10 s).
        let floor = (0..100).filter(|_| b.try_retry(20)).count() as u64;
        assert_eq!(floor, MIN_PER_SEC * WINDOW_SECS);
        // 1000 requests at 20 %: 200 more.
        for _ in 0..1000 {
            b.request();
        }
        let more = (0..1000).filter(|_| b.try_retry(20)).count();
        assert_eq!(more, 200);
        assert!(!b.try_retry(20));
        // A higher percent opens more.
        assert!(b.try_retry(50));
    }
}
