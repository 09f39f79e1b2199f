//! Failover drills on the data plane, over real loopback sockets: snapshot drains move traffic
//! off a region and back, stay inside their scope, the `x-meridian-served-by` header names the
//! endpoint that answered, and the per-Gateway traffic counters (what drill guards read) count
//! requests per region and failures per kind.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Echo, TEST_TIMEOUT, WAIT, client, eventually, free_port, get};
use meridian_distribution::Target;
use meridian_model::Snapshot;
use meridian_model::locality::Locality;
use meridian_model::traffic::{FailureKind, GatewayTraffic};
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use meridian_test_support::eventually_async;
use serde_json::{Value, json};
use tokio::task::JoinSet;

const BACKEND: &str = "default/echo:80 (ServiceImport)";

/// An echo backend in a locality; answers `{"name": "<cluster>/<region>/<zone>", ...}`.
struct Located {
    echo: Echo,
    cluster: &'static str,
    region: &'static str,
    zone: &'static str,
}

impl Located {
    async fn start(cluster: &'static str, region: &'static str, zone: &'static str) -> Located {
        Located {
            echo: Echo::start(&format!("{cluster}/{region}/{zone}")).await,
            cluster,
            region,
            zone,
        }
    }

    fn endpoint(&self) -> Value {
        json!({
            "address": self.echo.addr.ip().to_string(), "port": self.echo.addr.port(),
            "cluster": self.cluster, "region": self.region, "zone": self.zone,
        })
    }
}

/// The usual world: two endpoints in us-east (zones a, b), one in us-west.
async fn world() -> Vec<Located> {
    vec![
        Located::start("east", "us-east", "a").await,
        Located::start("east", "us-east", "b").await,
        Located::start("west", "us-west", "a").await,
    ]
}

async fn proxy_in_us_east() -> ProxyHandle {
    ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        admin_auth: AdminAuth::None,
        locality: Locality {
            cluster: "east".into(),
            region: "us-east".into(),
            zone: "a".into(),
        },
        east_west: None,
    })
    .await
    .unwrap()
}

/// A Gateway `default/<name>` with one HTTP listener on `port` whose route sends `/` to
/// `backend` (and `/other` to a second backend with the same endpoints, named `other`).
fn gateway(name: &str, port: u16, served_by: bool, backends: &[Value]) -> Value {
    let mut other = backends[0].clone();
    other["name"] = json!("other");
    json!({
        "namespace": "default", "name": name, "servedByHeader": served_by,
        "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
            "routes": [{"namespace": "default", "name": "r", "rules": [
                {"matches": [{"path": {"type": "pathPrefix", "value": "/other"}}],
                 "backends": [other]},
                {"matches": [{"path": {"type": "pathPrefix", "value": "/"}}],
                 "backends": backends},
            ]}],
        }],
    })
}

fn backend_of(eps: &[Value]) -> Value {
    json!({"name": BACKEND, "target": {"type": "endpoints", "endpoints": eps}})
}

fn snapshot(generation: u64, gateways: Vec<Value>, drains: Value) -> Snapshot {
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "gateways": gateways,
        "drains": drains,
    }))
    .unwrap()
}

fn traffic_of(proxy: &ProxyHandle, name: &str) -> GatewayTraffic {
    proxy
        .traffic()
        .into_iter()
        .find(|r| r.namespace == "default" && r.name == name)
        .map(|r| r.traffic)
        .unwrap_or_default()
}

/// GETs `path` `n` times; returns (status, body name, served-by header) per request.
async fn gets(
    c: &reqwest::Client,
    port: u16,
    path: &str,
    n: usize,
) -> Vec<(u16, String, Option<String>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, headers, body) = get(c, port, path, &[]).await;
        out.push((
            status,
            body["name"].as_str().unwrap_or("").to_string(),
            headers
                .get("x-meridian-served-by")
                .map(|v| v.to_str().unwrap().to_string()),
        ));
    }
    out
}

fn metric_value(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_drain_moves_traffic_to_the_next_tier_without_a_failed_get_and_lifting_brings_it_back()
 {
    let run = async {
        let backends = world().await;
        let eps: Vec<Value> = backends.iter().map(Located::endpoint).collect();
        let proxy = proxy_in_us_east().await;
        let port = free_port();
        let gw = || vec![gateway("web", port, true, &[backend_of(&eps)])];
        let drain = json!([{"drill": "default/east-down", "region": "us-east"}]);
        proxy.apply(snapshot(1, gw(), json!([]))).await.unwrap();

        // Steady background load through every phase: none of it may fail.
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut load = JoinSet::new();
        for _ in 0..2 {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            load.spawn(async move {
                let c = client();
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let ok = matches!(
                        c.get(format!("http://127.0.0.1:{port}/")).send().await,
                        Ok(r) if r.status() == 200
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let c = client();
        let before = gets(&c, port, "/", 30).await;
        assert!(
            before.iter().all(|(s, name, by)| *s == 200
                && name == "east/us-east/a"
                && by.as_deref() == Some(name.as_str())),
            "own zone first, header names it: {before:?}"
        );

        proxy.apply(snapshot(2, gw(), drain.clone())).await.unwrap();
        let during = gets(&c, port, "/", 40).await;
        assert!(
            during.iter().all(|(s, name, by)| *s == 200
                && name == "west/us-west/a"
                && by.as_deref() == Some("west/us-west/a")),
            "the whole region is drained, us-west serves: {during:?}"
        );
        let metrics = proxy.metrics_text();
        assert_eq!(
            metric_value(
                &metrics,
                "meridian_proxy_drained_endpoints{drill=\"default/east-down\"}"
            ),
            Some(2.0),
            "{metrics}"
        );

        // Lifting the drain (no failback policy): traffic is back at once.
        proxy.apply(snapshot(3, gw(), json!([]))).await.unwrap();
        let after = gets(&c, port, "/", 30).await;
        assert!(
            after
                .iter()
                .all(|(s, name, _)| *s == 200 && name == "east/us-east/a"),
            "{after:?}"
        );
        assert!(
            !proxy
                .metrics_text()
                .contains("meridian_proxy_drained_endpoints{"),
            "the gauge is cleared with the drain"
        );
        stop.store(true, Ordering::Relaxed);
        while load.join_next().await.is_some() {}
        let sent = sent.load(Ordering::Relaxed);
        assert!(sent > 20, "too little background load: {sent}");
        assert_eq!(failed.load(Ordering::Relaxed), 0, "failed GETs of {sent}");

        // Every request is counted, by the region of the endpoint that answered.
        let total = 100 + sent as u64;
        eventually("traffic counters to catch up", WAIT, || {
            traffic_of(&proxy, "web").requests == total
        })
        .await;
        let t = traffic_of(&proxy, "web");
        assert_eq!(t.failures(), 0, "{t:?}");
        let west = t.by_region.get("us-west").copied().unwrap_or(0);
        let east = t.by_region.get("us-east").copied().unwrap_or(0);
        assert!(west >= 40, "{t:?}");
        assert!(east >= 60, "{t:?}");
        assert_eq!(east + west, total, "{t:?}");
        assert_eq!(t.latency.total(), total);
        // The report the distribution client sends is the same.
        let reported = Target::traffic(&proxy);
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].name, "web");
        proxy.shutdown().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("drain test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_affects_only_the_gateways_and_backends_it_scopes_and_the_header_follows_its_flag()
{
    let run = async {
        let backends = world().await;
        let eps: Vec<Value> = backends.iter().map(Located::endpoint).collect();
        let proxy = proxy_in_us_east().await;
        let (port_a, port_b) = (free_port(), free_port());
        let gws = || {
            vec![
                gateway("a", port_a, true, &[backend_of(&eps)]),
                gateway("b", port_b, false, &[backend_of(&eps)]),
            ]
        };
        // Drained for Gateway b only, and for backend `other` of Gateway a only.
        let drains = json!([
            {"drill": "default/b-east", "region": "us-east", "gateways": ["default/b"]},
            {"drill": "default/a-other", "region": "us-east", "gateways": ["default/a"],
             "backends": ["other"]},
        ]);
        proxy.apply(snapshot(1, gws(), drains)).await.unwrap();
        let c = client();

        let a = gets(&c, port_a, "/", 20).await;
        assert!(
            a.iter().all(|(s, name, by)| *s == 200
                && name == "east/us-east/a"
                && by.as_deref() == Some("east/us-east/a")),
            "Gateway a's main backend is not drained: {a:?}"
        );
        let a_other = gets(&c, port_a, "/other", 20).await;
        assert!(
            a_other
                .iter()
                .all(|(s, name, _)| *s == 200 && name == "west/us-west/a"),
            "Gateway a's backend `other` is drained: {a_other:?}"
        );
        let b = gets(&c, port_b, "/", 20).await;
        assert!(
            b.iter()
                .all(|(s, name, by)| *s == 200 && name == "west/us-west/a" && by.is_none()),
            "Gateway b is drained and has no header: {b:?}"
        );
        let b_other = gets(&c, port_b, "/other", 10).await;
        assert!(
            b_other
                .iter()
                .all(|(s, name, _)| *s == 200 && name == "west/us-west/a"),
            "{b_other:?}"
        );

        // Proxy-made responses never carry the header, even with the flag on.
        let mut no_route = gateway("a", port_a, true, &[backend_of(&eps)]);
        no_route["listeners"][0]["routes"][0]["rules"] = json!([{
            "matches": [{"path": {"type": "exact", "value": "/only"}}],
            "backends": [backend_of(&eps)],
        }]);
        proxy
            .apply(snapshot(2, vec![no_route], json!([])))
            .await
            .unwrap();
        let (status, headers, _) = get(&c, port_a, "/nothing-here", &[]).await;
        assert_eq!(status, 404);
        assert!(headers.get("x-meridian-served-by").is_none());

        // Gateway b is gone from the snapshot: its counters are dropped; a's keep counting.
        let reports = proxy.traffic();
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        eventually("Gateway a's counters", WAIT, || {
            traffic_of(&proxy, "a").requests == 41
        })
        .await;
        let t = traffic_of(&proxy, "a");
        assert_eq!(t.by_region.get("us-east"), Some(&20), "{t:?}");
        assert_eq!(t.by_region.get("us-west"), Some(&20), "{t:?}");
        assert_eq!(t.failures(), 0, "a 404 is not a failure: {t:?}");
        proxy.shutdown().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("scope test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifted_drain_returns_through_the_failback_hysteresis() {
    let run = async {
        let backends = world().await;
        let eps: Vec<Value> = backends.iter().map(Located::endpoint).collect();
        let proxy = proxy_in_us_east().await;
        let port = free_port();
        let mut backend = backend_of(&eps);
        backend["target"]["failover"] = json!({"failback": {"hysteresisMs": 1500}});
        let gw = || vec![gateway("web", port, true, std::slice::from_ref(&backend))];
        proxy
            .apply(snapshot(
                1,
                gw(),
                json!([{"drill": "default/d", "cluster": "east"}]),
            ))
            .await
            .unwrap();
        let c = client();
        let during = gets(&c, port, "/", 10).await;
        assert!(during.iter().all(|r| r.0 == 200 && r.1 == "west/us-west/a"));
        proxy.apply(snapshot(2, gw(), json!([]))).await.unwrap();
        let lifted = tokio::time::Instant::now();
        // Held out during the hysteresis…
        let held = gets(&c, port, "/", 10).await;
        assert!(
            lifted.elapsed() < Duration::from_millis(1300),
            "too slow to judge"
        );
        assert!(
            held.iter().all(|r| r.0 == 200 && r.1 == "west/us-west/a"),
            "{held:?}"
        );
        // …and back once it is over: the first GET east, then every GET.
        eventually_async(
            "a GET answered by us-east after the hysteresis",
            WAIT,
            || async {
                let one = gets(&c, port, "/", 1).await;
                one[0].0 == 200 && one[0].1 == "east/us-east/a"
            },
        )
        .await;
        let back = gets(&c, port, "/", 10).await;
        assert!(
            back.iter().all(|r| r.0 == 200 && r.1 == "east/us-east/a"),
            "{back:?}"
        );
        proxy.shutdown().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("failback test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_counters_count_failures_by_kind() {
    let run = async {
        let backends = world().await;
        let eps: Vec<Value> = backends.iter().map(Located::endpoint).collect();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = proxy_in_us_east().await;
        let port = free_port();
        let rule = |prefix: &str, backends: Vec<Value>| {
            json!({"matches": [{"path": {"type": "pathPrefix", "value": prefix}}],
                   "backends": backends})
        };
        let mut slow = rule("/slow", vec![backend_of(&eps)]);
        slow["timeouts"] = json!({"backendRequestMs": 200});
        let gw = json!({
            "namespace": "default", "name": "web",
            "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                "routes": [{"namespace": "default", "name": "r", "rules": [
                    rule("/invalid", vec![json!({"name": "gone",
                        "target": {"type": "invalid", "reason": "BackendNotFound"}})]),
                    rule("/refused", vec![json!({"name": "refused", "target": {"type": "endpoints",
                        "endpoints": [{"address": "127.0.0.1", "port": closed.port(),
                                       "region": "us-east", "zone": "a"}]}})]),
                    rule("/drained", vec![json!({"name": "drained", "target": {"type": "endpoints",
                        "endpoints": eps}})]),
                    slow,
                    rule("/", vec![backend_of(&eps)]),
                ]}],
            }],
        });
        // Every endpoint of backend `drained` is drained (both regions).
        let drains = json!([
            {"drill": "default/all", "region": "us-east", "backends": ["drained"]},
            {"drill": "default/all", "region": "us-west", "backends": ["drained"]},
        ]);
        proxy.apply(snapshot(1, vec![gw], drains)).await.unwrap();
        let c = client();
        let status = |path: &'static str, n: usize, want: u16| {
            let c = c.clone();
            async move {
                for _ in 0..n {
                    assert_eq!(get(&c, port, path, &[]).await.0, want, "{path}");
                }
            }
        };
        status("/", 5, 200).await;
        status("/invalid", 2, 500).await;
        status("/refused", 3, 503).await;
        status("/drained", 4, 503).await;
        status("/slow?delay=1000", 1, 504).await;
        for _ in 0..2 {
            let (s, _, _) = get(&c, port, "/", &[("x-echo-status", "502")]).await;
            assert_eq!(s, 502);
        }
        let total = 5 + 2 + 3 + 4 + 1 + 2;
        eventually("traffic counters to catch up", WAIT, || {
            traffic_of(&proxy, "web").requests == total
        })
        .await;
        let t = traffic_of(&proxy, "web");
        let kind = |k: FailureKind| t.failed.get(&k).copied().unwrap_or(0);
        assert_eq!(kind(FailureKind::Other), 2, "{t:?}");
        assert_eq!(kind(FailureKind::Connect), 3, "{t:?}");
        assert_eq!(kind(FailureKind::NoEndpoint), 4, "{t:?}");
        assert_eq!(kind(FailureKind::Timeout), 1, "{t:?}");
        assert_eq!(kind(FailureKind::Upstream5xx), 2, "{t:?}");
        // Answered by an endpoint: the 5 GETs and the 2 upstream 502s, all in the own zone.
        assert_eq!(t.by_region.get("us-east"), Some(&7), "{t:?}");
        assert_eq!(t.by_region.len(), 1, "{t:?}");
        assert_eq!(t.latency.total(), total);
        // The timed-out request waited about 200 ms: the slowest bucket holding it is ≥ 100 ms.
        assert!(t.latency.quantile_us(1.0).unwrap() >= 100_000, "{t:?}");

        let metrics = proxy.metrics_text();
        for (line, want) in [
            (
                "meridian_proxy_gateway_requests_total{gateway=\"default/web\",region=\"us-east\"}",
                7.0,
            ),
            (
                "meridian_proxy_gateway_requests_total{gateway=\"default/web\",region=\"\"}",
                10.0,
            ),
            (
                "meridian_proxy_gateway_failures_total{gateway=\"default/web\",kind=\"connect\"}",
                3.0,
            ),
            (
                "meridian_proxy_gateway_failures_total{gateway=\"default/web\",kind=\"no_endpoint\"}",
                4.0,
            ),
            (
                "meridian_proxy_drained_endpoints{drill=\"default/all\"}",
                3.0,
            ),
        ] {
            assert_eq!(
                metric_value(&metrics, line),
                Some(want),
                "{line}\n{metrics}"
            );
        }
        proxy.shutdown().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("counter test timed out");
}
