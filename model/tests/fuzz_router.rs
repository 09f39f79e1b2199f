//! Fuzz target: the router, with generated routes and requests.
//!
//! Snapshots are generated from small vocabularies (a few hostnames, path segments, header and
//! query names) so generated requests actually meet generated rules; every generated snapshot is
//! valid by construction except for regexes, which may not compile (those snapshots are refused,
//! which is checked too). Properties:
//!
//! - `route()` never panics, and the same request gets the same rule from the same router and
//!   from a second compile of the same snapshot (the index is built from hash maps, so a second
//!   compile has another iteration order);
//! - hostnames match case-insensitively: a Host in other letter case, with a port or a trailing
//!   dot gets the same rule;
//! - Gateway API precedence: with an `Exact` rule for the request's path and no other condition,
//!   a `PathPrefix` rule covering the same path never wins, whatever the routes' ages and names.

#![allow(clippy::unwrap_used)]

mod fuzz_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use meridian_model::router::Decision;
use meridian_model::snapshot::*;
use meridian_model::{Request, Router};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

const REGRESSIONS: &str = "tests/fuzz_router.proptest-regressions";
const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const PORT: u16 = 80;

const HOSTS: &[&str] = &[
    "a.example.com",
    "b.a.example.com",
    "*.example.com",
    "*.a.example.com",
    "example.com",
    "other.test",
    "A.Example.COM",
    "*.EXAMPLE.com",
];
const SEGMENTS: &[&str] = &["a", "b", "api", "v1", "A", "a.b", "%41", ""];
const HEADERS: &[&str] = &["x-a", "X-B", "x-a"];
const VALUES: &[&str] = &["1", "2", "", "v1"];
const METHODS: &[&str] = &["GET", "POST", "get"];
const REGEXES: &[&str] = &["/a.*", "/[ab]/.*", "/api/v[0-9]", ".*", "(", "/a)|(/b"];

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(SEGMENTS), 0..4).prop_map(|segs| {
        let mut p = String::new();
        for s in segs {
            p.push('/');
            p.push_str(s);
        }
        if p.is_empty() { "/".to_string() } else { p }
    })
}

fn path_match() -> impl Strategy<Value = PathMatch> {
    prop_oneof![
        path().prop_map(PathMatch::Exact),
        path().prop_map(PathMatch::PathPrefix),
        path().prop_map(|p| PathMatch::PathPrefix(format!("{p}/"))),
        select(REGEXES).prop_map(|r| PathMatch::RegularExpression(r.to_string())),
    ]
}

fn value_match() -> impl Strategy<Value = (String, String, ValueMatchType)> {
    (
        select(HEADERS),
        select(VALUES),
        prop_oneof![
            3 => Just(ValueMatchType::Exact),
            1 => Just(ValueMatchType::RegularExpression),
        ],
    )
        .prop_map(|(n, v, k)| (n.to_string(), v.to_string(), k))
}

fn a_match() -> impl Strategy<Value = Match> {
    (
        path_match(),
        prop::collection::vec(value_match(), 0..2),
        prop::collection::vec(value_match(), 0..2),
        proptest::option::of(select(METHODS)),
    )
        .prop_map(|(path, headers, query, method)| Match {
            path,
            headers: headers
                .into_iter()
                .map(|(name, value, kind)| HeaderMatch { name, value, kind })
                .collect(),
            query_params: query
                .into_iter()
                .map(|(name, value, kind)| QueryParamMatch { name, value, kind })
                .collect(),
            method: method.map(str::to_string),
            grpc: None,
        })
}

fn backend(name: String) -> Backend {
    Backend {
        name,
        weight: 1,
        filters: Vec::new(),
        target: BackendTarget::Invalid {
            reason: "fuzz".to_string(),
        },
        tls: None,
    }
}

fn a_route(i: usize) -> impl Strategy<Value = Route> {
    (
        select(&["ns-a", "ns-b"][..]),
        select(&["r1", "r2", "r3"][..]),
        -2i64..3,
        prop::collection::vec(select(HOSTS), 0..3),
        prop::collection::vec(prop::collection::vec(a_match(), 0..3), 1..4),
    )
        .prop_map(move |(ns, name, created_at, hosts, rules)| Route {
            namespace: ns.to_string(),
            name: format!("{name}-{i}"),
            kind: Default::default(),
            created_at,
            hostnames: hosts.into_iter().map(str::to_string).collect(),
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(r, matches)| Rule {
                    matches,
                    backends: vec![backend(format!("{ns}/{name}-{i}/{r}"))],
                    ..Rule::default()
                })
                .collect(),
        })
}

fn snapshot_of(listener_host: Option<&str>, routes: Vec<Route>) -> Snapshot {
    Snapshot {
        gateways: vec![Gateway {
            namespace: "infra".to_string(),
            name: "gw".to_string(),
            listeners: vec![Listener {
                name: "http".to_string(),
                address: ADDR,
                port: PORT,
                protocol: Protocol::Http,
                hostname: listener_host.map(str::to_string),
                tls: None,
                routes: routes.into_iter().map(Into::into).collect(),
            }],
            served_by_header: false,
        }],
        ..Snapshot::empty(1)
    }
}

fn routes() -> impl Strategy<Value = Vec<Route>> {
    (0usize..4).prop_flat_map(|n| (0..n).map(a_route).collect::<Vec<_>>())
}

#[derive(Clone, Debug)]
struct Req {
    host: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

fn request() -> impl Strategy<Value = Req> {
    (
        select(HOSTS).prop_map(|h| h.replace('*', "x")),
        select(METHODS),
        path(),
        prop::collection::vec((select(HEADERS), select(VALUES)), 0..3),
        prop::collection::vec((select(HEADERS), select(VALUES)), 0..3),
    )
        .prop_map(|(host, method, path, headers, query)| Req {
            host,
            method: method.to_string(),
            path,
            query: query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        })
}

/// The rule a decision names, comparable across routers: (route, rule index, matched prefix), or
/// the status for other outcomes.
fn outcome(d: &Decision) -> String {
    match d {
        Decision::NoListener => "no listener".to_string(),
        Decision::NotFound { .. } => "404".to_string(),
        Decision::Misdirected { .. } => "421".to_string(),
        Decision::Matched(m) => format!(
            "{}/{} rule {} prefix {:?}",
            m.rule.route_namespace, m.rule.route_name, m.rule.index, m.matched_prefix
        ),
    }
}

fn route_with(router: &Router, req: &Req, host: &str) -> Decision {
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    router.route(&Request {
        local: SocketAddr::new(ADDR, PORT),
        sni: None,
        host: Some(host),
        method: &req.method,
        path: &req.path,
        query: Some(&req.query),
        headers: &&headers[..],
    })
}

#[test]
fn routing_is_deterministic_and_case_insensitive() {
    fuzz_support::run(
        "router/determinism",
        1_500,
        REGRESSIONS,
        (
            proptest::option::of(select(HOSTS)),
            routes(),
            prop::collection::vec(request(), 1..6),
        ),
        |(listener_host, routes, requests)| {
            let snapshot = snapshot_of(listener_host, routes);
            let Ok(router) = Router::compile(snapshot.clone()) else {
                // Only the deliberately broken regexes may be refused.
                let has_bad_regex = snapshot.gateways[0].listeners[0]
                    .routes
                    .iter()
                    .flat_map(|r| &r.rules)
                    .flat_map(|r| &r.matches)
                    .any(|m| {
                        matches!(&m.path, PathMatch::RegularExpression(p) if p.contains(['(', ')']))
                    });
                prop_assert!(has_bad_regex, "a valid generated snapshot was refused");
                return Ok(());
            };
            let again =
                Router::compile(snapshot).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for req in &requests {
                let first = outcome(&route_with(&router, req, &req.host));
                prop_assert_eq!(&first, &outcome(&route_with(&router, req, &req.host)));
                prop_assert_eq!(&first, &outcome(&route_with(&again, req, &req.host)));
                for spelled in [
                    req.host.to_ascii_uppercase(),
                    format!("{}:{PORT}", req.host),
                    format!("{}.", req.host.to_ascii_uppercase()),
                ] {
                    prop_assert_eq!(
                        &first,
                        &outcome(&route_with(&router, req, &spelled)),
                        "Host {:?} routed unlike {:?}",
                        spelled,
                        req.host
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn exact_path_beats_prefix() {
    fuzz_support::run(
        "router/exact-over-prefix",
        1_500,
        REGRESSIONS,
        (
            routes(),
            request(),
            0usize..4,
            (-2i64..3, select(&["aa", "zz"][..])),
            (-2i64..3, select(&["aa", "zz"][..])),
        ),
        |(mut routes, req, cut, (exact_age, exact_name), (prefix_age, prefix_name))| {
            // Only path conditions compete here: hostnames (which rank above paths) are dropped.
            for r in &mut routes {
                r.hostnames.clear();
            }
            let segments: Vec<&str> = req.path.split('/').collect();
            let prefix = segments[..segments.len().saturating_sub(cut).max(1)].join("/");
            let prefix = if prefix.is_empty() {
                "/".to_string()
            } else {
                prefix
            };
            let exact_rule = Rule {
                matches: vec![Match {
                    path: PathMatch::Exact(req.path.clone()),
                    ..Match::default()
                }],
                backends: vec![backend("exact".to_string())],
                ..Rule::default()
            };
            let prefix_rule = Rule {
                matches: vec![Match {
                    path: PathMatch::PathPrefix(prefix.clone()),
                    ..Match::default()
                }],
                backends: vec![backend("prefix".to_string())],
                ..Rule::default()
            };
            for (name, age, rule) in [
                (format!("{exact_name}-exact"), exact_age, exact_rule),
                (format!("{prefix_name}-prefix"), prefix_age, prefix_rule),
            ] {
                routes.push(Route {
                    namespace: "ns-a".to_string(),
                    name,
                    kind: Default::default(),
                    created_at: age,
                    hostnames: Vec::new(),
                    rules: vec![rule],
                });
            }
            let Ok(router) = Router::compile(snapshot_of(None, routes)) else {
                return Ok(());
            };
            match route_with(&router, &req, &req.host) {
                Decision::Matched(m) => {
                    prop_assert!(
                        m.matched_prefix.is_none(),
                        "prefix {:?} won over an exact match of {:?}",
                        m.matched_prefix,
                        req.path
                    );
                    prop_assert!(
                        m.rule
                            .rule
                            .matches
                            .iter()
                            .any(|mm| mm.path == PathMatch::Exact(req.path.clone())),
                        "rule {}/{} without an exact match of {:?} won",
                        m.rule.route_name,
                        m.rule.index,
                        req.path
                    );
                }
                other => {
                    return Err(TestCaseError::fail(format!(
                        "an unconditional exact rule exists, got {}",
                        outcome(&other)
                    )));
                }
            }
            Ok(())
        },
    );
}
