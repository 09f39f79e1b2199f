//! Locality: which endpoints a proxy prefers, and which one it picks given their health.
//!
//! A proxy knows its own (cluster, region, zone). [`plan`] ranks a backend's ready endpoints into
//! tiers — same zone, then the rest of the same region, then other regions (in the policy's
//! failover order for the proxy's region, else nearest first by the connect round trip the
//! proxy measures, [`nearest_order`], else alphabetically so every proxy agrees) — after
//! dropping endpoints outside the policy's geo-fence. [`select`] then picks one endpoint for one
//! try, given each endpoint's state as the proxy sees it:
//!
//! 1. a weighted share (policy `weights`) may go to another region's tier while it is eligible;
//! 2. otherwise the first *eligible* tier wins: it has an untried, non-ejected endpoint and at
//!    least `minHealthyPercent` of its endpoints are not ejected (the spill rule). A tier whose
//!    endpoints are still slowly starting after failback is skipped with the probability of the
//!    part of the ramp not yet done, so a returning region gets its traffic back gradually;
//! 3. if no tier is eligible under the spill rule, the first tier with a usable endpoint serves;
//! 4. if every endpoint is ejected, the one ejected longest ago (least recently) is tried: a
//!    total outage of the health view must not become a total outage of traffic;
//! 5. nothing untried is left → `None`.
//!
//! There is no cap on how many endpoints may be ejected: a whole region can fail over.
//! Randomness comes in as a closure, so every rule is tested with fixed rolls.

use std::collections::BTreeMap;
use std::time::Duration;

use smallvec::SmallVec;

use crate::snapshot::{Endpoint, FailoverPolicy};

/// Where a proxy runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// Member cluster name.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
}

/// One preference tier: endpoint indices of one region (own zone and own region are separate
/// tiers of the same region).
///
/// Borrowed from the endpoints and the proxy's locality: a plan is made for every try, so it
/// copies no region name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier<'a> {
    /// Region of every endpoint of the tier.
    pub region: &'a str,
    /// Endpoint indices (inline up to eight).
    pub members: SmallVec<[usize; 8]>,
}

/// The ranking of one backend's endpoints for one proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Tiers, most preferred first; never empty tiers. Inline up to four (a plan is made for
    /// every try of every request: the usual one allocates nothing).
    pub tiers: SmallVec<[Tier<'a>; 4]>,
    /// `(tier index, percent)`: shares sent to another region's tier while it is eligible.
    pub weighted: Vec<(usize, u32)>,
    /// Spill rule (percent of a tier's endpoints that must not be ejected).
    pub min_healthy_percent: u32,
}

/// How one endpoint looks to the proxy for this try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Avail {
    /// Healthy; `ramp` in (0, 1] is the slow-start progress after failback (1 = full share).
    Usable {
        /// Slow-start progress.
        ramp: f64,
    },
    /// Ejected; `ejected_at` orders ejections (smaller = ejected longer ago).
    Ejected {
        /// Ejection order key.
        ejected_at: u64,
    },
    /// Already tried by this request (and not ejected).
    Tried,
    /// Ejected and already tried by this request.
    TriedEjected,
}

/// The failover order (regions after the proxy's own) for a proxy in `region`.
pub fn region_order<'a>(policy: Option<&'a FailoverPolicy>, region: &str) -> Vec<&'a str> {
    let Some(p) = policy else {
        return Vec::new();
    };
    let list = p
        .failover
        .iter()
        .find(|f| f.from == region)
        .map_or(&p.region_order, |f| &f.to);
    let mut out: Vec<&str> = Vec::new();
    for r in list {
        if r != region && !out.contains(&r.as_str()) {
            out.push(r);
        }
    }
    out
}

/// A region is moved ahead of one it follows in the nearest-first order only when its round
/// trip is shorter by more than this share of the other's ...
pub const REORDER_RATIO: f64 = 1.2;
/// ... and by more than this (both, so near-equal regions do not flap).
pub const REORDER_MIN: Duration = Duration::from_millis(2);

/// The regions of `rtt` (smoothed connect round-trip time per region, as this proxy measures
/// it), nearest first, starting from the `previous` order with hysteresis: a region moves ahead
/// of another only when it is clearly nearer (shorter by more than [`REORDER_RATIO`] *and*
/// [`REORDER_MIN`]). A region new to the order takes its alphabetical place among the known
/// ones it is near-equal to (or goes ahead of the first one it is clearly nearer than), so with
/// nothing clearly nearer every proxy keeps the alphabetical order, whenever it first measured
/// each region. Regions `rtt` does not have are left out.
pub fn nearest_order(previous: &[String], rtt: &BTreeMap<String, Duration>) -> Vec<String> {
    let mut order: Vec<String> = Vec::with_capacity(rtt.len());
    for r in previous {
        if rtt.contains_key(r) && !order.contains(r) {
            order.push(r.clone());
        }
    }
    let clearly_nearer = |a: &str, b: &str| match (rtt.get(a), rtt.get(b)) {
        (Some(a), Some(b)) => {
            b.as_secs_f64() > a.as_secs_f64() * REORDER_RATIO && *b > *a + REORDER_MIN
        }
        _ => false,
    };
    // A region new to the order (BTreeMap keys: alphabetically) takes its alphabetical place
    // among the known ones it is near-equal to, or goes ahead of the first one it is clearly
    // nearer than: a region that joins late must not queue behind a near-equal one only
    // because it was measured later, or proxies that saw the regions appear in a different
    // order would disagree.
    let new: Vec<String> = rtt.keys().filter(|r| !order.contains(r)).cloned().collect();
    for n in new {
        let at = order
            .iter()
            .position(|k| {
                clearly_nearer(&n, k) || (n.as_str() < k.as_str() && !clearly_nearer(k, &n))
            })
            .unwrap_or(order.len());
        order.insert(at, n);
    }
    // Bubble passes: a pair swaps only towards "clearly nearer first", and can never swap back
    // (that would need each to be clearly nearer than the other), so at most n(n-1)/2 swaps
    // happen and n passes end it.
    for _ in 0..=order.len() {
        let mut swapped = false;
        for i in 1..order.len() {
            if clearly_nearer(&order[i], &order[i - 1]) {
                order.swap(i - 1, i);
                swapped = true;
            }
        }
        if !swapped {
            break;
        }
    }
    order
}

/// Ranks `endpoints` for a proxy at `me`. Not-ready endpoints and endpoints outside the
/// geo-fence are left out. Other regions come in the policy's failover order; those it does
/// not name in `nearest` order (the proxy's measured nearest-first order, [`nearest_order`]),
/// and those `nearest` does not have either alphabetically after them. An empty `nearest` (no
/// measurement; `meridian explain`) gives the alphabetical order every proxy agrees on.
pub fn plan<'a>(
    endpoints: &'a [Endpoint],
    me: &'a Locality,
    policy: Option<&'a FailoverPolicy>,
    nearest: &[String],
) -> Plan<'a> {
    let fence: &[String] = policy.map_or(&[], |p| p.geo_fence.as_slice());
    let allowed = |e: &Endpoint| e.ready && (fence.is_empty() || fence.contains(&e.region));
    let mut regions = region_order(policy, &me.region);
    let mut others: Vec<&str> = endpoints
        .iter()
        .filter(|e| allowed(e))
        .map(|e| e.region.as_str())
        .filter(|r| *r != me.region && !regions.contains(r))
        .collect();
    others.sort_unstable();
    others.dedup();
    if !nearest.is_empty() {
        // Stable: regions without a measurement keep their alphabetical order, last.
        others.sort_by_key(|r| nearest.iter().position(|n| n == r).unwrap_or(usize::MAX));
    }
    regions.extend(others);

    let mut tiers: SmallVec<[Tier<'_>; 4]> = SmallVec::with_capacity(2 + regions.len());
    tiers.push(Tier {
        region: &me.region,
        members: SmallVec::new(),
    });
    tiers.push(Tier {
        region: &me.region,
        members: SmallVec::new(),
    });
    tiers.extend(regions.iter().map(|r| Tier {
        region: r,
        members: SmallVec::new(),
    }));
    for (i, e) in endpoints.iter().enumerate() {
        if !allowed(e) {
            continue;
        }
        let tier = if e.region == me.region {
            if !me.zone.is_empty() && e.zone == me.zone {
                0
            } else {
                1
            }
        } else {
            match regions.iter().position(|r| *r == e.region) {
                Some(p) => 2 + p,
                // Cannot happen: every allowed foreign region was collected above.
                None => continue,
            }
        };
        tiers[tier].members.push(i);
    }
    tiers.retain(|t| !t.members.is_empty());

    let mut weighted = Vec::new();
    if let Some(p) = policy {
        for w in p.weights.iter().filter(|w| w.from == me.region) {
            if w.region == me.region || w.percent == 0 {
                continue;
            }
            if let Some(t) = tiers.iter().position(|t| t.region == w.region.as_str()) {
                weighted.push((t, w.percent.min(100)));
            }
        }
    }
    Plan {
        tiers,
        weighted,
        min_healthy_percent: policy.map_or(0, |p| p.min_healthy_percent.min(100)),
    }
}

/// Endpoint indices per tier, most preferred first (the plan without weights).
pub fn tiers(
    endpoints: &[Endpoint],
    me: &Locality,
    policy: Option<&FailoverPolicy>,
) -> Vec<Vec<usize>> {
    plan(endpoints, me, policy, &[])
        .tiers
        .into_iter()
        .map(|t| t.members.into_vec())
        .collect()
}

struct TierView {
    usable: SmallVec<[(usize, f64); 8]>,
    eligible: bool,
}

/// Picks one endpoint index for one try (see the module docs for the rules). `roll` returns
/// uniform numbers in `[0, 1)`.
pub fn select(
    plan: &Plan<'_>,
    avail: impl Fn(usize) -> Avail,
    roll: &mut impl FnMut() -> f64,
) -> Option<usize> {
    let views: SmallVec<[TierView; 4]> = plan
        .tiers
        .iter()
        .map(|t| {
            let mut usable = SmallVec::new();
            let mut healthy = 0usize;
            for &i in &t.members {
                match avail(i) {
                    Avail::Usable { ramp } => {
                        healthy += 1;
                        usable.push((i, ramp.clamp(0.0, 1.0)));
                    }
                    Avail::Tried => healthy += 1,
                    Avail::Ejected { .. } | Avail::TriedEjected => {}
                }
            }
            let enough = healthy * 100 >= t.members.len() * plan.min_healthy_percent as usize;
            TierView {
                eligible: !usable.is_empty() && enough,
                usable,
            }
        })
        .collect();

    let pick_in = |v: &TierView, roll: &mut dyn FnMut() -> f64| {
        let i = ((roll() * v.usable.len() as f64) as usize).min(v.usable.len() - 1);
        v.usable[i].0
    };

    // 1. Weighted shares to other regions.
    if !plan.weighted.is_empty() {
        let r = roll() * 100.0;
        let mut acc = 0.0;
        for &(t, pct) in &plan.weighted {
            acc += f64::from(pct);
            if r < acc {
                if let Some(v) = views.get(t).filter(|v| v.eligible) {
                    return Some(pick_in(v, roll));
                }
                break;
            }
        }
    }
    // 2. First eligible tier, honouring slow start.
    let mut eligible = views.iter().filter(|v| v.eligible).peekable();
    // Bounded by the tiers.
    while let Some(v) = eligible.next() {
        let ramp = v.usable.iter().map(|(_, r)| r).sum::<f64>() / v.usable.len() as f64;
        let last = eligible.peek().is_none();
        if !last && ramp < 1.0 && roll() >= ramp {
            continue;
        }
        return Some(pick_in(v, roll));
    }
    // 3. Spill rule left nothing: any usable endpoint, best tier first.
    if let Some(v) = views.iter().find(|v| !v.usable.is_empty()) {
        return Some(pick_in(v, roll));
    }
    // 4. Everything ejected: the least recently ejected untried endpoint.
    plan.tiers
        .iter()
        .flat_map(|t| t.members.iter().copied())
        .filter_map(|i| match avail(i) {
            Avail::Ejected { ejected_at } => Some((ejected_at, i)),
            _ => None,
        })
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snapshot::{RegionFailover, RegionWeight};
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    fn ep(n: u8, region: &str, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
            port: 80,
            cluster: region.to_string(),
            region: region.into(),
            zone: zone.into(),
            ready,
            east_west: false,
        }
    }

    fn me(region: &str, zone: &str) -> Locality {
        Locality {
            cluster: "c".into(),
            region: region.into(),
            zone: zone.into(),
        }
    }

    /// Endpoints: 0,1 us-east (zones a, b); 2,3 us-west; 4,5 eu.
    fn world() -> Vec<Endpoint> {
        vec![
            ep(1, "us-east", "a", true),
            ep(2, "us-east", "b", true),
            ep(3, "us-west", "a", true),
            ep(4, "us-west", "b", true),
            ep(5, "eu", "a", true),
            ep(6, "eu", "b", true),
        ]
    }

    fn states(pairs: &[(usize, Avail)]) -> impl Fn(usize) -> Avail + use<> {
        let m: HashMap<usize, Avail> = pairs.iter().copied().collect();
        move |i| m.get(&i).copied().unwrap_or(Avail::Usable { ramp: 1.0 })
    }

    /// Fixed rolls, cycled.
    fn rolls(v: &[f64]) -> impl FnMut() -> f64 + use<> {
        let v = v.to_vec();
        let mut i = 0;
        move || {
            let r = v[i % v.len()];
            i += 1;
            r
        }
    }

    fn ejected(at: u64) -> Avail {
        Avail::Ejected { ejected_at: at }
    }

    #[test]
    fn same_zone_then_region_then_other_regions() {
        let eps = vec![
            ep(1, "eu", "eu-a", true),
            ep(2, "us-east", "b", true),
            ep(3, "us-east", "a", true),
            ep(4, "us-west", "a", true),
            ep(5, "us-east", "a", false),
        ];
        let me = me("us-east", "a");
        assert_eq!(
            tiers(&eps, &me, None),
            vec![vec![2], vec![1], vec![0], vec![3]]
        );
        let policy = FailoverPolicy {
            region_order: vec!["us-west".into(), "eu".into()],
            ..Default::default()
        };
        assert_eq!(
            tiers(&eps, &me, Some(&policy)),
            vec![vec![2], vec![1], vec![3], vec![0]]
        );
    }

    fn rtts(pairs: &[(&str, u64)]) -> BTreeMap<String, Duration> {
        pairs
            .iter()
            .map(|(r, us)| (r.to_string(), Duration::from_micros(*us)))
            .collect()
    }

    #[test]
    fn nearest_order_needs_a_clear_difference_and_keeps_its_order() {
        // Nothing measured, or nothing clearly nearer: alphabetical.
        assert!(nearest_order(&[], &BTreeMap::new()).is_empty());
        let close = rtts(&[("eu", 40_000), ("us-west", 39_000), ("ap", 41_000)]);
        assert_eq!(nearest_order(&[], &close), ["ap", "eu", "us-west"]);
        // 20 % shorter but not 2 ms: no move. 2 ms shorter but not 20 %: no move.
        let small = rtts(&[("eu", 5_000), ("us-west", 3_500)]);
        assert_eq!(nearest_order(&[], &small), ["eu", "us-west"]);
        let slight = rtts(&[("eu", 40_000), ("us-west", 37_000)]);
        assert_eq!(nearest_order(&[], &slight), ["eu", "us-west"]);
        // Clearly nearer (both): moves ahead, all the way.
        let clear = rtts(&[("ap", 90_000), ("eu", 60_000), ("us-west", 10_000)]);
        assert_eq!(nearest_order(&[], &clear), ["us-west", "eu", "ap"]);
        // Hysteresis: once ahead, a region stays ahead while the two are near-equal, in either
        // direction.
        let prev = nearest_order(&[], &clear);
        let near_equal = rtts(&[("ap", 90_000), ("eu", 11_000), ("us-west", 10_500)]);
        assert_eq!(nearest_order(&prev, &near_equal), ["us-west", "eu", "ap"]);
        let swapped = rtts(&[("ap", 90_000), ("eu", 10_500), ("us-west", 11_000)]);
        assert_eq!(nearest_order(&prev, &swapped), ["us-west", "eu", "ap"]);
        // ... and moves back only when the other becomes clearly nearer.
        let flipped = rtts(&[("ap", 90_000), ("eu", 10_000), ("us-west", 30_000)]);
        assert_eq!(nearest_order(&prev, &flipped), ["eu", "us-west", "ap"]);
        // A region without a measurement any more leaves the order; a new one goes ahead of
        // the regions it is clearly nearer than ...
        let changed = rtts(&[("eu", 11_000), ("ap", 9_000), ("sa", 500)]);
        assert_eq!(
            nearest_order(&["us-west".into(), "eu".into(), "ap".into()], &changed),
            ["sa", "eu", "ap"]
        );
        // ... and, near-equal, takes its alphabetical place: a region that joins later than
        // another does not queue behind it for that reason (every proxy agrees).
        let joined = rtts(&[("eu-north", 150), ("us-west", 140)]);
        assert_eq!(
            nearest_order(&["us-west".into()], &joined),
            ["eu-north", "us-west"]
        );
        // Clearly farther, it stays behind.
        let far = rtts(&[("eu-north", 40_000), ("us-west", 140)]);
        assert_eq!(
            nearest_order(&["us-west".into()], &far),
            ["us-west", "eu-north"]
        );
        // Among a known order that is not alphabetical, it goes before the first known
        // region it precedes alphabetically and is not clearly farther than.
        let mixed = rtts(&[("us-west", 1_000), ("eu", 30_000), ("ca", 29_000)]);
        assert_eq!(
            nearest_order(&["us-west".into(), "eu".into()], &mixed),
            ["us-west", "ca", "eu"]
        );
    }

    #[test]
    fn plan_orders_other_regions_nearest_first_unless_the_policy_names_them() {
        let eps = world();
        let me_p = me("us-east", "a");
        let regions = |p: &Plan<'_>| -> Vec<String> {
            p.tiers.iter().map(|t| t.region.to_string()).collect()
        };
        // No measurement: alphabetical (eu before us-west).
        let p = plan(&eps, &me_p, None, &[]);
        assert_eq!(regions(&p), ["us-east", "us-east", "eu", "us-west"]);
        // Measured nearest first; the own region's place in it does not matter.
        let nearest = [
            "us-east".to_string(),
            "us-west".to_string(),
            "eu".to_string(),
        ];
        let p = plan(&eps, &me_p, None, &nearest);
        assert_eq!(regions(&p), ["us-east", "us-east", "us-west", "eu"]);
        // A region without a measurement comes after the measured ones.
        let p = plan(&eps, &me_p, None, &["us-west".to_string()]);
        assert_eq!(regions(&p), ["us-east", "us-east", "us-west", "eu"]);
        let p = plan(&eps, &me_p, None, &["eu".to_string()]);
        assert_eq!(regions(&p), ["us-east", "us-east", "eu", "us-west"]);
        // A policy's explicit order wins over the measurement.
        let policy = FailoverPolicy {
            region_order: vec!["eu".into()],
            ..Default::default()
        };
        let p = plan(&eps, &me_p, Some(&policy), &nearest);
        assert_eq!(regions(&p), ["us-east", "us-east", "eu", "us-west"]);
    }

    #[test]
    fn not_ready_endpoints_are_never_ranked() {
        let eps = vec![ep(1, "r", "z", false)];
        assert!(tiers(&eps, &me("r", "z"), None).is_empty());
    }

    #[test]
    fn failover_order_is_per_source_region() {
        let policy = FailoverPolicy {
            region_order: vec!["us-west".into()],
            failover: vec![
                RegionFailover {
                    from: "us-east".into(),
                    to: vec!["eu".into(), "us-west".into()],
                },
                RegionFailover {
                    from: "eu".into(),
                    to: vec!["us-east".into()],
                },
            ],
            ..Default::default()
        };
        let eps = world();
        let regions = |region: &str| -> Vec<String> {
            let me = me(region, "a");
            plan(&eps, &me, Some(&policy), &[])
                .tiers
                .iter()
                .map(|t| t.region.to_string())
                .collect()
        };
        assert_eq!(regions("us-east"), ["us-east", "us-east", "eu", "us-west"]);
        assert_eq!(regions("eu"), ["eu", "eu", "us-east", "us-west"]);
        // No entry for us-west: the default order, then the rest alphabetically.
        assert_eq!(regions("us-west"), ["us-west", "us-west", "eu", "us-east"]);
    }

    #[test]
    fn geo_fence_drops_other_regions_and_leaves_nothing_when_the_fence_is_down() {
        let policy = FailoverPolicy {
            geo_fence: vec!["us-east".into(), "us-west".into()],
            ..Default::default()
        };
        let eps = world();
        let me_p = me("us-east", "a");
        let p = plan(&eps, &me_p, Some(&policy), &[]);
        assert_eq!(
            p.tiers
                .iter()
                .map(|t| t.members.to_vec())
                .collect::<Vec<_>>(),
            vec![vec![0], vec![1], vec![2, 3]]
        );
        // Every fenced endpoint ejected: the least recently ejected one is tried, never eu.
        let all_out = states(&[
            (0, ejected(5)),
            (1, ejected(3)),
            (2, ejected(4)),
            (3, ejected(9)),
        ]);
        assert_eq!(select(&p, &all_out, &mut rolls(&[0.0])), Some(1));
        // Everything tried: nothing, so the proxy answers 503 instead of leaving the fence.
        let tried = states(&[
            (0, Avail::TriedEjected),
            (1, Avail::TriedEjected),
            (2, Avail::Tried),
            (3, Avail::Tried),
        ]);
        assert_eq!(select(&p, &tried, &mut rolls(&[0.0])), None);
    }

    #[test]
    fn a_whole_region_ejected_falls_to_the_next_tier_not_panic_mode() {
        let eps = world();
        let me_p = me("us-east", "a");
        let p = plan(&eps, &me_p, None, &[]);
        // eu sorts before us-west alphabetically.
        let east_down = states(&[(0, ejected(1)), (1, ejected(2))]);
        for r in [0.0, 0.3, 0.99] {
            let got = select(&p, &east_down, &mut rolls(&[r])).unwrap();
            assert!(got == 4 || got == 5, "roll {r} picked {got}");
        }
        // Zone a ejected only: zone b of the same region.
        let zone_down = states(&[(0, ejected(1))]);
        assert_eq!(select(&p, &zone_down, &mut rolls(&[0.5])), Some(1));
        // Tried endpoints are skipped the same way.
        let tried = states(&[(0, Avail::Tried), (1, Avail::Tried)]);
        assert!(matches!(
            select(&p, &tried, &mut rolls(&[0.0])),
            Some(4 | 5)
        ));
    }

    #[test]
    fn spill_moves_traffic_when_too_few_endpoints_of_a_tier_are_healthy() {
        let eps = vec![
            ep(1, "us-east", "a", true),
            ep(2, "us-east", "a", true),
            ep(3, "us-east", "a", true),
            ep(4, "us-west", "a", true),
        ];
        let policy = FailoverPolicy {
            min_healthy_percent: 50,
            ..Default::default()
        };
        let me_p = me("us-east", "a");
        let p = plan(&eps, &me_p, Some(&policy), &[]);
        // 1 of 3 healthy = 33 % < 50 %: spill to us-west.
        let two_down = states(&[(0, ejected(1)), (1, ejected(2))]);
        assert_eq!(select(&p, &two_down, &mut rolls(&[0.0])), Some(3));
        // 2 of 3 healthy = 66 %: stay.
        let one_down = states(&[(0, ejected(1))]);
        assert!(matches!(
            select(&p, &one_down, &mut rolls(&[0.0, 0.9])),
            Some(1 | 2)
        ));
        // Without the rule the last healthy local endpoint keeps everything.
        let without = FailoverPolicy {
            min_healthy_percent: 0,
            ..policy.clone()
        };
        let me_p0 = me("us-east", "a");
        let p0 = plan(&eps, &me_p0, Some(&without), &[]);
        assert_eq!(select(&p0, &two_down, &mut rolls(&[0.0])), Some(2));
        // Spill target also down: the spilled tier's last healthy endpoint still serves.
        let west_down_too = states(&[(0, ejected(1)), (1, ejected(2)), (3, ejected(3))]);
        assert_eq!(select(&p, &west_down_too, &mut rolls(&[0.0])), Some(2));
    }

    #[test]
    fn weights_and_failover_work_together() {
        let policy = FailoverPolicy {
            failover: vec![RegionFailover {
                from: "us-east".into(),
                to: vec!["us-west".into(), "eu".into()],
            }],
            weights: vec![RegionWeight {
                from: "us-east".into(),
                region: "eu".into(),
                percent: 10,
            }],
            ..Default::default()
        };
        let eps = world();
        let me_p = me("us-east", "");
        let p = plan(&eps, &me_p, Some(&policy), &[]);
        // No zone: tiers are us-east, us-west, eu.
        assert_eq!(p.weighted, vec![(2, 10)]);
        let healthy = states(&[]);
        // Roll below 10 %: eu's share; above: the local tier.
        assert!(matches!(
            select(&p, &healthy, &mut rolls(&[0.05, 0.0])),
            Some(4)
        ));
        assert!(matches!(
            select(&p, &healthy, &mut rolls(&[0.5, 0.0])),
            Some(0)
        ));
        // us-east down: the 90 % follow the order to us-west, the 10 % still go to eu.
        let east_down = states(&[(0, ejected(1)), (1, ejected(2))]);
        assert!(matches!(
            select(&p, &east_down, &mut rolls(&[0.5, 0.0])),
            Some(2)
        ));
        assert!(matches!(
            select(&p, &east_down, &mut rolls(&[0.05, 0.0])),
            Some(4)
        ));
        // eu down: its share falls back to the order (us-east).
        let eu_down = states(&[(4, ejected(1)), (5, ejected(2))]);
        assert!(matches!(
            select(&p, &eu_down, &mut rolls(&[0.05, 0.0])),
            Some(0)
        ));
        // Weights of other source regions do not apply.
        let me_p_eu = me("eu", "");
        let p_eu = plan(&eps, &me_p_eu, Some(&policy), &[]);
        assert!(p_eu.weighted.is_empty());
    }

    #[test]
    fn slow_start_returns_traffic_gradually() {
        let eps = world();
        let me_p = me("us-east", "a");
        let p = plan(&eps, &me_p, None, &[]);
        // Zone a is back at 25 % of its ramp: rolls ≥ 0.25 skip it.
        let ramping = states(&[(0, Avail::Usable { ramp: 0.25 })]);
        assert_eq!(select(&p, &ramping, &mut rolls(&[0.1, 0.0])), Some(0));
        assert_eq!(select(&p, &ramping, &mut rolls(&[0.6, 0.0])), Some(1));
        // The last eligible tier is never skipped.
        let me_only = me("us-east", "a");
        let only = plan(&eps[..1], &me_only, None, &[]);
        assert_eq!(select(&only, &ramping, &mut rolls(&[0.99])), Some(0));
    }

    #[test]
    fn nothing_untried_left_is_none() {
        let eps = world();
        let me_p = me("us-east", "a");
        let p = plan(&eps, &me_p, None, &[]);
        let all = states(&(0..6).map(|i| (i, Avail::Tried)).collect::<Vec<_>>());
        assert_eq!(select(&p, &all, &mut rolls(&[0.0])), None);
        assert_eq!(select(&Plan::default(), &all, &mut rolls(&[0.0])), None);
    }

    #[test]
    fn policies_of_older_snapshots_still_parse_and_new_fields_round_trip() {
        let old: FailoverPolicy = serde_json::from_str(r#"{"regionOrder":["eu"]}"#).unwrap();
        assert_eq!(old.region_order, ["eu"]);
        assert_eq!(old.min_healthy_percent, 0);
        assert!(old.health_check.is_none());
        let text = r#"{"failover":[{"from":"us-east","to":["us-west"]}],
            "weights":[{"from":"us-east","region":"us-west","percent":10}],
            "minHealthyPercent":50,"geoFence":["us-east","us-west"],
            "healthCheck":{"httpPath":"/healthz","intervalMs":1000},
            "outlierDetection":{"consecutive5xx":5},
            "retry":{"attempts":2,"budgetPercent":20},
            "failback":{"hysteresisMs":3000,"slowStartMs":10000}}"#;
        let p: FailoverPolicy = serde_json::from_str(text).unwrap();
        assert_eq!(p.outlier_detection.as_ref().unwrap().consecutive_5xx, 5);
        assert_eq!(p.failback.as_ref().unwrap().slow_start_ms, 10_000);
        let back: FailoverPolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<FailoverPolicy>(r#"{"bogus":1}"#).is_err());
    }
}
