//! The seam between the controller and whatever serves its snapshots to proxies.
//!
//! ```text
//!  reconcile loop ── publish(cluster, snapshot, since) ──► DataPlane ──► proxies (distribution server)
//!        ▲                                             │
//!        └── changes() ticks ◄── acks / addresses / ──┘
//!            proxies with east-west listeners come and go
//!            then programmed(gw), addresses(gw), east_west(cluster) feed the next translation
//! ```
//!
//! [`DistributedDataPlane`](crate::distributed::DistributedDataPlane) implements this trait over
//! the distribution server (crate `meridian-distribution`). Without one, [`StaticDataPlane`]
//! stands in: a fixed address list for every Gateway, every
//! published snapshot counted as applied at once, and every snapshot kept for inspection. It
//! reports the truth about what it is — nothing is actually served — so it is meant for tests and
//! for running the controller without proxies (`--static-address`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use meridian_model::Snapshot;
use meridian_model::patch::Since;
use meridian_model::traffic::GatewayTraffic;
use tokio::sync::watch;

use crate::translate::{ClusterGatewayRef, ProgrammedState};

/// Where snapshots go and where `Programmed` and Gateway addresses come from.
///
/// Implementations must not block: the reconcile loop calls these methods inline.
pub trait DataPlane: Send + Sync + 'static {
    /// Hands the latest snapshot of a member cluster's Gateways to the proxies serving it. Called
    /// only when the content changed; `snapshot.generation` increases with every call for the
    /// same cluster. `since`: the snapshot of the previous call for the cluster and the
    /// Gateways that differ from it (the snapshots share their other routes), so the data
    /// plane can find the change without comparing everything; `None` when there was none.
    fn publish(&self, cluster: &str, snapshot: Arc<Snapshot>, since: Option<Since<'_>>);
    /// What the proxies report for a Gateway (drives `Programmed`).
    /// [`ProgrammedState::Unknown`] while the data plane cannot tell (after a restart, before the
    /// proxies reconnect): the Gateway then keeps the `Programmed` condition and addresses its
    /// status has. An implementation returning it must bound that time and tick
    /// [`DataPlane::changes`] when it ends, so the truth gets written.
    fn programmed(&self, gw: &ClusterGatewayRef) -> ProgrammedState;
    /// Addresses the Gateway is served on (the first binds its listeners); empty means none
    /// assigned (`Programmed=False/AddressNotAssigned`).
    fn addresses(&self, gw: &ClusterGatewayRef) -> Vec<IpAddr>;
    /// Ticks whenever what [`DataPlane::programmed`] or [`DataPlane::addresses`] return may have
    /// changed; the controller then translates again.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Cumulative traffic counters of a Gateway summed over every proxy serving it (drill guards
    /// and timelines); `None` when the data plane reports none.
    fn traffic(&self, _gw: &ClusterGatewayRef) -> Option<meridian_model::traffic::GatewayTraffic> {
        None
    }
    /// East-west listeners (`ip:port`, with the zone of the proxy) of the connected proxies of
    /// member cluster `cluster`, where proxies of other networks reach its backends; empty when
    /// none has one (then, with clusters on several networks, the cluster's endpoints are
    /// unreachable from the other networks). A proxy with such a listener connecting or leaving
    /// must tick [`DataPlane::changes`].
    fn east_west(&self, _cluster: &str) -> Vec<(SocketAddr, String)> {
        Vec::new()
    }
    /// The proxies the data plane knows (connected, or recently gone), with what they
    /// acknowledged (`meridian status`); empty when it has none to report.
    fn proxies(&self) -> Vec<crate::inspect::ProxyView> {
        Vec::new()
    }
    /// A member cluster joined while the controller runs (or reconnected with a new
    /// configuration), with the range its Gateways get their addresses from (`None`: the
    /// proxies' advertised addresses).
    fn cluster_added(&self, _cluster: &str, _pool: Option<crate::AddressRange>) {}
    /// A member cluster left: nothing more is published for it (its proxies keep serving
    /// what they have) and its address pool is released.
    fn cluster_removed(&self, _cluster: &str) {}
    /// The data plane's own metrics, served on the controller's `/metrics` next to the
    /// controller's (`None`: it has none).
    fn metrics_registry(&self) -> Option<prometheus::Registry> {
        None
    }
}

/// A [`DataPlane`] without proxies: fixed addresses, instant "acknowledgement", and a record of
/// every published snapshot.
pub struct StaticDataPlane {
    inner: Mutex<StaticInner>,
    changes: watch::Sender<u64>,
    published: watch::Sender<u64>,
}

#[derive(Default)]
struct StaticInner {
    addresses: Vec<IpAddr>,
    overrides: BTreeMap<ClusterGatewayRef, ProgrammedState>,
    snapshots: BTreeMap<String, Arc<Snapshot>>,
    publish_counts: BTreeMap<String, u64>,
    /// Per cluster: the generation "proxies" stay at while acknowledgements are held.
    held_acks: BTreeMap<String, u64>,
    traffic: BTreeMap<ClusterGatewayRef, GatewayTraffic>,
    east_west: BTreeMap<String, Vec<(SocketAddr, String)>>,
}

impl StaticDataPlane {
    /// Every Gateway gets `addresses` and is `Programmed` as soon as a snapshot is published.
    pub fn new(addresses: Vec<IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(StaticInner {
                addresses,
                ..StaticInner::default()
            }),
            changes: watch::channel(0).0,
            published: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, StaticInner> {
        // A poisoned lock only means a panic elsewhere while holding plain data; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest snapshot published for a cluster.
    pub fn snapshot(&self, cluster: &str) -> Option<Snapshot> {
        self.lock()
            .snapshots
            .get(cluster)
            .map(|s| Snapshot::clone(s))
    }

    /// How many snapshots were published for a cluster.
    pub fn publish_count(&self, cluster: &str) -> u64 {
        self.lock()
            .publish_counts
            .get(cluster)
            .copied()
            .unwrap_or(0)
    }

    /// Ticks on every publish (to wait for a snapshot without polling blindly).
    pub fn subscribe_published(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Replaces the address list (ticks [`DataPlane::changes`]).
    pub fn set_addresses(&self, addresses: Vec<IpAddr>) {
        self.lock().addresses = addresses;
        self.changes.send_modify(|n| *n += 1);
    }

    /// Sets the east-west listeners (`ip:port`, zone) reported for a cluster's proxies; empty
    /// removes them (ticks [`DataPlane::changes`]).
    pub fn set_east_west(&self, cluster: &str, listeners: Vec<(SocketAddr, String)>) {
        {
            let mut inner = self.lock();
            if listeners.is_empty() {
                inner.east_west.remove(cluster);
            } else {
                inner.east_west.insert(cluster.to_string(), listeners);
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Reports `state` for one Gateway instead of "applied" (ticks [`DataPlane::changes`]);
    /// `None` removes the override.
    pub fn set_programmed(&self, gw: ClusterGatewayRef, state: Option<ProgrammedState>) {
        {
            let mut inner = self.lock();
            match state {
                Some(s) => inner.overrides.insert(gw, s),
                None => inner.overrides.remove(&gw),
            };
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

impl StaticDataPlane {
    /// Test hook: while held, a cluster's Gateways stay `Applied` at the generation published
    /// when the hold began, as if its proxies stopped acknowledging; releasing acknowledges the
    /// latest (ticks [`DataPlane::changes`]).
    pub fn hold_acks(&self, cluster: &str, hold: bool) {
        {
            let mut inner = self.lock();
            if hold {
                let generation = inner.snapshots.get(cluster).map_or(0, |s| s.generation);
                inner.held_acks.insert(cluster.to_string(), generation);
            } else {
                inner.held_acks.remove(cluster);
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Test hook: changes a Gateway's cumulative traffic counters (what proxies would report),
    /// e.g. `dp.add_traffic(&gw, |t| t.record(Some("us-west"), None, 800))`.
    pub fn add_traffic(&self, gw: &ClusterGatewayRef, f: impl FnOnce(&mut GatewayTraffic)) {
        f(self.lock().traffic.entry(gw.clone()).or_default());
    }
}

impl DataPlane for StaticDataPlane {
    fn publish(&self, cluster: &str, snapshot: Arc<Snapshot>, _since: Option<Since<'_>>) {
        {
            let mut inner = self.lock();
            inner.snapshots.insert(cluster.to_string(), snapshot);
            *inner.publish_counts.entry(cluster.to_string()).or_default() += 1;
        }
        self.published.send_modify(|n| *n += 1);
    }

    fn programmed(&self, gw: &ClusterGatewayRef) -> ProgrammedState {
        let inner = self.lock();
        if let Some(state) = inner.overrides.get(gw) {
            return state.clone();
        }
        if let Some(held) = inner.held_acks.get(&gw.cluster) {
            return ProgrammedState::Applied(*held);
        }
        let generation = inner.snapshots.get(&gw.cluster).map_or(0, |s| s.generation);
        ProgrammedState::Applied(generation)
    }

    fn traffic(&self, gw: &ClusterGatewayRef) -> Option<GatewayTraffic> {
        self.lock().traffic.get(gw).cloned()
    }

    fn addresses(&self, _gw: &ClusterGatewayRef) -> Vec<IpAddr> {
        self.lock().addresses.clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn east_west(&self, cluster: &str) -> Vec<(SocketAddr, String)> {
        self.lock()
            .east_west
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn static_data_plane_records_and_overrides() {
        let dp = StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
        let gw = ClusterGatewayRef::new("east", "ns", "gw");
        let mut changes = dp.changes();
        assert_eq!(dp.programmed(&gw), ProgrammedState::Applied(0));
        dp.publish("east", Arc::new(Snapshot::empty(3)), None);
        assert_eq!(dp.publish_count("east"), 1);
        assert_eq!(dp.snapshot("east").unwrap().generation, 3);
        assert_eq!(dp.programmed(&gw), ProgrammedState::Applied(3));
        dp.set_programmed(gw.clone(), Some(ProgrammedState::pending()));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(dp.programmed(&gw), ProgrammedState::pending());
        dp.set_addresses(vec![]);
        assert!(changes.has_changed().unwrap());
        assert!(dp.addresses(&gw).is_empty());
        changes.mark_unchanged();

        assert!(dp.east_west("east").is_empty());
        let l = vec![("192.0.2.1:15443".parse().unwrap(), "us-east-1a".to_string())];
        dp.set_east_west("east", l.clone());
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(dp.east_west("east"), l);
        assert!(dp.east_west("west").is_empty());
        dp.set_east_west("east", vec![]);
        assert!(changes.has_changed().unwrap());
        assert!(dp.east_west("east").is_empty());
    }

    #[test]
    fn static_data_plane_holds_acks_and_reports_injected_traffic() {
        let dp = StaticDataPlane::new(vec![]);
        let gw = ClusterGatewayRef::new("east", "ns", "gw");
        dp.publish("east", Arc::new(Snapshot::empty(4)), None);
        dp.hold_acks("east", true);
        dp.publish("east", Arc::new(Snapshot::empty(5)), None);
        assert_eq!(dp.programmed(&gw), ProgrammedState::Applied(4));
        let other = ClusterGatewayRef::new("west", "ns", "gw");
        assert_eq!(dp.programmed(&other), ProgrammedState::Applied(0));
        dp.hold_acks("east", false);
        assert_eq!(dp.programmed(&gw), ProgrammedState::Applied(5));

        assert_eq!(dp.traffic(&gw), None);
        dp.add_traffic(&gw, |t| t.record(Some("us-west"), None, 800));
        dp.add_traffic(&gw, |t| {
            t.record(
                None,
                Some(meridian_model::traffic::FailureKind::Connect),
                800,
            )
        });
        let t = dp.traffic(&gw).unwrap();
        assert_eq!((t.requests, t.failures()), (2, 1));
        assert_eq!(dp.traffic(&other), None);
    }
}
