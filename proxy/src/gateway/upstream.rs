//! The [`Forwarder`]'s upstream side, shared by both proxies: the limits and allowances of a
//! request ([`Forwarder::start`]), the endpoint of each try ([`Forwarder::upstream_peer`]) and
//! what a failed try leads to (ejection, retry, failover to another endpoint).
//!
//! ```text
//! start ─ deadline, per-try timeout (rule) ─ retries (rule) ─ failovers and budget share
//!         (backend's failover policy; ready, undrained endpoints bound them)
//! upstream_peer ─ back off (pending retry) ─ deadline? 504 ─ choose_endpoint (a session's
//!                 endpoint while usable, session.rs; else locality tier, skipping ejected,
//!                 drained and tried ones; all tried → start over) ─ peer
//!                 (an east-west endpoint: mutual TLS to `<cluster>.proxy.<trust domain>`;
//!                 a backend with `tls`: verified TLS to it, module `backend_tls`)
//! fail_to_connect ─ eject ─ failover (budgeted) or rule retry (with back-off) or give up
//! error_while_proxy ─ client gone? give up ─ our status marker? ─ pingora's stale-connection
//!                     retry ─ eject on a reset of a fresh connection ─ rule retry ─ failover
//!                     of a safe request (budgeted)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use meridian_model::snapshot::{Backend, BackendProtocol, BackendTarget, Endpoint, FailoverPolicy};
use meridian_model::traffic::FailureKind;
use pingora_core::protocols::TcpKeepalive;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, OrErr, Result};

use super::ctx::{Allowance, Ctx, LatencyClock, Limits, Target, Try, Upstream};
use super::observe;
use super::response::client_went_away;
use super::{Downstream, grpc, ms, status_error};
use crate::budget::DEFAULT_PERCENT;
use crate::endpoints::{self, EndpointKey, NoEndpoint};
use crate::headers::UpstreamFields;
use crate::state::{HopSecurity, Shared};

// The connect timeout (`Limits::connect_timeout`, `--backend-connect-timeout`) defaults to 2 s: a
// blackholed endpoint costs a request at most this before it moves on (1 s would spend two
// retries per request on a dead zone before the health checker ejects it and exhaust the retry
// budget), and one lost SYN (resent after 1 s) still connects. A try's own timeout caps it.
/// Sent data unacknowledged this long kills an upstream connection (TCP_USER_TIMEOUT): a request
/// on a pooled connection into a region whose packets vanish fails over instead of waiting for
/// the client to give up. Keep-alive probes find dead idle pooled connections the same way.
const UPSTREAM_USER_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle time of a pooled upstream connection.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// Most extra tries spent on connect failures when the rule has no retry policy.
const MAX_CONNECT_FAILOVER: u32 = 3;

/// What both proxies do with a request once it has a target: tries at its endpoints, failover,
/// the response and the counters. Holds the proxy's shared state (health, retry budget,
/// metrics).
pub(crate) struct Forwarder {
    pub shared: Arc<Shared>,
}

/// The try a hedge set aside: of two tries in flight, the one that is not current.
pub(crate) struct Parked(Option<Try>);

impl Parked {
    /// The health identity of the parked try's endpoint.
    pub(crate) fn key(&self) -> Option<EndpointKey> {
        self.0.as_ref().map(|t| t.key)
    }
}

/// The endpoint picked for a try.
struct Picked {
    index: usize,
    key: EndpointKey,
    protocol: BackendProtocol,
    /// For an east-west endpoint (a remote proxy's east-west listener): its cluster.
    east_west: Option<String>,
}

impl Forwarder {
    /// The upstream state of a request going to `target` (whose backend has `endpoints` and
    /// `failover`): deadline, per-try timeout and allowances. Counts the request for the retry
    /// budget.
    pub(super) fn start(
        &self,
        target: Target,
        endpoints: &[Endpoint],
        failover: Option<&FailoverPolicy>,
    ) -> Upstream {
        let rule = &target.rule.rule;
        // The rule's `timeouts.request` wins, zero (no deadline) included; the proxy's default
        // (`--request-timeout`, off unless set) fills in for rules without one.
        let request = match rule.timeouts.request_ms {
            Some(_) => ms(rule.timeouts.request_ms),
            None => self.shared.limits.request_timeout,
        };
        let limits = Limits {
            deadline: request.map(|d| Instant::now() + d),
            per_try: ms(rule.timeouts.backend_request_ms),
        };
        // Drained endpoints are never tried, so they do not earn extra tries either.
        let drained = target.drain.as_deref().map_or(0, |d| {
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
        let left = Allowance {
            // gRPC rules: no rule retries (they repeat a sent call), failovers before sending
            // only (grpc.rs).
            retries: if grpc::retries_after_send(rule) {
                rule.retry.as_ref().map_or(0, |r| r.attempts)
            } else {
                0
            },
            failovers: ready.saturating_sub(1).min(attempts),
            budget_percent: retry
                .map(|r| r.budget_percent)
                .filter(|&p| p > 0)
                .unwrap_or(DEFAULT_PERCENT),
        };
        self.shared.budget.request();
        Upstream::new(target, limits, left)
    }

    /// The endpoint of the next try and its connection settings.
    pub async fn upstream_peer(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(up) = ctx.upstream.as_mut() else {
            ctx.outcome.failure = Some(FailureKind::Other);
            return Err(status_error(500, "no backend chosen"));
        };
        back_off(up).await;
        if up.deadline_passed() {
            ctx.outcome.failure = Some(FailureKind::Timeout);
            return Err(status_error(504, "request timeout"));
        }
        up.status_retry = false;
        let picked = match up.target.backend() {
            Some(
                b @ Backend {
                    target: BackendTarget::Endpoints { .. },
                    ..
                },
            ) => self.choose_endpoint(b, up),
            _ => {
                ctx.outcome.failure = Some(FailureKind::Other);
                return Err(status_error(500, "no backend chosen"));
            }
        };
        let Some(picked) = picked else {
            ctx.outcome.failure = Some(FailureKind::NoEndpoint);
            return Err(status_error(503, "no ready endpoint"));
        };
        let addr = picked.key.addr;
        up.tried.push(addr);
        up.current = Some(Try {
            key: picked.key,
            index: picked.index,
            remote_served_by: None,
        });
        if up.latency == LatencyClock::Idle {
            up.latency = LatencyClock::Running(Instant::now());
        }
        let peer = self.peer_of(up, &picked);
        observe::try_started(ctx, addr, picked.index);
        Ok(Box::new(peer))
    }

    /// The connection settings of a try at `picked`.
    fn peer_of(&self, up: &Upstream, picked: &Picked) -> HttpPeer {
        let connect = self.shared.limits.connect_timeout;
        let mut peer = peer(picked.key.addr, up.try_budget(), connect, picked.protocol);
        if let Some(cluster) = &picked.east_west {
            self.secure_east_west(&mut peer, cluster);
        } else if let Some(tls) = up.target.backend().and_then(|b| b.tls.as_ref()) {
            super::backend_tls::secure(&mut peer, tls);
        }
        peer
    }

    /// The backend's name when the request's next try may be hedged (lean/hedge.rs): it is the
    /// first try of a rule that is not gRPC's (grpc.rs), the backend speaks HTTP/1 (an h2c session is shared by many requests and not
    /// closed on cancel) and has more than one ready endpoint.
    pub(crate) fn hedge_candidate<'c>(&self, ctx: &'c Ctx) -> Option<&'c str> {
        let up = ctx.upstream.as_ref()?;
        if !up.tried.is_empty() || !grpc::retries_after_send(&up.target.rule.rule) {
            return None;
        }
        let b = up.target.backend()?;
        match &b.target {
            BackendTarget::Endpoints {
                protocol: BackendProtocol::Http1,
                endpoints,
                ..
            } if endpoints::ready_count(endpoints) > 1 => Some(&b.name),
            _ => None,
        }
    }

    /// The endpoint of a hedged try beside the current one, which has not answered after the
    /// hedge delay; `None` when the request may not hedge. The hedge goes to the next choice of
    /// the locality plan, skipping the current endpoint and, when that one is in this proxy's
    /// own region, the whole region (a silent region is a network event more often than one
    /// silent endpoint). It spends one failover allowance, and a share of the retry budget when
    /// `first_sent` (the first try's request went out, so the hedge duplicates work; a first
    /// try still connecting has sent nothing, like a connect failover to an endpoint known
    /// dead, fail_to_connect). The current try is parked in the returned [`Parked`]; the hedged
    /// one becomes current.
    pub(crate) fn hedge_peer(
        &self,
        ctx: &mut Ctx,
        first_sent: bool,
    ) -> Option<(Box<HttpPeer>, Parked)> {
        let up = ctx.upstream.as_mut()?;
        if up.left.failovers == 0 || up.deadline_passed() {
            return None;
        }
        let current = up.current.as_ref()?;
        let (first, first_index) = (current.key.addr, current.index);
        // The rule is shared: a clone of its Arc lets `up.tried` change below.
        let rule = up.target.rule.clone();
        let backend = rule.rule.backends.get(up.target.index)?;
        let BackendTarget::Endpoints { endpoints, .. } = &backend.target else {
            return None;
        };
        let skip_region = endpoints
            .get(first_index)
            .map(|e| e.region.as_str())
            .filter(|r| *r == self.shared.locality.region);
        // The own region's endpoints count as tried for this choice only.
        let before = up.tried.len();
        if let Some(region) = skip_region {
            up.tried.extend(
                endpoints
                    .iter()
                    .filter(|e| e.region == region)
                    .map(|e| SocketAddr::new(e.address, e.port)),
            );
        }
        let picked = self.choose_endpoint(backend, up);
        up.tried.truncate(before);
        let picked = picked.filter(|p| {
            p.key.addr != first
                && skip_region.is_none_or(|r| endpoints.get(p.index).is_some_and(|e| e.region != r))
        })?;
        if first_sent && !self.shared.budget.try_retry(up.left.budget_percent) {
            return None;
        }
        up.left.failovers -= 1;
        up.tried.push(picked.key.addr);
        let peer = self.peer_of(up, &picked);
        let parked = up.current.replace(Try {
            key: picked.key,
            index: picked.index,
            remote_served_by: None,
        });
        self.shared
            .metrics
            .hedges
            .with_label_values(&["sent"])
            .inc();
        self.count_retry("hedge");
        observe::try_started(ctx, picked.key.addr, picked.index);
        Some((Box::new(peer), Parked(parked)))
    }

    /// Swaps the current try with the parked one (the parked one answered first, or is the
    /// one left when the other failed).
    pub(crate) fn hedge_swap(ctx: &mut Ctx, parked: &mut Parked) {
        if let Some(up) = ctx.upstream.as_mut() {
            std::mem::swap(&mut up.current, &mut parked.0);
        }
        observe::hedge_swapped(ctx);
    }

    /// The parked try of a hedged pair ended (`why`: it lost the race, failed or was never
    /// sent); its span records that. The current try's span is untouched.
    pub(crate) fn hedge_parked_ended(ctx: &mut Ctx, why: &dyn std::fmt::Display) {
        observe::hedge_other_ended(ctx, why);
    }

    /// The current try of a hedged pair failed while the parked one goes on: its span ends
    /// with `why`.
    pub(crate) fn hedge_current_ended(ctx: &mut Ctx, why: &dyn std::fmt::Display) {
        observe::try_ended(ctx, None, Some(why));
    }

    /// The health identity of the current try's endpoint.
    pub(crate) fn current_key(ctx: &Ctx) -> Option<EndpointKey> {
        Some(ctx.upstream.as_ref()?.current.as_ref()?.key)
    }

    /// A try of a hedged pair failed while the other is still in flight: a failed connect ejects
    /// its endpoint, as in fail_to_connect; the request waits for the other try.
    pub(crate) fn hedge_try_failed(&self, key: Option<EndpointKey>, e: &Error, connect: bool) {
        if connect && let Some(key) = key {
            self.eject(
                key,
                e,
                "endpoint ejected after connect failure (hedged try)",
            );
        }
        tracing::debug!(error = %e, connect, "a hedged pair's try failed, the other goes on");
    }

    /// A try that lost a hedge race while still connecting: it is judged as a connect timeout
    /// only when the endpoint really does not accept a connection within what was left of the
    /// connect timeout (one plain TCP connect in the background, at most one at a time per
    /// endpoint). A loser that had connected is not judged: it was only slower.
    pub(crate) fn hedge_lost_connecting(&self, key: Option<EndpointKey>, started: Instant) {
        self.shared
            .metrics
            .hedges
            .with_label_values(&["lost_connecting"])
            .inc();
        let Some(key) = key else { return };
        let left = self
            .shared
            .limits
            .connect_timeout
            .saturating_sub(started.elapsed());
        if self.shared.ejections.is_ejected(key) || !self.shared.hedging.begin_check(key) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(left, tokio::net::TcpStream::connect(key.addr)).await;
            if connected.is_err() && shared.ejections.eject(key) {
                shared.metrics.ejections.inc();
                tracing::info!(endpoint = %key, "endpoint ejected: no connect within the connect timeout (hedge loser)");
            }
            shared.hedging.end_check(key);
        });
    }

    /// A try at a remote proxy's east-west listener in `cluster`: mutual TLS with our mesh
    /// identity, expecting a proxy of that cluster (mesh.rs). Without an identity the peer
    /// trusts nothing, so the handshake fails and the try moves on like a refused connection.
    fn secure_east_west(&self, peer: &mut HttpPeer, cluster: &str) {
        match &self.shared.hop {
            HopSecurity::Mesh(m) => m.secure_peer(peer, cluster),
            HopSecurity::Plaintext => {}
            HopSecurity::NoIdentity => {
                tracing::debug!(%peer, "east-west try without a mesh identity: it will fail");
                peer.scheme = pingora_core::upstreams::peer::Scheme::HTTPS;
                peer.sni = cluster.to_string();
                peer.options.ca = Some(Arc::new(Box::new([])));
            }
        }
    }

    /// The endpoint of `backend` for the next try of `up`: by locality tier, skipping ejected,
    /// drained and already tried ones; when every one was tried, starting over. Endpoints the
    /// loop guard refuses (edge.rs: this proxy's own listeners, unspecified, multicast) count as
    /// tried forever.
    fn choose_endpoint(&self, backend: &Backend, up: &Upstream) -> Option<Picked> {
        let BackendTarget::Endpoints {
            protocol,
            endpoints,
            failover,
        } = &backend.target
        else {
            return None;
        };
        let served = self.shared.served.load();
        let listeners = served.as_ref().map(|s| &s.protocols);
        let refused: Vec<SocketAddr> = endpoints
            .iter()
            .map(|e| SocketAddr::new(e.address, e.port))
            .filter(|&a| match self.shared.edge.refused_endpoint(a, listeners) {
                Some(why) => {
                    tracing::debug!(endpoint = %a, ?why, backend = %backend.name, "endpoint refused");
                    true
                }
                None => false,
            })
            .collect();
        let mut tried_or_refused;
        let tried: &[SocketAddr] = if refused.is_empty() {
            &up.tried
        } else {
            tried_or_refused = refused.clone();
            tried_or_refused.extend_from_slice(&up.tried);
            &tried_or_refused
        };
        if let Some(i) = up.sticky.filter(|_| up.tried.is_empty())
            && let Some(e) = endpoints.get(i)
            && self.sticky_usable(e, backend, failover.as_ref(), up, &refused)
        {
            return Some(self.picked(i, e, backend, *protocol, up));
        }
        let nearest = self.shared.rtt.order();
        let choose = |tried: &[SocketAddr]| {
            endpoints::choose(
                endpoints,
                &backend.name,
                endpoints::Vantage {
                    me: &self.shared.locality,
                    nearest: &nearest,
                },
                failover.as_ref(),
                &self.shared.ejections,
                tried,
                up.target.drain.as_deref(),
            )
        };
        let index = match choose(tried) {
            // Retrying after every endpoint was tried: start over.
            Err(NoEndpoint::AllTried) => choose(&refused),
            other => other,
        };
        let index = index.ok()?;
        let e = endpoints.get(index)?;
        Some(self.picked(index, e, backend, *protocol, up))
    }

    /// The pick of endpoint `index` (`e`) of `backend`.
    fn picked(
        &self,
        index: usize,
        e: &Endpoint,
        backend: &Backend,
        protocol: BackendProtocol,
        up: &Upstream,
    ) -> Picked {
        // gRPC is HTTP/2: a gRPC rule's backend gets h2c whatever its Service says (grpc.rs).
        let protocol = if up.target.rule.rule.is_grpc() {
            BackendProtocol::H2c
        } else {
            protocol
        };
        Picked {
            index,
            key: EndpointKey::of(e, &backend.name),
            protocol,
            east_west: e.east_west.then(|| e.cluster.clone()),
        }
    }

    /// Whether a session's endpoint `e` may serve it: ready, not ejected, not drained (or held
    /// after a drain), not refused by the address policy, inside the backend's geo-fence.
    fn sticky_usable(
        &self,
        e: &Endpoint,
        backend: &Backend,
        failover: Option<&FailoverPolicy>,
        up: &Upstream,
        refused: &[SocketAddr],
    ) -> bool {
        let addr = SocketAddr::new(e.address, e.port);
        let drained = up.target.drain.as_deref().is_some_and(|d| {
            !matches!(
                d.state(&addr, Instant::now()),
                crate::drain::DrainState::Clear
            )
        });
        e.ready
            && !drained
            && !refused.contains(&addr)
            && !self
                .shared
                .ejections
                .is_ejected(EndpointKey::of(e, &backend.name))
            && failover.is_none_or(|f| f.geo_fence.is_empty() || f.geo_fence.contains(&e.region))
    }

    /// Ejects the endpoint that refused the connection and retries on another one while the
    /// allowances, the retry budget and the deadline allow.
    pub fn fail_to_connect(&self, peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        observe::try_ended(ctx, None, Some(&e.etype().as_str()));
        let Some(up) = ctx.upstream.as_mut() else {
            e.set_retry(false);
            tracing::debug!(%peer, retry = false, "connect failed");
            return e;
        };
        // Already ejected by the time this try failed: another request (or the health checker)
        // found the endpoint dead while this one was connecting.
        let known_dead = up
            .current
            .as_ref()
            .is_some_and(|t| !self.eject(t.key, &e, "endpoint ejected after connect failure"));
        if up.deadline_passed() {
            e.set_retry(false);
            return e;
        }
        // The retry budget guards against retries that add load to a struggling service. Moving
        // on from an endpoint already known dead is not that: it received nothing and no new
        // request goes to it, so only the request's own failover allowance bounds it. Without
        // this, the requests in flight when a region goes silent (all waiting out their connect
        // timeout) exhaust a budget whose window holds little traffic yet, e.g. just after start.
        if up.left.failovers > 0
            && (known_dead || self.shared.budget.try_retry(up.left.budget_percent))
        {
            up.left.failovers -= 1;
            e.set_retry(true);
        } else if up.left.retries > 0 {
            up.left.retries -= 1;
            up.backoff = up.retry_backoff();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        if e.retry() {
            self.count_retry("connect");
        }
        tracing::debug!(%peer, retry = e.retry(), "connect failed");
        e
    }

    /// Decides whether a try that failed after connecting is retried: never when the client is
    /// gone, always for our own status marker (body permitting), as pingora would for a stale
    /// pooled connection, then by the rule's retries and the failover of safe requests.
    pub fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &impl Downstream,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        observe::try_ended(ctx, None, Some(&e.etype().as_str()));
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Nobody is waiting for an answer: trying another endpoint only adds load.
        if client_went_away(&e) {
            e.set_retry(false);
            return e;
        }
        // A gRPC rule's call is never repeated once it was sent (grpc.rs); a try that failed
        // before that went through `fail_to_connect`.
        let repeatable = ctx
            .upstream
            .as_ref()
            .is_none_or(|up| grpc::retries_after_send(&up.target.rule.rule));
        let body_replayable = repeatable && !session.retry_buffer_truncated();
        let safe = body_replayable && session.req_header().method.is_idempotent();
        if let Some(up) = ctx.upstream.as_ref()
            && up.status_retry
        {
            // Our own marker from `upstream_response_filter`; the retry was already counted.
            e.set_retry(body_replayable && !up.deadline_passed());
            return e;
        }
        // pingora's default: a failure on a reused pooled connection may be stale, retry it.
        if safe {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        let Some(up) = ctx.upstream.as_mut() else {
            return e;
        };
        self.eject_on_reset(up, &e, client_reused);
        if !e.retry() && body_replayable && up.left.retries > 0 && !up.deadline_passed() {
            up.left.retries -= 1;
            e.set_retry(true);
            self.count_retry("error");
        }
        // Safe requests move to another endpoint (next tier when the tier is exhausted) as
        // long as nothing was sent downstream yet and the retry budget allows.
        if !e.retry() && safe && session.response_written().is_none() && self.failover(up) {
            e.set_retry(true);
        }
        e
    }

    /// A reset on a connection we just opened says the endpoint is going away: eject it. On a
    /// pooled one it may only be a stale connection.
    fn eject_on_reset(&self, up: &Upstream, e: &Error, client_reused: bool) {
        let reset = *e.esource() == ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if reset
            && !client_reused
            && let Some(t) = &up.current
        {
            self.eject(t.key, e, "endpoint ejected after a reset");
        }
    }

    /// Spends one failover try of `up` if any is left, the deadline has not passed and the
    /// retry budget allows; counted as a `failover` retry.
    pub(super) fn failover(&self, up: &mut Upstream) -> bool {
        if up.left.failovers > 0
            && !up.deadline_passed()
            && self.shared.budget.try_retry(up.left.budget_percent)
        {
            up.left.failovers -= 1;
            self.count_retry("failover");
            return true;
        }
        false
    }

    /// Ejects `key` (counted and logged once per ejection).
    /// Ejects `key`; `true` when this ejected it (`false`: it was ejected already).
    pub(super) fn eject(
        &self,
        key: EndpointKey,
        e: &dyn std::fmt::Display,
        why: &'static str,
    ) -> bool {
        let fresh = self.shared.ejections.eject(key);
        if fresh {
            self.shared.metrics.ejections.inc();
            tracing::info!(endpoint = %key, error = %e, "{why}");
        }
        fresh
    }

    pub(super) fn count_retry(&self, reason: &str) {
        self.shared
            .metrics
            .retries
            .with_label_values(&[reason])
            .inc();
    }

    /// Names the backend on a hop to a remote proxy's east-west listener (replacing whatever a
    /// filter set); never sent anywhere else. Adds this proxy's `Via` entry (loop guard, edge.rs)
    /// and, while observing, the try's `traceparent` (observe.rs).
    pub fn upstream_request_filter(
        &self,
        upstream: &mut impl UpstreamFields,
        ctx: &Ctx,
    ) -> Result<()> {
        self.shared.edge.add_via(upstream);
        Self::trace_upstream(upstream, ctx)?;
        if ctx.east_west_hop()
            && let Some(b) = ctx.backend()
        {
            let name = HeaderValue::try_from(b.name.as_str()).or_err(
                ErrorType::InternalError,
                "backend name is not a header value",
            )?;
            upstream.set(&BACKEND_NAME, None, name)?;
        } else {
            upstream.remove(&BACKEND_NAME);
        }
        Ok(())
    }
}

/// The backend's name on a hop to a remote proxy, as a header name.
const BACKEND_NAME: HeaderName = HeaderName::from_static(super::BACKEND_HEADER);

/// Waits out a pending retry back-off, never past the request deadline.
async fn back_off(up: &mut Upstream) {
    if let Some(pause) = up.backoff.take() {
        let pause = match up.limits.deadline {
            Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
            None => pause,
        };
        tokio::time::sleep(pause).await;
    }
}

/// An upstream peer at `addr`: plain TCP, timeouts from the try's `budget` (the `connect`
/// timeout capped by it), pooled with keep-alive probes, HTTP/2 with prior knowledge for h2c
/// backends.
fn peer(
    addr: SocketAddr,
    budget: Option<Duration>,
    connect: Duration,
    protocol: BackendProtocol,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(match budget {
        Some(b) => b.min(connect),
        None => connect,
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
    peer
}
