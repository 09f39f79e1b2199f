//! Propagation benchmark: publish → every proxy of every cluster acknowledged it as applied
//! (which means served: a proxy acks after its router swap), at several route counts.
//!
//! Per route count: one distribution server, `--clusters` member clusters each followed by one
//! real proxy (`ProxyHandle`: decode, compile, bind, swap) plus `--extra` stand-in proxies per
//! cluster (decode and compile only; in-process proxies of one cluster cannot share a port).
//! Each iteration changes one route (a route-level patch) in every cluster, then one backend's
//! endpoints (delta path: the real proxies take `ProxyHandle::apply_endpoints`, the stand-ins
//! `Router::with_endpoints`), and times until `programmed()` is `Applied` for every cluster.
//! Everything shares one process, so on a small machine the proxies compete for the same cores;
//! the "once" column gives the CPU cost of each step measured alone, to tell the two apart.
//!
//! How to run (release, the numbers are meaningless in debug):
//!
//! ```text
//! cargo run --release -p meridian-distribution --example propagation -- \
//!     --routes 100,1000,10000 --clusters 3 --extra 2 --iterations 30
//! ```
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_distribution::pki::{Ca, CertStore, ProxyIdentity, TrustDomain};
use meridian_distribution::protocol::{endpoint_delta, patch_endpoints};
use meridian_distribution::{
    Client, ClientConfig, DistributionServer, EndpointChange, Hello, ProgrammedState, PublishKind,
    Refused, ServerConfig, Target,
};
use meridian_model::{Router, Snapshot};
use meridian_proxy::{ProxyConfig, ProxyHandle};
use meridian_test_support::free_port;
use serde_json::json;

/// A proxy stand-in: decodes (done by the client) and compiles, binds nothing; endpoint
/// deltas update its router incrementally, like the proxy's.
#[derive(Default)]
struct CompileOnly {
    router: std::sync::Mutex<Option<Arc<Router>>>,
}

fn refused(e: meridian_model::SnapshotError) -> Refused {
    Refused {
        reason: e.to_string(),
        retry_after: None,
    }
}

impl Target for CompileOnly {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let r = Router::compile(snapshot).map_err(refused)?;
        let g = r.generation();
        *self.router.lock().unwrap() = Some(Arc::new(r));
        Ok(g)
    }

    async fn apply_endpoints(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, Refused>> {
        let current = self.router.lock().unwrap().clone()?;
        if current.generation() != base {
            return None;
        }
        let next = current.with_endpoints(
            generation,
            changes
                .iter()
                .map(|c| (c.backend.as_str(), c.protocol, c.endpoints.as_slice())),
        );
        Some(next.map_err(refused).map(|r| {
            *self.router.lock().unwrap() = Some(Arc::new(r));
            generation
        }))
    }
}

struct Args {
    routes: Vec<usize>,
    clusters: usize,
    extra: usize,
    iterations: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        routes: vec![100, 1000, 10000],
        clusters: 3,
        extra: 2,
        iterations: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--routes" => a.routes = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--clusters" => a.clusters = v.parse()?,
            "--extra" => a.extra = v.parse()?,
            "--iterations" => a.iterations = v.parse()?,
            _ => anyhow::bail!("unknown flag {flag}; see the file header"),
        }
    }
    Ok(a)
}

/// `routes` HTTPRoutes on one listener, each with its own hostname, path and backend.
fn snapshot(routes: usize, port: u16, variant: usize, endpoint_port: u16) -> Snapshot {
    let routes: Vec<_> = (0..routes)
        .map(|i| {
            // `variant` changes the path of route 0: a change only a full snapshot can carry.
            let path = if i == 0 {
                format!("/svc{i}/v{variant}")
            } else {
                format!("/svc{i}")
            };
            let ep_port = if i == 0 { endpoint_port } else { 8080 };
            json!({
                "namespace": "bench", "name": format!("route-{i}"),
                "hostnames": [format!("h{}.example.com", i % 500)],
                "rules": [{
                    "matches": [{"path": {"type": "pathPrefix", "value": path}}],
                    "backends": [{"name": format!("bench/svc{i}:80"), "target": {
                        "type": "endpoints",
                        "endpoints": [
                            {"address": "10.1.0.1", "port": ep_port},
                            {"address": "10.1.0.2", "port": ep_port}]}}]
                }]
            })
        })
        .collect();
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 0,
        "gateways": [{"namespace": "bench", "name": "gw", "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
            "routes": routes}]}]
    }))
    .unwrap()
}

async fn all_applied(srv: &DistributionServer, gens: &[(String, u64)]) -> anyhow::Result<()> {
    let mut changes = srv.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = true;
        for (c, g) in gens {
            match srv.programmed(c, *g) {
                ProgrammedState::Applied(_) => {}
                ProgrammedState::Refused(refusal) => {
                    anyhow::bail!(
                        "{} refused generation {g}: {}",
                        refusal.proxy_id,
                        refusal.reason
                    )
                }
                _ => done = false,
            }
        }
        if done {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            anyhow::bail!("not applied within 60 s: {:?}", srv.state());
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// CPU cost of the steps every generation goes through, measured once, alone.
struct Costs {
    bytes: usize,
    /// Server: JSON encoding (once per cluster).
    encode: Duration,
    /// Proxy: JSON decoding.
    decode: Duration,
    /// Proxy: `Router::compile`.
    compile: Duration,
    /// Server: `endpoint_delta` (finding the endpoint-only change of a published snapshot).
    delta: Duration,
    /// Proxy: `Router::with_endpoints` of a one-backend change.
    incremental: Duration,
    /// Proxy: building the patched snapshot afterwards (lazily, off the ack path).
    materialize: Duration,
    /// Client: patching its held snapshot (after the ack).
    patch: Duration,
}

fn costs(routes: usize) -> anyhow::Result<Costs> {
    let s = snapshot(routes, 1, 0, 8080);
    let t = Instant::now();
    let bytes = serde_json::to_vec(&s)?;
    let encode = t.elapsed();
    let t = Instant::now();
    let decoded: Snapshot = serde_json::from_slice(&bytes)?;
    let decode = t.elapsed();
    let t = Instant::now();
    let router = Router::compile(decoded)?;
    let compile = t.elapsed();
    let next = snapshot(routes, 1, 0, 9000);
    let t = Instant::now();
    let changes = endpoint_delta(&s, &next).ok_or_else(|| anyhow::anyhow!("not a delta"))?;
    let delta = t.elapsed();
    let t = Instant::now();
    let patched = router.with_endpoints(
        1,
        changes
            .iter()
            .map(|c| (c.backend.as_str(), c.protocol, c.endpoints.as_slice())),
    )?;
    let incremental = t.elapsed();
    let t = Instant::now();
    let _ = patched.snapshot();
    let materialize = t.elapsed();
    let mut held = s;
    let t = Instant::now();
    patch_endpoints(&mut held, &changes);
    let patch = t.elapsed();
    drop(router);
    Ok(Costs {
        bytes: bytes.len(),
        encode,
        decode,
        compile,
        delta,
        incremental,
        materialize,
        patch,
    })
}

async fn run(routes: usize, a: &Args) -> anyhow::Result<()> {
    let ca = Arc::new(Ca::generate(
        &TrustDomain::default(),
        Duration::from_secs(3600),
    )?);
    let cfg = ServerConfig::new("127.0.0.1:0".parse()?, ca.clone());
    let srv = DistributionServer::start(cfg).await?;
    let url = format!("https://{}", srv.local_addr());
    // Every proxy gets its certificate straight from the CA (no bootstrap round trip).
    let store = |h: &Hello| -> anyhow::Result<Arc<CertStore>> {
        let who = ProxyIdentity::new(&h.cluster, &h.region, &h.zone, &h.proxy_id)?;
        Ok(Arc::new(CertStore::issued(
            &ca,
            &who,
            Duration::from_secs(3600),
        )?))
    };
    let mut tasks = Vec::new();
    let mut proxies = Vec::new();
    let clusters: Vec<(String, u16)> = (0..a.clusters)
        .map(|i| (format!("cluster-{i}"), free_port()))
        .collect();
    for (cluster, _) in &clusters {
        let hello = |id: String| Hello {
            proxy_id: id,
            cluster: cluster.clone(),
            region: "bench".into(),
            zone: "bench-a".into(),
            gateways: None,
            address: None,
            east_west: None,
        };
        let proxy = Arc::new(ProxyHandle::start(ProxyConfig::default()).await?);
        proxies.push(proxy.clone());
        let h = hello(format!("{cluster}-proxy"));
        let client = Client::new(ClientConfig::new(&url, h.clone(), store(&h)?, None))?;
        tasks.push(tokio::spawn(async move {
            let _ = meridian_proxy::follow_controller(&proxy, &client).await;
        }));
        for k in 0..a.extra {
            let h = hello(format!("{cluster}-standin-{k}"));
            let client = Client::new(ClientConfig::new(&url, h.clone(), store(&h)?, None))?;
            tasks.push(tokio::spawn(async move {
                let _ = client.run(&CompileOnly::default()).await;
            }));
        }
    }
    let want = a.clusters * (1 + a.extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.state().iter().filter(|p| p.connected).count() < want {
        anyhow::ensure!(Instant::now() < deadline, "proxies did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let costs = costs(routes)?;
    // Warm-up: first snapshot (binds the listeners).
    let mut gens = Vec::new();
    for (cluster, port) in &clusters {
        let p = srv.publish(cluster, snapshot(routes, *port, 0, 8080))?;
        gens.push((cluster.clone(), p.generation));
    }
    all_applied(&srv, &gens).await?;

    let (mut full, mut delta, mut publish) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=a.iterations {
        // A route change: a patch (the clients announce patches). (Built before the clock
        // starts: building a 10k-route snapshot from JSON here costs more than distributing it.)
        let next: Vec<Snapshot> = clusters
            .iter()
            .map(|(_, port)| snapshot(routes, *port, i, 8080 + i as u16))
            .collect();
        let t = Instant::now();
        let mut gens = Vec::new();
        for ((cluster, _), s) in clusters.iter().zip(next) {
            let p = srv.publish(cluster, s)?;
            anyhow::ensure!(p.kind == PublishKind::Patch, "expected a patch");
            gens.push((cluster.clone(), p.generation));
        }
        all_applied(&srv, &gens).await?;
        full.push(t.elapsed());

        // An endpoint change: deltas.
        let next: Vec<Snapshot> = clusters
            .iter()
            .map(|(_, port)| snapshot(routes, *port, i, 9000 + i as u16))
            .collect();
        let t = Instant::now();
        let mut gens = Vec::new();
        for ((cluster, _), s) in clusters.iter().zip(next) {
            let p = srv.publish(cluster, s)?;
            anyhow::ensure!(p.kind == PublishKind::Endpoints, "expected a delta");
            gens.push((cluster.clone(), p.generation));
        }
        publish.push(t.elapsed());
        all_applied(&srv, &gens).await?;
        delta.push(t.elapsed());
    }
    for p in &proxies {
        anyhow::ensure!(
            p.last_error().is_none(),
            "a proxy refused: {:?}",
            p.last_error()
        );
    }
    full.sort();
    delta.sort();
    publish.sort();
    println!(
        "| {routes} | {} | {:.2} MB | {} / {} / {} | {} / {} / {} / {} | {} | {} | {} | {} | {} | {} | {} |",
        want,
        costs.bytes as f64 / 1e6,
        ms(costs.encode),
        ms(costs.decode),
        ms(costs.compile),
        ms(costs.delta),
        ms(costs.incremental),
        ms(costs.materialize),
        ms(costs.patch),
        ms(pct(&full, 0.5)),
        ms(pct(&full, 0.99)),
        ms(*full.last().unwrap_or(&Duration::ZERO)),
        ms(pct(&delta, 0.5)),
        ms(pct(&delta, 0.99)),
        ms(*delta.last().unwrap_or(&Duration::ZERO)),
        ms(pct(&publish, 0.5)),
    );
    for t in tasks {
        t.abort();
    }
    srv.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "{} clusters × (1 proxy + {} stand-ins), {} iterations; times in ms, publish → all acked",
            a.clusters, a.extra, a.iterations
        );
        println!(
            "| routes | proxies | snapshot | encode / decode / compile, once | delta diff / with_endpoints / build snapshot / patch held, once | route change p50 | p99 | max | endpoint change p50 | p99 | max | endpoint publish p50 (server, all clusters) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for &r in &a.routes {
            run(r, &a).await?;
        }
        anyhow::Ok(())
    })
}
