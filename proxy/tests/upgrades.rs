//! Upgraded (101) connections on the lean HTTP/1 path: bytes sent together with the upgrade
//! request reach the backend, a half-closed client still gets the backend's answer and then an
//! end of stream, and a tunnel with no byte either way for the idle timeout is closed while one
//! with traffic is not.
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

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A proxy with `idle_timeout` in front of one byte-echoing backend; returns the listener port.
async fn serve(idle_timeout: Duration) -> (ProxyHandle, Echo, u16) {
    let echo = Echo::start("a").await;
    let port = free_port();
    let p = ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        limits: Limits {
            idle_timeout,
            ..Limits::default()
        },
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

/// Sends the upgrade request (and `extra` in the same write); returns the stream and whatever
/// arrived after the response head.
async fn upgrade(port: u16, extra: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[UPGRADE, extra].concat()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, got[end..].to_vec())
}

/// Reads until `want` bytes arrived (after `have`); fails on an early end of stream.
async fn read_exactly(s: &mut TcpStream, mut have: Vec<u8>, want: usize) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    while have.len() < want {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "tunnel closed early after {have:?}");
        have.extend_from_slice(&buf[..n]);
    }
    have
}

/// Waits for the end of stream (or a reset); how long it took.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_the_upgrade_request_reach_the_backend() {
    bounded(async {
        let (p, _echo, port) = serve(Duration::from_secs(60)).await;
        for _ in 0..10 {
            let (mut s, after) = upgrade(port, b"early").await;
            assert_eq!(read_exactly(&mut s, after, 7).await, b"a:early");
            s.write_all(b"late").await.unwrap();
            assert_eq!(read_exactly(&mut s, Vec::new(), 6).await, b"a:late");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_the_answer_then_the_end() {
    bounded(async {
        let (p, _echo, port) = serve(Duration::from_secs(60)).await;
        let (mut s, after) = upgrade(port, b"").await;
        assert!(after.is_empty(), "{after:?}");
        s.write_all(b"bye").await.unwrap();
        // Client's write half closed: the backend sees its end of stream after the bytes, answers
        // them, and closes, which the client then sees.
        s.shutdown().await.unwrap();
        assert_eq!(read_exactly(&mut s, Vec::new(), 5).await, b"a:bye");
        assert!(
            closed_within(&mut s, WAIT).await.is_some(),
            "the tunnel stayed open after both sides ended"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    bounded(async {
        let idle = Duration::from_millis(600);
        let (p, _echo, port) = serve(idle).await;
        let (mut busy, _) = upgrade(port, b"").await;
        // Timed from before the upgrade request: the proxy starts its idle timer when the 101
        // passes through, before the client has read it, so a clock started after `upgrade`
        // returns sees the close early by that hand-off.
        let asked = Instant::now();
        let (mut silent, _) = upgrade(port, b"").await;
        let silent = tokio::spawn(async move {
            closed_within(&mut silent, WAIT)
                .await
                .map(|_| asked.elapsed())
        });
        // Traffic every idle/3 keeps a tunnel open past twice the idle timeout.
        let start = Instant::now();
        for i in 0..6u8 {
            tokio::time::sleep(idle / 3).await;
            busy.write_all(&[b'0' + i]).await.unwrap();
            let got = read_exactly(&mut busy, Vec::new(), 3).await;
            assert_eq!(got, [b'a', b':', b'0' + i]);
        }
        assert!(start.elapsed() >= idle * 2);
        let closed = silent.await.unwrap().expect("an idle tunnel stayed open");
        assert!(
            closed >= idle,
            "closed after {closed:?}, before the idle timeout"
        );
        // The busy one closes once it is silent too.
        let waited = closed_within(&mut busy, WAIT).await;
        let waited = waited.expect("the tunnel stayed open after going idle");
        assert!(waited >= idle / 2, "closed {waited:?} after its last byte");
        p.shutdown().await;
    })
    .await;
}
