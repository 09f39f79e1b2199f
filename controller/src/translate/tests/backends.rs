//! Backend resolution: EndpointSlices by service-name label and port name, Service types,
//! appProtocol, and ServiceImport across clusters.

use meridian_crds::mcs::{ServiceExport, ServiceExportSpec};

use super::*;

const GW: &str = "same-namespace";

fn endpoints(
    out: &Output,
    cluster: &str,
    route: &str,
    rule: usize,
) -> (model::BackendProtocol, Vec<model::Endpoint>) {
    let l = out.snapshots[cluster]
        .gateways
        .iter()
        .find(|g| g.name == GW)
        .and_then(|g| g.listeners.iter().find(|l| l.name == "http"))
        .unwrap();
    let r = l.routes.iter().find(|r| r.name == route).unwrap();
    match &r.rules[rule].backends[0].target {
        model::BackendTarget::Endpoints {
            protocol,
            endpoints,
            ..
        } => (*protocol, endpoints.clone()),
        t => panic!("invalid target {t:?}"),
    }
}

fn addrs(eps: &[model::Endpoint]) -> Vec<String> {
    eps.iter()
        .map(|e| std::net::SocketAddr::new(e.address, e.port).to_string())
        .collect()
}

#[test]
fn endpoints_come_from_slices_by_label_and_port_name() {
    let mut w = base();
    let c = east(&mut w);
    // Two ports; the route uses "http" (8080), whose pods listen on 3000; "admin" maps to 9000.
    c.apply(svc(
        INFRA,
        "multi",
        &[(Some("admin"), 9090, None), (Some("http"), 8080, None)],
    ));
    c.apply(slice(
        INFRA,
        "multi-a",
        "multi",
        (Some("http"), 3000),
        &[
            ("10.3.0.1", None, Some("z1")),
            ("10.3.0.2", Some(false), Some("z2")),
        ],
    ));
    c.apply(slice(
        INFRA,
        "multi-admin",
        "multi",
        (Some("admin"), 9000),
        &[("10.3.0.9", Some(true), None)],
    ));
    // The same pod in a second slice (while slices are rebalanced) saying not ready: it is ready
    // if either slice says so, and nil readiness counts as ready. An FQDN slice is ignored.
    c.apply(slice(
        INFRA,
        "multi-b",
        "multi",
        (Some("http"), 3000),
        &[("10.3.0.1", Some(false), Some("z1"))],
    ));
    let mut fqdn = slice(
        INFRA,
        "multi-fqdn",
        "multi",
        (Some("http"), 3000),
        &[("backend.example.com", None, None)],
    );
    fqdn.address_type = "FQDN".into();
    c.apply(fqdn);
    // A slice of another Service with the same port name.
    c.apply(slice(
        INFRA,
        "other",
        "other",
        (Some("http"), 3000),
        &[("10.9.9.9", None, None)],
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("multi", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let (proto, eps) = endpoints(&out, CLUSTER, "r", 0);
    assert_eq!(proto, model::BackendProtocol::Http1);
    assert_eq!(addrs(&eps), ["10.3.0.1:3000", "10.3.0.2:3000"]);
    assert!(eps[0].ready, "nil readiness means ready");
    assert!(!eps[1].ready, "not-ready endpoints are kept, marked");
    assert_eq!((eps[0].zone.as_str(), eps[1].zone.as_str()), ("z1", "z2"));
    assert_eq!(
        (eps[0].cluster.as_str(), eps[0].region.as_str()),
        (CLUSTER, "us-east")
    );

    // A slice update is seen by the next translation; a deleted slice takes its endpoints along.
    east(&mut w).apply(slice(
        INFRA,
        "multi-a",
        "multi",
        (Some("http"), 3000),
        &[("10.3.0.7", None, None)],
    ));
    east(&mut w).delete::<EndpointSlice>(&crate::ObjectKey::new(INFRA, "multi-b"));
    let out = run(&w, &cfg(&w));
    assert_eq!(
        addrs(&endpoints(&out, CLUSTER, "r", 0).1),
        ["10.3.0.7:3000"]
    );
}

#[test]
fn service_types_without_cluster_ip() {
    let mut w = base();
    let c = east(&mut w);
    // (a) no selector, hand-written IPv4 and IPv6 slices with the Service port's name.
    c.apply(svc(INFRA, "manual", &[(Some("first-port"), 8080, None)]));
    c.apply(slice(
        INFRA,
        "manual-v4",
        "manual",
        (Some("first-port"), 3000),
        &[("10.4.0.1", None, None)],
    ));
    c.apply(slice(
        INFRA,
        "manual-v6",
        "manual",
        (Some("first-port"), 3000),
        &[("fd00::1", None, None)],
    ));
    // (b) headless with a selector: slices written by the endpoint controller.
    let mut headless = svc(INFRA, "headless", &[(None, 8080, None)]);
    let spec = headless.spec.as_mut().unwrap();
    spec.cluster_ip = Some("None".into());
    spec.selector = Some(BTreeMap::from([("app".into(), "v1".into())]));
    c.apply(headless);
    c.apply(slice(
        INFRA,
        "headless-x",
        "headless",
        (None, 3000),
        &[("10.4.0.2", Some(true), None)],
    ));
    // (c) headless without a selector.
    let mut manual_headless = svc(
        INFRA,
        "headless-manual",
        &[(Some("first-port"), 8080, None)],
    );
    manual_headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    c.apply(manual_headless);
    c.apply(slice(
        INFRA,
        "hm",
        "headless-manual",
        (Some("first-port"), 3000),
        &[("10.4.0.3", None, None)],
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![
            prefix("/manual-endpointslices", vec![backend("manual", 8080)]),
            prefix("/headless", vec![backend("headless", 8080)]),
            prefix(
                "/headless-manual-endpointslices",
                vec![backend("headless-manual", 8080)],
            ),
        ],
    ));
    let out = run(&w, &cfg(&w));
    is(
        route_parent(&out, INFRA, "r", INFRA, GW),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
    assert_eq!(
        addrs(&endpoints(&out, CLUSTER, "r", 0).1),
        ["10.4.0.1:3000", "[fd00::1]:3000"]
    );
    assert_eq!(
        addrs(&endpoints(&out, CLUSTER, "r", 1).1),
        ["10.4.0.2:3000"]
    );
    assert_eq!(
        addrs(&endpoints(&out, CLUSTER, "r", 2).1),
        ["10.4.0.3:3000"]
    );
}

#[test]
fn app_protocol_selects_the_upstream_protocol() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(svc(
        INFRA,
        "v1",
        &[
            (Some("h2c"), 8081, Some("kubernetes.io/h2c")),
            (Some("ws"), 8082, Some("kubernetes.io/ws")),
            (Some("tls"), 8443, Some("https")),
        ],
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![
            prefix("/h2c", vec![backend("v1", 8081)]),
            prefix("/ws", vec![backend("v1", 8082)]),
        ],
    ));
    c.apply(route(
        INFRA,
        "tls",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("v1", 8443)])],
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(
        endpoints(&out, CLUSTER, "r", 0).0,
        model::BackendProtocol::H2c
    );
    assert_eq!(
        endpoints(&out, CLUSTER, "r", 1).0,
        model::BackendProtocol::Http1
    );
    is(
        route_parent(&out, INFRA, "tls", INFRA, GW),
        "ResolvedRefs",
        "False",
        "UnsupportedProtocol",
    );
}

/// Three clusters; `shop/cart` is exported from east and west, and a route in `central` sends to
/// the ServiceImport while another sends to the plain Service.
fn three_clusters() -> World {
    let mut w = World::new();
    for (name, region, zone, ip) in [
        ("central", "eu-central", "eu-central-1a", "10.10.0.1"),
        ("east", "us-east", "us-east-1a", "10.20.0.1"),
        ("west", "us-west", "us-west-2b", "10.30.0.1"),
    ] {
        let c = w.add_cluster(name, region, vec![zone.to_string()]);
        c.apply(class(CLASS, CONTROLLER_NAME));
        c.apply(svc("shop", "cart", &[(Some("http"), 80, None)]));
        c.apply(slice(
            "shop",
            "cart-1",
            "cart",
            (Some("http"), 8080),
            &[(ip, Some(true), Some(zone))],
        ));
        if name != "central" {
            c.apply(ServiceExport {
                metadata: meta(Some("shop"), "cart"),
                spec: ServiceExportSpec {},
                status: None,
            });
        }
    }
    let c = w.cluster_mut("central").unwrap();
    c.apply(gw("shop", GW, vec![http("http", 80)]));
    let import = HttpRouteRulesBackendRefs {
        group: Some("multicluster.x-k8s.io".into()),
        kind: Some("ServiceImport".into()),
        ..backend("cart", 80)
    };
    c.apply(route(
        "shop",
        "global",
        vec![parent(GW)],
        &[],
        vec![to(vec![import])],
    ));
    c.apply(route(
        "shop",
        "local",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("cart", 80)])],
    ));
    w
}

#[test]
fn service_import_spans_exporting_clusters() {
    let mut w = three_clusters();
    let out = run(&w, &cfg(&w));
    let (_, eps) = endpoints(&out, "central", "global", 0);
    let tagged: Vec<(String, String, String, String)> = eps
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.cluster.clone(),
                e.region.clone(),
                e.zone.clone(),
            )
        })
        .collect();
    assert_eq!(
        tagged,
        [
            (
                "10.20.0.1".into(),
                "east".into(),
                "us-east".into(),
                "us-east-1a".into()
            ),
            (
                "10.30.0.1".into(),
                "west".into(),
                "us-west".into(),
                "us-west-2b".into()
            ),
        ],
        "only exporting clusters, each endpoint tagged"
    );
    assert_eq!(eps.len(), 2);
    // A Service backendRef stays in its own cluster.
    let (_, local) = endpoints(&out, "central", "local", 0);
    assert_eq!(addrs(&local), ["10.10.0.1:8080"]);
    assert_eq!(local[0].cluster, "central");
    let p = route_parent_in(&out, "central", "shop", "global");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    // Other clusters have no Gateway of ours: empty snapshots.
    assert!(out.snapshots["east"].gateways.is_empty() && out.snapshots["west"].gateways.is_empty());

    // Un-exporting west removes its endpoints; un-exporting everything is BackendNotFound.
    w.cluster_mut("west")
        .unwrap()
        .delete::<ServiceExport>(&crate::ObjectKey::new("shop", "cart"));
    let out = run(&w, &cfg(&w));
    assert_eq!(
        addrs(&endpoints(&out, "central", "global", 0).1),
        ["10.20.0.1:8080"]
    );
    w.cluster_mut("east")
        .unwrap()
        .delete::<ServiceExport>(&crate::ObjectKey::new("shop", "cart"));
    let out = run(&w, &cfg(&w));
    is(
        route_parent_in(&out, "central", "shop", "global"),
        "ResolvedRefs",
        "False",
        "BackendNotFound",
    );
}

#[test]
fn service_import_cross_namespace_needs_a_grant() {
    let mut w = three_clusters();
    let c = w.cluster_mut("central").unwrap();
    let import = HttpRouteRulesBackendRefs {
        group: Some("multicluster.x-k8s.io".into()),
        kind: Some("ServiceImport".into()),
        ..backend_in("shop", "cart", 80)
    };
    let mut g = gw("front", GW, vec![http("http", 80)]);
    g.metadata.name = Some("front-gw".into());
    c.apply(g);
    c.apply(route(
        "front",
        "r",
        vec![parent("front-gw")],
        &[],
        vec![to(vec![import])],
    ));
    let out = run(&w, &cfg(&w));
    is(
        route_parent_in(&out, "central", "front", "r"),
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );
    w.cluster_mut("central").unwrap().apply(grant(
        "shop",
        "allow",
        ("gateway.networking.k8s.io", "HTTPRoute", "front"),
        ("multicluster.x-k8s.io", "ServiceImport", None),
    ));
    let out = run(&w, &cfg(&w));
    is(
        route_parent_in(&out, "central", "front", "r"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
}

fn route_parent_in<'a>(out: &'a Output, cluster: &str, ns: &str, name: &str) -> &'a Value {
    &status_in(out, cluster, StatusKind::HttpRoute, Some(ns), name)["parents"][0]
}

#[test]
fn endpoint_refresh_matches_a_full_translation() {
    let mut w = three_clusters();
    // Central also sends a mirror of /m to the local Service.
    let c = w.cluster_mut("central").unwrap();
    let mirror = HttpRouteRules {
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::RequestMirror,
            request_mirror: Some(HttpRouteRulesFiltersRequestMirror {
                backend_ref: HttpRouteRulesFiltersRequestMirrorBackendRef {
                    name: "cart".into(),
                    port: Some(80),
                    ..Default::default()
                },
                fraction: None,
                percent: None,
            }),
            ..Default::default()
        }]),
        ..prefix("/m", vec![])
    };
    c.apply(route(
        "shop",
        "mirrored",
        vec![parent(GW)],
        &[],
        vec![mirror],
    ));
    let cfg = cfg(&w);
    let before = run(&w, &cfg);
    let key = crate::ObjectKey::new("shop", "cart");

    // East's exported slice changes: the import backend in central changes.
    w.cluster_mut("east").unwrap().apply(slice(
        "shop",
        "cart-1",
        "cart",
        (Some("http"), 8080),
        &[("10.20.0.2", Some(false), Some("us-east-1b"))],
    ));
    let mut snapshots = before.snapshots.clone();
    let changed = refresh(&w, &mut snapshots, "east", &key);
    assert_eq!(changed.into_iter().collect::<Vec<_>>(), ["central"]);
    assert_eq!(
        snapshots,
        translate(&w, &cfg).snapshots,
        "patched == retranslated"
    );

    // Central's own slice changes: the local backend and the mirror change, the import does not
    // (central does not export).
    w.cluster_mut("central").unwrap().apply(slice(
        "shop",
        "cart-1",
        "cart",
        (Some("http"), 8080),
        &[("10.10.0.9", None, None)],
    ));
    let changed = refresh(&w, &mut snapshots, "central", &key);
    assert_eq!(changed.len(), 1);
    let full = translate(&w, &cfg).snapshots;
    assert_eq!(snapshots, full);
    assert_eq!(
        addrs(&endpoints_in(&full, "central", "local", 0)),
        ["10.10.0.9:8080"]
    );

    // Nothing changed: nothing reported.
    assert!(refresh(&w, &mut snapshots, "central", &key).is_empty());
    // A Service nobody routes to.
    assert!(
        refresh(
            &w,
            &mut snapshots,
            "west",
            &crate::ObjectKey::new("shop", "nope")
        )
        .is_empty()
    );
}

/// The incremental engine's endpoint refresh finds the routes naming a Service through its
/// index: the same snapshots as a full translation, and a route naming another Service is
/// neither looked at nor copied (still the same allocation as before).
#[test]
fn indexed_endpoint_refresh_matches_a_full_translation() {
    let mut w = three_clusters();
    let c = w.cluster_mut("central").unwrap();
    c.apply(svc("shop", "other", &[(Some("http"), 80, None)]));
    c.apply(route(
        "shop",
        "elsewhere",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("other", 80)])],
    ));
    let cfg = cfg(&w);
    let mut engine = crate::translate::Incremental::new();
    let mut snapshots = engine.full(&w, &cfg).snapshots;
    let key = crate::ObjectKey::new("shop", "cart");
    let route_of = |s: &BTreeMap<String, model::Snapshot>, name: &str| {
        std::sync::Arc::clone(
            s["central"].gateways[0].listeners[0]
                .routes
                .iter()
                .find(|r| r.name == name)
                .unwrap(),
        )
    };
    let elsewhere = route_of(&snapshots, "elsewhere");
    let mut refresh_indexed = |w: &World, snapshots: &mut BTreeMap<String, model::Snapshot>, c| {
        let mut missing = MissingRemote::new();
        let changed = engine.refresh_endpoints(
            w,
            snapshots,
            c,
            &key,
            &EastWestListeners::new(),
            &mut missing,
            &mut crate::translate::AddressPolicy::default(),
        );
        assert!(missing.is_empty());
        changed.into_keys().collect::<Vec<_>>()
    };

    // East's exported slice: the import backend in central.
    w.cluster_mut("east").unwrap().apply(slice(
        "shop",
        "cart-1",
        "cart",
        (Some("http"), 8080),
        &[("10.20.0.2", Some(false), Some("us-east-1b"))],
    ));
    assert_eq!(refresh_indexed(&w, &mut snapshots, "east"), ["central"]);
    assert_eq!(snapshots, translate(&w, &cfg).snapshots);
    // Central's own slice: the local backend.
    w.cluster_mut("central").unwrap().apply(slice(
        "shop",
        "cart-1",
        "cart",
        (Some("http"), 8080),
        &[("10.10.0.9", None, None)],
    ));
    assert_eq!(refresh_indexed(&w, &mut snapshots, "central"), ["central"]);
    let full = translate(&w, &cfg).snapshots;
    assert_eq!(snapshots, full);
    assert_eq!(
        addrs(&endpoints_in(&full, "central", "local", 0)),
        ["10.10.0.9:8080"]
    );
    assert!(
        std::sync::Arc::ptr_eq(&elsewhere, &route_of(&snapshots, "elsewhere")),
        "a route of another Service was copied"
    );
    // Nothing changed: nothing reported.
    assert!(refresh_indexed(&w, &mut snapshots, "central").is_empty());
}

/// The indexed refresh finds the GRPCRoutes naming a Service too, also next to an HTTPRoute of
/// the same name on the same listener (a listener's routes are in namespace, name, kind order):
/// the GRPCRoute gets the new endpoints, the HTTPRoute (another Service) is not copied.
#[test]
fn indexed_endpoint_refresh_finds_grpc_routes() {
    use meridian_model::snapshot::RouteKind;
    use std::sync::Arc;

    let mut w = three_clusters();
    let c = w.cluster_mut("central").unwrap();
    c.apply(svc("shop", "other", &[(Some("http"), 80, None)]));
    c.apply(gw("shop", "rpc-gw", vec![http("http", 81)]));
    c.apply(route(
        "shop",
        "rpc",
        vec![parent("rpc-gw")],
        &["web.example"],
        vec![to(vec![backend("other", 80)])],
    ));
    c.apply(gateway_api::grpcroutes::GrpcRoute {
        metadata: meta(Some("shop"), "rpc"),
        spec: serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "rpc-gw"}],
            "hostnames": ["rpc.example"],
            "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}],
        }))
        .unwrap(),
        status: None,
    });
    let cfg = cfg(&w);
    let mut engine = crate::translate::Incremental::new();
    let mut snapshots = engine.full(&w, &cfg).snapshots;
    let routes = |s: &BTreeMap<String, model::Snapshot>| {
        s["central"]
            .gateways
            .iter()
            .find(|g| g.name == "rpc-gw")
            .unwrap()
            .listeners[0]
            .routes
            .clone()
    };
    let before = routes(&snapshots);
    assert_eq!(
        before
            .iter()
            .map(|r| (r.name.as_str(), r.kind))
            .collect::<Vec<_>>(),
        [("rpc", RouteKind::Http), ("rpc", RouteKind::Grpc)]
    );

    w.cluster_mut("central").unwrap().apply(slice(
        "shop",
        "cart-1",
        "cart",
        (Some("http"), 8080),
        &[("10.10.0.9", None, None)],
    ));
    let changed = engine.refresh_endpoints(
        &w,
        &mut snapshots,
        "central",
        &crate::ObjectKey::new("shop", "cart"),
        &EastWestListeners::new(),
        &mut MissingRemote::new(),
        &mut crate::translate::AddressPolicy::default(),
    );
    assert_eq!(changed.into_keys().collect::<Vec<_>>(), ["central"]);
    assert_eq!(snapshots, translate(&w, &cfg).snapshots);
    let after = routes(&snapshots);
    assert!(
        Arc::ptr_eq(&before[0], &after[0]),
        "the HTTPRoute of another Service was copied"
    );
    assert!(
        !Arc::ptr_eq(&before[1], &after[1]),
        "the GRPCRoute was not refreshed"
    );
}

/// [`refresh_endpoints`] for one network: no east-west listeners, nothing left out.
fn refresh(
    w: &World,
    snapshots: &mut BTreeMap<String, model::Snapshot>,
    cluster: &str,
    service: &crate::ObjectKey,
) -> std::collections::BTreeSet<String> {
    let mut missing = MissingRemote::new();
    let changed = refresh_endpoints(
        w,
        snapshots,
        cluster,
        service,
        &EastWestListeners::new(),
        &mut missing,
        &mut crate::translate::AddressPolicy::default(),
    );
    assert!(missing.is_empty());
    changed
}

fn endpoints_in(
    snaps: &BTreeMap<String, model::Snapshot>,
    cluster: &str,
    route: &str,
    rule: usize,
) -> Vec<model::Endpoint> {
    let r = snaps[cluster].gateways[0].listeners[0]
        .routes
        .iter()
        .find(|r| r.name == route)
        .unwrap();
    match &r.rules[rule].backends[0].target {
        model::BackendTarget::Endpoints { endpoints, .. } => endpoints.clone(),
        t => panic!("{t:?}"),
    }
}

#[test]
fn loopback_link_local_unspecified_and_multicast_endpoints_are_refused_and_named() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(svc(INFRA, "odd", &[(Some("http"), 8080, None)]));
    c.apply(slice(
        INFRA,
        "odd-a",
        "odd",
        (Some("http"), 3000),
        &[
            ("10.4.0.1", None, None),
            ("127.0.0.1", None, None),
            ("169.254.169.254", None, None),
            ("0.0.0.0", None, None),
            ("224.0.0.1", None, None),
        ],
    ));
    c.apply(slice(
        INFRA,
        "odd-v6",
        "odd",
        (Some("http"), 3000),
        &[
            ("::1", None, None),
            ("fe80::1", None, None),
            ("::ffff:127.0.0.2", None, None),
        ],
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("odd", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let (_, eps) = endpoints(&out, CLUSTER, "r", 0);
    assert_eq!(addrs(&eps), ["10.4.0.1:3000"]);
    assert!(out.endpoints_refused);
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    // The reference itself resolves: the route stays Accepted with ResolvedRefs True.
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "True", "ResolvedRefs");
    is(p, "meridian.dev/EndpointsRefused", "True", "RefusedAddress");
    let msg = message(p, "meridian.dev/EndpointsRefused");
    for a in [
        "127.0.0.1:3000 (loopback)",
        "169.254.169.254:3000 (link-local)",
        "0.0.0.0:3000 (unspecified)",
        "224.0.0.1:3000 (multicast)",
        "[::1]:3000 (loopback)",
        "[fe80::1]:3000 (link-local)",
        "[::ffff:127.0.0.2]:3000 (loopback)",
    ] {
        assert!(msg.contains(a), "{a} not in {msg:?}");
    }
    assert!(msg.contains("infra/odd:8080"), "{msg}");
    assert!(!msg.contains("10.4.0.1"), "{msg}");

    // Allowed loopback: kept; the others are still refused.
    let mut allow = cfg(&w);
    allow.allow_loopback_endpoints = true;
    let out = run(&w, &allow);
    let (_, eps) = endpoints(&out, CLUSTER, "r", 0);
    assert_eq!(
        addrs(&eps),
        [
            "10.4.0.1:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "[::ffff:127.0.0.2]:3000"
        ]
    );
    let msg = message(
        route_parent(&out, INFRA, "r", INFRA, GW),
        "meridian.dev/EndpointsRefused",
    );
    assert!(
        !msg.contains("(loopback)") && msg.contains("169.254.169.254"),
        "{msg}"
    );

    // The endpoint-only refresh applies the same policy and says it refused something.
    let mut snaps = run(&w, &cfg(&w)).snapshots;
    east(&mut w).apply(slice(
        INFRA,
        "odd-a",
        "odd",
        (Some("http"), 3000),
        &[("10.4.0.2", None, None), ("127.0.0.9", None, None)],
    ));
    let mut policy = crate::translate::AddressPolicy::default();
    let mut missing = MissingRemote::new();
    refresh_endpoints(
        &w,
        &mut snaps,
        CLUSTER,
        &crate::ObjectKey::new(INFRA, "odd"),
        &EastWestListeners::new(),
        &mut missing,
        &mut policy,
    );
    assert!(policy.refused_seen);
    let full = run(&w, &cfg(&w));
    assert_eq!(snaps, full.snapshots, "patched == retranslated");

    // Only ordinary addresses: no condition.
    let mut w = base();
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    assert!(!out.endpoints_refused);
    let p = route_parent(&out, INFRA, "r", INFRA, GW);
    assert!(
        p["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "meridian.dev/EndpointsRefused")
    );
}

fn message(holder: &serde_json::Value, type_: &str) -> String {
    holder["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string()
}
