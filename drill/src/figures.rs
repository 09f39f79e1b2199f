//! The drill's figures, computed from what the load generator saw: samples in, figures out.
//!
//! ```text
//!  samples (intended send time, latency, outcome) ─┐
//!  fail / restore moments (from the drill status) ─┼─► figures(): phases, shift, failback, latency
//!  target locality, bin width                      ─┘          └─► bins() for the timeline picture
//! ```
//!
//! Every time is in microseconds since the load started. A request belongs to the phase in which
//! it was *meant* to be sent (open-loop load: a late send is the system's fault, not the
//! client's), so `before` is `[0, fail)`, `during` is `[fail, restore)` and `after` is
//! `[restore, end)`. Shares over time (the 95 % shift, failback and the picture) bin answers by
//! when they *arrived*, so a request stuck behind a dead endpoint counts when the client finally
//! got its answer. Nothing here reads a clock, so the unit tests are plain tables.

use std::collections::BTreeMap;

use serde::Serialize;

/// Width of the bins used for shares over time (the 95 % shift and failback figures and the
/// timeline picture).
pub const BIN_US: u64 = 250_000;

/// Share of answered requests that counts as "moved" (shift) or "back" (failback).
pub const SHIFT_THRESHOLD: f64 = 0.95;

/// Why a request failed, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FailKind {
    /// The TCP connection to the Gateway could not be made (refused, reset before a response).
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// The Gateway answered with a 5xx status.
    Status5xx,
    /// Anything else: a 4xx status, a broken response.
    Other,
}

impl FailKind {
    /// Every kind, in report order.
    pub const ALL: [FailKind; 4] = [
        FailKind::Connect,
        FailKind::Timeout,
        FailKind::Status5xx,
        FailKind::Other,
    ];

    /// Label used in report.md and the live progress line.
    pub fn label(self) -> &'static str {
        match self {
            FailKind::Connect => "connect error",
            FailKind::Timeout => "timeout",
            FailKind::Status5xx => "5xx",
            FailKind::Other => "other",
        }
    }
}

/// The endpoint that answered, from `x-meridian-served-by: cluster/region/zone` (or the echo
/// backend's own answer when the header is missing). Empty strings mean unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServedBy {
    /// Member cluster.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
}

impl ServedBy {
    /// Parses `cluster/region/zone`; `None` for anything else.
    pub fn parse(header: &str) -> Option<ServedBy> {
        let mut parts = header.trim().splitn(3, '/');
        let cluster = parts.next()?.to_string();
        let region = parts.next()?.to_string();
        let zone = parts.next()?.to_string();
        if region.is_empty() {
            return None;
        }
        Some(ServedBy {
            cluster,
            region,
            zone,
        })
    }

    /// Region for shares; unknown regions are grouped as `unknown`.
    pub fn region_label(&self) -> &str {
        if self.region.is_empty() {
            "unknown"
        } else {
            &self.region
        }
    }
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// A 1xx–3xx answer, served by this endpoint.
    Answered(ServedBy),
    /// Failed.
    Failed(FailKind),
}

/// One request of the open-loop load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When the request was meant to be sent, µs since the load started.
    pub at_us: u64,
    /// From the intended send time to the end of the answer (or the failure), µs.
    pub latency_us: u64,
    /// What happened.
    pub outcome: Outcome,
}

impl Sample {
    /// When the client learned the outcome.
    pub fn done_us(&self) -> u64 {
        self.at_us.saturating_add(self.latency_us)
    }
}

/// Which endpoints the drill failed; every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Member cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Target {
    /// Whether an answer came from the failed locality.
    pub fn matches(&self, s: &ServedBy) -> bool {
        self.cluster.as_ref().is_none_or(|c| *c == s.cluster)
            && self.region.as_ref().is_none_or(|r| *r == s.region)
            && self.zone.as_ref().is_none_or(|z| *z == s.zone)
    }

    /// `region us-east`, `cluster east, zone us-east-a`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cluster {
            parts.push(format!("cluster {c}"));
        }
        if let Some(r) = &self.region {
            parts.push(format!("region {r}"));
        }
        if let Some(z) = &self.zone {
            parts.push(format!("zone {z}"));
        }
        parts.join(", ")
    }
}

/// Moments of the drill on the load's clock (µs since the load started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moments {
    /// When the target counted as failed; `None` when the drill never failed it.
    pub fail_us: Option<u64>,
    /// When the target was restored; `None` when it was not (yet).
    pub restore_us: Option<u64>,
    /// When the load stopped sending.
    pub end_us: u64,
}

/// Latency quantiles of one phase, milliseconds, over requests that got an answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Requests with an answer in the phase.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Slowest.
    pub max_ms: Option<f64>,
}

/// Counts of one phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Requests meant to be sent in the phase.
    pub requests: u64,
    /// Requests answered 1xx–3xx.
    pub answered: u64,
    /// Failed requests by kind (every kind present, zero included).
    pub failed: BTreeMap<FailKind, u64>,
    /// Failed requests in total.
    pub failed_total: u64,
    /// failed / requests, percent (0 when there were no requests).
    pub error_percent: f64,
    /// Share of answered requests per serving region, percent.
    pub share_by_region: BTreeMap<String, f64>,
    /// Latency of answered requests.
    pub latency: Latency,
}

/// Every figure of a drill.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Requests sent in total.
    pub requests: u64,
    /// Failed requests in total, by kind.
    pub failed: BTreeMap<FailKind, u64>,
    /// Failed requests in total.
    pub failed_total: u64,
    /// The region that answered most requests before the fail moment: where traffic should
    /// return after the restore.
    pub home_region: Option<String>,
    /// `[0, fail)`.
    pub before: Phase,
    /// `[fail, restore)`.
    pub during: Phase,
    /// `[restore, end)`.
    pub after: Phase,
    /// Fail moment → the first request (sent at or after it) that completed served outside the
    /// target or failed, ms.
    pub time_to_detect_ms: Option<f64>,
    /// Fail moment → end of the first 250 ms bin (bins start at the fail moment, answers binned by
    /// arrival) in which at least 95 % of the answers came from outside the target, ms.
    /// Resolution: one bin.
    pub time_to_shift_95_ms: Option<f64>,
    /// Restore moment → end of the first 250 ms bin (bins start at the restore moment, answers
    /// binned by arrival) in which at least 95 % of the answers came from the home region again,
    /// ms.
    pub failback_ms: Option<f64>,
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    // Nearest rank: p99 of 100 values is the 99th smallest.
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Some(sorted_us[rank - 1] as f64 / 1000.0)
}

fn phase<'a>(samples: impl Iterator<Item = &'a Sample>) -> Phase {
    let mut p = Phase {
        failed: FailKind::ALL.iter().map(|k| (*k, 0)).collect(),
        ..Phase::default()
    };
    let mut latencies = Vec::new();
    let mut regions: BTreeMap<String, u64> = BTreeMap::new();
    for s in samples {
        p.requests += 1;
        match &s.outcome {
            Outcome::Answered(by) => {
                p.answered += 1;
                latencies.push(s.latency_us);
                *regions.entry(by.region_label().to_string()).or_default() += 1;
            }
            Outcome::Failed(kind) => {
                p.failed_total += 1;
                *p.failed.entry(*kind).or_default() += 1;
            }
        }
    }
    if p.requests > 0 {
        p.error_percent = p.failed_total as f64 * 100.0 / p.requests as f64;
    }
    if p.answered > 0 {
        p.share_by_region = regions
            .into_iter()
            .map(|(r, n)| (r, n as f64 * 100.0 / p.answered as f64))
            .collect();
    }
    latencies.sort_unstable();
    p.latency = Latency {
        count: latencies.len() as u64,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: latencies.last().map(|us| *us as f64 / 1000.0),
    };
    p
}

/// End (relative to `from_us`, ms) of the first bin of [`BIN_US`] starting at `from_us` and ending
/// by `until_us` in which at least [`SHIFT_THRESHOLD`] of the answers that *arrived* in the bin
/// satisfy `good`. Binning by arrival keeps stalls honest: answers held by a silent endpoint land
/// in the bin where the client got them. Bins without answers never count; a last, partial bin
/// does.
fn first_good_bin(
    samples: &[Sample],
    from_us: u64,
    until_us: u64,
    good: impl Fn(&ServedBy) -> bool,
) -> Option<f64> {
    if until_us <= from_us {
        return None;
    }
    let nbins = (until_us - from_us).div_ceil(BIN_US) as usize;
    let mut answered = vec![0u64; nbins];
    let mut ok = vec![0u64; nbins];
    for s in samples {
        let done = s.done_us();
        if done < from_us || done >= until_us {
            continue;
        }
        let i = ((done - from_us) / BIN_US) as usize;
        if let Outcome::Answered(by) = &s.outcome {
            answered[i] += 1;
            if good(by) {
                ok[i] += 1;
            }
        }
    }
    (0..nbins)
        .find(|&i| answered[i] > 0 && ok[i] as f64 >= SHIFT_THRESHOLD * answered[i] as f64)
        .map(|i| ((i as u64 + 1) * BIN_US).min(until_us - from_us) as f64 / 1000.0)
}

/// Computes every figure. `samples` need not be sorted.
pub fn figures(samples: &[Sample], target: &Target, m: Moments) -> Figures {
    let fail = m.fail_us.unwrap_or(m.end_us).min(m.end_us);
    let restore = m.restore_us.unwrap_or(m.end_us).clamp(fail, m.end_us);
    let in_range = |lo: u64, hi: u64| {
        samples
            .iter()
            .filter(move |s| s.at_us >= lo && s.at_us < hi)
    };
    let all = phase(samples.iter());
    let before = phase(in_range(0, fail));
    let during = phase(in_range(fail, restore));
    let after = phase(in_range(restore, u64::MAX));

    // The home region: most answers before the fail moment (ties: the first by name).
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for s in in_range(0, fail) {
        if let Outcome::Answered(by) = &s.outcome {
            *counts.entry(by.region_label()).or_default() += 1;
        }
    }
    let home_region = counts
        .iter()
        .fold(None::<(&str, u64)>, |best, (r, n)| match best {
            Some((_, bn)) if bn >= *n => best,
            _ => Some((r, *n)),
        })
        .map(|(r, _)| r.to_string());

    let (time_to_detect_ms, time_to_shift_95_ms) = match m.fail_us {
        Some(f) if f < m.end_us => {
            let detect = samples
                .iter()
                .filter(|s| s.at_us >= f)
                .filter(|s| match &s.outcome {
                    Outcome::Answered(by) => !target.matches(by),
                    Outcome::Failed(_) => true,
                })
                .map(|s| s.done_us() - f)
                .min()
                .map(|us| us as f64 / 1000.0);
            let shift = first_good_bin(samples, f, restore, |by| !target.matches(by));
            (detect, shift)
        }
        _ => (None, None),
    };
    let failback_ms = match (m.restore_us, &home_region) {
        (Some(r), Some(home)) if r < m.end_us => {
            first_good_bin(samples, r, m.end_us, |by| by.region_label() == home)
        }
        _ => None,
    };
    Figures {
        requests: all.requests,
        failed: all.failed,
        failed_total: all.failed_total,
        home_region,
        before,
        during,
        after,
        time_to_detect_ms,
        time_to_shift_95_ms,
        failback_ms,
    }
}

/// Requests per bin of the timeline picture, bins of [`BIN_US`] from the load's start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bin {
    /// Start of the bin, ms since the load started.
    pub start_ms: u64,
    /// Answered requests per serving region.
    pub by_region: BTreeMap<String, u64>,
    /// Failed requests.
    pub failed: u64,
}

/// Bins the samples by the time their outcome arrived, from 0 to `end_us`: what the client saw
/// over time, stalls included (a request held for 2 s shows up 2 s later). A last, partial bin is
/// left out
/// (it would look like a drop in the rate); its samples still count in [`figures`].
pub fn bins(samples: &[Sample], end_us: u64) -> Vec<Bin> {
    let n = (end_us / BIN_US) as usize;
    let mut out: Vec<Bin> = (0..n)
        .map(|i| Bin {
            start_ms: i as u64 * BIN_US / 1000,
            ..Bin::default()
        })
        .collect();
    for s in samples {
        let Some(b) = out.get_mut((s.done_us() / BIN_US) as usize) else {
            continue;
        };
        match &s.outcome {
            Outcome::Answered(by) => {
                *b.by_region
                    .entry(by.region_label().to_string())
                    .or_default() += 1
            }
            Outcome::Failed(_) => b.failed += 1,
        }
    }
    out
}

/// A limit the drill must stay within.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// What is checked, e.g. `0 failed GETs`.
    pub name: String,
    /// The limit, readable.
    pub limit: String,
    /// What was measured, readable.
    pub measured: String,
    /// Whether it held.
    pub pass: bool,
}

/// Pass/fail against "0 failed GETs", the 95 % shift, and the guards given on the command line
/// (evaluated over the whole drill phase, not a sliding window).
pub fn checks(f: &Figures, max_error_percent: Option<f64>, max_p99_ms: Option<f64>) -> Vec<Check> {
    let mut out = vec![Check {
        name: "0 failed GETs".into(),
        limit: "0".into(),
        measured: f.failed_total.to_string(),
        pass: f.failed_total == 0,
    }];
    out.push(Check {
        name: "≥95 % of answers outside the target during the drill".into(),
        limit: "reached".into(),
        measured: f
            .time_to_shift_95_ms
            .map_or_else(|| "never".to_string(), |ms| format!("after {ms:.0} ms")),
        pass: f.time_to_shift_95_ms.is_some(),
    });
    if let Some(p) = max_error_percent {
        out.push(Check {
            name: "error percent during the drill".into(),
            limit: format!("≤ {p}%"),
            measured: format!("{:.2}%", f.during.error_percent),
            pass: f.during.error_percent <= p,
        });
    }
    if let Some(limit) = max_p99_ms {
        let p99 = f.during.latency.p99_ms;
        out.push(Check {
            name: "p99 latency during the drill".into(),
            limit: format!("≤ {limit} ms"),
            measured: p99.map_or_else(|| "no answers".to_string(), |v| format!("{v:.1} ms")),
            pass: p99.is_some_and(|v| v <= limit),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(region: &str) -> ServedBy {
        ServedBy {
            cluster: region.to_string(),
            region: region.to_string(),
            zone: format!("{region}-a"),
        }
    }

    fn ok(at_ms: u64, region: &str) -> Sample {
        Sample {
            at_us: at_ms * 1000,
            latency_us: 1000,
            outcome: Outcome::Answered(by(region)),
        }
    }

    fn failed(at_ms: u64, kind: FailKind) -> Sample {
        Sample {
            at_us: at_ms * 1000,
            latency_us: 2000,
            outcome: Outcome::Failed(kind),
        }
    }

    fn east() -> Target {
        Target {
            region: Some("east".into()),
            ..Target::default()
        }
    }

    /// 100 req/s: a request every 10 ms from `from_ms` to `to_ms`, served by `region`.
    fn steady(from_ms: u64, to_ms: u64, region: &str) -> Vec<Sample> {
        (from_ms..to_ms)
            .step_by(10)
            .map(|t| ok(t, region))
            .collect()
    }

    #[test]
    fn served_by_header_parses_three_parts_only() {
        assert_eq!(
            ServedBy::parse("east/us-east/us-east-a"),
            Some(ServedBy {
                cluster: "east".into(),
                region: "us-east".into(),
                zone: "us-east-a".into()
            })
        );
        assert_eq!(ServedBy::parse("east/us-east"), None);
        assert_eq!(ServedBy::parse("east//z"), None);
        assert_eq!(ServedBy::parse(""), None);
    }

    #[test]
    fn target_matches_every_set_field() {
        let t = Target {
            cluster: Some("east".into()),
            zone: Some("east-a".into()),
            ..Target::default()
        };
        assert!(t.matches(&by("east")));
        let mut other_zone = by("east");
        other_zone.zone = "east-b".into();
        assert!(!t.matches(&other_zone));
        assert!(!t.matches(&by("west")));
    }

    #[test]
    fn clean_drain_shifts_and_fails_back() {
        // Home east until 1 s; drained 1 s..3 s with west answering from 1.02 s; east again 3.3 s.
        let mut s = steady(0, 1000, "east");
        s.extend(steady(1000, 1020, "east"));
        s.extend(steady(1020, 3000, "west"));
        s.extend(steady(3000, 3300, "west"));
        s.extend(steady(3300, 5000, "east"));
        let f = figures(
            &s,
            &east(),
            Moments {
                fail_us: Some(1_000_000),
                restore_us: Some(3_000_000),
                end_us: 5_000_000,
            },
        );
        assert_eq!(f.requests, 500);
        assert_eq!(f.failed_total, 0);
        assert_eq!(f.home_region.as_deref(), Some("east"));
        assert_eq!(
            (f.before.requests, f.during.requests, f.after.requests),
            (100, 200, 200)
        );
        // First request sent at/after 1 s served elsewhere: sent at 1020 ms, answered 1 ms later.
        assert_eq!(f.time_to_detect_ms, Some(21.0));
        // Bin [1000, 1250) has 2 east of 25 answers = 92 %: not yet; the next bin is all west.
        assert_eq!(f.time_to_shift_95_ms, Some(500.0));
        // Bins from 3 s: [3000,3250) west, [3250,3500) 5 west of 25 = 80 % east, [3500,3750) east.
        assert_eq!(f.failback_ms, Some(750.0));
        assert_eq!(f.during.share_by_region.get("west"), Some(&99.0));
        assert_eq!(f.during.share_by_region.get("east"), Some(&1.0));
        assert_eq!(f.during.latency.p50_ms, Some(1.0));
    }

    #[test]
    fn failures_count_by_kind_and_phase_and_detect_the_fail() {
        let mut s = steady(0, 1000, "east");
        s.push(failed(1005, FailKind::Connect));
        s.push(failed(1015, FailKind::Timeout));
        s.push(failed(1025, FailKind::Status5xx));
        s.push(failed(4000, FailKind::Other));
        s.extend(steady(1030, 2000, "west"));
        s.extend(steady(2000, 3000, "east"));
        let f = figures(
            &s,
            &east(),
            Moments {
                fail_us: Some(1_000_000),
                restore_us: Some(2_000_000),
                end_us: 3_000_000,
            },
        );
        assert_eq!(f.failed_total, 4);
        assert_eq!(f.failed[&FailKind::Connect], 1);
        assert_eq!(f.failed[&FailKind::Timeout], 1);
        assert_eq!(f.failed[&FailKind::Status5xx], 1);
        assert_eq!(f.failed[&FailKind::Other], 1);
        assert_eq!(f.during.failed_total, 3);
        // The 4 s failure was sent after the restore.
        assert_eq!(f.after.failed_total, 1);
        assert_eq!(f.before.failed_total, 0);
        // A failure is a detection too: sent at 1005 ms, failed 2 ms later.
        assert_eq!(f.time_to_detect_ms, Some(7.0));
        assert!((f.during.error_percent - 3.0 * 100.0 / 100.0).abs() < 1e-9);
        let c = checks(&f, Some(1.0), Some(5.0));
        assert!(!c[0].pass, "0 failed GETs must fail: {c:?}");
        assert!(c[1].pass, "the shift happened: {c:?}");
        assert!(!c[2].pass, "3 % errors > 1 %: {c:?}");
        assert!(c[3].pass, "1 ms p99 ≤ 5 ms: {c:?}");
    }

    #[test]
    fn traffic_that_never_leaves_the_target_has_no_shift_and_fails_checks() {
        let s = steady(0, 3000, "east");
        let f = figures(
            &s,
            &east(),
            Moments {
                fail_us: Some(1_000_000),
                restore_us: Some(2_000_000),
                end_us: 3_000_000,
            },
        );
        assert_eq!(f.time_to_detect_ms, None);
        assert_eq!(f.time_to_shift_95_ms, None);
        // Traffic never left home, so the first bin after the restore is already home.
        assert_eq!(f.failback_ms, Some(250.0));
        let c = checks(&f, None, None);
        assert!(c[0].pass && !c[1].pass, "{c:?}");
    }

    #[test]
    fn a_drill_that_never_failed_the_target_has_only_a_before_phase() {
        let s = steady(0, 2000, "east");
        let f = figures(
            &s,
            &east(),
            Moments {
                fail_us: None,
                restore_us: None,
                end_us: 2_000_000,
            },
        );
        assert_eq!(f.before.requests, 200);
        assert_eq!(f.during.requests, 0);
        assert_eq!(f.after.requests, 0);
        assert_eq!(f.during.latency.p99_ms, None);
        assert_eq!(f.time_to_shift_95_ms, None);
        assert_eq!(f.failback_ms, None);
        let c = checks(&f, None, Some(100.0));
        assert!(!c[2].pass, "no answers cannot meet a p99 guard: {c:?}");
    }

    #[test]
    fn stalled_answers_count_when_they_arrive() {
        // Blackhole: requests sent in the first 2 s after the fail hang on the silent endpoint and
        // are answered elsewhere only at 3 s; later ones go elsewhere at once.
        let mut s = steady(0, 1000, "east");
        s.extend((1000..3000).step_by(10).map(|t| Sample {
            at_us: t * 1000,
            latency_us: (3000 - t) * 1000,
            outcome: Outcome::Answered(by("west")),
        }));
        s.extend(steady(3000, 4000, "west"));
        let f = figures(
            &s,
            &east(),
            Moments {
                fail_us: Some(1_000_000),
                restore_us: Some(4_000_000),
                end_us: 4_000_000,
            },
        );
        // By send time every request after the fail went west; by arrival nothing arrived for
        // 2 s. The shift counts from the first bin that received answers: [3000, 3250).
        assert_eq!(f.time_to_shift_95_ms, Some(2250.0));
        assert_eq!(f.time_to_detect_ms, Some(2000.0));
        assert_eq!(f.during.latency.max_ms, Some(2000.0));
        let b = bins(&s, 4_000_000);
        assert!(
            b[4..12].iter().all(|b| b.by_region.is_empty()),
            "the stall is visible"
        );
        assert_eq!(b[12].by_region.get("west"), Some(&(200 + 25)));
    }

    #[test]
    fn percentiles_use_the_nearest_rank_of_answered_requests() {
        // 100 answers of 1..=100 ms before the fail; failures do not count towards latency.
        let mut s: Vec<Sample> = (1..=100)
            .map(|i| Sample {
                at_us: i * 1000,
                latency_us: i * 1000,
                outcome: Outcome::Answered(by("east")),
            })
            .collect();
        s.push(Sample {
            at_us: 500,
            latency_us: 9_000_000,
            outcome: Outcome::Failed(FailKind::Timeout),
        });
        let f = figures(
            &s,
            &east(),
            Moments {
                fail_us: Some(1_000_000),
                restore_us: None,
                end_us: 1_000_000,
            },
        );
        assert_eq!(f.before.latency.count, 100);
        assert_eq!(f.before.latency.p50_ms, Some(50.0));
        assert_eq!(f.before.latency.p99_ms, Some(99.0));
        assert_eq!(f.before.latency.max_ms, Some(100.0));
    }

    #[test]
    fn bins_split_answers_by_region_and_failures() {
        let s = vec![
            ok(0, "east"),
            ok(100, "west"),
            failed(260, FailKind::Connect),
            // Sent at 480 ms, answered at 481 ms; a request sent at 249 ms and answered at 250 ms
            // is counted when it arrived.
            ok(480, "east"),
            ok(249, "west"),
            ok(900, "east"),
        ];
        let b = bins(&s, 600_000);
        // [500, 600) is partial: left out.
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].by_region.get("east"), Some(&1));
        assert_eq!(b[0].by_region.get("west"), Some(&1));
        assert_eq!((b[1].failed, b[1].by_region.get("east")), (1, Some(&1)));
        assert_eq!(b[1].by_region.get("west"), Some(&1));
        assert_eq!(b[1].start_ms, 250);
        assert_eq!(bins(&s, 750_000).len(), 3);
    }
}
