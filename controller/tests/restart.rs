//! A controller restart against a real distribution server and a proxy stand-in (a distribution
//! [`Client`] that accepts every snapshot), with the Gateway watched in the sandbox: every
//! status version the API server stored is recorded.
//!
//! - proxies reconnecting after the restart: `Programmed` never leaves `True` and the address
//!   never disappears;
//! - no proxy at all after the restart: the status is kept for the reconnect grace, then the
//!   truth (`Programmed=False`, no address) is written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use meridian_controller::{Controller, ControllerConfig, ControllerHandle, MemberCluster};
use meridian_distribution::{
    Client as ProxyClient, ClientConfig, DistributionServer, Hello, Refused, ServerConfig, Target,
};
use meridian_model::Snapshot;
use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::{eventually, eventually_async};
use serde_json::json;
use tokio::time::Instant;

use meridian_controller::AddressPools;
use meridian_distribution::pki::{Ca, CertStore, ProxyIdentity, TrustDomain};

/// The mesh CA of every server this test starts (a restarted controller keeps its CA).
fn test_ca() -> Arc<Ca> {
    static CA: std::sync::OnceLock<Arc<Ca>> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        Arc::new(Ca::generate(&TrustDomain::default(), Duration::from_secs(3600)).unwrap())
    })
    .clone()
}

/// A certificate for the proxy saying `hello`.
fn proxy_identity(hello: &Hello) -> Arc<CertStore> {
    let who =
        ProxyIdentity::new(&hello.cluster, &hello.region, &hello.zone, &hello.proxy_id).unwrap();
    Arc::new(CertStore::issued(&test_ca(), &who, Duration::from_secs(3600)).unwrap())
}
use meridian_controller::DistributedDataPlane;

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(30);

struct Accept;

impl Target for Accept {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        Ok(snapshot.generation)
    }
}

/// One stored version of the Gateway: when the watch delivered it, `Programmed` status and
/// reason (if any), and `status.addresses`.
#[derive(Clone, Debug)]
struct Version {
    seen: Instant,
    resource_version: String,
    programmed: Option<(String, String)>,
    addresses: Vec<String>,
}

fn version_of(gw: &Gateway) -> Version {
    let status = gw.status.as_ref();
    Version {
        seen: Instant::now(),
        resource_version: gw.metadata.resource_version.clone().unwrap_or_default(),
        programmed: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Programmed"))
            .map(|c| (c.status.clone(), c.reason.clone())),
        addresses: status
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().map(|a| a.value.clone()).collect())
            .unwrap_or_default(),
    }
}

/// Records every version of `infra/gw` the API server stores (the sandbox keeps its history,
/// so a watch sees each one).
fn record(client: &Client) -> (Arc<Mutex<Vec<Version>>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Gateway> = Api::namespaced(client.clone(), "infra");
    let sink = Arc::clone(&log);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(
            watcher(api, watcher::Config::default().fields("metadata.name=gw")).applied_objects()
        );
        while let Some(gw) = stream.next().await {
            if let Ok(gw) = gw {
                sink.lock().unwrap().push(version_of(&gw));
            }
        }
    });
    (log, task)
}

/// Waits until the recorder has seen the version the API server has now.
async fn caught_up(client: &Client, log: &Mutex<Vec<Version>>) {
    let rv = Api::<Gateway>::namespaced(client.clone(), "infra")
        .get("gw")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    eventually("the recorder to catch up", WAIT, || {
        log.lock().unwrap().iter().any(|v| v.resource_version == rv)
    })
    .await;
}

async fn sandbox_with_gateway() -> (Sandbox, Client) {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let client =
        Client::try_from(kube::Config::new(sb.clusters()[0].url.parse().unwrap())).unwrap();
    let crds: Api<meridian_crds::CustomResourceDefinition> = Api::all(client.clone());
    for crd in meridian_crds::all_crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let apply = PatchParams::apply("test").force();
    Api::<Namespace>::all(client.clone())
        .patch(
            "infra",
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "infra"}})),
        )
        .await
        .unwrap();
    Api::<gateway_api::gatewayclasses::GatewayClass>::all(client.clone())
        .patch(
            "meridian",
            &apply,
            &Patch::Apply(json!({"apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass", "metadata": {"name": "meridian"},
                "spec": {"controllerName": meridian_controller::CONTROLLER_NAME}})),
        )
        .await
        .unwrap();
    Api::<Gateway>::namespaced(client.clone(), "infra")
        .patch(
            "gw",
            &apply,
            &Patch::Apply(json!({"apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway", "metadata": {"name": "gw", "namespace": "infra"},
                "spec": {"gatewayClassName": "meridian", "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP"}]}})),
        )
        .await
        .unwrap();
    (sb, client)
}

/// Controller + distribution server on `bind` (port 0: any).
struct Stack {
    ctl: ControllerHandle,
    server: Arc<DistributionServer>,
    started: Instant,
}

impl Stack {
    async fn start(client: &Client, bind: SocketAddr, grace: Duration) -> Stack {
        let cfg = ServerConfig::new(bind, test_ca());
        let server = Arc::new(DistributionServer::start(cfg).await.unwrap());
        let started = Instant::now();
        let dp = DistributedDataPlane::new(server.clone(), AddressPools::default(), grace);
        let member = MemberCluster::new("east", "us-east", vec![], client.clone());
        let mut cfg = ControllerConfig::new(vec![member], dp);
        cfg.allow_loopback_endpoints = true;
        cfg.debounce = Duration::from_millis(20);
        cfg.probe_interval = Duration::from_millis(300);
        cfg.startup_grace = Duration::from_secs(1);
        cfg.status_recheck = Duration::from_millis(200);
        let ctl = Controller::start(cfg).await.unwrap();
        ctl.wait_ready(WAIT).await.unwrap();
        Stack {
            ctl,
            server,
            started,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops the controller, then the distribution server (closing its port).
    async fn stop(self) {
        self.ctl.shutdown().await;
        // The controller's tasks held the data plane (and so the server); they are gone now,
        // but dropped tasks release their share a moment later.
        eventually("the server no longer shared", WAIT, || {
            Arc::strong_count(&self.server) == 1
        })
        .await;
        let Ok(server) = Arc::try_unwrap(self.server) else {
            panic!("server shared again");
        };
        server.shutdown().await;
    }

    /// Whether the proxy acknowledged the latest snapshot of `east`.
    fn acked(&self) -> bool {
        let latest = self.server.latest_generation("east");
        self.server
            .state()
            .iter()
            .any(|p| p.connected && latest.is_some() && p.acked_generation >= latest)
    }
}

fn proxy(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let hello = Hello {
        proxy_id: "east-1".into(),
        cluster: "east".into(),
        region: "us-east".into(),
        zone: "us-east-1a".into(),
        gateways: None,
        address: Some("127.0.0.1".into()),
        east_west: None,
    };
    let identity = proxy_identity(&hello);
    let mut cfg = ClientConfig::new(format!("https://{addr}"), hello, identity, None);
    cfg.backoff_max = Duration::from_millis(500);
    let client = ProxyClient::new(cfg).unwrap();
    tokio::spawn(async move {
        client.run(&Accept).await;
    })
}

fn programmed_true_on_proxy_address(v: &Version) -> bool {
    v.programmed.as_ref().is_some_and(|(s, _)| s == "True") && v.addresses == ["127.0.0.1"]
}

/// Starts everything and waits for `Programmed=True` on the proxy's address.
async fn converged() -> (Sandbox, Client, Stack, tokio::task::JoinHandle<()>) {
    let (sb, client) = sandbox_with_gateway().await;
    let stack = Stack::start(
        &client,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(10),
    )
    .await;
    let proxy = proxy(stack.addr());
    let api: Api<Gateway> = Api::namespaced(client.clone(), "infra");
    eventually_async("Programmed=True on the proxy's address", WAIT, || async {
        let v = version_of(&api.get("gw").await.unwrap());
        if programmed_true_on_proxy_address(&v) {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
    (sb, client, stack, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_does_not_report_an_outage() {
    let (sb, client, stack, proxy_task) = converged().await;
    let (log, recorder) = record(&client);
    caught_up(&client, &log).await;
    let addr = stack.addr();

    // The controller (and its distribution server) restarts; the proxy keeps serving and
    // reconnects only after the new controller has translated without it.
    proxy_task.abort();
    stack.stop().await;
    let stack = Stack::start(&client, addr, Duration::from_secs(10)).await;
    let passes = stack.ctl.passes();
    eventually("a pass of the new controller", WAIT, || {
        stack.ctl.passes() > passes
    })
    .await;
    let proxy_task = proxy(addr);
    eventually(
        "the proxy to acknowledge the new controller's snapshot",
        WAIT,
        || stack.acked(),
    )
    .await;
    // Whatever the new controller writes after the acknowledgement has been written.
    let passes = stack.ctl.passes();
    eventually("a pass after the acknowledgement", WAIT, || {
        stack.ctl.passes() > passes
    })
    .await;
    eventually("no status write pending", WAIT, || {
        stack
            .ctl
            .metrics()
            .status_pending
            .with_label_values(&["east"])
            .get()
            == 0
    })
    .await;
    caught_up(&client, &log).await;

    let versions = log.lock().unwrap().clone();
    assert!(!versions.is_empty());
    for v in &versions {
        assert!(
            programmed_true_on_proxy_address(v),
            "the restart showed as an outage: {v:?} in {versions:#?}"
        );
    }
    recorder.abort();
    proxy_task.abort();
    stack.stop().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxies_the_truth_is_written_once_the_grace_is_over() {
    let (sb, client, stack, proxy_task) = converged().await;
    let (log, recorder) = record(&client);
    caught_up(&client, &log).await;
    let addr = stack.addr();
    proxy_task.abort();
    stack.stop().await;

    let grace = Duration::from_secs(2);
    let stack = Stack::start(&client, addr, grace).await;
    eventually("Programmed=False once the grace is over", WAIT, || {
        log.lock()
            .unwrap()
            .iter()
            .any(|v| v.programmed.as_ref().is_some_and(|(s, _)| s == "False"))
    })
    .await;
    let versions = log.lock().unwrap().clone();
    let first_false = versions
        .iter()
        .position(|v| v.programmed.as_ref().is_some_and(|(s, _)| s == "False"))
        .unwrap();
    for v in &versions[..first_false] {
        assert!(programmed_true_on_proxy_address(v), "{versions:#?}");
    }
    let down = &versions[first_false];
    assert!(
        down.seen >= stack.started + grace,
        "went False {:?} after the start, before the {grace:?} grace",
        down.seen - stack.started
    );
    assert!(down.seen < stack.started + grace + Duration::from_secs(5));
    assert_eq!(
        down.programmed,
        Some(("False".into(), "AddressNotAssigned".into()))
    );
    assert!(down.addresses.is_empty(), "{down:?}");
    recorder.abort();
    stack.stop().await;
    sb.shutdown().await;
}
