//! Failover-drill drains on the receiving side of an east-west hop, end to end on loopback.
//!
//! ```text
//! client ─► A (east/us-east/a) Gateway default/gw, backend APP, regionOrder [eu-west, ap-south]
//!             ├─ B's east-west listener (west/eu-west/b-a, eastWest) ─► B ─┬─► EA west/eu-west/b-a
//!             │                                                             └─► EB west/eu-west/b-b
//!             └─ C direct (south/ap-south/c-a)
//! ```
//!
//! B runs in zone `b-a`, so it prefers EA. The drains go into B's snapshot only: in a real drill
//! A's snapshot carries them too, but a zone `b-a` drain there would take B itself out (B's
//! east-west endpoint carries B's zone), and what is tested here is what B does with a request
//! that reaches it anyway (through a B proxy of another zone, in a real cluster).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Echo, TEST_TIMEOUT, WAIT, answered_by, client, eventually, free_port, get_url};
use meridian_model::Snapshot;
use meridian_model::traffic::FailureKind;
use meridian_proxy::ProxyHandle;
use meridian_test_support::eventually_async;
use serde_json::{Value, json};

const APP: &str = "default/app:80";
/// B's failback hysteresis for APP.
const HYSTERESIS: Duration = Duration::from_millis(1500);

fn endpoint(addr: SocketAddr, cluster: &str, region: &str, zone: &str, east_west: bool) -> Value {
    json!({
        "address": addr.ip().to_string(), "port": addr.port(),
        "cluster": cluster, "region": region, "zone": zone, "eastWest": east_west,
    })
}

async fn proxy_at(cluster: &str, region: &str, zone: &str, east_west: bool) -> ProxyHandle {
    common::mesh::proxy(cluster, region, zone, east_west)
        .await
        .0
}

/// B's snapshot: APP from EA (zone b-a) and EB (zone b-b), failback hysteresis, `drains`.
fn receiver_snapshot(generation: u64, ea: &Echo, eb: &Echo, drains: Value) -> Snapshot {
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "eastWest": [{
            "name": APP,
            "endpoints": [
                endpoint(ea.addr, "west", "eu-west", "b-a", false),
                endpoint(eb.addr, "west", "eu-west", "b-b", false),
            ],
            "failover": {"failback": {"hysteresisMs": HYSTERESIS.as_millis() as u64}},
        }],
        "drains": drains,
    }))
    .unwrap()
}

/// A's snapshot: Gateway default/gw on `port`, `/` → APP over B (east-west) and C (direct),
/// eu-west first.
fn sender_snapshot(port: u16, b: &ProxyHandle, c: &Echo) -> Snapshot {
    let eps = json!([
        endpoint(b.east_west_addr().unwrap(), "west", "eu-west", "b-a", true),
        endpoint(c.addr, "south", "ap-south", "c-a", false),
    ]);
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 1,
        "gateways": [{
            "namespace": "default", "name": "gw", "servedByHeader": true,
            "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                "routes": [{"namespace": "default", "name": "r", "rules": [{
                    "backends": [{"name": APP, "target": {
                        "type": "endpoints", "endpoints": eps,
                        "failover": {"regionOrder": ["eu-west", "ap-south"]},
                    }}],
                }]}],
            }],
        }],
    }))
    .unwrap()
}

fn metric(p: &ProxyHandle, prefix: &str) -> u64 {
    p.metrics_text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

struct World {
    ea: Echo,
    eb: Echo,
    c: Echo,
    a: ProxyHandle,
    b: ProxyHandle,
    url: String,
}

async fn world() -> World {
    let (ea, eb, c) = (
        Echo::start("ea").await,
        Echo::start("eb").await,
        Echo::start("c").await,
    );
    let b = proxy_at("west", "eu-west", "b-a", true).await;
    b.apply(receiver_snapshot(1, &ea, &eb, json!([])))
        .await
        .unwrap();
    let a = proxy_at("east", "us-east", "a", false).await;
    let port = free_port();
    a.apply(sender_snapshot(port, &b, &c)).await.unwrap();
    World {
        ea,
        eb,
        c,
        a,
        b,
        url: format!("http://127.0.0.1:{port}/"),
    }
}

#[tokio::test]
async fn a_zone_drain_holds_on_the_east_west_listener_and_lifts_through_failback() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world().await;
        let c = client();
        // Undrained, B serves from its own zone.
        for _ in 0..10 {
            let (status, served_by, body) = get_url(&c, &w.url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "ea");
            assert_eq!(served_by.as_deref(), Some("west/eu-west/b-a"));
        }

        // Zone b-a drained in B's snapshot: B serves from b-b only.
        w.b.apply(receiver_snapshot(
            2,
            &w.ea,
            &w.eb,
            json!([{"drill": "demo/zone-b-a", "zone": "b-a"}]),
        ))
        .await
        .unwrap();
        let ea_before = w.ea.count();
        for _ in 0..30 {
            let (status, served_by, body) = get_url(&c, &w.url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "eb");
            assert_eq!(served_by.as_deref(), Some("west/eu-west/b-b"));
        }
        assert_eq!(w.ea.count(), ea_before, "EA saw nothing while drained");
        // A never left eu-west: only a hedged try (lean/hedge.rs, a GET slower than the hedge
        // delay on a loaded machine) may have reached C, and every answer above came from EB.
        let hedged = metric(&w.a, "meridian_proxy_hedges_total{event=\"sent\"}");
        assert!(
            w.c.count() as u64 <= hedged,
            "C saw {} with {hedged} hedges",
            w.c.count()
        );
        assert!(
            w.b.metrics_text()
                .contains("meridian_proxy_drained_endpoints{drill=\"demo/zone-b-a\"} 1"),
            "{}",
            w.b.metrics_text()
        );
        // No failover on A: B answered every request from an endpoint. A hedge (a GET slower than
        // the hedge delay on a loaded machine, lean/hedge.rs) counts as a retry of its own reason
        // and is not a failover.
        let retries = metric(&w.a, "meridian_proxy_upstream_retries_total");
        let hedges = metric(
            &w.a,
            "meridian_proxy_upstream_retries_total{reason=\"hedge\"}",
        );
        assert_eq!(retries - hedges, 0, "{}", w.a.metrics_text());

        // Lifted: EA stays out for the failback hysteresis, then B's zone preference wins again.
        let lifted_at = Instant::now();
        w.b.apply(receiver_snapshot(3, &w.ea, &w.eb, json!([])))
            .await
            .unwrap();
        let mut held = 0;
        let mut back_at = None;
        for _ in 0..400 {
            let (status, _, body) = get_url(&c, &w.url, &[]).await;
            let done = Instant::now();
            assert_eq!(status, 200, "{body}");
            match answered_by(&body).as_str() {
                "eb" => {
                    assert!(back_at.is_none(), "EB after EA was back");
                    held += 1;
                }
                "ea" => {
                    back_at.get_or_insert(done);
                }
                other => panic!("answered by {other:?}"),
            }
            if back_at.is_some_and(|t| done.duration_since(t) > Duration::from_millis(200)) {
                break;
            }
            // Kept: paces the GETs that measure the hysteresis (a time window under test).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let back_at = back_at.expect("EA came back within 400 GETs");
        assert!(held > 0, "EA was held after the lift");
        assert!(
            back_at.duration_since(lifted_at) >= HYSTERESIS,
            "EA back after {:?}, before the hysteresis",
            back_at.duration_since(lifted_at)
        );
        assert!(
            !w.b.metrics_text()
                .contains("meridian_proxy_drained_endpoints{drill=\"demo/zone-b-a\"} 1")
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_gateway_scoped_drain_holds_only_when_it_names_the_backend() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world().await;
        let c = client();
        // Scoped to a Gateway, no backend named: B cannot tell the Gateway, so it does not
        // apply it (A drains on its side).
        w.b.apply(receiver_snapshot(
            2,
            &w.ea,
            &w.eb,
            json!([{"drill": "demo/gw-only", "zone": "b-a", "gateways": ["default/gw"]}]),
        ))
        .await
        .unwrap();
        for _ in 0..10 {
            let (status, _, body) = get_url(&c, &w.url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "ea");
        }
        // Another backend named: not this one.
        w.b.apply(receiver_snapshot(
            3,
            &w.ea,
            &w.eb,
            json!([{"drill": "demo/other", "zone": "b-a", "gateways": ["default/gw"],
                    "backends": ["default/other:80"]}]),
        ))
        .await
        .unwrap();
        for _ in 0..10 {
            let (status, _, body) = get_url(&c, &w.url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "ea");
        }
        // This backend named: applied whatever the Gateway scope.
        w.b.apply(receiver_snapshot(
            4,
            &w.ea,
            &w.eb,
            json!([{"drill": "demo/app", "zone": "b-a", "gateways": ["default/elsewhere"],
                    "backends": [APP]}]),
        ))
        .await
        .unwrap();
        for _ in 0..10 {
            let (status, _, body) = get_url(&c, &w.url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "eb");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_full_drain_answers_503_and_the_sender_fails_over_without_a_failed_get() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let w = world().await;
        let c = client();
        // Warm up through B.
        for _ in 0..5 {
            let (status, _, body) = get_url(&c, &w.url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "ea");
        }
        w.b.apply(receiver_snapshot(
            2,
            &w.ea,
            &w.eb,
            json!([{"drill": "demo/eu-west", "region": "eu-west"}]),
        ))
        .await
        .unwrap();
        let (ea_before, eb_before) = (w.ea.count(), w.eb.count());

        // B's own answer: 503, a reason, no served-by (so a sender knows it is not an endpoint's).
        let me = common::mesh::proxy_creds(common::mesh::ca(), "east", "a", "east-a");
        let (status, served_by, body) =
            common::mesh::get(w.b.east_west_addr().unwrap(), "west", Some(&me), APP, false)
                .await
                .unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(served_by, None);
        assert!(body.contains("drained"), "{body}");
        let no_endpoint = |p: &ProxyHandle| {
            p.east_west_traffic()
                .unwrap()
                .failed
                .get(&FailureKind::NoEndpoint)
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(no_endpoint(&w.b), 1);

        // Through A: every GET answered, by ap-south.
        let mut failed = Vec::new();
        let n = 200;
        for i in 0..n {
            let (status, served_by, body) = get_url(&c, &w.url, &[]).await;
            if status != 200 {
                failed.push((i, status, body));
                continue;
            }
            assert_eq!(answered_by(&body), "c");
            assert_eq!(served_by.as_deref(), Some("south/ap-south/c-a"));
            // Kept: paces the GETs (a steady stream over the drain, not a burst).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            failed.is_empty(),
            "{} of {n} GETs failed: {failed:?}",
            failed.len()
        );
        assert_eq!(w.c.count(), n);
        assert_eq!((w.ea.count(), w.eb.count()), (ea_before, eb_before));
        // B refused at least once (A then ejected it for APP), every refusal a NoEndpoint.
        let refused = no_endpoint(&w.b) - 1;
        assert!(refused >= 1, "A never asked B");
        assert!(metric(&w.a, "meridian_proxy_endpoint_ejections_total") >= 1);
        let a_traffic = &w.a.traffic()[0].traffic;
        assert!(a_traffic.failed.is_empty(), "{a_traffic:?}");
        assert_eq!(a_traffic.by_region.get("ap-south"), Some(&(n as u64)));

        // Lifted: B serves again once A re-admits it (probes of B's listener pass).
        w.b.apply(receiver_snapshot(3, &w.ea, &w.eb, json!([])))
            .await
            .unwrap();
        let (status, served_by, body) =
            common::mesh::get(w.b.east_west_addr().unwrap(), "west", Some(&me), APP, false)
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(served_by.as_deref(), Some("west/eu-west/b-a"));
        let answered = eventually_async("A to stop sending to C", Duration::from_secs(10), || {
            let (c, url) = (&c, &w.url);
            async move {
                let (status, _, body) = get_url(c, url, &[]).await;
                assert_eq!(status, 200, "{body}");
                let answered = answered_by(&body);
                (answered != "c").then_some(answered)
            }
        })
        .await;
        assert_eq!(answered, "ea", "A went back to B within 10 s");
        eventually("no stray failures", WAIT, || {
            w.a.traffic()[0].traffic.failed.is_empty()
        })
        .await;
    })
    .await
    .unwrap();
}
