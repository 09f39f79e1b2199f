//! Test helpers: a hyper-1 echo backend, snapshot builders and clients. Loopback only, ephemeral
//! ports, every wait bounded.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_model::Snapshot;
use meridian_proxy::{ProxyConfig, ProxyHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Default bound for every test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the echo backend saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub headers: HashMap<String, String>,
    pub version: String,
}

/// A running echo backend.
///
/// Answers JSON `{name, method, path, host, version, headers}`. Request controls:
/// - `?delay=MS` in the query: wait before answering;
/// - `x-echo-status: CODE`: answer with that status;
/// - `x-echo-response-header: Name=value` (repeatable): add that response header;
/// - `x-echo-fail-times: N` + `x-echo-id: ID`: the first N requests with that id answer
///   `x-echo-fail-status` (default 500), later ones 200.
#[derive(Clone)]
pub struct Echo {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Echo {
    pub async fn start(name: &str) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let failures: Arc<Mutex<HashMap<String, u32>>> = Default::default();
        let (n, s, f) = (name.to_string(), seen.clone(), failures.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (n, s, f) = (n.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, s, f) = (n.clone(), s.clone(), f.clone());
                        async move { Ok::<_, Infallible>(echo(req, &n, &s, &f).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Echo {
            name: name.to_string(),
            addr,
            seen,
            failures,
            task: Arc::new(task),
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting (the port is closed; connections in flight may finish).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Endpoint JSON for snapshots.
    pub fn endpoint(&self) -> Value {
        json!({"address": self.addr.ip().to_string(), "port": self.addr.port()})
    }
}

async fn echo(
    mut req: Request<hyper::body::Incoming>,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    failures: &Mutex<HashMap<String, u32>>,
) -> Response<Full<Bytes>> {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("").to_string();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|old| {
                old.push(',');
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let host = headers
        .get("host")
        .cloned()
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let s = Seen {
        method: req.method().to_string(),
        path: path.clone(),
        host: host.clone(),
        headers: headers.clone(),
        version: format!("{:?}", req.version()),
    };
    seen.lock().unwrap().push(s.clone());

    // `Upgrade: websocket`: switch protocols and echo raw bytes back, prefixed with our name.
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let name = name.to_string();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return resp;
    }

    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            if let Some(ms) = pair.strip_prefix("delay=") {
                let ms: u64 = ms.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
    let mut status: u16 = headers
        .get("x-echo-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    if let (Some(times), Some(id)) = (headers.get("x-echo-fail-times"), headers.get("x-echo-id")) {
        let times: u32 = times.parse().unwrap_or(0);
        let mut f = failures.lock().unwrap();
        let n = f.entry(id.clone()).or_insert(0);
        *n += 1;
        if *n <= times {
            status = headers
                .get("x-echo-fail-status")
                .and_then(|v| v.parse().ok())
                .unwrap_or(500);
        }
    }
    let body = json!({
        "name": name,
        "method": s.method,
        "path": path,
        "host": host,
        "version": s.version,
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for v in req.headers().get_all("x-echo-response-header") {
        if let Some((n, val)) = v.to_str().unwrap_or("").split_once('=') {
            resp.headers_mut().append(
                http::HeaderName::from_bytes(n.trim().as_bytes()).unwrap(),
                val.trim().parse().unwrap(),
            );
        }
    }
    resp
}

/// A free loopback port (bound then released; snapshots cannot use port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Starts a proxy with an admin listener on an ephemeral port.
pub async fn proxy() -> ProxyHandle {
    ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
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

/// Waits (bounded) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
