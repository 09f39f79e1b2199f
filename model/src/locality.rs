//! Locality: which endpoints a proxy prefers.
//!
//! A proxy knows its own (cluster, region, zone). Endpoints are ranked into tiers — same zone,
//! then the rest of the same region, then other regions (in the backend's failover order when one
//! is given, else alphabetically so every proxy agrees) — and the proxy sends traffic to the first
//! tier that has a usable endpoint. Health, ejection and retries live in the proxy; this module
//! only orders.

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

/// Groups endpoint indices into preference tiers, most preferred first. Endpoints that are not
/// ready are left out. Empty tiers are dropped.
pub fn tiers(
    endpoints: &[Endpoint],
    me: &Locality,
    policy: Option<&FailoverPolicy>,
) -> Vec<Vec<usize>> {
    let mut regions: Vec<&str> = Vec::new();
    if let Some(p) = policy {
        for r in &p.region_order {
            if r != &me.region && !regions.contains(&r.as_str()) {
                regions.push(r);
            }
        }
    }
    let mut others: Vec<&str> = endpoints
        .iter()
        .map(|e| e.region.as_str())
        .filter(|r| *r != me.region && !regions.contains(r))
        .collect();
    others.sort_unstable();
    others.dedup();
    regions.extend(others);

    let mut out: Vec<Vec<usize>> = vec![Vec::new(); 2 + regions.len()];
    for (i, e) in endpoints.iter().enumerate() {
        if !e.ready {
            continue;
        }
        let tier = if e.region == me.region {
            if !me.zone.is_empty() && e.zone == me.zone {
                0
            } else {
                1
            }
        } else {
            // Unwrap-free: every foreign region was collected above.
            2 + regions
                .iter()
                .position(|r| *r == e.region)
                .unwrap_or(regions.len() - 1)
        };
        out[tier].push(i);
    }
    out.retain(|t| !t.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ep(n: u8, region: &str, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
            port: 80,
            cluster: region.to_string(),
            region: region.into(),
            zone: zone.into(),
            ready,
        }
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
        let me = Locality {
            cluster: "east".into(),
            region: "us-east".into(),
            zone: "a".into(),
        };
        assert_eq!(
            tiers(&eps, &me, None),
            vec![vec![2], vec![1], vec![0], vec![3]]
        );
        let policy = FailoverPolicy {
            region_order: vec!["us-west".into(), "eu".into()],
        };
        assert_eq!(
            tiers(&eps, &me, Some(&policy)),
            vec![vec![2], vec![1], vec![3], vec![0]]
        );
    }

    #[test]
    fn not_ready_endpoints_are_never_ranked() {
        let eps = vec![ep(1, "r", "z", false)];
        let me = Locality {
            region: "r".into(),
            zone: "z".into(),
            ..Default::default()
        };
        assert!(tiers(&eps, &me, None).is_empty());
    }
}
