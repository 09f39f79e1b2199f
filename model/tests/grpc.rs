//! GRPCRoute matching in the router: a gRPC method condition is `POST` plus the path
//! [`GrpcMethodMatch::path_match`] gives, and GRPCRoute matches rank by the GRPCRoute rules
//! (characters of service, then of method, then header count, then the route tie-breakers),
//! not by HTTPRoute's path rules. Rows follow the GRPCRoute conformance tests
//! (GRPCExactMethodMatching, GRPCRouteHeaderMatching, GRPCRouteListenerHostnameMatching).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_model::snapshot::{GrpcMethodMatch, Match, PathMatch, Route, ValueMatchType};

/// A GRPCRoute match as the controller writes it.
fn grpc(kind: ValueMatchType, service: Option<&str>, method: Option<&str>) -> Match {
    let g = GrpcMethodMatch {
        kind,
        service: service.map(str::to_string),
        method: method.map(str::to_string),
    };
    Match {
        path: g.path_match(),
        method: Some("POST".to_string()),
        grpc: Some(g),
        ..Match::default()
    }
}

fn exact(service: &str, method: &str) -> Match {
    grpc(ValueMatchType::Exact, Some(service), Some(method))
}

/// A gRPC call: `POST /<service>/<method>` with the gRPC content type.
fn call(host: &str, service: &str, method: &str) -> Req {
    req(host, &format!("/{service}/{method}"))
        .method("POST")
        .header("content-type", "application/grpc")
}

fn router(routes: Vec<Route>) -> meridian_model::Router {
    let mut l = listener("http", 80);
    l.routes = routes.into_iter().map(Into::into).collect();
    compile(vec![gateway("infra", "same-namespace").listener(l)])
}

#[test]
fn path_match_of_each_method_condition() {
    let g = |kind, s: Option<&str>, m: Option<&str>| {
        GrpcMethodMatch {
            kind,
            service: s.map(str::to_string),
            method: m.map(str::to_string),
        }
        .path_match()
    };
    use ValueMatchType::*;
    assert_eq!(
        g(Exact, Some("a.B"), Some("C")),
        PathMatch::Exact("/a.B/C".into())
    );
    assert_eq!(
        g(Exact, Some("a.B"), None),
        PathMatch::RegularExpression("/a\\.B/[^/]+".into())
    );
    assert_eq!(
        g(Exact, None, Some("C")),
        PathMatch::RegularExpression("/[^/]+/C".into())
    );
    assert_eq!(
        g(RegularExpression, Some("a\\..*"), None),
        PathMatch::RegularExpression("/(?:a\\..*)/[^/]+".into())
    );
    assert_eq!(g(Exact, None, None), PathMatch::PathPrefix("/".into()));
}

#[test]
fn exact_method_matching() {
    // GRPCExactMethodMatching: service+method exact to v1, another pair to v2, the rest 404.
    let r = router(vec![
        route("infra", "exact-matching")
            .rule(rule().when(exact("grpc.conformance.Echo", "Echo")).to("v1"))
            .rule(
                rule()
                    .when(exact("grpc.conformance.Echo", "EchoTwo"))
                    .to("v2"),
            ),
    ]);
    check(
        &r,
        &[
            (call("a.example", "grpc.conformance.Echo", "Echo"), "v1"),
            (call("a.example", "grpc.conformance.Echo", "EchoTwo"), "v2"),
            (
                call("a.example", "grpc.conformance.Echo", "EchoThree"),
                "404",
            ),
            (call("a.example", "grpc.conformance.Other", "Echo"), "404"),
            // The method condition is POST: a GET on the same path is not a gRPC call.
            (
                req("a.example", "/grpc.conformance.Echo/Echo").method("GET"),
                "404",
            ),
            // Exact service: the dot is not a wildcard.
            (call("a.example", "grpcXconformance.Echo", "Echo"), "404"),
        ],
    );
}

#[test]
fn service_only_method_only_and_regex_conditions() {
    use ValueMatchType::*;
    let r = router(vec![
        route("infra", "r")
            .rule(rule().when(grpc(Exact, Some("pkg.Svc"), None)).to("svc"))
            .rule(rule().when(grpc(Exact, None, Some("Ping"))).to("ping"))
            .rule(
                rule()
                    .when(grpc(RegularExpression, Some("re\\.[a-z]+"), Some("Get.*")))
                    .to("re"),
            ),
    ]);
    check(
        &r,
        &[
            (call("h", "pkg.Svc", "Anything"), "svc"),
            (call("h", "other.Svc", "Ping"), "ping"),
            (call("h", "re.abc", "GetThing"), "re"),
            (call("h", "re.ABC", "GetThing"), "404"),
            (call("h", "re.abc", "PutThing"), "404"),
            // A method condition never spans segments.
            (call("h", "pkg.Svc/extra", "Ping"), "404"),
        ],
    );
}

#[test]
fn header_matching_and_header_count_precedence() {
    // GRPCRouteHeaderMatching: more header matches win among equal method conditions.
    let r = router(vec![
        route("infra", "headers")
            .rule(
                rule()
                    .when(exact("pkg.Svc", "Do").header("version", "one"))
                    .to("v1"),
            )
            .rule(
                rule()
                    .when(
                        exact("pkg.Svc", "Do")
                            .header("version", "one")
                            .header("color", "blue"),
                    )
                    .to("v2"),
            )
            .rule(
                rule()
                    .when(exact("pkg.Svc", "Do").header_re("grade", "[ab]"))
                    .to("v3"),
            ),
    ]);
    check(
        &r,
        &[
            (call("h", "pkg.Svc", "Do").header("version", "one"), "v1"),
            (
                call("h", "pkg.Svc", "Do")
                    .header("version", "one")
                    .header("Color", "blue"),
                "v2",
            ),
            (call("h", "pkg.Svc", "Do").header("grade", "b"), "v3"),
            (call("h", "pkg.Svc", "Do").header("grade", "c"), "404"),
            (call("h", "pkg.Svc", "Do"), "404"),
        ],
    );
}

#[test]
fn precedence_service_then_method_then_headers_then_age() {
    use ValueMatchType::*;
    // Each later row adds a competitor that must lose to the one before it.
    let routes = vec![
        // Longest service wins even against a method-only condition with more headers.
        route("infra", "a-method-only").created(1).rule(
            rule()
                .when(
                    grpc(Exact, None, Some("Do"))
                        .header("x", "1")
                        .header("y", "1"),
                )
                .to("method-only"),
        ),
        route("infra", "b-service-short").created(2).rule(
            rule()
                .when(grpc(Exact, Some("p.S"), None))
                .to("service-short"),
        ),
        route("infra", "c-service-long").created(3).rule(
            rule()
                .when(grpc(Exact, Some("pkg.Service"), None))
                .to("service-long"),
        ),
        route("infra", "d-both")
            .created(4)
            .rule(rule().when(exact("pkg.Service", "Do")).to("both")),
        // Same service and method as d-both but newer: loses the tie on age.
        route("infra", "e-both-newer")
            .created(5)
            .rule(rule().when(exact("pkg.Service", "Do")).to("both-newer")),
        // A catch-all GRPCRoute rule (no method condition) ranks last.
        route("infra", "f-catch-all")
            .created(0)
            .rule(rule().when(grpc(Exact, None, None)).to("catch-all")),
    ];
    let r = router(routes.clone());
    check(
        &r,
        &[
            (call("h", "pkg.Service", "Do"), "both"),
            (call("h", "pkg.Service", "Other"), "service-long"),
            (call("h", "p.S", "Do"), "service-short"),
            (
                call("h", "x.Y", "Do").header("x", "1").header("y", "1"),
                "method-only",
            ),
            (call("h", "x.Y", "Do"), "catch-all"),
        ],
    );
    // Snapshot order does not matter.
    let mut reversed = routes;
    reversed.reverse();
    let r = router(reversed);
    assert_eq!(send(&r, &call("h", "pkg.Service", "Do")), "both");
    assert_eq!(send(&r, &call("h", "x.Y", "Do")), "catch-all");
}

#[test]
fn grpc_ranking_ignores_http_path_length() {
    use ValueMatchType::*;
    // Under HTTPRoute rules the exact path `/a.B/Do` would beat the regex of a service-only
    // condition; under GRPCRoute rules the longer service wins.
    let r = router(vec![
        route("infra", "exact-short").rule(
            rule()
                .when(exact("a.B", "LongMethodName"))
                .to("exact-short"),
        ),
        route("infra", "service-long").rule(
            rule()
                .when(grpc(Exact, Some("a.Bcdefghijklmnopq"), None))
                .to("long"),
        ),
        route("infra", "regex-equal").rule(
            rule()
                .when(grpc(RegularExpression, Some("a.B"), Some("LongMethodName")))
                .to("regex"),
        ),
    ]);
    // Same characters of service and method: exact ranks before the regular expression.
    assert_eq!(send(&r, &call("h", "a.B", "LongMethodName")), "exact-short");
    assert_eq!(send(&r, &call("h", "a.Bcdefghijklmnopq", "X")), "long");
}

#[test]
fn listener_hostname_matching() {
    // GRPCRouteListenerHostnameMatching: routes on different listeners by hostname.
    let gw = gateway("infra", "gw")
        .listener(
            listener("listener-1", 80)
                .host("bar.com")
                .route(route("infra", "one").rule(rule().when(exact("pkg.Svc", "Do")).to("v1"))),
        )
        .listener(
            listener("listener-2", 80)
                .host("foo.bar.com")
                .route(route("infra", "two").rule(rule().when(exact("pkg.Svc", "Do")).to("v2"))),
        )
        .listener(
            listener("listener-3", 80)
                .host("*.bar.com")
                .route(route("infra", "three").rule(rule().when(exact("pkg.Svc", "Do")).to("v3"))),
        )
        .listener(
            listener("listener-4", 80)
                .host("*.foo.com")
                .route(route("infra", "three").rule(rule().when(exact("pkg.Svc", "Do")).to("v3"))),
        );
    let r = compile(vec![gw]);
    check(
        &r,
        &[
            (call("bar.com", "pkg.Svc", "Do"), "v1"),
            (call("foo.bar.com", "pkg.Svc", "Do"), "v2"),
            (call("baz.bar.com", "pkg.Svc", "Do"), "v3"),
            (call("boo.bar.com", "pkg.Svc", "Do"), "v3"),
            (call("multiple.prefixes.bar.com", "pkg.Svc", "Do"), "v3"),
            (call("multiple.prefixes.foo.com", "pkg.Svc", "Do"), "v3"),
            (call("foo.com", "pkg.Svc", "Do"), "404"),
            (call("no.matching.host", "pkg.Svc", "Do"), "404"),
        ],
    );
}

#[test]
fn a_rule_is_grpc_when_its_matches_carry_the_condition() {
    let http = rule().path("/x").to("v1");
    assert!(!http.is_grpc());
    let g = rule().when(exact("a.B", "C")).to("v1");
    assert!(g.is_grpc());
    // The condition survives the wire.
    let json = serde_json::to_string(&g).unwrap();
    let back: meridian_model::snapshot::Rule = serde_json::from_str(&json).unwrap();
    assert_eq!(back, g);
    assert!(json.contains("\"grpc\""), "{json}");
}
