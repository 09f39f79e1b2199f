//! The in-memory index of every member cluster's objects.
//!
//! One [`ClusterState`] per member cluster holds exactly what translation reads, keyed for the
//! lookups translation makes (by `namespace/name`, EndpointSlices by the Service they belong to).
//! Watchers feed it through three methods per kind, linkerd-index style — nothing here awaits or
//! does I/O, so tests drive it directly:
//!
//! ```text
//! watcher event ──► ClusterState::apply::<K>(obj)      (added / modified)
//!               ──► ClusterState::delete::<K>(&key)    (deleted)
//!               ──► ClusterState::reset::<K>(objs)     (initial list / re-list: drops the rest)
//! ```
//!
//! Objects are stored as `Arc`s so a translation pass can be handed a cheap clone of the world.
//! Secrets are reduced to their `tls.crt`/`tls.key` text on the way in: private keys of Secrets
//! that are not certificates never stay in memory. ConfigMaps are reduced to their `ca.crt` text
//! (the only key a BackendTLSPolicy reads); ConfigMaps without one are kept as empty entries so
//! "exists but has no `ca.crt`" and "does not exist" stay apart. HTTPRoutes come from the
//! watcher as [`HttpRouteWithExtras`]: the standard type plus the experimental rule fields we
//! implement, indexed side by side (module `http_route_extras`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::listenersets::ListenerSet;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meridian_crds::mcs::{ServiceExport, ServiceImport};
use meridian_crds::meridian::{FailoverDrill, FailoverPolicy};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use meridian_model::snapshot::RouteKind;

use crate::status::StatusKind;

mod http_route_extras;
pub use http_route_extras::{DeliveredSpecs, HttpRouteWire, HttpRouteWithExtras, RouteExtras};

/// Name of a member cluster, as given on the command line.
pub type ClusterName = String;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The ConfigMap key a BackendTLSPolicy's CA bundle is read from.
pub const CA_CERT_KEY: &str = "ca.crt";

/// The label the API server puts on every Namespace with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of an object; cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A namespaced key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A key for a cluster-scoped object.
    pub fn cluster_scoped(name: impl Into<String>) -> Self {
        Self::new("", name)
    }

    fn namespaced_of(meta: &ObjectMeta) -> Option<Self> {
        Some(Self::new(meta.namespace.clone()?, meta.name.clone()?))
    }

    fn cluster_scoped_of(meta: &ObjectMeta) -> Option<Self> {
        Some(Self::cluster_scoped(meta.name.clone()?))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A route in the index: HTTPRoutes, GRPCRoutes and TLSRoutes are told apart by kind (they may
/// share a namespace and name). Ordered by kind first, HTTPRoutes, GRPCRoutes, then TLSRoutes,
/// as translation visits them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// HTTPRoute, GRPCRoute or TLSRoute.
    pub kind: RouteKind,
    /// Namespace and name.
    pub key: ObjectKey,
}

impl RouteKey {
    /// An HTTPRoute's key.
    pub fn http(key: ObjectKey) -> Self {
        Self {
            kind: RouteKind::Http,
            key,
        }
    }

    /// A GRPCRoute's key.
    pub fn grpc(key: ObjectKey) -> Self {
        Self {
            kind: RouteKind::Grpc,
            key,
        }
    }

    /// A TLSRoute's key.
    pub fn tls(key: ObjectKey) -> Self {
        Self {
            kind: RouteKind::Tls,
            key,
        }
    }

    /// The route key of an index kind's object (`None`: not a route kind).
    pub fn of_kind(kind: Kind, key: ObjectKey) -> Option<Self> {
        match kind {
            Kind::HttpRoute => Some(Self::http(key)),
            Kind::GrpcRoute => Some(Self::grpc(key)),
            Kind::TlsRoute => Some(Self::tls(key)),
            _ => None,
        }
    }

    /// The route key of a status kind's object (`None`: not a route kind).
    pub fn of_status(kind: StatusKind, key: ObjectKey) -> Option<Self> {
        match kind {
            StatusKind::HttpRoute => Some(Self::http(key)),
            StatusKind::GrpcRoute => Some(Self::grpc(key)),
            StatusKind::TlsRoute => Some(Self::tls(key)),
            _ => None,
        }
    }

    /// The index kind.
    pub fn index_kind(&self) -> Kind {
        match self.kind {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
            RouteKind::Tls => Kind::TlsRoute,
        }
    }

    /// The status kind.
    pub fn status_kind(&self) -> StatusKind {
        match self.kind {
            RouteKind::Http => StatusKind::HttpRoute,
            RouteKind::Grpc => StatusKind::GrpcRoute,
            RouteKind::Tls => StatusKind::TlsRoute,
        }
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.key)
    }
}

/// The certificate material of a Secret, as text. `None` when the key is absent or not UTF-8.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsSecret {
    /// `data["tls.crt"]`.
    pub cert_pem: Option<String>,
    /// `data["tls.key"]`.
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for TlsSecret {
    // Never print private keys into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret")
            .field("cert_pem_len", &self.cert_pem.as_ref().map(String::len))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl TlsSecret {
    /// Extracts `tls.crt` and `tls.key` (from `data`, or `stringData` for objects that were
    /// never round-tripped through an API server).
    pub fn from_secret(secret: &Secret) -> Self {
        let Secret {
            data,
            string_data,
            metadata: _,
            immutable: _,
            type_: _,
        } = secret;
        let get = |key: &str| -> Option<String> {
            data.as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .or_else(|| string_data.as_ref().and_then(|d| d.get(key)).cloned())
        };
        Self {
            cert_pem: get("tls.crt"),
            key_pem: get("tls.key"),
        }
    }
}

/// The kinds the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `gateway.networking.k8s.io/GatewayClass`.
    GatewayClass,
    /// `gateway.networking.k8s.io/Gateway`.
    Gateway,
    /// `gateway.networking.k8s.io/HTTPRoute`.
    HttpRoute,
    /// `gateway.networking.k8s.io/GRPCRoute`.
    GrpcRoute,
    /// `gateway.networking.k8s.io/TLSRoute`.
    TlsRoute,
    /// `gateway.networking.k8s.io/ListenerSet`.
    ListenerSet,
    /// `gateway.networking.k8s.io/ReferenceGrant`.
    ReferenceGrant,
    /// Core Namespace (labels only).
    Namespace,
    /// Core Service.
    Service,
    /// `discovery.k8s.io/EndpointSlice`.
    EndpointSlice,
    /// Core Secret (TLS material only).
    Secret,
    /// `multicluster.x-k8s.io/ServiceExport`.
    ServiceExport,
    /// `multicluster.x-k8s.io/ServiceImport`.
    ServiceImport,
    /// `meridian.dev/FailoverPolicy`.
    FailoverPolicy,
    /// `meridian.dev/FailoverDrill` (read by the drill runner, never by translation).
    FailoverDrill,
    /// `gateway.networking.k8s.io/BackendTLSPolicy`.
    BackendTlsPolicy,
    /// Core ConfigMap (`ca.crt` only).
    ConfigMap,
}

/// Everything translation knows about one member cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Region the cluster runs in (from configuration).
    pub region: String,
    /// Zones of the cluster (from configuration; endpoints carry their own zone).
    pub zones: Vec<String>,
    /// Network the cluster's pod IPs live on (from configuration). Clusters with equal names
    /// reach each other's endpoints directly; the others only through their east-west proxies.
    /// `""` (the default) for every cluster is one flat network.
    pub network: String,
    pub(crate) gateway_classes: BTreeMap<String, Arc<GatewayClass>>,
    pub(crate) gateways: BTreeMap<ObjectKey, Arc<Gateway>>,
    pub(crate) http_routes: BTreeMap<ObjectKey, Arc<HttpRoute>>,
    /// The experimental rule fields of the HTTPRoutes that use them (module
    /// `http_route_extras`).
    pub(crate) http_route_extras: BTreeMap<ObjectKey, RouteExtras>,
    pub(crate) grpc_routes: BTreeMap<ObjectKey, Arc<GrpcRoute>>,
    pub(crate) tls_routes: BTreeMap<ObjectKey, Arc<TlsRoute>>,
    pub(crate) listener_sets: BTreeMap<ObjectKey, Arc<ListenerSet>>,
    pub(crate) reference_grants: BTreeMap<ObjectKey, Arc<ReferenceGrant>>,
    pub(crate) namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub(crate) services: BTreeMap<ObjectKey, Arc<Service>>,
    /// Service key → slice name → slice.
    pub(crate) endpoint_slices: BTreeMap<ObjectKey, BTreeMap<String, Arc<EndpointSlice>>>,
    /// Slice key → the Service it was indexed under, so a delete (or a relabel) finds it.
    slice_owner: BTreeMap<ObjectKey, ObjectKey>,
    pub(crate) secrets: BTreeMap<ObjectKey, TlsSecret>,
    pub(crate) service_exports: BTreeSet<ObjectKey>,
    pub(crate) service_imports: BTreeMap<ObjectKey, Arc<ServiceImport>>,
    pub(crate) failover_policies: BTreeMap<ObjectKey, Arc<FailoverPolicy>>,
    pub(crate) failover_drills: BTreeMap<ObjectKey, Arc<FailoverDrill>>,
    pub(crate) backend_tls_policies: BTreeMap<ObjectKey, Arc<BackendTlsPolicy>>,
    /// ConfigMap key → its `ca.crt` (`None`: the ConfigMap has no such key).
    pub(crate) config_maps: BTreeMap<ObjectKey, Option<String>>,
}

/// A kind the index can hold. The three [`ClusterState`] methods are generic over it so a watcher
/// loop is written once for every kind.
pub trait Indexed: Sized {
    /// Which kind this is.
    const KIND: Kind;
    /// The object's key, or `None` if it lacks a name (or a namespace, for namespaced kinds).
    fn key(&self) -> Option<ObjectKey>;
    /// Inserts or replaces the object under `key`.
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self);
    /// Removes the object under `key`, if present.
    fn remove(state: &mut ClusterState, key: &ObjectKey);
    /// Removes every object of this kind.
    fn clear(state: &mut ClusterState);
    /// How `new` differs from the copy indexed under `key` ([`Revision`]); kinds without a
    /// status of ours always answer [`Revision::Changed`].
    fn revision(_state: &ClusterState, _key: &ObjectKey, _new: &Self) -> Revision {
        Revision::Changed
    }
}

/// How a new version of a status-bearing object (GatewayClass, Gateway, HTTPRoute, GRPCRoute,
/// TLSRoute, FailoverPolicy, BackendTLSPolicy) differs from the indexed copy, measured by what translation reads.
///
/// Translation reads of these objects their `spec`, their `status` (merged into the status it
/// writes, the staleness check, a Gateway's last known addresses and `Programmed` condition)
/// and of their metadata `name`, `namespace`, `generation`, `creationTimestamp` (route and
/// Gateway tie-breakers) and `annotations` (the Gateway's served-by header); `uid` and
/// `deletionTimestamp` are compared too (a new object under the same name is a new object).
/// Everything else — `resourceVersion`, `managedFields`, `labels`, `finalizers`,
/// `ownerReferences`, `generateName`, `selfLink`, `deletionGracePeriodSeconds` — is read by
/// nothing in translation, so a change there alone is [`Revision::Version`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revision {
    /// New, or something translation reads besides the status differs.
    Changed,
    /// Only the status differs (mostly the echo of one of our own writes).
    Status,
    /// Nothing translation reads differs (status included): a new resourceVersion only, as far
    /// as translation is concerned.
    Version,
}

impl Revision {
    /// Compares two versions of an object given as (metadata, spec, status).
    fn of<Spec: PartialEq, Status: PartialEq>(
        old: Option<(&ObjectMeta, &Spec, &Option<Status>)>,
        new: (&ObjectMeta, &Spec, &Option<Status>),
    ) -> Self {
        let Some(old) = old else {
            return Self::Changed;
        };
        if !same_read_metadata(old.0, new.0) || old.1 != new.1 {
            Self::Changed
        } else if old.2 != new.2 {
            Self::Status
        } else {
            Self::Version
        }
    }
}

/// Whether two metadata agree in every field translation reads ([`Revision`]). Destructured
/// whole so that a new field of `ObjectMeta` has to be sorted into one list or the other.
fn same_read_metadata(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    let ObjectMeta {
        annotations,
        creation_timestamp,
        deletion_grace_period_seconds: _,
        deletion_timestamp,
        finalizers: _,
        generate_name: _,
        generation,
        labels: _,
        managed_fields: _,
        name,
        namespace,
        owner_references: _,
        resource_version: _,
        self_link: _,
        uid,
    } = a;
    *annotations == b.annotations
        && *creation_timestamp == b.creation_timestamp
        && *deletion_timestamp == b.deletion_timestamp
        && *generation == b.generation
        && *name == b.name
        && *namespace == b.namespace
        && *uid == b.uid
}

impl ClusterState {
    /// A cluster in `region` with the given zones and no objects.
    pub fn new(region: impl Into<String>, zones: Vec<String>) -> Self {
        Self {
            region: region.into(),
            zones,
            ..Self::default()
        }
    }

    /// Adds or replaces an object. Returns `false` (and changes nothing) if the object has no
    /// usable key.
    pub fn apply<K: Indexed>(&mut self, obj: K) -> bool {
        match obj.key() {
            Some(key) => {
                K::insert(self, key, obj);
                true
            }
            None => false,
        }
    }

    /// Removes an object by key.
    pub fn delete<K: Indexed>(&mut self, key: &ObjectKey) {
        K::remove(self, key);
    }

    /// Replaces every object of kind `K` with `objs` (a watcher's initial list or re-list).
    pub fn reset<K: Indexed>(&mut self, objs: impl IntoIterator<Item = K>) {
        K::clear(self);
        for obj in objs {
            self.apply(obj);
        }
    }

    /// Labels of a namespace; the API server's `kubernetes.io/metadata.name` label is always
    /// present, even before the Namespace itself has been indexed.
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| namespace.to_string());
        labels
    }

    /// The EndpointSlices of a Service.
    pub fn endpoint_slices_of(&self, service: &ObjectKey) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices
            .get(service)
            .into_iter()
            .flat_map(|m| m.values().map(|s| s.as_ref()))
    }

    /// A Service by key.
    pub fn service(&self, key: &ObjectKey) -> Option<&Service> {
        self.services.get(key).map(Arc::as_ref)
    }

    /// The Services this cluster exports (ServiceExports present), in key order.
    pub fn service_exports(&self) -> impl Iterator<Item = &ObjectKey> {
        self.service_exports.iter()
    }

    /// The ServiceImports present in this cluster, in key order.
    pub fn service_imports(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceImport)> {
        self.service_imports.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// The HTTPRoutes of this cluster, in key order (for the status writer's re-merge).
    pub fn http_routes(&self) -> impl Iterator<Item = (&ObjectKey, &HttpRoute)> {
        self.http_routes.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// The GRPCRoutes of this cluster, in key order.
    pub fn grpc_routes(&self) -> impl Iterator<Item = (&ObjectKey, &GrpcRoute)> {
        self.grpc_routes.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// A GRPCRoute by key (the status writer replaces its status on this copy).
    pub fn grpc_route(&self, key: &ObjectKey) -> Option<&Arc<GrpcRoute>> {
        self.grpc_routes.get(key)
    }

    /// The TLSRoutes of this cluster, in key order.
    pub fn tls_routes(&self) -> impl Iterator<Item = (&ObjectKey, &TlsRoute)> {
        self.tls_routes.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// The ListenerSets of this cluster, in key order.
    pub fn listener_sets(&self) -> impl Iterator<Item = (&ObjectKey, &ListenerSet)> {
        self.listener_sets.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// A TLSRoute by key (the status writer replaces its status on this copy).
    pub fn tls_route(&self, key: &ObjectKey) -> Option<&Arc<TlsRoute>> {
        self.tls_routes.get(key)
    }

    /// The Gateways of this cluster, in key order.
    pub fn gateways(&self) -> impl Iterator<Item = (&ObjectKey, &Gateway)> {
        self.gateways.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// An HTTPRoute by key (the status writer replaces its status on this copy).
    pub fn http_route(&self, key: &ObjectKey) -> Option<&Arc<HttpRoute>> {
        self.http_routes.get(key)
    }

    /// `metadata.resourceVersion` of the indexed copy of a status-bearing object (GatewayClass
    /// keys are cluster-scoped). The status writer uses it to recognise a status it already wrote
    /// against the same copy.
    pub fn resource_version(&self, kind: StatusKind, key: &ObjectKey) -> Option<&str> {
        self.meta(kind, key)?.resource_version.as_deref()
    }

    /// Metadata of the indexed copy of a status-bearing object.
    pub fn meta(&self, kind: StatusKind, key: &ObjectKey) -> Option<&ObjectMeta> {
        Some(match kind {
            StatusKind::GatewayClass => &self.gateway_classes.get(&key.name)?.metadata,
            StatusKind::Gateway => &self.gateways.get(key)?.metadata,
            StatusKind::HttpRoute => &self.http_routes.get(key)?.metadata,
            StatusKind::GrpcRoute => &self.grpc_routes.get(key)?.metadata,
            StatusKind::TlsRoute => &self.tls_routes.get(key)?.metadata,
            StatusKind::FailoverPolicy => &self.failover_policies.get(key)?.metadata,
            StatusKind::BackendTlsPolicy => &self.backend_tls_policies.get(key)?.metadata,
            StatusKind::ListenerSet => &self.listener_sets.get(key)?.metadata,
        })
    }

    /// Whether a route is present in the index.
    pub fn has_route(&self, route: &RouteKey) -> bool {
        match route.kind {
            RouteKind::Http => self.http_routes.contains_key(&route.key),
            RouteKind::Grpc => self.grpc_routes.contains_key(&route.key),
            RouteKind::Tls => self.tls_routes.contains_key(&route.key),
        }
    }

    /// Whether a status-bearing object is present in the index.
    pub fn contains(&self, kind: StatusKind, key: &ObjectKey) -> bool {
        match kind {
            StatusKind::GatewayClass => self.gateway_classes.contains_key(&key.name),
            StatusKind::Gateway => self.gateways.contains_key(key),
            StatusKind::HttpRoute => self.http_routes.contains_key(key),
            StatusKind::GrpcRoute => self.grpc_routes.contains_key(key),
            StatusKind::TlsRoute => self.tls_routes.contains_key(key),
            StatusKind::FailoverPolicy => self.failover_policies.contains_key(key),
            StatusKind::BackendTlsPolicy => self.backend_tls_policies.contains_key(key),
            StatusKind::ListenerSet => self.listener_sets.contains_key(key),
        }
    }

    /// The Service an indexed EndpointSlice is filed under (from its `kubernetes.io/service-name`
    /// label), if any.
    pub fn endpoint_slice_service(&self, slice: &ObjectKey) -> Option<&ObjectKey> {
        self.slice_owner.get(slice)
    }

    /// Whether this cluster exports the Service `key` to the cluster set.
    pub fn exports(&self, key: &ObjectKey) -> bool {
        self.service_exports.contains(key)
    }

    /// Number of objects of every kind, for logs and metrics.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        BTreeMap::from([
            (Kind::GatewayClass, self.gateway_classes.len()),
            (Kind::Gateway, self.gateways.len()),
            (Kind::HttpRoute, self.http_routes.len()),
            (Kind::GrpcRoute, self.grpc_routes.len()),
            (Kind::TlsRoute, self.tls_routes.len()),
            (Kind::ListenerSet, self.listener_sets.len()),
            (Kind::ReferenceGrant, self.reference_grants.len()),
            (Kind::Namespace, self.namespaces.len()),
            (Kind::Service, self.services.len()),
            (Kind::EndpointSlice, self.slice_owner.len()),
            (Kind::Secret, self.secrets.len()),
            (Kind::ServiceExport, self.service_exports.len()),
            (Kind::ServiceImport, self.service_imports.len()),
            (Kind::FailoverPolicy, self.failover_policies.len()),
            (Kind::FailoverDrill, self.failover_drills.len()),
            (Kind::BackendTlsPolicy, self.backend_tls_policies.len()),
            (Kind::ConfigMap, self.config_maps.len()),
        ])
    }
}

/// All member clusters, by name.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Member clusters.
    pub clusters: BTreeMap<ClusterName, ClusterState>,
}

impl World {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member cluster (or replaces its region and zones, keeping its objects and its
    /// network: set [`ClusterState::network`] on the result).
    pub fn add_cluster(
        &mut self,
        name: impl Into<ClusterName>,
        region: impl Into<String>,
        zones: Vec<String>,
    ) -> &mut ClusterState {
        let state = self.clusters.entry(name.into()).or_default();
        state.region = region.into();
        state.zones = zones;
        state
    }

    /// Forgets a member cluster and everything indexed for it.
    pub fn remove_cluster(&mut self, name: &str) -> Option<ClusterState> {
        self.clusters.remove(name)
    }

    /// The state of a member cluster, if known.
    pub fn cluster(&self, name: &str) -> Option<&ClusterState> {
        self.clusters.get(name)
    }

    /// Mutable state of a member cluster, if known.
    pub fn cluster_mut(&mut self, name: &str) -> Option<&mut ClusterState> {
        self.clusters.get_mut(name)
    }

    /// The network of a member cluster (`None` for an unknown cluster).
    pub fn network(&self, cluster: &str) -> Option<&str> {
        self.clusters.get(cluster).map(|c| c.network.as_str())
    }

    /// Whether the member clusters are on more than one network (only then do snapshots carry
    /// east-west endpoints and backends).
    pub fn multi_network(&self) -> bool {
        let mut nets = self.clusters.values().map(|c| c.network.as_str());
        let first = nets.next();
        nets.any(|n| Some(n) != first)
    }
}

// --- per-kind index plumbing -------------------------------------------------------------------

macro_rules! simple_index {
    ($ty:ty, $kind:expr, $field:ident, $key:ident, status) => {
        simple_index!($ty, $kind, $field, $key, {
            fn revision(state: &ClusterState, key: &ObjectKey, new: &Self) -> Revision {
                Revision::of(
                    state
                        .$field
                        .get(key)
                        .map(|o| (&o.metadata, &o.spec, &o.status)),
                    (&new.metadata, &new.spec, &new.status),
                )
            }
        });
    };
    ($ty:ty, $kind:expr, $field:ident, $key:ident) => {
        simple_index!($ty, $kind, $field, $key, {});
    };
    ($ty:ty, $kind:expr, $field:ident, $key:ident, { $($extra:item)* }) => {
        impl Indexed for $ty {
            const KIND: Kind = $kind;
            fn key(&self) -> Option<ObjectKey> {
                ObjectKey::$key(&self.metadata)
            }
            fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
                state.$field.insert(key, Arc::new(obj));
            }
            fn remove(state: &mut ClusterState, key: &ObjectKey) {
                state.$field.remove(key);
            }
            fn clear(state: &mut ClusterState) {
                state.$field.clear();
            }
            $($extra)*
        }
    };
}

simple_index!(Gateway, Kind::Gateway, gateways, namespaced_of, status);
simple_index!(
    HttpRoute,
    Kind::HttpRoute,
    http_routes,
    namespaced_of,
    status
);
simple_index!(
    GrpcRoute,
    Kind::GrpcRoute,
    grpc_routes,
    namespaced_of,
    status
);
simple_index!(TlsRoute, Kind::TlsRoute, tls_routes, namespaced_of, status);
simple_index!(
    ListenerSet,
    Kind::ListenerSet,
    listener_sets,
    namespaced_of,
    status
);
simple_index!(
    ReferenceGrant,
    Kind::ReferenceGrant,
    reference_grants,
    namespaced_of
);
simple_index!(Service, Kind::Service, services, namespaced_of);
simple_index!(
    ServiceImport,
    Kind::ServiceImport,
    service_imports,
    namespaced_of
);
simple_index!(
    FailoverPolicy,
    Kind::FailoverPolicy,
    failover_policies,
    namespaced_of,
    status
);
simple_index!(
    BackendTlsPolicy,
    Kind::BackendTlsPolicy,
    backend_tls_policies,
    namespaced_of,
    status
);
simple_index!(
    FailoverDrill,
    Kind::FailoverDrill,
    failover_drills,
    namespaced_of
);

impl Indexed for GatewayClass {
    const KIND: Kind = Kind::GatewayClass;
    fn key(&self) -> Option<ObjectKey> {
        ObjectKey::cluster_scoped_of(&self.metadata)
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
        state.gateway_classes.insert(key.name, Arc::new(obj));
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        state.gateway_classes.remove(&key.name);
    }
    fn clear(state: &mut ClusterState) {
        state.gateway_classes.clear();
    }
    fn revision(state: &ClusterState, key: &ObjectKey, new: &Self) -> Revision {
        Revision::of(
            state
                .gateway_classes
                .get(&key.name)
                .map(|o| (&o.metadata, &o.spec, &o.status)),
            (&new.metadata, &new.spec, &new.status),
        )
    }
}

impl Indexed for Namespace {
    const KIND: Kind = Kind::Namespace;
    fn key(&self) -> Option<ObjectKey> {
        ObjectKey::cluster_scoped_of(&self.metadata)
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
        let labels = obj.metadata.labels.unwrap_or_default();
        state.namespaces.insert(key.name, labels);
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        state.namespaces.remove(&key.name);
    }
    fn clear(state: &mut ClusterState) {
        state.namespaces.clear();
    }
}

impl Indexed for Secret {
    const KIND: Kind = Kind::Secret;
    fn key(&self) -> Option<ObjectKey> {
        ObjectKey::namespaced_of(&self.metadata)
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
        state.secrets.insert(key, TlsSecret::from_secret(&obj));
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        state.secrets.remove(key);
    }
    fn clear(state: &mut ClusterState) {
        state.secrets.clear();
    }
}

impl Indexed for ConfigMap {
    const KIND: Kind = Kind::ConfigMap;
    fn key(&self) -> Option<ObjectKey> {
        ObjectKey::namespaced_of(&self.metadata)
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
        let ca = obj.data.and_then(|mut d| d.remove(CA_CERT_KEY));
        state.config_maps.insert(key, ca);
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        state.config_maps.remove(key);
    }
    fn clear(state: &mut ClusterState) {
        state.config_maps.clear();
    }
}

impl Indexed for ServiceExport {
    const KIND: Kind = Kind::ServiceExport;
    fn key(&self) -> Option<ObjectKey> {
        ObjectKey::namespaced_of(&self.metadata)
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, _obj: Self) {
        // Exports carry no spec: their existence is the whole message.
        state.service_exports.insert(key);
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        state.service_exports.remove(key);
    }
    fn clear(state: &mut ClusterState) {
        state.service_exports.clear();
    }
}

impl Indexed for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn key(&self) -> Option<ObjectKey> {
        ObjectKey::namespaced_of(&self.metadata)
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
        // The label may change (or vanish) between versions: unhook the old owner first.
        Self::remove(state, &key);
        let Some(service) = obj
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
        else {
            // A slice that belongs to no Service can never be a backend.
            return;
        };
        let service = ObjectKey::new(key.namespace.clone(), service.clone());
        state
            .endpoint_slices
            .entry(service.clone())
            .or_default()
            .insert(key.name.clone(), Arc::new(obj));
        state.slice_owner.insert(key, service);
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        if let Some(service) = state.slice_owner.remove(key)
            && let Some(slices) = state.endpoint_slices.get_mut(&service)
        {
            slices.remove(&key.name);
            if slices.is_empty() {
                state.endpoint_slices.remove(&service);
            }
        }
    }
    fn clear(state: &mut ClusterState) {
        state.endpoint_slices.clear();
        state.slice_owner.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn slice(ns: &str, name: &str, svc: Option<&str>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: svc
                    .map(|s| BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), s.to_string())])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: None,
            ports: None,
        }
    }

    #[test]
    fn slices_follow_their_service_label() {
        let mut c = ClusterState::default();
        let a = ObjectKey::new("ns", "a");
        let b = ObjectKey::new("ns", "b");
        assert!(c.apply(slice("ns", "s1", Some("a"))));
        assert!(c.apply(slice("ns", "s2", Some("a"))));
        assert_eq!(c.endpoint_slices_of(&a).count(), 2);
        // Relabelled: moves from a to b.
        c.apply(slice("ns", "s1", Some("b")));
        assert_eq!(c.endpoint_slices_of(&a).count(), 1);
        assert_eq!(c.endpoint_slices_of(&b).count(), 1);
        // Label removed: belongs to nobody.
        c.apply(slice("ns", "s1", None));
        assert_eq!(c.endpoint_slices_of(&b).count(), 0);
        c.delete::<EndpointSlice>(&ObjectKey::new("ns", "s2"));
        assert_eq!(c.endpoint_slices_of(&a).count(), 0);
        assert!(c.endpoint_slices.is_empty());
    }

    #[test]
    fn revisions_follow_what_translation_reads() {
        let mut c = ClusterState::default();
        let route = |f: &dyn Fn(&mut HttpRoute)| {
            let mut r = HttpRoute {
                metadata: ObjectMeta {
                    namespace: Some("ns".into()),
                    name: Some("r".into()),
                    uid: Some("u1".into()),
                    generation: Some(1),
                    resource_version: Some("1".into()),
                    ..Default::default()
                },
                spec: Default::default(),
                status: None,
            };
            f(&mut r);
            r
        };
        let key = ObjectKey::new("ns", "r");
        let revision = |c: &ClusterState, r: &HttpRoute| HttpRoute::revision(c, &key, r);
        assert_eq!(revision(&c, &route(&|_| {})), Revision::Changed, "new");
        c.apply(route(&|_| {}));
        type Edit<'a> = &'a dyn Fn(&mut HttpRoute);
        let cases: [(&str, Edit<'_>, Revision); 8] = [
            ("same", &|_| {}, Revision::Version),
            (
                "resourceVersion, managedFields",
                &|r| {
                    r.metadata.resource_version = Some("2".into());
                    r.metadata.managed_fields = Some(vec![Default::default()]);
                },
                Revision::Version,
            ),
            (
                "labels",
                &|r| r.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())])),
                Revision::Version,
            ),
            (
                "status",
                &|r| r.status = Some(Default::default()),
                Revision::Status,
            ),
            (
                "annotations",
                &|r| r.metadata.annotations = Some(BTreeMap::from([("a".into(), "b".into())])),
                Revision::Changed,
            ),
            (
                "uid (recreated)",
                &|r| r.metadata.uid = Some("u2".into()),
                Revision::Changed,
            ),
            (
                "generation",
                &|r| r.metadata.generation = Some(2),
                Revision::Changed,
            ),
            (
                "spec",
                &|r| r.spec.hostnames = Some(vec!["a.example".into()]),
                Revision::Changed,
            ),
        ];
        for (what, change, want) in cases {
            assert_eq!(revision(&c, &route(change)), want, "{what}");
        }
        // Kinds without a status of ours: always a change.
        let s = slice("ns", "s1", Some("a"));
        c.apply(s.clone());
        assert_eq!(
            EndpointSlice::revision(&c, &ObjectKey::new("ns", "s1"), &s),
            Revision::Changed
        );
    }

    #[test]
    fn grpc_routes_are_sorted_by_what_translation_reads_too() {
        let mut c = ClusterState::default();
        let route = GrpcRoute {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("r".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Default::default(),
            status: None,
        };
        let key = ObjectKey::new("ns", "r");
        assert_eq!(GrpcRoute::revision(&c, &key, &route), Revision::Changed);
        c.apply(route.clone());
        let mut labelled = route.clone();
        labelled.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert_eq!(GrpcRoute::revision(&c, &key, &labelled), Revision::Version);
        let mut status = route.clone();
        status.status = Some(Default::default());
        assert_eq!(GrpcRoute::revision(&c, &key, &status), Revision::Status);
        let mut spec = route;
        spec.spec.hostnames = Some(vec!["a.example".into()]);
        assert_eq!(GrpcRoute::revision(&c, &key, &spec), Revision::Changed);
        // An HTTPRoute of the same name is another object.
        assert!(!c.has_route(&RouteKey::http(key.clone())));
        assert!(c.has_route(&RouteKey::grpc(key)));
    }

    #[test]
    fn reset_drops_objects_missing_from_the_relist() {
        let mut c = ClusterState::default();
        c.apply(slice("ns", "s1", Some("a")));
        c.apply(slice("ns", "s2", Some("a")));
        c.reset([slice("ns", "s3", Some("b"))]);
        assert_eq!(c.endpoint_slices_of(&ObjectKey::new("ns", "a")).count(), 0);
        assert_eq!(c.endpoint_slices_of(&ObjectKey::new("ns", "b")).count(), 1);
        assert_eq!(c.counts()[&Kind::EndpointSlice], 1);
    }

    #[test]
    fn objects_without_a_name_are_ignored() {
        let mut c = ClusterState::default();
        let mut s = slice("ns", "x", Some("a"));
        s.metadata.name = None;
        assert!(!c.apply(s));
        assert_eq!(c.counts()[&Kind::EndpointSlice], 0);
    }

    #[test]
    fn namespace_name_label_is_always_present() {
        let mut c = ClusterState::default();
        assert_eq!(c.namespace_labels("web")[NAMESPACE_NAME_LABEL], "web");
        c.apply(Namespace {
            metadata: ObjectMeta {
                name: Some("web".into()),
                labels: Some(BTreeMap::from([("team".into(), "x".into())])),
                ..Default::default()
            },
            ..Default::default()
        });
        let labels = c.namespace_labels("web");
        assert_eq!(labels["team"], "x");
        assert_eq!(labels[NAMESPACE_NAME_LABEL], "web");
    }

    #[test]
    fn secrets_keep_only_tls_text() {
        let mut c = ClusterState::default();
        c.apply(Secret {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("cert".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("tls.crt".into(), k8s_openapi::ByteString(b"CERT".to_vec())),
                ("tls.key".into(), k8s_openapi::ByteString(vec![0xff, 0xfe])),
                ("other".into(), k8s_openapi::ByteString(b"x".to_vec())),
            ])),
            ..Default::default()
        });
        let s = &c.secrets[&ObjectKey::new("ns", "cert")];
        assert_eq!(s.cert_pem.as_deref(), Some("CERT"));
        assert_eq!(s.key_pem, None, "non-UTF-8 key is not text");
        assert!(!format!("{s:?}").contains("CERT"));
    }
}
