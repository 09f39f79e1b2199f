//! The worker model (`ProxyConfig::workers` > 0): connections spread over the workers'
//! `SO_REUSEPORT` sockets and all answered, hot swaps add and remove a port on every worker,
//! a port another socket holds is refused, the connection cap holds across workers, and a
//! shutdown drains every worker. Loopback only, every wait bounded.
//!
//! The rest of the proxy's behaviour on workers: `MERIDIAN_TEST_WORKERS=2 cargo test -p
//! meridian-proxy --test lifecycle --test limits` runs those files with two workers.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meridian_proxy::{ApplyError, Limits, ProxyConfig, ProxyHandle};
use meridian_test_support::eventually_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WORKERS: usize = 2;

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

async fn proxy_with(workers: usize, limits: Limits) -> ProxyHandle {
    ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        workers,
        limits,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// One `GET path` on a fresh connection (`Connection: close`): the status and the whole
/// response, read until the proxy closes.
async fn fresh_get(port: u16, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("the response did not end")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// One `GET path` on a kept-alive connection: the status and the body (`Content-Length` long).
async fn kept_alive_get(tcp: &mut TcpStream, path: &str) -> (u16, String) {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .expect("a Content-Length");
                if body.len() >= length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, body.to_string());
                }
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no whole response")
}

/// `meridian_proxy_worker_connections_total` of each worker, in worker order.
fn per_worker(p: &ProxyHandle) -> Vec<f64> {
    let text = p.metrics_text();
    (0..WORKERS)
        .map(|w| {
            metric_sum(
                &text,
                &format!("meridian_proxy_worker_connections_total{{worker=\"{w}\"}}"),
            )
        })
        .collect()
}

/// Whether `port` refuses every one of `tries` connects: with an `SO_REUSEPORT` group, one
/// socket left open would take all of them.
async fn refuses(port: u16, tries: usize) -> bool {
    for _ in 0..tries {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_workers_and_every_request_is_answered() {
    bounded(async {
        const CONNECTIONS: usize = 48;
        let echo = Echo::start("w").await;
        let port = free_port();
        let p = Arc::new(proxy_with(WORKERS, Limits::default()).await);
        p.apply(http_snapshot(
            1,
            port,
            vec![prefix_rule("/", vec![echo_backend(&echo, 1)])],
        ))
        .await
        .unwrap();
        // Concurrent fresh connections: the kernel hashes each to one worker's socket.
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|i| tokio::spawn(async move { fresh_get(port, &format!("/c/{i}")).await }))
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (status, text) = t.await.unwrap();
            assert_eq!(status, 200, "{text}");
            assert!(text.contains(&format!("/c/{i}")), "{text}");
        }
        let spread = per_worker(&p);
        println!("{CONNECTIONS} connections over {WORKERS} workers: {spread:?}");
        assert_eq!(spread.iter().sum::<f64>(), CONNECTIONS as f64, "{spread:?}");
        // Each of 48 connections lands on either socket: all on one has a chance of 2^-47.
        assert!(spread.iter().all(|&n| n > 0.0), "{spread:?}");

        // A kept-alive connection stays with its worker for all its requests.
        let before = per_worker(&p).iter().sum::<f64>();
        let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for i in 0..20 {
            let path = format!("/k/{i}");
            let (status, body) = kept_alive_get(&mut kept, &path).await;
            assert_eq!(status, 200);
            assert!(body.contains(&path), "{body}");
        }
        assert_eq!(
            per_worker(&p).iter().sum::<f64>(),
            before + 1.0,
            "20 requests, one connection"
        );
        assert_eq!(echo.count(), CONNECTIONS + 20);
        Arc::try_unwrap(p).ok().unwrap().shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_adds_and_removes_a_port_on_every_worker() {
    bounded(async {
        let echo = Echo::start("w").await;
        let (p1, p2) = (free_port(), free_port());
        let p = proxy_with(3, Limits::default()).await;
        let rules = || vec![prefix_rule("/", vec![echo_backend(&echo, 1)])];
        let both = |generation| {
            snapshot(
                generation,
                vec![
                    http_listener("a", p1, None, rules()),
                    http_listener("b", p2, None, rules()),
                ],
            )
        };
        p.apply(http_snapshot(1, p1, rules())).await.unwrap();
        assert!(refuses(p2, 1).await);
        p.apply(both(2)).await.unwrap();
        for port in [p1, p2] {
            for _ in 0..12 {
                assert_eq!(fresh_get(port, "/").await.0, 200);
            }
        }
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut both_bound = vec![addr(p1), addr(p2)];
        both_bound.sort();
        assert_eq!(p.bound_sockets(), both_bound);

        // p1 leaves: every worker's socket on it is closed (one left open would take all
        // these connects), p2 keeps serving.
        p.apply(http_snapshot(3, p2, rules())).await.unwrap();
        assert!(
            refuses(p1, 30).await,
            "a socket on the removed port is still open"
        );
        assert_eq!(p.bound_sockets(), vec![addr(p2)]);
        for _ in 0..12 {
            assert_eq!(fresh_get(p2, "/").await.0, 200);
        }
        // Nothing of ours holds p1: the plain first bind of the group succeeds again.
        p.apply(both(4)).await.unwrap();
        for _ in 0..12 {
            assert_eq!(fresh_get(p1, "/").await.0, 200);
        }
        p.shutdown().await;
        assert!(refuses(p1, 30).await && refuses(p2, 30).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_another_reuseport_socket_is_refused_not_shared() {
    bounded(async {
        let echo = Echo::start("w").await;
        let (good, taken) = (free_port(), free_port());
        // Another process of the same user with an SO_REUSEPORT listener on `taken`: joining
        // its group would hand it a share of our connections.
        let foreign = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        foreign.set_reuse_port(true).unwrap();
        foreign
            .bind(&SocketAddr::from(([127, 0, 0, 1], taken)).into())
            .unwrap();
        foreign.listen(16).unwrap();

        let p = proxy_with(WORKERS, Limits::default()).await;
        let rules = || vec![prefix_rule("/", vec![echo_backend(&echo, 1)])];
        p.apply(http_snapshot(1, good, rules())).await.unwrap();
        let both = snapshot(
            2,
            vec![
                http_listener("a", good, None, rules()),
                http_listener("b", taken, None, rules()),
            ],
        );
        let err = p.apply(both).await.unwrap_err();
        assert!(
            matches!(&err, ApplyError::Bind { socket, .. } if socket.port() == taken),
            "{err}"
        );
        // All or nothing: the old snapshot serves, nothing of ours listens on `taken`.
        assert_eq!(p.generation(), Some(1));
        assert_eq!(
            p.bound_sockets(),
            vec![SocketAddr::from(([127, 0, 0, 1], good))]
        );
        assert_eq!(fresh_get(good, "/").await.0, 200);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_across_workers() {
    bounded(async {
        const CAP: usize = 10;
        const OPENED: usize = 40;
        let echo = Echo::start("w").await;
        let port = free_port();
        let p = proxy_with(
            WORKERS,
            Limits {
                max_connections: CAP,
                ..Limits::default()
            },
        )
        .await;
        p.apply(http_snapshot(
            1,
            port,
            vec![prefix_rule("/", vec![echo_backend(&echo, 1)])],
        ))
        .await
        .unwrap();
        let listener = format!("{{listener=\"127.0.0.1:{port}\"}}");
        // Opened at once, so both workers admit concurrently.
        let held: Vec<TcpStream> =
            futures::future::join_all((0..OPENED).map(|_| TcpStream::connect(("127.0.0.1", port))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let counts = || {
            let text = p.metrics_text();
            (
                metric_sum(&text, &format!("meridian_proxy_connections_open{listener}")),
                metric_sum(
                    &text,
                    &format!("meridian_proxy_connections_shed_total{listener}"),
                ),
            )
        };
        eventually("every connection admitted or shed", WAIT, || {
            let (open, shed) = counts();
            open + shed == OPENED as f64
        })
        .await;
        assert_eq!(counts(), (CAP as f64, (OPENED - CAP) as f64));
        assert_eq!(per_worker(&p).iter().sum::<f64>(), CAP as f64);
        drop(held);
        eventually("places given back", WAIT, || counts().0 == 0.0).await;
        assert_eq!(fresh_get(port, "/").await.0, 200);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_requests_in_flight_on_every_worker() {
    bounded(async {
        const SLOW: usize = 12;
        let echo = Echo::start("w").await;
        let port = free_port();
        let p = proxy_with(WORKERS, Limits::default()).await;
        p.apply(http_snapshot(
            1,
            port,
            vec![prefix_rule("/", vec![echo_backend(&echo, 1)])],
        ))
        .await
        .unwrap();
        // An idle kept-alive connection (one request done, waiting for the next).
        let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        idle.write_all(b"GET /idle HTTP/1.1\r\nHost: w\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Slow requests on fresh connections, spread over both workers.
        let slow: Vec<_> = (0..SLOW)
            .map(|i| {
                tokio::spawn(async move { fresh_get(port, &format!("/s/{i}?delay=1000")).await })
            })
            .collect();
        eventually("the slow requests at the backend", WAIT, || {
            echo.count() == SLOW + 1
        })
        .await;
        let spread = per_worker(&p);
        assert!(spread.iter().all(|&n| n > 0.0), "{spread:?}");

        let started = Instant::now();
        let stopping = tokio::spawn(p.shutdown());
        // The listeners close first, while the slow requests are still in flight.
        eventually_async("the listener closed", WAIT, || async {
            refuses(port, 1).await
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        // The idle connection is closed, not left waiting.
        let closed = tokio::time::timeout(WAIT, idle.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        // Every request in flight gets its whole answer.
        for (i, t) in slow.into_iter().enumerate() {
            let (status, text) = t.await.unwrap();
            assert_eq!(status, 200, "{text}");
            assert!(text.contains(&format!("/s/{i}")), "{text}");
        }
        tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
        assert_eq!(echo.count(), SLOW + 1);
    })
    .await;
}
