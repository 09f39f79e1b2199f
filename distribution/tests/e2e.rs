//! End to end on loopback: an in-process distribution server, real proxies (`ProxyHandle`)
//! following it through the real client, echo backends. Every wait is bounded.
#![allow(clippy::unwrap_used)]

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
mod mesh;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use meridian_distribution::{
    Client, ClientConfig, ClientStatus, DistributionServer, GatewayRef, Hello, ProgrammedState,
    ProxyRefusal, PublishKind, Refused, ServerConfig, Target,
};
use meridian_model::Snapshot;
use meridian_proxy::ProxyHandle;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Bound of a wait for load to reach a backend.
const LOAD_SEEN: Duration = Duration::from_secs(20);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

async fn server() -> DistributionServer {
    server_on("127.0.0.1:0".parse().unwrap()).await
}

async fn server_on(addr: std::net::SocketAddr) -> DistributionServer {
    let mut cfg: ServerConfig = mesh::server_config(addr);
    cfg.ping_interval = Duration::from_millis(200);
    DistributionServer::start(cfg).await.unwrap()
}

fn hello(id: &str, cluster: &str) -> Hello {
    Hello {
        proxy_id: id.to_string(),
        cluster: cluster.to_string(),
        region: "r1".to_string(),
        zone: "z1".to_string(),
        gateways: None,
        address: Some("192.0.2.10".to_string()),
        east_west: None,
    }
}

fn client_for(srv: &DistributionServer, hello: Hello) -> Client {
    let identity = mesh::store_for(&hello);
    client_with(srv, hello, identity)
}

fn client_with(
    srv: &DistributionServer,
    hello: Hello,
    identity: Arc<meridian_distribution::pki::CertStore>,
) -> Client {
    let mut cfg = ClientConfig::new(
        format!("https://{}", srv.local_addr()),
        hello,
        identity,
        None,
    );
    // Quick reconnects keep the tests short; the cap is what the production default uses.
    cfg.backoff_initial = Duration::from_millis(20);
    Client::new(cfg).unwrap()
}

/// A proxy that applies only once the test opens the gate, so "before the ACK" is observable.
struct Gated {
    proxy: Arc<ProxyHandle>,
    gate: Arc<Semaphore>,
    /// Snapshots that reached the gate.
    arrived: Arc<AtomicUsize>,
}

impl Target for Gated {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let _permit = self.gate.acquire().await;
        Target::apply(&*self.proxy, snapshot).await
    }

    fn refuse(&self, reason: &str) {
        Target::refuse(&*self.proxy, reason);
    }

    fn status(&self, status: &ClientStatus) {
        Target::status(&*self.proxy, status);
    }
}

/// Follows `client` with `proxy` in a task; returns the task and the client's status.
fn follow(
    client: Client,
    proxy: Arc<ProxyHandle>,
) -> (JoinHandle<()>, watch::Receiver<ClientStatus>) {
    let status = client.status();
    let task = tokio::spawn(async move {
        let _ = meridian_proxy::follow_controller(&proxy, &client).await;
    });
    (task, status)
}

/// Waits (bounded) until `programmed` returns `want`.
async fn wait_programmed(
    srv: &DistributionServer,
    cluster: &str,
    generation: u64,
    want: impl Fn(&ProgrammedState) -> bool,
) -> ProgrammedState {
    let mut changes = srv.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = srv.programmed(cluster, generation);
        if want(&state) {
            return state;
        }
        assert!(
            tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_ok(),
            "timed out waiting; programmed({cluster}, {generation}) = {state:?}, proxies = {:?}",
            srv.state()
        );
    }
}

async fn wait_connected(srv: &DistributionServer, proxy_id: &str) {
    let mut changes = srv.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !srv
        .state()
        .iter()
        .any(|p| p.proxy_id == proxy_id && p.connected)
    {
        assert!(
            tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_ok(),
            "{proxy_id} never connected: {:?}",
            srv.state()
        );
    }
}

async fn ready(p: &ProxyHandle) -> serde_json::Value {
    let admin = p.admin_addr().unwrap();
    let text = client()
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn stop(task: JoinHandle<()>, proxy: Arc<ProxyHandle>) {
    task.abort();
    let _ = task.await;
    if let Ok(p) = Arc::try_unwrap(proxy) {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_flips_to_applied_only_after_the_ack_and_the_route_is_served() {
    bounded(async {
        let srv = server().await;
        let a = Echo::start("a").await;
        let port = free_port();
        let proxy = Arc::new(proxy().await);
        let gate = Arc::new(Semaphore::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let target = Gated {
            proxy: proxy.clone(),
            gate: gate.clone(),
            arrived: arrived.clone(),
        };
        let follower = client_for(&srv, hello("p1", "east"));
        let task = tokio::spawn(async move {
            let _ = follower.run(&target).await;
        });
        wait_connected(&srv, "p1").await;
        assert_eq!(
            srv.programmed("east", 1),
            ProgrammedState::Pending {
                waiting: vec!["p1".into()]
            }
        );
        assert_eq!(srv.programmed("west", 1), ProgrammedState::NoProxy);

        let published = srv
            .publish(
                "east",
                http_snapshot(0, port, vec![prefix_rule("/", vec![echo_backend(&a, 1)])]),
            )
            .unwrap();
        assert_eq!(published.kind, PublishKind::Full);
        let generation = published.generation;
        // The proxy has the snapshot but has not applied it: not Applied, not served.
        eventually("the snapshot to reach the proxy", WAIT, || {
            arrived.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(
            srv.programmed("east", generation),
            ProgrammedState::Pending {
                waiting: vec!["p1".into()]
            }
        );
        assert_eq!(proxy.generation(), None);
        assert!(
            client()
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .is_err(),
            "served before the proxy applied"
        );
        assert_eq!(
            metric(
                &srv.metrics_text(),
                "meridian_distribution_pending_generations{cluster=\"east\"}"
            ),
            Some(1.0)
        );

        gate.add_permits(1000);
        wait_programmed(&srv, "east", generation, |s| {
            *s == ProgrammedState::Applied(generation)
        })
        .await;
        let (status, _, body) = get(&client(), port, "/x", &[]).await;
        assert_eq!((status, body["name"].as_str()), (200, Some("a")));
        let st = srv.state();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].acked_generation, Some(generation));
        assert_eq!((st[0].region.as_str(), st[0].zone.as_str()), ("r1", "z1"));
        let gw = GatewayRef {
            namespace: "default".into(),
            name: "gw".into(),
        };
        assert_eq!(
            srv.programmed_gateway("east", &gw, generation),
            ProgrammedState::Applied(generation)
        );
        assert_eq!(srv.addresses("east", &gw), vec!["192.0.2.10".to_string()]);

        let m = srv.metrics_text();
        assert_eq!(
            metric(
                &m,
                "meridian_distribution_propagation_seconds_count{cluster=\"east\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &m,
                "meridian_distribution_pending_generations{cluster=\"east\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            metric(
                &m,
                "meridian_distribution_connected_proxies{cluster=\"east\"}"
            ),
            Some(1.0)
        );
        // The proxy says it is connected, on /ready and in its metrics.
        let r = ready(&proxy).await;
        assert_eq!(r["controller"]["connected"], true, "{r}");
        assert_eq!(r["generation"], generation);
        assert_eq!(
            metric(&proxy.metrics_text(), "meridian_proxy_controller_connected"),
            Some(1.0)
        );

        task.abort();
        let _ = task.await;
        // The stream closes with the client: the proxy is no longer counted.
        wait_programmed(&srv, "east", generation, |s| *s == ProgrammedState::NoProxy).await;
        stop(tokio::spawn(async {}), proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_is_reported_and_the_previous_generation_keeps_serving() {
    bounded(async {
        let srv = server().await;
        let a = Echo::start("a").await;
        let port = free_port();
        let proxy = Arc::new(proxy().await);
        let (task, _) = follow(client_for(&srv, hello("p1", "east")), proxy.clone());
        let good = || vec![prefix_rule("/", vec![echo_backend(&a, 1)])];
        let g1 = srv
            .publish("east", http_snapshot(1, port, good()))
            .unwrap()
            .generation;
        wait_programmed(&srv, "east", g1, |s| *s == ProgrammedState::Applied(g1)).await;

        // Another socket holds a port the next generation needs.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let g2 = srv
            .publish(
                "east",
                snapshot(
                    2,
                    vec![
                        http_listener("http", port, None, good()),
                        http_listener("taken", taken_port, None, good()),
                    ],
                ),
            )
            .unwrap()
            .generation;
        assert_eq!(g2, 2);
        let state = wait_programmed(&srv, "east", g2, |s| {
            matches!(s, ProgrammedState::Refused(_))
        })
        .await;
        let ProgrammedState::Refused(ProxyRefusal { proxy_id, reason }) = state else {
            unreachable!()
        };
        assert_eq!(proxy_id, "p1");
        assert!(
            reason.contains("cannot listen") && reason.contains(&taken_port.to_string()),
            "{reason}"
        );
        let st = srv.state();
        let refusal = st[0].last_refusal.as_ref().unwrap();
        assert_eq!(refusal.generation, g2);
        assert_eq!(refusal.reason, reason);
        assert_eq!(st[0].acked_generation, Some(g1));
        // g1 is still applied, and still served.
        assert_eq!(srv.programmed("east", g1), ProgrammedState::Applied(g1));
        assert_eq!(proxy.generation(), Some(g1));
        assert_eq!(get(&client(), port, "/", &[]).await.0, 200);
        assert_eq!(
            metric(
                &srv.metrics_text(),
                "meridian_distribution_nacks_total{cluster=\"east\"}"
            ),
            Some(1.0)
        );

        // Once the port is free the proxy's retry applies g2 without a new publish.
        drop(taken);
        wait_programmed(&srv, "east", g2, |s| *s == ProgrammedState::Applied(g2)).await;
        assert_eq!(proxy.generation(), Some(g2));
        assert_eq!(get(&client(), taken_port, "/", &[]).await.0, 200);
        assert!(srv.state()[0].last_refusal.is_none());
        stop(task, proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_under_load_fails_no_request_and_proxies_resync_after_restart() {
    bounded(async {
        let srv = server().await;
        let addr = srv.local_addr();
        let a = Echo::start("a").await;
        let port = free_port();
        let proxy = Arc::new(proxy().await);
        let (task, mut status) = follow(client_for(&srv, hello("p1", "east")), proxy.clone());
        let snap = || http_snapshot(7, port, vec![prefix_rule("/", vec![echo_backend(&a, 1)])]);
        let g = srv.publish("east", snap()).unwrap().generation;
        assert_eq!(g, 7);
        wait_programmed(&srv, "east", g, |s| *s == ProgrammedState::Applied(g)).await;

        let done = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..3 {
            let done = done.clone();
            workers.push(tokio::spawn(async move {
                let c = client();
                let (mut ok, mut failed) = (0u32, 0u32);
                // Until the test has seen every phase; bounded regardless.
                let end = Instant::now() + Duration::from_secs(40);
                while !done.load(Ordering::Acquire) && Instant::now() < end {
                    match c.get(format!("http://127.0.0.1:{port}/load")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let served = a.count();
        eventually("load through the proxy", LOAD_SEEN, || {
            a.count() >= served + 30
        })
        .await;
        srv.shutdown().await;
        // The proxy notices, says so, and keeps serving.
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected))
            .await
            .unwrap()
            .unwrap();
        let r = ready(&proxy).await;
        assert_eq!(r["ready"], true);
        assert_eq!(r["controller"]["connected"], false, "{r}");
        assert!(r["controller"]["lastError"].is_string(), "{r}");
        assert_eq!(
            metric(&proxy.metrics_text(), "meridian_proxy_controller_connected"),
            Some(0.0)
        );
        // The controller stays away while the load goes on.
        let served = a.count();
        eventually("load while the controller is away", LOAD_SEEN, || {
            a.count() >= served + 100
        })
        .await;
        let applied_before = metric(
            &proxy.metrics_text(),
            "meridian_proxy_snapshot_applied_total",
        );

        // A new controller on the same port publishes the same content: the proxy reconnects
        // and acknowledges it without re-applying.
        let srv = server_on(addr).await;
        let g = srv.publish("east", snap()).unwrap().generation;
        wait_programmed(&srv, "east", g, |s| *s == ProgrammedState::Applied(g)).await;
        assert!(status.borrow().connected);
        assert!(status.borrow().connects >= 2);
        assert_eq!(
            metric(
                &proxy.metrics_text(),
                "meridian_proxy_snapshot_applied_total"
            ),
            applied_before
        );
        let served = a.count();
        eventually("load after the resync", LOAD_SEEN, || {
            a.count() >= served + 30
        })
        .await;
        done.store(true, Ordering::Release);
        let mut total = 0;
        for w in workers {
            let (ok, failed) = w.await.unwrap();
            assert_eq!(failed, 0, "requests failed while the controller was away");
            total += ok;
        }
        assert!(total > 50, "too little load: {total}");

        // New content after the restart is applied and served.
        let b = Echo::start("b").await;
        let g2 = srv
            .publish(
                "east",
                http_snapshot(0, port, vec![prefix_rule("/", vec![echo_backend(&b, 1)])]),
            )
            .unwrap()
            .generation;
        assert_eq!(g2, g + 1);
        wait_programmed(&srv, "east", g2, |s| *s == ProgrammedState::Applied(g2)).await;
        assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "b");
        stop(task, proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_only_changes_travel_as_deltas_and_are_served() {
    bounded(async {
        let srv = server().await;
        let (a, b) = (Echo::start("a").await, Echo::start("b").await);
        let port = free_port();
        let proxy = Arc::new(proxy().await);
        let (task, _) = follow(client_for(&srv, hello("p1", "east")), proxy.clone());
        let with = |e: &Echo| {
            http_snapshot(
                0,
                port,
                vec![prefix_rule(
                    "/",
                    vec![backend("default/svc:80", 1, vec![e.endpoint()])],
                )],
            )
        };
        let g1 = srv.publish("east", with(&a)).unwrap().generation;
        wait_programmed(&srv, "east", g1, |s| *s == ProgrammedState::Applied(g1)).await;
        assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "a");

        // A full snapshot whose only change is an endpoint list is sent as a delta.
        let p2 = srv.publish("east", with(&b)).unwrap();
        assert_eq!(p2.kind, PublishKind::Endpoints);
        wait_programmed(&srv, "east", p2.generation, |s| {
            *s == ProgrammedState::Applied(p2.generation)
        })
        .await;
        assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "b");

        // The explicit cheap path.
        let p3 = srv
            .publish_endpoints(
                "east",
                0,
                vec![meridian_distribution::EndpointChange {
                    backend: "default/svc:80".into(),
                    protocol: Default::default(),
                    endpoints: vec![serde_json::from_value(a.endpoint()).unwrap()],
                }],
            )
            .unwrap();
        assert_eq!(
            (p3.kind, p3.generation),
            (PublishKind::Endpoints, p2.generation + 1)
        );
        wait_programmed(&srv, "east", p3.generation, |s| {
            *s == ProgrammedState::Applied(p3.generation)
        })
        .await;
        assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "a");
        assert_eq!(proxy.generation(), Some(p3.generation));
        assert_eq!(srv.latest("east").unwrap().generation, p3.generation);

        // Same content again: nothing new.
        let p4 = srv.publish("east", with(&a)).unwrap();
        assert_eq!(
            (p4.kind, p4.generation),
            (PublishKind::Unchanged, p3.generation)
        );
        let m = srv.metrics_text();
        assert_eq!(
            metric(
                &m,
                "meridian_distribution_published_total{cluster=\"east\",kind=\"endpoints\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            metric(
                &m,
                "meridian_distribution_published_total{cluster=\"east\",kind=\"full\"}"
            ),
            Some(1.0)
        );
        stop(task, proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_mesh_is_refused_and_the_client_reports_it() {
    bounded(async {
        let srv = server().await;
        let proxy = Arc::new(proxy().await);
        // Trusts our CA (so it would accept the server), presents another mesh's certificate.
        let h = hello("p1", "east");
        let foreign = meridian_distribution::pki::CertStore::issued(
            &mesh::other_ca(),
            &mesh::identity_of(&h),
            Duration::from_secs(600),
        )
        .unwrap();
        let identity = Arc::new(meridian_distribution::pki::CertStore::with_credentials(
            mesh::ca().bundle(),
            (*foreign.credentials().unwrap()).clone(),
        ));
        let (task, mut status) = follow(client_with(&srv, h, identity), proxy.clone());
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.last_error.is_some()),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(!s.connected);
        let err = s.last_error.unwrap();
        assert!(err.contains("controller connection failed"), "{err}");
        let r = ready(&proxy).await;
        assert!(
            r["controller"]["lastError"]
                .as_str()
                .unwrap()
                .contains("connection failed"),
            "{r}"
        );
        assert!(srv.state().is_empty(), "a foreign proxy was registered");
        // The server counts the failed handshake when its side of it ends, which can be after
        // the client has already seen the alert.
        eventually("the server to count the refused handshake", WAIT, || {
            metric(
                &srv.metrics_text(),
                "meridian_distribution_tls_handshake_failures_total{reason=\"bad-certificate\"}",
            )
            .is_some_and(|n| n >= 1.0)
        })
        .await;
        stop(task, proxy).await;
    })
    .await;
}
