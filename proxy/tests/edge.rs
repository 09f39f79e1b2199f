//! Forwarding headers and the loop guard over raw loopback sockets (gateway/forwarded.rs,
//! edge.rs): the backend learns the client address whatever the client claims, and a request
//! that would come back to the proxy is stopped instead of looping until file descriptors run
//! out.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use meridian_proxy::{EdgeConfig, ProxyConfig, ProxyHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one raw request with `Connection: close` and returns the status and whole response.
async fn raw(port: u16, head: &str) -> (u16, String) {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n{head}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        (text[9..12].parse().unwrap(), text)
    })
    .await
    .expect("no answer in time")
}

async fn proxy_with_hops(hops: u32) -> ProxyHandle {
    ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        edge: EdgeConfig {
            xff_trusted_hops: hops,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn endpoint(port: u16) -> serde_json::Value {
    json!({"address": "127.0.0.1", "port": port})
}

#[tokio::test]
async fn the_backend_learns_the_client_address_and_scheme() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let p = proxy().await;
    p.apply(http_snapshot(
        1,
        port,
        vec![prefix_rule("/", vec![echo_backend(&echo, 1)])],
    ))
    .await
    .unwrap();

    // No forwarding headers from the client: the proxy adds them.
    let (status, _) = raw(port, "").await;
    assert_eq!(status, 200);
    // Forged ones: kept in the list, but the proxy's entry is appended and the scheme replaced.
    let (status, _) = raw(
        port,
        "x-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\nforwarded: for=6.6.6.6\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = echo.seen();
    let h0 = &seen[0].headers;
    assert_eq!(h0["x-forwarded-for"], "127.0.0.1", "{h0:?}");
    assert_eq!(h0["x-forwarded-proto"], "http", "{h0:?}");
    let h1 = &seen[1].headers;
    assert_eq!(h1["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{h1:?}");
    assert_eq!(h1["x-forwarded-proto"], "http", "{h1:?}");
    assert_eq!(h1["forwarded"], "for=6.6.6.6", "Forwarded is left as is");
}

#[tokio::test]
async fn a_trusted_proxy_in_front_keeps_its_scheme() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let p = proxy_with_hops(1).await;
    p.apply(http_snapshot(
        1,
        port,
        vec![prefix_rule("/", vec![echo_backend(&echo, 1)])],
    ))
    .await
    .unwrap();
    let (status, _) = raw(
        port,
        "x-forwarded-for: 203.0.113.9\r\nx-forwarded-proto: https\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let h = &echo.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn an_endpoint_on_the_proxys_own_listener_is_never_tried() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let p = proxy().await;
    let self_only = backend("self", 1, vec![endpoint(port)]);
    let mixed = backend("mixed", 1, vec![endpoint(port), echo.endpoint()]);
    let rules = vec![
        prefix_rule("/self", vec![self_only]),
        prefix_rule("/", vec![mixed]),
    ];
    p.apply(http_snapshot(1, port, rules)).await.unwrap();
    let c = client();
    let (status, _, _) = get(&c, port, "/self", &[]).await;
    assert_eq!(status, 503, "only endpoint is the proxy itself");
    for _ in 0..10 {
        let (status, _, body) = get(&c, port, "/", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body["name"], "e");
    }
    assert_eq!(echo.count(), 10);
}

#[tokio::test]
async fn a_loop_through_another_proxy_is_answered_508() {
    let echo = Echo::start("e").await;
    let (port_a, port_b) = (free_port(), free_port());
    let a = proxy().await;
    let b = proxy().await;
    // A sends /loop to B, B sends everything back to A: a loop no address check can see.
    a.apply(http_snapshot(
        1,
        port_a,
        vec![
            prefix_rule("/loop", vec![backend("b", 1, vec![endpoint(port_b)])]),
            prefix_rule("/", vec![echo_backend(&echo, 1)]),
        ],
    ))
    .await
    .unwrap();
    b.apply(http_snapshot(
        1,
        port_b,
        vec![prefix_rule(
            "/",
            vec![backend("a", 1, vec![endpoint(port_a)])],
        )],
    ))
    .await
    .unwrap();
    let c = client();
    let started = std::time::Instant::now();
    let (status, _, _) = get(&c, port_a, "/loop", &[]).await;
    assert_eq!(status, 508);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A chain without a loop passes, and the backend sees both proxies' entries.
    let (status, _, _) = get(&c, port_b, "/", &[("via", "1.0 corp-lb")]).await;
    assert_eq!(status, 200);
    let via = echo.seen()[0].headers["via"].clone();
    let entries: Vec<&str> = via.split(',').map(str::trim).collect();
    assert_eq!(entries.len(), 3, "{via}");
    assert_eq!(entries[0], "1.0 corp-lb");
    assert!(
        entries[1..].iter().all(|e| e.starts_with("1.1 meridian-")),
        "{via}"
    );
    assert_ne!(entries[1], entries[2], "each proxy has its own entry");
}
