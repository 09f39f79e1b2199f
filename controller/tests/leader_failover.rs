//! Two controller replicas (in-process, each with its own distribution server) share the
//! leader-election Lease; a real proxy reaches "the Service": a TCP forwarder that sends each
//! new connection to the next replica that accepts it. The leader is killed under load, as a
//! crash (no release: the follower waits for the Lease to expire) and cleanly (released: the
//! follower takes over at its next retry). Measured and asserted:
//!
//! - takeover: from the kill until the new leader writes status (an HTTPRoute edited right
//!   after the kill gets its new `observedGeneration` written);
//! - failed requests at the proxy: none (it serves its snapshot while it moves to the new leader,
//!   the follower answering `503` meanwhile);
//! - status flaps: every stored version of the Gateway keeps `Programmed=True`, also past the new
//!   leader's proxy reconnect grace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/live.rs"]
mod live;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use meridian_controller::leader::{ElectionConfig, Elector};
use meridian_controller::{
    AddressPools, Controller, ControllerConfig, ControllerHandle, DistributedDataPlane,
    MemberCluster,
};
use meridian_distribution::{DistributionServer, ServerConfig};
use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::{Echo, eventually, eventually_async, free_port, holds_for};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use common::{
    ME, WAIT, apply, client_for, gateway_class, install_crds, route_obj, service, service_ref,
};
use live::{LiveProxy, Load, gateway_on, get, slice_to};

const NS: &str = "meridian-system";
const LEASE: Duration = Duration::from_secs(3);
/// The proxy reconnect grace of each replica (restarted when it becomes the leader).
const RECONNECT_GRACE: Duration = Duration::from_secs(4);

/// One controller replica: elector, distribution server, data plane, controller.
struct Replica {
    id: String,
    elector: Option<Elector>,
    addr: SocketAddr,
    server: Option<Arc<DistributionServer>>,
    ctl: Option<ControllerHandle>,
}

impl Replica {
    async fn start(id: &str, client: &Client) -> Replica {
        let mut ecfg = ElectionConfig::new(NS, id);
        ecfg.lease_duration = LEASE;
        ecfg.renew_deadline = Duration::from_secs(2);
        ecfg.retry_period = Duration::from_millis(500);
        let elector = Elector::start(client.clone(), ecfg).unwrap();
        let gate = elector.write_gate();
        let mut scfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), common::test_ca());
        scfg.serving = Some(gate.clone());
        let server = Arc::new(DistributionServer::start(scfg).await.unwrap());
        let addr = server.local_addr();
        let dp = DistributedDataPlane::with_leadership(
            server.clone(),
            AddressPools::default(),
            RECONNECT_GRACE,
            Some(gate.clone()),
        );
        let members = vec![MemberCluster::new(
            "east",
            "us-east",
            vec!["east-a".into()],
            client.clone(),
        )];
        let mut cfg = ControllerConfig::new(members, dp);
        cfg.allow_loopback_endpoints = true;
        cfg.debounce = Duration::from_millis(20);
        cfg.probe_interval = Duration::from_millis(300);
        cfg.startup_grace = Duration::from_secs(2);
        cfg.status_recheck = Duration::from_millis(200);
        cfg.write_gate = Some(gate);
        let ctl = Controller::start(cfg).await.unwrap();
        Replica {
            id: id.into(),
            elector: Some(elector),
            addr,
            server: Some(server),
            ctl: Some(ctl),
        }
    }

    fn leads(&self) -> bool {
        self.elector
            .as_ref()
            .is_some_and(|e| *e.write_gate().borrow())
    }

    /// Stops the replica: `crash` drops the elector without releasing the Lease.
    async fn kill(&mut self, crash: bool) {
        if let Some(e) = self.elector.take() {
            if crash {
                drop(e);
            } else {
                e.shutdown().await;
            }
        }
        if let Some(ctl) = self.ctl.take() {
            ctl.shutdown().await;
        }
        // The server stops with its last owner (the data plane went with the controller):
        // the proxies' streams close and they reconnect through the forwarder.
        if let Some(server) = self.server.take()
            && let Ok(server) = Arc::try_unwrap(server)
        {
            server.shutdown().await;
        }
    }
}

/// "The Service": each accepted connection goes to the next replica that accepts it.
async fn forwarder(replicas: Vec<SocketAddr>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let start = next.fetch_add(1, Ordering::Relaxed);
            let replicas = replicas.clone();
            tokio::spawn(async move {
                for k in 0..replicas.len() {
                    let to = replicas[(start + k) % replicas.len()];
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// `status/reason` of the `Programmed` condition of each stored version of the Gateway.
type Versions = Arc<Mutex<Vec<Option<String>>>>;

/// Every stored version of `infra/gw`: its `Programmed` status and reason.
fn record(client: &Client) -> (Versions, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Gateway> = Api::namespaced(client.clone(), "infra");
    let sink = Arc::clone(&log);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(
            watcher(api, watcher::Config::default().fields("metadata.name=gw")).applied_objects()
        );
        while let Some(gw) = stream.next().await {
            if let Ok(gw) = gw {
                let programmed = gw
                    .status
                    .and_then(|s| s.conditions)
                    .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Programmed"))
                    .map(|c| format!("{}/{}", c.status, c.reason));
                sink.lock().unwrap().push(programmed);
            }
        }
    });
    (log, task)
}

async fn route_observed(client: &Client) -> (i64, Option<i64>) {
    let r: HttpRoute = Api::namespaced(client.clone(), "app")
        .get("web")
        .await
        .unwrap();
    let generation = r.metadata.generation.unwrap_or_default();
    let observed = r
        .status
        .and_then(|s| s.parents.into_iter().find(|p| p.controller_name == ME))
        .and_then(|p| p.conditions.into_iter().find(|c| c.type_ == "Accepted"))
        .and_then(|c| c.observed_generation);
    (generation, observed)
}

async fn takeover(crash: bool) {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let client = client_for(&sb.clusters()[0].url);
    install_crds(&client).await;
    for ns in ["infra", "app", NS] {
        apply::<Namespace>(
            &client,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    let echo = Echo::start("echo-east").await;
    apply::<Service>(&client, service("app", "echo")).await;
    apply::<EndpointSlice>(
        &client,
        slice_to("app", "echo-1", "echo", echo.addr, "east-a"),
    )
    .await;
    let port = free_port();
    apply::<GatewayClass>(&client, gateway_class("meridian", ME)).await;
    apply::<Gateway>(&client, gateway_on("infra", "gw", "meridian", port)).await;
    apply::<HttpRoute>(
        &client,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;

    let mut replicas = vec![
        Replica::start("replica-a", &client).await,
        Replica::start("replica-b", &client).await,
    ];
    let (fwd, fwd_task) = forwarder(replicas.iter().map(|r| r.addr).collect()).await;
    let _proxy = LiveProxy::start("east", "us-east", &format!("https://{fwd}")).await;
    let (log, rec) = record(&client);
    eventually("the Gateway Programmed", WAIT, || {
        let l = log.lock().unwrap();
        (l.last().cloned().flatten().as_deref() == Some("True/Programmed"))
            .then_some(())
            .ok_or(format!("{l:?}"))
    })
    .await;
    eventually_async("the proxy serves", WAIT, || get(port)).await;
    let leader = eventually("one replica leads", WAIT, || {
        replicas.iter().position(Replica::leads)
    })
    .await;
    let follower = 1 - leader;
    let versions_before = log.lock().unwrap().len();

    let load = Load::start(vec![port], Duration::from_millis(20), 100_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    replicas[leader].kill(crash).await;
    // A change only a leader writes the status of.
    let mut edited = route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80));
    edited["spec"]["hostnames"] = json!(["echo.example.com", "echo2.example.com"]);
    apply::<HttpRoute>(&client, edited).await;
    eventually_async("the new leader writes the route's status", WAIT, || async {
        let (generation, observed) = route_observed(&client).await;
        if observed == Some(generation) {
            Ok(())
        } else {
            Err(format!("generation {generation}, observed {observed:?}"))
        }
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(replicas[follower].leads(), "the follower leads now");
    // The proxy moves to the new leader; Programmed holds past the new leader's grace.
    let new_server = replicas[follower].server.clone().unwrap();
    eventually("the proxy connected to the new leader", WAIT, || {
        new_server.state().iter().any(|p| p.connected)
    })
    .await;
    holds_for(
        "Programmed stays True past the reconnect grace",
        RECONNECT_GRACE + Duration::from_secs(1),
        || {
            let l = log.lock().unwrap();
            (l.last().cloned().flatten().as_deref() == Some("True/Programmed"))
                .then_some(())
                .ok_or(format!("{l:?}"))
        },
    )
    .await;
    let (ok, failures) = load.finish().await;
    let versions: Vec<Option<String>> = log.lock().unwrap().clone();
    let flaps = versions
        .iter()
        .skip(versions_before.saturating_sub(1))
        .filter(|p| p.as_deref() != Some("True/Programmed"))
        .count();
    eprintln!(
        "leader {} ({}): new leader {} wrote status {:.2}s after the kill (lease {LEASE:?}); \
         {ok} requests ok, {} failed at the proxy; {} Gateway versions stored since, {flaps} \
         without Programmed=True",
        if crash {
            "crashed"
        } else {
            "released the Lease"
        },
        replicas[leader].id,
        replicas[follower].id,
        takeover.as_secs_f64(),
        failures.len(),
        versions.len() - versions_before,
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 20, "the load loop ran ({ok} requests)");
    assert_eq!(flaps, 0, "status flapped: {versions:?}");
    let bound = if crash {
        LEASE + Duration::from_secs(5)
    } else {
        Duration::from_secs(5)
    };
    assert!(
        takeover < bound,
        "takeover took {takeover:?} (bound {bound:?})"
    );

    rec.abort();
    fwd_task.abort();
    for r in &mut replicas {
        r.kill(false).await;
    }
    drop(sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_without_failed_requests_or_status_flaps() {
    takeover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_releases_the_lease_is_replaced_at_once() {
    takeover(false).await;
}
