//! The wire protocol as a proxy sees it, driven by hand with an HTTPS client presenting the
//! proxy's certificate: what is sent when, filtering by Gateway, stream replacement, acks and bad
//! input. Loopback, bounded.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::time::Duration;

use mesh::{Https, Resp};

use meridian_distribution::{
    DistributionServer, EndpointChange, GatewayRef, Hello, ProgrammedState, ProxyRefusal,
    ServerConfig,
};
use meridian_model::Snapshot;
use serde_json::{Value, json};

async fn server() -> DistributionServer {
    let mut cfg: ServerConfig = mesh::server_config("127.0.0.1:0".parse().unwrap());
    cfg.ping_interval = Duration::from_millis(100);
    DistributionServer::start(cfg).await.unwrap()
}

fn hello(id: &str, gateways: Option<Vec<&str>>) -> Hello {
    Hello {
        proxy_id: id.into(),
        cluster: "east".into(),
        region: "r1".into(),
        zone: "z1".into(),
        gateways: gateways.map(|g| g.into_iter().map(|s| s.parse().unwrap()).collect()),
        address: Some(format!("{id}.example")),
        east_west: None,
    }
}

/// Two Gateways, each with one backend `ns/svc:80`.
fn snap(port: u16) -> Snapshot {
    let gw = |name: &str, listener_port: u16| {
        json!({"namespace": "ns", "name": name, "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": listener_port, "protocol": "HTTP",
            "routes": [{"namespace": "ns", "name": "r", "rules": [{"backends": [
                {"name": "ns/svc:80", "target": {"type": "endpoints", "endpoints": [
                    {"address": "10.0.0.1", "port": port}]}}]}]}]}]})
    };
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 0,
        "gateways": [gw("a", 18080), gw("b", 18081)],
    }))
    .unwrap()
}

/// A stream read line by line.
struct Stream {
    resp: Resp,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(srv: &DistributionServer, hello: &Hello) -> Stream {
        let resp = Https::proxy(hello)
            .post(
                &format!("https://{}/v1/stream", srv.local_addr()),
                serde_json::to_vec(hello).unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        Stream {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next line that is not a ping, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line).unwrap();
                if v == "ping" {
                    continue;
                }
                return Some(v);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("no line within 10 s");
            match chunk {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// An ack sent as the proxy it names (zone `z1`).
async fn ack(srv: &DistributionServer, body: Value) -> u16 {
    let id = body["proxyId"].as_str().unwrap();
    Https::proxy(&hello(id, None))
        .post(
            &format!("https://{}/v1/ack", srv.local_addr()),
            body.to_string(),
        )
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_stream_gets_welcome_full_then_delta_and_acks_drive_programmed() {
    let srv = server().await;
    let g1 = srv.publish("east", snap(1)).unwrap().generation;
    let mut s = Stream::open(&srv, &hello("p1", None)).await;
    assert_eq!(
        s.next().await.unwrap(),
        json!({"welcome": {"pingIntervalMs": 100}})
    );
    // The current snapshot right away.
    let full = s.next().await.unwrap();
    assert_eq!(full["snapshot"]["generation"], g1);
    assert_eq!(full["snapshot"]["gateways"].as_array().unwrap().len(), 2);
    assert_eq!(
        srv.programmed("east", g1),
        ProgrammedState::Pending {
            waiting: vec!["p1".into()]
        }
    );
    let applied =
        |g: u64| json!({"proxyId": "p1", "generation": g, "result": {"status": "applied"}});
    assert_eq!(ack(&srv, applied(g1)).await, 204);
    assert_eq!(srv.programmed("east", g1), ProgrammedState::Applied(g1));

    // Endpoint change: this stream holds g1, so it gets the delta.
    let g2 = srv
        .publish_endpoints(
            "east",
            0,
            vec![EndpointChange {
                backend: "ns/svc:80".into(),
                protocol: Default::default(),
                endpoints: vec![],
            }],
        )
        .unwrap()
        .generation;
    let delta = s.next().await.unwrap();
    assert_eq!(
        delta,
        json!({"endpoints": {"generation": g2, "base": g1, "changes": [
            {"backend": "ns/svc:80", "protocol": "http1", "endpoints": []}]}})
    );
    // A proxy connecting now gets the patched full snapshot instead.
    let mut late = Stream::open(&srv, &hello("p2", None)).await;
    late.next().await.unwrap();
    let full = late.next().await.unwrap();
    assert_eq!(full["snapshot"]["generation"], g2);
    assert_eq!(
        full["snapshot"]["gateways"][0]["listeners"][0]["routes"][0]["rules"][0]["backends"][0]["target"]
            ["endpoints"],
        json!([])
    );

    // g2 needs both proxies.
    assert_eq!(ack(&srv, applied(g2)).await, 204);
    assert_eq!(
        srv.programmed("east", g2),
        ProgrammedState::Pending {
            waiting: vec!["p2".into()]
        }
    );
    let refused = json!({"proxyId": "p2", "generation": g2,
        "result": {"status": "refused", "reason": "no room"}});
    assert_eq!(ack(&srv, refused).await, 204);
    assert_eq!(
        srv.programmed("east", g2),
        ProgrammedState::Refused(ProxyRefusal::new("p2", "no room"))
    );
    // p2 disconnects: only p1 counts again.
    drop(late);
    let mut changes = srv.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while srv.programmed("east", g2) != ProgrammedState::Applied(g2) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let st = srv.state();
    assert_eq!(st.len(), 2);
    assert!(st[0].connected && !st[1].connected, "{st:?}");
}

#[tokio::test]
async fn a_stream_that_missed_the_base_gets_the_full_snapshot() {
    let srv = server().await;
    let g1 = srv.publish("east", snap(1)).unwrap().generation;
    let mut s = Stream::open(&srv, &hello("p1", None)).await;
    s.next().await.unwrap();
    assert_eq!(s.next().await.unwrap()["snapshot"]["generation"], g1);
    // Two versions before the feed task runs (this test's runtime is single-threaded and there
    // is no await between the publishes): the watch keeps only the newest, whose base (g2) this
    // stream never saw, so it must get the full snapshot.
    srv.publish("east", snap(2)).unwrap();
    let g3 = srv.publish("east", snap(3)).unwrap();
    assert_eq!(g3.kind, meridian_distribution::PublishKind::Endpoints);
    let last = s.next().await.unwrap();
    assert_eq!(last["snapshot"]["generation"], g3.generation, "{last}");
    assert_eq!(
        last["snapshot"]["gateways"][0]["listeners"][0]["routes"][0]["rules"][0]["backends"][0]["target"]
            ["endpoints"][0]["port"],
        3
    );
}

#[tokio::test]
async fn gateway_filters_and_replaced_streams() {
    let srv = server().await;
    let g1 = srv.publish("east", snap(1)).unwrap().generation;
    let mut only_a = Stream::open(&srv, &hello("pa", Some(vec!["ns/a"]))).await;
    only_a.next().await.unwrap();
    let full = only_a.next().await.unwrap();
    let gws = full["snapshot"]["gateways"].as_array().unwrap();
    assert_eq!(gws.len(), 1);
    assert_eq!(gws[0]["name"], "a");

    let a: GatewayRef = "ns/a".parse().unwrap();
    let b: GatewayRef = "ns/b".parse().unwrap();
    assert_eq!(
        srv.programmed_gateway("east", &b, g1),
        ProgrammedState::NoProxy
    );
    assert_eq!(srv.addresses("east", &a), vec!["pa.example".to_string()]);
    assert!(srv.addresses("east", &b).is_empty());
    let applied = json!({"proxyId": "pa", "generation": g1, "result": {"status": "applied"}});
    assert_eq!(ack(&srv, applied).await, 204);
    assert_eq!(
        srv.programmed_gateway("east", &a, g1),
        ProgrammedState::Applied(g1)
    );

    // The same proxy id connecting again replaces (and ends) the first stream; its acks reset.
    let mut again = Stream::open(&srv, &hello("pa", None)).await;
    again.next().await.unwrap();
    assert_eq!(
        again.next().await.unwrap()["snapshot"]["gateways"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(only_a.next().await, None, "the replaced stream did not end");
    let st = srv.state();
    assert_eq!(st.len(), 1);
    assert!(st[0].connected);
    assert_eq!(st[0].acked_generation, None);
    assert_eq!(
        srv.programmed_gateway("east", &b, g1),
        ProgrammedState::Pending {
            waiting: vec!["pa".into()]
        }
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let srv = server().await;
    let base = format!("https://{}", srv.local_addr());
    let http = Https::proxy(&hello("p", None));
    let post = |path: &str, body: &'static str| http.post(format!("{base}{path}"), body);
    let r = post("/v1/stream", "{not json").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.contains("invalid JSON"));
    let r = post("/v1/stream", r#"{"proxyId":"","cluster":"east"}"#).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.contains("proxyId"));
    let r = post("/v1/stream", r#"{"proxyId":"p","cluster":""}"#).await;
    assert_eq!(r.status(), 400);
    let r = post(
        "/v1/ack",
        r#"{"proxyId":"p","generation":1,"result":{"status":"maybe"}}"#,
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = http.get(&format!("{base}/v1/stream")).await;
    assert_eq!(r.status(), 405);
    let r = http.get(&format!("{base}/nope")).await;
    assert_eq!(r.status(), 404);
    let r = Https::anonymous().get(&format!("{base}/healthz")).await;
    assert_eq!(r.status(), 200);
    // Oversized bodies are refused, not buffered.
    let big = "x".repeat(200 * 1024);
    let r = http.post(&format!("{base}/v1/stream"), big).await;
    assert_eq!(r.status(), 413);
    assert!(r.text().await.contains("too large"));
    // Deltas need a full snapshot first.
    let err = srv.publish_endpoints("nowhere", 0, vec![]).unwrap_err();
    assert!(
        err.to_string().contains("publish a full snapshot first"),
        "{err}"
    );
    assert!(srv.state().is_empty());
}

#[tokio::test]
async fn east_west_listeners_follow_connected_proxies() {
    let srv = server().await;
    let mut changes = srv.subscribe();
    changes.mark_unchanged();
    let with_listener = |id: &str, zone: &str, ew: Option<&str>| Hello {
        zone: zone.into(),
        east_west: ew.map(Into::into),
        ..hello(id, None)
    };
    let listener = |a: &str, zone: &str| (a.parse::<std::net::SocketAddr>().unwrap(), zone.into());

    let mut p1 = Stream::open(&srv, &with_listener("p1", "z1", Some("127.0.0.1:15443"))).await;
    p1.next().await.unwrap();
    assert!(changes.has_changed().unwrap(), "a connect must tick");
    changes.mark_unchanged();
    assert_eq!(
        srv.east_west("east"),
        vec![listener("127.0.0.1:15443", "z1")]
    );
    assert!(srv.east_west("west").is_empty());

    // A proxy without a listener adds nothing; a second listener is listed in address order.
    let mut p2 = Stream::open(&srv, &with_listener("p2", "z1", None)).await;
    p2.next().await.unwrap();
    let mut p3 = Stream::open(&srv, &with_listener("p3", "z0", Some("[::1]:15443"))).await;
    p3.next().await.unwrap();
    let mut p0 = Stream::open(&srv, &with_listener("p0", "z2", Some("127.0.0.0:9"))).await;
    p0.next().await.unwrap();
    changes.mark_unchanged();
    assert_eq!(
        srv.east_west("east"),
        vec![
            listener("127.0.0.0:9", "z2"),
            listener("127.0.0.1:15443", "z1"),
            listener("[::1]:15443", "z0"),
        ]
    );

    // p1 goes away: the server ticks and stops listing it (bounded wait for it to notice).
    drop(p1);
    tokio::time::timeout(Duration::from_secs(10), async {
        while srv.east_west("east").len() != 2 {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("disconnect of p1 not noticed");
    assert_eq!(
        srv.east_west("east"),
        vec![listener("127.0.0.0:9", "z2"), listener("[::1]:15443", "z0")]
    );
    // The same proxy reconnecting without a listener drops its entry, with a tick.
    changes.mark_unchanged();
    let mut p3b = Stream::open(&srv, &with_listener("p3", "z0", None)).await;
    p3b.next().await.unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(srv.east_west("east"), vec![listener("127.0.0.0:9", "z2")]);
    drop((p2, p3, p0));

    // Listeners other proxies cannot connect to are refused with the reason.
    for (bad, why) in [
        ("nope", "expected IP:PORT"),
        ("10.0.0.1", "expected IP:PORT"),
        ("0.0.0.0:15443", "unspecified"),
        ("10.0.0.1:0", "port 0"),
    ] {
        let h = with_listener("bad", "z", Some(bad));
        let r = Https::proxy(&h)
            .post(
                &format!("https://{}/v1/stream", srv.local_addr()),
                serde_json::to_vec(&h).unwrap(),
            )
            .await;
        assert_eq!(r.status(), 400, "{bad}");
        let text = r.text().await;
        assert!(
            text.contains("eastWest") && text.contains(why),
            "{bad}: {text}"
        );
    }
    assert!(srv.state().iter().all(|p| p.proxy_id != "bad"));
}
