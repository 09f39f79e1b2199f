//! Endpoint choice for one request try: locality tiers, then passive ejection.
//!
//! 1. [`locality::tiers`] ranks the backend's ready endpoints by the proxy's locality (same zone,
//!    same region, then failover order).
//! 2. The first tier that has an endpoint that is neither ejected nor already tried by this
//!    request wins; inside it the choice is random (stateless, so a snapshot swap loses nothing).
//! 3. If every ready endpoint is ejected or tried, an untried ejected one is used anyway
//!    ("panic mode"): ejection is a hint, and refusing traffic would turn a partial failure into a
//!    total one.
//!
//! Ejection is passive and simple: a connect refusal, reset or timeout ejects the endpoint for
//! [`EJECTION_TIME`]. Active health checking and outlier policies come with the failover feature and
//! will live behind [`Ejections`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_model::locality::{self, Locality};
use meridian_model::snapshot::{Endpoint, FailoverPolicy};
use rand::Rng;

/// How long a failing endpoint is avoided.
pub const EJECTION_TIME: Duration = Duration::from_secs(5);

/// Endpoints currently avoided, with the time the ejection ends.
#[derive(Debug, Default)]
pub struct Ejections {
    until: Mutex<HashMap<SocketAddr, Instant>>,
    /// Entries in `until` (expired ones included): lets the request path skip the lock when
    /// nothing was ever ejected, the common case.
    entries: AtomicUsize,
}

impl Ejections {
    /// Avoids `addr` for [`EJECTION_TIME`] from now. Returns whether it was not ejected before.
    pub fn eject(&self, addr: SocketAddr) -> bool {
        self.eject_for(addr, EJECTION_TIME)
    }

    /// Avoids `addr` for `duration`.
    pub fn eject_for(&self, addr: SocketAddr, duration: Duration) -> bool {
        let now = Instant::now();
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the map small: drop expired entries whenever we write.
        map.retain(|_, until| *until > now);
        let fresh = map.insert(addr, now + duration).is_none();
        self.entries.store(map.len(), Ordering::Release);
        fresh
    }

    /// Whether `addr` is ejected right now.
    pub fn is_ejected(&self, addr: &SocketAddr) -> bool {
        if self.entries.load(Ordering::Acquire) == 0 {
            return false;
        }
        let map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.get(addr).is_some_and(|until| *until > Instant::now())
    }

    /// Number of endpoints ejected right now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        let map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|u| **u > now).count()
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The backend has no ready endpoint at all (503).
    NoneReady,
    /// Every ready endpoint was already tried by this request.
    AllTried,
}

/// Picks the endpoint for the next try.
pub fn choose(
    endpoints: &[Endpoint],
    me: &Locality,
    policy: Option<&FailoverPolicy>,
    ejections: &Ejections,
    tried: &[SocketAddr],
) -> Result<SocketAddr, NoEndpoint> {
    let tiers = locality::tiers(endpoints, me, policy);
    if tiers.is_empty() {
        return Err(NoEndpoint::NoneReady);
    }
    let addr = |i: usize| SocketAddr::new(endpoints[i].address, endpoints[i].port);
    let mut rng = rand::rng();
    for tier in &tiers {
        let usable: Vec<SocketAddr> = tier
            .iter()
            .map(|&i| addr(i))
            .filter(|a| !tried.contains(a) && !ejections.is_ejected(a))
            .collect();
        if !usable.is_empty() {
            return Ok(usable[rng.random_range(0..usable.len())]);
        }
    }
    // Panic mode: everything left is ejected; prefer the best-ranked untried one.
    tiers
        .iter()
        .flatten()
        .map(|&i| addr(i))
        .find(|a| !tried.contains(a))
        .ok_or(NoEndpoint::AllTried)
}

/// Number of distinct ready endpoints (bounds connect-failure failover).
pub fn ready_count(endpoints: &[Endpoint]) -> usize {
    endpoints.iter().filter(|e| e.ready).count()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ep(n: u8, region: &str, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
            port: 80,
            cluster: String::new(),
            region: region.into(),
            zone: zone.into(),
            ready,
        }
    }

    fn sa(n: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 80)
    }

    fn me() -> Locality {
        Locality {
            cluster: "c".into(),
            region: "r1".into(),
            zone: "z1".into(),
        }
    }

    #[test]
    fn same_zone_endpoint_is_preferred() {
        let eps = [ep(1, "r2", "x", true), ep(2, "r1", "z1", true)];
        let e = Ejections::default();
        for _ in 0..20 {
            assert_eq!(choose(&eps, &me(), None, &e, &[]).unwrap(), sa(2));
        }
    }

    #[test]
    fn ejected_endpoint_is_skipped_until_the_tier_is_exhausted() {
        let eps = [
            ep(1, "r1", "z1", true),
            ep(2, "r1", "z1", true),
            ep(3, "r2", "x", true),
        ];
        let e = Ejections::default();
        assert!(e.eject(sa(1)));
        for _ in 0..20 {
            assert_eq!(choose(&eps, &me(), None, &e, &[]).unwrap(), sa(2));
        }
        // Tier 0 fully ejected or tried: the next tier serves.
        assert_eq!(choose(&eps, &me(), None, &e, &[sa(2)]).unwrap(), sa(3));
        // Everything ejected or tried: panic mode picks the untried ejected endpoint.
        e.eject(sa(3));
        assert_eq!(
            choose(&eps, &me(), None, &e, &[sa(2), sa(3)]).unwrap(),
            sa(1)
        );
        assert_eq!(
            choose(&eps, &me(), None, &e, &[sa(1), sa(2), sa(3)]),
            Err(NoEndpoint::AllTried)
        );
    }

    #[test]
    fn no_ready_endpoint_is_reported() {
        let eps = [ep(1, "r1", "z1", false)];
        assert_eq!(
            choose(&eps, &me(), None, &Ejections::default(), &[]),
            Err(NoEndpoint::NoneReady)
        );
        assert_eq!(
            choose(&[], &me(), None, &Ejections::default(), &[]),
            Err(NoEndpoint::NoneReady)
        );
    }

    #[test]
    fn ejection_expires() {
        let e = Ejections::default();
        e.eject_for(sa(1), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!e.is_ejected(&sa(1)));
        assert_eq!(e.count(), 0);
    }
}
