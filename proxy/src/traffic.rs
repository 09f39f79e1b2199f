//! Per-Gateway traffic counters: what drill guards and timelines in the controller read.
//!
//! ```text
//! request ─ logging() ─► TrafficCell::record (one short lock per request, per Gateway)
//!                            │
//! ProxyHandle::traffic ◄─────┤ cumulative GatewayTraffic per Gateway (reports to the controller)
//! /metrics ◄─ TrafficCollector (built from the same cells at scrape time: requests by region,
//!             failures by kind)
//! ```
//!
//! The cells live in a [`TrafficRegistry`] keyed by Gateway; each applied snapshot takes the cells
//! of its Gateways from there (so counters survive snapshot swaps) and drops the cells of Gateways
//! it no longer serves. Requests hold an `Arc` to their Gateway's cell, so the hot path never
//! touches the registry.
//!
//! Requests served on the east-west listener (for proxies of other networks) count in a cell of
//! their own, exported on `/metrics` as `gateway="east-west"` (no `/`, so it cannot clash with a
//! `namespace/name`). It is not a Gateway, so it is left out of the reports to the controller.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meridian_distribution::GatewayTrafficReport;
use meridian_model::traffic::{FailureKind, GatewayTraffic};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

/// One Gateway's cumulative counters.
#[derive(Debug, Default)]
pub(crate) struct TrafficCell(Mutex<GatewayTraffic>);

impl TrafficCell {
    /// Counts one finished request: the region and zone of the endpoint that answered, if one
    /// did. Allocates only the first time a region (or zone) is seen.
    pub fn record(
        &self,
        region: Option<&str>,
        zone: Option<&str>,
        failure: Option<FailureKind>,
        latency_us: u64,
    ) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.requests += 1;
        if let Some(r) = region {
            match t.by_region.get_mut(r) {
                Some(n) => *n += 1,
                None => {
                    t.by_region.insert(r.to_string(), 1);
                }
            }
            if let Some(z) = zone.filter(|z| !z.is_empty()) {
                // Looked up without building the key: `region/zone` is made once per zone.
                let found = t.by_zone.iter_mut().find(|(k, _)| {
                    k.len() == r.len() + 1 + z.len()
                        && k.starts_with(r)
                        && k.ends_with(z)
                        && k.as_bytes()[r.len()] == b'/'
                });
                match found {
                    Some((_, n)) => *n += 1,
                    None => {
                        t.by_zone.insert(meridian_model::traffic::zone_key(r, z), 1);
                    }
                }
            }
        }
        if let Some(f) = failure {
            *t.failed.entry(f).or_default() += 1;
        }
        t.latency.record(latency_us);
    }

    /// A copy of the counters.
    pub fn get(&self) -> GatewayTraffic {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The `gateway` label of the east-west listener's counters.
pub(crate) const EAST_WEST_LABEL: &str = "east-west";

/// The counters of every Gateway served, keyed by (namespace, name), and of the east-west
/// listener if the proxy has one.
#[derive(Debug, Default)]
pub(crate) struct TrafficRegistry {
    cells: Mutex<BTreeMap<(String, String), Arc<TrafficCell>>>,
    east_west: Option<Arc<TrafficCell>>,
}

impl TrafficRegistry {
    /// A registry that also counts an east-west listener.
    pub fn with_east_west() -> Self {
        TrafficRegistry {
            cells: Mutex::default(),
            east_west: Some(Arc::default()),
        }
    }

    /// The east-west listener's cell, if the proxy has one.
    pub fn east_west(&self) -> Option<&Arc<TrafficCell>> {
        self.east_west.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Arc<TrafficCell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cells of exactly `gateways` (existing ones kept, missing ones created, the rest
    /// dropped), in the order asked.
    pub fn keep<'a>(
        &self,
        gateways: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Arc<TrafficCell>> {
        let mut cells = self.lock();
        let mut kept = BTreeMap::new();
        let mut out = Vec::new();
        for (ns, name) in gateways {
            let key = (ns.to_string(), name.to_string());
            let cell = match kept.get(&key) {
                Some(c) => Arc::clone(c),
                None => cells.remove(&key).unwrap_or_default(),
            };
            kept.insert(key, cell.clone());
            out.push(cell);
        }
        *cells = kept;
        out
    }

    /// Cumulative counters of every served Gateway, sorted by namespace and name.
    pub fn reports(&self) -> Vec<GatewayTrafficReport> {
        self.lock()
            .iter()
            .map(|((namespace, name), cell)| GatewayTrafficReport {
                namespace: namespace.clone(),
                name: name.clone(),
                traffic: cell.get(),
            })
            .collect()
    }
}

/// Stable label of a failure kind on `/metrics`.
pub(crate) fn kind_label(k: FailureKind) -> &'static str {
    match k {
        FailureKind::Connect => "connect",
        FailureKind::Timeout => "timeout",
        FailureKind::NoEndpoint => "no_endpoint",
        FailureKind::Upstream5xx => "upstream_5xx",
        FailureKind::Other => "other",
    }
}

/// Exposes the registry on `/metrics`, computed at scrape time from the cells (the request path
/// pays for one set of counters only).
pub(crate) struct TrafficCollector {
    registry: Arc<TrafficRegistry>,
    requests: IntCounterVec,
    failures: IntCounterVec,
}

fn requests_vec() -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(
        Opts::new(
            "meridian_proxy_gateway_requests_total",
            "Requests per Gateway by region of the endpoint that answered \
             (region=\"\" when no endpoint answered: proxy-made responses and failures)",
        ),
        &["gateway", "region"],
    )
}

fn failures_vec() -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(
        Opts::new(
            "meridian_proxy_gateway_failures_total",
            "Failed requests per Gateway by kind (connect, timeout, no_endpoint, upstream_5xx, \
             other)",
        ),
        &["gateway", "kind"],
    )
}

impl TrafficCollector {
    pub fn new(registry: Arc<TrafficRegistry>) -> Result<Self, prometheus::Error> {
        Ok(TrafficCollector {
            registry,
            requests: requests_vec()?,
            failures: failures_vec()?,
        })
    }

    fn families(&self) -> Result<Vec<MetricFamily>, prometheus::Error> {
        let requests = requests_vec()?;
        let failures = failures_vec()?;
        let gateways = self
            .registry
            .reports()
            .into_iter()
            .map(|r| (format!("{}/{}", r.namespace, r.name), r.traffic));
        let east_west = self
            .registry
            .east_west()
            .map(|c| (EAST_WEST_LABEL.to_string(), c.get()));
        for (gw, t) in gateways.chain(east_west) {
            let t = &t;
            let answered: u64 = t.by_region.values().sum();
            for (region, n) in &t.by_region {
                requests.with_label_values(&[&gw, region]).inc_by(*n);
            }
            requests
                .with_label_values(&[&gw, ""])
                .inc_by(t.requests.saturating_sub(answered));
            for (kind, n) in &t.failed {
                failures
                    .with_label_values(&[&gw, kind_label(*kind)])
                    .inc_by(*n);
            }
        }
        let mut out = requests.collect();
        out.extend(failures.collect());
        Ok(out)
    }
}

impl Collector for TrafficCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.requests.desc();
        d.extend(self.failures.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "gateway traffic metrics could not be built");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn zones_are_counted_under_their_own_region() {
        let cell = TrafficCell::default();
        // One zone name in two regions, and a region whose name is a prefix of another's.
        for (r, z) in [
            ("us", "a"),
            ("us", "a"),
            ("us-east", "a"),
            ("us-east", "a"),
            ("us-east", "a"),
            ("us", "east/a"),
        ] {
            cell.record(Some(r), Some(z), None, 1);
        }
        cell.record(Some("us"), Some(""), None, 1);
        let t = cell.get();
        let zones: Vec<(&str, u64)> = t.by_zone.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(zones, [("us-east/a", 3), ("us/a", 2), ("us/east/a", 1)]);
        assert_eq!(t.by_region.get("us"), Some(&4));
    }

    #[test]
    fn cells_survive_keep_and_unserved_gateways_are_dropped() {
        let reg = Arc::new(TrafficRegistry::default());
        let cells = reg.keep([("ns", "a"), ("ns", "b")]);
        cells[0].record(Some("us-east"), Some("us-east-a"), None, 100);
        cells[0].record(None, None, Some(FailureKind::NoEndpoint), 100);
        cells[1].record(Some("eu"), None, Some(FailureKind::Upstream5xx), 100);
        // The next snapshot serves `a` and `c`: `a` keeps counting, `b` is gone.
        let again = reg.keep([("ns", "a"), ("ns", "c")]);
        assert!(Arc::ptr_eq(&cells[0], &again[0]));
        let reports = reg.reports();
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(reports[0].traffic.requests, 2);
        assert_eq!(reports[0].traffic.by_region.get("us-east"), Some(&1));
        assert_eq!(
            reports[0].traffic.by_zone.get("us-east/us-east-a"),
            Some(&1)
        );
        assert_eq!(reports[0].traffic.failures(), 1);
        assert_eq!(reports[1].traffic, GatewayTraffic::default());

        let collector = TrafficCollector::new(reg.clone()).unwrap();
        let registry = prometheus::Registry::new();
        registry.register(Box::new(collector)).unwrap();
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains(
                "meridian_proxy_gateway_requests_total{gateway=\"ns/a\",region=\"us-east\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("meridian_proxy_gateway_requests_total{gateway=\"ns/a\",region=\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "meridian_proxy_gateway_failures_total{gateway=\"ns/a\",kind=\"no_endpoint\"} 1"
            ),
            "{text}"
        );
    }
}
