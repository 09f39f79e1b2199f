//! Watchers: one supervisor per member cluster, one kube-runtime watcher per (cluster, kind).
//!
//! ```text
//! supervisor(cluster)  every probe_interval (every unreachable_probe_interval while unreachable,
//!                      so a cluster coming back is noticed within it):
//!   1. probe discovery (one GET per API group-version) ── transport error ─► unreachable
//!   2. start a watcher for every kind whose resource is served, stop the ones that vanished
//!   3. unreachable for longer than endpoint_grace ─► stop the EndpointSlice watcher and
//!      withdraw the cluster's EndpointSlices; the next successful probe starts a fresh watcher
//!      (a full re-list) that brings them back
//!   4. reachability changes ─► Msg::Reachability (since when, last contact, grace end) for the
//!      StaleEndpoints Gateway condition, and the member-cluster metrics
//!
//! watcher(cluster, kind) = kube_runtime::watcher(..).default_backoff()
//!   Init, InitApply* , InitDone ─► Msg::Change(reset with the buffered objects)
//!   Apply(obj) / Delete(obj)    ─► Msg::Change(apply / delete)
//!   an object that fails to decode ─► logged, counted, and removed from the index
//! ```
//!
//! Everything a watcher learns reaches the reconcile loop as a message on one channel: the index
//! ([`World`](crate::World)) is owned by that loop and never locked. A cluster whose API is down
//! only delays its own watchers (each backs off on its own, capped at 30 s by kube-runtime's
//! default backoff); its last-known objects stay in the index — EndpointSlices for at most
//! `endpoint_grace` after the first failed probe, everything else until the cluster is back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream as _;
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
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use meridian_crds::mcs::{ServiceExport, ServiceImport};
use meridian_crds::meridian::{FailoverDrill, FailoverPolicy};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::StatusKind;
use crate::translate::UnreachableCluster;
use crate::world::{
    ClusterState, DeliveredSpecs, HttpRouteWire, HttpRouteWithExtras, Indexed, Kind, ObjectKey,
    Revision,
};

/// Every kind the controller watches, in start order.
pub const ALL_KINDS: [Kind; 17] = [
    Kind::Namespace,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Secret,
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::TlsRoute,
    Kind::ListenerSet,
    Kind::ReferenceGrant,
    Kind::ServiceExport,
    Kind::ServiceImport,
    Kind::FailoverPolicy,
    Kind::FailoverDrill,
    Kind::ConfigMap,
    Kind::BackendTlsPolicy,
];

/// What an index change may affect, so the reconcile loop can skip a full translation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Nothing translation reads.
    Nothing,
    /// Anything: translate everything (a list or re-list replaced a whole kind).
    Full,
    /// One object was added, modified or deleted: translate what it affects (incremental
    /// translation; the reconcile loop falls back to a full one when it must).
    Object(Kind, ObjectKey),
    /// Only the endpoints of these Services (EndpointSlice changes).
    Services(Vec<ObjectKey>),
    /// Only the status of this GatewayClass, Gateway, HTTPRoute, GRPCRoute, TLSRoute, FailoverPolicy or
    /// BackendTLSPolicy ([`Revision::Status`]): snapshots cannot change, only whether a status still needs
    /// writing. Mostly the echo of our own writes: the reconcile loop asks the incremental
    /// engine whether it carries exactly what the last pass computed (then nothing is
    /// translated); any other status change is re-checked at a slower pace.
    StatusOnly(Kind, ObjectKey),
    /// Nothing translation reads of this status-bearing object changed ([`Revision::Version`]:
    /// resourceVersion, managedFields, labels, …): only the status writer's bookkeeping (which
    /// copy a status was computed against) needs to know.
    Version(Kind, ObjectKey),
}

/// A change to one cluster's index, applied by the reconcile loop.
pub(crate) type Mutation = Box<dyn FnOnce(&mut ClusterState) -> Touch + Send>;

/// Messages from the watchers to the reconcile loop.
pub(crate) enum Msg {
    /// The first successful probe: the kinds whose initial list the cluster waits for.
    Watching {
        cluster: usize,
        kinds: BTreeSet<Kind>,
    },
    /// A change to the index.
    Change {
        cluster: usize,
        kind: Kind,
        mutation: Mutation,
        /// A complete list of this kind (the index now holds all of it): the cluster's initial
        /// sync waits for one per kind. Also set when a kind is dropped (empty is complete).
        list_done: bool,
    },
    /// The cluster's API became unreachable (`Some`: since when, until when its last-known
    /// endpoints are served) or reachable again (`None`).
    Reachability {
        cluster: usize,
        unreachable: Option<UnreachableCluster>,
    },
    /// A member cluster joins, reconnects or leaves ([`crate::ControllerHandle::add_cluster`]).
    Member(Box<crate::controller::MemberChange>),
    /// The admin listener asks what `meridian status` / `explain` show.
    Inspect(crate::inspect::InspectAsk),
}

/// Settings shared by a cluster's supervisor and watchers.
#[derive(Clone)]
pub(crate) struct WatchCtx {
    pub cluster: usize,
    pub name: Arc<str>,
    pub client: kube::Client,
    pub tx: mpsc::Sender<Msg>,
    pub metrics: Arc<Metrics>,
    pub probe_interval: Duration,
    /// Probe interval while the cluster is unreachable (capped by `probe_interval`).
    pub unreachable_probe_interval: Duration,
    pub probe_timeout: Duration,
    pub endpoint_grace: Duration,
}

/// The group-version and plural of a kind.
fn resource_of(kind: Kind) -> (String, String) {
    fn of<K: Resource<DynamicType = ()>>() -> (String, String) {
        (
            K::api_version(&()).into_owned(),
            K::plural(&()).into_owned(),
        )
    }
    match kind {
        Kind::GatewayClass => of::<GatewayClass>(),
        Kind::Gateway => of::<Gateway>(),
        Kind::HttpRoute => of::<HttpRoute>(),
        Kind::GrpcRoute => of::<GrpcRoute>(),
        Kind::TlsRoute => of::<TlsRoute>(),
        Kind::ListenerSet => of::<ListenerSet>(),
        Kind::ReferenceGrant => of::<ReferenceGrant>(),
        Kind::Namespace => of::<Namespace>(),
        Kind::Service => of::<Service>(),
        Kind::EndpointSlice => of::<EndpointSlice>(),
        Kind::Secret => of::<Secret>(),
        Kind::ServiceExport => of::<ServiceExport>(),
        Kind::ServiceImport => of::<ServiceImport>(),
        Kind::FailoverPolicy => of::<FailoverPolicy>(),
        Kind::FailoverDrill => of::<FailoverDrill>(),
        Kind::BackendTlsPolicy => of::<BackendTlsPolicy>(),
        Kind::ConfigMap => of::<ConfigMap>(),
    }
}

/// Built-in kinds every API server serves; only CRD-backed kinds are probed.
fn is_builtin(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Namespace | Kind::Service | Kind::EndpointSlice | Kind::Secret | Kind::ConfigMap
    )
}

/// Label value of a kind in metrics and logs.
pub(crate) fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::GatewayClass => "GatewayClass",
        Kind::Gateway => "Gateway",
        Kind::HttpRoute => "HTTPRoute",
        Kind::GrpcRoute => "GRPCRoute",
        Kind::TlsRoute => "TLSRoute",
        Kind::ListenerSet => "ListenerSet",
        Kind::ReferenceGrant => "ReferenceGrant",
        Kind::Namespace => "Namespace",
        Kind::Service => "Service",
        Kind::EndpointSlice => "EndpointSlice",
        Kind::Secret => "Secret",
        Kind::ServiceExport => "ServiceExport",
        Kind::ServiceImport => "ServiceImport",
        Kind::FailoverPolicy => "FailoverPolicy",
        Kind::FailoverDrill => "FailoverDrill",
        Kind::BackendTlsPolicy => "BackendTLSPolicy",
        Kind::ConfigMap => "ConfigMap",
    }
}

/// Asks discovery which kinds the cluster serves. `Err` means the API could not be reached (or
/// answered with something other than a list or 404).
async fn probe(client: &kube::Client) -> Result<BTreeSet<Kind>, kube::Error> {
    let mut by_group: BTreeMap<String, Vec<(Kind, String)>> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for kind in ALL_KINDS {
        if is_builtin(kind) {
            kinds.insert(kind);
        } else {
            let (gv, plural) = resource_of(kind);
            by_group.entry(gv).or_default().push((kind, plural));
        }
    }
    for (gv, wanted) in by_group {
        match client.list_api_group_resources(&gv).await {
            Ok(list) => {
                for (kind, plural) in wanted {
                    if list.resources.iter().any(|r| r.name == plural) {
                        kinds.insert(kind);
                    }
                }
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(kinds)
}

/// Runs a cluster's supervisor until `shutdown` turns true, then stops its watchers.
///
/// ```text
/// every probe_interval (unreachable: unreachable_probe_interval):
///   probe ─ ok ─► back from unreachable? Reachability(None) ─► first time: Watching(kinds)
///         │       ─► one watcher per served kind (started when its CRD appears, stopped and
///         │          forgotten when it goes)
///         └ failed/timed out ─► first failure: Reachability(since, grace end) ─► after the
///                              endpoint grace: EndpointSlice watcher stopped, slices forgotten
/// ```
pub(crate) async fn supervise(ctx: WatchCtx, mut shutdown: watch::Receiver<bool>) {
    ctx.metrics.member_registered(&ctx.name);
    let mut sup = Supervisor {
        ctx,
        running: BTreeMap::new(),
        announced: false,
        reported_missing: BTreeSet::new(),
        unreachable_since: None,
        last_contact: None,
        withdrawn: false,
    };
    loop {
        let probe_started = Instant::now();
        let probed = tokio::time::timeout(sup.ctx.probe_timeout, probe(&sup.ctx.client)).await;
        let went_on = match probed {
            Ok(Ok(available)) => {
                // `meridian status` shows it as the cluster's API latency.
                sup.ctx
                    .metrics
                    .member_api_latency(&sup.ctx.name, probe_started.elapsed());
                sup.reachable(&available).await
            }
            Ok(Err(e)) => sup.unreachable(Some(&e)).await,
            Err(_) => sup.unreachable(None).await,
        };
        if went_on.is_err() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(sup.pause()) => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    // `sup.running` drops here, stopping every watcher — also when this task itself is aborted.
}

/// The reconcile loop is gone: the supervisor stops.
struct LoopGone;

/// One cluster's supervisor state between probes.
struct Supervisor {
    ctx: WatchCtx,
    /// A watcher per watched kind.
    running: BTreeMap<Kind, AbortOnDrop>,
    /// `Msg::Watching` was sent (after the first successful probe).
    announced: bool,
    /// Kinds whose missing CRD was logged (logged once, until it appears).
    reported_missing: BTreeSet<Kind>,
    /// First failed probe of the current outage.
    unreachable_since: Option<Instant>,
    last_contact: Option<Timestamp>,
    /// The EndpointSlices were withdrawn in this outage (the endpoint grace ran out).
    withdrawn: bool,
}

impl Supervisor {
    async fn send(&self, msg: Msg) -> Result<(), LoopGone> {
        self.ctx.tx.send(msg).await.map_err(|_| LoopGone)
    }

    /// A successful probe: report the cluster back, announce its kinds once, and keep one
    /// watcher per served kind.
    async fn reachable(&mut self, available: &BTreeSet<Kind>) -> Result<(), LoopGone> {
        let name = self.ctx.name.clone();
        self.ctx.metrics.member_contact(&name);
        self.last_contact = Some(Timestamp::now());
        if self.unreachable_since.take().is_some() {
            tracing::info!(cluster = %name, "cluster API reachable again");
            self.send(Msg::Reachability {
                cluster: self.ctx.cluster,
                unreachable: None,
            })
            .await?;
        }
        if self.withdrawn {
            tracing::info!(cluster = %name, "re-listing EndpointSlices withdrawn while unreachable");
            self.withdrawn = false;
        }
        if !self.announced {
            self.announced = true;
            self.send(Msg::Watching {
                cluster: self.ctx.cluster,
                kinds: available.clone(),
            })
            .await?;
        }
        for kind in ALL_KINDS {
            if available.contains(&kind) {
                self.watch(kind);
            } else {
                self.skip(kind).await?;
            }
        }
        Ok(())
    }

    /// Starts the watcher of a served kind, unless it runs.
    fn watch(&mut self, kind: Kind) {
        if self.running.contains_key(&kind) {
            return;
        }
        let (name, label) = (&self.ctx.name, kind_label(kind));
        if self.reported_missing.remove(&kind) {
            tracing::info!(cluster = %name, kind = label, "CRD now served: watching");
        }
        self.running
            .insert(kind, AbortOnDrop(spawn_watcher(kind, self.ctx.clone())));
        self.ctx
            .metrics
            .kind_watched
            .with_label_values(&[name, label])
            .set(1);
    }

    /// A kind whose CRD is not served: logged once; a watcher of it is stopped and its objects
    /// forgotten.
    async fn skip(&mut self, kind: Kind) -> Result<(), LoopGone> {
        let (name, label) = (&self.ctx.name, kind_label(kind));
        if self.reported_missing.insert(kind) {
            tracing::warn!(
                cluster = %name,
                kind = label,
                "CRD not installed in this cluster: kind skipped (re-probed every {:?})",
                self.ctx.probe_interval
            );
        }
        if let Some(task) = self.running.remove(&kind) {
            drop(task);
            self.ctx
                .metrics
                .kind_watched
                .with_label_values(&[name, label])
                .set(0);
            if !forget_kind(&self.ctx, kind).await {
                return Err(LoopGone);
            }
        }
        Ok(())
    }

    /// A failed probe (`None`: it timed out): the first one reports the outage; once the
    /// endpoint grace has passed, the cluster's EndpointSlices are withdrawn.
    async fn unreachable(&mut self, error: Option<&kube::Error>) -> Result<(), LoopGone> {
        let name = self.ctx.name.clone();
        self.ctx.metrics.member_lost(&name);
        if self.unreachable_since.is_none() {
            match error {
                Some(e) => {
                    tracing::warn!(cluster = %name, error = %e, "cluster API unreachable; serving last-known state")
                }
                None => {
                    tracing::warn!(cluster = %name, "cluster API probe timed out; serving last-known state")
                }
            }
            self.unreachable_since = Some(Instant::now());
            let since = Timestamp::now();
            let grace =
                SignedDuration::try_from(self.ctx.endpoint_grace).unwrap_or(SignedDuration::MAX);
            self.send(Msg::Reachability {
                cluster: self.ctx.cluster,
                unreachable: Some(UnreachableCluster {
                    since,
                    last_contact: self.last_contact,
                    grace_ends: since.saturating_add(grace).unwrap_or(Timestamp::MAX),
                }),
            })
            .await?;
        }
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        if !self.withdrawn && since.elapsed() >= self.ctx.endpoint_grace {
            self.withdrawn = true;
            // Dropping the handle stops the watcher.
            self.running.remove(&Kind::EndpointSlice);
            tracing::warn!(
                cluster = %name,
                grace = ?self.ctx.endpoint_grace,
                "cluster API unreachable beyond the endpoint grace period: withdrawing its endpoints"
            );
            if !forget_kind(&self.ctx, Kind::EndpointSlice).await {
                return Err(LoopGone);
            }
        }
        Ok(())
    }

    /// An unreachable cluster is probed more often: the moment it answers again its pending
    /// status writes are retried and its status recomputed.
    fn pause(&self) -> Duration {
        if self.unreachable_since.is_some() {
            self.ctx
                .probe_interval
                .min(self.ctx.unreachable_probe_interval)
        } else {
            self.ctx.probe_interval
        }
    }
}

/// A task handle that stops the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Empties one kind of a cluster's index. Returns `false` when the reconcile loop is gone.
async fn forget_kind(ctx: &WatchCtx, kind: Kind) -> bool {
    fn clear<K: Indexed>() -> Mutation {
        Box::new(|state: &mut ClusterState| {
            state.reset::<K>(std::iter::empty());
            Touch::Full
        })
    }
    let mutation = match kind {
        Kind::GatewayClass => clear::<GatewayClass>(),
        Kind::Gateway => clear::<Gateway>(),
        Kind::HttpRoute => clear::<HttpRouteWithExtras>(),
        Kind::GrpcRoute => clear::<GrpcRoute>(),
        Kind::TlsRoute => clear::<TlsRoute>(),
        Kind::ListenerSet => clear::<ListenerSet>(),
        Kind::ReferenceGrant => clear::<ReferenceGrant>(),
        Kind::Namespace => clear::<Namespace>(),
        Kind::Service => clear::<Service>(),
        Kind::EndpointSlice => clear::<EndpointSlice>(),
        Kind::Secret => clear::<Secret>(),
        Kind::ServiceExport => clear::<ServiceExport>(),
        Kind::ServiceImport => clear::<ServiceImport>(),
        Kind::FailoverPolicy => clear::<FailoverPolicy>(),
        Kind::FailoverDrill => clear::<FailoverDrill>(),
        Kind::BackendTlsPolicy => clear::<BackendTlsPolicy>(),
        Kind::ConfigMap => clear::<ConfigMap>(),
    };
    let msg = Msg::Change {
        cluster: ctx.cluster,
        kind,
        mutation,
        list_done: true,
    };
    ctx.tx.send(msg).await.is_ok()
}

fn spawn_watcher(kind: Kind, ctx: WatchCtx) -> JoinHandle<()> {
    fn guarded<K>(ctx: WatchCtx) -> JoinHandle<()>
    where
        K: Indexed
            + Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        tokio::spawn(run_watcher::<K, DeserializeGuard<K>>(ctx))
    }
    match kind {
        Kind::GatewayClass => guarded::<GatewayClass>(ctx),
        Kind::Gateway => guarded::<Gateway>(ctx),
        // The standard type plus the experimental rule fields we implement, decoded by its own
        // wire type (one pass, see `HttpRouteWire`) instead of kube's guard.
        Kind::HttpRoute => tokio::spawn(run_watcher::<HttpRouteWithExtras, HttpRouteWire>(ctx)),
        Kind::GrpcRoute => guarded::<GrpcRoute>(ctx),
        Kind::TlsRoute => guarded::<TlsRoute>(ctx),
        Kind::ListenerSet => guarded::<ListenerSet>(ctx),
        Kind::ReferenceGrant => guarded::<ReferenceGrant>(ctx),
        Kind::Namespace => guarded::<Namespace>(ctx),
        Kind::Service => guarded::<Service>(ctx),
        Kind::EndpointSlice => guarded::<EndpointSlice>(ctx),
        Kind::Secret => guarded::<Secret>(ctx),
        Kind::ServiceExport => guarded::<ServiceExport>(ctx),
        Kind::ServiceImport => guarded::<ServiceImport>(ctx),
        Kind::FailoverPolicy => guarded::<FailoverPolicy>(ctx),
        Kind::FailoverDrill => guarded::<FailoverDrill>(ctx),
        Kind::BackendTlsPolicy => guarded::<BackendTlsPolicy>(ctx),
        Kind::ConfigMap => guarded::<ConfigMap>(ctx),
    }
}

/// The key of an object from its metadata (for deletes and undecodable objects).
fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ObjectKey> {
    Some(ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

/// An apply, with the Services whose endpoints it may change.
fn apply_mutation<K: Indexed + Resource + Send + 'static>(obj: K) -> Mutation {
    Box::new(move |state: &mut ClusterState| {
        if StatusKind::of(K::KIND).is_some() {
            let Some(key) = obj.key() else {
                return Touch::Nothing;
            };
            let revision = K::revision(state, &key, &obj);
            if !state.apply(obj) {
                return Touch::Nothing;
            }
            return match revision {
                Revision::Changed => Touch::Object(K::KIND, key),
                Revision::Status => Touch::StatusOnly(K::KIND, key),
                Revision::Version => Touch::Version(K::KIND, key),
            };
        }
        if K::KIND == Kind::FailoverDrill {
            // Drills never reach snapshots: the reconcile loop hands them to the drill runner.
            state.apply(obj);
            return Touch::Nothing;
        }
        if K::KIND != Kind::EndpointSlice {
            return match obj.key() {
                Some(key) if state.apply(obj) => Touch::Object(K::KIND, key),
                _ => Touch::Nothing,
            };
        }
        let Some(key) = obj.key() else {
            return Touch::Nothing;
        };
        let before = state.endpoint_slice_service(&key).cloned();
        state.apply(obj);
        let after = state.endpoint_slice_service(&key).cloned();
        Touch::Services(before.into_iter().chain(after).collect())
    })
}

fn delete_mutation<K: Indexed + 'static>(key: ObjectKey) -> Mutation {
    Box::new(move |state: &mut ClusterState| {
        if K::KIND == Kind::FailoverDrill {
            state.delete::<K>(&key);
            return Touch::Nothing;
        }
        if K::KIND != Kind::EndpointSlice {
            state.delete::<K>(&key);
            return Touch::Object(K::KIND, key);
        }
        let before = state.endpoint_slice_service(&key).cloned();
        state.delete::<K>(&key);
        Touch::Services(before.into_iter().collect())
    })
}

/// How objects of a kind come off the wire: a type that decodes whenever the object's
/// metadata does, holding the object or why it does not decode (kube's `DeserializeGuard` for
/// most kinds; HTTPRoutes have their own, see [`HttpRouteWire`]).
pub(crate) trait Wire<K>:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The object, or why it does not decode with the metadata that could be read (boxed:
    /// only the rare object that does not decode pays for it).
    fn into_object(self) -> Result<K, Box<InvalidObject>>;

    /// Notes what the watcher delivered (HTTPRoutes keep their spec for the echoes; see
    /// [`DeliveredSpecs`]): `Some(obj)` delivered, `None` the object under `key` is gone.
    fn delivered(_specs: &mut DeliveredSpecs, _key: &ObjectKey, _obj: Option<&K>) {}

    /// Notes a completed (re-)list: its objects are all there is.
    fn listed(_specs: &mut DeliveredSpecs, _objs: &[K]) {}
}

impl<K> Wire<K> for DeserializeGuard<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn into_object(self) -> Result<K, Box<InvalidObject>> {
        self.0.map_err(Box::new)
    }
}

impl Wire<HttpRouteWithExtras> for HttpRouteWire {
    fn into_object(self) -> Result<HttpRouteWithExtras, Box<InvalidObject>> {
        self.0.map_err(Box::new)
    }

    fn delivered(specs: &mut DeliveredSpecs, key: &ObjectKey, obj: Option<&HttpRouteWithExtras>) {
        match obj {
            Some(route) => specs.keep(route),
            None => specs.forget(&key.namespace, &key.name),
        }
    }

    fn listed(specs: &mut DeliveredSpecs, objs: &[HttpRouteWithExtras]) {
        specs.keep_only(objs);
        for route in objs {
            specs.keep(route);
        }
    }
}

/// Watches one kind in one cluster until aborted, its objects decoded through `W`.
async fn run_watcher<K, W>(ctx: WatchCtx)
where
    K: Indexed + Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    W: Wire<K>,
{
    let kind = K::KIND;
    let label = kind_label(kind);
    let events = ctx
        .metrics
        .watch_events
        .with_label_values(&[&ctx.name, label]);
    let api: Api<W> = Api::all(ctx.client.clone());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut mapper = EventMapper::<K, W>::new(&ctx);
    // kube decodes each event within the poll of the stream: the delivered specs are lent to
    // the decoding for exactly that long.
    let mut delivered = DeliveredSpecs::default();
    loop {
        let next =
            std::future::poll_fn(|cx| delivered.lend(|| stream.as_mut().poll_next(cx))).await;
        let Some(event) = next else {
            break;
        };
        let Some((mutation, list_done)) = mapper.map(event, &mut delivered) else {
            continue;
        };
        events.inc();
        let msg = Msg::Change {
            cluster: ctx.cluster,
            kind,
            mutation,
            list_done,
        };
        if ctx.tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// `obj` as the index keeps it: without its managedFields. Nothing the controller does reads
/// them (translation, status and the writer's bookkeeping all ignore them), and on a real
/// cluster they are often the largest part of an object's metadata (an entry per field manager
/// with its whole field set), held for every watched object for the controller's lifetime.
fn without_managed_fields<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().managed_fields = None;
    obj
}

/// Turns a kind's watch events into index mutations: the objects of a (re-)list are collected
/// and replace the kind's objects at once; objects that do not decode are counted, logged and
/// left out (an update that stops decoding removes the object).
struct EventMapper<'a, K, W> {
    ctx: &'a WatchCtx,
    label: &'static str,
    /// Objects of the list in progress.
    buffer: Vec<K>,
    errors: prometheus::IntCounter,
    decode_errors: prometheus::IntCounter,
    wire: std::marker::PhantomData<fn(W)>,
}

impl<'a, K, W> EventMapper<'a, K, W>
where
    K: Indexed + Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    W: Wire<K>,
{
    fn new(ctx: &'a WatchCtx) -> Self {
        let label = kind_label(K::KIND);
        let m = &ctx.metrics;
        Self {
            ctx,
            label,
            buffer: Vec::new(),
            errors: m.watch_errors.with_label_values(&[&ctx.name, label]),
            decode_errors: m.decode_errors.with_label_values(&[&ctx.name, label]),
            wire: std::marker::PhantomData,
        }
    }

    /// The mutation an event brings and whether it completes a list; `None` for events that
    /// change nothing yet (list in progress, undecodable, watch errors).
    fn map(
        &mut self,
        event: Result<Event<W>, watcher::Error>,
        delivered: &mut DeliveredSpecs,
    ) -> Option<(Mutation, bool)> {
        let (name, label) = (&self.ctx.name, self.label);
        match event {
            Ok(Event::Init) => {
                self.buffer.clear();
                None
            }
            Ok(Event::InitApply(obj)) => {
                if let Ok(obj) = self.decode(obj) {
                    self.buffer.push(obj);
                }
                None
            }
            Ok(Event::InitDone) => {
                let objs = std::mem::take(&mut self.buffer);
                W::listed(delivered, &objs);
                let n = objs.len();
                tracing::debug!(cluster = %name, kind = label, objects = n, "listed");
                let reset: Mutation = Box::new(move |state: &mut ClusterState| {
                    state.reset(objs);
                    Touch::Full
                });
                Some((reset, true))
            }
            Ok(Event::Apply(obj)) => match self.decode(obj) {
                Ok(obj) => {
                    if let Some(key) = obj.key() {
                        W::delivered(delivered, &key, Some(&obj));
                    }
                    Some((apply_mutation(obj), false))
                }
                Err(Some(key)) => {
                    W::delivered(delivered, &key, None);
                    Some((delete_mutation::<K>(key), false))
                }
                Err(None) => None,
            },
            Ok(Event::Delete(obj)) => key_of(obj.meta()).map(|key| {
                W::delivered(delivered, &key, None);
                (delete_mutation::<K>(key), false)
            }),
            Err(e) => {
                self.errors.inc();
                tracing::warn!(cluster = %name, kind = label, error = %e, "watch failed; backing off");
                None
            }
        }
    }

    /// The object, or (it does not decode) its key if it has one.
    fn decode(&self, obj: W) -> Result<K, Option<ObjectKey>> {
        obj.into_object()
            .map(without_managed_fields)
            .map_err(|invalid| {
                self.decode_errors.inc();
                let key = key_of(&invalid.metadata);
                tracing::warn!(
                    cluster = %self.ctx.name,
                    kind = self.label,
                    object = %key.as_ref().map(ToString::to_string).unwrap_or_default(),
                    error = %invalid.error,
                    "object does not decode; left out of the index"
                );
                key
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_index_keeps_no_managed_fields_and_everything_else() {
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "a", "namespace": "ns", "resourceVersion": "7", "labels": {"x": "y"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "apiVersion": "v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:ports": {}}}}]
            },
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        assert!(svc.metadata.managed_fields.is_some());
        let kept = without_managed_fields(svc.clone());
        assert_eq!(kept.metadata.managed_fields, None);
        let mut expected = svc;
        expected.metadata.managed_fields = None;
        assert_eq!(kept, expected);
    }
}
