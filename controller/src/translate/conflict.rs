//! HTTPRoute against GRPCRoute, and TLSRoute against TLSRoute, on one listener.
//!
//! The GRPCRoute spec: when an HTTPRoute and a GRPCRoute attach to the same listener and their
//! hostnames overlap, exactly one of them is accepted there — the older (creation timestamp),
//! then the one first by `namespace/name`; the other gets `Accepted=False` for that parent
//! (module `route` words it, reason `NotAllowedByListeners`). Routes of one kind never
//! conflict with each other this way (their rules merge by precedence).
//!
//! ```text
//! every route of both kinds ─► listeners it is eligible for (route::eligible_listeners:
//!                              parentRef selection, allowedRoutes, hostname intersection)
//!                              with its hostnames narrowed to each
//! per listener: each (HTTPRoute, GRPCRoute) pair whose narrowed hostnames overlap
//!               ─► the later one is blocked there, naming the earlier
//! ```
//!
//! Eligibility deliberately ignores what rule translation finds (a route whose every rule is
//! invalid still holds its hostnames): it depends only on the routes' specs and the Gateways,
//! never on another route's outcome, so the result is the same whatever order routes are
//! translated in, and an incremental pass can recompute it and re-translate exactly the routes
//! whose blocked listeners changed. Nothing is computed in a cluster with routes of one kind only.
//!
//! TLSRoutes (passthrough listeners) compete per hostname: of the TLSRoutes naming one
//! (narrowed) hostname on a listener, the older (creation timestamp, then `namespace/name`) holds
//! it. A TLSRoute whose every hostname is held by older ones is blocked on that listener; one
//! that keeps some hostname attaches, and the proxy's router sends a shared hostname to the
//! older route (its tie-breaker is the same order), so each hostname has exactly one owner.
//! A wildcard and a name it covers are not a conflict: the more specific one wins its name, as
//! for HTTPRoute hostnames.

use std::collections::BTreeMap;

use meridian_model::hostname;

use super::Ctx;
use super::gateway::GatewayState;
use super::route::{RouteSource, eligible_listeners, our_parents};
use crate::world::{ObjectKey, RouteKey};

/// Listeners (Gateway, listener index) a route may not attach to, with the route that holds
/// each (for the status message).
pub(crate) type Blocked = BTreeMap<(ObjectKey, usize), String>;

/// Per route, the listeners it loses to a route of the other kind (only routes that lose
/// somewhere are listed).
pub(crate) type Conflicts = BTreeMap<RouteKey, Blocked>;

struct Candidate {
    key: RouteKey,
    created_at: i64,
    /// Hostnames narrowed to the listener; empty = every host the listener accepts.
    hostnames: Vec<String>,
}

impl Candidate {
    /// Precedence between the two kinds: older first, then `namespace/name`.
    fn rank(&self) -> (i64, &str, &str, &RouteKey) {
        (
            self.created_at,
            &self.key.key.namespace,
            &self.key.key.name,
            &self.key,
        )
    }
}

/// Computes the conflicts of one cluster against its validated Gateways (module docs).
pub(crate) fn compute(ctx: &Ctx<'_>, gateways: &BTreeMap<ObjectKey, GatewayState>) -> Conflicts {
    let mut out = Conflicts::new();
    let kinds_meet = !ctx.cluster.http_routes.is_empty() && !ctx.cluster.grpc_routes.is_empty();
    if !kinds_meet && ctx.cluster.tls_routes.len() < 2 {
        return out;
    }
    let mut per_listener: BTreeMap<(ObjectKey, usize), Vec<Candidate>> = BTreeMap::new();
    let mut add = |key: RouteKey, src: RouteSource<'_>| {
        let hostnames: Vec<String> = src
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for pk in our_parents(ctx, &key.key, &src.parent_refs, gateways) {
            let Some(gw) = gateways.get(&pk.gateway) else {
                continue;
            };
            let Ok(listeners) = eligible_listeners(ctx, &key, &hostnames, &pk, gw) else {
                continue;
            };
            for (i, narrowed) in listeners {
                per_listener
                    .entry((gw.key.clone(), i))
                    .or_default()
                    .push(Candidate {
                        key: key.clone(),
                        created_at: src.created_at(),
                        hostnames: narrowed,
                    });
            }
        }
    };
    if kinds_meet {
        for (k, r) in &ctx.cluster.http_routes {
            add(RouteKey::http(k.clone()), RouteSource::http(r));
        }
        for (k, r) in &ctx.cluster.grpc_routes {
            add(RouteKey::grpc(k.clone()), RouteSource::grpc(r));
        }
    }
    if ctx.cluster.tls_routes.len() >= 2 {
        for (k, r) in &ctx.cluster.tls_routes {
            add(RouteKey::tls(k.clone()), RouteSource::tls(r));
        }
    }
    for (listener, candidates) in per_listener {
        tls_holders(&listener, &candidates, &mut out);
        let (http, grpc): (Vec<&Candidate>, Vec<&Candidate>) = candidates
            .iter()
            .filter(|c| c.key.kind != meridian_model::snapshot::RouteKind::Tls)
            .partition(|c| c.key.kind == meridian_model::snapshot::RouteKind::Http);
        for h in &http {
            for g in &grpc {
                if !overlap(&h.hostnames, &g.hostnames) {
                    continue;
                }
                let (winner, loser) = if h.rank() <= g.rank() { (h, g) } else { (g, h) };
                out.entry(loser.key.clone())
                    .or_default()
                    .entry(listener.clone())
                    .or_insert_with(|| winner.key.to_string());
            }
        }
    }
    out
}

/// TLSRoutes on one listener: older first, each hostname held by the first route naming it; a
/// route left with no hostname of its own is blocked, naming the route holding its first one.
fn tls_holders(listener: &(ObjectKey, usize), candidates: &[Candidate], out: &mut Conflicts) {
    let mut tls: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.key.kind == meridian_model::snapshot::RouteKind::Tls)
        .collect();
    if tls.len() < 2 {
        return;
    }
    tls.sort_by(|a, b| a.rank().cmp(&b.rank()));
    // Narrowed hostname ("" = every host of the listener) → the route holding it.
    let mut held: BTreeMap<&str, &RouteKey> = BTreeMap::new();
    for c in tls {
        let names: Vec<&str> = if c.hostnames.is_empty() {
            vec![""]
        } else {
            c.hostnames.iter().map(String::as_str).collect()
        };
        if let Some(holder) = names
            .iter()
            .map(|h| held.get(h))
            .collect::<Option<Vec<_>>>()
            .and_then(|holders| holders.first().copied())
        {
            out.entry(c.key.clone())
                .or_default()
                .entry(listener.clone())
                .or_insert_with(|| holder.to_string());
            continue;
        }
        for h in names {
            held.entry(h).or_insert(&c.key);
        }
    }
}

/// Whether two hostname sets narrowed to one listener share a host (empty = all of them).
fn overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| hostname::intersect(Some(x), y).is_some()))
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn hostname_sets_overlap() {
        let s = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert!(overlap(&s(&[]), &s(&["a.example.com"])));
        assert!(overlap(&s(&["*.example.com"]), &s(&["a.example.com"])));
        assert!(overlap(&s(&["a.example.com"]), &s(&["*.example.com"])));
        assert!(overlap(&s(&["*.example.com"]), &s(&["*.a.example.com"])));
        assert!(!overlap(&s(&["a.example.com"]), &s(&["b.example.com"])));
        assert!(!overlap(&s(&["*.example.com"]), &s(&["example.com"])));
    }
}
