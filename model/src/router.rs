//! The compiled router: from a request to the one HTTPRoute rule that serves it.
//!
//! [`Router::compile`] validates a [`Snapshot`] and builds an index so that a request is decided
//! without scanning every route:
//!
//! ```text
//! (local address, port) ──► PortIndex ── Host ──► listener (exact > longest wildcard > none)
//!                                                   │  (SNI picked one already? Host on another ⇒ 421)
//!                                                   ▼
//!                            HostIndex ── Host ──► buckets: exact host, then each wildcard suffix
//!                                                   of the Host (longest first), then catch-all
//!                                                   ▼
//!                            Bucket ── path ──► candidates: exact-path map + segment trie of
//!                                                prefixes + regexes, evaluated in precedence order
//! ```
//!
//! Precedence inside a bucket is the Gateway API order: exact path > regex > longest prefix >
//! method > more headers > more query params > older route > route `namespace/name` > rule order >
//! match order. GRPCRoute matches ([`Match::grpc`]) rank by the GRPCRoute order instead: more
//! characters of service, then of method (a regular expression counts its pattern's characters;
//! on equal counts an exact condition ranks first: regex precedence is left to implementations),
//! then more headers, then the same route and rule tie-breakers. The spec forbids merging the two
//! kinds, and the controller never attaches an HTTPRoute and a GRPCRoute with overlapping
//! hostnames to one listener, so a bucket holds one kind in practice; if it held both, HTTP
//! matches would rank first. Host specificity ranks above all of these (spec: "characters in a matching
//! non-wildcard hostname"), which the bucket walk implements: a more specific bucket is tried
//! first and a less specific one only when nothing in it matches.
//!
//! The router is immutable; the proxy swaps whole routers (see `meridian-proxy`).
//!
//! # Endpoint-only changes
//!
//! Index entries name their rule by position in one rule table, and every backend name with
//! endpoints knows the rules that use it (mirror backends included). So
//! [`Router::with_endpoints`] builds the next router from this one by copying the table of
//! `Arc`s, replacing only the rules that use a changed backend, and sharing the whole index:
//! O(rules) pointer copies plus O(uses of the changed backends) rule copies, where
//! [`Router::compile`] of the patched snapshot re-validates and re-indexes everything. The
//! snapshot behind [`Router::snapshot`] is patched lazily, on first use:
//!
//! ```text
//! compile(S) ─► Router{ index, rules, snapshot: S }
//!   with_endpoints(g, Δ) ─► Router{ same index, rules with Δ's users replaced,
//!                                   snapshot: S + Δ, built by the first snapshot() call }
//! ```

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use regex::Regex;

use crate::hostname::{self, Specificity};
use crate::snapshot::*;
use crate::validate::{SnapshotError, validate};

/// Read access to request headers. Implementations join repeated headers with `,`.
pub trait HeaderSource {
    /// The value of the header with this lower-case name.
    fn header(&self, lower_name: &str) -> Option<Cow<'_, str>>;
}

impl HeaderSource for [(&str, &str)] {
    fn header(&self, lower_name: &str) -> Option<Cow<'_, str>> {
        let mut values = self
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(lower_name))
            .map(|(_, v)| *v);
        let first = values.next()?;
        let rest: Vec<&str> = values.collect();
        if rest.is_empty() {
            Some(Cow::Borrowed(first))
        } else {
            let mut joined = first.to_string();
            for v in rest {
                joined.push(',');
                joined.push_str(v);
            }
            Some(Cow::Owned(joined))
        }
    }
}

// A `&[(&str, &str)]` (or any other reference to a header source) can be passed as
// `&dyn HeaderSource`: the slice impl above is unsized and cannot be made a trait object itself.
impl<T: HeaderSource + ?Sized> HeaderSource for &T {
    fn header(&self, lower_name: &str) -> Option<Cow<'_, str>> {
        (**self).header(lower_name)
    }
}

/// What the router needs to know about a request.
pub struct Request<'a> {
    /// Local address and port the connection arrived on.
    pub local: SocketAddr,
    /// TLS server name, for HTTPS listeners.
    pub sni: Option<&'a str>,
    /// Host header (or `:authority`), port included or not.
    pub host: Option<&'a str>,
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path without the query, e.g. `/a/b`.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a dyn HeaderSource,
}

/// The router's answer.
#[derive(Debug, Clone)]
pub enum Decision {
    /// No listener on this socket (the proxy should not be listening there).
    NoListener,
    /// Listener found but no rule matches: 404.
    NotFound {
        /// The listener that was selected.
        listener: Arc<ListenerInfo>,
    },
    /// The Host belongs to another listener than the one TLS SNI selected: 421.
    Misdirected {
        /// The listener SNI selected.
        listener: Arc<ListenerInfo>,
    },
    /// A rule matched.
    Matched(RouteMatch),
}

/// A matched rule plus what filters need to know about the match.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The listener.
    pub listener: Arc<ListenerInfo>,
    /// The rule (holds its route's identity).
    pub rule: Arc<CompiledRule>,
    /// The normalised `PathPrefix` value that matched (for `ReplacePrefixMatch`), if any.
    pub matched_prefix: Option<Arc<str>>,
}

/// Identity of a listener, shared by everything compiled from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Gateway namespace.
    pub gateway_namespace: String,
    /// Gateway name.
    pub gateway_name: String,
    /// Listener name.
    pub name: String,
    /// Listener port.
    pub port: u16,
    /// Listener protocol.
    pub protocol: Protocol,
    /// Listener hostname.
    pub hostname: Option<String>,
    /// `gateway namespace/gateway name/listener name`, the listener's label in metrics and logs:
    /// formatted when the listener is compiled, so a request borrows it instead of formatting it.
    pub label: String,
}

/// A rule ready for the proxy: the rule as in the snapshot plus precomputed backend weights.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// Route namespace.
    pub route_namespace: String,
    /// Route name.
    pub route_name: String,
    /// `namespace/name`, the route's label in metrics and logs: formatted when the rule is
    /// compiled, so a request borrows it instead of formatting it.
    pub route_label: String,
    /// Index of the rule in the route.
    pub index: usize,
    /// The rule.
    pub rule: Rule,
    /// Running sum of backend weights, one per backend (for weighted choice).
    pub cumulative_weights: Vec<u64>,
}

impl CompiledRule {
    fn new(route: &Route, index: usize, rule: &Rule) -> Self {
        let mut sum = 0u64;
        let cumulative_weights = rule
            .backends
            .iter()
            .map(|b| {
                sum += u64::from(b.weight);
                sum
            })
            .collect();
        Self {
            route_namespace: route.namespace.clone(),
            route_name: route.name.clone(),
            route_label: format!("{}/{}", route.namespace, route.name),
            index,
            rule: rule.clone(),
            cumulative_weights,
        }
    }

    /// Sum of all backend weights.
    pub fn total_weight(&self) -> u64 {
        self.cumulative_weights.last().copied().unwrap_or(0)
    }

    /// The first RequestRedirect filter of the rule, if any.
    pub fn redirect(&self) -> Option<&RequestRedirect> {
        self.rule.filters.iter().find_map(|f| match f {
            Filter::RequestRedirect(r) => Some(r),
            _ => None,
        })
    }

    /// Picks a backend by weight. `roll` is any uniformly random number. `None` when the rule has
    /// no backend with a positive weight.
    pub fn pick_backend(&self, roll: u64) -> Option<(usize, &Backend)> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let point = roll % total;
        // First backend whose running sum exceeds the point; weight-0 backends never qualify.
        let idx = self.cumulative_weights.partition_point(|&c| c <= point);
        self.rule.backends.get(idx).map(|b| (idx, b))
    }
}

/// The compiled, immutable routing table of one snapshot.
#[derive(Debug)]
pub struct Router {
    generation: u64,
    snapshot: SnapshotCell,
    /// Shared by every router derived with [`Router::with_endpoints`]: nothing in it depends on
    /// endpoint lists.
    sockets: Arc<HashMap<SocketAddr, PortIndex>>,
    /// Every compiled rule; index entries hold positions in this table.
    rules: Vec<Arc<CompiledRule>>,
    /// Backend name → the rules (positions in `rules`) with a backend of that name that has
    /// endpoints, mirror backends included.
    uses: Arc<HashMap<String, Vec<usize>>>,
}

/// Rules as they are compiled, with the backend names they use.
#[derive(Default)]
struct RuleTable {
    rules: Vec<Arc<CompiledRule>>,
    uses: HashMap<String, Vec<usize>>,
}

impl RuleTable {
    fn add(&mut self, route: &Route, index: usize, rule: &Rule) -> usize {
        let id = self.rules.len();
        self.rules
            .push(Arc::new(CompiledRule::new(route, index, rule)));
        let mut names: Vec<&str> = Vec::new();
        for_each_backend(rule, |b| {
            if matches!(b.target, BackendTarget::Endpoints { .. }) {
                names.push(&b.name);
            }
        });
        names.sort_unstable();
        names.dedup();
        for n in names {
            self.uses.entry(n.to_string()).or_default().push(id);
        }
        id
    }
}

/// Calls `f` on every backend of `rule`, mirror backends (rule- and backend-level) included: the
/// backends [`Snapshot::set_endpoints`] patches.
fn for_each_backend<'a>(rule: &'a Rule, mut f: impl FnMut(&'a Backend)) {
    let mirrors = |filters: &'a [Filter], f: &mut dyn FnMut(&'a Backend)| {
        for filter in filters {
            if let Filter::RequestMirror(m) = filter {
                f(&m.backend);
            }
        }
    };
    mirrors(&rule.filters, &mut f);
    for b in &rule.backends {
        mirrors(&b.filters, &mut f);
        f(b);
    }
}

/// Endpoint lists by backend name, as [`Router::with_endpoints`] takes them (merged: the last
/// change of a name wins, which is what patching them one after the other gives).
type Changes<'a> = HashMap<&'a str, (BackendProtocol, &'a [Endpoint])>;

/// Replaces protocol and endpoints of every backend of `rule` with endpoints that `changes`
/// names, exactly as [`Snapshot::set_endpoints`] does; returns whether anything changed.
fn patch_rule(rule: &mut Rule, changes: &Changes<'_>) -> bool {
    fn patch(b: &mut Backend, changes: &Changes<'_>) -> bool {
        let Some((protocol, eps)) = changes.get(b.name.as_str()) else {
            return false;
        };
        match &mut b.target {
            BackendTarget::Endpoints {
                protocol: p,
                endpoints,
                ..
            } if endpoints.as_slice() != *eps || p != protocol => {
                endpoints.clear();
                endpoints.extend_from_slice(eps);
                *p = *protocol;
                true
            }
            _ => false,
        }
    }
    fn mirrors(filters: &mut [Filter], changes: &Changes<'_>) -> bool {
        let mut changed = false;
        for filter in filters {
            if let Filter::RequestMirror(m) = filter {
                changed |= patch(&mut m.backend, changes);
            }
        }
        changed
    }
    let mut changed = mirrors(&mut rule.filters, changes);
    for b in &mut rule.backends {
        changed |= mirrors(&mut b.filters, changes);
        changed |= patch(b, changes);
    }
    changed
}

/// The snapshot of a router: either the compiled one, or a base plus endpoint lists patched in
/// on first use (a 10k-route snapshot takes milliseconds to copy; a router update must not).
#[derive(Debug)]
struct SnapshotCell {
    base: Arc<Snapshot>,
    /// Endpoint lists to patch into `base`, by backend name.
    patch: HashMap<String, (BackendProtocol, Arc<[Endpoint]>)>,
    generation: u64,
    full: OnceLock<Arc<Snapshot>>,
}

impl SnapshotCell {
    fn ready(snapshot: Arc<Snapshot>) -> Self {
        Self {
            generation: snapshot.generation,
            base: snapshot.clone(),
            patch: HashMap::new(),
            full: OnceLock::from(snapshot),
        }
    }

    /// This snapshot with `changes` applied and the generation set, not built yet.
    fn patched(&self, generation: u64, changes: &Changes<'_>) -> Self {
        let (base, mut patch) = match self.full.get() {
            Some(full) => (full.clone(), HashMap::new()),
            None => (self.base.clone(), self.patch.clone()),
        };
        for (name, (protocol, eps)) in changes {
            patch.insert(name.to_string(), (*protocol, Arc::from(*eps)));
        }
        Self {
            base,
            patch,
            generation,
            full: OnceLock::new(),
        }
    }

    fn get(&self) -> &Arc<Snapshot> {
        self.full.get_or_init(|| {
            let mut s = Snapshot::clone(&self.base);
            if !self.patch.is_empty() {
                s.set_endpoints(|n| self.patch.get(n).map(|(p, eps)| (*p, &eps[..])));
            }
            s.generation = self.generation;
            Arc::new(s)
        })
    }
}

impl Router {
    /// Validates and compiles a snapshot.
    pub fn compile(snapshot: Snapshot) -> Result<Self, SnapshotError> {
        validate(&snapshot)?;
        let mut grouped: HashMap<SocketAddr, Vec<(&Gateway, &Listener)>> = HashMap::new();
        for gw in &snapshot.gateways {
            for l in &gw.listeners {
                grouped
                    .entry(SocketAddr::new(l.address, l.port))
                    .or_default()
                    .push((gw, l));
            }
        }
        let mut table = RuleTable::default();
        let mut sockets = HashMap::with_capacity(grouped.len());
        for (addr, listeners) in grouped {
            sockets.insert(addr, PortIndex::build(&listeners, &mut table)?);
        }
        Ok(Self {
            generation: snapshot.generation,
            snapshot: SnapshotCell::ready(Arc::new(snapshot)),
            sockets: Arc::new(sockets),
            rules: table.rules,
            uses: Arc::new(table.uses),
        })
    }

    /// The router of this router's snapshot with the protocol and endpoint list of every
    /// backend named in `changes` replaced (mirror backends included; a name listed twice takes
    /// its last list), numbered `generation`: what [`Router::compile`] of the snapshot patched
    /// with [`Snapshot::set_endpoints`] gives, routing decisions and rules alike.
    ///
    /// Costs a copy of the rule table's pointers plus a copy of each rule using a changed
    /// backend; the index is shared and the snapshot is patched when first asked for. An
    /// endpoint list that does not validate (port 0) is refused with the error a full compile
    /// gives.
    pub fn with_endpoints<'a>(
        &self,
        generation: u64,
        changes: impl IntoIterator<Item = (&'a str, BackendProtocol, &'a [Endpoint])>,
    ) -> Result<Router, SnapshotError> {
        let mut by_name: Changes<'a> = HashMap::new();
        for (name, protocol, eps) in changes {
            by_name.insert(name, (protocol, eps));
        }
        // Names no backend with endpoints has change nothing, in the rules or the snapshot.
        by_name.retain(|name, _| self.uses.contains_key(*name));
        if by_name
            .values()
            .any(|(_, eps)| eps.iter().any(|e| e.port == 0))
        {
            // Rare: let the full path find the first offending backend and word the error.
            let mut s = Snapshot::clone(self.snapshot());
            s.set_endpoints(|n| by_name.get(n).copied());
            s.generation = generation;
            return Router::compile(s);
        }
        let mut rules = self.rules.clone();
        let mut touched: Vec<usize> = by_name
            .keys()
            .filter_map(|n| self.uses.get(*n))
            .flatten()
            .copied()
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let Some(slot) = rules.get_mut(id) else {
                continue;
            };
            let mut rule = CompiledRule::clone(slot);
            if patch_rule(&mut rule.rule, &by_name) {
                *slot = Arc::new(rule);
            }
        }
        Ok(Router {
            generation,
            snapshot: self.snapshot.patched(generation, &by_name),
            sockets: self.sockets.clone(),
            rules,
            uses: self.uses.clone(),
        })
    }

    /// The snapshot this router was compiled from (for a router made by
    /// [`Router::with_endpoints`], the patched one: built on the first call, which then costs a
    /// copy of the snapshot).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        self.snapshot.get()
    }

    /// The snapshot as far as it is already built: [`Router::snapshot`] when that costs
    /// nothing, else the snapshot the endpoint changes apply to, whose Gateways, listeners,
    /// routes, drains and east-west backends are this router's and only backend endpoint
    /// lists and protocols may be older.
    pub fn snapshot_without_endpoints(&self) -> &Snapshot {
        self.snapshot.full.get().unwrap_or(&self.snapshot.base)
    }

    /// The snapshot generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every socket the proxy must listen on, with its protocol.
    pub fn sockets(&self) -> impl Iterator<Item = (SocketAddr, Protocol)> + '_ {
        self.sockets.iter().map(|(a, p)| (*a, p.protocol))
    }

    fn port(&self, local: SocketAddr) -> Option<&PortIndex> {
        self.sockets.get(&local).or_else(|| {
            // A listener on the unspecified address serves every local address of its port.
            let any = match local.ip() {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            self.sockets.get(&SocketAddr::new(any, local.port()))
        })
    }

    /// The certificate to present for a TLS handshake on `local` with this SNI: the one of the
    /// most specific listener matching the SNI, else the first HTTPS listener's.
    pub fn certificate(&self, local: SocketAddr, sni: Option<&str>) -> Option<&Certificate> {
        let port = self.port(local)?;
        let chosen = sni
            .and_then(|s| port.select(&hostname::normalize_host(s)))
            .or_else(|| port.listeners.iter().position(|l| l.tls.is_some()))?;
        port.listeners[chosen]
            .tls
            .as_ref()
            .and_then(|t| t.certificates.first())
    }

    /// Decides which rule serves a request.
    pub fn route(&self, req: &Request<'_>) -> Decision {
        let Some(port) = self.port(req.local) else {
            return Decision::NoListener;
        };
        let host = req.host.map(hostname::normalize_host).unwrap_or_default();
        let by_host = port.select(&host);
        let chosen = match req.sni {
            Some(sni) => {
                let Some(by_sni) = port.select(&hostname::normalize_host(sni)) else {
                    return Decision::NoListener;
                };
                match by_host {
                    Some(h) if h != by_sni => {
                        return Decision::Misdirected {
                            listener: port.listeners[by_sni].info.clone(),
                        };
                    }
                    Some(_) => by_sni,
                    // The Host matches no listener of this port: routing on the SNI's listener
                    // finds no route for it, which is a plain 404.
                    None => {
                        return Decision::NotFound {
                            listener: port.listeners[by_sni].info.clone(),
                        };
                    }
                }
            }
            None => match by_host {
                Some(l) => l,
                None => {
                    return match port.listeners.first() {
                        Some(l) => Decision::NotFound {
                            listener: l.info.clone(),
                        },
                        None => Decision::NoListener,
                    };
                }
            },
        };
        let listener = &port.listeners[chosen];
        let query = Query::parse(req.query);
        match listener.routes.find(&self.rules, &host, req, &query) {
            Some((rule, matched_prefix)) => Decision::Matched(RouteMatch {
                listener: listener.info.clone(),
                rule,
                matched_prefix,
            }),
            None => Decision::NotFound {
                listener: listener.info.clone(),
            },
        }
    }
}

/// All listeners sharing one socket.
#[derive(Debug)]
struct PortIndex {
    protocol: Protocol,
    listeners: Vec<CompiledListener>,
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after `*` (`.example.com`).
    wildcard: HashMap<String, usize>,
    any: Option<usize>,
}

#[derive(Debug)]
struct CompiledListener {
    info: Arc<ListenerInfo>,
    tls: Option<ListenerTls>,
    routes: HostIndex,
}

impl PortIndex {
    fn build(
        listeners: &[(&Gateway, &Listener)],
        table: &mut RuleTable,
    ) -> Result<Self, SnapshotError> {
        let protocol = listeners[0].1.protocol;
        let mut index = PortIndex {
            protocol,
            listeners: Vec::with_capacity(listeners.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        };
        for (i, (gw, l)) in listeners.iter().enumerate() {
            let info = Arc::new(ListenerInfo {
                gateway_namespace: gw.namespace.clone(),
                gateway_name: gw.name.clone(),
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol,
                hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
                label: format!("{}/{}/{}", gw.namespace, gw.name, l.name),
            });
            // Validation already refused two listeners with the same hostname on one socket.
            match info.hostname.as_deref() {
                None => index.any = Some(i),
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => {
                        index.wildcard.insert(suffix.to_string(), i);
                    }
                    None => {
                        index.exact.insert(h.to_string(), i);
                    }
                },
            }
            index.listeners.push(CompiledListener {
                routes: HostIndex::build(&info, &l.routes, table)?,
                tls: l.tls.clone(),
                info,
            });
        }
        Ok(index)
    }

    /// The most specific listener for a (normalised) host.
    fn select(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        if !self.wildcard.is_empty() {
            for suffix in wildcard_suffixes(host) {
                if let Some(&i) = self.wildcard.get(suffix) {
                    return Some(i);
                }
            }
        }
        self.any
    }
}

/// The suffixes of `host` that a wildcard could stand for, longest first: for `a.b.c` these are
/// `.b.c` and `.c`. The apex itself is never produced, so `*.b.c` cannot match `b.c`.
fn wildcard_suffixes(host: &str) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(|&(i, c)| c == '.' && i > 0)
        .map(move |(i, _)| &host[i..])
}

/// Routes of one listener, bucketed by effective hostname.
#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<String, Bucket>,
    wildcard: HashMap<String, Bucket>,
    any: Bucket,
}

impl HostIndex {
    fn build(
        listener: &ListenerInfo,
        routes: &[Arc<Route>],
        table: &mut RuleTable,
    ) -> Result<Self, SnapshotError> {
        let mut staged: HashMap<Option<String>, Vec<Entry>> = HashMap::new();
        for route in routes {
            let hosts: Vec<Option<String>> = if route.hostnames.is_empty() {
                // No route hostnames: the listener's hostname (or none) applies.
                vec![listener.hostname.clone()]
            } else {
                route
                    .hostnames
                    .iter()
                    .filter_map(|h| hostname::intersect(listener.hostname.as_deref(), h))
                    .map(Some)
                    .collect()
            };
            let mut dedup = hosts;
            dedup.sort();
            dedup.dedup();
            for (rule_index, rule) in route.rules.iter().enumerate() {
                let compiled = table.add(route, rule_index, rule);
                let default_match = [Match::default()];
                let matches: &[Match] = if rule.matches.is_empty() {
                    &default_match
                } else {
                    &rule.matches
                };
                for (match_index, m) in matches.iter().enumerate() {
                    let cm = CompiledMatch::compile(m)?;
                    for h in &dedup {
                        staged.entry(h.clone()).or_default().push(Entry {
                            key: PrecedenceKey::new(route, rule_index, match_index, m),
                            matcher: cm.clone(),
                            rule: compiled,
                        });
                    }
                }
            }
        }
        let mut index = HostIndex::default();
        for (host, entries) in staged {
            let bucket = Bucket::build(entries);
            match host {
                None => index.any = bucket,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => {
                        index.wildcard.insert(suffix.to_string(), bucket);
                    }
                    None => {
                        index.exact.insert(h, bucket);
                    }
                },
            }
        }
        Ok(index)
    }

    fn find(
        &self,
        rules: &[Arc<CompiledRule>],
        host: &str,
        req: &Request<'_>,
        query: &Query<'_>,
    ) -> Option<(Arc<CompiledRule>, Option<Arc<str>>)> {
        if let Some(found) = self.exact.get(host).and_then(|b| b.find(rules, req, query)) {
            return Some(found);
        }
        if !self.wildcard.is_empty() {
            for suffix in wildcard_suffixes(host) {
                if let Some(found) = self
                    .wildcard
                    .get(suffix)
                    .and_then(|b| b.find(rules, req, query))
                {
                    return Some(found);
                }
            }
        }
        self.any.find(rules, req, query)
    }
}

/// Sort key of one (route, rule, match); smaller sorts first and wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PrecedenceKey {
    specificity: Specific,
    created_at: i64,
    namespace: String,
    name: String,
    rule: usize,
    matcher: usize,
}

/// How specific a match is, by the rules of its route kind (smaller wins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Specific {
    /// HTTPRoute: path kind (exact, regex, prefix), path length, method, headers, query.
    Http {
        path_kind: u8,
        path_len: Reverse<usize>,
        no_method: bool,
        headers: Reverse<usize>,
        query: Reverse<usize>,
    },
    /// GRPCRoute: service characters, method characters, exact before regex, headers.
    Grpc {
        service: Reverse<usize>,
        method: Reverse<usize>,
        regex: bool,
        headers: Reverse<usize>,
    },
}

impl Specific {
    fn of(m: &Match) -> Self {
        if let Some(g) = &m.grpc {
            let chars = |p: &Option<String>| p.as_deref().map_or(0, |s| s.chars().count());
            return Specific::Grpc {
                service: Reverse(chars(&g.service)),
                method: Reverse(chars(&g.method)),
                regex: g.kind == ValueMatchType::RegularExpression,
                headers: Reverse(m.headers.len()),
            };
        }
        let (path_kind, path_len) = match &m.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::RegularExpression(p) => (1, p.len()),
            PathMatch::PathPrefix(p) => (2, normalize_prefix(p).len()),
        };
        Specific::Http {
            path_kind,
            path_len: Reverse(path_len),
            no_method: m.method.is_none(),
            headers: Reverse(m.headers.len()),
            query: Reverse(m.query_params.len()),
        }
    }
}

impl PrecedenceKey {
    fn new(route: &Route, rule: usize, matcher: usize, m: &Match) -> Self {
        Self {
            specificity: Specific::of(m),
            created_at: route.created_at,
            namespace: route.namespace.clone(),
            name: route.name.clone(),
            rule,
            matcher,
        }
    }
}

/// `PathPrefix` values ignore a trailing `/` (`/abc/` ≡ `/abc`); `/` stays `/`.
fn normalize_prefix(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

#[derive(Debug)]
struct Entry {
    key: PrecedenceKey,
    matcher: CompiledMatch,
    /// Position in the router's rule table.
    rule: usize,
}

#[derive(Debug, Clone)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn compile(kind: ValueMatchType, value: &str) -> Result<Self, SnapshotError> {
        Ok(match kind {
            ValueMatchType::Exact => ValueMatcher::Exact(value.to_string()),
            ValueMatchType::RegularExpression => ValueMatcher::Regex(anchored(value)?),
        })
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => e == v,
            ValueMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// Regex matches must cover the whole value.
fn anchored(pattern: &str) -> Result<Regex, SnapshotError> {
    full_match_regex(pattern).map_err(|reason| SnapshotError::InvalidRegex {
        pattern: pattern.to_string(),
        reason,
    })
}

/// Compiles `pattern` so that it only matches a whole value.
///
/// The pattern is first compiled on its own: wrapped in `^(?:…)$` straight away, an unbalanced
/// pattern such as `/a)|(/b` would close the group early and compile into `^(?:/a)|(/b)$`, whose
/// alternatives are no longer anchored at both ends.
pub(crate) fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| e.to_string())?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())
}

#[derive(Debug, Clone)]
struct CompiledMatch {
    exact: Option<String>,
    path_regex: Option<Regex>,
    prefix: Option<Arc<str>>,
    method: Option<String>,
    headers: Vec<(String, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

impl CompiledMatch {
    fn compile(m: &Match) -> Result<Self, SnapshotError> {
        let mut headers: Vec<(String, ValueMatcher)> = Vec::new();
        for h in &m.headers {
            let name = h.name.to_ascii_lowercase();
            // Duplicate names in one match: the first one wins.
            if headers.iter().any(|(n, _)| *n == name) {
                continue;
            }
            headers.push((name, ValueMatcher::compile(h.kind, &h.value)?));
        }
        let mut query: Vec<(String, ValueMatcher)> = Vec::new();
        for q in &m.query_params {
            if query.iter().any(|(n, _)| *n == q.name) {
                continue;
            }
            query.push((q.name.clone(), ValueMatcher::compile(q.kind, &q.value)?));
        }
        Ok(Self {
            exact: match &m.path {
                PathMatch::Exact(p) => Some(p.clone()),
                _ => None,
            },
            path_regex: match &m.path {
                PathMatch::RegularExpression(r) => Some(anchored(r)?),
                _ => None,
            },
            prefix: match &m.path {
                PathMatch::PathPrefix(p) => Some(Arc::from(normalize_prefix(p))),
                _ => None,
            },
            method: m.method.clone(),
            headers,
            query,
        })
    }

    /// Everything but the path (exact paths and prefixes are checked by the bucket index).
    fn matches_rest(&self, req: &Request<'_>, query: &Query<'_>) -> bool {
        if let Some(r) = &self.path_regex
            && !r.is_match(req.path)
        {
            return false;
        }
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        for (name, matcher) in &self.headers {
            match req.headers.header(name) {
                Some(v) if matcher.matches(&v) => {}
                _ => return false,
            }
        }
        for (name, matcher) in &self.query {
            match query.get(name) {
                Some(v) if matcher.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Entries of one hostname bucket, sorted by precedence, with a path index.
#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<Entry>,
    exact: HashMap<String, Vec<u32>>,
    prefixes: Trie,
    regexes: Vec<u32>,
}

#[derive(Debug, Default)]
struct Trie {
    here: Vec<u32>,
    children: HashMap<String, Trie>,
}

impl Bucket {
    fn build(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut b = Bucket::default();
        for (i, e) in entries.iter().enumerate() {
            let i = i as u32;
            if let Some(prefix) = &e.matcher.prefix {
                let mut node = &mut b.prefixes;
                for seg in path_elements(prefix) {
                    node = node.children.entry(seg.to_string()).or_default();
                }
                node.here.push(i);
            } else if let Some(path) = &e.matcher.exact {
                b.exact.entry(path.clone()).or_default().push(i);
            } else {
                b.regexes.push(i);
            }
        }
        b.entries = entries;
        b
    }

    fn find(
        &self,
        rules: &[Arc<CompiledRule>],
        req: &Request<'_>,
        query: &Query<'_>,
    ) -> Option<(Arc<CompiledRule>, Option<Arc<str>>)> {
        if self.entries.is_empty() {
            return None;
        }
        // Inline for the usual handful of candidate rules: no heap per request.
        let mut candidates: smallvec::SmallVec<[u32; 16]> = smallvec::SmallVec::new();
        if let Some(ids) = self.exact.get(req.path) {
            candidates.extend_from_slice(ids);
        }
        candidates.extend_from_slice(&self.regexes);
        let mut node = &self.prefixes;
        candidates.extend_from_slice(&node.here);
        for seg in path_elements(req.path) {
            match node.children.get(seg) {
                Some(child) => {
                    node = child;
                    candidates.extend_from_slice(&node.here);
                }
                None => break,
            }
        }
        candidates.sort_unstable();
        candidates.into_iter().find_map(|i| {
            let e = &self.entries[i as usize];
            if !e.matcher.matches_rest(req, query) {
                return None;
            }
            let rule = rules.get(e.rule)?.clone();
            Some((rule, e.matcher.prefix.clone()))
        })
    }
}

/// The elements of a path after its leading `/`, compared one by one for `PathPrefix`.
///
/// Empty elements are kept (`/a//b` is `a`, ``, `b`, so it is not under the prefix `/a/b`), except
/// for a trailing one: `/a/` is under `/a`. The root `/` has no elements, so a `/` prefix sits at
/// the trie root and covers every path. A path that does not start with `/` (`*`) has no elements.
fn path_elements(path: &str) -> impl Iterator<Item = &str> {
    let rest = path
        .strip_prefix('/')
        .map(|r| r.strip_suffix('/').unwrap_or(r))
        .unwrap_or("");
    rest.split('/').filter(move |_| !rest.is_empty())
}

/// Lazily decoded query parameters; the first occurrence of a name wins.
struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    fn parse(raw: Option<&'a str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Self { pairs }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Decodes `%XX` escapes; invalid escapes and invalid UTF-8 are kept as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(s),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Specificity of a listener hostname; re-exported for status computation.
pub fn listener_specificity(hostname: Option<&str>) -> Specificity {
    Specificity::of(hostname)
}
