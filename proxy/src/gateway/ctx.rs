//! Per-request state of both proxies, one part per concern:
//!
//! ```text
//! Ctx ─ routing: Routing           listener, Gateway entry, matched rule
//!     │                              (request_filter; labels, served-by switch, counters)
//!     ├ upstream: Option<Upstream>   the chosen backend (Target), time limits, retry
//!     │                              allowances, the tries so far; set when the request goes
//!     │                              upstream (request_filter), updated by the upstream hooks
//!     ├ outcome: Outcome             start, response head time, answered by an endpoint,
//!     │                              failure kind (response hooks; read by logging)
//!     └ obs: Option<Box<Observed>>   trace context, the tries' spans and the access log's
//!                                    host and path (observe.rs); `None` while access logs
//!                                    and tracing are off, so the request pays nothing for them
//! ```
//!
//! The matched rule is an `Arc` of the router's, cloned once, so a snapshot swap in the middle of
//! a request changes nothing for it. `upstream` is `None` exactly when the proxy answered the
//! request itself in `request_filter` (refusal, no route, redirect, no backend).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meridian_model::router::{CompiledRule, ListenerInfo};
use meridian_model::snapshot::{Backend, BackendTarget, Endpoint};
use meridian_model::traffic::FailureKind;

use crate::drain::{BackendDrain, GatewayEntry};
use crate::endpoints::EndpointKey;
use crate::trace::RequestTrace;

/// Per-request state (the `CTX` of both `ProxyHttp` implementations).
pub struct Ctx {
    pub(super) routing: Routing,
    pub(super) upstream: Option<Upstream>,
    pub(super) outcome: Outcome,
    pub(super) obs: Option<Box<Observed>>,
}

/// What the access log and the trace keep of a request (observe.rs).
pub(super) struct Observed {
    /// Wall-clock time of the request head (log line, span start).
    pub wall_start: SystemTime,
    /// This request gets an access log line (sampled).
    pub log: bool,
    /// The Host as received (logged only), before any filter.
    pub host: String,
    /// The path as received, before normalisation and rewrites; the query only when the log
    /// asks for it.
    pub path: String,
    pub trace: RequestTrace,
    /// When the first try started (the upstream head duration).
    pub first_try: Option<Instant>,
    /// Every try, in order: its span.
    pub tries: Vec<TrySpan>,
}

/// One upstream try's span.
pub(super) struct TrySpan {
    pub span_id: [u8; 8],
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub addr: SocketAddr,
    /// Index of the endpoint in the backend's endpoints.
    pub index: usize,
    /// The status of the response head, when one came.
    pub status: Option<u16>,
    /// Why the try failed, when it did.
    pub error: Option<String>,
}

/// What routing found: where the request came in and the rule that matched.
#[derive(Default)]
pub(super) struct Routing {
    /// The listener (metrics and log labels); `None` when no listener serves the socket.
    pub listener: Option<Arc<ListenerInfo>>,
    /// The listener's Gateway: served-by switch, traffic counters, drains.
    pub gateway: Option<Arc<GatewayEntry>>,
    /// The matched rule: route label, retry policy, response filters.
    pub rule: Option<Arc<CompiledRule>>,
    /// The client address by the forwarding-header policy (forwarded.rs), for the log line.
    pub client: Option<std::net::IpAddr>,
    /// The `Origin` of a request matched by a rule with a CORS filter (for the response).
    pub cors_origin: Option<String>,
    /// The request's valid session token (rule with session persistence; session.rs).
    pub sticky: Option<super::session::Sticky>,
}

impl Routing {
    /// `namespace/route` of the matched rule (empty without one), formatted when the rule was
    /// compiled.
    pub fn route_label(&self) -> &str {
        self.rule.as_deref().map_or("", |r| r.route_label.as_str())
    }
}

/// The backend a request goes to, fixed before the first try: retries only change the endpoint.
pub(super) struct Target {
    pub rule: Arc<CompiledRule>,
    /// Index of the chosen backend in the rule's backends.
    pub index: usize,
    /// Drills' view of the backend (`None` when nothing of it is drained or returning).
    pub drain: Option<Arc<BackendDrain>>,
}

impl Target {
    pub fn backend(&self) -> Option<&Backend> {
        self.rule.rule.backends.get(self.index)
    }
}

/// Time limits of a request, from its rule.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Limits {
    /// The whole request's deadline (`timeouts.request`).
    pub deadline: Option<Instant>,
    /// One try's timeout (`timeouts.backendRequest`).
    pub per_try: Option<Duration>,
}

/// Retries a request may still spend.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Allowance {
    /// Retries the rule's policy still allows.
    pub retries: u32,
    /// Extra tries for connect failures and failed safe requests beyond the rule's policy (each
    /// also needs the proxy's retry budget).
    pub failovers: u32,
    /// Retry budget share of the backend (FailoverPolicy `retry.budgetPercent`).
    pub budget_percent: u32,
}

/// One try: the endpoint it went to.
pub(super) struct Try {
    /// Health identity of the endpoint (per backend for an east-west endpoint); `key.addr` is
    /// the address connected to.
    pub key: EndpointKey,
    /// Index of the endpoint in the backend's endpoints.
    pub index: usize,
    /// `x-meridian-served-by` of the response from an east-west hop (where the remote proxy
    /// really served the request).
    pub remote_served_by: Option<String>,
}

/// The upstream latency clock: from the first try to the first response head, observed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LatencyClock {
    Idle,
    Running(Instant),
    Observed,
}

/// A request on its way upstream: its target and the tries at it.
pub(super) struct Upstream {
    pub target: Target,
    pub limits: Limits,
    pub left: Allowance,
    /// Every address tried so far (repeats included); inline for the usual few tries.
    pub tried: smallvec::SmallVec<[SocketAddr; 4]>,
    /// The last try.
    pub current: Option<Try>,
    /// A retry is pending: back off this long before the next try.
    pub backoff: Option<Duration>,
    /// The last upstream error is our own "retry on status" marker.
    pub status_retry: bool,
    pub latency: LatencyClock,
    /// The endpoint (index in the backend) a session token asks for (session.rs).
    pub sticky: Option<usize>,
}

impl Upstream {
    pub fn new(target: Target, limits: Limits, left: Allowance) -> Self {
        Upstream {
            target,
            limits,
            left,
            tried: smallvec::SmallVec::new(),
            current: None,
            backoff: None,
            status_retry: false,
            latency: LatencyClock::Idle,
            sticky: None,
        }
    }

    pub fn deadline_passed(&self) -> bool {
        self.limits.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The time left for one try: the per-try timeout capped by the request deadline.
    pub fn try_budget(&self) -> Option<Duration> {
        let left = self
            .limits
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        match (self.limits.per_try, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The matched rule's pause before a retry: at least its `backoff` (the spec's minimum),
    /// plus a random jitter of up to half of it, so the retries of many clients failed at once
    /// do not arrive together.
    pub fn retry_backoff(&self) -> Option<Duration> {
        let ms = self.target.rule.rule.retry.as_ref()?.backoff_ms?;
        let jitter = match ms / 2 {
            0 => 0,
            half => rand::random::<u64>() % (half + 1),
        };
        Some(Duration::from_millis(ms.saturating_add(jitter)))
    }

    /// The endpoint of the last try.
    pub fn current_endpoint(&self) -> Option<&Endpoint> {
        match &self.target.backend()?.target {
            BackendTarget::Endpoints { endpoints, .. } => {
                endpoints.get(self.current.as_ref()?.index)
            }
            BackendTarget::Invalid { .. } => None,
        }
    }

    /// The last try went to a remote proxy's east-west listener.
    pub fn east_west_hop(&self) -> bool {
        self.current_endpoint().is_some_and(|e| e.east_west)
    }

    /// The address of the last try.
    pub fn current_addr(&self) -> Option<SocketAddr> {
        self.current.as_ref().map(|t| t.key.addr)
    }

    /// `cluster/region/zone` of the endpoint of the last try (behind an east-west hop: what the
    /// remote proxy says).
    fn served_by(&self) -> Option<String> {
        if let Some(remote) = self.current.as_ref()?.remote_served_by.as_ref() {
            return Some(remote.clone());
        }
        self.current_endpoint()
            .map(|e| format!("{}/{}/{}", e.cluster, e.region, e.zone))
    }

    /// The region of the endpoint of the last try.
    fn region(&self) -> Option<&str> {
        if let Some(remote) = self.current.as_ref()?.remote_served_by.as_ref() {
            return remote.split('/').nth(1);
        }
        self.current_endpoint().map(|e| e.region.as_str())
    }

    /// The zone of the endpoint of the last try.
    fn zone(&self) -> Option<&str> {
        if let Some(remote) = self.current.as_ref()?.remote_served_by.as_ref() {
            return remote.split('/').nth(2);
        }
        self.current_endpoint().map(|e| e.zone.as_str())
    }
}

/// What went downstream, for the traffic counters and the log line.
pub(super) struct Outcome {
    /// When the request head was read (the context is made right after).
    pub started: Instant,
    /// When the response head from an endpoint went downstream.
    pub head_at: Option<Instant>,
    /// The response going downstream came from an endpoint.
    pub answered: bool,
    /// Why the request failed, when the proxy knows it better than the final error says.
    pub failure: Option<FailureKind>,
}

impl Ctx {
    /// A fresh context; pingora makes it right after reading the request head.
    pub(crate) fn new() -> Ctx {
        Ctx {
            routing: Routing::default(),
            upstream: None,
            outcome: Outcome {
                started: Instant::now(),
                head_at: None,
                answered: false,
                failure: None,
            },
            obs: None,
        }
    }

    /// Ends the request's routing with a failure the proxy answers itself.
    pub(super) fn fail(&mut self, kind: FailureKind) {
        self.outcome.failure = Some(kind);
    }

    /// `namespace/route` of the matched rule (empty without one).
    pub(super) fn route_label(&self) -> &str {
        self.routing.route_label()
    }

    pub(super) fn deadline_passed(&self) -> bool {
        self.upstream
            .as_ref()
            .is_some_and(Upstream::deadline_passed)
    }

    /// The last upstream error is our own "retry on status" marker.
    pub(super) fn status_retry(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.status_retry)
    }

    /// The chosen backend, once the request goes upstream.
    pub(super) fn backend(&self) -> Option<&Backend> {
        self.upstream.as_ref()?.target.backend()
    }

    /// The last try went to a remote proxy's east-west listener.
    pub(super) fn east_west_hop(&self) -> bool {
        self.upstream.as_ref().is_some_and(Upstream::east_west_hop)
    }

    /// `cluster/region/zone` of the endpoint that answered (behind an east-west hop: what the
    /// remote proxy says).
    pub(super) fn served_by(&self) -> Option<String> {
        if !self.outcome.answered {
            return None;
        }
        self.upstream.as_ref()?.served_by()
    }

    /// The region of the endpoint that answered, for the traffic counters.
    /// Region and zone of the endpoint whose response went downstream (behind an east-west hop:
    /// what the remote proxy says), `(None, None)` when the proxy answered itself.
    pub(super) fn answered_locality(&self) -> (Option<&str>, Option<&str>) {
        if !self.outcome.answered {
            return (None, None);
        }
        self.upstream
            .as_ref()
            .map_or((None, None), |u| (u.region(), u.zone()))
    }
}
