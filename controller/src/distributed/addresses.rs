//! Per-Gateway addresses from a per-cluster pool, so several Gateways of one region can all
//! listen on port 80.
//!
//! ```text
//!  controller ── addresses(gw) ──► DistributedDataPlane ──► pool of gw's cluster?
//!                                        │ yes: a proxy serves gw → [the Gateway's own address]
//!                                        └ no:  the serving proxies' advertised addresses
//! ```
//!
//! A Gateway keeps its address for as long as the process runs. Allocation is first come,
//! lowest free address first; the controller translates Gateways in sorted order, so the same
//! set of Gateways gets the same addresses after a restart. An address the controller has not
//! asked about for [`AddressPools::RELEASE_AFTER`] (the Gateway is gone) goes back to the pool.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// An inclusive range of IPv4 addresses, e.g. `127.0.10.1-127.0.10.254` or `127.0.10.0/24`
/// (network and broadcast addresses of a /24 or larger are left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    first: u32,
    last: u32,
}

impl AddressRange {
    /// A range from its first to its last address.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Self, String> {
        let (first, last) = (u32::from(first), u32::from(last));
        if first > last {
            return Err(format!(
                "address range {}-{} is empty (first is after last)",
                Ipv4Addr::from(first),
                Ipv4Addr::from(last)
            ));
        }
        Ok(Self { first, last })
    }

    /// Number of addresses.
    pub(crate) fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// The `i`-th address, if inside.
    fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.len()).then(|| Ipv4Addr::from(self.first + i as u32))
    }
}

/// `first-last`, a form [`FromStr`](std::str::FromStr) reads back.
impl std::fmt::Display for AddressRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            Ipv4Addr::from(self.first),
            Ipv4Addr::from(self.last)
        )
    }
}

impl std::str::FromStr for AddressRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ip = |t: &str| {
            t.trim().parse::<Ipv4Addr>().map_err(|_| {
                format!("{t:?} is not an IPv4 address (expected A.B.C.D-A.B.C.E or A.B.C.D/N)")
            })
        };
        if let Some((a, b)) = s.split_once('-') {
            return Self::new(ip(a)?, ip(b)?);
        }
        if let Some((a, n)) = s.split_once('/') {
            let bits: u32 = n
                .trim()
                .parse()
                .ok()
                .filter(|b| *b <= 32)
                .ok_or_else(|| format!("{n:?} is not a prefix length 0-32"))?;
            let base = u32::from(ip(a)?);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            let (net, bcast) = (base & mask, base | !mask);
            // Leave network and broadcast addresses out where there is room for it.
            let (first, last) = if bits <= 30 {
                (net + 1, bcast - 1)
            } else {
                (net, bcast)
            };
            return Self::new(Ipv4Addr::from(first), Ipv4Addr::from(last));
        }
        let one = ip(s)?;
        Self::new(one, one)
    }
}

/// One pool per cluster, and which Gateway holds which address.
#[derive(Debug, Default)]
pub struct AddressPools {
    pools: BTreeMap<String, Pool>,
}

#[derive(Debug)]
struct Pool {
    range: AddressRange,
    /// Gateway (`namespace/name`) → (address, last asked).
    held: BTreeMap<String, (Ipv4Addr, Instant)>,
}

impl AddressPools {
    /// An address not asked about for this long is free again.
    pub const RELEASE_AFTER: Duration = Duration::from_secs(600);

    /// Pools from `cluster=range` pairs.
    pub fn new(pools: impl IntoIterator<Item = (String, AddressRange)>) -> Self {
        Self {
            pools: pools
                .into_iter()
                .map(|(c, range)| {
                    (
                        c,
                        Pool {
                            range,
                            held: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Gives `cluster` the pool `range` (`None`: takes its pool away). An unchanged range keeps
    /// the addresses its Gateways hold; a new one starts empty.
    pub fn set(&mut self, cluster: &str, range: Option<AddressRange>) {
        match range {
            None => {
                self.pools.remove(cluster);
            }
            Some(range) => {
                if self.pools.get(cluster).is_some_and(|p| p.range == range) {
                    return;
                }
                self.pools.insert(
                    cluster.to_string(),
                    Pool {
                        range,
                        held: BTreeMap::new(),
                    },
                );
            }
        }
    }

    /// Whether no cluster has a pool.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Whether `cluster` allocates per-Gateway addresses.
    pub fn has_pool(&self, cluster: &str) -> bool {
        self.pools.contains_key(cluster)
    }

    /// The address of Gateway `gateway` (`namespace/name`) in `cluster`: the one it holds, or the
    /// lowest free one. `None` without a pool for the cluster or when the pool is exhausted.
    pub fn address(&mut self, cluster: &str, gateway: &str, now: Instant) -> Option<IpAddr> {
        let pool = self.pools.get_mut(cluster)?;
        pool.held
            .retain(|g, (_, seen)| g == gateway || now.duration_since(*seen) < Self::RELEASE_AFTER);
        if let Some((ip, seen)) = pool.held.get_mut(gateway) {
            *seen = now;
            return Some(IpAddr::V4(*ip));
        }
        let taken: std::collections::BTreeSet<Ipv4Addr> =
            pool.held.values().map(|(ip, _)| *ip).collect();
        let free = (0..pool.range.len())
            .filter_map(|i| pool.range.nth(i))
            .find(|ip| !taken.contains(ip))?;
        pool.held.insert(gateway.to_string(), (free, now));
        Some(IpAddr::V4(free))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn range(s: &str) -> AddressRange {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_in_three_spellings() {
        assert_eq!(range("127.0.10.1-127.0.10.3").len(), 3);
        let cidr = range("127.0.10.0/24");
        assert_eq!(cidr.len(), 254);
        assert_eq!(cidr.nth(0), Some(Ipv4Addr::new(127, 0, 10, 1)));
        assert_eq!(cidr.nth(253), Some(Ipv4Addr::new(127, 0, 10, 254)));
        assert_eq!(range("10.0.0.7/32").len(), 1);
        assert_eq!(range("10.0.0.7").len(), 1);
        assert!(cidr.contains(Ipv4Addr::new(127, 0, 10, 1)));
        assert!(!cidr.contains(Ipv4Addr::new(127, 0, 10, 255)));
        assert!(!cidr.contains(Ipv4Addr::new(127, 0, 11, 1)));
        let err = "127.0.10.9-127.0.10.1".parse::<AddressRange>().unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = "127.0.10.0/33".parse::<AddressRange>().unwrap_err();
        assert!(err.contains("prefix length"), "{err}");
        let err = "localhost".parse::<AddressRange>().unwrap_err();
        assert!(err.contains("not an IPv4 address"), "{err}");
    }

    #[test]
    fn each_gateway_gets_and_keeps_its_own_address() {
        let now = Instant::now();
        let mut p = AddressPools::new([("east".to_string(), range("127.0.10.1-127.0.10.2"))]);
        let web = p.address("east", "demo/web", now).unwrap();
        let api = p.address("east", "demo/api", now).unwrap();
        assert_eq!(web.to_string(), "127.0.10.1");
        assert_eq!(api.to_string(), "127.0.10.2");
        assert_eq!(p.address("east", "demo/web", now), Some(web));
        assert_eq!(p.address("east", "demo/third", now), None, "exhausted");
        assert_eq!(p.address("west", "demo/web", now), None, "no pool");
        assert!(p.has_pool("east") && !p.has_pool("west"));
    }

    #[test]
    fn addresses_of_gone_gateways_are_reused_after_a_while() {
        let t0 = Instant::now();
        let mut p = AddressPools::new([("east".to_string(), range("127.0.10.1-127.0.10.2"))]);
        p.address("east", "demo/old", t0).unwrap();
        let keep = p.address("east", "demo/keep", t0).unwrap();
        let later = t0 + AddressPools::RELEASE_AFTER / 2;
        assert_eq!(p.address("east", "demo/keep", later), Some(keep));
        assert_eq!(p.address("east", "demo/new", later), None, "old still held");
        let much_later = t0 + AddressPools::RELEASE_AFTER + Duration::from_secs(1);
        assert_eq!(
            p.address("east", "demo/new", much_later)
                .unwrap()
                .to_string(),
            "127.0.10.1"
        );
        assert_eq!(p.address("east", "demo/keep", much_later), Some(keep));
    }
}
