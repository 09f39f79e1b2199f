//! TLSRoute (passthrough) → the shapes route translation already works on.
//!
//! A TLSRoute attaches like the other kinds (module `route`: parentRefs, `allowedRoutes`,
//! hostname intersection, status) and its backends resolve like theirs (module `rules` and
//! `backend`: kinds, ReferenceGrants `from: TLSRoute`, weights, endpoints with their locality
//! and failover data). Only a passthrough listener (`protocol: TLS`, `tls.mode: Passthrough`)
//! takes it (module `gateway`), and what a snapshot carries for it is one rule of backends:
//!
//! ```text
//! TLSRoute ─► parentRefs, status.parents   (same JSON shape as HTTPRoute's: one serde round trip)
//!          ─► hostnames: the SNI names (effective = intersection with the listener's; route
//!                        step 3 refuses a route with none: NoMatchingListenerHostname)
//!          ─► rules: v1 has exactly one; a second one (a cluster without our CRD's validation)
//!                    is dropped with UnsupportedValue (PartiallyInvalid)
//!               backendRefs ─► HTTPRoute backendRefs (no filters), translated as theirs
//!          ─► after translation (`passthrough_rules`): no matches, filters, timeouts, retry
//!             or backend TLS — a passthrough connection has no request to apply them to, and
//!             the proxy never originates TLS for it (BackendTLSPolicy does not apply)
//! ```
//!
//! Conflicts: two TLSRoutes claiming one hostname on one listener — the older (creation
//! timestamp, then `namespace/name`) keeps it (module `conflict`).

use gateway_api::httproutes::{
    HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteStatusParents,
};
use gateway_api::tlsroutes::{TlsRoute, TlsRouteRules};
use meridian_model::snapshot::{Rule, Timeouts};

use super::{Problem, recast, recast_all};

/// A TLSRoute in HTTPRoute shapes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Converted {
    pub parent_refs: Vec<HttpRouteParentRefs>,
    pub rules: Vec<HttpRouteRules>,
    /// Per rule: why it is dropped before translation (`None`: translate it).
    pub invalid: Vec<Option<Problem>>,
    /// `status.parents` (any controller's).
    pub status: Vec<HttpRouteStatusParents>,
}

/// Converts a TLSRoute (module docs). Parent refs or status entries that do not convert are
/// left out (the shapes are equal; a failure would be a `gateway-api` change).
pub(crate) fn convert(route: &TlsRoute) -> Converted {
    let mut out = Converted {
        parent_refs: recast_all(route.spec.parent_refs.iter().flatten()),
        status: status_parents(route),
        ..Converted::default()
    };
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let (converted, mut problem) = convert_rule(rule);
        if i > 0 {
            problem.get_or_insert(Problem::new(
                "UnsupportedValue",
                "a TLSRoute has exactly one rule (TLSRoute v1); further rules are ignored",
            ));
        }
        out.rules.push(converted);
        out.invalid.push(problem);
    }
    out
}

/// A TLSRoute's `status.parents` (any controller's) in the HTTPRoute shape.
pub(crate) fn status_parents(route: &TlsRoute) -> Vec<HttpRouteStatusParents> {
    recast_all(route.status.iter().flat_map(|s| &s.parents))
}

fn convert_rule(rule: &TlsRouteRules) -> (HttpRouteRules, Option<Problem>) {
    let TlsRouteRules { backend_refs, name } = rule;
    let mut problem = None;
    let backend_refs: Vec<HttpRouteRulesBackendRefs> = backend_refs
        .iter()
        .filter_map(|b| match recast(b) {
            Ok(b) => Some(b),
            Err(e) => {
                problem.get_or_insert(Problem::new(
                    "UnsupportedValue",
                    format!("backendRefs do not convert: {e}"),
                ));
                None
            }
        })
        .collect();
    let converted = HttpRouteRules {
        backend_refs: Some(backend_refs),
        filters: None,
        // No matches: the rule takes every connection its route's hostnames bring.
        matches: None,
        name: name.clone(),
        timeouts: None,
    };
    (converted, problem)
}

/// What a passthrough route keeps of its translated rules: the backends (weights, endpoints,
/// failover) and the rule name. BackendTLSPolicy never applies: the proxy relays the client's
/// own TLS session.
pub(crate) fn passthrough_rules(rules: &mut [Rule]) {
    for rule in rules {
        rule.matches.clear();
        rule.filters.clear();
        rule.timeouts = Timeouts::default();
        rule.retry = None;
        for b in &mut rule.backends {
            b.filters.clear();
            b.tls = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use gateway_api::tlsroutes::{TlsRouteRulesBackendRefs, TlsRouteSpec};

    use super::*;

    #[test]
    fn one_rule_kept_further_rules_dropped_backends_recast() {
        let backend = |name: &str| TlsRouteRulesBackendRefs {
            name: name.into(),
            port: Some(443),
            weight: Some(3),
            ..Default::default()
        };
        let route = TlsRoute {
            metadata: Default::default(),
            spec: TlsRouteSpec {
                hostnames: vec!["a.example.com".into()],
                parent_refs: None,
                rules: vec![
                    TlsRouteRules {
                        backend_refs: vec![backend("a"), backend("b")],
                        name: Some("main".into()),
                    },
                    TlsRouteRules {
                        backend_refs: vec![backend("c")],
                        name: None,
                    },
                ],
            },
            status: None,
        };
        let c = convert(&route);
        assert_eq!(c.rules.len(), 2);
        assert!(c.invalid[0].is_none());
        assert_eq!(c.invalid[1].as_ref().unwrap().reason, "UnsupportedValue");
        let refs = c.rules[0].backend_refs.as_ref().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[1].name.as_str(), refs[1].port, refs[1].weight),
            ("b", Some(443), Some(3))
        );
        assert!(c.rules[0].matches.is_none());
        assert_eq!(c.rules[0].name.as_deref(), Some("main"));
    }
}
