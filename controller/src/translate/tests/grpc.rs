//! GRPCRoute translation, table by table from the spec's rules and the GRPCRoute conformance
//! tests (GRPCExactMethodMatching, GRPCRouteHeaderMatching, GRPCRouteListenerHostnameMatching,
//! GRPCRouteNamedRule, GRPCRouteRequestHeaderModifier, GRPCRouteWeight): what lands in the
//! snapshot is checked through the proxy's own router, status through the conditions written.

use gateway_api::grpcroutes::GrpcRoute;
use meridian_model::router::{Decision, HeaderSource, Request};
use serde_json::json;

use super::*;

const GW: &str = "same-namespace";

/// A GRPCRoute in `ns` from its spec as JSON, created at `created` seconds.
fn grpc_route(ns: &str, name: &str, created: i64, spec: Value) -> GrpcRoute {
    let mut m = meta(Some(ns), name);
    m.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    GrpcRoute {
        metadata: m,
        spec: serde_json::from_value(spec).unwrap(),
        status: None,
    }
}

/// `{service, method}` exact match to `backend` on the `same-namespace` Gateway.
fn exact(service: &str, method: &str, backend: &str) -> Value {
    json!({"matches": [{"method": {"service": service, "method": method}}],
           "backendRefs": [{"name": backend, "port": 8080}]})
}

fn on_gw(rules: Vec<Value>) -> Value {
    json!({"parentRefs": [{"name": GW}], "rules": rules})
}

fn grpc_status<'a>(out: &'a Output, ns: &str, name: &str) -> &'a Value {
    status(out, StatusKind::GrpcRoute, Some(ns), name)
}

fn grpc_parent<'a>(out: &'a Output, ns: &str, name: &str) -> &'a Value {
    &grpc_status(out, ns, name)["parents"][0]
}

/// Where the proxy sends a gRPC call: the single backend's name, `404`, or `rule` for a rule
/// with several backends.
fn call(out: &Output, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let router = Router::compile(out.snapshots[CLUSTER].clone()).unwrap();
    let l = &snap_gateway(out, INFRA, GW).unwrap().listeners[0];
    let mut all = vec![("content-type", "application/grpc")];
    all.extend_from_slice(headers);
    let slice: &[(&str, &str)] = &all;
    let req = Request {
        local: std::net::SocketAddr::new(l.address, l.port),
        sni: None,
        host: Some(host),
        method: "POST",
        path,
        query: None,
        headers: &slice as &dyn HeaderSource,
    };
    match router.route(&req) {
        Decision::Matched(m) => match m.rule.rule.backends.as_slice() {
            [one] => one.name.rsplit('/').next().unwrap().to_string(),
            _ => "rule".to_string(),
        },
        Decision::NotFound { .. } => "404".to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn exact_method_matching() {
    let mut w = base();
    east(&mut w).apply(grpc_route(
        INFRA,
        "exact-matching",
        1_000,
        on_gw(vec![
            exact("grpc.conformance.Echo", "Echo", "infra-backend-v1"),
            exact("grpc.conformance.Echo", "EchoTwo", "infra-backend-v2"),
        ]),
    ));
    let out = run(&w, &cfg(&w));
    let p = grpc_parent(&out, INFRA, "exact-matching");
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(p["parentRef"]["kind"], "Gateway");
    assert_eq!(p["parentRef"]["group"], "gateway.networking.k8s.io");

    let r = snap_route(&out, INFRA, GW, "http", "exact-matching");
    assert_eq!(r.kind, model::RouteKind::Grpc);
    let m = &r.rules[0].matches[0];
    assert_eq!(m.method.as_deref(), Some("POST"));
    assert_eq!(
        m.path,
        model::PathMatch::Exact("/grpc.conformance.Echo/Echo".into())
    );
    assert!(r.rules.iter().all(model::Rule::is_grpc));
    for (path, want) in [
        ("/grpc.conformance.Echo/Echo", "infra-backend-v1:8080"),
        ("/grpc.conformance.Echo/EchoTwo", "infra-backend-v2:8080"),
        ("/grpc.conformance.Echo/EchoThree", "404"),
    ] {
        assert_eq!(call(&out, "h", path, &[]), want, "{path}");
    }
    // Listener status counts it and names both kinds.
    assert_eq!(attached(&out, INFRA, GW, "http"), 1);
    assert_eq!(supported_kinds(&out, INFRA, GW, "http"), BOTH_KINDS);
}

#[test]
fn header_matching_and_precedence() {
    let mut w = base();
    let rule = |headers: Value, backend: &str| {
        json!({"matches": [{"method": {"service": "pkg.Svc", "method": "Do"}, "headers": headers}],
               "backendRefs": [{"name": backend, "port": 8080}]})
    };
    east(&mut w).apply(grpc_route(
        INFRA,
        "header-matching",
        1_000,
        on_gw(vec![
            rule(
                json!([{"name": "version", "value": "one"}]),
                "infra-backend-v1",
            ),
            rule(
                json!([{"name": "version", "value": "one"}, {"name": "color", "value": "blue"}]),
                "infra-backend-v2",
            ),
            rule(
                json!([{"name": "grade", "type": "RegularExpression", "value": "[ab]"}]),
                "infra-backend-v3",
            ),
        ]),
    ));
    // A second route with a longer service wins over a service-only match of an older route.
    east(&mut w).apply(grpc_route(
        INFRA,
        "older-service-only",
        500,
        on_gw(vec![
            json!({"matches": [{"method": {"service": "pkg.Svc"}}],
                          "backendRefs": [{"name": "infra-backend-v3", "port": 8080}]}),
        ]),
    ));
    let out = run(&w, &cfg(&w));
    let path = "/pkg.Svc/Do";
    assert_eq!(
        call(&out, "h", path, &[("version", "one")]),
        "infra-backend-v1:8080"
    );
    assert_eq!(
        call(&out, "h", path, &[("version", "one"), ("color", "blue")]),
        "infra-backend-v2:8080"
    );
    assert_eq!(
        call(&out, "h", path, &[("grade", "b")]),
        "infra-backend-v3:8080"
    );
    // No header matches: the service+method rules all need headers; the service-only rule of
    // the other route takes it.
    assert_eq!(call(&out, "h", path, &[]), "infra-backend-v3:8080");
    assert_eq!(call(&out, "h", "/pkg.Other/Do", &[]), "404");
}

#[test]
fn listener_hostname_matching() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "hosts",
        vec![
            host(http("listener-1", 80), "bar.com"),
            host(http("listener-2", 80), "foo.bar.com"),
            host(http("listener-3", 80), "*.bar.com"),
        ],
    ));
    let to_listener = |l: &str, backend: &str| {
        json!({"parentRefs": [{"name": "hosts", "sectionName": l}],
               "rules": [{"backendRefs": [{"name": backend, "port": 8080}]}]})
    };
    c.apply(grpc_route(
        INFRA,
        "one",
        1_000,
        to_listener("listener-1", "infra-backend-v1"),
    ));
    c.apply(grpc_route(
        INFRA,
        "two",
        1_000,
        to_listener("listener-2", "infra-backend-v2"),
    ));
    c.apply(grpc_route(
        INFRA,
        "three",
        1_000,
        to_listener("listener-3", "infra-backend-v3"),
    ));
    // A route whose hostnames meet no listener of its parent.
    let mut none = to_listener("listener-1", "infra-backend-v1");
    none["hostnames"] = json!(["other.org"]);
    c.apply(grpc_route(INFRA, "no-host", 1_000, none));
    let out = run(&w, &cfg(&w));
    for (l, route) in [
        ("listener-1", "one"),
        ("listener-2", "two"),
        ("listener-3", "three"),
    ] {
        assert_eq!(snap_routes(&out, INFRA, "hosts", l), [route], "{l}");
        assert_eq!(attached(&out, INFRA, "hosts", l), 1, "{l}");
    }
    is(
        grpc_parent(&out, INFRA, "no-host"),
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    );
}

#[test]
fn weights_named_rules_and_filters() {
    let mut w = base();
    east(&mut w).apply(grpc_route(
        INFRA,
        "rich",
        1_000,
        on_gw(vec![
            json!({"name": "weighted",
                   "matches": [{"method": {"service": "pkg.Svc", "method": "Weighted"}}],
                   "backendRefs": [{"name": "infra-backend-v1", "port": 8080, "weight": 70},
                                   {"name": "infra-backend-v2", "port": 8080, "weight": 30},
                                   {"name": "infra-backend-v3", "port": 8080, "weight": 0}]}),
            json!({"name": "filtered",
                   "matches": [{"method": {"service": "pkg.Svc", "method": "Filtered"}}],
                   "filters": [
                       {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                           "set": [{"name": "x-set", "value": "1"}], "add": [{"name": "x-add", "value": "2"}],
                           "remove": ["x-gone"]}},
                       {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                           "add": [{"name": "x-resp", "value": "3"}]}},
                       {"type": "RequestMirror", "requestMirror": {
                           "backendRef": {"name": "infra-backend-v3", "port": 8080}}}],
                   "backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}),
        ]),
    ));
    let out = run(&w, &cfg(&w));
    is(
        grpc_parent(&out, INFRA, "rich"),
        "Accepted",
        "True",
        "Accepted",
    );
    let r = snap_route(&out, INFRA, GW, "http", "rich");
    assert_eq!(r.rules[0].name.as_deref(), Some("weighted"));
    assert_eq!(r.rules[1].name.as_deref(), Some("filtered"));
    let weights: Vec<u32> = r.rules[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [70, 30, 0]);
    let f = &r.rules[1].filters;
    assert!(
        matches!(&f[0], model::Filter::RequestHeaderModifier(m)
            if m.set[0].name == "x-set" && m.add[0].name == "x-add" && m.remove == ["x-gone"]),
        "{f:?}"
    );
    assert!(matches!(&f[1], model::Filter::ResponseHeaderModifier(m) if m.add[0].value == "3"));
    assert!(
        matches!(&f[2], model::Filter::RequestMirror(m) if m.backend.name == "infra/infra-backend-v3:8080")
    );
    assert!(has_feature(&out, "GRPCRoute"));
    assert!(has_feature(&out, "GRPCRouteNamedRouteRule"));
}

fn has_feature(out: &Output, name: &str) -> bool {
    status(out, StatusKind::GatewayClass, None, CLASS)["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == name)
}

#[test]
fn invalid_backends_and_reference_grants() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(svc(APP, "app-backend", &[(Some("http"), 8080, None)]));
    let cross = json!({"parentRefs": [{"name": GW}],
                       "rules": [{"backendRefs": [{"name": "app-backend", "namespace": APP, "port": 8080}]}]});
    c.apply(grpc_route(INFRA, "cross", 1_000, cross));
    c.apply(grpc_route(
        INFRA,
        "missing",
        1_000,
        json!({"parentRefs": [{"name": GW}], "hostnames": ["missing.example"],
               "rules": [{"backendRefs": [{"name": "nobody", "port": 8080}]}]}),
    ));
    c.apply(grpc_route(
        INFRA,
        "wrong-kind",
        1_000,
        json!({"parentRefs": [{"name": GW}], "hostnames": ["kind.example"],
               "rules": [{"backendRefs": [{"name": "x", "port": 8080, "group": "apps", "kind": "Deployment"}]}]}),
    ));
    // A grant for HTTPRoutes does not admit GRPCRoutes.
    c.apply(grant(
        APP,
        "for-http",
        ("gateway.networking.k8s.io", "HTTPRoute", INFRA),
        ("", "Service", None),
    ));
    let out = run(&w, &cfg(&w));
    for (name, reason) in [
        ("cross", "RefNotPermitted"),
        ("missing", "BackendNotFound"),
        ("wrong-kind", "InvalidKind"),
    ] {
        let p = grpc_parent(&out, INFRA, name);
        is(p, "Accepted", "True", "Accepted");
        is(p, "ResolvedRefs", "False", reason);
    }
    let cond_message = |out: &Output| {
        grpc_parent(out, INFRA, "cross")["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        cond_message(&out).contains("allows GRPCRoutes"),
        "{}",
        cond_message(&out)
    );

    east(&mut w).apply(grant(
        APP,
        "for-grpc",
        ("gateway.networking.k8s.io", "GRPCRoute", INFRA),
        ("", "Service", None),
    ));
    let out = run(&w, &cfg(&w));
    is(
        grpc_parent(&out, INFRA, "cross"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
}

#[test]
fn listener_kinds_admit_one_kind_or_both() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "kinds",
        vec![
            kinds(host(http("http-only", 80), "a.example"), &["HTTPRoute"]),
            kinds(host(http("grpc-only", 80), "b.example"), &["GRPCRoute"]),
            host(http("both", 80), "c.example"),
        ],
    ));
    let parent = |l: &str| json!([{"name": "kinds", "sectionName": l}]);
    for l in ["http-only", "grpc-only", "both"] {
        c.apply(grpc_route(
            INFRA,
            &format!("g-{l}"),
            1_000,
            json!({"parentRefs": parent(l), "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}),
        ));
        c.apply(route(
            INFRA,
            &format!("h-{l}"),
            vec![section(parent_in(INFRA, "kinds"), l)],
            &[],
            vec![to(vec![backend("infra-backend-v1", 8080)])],
        ));
    }
    let out = run(&w, &cfg(&w));
    is(
        grpc_parent(&out, INFRA, "g-http-only"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
    is(
        grpc_parent(&out, INFRA, "g-grpc-only"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        route_parent(&out, INFRA, "h-grpc-only", INFRA, "kinds"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
    is(
        route_parent(&out, INFRA, "h-http-only", INFRA, "kinds"),
        "Accepted",
        "True",
        "Accepted",
    );
    assert_eq!(
        supported_kinds(&out, INFRA, "kinds", "http-only"),
        ["gateway.networking.k8s.io/HTTPRoute"]
    );
    assert_eq!(
        supported_kinds(&out, INFRA, "kinds", "grpc-only"),
        ["gateway.networking.k8s.io/GRPCRoute"]
    );
    assert_eq!(attached(&out, INFRA, "kinds", "http-only"), 1);
    assert_eq!(attached(&out, INFRA, "kinds", "grpc-only"), 1);
    // On "both" the two routes have no hostnames, so they overlap; same age, and "infra/g-both"
    // sorts before "infra/h-both": the GRPCRoute is accepted, the HTTPRoute refused.
    assert_eq!(attached(&out, INFRA, "kinds", "both"), 1);
    is(
        grpc_parent(&out, INFRA, "g-both"),
        "Accepted",
        "True",
        "Accepted",
    );
    let h = route_parent(&out, INFRA, "h-both", INFRA, "kinds");
    is(h, "Accepted", "False", "NotAllowedByListeners");
    assert!(
        h.to_string().contains("GRPCRoute infra/g-both"),
        "names the winner: {h}"
    );
}

#[test]
fn http_and_grpc_routes_with_overlapping_hostnames_accept_only_the_older() {
    let mut w = base();
    let c = east(&mut w);
    let grpc = |hosts: Value| {
        json!({"parentRefs": [{"name": GW}], "hostnames": hosts,
               "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]})
    };
    let mut older_http = route(
        INFRA,
        "web",
        vec![parent(GW)],
        &["*.example.com"],
        vec![to(vec![backend("infra-backend-v2", 8080)])],
    );
    older_http.metadata.creation_timestamp = Some(Time(Timestamp::from_second(100).unwrap()));
    c.apply(older_http);
    // Overlaps (a.example.com is under *.example.com) and is newer: refused.
    c.apply(grpc_route(
        INFRA,
        "newer",
        200,
        grpc(json!(["a.example.com"])),
    ));
    // Does not overlap: both kinds share the listener. Same name as the HTTPRoute.
    c.apply(grpc_route(
        INFRA,
        "web",
        300,
        grpc(json!(["grpc.other.org"])),
    ));
    let out = run(&w, &cfg(&w));
    let p = grpc_parent(&out, INFRA, "newer");
    is(p, "Accepted", "False", "NotAllowedByListeners");
    assert!(p.to_string().contains("HTTPRoute infra/web"), "{p}");
    is(
        route_parent(&out, INFRA, "web", INFRA, GW),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        grpc_parent(&out, INFRA, "web"),
        "Accepted",
        "True",
        "Accepted",
    );
    // The HTTPRoute and the GRPCRoute named `web` are both served, ordered by kind.
    let kinds: Vec<(String, model::RouteKind)> = snap_listener(&out, INFRA, GW, "http")
        .unwrap()
        .routes
        .iter()
        .map(|r| (r.name.clone(), r.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("web".to_string(), model::RouteKind::Http),
            ("web".to_string(), model::RouteKind::Grpc),
        ]
    );
    assert_eq!(attached(&out, INFRA, GW, "http"), 2);

    // The older GRPCRoute wins instead once the HTTPRoute is newer.
    let mut newer_http = route(
        INFRA,
        "web",
        vec![parent(GW)],
        &["*.example.com"],
        vec![to(vec![backend("infra-backend-v2", 8080)])],
    );
    newer_http.metadata.creation_timestamp = Some(Time(Timestamp::from_second(250).unwrap()));
    east(&mut w).apply(newer_http);
    let out = run(&w, &cfg(&w));
    is(
        grpc_parent(&out, INFRA, "newer"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        route_parent(&out, INFRA, "web", INFRA, GW),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
}

#[test]
fn invalid_method_matches_drop_their_rule() {
    let mut w = base();
    east(&mut w).apply(grpc_route(
        INFRA,
        "some-bad",
        1_000,
        on_gw(vec![
            exact("pkg/Svc", "Do", "infra-backend-v1"),
            json!({"matches": [{"method": {"type": "Exact"}}], "backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}),
            exact("pkg.Svc", "Do", "infra-backend-v2"),
            json!({"matches": [{"method": {"type": "RegularExpression", "service": "("}}],
                   "backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}),
        ]),
    ));
    east(&mut w).apply(grpc_route(
        INFRA,
        "all-bad",
        1_000,
        json!({"parentRefs": [{"name": GW}], "hostnames": ["bad.example"],
               "rules": [exact("pkg.Svc", "Do.It", "infra-backend-v1")]}),
    ));
    let out = run(&w, &cfg(&w));
    let p = grpc_parent(&out, INFRA, "some-bad");
    is(p, "Accepted", "True", "Accepted");
    is(p, "PartiallyInvalid", "True", "UnsupportedValue");
    let msg = p.to_string();
    for want in [
        "Dropped Rule 0",
        "gRPC service name",
        "Dropped Rule 1",
        "needs service, method or both",
        "Dropped Rule 3",
    ] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let r = snap_route(&out, INFRA, GW, "http", "some-bad");
    assert_eq!(r.rules.len(), 1);
    assert!(r.rules[0].is_grpc());
    assert_eq!(call(&out, "h", "/pkg.Svc/Do", &[]), "infra-backend-v2:8080");
    is(
        grpc_parent(&out, INFRA, "all-bad"),
        "Accepted",
        "False",
        "UnsupportedValue",
    );
}

#[test]
fn omitted_rules_and_matches_match_every_call() {
    let mut w = base();
    east(&mut w).apply(grpc_route(
        INFRA,
        "catch-all",
        1_000,
        json!({"parentRefs": [{"name": GW}],
               "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}),
    ));
    east(&mut w).apply(grpc_route(
        INFRA,
        "no-rules",
        1_000,
        json!({"parentRefs": [{"name": GW}], "hostnames": ["empty.example"]}),
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(
        call(&out, "h", "/any.Service/Any", &[]),
        "infra-backend-v1:8080"
    );
    let r = snap_route(&out, INFRA, GW, "http", "catch-all");
    assert!(r.rules[0].is_grpc());
    // No rules at all: one catch-all rule without backends (its calls fail; ResolvedRefs True).
    let r = snap_route(&out, INFRA, GW, "http", "no-rules");
    assert_eq!(r.rules.len(), 1);
    assert!(r.rules[0].is_grpc() && r.rules[0].backends.is_empty());
    is(
        grpc_parent(&out, INFRA, "no-rules"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
}
