//! The pingora `ProxyHttp` implementation: one request from routing to logging.
//!
//! ```text
//! request_filter ── hygiene checks (400/431)
//!                ── router.route(local, SNI, Host, method, path, query, headers)
//!                     NoListener/NotFound → 404, Misdirected → 421
//!                ── rule RequestRedirect → 3xx + Location
//!                ── rule filters in order: header edits, URL rewrite, mirror
//!                ── weighted backend pick: none/weight 0/Invalid → 500, no ready endpoint → 503
//!                ── backend filters (same kinds, redirect included)
//! upstream_peer  ── endpoint by locality tier, skipping ejected, drained and tried ones;
//!                   per-try timeouts
//! fail_to_connect ─ eject the endpoint, retry another (bounded, within the retry budget)
//! error_while_proxy ─ safe requests with a replayable body retried on another endpoint
//!                    (budgeted); a reset on a fresh connection ejects the endpoint
//! upstream_response_filter ─ retry on a listed status while tries remain
//! response_filter ─ ResponseHeaderModifier (rule, then backend)
//! response_filter ─ x-meridian-served-by (Gateway served_by_header, endpoint responses only)
//! fail_to_proxy  ── 504 on timeouts, 503 on upstream failures; failure kind for the counters
//! logging        ── metrics, per-Gateway traffic counters (region that answered, failure kind,
//!                   latency head to head), the failure log line
//! ```
//!
//! The matched rule is cloned into the per-request context once, so a snapshot swap in the middle
//! of a request changes nothing for it.
//!
//! East-west (multi-network clusters), both ends in this one implementation:
//!
//! ```text
//! sender (a Gateway listener)             receiver (the east-west listener, Gateway.east_west)
//! request_filter: drop any client
//!   x-meridian-backend, route as usual
//! upstream_peer: an east_west endpoint ─► request_filter: x-meridian-backend required (400),
//!   (= a remote proxy's east-west            names a Snapshot.east_west backend (404), removed;
//!    listener), health per backend          the backend becomes a one-backend rule and the rest
//! upstream_request_filter: set              is the path above: locality, failover policy,
//!   x-meridian-backend: <backend name>      ejection, connect failover, retry budget, and the
//!                                           snapshot's drains (drain.rs: east-west scope);
//!                                           every ready endpoint drained → 503, no served-by
//! upstream_response_filter: no            ◄─ response_filter: x-meridian-served-by of the real
//!   x-meridian-served-by = the remote         endpoint, always
//!   proxy's own 404/5xx: eject (for this
//!   backend) and fail over a safe request
//! response_filter: pass the remote
//!   served-by through (served_by_header)
//!   or strip it
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_model::filters::{self, RedirectContext};
use meridian_model::router::{CompiledRule, Decision, ListenerInfo, Request, RouteMatch};
use meridian_model::snapshot::{
    Backend, BackendProtocol, BackendTarget, EastWestBackend, Endpoint, FailoverPolicy, Filter,
    Protocol, RequestMirror, RequestRedirect, Rule, UrlRewrite,
};
use meridian_model::traffic::FailureKind;
use pingora_core::protocols::TcpKeepalive;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::budget::DEFAULT_PERCENT;
use crate::drain::{BackendDrain, GatewayEntry};
use crate::endpoints::{self, EndpointKey, NoEndpoint};
use crate::headers::{self, ReqEdit, ReqHeaders, RespEdit};
use crate::mirror;
use crate::state::Shared;

/// Connect timeout when the rule sets no per-try timeout. 2 s: a blackholed endpoint costs a
/// request at most this before it moves on (1 s would spend two retries per request on a dead
/// zone before the health checker ejects it and exhaust the retry budget), and one lost SYN
/// (resent after 1 s) still connects.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Sent data unacknowledged this long kills an upstream connection (TCP_USER_TIMEOUT): a request
/// on a pooled connection into a region whose packets vanish fails over instead of waiting for
/// the client to give up. Keep-alive probes find dead idle pooled connections the same way.
const UPSTREAM_USER_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle time of a pooled upstream connection.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// Most extra tries spent on connect failures when the rule has no retry policy.
const MAX_CONNECT_FAILOVER: u32 = 3;
/// Response header naming the endpoint that answered (Gateway `served_by_header`; always on
/// east-west responses).
pub const SERVED_BY_HEADER: &str = "x-meridian-served-by";
/// Request header naming the backend ([`Backend::name`]) on a hop to a remote proxy's east-west
/// listener. Only proxies set it: a client's is dropped.
pub const BACKEND_HEADER: &str = "x-meridian-backend";
/// `listener` and `route` metric labels of requests on the east-west listener start with this.
pub(crate) const EAST_WEST: &str = "east-west";
/// Longest backend name quoted back in a 404 of the east-west listener.
const MAX_QUOTED_NAME: usize = 200;

/// TLS connection facts, stored in pingora's SSL digest extension by the accept loop.
#[derive(Debug, Clone)]
pub(crate) struct TlsConnInfo {
    pub sni: Option<String>,
}

/// The proxy application. One instance serves the Gateway listeners, another (with `east_west`)
/// the east-west listener; both share the proxy's state (health, retry budget, metrics).
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    /// Serves the east-west listener: requests name a `Snapshot.east_west` backend instead of
    /// being routed.
    pub(crate) east_west: bool,
}

/// Per-request state.
pub struct Ctx {
    listener: Option<Arc<ListenerInfo>>,
    matched: Option<RouteMatch>,
    backend: Option<usize>,
    deadline: Option<Instant>,
    per_try: Option<Duration>,
    /// Retries the rule's policy still allows.
    retries_left: u32,
    /// Extra tries allowed for connect failures and failed safe requests beyond the rule's
    /// policy (each also needs the proxy's retry budget).
    connect_failovers_left: u32,
    /// Retry budget share for this backend (FailoverPolicy `retry.budgetPercent`).
    budget_percent: u32,
    tried: Vec<SocketAddr>,
    current: Option<SocketAddr>,
    /// Health identity of `current` (per backend for an east-west endpoint).
    current_key: Option<EndpointKey>,
    /// `x-meridian-served-by` of the response from an east-west hop (where the remote proxy
    /// really served the request).
    remote_served_by: Option<String>,
    /// The request came in on the east-west listener.
    east_west: bool,
    /// The last upstream error is our own "retry on status" marker.
    status_retry: bool,
    /// A retry is pending: back off before the next try.
    backoff: Option<Duration>,
    first_try: Option<Instant>,
    latency_recorded: bool,
    /// When the request head was read (`new_ctx`).
    started: Instant,
    /// When the response head from an endpoint went downstream.
    head_at: Option<Instant>,
    /// The matched Gateway: served-by switch and traffic counters.
    gateway: Option<Arc<GatewayEntry>>,
    /// Drills' view of the chosen backend (`None` when nothing of it is drained or returning).
    drain: Option<Arc<BackendDrain>>,
    /// Index of `current` in the chosen backend's endpoints.
    current_ep: Option<usize>,
    /// The response going downstream came from an endpoint.
    answered: bool,
    /// Why the request failed, when the proxy knows it better than the final error says.
    failure: Option<FailureKind>,
}

impl Ctx {
    fn route_label(&self) -> String {
        match &self.matched {
            Some(m) => format!("{}/{}", m.rule.route_namespace, m.rule.route_name),
            None => String::new(),
        }
    }

    fn listener_label(&self) -> String {
        if self.east_west {
            return EAST_WEST.to_string();
        }
        match &self.listener {
            Some(l) => format!("{}/{}/{}", l.gateway_namespace, l.gateway_name, l.name),
            None => String::new(),
        }
    }

    fn chosen_backend(&self) -> Option<&Backend> {
        let m = self.matched.as_ref()?;
        m.rule.rule.backends.get(self.backend?)
    }

    /// The endpoint of the last try.
    fn current_endpoint(&self) -> Option<&Endpoint> {
        match &self.chosen_backend()?.target {
            BackendTarget::Endpoints { endpoints, .. } => endpoints.get(self.current_ep?),
            BackendTarget::Invalid { .. } => None,
        }
    }

    /// The last try went to a remote proxy's east-west listener.
    fn east_west_hop(&self) -> bool {
        self.current_endpoint().is_some_and(|e| e.east_west)
    }

    /// `cluster/region/zone` of the endpoint that answered (behind an east-west hop: what the
    /// remote proxy says).
    fn served_by(&self) -> Option<String> {
        if !self.answered {
            return None;
        }
        if let Some(remote) = &self.remote_served_by {
            return Some(remote.clone());
        }
        self.current_endpoint()
            .map(|e| format!("{}/{}/{}", e.cluster, e.region, e.zone))
    }

    /// The region of the endpoint that answered, for the traffic counters.
    fn answered_region(&self) -> Option<&str> {
        if !self.answered {
            return None;
        }
        if let Some(remote) = &self.remote_served_by {
            return remote.split('/').nth(1);
        }
        self.current_endpoint().map(|e| e.region.as_str())
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The matched rule's pause between retries.
    fn retry_backoff(&self) -> Option<Duration> {
        self.matched
            .as_ref()
            .and_then(|m| m.rule.rule.retry.as_ref())
            .and_then(|r| r.backoff_ms)
            .map(Duration::from_millis)
    }

    /// The time left for one try: the per-try timeout capped by the request deadline.
    fn try_budget(&self) -> Option<Duration> {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        match (self.per_try, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn ms(v: Option<u64>) -> Option<Duration> {
    // Gateway API: a zero duration disables the timeout.
    v.filter(|&m| m > 0).map(Duration::from_millis)
}

fn status_error(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// Answers `code` with an empty body and ends the request.
async fn respond(session: &mut Session, code: u16) -> Result<bool> {
    session.respond_error(code).await?;
    Ok(true)
}

/// Answers `code` with a plain-text reason and ends the request.
async fn respond_text(session: &mut Session, code: u16, reason: String) -> Result<bool> {
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, reason.len())?;
    session
        .as_downstream_mut()
        .write_error_response(resp, bytes::Bytes::from(reason))
        .await?;
    Ok(true)
}

/// The backend a request on the east-west listener names, or why it names none (400).
fn named_backend(req: &RequestHeader) -> std::result::Result<&str, &'static str> {
    let mut values = req.headers.get_all(BACKEND_HEADER).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(if req.headers.contains_key(BACKEND_HEADER) {
            "more than one x-meridian-backend header\n"
        } else {
            "x-meridian-backend is required: this is a Meridian east-west listener, which serves \
             proxies of other networks the backend they name\n"
        });
    };
    match v.to_str() {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim()),
        Ok(_) => Err("x-meridian-backend is empty\n"),
        Err(_) => Err("x-meridian-backend is not visible ASCII text\n"),
    }
}

/// The snapshot's east-west backends as one-backend rules, so a request on the east-west listener
/// runs the same upstream path (choice, retries, ejection, counters) as a routed one. No
/// timeouts and no retry policy of their own: the sending proxy's rule bounds the request, and
/// connect failover comes from the backend's failover policy as for any backend.
pub(crate) fn east_west_rules(
    backends: &[EastWestBackend],
) -> std::collections::HashMap<String, Arc<CompiledRule>> {
    backends
        .iter()
        .map(|b| {
            let rule = CompiledRule {
                route_namespace: EAST_WEST.to_string(),
                route_name: b.name.clone(),
                index: 0,
                rule: Rule {
                    backends: vec![Backend {
                        name: b.name.clone(),
                        weight: 1,
                        filters: Vec::new(),
                        target: BackendTarget::Endpoints {
                            protocol: b.protocol,
                            endpoints: b.endpoints.clone(),
                            failover: b.failover.as_deref().cloned(),
                        },
                    }],
                    ..Rule::default()
                },
                cumulative_weights: vec![1],
            };
            (b.name.clone(), Arc::new(rule))
        })
        .collect()
}

impl Gateway {
    fn connection_sni(session: &Session) -> Option<String> {
        let digest = session.as_downstream().digest()?;
        let ssl = digest.ssl_digest.as_ref()?;
        ssl.extension.get::<TlsConnInfo>()?.sni.clone()
    }

    fn local_addr(session: &Session) -> Option<SocketAddr> {
        session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .copied()
    }

    /// Writes a redirect for `r` and ends the request.
    async fn redirect(
        session: &mut Session,
        r: &RequestRedirect,
        listener: &ListenerInfo,
        matched_prefix: Option<&str>,
        local: Option<SocketAddr>,
    ) -> Result<bool> {
        let req = session.req_header();
        let host = request_host(req)
            .map(meridian_model::hostname::normalize_host)
            .or_else(|| local.map(|l| l.ip().to_string()))
            .unwrap_or_default();
        let scheme = match listener.protocol {
            Protocol::Http => "http",
            Protocol::Https => "https",
        };
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let (status, location) = filters::redirect(
            r,
            &RedirectContext {
                scheme,
                host: &host,
                listener_port: listener.port,
                path: &path,
                query: query.as_deref(),
                matched_prefix,
            },
        );
        let mut resp = ResponseHeader::build(status, Some(2))?;
        resp.insert_header("location", location)?;
        resp.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    /// Sets the request's deadline, per-try timeout and try allowances from its rule and backend,
    /// and counts it for the retry budget. `ctx.drain` must be set already.
    fn prepare_tries(
        &self,
        ctx: &mut Ctx,
        rule: &CompiledRule,
        endpoints: &[Endpoint],
        failover: Option<&FailoverPolicy>,
    ) {
        let timeouts = &rule.rule.timeouts;
        ctx.deadline = ms(timeouts.request_ms).map(|d| Instant::now() + d);
        ctx.per_try = ms(timeouts.backend_request_ms);
        ctx.retries_left = rule.rule.retry.as_ref().map_or(0, |r| r.attempts);
        // Drained endpoints are never tried, so they do not earn extra tries either.
        let drained = ctx.drain.as_deref().map_or(0, |d| {
            endpoints
                .iter()
                .filter(|e| e.ready && d.is_drained(&SocketAddr::new(e.address, e.port)))
                .count()
        });
        let ready = u32::try_from(endpoints::ready_count(endpoints).saturating_sub(drained))
            .unwrap_or(u32::MAX);
        let retry = failover.and_then(|f| f.retry.as_deref());
        let attempts = retry
            .map(|r| r.attempts)
            .filter(|&a| a > 0)
            .unwrap_or(MAX_CONNECT_FAILOVER);
        ctx.connect_failovers_left = ready.saturating_sub(1).min(attempts);
        ctx.budget_percent = retry
            .map(|r| r.budget_percent)
            .filter(|&p| p > 0)
            .unwrap_or(DEFAULT_PERCENT);
        self.shared.budget.request();
    }

    /// A request on the east-west listener: the backend it names in `x-meridian-backend` (400
    /// without, 404 when the served snapshot has no such east-west backend), its drain view
    /// (503 when every ready endpoint is drained), then the same upstream path as a routed
    /// request.
    async fn east_west_request(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(side) = &self.shared.east_west {
            ctx.listener = Some(side.listener.clone());
            ctx.gateway = Some(side.gateway.clone());
        }
        if let Err(refusal) = headers::check_request(session.req_header()) {
            tracing::debug!(reason = refusal.reason, "east-west request refused");
            session.set_keepalive(None);
            return respond(session, refusal.status).await;
        }
        let name = match named_backend(session.req_header()) {
            Ok(name) => name.to_string(),
            Err(why) => return respond_text(session, 400, why.to_string()).await,
        };
        let (rule, drain) = match self.shared.served.load().as_ref() {
            Some(s) => (
                s.east_west.get(&name).cloned(),
                s.gateways.east_west_drain(&name),
            ),
            None => (None, None),
        };
        let (Some(rule), Some(listener)) = (rule, ctx.listener.clone()) else {
            let quoted: String = name.chars().take(MAX_QUOTED_NAME).collect();
            return respond_text(
                session,
                404,
                format!("no east-west backend {quoted:?} on this proxy\n"),
            )
            .await;
        };
        session.req_header_mut().remove_header(BACKEND_HEADER);
        ctx.matched = Some(RouteMatch {
            listener,
            rule: rule.clone(),
            matched_prefix: None,
        });
        ctx.backend = Some(0);
        let Some(BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        }) = rule.rule.backends.first().map(|b| &b.target)
        else {
            ctx.failure = Some(FailureKind::Other);
            return respond(session, 500).await;
        };
        if endpoints::ready_count(endpoints) == 0 {
            ctx.failure = Some(FailureKind::NoEndpoint);
            return respond(session, 503).await;
        }
        // A drill's drain in this proxy's snapshot holds here too: the sender only drained this
        // proxy's own east-west endpoint, by this proxy's locality (see drain.rs for the scope).
        if let Some(d) = drain.as_deref()
            && endpoints
                .iter()
                .filter(|e| e.ready)
                .all(|e| d.is_drained(&SocketAddr::new(e.address, e.port)))
        {
            // No x-meridian-served-by: the sender ejects this proxy for the backend and a safe
            // request fails over elsewhere.
            ctx.failure = Some(FailureKind::NoEndpoint);
            return respond_text(
                session,
                503,
                "every ready endpoint of this backend here is drained by a failover drill\n"
                    .to_string(),
            )
            .await;
        }
        ctx.drain = drain;
        self.prepare_tries(ctx, &rule, endpoints, failover.as_ref());
        Ok(false)
    }

    /// A response from an east-west hop without `x-meridian-served-by`: the remote proxy answered
    /// itself. A 404 (it does not serve the backend, e.g. its snapshot is older) or a 5xx (no
    /// endpoint of the backend there, or none that answered) means this endpoint cannot serve
    /// this backend now: it is ejected for this backend only, and a safe request moves on to
    /// another endpoint as after a connect failure (same allowance and retry budget). A response
    /// that cannot move on goes to the client, counted as not served by an endpoint; a 404
    /// becomes a 503, as the client's route does exist.
    fn east_west_refusal(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
        code: u16,
    ) -> Result<()> {
        if code != 404 && code < 500 {
            return Ok(());
        }
        if let Some(key) = ctx.current_key
            && self.shared.ejections.eject(key)
        {
            self.shared.metrics.ejections.inc();
            tracing::info!(
                endpoint = %key,
                status = code,
                "east-west endpoint ejected: the remote proxy cannot serve the backend"
            );
        }
        if session.req_header().method.is_idempotent()
            && ctx.connect_failovers_left > 0
            && !ctx.deadline_passed()
            && self.shared.budget.try_retry(ctx.budget_percent)
        {
            ctx.connect_failovers_left -= 1;
            // Our own retry marker, as for a listed status.
            ctx.status_retry = true;
            self.shared
                .metrics
                .retries
                .with_label_values(&["failover"])
                .inc();
            let mut e = Error::explain(
                ErrorType::HTTPStatus(code),
                "the remote proxy cannot serve the backend",
            );
            e.set_retry(true);
            return Err(e);
        }
        ctx.failure = Some(match code {
            504 => FailureKind::Timeout,
            404 | 503 => FailureKind::NoEndpoint,
            _ => FailureKind::Other,
        });
        if code == 404 {
            resp.set_status(503)?;
        }
        Ok(())
    }

    /// Applies one request-side filter (not redirects). `original_path` is the path the router
    /// matched, which prefix rewrites are relative to.
    fn apply_request_filter(
        &self,
        f: &Filter,
        req: &mut RequestHeader,
        original_path: &str,
        matched_prefix: Option<&str>,
        gateway: Option<&GatewayEntry>,
    ) {
        match f {
            Filter::RequestHeaderModifier(m) => {
                filters::apply_header_modifier(m, &mut ReqEdit(req));
            }
            Filter::UrlRewrite(r) => rewrite(req, r, original_path, matched_prefix),
            Filter::RequestMirror(m) => self.mirror(req, m, gateway),
            // Response edits run in `response_filter`; redirects are handled by the caller.
            Filter::ResponseHeaderModifier(_) | Filter::RequestRedirect(_) => {}
        }
    }

    fn mirror(&self, req: &RequestHeader, m: &RequestMirror, gateway: Option<&GatewayEntry>) {
        if m.percent <= 0.0 || (m.percent < 100.0 && rand::random::<f64>() * 100.0 >= m.percent) {
            return;
        }
        let BackendTarget::Endpoints {
            protocol,
            endpoints,
            failover,
        } = &m.backend.target
        else {
            return;
        };
        let drain = gateway.and_then(|g| g.backend_drain(&m.backend.name));
        let Some((target, east_west)) = endpoints::choose(
            endpoints,
            &m.backend.name,
            &self.shared.locality,
            failover.as_ref(),
            &self.shared.ejections,
            &[],
            drain.as_deref(),
        )
        .ok()
        .and_then(|i| endpoints.get(i))
        .map(|e| (SocketAddr::new(e.address, e.port), e.east_west)) else {
            return;
        };
        let path_and_query = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let mut headers = req.headers.clone();
        headers.remove(BACKEND_HEADER);
        if east_west {
            match http::HeaderValue::from_str(&m.backend.name) {
                Ok(v) => {
                    headers.insert(BACKEND_HEADER, v);
                }
                // A copy the remote proxy could not place is not worth sending.
                Err(_) => return,
            }
        }
        // An HTTP/2 request has no Host header; the copy needs one.
        if !headers.contains_key(http::header::HOST)
            && let Some(a) = req.uri.authority()
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            headers.insert(http::header::HOST, v);
        }
        self.shared.mirror.send(
            target,
            *protocol == BackendProtocol::H2c,
            mirror::Copy {
                method: req.method.clone(),
                path_and_query,
                headers,
            },
        );
    }
}

/// The client closed or broke its connection (or stopped reading): nothing to report.
fn client_went_away(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        )
}

/// What kind of failure `e` (the error that ended the request) is, for the traffic counters.
/// `None` for errors that are not the backend's or the proxy's fault (the client's).
fn failure_kind(e: &Error, status_retry: bool, deadline_passed: bool) -> Option<FailureKind> {
    if deadline_passed {
        return Some(FailureKind::Timeout);
    }
    match e.etype() {
        // The endpoint answered a listed status and the retry could not happen.
        ErrorType::HTTPStatus(c) if status_retry => (*c >= 500).then_some(FailureKind::Upstream5xx),
        ErrorType::HTTPStatus(504) => Some(FailureKind::Timeout),
        ErrorType::HTTPStatus(503) => Some(FailureKind::NoEndpoint),
        ErrorType::HTTPStatus(c) => (*c >= 500).then_some(FailureKind::Other),
        // A connect timeout means the endpoint could not be reached, like a refusal.
        ErrorType::ConnectTimedout => Some(FailureKind::Connect),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *e.esource() == ErrorSource::Upstream =>
        {
            Some(FailureKind::Timeout)
        }
        _ => match e.esource() {
            ErrorSource::Upstream => Some(FailureKind::Connect),
            ErrorSource::Downstream => None,
            ErrorSource::Internal | ErrorSource::Unset => Some(FailureKind::Other),
        },
    }
}

/// The Host header, or the `:authority` of an HTTP/2 request.
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

fn rewrite(req: &mut RequestHeader, r: &UrlRewrite, original_path: &str, prefix: Option<&str>) {
    if let Some(host) = &r.hostname
        && let Err(e) = req.insert_header(http::header::HOST, host.as_str())
    {
        tracing::debug!(error = %e, "host rewrite skipped");
    }
    if let Some(p) = &r.path {
        // Both path modifiers keep the request's query.
        let new_path = filters::rewrite_path(p, original_path, prefix);
        let pq = match req.uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = req.uri.authority().cloned();
        match pq.parse::<http::uri::PathAndQuery>() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(e) => {
                tracing::debug!(error = %e, "path rewrite produced an invalid path; skipped");
                return;
            }
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => req.set_uri(uri),
            Err(e) => tracing::debug!(error = %e, "path rewrite skipped"),
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            listener: None,
            matched: None,
            backend: None,
            deadline: None,
            per_try: None,
            retries_left: 0,
            connect_failovers_left: 0,
            budget_percent: DEFAULT_PERCENT,
            tried: Vec::new(),
            current: None,
            current_key: None,
            remote_served_by: None,
            east_west: self.east_west,
            status_retry: false,
            backoff: None,
            first_try: None,
            latency_recorded: false,
            // pingora makes the context right after reading the request head.
            started: Instant::now(),
            head_at: None,
            gateway: None,
            drain: None,
            current_ep: None,
            answered: false,
            failure: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if self.east_west {
            return self.east_west_request(session, ctx).await;
        }
        if let Err(refusal) = headers::check_request(session.req_header()) {
            tracing::debug!(reason = refusal.reason, "request refused");
            session.set_keepalive(None);
            return respond(session, refusal.status).await;
        }
        // Only this proxy picks the backend of an east-west hop.
        session.req_header_mut().remove_header(BACKEND_HEADER);
        let Some(served) = self.shared.served.load_full() else {
            return respond(session, 404).await;
        };
        let local = Self::local_addr(session);
        let sni = Self::connection_sni(session);
        let decision = {
            let req = session.req_header();
            let Some(local) = local else {
                return respond(session, 404).await;
            };
            let headers = ReqHeaders(req);
            served.router.route(&Request {
                local,
                sni: sni.as_deref(),
                host: request_host(req),
                method: req.method.as_str(),
                path: req.uri.path(),
                query: req.uri.query(),
                headers: &headers,
            })
        };
        let listener = match &decision {
            Decision::NoListener => None,
            Decision::NotFound { listener } | Decision::Misdirected { listener } => Some(listener),
            Decision::Matched(m) => Some(&m.listener),
        };
        if let Some(l) = listener {
            ctx.gateway = served
                .gateways
                .gateway(&l.gateway_namespace, &l.gateway_name)
                .cloned();
        }
        drop(served);
        let m = match decision {
            Decision::NoListener => return respond(session, 404).await,
            Decision::NotFound { listener } => {
                ctx.listener = Some(listener);
                return respond(session, 404).await;
            }
            Decision::Misdirected { listener } => {
                ctx.listener = Some(listener);
                return respond(session, 421).await;
            }
            Decision::Matched(m) => m,
        };
        ctx.listener = Some(m.listener.clone());
        ctx.matched = Some(m.clone());
        let rule = m.rule.clone();
        let prefix = m.matched_prefix.as_deref();

        if let Some(r) = rule.redirect() {
            return Self::redirect(session, r, &m.listener, prefix, local).await;
        }
        let original_path = session.req_header().uri.path().to_string();
        for f in &rule.rule.filters {
            self.apply_request_filter(
                f,
                session.req_header_mut(),
                &original_path,
                prefix,
                ctx.gateway.as_deref(),
            );
        }

        let Some((idx, backend)) = rule.pick_backend(rand::random::<u64>()) else {
            // No backends, or every weight is 0.
            ctx.failure = Some(FailureKind::Other);
            return respond(session, 500).await;
        };
        ctx.backend = Some(idx);
        let (endpoints, failover) = match &backend.target {
            BackendTarget::Invalid { reason } => {
                tracing::debug!(backend = %backend.name, reason, "invalid backend");
                ctx.failure = Some(FailureKind::Other);
                return respond(session, 500).await;
            }
            BackendTarget::Endpoints {
                endpoints,
                failover,
                ..
            } => (endpoints, failover.as_ref()),
        };
        if endpoints::ready_count(endpoints) == 0 {
            ctx.failure = Some(FailureKind::NoEndpoint);
            return respond(session, 503).await;
        }
        for f in &backend.filters {
            if let Filter::RequestRedirect(r) = f {
                return Self::redirect(session, r, &m.listener, prefix, local).await;
            }
        }
        for f in &backend.filters {
            self.apply_request_filter(
                f,
                session.req_header_mut(),
                &original_path,
                prefix,
                ctx.gateway.as_deref(),
            );
        }
        ctx.drain = ctx
            .gateway
            .as_ref()
            .and_then(|g| g.backend_drain(&backend.name));
        self.prepare_tries(ctx, &rule, endpoints, failover);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let Some(pause) = ctx.backoff.take() {
            let pause = match ctx.deadline {
                Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
                None => pause,
            };
            tokio::time::sleep(pause).await;
        }
        if ctx.deadline_passed() {
            ctx.failure = Some(FailureKind::Timeout);
            return Err(status_error(504, "request timeout"));
        }
        ctx.status_retry = false;
        if !matches!(
            ctx.chosen_backend().map(|b| &b.target),
            Some(BackendTarget::Endpoints { .. })
        ) {
            ctx.failure = Some(FailureKind::Other);
            return Err(status_error(500, "no backend chosen"));
        }
        let picked = match ctx.chosen_backend() {
            Some(Backend {
                name,
                target:
                    BackendTarget::Endpoints {
                        protocol,
                        endpoints,
                        failover,
                    },
                ..
            }) => {
                let choose = |tried: &[SocketAddr]| {
                    endpoints::choose(
                        endpoints,
                        name,
                        &self.shared.locality,
                        failover.as_ref(),
                        &self.shared.ejections,
                        tried,
                        ctx.drain.as_deref(),
                    )
                };
                let index = match choose(&ctx.tried) {
                    // Retrying after every endpoint was tried: start over.
                    Err(NoEndpoint::AllTried) => choose(&[]),
                    other => other,
                };
                index.ok().and_then(|i| {
                    let e = endpoints.get(i)?;
                    Some((i, EndpointKey::of(e, name), *protocol))
                })
            }
            _ => None,
        };
        let Some((index, key, protocol)) = picked else {
            ctx.failure = Some(FailureKind::NoEndpoint);
            return Err(status_error(503, "no ready endpoint"));
        };
        let addr = key.addr;
        ctx.tried.push(addr);
        ctx.current = Some(addr);
        ctx.current_key = Some(key);
        ctx.remote_served_by = None;
        ctx.current_ep = Some(index);
        ctx.first_try.get_or_insert_with(Instant::now);

        let mut peer = HttpPeer::new(addr, false, String::new());
        let budget = ctx.try_budget();
        peer.options.connection_timeout = Some(match budget {
            Some(b) => b.min(DEFAULT_CONNECT_TIMEOUT),
            None => DEFAULT_CONNECT_TIMEOUT,
        });
        peer.options.read_timeout = budget;
        peer.options.write_timeout = budget;
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        peer.options.tcp_keepalive = Some(TcpKeepalive {
            idle: Duration::from_secs(5),
            interval: Duration::from_secs(1),
            count: 3,
            #[cfg(target_os = "linux")]
            user_timeout: UPSTREAM_USER_TIMEOUT,
        });
        if protocol == BackendProtocol::H2c {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(key) = ctx.current_key
            && self.shared.ejections.eject(key)
        {
            self.shared.metrics.ejections.inc();
            tracing::info!(endpoint = %key, error = %e, "endpoint ejected after connect failure");
        }
        if ctx.deadline_passed() {
            e.set_retry(false);
            return e;
        }
        if ctx.connect_failovers_left > 0 && self.shared.budget.try_retry(ctx.budget_percent) {
            ctx.connect_failovers_left -= 1;
            e.set_retry(true);
        } else if ctx.retries_left > 0 {
            ctx.retries_left -= 1;
            ctx.backoff = ctx.retry_backoff();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        if e.retry() {
            self.shared
                .metrics
                .retries
                .with_label_values(&["connect"])
                .inc();
        }
        tracing::debug!(%peer, retry = e.retry(), "connect failed");
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Nobody is waiting for an answer: trying another endpoint only adds load.
        if client_went_away(&e) {
            e.set_retry(false);
            return e;
        }
        let body_replayable = !session.as_ref().retry_buffer_truncated();
        if ctx.status_retry {
            // Our own marker from `upstream_response_filter`; the retry was already counted.
            e.set_retry(body_replayable && !ctx.deadline_passed());
            return e;
        }
        // pingora's default: a failure on a reused pooled connection may be stale, retry it.
        if body_replayable && session.req_header().method.is_idempotent() {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        let reset = *e.esource() == ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        // A reset on a connection we just opened says the endpoint is going away; on a pooled
        // one it may only be a stale connection.
        if reset
            && !client_reused
            && let Some(key) = ctx.current_key
            && self.shared.ejections.eject(key)
        {
            self.shared.metrics.ejections.inc();
            tracing::info!(endpoint = %key, error = %e, "endpoint ejected after a reset");
        }
        if !e.retry() && body_replayable && ctx.retries_left > 0 && !ctx.deadline_passed() {
            ctx.retries_left -= 1;
            e.set_retry(true);
            self.shared
                .metrics
                .retries
                .with_label_values(&["error"])
                .inc();
        }
        // Safe requests move to another endpoint (next tier when the tier is exhausted) as
        // long as nothing was sent downstream yet and the retry budget allows.
        if !e.retry()
            && body_replayable
            && session.req_header().method.is_idempotent()
            && session.response_written().is_none()
            && ctx.connect_failovers_left > 0
            && !ctx.deadline_passed()
            && self.shared.budget.try_retry(ctx.budget_percent)
        {
            ctx.connect_failovers_left -= 1;
            e.set_retry(true);
            self.shared
                .metrics
                .retries
                .with_label_values(&["failover"])
                .inc();
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Set for an east-west hop (replacing whatever a filter set), never sent anywhere else.
        if ctx.east_west_hop()
            && let Some(b) = ctx.chosen_backend()
        {
            upstream.insert_header(BACKEND_HEADER, b.name.as_str())?;
        } else {
            upstream.remove_header(BACKEND_HEADER);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            // A protocol switch is the endpoint's final answer; `100 Continue` is not.
            ctx.answered = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
            return Ok(());
        }
        if ctx.deadline_passed() {
            // The whole-request deadline covers the wait for the response header: a header
            // that arrives after it is too late, whatever it says.
            ctx.failure = Some(FailureKind::Timeout);
            let mut e = status_error(504, "request timeout");
            e.set_retry(false);
            return Err(e);
        }
        let code = resp.status.as_u16();
        if ctx.east_west_hop() {
            ctx.remote_served_by = resp
                .headers
                .get(SERVED_BY_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if ctx.remote_served_by.is_none() {
                // The remote proxy answered itself: no endpoint there, unknown backend, …
                return self.east_west_refusal(session, resp, ctx, code);
            }
        }
        if let (
            Some(addr),
            Some(BackendTarget::Endpoints {
                failover: Some(f), ..
            }),
        ) = (ctx.current_key, ctx.chosen_backend().map(|b| &b.target))
            && let Some(od) = f.outlier_detection.as_deref()
            && self.shared.ejections.response(
                addr,
                code,
                od.consecutive_5xx,
                ms(Some(od.base_ejection_ms)).unwrap_or(endpoints::BASE_EJECTION),
                ms(Some(od.max_ejection_ms)).unwrap_or(endpoints::MAX_EJECTION),
            )
        {
            self.shared.metrics.ejections.inc();
            tracing::info!(endpoint = %addr, status = code, "endpoint ejected by outlier detection");
        }
        let retry_listed = ctx
            .matched
            .as_ref()
            .and_then(|m| m.rule.rule.retry.as_ref())
            .is_some_and(|r| r.codes.contains(&code));
        if retry_listed && ctx.retries_left > 0 && !ctx.deadline_passed() {
            ctx.retries_left -= 1;
            ctx.status_retry = true;
            ctx.backoff = ctx.retry_backoff();
            self.shared
                .metrics
                .retries
                .with_label_values(&["status"])
                .inc();
            let mut e = Error::explain(ErrorType::HTTPStatus(code), "retrying on status");
            e.set_retry(true);
            return Err(e);
        }
        if !ctx.latency_recorded
            && let Some(start) = ctx.first_try
        {
            ctx.latency_recorded = true;
            self.shared
                .metrics
                .upstream_latency
                .with_label_values(&[&ctx.route_label()])
                .observe(start.elapsed().as_secs_f64());
        }
        ctx.answered = true;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.east_west_hop() {
            // Passed on below only when this Gateway shows where requests were served.
            resp.remove_header(SERVED_BY_HEADER);
        }
        if ctx.answered && !(resp.status.is_informational() && resp.status != 101) {
            ctx.head_at.get_or_insert_with(Instant::now);
            if ctx.gateway.as_ref().is_some_and(|g| g.served_by_header)
                && let Some(v) = ctx.served_by()
                && let Err(e) = resp.insert_header(SERVED_BY_HEADER, v)
            {
                tracing::debug!(error = %e, "served-by header not added");
            }
        }
        let Some(m) = &ctx.matched else {
            return Ok(());
        };
        let backend_filters = ctx.chosen_backend().map(|b| b.filters.as_slice());
        for f in m
            .rule
            .rule
            .filters
            .iter()
            .chain(backend_filters.unwrap_or_default())
        {
            if let Filter::ResponseHeaderModifier(hm) = f {
                filters::apply_header_modifier(hm, &mut RespEdit(resp));
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = if ctx.deadline_passed() {
            504
        } else {
            match e.etype() {
                ErrorType::HTTPStatus(c) => *c,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    504
                }
                _ => match e.esource() {
                    // Envoy-like: connect failure or reset before a response is a 503.
                    ErrorSource::Upstream => 503,
                    ErrorSource::Downstream => match e.etype() {
                        ErrorType::WriteError
                        | ErrorType::ReadError
                        | ErrorType::ConnectionClosed => 0,
                        _ => 400,
                    },
                    ErrorSource::Internal | ErrorSource::Unset => 500,
                },
            }
        };
        if ctx.failure.is_none() && !client_went_away(e) {
            ctx.failure = failure_kind(e, ctx.status_retry, ctx.deadline_passed());
        }
        // Only answer if nothing was sent yet; otherwise the connection is just closed.
        let code = if session.response_written().is_some() {
            0
        } else {
            code
        };
        if code > 0
            && let Err(err) = session.respond_error(code).await
        {
            tracing::debug!(error = %err, "could not send the error response");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// pingora logs every failed request at error level, client disconnects included (a load
    /// test's closing connections alone make hundreds of lines). `logging` reports failures
    /// instead, at a level that fits the cause.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _e: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let failure = match ctx.failure {
            Some(f) => Some(f),
            None if status >= 500 && ctx.answered => Some(FailureKind::Upstream5xx),
            None if status >= 500 => Some(FailureKind::Other),
            None => None,
        };
        if let Some(g) = &ctx.gateway {
            let region = ctx.answered_region();
            let head = ctx.head_at.unwrap_or_else(Instant::now);
            let latency_us = u64::try_from(head.saturating_duration_since(ctx.started).as_micros())
                .unwrap_or(u64::MAX);
            g.traffic.record(region, failure, latency_us);
        }
        if let Some(e) = e {
            if client_went_away(e) {
                tracing::debug!(
                    upstream = ?ctx.current,
                    attempts = ctx.tried.len(),
                    error = %e,
                    "client went away"
                );
            } else {
                tracing::warn!(
                    listener = %ctx.listener_label(),
                    route = %ctx.route_label(),
                    upstream = ?ctx.current,
                    served_by = ctx.served_by().as_deref().unwrap_or(""),
                    attempts = ctx.tried.len(),
                    failure = failure.map_or("", crate::traffic::kind_label),
                    status,
                    error = %e,
                    "request failed"
                );
            }
        }
        let status = status.to_string();
        self.shared
            .metrics
            .requests
            .with_label_values(&[&ctx.listener_label(), &ctx.route_label(), &status])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(values: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in values {
            r.append_header(BACKEND_HEADER, *v).unwrap();
        }
        r
    }

    #[test]
    fn an_east_west_request_names_exactly_one_backend() {
        assert_eq!(named_backend(&req(&["ns/a:80"])), Ok("ns/a:80"));
        assert_eq!(named_backend(&req(&[" ns/a:80 "])), Ok("ns/a:80"));
        assert!(named_backend(&req(&[])).unwrap_err().contains("required"));
        assert!(
            named_backend(&req(&["a", "b"]))
                .unwrap_err()
                .contains("more than one")
        );
        assert!(named_backend(&req(&[" "])).unwrap_err().contains("empty"));
    }

    #[test]
    fn east_west_backends_become_one_backend_rules() {
        let backends: Vec<EastWestBackend> = serde_json::from_value(serde_json::json!([
            {"name": "ns/a:80", "protocol": "h2c",
             "endpoints": [{"address": "10.0.0.1", "port": 8080}],
             "failover": {"regionOrder": ["eu"]}},
        ]))
        .unwrap();
        let rules = east_west_rules(&backends);
        let rule = &rules["ns/a:80"];
        assert_eq!(rule.route_name, "ns/a:80");
        let (idx, b) = rule.pick_backend(12345).unwrap();
        assert_eq!((idx, b.name.as_str()), (0, "ns/a:80"));
        match &b.target {
            BackendTarget::Endpoints {
                protocol,
                endpoints,
                failover,
            } => {
                assert_eq!(*protocol, BackendProtocol::H2c);
                assert_eq!(endpoints.len(), 1);
                assert_eq!(failover.as_ref().unwrap().region_order, ["eu"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(rule.rule.retry.is_none() && rule.rule.timeouts.request_ms.is_none());
    }
}
