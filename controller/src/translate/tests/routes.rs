//! HTTPRoute attachment, status (catalogue §1.3 and §1.7) and rule defaults.

use gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesFrom as From;

use super::*;

const GW: &str = "same-namespace";
const GW_GROUP: &str = "gateway.networking.k8s.io";

fn target(r: &model::Route, rule: usize, backend: usize) -> &model::BackendTarget {
    &r.rules[rule].backends[backend].target
}

fn invalid_reason(t: &model::BackendTarget) -> Option<&str> {
    match t {
        model::BackendTarget::Invalid { reason } => Some(reason),
        model::BackendTarget::Endpoints { .. } => None,
    }
}

#[test]
fn hostname_intersection() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "g1",
        vec![
            host(http("l1", 80), "very.specific.com"),
            host(http("l2", 80), "*.wildcard.io"),
            host(http("l3", 80), "*.anotherwildcard.io"),
        ],
    ));
    c.apply(gw(INFRA, "g2", vec![http("any", 80)]));
    let v = |n: &str| vec![backend(n, 8080)];
    let routes = [
        (
            "a",
            "g1",
            vec![
                "non.matching.com",
                "*.nonmatchingwildcard.io",
                "very.specific.com",
            ],
            "/s1",
            "infra-backend-v1",
        ),
        (
            "b",
            "g1",
            vec![
                "non.matching.com",
                "wildcard.io",
                "foo.wildcard.io",
                "bar.wildcard.io",
                "foo.bar.wildcard.io",
            ],
            "/s2",
            "infra-backend-v2",
        ),
        (
            "c",
            "g1",
            vec!["non.matching.com", "*.specific.com"],
            "/s3",
            "infra-backend-v3",
        ),
        (
            "d",
            "g1",
            vec!["*.anotherwildcard.io"],
            "/s4",
            "infra-backend-v1",
        ),
        (
            "e",
            "g1",
            vec!["specific.but.wrong.com", "wildcard.io"],
            "/s5",
            "infra-backend-v2",
        ),
        (
            "f",
            "g2",
            vec!["first.com", "sub.first.com", "second.com", "sub.second.com"],
            "/",
            "infra-backend-v2",
        ),
    ];
    for (name, gw_name, hosts, path, be) in routes {
        c.apply(route(
            INFRA,
            name,
            vec![parent(gw_name)],
            &hosts,
            vec![prefix(path, v(be))],
        ));
    }
    let out = run(&w, &cfg(&w));

    assert_eq!(
        (
            attached(&out, INFRA, "g1", "l1"),
            attached(&out, INFRA, "g1", "l2"),
            attached(&out, INFRA, "g1", "l3")
        ),
        (2, 1, 1)
    );
    for l in ["l1", "l2", "l3"] {
        let st = listener(&out, INFRA, "g1", l);
        is(st, "Accepted", "True", "Accepted");
        is(st, "ResolvedRefs", "True", "ResolvedRefs");
        assert_eq!(supported_kinds(&out, INFRA, "g1", l), BOTH_KINDS);
    }
    let e = route_parent(&out, INFRA, "e", INFRA, "g1");
    is(e, "Accepted", "False", "NoMatchingListenerHostname");
    assert_eq!(e["parentRef"]["group"], GW_GROUP);
    assert_eq!(e["parentRef"]["kind"], "Gateway");
    assert_eq!(e["parentRef"]["namespace"], INFRA);
    for r in ["a", "b", "c", "d"] {
        is(
            route_parent(&out, INFRA, r, INFRA, "g1"),
            "Accepted",
            "True",
            "Accepted",
        );
    }

    // Effective hostnames, narrowed to each listener.
    assert_eq!(snap_routes(&out, INFRA, "g1", "l1"), ["a", "c"]);
    assert_eq!(
        snap_route(&out, INFRA, "g1", "l1", "a").hostnames,
        ["very.specific.com"]
    );
    assert_eq!(
        snap_route(&out, INFRA, "g1", "l1", "c").hostnames,
        ["very.specific.com"]
    );
    assert_eq!(snap_routes(&out, INFRA, "g1", "l2"), ["b"]);
    assert_eq!(
        snap_route(&out, INFRA, "g1", "l2", "b").hostnames,
        ["foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"]
    );
    assert_eq!(
        snap_route(&out, INFRA, "g1", "l3", "d").hostnames,
        ["*.anotherwildcard.io"]
    );
    assert_eq!(snap_route(&out, INFRA, "g2", "any", "f").hostnames.len(), 4);
}

#[test]
fn routes_do_not_leak_between_gateways() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "all-namespaces",
        vec![from(http("http", 80), From::All)],
    ));
    c.apply(route(
        INFRA,
        "shared",
        vec![parent(GW), parent("all-namespaces")],
        &[],
        vec![prefix("/shared", vec![backend("infra-backend-v1", 8080)])],
    ));
    c.apply(route(
        INFRA,
        "only-same",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("infra-backend-v2", 8080)])],
    ));
    c.apply(route(
        INFRA,
        "only-all",
        vec![parent("all-namespaces")],
        &[],
        vec![to(vec![backend("infra-backend-v3", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(
        snap_routes(&out, INFRA, GW, "http"),
        ["only-same", "shared"]
    );
    assert_eq!(
        snap_routes(&out, INFRA, "all-namespaces", "http"),
        ["only-all", "shared"]
    );
    assert_eq!(our_parents(&out, INFRA, "shared").len(), 2);
}

#[test]
fn parent_ref_port_and_section_name() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "g",
        vec![
            host(http("l1", 80), "foo.com"),
            host(http("l2", 8080), "foo.com"),
            host(http("l3", 8080), "bar.com"),
            host(http("l4", 8090), "foo.com"),
            host(http("l5", 8090), "bar.com"),
        ],
    ));
    c.apply(route(
        INFRA,
        "p80",
        vec![port(parent("g"), 80)],
        &[],
        vec![to(vec![])],
    ));
    c.apply(route(
        INFRA,
        "p8080",
        vec![port(parent("g"), 8080)],
        &[],
        vec![to(vec![])],
    ));
    c.apply(route(
        INFRA,
        "p8090",
        vec![section(port(parent("g"), 8090), "l4")],
        &[],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    let counts: Vec<i64> = ["l1", "l2", "l3", "l4", "l5"]
        .iter()
        .map(|l| attached(&out, INFRA, "g", l))
        .collect();
    assert_eq!(counts, [1, 1, 1, 1, 0]);
    assert_eq!(snap_routes(&out, INFRA, "g", "l3"), ["p8080"]);
    assert_eq!(
        route_parent(&out, INFRA, "p8090", INFRA, "g")["parentRef"]["port"],
        8090
    );
    assert_eq!(
        route_parent(&out, INFRA, "p8090", INFRA, "g")["parentRef"]["sectionName"],
        "l4"
    );
}

#[test]
fn invalid_parent_refs() {
    let cases: Vec<(&str, HttpRouteParentRefs)> = vec![
        (
            "not-matching-section-name",
            port(section(parent(GW), "http1"), 80),
        ),
        ("not-matching-listener-port", port(parent(GW), 81)),
        (
            "section-name-not-matching-port",
            port(section(parent(GW), "http"), 81),
        ),
    ];
    for (name, p) in cases {
        let mut w = base();
        east(&mut w).apply(route(
            INFRA,
            name,
            vec![p],
            &[],
            vec![to(vec![backend("infra-backend-v1", 8080)])],
        ));
        let out = run(&w, &cfg(&w));
        let st = route_parent(&out, INFRA, name, INFRA, GW);
        is(st, "Accepted", "False", "NoMatchingParent");
        is(st, "ResolvedRefs", "True", "ResolvedRefs");
        assert_eq!(attached(&out, INFRA, GW, "http"), 0, "{name}");
        assert!(snap_routes(&out, INFRA, GW, "http").is_empty());
    }
}

#[test]
fn cross_namespace_parent_ref_not_allowed() {
    let mut w = base();
    east(&mut w).apply(svc(WEB, "web-backend", &[(None, 8080, None)]));
    east(&mut w).apply(route(
        WEB,
        "r",
        vec![parent_in(INFRA, GW)],
        &[],
        vec![to(vec![backend("web-backend", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let parents = our_parents(&out, WEB, "r");
    assert_eq!(parents.len(), 1);
    is(&parents[0], "Accepted", "False", "NotAllowedByListeners");
    is(&parents[0], "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(attached(&out, INFRA, GW, "http"), 0);
}

#[test]
fn disallowed_kind() {
    let mut w = base();
    let mut tls = http("tls", 443);
    tls.protocol = "TLS".into();
    east(&mut w).apply(gw(INFRA, "tlsgw", vec![kinds(tls, &["TLSRoute"])]));
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent("tlsgw")],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "r", INFRA, "tlsgw");
    is(p, "Accepted", "False", "NotAllowedByListeners");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(attached(&out, INFRA, "tlsgw", "tls"), 0);
}

#[test]
fn selector_listener_uses_namespace_labels() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "backend-namespaces",
        vec![from_selector(
            http("http", 80),
            &[("gateway-conformance", "backend")],
        )],
    ));
    c.apply(svc(WEB, "web-backend", &[(None, 8080, None)]));
    c.apply(route(
        WEB,
        "in-web",
        vec![parent_in(INFRA, "backend-namespaces")],
        &[],
        vec![to(vec![backend("web-backend", 8080)])],
    ));
    c.apply(route(
        INFRA,
        "in-infra",
        vec![parent("backend-namespaces")],
        &[],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    is(
        route_parent(&out, WEB, "in-web", INFRA, "backend-namespaces"),
        "Accepted",
        "True",
        "Accepted",
    );
    is(
        route_parent(&out, INFRA, "in-infra", INFRA, "backend-namespaces"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );

    // Relabelling the namespace detaches the route.
    east(&mut w).apply(namespace(WEB, &[("gateway-conformance", "elsewhere")]));
    let out = run(&w, &cfg(&w));
    is(
        route_parent(&out, WEB, "in-web", INFRA, "backend-namespaces"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
}

#[test]
fn invalid_backends_keep_the_route_accepted() {
    let cases: Vec<(&str, HttpRouteRulesBackendRefs, &str)> = vec![
        (
            "non-existent",
            backend("does-not-exist", 8080),
            "BackendNotFound",
        ),
        (
            "unknown-kind",
            HttpRouteRulesBackendRefs {
                group: Some("unknownkind.example.com".into()),
                kind: Some("NonExistent".into()),
                ..backend("infra-backend-v1", 8080)
            },
            "InvalidKind",
        ),
        (
            "cross-namespace",
            backend_in(WEB, "web-backend", 8080),
            "RefNotPermitted",
        ),
        (
            "no-port",
            HttpRouteRulesBackendRefs {
                port: None,
                ..backend("infra-backend-v1", 8080)
            },
            "BackendNotFound",
        ),
        (
            "wrong-port",
            backend("infra-backend-v1", 9999),
            "BackendNotFound",
        ),
    ];
    for (name, b, reason) in cases {
        let mut w = base();
        east(&mut w).apply(svc(WEB, "web-backend", &[(None, 8080, None)]));
        east(&mut w).apply(route(INFRA, name, vec![parent(GW)], &[], vec![to(vec![b])]));
        let out = run(&w, &cfg(&w));
        let p = route_parent(&out, INFRA, name, INFRA, GW);
        is(p, "Accepted", "True", "Accepted");
        is(p, "ResolvedRefs", "False", reason);
        let r = snap_route(&out, INFRA, GW, "http", name);
        assert_eq!(
            invalid_reason(target(r, 0, 0)),
            Some(reason),
            "{name}: the proxy answers 500"
        );
    }
}

#[test]
fn invalid_reference_grants() {
    let good_from = (GW_GROUP, "HTTPRoute", INFRA);
    let good_to = ("", "Service", Some("web-backend"));
    let grants = [
        grant(INFRA, "own-namespace", good_from, good_to),
        grant(WEB, "from-group", ("wrong.io", "HTTPRoute", INFRA), good_to),
        grant(WEB, "from-kind", (GW_GROUP, "Gateway", INFRA), good_to),
        grant(WEB, "from-namespace", (GW_GROUP, "HTTPRoute", APP), good_to),
        grant(
            WEB,
            "to-group",
            good_from,
            ("wrong.io", "Service", Some("web-backend")),
        ),
        grant(
            WEB,
            "to-kind",
            good_from,
            ("", "Secret", Some("web-backend")),
        ),
        grant(
            WEB,
            "to-name",
            good_from,
            ("", "Service", Some("not-web-backend")),
        ),
    ];
    for g in grants {
        let mut w = base();
        let name = g.metadata.name.clone().unwrap();
        let c = east(&mut w);
        c.apply(svc(WEB, "web-backend", &[(None, 8080, None)]));
        c.apply(g);
        c.apply(route(
            INFRA,
            "r",
            vec![parent(GW)],
            &[],
            vec![to(vec![backend_in(WEB, "web-backend", 8080)])],
        ));
        let out = run(&w, &cfg(&w));
        let (s, r) = cond(route_parent(&out, INFRA, "r", INFRA, GW), "ResolvedRefs");
        assert_eq!(
            (s.as_str(), r.as_str()),
            ("False", "RefNotPermitted"),
            "grant {name}"
        );
    }
}

#[test]
fn reference_grant_permits_and_revocation_takes_effect() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(svc(WEB, "web-backend", &[(None, 8080, None)]));
    c.apply(slice(
        WEB,
        "web-backend-1",
        "web-backend",
        (None, 3000),
        &[("10.2.0.1", None, None)],
    ));
    c.apply(grant(
        WEB,
        "allow",
        (GW_GROUP, "HTTPRoute", INFRA),
        ("", "Service", Some("web-backend")),
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend_in(WEB, "web-backend", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    is(
        route_parent(&out, INFRA, "r", INFRA, GW),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
    let r = snap_route(&out, INFRA, GW, "http", "r");
    assert!(
        matches!(target(r, 0, 0), model::BackendTarget::Endpoints { endpoints, .. } if endpoints.len() == 1)
    );
    write_back(&mut w, &out);

    east(&mut w).delete::<ReferenceGrant>(&crate::ObjectKey::new(WEB, "allow"));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "False", "RefNotPermitted");
    assert_eq!(
        invalid_reason(target(snap_route(&out, INFRA, GW, "http", "r"), 0, 0)),
        Some("RefNotPermitted")
    );
}

#[test]
fn partially_invalid_via_reference_grant() {
    let mut w = base();
    let c = east(&mut w);
    for n in ["app-backend-v1", "app-backend-v2"] {
        c.apply(svc(APP, n, &[(None, 8080, None)]));
    }
    c.apply(grant(
        APP,
        "only-v1",
        (GW_GROUP, "HTTPRoute", INFRA),
        ("", "Service", Some("app-backend-v1")),
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![
            prefix("/v2", vec![backend_in(APP, "app-backend-v2", 8080)]),
            to(vec![backend_in(APP, "app-backend-v1", 8080)]),
        ],
    ));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "False", "RefNotPermitted");
    let r = snap_route(&out, INFRA, GW, "http", "r");
    assert_eq!(invalid_reason(target(r, 0, 0)), Some("RefNotPermitted"));
    assert_eq!(invalid_reason(target(r, 1, 0)), None);
}

#[test]
fn no_backend_refs_answers_500_with_resolved_refs_true() {
    let mut w = base();
    let exact = |p: &str| HttpRouteRulesMatches {
        path: Some(HttpRouteRulesMatchesPath {
            r#type: Some(HttpRouteRulesMatchesPathType::Exact),
            value: Some(p.into()),
        }),
        ..Default::default()
    };
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![
            HttpRouteRules {
                matches: Some(vec![exact("/omitted-no-forward")]),
                ..Default::default()
            },
            HttpRouteRules {
                matches: Some(vec![exact("/empty-no-forward")]),
                backend_refs: Some(vec![]),
                ..Default::default()
            },
            prefix("/", vec![backend("infra-backend-v1", 8080)]),
        ],
    ));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    let r = snap_route(&out, INFRA, GW, "http", "r");
    assert!(r.rules[0].backends.is_empty() && r.rules[1].backends.is_empty());
    assert_eq!(
        r.rules[0].matches[0].path,
        model::PathMatch::Exact("/omitted-no-forward".into())
    );
    assert_eq!(r.rules[2].backends.len(), 1);
}

#[test]
fn observed_generation_bump() {
    let mut w = base();
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    let key = crate::ObjectKey::new(INFRA, "r");
    let mut r = (*east(&mut w).http_routes[&key]).clone();
    r.spec.rules.as_mut().unwrap()[0]
        .backend_refs
        .as_mut()
        .unwrap()[0]
        .name = "infra-backend-v2".into();
    r.metadata.generation = Some(2);
    east(&mut w).apply(r);
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    for c in p["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 2);
    }
}

#[test]
fn other_controllers_entries_survive_and_ours_are_pruned() {
    let mut w = base();
    east(&mut w).apply(gw(INFRA, "second", vec![http("http", 81)]));
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent(GW), parent("second")],
        &[],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);

    // Another controller adds its entry; we drop one parentRef.
    let key = crate::ObjectKey::new(INFRA, "r");
    let mut r = (*east(&mut w).http_routes[&key]).clone();
    let mut foreign = r.status.as_ref().unwrap().parents[0].clone();
    foreign.controller_name = "example.com/other".into();
    foreign.parent_ref.name = "their-gateway".into();
    r.status
        .as_mut()
        .unwrap()
        .parents
        .insert(0, foreign.clone());
    r.spec.parent_refs = Some(vec![parent(GW), parent("their-gateway")]);
    r.metadata.generation = Some(2);
    east(&mut w).apply(r);
    let out = run(&w, &cfg(&w));
    let parents = status(&out, StatusKind::HttpRoute, Some(INFRA), "r")["parents"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parents.len(), 2);
    assert_eq!(
        parents[0],
        serde_json::to_value(&foreign).unwrap(),
        "foreign entry untouched, in place"
    );
    assert_eq!(parents[1]["parentRef"]["name"], GW);
    write_back(&mut w, &out);

    // All our parentRefs go away: our last entry is removed, theirs stays.
    let mut r = (*east(&mut w).http_routes[&key]).clone();
    r.spec.parent_refs = Some(vec![parent("their-gateway")]);
    r.metadata.generation = Some(3);
    east(&mut w).apply(r);
    let out = run(&w, &cfg(&w));
    let parents = status(&out, StatusKind::HttpRoute, Some(INFRA), "r")["parents"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parents, vec![serde_json::to_value(&foreign).unwrap()]);
    write_back(&mut w, &out);
    assert!(run(&w, &cfg(&w)).status.is_empty(), "converged");
}

#[test]
fn deleting_a_route_detaches_it() {
    let mut w = base();
    east(&mut w).apply(route(INFRA, "r", vec![parent(GW)], &[], vec![to(vec![])]));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached(&out, INFRA, GW, "http"), 1);
    write_back(&mut w, &out);
    east(&mut w).delete::<HttpRoute>(&crate::ObjectKey::new(INFRA, "r"));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached(&out, INFRA, GW, "http"), 0);
    assert!(snap_routes(&out, INFRA, GW, "http").is_empty());
}

// --- rule defaults and invalid rules -----------------------------------------------------------

fn one_rule(rule: HttpRouteRules) -> (Output, World) {
    let mut w = base();
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![rule, to(vec![backend("infra-backend-v1", 8080)])],
    ));
    (run(&w, &cfg(&w)), w)
}

#[test]
fn defaults_are_applied() {
    let mut w = base();
    let mut r = route(INFRA, "r", vec![parent(GW)], &[], vec![]);
    r.spec.rules = None;
    east(&mut w).apply(r);
    let out = run(&w, &cfg(&w));
    let r = snap_route(&out, INFRA, GW, "http", "r");
    assert_eq!(r.rules.len(), 1, "omitted rules ⇒ one default rule");
    assert!(r.rules[0].backends.is_empty());
    assert_eq!(r.created_at, 1_000);

    let rule = HttpRouteRules {
        matches: Some(vec![HttpRouteRulesMatches {
            headers: Some(vec![HttpRouteRulesMatchesHeaders {
                name: "version".into(),
                value: "two".into(),
                r#type: None,
            }]),
            query_params: Some(vec![HttpRouteRulesMatchesQueryParams {
                name: "q".into(),
                value: "1".into(),
                r#type: None,
            }]),
            method: Some(HttpRouteRulesMatchesMethod::Head),
            path: None,
        }]),
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::RequestRedirect,
            request_redirect: Some(HttpRouteRulesFiltersRequestRedirect {
                hostname: Some("example.org".into()),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        timeouts: Some(HttpRouteRulesTimeouts {
            request: Some("1m30s".into()),
            backend_request: Some("500ms".into()),
        }),
        ..Default::default()
    };
    let (out, _) = one_rule(rule);
    let r = snap_route(&out, INFRA, GW, "http", "r");
    let m = &r.rules[0].matches[0];
    assert_eq!(m.path, model::PathMatch::PathPrefix("/".into()));
    assert_eq!(m.headers[0].kind, model::ValueMatchType::Exact);
    assert_eq!(m.query_params[0].kind, model::ValueMatchType::Exact);
    assert_eq!(m.method.as_deref(), Some("HEAD"));
    match &r.rules[0].filters[0] {
        model::Filter::RequestRedirect(rr) => assert_eq!(
            (rr.status_code, rr.hostname.as_deref()),
            (302, Some("example.org"))
        ),
        f => panic!("{f:?}"),
    }
    assert_eq!(
        r.rules[0].timeouts,
        model::Timeouts {
            request_ms: Some(90_000),
            backend_request_ms: Some(500)
        }
    );
    assert_eq!(r.rules[1].backends[0].weight, 1);
    assert_eq!(r.rules[1].backends[0].name, "infra/infra-backend-v1:8080");
}

#[test]
fn mirror_and_header_filters() {
    let rule = HttpRouteRules {
        filters: Some(vec![
            HttpRouteRulesFilters {
                r#type: HttpRouteRulesFiltersType::RequestMirror,
                request_mirror: Some(HttpRouteRulesFiltersRequestMirror {
                    backend_ref: HttpRouteRulesFiltersRequestMirrorBackendRef {
                        name: "infra-backend-v2".into(),
                        port: Some(8080),
                        ..Default::default()
                    },
                    fraction: Some(HttpRouteRulesFiltersRequestMirrorFraction {
                        numerator: 1,
                        denominator: Some(4),
                    }),
                    percent: None,
                }),
                ..Default::default()
            },
            HttpRouteRulesFilters {
                r#type: HttpRouteRulesFiltersType::ResponseHeaderModifier,
                response_header_modifier: Some(HttpRouteRulesFiltersResponseHeaderModifier {
                    set: Some(vec![HttpRouteRulesFiltersResponseHeaderModifierSet {
                        name: "x-a".into(),
                        value: "1".into(),
                    }]),
                    add: None,
                    remove: Some(vec!["x-b".into()]),
                }),
                ..Default::default()
            },
        ]),
        backend_refs: Some(vec![HttpRouteRulesBackendRefs {
            filters: Some(vec![HttpRouteRulesBackendRefsFilters {
                r#type: HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier,
                request_header_modifier: Some(
                    HttpRouteRulesBackendRefsFiltersRequestHeaderModifier {
                        add: Some(vec![
                            HttpRouteRulesBackendRefsFiltersRequestHeaderModifierAdd {
                                name: "x-backend".into(),
                                value: "v1".into(),
                            },
                        ]),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }]),
            weight: Some(0),
            ..backend("infra-backend-v1", 8080)
        }]),
        ..Default::default()
    };
    let (out, _) = one_rule(rule);
    is(
        route_parent(&out, INFRA, "r", INFRA, GW),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
    let r = snap_route(&out, INFRA, GW, "http", "r");
    match &r.rules[0].filters[0] {
        model::Filter::RequestMirror(m) => {
            assert_eq!(m.percent, 25.0);
            assert!(
                matches!(&m.backend.target, model::BackendTarget::Endpoints { endpoints, .. } if endpoints[0].address.to_string() == "10.1.0.2")
            );
        }
        f => panic!("{f:?}"),
    }
    match &r.rules[0].filters[1] {
        model::Filter::ResponseHeaderModifier(h) => assert_eq!(
            (h.set[0].name.as_str(), h.remove.as_slice()),
            ("x-a", &["x-b".to_string()][..])
        ),
        f => panic!("{f:?}"),
    }
    let b = &r.rules[0].backends[0];
    assert_eq!(b.weight, 0);
    assert!(
        matches!(&b.filters[0], model::Filter::RequestHeaderModifier(h) if h.add[0].name == "x-backend")
    );
}

#[test]
fn invalid_rules_are_dropped_with_partially_invalid() {
    let path = |ty: HttpRouteRulesMatchesPathType, v: &str| HttpRouteRules {
        matches: Some(vec![HttpRouteRulesMatches {
            path: Some(HttpRouteRulesMatchesPath {
                r#type: Some(ty),
                value: Some(v.into()),
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let redirect = |code: i64| HttpRouteRulesFilters {
        r#type: HttpRouteRulesFiltersType::RequestRedirect,
        request_redirect: Some(HttpRouteRulesFiltersRequestRedirect {
            status_code: Some(code),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rewrite = HttpRouteRulesFilters {
        r#type: HttpRouteRulesFiltersType::UrlRewrite,
        url_rewrite: Some(HttpRouteRulesFiltersUrlRewrite {
            hostname: Some("x.example.com".into()),
            path: None,
        }),
        ..Default::default()
    };
    let cases: Vec<(&str, HttpRouteRules, &str)> = vec![
        (
            "relative path",
            path(HttpRouteRulesMatchesPathType::PathPrefix, "no-slash"),
            "must start with '/'",
        ),
        (
            "bad regex",
            path(
                HttpRouteRulesMatchesPathType::RegularExpression,
                "/(unclosed",
            ),
            "regular expression",
        ),
        (
            "bad timeout",
            HttpRouteRules {
                timeouts: Some(HttpRouteRulesTimeouts {
                    request: Some("1.5s".into()),
                    backend_request: None,
                }),
                ..Default::default()
            },
            "timeouts.request",
        ),
        (
            "backend timeout longer than request",
            HttpRouteRules {
                timeouts: Some(HttpRouteRulesTimeouts {
                    request: Some("1s".into()),
                    backend_request: Some("2s".into()),
                }),
                ..Default::default()
            },
            "must not be longer",
        ),
        (
            "redirect status",
            HttpRouteRules {
                filters: Some(vec![redirect(399)]),
                ..Default::default()
            },
            "statusCode 399",
        ),
        (
            "weight",
            to(vec![HttpRouteRulesBackendRefs {
                weight: Some(-1),
                ..backend("infra-backend-v1", 8080)
            }]),
            "weight -1",
        ),
        (
            // Found by tests/fuzz_edge.rs: the proxy's header types refuse control characters,
            // so such an edit used to be served and then silently skipped on every request.
            "control character in a header value",
            HttpRouteRules {
                filters: Some(vec![HttpRouteRulesFilters {
                    r#type: HttpRouteRulesFiltersType::RequestHeaderModifier,
                    request_header_modifier: Some(HttpRouteRulesFiltersRequestHeaderModifier {
                        set: Some(vec![HttpRouteRulesFiltersRequestHeaderModifierSet {
                            name: "x-bell".into(),
                            value: "ding\u{7}".into(),
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            "control character",
        ),
        (
            "filter without its field",
            HttpRouteRules {
                filters: Some(vec![HttpRouteRulesFilters {
                    r#type: HttpRouteRulesFiltersType::RequestHeaderModifier,
                    ..Default::default()
                }]),
                ..Default::default()
            },
            "requestHeaderModifier",
        ),
    ];
    for (what, rule, msg) in cases {
        let (out, _) = one_rule(rule);
        let p = route_parent(&out, INFRA, "r", INFRA, GW);
        is(p, "Accepted", "True", "Accepted");
        is(p, "PartiallyInvalid", "True", "UnsupportedValue");
        let m = p["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PartiallyInvalid")
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(m.starts_with("Dropped Rule 0"), "{what}: {m}");
        assert!(m.contains(msg), "{what}: {m:?} should mention {msg:?}");
        let r = snap_route(&out, INFRA, GW, "http", "r");
        assert_eq!(r.rules.len(), 1, "{what}: only the valid rule is served");
    }

    // Incompatible filters.
    for rule in [
        HttpRouteRules {
            filters: Some(vec![redirect(301), rewrite]),
            ..Default::default()
        },
        HttpRouteRules {
            filters: Some(vec![redirect(301)]),
            backend_refs: Some(vec![backend("infra-backend-v1", 8080)]),
            ..Default::default()
        },
    ] {
        let (out, _) = one_rule(rule);
        let p = route_parent(&out, INFRA, "r", INFRA, GW);
        is(p, "PartiallyInvalid", "True", "UnsupportedValue");
        assert_eq!(snap_route(&out, INFRA, GW, "http", "r").rules.len(), 1);
    }
}

#[test]
fn a_route_with_only_invalid_rules_is_not_accepted() {
    let mut w = base();
    let bad = HttpRouteRules {
        timeouts: Some(HttpRouteRulesTimeouts {
            request: Some("forever".into()),
            backend_request: None,
        }),
        ..Default::default()
    };
    east(&mut w).apply(route(INFRA, "r", vec![parent(GW)], &[], vec![bad]));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "False", "UnsupportedValue");
    assert!(
        p["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "PartiallyInvalid")
    );
    assert_eq!(attached(&out, INFRA, GW, "http"), 0);
    assert!(snap_routes(&out, INFRA, GW, "http").is_empty());

    // Invalid route hostnames are refused as a whole too.
    let mut w = base();
    east(&mut w).apply(route(
        INFRA,
        "h",
        vec![parent(GW)],
        &["bad_host!"],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    is(
        route_parent(&out, INFRA, "h", INFRA, GW),
        "Accepted",
        "False",
        "UnsupportedValue",
    );
}

#[test]
fn unsupported_filters_answer_500_instead_of_being_skipped() {
    let rule = HttpRouteRules {
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::ExtensionRef,
            extension_ref: Some(HttpRouteRulesFiltersExtensionRef {
                group: "example.com".into(),
                kind: "Auth".into(),
                name: "strict".into(),
            }),
            ..Default::default()
        }]),
        backend_refs: Some(vec![backend("infra-backend-v1", 8080)]),
        ..Default::default()
    };
    let (out, _) = one_rule(rule);
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    is(p, "PartiallyInvalid", "True", "UnsupportedValue");
    let r = snap_route(&out, INFRA, GW, "http", "r");
    assert_eq!(r.rules.len(), 2, "the rule keeps its matches");
    assert!(r.rules[0].filters.is_empty());
    assert_eq!(invalid_reason(target(r, 0, 0)), Some("UnsupportedFilter"));
}

#[test]
fn durations() {
    let cases = [
        ("0s", Ok(None)),
        ("0ms", Ok(None)),
        ("500ms", Ok(Some(500))),
        ("1s", Ok(Some(1_000))),
        ("1m", Ok(Some(60_000))),
        ("1h1m1s1ms", Ok(Some(3_661_001))),
    ];
    for (s, want) in cases {
        assert_eq!(parse_duration_ms(s), want, "{s}");
    }
    for bad in [
        "",
        "1",
        "1.5s",
        "-1s",
        "1us",
        "1d",
        "100000s",
        "1h1m1s1ms1h",
    ] {
        assert!(parse_duration_ms(bad).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn writer_can_re_merge_our_entries_over_a_fresh_copy() {
    let mut w = base();
    east(&mut w).apply(route(INFRA, "r", vec![parent(GW)], &[], vec![to(vec![])]));
    let out = run(&w, &cfg(&w));
    let update = out
        .status
        .iter()
        .find(|u| u.kind == StatusKind::HttpRoute)
        .unwrap();
    let ours = update.route_parents_of(CONTROLLER_NAME);
    assert_eq!(ours.len(), 1);
    // Meanwhile another controller wrote its own entry.
    let mut theirs = ours[0].clone();
    theirs.controller_name = "example.com/other".into();
    theirs.parent_ref.name = "elsewhere".into();
    let merged = crate::status::merge_route_parents(
        &[theirs.clone()],
        ours,
        CONTROLLER_NAME,
        INFRA,
        cfg(&w).now,
    );
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[0], theirs);
    assert_eq!(merged[1].parent_ref.name, GW);
}

#[test]
fn header_filters_on_hop_by_hop_or_framing_headers_drop_the_rule() {
    let request = |name: &str| HttpRouteRules {
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::RequestHeaderModifier,
            request_header_modifier: Some(HttpRouteRulesFiltersRequestHeaderModifier {
                set: Some(vec![HttpRouteRulesFiltersRequestHeaderModifierSet {
                    name: name.into(),
                    value: "0".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        backend_refs: Some(vec![backend("infra-backend-v1", 8080)]),
        ..Default::default()
    };
    let response_remove = |name: &str| HttpRouteRules {
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::ResponseHeaderModifier,
            response_header_modifier: Some(HttpRouteRulesFiltersResponseHeaderModifier {
                remove: Some(vec![name.into()]),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let backend_add = |name: &str| {
        to(vec![HttpRouteRulesBackendRefs {
            filters: Some(vec![HttpRouteRulesBackendRefsFilters {
                r#type: HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier,
                request_header_modifier: Some(
                    HttpRouteRulesBackendRefsFiltersRequestHeaderModifier {
                        add: Some(vec![
                            HttpRouteRulesBackendRefsFiltersRequestHeaderModifierAdd {
                                name: name.into(),
                                value: "x".into(),
                            },
                        ]),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }]),
            ..backend("infra-backend-v1", 8080)
        }])
    };
    for (rule, name) in [
        (request("Content-Length"), "Content-Length"),
        (request("transfer-encoding"), "transfer-encoding"),
        (request("Host"), "Host"),
        (response_remove("Connection"), "Connection"),
        (backend_add("Upgrade"), "Upgrade"),
    ] {
        let (out, _) = one_rule(rule);
        let p = route_parent(&out, INFRA, "r", INFRA, GW);
        is(p, "Accepted", "True", "Accepted");
        is(p, "PartiallyInvalid", "True", "UnsupportedValue");
        let m = p["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PartiallyInvalid")
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(m.starts_with("Dropped Rule 0"), "{name}: {m}");
        assert!(
            m.contains(name) && m.contains("hop-by-hop or framing"),
            "{name}: {m:?}"
        );
        // The other rule is still served; the dropped one never reaches the snapshot.
        assert_eq!(snap_route(&out, INFRA, GW, "http", "r").rules.len(), 1);
    }
    // An ordinary header is kept.
    let (out, _) = one_rule(request("x-gw"));
    assert_eq!(snap_route(&out, INFRA, GW, "http", "r").rules.len(), 2);
}
