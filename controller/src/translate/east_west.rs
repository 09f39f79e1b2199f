//! Multi-network member clusters: east-west endpoints and east-west backends.
//!
//! Every member cluster has a network name ([`ClusterState::network`](crate::world::ClusterState),
//! `""` by default). Pod IPs of one network are not routable from another, so once the snapshots
//! are built (each backend carrying the endpoints of every cluster it resolves to), each one is
//! rewritten for the network of the cluster it is for:
//!
//! ```text
//! snapshot of cluster A (network NA), backend X:
//!   endpoint of A, or of any cluster on NA ──────► kept as it is
//!   endpoints of cluster B on NB ≠ NA ─┬─ B has proxies with an east-west listener:
//!                                      │    one endpoint per listener (east_west: true,
//!                                      │    address:port = the listener, cluster/region = B's,
//!                                      │    zone = that proxy's, ready = some B endpoint ready)
//!                                      │    and X is *wanted* on NB
//!                                      └─ none: left out (unreachable), reported in
//!                                           Output::east_west_missing (A, X, B); X still wanted on NB
//! snapshot of every cluster C on NB:
//!   east_west += X { endpoints of X on NB (direct ones only), protocol, failover }
//! ```
//!
//! One endpoint per remote proxy keeps outlier ejection per proxy: losing one of B's proxies does
//! not take all of B away. Locality stays truthful (cluster/region are where the traffic ends
//! up), so tiers, region failover, geo-fences and drill drains work on east-west endpoints as on
//! direct ones. The receiving proxy picks among the X endpoints of its own network with its own
//! locality and X's failover policy: when several other-network snapshots carry X with different
//! policies (route-level policies, or policies that differ per cluster), the first one found
//! wins, in cluster-name order then snapshot order, a backend with a policy before one without.
//!
//! With every cluster on one network nothing here runs: no substitution, no east-west section.
//! [`refresh`] is the same rewrite for the endpoint-only path, for one backend name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use meridian_model::patch::Touched;
use meridian_model::snapshot::{
    BackendProtocol, BackendTarget, EastWestBackend, Endpoint, FailoverPolicy, Snapshot,
};

use crate::world::{ClusterName, World};

/// East-west listeners per member cluster: `(ip:port, zone of the proxy)` of every connected
/// proxy that has one (from [`DataPlane::east_west`](crate::DataPlane::east_west)).
pub type EastWestListeners = BTreeMap<ClusterName, Vec<(SocketAddr, String)>>;

/// Per snapshot cluster: the backends (by name) whose endpoints in other-network clusters were
/// left out because those clusters have no proxy with an east-west listener, with those clusters.
pub type MissingRemote = BTreeMap<ClusterName, BTreeMap<String, BTreeSet<ClusterName>>>;

/// One backend's endpoint list as seen from one network.
struct Localized {
    endpoints: Vec<Endpoint>,
    /// Networks other than the viewer's that own some of the original endpoints.
    remote_networks: BTreeSet<String>,
    /// Other-network clusters whose endpoints were left out (no east-west listener).
    missing: BTreeSet<ClusterName>,
}

/// Rewrites `eps` for a proxy on `network`: same-network endpoints stay, each other-network
/// cluster's endpoints become one east-west endpoint per listener of that cluster's proxies (at
/// the position of the cluster's first endpoint), or nothing when it has none.
fn localize(
    world: &World,
    listeners: &EastWestListeners,
    network: &str,
    eps: &[Endpoint],
) -> Localized {
    let mut out = Localized {
        endpoints: Vec::with_capacity(eps.len()),
        remote_networks: BTreeSet::new(),
        missing: BTreeSet::new(),
    };
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for e in eps {
        // Already east-west (never produced by resolution), or a cluster the world does not
        // know: nothing to translate, keep it.
        let Some(net) = world.network(&e.cluster).filter(|_| !e.east_west) else {
            out.endpoints.push(e.clone());
            continue;
        };
        if net == network {
            out.endpoints.push(e.clone());
            continue;
        }
        out.remote_networks.insert(net.to_string());
        if !done.insert(e.cluster.as_str()) {
            continue;
        }
        let proxies = listeners.get(&e.cluster).map_or(&[][..], Vec::as_slice);
        if proxies.is_empty() {
            out.missing.insert(e.cluster.clone());
            continue;
        }
        let ready = eps.iter().any(|o| o.cluster == e.cluster && o.ready);
        out.endpoints
            .extend(proxies.iter().map(|(addr, zone)| Endpoint {
                address: addr.ip(),
                port: addr.port(),
                cluster: e.cluster.clone(),
                region: e.region.clone(),
                zone: zone.clone(),
                ready,
                east_west: true,
            }));
    }
    out
}

/// What a network's proxies must serve for one backend name.
struct Wanted {
    protocol: BackendProtocol,
    /// The backend's endpoints on that network, by (cluster, address, port): the order
    /// resolution produces.
    endpoints: BTreeMap<(ClusterName, IpAddr, u16), Endpoint>,
    failover: Option<FailoverPolicy>,
}

/// Rewrites every snapshot for its cluster's network and fills the east-west sections (see the
/// module docs). Returns what was left out for lack of east-west listeners. Does nothing when
/// every cluster is on one network.
pub(crate) fn apply(
    world: &World,
    listeners: &EastWestListeners,
    snapshots: &mut BTreeMap<ClusterName, Snapshot>,
) -> MissingRemote {
    let mut missing = MissingRemote::new();
    if !world.multi_network() {
        return missing;
    }
    // (network, backend name) → what that network serves.
    let mut wanted: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    for (cluster, snapshot) in snapshots.iter_mut() {
        let own = world.network(cluster).unwrap_or_default();
        snapshot.for_each_backend_mut(|b| {
            let BackendTarget::Endpoints {
                protocol,
                endpoints,
                failover,
            } = &mut b.target
            else {
                return;
            };
            let l = localize(world, listeners, own, endpoints);
            if l.remote_networks.is_empty() {
                return;
            }
            for net in &l.remote_networks {
                let w = wanted
                    .entry((net.clone(), b.name.clone()))
                    .or_insert_with(|| Wanted {
                        protocol: *protocol,
                        endpoints: BTreeMap::new(),
                        failover: None,
                    });
                for e in endpoints.iter() {
                    if !e.east_west && world.network(&e.cluster) == Some(net.as_str()) {
                        w.endpoints
                            .entry((e.cluster.clone(), e.address, e.port))
                            .or_insert_with(|| e.clone());
                    }
                }
                if w.failover.is_none() {
                    w.failover.clone_from(failover);
                }
            }
            if !l.missing.is_empty() {
                missing
                    .entry(cluster.clone())
                    .or_default()
                    .entry(b.name.clone())
                    .or_default()
                    .extend(l.missing);
            }
            *endpoints = l.endpoints;
        });
    }
    for (cluster, snapshot) in snapshots.iter_mut() {
        let own = world.network(cluster).unwrap_or_default();
        snapshot.east_west = wanted
            .range((own.to_string(), String::new())..)
            .take_while(|((net, _), _)| net == own)
            .map(|((_, name), w)| EastWestBackend {
                name: name.clone(),
                protocol: w.protocol,
                endpoints: w.endpoints.values().cloned().collect(),
                failover: w.failover.clone().map(Box::new),
            })
            .collect();
    }
    missing
}

/// The endpoint-only path for one backend name: `raw` are its new endpoints as resolution
/// produces them (every cluster's, direct). Patches every snapshot's copies of backend `name`
/// for its network, the `name` entry of every east-west section, and `missing`; returns the
/// clusters whose snapshot changed, with the Gateways each change touched (with several
/// networks: everything). Gives what [`apply`] gives after a full translation.
pub(crate) fn refresh(
    world: &World,
    listeners: &EastWestListeners,
    snapshots: &mut BTreeMap<ClusterName, Snapshot>,
    name: &str,
    protocol: BackendProtocol,
    raw: &[Endpoint],
    missing: &mut MissingRemote,
) -> BTreeMap<ClusterName, Touched> {
    if !world.multi_network() {
        let mut changed = BTreeMap::new();
        for (c, snapshot) in snapshots.iter_mut() {
            let touched = super::refresh::set_endpoints(snapshot, name, protocol, raw);
            if !touched.is_nothing() {
                changed.insert(c.clone(), touched);
            }
        }
        return changed;
    }
    let mut changed = BTreeSet::new();
    // Network → the policy its section entry carries (first found, see the module docs);
    // present when some other-network snapshot carrying `name` wants it.
    let mut wanted: BTreeMap<String, Option<FailoverPolicy>> = BTreeMap::new();
    for (cluster, snapshot) in snapshots.iter_mut() {
        let own = world.network(cluster).unwrap_or_default();
        let l = localize(world, listeners, own, raw);
        let mut carries = false;
        let mut policy: Option<FailoverPolicy> = None;
        snapshot.for_each_backend(|b| {
            if b.name != name {
                return;
            }
            if let BackendTarget::Endpoints { failover, .. } = &b.target {
                carries = true;
                if policy.is_none() {
                    policy.clone_from(failover);
                }
            }
        });
        if !carries {
            continue;
        }
        if snapshot.set_endpoints(|n| (n == name).then_some((protocol, l.endpoints.as_slice()))) {
            changed.insert(cluster.clone());
        }
        for net in &l.remote_networks {
            let p = wanted.entry(net.clone()).or_default();
            if p.is_none() {
                p.clone_from(&policy);
            }
        }
        note_missing(missing, cluster, name, l.missing);
    }
    changed.extend(patch_sections(
        world, snapshots, name, protocol, raw, &wanted,
    ));
    changed
        .into_iter()
        .map(|c| (c, Touched::everything()))
        .collect()
}

/// Records what backend `name` of `cluster`'s snapshot lacks (nothing: forgets it).
fn note_missing(
    missing: &mut MissingRemote,
    cluster: &ClusterName,
    name: &str,
    lacks: BTreeSet<ClusterName>,
) {
    let entry = missing.entry(cluster.clone()).or_default();
    if lacks.is_empty() {
        entry.remove(name);
    } else {
        entry.insert(name.to_string(), lacks);
    }
    if entry.is_empty() {
        missing.remove(cluster);
    }
}

/// Sets the `name` entry of every snapshot's east-west section: present (with the endpoints of
/// the snapshot's own network and the policy found) where `wanted` names its network, absent
/// elsewhere. Returns the clusters whose section changed.
fn patch_sections(
    world: &World,
    snapshots: &mut BTreeMap<ClusterName, Snapshot>,
    name: &str,
    protocol: BackendProtocol,
    raw: &[Endpoint],
    wanted: &BTreeMap<String, Option<FailoverPolicy>>,
) -> BTreeSet<ClusterName> {
    let mut changed = BTreeSet::new();
    for (cluster, snapshot) in snapshots.iter_mut() {
        let own = world.network(cluster).unwrap_or_default();
        let desired = wanted.get(own).map(|failover| EastWestBackend {
            name: name.to_string(),
            protocol,
            endpoints: raw
                .iter()
                .filter(|e| !e.east_west && world.network(&e.cluster) == Some(own))
                .cloned()
                .collect(),
            failover: failover.clone().map(Box::new),
        });
        let at = snapshot
            .east_west
            .binary_search_by(|b| b.name.as_str().cmp(name));
        let differs = match (at, &desired) {
            (Ok(i), Some(d)) => snapshot.east_west[i] != *d,
            (Ok(_), None) | (Err(_), Some(_)) => true,
            (Err(_), None) => false,
        };
        if !differs {
            continue;
        }
        match (at, desired) {
            (Ok(i), Some(d)) => snapshot.east_west[i] = d,
            (Ok(i), None) => {
                snapshot.east_west.remove(i);
            }
            (Err(i), Some(d)) => snapshot.east_west.insert(i, d),
            (Err(_), None) => {}
        }
        changed.insert(cluster.clone());
    }
    changed
}
