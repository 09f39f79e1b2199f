//! The controller side: [`DistributionServer`].
//!
//! ```text
//! publish(cluster, snapshot) ─► renumber ─► serialize once ─► watch<Version> of the cluster
//!                                  │                              │ one feed task per stream
//!                                  └─ pending[generation] = now   ▼
//!                                                  proxy ◄── NDJSON line (full, delta or ping)
//! POST /v1/ack ─► ProxyEntry.acked / refusal ─► settle pending (histogram) ─► subscribe() ticks
//! ```
//!
//! The latest version of each cluster sits in a `tokio::sync::watch`: a slow proxy never queues
//! versions, it skips to the newest. A feed task sends the cheap endpoint delta only when the
//! proxy holds exactly the delta's base generation; otherwise it sends the full snapshot (which
//! already includes every patch), so a skipped version can never lose an endpoint change.
//!
//! # Traffic
//!
//! ```text
//! POST /v1/traffic ─► per Gateway: went down? ─yes─► old counters ─► retired[cluster]
//!                          │ no                                          │
//!                          ▼                                             ▼
//!                  ProxyEntry.traffic = report ──► traffic(cluster, gw) = Σ proxies + retired
//! ```
//!
//! Proxies report cumulative counters; the controller turns two readings of
//! [`DistributionServer::traffic`] into an interval with `GatewayTraffic::since`, which reads any
//! decrease as a restart. So the sum must never go down, even though proxies come and go:
//!
//! - a disconnected proxy keeps its last report in the sum; when it is forgotten (ten minutes),
//!   or reconnects under another cluster, that report is folded into its cluster's *retired*
//!   accumulator;
//! - a report in which a Gateway's counters went down (any counter: the proxy restarted) or that
//!   no longer lists a Gateway folds the previous counters of that Gateway into the retired
//!   accumulator before the new ones replace them.
//!
//! Every counter of the sum is therefore non-decreasing. Not detectable: a proxy that restarts
//! and counts past its previous totals between two reports (the requests of its last interval
//! before the restart are then lost, the sum still grows), and a proxy that comes back with
//! the same id after being forgotten without restarting, or that leaves a Gateway out of a
//! report and lists it again later with its old counters (those counters are then counted
//! twice: one upward jump). Reports do not tick [`DistributionServer::subscribe`]: they arrive
//! every second from every proxy and change nothing about `Programmed`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meridian_model::Snapshot;
use meridian_model::traffic::{GatewayTraffic, LATENCY_BOUNDS_US};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::protocol::{
    Ack, AckResult, EndpointChange, EndpointsUpdate, GatewayRef, Hello, Outgoing,
    STREAM_CONTENT_TYPE, TrafficReport, Welcome, endpoint_delta, patch_endpoints,
};

/// Largest accepted `Hello` or `Ack` body.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest accepted `TrafficReport` body (a proxy with thousands of Gateways stays well under).
const MAX_TRAFFIC_BODY: usize = 1024 * 1024;
/// At most this many Gateways in one hello or traffic report.
const MAX_GATEWAYS: usize = 10_000;
/// A stream whose proxy does not take a line for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Disconnected proxies are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// At most this many generations per cluster are tracked as pending.
const MAX_PENDING: usize = 256;

/// Settings of a [`DistributionServer`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Shared bearer token every proxy must present.
    pub token: Option<String>,
    /// Accept proxies without a token. Required (and only meant) for local runs without one.
    pub insecure: bool,
    /// How often an idle stream carries a ping.
    pub ping_interval: Duration,
}

impl ServerConfig {
    /// A server on `bind` requiring `token` (or refusing to start without one unless
    /// [`ServerConfig::insecure`] is set).
    pub fn new(bind: SocketAddr, token: Option<String>) -> Self {
        Self {
            bind,
            token,
            insecure: false,
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Neither a token nor `insecure`.
    #[error(
        "the distribution server needs a token (proxies authenticate with it); \
         set `insecure: true` only for local runs without one"
    )]
    NoToken,
    /// An empty token would accept `Authorization: Bearer `.
    #[error("the distribution token must not be empty")]
    EmptyToken,
    /// The socket cannot be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        reason: String,
    },
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why an endpoint update was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Deltas patch the latest full snapshot; there is none.
    #[error("cluster {0:?} has no snapshot yet: publish a full snapshot first")]
    NoSnapshot(String),
    /// The snapshot does not serialize (cannot happen with the model's types, kept explicit).
    #[error("snapshot of cluster {cluster:?} does not serialize: {reason}")]
    Encode {
        /// Cluster.
        cluster: String,
        /// serde_json's message.
        reason: String,
    },
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The generation the proxies will acknowledge (the previous one when unchanged).
    pub generation: u64,
    /// How it travels.
    pub kind: PublishKind,
}

/// How a published generation travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// Same content as the latest: nothing was sent, the generation is the latest one.
    Unchanged,
    /// A full snapshot.
    Full,
    /// An endpoint-only delta (proxies holding an older base get the full snapshot instead).
    Endpoints,
}

/// A proxy's refusal of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The generation refused.
    pub generation: u64,
    /// The proxy's reason.
    pub reason: String,
}

/// What the server knows about one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyState {
    /// Its id.
    pub proxy_id: String,
    /// Member cluster.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Gateways it serves (`None` = all of its cluster's).
    pub gateways: Option<Vec<GatewayRef>>,
    /// Advertised address (for Gateway `status.addresses`).
    pub address: Option<String>,
    /// Whether its stream is open.
    pub connected: bool,
    /// When it last said anything (hello, ack) or disconnected.
    pub last_seen: SystemTime,
    /// Highest generation it acknowledged as applied on its current (or last) stream.
    pub acked_generation: Option<u64>,
    /// Its refusal of a generation newer than `acked_generation`, if any.
    pub last_refusal: Option<Refusal>,
}

/// Whether a generation is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgrammedState {
    /// No connected proxy serves it (status: `Programmed=False`, `NoResources`).
    NoProxy,
    /// Some connected proxies have not acknowledged it yet.
    Pending {
        /// Ids of the proxies still applying it.
        waiting: Vec<String>,
    },
    /// Every connected proxy serving it acknowledged this generation or a newer one.
    Applied,
    /// A connected proxy refused it (and has not applied a newer one since).
    Refused {
        /// The proxy.
        proxy_id: String,
        /// Its reason.
        reason: String,
    },
}

/// One published generation of a cluster, serialized once for every stream.
struct Version {
    generation: u64,
    snapshot: Arc<Snapshot>,
    /// The full snapshot message, newline included; encoded when a stream first needs it
    /// (streams holding the delta's base never do).
    full_line: OnceLock<Bytes>,
    /// The delta message from `base`, newline included.
    delta: Option<(u64, Bytes)>,
}

impl Version {
    fn line_for(
        &self,
        sent: Option<u64>,
        gateways: Option<&[GatewayRef]>,
    ) -> Result<Bytes, serde_json::Error> {
        if let Some((base, line)) = &self.delta
            && sent == Some(*base)
        {
            return Ok(line.clone());
        }
        let Some(only) = gateways else {
            if let Some(l) = self.full_line.get() {
                return Ok(l.clone());
            }
            // Two streams may encode it at once; both results are equal.
            let l = line(&Outgoing::Snapshot(&self.snapshot))?;
            return Ok(self.full_line.get_or_init(|| l).clone());
        };
        let filtered = Snapshot {
            schema: self.snapshot.schema.clone(),
            generation: self.generation,
            gateways: self
                .snapshot
                .gateways
                .iter()
                .filter(|g| {
                    only.iter()
                        .any(|r| r.namespace == g.namespace && r.name == g.name)
                })
                .cloned()
                .collect(),
            drains: self.snapshot.drains.clone(),
            east_west: self.snapshot.east_west.clone(),
        };
        line(&Outgoing::Snapshot(&filtered))
    }
}

fn line(m: &Outgoing<'_>) -> Result<Bytes, serde_json::Error> {
    let mut v = serde_json::to_vec(m)?;
    v.push(b'\n');
    Ok(Bytes::from(v))
}

struct ClusterEntry {
    latest: watch::Sender<Option<Arc<Version>>>,
    last_generation: Option<u64>,
    /// Published generations not yet settled, with their publish time.
    pending: BTreeMap<u64, Instant>,
}

struct ProxyEntry {
    hello: Hello,
    session: u64,
    connected: bool,
    last_seen: SystemTime,
    acked: Option<u64>,
    refusal: Option<Refusal>,
    /// Dropping it ends the feed task of this entry's stream.
    kick: Option<oneshot::Sender<()>>,
    /// Its latest traffic report, per Gateway (cumulative counters).
    traffic: Counters,
}

/// Cumulative traffic counters per Gateway.
type Counters = BTreeMap<GatewayRef, GatewayTraffic>;

impl ProxyEntry {
    fn state(&self) -> ProxyState {
        ProxyState {
            proxy_id: self.hello.proxy_id.clone(),
            cluster: self.hello.cluster.clone(),
            region: self.hello.region.clone(),
            zone: self.hello.zone.clone(),
            gateways: self.hello.gateways.clone(),
            address: self.hello.address.clone(),
            connected: self.connected,
            last_seen: self.last_seen,
            acked_generation: self.acked,
            last_refusal: self.refusal.clone(),
        }
    }
}

struct Inner {
    token: Option<String>,
    ping_interval: Duration,
    clusters: Mutex<HashMap<String, Arc<Mutex<ClusterEntry>>>>,
    // Lock order: `proxies` before any cluster entry.
    proxies: Mutex<HashMap<String, ProxyEntry>>,
    /// Per cluster: counters of proxies gone or restarted, kept so sums never go down.
    // Lock order: `proxies` before `retired`.
    retired: Mutex<HashMap<String, Counters>>,
    changes: watch::Sender<u64>,
    metrics: Metrics,
    next_session: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves state half-written across a panic; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running distribution server. Dropping it stops it like [`DistributionServer::shutdown`]
/// (without waiting).
pub struct DistributionServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl DistributionServer {
    /// Binds and starts serving. Must run inside a tokio runtime.
    pub async fn start(cfg: ServerConfig) -> Result<DistributionServer, ServerError> {
        let token = match (cfg.token, cfg.insecure) {
            (Some(t), _) if t.is_empty() => return Err(ServerError::EmptyToken),
            (Some(t), _) => Some(t),
            (None, true) => None,
            (None, false) => return Err(ServerError::NoToken),
        };
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| ServerError::Bind {
                addr: cfg.bind,
                reason: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| ServerError::Bind {
            addr: cfg.bind,
            reason: e.to_string(),
        })?;
        let inner = Arc::new(Inner {
            token,
            ping_interval: cfg.ping_interval.max(Duration::from_millis(10)),
            clusters: Default::default(),
            proxies: Default::default(),
            retired: Default::default(),
            changes: watch::channel(0).0,
            metrics: Metrics::new()?,
            next_session: AtomicU64::new(1),
        });
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, inner.clone(), stop));
        tracing::info!(%addr, authenticated = inner.token.is_some(), "distribution server up");
        Ok(DistributionServer {
            inner,
            addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes `snapshot` as the newest version for every proxy of `cluster`. Its generation
    /// is kept when it is larger than the cluster's previous one, otherwise (0, or a restarted
    /// caller counting again) the server assigns previous + 1; the result says which. Content
    /// equal to the latest is not sent again; content differing only in endpoint lists travels as
    /// an endpoint delta.
    pub fn publish(&self, cluster: &str, snapshot: Snapshot) -> Result<Published, PublishError> {
        let entry = self.inner.cluster(cluster);
        let mut entry = lock(&entry);
        let prev = entry.latest.borrow().clone();
        let delta = match &prev {
            None => None,
            Some(p) => match endpoint_delta(&p.snapshot, &snapshot) {
                Some(changes) if changes.is_empty() => {
                    return Ok(Published {
                        generation: p.generation,
                        kind: PublishKind::Unchanged,
                    });
                }
                Some(changes) => Some((p.generation, changes)),
                None => None,
            },
        };
        self.inner.store(cluster, &mut entry, snapshot, delta)
    }

    /// Publishes an endpoint-only change for `cluster`: patches its latest snapshot (every
    /// resolved backend with a listed name, mirror backends included) into `generation` (same
    /// numbering rule as [`DistributionServer::publish`]; 0 lets the server choose) and sends the
    /// delta.
    pub fn publish_endpoints(
        &self,
        cluster: &str,
        generation: u64,
        changes: Vec<EndpointChange>,
    ) -> Result<Published, PublishError> {
        let entry = self.inner.cluster(cluster);
        let mut entry = lock(&entry);
        let prev = entry
            .latest
            .borrow()
            .clone()
            .ok_or_else(|| PublishError::NoSnapshot(cluster.to_string()))?;
        let mut snapshot = Snapshot::clone(&prev.snapshot);
        snapshot.generation = generation;
        if !patch_endpoints(&mut snapshot, &changes) {
            return Ok(Published {
                generation: prev.generation,
                kind: PublishKind::Unchanged,
            });
        }
        self.inner.store(
            cluster,
            &mut entry,
            snapshot,
            Some((prev.generation, changes)),
        )
    }

    /// The generation of the latest snapshot published for `cluster`.
    pub fn latest_generation(&self, cluster: &str) -> Option<u64> {
        let entry = lock(&self.inner.clusters).get(cluster).cloned()?;
        let e = lock(&entry);
        e.last_generation
    }

    /// The latest snapshot published for `cluster`.
    pub fn latest(&self, cluster: &str) -> Option<Arc<Snapshot>> {
        let entry = lock(&self.inner.clusters).get(cluster).cloned()?;
        let e = lock(&entry);
        e.latest.borrow().as_ref().map(|v| v.snapshot.clone())
    }

    /// Every proxy known (connected, or disconnected in the last ten minutes), sorted by id.
    pub fn state(&self) -> Vec<ProxyState> {
        let mut out: Vec<ProxyState> = lock(&self.inner.proxies)
            .values()
            .map(ProxyEntry::state)
            .collect();
        out.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        out
    }

    /// A counter that ticks whenever a proxy connects, disconnects or acknowledges: re-read
    /// [`DistributionServer::state`] / [`DistributionServer::programmed`] /
    /// [`DistributionServer::east_west`] when it changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Whether `generation` of `cluster` is served by every connected proxy of that cluster.
    pub fn programmed(&self, cluster: &str, generation: u64) -> ProgrammedState {
        let proxies = lock(&self.inner.proxies);
        evaluate(
            proxies
                .values()
                .filter(|p| p.connected && p.hello.cluster == cluster),
            generation,
        )
    }

    /// Like [`DistributionServer::programmed`], counting only the proxies that serve Gateway
    /// `gateway`.
    pub fn programmed_gateway(
        &self,
        cluster: &str,
        gateway: &GatewayRef,
        generation: u64,
    ) -> ProgrammedState {
        let proxies = lock(&self.inner.proxies);
        evaluate(
            proxies
                .values()
                .filter(|p| p.connected && p.hello.cluster == cluster && p.hello.serves(gateway)),
            generation,
        )
    }

    /// East-west listeners of the connected proxies of `cluster` (from their [`Hello`]s), each
    /// with the zone of its proxy, sorted by address and deduplicated (two proxies naming one
    /// address: the smaller zone). Proxies of other networks reach the cluster's backends there.
    /// [`DistributionServer::subscribe`] ticks whenever a proxy connects or leaves, so a change
    /// of this list is always announced.
    pub fn east_west(&self, cluster: &str) -> Vec<(SocketAddr, String)> {
        let proxies = lock(&self.inner.proxies);
        let mut out: Vec<(SocketAddr, String)> = proxies
            .values()
            .filter(|p| p.connected && p.hello.cluster == cluster)
            .filter_map(|p| {
                // Checked when the stream opened; a bad one never gets here.
                let addr = p.hello.east_west.as_deref()?.parse().ok()?;
                Some((addr, p.hello.zone.clone()))
            })
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Advertised addresses of the connected proxies serving `gateway` in `cluster`, sorted and
    /// deduplicated (for Gateway `status.addresses`).
    pub fn addresses(&self, cluster: &str, gateway: &GatewayRef) -> Vec<String> {
        let proxies = lock(&self.inner.proxies);
        let mut out: Vec<String> = proxies
            .values()
            .filter(|p| p.connected && p.hello.cluster == cluster && p.hello.serves(gateway))
            .filter_map(|p| p.hello.address.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Traffic of Gateway `gateway` in `cluster`: the cumulative counters of every proxy of the
    /// cluster that reported that Gateway (connected or not), plus those of proxies gone or
    /// restarted (see the module docs). Never decreases; `None` while no proxy of the cluster
    /// has reported the Gateway.
    pub fn traffic(&self, cluster: &str, gateway: &GatewayRef) -> Option<GatewayTraffic> {
        let proxies = lock(&self.inner.proxies);
        let mut sum: Option<GatewayTraffic> = None;
        for t in proxies
            .values()
            .filter(|p| p.hello.cluster == cluster)
            .filter_map(|p| p.traffic.get(gateway))
        {
            accumulate(sum.get_or_insert_with(GatewayTraffic::default), t);
        }
        let retired = lock(&self.inner.retired);
        if let Some(t) = retired.get(cluster).and_then(|c| c.get(gateway)) {
            accumulate(sum.get_or_insert_with(GatewayTraffic::default), t);
        }
        sum
    }

    /// The Prometheus text of the server's metrics.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render().unwrap_or_default()
    }

    /// The metrics registry (to merge into the controller's own `/metrics`).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.metrics.registry
    }

    /// Stops listening and closes every connection (proxies keep serving and reconnect with
    /// backoff).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DistributionServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn evaluate<'a>(proxies: impl Iterator<Item = &'a ProxyEntry>, generation: u64) -> ProgrammedState {
    let mut any = false;
    let mut waiting = Vec::new();
    let mut refused: Option<(String, String)> = None;
    for p in proxies {
        any = true;
        if p.acked.is_some_and(|a| a >= generation) {
            continue;
        }
        match &p.refusal {
            Some(r) if r.generation >= generation => {
                // Deterministic choice when several refuse: the smallest id.
                if refused
                    .as_ref()
                    .is_none_or(|(id, _)| p.hello.proxy_id < *id)
                {
                    refused = Some((p.hello.proxy_id.clone(), r.reason.clone()));
                }
            }
            _ => waiting.push(p.hello.proxy_id.clone()),
        }
    }
    if let Some((proxy_id, reason)) = refused {
        return ProgrammedState::Refused { proxy_id, reason };
    }
    if !any {
        return ProgrammedState::NoProxy;
    }
    if waiting.is_empty() {
        ProgrammedState::Applied
    } else {
        waiting.sort();
        ProgrammedState::Pending { waiting }
    }
}

/// Adds `from` into `into`, saturating: counters come from the network.
fn accumulate(into: &mut GatewayTraffic, from: &GatewayTraffic) {
    into.requests = into.requests.saturating_add(from.requests);
    for (r, n) in &from.by_region {
        let e = into.by_region.entry(r.clone()).or_default();
        *e = e.saturating_add(*n);
    }
    for (k, n) in &from.failed {
        let e = into.failed.entry(*k).or_default();
        *e = e.saturating_add(*n);
    }
    // Histogram::merge adds with saturation.
    into.latency.merge(&from.latency);
}

/// Whether any counter of `now` is below the same counter of `before` (a restarted proxy).
fn went_down(now: &GatewayTraffic, before: &GatewayTraffic) -> bool {
    let below = |n: Option<&u64>, b: &u64| n.copied().unwrap_or(0) < *b;
    now.requests < before.requests
        || before
            .by_region
            .iter()
            .any(|(r, b)| below(now.by_region.get(r), b))
        || before
            .failed
            .iter()
            .any(|(k, b)| below(now.failed.get(k), b))
        || before
            .latency
            .counts
            .iter()
            .enumerate()
            .any(|(i, b)| below(now.latency.counts.get(i), b))
}

impl Inner {
    fn cluster(&self, cluster: &str) -> Arc<Mutex<ClusterEntry>> {
        lock(&self.clusters)
            .entry(cluster.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ClusterEntry {
                    latest: watch::channel(None).0,
                    last_generation: None,
                    pending: BTreeMap::new(),
                }))
            })
            .clone()
    }

    /// Numbers, serializes and stores a new version; called with the cluster entry locked.
    fn store(
        &self,
        cluster: &str,
        entry: &mut ClusterEntry,
        mut snapshot: Snapshot,
        delta: Option<(u64, Vec<EndpointChange>)>,
    ) -> Result<Published, PublishError> {
        // The caller's number when it moves forward, else the next one.
        let generation = match entry.last_generation {
            Some(last) if snapshot.generation <= last => last.saturating_add(1),
            None if snapshot.generation == 0 => 1,
            _ => snapshot.generation,
        };
        snapshot.generation = generation;
        let encode = |e: serde_json::Error| PublishError::Encode {
            cluster: cluster.to_string(),
            reason: e.to_string(),
        };
        let full_line = OnceLock::new();
        let (kind, delta) = match delta {
            Some((base, changes)) => {
                let update = EndpointsUpdate {
                    generation,
                    base,
                    changes,
                };
                let l = line(&Outgoing::Endpoints(&update)).map_err(encode)?;
                (PublishKind::Endpoints, Some((base, l)))
            }
            None => {
                // Encoded now: every stream needs it, and an encoding error belongs here.
                let l = line(&Outgoing::Snapshot(&snapshot)).map_err(encode)?;
                let _ = full_line.set(l);
                (PublishKind::Full, None)
            }
        };
        entry.last_generation = Some(generation);
        entry.pending.insert(generation, Instant::now());
        while entry.pending.len() > MAX_PENDING {
            entry.pending.pop_first();
        }
        self.metrics
            .pending
            .with_label_values(&[cluster])
            .set(i64::try_from(entry.pending.len()).unwrap_or(i64::MAX));
        self.metrics
            .published
            .with_label_values(&[
                cluster,
                if kind == PublishKind::Full {
                    "full"
                } else {
                    "endpoints"
                },
            ])
            .inc();
        let old = entry.latest.send_replace(Some(Arc::new(Version {
            generation,
            snapshot: Arc::new(snapshot),
            full_line,
            delta,
        })));
        // Freeing a big snapshot takes tens of ms; keep it out of the caller's path.
        if let (Some(old), Ok(rt)) = (old, tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || drop(old));
        }
        tracing::debug!(cluster, generation, ?kind, "published");
        Ok(Published { generation, kind })
    }

    /// Settles the pending generations of `cluster` that every connected proxy has now applied
    /// (observing their propagation time) or that one refused.
    fn settle(&self, proxies: &HashMap<String, ProxyEntry>, cluster: &str) {
        let Some(entry) = lock(&self.clusters).get(cluster).cloned() else {
            return;
        };
        let mut entry = lock(&entry);
        let now = Instant::now();
        let mut settled = Vec::new();
        for (&generation, &at) in &entry.pending {
            let state = evaluate(
                proxies
                    .values()
                    .filter(|p| p.connected && p.hello.cluster == cluster),
                generation,
            );
            match state {
                ProgrammedState::Applied => {
                    self.metrics
                        .propagation
                        .with_label_values(&[cluster])
                        .observe(now.duration_since(at).as_secs_f64());
                    settled.push(generation);
                }
                ProgrammedState::Refused { .. } => settled.push(generation),
                ProgrammedState::Pending { .. } | ProgrammedState::NoProxy => {}
            }
        }
        for g in settled {
            entry.pending.remove(&g);
        }
        self.metrics
            .pending
            .with_label_values(&[cluster])
            .set(i64::try_from(entry.pending.len()).unwrap_or(i64::MAX));
    }

    fn recount(&self, proxies: &HashMap<String, ProxyEntry>, cluster: &str) {
        let n = proxies
            .values()
            .filter(|p| p.connected && p.hello.cluster == cluster)
            .count();
        self.metrics
            .connected
            .with_label_values(&[cluster])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Registers a new stream; returns its session and the receiver that fires when a newer
    /// stream of the same proxy replaces it.
    fn connect(&self, hello: &Hello) -> (u64, oneshot::Receiver<()>) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        let now = SystemTime::now();
        let mut proxies = lock(&self.proxies);
        let mut departed = Vec::new();
        proxies.retain(|_, p| {
            let keep = p.connected
                || now
                    .duration_since(p.last_seen)
                    .is_ok_and(|d| d < FORGET_AFTER);
            if !keep && !p.traffic.is_empty() {
                departed.push((p.hello.cluster.clone(), std::mem::take(&mut p.traffic)));
            }
            keep
        });
        // A reconnecting proxy keeps its counters (the next report tells whether it restarted);
        // one that moved to another cluster leaves them to its old cluster.
        let mut traffic = Counters::new();
        if let Some(old) = proxies.get_mut(&hello.proxy_id) {
            let counters = std::mem::take(&mut old.traffic);
            if old.hello.cluster == hello.cluster {
                traffic = counters;
            } else if !counters.is_empty() {
                departed.push((old.hello.cluster.clone(), counters));
            }
        }
        if !departed.is_empty() {
            let mut retired = lock(&self.retired);
            for (cluster, counters) in departed {
                let sums = retired.entry(cluster).or_default();
                for (gw, t) in counters {
                    accumulate(sums.entry(gw).or_default(), &t);
                }
            }
        }
        // Replacing the entry drops the old kick sender, which ends the old stream.
        let old = proxies.insert(
            hello.proxy_id.clone(),
            ProxyEntry {
                hello: hello.clone(),
                session,
                connected: true,
                last_seen: now,
                acked: None,
                refusal: None,
                kick: Some(kick),
                traffic,
            },
        );
        if let Some(old) = old
            && old.hello.cluster != hello.cluster
        {
            self.recount(&proxies, &old.hello.cluster);
            self.settle(&proxies, &old.hello.cluster);
        }
        self.recount(&proxies, &hello.cluster);
        drop(proxies);
        tracing::info!(proxy = %hello.proxy_id, cluster = %hello.cluster, session, "proxy connected");
        self.notify();
        (session, kicked)
    }

    fn disconnect(&self, proxy_id: &str, session: u64) {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(proxy_id) else {
            return;
        };
        if p.session != session {
            return; // replaced by a newer stream
        }
        p.connected = false;
        p.kick = None;
        p.last_seen = SystemTime::now();
        let cluster = p.hello.cluster.clone();
        self.recount(&proxies, &cluster);
        // The proxies still connected may now all have applied a pending generation.
        self.settle(&proxies, &cluster);
        drop(proxies);
        tracing::info!(proxy = %proxy_id, cluster = %cluster, session, "proxy disconnected");
        self.notify();
    }

    fn ack(&self, ack: Ack) -> Result<(), String> {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(&ack.proxy_id) else {
            return Err(format!(
                "unknown proxy {:?}: open POST /v1/stream first",
                ack.proxy_id
            ));
        };
        p.last_seen = SystemTime::now();
        match ack.result {
            AckResult::Applied => {
                p.acked = Some(p.acked.map_or(ack.generation, |a| a.max(ack.generation)));
                if p.refusal
                    .as_ref()
                    .is_some_and(|r| r.generation <= ack.generation)
                {
                    p.refusal = None;
                }
                tracing::debug!(proxy = %ack.proxy_id, generation = ack.generation, "applied");
            }
            AckResult::Refused { reason } => {
                self.metrics
                    .nacks
                    .with_label_values(&[&p.hello.cluster])
                    .inc();
                tracing::warn!(proxy = %ack.proxy_id, generation = ack.generation, %reason, "generation refused");
                if p.acked.is_none_or(|a| a < ack.generation) {
                    p.refusal = Some(Refusal {
                        generation: ack.generation,
                        reason,
                    });
                }
            }
        }
        let cluster = p.hello.cluster.clone();
        self.settle(&proxies, &cluster);
        drop(proxies);
        self.notify();
        Ok(())
    }

    /// Stores a proxy's traffic report, folding counters that went down (or Gateways no longer
    /// reported) into the cluster's retired accumulator first.
    fn traffic(&self, report: TrafficReport) -> Result<(), String> {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(&report.proxy_id) else {
            return Err(format!(
                "unknown proxy {:?}: open POST /v1/stream first",
                report.proxy_id
            ));
        };
        p.last_seen = SystemTime::now();
        let new: Counters = report
            .gateways
            .into_iter()
            .map(|g| {
                (
                    GatewayRef {
                        namespace: g.namespace,
                        name: g.name,
                    },
                    g.traffic,
                )
            })
            .collect();
        let mut restarted = false;
        let mut folded = Vec::new();
        for (gw, before) in std::mem::take(&mut p.traffic) {
            match new.get(&gw) {
                Some(now) if !went_down(now, &before) => {}
                now => {
                    restarted |= now.is_some();
                    folded.push((gw, before));
                }
            }
        }
        p.traffic = new;
        let cluster = p.hello.cluster.clone();
        if !folded.is_empty() {
            let mut retired = lock(&self.retired);
            let sums = retired.entry(cluster.clone()).or_default();
            for (gw, t) in folded {
                accumulate(sums.entry(gw).or_default(), &t);
            }
        }
        drop(proxies);
        self.metrics
            .traffic_reports
            .with_label_values(&[&cluster])
            .inc();
        if restarted {
            self.metrics
                .traffic_restarts
                .with_label_values(&[&cluster])
                .inc();
            tracing::info!(proxy = %report.proxy_id, cluster, "traffic counters went down (proxy restarted); kept the old ones in the sum");
        }
        Ok(())
    }
}

type ResBody = UnsyncBoxBody<Bytes, Infallible>;

/// The stream body: lines from the feed task.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "distribution accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let inner = inner.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let stop_feed = stop.clone();
                    let svc = service_fn(move |req| {
                        let (inner, stop) = (inner.clone(), stop_feed.clone());
                        async move { Ok::<_, Infallible>(handle(inner, req, stop).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "distribution connection ended");
                        },
                        // Dropping the connection closes the socket: proxies see the server go.
                        _ = stop.changed() => {}
                    }
                });
            }
        }
    }
    tracing::info!("distribution server stopped");
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ResBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timings.
fn token_matches(expected: &str, got: &str) -> bool {
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(inner: &Inner, req: &Request<Incoming>) -> bool {
    let Some(expected) = &inner.token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| token_matches(expected, got.trim()))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<ResBody>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large: at most {limit} bytes\n"),
        )
    };
    // Refused before reading when the client says how much it will send.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}\n"),
                )
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}\n")))
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    stop: watch::Receiver<bool>,
) -> Response<ResBody> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => match inner.metrics.render() {
            Ok(t) => text(StatusCode::OK, t),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("metrics encoding failed: {e}\n"),
            ),
        },
        (&Method::POST, "/v1/stream" | "/v1/ack" | "/v1/traffic") if !authorized(&inner, &req) => {
            inner
                .metrics
                .unauthorized
                .with_label_values(&[path.as_str()])
                .inc();
            tracing::warn!(path, "request without a valid bearer token refused");
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)\n",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            resp
        }
        (&Method::POST, "/v1/stream") => {
            let hello: Hello = match read_json(req, MAX_REQUEST_BODY).await {
                Ok(h) => h,
                Err(resp) => return resp,
            };
            if let Err(msg) = check_hello(&hello) {
                return text(StatusCode::BAD_REQUEST, format!("{msg}\n"));
            }
            open_stream(inner, hello, stop)
        }
        (&Method::POST, "/v1/ack") => {
            let ack: Ack = match read_json(req, MAX_REQUEST_BODY).await {
                Ok(a) => a,
                Err(resp) => return resp,
            };
            match inner.ack(ack) {
                Ok(()) => text(StatusCode::NO_CONTENT, ""),
                Err(msg) => text(StatusCode::NOT_FOUND, format!("{msg}\n")),
            }
        }
        (&Method::POST, "/v1/traffic") => {
            let report: TrafficReport = match read_json(req, MAX_TRAFFIC_BODY).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if let Err(msg) = check_traffic(&report) {
                return text(StatusCode::BAD_REQUEST, format!("{msg}\n"));
            }
            match inner.traffic(report) {
                Ok(()) => text(StatusCode::NO_CONTENT, ""),
                Err(msg) => text(StatusCode::NOT_FOUND, format!("{msg}\n")),
            }
        }
        (_, "/v1/stream" | "/v1/ack" | "/v1/traffic") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /v1/stream, POST /v1/ack, POST /v1/traffic, GET /healthz, \
             GET /metrics\n",
        ),
    }
}

fn check_hello(h: &Hello) -> Result<(), String> {
    if h.proxy_id.is_empty() || h.proxy_id.len() > 253 {
        return Err("proxyId must be 1 to 253 characters".to_string());
    }
    if h.cluster.is_empty() || h.cluster.len() > 253 {
        return Err("cluster must be 1 to 253 characters".to_string());
    }
    if h.gateways.as_ref().is_some_and(|g| g.len() > MAX_GATEWAYS) {
        return Err(format!("at most {MAX_GATEWAYS} gateways"));
    }
    if let Some(ew) = &h.east_west {
        // Other proxies connect to it as given: it must be a concrete ip:port.
        match ew.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() || a.port() == 0 => {
                return Err(format!(
                    "eastWest {ew:?}: give the address other proxies reach the listener on, \
                     not an unspecified IP or port 0"
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "eastWest {ew:?}: expected IP:PORT (e.g. 10.0.0.5:15443 or [fd00::5]:15443)"
                ));
            }
        }
    }
    Ok(())
}

fn check_traffic(r: &TrafficReport) -> Result<(), String> {
    if r.proxy_id.is_empty() || r.proxy_id.len() > 253 {
        return Err("proxyId must be 1 to 253 characters".to_string());
    }
    if r.gateways.len() > MAX_GATEWAYS {
        return Err(format!("at most {MAX_GATEWAYS} gateways"));
    }
    let mut seen = std::collections::HashSet::new();
    for g in &r.gateways {
        if g.namespace.is_empty() || g.name.is_empty() {
            return Err("every gateway needs a namespace and a name".to_string());
        }
        if !seen.insert((&g.namespace, &g.name)) {
            return Err(format!(
                "gateway {}/{} is listed twice",
                g.namespace, g.name
            ));
        }
        if g.traffic.latency.counts.len() > LATENCY_BOUNDS_US.len() + 1 {
            return Err(format!(
                "gateway {}/{}: latency histogram has {} buckets, at most {}",
                g.namespace,
                g.name,
                g.traffic.latency.counts.len(),
                LATENCY_BOUNDS_US.len() + 1
            ));
        }
    }
    Ok(())
}

fn open_stream(inner: Arc<Inner>, hello: Hello, stop: watch::Receiver<bool>) -> Response<ResBody> {
    let (session, kicked) = inner.connect(&hello);
    let mut versions = lock(&inner.cluster(&hello.cluster)).latest.subscribe();
    // Deliver the current version right away.
    versions.mark_changed();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(feed(inner, hello, session, versions, tx, kicked, stop));
    let mut resp = Response::new(ChannelBody(rx).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Writes one stream: welcome, then every new version of the cluster, pings while idle.
async fn feed(
    inner: Arc<Inner>,
    hello: Hello,
    session: u64,
    mut versions: watch::Receiver<Option<Arc<Version>>>,
    tx: mpsc::Sender<Bytes>,
    mut kicked: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    let send = |line: Bytes| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(WRITE_TIMEOUT, tx.send(line)).await,
                Ok(Ok(()))
            )
        }
    };
    let ping_line = line(&Outgoing::Ping).unwrap_or_else(|_| Bytes::from_static(b"\"ping\"\n"));
    let welcome = Welcome {
        ping_interval_ms: u64::try_from(inner.ping_interval.as_millis()).unwrap_or(u64::MAX),
    };
    let mut ok = match line(&Outgoing::Welcome(&welcome)) {
        Ok(l) => send(l).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the welcome line");
            false
        }
    };
    let mut sent: Option<u64> = None;
    let mut ping = tokio::time::interval(inner.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    while ok {
        tokio::select! {
            _ = &mut kicked => break,
            _ = stop.changed() => break,
            () = tx.closed() => break,
            changed = versions.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some(v) = versions.borrow_and_update().clone() else {
                    continue;
                };
                if sent == Some(v.generation) {
                    continue;
                }
                match v.line_for(sent, hello.gateways.as_deref()) {
                    Ok(l) => {
                        ok = send(l).await;
                        sent = Some(v.generation);
                        ping.reset();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a snapshot; closing the stream");
                        break;
                    }
                }
            }
            _ = ping.tick() => ok = send(ping_line.clone()).await,
        }
    }
    inner.disconnect(&hello.proxy_id, session);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(id: &str, acked: Option<u64>, refusal: Option<(u64, &str)>) -> ProxyEntry {
        ProxyEntry {
            hello: Hello {
                proxy_id: id.into(),
                cluster: "c".into(),
                region: String::new(),
                zone: String::new(),
                gateways: None,
                address: None,
                east_west: None,
            },
            session: 1,
            connected: true,
            last_seen: SystemTime::now(),
            acked,
            refusal: refusal.map(|(generation, r)| Refusal {
                generation,
                reason: r.into(),
            }),
            kick: None,
            traffic: Counters::new(),
        }
    }

    #[test]
    fn programmed_needs_every_proxy_and_reports_refusals() {
        assert_eq!(evaluate([].iter(), 5), ProgrammedState::NoProxy);
        let a = entry("a", Some(5), None);
        let b = entry("b", Some(4), None);
        assert_eq!(evaluate([&a].into_iter(), 5), ProgrammedState::Applied);
        // A newer generation applied counts for older ones.
        assert_eq!(evaluate([&a].into_iter(), 3), ProgrammedState::Applied);
        assert_eq!(
            evaluate([&a, &b].into_iter(), 5),
            ProgrammedState::Pending {
                waiting: vec!["b".into()]
            }
        );
        let c = entry("c", Some(4), Some((5, "bind failed")));
        assert_eq!(
            evaluate([&a, &b, &c].into_iter(), 5),
            ProgrammedState::Refused {
                proxy_id: "c".into(),
                reason: "bind failed".into()
            }
        );
        // The refusal is about 5, not about 4, which c serves.
        assert_eq!(evaluate([&c].into_iter(), 4), ProgrammedState::Applied);
        // 6 is newer than the refusal: c has simply not answered it yet.
        assert_eq!(
            evaluate([&c].into_iter(), 6),
            ProgrammedState::Pending {
                waiting: vec!["c".into()]
            }
        );
    }

    fn counters(requests: u64) -> GatewayTraffic {
        let mut t = GatewayTraffic::default();
        for _ in 0..requests {
            t.record(Some("r1"), None, 2_000);
        }
        t
    }

    fn report(id: &str, requests: u64) -> TrafficReport {
        TrafficReport {
            proxy_id: id.into(),
            gateways: vec![crate::protocol::GatewayTrafficReport {
                namespace: "ns".into(),
                name: "web".into(),
                traffic: counters(requests),
            }],
        }
    }

    #[tokio::test]
    async fn forgotten_proxies_leave_their_counters_in_the_sum() {
        let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), None);
        cfg.insecure = true;
        let srv = DistributionServer::start(cfg).await.unwrap();
        let inner = &srv.inner;
        let web = GatewayRef {
            namespace: "ns".into(),
            name: "web".into(),
        };
        let a = entry("a", None, None).hello;
        let _ = inner.connect(&a);
        inner.traffic(report("a", 5)).unwrap();
        assert_eq!(srv.traffic("c", &web), Some(counters(5)));
        // `a` went away longer ago than the server remembers proxies.
        {
            let mut proxies = lock(&inner.proxies);
            let p = proxies.get_mut("a").unwrap();
            p.connected = false;
            p.kick = None;
            p.last_seen = SystemTime::now() - FORGET_AFTER - Duration::from_secs(60);
        }
        let _ = inner.connect(&entry("b", None, None).hello);
        assert!(
            srv.state().iter().all(|p| p.proxy_id != "a"),
            "a not forgotten"
        );
        assert_eq!(srv.traffic("c", &web), Some(counters(5)));
        assert!(
            inner
                .traffic(report("a", 1))
                .unwrap_err()
                .contains("unknown proxy")
        );
        inner.traffic(report("b", 2)).unwrap();
        assert_eq!(srv.traffic("c", &web).unwrap().requests, 7);
        // `a` back after a restart: its new counters add to the ones kept.
        let _ = inner.connect(&a);
        inner.traffic(report("a", 1)).unwrap();
        assert_eq!(srv.traffic("c", &web).unwrap().requests, 8);
        assert_eq!(srv.traffic("other", &web), None);
    }

    #[test]
    fn sums_saturate_and_decreases_are_found_in_any_counter() {
        let mut big = counters(1);
        big.requests = u64::MAX;
        big.by_region.insert("r1".into(), u64::MAX);
        let mut sum = counters(3);
        accumulate(&mut sum, &big);
        assert_eq!(sum.requests, u64::MAX);
        assert_eq!(sum.by_region["r1"], u64::MAX);
        assert_eq!(sum.latency.total(), 4);

        let before = counters(3);
        assert!(!went_down(&counters(3), &before));
        assert!(!went_down(&counters(4), &before));
        assert!(went_down(&counters(2), &before));
        let mut other_region = counters(0);
        for _ in 0..5 {
            other_region.record(Some("r2"), None, 2_000);
        }
        assert!(went_down(&other_region, &before), "r1 went from 3 to 0");
        let mut slower = counters(0);
        for _ in 0..5 {
            slower.record(Some("r1"), None, 900_000);
        }
        assert!(went_down(&slower, &before), "the 2 ms bucket went down");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
        assert!(!token_matches("secret", ""));
    }
}
