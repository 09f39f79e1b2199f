//! Guards the router's index (listener maps, hostname buckets, exact-path map, segment trie)
//! against a naive reference written from the spec text: pick the listener by scanning every
//! listener of the socket, then scan every (route, hostname, rule, match) of that listener and
//! keep the smallest precedence key that matches. Snapshots and requests are drawn from small
//! vocabularies by a fixed-seed LCG, so the run is deterministic and bounded.
#![allow(clippy::unwrap_used)]

mod common;

use std::cmp::Reverse;
use std::collections::HashMap;

use common::*;
use meridian_model::snapshot::*;
use meridian_model::{Decision, Router};
use regex::Regex;

const SNAPSHOTS: usize = 400;
const REQUESTS_PER_SNAPSHOT: usize = 150;

/// Knuth's MMIX LCG; the high bits are used because the low ones have short periods.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const LISTENER_HOSTS: &[Option<&str>] = &[
    None,
    Some("a.com"),
    Some("*.a.com"),
    Some("b.a.com"),
    Some("*.b.a.com"),
    Some("x.com"),
    Some("*.com"),
];
const ROUTE_HOSTS: &[&str] = &[
    "a.com",
    "*.a.com",
    "b.a.com",
    "*.b.a.com",
    "c.b.a.com",
    "x.com",
    "*.com",
    "y.x.com",
];
const PREFIXES: &[&str] = &["/", "/a", "/a/", "/a/b", "/b", "/ab", "/a/b/c", "/a//b"];
const EXACTS: &[&str] = &["/", "/a", "/a/", "/a/b", "/b", "/a/b/c"];
const REGEXES: &[&str] = &["/a/.*", "/[ab]+", "/a/b", ".*", "/b|/a/b", "/a/?"];
const HEADER_NAMES: &[&str] = &["h1", "H2"];
const QUERY_NAMES: &[&str] = &["q1", "Q1"];
const VALUES: &[&str] = &["x", "y"];
const METHODS: &[&str] = &["GET", "POST"];

const REQ_HOSTS: &[Option<&str>] = &[
    Some("a.com"),
    Some("b.a.com"),
    Some("c.b.a.com"),
    Some("d.c.b.a.com"),
    Some("x.com"),
    Some("y.x.com"),
    Some("z.com"),
    Some("com"),
    Some("B.A.com:8080"),
    Some("a.com."),
    None,
];
const REQ_PATHS: &[&str] = &[
    "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a/bc", "/ab", "/b", "/b/a", "/a//b", "//a",
    "/c", "/a/b/c/d",
];
const REQ_METHODS: &[&str] = &["GET", "POST", "HEAD"];

fn random_match(rng: &mut Lcg) -> Match {
    let mut mt = m();
    match rng.below(4) {
        0 => mt = mt.exact(rng.pick(EXACTS)),
        1 => mt = mt.regex(rng.pick(REGEXES)),
        _ => {
            if rng.chance(80) {
                mt = mt.prefix(rng.pick(PREFIXES));
            }
        }
    }
    for name in HEADER_NAMES {
        if rng.chance(30) {
            mt = if rng.chance(25) {
                mt.header_re(name, "x|y")
            } else {
                mt.header(name, rng.pick(VALUES))
            };
        }
    }
    for name in QUERY_NAMES {
        if rng.chance(25) {
            mt = if rng.chance(25) {
                mt.query_re(name, "[xy]")
            } else {
                mt.query(name, rng.pick(VALUES))
            };
        }
    }
    if rng.chance(30) {
        mt = mt.method(rng.pick(METHODS));
    }
    mt
}

fn random_route(rng: &mut Lcg, id: usize) -> Route {
    let ns = if rng.chance(50) { "n1" } else { "n2" };
    // Names are drawn so that namespace/name order differs from snapshot order.
    let mut r = route(ns, &format!("r{}", (id * 7 + 3) % 11)).created(rng.below(3) as i64);
    for _ in 0..rng.below(3) {
        let h = rng.pick(ROUTE_HOSTS);
        if !r.hostnames.iter().any(|x| x == h) {
            r = r.host(h);
        }
    }
    for i in 0..1 + rng.below(3) {
        let mut rl = rule().to(&format!("b{id}-{i}"));
        for _ in 0..rng.below(3) {
            rl = rl.when(random_match(rng));
        }
        r = r.rule(rl);
    }
    r
}

fn random_snapshot(rng: &mut Lcg, https: bool) -> Snapshot {
    let mut gw = gateway("infra", "gw");
    let mut used: Vec<Option<&str>> = Vec::new();
    let mut route_id = 0;
    for i in 0..1 + rng.below(4) {
        let host = rng.pick(LISTENER_HOSTS);
        if used.contains(&host) {
            continue;
        }
        used.push(host);
        let mut l = listener(&format!("l{i}"), if https { 443 } else { 80 });
        if https {
            l = l.https(&format!("l{i}"));
        }
        if let Some(h) = host {
            l = l.host(h);
        }
        for _ in 0..rng.below(5) {
            l = l.route(random_route(rng, route_id));
            route_id += 1;
        }
        gw = gw.listener(l);
    }
    snapshot(vec![gw])
}

fn random_request(rng: &mut Lcg, https: bool) -> Req {
    let path = rng.pick(REQ_PATHS);
    let mut r = req("", path).method(rng.pick(REQ_METHODS));
    r.host = rng.pick(REQ_HOSTS).map(str::to_string);
    if https {
        r = r.port(443);
        // Clients mostly send the Host they resolved as SNI; sometimes another name or none.
        let sni = if rng.chance(60) {
            r.host.clone()
        } else {
            rng.pick(REQ_HOSTS).map(str::to_string)
        };
        if let Some(sni) = sni {
            r = r.sni(&normalize(&sni));
        }
    }
    for name in ["h1", "H1", "h2", "H2", "h3"] {
        if rng.chance(20) {
            r = r.header(name, rng.pick(VALUES));
        }
    }
    let mut pairs = Vec::new();
    for _ in 0..rng.below(4) {
        let name = rng.pick(&["q1", "Q1", "q2"][..]);
        pairs.push(format!("{name}={}", rng.pick(VALUES)));
    }
    if !pairs.is_empty() {
        r.query = Some(pairs.join("&"));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The reference, written from the spec without looking at the index.

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NoListener,
    NotFound(String),
    Misdirected(String),
    Matched {
        listener: String,
        route: String,
        rule: usize,
        prefix: Option<String>,
    },
}

fn normalize(host: &str) -> String {
    let h = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a hostname pattern covers a concrete host; `*.` covers one or more labels.
fn covers(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(base) => host.ends_with(&format!(".{base}")),
        None => pattern == host,
    }
}

/// Listener rank for a host: higher is more specific; `None` when the listener does not accept it.
fn listener_rank(hostname: Option<&str>, host: &str) -> Option<(u8, usize)> {
    match hostname {
        None => Some((0, 0)),
        Some(h) if !covers(h, host) => None,
        Some(h) if h.starts_with('*') => Some((1, h.len())),
        Some(_) => Some((2, 0)),
    }
}

fn select(listeners: &[&Listener], host: &str) -> Option<usize> {
    listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| listener_rank(l.hostname.as_deref(), host).map(|r| (r, i)))
        .max_by_key(|(r, _)| *r)
        .map(|(_, i)| i)
}

/// The effective hostname of a route hostname on a listener (the narrower of the two).
fn effective(listener: Option<&str>, route: &str) -> Option<String> {
    let route = route.to_ascii_lowercase();
    let Some(l) = listener.map(str::to_ascii_lowercase) else {
        return Some(route);
    };
    match (l.strip_prefix("*."), route.strip_prefix("*.")) {
        (None, None) => (l == route).then_some(l),
        (None, Some(_)) => covers(&route, &l).then_some(l),
        (Some(_), None) => covers(&l, &route).then_some(route),
        (Some(lb), Some(rb)) => {
            if lb == rb || rb.ends_with(&format!(".{lb}")) {
                Some(route)
            } else if lb.ends_with(&format!(".{rb}")) {
                Some(l)
            } else {
                None
            }
        }
    }
}

/// Rank of an effective route hostname for the request host: exact, then longer wildcards, then
/// none. `None` when it does not cover the host.
fn host_rank(effective: Option<&str>, host: &str) -> Option<(u8, Reverse<usize>)> {
    match effective {
        None => Some((2, Reverse(0))),
        Some(h) if !covers(h, host) => None,
        Some(h) if h.starts_with('*') => Some((1, Reverse(h.len()))),
        Some(_) => Some((0, Reverse(0))),
    }
}

fn normalized_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

struct Reference {
    regexes: HashMap<String, Regex>,
}

impl Reference {
    fn new() -> Self {
        let mut regexes = HashMap::new();
        for p in REGEXES.iter().chain(&["x|y", "[xy]"]) {
            regexes.insert(p.to_string(), Regex::new(&format!("^(?:{p})$")).unwrap());
        }
        Self { regexes }
    }

    fn value_ok(&self, kind: ValueMatchType, want: &str, got: Option<&str>) -> bool {
        match (kind, got) {
            (_, None) => false,
            (ValueMatchType::Exact, Some(g)) => g == want,
            (ValueMatchType::RegularExpression, Some(g)) => self.regexes[want].is_match(g),
        }
    }

    fn matches(&self, mt: &Match, r: &Req) -> bool {
        let path_ok = match &mt.path {
            PathMatch::Exact(p) => r.path == *p,
            PathMatch::RegularExpression(p) => self.regexes[p].is_match(&r.path),
            PathMatch::PathPrefix(p) => {
                let p = normalized_prefix(p);
                p == "/" || r.path == p || r.path.starts_with(&format!("{p}/"))
            }
        };
        let method_ok = mt.method.as_deref().is_none_or(|want| want == r.method);
        let headers_ok = mt.headers.iter().all(|h| {
            let vals: Vec<&str> = r
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(&h.name))
                .map(|(_, v)| v.as_str())
                .collect();
            let joined = (!vals.is_empty()).then(|| vals.join(","));
            self.value_ok(h.kind, &h.value, joined.as_deref())
        });
        let query_ok = mt.query_params.iter().all(|q| {
            let first = r
                .query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == q.name).then_some(v)
                });
            self.value_ok(q.kind, &q.value, first)
        });
        path_ok && method_ok && headers_ok && query_ok
    }

    fn route(&self, snap: &Snapshot, r: &Req) -> Outcome {
        let listeners: Vec<&Listener> = snap
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .filter(|l| l.address == r.local.ip() && l.port == r.local.port())
            .collect();
        if listeners.is_empty() {
            return Outcome::NoListener;
        }
        let host = normalize(r.host.as_deref().unwrap_or(""));
        let by_host = select(&listeners, &host);
        let chosen = match &r.sni {
            Some(sni) => {
                let Some(by_sni) = select(&listeners, &normalize(sni)) else {
                    return Outcome::NoListener;
                };
                match by_host {
                    Some(h) if h == by_sni => by_sni,
                    Some(_) => return Outcome::Misdirected(listeners[by_sni].name.clone()),
                    None => return Outcome::NotFound(listeners[by_sni].name.clone()),
                }
            }
            None => match by_host {
                Some(h) => h,
                None => return Outcome::NotFound(listeners[0].name.clone()),
            },
        };
        let l = listeners[chosen];
        type Key = (
            (u8, Reverse<usize>),
            u8,
            Reverse<usize>,
            bool,
            Reverse<usize>,
            Reverse<usize>,
            i64,
            String,
            String,
            usize,
            usize,
        );
        let mut best: Option<(Key, Outcome)> = None;
        for rt in &l.routes {
            let hosts: Vec<Option<String>> = if rt.hostnames.is_empty() {
                vec![l.hostname.as_ref().map(|h| h.to_ascii_lowercase())]
            } else {
                rt.hostnames
                    .iter()
                    .filter_map(|h| effective(l.hostname.as_deref(), h))
                    .map(Some)
                    .collect()
            };
            for eh in &hosts {
                let Some(hr) = host_rank(eh.as_deref(), &host) else {
                    continue;
                };
                for (ri, rl) in rt.rules.iter().enumerate() {
                    let default = [m()];
                    let ms = if rl.matches.is_empty() {
                        &default[..]
                    } else {
                        &rl.matches[..]
                    };
                    for (mi, mt) in ms.iter().enumerate() {
                        if !self.matches(mt, r) {
                            continue;
                        }
                        let (kind, len, prefix) = match &mt.path {
                            PathMatch::Exact(p) => (0, p.len(), None),
                            PathMatch::RegularExpression(p) => (1, p.len(), None),
                            PathMatch::PathPrefix(p) => {
                                let n = normalized_prefix(p);
                                (2, n.len(), Some(n))
                            }
                        };
                        let key: Key = (
                            hr,
                            kind,
                            Reverse(len),
                            mt.method.is_none(),
                            Reverse(mt.headers.len()),
                            Reverse(mt.query_params.len()),
                            rt.created_at,
                            rt.namespace.clone(),
                            rt.name.clone(),
                            ri,
                            mi,
                        );
                        if best.as_ref().is_none_or(|(k, _)| key < *k) {
                            let out = Outcome::Matched {
                                listener: l.name.clone(),
                                route: format!("{}/{}", rt.namespace, rt.name),
                                rule: ri,
                                prefix,
                            };
                            best = Some((key, out));
                        }
                    }
                }
            }
        }
        best.map(|(_, o)| o)
            .unwrap_or_else(|| Outcome::NotFound(l.name.clone()))
    }
}

fn indexed(router: &Router, r: &Req) -> Outcome {
    match decide(router, r) {
        Decision::NoListener => Outcome::NoListener,
        Decision::NotFound { listener } => Outcome::NotFound(listener.name.clone()),
        Decision::Misdirected { listener } => Outcome::Misdirected(listener.name.clone()),
        Decision::Matched(mt) => Outcome::Matched {
            listener: mt.listener.name.clone(),
            route: format!("{}/{}", mt.rule.route_namespace, mt.rule.route_name),
            rule: mt.rule.index,
            prefix: mt.matched_prefix.as_deref().map(str::to_string),
        },
    }
}

fn run(seed: u64, https: bool) {
    let reference = Reference::new();
    let mut rng = Lcg(seed);
    let mut matched_count = 0;
    for s in 0..SNAPSHOTS {
        let snap = random_snapshot(&mut rng, https);
        let router = Router::compile(snap.clone())
            .unwrap_or_else(|e| panic!("snapshot {s} refused: {e}\n{snap:#?}"));
        for _ in 0..REQUESTS_PER_SNAPSHOT {
            let r = random_request(&mut rng, https);
            let want = reference.route(&snap, &r);
            let got = indexed(&router, &r);
            assert_eq!(
                got,
                want,
                "snapshot {s} request {r:?}\n{}",
                serde_json::to_string_pretty(&snap).unwrap()
            );
            matched_count += usize::from(matches!(want, Outcome::Matched { .. }));
        }
    }
    // The vocabularies must produce a real mix of matches and misses, or the test proves little.
    let total = SNAPSHOTS * REQUESTS_PER_SNAPSHOT;
    assert!(
        matched_count > total / 5 && matched_count < total * 4 / 5,
        "{matched_count} of {total} requests matched"
    );
}

#[test]
fn index_agrees_with_naive_scan_on_http_listeners() {
    run(0x5eed_0001, false);
}

#[test]
fn index_agrees_with_naive_scan_on_https_listeners_with_sni() {
    run(0x5eed_0002, true);
}
