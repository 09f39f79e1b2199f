//! Builders shared by the conformance tables.
//!
//! Every builder returns the real snapshot type, so a table reads like the Gateway API catalogue
//! (`route("infra", "r").host("a.com").rule(rule().path("/v2").to("v2"))`) and nothing is hidden
//! behind a test-only model. [`send`] reduces a [`Decision`] to a short string (`"v1"`, `"404"`,
//! `"421"`, …) so expectations are one column of a table.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use meridian_model::router::{Decision, HeaderSource, Request, RouteMatch, Router};
use meridian_model::snapshot::*;

/// The address every single-Gateway test binds.
pub const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// A PEM-looking string; the router never parses certificates.
pub const DUMMY_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n";
/// A PEM-looking key.
pub const DUMMY_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBdummy\n-----END PRIVATE KEY-----\n";

pub fn snapshot(gateways: Vec<Gateway>) -> Snapshot {
    Snapshot {
        schema: SNAPSHOT_SCHEMA.to_string(),
        generation: 1,
        gateways,
        drains: Vec::new(),
        east_west: Vec::new(),
    }
}

pub fn compile(gateways: Vec<Gateway>) -> Router {
    Router::compile(snapshot(gateways)).unwrap()
}

pub fn gateway(ns: &str, name: &str) -> Gateway {
    Gateway {
        namespace: ns.to_string(),
        name: name.to_string(),
        listeners: Vec::new(),
        served_by_header: false,
    }
}

pub trait GatewayExt {
    fn listener(self, l: Listener) -> Self;
}

impl GatewayExt for Gateway {
    fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }
}

/// An HTTP listener on [`ADDR`].
pub fn listener(name: &str, port: u16) -> Listener {
    Listener {
        name: name.to_string(),
        address: ADDR,
        port,
        protocol: Protocol::Http,
        hostname: None,
        tls: None,
        routes: Vec::new(),
    }
}

pub trait ListenerExt {
    fn host(self, h: &str) -> Self;
    fn addr(self, a: &str) -> Self;
    /// Turns the listener into HTTPS with one dummy certificate whose PEM mentions `tag`.
    fn https(self, tag: &str) -> Self;
    fn route(self, r: Route) -> Self;
}

impl ListenerExt for Listener {
    fn host(mut self, h: &str) -> Self {
        self.hostname = Some(h.to_string());
        self
    }
    fn addr(mut self, a: &str) -> Self {
        self.address = a.parse().unwrap();
        self
    }
    fn https(mut self, tag: &str) -> Self {
        self.protocol = Protocol::Https;
        self.tls = Some(ListenerTls {
            certificates: vec![Certificate {
                cert_pem: format!("{DUMMY_CERT}{tag}"),
                key_pem: DUMMY_KEY.to_string(),
            }],
        });
        self
    }
    fn route(mut self, r: Route) -> Self {
        self.routes.push(r.into());
        self
    }
}

pub fn route(ns: &str, name: &str) -> Route {
    Route {
        namespace: ns.to_string(),
        name: name.to_string(),
        kind: Default::default(),
        created_at: 0,
        hostnames: Vec::new(),
        rules: Vec::new(),
    }
}

pub trait RouteExt {
    fn host(self, h: &str) -> Self;
    fn hosts(self, hs: &[&str]) -> Self;
    fn created(self, t: i64) -> Self;
    fn rule(self, r: Rule) -> Self;
}

impl RouteExt for Route {
    fn host(mut self, h: &str) -> Self {
        self.hostnames.push(h.to_string());
        self
    }
    fn hosts(mut self, hs: &[&str]) -> Self {
        self.hostnames.extend(hs.iter().map(|h| h.to_string()));
        self
    }
    fn created(mut self, t: i64) -> Self {
        self.created_at = t;
        self
    }
    fn rule(mut self, r: Rule) -> Self {
        self.rules.push(r);
        self
    }
}

pub fn rule() -> Rule {
    Rule::default()
}

/// A valid backend named like a conformance Service, with one endpoint.
pub fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        name: name.to_string(),
        weight,
        filters: Vec::new(),
        target: BackendTarget::Endpoints {
            protocol: BackendProtocol::Http1,
            endpoints: vec![Endpoint {
                address: "10.1.0.1".parse().unwrap(),
                port: 8080,
                cluster: String::new(),
                region: String::new(),
                zone: String::new(),
                ready: true,
                east_west: false,
            }],
            failover: None,
        },
        tls: None,
    }
}

pub trait RuleExt {
    /// Adds a match (matches are ORed).
    fn when(self, m: Match) -> Self;
    /// Shorthand for `when(m().prefix(p))`.
    fn path(self, p: &str) -> Self;
    /// Adds a backend of weight 1.
    fn to(self, b: &str) -> Self;
    fn weighted(self, b: &str, w: u32) -> Self;
    fn filter(self, f: Filter) -> Self;
    fn backend(self, b: Backend) -> Self;
}

impl RuleExt for Rule {
    fn when(mut self, m: Match) -> Self {
        self.matches.push(m);
        self
    }
    fn path(self, p: &str) -> Self {
        self.when(m().prefix(p))
    }
    fn to(self, b: &str) -> Self {
        self.weighted(b, 1)
    }
    fn weighted(mut self, b: &str, w: u32) -> Self {
        self.backends.push(backend(b, w));
        self
    }
    fn filter(mut self, f: Filter) -> Self {
        self.filters.push(f);
        self
    }
    fn backend(mut self, b: Backend) -> Self {
        self.backends.push(b);
        self
    }
}

/// A match with the default `PathPrefix /`.
pub fn m() -> Match {
    Match::default()
}

pub trait MatchExt {
    fn prefix(self, p: &str) -> Self;
    fn exact(self, p: &str) -> Self;
    fn regex(self, p: &str) -> Self;
    fn header(self, n: &str, v: &str) -> Self;
    fn header_re(self, n: &str, v: &str) -> Self;
    fn query(self, n: &str, v: &str) -> Self;
    fn query_re(self, n: &str, v: &str) -> Self;
    fn method(self, meth: &str) -> Self;
}

impl MatchExt for Match {
    fn prefix(mut self, p: &str) -> Self {
        self.path = PathMatch::PathPrefix(p.to_string());
        self
    }
    fn exact(mut self, p: &str) -> Self {
        self.path = PathMatch::Exact(p.to_string());
        self
    }
    fn regex(mut self, p: &str) -> Self {
        self.path = PathMatch::RegularExpression(p.to_string());
        self
    }
    fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push(HeaderMatch {
            name: n.to_string(),
            value: v.to_string(),
            kind: ValueMatchType::Exact,
        });
        self
    }
    fn header_re(mut self, n: &str, v: &str) -> Self {
        self.headers.push(HeaderMatch {
            name: n.to_string(),
            value: v.to_string(),
            kind: ValueMatchType::RegularExpression,
        });
        self
    }
    fn query(mut self, n: &str, v: &str) -> Self {
        self.query_params.push(QueryParamMatch {
            name: n.to_string(),
            value: v.to_string(),
            kind: ValueMatchType::Exact,
        });
        self
    }
    fn query_re(mut self, n: &str, v: &str) -> Self {
        self.query_params.push(QueryParamMatch {
            name: n.to_string(),
            value: v.to_string(),
            kind: ValueMatchType::RegularExpression,
        });
        self
    }
    fn method(mut self, meth: &str) -> Self {
        self.method = Some(meth.to_string());
        self
    }
}

/// An owned request description; [`Req::with`] lends it to the router as a [`Request`].
#[derive(Clone, Debug)]
pub struct Req {
    pub local: SocketAddr,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// `GET` on `ADDR:80` with this Host; `path` may carry `?query`.
pub fn req(host: &str, path_and_query: &str) -> Req {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_and_query.to_string(), None),
    };
    Req {
        local: SocketAddr::new(ADDR, 80),
        sni: None,
        host: Some(host.to_string()),
        method: "GET".to_string(),
        path,
        query,
        headers: Vec::new(),
    }
}

impl Req {
    pub fn method(mut self, meth: &str) -> Self {
        self.method = meth.to_string();
        self
    }
    pub fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.to_string(), v.to_string()));
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.local.set_port(p);
        self
    }
    pub fn on(mut self, addr: &str) -> Self {
        self.local.set_ip(addr.parse().unwrap());
        self
    }
    pub fn sni(mut self, s: &str) -> Self {
        self.sni = Some(s.to_string());
        self
    }
    pub fn no_host(mut self) -> Self {
        self.host = None;
        self
    }

    /// Runs `f` with a borrowed [`Request`] view of this description.
    pub fn with<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let pairs: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let slice: &[(&str, &str)] = &pairs;
        let headers: &dyn HeaderSource = &slice;
        let request = Request {
            local: self.local,
            sni: self.sni.as_deref(),
            host: self.host.as_deref(),
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers,
        };
        f(&request)
    }
}

/// Routes a request through the compiled router.
pub fn decide(router: &Router, r: &Req) -> Decision {
    r.with(|request| router.route(request))
}

/// Routes and returns the match, panicking with the decision otherwise.
pub fn matched(router: &Router, r: &Req) -> RouteMatch {
    match decide(router, r) {
        Decision::Matched(m) => m,
        other => panic!("{r:?}: expected a match, got {other:?}"),
    }
}

/// The decision as a table cell: the single backend's name for a match (`"v1"`), `"rule
/// ns/name#i"` for a match whose rule has zero or several backends, `"404"`, `"421"` or
/// `"no-listener"`.
pub fn outcome(d: &Decision) -> String {
    match d {
        Decision::Matched(m) => match m.rule.rule.backends.as_slice() {
            [one] => one.name.clone(),
            _ => format!(
                "rule {}/{}#{}",
                m.rule.route_namespace, m.rule.route_name, m.rule.index
            ),
        },
        Decision::NotFound { .. } => "404".to_string(),
        Decision::Misdirected { .. } => "421".to_string(),
        Decision::NoListener => "no-listener".to_string(),
    }
}

pub fn send(router: &Router, r: &Req) -> String {
    outcome(&decide(router, r))
}

/// Checks every `(request, expected outcome)` row and reports all failing rows at once.
pub fn check(router: &Router, rows: &[(Req, &str)]) {
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(r, want)| {
            let got = send(router, r);
            (got != *want).then(|| {
                format!(
                    "{} {:?} {}{} sni={:?} headers={:?} @{}: want {want}, got {got}",
                    r.method,
                    r.host,
                    r.path,
                    r.query
                        .as_deref()
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default(),
                    r.sni,
                    r.headers,
                    r.local
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
