//! ListenerSets, one test per ListenerSet conformance test (ListenerSetDefaultNotAllowed,
//! ListenerSetAllowedNamespaceNone / Same / Selector, ListenerSetAllowedRoutesNamespaces,
//! ListenerSetAllowedRoutesSupportedKinds, ListenerSetHTTPRouting, ListenerSetHostnameConflict,
//! ListenerSetProtocolConflict, ListenerSetReferenceGrant, ListenerSetDualParentRefIndependence,
//! ListenerSetGatewayParentSectionNameNotFound, ListenerSetRouteStatusScopedToParentRef), plus
//! the status rules around them (observedGeneration, ParentNotAccepted, a set leaving). Requests
//! are routed through the proxy's own router compiled from the snapshot.

use gateway_api::listenersets::ListenerSet;
use gateway_api::tlsroutes::TlsRoute;
use meridian_model::router::{Decision, HeaderSource, Request};
use serde_json::json;

use super::*;

const GW: &str = "gateway-with-listenersets";

/// The Gateway: an HTTP:80 listener `http` (routes from every namespace) and
/// `allowedListeners.namespaces` as given (`None`: the field left out).
fn gateway(allowed: Option<Value>) -> Gateway {
    let mut g = gw(
        INFRA,
        GW,
        vec![from(
            http("http", 80),
            GatewayListenersAllowedRoutesNamespacesFrom::All,
        )],
    );
    if let Some(a) = allowed {
        g.spec.allowed_listeners = Some(serde_json::from_value(json!({"namespaces": a})).unwrap());
    }
    g
}

/// A ListenerSet in `ns` naming the Gateway, created at `created` seconds, with `listeners`
/// as JSON.
fn set(ns: &str, name: &str, created: i64, listeners: Value) -> ListenerSet {
    let mut m = meta(Some(ns), name);
    m.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    ListenerSet {
        metadata: m,
        spec: serde_json::from_value(
            json!({"parentRef": {"name": GW, "namespace": INFRA}, "listeners": listeners}),
        )
        .unwrap(),
        status: None,
    }
}

fn listener(name: &str, port: i32, hostname: Option<&str>) -> Value {
    let mut l = json!({"name": name, "port": port, "protocol": "HTTP",
                       "allowedRoutes": {"namespaces": {"from": "All"}}});
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

/// A parentRef to ListenerSet `ns/name` (optionally a listener of it).
fn set_parent(ns: &str, name: &str, section: Option<&str>) -> HttpRouteParentRefs {
    HttpRouteParentRefs {
        kind: Some("ListenerSet".into()),
        namespace: Some(ns.into()),
        name: name.into(),
        section_name: section.map(Into::into),
        ..Default::default()
    }
}

/// The base world (backends v1..v3 in infra) and the Gateway.
fn world_with(allowed: Option<Value>) -> World {
    let mut w = base();
    east(&mut w).apply(gateway(allowed));
    w
}

fn set_status<'a>(out: &'a Output, ns: &str, name: &str) -> &'a Value {
    status(out, StatusKind::ListenerSet, Some(ns), name)
}

fn set_listener<'a>(out: &'a Output, ns: &str, set: &str, l: &str) -> &'a Value {
    set_status(out, ns, set)["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == l)
        .unwrap_or_else(|| panic!("no listener {l} in ListenerSet {ns}/{set}"))
}

fn attached_sets(out: &Output) -> i64 {
    gateway_status(out, INFRA, GW)["attachedListenerSets"]
        .as_i64()
        .unwrap()
}

/// The snapshot listener of set listener `ns/set/l`.
fn served<'a>(out: &'a Output, ns: &str, set: &str, l: &str) -> Option<&'a model::Listener> {
    snap_listener(out, INFRA, GW, &format!("{ns}/{set}/{l}"))
}

/// The route's parent entry naming `kind` `ns/name`.
fn parent_of<'a>(out: &'a Output, route: &str, kind: &str, ns: &str, name: &str) -> &'a Value {
    let parents = status(out, StatusKind::HttpRoute, Some(INFRA), route)["parents"]
        .as_array()
        .unwrap();
    parents
        .iter()
        .find(|p| {
            p["parentRef"]["kind"] == kind
                && p["parentRef"]["namespace"] == ns
                && p["parentRef"]["name"] == name
        })
        .unwrap_or_else(|| panic!("no parent {kind} {ns}/{name} in {parents:#?}"))
}

/// Where the proxy sends `GET path` for `host` arriving on `port` of the Gateway's address:
/// the single backend's name, `404`, or `no listener`.
fn get(out: &Output, port: u16, host: &str, path: &str) -> String {
    let router = Router::compile(out.snapshots[CLUSTER].clone()).unwrap();
    let address = snap_gateway(out, INFRA, GW).unwrap().listeners[0].address;
    let headers: &[(&str, &str)] = &[];
    let req = Request {
        local: std::net::SocketAddr::new(address, port),
        sni: None,
        host: Some(host),
        method: "GET",
        path,
        query: None,
        headers: &headers as &dyn HeaderSource,
    };
    match router.route(&req) {
        Decision::Matched(m) => match m.rule.rule.backends.as_slice() {
            // `namespace/name:port`.
            [one] => one
                .name
                .rsplit('/')
                .next()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string(),
            _ => "several".to_string(),
        },
        Decision::NotFound { .. } => "404".to_string(),
        Decision::NoListener => "no listener".to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn listener_set_default_not_allowed() {
    let mut w = world_with(None);
    east(&mut w).apply(set(
        INFRA,
        "listenerset-not-allowed",
        1_000,
        json!([listener("extra", 8080, None)]),
    ));
    let out = run(&w, &cfg(&w));
    is(
        gateway_status(&out, INFRA, GW),
        "Accepted",
        "True",
        "Accepted",
    );
    assert_eq!(attached_sets(&out), 0);
    let s = set_status(&out, INFRA, "listenerset-not-allowed");
    is(s, "Accepted", "False", "NotAllowed");
    is(s, "Programmed", "False", "NotAllowed");
    assert_eq!(
        s["listeners"],
        json!([]),
        "no listener of a refused set is reported"
    );
    assert!(served(&out, INFRA, "listenerset-not-allowed", "extra").is_none());
    assert_eq!(get(&out, 8080, "a.example.com", "/"), "no listener");
    // Only the Gateway's own listener in its status.
    assert_eq!(
        gateway_status(&out, INFRA, GW)["listeners"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn listener_set_allowed_namespace_none() {
    let mut w = world_with(Some(json!({"from": "None"})));
    east(&mut w).apply(set(
        INFRA,
        "same-ns",
        1_000,
        json!([listener("extra", 8080, None)]),
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached_sets(&out), 0);
    is(
        set_status(&out, INFRA, "same-ns"),
        "Accepted",
        "False",
        "NotAllowed",
    );
    assert!(served(&out, INFRA, "same-ns", "extra").is_none());
}

#[test]
fn listener_set_allowed_namespace_same() {
    let mut w = world_with(Some(json!({"from": "Same"})));
    let c = east(&mut w);
    c.apply(set(
        INFRA,
        "same-ns",
        1_000,
        json!([listener("extra", 8080, None)]),
    ));
    c.apply(set(
        WEB,
        "other-ns",
        1_000,
        json!([listener("extra", 8081, None)]),
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached_sets(&out), 1);
    let same = set_status(&out, INFRA, "same-ns");
    is(same, "Accepted", "True", "Accepted");
    is(same, "Programmed", "True", "Programmed");
    let l = set_listener(&out, INFRA, "same-ns", "extra");
    is(l, "Accepted", "True", "Accepted");
    is(l, "Programmed", "True", "Programmed");
    is(l, "ResolvedRefs", "True", "ResolvedRefs");
    is(l, "Conflicted", "False", "NoConflicts");
    is(
        set_status(&out, WEB, "other-ns"),
        "Accepted",
        "False",
        "NotAllowed",
    );
    assert_eq!(served(&out, INFRA, "same-ns", "extra").unwrap().port, 8080);
    assert!(served(&out, WEB, "other-ns", "extra").is_none());
}

#[test]
fn listener_set_allowed_namespace_selector() {
    let mut w = world_with(Some(json!({"from": "Selector",
        "selector": {"matchLabels": {"gateway-conformance": "backend"}}})));
    let c = east(&mut w);
    c.apply(set(
        WEB,
        "web-set",
        1_000,
        json!([listener("extra", 8080, None)]),
    ));
    c.apply(set(
        INFRA,
        "infra-set",
        1_000,
        json!([listener("extra", 8081, None)]),
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached_sets(&out), 1);
    is(
        set_status(&out, WEB, "web-set"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        set_status(&out, INFRA, "infra-set"),
        "Accepted",
        "False",
        "NotAllowed",
    );

    // Relabelling the namespace takes the set away.
    east(&mut w).apply(namespace(WEB, &[("gateway-conformance", "other")]));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached_sets(&out), 0);
    is(
        set_status(&out, WEB, "web-set"),
        "Accepted",
        "False",
        "NotAllowed",
    );
    assert!(served(&out, WEB, "web-set", "extra").is_none());
}

#[test]
fn listener_set_allowed_routes_namespaces() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    // `Same` on a set listener means the set's namespace (web), not the Gateway's (infra).
    c.apply(set(
        WEB,
        "web-set",
        1_000,
        json!([
            {"name": "same", "port": 8080, "protocol": "HTTP"},
            {"name": "selector", "port": 8081, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "Selector",
                "selector": {"matchLabels": {"gateway-conformance": "infra"}}}}},
        ]),
    ));
    for (ns, name) in [(WEB, "web-route"), (INFRA, "infra-route")] {
        c.apply(svc(ns, "echo", &[(Some("http"), 8080, None)]));
        c.apply(route(
            ns,
            name,
            vec![
                set_parent(WEB, "web-set", Some("same")),
                set_parent(WEB, "web-set", Some("selector")),
            ],
            &[],
            vec![to(vec![backend("echo", 8080)])],
        ));
    }
    let out = run(&w, &cfg(&w));
    assert_eq!(
        set_listener(&out, WEB, "web-set", "same")["attachedRoutes"],
        1
    );
    assert_eq!(
        set_listener(&out, WEB, "web-set", "selector")["attachedRoutes"],
        1
    );
    let web_parents = status(&out, StatusKind::HttpRoute, Some(WEB), "web-route")["parents"]
        .as_array()
        .unwrap()
        .clone();
    let accepted: Vec<(String, String)> = web_parents.iter().map(|p| cond(p, "Accepted")).collect();
    assert_eq!(
        accepted,
        [
            ("True".to_string(), "Accepted".to_string()),
            ("False".to_string(), "NotAllowedByListeners".to_string())
        ]
    );
    let infra_parents = status(&out, StatusKind::HttpRoute, Some(INFRA), "infra-route")["parents"]
        .as_array()
        .unwrap()
        .clone();
    let accepted: Vec<(String, String)> =
        infra_parents.iter().map(|p| cond(p, "Accepted")).collect();
    assert_eq!(
        accepted,
        [
            ("False".to_string(), "NotAllowedByListeners".to_string()),
            ("True".to_string(), "Accepted".to_string())
        ]
    );
    assert_eq!(
        snap_routes(&out, INFRA, GW, "web/web-set/same"),
        ["web-route"]
    );
    assert_eq!(
        snap_routes(&out, INFRA, GW, "web/web-set/selector"),
        ["infra-route"]
    );
}

#[test]
fn listener_set_allowed_routes_supported_kinds() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(set(INFRA, "kinds", 1_000, json!([
        {"name": "http-only", "port": 8080, "protocol": "HTTP",
         "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]}},
        {"name": "mixed", "port": 8081, "protocol": "HTTP",
         "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}, {"kind": "UnknownRoute"}]}},
        {"name": "unknown", "port": 8082, "protocol": "HTTP",
         "allowedRoutes": {"kinds": [{"kind": "UnknownRoute"}]}},
        {"name": "passthrough", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
    ])));
    c.apply(svc(INFRA, "tls-backend", &[(Some("tls"), 443, None)]));
    let mut tls = TlsRoute {
        metadata: meta(Some(INFRA), "tls"),
        spec: serde_json::from_value(json!({
            "parentRefs": [{"kind": "ListenerSet", "name": "kinds", "sectionName": "passthrough"}],
            "hostnames": ["tls.example.com"],
            "rules": [{"backendRefs": [{"name": "tls-backend", "port": 443}]}]}))
        .unwrap(),
        status: None,
    };
    tls.metadata.generation = Some(2);
    c.apply(tls);
    let out = run(&w, &cfg(&w));
    let kinds = |l: &str| -> Vec<String> {
        set_listener(&out, INFRA, "kinds", l)["supportedKinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds("http-only"), ["HTTPRoute"]);
    assert_eq!(kinds("mixed"), ["HTTPRoute"]);
    assert!(kinds("unknown").is_empty());
    assert_eq!(kinds("passthrough"), ["TLSRoute"]);
    is(
        set_listener(&out, INFRA, "kinds", "http-only"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
    for l in ["mixed", "unknown"] {
        is(
            set_listener(&out, INFRA, "kinds", l),
            "ResolvedRefs",
            "False",
            "InvalidRouteKinds",
        );
    }
    // Some listeners are not valid: accepted all the same, and said so.
    is(
        set_status(&out, INFRA, "kinds"),
        "Accepted",
        "True",
        "ListenersNotValid",
    );
    assert_eq!(attached_sets(&out), 1);
    // The TLSRoute attaches through the set's passthrough listener.
    let parents = &status(&out, StatusKind::TlsRoute, Some(INFRA), "tls")["parents"];
    is(&parents[0], "Accepted", "True", "Accepted");
    assert_eq!(parents[0]["parentRef"]["kind"], "ListenerSet");
    assert_eq!(parents[0]["conditions"][0]["observedGeneration"], 2);
    assert_eq!(
        set_listener(&out, INFRA, "kinds", "passthrough")["attachedRoutes"],
        1
    );
    assert_eq!(
        served(&out, INFRA, "kinds", "passthrough")
            .unwrap()
            .protocol,
        model::Protocol::Tls
    );
}

#[test]
fn listener_set_http_routing() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(set(
        INFRA,
        "extra",
        1_000,
        json!([
            listener("foo", 8080, Some("foo.example.com")),
            listener("bar", 8080, Some("bar.example.com")),
        ]),
    ));
    c.apply(route(
        INFRA,
        "to-foo",
        vec![set_parent(INFRA, "extra", Some("foo"))],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    c.apply(route(
        INFRA,
        "to-set",
        vec![set_parent(INFRA, "extra", None)],
        &[],
        vec![prefix("/set", vec![backend("infra-backend-v2", 8080)])],
    ));
    c.apply(route(
        INFRA,
        "to-gateway",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("infra-backend-v3", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let gw_status = gateway_status(&out, INFRA, GW);
    is(gw_status, "Accepted", "True", "Accepted");
    is(gw_status, "Programmed", "True", "Programmed");
    assert_eq!(attached_sets(&out), 1);
    assert_eq!(
        set_listener(&out, INFRA, "extra", "foo")["attachedRoutes"],
        2
    );
    assert_eq!(
        set_listener(&out, INFRA, "extra", "bar")["attachedRoutes"],
        1
    );
    // A route of the Gateway does not reach the set's listeners, nor the set's the Gateway's.
    assert_eq!(attached(&out, INFRA, GW, "http"), 1);
    assert_eq!(get(&out, 8080, "foo.example.com", "/"), "infra-backend-v1");
    assert_eq!(
        get(&out, 8080, "foo.example.com", "/set/x"),
        "infra-backend-v2"
    );
    assert_eq!(
        get(&out, 8080, "bar.example.com", "/set"),
        "infra-backend-v2"
    );
    assert_eq!(get(&out, 8080, "bar.example.com", "/"), "404");
    assert_eq!(get(&out, 80, "foo.example.com", "/set"), "infra-backend-v3");
    // The set's listeners are served on the Gateway's address.
    let gw_address = snap_listener(&out, INFRA, GW, "http").unwrap().address;
    assert_eq!(
        served(&out, INFRA, "extra", "foo").unwrap().address,
        gw_address
    );

    // The set goes: its listeners and their routes go with it, and so do our parent entries
    // naming it (once written).
    write_back(&mut w, &out);
    east(&mut w).delete::<ListenerSet>(&crate::ObjectKey::new(INFRA, "extra"));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached_sets(&out), 0);
    assert_eq!(get(&out, 8080, "foo.example.com", "/"), "no listener");
    assert!(
        our_parents(&out, INFRA, "to-foo").is_empty(),
        "a parent that is gone is not ours"
    );
}

#[test]
fn listener_set_hostname_conflict() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    let mut g = gateway(Some(json!({"from": "All"})));
    g.spec.listeners[0].hostname = Some("gateway.example.com".into());
    c.apply(g);
    // Older set: one listener the Gateway already has, one of its own.
    c.apply(set(
        INFRA,
        "older",
        1_000,
        json!([
            listener("dup-of-gateway", 80, Some("gateway.example.com")),
            listener("own", 80, Some("older.example.com")),
        ]),
    ));
    // Newer set: only a listener the older set already has.
    c.apply(set(
        WEB,
        "newer",
        2_000,
        json!([listener("dup-of-older", 80, Some("older.example.com"))]),
    ));
    let out = run(&w, &cfg(&w));
    let lost = set_listener(&out, INFRA, "older", "dup-of-gateway");
    is(lost, "Conflicted", "True", "HostnameConflict");
    is(lost, "Accepted", "False", "HostnameConflict");
    is(lost, "Programmed", "False", "Invalid");
    is(
        set_listener(&out, INFRA, "older", "own"),
        "Conflicted",
        "False",
        "NoConflicts",
    );
    is(
        set_status(&out, INFRA, "older"),
        "Accepted",
        "True",
        "ListenersNotValid",
    );
    let lost = set_listener(&out, WEB, "newer", "dup-of-older");
    is(lost, "Conflicted", "True", "HostnameConflict");
    is(lost, "Accepted", "False", "HostnameConflict");
    let newer = set_status(&out, WEB, "newer");
    is(newer, "Accepted", "False", "ListenersNotValid");
    is(newer, "Programmed", "False", "ListenersNotValid");
    // The Gateway's own listener is untouched and the refused set is not counted.
    is(
        super::listener(&out, INFRA, GW, "http"),
        "Conflicted",
        "False",
        "NoConflicts",
    );
    assert_eq!(attached_sets(&out), 1);
    assert!(served(&out, INFRA, "older", "own").is_some());
    assert!(served(&out, INFRA, "older", "dup-of-gateway").is_none());
    assert!(served(&out, WEB, "newer", "dup-of-older").is_none());

    // Same creation time: namespace/name decides (infra/older before web/newer).
    let mut w2 = w.clone();
    east(&mut w2).apply(set(
        WEB,
        "newer",
        1_000,
        json!([listener("dup-of-older", 80, Some("older.example.com"))]),
    ));
    let out = run(&w2, &cfg(&w2));
    is(
        set_status(&out, WEB, "newer"),
        "Accepted",
        "False",
        "ListenersNotValid",
    );
    // Older in time wins over first in name.
    east(&mut w2).apply(set(
        WEB,
        "newer",
        500,
        json!([listener("dup-of-older", 80, Some("older.example.com"))]),
    ));
    let out = run(&w2, &cfg(&w2));
    is(
        set_status(&out, WEB, "newer"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        set_listener(&out, INFRA, "older", "own"),
        "Conflicted",
        "True",
        "HostnameConflict",
    );
}

#[test]
fn listener_set_protocol_conflict() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    c.apply(set(
        INFRA,
        "tls-on-80",
        1_000,
        json!([
            {"name": "https", "port": 80, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "cert"}]}},
            listener("fine", 8080, None),
        ]),
    ));
    let out = run(&w, &cfg(&w));
    let lost = set_listener(&out, INFRA, "tls-on-80", "https");
    is(lost, "Conflicted", "True", "ProtocolConflict");
    is(lost, "Accepted", "False", "ProtocolConflict");
    is(lost, "Programmed", "False", "Invalid");
    is(
        super::listener(&out, INFRA, GW, "http"),
        "Conflicted",
        "False",
        "NoConflicts",
    );
    is(
        set_status(&out, INFRA, "tls-on-80"),
        "Accepted",
        "True",
        "ListenersNotValid",
    );
    assert_eq!(attached_sets(&out), 1);
    assert_eq!(
        get(&out, 80, "a.example.com", "/"),
        "404",
        "port 80 stays plain HTTP"
    );
}

#[test]
fn listener_set_reference_grant() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    c.apply(set(
        WEB,
        "web-set",
        1_000,
        json!([
            {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "cert", "namespace": INFRA}]}},
        ]),
    ));
    let out = run(&w, &cfg(&w));
    let l = set_listener(&out, WEB, "web-set", "https");
    is(l, "ResolvedRefs", "False", "RefNotPermitted");
    is(l, "Programmed", "False", "Invalid");
    assert!(served(&out, WEB, "web-set", "https").is_none());

    // A grant for Gateways from web does not cover a ListenerSet there.
    let c = east(&mut w);
    c.apply(grant(
        INFRA,
        "for-gateways",
        ("gateway.networking.k8s.io", "Gateway", WEB),
        ("", "Secret", None),
    ));
    let out = run(&w, &cfg(&w));
    is(
        set_listener(&out, WEB, "web-set", "https"),
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );

    east(&mut w).apply(grant(
        INFRA,
        "for-sets",
        ("gateway.networking.k8s.io", "ListenerSet", WEB),
        ("", "Secret", Some("cert")),
    ));
    let out = run(&w, &cfg(&w));
    let l = set_listener(&out, WEB, "web-set", "https");
    is(l, "ResolvedRefs", "True", "ResolvedRefs");
    is(l, "Programmed", "True", "Programmed");
    let served = served(&out, WEB, "web-set", "https").unwrap();
    assert_eq!(served.tls.as_ref().unwrap().certificates.len(), 1);

    // A reference without namespace is to the set's namespace.
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(secret(WEB, "cert", CERT_PEM, KEY_PEM));
    c.apply(set(
        WEB,
        "web-set",
        1_000,
        json!([
            {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "cert"}]}},
        ]),
    ));
    let out = run(&w, &cfg(&w));
    is(
        set_listener(&out, WEB, "web-set", "https"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
}

#[test]
fn listener_set_dual_parent_ref_independence() {
    let mut w = world_with(Some(json!({"from": "Same"})));
    let c = east(&mut w);
    c.apply(set(
        INFRA,
        "allowed",
        1_000,
        json!([listener("extra", 8080, None)]),
    ));
    c.apply(set(
        WEB,
        "refused",
        1_000,
        json!([listener("extra", 8081, None)]),
    ));
    c.apply(route(
        INFRA,
        "two-parents",
        vec![
            set_parent(INFRA, "allowed", Some("extra")),
            set_parent(WEB, "refused", Some("extra")),
        ],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let ok = parent_of(&out, "two-parents", "ListenerSet", INFRA, "allowed");
    is(ok, "Accepted", "True", "Accepted");
    is(ok, "ResolvedRefs", "True", "ResolvedRefs");
    let refused = parent_of(&out, "two-parents", "ListenerSet", WEB, "refused");
    is(refused, "Accepted", "False", "NoMatchingParent");
    assert_eq!(get(&out, 8080, "a.example.com", "/"), "infra-backend-v1");
    assert_eq!(get(&out, 8081, "a.example.com", "/"), "no listener");

    // Admitting the second set accepts the second parent, the first stays as it was.
    east(&mut w).apply(gateway(Some(json!({"from": "All"}))));
    let out = run(&w, &cfg(&w));
    is(
        parent_of(&out, "two-parents", "ListenerSet", INFRA, "allowed"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        parent_of(&out, "two-parents", "ListenerSet", WEB, "refused"),
        "Accepted",
        "True",
        "Accepted",
    );
    assert_eq!(get(&out, 8081, "a.example.com", "/"), "infra-backend-v1");
}

#[test]
fn listener_set_gateway_parent_section_name_not_found() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(set(
        INFRA,
        "extra",
        1_000,
        json!([listener("set-listener", 8080, None)]),
    ));
    c.apply(route(
        INFRA,
        "gateway-section",
        vec![section(parent(GW), "set-listener")],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let p = parent_of(&out, "gateway-section", "Gateway", INFRA, GW);
    is(p, "Accepted", "False", "NoMatchingParent");
    assert_eq!(
        set_listener(&out, INFRA, "extra", "set-listener")["attachedRoutes"],
        0
    );
    assert_eq!(get(&out, 8080, "a.example.com", "/"), "404");
}

#[test]
fn listener_set_route_status_scoped_to_parent_ref() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    c.apply(set(
        INFRA,
        "extra",
        1_000,
        json!([listener("extra", 8080, None)]),
    ));
    c.apply(route(
        INFRA,
        "set-only",
        vec![set_parent(INFRA, "extra", None)],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let parents = our_parents(&out, INFRA, "set-only");
    assert_eq!(parents.len(), 1, "{parents:#?}");
    assert_eq!(
        parents[0]["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "ListenerSet", "name": "extra", "namespace": INFRA})
    );
    is(&parents[0], "Accepted", "True", "Accepted");
    // Not counted on the Gateway's own listener.
    assert_eq!(attached(&out, INFRA, GW, "http"), 0);
}

#[test]
fn listener_set_status_follows_generation_and_parent() {
    let mut w = world_with(Some(json!({"from": "All"})));
    let mut s = set(
        INFRA,
        "extra",
        1_000,
        json!([listener("extra", 8080, None)]),
    );
    s.metadata.generation = Some(4);
    east(&mut w).apply(s);
    let out = run(&w, &cfg(&w));
    let st = set_status(&out, INFRA, "extra");
    for c in st["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 4, "{c}");
    }
    for c in set_listener(&out, INFRA, "extra", "extra")["conditions"]
        .as_array()
        .unwrap()
    {
        assert_eq!(c["observedGeneration"], 4, "{c}");
    }
    // Written back, the same status is not written again.
    write_back(&mut w, &out);
    let again = run(&w, &cfg(&w));
    assert!(!has_status(
        &again,
        StatusKind::ListenerSet,
        Some(INFRA),
        "extra"
    ));

    // A Gateway that is not accepted takes its sets down with it.
    let mut g = gateway(Some(json!({"from": "All"})));
    g.spec.listeners[0].protocol = "UDP".into();
    east(&mut w).apply(g);
    let out = run(&w, &cfg(&w));
    let st = set_status(&out, INFRA, "extra");
    is(st, "Accepted", "False", "ParentNotAccepted");
    is(st, "Programmed", "False", "ParentNotAccepted");
    assert_eq!(gateway_status(&out, INFRA, GW)["attachedListenerSets"], 0);
    assert!(snap_gateway(&out, INFRA, GW).is_none());

    // Not ours: a set naming a Gateway of another class gets no status from us.
    let mut w = world_with(Some(json!({"from": "All"})));
    let mut other = gateway(Some(json!({"from": "All"})));
    other.metadata.name = Some("not-ours".into());
    other.spec.gateway_class_name = "someone-else".into();
    east(&mut w).apply(other);
    let mut s = set(
        INFRA,
        "elsewhere",
        1_000,
        json!([listener("extra", 8080, None)]),
    );
    s.spec.parent_ref.name = "not-ours".into();
    east(&mut w).apply(s);
    let out = run(&w, &cfg(&w));
    assert!(!has_status(
        &out,
        StatusKind::ListenerSet,
        Some(INFRA),
        "elsewhere"
    ));
}

#[test]
fn listener_set_is_a_supported_feature() {
    assert!(SUPPORTED_FEATURES.contains(&"ListenerSet"));
}

/// A ListenerSet change in a cluster of many Gateways re-translates only the Gateway(s) it
/// names (and named) and the routes reaching them, incrementally, and equals the full
/// translation after every step.
#[test]
fn listener_set_change_retranslates_only_its_gateway() {
    use crate::translate::{Changes, Incremental};
    use crate::world::{Kind, ObjectKey};

    const OTHERS: usize = 20;
    let mut w = world_with(Some(json!({"from": "All"})));
    let c = east(&mut w);
    for i in 0..OTHERS {
        let name = format!("other-{i}");
        c.apply(gw(
            INFRA,
            &name,
            vec![from(
                http("http", 80),
                GatewayListenersAllowedRoutesNamespacesFrom::All,
            )],
        ));
        c.apply(route(
            INFRA,
            &format!("r-{i}"),
            vec![parent(&name)],
            &[],
            vec![to(vec![backend("infra-backend-v1", 8080)])],
        ));
    }
    // Every Gateway with an address (the config is made after they all exist).
    let cfg = cfg(&w);
    let mut engine = Incremental::new();
    let mut snapshots = engine.full(&w, &cfg).snapshots;

    // One pass: incremental, equal to the full translation, and what it touched.
    let mut pass = |w: &World, kind: Kind, key: ObjectKey| {
        let mut changes = Changes::new();
        changes.insert(CLUSTER, kind, key);
        let pass = engine.update(w, &cfg, &changes, &mut snapshots).unwrap();
        let full = run(w, &cfg);
        assert_eq!(
            serde_json::to_string(&snapshots).unwrap(),
            serde_json::to_string(&full.snapshots).unwrap()
        );
        assert_eq!(engine.status(), full.status);
        let touched: Vec<String> = pass.touched[CLUSTER]
            .gateways()
            .expect("some Gateways, not everything")
            .iter()
            .map(|g| g.name.clone())
            .collect();
        (pass, touched, full)
    };
    let set_key = ObjectKey::new(INFRA, "extra");

    // The set arrives: only its Gateway is validated again and gets a status; no route names
    // the Gateway or the set yet.
    east(&mut w).apply(set(
        INFRA,
        "extra",
        1_000,
        json!([listener("foo", 8080, None)]),
    ));
    let (p, touched, full) = pass(&w, Kind::ListenerSet, set_key.clone());
    assert_eq!(touched, vec![GW.to_string()]);
    assert_eq!((p.gateways, p.routes), (1, 0));
    is(
        set_status(&full, INFRA, "extra"),
        "Accepted",
        "True",
        "Accepted",
    );
    assert!(
        p.status
            .iter()
            .any(|u| u.kind == StatusKind::ListenerSet && u.name == "extra"),
        "the incremental pass reports the set's status"
    );
    assert!(served(&full, INFRA, "extra", "foo").is_some());

    // A route attaching to the set: that route and the set's Gateway.
    east(&mut w).apply(route(
        INFRA,
        "to-set",
        vec![set_parent(INFRA, "extra", None)],
        &[],
        vec![to(vec![backend("infra-backend-v2", 8080)])],
    ));
    let (p, touched, full) = pass(&w, Kind::HttpRoute, ObjectKey::new(INFRA, "to-set"));
    assert_eq!(touched, vec![GW.to_string()]);
    assert_eq!((p.gateways, p.routes), (1, 1));
    assert_eq!(
        set_listener(&full, INFRA, "extra", "foo")["attachedRoutes"],
        1
    );

    // A listener edit: the set's Gateway and the route naming the set, nothing else.
    east(&mut w).apply(set(
        INFRA,
        "extra",
        1_000,
        json!([listener("foo", 8081, None)]),
    ));
    let (p, touched, _) = pass(&w, Kind::ListenerSet, set_key.clone());
    assert_eq!(touched, vec![GW.to_string()]);
    assert_eq!((p.gateways, p.routes), (1, 1));

    // The parentRef moves to other-3 (which admits no sets): both Gateways and the route
    // naming the set; other-3's own route stays (its Gateway's own listeners did not change).
    let mut moved = set(INFRA, "extra", 1_000, json!([listener("foo", 8081, None)]));
    moved.spec.parent_ref.name = "other-3".into();
    east(&mut w).apply(moved);
    let (p, mut touched, full) = pass(&w, Kind::ListenerSet, set_key.clone());
    touched.sort();
    assert_eq!(touched, vec![GW.to_string(), "other-3".to_string()]);
    assert_eq!(p.gateways, 2);
    assert_eq!(p.routes, 1, "the route naming the set");
    is(
        set_status(&full, INFRA, "extra"),
        "Accepted",
        "False",
        "NotAllowed",
    );
    assert_eq!(attached_sets(&full), 0);

    // Deleted: only other-3 (which it named last) is validated again.
    east(&mut w).delete::<ListenerSet>(&set_key);
    let (p, touched, full) = pass(&w, Kind::ListenerSet, set_key);
    assert_eq!(touched, vec!["other-3".to_string()]);
    assert_eq!(p.gateways, 1);
    assert!(!has_status(
        &full,
        StatusKind::ListenerSet,
        Some(INFRA),
        "extra"
    ));
}
