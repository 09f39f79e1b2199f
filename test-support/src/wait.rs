//! Bounded waits on conditions, instead of sleeping "long enough".
//!
//! A test that needs something to have happened polls a check until it holds
//! ([`eventually`], [`eventually_async`]); one that needs something *not* to happen for a while
//! (no write storm, nothing re-sent) asserts the check on every poll of that period
//! ([`holds_for`], [`holds_for_async`]), so it fails at the first breach and says when.
//!
//! A check answers with anything that is an [`Outcome`]: `bool`, `Option<T>` (the value is
//! returned) or `Result<T, E>` (the value is returned; the last error is in the panic message,
//! which says what was seen instead).
//!
//! Polling is on tokio time: on the paused clock a wait costs no wall-clock time, and the
//! interval between polls is what the paused clock advances by. In-process checks (a counter, a
//! watch value) poll every [`SYNC_POLL`]; async checks usually ask a server, so they poll less
//! often ([`ASYNC_POLL`]) and each call is itself bounded ([`CALL_BOUND`], or what is left of
//! the wait).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Interval between polls of a synchronous check.
pub const SYNC_POLL: Duration = Duration::from_millis(20);
/// Interval between polls of an asynchronous check.
pub const ASYNC_POLL: Duration = Duration::from_millis(50);
/// Longest one call of an asynchronous check may take before it counts as "not yet".
pub const CALL_BOUND: Duration = Duration::from_secs(5);

/// What a check answers: done (with a value) or not yet (with what was seen instead).
pub trait Outcome {
    /// What the wait returns once the check holds.
    type Value;
    /// `Ok` when the check holds; `Err` describes what was seen instead.
    fn outcome(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn outcome(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `check` every [`SYNC_POLL`] until it holds, for at most `within`; returns its value.
///
/// # Panics
/// When `within` passes first, naming `what` and the check's last answer.
pub async fn eventually<O: Outcome>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + within;
    loop {
        let last = match check().outcome() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
}

/// [`eventually`] for tests without a runtime (end-to-end tests that drive child processes and
/// `kubectl` synchronously): polls `check` every `every` on the wall clock, for at most `within`.
///
/// # Panics
/// When `within` passes first, naming `what` and the check's last answer.
pub fn eventually_blocking<O: Outcome>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let last = match check().outcome() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(every);
    }
}

/// Polls the async `check` every [`ASYNC_POLL`] until it holds, for at most `within`; returns its
/// value. One call that takes longer than [`CALL_BOUND`] (or than what is left) counts as "not
/// yet".
///
/// # Panics
/// When `within` passes first, naming `what` and the check's last answer.
pub async fn eventually_async<O, F, Fut>(what: &str, within: Duration, mut check: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let deadline = Instant::now() + within;
    loop {
        let bound = CALL_BOUND.min(deadline.saturating_duration_since(Instant::now()));
        let last = match tokio::time::timeout(bound, check()).await {
            Ok(answer) => match answer.outcome() {
                Ok(v) => return v,
                Err(last) => last,
            },
            Err(_) => format!("one check took over {bound:?}"),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(ASYNC_POLL).await;
    }
}

/// Waits until `read` has returned the same value for `quiet` (polled every [`SYNC_POLL`]), for
/// at most `within`; returns that value. For counters that stop moving once the system is idle
/// (writes, passes): the quiet period is what "settled" means, so it is wall time by nature.
///
/// # Panics
/// When the value still changes after `within`, naming `what` and the last two values.
pub async fn settles<T: PartialEq + std::fmt::Debug>(
    what: &str,
    within: Duration,
    quiet: Duration,
    mut read: impl FnMut() -> T,
) -> T {
    let deadline = Instant::now() + within;
    let mut last = read();
    let mut since = Instant::now();
    loop {
        if since.elapsed() >= quiet {
            return last;
        }
        if Instant::now() >= deadline {
            panic!("{what} did not settle within {within:?}; last value {last:?}");
        }
        tokio::time::sleep(SYNC_POLL).await;
        let now = read();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// Asserts that `check` holds on every poll (every [`SYNC_POLL`]) for `period`, the first and
/// the last poll included: the way to say "nothing happens for a while".
///
/// # Panics
/// At the first poll where it does not hold, naming `what`, how far into the period that was and
/// the check's answer.
pub async fn holds_for<O: Outcome>(what: &str, period: Duration, mut check: impl FnMut() -> O) {
    let start = Instant::now();
    let end = start + period;
    loop {
        if let Err(seen) = check().outcome() {
            panic!(
                "{what} stopped holding after {:?} of {period:?}: {seen}",
                start.elapsed()
            );
        }
        let now = Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep(SYNC_POLL.min(end - now)).await;
    }
}

/// [`holds_for`] with an async check, polled every [`ASYNC_POLL`]; a call that takes longer than
/// [`CALL_BOUND`] fails the assertion.
///
/// # Panics
/// As [`holds_for`], and when one call takes too long.
pub async fn holds_for_async<O, F, Fut>(what: &str, period: Duration, mut check: F)
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let start = Instant::now();
    let end = start + period;
    loop {
        let seen = match tokio::time::timeout(CALL_BOUND, check()).await {
            Ok(answer) => answer.outcome().err(),
            Err(_) => Some(format!("one check took over {CALL_BOUND:?}")),
        };
        if let Some(seen) = seen {
            panic!(
                "{what} stopped holding after {:?} of {period:?}: {seen}",
                start.elapsed()
            );
        }
        let now = Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep(ASYNC_POLL.min(end - now)).await;
    }
}

#[cfg(test)]
mod tests {
    //! The waits' own timing, on the paused clock: no test here waits wall-clock time.
    #![allow(clippy::unwrap_used)]
    use std::cell::Cell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_as_soon_as_the_check_holds() {
        let start = Instant::now();
        let polls = Cell::new(0);
        let got = eventually("the third poll", Duration::from_secs(10), || {
            polls.set(polls.get() + 1);
            (polls.get() == 3).then_some(polls.get() * 10)
        })
        .await;
        assert_eq!(got, 30);
        // Two sleeps between three polls, nothing more.
        assert_eq!(start.elapsed(), SYNC_POLL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_gives_up_at_its_bound_with_the_last_answer() {
        let start = Instant::now();
        let polls = Arc::new(AtomicU32::new(0));
        let counted = polls.clone();
        let wait = eventually(
            "a check that never holds",
            Duration::from_secs(1),
            move || {
                let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
                Err::<(), _>(format!("poll {n}"))
            },
        );
        let e = tokio::spawn(wait).await.unwrap_err();
        let msg = panic_message(e.into_panic());
        let polls = polls.load(Ordering::Relaxed);
        assert!(
            msg.contains("a check that never holds")
                && msg.ends_with(&format!("last: poll {polls}")),
            "{msg}"
        );
        // It gave up once the bound had passed, not a poll interval later.
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(
            polls, 51,
            "one poll at the start, then one every 20 ms for 1 s"
        );
    }

    #[test]
    fn the_blocking_wait_returns_the_value_or_panics_with_the_last_answer() {
        let mut n = 0;
        let got = eventually_blocking("n = 3", Duration::from_secs(30), Duration::ZERO, || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            }
        });
        assert_eq!(got, 3);
        let e = std::panic::catch_unwind(|| {
            eventually_blocking("never", Duration::ZERO, Duration::ZERO, || false)
        })
        .unwrap_err();
        assert!(panic_message(e).contains("waiting for never; last: false"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_check_that_hangs_counts_as_not_yet() {
        let calls = Cell::new(0);
        let start = Instant::now();
        eventually_async("the second call", Duration::from_secs(60), || {
            calls.set(calls.get() + 1);
            let first = calls.get() == 1;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                true
            }
        })
        .await;
        assert_eq!(calls.get(), 2);
        assert_eq!(start.elapsed(), CALL_BOUND + ASYNC_POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn settles_returns_once_the_value_stopped_changing_for_the_quiet_period() {
        let start = Instant::now();
        // Changes every 20 ms until 200 ms in, then stays.
        let value =
            move || (start.elapsed().min(Duration::from_millis(200)).as_millis() / 20) as u64;
        let got = settles(
            "the counter",
            Duration::from_secs(10),
            Duration::from_millis(500),
            value,
        )
        .await;
        assert_eq!(got, 10);
        assert_eq!(start.elapsed(), Duration::from_millis(700));

        let start = Instant::now();
        let forever = move || start.elapsed();
        let e = tokio::spawn(async move {
            settles(
                "a clock",
                Duration::from_secs(1),
                Duration::from_millis(100),
                forever,
            )
            .await;
        })
        .await
        .unwrap_err();
        assert!(panic_message(e.into_panic()).contains("a clock did not settle within 1s"));
    }

    #[tokio::test(start_paused = true)]
    async fn holds_for_polls_through_the_whole_period() {
        let start = Instant::now();
        let polls = Cell::new(0);
        holds_for("a steady check", Duration::from_millis(100), || {
            polls.set(polls.get() + 1);
            true
        })
        .await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(polls.get(), 6, "at 0, 20, 40, 60, 80 and 100 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_for_fails_at_the_first_breach() {
        let start = Instant::now();
        let check = move || Instant::now() < start + Duration::from_millis(50);
        let e = tokio::spawn(holds_for("the quiet", Duration::from_secs(10), check))
            .await
            .unwrap_err();
        let msg = panic_message(e.into_panic());
        assert!(
            msg.contains("the quiet stopped holding after 60ms"),
            "{msg}"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn holds_for_async_fails_on_a_breach_and_on_a_hanging_call() {
        let start = Instant::now();
        let check = move || async move {
            if Instant::now() < start + Duration::from_millis(120) {
                Ok(())
            } else {
                Err("written")
            }
        };
        let e = tokio::spawn(holds_for_async("no writes", Duration::from_secs(10), check))
            .await
            .unwrap_err();
        let msg = panic_message(e.into_panic());
        assert!(
            msg.contains("no writes stopped holding after 150ms of 10s: written"),
            "{msg}"
        );

        let hangs = || std::future::pending::<bool>();
        let e = tokio::spawn(holds_for_async("answers", Duration::from_secs(60), hangs))
            .await
            .unwrap_err();
        assert!(panic_message(e.into_panic()).contains("took over 5s"));
    }
}
