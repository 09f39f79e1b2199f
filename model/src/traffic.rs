//! Traffic counters a proxy keeps per Gateway and reports to the controller.
//!
//! ```text
//!  proxy: every finished request ─► GatewayTraffic (cumulative, per Gateway)
//!           └─ reported every second over the distribution channel
//!  controller: report(t1).since(report(t0)) ─► rates, error ratio, p99, share per region
//!              └─ drill abort guards and drill timelines
//! ```
//!
//! Counters are cumulative since the proxy started, so a lost report loses no requests: the next
//! one carries them. A proxy restart makes counters go down; [`GatewayTraffic::since`] then
//! treats the new values as the whole interval instead of producing nonsense.
//!
//! Latency is kept in a fixed-bound histogram ([`LATENCY_BOUNDS_US`]) so reports from several
//! proxies merge by adding counts and stay small on the wire; quantiles are bucket upper bounds,
//! which is exact enough for guards like "p99 over 500 ms".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds (inclusive, microseconds) of the latency buckets; one more bucket past the last
/// bound counts everything slower.
pub const LATENCY_BOUNDS_US: [u64; 18] = [
    250, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Why a request failed: the proxy could not get an answer from any endpoint, or the answer was a
/// server error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureKind {
    /// No endpoint could be reached (refused, reset, connect timeout) after retries: 502.
    Connect,
    /// The backend did not answer in time: 504.
    Timeout,
    /// No endpoint was available at all (all ejected/drained, geo-fence): 503.
    NoEndpoint,
    /// The backend answered with a 5xx status.
    Upstream5xx,
    /// Anything else the proxy answered with 5xx (invalid backend, internal error).
    Other,
}

/// Latency histogram with the bounds of [`LATENCY_BOUNDS_US`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    /// `counts[i]` counts values `<= LATENCY_BOUNDS_US[i]` (and above the previous bound); the
    /// extra last entry counts everything slower. Shorter vectors mean trailing zeros.
    #[serde(default)]
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Bucket index of a latency.
    pub fn bucket(us: u64) -> usize {
        LATENCY_BOUNDS_US.partition_point(|&b| b < us)
    }

    /// Counts one value.
    pub fn record(&mut self, us: u64) {
        self.add(Self::bucket(us), 1);
    }

    /// Adds `n` to bucket `i` (grows the vector as needed; out-of-range goes to the last bucket).
    pub fn add(&mut self, i: usize, n: u64) {
        let i = i.min(LATENCY_BOUNDS_US.len());
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] = self.counts[i].saturating_add(n);
    }

    /// Number of values.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another histogram (several proxies of one Gateway).
    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in other.counts.iter().enumerate() {
            if *n > 0 {
                self.add(i, *n);
            }
        }
    }

    /// Counts recorded after `earlier` (bucket-wise; a bucket that went down means the source
    /// restarted, and the whole current histogram is the interval).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let reset = earlier
            .counts
            .iter()
            .enumerate()
            .any(|(i, e)| self.counts.get(i).copied().unwrap_or(0) < *e);
        if reset {
            return self.clone();
        }
        Histogram {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, n)| n - earlier.counts.get(i).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0.0–1.0), `None` when empty.
    /// Values past the last bound report `u64::MAX`.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Rank of the quantile value, 1-based: p99 of 100 values is the 99th.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// The key of [`GatewayTraffic::by_zone`]: `region/zone`.
pub fn zone_key(region: &str, zone: &str) -> String {
    format!("{region}/{zone}")
}

/// Cumulative counters of one Gateway on one proxy (or merged over several).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTraffic {
    /// Requests answered (any status), including failures.
    #[serde(default)]
    pub requests: u64,
    /// Requests answered by an endpoint, per region of that endpoint. Requests the proxy
    /// answered itself (redirects, 404, failures) are not here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_region: BTreeMap<String, u64>,
    /// The same requests per zone of the endpoint, keyed `region/zone` (absent from older
    /// proxies, and for endpoints whose zone is not known).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_zone: BTreeMap<String, u64>,
    /// Failed requests per kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<FailureKind, u64>,
    /// Time from request head received to response head sent.
    #[serde(default)]
    pub latency: Histogram,
}

impl GatewayTraffic {
    /// Records one finished request: `region` of the endpoint that answered (if any), the
    /// failure (if any) and the latency.
    pub fn record(&mut self, region: Option<&str>, failure: Option<FailureKind>, latency_us: u64) {
        self.record_zone(region, None, failure, latency_us);
    }

    /// [`GatewayTraffic::record`] with the zone of the endpoint that answered, when known.
    pub fn record_zone(
        &mut self,
        region: Option<&str>,
        zone: Option<&str>,
        failure: Option<FailureKind>,
        latency_us: u64,
    ) {
        self.requests += 1;
        if let Some(r) = region {
            *self.by_region.entry(r.to_string()).or_default() += 1;
            if let Some(z) = zone.filter(|z| !z.is_empty()) {
                let key = zone_key(r, z);
                match self.by_zone.get_mut(&key) {
                    Some(n) => *n += 1,
                    None => {
                        self.by_zone.insert(key, 1);
                    }
                }
            }
        }
        if let Some(f) = failure {
            *self.failed.entry(f).or_default() += 1;
        }
        self.latency.record(latency_us);
    }

    /// Failed requests of every kind.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Adds another proxy's counters for the same Gateway.
    pub fn merge(&mut self, other: &GatewayTraffic) {
        self.requests += other.requests;
        for (r, n) in &other.by_region {
            *self.by_region.entry(r.clone()).or_default() += n;
        }
        for (z, n) in &other.by_zone {
            *self.by_zone.entry(z.clone()).or_default() += n;
        }
        for (k, n) in &other.failed {
            *self.failed.entry(*k).or_default() += n;
        }
        self.latency.merge(&other.latency);
    }

    /// What happened after `earlier` was taken. Counters that went down mean the proxy
    /// restarted in between: the current values are then the interval.
    pub fn since(&self, earlier: &GatewayTraffic) -> GatewayTraffic {
        if self.requests < earlier.requests {
            return self.clone();
        }
        let sub = |now: u64, then: Option<&u64>| now.saturating_sub(then.copied().unwrap_or(0));
        GatewayTraffic {
            requests: self.requests - earlier.requests,
            by_region: self
                .by_region
                .iter()
                .map(|(r, n)| (r.clone(), sub(*n, earlier.by_region.get(r))))
                .filter(|(_, n)| *n > 0)
                .collect(),
            by_zone: self
                .by_zone
                .iter()
                .map(|(z, n)| (z.clone(), sub(*n, earlier.by_zone.get(z))))
                .filter(|(_, n)| *n > 0)
                .collect(),
            failed: self
                .failed
                .iter()
                .map(|(k, n)| (*k, sub(*n, earlier.failed.get(k))))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// Failed requests over all requests, `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures() as f64 / self.requests as f64)
    }

    /// Share of the requests answered by endpoints in `region` among all answered by an
    /// endpoint, `None` when no endpoint answered.
    pub fn region_share(&self, region: &str) -> Option<f64> {
        let answered: u64 = self.by_region.values().sum();
        (answered > 0)
            .then(|| self.by_region.get(region).copied().unwrap_or(0) as f64 / answered as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(Histogram::bucket(0), 0);
        assert_eq!(Histogram::bucket(250), 0);
        assert_eq!(Histogram::bucket(251), 1);
        assert_eq!(Histogram::bucket(1_000_000), 12);
        assert_eq!(Histogram::bucket(u64::MAX), LATENCY_BOUNDS_US.len());
    }

    #[test]
    fn quantiles_report_bucket_upper_bounds() {
        let mut h = Histogram::default();
        for _ in 0..98 {
            h.record(400);
        }
        h.record(40_000);
        h.record(900_000);
        assert_eq!(h.quantile_us(0.5), Some(500));
        assert_eq!(h.quantile_us(0.98), Some(500));
        assert_eq!(h.quantile_us(0.99), Some(50_000));
        assert_eq!(h.quantile_us(1.0), Some(1_000_000));
        assert_eq!(Histogram::default().quantile_us(0.99), None);
        let mut slow = Histogram::default();
        slow.record(60_000_000);
        assert_eq!(slow.quantile_us(0.5), Some(u64::MAX));
    }

    #[test]
    fn since_subtracts_and_survives_a_restart() {
        let mut t0 = GatewayTraffic::default();
        t0.record(Some("us-east"), None, 300);
        let mut t1 = t0.clone();
        t1.record(Some("us-west"), None, 300);
        t1.record(None, Some(FailureKind::Connect), 2_000);
        let d = t1.since(&t0);
        assert_eq!(d.requests, 2);
        assert_eq!(d.by_region.get("us-east"), None);
        assert_eq!(d.by_region.get("us-west"), Some(&1));
        assert_eq!(d.failed.get(&FailureKind::Connect), Some(&1));
        assert_eq!(d.latency.total(), 2);
        assert_eq!(d.error_ratio(), Some(0.5));
        assert_eq!(d.region_share("us-west"), Some(1.0));

        // The proxy restarted: fewer requests than before means "everything is new".
        let mut fresh = GatewayTraffic::default();
        fresh.record(Some("us-east"), None, 100);
        assert_eq!(fresh.since(&t1), fresh);
    }

    #[test]
    fn zones_are_counted_under_their_region_and_follow_since_and_merge() {
        let mut t0 = GatewayTraffic::default();
        t0.record_zone(Some("us-east"), Some("us-east-a"), None, 300);
        t0.record_zone(Some("us-east"), Some(""), None, 300);
        t0.record_zone(None, Some("us-east-a"), Some(FailureKind::Connect), 300);
        assert_eq!(t0.by_region.get("us-east"), Some(&2));
        assert_eq!(
            t0.by_zone.iter().collect::<Vec<_>>(),
            [(&"us-east/us-east-a".to_string(), &1)],
            "an empty zone, or no region, counts under no zone"
        );
        let mut t1 = t0.clone();
        t1.record_zone(Some("us-east"), Some("us-east-b"), None, 300);
        t1.record_zone(Some("us-west"), Some("us-west-a"), None, 300);
        let d = t1.since(&t0);
        assert_eq!(
            d.by_zone.keys().collect::<Vec<_>>(),
            ["us-east/us-east-b", "us-west/us-west-a"]
        );
        let mut m = t0.clone();
        m.merge(&t1);
        assert_eq!(m.by_zone.get("us-east/us-east-a"), Some(&2));
        // Older proxies send no zones: the field is optional both ways.
        let json = serde_json::to_value(GatewayTraffic::default()).unwrap();
        assert!(json.get("byZone").is_none());
        let old: GatewayTraffic =
            serde_json::from_value(serde_json::json!({"requests": 1, "byRegion": {"r": 1}}))
                .unwrap();
        assert!(old.by_zone.is_empty());
    }

    #[test]
    fn merge_adds_proxies() {
        let mut a = GatewayTraffic::default();
        a.record(Some("us-east"), None, 300);
        let mut b = GatewayTraffic::default();
        b.record(Some("us-east"), Some(FailureKind::Upstream5xx), 30_000);
        b.record(None, Some(FailureKind::NoEndpoint), 10);
        a.merge(&b);
        assert_eq!(a.requests, 3);
        assert_eq!(a.by_region.get("us-east"), Some(&2));
        assert_eq!(a.failures(), 2);
        assert_eq!(a.latency.total(), 3);
        assert_eq!(a.latency.quantile_us(1.0), Some(50_000));
    }

    #[test]
    fn json_shape_is_compact_and_round_trips() {
        let mut t = GatewayTraffic::default();
        t.record(Some("eu"), Some(FailureKind::Timeout), 1_500);
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.contains("\"failed\":{\"timeout\":1}"), "{text}");
        let back: GatewayTraffic = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
        let empty: GatewayTraffic = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, GatewayTraffic::default());
    }
}
