//! Our own accept loops: one tokio task per listener socket and lane, feeding HTTP/1 requests to
//! the lean driver (lean/) and HTTP/2 connections to a pingora `HttpProxy` app (the Gateway
//! listeners share one of each per lane, the east-west listener has its own).
//!
//! A lane ([`Lane`]) is where connections run: the runtime that started the proxy (`workers: 0`,
//! one lane), or one worker's current-thread runtime (workers.rs; one lane per worker, each with
//! its own app and so its own upstream pool). Every listener address gets one socket per lane:
//! with several lanes they are an `SO_REUSEPORT` group ([`bind_group`]) and the kernel spreads
//! new connections over them; a connection is served on the lane whose socket accepted it.
//!
//! pingora's `Server` cannot add services after it runs, but snapshots add and remove sockets at
//! any time, so the proxy binds sockets itself:
//!
//! ```text
//! apply(snapshot) ── bind every new address, one socket per lane (all or nothing) ── swap the
//!                    router ── start loops (one per socket, on its lane) ─ stop removed loops
//! accept loop ── over --max-connections on this address (all lanes)? close at once (counted,
//!                limits.rs)
//!   ── TLS passthrough socket (snapshot protocol TLS) ─► passthrough/ with the raw TcpStream
//!                (ClientHello, SNI route, endpoint, splice; none of the HTTP machinery below)
//!   ── TcpStream ─► pingora l4 Stream (+ socket digest: local address for routing)
//!                  ─► read + write buffers with the connection clock (buffered.rs, limits.rs:
//!                     header and keep-alive idle deadlines)
//!                  HTTP  ─► h2c preface? (decided on the first byte that differs from it)
//!                  HTTPS ─► openssl handshake, certificate chosen by SNI from the current router,
//!                           ALPN h2/http1.1, SNI kept in the SSL digest
//!                  h2     ─► app.process_new (clock off: pingora's h2 idle timeout)
//!                  HTTP/1 ─► our keep-alive loop: wait for the request's first byte holding no
//!                            buffer (`wait_for_next_request`), then one call per request, in this
//!                            task, to the lean driver (lean/) with an OwnSession (our codec,
//!                            default; it hands back the stream and any pipelined bytes) or a
//!                            pingora ServerSession (`--http1-path lean`; `framework`:
//!                            app.process_new_http), the clock handed to the request hooks
//!                            (header read ─► busy), idle between requests
//! ```
//!
//! The HTTP/1 loop is ours rather than pingora's `process_new` for three reasons: pingora's
//! keep-alive wait is per read and unbounded once a client asks for keep-alive, its h2c check
//! waits for 24 bytes before answering anything (a 22-byte `OPTIONS / HTTP/1.0` health check
//! hung), and it waits for the next request inside a fresh session (its boxed session, header
//! buffer and request future, ≈ 17 KiB per idle connection). Ours waits on the stream itself
//! (buffered.rs, `NextBytes`) and builds the session once the client has sent something.
//!
//! The east-west listener (for proxies of other networks) runs the same loop with its own lean
//! driver and app (`EastWestProxy`, gateway/east_west.rs), whatever the snapshot says: mutual TLS
//! 1.3 with the proxy's mesh identity (mesh.rs), ALPN h2/http1.1:
//!
//! ```text
//! EAST-WEST ─► openssl handshake; per handshake (certificate callback, `Mesh::accept`): our
//!              current certificate, the current mesh bundle as trust store, a verify callback
//!              admitting only proxies of other clusters ─► HTTP/1 or h2 as above
//!              failed ─► counted by reason (meridian_proxy_tls_handshake_failures_total), closed
//! ```
//!
//! A stopped loop first accepts what waits in the kernel's accept queue (`take_queued`: those
//! clients completed a handshake and may have sent a request; closing would reset them), then
//! closes its socket; connections it accepted keep running until they finish. With lanes every
//! socket of the group has its own queue, and each lane's loop takes its own.
//! The protocol of a socket is read from the current snapshot for every connection, so a socket
//! that switches between HTTP and HTTPS needs no rebind.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use meridian_model::snapshot::Protocol;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::ALPN;
use pingora_core::protocols::SocketDigest;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::tls::{SslStream, TlsRef};
use pingora_core::protocols::{GetSocketDigest, IO, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::tls::error::ErrorStack;
use pingora_core::tls::ext;
use pingora_core::tls::ssl::{
    AlpnError, NameType, SslAcceptor, SslAcceptorBuilder, SslMethod, SslMode, SslVerifyMode,
    SslVersion, select_next_proto,
};
use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buffered::{Buffered, NextBytes};
use crate::gateway::{EAST_WEST, TlsConnInfo};
use crate::lean::{Driver, OwnSession};
use crate::limits::{ClockHandle, ConnClock, ConnGate, Limits};
use crate::mesh::{HandshakeFailure, Mesh, Verdict};
use crate::state::Shared;

/// What an accept loop feeds connections to (a pingora `HttpProxy`).
pub(crate) trait App: HttpServerApp + ServerApp + Send + Sync + 'static {}
impl<T: HttpServerApp + ServerApp + Send + Sync + 'static> App for T {}

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything an accept loop needs; `A` is the pingora app its connections go to.
pub(crate) struct AcceptCtx<A> {
    pub app: Arc<A>,
    /// The lean HTTP/1 driver (lean/); `None`: HTTP/1 requests go to `app` as well.
    pub lean: Option<Arc<dyn Driver>>,
    /// The lean driver reads and answers requests with our own HTTP/1 codec
    /// (`--http1-path own`) instead of pingora-core's server session.
    pub own_codec: bool,
    pub shared: Arc<Shared>,
    pub shutdown: ShutdownWatch,
    pub tls: SslAcceptor,
    /// Connections being served (for graceful shutdown).
    pub active: Arc<AtomicUsize>,
    /// What the sockets of this context are.
    pub sockets: Sockets,
    /// Timeouts and the connection cap of every socket of this context.
    pub limits: Limits,
    /// Connections accepted on this context's lane when it is a worker
    /// (`meridian_proxy_worker_connections_total{worker}`).
    pub worker_accepted: Option<IntCounter>,
}

/// Where accept loops and their connections run: `runtime` `None` is the runtime calling
/// [`ListenerSet::start`] (no workers), else one worker's runtime. `ctx` holds the lane's own
/// pingora app, so its own upstream connection pool: two lanes never share a pooled connection.
pub(crate) struct Lane<A> {
    pub runtime: Option<Handle>,
    pub ctx: Arc<AcceptCtx<A>>,
}

impl<A> Clone for Lane<A> {
    fn clone(&self) -> Self {
        Lane {
            runtime: self.runtime.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

/// The sockets of an accept context.
pub(crate) enum Sockets {
    /// Gateway listeners: HTTP or HTTPS as the served snapshot says.
    Gateway,
    /// The east-west listener: mutual TLS with this mesh identity, or plain HTTP without one
    /// (only with `ProxyConfig::east_west_plaintext`, for benchmarks).
    EastWest(Option<Arc<Mesh>>),
}

/// Builds the TLS acceptor: no static certificate (the callback installs one per handshake),
/// ALPN preferring h2 then http/1.1.
pub(crate) fn tls_acceptor() -> Result<SslAcceptor, ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    release_buffers(&mut b);
    b.set_alpn_select_callback(|_, client| {
        select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

/// The east-west listener's TLS acceptor: TLS 1.3 only, a client certificate required, no
/// session tickets (every connection is verified against the current bundle), ALPN preferring h2.
/// Certificate, trust store and identity check come per handshake (`Mesh::accept`).
pub(crate) fn east_west_acceptor() -> Result<SslAcceptor, ErrorStack> {
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    b.set_num_tickets(0)?;
    b.set_session_id_context(b"meridian-east-west")?;
    release_buffers(&mut b);
    b.set_alpn_select_callback(|_, client| {
        select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

/// An idle TLS connection gives its record buffers back (`SSL_MODE_RELEASE_BUFFERS`): OpenSSL
/// otherwise keeps a read and a write buffer (≈ 34 KiB together) for the connection's whole
/// life, which an idle keep-alive connection does not need; they are allocated again when a
/// record comes.
fn release_buffers(b: &mut SslAcceptorBuilder) {
    b.set_mode(SslMode::RELEASE_BUFFERS);
}

/// Listen backlog of every listener socket (also the bound of `take_queued`).
const BACKLOG: i32 = 1024;

/// Binds `n` listener sockets on `addr` (at least one), non-blocking, ready for
/// `TcpListener::from_std` on whichever runtime serves them. All or nothing: an error closes
/// the ones bound so far.
///
/// `SO_REUSEADDR` lets a restarted proxy rebind a port in TIME_WAIT; it does not allow taking a
/// port another process listens on. With `n > 1` the sockets form an `SO_REUSEPORT` group, but
/// the first one is bound *without* `SO_REUSEPORT`, so the bind fails when anything holds the
/// port, including another process's `SO_REUSEPORT` group we would otherwise have joined and
/// shared connections with; only then is the option turned on (Linux checks it at `listen`,
/// when the socket joins its group) and the others bound next to it, on the port the first
/// got (port 0 in `addr` works). From then on Linux lets a process of the same effective uid
/// (and only one) join the group too: docs/proxy.md, "Workers".
pub(crate) fn bind_group(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = socket_for(addr)?;
    first.bind(&addr.into())?;
    let local = match first.local_addr()?.as_socket() {
        Some(a) => a,
        None => addr,
    };
    if n > 1 {
        first.set_reuse_port(true)?;
    }
    first.listen(BACKLOG)?;
    let mut group = vec![first];
    for _ in 1..n {
        let s = socket_for(local)?;
        s.set_reuse_port(true)?;
        s.bind(&local.into())?;
        s.listen(BACKLOG)?;
        group.push(s);
    }
    group
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true)?;
            Ok(std::net::TcpListener::from(s))
        })
        .collect()
}

/// A TCP socket for `addr`'s family with `SO_REUSEADDR` (close-on-exec, as socket2 makes them).
fn socket_for(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    Ok(s)
}

struct Running {
    bound: SocketAddr,
    /// Stops every lane's loop of this address.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The running accept loops, keyed by the socket as the snapshot names it.
#[derive(Default)]
pub(crate) struct ListenerSet {
    running: HashMap<SocketAddr, Running>,
}

impl ListenerSet {
    /// Sockets of `wanted` that are not bound yet.
    pub fn missing(&self, wanted: &[SocketAddr]) -> Vec<SocketAddr> {
        wanted
            .iter()
            .filter(|a| !self.running.contains_key(a))
            .copied()
            .collect()
    }

    /// Starts accept loops on freshly bound sockets: each address comes with one socket per lane
    /// (`bind_group` with `lanes.len()`), and socket `i` is served on lane `i`.
    pub fn start<A: App>(
        &mut self,
        bound: Vec<(SocketAddr, Vec<std::net::TcpListener>)>,
        lanes: &[Lane<A>],
    ) {
        let Some(first) = lanes.first() else {
            return;
        };
        for (addr, sockets) in bound {
            let local = sockets
                .first()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or(addr);
            let (stop, stop_rx) = watch::channel(false);
            let label = match first.ctx.sockets {
                Sockets::Gateway => addr.to_string(),
                Sockets::EastWest(_) => EAST_WEST.to_string(),
            };
            // One gate for the address: the cap holds across the lanes' sockets.
            let gate = Arc::new(ConnGate::new(
                &first.ctx.shared.metrics,
                &label,
                first.ctx.limits.max_connections,
            ));
            let tasks = sockets
                .into_iter()
                .zip(lanes)
                .map(|(socket, lane)| {
                    let accepting = accept_loop(
                        socket,
                        addr,
                        gate.clone(),
                        lane.ctx.clone(),
                        stop_rx.clone(),
                    );
                    match &lane.runtime {
                        Some(rt) => rt.spawn(accepting),
                        None => tokio::spawn(accepting),
                    }
                })
                .collect();
            tracing::info!(socket = %addr, lanes = lanes.len(), "listening");
            self.running.insert(
                addr,
                Running {
                    bound: local,
                    stop,
                    tasks,
                },
            );
        }
    }

    /// Stops the loops of sockets not in `keep` and waits until their sockets are closed.
    pub async fn retain(&mut self, keep: &[SocketAddr]) {
        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(r) = self.running.remove(&addr) {
                let _ = r.stop.send(true);
                for task in r.tasks {
                    if let Err(e) = task.await {
                        tracing::warn!(socket = %addr, error = %e, "accept loop ended abnormally");
                    }
                }
                tracing::info!(socket = %addr, "stopped listening");
            }
        }
    }

    /// Actual bound addresses.
    pub fn bound(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.running.values().map(|r| r.bound).collect();
        v.sort();
        v
    }
}

/// Accepts on one socket until stopped, serving each connection on the runtime this loop runs
/// on (its lane). The socket is registered with that runtime here, so its wake-ups stay there.
async fn accept_loop<A: App>(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    gate: Arc<ConnGate>,
    ctx: Arc<AcceptCtx<A>>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %addr, error = %e, "cannot serve a bound socket; closed");
            return;
        }
    };
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => spawn_served(tcp, addr, peer, &gate, &ctx),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(socket = %addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    take_queued(listener, addr, &gate, &ctx);
}

/// Serves an accepted connection in its own task, or closes it at once when the socket's
/// connection cap is reached.
fn spawn_served<A: App>(
    tcp: TcpStream,
    addr: SocketAddr,
    peer: SocketAddr,
    gate: &ConnGate,
    ctx: &Arc<AcceptCtx<A>>,
) {
    // Over the cap: closed at once (dropped), before any byte is read or written. Cheaper than
    // a 503 (which would need the request read first, or a reset for unread bytes) and the same
    // for every protocol; a load balancer in front retries another proxy on a closed connection.
    let Some(admitted) = gate.admit() else {
        tracing::debug!(socket = %addr, %peer, "connection shed: --max-connections reached");
        return;
    };
    if let Some(accepted) = &ctx.worker_accepted {
        accepted.inc();
    }
    let ctx = ctx.clone();
    ctx.active.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        serve_connection(tcp, addr, peer, &ctx).await;
        ctx.active.fetch_sub(1, Ordering::AcqRel);
        drop(admitted);
    });
}

/// Before a stopped loop closes its socket: accepts what already waits in the kernel's accept
/// queue (handshakes completed, possibly a request sent) and serves it like any connection.
/// Closing the socket would reset those clients although they were never refused. The queue is
/// read without waiting (the socket is non-blocking), so this ends at the first empty read.
fn take_queued<A: App>(
    listener: TcpListener,
    addr: SocketAddr,
    gate: &ConnGate,
    ctx: &Arc<AcceptCtx<A>>,
) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %addr, error = %e, "cannot read the accept queue before closing");
            return;
        }
    };
    let mut taken = 0usize;
    // Bounded by the listen backlog (`BACKLOG`); the bound only guards against a queue that
    // refills as fast as it is read.
    for _ in 0..=BACKLOG {
        let Ok((std_tcp, peer)) = listener.accept() else {
            // WouldBlock (the queue is empty) or an error: close now either way.
            break;
        };
        let tcp = std_tcp
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(std_tcp));
        match tcp {
            Ok(tcp) => {
                taken += 1;
                spawn_served(tcp, addr, peer, gate, ctx);
            }
            Err(e) => {
                tracing::warn!(socket = %addr, %peer, error = %e, "queued connection dropped")
            }
        }
    }
    if taken > 0 {
        tracing::info!(socket = %addr, connections = taken, "served connections queued at close");
    }
}

async fn serve_connection<A: App>(
    tcp: TcpStream,
    addr: SocketAddr,
    peer: SocketAddr,
    ctx: &AcceptCtx<A>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    if matches!(ctx.sockets, Sockets::Gateway)
        && ctx
            .shared
            .served
            .load()
            .as_ref()
            .and_then(|s| s.protocol(addr))
            == Some(Protocol::Tls)
    {
        // TLS passthrough: the raw stream, no HTTP clock or buffers (passthrough/mod.rs).
        // Boxed: its state would otherwise be part of every connection's task, HTTP ones too.
        Box::pin(crate::passthrough::serve(tcp, addr, peer, &ctx.shared)).await;
        return;
    }
    let fd = tcp.as_raw_fd();
    let mut l4 = L4Stream::from(tcp);
    l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
    // The header deadline runs from the accept: a TLS handshake and an h2c sniff count too.
    let clock = ConnClock::new(&ctx.limits);
    // Under TLS too, as pingora layers it: records are read whole and written together. Boxed
    // from here on (pingora takes streams boxed), so no future of the connection's task keeps a
    // moved-out copy of it in its state.
    let mut l4 = Box::new(Buffered::new(l4).with_clock(clock.clone()));
    let protocol = match &ctx.sockets {
        Sockets::EastWest(None) => Some(Protocol::Http),
        Sockets::EastWest(Some(mesh)) => {
            // Boxed, like the Gateway handshake: its state is freed once it is done.
            let Some(s) = Box::pin(east_west_handshake(*l4, addr, peer, mesh, ctx)).await else {
                return;
            };
            serve_http(Box::new(s), false, clock, ctx).await;
            return;
        }
        Sockets::Gateway => ctx
            .shared
            .served
            .load()
            .as_ref()
            .and_then(|s| s.protocol(addr)),
    };
    match protocol {
        Some(Protocol::Http) => {
            let h2c = match l4.sniff_h2c().await {
                Ok(h2c) => h2c,
                Err(e) => {
                    tracing::debug!(socket = %addr, %peer, error = %e, "closed before a request");
                    return;
                }
            };
            serve_http(l4, h2c, clock, ctx).await;
        }
        Some(Protocol::Https) => {
            // Boxed: the handshake's state (OpenSSL futures, the timeout's timer) would
            // otherwise stay part of the connection's task, idle or not, for its whole life.
            if let Some(s) = Box::pin(gateway_handshake(*l4, addr, ctx)).await {
                serve_http(Box::new(s), false, clock, ctx).await;
            }
        }
        // Passthrough sockets are served before the stream is wrapped (above); one that turned
        // passthrough between the two reads is closed.
        Some(Protocol::Tls) => {}
        // The socket left the snapshot between accept and here.
        None => {}
    }
}

/// An accepted stream as the HTTP loop gets it: plain (`Buffered<L4Stream>`) or TLS over it.
/// The concrete type stays known (pingora gets it boxed for each request and hands it back), so
/// the loop can wait on it between requests ([`NextBytes`]).
pub(crate) trait Accepted: IO + NextBytes + 'static {}
impl<T: IO + NextBytes + 'static> Accepted for T {}

/// Serves a connection whose protocol is settled: HTTP/2 (`h2c`, or ALPN h2 after TLS) by
/// pingora, HTTP/1 by [`serve_http1`].
async fn serve_http<A: App, S: Accepted>(
    stream: Box<S>,
    h2c: bool,
    clock: Arc<ConnClock>,
    ctx: &AcceptCtx<A>,
) {
    if h2c || matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        // pingora's HTTP/2 idle timeout (server options) closes it when no stream is open.
        clock.off();
        ctx.app.process_new(stream, &ctx.shutdown).await;
        return;
    }
    serve_http1(stream, &clock, ctx).await;
}

/// pingora's HTTP/1 keep-alive loop with our deadlines: each request is one call to the lean
/// driver (or pingora-proxy's `process_new_http` on the framework path, same contract); the
/// connection's clock rides along as the connection's user context
/// (pingora hands it to `on_connection_reuse` once the header is read, which stops the header
/// deadline), and the idle deadline runs between requests. pingora's own per-read keep-alive
/// timeout is set too, to a value the clock always beats. Before each request the loop waits
/// for the client's first byte ([`wait_for_next_request`]), so a connection between requests
/// holds no session and no buffer.
async fn serve_http1<A: App, S: Accepted>(
    mut stream: Box<S>,
    clock: &Arc<ConnClock>,
    ctx: &AcceptCtx<A>,
) {
    if ctx.own_codec
        && let Some(lean) = &ctx.lean
    {
        serve_own_http1(stream, clock, lean.as_ref(), ctx).await;
        return;
    }
    // What the previous request's session leaves for the next one (reuses remaining; never a
    // pipelined prefix: pingora's pipelining stays off, so a request read past its end is not
    // kept alive).
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut shutdown = ctx.shutdown.clone();
    // One turn per request; ends when the client or a deadline closes the connection, or
    // pingora does not keep it (Connection: close, errors, shutdown).
    let mut first = true;
    loop {
        if !wait_for_next_request(stream.as_mut(), &mut shutdown, first).await {
            return;
        }
        first = false;
        // Built in a function of its own: a session (≈ 700 bytes) held in this future would
        // stay part of the connection's task between requests.
        let session = request_session(stream, settings.take(), clock, ctx);
        let reused = match &ctx.lean {
            Some(lean) => lean.process(session, &ctx.shutdown).await,
            None => ctx.app.process_new_http(session, &ctx.shutdown).await,
        };
        let Some(reused) = reused else {
            return;
        };
        clock.idle();
        let (reused, kept) = reused.consume();
        settings = kept;
        // The stream pingora hands back is the one it was given.
        stream = match reused.into_any().downcast::<S>() {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!("pingora returned a different stream type; connection closed");
                return;
            }
        };
    }
}

/// The keep-alive loop of `--http1-path own`: the same waits and deadlines as
/// [`serve_http1`], each request an [`OwnSession`] of the lean driver. The session hands back
/// the stream and the bytes it read past its request (a pipelined request, served next without
/// waiting); between requests the connection holds neither session nor buffer.
async fn serve_own_http1<A: App, S: Accepted>(
    mut stream: Box<S>,
    clock: &Arc<ConnClock>,
    lean: &dyn Driver,
    ctx: &AcceptCtx<A>,
) {
    let mut leftover = BytesMut::new();
    let mut reuses = ctx
        .app
        .server_options()
        .and_then(|o| o.keepalive_request_limit);
    let mut shutdown = ctx.shutdown.clone();
    let mut first = true;
    let mut digest = None;
    let case = ctx.shared.edge.header_case;
    // One turn per request; ends when the client or a deadline closes the connection, or the
    // session does not keep it (Connection: close, errors, shutdown).
    loop {
        if leftover.is_empty()
            && !wait_for_next_request(stream.as_mut(), &mut shutdown, first).await
        {
            return;
        }
        first = false;
        if leftover.is_empty() {
            // The bytes the wait read, in the buffer they came in (nothing to copy).
            leftover = stream.take_buffering();
        }
        let session = OwnSession::new(stream, leftover, reuses, digest, Some(clock.clone()))
            .header_case(case);
        let Some(kept) = lean.process_own(session, &ctx.shutdown).await else {
            return;
        };
        clock.idle();
        leftover = kept.leftover;
        reuses = kept.reuses_remaining;
        digest = Some(kept.digest);
        stream = match kept.stream.into_any().downcast::<S>() {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!("the session returned a different stream type; connection closed");
                return;
            }
        };
    }
}

/// The pingora session of the next request on `stream`: the previous session's `settings` (or
/// the first request's reuse limit), our keep-alive (none while shutting down; pingora's
/// per-read keep-alive timeout set to a value the clock always beats) and the connection's
/// clock as user context.
fn request_session<A: App>(
    stream: Stream,
    settings: Option<HttpPersistentSettings>,
    clock: &Arc<ConnClock>,
    ctx: &AcceptCtx<A>,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    match settings {
        Some(settings) => settings.apply_to_session(&mut session),
        None => session.set_keepalive_reuses_remaining(
            ctx.app
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        ),
    }
    if *ctx.shutdown.borrow() {
        session.set_keepalive(None);
    } else {
        let keepalive_secs = ctx
            .limits
            .idle_timeout
            .max(ctx.limits.header_timeout)
            .as_secs()
            .saturating_add(1);
        session.set_keepalive(Some(keepalive_secs));
    }
    session.set_connection_user_context(Some(Box::new(ClockHandle(clock.clone()))));
    session
}

/// The wait before each request of an HTTP/1 connection: until the client's first byte, with
/// no session and no buffer held (`NextBytes`), under the connection clock's deadline (header
/// deadline from the accept for the first request, keep-alive idle timeout after). `false`:
/// close the connection (the client closed it, the deadline passed, or, between requests, the
/// proxy is shutting down; a first request is served during shutdown as pingora did).
async fn wait_for_next_request<S: NextBytes>(
    stream: &mut S,
    shutdown: &mut ShutdownWatch,
    first: bool,
) -> bool {
    let next = std::future::poll_fn(|cx| stream.poll_next_bytes(cx));
    let shutting_down = async {
        // A dropped sender (the handle is gone without a shutdown) never ends the wait.
        if first || shutdown.wait_for(|down| *down).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        // Bytes already sent win over a shutdown (they are answered, with `Connection: close`).
        biased;
        next = next => match next {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "connection closed between requests");
                false
            }
        },
        () = shutting_down => false,
    }
}

/// The TLS handshake of a Gateway HTTPS connection, the certificate chosen by SNI from the
/// current router; `None` (logged) when it failed or timed out.
async fn gateway_handshake<A: App>(
    l4: Buffered<L4Stream>,
    addr: SocketAddr,
    ctx: &AcceptCtx<A>,
) -> Option<SslStream<Buffered<L4Stream>>> {
    let callbacks = CertByRouter {
        shared: ctx.shared.clone(),
        socket: addr,
    };
    let handshake = handshake_with_callback(&ctx.tls, l4, &callbacks);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(socket = %addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(socket = %addr, "TLS handshake timed out");
            None
        }
    }
}

/// The mutual TLS handshake of an east-west connection from `peer`; `None` (counted and logged
/// with its reason) when it failed.
async fn east_west_handshake<A: App>(
    l4: Buffered<L4Stream>,
    addr: SocketAddr,
    peer: SocketAddr,
    mesh: &Arc<Mesh>,
    ctx: &AcceptCtx<A>,
) -> Option<SslStream<Buffered<L4Stream>>> {
    let callbacks = MeshAccept {
        mesh: mesh.clone(),
        verdict: Arc::new(Verdict::default()),
    };
    let handshake = handshake_with_callback(&ctx.tls, l4, &callbacks);
    let (reason, error) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => return Some(s),
        Ok(Err(e)) => (
            callbacks
                .verdict
                .get()
                .unwrap_or_else(|| HandshakeFailure::of_error(&e)),
            e.to_string(),
        ),
        Err(_) => (HandshakeFailure::Other, "timed out".to_string()),
    };
    ctx.shared
        .metrics
        .tls_handshake_failures
        .with_label_values(&[EAST_WEST, reason.label()])
        .inc();
    tracing::debug!(socket = %addr, %peer, reason = reason.label(), %error, "east-west TLS handshake refused");
    None
}

/// Sets up each east-west handshake from the mesh identity held right now.
struct MeshAccept {
    mesh: Arc<Mesh>,
    verdict: Arc<Verdict>,
}

#[async_trait]
impl TlsAccept for MeshAccept {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        if let Err(why) = self.mesh.accept(ssl, self.verdict.clone()) {
            tracing::warn!("east-west handshake refused: {why}");
        }
    }
}

/// Chooses the certificate during the handshake from the router being served right now.
struct CertByRouter {
    shared: Arc<Shared>,
    socket: SocketAddr,
}

#[async_trait]
impl TlsAccept for CertByRouter {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let Some(served) = self.shared.served.load_full() else {
            return;
        };
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(cert) = served.router.certificate(self.socket, sni.as_deref()) else {
            tracing::debug!(socket = %self.socket, ?sni, "no certificate for this SNI");
            return;
        };
        let Some(parsed) = served.certs.get(&cert.cert_pem) else {
            return;
        };
        let Some((leaf, chain)) = parsed.chain.split_first() else {
            return;
        };
        let mut result = ext::ssl_use_certificate(ssl, leaf)
            .and_then(|()| ext::ssl_use_private_key(ssl, &parsed.key));
        for c in chain {
            result = result.and_then(|()| ext::ssl_add_chain_cert(ssl, c));
        }
        if let Err(e) = result {
            tracing::warn!(socket = %self.socket, error = %e, "installing certificate failed");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        Some(Arc::new(TlsConnInfo { sni }))
    }
}
