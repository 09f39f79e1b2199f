//! Regional failover over real loopback sockets: three "regions" of backends, steady load through
//! a proxy in us-east, every us-east backend stopped mid-run (connections cut, port closed), then
//! restarted. Measures failed requests, time until ≥ 95 % of traffic is on the next tier, and the
//! failback time (health check re-admission), and prints them. Along the way: the per-Gateway
//! health endpoint for global load balancers (admin `/healthz/gateway/NS/NAME`) turns 503 when
//! us-east's endpoints are ejected and 200 after the restart, and the failover metrics
//! (events, time to move, active tier) are scraped from the admin `/metrics`.
//!
//! The run is driven by what the load sees, not by a wall-clock schedule: the kill comes once
//! there is enough steady load, the restart once the next tier has answered enough requests,
//! the end once traffic is back. On a slow machine the phases take longer; the figures (read
//! from the samples' own timestamps) and their bounds are the same.
//!
//! Default behaviour only (no FailoverPolicy): tiers are us-east zone a, us-east zone b, then the
//! other regions alphabetically (eu-west, then us-west).
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meridian_model::locality::Locality;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use common::eventually;
use meridian_test_support::eventually_async;

/// Bound of each phase of the run (steady load, shift, failback).
const PHASE: Duration = Duration::from_secs(20);

/// A backend that can be stopped hard (listener closed, every connection dropped) and restarted
/// on the same port.
struct Backend {
    region: &'static str,
    zone: &'static str,
    addr: SocketAddr,
    tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Backend {
    async fn start(region: &'static str, zone: &'static str) -> Arc<Backend> {
        let b = Arc::new(Backend {
            region,
            zone,
            addr: "127.0.0.1:0".parse().unwrap(),
            tasks: Mutex::new(None),
        });
        let addr = b.clone().serve("127.0.0.1:0".parse().unwrap());
        Arc::new(Backend {
            region,
            zone,
            addr,
            tasks: Mutex::new(b.tasks.lock().unwrap().take()),
        })
    }

    /// Binds `addr` and serves; returns the bound address.
    fn serve(self: Arc<Self>, addr: SocketAddr) -> SocketAddr {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let bound = listener.local_addr().unwrap();
        let name = format!("{}/{}", self.region, self.zone);
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task drops them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        *self.tasks.lock().unwrap() = Some(task);
        bound
    }

    fn stop(&self) {
        if let Some(t) = self.tasks.lock().unwrap().take() {
            t.abort();
        }
    }

    fn restart(self: &Arc<Self>) {
        let got = self.clone().serve(self.addr);
        assert_eq!(got, self.addr);
    }

    fn endpoint(&self) -> serde_json::Value {
        json!({
            "address": self.addr.ip().to_string(), "port": self.addr.port(),
            "cluster": self.region, "region": self.region, "zone": self.zone,
        })
    }
}

/// One request's outcome: start time since the run began, status (0 = transport error), region.
type Sample = (Duration, u16, String);

/// Samples that started in `[from, to)`: how many were answered by `region`, and how many there
/// were.
fn share(samples: &[Sample], from: Duration, to: Duration, region: &str) -> (usize, usize) {
    let w: Vec<&Sample> = samples.iter().filter(|s| s.0 >= from && s.0 < to).collect();
    let hit = w.iter().filter(|s| s.2 == region).count();
    (hit, w.len())
}

/// The first `step` window from `from` on (sliding by `slide`, ending before `until`) with at
/// least one sample and ≥ 95 % of them answered by `region`: where it ends, relative to `from`.
fn first_window_mostly_on(
    samples: &[Sample],
    (from, until): (Duration, Duration),
    (step, slide): (Duration, Duration),
    region: &str,
) -> Option<Duration> {
    let mut t = from;
    while t + step <= until {
        let (hit, n) = share(samples, t, t + step, region);
        if n > 0 && hit * 100 >= n * 95 {
            return Some(t + step - from);
        }
        t += slide;
    }
    None
}

/// How many requests started at or after `from`.
fn started_since(samples: &Mutex<Vec<Sample>>, from: Duration) -> usize {
    samples
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 >= from)
        .count()
}

/// Every phase of the run waits for what it needs (enough answers, the shift, the failback),
/// bounded, instead of a wall-clock schedule; the figures are then computed from the samples'
/// own timestamps as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_region_costs_no_get_and_traffic_fails_back_after_the_health_check() {
    let run = async {
        let mut backends = Vec::new();
        for (r, z) in [
            ("us-east", "a"),
            ("us-east", "b"),
            ("us-west", "a"),
            ("us-west", "b"),
            ("eu-west", "a"),
            ("eu-west", "b"),
        ] {
            backends.push(Backend::start(r, z).await);
        }
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            admin_auth: AdminAuth::None,
            locality: Locality {
                cluster: "east".into(),
                region: "us-east".into(),
                zone: "a".into(),
            },
            east_west: None,
            ..Default::default()
        })
        .await
        .unwrap();
        let admin = proxy.admin_addr().unwrap();
        let port = common::free_port();
        let backend = json!({
            "name": "default/echo:80 (ServiceImport)",
            "weight": 1,
            "target": {"type": "endpoints",
                       "endpoints": backends.iter().map(|b| b.endpoint()).collect::<Vec<_>>()},
        });
        proxy
            .apply(common::http_snapshot(
                1,
                port,
                vec![common::prefix_rule("/", vec![backend])],
            ))
            .await
            .unwrap();

        let start = Instant::now();
        let samples: Arc<Mutex<Vec<Sample>>> = Default::default();
        let done = Arc::new(AtomicBool::new(false));
        let mut clients = JoinSet::new();
        for _ in 0..4 {
            let (samples, done) = (samples.clone(), done.clone());
            clients.spawn(async move {
                let c = common::client();
                // Until the test has seen every phase; bounded by count regardless.
                for _ in 0..200_000 {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    let t = start.elapsed();
                    let (status, body) =
                        match c.get(format!("http://127.0.0.1:{port}/")).send().await {
                            Ok(r) => {
                                let s = r.status().as_u16();
                                (s, r.text().await.unwrap_or_default())
                            }
                            Err(_) => (0, String::new()),
                        };
                    let region = body.split('/').next().unwrap_or("").to_string();
                    samples.lock().unwrap().push((t, status, region));
                }
            });
        }

        // Steady state first: enough answers to judge "local first". The requests in flight at
        // the kill (one per client) started before it but are answered by the next tier, so
        // there must be enough of them for those few not to matter (4 of 1000 < 1 %).
        eventually("load before the kill", PHASE, || {
            started_since(&samples, Duration::ZERO) >= 1000
        })
        .await;
        // The GSLB health endpoint: us-east can serve the Gateway from its own endpoints.
        let (status, gslb) = gateway_health(admin).await;
        assert_eq!(status, 200, "{gslb}");
        assert_eq!(gslb["healthy"], true);
        assert_eq!(gslb["servableLocally"], 1);
        let killed = start.elapsed();
        for b in backends.iter().filter(|b| b.region == "us-east") {
            b.stop();
        }
        // ... and says no once both us-east endpoints are ejected, naming the backend.
        let down = eventually_async("GSLB health endpoint says 503", PHASE, || async {
            let (status, v) = gateway_health(admin).await;
            (status == 503).then_some(v)
        })
        .await;
        assert_eq!(down["healthy"], false);
        assert_eq!(down["region"], "us-east");
        assert_eq!(
            down["withoutLocalEndpoints"],
            json!(["default/echo:80 (ServiceImport)"])
        );
        let gslb_down_after = start.elapsed() - killed;
        // The shift is judged from 1 s after the kill: run until that part has enough answers.
        let judged_from = killed + Duration::from_secs(1);
        eventually("load on the next tier after the kill", PHASE, || {
            start.elapsed() >= judged_from + Duration::from_millis(500)
                && started_since(&samples, judged_from) >= 200
        })
        .await;
        let restarted = start.elapsed();
        for b in backends.iter().filter(|b| b.region == "us-east") {
            b.restart();
        }
        // Failback: until a 200 ms window after the restart is ≥ 95 % back on us-east, sliding
        // by 50 ms (bounded; whether it came back soon enough is asserted below).
        let fb_step = Duration::from_millis(200);
        let fb_slide = Duration::from_millis(50);
        eventually("traffic back on us-east", PHASE, || {
            // Windows that ended a moment ago: requests started in them have been answered.
            let settled = start.elapsed().saturating_sub(Duration::from_millis(100));
            let s = samples.lock().unwrap();
            first_window_mostly_on(&s, (restarted, settled), (fb_step, fb_slide), "us-east")
                .is_some()
        })
        .await;
        // The GSLB endpoint comes back with the endpoints.
        eventually_async("GSLB health endpoint says 200 again", PHASE, || async {
            gateway_health(admin).await.0 == 200
        })
        .await;
        let gslb_up_after = start.elapsed() - restarted;
        done.store(true, Ordering::Release);
        while clients.join_next().await.is_some() {}
        let stopped = start.elapsed();

        let samples = samples.lock().unwrap().clone();
        let total = samples.len();
        let failed: Vec<&Sample> = samples.iter().filter(|s| s.1 != 200).collect();
        // Time to shift: the first 100 ms window after the kill from which every later window
        // (until the restart) has ≥ 95 % on the next tier.
        let step = Duration::from_millis(100);
        let mut windows = Vec::new();
        let mut t = killed;
        while t + step <= restarted {
            let (hit, n) = share(&samples, t, t + step, "eu-west");
            windows.push((t, n == 0 || hit * 100 >= n * 95));
            t += step;
        }
        let shift = windows
            .iter()
            .rposition(|(_, ok)| !ok)
            .map_or(Some(killed), |i| windows.get(i + 1).map(|w| w.0))
            .map(|t| t.saturating_sub(killed));
        let failback = first_window_mostly_on(
            &samples,
            (restarted, stopped),
            (fb_step, fb_slide),
            "us-east",
        );
        let first_back = samples
            .iter()
            .filter(|s| s.0 >= restarted && s.2 == "us-east")
            .map(|s| s.0 - restarted)
            .min();
        let (before_hit, before_n) = share(&samples, Duration::ZERO, killed, "us-east");
        let (after_hit, after_n) = share(&samples, judged_from, restarted, "eu-west");
        // The failover metrics, scraped from the admin listener as Prometheus would.
        let metrics = common::client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let retries: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("retries")
                        || l.contains("ejections")
                        || l.contains("failover")
                        || l.contains("active_tier"))
            })
            .collect();
        println!(
            "failover: {total} requests, {} failed; before kill {before_hit}/{before_n} on us-east; \
             kill+1s..restart {after_hit}/{after_n} on eu-west; time-to-shift (≥95 % on next tier) \
             {shift:?}; failback: first us-east answer {first_back:?} after restart, ≥95 % back \
             after {failback:?}; GSLB endpoint 503 {gslb_down_after:?} after the kill, 200 \
             {gslb_up_after:?} after the restart; {retries:?}",
            failed.len()
        );
        let backend_label = "backend=\"default/echo:80 (ServiceImport)\"";
        let events = |event: &str| {
            common::metric_sum(
                &metrics,
                &format!("meridian_proxy_failover_events_total{{{backend_label},event=\"{event}\""),
            )
        };
        // us-east (both zones) to eu-west, and back.
        assert!(events("failover") >= 1.0, "{retries:?}");
        assert!(events("failback") >= 1.0, "{retries:?}");
        let moved = common::metric_sum(&metrics, "meridian_proxy_failover_seconds_count");
        assert!(moved >= 1.0, "{retries:?}");
        // Each move was observed within a second of the tier's last ejection.
        let within_1s = common::metric_sum(
            &metrics,
            &format!("meridian_proxy_failover_seconds_bucket{{{backend_label},le=\"1\"}}"),
        );
        assert_eq!(within_1s, moved, "{retries:?}");
        // Back on tier 0 (us-east, zone a): the one series of the backend says so.
        let tier: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("meridian_proxy_active_tier{"))
            .collect();
        assert_eq!(
            tier,
            [format!(
                "meridian_proxy_active_tier{{{backend_label},region=\"us-east\"}} 0"
            )],
            "{retries:?}"
        );
        assert!(before_n > 50 && after_n > 50, "too little load to judge");
        assert!(
            failed.is_empty(),
            "failed requests: {:?}",
            &failed[..failed.len().min(10)]
        );
        assert!(before_hit * 100 >= before_n * 99, "local zone/region first");
        assert!(
            after_hit * 100 >= after_n * 95,
            "next tier takes the traffic"
        );
        let shift = shift.expect("traffic never settled on the next tier");
        assert!(shift <= Duration::from_secs(1), "time to shift {shift:?}");
        let failback = failback.expect("traffic never came back to us-east");
        assert!(failback <= Duration::from_secs(4), "failback {failback:?}");
        proxy.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("failover test timed out");
}

/// `GET /healthz/gateway/default/gw` on the admin listener (no token): status and JSON.
async fn gateway_health(admin: SocketAddr) -> (u16, serde_json::Value) {
    let r = common::client()
        .get(format!("http://{admin}/healthz/gateway/default/gw"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

/// GETs `n` times; returns (status, region) pairs.
async fn get_regions(port: u16, n: usize) -> Vec<(u16, String)> {
    let c = common::client();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        out.push((s, body.split('/').next().unwrap_or("").to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_orders_regions_and_a_geo_fence_answers_503_instead_of_leaving() {
    let run = async {
        let east = Backend::start("us-east", "a").await;
        let west = Backend::start("us-west", "a").await;
        let eu = Backend::start("eu-west", "a").await;
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: None,
            admin_auth: AdminAuth::None,
            locality: Locality {
                cluster: "east".into(),
                region: "us-east".into(),
                zone: "a".into(),
            },
            east_west: None,
            ..Default::default()
        })
        .await
        .unwrap();
        let port = common::free_port();
        let eps = vec![east.endpoint(), west.endpoint(), eu.endpoint()];
        let snapshot = |generation: u64, failover: serde_json::Value| {
            let backend = json!({
                "name": "default/echo:80 (ServiceImport)",
                "target": {"type": "endpoints", "endpoints": eps.clone(), "failover": failover},
            });
            common::http_snapshot(
                generation,
                port,
                vec![common::prefix_rule("/", vec![backend])],
            )
        };
        // Without the policy eu-west (alphabetical) would be next; the policy says us-west.
        proxy
            .apply(snapshot(
                1,
                json!({"failover": [{"from": "us-east", "to": ["us-west", "eu-west"]}]}),
            ))
            .await
            .unwrap();
        assert!(
            get_regions(port, 10)
                .await
                .iter()
                .all(|r| r.0 == 200 && r.1 == "us-east")
        );
        east.stop();
        let got = get_regions(port, 40).await;
        assert!(
            got.iter().all(|r| r.0 == 200 && r.1 == "us-west"),
            "{got:?}"
        );
        // Geo-fenced to us-east: with us-east down the answer is 503, never another region.
        proxy
            .apply(snapshot(2, json!({"geoFence": ["us-east"]})))
            .await
            .unwrap();
        let got = get_regions(port, 10).await;
        assert!(got.iter().all(|r| r.0 == 503), "{got:?}");
        proxy.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("policy test timed out");
}
