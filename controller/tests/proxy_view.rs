//! The proxies' own health view reaches `meridian status` and `meridian explain`: a proxy
//! stand-in (a distribution [`Client`] that accepts every snapshot) reports a measured region
//! order and an ejected endpoint with its traffic counters; the controller's `/v1/status` shows
//! both, and `/v1/explain` skips the ejected endpoint the way the proxy does and says where the
//! region order came from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meridian_controller::inspect::cli::{
    ControllerConn, ExplainArgs, Output, fetch_explain, fetch_status,
};
use meridian_controller::inspect::{ExplainView, StatusView};
use meridian_controller::{AddressPools, Controller, DistributedDataPlane, MemberCluster};
use meridian_distribution::{
    Client as ProxyClient, ClientConfig, DistributionServer, EjectedEndpoint, EjectionReason,
    Hello, NearestRegion, ProxyHealth, Refused, ServerConfig, Target,
};
use meridian_model::Snapshot;
use meridian_model::explain::{EndpointState, OrderSource};
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

/// A proxy that applies everything and reports whatever health view the test sets.
struct Reporting {
    health: Arc<Mutex<Option<ProxyHealth>>>,
}

impl Target for Reporting {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        Ok(snapshot.generation)
    }

    fn health(&self) -> Option<ProxyHealth> {
        self.health.lock().unwrap().clone()
    }
}

fn conn(admin: std::net::SocketAddr) -> ControllerConn {
    ControllerConn {
        controller: Some(format!("http://{admin}")),
        token_file: None,
        state_dir: PathBuf::from("/nonexistent"),
    }
}

async fn explain(admin: std::net::SocketAddr) -> ExplainView {
    fetch_explain(&ExplainArgs {
        conn: conn(admin),
        gateway: "infra/gw".parse().unwrap(),
        context: Some("east".into()),
        host: "echo.example.com".into(),
        path: "/".into(),
        method: "GET".into(),
        headers: Vec::new(),
        port: None,
        fail: None,
        output: Output::Json,
    })
    .await
    .unwrap()
}

/// (zone, state) of each step of the order from the proxy's locality.
fn order(v: &ExplainView) -> Vec<(String, EndpointState)> {
    v.clusters[0].explanation.backends[0].from[0]
        .order
        .iter()
        .map(|s| (s.endpoint.zone.clone(), s.endpoint.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_report_shows_in_status_and_reorders_explain() {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let client = client_for(&sb.clusters()[0].url);
    install_crds(&client).await;
    apply::<Namespace>(
        &client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "infra"}}),
    )
    .await;
    apply::<GatewayClass>(&client, gateway_class("meridian", ME)).await;
    apply::<gateway_api::gateways::Gateway>(&client, gateway_obj("infra", "gw", "meridian")).await;
    apply::<Service>(&client, service("infra", "echo")).await;
    apply::<EndpointSlice>(
        &client,
        slice("infra", "echo-a", "echo", &["127.0.0.11"], "us-east-1a"),
    )
    .await;
    apply::<EndpointSlice>(
        &client,
        slice("infra", "echo-b", "echo", &["127.0.0.12"], "us-east-1b"),
    )
    .await;
    apply::<HttpRoute>(
        &client,
        route_obj("infra", "echo", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;

    let server = Arc::new(
        DistributionServer::start(ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca()))
            .await
            .unwrap(),
    );
    let dp = DistributedDataPlane::new(
        server.clone(),
        AddressPools::default(),
        Duration::from_secs(10),
    );
    let member = MemberCluster::new(
        "east",
        "us-east",
        vec!["us-east-1a".into(), "us-east-1b".into()],
        client.clone(),
    );
    let mut cfg = meridian_controller::ControllerConfig::new(vec![member], dp);
    cfg.allow_loopback_endpoints = true;
    cfg.debounce = Duration::from_millis(20);
    cfg.startup_grace = Duration::from_secs(1);
    cfg.admin = Some("127.0.0.1:0".parse().unwrap());
    let ctl = Controller::start(cfg).await.unwrap();
    ctl.wait_ready(WAIT).await.unwrap();
    let admin = ctl.admin_addr().unwrap();

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
    let mut pcfg = ClientConfig::new(
        format!("https://{}", server.local_addr()),
        hello,
        identity,
        None,
    );
    pcfg.traffic_interval = Duration::from_millis(100);
    let proxy = ProxyClient::new(pcfg).unwrap();
    let health = Arc::new(Mutex::new(Some(ProxyHealth::default())));
    let target = Reporting {
        health: health.clone(),
    };
    let running = tokio::spawn(async move {
        proxy.run(&target).await;
    });

    // Nothing ejected yet: the proxy's own zone first, other regions alphabetical.
    eventually_async("the proxy's empty report in /v1/status", WAIT, || async {
        let s: StatusView = fetch_status(&conn(admin))
            .await
            .map_err(|e| e.to_string())?;
        let p = s.proxies.first().ok_or("no proxy")?;
        (p.connected && p.health_reported && p.ejected_endpoints == Some(0))
            .then_some(())
            .ok_or(format!("{p:?}"))
    })
    .await;
    eventually_async("explain serves from us-east-1a first", WAIT, || async {
        let v = explain(admin).await;
        let steps = order(&v);
        (steps.first().map(|s| s.0.as_str()) == Some("us-east-1a"))
            .then_some(())
            .ok_or(format!("{steps:?}"))
    })
    .await;
    let before = explain(admin).await;
    assert_eq!(
        before.clusters[0].explanation.backends[0].from[0]
            .region_order
            .source,
        OrderSource::Alphabetical
    );

    // The proxy measures eu-central and ejects its own zone's endpoint.
    *health.lock().unwrap() = Some(ProxyHealth {
        nearest_regions: vec![NearestRegion {
            region: "eu-central".into(),
            rtt_ms: Some(42.5),
        }],
        ejected: vec![EjectedEndpoint {
            backend: "infra/echo:80".into(),
            address: "127.0.0.11:8080".into(),
            since: "2026-12-06T12:01:00Z".into(),
            reason: EjectionReason::Probe,
            failures: 5,
        }],
        truncated: false,
    });
    let status = eventually_async("the ejection in /v1/status", WAIT, || async {
        let s: StatusView = fetch_status(&conn(admin))
            .await
            .map_err(|e| e.to_string())?;
        let p = s.proxies.first().ok_or("no proxy")?;
        (p.ejected_endpoints == Some(1))
            .then_some(s.clone())
            .ok_or(format!("{p:?}"))
    })
    .await;
    let p = &status.proxies[0];
    assert_eq!(p.nearest_regions.len(), 1);
    assert_eq!(p.nearest_regions[0].region, "eu-central");
    assert_eq!(p.nearest_regions[0].rtt_ms, Some(42.5));
    let echo = status.backends[0]
        .backends
        .iter()
        .find(|b| b.name == "infra/echo:80")
        .expect("backend in status");
    assert_eq!(echo.ejected.len(), 1, "{echo:?}");
    assert_eq!(echo.ejected[0].address, "127.0.0.11:8080");
    assert_eq!(echo.ejected[0].by[0].proxy, "east-1");
    assert_eq!(echo.ejected[0].by[0].reason, "probe");
    assert_eq!(echo.ejected[0].by[0].failures, 5);
    let zone_a = echo.zones.iter().find(|z| z.zone == "us-east-1a").unwrap();
    assert_eq!(zone_a.ejected, 1);
    // The tier in use skips what the proxy ejected: its region's other zone.
    assert_eq!(echo.tiers[0].tier, Some(1), "{:?}", echo.tiers);
    // The table names it too.
    let table = meridian_controller::inspect::cli::render_status(&status);
    assert!(table.contains("EJECTED BY PROXIES"), "{table}");
    assert!(table.contains("eu-central 42.5ms"), "{table}");

    // Explain: the other zone first, the ejected endpoint only as the last resort, with who,
    // why and since; the order's source is the proxy's measurement.
    let after = explain(admin).await;
    assert_eq!(
        order(&after),
        [
            ("us-east-1b".to_string(), EndpointState::Healthy),
            ("us-east-1a".to_string(), EndpointState::Ejected)
        ]
    );
    let from = &after.clusters[0].explanation.backends[0].from[0];
    assert_eq!(from.region_order.source, OrderSource::Measured);
    assert_eq!(from.region_order.measured_by.as_deref(), Some("east-1"));
    let by = &from.order[1].endpoint.ejected_by;
    assert_eq!(by[0].since, "2026-12-06T12:01:00Z");
    let text = meridian_controller::inspect::cli::render_explain(&after);
    assert!(
        text.contains("ejected on east-1 (probe since 2026-12-06T12:01:00Z, 5 failures)"),
        "{text}"
    );
    assert!(text.contains("as proxy east-1 measured"), "{text}");

    running.abort();
    ctl.shutdown().await;
    sb.shutdown().await;
}
