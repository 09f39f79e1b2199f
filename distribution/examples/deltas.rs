//! Snapshot deltas benchmark: what one route change costs with route-level patches against a
//! whole snapshot, on both ends, at several route counts. CPU only, one thread, no sockets.
//!
//! Per route count, a snapshot like the propagation benchmark's (one Gateway, one listener,
//! `routes` HTTPRoutes each with its own hostname, path and backend), and `--iterations` route
//! changes (the path of one route, a different one each time). Medians of:
//!
//! - controller, before patches: `endpoint_delta` (fails: not endpoint-only) + encoding the whole
//!   snapshot line;
//! - controller, with patches: `endpoint_delta` + `patch::diff` + encoding the patch line, and
//!   `DistributionServer::publish` as a whole (the same, plus numbering and storing), for
//!   snapshots built independently (no route shared);
//! - the same as the controller publishes now: the next snapshot made from the previous one in
//!   place (every other route shared, copy on write) with the Gateway it touched as the hint —
//!   `endpoint_delta_since` + `diff_since` + encoding, and `DistributionServer::publish_since`;
//! - bytes of each line;
//! - proxy (client side), before: decoding the snapshot line; with patches: decoding the patch
//!   line + applying it to the held snapshot + the copy handed to the target (as the client
//!   does); then `Router::compile`, the same for both.
//!
//! How to run (release; bounded by the iteration count):
//!
//! ```text
//! cargo run --release -p meridian-distribution --example deltas -- --routes 1000,10000 --iterations 20
//! ```
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_distribution::pki::{Ca, TrustDomain};
use meridian_distribution::protocol::{Message, endpoint_delta, endpoint_delta_since};
use meridian_distribution::{DistributionServer, PublishKind, ServerConfig};
use meridian_model::patch::{Since, SnapshotPatch, Touched, diff, diff_since};
use meridian_model::{Router, Snapshot};
use serde::Serialize;
use serde_json::json;

// The allocator of the `meridian` binary: glibc's malloc adds milliseconds of chunk
// consolidation to whatever runs after a big snapshot was freed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `routes` HTTPRoutes on one listener; `changed` (if any) has path version `variant`.
fn snapshot(routes: usize, changed: Option<(usize, usize)>) -> Snapshot {
    let routes: Vec<_> = (0..routes)
        .map(|i| {
            let path = match changed {
                Some((c, v)) if c == i => format!("/svc{i}/v{v}"),
                _ => format!("/svc{i}"),
            };
            json!({
                "namespace": "bench", "name": format!("route-{i}"),
                "hostnames": [format!("h{}.example.com", i % 500)],
                "rules": [{
                    "matches": [{"path": {"type": "pathPrefix", "value": path}}],
                    "backends": [{"name": format!("bench/svc{i}:80"), "target": {
                        "type": "endpoints",
                        "endpoints": [
                            {"address": "10.1.0.1", "port": 8080},
                            {"address": "10.1.0.2", "port": 8080}]}}]
                }]
            })
        })
        .collect();
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 0,
        "gateways": [{"namespace": "bench", "name": "gw", "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": 18080, "protocol": "HTTP",
            "routes": routes}]}]
    }))
    .unwrap()
}

/// The stream lines, as the server writes them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Line<'a> {
    Snapshot(&'a Snapshot),
    Patch(&'a SnapshotPatch),
}

fn encode(l: &Line<'_>) -> Vec<u8> {
    let mut v = serde_json::to_vec(l).unwrap();
    v.push(b'\n');
    v
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[derive(Default)]
struct Samples {
    old_publish: Vec<Duration>,
    diff: Vec<Duration>,
    new_publish: Vec<Duration>,
    server_publish: Vec<Duration>,
    shared_publish: Vec<Duration>,
    shared_server_publish: Vec<Duration>,
    full_bytes: usize,
    patch_bytes: usize,
    decode_full: Vec<Duration>,
    decode_apply_patch: Vec<Duration>,
    compile: Vec<Duration>,
}

async fn run(routes: usize, iterations: usize) -> anyhow::Result<()> {
    let ca = Arc::new(Ca::generate(
        &TrustDomain::default(),
        Duration::from_secs(3600),
    )?);
    let srv = DistributionServer::start(ServerConfig::new("127.0.0.1:0".parse()?, ca)).await?;
    let mut s = Samples::default();
    let mut prev = snapshot(routes, None);
    prev.generation = 1;
    srv.publish("c", prev.clone())?;
    // The controller's way: one snapshot patched in place, published as an `Arc`.
    let mut shared = Arc::new(prev.clone());
    srv.publish_since("shared", Arc::clone(&shared), None)?;
    let mut touched = Touched::nothing();
    touched.gateway("bench", "gw");
    let mut last_changed = 0;
    for i in 0..iterations {
        // Built before the clock starts; a different route each time.
        let changed = (i * 7919) % routes;
        let mut next = snapshot(routes, Some((changed, i + 1)));
        next.generation = prev.generation + 1;
        let mut shared_next = Snapshot::clone(&shared);
        shared_next.generation = next.generation;
        // Like `next`: this route changed, the one changed last time is back to its old self.
        for r in [changed, last_changed] {
            shared_next.gateways[0].listeners[0].routes[r] =
                Arc::clone(&next.gateways[0].listeners[0].routes[r]);
        }
        last_changed = changed;
        let shared_next = Arc::new(shared_next);

        // Controller, patch from the hint on shared snapshots.
        let t = Instant::now();
        assert!(endpoint_delta_since(&shared, &shared_next, &touched).is_none());
        let hinted = diff_since(&shared, &shared_next, &touched);
        let hinted_line = encode(&Line::Patch(&hinted));
        s.shared_publish.push(t.elapsed());
        let since = Since {
            base: &srv.latest("shared").unwrap(),
            touched: &touched,
        };
        let t = Instant::now();
        let p = srv.publish_since("shared", Arc::clone(&shared_next), Some(since))?;
        s.shared_server_publish.push(t.elapsed());
        anyhow::ensure!(p.kind == PublishKind::Patch, "expected a patch");
        shared = shared_next;

        // Controller, before patches: no endpoint delta, so the whole snapshot is encoded.
        let t = Instant::now();
        assert!(endpoint_delta(&prev, &next).is_none());
        let full = encode(&Line::Snapshot(&next));
        s.old_publish.push(t.elapsed());

        // Controller, with patches.
        let t = Instant::now();
        assert!(endpoint_delta(&prev, &next).is_none());
        let t_diff = Instant::now();
        let patch = diff(&prev, &next);
        s.diff.push(t_diff.elapsed());
        let line = encode(&Line::Patch(&patch));
        s.new_publish.push(t.elapsed());
        s.full_bytes = full.len();
        s.patch_bytes = line.len();
        anyhow::ensure!(
            hinted_line.len() == line.len(),
            "the patch from the hint differs"
        );

        // The server's publish as a whole.
        let copy = next.clone();
        let t = Instant::now();
        let p = srv.publish("c", copy)?;
        s.server_publish.push(t.elapsed());
        anyhow::ensure!(
            p.kind == PublishKind::Patch,
            "expected a patch, got {:?}",
            p.kind
        );

        // Proxy side: decode the whole snapshot ...
        let t = Instant::now();
        let Message::Snapshot(decoded) = serde_json::from_slice::<Message>(&full)? else {
            anyhow::bail!("not a snapshot line");
        };
        s.decode_full.push(t.elapsed());
        // ... or decode the patch and apply it to the held copy, then copy it for the target.
        let mut held = prev.clone();
        let t = Instant::now();
        let Message::Patch(p) = serde_json::from_slice::<Message>(&line)? else {
            anyhow::bail!("not a patch line");
        };
        p.apply(&mut held)?;
        let for_target = held.clone();
        s.decode_apply_patch.push(t.elapsed());
        anyhow::ensure!(for_target == *decoded, "the patched snapshot differs");
        let t = Instant::now();
        let router = Router::compile(*decoded)?;
        s.compile.push(t.elapsed());
        drop((router, for_target));
        prev = next;
    }
    srv.shutdown().await;
    println!(
        "| {routes} | {} | {} | {} | {} | {} | {} | {:.0} KB | {:.0} B | {} | {} | {} |",
        ms(median(s.old_publish)),
        ms(median(s.new_publish)),
        ms(median(s.diff)),
        ms(median(s.server_publish)),
        ms(median(s.shared_publish)),
        ms(median(s.shared_server_publish)),
        s.full_bytes as f64 / 1e3,
        s.patch_bytes as f64,
        ms(median(s.decode_full)),
        ms(median(s.decode_apply_patch)),
        ms(median(s.compile)),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut routes = vec![1000, 10000];
    let mut iterations = 20;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--routes" => routes = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--iterations" => iterations = v.parse::<usize>()?.max(1),
            _ => anyhow::bail!("unknown flag {flag}; see the file header"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!("one route change, medians of {iterations}; ms unless stated");
        println!(
            "| routes | controller, whole snapshot (endpoint check + encode) | controller, patch (endpoint check + diff + encode) | of which diff | server publish (patch) | shared + hint: endpoint check + diff + encode | shared + hint: server publish_since | snapshot line | patch line | proxy: decode snapshot | proxy: decode + apply patch + copy | compile (both) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for &r in &routes {
            run(r, iterations).await?;
        }
        anyhow::Ok(())
    })
}
