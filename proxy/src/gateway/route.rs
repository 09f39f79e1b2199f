//! [`GatewayProxy`]: the Gateway listeners' proxy. Its `request_filter` routes the request and
//! runs the request-side filters in named steps; every other hook is the [`Forwarder`]'s.
//!
//! ```text
//! request_filter ─ hygiene, framing ─ path normalisation (path.rs; 400) ─ own Via entry? 508
//!                ─ drop Connection-nominated headers ─ route (served router)
//!                ─ forwarding headers (forwarded.rs)
//!                ─ rule redirect? ─ CORS preflight? 204 (its Origin kept for the response)
//!                ─ rule filters
//!                ─ session token? its backend (session.rs) : choose_backend (weighted;
//!                  500/503) ─ backend redirect? ─ backend filters
//!                ─ Forwarder::start (limits, allowances)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use meridian_model::router::{CompiledRule, Decision, Request, RouteMatch};
use meridian_model::snapshot::{
    Backend, BackendTarget, Endpoint, FailoverPolicy, Filter, Protocol,
};
use meridian_model::traffic::FailureKind;
use pingora_error::Result;

use super::ctx::{Ctx, Routing, Target};
use super::filters::{self, request_host};
use super::{
    BACKEND_HEADER, Downstream, Forwarder, Role, TlsConnInfo, forwarded, framing, refuse_loop,
    refuse_malformed, respond, respond_text,
};
use crate::endpoints;
use crate::headers::ReqHeaders;
use crate::state::Shared;

/// The proxy of the Gateway listeners: routes every request by the served snapshot.
pub struct GatewayProxy {
    fwd: Forwarder,
}

impl GatewayProxy {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        GatewayProxy {
            fwd: Forwarder { shared },
        }
    }

    /// Routes the request with the served router, recording its listener and Gateway in
    /// `routing`; the status to answer when no rule matches.
    fn route(
        &self,
        session: &impl Downstream,
        routing: &mut Routing,
    ) -> std::result::Result<RouteMatch, u16> {
        let Some(served) = self.fwd.shared.served.load_full() else {
            return Err(404);
        };
        let Some(local) = local_addr(session) else {
            return Err(404);
        };
        let sni = connection_sni(session);
        let req = session.req_header();
        let headers = ReqHeaders(req);
        let decision = served.router.route(&Request {
            local,
            sni: sni.as_deref(),
            host: request_host(req),
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &headers,
        });
        let (listener, answer) = match decision {
            Decision::NoListener => return Err(404),
            Decision::NotFound { listener } => (listener, Err(404)),
            Decision::Misdirected { listener } => (listener, Err(421)),
            Decision::Matched(m) => (m.listener.clone(), Ok(m)),
        };
        routing.gateway = served
            .gateways
            .gateway(&listener.gateway_namespace, &listener.gateway_name)
            .cloned();
        routing.listener = Some(listener);
        answer
    }

    /// Runs `filters` (all but redirects) on the request.
    fn apply_filters(
        &self,
        session: &mut impl Downstream,
        filters: &[Filter],
        m: &RouteMatch,
        original_path: &str,
        routing: &Routing,
    ) {
        for f in filters {
            filters::apply_request_filter(
                &self.fwd.shared,
                f,
                session.req_header_mut(),
                original_path,
                m.matched_prefix.as_deref(),
                routing.gateway.as_deref(),
            );
        }
    }

    /// The matched rule's redirect and filters, the backend choice and the backend's filters;
    /// then the request goes upstream (`Ok(false)`) unless it was answered here.
    async fn serve_match(
        &self,
        session: &mut impl Downstream,
        ctx: &mut Ctx,
        m: RouteMatch,
    ) -> Result<bool> {
        let rule = m.rule.clone();
        if let Some(r) = rule.redirect() {
            return filters::redirect(session, r, &m).await;
        }
        if let Some(c) = filters::rule_cors(&rule.rule.filters) {
            match filters::cors_request(session, c).await? {
                Ok(origin) => ctx.routing.cors_origin = origin,
                // A preflight, answered.
                Err(()) => return Ok(true),
            }
        }
        // The path before any filter, for the filters' prefix rewrites; copied only when a
        // filter may need it (most rules have none).
        let mut original_path = None;
        if !rule.rule.filters.is_empty() {
            let original = session.req_header().uri.path().to_string();
            self.apply_filters(session, &rule.rule.filters, &m, &original, &ctx.routing);
            original_path = Some(original);
        }
        // A valid session token picks its backend (when still usable) instead of the weights.
        let sticky = rule
            .rule
            .session_persistence
            .as_ref()
            .and_then(|_| super::session::of_request(&rule, session.req_header()));
        ctx.routing.sticky = sticky;
        let chosen = match sticky.and_then(|s| sticky_backend(&rule, s.backend)) {
            Some(chosen) => Ok(chosen),
            None => choose_backend(&rule),
        };
        let chosen = match chosen {
            Ok(chosen) => chosen,
            Err((code, kind)) => {
                ctx.fail(kind);
                return respond(session, code).await;
            }
        };
        let backend = chosen.backend;
        if let Some(r) = backend.filters.iter().find_map(|f| match f {
            Filter::RequestRedirect(r) => Some(r),
            _ => None,
        }) {
            return filters::redirect(session, r, &m).await;
        }
        if !backend.filters.is_empty() {
            // Without rule filters the path is still the original one.
            let original =
                original_path.unwrap_or_else(|| session.req_header().uri.path().to_string());
            self.apply_filters(session, &backend.filters, &m, &original, &ctx.routing);
        }
        let drain = ctx
            .routing
            .gateway
            .as_ref()
            .and_then(|g| g.backend_drain(&backend.name));
        let target = Target {
            rule: rule.clone(),
            index: chosen.index,
            drain,
        };
        let mut up = self.fwd.start(target, chosen.endpoints, chosen.failover);
        up.sticky = sticky
            .filter(|s| s.backend == chosen.index)
            .map(|s| s.endpoint);
        ctx.upstream = Some(up);
        Ok(false)
    }
}

/// The backend chosen for a request and its endpoints.
struct Chosen<'a> {
    index: usize,
    backend: &'a Backend,
    endpoints: &'a [Endpoint],
    failover: Option<&'a FailoverPolicy>,
}

/// The weighted backend pick of a rule, or the status and failure kind to answer: 500 without a
/// usable backend (none, every weight 0, invalid), 503 without a ready endpoint.
fn choose_backend(rule: &CompiledRule) -> std::result::Result<Chosen<'_>, (u16, FailureKind)> {
    let Some((index, backend)) = rule.pick_backend(rand::random::<u64>()) else {
        // No backends, or every weight is 0.
        return Err((500, FailureKind::Other));
    };
    let (endpoints, failover) = match &backend.target {
        BackendTarget::Invalid { reason } => {
            tracing::debug!(backend = %backend.name, reason, "invalid backend");
            return Err((500, FailureKind::Other));
        }
        BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } => (endpoints, failover.as_ref()),
    };
    if endpoints::ready_count(endpoints) == 0 {
        return Err((503, FailureKind::NoEndpoint));
    }
    Ok(Chosen {
        index,
        backend,
        endpoints,
        failover,
    })
}

/// Backend `index` of the rule for a session that names it: only while it has a weight, is
/// valid and has a ready endpoint (else the session starts over with the weighted pick).
fn sticky_backend(rule: &CompiledRule, index: usize) -> Option<Chosen<'_>> {
    let backend = rule.rule.backends.get(index).filter(|b| b.weight > 0)?;
    match &backend.target {
        BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } if endpoints::ready_count(endpoints) > 0 => Some(Chosen {
            index,
            backend,
            endpoints,
            failover: failover.as_ref(),
        }),
        _ => None,
    }
}

/// The SNI of the TLS connection the request came on.
fn connection_sni(session: &impl Downstream) -> Option<String> {
    let digest = session.digest()?;
    let ssl = digest.ssl_digest.as_ref()?;
    ssl.extension.get::<TlsConnInfo>()?.sni.clone()
}

/// The local address of the connection (which listener socket).
pub(super) fn local_addr(session: &impl Downstream) -> Option<SocketAddr> {
    session.server_addr().and_then(|a| a.as_inet()).copied()
}

impl Role for GatewayProxy {
    fn forwarder(&self) -> &Forwarder {
        &self.fwd
    }

    async fn request_filter(&self, session: &mut impl Downstream, ctx: &mut Ctx) -> Result<bool> {
        self.fwd.begin(session, ctx);
        if let Some(answered) = refuse_malformed(session, "request refused").await? {
            return Ok(answered);
        }
        // Rules, filters and the backend all see the normal form of the path.
        if let Err(e) =
            super::path::normalize_request(session.req_header_mut(), &self.fwd.shared.paths)
        {
            tracing::debug!(reason = %e, "request path refused");
            session.set_keepalive(None);
            return respond_text(session, 400, format!("{e}\n")).await;
        }
        if let Some(answered) = refuse_loop(session, &self.fwd.shared.edge).await? {
            return Ok(answered);
        }
        // Nominated headers go before the filters run, so a client cannot strip a header a
        // filter sets (pingora would remove them after the filters: framing.rs).
        framing::strip_nominated(session.req_header_mut());
        // Only this proxy picks the backend of an east-west hop.
        session.req_header_mut().remove_header(BACKEND_HEADER);
        match self.route(session, &mut ctx.routing) {
            Ok(m) => {
                ctx.routing.rule = Some(m.rule.clone());
                let peer = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip());
                let https = m.listener.protocol == Protocol::Https;
                let hops = self.fwd.shared.edge.xff_trusted_hops;
                // Before the filters, so a filter (and a mirror copy) sees the final values.
                ctx.routing.client = forwarded::apply(session.req_header_mut(), peer, https, hops);
                self.serve_match(session, ctx, m).await
            }
            Err(code) => respond(session, code).await,
        }
    }

    fn listener_label<'c>(&self, ctx: &'c Ctx) -> &'c str {
        ctx.routing
            .listener
            .as_ref()
            .map_or("", |l| l.label.as_str())
    }
}

forwarding_proxy!(GatewayProxy);
