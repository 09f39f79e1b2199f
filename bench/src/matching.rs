//! Route-matching cost per request at 10, 1k and 10k routes, measured in-process on the pure
//! router (no sockets), for two table shapes:
//! - `hosts`: every route has its own hostname (the common multi-tenant shape);
//! - `paths`: every route shares one hostname and owns a path prefix (the worst case for a
//!   per-host list).
//!
//! Each request mix cycles over all routes so lookups do not stay in cache-friendly corners.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use meridian_model::router::HeaderSource;
use meridian_model::snapshot::*;
use meridian_model::{Decision, Request, Router};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const LOOKUPS: usize = 400_000;

#[derive(Clone, Copy)]
enum Shape {
    Hosts,
    Paths,
}

fn backend(i: usize) -> Backend {
    Backend {
        name: format!("bench/svc-{i}:80"),
        weight: 1,
        filters: vec![],
        target: BackendTarget::Endpoints {
            protocol: BackendProtocol::Http1,
            endpoints: vec![Endpoint {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 8080,
                cluster: "c".into(),
                region: "r".into(),
                zone: "z".into(),
                ready: true,
                east_west: false,
            }],
            failover: None,
        },
        tls: None,
    }
}

fn snapshot(n: usize, shape: Shape) -> Snapshot {
    let routes = (0..n)
        .map(|i| {
            let (hostnames, prefix) = match shape {
                Shape::Hosts => (vec![format!("svc-{i}.example.com")], "/".to_string()),
                Shape::Paths => (vec!["api.example.com".into()], format!("/svc-{i}")),
            };
            Route {
                namespace: "bench".into(),
                name: format!("route-{i}"),
                kind: Default::default(),
                created_at: i as i64,
                hostnames,
                rules: vec![
                    Rule {
                        matches: vec![Match {
                            path: PathMatch::PathPrefix(format!("{prefix}/v2")),
                            headers: vec![HeaderMatch {
                                name: "x-canary".into(),
                                value: "true".into(),
                                kind: ValueMatchType::Exact,
                            }],
                            ..Default::default()
                        }],
                        backends: vec![backend(i)],
                        ..Default::default()
                    },
                    Rule {
                        matches: vec![Match {
                            path: PathMatch::PathPrefix(prefix),
                            ..Default::default()
                        }],
                        backends: vec![backend(i)],
                        ..Default::default()
                    },
                ],
            }
        })
        .map(Into::into)
        .collect();
    Snapshot {
        schema: SNAPSHOT_SCHEMA.into(),
        generation: 1,
        gateways: vec![Gateway {
            namespace: "bench".into(),
            name: "gw".into(),
            listeners: vec![Listener {
                name: "http".into(),
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 80,
                protocol: Protocol::Http,
                hostname: None,
                tls: None,
                routes,
            }],
            served_by_header: false,
        }],
        drains: Vec::new(),
        east_west: Vec::new(),
    }
}

struct NoHeaders;
impl HeaderSource for NoHeaders {
    fn header(&self, _: &str) -> Option<std::borrow::Cow<'_, str>> {
        None
    }
}

/// ns per lookup for a table of `n` routes.
fn measure(n: usize, shape: Shape) -> anyhow::Result<f64> {
    let router = Router::compile(snapshot(n, shape))?;
    let requests: Vec<(String, String)> = (0..n.min(4096))
        .map(|k| {
            let i = (k * 7919) % n;
            match shape {
                Shape::Hosts => (format!("svc-{i}.example.com"), "/api/items/42".to_string()),
                Shape::Paths => ("api.example.com".to_string(), format!("/svc-{i}/items/42")),
            }
        })
        .collect();
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);
    let mut matched = 0usize;
    let start = Instant::now();
    for k in 0..LOOKUPS {
        let (host, path) = &requests[k % requests.len()];
        let req = Request {
            local,
            sni: None,
            host: Some(host),
            method: "GET",
            path,
            query: None,
            headers: &NoHeaders,
        };
        if let Decision::Matched(_) = black_box(router.route(black_box(&req))) {
            matched += 1;
        }
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(
        matched == LOOKUPS,
        "only {matched} of {LOOKUPS} lookups matched"
    );
    Ok(elapsed.as_nanos() as f64 / LOOKUPS as f64)
}

/// Prints the table.
pub fn run() -> anyhow::Result<()> {
    println!("## Route matching cost per request ({LOOKUPS} lookups per cell, median of 5)");
    println!();
    println!("| shape | routes | ns/request | × cost at 10 routes |");
    println!("|---|---:|---:|---:|");
    for (label, shape) in [("hosts", Shape::Hosts), ("paths", Shape::Paths)] {
        let mut base = None;
        for n in SIZES {
            let mut runs = Vec::new();
            for _ in 0..5 {
                runs.push(measure(n, shape)?);
            }
            runs.sort_by(f64::total_cmp);
            let median = runs[runs.len() / 2];
            let base_v = *base.get_or_insert(median);
            println!("| {label} | {n} | {median:.0} | {:.2} |", median / base_v);
        }
    }
    Ok(())
}
