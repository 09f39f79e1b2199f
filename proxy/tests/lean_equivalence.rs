//! The lean HTTP/1 path (on pingora-core's sessions and on our own codec) and pingora-proxy's
//! framework path give the same answers: one proxy of each (`ProxyConfig::http1_path`), the same snapshot (but for the listener port) over the same
//! backends, the same raw requests. For every request the status, the body, the response headers
//! that matter and what the backend saw (method, path, headers, body) must be equal, once the
//! values that differ by nature (the listener port, each proxy's `Via` id, `Date`) are masked.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use meridian_proxy::{Http1Path, ProxyConfig, ProxyHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response headers compared (the rest is either fixed by the proxy or differs by nature).
const COMPARED: &[&str] = &[
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "connection",
    "content-length",
    "content-type",
    "location",
    "transfer-encoding",
    "vary",
    "x-meridian-served-by",
    "x-resp-add",
    "x-resp-remove",
    "x-resp-set",
    "x-custom",
];

/// One answer as a client sees it.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Reads one response from `s` (the answer to a `head_only` request has no body).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
    let mut headers = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, v) = l.split_once(':').unwrap();
        headers
            .entry(n.trim().to_ascii_lowercase())
            .and_modify(|old: &mut String| {
                old.push(',');
                old.push_str(v.trim());
            })
            .or_insert_with(|| v.trim().to_string());
    }
    let body = if head_only || matches!(status, 204 | 304) || status < 200 {
        Vec::new()
    } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let want = buf.len() + 1;
                fill(s, buf, want).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            buf.drain(..line_end + 2);
            fill(s, buf, size + 2).await;
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break body;
            }
        }
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().unwrap();
        fill(s, buf, len).await;
        buf.drain(..len).collect()
    } else {
        // Close-delimited.
        loop {
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break std::mem::take(buf);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    headers.retain(|k, _| COMPARED.contains(&k.as_str()));
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Reads from `s` until `buf` holds `want` bytes.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) {
    let mut chunk = [0u8; 4096];
    while buf.len() < want {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed inside a body");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `requests` (raw, `{PORT}` replaced) on one connection and reads an answer to each.
async fn exchange(port: u16, requests: &[&str]) -> Vec<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for r in requests {
        let r = r.replace("{PORT}", &port.to_string());
        s.write_all(r.as_bytes()).await.unwrap();
        answers.push(read_response(&mut s, &mut buf, r.starts_with("HEAD ")).await);
    }
    answers
}

/// The rules of the catalogue: matches, redirects, filters, rewrites, weights, failures.
fn catalogue(a: &Echo, b: &Echo) -> Vec<Value> {
    vec![
        json!({"matches": [{"path": {"type": "exact", "value": "/exact"}}],
               "backends": [echo_backend(a, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/h"},
                            "headers": [{"name": "X-Version", "value": "two"}]}],
               "backends": [echo_backend(b, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/m"}, "method": "POST"}],
               "backends": [echo_backend(b, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/redirect"}}],
               "filters": [{"type": "requestRedirect", "statusCode": 301,
                            "path": {"type": "replacePrefixMatch", "value": "/moved"}}]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/scheme"}}],
               "filters": [{"type": "requestRedirect", "scheme": "https", "hostname": "example.org"}]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/edit"}}],
               "filters": [
                   {"type": "requestHeaderModifier",
                    "set": [{"name": "X-Header-Set", "value": "set"}],
                    "add": [{"name": "X-Header-Add", "value": "added"}],
                    "remove": ["X-Header-Remove"]},
                   {"type": "responseHeaderModifier",
                    "set": [{"name": "X-Resp-Set", "value": "set"}],
                    "add": [{"name": "X-Resp-Add", "value": "added"}],
                    "remove": ["X-Resp-Remove"]}],
               "backends": [echo_backend(a, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/rewrite"}}],
               "filters": [{"type": "urlRewrite", "hostname": "rewritten.example",
                            "path": {"type": "replacePrefixMatch", "value": "/new"}}],
               "backends": [echo_backend(b, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/invalid"}}],
               "backends": [{"name": "bad", "weight": 1,
                             "target": {"type": "invalid", "reason": "no such Service"}}]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/none-ready"}}],
               "backends": [backend("nothing", 1, vec![])]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/retry"}}],
               "retry": {"codes": [503], "attempts": 2},
               "backends": [echo_backend(a, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/timeout"}}],
               "timeouts": {"requestMs": 100},
               "backends": [echo_backend(a, 1)]}),
        json!({"matches": [{"path": {"type": "pathPrefix", "value": "/cors"}}],
               "filters": [{"type": "cors", "allowOrigins": ["https://*.foo.com"],
                            "allowMethods": ["GET", "PUT"], "allowHeaders": ["x-a"],
                            "exposeHeaders": ["x-b"], "allowCredentials": true, "maxAge": 60}],
               "backends": [echo_backend(a, 1)]}),
        prefix_rule("/any", vec![echo_backend(a, 1)]),
    ]
}

/// The requests: each entry is one connection (several requests: keep-alive reuse).
const REQUESTS: &[&[&str]] = &[
    &["GET /exact?x=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /exact/more HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /h HTTP/1.1\r\nHost: gw.example\r\nX-Version: two\r\n\r\n"],
    &["POST /m HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 5\r\n\r\nhello"],
    &[
        "POST /m HTTP/1.1\r\nHost: gw.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ],
    &["GET /redirect/x?q=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /scheme HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &[
        "GET /edit HTTP/1.1\r\nHost: gw.example\r\nX-Header-Set: client\r\nX-Header-Add: client\r\n\
       X-Header-Remove: gone\r\nX-Echo-Response-Header: X-Resp-Add=original\r\n\
       X-Echo-Response-Header: X-Resp-Remove=bye\r\nX-Echo-Response-Header: X-Resp-Set=old\r\n\r\n",
    ],
    &["GET /rewrite/a?k=v HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /invalid HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /none-ready HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &[
        "GET /retry HTTP/1.1\r\nHost: gw.example\r\nX-Echo-Fail-Times: 1\r\nX-Echo-Id: eq-{PORT}\r\n\
       X-Echo-Fail-Status: 503\r\n\r\n",
    ],
    &["GET /retry HTTP/1.1\r\nHost: gw.example\r\nX-Echo-Status: 418\r\n\r\n"],
    &["GET /timeout?delay=1000 HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &[
        "OPTIONS /cors HTTP/1.1\r\nHost: gw.example\r\nOrigin: https://www.foo.com\r\n\
       Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: x-a\r\n\r\n",
        "OPTIONS /cors HTTP/1.1\r\nHost: gw.example\r\nOrigin: https://foo.evil\r\n\
       Access-Control-Request-Method: PUT\r\n\r\n",
        "GET /cors HTTP/1.1\r\nHost: gw.example\r\nOrigin: https://a.b.foo.com\r\n\r\n",
        "GET /cors HTTP/1.1\r\nHost: gw.example\r\nOrigin: https://foo.evil\r\n\r\n",
    ],
    &["HEAD /any HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /any HTTP/1.1\r\nHost: gw.example\r\nX-Echo-Status: 204\r\n\r\n"],
    &["GET /any HTTP/1.1\r\nHost: gw.example\r\nX-Echo-Status: 304\r\n\r\n"],
    &["GET /any HTTP/1.0\r\n\r\n"],
    &["GET /any HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n"],
    &[
        "GET /any HTTP/1.1\r\nHost: gw.example\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\
       Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Custom-Req: kept\r\n\r\n",
    ],
    &[
        "GET /any HTTP/1.1\r\nHost: gw.example\r\nX-Meridian-Backend: ns/x:80\r\nVia: 1.0 other\r\n\r\n",
    ],
    &["GET /any/../b/./c//d HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /any/x/../%41//y HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /%zz HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &["GET /any HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"],
    &["GET /any HTTP/1.1\r\nHost: gw.example\r\nConnection: host\r\n\r\n"],
    &["GET http://gw.example/any/abs HTTP/1.1\r\nHost: gw.example\r\n\r\n"],
    &[
        "GET /exact HTTP/1.1\r\nHost: gw.example\r\n\r\n",
        "POST /m HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 2\r\n\r\nhi",
        "GET /redirect HTTP/1.1\r\nHost: gw.example\r\n\r\n",
        "GET /none-ready HTTP/1.1\r\nHost: gw.example\r\n\r\n",
    ],
];

/// A proxy on `path` serving the catalogue on a fresh port.
async fn start(path: Http1Path, a: &Echo, b: &Echo) -> (ProxyHandle, u16) {
    let port = free_port();
    let p = ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        http1_path: path,
        ..Default::default()
    })
    .await
    .unwrap();
    p.apply(http_snapshot(1, port, catalogue(a, b)))
        .await
        .unwrap();
    (p, port)
}

/// Masks what differs by nature between the two proxies.
fn mask(text: &str, port: u16) -> String {
    let text = text.replace(&port.to_string(), "PORT");
    // `1.1 meridian-<8 hex digits>`, each proxy its own.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("meridian-") {
        let (before, after) = rest.split_at(i + "meridian-".len());
        out.push_str(before);
        let id_len = after
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count()
            .min(8);
        if id_len == 8 {
            out.push_str("ID");
            rest = &after[8..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What a backend saw, masked, in arrival order.
fn seen(e: &Echo, port: u16) -> Vec<String> {
    e.seen()
        .iter()
        .map(|s| {
            let headers: BTreeMap<_, _> = s.headers.iter().collect();
            mask(
                &format!("{} {} {:?} {:?}", s.method, s.path, s.host, headers),
                port,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_the_own_codec_and_the_framework_path_answer_the_catalogue_alike() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut results = Vec::new();
        for path in [Http1Path::Lean, Http1Path::Framework, Http1Path::Own] {
            let (a, b) = (Echo::start("a").await, Echo::start("b").await);
            let (p, port) = start(path, &a, &b).await;
            let mut answers = Vec::new();
            for conn in REQUESTS {
                for answer in exchange(port, conn).await {
                    answers.push(Answer {
                        status: answer.status,
                        headers: answer
                            .headers
                            .iter()
                            .map(|(k, v)| (k.clone(), mask(v, port)))
                            .collect(),
                        body: mask(&answer.body, port),
                    });
                }
            }
            results.push((answers, seen(&a, port), seen(&b, port)));
            p.shutdown().await;
        }
        let (lean, framework, own) = (&results[0], &results[1], &results[2]);
        for (other, name) in [(framework, "framework"), (own, "own codec")] {
            let mut asked = REQUESTS.iter().flat_map(|c| c.iter());
            for (l, o) in lean.0.iter().zip(&other.0) {
                let request = asked.next().unwrap();
                assert_eq!(l, o, "lean vs {name}: answer to {request:?}");
            }
            assert_eq!(lean.0.len(), other.0.len(), "lean vs {name}: answers");
            assert_eq!(lean.1, other.1, "lean vs {name}: what backend a saw");
            assert_eq!(lean.2, other.2, "lean vs {name}: what backend b saw");
        }
        // The catalogue exercises what it claims to: answers from both backends, the proxy's own
        // refusals, redirects, a retried request and a timeout.
        let statuses: Vec<u16> = lean.0.iter().map(|a| a.status).collect();
        for expected in [200, 204, 301, 302, 304, 400, 404, 418, 500, 503, 504] {
            assert!(
                statuses.contains(&expected),
                "no {expected} in {statuses:?}"
            );
        }
        assert!(!lean.1.is_empty() && !lean.2.is_empty());
        // The CORS preflight was answered by the proxy with the allow headers, the refused
        // origin's without them.
        let origins: Vec<Option<&str>> = lean
            .0
            .iter()
            .filter(|a| a.headers.contains_key("vary"))
            .map(|a| {
                a.headers
                    .get("access-control-allow-origin")
                    .map(String::as_str)
            })
            .collect();
        assert_eq!(
            origins,
            [
                Some("https://www.foo.com"),
                None,
                Some("https://a.b.foo.com"),
                None
            ]
        );
    })
    .await
    .expect("test exceeded its time bound");
}

/// Shutting down closes a kept-alive connection waiting for its next request at once on both
/// paths (the proxy's drain would otherwise wait for it until its drain timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_kept_alive_connections_on_every_path() {
    tokio::time::timeout(Duration::from_secs(60), async {
        for path in [Http1Path::Lean, Http1Path::Own, Http1Path::Framework] {
            let (a, b) = (Echo::start("a").await, Echo::start("b").await);
            let (p, port) = start(path, &a, &b).await;
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut buf = Vec::new();
            s.write_all(b"GET /exact HTTP/1.1\r\nHost: gw.example\r\n\r\n")
                .await
                .unwrap();
            let first = read_response(&mut s, &mut buf, false).await;
            assert_eq!(
                (first.status, first.headers["connection"].as_str()),
                (200, "keep-alive"),
                "{path:?}"
            );
            let started = std::time::Instant::now();
            p.shutdown().await;
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{path:?}: shutdown took {took:?}"
            );
            let mut rest = [0u8; 64];
            let n = tokio::time::timeout(WAIT, s.read(&mut rest))
                .await
                .unwrap()
                .unwrap_or(0);
            assert_eq!(n, 0, "{path:?}: the idle connection is still open");
        }
    })
    .await
    .expect("test exceeded its time bound");
}
