//! The two proxy roles: [`GatewayProxy`] on the Gateway listeners and [`EastWestProxy`] on the
//! east-west listener. Each decides where a request goes in its own `request_filter` ([`Role`]);
//! from there on both hand the request to one [`Forwarder`] (upstream tries, failover, response
//! handling, counters), so the two roles differ in nothing else. Both request paths drive them:
//! the lean HTTP/1 driver (`crate::lean`) calls [`Role`] and [`Forwarder`] directly, and for
//! pingora-proxy's framework (HTTP/2, `--http1-path framework`) the `forwarding_proxy!` macro
//! writes the `ProxyHttp` impl of a role once from the same methods. All of them work on the
//! [`Downstream`] trait (downstream.rs), implemented by pingora-core's server session, which
//! both paths have.
//!
//! ```text
//! GatewayProxy::request_filter (route.rs)        EastWestProxy::request_filter (east_west.rs)
//!   hygiene checks (400/431), framing.rs           hygiene checks (400/431), framing.rs
//!   path normalised in the head (400; path.rs)
//!   drop Connection-nominated headers
//!   drop any client x-meridian-backend             x-meridian-backend required (400), names
//!   router.route(local, SNI, Host, method,           a Snapshot.east_west backend (404); removed
//!     path, query, headers)                        its one-backend rule (east_west_rules)
//!     NoListener/NotFound → 404, Misdirected → 421 no ready endpoint → 503; every ready one
//!   rule RequestRedirect → 3xx + Location            drained by a drill → 503, no served-by
//!   rule filters in order: header edits, URL
//!     rewrite, mirror (filters.rs)
//!   session token (session.rs)? its backend and
//!     endpoint preferred; else the weighted
//!     backend pick: none/weight 0/Invalid
//!     → 500, no ready endpoint → 503
//!   backend filters (same kinds, redirect included)
//!                 └──────────── Forwarder::start: Ctx.upstream (ctx.rs) ────────────┘
//!
//! Forwarder (upstream.rs, response.rs)
//! upstream_peer ── endpoint by locality tier, skipping ejected, drained and tried ones;
//!                  per-try timeouts
//! fail_to_connect ─ eject the endpoint, retry another (bounded, within the retry budget)
//! error_while_proxy ─ safe requests with a replayable body retried on another endpoint
//!                    (budgeted); a reset on a fresh connection ejects the endpoint
//! upstream_response_filter ─ outlier detection; retry on a listed status while tries remain
//! response_filter ─ x-meridian-served-by (Gateway served_by_header, endpoint responses only);
//!                   ResponseHeaderModifier (rule, then backend)
//! fail_to_proxy  ── 504 on timeouts, 503 on upstream failures; failure kind for the counters
//!                   (a gRPC call gets grpc-status UNAVAILABLE / DEADLINE_EXCEEDED instead, and
//!                   the 500/503 answered in request_filter too: grpc.rs)
//!
//! GRPCRoute rules (grpc.rs): h2c to their backends whatever the Service's appProtocol; a try
//! is repeated (failover to the next endpoint or locality) only when it failed before the
//! request was sent.
//! logging        ── metrics, per-Gateway traffic counters (region that answered, failure kind,
//!                   latency head to head), the failure log line, the access log line and the
//!                   request's spans (observe.rs: trace context from request_filter on, a span
//!                   per try, `traceparent` on each upstream try)
//! ```
//!
//! East-west (multi-network clusters): the receiving end is [`EastWestProxy`]; the sending end
//! is any try at an endpoint marked `east_west` (a remote proxy's east-west listener), handled
//! by the [`Forwarder`] whichever proxy sends it (east_west.rs, "sender side"). The hop is
//! mutual TLS with the proxies' mesh identities (mesh.rs), settled before any request is read:
//!
//! ```text
//! sender (Forwarder, east_west endpoint)        receiver (EastWestProxy)
//! upstream_peer: the endpoint; health per    ─► request_filter: the named backend as above,
//!   (remote proxy, backend)                       then the Forwarder path: locality, failover
//! upstream_request_filter: set                    policy, ejection, connect failover, retry
//!   x-meridian-backend: <backend name>            budget, the snapshot's drains (drain.rs:
//!                                                 east-west scope)
//! upstream_response_filter: no               ◄─ response_filter: x-meridian-served-by of the
//!   x-meridian-served-by = the remote proxy's     real endpoint, always (its Gateway entry has
//!   own 404/5xx: eject (for this backend) and     served_by_header on)
//!   fail over a safe request
//! response_filter: pass the remote served-by
//!   through (served_by_header) or strip it
//! ```

/// `impl ProxyHttp` for a [`Role`]: the role's own steps (`request_filter`, its listener label)
/// plus every step both roles hand to their [`Forwarder`] unchanged (upstream choice, retries,
/// response filters, failure answers). Written once here so the two roles cannot drift apart,
/// and the lean HTTP/1 driver (`crate::lean`) calls the same [`Role`] and [`Forwarder`] methods
/// in the same order, so both request paths share every decision.
macro_rules! forwarding_proxy {
    ($role:ty) => {
        #[async_trait::async_trait]
        impl pingora_proxy::ProxyHttp for $role {
            type CTX = super::ctx::Ctx;

            fn new_ctx(&self) -> super::ctx::Ctx {
                super::ctx::Ctx::new()
            }

            async fn request_filter(
                &self,
                session: &mut pingora_proxy::Session,
                ctx: &mut super::ctx::Ctx,
            ) -> pingora_error::Result<bool> {
                super::Role::request_filter(self, session.as_downstream_mut(), ctx).await
            }

            async fn logging(
                &self,
                session: &mut pingora_proxy::Session,
                e: Option<&pingora_error::Error>,
                ctx: &mut super::ctx::Ctx,
            ) {
                let listener = super::Role::listener_label(self, ctx);
                self.fwd.logging(session.as_downstream(), e, ctx, listener);
            }

            async fn upstream_peer(
                &self,
                _session: &mut pingora_proxy::Session,
                ctx: &mut super::ctx::Ctx,
            ) -> pingora_error::Result<Box<pingora_core::upstreams::peer::HttpPeer>> {
                self.fwd.upstream_peer(ctx).await
            }

            fn fail_to_connect(
                &self,
                _session: &mut pingora_proxy::Session,
                peer: &pingora_core::upstreams::peer::HttpPeer,
                ctx: &mut super::ctx::Ctx,
                e: Box<pingora_error::Error>,
            ) -> Box<pingora_error::Error> {
                self.fwd.fail_to_connect(peer, ctx, e)
            }

            fn error_while_proxy(
                &self,
                peer: &pingora_core::upstreams::peer::HttpPeer,
                session: &mut pingora_proxy::Session,
                e: Box<pingora_error::Error>,
                ctx: &mut super::ctx::Ctx,
                client_reused: bool,
            ) -> Box<pingora_error::Error> {
                self.fwd
                    .error_while_proxy(peer, session.as_downstream(), e, ctx, client_reused)
            }

            async fn upstream_request_filter(
                &self,
                _session: &mut pingora_proxy::Session,
                upstream: &mut pingora_http::RequestHeader,
                ctx: &mut super::ctx::Ctx,
            ) -> pingora_error::Result<()> {
                self.fwd.upstream_request_filter(upstream, ctx)
            }

            async fn upstream_response_filter(
                &self,
                session: &mut pingora_proxy::Session,
                resp: &mut pingora_http::ResponseHeader,
                ctx: &mut super::ctx::Ctx,
            ) -> pingora_error::Result<()> {
                self.fwd
                    .upstream_response_filter(session.as_downstream(), resp, ctx)
            }

            async fn response_filter(
                &self,
                _session: &mut pingora_proxy::Session,
                resp: &mut pingora_http::ResponseHeader,
                ctx: &mut super::ctx::Ctx,
            ) -> pingora_error::Result<()> {
                super::Forwarder::response_filter(resp, ctx);
                Ok(())
            }

            async fn fail_to_proxy(
                &self,
                session: &mut pingora_proxy::Session,
                e: &pingora_error::Error,
                ctx: &mut super::ctx::Ctx,
            ) -> pingora_proxy::FailToProxy {
                super::Forwarder::fail_to_proxy(session.as_downstream_mut(), e, ctx).await
            }

            /// Called by pingora right after each HTTP/1 request header is read, with the
            /// connection's clock that our keep-alive loop (listeners.rs) attached: the header
            /// deadline stops here, the request's own timeouts take over (limits.rs).
            fn on_connection_reuse(
                &self,
                _session: &mut pingora_proxy::Session,
                _ctx: &mut super::ctx::Ctx,
                connection: Box<dyn std::any::Any + Send + Sync>,
            ) {
                crate::limits::header_read(connection.as_ref());
            }

            /// pingora logs every failed request at error level; `logging` reports failures
            /// instead (see [`Forwarder::logging`](super::Forwarder::logging)).
            fn suppress_error_log(
                &self,
                _session: &pingora_proxy::Session,
                _ctx: &super::ctx::Ctx,
                _e: &pingora_error::Error,
            ) -> bool {
                true
            }
        }
    };
}

mod backend_tls;
mod ctx;
mod downstream;
mod east_west;
mod filters;
mod forwarded;
mod framing;
mod grpc;
mod observe;
mod path;
mod response;
mod route;
mod session;
mod upstream;

use std::time::Duration;

pub(crate) use ctx::Ctx;
/// The downstream HTTP session the roles and the [`Forwarder`] work on (downstream.rs): today
/// pingora-core's server session, which both request paths have.
pub(crate) use downstream::Downstream;
pub use east_west::EastWestProxy;
pub(crate) use east_west::east_west_rules;
pub(crate) use framing::MAX_NOMINATIONS;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
pub use route::GatewayProxy;
pub(crate) use upstream::Forwarder;

/// What one proxy role does itself (the Gateway listeners' [`GatewayProxy`], the east-west
/// listener's [`EastWestProxy`]); everything after `request_filter` is its [`Forwarder`]'s.
pub(crate) trait Role: Send + Sync + 'static {
    /// The role's [`Forwarder`] (upstream tries, response handling, counters).
    fn forwarder(&self) -> &Forwarder;

    /// Decides where the request goes (`Ok(false)`, with `ctx.upstream` set) or answers it
    /// here (`Ok(true)`).
    fn request_filter(
        &self,
        session: &mut impl Downstream,
        ctx: &mut Ctx,
    ) -> impl std::future::Future<Output = Result<bool>> + Send;

    /// The `listener` label of the request's metrics and log line.
    fn listener_label<'c>(&self, ctx: &'c Ctx) -> &'c str;
}

pub use meridian_model::headers::{BACKEND as BACKEND_HEADER, SERVED_BY as SERVED_BY_HEADER};
/// `listener` and `route` metric labels of requests on the east-west listener start with this.
pub(crate) const EAST_WEST: &str = "east-west";

/// TLS connection facts, stored in pingora's SSL digest extension by the accept loop.
#[derive(Debug, Clone)]
pub(crate) struct TlsConnInfo {
    pub sni: Option<String>,
}

/// A rule's duration in milliseconds. Gateway API: a zero duration disables the timeout.
fn ms(v: Option<u64>) -> Option<Duration> {
    v.filter(|&m| m > 0).map(Duration::from_millis)
}

fn status_error(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// Answers `code` with an empty body and ends the request (a gRPC call gets the matching
/// gRPC status instead, grpc.rs).
async fn respond(session: &mut impl Downstream, code: u16) -> Result<bool> {
    respond_status(session, code).await?;
    Ok(true)
}

/// Answers `code` with an empty body, or for a gRPC call the trailers-only response of the
/// matching gRPC status when there is one (grpc.rs).
async fn respond_status(session: &mut impl Downstream, code: u16) -> Result<()> {
    if grpc::is_grpc_call(session.req_header())
        && let Some((status, message)) = grpc::status_for(code)
    {
        let resp = grpc::trailers_only(status, message)?;
        return session
            .write_error_response(resp, bytes::Bytes::new())
            .await;
    }
    session.respond_error(code).await
}

/// Answers `code` with a plain-text reason and ends the request.
async fn respond_text(session: &mut impl Downstream, code: u16, reason: String) -> Result<bool> {
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, reason.len())?;
    session
        .write_error_response(resp, bytes::Bytes::from(reason))
        .await?;
    Ok(true)
}

/// Answers 508 Loop Detected (and closes) when the request already passed through this proxy
/// (its `Via` holds our entry, edge.rs); `Ok(None)` otherwise.
async fn refuse_loop(
    session: &mut impl Downstream,
    edge: &crate::edge::Edge,
) -> Result<Option<bool>> {
    if !edge.looped(session.req_header()) {
        return Ok(None);
    }
    tracing::warn!("request came back to this proxy (its Via entry is present): 508");
    session.set_keepalive(None);
    respond(session, 508).await.map(Some)
}

/// Refuses a request that fails the hygiene checks (headers.rs, framing.rs) and closes the connection after
/// the answer; `Ok(None)` when the request passes.
async fn refuse_malformed(
    session: &mut impl Downstream,
    what: &'static str,
) -> Result<Option<bool>> {
    let req = session.req_header();
    let Err(refusal) = crate::headers::check_request(req).and_then(|()| framing::check(req)) else {
        return Ok(None);
    };
    tracing::debug!(reason = refusal.reason, "{what}");
    session.set_keepalive(None);
    respond(session, refusal.status).await.map(Some)
}
