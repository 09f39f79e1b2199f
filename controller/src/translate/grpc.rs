//! GRPCRoute → the shapes route translation already works on.
//!
//! A GRPCRoute is translated by the same code as an HTTPRoute (module `route`: parents,
//! listeners, hostnames, status; module `rules`: filters, backends, the proxy's own compile
//! check). What differs is confined to this conversion and to the kind the rest carries along:
//!
//! ```text
//! GRPCRoute ─► parentRefs, status.parents     (same JSON shape: one serde round trip)
//!           ─► rules: omitted ⇒ one rule matching every call
//!                each match ─► method POST + path of the method condition
//!                              (GrpcMethodMatch::path_match: exact `/svc/method`, or a regex
//!                               over the whole path), header matches as they are;
//!                              no matches ⇒ one match for every call
//!                filters, backendRefs ─► the HTTPRoute types (same JSON shape for the four
//!                              filter types GRPCRoute has)
//!           ─► per rule: the method conditions (put on the snapshot matches after
//!              translation, for the GRPCRoute precedence of the router), and the problem
//!              that drops the rule before translation (what the CRD's CEL would refuse)
//! ```
//!
//! The CEL rules our CRD installs refuse the same values; they are checked here again because
//! a cluster may carry another GRPCRoute CRD (or none of its validation).

use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethod, GrpcRouteRulesMatchesMethodType,
};
use gateway_api::httproutes::{
    HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPath,
    HttpRouteRulesMatchesPathType, HttpRouteStatusParents,
};
use meridian_model::snapshot::{GrpcMethodMatch, PathMatch, Rule, ValueMatchType};

use super::{Problem, recast, recast_all};

/// A GRPCRoute in HTTPRoute shapes, with what only gRPC has.
#[derive(Clone, Debug, Default)]
pub(crate) struct Converted {
    pub parent_refs: Vec<HttpRouteParentRefs>,
    /// Rules after defaulting (never omitted: an omitted list is one catch-all rule).
    pub rules: Vec<HttpRouteRules>,
    /// Per rule: why it is dropped before translation (`None`: translate it).
    pub invalid: Vec<Option<Problem>>,
    /// Per rule, per match (in the order of `rules[i].matches`): the method condition.
    pub methods: Vec<Vec<GrpcMethodMatch>>,
    /// `status.parents` (any controller's).
    pub status: Vec<HttpRouteStatusParents>,
}

/// Converts a GRPCRoute (module docs). Parent refs or status entries that do not convert are
/// left out (they cannot: the shapes are equal; a failure would be a `gateway-api` change).
pub(crate) fn convert(route: &GrpcRoute) -> Converted {
    let mut out = Converted {
        parent_refs: recast_all(route.spec.parent_refs.iter().flatten()),
        status: status_parents(route),
        ..Converted::default()
    };
    let catch_all = [GrpcRouteRules::default()];
    let rules: &[GrpcRouteRules] = match &route.spec.rules {
        Some(r) => r,
        None => &catch_all,
    };
    for rule in rules {
        let (converted, methods, invalid) = convert_rule(rule);
        out.rules.push(converted);
        out.methods.push(methods);
        out.invalid.push(invalid);
    }
    out
}

/// A GRPCRoute's `status.parents` (any controller's) in the HTTPRoute shape, as translation
/// reads and merges them; entries that do not convert are left out (see [`convert`]).
pub(crate) fn status_parents(route: &GrpcRoute) -> Vec<HttpRouteStatusParents> {
    recast_all(route.status.iter().flat_map(|s| &s.parents))
}

fn convert_rule(rule: &GrpcRouteRules) -> (HttpRouteRules, Vec<GrpcMethodMatch>, Option<Problem>) {
    let GrpcRouteRules {
        backend_refs,
        filters,
        matches,
        name,
    } = rule;
    let mut problem = None;
    let any = [GrpcRouteRulesMatches::default()];
    let grpc_matches: &[GrpcRouteRulesMatches] = match matches.as_deref() {
        Some(m) if !m.is_empty() => m,
        _ => &any,
    };
    let mut http_matches = Vec::with_capacity(grpc_matches.len());
    let mut methods = Vec::with_capacity(grpc_matches.len());
    for m in grpc_matches {
        match convert_match(m) {
            Ok((h, g)) => {
                http_matches.push(h);
                methods.push(g);
            }
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    let filters = converted_list(&mut problem, "filters", filters.as_ref().map(recast));
    let backend_refs = converted_list(
        &mut problem,
        "backendRefs",
        backend_refs.as_ref().map(recast),
    );
    let converted = HttpRouteRules {
        backend_refs,
        filters,
        matches: Some(http_matches),
        name: name.clone(),
        timeouts: None,
    };
    (converted, methods, problem)
}

/// A re-cast list, or `None` with the rule's problem noted.
fn converted_list<T>(
    problem: &mut Option<Problem>,
    what: &str,
    r: Option<Result<T, String>>,
) -> Option<T> {
    match r? {
        Ok(v) => Some(v),
        Err(e) => {
            problem.get_or_insert(Problem::new(
                "UnsupportedValue",
                format!("{what} do not convert: {e}"),
            ));
            None
        }
    }
}

/// One match: `POST` + the method condition's path, headers kept.
fn convert_match(
    m: &GrpcRouteRulesMatches,
) -> Result<(HttpRouteRulesMatches, GrpcMethodMatch), Problem> {
    let GrpcRouteRulesMatches { headers, method } = m;
    let grpc = match method {
        None => GrpcMethodMatch::default(),
        Some(method) => method_condition(method)?,
    };
    let (r#type, value) = match grpc.path_match() {
        PathMatch::Exact(v) => (HttpRouteRulesMatchesPathType::Exact, v),
        PathMatch::PathPrefix(v) => (HttpRouteRulesMatchesPathType::PathPrefix, v),
        PathMatch::RegularExpression(v) => (HttpRouteRulesMatchesPathType::RegularExpression, v),
    };
    let headers = headers.as_ref().map(|hs| {
        hs.iter()
            .map(|h| HttpRouteRulesMatchesHeaders {
                name: h.name.clone(),
                value: h.value.clone(),
                r#type: h.r#type.as_ref().map(|t| match t {
                    GrpcRouteRulesMatchesHeadersType::Exact => {
                        HttpRouteRulesMatchesHeadersType::Exact
                    }
                    GrpcRouteRulesMatchesHeadersType::RegularExpression => {
                        HttpRouteRulesMatchesHeadersType::RegularExpression
                    }
                }),
            })
            .collect()
    });
    let http = HttpRouteRulesMatches {
        headers,
        method: Some(HttpRouteRulesMatchesMethod::Post),
        path: Some(HttpRouteRulesMatchesPath {
            r#type: Some(r#type),
            value: Some(value),
        }),
        query_params: None,
    };
    Ok((http, grpc))
}

/// The method condition (type `Exact` by default), refused as the CRD's CEL rules would.
fn method_condition(m: &GrpcRouteRulesMatchesMethod) -> Result<GrpcMethodMatch, Problem> {
    let GrpcRouteRulesMatchesMethod {
        method,
        service,
        r#type,
    } = m;
    // An empty string is "not given" (the field docs: "left empty or omitted").
    let service = service.clone().filter(|s| !s.is_empty());
    let method = method.clone().filter(|s| !s.is_empty());
    let kind = match r#type {
        None | Some(GrpcRouteRulesMatchesMethodType::Exact) => ValueMatchType::Exact,
        Some(GrpcRouteRulesMatchesMethodType::RegularExpression) => {
            ValueMatchType::RegularExpression
        }
    };
    if service.is_none() && method.is_none() {
        return Err(Problem::new(
            "UnsupportedValue",
            "a method match needs service, method or both",
        ));
    }
    if kind == ValueMatchType::Exact {
        if let Some(s) = service.as_deref().filter(|s| !is_service_name(s)) {
            return Err(Problem::new(
                "UnsupportedValue",
                format!("service {s:?} is not a gRPC service name (dot-separated identifiers)"),
            ));
        }
        if let Some(m) = method.as_deref().filter(|m| !is_identifier(m)) {
            return Err(Problem::new(
                "UnsupportedValue",
                format!("method {m:?} is not a gRPC method name (an identifier)"),
            ));
        }
    }
    for (what, v) in [("service", &service), ("method", &method)] {
        if let Some(v) = v.as_deref().filter(|v| v.len() > 1024) {
            return Err(Problem::new(
                "UnsupportedValue",
                format!("{what} is {} characters long (at most 1024)", v.len()),
            ));
        }
    }
    Ok(GrpcMethodMatch {
        kind,
        service,
        method,
    })
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Dot-separated identifiers, optionally with a leading dot (`.pkg.Service`).
fn is_service_name(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_identifier)
}

/// Puts the method conditions on the translated rules: `kept` are the rules translation kept
/// (in order), `dropped` the indexes it dropped. Every match of a kept rule gets its condition,
/// which marks the rule as gRPC for the router and the proxy.
pub(crate) fn mark_rules(kept: &mut [Rule], dropped: &[usize], methods: &[Vec<GrpcMethodMatch>]) {
    let kept_indexes = (0..methods.len()).filter(|i| !dropped.contains(i));
    for (rule, i) in kept.iter_mut().zip(kept_indexes) {
        for (m, g) in rule.matches.iter_mut().zip(&methods[i]) {
            m.grpc = Some(g.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_follow_the_exact_patterns() {
        for ok in ["a", "pkg.Svc", ".pkg.v1.Echo", "_x.Y_2"] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "pkg..Svc", "pkg.", "1pkg.Svc", "pkg/Svc", "pkg.S-v",
        ] {
            assert!(!is_service_name(bad), "{bad}");
        }
        assert!(is_identifier("Say_Hello2"));
        assert!(!is_identifier("Say.Hello"));
        assert!(!is_identifier("2Say"));
    }
}
