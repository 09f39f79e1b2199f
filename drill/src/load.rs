//! The drill's load through the Gateway: the workspace's one open-loop generator
//! ([`crate::openloop`]) with the drill's reading of every answer.
//!
//! ```text
//!  openloop: request i is due at start + i / rate ─► GET through the Gateway (at most
//!            `max_in_flight` at once, each within `timeout` of its due time)
//!    └─► SampleRecorder: Finished ─► classify: who served it (x-meridian-served-by, else the
//!        echo backend's JSON body) or why it failed ─► Sample { at: due time, latency, outcome }
//!        on the samples channel
//! ```
//!
//! Latency runs from the *due* time, not from the moment the request left: when the Gateway
//! stalls, requests queue for a slot and their wait counts (no coordinated omission). The
//! per-request timeout also runs from the due time, so every request ends by `due + timeout`
//! and the whole load by `stop + timeout`. The stop time can be moved while the load runs (the
//! CLI learns the restore moment only from the drill status) but never past the hard stop given
//! at the start. Connections are opened on demand and a refused one only fails its request: the
//! Gateway may come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::figures::{FailKind, Outcome, Sample, ServedBy};
use super::openloop::{
    self, Answer, Endpoint, Failure, Finished, Generator, LoadError, OnRefused, Recorder, Schedule,
    Summary,
};

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
    pub done: tokio::task::JoinHandle<Result<Summary, LoadError>>,
}

/// One GET, classified: the CLI's preflight probes.
pub struct Probe {
    endpoint: Endpoint,
    connect_timeout: Duration,
}

impl Probe {
    /// A probe of `url` (with `host` as the Host header, if given); a URL the load cannot send
    /// to or a Host that is no header value is refused here.
    pub fn new(
        url: &hyper::Uri,
        host: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            endpoint: Endpoint::from_url(url, host)?,
            connect_timeout,
        })
    }

    /// Sends one GET on a new connection.
    pub async fn get(&self, sources: &ServedBySource) -> Outcome {
        classify(
            openloop::get_once(&self.endpoint, self.connect_timeout).await,
            sources,
        )
    }
}

/// What the drill makes of one request: a 1xx–3xx answer names who served it (counted in
/// `sources` by where that came from); anything else is a failure of some kind.
pub fn classify(result: Result<Answer, Failure>, sources: &ServedBySource) -> Outcome {
    let answer = match result {
        Ok(answer) => answer,
        Err(Failure::Connect) => return Outcome::Failed(FailKind::Connect),
        Err(Failure::Timeout) => return Outcome::Failed(FailKind::Timeout),
        Err(Failure::Broken) => return Outcome::Failed(FailKind::Other),
    };
    if answer.status.is_server_error() {
        return Outcome::Failed(FailKind::Status5xx);
    }
    if answer.status.is_client_error() {
        return Outcome::Failed(FailKind::Other);
    }
    let header = answer
        .headers
        .get(SERVED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ServedBy::parse);
    let by = match header {
        Some(by) => {
            sources.header.fetch_add(1, Ordering::Relaxed);
            by
        }
        None => match served_by_body(&answer.body) {
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
    Outcome::Answered(by)
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

/// Turns every finished request into a [`Sample`] on the load clock.
struct SampleRecorder {
    start: Instant,
    sources: Arc<ServedBySource>,
    samples: mpsc::UnboundedSender<Sample>,
}

impl Recorder for SampleRecorder {
    fn finished(&self, f: Finished) {
        let _ = self.samples.send(Sample {
            at_us: f.due.saturating_duration_since(self.start).as_micros() as u64,
            latency_us: f.done.saturating_duration_since(f.due).as_micros() as u64,
            outcome: classify(f.result, &self.sources),
        });
    }
}

/// Starts sending at `start` (may be in the future) until `stop` (movable, at most `hard_stop`).
pub async fn start(
    cfg: LoadConfig,
    start: Instant,
    stop: Instant,
    hard_stop: Instant,
) -> Result<Load, LoadError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let sources = Arc::new(ServedBySource::default());
    let recorder = Arc::new(SampleRecorder {
        start,
        sources: sources.clone(),
        samples: tx,
    });
    let generator = Generator::connect(openloop::Config {
        endpoint: Endpoint::from_url(&cfg.url, cfg.host.as_deref())?,
        rate: f64::from(cfg.rate),
        max_in_flight: cfg.max_in_flight,
        open_up_front: false,
        connect_timeout: cfg.timeout,
        request_timeout: Some(cfg.timeout),
        grace: None,
        on_refused: OnRefused::KeepSlot,
    })
    .await?;
    let schedule = Schedule {
        start,
        stop,
        hard_stop,
    };
    let running = generator.start(schedule, recorder);
    Ok(Load {
        samples: rx,
        stop: running.stop,
        sources,
        done: running.done,
    })
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
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut load.done)
            .await
            .unwrap()
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
