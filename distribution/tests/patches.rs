//! Route-level snapshot patches on the stream: sent only after their base and only to clients
//! that announce them, answered with the full snapshot when a patch does not fit, and, with real
//! clients, proxies that end up holding exactly the controller's snapshot after a random run of
//! changes (old-style clients beside them get full snapshots only). The random run publishes
//! one cluster as the controller does (snapshots sharing their unchanged routes, with the
//! Gateways each change touched: `publish_since`) and checks every publish against what the
//! whole comparison gives. Loopback, bounded.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::{Https, Resp, metric};

use meridian_distribution::{
    Client, ClientConfig, DistributionServer, Hello, ProgrammedState, PublishKind, Refused,
    ServerConfig, Target,
};
use meridian_model::Snapshot;
use meridian_model::patch::{Since, SnapshotPatch, Touched, diff, diff_since};
use meridian_model::snapshot::{Gateway, Route};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

async fn server() -> DistributionServer {
    let mut cfg: ServerConfig = mesh::server_config("127.0.0.1:0".parse().unwrap());
    cfg.ping_interval = Duration::from_millis(200);
    DistributionServer::start(cfg).await.unwrap()
}

fn hello(id: &str, cluster: &str, gateways: Option<Vec<&str>>) -> Hello {
    Hello {
        proxy_id: id.into(),
        cluster: cluster.into(),
        region: "r1".into(),
        zone: "z1".into(),
        gateways: gateways.map(|g| g.into_iter().map(|s| s.parse().unwrap()).collect()),
        address: None,
        east_west: None,
    }
}

fn route(name: &str, created_at: i64, port: u16) -> Route {
    serde_json::from_value(json!({
        "namespace": "ns", "name": name, "createdAt": created_at,
        "rules": [{"backends": [{"name": format!("ns/{name}:80"), "target": {"type": "endpoints",
            "endpoints": [{"address": "10.0.0.1", "port": port}]}}]}]}))
    .unwrap()
}

fn gateway(name: &str, port: u16, routes: Vec<Route>) -> Gateway {
    serde_json::from_value(json!({"namespace": "ns", "name": name, "listeners": [{
        "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
        "routes": routes}]}))
    .unwrap()
}

fn snapshot(gateways: Vec<Gateway>) -> Snapshot {
    Snapshot {
        gateways,
        ..Snapshot::empty(0)
    }
}

/// Gateways `a` and `b`, `n` routes each.
fn two_gateways(n: usize) -> Snapshot {
    let routes = |p: &str| (0..n).map(|i| route(&format!("{p}{i}"), 0, 80)).collect();
    snapshot(vec![
        gateway("a", 18080, routes("a")),
        gateway("b", 18081, routes("b")),
    ])
}

/// A stream opened by hand, read line by line (pings skipped).
struct Stream {
    resp: Resp,
    buf: Vec<u8>,
}

impl Stream {
    /// Opens a stream for `hello`, announcing `capabilities` (none: a client from before
    /// patches).
    async fn open(srv: &DistributionServer, hello: &Hello, capabilities: &[&str]) -> Stream {
        let mut body = serde_json::to_value(hello).unwrap();
        if !capabilities.is_empty() {
            body["capabilities"] = json!(capabilities);
        }
        let resp = Https::proxy(hello)
            .post(
                format!("https://{}/v1/stream", srv.local_addr()),
                body.to_string(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let mut s = Stream {
            resp,
            buf: Vec::new(),
        };
        assert!(s.next().await.get("welcome").is_some());
        s
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line).unwrap();
                if v != "ping" {
                    return v;
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("no line within 10 s")
                .unwrap()
                .expect("the stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

async fn ack(srv: &DistributionServer, hello: &Hello, body: Value) {
    let resp = Https::proxy(hello)
        .post(
            format!("https://{}/v1/ack", srv.local_addr()),
            body.to_string(),
        )
        .await;
    assert_eq!(resp.status(), 204);
}

fn decode_snapshot(v: &Value) -> Snapshot {
    serde_json::from_value(v["snapshot"].clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn decode_patch(v: &Value) -> SnapshotPatch {
    serde_json::from_value(v["patch"].clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn only(s: &Snapshot, name: &str) -> Snapshot {
    let mut f = s.clone();
    f.gateways.retain(|g| g.name == name);
    f
}

#[tokio::test]
async fn patches_follow_their_base_and_go_only_to_streams_that_announce_them() {
    let srv = server().await;
    let g1 = srv.publish("east", two_gateways(20)).unwrap().generation;
    let (h_new, h_old, h_b) = (
        hello("new", "east", None),
        hello("old", "east", None),
        hello("only-b", "east", Some(vec!["ns/b"])),
    );
    let mut new = Stream::open(&srv, &h_new, &["patch"]).await;
    let mut old = Stream::open(&srv, &h_old, &[]).await;
    let mut just_b = Stream::open(&srv, &h_b, &["patch", "some-future-thing"]).await;
    let base = decode_snapshot(&new.next().await);
    assert_eq!(base.generation, g1);
    assert_eq!(decode_snapshot(&old.next().await).generation, g1);
    let base_b = decode_snapshot(&just_b.next().await);
    assert_eq!(base_b, only(&base, "b"));

    // One route of `b` changes, one is added to `a`.
    let mut next = two_gateways(20);
    Arc::make_mut(&mut next.gateways[1].listeners[0].routes[7]).created_at = 9;
    next.gateways[0].listeners[0]
        .routes
        .insert(3, route("new", 0, 80).into());
    let p = srv.publish("east", next).unwrap();
    assert_eq!(p.kind, PublishKind::Patch);
    let latest = Snapshot::clone(&srv.latest("east").unwrap());

    let line = new.next().await;
    let patch = decode_patch(&line);
    assert_eq!((patch.base, patch.generation), (g1, p.generation));
    assert_eq!(
        line.to_string().matches("\"put\"").count(),
        2,
        "only the two routes travel: {line}"
    );
    let mut got = base.clone();
    patch.apply(&mut got).unwrap();
    assert_eq!(got, latest);

    // The old client gets the whole snapshot.
    assert_eq!(decode_snapshot(&old.next().await), latest);

    // The filtered stream gets the patch of its own view.
    let line = just_b.next().await;
    let patch = decode_patch(&line);
    assert_eq!(line.to_string().matches("\"put\"").count(), 1, "{line}");
    let mut got = base_b;
    patch.apply(&mut got).unwrap();
    assert_eq!(got, only(&latest, "b"));

    let m = srv.metrics_text();
    let count = |name: &str| metric(&m, name).unwrap_or(0.0);
    assert_eq!(
        count(r#"meridian_distribution_published_total{cluster="east",kind="patch"}"#),
        1.0
    );
    assert_eq!(
        count(r#"meridian_distribution_sent_messages_total{cluster="east",kind="patch"}"#),
        2.0
    );
    assert_eq!(
        count(r#"meridian_distribution_sent_messages_total{cluster="east",kind="snapshot"}"#),
        4.0,
        "three on connect, one to the old client"
    );
    let (patch_bytes, snapshot_bytes) = (
        count(r#"meridian_distribution_sent_bytes_total{cluster="east",kind="patch"}"#),
        count(r#"meridian_distribution_sent_bytes_total{cluster="east",kind="snapshot"}"#),
    );
    assert!(
        patch_bytes > 0.0 && patch_bytes * 10.0 < snapshot_bytes,
        "patches {patch_bytes} B, snapshots {snapshot_bytes} B"
    );
}

#[tokio::test]
async fn a_patch_that_does_not_fit_is_answered_with_the_full_snapshot() {
    let srv = server().await;
    let h = hello("p1", "east", None);
    let g1 = srv.publish("east", two_gateways(3)).unwrap().generation;
    let mut s = Stream::open(&srv, &h, &["patch"]).await;
    assert_eq!(decode_snapshot(&s.next().await).generation, g1);

    let mut next = two_gateways(3);
    next.gateways[0].listeners[0].routes.pop();
    let g2 = srv.publish("east", next.clone()).unwrap().generation;
    assert_eq!(decode_patch(&s.next().await).base, g1);

    // A refusal of the content (no resync asked) triggers nothing: the proxy holds the patched
    // snapshot and retries by itself.
    ack(
        &srv,
        &h,
        json!({"proxyId": "p1", "generation": g2,
            "result": {"status": "refused", "reason": "port taken"}}),
    )
    .await;
    // The proxy says the patch does not fit what it holds: the full snapshot follows at once.
    ack(
        &srv,
        &h,
        json!({"proxyId": "p1", "generation": g2, "resync": true,
            "result": {"status": "refused", "reason": "patch does not apply"}}),
    )
    .await;
    let full = decode_snapshot(&s.next().await);
    assert_eq!(full, *srv.latest("east").unwrap());
    assert_eq!(full.generation, g2);
    assert_eq!(
        srv.programmed("east", g2),
        ProgrammedState::Refused(meridian_distribution::ProxyRefusal::new(
            "p1",
            "patch does not apply"
        ))
    );
    assert_eq!(
        metric(
            &srv.metrics_text(),
            r#"meridian_distribution_patch_fallbacks_total{cluster="east"}"#
        ),
        Some(1.0)
    );

    // Patches resume from the full snapshot.
    next.gateways[1].listeners[0].routes.pop();
    let g3 = srv.publish("east", next).unwrap().generation;
    let patch = decode_patch(&s.next().await);
    assert_eq!((patch.base, patch.generation), (g2, g3));
    let mut got = full;
    patch.apply(&mut got).unwrap();
    assert_eq!(got, *srv.latest("east").unwrap());

    // A resync asked after a full snapshot (nothing patched since) sends nothing more.
    let other = snapshot(vec![gateway("x", 18090, vec![route("x", 0, 80)])]);
    let g4 = srv.publish("east", other).unwrap();
    assert_eq!(
        g4.kind,
        PublishKind::Full,
        "a patch keeping nothing travels whole"
    );
    assert_eq!(decode_snapshot(&s.next().await).generation, g4.generation);
    ack(
        &srv,
        &h,
        json!({"proxyId": "p1", "generation": g4.generation, "resync": true,
            "result": {"status": "refused", "reason": "?"}}),
    )
    .await;
    let g5 = srv.publish("east", two_gateways(1)).unwrap().generation;
    assert_eq!(
        decode_snapshot(&s.next().await).generation,
        g5,
        "the next line is the next version"
    );
}

/// Records the last snapshot it applied.
#[derive(Default)]
struct Recorder {
    serving: Mutex<Option<Snapshot>>,
}

impl Target for Recorder {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let g = snapshot.generation;
        *self.serving.lock().unwrap() = Some(snapshot);
        Ok(g)
    }
}

fn start_client(
    srv: &DistributionServer,
    hello: Hello,
    patches: bool,
) -> (Arc<Recorder>, tokio::task::JoinHandle<()>) {
    let identity = mesh::store_for(&hello);
    let mut cfg = ClientConfig::new(
        format!("https://{}", srv.local_addr()),
        hello,
        identity,
        None,
    );
    cfg.patches = patches;
    cfg.traffic_interval = Duration::ZERO;
    let client = Client::new(cfg).unwrap();
    let target = Arc::new(Recorder::default());
    let t = target.clone();
    let task = tokio::spawn(async move {
        let _ = client.run(&*t).await;
    });
    (target, task)
}

/// A small deterministic generator (xorshift64*), so a failure names its step.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// One random change: a route added, changed, removed or moved; endpoints changed; a Gateway
/// added or removed; a listener's port changed. Made in place (shared routes are copied on
/// write), noting the Gateways it touches in `touched`.
fn change(s: &mut Snapshot, rng: &mut Rng, step: usize, touched: &mut Touched) {
    let names = ["a", "b", "c"];
    if s.gateways.is_empty() || rng.below(12) == 0 {
        let name = names[rng.below(names.len())];
        if !s.gateways.iter().any(|g| g.name == name) {
            let at = rng.below(s.gateways.len() + 1);
            s.gateways.insert(
                at,
                gateway(name, 18000 + at as u16, vec![route("x", 0, 80)]),
            );
            touched.gateway("ns", name);
        }
        return;
    }
    let g = rng.below(s.gateways.len());
    touched.gateway("ns", &s.gateways[g].name);
    let routes = &mut s.gateways[g].listeners[0].routes;
    match rng.below(8) {
        0 | 1 => {
            let at = rng.below(routes.len() + 1);
            routes.insert(at, route(&format!("r{step}"), 0, 80).into());
        }
        2 | 3 if !routes.is_empty() => {
            let at = rng.below(routes.len());
            Arc::make_mut(&mut routes[at]).created_at += 1;
        }
        4 if !routes.is_empty() => {
            let at = rng.below(routes.len());
            routes.remove(at);
        }
        5 if !routes.is_empty() => {
            let r = routes.remove(rng.below(routes.len()));
            let at = rng.below(routes.len() + 1);
            routes.insert(at, r);
        }
        6 if !routes.is_empty() => {
            // Endpoints only: travels as an endpoint delta.
            let at = rng.below(routes.len());
            let name = routes[at].name.clone();
            *routes = std::mem::take(routes)
                .into_iter()
                .map(|r| {
                    if r.name == name {
                        let created_at = r.created_at;
                        route(&name, created_at, 81 + (step % 50) as u16).into()
                    } else {
                        r
                    }
                })
                .collect();
        }
        7 if s.gateways.len() > 1 => {
            s.gateways.remove(g);
        }
        _ => s.gateways[g].listeners[0].port += 1,
    }
}

/// Waits until every connected proxy of `cluster` applied `generation`.
async fn applied(srv: &DistributionServer, cluster: &str, generation: u64) {
    let mut changes = srv.subscribe();
    tokio::time::timeout(WAIT, async {
        while srv.programmed(cluster, generation) != ProgrammedState::Applied(generation) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{cluster} generation {generation}: {:?}",
            srv.programmed(cluster, generation)
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_hold_exactly_the_controllers_snapshot_after_random_changes() {
    let srv = server().await;
    let (full, t1) = start_client(&srv, hello("full", "east", None), true);
    let (only_b, t2) = start_client(&srv, hello("only-b", "east", Some(vec!["ns/b"])), true);
    let (old, t3) = start_client(&srv, hello("old", "west", None), false);
    let mut changes = srv.subscribe();
    tokio::time::timeout(WAIT, async {
        while srv.state().iter().filter(|p| p.connected).count() < 3 {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap();

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut world = two_gateways(5);
    let mut hinted = 0;
    for step in 0..60 {
        let mut touched = Touched::nothing();
        if step > 0 {
            for _ in 0..=rng.below(3) {
                change(&mut world, &mut rng, step, &mut touched);
            }
        }
        for cluster in ["east", "west"] {
            let p = if cluster == "east" {
                // As the controller publishes: the hint is only used while the server holds
                // the snapshot it was made from, and it must not change the outcome.
                let base = srv.latest(cluster);
                let next = Arc::new(world.clone());
                if let Some(base) = &base {
                    let mut renumbered = Snapshot::clone(&next);
                    renumbered.generation = base.generation;
                    let whole = diff(base, &renumbered);
                    assert_eq!(
                        diff_since(base, &renumbered, &touched),
                        whole,
                        "step {step}"
                    );
                    assert_eq!(
                        meridian_distribution::protocol::endpoint_delta_since(
                            base, &next, &touched
                        ),
                        meridian_distribution::protocol::endpoint_delta(base, &next),
                        "step {step}"
                    );
                    hinted += 1;
                }
                let since = base.as_ref().map(|base| Since {
                    base,
                    touched: &touched,
                });
                srv.publish_since(cluster, next, since).unwrap()
            } else {
                srv.publish(cluster, world.clone()).unwrap()
            };
            applied(&srv, cluster, p.generation).await;
            let latest = srv.latest(cluster).unwrap();
            if cluster == "east" {
                let got = full.serving.lock().unwrap().clone().unwrap();
                assert_eq!(got, *latest, "step {step}");
                let got = only_b.serving.lock().unwrap().clone().unwrap();
                let want = Snapshot {
                    gateways: latest
                        .gateways
                        .iter()
                        .filter(|g| g.name == "b")
                        .cloned()
                        .collect(),
                    ..Snapshot::empty(latest.generation)
                };
                assert_eq!(got, want, "step {step}");
            } else {
                let got = old.serving.lock().unwrap().clone().unwrap();
                assert_eq!(got, *latest, "step {step}");
            }
        }
    }
    assert!(hinted >= 59);
    let m = srv.metrics_text();
    let count = |cluster: &str, kind: &str| {
        metric(
            &m,
            &format!(
                "meridian_distribution_sent_messages_total{{cluster=\"{cluster}\",kind=\"{kind}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(count("east", "patch") >= 40.0, "{m}");
    assert_eq!(count("west", "patch"), 0.0, "the old client got patches");
    assert!(count("west", "snapshot") >= 40.0);
    assert_eq!(
        metric(
            &m,
            r#"meridian_distribution_patch_fallbacks_total{cluster="east"}"#
        ),
        None,
        "no patch failed to fit"
    );
    for t in [t1, t2, t3] {
        t.abort();
    }
}

#[tokio::test]
async fn a_stream_that_missed_versions_gets_the_patch_from_the_version_it_holds() {
    let srv = server().await;
    let g1 = srv.publish("east", two_gateways(20)).unwrap().generation;
    let (h_new, h_old, h_b) = (
        hello("new", "east", None),
        hello("old", "east", None),
        hello("only-b", "east", Some(vec!["ns/b"])),
    );
    let mut new = Stream::open(&srv, &h_new, &["patch"]).await;
    let mut old = Stream::open(&srv, &h_old, &[]).await;
    let mut just_b = Stream::open(&srv, &h_b, &["patch"]).await;
    let base = decode_snapshot(&new.next().await);
    assert_eq!(base.generation, g1);
    assert_eq!(decode_snapshot(&old.next().await).generation, g1);
    let base_b = decode_snapshot(&just_b.next().await);

    // Three versions published back to back (the feeds cannot run in between on this
    // single-threaded runtime): an endpoint-only change, a route change in `b`, a route added to
    // `a`. Each feed sees only the last one, whose own change is based on the one before.
    let mut next = two_gateways(20);
    next.gateways[0].listeners[0].routes[2] = route("a2", 0, 81).into();
    let g2 = srv.publish("east", next.clone()).unwrap();
    assert_eq!(g2.kind, PublishKind::Endpoints);
    Arc::make_mut(&mut next.gateways[1].listeners[0].routes[7]).created_at = 9;
    assert_eq!(
        srv.publish("east", next.clone()).unwrap().kind,
        PublishKind::Patch
    );
    next.gateways[0].listeners[0]
        .routes
        .insert(3, route("new", 0, 80).into());
    let g4 = srv.publish("east", next).unwrap();
    assert_eq!(g4.kind, PublishKind::Patch);
    let latest = Snapshot::clone(&srv.latest("east").unwrap());

    // One patch from g1 to g4, carrying the three changed routes only.
    let line = new.next().await;
    let patch = decode_patch(&line);
    assert_eq!((patch.base, patch.generation), (g1, g4.generation));
    assert_eq!(line.to_string().matches("\"put\"").count(), 3, "{line}");
    let mut got = base;
    patch.apply(&mut got).unwrap();
    assert_eq!(got, latest);

    // The filtered stream: the patch of its own view, from what it holds.
    let patch = decode_patch(&just_b.next().await);
    assert_eq!((patch.base, patch.generation), (g1, g4.generation));
    let mut got = base_b;
    patch.apply(&mut got).unwrap();
    assert_eq!(got, only(&latest, "b"));

    // A client without patches still gets the snapshot.
    assert_eq!(decode_snapshot(&old.next().await), latest);

    let m = srv.metrics_text();
    assert_eq!(
        metric(
            &m,
            r#"meridian_distribution_sent_messages_total{cluster="east",kind="snapshot"}"#
        ),
        Some(4.0),
        "three on connect, one to the client without patches: {m}"
    );
}

/// Applies slowly (as a proxy compiling a big router does) and counts its applies.
struct Slow {
    serving: Mutex<Option<Snapshot>>,
    applies: Mutex<u32>,
    takes: Duration,
}

impl Target for Slow {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        tokio::time::sleep(self.takes).await;
        let g = snapshot.generation;
        *self.serving.lock().unwrap() = Some(snapshot);
        *self.applies.lock().unwrap() += 1;
        Ok(g)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_slower_than_the_changes_applies_what_arrived_meanwhile_once() {
    let srv = server().await;
    let hello = hello("slow", "east", None);
    let identity = mesh::store_for(&hello);
    let mut cfg = ClientConfig::new(
        format!("https://{}", srv.local_addr()),
        hello,
        identity,
        None,
    );
    cfg.traffic_interval = Duration::ZERO;
    let client = Client::new(cfg).unwrap();
    let target = Arc::new(Slow {
        serving: Mutex::new(None),
        applies: Mutex::new(0),
        takes: Duration::from_millis(300),
    });
    let t = target.clone();
    let task = tokio::spawn(async move {
        let _ = client.run(&*t).await;
    });
    let mut world = two_gateways(50);
    let g = srv.publish("east", world.clone()).unwrap().generation;
    applied(&srv, "east", g).await;
    assert_eq!(*target.applies.lock().unwrap(), 1);

    // Twelve route changes 25 ms apart: ~one apply's time for all of them. Applied one by one
    // they would take twelve applies (3.6 s); the proxy catches up instead.
    let mut last = g;
    for step in 0..12 {
        Arc::make_mut(&mut world.gateways[step % 2].listeners[0].routes[step]).created_at += 1;
        last = srv.publish("east", world.clone()).unwrap().generation;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    applied(&srv, "east", last).await;
    let applies = *target.applies.lock().unwrap() - 1;
    assert!(
        (1..=4).contains(&applies),
        "{applies} applies for 12 changes"
    );
    assert_eq!(
        target.serving.lock().unwrap().as_ref(),
        Some(&*srv.latest("east").unwrap())
    );
    assert_eq!(
        metric(
            &srv.metrics_text(),
            r#"meridian_distribution_patch_fallbacks_total{cluster="east"}"#
        ),
        None,
        "no patch failed to fit"
    );
    task.abort();
}
