//! Where requests go and the keep-alive connections they go on.
//!
//! The pool hands out its *oldest* idle connection (first in, first out): when the generator
//! opened its connections up front (the benchmark, like `wrk -c N`), requests rotate over all
//! of them, so a server with several workers sees its load spread; when it opens them on demand
//! (the drill), a new one is opened only while every existing one is busy, so the count stays
//! at the load's real concurrency.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Answer, Failure, LoadError};

/// Where a load sends its `GET`s: the server to connect to, the path, the Host header.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Host name or address to connect to (no brackets around IPv6 addresses).
    host: String,
    port: u16,
    path: Uri,
    host_header: HeaderValue,
}

impl Endpoint {
    /// `http://HOST[:PORT]/PATH`, with `host` as the Host header if given (else the URL's
    /// authority, its port only when not 80, as HTTP clients send it).
    pub fn from_url(url: &Uri, host: Option<&str>) -> Result<Self, LoadError> {
        let bad = |why: &str| LoadError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        if url.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs (the load does not speak TLS)"));
        }
        let authority = url.authority().ok_or_else(|| bad("no HOST[:PORT]"))?;
        let port = authority.port_u16().unwrap_or(80);
        let default_host = match authority.port_u16() {
            Some(p) if p != 80 => authority.as_str(),
            _ => authority.host(),
        };
        let path = url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .map_err(|e| bad(&e.to_string()))?;
        Self::parts(
            authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            port,
            path,
            host.unwrap_or(default_host),
        )
    }

    /// `GET /` to `addr` with this Host header.
    pub fn loopback(addr: std::net::SocketAddr, host: &str) -> Result<Self, LoadError> {
        Self::parts(
            &addr.ip().to_string(),
            addr.port(),
            Uri::from_static("/"),
            host,
        )
    }

    fn parts(host: &str, port: u16, path: Uri, host_header: &str) -> Result<Self, LoadError> {
        let host_header =
            HeaderValue::from_str(host_header).map_err(|_| LoadError::HostHeader {
                host: host_header.to_string(),
            })?;
        Ok(Self {
            host: host.to_string(),
            port,
            path,
            host_header,
        })
    }

    /// `host:port` as connected to, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// One `GET`; nothing here can fail, every part was checked when the endpoint was made.
    pub(super) fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.path.clone();
        req.headers_mut().insert(HOST, self.host_header.clone());
        req
    }
}

type Conn = SendRequest<Empty<Bytes>>;

/// Keep-alive HTTP/1.1 connections to one endpoint.
pub(super) struct Pool {
    endpoint: Endpoint,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<Conn>>,
}

impl Pool {
    pub(super) fn new(endpoint: Endpoint, connect_timeout: Duration) -> Self {
        Self {
            endpoint,
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Opens `n` connections now (the benchmark: connecting is not part of what it measures).
    pub(super) async fn open_up_front(&self, n: usize) -> Result<(), LoadError> {
        for _ in 0..n {
            let conn = self.open().await?;
            self.check_in(conn);
        }
        Ok(())
    }

    /// A new connection: TCP (no Nagle), then the HTTP/1.1 handshake.
    async fn open(&self) -> Result<Conn, LoadError> {
        let address = self.endpoint.address();
        let connect = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port));
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| LoadError::ConnectTimeout {
                address: address.clone(),
                after: self.connect_timeout,
            })?
            .map_err(|source| LoadError::Connect {
                address: address.clone(),
                source,
            })?;
        tcp.set_nodelay(true).map_err(|source| LoadError::Connect {
            address: address.clone(),
            source,
        })?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| LoadError::Handshake { address, source })?;
        // The connection's own task: it ends when the server or the pool drops the connection.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// The oldest idle connection that still works, else a new one. A server may close a
    /// keep-alive connection after N requests (nginx's `keepalive_requests 1000`); it is
    /// replaced as a browser or wrk would, and the reconnect counts as the request's latency.
    pub(super) async fn check_out(&self) -> Result<Conn, LoadError> {
        let idle = self.lock().pop_front();
        if let Some(mut conn) = idle
            && conn.ready().await.is_ok()
        {
            return Ok(conn);
        }
        self.open().await
    }

    fn check_in(&self, conn: Conn) {
        if !conn.is_closed() {
            self.lock().push_back(conn);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Conn>> {
        // Nothing panics while holding the lock (push/pop only), so a poisoned lock still holds
        // a consistent queue.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends one `GET` on `conn` and reads the whole answer; the connection goes back to the
    /// pool if it can carry another request. A request the connection could not even start
    /// (the server closed it a moment ago) is sent once more on a new connection.
    pub(super) async fn get(&self, mut conn: Conn) -> Result<Answer, Failure> {
        let resp = match conn.try_send_request(self.endpoint.request()).await {
            Ok(resp) => resp,
            Err(mut e) => {
                let Some(req) = e.take_message() else {
                    return Err(Failure::Broken);
                };
                conn = self.open().await.map_err(|_| Failure::Connect)?;
                conn.send_request(req).await.map_err(|_| Failure::Broken)?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|_| Failure::Broken)?
            .to_bytes();
        self.check_in(conn);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// One `GET` on a connection of its own (the drill's preflight probes).
    pub(super) async fn get_once(&self) -> Result<Answer, Failure> {
        let conn = self.open().await.map_err(|_| Failure::Connect)?;
        self.get(conn).await
    }
}
