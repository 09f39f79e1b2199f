//! Downstream timeouts and limits, tried with raw sockets on loopback as a hostile client would:
//! a short HTTP/1 request on a plain listener is answered at once (no wait for the 24-byte h2c
//! preface), a silent connection and a slowloris trickling its header are closed after the
//! header timeout, a kept-alive connection after the idle timeout whatever `Keep-Alive` it asks
//! for, an idle flood does not slow a normal request, and connections over the cap are shed and
//! counted. Short timeouts (hundreds of milliseconds) keep the tests quick; every wait is bounded.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use meridian_proxy::{Limits, ProxyConfig, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_millis(700);

/// A proxy with `limits`, serving one echo backend on a plain listener; returns the listener port.
async fn serve(limits: Limits) -> (ProxyHandle, Echo, u16) {
    let echo = Echo::start("limits").await;
    let port = free_port();
    let p = ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        limits,
        workers: workers(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.apply(http_snapshot(
        1,
        port,
        vec![prefix_rule("/", vec![echo_backend(&echo, 1)])],
    ))
    .await
    .unwrap();
    (p, echo, port)
}

fn short_limits() -> Limits {
    Limits {
        header_timeout: HEADER_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        ..Limits::default()
    }
}

/// Waits until the peer closes `tcp` (end of stream or reset), for at most `within`; returns
/// how long that took, `None` when it was still open. Bytes received are discarded.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let read_until_closed = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_until_closed)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Reads one whole response head from `tcp` (up to the blank line), for at most `within`.
async fn response_head(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    let text = String::from_utf8_lossy(&got).to_string();
    text.contains("\r\n\r\n").then_some(text)
}

fn open_gauge(p: &ProxyHandle, port: u16) -> f64 {
    metric_sum(
        &p.metrics_text(),
        &format!("meridian_proxy_connections_open{{listener=\"127.0.0.1:{port}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shorter_than_the_h2_preface_is_answered_at_once() {
    bounded(async {
        // Default limits: the answer must not wait for any timeout.
        let (p, _echo, port) = serve(Limits::default()).await;
        // HAProxy's default health check: 22 bytes, two less than the HTTP/2 preface.
        let request = b"OPTIONS / HTTP/1.0\r\n\r\n";
        assert_eq!(request.len(), 22);
        let started = Instant::now();
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let head = response_head(&mut tcp, Duration::from_secs(2))
            .await
            .expect("no answer within 2 s to a short HTTP/1.0 request");
        let took = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // HTTP/1.0 without keep-alive: the proxy closes after the answer.
        assert!(
            closed_within(&mut tcp, Duration::from_secs(2))
                .await
                .is_some()
        );
        println!("OPTIONS / HTTP/1.0 (22 bytes) answered in {took:?}");

        // Bytes that could still be the preface but are not (`PRI ` then something else) are
        // HTTP/1 too, and a real h2c client still gets HTTP/2.
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"PRI / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let head = response_head(&mut tcp, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // An empty SETTINGS frame: the server answers with its own SETTINGS (frame type 4).
        tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut frame = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut frame))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame[3], 4, "h2c preface answered with {frame:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    bounded(async {
        let (p, _echo, port) = serve(short_limits()).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let took = closed_within(&mut tcp, Duration::from_secs(5))
            .await
            .expect("a silent connection still open after 5 s");
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(50),
            "{took:?}"
        );
        println!("silent connection closed after {took:?} (header timeout {HEADER_TIMEOUT:?})");
        // Half a header, then silence: the same deadline (from the accept).
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let took = closed_within(&mut tcp, Duration::from_secs(5))
            .await
            .expect("a half header still open after 5 s");
        assert!(took < Duration::from_secs(2), "{took:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_holds_no_connection_past_the_header_timeout() {
    bounded(async {
        const CONNECTIONS: usize = 200;
        /// How long each connection trickles before the test gives up on it being closed.
        const TRICKLE_FOR: Duration = Duration::from_secs(4);
        let (p, _echo, port) = serve(short_limits()).await;
        let mut tasks = Vec::new();
        for i in 0..CONNECTIONS {
            tasks.push(tokio::spawn(async move {
                let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let started = Instant::now();
                // A header that never ends: one byte every 50 ms, each resetting any per-read
                // timeout.
                let head = format!("GET /{i} HTTP/1.1\r\nHost: a\r\nX-Slow: ");
                let mut bytes = head.into_bytes().into_iter().chain(std::iter::repeat(b'a'));
                let mut buf = [0u8; 1024];
                while started.elapsed() < TRICKLE_FOR {
                    tokio::select! {
                        read = tcp.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return Some(started.elapsed()),
                            Ok(_) => {}
                        },
                        () = tokio::time::sleep(Duration::from_millis(50)) => {
                            let b = [bytes.next().unwrap_or(b'a')];
                            if tcp.write_all(&b).await.is_err() {
                                return Some(started.elapsed());
                            }
                        }
                    }
                }
                None
            }));
        }
        let mut held = Vec::new();
        let mut still_open = 0;
        for t in tasks {
            match t.await.unwrap() {
                Some(d) => held.push(d),
                None => still_open += 1,
            }
        }
        let longest = held.iter().max().copied().unwrap_or_default();
        println!(
            "slowloris: {CONNECTIONS} connections trickling 1 byte/50 ms: {} closed, {still_open} \
             still open after {TRICKLE_FOR:?}; longest held {longest:?} (header timeout \
             {HEADER_TIMEOUT:?})",
            held.len()
        );
        assert_eq!(still_open, 0, "connections outlived the header timeout");
        assert!(longest < HEADER_TIMEOUT * 3, "{longest:?}");
        eventually("no connection open", WAIT, || open_gauge(&p, port) == 0.0).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    bounded(async {
        let (p, _echo, port) = serve(short_limits()).await;
        // The client asks for a long keep-alive; the proxy's limit wins.
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for i in 0..3 {
            if i > 0 {
                // Kept alive: idle a little less than the limit, then the next request. Longer
                // than the header timeout: the idle wait is not a header wait.
                tokio::time::sleep(IDLE_TIMEOUT - Duration::from_millis(150)).await;
            }
            tcp.write_all(
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=3600\r\n\r\n",
            )
            .await
            .unwrap();
            let head = response_head(&mut tcp, Duration::from_secs(2)).await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        // The body of the last answer may still be arriving; then idle until closed.
        let took = closed_within(&mut tcp, Duration::from_secs(5))
            .await
            .expect("a kept-alive idle connection still open after 5 s");
        assert!(took >= IDLE_TIMEOUT - Duration::from_millis(50), "{took:?}");
        assert!(took < IDLE_TIMEOUT * 2, "{took:?}");
        println!(
            "kept-alive connection closed {took:?} into its idle wait (idle timeout \
             {IDLE_TIMEOUT:?}, client asked 3600 s)"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_does_not_slow_a_normal_request() {
    bounded(async {
        const IDLE: usize = 2_000;
        // Default limits: 10 s header timeout, longer than the flood takes to set up.
        let (p, _echo, port) = serve(Limits::default()).await;
        let mut flood = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            flood.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        eventually("every idle connection accepted", WAIT, || {
            open_gauge(&p, port) >= IDLE as f64
        })
        .await;
        let c = client();
        let started = Instant::now();
        let (status, _, body) = get(&c, port, "/normal", &[]).await;
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert_eq!(body["path"], "/normal");
        assert!(took < Duration::from_secs(1), "{took:?}");
        println!(
            "idle flood: {IDLE} idle connections open ({} counted by the proxy), a normal \
             request answered in {took:?}",
            open_gauge(&p, port)
        );
        drop(flood);
        eventually("the flood's connections closed", WAIT, || {
            open_gauge(&p, port) <= 1.0
        })
        .await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_shed_and_counted() {
    bounded(async {
        const CAP: usize = 50;
        const OVER: usize = 10;
        let (p, _echo, port) = serve(Limits {
            max_connections: CAP,
            ..Limits::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..CAP {
            held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        eventually("the cap reached", WAIT, || {
            open_gauge(&p, port) == CAP as f64
        })
        .await;
        for _ in 0..OVER {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
            let took = closed_within(&mut tcp, Duration::from_secs(2))
                .await
                .expect("a connection over the cap was not closed");
            assert!(took < Duration::from_secs(1), "{took:?}");
        }
        let shed = metric_sum(
            &p.metrics_text(),
            &format!("meridian_proxy_connections_shed_total{{listener=\"127.0.0.1:{port}\"}}"),
        );
        assert_eq!(shed, OVER as f64);
        assert_eq!(open_gauge(&p, port), CAP as f64);
        println!("cap {CAP}: {OVER} connections over it closed at once, {shed} counted as shed");
        // A place freed is a place taken again.
        drop(held.pop());
        eventually("a place freed", WAIT, || open_gauge(&p, port) < CAP as f64).await;
        let (status, _, _) = get(&client(), port, "/again", &[]).await;
        assert_eq!(status, 200);
        p.shutdown().await;
    })
    .await;
}
