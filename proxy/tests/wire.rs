//! Byte-level behaviour of downstream connections: every response leaves the proxy's buffers
//! when it is complete (keep-alive, `Connection: close`, proxy-written errors, chunked streaming,
//! large bodies, TLS), and requests split across packets are still read whole.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Bound for one response: a response stuck in a buffer fails here instead of hanging.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Reads from `io` into `buf` until `buf` holds at least `n` bytes; false at end of stream.
async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>, n: usize) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < n {
        let k = io.read(&mut chunk).await.unwrap();
        if k == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    true
}

/// Reads from `io` into `buf` until `buf` contains `needle`; returns the index after it.
async fn fill_until<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>, needle: &[u8]) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return i + needle.len();
        }
        let k = io.read(&mut chunk).await.unwrap();
        assert!(k > 0, "connection closed before {needle:?}");
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// Reads one response (content-length or chunked) from `io`; `buf` keeps bytes read past it.
async fn read_response<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> Resp {
    tokio::time::timeout(RESPONSE_TIMEOUT, async {
        let end = fill_until(io, buf, b"\r\n\r\n").await;
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            let len: usize = len.parse().unwrap();
            assert!(fill(io, buf, len).await, "body cut short");
            body = buf.drain(..len).collect();
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let end = fill_until(io, buf, b"\r\n").await;
                let size =
                    usize::from_str_radix(std::str::from_utf8(&buf[..end - 2]).unwrap().trim(), 16)
                        .unwrap();
                buf.drain(..end);
                assert!(fill(io, buf, size + 2).await, "chunk cut short");
                body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        Resp {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("response did not arrive in time (stuck in a buffer?)")
}

fn get_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: wire.test\r\n{extra}\r\n")
}

/// A proxy with one HTTP listener routing everything to `backend`; returns (proxy, port).
async fn proxy_to(backend: serde_json::Value) -> (meridian_proxy::ProxyHandle, u16) {
    let port = free_port();
    let p = proxy().await;
    p.apply(http_snapshot(
        1,
        port,
        vec![prefix_rule("/", vec![backend])],
    ))
    .await
    .unwrap();
    (p, port)
}

fn raw_backend(addr: SocketAddr) -> serde_json::Value {
    backend(
        "raw",
        1,
        vec![json!({"address": addr.ip().to_string(), "port": addr.port()})],
    )
}

/// The body byte at `i` of a large test body.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A keep-alive backend that answers `GET /big/N` with an N-byte patterned body and any request
/// with a body with `len=N sum=S` of what it received.
async fn bulk_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 16 * 1024];
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < len {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let got: Vec<u8> = buf.drain(..len).collect();
                    let body: Vec<u8> = if let Some(n) = path.strip_prefix("/big/") {
                        let n: usize = n.parse().unwrap();
                        (0..n).map(pattern).collect()
                    } else {
                        let sum: u64 = got.iter().map(|&b| u64::from(b)).sum();
                        format!("len={} sum={sum}", got.len()).into_bytes()
                    };
                    let header =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if tcp.write_all(header.as_bytes()).await.is_err()
                        || tcp.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_sequence_then_close_each_response_arrives() {
    bounded(async {
        let echo = Echo::start("ka").await;
        let port = free_port();
        let p = proxy().await;
        let rules = vec![
            prefix_rule("/seq", vec![echo_backend(&echo, 1)]),
            prefix_rule("/last", vec![echo_backend(&echo, 1)]),
        ];
        p.apply(http_snapshot(1, port, rules)).await.unwrap();
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = Vec::new();
        for i in 0..50 {
            let path = format!("/seq/{i}");
            tcp.write_all(get_request(&path, "").as_bytes())
                .await
                .unwrap();
            let r = read_response(&mut tcp, &mut buf).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["path"], path);
        }
        // A response the proxy writes itself (no matching route) is flushed before pingora
        // closes the connection after it.
        tcp.write_all(get_request("/nowhere", "").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut tcp, &mut buf).await;
        assert_eq!(r.status, 404);
        let mut rest = Vec::new();
        tokio::time::timeout(RESPONSE_TIMEOUT, tcp.read_to_end(&mut rest))
            .await
            .expect("connection not closed after the error response")
            .unwrap();
        // A fresh connection ends with `Connection: close`.
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = Vec::new();
        tcp.write_all(get_request("/last", "connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut tcp, &mut buf).await;
        assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/last")));
        let mut rest = Vec::new();
        let n = tokio::time::timeout(RESPONSE_TIMEOUT, tcp.read_to_end(&mut rest))
            .await
            .expect("connection not closed after `Connection: close`")
            .unwrap();
        assert_eq!(n + buf.len(), 0, "bytes after the last response");
        assert_eq!(echo.count(), 51);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_split_across_packets_is_read_whole() {
    bounded(async {
        let echo = Echo::start("split").await;
        let (p, port) = proxy_to(echo_backend(&echo, 1)).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        // The first piece is shorter than the h2c preface the proxy looks for.
        let req = get_request("/split/path", "x-extra: 1\r\n");
        for piece in [&req[..5], &req[5..30], &req[30..]] {
            tcp.write_all(piece.as_bytes()).await.unwrap();
            // Kept: the gap between the pieces is what is tested (each arrives on its own,
            // and the proxy's read of the first one returns before the next is sent).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut buf = Vec::new();
        let r = read_response(&mut tcp, &mut buf).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/split/path");
        assert_eq!(r.json()["headers"]["x-extra"], "1");
        p.shutdown().await;
    })
    .await;
}

/// Pipelining (RFC 9112 section 9.3.2) on our own codec (`--http1-path own`): requests sent
/// back to back in one write, one with a body, are answered in order on the same connection
/// (pingora-core's session, `--http1-path lean`, closes after the first instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    bounded(async {
        let echo = Echo::start("pipe").await;
        let port = free_port();
        let p = meridian_proxy::ProxyHandle::start(meridian_proxy::ProxyConfig {
            http1_path: meridian_proxy::Http1Path::Own,
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
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let all = format!(
            "{}POST /two HTTP/1.1\r\nhost: wire.test\r\ncontent-length: 5\r\n\r\nhello{}",
            get_request("/one", ""),
            get_request("/three", "")
        );
        tcp.write_all(all.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        for path in ["/one", "/two", "/three"] {
            let r = read_response(&mut tcp, &mut buf).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.json()["path"], path);
            assert_eq!(r.header("connection"), Some("keep-alive"), "{path}");
        }
        assert_eq!(echo.count(), 3);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_both_ways_arrive_whole_on_a_kept_alive_connection() {
    bounded(async {
        let addr = bulk_backend().await;
        let (p, port) = proxy_to(raw_backend(addr)).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = Vec::new();
        // Sizes around the write buffer and far beyond it.
        for n in [1, 1459, 1460, 1461, 3000, 1_048_579] {
            tcp.write_all(get_request(&format!("/big/{n}"), "").as_bytes())
                .await
                .unwrap();
            let r = read_response(&mut tcp, &mut buf).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), n, "body of /big/{n}");
            assert!(
                r.body.iter().enumerate().all(|(i, &b)| b == pattern(i)),
                "body of /big/{n} corrupted"
            );
        }
        let upload: Vec<u8> = (0..2_000_003).map(pattern).collect();
        let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
        let head = format!(
            "POST /up HTTP/1.1\r\nhost: wire.test\r\ncontent-length: {}\r\n\r\n",
            upload.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&upload).await.unwrap();
        let r = read_response(&mut tcp, &mut buf).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!("len={} sum={sum}", upload.len())
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_chunks_are_not_held_back() {
    bounded(async {
        // A backend that sends the first chunk, then holds the rest until told to go on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let go_on = Arc::new(Notify::new());
        let release = go_on.clone();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            fill_until(&mut tcp, &mut buf, b"\r\n\r\n").await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .unwrap();
            release.notified().await;
            tcp.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
        });
        let (p, port) = proxy_to(raw_backend(addr)).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(get_request("/stream", "").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(RESPONSE_TIMEOUT, fill_until(&mut tcp, &mut buf, b"first"))
            .await
            .expect("the first chunk was held back until the body ended");
        go_on.notify_one();
        let mut rest = Vec::new();
        tokio::time::timeout(RESPONSE_TIMEOUT, async {
            while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let k = tcp.read(&mut chunk).await.unwrap();
                assert!(k > 0, "closed before the last chunk");
                buf.extend_from_slice(&chunk[..k]);
            }
        })
        .await
        .expect("the rest of the body did not arrive");
        rest.extend_from_slice(&buf);
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("second"), "{text}");
        p.shutdown().await;
    })
    .await;
}

mod tls {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use openssl::x509::{X509, X509NameBuilder};

    fn self_signed(cn: &str) -> (String, String) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (
            String::from_utf8(b.build().to_pem().unwrap()).unwrap(),
            String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        )
    }

    async fn connect(port: u16) -> impl AsyncRead + AsyncWrite + Unpin {
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector.set_verify(SslVerifyMode::NONE);
        connector.set_alpn_protos(b"\x08http/1.1").unwrap();
        let ssl = connector
            .build()
            .configure()
            .unwrap()
            .into_ssl("wire.test")
            .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut tls = pingora_core::tls::tokio_ssl::SslStream::new(ssl, tcp).unwrap();
        std::pin::Pin::new(&mut tls).connect().await.unwrap();
        tls
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_keep_alive_small_and_large_responses_arrive() {
        bounded(async {
            let addr = bulk_backend().await;
            let (cert, key) = self_signed("wire.test");
            let port = free_port();
            let p = proxy().await;
            let listener = json!({
                "name": "https", "address": "127.0.0.1", "port": port, "protocol": "HTTPS",
                "tls": {"certificates": [{"certPem": cert, "keyPem": key}]},
                "routes": [{"namespace": "default", "name": "r",
                            "rules": [prefix_rule("/", vec![raw_backend(addr)])]}],
            });
            p.apply(snapshot(1, vec![listener])).await.unwrap();
            let mut tls = connect(port).await;
            let mut buf = Vec::new();
            for n in [10, 1460, 70_000, 5, 1_000_001] {
                tls.write_all(get_request(&format!("/big/{n}"), "").as_bytes())
                    .await
                    .unwrap();
                let r = read_response(&mut tls, &mut buf).await;
                assert_eq!(r.status, 200);
                assert_eq!(r.body.len(), n);
                assert!(r.body.iter().enumerate().all(|(i, &b)| b == pattern(i)));
                assert!(r.header("content-length").is_some());
            }
            p.shutdown().await;
        })
        .await;
    }
}
