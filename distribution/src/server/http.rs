//! HTTP over TLS: accepting connections, routing requests to their handlers, reading bounded
//! JSON bodies and writing plain-text answers.
//!
//! ```text
//! accept_loop ─► one task per connection: TLS handshake (module `tls`) ─► verified Peer?
//!   ─► HTTP/1.1 (10 s header timeout, ends on shutdown)
//!   handle ─┬─ GET  /healthz, /metrics                       (no client certificate needed)
//!           ├─ POST /v1/certificate ─► CertificateRequest ─► module `certificate`
//!           ├─ POST /v1/stream|ack|traffic without a proxy certificate ─► 401
//!           ├─ POST /v1/* while not the leader (ServerConfig::serving) ─► 503, Retry-After: 1,
//!           │                                                    Connection: close
//!           ├─ POST /v1/stream  ─► StreamHello ─► check_hello (400) ─► authorize_hello (403) ─► stream::open
//!           ├─ POST /v1/ack     ─► Ack    ─► own id? (403) ─► registry ack (204 | 404)
//!           ├─ POST /v1/traffic ─► report ─► own id? (403) ─► check_traffic (400)
//!           │                                 ─► traffic report (204 | 400 implausible | 404)
//!           └─ anything else ─► 405 / 404
//! ```
//!
//! Bodies are bounded before they are read when the client declares their length, and while
//! they are read otherwise (`413`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Inner;
use super::authorize::{Forbidden, authorize_hello, proxy_of, same_proxy};
use super::registry::check_hello;
use super::traffic::{ReportError, check_traffic};
use crate::pki::{Peer, verified_peer};
use crate::protocol::{Ack, CertificateRequest, StreamHello, TrafficReport};

/// Largest accepted `Hello`, `Ack` or certificate request body.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest accepted `TrafficReport` body (a proxy with thousands of Gateways stays well under).
const MAX_TRAFFIC_BODY: usize = 1024 * 1024;

/// Body of every response: a plain text or a stream of lines.
pub(super) type ResBody = UnsyncBoxBody<Bytes, Infallible>;

/// Who is on the other end of a connection.
struct Conn {
    /// What its verified certificate names (`None`: it presented none).
    peer: Option<Peer>,
    /// Where it connects from.
    addr: SocketAddr,
}

/// Accepts connections until `stop` fires.
pub(super) async fn accept_loop(
    listener: TcpListener,
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(serve_connection(tcp, peer, inner.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "distribution accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!("distribution server stopped");
}

/// Serves one connection until it ends or the server stops.
async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::select! {
        r = super::tls::handshake(&inner, tcp) => r,
        _ = stop.changed() => return,
    };
    let tls = match tls {
        Ok(s) => s,
        Err(reason) => {
            inner
                .metrics
                .handshake_failures
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(peer = %addr, reason, "distribution TLS handshake failed");
            return;
        }
    };
    let conn = Arc::new(Conn {
        peer: verified_peer(tls.ssl(), inner.ca.trust_domain()),
        addr,
    });
    let stop_feed = stop.clone();
    let svc = service_fn(move |req| {
        let (inner, stop, conn) = (inner.clone(), stop_feed.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handle(inner, req, &conn, stop).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), svc);
    tokio::select! {
        r = http => if let Err(e) = r {
            tracing::debug!(peer = %addr, error = %e, "distribution connection ended");
        },
        // Dropping the connection closes the socket: proxies see the server go.
        _ = stop.changed() => {}
    }
}

/// Routes one request.
async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    conn: &Conn,
    stop: watch::Receiver<bool>,
) -> Response<ResBody> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => metrics(&inner),
        (&Method::POST, "/v1/certificate") => certificate(&inner, req, conn).await,
        (&Method::POST, "/v1/stream" | "/v1/ack" | "/v1/traffic") => {
            let who = match proxy_of(conn.peer.as_ref()) {
                Ok(who) => who,
                Err(message) => return unauthorized(&inner, &path, message),
            };
            if !inner.serving() {
                return not_leader();
            }
            match path.as_str() {
                "/v1/stream" => stream(inner, req, who, conn, stop).await,
                "/v1/ack" => ack(&inner, req, who).await,
                _ => traffic(&inner, req, who).await,
            }
        }
        (_, "/v1/stream" | "/v1/ack" | "/v1/traffic" | "/v1/certificate") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /v1/stream, POST /v1/ack, POST /v1/traffic, POST /v1/certificate, \
             GET /healthz, GET /metrics\n",
        ),
    }
}

/// `GET /metrics`.
fn metrics(inner: &Inner) -> Response<ResBody> {
    match inner.metrics.render() {
        Ok(t) => text(StatusCode::OK, t),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics encoding failed: {e}\n"),
        ),
    }
}

/// `401` for a `/v1/*` request without a proxy's client certificate.
fn unauthorized(inner: &Inner, path: &str, message: &'static str) -> Response<ResBody> {
    inner.metrics.unauthorized.with_label_values(&[path]).inc();
    tracing::warn!(path, "request without a proxy client certificate refused");
    text(StatusCode::UNAUTHORIZED, message)
}

/// `403` for a request the certificate does not allow.
fn forbidden(f: Forbidden) -> Response<ResBody> {
    text(StatusCode::FORBIDDEN, format!("{}\n", f.message))
}

/// `503` from a follower: the proxy's client retries soon; through a Service the next
/// connection may reach the leader. The connection is closed (`Connection: close`): a client
/// reusing it would only ever reach this replica again.
fn not_leader() -> Response<ResBody> {
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, super::NOT_LEADER);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    resp.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// `POST /v1/stream`: opens the stream of a valid hello the certificate allows.
async fn stream(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    who: &crate::pki::ProxyIdentity,
    conn: &Conn,
    stop: watch::Receiver<bool>,
) -> Response<ResBody> {
    let stream_hello: StreamHello = match read_json(req, MAX_REQUEST_BODY).await {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let patches = stream_hello.patches();
    let hello = stream_hello.hello;
    if let Err(e) = check_hello(&hello) {
        return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    if let Err(f) = authorize_hello(who, &hello, conn.addr.ip(), inner.addresses.as_ref()) {
        inner
            .metrics
            .hello_refused
            .with_label_values(&[f.reason])
            .inc();
        tracing::warn!(%who, reason = f.reason, message = %f.message, "hello refused");
        return forbidden(f);
    }
    super::stream::open(inner, hello, patches, stop)
}

/// `POST /v1/ack`: only for the certificate's own proxy.
async fn ack(
    inner: &Inner,
    req: Request<Incoming>,
    who: &crate::pki::ProxyIdentity,
) -> Response<ResBody> {
    let ack: Ack = match read_json(req, MAX_REQUEST_BODY).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if let Err(f) = same_proxy(who, &ack.proxy_id) {
        tracing::warn!(%who, message = %f.message, "ack refused");
        return forbidden(f);
    }
    match inner.ack(ack) {
        Ok(()) => text(StatusCode::NO_CONTENT, ""),
        Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
    }
}

/// `POST /v1/traffic`: only for the certificate's own proxy, only plausible counters.
async fn traffic(
    inner: &Inner,
    req: Request<Incoming>,
    who: &crate::pki::ProxyIdentity,
) -> Response<ResBody> {
    let report: TrafficReport = match read_json(req, MAX_TRAFFIC_BODY).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(f) = same_proxy(who, &report.proxy_id) {
        inner
            .metrics
            .traffic_refused
            .with_label_values(&[f.reason])
            .inc();
        return forbidden(f);
    }
    if let Err(e) = check_traffic(&report) {
        inner
            .metrics
            .traffic_refused
            .with_label_values(&[e.reason()])
            .inc();
        return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    match inner.report(report) {
        Ok(()) => text(StatusCode::NO_CONTENT, ""),
        Err(ReportError::Unknown(e)) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(ReportError::Implausible(e)) => {
            inner
                .metrics
                .traffic_refused
                .with_label_values(&[e.reason()])
                .inc();
            tracing::warn!(%who, error = %e, "implausible traffic report refused");
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}

/// `POST /v1/certificate`: a first certificate or a renewal.
async fn certificate(inner: &Inner, req: Request<Incoming>, conn: &Conn) -> Response<ResBody> {
    let headers = req.headers().clone();
    let body: CertificateRequest = match read_json(req, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match inner.certificate(body, conn.peer.as_ref(), &headers).await {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(json) => {
                let mut resp = Response::new(Full::new(Bytes::from(json)).boxed_unsync());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp.headers_mut().insert(
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                resp
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the certificate: {e}\n"),
            ),
        },
        Err(r) => {
            let mut resp = text(r.status, r.message);
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    http::HeaderValue::from(super::certificate::RETRY_AFTER_SECS),
                );
            }
            if r.status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

/// A plain-text answer.
fn text(status: StatusCode, body: impl Into<String>) -> Response<ResBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Reads a JSON body of at most `limit` bytes; the error is the answer to send.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<ResBody>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large: at most {limit} bytes\n"),
        )
    };
    // Refused before reading when the client says how much it will send.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}\n"),
                )
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}\n")))
}
