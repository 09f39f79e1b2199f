//! The snapshot: the typed contract between the controller and the proxies.
//!
//! The controller translates Kubernetes objects of every member cluster into one [`Snapshot`] per
//! proxy (a region of a cluster) and the proxy compiles it into a [`crate::router::Router`]. Nothing
//! Kubernetes-specific lives here: every Gateway API default has already been applied, every
//! reference resolved and every invalid backend marked, so the data plane never has to guess.
//!
//! The format is versioned twice: [`SNAPSHOT_SCHEMA`] names the shape (a proxy refuses a schema it
//! does not know) and [`Snapshot::generation`] numbers the content (a proxy acknowledges the
//! generation it serves).
//!
//! ```text
//! Snapshot ─┬─ Gateway ─┬─ Listener (address, port, protocol, hostname, TLS)
//!           │           │     └─ Route (hostnames already intersected with the listener's)
//!           │           │           └─ Rule (matches, filters, timeouts, retry, session persistence)
//!           │           │                 └─ Backend (weight, filters, endpoints | invalid reason,
//!           │           │                             TLS to the endpoints)
//!           │           └─ …
//!           └─ …
//! ```
//!
//! Routes are held as [`Arc`]s: a snapshot made from an earlier one (the controller patches its
//! snapshots in place, a proxy applies a patch) shares every route it did not change with it, so
//! cloning a snapshot copies pointers, not routes, and [`Arc::ptr_eq`] is a cheap "unchanged"
//! test (a shared route is only ever changed through [`Arc::make_mut`], which copies it first).
//! On the wire a route is the route itself: the JSON shape does not show the sharing.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The schema identifier every snapshot carries.
pub const SNAPSHOT_SCHEMA: &str = "meridian.dev/snapshot/v1";

/// Everything one proxy serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// Must equal [`SNAPSHOT_SCHEMA`].
    pub schema: String,
    /// Monotonic content version; proxies acknowledge it.
    pub generation: u64,
    /// The Gateways this proxy serves.
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    /// Endpoints the proxy must treat as failed while a drill runs (`FailoverDrill` mode
    /// `drain`): the real failover path runs, no workload is touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<Drain>,
    /// Backends served to other networks' proxies on this proxy's east-west listener (empty
    /// when every member cluster shares one network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub east_west: Vec<EastWestBackend>,
}

impl Snapshot {
    /// An empty snapshot of the given generation.
    pub fn empty(generation: u64) -> Self {
        Self {
            schema: SNAPSHOT_SCHEMA.to_string(),
            generation,
            gateways: Vec::new(),
            drains: Vec::new(),
            east_west: Vec::new(),
        }
    }

    /// Calls `f` on every backend of every rule, mirror backends (rule- and backend-level)
    /// included.
    pub fn for_each_backend(&self, mut f: impl FnMut(&Backend)) {
        for route in self
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
        {
            for_each_route_backend(route, &mut f);
        }
    }

    /// [`Snapshot::for_each_backend`], mutably. Every route becomes this snapshot's own (a route shared with another snapshot
    /// is copied first); to change only some, see [`Snapshot::set_endpoints`].
    pub fn for_each_backend_mut(&mut self, mut f: impl FnMut(&mut Backend)) {
        for route in self
            .gateways
            .iter_mut()
            .flat_map(|g| &mut g.listeners)
            .flat_map(|l| &mut l.routes)
        {
            for_each_route_backend_mut(Arc::make_mut(route), &mut f);
        }
    }

    /// Replaces protocol and endpoints of every resolved backend (mirrors included) for which
    /// `lookup(backend name)` answers; returns whether anything changed. This is the cheap path
    /// for endpoint-only changes, shared by the controller and the distribution client. Only
    /// the routes that change are copied (when shared); the others stay shared.
    pub fn set_endpoints<'a>(
        &mut self,
        lookup: impl Fn(&str) -> Option<(BackendProtocol, &'a [Endpoint])>,
    ) -> bool {
        let mut changed = false;
        for g in &mut self.gateways {
            changed |= g.set_endpoints(&lookup);
        }
        changed
    }
}

impl Gateway {
    /// [`Snapshot::set_endpoints`] for this Gateway's routes only.
    pub fn set_endpoints<'a>(
        &mut self,
        lookup: impl Fn(&str) -> Option<(BackendProtocol, &'a [Endpoint])>,
    ) -> bool {
        let mut changed = false;
        for route in self.listeners.iter_mut().flat_map(|l| &mut l.routes) {
            changed |= set_route_endpoints(route, &lookup);
        }
        changed
    }
}

/// [`Snapshot::set_endpoints`] for one route (the controller's endpoint refresh finds the
/// routes naming a backend through its own index). Copied only when something changes: a
/// shared route that keeps its endpoints stays shared. Returns whether anything changed.
pub fn set_route_endpoints<'a>(
    route: &mut Arc<Route>,
    lookup: &impl Fn(&str) -> Option<(BackendProtocol, &'a [Endpoint])>,
) -> bool {
    let stale = |b: &Backend| match (&b.target, lookup(&b.name)) {
        (
            BackendTarget::Endpoints {
                protocol,
                endpoints,
                ..
            },
            Some((p, eps)),
        ) => endpoints.as_slice() != eps || *protocol != p,
        _ => false,
    };
    let mut any = false;
    for_each_route_backend(route, |b| any |= stale(b));
    if !any {
        return false;
    }
    for_each_route_backend_mut(Arc::make_mut(route), &mut |b| {
        if let BackendTarget::Endpoints {
            protocol: p,
            endpoints,
            ..
        } = &mut b.target
            && let Some((protocol, eps)) = lookup(&b.name)
            && (endpoints.as_slice() != eps || *p != protocol)
        {
            endpoints.clear();
            endpoints.extend_from_slice(eps);
            *p = protocol;
        }
    });
    true
}

/// Calls `f` on every backend of a route's rules, mirror backends included.
fn for_each_route_backend(route: &Route, mut f: impl FnMut(&Backend)) {
    fn mirrors(filters: &[Filter], f: &mut impl FnMut(&Backend)) {
        for filter in filters {
            if let Filter::RequestMirror(m) = filter {
                f(&m.backend);
            }
        }
    }
    for rule in &route.rules {
        mirrors(&rule.filters, &mut f);
        for b in &rule.backends {
            mirrors(&b.filters, &mut f);
            f(b);
        }
    }
}

/// [`for_each_route_backend`], mutably.
fn for_each_route_backend_mut(route: &mut Route, f: &mut impl FnMut(&mut Backend)) {
    fn mirrors(filters: &mut [Filter], f: &mut impl FnMut(&mut Backend)) {
        for filter in filters {
            if let Filter::RequestMirror(m) = filter {
                f(&mut m.backend);
            }
        }
    }
    for rule in &mut route.rules {
        mirrors(&mut rule.filters, f);
        for b in &mut rule.backends {
            mirrors(&mut b.filters, f);
            f(b);
        }
    }
}

/// One Gateway as served by one proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Namespace of the Gateway object.
    pub namespace: String,
    /// Name of the Gateway object.
    pub name: String,
    /// Listeners, in spec order.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Add `x-meridian-served-by: <cluster>/<region>/<zone>` to responses that came from an
    /// endpoint (Gateway annotation `meridian.dev/served-by-header: "true"`; off by default
    /// because it tells clients about the topology behind the Gateway).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub served_by_header: bool,
}

/// Listener protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain HTTP/1.1 and h2c (prior knowledge).
    Http,
    /// TLS-terminated HTTP/1.1 and HTTP/2.
    Https,
    /// TLS passthrough (a Gateway listener of protocol `TLS`, `tls.mode: Passthrough`): the
    /// proxy reads the ClientHello's SNI, picks a [`RouteKind::Tls`] route by it ([`crate::sni`])
    /// and splices the still-encrypted connection to an endpoint; it never terminates TLS. Such a
    /// listener carries no TLS material and only TLSRoute routes.
    Tls,
}

/// One listener: a socket (address, port) plus an optional hostname.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Listener name (`sectionName`).
    pub name: String,
    /// Address to bind (the Gateway's address in this region).
    pub address: IpAddr,
    /// Port to bind.
    pub port: u16,
    /// Protocol spoken on the port.
    pub protocol: Protocol,
    /// Listener hostname: exact (`a.example.com`) or wildcard (`*.example.com`); `None` matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// TLS material for HTTPS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Routes attached to this listener (shared between snapshots: see the module docs).
    #[serde(default, with = "shared_seq")]
    pub routes: Vec<Arc<Route>>,
}

impl PartialEq for Listener {
    /// Field by field; a route shared by both sides ([`Arc::ptr_eq`]) is equal without looking
    /// inside.
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so a field added to the listener is a compile error here.
        let Listener {
            name,
            address,
            port,
            protocol,
            hostname,
            tls,
            routes,
        } = self;
        *name == other.name
            && *address == other.address
            && *port == other.port
            && *protocol == other.protocol
            && *hostname == other.hostname
            && *tls == other.tls
            && same_routes(routes, &other.routes)
    }
}

/// Whether two route lists are equal, shared routes compared by pointer only.
pub fn same_routes(a: &[Arc<Route>], b: &[Arc<Route>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_route(x, y))
}

/// Whether two routes are equal: the same allocation, or equal content.
pub fn same_route(a: &Arc<Route>, b: &Arc<Route>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// Serde for `Vec<Arc<T>>` as a plain sequence of `T` (serde's own `Arc` support needs its
/// `rc` feature, which would rebuild every crate that uses serde for this one field).
mod shared_seq {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| &**x))
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        Ok(Vec::<T>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// TLS termination material of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates; the first one is the default for the listener.
    pub certificates: Vec<Certificate>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificate {
    /// PEM-encoded certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM-encoded private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    // Never print private keys into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// An HTTPRoute, GRPCRoute or TLSRoute as attached to one listener. A TLSRoute is one rule
/// without matches, filters or timeouts: its backends (the proxy picks one per connection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Namespace of the route.
    pub namespace: String,
    /// Name of the route.
    pub name: String,
    /// Which kind of route (an HTTPRoute and a GRPCRoute may share a namespace and name; a
    /// listener orders its routes by namespace, name, then kind).
    #[serde(default, skip_serializing_if = "RouteKind::is_http")]
    pub kind: RouteKind,
    /// Creation time in seconds since the epoch (precedence: older wins).
    #[serde(default)]
    pub created_at: i64,
    /// Effective hostnames: the route's hostnames intersected with the listener's. Empty = all
    /// hostnames the listener accepts.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules in spec order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// The Gateway API kind a snapshot route was translated from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum RouteKind {
    /// `HTTPRoute`.
    #[default]
    #[serde(rename = "HTTPRoute")]
    Http,
    /// `GRPCRoute`.
    #[serde(rename = "GRPCRoute")]
    Grpc,
    /// `TLSRoute` (passthrough: only on [`Protocol::Tls`] listeners).
    #[serde(rename = "TLSRoute")]
    Tls,
}

impl RouteKind {
    /// Whether this is [`RouteKind::Http`] (the default, left out of the wire form).
    pub fn is_http(&self) -> bool {
        *self == RouteKind::Http
    }

    /// The Gateway API kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }
}

/// One route rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Optional rule name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matches, ORed. Empty means one match on `PathPrefix /`.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// Rule-level filters, applied in order.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Weighted backends. Empty with no redirect filter answers 500.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Session persistence: requests of one session go to the endpoint that served its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

/// A request match; all its conditions must hold. The default is the implicit `PathPrefix /`.
///
/// A GRPCRoute match is the same conditions plus [`Match::grpc`]: the controller writes the
/// gRPC method condition as `method: POST` and the path [`GrpcMethodMatch::path_match`] gives,
/// and keeps the condition itself in `grpc` so the router can rank it by the GRPCRoute rules
/// (service, then method, then headers) instead of HTTPRoute's. Every match of a GRPCRoute rule
/// carries `grpc` (a match without a method condition has `service` and `method` both `None`),
/// which is how the proxy tells a gRPC rule from an HTTP one ([`Rule::is_grpc`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Path condition (defaults to `PathPrefix /`).
    #[serde(default)]
    pub path: PathMatch,
    /// Header conditions; names are case-insensitive.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions; names and values are case-sensitive.
    #[serde(default)]
    pub query_params: Vec<QueryParamMatch>,
    /// HTTP method, exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The gRPC method condition of a GRPCRoute match (see the type docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMethodMatch>,
}

/// A GRPCRoute method condition: service and/or method, exact or regular expressions. Both
/// `None` matches every call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// How `service` and `method` are compared.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// Fully qualified service name (`pkg.Service`), or a pattern for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Method name, or a pattern for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl GrpcMethodMatch {
    /// The path condition for this method condition: a gRPC call's path is
    /// `/<service>/<method>`. Exact with both parts is an exact path; anything else is a
    /// regular expression over the whole path (an absent part matches any non-empty segment;
    /// exact parts are escaped); neither part is the `/` prefix (every call).
    pub fn path_match(&self) -> PathMatch {
        const ANY: &str = "[^/]+";
        let part = |p: &Option<String>| -> String {
            match (p, self.kind) {
                (None, _) => ANY.to_string(),
                (Some(v), ValueMatchType::Exact) => regex::escape(v),
                (Some(v), ValueMatchType::RegularExpression) => format!("(?:{v})"),
            }
        };
        match (&self.service, &self.method, self.kind) {
            (None, None, _) => PathMatch::default(),
            (Some(s), Some(m), ValueMatchType::Exact) => PathMatch::Exact(format!("/{s}/{m}")),
            _ => PathMatch::RegularExpression(format!(
                "/{}/{}",
                part(&self.service),
                part(&self.method)
            )),
        }
    }
}

/// Path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "value")]
pub enum PathMatch {
    /// Whole path, case-sensitive.
    Exact(String),
    /// Segment-wise prefix; a trailing `/` in the value is ignored.
    PathPrefix(String),
    /// Regular expression that must match the whole path.
    RegularExpression(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::PathPrefix("/".to_string())
    }
}

impl Rule {
    /// Whether the rule comes from a GRPCRoute (its matches carry [`Match::grpc`]): the proxy
    /// answers its errors as gRPC statuses and never retries or hedges a call once it was sent.
    pub fn is_grpc(&self) -> bool {
        self.matches.iter().any(|m| m.grpc.is_some())
    }
}

/// Exact or regular-expression value match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueMatchType {
    /// Byte-for-byte equal.
    #[default]
    Exact,
    /// Regular expression matching the whole value.
    RegularExpression,
}

/// Header condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Expected value.
    pub value: String,
    /// Match type.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
}

/// Query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParamMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// Expected value.
    pub value: String,
    /// Match type.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
}

/// Filters, at rule or backend level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Filter {
    /// Edits request headers before they go upstream.
    RequestHeaderModifier(HeaderModifier),
    /// Edits response headers before they go downstream.
    ResponseHeaderModifier(HeaderModifier),
    /// Answers with a redirect instead of proxying.
    RequestRedirect(RequestRedirect),
    /// Rewrites host and/or path before proxying.
    #[serde(rename = "urlRewrite")]
    UrlRewrite(UrlRewrite),
    /// Sends a fire-and-forget copy of the request to another backend.
    RequestMirror(RequestMirror),
    /// Cross-origin resource sharing: the proxy answers preflights and adds the
    /// `Access-Control-*` headers to actual responses.
    Cors(Cors),
}

/// A CORS filter (HTTPRoute `CORS`), defaults applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// Allowed origins: `*`, an exact `scheme://host[:port]`, or a host with `*` wildcards
    /// (`https://*.bar.com`, where `*` spans one or more labels).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Allowed methods (`*`: any).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers (`*`: any).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read (`*`: any).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether credentialed requests are allowed.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a preflight answer may be cached, in seconds.
    #[serde(default = "default_cors_max_age")]
    pub max_age: u32,
}

fn default_cors_max_age() -> u32 {
    5
}

/// How a session is carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionKind {
    /// A cookie set on the first answer.
    #[default]
    Cookie,
    /// A response header the client repeats as a request header.
    Header,
}

/// Session persistence of a rule, defaults applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistence {
    /// Cookie or header name.
    pub name: String,
    /// Cookie or header.
    #[serde(default)]
    pub kind: SessionKind,
    /// The session ends this long after its first request (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout_ms: Option<u64>,
    /// The session ends after this long without a request (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// The cookie is permanent (`Max-Age` = the absolute timeout) rather than a browser-session
    /// cookie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

/// Header edits: `set` replaces, `add` appends (joined with `,`), `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers to set (replace).
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Headers to append to.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Path modification used by redirects and rewrites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "value")]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the segments the rule's `PathPrefix` matched.
    ReplacePrefixMatch(String),
}

/// RequestRedirect filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`; `None` keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Replacement host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path modification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Explicit port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// URLRewrite filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// Replacement Host header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path modification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// RequestMirror filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    /// Where copies go.
    pub backend: Backend,
    /// Share of requests mirrored, 0.0–100.0 (from `percent` or `fraction`).
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

/// Per-rule timeouts in milliseconds; `None` = no timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Whole request, all tries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// One upstream try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

/// Retry policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first try.
    pub attempts: u32,
    /// Response codes that are retried (connection errors always are when attempts > 0).
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Minimum pause before each retry; the proxy adds up to half of it again as jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// How to talk to a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendProtocol {
    /// HTTP/1.1 (WebSocket upgrades pass through).
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (`kubernetes.io/h2c`).
    H2c,
}

/// A weighted backend of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Display name, e.g. `ns/name:port` (for logs, metrics and `explain`).
    pub name: String,
    /// Relative weight; 0 is never chosen.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Backend-level filters, applied only when this backend is chosen.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Endpoints, or why the reference is invalid.
    pub target: BackendTarget,
    /// TLS to the endpoints (a BackendTLSPolicy applies); `None`: cleartext. Left out of the
    /// JSON when `None`, so snapshots without TLS backends read the same as before; a proxy that
    /// predates the field refuses a snapshot that has one (`deny_unknown_fields`) rather than
    /// sending that backend's traffic in cleartext. Boxed: most backends have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<BackendTls>>,
}

fn default_weight() -> u32 {
    1
}

/// How the proxy originates TLS to a backend's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTls {
    /// SNI sent in the handshake, and the name the server certificate must carry unless
    /// [`BackendTls::subject_alt_names`] is non-empty.
    pub hostname: String,
    /// PEM bundle of the CAs that may sign the server certificate; `None`: the system's trust
    /// store (`wellKnownCACertificates: System`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// When non-empty, the server certificate must carry one of these instead of
    /// [`BackendTls::hostname`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// A subject alternative name a backend's certificate may be verified against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SubjectAltName {
    /// A DNS name (may be a `*.` wildcard).
    Hostname(String),
    /// A URI (e.g. a SPIFFE ID).
    Uri(String),
}

/// What a backend reference resolved to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum BackendTarget {
    /// A resolved Service or ServiceImport.
    Endpoints {
        /// Wire protocol to the endpoints.
        #[serde(default)]
        protocol: BackendProtocol,
        /// Endpoints; not-ready ones are kept so health can be reported.
        #[serde(default)]
        endpoints: Vec<Endpoint>,
        /// Locality and failover policy (filled by the failover feature).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failover: Option<FailoverPolicy>,
    },
    /// The reference is invalid; requests for this backend get 500.
    Invalid {
        /// Why (BackendNotFound, RefNotPermitted, InvalidKind, …).
        reason: String,
    },
}

/// One endpoint of a backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// IP address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Member cluster the endpoint lives in.
    #[serde(default)]
    pub cluster: String,
    /// Region of that cluster.
    #[serde(default)]
    pub region: String,
    /// Zone, from the EndpointSlice.
    #[serde(default)]
    pub zone: String,
    /// EndpointSlice readiness.
    #[serde(default = "default_true")]
    pub ready: bool,
    /// The endpoint's network is not routable from this proxy: `address:port` is the east-west
    /// listener of a Meridian proxy in the endpoint's cluster, which serves the backend from its
    /// own endpoints. Requests sent here carry `x-meridian-backend: <backend name>`; `cluster`,
    /// `region` and `zone` still describe where the traffic ends up, so locality and failover
    /// work unchanged, and one endpoint per remote proxy keeps ejection per proxy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub east_west: bool,
}

/// A backend this proxy serves to proxies of other networks on its east-west listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EastWestBackend {
    /// [`Backend::name`] as the other proxies' snapshots spell it (the `x-meridian-backend`
    /// request header names it).
    pub name: String,
    /// Protocol towards the endpoints.
    #[serde(default)]
    pub protocol: BackendProtocol,
    /// Endpoints on this proxy's network only (never east-west ones: no loops).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Locality policy for choosing among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Box<FailoverPolicy>>,
}

fn default_true() -> bool {
    true
}

/// Locality/failover policy for a backend (from a `FailoverPolicy` object, or `None` for the
/// defaults: same zone, same region, then other regions alphabetically, TCP health checks).
///
/// Every field has a serde default, so snapshots written before a field existed still parse.
/// Rates are integer percent or milliseconds so the snapshot stays exact and hashable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverPolicy {
    /// Regions to fail over to, in order, after the proxy's own region, when no entry of
    /// [`FailoverPolicy::failover`] names the proxy's region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub region_order: Vec<String>,
    /// Ordered failover per source region: a proxy in `from` tries its own region, then `to` in
    /// order, then any other allowed region alphabetically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<RegionFailover>,
    /// Shares of traffic a proxy in `from` sends to another region while that region is healthy
    /// (e.g. 10 % to the neighbour); the rest follows the tier order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<RegionWeight>,
    /// Spill rule: a tier counts as unhealthy (traffic moves to the next) when fewer than this
    /// percent of its ready endpoints are healthy. 0 = only when none is.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_healthy_percent: u32,
    /// Geo-fence: when non-empty, endpoints outside these regions are never used (503 instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub geo_fence: Vec<String>,
    /// Active health checks (default: TCP connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
    /// Passive outlier detection on responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Box<OutlierDetection>>,
    /// Automatic retries of safe requests on another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<FailoverRetry>>,
    /// How traffic returns to a recovered endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<Box<Failback>>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Ordered failover targets for proxies of one region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionFailover {
    /// Source region (where the proxy runs).
    pub from: String,
    /// Regions to try after `from`, in order.
    #[serde(default)]
    pub to: Vec<String>,
}

/// A share of traffic kept on another region while it is healthy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionWeight {
    /// Source region (where the proxy runs).
    pub from: String,
    /// Target region.
    pub region: String,
    /// Percent of requests (0–100).
    pub percent: u32,
}

/// Active health check settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path to GET (2xx/3xx = healthy); `None` = TCP connect only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    /// Probe interval (0 = the proxy's default, 1 s).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub interval_ms: u64,
    /// Probe timeout (0 = the proxy's default, 500 ms).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub timeout_ms: u64,
    /// Consecutive failed probes that eject a healthy endpoint (0 = default 2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unhealthy_threshold: u32,
    /// Consecutive successful probes that re-admit an ejected endpoint (0 = default 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub healthy_threshold: u32,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Passive outlier detection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint (0 = off).
    #[serde(default)]
    pub consecutive_5xx: u32,
    /// First ejection time; doubled on each repeated ejection (0 = default 2 s).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub base_ejection_ms: u64,
    /// Cap of the backed-off ejection time (0 = default 60 s).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub max_ejection_ms: u64,
}

/// Retry of safe requests on another endpoint, within a budget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverRetry {
    /// Extra tries per request (0 = default 3).
    #[serde(default)]
    pub attempts: u32,
    /// Retries allowed as a percent of requests over the last 10 s (0 = default 20).
    #[serde(default)]
    pub budget_percent: u32,
}

/// Failback: how traffic returns to recovered endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failback {
    /// An ejected endpoint must pass probes for this long before it is re-admitted.
    #[serde(default)]
    pub hysteresis_ms: u64,
    /// After re-admission, its share of traffic ramps linearly over this window.
    #[serde(default)]
    pub slow_start_ms: u64,
}

/// A set of endpoints a drill takes out of service: every field that is set must match.
///
/// The proxy handles a drained endpoint exactly like one its health checks failed, so the drill
/// exercises the real tier choice, spill and retry path; lifting the drain (a snapshot without
/// it) brings the endpoints back through the usual failback rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Drain {
    /// The drill that asked for it (`namespace/name`), for logs and metrics.
    pub drill: String,
    /// Member cluster of the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Region of the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Zone of the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Gateways (`namespace/name`) whose traffic is affected; empty means every Gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Backends (by [`Backend::name`]) affected; empty means every backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
}

impl Drain {
    /// Whether the drain names a locality at all (a drain of "everything" is refused by
    /// validation: a drill always has a target).
    pub fn has_target(&self) -> bool {
        self.cluster.is_some() || self.region.is_some() || self.zone.is_some()
    }

    /// Whether this drain applies to traffic of `gateway` (`namespace/name`) to `backend`.
    pub fn applies_to(&self, gateway: &str, backend: &str) -> bool {
        (self.gateways.is_empty() || self.gateways.iter().any(|g| g == gateway))
            && (self.backends.is_empty() || self.backends.iter().any(|b| b == backend))
    }

    /// Whether `ep` lies in the drained locality.
    pub fn matches(&self, ep: &Endpoint) -> bool {
        self.has_target()
            && self.cluster.as_ref().is_none_or(|c| *c == ep.cluster)
            && self.region.as_ref().is_none_or(|r| *r == ep.region)
            && self.zone.as_ref().is_none_or(|z| *z == ep.zone)
    }
}

impl Snapshot {
    /// Whether `ep`, reached by `gateway` (`namespace/name`) through `backend`, is drained.
    pub fn is_drained(&self, gateway: &str, backend: &str, ep: &Endpoint) -> bool {
        self.drains
            .iter()
            .any(|d| d.applies_to(gateway, backend) && d.matches(ep))
    }
}
