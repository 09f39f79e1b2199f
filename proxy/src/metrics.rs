//! Prometheus metrics of one proxy, in a registry of its own (several proxies can live in one
//! process, e.g. in tests or `meridian up`).

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::mesh::Mesh;

/// The certificate expiry gauge, computed when scraped (a renewal needs no hook here).
struct ExpiryCollector {
    mesh: Option<Arc<Mesh>>,
    gauge: IntGauge,
}

impl Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge
            .set(self.mesh.as_ref().map_or(0, |m| m.expiry_unix()));
        self.gauge.collect()
    }
}

/// Buckets of `meridian_proxy_upstream_latency_seconds`.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `meridian_proxy_failover_seconds`.
const FAILOVER_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// Registers `metric` in `registry` and hands it back.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    registered(r, IntCounter::new(name, help)?)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    registered(r, IntGauge::new(name, help)?)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// All metrics the proxy exports on `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by listener, route and status.
    pub requests: IntCounterVec,
    /// Time from the first upstream try to the upstream response header, by route.
    pub upstream_latency: HistogramVec,
    /// The generation being served (0 before the first snapshot).
    pub generation: IntGauge,
    /// Snapshots accepted.
    pub snapshot_applied: IntCounter,
    /// Snapshots refused, by reason kind.
    pub snapshot_refusals: IntCounterVec,
    /// Mirror copies dropped because too many were in flight.
    pub mirror_dropped: IntCounter,
    /// Mirror copies sent.
    pub mirror_sent: IntCounter,
    /// Endpoints ejected after connect failures.
    pub ejections: IntCounter,
    /// Health probes sent, by result (`ok`, `failed`).
    pub health_probes: IntCounterVec,
    /// Endpoints the health checker probes (those of the served snapshot). Zero while the
    /// snapshot has endpoints means the checker does not see it: nothing would be re-admitted.
    pub health_targets: IntGauge,
    /// Upstream tries retried, by reason (`connect`, `status`, `error`).
    pub retries: IntCounterVec,
    /// 1 while a controller stream is open (`--controller` mode), else 0.
    pub controller_connected: IntGauge,
    /// Endpoints drained by failover drills in the served snapshot, by drill.
    pub drained_endpoints: IntGaugeVec,
    /// 1 for where the served snapshot came from (`file`, `controller`, `disk`), 0 for the
    /// others; all 0 before the first snapshot.
    pub snapshot_source: IntGaugeVec,
    /// Start-up restores from `--state-dir`, by result (`ok`, `none`, `corrupt`,
    /// `unsupported_version`, `wrong_cluster`, `unreadable`, `refused`).
    pub snapshot_restores: IntCounterVec,
    /// Writes of the state file, by result (`ok`, `error`).
    pub state_writes: IntCounterVec,
    /// Generation in the state file as last written by this run (0 before the first write).
    pub state_generation: IntGauge,
    /// Admin requests refused for want of a valid token, by path (`/config_dump`, `/metrics`,
    /// `other`).
    pub admin_refused: IntCounterVec,
    /// Refused TLS handshakes, by listener (`east-west`) and reason (`no-certificate`,
    /// `unknown-ca`, `wrong-identity`, `other`).
    pub tls_handshake_failures: IntCounterVec,
    /// TLS passthrough connections by how they ended (`relayed`, `no_route`, `invalid`, …;
    /// passthrough/mod.rs).
    pub passthrough_connections: IntCounterVec,
    /// Downstream connections open, by listener socket (`ip:port`, or `east-west`).
    pub connections_open: IntGaugeVec,
    /// Connections closed right after the accept because their listener socket had
    /// `--max-connections` open, by listener socket.
    pub connections_shed: IntCounterVec,
    /// Downstream connections accepted, by worker (`0`..`N-1`; only with `--workers N`, N > 0):
    /// how evenly `SO_REUSEPORT` spreads them.
    pub worker_connections: IntCounterVec,
    /// Hedged tries (lean HTTP/1 path, `lean/hedge.rs`), by event: `sent` (a second try went
    /// out because the first had not answered after the hedge delay), `won` (the hedged try
    /// answered first), `lost_connecting` (the first try was still connecting when the hedged
    /// one answered).
    pub hedges: IntCounterVec,
    /// Failover events by backend, region (of this proxy) and kind: `failover` when the tier
    /// answering a backend's requests moved away from the preferred one, `failback` when it
    /// came back (failover.rs).
    pub failover_events: IntCounterVec,
    /// Preferred tier index answering a backend's requests, by backend and region of this proxy
    /// (0 = own zone, or the first tier of the locality plan; larger = further away).
    pub active_tier: IntGaugeVec,
    /// Time from a locality losing its last healthy endpoint of a backend to the first request
    /// of that backend answered by another tier.
    pub failover_seconds: HistogramVec,
    /// Access log lines not written, by reason (`queue_full`: the writer was behind;
    /// `write_error`).
    pub access_log_dropped: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let latency = HistogramOpts::new(
            "meridian_proxy_upstream_latency_seconds",
            "Time from the first upstream try to the upstream response header",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        Ok(Self {
            requests: counter_vec(
                &r,
                "meridian_proxy_requests_total",
                "Requests answered",
                &["listener", "route", "status"],
            )?,
            upstream_latency: registered(&r, HistogramVec::new(latency, &["route"])?)?,
            generation: gauge(
                &r,
                "meridian_proxy_snapshot_generation",
                "Generation of the snapshot being served",
            )?,
            snapshot_applied: counter(
                &r,
                "meridian_proxy_snapshot_applied_total",
                "Snapshots accepted and served",
            )?,
            snapshot_refusals: counter_vec(
                &r,
                "meridian_proxy_snapshot_refusals_total",
                "Snapshots refused (the previous one keeps serving)",
                &["reason"],
            )?,
            mirror_dropped: counter(
                &r,
                "meridian_proxy_mirror_dropped_total",
                "Mirror copies dropped because the in-flight limit was reached",
            )?,
            mirror_sent: counter(&r, "meridian_proxy_mirror_sent_total", "Mirror copies sent")?,
            ejections: counter(
                &r,
                "meridian_proxy_endpoint_ejections_total",
                "Endpoints ejected after a connect failure",
            )?,
            health_probes: counter_vec(
                &r,
                "meridian_proxy_health_probes_total",
                "Active health probes, by result",
                &["result"],
            )?,
            health_targets: gauge(
                &r,
                "meridian_proxy_health_targets",
                "Endpoints the active health checker probes",
            )?,
            retries: counter_vec(
                &r,
                "meridian_proxy_upstream_retries_total",
                "Upstream retries",
                &["reason"],
            )?,
            controller_connected: gauge(
                &r,
                "meridian_proxy_controller_connected",
                "1 while the stream from the controller is open; the last good snapshot keeps \
                 serving either way",
            )?,
            drained_endpoints: gauge_vec(
                &r,
                "meridian_proxy_drained_endpoints",
                "Distinct endpoint addresses a failover drill drains in the served snapshot \
                 (treated as failed for the Gateways and backends the drill scopes)",
                &["drill"],
            )?,
            snapshot_source: gauge_vec(
                &r,
                "meridian_proxy_snapshot_source",
                "1 for where the served snapshot came from: file (--snapshot), controller, or \
                 disk (restored from --state-dir while the controller has not sent one)",
                &["source"],
            )?,
            snapshot_restores: counter_vec(
                &r,
                "meridian_proxy_snapshot_restore_total",
                "Start-up restores of the snapshot kept in --state-dir, by result",
                &["result"],
            )?,
            state_writes: counter_vec(
                &r,
                "meridian_proxy_state_writes_total",
                "Writes of the last acknowledged snapshot to --state-dir, by result",
                &["result"],
            )?,
            state_generation: gauge(
                &r,
                "meridian_proxy_state_written_generation",
                "Generation of the snapshot last written to --state-dir by this run",
            )?,
            admin_refused: counter_vec(
                &r,
                "meridian_proxy_admin_refused_total",
                "Admin listener requests refused (401) for want of a valid bearer token",
                &["path"],
            )?,
            tls_handshake_failures: counter_vec(
                &r,
                "meridian_proxy_tls_handshake_failures_total",
                "TLS handshakes refused, by listener and reason (no-certificate, unknown-ca, \
                 wrong-identity, other)",
                &["listener", "reason"],
            )?,
            passthrough_connections: counter_vec(
                &r,
                "meridian_proxy_passthrough_connections_total",
                "TLS passthrough connections by result (relayed, idle, timeout, invalid, \
                 too_large, no_server_name, bad_server_name, no_route, no_backend, \
                 connect_failed, closed)",
                &["result"],
            )?,
            connections_open: gauge_vec(
                &r,
                "meridian_proxy_connections_open",
                "Downstream connections open, by listener socket",
                &["listener"],
            )?,
            connections_shed: counter_vec(
                &r,
                "meridian_proxy_connections_shed_total",
                "Connections closed at once because their listener socket had --max-connections \
                 open",
                &["listener"],
            )?,
            worker_connections: counter_vec(
                &r,
                "meridian_proxy_worker_connections_total",
                "Downstream connections accepted, by worker",
                &["worker"],
            )?,
            hedges: counter_vec(
                &r,
                "meridian_proxy_hedges_total",
                "Hedged upstream tries of idempotent requests, by event (sent, won, \
                 lost_connecting)",
                &["event"],
            )?,
            failover_events: counter_vec(
                &r,
                "meridian_proxy_failover_events_total",
                "Moves of a backend's traffic away from its preferred tier (failover) and back \
                 (failback)",
                &["backend", "region", "event"],
            )?,
            active_tier: gauge_vec(
                &r,
                "meridian_proxy_active_tier",
                "Tier of the locality plan answering a backend's requests now (0 = preferred)",
                &["backend", "region"],
            )?,
            failover_seconds: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "meridian_proxy_failover_seconds",
                        "Time from a tier losing its last healthy endpoint of a backend to the \
                         first request of that backend answered by another tier",
                    )
                    .buckets(FAILOVER_BUCKETS.to_vec()),
                    &["backend"],
                )?,
            )?,
            access_log_dropped: counter_vec(
                &r,
                "meridian_proxy_access_log_dropped_total",
                "Access log lines dropped, by reason (queue_full: the writer was behind, the \
                 request did not wait; write_error)",
                &["reason"],
            )?,
            registry: r,
        })
    }

    /// Adds a collector computed at scrape time (e.g. the per-Gateway traffic counters).
    pub fn register(&self, c: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// Adds `meridian_proxy_certificate_expiry_seconds`, read from `mesh` at scrape time.
    pub(crate) fn register_expiry(&self, mesh: Option<Arc<Mesh>>) -> Result<(), prometheus::Error> {
        let gauge = IntGauge::new(
            "meridian_proxy_certificate_expiry_seconds",
            "Unix time at which the proxy's current mesh certificate expires (0 without one)",
        )?;
        self.register(Box::new(ExpiryCollector { mesh, gauge }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
