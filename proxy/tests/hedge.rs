//! Hedged tries on the lean HTTP/1 path (proxy/src/lean/hedge.rs), over loopback sockets: a
//! proxy in us-east/a whose local endpoint is *slow* (alive, answers after [`SLOW`]) and whose
//! next region (eu-west) answers at once.
//!
//! - a GET is hedged after the hedge delay and the fast answer wins (`hedges{won}`);
//! - a PUT with a small body is hedged too, the body sent by both tries;
//! - a POST, with or without a body, is never hedged, nor is a PUT with a body larger than
//!   what a hedge holds (16 KiB): they wait for the slow endpoint;
//! - hedges stop once the proxy's retry budget is spent (20 % of the window's requests plus a
//!   floor of 30): of many concurrent GETs, the ones beyond the budget wait for the slow one.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/otlp.rs"]
mod otlp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meridian_model::locality::Locality;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long the slow endpoint takes to answer.
const SLOW: Duration = Duration::from_millis(700);

/// A backend answering its `region/zone` after `delay`; counts the requests it received.
struct Backend {
    addr: SocketAddr,
    region: &'static str,
    received: Arc<AtomicUsize>,
    /// Request body bytes received, over all requests.
    body_bytes: Arc<AtomicUsize>,
    /// Connections that carried a request (the health checker's probe connections carry none).
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(region: &'static str, zone: &'static str, delay: Duration) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let name = format!("{region}/{zone}");
        let body_bytes = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, bytes, conns_seen) = (received.clone(), body_bytes.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (name, count, bytes) = (name.clone(), count.clone(), bytes.clone());
                let (conns_seen, first) = (conns_seen.clone(), Arc::new(AtomicBool::new(true)));
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        if first.swap(false, Ordering::SeqCst) {
                            conns_seen.fetch_add(1, Ordering::SeqCst);
                        }
                        let (name, bytes) = (name.clone(), bytes.clone());
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            bytes.fetch_add(body.len(), Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Backend {
            addr,
            region,
            received,
            body_bytes,
            accepted,
            task,
        }
    }

    fn endpoint(&self) -> serde_json::Value {
        json!({"address": self.addr.ip().to_string(), "port": self.addr.port(),
               "cluster": self.region, "region": self.region, "zone": "a"})
    }
}

/// A proxy in us-east/a routing `/` to one backend with the slow us-east and the fast eu-west
/// endpoint; its listener port.
async fn setup() -> (ProxyHandle, u16, Backend, Backend) {
    setup_with(SLOW, Duration::ZERO, ProxyConfig::default()).await
}

/// [`setup`] with the us-east endpoint answering after `local`, the eu-west one after `remote`,
/// and the rest of the proxy's configuration from `cfg`.
async fn setup_with(
    local: Duration,
    remote: Duration,
    cfg: ProxyConfig,
) -> (ProxyHandle, u16, Backend, Backend) {
    let slow = Backend::start("us-east", "a", local).await;
    let fast = Backend::start("eu-west", "a", remote).await;
    let proxy = ProxyHandle::start(ProxyConfig {
        admin: None,
        admin_auth: AdminAuth::None,
        locality: Locality {
            cluster: "east".into(),
            region: "us-east".into(),
            zone: "a".into(),
        },
        workers: common::workers(),
        ..cfg
    })
    .await
    .unwrap();
    let port = common::free_port();
    let backend = common::backend(
        "default/echo:80 (ServiceImport)",
        1,
        vec![slow.endpoint(), fast.endpoint()],
    );
    proxy
        .apply(common::http_snapshot(
            1,
            port,
            vec![common::prefix_rule("/", vec![backend])],
        ))
        .await
        .unwrap();
    (proxy, port, slow, fast)
}

fn hedges(proxy: &ProxyHandle, event: &str) -> f64 {
    common::metric_sum(
        &proxy.metrics_text(),
        &format!("meridian_proxy_hedges_total{{event=\"{event}\"}}"),
    )
}

/// Sends `method` to the proxy; (status, body, latency).
async fn send(
    c: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    body: Option<String>,
) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut rb = c.request(method, format!("http://127.0.0.1:{port}/"));
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, text, started.elapsed())
}

#[tokio::test]
async fn slow_first_endpoint_is_hedged_and_the_faster_answer_wins() {
    let (proxy, port, slow, fast) = setup().await;
    let c = common::client();
    for i in 0..3 {
        let (status, body, took) = send(&c, port, reqwest::Method::GET, None).await;
        assert_eq!(status, 200);
        assert_eq!(body, "eu-west/a", "GET {i}: the hedged try answered");
        // The hedge delay without history is 100 ms; the slow endpoint needs 700 ms.
        assert!(took < SLOW, "GET {i} took {took:?}");
    }
    // Both tries of every GET went out: the slow one first, then the hedge.
    assert_eq!(slow.received.load(Ordering::SeqCst), 3);
    assert_eq!(fast.received.load(Ordering::SeqCst), 3);
    assert_eq!(hedges(&proxy, "sent"), 3.0);
    assert_eq!(hedges(&proxy, "won"), 3.0);
    // The slow endpoint lost after it had connected: only slower, not ejected, so the next
    // request still tries it first.
    let (_, body, _) = send(&c, port, reqwest::Method::GET, None).await;
    assert_eq!(body, "eu-west/a");
    assert_eq!(slow.received.load(Ordering::SeqCst), 4);
    assert_eq!(
        common::metric_sum(
            &proxy.metrics_text(),
            "meridian_proxy_endpoint_ejections_total"
        ),
        0.0
    );

    // A HEAD is hedged too (idempotent, bodyless).
    let (status, _, took) = send(&c, port, reqwest::Method::HEAD, None).await;
    assert_eq!(status, 200);
    assert!(took < SLOW, "HEAD took {took:?}");
    assert_eq!(hedges(&proxy, "won"), 5.0);
    // So is a PUT with a small body: read whole first, then sent by both tries.
    let small = "y".repeat(1000);
    let (status, body, took) = send(&c, port, reqwest::Method::PUT, Some(small)).await;
    assert_eq!((status, body.as_str()), (200, "eu-west/a"));
    assert!(took < SLOW, "PUT took {took:?}");
    assert_eq!(slow.body_bytes.load(Ordering::SeqCst), 1000);
    assert_eq!(fast.body_bytes.load(Ordering::SeqCst), 1000);
    assert_eq!(hedges(&proxy, "won"), 6.0);
    // Every loser's connection was closed, none went back to the pool: each of the six
    // requests opened a new one to the slow endpoint.
    assert_eq!(slow.accepted.load(Ordering::SeqCst), 6);
    assert_eq!(slow.received.load(Ordering::SeqCst), 6);

    proxy.shutdown().await;
    slow.task.abort();
    fast.task.abort();
}

/// The spans of a hedged pair: each try's span records its own outcome, whichever try wins.
#[tokio::test]
async fn each_try_of_a_hedged_pair_has_its_own_span_outcome() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Attr;
    use otlp::{attribute, otlp_receiver};
    let (receiver, spans) = otlp_receiver().await;
    let traced = || ProxyConfig {
        tracing: meridian_proxy::TraceConfig {
            otlp_endpoint: Some(format!("http://{receiver}")),
        },
        ..Default::default()
    };
    // The first try (us-east) answers after the hedge delay (100 ms without history) but long
    // before the hedge (eu-west): the FIRST try wins, the current try having moved to the hedge
    // and back.
    let (proxy, port, first, hedge) = setup_with(
        Duration::from_millis(300),
        Duration::from_millis(1500),
        traced(),
    )
    .await;
    let c = common::client();
    let (status, body, _) = send(&c, port, reqwest::Method::GET, None).await;
    assert_eq!((status, body.as_str()), (200, "us-east/a"));
    assert_eq!(hedges(&proxy, "sent"), 1.0);
    assert_eq!(hedges(&proxy, "won"), 0.0);
    let port_of =
        |s: &opentelemetry_proto::tonic::trace::v1::Span| match attribute(s, "server.port") {
            Some(Attr::IntValue(p)) => Some(*p),
            _ => None,
        };
    let tries = common::eventually("both try spans at the receiver", common::WAIT, || {
        let spans = spans.lock().unwrap();
        let tries: Vec<_> = spans.iter().filter(|s| s.kind == 3).cloned().collect();
        (tries.len() == 2).then_some(tries)
    })
    .await;
    let winner = tries
        .iter()
        .find(|s| port_of(s) == Some(i64::from(first.addr.port())))
        .unwrap();
    let loser = tries
        .iter()
        .find(|s| port_of(s) == Some(i64::from(hedge.addr.port())))
        .unwrap();
    assert_eq!(
        attribute(winner, "http.response.status_code"),
        Some(&Attr::IntValue(200)),
        "{winner:?}"
    );
    assert_eq!(attribute(winner, "error.type"), None, "{winner:?}");
    assert_eq!(
        attribute(loser, "http.response.status_code"),
        None,
        "{loser:?}"
    );
    assert_eq!(
        attribute(loser, "error.type"),
        Some(&Attr::StringValue("hedge lost".into())),
        "{loser:?}"
    );
    proxy.shutdown().await;
    first.task.abort();
    hedge.task.abort();
}

#[tokio::test]
async fn post_is_never_hedged() {
    let (proxy, port, slow, fast) = setup().await;
    let c = common::client();
    for body in [None, Some("payload".to_string())] {
        let (status, text, took) = send(&c, port, reqwest::Method::POST, body.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(text, "us-east/a", "POST {body:?} waited for its only try");
        assert!(took >= SLOW, "POST {body:?} took {took:?}");
    }
    // A PUT with a body larger than a hedge holds is not hedged either.
    let large = "x".repeat(16 * 1024 + 1);
    let (_, text, took) = send(&c, port, reqwest::Method::PUT, Some(large)).await;
    assert_eq!(text, "us-east/a");
    assert!(took >= SLOW);
    assert_eq!(slow.body_bytes.load(Ordering::SeqCst), 7 + 16 * 1024 + 1);
    assert_eq!(fast.received.load(Ordering::SeqCst), 0);
    assert_eq!(hedges(&proxy, "sent"), 0.0);
    proxy.shutdown().await;
    slow.task.abort();
    fast.task.abort();
}

/// On the test's own (current-thread) runtime the budget's counters see no races.
#[tokio::test]
async fn hedging_stops_when_the_retry_budget_is_spent() {
    const REQUESTS: usize = 100;
    // 20 % of the window's requests plus 3 per second over the 10 s window.
    const BUDGET: f64 = (REQUESTS / 5 + 30) as f64;
    let (proxy, port, slow, fast) = setup().await;
    let c = common::client();
    let mut all = JoinSet::new();
    for _ in 0..REQUESTS {
        let c = c.clone();
        all.spawn(async move { send(&c, port, reqwest::Method::GET, None).await });
    }
    let (mut hedged, mut waited) = (0, 0);
    while let Some(r) = all.join_next().await {
        let (status, body, took) = r.unwrap();
        assert_eq!(status, 200);
        match body.as_str() {
            "eu-west/a" => hedged += 1,
            "us-east/a" => {
                assert!(took >= SLOW, "an unhedged GET waited for the slow endpoint");
                waited += 1;
            }
            other => panic!("unexpected answer {other}"),
        }
    }
    let sent = hedges(&proxy, "sent");
    println!("hedge budget: {hedged} hedged, {waited} waited, {sent} hedges sent");
    assert!(sent <= BUDGET, "{sent} hedges, budget {BUDGET}");
    assert!(sent >= 30.0, "at least the budget's floor was used: {sent}");
    assert_eq!(hedged as f64, hedges(&proxy, "won"));
    assert_eq!(hedged + waited, REQUESTS);
    assert!(waited >= REQUESTS - BUDGET as usize, "{waited} waited");
    assert_eq!(fast.received.load(Ordering::SeqCst), hedged);
    proxy.shutdown().await;
    slow.task.abort();
    fast.task.abort();
}

/// A client that goes away while its GET waits for the slow endpoint ends the wait: no hedge is
/// sent for nobody (the hedge delay without history is 100 ms; the client leaves at once).
#[tokio::test]
async fn no_hedge_for_a_client_that_went_away() {
    use tokio::io::AsyncWriteExt;
    let (proxy, port, slow, fast) = setup().await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The client leaves at once: the proxy reads the whole head, then the end of the stream,
    // while the first try waits (or starts) at the slow endpoint.
    drop(tcp);
    // The proxy finishes the request (counted) without waiting for an answer or hedging.
    let started = Instant::now();
    common::eventually("the abandoned request finished", common::WAIT, || {
        common::metric_sum(&proxy.metrics_text(), "meridian_proxy_requests_total") >= 1.0
    })
    .await;
    assert!(started.elapsed() < SLOW, "{:?}", started.elapsed());
    assert_eq!(hedges(&proxy, "sent"), 0.0);
    assert_eq!(fast.received.load(Ordering::SeqCst), 0);
    assert!(slow.received.load(Ordering::SeqCst) <= 1);
    proxy.shutdown().await;
    slow.task.abort();
    fast.task.abort();
}
