//! Prometheus metrics of the distribution server, in a registry of its own.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// What the server exports.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub registry: Registry,
    /// Publish → every connected proxy of the cluster acknowledged it as applied.
    pub propagation: HistogramVec,
    /// Generations published and not yet applied (or refused) by every connected proxy.
    pub pending: IntGaugeVec,
    /// Refusals (NACKs) received.
    pub nacks: IntCounterVec,
    /// Proxies with an open stream.
    pub connected: IntGaugeVec,
    /// Generations published, by kind (`full`, `endpoints`, `patch`).
    pub published: IntCounterVec,
    /// Stream message bytes sent, by kind (`snapshot`, `patch`, `endpoints`).
    pub sent_bytes: IntCounterVec,
    /// Stream messages sent, by kind.
    pub sent_messages: IntCounterVec,
    /// Full snapshots sent because a patch did not fit what a proxy holds.
    pub patch_fallbacks: IntCounterVec,
    /// Requests refused with 401 (no proxy certificate).
    pub unauthorized: IntCounterVec,
    /// TLS handshakes that failed, by reason.
    pub handshake_failures: IntCounterVec,
    /// Hellos refused (the certificate does not allow them), by reason.
    pub hello_refused: IntCounterVec,
    /// Certificates issued to proxies, by kind (`bootstrap`, `renewal`).
    pub certificates_issued: IntCounterVec,
    /// Certificate requests refused, by reason.
    pub certificate_refused: IntCounterVec,
    /// Traffic reports refused (implausible counters, another proxy's id), by reason.
    pub traffic_refused: IntCounterVec,
    /// When the server's current certificate expires (unix seconds).
    pub server_cert_expiry: IntGauge,
    /// Renewals of the server's own certificate.
    pub server_cert_renewals: IntCounter,
    /// Traffic reports stored.
    pub traffic_reports: IntCounterVec,
    /// Traffic reports whose counters went down (a proxy restarted).
    pub traffic_restarts: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let propagation = HistogramVec::new(
            HistogramOpts::new(
                "meridian_distribution_propagation_seconds",
                "Time from publishing a generation to every connected proxy of the cluster \
                 acknowledging it as applied",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["cluster"],
        )?;
        registry.register(Box::new(propagation.clone()))?;
        let r = &registry;
        Ok(Self {
            propagation,
            pending: gauge(
                r,
                "meridian_distribution_pending_generations",
                "Generations published but not yet applied or refused by every connected proxy",
                &["cluster"],
            )?,
            nacks: counter(
                r,
                "meridian_distribution_nacks_total",
                "Generations refused by a proxy",
                &["cluster"],
            )?,
            connected: gauge(
                r,
                "meridian_distribution_connected_proxies",
                "Proxies with an open stream",
                &["cluster"],
            )?,
            published: counter(
                r,
                "meridian_distribution_published_total",
                "Generations published, by how they travel (full, endpoints, patch)",
                &["cluster", "kind"],
            )?,
            sent_bytes: counter(
                r,
                "meridian_distribution_sent_bytes_total",
                "Bytes of snapshot, patch and endpoint messages written to proxy streams",
                &["cluster", "kind"],
            )?,
            sent_messages: counter(
                r,
                "meridian_distribution_sent_messages_total",
                "Snapshot, patch and endpoint messages written to proxy streams",
                &["cluster", "kind"],
            )?,
            patch_fallbacks: counter(
                r,
                "meridian_distribution_patch_fallbacks_total",
                "Full snapshots sent to a proxy because a patch did not fit the snapshot it holds",
                &["cluster"],
            )?,
            unauthorized: counter(
                r,
                "meridian_distribution_unauthorized_total",
                "Requests refused with 401 (no verified proxy client certificate)",
                &["path"],
            )?,
            handshake_failures: counter(
                r,
                "meridian_distribution_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason (no-tls, protocol, bad-certificate, \
                 timeout, closed, other)",
                &["reason"],
            )?,
            hello_refused: counter(
                r,
                "meridian_distribution_hello_refused_total",
                "Stream hellos refused because the proxy's certificate does not allow them, by \
                 reason",
                &["reason"],
            )?,
            certificates_issued: counter(
                r,
                "meridian_distribution_certificates_issued_total",
                "Certificates issued to proxies, by kind (bootstrap, renewal)",
                &["kind"],
            )?,
            certificate_refused: counter(
                r,
                "meridian_distribution_certificate_refused_total",
                "Certificate requests refused, by reason",
                &["reason"],
            )?,
            traffic_refused: counter(
                r,
                "meridian_distribution_traffic_refused_total",
                "Traffic reports refused (implausible counters, another proxy's id), by reason",
                &["reason"],
            )?,
            server_cert_expiry: {
                let g = IntGauge::new(
                    "meridian_distribution_server_certificate_expiry_seconds",
                    "When the distribution server's current certificate expires (unix time)",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            server_cert_renewals: {
                let c = IntCounter::new(
                    "meridian_distribution_server_certificate_renewals_total",
                    "Renewals of the distribution server's own certificate",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            traffic_reports: counter(
                r,
                "meridian_distribution_traffic_reports_total",
                "Traffic reports received from proxies",
                &["cluster"],
            )?,
            traffic_restarts: counter(
                r,
                "meridian_distribution_traffic_restarts_total",
                "Traffic reports whose counters went down (the proxy restarted); the previous \
                 counters stay in the Gateway's sum",
                &["cluster"],
            )?,
            registry,
        })
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// A counter vector registered in `registry`.
fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A gauge vector registered in `registry`.
fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}
