//! Prometheus metrics of one proxy, in a registry of its own (several proxies can live in one
//! process, e.g. in tests or `meridian up`).

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

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
    /// Upstream tries retried, by reason (`connect`, `status`, `error`).
    pub retries: IntCounterVec,
    /// 1 while a controller stream is open (`--controller` mode), else 0.
    pub controller_connected: IntGauge,
    /// Endpoints drained by failover drills in the served snapshot, by drill.
    pub drained_endpoints: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("meridian_proxy_requests_total", "Requests answered"),
            &["listener", "route", "status"],
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "meridian_proxy_upstream_latency_seconds",
                "Time from the first upstream try to the upstream response header",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let generation = IntGauge::new(
            "meridian_proxy_snapshot_generation",
            "Generation of the snapshot being served",
        )?;
        let snapshot_applied = IntCounter::new(
            "meridian_proxy_snapshot_applied_total",
            "Snapshots accepted and served",
        )?;
        let snapshot_refusals = IntCounterVec::new(
            Opts::new(
                "meridian_proxy_snapshot_refusals_total",
                "Snapshots refused (the previous one keeps serving)",
            ),
            &["reason"],
        )?;
        let mirror_dropped = IntCounter::new(
            "meridian_proxy_mirror_dropped_total",
            "Mirror copies dropped because the in-flight limit was reached",
        )?;
        let mirror_sent =
            IntCounter::new("meridian_proxy_mirror_sent_total", "Mirror copies sent")?;
        let ejections = IntCounter::new(
            "meridian_proxy_endpoint_ejections_total",
            "Endpoints ejected after a connect failure",
        )?;
        let retries = IntCounterVec::new(
            Opts::new("meridian_proxy_upstream_retries_total", "Upstream retries"),
            &["reason"],
        )?;
        let controller_connected = IntGauge::new(
            "meridian_proxy_controller_connected",
            "1 while the stream from the controller is open; the last good snapshot keeps \
             serving either way",
        )?;
        let drained_endpoints = IntGaugeVec::new(
            Opts::new(
                "meridian_proxy_drained_endpoints",
                "Distinct endpoint addresses a failover drill drains in the served snapshot \
                 (treated as failed for the Gateways and backends the drill scopes)",
            ),
            &["drill"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        registry.register(Box::new(snapshot_applied.clone()))?;
        registry.register(Box::new(snapshot_refusals.clone()))?;
        registry.register(Box::new(mirror_dropped.clone()))?;
        registry.register(Box::new(mirror_sent.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(controller_connected.clone()))?;
        registry.register(Box::new(drained_endpoints.clone()))?;
        Ok(Self {
            registry,
            requests,
            upstream_latency,
            generation,
            snapshot_applied,
            snapshot_refusals,
            mirror_dropped,
            mirror_sent,
            ejections,
            retries,
            controller_connected,
            drained_endpoints,
        })
    }

    /// Adds a collector computed at scrape time (e.g. the per-Gateway traffic counters).
    pub fn register(&self, c: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
