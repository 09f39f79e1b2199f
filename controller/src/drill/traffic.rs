//! Traffic arithmetic of a drill: cumulative samples in, window deltas, guard verdicts and status
//! figures out. Nothing here reads a clock or the data plane, so the tests are plain tables.
//!
//! ```text
//!  every second: sum of DataPlane::traffic over the scoped Gateways of every cluster
//!    ─► Samples (cumulative, timestamped)
//!    ─► window(now, window) = latest.since(newest sample at least `window` old)
//!    ─► trip(guards, delta): error percent and p99 against the limits, if requests ≥ minRequests
//!  marks (baseline start, fail, restore start, restored, end) ─► figures()
//! ```

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::Duration;

use meridian_crds::meridian::DrillFigures;
use meridian_model::traffic::GatewayTraffic;
use tokio::time::Instant;

use super::plan::Guards;

/// Cumulative traffic samples, oldest first, bounded in count.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    samples: VecDeque<(Instant, GatewayTraffic)>,
}

/// Samples older than this many are dropped (one per second: more than the longest window).
const MAX_SAMPLES: usize = 4096;

impl Samples {
    pub(crate) fn push(&mut self, at: Instant, total: GatewayTraffic) {
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, total));
    }

    pub(crate) fn latest(&self) -> Option<&GatewayTraffic> {
        self.samples.back().map(|(_, t)| t)
    }

    /// Traffic of the last `window`, counted from the newest sample taken at least `window`
    /// before the latest one, not earlier than `since` (before that the target was not failed
    /// yet). With too little history, the oldest usable sample is the start.
    pub(crate) fn window(&self, window: Duration, since: Instant) -> Option<GatewayTraffic> {
        let (now, latest) = self.samples.back()?;
        let start = now.checked_sub(window).unwrap_or(since).max(since);
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= start)
            .or_else(|| self.samples.iter().find(|(t, _)| *t >= since))?;
        Some(latest.since(&base.1))
    }
}

/// Why a guard trips on this window's traffic, if it does.
pub(crate) fn trip(guards: &Guards, delta: &GatewayTraffic) -> Option<String> {
    if delta.requests == 0 || delta.requests < guards.min_requests {
        return None;
    }
    if let (Some(limit), Some(ratio)) = (guards.max_error_percent, delta.error_ratio()) {
        let percent = ratio * 100.0;
        if percent > limit {
            return Some(format!(
                "error rate {} % ({} of {} requests failed in the last {}) is above maxErrorPercent {}",
                round2(percent),
                delta.failures(),
                delta.requests,
                humantime(guards.window),
                limit
            ));
        }
    }
    if let (Some(limit), Some(p99)) = (guards.max_p99, delta.latency.quantile_us(0.99))
        && u128::from(p99) > limit.as_micros()
    {
        return Some(format!(
            "p99 latency {} over {} requests in the last {} is above maxP99Latency {}",
            p99_text(p99),
            delta.requests,
            humantime(guards.window),
            humantime(limit)
        ));
    }
    None
}

fn p99_text(us: u64) -> String {
    if us == u64::MAX {
        "above 30s".to_string()
    } else {
        format!("{} ms", round2(us as f64 / 1000.0))
    }
}

/// `1500ms` → `1.5s`, `5s` → `5s`.
pub(crate) fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", round2(d.as_secs_f64()))
    }
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn p99_ms(t: &GatewayTraffic) -> Option<f64> {
    // A value past the last bucket has no upper bound; report the last bound instead of ∞.
    t.latency.quantile_us(0.99).map(|us| {
        let us = if us == u64::MAX {
            meridian_model::traffic::LATENCY_BOUNDS_US
                [meridian_model::traffic::LATENCY_BOUNDS_US.len() - 1]
        } else {
            us
        };
        round2(us as f64 / 1000.0)
    })
}

fn shares(t: &GatewayTraffic) -> BTreeMap<String, f64> {
    t.by_region
        .keys()
        .filter_map(|r| t.region_share(r).map(|s| (r.clone(), round2(s * 100.0))))
        .collect()
}

/// Status figures from the traffic before, during and after the failure.
pub(crate) fn figures(
    before: &GatewayTraffic,
    during: &GatewayTraffic,
    after: &GatewayTraffic,
) -> DrillFigures {
    DrillFigures {
        requests_before: before.requests,
        requests_during: during.requests,
        requests_after: after.requests,
        failed_before: before.failures(),
        failed_during: during.failures(),
        failed_after: after.failures(),
        error_percent_during: during.error_ratio().map(|r| round2(r * 100.0)),
        p99_ms_before: p99_ms(before),
        p99_ms_during: p99_ms(during),
        p99_ms_after: p99_ms(after),
        share_before: shares(before),
        share_during: shares(during),
        share_after: shares(after),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use meridian_model::traffic::FailureKind;

    use super::*;

    fn traffic(ok: u64, failed: u64, latency_us: u64, region: &str) -> GatewayTraffic {
        let mut t = GatewayTraffic::default();
        for _ in 0..ok {
            t.record(Some(region), None, latency_us);
        }
        for _ in 0..failed {
            t.record(None, Some(FailureKind::NoEndpoint), latency_us);
        }
        t
    }

    fn guards() -> Guards {
        Guards {
            max_error_percent: Some(1.0),
            max_p99: Some(Duration::from_millis(500)),
            window: Duration::from_secs(5),
            min_requests: 20,
        }
    }

    #[test]
    fn guards_trip_on_errors_and_latency_but_not_on_thin_windows() {
        let g = guards();
        assert_eq!(
            trip(&g, &traffic(100, 1, 1_000, "a")),
            None,
            "1 % is not above 1 %"
        );
        let why = trip(&g, &traffic(98, 2, 1_000, "a")).unwrap();
        assert!(
            why.contains("error rate 2 %") && why.contains("2 of 100"),
            "{why}"
        );
        assert_eq!(
            trip(&g, &traffic(0, 19, 1_000, "a")),
            None,
            "below minRequests"
        );
        let why = trip(&g, &traffic(50, 0, 900_000, "a")).unwrap();
        assert!(
            why.contains("p99 latency 1000 ms") && why.contains("500ms"),
            "{why}"
        );
        assert_eq!(trip(&g, &traffic(50, 0, 400_000, "a")), None);
        let none = Guards {
            max_error_percent: None,
            max_p99: None,
            ..g
        };
        assert_eq!(trip(&none, &traffic(0, 100, 60_000_000, "a")), None);
    }

    #[test]
    fn the_window_slides_and_starts_at_the_failure() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut samples = Samples::default();
        assert!(samples.window(5 * s, t0).is_none());
        // Cumulative: 10 requests per second, all before t0+3s fine, then failures.
        let mut total = GatewayTraffic::default();
        for i in 0..10u32 {
            let failed = if i >= 3 { 10 } else { 0 };
            let add = traffic(10 - failed, failed, 1_000, "a");
            total.merge(&add);
            samples.push(t0 + s * i, total.clone());
        }
        // Last 5 s: samples 4..=9 → 5 intervals of 10 failures.
        let w = samples.window(5 * s, t0).unwrap();
        assert_eq!((w.requests, w.failures()), (50, 50));
        // Since t0+8s only: one interval.
        let w = samples.window(5 * s, t0 + 8 * s).unwrap();
        assert_eq!(w.requests, 10);
        // Window longer than history: from the first sample at or after `since`.
        let w = samples.window(60 * s, t0).unwrap();
        assert_eq!(w.requests, 90);
        assert_eq!(samples.latest().unwrap().requests, 100);
    }

    #[test]
    fn figures_are_percentages_and_milliseconds() {
        let before = traffic(100, 0, 400, "us-east");
        let mut during = traffic(90, 10, 40_000, "us-west");
        during.merge(&traffic(0, 0, 0, "x"));
        let after = traffic(60, 0, 400, "us-east");
        let mut after_mixed = after.clone();
        after_mixed.merge(&traffic(20, 0, 400, "us-west"));
        let f = figures(&before, &during, &after_mixed);
        assert_eq!(
            (f.requests_before, f.requests_during, f.requests_after),
            (100, 100, 80)
        );
        assert_eq!(
            (f.failed_before, f.failed_during, f.failed_after),
            (0, 10, 0)
        );
        assert_eq!(f.error_percent_during, Some(10.0));
        assert_eq!(f.p99_ms_before, Some(0.5));
        assert_eq!(f.p99_ms_during, Some(50.0));
        assert_eq!(
            f.share_during,
            BTreeMap::from([("us-west".to_string(), 100.0)])
        );
        assert_eq!(
            f.share_after,
            BTreeMap::from([("us-east".to_string(), 75.0), ("us-west".to_string(), 25.0)])
        );
        let empty = figures(
            &GatewayTraffic::default(),
            &GatewayTraffic::default(),
            &GatewayTraffic::default(),
        );
        assert_eq!(empty.error_percent_during, None);
        assert_eq!(empty.p99_ms_during, None);
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(humantime(Duration::from_secs(5)), "5s");
        assert_eq!(humantime(Duration::from_millis(500)), "500ms");
        assert_eq!(humantime(Duration::from_millis(1500)), "1.5s");
    }
}
