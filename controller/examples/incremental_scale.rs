//! Measures incremental translation against the full one: one cluster, one Gateway (one HTTP
//! listener), N HTTPRoutes each with one Service backend (one EndpointSlice of 3 endpoints),
//! every status already written (steady state), plus one route in another namespace whose
//! backend needs a ReferenceGrant. For each N it prints the time of a full translation and of an
//! incremental pass for one change of each kind (median and max of the rounds; the change to the
//! world itself is not timed; the listener row is the incremental pass re-attaching every
//! route), and what the reconcile loop does
//! with the snapshot on top (clone for publishing, content comparison with the published one).
//!
//! Then the whole per-change path of the controller, by kind: translate (incremental, the
//! endpoint refresh for an EndpointSlice; with `Incremental::set_broad_limit(1000, 60)`, so the
//! listener change runs as a full translation, for comparison with the row above), publish (the reconcile loop's `publish_changed`: share unchanged routes
//! with the published snapshot, hand an `Arc` over) and send (`DistributionServer::publish_since`:
//! endpoint-delta check, route-level diff, encoding, storing), now and as it was before routes
//! were shared ("b." columns: the same translation, then the old publish path — compare the whole
//! snapshot, clone it twice, `publish` without a hint — run on unshared copies).
//!
//! How to run (N defaults to 1000 and 10000; use a release build for representative numbers):
//!
//! ```text
//! cargo run -p meridian-controller --release --example incremental_scale -- 1000 10000
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
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
use meridian_controller::translate::{
    AddressPolicy, Changes, EastWestListeners, Fallback, Incremental, MissingRemote,
    refresh_endpoints_touched,
};
use meridian_controller::{
    CONTROLLER_NAME, ClusterGatewayRef, Kind, ObjectKey, ProgrammedState, StatusKind, StatusUpdate,
    TranslateConfig, World, translate,
};
use meridian_distribution::pki::{Ca, TrustDomain};
use meridian_distribution::{DistributionServer, ServerConfig};
use meridian_model::Snapshot;
use meridian_model::patch::{Since, Touched, share_unchanged};
use meridian_model::snapshot as model;

// The allocator of the `meridian` binary: glibc's malloc adds milliseconds of chunk
// consolidation to whatever runs after a big snapshot was freed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// The EndpointSlice of Service `svc` (the `i`-th): 3 endpoints, the first octet from `base`.
fn slice(svc: &str, i: usize, base: usize) -> EndpointSlice {
    let mut m = meta("apps", &format!("{svc}-abc"));
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        svc.to_string(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(
            (0..3)
                .map(|e| Endpoint {
                    addresses: vec![format!(
                        "10.{}.{}.{}",
                        (base + e) % 250,
                        (i / 250) % 250,
                        i % 250
                    )],
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
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
        c.apply(slice(&svc, i, 100));
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
                r.status = Some(
                    serde_json::from_value(serde_json::Value::clone(&u.status))
                        .map_err(|e| e.to_string())?,
                );
                c.apply(r);
            }
            StatusKind::GrpcRoute => {
                let mut r = c.grpc_route(&key).ok_or("route")?.as_ref().clone();
                r.status = Some(
                    serde_json::from_value(serde_json::Value::clone(&u.status))
                        .map_err(|e| e.to_string())?,
                );
                c.apply(r);
            }
            StatusKind::TlsRoute => {
                let mut r = c.tls_route(&key).ok_or("route")?.as_ref().clone();
                r.status = Some(
                    serde_json::from_value(serde_json::Value::clone(&u.status))
                        .map_err(|e| e.to_string())?,
                );
                c.apply(r);
            }
            StatusKind::Gateway => {
                let mut g = c
                    .gateways()
                    .find(|(k, _)| **k == key)
                    .ok_or("gateway")?
                    .1
                    .clone();
                g.status = Some(
                    serde_json::from_value(serde_json::Value::clone(&u.status))
                        .map_err(|e| e.to_string())?,
                );
                c.apply(g);
            }
            StatusKind::GatewayClass
            | StatusKind::FailoverPolicy
            | StatusKind::BackendTlsPolicy
            | StatusKind::ListenerSet => {}
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
    println!(
        "  {:<44} {}",
        "snapshot clone (routes shared)",
        summary(clone)
    );
    println!(
        "  {:<44} {}",
        "snapshot comparison (routes shared)",
        summary(compare)
    );
    let mut deep_clone = Vec::new();
    let mut deep_compare = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let copy = deep_copy(&snapshot);
        deep_clone.push(start.elapsed());
        let start = Instant::now();
        let same = copy.gateways == snapshot.gateways;
        deep_compare.push(start.elapsed());
        std::hint::black_box((copy, same));
    }
    println!(
        "  {:<44} {}",
        "snapshot clone (every route copied)",
        summary(deep_clone)
    );
    println!(
        "  {:<44} {}",
        "snapshot comparison (nothing shared)",
        summary(deep_compare)
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

/// The same snapshot with no route shared with any other: what every snapshot was before routes
/// were shared (a clone copied every route).
fn deep_copy(s: &Snapshot) -> Snapshot {
    let mut c = s.clone();
    for l in c.gateways.iter_mut().flat_map(|g| &mut g.listeners) {
        for r in &mut l.routes {
            *r = Arc::new(model::Route::clone(r));
        }
    }
    c
}

/// Times of one change through the whole controller path.
#[derive(Default, Clone, Copy)]
struct Times {
    translate: Duration,
    publish: Duration,
    send: Duration,
}

impl Times {
    fn total(&self) -> Duration {
        self.translate + self.publish + self.send
    }
}

/// The reconcile loop's publish path for one cluster, now: share the unchanged routes of the
/// touched Gateways with the published snapshot (which also narrows the hint), hand an `Arc`
/// to the distribution server with the hint. Mirrors `Reconciler::publish_changed`.
struct Publisher {
    server: DistributionServer,
    published: Option<Arc<Snapshot>>,
    /// What the current snapshot touched since the published one.
    touched: Touched,
}

impl Publisher {
    /// `(publish, send, kind)`: the loop's own work, then `DistributionServer::publish_since`
    /// (endpoint-delta check, route-level diff, encoding, storing).
    fn publish(&mut self, current: &mut Snapshot) -> Result<(Duration, Duration, String), String> {
        let touched = std::mem::take(&mut self.touched);
        let start = Instant::now();
        let differ = match &self.published {
            Some(p) => {
                let d = share_unchanged(p, current, &touched);
                if d.is_nothing() && p.drains == current.drains && p.east_west == current.east_west
                {
                    return Ok((start.elapsed(), Duration::ZERO, "unchanged".into()));
                }
                d
            }
            None => Touched::everything(),
        };
        current.generation = self.published.as_ref().map_or(1, |p| p.generation + 1);
        let snapshot = Arc::new(current.clone());
        let publish = start.elapsed();
        let start = Instant::now();
        let since = self.published.as_ref().map(|base| Since {
            base,
            touched: &differ,
        });
        let p = self
            .server
            .publish_since(CLUSTER, Arc::clone(&snapshot), since)
            .map_err(|e| e.to_string())?;
        let send = start.elapsed();
        self.published = Some(snapshot);
        Ok((publish, send, format!("{:?}", p.kind)))
    }
}

/// The publish path as it was: snapshots shared nothing, so the loop compared the whole
/// snapshot with the published one, cloned it twice (for the data plane and the published
/// copy) and the server compared everything again (`publish` without a hint). Run on unshared
/// copies, the current code does exactly that work.
struct Before {
    server: DistributionServer,
    published: Option<Snapshot>,
}

impl Before {
    fn publish(&mut self, current: &Snapshot) -> Result<(Duration, Duration, String), String> {
        // The previous translation output shared nothing with the published copy.
        let current = deep_copy(current);
        let start = Instant::now();
        if self.published.as_ref().is_some_and(|p| {
            p.schema == current.schema
                && p.gateways == current.gateways
                && p.drains == current.drains
                && p.east_west == current.east_west
        }) {
            return Ok((start.elapsed(), Duration::ZERO, "unchanged".into()));
        }
        let mut published = deep_copy(&current);
        published.generation = self.published.as_ref().map_or(1, |p| p.generation + 1);
        let sent = deep_copy(&published);
        let publish = start.elapsed();
        let start = Instant::now();
        let p = self
            .server
            .publish(CLUSTER, sent)
            .map_err(|e| e.to_string())?;
        let send = start.elapsed();
        self.published = Some(published);
        Ok((publish, send, format!("{:?}", p.kind)))
    }
}

/// One change of each kind through translate + publish + send, now and before, per round.
struct EndToEnd {
    world: World,
    cfg: TranslateConfig,
    engine: Incremental,
    snapshots: BTreeMap<String, Snapshot>,
    now: Publisher,
    before: Before,
    /// Route count.
    n: usize,
}

impl EndToEnd {
    /// Applies `change`, translates incrementally (or, for an EndpointSlice, refreshes the
    /// Service's endpoints), then publishes both ways.
    fn change(
        &mut self,
        kind: Kind,
        key: ObjectKey,
        change: impl FnOnce(&mut World),
    ) -> Result<(Times, Times, String), String> {
        change(&mut self.world);
        let start = Instant::now();
        if kind == Kind::EndpointSlice {
            let touched = refresh_endpoints_touched(
                &self.world,
                &mut self.snapshots,
                CLUSTER,
                &key,
                &EastWestListeners::new(),
                &mut MissingRemote::new(),
                &mut AddressPolicy::default(),
            );
            for t in touched.values() {
                self.now.touched.extend(t);
            }
        } else {
            let mut changes = Changes::new();
            changes.insert(CLUSTER, kind, key);
            match self
                .engine
                .update(&self.world, &self.cfg, &changes, &mut self.snapshots)
            {
                Ok(pass) => {
                    for t in pass.touched.values() {
                        self.now.touched.extend(t);
                    }
                }
                Err(Fallback::Broad) => {
                    // The reconcile loop's answer: a full translation.
                    self.snapshots = self.engine.full(&self.world, &self.cfg).snapshots;
                    self.now.touched = Touched::everything();
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let translate = start.elapsed();
        let current = self.snapshots.get_mut(CLUSTER).ok_or("snapshot")?;
        let (b_publish, b_send, _) = self.before.publish(current)?;
        let (publish, send, kind) = self.now.publish(current)?;
        let now = Times {
            translate,
            publish,
            send,
        };
        let before = Times {
            translate,
            publish: b_publish,
            send: b_send,
        };
        Ok((now, before, kind))
    }
}

/// Median of each part over the rounds, in ms: `translate publish send total`.
fn parts(times: &[Times]) -> String {
    let m = |f: fn(&Times) -> Duration| {
        let mut v: Vec<Duration> = times.iter().map(f).collect();
        v.sort();
        ms(v.get(v.len() / 2).copied().unwrap_or_default())
    };
    format!(
        "{:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        m(|t| t.translate),
        m(|t| t.publish),
        m(|t| t.send),
        m(Times::total)
    )
}

/// Translate + publish + send per change kind, now and before.
async fn end_to_end(n: usize) -> Result<(), String> {
    let (mut world, cfg) = world(n)?;
    let first = translate(&world, &cfg);
    echo(&mut world, &first.status)?;
    let ca = Arc::new(
        Ca::generate(&TrustDomain::default(), Duration::from_secs(3600))
            .map_err(|e| e.to_string())?,
    );
    let server = |ca: &Arc<Ca>| {
        let addr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"));
        let ca = Arc::clone(ca);
        async move {
            DistributionServer::start(ServerConfig::new(addr?, ca))
                .await
                .map_err(|e| e.to_string())
        }
    };
    let mut engine = Incremental::new();
    // Listener row: the fallback at work (a full translation for a change most routes see).
    engine.set_broad_limit(1000, 60);
    let snapshots = engine.full(&world, &cfg).snapshots;
    let mut e = EndToEnd {
        world,
        cfg,
        engine,
        snapshots,
        now: Publisher {
            server: server(&ca).await?,
            published: None,
            touched: Touched::everything(),
        },
        before: Before {
            server: server(&ca).await?,
            published: None,
        },
        n,
    };
    // The first publish (whole snapshot) on both.
    let current = e.snapshots.get_mut(CLUSTER).ok_or("snapshot")?;
    e.before.publish(current)?;
    e.now.publish(current)?;

    println!("  per change, translate + publish + send (median ms of {ROUNDS}; listener: 5)");
    println!(
        "  {:<34} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}  sent as",
        "change", "transl.", "publish", "send", "total", "b.transl", "b.publ.", "b.send", "b.total",
    );
    let mut rows: Vec<(&str, Vec<Times>, Vec<Times>, String)> = Vec::new();
    let mut record = |what: &'static str, r: Vec<(Times, Times, String)>| {
        let kind = r.last().map(|x| x.2.clone()).unwrap_or_default();
        rows.push((
            what,
            r.iter().map(|x| x.0).collect(),
            r.iter().map(|x| x.1).collect(),
            kind,
        ));
    };

    let mut r = Vec::new();
    for round in 0..ROUNDS {
        let i = (round * 7919) % e.n;
        let key = ObjectKey::new("apps", format!("route-{i}"));
        let mut route = route(
            "apps",
            &key.name,
            &format!("/e2e{round}/{i}"),
            None,
            &format!("svc-{i}"),
        );
        route.metadata.generation = Some(100 + round as i64);
        r.push(e.change(Kind::HttpRoute, key, move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                c.apply(route);
            }
        })?);
    }
    record("HTTPRoute spec changed", r);

    let mut r = Vec::new();
    for round in 0..ROUNDS {
        let i = (round * 7919 + 29) % e.n;
        let key = ObjectKey::new("apps", format!("svc-{i}"));
        // A second port: the route's backend keeps resolving, its output does not change.
        let mut svc = service(&key.name, &format!("e2e{round}"));
        if let Some(spec) = svc.spec.as_mut() {
            spec.ports.get_or_insert_with(Vec::new).push(ServicePort {
                name: Some("extra".into()),
                port: 81 + round as i32,
                ..Default::default()
            });
        }
        r.push(e.change(Kind::Service, key, move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                c.apply(svc);
            }
        })?);
    }
    record("Service changed (a port added)", r);

    let mut r = Vec::new();
    for round in 0..ROUNDS {
        let i = (round * 7919 + 31) % e.n;
        let svc = format!("svc-{i}");
        let key = ObjectKey::new("apps", svc.as_str());
        let slice = slice(&svc, i, 200 + round);
        r.push(e.change(Kind::EndpointSlice, key, move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                c.apply(slice);
            }
        })?);
    }
    record("EndpointSlice changed (refresh)", r);

    let mut r = Vec::new();
    for round in 0..ROUNDS {
        let key = ObjectKey::new("apps", "from-other");
        let add = round % 2 == 0;
        r.push(e.change(Kind::ReferenceGrant, key.clone(), move |w| {
            if let Some(c) = w.cluster_mut(CLUSTER) {
                if add {
                    c.apply(grant());
                } else {
                    c.delete::<ReferenceGrant>(&key);
                }
            }
        })?);
    }
    record("ReferenceGrant added/deleted", r);

    let mut r = Vec::new();
    for round in 0..5 {
        let mut g = gateway((round % 2 == 0).then_some("*.example.org"));
        g.metadata.generation = Some(100 + round);
        r.push(
            e.change(Kind::Gateway, ObjectKey::new("apps", "gw"), move |w| {
                if let Some(c) = w.cluster_mut(CLUSTER) {
                    c.apply(g);
                }
            })?,
        );
    }
    record("Gateway listener hostname changed", r);

    for (what, now, before, kind) in rows {
        println!("  {what:<34} {} | {}  {kind}", parts(&now), parts(&before));
    }
    // What the proxies hold is what a full translation gives.
    let full = translate(&e.world, &e.cfg);
    let served = e.now.server.latest(CLUSTER).ok_or("nothing published")?;
    let mut want = full.snapshots.get(CLUSTER).cloned().ok_or("snapshot")?;
    want.generation = served.generation;
    if serde_json::to_string(&*served).map_err(|e| e.to_string())?
        != serde_json::to_string(&want).map_err(|e| e.to_string())?
    {
        return Err("the published snapshot differs from the full translation".into());
    }
    e.now.server.shutdown().await;
    e.before.server.shutdown().await;
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    for n in sizes {
        if n == 0 {
            return Err("route count must be at least 1".into());
        }
        run(n)?;
        rt.block_on(end_to_end(n))?;
    }
    Ok(())
}
