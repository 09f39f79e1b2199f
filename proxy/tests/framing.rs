//! Framing and hop-by-hop handling at the edge, over raw loopback sockets (gateway/framing.rs):
//! ambiguous or malformed framing is answered 400 and the connection closed before anything
//! reaches the backend; `Connection`-nominated headers cannot strip what a filter sets.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound of one exchange.
const EXCHANGE: Duration = Duration::from_secs(5);

/// What came back on a raw connection.
#[derive(Debug)]
struct Answer {
    /// The status of the first response, `None` when the proxy closed without one.
    status: Option<u16>,
    /// The whole first response head, lower-cased.
    head: String,
    /// The proxy closed the connection after the first response.
    closed: bool,
}

/// Sends `raw` on a fresh connection, reads one response (head and `content-length` body) and
/// then whether the proxy closes the connection.
async fn exchange(port: u16, raw: &[u8]) -> Answer {
    tokio::time::timeout(EXCHANGE, async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i + 4);
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let Some(end) = end else {
            return Answer {
                status: None,
                head: String::from_utf8_lossy(&buf).to_string(),
                closed: true,
            };
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok());
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut rest = buf.len() - end;
        while rest < len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => rest += k,
            }
        }
        // A closed connection reads 0 (or a reset); an open one times out.
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        Answer {
            status,
            head,
            closed,
        }
    })
    .await
    .expect("exchange exceeded its bound")
}

async fn proxy_with(port: u16, rules: Vec<serde_json::Value>) -> meridian_proxy::ProxyHandle {
    let p = proxy().await;
    p.apply(http_snapshot(1, port, rules)).await.unwrap();
    p
}

#[tokio::test]
async fn content_length_lists_are_refused_before_the_backend() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let _p = proxy_with(port, vec![prefix_rule("/", vec![echo_backend(&echo, 1)])]).await;
    for cl in [
        "content-length: 5, 5\r\n",
        "content-length: 5,5\r\n",
        "content-length: 5\r\ncontent-length: 5\r\n",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nhost: f.test\r\n{cl}\r\nhello");
        let a = exchange(port, raw.as_bytes()).await;
        assert_eq!(a.status, Some(400), "{cl:?}: {a:?}");
        assert!(a.head.contains("connection: close"), "{cl:?}: {a:?}");
        assert!(a.closed, "{cl:?}: connection left open");
    }
    assert_eq!(echo.count(), 0, "an ambiguous request reached the backend");
    // The same request with one value goes through.
    let a = exchange(
        port,
        b"POST / HTTP/1.1\r\nhost: f.test\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(echo.count(), 1);
}

/// What pingora refuses by itself (documented in gateway/framing.rs, not duplicated there).
#[tokio::test]
async fn malformed_framing_is_refused_with_400_and_close() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let _p = proxy_with(port, vec![prefix_rule("/", vec![echo_backend(&echo, 1)])]).await;
    for (what, raw) in [
        (
            "signed",
            "POST / HTTP/1.1\r\nhost: f\r\ncontent-length: +5\r\n\r\nhello",
        ),
        (
            "negative",
            "POST / HTTP/1.1\r\nhost: f\r\ncontent-length: -5\r\n\r\nhello",
        ),
        (
            "non-digit",
            "POST / HTTP/1.1\r\nhost: f\r\ncontent-length: 5x\r\n\r\nhello",
        ),
        (
            "differing",
            "POST / HTTP/1.1\r\nhost: f\r\ncontent-length: 5, 6\r\n\r\nhello",
        ),
        (
            "te not chunked last",
            "POST / HTTP/1.1\r\nhost: f\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "te unknown",
            "POST / HTTP/1.1\r\nhost: f\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "te list",
            "POST / HTTP/1.1\r\nhost: f\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "te on 1.0",
            "POST / HTTP/1.0\r\nhost: f\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ] {
        let a = exchange(port, raw.as_bytes()).await;
        assert_eq!(a.status, Some(400), "{what}: {a:?}");
        assert!(a.closed, "{what}: connection left open");
    }
    assert_eq!(echo.count(), 0, "a malformed request reached the backend");
}

/// An invalid chunk size is found while the body streams: the request never completes upstream
/// and the client gets no success, and the connection is closed.
#[tokio::test]
async fn invalid_chunk_sizes_never_complete() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let _p = proxy_with(port, vec![prefix_rule("/", vec![echo_backend(&echo, 1)])]).await;
    for size in ["zz", "-1", "ffffffffffffffffffff", "0x5"] {
        let raw = format!(
            "POST / HTTP/1.1\r\nhost: f\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        );
        let a = exchange(port, raw.as_bytes()).await;
        assert!(a.status.is_none_or(|s| s >= 400), "{size}: {a:?}");
        assert!(a.closed, "{size}: connection left open");
    }
}

/// CL and TE together: pingora frames by chunked, drops Content-Length and closes after the
/// response, so nothing can hide behind the body.
#[tokio::test]
async fn content_length_with_chunked_frames_by_chunked_and_closes() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let _p = proxy_with(port, vec![prefix_rule("/", vec![echo_backend(&echo, 1)])]).await;
    let raw = "POST / HTTP/1.1\r\nhost: f\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
               5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: f\r\n\r\n";
    let a = exchange(port, raw.as_bytes()).await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert!(a.closed, "connection left open after CL+TE");
    let seen = echo.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].headers.contains_key("content-length"), "{seen:?}");
    assert!(seen.iter().all(|s| s.path != "/smuggled"));
}

#[tokio::test]
async fn a_client_cannot_strip_a_header_a_filter_sets() {
    let echo = Echo::start("e").await;
    let port = free_port();
    let rule = json!({
        "matches": [{"path": {"type": "pathPrefix", "value": "/"}}],
        "filters": [{"type": "requestHeaderModifier",
                     "set": [{"name": "x-gw", "value": "gateway"}]}],
        "backends": [echo_backend(&echo, 1)],
    });
    let _p = proxy_with(port, vec![rule]).await;
    let a = exchange(
        port,
        b"GET / HTTP/1.1\r\nhost: f\r\nconnection: keep-alive, x-gw, x-secret\r\nx-gw: client\r\n\
          x-secret: 1\r\nx-kept: 1\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, Some(200), "{a:?}");
    let seen = echo.seen();
    let h = &seen[0].headers;
    assert_eq!(h.get("x-gw").map(String::as_str), Some("gateway"), "{h:?}");
    assert!(
        !h.contains_key("x-secret"),
        "nominated header forwarded: {h:?}"
    );
    assert_eq!(h.get("x-kept").map(String::as_str), Some("1"));
    assert!(
        !h.contains_key("connection") || !h["connection"].contains("x-"),
        "{h:?}"
    );

    // Headers the proxy routes on or sets may not be nominated.
    for v in ["x-forwarded-for", "Host", "a,b,c,d,e,f,g,h,i,j"] {
        let raw = format!("GET / HTTP/1.1\r\nhost: f\r\nconnection: {v}\r\n\r\n");
        let a = exchange(port, raw.as_bytes()).await;
        assert_eq!(a.status, Some(400), "{v}: {a:?}");
        assert!(a.closed, "{v}");
    }
    assert_eq!(echo.count(), 1);
}
