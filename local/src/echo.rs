//! `meridian echo`: the demo backend.
//!
//! Every answer says who served it (name, cluster, region, zone) and what it received (method,
//! path with query, Host, headers), so demos, drills and end-to-end tests can see where traffic
//! went and what the proxy changed. Test hooks, all opt-in per request:
//! - `?delay=<ms>` waits before answering (capped at 30 s);
//! - header `x-echo-status: <code>` answers with that status;
//! - header `x-echo-response-headers: name=value,name2=value2` adds response headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Arguments of `meridian echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Name reported in every answer.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Cluster reported in every answer.
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Region reported in every answer.
    #[arg(long, default_value = "")]
    pub region: String,
    /// Zone reported in every answer.
    #[arg(long, default_value = "")]
    pub zone: String,
}

#[derive(serde::Serialize)]
struct Answer<'a> {
    name: &'a str,
    cluster: &'a str,
    region: &'a str,
    zone: &'a str,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    protocol: String,
    headers: serde_json::Map<String, serde_json::Value>,
}

/// Why the echo backend stopped.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The listen address could not be bound.
    #[error("binding {listen} (is the port in use?)")]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct Identity {
    name: String,
    cluster: String,
    region: String,
    zone: String,
}

/// Serves until the process is stopped. Speaks HTTP/1.1 and h2c.
pub async fn run(args: EchoArgs) -> Result<(), EchoError> {
    let listener = bind(args.listen).await?;
    serve(listener, args).await
}

/// Binds the backend's socket (split from [`serve`] so a caller knows the socket is *ours*
/// before it counts the backend as up: a connect probe alone may reach whoever else holds the
/// port).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, EchoError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| EchoError::Bind { listen, source })
}

/// Serves on a socket from [`bind`] until the task is dropped.
pub async fn serve(listener: TcpListener, args: EchoArgs) -> Result<(), EchoError> {
    let id = Arc::new(Identity {
        name: args.name,
        cluster: args.cluster,
        region: args.region,
        zone: args.zone,
    });
    tracing::info!(listen = %args.listen, name = %id.name, "echo backend serving");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(id.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The per-request test hooks (module docs), read from the request.
struct Hooks {
    /// `?delay=<ms>`, capped at 30 s.
    delay: Option<Duration>,
    /// `x-echo-status`, else 200.
    status: StatusCode,
    /// `x-echo-response-headers`, as given (invalid names or values are skipped when answering).
    extra: Vec<(String, String)>,
}

impl Hooks {
    fn of(req: &Request<Incoming>) -> Self {
        let delay = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay=")))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms.min(30_000)));
        let status = req
            .headers()
            .get("x-echo-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        let extra = req
            .headers()
            .get("x-echo-response-headers")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            delay,
            status,
            extra,
        }
    }
}

/// The request's headers as JSON; repeated headers are joined with commas.
fn received_headers(req: &Request<Incoming>) -> serde_json::Map<String, serde_json::Value> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(old)) => {
                old.push(',');
                old.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), serde_json::Value::String(v));
            }
        }
    }
    headers
}

/// The JSON body: who answered, then what was received.
fn describe(id: &Identity, req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // Who answered comes first, so a human reading curl output sees it at once.
    serde_json::to_string(&Answer {
        name: &id.name,
        cluster: &id.cluster,
        region: &id.region,
        zone: &id.zone,
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        host: &host,
        protocol: format!("{:?}", req.version()),
        headers: received_headers(req),
    })
    .unwrap_or_default()
}

async fn answer(
    id: Arc<Identity>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let hooks = Hooks::of(&req);
    let body = describe(&id, &req);
    // Drain the request body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    if let Some(delay) = hooks.delay {
        tokio::time::sleep(delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hooks.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for (k, v) in hooks.extra {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    Ok(resp)
}
