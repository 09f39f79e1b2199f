//! Prometheus metrics of the controller and the admin listener that serves them.
//!
//! Every [`Metrics`] owns its own registry (several controllers can run in one test process).
//!
//! Member-cluster health (the cluster-level circuit breaker): `meridian_member_cluster_reachable`,
//! `meridian_member_cluster_seconds_since_contact` (computed at scrape time) and
//! `meridian_member_cluster_stale_endpoints` (endpoints served from an unreachable cluster's
//! last-known EndpointSlices) and `meridian_member_cluster_api_latency_seconds` (duration of the
//! last successful probe: one discovery round trip per API group), each by `cluster`.
//!
//! Multi-network clusters: `meridian_east_west_missing_backends{cluster}` counts the backends of
//! a cluster's snapshot that lack the endpoints of some cluster on another network because no
//! proxy of that cluster has an east-west listener (the controller logs which at debug level).
//!
//! The admin listener answers `/healthz` (the process runs), `/readyz` (every member cluster
//! finished its initial sync at least once; the body lists each cluster) and `/metrics`, all
//! without credentials, and the read-only JSON of `meridian status` and `meridian explain` under
//! `/v1/` (module [`crate::inspect::admin`]: a bearer token, or a loopback listener).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::sync::watch;

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// Registries of other parts of this process served on the same `/metrics` (the
    /// distribution server's: publish → acknowledged, stream messages), gathered at encode time.
    also: Mutex<Vec<Registry>>,
    /// Watch events applied to the index, by cluster and kind.
    pub watch_events: IntCounterVec,
    /// Watch stream errors (each followed by a backoff), by cluster and kind.
    pub watch_errors: IntCounterVec,
    /// Objects that failed to decode and were left out of the index, by cluster and kind.
    pub decode_errors: IntCounterVec,
    /// 1 while a kind is watched in a cluster (its CRD is installed).
    pub kind_watched: IntGaugeVec,
    /// 1 once a cluster finished its initial sync.
    pub cluster_synced: IntGaugeVec,
    /// 1 while the last probe of a cluster's API succeeded (kept for existing dashboards; same
    /// value as [`Metrics::member_reachable`]).
    pub cluster_reachable: IntGaugeVec,
    /// `meridian_member_cluster_reachable{cluster}`: 1 while the last probe of a member
    /// cluster's API succeeded, 0 after a failed one.
    pub member_reachable: IntGaugeVec,
    /// `meridian_member_cluster_seconds_since_contact{cluster}`: seconds since the last
    /// successful probe (since the controller started when the cluster was never reached);
    /// computed when the metrics are encoded.
    pub member_seconds_since_contact: GaugeVec,
    /// `meridian_member_cluster_stale_endpoints{cluster}`: endpoints of the cluster that the
    /// published snapshots still serve from its last-known EndpointSlices while its API is
    /// unreachable (0 while it is reachable, and after the grace withdrew them).
    pub member_stale_endpoints: IntGaugeVec,
    /// `meridian_member_cluster_api_latency_seconds{cluster}`: duration of the last successful
    /// probe of a member cluster's API.
    pub member_api_latency: GaugeVec,
    /// Last successful probe per member cluster (`None`: never reached).
    contacts: Mutex<BTreeMap<String, Option<Instant>>>,
    /// Duration of the last successful probe per member cluster.
    latencies: Mutex<BTreeMap<String, std::time::Duration>>,
    started: Instant,
    /// Status writes by cluster, kind and result (`ok`, `conflict`, `gone`, `invalid`,
    /// `error`, `timeout`).
    pub status_writes: IntCounterVec,
    /// Status write latency by cluster and kind (successful and failed attempts).
    pub status_write_seconds: HistogramVec,
    /// Status updates waiting to be written (including ones backing off), by cluster.
    pub status_pending: IntGaugeVec,
    /// Status updates dropped before writing because the same status was already written or
    /// queued against the same object version, by cluster.
    pub status_skipped: IntCounterVec,
    /// Translation passes by mode (`full`, `incremental`, `endpoints`; `echoes`: a pass that
    /// only noted echoes of our status writes and translated nothing).
    pub translations: IntCounterVec,
    /// Translation time by mode.
    pub translate_seconds: HistogramVec,
    /// What incremental passes translated again, by object (`route`: routes translated again;
    /// `gateway`: Gateways whose status was recomputed): with `translations{mode="incremental"}`,
    /// what an incremental pass costs on average.
    pub incremental_objects: IntCounterVec,
    /// Watch events of GatewayClasses, Gateways, HTTPRoutes and FailoverPolicies that changed
    /// nothing translation reads besides the status, by outcome: `echo` (the status the last
    /// pass computed: nothing translated), `status` (another status: translated at the
    /// re-check), `unread` (not even the status: only what translation does not read).
    pub status_events: IntCounterVec,
    /// Status-only changes (mostly echoes) that no pass has taken yet: the bookkeeping the next
    /// pass owes them (a pass runs for them alone once the events stop for a moment).
    pub status_events_waiting: prometheus::IntGauge,
    /// Snapshots handed to the data plane, by cluster.
    pub snapshots_published: IntCounterVec,
    /// FailoverDrills in the member clusters by `status.phase` (`Pending` includes drills
    /// without status).
    pub drills: IntGaugeVec,
    /// Drains the drill runner currently puts into every snapshot.
    pub drains: prometheus::IntGauge,
    /// Live view event streams open on the admin listener.
    pub live_streams: prometheus::IntGauge,
    /// `meridian_east_west_missing_backends{cluster}`: backends of the cluster's snapshot that
    /// lack the endpoints of some cluster on another network, because no proxy of that cluster
    /// has an east-west listener (always 0 with one network).
    pub east_west_missing: IntGaugeVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Watches and initial sync.
struct WatchFamily {
    watch_events: IntCounterVec,
    watch_errors: IntCounterVec,
    decode_errors: IntCounterVec,
    kind_watched: IntGaugeVec,
    cluster_synced: IntGaugeVec,
}

fn watch_family(r: &Registry) -> prometheus::Result<WatchFamily> {
    let by_kind = &["cluster", "kind"];
    Ok(WatchFamily {
        watch_events: counter(
            r,
            "meridian_controller_watch_events_total",
            "Watch events applied to the index",
            by_kind,
        )?,
        watch_errors: counter(
            r,
            "meridian_controller_watch_errors_total",
            "Watch stream errors",
            by_kind,
        )?,
        decode_errors: counter(
            r,
            "meridian_controller_decode_errors_total",
            "Objects that failed to decode",
            by_kind,
        )?,
        kind_watched: gauge(
            r,
            "meridian_controller_kind_watched",
            "1 while a kind is watched in a cluster",
            by_kind,
        )?,
        cluster_synced: gauge(
            r,
            "meridian_controller_cluster_synced",
            "1 once a cluster finished its initial sync",
            &["cluster"],
        )?,
    })
}

/// Member-cluster health (the cluster-level circuit breaker).
struct MemberFamily {
    cluster_reachable: IntGaugeVec,
    member_reachable: IntGaugeVec,
    member_seconds_since_contact: GaugeVec,
    member_stale_endpoints: IntGaugeVec,
    member_api_latency: GaugeVec,
}

/// A member cluster's health as `meridian status` shows it ([`Metrics::member_health`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberHealth {
    /// A probe ever succeeded.
    pub contacted: bool,
    /// Time since the last successful probe (since the controller started when never).
    pub since_contact: Option<std::time::Duration>,
    /// Duration of the last successful probe.
    pub latency: Option<std::time::Duration>,
}

fn member_family(r: &Registry) -> prometheus::Result<MemberFamily> {
    let since_contact = GaugeVec::new(
        Opts::new(
            "meridian_member_cluster_seconds_since_contact",
            "Seconds since the last successful API probe of a member cluster",
        ),
        &["cluster"],
    )?;
    r.register(Box::new(since_contact.clone()))?;
    let api_latency = GaugeVec::new(
        Opts::new(
            "meridian_member_cluster_api_latency_seconds",
            "Duration of the last successful API probe of a member cluster",
        ),
        &["cluster"],
    )?;
    r.register(Box::new(api_latency.clone()))?;
    Ok(MemberFamily {
        member_api_latency: api_latency,
        cluster_reachable: gauge(
            r,
            "meridian_controller_cluster_reachable",
            "1 while the last API probe of a cluster succeeded",
            &["cluster"],
        )?,
        member_reachable: gauge(
            r,
            "meridian_member_cluster_reachable",
            "1 while the last API probe of a member cluster succeeded",
            &["cluster"],
        )?,
        member_seconds_since_contact: since_contact,
        member_stale_endpoints: gauge(
            r,
            "meridian_member_cluster_stale_endpoints",
            "Endpoints served from the last-known state of an unreachable member cluster",
            &["cluster"],
        )?,
    })
}

/// Status writes.
struct StatusFamily {
    status_writes: IntCounterVec,
    status_write_seconds: HistogramVec,
    status_pending: IntGaugeVec,
    status_skipped: IntCounterVec,
}

fn status_family(r: &Registry) -> prometheus::Result<StatusFamily> {
    Ok(StatusFamily {
        status_writes: counter(
            r,
            "meridian_controller_status_writes_total",
            "Status writes by result",
            &["cluster", "kind", "result"],
        )?,
        status_write_seconds: histogram(
            r,
            "meridian_controller_status_write_seconds",
            "Status write latency",
            &["cluster", "kind"],
        )?,
        status_pending: gauge(
            r,
            "meridian_controller_status_pending",
            "Status updates waiting to be written",
            &["cluster"],
        )?,
        status_skipped: counter(
            r,
            "meridian_controller_status_skipped_total",
            "Status updates already written or queued",
            &["cluster"],
        )?,
    })
}

/// Translation passes and what they publish.
struct PassFamily {
    translations: IntCounterVec,
    translate_seconds: HistogramVec,
    incremental_objects: IntCounterVec,
    status_events: IntCounterVec,
    status_events_waiting: prometheus::IntGauge,
    snapshots_published: IntCounterVec,
    east_west_missing: IntGaugeVec,
}

fn pass_family(r: &Registry) -> prometheus::Result<PassFamily> {
    let status_events_waiting = prometheus::IntGauge::new(
        "meridian_controller_status_events_waiting",
        "Status-only changes (mostly echoes of our writes) not yet taken by a pass",
    )?;
    r.register(Box::new(status_events_waiting.clone()))?;
    Ok(PassFamily {
        status_events_waiting,
        translations: counter(
            r,
            "meridian_controller_translations_total",
            "Translation passes (echoes: passes that only noted echoes of our status writes)",
            &["mode"],
        )?,
        translate_seconds: histogram(
            r,
            "meridian_controller_translate_seconds",
            "Translation time",
            &["mode"],
        )?,
        incremental_objects: counter(
            r,
            "meridian_controller_incremental_objects_total",
            "Objects incremental passes translated again (route) or recomputed the status of (gateway)",
            &["object"],
        )?,
        status_events: counter(
            r,
            "meridian_controller_status_events_total",
            "Watch events that changed only the status (echo, status) or nothing translation reads (unread)",
            &["outcome"],
        )?,
        snapshots_published: counter(
            r,
            "meridian_controller_snapshots_published_total",
            "Snapshots handed to the data plane",
            &["cluster"],
        )?,
        east_west_missing: gauge(
            r,
            "meridian_east_west_missing_backends",
            "Backends lacking the endpoints of another network's cluster that has no \
             east-west listener",
            &["cluster"],
        )?,
    })
}

/// FailoverDrills and their drains.
struct DrillFamily {
    drills: IntGaugeVec,
    drains: prometheus::IntGauge,
}

fn drill_family(r: &Registry) -> prometheus::Result<DrillFamily> {
    let drains = prometheus::IntGauge::new(
        "meridian_controller_drains",
        "Drains currently in every snapshot (FailoverDrill mode drain)",
    )?;
    r.register(Box::new(drains.clone()))?;
    Ok(DrillFamily {
        drills: gauge(
            r,
            "meridian_controller_drills",
            "FailoverDrills by phase",
            &["phase"],
        )?,
        drains,
    })
}

impl Metrics {
    /// Registers every metric in a fresh registry, family by family.
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let live_streams = prometheus::IntGauge::new(
            "meridian_controller_live_streams",
            "Live view event streams open on the admin listener",
        )?;
        r.register(Box::new(live_streams.clone()))?;
        let WatchFamily {
            watch_events,
            watch_errors,
            decode_errors,
            kind_watched,
            cluster_synced,
        } = watch_family(&r)?;
        let MemberFamily {
            cluster_reachable,
            member_reachable,
            member_seconds_since_contact,
            member_stale_endpoints,
            member_api_latency,
        } = member_family(&r)?;
        let StatusFamily {
            status_writes,
            status_write_seconds,
            status_pending,
            status_skipped,
        } = status_family(&r)?;
        let PassFamily {
            translations,
            translate_seconds,
            incremental_objects,
            status_events,
            status_events_waiting,
            snapshots_published,
            east_west_missing,
        } = pass_family(&r)?;
        let DrillFamily { drills, drains } = drill_family(&r)?;
        Ok(Self {
            registry: r,
            also: Mutex::new(Vec::new()),
            watch_events,
            watch_errors,
            decode_errors,
            kind_watched,
            cluster_synced,
            cluster_reachable,
            member_reachable,
            member_seconds_since_contact,
            member_stale_endpoints,
            member_api_latency,
            contacts: Mutex::new(BTreeMap::new()),
            latencies: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            status_writes,
            status_write_seconds,
            status_pending,
            status_skipped,
            translations,
            translate_seconds,
            incremental_objects,
            status_events,
            status_events_waiting,
            snapshots_published,
            drills,
            drains,
            live_streams,
            east_west_missing,
        })
    }

    fn lock_contacts(&self) -> MutexGuard<'_, BTreeMap<String, Option<Instant>>> {
        self.contacts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A member cluster the controller serves; its series exist from the start (not reached
    /// yet: unreachable, seconds since contact counted from now).
    pub fn member_registered(&self, cluster: &str) {
        self.lock_contacts()
            .entry(cluster.to_string())
            .or_insert(None);
        self.member_reachable.with_label_values(&[cluster]).set(0);
        self.member_stale_endpoints
            .with_label_values(&[cluster])
            .set(0);
    }

    /// A successful probe of a member cluster's API.
    pub fn member_contact(&self, cluster: &str) {
        self.lock_contacts()
            .insert(cluster.to_string(), Some(Instant::now()));
        self.cluster_reachable.with_label_values(&[cluster]).set(1);
        self.member_reachable.with_label_values(&[cluster]).set(1);
    }

    /// How long the last successful probe of `cluster` took.
    pub fn member_api_latency(&self, cluster: &str, took: std::time::Duration) {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_string(), took);
        self.member_api_latency
            .with_label_values(&[cluster])
            .set(took.as_secs_f64());
    }

    /// Contact and probe latency of `cluster`; `None` for a cluster the controller does not
    /// serve.
    pub fn member_health(&self, cluster: &str) -> Option<MemberHealth> {
        let contact = *self.lock_contacts().get(cluster)?;
        let latency = self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .copied();
        Some(MemberHealth {
            contacted: contact.is_some(),
            since_contact: Some(contact.unwrap_or(self.started).elapsed()),
            latency,
        })
    }

    /// A failed probe of a member cluster's API.
    pub fn member_lost(&self, cluster: &str) {
        self.lock_contacts()
            .entry(cluster.to_string())
            .or_insert(None);
        self.cluster_reachable.with_label_values(&[cluster]).set(0);
        self.member_reachable.with_label_values(&[cluster]).set(0);
    }

    /// Seconds since the last successful probe of `cluster` (since the controller started when
    /// it was never reached); `None` for a cluster the controller does not serve.
    pub fn seconds_since_contact(&self, cluster: &str) -> Option<f64> {
        let contact = *self.lock_contacts().get(cluster)?;
        Some(contact.unwrap_or(self.started).elapsed().as_secs_f64())
    }

    fn refresh_contact_ages(&self) {
        let contacts = self.lock_contacts().clone();
        for (cluster, contact) in contacts {
            self.member_seconds_since_contact
                .with_label_values(&[&cluster])
                .set(contact.unwrap_or(self.started).elapsed().as_secs_f64());
        }
    }

    /// The registry every metric of this controller is in (to register more, e.g.
    /// [`crate::members::MemberMetrics`]; `/metrics` serves them too).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves another registry's metrics on this `/metrics` too (its families must not share
    /// names with ours; the distribution server's are all `meridian_distribution_*`).
    pub fn serve_also(&self, registry: Registry) {
        self.also
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(registry);
    }

    /// The metrics in Prometheus text format (ours, then those of [`Metrics::serve_also`]).
    pub fn encode(&self) -> String {
        self.refresh_contact_ages();
        let mut families = self.registry.gather();
        for r in self
            .also
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            families.extend(r.gather());
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Successful status writes of a cluster so far (all kinds).
    pub fn status_writes_ok(&self, cluster: &str) -> u64 {
        [
            "GatewayClass",
            "Gateway",
            "HTTPRoute",
            "GRPCRoute",
            "TLSRoute",
            "ListenerSet",
        ]
        .iter()
        .map(|k| {
            self.status_writes
                .with_label_values(&[cluster, k, "ok"])
                .get()
        })
        .sum()
    }

    /// Status write attempts of a cluster so far (all kinds and results).
    pub fn status_write_attempts(&self, cluster: &str) -> u64 {
        let mut n = 0;
        for family in self.registry.gather() {
            if family.name() != "meridian_controller_status_writes_total" {
                continue;
            }
            for m in family.get_metric() {
                if m.get_label()
                    .iter()
                    .any(|l| l.name() == "cluster" && l.value() == cluster)
                {
                    n += m.get_counter().get_value() as u64;
                }
            }
        }
        n
    }
}

/// Readiness as the admin listener reports it: one line per cluster.
pub(crate) type Readiness = watch::Receiver<Vec<(String, bool)>>;

/// Serves the admin endpoints on `listener` until `shutdown` turns true; `/v1/` goes to
/// `inspector` (`meridian status` / `explain`).
pub(crate) async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    inspector: crate::inspect::admin::Inspector,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let metrics = Arc::clone(&metrics);
        let readiness = readiness.clone();
        let inspector = inspector.clone();
        // Set when the connection serves a live view event stream (longer-lived by design).
        let streaming_conn = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streaming_svc = Arc::clone(&streaming_conn);
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let metrics = Arc::clone(&metrics);
            let readiness = readiness.clone();
            let inspector = inspector.clone();
            let streaming = Arc::clone(&streaming_svc);
            async move {
                let path = req.uri().path();
                if crate::inspect::live::Live::owns(path) {
                    if path == "/v1/events" {
                        streaming.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok::<_, Infallible>(inspector.live.respond(req).await);
                }
                let resp = if path.starts_with("/v1/") {
                    let authorization = req
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    inspector
                        .respond(req.method(), path, req.uri().query(), authorization)
                        .await
                } else {
                    admin_response(path, &metrics, &readiness)
                };
                Ok::<_, Infallible>(resp.map(http_body_util::BodyExt::boxed_unsync))
            }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // Bounded: a scraper that never finishes is cut off. A live view's event stream
            // ends by itself (`live::STREAM_LIFETIME`); this longer bound is for one whose
            // client stopped reading.
            let cut = tokio::time::timeout(std::time::Duration::from_secs(30), &mut conn).await;
            if cut.is_err() && streaming_conn.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tokio::time::timeout(
                    crate::inspect::live::STREAM_LIFETIME + std::time::Duration::from_secs(30),
                    conn,
                )
                .await;
            }
        });
    }
}

fn admin_response(path: &str, metrics: &Metrics, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => {
            let clusters = readiness.borrow().clone();
            let ready = !clusters.is_empty() && clusters.iter().all(|(_, r)| *r);
            let body: String = clusters
                .iter()
                .map(|(c, r)| format!("{c} {}\n", if *r { "synced" } else { "not synced" }))
                .collect();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, body, "text/plain")
        }
        "/metrics" => (
            StatusCode::OK,
            metrics.encode(),
            "text/plain; version=0.0.4",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_string(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds the admin listener (fails fast on a bad or busy address).
pub(crate) async fn bind_admin(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
