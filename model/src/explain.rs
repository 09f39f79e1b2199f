//! `meridian explain` and the locality part of `meridian status`: what the proxies would do with
//! one request, computed from a snapshot, without sending anything.
//!
//! ```text
//! snapshot ─► Router::compile ─► Router::route(request)          the proxy's own matcher
//!                                  │  listener (why: hostname match, exact > wildcard > none)
//!                                  │  route + rule (why: Gateway API precedence)
//!                                  ├─► set the winner aside, route again (≤ 3 times):
//!                                  │   the rules it won against, in precedence order
//!                                  ▼
//!             per backend of the rule (weight share, filters)
//!               per proxy locality serving the Gateway:
//!                 locality::plan ─► tiers (zone, region, failover order, geo-fence)
//!                 locality::select, again and again ─► the order endpoints are tried in
//!                   (drained: never; failed by --fail or ejected by the reporting
//!                    proxies: ejected, so only a last resort; their measured region order
//!                    passed to plan)
//! ```
//!
//! Nothing here re-implements a decision: routing is [`Router::route`] and the endpoint order is
//! [`locality::select`] called the way the proxy calls it (`proxy/src/endpoints.rs`): a drained
//! endpoint looks like one ejected and already tried, an endpoint of the failed locality like one
//! its health checks ejected, an endpoint already in the order like one this request tried. The
//! reasons ("why") are derived afterwards from the inputs of those decisions.
//!
//! The proxies' own health view comes in as plain inputs ([`Vantage`], from what they report to
//! the controller): an endpoint a proxy ejected (its health checks or failed requests) looks to
//! `select` as it does on that proxy — ejected, a last resort, the one ejected longest ago first
//! — and a proxy's measured nearest-first order of other regions is passed to `plan` as the
//! proxy passes it. Every view says where its region order came from ([`OrderSource`]). Without
//! reports ([`explain`], [`backends`]) the snapshot is all there is: what EndpointSlices and
//! drills say, other regions alphabetically. Slow start after failback is not reported.
//! `--fail` answers the what-if for a locality you name.
//!
//! [`backends`] is the status view: per backend, endpoints per region and zone, and the tier
//! each proxy locality uses now (the first step of the same walk).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayRef;
use crate::hostname;
use crate::locality::{self, Avail, Locality};
use crate::path::{PathError, PathNormalization, normalize_path};
use crate::router::{Decision, Request, RouteMatch, Router};
use crate::snapshot::{
    Backend, BackendTarget, Endpoint, FailoverPolicy, Filter, HeaderMatch, Match, PathMatch,
    Protocol, Snapshot, ValueMatchType,
};
use crate::validate::SnapshotError;

/// At most this many rules set aside to find the ones the winner beat.
pub const MAX_ALSO_MATCHING: usize = 3;
/// At most this many steps of an endpoint order are listed (every endpoint when fewer).
pub const MAX_ORDER: usize = 64;
/// Header that sets a rule aside: no real request carries it.
const SET_ASIDE_HEADER: &str = "x-meridian-explain-set-aside";

/// The request to explain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExplainRequest {
    /// HTTP method (`GET` when empty).
    pub method: String,
    /// Host header.
    pub host: String,
    /// Request target: path, optionally `?query`.
    pub path: String,
    /// Headers (names as given; matched case-insensitively).
    pub headers: Vec<(String, String)>,
    /// Port of the Gateway's listener the request arrives on; `None`: the Gateway's only port,
    /// or 80 when it has several and one of them is 80, else its first listener's.
    pub port: Option<u16>,
}

/// A locality to treat as failed: every endpoint and proxy whose cluster, region or zone has
/// this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Cluster, region or zone name.
    pub name: String,
}

impl Failure {
    /// A failure of the cluster, region or zone `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Failure { name: name.into() }
    }

    /// Whether endpoint `e` lies in the failed locality.
    pub fn hits_endpoint(&self, e: &Endpoint) -> bool {
        e.cluster == self.name
            || e.region == self.name
            || (!e.zone.is_empty() && e.zone == self.name)
    }

    /// Whether a proxy at `l` lies in the failed locality.
    pub fn hits_proxy(&self, l: &Locality) -> bool {
        l.cluster == self.name
            || l.region == self.name
            || (!l.zone.is_empty() && l.zone == self.name)
    }
}

/// What the proxies at one locality report about their own view of health (plain inputs: the
/// controller passes what the proxies sent it; see `docs/operations.md`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vantage {
    /// Where the proxies run.
    pub locality: Locality,
    /// The other regions nearest first as one of these proxies measured them (`None`: no
    /// reporting proxy has measured anything; policy, then alphabetical order).
    pub measured: Option<MeasuredOrder>,
    /// Endpoints the locality's proxies ejected, oldest ejection first (that order decides the
    /// last resort, as the proxy's own ejection order does).
    pub ejected: Vec<Ejection>,
}

impl From<Locality> for Vantage {
    fn from(locality: Locality) -> Self {
        Vantage {
            locality,
            measured: None,
            ejected: Vec::new(),
        }
    }
}

impl Vantage {
    /// The ejections of `address` as an endpoint of `backend`, and the position of the first
    /// one in the oldest-first list.
    fn ejections_of(&self, backend: &str, address: &str) -> (Option<usize>, Vec<EjectedBy>) {
        let mut first = None;
        let mut by = Vec::new();
        for (i, e) in self.ejected.iter().enumerate() {
            if e.backend == backend && e.address == address {
                first.get_or_insert(i);
                by.push(EjectedBy::from(e));
            }
        }
        (first, by)
    }
}

/// A proxy's measured nearest-first order of other regions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasuredOrder {
    /// The proxy that measured it.
    pub proxy: String,
    /// Regions nearest first, with the smoothed connect round trip in ms when known.
    pub regions: Vec<RegionRttView>,
}

/// An endpoint one proxy ejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ejection {
    /// The backend (as named in the snapshot).
    pub backend: String,
    /// `ip:port`.
    pub address: String,
    /// The proxy that ejected it.
    pub proxy: String,
    /// `probe` or `passive`.
    pub reason: String,
    /// When (RFC 3339).
    pub since: String,
    /// Failures that ejected it and failed probes since.
    pub failures: u32,
}

/// One region of a measured order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionRttView {
    /// Region.
    pub region: String,
    /// Smoothed connect round trip, ms.
    pub rtt_ms: Option<f64>,
}

/// Who ejected an endpoint, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EjectedBy {
    /// The proxy.
    pub proxy: String,
    /// `probe` (its health checks) or `passive` (failed requests).
    pub reason: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// Failures that ejected it and failed probes since.
    pub failures: u32,
}

impl From<&Ejection> for EjectedBy {
    fn from(e: &Ejection) -> Self {
        EjectedBy {
            proxy: e.proxy.clone(),
            reason: e.reason.clone(),
            since: e.since.clone(),
            failures: e.failures,
        }
    }
}

/// Where the order of other regions comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrderSource {
    /// The FailoverPolicy's order (regions it does not name alphabetically after them).
    Policy,
    /// The FailoverPolicy's order, then the regions it does not name as a proxy measured them.
    PolicyThenMeasured,
    /// Nearest first as a proxy measured them.
    Measured,
    /// Alphabetically (no policy order, no measurement).
    Alphabetical,
}

/// How a locality orders the other regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionOrderView {
    /// Where the order comes from.
    pub source: OrderSource,
    /// The proxy whose measurement is used, if one is.
    pub measured_by: Option<String>,
    /// Its measured order (nearest first), empty without one.
    pub nearest_regions: Vec<RegionRttView>,
}

/// Why a request cannot be explained.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExplainError {
    /// The Gateway is not in the snapshot.
    #[error(
        "Gateway {0} is not served in this cluster (no such Gateway, not of a Meridian \
         GatewayClass, or not accepted: see its status)"
    )]
    UnknownGateway(GatewayRef),
    /// The Gateway has no listener at all.
    #[error("Gateway {0} has no listener")]
    NoListeners(GatewayRef),
    /// `--port` names no listener of the Gateway.
    #[error("Gateway {gateway} has no listener on port {port} (its ports: {ports:?})")]
    NoSuchPort {
        /// The Gateway.
        gateway: GatewayRef,
        /// The port asked for.
        port: u16,
        /// The ports it listens on.
        ports: Vec<u16>,
    },
    /// The path is refused by normalisation (the proxy answers 400).
    #[error("path {path:?} is refused as the proxy would refuse it (400): {source}")]
    Path {
        /// The path given.
        path: String,
        /// Why.
        #[source]
        source: PathError,
    },
    /// The snapshot does not compile (the proxies would refuse it too).
    #[error("the snapshot does not compile: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The Gateway asked about (`namespace/name`).
    pub gateway: String,
    /// Generation of the snapshot explained.
    pub generation: u64,
    /// The request as routed (normalised path, port chosen).
    pub request: RequestView,
    /// `matched`, `notFound` (404), `misdirected` (421) or `noListener`.
    pub decision: String,
    /// Status the proxy answers itself (404, 421, a redirect's 30x, 500 without a backend);
    /// `None` when the request goes to a backend.
    pub status: Option<u16>,
    /// The Gateway's listeners on the request's port, each with whether its hostname accepts
    /// the host and which one was chosen.
    pub listeners: Vec<ListenerView>,
    /// The listener chosen (`gateway/listener` when another Gateway shares the address).
    pub listener: Option<String>,
    /// Why that listener.
    pub listener_why: Option<String>,
    /// The rule that serves the request.
    pub rule: Option<RuleView>,
    /// Rules that match too but lose to it, in precedence order (at most
    /// [`MAX_ALSO_MATCHING`]).
    pub also_matching: Vec<RuleView>,
    /// The rule's backends, each with where its endpoints are tried from each proxy locality.
    pub backends: Vec<BackendView>,
    /// The locality treated as failed (`--fail`), if any.
    pub failed: Option<String>,
}

/// The request as routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    /// Method.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path after normalisation (what rules and backends see).
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Listener port.
    pub port: u16,
    /// The Gateway's other ports (`--port` picks one).
    pub other_ports: Vec<u16>,
}

/// One listener on the request's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerView {
    /// Listener name.
    pub name: String,
    /// Its hostname (`None`: any host).
    pub hostname: Option<String>,
    /// `HTTP` or `HTTPS`.
    pub protocol: String,
    /// Whether its hostname accepts the request's host.
    pub host_matches: bool,
    /// Whether the router chose it.
    pub chosen: bool,
}

/// A rule of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    /// Route `namespace/name`.
    pub route: String,
    /// Index of the rule in the route.
    pub rule: usize,
    /// The rule's name, if it has one.
    pub name: Option<String>,
    /// The rule's match conditions (any one matching is enough).
    pub matches: Vec<Match>,
    /// Rule-level filters, in order.
    pub filters: Vec<Filter>,
    /// Why this rule.
    pub why: String,
}

/// A backend of the matched rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// Backend name (`namespace/name:port`).
    pub name: String,
    /// Its weight in the rule.
    pub weight: u32,
    /// Its share of the rule's requests, in percent.
    pub share_percent: f64,
    /// Filters applied only when this backend is chosen.
    pub filters: Vec<Filter>,
    /// Why the reference is invalid (the proxy answers 500), if it is.
    pub invalid: Option<String>,
    /// Per proxy locality: the order its endpoints are tried in.
    pub from: Vec<LocalityView>,
}

/// What a proxy at one locality does with a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityView {
    /// Proxy cluster.
    pub cluster: String,
    /// Proxy region.
    pub region: String,
    /// Proxy zone (empty: unknown, no proxy connected).
    pub zone: String,
    /// The proxy itself is in the failed locality: its clients reach nothing through it.
    pub proxy_failed: bool,
    /// Preference tiers, most preferred first.
    pub tiers: Vec<TierView>,
    /// Shares of requests sent to another region's tier while it is eligible (policy weights).
    pub weighted: Vec<WeightedView>,
    /// Spill rule: percent of a tier's endpoints that must be healthy for it to serve.
    pub min_healthy_percent: u32,
    /// Where the order of other regions comes from.
    pub region_order: RegionOrderView,
    /// The endpoints in the order the proxy tries them (each retry takes the next).
    pub order: Vec<StepView>,
    /// The order was cut at [`MAX_ORDER`] steps.
    pub order_truncated: bool,
    /// Endpoints no tier holds, with why.
    pub excluded: Vec<EndpointView>,
    /// Status the proxy answers when the order is empty (503), else `None`.
    pub status: Option<u16>,
}

/// How a tier was formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TierKind {
    /// The proxy's own zone.
    Zone,
    /// The proxy's own region, other zones.
    Region,
    /// Another region, in failover order.
    Failover,
}

/// One preference tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierView {
    /// Position (0 = most preferred).
    pub tier: usize,
    /// Region of its endpoints.
    pub region: String,
    /// Zone, region or failover.
    pub kind: TierKind,
    /// Why it sits at this position.
    pub why: String,
    /// Its endpoints.
    pub endpoints: Vec<EndpointView>,
}

/// A policy weight toward another region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedView {
    /// Region that receives the share.
    pub region: String,
    /// Percent of requests.
    pub percent: u32,
}

/// State of an endpoint as explain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointState {
    /// Ready, not drained, not failed.
    Healthy,
    /// Taken out by a FailoverDrill (never chosen).
    Drained,
    /// In the `--fail` locality (ejected: only a last resort).
    Failed,
    /// Ejected by the reporting proxies (health checks or failed requests): only a last resort.
    Ejected,
    /// EndpointSlice says not ready (never chosen).
    NotReady,
    /// Outside the policy's geo-fence (never chosen).
    OutsideGeoFence,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    /// `ip:port`.
    pub address: String,
    /// Member cluster.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Reached through that cluster's proxy (another network).
    pub east_west: bool,
    /// Its state.
    pub state: EndpointState,
    /// The reporting proxies that ejected it (absent when none did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ejected_by: Vec<EjectedBy>,
}

/// One step of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// The endpoint tried.
    pub endpoint: EndpointView,
    /// Its tier.
    pub tier: usize,
    /// Why it is tried at this step.
    pub why: String,
}

/// Explains `req` sent to `gateway` as the proxies at `proxies` serve `snapshot`, with
/// `fail` treated as failed, without any proxy's own health view ([`explain_seen`]).
pub fn explain(
    snapshot: &Snapshot,
    gateway: &GatewayRef,
    req: &ExplainRequest,
    proxies: &[Locality],
    fail: Option<&Failure>,
) -> Result<Explanation, ExplainError> {
    let views: Vec<Vantage> = proxies.iter().cloned().map(Vantage::from).collect();
    explain_seen(snapshot, gateway, req, &views, fail)
}

/// [`explain`] with what the proxies at each locality report: their ejected endpoints are
/// ejected here too (a last resort, with who ejected them, why and since when), and their
/// measured nearest-first order of other regions replaces the alphabetical one.
pub fn explain_seen(
    snapshot: &Snapshot,
    gateway: &GatewayRef,
    req: &ExplainRequest,
    proxies: &[Vantage],
    fail: Option<&Failure>,
) -> Result<Explanation, ExplainError> {
    let gw = snapshot
        .gateways
        .iter()
        .find(|g| g.namespace == gateway.namespace && g.name == gateway.name)
        .ok_or_else(|| ExplainError::UnknownGateway(gateway.clone()))?;
    let mut ports: Vec<u16> = Vec::new();
    for l in &gw.listeners {
        if !ports.contains(&l.port) {
            ports.push(l.port);
        }
    }
    let port = match req.port {
        Some(p) if ports.contains(&p) => p,
        Some(p) => {
            return Err(ExplainError::NoSuchPort {
                gateway: gateway.clone(),
                port: p,
                ports,
            });
        }
        None if ports.contains(&80) => 80,
        None => *ports
            .first()
            .ok_or_else(|| ExplainError::NoListeners(gateway.clone()))?,
    };
    let on_port: Vec<_> = gw.listeners.iter().filter(|l| l.port == port).collect();
    // Every listener of one port shares its address (the Gateway's first).
    let local = SocketAddr::new(on_port[0].address, port);
    let tls = on_port.iter().any(|l| l.protocol == Protocol::Https);

    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    let path = normalize_path(path, &PathNormalization::default())
        .map_err(|source| ExplainError::Path {
            path: req.path.clone(),
            source,
        })?
        .into_owned();
    let method = if req.method.is_empty() {
        "GET".to_string()
    } else {
        req.method.to_ascii_uppercase()
    };
    let host = hostname::normalize_host(&req.host).into_owned();
    let pairs: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(SET_ASIDE_HEADER))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let headers: &[(&str, &str)] = &pairs;
    let request = Request {
        local,
        sni: tls.then_some(host.as_str()),
        host: Some(&host),
        method: &method,
        path: &path,
        query,
        headers: &headers,
    };

    let router = Router::compile(snapshot.clone())?;
    let decision = router.route(&request);
    let gateway_key = gateway.to_string();
    let mut out = Explanation {
        gateway: gateway_key.clone(),
        generation: snapshot.generation,
        request: RequestView {
            method: method.clone(),
            host: host.clone(),
            path: path.clone(),
            query: query.map(str::to_string),
            port,
            other_ports: ports.iter().copied().filter(|p| *p != port).collect(),
        },
        decision: String::new(),
        status: None,
        listeners: Vec::new(),
        listener: None,
        listener_why: None,
        rule: None,
        also_matching: Vec::new(),
        backends: Vec::new(),
        failed: fail.map(|f| f.name.clone()),
    };
    let chosen = match &decision {
        Decision::NoListener => None,
        Decision::NotFound { listener }
        | Decision::Misdirected { listener }
        | Decision::Matched(RouteMatch { listener, .. }) => Some(listener.clone()),
    };
    out.listeners = on_port
        .iter()
        .map(|l| ListenerView {
            name: l.name.clone(),
            hostname: l.hostname.clone(),
            protocol: protocol_name(l.protocol).to_string(),
            host_matches: l
                .hostname
                .as_deref()
                .is_none_or(|h| hostname::matches(h, &host)),
            chosen: chosen.as_ref().is_some_and(|c| {
                c.gateway_namespace == gw.namespace && c.gateway_name == gw.name && c.name == l.name
            }),
        })
        .collect();
    if let Some(c) = &chosen {
        let same_gateway = c.gateway_namespace == gw.namespace && c.gateway_name == gw.name;
        out.listener = Some(if same_gateway {
            c.name.clone()
        } else {
            format!("{}/{}/{}", c.gateway_namespace, c.gateway_name, c.name)
        });
        out.listener_why = Some(listener_why(
            c.hostname.as_deref(),
            &host,
            same_gateway,
            &out.listeners,
        ));
    }
    match decision {
        Decision::NoListener => {
            out.decision = "noListener".into();
            out.status = Some(404);
        }
        Decision::NotFound { .. } => {
            out.decision = "notFound".into();
            out.status = Some(404);
        }
        Decision::Misdirected { .. } => {
            out.decision = "misdirected".into();
            out.status = Some(421);
        }
        Decision::Matched(m) => {
            out.decision = "matched".into();
            let also = also_matching(snapshot, &request, &m);
            let candidates = also.len() + 1;
            out.rule = Some(rule_view(&m, winner_why(&m, candidates)));
            out.also_matching = also;
            if let Some(r) = m.rule.redirect() {
                out.status = Some(r.status_code);
            } else if m.rule.total_weight() == 0 {
                out.status = Some(500);
            } else {
                let total = m.rule.total_weight() as f64;
                out.backends = m
                    .rule
                    .rule
                    .backends
                    .iter()
                    .map(|b| backend_view(snapshot, &gateway_key, b, total, proxies, fail))
                    .collect();
            }
        }
    }
    Ok(out)
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "TLS",
    }
}

fn listener_why(
    hostname: Option<&str>,
    host: &str,
    same_gateway: bool,
    listeners: &[ListenerView],
) -> String {
    let accepting = listeners.iter().filter(|l| l.host_matches).count();
    let mut why = match hostname {
        None => "it has no hostname, so it accepts any host".to_string(),
        Some(h) if h.starts_with('*') => format!("its hostname {h} matches {host} (wildcard)"),
        Some(h) => format!("its hostname {h} is {host}"),
    };
    if accepting > 1 {
        why.push_str(&format!(
            "; {accepting} listeners accept the host and the most specific wins (exact > \
             longest wildcard > no hostname)"
        ));
    }
    if !same_gateway {
        why.push_str(
            "; it belongs to another Gateway on the same address and port, which the request \
             reaches first",
        );
    }
    if hostname.is_some_and(|h| !hostname::matches(h, host)) {
        why = format!(
            "no listener accepts the host {host}; the router picked it for the TLS server name"
        );
    }
    why
}

fn rule_view(m: &RouteMatch, why: String) -> RuleView {
    RuleView {
        route: format!("{}/{}", m.rule.route_namespace, m.rule.route_name),
        rule: m.rule.index,
        name: m.rule.rule.name.clone(),
        matches: m.rule.rule.matches.clone(),
        filters: m.rule.rule.filters.clone(),
        why,
    }
}

fn winner_why(m: &RouteMatch, candidates: usize) -> String {
    let mut why = format!(
        "one of its matches accepts the request (path{}{})",
        m.matched_prefix
            .as_deref()
            .map(|p| format!(" prefix {p}"))
            .unwrap_or_default(),
        if m.rule
            .rule
            .matches
            .iter()
            .any(|x| x.method.is_some() || !x.headers.is_empty() || !x.query_params.is_empty())
        {
            ", and its method, header or query conditions"
        } else {
            ""
        }
    );
    if candidates > 1 {
        why.push_str(
            "; it wins over the other matching rules by Gateway API precedence: more specific \
             host, then exact path > regular expression > longest prefix, then method, more \
             headers, more query parameters, then the oldest route, then route namespace/name, \
             then rule order",
        );
    }
    why
}

/// The rules the winner beat: the winner set aside (a match no request satisfies), routed
/// again by the same router, up to [`MAX_ALSO_MATCHING`] times.
fn also_matching(snapshot: &Snapshot, req: &Request<'_>, first: &RouteMatch) -> Vec<RuleView> {
    let mut out = Vec::new();
    let mut work = snapshot.clone();
    let mut last = first.clone();
    for n in 0..MAX_ALSO_MATCHING {
        set_aside(&mut work, &last);
        let Ok(router) = Router::compile(work.clone()) else {
            break;
        };
        match router.route(req) {
            Decision::Matched(m) => {
                out.push(rule_view(
                    &m,
                    format!("matches too, ranks {} by precedence", n + 2),
                ));
                last = m;
            }
            _ => break,
        }
    }
    out
}

fn set_aside(snapshot: &mut Snapshot, m: &RouteMatch) {
    let never = Match {
        path: PathMatch::PathPrefix("/".into()),
        headers: vec![HeaderMatch {
            name: SET_ASIDE_HEADER.into(),
            value: "1".into(),
            kind: ValueMatchType::Exact,
        }],
        query_params: Vec::new(),
        method: None,
        grpc: None,
    };
    for gw in &mut snapshot.gateways {
        for l in &mut gw.listeners {
            for r in &mut l.routes {
                if r.namespace == m.rule.route_namespace
                    && r.name == m.rule.route_name
                    && let Some(rule) = std::sync::Arc::make_mut(r).rules.get_mut(m.rule.index)
                {
                    rule.matches = vec![never.clone()];
                }
            }
        }
    }
}

fn backend_view(
    snapshot: &Snapshot,
    gateway: &str,
    b: &Backend,
    total_weight: f64,
    proxies: &[Vantage],
    fail: Option<&Failure>,
) -> BackendView {
    let mut view = BackendView {
        name: b.name.clone(),
        weight: b.weight,
        share_percent: if total_weight > 0.0 {
            (f64::from(b.weight) * 10000.0 / total_weight).round() / 100.0
        } else {
            0.0
        },
        filters: b.filters.clone(),
        invalid: None,
        from: Vec::new(),
    };
    match &b.target {
        BackendTarget::Invalid { reason } => view.invalid = Some(reason.clone()),
        BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } => {
            let drained = |e: &Endpoint| snapshot.is_drained(gateway, &b.name, e);
            view.from = proxies
                .iter()
                .map(|me| walk(endpoints, failover.as_ref(), &b.name, me, &drained, fail))
                .collect();
        }
    }
    view
}

/// The tiers of backend `backend`'s `endpoints` for the proxies at `view` and the order they
/// try them in: the proxy's [`locality::plan`] (with their measured region order, if any) and,
/// step after step, its [`locality::select`] with the endpoints already listed marked tried.
/// `drained` endpoints are never chosen; endpoints hit by `fail` or ejected by the proxies are
/// ejected (a last resort once nothing else is left, the one ejected longest ago first, as in
/// the proxy).
pub fn walk(
    endpoints: &[Endpoint],
    policy: Option<&FailoverPolicy>,
    backend: &str,
    view: &Vantage,
    drained: &dyn Fn(&Endpoint) -> bool,
    fail: Option<&Failure>,
) -> LocalityView {
    let me = &view.locality;
    let failed = |e: &Endpoint| fail.is_some_and(|f| f.hits_endpoint(e));
    let ejections: Vec<(Option<usize>, Vec<EjectedBy>)> = endpoints
        .iter()
        .map(|e| view.ejections_of(backend, &SocketAddr::new(e.address, e.port).to_string()))
        .collect();
    let state_at = |i: usize| {
        let e = &endpoints[i];
        if drained(e) {
            EndpointState::Drained
        } else if failed(e) {
            EndpointState::Failed
        } else if ejections[i].0.is_some() {
            EndpointState::Ejected
        } else {
            EndpointState::Healthy
        }
    };
    let endpoint_at = |i: usize, state: EndpointState| {
        let mut v = endpoint_view(&endpoints[i], state);
        v.ejected_by = ejections[i].1.clone();
        v
    };
    // Other regions: the policy's order, then the measured one of a reporting proxy, then
    // alphabetically (what `locality::plan` does with the proxy's own measurement).
    let nearest: Vec<String> = view
        .measured
        .iter()
        .flat_map(|m| m.regions.iter().map(|r| r.region.clone()))
        .collect();
    let plan = locality::plan(endpoints, me, policy, &nearest);
    let order_of = locality::region_order(policy, &me.region);
    let region_order = RegionOrderView {
        source: match (order_of.is_empty(), nearest.is_empty()) {
            (false, true) => OrderSource::Policy,
            (false, false) => OrderSource::PolicyThenMeasured,
            (true, false) => OrderSource::Measured,
            (true, true) => OrderSource::Alphabetical,
        },
        measured_by: view.measured.as_ref().map(|m| m.proxy.clone()),
        nearest_regions: view
            .measured
            .as_ref()
            .map(|m| m.regions.clone())
            .unwrap_or_default(),
    };
    let tiers: Vec<TierView> = plan
        .tiers
        .iter()
        .enumerate()
        .map(|(t, tier)| {
            let kind = tier_kind(tier.region, &tier.members, endpoints, me);
            TierView {
                tier: t,
                region: tier.region.to_string(),
                kind,
                why: tier_why(kind, tier.region, me, policy, &order_of, view),
                endpoints: tier
                    .members
                    .iter()
                    .map(|&i| endpoint_at(i, state_at(i)))
                    .collect(),
            }
        })
        .collect();
    let tier_of = |i: usize| plan.tiers.iter().position(|t| t.members.contains(&i));
    let excluded = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| tier_of(*i).is_none())
        .map(|(_, e)| {
            endpoint_view(
                e,
                if e.ready {
                    EndpointState::OutsideGeoFence
                } else {
                    EndpointState::NotReady
                },
            )
        })
        .collect();

    // The order: weights are reported apart (they send a share elsewhere, they do not reorder
    // the tiers); a fixed roll of 0 makes the choice within a tier deterministic.
    let mut ordered = plan.clone();
    ordered.weighted.clear();
    let mut tried: Vec<usize> = Vec::new();
    let mut order = Vec::new();
    let mut truncated = false;
    while tried.len() < endpoints.len() {
        if order.len() == MAX_ORDER {
            truncated = true;
            break;
        }
        let avail = |i: usize| {
            let e = &endpoints[i];
            let was_tried = tried.contains(&i);
            if drained(e) {
                Avail::TriedEjected
            } else if failed(e) || ejections[i].0.is_some() {
                if was_tried {
                    Avail::TriedEjected
                } else {
                    // Ejected by a proxy: its place in the oldest-first list; failed by
                    // `--fail` only: after those, in endpoint order.
                    let at = ejections[i].0.unwrap_or(view.ejected.len() + i);
                    Avail::Ejected {
                        ejected_at: at as u64,
                    }
                }
            } else if was_tried {
                Avail::Tried
            } else {
                Avail::Usable { ramp: 1.0 }
            }
        };
        let Some(i) = locality::select(&ordered, avail, &mut || 0.0) else {
            break;
        };
        let Some(t) = tier_of(i) else {
            break;
        };
        let left =
            |j: usize| !tried.contains(&j) && state_at(j) == EndpointState::Healthy && j != i;
        let why = step_why(&ordered, &tiers, t, order.is_empty(), state_at(i), &left);
        tried.push(i);
        order.push(StepView {
            endpoint: endpoint_at(i, state_at(i)),
            tier: t,
            why,
        });
    }
    LocalityView {
        cluster: me.cluster.clone(),
        region: me.region.clone(),
        zone: me.zone.clone(),
        proxy_failed: fail.is_some_and(|f| f.hits_proxy(me)),
        weighted: plan
            .weighted
            .iter()
            .filter_map(|&(t, percent)| {
                plan.tiers.get(t).map(|tier| WeightedView {
                    region: tier.region.to_string(),
                    percent,
                })
            })
            .collect(),
        min_healthy_percent: plan.min_healthy_percent,
        region_order,
        status: order.is_empty().then_some(503),
        tiers,
        order,
        order_truncated: truncated,
        excluded,
    }
}

fn endpoint_view(e: &Endpoint, state: EndpointState) -> EndpointView {
    EndpointView {
        address: SocketAddr::new(e.address, e.port).to_string(),
        cluster: e.cluster.clone(),
        region: e.region.clone(),
        zone: e.zone.clone(),
        east_west: e.east_west,
        state,
        ejected_by: Vec::new(),
    }
}

fn tier_kind(region: &str, members: &[usize], endpoints: &[Endpoint], me: &Locality) -> TierKind {
    if region != me.region {
        TierKind::Failover
    } else if !me.zone.is_empty() && members.iter().all(|&i| endpoints[i].zone == me.zone) {
        TierKind::Zone
    } else {
        TierKind::Region
    }
}

fn tier_why(
    kind: TierKind,
    region: &str,
    me: &Locality,
    policy: Option<&FailoverPolicy>,
    order: &[&str],
    view: &Vantage,
) -> String {
    let measured = view.measured.as_ref().and_then(|m| {
        let p = m.regions.iter().position(|r| r.region == region)?;
        let rtt = m.regions[p]
            .rtt_ms
            .map(|ms| format!(", {ms} ms"))
            .unwrap_or_default();
        Some(format!(
            "position {} in the nearest-first order proxy {} measured (connect round trip{rtt})",
            p + 1,
            m.proxy
        ))
    });
    match kind {
        TierKind::Zone => format!("same zone as the proxy ({})", me.zone),
        TierKind::Region => format!("same region as the proxy ({}), other zones", me.region),
        TierKind::Failover => match order.iter().position(|r| *r == region) {
            Some(p) => {
                let source = match policy {
                    Some(pol) if pol.failover.iter().any(|f| f.from == me.region) => {
                        format!("the FailoverPolicy's failover order from {}", me.region)
                    }
                    _ => "the FailoverPolicy's regionOrder".to_string(),
                };
                format!("other region, position {} in {source}", p + 1)
            }
            None => match (&measured, view.measured.as_ref()) {
                (Some(m), _) if order.is_empty() => {
                    format!("other region; no failover order for this region: {m}")
                }
                (Some(m), _) => format!("other region not in the failover order: after it, {m}"),
                (None, Some(m)) => format!(
                    "other region proxy {} has not measured: after the measured ones, \
                     alphabetically",
                    m.proxy
                ),
                (None, None) if order.is_empty() => {
                    "other region; no failover order for this region and no measured order \
                     reported, so other regions go alphabetically"
                        .to_string()
                }
                (None, None) => {
                    "other region not in the failover order: after it, alphabetically".to_string()
                }
            },
        },
    }
}

/// Why the endpoint of tier `t` comes next. `left(i)`: endpoint `i` is healthy and not tried
/// yet at this step.
fn step_why(
    plan: &locality::Plan<'_>,
    tiers: &[TierView],
    t: usize,
    first: bool,
    state: EndpointState,
    left: &dyn Fn(usize) -> bool,
) -> String {
    let tier = &tiers[t];
    let kind = match tier.kind {
        TierKind::Zone => "own zone",
        TierKind::Region => "own region",
        TierKind::Failover => "failover",
    };
    let place = format!("tier {t} ({kind}, {})", tier.region);
    if matches!(state, EndpointState::Failed | EndpointState::Ejected) {
        return format!(
            "{place}: last resort; every endpoint left is failed or ejected, and the proxy then \
             tries the one ejected longest ago rather than none"
        );
    }
    let lead = if first {
        "first choice"
    } else {
        "next when the ones above fail"
    };
    let mut why = format!("{lead}: {place}");
    let skipped: Vec<String> = plan.tiers[..t]
        .iter()
        .enumerate()
        .filter(|(_, earlier)| earlier.members.iter().any(|&i| left(i)))
        .map(|(n, _)| n.to_string())
        .collect();
    if !skipped.is_empty() {
        why.push_str(&format!(
            "; tier {} skipped by the spill rule (fewer than {}% of its endpoints healthy)",
            skipped.join(", "),
            plan.min_healthy_percent
        ));
    } else if t > 0 && first {
        why.push_str("; nothing usable in the tiers before it (drained, failed or ejected)");
    }
    why
}

/// Endpoints of one backend in one region and zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneHealth {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Endpoints listed.
    pub endpoints: usize,
    /// Ready by the EndpointSlices and not drained.
    pub healthy: usize,
    /// Drained by a FailoverDrill.
    pub drained: usize,
    /// Ejected by at least one reporting proxy (counted in `healthy` too: the controller's
    /// view and the proxies' view side by side).
    pub ejected: usize,
}

/// An endpoint of a backend that proxies ejected, as `meridian status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EjectedEndpointView {
    /// `ip:port`.
    pub address: String,
    /// Member cluster of the endpoint.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Which proxies ejected it, why and since when.
    pub by: Vec<EjectedBy>,
}

/// The tier a proxy locality uses now for a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierInUse {
    /// Proxy cluster.
    pub cluster: String,
    /// Proxy region.
    pub region: String,
    /// Proxy zone.
    pub zone: String,
    /// Position of the tier serving now (`None`: no endpoint, 503).
    pub tier: Option<usize>,
    /// Zone, region or failover.
    pub kind: Option<TierKind>,
    /// Region the tier serves from.
    pub serving_region: Option<String>,
}

/// One backend of a cluster's snapshot, as `meridian status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSummary {
    /// Backend name (`namespace/name:port`).
    pub name: String,
    /// Why the reference is invalid, if it is.
    pub invalid: Option<String>,
    /// Endpoints per region and zone.
    pub zones: Vec<ZoneHealth>,
    /// Per proxy locality, the tier it uses now.
    pub tiers: Vec<TierInUse>,
    /// Endpoints the reporting proxies ejected, by region and zone.
    pub ejected: Vec<EjectedEndpointView>,
}

/// Every backend of `snapshot` (rules and mirrors, once per name): endpoints per region and
/// zone and the tier each of `proxies` uses now. Drains count when they name the backend (any
/// Gateway).
pub fn backends(snapshot: &Snapshot, proxies: &[Locality]) -> Vec<BackendSummary> {
    let views: Vec<Vantage> = proxies.iter().cloned().map(Vantage::from).collect();
    backends_seen(snapshot, &views)
}

/// [`backends`] with the proxies' own views: the tier in use skips what they ejected (and
/// follows their measured region order), and each backend lists the endpoints they ejected.
pub fn backends_seen(snapshot: &Snapshot, proxies: &[Vantage]) -> Vec<BackendSummary> {
    let mut seen: BTreeMap<&str, &Backend> = BTreeMap::new();
    for gw in &snapshot.gateways {
        for l in &gw.listeners {
            for r in &l.routes {
                for rule in &r.rules {
                    let mirrors = rule.filters.iter().filter_map(|f| match f {
                        Filter::RequestMirror(m) => Some(&m.backend),
                        _ => None,
                    });
                    for b in rule.backends.iter().chain(mirrors) {
                        seen.entry(b.name.as_str()).or_insert(b);
                    }
                }
            }
        }
    }
    seen.into_values()
        .map(|b| backend_summary(snapshot, b, proxies))
        .collect()
}

fn backend_summary(snapshot: &Snapshot, b: &Backend, proxies: &[Vantage]) -> BackendSummary {
    let (endpoints, policy) = match &b.target {
        BackendTarget::Invalid { reason } => {
            return BackendSummary {
                name: b.name.clone(),
                invalid: Some(reason.clone()),
                zones: Vec::new(),
                tiers: Vec::new(),
                ejected: Vec::new(),
            };
        }
        BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } => (endpoints, failover.as_ref()),
    };
    let drained = |e: &Endpoint| {
        snapshot
            .drains
            .iter()
            .any(|d| (d.backends.is_empty() || d.backends.contains(&b.name)) && d.matches(e))
    };
    let mut zones: BTreeMap<(String, String), ZoneHealth> = BTreeMap::new();
    let mut ejected: BTreeMap<(String, String, String), EjectedEndpointView> = BTreeMap::new();
    for e in endpoints {
        let address = SocketAddr::new(e.address, e.port).to_string();
        let by: Vec<EjectedBy> = proxies
            .iter()
            .flat_map(|v| v.ejections_of(&b.name, &address).1)
            .collect();
        if !by.is_empty() {
            let entry = ejected
                .entry((e.region.clone(), e.zone.clone(), address.clone()))
                .or_insert_with(|| EjectedEndpointView {
                    address,
                    cluster: e.cluster.clone(),
                    region: e.region.clone(),
                    zone: e.zone.clone(),
                    by: Vec::new(),
                });
            for x in by {
                if !entry.by.contains(&x) {
                    entry.by.push(x);
                }
            }
        }
        let z = zones
            .entry((e.region.clone(), e.zone.clone()))
            .or_insert_with(|| ZoneHealth {
                region: e.region.clone(),
                zone: e.zone.clone(),
                endpoints: 0,
                healthy: 0,
                drained: 0,
                ejected: 0,
            });
        z.endpoints += 1;
        if ejected.contains_key(&(
            e.region.clone(),
            e.zone.clone(),
            SocketAddr::new(e.address, e.port).to_string(),
        )) {
            z.ejected += 1;
        }
        if drained(e) {
            z.drained += 1;
        } else if e.ready {
            z.healthy += 1;
        }
    }
    let tiers = proxies
        .iter()
        .map(|v| {
            let me = &v.locality;
            let view = walk(endpoints, policy, &b.name, v, &drained, None);
            let first = view.order.first();
            TierInUse {
                cluster: me.cluster.clone(),
                region: me.region.clone(),
                zone: me.zone.clone(),
                tier: first.map(|s| s.tier),
                kind: first.and_then(|s| view.tiers.get(s.tier)).map(|t| t.kind),
                serving_region: first.map(|s| s.endpoint.region.clone()),
            }
        })
        .collect();
    BackendSummary {
        name: b.name.clone(),
        invalid: None,
        zones: zones.into_values().collect(),
        tiers,
        ejected: ejected.into_values().collect(),
    }
}
