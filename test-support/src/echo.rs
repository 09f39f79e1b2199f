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

/// Answers one request: record it, then either switch to a byte echo (`Upgrade: websocket`) or
/// answer with what was received after the delay and status the request asked for.
async fn echo(
    mut req: Request<hyper::body::Incoming>,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    failures: &Mutex<HashMap<String, u32>>,
) -> Response<Full<Bytes>> {
    let s = Seen::of(&req);
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(s.clone());
    if is_websocket(&req) {
        return byte_echo(&mut req, name);
    }
    delay_if_asked(req.uri().query()).await;
    let status = requested_status(&s.headers, failures);
    answer(name, &s, status, &req)
}

impl Seen {
    /// What a request carries: repeated headers are joined with commas.
    fn of(req: &Request<hyper::body::Incoming>) -> Seen {
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
        Seen {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            host,
            headers,
            version: format!("{:?}", req.version()),
        }
    }
}

fn is_websocket(req: &Request<hyper::body::Incoming>) -> bool {
    req.headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Switches protocols and echoes raw bytes back, each chunk prefixed with `name:`.
fn byte_echo(req: &mut Request<hyper::body::Incoming>, name: &str) -> Response<Full<Bytes>> {
    let on_upgrade = hyper::upgrade::on(req);
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
    resp
}

/// Longest `?delay=` honoured: a test asking for more has a typo, not a reason.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Waits as long as `?delay=MS` asks (on tokio time, so paused-clock tests wait for nothing).
async fn delay_if_asked(query: Option<&str>) {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("delay="))
        .map(|ms| Duration::from_millis(ms.parse().unwrap_or(0)));
    for delay in asked {
        tokio::time::sleep(delay.min(MAX_DELAY)).await;
    }
}

/// `x-echo-status` (default 200), unless `x-echo-fail-times` asks this request (counted per
/// `x-echo-id`) to fail with `x-echo-fail-status` (default 500).
fn requested_status(
    headers: &HashMap<String, String>,
    failures: &Mutex<HashMap<String, u32>>,
) -> u16 {
    let status = headers
        .get("x-echo-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (Some(times), Some(id)) = (headers.get("x-echo-fail-times"), headers.get("x-echo-id"))
    else {
        return status;
    };
    let times: u32 = times.parse().unwrap_or(0);
    let mut f = failures.lock().unwrap_or_else(PoisonError::into_inner);
    let n = f.entry(id.clone()).or_insert(0);
    *n += 1;
    if *n > times {
        return status;
    }
    headers
        .get("x-echo-fail-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// The JSON answer with `status` and the `x-echo-response-header`s asked for. A status or header
/// that HTTP cannot carry is the test's mistake: the answer says so (400) instead of killing the
/// connection.
fn answer(
    name: &str,
    s: &Seen,
    status: u16,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let body = json!({
        "name": name,
        "method": s.method,
        "path": s.path,
        "host": s.host,
        "version": s.version,
        "headers": s.headers,
    });
    let Ok(code) = hyper::StatusCode::from_u16(status) else {
        return bad_request(format!("x-echo status {status} is not an HTTP status"));
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for v in req.headers().get_all("x-echo-response-header") {
        let Some((n, val)) = v.to_str().unwrap_or("").split_once('=') else {
            continue;
        };
        match (
            http::HeaderName::from_bytes(n.trim().as_bytes()),
            http::HeaderValue::from_str(val.trim()),
        ) {
            (Ok(n), Ok(val)) => {
                resp.headers_mut().append(n, val);
            }
            _ => return bad_request(format!("x-echo-response-header {n}={val} is not a header")),
        }
    }
    resp
}

fn bad_request(why: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(why)));
    *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.1 request with `headers` (`Name: value` lines); the whole response as text.
    async fn get(echo: &Echo, path: &str, headers: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(echo.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_with_what_it_saw_and_records_it() {
        let echo = Echo::start("e1").await;
        let out = get(&echo, "/p?q=1", "x-a: 1\r\nx-a: 2\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let body: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["name"], "e1");
        assert_eq!(body["path"], "/p?q=1");
        assert_eq!(body["headers"]["x-a"], "1,2");
        let seen = echo.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].host.as_deref()),
            ("GET", Some("h"))
        );
    }

    #[tokio::test]
    async fn fails_as_often_as_asked_then_answers_and_refuses_impossible_asks() {
        let echo = Echo::start("e2").await;
        let flaky = "x-echo-fail-times: 2\r\nx-echo-id: a\r\nx-echo-fail-status: 503\r\n";
        for want in ["503", "503", "200"] {
            let out = get(&echo, "/", flaky).await;
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{out}");
        }
        let out = get(&echo, "/", "x-echo-status: 1000\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let out = get(&echo, "/", "x-echo-response-header: bad name=v\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let out = get(&echo, "/", "x-echo-response-header: x-b=v\r\n").await;
        assert!(out.to_ascii_lowercase().contains("\r\nx-b: v\r\n"), "{out}");
        assert_eq!(echo.count(), 6);
    }
}
