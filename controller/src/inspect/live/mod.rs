//! The live view: a web page of regions, traffic, failover and drills, fed by Server-Sent Events
//! from the same data `meridian status` reads.
//!
//! ```text
//!  browser ── GET /ui, /ui/app.js, /ui/app.css ──► static files compiled into the binary
//!     │                                              (no data in them: served without credentials)
//!     └─ fetch GET /v1/events (Authorization: Bearer … | loopback) ──► events(): auth, a client slot
//!           ▲                                                           (≤ MAX_CLIENTS, else 503)
//!           │ event: snapshot (on connect), event: update (on change), ": keep-alive" comments
//!           │                                                      │ subscribes to
//!         stream (sse.rs): latest frame only ◄── watch ◄── hub (run): while anyone watches, asks the
//!                                                              reconcile loop Ask::Live every PERIOD;
//!                                                              publishes when the data changed
//!  page "Start drill" ─ confirm ─► POST /v1/drills (token listeners only) ─► FailoverDrill created
//!                                   in the Gateway's cluster; the drill runner takes it from there
//! ```
//!
//! Why this shape:
//!
//! - One hub asks the loop, however many pages are open, and only while at least one is: an idle
//!   controller answers no questions for the page. The hub publishes into a `watch` channel, which
//!   holds only the latest frame, so a slow client skips frames (it always gets the newest one
//!   when it reads again) and a client costs one frame in flight, never a queue.
//! - A frame is sent when the data changed (ignoring the clock fields that move on every answer)
//!   and at most once per [`PERIOD`]; an idle stream carries a keep-alive comment every
//!   [`KEEP_ALIVE`]. A stream ends after [`STREAM_LIFETIME`] (the page reconnects and gets a fresh
//!   snapshot): a client that stopped reading cannot hold its slot for longer.
//! - The page computes requests per second itself from the cumulative counters of two frames
//!   (each Gateway's requests, per serving region, and failures) and keeps bounded ring buffers,
//!   so it can stay open for hours.
//! - Credentials are those of `/v1/status` ([`AdminAuth`]). `EventSource` cannot send an
//!   `Authorization` header, so the page reads the stream with `fetch`. With a token the page asks
//!   for it (or takes it from the URL fragment `#token=…`, which browsers never send to the
//!   server) and keeps it in `sessionStorage` for the tab only. `meridian up` prints such a URL.
//! - Starting a drill is a write, allowed only when the listener checks a bearer token: a
//!   loopback-only listener without one stays read-only and the page says why. A cross-site page
//!   cannot forge the request: it needs the token in a header, which a browser only sends after
//!   a CORS preflight this listener never answers.

mod sse;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use kube::api::PostParams;
use meridian_crds::meridian::{
    DrillMode, DrillObjectRef, DrillScope, DrillTargetSpec, FailoverDrill, FailoverDrillSpec,
    FailoverDrillStatus,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::admin::{AdminAuth, Refusal, ask_loop, error_response};
use super::{Answer, Ask, LoopView, StatusView};
use crate::translate::ClusterGatewayRef;
use crate::watch::Msg;

/// Body of every admin listener answer (static, JSON or an event stream).
pub(crate) type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// Most event streams open at once; more are refused with `503`.
pub const MAX_CLIENTS: usize = 16;
/// How often the hub asks the reconcile loop while someone watches.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Longest silence on a stream: a comment line then, so proxies and browsers keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest life of one stream; the page reconnects (and gets a fresh snapshot).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Most drills in a frame: every running one, then the newest finished ones.
pub const MAX_DRILLS: usize = 5;
/// Longest `POST /v1/drills` body.
pub const MAX_DRILL_BODY: usize = 4096;

/// What one frame of `/v1/events` carries besides its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveData {
    /// Exactly what `GET /v1/status` answers.
    pub status: StatusView,
    /// Cumulative counters of each Gateway, per cluster (its proxies summed).
    pub traffic: Vec<GatewayCounters>,
    /// Running drills, then the newest finished ones, at most [`MAX_DRILLS`].
    pub drills: Vec<DrillView>,
}

/// The counters the proxies of one cluster report for one Gateway (since they started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayCounters {
    /// Member cluster of the proxies.
    pub cluster: String,
    /// Namespace of the Gateway.
    pub namespace: String,
    /// Name of the Gateway.
    pub name: String,
    /// Requests answered (failures included).
    pub requests: u64,
    /// Requests answered by an endpoint, per region of that endpoint.
    pub by_region: BTreeMap<String, u64>,
    /// The same per zone of the endpoint, keyed `region/zone` (from proxies that report zones).
    pub by_zone: BTreeMap<String, u64>,
    /// Failed requests (5xx the proxy answered or passed on).
    pub failed: u64,
}

/// One FailoverDrill as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillView {
    /// Member cluster holding the object.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.creationTimestamp`.
    pub created: String,
    /// `spec.target`.
    pub target: DrillTargetSpec,
    /// `spec.mode` (`drain` when absent).
    pub mode: String,
    /// `spec.duration` as written.
    pub duration: Option<String>,
    /// `status` as the controller wrote it.
    pub status: Option<FailoverDrillStatus>,
}

/// Builds the frame data on the reconcile loop (copies only; the status is already built).
pub(crate) fn data(v: &LoopView<'_>, status: StatusView) -> LiveData {
    let traffic = status
        .gateways
        .iter()
        .filter_map(|g| {
            let t = v.data_plane.traffic(&ClusterGatewayRef::new(
                g.cluster.clone(),
                g.namespace.clone(),
                g.name.clone(),
            ))?;
            Some(GatewayCounters {
                cluster: g.cluster.clone(),
                namespace: g.namespace.clone(),
                name: g.name.clone(),
                requests: t.requests,
                failed: t.failures(),
                by_region: t.by_region,
                by_zone: t.by_zone,
            })
        })
        .collect();
    let mut drills: Vec<DrillView> = Vec::new();
    for (cluster, state) in &v.world.clusters {
        for (key, d) in &state.failover_drills {
            drills.push(DrillView {
                cluster: cluster.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                created: d
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                target: d.spec.target.clone(),
                mode: d.spec.mode.unwrap_or_default().as_str().to_string(),
                duration: d.spec.duration.clone(),
                status: d.status.clone(),
            });
        }
    }
    LiveData {
        status,
        traffic,
        drills: newest_drills(drills),
    }
}

/// Running (and pending) drills first, then the newest finished ones; at most [`MAX_DRILLS`].
fn newest_drills(mut drills: Vec<DrillView>) -> Vec<DrillView> {
    let done = |d: &DrillView| {
        d.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal())
    };
    // RFC 3339 of one format sorts as text; newest first.
    drills.sort_by(|a, b| (done(a), &b.created, &a.name).cmp(&(done(b), &a.created, &b.name)));
    drills.truncate(MAX_DRILLS);
    drills
}

/// The data without the fields that change on every answer (clocks), to tell a real change.
fn comparable(d: &LiveData) -> LiveData {
    let mut d = d.clone();
    d.status.generated_at.clear();
    for c in &mut d.status.clusters {
        c.seconds_since_contact = None;
        c.last_contact = None;
        c.api_latency_ms = None;
    }
    d
}

/// The latest frame the hub published.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// Sequence number (the SSE `id`).
    pub seq: u64,
    /// When the hub last confirmed it is current (updated without waking the streams).
    pub checked: Instant,
    /// `{"seq":…,"canStartDrills":…,…}`, one line.
    pub json: Bytes,
}

/// What the page is told besides the data.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FrameJson<'a> {
    seq: u64,
    /// The listener checks a bearer token: the page may offer to start a drill.
    can_start_drills: bool,
    /// Why it may not, when it may not.
    read_only_reason: Option<&'static str>,
    #[serde(flatten)]
    data: &'a LiveData,
}

const READ_ONLY_REASON: &str = "This admin listener has no token (it answers anyone on this \
     machine), so the page is read-only: start the controller with --admin-token-file to start \
     drills from here, or run `meridian drill`.";

/// Tunables (the constants above; tests shorten them).
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// [`MAX_CLIENTS`].
    pub max_clients: usize,
    /// [`PERIOD`].
    pub period: Duration,
    /// [`KEEP_ALIVE`].
    pub keep_alive: Duration,
    /// [`STREAM_LIFETIME`].
    pub lifetime: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_clients: MAX_CLIENTS,
            period: PERIOD,
            keep_alive: KEEP_ALIVE,
            lifetime: STREAM_LIFETIME,
        }
    }
}

/// The live view of one admin listener: the hub's channel, the client slots, the way to create
/// drills.
pub(crate) struct Live {
    auth: AdminAuth,
    tx: mpsc::Sender<Msg>,
    frames: watch::Sender<Option<Frame>>,
    /// Wakes the hub when a stream opens.
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Where `POST /v1/drills` creates drills: member cluster name → client.
    clients: BTreeMap<String, kube::Client>,
    cfg: LiveConfig,
    /// The traffic of the last drills (`GET /v1/drills/series`); empty without drill runners.
    series: Arc<crate::drill::DrillSeries>,
    /// `meridian_controller_live_streams`, when the listener exports metrics.
    streams: Option<prometheus::IntGauge>,
    /// The member clusters as they are now (clusters joined after the start included); when
    /// set, drills are created through their clients instead of `clients`.
    members: Option<watch::Receiver<crate::controller::MemberDirectory>>,
}

/// One open event stream's place: its semaphore permit, counted in the streams gauge while held.
pub(super) struct StreamSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: Option<prometheus::IntGauge>,
}

impl StreamSlot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, gauge: Option<prometheus::IntGauge>) -> Self {
        if let Some(g) = &gauge {
            g.inc();
        }
        StreamSlot {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl Live {
    pub(crate) fn new(
        auth: AdminAuth,
        tx: mpsc::Sender<Msg>,
        clients: BTreeMap<String, kube::Client>,
        cfg: LiveConfig,
    ) -> Self {
        Live {
            auth,
            tx,
            frames: watch::channel(None).0,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(cfg.max_clients)),
            clients,
            cfg,
            series: Arc::default(),
            streams: None,
            members: None,
        }
    }

    /// The same live view, creating drills in the members `members` lists at that moment.
    pub(crate) fn with_members(
        mut self,
        members: watch::Receiver<crate::controller::MemberDirectory>,
    ) -> Self {
        self.members = Some(members);
        self
    }

    /// The client of each member cluster a drill may be created in, as of now.
    fn clients(&self) -> BTreeMap<String, kube::Client> {
        match &self.members {
            Some(m) => m
                .borrow()
                .iter()
                .map(|(name, e)| (name.clone(), e.cluster.client.clone()))
                .collect(),
            None => self.clients.clone(),
        }
    }

    /// The same live view, counting its open streams in `gauge`.
    pub(crate) fn with_stream_gauge(mut self, gauge: prometheus::IntGauge) -> Self {
        self.streams = Some(gauge);
        self
    }

    /// The same live view, reading the drills' traffic series from `series`.
    pub(crate) fn with_drill_series(mut self, series: Arc<crate::drill::DrillSeries>) -> Self {
        self.series = series;
        self
    }

    /// The hub: while at least one stream is open, asks the loop every period and publishes
    /// what changed. Ends on shutdown.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last: Option<LiveData> = None;
        let mut seq = 0u64;
        loop {
            let mut woke = false;
            // Nobody watching: wait for a stream instead of asking the loop for nobody.
            while self.frames.receiver_count() == 0 {
                tokio::select! {
                    () = self.wake.notified() => woke = true,
                    () = crate::stopped(&mut shutdown) => return,
                }
            }
            match ask_loop(&self.tx, Ask::Live).await {
                Ok(Answer::Live(d)) => {
                    let now = comparable(&d);
                    // After an idle spell the old frame is stale even when equal: publish it
                    // again so a new stream's wait for a current snapshot ends.
                    if woke || last.as_ref() != Some(&now) {
                        seq += 1;
                        match self.encode(seq, &d) {
                            Ok(json) => {
                                self.frames.send_replace(Some(Frame {
                                    seq,
                                    checked: Instant::now(),
                                    json,
                                }));
                                last = Some(now);
                            }
                            Err(e) => tracing::warn!(error = %e, "live view: encoding a frame"),
                        }
                    } else {
                        // Still current: say so without waking the streams.
                        self.frames.send_if_modified(|f| {
                            if let Some(f) = f {
                                f.checked = Instant::now();
                            }
                            false
                        });
                    }
                }
                Ok(_) => {}
                Err(r) => tracing::debug!(error = ?r, "live view: the loop did not answer"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.cfg.period) => {}
                () = crate::stopped(&mut shutdown) => return,
            }
        }
    }

    fn encode(&self, seq: u64, data: &LiveData) -> serde_json::Result<Bytes> {
        let token = matches!(self.auth, AdminAuth::Token(_));
        serde_json::to_vec(&FrameJson {
            seq,
            can_start_drills: token,
            read_only_reason: (!token).then_some(READ_ONLY_REASON),
            data,
        })
        .map(Bytes::from)
    }

    /// Whether this path is the live view's.
    pub(crate) fn owns(path: &str) -> bool {
        matches!(
            path,
            "/ui" | "/ui/" | "/v1/events" | "/v1/drills" | "/v1/drills/series"
        ) || path.starts_with("/ui/")
    }

    /// Answers a live view request (`owns(path)` is true).
    pub(crate) async fn respond(&self, req: Request<hyper::body::Incoming>) -> Response<AdminBody> {
        let path = req.uri().path().to_string();
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let method = req.method().clone();
        let result = match path.as_str() {
            "/v1/events" => {
                if method != http::Method::GET {
                    Err(only("GET"))
                } else if req.uri().query().is_some_and(|q| !q.is_empty()) {
                    Err(Refusal::bad("/v1/events takes no parameters"))
                } else {
                    self.auth
                        .check(authorization.as_deref())
                        .and_then(|()| self.events())
                }
            }
            "/v1/drills" => {
                if method != http::Method::POST {
                    Err(only("POST"))
                } else {
                    match self.auth.check(authorization.as_deref()) {
                        Ok(()) => self.start_drill(req.into_body()).await,
                        Err(r) => Err(r),
                    }
                }
            }
            "/v1/drills/series" => {
                if method != http::Method::GET {
                    Err(only("GET"))
                } else {
                    self.auth
                        .check(authorization.as_deref())
                        .and_then(|()| self.drill_series(req.uri().query().unwrap_or("")))
                }
            }
            _ if method != http::Method::GET => Err(only("GET")),
            _ => static_file(&path),
        };
        result.unwrap_or_else(|r| error_response(&r).map(|b| b.boxed_unsync()))
    }

    /// `GET /v1/drills/series?cluster=C&namespace=N&name=D`: the traffic samples of a drill this
    /// controller ran (cumulative counters, one a second), for pictures of past drills.
    fn drill_series(&self, query: &str) -> Result<Response<AdminBody>, Refusal> {
        let mut want: BTreeMap<&str, String> = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = meridian_model::router::percent_decode(v).into_owned();
            if v.len() > 253 {
                return Err(Refusal::bad(format!("{k}: longer than 253 bytes")));
            }
            match k {
                "cluster" => want.insert("cluster", v),
                "namespace" => want.insert("namespace", v),
                "name" => want.insert("name", v),
                other => {
                    return Err(Refusal::bad(format!(
                        "/v1/drills/series takes cluster, namespace and name, not {other:?}"
                    )));
                }
            };
        }
        let mut take = |what: &str| {
            want.remove(what).filter(|v| !v.is_empty()).ok_or_else(|| {
                Refusal::bad(format!(
                    "/v1/drills/series needs {what}: ?cluster=C&namespace=N&name=DRILL"
                ))
            })
        };
        let key = crate::drill::DrillKey {
            cluster: take("cluster")?,
            namespace: take("namespace")?,
            name: take("name")?,
        };
        let points = self.series.get(&key).ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no traffic series for drill {key}: this controller keeps those of the last \
                     {} drills it ran since it started",
                    crate::drill::SERIES_DRILLS
                ),
            )
        })?;
        Ok(super::admin::json(&serde_json::json!({ "points": points })).map(|b| b.boxed_unsync()))
    }

    /// Opens an event stream, or refuses when every slot is taken.
    fn events(&self) -> Result<Response<AdminBody>, Refusal> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} live views are open already (the most this controller serves); close one \
                     and reload",
                    self.cfg.max_clients
                ),
            )
        })?;
        let slot = StreamSlot::new(slot, self.streams.clone());
        let rx = self.frames.subscribe();
        self.wake.notify_one();
        let body = sse::stream(rx, slot, &self.cfg);
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Ok(resp)
    }

    /// `POST /v1/drills`: creates a FailoverDrill for one Gateway, only on a token listener.
    async fn start_drill(
        &self,
        body: hyper::body::Incoming,
    ) -> Result<Response<AdminBody>, Refusal> {
        if !matches!(self.auth, AdminAuth::Token(_)) {
            return Err(Refusal::new(StatusCode::FORBIDDEN, READ_ONLY_REASON));
        }
        let bytes = Limited::new(body, MAX_DRILL_BODY)
            .collect()
            .await
            .map_err(|_| {
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body must be a JSON object of at most {MAX_DRILL_BODY} bytes"),
                )
            })?
            .to_bytes();
        let ask: StartDrill = serde_json::from_slice(&bytes).map_err(|e| {
            Refusal::bad(format!(
                "{e}; expected {{\"cluster\", \"namespace\", \"gateway\", \"target\": \
                 {{\"region\"|\"cluster\"|\"zone\"}}, \"mode\", \"duration\"}}"
            ))
        })?;
        let clients = self.clients();
        let drill = ask.drill(&clients, jiff_now_name())?;
        let Some(client) = clients.get(&ask.cluster) else {
            return Err(internal_refusal());
        };
        let api: kube::Api<FailoverDrill> = kube::Api::namespaced(client.clone(), &ask.namespace);
        let created = tokio::time::timeout(
            Duration::from_secs(10),
            api.create(&PostParams::default(), &drill),
        )
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "cluster {}'s API server did not answer within 10 s",
                    ask.cluster
                ),
            )
        })?
        .map_err(|e| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("creating the FailoverDrill in cluster {}: {e}", ask.cluster),
            )
        })?;
        let name = created.metadata.name.unwrap_or_default();
        tracing::info!(cluster = %ask.cluster, namespace = %ask.namespace, drill = %name, "live view: drill created");
        let body = serde_json::json!({
            "cluster": ask.cluster,
            "namespace": ask.namespace,
            "name": name,
        })
        .to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
        *resp.status_mut() = StatusCode::CREATED;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

fn only(method: &str) -> Refusal {
    Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("only {method} on this path"),
    )
}

fn internal_refusal() -> Refusal {
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while answering (see the controller's log)",
    )
}

/// A drill name from the time: `live-20260102-150405-123`.
fn jiff_now_name() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("live-{}", now.strftime("%Y%m%d-%H%M%S-%3f"))
}

/// The body of `POST /v1/drills`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartDrill {
    /// Member cluster to create the drill in (the Gateway's).
    cluster: String,
    /// The Gateway's namespace (the drill's).
    namespace: String,
    /// The Gateway's name (the drill's scope).
    gateway: String,
    /// What to fail.
    target: DrillTargetSpec,
    /// `drain` (default), `kill` or `blackhole`.
    #[serde(default)]
    mode: Option<DrillMode>,
    /// How long (default the CRD's 30 s).
    #[serde(default)]
    duration: Option<String>,
}

impl StartDrill {
    /// Checks the request and builds the object (the controller checks the rest, as for any
    /// drill: the target must match endpoints, the duration its cap).
    fn drill(
        &self,
        clients: &BTreeMap<String, kube::Client>,
        name: String,
    ) -> Result<FailoverDrill, Refusal> {
        check_known(&self.cluster, clients.keys())?;
        check_name("namespace", &self.namespace)?;
        check_name("gateway", &self.gateway)?;
        let t = &self.target;
        if t.cluster.is_none() && t.region.is_none() && t.zone.is_none() {
            return Err(Refusal::bad("target: name a cluster, region or zone"));
        }
        for (field, v) in [
            ("cluster", &t.cluster),
            ("region", &t.region),
            ("zone", &t.zone),
        ] {
            if let Some(v) = v {
                check_name(&format!("target.{field}"), v)?;
            }
        }
        if let Some(d) = &self.duration {
            let parsed = meridian_crds::meridian::parse_duration(d)
                .map_err(|e| Refusal::bad(format!("duration: {e}")))?;
            if parsed.is_zero() || parsed > meridian_crds::meridian::drill::MAX_DURATION {
                return Err(Refusal::bad("duration: more than 0 and at most 1h"));
            }
        }
        let mut drill = FailoverDrill::new(
            &name,
            FailoverDrillSpec {
                target: self.target.clone(),
                scope: Some(DrillScope {
                    gateways: vec![DrillObjectRef {
                        namespace: None,
                        name: self.gateway.clone(),
                    }],
                    service_imports: Vec::new(),
                }),
                mode: self.mode,
                duration: self.duration.clone(),
                guards: None,
            },
        );
        drill.metadata.namespace = Some(self.namespace.clone());
        drill.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/created-by".to_string(),
            "meridian-live-view".to_string(),
        )]));
        Ok(drill)
    }
}

fn check_known<'a>(
    cluster: &str,
    known: impl Iterator<Item = &'a String> + Clone,
) -> Result<(), Refusal> {
    if known.clone().any(|k| k == cluster) {
        return Ok(());
    }
    Err(Refusal::bad(format!(
        "cluster {cluster:?}: not a member cluster; known: {}",
        known.map(String::as_str).collect::<Vec<_>>().join(", ")
    )))
}

/// A Kubernetes-style name: 1 to 253 of `a-z 0-9 - .`.
fn check_name(field: &str, v: &str) -> Result<(), Refusal> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Refusal::bad(format!(
            "{field} {v:?}: 1 to 253 characters of a-z, 0-9, '-' and '.'"
        )))
    }
}

/// The page's files, compiled in.
const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

fn static_file(path: &str) -> Result<Response<AdminBody>, Refusal> {
    let (body, content_type) = match path {
        "/ui" | "/ui/" | "/ui/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown path: the live view is /ui (with /ui/app.js, /ui/app.css)",
            ));
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    // The page runs only its own script and talks only to this listener.
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests;
