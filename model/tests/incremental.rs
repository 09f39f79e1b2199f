//! `Router::with_endpoints` against `Router::compile` of the patched snapshot: random snapshots,
//! random chains of endpoint changes, every routing decision and rule compared.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use meridian_model::router::{Decision, Request};
use meridian_model::snapshot::*;
use meridian_model::{Router, Snapshot};

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMES: [&str; 5] = ["ns/a:80", "ns/b:80", "ns/c:80", "ns/d:80", "ns/e:80"];
const HOSTS: [&str; 3] = ["a.example.com", "b.example.com", "x.wild.example.com"];
const PATHS: [&str; 5] = ["/", "/x", "/x/y", "/z", "/x/y/z"];

fn endpoints(rng: &mut Rng, allow_port_zero: bool) -> Vec<Endpoint> {
    (0..rng.below(4))
        .map(|_| Endpoint {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, rng.below(3) as u8, rng.below(4) as u8)),
            port: if allow_port_zero && rng.chance(3) {
                0
            } else {
                1 + rng.below(3) as u16
            },
            cluster: rng.pick(&["c1", "c2"]).to_string(),
            region: rng.pick(&["r1", "r2"]).to_string(),
            zone: rng.pick(&["z1", "z2", ""]).to_string(),
            ready: rng.chance(80),
            east_west: rng.chance(10),
        })
        .collect()
}

fn backend(rng: &mut Rng, mirrors: bool) -> Backend {
    let name = rng.pick(&NAMES).to_string();
    let target = if rng.chance(15) {
        BackendTarget::Invalid {
            reason: "BackendNotFound".into(),
        }
    } else {
        BackendTarget::Endpoints {
            protocol: if rng.chance(20) {
                BackendProtocol::H2c
            } else {
                BackendProtocol::Http1
            },
            endpoints: endpoints(rng, false),
            failover: rng.chance(30).then(|| FailoverPolicy {
                region_order: vec!["r2".into()],
                ..FailoverPolicy::default()
            }),
        }
    };
    let filters = if mirrors && rng.chance(25) {
        vec![mirror(rng)]
    } else {
        Vec::new()
    };
    Backend {
        name,
        weight: rng.below(4) as u32,
        filters,
        target,
        tls: None,
    }
}

fn mirror(rng: &mut Rng) -> Filter {
    Filter::RequestMirror(RequestMirror {
        backend: backend(rng, false),
        percent: 50.0,
    })
}

fn rule(rng: &mut Rng) -> Rule {
    let matches = (0..rng.below(3))
        .map(|_| {
            let p = rng.pick(&PATHS).to_string();
            Match {
                path: if rng.chance(30) {
                    PathMatch::Exact(p)
                } else {
                    PathMatch::PathPrefix(p)
                },
                headers: if rng.chance(30) {
                    vec![HeaderMatch {
                        name: "x-v".into(),
                        value: "1".into(),
                        kind: ValueMatchType::Exact,
                    }]
                } else {
                    Vec::new()
                },
                ..Match::default()
            }
        })
        .collect();
    Rule {
        matches,
        filters: if rng.chance(20) {
            vec![mirror(rng)]
        } else {
            Vec::new()
        },
        backends: (0..rng.below(4)).map(|_| backend(rng, true)).collect(),
        ..Rule::default()
    }
}

fn listener(rng: &mut Rng, name: &str, port: u16, hostname: Option<&str>) -> Listener {
    let routes = (0..1 + rng.below(4))
        .map(|i| Route {
            namespace: "ns".into(),
            name: format!("{name}-r{i}"),
            kind: Default::default(),
            created_at: rng.below(3) as i64,
            hostnames: (0..rng.below(3))
                .map(|_| rng.pick(&HOSTS).to_string())
                .collect(),
            rules: (0..1 + rng.below(3)).map(|_| rule(rng)).collect(),
        })
        .map(Arc::new)
        .collect();
    Listener {
        name: name.into(),
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        protocol: Protocol::Http,
        hostname: hostname.map(str::to_string),
        tls: None,
        routes,
    }
}

fn snapshot(rng: &mut Rng) -> Snapshot {
    let mut s = Snapshot::empty(1);
    s.gateways = vec![
        Gateway {
            namespace: "ns".into(),
            name: "gw1".into(),
            listeners: vec![
                listener(rng, "any", 8080, None),
                listener(rng, "wild", 8080, Some("*.wild.example.com")),
            ],
            served_by_header: true,
        },
        Gateway {
            namespace: "ns".into(),
            name: "gw2".into(),
            listeners: vec![listener(rng, "b", 8081, Some("b.example.com"))],
            served_by_header: false,
        },
    ];
    s.drains = vec![Drain {
        drill: "ns/drill".into(),
        region: Some("r1".into()),
        ..Drain::default()
    }];
    s.east_west = vec![EastWestBackend {
        name: "ns/a:80".into(),
        protocol: BackendProtocol::Http1,
        endpoints: Vec::new(),
        failover: None,
    }];
    s
}

/// Every decision the router makes for a grid of requests, printed in full (the matched rule's
/// `Debug` holds its backends with their endpoint lists, weights and identity).
fn decisions(r: &Router) -> Vec<String> {
    let mut out = Vec::new();
    for port in [8080, 8081, 8082] {
        for host in HOSTS.iter().copied().chain([""]) {
            for path in PATHS.iter().copied().chain(["/other"]) {
                for headers in [&[][..], &[("x-v", "1")][..]] {
                    let d = r.route(&Request {
                        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                        sni: None,
                        host: (!host.is_empty()).then_some(host),
                        method: "GET",
                        path,
                        query: None,
                        headers: &headers,
                    });
                    out.push(format!("{port} {host} {path} {headers:?} => {d:?}"));
                }
            }
        }
    }
    out
}

fn changes(rng: &mut Rng) -> Vec<(String, BackendProtocol, Vec<Endpoint>)> {
    (0..1 + rng.below(3))
        .map(|_| {
            let name = if rng.chance(10) {
                "ns/unknown:80".to_string()
            } else {
                rng.pick(&NAMES).to_string()
            };
            let protocol = if rng.chance(20) {
                BackendProtocol::H2c
            } else {
                BackendProtocol::Http1
            };
            (name, protocol, endpoints(rng, true))
        })
        .collect()
}

/// What the distribution client does to its held snapshot: patch by name, the last change of a
/// name winning.
fn patched(
    s: &Snapshot,
    generation: u64,
    c: &[(String, BackendProtocol, Vec<Endpoint>)],
) -> Snapshot {
    let mut s = s.clone();
    s.set_endpoints(|n| {
        c.iter()
            .rev()
            .find(|(name, _, _)| name == n)
            .map(|(_, p, eps)| (*p, eps.as_slice()))
    });
    s.generation = generation;
    s
}

#[test]
fn random_endpoint_changes_match_a_full_compile() {
    let (mut applied, mut refused) = (0, 0);
    for seed in 0..60 {
        let mut rng = Rng::new(seed);
        let mut served = snapshot(&mut rng);
        let mut router = Router::compile(served.clone()).unwrap();
        for step in 0..10u64 {
            let generation = step + 2;
            let c = changes(&mut rng);
            let want = patched(&served, generation, &c);
            let full = Router::compile(want.clone());
            let fast = router.with_endpoints(
                generation,
                c.iter().map(|(n, p, e)| (n.as_str(), *p, e.as_slice())),
            );
            match (full, fast) {
                (Ok(full), Ok(fast)) => {
                    assert_eq!(fast.generation(), generation, "seed {seed} step {step}");
                    assert_eq!(
                        decisions(&fast),
                        decisions(&full),
                        "seed {seed} step {step}: {c:?}"
                    );
                    let mut sockets: Vec<_> = fast.sockets().collect();
                    let mut want_sockets: Vec<_> = full.sockets().collect();
                    sockets.sort_by_key(|(a, _)| *a);
                    want_sockets.sort_by_key(|(a, _)| *a);
                    assert_eq!(sockets, want_sockets);
                    // Structure is always current; endpoint lists may lag until built.
                    let shape = fast.snapshot_without_endpoints();
                    assert_eq!(shape.gateways.len(), want.gateways.len());
                    assert_eq!(shape.drains, want.drains);
                    assert_eq!(shape.east_west, want.east_west);
                    // Sometimes build the snapshot, sometimes let patches pile up unbuilt.
                    if rng.chance(50) {
                        assert_eq!(**fast.snapshot(), want, "seed {seed} step {step}");
                    }
                    router = fast;
                    served = want;
                    applied += 1;
                }
                (Err(full), Err(fast)) => {
                    assert_eq!(
                        fast.to_string(),
                        full.to_string(),
                        "seed {seed} step {step}"
                    );
                    refused += 1;
                }
                (full, fast) => panic!(
                    "seed {seed} step {step}: full {:?} but incremental {:?}",
                    full.err(),
                    fast.err()
                ),
            }
        }
        assert_eq!(**router.snapshot(), served, "seed {seed} at the end");
    }
    // Both outcomes were exercised.
    assert!(
        applied > 300 && refused > 10,
        "{applied} applied, {refused} refused"
    );
}

fn ep(port: u16) -> Endpoint {
    Endpoint {
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        port,
        cluster: String::new(),
        region: String::new(),
        zone: String::new(),
        ready: true,
        east_west: false,
    }
}

fn two_routes() -> Snapshot {
    let route = |name: &str, path: &str, backend: &str| Route {
        namespace: "ns".into(),
        name: name.into(),
        kind: Default::default(),
        created_at: 0,
        hostnames: Vec::new(),
        rules: vec![Rule {
            matches: vec![Match {
                path: PathMatch::PathPrefix(path.into()),
                ..Match::default()
            }],
            backends: vec![Backend {
                name: backend.into(),
                weight: 1,
                filters: Vec::new(),
                target: BackendTarget::Endpoints {
                    protocol: BackendProtocol::Http1,
                    endpoints: vec![ep(1)],
                    failover: None,
                },
                tls: None,
            }],
            ..Rule::default()
        }],
    };
    let mut s = Snapshot::empty(1);
    s.gateways = vec![Gateway {
        namespace: "ns".into(),
        name: "gw".into(),
        listeners: vec![Listener {
            name: "http".into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            protocol: Protocol::Http,
            hostname: None,
            tls: None,
            routes: vec![
                route("a", "/a", "ns/a:80").into(),
                route("b", "/b", "ns/b:80").into(),
            ],
        }],
        served_by_header: false,
    }];
    s
}

fn matched(r: &Router, path: &str) -> Arc<meridian_model::router::CompiledRule> {
    let d = r.route(&Request {
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
        sni: None,
        host: Some("h"),
        method: "GET",
        path,
        query: None,
        headers: &&[][..],
    });
    match d {
        Decision::Matched(m) => m.rule,
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn only_the_rules_using_a_changed_backend_are_replaced() {
    let r1 = Router::compile(two_routes()).unwrap();
    let r2 = r1
        .with_endpoints(2, [("ns/a:80", BackendProtocol::H2c, &[ep(2), ep(3)][..])])
        .unwrap();
    assert!(Arc::ptr_eq(&matched(&r1, "/b"), &matched(&r2, "/b")));
    assert!(!Arc::ptr_eq(&matched(&r1, "/a"), &matched(&r2, "/a")));
    match &matched(&r2, "/a").rule.backends[0].target {
        BackendTarget::Endpoints {
            protocol,
            endpoints,
            ..
        } => {
            assert_eq!(*protocol, BackendProtocol::H2c);
            assert_eq!(endpoints, &[ep(2), ep(3)]);
        }
        other => panic!("{other:?}"),
    }
    // The old router is untouched, and the new snapshot is the patched one.
    assert_eq!(r1.generation(), 1);
    assert_eq!(r2.generation(), 2);
    assert_eq!(**r1.snapshot(), two_routes());
    let mut want = two_routes();
    want.generation = 2;
    let new_eps = [ep(2), ep(3)];
    want.set_endpoints(|n| (n == "ns/a:80").then_some((BackendProtocol::H2c, &new_eps[..])));
    assert_eq!(**r2.snapshot(), want);
    // Before being built, the snapshot shows the previous endpoint lists.
    let r3 = r2
        .with_endpoints(3, [("ns/b:80", BackendProtocol::Http1, &[][..])])
        .unwrap();
    assert_eq!(r3.snapshot_without_endpoints(), &**r2.snapshot());
}

#[test]
fn a_port_zero_endpoint_is_refused_like_a_full_compile() {
    let r1 = Router::compile(two_routes()).unwrap();
    let err = r1
        .with_endpoints(2, [("ns/b:80", BackendProtocol::Http1, &[ep(0)][..])])
        .unwrap_err();
    let mut bad = two_routes();
    let zero = [ep(0)];
    bad.set_endpoints(|n| (n == "ns/b:80").then_some((BackendProtocol::Http1, &zero[..])));
    assert_eq!(
        err.to_string(),
        Router::compile(bad).unwrap_err().to_string()
    );
    assert!(err.to_string().contains("port 0"), "{err}");
    // A backend no rule uses cannot make the snapshot invalid.
    assert!(
        r1.with_endpoints(2, [("ns/zzz:80", BackendProtocol::Http1, &[ep(0)][..])])
            .is_ok()
    );
}
