//! Measures the running controller against the in-process sandbox: 3 clusters, one Gateway per
//! cluster, N HTTPRoutes spread over them (one Service backend each, one endpoint per Service).
//!
//! Reports: time until every route has its status written (initial convergence, status writes
//! included), then the latency from a kube-rs write to the snapshot handed to the data plane for
//! (a) an EndpointSlice change (incremental path) and (b) a new HTTPRoute (full translation), and
//! the status writes made during a quiet second (should be 0).
//!
//! How to run (N defaults to 1000; use a release build for representative numbers):
//!
//! ```text
//! cargo run -p meridian-controller --release --example controller_latency -- 1000
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gateway_api::httproutes::HttpRoute;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use meridian_controller::{Controller, ControllerConfig, MemberCluster, StaticDataPlane};
use meridian_model::snapshot::{BackendTarget, Snapshot};
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

const CLUSTERS: [&str; 3] = ["east", "west", "central"];
const ME: &str = "meridian.dev/gateway-controller";

async fn apply<K: Resource<DynamicType = ()>>(c: &Client, obj: Value) -> anyhow::Result<()> {
    let ar = ApiResource::erase::<K>(&());
    let name = obj["metadata"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

fn slice(i: usize, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-x"), "namespace": "app",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "zone": "a"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn route(i: usize) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("r-{i}"), "namespace": "app"},
        "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                 "hostnames": [format!("h{i}.example.com")],
                 "rules": [{"backendRefs": [{"name": format!("svc-{i}"), "port": 80}]}]}})
}

fn has_ip(s: &Snapshot, ip: &str) -> bool {
    s.gateways
        .iter()
        .flat_map(|g| &g.listeners)
        .flat_map(|l| &l.routes)
        .flat_map(|r| &r.rules)
        .flat_map(|r| &r.backends)
        .any(|b| match &b.target {
            BackendTarget::Endpoints { endpoints, .. } => {
                endpoints.iter().any(|e| e.address.to_string() == ip)
            }
            _ => false,
        })
}

fn has_route(s: &Snapshot, name: &str) -> bool {
    s.gateways
        .iter()
        .flat_map(|g| &g.listeners)
        .flat_map(|l| &l.routes)
        .any(|r| r.name == name)
}

/// Waits (≤ 30 s) until `cond` holds for the published snapshot of `cluster`.
async fn wait_snapshot(
    dp: &StaticDataPlane,
    cluster: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut rx = dp.subscribe_published();
    loop {
        if dp.snapshot(cluster).is_some_and(|s| cond(&s)) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("snapshot of {cluster} did not change within 30 s");
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().with_context(|| format!("route count {s:?}"))?,
        None => 1000,
    };
    let mut sb_cfg = SandboxConfig::ephemeral(&CLUSTERS);
    sb_cfg.history_window = 100_000;
    let sb = Sandbox::start(sb_cfg).await?;
    let mut clients = Vec::new();
    for ep in sb.clusters() {
        let c = Client::try_from(kube::Config::new(ep.url.parse()?))?;
        let crds: Api<meridian_crds::CustomResourceDefinition> = Api::all(c.clone());
        for crd in meridian_crds::all_crds() {
            crds.create(&PostParams::default(), &crd).await?;
        }
        for ns in ["infra", "app"] {
            apply::<k8s_openapi::api::core::v1::Namespace>(
                &c,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await?;
        }
        apply::<gateway_api::gatewayclasses::GatewayClass>(
            &c,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "meridian"}, "spec": {"controllerName": ME}}),
        )
        .await?;
        apply::<gateway_api::gateways::Gateway>(
            &c,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "gw", "namespace": "infra"},
                "spec": {"gatewayClassName": "meridian", "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP",
                     "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
        )
        .await?;
        clients.push((ep.name.clone(), c));
    }
    let setup = Instant::now();
    for i in 0..n {
        let (_, c) = &clients[i % clients.len()];
        apply::<k8s_openapi::api::core::v1::Service>(
            c,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{i}"), "namespace": "app"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}),
        )
        .await?;
        apply::<k8s_openapi::api::discovery::v1::EndpointSlice>(
            c,
            slice(
                i,
                &format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
            ),
        )
        .await?;
        apply::<HttpRoute>(c, route(i)).await?;
    }
    println!(
        "created {n} routes + services + slices in {:?}",
        setup.elapsed()
    );

    let dp = StaticDataPlane::new(vec!["127.0.0.1".parse()?]);
    let members = clients
        .iter()
        .map(|(name, c)| MemberCluster {
            name: name.clone(),
            region: name.clone(),
            zones: vec![],
            client: c.clone(),
            network: String::new(),
        })
        .collect();
    let mut cfg = ControllerConfig::new(members, dp.clone());
    cfg.allow_loopback_endpoints = true;
    cfg.debounce = Duration::from_millis(20);
    let started = Instant::now();
    let ctl = Controller::start(cfg).await?;
    ctl.wait_ready(Duration::from_secs(60)).await?;
    println!("initial sync of 3 clusters: {:?}", started.elapsed());

    // Converged: every route has our parent entry.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut done = 0;
        for (_, c) in &clients {
            let routes: Api<HttpRoute> = Api::namespaced(c.clone(), "app");
            for r in routes.list(&Default::default()).await? {
                if r.status
                    .is_some_and(|s| s.parents.iter().any(|p| p.controller_name == ME))
                {
                    done += 1;
                }
            }
        }
        if done == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done}/{n} routes have status after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts: u64 = CLUSTERS
        .iter()
        .map(|c| ctl.metrics().status_write_attempts(c))
        .sum();
    println!(
        "all {n} route statuses written after {:?} ({attempts} status writes in total)",
        started.elapsed()
    );

    let east = &clients[0].1;
    let samples = 20;
    let mut eps = Vec::new();
    for k in 0..samples {
        let ip = format!("10.250.0.{}", k + 1);
        let t = Instant::now();
        apply::<k8s_openapi::api::discovery::v1::EndpointSlice>(east, slice(0, &ip)).await?;
        wait_snapshot(&dp, "east", |s| has_ip(s, &ip)).await?;
        eps.push(t.elapsed());
    }
    let mut routes = Vec::new();
    for k in 0..samples {
        let i = n + 3 * k; // lands on east
        let t = Instant::now();
        apply::<HttpRoute>(east, route(i)).await?;
        let name = format!("r-{i}");
        wait_snapshot(&dp, "east", |s| has_route(s, &name)).await?;
        routes.push(t.elapsed());
    }
    println!(
        "EndpointSlice write -> snapshot: p50 {:?} p99 {:?} (n={samples})",
        percentile(&mut eps, 0.5),
        percentile(&mut eps, 0.99)
    );
    println!(
        "HTTPRoute write -> snapshot:     p50 {:?} p99 {:?} (n={samples})",
        percentile(&mut routes, 0.5),
        percentile(&mut routes, 0.99)
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: u64 = CLUSTERS
        .iter()
        .map(|c| ctl.metrics().status_write_attempts(c))
        .sum();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: u64 = CLUSTERS
        .iter()
        .map(|c| ctl.metrics().status_write_attempts(c))
        .sum();
    println!("status writes during a quiet second: {}", after - before);
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS (sandbox + controller + clients in one process): {mib:.0} MiB");
    }
    ctl.shutdown().await;
    sb.shutdown().await;
    Ok(())
}
