//! One open-loop HTTP/1.1 load generator, for `meridian drill` (its load through the Gateway,
//! [`crate::load`]) and for `meridian-bench` (latency at fixed rates).
//!
//! Requests are due on a fixed schedule, independent of how fast answers come back, and latency
//! runs from the time a request was *due*, not from the time it was sent. A server that stalls
//! therefore cannot hide the requests that queued up behind the stall (the "coordinated
//! omission" of closed-loop tools such as wrk).
//!
//! ```text
//!  Generator::connect: endpoint checked; with open_up_front, max_in_flight connections opened
//!  Generator::start ─► pacer task: request k is due at start + k / rate (timerfd, µs precise),
//!       │                until the stop time (movable while the load runs, never past the
//!       │                hard stop); Recorder::due(k's due time)
//!       └─► request task k: waits for one of max_in_flight slots ─► oldest idle keep-alive
//!           connection, or a new one ─► GET, whole answer read ─► Recorder::finished
//!  after the schedule: every request task ends (each within its request_timeout, if set), or
//!  at stop + grace the rest are abandoned and counted as unfinished
//! ```
//!
//! 1. Latency and the per-request timeout both run from the due time: when every slot is busy a
//!    request waits, and the wait counts. With a timeout every task ends by `due + timeout`, so
//!    the whole load by `stop + timeout`.
//! 2. A connection that cannot be opened is a [`Failure::Connect`] of that request. With
//!    [`OnRefused::RetireSlot`] the slot is given up as well (the benchmark: the other
//!    connections take over its share, as a closed-loop tool's would); when no slot is left the
//!    schedule ends.
//! 3. What a request's answer *means* is the caller's business: the drill reads who served it,
//!    the benchmark only whether it was a 2xx. Both get every [`Finished`] request through their
//!    [`Recorder`].
//!
//! Owns: pacing, slots, connections, the `GET` itself. Depends on tokio, hyper and nix (timerfd)
//! only, so the benchmark can use it without any of the drill's Kubernetes side.

mod pacer;
mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::{HeaderMap, StatusCode};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use self::pacer::Pacer;
pub use self::pool::Endpoint;
use self::pool::Pool;

/// Why a load could not start (or stopped early).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL is not one the load can send to.
    #[error("URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The Host header value is not a valid header value.
    #[error("Host {host:?} is not a valid header value")]
    HostHeader {
        /// The value as given.
        host: String,
    },
    /// The request rate is not a positive number.
    #[error("the request rate must be a positive number, got {0}")]
    Rate(f64),
    /// No request could ever be in flight.
    #[error("at least one request in flight (one connection) is needed")]
    NoSlots,
    /// A connection opened up front could not be made.
    #[error("connecting to {address}")]
    Connect {
        /// `host:port`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A connection opened up front did not connect in time.
    #[error("connecting to {address} timed out after {after:?}")]
    ConnectTimeout {
        /// `host:port`.
        address: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("HTTP/1.1 handshake with {address}")]
    Handshake {
        /// `host:port`.
        address: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The pacer's timerfd failed.
    #[error("the pacer's timer")]
    Timer(#[source] std::io::Error),
    /// The generator's task panicked or was cancelled.
    #[error("the load generator's task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// What to do when a connection cannot be opened (besides failing that request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefused {
    /// Keep the slot: the next request tries again (the drill: the Gateway may come back).
    KeepSlot,
    /// Give the slot up for the rest of the run (the benchmark).
    RetireSlot,
}

/// How the generator sends.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where `GET`s go.
    pub endpoint: Endpoint,
    /// Requests per second.
    pub rate: f64,
    /// Requests in flight at most, which is also the most connections open; later requests wait
    /// for a slot (and their wait counts as latency).
    pub max_in_flight: usize,
    /// Open `max_in_flight` connections before the schedule starts (else on demand).
    pub open_up_front: bool,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// Per-request deadline, from the due time: past it the request is a [`Failure::Timeout`].
    pub request_timeout: Option<Duration>,
    /// After the stop time, how long requests still running may take before they are abandoned
    /// (counted in [`Summary::unfinished`], not recorded).
    pub grace: Option<Duration>,
    /// See [`OnRefused`].
    pub on_refused: OnRefused,
}

/// When requests fall due: from `start` (may be in the future) until `stop`, which can be moved
/// while the load runs but never past `hard_stop`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Request 0 is due here.
    pub start: Instant,
    /// No request is due at or after this (movable through [`Running::stop`]).
    pub stop: Instant,
    /// The stop time never moves past this.
    pub hard_stop: Instant,
}

impl Schedule {
    /// Request `k`'s due time: `start + k / rate`.
    fn due(&self, k: u64, rate: f64) -> Instant {
        self.start + Duration::from_nanos((k as f64 * 1e9 / rate) as u64)
    }
}

/// A complete answer: status, headers and the whole body.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    Connect,
    /// No complete answer before the per-request deadline.
    Timeout,
    /// The request or the answer broke off on an open connection.
    Broken,
}

/// One request, done.
#[derive(Clone, Debug)]
pub struct Finished {
    /// When it was due.
    pub due: Instant,
    /// When it was handed to a connection (`None` if it never was).
    pub sent: Option<Instant>,
    /// When the answer was complete or the request failed.
    pub done: Instant,
    /// The answer, or why there is none.
    pub result: Result<Answer, Failure>,
}

/// Receives what the generator does; called from its tasks, so it must be quick and not block.
pub trait Recorder: Send + Sync + 'static {
    /// Request due at `due` is being sent now (called in schedule order).
    fn due(&self, due: Instant) {
        let _ = due;
    }
    /// A request finished (in completion order). Abandoned requests are never reported.
    fn finished(&self, finished: Finished);
}

/// What a whole run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests that fell due and were sent.
    pub scheduled: u64,
    /// Requests abandoned: still running at stop + grace, or never sent because every slot was
    /// retired.
    pub unfinished: u64,
}

/// A running load.
pub struct Running {
    /// Moves the stop time (clamped to the hard stop). Dropping it keeps the stop time as it is.
    pub stop: watch::Sender<Instant>,
    /// Ends when the last request has finished or been abandoned.
    pub done: JoinHandle<Result<Summary, LoadError>>,
}

/// A load generator, ready to start.
pub struct Generator {
    shared: Arc<Shared>,
    pacer: Pacer,
}

/// What every request task needs.
struct Shared {
    cfg: Config,
    pool: Pool,
    slots: Semaphore,
    /// Slots not retired (see [`OnRefused::RetireSlot`]).
    live_slots: AtomicUsize,
    /// Requests that never got a slot because every slot was retired.
    abandoned: AtomicU64,
}

impl Generator {
    /// Checks the settings, sets up the pacer and (with `open_up_front`) the connections.
    /// Must run inside the tokio runtime that will run the load.
    pub async fn connect(cfg: Config) -> Result<Self, LoadError> {
        if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
            return Err(LoadError::Rate(cfg.rate));
        }
        if cfg.max_in_flight == 0 {
            return Err(LoadError::NoSlots);
        }
        let pacer = Pacer::new().map_err(LoadError::Timer)?;
        let pool = Pool::new(cfg.endpoint.clone(), cfg.connect_timeout);
        if cfg.open_up_front {
            pool.open_up_front(cfg.max_in_flight).await?;
        }
        let shared = Arc::new(Shared {
            slots: Semaphore::new(cfg.max_in_flight),
            live_slots: AtomicUsize::new(cfg.max_in_flight),
            abandoned: AtomicU64::new(0),
            cfg,
            pool,
        });
        Ok(Self { shared, pacer })
    }

    /// Starts sending on `schedule`, telling `recorder` what happens.
    pub fn start(self, schedule: Schedule, recorder: Arc<dyn Recorder>) -> Running {
        let (stop, stop_rx) = watch::channel(schedule.stop.min(schedule.hard_stop));
        let done = tokio::spawn(self.run(schedule, stop_rx, recorder));
        Running { stop, done }
    }

    async fn run(
        self,
        schedule: Schedule,
        mut stop_rx: watch::Receiver<Instant>,
        recorder: Arc<dyn Recorder>,
    ) -> Result<Summary, LoadError> {
        let mut tasks = JoinSet::new();
        let paced = self
            .pace(&schedule, &mut stop_rx, &recorder, &mut tasks)
            .await;
        let ended = (*stop_rx.borrow()).min(schedule.hard_stop);
        let unfinished = self.finish(&mut tasks, ended).await;
        Ok(Summary {
            scheduled: paced?,
            unfinished: unfinished + self.shared.abandoned.load(Ordering::Relaxed),
        })
    }

    /// Spawns request `k` at its due time until the stop time; returns how many were sent.
    async fn pace(
        &self,
        schedule: &Schedule,
        stop_rx: &mut watch::Receiver<Instant>,
        recorder: &Arc<dyn Recorder>,
        tasks: &mut JoinSet<()>,
    ) -> Result<u64, LoadError> {
        let rate = self.shared.cfg.rate;
        let mut movable = true;
        let mut k = 0u64;
        // Bounded: due times grow with k and the hard stop ends the loop.
        loop {
            let due = schedule.due(k, rate);
            let stop_at = (*stop_rx.borrow_and_update()).min(schedule.hard_stop);
            if due >= stop_at || self.shared.live_slots.load(Ordering::Relaxed) == 0 {
                return Ok(k);
            }
            tokio::select! {
                r = self.pacer.wait_until(due) => r.map_err(LoadError::Timer)?,
                // The stop time moved: check the due time against it again.
                changed = stop_rx.changed(), if movable => {
                    movable = changed.is_ok();
                    reap(tasks);
                    if due >= (*stop_rx.borrow()).min(schedule.hard_stop) {
                        return Ok(k);
                    }
                    self.pacer.wait_until(due).await.map_err(LoadError::Timer)?;
                }
            }
            recorder.due(due);
            tasks.spawn(self.shared.clone().request(due, recorder.clone()));
            reap(tasks);
            k += 1;
        }
    }

    /// Waits for the request tasks (until `ended + grace`, if a grace is set); returns how many
    /// were abandoned.
    async fn finish(&self, tasks: &mut JoinSet<()>, ended: Instant) -> u64 {
        match self.shared.cfg.grace {
            None => while tasks.join_next().await.is_some() {},
            Some(grace) => {
                let deadline = ended + grace;
                while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
                }
            }
        }
        let unfinished = tasks.len() as u64;
        tasks.abort_all();
        unfinished
    }
}

impl Shared {
    /// One request: within its deadline, if there is one; reported to the recorder unless it
    /// was abandoned.
    async fn request(self: Arc<Self>, due: Instant, recorder: Arc<dyn Recorder>) {
        let finished = match self.cfg.request_timeout {
            None => self.attempt(due).await,
            Some(timeout) => {
                match tokio::time::timeout_at(due + timeout, self.attempt(due)).await {
                    Ok(f) => f,
                    Err(_) => Some(Finished {
                        due,
                        sent: None,
                        done: Instant::now(),
                        result: Err(Failure::Timeout),
                    }),
                }
            }
        };
        match finished {
            Some(f) => recorder.finished(f),
            None => {
                self.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits for a slot and a connection, then sends. `None`: every slot was retired, the
    /// request was never sent.
    async fn attempt(&self, due: Instant) -> Option<Finished> {
        let failed = |result| Finished {
            due,
            sent: None,
            done: Instant::now(),
            result: Err(result),
        };
        // Closed once the last slot is retired: nothing will ever send this request.
        let slot = self.slots.acquire().await.ok()?;
        let conn = match self.pool.check_out().await {
            Ok(conn) => conn,
            Err(_) => {
                if self.cfg.on_refused == OnRefused::RetireSlot {
                    slot.forget();
                    if self.live_slots.fetch_sub(1, Ordering::Relaxed) == 1 {
                        self.slots.close();
                    }
                }
                return Some(failed(Failure::Connect));
            }
        };
        let sent = Instant::now();
        let result = self.pool.get(conn).await;
        Some(Finished {
            due,
            sent: Some(sent),
            done: Instant::now(),
            result,
        })
    }
}

/// Reaps finished tasks so the set does not grow with the whole run.
fn reap(tasks: &mut JoinSet<()>) {
    while tasks.try_join_next().is_some() {}
}

/// One `GET` to `endpoint` on a connection of its own, with no schedule (a probe).
pub async fn get_once(endpoint: &Endpoint, connect_timeout: Duration) -> Result<Answer, Failure> {
    Pool::new(endpoint.clone(), connect_timeout)
        .get_once()
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn endpoint_takes_host_from_the_url_unless_given() {
        let url = |s: &str| s.parse::<hyper::Uri>().unwrap();
        let e = Endpoint::from_url(&url("http://127.0.0.1:80/x?y=1"), None).unwrap();
        assert_eq!(e.address(), "127.0.0.1:80");
        let req = e.request();
        assert_eq!(req.uri(), "/x?y=1");
        assert_eq!(req.headers()[hyper::header::HOST], "127.0.0.1");
        let e = Endpoint::from_url(&url("http://[::1]:8080"), None).unwrap();
        assert_eq!(e.address(), "[::1]:8080");
        assert_eq!(e.request().headers()[hyper::header::HOST], "[::1]:8080");
        assert_eq!(e.request().uri(), "/");
        let e = Endpoint::from_url(&url("http://gw/"), Some("demo.example")).unwrap();
        assert_eq!(e.address(), "gw:80");
        assert_eq!(e.request().headers()[hyper::header::HOST], "demo.example");
        let bad = Endpoint::from_url(&url("https://gw/"), None).unwrap_err();
        assert!(bad.to_string().contains("TLS"), "{bad}");
        let bad = Endpoint::from_url(&url("http://gw/"), Some("a\nb")).unwrap_err();
        assert!(matches!(bad, LoadError::HostHeader { .. }), "{bad}");
    }

    /// Keeps every due time and every result.
    #[derive(Default)]
    struct Keep {
        due: Mutex<Vec<Instant>>,
        finished: Mutex<Vec<Finished>>,
    }

    impl Recorder for Keep {
        fn due(&self, due: Instant) {
            self.due.lock().unwrap().push(due);
        }
        fn finished(&self, f: Finished) {
            self.finished.lock().unwrap().push(f);
        }
    }

    /// A loopback port nothing listens on (bound, then closed): connections are refused.
    fn refusing_endpoint() -> Endpoint {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Endpoint::loopback(addr, "t").unwrap()
    }

    fn config(endpoint: Endpoint, on_refused: OnRefused) -> Config {
        Config {
            endpoint,
            rate: 200.0,
            max_in_flight: 2,
            open_up_front: false,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Some(Duration::from_secs(1)),
            grace: None,
            on_refused,
        }
    }

    /// 200 req/s for 250 ms: 50 requests due. Kept slots fail every one as a connect error;
    /// retired slots end the schedule once both are gone.
    #[tokio::test]
    async fn refused_connections_fail_requests_and_retire_slots_when_asked() {
        for (policy, want_all) in [(OnRefused::KeepSlot, true), (OnRefused::RetireSlot, false)] {
            let keep = Arc::new(Keep::default());
            let generator = Generator::connect(config(refusing_endpoint(), policy))
                .await
                .unwrap();
            let start = Instant::now();
            let stop = start + Duration::from_millis(250);
            let running = generator.start(
                Schedule {
                    start,
                    stop,
                    hard_stop: stop,
                },
                keep.clone(),
            );
            let summary = tokio::time::timeout(Duration::from_secs(5), running.done)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let finished = keep.finished.lock().unwrap();
            assert_eq!(summary.scheduled as usize, keep.due.lock().unwrap().len());
            assert_eq!(
                finished.len() as u64 + summary.unfinished,
                summary.scheduled,
                "{policy:?}: every request recorded or abandoned"
            );
            assert!(
                finished
                    .iter()
                    .all(|f| f.result.as_ref().err() == Some(&Failure::Connect))
            );
            if want_all {
                assert_eq!(summary.scheduled, 50, "{policy:?}: every request is sent");
                assert_eq!(summary.unfinished, 0);
            } else {
                // Both slots retire on the first refusals; the schedule ends at the next due time.
                assert_eq!(finished.len(), 2, "{policy:?}: {summary:?}");
                assert!(summary.scheduled < 10, "{policy:?}: {summary:?}");
            }
        }
    }

    /// Moving the stop time earlier ends the schedule there; past the hard stop it is clamped.
    #[tokio::test]
    async fn the_stop_time_moves_but_never_past_the_hard_stop() {
        let keep = Arc::new(Keep::default());
        let generator = Generator::connect(config(refusing_endpoint(), OnRefused::KeepSlot))
            .await
            .unwrap();
        let start = Instant::now();
        let running = generator.start(
            Schedule {
                start,
                stop: start + Duration::from_secs(10),
                hard_stop: start + Duration::from_millis(300),
            },
            keep.clone(),
        );
        // Move it later: the hard stop still wins.
        running.stop.send(start + Duration::from_secs(20)).unwrap();
        let summary = tokio::time::timeout(Duration::from_secs(5), running.done)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(summary.scheduled, 60, "300 ms at 200 req/s");
        let late = (keep.due.lock().unwrap().iter())
            .filter(|d| **d >= start + Duration::from_millis(300))
            .count();
        assert_eq!(late, 0, "nothing due at or after the hard stop");

        let keep = Arc::new(Keep::default());
        let generator = Generator::connect(config(refusing_endpoint(), OnRefused::KeepSlot))
            .await
            .unwrap();
        let start = Instant::now();
        let running = generator.start(
            Schedule {
                start,
                stop: start + Duration::from_secs(10),
                hard_stop: start + Duration::from_secs(10),
            },
            keep.clone(),
        );
        // Move it earlier, to 100 ms: requests 0..20 are due before it.
        running
            .stop
            .send(start + Duration::from_millis(100))
            .unwrap();
        let summary = tokio::time::timeout(Duration::from_secs(5), running.done)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(summary.scheduled, 20);
    }
}
