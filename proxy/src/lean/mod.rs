//! The lean HTTP/1 request path: one request of a kept-alive HTTP/1 connection driven in the
//! connection's own task, from the head to the logging, with our own HTTP/1 codec downstream
//! (codec/: [`OwnSession`], [`Http1Path::Own`], the default) or pingora-core's server session
//! ([`Http1Path::Lean`]), and upstream its own pool of idle HTTP/1 connections (pool.rs) or
//! pingora-core's connector for h2c sessions, and no framework in between: no task and no
//! channels per request, no second copy of the head or the body.
//!
//! The driver is written once, generic over the client side: [`Connection`] (the
//! [`Downstream`] calls the roles make, plus reading the clock, `finish` and the raw stream for a
//! tunnel) is implemented by both sessions, and each accept loop calls [`Driver::process_own`]
//! or [`Driver::process`] with the one it built (listeners.rs). Plain, TLS-terminated and
//! east-west mTLS connections take the same codec: it reads and writes pingora's `Stream`.
//!
//! It replaces pingora-proxy's `HttpProxy::process_new_http` on HTTP/1 connections of the
//! Gateway listeners (plain and TLS) and of the east-west listener (`meridian proxy
//! --http1-path framework` keeps pingora-proxy's for comparison). Every
//! decision is still the role's and the [`Forwarder`]'s: this module calls the same methods in
//! the order pingora-proxy calls its `ProxyHttp` hooks, so routing, filters, retries, failover,
//! ejection, counters and failure answers are one implementation for both paths.
//!
//! ```text
//! listeners.rs serve_http1 ── one call per request ──► LeanPath::process(_own)
//!   read head (400 malformed, 431 above the parse limits, 405 CONNECT) ─ shutting down? Connection: close
//!   ─ clock: header read (limits.rs) ─ Role::request_filter ── answered? ─► logging ─ reuse
//!   ─ tries (at most ServerConf::max_retries, 16, like pingora; hedge.rs races a second try
//!     of an idempotent request without a large body when the first is slow to answer):
//!       Forwarder::upstream_peer ─ HTTP/1: pool.rs or a new connection, h2c: pingora's
//!         connector ── failed ─► Forwarder::fail_to_connect
//!       HTTP/1 upstream (h1.rs): head (request.rs) ─ request body and response in one select
//!         loop: upstream_response_filter ─ response_filter ─ write head (+ the first body
//!         chunk when it is already here) ─ body ─ back to the pool if clean
//!       h2c upstream (h2.rs): head ─ body ─ response, in turn
//!       failed ─► Forwarder::error_while_proxy: retry?
//!   ─ Forwarder::fail_to_proxy (the answer when the last try failed)
//!   ─ 101 Switching Protocols: tunnel.rs copies bytes both ways until both sides closed or the
//!     idle timeout passes without a byte
//!   ─ Forwarder::logging ─ the connection back to serve_http1 (kept alive) or closed; on the
//!     own codec with the bytes read past the request, so a pipelined request is served next
//! ```
//!
//! What pingora-proxy does per request that this does not: a task and two channels per request
//! (`proxy_1to1`'s `try_join!` of a downstream and an upstream half), module and cache hooks we
//! do not use, and the request summary it formats for its own log lines.

pub(crate) mod codec;
mod h1;
mod h2;
pub(crate) mod hedge;
mod pool;
mod request;
mod tunnel;

use std::future::Future;

use futures::future::Either;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::http::client::HttpSession as ClientSession;
use pingora_core::protocols::{ALPN, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, Result};

pub use self::codec::HeaderCase;
use self::codec::OwnClient;
pub(crate) use self::codec::{Kept, OwnSession};
use crate::gateway::{Ctx, Downstream, Forwarder, Role};

/// Which driver serves HTTP/1 requests (`meridian proxy --http1-path`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Path {
    /// This module: one task per connection, pingora-core's server sessions downstream.
    Lean,
    /// This module with our own HTTP/1 codec downstream (codec/: [`OwnSession`]).
    #[default]
    Own,
    /// pingora-proxy's `HttpProxy::process_new_http` (a task and channels per request).
    Framework,
}

/// A client connection's side of one request as the driver owns it: the [`Downstream`] calls
/// plus what happens around the request (pingora-core's `ServerSession`, or our [`OwnSession`]).
pub(crate) trait Connection: Downstream + Sized + Send + 'static {
    /// What a connection that may take another request is handed back as.
    type Reused: Send;

    /// The request head has been read: the connection clock's header deadline stops.
    fn header_read(&mut self);

    /// The request failed (the answer, if any, is written).
    fn on_proxy_failure(&mut self, e: Box<Error>);

    /// Ends the response; the connection back when it may take another request.
    fn finish(self) -> impl Future<Output = Option<Self::Reused>> + Send;

    /// The raw stream, for an upgraded connection's tunnel (after its leftovers were read
    /// through [`Downstream::read_request_body`]).
    fn into_stream(self) -> Option<Stream>;
}

impl Connection for ServerSession {
    type Reused = ReusedHttpStream;

    fn header_read(&mut self) {
        if let Some(c) = self.take_connection_user_context() {
            crate::limits::header_read(c.as_ref());
        }
    }

    fn on_proxy_failure(&mut self, e: Box<Error>) {
        ServerSession::on_proxy_failure(self, e);
    }

    async fn finish(self) -> Option<ReusedHttpStream> {
        let settings = HttpPersistentSettings::for_session(&self);
        match ServerSession::finish(self).await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "response not finished");
                None
            }
        }
    }

    fn into_stream(self) -> Option<Stream> {
        match self {
            ServerSession::H1(client) => Some(client.into_inner()),
            _ => None,
        }
    }
}

/// An HTTP/1 request driver as the accept loops hold it (one per role).
pub(crate) trait Driver: Send + Sync {
    /// Serves the next request of `session`'s connection; the connection back when it can take
    /// another one (the same contract as pingora's `process_new_http`).
    fn process<'a>(
        &'a self,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>>;

    /// The same on our own codec (`--http1-path own`): the stream and any bytes read past the
    /// request come back.
    fn process_own<'a>(
        &'a self,
        session: OwnSession,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<Kept>> + Send + 'a>>;
}

/// The lean driver of one role (Gateway or east-west) with its own upstream pool.
pub(crate) struct LeanPath<R> {
    role: R,
    /// New HTTP/1 upstream connections; idle ones wait in `pool`.
    transport: TransportConnector,
    pool: pool::Pool,
    /// h2c upstream sessions (pingora's pool: one connection carries many streams).
    connector: Connector,
    /// Most tries per request (pingora's `ServerConf::max_retries`; the Forwarder's allowances
    /// bound it far sooner).
    max_tries: usize,
    /// No byte either way for this long closes an upgraded tunnel.
    idle_timeout: Duration,
}

/// How one try ended.
struct Tried {
    /// The client connection can take another request.
    downstream_reusable: bool,
    error: Option<Box<Error>>,
    /// The upstream connection of a 101 answer, for the tunnel.
    upgraded: Option<OwnClient>,
}

impl<R: Role> LeanPath<R> {
    /// The driver of `role`; `conf` is the server configuration of the framework app beside it,
    /// so both paths pool upstream connections alike.
    pub fn new(role: R, conf: &ServerConf, idle_timeout: Duration) -> Arc<Self> {
        let options = ConnectorOptions::from_server_conf(conf);
        Arc::new(LeanPath {
            role,
            pool: pool::Pool::new(options.keepalive_pool_size),
            transport: TransportConnector::new(Some(options.clone())),
            connector: Connector::new(Some(options)),
            max_tries: conf.max_retries,
            idle_timeout,
        })
    }

    fn fwd(&self) -> &Forwarder {
        self.role.forwarder()
    }

    /// How backends' response heads are parsed (`--header-case`).
    fn header_case(&self) -> HeaderCase {
        self.fwd().shared.edge.header_case
    }

    async fn serve<S: Connection>(
        &self,
        mut session: S,
        shutdown: &ShutdownWatch,
    ) -> Option<S::Reused> {
        let mut stop = shutdown.clone();
        // Shutdown wakes a connection waiting for its next request (as pingora's
        // `http_cleanup` does for the framework path); a head already buffered is read first.
        let head = tokio::select! {
            biased;
            head = read_head(&mut session) => head,
            _ = stop.wait_for(|stopping| *stopping) => false,
        };
        if !head {
            return None;
        }
        if *shutdown.borrow() {
            // Shutting down: this answer says `Connection: close`.
            session.set_keepalive(None);
        }
        let mut ctx = Ctx::new();
        session.header_read();
        match self.role.request_filter(&mut session, &mut ctx).await {
            Ok(true) => return self.finish(session, &ctx, true, None).await,
            Ok(false) => {}
            Err(e) => {
                Forwarder::fail_to_proxy(&mut session, &e, &mut ctx).await;
                return self.finish(session, &ctx, false, Some(e)).await;
            }
        }
        let mut reusable = false;
        let mut error = None;
        let mut upgraded = None;
        for _ in 0..self.max_tries {
            // hedge.rs: a plain try, or a hedged one for idempotent requests.
            let tried = hedge::try_upstream(self, &mut session, &mut ctx).await;
            reusable = tried.downstream_reusable;
            upgraded = tried.upgraded;
            match tried.error {
                Some(e) => {
                    let retry = e.retry();
                    error = Some(e);
                    if !retry {
                        break;
                    }
                }
                None => {
                    error = None;
                    break;
                }
            }
        }
        if let Some(e) = error.as_deref() {
            Forwarder::fail_to_proxy(&mut session, e, &mut ctx).await;
        }
        if let Some(up) = upgraded {
            let label = self.role.listener_label(&ctx);
            self.fwd().logging(&session, error.as_deref(), &ctx, label);
            tunnel::run(session, up, self.idle_timeout).await;
            return None;
        }
        self.finish(session, &ctx, reusable, error).await
    }

    /// One try: the endpoint, a pooled or new connection, the exchange.
    async fn try_upstream(&self, session: &mut impl Downstream, ctx: &mut Ctx) -> Tried {
        let fwd = self.fwd();
        let peer = match fwd.upstream_peer(ctx).await {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let h2c = peer
            .get_peer_options()
            .is_some_and(|o| matches!(o.alpn, ALPN::H2));
        let connected = if h2c {
            // Boxed for the same reason as a new HTTP/1 connection (h1_session).
            Box::pin(self.connector.get_http_session(&*peer))
                .await
                .map(|(c, reused)| (upstream(c, &peer, self.header_case()), reused))
        } else {
            self.h1_session(&peer)
                .await
                .map(|(c, reused)| (Upstream::H1(c), reused))
        };
        let (client, reused) = match connected {
            Ok(c) => c,
            Err(mut e) => {
                e.as_up();
                return failed(fwd.fail_to_connect(&peer, ctx, e).into_up());
            }
        };
        let (downstream_reusable, error, upgraded) = match client {
            Upstream::H1(mut up) => {
                let done = h1::exchange(fwd, session, &mut up, &peer, ctx).await;
                if done.upgraded {
                    (false, None, Some(up))
                } else {
                    if done.upstream_reusable {
                        up.respect_keepalive();
                        if let Some(stream) = up.reuse().await {
                            self.pool
                                .put(peer.reuse_hash(), stream, peer.idle_timeout());
                        }
                    }
                    (done.downstream_reusable, done.error, None)
                }
            }
            Upstream::H2(up) => {
                // Boxed: h2c backends are the exception, and their exchange's state would
                // otherwise make every request's future larger (h1_session).
                let (reusable, error) = Box::pin(self.h2_try(session, up, &peer, ctx)).await;
                (reusable, error, None)
            }
            Upstream::Unsupported => (
                false,
                Some(Error::explain(
                    ErrorType::InternalError,
                    "no custom upstream protocol",
                )),
                None,
            ),
        };
        Tried {
            downstream_reusable,
            error: error.map(|e| fwd.error_while_proxy(&peer, session, e, ctx, reused)),
            upgraded,
        }
    }

    /// The exchange of a try at an h2c backend; the session goes back to pingora's pool.
    async fn h2_try(
        &self,
        session: &mut impl Downstream,
        mut up: Box<pingora_core::protocols::http::v2::client::Http2Session>,
        peer: &HttpPeer,
        ctx: &mut Ctx,
    ) -> (bool, Option<Box<Error>>) {
        let (reusable, mut error) = h2::exchange(self.fwd(), session, &mut up, peer, ctx).await;
        self.connector
            .release_http_session(ClientSession::H2(*up), peer, peer.idle_timeout())
            .await;
        if let Some(e) = error.as_mut()
            && matches!(e.etype(), ErrorType::H2Downgrade | ErrorType::InvalidH2)
        {
            // An h2c backend has no HTTP/1 to fall back to.
            e.set_retry(false);
        }
        (reusable, error)
    }

    /// An HTTP/1 session to `peer` on our own client codec: an idle pooled connection
    /// (`true`) or a new one.
    async fn h1_session(&self, peer: &HttpPeer) -> Result<(OwnClient, bool)> {
        if let Some(stream) = self.pool.take(peer.reuse_hash()) {
            return Ok((own_client(stream, peer, self.header_case()), true));
        }
        // Boxed: connecting (TCP, TLS) is the largest state of a try, and a future holds room
        // for its largest state; inline, every request's future would carry it, pooled
        // connection or not (docs/benchmarks.md, "Session 19").
        let stream = Box::pin(self.transport.new_stream(peer)).await?;
        Ok((own_client(stream, peer, self.header_case()), false))
    }

    /// Counts and logs the request, then hands the connection back if it may take another.
    /// Not an `async fn`: its future would hold the session beside the session's own
    /// `finish`, which takes it (the request's future is as large as its largest state).
    fn finish<S: Connection>(
        &self,
        mut session: S,
        ctx: &Ctx,
        reusable: bool,
        error: Option<Box<Error>>,
    ) -> impl Future<Output = Option<S::Reused>> + Send + use<S, R> {
        let label = self.role.listener_label(ctx);
        self.fwd().logging(&session, error.as_deref(), ctx, label);
        if let Some(e) = error {
            session.on_proxy_failure(e);
        }
        if reusable {
            Either::Left(session.finish())
        } else {
            Either::Right(std::future::ready(None))
        }
    }
}

impl<R: Role> Driver for LeanPath<R> {
    fn process<'a>(
        &'a self,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
        Box::pin(self.serve(session, shutdown))
    }

    fn process_own<'a>(
        &'a self,
        session: OwnSession,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<Kept>> + Send + 'a>> {
        Box::pin(self.serve(session, shutdown))
    }
}

/// An upstream session as the driver runs it: HTTP/1 on our own client codec (codec/client.rs),
/// HTTP/2 on pingora-core's.
enum Upstream {
    H1(OwnClient),
    H2(Box<pingora_core::protocols::http::v2::client::Http2Session>),
    Unsupported,
}

/// What pingora's connector handed out for an h2c peer, as the driver runs it (an HTTP/1
/// session there, should the connector ever fall back, goes on our codec).
fn upstream(session: ClientSession, peer: &HttpPeer, case: HeaderCase) -> Upstream {
    match session {
        ClientSession::H2(s) => Upstream::H2(Box::new(s)),
        ClientSession::H1(s) => Upstream::H1(own_client(s.into_inner(), peer, case)),
        ClientSession::Custom(_) => Upstream::Unsupported,
    }
}

fn own_client(stream: Stream, peer: &HttpPeer, case: HeaderCase) -> OwnClient {
    let allow_invalid_length = peer
        .get_peer_options()
        .is_some_and(|o| o.allow_h1_response_invalid_content_length);
    OwnClient::new(stream, allow_invalid_length).header_case(case)
}

fn failed(e: Box<Error>) -> Tried {
    Tried {
        downstream_reusable: false,
        error: Some(e),
        upgraded: None,
    }
}

/// Reads the request head; `false` when there is none to serve (the client closed, or a head
/// that cannot be parsed, answered 400, or CONNECT, answered 405; the connection is closed).
async fn read_head(session: &mut impl Downstream) -> bool {
    let refusal = match session.read_request().await {
        Ok(true) if session.req_header().method == http::Method::CONNECT => {
            // CONNECT tunnels are not proxied (nor are they by the framework path).
            405
        }
        Ok(true) => return true,
        Ok(false) => return false,
        Err(e) if matches!(e.etype(), ErrorType::InvalidHTTPHeader) => {
            tracing::debug!(error = %e, "malformed request head");
            400
        }
        Err(e) if *e.etype() == codec::HEAD_TOO_LARGE => {
            tracing::debug!(error = %e, "request head too large");
            431
        }
        Err(e) => {
            tracing::debug!(error = %e, "no request head");
            session.shutdown().await;
            return false;
        }
    };
    if let Err(e) = session.respond_error(refusal).await {
        tracing::debug!(error = %e, "refusal not sent");
    }
    session.shutdown().await;
    false
}
