//! The proxy side: [`Client`] follows a controller's stream and programs a [`Target`] with it.
//!
//! ```text
//! run ─► POST /v1/stream (Hello, bearer token) ─► 200: NDJSON lines ─┬─ welcome: connected
//!  ▲                                                                 ├─ snapshot: apply ─► ack
//!  │                                                                 ├─ endpoints: target serves the
//!  │                                                                 │   base? apply_endpoints ─► ack
//!  │                                                                 │   (else / None: apply the
//!  │                                                                 │   patched snapshot ─► ack),
//!  │                                                                 │   then patch the held snapshot
//!  │                                                                 └─ ping: still alive
//!  └── jittered exponential backoff (100 ms … 5 s) ◄── 401 / error / silence for 3 pings / EOF
//!
//! while the stream is open, every traffic_interval (1 s):
//!   Target::traffic() ─ non-empty and changed since the last accepted report? ─► POST /v1/traffic
//! ```
//!
//! Traffic reports run beside the stream in the same task, so a slow or failing report never
//! delays a line or an acknowledgement; a failed one is logged at debug and the next tick sends
//! the then-current counters (they are cumulative, nothing is lost). Each new stream starts by
//! reporting again, since the server on the other end may be a restarted one that knows nothing.
//!
//! An endpoint delta reaches a target that serves its base as the delta itself
//! ([`Target::apply_endpoints`]): the proxy updates its router without copying or recompiling
//! the snapshot. The held snapshot is patched after the acknowledgement, so it stays what the
//! controller wants for the next delta, a resync or a retry. A target without a fast path (the
//! default) gets the patched snapshot through [`Target::apply`], as before.
//!
//! The client never stops its target: while the controller is gone the target keeps serving what
//! it last applied (static stability). Across reconnects it keeps the last snapshot it received, so
//! a resync that sends the same content is acknowledged without re-applying it.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_model::Snapshot;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::protocol::{
    Ack, AckResult, EndpointChange, GatewayTrafficReport, Hello, Message, Peek, TrafficReport,
    patch_endpoints,
};

/// Longest stream line accepted (a full snapshot).
const MAX_LINE: usize = 512 * 1024 * 1024;
/// Lines longer than this are decoded on the blocking pool.
const BIG_LINE: usize = 256 * 1024;
/// Silence tolerated before the welcome line.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one acknowledgement request.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries per acknowledgement.
const ACK_TRIES: u32 = 3;
/// Bound of one traffic report request.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of the controller's distribution server, `http://host:port` (a path prefix is
    /// allowed). HTTPS is not supported yet: use it on a private network or behind a
    /// TLS-terminating sidecar.
    pub url: String,
    /// Bearer token; `None` only against a server started with `insecure: true`.
    pub token: Option<String>,
    /// Who this proxy is.
    pub hello: Hello,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// TCP connect bound.
    pub connect_timeout: Duration,
    /// How often [`Target::traffic`] is read and, when it changed, reported (`POST
    /// /v1/traffic`) while a stream is open. Zero disables traffic reports.
    pub traffic_interval: Duration,
}

impl ClientConfig {
    /// Defaults: backoff 100 ms doubling up to 5 s, connect timeout 2 s, traffic reports every
    /// second.
    pub fn new(url: impl Into<String>, token: Option<String>, hello: Hello) -> Self {
        Self {
            url: url.into(),
            token,
            hello,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            traffic_interval: Duration::from_secs(1),
        }
    }
}

/// The connection as the proxy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// A stream is open and welcomed.
    pub connected: bool,
    /// Why the last stream ended or could not open; cleared by the next welcome.
    pub last_error: Option<String>,
    /// The last generation acknowledged as applied.
    pub generation: Option<u64>,
    /// Streams opened so far.
    pub connects: u64,
}

/// Why a target refused a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Sent to the controller with the NACK.
    pub reason: String,
    /// Try the same snapshot again after this long (e.g. a port that could not be bound).
    pub retry_after: Option<Duration>,
}

/// What the client programs: the proxy (see `meridian_proxy`), or a stand-in in benchmarks.
pub trait Target: Send + Sync {
    /// Applies a full snapshot; returns the generation now served. On error the previous
    /// snapshot must keep serving.
    fn apply(&self, snapshot: Snapshot) -> impl Future<Output = Result<u64, Refused>> + Send;

    /// Applies an endpoint-only change: the snapshot of generation `base`, which the target
    /// serves (its last successful `apply` or `apply_endpoints`), with the endpoint lists of
    /// `changes` patched in by backend name and numbered `generation`. Must end in the same
    /// state, and the same refusals, as `apply` of that patched snapshot. `None` when the
    /// target has no fast path or does not serve `base`: the client then calls `apply` with the
    /// patched snapshot. The default has no fast path.
    fn apply_endpoints(
        &self,
        _generation: u64,
        _base: u64,
        _changes: &[EndpointChange],
    ) -> impl Future<Output = Option<Result<u64, Refused>>> + Send {
        std::future::ready(None)
    }

    /// Records a snapshot refused before `apply` (it did not decode).
    fn refuse(&self, _reason: &str) {}

    /// Called whenever the connection status changes.
    fn status(&self, _status: &ClientStatus) {}

    /// Cumulative traffic counters per Gateway, reported to the server about once a second
    /// (`POST /v1/traffic`). Targets that count nothing report nothing.
    fn traffic(&self) -> Vec<crate::protocol::GatewayTrafficReport> {
        Vec::new()
    }
}

/// Why a stream ended or did not open.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port][/prefix]`.
    #[error("invalid controller URL {url:?}: {reason}")]
    InvalidUrl {
        /// URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// 401: the token is missing or wrong.
    #[error(
        "the controller refused our token (401 Unauthorized): check --token / MERIDIAN_TOKEN: {0}"
    )]
    Unauthorized(String),
    /// Any other non-200 answer.
    #[error("the controller answered {status}: {body}")]
    Status {
        /// Status code.
        status: StatusCode,
        /// Body (trimmed).
        body: String,
    },
    /// Connecting or reading failed.
    #[error("controller connection failed: {0}")]
    Connection(String),
    /// Nothing arrived for too long.
    #[error("no message from the controller for {0:?}")]
    Silent(Duration),
    /// The server closed the stream.
    #[error("the controller closed the stream")]
    Closed,
    /// A message we cannot follow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Follows one controller. Cheap to create; [`Client::run`] does the work.
pub struct Client {
    cfg: ClientConfig,
    base: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    status: watch::Sender<ClientStatus>,
}

/// What survives reconnects.
#[derive(Default)]
struct Held {
    /// The last snapshot received (what the controller wants served).
    desired: Option<Snapshot>,
    /// Whether `desired` is what the target serves.
    applied: bool,
    /// When to try applying `desired` again, with the reason it failed last time.
    retry: Option<(Instant, Duration, String)>,
}

impl Client {
    /// Validates the URL and builds the HTTP client.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: cfg.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported yet; use http:// on a private network or a TLS sidecar",
                ));
            }
            _ => return Err(bad("expected http://host:port")),
        }
        let Some(authority) = uri.authority() else {
            return Err(bad("missing host"));
        };
        if uri.query().is_some() {
            return Err(bad("no query string allowed"));
        }
        let base = format!("http://{authority}{}", uri.path().trim_end_matches('/'));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            cfg,
            base,
            http,
            status: watch::channel(ClientStatus::default()).0,
        })
    }

    /// The controller's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The connection status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Follows the controller forever: connects, applies, acknowledges, reconnects with backoff.
    pub async fn run<T: Target>(&self, target: &T) -> Infallible {
        let mut held = Held::default();
        let mut attempt: u32 = 0;
        loop {
            let err = match self.session(target, &mut held, &mut attempt).await {
                Ok(()) => ClientError::Closed,
                Err(e) => e,
            };
            match &err {
                ClientError::Unauthorized(_) => {
                    tracing::error!(error = %err, "controller stream refused")
                }
                _ => {
                    tracing::warn!(error = %err, "controller stream down; serving the last good snapshot")
                }
            }
            self.set_status(target, |s| {
                s.connected = false;
                s.last_error = Some(err.to_string());
            });
            let delay = self.backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// Equal jitter: a random delay in [d/2, d] with d = initial · 2^attempt, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let d = self
            .cfg
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cfg.backoff_max);
        let half = d / 2;
        let extra = rand::rng().random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_micros(extra)
    }

    fn set_status<T: Target>(&self, target: &T, f: impl FnOnce(&mut ClientStatus)) {
        let mut next = self.status.borrow().clone();
        f(&mut next);
        // The target first: whoever watches `status()` then finds the target up to date.
        target.status(&next);
        self.status.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    fn request(&self, path: &str, body: Vec<u8>) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.cfg.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))
    }

    /// One stream, until it ends. `Ok(())` never happens today (the server only ends streams by
    /// closing them); kept for a future graceful goodbye.
    async fn session<T: Target>(
        &self,
        target: &T,
        held: &mut Held,
        attempt: &mut u32,
    ) -> Result<(), ClientError> {
        let hello = serde_json::to_vec(&self.cfg.hello)
            .map_err(|e| ClientError::Protocol(format!("cannot encode hello: {e}")))?;
        let req = self.request("/v1/stream", hello)?;
        let resp = tokio::time::timeout(WELCOME_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| ClientError::Silent(WELCOME_TIMEOUT))?
            .map_err(|e| ClientError::Connection(error_chain(&e)))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(if status == StatusCode::UNAUTHORIZED {
                ClientError::Unauthorized(body)
            } else {
                ClientError::Status { status, body }
            });
        }
        tokio::select! {
            r = self.follow(resp.into_body(), target, held, attempt) => r,
            never = self.report_traffic(target) => match never {},
        }
    }

    /// Reads the stream's lines until it ends.
    async fn follow<T: Target>(
        &self,
        mut body: hyper::body::Incoming,
        target: &T,
        held: &mut Held,
        attempt: &mut u32,
    ) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        let mut idle = WELCOME_TIMEOUT;
        loop {
            let retry_at = held.retry.as_ref().map(|(at, _, _)| *at);
            tokio::select! {
                frame = tokio::time::timeout(idle, body.frame()) => {
                    let frame = frame
                        .map_err(|_| ClientError::Silent(idle))?
                        .ok_or(ClientError::Closed)?
                        .map_err(|e| ClientError::Connection(error_chain(&e)))?;
                    let Ok(data) = frame.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
                        let line = buf.split_to(scanned + pos + 1);
                        scanned = 0;
                        if let Some(ping) = self.handle(line.freeze(), target, held).await? {
                            idle = ping.saturating_mul(3) + Duration::from_secs(1);
                            *attempt = 0;
                        }
                    }
                    scanned = buf.len();
                    if buf.len() > MAX_LINE {
                        return Err(ClientError::Protocol(format!(
                            "a stream line exceeds {MAX_LINE} bytes"
                        )));
                    }
                }
                () = sleep_until_opt(retry_at) => self.retry(target, held).await,
            }
        }
    }

    /// Handles one line; returns the ping interval when it was the welcome.
    async fn handle<T: Target>(
        &self,
        line: Bytes,
        target: &T,
        held: &mut Held,
    ) -> Result<Option<Duration>, ClientError> {
        let decoded = if line.len() > BIG_LINE {
            // ~100 ms for a 10k-route snapshot: not on a worker that also serves requests.
            let l = line.clone();
            tokio::task::spawn_blocking(move || serde_json::from_slice::<Message>(&l))
                .await
                .map_err(|e| ClientError::Protocol(format!("decoding task failed: {e}")))?
        } else {
            serde_json::from_slice::<Message>(&line)
        };
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => {
                return self
                    .undecodable(&line, e, target, held)
                    .await
                    .map(|()| None);
            }
        };
        match msg {
            Message::Welcome(w) => {
                self.set_status(target, |s| {
                    s.connected = true;
                    s.last_error = None;
                    s.connects += 1;
                });
                tracing::info!(url = %self.base, "connected to the controller");
                return Ok(Some(Duration::from_millis(w.ping_interval_ms)));
            }
            Message::Ping => {}
            Message::Snapshot(s) => {
                if held.applied && held.desired.as_ref() == Some(&*s) {
                    // A resync of what we serve already.
                    self.acked(s.generation, target).await;
                } else {
                    let old = held.desired.replace(*s);
                    self.apply_desired(target, held).await;
                    // A big snapshot takes tens of ms to free: not on the runtime's workers.
                    if let Some(old) = old {
                        tokio::task::spawn_blocking(move || drop(old));
                    }
                }
            }
            Message::Endpoints(u) => {
                if held.desired.as_ref().map(|d| d.generation) != Some(u.base) {
                    return Err(ClientError::Protocol(format!(
                        "endpoint update on generation {} but we hold {:?}; resyncing",
                        u.base,
                        held.desired.as_ref().map(|d| d.generation)
                    )));
                }
                // The target serves the base: hand it the delta, not a patched copy of the
                // whole snapshot.
                let fast = if held.applied {
                    target
                        .apply_endpoints(u.generation, u.base, &u.changes)
                        .await
                } else {
                    None
                };
                match fast {
                    Some(result) => {
                        // Acknowledged first; the held copy is patched right after, before
                        // the next line or a retry can read it.
                        self.outcome(u.generation, result, target, held).await;
                        if let Some(desired) = held.desired.as_mut() {
                            patch_endpoints(desired, &u.changes);
                            desired.generation = u.generation;
                        }
                    }
                    None => {
                        if let Some(desired) = held.desired.as_mut() {
                            // Patched in place: it is what the controller wants, whatever
                            // apply says.
                            patch_endpoints(desired, &u.changes);
                            desired.generation = u.generation;
                        }
                        self.apply_desired(target, held).await;
                    }
                }
            }
        }
        Ok(None)
    }

    async fn undecodable<T: Target>(
        &self,
        line: &[u8],
        e: serde_json::Error,
        target: &T,
        held: &mut Held,
    ) -> Result<(), ClientError> {
        match serde_json::from_slice::<Peek>(line) {
            Ok(Peek::Snapshot { generation } | Peek::Endpoints { generation }) => {
                let reason = format!("generation {generation} does not decode: {e}");
                target.refuse(&reason);
                // We no longer know what the controller wants; the next delta forces a resync.
                held.desired = None;
                held.applied = false;
                held.retry = None;
                self.ack(generation, AckResult::Refused { reason }).await;
                Ok(())
            }
            Ok(Peek::Welcome {} | Peek::Ping) | Err(_) => Err(ClientError::Protocol(format!(
                "undecodable stream line: {e}"
            ))),
        }
    }

    /// Applies `held.desired` and acknowledges the outcome.
    async fn apply_desired<T: Target>(&self, target: &T, held: &mut Held) {
        let Some(snapshot) = held.desired.clone() else {
            return;
        };
        let generation = snapshot.generation;
        let result = target.apply(snapshot).await;
        self.outcome(generation, result, target, held).await;
    }

    /// Records and acknowledges what applying `generation` gave.
    async fn outcome<T: Target>(
        &self,
        generation: u64,
        result: Result<u64, Refused>,
        target: &T,
        held: &mut Held,
    ) {
        match result {
            Ok(_) => {
                held.applied = true;
                held.retry = None;
                self.acked(generation, target).await;
            }
            Err(r) => {
                held.applied = false;
                held.retry = r
                    .retry_after
                    .map(|d| (Instant::now() + d, d, r.reason.clone()));
                self.ack(generation, AckResult::Refused { reason: r.reason })
                    .await;
            }
        }
    }

    /// Tries the held snapshot again (its refusal was transient). Only a success or a new reason
    /// is acknowledged, so a port that stays taken does not flood the controller with NACKs.
    async fn retry<T: Target>(&self, target: &T, held: &mut Held) {
        let Some((_, every, old_reason)) = held.retry.take() else {
            return;
        };
        let Some(s) = held.desired.clone() else {
            return;
        };
        let generation = s.generation;
        match target.apply(s).await {
            Ok(_) => {
                held.applied = true;
                self.acked(generation, target).await;
            }
            Err(r) => {
                held.retry = r
                    .retry_after
                    .map(|d| (Instant::now() + d.max(every), d, r.reason.clone()));
                if r.reason != old_reason {
                    self.ack(generation, AckResult::Refused { reason: r.reason })
                        .await;
                }
            }
        }
    }

    async fn acked<T: Target>(&self, generation: u64, target: &T) {
        self.ack(generation, AckResult::Applied).await;
        self.set_status(target, |s| s.generation = Some(generation));
    }

    /// Sends one acknowledgement, with a few bounded tries. A lost ack is repaired by the resync
    /// after the next reconnect.
    async fn ack(&self, generation: u64, result: AckResult) {
        let ack = Ack {
            proxy_id: self.cfg.hello.proxy_id.clone(),
            generation,
            result,
        };
        let body = match serde_json::to_vec(&ack) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an ack");
                return;
            }
        };
        for try_no in 1..=ACK_TRIES {
            let req = match self.request("/v1/ack", body.clone()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build an ack");
                    return;
                }
            };
            match tokio::time::timeout(ACK_TIMEOUT, self.http.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => return,
                Ok(Ok(resp)) if resp.status() == StatusCode::UNAUTHORIZED => {
                    tracing::error!(generation, "the controller refused our token for an ack");
                    return;
                }
                Ok(Ok(resp)) => {
                    tracing::warn!(generation, status = %resp.status(), "ack not accepted");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(generation, try_no, error = %error_chain(&e), "ack failed");
                }
                Err(_) => tracing::warn!(generation, try_no, "ack timed out"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reports the target's traffic every `traffic_interval` while the stream is open (the
    /// caller drops this future when the stream ends).
    async fn report_traffic<T: Target>(&self, target: &T) -> Infallible {
        let every = self.cfg.traffic_interval;
        if every.is_zero() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per stream: a new stream may reach a server that has never seen our counters.
        let mut last_sent: Option<Vec<GatewayTrafficReport>> = None;
        loop {
            tick.tick().await;
            let gateways = target.traffic();
            if gateways.is_empty() || last_sent.as_ref() == Some(&gateways) {
                continue;
            }
            let report = TrafficReport {
                proxy_id: self.cfg.hello.proxy_id.clone(),
                gateways,
            };
            match self.send_traffic(&report).await {
                Ok(()) => last_sent = Some(report.gateways),
                Err(e) => {
                    tracing::debug!(error = %e, "traffic report not delivered; retrying next tick")
                }
            }
        }
    }

    /// One traffic report, one try.
    async fn send_traffic(&self, report: &TrafficReport) -> Result<(), String> {
        let body =
            serde_json::to_vec(report).map_err(|e| format!("cannot encode the report: {e}"))?;
        let req = self
            .request("/v1/traffic", body)
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(TRAFFIC_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| format!("no answer within {TRAFFIC_TIMEOUT:?}"))?
            .map_err(|e| error_chain(&e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let text = tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        Err(format!("the controller answered {status}: {text}"))
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An error with its sources, for logs ("connection refused" hides two levels down in hyper).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
