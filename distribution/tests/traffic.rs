//! Traffic reports (`POST /v1/traffic`): the real client reporting a fake target's counters to
//! the real server, the server's never-decreasing sums across restarts and departures, bad
//! requests, and the client's behaviour against a scripted fake controller. Loopback, bounded.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_distribution::{
    Client, ClientConfig, DistributionServer, GatewayRef, GatewayTrafficReport, Hello, Refused,
    ServerConfig, Target, TrafficReport,
};
use meridian_model::Snapshot;
use meridian_model::traffic::{FailureKind, GatewayTraffic};
use meridian_test_support::eventually;
use mesh::{Https, Tls};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test exceeded its time bound");
}

async fn server() -> DistributionServer {
    let mut cfg: ServerConfig = mesh::server_config("127.0.0.1:0".parse().unwrap());
    cfg.ping_interval = Duration::from_millis(100);
    DistributionServer::start(cfg).await.unwrap()
}

fn hello(id: &str, cluster: &str) -> Hello {
    Hello {
        proxy_id: id.into(),
        cluster: cluster.into(),
        region: "r1".into(),
        zone: "z1".into(),
        gateways: None,
        address: None,
        east_west: None,
    }
}

fn gw(name: &str) -> GatewayRef {
    GatewayRef {
        namespace: "ns".into(),
        name: name.into(),
    }
}

/// `ok` requests answered in region `east` in 1 ms, `failed` connect failures in 30 ms.
fn counters(ok: u64, failed: u64) -> GatewayTraffic {
    let mut t = GatewayTraffic::default();
    for _ in 0..ok {
        t.record(Some("east"), None, 1_000);
    }
    for _ in 0..failed {
        t.record(None, Some(FailureKind::Connect), 30_000);
    }
    t
}

fn entry(name: &str, traffic: GatewayTraffic) -> GatewayTrafficReport {
    GatewayTrafficReport {
        namespace: "ns".into(),
        name: name.into(),
        traffic,
    }
}

fn sum(parts: &[&GatewayTraffic]) -> GatewayTraffic {
    let mut out = GatewayTraffic::default();
    for p in parts {
        out.merge(p);
    }
    out
}

/// Fails unless every counter of `now` is at least the same counter of `before`.
fn assert_not_below(now: &GatewayTraffic, before: &GatewayTraffic) {
    assert!(now.requests >= before.requests, "{now:?} < {before:?}");
    for (r, n) in &before.by_region {
        assert!(
            now.by_region.get(r).copied().unwrap_or(0) >= *n,
            "region {r}"
        );
    }
    for (k, n) in &before.failed {
        assert!(
            now.failed.get(k).copied().unwrap_or(0) >= *n,
            "failure {k:?}"
        );
    }
    for (i, n) in before.latency.counts.iter().enumerate() {
        assert!(
            now.latency.counts.get(i).copied().unwrap_or(0) >= *n,
            "latency bucket {i}"
        );
    }
}

/// A target that applies anything and reports settable counters.
#[derive(Default)]
struct Counting {
    traffic: Mutex<Vec<GatewayTrafficReport>>,
    calls: AtomicUsize,
}

impl Counting {
    fn set(&self, gateways: Vec<GatewayTrafficReport>) {
        *self.traffic.lock().unwrap() = gateways;
    }
}

impl Target for Counting {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        Ok(snapshot.generation)
    }

    fn traffic(&self) -> Vec<GatewayTrafficReport> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.traffic.lock().unwrap().clone()
    }
}

fn run_client(
    url: &str,
    hello: Hello,
    interval: Duration,
    target: Arc<Counting>,
) -> JoinHandle<()> {
    let identity = mesh::store_for(&hello);
    let mut cfg = ClientConfig::new(url, hello, identity, None);
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.traffic_interval = interval;
    let client = Client::new(cfg).unwrap();
    tokio::spawn(async move {
        let _ = client.run(&*target).await;
    })
}

/// Bound of one wait. The server's sums are polled: reports don't tick `subscribe()`.
const WAIT: Duration = Duration::from_secs(15);

fn metric(srv: &DistributionServer, name: &str, cluster: &str) -> u64 {
    let needle = format!("{name}{{cluster=\"{cluster}\"}} ");
    srv.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_report_and_the_server_sums_proxies_of_a_cluster() {
    bounded(async {
        let srv = server().await;
        let url = format!("https://{}", srv.local_addr());
        let (t1, t2, t3) = (
            Arc::new(Counting::default()),
            Arc::new(Counting::default()),
            Arc::new(Counting::default()),
        );
        t1.set(vec![entry("web", counters(10, 1))]);
        t2.set(vec![
            entry("web", counters(5, 2)),
            entry("api", counters(3, 0)),
        ]);
        t3.set(vec![entry("web", counters(40, 0))]);
        let every = Duration::from_millis(50);
        let tasks = [
            run_client(&url, hello("p1", "east"), every, t1.clone()),
            run_client(&url, hello("p2", "east"), every, t2.clone()),
            run_client(&url, hello("p3", "west"), every, t3.clone()),
        ];

        let want_web = sum(&[&counters(10, 1), &counters(5, 2)]);
        eventually("east web = p1 + p2", WAIT, || {
            srv.traffic("east", &gw("web")).as_ref() == Some(&want_web)
        })
        .await;
        assert_eq!(want_web.requests, 18);
        assert_eq!(want_web.failures(), 3);
        eventually("east api = p2", WAIT, || {
            srv.traffic("east", &gw("api")) == Some(counters(3, 0))
        })
        .await;
        // Other clusters and unreported Gateways stay apart.
        eventually("west web = p3", WAIT, || {
            srv.traffic("west", &gw("web")) == Some(counters(40, 0))
        })
        .await;
        assert_eq!(srv.traffic("east", &gw("nope")), None);
        assert_eq!(srv.traffic("north", &gw("web")), None);

        // Unchanged counters are not sent again.
        let reports = metric(&srv, "meridian_distribution_traffic_reports_total", "east");
        assert!(reports >= 2, "{reports}");
        let calls = t1.calls.load(Ordering::Relaxed);
        eventually(
            "the client to read its target's counters eight more times (400 ms of ticks)",
            WAIT,
            || t1.calls.load(Ordering::Relaxed) >= calls + 8,
        )
        .await;
        assert_eq!(
            metric(&srv, "meridian_distribution_traffic_reports_total", "east"),
            reports,
            "unchanged counters were reported again"
        );

        // New counts arrive on the next tick.
        t1.set(vec![entry("web", counters(12, 1))]);
        let want = sum(&[&counters(12, 1), &counters(5, 2)]);
        eventually("east web after p1 counted more", WAIT, || {
            srv.traffic("east", &gw("web")).as_ref() == Some(&want)
        })
        .await;
        for t in tasks {
            t.abort();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_traffic_interval_sends_nothing() {
    bounded(async {
        let srv = server().await;
        let url = format!("https://{}", srv.local_addr());
        let (quiet, control) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        quiet.set(vec![entry("quiet", counters(4, 0))]);
        control.set(vec![entry("loud", counters(4, 0))]);
        let tasks = [
            run_client(&url, hello("quiet", "east"), Duration::ZERO, quiet.clone()),
            run_client(
                &url,
                hello("control", "east"),
                Duration::from_millis(50),
                control.clone(),
            ),
        ];
        eventually("both streams open", WAIT, || {
            let s = srv.state();
            s.len() == 2 && s.iter().all(|p| p.connected)
        })
        .await;
        // The same setup with an interval does report...
        eventually("the control client's report", WAIT, || {
            srv.traffic("east", &gw("loud")).is_some()
        })
        .await;
        // ...over several more of its ticks...
        let control_calls = control.calls.load(Ordering::Relaxed);
        eventually(
            "six more ticks (300 ms) of the control client",
            WAIT,
            || control.calls.load(Ordering::Relaxed) >= control_calls + 6,
        )
        .await;
        // ...and with zero it never even asks its target.
        assert_eq!(quiet.calls.load(Ordering::Relaxed), 0);
        assert_eq!(srv.traffic("east", &gw("quiet")), None);
        assert!(srv.state().iter().all(|p| p.connected));
        for t in tasks {
            t.abort();
        }
    })
    .await;
}

/// Opens a stream by hand; the proxy stays connected while the response is held.
async fn open(srv: &DistributionServer, hello: &Hello) -> mesh::Resp {
    let resp = Https::proxy(hello)
        .post(
            format!("https://{}/v1/stream", srv.local_addr()),
            serde_json::to_vec(hello).unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    resp
}

/// A report sent as proxy `id` of cluster east.
async fn report(srv: &DistributionServer, id: &str, gateways: Vec<GatewayTrafficReport>) {
    let body = TrafficReport {
        proxy_id: id.into(),
        gateways,
        health: None,
    };
    let r = Https::proxy(&hello(id, "east"))
        .post(
            format!("https://{}/v1/traffic", srv.local_addr()),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let status = r.status();
    assert_eq!(status, 204, "{}", r.text().await);
}

/// Checks the current sum of `web` in east against `want` and against the previous reading.
fn step(srv: &DistributionServer, last: &mut GatewayTraffic, want: GatewayTraffic, what: &str) {
    let now = srv.traffic("east", &gw("web")).unwrap();
    assert_eq!(now, want, "{what}");
    assert_not_below(&now, last);
    *last = now;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sum_never_goes_down_when_proxies_restart_leave_or_move() {
    bounded(async {
        let srv = server().await;
        let _s1 = open(&srv, &hello("p1", "east")).await;
        let s2 = open(&srv, &hello("p2", "east")).await;
        report(&srv, "p1", vec![entry("web", counters(90, 10))]).await;
        report(&srv, "p2", vec![entry("web", counters(50, 0))]).await;
        let mut last = GatewayTraffic::default();
        step(
            &srv,
            &mut last,
            sum(&[&counters(90, 10), &counters(50, 0)]),
            "two proxies",
        );

        // p1 restarts: a new stream, counters from zero. Its old counters stay in the sum.
        let _s1b = open(&srv, &hello("p1", "east")).await;
        report(&srv, "p1", vec![entry("web", counters(7, 1))]).await;
        step(
            &srv,
            &mut last,
            sum(&[&counters(90, 10), &counters(7, 1), &counters(50, 0)]),
            "after p1 restarted",
        );
        // Its next report replaces the new counters only.
        report(&srv, "p1", vec![entry("web", counters(9, 1))]).await;
        step(
            &srv,
            &mut last,
            sum(&[&counters(90, 10), &counters(9, 1), &counters(50, 0)]),
            "p1 counting on",
        );
        // A restart (a new stream) that shows in one counter only (failures went down,
        // requests went up) is a restart too.
        let _s1c = open(&srv, &hello("p1", "east")).await;
        report(&srv, "p1", vec![entry("web", counters(20, 0))]).await;
        let retired_p1 = sum(&[&counters(90, 10), &counters(9, 1)]);
        step(
            &srv,
            &mut last,
            sum(&[&retired_p1, &counters(20, 0), &counters(50, 0)]),
            "p1 restarted with more successes",
        );
        assert_eq!(
            metric(&srv, "meridian_distribution_traffic_restarts_total", "east"),
            2
        );

        // p2 disconnects: its counters stay.
        drop(s2);
        eventually("p2 disconnected", WAIT, || {
            srv.state()
                .iter()
                .any(|p| p.proxy_id == "p2" && !p.connected)
        })
        .await;
        let same = last.clone();
        step(&srv, &mut last, same, "after p2 left");
        // p2 comes back without restarting: counted once, not twice.
        let s2b = open(&srv, &hello("p2", "east")).await;
        report(&srv, "p2", vec![entry("web", counters(60, 0))]).await;
        step(
            &srv,
            &mut last,
            sum(&[&retired_p1, &counters(20, 0), &counters(60, 0)]),
            "p2 back, counting on",
        );

        // p1 stops listing web: what it counted there stays.
        report(&srv, "p1", vec![entry("api", counters(1, 0))]).await;
        let same = last.clone();
        step(&srv, &mut last, same, "p1 dropped web");
        assert_eq!(srv.traffic("east", &gw("api")), Some(counters(1, 0)));

        // p2 moves to cluster west: east keeps its counters, west starts with its report.
        drop(s2b);
        let _s2w = open(&srv, &hello("p2", "west")).await;
        let same = last.clone();
        step(&srv, &mut last, same, "p2 moved to west");
        assert_eq!(srv.traffic("west", &gw("web")), None);
        report(&srv, "p2", vec![entry("web", counters(61, 0))]).await;
        let same = last.clone();
        step(&srv, &mut last, same, "p2 reported to west");
        assert_eq!(srv.traffic("west", &gw("web")), Some(counters(61, 0)));
    })
    .await;
}

#[tokio::test]
async fn bad_traffic_requests_get_clear_errors() {
    let srv = server().await;
    let _s = open(&srv, &hello("p1", "east")).await;
    let url = format!("https://{}/v1/traffic", srv.local_addr());
    let good = json!({"proxyId": "p1", "gateways": [
        {"namespace": "ns", "name": "web", "traffic": {"requests": 1}}]});
    let p1 = Https::proxy(&hello("p1", "east"));
    let post = |body: String| p1.post(&url, body);

    let r = Https::anonymous().post(&url, good.to_string()).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.contains("client certificate"));
    assert_eq!(srv.traffic("east", &gw("web")), None);

    // Another proxy's certificate cannot report for p1.
    let r = Https::proxy(&hello("p2", "east"))
        .post(&url, good.to_string())
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(srv.traffic("east", &gw("web")), None);
    // A proxy without a stream is unknown.
    let mut ghost = good.clone();
    ghost["proxyId"] = json!("ghost");
    let r = Https::proxy(&hello("ghost", "east"))
        .post(&url, ghost.to_string())
        .await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.contains("unknown proxy \"ghost\""));

    let r = post("{not json".into()).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.contains("invalid JSON"));
    let r = post(
        json!({"proxyId": "p1", "gateways": [{"namespace": "ns", "name": "web",
            "traffic": {"requests": -1}}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let twice = json!({"proxyId": "p1", "gateways": [
        {"namespace": "ns", "name": "web", "traffic": {}},
        {"namespace": "ns", "name": "web", "traffic": {}}]});
    let r = post(twice.to_string()).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.contains("ns/web is listed twice"));
    let r = post(json!({"proxyId": ""}).to_string()).await;
    assert_eq!(r.status(), 403, "an empty id is not the certificate's");
    let r = post(
        json!({"proxyId": "p1", "gateways": [{"namespace": "ns", "name": "web",
            "traffic": {"requests": 40, "latency": {"counts": vec![1; 40]}}}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.contains("buckets"));
    // More answers by zone than requests, or zones without bound: refused.
    let r = post(
        json!({"proxyId": "p1", "gateways": [{"namespace": "ns", "name": "web",
            "traffic": {"requests": 2, "byRegion": {"r": 2}, "byZone": {"r/a": 2, "r/b": 1}}}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .contains("requests by zone (3) exceed requests (2)")
    );
    let zones: serde_json::Map<String, serde_json::Value> =
        (0..1025).map(|i| (format!("r/z{i}"), json!(0))).collect();
    let r = post(
        json!({"proxyId": "p1", "gateways": [{"namespace": "ns", "name": "web",
            "traffic": {"requests": 1, "byZone": zones}}]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.contains("1025 zones, at most 1024"));
    // Past 1 MiB: refused without being buffered.
    let r = post("x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(r.status(), 413);
    let r = p1.get(&url).await;
    assert_eq!(r.status(), 405);
    assert_eq!(
        srv.traffic("east", &gw("web")),
        None,
        "a bad report was stored"
    );

    let r = post(good.to_string()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(srv.traffic("east", &gw("web")).unwrap().requests, 1);
    assert_eq!(
        metric(&srv, "meridian_distribution_traffic_reports_total", "east"),
        1
    );
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body).
async fn read_request(tcp: &mut Tls) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = tcp.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Some((head, body));
        }
    }
}

/// How the fake controller answers traffic reports.
#[derive(Clone, Copy)]
enum TrafficAnswer {
    /// 500 to the first report, 204 afterwards.
    FailFirst,
    /// Never answers.
    Hang,
}

enum Seen {
    Stream(Tls),
    Ack(Value),
    Traffic(Value),
}

/// A scripted controller: streams are handed to the test (welcome already written), acks get
/// 204, traffic reports get what `answer` says; everything is reported.
async fn fake(answer: TrafficAnswer) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let (listener, url, acceptor) = mesh::fake_controller_listener().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let reports = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tx, reports, acceptor) = (tx.clone(), reports.clone(), acceptor.clone());
            tokio::spawn(async move {
                let mut tcp = mesh::accept_tls(&acceptor, tcp).await;
                while let Some((head, body)) = read_request(&mut tcp).await {
                    if head.starts_with("POST /v1/stream") {
                        tcp.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                              connection: close\r\n\r\n{\"welcome\":{\"pingIntervalMs\":5000}}\n",
                        )
                        .await
                        .unwrap();
                        let _ = tx.send(Seen::Stream(tcp));
                        return;
                    }
                    let json: Value = serde_json::from_slice(&body).unwrap();
                    if head.starts_with("POST /v1/traffic") {
                        let n = reports.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Seen::Traffic(json));
                        match answer {
                            TrafficAnswer::Hang => {
                                // Hold the connection, answer nothing.
                                let mut sink = [0u8; 64];
                                let _ = tcp.read(&mut sink).await;
                                return;
                            }
                            TrafficAnswer::FailFirst if n == 0 => {
                                tcp.write_all(
                                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops\n",
                                )
                                .await
                                .unwrap();
                            }
                            TrafficAnswer::FailFirst => {
                                tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                                    .await
                                    .unwrap();
                            }
                        }
                        continue;
                    }
                    tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tx.send(Seen::Ack(json));
                }
            });
        }
    });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Option<Seen> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_report_is_retried_and_an_unchanged_one_is_not() {
    bounded(async {
        let (url, mut rx) = fake(TrafficAnswer::FailFirst).await;
        let target = Arc::new(Counting::default());
        target.set(vec![entry("web", counters(3, 1))]);
        let task = run_client(
            &url,
            hello("p1", "east"),
            Duration::from_millis(50),
            target.clone(),
        );
        let wait = Duration::from_secs(10);
        let Some(Seen::Stream(_stream)) = next(&mut rx, wait).await else {
            panic!("expected the stream first");
        };
        // The first report gets 500; the same counters go again on a later tick.
        for attempt in 0..2 {
            match next(&mut rx, wait).await {
                Some(Seen::Traffic(v)) => {
                    assert_eq!(v["proxyId"], "p1", "attempt {attempt}");
                    assert_eq!(v["gateways"][0]["name"], "web");
                    assert_eq!(v["gateways"][0]["traffic"]["requests"], 4);
                }
                _ => panic!("expected traffic report {attempt}"),
            }
        }
        // Accepted and unchanged: nothing more over several ticks.
        assert!(
            next(&mut rx, Duration::from_millis(400)).await.is_none(),
            "an unchanged report was sent again"
        );
        target.set(vec![entry("web", counters(5, 1))]);
        match next(&mut rx, wait).await {
            Some(Seen::Traffic(v)) => assert_eq!(v["gateways"][0]["traffic"]["requests"], 6),
            _ => panic!("expected the changed report"),
        }
        task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_report_does_not_hold_up_the_stream_or_acks() {
    bounded(async {
        let (url, mut rx) = fake(TrafficAnswer::Hang).await;
        let target = Arc::new(Counting::default());
        target.set(vec![entry("web", counters(1, 0))]);
        let task = run_client(&url, hello("p1", "east"), Duration::from_millis(50), target.clone());
        let wait = Duration::from_secs(10);
        let Some(Seen::Stream(mut stream)) = next(&mut rx, wait).await else {
            panic!("expected the stream first");
        };
        let Some(Seen::Traffic(_)) = next(&mut rx, wait).await else {
            panic!("expected a traffic report");
        };
        // The report now waits for an answer that never comes (for its 3 s bound); a snapshot
        // is still applied and acknowledged well before that.
        stream
            .write_all(
                b"{\"snapshot\":{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":5,\"gateways\":[]}}\n",
            )
            .await
            .unwrap();
        let ack = match next(&mut rx, Duration::from_secs(2)).await {
            Some(Seen::Ack(a)) => a,
            Some(Seen::Traffic(_)) => panic!("a second report while the first one hangs"),
            Some(Seen::Stream(_)) => panic!("the stream was reopened"),
            None => panic!("no ack within 2 s while a traffic report hangs"),
        };
        assert_eq!(ack["generation"], 5);
        assert_eq!(ack["result"]["status"], "applied");
        task.abort();
    })
    .await;
}
