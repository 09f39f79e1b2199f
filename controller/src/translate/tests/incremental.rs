//! Incremental translation: what one change re-translates, that the result equals the full
//! translation, and when it declines. The random-sequence property test is
//! `tests/incremental_translate.rs`.

use super::*;
use crate::translate::{Changes, Fallback, Incremental};
use crate::world::{Kind, ObjectKey};

const ROUTES: usize = 50;

/// Gateway `infra/gw` (HTTP, routes from every namespace, plus a selector listener for
/// `team: web` namespaces) and `ROUTES` routes in `app`, route-i → Service svc-i with one
/// endpoint.
fn big_world() -> World {
    let mut w = world();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "gw",
        vec![
            from(
                http("http", 80),
                GatewayListenersAllowedRoutesNamespacesFrom::All,
            ),
            from_selector(http("team", 8080), &[("team", "web")]),
        ],
    ));
    for i in 0..ROUTES {
        c.apply(route(
            APP,
            &format!("route-{i}"),
            vec![parent_in(INFRA, "gw")],
            &[],
            vec![prefix(
                &format!("/r{i}"),
                vec![backend(&format!("svc-{i}"), 80)],
            )],
        ));
        c.apply(svc(APP, &format!("svc-{i}"), &[(Some("http"), 80, None)]));
        c.apply(slice(
            APP,
            &format!("svc-{i}-x"),
            &format!("svc-{i}"),
            (Some("http"), 8080),
            &[("10.1.0.1", Some(true), None)],
        ));
    }
    w
}

/// Runs an incremental pass and checks it against the full translation of the same world.
fn step(
    engine: &mut Incremental,
    w: &World,
    cfg: &TranslateConfig,
    changes: &Changes,
    snapshots: &mut BTreeMap<String, model::Snapshot>,
) -> super::super::Pass {
    let pass = engine.update(w, cfg, changes, snapshots).unwrap();
    let full = run(w, cfg);
    assert_eq!(
        serde_json::to_string(&*snapshots).unwrap(),
        serde_json::to_string(&full.snapshots).unwrap()
    );
    assert_eq!(engine.status(), full.status);
    assert_eq!(engine.endpoints_refused(), full.endpoints_refused);
    pass
}

fn seeded(
    w: &World,
) -> (
    Incremental,
    TranslateConfig,
    BTreeMap<String, model::Snapshot>,
) {
    let mut engine = Incremental::new();
    let cfg = cfg(w);
    let out = engine.full(w, &cfg);
    assert_eq!(out, run(w, &cfg));
    (engine, cfg, out.snapshots)
}

fn one(kind: Kind, key: ObjectKey) -> Changes {
    let mut c = Changes::new();
    c.insert(CLUSTER, kind, key);
    c
}

fn attached_routes(engine: &Incremental) -> Vec<i64> {
    engine
        .status()
        .iter()
        .filter(|u| u.kind == StatusKind::Gateway)
        .flat_map(|u| {
            u.status["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|l| l["attachedRoutes"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_route_change_translates_that_route_and_its_gateway_status() {
    let mut w = big_world();
    let (mut engine, cfg, mut snapshots) = seeded(&w);
    assert_eq!(attached_routes(&engine), vec![ROUTES as i64, 0]);

    // Modified: one route translated, one Gateway's status recomputed.
    east(&mut w).apply(route(
        APP,
        "route-7",
        vec![parent_in(INFRA, "gw")],
        &["a.example.com"],
        vec![prefix("/seven", vec![backend("svc-7", 80)])],
    ));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::HttpRoute, ObjectKey::new(APP, "route-7")),
        &mut snapshots,
    );
    assert_eq!((pass.routes, pass.gateways), (1, 1));

    // Added and deleted: attachedRoutes follows.
    east(&mut w).apply(route(
        APP,
        "new",
        vec![parent_in(INFRA, "gw")],
        &[],
        vec![to(vec![backend("svc-1", 80)])],
    ));
    step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::HttpRoute, ObjectKey::new(APP, "new")),
        &mut snapshots,
    );
    assert_eq!(attached_routes(&engine), vec![ROUTES as i64 + 1, 0]);
    east(&mut w).delete::<HttpRoute>(&ObjectKey::new(APP, "route-3"));
    east(&mut w).delete::<HttpRoute>(&ObjectKey::new(APP, "new"));
    let mut changes = one(Kind::HttpRoute, ObjectKey::new(APP, "route-3"));
    changes.insert(CLUSTER, Kind::HttpRoute, ObjectKey::new(APP, "new"));
    let pass = step(&mut engine, &w, &cfg, &changes, &mut snapshots);
    assert_eq!((pass.routes, pass.gateways), (2, 1));
    assert_eq!(attached_routes(&engine), vec![ROUTES as i64 - 1, 0]);
}

#[test]
fn a_service_change_translates_the_routes_using_it() {
    let mut w = big_world();
    let (mut engine, cfg, mut snapshots) = seeded(&w);
    east(&mut w).delete::<Service>(&ObjectKey::new(APP, "svc-9"));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Service, ObjectKey::new(APP, "svc-9")),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 1);
    let route = engine
        .status()
        .into_iter()
        .find(|u| u.kind == StatusKind::HttpRoute && u.name == "route-9")
        .unwrap();
    assert!(
        route.status.to_string().contains("BackendNotFound"),
        "{}",
        route.status
    );

    // A Service nobody uses: nothing to translate.
    east(&mut w).apply(svc(APP, "unused", &[(None, 80, None)]));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Service, ObjectKey::new(APP, "unused")),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 0);
}

#[test]
fn a_gateway_status_echo_keeps_every_attachment() {
    let mut w = big_world();
    let (mut engine, cfg, mut snapshots) = seeded(&w);
    let update = engine
        .status()
        .into_iter()
        .find(|u| u.kind == StatusKind::Gateway)
        .unwrap();
    let key = ObjectKey::new(INFRA, "gw");
    let mut g = east(&mut w).gateways.get(&key).unwrap().as_ref().clone();
    g.status = Some(serde_json::from_value(Value::clone(&update.status)).unwrap());
    east(&mut w).apply(g);
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Gateway, key),
        &mut snapshots,
    );
    assert_eq!((pass.routes, pass.gateways), (0, 1));
    assert!(
        engine
            .status()
            .iter()
            .all(|u| u.kind != StatusKind::Gateway)
    );

    // A listener change re-attaches every route of the Gateway.
    let mut g = east(&mut w)
        .gateways
        .get(&ObjectKey::new(INFRA, "gw"))
        .unwrap()
        .as_ref()
        .clone();
    g.spec.listeners[0].hostname = Some("*.example.com".into());
    g.metadata.generation = Some(2);
    east(&mut w).apply(g);
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Gateway, ObjectKey::new(INFRA, "gw")),
        &mut snapshots,
    );
    assert_eq!(pass.routes, ROUTES);
}

#[test]
fn grants_secrets_and_namespaces_reach_what_they_govern() {
    let mut w = big_world();
    let c = east(&mut w);
    c.apply(route(
        WEB,
        "cross",
        vec![parent_in(INFRA, "gw")],
        &[],
        vec![to(vec![backend_in(APP, "svc-1", 80)])],
    ));
    let (mut engine, cfg, mut snapshots) = seeded(&w);

    // The grant lets the cross-namespace reference resolve: only that route is translated.
    east(&mut w).apply(grant(
        APP,
        "g",
        (GATEWAY_GROUP_NAME, "HTTPRoute", WEB),
        ("", "Service", None),
    ));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::ReferenceGrant, ObjectKey::new(APP, "g")),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 1);
    east(&mut w).delete::<ReferenceGrant>(&ObjectKey::new(APP, "g"));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::ReferenceGrant, ObjectKey::new(APP, "g")),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 1);

    // Labels of `web` now match the selector listener: the routes of `web` attach there too.
    east(&mut w).apply(namespace(WEB, &[("team", "web")]));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Namespace, ObjectKey::cluster_scoped(WEB)),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 1);
    assert_eq!(attached_routes(&engine), vec![ROUTES as i64 + 1, 1]);

    // A Secret no Gateway names changes nothing; the one an HTTPS listener names does.
    east(&mut w).apply(secret(INFRA, "other", CERT_PEM, KEY_PEM));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Secret, ObjectKey::new(INFRA, "other")),
        &mut snapshots,
    );
    assert_eq!((pass.routes, pass.gateways), (0, 0));
    let mut g = east(&mut w)
        .gateways
        .get(&ObjectKey::new(INFRA, "gw"))
        .unwrap()
        .as_ref()
        .clone();
    g.spec
        .listeners
        .push(https("https", 443, &[(INFRA, "cert")]));
    east(&mut w).apply(g);
    step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Gateway, ObjectKey::new(INFRA, "gw")),
        &mut snapshots,
    );
    east(&mut w).apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::Secret, ObjectKey::new(INFRA, "cert")),
        &mut snapshots,
    );
    assert_eq!(pass.gateways, 1);
    assert_eq!(
        snapshots[CLUSTER].gateways[0].listeners.len(),
        3,
        "the HTTPS listener is served"
    );
}

#[test]
fn data_plane_reports_recompute_that_gateway_only() {
    let w = big_world();
    let (mut engine, mut cfg, mut snapshots) = seeded(&w);
    let r = ClusterGatewayRef::new(CLUSTER, INFRA, "gw");
    cfg.programmed.insert(r, ProgrammedState::NoProxy);
    let pass = step(&mut engine, &w, &cfg, &Changes::new(), &mut snapshots);
    assert_eq!((pass.routes, pass.gateways), (0, 1));
}

#[test]
fn what_it_cannot_do_falls_back_to_full() {
    let mut w = big_world();
    let mut engine = Incremental::new();
    let cfg = cfg(&w);
    let mut snapshots = BTreeMap::new();
    assert_eq!(
        engine
            .update(&w, &cfg, &Changes::new(), &mut snapshots)
            .unwrap_err(),
        Fallback::NotSeeded
    );
    engine.full(&w, &cfg);
    let mut unreachable = cfg.clone();
    unreachable.unreachable.insert(
        CLUSTER.into(),
        UnreachableCluster {
            since: cfg.now,
            last_contact: None,
            grace_ends: cfg.now,
        },
    );
    assert_eq!(engine.check(&w, &unreachable), Err(Fallback::Unreachable));
    w.add_cluster("west", "us-west", vec![]).network = "other".into();
    assert_eq!(engine.check(&w, &cfg), Err(Fallback::Members));
    engine.full(&w, &cfg);
    assert_eq!(engine.check(&w, &cfg), Err(Fallback::MultiNetwork));
    w.cluster_mut("west").unwrap().network = String::new();
    assert_eq!(engine.check(&w, &cfg), Ok(()));
}

const GATEWAY_GROUP_NAME: &str = crate::status::GATEWAY_GROUP;

#[test]
fn a_policy_change_translates_the_routes_of_its_targets() {
    let mut w = big_world();
    let (mut engine, cfg, mut snapshots) = seeded(&w);
    let spec: meridian_crds::meridian::FailoverPolicySpec =
        serde_yaml::from_str("targetRefs: [{group: '', kind: Service, name: svc-4}]").unwrap();
    let mut p = meridian_crds::meridian::FailoverPolicy::new("p", spec);
    p.metadata = meta(Some(APP), "p");
    east(&mut w).apply(p);
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::FailoverPolicy, ObjectKey::new(APP, "p")),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 1);
    let with_policy = snapshots[CLUSTER].gateways[0].listeners[0]
        .routes
        .iter()
        .flat_map(|r| &r.rules)
        .flat_map(|r| &r.backends)
        .filter(|b| {
            matches!(
                &b.target,
                model::BackendTarget::Endpoints {
                    failover: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(with_policy, 1);
}

/// A route create costs one route translation; what follows it — its status and the Gateway's
/// becoming unconfirmed (the writes queued), their echoes landing, the writes confirmed —
/// translates nothing. A status someone else changed is translated again.
#[test]
fn echoes_and_unconfirmed_changes_of_our_writes_translate_nothing() {
    create_echo_confirm(Kind::HttpRoute);
}

/// The same for a GRPCRoute (on a Gateway of its own: the HTTPRoutes of `big_world` have no
/// hostnames, a GRPCRoute next to them would lose every listener to them).
#[test]
fn echoes_and_unconfirmed_changes_of_our_grpc_route_writes_translate_nothing() {
    create_echo_confirm(Kind::GrpcRoute);
}

fn create_echo_confirm(kind: Kind) {
    let mut w = big_world();
    let grpc = kind == Kind::GrpcRoute;
    if grpc {
        east(&mut w).apply(gw(
            INFRA,
            "rpc",
            vec![from(
                http("grpc", 9090),
                GatewayListenersAllowedRoutesNamespacesFrom::All,
            )],
        ));
    }
    let (mut engine, mut cfg, mut snapshots) = seeded(&w);
    let new = ObjectKey::new(APP, "new");
    if grpc {
        east(&mut w).apply(gateway_api::grpcroutes::GrpcRoute {
            metadata: meta(Some(APP), "new"),
            spec: serde_json::from_value(serde_json::json!({
                "parentRefs": [{"name": "rpc", "namespace": INFRA}],
                "rules": [{"backendRefs": [{"name": "svc-1", "port": 80}]}],
            }))
            .unwrap(),
            status: None,
        });
    } else {
        east(&mut w).apply(route(
            APP,
            "new",
            vec![parent_in(INFRA, "gw")],
            &[],
            vec![to(vec![backend("svc-1", 80)])],
        ));
    }
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(kind, new.clone()),
        &mut snapshots,
    );
    assert_eq!((pass.routes, pass.gateways), (1, 1));
    // The route's and the Gateway's (classes are recomputed every pass).
    let written: Vec<StatusUpdate> = pass
        .status
        .iter()
        .filter(|u| u.kind != StatusKind::GatewayClass)
        .cloned()
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    let keys: BTreeSet<(StatusKind, String, String)> = written
        .iter()
        .map(|u| {
            let ns = u.namespace.clone().unwrap_or_default();
            (u.kind, ns, u.name.clone())
        })
        .collect();
    let set_unconfirmed = |cfg: &mut TranslateConfig, on: bool| {
        let set = if on { keys.clone() } else { BTreeSet::new() };
        cfg.unconfirmed = Arc::new(BTreeMap::from([(CLUSTER.to_string(), set)]));
        cfg.unconfirmed_changed = Some(BTreeMap::from([(CLUSTER.to_string(), keys.clone())]));
    };

    // The writes are queued: unconfirmed.
    set_unconfirmed(&mut cfg, true);
    let pass = step(&mut engine, &w, &cfg, &Changes::new(), &mut snapshots);
    assert_eq!((pass.routes, pass.gateways), (0, 0));

    // Their echoes land.
    let mut echoes = Changes::new();
    for u in &written {
        let key = ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.clone());
        let c = east(&mut w);
        match u.kind {
            StatusKind::HttpRoute => {
                let mut r = c.http_routes[&key].as_ref().clone();
                r.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(r);
                echoes.insert_status(CLUSTER, Kind::HttpRoute, key);
            }
            StatusKind::GrpcRoute => {
                let mut r = c.grpc_routes[&key].as_ref().clone();
                r.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(r);
                echoes.insert_status(CLUSTER, Kind::GrpcRoute, key);
            }
            _ => {
                let mut g = c.gateways[&key].as_ref().clone();
                g.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(g);
                echoes.insert_status(CLUSTER, Kind::Gateway, key);
            }
        }
    }
    cfg.unconfirmed_changed = Some(BTreeMap::new());
    let pass = step(&mut engine, &w, &cfg, &echoes, &mut snapshots);
    assert_eq!((pass.routes, pass.gateways, pass.echoes), (0, 0, 2));
    assert_eq!(
        engine.status().iter().filter(|u| u.settles).count(),
        2,
        "still unconfirmed: reported as settling"
    );

    // The writer sees them: confirmed.
    set_unconfirmed(&mut cfg, false);
    let pass = step(&mut engine, &w, &cfg, &Changes::new(), &mut snapshots);
    assert_eq!((pass.routes, pass.gateways), (0, 0));
    // (Of what the create wrote: in the GRPCRoute case the other Gateway's first write is
    // still pending, its echo never landed.)
    assert!(
        !engine.status().iter().any(|u| keys.contains(&(
            u.kind,
            u.namespace.clone().unwrap_or_default(),
            u.name.clone()
        ))),
        "nothing left to write or settle"
    );

    // Someone clears the route's status: not an echo, translated (and written) again.
    if grpc {
        let mut r = east(&mut w).grpc_routes[&new].as_ref().clone();
        r.status = None;
        east(&mut w).apply(r);
    } else {
        let mut r = east(&mut w).http_routes[&new].as_ref().clone();
        r.status = None;
        east(&mut w).apply(r);
    }
    cfg.unconfirmed_changed = Some(BTreeMap::new());
    let mut cleared = Changes::new();
    cleared.insert_status(CLUSTER, kind, new.clone());
    let pass = step(&mut engine, &w, &cfg, &cleared, &mut snapshots);
    assert_eq!((pass.routes, pass.echoes), (1, 0));
    assert!(pass.status.iter().any(|u| u.name == "new" && !u.settles));
}

/// A BackendTLSPolicy reaches the HTTPRoutes and the GRPCRoutes of its target Service (both get
/// `tls`, equal to a full translation), and the echo of the policy's own status write is
/// recognised and translates nothing, like a FailoverPolicy's.
#[test]
fn a_backend_tls_policy_reaches_http_and_grpc_routes_and_its_echo_translates_nothing() {
    let mut w = big_world();
    east(&mut w).apply(gw(
        INFRA,
        "rpc",
        vec![from(
            http("grpc", 9090),
            GatewayListenersAllowedRoutesNamespacesFrom::All,
        )],
    ));
    east(&mut w).apply(gateway_api::grpcroutes::GrpcRoute {
        metadata: meta(Some(APP), "rpc"),
        spec: serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "rpc", "namespace": INFRA}],
            "rules": [{"backendRefs": [{"name": "svc-4", "port": 80}]}],
        }))
        .unwrap(),
        status: None,
    });
    let (mut engine, cfg, mut snapshots) = seeded(&w);
    let spec: gateway_api::backendtlspolicies::BackendTlsPolicySpec = serde_yaml::from_str(
        "targetRefs: [{group: '', kind: Service, name: svc-4}]\n\
         validation: {hostname: svc.example.com, wellKnownCACertificates: System}\n",
    )
    .unwrap();
    let mut p = gateway_api::backendtlspolicies::BackendTlsPolicy::new("tls", spec);
    p.metadata = meta(Some(APP), "tls");
    east(&mut w).apply(p);
    let key = ObjectKey::new(APP, "tls");
    let pass = step(
        &mut engine,
        &w,
        &cfg,
        &one(Kind::BackendTlsPolicy, key.clone()),
        &mut snapshots,
    );
    assert_eq!(pass.routes, 2, "the HTTPRoute and the GRPCRoute to svc-4");
    let with_tls: Vec<model::RouteKind> = snapshots[CLUSTER]
        .gateways
        .iter()
        .flat_map(|g| &g.listeners)
        .flat_map(|l| &l.routes)
        .filter(|r| {
            r.rules.iter().flat_map(|r| &r.backends).any(|b| {
                b.tls
                    .as_ref()
                    .is_some_and(|t| t.hostname == "svc.example.com")
            })
        })
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        with_tls,
        [model::RouteKind::Http, model::RouteKind::Grpc],
        "both kinds of route get TLS to the targeted Service"
    );
    // The policy's status (one ancestor per Gateway: both routes count) is written; its echo
    // translates nothing.
    let written = pass
        .status
        .iter()
        .find(|u| u.kind == StatusKind::BackendTlsPolicy)
        .cloned()
        .unwrap();
    assert_eq!(written.status["ancestors"].as_array().unwrap().len(), 2);
    assert!(!engine.is_echo(&w, CLUSTER, Kind::BackendTlsPolicy, &key));
    let c = east(&mut w);
    let mut echoed = c.backend_tls_policies[&key].as_ref().clone();
    echoed.status = Some(serde_json::from_value(Value::clone(&written.status)).unwrap());
    c.apply(echoed);
    assert!(engine.is_echo(&w, CLUSTER, Kind::BackendTlsPolicy, &key));
    let mut echoes = Changes::new();
    echoes.insert_status(CLUSTER, Kind::BackendTlsPolicy, key);
    let pass = step(&mut engine, &w, &cfg, &echoes, &mut snapshots);
    assert_eq!((pass.routes, pass.gateways, pass.echoes), (0, 0, 1));
}
