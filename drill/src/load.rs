//! Open-loop load through the Gateway: a fixed request rate whatever the Gateway does.
//!
//! ```text
//!  scheduler: request i is due at start + i / rate ──► task i (waits for one of `max_in_flight`
//!             permits, sends GET, reads the answer) ──► Sample { at: due time, latency, outcome }
//! ```
//!
//! Latency runs from the *due* time, not from the moment the request left: when the Gateway
//! stalls, requests queue behind the permits and their wait counts (no coordinated omission). The
//! per-request timeout also runs from the due time, so every task ends by `due + timeout` and the
//! whole load by `stop + timeout`. The stop time can be moved while the load runs (the CLI learns
//! the restore moment only from the drill status) but never past the hard stop given at the start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::figures::{FailKind, Outcome, Sample, ServedBy};

pub use meridian_model::headers::SERVED_BY as SERVED_BY_HEADER;

/// What to send and how fast.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://address:port/path`.
    pub url: hyper::Uri,
    /// Host header (the route's hostname), if different from the URL's authority.
    pub host: Option<String>,
    /// Requests per second.
    pub rate: u32,
    /// Per-request deadline, from the due time.
    pub timeout: Duration,
    /// Requests in flight at most; later ones wait (and their wait counts as latency).
    pub max_in_flight: usize,
}

/// Where the load learned who served each answer.
#[derive(Debug, Default)]
pub struct ServedBySource {
    /// From the `x-meridian-served-by` header.
    pub header: AtomicU64,
    /// From the echo backend's JSON body (the header was missing).
    pub body: AtomicU64,
    /// Not known.
    pub unknown: AtomicU64,
}

/// A running load.
pub struct Load {
    /// Samples as requests finish.
    pub samples: mpsc::UnboundedReceiver<Sample>,
    /// Moves the stop time (clamped to the hard stop).
    pub stop: watch::Sender<Instant>,
    /// Where served-by information came from.
    pub sources: Arc<ServedBySource>,
    /// Ends when the last request has finished.
    pub done: tokio::task::JoinHandle<()>,
}

/// One GET, classified. Used by the load and by the CLI's preflight probes.
pub struct Probe {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: hyper::Uri,
    host: Option<String>,
}

impl Probe {
    /// A client with keep-alive connections to the Gateway.
    pub fn new(url: hyper::Uri, host: Option<String>, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, url, host }
    }

    /// Sends one GET; `Err` only for a request that cannot be built (bad Host header).
    pub async fn get(&self, sources: &ServedBySource) -> Result<Outcome, String> {
        let mut req = hyper::Request::get(self.url.clone());
        if let Some(h) = &self.host {
            req = req.header(hyper::header::HOST, h.as_str());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Ok(Outcome::Failed(FailKind::Connect)),
            Err(_) => return Ok(Outcome::Failed(FailKind::Other)),
        };
        let status = resp.status();
        let header = resp
            .headers()
            .get(SERVED_BY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(ServedBy::parse);
        let Ok(body) = resp.into_body().collect().await else {
            return Ok(Outcome::Failed(FailKind::Other));
        };
        if status.is_server_error() {
            return Ok(Outcome::Failed(FailKind::Status5xx));
        }
        if status.is_client_error() {
            return Ok(Outcome::Failed(FailKind::Other));
        }
        let by = match header {
            Some(by) => {
                sources.header.fetch_add(1, Ordering::Relaxed);
                by
            }
            None => match served_by_body(&body.to_bytes()) {
                Some(by) => {
                    sources.body.fetch_add(1, Ordering::Relaxed);
                    by
                }
                None => {
                    sources.unknown.fetch_add(1, Ordering::Relaxed);
                    ServedBy::default()
                }
            },
        };
        Ok(Outcome::Answered(by))
    }
}

/// The demo echo backend says who it is in its JSON answer; used when the Gateway does not add
/// the served-by header (annotation `meridian.dev/served-by-header` missing).
fn served_by_body(body: &[u8]) -> Option<ServedBy> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let by = ServedBy {
        cluster: field("cluster")?,
        region: field("region")?,
        zone: field("zone")?,
    };
    (!by.region.is_empty()).then_some(by)
}

/// Starts sending at `start` (may be in the future) until `stop` (movable, at most `hard_stop`).
pub fn start(cfg: LoadConfig, start: Instant, stop: Instant, hard_stop: Instant) -> Load {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = watch::channel(stop.min(hard_stop));
    let sources = Arc::new(ServedBySource::default());
    let probe = Arc::new(Probe::new(cfg.url.clone(), cfg.host.clone(), cfg.timeout));
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let src = sources.clone();
    let period_ns = 1_000_000_000 / u64::from(cfg.rate.max(1));
    let done = tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        for i in 0u64.. {
            let due = start + Duration::from_nanos(i.saturating_mul(period_ns));
            let stop_at = (*stop_rx.borrow_and_update()).min(hard_stop);
            if due >= stop_at {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                // The stop time moved: check the due time against it again.
                changed = stop_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    reap(&mut tasks);
                    if due >= (*stop_rx.borrow()).min(hard_stop) {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                }
            }
            let (probe, permits, tx, src) =
                (probe.clone(), permits.clone(), tx.clone(), src.clone());
            let deadline = due + cfg.timeout;
            tasks.spawn(async move {
                let outcome = tokio::time::timeout_at(deadline, async {
                    // Closed only if the semaphore is dropped, which it is not while tasks run.
                    let _permit = permits.acquire().await;
                    probe.get(&src).await
                })
                .await;
                let outcome = match outcome {
                    Ok(Ok(o)) => o,
                    Ok(Err(_)) => Outcome::Failed(FailKind::Other),
                    Err(_) => Outcome::Failed(FailKind::Timeout),
                };
                let now = Instant::now();
                let _ = tx.send(Sample {
                    at_us: due.saturating_duration_since(start).as_micros() as u64,
                    latency_us: now.saturating_duration_since(due).as_micros() as u64,
                    outcome,
                });
            });
            reap(&mut tasks);
        }
        while tasks.join_next().await.is_some() {}
    });
    Load {
        samples: rx,
        stop: stop_tx,
        sources,
        done,
    }
}

/// Reaps finished tasks so the set does not grow with the whole run.
fn reap(tasks: &mut JoinSet<()>) {
    while tasks.try_join_next().is_some() {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn echo_body_names_the_backend() {
        let by = served_by_body(
            br#"{"name":"echo-us-east-a","cluster":"east","region":"us-east","zone":"us-east-a"}"#,
        )
        .unwrap();
        assert_eq!(
            (by.cluster.as_str(), by.region.as_str()),
            ("east", "us-east")
        );
        assert_eq!(served_by_body(b"not json"), None);
        assert_eq!(served_by_body(br#"{"region":""}"#), None);
    }

    /// A loopback server that answers the first `ok` requests and then stalls: the load keeps its
    /// rate, stalled requests time out from their due time, and the load ends by stop + timeout.
    #[tokio::test]
    async fn open_loop_keeps_the_rate_and_times_out_stalled_requests() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let s = served.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        if s.fetch_add(1, Ordering::SeqCst) >= 20 {
                            // Stall: hold the connection, never answer.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        let body = r#"{"cluster":"c","region":"r","zone":"z"}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-meridian-served-by: c1/r1/z1\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let cfg = LoadConfig {
            url: format!("http://{addr}/").parse().unwrap(),
            host: Some("demo".into()),
            rate: 100,
            timeout: Duration::from_millis(300),
            max_in_flight: 8,
        };
        let t0 = Instant::now();
        let mut load = start(
            cfg,
            t0,
            t0 + Duration::from_secs(1),
            t0 + Duration::from_secs(2),
        );
        tokio::time::timeout(Duration::from_secs(5), &mut load.done)
            .await
            .unwrap()
            .unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "ended by stop + timeout"
        );
        let mut samples = Vec::new();
        while let Ok(s) = load.samples.try_recv() {
            samples.push(s);
        }
        assert_eq!(samples.len(), 100, "100 req/s for 1 s");
        let ok = samples
            .iter()
            .filter(|s| matches!(&s.outcome, Outcome::Answered(by) if by.region == "r1"))
            .count();
        let timeouts = samples
            .iter()
            .filter(|s| s.outcome == Outcome::Failed(FailKind::Timeout))
            .count();
        assert_eq!(ok, 20, "the first 20 answered, named by the header");
        assert_eq!(timeouts, 80);
        // Stalled requests waited for permits, yet none took longer than the timeout plus slack.
        assert!(samples.iter().all(|s| s.latency_us < 400_000));
        assert_eq!(load.sources.header.load(Ordering::Relaxed), 20);
        server.abort();
    }
}
