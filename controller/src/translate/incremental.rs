//! Incremental translation: re-translate only what a change affects and patch the previous
//! output, with the full translation ([`super::translate`]) as the reference it must equal.
//!
//! A full pass run through [`Incremental::full`] is the reference translation itself; on the
//! way it keeps, per member cluster, what an incremental pass starts from:
//!
//! ```text
//! GatewayClasses: which are ours and accepted          (recomputed every pass: few)
//! Gateways:       validated state (listeners, conflicts, addresses) with each listener's
//!                 attached routes — the aggregates behind attachedRoutes and the conditions;
//!                 a Gateway's ListenerSets are part of it (module `listener_set`: their
//!                 listeners follow the Gateway's own, each marked with its set)
//! routes:         where each attached (Gateway, listener), whether endpoints were refused
//!                 (HTTPRoutes, GRPCRoutes and TLSRoutes, told apart by kind)
//! conflicts:      the listeners each route loses to a route of the other kind, or (TLSRoute)
//!                 to older TLSRoutes holding all its hostnames (module `conflict`)
//! status:         the pending update of every GatewayClass, route, Gateway (with its
//!                 ListenerSets') and policy
//! deps:           the dependency index (module `deps`)
//! ```
//!
//! An incremental pass ([`Incremental::update`]) is given the objects that changed since the
//! last pass and the current [`TranslateConfig`]:
//!
//! ```text
//! changed objects ──deps──► routes, Gateways, namespaces affected (a ListenerSet change: the
//!                           Gateway it names and the one it named, and the routes naming it)
//! config diff ────────────► Gateways whose data-plane state or addresses changed,
//!                           objects whose unconfirmed-status entry came or went
//! 1. classes recomputed; if they or any Gateway are affected (or a namespace's labels changed
//!    while some Gateway admits ListenerSets by selector), every Gateway of the cluster is
//!    validated again with its ListenerSets (listeners of different Gateways conflict over
//!    sockets) and compared with its kept state:
//!      same (same objects, sets     → kept as is
//!       and listeners)
//!      same attachment view         → attached sets carried over, status recomputed, snapshot
//!      (listeners routes select,      entry re-skeletoned with its routes moved over (also
//!       served, the sets and why      when it comes to serve or stops: see below)
//!       they add none)
//!      same own listeners (only     → like the above for the Gateway's own listeners; routes
//!       its sets' side changed)       naming one of its ListenerSets (before or now) or
//!                                     attached to a set's listener translated again
//!      only own listeners changed   → listeners with the same view (by index) keep their
//!       (added, removed, or another   attached routes; translated again: routes attached to
//!       view at an index; no sets)    a changed or removed listener, and routes naming it
//!                                     unless attached through their one parentRef to it only
//!                                     on unchanged listeners with no changed listener that
//!                                     might take them (selection, hostnames): a listener
//!                                     added for one host costs the routes of that host
//!      otherwise (new, gone, …)     → entry rebuilt empty, every route naming it or one of its
//!                                     ListenerSets (before or now), or attached to it,
//!                                     translated again
//! 2. with routes of both kinds (or two TLSRoutes) in the cluster, the conflicts are computed
//!    again (they read only route specs and Gateways) and every route whose blocked listeners
//!    changed joins the affected ones;
//!    each affected route: detached from the listeners it attached to (and their snapshot
//!    entries), translated again with route::process against the kept Gateways, attached,
//!    its served copies inserted in name order
//! 3. status of every Gateway a route attached to or left, or validated differently, with its
//!    ListenerSets' (they read its conditions and their listeners' attached routes), and of
//!    every FailoverPolicy
//! ```
//!
//! Gateways without snapshot entry (no address yet, e.g. at a cold start until a proxy
//! connects; not accepted; an address problem): the routes attached to them are kept aside, per
//! snapshot listener, as the entry would hold them, and patched like an entry. When such a
//! Gateway comes to serve with the same attachment view they move into its new entry (and out
//! again when it stops), so a proxy connecting translates no route. An endpoint refresh patches
//! only snapshots: the routes kept aside that use the refreshed Service are translated again by
//! the next incremental pass.
//!
//! Status-only changes ([`Changes::insert_status`]: nothing translation reads changed but the
//! status) are mostly the echo of our own writes. When the copy's status equals the update the
//! engine keeps for the object, translating it again would compute that same status, find the
//! copy saying it and only settle; so nothing is translated: the kept update becomes a settling
//! report while the object is unconfirmed and goes otherwise (a route whose status has no entry
//! of ours any more is not reported at all), and a Gateway's kept state points at the new copy.
//! Not for a Gateway whose data-plane state is unknown (its validation then reads its status).
//! A ListenerSet's echo is recognised against the update its Gateway keeps for it, and the kept
//! Gateway then reads the set from the new copy.
//! Likewise an object entering or leaving the unconfirmed sets changes only whether a settling
//! report is made: a kept write is made either way, a kept settling report goes when the object
//! is confirmed, and only an object with no kept update that becomes unconfirmed is translated
//! again (only translation can tell whether its copy already says what we want).
//!
//! Cost grows with what the change touches: one route change translates that route and
//! recomputes the status of its parent Gateways (counting attached routes from the kept sets);
//! a Service change translates the routes using it; a status echo of a Gateway revalidates the
//! cluster's few Gateways and recomputes that one's status. Snapshot order is kept exactly as a
//! full translation orders it: Gateways by namespace/name, listeners in spec order, routes by
//! namespace/name (binary search in each listener).
//!
//! Equal means equal for the same world and [`TranslateConfig`]. Between passes `cfg.now`
//! moves: the status kept for an object not affected by a change carries the
//! `lastTransitionTime` of the pass that computed it (when the transition was seen), where a
//! full translation would stamp its own clock on a transition still pending.
//!
//! Cost outside the affected objects: the cluster's GatewayClasses and FailoverPolicies are
//! recomputed every pass (few), the data-plane state of the config is compared with the last
//! pass's (one entry per Gateway), and so are its unconfirmed-status sets: whole (one entry per
//! status write not yet seen in the index) unless the config names what changed in them since
//! ([`TranslateConfig::unconfirmed_changed`], as the reconcile loop does), then only that.
//!
//! What is not done incrementally — [`Incremental::update`] answers [`Fallback`] and the caller
//! runs a full translation (which re-seeds everything):
//! * before the first full pass;
//! * member clusters joining or leaving (the cluster set differs from the last pass);
//! * any member cluster unreachable (stale endpoints, staleEndpointTTL: they read every
//!   served endpoint);
//! * member clusters on more than one network (the east-west rewrite reads every snapshot),
//!   and with it changes of the east-west listeners;
//! * a change of the controller name, supported features or loopback policy;
//! * with [`Incremental::set_broad_limit`], a change that would translate more than a given
//!   share of a large cluster's routes again ([`Fallback::Broad`]; the estimate runs before
//!   anything is changed). Off by default: measured at 10k routes, re-attaching every route
//!   incrementally (168 ms for a listener hostname change) costs no more than the full
//!   translation that also seeds the incremental state (188 ms), now that routes move as
//!   pointers (docs/benchmarks.md "Incremental translation").
//!
//! The caller also keeps running full passes for what it cannot describe as object changes:
//! re-lists (a watcher's initial list), drills and drains do not go through translation at all.
//! EndpointSlice changes take [`Incremental::refresh_endpoints`] in the reconcile loop (the
//! endpoint refresh, looking only at the routes the dependency index says name the Service);
//! given here (as the key of their Service) they translate the routes of that Service again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use meridian_model::Snapshot;
use meridian_model::patch::Touched;
use meridian_model::snapshot as model;
use serde_json::Value;

use super::conflict::{self, Conflicts};
use super::deps::{self, Affected, DepIndex};
use super::gateway::{self, GatewayState, ListenerState};
use super::listener_set::SetState;
use super::{
    ClusterGatewayRef, Ctx, Output, ProgrammedState, TranslateConfig, backend, listener_set, route,
};
use crate::status::{StatusKind, StatusUpdate};
use crate::world::{ClusterName, Kind, ObjectKey, RouteKey, RouteKind, World};

/// Objects that changed since the last pass, per member cluster, by kind and key. An
/// EndpointSlice change is recorded under the key of the Service it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    objects: BTreeMap<ClusterName, BTreeSet<(Kind, ObjectKey)>>,
    /// Status-bearing objects of which only the status changed ([`Changes::insert_status`]).
    statuses: BTreeMap<ClusterName, BTreeSet<(Kind, ObjectKey)>>,
}

impl Changes {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a change of object `kind` `key` in `cluster` (added, modified or deleted).
    pub fn insert(&mut self, cluster: &str, kind: Kind, key: ObjectKey) {
        self.objects
            .entry(cluster.to_string())
            .or_default()
            .insert((kind, key));
    }

    /// Notes that only the status of GatewayClass, Gateway, HTTPRoute, GRPCRoute or
    /// FailoverPolicy `key` in `cluster` changed (nothing else translation reads, see [`crate::Revision`]). When the
    /// indexed copy now carries exactly the status the last pass computed for it — the echo of
    /// our own write — [`Incremental::update`] translates nothing for it; any other status
    /// change is translated like [`Changes::insert`].
    pub fn insert_status(&mut self, cluster: &str, kind: Kind, key: ObjectKey) {
        self.statuses
            .entry(cluster.to_string())
            .or_default()
            .insert((kind, key));
    }

    /// Adds every change of `other`.
    pub fn extend(&mut self, other: Changes) {
        for (cluster, objects) in other.objects {
            self.objects.entry(cluster).or_default().extend(objects);
        }
        for (cluster, statuses) in other.statuses {
            self.statuses.entry(cluster).or_default().extend(statuses);
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.objects.values().all(BTreeSet::is_empty)
            && self.statuses.values().all(BTreeSet::is_empty)
    }

    /// Number of changed objects (status-only changes included).
    pub fn len(&self) -> usize {
        self.objects
            .values()
            .chain(self.statuses.values())
            .map(BTreeSet::len)
            .sum()
    }

    /// Per kind, how many objects changed beyond their status and how many only in their
    /// status (what a pass was given, for its log line).
    pub fn by_kind(&self) -> BTreeMap<Kind, (usize, usize)> {
        let mut out: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
        for (kind, _) in self.objects.values().flatten() {
            out.entry(*kind).or_default().0 += 1;
        }
        for (kind, _) in self.statuses.values().flatten() {
            out.entry(*kind).or_default().1 += 1;
        }
        out
    }

    /// Whether `kind` `key` of `cluster` is noted as changed beyond its status.
    fn has_object(&self, cluster: &str, kind: Kind, key: &ObjectKey) -> bool {
        self.objects
            .get(cluster)
            .is_some_and(|o| o.contains(&(kind, key.clone())))
    }
}

/// Why an incremental pass cannot run; the caller runs a full translation instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fallback {
    /// No full translation seeded the caches yet.
    #[error("no full translation yet")]
    NotSeeded,
    /// The member clusters differ from those of the last pass.
    #[error("member clusters changed")]
    Members,
    /// Some member cluster is unreachable.
    #[error("a member cluster is unreachable")]
    Unreachable,
    /// Member clusters are on several networks.
    #[error("member clusters are on several networks")]
    MultiNetwork,
    /// Controller name, supported features or the loopback policy changed.
    #[error("translation settings changed")]
    Settings,
    /// The change would translate most routes of a large cluster again.
    #[error("the change translates most routes again")]
    Broad,
}

/// What the last pass translated with, besides the world.
#[derive(Debug, Default)]
struct Seen {
    controller_name: String,
    supported_features: Vec<String>,
    allow_loopback_endpoints: bool,
    programmed: BTreeMap<ClusterGatewayRef, ProgrammedState>,
    addresses: BTreeMap<ClusterGatewayRef, Vec<IpAddr>>,
    unconfirmed: BTreeMap<ClusterName, BTreeSet<(StatusKind, String, String)>>,
}

impl Seen {
    fn of(cfg: &TranslateConfig) -> Self {
        let mut seen = Self {
            unconfirmed: (*cfg.unconfirmed).clone(),
            ..Self::default()
        };
        seen.note(cfg);
        seen
    }

    /// Takes everything but the unconfirmed sets from `cfg` (those are kept in step by
    /// [`Incremental::config_diff`]).
    fn note(&mut self, cfg: &TranslateConfig) {
        self.controller_name.clone_from(&cfg.controller_name);
        self.supported_features.clone_from(&cfg.supported_features);
        self.allow_loopback_endpoints = cfg.allow_loopback_endpoints;
        self.programmed.clone_from(&cfg.programmed);
        self.addresses.clone_from(&cfg.addresses);
    }
}

/// Where a route attached: Gateway, listener index and name in the snapshot
/// ([`gateway::snapshot_name`]: a ListenerSet's listeners are named after the set there).
type Attachment = (ObjectKey, usize, String);

/// What an incremental pass starts from in one member cluster (module docs).
#[derive(Default)]
pub(crate) struct ClusterCache {
    classes: BTreeMap<String, bool>,
    class_status: Vec<StatusUpdate>,
    /// Validated Gateways with their listeners' attached sets (no routes).
    gateways: BTreeMap<ObjectKey, GatewayState>,
    gateway_status: BTreeMap<ObjectKey, StatusUpdate>,
    /// Per Gateway, the status updates of its ListenerSets (recomputed with the Gateway's).
    set_status: BTreeMap<ObjectKey, Vec<StatusUpdate>>,
    /// Routes that attached somewhere.
    attached: BTreeMap<RouteKey, Vec<Attachment>>,
    route_status: BTreeMap<RouteKey, StatusUpdate>,
    /// Routes whose endpoints the address policy refused.
    refused: BTreeSet<RouteKey>,
    /// HTTPRoute/GRPCRoute conflicts of the last pass.
    conflicts: Conflicts,
    policy_status: Vec<StatusUpdate>,
    /// The routes of Gateways that have no snapshot entry (no address yet, e.g. until a proxy
    /// connects at a cold start): per Gateway, per snapshot listener name, what its entry would
    /// hold. When the Gateway comes to serve with the same attachment view, they move into the
    /// new entry instead of every route being translated again.
    hidden: Hidden,
    /// Routes whose copies in `hidden` may be outdated (an endpoint refresh patches only the
    /// snapshots): translated again by the next incremental pass.
    requeued: BTreeSet<RouteKey>,
}

/// Routes of Gateways without snapshot entry, per Gateway and snapshot listener name.
type Hidden = BTreeMap<ObjectKey, BTreeMap<String, Vec<Arc<model::Route>>>>;

/// A full translation's record of one cluster, kept by [`Incremental::full`].
#[derive(Default)]
pub(crate) struct Seed {
    pub clusters: BTreeMap<ClusterName, ClusterCache>,
}

impl ClusterCache {
    /// Notes one route processed by a full translation.
    pub(crate) fn record_route(
        &mut self,
        key: &RouteKey,
        processed: &route::Processed,
        gateways: &BTreeMap<ObjectKey, GatewayState>,
    ) {
        let attached: Vec<Attachment> = processed
            .attached
            .iter()
            .filter_map(|(gw, i)| {
                let g = gateways.get(gw)?;
                let l = g.listeners.get(*i)?;
                Some((gw.clone(), *i, gateway::snapshot_name(l, &g.sets)))
            })
            .collect();
        if !attached.is_empty() {
            self.attached.insert(key.clone(), attached);
        }
        if processed.refused {
            self.refused.insert(key.clone());
        }
        if let Some(u) = &processed.update {
            self.route_status.insert(key.clone(), u.clone());
        }
    }

    /// Notes the classes, Gateways (before their routes are taken for the snapshot) and
    /// status of a full translation.
    pub(crate) fn record_rest(
        &mut self,
        classes: BTreeMap<String, bool>,
        class_status: &[StatusUpdate],
        gateways: &BTreeMap<ObjectKey, GatewayState>,
        conflicts: Conflicts,
    ) {
        self.conflicts = conflicts;
        self.classes = classes;
        self.class_status = class_status.to_vec();
        self.gateways = gateways
            .iter()
            .map(|(k, g)| (k.clone(), without_routes(g)))
            .collect();
    }

    /// Notes the routes of Gateway `gw` (about to be finished) when it has no snapshot entry.
    pub(crate) fn record_hidden(&mut self, gw: &GatewayState) {
        if gateway::serves(gw) {
            return;
        }
        let listeners = gw
            .listeners
            .iter()
            .filter(|l| l.served() && l.protocol.is_some())
            .map(|l| {
                let mut routes = l.routes.clone();
                routes.sort_by(|a, b| {
                    (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind))
                });
                (gateway::snapshot_name(l, &gw.sets), routes)
            })
            .collect();
        self.hidden.insert(gw.key.clone(), listeners);
    }

    pub(crate) fn record_gateway_status(
        &mut self,
        key: &ObjectKey,
        update: Option<&StatusUpdate>,
        set_updates: &[StatusUpdate],
    ) {
        if let Some(u) = update {
            self.gateway_status.insert(key.clone(), u.clone());
        }
        if !set_updates.is_empty() {
            self.set_status.insert(key.clone(), set_updates.to_vec());
        }
    }

    /// The Gateway whose kept status updates hold ListenerSet `set`'s.
    fn set_holder(&self, set: &ObjectKey) -> Option<ObjectKey> {
        self.set_status
            .iter()
            .find(|(_, v)| v.iter().any(|u| is_set_update(u, set)))
            .map(|(gw, _)| gw.clone())
    }

    /// The kept status update of ListenerSet `set`.
    fn set_update(&self, set: &ObjectKey) -> Option<&StatusUpdate> {
        self.set_status
            .values()
            .flatten()
            .find(|u| is_set_update(u, set))
    }

    pub(crate) fn record_policy_status(&mut self, updates: &[StatusUpdate]) {
        self.policy_status = updates.to_vec();
    }
}

/// Incremental translation state (module docs).
pub struct Incremental {
    seeded: bool,
    clusters: BTreeMap<ClusterName, ClusterCache>,
    deps: DepIndex,
    seen: Seen,
    /// `(minimum routes, percent)` of [`Fallback::Broad`] (`usize::MAX`: never).
    broad: (usize, usize),
}

impl Default for Incremental {
    fn default() -> Self {
        Self {
            seeded: false,
            clusters: BTreeMap::new(),
            deps: DepIndex::default(),
            seen: Seen::default(),
            broad: (usize::MAX, usize::MAX),
        }
    }
}

impl std::fmt::Debug for Incremental {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incremental")
            .field("seeded", &self.seeded)
            .field("clusters", &self.clusters.len())
            .finish_non_exhaustive()
    }
}

/// What an incremental pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// The status updates of the objects it recomputed (a subset of [`Incremental::status`]).
    pub status: Vec<StatusUpdate>,
    /// Routes translated again.
    pub routes: usize,
    /// Gateways whose status was recomputed.
    pub gateways: usize,
    /// Status-only changes that were the echo of what the last pass computed: nothing was
    /// translated for them ([`Changes::insert_status`]).
    pub echoes: usize,
    /// Per member cluster, the Gateways whose snapshot entry it changed (replaced, added,
    /// removed, or a route put in or taken out): every other Gateway of the snapshot is as it
    /// was, its routes the same allocations. The publish path compares only these
    /// ([`meridian_model::patch::diff_since`]).
    pub touched: BTreeMap<ClusterName, Touched>,
}

impl Incremental {
    /// Nothing kept yet: the first pass must be [`Incremental::full`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets when a broad change falls back ([`Fallback::Broad`]): in clusters of at least
    /// `min_routes` routes, when more than `percent` % of them would be translated again
    /// (`usize::MAX` as either: never, the default; see the module docs for why).
    pub fn set_broad_limit(&mut self, min_routes: usize, percent: usize) {
        self.broad = (min_routes, percent);
    }

    /// The full translation ([`super::translate`], the same code) of `world`, keeping what the
    /// next incremental passes start from.
    pub fn full(&mut self, world: &World, cfg: &TranslateConfig) -> Output {
        self.full_with(world, cfg, None)
    }

    /// [`Self::full`], handing each cluster's status to `sink` as soon as that cluster is
    /// translated (`Output::status` then stays empty).
    pub(crate) fn full_with(
        &mut self,
        world: &World,
        cfg: &TranslateConfig,
        sink: Option<super::StatusSink<'_>>,
    ) -> Output {
        let mut seed = Seed::default();
        let out = super::translate_full(world, cfg, Some(&mut seed), sink);
        self.clusters = seed.clusters;
        self.deps = DepIndex::build(world);
        self.seen = Seen::of(cfg);
        self.seeded = true;
        out
    }

    /// Whether an incremental pass can run on `world` with `cfg`.
    pub fn check(&self, world: &World, cfg: &TranslateConfig) -> Result<(), Fallback> {
        if !self.seeded {
            return Err(Fallback::NotSeeded);
        }
        if !world.clusters.keys().eq(self.clusters.keys()) {
            return Err(Fallback::Members);
        }
        if !cfg.unreachable.is_empty() {
            return Err(Fallback::Unreachable);
        }
        if world.multi_network() {
            return Err(Fallback::MultiNetwork);
        }
        let s = &self.seen;
        if s.controller_name != cfg.controller_name
            || s.supported_features != cfg.supported_features
            || s.allow_loopback_endpoints != cfg.allow_loopback_endpoints
        {
            return Err(Fallback::Settings);
        }
        Ok(())
    }

    /// Translates again what `changes` (and the differences of `cfg` from the last pass's)
    /// affect, patching `snapshots` (the last pass's, as the caller keeps them) in place.
    /// On [`Fallback`] the snapshots were not changed: run [`Incremental::full`] (which
    /// re-seeds everything this pass may have started to note).
    pub fn update(
        &mut self,
        world: &World,
        cfg: &TranslateConfig,
        changes: &Changes,
        snapshots: &mut BTreeMap<ClusterName, Snapshot>,
    ) -> Result<Pass, Fallback> {
        self.check(world, cfg)?;
        let mut affected = Affected::default();
        for (cluster, objects) in &changes.objects {
            for (kind, key) in objects {
                self.deps.change(world, cluster, *kind, key, &mut affected);
            }
        }
        // Status-only changes: the echo of what the last pass computed translates nothing (its
        // kept update learns the echo below, once the unconfirmed sets are current); any other
        // status change translates its object again.
        let mut echoes: Vec<(&ClusterName, Kind, &ObjectKey)> = Vec::new();
        for (cluster, statuses) in &changes.statuses {
            for (kind, key) in statuses {
                if changes.has_object(cluster, *kind, key) {
                    continue;
                }
                if self.echo_of(world, cluster, *kind, key, &cfg.programmed) {
                    echoes.push((cluster, *kind, key));
                } else {
                    self.deps.change(world, cluster, *kind, key, &mut affected);
                }
            }
        }
        self.config_diff(cfg, &mut affected);
        self.seen.note(cfg);
        self.check_broad(world, cfg, &affected)?;
        for &(cluster, kind, key) in &echoes {
            self.learn_echo(world, cfg, cluster, kind, key, &affected);
        }

        let mut pass = Pass {
            echoes: echoes.len(),
            ..Pass::default()
        };
        let empty = BTreeSet::new();
        for (name, cluster) in &world.clusters {
            let Some(cache) = self.clusters.get_mut(name) else {
                continue;
            };
            let ctx = Ctx {
                world,
                cluster_name: name,
                cluster,
                cfg,
            };
            let generation = cfg.generations.get(name).copied().unwrap_or(0);
            let snapshot = snapshots
                .entry(name.clone())
                .or_insert_with(|| Snapshot::empty(generation));
            snapshot.generation = generation;
            let dirty = Dirty {
                classes: affected.classes.contains(name),
                gateways: affected.gateways.get(name).unwrap_or(&empty),
                routes: affected.routes.remove(name).unwrap_or_default(),
                namespaces: affected.namespaces.get(name),
            };
            let mut hidden = std::mem::take(&mut cache.hidden);
            let mut out = Out {
                snapshot,
                touched: Touched::nothing(),
                hidden: &mut hidden,
            };
            cache.update(&ctx, &self.deps, dirty, &mut out, &mut pass);
            let touched = out.touched;
            cache.hidden = hidden;
            if !touched.is_nothing() {
                pass.touched.insert(name.clone(), touched);
            }
        }
        Ok(pass)
    }

    /// [`Fallback::Broad`] when a large cluster would translate most of its routes again: counts
    /// (an upper bound) the routes the pass would translate, before it changes anything.
    fn check_broad(
        &self,
        world: &World,
        cfg: &TranslateConfig,
        affected: &Affected,
    ) -> Result<(), Fallback> {
        let (min_routes, percent) = self.broad;
        for (name, cluster) in &world.clusters {
            let total =
                cluster.http_routes.len() + cluster.grpc_routes.len() + cluster.tls_routes.len();
            let Some(cache) = self.clusters.get(name).filter(|_| total >= min_routes) else {
                continue;
            };
            let ctx = Ctx {
                world,
                cluster_name: name,
                cluster,
                cfg,
            };
            let routes = cache.estimate(&ctx, &self.deps, affected);
            if routes.saturating_mul(100) > total.saturating_mul(percent) {
                return Err(Fallback::Broad);
            }
        }
        Ok(())
    }

    /// Gateways whose data-plane state or addresses changed, and objects whose unconfirmed
    /// status entry came or went (their `settles` report changes); brings the kept unconfirmed
    /// sets up to `cfg`'s. With `cfg.unconfirmed_changed` only the objects it names are looked
    /// at (the reconcile loop's case: a cold start has thousands unconfirmed, a pass changes a
    /// few hundred of them), else the whole sets are compared.
    fn config_diff(&mut self, cfg: &TranslateConfig, affected: &mut Affected) {
        fn diff<V: PartialEq>(
            old: &BTreeMap<ClusterGatewayRef, V>,
            new: &BTreeMap<ClusterGatewayRef, V>,
            affected: &mut Affected,
        ) {
            let keys: BTreeSet<&ClusterGatewayRef> = old.keys().chain(new.keys()).collect();
            for r in keys {
                if old.get(r) != new.get(r) {
                    affected
                        .gateways
                        .entry(r.cluster.clone())
                        .or_default()
                        .insert(ObjectKey::new(
                            r.gateway.namespace.as_str(),
                            r.gateway.name.as_str(),
                        ));
                }
            }
        }
        diff(&self.seen.programmed, &cfg.programmed, affected);
        diff(&self.seen.addresses, &cfg.addresses, affected);
        let mut changed: Vec<(ClusterName, (StatusKind, String, String))> = Vec::new();
        match &cfg.unconfirmed_changed {
            Some(hint) => {
                for (cluster, keys) in hint {
                    let new = cfg.unconfirmed.get(cluster);
                    let old = self.seen.unconfirmed.entry(cluster.clone()).or_default();
                    for key in keys {
                        let now = new.is_some_and(|s| s.contains(key));
                        let was = if now {
                            !old.insert(key.clone())
                        } else {
                            old.remove(key)
                        };
                        if now != was {
                            changed.push((cluster.clone(), key.clone()));
                        }
                    }
                }
                self.seen.unconfirmed.retain(|_, s| !s.is_empty());
            }
            None => {
                let empty = BTreeSet::new();
                let clusters: BTreeSet<&ClusterName> = self
                    .seen
                    .unconfirmed
                    .keys()
                    .chain(cfg.unconfirmed.keys())
                    .collect();
                for cluster in clusters {
                    let old = self.seen.unconfirmed.get(cluster).unwrap_or(&empty);
                    let new = cfg.unconfirmed.get(cluster).unwrap_or(&empty);
                    changed.extend(
                        old.symmetric_difference(new)
                            .map(|k| (cluster.clone(), k.clone())),
                    );
                }
                self.seen.unconfirmed = (*cfg.unconfirmed).clone();
            }
        }
        // A membership change translates again only an object with no update kept
        // (`membership_changed`).
        for (cluster, entry) in changed {
            let now = cfg
                .unconfirmed
                .get(&cluster)
                .is_some_and(|s| s.contains(&entry));
            let (kind, ns, name) = entry;
            let key = ObjectKey::new(ns, name);
            let Some(cache) = self.clusters.get_mut(&cluster) else {
                continue;
            };
            match kind {
                StatusKind::Gateway => {
                    if membership_changed(&mut cache.gateway_status, &key, now) {
                        affected.gateways.entry(cluster).or_default().insert(key);
                    }
                }
                StatusKind::HttpRoute | StatusKind::GrpcRoute | StatusKind::TlsRoute => {
                    let Some(route) = RouteKey::of_status(kind, key) else {
                        continue;
                    };
                    if membership_changed(&mut cache.route_status, &route, now) {
                        affected.routes.entry(cluster).or_default().insert(route);
                    }
                }
                // Kept with its Gateway's: translating it again is validating that Gateway.
                StatusKind::ListenerSet => match cache.set_holder(&key) {
                    Some(gw) => {
                        if let Some(kept) = cache.set_status.get_mut(&gw) {
                            remove_settled_set(kept, &key, now);
                            if kept.is_empty() {
                                cache.set_status.remove(&gw);
                            }
                        }
                    }
                    None => {
                        if let Some(gw) = self.deps.set_gateway(&cluster, &key).filter(|_| now) {
                            affected
                                .gateways
                                .entry(cluster)
                                .or_default()
                                .insert(gw.clone());
                        }
                    }
                },
                // Recomputed every pass.
                StatusKind::GatewayClass
                | StatusKind::FailoverPolicy
                | StatusKind::BackendTlsPolicy => {}
            }
        }
    }

    /// Whether the indexed copy of status-bearing object `kind` `key` of `cluster` carries
    /// exactly the status the last pass computed for it (the update it keeps), so that
    /// translating it again would compute the same status, find the copy already saying it
    /// and only settle ([`Changes::insert_status`]). `false` for a Gateway whose data-plane
    /// state is unknown: its validation then reads its status (last known addresses).
    fn echo_of(
        &self,
        world: &World,
        cluster: &str,
        kind: Kind,
        key: &ObjectKey,
        programmed: &BTreeMap<ClusterGatewayRef, ProgrammedState>,
    ) -> bool {
        fn carries<T: serde::Serialize>(status: Option<&T>, kept: Option<&StatusUpdate>) -> bool {
            match (status, kept) {
                // Compared in place: no JSON tree of the copy's status per echo.
                (Some(s), Some(u)) => super::same_json::serializes_to(s, &u.status),
                _ => false,
            }
        }
        if !self.seeded {
            return false;
        }
        let (Some(state), Some(cache)) = (world.cluster(cluster), self.clusters.get(cluster))
        else {
            return false;
        };
        match kind {
            Kind::HttpRoute => {
                let Some(route) = state.http_routes.get(key) else {
                    return false;
                };
                // Translation merges into the copy's status, or into an empty one.
                let empty = gateway_api::httproutes::HttpRouteStatus::default();
                carries(
                    Some(route.status.as_ref().unwrap_or(&empty)),
                    cache.route_status.get(&RouteKey::http(key.clone())),
                )
            }
            Kind::GrpcRoute => {
                let Some(route) = state.grpc_routes.get(key) else {
                    return false;
                };
                // Translation reads a GRPCRoute's status converted to the HTTPRoute shape
                // (module `grpc`) and merges into that.
                let status = gateway_api::httproutes::HttpRouteStatus {
                    parents: super::grpc::status_parents(route),
                };
                carries(
                    Some(&status),
                    cache.route_status.get(&RouteKey::grpc(key.clone())),
                )
            }
            Kind::TlsRoute => {
                let Some(route) = state.tls_routes.get(key) else {
                    return false;
                };
                // Read converted to the HTTPRoute shape (module `tls`), like a GRPCRoute's.
                let status = gateway_api::httproutes::HttpRouteStatus {
                    parents: super::tls::status_parents(route),
                };
                carries(
                    Some(&status),
                    cache.route_status.get(&RouteKey::tls(key.clone())),
                )
            }
            Kind::Gateway => {
                let gref = ClusterGatewayRef::new(cluster, &key.namespace, &key.name);
                if programmed.get(&gref) == Some(&ProgrammedState::Unknown) {
                    return false;
                }
                carries(
                    state.gateways.get(key).and_then(|g| g.status.as_ref()),
                    cache.gateway_status.get(key),
                )
            }
            Kind::GatewayClass => carries(
                state
                    .gateway_classes
                    .get(&key.name)
                    .and_then(|c| c.status.as_ref()),
                cache.class_status.iter().find(|u| u.name == key.name),
            ),
            Kind::FailoverPolicy => carries(
                state
                    .failover_policies
                    .get(key)
                    .and_then(|p| p.status.as_ref()),
                cache.policy_status.iter().find(|u| {
                    u.kind == StatusKind::FailoverPolicy
                        && u.name == key.name
                        && u.namespace.as_deref() == Some(key.namespace.as_str())
                }),
            ),
            // Kept with the Gateway the set attaches to.
            Kind::ListenerSet => carries(
                state.listener_sets.get(key).and_then(|s| s.status.as_ref()),
                cache.set_update(key),
            ),
            // Kept beside FailoverPolicy's (module `backend_tls`, recomputed every pass).
            Kind::BackendTlsPolicy => carries(
                state
                    .backend_tls_policies
                    .get(key)
                    .and_then(|p| p.status.as_ref()),
                cache.policy_status.iter().find(|u| {
                    u.kind == StatusKind::BackendTlsPolicy
                        && u.name == key.name
                        && u.namespace.as_deref() == Some(key.namespace.as_str())
                }),
            ),
            _ => false,
        }
    }

    /// Whether the indexed copy of `kind` `key` of `cluster` is the echo of the status the last
    /// pass computed for it ([`Changes::insert_status`]): the reconcile loop starts no pass for
    /// such a change.
    pub fn is_echo(&self, world: &World, cluster: &str, kind: Kind, key: &ObjectKey) -> bool {
        self.echo_of(world, cluster, kind, key, &self.seen.programmed)
    }

    /// What translating an echoed object again would change, without translating it: its
    /// update now only settles (reported while the object is unconfirmed, else dropped), and a
    /// Gateway's kept state points at the new copy. Objects this pass translates anyway are
    /// left to it.
    fn learn_echo(
        &mut self,
        world: &World,
        cfg: &TranslateConfig,
        cluster: &ClusterName,
        kind: Kind,
        key: &ObjectKey,
        affected: &Affected,
    ) {
        let Some(cache) = self.clusters.get_mut(cluster) else {
            return;
        };
        let Some(status_kind) = StatusKind::of(kind) else {
            return;
        };
        let unconfirmed = cfg
            .unconfirmed
            .get(cluster)
            .is_some_and(|s| s.contains(&(status_kind, key.namespace.clone(), key.name.clone())));
        match kind {
            Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute => {
                let Some(route) = RouteKey::of_kind(kind, key.clone()) else {
                    return;
                };
                if affected
                    .routes
                    .get(cluster)
                    .is_some_and(|s| s.contains(&route))
                {
                    return;
                }
                // A route whose status carries no entry of ours (it names none of our Gateways
                // any more, and our entries were just taken out) is not ours to report on at all.
                let ours = cache
                    .route_status
                    .get(&route)
                    .is_some_and(|u| route_has_entry_of(u, &cfg.controller_name));
                settle_echo(&mut cache.route_status, &route, unconfirmed && ours);
            }
            Kind::Gateway => {
                if affected
                    .gateways
                    .get(cluster)
                    .is_some_and(|s| s.contains(key))
                {
                    return;
                }
                if let (Some(state), Some(gw)) = (
                    cache.gateways.get_mut(key),
                    world.cluster(cluster).and_then(|c| c.gateways.get(key)),
                ) {
                    state.gateway = Arc::clone(gw);
                }
                settle_echo(&mut cache.gateway_status, key, unconfirmed);
            }
            Kind::ListenerSet => {
                let Some(gw) = cache.set_holder(key) else {
                    return;
                };
                if affected
                    .gateways
                    .get(cluster)
                    .is_some_and(|s| s.contains(&gw))
                {
                    return;
                }
                // The kept Gateway reads the set's status from the new copy from now on.
                if let (Some(state), Some(set)) = (
                    cache.gateways.get_mut(&gw),
                    world
                        .cluster(cluster)
                        .and_then(|c| c.listener_sets.get(key)),
                ) && let Some(s) = state.sets.iter_mut().find(|s| s.key == *key)
                {
                    s.set = Arc::clone(set);
                }
                if let Some(updates) = cache.set_status.get_mut(&gw) {
                    let at = updates.iter().position(|u| is_set_update(u, key));
                    match at {
                        Some(i) if unconfirmed => updates[i].settles = true,
                        Some(i) => {
                            updates.remove(i);
                        }
                        None => {}
                    }
                    if updates.is_empty() {
                        cache.set_status.remove(&gw);
                    }
                }
            }
            // Classes and policies are recomputed every pass.
            _ => {}
        }
    }

    /// Every status update a full translation of the same world would give, in its order:
    /// by cluster, GatewayClasses, HTTPRoutes, GRPCRoutes, Gateways, FailoverPolicies,
    /// BackendTLSPolicies.
    pub fn status(&self) -> Vec<StatusUpdate> {
        let mut out = Vec::new();
        for c in self.clusters.values() {
            out.extend(c.class_status.iter().cloned());
            out.extend(c.route_status.values().cloned());
            // Each Gateway's update, then its ListenerSets', as translation emits them.
            let gateways: BTreeSet<&ObjectKey> =
                c.gateway_status.keys().chain(c.set_status.keys()).collect();
            for key in gateways {
                out.extend(c.gateway_status.get(key).cloned());
                out.extend(c.set_status.get(key).into_iter().flatten().cloned());
            }
            out.extend(c.policy_status.iter().cloned());
        }
        out
    }

    /// [`super::refresh_endpoints_touched`] for the snapshots this engine produced (the last
    /// pass's, as the caller keeps them): the routes naming the Service (and, when exported, the
    /// ServiceImport of its name) are found through the dependency index and where they
    /// attached, so only those are looked at — not every route of every snapshot. Before the
    /// first full pass, and with several networks, every route is looked at.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh_endpoints(
        &mut self,
        world: &World,
        snapshots: &mut BTreeMap<ClusterName, Snapshot>,
        cluster: &str,
        service: &ObjectKey,
        listeners: &super::EastWestListeners,
        missing: &mut super::MissingRemote,
        policy: &mut super::AddressPolicy,
    ) -> BTreeMap<ClusterName, Touched> {
        let locate = |c: &str, import: bool| -> Option<super::refresh::Places> {
            let backend = deps::Backend {
                import,
                key: service.clone(),
            };
            let cache = self.clusters.get(c)?;
            let mut places = Vec::new();
            for route in self.deps.routes_using(c, &backend) {
                for (gw, _, listener) in cache.attached.get(route).into_iter().flatten() {
                    places.push((gw.clone(), listener.clone(), route.clone()));
                }
            }
            Some(places)
        };
        let indexed: Option<&super::refresh::Locate<'_>> =
            if self.seeded { Some(&locate) } else { None };
        let touched = super::refresh::refresh_in(
            world, snapshots, cluster, service, listeners, missing, policy, indexed,
        );
        // Routes kept aside for Gateways without snapshot entry are not refreshed: they are
        // translated again by the next incremental pass (before they can move into an entry).
        for import in [false, true] {
            let backend = deps::Backend {
                import,
                key: service.clone(),
            };
            for c in self.clusters.keys().cloned().collect::<Vec<_>>() {
                let routes: Vec<RouteKey> = self
                    .deps
                    .routes_using(&c, &backend)
                    .into_iter()
                    .cloned()
                    .collect();
                let Some(cache) = self.clusters.get_mut(&c) else {
                    continue;
                };
                for route in routes {
                    let hidden = cache
                        .attached
                        .get(&route)
                        .is_some_and(|a| a.iter().any(|(gw, _, _)| cache.hidden.contains_key(gw)));
                    if hidden {
                        cache.requeued.insert(route);
                    }
                }
            }
        }
        touched
    }

    /// Whether some route names endpoints the address policy refused
    /// ([`Output::endpoints_refused`]).
    pub fn endpoints_refused(&self) -> bool {
        self.clusters.values().any(|c| !c.refused.is_empty())
    }
}

/// What an unconfirmed-set membership change does to an object's kept status update
/// (`push_if_changed`): a write (`settles == false`) is made whatever the membership; a
/// settling report is made only while the object is unconfirmed (dropped when it leaves the
/// set); with no update kept, only a translation can tell whether the copy says what we want
/// (then it would settle). `true`: translate the object again.
fn membership_changed<K: Ord>(
    kept: &mut BTreeMap<K, StatusUpdate>,
    key: &K,
    unconfirmed: bool,
) -> bool {
    match kept.get(key).map(|u| u.settles) {
        Some(false) => false,
        Some(true) => {
            if !unconfirmed {
                kept.remove(key);
            }
            false
        }
        None => unconfirmed,
    }
}

/// [`membership_changed`] for ListenerSet `set` whose update its Gateway keeps: a settling
/// report goes when the set is confirmed, a write stays.
fn remove_settled_set(kept: &mut Vec<StatusUpdate>, set: &ObjectKey, unconfirmed: bool) {
    if !unconfirmed {
        kept.retain(|u| !(u.settles && is_set_update(u, set)));
    }
}

/// Whether `u` is the status update of ListenerSet `set`.
fn is_set_update(u: &StatusUpdate, set: &ObjectKey) -> bool {
    u.kind == StatusKind::ListenerSet
        && u.name == set.name
        && u.namespace.as_deref() == Some(set.namespace.as_str())
}

/// The kept update of an echoed object: it now only settles, reported while `report` (the
/// object is unconfirmed, and for a route its status still has an entry of ours), else gone.
fn settle_echo<K: Ord>(kept: &mut BTreeMap<K, StatusUpdate>, key: &K, report: bool) {
    if report {
        if let Some(u) = kept.get_mut(key) {
            u.settles = true;
        }
    } else {
        kept.remove(key);
    }
}

/// Whether a route status update carries a `status.parents` entry of `controller`.
fn route_has_entry_of(u: &StatusUpdate, controller: &str) -> bool {
    u.status
        .get("parents")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter()
                .any(|p| p.get("controllerName").and_then(Value::as_str) == Some(controller))
        })
}

/// One cluster's snapshot being patched, and the Gateways the patching touched.
struct Out<'s> {
    snapshot: &'s mut Snapshot,
    touched: Touched,
    /// The cluster's [`ClusterCache::hidden`] entries, patched like the snapshot's.
    hidden: &'s mut Hidden,
}

/// What is affected in one cluster.
struct Dirty<'a> {
    classes: bool,
    gateways: &'a BTreeSet<ObjectKey>,
    routes: BTreeSet<RouteKey>,
    namespaces: Option<&'a BTreeSet<String>>,
}

impl ClusterCache {
    /// How many routes [`ClusterCache::update`] would translate again for `affected` (an upper
    /// bound: the sets it unites are counted apart), without changing anything.
    fn estimate(&self, ctx: &Ctx<'_>, deps: &DepIndex, affected: &Affected) -> usize {
        let name = ctx.cluster_name;
        let mut n = affected.routes.get(name).map_or(0, BTreeSet::len);
        let gateways_dirty = affected.gateways.get(name).is_some_and(|g| !g.is_empty());
        let set_labels = affected.namespaces.get(name).is_some_and(|n| !n.is_empty())
            && deps::sets_read_namespace_labels(ctx.cluster);
        let classes = gateway::classes(ctx, &mut Vec::new());
        if affected.classes.contains(name)
            || classes != self.classes
            || gateways_dirty
            || set_labels
        {
            let mut fresh = gateway::build_all(ctx, &classes);
            gateway::detect_shared_socket_conflicts(&mut fresh);
            let keys: BTreeSet<&ObjectKey> = self.gateways.keys().chain(fresh.keys()).collect();
            for key in keys {
                let old = self.gateways.get(key);
                let new = fresh.get(key);
                if let (Some(old), Some(new)) = (old, new)
                    && (same_state(old, new) || attach_view(old) == attach_view(new))
                {
                    continue;
                }
                let sets = old.into_iter().chain(new).flat_map(|g| &g.sets);
                n += deps.routes_naming_sets(name, sets.map(|s| &s.key)).len();
                if let (Some(old), Some(new)) = (old, new)
                    && own_view(old) == own_view(new)
                {
                    let on_sets = old.listeners.iter().filter(|l| l.set.is_some());
                    n += on_sets.map(|l| l.attached.len()).sum::<usize>();
                    continue;
                }
                n += deps.routes_naming(name, key).len();
                n += old.map_or(0, |o| o.listeners.iter().map(|l| l.attached.len()).sum());
            }
        }
        if let Some(namespaces) = affected.namespaces.get(name)
            && deps::reads_namespace_labels(&self.gateways)
        {
            for ns in namespaces {
                n += deps::routes_in(ctx.cluster, ns).count();
            }
        }
        n
    }

    fn update(
        &mut self,
        ctx: &Ctx<'_>,
        deps: &DepIndex,
        dirty: Dirty<'_>,
        snapshot: &mut Out<'_>,
        pass: &mut Pass,
    ) {
        let Dirty {
            classes: classes_changed,
            gateways: gateways_dirty,
            mut routes,
            namespaces,
        } = dirty;
        // 1. Classes (few: always), then Gateways when anything they read changed.
        let mut class_status = Vec::new();
        let classes = gateway::classes(ctx, &mut class_status);
        // Namespace labels decide which ListenerSets a selector admits.
        let set_labels = namespaces.is_some_and(|n| !n.is_empty())
            && deps::sets_read_namespace_labels(ctx.cluster);
        let revalidate =
            classes_changed || classes != self.classes || !gateways_dirty.is_empty() || set_labels;
        self.classes = classes;
        pass.status.extend(class_status.iter().cloned());
        self.class_status = class_status;
        routes.extend(std::mem::take(&mut self.requeued));
        let mut touched: BTreeSet<ObjectKey> = gateways_dirty.clone();
        if revalidate {
            self.revalidate(ctx, deps, snapshot, &mut routes, &mut touched);
        }
        if let Some(namespaces) = namespaces
            && deps::reads_namespace_labels(&self.gateways)
        {
            for ns in namespaces {
                routes.extend(deps::routes_in(ctx.cluster, ns));
            }
        }

        // 2. Routes: first those whose HTTPRoute/GRPCRoute conflicts changed.
        let conflicts = conflict::compute(ctx, &self.gateways);
        if conflicts != self.conflicts {
            let keys: BTreeSet<&RouteKey> = conflicts.keys().chain(self.conflicts.keys()).collect();
            for key in keys {
                if conflicts.get(key) != self.conflicts.get(key) {
                    routes.insert(key.clone());
                }
            }
            self.conflicts = conflicts;
        }
        let mut backends = backend::Cache::default();
        for key in &routes {
            self.retranslate(ctx, key, &mut backends, snapshot, &mut touched, pass);
        }
        pass.routes += routes.len();

        // 3. Status of the Gateways routes came to or left, and of the policies.
        for key in &touched {
            let gw = self.gateways.get(key);
            match gw.and_then(|gw| gateway::status(ctx, gw)) {
                Some(u) => {
                    pass.status.push(u.clone());
                    self.gateway_status.insert(key.clone(), u);
                }
                None => {
                    self.gateway_status.remove(key);
                }
            }
            // Its ListenerSets' status reads the Gateway's conditions and listeners.
            let sets = gw.map(|gw| listener_set::statuses(ctx, gw));
            match sets.filter(|s| !s.is_empty()) {
                Some(updates) => {
                    pass.status.extend(updates.iter().cloned());
                    self.set_status.insert(key.clone(), updates);
                }
                None => {
                    self.set_status.remove(key);
                }
            }
        }
        pass.gateways += touched.len();
        let mut policy_status = Vec::new();
        super::failover::policy_status(ctx, &mut policy_status);
        super::backend_tls::policy_status(ctx, &mut policy_status);
        pass.status.extend(policy_status.iter().cloned());
        self.policy_status = policy_status;
    }

    /// Validates every Gateway of the cluster again and reconciles it with the kept one
    /// (module docs, step 1).
    fn revalidate(
        &mut self,
        ctx: &Ctx<'_>,
        deps: &DepIndex,
        snapshot: &mut Out<'_>,
        routes: &mut BTreeSet<RouteKey>,
        touched: &mut BTreeSet<ObjectKey>,
    ) {
        let mut fresh = gateway::build_all(ctx, &self.classes);
        gateway::detect_shared_socket_conflicts(&mut fresh);
        let keys: BTreeSet<ObjectKey> = self.gateways.keys().chain(fresh.keys()).cloned().collect();
        for key in keys {
            let old = self.gateways.remove(&key);
            let new = fresh.get_mut(&key);
            match (old, new) {
                (Some(old), Some(new)) if same_state(&old, new) => *new = old,
                (Some(old), Some(new)) if attach_view(&old) == attach_view(new) => {
                    for (n, o) in new.listeners.iter_mut().zip(old.listeners) {
                        n.attached = o.attached;
                    }
                    touched.insert(key.clone());
                    set_entry(snapshot, &key, Some(new), true);
                }
                // Only its ListenerSets' side changed: routes through its own listeners keep
                // their attachments (own listeners come first: the same indices); routes
                // naming a set, or attached to a set's listener, are translated again.
                (Some(old), Some(new)) if own_view(&old) == own_view(new) => {
                    let sets = old.sets.iter().chain(&new.sets).map(|s| &s.key);
                    routes.extend(deps.routes_naming_sets(ctx.cluster_name, sets));
                    for (i, o) in old.listeners.into_iter().enumerate() {
                        match new.listeners.get_mut(i) {
                            Some(n) if o.set.is_none() => n.attached = o.attached,
                            _ => routes.extend(o.attached),
                        }
                    }
                    touched.insert(key.clone());
                    set_entry(snapshot, &key, Some(new), true);
                }
                // Only its own listeners changed (added, removed, or another view at the same
                // index), no ListenerSets: listeners with the same view keep their attached
                // routes; a route is translated again when it attached to a changed listener,
                // or a changed one might take it, or it is not simply attached (module docs).
                (Some(old), Some(new)) if old.sets.is_empty() && new.sets.is_empty() => {
                    let same: Vec<bool> = {
                        let (was, now) = (attach_view(&old).0, attach_view(new).0);
                        (0..was.len().max(now.len()))
                            .map(|i| matches!((was.get(i), now.get(i)), (Some(a), Some(b)) if a == b))
                            .collect()
                    };
                    let changed: Vec<&ListenerState> = new
                        .listeners
                        .iter()
                        .zip(&same)
                        .filter(|(_, same)| !**same)
                        .map(|(l, _)| l)
                        .collect();
                    for r in deps.routes_naming(ctx.cluster_name, &key) {
                        if !self.keeps_attachment(ctx, &r, &key, &same, &changed) {
                            routes.insert(r);
                        }
                    }
                    for (i, o) in old.listeners.into_iter().enumerate() {
                        match new.listeners.get_mut(i) {
                            Some(n) if same[i] => n.attached = o.attached,
                            _ => routes.extend(o.attached),
                        }
                    }
                    touched.insert(key.clone());
                    set_entry(snapshot, &key, Some(new), true);
                }
                (old, new) => {
                    routes.extend(deps.routes_naming(ctx.cluster_name, &key));
                    // Routes naming its ListenerSets (before and now) reach it through them.
                    let sets = old.iter().chain(new.as_deref()).flat_map(|g| &g.sets);
                    routes.extend(deps.routes_naming_sets(ctx.cluster_name, sets.map(|s| &s.key)));
                    if let Some(old) = old {
                        routes.extend(old.listeners.into_iter().flat_map(|l| l.attached));
                    }
                    match new {
                        Some(new) => {
                            touched.insert(key.clone());
                            set_entry(snapshot, &key, Some(new), false);
                        }
                        None => {
                            self.gateway_status.remove(&key);
                            self.set_status.remove(&key);
                            set_entry(snapshot, &key, None, false);
                        }
                    }
                }
            }
        }
        self.gateways = fresh;
    }

    /// Whether HTTPRoute `r` keeps what it has on Gateway `gw` when only the Gateway's listeners
    /// at the indices where `same` is `false` changed (`changed`: those now there): it names
    /// the Gateway in exactly one parentRef (and no ListenerSet), is attached through it only to
    /// listeners that stayed the same, and no changed listener might accept it. Then its status
    /// (`Accepted` through the listeners it keeps) and its snapshot routes are what translating
    /// it again would give. Other route kinds are translated again.
    fn keeps_attachment(
        &self,
        ctx: &Ctx<'_>,
        r: &RouteKey,
        gw: &ObjectKey,
        same: &[bool],
        changed: &[&ListenerState],
    ) -> bool {
        let Some(route) = (r.kind == RouteKind::Http)
            .then(|| ctx.cluster.http_routes.get(&r.key))
            .flatten()
        else {
            return false;
        };
        let mut on_gw = self
            .attached
            .get(r)
            .into_iter()
            .flatten()
            .filter(|(g, _, _)| g == gw)
            .peekable();
        if on_gw.peek().is_none() || on_gw.any(|(_, i, _)| !same.get(*i).copied().unwrap_or(false))
        {
            return false;
        }
        let mut naming = None;
        for p in route.spec.parent_refs.iter().flatten() {
            match route::parent_target(p, &r.key.namespace) {
                Some(("Gateway", ns, name)) if ns == gw.namespace && name == gw.name => {
                    if naming.is_some() {
                        return false;
                    }
                    naming = Some(p);
                }
                Some(("ListenerSet", _, _)) => return false,
                _ => {}
            }
        }
        let Some(p) = naming else { return false };
        let hostnames = route.spec.hostnames.as_deref().unwrap_or_default();
        !changed
            .iter()
            .any(|l| route::may_accept(l, p.section_name.as_deref(), p.port, hostnames))
    }

    /// Detaches a route from where it attached and translates it again (module docs, step 2).
    fn retranslate(
        &mut self,
        ctx: &Ctx<'_>,
        key: &RouteKey,
        backends: &mut backend::Cache,
        snapshot: &mut Out<'_>,
        touched: &mut BTreeSet<ObjectKey>,
        pass: &mut Pass,
    ) {
        for (gw, i, listener) in self.attached.remove(key).unwrap_or_default() {
            if let Some(l) = self
                .gateways
                .get_mut(&gw)
                .and_then(|g| g.listeners.get_mut(i))
            {
                l.attached.remove(key);
            }
            remove_route(snapshot, &gw, &listener, key);
            touched.insert(gw);
        }
        self.refused.remove(key);
        self.route_status.remove(key);
        let src = match key.kind {
            RouteKind::Http => ctx
                .cluster
                .http_routes
                .get(&key.key)
                .map(|r| route::RouteSource::http(r)),
            RouteKind::Grpc => ctx
                .cluster
                .grpc_routes
                .get(&key.key)
                .map(|r| route::RouteSource::grpc(r)),
            RouteKind::Tls => ctx
                .cluster
                .tls_routes
                .get(&key.key)
                .map(|r| route::RouteSource::tls(r)),
        };
        let Some(src) = src else {
            return;
        };
        let processed = route::process(
            ctx,
            key,
            &src,
            &mut self.gateways,
            backends,
            self.conflicts.get(key),
        );
        let mut attached = Vec::with_capacity(processed.attached.len());
        for (gw, i) in processed.attached {
            if let Some(g) = self.gateways.get_mut(&gw)
                && let Some(l) = g.listeners.get_mut(i)
            {
                let name = gateway::snapshot_name(l, &g.sets);
                for r in std::mem::take(&mut l.routes) {
                    insert_route(snapshot, &gw, &name, r);
                }
                attached.push((gw.clone(), i, name));
            }
            touched.insert(gw);
        }
        if !attached.is_empty() {
            self.attached.insert(key.clone(), attached);
        }
        if processed.refused {
            self.refused.insert(key.clone());
        }
        if let Some(u) = processed.update {
            pass.status.push(u.clone());
            self.route_status.insert(key.clone(), u);
        }
    }
}

/// A Gateway's validated state without its routes (what [`ClusterCache`] keeps).
fn without_routes(g: &GatewayState) -> GatewayState {
    GatewayState {
        key: g.key.clone(),
        gateway: Arc::clone(&g.gateway),
        generation: g.generation,
        problem: g.problem.clone(),
        address_problem: g.address_problem.clone(),
        addresses: g.addresses.clone(),
        listeners: g
            .listeners
            .iter()
            .map(|l| ListenerState {
                name: l.name.clone(),
                spec_port: l.spec_port,
                port: l.port,
                protocol: l.protocol,
                hostname: l.hostname.clone(),
                accepted: l.accepted.clone(),
                resolved: l.resolved.clone(),
                conflicted: l.conflicted.clone(),
                http_route_kind: l.http_route_kind,
                grpc_route_kind: l.grpc_route_kind,
                tls_route_kind: l.tls_route_kind,
                allowed: l.allowed.clone(),
                certificates: l.certificates.clone(),
                attached: l.attached.clone(),
                routes: Vec::new(),
                has_status: l.has_status,
                set: l.set,
                home: l.home.clone(),
            })
            .collect(),
        refs: g.refs.clone(),
        sets: g.sets.clone(),
    }
}

/// Whether two validations of a Gateway agree in everything (the same indexed objects — the
/// Gateway and its ListenerSets —, the same listeners), attached routes aside.
fn same_state(a: &GatewayState, b: &GatewayState) -> bool {
    let same_listener = |x: &ListenerState, y: &ListenerState| {
        x.name == y.name
            && x.spec_port == y.spec_port
            && x.port == y.port
            && x.protocol == y.protocol
            && x.hostname == y.hostname
            && x.accepted == y.accepted
            && x.resolved == y.resolved
            && x.conflicted == y.conflicted
            && x.http_route_kind == y.http_route_kind
            && x.grpc_route_kind == y.grpc_route_kind
            && x.tls_route_kind == y.tls_route_kind
            && x.allowed == y.allowed
            && x.certificates == y.certificates
            && x.has_status == y.has_status
            && x.set == y.set
            && x.home == y.home
    };
    let same_set = |x: &SetState, y: &SetState| {
        x.key == y.key
            && Arc::ptr_eq(&x.set, &y.set)
            && x.generation == y.generation
            && x.problem == y.problem
    };
    Arc::ptr_eq(&a.gateway, &b.gateway)
        && a.key == b.key
        && a.generation == b.generation
        && a.problem == b.problem
        && a.address_problem == b.address_problem
        && a.addresses == b.addresses
        && a.refs == b.refs
        && a.listeners.len() == b.listeners.len()
        && a.listeners
            .iter()
            .zip(&b.listeners)
            .all(|(x, y)| same_listener(x, y))
        && a.sets.len() == b.sets.len()
        && a.sets.iter().zip(&b.sets).all(|(x, y)| same_set(x, y))
}

/// What route attachment reads of a listener: name, has_status, port as written, HTTPRoute,
/// GRPCRoute and TLSRoute allowed, protocol known, allowed namespaces and the namespace `Same`
/// means, hostname, served, the ListenerSet declaring it.
type ListenerView<'a> = (
    &'a str,
    bool,
    i32,
    (bool, bool, bool),
    bool,
    (&'a gateway::AllowedNamespaces, &'a str),
    Option<&'a str>,
    bool,
    Option<usize>,
);

/// What route attachment reads of a ListenerSet: which it is (a route names it), and why it
/// adds no listener (the route's status says so).
type SetView<'a> = (&'a ObjectKey, Option<&'a super::Problem>);

/// What route attachment (and where attached routes land) reads of a Gateway: when two
/// validations agree on it, every route attaches to the same listeners with the same result.
/// Whether the Gateway serves (has a snapshot entry) is not part of it: the routes of a Gateway
/// without entry are kept aside ([`ClusterCache::hidden`]) and move into its entry when it
/// comes to serve (a proxy connecting gives it its address), and back when it stops.
fn attach_view(g: &GatewayState) -> (Vec<ListenerView<'_>>, Vec<SetView<'_>>) {
    (
        g.listeners
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.has_status,
                    l.spec_port,
                    (l.http_route_kind, l.grpc_route_kind, l.tls_route_kind),
                    l.protocol.is_some(),
                    (&l.allowed, l.home.as_str()),
                    l.hostname.as_deref(),
                    l.served(),
                    l.set,
                )
            })
            .collect(),
        g.sets
            .iter()
            .map(|s| (&s.key, s.problem.as_ref()))
            .collect(),
    )
}

/// What a route naming the Gateway itself reads of it: [`attach_view`] of the Gateway's own
/// listeners (a Gateway parentRef selects only those; ListenerSets' listeners follow them).
fn own_view(g: &GatewayState) -> (Vec<ListenerView<'_>>, Vec<SetView<'_>>) {
    let (mut listeners, _) = attach_view(g);
    listeners.retain(|l| l.8.is_none());
    (listeners, Vec::new())
}

/// Position of Gateway `key` in a snapshot (ordered by namespace, then name).
fn find_gateway(snapshot: &Snapshot, key: &ObjectKey) -> Result<usize, usize> {
    snapshot.gateways.binary_search_by(|g| {
        (g.namespace.as_str(), g.name.as_str()).cmp(&(&key.namespace, &key.name))
    })
}

/// Replaces (or removes, or inserts) Gateway `key`'s snapshot entry for its new validated state
/// `gw` (`None`: gone); a Gateway that does not serve keeps its routes in `out.hidden` instead.
/// With `keep_routes` the routes of the old entry (or hidden routes) move to the new one's
/// listeners of the same name.
fn set_entry(out: &mut Out<'_>, key: &ObjectKey, gw: Option<&GatewayState>, keep_routes: bool) {
    let mut old = out.hidden.remove(key).unwrap_or_default();
    let snapshot = &mut *out.snapshot;
    let at = find_gateway(snapshot, key);
    if let Ok(i) = at {
        let entry = snapshot.gateways.remove(i);
        out.touched.gateway(&key.namespace, &key.name);
        old = entry
            .listeners
            .into_iter()
            .map(|l| (l.name, l.routes))
            .collect();
    }
    if !keep_routes {
        old.clear();
    }
    let Some(gw) = gw else { return };
    match gateway::entry(gw) {
        Some(mut new) => {
            for l in &mut new.listeners {
                if let Some(routes) = old.remove(&l.name) {
                    l.routes = routes;
                }
            }
            let i = at.unwrap_or_else(|i| i);
            snapshot.gateways.insert(i, new);
            out.touched.gateway(&key.namespace, &key.name);
        }
        None => {
            let listeners = gw
                .listeners
                .iter()
                .filter(|l| l.served() && l.protocol.is_some())
                .map(|l| {
                    let name = gateway::snapshot_name(l, &gw.sets);
                    let routes = old.remove(&name).unwrap_or_default();
                    (name, routes)
                })
                .collect();
            out.hidden.insert(key.clone(), listeners);
        }
    }
}

/// The routes of listener `listener` of Gateway `gw` in a snapshot, if it is there; the
/// Gateway is noted as touched.
fn listener_routes<'s>(
    out: &'s mut Out<'_>,
    gw: &ObjectKey,
    listener: &str,
) -> Option<&'s mut Vec<Arc<model::Route>>> {
    let Ok(i) = find_gateway(out.snapshot, gw) else {
        // No snapshot entry: the Gateway's hidden routes, if it has that listener.
        return out.hidden.get_mut(gw)?.get_mut(listener);
    };
    let routes = out.snapshot.gateways[i]
        .listeners
        .iter_mut()
        .find(|l| l.name == listener)
        .map(|l| &mut l.routes)?;
    out.touched.gateway(&gw.namespace, &gw.name);
    Some(routes)
}

/// Position of a route in a listener's routes (ordered by namespace, name, kind).
fn route_position(routes: &[Arc<model::Route>], key: &RouteKey) -> Result<usize, usize> {
    routes.binary_search_by(|r| {
        (r.namespace.as_str(), r.name.as_str(), r.kind).cmp(&(
            key.key.namespace.as_str(),
            key.key.name.as_str(),
            key.kind,
        ))
    })
}

/// Puts a served route in its place (namespace/name order) in a listener's routes.
fn insert_route(out: &mut Out<'_>, gw: &ObjectKey, listener: &str, route: Arc<model::Route>) {
    let Some(routes) = listener_routes(out, gw, listener) else {
        return;
    };
    let key = RouteKey {
        kind: route.kind,
        key: ObjectKey::new(route.namespace.as_str(), route.name.as_str()),
    };
    match route_position(routes, &key) {
        Ok(i) => routes[i] = route,
        Err(i) => routes.insert(i, route),
    }
}

fn remove_route(out: &mut Out<'_>, gw: &ObjectKey, listener: &str, key: &RouteKey) {
    if let Some(routes) = listener_routes(out, gw, listener)
        && let Ok(i) = route_position(routes, key)
    {
        routes.remove(i);
    }
}
