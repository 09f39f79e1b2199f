//! Test helpers: snapshot builders, clients and a flaky raw server; the echo backend, free ports
//! and bounded waits come from `meridian-test-support`. Loopback only, ephemeral ports, every
//! wait bounded.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::Snapshot;
use meridian_proxy::{ProxyConfig, ProxyHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub mod mesh;

// Not every test binary that includes this module uses all of these.
#[allow(unused_imports)]
pub use meridian_test_support::{Echo, eventually, free_port};

/// Default bound for every test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one wait for something a test set in motion.
pub const WAIT: Duration = Duration::from_secs(5);

/// The sum of every sample in the metrics `text` whose line starts with `prefix` (a name, or a
/// name with labels); 0 when there is none.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A backend JSON with endpoints.
pub fn backend(name: &str, weight: u32, endpoints: Vec<Value>) -> Value {
    json!({
        "name": name,
        "weight": weight,
        "target": {"type": "endpoints", "endpoints": endpoints},
    })
}

/// A backend that points at one echo server.
pub fn echo_backend(e: &Echo, weight: u32) -> Value {
    backend(&e.name, weight, vec![e.endpoint()])
}

/// A rule with one `PathPrefix` match.
pub fn prefix_rule(prefix: &str, backends: Vec<Value>) -> Value {
    json!({
        "matches": [{"path": {"type": "pathPrefix", "value": prefix}}],
        "backends": backends,
    })
}

/// One HTTP listener on 127.0.0.1:`port` with one route holding `rules`.
pub fn http_snapshot(generation: u64, port: u16, rules: Vec<Value>) -> Snapshot {
    snapshot(generation, vec![http_listener("http", port, None, rules)])
}

/// An HTTP listener JSON.
pub fn http_listener(name: &str, port: u16, hostname: Option<&str>, rules: Vec<Value>) -> Value {
    let mut l = json!({
        "name": name,
        "address": "127.0.0.1",
        "port": port,
        "protocol": "HTTP",
        "routes": [{"namespace": "default", "name": "r", "rules": rules}],
    });
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

/// A snapshot with one Gateway `default/gw` holding `listeners`.
pub fn snapshot(generation: u64, listeners: Vec<Value>) -> Snapshot {
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "gateways": [{"namespace": "default", "name": "gw", "listeners": listeners}],
    }))
    .unwrap()
}

/// Worker threads of the proxies these helpers start: `MERIDIAN_TEST_WORKERS` (e.g. `2` runs a
/// whole test file on the worker model), else 0 (connections on the test's own runtime).
pub fn workers() -> usize {
    std::env::var("MERIDIAN_TEST_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts a proxy with an admin listener on an ephemeral port.
pub async fn proxy() -> ProxyHandle {
    ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        workers: workers(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A plain HTTP/1.1 client that never follows redirects and ignores proxy variables.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `http://127.0.0.1:port{path}` with extra headers; returns status, headers and JSON body
/// (Null when the body is not JSON).
pub async fn get(
    c: &reqwest::Client,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = c.get(format!("http://127.0.0.1:{port}{path}"));
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        h,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// A raw HTTP/1.1 server that drops the first `failures` connections after reading the request
/// (closes without a response), then answers `200 ok` and closes. Returns its address and a connection counter.
pub async fn flaky_server(failures: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                if n < failures {
                    // Close without answering: the connection dies before any response.
                    return;
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, count)
}

/// GET `url` with headers: status, served-by header, body text.
pub async fn get_url(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut rb = c.get(url);
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let served_by = resp
        .headers()
        .get("x-meridian-served-by")
        .map(|v| v.to_str().unwrap().to_string());
    (status, served_by, resp.text().await.unwrap())
}

/// The echo's name in a JSON body.
pub fn answered_by(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["name"]
        .as_str()
        .unwrap_or("")
        .to_string()
}
