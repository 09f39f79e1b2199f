//! An open-loop HTTP/1.1 load generator: requests are due on a fixed schedule, independent of
//! how fast answers come back, and latency is measured from the time a request was *due*, not
//! from the time it was sent. A server that stalls therefore cannot hide the requests that
//! queued up behind the stall (the "coordinated omission" of closed-loop tools such as wrk).
//!
//! Flow:
//! 1. `connections` keep-alive HTTP/1.1 connections are opened up front (hyper client, one
//!    current-thread tokio runtime, so the generator uses about one core like `wrk -t1`).
//! 2. A pacer task on the same thread computes request `k`'s due time `start + k / rate`, waits
//!    for it on a `timerfd` (tokio's own timers have 1 ms granularity; a timerfd in the runtime's
//!    epoll set wakes within microseconds and needs no second thread to hand requests over), and
//!    queues the due time.
//! 3. Whichever connection is free takes the oldest due time, sends `GET /`, reads the whole
//!    answer and records `answer complete − due`. If every connection is busy the request waits
//!    in the queue and that wait counts as latency.
//!    A connection the server closed is reopened (nginx closes one every 1000 requests).
//! 4. Requests due during the warm-up are not recorded. The run is bounded: after the schedule
//!    ends, answers get [`GRACE`]; requests still missing then are reported as unfinished.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long answers may take after the last request was due.
pub const GRACE: Duration = Duration::from_secs(5);

/// One open-loop run.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub host: String,
    /// Requests per second.
    pub rate: f64,
    pub connections: usize,
    /// Requests due in this first period are sent but not recorded.
    pub warmup: Duration,
    /// The recorded period.
    pub duration: Duration,
}

/// What a run measured. Latencies are in µs, from due time to the end of the answer.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests due in the recorded period.
    pub due: u64,
    /// Successful (2xx) answers to those.
    pub ok: u64,
    /// Failed requests or non-2xx answers.
    pub errors: u64,
    /// Requests with no answer within the grace period.
    pub unfinished: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// 99th percentile of due → handed to the connection (pacer lateness plus queueing for a
    /// free connection): the generator's own share of the latency when the server keeps up.
    pub send_delay_p99_us: f64,
    /// Median of due → handed to the connection.
    pub send_delay_p50_us: f64,
    /// The generator's own CPU time (user + system, whole process) per request: what sending
    /// at this rate costs the machine besides the target.
    pub generator_cpu_us_per_req: f64,
    /// Answers completed inside the recorded period, per second.
    pub answered_per_s: f64,
    /// Successful answers over the whole run, warm-up included (for CPU per request).
    pub total_ok: u64,
    /// Failed requests over the whole run, warm-up included.
    pub total_errors: u64,
}

#[derive(Default)]
struct Samples {
    latency_ns: Vec<u64>,
    send_delay_ns: Vec<u64>,
    errors: u64,
    total_ok: u64,
    total_errors: u64,
    /// Answers completed inside the recorded period.
    done_in_window: u64,
}

/// Runs the schedule against `cfg.addr` and reports latency percentiles.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        bail!(
            "the request rate must be a positive number, got {}",
            cfg.rate
        );
    }
    if cfg.connections == 0 {
        bail!("at least one connection is needed");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the generator's runtime")?;
    rt.block_on(drive(cfg))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn drive(cfg: &Config) -> anyhow::Result<Report> {
    let mut senders = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        senders.push(connect(cfg.addr).await?);
    }
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + cfg.warmup;
    let to = from + cfg.duration;
    let total = ((cfg.warmup + cfg.duration).as_secs_f64() * cfg.rate).ceil() as u64;
    let cpu_before = own_cpu_ticks();
    let pacer = tokio::spawn(pace(tx, start, cfg.rate, total, (from, to)));

    let host: Arc<str> = cfg.host.as_str().into();
    let mut tasks = tokio::task::JoinSet::new();
    for send in senders {
        tasks.spawn(worker(
            cfg.addr,
            send,
            rx.clone(),
            host.clone(),
            (from, to),
            samples.clone(),
        ));
    }
    let deadline = tokio::time::Instant::from_std(to + GRACE);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    tasks.abort_all();
    let cpu_after = own_cpu_ticks();
    // The pacer has finished (workers end only once it drops the queue) unless the deadline
    // cut them off, in which case it is long past its schedule too.
    let due = tokio::time::timeout(Duration::from_secs(1), pacer)
        .await
        .context("the pacer did not finish")?
        .context("the pacer task failed")??;

    let mut s = std::mem::take(
        &mut *samples
            .lock()
            .map_err(|_| anyhow::anyhow!("sample lock poisoned"))?,
    );
    let ok = s.latency_ns.len() as u64;
    s.latency_ns.sort_unstable();
    s.send_delay_ns.sort_unstable();
    let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1_000.0;
    Ok(Report {
        due,
        ok,
        errors: s.errors,
        unfinished: due.saturating_sub(ok + s.errors),
        p50_us: us(&s.latency_ns, 0.50),
        p99_us: us(&s.latency_ns, 0.99),
        p999_us: us(&s.latency_ns, 0.999),
        max_us: us(&s.latency_ns, 1.0),
        send_delay_p99_us: us(&s.send_delay_ns, 0.99),
        send_delay_p50_us: us(&s.send_delay_ns, 0.50),
        generator_cpu_us_per_req: match (cpu_before, cpu_after) {
            // Clock ticks are 1/100 s.
            (Some(b), Some(a)) if s.total_ok + s.total_errors > 0 => {
                a.saturating_sub(b) as f64 * 10_000.0 / (s.total_ok + s.total_errors) as f64
            }
            _ => 0.0,
        },
        answered_per_s: s.done_in_window as f64 / cfg.duration.as_secs_f64(),
        total_ok: s.total_ok,
        total_errors: s.total_errors,
    })
}

/// The value below which a fraction `q` of the sorted samples lie (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// User + system CPU ticks of this whole process.
fn own_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A timerfd as tokio's `AsyncFd` wants it: owns the descriptor for its whole life.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Queues request `k`'s due time at that time, for `total` requests; returns how many requests
/// fell due in the recorded window `[from, to)`. Dropping the queue sender at the end tells the
/// workers to finish.
async fn pace(
    tx: mpsc::UnboundedSender<Instant>,
    start: Instant,
    rate: f64,
    total: u64,
    (from, to): (Instant, Instant),
) -> anyhow::Result<u64> {
    let fd = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .context("creating a timerfd")?;
    // tokio 1.54 deprecates the safe constructor because an arbitrary `AsRawFd` type could close
    // or swap its descriptor while registered; `Timer` owns its timerfd and never does either,
    // and the workspace forbids the `unsafe` replacement.
    #[allow(deprecated)]
    let timer =
        AsyncFd::with_interest(Timer(fd), Interest::READABLE).context("registering the timerfd")?;
    let mut in_window = 0;
    for k in 0..total {
        let due = start + Duration::from_nanos((k as f64 * 1e9 / rate) as u64);
        let now = Instant::now();
        if due > now {
            // A zero expiry would disarm the timer; `due > now` keeps it positive.
            timer
                .get_ref()
                .0
                .set(
                    Expiration::OneShot(TimeSpec::from_duration(due - now)),
                    TimerSetTimeFlags::empty(),
                )
                .context("arming the timerfd")?;
            loop {
                let mut ready = timer.readable().await?;
                // Reading the expiry count rearms readiness; EAGAIN means not yet expired.
                match ready.try_io(|t| t.get_ref().0.wait().map_err(std::io::Error::from)) {
                    Ok(result) => {
                        result?;
                        break;
                    }
                    Err(_would_block) => continue,
                }
            }
        }
        if tx.send(due).is_err() {
            break;
        }
        if due >= from && due < to {
            in_window += 1;
        }
    }
    Ok(in_window)
}

type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

async fn worker(
    addr: SocketAddr,
    mut send: SendRequest<Empty<Bytes>>,
    rx: Queue,
    host: Arc<str>,
    (from, to): (Instant, Instant),
    samples: Arc<Mutex<Samples>>,
) {
    loop {
        let due = {
            let mut q = rx.lock().await;
            q.recv().await
        };
        let Some(due) = due else { return };
        let recorded = due >= from && due < to;
        // A server may close a keep-alive connection after N requests (nginx's
        // `keepalive_requests 1000`); open a new one as a browser or wrk would. The reconnect
        // time counts as latency of the request that waits for it.
        let mut ready = send.ready().await.is_ok();
        if !ready && let Ok(fresh) = connect(addr).await {
            send = fresh;
            ready = send.ready().await.is_ok();
        }
        let sent = Instant::now();
        let outcome = if ready {
            match hyper::Request::get("/")
                .header(hyper::header::HOST, &*host)
                .body(Empty::<Bytes>::new())
            {
                Ok(req) => match send.send_request(req).await {
                    Ok(resp) => {
                        let success = resp.status().is_success();
                        success && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            }
        } else {
            false
        };
        let done = Instant::now();
        if let Ok(mut s) = samples.lock() {
            if outcome {
                s.total_ok += 1;
            } else {
                s.total_errors += 1;
            }
            if outcome && done >= from && done < to {
                s.done_in_window += 1;
            }
            match (recorded, outcome) {
                (true, true) => {
                    s.latency_ns.push((done - due).as_nanos() as u64);
                    s.send_delay_ns.push((sent - due).as_nanos() as u64);
                }
                (true, false) => s.errors += 1,
                (false, _) => {} // warm-up
            }
        }
        if !ready {
            // The server refuses new connections; the other connections take over this share.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.999), 7);
    }

    /// A server that answers each request 20 ms late, one at a time on one connection: a
    /// closed-loop client would see ~20 ms; an open-loop client at 200 req/s must see the queue
    /// build up (each request waits for all earlier ones), so p99 is far above 20 ms.
    #[test]
    fn queueing_behind_a_slow_server_counts_as_latency() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let mut pending = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    std::thread::sleep(Duration::from_millis(20));
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .unwrap();
                }
            }
        });
        let report = run(&Config {
            addr,
            host: "t".into(),
            rate: 200.0,
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
        })
        .unwrap();
        // 100 requests due at 5 ms intervals, served every 20 ms: the last one waits ~1.5 s.
        assert_eq!(report.due, 100);
        assert_eq!(report.ok + report.errors + report.unfinished, 100);
        assert!(report.ok >= 90, "{report:?}");
        assert!(report.p50_us > 20_000.0, "{report:?}");
        assert!(report.p99_us > 1_000_000.0, "{report:?}");
        drop(server);
    }

    /// A server that closes every connection after three answers (`Connection: close`): the
    /// generator reopens connections and no request is lost.
    #[test]
    fn closed_keep_alive_connections_are_reopened() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(200) {
                let mut s = stream.unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                let mut served = 0;
                while served < 3 {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        served += 1;
                        let close = if served == 3 {
                            "Connection: close\r\n"
                        } else {
                            ""
                        };
                        let _ = s.write_all(
                            format!("HTTP/1.1 200 OK\r\n{close}Content-Length: 2\r\n\r\nok")
                                .as_bytes(),
                        );
                    }
                }
            }
        });
        let report = run(&Config {
            addr,
            host: "t".into(),
            rate: 200.0,
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
        })
        .unwrap();
        assert_eq!(report.due, 60);
        assert_eq!(report.ok, 60, "{report:?}");
        assert_eq!(report.errors + report.unfinished, 0);
    }

    /// A prompt server at a low rate: latencies are small and every request is answered.
    #[test]
    fn prompt_server_low_latency() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let mut s = stream.unwrap();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let report = run(&Config {
            addr,
            host: "t".into(),
            rate: 1000.0,
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
        })
        .unwrap();
        assert_eq!(report.due, 500);
        assert_eq!(report.ok, 500, "{report:?}");
        assert_eq!(report.errors + report.unfinished, 0);
        assert!(report.p50_us < 20_000.0, "{report:?}");
    }
}
