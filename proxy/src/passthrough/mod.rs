//! TLS passthrough listeners (snapshot [`Protocol::Tls`](meridian_model::snapshot::Protocol),
//! from a Gateway listener `protocol: TLS`, `tls.mode: Passthrough`, and its TLSRoutes): the
//! proxy reads the client's ClientHello, picks a route by its server name, connects to an
//! endpoint and relays the still-encrypted bytes both ways. It never terminates TLS: the client
//! sees the backend's certificate.
//!
//! ```text
//! accept (listeners.rs: the socket's protocol in the served snapshot is TLS)
//!   ─► read the ClientHello: at most MAX_HELLO (16 KiB) buffered, within the header timeout
//!      (--header-timeout); garbage, no server name, too large, too slow ⇒ closed, counted
//!   ─► route: meridian_model::sni (listener by SNI, then route: exact > longest wildcard);
//!      none ⇒ closed, counted (`no_route`)
//!   ─► backend by weight (CompiledRule::pick_backend); invalid (BackendNotFound, …) ⇒ closed
//!   ─► endpoint as for HTTP (endpoints::choose: same zone, region, failover tiers, ejected and
//!      drained ones skipped); a refused or timed-out connect ejects it and the next one is
//!      tried, before any byte goes upstream (at most one try per ready endpoint)
//!   ─► the buffered ClientHello written upstream, then both directions copied
//!      (tokio::io::copy_bidirectional) until either side closes or nothing moved for the idle
//!      timeout (--idle-timeout)
//! ```
//!
//! Each connection resolves its route once, from the snapshot served when its ClientHello
//! arrived: a new snapshot changes where *new* connections go and never cuts a relayed one
//! (they drain by ending on their own or idling out). A listener leaving the snapshot stops
//! accepting like an HTTP one (listeners.rs).
//!
//! Every connection ends with one `meridian_proxy_passthrough_connections_total{result}`:
//! `relayed`, `timeout`, `invalid` (not a ClientHello), `too_large`, `no_server_name`,
//! `bad_server_name`, `no_route`, `no_backend`, `connect_failed`, `closed` (the client left
//! before its ClientHello was whole), `idle` (relayed, then closed for idling).
//!
//! Not done here: east-west endpoints (another network's proxy) are skipped — they speak HTTP;
//! drills' drains and ejections apply, hedging and retries of sent bytes do not (nothing is
//! resent once the ClientHello went upstream).

pub(crate) mod client_hello;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use meridian_model::snapshot::BackendTarget;
use meridian_model::sni::{self, SniDecision};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::client_hello::{Hello, MAX_HELLO};
use crate::endpoints::{self, EndpointKey, Vantage};
use crate::limits::Limits;
use crate::state::Shared;

/// How a passthrough connection ended (the metric's `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Relayed,
    Idle,
    Timeout,
    Invalid,
    TooLarge,
    NoServerName,
    BadServerName,
    NoRoute,
    NoBackend,
    ConnectFailed,
    Closed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Relayed => "relayed",
            Outcome::Idle => "idle",
            Outcome::Timeout => "timeout",
            Outcome::Invalid => "invalid",
            Outcome::TooLarge => "too_large",
            Outcome::NoServerName => "no_server_name",
            Outcome::BadServerName => "bad_server_name",
            Outcome::NoRoute => "no_route",
            Outcome::NoBackend => "no_backend",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::Closed => "closed",
        }
    }
}

/// Serves one connection accepted on passthrough socket `local` (module docs).
pub(crate) async fn serve(tcp: TcpStream, local: SocketAddr, peer: SocketAddr, shared: &Shared) {
    let outcome = relay(tcp, local, shared).await;
    tracing::debug!(socket = %local, %peer, result = outcome.label(), "passthrough connection ended");
    shared
        .metrics
        .passthrough_connections
        .with_label_values(&[outcome.label()])
        .inc();
}

async fn relay(mut client: TcpStream, local: SocketAddr, shared: &Shared) -> Outcome {
    let limits: &Limits = &shared.limits;
    let (hello, raw_name) = match read_client_hello(&mut client, limits.header_timeout).await {
        Ok(h) => h,
        Err(o) => return o,
    };
    let Ok(name) = sni::normalize_sni(&raw_name) else {
        return Outcome::BadServerName;
    };
    let Some(served) = shared.served.load_full() else {
        return Outcome::NoRoute;
    };
    let SniDecision::Matched(m) = sni::route(&served.router, local, &name) else {
        return Outcome::NoRoute;
    };
    let Some((_, backend)) = m.rule.pick_backend(rand::random()) else {
        return Outcome::NoBackend;
    };
    let BackendTarget::Endpoints {
        endpoints,
        failover,
        ..
    } = &backend.target
    else {
        return Outcome::NoBackend;
    };
    let drain = served
        .gateways
        .gateway(&m.listener.gateway_namespace, &m.listener.gateway_name)
        .and_then(|g| g.backend_drain(&backend.name));
    let nearest = shared.rtt.order();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut upstream = None;
    // At most one try per ready endpoint (and one more for an endpoint ejected meanwhile).
    for _ in 0..=endpoints::ready_count(endpoints) {
        let Ok(i) = endpoints::choose(
            endpoints,
            &backend.name,
            Vantage {
                me: &shared.locality,
                nearest: &nearest,
            },
            failover.as_ref(),
            &shared.ejections,
            &tried,
            drain.as_deref(),
        ) else {
            break;
        };
        let e = &endpoints[i];
        let addr = SocketAddr::new(e.address, e.port);
        tried.push(addr);
        if e.east_west {
            // Another network's proxy answers HTTP there, not this client's TLS session.
            continue;
        }
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                upstream = Some(s);
                break;
            }
            Ok(Err(err)) => eject(shared, EndpointKey::of(e, &backend.name), &err),
            Err(_) => eject(
                shared,
                EndpointKey::of(e, &backend.name),
                &"connect timed out",
            ),
        }
    }
    let Some(mut upstream) = upstream else {
        return Outcome::ConnectFailed;
    };
    if let Err(e) = upstream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    if upstream.write_all(&hello).await.is_err() {
        return Outcome::Closed;
    }
    drop(hello);
    splice(client, upstream, limits.idle_timeout).await
}

fn eject(shared: &Shared, key: EndpointKey, e: &dyn std::fmt::Display) {
    if shared.ejections.eject(key) {
        shared.metrics.ejections.inc();
        tracing::info!(endpoint = %key, error = %e, "endpoint ejected after connect failure (passthrough)");
    }
}

/// Reads until the ClientHello is whole: its bytes (to replay upstream) and its server name.
/// Bounded by [`MAX_HELLO`] bytes and `within` (from now).
async fn read_client_hello(
    client: &mut TcpStream,
    within: Duration,
) -> Result<(Vec<u8>, String), Outcome> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::with_capacity(1024);
    // On the heap: the future of a relayed connection stays small for its whole life.
    let mut chunk = vec![0u8; 4096];
    // Every round reads at least one byte or returns; the buffer never exceeds MAX_HELLO.
    loop {
        match client_hello::parse(&buf) {
            Hello::Complete {
                server_name: Some(name),
            } => return Ok((buf, name)),
            Hello::Complete { server_name: None } => return Err(Outcome::NoServerName),
            Hello::Invalid(why) => {
                tracing::debug!(why, "not a ClientHello");
                return Err(Outcome::Invalid);
            }
            Hello::Incomplete => {}
        }
        let room = MAX_HELLO.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(Outcome::TooLarge);
        }
        match tokio::time::timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Err(_) => return Err(Outcome::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Outcome::Closed),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// When bytes last moved on a relayed connection (either direction).
struct Activity(Mutex<Instant>);

impl Activity {
    fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
    fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stream whose reads note activity (every byte written was read from the other side first,
/// so reads cover both directions).
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides are done, either fails, or nothing moved for `idle`.
async fn splice(client: TcpStream, upstream: TcpStream, idle: Duration) -> Outcome {
    let activity = Arc::new(Activity(Mutex::new(Instant::now())));
    let mut a = Watched {
        inner: client,
        activity: activity.clone(),
    };
    let mut b = Watched {
        inner: upstream,
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    // Each round sleeps until the idle deadline of the last activity it saw; it ends when the
    // copy does or when no byte moved since that deadline was set.
    loop {
        let until = activity.last() + idle;
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "passthrough relay ended with an error");
                }
                return Outcome::Relayed;
            }
            () = tokio::time::sleep_until(until) => {
                if activity.last() + idle <= Instant::now() {
                    return Outcome::Idle;
                }
            }
        }
    }
}
