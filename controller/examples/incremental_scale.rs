//! Measures incremental translation against the full one: one cluster, one Gateway (one HTTP
//! listener), N HTTPRoutes each with one Service backend (one EndpointSlice of 3 endpoints),
//! every status already written (steady state), plus one route in another namespace whose
//! backend needs a ReferenceGrant. For each N it prints the time of a full translation and of an
//! incremental pass for one change of each kind (median and max of the rounds; the change to the
//! world itself is not timed), and what the reconcile loop does with the snapshot on top
//! (clone for publishing, content comparison with the published one).
//!
//! How to run (N defaults to 1000 and 10000; use a release build for representative numbers):
//!
//! ```text
//! cargo run -p meridian-controller --release --example incremental_scale -- 1000 10000
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use gateway_api::gatewayclasses::{GatewayClass, GatewayClassSpec};
use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutes,
    GatewayListenersAllowedRoutesNamespaces, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewaySpec,
};
use gateway_api::httproutes::*;
use gateway_api::referencegrants::{
    ReferenceGrant, ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meridian_controller::translate::{Changes, Incremental};
use meridian_controller::{
    CONTROLLER_NAME, ClusterGatewayRef, Kind, ObjectKey, ProgrammedState, StatusKind, StatusUpdate,
    TranslateConfig, World, translate,
};
use meridian_model::Snapshot;

const CLUSTER: &str = "east";
const ROUNDS: usize = 15;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        name: Some(name.to_string()),
        generation: Some(1),
        ..Default::default()
    }
}

fn route(ns: &str, name: &str, path: &str, backend_ns: Option<&str>, svc: &str) -> HttpRoute {
    HttpRoute {
        metadata: meta(ns, name),
        spec: HttpRouteSpec {
            hostnames: None,
            parent_refs: Some(vec![HttpRouteParentRefs {
                name: "gw".into(),
                namespace: Some("apps".into()),
                ..Default::default()
            }]),
            rules: Some(vec![HttpRouteRules {
                matches: Some(vec![HttpRouteRulesMatches {
                    path: Some(HttpRouteRulesMatchesPath {
                        r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                        value: Some(path.to_string()),
                    }),
                    ..Default::default()
                }]),
                backend_refs: Some(vec![HttpRouteRulesBackendRefs {
                    name: svc.to_string(),
                    namespace: backend_ns.map(str::to_string),
                    port: Some(80),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
        },
        status: None,
    }
}

fn service(name: &str, label: &str) -> Service {
    let mut m = meta("apps", name);
    m.labels = Some(BTreeMap::from([("rev".to_string(), label.to_string())]));
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn gateway(hostname: Option<&str>) -> Gateway {
    Gateway {
        metadata: meta("apps", "gw"),
        spec: GatewaySpec {
            gateway_class_name: "meridian".into(),
            listeners: vec![GatewayListeners {
                name: "http".into(),
                port: 80,
                protocol: "HTTP".into(),
                hostname: hostname.map(str::to_string),
                tls: None,
                allowed_routes: Some(GatewayListenersAllowedRoutes {
                    namespaces: Some(GatewayListenersAllowedRoutesNamespaces {
                        from: Some(GatewayListenersAllowedRoutesNamespacesFrom::All),
                        selector: None,
                    }),
                    kinds: None,
                }),
            }],
            ..Default::default()
        },
        status: None,
    }
}

fn grant() -> ReferenceGrant {
    ReferenceGrant {
        metadata: meta("apps", "from-other"),
        spec: ReferenceGrantSpec {
            from: vec![ReferenceGrantFrom {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
                namespace: "other".into(),
            }],
            to: vec![ReferenceGrantTo {
                group: String::new(),
                kind: "Service".into(),
                name: None,
            }],
        },
    }
}

/// The world with N routes, and its config.
fn world(n: usize) -> Result<(World, TranslateConfig), String> {
    let mut world = World::new();
    let c = world.add_cluster(CLUSTER, "region-0", vec![]);
    c.apply(GatewayClass {
        metadata: meta("", "meridian"),
        spec: GatewayClassSpec {
            controller_name: CONTROLLER_NAME.into(),
            description: None,
            parameters_ref: None,
        },
        status: None,
    });
    c.apply(gateway(None));
    for i in 0..n {
        let svc = format!("svc-{i}");
        c.apply(service(&svc, "a"));
        let mut m = meta("apps", &format!("{svc}-abc"));
        m.labels = Some(BTreeMap::from([(
            "kubernetes.io/service-name".to_string(),
            svc.clone(),
        )]));
        c.apply(EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: Some(
                (0..3)
                    .map(|e| Endpoint {
                        addresses: vec![format!("10.{}.{}.{}", 100 + e, (i / 250) % 250, i % 250)],
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
        });
        c.apply(route(
            "apps",
            &format!("route-{i}"),
            &format!("/api/{i}"),
            None,
            &svc,
        ));
    }
    c.apply(route("other", "cross", "/cross", Some("apps"), "svc-0"));
    let mut cfg = TranslateConfig::default();
    let r = ClusterGatewayRef::new(CLUSTER, "apps", "gw");
    let ip: IpAddr = "10.0.0.1".parse().map_err(|e| format!("{e}"))?;
    cfg.addresses.insert(r.clone(), vec![ip]);
    cfg.programmed.insert(r, ProgrammedState::Applied(1));
    Ok((world, cfg))
}

/// Writes every status update into its object, as the status writer and the watch would.
fn echo(world: &mut World, updates: &[StatusUpdate]) -> Result<(), String> {
    let c = world.cluster_mut(CLUSTER).ok_or("cluster")?;
    for u in updates {
        let key = ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.clone());
        match u.kind {
            StatusKind::HttpRoute => {
                let mut r = c.http_route(&key).ok_or("route")?.as_ref().clone();
                r.status =
                    Some(serde_json::from_value(u.status.clone()).map_err(|e| e.to_string())?);
                c.apply(r);
            }
            StatusKind::Gateway => {
                let mut g = c
                    .gateways()
                    .find(|(k, _)| **k == key)
                    .ok_or("gateway")?
                    .1
                    .clone();
                g.status =
                    Some(serde_json::from_value(u.status.clone()).map_err(|e| e.to_string())?);
                c.apply(g);
            }
            StatusKind::GatewayClass | StatusKind::FailoverPolicy => {}
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and max of the rounds, in ms.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    format!("{:>9.3} {:>9.3}", ms(median), ms(max))
}

struct Bench {
    world: World,
    cfg: TranslateConfig,
    engine: Incremental,
    snapshots: BTreeMap<String, Snapshot>,
}

impl Bench {
    /// Times one incremental pass after `change` altered the world.
    fn pass(
        &mut self,
        kind: Kind,
        key: ObjectKey,
        change: impl FnOnce(&mut World),
    ) -> Result<(Duration, usize), String> {
        change(&mut self.world);
        let mut changes = Changes::new();
        changes.insert(CLUSTER, kind, key);
        let start = Instant::now();
        let pass = self
            .engine
            .update(&self.world, &self.cfg, &changes, &mut self.snapshots)
            .map_err(|e| e.to_string())?;
        Ok((start.elapsed(), pass.routes))
    }
}

fn run(n: usize) -> Result<(), String> {
    let (mut world, cfg) = world(n)?;
    // Steady state: every status written.
    let first = translate(&world, &cfg);
    echo(&mut world, &first.status)?;
    let mut full = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let out = translate(&world, &cfg);
        full.push(start.elapsed());
        std::hint::black_box(out);
    }
    let mut engine = Incremental::new();
    let start = Instant::now();
    let seeded = engine.full(&world, &cfg);
    let seed = start.elapsed();
    let mut b = Bench {
        world,
        cfg,
        engine,
        snapshots: seeded.snapshots,
    };
    println!("N = {n} routes (+1 cross-namespace)");
    println!(
        "  {:<44} {:>9} {:>9} {:>7}",
        "pass", "median ms", "max ms", "routes"
    );
    println!(
        "  {:<44} {} {:>7}",
        "full translation",
        summary(full),
        n + 1
    );
    println!(
        "  {:<44} {:>9.3} {:>9} {:>7}",
        "full translation seeding incremental",
        ms(seed),
        "",
        n + 1
    );

    let mut rows: Vec<(&str, Vec<Duration>, usize)> = Vec::new();
    let mut times = Vec::new();
    let mut routes = 0;
    for round in 0..ROUNDS {
        let i = (round * 7919) % n;
        let key = ObjectKey::new("apps", format!("route-{i}"));
        let mut r = route(
            "apps",
            &key.name,
            &format!("/v{round}/{i}"),
            None,
            &format!("svc-{i}"),
        );
        r.metadata.generation = Some(2 + round as i64);
        let (t, k) = b.pass(Kind::HttpRoute, key, move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                c.apply(r);
            }
        })?;
        times.push(t);
        routes = k;
    }
    rows.push(("one HTTPRoute changed (spec)", times, routes));

    // The echo of that route's status write.
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let pending: Vec<StatusUpdate> = b
            .engine
            .status()
            .into_iter()
            .filter(|u| u.kind == StatusKind::HttpRoute)
            .take(1)
            .collect();
        let Some(u) = pending.first() else { break };
        let key = ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.clone());
        let (t, k) = b.pass(Kind::HttpRoute, key, |w| {
            let _ = echo(w, &pending);
        })?;
        times.push(t);
        routes = k;
    }
    if !times.is_empty() {
        rows.push(("its status echo (HTTPRoute status only)", times, routes));
    }

    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let i = (round * 7919 + 13) % n;
        let key = ObjectKey::new("apps", format!("svc-{i}"));
        let svc = service(&key.name, &format!("r{round}"));
        let (t, k) = b.pass(Kind::Service, key, move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                c.apply(svc);
            }
        })?;
        times.push(t);
        routes = k;
    }
    rows.push(("one Service changed", times, routes));

    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let key = ObjectKey::new("apps", "from-other");
        let add = round % 2 == 0;
        let (t, k) = b.pass(Kind::ReferenceGrant, key.clone(), move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                if add {
                    c.apply(grant());
                } else {
                    c.delete::<ReferenceGrant>(&key);
                }
            }
        })?;
        times.push(t);
        routes = k;
    }
    rows.push(("one ReferenceGrant added/deleted", times, routes));

    // The Gateway's status echo: listeners unchanged, attachments kept.
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let pending: Vec<StatusUpdate> = b
            .engine
            .status()
            .into_iter()
            .filter(|u| u.kind == StatusKind::Gateway)
            .collect();
        let key = ObjectKey::new("apps", "gw");
        let (t, k) = b.pass(Kind::Gateway, key, |w| {
            let _ = echo(w, &pending);
        })?;
        times.push(t);
        routes = k;
    }
    rows.push(("Gateway status echo (attachedRoutes)", times, routes));

    // A listener change every route sees: every route attaches again.
    let mut times = Vec::new();
    for round in 0..5 {
        let mut g = gateway((round % 2 == 0).then_some("*.example.net"));
        g.metadata.generation = Some(2 + round);
        let key = ObjectKey::new("apps", "gw");
        let (t, k) = b.pass(Kind::Gateway, key, move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                c.apply(g);
            }
        })?;
        times.push(t);
        routes = k;
    }
    rows.push(("Gateway listener hostname changed", times, routes));

    for (what, times, routes) in rows {
        println!("  {what:<44} {} {routes:>7}", summary(times));
    }

    // What the reconcile loop does with a snapshot on top of translation: clone it for the
    // data plane and the published copy, compare it with the published one.
    let snapshot = b.snapshots.get(CLUSTER).cloned().ok_or("snapshot")?;
    let mut clone = Vec::new();
    let mut compare = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let copy = snapshot.clone();
        clone.push(start.elapsed());
        let start = Instant::now();
        let same = copy.gateways == snapshot.gateways;
        compare.push(start.elapsed());
        std::hint::black_box((copy, same));
    }
    println!("  {:<44} {}", "snapshot clone (publish)", summary(clone));
    println!(
        "  {:<44} {}",
        "snapshot comparison (publish)",
        summary(compare)
    );
    let full = translate(&b.world, &b.cfg);
    let same = serde_json::to_string(&full.snapshots).map_err(|e| e.to_string())?
        == serde_json::to_string(&b.snapshots).map_err(|e| e.to_string())?;
    println!("  incremental result equals the full translation: {same}");
    if !same || full.status != b.engine.status() {
        return Err("the incremental result differs from the full translation".into());
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().map_err(|e| format!("route count {s:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1000, 10000]
    } else {
        sizes
    };
    for n in sizes {
        if n == 0 {
            return Err("route count must be at least 1".into());
        }
        run(n)?;
    }
    Ok(())
}
