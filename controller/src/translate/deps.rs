//! The dependency index: which translated objects read which indexed objects, so that a change
//! re-translates only what it affects (module `incremental`).
//!
//! Per member cluster it keeps, for every object that refers to others, what it referred to at
//! the last pass (*forward* entries), and the reverse maps built from them:
//!
//! ```text
//! HTTPRoute ──parentRefs──────────────► Gateway (ns/name, whether it exists or not)
//!                                       ListenerSet (ns/name, kind ListenerSet)
//! GRPCRoute ──backendRefs, mirrors────► Service / ServiceImport (ns/name)
//! TLSRoute
//!           ──the cross-namespace ones► (route kind, from-ns, to-ns, to-kind) → to-name
//! Gateway   ──gatewayClassName────────► GatewayClass
//!           ──certificateRefs, client─► Secret (ns/name)
//!           ──the cross-namespace ones► (Gateway, from-ns, to-ns, Secret) → to-name
//! ListenerSet ──parentRef─────────────► Gateway (the set's listeners are validated with it)
//!           ──certificateRefs─────────► Secret (ns/name)
//!           ──the cross-namespace ones► (ListenerSet, from-ns, to-ns, Secret) → to-name
//! ReferenceGrant ─ from (kind, ns) × to (kind, name or any)   (forward only: the references it
//!                                                               allows are looked up above)
//! FailoverPolicy ─ targetRefs (group, kind, name)             (forward only)
//! BackendTLSPolicy ─ targetRefs (Service names), caCertificateRefs (ConfigMap names)
//!                                                             (forward only: a ConfigMap change
//!                                                              looks up the policies naming it)
//! ```
//!
//! A change to one object is turned into [`Affected`] by [`DepIndex::change`]: the object's
//! forward entries are replaced by what the world holds now, and what the old *and* the new
//! entries reach is affected (a route that stops naming a Gateway changes that Gateway's
//! `attachedRoutes`; a grant that loses a `from` entry revokes what it allowed; a ListenerSet
//! whose parentRef moves leaves one Gateway and joins another). A ListenerSet is validated as
//! part of the Gateway it names, so whatever reaches a set (its own change, a Secret or
//! ReferenceGrant it reads) affects that Gateway, and a set change also affects the routes
//! naming the set (which Gateway they reach through it follows its parentRef). Entries are
//! supersets where precision would cost more than it saves: a reference of an unsupported group
//! or kind is indexed like a supported one.
//!
//! Who reads what outside this index: ServiceImport backends read Services, EndpointSlices and
//! ServiceExports of *every* cluster (a Service or export change reaches routes of all
//! clusters); listener `allowedRoutes` selectors read Namespace labels (a Namespace change
//! reaches the routes of that namespace, when some listener of the cluster has a selector; and
//! `allowedListeners` selectors read them too: the incremental pass validates the Gateways
//! again when some Gateway admits ListenerSets by selector);
//! FailoverPolicy and BackendTLSPolicy status read Services, HTTPRoutes, GRPCRoutes,
//! ServiceImports and exports (recomputed every pass: there are few policies). An HTTPRoute
//! against GRPCRoute hostname conflict, and TLSRoutes sharing a hostname (module `conflict`),
//! read other routes: the incremental
//! pass recomputes those conflicts and re-translates the routes whose outcome they change, so
//! nothing is indexed for it here.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gateways::{Gateway, GatewayListeners, GatewayTls, GatewayTlsBackend};
use gateway_api::httproutes::{HttpRouteParentRefs, HttpRouteRules};
use gateway_api::listenersets::ListenerSet;
use gateway_api::referencegrants::ReferenceGrant;
use meridian_crds::meridian::FailoverPolicy;

use super::backend::MCS_GROUP;
use crate::status::GATEWAY_GROUP;
use crate::world::{ClusterName, ClusterState, Kind, ObjectKey, RouteKey, RouteKind, World};

/// A backend a route refers to: a Service of the route's cluster, or a ServiceImport (the
/// Services of that name exported from any cluster).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Backend {
    pub import: bool,
    pub key: ObjectKey,
}

/// A cross-namespace reference family: referrer kind and namespace, target namespace and kind.
type CrossKey = (&'static str, String, String, String);

/// What one change affects, per member cluster.
#[derive(Debug, Default)]
pub(crate) struct Affected {
    /// Routes to translate again.
    pub routes: BTreeMap<ClusterName, BTreeSet<RouteKey>>,
    /// Gateways to validate again (listeners, references, status).
    pub gateways: BTreeMap<ClusterName, BTreeSet<ObjectKey>>,
    /// Clusters whose GatewayClasses changed (every Gateway is validated again).
    pub classes: BTreeSet<ClusterName>,
    /// Namespaces whose labels changed (routes there attach again where a selector reads them).
    pub namespaces: BTreeMap<ClusterName, BTreeSet<String>>,
}

impl Affected {
    fn route(&mut self, cluster: &str, key: RouteKey) {
        self.routes
            .entry(cluster.to_string())
            .or_default()
            .insert(key);
    }

    fn gateway(&mut self, cluster: &str, key: ObjectKey) {
        self.gateways
            .entry(cluster.to_string())
            .or_default()
            .insert(key);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RouteRefs {
    parents: Vec<ObjectKey>,
    /// parentRefs of kind ListenerSet.
    sets: Vec<ObjectKey>,
    backends: Vec<Backend>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SetRefs {
    /// The Gateway its parentRef names (`None`: another kind).
    gateway: Option<ObjectKey>,
    secrets: Vec<ObjectKey>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GatewayRefs {
    class: String,
    secrets: Vec<ObjectKey>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GrantRefs {
    /// `(kind, namespace)` of each `from` entry.
    from: Vec<(String, String)>,
    /// `(kind, name)` of each `to` entry (`None`: every name).
    to: Vec<(String, Option<String>)>,
}

/// `(group, kind, name)` of a policy target.
type Target = (String, String, String);

/// What a BackendTLSPolicy reads: target Service names and CA ConfigMap names.
type TlsPolicyRefs = (Vec<String>, Vec<String>);

/// One member cluster's entries.
#[derive(Debug, Default)]
struct ClusterDeps {
    routes: BTreeMap<RouteKey, RouteRefs>,
    gateways: BTreeMap<ObjectKey, GatewayRefs>,
    grants: BTreeMap<ObjectKey, GrantRefs>,
    policies: BTreeMap<ObjectKey, Vec<Target>>,
    /// BackendTLSPolicy → (target Service names, CA ConfigMap names), same namespace.
    tls_policies: BTreeMap<ObjectKey, TlsPolicyRefs>,
    /// ListenerSet → its parent Gateway and the Secrets it refers to.
    sets: BTreeMap<ObjectKey, SetRefs>,
    /// Gateway → routes naming it in a parentRef.
    by_parent: BTreeMap<ObjectKey, BTreeSet<RouteKey>>,
    /// ListenerSet → routes naming it in a parentRef.
    by_set_parent: BTreeMap<ObjectKey, BTreeSet<RouteKey>>,
    /// Secret → ListenerSets referring to it.
    by_set_secret: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Backend → routes referring to it.
    by_backend: BTreeMap<Backend, BTreeSet<RouteKey>>,
    /// Cross-namespace references → target name → referrers (routes, Gateways or
    /// ListenerSets, the family's first element says which kind).
    cross: BTreeMap<CrossKey, BTreeMap<String, BTreeSet<ObjectKey>>>,
    /// Secret → Gateways referring to it.
    by_secret: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// GatewayClass → Gateways of that class.
    by_class: BTreeMap<String, BTreeSet<ObjectKey>>,
}

/// The dependency index of every member cluster (module docs).
#[derive(Debug, Default)]
pub(crate) struct DepIndex {
    clusters: BTreeMap<ClusterName, ClusterDeps>,
}

impl DepIndex {
    /// The index of the whole world.
    pub fn build(world: &World) -> Self {
        let mut index = Self::default();
        for (name, state) in &world.clusters {
            let deps = index.clusters.entry(name.clone()).or_default();
            for (key, route) in &state.http_routes {
                let key = RouteKey::http(key.clone());
                let refs = http_route_refs(&key, route);
                deps.set_route(&key, Some(refs));
            }
            for (key, route) in &state.grpc_routes {
                let key = RouteKey::grpc(key.clone());
                let refs = grpc_route_refs(&key, route);
                deps.set_route(&key, Some(refs));
            }
            for (key, route) in &state.tls_routes {
                let key = RouteKey::tls(key.clone());
                let refs = tls_route_refs(&key, route);
                deps.set_route(&key, Some(refs));
            }
            for (key, gw) in &state.gateways {
                deps.set_gateway(key, Some(gateway_refs(key, gw)));
            }
            for (key, set) in &state.listener_sets {
                deps.set_listener_set(key, Some(set_refs(key, set)));
            }
            for (key, grant) in &state.reference_grants {
                deps.grants.insert(key.clone(), grant_refs(grant));
            }
            for (key, policy) in &state.failover_policies {
                deps.policies.insert(key.clone(), policy_targets(policy));
            }
            for (key, policy) in &state.backend_tls_policies {
                deps.tls_policies
                    .insert(key.clone(), super::backend_tls::policy_refs(policy));
            }
        }
        index
    }

    /// Routes of `cluster` naming Gateway `gateway` in a parentRef.
    pub fn routes_naming(&self, cluster: &str, gateway: &ObjectKey) -> Vec<RouteKey> {
        self.clusters
            .get(cluster)
            .and_then(|d| d.by_parent.get(gateway))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Routes of `cluster` naming one of ListenerSets `sets` in a parentRef.
    pub fn routes_naming_sets<'k>(
        &self,
        cluster: &str,
        sets: impl IntoIterator<Item = &'k ObjectKey>,
    ) -> BTreeSet<RouteKey> {
        let Some(d) = self.clusters.get(cluster) else {
            return BTreeSet::new();
        };
        sets.into_iter()
            .filter_map(|s| d.by_set_parent.get(s))
            .flatten()
            .cloned()
            .collect()
    }

    /// The Gateway ListenerSet `set` of `cluster` named at the last indexing.
    pub fn set_gateway(&self, cluster: &str, set: &ObjectKey) -> Option<&ObjectKey> {
        self.clusters.get(cluster)?.sets.get(set)?.gateway.as_ref()
    }

    /// Routes of `cluster` referring to `backend` (rules, backendRef and rule mirrors).
    pub fn routes_using(&self, cluster: &str, backend: &Backend) -> Vec<&RouteKey> {
        self.clusters
            .get(cluster)
            .and_then(|d| d.by_backend.get(backend))
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// Re-indexes object `kind` `key` of `cluster` from what the world holds now (absent:
    /// deleted) and notes in `affected` what its old and new references reach. EndpointSlice
    /// changes are given by the key of the Service they belong to.
    pub fn change(
        &mut self,
        world: &World,
        cluster: &str,
        kind: Kind,
        key: &ObjectKey,
        affected: &mut Affected,
    ) {
        let Some(state) = world.cluster(cluster) else {
            return;
        };
        let deps = self.clusters.entry(cluster.to_string()).or_default();
        match kind {
            Kind::HttpRoute => {
                let key = RouteKey::http(key.clone());
                let new = state
                    .http_routes
                    .get(&key.key)
                    .map(|r| http_route_refs(&key, r));
                deps.set_route(&key, new);
                affected.route(cluster, key);
            }
            Kind::GrpcRoute => {
                let key = RouteKey::grpc(key.clone());
                let new = state
                    .grpc_routes
                    .get(&key.key)
                    .map(|r| grpc_route_refs(&key, r));
                deps.set_route(&key, new);
                affected.route(cluster, key);
            }
            Kind::TlsRoute => {
                let key = RouteKey::tls(key.clone());
                let new = state
                    .tls_routes
                    .get(&key.key)
                    .map(|r| tls_route_refs(&key, r));
                deps.set_route(&key, new);
                affected.route(cluster, key);
            }
            // The set's listeners are validated with the Gateway it names now and the one it
            // named before; routes naming the set reach a Gateway through it.
            Kind::ListenerSet => {
                let new = state.listener_sets.get(key).map(|s| set_refs(key, s));
                let old = deps.set_listener_set(key, new.clone());
                for gw in old
                    .iter()
                    .chain(new.iter())
                    .filter_map(|r| r.gateway.clone())
                {
                    affected.gateway(cluster, gw);
                }
                for r in deps.by_set_parent.get(key).into_iter().flatten() {
                    affected.route(cluster, r.clone());
                }
            }
            Kind::Gateway => {
                let new = state.gateways.get(key).map(|g| gateway_refs(key, g));
                deps.set_gateway(key, new);
                affected.gateway(cluster, key.clone());
            }
            Kind::GatewayClass => {
                affected.classes.insert(cluster.to_string());
                for gw in deps.by_class.get(&key.name).into_iter().flatten() {
                    affected.gateway(cluster, gw.clone());
                }
            }
            Kind::Secret => {
                for gw in deps.by_secret.get(key).into_iter().flatten() {
                    affected.gateway(cluster, gw.clone());
                }
                for set in deps.by_set_secret.get(key).into_iter().flatten() {
                    deps.set_affects(set, cluster, affected);
                }
            }
            Kind::Namespace => {
                affected
                    .namespaces
                    .entry(cluster.to_string())
                    .or_default()
                    .insert(key.name.clone());
            }
            Kind::ReferenceGrant => {
                let new = state.reference_grants.get(key).map(|g| grant_refs(g));
                let old = match &new {
                    Some(n) => deps.grants.insert(key.clone(), n.clone()),
                    None => deps.grants.remove(key),
                };
                for refs in old.iter().chain(new.iter()) {
                    deps.granted(&key.namespace, refs, cluster, affected);
                }
            }
            Kind::FailoverPolicy => {
                let new = state.failover_policies.get(key).map(|p| policy_targets(p));
                let old = match &new {
                    Some(n) => deps.policies.insert(key.clone(), n.clone()),
                    None => deps.policies.remove(key),
                };
                for (group, kind, name) in old.iter().chain(new.iter()).flatten() {
                    let target = ObjectKey::new(key.namespace.as_str(), name.as_str());
                    match (group.as_str(), kind.as_str()) {
                        (GATEWAY_GROUP, "HTTPRoute") => {
                            affected.route(cluster, RouteKey::http(target))
                        }
                        (g, k) => {
                            let import = g == MCS_GROUP && k == "ServiceImport";
                            let backend = Backend {
                                import,
                                key: target,
                            };
                            for r in deps.by_backend.get(&backend).into_iter().flatten() {
                                affected.route(cluster, r.clone());
                            }
                        }
                    }
                }
            }
            Kind::BackendTlsPolicy => {
                let new = state
                    .backend_tls_policies
                    .get(key)
                    .map(|p| super::backend_tls::policy_refs(p));
                let old = match &new {
                    Some(n) => deps.tls_policies.insert(key.clone(), n.clone()),
                    None => deps.tls_policies.remove(key),
                };
                let services: BTreeSet<&String> =
                    old.iter().chain(new.iter()).flat_map(|r| &r.0).collect();
                for name in services {
                    deps.service_users(&key.namespace, name, cluster, affected);
                }
            }
            Kind::ConfigMap => {
                let services: BTreeSet<&String> = deps
                    .tls_policies
                    .iter()
                    .filter(|(p, (_, cms))| p.namespace == key.namespace && cms.contains(&key.name))
                    .flat_map(|(_, (svcs, _))| svcs)
                    .collect();
                for name in services {
                    deps.service_users(&key.namespace, name, cluster, affected);
                }
            }
            Kind::Service | Kind::EndpointSlice => {
                let local = Backend {
                    import: false,
                    key: key.clone(),
                };
                for r in deps.by_backend.get(&local).into_iter().flatten() {
                    affected.route(cluster, r.clone());
                }
                self.importers(key, affected);
            }
            Kind::ServiceExport => self.importers(key, affected),
            // Read by FailoverPolicy status only (recomputed every pass), or never.
            Kind::ServiceImport | Kind::FailoverDrill => {}
        }
    }

    /// Routes of every cluster with a ServiceImport backend `key`.
    fn importers(&self, key: &ObjectKey, affected: &mut Affected) {
        let backend = Backend {
            import: true,
            key: key.clone(),
        };
        for (cluster, deps) in &self.clusters {
            for r in deps.by_backend.get(&backend).into_iter().flatten() {
                affected.route(cluster, r.clone());
            }
        }
    }
}

impl ClusterDeps {
    /// Notes the Gateway ListenerSet `set` names as affected (its listeners are validated
    /// with it).
    fn set_affects(&self, set: &ObjectKey, cluster: &str, affected: &mut Affected) {
        if let Some(gw) = self.sets.get(set).and_then(|r| r.gateway.clone()) {
            affected.gateway(cluster, gw);
        }
    }

    /// Notes the routes using Service `namespace/name` (of this cluster) as affected.
    fn service_users(&self, namespace: &str, name: &str, cluster: &str, affected: &mut Affected) {
        let backend = Backend {
            import: false,
            key: ObjectKey::new(namespace, name),
        };
        for r in self.by_backend.get(&backend).into_iter().flatten() {
            affected.route(cluster, r.clone());
        }
    }

    /// Replaces a route's forward entries (and their reverse ones).
    fn set_route(&mut self, key: &RouteKey, new: Option<RouteRefs>) {
        if let Some(old) = self.routes.remove(key) {
            for p in &old.parents {
                remove(&mut self.by_parent, p, key);
            }
            for p in &old.sets {
                remove(&mut self.by_set_parent, p, key);
            }
            for b in &old.backends {
                remove(&mut self.by_backend, b, key);
                if b.key.namespace != key.key.namespace {
                    self.uncross(route_cross(key, b), &b.key.name, &key.key);
                }
            }
        }
        let Some(new) = new else { return };
        for p in &new.parents {
            self.by_parent
                .entry(p.clone())
                .or_default()
                .insert(key.clone());
        }
        for p in &new.sets {
            self.by_set_parent
                .entry(p.clone())
                .or_default()
                .insert(key.clone());
        }
        for b in &new.backends {
            self.by_backend
                .entry(b.clone())
                .or_default()
                .insert(key.clone());
            if b.key.namespace != key.key.namespace {
                self.cross
                    .entry(route_cross(key, b))
                    .or_default()
                    .entry(b.key.name.clone())
                    .or_default()
                    .insert(key.key.clone());
            }
        }
        self.routes.insert(key.clone(), new);
    }

    /// Replaces a Gateway's forward entries (and their reverse ones).
    fn set_gateway(&mut self, key: &ObjectKey, new: Option<GatewayRefs>) {
        if let Some(old) = self.gateways.remove(key) {
            remove(&mut self.by_class, &old.class, key);
            for s in &old.secrets {
                remove(&mut self.by_secret, s, key);
                if s.namespace != key.namespace {
                    self.uncross(secret_cross(key, s), &s.name, key);
                }
            }
        }
        let Some(new) = new else { return };
        self.by_class
            .entry(new.class.clone())
            .or_default()
            .insert(key.clone());
        for s in &new.secrets {
            self.by_secret
                .entry(s.clone())
                .or_default()
                .insert(key.clone());
            if s.namespace != key.namespace {
                self.cross
                    .entry(secret_cross(key, s))
                    .or_default()
                    .entry(s.name.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.gateways.insert(key.clone(), new);
    }

    /// Replaces a ListenerSet's forward entries (and their reverse ones); returns the old ones.
    fn set_listener_set(&mut self, key: &ObjectKey, new: Option<SetRefs>) -> Option<SetRefs> {
        let old = self.sets.remove(key);
        for s in old.iter().flat_map(|o| &o.secrets) {
            remove(&mut self.by_set_secret, s, key);
            if s.namespace != key.namespace {
                self.uncross(set_secret_cross(key, s), &s.name, key);
            }
        }
        let Some(new) = new else { return old };
        for s in &new.secrets {
            self.by_set_secret
                .entry(s.clone())
                .or_default()
                .insert(key.clone());
            if s.namespace != key.namespace {
                self.cross
                    .entry(set_secret_cross(key, s))
                    .or_default()
                    .entry(s.name.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.sets.insert(key.clone(), new);
        old
    }

    fn uncross(&mut self, family: CrossKey, name: &str, referrer: &ObjectKey) {
        if let Some(names) = self.cross.get_mut(&family) {
            remove(names, name, referrer);
            if names.is_empty() {
                self.cross.remove(&family);
            }
        }
    }

    /// Notes the referrers whose references a grant in `namespace` with `refs` allows.
    fn granted(&self, namespace: &str, refs: &GrantRefs, cluster: &str, affected: &mut Affected) {
        for (from_kind, from_ns) in &refs.from {
            let from_kind = match from_kind.as_str() {
                "HTTPRoute" => "HTTPRoute",
                "GRPCRoute" => "GRPCRoute",
                "TLSRoute" => "TLSRoute",
                "Gateway" => "Gateway",
                "ListenerSet" => "ListenerSet",
                _ => continue,
            };
            for (to_kind, to_name) in &refs.to {
                let family = (
                    from_kind,
                    from_ns.clone(),
                    namespace.to_string(),
                    to_kind.clone(),
                );
                let Some(names) = self.cross.get(&family) else {
                    continue;
                };
                let referrers = names
                    .iter()
                    .filter(|(n, _)| to_name.as_ref().is_none_or(|t| t == *n))
                    .flat_map(|(_, r)| r);
                for r in referrers {
                    match from_kind {
                        "HTTPRoute" => affected.route(cluster, RouteKey::http(r.clone())),
                        "GRPCRoute" => affected.route(cluster, RouteKey::grpc(r.clone())),
                        "TLSRoute" => affected.route(cluster, RouteKey::tls(r.clone())),
                        "ListenerSet" => self.set_affects(r, cluster, affected),
                        _ => affected.gateway(cluster, r.clone()),
                    }
                }
            }
        }
    }
}

/// Removes `value` from the set at `at`, and the set once empty.
fn remove<K, Q, V: Ord>(map: &mut BTreeMap<K, BTreeSet<V>>, at: &Q, value: &V)
where
    K: Ord + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
{
    if let Some(set) = map.get_mut(at) {
        set.remove(value);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

fn route_cross(route: &RouteKey, b: &Backend) -> CrossKey {
    let kind = if b.import { "ServiceImport" } else { "Service" };
    (
        route.kind.as_str(),
        route.key.namespace.clone(),
        b.key.namespace.clone(),
        kind.to_string(),
    )
}

fn secret_cross(gateway: &ObjectKey, secret: &ObjectKey) -> CrossKey {
    (
        "Gateway",
        gateway.namespace.clone(),
        secret.namespace.clone(),
        "Secret".to_string(),
    )
}

fn set_secret_cross(set: &ObjectKey, secret: &ObjectKey) -> CrossKey {
    (
        "ListenerSet",
        set.namespace.clone(),
        secret.namespace.clone(),
        "Secret".to_string(),
    )
}

fn http_route_refs(key: &RouteKey, route: &gateway_api::httproutes::HttpRoute) -> RouteRefs {
    route_refs(
        &key.key,
        route.spec.parent_refs.as_deref().unwrap_or_default(),
        route.spec.rules.as_deref().unwrap_or_default(),
    )
}

/// A GRPCRoute's references, read from its conversion (module `grpc`): the same defaults.
fn grpc_route_refs(key: &RouteKey, route: &gateway_api::grpcroutes::GrpcRoute) -> RouteRefs {
    let c = super::grpc::convert(route);
    route_refs(&key.key, &c.parent_refs, &c.rules)
}

/// A TLSRoute's references, read from its conversion (module `tls`): the same defaults.
fn tls_route_refs(key: &RouteKey, route: &gateway_api::tlsroutes::TlsRoute) -> RouteRefs {
    let c = super::tls::convert(route);
    route_refs(&key.key, &c.parent_refs, &c.rules)
}

/// The Gateways a route names and the backends it refers to (rules, backendRef and rule
/// mirrors), defaults applied as translation applies them.
fn route_refs(
    key: &ObjectKey,
    parent_refs: &[HttpRouteParentRefs],
    rules: &[HttpRouteRules],
) -> RouteRefs {
    let mut out = RouteRefs::default();
    for p in parent_refs {
        if p.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP {
            continue;
        }
        let parents = match p.kind.as_deref().unwrap_or("Gateway") {
            "Gateway" => &mut out.parents,
            "ListenerSet" => &mut out.sets,
            _ => continue,
        };
        let parent = ObjectKey::new(
            p.namespace.as_deref().unwrap_or(&key.namespace),
            p.name.as_str(),
        );
        if !parents.contains(&parent) {
            parents.push(parent);
        }
    }
    let mut add =
        |group: Option<&String>, kind: Option<&String>, ns: Option<&String>, name: &str| {
            let import = match (
                group.map_or("", String::as_str),
                kind.map_or("Service", String::as_str),
            ) {
                ("", "Service") => false,
                (MCS_GROUP, "ServiceImport") => true,
                // Resolves to InvalidKind whatever the world holds.
                _ => return,
            };
            let b = Backend {
                import,
                key: ObjectKey::new(ns.map_or(key.namespace.as_str(), String::as_str), name),
            };
            if !out.backends.contains(&b) {
                out.backends.push(b);
            }
        };
    for rule in rules {
        for f in rule.filters.iter().flatten() {
            if let Some(m) = &f.request_mirror {
                let b = &m.backend_ref;
                add(
                    b.group.as_ref(),
                    b.kind.as_ref(),
                    b.namespace.as_ref(),
                    &b.name,
                );
            }
        }
        for b in rule.backend_refs.iter().flatten() {
            add(
                b.group.as_ref(),
                b.kind.as_ref(),
                b.namespace.as_ref(),
                &b.name,
            );
            for f in b.filters.iter().flatten() {
                if let Some(m) = &f.request_mirror {
                    let b = &m.backend_ref;
                    add(
                        b.group.as_ref(),
                        b.kind.as_ref(),
                        b.namespace.as_ref(),
                        &b.name,
                    );
                }
            }
        }
    }
    out
}

/// A Gateway's class and the Secrets it refers to (listener certificates, the backend client
/// certificate), of any group and kind.
fn gateway_refs(key: &ObjectKey, gw: &Gateway) -> GatewayRefs {
    let mut secrets = Vec::new();
    for l in &gw.spec.listeners {
        for r in l
            .tls
            .iter()
            .flat_map(|t| t.certificate_refs.iter().flatten())
        {
            secrets.push(ObjectKey::new(
                r.namespace.as_deref().unwrap_or(&key.namespace),
                r.name.as_str(),
            ));
        }
    }
    if let Some(GatewayTls {
        backend: Some(GatewayTlsBackend {
            client_certificate_ref: Some(r),
        }),
        ..
    }) = &gw.spec.tls
    {
        secrets.push(ObjectKey::new(
            r.namespace.as_deref().unwrap_or(&key.namespace),
            r.name.as_str(),
        ));
    }
    secrets.sort();
    secrets.dedup();
    GatewayRefs {
        class: gw.spec.gateway_class_name.clone(),
        secrets,
    }
}

/// A ListenerSet's parent Gateway and the Secrets its listeners refer to (of any group and
/// kind), read from the JSON both listener shapes share.
fn set_refs(key: &ObjectKey, set: &ListenerSet) -> SetRefs {
    let listeners: Vec<GatewayListeners> = super::recast(&set.spec.listeners).unwrap_or_default();
    let mut secrets: Vec<ObjectKey> = listeners
        .iter()
        .flat_map(|l| {
            l.tls
                .iter()
                .flat_map(|t| t.certificate_refs.iter().flatten())
        })
        .map(|r| {
            ObjectKey::new(
                r.namespace.as_deref().unwrap_or(&key.namespace),
                r.name.as_str(),
            )
        })
        .collect();
    secrets.sort();
    secrets.dedup();
    SetRefs {
        gateway: super::listener_set::parent_gateway(key, set),
        secrets,
    }
}

fn grant_refs(grant: &ReferenceGrant) -> GrantRefs {
    GrantRefs {
        from: grant
            .spec
            .from
            .iter()
            .map(|f| (f.kind.clone(), f.namespace.clone()))
            .collect(),
        to: grant
            .spec
            .to
            .iter()
            .map(|t| (t.kind.clone(), t.name.clone()))
            .collect(),
    }
}

fn policy_targets(policy: &FailoverPolicy) -> Vec<Target> {
    policy
        .spec
        .target_refs
        .iter()
        .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
        .collect()
}

/// Whether some listener of some Gateway of `state` admits routes by namespace selector (only
/// then do Namespace labels matter to translation).
pub(crate) fn reads_namespace_labels(
    gateways: &BTreeMap<ObjectKey, super::gateway::GatewayState>,
) -> bool {
    gateways.values().any(|g| {
        g.listeners
            .iter()
            .any(|l| matches!(l.allowed, super::gateway::AllowedNamespaces::Selector(_)))
    })
}

/// Whether some Gateway of `state` admits ListenerSets by namespace selector while the cluster
/// has ListenerSets (only then do Namespace labels matter to which sets attach).
pub(crate) fn sets_read_namespace_labels(state: &ClusterState) -> bool {
    !state.listener_sets.is_empty()
        && state.gateways.values().any(|g| {
            matches!(
                g.spec
                    .allowed_listeners
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref())
                    .and_then(|n| n.from.as_ref()),
                Some(gateway_api::gateways::GatewayAllowedListenersNamespacesFrom::Selector)
            )
        })
}

/// The routes of `namespace` in `state`, of every kind (Namespace changes).
pub(crate) fn routes_in<'s>(
    state: &'s ClusterState,
    namespace: &'s str,
) -> impl Iterator<Item = RouteKey> + 's {
    let http = state
        .http_routes
        .range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(k, _)| RouteKey::http(k.clone()));
    let grpc = state
        .grpc_routes
        .range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(k, _)| RouteKey {
            kind: RouteKind::Grpc,
            key: k.clone(),
        });
    let tls = state
        .tls_routes
        .range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(k, _)| RouteKey::tls(k.clone()));
    http.chain(grpc).chain(tls)
}
