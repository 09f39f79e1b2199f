//! Incremental endpoint updates: an EndpointSlice change without a full translation.
//!
//! Translation reads EndpointSlices for one thing only — the endpoint list of a resolved backend
//! (validity, protocol and status depend on Services, grants and exports, never on slices). So
//! when only the slices of one Service changed, the previous snapshots stay right except for the
//! endpoints of the backends that resolve through that Service:
//!
//! ```text
//! slice of svc S changed in cluster X ──► for each port P of S:
//!     backend "ns/S:P"                  in X's snapshot      ← endpoints of S:P in X
//!     backend "ns/S:P (ServiceImport)"  in every snapshot    ← endpoints of S:P in all exporters
//!                                        (only if X exports S)    rewritten for the snapshot's
//!                                                                 network, and its east-west
//!                                                                 section entries recomputed
//! ```
//!
//! With clusters on several networks the import's endpoints go through the same rewrite as in a
//! full translation (module `east_west`), with the east-west listeners the last translation used
//! and its record of what was left out for lack of them; both are updated in place. A change of
//! the listeners themselves needs a full translation.
//!
//! Endpoints go through the same address policy as in a full translation ([`AddressPolicy`]);
//! when it refuses one, the caller runs a full translation for the route status.
//!
//! Only backends that already resolved (`BackendTarget::Endpoints`) are touched, and mirror
//! backends are included. Any other kind of change (Service, grant, export, route, Gateway, …)
//! needs a full [`super::translate`]. The caller renumbers the snapshots that changed.
//!
//! Only the routes whose endpoints change are copied (snapshots share routes, see
//! `meridian_model::snapshot`), and [`refresh_endpoints_touched`] says which Gateways of which
//! snapshot changed, so publishing compares only those. [`refresh_endpoints_touched`] looks at
//! every route of every snapshot; the reconcile loop goes through
//! [`super::Incremental::refresh_endpoints`], which names the routes referring to the Service
//! (or its ServiceImport) from its dependency index with where each attached, so that only
//! those are looked at (one network; with several the east-west rewrite reads every snapshot).

use std::collections::{BTreeMap, BTreeSet};

use meridian_model::patch::Touched;
use meridian_model::snapshot::{BackendProtocol, Endpoint, Snapshot, set_route_endpoints};

use super::backend::{self, BackendRef, MCS_GROUP};
use super::east_west::{self, EastWestListeners, MissingRemote};
use crate::world::{ClusterName, ObjectKey, RouteKey, World};

/// Recomputes, in place, the endpoints of every backend that resolves through Service `service`
/// of member cluster `cluster`, after its EndpointSlices changed. `listeners` are the east-west
/// listeners the snapshots were translated with ([`TranslateConfig::east_west`]) and `missing`
/// the [`Output::east_west_missing`] of that translation, kept up to date here. Returns the
/// clusters whose snapshot content changed.
///
/// [`TranslateConfig::east_west`]: super::TranslateConfig::east_west
/// [`Output::east_west_missing`]: super::Output::east_west_missing
pub fn refresh_endpoints(
    world: &World,
    snapshots: &mut BTreeMap<ClusterName, Snapshot>,
    cluster: &str,
    service: &ObjectKey,
    listeners: &EastWestListeners,
    missing: &mut MissingRemote,
    policy: &mut AddressPolicy,
) -> BTreeSet<ClusterName> {
    refresh_endpoints_touched(
        world, snapshots, cluster, service, listeners, missing, policy,
    )
    .into_keys()
    .collect()
}

/// [`refresh_endpoints`], returning per changed cluster the Gateways of its snapshot that
/// changed (every one with several networks: the east-west rewrite is not followed Gateway by
/// Gateway).
pub fn refresh_endpoints_touched(
    world: &World,
    snapshots: &mut BTreeMap<ClusterName, Snapshot>,
    cluster: &str,
    service: &ObjectKey,
    listeners: &EastWestListeners,
    missing: &mut MissingRemote,
    policy: &mut AddressPolicy,
) -> BTreeMap<ClusterName, Touched> {
    refresh_in(
        world, snapshots, cluster, service, listeners, missing, policy, None,
    )
}

/// Where in one cluster's snapshot the routes naming a backend are: `(Gateway, listener name,
/// route)` for every listener each one attached to (a superset is fine: only backends of the
/// refreshed name change).
pub(crate) type Places = Vec<(ObjectKey, String, RouteKey)>;

/// The routes of a cluster (first argument) naming the refreshed Service (`false`) or the
/// ServiceImport of its name (`true`), from the incremental engine's index; `None` when the
/// index does not know that cluster's snapshot (then every route of it is looked at).
pub(crate) type Locate<'a> = dyn Fn(&str, bool) -> Option<Places> + 'a;

/// [`refresh_endpoints_touched`]; with `locate`, only the routes it names are looked at instead
/// of every route of every snapshot (single network only: the east-west rewrite reads whole
/// snapshots).
#[allow(clippy::too_many_arguments)]
pub(crate) fn refresh_in(
    world: &World,
    snapshots: &mut BTreeMap<ClusterName, Snapshot>,
    cluster: &str,
    service: &ObjectKey,
    listeners: &EastWestListeners,
    missing: &mut MissingRemote,
    policy: &mut AddressPolicy,
    locate: Option<&Locate<'_>>,
) -> BTreeMap<ClusterName, Touched> {
    let locate = locate.filter(|_| !world.multi_network());
    let mut changed: BTreeMap<ClusterName, Touched> = BTreeMap::new();
    let Some(state) = world.cluster(cluster) else {
        return changed;
    };
    let Some(svc) = state.service(service) else {
        // No Service: every backend naming it is already invalid; nothing carries endpoints.
        return changed;
    };
    let ports: Vec<i32> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| p.port)
        .collect();
    let exported = state.exports(service);
    for port in ports {
        let r = BackendRef {
            group: "",
            kind: "Service",
            namespace: &service.namespace,
            name: &service.name,
            port: Some(port),
        };
        if let (Some(snapshot), Ok((protocol, eps))) = (
            snapshots.get_mut(cluster),
            backend::service_endpoints(cluster, state, service, port),
        ) {
            let eps = policy.admit(&eps);
            let touched = match locate.and_then(|l| l(cluster, false)) {
                Some(places) => set_endpoints_at(snapshot, &places, &r.display(), protocol, &eps),
                None => set_endpoints(snapshot, &r.display(), protocol, &eps),
            };
            if !touched.is_nothing() {
                changed
                    .entry(cluster.to_string())
                    .or_default()
                    .extend(&touched);
            }
        }
        if !exported {
            continue;
        }
        let r = BackendRef {
            group: MCS_GROUP,
            kind: "ServiceImport",
            ..r
        };
        let name = r.display();
        if let Ok((protocol, eps)) = backend::import_endpoints(world, service, port, &name) {
            let eps = policy.admit(&eps);
            let touched = match locate {
                Some(locate) => snapshots
                    .iter_mut()
                    .map(|(c, snapshot)| {
                        let t = match locate(c, true) {
                            Some(places) => {
                                set_endpoints_at(snapshot, &places, &name, protocol, &eps)
                            }
                            None => set_endpoints(snapshot, &name, protocol, &eps),
                        };
                        (c.clone(), t)
                    })
                    .filter(|(_, t)| !t.is_nothing())
                    .collect(),
                None => {
                    east_west::refresh(world, listeners, snapshots, &name, protocol, &eps, missing)
                }
            };
            for (c, touched) in touched {
                changed.entry(c).or_default().extend(&touched);
            }
        }
    }
    changed
}

/// The endpoint address policy of a refresh (module `backend`): refused endpoints are left out
/// as in a full translation, and `refused_seen` tells the caller that some were, so it runs a
/// full translation to name them in the routes' status (which a refresh does not write).
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressPolicy {
    /// `TranslateConfig::allow_loopback_endpoints`.
    pub allow_loopback: bool,
    /// Set when an endpoint was refused.
    pub refused_seen: bool,
}

impl AddressPolicy {
    fn admit(&mut self, eps: &[Endpoint]) -> Vec<Endpoint> {
        let (kept, refused) = backend::admit(eps, self.allow_loopback);
        self.refused_seen |= !refused.is_empty();
        kept
    }
}

/// [`set_endpoints`] for the routes at `places` only (binary searches: Gateways and routes are
/// in name order).
fn set_endpoints_at(
    snapshot: &mut Snapshot,
    places: &[(ObjectKey, String, RouteKey)],
    name: &str,
    protocol: BackendProtocol,
    eps: &[Endpoint],
) -> Touched {
    let mut touched = Touched::nothing();
    let lookup = |n: &str| (n == name).then_some((protocol, eps));
    for (gw, listener, route) in places {
        let Ok(g) = snapshot.gateways.binary_search_by(|g| {
            (g.namespace.as_str(), g.name.as_str()).cmp(&(&gw.namespace, &gw.name))
        }) else {
            continue;
        };
        let g = &mut snapshot.gateways[g];
        let Some(l) = g.listeners.iter_mut().find(|l| l.name == *listener) else {
            continue;
        };
        // A listener's routes are in (namespace, name, kind) order: an HTTPRoute and a
        // GRPCRoute may share a name.
        let Ok(i) = l.routes.binary_search_by(|r| {
            (r.namespace.as_str(), r.name.as_str(), r.kind).cmp(&(
                route.key.namespace.as_str(),
                route.key.name.as_str(),
                route.kind,
            ))
        }) else {
            continue;
        };
        if set_route_endpoints(&mut l.routes[i], &lookup) {
            touched.gateway(&g.namespace, &g.name);
        }
    }
    touched
}

/// Replaces the endpoints of every resolved backend named `name`; returns the Gateways where
/// anything changed.
pub(super) fn set_endpoints(
    snapshot: &mut Snapshot,
    name: &str,
    protocol: BackendProtocol,
    eps: &[Endpoint],
) -> Touched {
    let mut touched = Touched::nothing();
    for g in &mut snapshot.gateways {
        if g.set_endpoints(|n| (n == name).then_some((protocol, eps))) {
            touched.gateway(&g.namespace, &g.name);
        }
    }
    touched
}
