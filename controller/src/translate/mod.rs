//! Translation: a pure function from the indexed state of every member cluster to one
//! [`Snapshot`] per cluster plus the status every owned object should have.
//!
//! ```text
//! World ──┬─ cluster A ──► 1. GatewayClasses with our controllerName   ──► class status
//!         │                2. their Gateways: listeners validated,       ──► (gateway status, step 4)
//!         │                   TLS refs resolved, conflicts found
//!         │                3. HTTPRoutes, GRPCRoutes, then TLSRoutes     ──► route status
//!         │                   (converted to the same shapes, modules `grpc`
//!         │                   and `tls`): parentRefs → listeners
//!         │                   (sectionName/port, allowedRoutes kinds and namespaces,
//!         │                   hostnames, HTTPRoute/GRPCRoute hostname conflicts and
//!         │                   TLSRoutes sharing a hostname: module `conflict`),
//!         │                   rules with defaults, backends → endpoints
//!         │                   (Service: this cluster; ServiceImport: every exporting cluster)
//!         │                4. Gateways: attachedRoutes, Accepted/Programmed ──► gateway status
//!         │                   served listeners ──► Snapshot for cluster A
//!         └─ cluster B ──► …
//! ```
//!
//! Everything the Gateway API CRDs would default is defaulted here (our CRDs carry no defaults),
//! and everything their CEL rules would reject is rejected here with a condition, never by
//! emitting a snapshot the proxy would refuse: each rule is checked with the proxy's own compiler
//! before it is kept (module `rules`), so one bad route cannot take a whole cluster's snapshot down.
//!
//! Inputs that are not Kubernetes objects come from [`TranslateConfig`]: the controller name, the
//! addresses each Gateway is served on, what the proxies report (for `Programmed`), the snapshot
//! generation of each cluster, the member clusters whose API is unreachable, the east-west
//! listeners of the proxies, and the clock. Given the same world and config the output is the
//! same, byte for byte: every map is ordered.
//!
//! Member clusters on different networks (`ClusterState::network`): once every snapshot is
//! built, each is rewritten for its cluster's network — endpoints of other networks become the
//! east-west listeners of their clusters' proxies, and backends other networks reach through this
//! network's proxies go into its `east_west` section (module `east_west`). With one network
//! (the default) this step changes nothing.
//!
//! An EndpointSlice change alone does not need all this: [`refresh_endpoints`] patches the
//! endpoint lists of the previous snapshots (and their east-west sections) in place. Other
//! changes go through [`Incremental`] (module `incremental`, with the dependency index of module
//! `deps`): only the routes and Gateways a change affects are translated again, with the same
//! functions, and the previous output is patched; [`translate`] stays the reference it must
//! equal (property test `tests/incremental_translate.rs`) and runs whenever the incremental path
//! cannot (see [`Fallback`]).
//!
//! Snapshot generations: each snapshot carries `cfg.generations[cluster]` (0 when absent). The
//! distribution layer compares contents and renumbers: translation neither knows nor needs to know
//! whether the content changed.

mod backend;
mod backend_tls;
mod conflict;
mod deps;
mod east_west;
mod failover;
mod gateway;
mod grpc;
mod incremental;
mod listener_set;
mod refresh;
mod route;
mod rules;
mod same_json;
mod selector;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use meridian_model::Snapshot;
pub use meridian_model::gateway::{GatewayRef, ProgrammedState, ProxyRefusal};

use crate::status::{StatusKind, StatusUpdate};
use crate::world::{ClusterName, ClusterState, RouteKey, World};

pub use self::east_west::{EastWestListeners, MissingRemote};
pub(crate) use self::failover::stale_endpoint_counts;
pub use self::failover::{UnreachableCluster, next_stale_expiry};
pub use self::incremental::{Changes, Fallback, Incremental, Pass};
pub use self::refresh::{AddressPolicy, refresh_endpoints, refresh_endpoints_touched};
pub use self::rules::{DurationError, parse_duration_ms};

/// Default `spec.controllerName` of the GatewayClasses Meridian owns.
pub const CONTROLLER_NAME: &str = "meridian.dev/gateway-controller";

/// Features the data plane implements, as reported in `GatewayClass.status.supportedFeatures`.
/// Conservative: a feature is listed only when the proxy implements it end to end.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "GRPCRouteRequestHeaderModifier",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ListenerSet",
    "ReferenceGrant",
    // Passthrough only: TLSRouteModeTerminate and TLSRouteModeMixed are not claimed.
    "TLSRoute",
];

/// A Gateway in a member cluster: the cluster, and the Gateway's [`GatewayRef`] there (the name
/// the distribution layer and the proxies use).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterGatewayRef {
    /// Member cluster.
    pub cluster: ClusterName,
    /// Namespace and name in that cluster.
    pub gateway: GatewayRef,
}

impl ClusterGatewayRef {
    /// A reference.
    pub fn new(
        cluster: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            gateway: GatewayRef::new(namespace, name),
        }
    }
}

/// Per member cluster, status objects by (kind, namespace — `""` for cluster-scoped — name).
pub type StatusObjects = BTreeMap<ClusterName, BTreeSet<(StatusKind, String, String)>>;

/// Inputs of translation that are not Kubernetes objects.
#[derive(Clone, Debug)]
pub struct TranslateConfig {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// Reported in `GatewayClass.status.supportedFeatures` (sorted on output).
    pub supported_features: Vec<String>,
    /// Data-plane state per Gateway; a Gateway not listed is [`ProgrammedState::Pending`].
    pub programmed: BTreeMap<ClusterGatewayRef, ProgrammedState>,
    /// Addresses the data plane can serve each Gateway on (first one binds the listeners). A
    /// Gateway with no entry has no address: `Programmed=False/AddressNotAssigned` and it is left
    /// out of the snapshot. When `spec.addresses` asks for IPs, each must be in this list
    /// (otherwise `AddressNotUsable`) and only those are used.
    pub addresses: BTreeMap<ClusterGatewayRef, Vec<IpAddr>>,
    /// Generation stamped on each cluster's snapshot (0 when absent).
    pub generations: BTreeMap<ClusterName, u64>,
    /// The clock, for `lastTransitionTime` of conditions that change.
    pub now: Timestamp,
    /// Member clusters whose API is unreachable while their last-known endpoints are still
    /// served: Gateways using those endpoints get `meridian.dev/StaleEndpoints`, and a
    /// FailoverPolicy's `staleEndpointTTL` drops them for its targets once expired.
    pub unreachable: BTreeMap<ClusterName, UnreachableCluster>,
    /// East-west listeners of each member cluster's connected proxies. Read only when the
    /// clusters are on more than one network: the endpoints of a cluster on another network
    /// than the snapshot's become one east-west endpoint per listener of that cluster (none
    /// listed: its endpoints are left out, see [`Output::east_west_missing`]).
    pub east_west: EastWestListeners,
    /// Per cluster, objects (kind, namespace, name) with a status of ours the index has not
    /// shown yet. For these, a status equal to the indexed copy is reported too, with
    /// [`StatusUpdate::settles`] set, so a write computed earlier can be superseded.
    /// Shared (`Arc`): the reconcile loop keeps it in step with its writers and hands the same
    /// set to every pass.
    pub unconfirmed: Arc<StatusObjects>,
    /// A hint for [`Incremental::update`]: per cluster, every object whose membership in
    /// `unconfirmed` may differ from the config of the previous pass (full or incremental) of
    /// the same [`Incremental`] — more is harmless, fewer is wrong. `None`: the incremental
    /// translation compares the whole sets. The full translation does not read it.
    pub unconfirmed_changed: Option<StatusObjects>,
    /// Loopback endpoint addresses are kept (`--allow-loopback-endpoints`: `meridian up` and
    /// tests with local backends). Without it they are refused like link-local, unspecified and
    /// multicast ones (module `backend`, "Endpoint address policy").
    pub allow_loopback_endpoints: bool,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            controller_name: CONTROLLER_NAME.to_string(),
            supported_features: SUPPORTED_FEATURES.iter().map(|s| s.to_string()).collect(),
            programmed: BTreeMap::new(),
            addresses: BTreeMap::new(),
            generations: BTreeMap::new(),
            now: Timestamp::UNIX_EPOCH,
            unreachable: BTreeMap::new(),
            east_west: EastWestListeners::new(),
            unconfirmed: Arc::new(BTreeMap::new()),
            unconfirmed_changed: None,
            allow_loopback_endpoints: false,
        }
    }
}

/// The result of one translation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// One snapshot per member cluster (possibly without gateways), with the Gateways of our
    /// classes in that cluster.
    pub snapshots: BTreeMap<ClusterName, Snapshot>,
    /// Status writes whose content differs (ignoring timestamps) from the indexed copy, ordered
    /// by cluster, then GatewayClasses, HTTPRoutes, GRPCRoutes, Gateways, FailoverPolicies and
    /// BackendTLSPolicies.
    pub status: Vec<StatusUpdate>,
    /// Per cluster, the backends whose endpoints in clusters of another network were left out
    /// of its snapshot because those clusters have no proxy with an east-west listener (empty
    /// with one network).
    pub east_west_missing: MissingRemote,
    /// Some route names endpoints the address policy refused (`meridian.dev/EndpointsRefused`):
    /// until a translation without any, endpoint changes get full translations, so the
    /// condition follows them.
    pub endpoints_refused: bool,
}

/// Translation context for one cluster.
pub(crate) struct Ctx<'a> {
    pub world: &'a World,
    pub cluster_name: &'a str,
    pub cluster: &'a ClusterState,
    pub cfg: &'a TranslateConfig,
}

/// A reason and message for a `False` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Translates the whole world. Pure: no I/O, no clock but `cfg.now`.
pub fn translate(world: &World, cfg: &TranslateConfig) -> Output {
    translate_full(world, cfg, None, None)
}

/// Where a full translation hands each cluster's status as soon as that cluster is done
/// (instead of in [`Output::status`]), so writes can start while later clusters translate.
pub(crate) type StatusSink<'a> = &'a mut dyn FnMut(Vec<StatusUpdate>);

/// [`translate`]; with `seed`, also records what incremental passes start from (module
/// `incremental`) — the same code, so the reference and the seed cannot disagree.
///
/// With `sink`, each cluster's status goes there when the cluster is done, in the order
/// [`Output::status`] documents, and `Output::status` stays empty.
pub(crate) fn translate_full(
    world: &World,
    cfg: &TranslateConfig,
    mut seed: Option<&mut incremental::Seed>,
    mut sink: Option<StatusSink<'_>>,
) -> Output {
    let mut out = Output::default();
    for (cluster_name, cluster) in &world.clusters {
        let mut status = Vec::new();
        let ctx = Ctx {
            world,
            cluster_name,
            cluster,
            cfg,
        };
        let mut record = seed.is_some().then(incremental::ClusterCache::default);
        let mut class_status = Vec::new();
        let classes = gateway::classes(&ctx, &mut class_status);
        let mut gateways = gateway::build_all(&ctx, &classes);
        gateway::detect_shared_socket_conflicts(&mut gateways);
        let mut backends = backend::Cache::default();
        let mut route_status = Vec::new();
        let conflicts = conflict::compute(&ctx, &gateways);
        let routes = cluster
            .http_routes
            .iter()
            .map(|(k, r)| (RouteKey::http(k.clone()), route::RouteSource::http(r)))
            .chain(
                cluster
                    .grpc_routes
                    .iter()
                    .map(|(k, r)| (RouteKey::grpc(k.clone()), route::RouteSource::grpc(r))),
            )
            .chain(
                cluster
                    .tls_routes
                    .iter()
                    .map(|(k, r)| (RouteKey::tls(k.clone()), route::RouteSource::tls(r))),
            );
        for (key, src) in routes {
            let processed = route::process(
                &ctx,
                &key,
                &src,
                &mut gateways,
                &mut backends,
                conflicts.get(&key),
            );
            if let Some(r) = &mut record {
                r.record_route(&key, &processed, &gateways);
            }
            route_status.extend(processed.update);
        }
        if let Some(r) = &mut record {
            r.record_rest(classes, &class_status, &gateways, conflicts);
        }
        status.extend(class_status);
        status.extend(route_status);
        let generation = cfg.generations.get(cluster_name).copied().unwrap_or(0);
        let mut snapshot = Snapshot::empty(generation);
        for gw in gateways.into_values() {
            let key = gw.key.clone();
            let set_updates = listener_set::statuses(&ctx, &gw);
            if let Some(r) = &mut record {
                r.record_hidden(&gw);
            }
            let (served, update) = gateway::finish(&ctx, gw);
            if let Some(r) = &mut record {
                r.record_gateway_status(&key, update.as_ref(), &set_updates);
            }
            snapshot.gateways.extend(served);
            status.extend(update);
            status.extend(set_updates);
        }
        let mut policy_status = Vec::new();
        failover::policy_status(&ctx, &mut policy_status);
        backend_tls::policy_status(&ctx, &mut policy_status);
        if let (Some(r), Some(seed)) = (record, seed.as_deref_mut()) {
            let mut r = r;
            r.record_policy_status(&policy_status);
            seed.clusters.insert(cluster_name.clone(), r);
        }
        status.extend(policy_status);
        out.snapshots.insert(cluster_name.clone(), snapshot);
        out.endpoints_refused |= backends.refused_any;
        match sink.as_deref_mut() {
            Some(sink) => sink(status),
            None => out.status.extend(status),
        }
    }
    out.east_west_missing = east_west::apply(world, &cfg.east_west, &mut out.snapshots);
    out
}

/// `metadata.generation`, 0 when unset (objects not read from an API server).
pub(crate) fn generation_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> i64 {
    meta.generation.unwrap_or(0)
}

#[cfg(test)]
mod tests;

/// The same JSON read as another generated type: GRPCRoute and TLSRoute parts are read in their
/// HTTPRoute shapes (parent refs, backend refs, status parents are equal in JSON).
pub(crate) fn recast<A: serde::Serialize, B: serde::de::DeserializeOwned>(
    a: &A,
) -> Result<B, String> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

/// [`recast`] of each item, leaving out those that do not convert (a failure would be a
/// `gateway-api` change of one of the shapes).
pub(crate) fn recast_all<'a, A: serde::Serialize + 'a, B: serde::de::DeserializeOwned>(
    items: impl IntoIterator<Item = &'a A>,
) -> Vec<B> {
    items.into_iter().filter_map(|a| recast(a).ok()).collect()
}
