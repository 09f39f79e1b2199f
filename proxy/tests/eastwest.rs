//! East-west (multi-network clusters) end to end on loopback: proxy A (us-east) reaches a backend
//! of another network only through the east-west listeners of proxies B1 and B2 (eu-west), which
//! serve it from their own echo endpoints.
//!
//! ```text
//! client ─► A Gateway listener ─ backend default/app:80 ─┬─► B1 east-west ─┐
//!           (endpoints: B1, B2 east_west: true)          └─► B2 east-west ─┴─► echo E1, E2
//! ```
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::mesh;
use common::{Echo, TEST_TIMEOUT, WAIT, answered_by, client, eventually, free_port, get_url};
use meridian_model::Snapshot;
use meridian_proxy::{ApplyError, ProxyHandle};
use serde_json::{Value, json};

const APP: &str = "default/app:80";
const OTHER: &str = "default/other:80";

/// A proxy of the test mesh, with an east-west listener on an ephemeral loopback port.
async fn proxy_at(cluster: &str, region: &str, zone: &str, east_west: bool) -> ProxyHandle {
    common::mesh::proxy(cluster, region, zone, east_west)
        .await
        .0
}

/// An endpoint JSON with a locality.
fn endpoint(addr: SocketAddr, cluster: &str, region: &str, zone: &str, east_west: bool) -> Value {
    json!({
        "address": addr.ip().to_string(), "port": addr.port(),
        "cluster": cluster, "region": region, "zone": zone, "eastWest": east_west,
    })
}

/// The echo endpoints of B's network: E_i in west/eu-west/z<i>.
fn local_endpoints(echoes: &[&Echo]) -> Vec<Value> {
    echoes
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(e.addr, "west", "eu-west", &format!("z{}", i + 1), false))
        .collect()
}

/// A receiving proxy's snapshot: no Gateway, the named east-west backends.
fn receiver_snapshot(generation: u64, backends: &[(&str, Vec<Value>)]) -> Snapshot {
    let east_west: Vec<Value> = backends
        .iter()
        .map(|(name, eps)| json!({"name": name, "endpoints": eps}))
        .collect();
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "eastWest": east_west,
    }))
    .unwrap()
}

/// The east-west endpoint of a remote proxy (B<i> in west/eu-west/<zone>).
fn remote(b: &ProxyHandle, zone: &str) -> Value {
    endpoint(b.east_west_addr().unwrap(), "west", "eu-west", zone, true)
}

/// A's snapshot: Gateway `default/gw` on `port` with `/app` → APP over `app_eps`, `/other` →
/// OTHER over `other_eps`, `/plain` → a plain (same-network) echo.
fn sender_snapshot(
    generation: u64,
    port: u16,
    served_by: bool,
    app_eps: Vec<Value>,
    other_eps: Vec<Value>,
    plain: &Echo,
) -> Snapshot {
    let rule = |prefix: &str, name: &str, eps: Vec<Value>| {
        json!({
            "matches": [{"path": {"type": "pathPrefix", "value": prefix}}],
            "backends": [{"name": name, "target": {"type": "endpoints", "endpoints": eps}}],
        })
    };
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "gateways": [{
            "namespace": "default", "name": "gw", "servedByHeader": served_by,
            "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                "routes": [{"namespace": "default", "name": "r", "rules": [
                    rule("/app", APP, app_eps),
                    rule("/other", OTHER, other_eps),
                    rule("/plain", "default/plain:80", vec![plain.endpoint()]),
                ]}],
            }],
        }],
    }))
    .unwrap()
}

fn saw_backend_header(e: &Echo) -> bool {
    e.seen()
        .iter()
        .any(|s| s.headers.contains_key("x-meridian-backend"))
}

struct World {
    e1: Echo,
    e2: Echo,
    plain: Echo,
    a: ProxyHandle,
    a_port: u16,
    b1: ProxyHandle,
    b2: ProxyHandle,
}

/// B1, B2 serving APP from E1, E2; A sending APP to B1 and B2.
async fn world(served_by: bool) -> World {
    let (e1, e2, plain) = (
        Echo::start("e1").await,
        Echo::start("e2").await,
        Echo::start("plain").await,
    );
    let b1 = proxy_at("west", "eu-west", "a", true).await;
    let b2 = proxy_at("west", "eu-west", "b", true).await;
    for b in [&b1, &b2] {
        b.apply(receiver_snapshot(1, &[(APP, local_endpoints(&[&e1, &e2]))]))
            .await
            .unwrap();
    }
    let a = proxy_at("east", "us-east", "a", false).await;
    let a_port = free_port();
    let app = vec![remote(&b1, "a"), remote(&b2, "b")];
    a.apply(sender_snapshot(1, a_port, served_by, app, vec![], &plain))
        .await
        .unwrap();
    World {
        e1,
        e2,
        plain,
        a,
        a_port,
        b1,
        b2,
    }
}

#[tokio::test]
async fn a_backend_of_another_network_is_served_through_its_proxies() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world(true).await;
        let c = client();
        let url = format!("http://127.0.0.1:{}/app", w.a_port);
        for _ in 0..20 {
            let (status, served_by, body) = get_url(&c, &url, &[]).await;
            assert_eq!(status, 200, "{body}");
            // Served-by names the real endpoint behind the hop, not the remote proxy.
            let expected = match answered_by(&body).as_str() {
                "e1" => "west/eu-west/z1",
                "e2" => "west/eu-west/z2",
                other => panic!("answered by {other:?}: {body}"),
            };
            assert_eq!(served_by.as_deref(), Some(expected));
        }
        assert!(w.e1.count() + w.e2.count() >= 20);
        assert!(!saw_backend_header(&w.e1) && !saw_backend_header(&w.e2));
        // Both remote proxies carried traffic, counted under the east-west pseudo Gateway.
        let b1n = w.b1.east_west_traffic().unwrap().requests;
        let b2n = w.b2.east_west_traffic().unwrap().requests;
        // A hedges a GET that has not answered after its hedge delay (lean/hedge.rs): on a slow
        // machine one of the 20 can reach both remote proxies, each counting it.
        let hedged = hedges_sent(&w.a);
        assert_eq!(b1n + b2n, 20 + hedged, "b1 {b1n}, b2 {b2n}, hedged {hedged}");
        assert!(b1n > 0 && b2n > 0, "b1 {b1n}, b2 {b2n}");
        assert!(w.b1.traffic().is_empty(), "not reported as a Gateway");
        assert!(
            w.b1.metrics_text().contains(&format!(
                "meridian_proxy_gateway_requests_total{{gateway=\"east-west\",region=\"eu-west\"}} {b1n}"
            )),
            "{}",
            w.b1.metrics_text()
        );
        // A counts the region that really answered.
        let a_traffic = &w.a.traffic()[0].traffic;
        assert_eq!(a_traffic.by_region.get("eu-west"), Some(&20));

        // Without served_by_header, A strips the remote proxy's header.
        let app = vec![remote(&w.b1, "a"), remote(&w.b2, "b")];
        w.a.apply(sender_snapshot(2, w.a_port, false, app, vec![], &w.plain))
            .await
            .unwrap();
        for _ in 0..5 {
            let (status, served_by, body) = get_url(&c, &url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(served_by, None);
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn clients_cannot_name_the_backend_of_an_east_west_hop() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world(true).await;
        let c = client();
        // B1 also serves a backend A's route does not lead to.
        let secret = Echo::start("secret").await;
        w.b1.apply(receiver_snapshot(
            2,
            &[
                (APP, local_endpoints(&[&w.e1, &w.e2])),
                ("default/secret:80", local_endpoints(&[&secret])),
            ],
        ))
        .await
        .unwrap();
        let app = format!("http://127.0.0.1:{}/app", w.a_port);
        for _ in 0..20 {
            let (status, _, body) =
                get_url(&c, &app, &[("x-meridian-backend", "default/secret:80")]).await;
            assert_eq!(status, 200, "{body}");
            assert_ne!(answered_by(&body), "secret");
        }
        assert_eq!(secret.count(), 0);
        // Nor does the header reach a backend on A's own network.
        let plain = format!("http://127.0.0.1:{}/plain", w.a_port);
        let (status, _, body) = get_url(&c, &plain, &[("x-meridian-backend", APP)]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "plain");
        assert!(!saw_backend_header(&w.plain));
        assert!(!saw_backend_header(&w.e1) && !saw_backend_header(&w.e2));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_east_west_listener_needs_a_known_backend_and_follows_the_snapshot() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let e1 = Echo::start("e1").await;
        let b = proxy_at("west", "eu-west", "a", true).await;
        let addr = b.east_west_addr().unwrap();
        // A proxy of another cluster of the mesh, as the listener requires.
        let me = mesh::proxy_creds(mesh::ca(), "east", "a", "east-a");
        let get = |backend: &'static str| {
            let me = me.clone();
            async move {
                mesh::get(addr, "west", Some(&me), backend, false)
                    .await
                    .unwrap()
            }
        };
        // Nothing served yet: every name is unknown.
        let (status, _, body) = get(APP).await;
        assert_eq!(status, 404, "{body}");

        b.apply(receiver_snapshot(1, &[(APP, local_endpoints(&[&e1]))]))
            .await
            .unwrap();
        let (status, _, body) = get("").await;
        assert_eq!(status, 400);
        assert!(body.contains("x-meridian-backend is empty"), "{body}");
        // An unknown name: a 404 that names nothing.
        let (status, _, body) = get("default/nope:80").await;
        assert_eq!(status, 404);
        assert_eq!(body, "not found\n");
        let (status, served_by, body) = get(APP).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "e1");
        assert_eq!(served_by.as_deref(), Some("west/eu-west/z1"));
        assert!(!saw_backend_header(&e1), "the header is stripped");
        let seen = e1.seen();
        assert_eq!(seen.last().unwrap().path, "/x");

        // h2 (ALPN) works too.
        let (status, _, body) = mesh::get(addr, "west", Some(&me), APP, true).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "e1");

        let t = b.east_west_traffic().unwrap();
        assert_eq!(t.requests, 5);
        assert_eq!(t.by_region.get("eu-west"), Some(&2));

        // A snapshot whose east-west backend lists an east-west endpoint is refused; the old one
        // keeps serving.
        let looped = endpoint(b.east_west_addr().unwrap(), "west", "eu-west", "a", true);
        let err = b
            .apply(receiver_snapshot(2, &[(APP, vec![looped])]))
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("east-west"), "{err}");
        assert_eq!(b.generation(), Some(1));
        let (status, _, body) = get(APP).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "e1");

        // A snapshot without east-west backends: 404 again.
        b.apply(receiver_snapshot(3, &[])).await.unwrap();
        let (status, _, body) = get(APP).await;
        assert_eq!(status, 404, "{body}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stopping_one_remote_proxy_costs_no_get() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world(true).await;
        let url = format!("http://127.0.0.1:{}/app", w.a_port);
        let c = client();
        // A steady stream of GETs (bounded in count) while B1 goes away.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = tokio::spawn({
            let (c, url, stop) = (c.clone(), url.clone(), stop.clone());
            async move {
                let mut failed = Vec::new();
                let mut sent = 0;
                while sent < 5000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, _, body) = get_url(&c, &url, &[]).await;
                    if status != 200 {
                        failed.push((sent, status, body));
                    }
                    sent += 1;
                    // Kept: paces the load (a steady stream, not a burst).
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (sent, failed)
            }
        });
        eventually("traffic through B1", WAIT, || {
            w.b1.east_west_traffic().unwrap().requests >= 30
        })
        .await;
        assert!(
            w.b2.east_west_traffic().unwrap().requests > 0,
            "both remote proxies carry traffic"
        );
        w.b1.shutdown().await;
        let b2_at_stop = w.b2.east_west_traffic().unwrap().requests;
        eventually("B2 taking over", WAIT, || {
            w.b2.east_west_traffic().unwrap().requests > b2_at_stop + 100
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (sent, failed) = load.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} of {sent} GETs failed: {failed:?}",
            failed.len()
        );
        // Only B1 is out: a GET now goes to B2 with no retry.
        let retries_before = retries(&w.a);
        for _ in 0..20 {
            let (status, _, _) = get_url(&c, &url, &[]).await;
            assert_eq!(status, 200);
        }
        assert_eq!(retries(&w.a), retries_before);
    })
    .await
    .unwrap();
}

/// A's requests that failed for want of an endpoint.
fn no_endpoint_failures(p: &ProxyHandle) -> u64 {
    p.traffic()[0]
        .traffic
        .failed
        .get(&meridian_model::traffic::FailureKind::NoEndpoint)
        .copied()
        .unwrap_or(0)
}

/// Hedged tries A sent (`meridian_proxy_hedges_total{event="sent"}`).
fn hedges_sent(p: &ProxyHandle) -> u64 {
    p.metrics_text()
        .lines()
        .filter(|l| l.starts_with("meridian_proxy_hedges_total{event=\"sent\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sum of A's upstream retries.
fn retries(p: &ProxyHandle) -> u64 {
    p.metrics_text()
        .lines()
        .filter(|l| l.starts_with("meridian_proxy_upstream_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_remote_proxy_without_the_backend_is_ejected_for_that_backend_only() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world(true).await;
        let other = Echo::start("other").await;
        // B1 serves OTHER but (its snapshot being behind, say) not APP.
        w.b1.apply(receiver_snapshot(2, &[(OTHER, local_endpoints(&[&other]))]))
            .await
            .unwrap();
        let app = vec![remote(&w.b1, "a"), remote(&w.b2, "b")];
        w.a.apply(sender_snapshot(
            2,
            w.a_port,
            true,
            app,
            vec![remote(&w.b1, "a")],
            &w.plain,
        ))
        .await
        .unwrap();
        let c = client();
        let app_url = format!("http://127.0.0.1:{}/app", w.a_port);
        let other_url = format!("http://127.0.0.1:{}/other", w.a_port);
        for _ in 0..30 {
            let (status, served_by, body) = get_url(&c, &app_url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert!(served_by.is_some());
            // B1 being out for APP does not take it out for OTHER.
            let (status, _, body) = get_url(&c, &other_url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "other");
        }
        // B1 answered 404 for APP at most a few times (once per ejection) and B2 served the rest.
        let b1 = w.b1.east_west_traffic().unwrap();
        assert!(b1.requests >= 31, "{b1:?}");
        assert!(b1.requests <= 33, "{b1:?}");
        assert_eq!(b1.by_region.get("eu-west"), Some(&30));
        assert_eq!(w.b2.east_west_traffic().unwrap().requests, 30);
        assert_eq!(other.count(), 30);
        let ejections =
            w.a.metrics_text()
                .lines()
                .find(|l| l.starts_with("meridian_proxy_endpoint_ejections_total"))
                .unwrap()
                .to_string();
        assert!(!ejections.ends_with(" 0"), "{ejections}");

        // With nowhere else to go, the client gets a 503 (its route exists), not B2's 404.
        let app = vec![remote(&w.b1, "a"), remote(&w.b2, "b")];
        w.a.apply(sender_snapshot(
            3,
            w.a_port,
            true,
            app,
            vec![remote(&w.b2, "b")],
            &w.plain,
        ))
        .await
        .unwrap();
        let failed_before = no_endpoint_failures(&w.a);
        let (status, served_by, body) = get_url(&c, &other_url, &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(served_by, None);
        assert_eq!(no_endpoint_failures(&w.a), failed_before + 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn http_health_checks_reach_the_backend_behind_the_remote_proxy() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (e1, e2, plain) = (
            Echo::start("e1").await,
            Echo::start("e2").await,
            Echo::start("plain").await,
        );
        // B1 serves APP from E1 only, B2 from E2 only.
        let b1 = proxy_at("west", "eu-west", "a", true).await;
        let b2 = proxy_at("west", "eu-west", "b", true).await;
        b1.apply(receiver_snapshot(1, &[(APP, local_endpoints(&[&e1]))]))
            .await
            .unwrap();
        b2.apply(receiver_snapshot(1, &[(APP, local_endpoints(&[&e2]))]))
            .await
            .unwrap();
        let a = proxy_at("east", "us-east", "a", false).await;
        let port = free_port();
        let app = vec![remote(&b1, "a"), remote(&b2, "b")];
        let mut snapshot = sender_snapshot(1, port, true, app, vec![], &plain);
        let policy: meridian_model::snapshot::FailoverPolicy = serde_json::from_value(json!({
            "healthCheck": {"httpPath": "/hc", "intervalMs": 100, "timeoutMs": 1000},
        }))
        .unwrap();
        snapshot.for_each_backend_mut(|b| {
            if let meridian_model::snapshot::BackendTarget::Endpoints { failover, .. } =
                &mut b.target
                && b.name == APP
            {
                *failover = Some(policy.clone());
            }
        });
        a.apply(snapshot).await.unwrap();
        // A's probes of B1 and B2 name APP, so each reaches that proxy's own endpoint.
        let probed = |e: &Echo| {
            e.seen().iter().any(|s| {
                s.path == "/hc"
                    && s.headers.get("user-agent").map(String::as_str) == Some("meridian-health")
            })
        };
        eventually("probes through both remote proxies", WAIT, || {
            probed(&e1) && probed(&e2)
        })
        .await;
        assert!(!saw_backend_header(&e1) && !saw_backend_header(&e2));

        // E1 not ready any more: B1 answers A's probes for APP with its own 503, A takes B1 out
        // for APP, and it stays out past the minimum ejection time because the probes keep
        // failing.
        let mut gone = local_endpoints(&[&e1]);
        gone[0]["ready"] = json!(false);
        b1.apply(receiver_snapshot(2, &[(APP, gone)]))
            .await
            .unwrap();
        eventually("A ejecting B1", WAIT, || {
            a.metrics_text()
                .lines()
                .any(|l| l == "meridian_proxy_endpoint_ejections_total 1")
        })
        .await;
        // Kept: this waits past the proxy's minimum ejection time (on its own clock), which is
        // the behaviour under test: B1 must stay out after it because the probes keep failing.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let c = client();
        let url = format!("http://127.0.0.1:{port}/app");
        let retries_before = retries(&a);
        for _ in 0..30 {
            let (status, _, body) = get_url(&c, &url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "e2");
        }
        assert_eq!(retries(&a), retries_before, "no GET tried B1");
    })
    .await
    .unwrap();
}
