//! Multi-network member clusters: east-west endpoints for other networks' clusters, east-west
//! sections for what other networks reach through this one, and the endpoint-only path.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use meridian_crds::mcs::{ServiceExport, ServiceExportSpec};
use meridian_crds::meridian::{FailoverPolicy, FailoverPolicySpec};

use super::*;
use crate::world::ObjectKey;

const GW: &str = "gw";
const IMPORT: &str = "shop/cart:80 (ServiceImport)";

/// Clusters `central` and `east` on network `a`, `west` on `b`. East and west export
/// `shop/cart` (east: 10.20.0.1 ready; west: 10.30.0.1 ready, 10.30.0.2 not ready); central and
/// west have our Gateway with a route to the ServiceImport, and central also one to its own
/// `shop/cart` Service (10.10.0.1).
fn networks() -> World {
    let mut w = World::new();
    for (name, region, net) in [
        ("central", "eu-central", "a"),
        ("east", "us-east", "a"),
        ("west", "us-west", "b"),
    ] {
        let c = w.add_cluster(name, region, vec![]);
        c.network = net.into();
        c.apply(class(CLASS, CONTROLLER_NAME));
        c.apply(svc("shop", "cart", &[(Some("http"), 80, None)]));
    }
    set_slice(
        &mut w,
        "central",
        &[("10.10.0.1", Some(true), Some("eu-central-1a"))],
    );
    set_slice(
        &mut w,
        "east",
        &[("10.20.0.1", Some(true), Some("us-east-1a"))],
    );
    set_slice(
        &mut w,
        "west",
        &[
            ("10.30.0.1", Some(true), Some("us-west-2a")),
            ("10.30.0.2", Some(false), Some("us-west-2b")),
        ],
    );
    for name in ["east", "west"] {
        w.cluster_mut(name).unwrap().apply(ServiceExport {
            metadata: meta(Some("shop"), "cart"),
            spec: ServiceExportSpec {},
            status: None,
        });
    }
    let import = HttpRouteRulesBackendRefs {
        group: Some("multicluster.x-k8s.io".into()),
        kind: Some("ServiceImport".into()),
        ..backend("cart", 80)
    };
    for name in ["central", "west"] {
        let c = w.cluster_mut(name).unwrap();
        c.apply(gw("shop", GW, vec![http("http", 80)]));
        c.apply(route(
            "shop",
            "global",
            vec![parent(GW)],
            &[],
            vec![to(vec![import.clone()])],
        ));
    }
    w.cluster_mut("central").unwrap().apply(route(
        "shop",
        "local",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("cart", 80)])],
    ));
    w
}

fn set_slice(w: &mut World, cluster: &str, eps: &[(&str, Option<bool>, Option<&str>)]) {
    w.cluster_mut(cluster).unwrap().apply(slice(
        "shop",
        "cart-1",
        "cart",
        (Some("http"), 8080),
        eps,
    ));
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Every cluster has east-west listeners: west two proxies, central and east one each.
fn listeners() -> EastWestListeners {
    BTreeMap::from([
        (
            "central".to_string(),
            vec![(addr("192.0.2.11:15443"), "eu-central-1a".to_string())],
        ),
        (
            "east".to_string(),
            vec![(addr("192.0.2.21:15443"), "us-east-1a".to_string())],
        ),
        (
            "west".to_string(),
            vec![
                (addr("192.0.2.31:15443"), "us-west-2a".to_string()),
                (addr("192.0.2.32:15443"), "us-west-2b".to_string()),
            ],
        ),
    ])
}

fn net_cfg(w: &World, listeners: EastWestListeners) -> TranslateConfig {
    TranslateConfig {
        east_west: listeners,
        ..cfg(w)
    }
}

/// (address:port, cluster, region, zone, ready, east_west) of the endpoints of `route`'s backend.
type Row = (String, String, String, String, bool, bool);

fn row(e: &model::Endpoint) -> Row {
    (
        format!("{}:{}", e.address, e.port),
        e.cluster.clone(),
        e.region.clone(),
        e.zone.clone(),
        e.ready,
        e.east_west,
    )
}

fn r(a: &str, c: &str, reg: &str, z: &str, ready: bool, ew: bool) -> Row {
    (a.into(), c.into(), reg.into(), z.into(), ready, ew)
}

fn backend_of<'a>(snap: &'a model::Snapshot, route: &str) -> &'a model::Backend {
    let rt = snap.gateways[0].listeners[0]
        .routes
        .iter()
        .find(|r| r.name == route)
        .unwrap();
    &rt.rules[0].backends[0]
}

fn eps_of(snap: &model::Snapshot, route: &str) -> Vec<Row> {
    match &backend_of(snap, route).target {
        model::BackendTarget::Endpoints { endpoints, .. } => endpoints.iter().map(row).collect(),
        t => panic!("{t:?}"),
    }
}

/// name → rows of the snapshot's east-west section.
fn section(snap: &model::Snapshot) -> Vec<(String, Vec<Row>)> {
    snap.east_west
        .iter()
        .map(|b| (b.name.clone(), b.endpoints.iter().map(row).collect()))
        .collect()
}

#[test]
fn other_networks_are_reached_through_their_east_west_listeners() {
    let w = networks();
    let out = run(&w, &net_cfg(&w, listeners()));
    assert!(out.east_west_missing.is_empty());

    // Central (network a): east direct (same network), west through each of its two proxies,
    // readiness from west's endpoints (one is ready), zone of the proxy.
    assert_eq!(
        eps_of(&out.snapshots["central"], "global"),
        [
            r(
                "10.20.0.1:8080",
                "east",
                "us-east",
                "us-east-1a",
                true,
                false
            ),
            r(
                "192.0.2.31:15443",
                "west",
                "us-west",
                "us-west-2a",
                true,
                true
            ),
            r(
                "192.0.2.32:15443",
                "west",
                "us-west",
                "us-west-2b",
                true,
                true
            ),
        ]
    );
    // A Service backend stays in its own cluster, whatever the networks.
    assert_eq!(
        eps_of(&out.snapshots["central"], "local"),
        [r(
            "10.10.0.1:8080",
            "central",
            "eu-central",
            "eu-central-1a",
            true,
            false
        )]
    );
    // West (network b): east through its one proxy, its own endpoints direct.
    assert_eq!(
        eps_of(&out.snapshots["west"], "global"),
        [
            r(
                "192.0.2.21:15443",
                "east",
                "us-east",
                "us-east-1a",
                true,
                true
            ),
            r(
                "10.30.0.1:8080",
                "west",
                "us-west",
                "us-west-2a",
                true,
                false
            ),
            r(
                "10.30.0.2:8080",
                "west",
                "us-west",
                "us-west-2b",
                false,
                false
            ),
        ]
    );

    // What each network serves the other: the import, with that network's endpoints only
    // (central is on network a too, so it serves east's endpoints as well).
    let a_side = vec![(
        IMPORT.to_string(),
        vec![r(
            "10.20.0.1:8080",
            "east",
            "us-east",
            "us-east-1a",
            true,
            false,
        )],
    )];
    assert_eq!(section(&out.snapshots["central"]), a_side);
    assert_eq!(section(&out.snapshots["east"]), a_side);
    assert_eq!(
        section(&out.snapshots["west"]),
        [(
            IMPORT.to_string(),
            vec![
                r(
                    "10.30.0.1:8080",
                    "west",
                    "us-west",
                    "us-west-2a",
                    true,
                    false
                ),
                r(
                    "10.30.0.2:8080",
                    "west",
                    "us-west",
                    "us-west-2b",
                    false,
                    false
                ),
            ]
        )]
    );
    assert_eq!(
        out.snapshots["west"].east_west[0].protocol,
        model::BackendProtocol::Http1
    );
    assert_eq!(out.snapshots["west"].east_west[0].failover, None);

    // No ready endpoint left in west: its east-west endpoints are not ready either.
    let mut w = w;
    set_slice(
        &mut w,
        "west",
        &[("10.30.0.1", Some(false), Some("us-west-2a"))],
    );
    let out = run(&w, &net_cfg(&w, listeners()));
    let central = eps_of(&out.snapshots["central"], "global");
    assert_eq!(central.len(), 3);
    assert!(central.iter().filter(|e| e.5).all(|e| !e.4), "{central:?}");
}

#[test]
fn one_network_changes_nothing() {
    let w = networks();
    let mut flat = w.clone();
    for c in flat.clusters.values_mut() {
        c.network = String::new();
    }
    let mut same = w.clone();
    for c in same.clusters.values_mut() {
        c.network = "a".into();
    }
    let plain = run(&flat, &cfg(&flat));
    // Listeners are there but unused: every endpoint direct, no east-west section.
    let out = run(&same, &net_cfg(&same, listeners()));
    assert_eq!(out, plain);
    let out = run(&flat, &net_cfg(&flat, listeners()));
    assert_eq!(out, plain);
    for snap in plain.snapshots.values() {
        assert!(snap.east_west.is_empty());
    }
    assert!(
        eps_of(&plain.snapshots["central"], "global")
            .iter()
            .all(|e| !e.5)
    );
}

#[test]
fn a_cluster_without_east_west_listeners_is_left_out() {
    let w = networks();
    let mut l = listeners();
    l.remove("west");
    let out = run(&w, &net_cfg(&w, l));
    assert_eq!(
        eps_of(&out.snapshots["central"], "global"),
        [r(
            "10.20.0.1:8080",
            "east",
            "us-east",
            "us-east-1a",
            true,
            false
        )],
        "west's endpoints are unreachable from network a"
    );
    assert_eq!(
        out.east_west_missing,
        BTreeMap::from([(
            "central".to_string(),
            BTreeMap::from([(IMPORT.to_string(), BTreeSet::from(["west".to_string()]))])
        )])
    );
    // West still reaches east, and still gets its section (a proxy of west with a listener
    // may connect any time; it then serves at once).
    assert_eq!(eps_of(&out.snapshots["west"], "global").len(), 3);
    assert_eq!(section(&out.snapshots["west"]).len(), 1);
}

#[test]
fn the_section_carries_the_policy_of_the_requesting_side() {
    let mut w = networks();
    let spec: FailoverPolicySpec = serde_yaml::from_str(
        "targetRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: cart}]\n\
         spill: {minHealthyPercent: 50}\n",
    )
    .unwrap();
    let mut p = FailoverPolicy::new("cart", spec);
    p.metadata = meta(Some("shop"), "cart");
    w.cluster_mut("central").unwrap().apply(p);
    let out = run(&w, &net_cfg(&w, listeners()));
    let failover = |c: &str| {
        out.snapshots[c].east_west[0]
            .failover
            .as_ref()
            .map(|f| f.min_healthy_percent)
    };
    // West serves what central (network a) asks for: central's policy.
    assert_eq!(failover("west"), Some(50));
    // Network a serves what west asks for: west has no policy.
    assert_eq!(failover("central"), None);
    assert_eq!(failover("east"), None);
}

#[test]
fn drains_of_a_region_cover_its_east_west_endpoints() {
    let w = networks();
    let out = run(&w, &net_cfg(&w, listeners()));
    let drain = model::Drain {
        drill: "shop/d".into(),
        region: Some("us-west".into()),
        ..model::Drain::default()
    };
    let model::BackendTarget::Endpoints { endpoints, .. } =
        &backend_of(&out.snapshots["central"], "global").target
    else {
        panic!()
    };
    let drained: Vec<bool> = endpoints.iter().map(|e| drain.matches(e)).collect();
    assert_eq!(drained, [false, true, true]);
    // A zone drain matches the proxy of that zone only: the other proxy of west still serves.
    let zone = model::Drain {
        zone: Some("us-west-2a".into()),
        region: None,
        ..drain
    };
    let drained: Vec<bool> = endpoints.iter().map(|e| zone.matches(e)).collect();
    assert_eq!(drained, [false, true, false]);
}

/// Refreshes `cluster`'s Service and checks the result against a full translation.
fn refresh_matches(
    w: &World,
    cfg: &TranslateConfig,
    snapshots: &mut BTreeMap<String, model::Snapshot>,
    missing: &mut MissingRemote,
    cluster: &str,
) -> Vec<String> {
    let changed = refresh_endpoints(
        w,
        snapshots,
        cluster,
        &ObjectKey::new("shop", "cart"),
        &cfg.east_west,
        missing,
        &mut crate::translate::AddressPolicy {
            allow_loopback: cfg.allow_loopback_endpoints,
            refused_seen: false,
        },
    );
    let full = translate(w, cfg);
    assert_eq!(*snapshots, full.snapshots, "patched == retranslated");
    assert_eq!(*missing, full.east_west_missing);
    changed.into_iter().collect()
}

#[test]
fn endpoint_changes_update_east_west_endpoints_and_sections() {
    let mut w = networks();
    let cfg = net_cfg(&w, listeners());
    let before = run(&w, &cfg);
    let mut snapshots = before.snapshots.clone();
    let mut missing = before.east_west_missing.clone();

    // West loses its ready endpoint and gains another: central's east-west endpoints turn not
    // ready, west's own backend and its section change, network a's sections do not.
    set_slice(
        &mut w,
        "west",
        &[
            ("10.30.0.2", Some(false), Some("us-west-2b")),
            ("10.30.0.3", Some(false), Some("us-west-2b")),
        ],
    );
    let changed = refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "west");
    assert_eq!(changed, ["central", "west"]);
    assert!(
        eps_of(&snapshots["central"], "global")
            .iter()
            .filter(|e| e.5)
            .all(|e| !e.4)
    );
    assert_eq!(
        section(&snapshots["west"])[0].1,
        [
            r(
                "10.30.0.2:8080",
                "west",
                "us-west",
                "us-west-2b",
                false,
                false
            ),
            r(
                "10.30.0.3:8080",
                "west",
                "us-west",
                "us-west-2b",
                false,
                false
            ),
        ]
    );

    // West has no endpoint at all: nothing of west in central, nothing wanted from network b.
    set_slice(&mut w, "west", &[]);
    let changed = refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "west");
    assert_eq!(changed, ["central", "west"]);
    assert!(snapshots["west"].east_west.is_empty());
    assert_eq!(eps_of(&snapshots["central"], "global").len(), 1);

    // Endpoints come back: the section reappears, central reaches them again.
    set_slice(
        &mut w,
        "west",
        &[("10.30.0.9", Some(true), Some("us-west-2a"))],
    );
    let changed = refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "west");
    assert_eq!(changed, ["central", "west"]);
    assert_eq!(section(&snapshots["west"]).len(), 1);

    // An east change: west's east-west endpoint and network a's sections follow.
    set_slice(
        &mut w,
        "east",
        &[("10.20.0.5", Some(false), Some("us-east-1a"))],
    );
    let changed = refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "east");
    assert_eq!(changed, ["central", "east", "west"]);
    assert!(!eps_of(&snapshots["west"], "global")[0].4);

    // Nothing changed: nothing reported.
    assert!(refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "east").is_empty());

    // Without listeners for west, what the refresh leaves out is recorded like a translation.
    let mut l = listeners();
    l.remove("west");
    let cfg = net_cfg(&w, l);
    let out = run(&w, &cfg);
    let mut snapshots = out.snapshots.clone();
    let mut missing = out.east_west_missing.clone();
    assert_eq!(missing.len(), 1);
    set_slice(&mut w, "west", &[]);
    refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "west");
    assert!(missing.is_empty(), "{missing:?}");
    set_slice(&mut w, "west", &[("10.30.0.1", Some(true), None)]);
    refresh_matches(&w, &cfg, &mut snapshots, &mut missing, "west");
    assert_eq!(missing.len(), 1);
}
