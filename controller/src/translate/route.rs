//! Route attachment and `status.parents`, for HTTPRoutes, GRPCRoutes and TLSRoutes alike (a
//! GRPCRoute arrives converted to the HTTPRoute shapes, module `grpc`, a TLSRoute likewise,
//! module `tls`; [`RouteSource`] holds any of them).
//!
//! For each parentRef (defaults: group `gateway.networking.k8s.io`, kind `Gateway`, namespace the
//! route's) that names a Gateway of ours:
//!
//! 1. listeners are selected by `sectionName` and `port` (both must match when both are set);
//!    none ⇒ `Accepted=False/NoMatchingParent`;
//! 2. of those, the ones whose `allowedRoutes` admit the route's namespace and kind; none ⇒
//!    `NotAllowedByListeners`;
//! 3. of those, the ones whose hostname intersects the route's hostnames; none ⇒
//!    `NoMatchingListenerHostname`;
//! 4. of those, the ones where no route of the other kind (HTTPRoute against GRPCRoute) with an
//!    overlapping hostname takes precedence (the GRPCRoute spec: exactly one of the two is
//!    accepted, the older, then the first by `namespace/name`; module `conflict`), and where
//!    older TLSRoutes do not already hold every hostname of a TLSRoute; none ⇒
//!    `NotAllowedByListeners` naming the route that won;
//! 5. a route whose rules are all invalid (or whose hostnames are invalid) ⇒ `UnsupportedValue`
//!    (or `IncompatibleFilters`), otherwise `Accepted=True` and the route is attached to each
//!    remaining listener: counted in its `attachedRoutes` (even if the listener is not served)
//!    and, when served, added with its hostnames narrowed to the listener's.
//!
//! `ResolvedRefs` and `PartiallyInvalid` come from rule translation, done once per route. Parent
//! entries always spell out group, kind and namespace.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteStatus, HttpRouteStatusParents,
    HttpRouteStatusParentsParentRef,
};
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meridian_model::hostname;
use meridian_model::snapshot::{self as model, GrpcMethodMatch, RouteKind};

use super::conflict::Blocked;
use super::gateway::{GatewayState, ListenerState, push_if_changed};
use super::rules::{RouteRules, translate_rules};
use super::{Ctx, Problem, backend, generation_of, grpc, tls};
use crate::status::{Cond, GATEWAY_GROUP, StatusUpdate, is_stale, merge_route_parents, stamp_all};
use crate::world::{ObjectKey, RouteKey};

/// A parentRef with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParentKey {
    /// `Gateway` or `ListenerSet`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
    /// The Gateway whose listeners the parent selects: the parent itself, or the Gateway the
    /// ListenerSet names.
    pub gateway: ObjectKey,
}

impl ParentKey {
    /// The parent's own key (a Gateway's or a ListenerSet's).
    fn own_key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_str(), self.name.as_str())
    }

    /// `Gateway ns/name` or `ListenerSet ns/name`, for messages.
    fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What translation reads of a route, whichever its kind.
pub(crate) struct RouteSource<'a> {
    pub kind: RouteKind,
    pub metadata: &'a ObjectMeta,
    pub hostnames: &'a [String],
    pub parent_refs: Cow<'a, [HttpRouteParentRefs]>,
    /// `None`: omitted (HTTPRoute: the default rule).
    pub rules: Option<Cow<'a, [HttpRouteRules]>>,
    /// GRPCRoute: per rule, the problem that drops it before translation.
    pub invalid: Vec<Option<Problem>>,
    /// GRPCRoute: per rule, per match, the method condition.
    pub methods: Vec<Vec<GrpcMethodMatch>>,
    /// `status.parents`, every controller's.
    pub status: Cow<'a, [HttpRouteStatusParents]>,
}

impl<'a> RouteSource<'a> {
    /// An HTTPRoute, borrowed.
    pub fn http(route: &'a HttpRoute) -> Self {
        Self {
            kind: RouteKind::Http,
            metadata: &route.metadata,
            hostnames: route.spec.hostnames.as_deref().unwrap_or_default(),
            parent_refs: Cow::Borrowed(route.spec.parent_refs.as_deref().unwrap_or_default()),
            rules: route.spec.rules.as_deref().map(Cow::Borrowed),
            invalid: Vec::new(),
            methods: Vec::new(),
            status: Cow::Borrowed(
                route
                    .status
                    .as_ref()
                    .map(|s| s.parents.as_slice())
                    .unwrap_or_default(),
            ),
        }
    }

    /// A GRPCRoute, converted (module `grpc`).
    pub fn grpc(route: &'a GrpcRoute) -> Self {
        let c = grpc::convert(route);
        Self {
            kind: RouteKind::Grpc,
            metadata: &route.metadata,
            hostnames: route.spec.hostnames.as_deref().unwrap_or_default(),
            parent_refs: Cow::Owned(c.parent_refs),
            rules: Some(Cow::Owned(c.rules)),
            invalid: c.invalid,
            methods: c.methods,
            status: Cow::Owned(c.status),
        }
    }

    /// A TLSRoute, converted (module `tls`).
    pub fn tls(route: &'a TlsRoute) -> Self {
        let c = tls::convert(route);
        Self {
            kind: RouteKind::Tls,
            metadata: &route.metadata,
            hostnames: &route.spec.hostnames,
            parent_refs: Cow::Owned(c.parent_refs),
            rules: Some(Cow::Owned(c.rules)),
            invalid: c.invalid,
            methods: Vec::new(),
            status: Cow::Owned(c.status),
        }
    }

    /// Creation time in seconds (0 when unset).
    pub fn created_at(&self) -> i64 {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    }
}

/// What processing one route gave, besides what it attached to the Gateways' listeners.
#[derive(Debug, Default)]
pub(crate) struct Processed {
    /// The route's status update, if its status must change.
    pub update: Option<StatusUpdate>,
    /// The listeners it attached to: Gateway and listener index.
    pub attached: Vec<(ObjectKey, usize)>,
    /// The address policy refused some endpoint of its backends.
    pub refused: bool,
}

/// Attaches one route: fills the listeners' attached sets and (served listeners) routes, and
/// returns its status update and where it attached. `blocked` are the listeners a route of the
/// other kind holds against it (module `conflict`).
///
/// ```text
/// parentRefs naming our Gateways ─► rules translated once ─► route-level problem,
///   ResolvedRefs, PartiallyInvalid ─► per parent: attach (Accepted) ─► status.parents merged
/// ```
pub(crate) fn process(
    ctx: &Ctx<'_>,
    key: &RouteKey,
    src: &RouteSource<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
    cache: &mut backend::Cache,
    blocked: Option<&Blocked>,
) -> Processed {
    let controller = ctx.cfg.controller_name.as_str();
    let generation = generation_of(src.metadata);

    let ours = our_parents(ctx, &key.key, &src.parent_refs, gateways);
    let existing: &[HttpRouteStatusParents] = &src.status;
    let had_ours = existing.iter().any(|p| p.controller_name == controller);
    let mut processed = Processed::default();
    if ours.is_empty() && !had_ours {
        return processed;
    }
    let stale = is_stale(
        existing
            .iter()
            .filter(|p| p.controller_name == controller)
            .flat_map(|p| &p.conditions),
        generation,
    );

    let mut translated = if ours.is_empty() {
        RouteRules::default()
    } else {
        // The experimental rule fields (retry, sessionPersistence) exist on HTTPRoutes only.
        let extras = match src.kind {
            RouteKind::Http => ctx.cluster.http_route_extras.get(&key.key).map(|e| &e[..]),
            RouteKind::Grpc | RouteKind::Tls => None,
        };
        let mut t = translate_rules(
            ctx,
            src.kind,
            &key.key.namespace,
            src.rules.as_deref(),
            &src.invalid,
            extras.unwrap_or_default(),
            cache,
        );
        if src.kind == RouteKind::Grpc {
            let dropped: Vec<usize> = t.dropped.iter().map(|(i, _)| *i).collect();
            grpc::mark_rules(&mut t.rules, &dropped, &src.methods);
        }
        if src.kind == RouteKind::Tls {
            tls::passthrough_rules(&mut t.rules);
        }
        t
    };
    super::failover::attach_route_policy(ctx, src.kind, &key.key, &mut translated.rules);
    processed.refused = !translated.refused.is_empty();
    let route = RouteVerdict::new(src.hostnames, translated, src.created_at());
    // Attach even when the indexed status is stale: the listeners count the route either way.
    let entries: Vec<HttpRouteStatusParents> = ours
        .iter()
        .filter_map(|pk| {
            let gw = gateways.get_mut(&pk.gateway)?;
            let accepted = attach(ctx, key, pk, gw, &route, blocked, &mut processed.attached);
            Some(parent_entry(ctx, pk, &route, accepted, generation))
        })
        .collect();
    if stale {
        return processed;
    }
    let new_status = HttpRouteStatus {
        parents: merge_route_parents(
            existing,
            entries,
            controller,
            &key.key.namespace,
            ctx.cfg.now,
        ),
    };
    let mut out = Vec::new();
    let old_status = HttpRouteStatus {
        parents: existing.to_vec(),
    };
    push_if_changed(
        ctx,
        &mut out,
        key.status_kind(),
        Some(&key.key.namespace),
        &key.key.name,
        generation,
        Some(&old_status),
        &new_status,
    );
    processed.update = out.pop();
    processed
}

/// What parentRef `p` of a route in `route_ns` names, defaults applied: its kind, namespace
/// and name; `None` for a group other than the Gateway API's.
pub(crate) fn parent_target<'a>(
    p: &'a HttpRouteParentRefs,
    route_ns: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    (p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP).then(|| {
        (
            p.kind.as_deref().unwrap_or("Gateway"),
            p.namespace.as_deref().unwrap_or(route_ns),
            p.name.as_str(),
        )
    })
}

/// The route's parentRefs that name a Gateway of ours, or a ListenerSet naming one, defaults
/// applied, without repeats.
pub(crate) fn our_parents(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    parent_refs: &[HttpRouteParentRefs],
    gateways: &BTreeMap<ObjectKey, GatewayState>,
) -> Vec<ParentKey> {
    let mut ours: Vec<ParentKey> = Vec::new();
    for p in parent_refs {
        let Some((kind, parent_ns, name)) = parent_target(p, &key.namespace) else {
            continue;
        };
        let own = ObjectKey::new(parent_ns, name);
        let (kind, gateway) = match kind {
            "Gateway" => ("Gateway", own),
            "ListenerSet" => {
                let Some(gw) = ctx
                    .cluster
                    .listener_sets
                    .get(&own)
                    .and_then(|set| super::listener_set::parent_gateway(&own, set))
                else {
                    continue;
                };
                ("ListenerSet", gw)
            }
            _ => continue,
        };
        let pk = ParentKey {
            kind,
            namespace: parent_ns.to_string(),
            name: name.to_string(),
            section_name: p.section_name.clone(),
            port: p.port,
            gateway,
        };
        if gateways.contains_key(&pk.gateway) && !ours.contains(&pk) {
            ours.push(pk);
        }
    }
    ours
}

/// What holds for a route whatever parent it attaches to.
pub(crate) struct RouteVerdict {
    /// Lower-cased `spec.hostnames`.
    hostnames: Vec<String>,
    /// Why the route cannot be accepted anywhere (invalid hostname, every rule invalid).
    problem: Option<Problem>,
    translated: RouteRules,
    /// `ResolvedRefs`.
    resolved: Cond,
    /// `PartiallyInvalid` (dropped rules, degraded parts) of an otherwise acceptable route.
    partially_invalid: Option<Cond>,
    /// `meridian.dev/EndpointsRefused` (backend.rs, endpoint address policy).
    endpoints_refused: Option<Cond>,
    /// Creation time (seconds), the snapshot's tie-breaker between routes.
    created_at: i64,
}

impl RouteVerdict {
    fn new(hostnames: &[String], translated: RouteRules, created_at: i64) -> Self {
        let hostnames: Vec<String> = hostnames.iter().map(|h| h.to_ascii_lowercase()).collect();
        let problem = route_problem(&hostnames, &translated);
        let resolved = resolved_condition(&translated);
        let partially_invalid = if problem.is_none() {
            partially_invalid_condition(&translated)
        } else {
            None
        };
        let endpoints_refused = (!translated.refused.is_empty()).then(|| {
            Cond::new(
                ENDPOINTS_REFUSED,
                true,
                "RefusedAddress",
                format!(
                    "endpoints left out by the address policy (loopback, link-local, \
                     unspecified, multicast): {}",
                    translated.refused.join("; ")
                ),
            )
        });
        Self {
            hostnames,
            problem,
            translated,
            resolved,
            partially_invalid,
            endpoints_refused,
            created_at,
        }
    }
}

/// An invalid hostname, else (when every rule was dropped) the first rule's problem.
fn route_problem(hostnames: &[String], translated: &RouteRules) -> Option<Problem> {
    if let Some(bad) = hostnames.iter().find(|h| !hostname::is_valid_pattern(h)) {
        return Some(Problem::new(
            "UnsupportedValue",
            format!("hostname {bad:?} is not a valid DNS name or wildcard"),
        ));
    }
    if translated.total > 0 && translated.rules.is_empty() {
        return translated.dropped.first().map(|(idx, p)| {
            Problem::new(
                p.reason,
                format!("all rules are invalid; rule {idx}: {}", p.message),
            )
        });
    }
    None
}

/// Condition type naming the endpoints the address policy refused (backend.rs).
pub(crate) const ENDPOINTS_REFUSED: &str = "meridian.dev/EndpointsRefused";

/// `ResolvedRefs`: every unresolved reference named, with the first one's reason.
fn resolved_condition(translated: &RouteRules) -> Cond {
    match translated.unresolved.first() {
        None => Cond::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all references resolved",
        ),
        Some(first) => Cond::new(
            "ResolvedRefs",
            false,
            first.reason,
            translated
                .unresolved
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// `PartiallyInvalid=True` naming every dropped rule and degraded part; `None` without any.
fn partially_invalid_condition(translated: &RouteRules) -> Option<Cond> {
    let mut notes: Vec<String> = translated
        .dropped
        .iter()
        .map(|(idx, p)| format!("Dropped Rule {idx}: {}", p.message))
        .collect();
    notes.extend(translated.degraded.iter().cloned());
    (!notes.is_empty()).then(|| {
        Cond::new(
            "PartiallyInvalid",
            true,
            "UnsupportedValue",
            notes.join("; "),
        )
    })
}

/// The route's `status.parents` entry for one of our parents.
fn parent_entry(
    ctx: &Ctx<'_>,
    pk: &ParentKey,
    route: &RouteVerdict,
    attached: Result<Vec<String>, Problem>,
    generation: i64,
) -> HttpRouteStatusParents {
    let accepted = match attached {
        Ok(listeners) => Cond::new(
            "Accepted",
            true,
            "Accepted",
            format!("attached to listener(s) {}", listeners.join(", ")),
        ),
        Err(p) => Cond::new("Accepted", false, p.reason, p.message),
    };
    let mut conds = vec![accepted, route.resolved.clone()];
    conds.extend(route.partially_invalid.clone());
    conds.extend(route.endpoints_refused.clone());
    HttpRouteStatusParents {
        conditions: stamp_all(conds, generation, ctx.cfg.now),
        controller_name: ctx.cfg.controller_name.clone(),
        parent_ref: HttpRouteStatusParentsParentRef {
            group: Some(GATEWAY_GROUP.to_string()),
            kind: Some(pk.kind.to_string()),
            name: pk.name.clone(),
            namespace: Some(pk.namespace.clone()),
            port: pk.port,
            section_name: pk.section_name.clone(),
        },
    }
}

/// The listeners of `gw` that `pk` selects and that admit the route (kind, namespace,
/// hostnames: steps 1–3 of the module docs), each with the route's hostnames narrowed to it; or
/// why there are none. Pure: module `conflict` asks it too.
pub(crate) fn eligible_listeners(
    ctx: &Ctx<'_>,
    key: &RouteKey,
    hostnames: &[String],
    pk: &ParentKey,
    gw: &GatewayState,
) -> Result<Vec<(usize, Vec<String>)>, Problem> {
    // A Gateway parent selects only the Gateway's own listeners, a ListenerSet parent only the
    // set's (and none while the set is not attached).
    let set = match pk.kind {
        "ListenerSet" => {
            let i = super::listener_set::index_of(gw, &pk.own_key()).ok_or_else(|| {
                Problem::new(
                    "NoMatchingParent",
                    format!("{} does not name Gateway {}", pk.describe(), gw.key),
                )
            })?;
            if let Some(p) = &gw.sets[i].problem {
                return Err(Problem::new(
                    "NoMatchingParent",
                    format!(
                        "{} is not attached to Gateway {} ({}: {})",
                        pk.describe(),
                        gw.key,
                        p.reason,
                        p.message
                    ),
                ));
            }
            Some(i)
        }
        _ => None,
    };
    let selected: Vec<usize> = (0..gw.listeners.len())
        .filter(|&i| {
            let l = &gw.listeners[i];
            l.has_status
                && l.set == set
                && pk.section_name.as_ref().is_none_or(|s| *s == l.name)
                && pk.port.is_none_or(|p| p == l.spec_port)
        })
        .collect();
    if selected.is_empty() {
        let what = match (&pk.section_name, pk.port) {
            (Some(s), Some(p)) => format!("named {s:?} with port {p}"),
            (Some(s), None) => format!("named {s:?}"),
            (None, Some(p)) => format!("with port {p}"),
            (None, None) => "at all".to_string(),
        };
        return Err(Problem::new(
            "NoMatchingParent",
            format!("{} has no listener {what}", pk.describe()),
        ));
    }
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|&i| {
            let l = &gw.listeners[i];
            l.allows_kind(key.kind)
                && l.protocol.is_some()
                && l.admits(&key.key.namespace, ctx.cluster)
        })
        .collect();
    if allowed.is_empty() {
        return Err(Problem::new(
            "NotAllowedByListeners",
            format!(
                "no selected listener of {} allows {}s from namespace {:?}",
                pk.describe(),
                key.kind.as_str(),
                key.key.namespace
            ),
        ));
    }
    let accepting: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| {
            effective_hostnames(gw.listeners[i].hostname.as_deref(), hostnames).map(|h| (i, h))
        })
        .collect();
    if accepting.is_empty() {
        return Err(Problem::new(
            "NoMatchingListenerHostname",
            format!(
                "no hostname of the route intersects a selected listener of {}",
                pk.describe()
            ),
        ));
    }
    Ok(accepting)
}

/// Attaches the route to the listeners `pk` selects (noting each newly attached one in
/// `attached`); returns their names, or why it cannot.
fn attach(
    ctx: &Ctx<'_>,
    key: &RouteKey,
    pk: &ParentKey,
    gw: &mut GatewayState,
    route: &RouteVerdict,
    blocked: Option<&Blocked>,
    attached: &mut Vec<(ObjectKey, usize)>,
) -> Result<Vec<String>, Problem> {
    let mut accepting = eligible_listeners(ctx, key, &route.hostnames, pk, gw)?;
    if let Some(blocked) = blocked {
        let mut winners = Vec::new();
        accepting.retain(|(i, _)| match blocked.get(&(gw.key.clone(), *i)) {
            Some(winner) => {
                winners.push(format!("{} on listener {}", winner, gw.listeners[*i].name));
                false
            }
            None => true,
        });
        if accepting.is_empty() && key.kind == RouteKind::Tls {
            return Err(Problem::new(
                "NotAllowedByListeners",
                format!(
                    "on the selected listeners of Gateway {} every hostname of this TLSRoute \
                     is held by an older TLSRoute (older, or first by namespace/name): {}",
                    gw.key,
                    winners.join(", ")
                ),
            ));
        }
        if accepting.is_empty() {
            return Err(Problem::new(
                "NotAllowedByListeners",
                format!(
                    "the selected listeners of Gateway {} already serve a route of the other \
                     kind for an overlapping hostname, which takes precedence (older, or first \
                     by namespace/name): {}",
                    gw.key,
                    winners.join(", ")
                ),
            ));
        }
    }
    if let Some(p) = &route.problem {
        return Err(p.clone());
    }
    let mut names = Vec::with_capacity(accepting.len());
    for (i, hostnames) in accepting {
        let l = &mut gw.listeners[i];
        names.push(l.name.clone());
        if !l.attached.insert(key.clone()) {
            continue;
        }
        attached.push((gw.key.clone(), i));
        if l.served() {
            l.routes.push(Arc::new(model::Route {
                namespace: key.key.namespace.clone(),
                name: key.key.name.clone(),
                kind: key.kind,
                created_at: route.created_at,
                hostnames,
                rules: route.translated.rules.clone(),
            }));
        }
    }
    Ok(names)
}

/// Whether Gateway listener `l` might accept a route through a parentRef naming its Gateway
/// with `section_name` and `port`: steps 1 and 3 of the module docs (selection, hostnames).
/// Step 2 (kind, namespace) is not looked at, so `true` may be wrong; `false` never is.
pub(crate) fn may_accept(
    l: &ListenerState,
    section_name: Option<&str>,
    port: Option<i32>,
    hostnames: &[String],
) -> bool {
    l.has_status
        && l.set.is_none()
        && section_name.is_none_or(|s| s == l.name)
        && port.is_none_or(|p| p == l.spec_port)
        && (hostnames.is_empty()
            || hostnames.iter().any(|h| {
                hostname::intersect(l.hostname.as_deref(), &h.to_ascii_lowercase()).is_some()
            }))
}

/// The route's hostnames as seen through a listener: `Some(vec![])` = every host the listener
/// accepts; `None` = no intersection.
fn effective_hostnames(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    if route.is_empty() {
        return Some(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for h in route {
        if let Some(i) = hostname::intersect(listener, h)
            && !out.contains(&i)
        {
            out.push(i);
        }
    }
    (!out.is_empty()).then_some(out)
}
