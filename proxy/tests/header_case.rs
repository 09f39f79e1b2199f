//! `--header-case` on the wire: by default the HTTP/1 codec forwards the common fields (Host,
//! Content-Type, …) capitalised as usual and every other name in lower case, and with `preserve`
//! every name as it was spelled, both ways (client → backend, backend → client), with the same
//! fields and values in the same order either way.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use meridian_proxy::{EdgeConfig, HeaderCase, ProxyConfig, ProxyHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Reads from `io` until `buf` holds a whole head; the head's bytes.
async fn read_head(io: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..i + 4).collect();
            return String::from_utf8(head).unwrap();
        }
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A keep-alive backend that sends every request head it receives to the test and answers with
/// mixed-case names.
async fn recording_backend() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head = read_head(&mut tcp, &mut buf).await;
                    let _ = tx.send(head);
                    let answer = "HTTP/1.1 200 OK\r\nX-Backend-Token: t1\r\ncontent-type: text/plain\r\nContent-Length: 2\r\n\r\nok";
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn proxy_with(case: Option<HeaderCase>, backend: SocketAddr) -> (ProxyHandle, u16) {
    let mut edge = EdgeConfig::default();
    if let Some(c) = case {
        edge.header_case = c;
    }
    let p = ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        workers: workers(),
        edge,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = free_port();
    let target = json!({"address": backend.ip().to_string(), "port": backend.port()});
    p.apply(http_snapshot(
        1,
        port,
        vec![prefix_rule(
            "/",
            vec![common::backend("b", 1, vec![target])],
        )],
    ))
    .await
    .unwrap();
    (p, port)
}

/// The field lines of a head (without the start line), each as sent.
fn fields(head: &str) -> Vec<&str> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .collect()
}

/// One request through the proxy: (the head the backend got, the response head the client got).
async fn exchange(case: Option<HeaderCase>) -> (String, String) {
    let (backend, mut heads) = recording_backend().await;
    let (_proxy, port) = proxy_with(case, backend).await;
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = "GET /x HTTP/1.1\r\nhost: case.test\r\nX-Client-Token: c1\r\nAccept: */*\r\n\r\n";
    tokio::time::timeout(TEST_TIMEOUT, async {
        client.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let response = read_head(&mut client, &mut buf).await;
        let upstream = heads.recv().await.unwrap();
        (upstream, response)
    })
    .await
    .expect("exchange did not finish in time")
}

#[tokio::test]
async fn names_are_normalised_by_default_and_kept_as_spelled_when_preserved() {
    let (up, down) = exchange(None).await;
    assert!(fields(&up).contains(&"x-client-token: c1"), "{up}");
    assert!(fields(&up).contains(&"accept: */*"), "{up}");
    assert!(fields(&up).contains(&"Host: case.test"), "{up}");
    assert!(fields(&down).contains(&"x-backend-token: t1"), "{down}");
    assert!(
        fields(&down).contains(&"Content-Type: text/plain"),
        "{down}"
    );

    let (up_kept, down_kept) = exchange(Some(HeaderCase::Preserve)).await;
    assert!(
        fields(&up_kept).contains(&"X-Client-Token: c1"),
        "{up_kept}"
    );
    assert!(fields(&up_kept).contains(&"Accept: */*"), "{up_kept}");
    assert!(fields(&up_kept).contains(&"host: case.test"), "{up_kept}");
    assert!(
        fields(&down_kept).contains(&"X-Backend-Token: t1"),
        "{down_kept}"
    );
    assert!(
        fields(&down_kept).contains(&"content-type: text/plain"),
        "{down_kept}"
    );

    // Only the spelling differs: the same fields with the same values in the same order (the
    // proxy's own `Via` entry is random per proxy, so its value is left out).
    let lowered = |head: &str| -> Vec<String> {
        fields(head)
            .into_iter()
            .map(|l| l.to_ascii_lowercase())
            .map(|l| {
                if l.starts_with("via:") {
                    "via".into()
                } else {
                    l
                }
            })
            .filter(|l| !l.starts_with("date:"))
            .collect()
    };
    assert_eq!(lowered(&up), lowered(&up_kept));
    assert_eq!(lowered(&down), lowered(&down_kept));
}
