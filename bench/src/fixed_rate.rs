//! One latency run at a fixed request rate: the workspace's open-loop generator
//! ([`meridian_drill::openloop`], shared with `meridian drill`) with the benchmark's reading of
//! it: latency percentiles of the recorded period, the generator's own share, its CPU cost.
//!
//! Flow:
//! 1. `connections` keep-alive HTTP/1.1 connections are opened up front, on one current-thread
//!    tokio runtime, so the generator uses about one core like `wrk -t1`; requests rotate over
//!    them, and a connection the server closed is reopened (nginx closes one every 1000
//!    requests). A connection that cannot be reopened is retired: the others take its share.
//! 2. Request `k` is due at `start + k / rate` (µs-precise timerfd); a request waits for a free
//!    connection when all are busy, and that wait counts as latency: latency runs from the due
//!    time to the end of the answer, so a stalled server cannot hide the requests queued behind
//!    it.
//! 3. Requests due during the warm-up are sent but not recorded. The run is bounded: after the
//!    schedule ends, answers get [`GRACE`]; requests still missing then are reported as
//!    unfinished.
//!
//! Only a complete 2xx answer counts as ok.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meridian_drill::openloop::{
    self, Endpoint, Finished, Generator, OnRefused, Recorder, Schedule,
};
use tokio::time::Instant;

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

/// What the recorder collects while the run goes on.
#[derive(Default)]
struct Samples {
    /// Requests due in the recorded period.
    due: u64,
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the generator's runtime")?;
    rt.block_on(drive(cfg))
}

/// Sorts each finished request into the recorded period or the warm-up.
struct Window {
    from: Instant,
    to: Instant,
    samples: Mutex<Samples>,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        // Only counters and pushes under the lock: a poisoned lock still holds consistent data.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Recorder for Window {
    fn due(&self, due: Instant) {
        if self.contains(due) {
            self.samples().due += 1;
        }
    }

    fn finished(&self, f: Finished) {
        let ok = f.result.is_ok_and(|a| a.status.is_success());
        let mut s = self.samples();
        if ok {
            s.total_ok += 1;
        } else {
            s.total_errors += 1;
        }
        if ok && self.contains(f.done) {
            s.done_in_window += 1;
        }
        match (self.contains(f.due), ok, f.sent) {
            (true, true, Some(sent)) => {
                s.latency_ns.push((f.done - f.due).as_nanos() as u64);
                s.send_delay_ns.push((sent - f.due).as_nanos() as u64);
            }
            (true, _, _) => s.errors += 1,
            (false, _, _) => {} // warm-up
        }
    }
}

async fn drive(cfg: &Config) -> anyhow::Result<Report> {
    let generator = Generator::connect(openloop::Config {
        endpoint: Endpoint::loopback(cfg.addr, &cfg.host)?,
        rate: cfg.rate,
        max_in_flight: cfg.connections,
        open_up_front: true,
        connect_timeout: Duration::from_secs(5),
        request_timeout: None,
        grace: Some(GRACE),
        on_refused: OnRefused::RetireSlot,
    })
    .await?;
    // The schedule starts a moment after the connections are open.
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + cfg.warmup;
    let to = from + cfg.duration;
    let window = Arc::new(Window {
        from,
        to,
        samples: Mutex::new(Samples::default()),
    });
    let cpu_before = own_cpu_ticks();
    let schedule = Schedule {
        start,
        stop: to,
        hard_stop: to,
    };
    let running = generator.start(schedule, window.clone());
    running.done.await.context("the generator task failed")??;
    let cpu_after = own_cpu_ticks();
    let samples = std::mem::take(&mut *window.samples());
    Ok(report(cfg, samples, (cpu_before, cpu_after)))
}

/// The figures of one run from what the recorder collected.
fn report(cfg: &Config, mut s: Samples, cpu: (Option<u64>, Option<u64>)) -> Report {
    let ok = s.latency_ns.len() as u64;
    s.latency_ns.sort_unstable();
    s.send_delay_ns.sort_unstable();
    let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1_000.0;
    Report {
        due: s.due,
        ok,
        errors: s.errors,
        unfinished: s.due.saturating_sub(ok + s.errors),
        p50_us: us(&s.latency_ns, 0.50),
        p99_us: us(&s.latency_ns, 0.99),
        p999_us: us(&s.latency_ns, 0.999),
        max_us: us(&s.latency_ns, 1.0),
        send_delay_p99_us: us(&s.send_delay_ns, 0.99),
        send_delay_p50_us: us(&s.send_delay_ns, 0.50),
        generator_cpu_us_per_req: match cpu {
            // Clock ticks are 1/100 s.
            (Some(b), Some(a)) if s.total_ok + s.total_errors > 0 => {
                a.saturating_sub(b) as f64 * 10_000.0 / (s.total_ok + s.total_errors) as f64
            }
            _ => 0.0,
        },
        answered_per_s: s.done_in_window as f64 / cfg.duration.as_secs_f64(),
        total_ok: s.total_ok,
        total_errors: s.total_errors,
    }
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
