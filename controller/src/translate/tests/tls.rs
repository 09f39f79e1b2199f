//! TLSRoute (passthrough) translation, one test per TLSRoute conformance test of the standard
//! channel that applies to passthrough (TLSRouteSimpleSameNamespace,
//! TLSRouteHostnameIntersection, TLSRouteInvalidBackendRefNonexistent,
//! TLSRouteInvalidBackendRefUnknownKind, TLSRouteInvalidNoMatchingListenerHostname,
//! TLSRouteInvalidNoMatchingListener, TLSRouteInvalidReferenceGrant,
//! TLSRouteListenerPassthroughSupportedKinds, TLSRouteListenerTerminateNotSupported) plus the
//! listener rules around them (HTTPRoute on a passthrough listener, protocol conflicts) and
//! hostname conflicts between TLSRoutes. What lands in the snapshot is checked through the
//! proxy's own SNI lookup (`meridian_model::sni`).

use gateway_api::tlsroutes::TlsRoute;
use meridian_model::sni::{self, SniDecision};
use serde_json::json;

use super::*;

const GW: &str = "gateway-tlsroute";

/// A passthrough listener.
fn tls_listener(name: &str, port: i32) -> GatewayListeners {
    GatewayListeners {
        name: name.into(),
        port,
        protocol: "TLS".into(),
        tls: Some(GatewayListenersTls {
            mode: Some(GatewayListenersTlsMode::Passthrough),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A TLSRoute in `ns` from its spec as JSON, created at `created` seconds.
fn tls_route(ns: &str, name: &str, created: i64, spec: Value) -> TlsRoute {
    let mut m = meta(Some(ns), name);
    m.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    TlsRoute {
        metadata: m,
        spec: serde_json::from_value(spec).unwrap(),
        status: None,
    }
}

/// A spec attaching to the `GW` Gateway with these hostnames and `(namespace, name)` backends
/// on port 443.
fn spec(hostnames: &[&str], backends: &[(&str, &str)]) -> Value {
    let backends: Vec<Value> = backends
        .iter()
        .map(|(ns, n)| {
            let mut b = json!({"name": n, "port": 443});
            if !ns.is_empty() {
                b["namespace"] = json!(ns);
            }
            b
        })
        .collect();
    json!({"parentRefs": [{"name": GW, "namespace": INFRA}], "hostnames": hostnames,
           "rules": [{"backendRefs": backends}]})
}

/// The TLS backends (`tls-backend` in infra, `tls-backend-web` in web) with one ready endpoint
/// each, and the Gateway with `listeners`.
fn world_with(listeners: Vec<GatewayListeners>) -> World {
    let mut w = world();
    let c = east(&mut w);
    c.apply(gw(INFRA, GW, listeners));
    for (i, (ns, name)) in [(INFRA, "tls-backend"), (WEB, "tls-backend-web")]
        .iter()
        .enumerate()
    {
        c.apply(svc(ns, name, &[(Some("tls"), 443, None)]));
        let ip = format!("10.1.1.{}", i + 1);
        c.apply(slice(
            ns,
            &format!("{name}-abc"),
            name,
            (Some("tls"), 8443),
            &[(&ip, Some(true), Some("us-east-1a"))],
        ));
    }
    w
}

fn tls_parent<'a>(out: &'a Output, ns: &str, name: &str) -> &'a Value {
    &status(out, StatusKind::TlsRoute, Some(ns), name)["parents"][0]
}

/// Where a connection with this SNI goes on listener `l`: its first backend's name, `closed`
/// when no route takes it.
fn connect(out: &Output, l: &str, sni_name: &str) -> String {
    let router = Router::compile(out.snapshots[CLUSTER].clone()).unwrap();
    let l = snap_listener(out, INFRA, GW, l).expect("listener served");
    let local = std::net::SocketAddr::new(l.address, l.port);
    match sni::route(&router, local, &sni::normalize_sni(sni_name).unwrap()) {
        SniDecision::Matched(m) => m.rule.rule.backends[0].name.clone(),
        SniDecision::NoRoute => "closed".into(),
        SniDecision::NotPassthrough => "not passthrough".into(),
    }
}

#[test]
fn simple_same_namespace() {
    let mut w = world_with(vec![tls_listener("tls", 443)]);
    east(&mut w).apply(tls_route(
        INFRA,
        "gateway-conformance-infra-test",
        1_000,
        spec(&["abc.example.com"], &[("", "tls-backend")]),
    ));
    let out = run(&w, &cfg(&w));
    let p = tls_parent(&out, INFRA, "gateway-conformance-infra-test");
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(p["parentRef"]["kind"], "Gateway");
    assert_eq!(p["parentRef"]["group"], "gateway.networking.k8s.io");
    // The listener needs no certificate, lists TLSRoute only and is served.
    let l = listener(&out, INFRA, GW, "tls");
    is(l, "Accepted", "True", "Accepted");
    is(l, "ResolvedRefs", "True", "ResolvedRefs");
    is(l, "Programmed", "True", "Programmed");
    assert_eq!(
        supported_kinds(&out, INFRA, GW, "tls"),
        ["gateway.networking.k8s.io/TLSRoute"]
    );
    assert_eq!(attached(&out, INFRA, GW, "tls"), 1);

    let sl = snap_listener(&out, INFRA, GW, "tls").unwrap();
    assert_eq!(sl.protocol, model::Protocol::Tls);
    assert!(sl.tls.is_none());
    let r = snap_route(&out, INFRA, GW, "tls", "gateway-conformance-infra-test");
    assert_eq!(r.kind, model::RouteKind::Tls);
    assert_eq!(r.hostnames, ["abc.example.com"]);
    let [rule] = r.rules.as_slice() else {
        panic!("one rule: {r:#?}")
    };
    assert!(rule.matches.is_empty() && rule.filters.is_empty());
    let model::BackendTarget::Endpoints { endpoints, .. } = &rule.backends[0].target else {
        panic!("resolved backend: {rule:#?}")
    };
    // The Service's target port, with the locality the HTTP backends carry.
    assert_eq!(endpoints[0].port, 8443);
    assert_eq!(endpoints[0].region, "us-east");
    assert_eq!(endpoints[0].zone, "us-east-1a");
    assert_eq!(
        connect(&out, "tls", "abc.example.com"),
        "infra/tls-backend:443"
    );
    assert_eq!(connect(&out, "tls", "other.example.com"), "closed");
    // The class claims TLSRoute (passthrough), not the Terminate mode.
    let features =
        status(&out, StatusKind::GatewayClass, None, CLASS)["supportedFeatures"].to_string();
    assert!(features.contains("\"TLSRoute\""), "{features}");
    assert!(!features.contains("TLSRouteModeTerminate"), "{features}");
}

#[test]
fn hostname_intersection() {
    let mut w = world_with(vec![
        host(tls_listener("wild", 443), "*.wildcard.io"),
        host(tls_listener("exact", 443), "very.specific.com"),
    ]);
    let c = east(&mut w);
    // Narrowed to the wildcard listener: only the names under it stay.
    c.apply(tls_route(
        INFRA,
        "narrowed",
        1_000,
        spec(&["a.wildcard.io", "other.org"], &[("", "tls-backend")]),
    ));
    // A wildcard route on an exact listener takes the listener's name.
    c.apply(tls_route(
        INFRA,
        "wide",
        1_000,
        spec(&["*.specific.com"], &[("", "tls-backend")]),
    ));
    // Intersects nothing: not attached anywhere.
    c.apply(tls_route(
        INFRA,
        "elsewhere",
        1_000,
        spec(&["non.matching.com"], &[("", "tls-backend")]),
    ));
    let out = run(&w, &cfg(&w));
    is(
        tls_parent(&out, INFRA, "narrowed"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        tls_parent(&out, INFRA, "wide"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        tls_parent(&out, INFRA, "elsewhere"),
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    );
    assert_eq!(
        snap_route(&out, INFRA, GW, "wild", "narrowed").hostnames,
        ["a.wildcard.io"]
    );
    assert_eq!(
        snap_route(&out, INFRA, GW, "exact", "wide").hostnames,
        ["very.specific.com"]
    );
    assert_eq!(snap_routes(&out, INFRA, GW, "wild"), ["narrowed"]);
    assert_eq!(snap_routes(&out, INFRA, GW, "exact"), ["wide"]);
    assert_eq!(attached(&out, INFRA, GW, "wild"), 1);
    assert_eq!(attached(&out, INFRA, GW, "exact"), 1);
    assert_eq!(
        connect(&out, "wild", "a.wildcard.io"),
        "infra/tls-backend:443"
    );
    assert_eq!(connect(&out, "wild", "b.wildcard.io"), "closed");
    assert_eq!(
        connect(&out, "exact", "very.specific.com"),
        "infra/tls-backend:443"
    );
}

#[test]
fn invalid_backend_ref_nonexistent_and_unknown_kind() {
    let mut w = world_with(vec![tls_listener("tls", 443)]);
    let c = east(&mut w);
    c.apply(tls_route(
        INFRA,
        "nonexistent",
        1_000,
        spec(&["a.example.com"], &[("", "nonexistent")]),
    ));
    let mut unknown = spec(&["b.example.com"], &[("", "tls-backend")]);
    unknown["rules"][0]["backendRefs"][0]["kind"] = json!("UnknownKind");
    unknown["rules"][0]["backendRefs"][0]["group"] = json!("unknown.example.com");
    c.apply(tls_route(INFRA, "unknown-kind", 1_000, unknown));
    let out = run(&w, &cfg(&w));
    let p = tls_parent(&out, INFRA, "nonexistent");
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "False", "BackendNotFound");
    let p = tls_parent(&out, INFRA, "unknown-kind");
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "False", "InvalidKind");
    // Attached and served, with the invalid backend marked: the proxy closes its connections.
    assert_eq!(attached(&out, INFRA, GW, "tls"), 2);
    let r = snap_route(&out, INFRA, GW, "tls", "nonexistent");
    assert!(matches!(
        r.rules[0].backends[0].target,
        model::BackendTarget::Invalid { .. }
    ));
}

#[test]
fn invalid_no_matching_listener_hostname() {
    let mut w = world_with(vec![host(tls_listener("tls", 443), "*.example.com")]);
    east(&mut w).apply(tls_route(
        INFRA,
        "no-hostname-match",
        1_000,
        spec(&["example.com", "a.other.org"], &[("", "tls-backend")]),
    ));
    let out = run(&w, &cfg(&w));
    is(
        tls_parent(&out, INFRA, "no-hostname-match"),
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    );
    assert_eq!(attached(&out, INFRA, GW, "tls"), 0);
    assert!(snap_routes(&out, INFRA, GW, "tls").is_empty());
}

#[test]
fn invalid_no_matching_listener() {
    // The Gateway has HTTP and HTTPS listeners only: none takes TLSRoutes.
    let mut w = world_with(vec![http("http", 80)]);
    let c = east(&mut w);
    c.apply(tls_route(
        INFRA,
        "no-tls-listener",
        1_000,
        spec(&["a.example.com"], &[("", "tls-backend")]),
    ));
    let mut unknown_section = spec(&["a.example.com"], &[("", "tls-backend")]);
    unknown_section["parentRefs"][0]["sectionName"] = json!("tls");
    c.apply(tls_route(INFRA, "no-such-section", 1_000, unknown_section));
    let out = run(&w, &cfg(&w));
    is(
        tls_parent(&out, INFRA, "no-tls-listener"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
    is(
        tls_parent(&out, INFRA, "no-such-section"),
        "Accepted",
        "False",
        "NoMatchingParent",
    );
    assert_eq!(attached(&out, INFRA, GW, "http"), 0);
    assert_eq!(supported_kinds(&out, INFRA, GW, "http"), BOTH_KINDS);
}

#[test]
fn invalid_reference_grant() {
    let mut w = world_with(vec![tls_listener("tls", 443)]);
    let c = east(&mut w);
    c.apply(tls_route(
        INFRA,
        "cross-namespace",
        1_000,
        spec(&["a.example.com"], &[(WEB, "tls-backend-web")]),
    ));
    // A grant for HTTPRoutes does not admit a TLSRoute.
    c.apply(grant(
        WEB,
        "for-http",
        ("gateway.networking.k8s.io", "HTTPRoute", INFRA),
        ("", "Service", None),
    ));
    let out = run(&w, &cfg(&w));
    let p = tls_parent(&out, INFRA, "cross-namespace");
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "False", "RefNotPermitted");
    assert_eq!(
        connect(&out, "tls", "a.example.com"),
        "web/tls-backend-web:443"
    );
    let r = snap_route(&out, INFRA, GW, "tls", "cross-namespace");
    assert!(matches!(
        r.rules[0].backends[0].target,
        model::BackendTarget::Invalid { .. }
    ));

    east(&mut w).apply(grant(
        WEB,
        "for-tls",
        ("gateway.networking.k8s.io", "TLSRoute", INFRA),
        ("", "Service", Some("tls-backend-web")),
    ));
    let out = run(&w, &cfg(&w));
    let p = tls_parent(&out, INFRA, "cross-namespace");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    let r = snap_route(&out, INFRA, GW, "tls", "cross-namespace");
    assert!(matches!(
        r.rules[0].backends[0].target,
        model::BackendTarget::Endpoints { .. }
    ));
}

#[test]
fn listener_passthrough_supported_kinds() {
    let mut w = world_with(vec![kinds(
        tls_listener("tls-passthrough", 443),
        &["TLSRoute", "TCPRoute"],
    )]);
    // Named kinds on HTTP listeners never include TLSRoute.
    east(&mut w).apply(gw(
        INFRA,
        "http-gw",
        vec![kinds(http("http", 80), &["HTTPRoute", "TLSRoute"])],
    ));
    let out = run(&w, &cfg(&w));
    let l = listener(&out, INFRA, GW, "tls-passthrough");
    is(l, "ResolvedRefs", "False", "InvalidRouteKinds");
    is(l, "Accepted", "True", "Accepted");
    assert_eq!(
        supported_kinds(&out, INFRA, GW, "tls-passthrough"),
        ["gateway.networking.k8s.io/TLSRoute"]
    );
    assert_eq!(attached(&out, INFRA, GW, "tls-passthrough"), 0);
    let l = listener(&out, INFRA, "http-gw", "http");
    is(l, "ResolvedRefs", "False", "InvalidRouteKinds");
    assert_eq!(
        supported_kinds(&out, INFRA, "http-gw", "http"),
        ["gateway.networking.k8s.io/HTTPRoute"]
    );
}

#[test]
fn listener_terminate_not_supported() {
    let mut terminate = tls_listener("tls-terminate", 443);
    terminate.tls = Some(GatewayListenersTls {
        mode: Some(GatewayListenersTlsMode::Terminate),
        certificate_refs: Some(vec![GatewayListenersTlsCertificateRefs {
            name: "tls-cert".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let mut no_tls = tls_listener("tls-no-mode", 444);
    no_tls.tls = None;
    let mut w = world_with(vec![terminate, no_tls, tls_listener("tls", 445)]);
    let mut s = spec(&["a.example.com"], &[("", "tls-backend")]);
    s["parentRefs"][0]["sectionName"] = json!("tls-terminate");
    east(&mut w).apply(tls_route(INFRA, "to-terminate", 1_000, s));
    let out = run(&w, &cfg(&w));
    for name in ["tls-terminate", "tls-no-mode"] {
        let l = listener(&out, INFRA, GW, name);
        is(l, "Accepted", "False", "UnsupportedValue");
        is(l, "Programmed", "False", "Invalid");
        assert_eq!(attached(&out, INFRA, GW, name), 0);
        assert!(supported_kinds(&out, INFRA, GW, name).is_empty());
        assert!(snap_listener(&out, INFRA, GW, name).is_none());
    }
    is(
        tls_parent(&out, INFRA, "to-terminate"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
    // The passthrough listener next to them is served.
    assert!(snap_listener(&out, INFRA, GW, "tls").is_some());
}

#[test]
fn http_route_on_a_passthrough_listener_is_not_allowed() {
    let mut w = world_with(vec![tls_listener("tls", 443)]);
    east(&mut w).apply(route(
        INFRA,
        "disallowed-kind",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("tls-backend", 443)])],
    ));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "disallowed-kind", INFRA, GW);
    is(p, "Accepted", "False", "NotAllowedByListeners");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(attached(&out, INFRA, GW, "tls"), 0);
}

#[test]
fn passthrough_and_https_on_one_port_conflict() {
    let mut w = world_with(vec![
        host(tls_listener("tls", 443), "a.example.com"),
        host(https("https", 443, &[("", "cert")]), "b.example.com"),
        host(tls_listener("tls-b", 8443), "a.example.com"),
        host(tls_listener("tls-c", 8443), "a.example.com"),
    ]);
    east(&mut w).apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    let out = run(&w, &cfg(&w));
    for l in ["tls", "https"] {
        is(
            listener(&out, INFRA, GW, l),
            "Conflicted",
            "True",
            "ProtocolConflict",
        );
    }
    for l in ["tls-b", "tls-c"] {
        is(
            listener(&out, INFRA, GW, l),
            "Conflicted",
            "True",
            "HostnameConflict",
        );
    }
}

#[test]
fn older_route_keeps_a_shared_hostname() {
    let mut w = world_with(vec![tls_listener("tls", 443)]);
    let c = east(&mut w);
    c.apply(svc(INFRA, "other", &[(Some("tls"), 443, None)]));
    c.apply(tls_route(
        INFRA,
        "z-older",
        500,
        spec(&["a.example.com"], &[("", "tls-backend")]),
    ));
    // Newer, every hostname held: refused there, naming the holder.
    c.apply(tls_route(
        INFRA,
        "a-newer",
        1_000,
        spec(&["a.example.com"], &[("", "other")]),
    ));
    // Newer, one hostname of its own: attached, and the shared one stays with the older.
    c.apply(tls_route(
        INFRA,
        "b-partly",
        2_000,
        spec(&["a.example.com", "b.example.com"], &[("", "other")]),
    ));
    // A wildcard is not a conflict with the names it covers: exact names win their SNI.
    c.apply(tls_route(
        INFRA,
        "c-wild",
        3_000,
        spec(&["*.example.com"], &[("", "other")]),
    ));
    let out = run(&w, &cfg(&w));
    is(
        tls_parent(&out, INFRA, "z-older"),
        "Accepted",
        "True",
        "Accepted",
    );
    let p = tls_parent(&out, INFRA, "a-newer");
    is(p, "Accepted", "False", "NotAllowedByListeners");
    assert!(
        p["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("TLSRoute infra/z-older"),
        "{p}"
    );
    is(
        tls_parent(&out, INFRA, "b-partly"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        tls_parent(&out, INFRA, "c-wild"),
        "Accepted",
        "True",
        "Accepted",
    );
    assert_eq!(attached(&out, INFRA, GW, "tls"), 3);
    assert_eq!(
        connect(&out, "tls", "a.example.com"),
        "infra/tls-backend:443"
    );
    assert_eq!(connect(&out, "tls", "b.example.com"), "infra/other:443");
    assert_eq!(connect(&out, "tls", "c.example.com"), "infra/other:443");

    // The holder goes away: the newer route takes the name.
    east(&mut w).delete::<TlsRoute>(&crate::ObjectKey::new(INFRA, "z-older"));
    let out = run(&w, &cfg(&w));
    is(
        tls_parent(&out, INFRA, "a-newer"),
        "Accepted",
        "True",
        "Accepted",
    );
}

#[test]
fn weights_and_failover_data_like_http_backends() {
    let mut w = world_with(vec![tls_listener("tls", 443)]);
    let c = east(&mut w);
    // A second endpoint in another zone; weights kept per backend.
    c.apply(slice(
        INFRA,
        "tls-backend-def",
        "tls-backend",
        (Some("tls"), 8443),
        &[("10.1.1.9", Some(true), Some("us-east-1b"))],
    ));
    let mut s = spec(
        &["a.example.com"],
        &[("", "tls-backend"), (WEB, "tls-backend-web")],
    );
    s["rules"][0]["backendRefs"][0]["weight"] = json!(3);
    s["rules"][0]["backendRefs"][1]["weight"] = json!(0);
    c.apply(tls_route(INFRA, "weighted", 1_000, s));
    c.apply(grant(
        WEB,
        "for-tls",
        ("gateway.networking.k8s.io", "TLSRoute", INFRA),
        ("", "Service", None),
    ));
    let out = run(&w, &cfg(&w));
    let r = snap_route(&out, INFRA, GW, "tls", "weighted");
    let weights: Vec<u32> = r.rules[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [3, 0]);
    let model::BackendTarget::Endpoints { endpoints, .. } = &r.rules[0].backends[0].target else {
        panic!("resolved")
    };
    let mut zones: Vec<&str> = endpoints.iter().map(|e| e.zone.as_str()).collect();
    zones.sort();
    assert_eq!(zones, ["us-east-1a", "us-east-1b"]);
    assert!(endpoints.iter().all(|e| e.cluster == CLUSTER));
}
