//! Traffic counters: the proxies' reports and the never-decreasing per-Gateway sums (the rules
//! are in the parent module's docs).
//!
//! ```text
//! POST /v1/traffic ─► check_traffic (consistent counters) ─► Inner::report:
//!                       plausible against the proxy's previous report? (no: 400, nothing kept)
//!                       per Gateway, went down or left out? yes: previous counters ─► retire(cluster)
//!                       ProxyEntry.traffic = report
//! traffic(cluster, gw) = Σ ProxyEntry.traffic[gw] of the cluster's proxies + retired[cluster][gw]
//! ```
//!
//! # Plausibility
//!
//! Counters feed drill guards, so a report is refused (`400`, nothing of it kept,
//! `meridian_distribution_traffic_refused_total{reason}`) when
//!
//! - a Gateway's failures (all kinds), its requests by region, or its latency samples add up to
//!   more than its requests (`failures`, `regions`, `latency`): every request is counted once in
//!   `requests` and at most once in each of the others;
//! - a counter went down since the previous report *of the same stream* (`decrease`): a proxy
//!   restarts only with a new stream, so a decrease within one is forged. A new stream may
//!   start lower (the restart the retired accumulator handles);
//! - the proxy's requests grew faster than [`MAX_REQUESTS_PER_SECOND`] since its previous
//!   report, plus [`RATE_SLACK`] (`rate`). Across a restart the new counters count from the
//!   restart, which came after the previous report, so the same bound holds. A proxy's first
//!   report to this server is not bounded (it may carry days of counters after a controller
//!   restart).
//!
//! Every sum over counters from the network saturates: no report can overflow or wrap one.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use tokio::time::Instant;

use meridian_model::traffic::{GatewayTraffic, LATENCY_BOUNDS_US};

use super::registry::UnknownProxy;
use super::{DistributionServer, Inner, MAX_GATEWAYS, lock};
use crate::protocol::{GatewayRef, MAX_EJECTED, MAX_REGIONS, ProxyHealth, TrafficReport};

/// Cumulative traffic counters per Gateway.
pub(super) type Counters = BTreeMap<GatewayRef, GatewayTraffic>;

/// Fastest growth of one proxy's request counters (all its Gateways) accepted between two of its
/// reports, per second: far above what one proxy serves, far below forged jumps.
pub const MAX_REQUESTS_PER_SECOND: u64 = 10_000_000;
/// Requests accepted on top of the rate bound, for reports that arrive close together after a
/// delay on the way (the bound is on arrival times, the counters were read earlier).
pub const RATE_SLACK: u64 = 1_000_000;

/// Why `Inner::report` refused or could not store a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ReportError {
    /// `404`.
    #[error(transparent)]
    Unknown(#[from] UnknownProxy),
    /// `400`.
    #[error(transparent)]
    Implausible(#[from] Implausible),
}

/// Counters that cannot follow the proxy's previous report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Implausible {
    /// A counter went down within one stream.
    #[error(
        "gateway {0}: counters went down since the previous report of this stream (a proxy's \
         counters only restart with the proxy)"
    )]
    Decrease(GatewayRef),
    /// Requests grew faster than the bound.
    #[error(
        "requests grew by {increase} in {elapsed_ms} ms, more than {MAX_REQUESTS_PER_SECOND}/s \
         (+{RATE_SLACK})"
    )]
    Rate {
        /// Growth since the previous report.
        increase: u64,
        /// Time since the previous report.
        elapsed_ms: u128,
    },
}

impl Implausible {
    /// Metric label.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Implausible::Decrease(_) => "decrease",
            Implausible::Rate { .. } => "rate",
        }
    }
}

/// Why a traffic report is refused: `400` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum InvalidTrafficReport {
    /// The health view is malformed or too large.
    #[error("proxy {proxy}: health.{what}")]
    Health {
        /// The sender.
        proxy: String,
        /// What is wrong, with where.
        what: String,
    },
    /// Empty or longer than a Kubernetes name.
    #[error("proxyId must be 1 to 253 characters")]
    ProxyId,
    /// More than [`MAX_GATEWAYS`].
    #[error("at most {MAX_GATEWAYS} gateways")]
    TooManyGateways,
    /// A Gateway without namespace or name.
    #[error("every gateway needs a namespace and a name")]
    Unnamed,
    /// More than [`MAX_ZONES`] zones for one Gateway.
    #[error("gateway {gateway}: {zones} zones, at most {MAX_ZONES}")]
    TooManyZones {
        /// The Gateway.
        gateway: GatewayRef,
        /// Zones sent.
        zones: usize,
    },
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
    /// More failures, requests by region or latency samples than requests.
    #[error("gateway {gateway}: {what} ({count}) exceed requests ({requests})")]
    Inconsistent {
        /// The Gateway.
        gateway: GatewayRef,
        /// `failures`, `requests by region` or `latency samples`.
        what: &'static str,
        /// Their sum.
        count: u64,
        /// Its requests.
        requests: u64,
    },
}

impl InvalidTrafficReport {
    /// Metric label.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            InvalidTrafficReport::Inconsistent { what, .. } => match *what {
                "failures" => "failures",
                "requests by region" => "regions",
                "requests by zone" => "zones",
                _ => "latency",
            },
            InvalidTrafficReport::Health { .. } => "health",
            _ => "invalid",
        }
    }
}

/// Most zones one Gateway's counters may name in a report (`by_zone`).
pub const MAX_ZONES: usize = 1024;

/// Longest backend or region name accepted in a health view.
const MAX_NAME: usize = 1024;

/// Checks the health view of a report: bounded, names non-empty, addresses `ip:port`, times
/// RFC 3339, round trips finite and not negative.
fn check_health(h: &ProxyHealth) -> Result<(), String> {
    if h.nearest_regions.len() > MAX_REGIONS {
        return Err(format!(
            "nearestRegions: {} regions, at most {MAX_REGIONS}",
            h.nearest_regions.len()
        ));
    }
    for (i, r) in h.nearest_regions.iter().enumerate() {
        if r.region.is_empty() || r.region.len() > MAX_NAME {
            return Err(format!(
                "nearestRegions[{i}].region: must be 1 to {MAX_NAME} characters"
            ));
        }
        if r.rtt_ms.is_some_and(|ms| !ms.is_finite() || ms < 0.0) {
            return Err(format!(
                "nearestRegions[{i}].rttMs: must be a finite number of milliseconds, not negative"
            ));
        }
        if h.nearest_regions[..i].iter().any(|o| o.region == r.region) {
            return Err(format!(
                "nearestRegions[{i}]: region {:?} is listed twice",
                r.region
            ));
        }
    }
    if h.ejected.len() > MAX_EJECTED {
        return Err(format!(
            "ejected: {} endpoints, at most {MAX_EJECTED} (send the first ones and \"truncated\": true)",
            h.ejected.len()
        ));
    }
    for (i, e) in h.ejected.iter().enumerate() {
        if e.backend.is_empty() || e.backend.len() > MAX_NAME {
            return Err(format!(
                "ejected[{i}].backend: must be 1 to {MAX_NAME} characters"
            ));
        }
        if e.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "ejected[{i}].address {:?}: expected IP:PORT",
                e.address.chars().take(64).collect::<String>()
            ));
        }
        if e.since.parse::<jiff::Timestamp>().is_err() {
            return Err(format!(
                "ejected[{i}].since {:?}: expected an RFC 3339 time, e.g. 2026-12-06T12:01:00Z",
                e.since.chars().take(64).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// A saturating sum (counters come from the network).
fn saturating_sum<'a>(values: impl IntoIterator<Item = &'a u64>) -> u64 {
    values
        .into_iter()
        .fold(0u64, |acc, n| acc.saturating_add(*n))
}

/// Checks a traffic report before it is stored.
pub(super) fn check_traffic(r: &TrafficReport) -> Result<(), InvalidTrafficReport> {
    if r.proxy_id.is_empty() || r.proxy_id.len() > 253 {
        return Err(InvalidTrafficReport::ProxyId);
    }
    if r.gateways.len() > MAX_GATEWAYS {
        return Err(InvalidTrafficReport::TooManyGateways);
    }
    if let Some(h) = &r.health {
        check_health(h).map_err(|what| InvalidTrafficReport::Health {
            proxy: r.proxy_id.clone(),
            what,
        })?;
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
        let t = &g.traffic;
        if t.by_zone.len() > MAX_ZONES {
            return Err(InvalidTrafficReport::TooManyZones {
                gateway: gateway(),
                zones: t.by_zone.len(),
            });
        }
        for (what, count) in [
            ("failures", saturating_sum(t.failed.values())),
            ("requests by region", saturating_sum(t.by_region.values())),
            ("requests by zone", saturating_sum(t.by_zone.values())),
            ("latency samples", saturating_sum(&t.latency.counts)),
        ] {
            if count > t.requests {
                return Err(InvalidTrafficReport::Inconsistent {
                    gateway: gateway(),
                    what,
                    count,
                    requests: t.requests,
                });
            }
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
    pub(super) fn report(&self, report: TrafficReport) -> Result<(), ReportError> {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(&report.proxy_id) else {
            return Err(UnknownProxy(report.proxy_id).into());
        };
        let new: Counters = report
            .gateways
            .into_iter()
            .map(|g| (GatewayRef::new(g.namespace, g.name), g.traffic))
            .collect();
        let now = Instant::now();
        let same_stream = p.reported.is_some_and(|r| r.session == p.session);
        plausible(
            &p.traffic,
            &new,
            same_stream,
            p.reported.map(|r| now - r.at),
        )?;
        p.reported = Some(super::registry::Reported {
            session: p.session,
            at: now,
        });
        p.last_seen = SystemTime::now();
        // The latest view replaces the previous one; a report without one (an older proxy)
        // leaves none.
        p.health = report.health;
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

/// Whether `new` can follow `before`, the proxy's previous report (`elapsed` ago; `None`: this
/// is its first). See the module docs.
fn plausible(
    before: &Counters,
    new: &Counters,
    same_stream: bool,
    elapsed: Option<std::time::Duration>,
) -> Result<(), Implausible> {
    let mut increase = 0u64;
    for (gw, now) in new {
        let grew = match before.get(gw) {
            Some(b) if went_down(now, b) => {
                if same_stream {
                    return Err(Implausible::Decrease(gw.clone()));
                }
                now.requests // restarted: counted from the restart
            }
            Some(b) => now.requests.saturating_sub(b.requests),
            None => now.requests,
        };
        increase = increase.saturating_add(grew);
    }
    if let Some(elapsed) = elapsed {
        // Whole seconds, rounded up: reports a few ms apart still get a second's worth.
        let secs = elapsed.as_secs().saturating_add(1);
        let allowed = secs
            .saturating_mul(MAX_REQUESTS_PER_SECOND)
            .saturating_add(RATE_SLACK);
        if increase > allowed {
            return Err(Implausible::Rate {
                increase,
                elapsed_ms: elapsed.as_millis(),
            });
        }
    }
    Ok(())
}

/// Adds `from` into `into`, saturating: counters come from the network.
fn accumulate(into: &mut GatewayTraffic, from: &GatewayTraffic) {
    into.requests = into.requests.saturating_add(from.requests);
    for (r, n) in &from.by_region {
        let e = into.by_region.entry(r.clone()).or_default();
        *e = e.saturating_add(*n);
    }
    for (z, n) in &from.by_zone {
        let e = into.by_zone.entry(z.clone()).or_default();
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
            .by_zone
            .iter()
            .any(|(z, b)| below(now.by_zone.get(z), b))
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
            health: None,
        }
    }

    #[tokio::test]
    async fn forgotten_proxies_leave_their_counters_in_the_sum() {
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca());
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

    fn test_ca() -> std::sync::Arc<crate::pki::Ca> {
        let td = crate::pki::TrustDomain::default();
        std::sync::Arc::new(crate::pki::Ca::generate(&td, Duration::from_secs(3600)).unwrap())
    }

    fn one(t: GatewayTraffic) -> Counters {
        [(GatewayRef::new("ns", "web"), t)].into_iter().collect()
    }

    #[test]
    fn failures_regions_and_latency_never_exceed_requests() {
        let reason = |t: GatewayTraffic| {
            let mut r = report("a", 0);
            r.gateways[0].traffic = t;
            check_traffic(&r).err().map(|e| e.reason())
        };
        assert_eq!(reason(counters(3)), None);
        let mut t = counters(3);
        t.failed
            .insert(meridian_model::traffic::FailureKind::Connect, 4);
        assert_eq!(reason(t), Some("failures"));
        let mut t = counters(3);
        t.by_region.insert("r2".into(), 1);
        assert_eq!(reason(t), Some("regions"));
        let mut t = counters(3);
        t.latency.add(0, 1);
        assert_eq!(reason(t), Some("latency"));
        // Sums that would overflow saturate instead (and are then too many).
        let mut t = counters(3);
        t.requests = u64::MAX - 1;
        t.by_region.insert("r2".into(), u64::MAX);
        t.failed
            .insert(meridian_model::traffic::FailureKind::Connect, u64::MAX);
        t.failed
            .insert(meridian_model::traffic::FailureKind::Timeout, u64::MAX);
        assert_eq!(reason(t), Some("failures"));
    }

    #[test]
    fn decreases_are_refused_within_a_stream_only() {
        let (before, after) = (one(counters(5)), one(counters(4)));
        let second = Some(Duration::from_secs(1));
        assert_eq!(
            plausible(&before, &after, true, second),
            Err(Implausible::Decrease(GatewayRef::new("ns", "web")))
        );
        assert_eq!(
            plausible(&before, &after, false, second),
            Ok(()),
            "a new stream"
        );
        assert_eq!(plausible(&before, &one(counters(6)), true, second), Ok(()));
    }

    #[test]
    fn growth_is_bounded_by_the_elapsed_time() {
        let at = |n: u64| {
            one(GatewayTraffic {
                requests: n,
                ..Default::default()
            })
        };
        let base = at(1_000);
        let limit = 2 * MAX_REQUESTS_PER_SECOND + RATE_SLACK; // 1.5 s rounds up to 2
        let elapsed = Some(Duration::from_millis(1_500));
        assert_eq!(plausible(&base, &at(1_000 + limit), true, elapsed), Ok(()));
        assert_eq!(
            plausible(&base, &at(1_001 + limit), true, elapsed),
            Err(Implausible::Rate {
                increase: limit + 1,
                elapsed_ms: 1_500
            })
        );
        // After a restart (new stream, counters went down) the new counters are the growth.
        let before_restart = at(10 * limit);
        assert_eq!(
            plausible(&before_restart, &at(limit + 1), false, elapsed)
                .unwrap_err()
                .reason(),
            "rate"
        );
        assert_eq!(
            plausible(&before_restart, &at(limit), false, elapsed),
            Ok(())
        );
        // The first report is not bounded; huge values saturate.
        assert_eq!(
            plausible(&Counters::new(), &at(u64::MAX), true, None),
            Ok(())
        );
        let mut two = at(u64::MAX);
        two.insert(
            GatewayRef::new("ns", "api"),
            at(u64::MAX).into_values().next().unwrap(),
        );
        assert_eq!(
            plausible(
                &Counters::new(),
                &two,
                true,
                Some(Duration::from_secs(u64::MAX))
            )
            .map_err(|e| e.reason()),
            Ok(()),
            "saturated bound"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_report_changes_nothing() {
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca());
        let srv = DistributionServer::start(cfg).await.unwrap();
        let inner = &srv.inner;
        let web = GatewayRef::new("ns", "web");
        let _ = inner.connect(&entry("a", None, None).hello);
        inner.report(report("a", 5)).unwrap();
        let err = inner.report(report("a", 3)).unwrap_err();
        assert!(
            matches!(err, ReportError::Implausible(Implausible::Decrease(_))),
            "{err}"
        );
        assert_eq!(srv.traffic("c", &web), Some(counters(5)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut huge = report("a", 5);
        huge.gateways[0].traffic.requests = 3 * MAX_REQUESTS_PER_SECOND + RATE_SLACK;
        let err = inner.report(huge).unwrap_err();
        assert!(
            matches!(err, ReportError::Implausible(Implausible::Rate { .. })),
            "{err}"
        );
        assert_eq!(srv.traffic("c", &web), Some(counters(5)));
        // The proxy restarts: a new stream may start lower.
        let _ = inner.connect(&entry("a", None, None).hello);
        inner.report(report("a", 2)).unwrap();
        assert_eq!(srv.traffic("c", &web).unwrap().requests, 7);
    }

    fn with_health(ejected: usize) -> TrafficReport {
        use crate::protocol::{EjectedEndpoint, EjectionReason, NearestRegion};
        // Counters stay equal across the test's reports: only the view changes.
        let mut r = report("east-1", 2);
        r.health = Some(ProxyHealth {
            nearest_regions: vec![NearestRegion {
                region: "us-west".into(),
                rtt_ms: Some(3.5),
            }],
            ejected: (0..ejected)
                .map(|i| EjectedEndpoint {
                    backend: "ns/a:80".into(),
                    address: format!("10.0.{}.{}:80", i / 250, i % 250),
                    since: "2026-12-06T12:01:00Z".into(),
                    reason: EjectionReason::Passive,
                    failures: 1,
                })
                .collect(),
            truncated: false,
        });
        r
    }

    #[test]
    fn health_views_are_bounded_and_checked_naming_the_proxy() {
        assert_eq!(check_traffic(&with_health(MAX_EJECTED)), Ok(()));
        let refused = |r: &TrafficReport| check_traffic(r).unwrap_err().to_string();
        let too_many = refused(&with_health(MAX_EJECTED + 1));
        assert!(
            too_many.starts_with("proxy east-1: health.ejected: 1001 endpoints, at most 1000"),
            "{too_many}"
        );
        assert_eq!(
            check_traffic(&with_health(MAX_EJECTED + 1))
                .unwrap_err()
                .reason(),
            "health"
        );
        let bad = |f: &dyn Fn(&mut ProxyHealth)| {
            let mut r = with_health(2);
            f(r.health.as_mut().unwrap());
            refused(&r)
        };
        assert_eq!(
            bad(&|h| h.ejected[1].address = "10.0.0.1".into()),
            "proxy east-1: health.ejected[1].address \"10.0.0.1\": expected IP:PORT"
        );
        assert!(
            bad(&|h| h.ejected[0].since = "yesterday".into())
                .contains("health.ejected[0].since \"yesterday\": expected an RFC 3339 time")
        );
        assert!(bad(&|h| h.ejected[0].backend.clear()).contains("ejected[0].backend"));
        assert!(bad(&|h| h.nearest_regions[0].rtt_ms = Some(-1.0)).contains("rttMs"));
        assert!(bad(&|h| h.nearest_regions[0].rtt_ms = Some(f64::NAN)).contains("rttMs"));
        assert!(
            bad(&|h| h.nearest_regions.push(h.nearest_regions[0].clone())).contains("listed twice")
        );
        assert!(
            bad(&|h| {
                h.nearest_regions = (0..=MAX_REGIONS)
                    .map(|i| crate::protocol::NearestRegion {
                        region: format!("r{i}"),
                        rtt_ms: None,
                    })
                    .collect()
            })
            .contains("at most 256")
        );
    }

    /// The latest view per proxy is kept, replaced by the next report, and dropped when the
    /// proxy's stream closes; a refused report changes nothing.
    #[tokio::test]
    async fn the_latest_health_view_is_kept_while_the_proxy_is_connected() {
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca());
        let srv = DistributionServer::start(cfg).await.unwrap();
        let inner = &srv.inner;
        let health_of = |id: &str| {
            srv.state()
                .into_iter()
                .find(|p| p.proxy_id == id)
                .and_then(|p| p.health)
        };
        let (session, _kicked, _resync) = inner.connect(&entry("east-1", None, None).hello);
        assert_eq!(health_of("east-1"), None);
        inner.report(with_health(2)).unwrap();
        assert_eq!(health_of("east-1").unwrap().ejected.len(), 2);
        inner.report(with_health(1)).unwrap();
        assert_eq!(health_of("east-1").unwrap().ejected.len(), 1);
        // An older proxy's report (no view) leaves none.
        inner.report(report("east-1", 2)).unwrap();
        assert_eq!(health_of("east-1"), None);
        inner.report(with_health(1)).unwrap();
        inner.disconnect("east-1", session);
        let gone = srv.state().into_iter().find(|p| p.proxy_id == "east-1");
        assert!(gone.is_some_and(|p| !p.connected && p.health.is_none()));
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
