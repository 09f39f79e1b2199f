//! Traffic counters: the proxies' reports and the never-decreasing per-Gateway sums (the rules
//! are in the parent module's docs).
//!
//! ```text
//! POST /v1/traffic ─► check_traffic ─► Inner::report: per Gateway, went down or left out?
//!                                        yes: previous counters ─► retire(cluster)
//!                                      ProxyEntry.traffic = report
//! traffic(cluster, gw) = Σ ProxyEntry.traffic[gw] of the cluster's proxies + retired[cluster][gw]
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use meridian_model::traffic::{GatewayTraffic, LATENCY_BOUNDS_US};

use super::registry::UnknownProxy;
use super::{DistributionServer, Inner, MAX_GATEWAYS, lock};
use crate::protocol::{GatewayRef, TrafficReport};

/// Cumulative traffic counters per Gateway.
pub(super) type Counters = BTreeMap<GatewayRef, GatewayTraffic>;

/// Why a traffic report is refused: `400` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum InvalidTrafficReport {
    /// Empty or longer than a Kubernetes name.
    #[error("proxyId must be 1 to 253 characters")]
    ProxyId,
    /// More than [`MAX_GATEWAYS`].
    #[error("at most {MAX_GATEWAYS} gateways")]
    TooManyGateways,
    /// A Gateway without namespace or name.
    #[error("every gateway needs a namespace and a name")]
    Unnamed,
    /// One Gateway twice: which counters would count?
    #[error("gateway {0} is listed twice")]
    Duplicate(GatewayRef),
    /// More latency buckets than [`LATENCY_BOUNDS_US`] defines.
    #[error("gateway {gateway}: latency histogram has {buckets} buckets, at most {max}")]
    LatencyBuckets {
        /// The Gateway.
        gateway: GatewayRef,
        /// Buckets sent.
        buckets: usize,
        /// Buckets there are.
        max: usize,
    },
}

/// Checks a traffic report before it is stored.
pub(super) fn check_traffic(r: &TrafficReport) -> Result<(), InvalidTrafficReport> {
    if r.proxy_id.is_empty() || r.proxy_id.len() > 253 {
        return Err(InvalidTrafficReport::ProxyId);
    }
    if r.gateways.len() > MAX_GATEWAYS {
        return Err(InvalidTrafficReport::TooManyGateways);
    }
    let mut seen = HashSet::new();
    let max = LATENCY_BOUNDS_US.len() + 1;
    for g in &r.gateways {
        if g.namespace.is_empty() || g.name.is_empty() {
            return Err(InvalidTrafficReport::Unnamed);
        }
        let gateway = || GatewayRef::new(&g.namespace, &g.name);
        if !seen.insert((&g.namespace, &g.name)) {
            return Err(InvalidTrafficReport::Duplicate(gateway()));
        }
        let buckets = g.traffic.latency.counts.len();
        if buckets > max {
            return Err(InvalidTrafficReport::LatencyBuckets {
                gateway: gateway(),
                buckets,
                max,
            });
        }
    }
    Ok(())
}

impl DistributionServer {
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
}

impl Inner {
    /// Stores a proxy's traffic report, folding counters that went down (or Gateways no longer
    /// reported) into the cluster's retired accumulator first.
    pub(super) fn report(&self, report: TrafficReport) -> Result<(), UnknownProxy> {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(&report.proxy_id) else {
            return Err(UnknownProxy(report.proxy_id));
        };
        p.last_seen = SystemTime::now();
        let new: Counters = report
            .gateways
            .into_iter()
            .map(|g| (GatewayRef::new(g.namespace, g.name), g.traffic))
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
        self.retire(&cluster, folded);
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

    /// Adds counters that leave a proxy (it was forgotten, moved cluster or restarted) to the
    /// retired accumulator of `cluster`. Called with `proxies` locked.
    pub(super) fn retire(
        &self,
        cluster: &str,
        counters: impl IntoIterator<Item = (GatewayRef, GatewayTraffic)>,
    ) {
        let mut counters = counters.into_iter().peekable();
        if counters.peek().is_none() {
            return;
        }
        let mut retired = lock(&self.retired);
        let sums = retired.entry(cluster.to_string()).or_default();
        for (gw, t) in counters {
            accumulate(sums.entry(gw).or_default(), &t);
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::super::ServerConfig;
    use super::super::registry::{FORGET_AFTER, test_entry as entry};
    use super::*;
    use crate::protocol::GatewayTrafficReport;

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
            gateways: vec![GatewayTrafficReport {
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
        inner.report(report("a", 5)).unwrap();
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
                .report(report("a", 1))
                .unwrap_err()
                .to_string()
                .contains("unknown proxy")
        );
        inner.report(report("b", 2)).unwrap();
        assert_eq!(srv.traffic("c", &web).unwrap().requests, 7);
        // `a` back after a restart: its new counters add to the ones kept.
        let _ = inner.connect(&a);
        inner.report(report("a", 1)).unwrap();
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
    fn reports_are_checked() {
        let mut r = report("a", 1);
        assert_eq!(check_traffic(&r), Ok(()));
        r.gateways.push(r.gateways[0].clone());
        assert_eq!(
            check_traffic(&r).unwrap_err().to_string(),
            "gateway ns/web is listed twice"
        );
        r.gateways.pop();
        r.gateways[0].traffic.latency.counts = vec![0; LATENCY_BOUNDS_US.len() + 2];
        assert_eq!(
            check_traffic(&r).unwrap_err().to_string(),
            format!(
                "gateway ns/web: latency histogram has {} buckets, at most {}",
                LATENCY_BOUNDS_US.len() + 2,
                LATENCY_BOUNDS_US.len() + 1
            )
        );
    }
}
