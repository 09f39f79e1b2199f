//! Which addresses the proxies of a cluster may advertise: the cluster's Gateway address pool.
//!
//! ```text
//! allows(cluster, address)
//!   pool = the member's run-time pool (its Secret's meridian.dev/gateway-addresses)
//!          else the --gateway-addresses pool of a --cluster member
//!   no pool    ─► any address (IP or host name): nothing says which ones are the cluster's
//!   pool       ─► an IPv4 address inside it; anything else (outside, IPv6, a host name) refused
//! ```
//!
//! With a pool, the pool is where the cluster's Gateways get their addresses, so it is also
//! what a proxy of that cluster may claim: a compromised proxy cannot make another cluster's
//! Gateway (or `0.0.0.0`, which the server refuses before asking) its address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use meridian_distribution::server::AddressPolicy;

use super::MeshMembers;
use crate::distributed::addresses::AddressRange;

/// [`AddressPolicy`] over the clusters' Gateway address pools.
#[derive(Clone, Debug)]
pub struct PoolPolicy {
    /// `--gateway-addresses` pools (of `--cluster` members), fixed at start.
    fixed: BTreeMap<String, AddressRange>,
    /// Members that joined at run time may bring a pool.
    members: MeshMembers,
}

impl PoolPolicy {
    /// The policy over `fixed` pools and the run-time pools of `members`.
    pub fn new(fixed: BTreeMap<String, AddressRange>, members: MeshMembers) -> Self {
        Self { fixed, members }
    }

    /// The pool of `cluster`, if any.
    fn pool(&self, cluster: &str) -> Option<AddressRange> {
        self.members
            .get(cluster)
            .and_then(|m| m.pool)
            .or_else(|| self.fixed.get(cluster).copied())
    }
}

/// Whether `address` may be advertised by a cluster with `pool` (pure).
pub(crate) fn allowed_by_pool(pool: Option<AddressRange>, address: &str) -> bool {
    let Some(pool) = pool else {
        return true;
    };
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => pool.contains(ip),
        // Pools are IPv4 ranges; a host name could resolve to anything.
        Ok(IpAddr::V6(_)) | Err(_) => false,
    }
}

impl AddressPolicy for PoolPolicy {
    fn allows(&self, cluster: &str, address: &str) -> bool {
        allowed_by_pool(self.pool(cluster), address)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::controller::{MemberCluster, MemberDirectory, MemberEntry};
    use tokio::sync::watch;

    fn range(s: &str) -> AddressRange {
        s.parse().unwrap()
    }

    #[test]
    fn inside_the_pool_only_and_no_host_names_with_a_pool() {
        let pool = Some(range("10.0.10.0/24"));
        assert!(allowed_by_pool(pool, "10.0.10.1"));
        assert!(allowed_by_pool(pool, "10.0.10.254"));
        assert!(
            !allowed_by_pool(pool, "10.0.10.0"),
            "network address left out"
        );
        assert!(!allowed_by_pool(pool, "10.0.11.1"));
        assert!(!allowed_by_pool(pool, "0.0.0.0"));
        assert!(!allowed_by_pool(pool, "::1"));
        assert!(!allowed_by_pool(pool, "gw.example.com"));
        assert!(!allowed_by_pool(pool, ""));
    }

    #[test]
    fn without_a_pool_anything() {
        assert!(allowed_by_pool(None, "203.0.113.7"));
        assert!(allowed_by_pool(None, "2001:db8::1"));
        assert!(allowed_by_pool(None, "lb.east.example.com"));
    }

    /// A client that never connects (the directory only needs one to exist).
    fn idle_client() -> kube::Client {
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        kube::Client::try_from(cfg).unwrap()
    }

    #[tokio::test]
    async fn run_time_pools_come_from_the_member_directory() {
        let fixed = BTreeMap::from([("east".to_string(), range("10.0.10.1-10.0.10.9"))]);
        let (tx, rx) = watch::channel(MemberDirectory::new());
        let policy = PoolPolicy::new(fixed, MeshMembers::new(rx));
        assert!(policy.allows("east", "10.0.10.5"));
        assert!(!policy.allows("east", "10.0.20.5"));
        // A cluster nobody gave a pool: anything.
        assert!(policy.allows("west", "10.0.20.5"));

        let west = MemberCluster::new("west", "us-west", vec![], idle_client());
        tx.send_modify(|d| {
            d.insert(
                "west".into(),
                MemberEntry {
                    cluster: west.clone(),
                    pool: Some(range("10.0.20.0/30")),
                },
            );
        });
        assert!(policy.allows("west", "10.0.20.1"));
        assert!(!policy.allows("west", "10.0.20.5"));
        assert!(!policy.allows("west", "west.example.com"));
        // Its pool taken away (the Secret lost its annotation): anything again.
        tx.send_modify(|d| {
            d.insert(
                "west".into(),
                MemberEntry {
                    cluster: west,
                    pool: None,
                },
            );
        });
        assert!(policy.allows("west", "west.example.com"));
    }
}
