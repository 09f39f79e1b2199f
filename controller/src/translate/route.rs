//! HTTPRoute attachment and `status.parents`.
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
//! 4. a route whose rules are all invalid (or whose hostnames are invalid) ⇒ `UnsupportedValue`
//!    (or `IncompatibleFilters`), otherwise `Accepted=True` and the route is attached to each
//!    remaining listener: counted in its `attachedRoutes` (even if the listener is not served)
//!    and, when served, added with its hostnames narrowed to the listener's.
//!
//! `ResolvedRefs` and `PartiallyInvalid` come from rule translation, done once per route. Parent
//! entries always spell out group, kind and namespace.

use std::collections::BTreeMap;

use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteSpec, HttpRouteStatus, HttpRouteStatusParents,
    HttpRouteStatusParentsParentRef,
};
use meridian_model::hostname;
use meridian_model::snapshot as model;

use super::gateway::{GatewayState, push_if_changed};
use super::rules::{RouteRules, translate_rules};
use super::{Ctx, Problem, backend, generation_of};
use crate::status::{
    Cond, GATEWAY_GROUP, StatusKind, StatusUpdate, is_stale, merge_route_parents, stamp_all,
};
use crate::world::ObjectKey;

/// A parentRef with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ParentKey {
    namespace: String,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

/// Attaches one route and returns its status update, if its status must change.
pub(crate) fn process(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    route: &HttpRoute,
    gateways: &mut BTreeMap<ObjectKey, GatewayState<'_>>,
    cache: &mut backend::Cache,
) -> Option<StatusUpdate> {
    let HttpRoute {
        metadata,
        spec,
        status,
    } = route;
    let HttpRouteSpec {
        hostnames,
        parent_refs,
        rules,
    } = spec;
    let controller = ctx.cfg.controller_name.as_str();
    let generation = generation_of(metadata);
    let now = ctx.cfg.now;

    let mut ours: Vec<ParentKey> = Vec::new();
    for p in parent_refs.iter().flatten() {
        let HttpRouteParentRefs {
            group,
            kind,
            name,
            namespace,
            port,
            section_name,
        } = p;
        if group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
            || kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let pk = ParentKey {
            namespace: namespace.clone().unwrap_or_else(|| key.namespace.clone()),
            name: name.clone(),
            section_name: section_name.clone(),
            port: *port,
        };
        if gateways.contains_key(&ObjectKey::new(pk.namespace.as_str(), pk.name.as_str()))
            && !ours.contains(&pk)
        {
            ours.push(pk);
        }
    }
    let existing: &[HttpRouteStatusParents] = status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or_default();
    let had_ours = existing.iter().any(|p| p.controller_name == controller);
    if ours.is_empty() && !had_ours {
        return None;
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
        translate_rules(ctx, &key.namespace, rules.as_ref(), cache)
    };
    super::failover::attach_route_policy(ctx, key, &mut translated.rules);
    let route_hostnames: Vec<String> = hostnames
        .iter()
        .flatten()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let route_problem = if let Some(bad) = route_hostnames
        .iter()
        .find(|h| !hostname::is_valid_pattern(h))
    {
        Some(Problem::new(
            "UnsupportedValue",
            format!("hostname {bad:?} is not a valid DNS name or wildcard"),
        ))
    } else if translated.total > 0 && translated.rules.is_empty() {
        translated.dropped.first().map(|(idx, p)| {
            Problem::new(
                p.reason,
                format!("all rules are invalid; rule {idx}: {}", p.message),
            )
        })
    } else {
        None
    };

    let resolved = match translated.unresolved.first() {
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
    };
    let partially_invalid = {
        let mut notes: Vec<String> = translated
            .dropped
            .iter()
            .map(|(idx, p)| format!("Dropped Rule {idx}: {}", p.message))
            .collect();
        notes.extend(translated.degraded.iter().cloned());
        (route_problem.is_none() && !notes.is_empty()).then(|| {
            Cond::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                notes.join("; "),
            )
        })
    };

    let created_at = metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    let mut entries = Vec::with_capacity(ours.len());
    for pk in &ours {
        let gw_key = ObjectKey::new(pk.namespace.as_str(), pk.name.as_str());
        let Some(gw) = gateways.get_mut(&gw_key) else {
            continue;
        };
        let accepted = match attach(
            ctx,
            key,
            pk,
            gw,
            &route_hostnames,
            route_problem.as_ref(),
            &translated,
            created_at,
        ) {
            Ok(listeners) => Cond::new(
                "Accepted",
                true,
                "Accepted",
                format!("attached to listener(s) {}", listeners.join(", ")),
            ),
            Err(p) => Cond::new("Accepted", false, p.reason, p.message),
        };
        let mut conds = vec![accepted, resolved.clone()];
        conds.extend(partially_invalid.clone());
        entries.push(HttpRouteStatusParents {
            conditions: stamp_all(conds, generation, now),
            controller_name: controller.to_string(),
            parent_ref: HttpRouteStatusParentsParentRef {
                group: Some(GATEWAY_GROUP.to_string()),
                kind: Some("Gateway".to_string()),
                name: pk.name.clone(),
                namespace: Some(pk.namespace.clone()),
                port: pk.port,
                section_name: pk.section_name.clone(),
            },
        });
    }
    if stale {
        return None;
    }
    let new_status = HttpRouteStatus {
        parents: merge_route_parents(existing, entries, controller, &key.namespace, now),
    };
    let mut out = Vec::new();
    let old_status = status.clone().unwrap_or_default();
    push_if_changed(
        ctx,
        &mut out,
        StatusKind::HttpRoute,
        Some(&key.namespace),
        &key.name,
        generation,
        Some(&old_status),
        &new_status,
    );
    out.pop()
}

/// Attaches the route to the listeners `pk` selects; returns their names, or why it cannot.
#[allow(clippy::too_many_arguments)]
fn attach(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    pk: &ParentKey,
    gw: &mut GatewayState<'_>,
    route_hostnames: &[String],
    route_problem: Option<&Problem>,
    translated: &RouteRules,
    created_at: i64,
) -> Result<Vec<String>, Problem> {
    let selected: Vec<usize> = (0..gw.listeners.len())
        .filter(|&i| {
            let l = &gw.listeners[i];
            l.has_status
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
            format!("Gateway {} has no listener {what}", gw.key),
        ));
    }
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|&i| {
            let l = &gw.listeners[i];
            l.http_route_kind
                && l.protocol.is_some()
                && l.admits(&key.namespace, &gw.key.namespace, ctx.cluster)
        })
        .collect();
    if allowed.is_empty() {
        return Err(Problem::new(
            "NotAllowedByListeners",
            format!(
                "no selected listener of Gateway {} allows HTTPRoutes from namespace {:?}",
                gw.key, key.namespace
            ),
        ));
    }
    let accepting: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| {
            effective_hostnames(gw.listeners[i].hostname.as_deref(), route_hostnames)
                .map(|h| (i, h))
        })
        .collect();
    if accepting.is_empty() {
        return Err(Problem::new(
            "NoMatchingListenerHostname",
            format!(
                "no hostname of the route intersects a selected listener of Gateway {}",
                gw.key
            ),
        ));
    }
    if let Some(p) = route_problem {
        return Err(p.clone());
    }
    let mut names = Vec::with_capacity(accepting.len());
    for (i, hostnames) in accepting {
        let l = &mut gw.listeners[i];
        names.push(l.name.clone());
        if l.attached.insert(key.clone()) && l.served() {
            l.routes.push(model::Route {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                created_at,
                hostnames,
                rules: translated.rules.clone(),
            });
        }
    }
    Ok(names)
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
