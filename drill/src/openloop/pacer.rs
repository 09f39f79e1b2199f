//! Waiting for due times on a `timerfd`: tokio's own timers round to 1 ms, a timerfd in the
//! runtime's epoll set wakes within microseconds and needs no second thread to hand requests
//! over. At thousands of requests per second a millisecond of rounding would bunch requests
//! into bursts, which is exactly what an open-loop generator must not do.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A timerfd as tokio's `AsyncFd` wants it: owns the descriptor for its whole life.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Sleeps until a due time with microsecond precision (CLOCK_MONOTONIC, the clock of
/// `Instant`). Needs the real clock: tokio's paused test clock does not move a timerfd.
pub(super) struct Pacer {
    timer: AsyncFd<Timer>,
}

impl Pacer {
    /// A timerfd registered with the current tokio runtime.
    pub(super) fn new() -> std::io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // tokio 1.54 deprecates the safe constructor because an arbitrary `AsRawFd` type could
        // close or swap its descriptor while registered; `Timer` owns its timerfd and never does
        // either, and the workspace forbids the `unsafe` replacement.
        #[allow(deprecated)]
        let timer = AsyncFd::with_interest(Timer(fd), Interest::READABLE)?;
        Ok(Self { timer })
    }

    /// Returns at `due` (at once if it has passed).
    pub(super) async fn wait_until(&self, due: Instant) -> std::io::Result<()> {
        let now = Instant::now();
        if due <= now {
            return Ok(());
        }
        // A zero expiry would disarm the timer; `due > now` keeps it positive.
        self.timer.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(due - now)),
            TimerSetTimeFlags::empty(),
        )?;
        // Bounded: the timer is armed, so it expires; spurious wake-ups only repeat the wait.
        loop {
            let mut ready = self.timer.readable().await?;
            // Reading the expiry count rearms readiness; EAGAIN means not yet expired.
            match ready.try_io(|t| t.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}
