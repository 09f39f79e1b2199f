//! A member cluster joins and leaves through a kubeconfig Secret while traffic runs, with the
//! distribution server and real proxies in two clusters (east, west) and no controller restart:
//!
//! - the Secret of `north` appears ─► requests through east's proxy reach a backend that exists
//!   only in north (east has no backend of its own; its ServiceImport gathers west and north);
//! - the Secret is deleted ─► north's endpoints stay for the endpoint grace, then leave east's
//!   snapshot and no request reaches north any more;
//! - a load loop through both proxies sees no failed request throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/live.rs"]
mod live;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use meridian_controller::members::cli::{self, MemberEndpoint};
use meridian_controller::members::{MemberMetrics, MemberSpec, follow_member_secrets};
use meridian_controller::{
    AddressPools, Controller, ControllerConfig, DistributedDataPlane, MemberCluster, MemberError,
};
use meridian_crds::mcs::ServiceExport;
use meridian_distribution::{DistributionServer, ServerConfig};
use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::{Echo, eventually, eventually_async, free_port, holds_for};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use common::{
    ME, WAIT, apply, client_for, endpoints, gateway_class, import_ref, install_crds, route_obj,
    service, service_export, service_ref,
};
use live::{LiveProxy, Load, gateway_on, get, slice_to};

const NS: &str = "meridian-system";
/// The endpoint grace of the test: short, but long enough to see north's endpoints kept.
const GRACE: Duration = Duration::from_secs(3);

fn north_clusters(server: &DistributionServer) -> Result<usize, String> {
    let s = server.latest("east").ok_or("no snapshot for east yet")?;
    Ok(endpoints(&s)
        .iter()
        .filter(|e| e.cluster == "north")
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_and_leaves_through_a_secret_while_traffic_runs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east", "west", "north"]))
        .await
        .unwrap();
    let mut clients = std::collections::BTreeMap::new();
    for ep in sb.clusters() {
        let c = client_for(&ep.url);
        install_crds(&c).await;
        for ns in ["infra", "app", NS] {
            apply::<Namespace>(
                &c,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        }
        clients.insert(ep.name.clone(), (c, ep.url.clone()));
    }
    let (east, _) = clients["east"].clone();
    let (west, _) = clients["west"].clone();
    let (north, north_url) = clients["north"].clone();

    // Backends: one in west, one in north; east has none of its own.
    let echo_w = Echo::start("echo-west").await;
    let echo_n = Echo::start("echo-north").await;
    for (c, echo, zone) in [(&west, &echo_w, "west-a"), (&north, &echo_n, "north-a")] {
        apply::<Service>(c, service("app", "echo")).await;
        apply::<EndpointSlice>(c, slice_to("app", "echo-1", "echo", echo.addr, zone)).await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
    }
    // Gateways: east routes to the ServiceImport (west + north), west to its own Service.
    let (port_e, port_w) = (free_port(), free_port());
    for (c, port, backend) in [
        (&east, port_e, import_ref("echo", 80)),
        (&west, port_w, service_ref("echo", 80)),
    ] {
        apply::<GatewayClass>(c, gateway_class("meridian", ME)).await;
        apply::<Gateway>(c, gateway_on("infra", "gw", "meridian", port)).await;
        apply::<HttpRoute>(c, route_obj("app", "web", ("infra", "gw"), backend)).await;
    }

    // The controller with the distribution server, over east and west only.
    let scfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), common::test_ca());
    let server = Arc::new(DistributionServer::start(scfg).await.unwrap());
    let dp = DistributedDataPlane::new(
        server.clone(),
        AddressPools::default(),
        Duration::from_millis(500),
    );
    let members = vec![
        MemberCluster::new("east", "us-east", vec!["east-a".into()], east.clone()),
        MemberCluster::new("west", "us-west", vec!["west-a".into()], west.clone()),
    ];
    let mut cfg = ControllerConfig::new(members, dp);
    cfg.allow_loopback_endpoints = true;
    cfg.debounce = Duration::from_millis(20);
    cfg.probe_interval = Duration::from_millis(300);
    cfg.probe_timeout = Duration::from_secs(2);
    cfg.startup_grace = Duration::from_secs(3);
    cfg.status_recheck = Duration::from_millis(200);
    cfg.endpoint_grace = GRACE;
    let ctl = Controller::start(cfg).await.unwrap();
    ctl.wait_ready(WAIT).await.unwrap();
    let (stop_follow, stop_rx) = watch::channel(false);
    let follow = follow_member_secrets(
        ctl.members(),
        east.clone(),
        NS.into(),
        BTreeSet::from(["east".to_string(), "west".to_string()]),
        MemberMetrics::register(ctl.metrics().registry()).unwrap(),
        stop_rx,
    );

    // The controller's view of its members: a name taken or unknown is refused, nothing changes.
    let again = MemberCluster::new("west", "us-west", vec![], west.clone());
    assert!(matches!(
        ctl.add_cluster(again, west.clone(), None).await,
        Err(MemberError::AlreadyMember(name)) if name == "west"
    ));
    assert!(matches!(
        ctl.remove_cluster("nowhere").await,
        Err(MemberError::NotMember(name)) if name == "nowhere"
    ));

    let url = format!("https://{}", server.local_addr());
    let _proxy_e = LiveProxy::start("east", "us-east", &url).await;
    let _proxy_w = LiveProxy::start("west", "us-west", &url).await;
    eventually_async("east's proxy reaches west's backend", WAIT, || async {
        get(port_e).await.and_then(|n| {
            (n == "echo-west")
                .then_some(())
                .ok_or(format!("answered by {n}"))
        })
    })
    .await;
    eventually_async("west's proxy serves", WAIT, || get(port_w)).await;
    assert_eq!(echo_n.count(), 0, "north is not a member yet");

    let load = Load::start(vec![port_e, port_w], Duration::from_millis(20), 100_000);

    // north joins through its Secret (in east, the controller's own cluster).
    let spec = MemberSpec {
        name: "north".into(),
        region: "eu-north".into(),
        zones: vec!["north-a".into()],
        network: String::new(),
        gateway_addresses: None,
    };
    let ep = MemberEndpoint {
        context: "north".into(),
        server: north_url.clone(),
        ca_data: None,
        insecure_skip_tls_verify: false,
        tls_server_name: None,
    };
    let kubeconfig = cli::remote_kubeconfig("north", &ep, &sb.admin_token("north").unwrap());
    let secret = meridian_controller::members::member_secret(NS, &spec, &kubeconfig);
    let secrets: Api<Secret> = Api::namespaced(east.clone(), NS);
    let joined_at = Instant::now();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    eventually("north's endpoint in east's snapshot", WAIT, || {
        north_clusters(&server).and_then(|n| (n == 1).then_some(()).ok_or(format!("{n}")))
    })
    .await;
    eventually(
        "a request through east's proxy reaches north's backend",
        WAIT,
        || echo_n.count() > 0,
    )
    .await;
    let join_secs = joined_at.elapsed().as_secs_f64();

    // north leaves: its endpoints stay for the grace, then go.
    let name = secret.metadata.name.clone().unwrap();
    let left_at = Instant::now();
    secrets
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "north's endpoint withdrawn from east's snapshot",
        WAIT + GRACE,
        || north_clusters(&server).and_then(|n| (n == 0).then_some(()).ok_or(format!("{n}"))),
    )
    .await;
    let withdrawn_after = left_at.elapsed();
    assert!(
        withdrawn_after >= GRACE,
        "north's endpoints were withdrawn after {withdrawn_after:?}, before the endpoint grace \
         ({GRACE:?})"
    );
    // East's proxy follows: once it applied the snapshot without north, north gets nothing.
    let gen_e = server.latest_generation("east").unwrap();
    eventually(
        "east's proxy serves the snapshot without north",
        WAIT,
        || _proxy_e.handle.generation() >= Some(gen_e),
    )
    .await;
    let after = echo_n.count();
    holds_for(
        "no request reaches north any more",
        Duration::from_secs(1),
        || echo_n.count() == after,
    )
    .await;

    let (ok, failures) = load.finish().await;
    eprintln!(
        "member join/leave: north's backend reached {join_secs:.2}s after its Secret was created; \
         its endpoints withdrawn {:.2}s after the Secret was deleted (grace {GRACE:?}); \
         {ok} requests ok, {} failed",
        withdrawn_after.as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 20, "the load loop ran ({ok} requests)");
    assert_eq!(
        get(port_e).await.unwrap(),
        "echo-west",
        "east keeps serving through west"
    );

    let _ = stop_follow.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), follow).await;
    ctl.shutdown().await;
    drop(sb);
}
