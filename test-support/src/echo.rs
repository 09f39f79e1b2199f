//! An in-process HTTP backend for proxy and distribution tests: it answers with what it received
//! (as JSON) and records every request, so a test can see which backend a request reached and
//! what the proxy changed on the way.
//!
//! Speaks HTTP/1.1 and h2c, upgrades `websocket` requests to a byte echo, and binds an ephemeral
//! loopback port. `meridian echo` (local/src/echo.rs) is the demo's backend with a different
//! contract (identity fields, no recording); this one is for tests only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

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
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Echo {
    /// Starts a backend named `name` on an ephemeral loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken test machine).
    pub async fn start(name: &str) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("echo {name}: binding loopback: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("echo {name}: {e}"));
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let failures: Arc<Mutex<HashMap<String, u32>>> = Default::default();
        let (n, s, f) = (name.to_string(), seen.clone(), failures.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
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
            task: Arc::new(task),
        }
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every request it received, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(s.clone());

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
        resp.headers_mut().insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
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
        let mut f = failures.lock().unwrap_or_else(PoisonError::into_inner);
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
    // A status or header the test asked for that HTTP cannot carry is the test's mistake: the
    // answer says so (400) instead of killing the connection.
    let Ok(code) = hyper::StatusCode::from_u16(status) else {
        return bad_request(format!("x-echo status {status} is not an HTTP status"));
    };
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for v in req.headers().get_all("x-echo-response-header") {
        if let Some((n, val)) = v.to_str().unwrap_or("").split_once('=') {
            match (
                http::HeaderName::from_bytes(n.trim().as_bytes()),
                http::HeaderValue::from_str(val.trim()),
            ) {
                (Ok(n), Ok(val)) => {
                    resp.headers_mut().append(n, val);
                }
                _ => {
                    return bad_request(format!("x-echo-response-header {n}={val} is not a header"));
                }
            }
        }
    }
    resp
}

fn bad_request(why: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(why)));
    *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
    resp
}
