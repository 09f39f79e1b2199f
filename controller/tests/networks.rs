//! Multi-network member clusters through the running controller: the data plane's east-west
//! listeners feed translation, their coming and going re-translates, endpoint-only changes
//! reach both the east-west endpoints and the serving side's east-west section, and what is
//! left out for lack of listeners is counted. Sandboxes on loopback; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meridian_controller::{ControllerHandle, StaticDataPlane};
use meridian_crds::mcs::ServiceExport;
use meridian_model::snapshot::Endpoint;
use serde_json::json;

const CLASS: &str = "meridian";
const ECHO: &str = "app/echo:80 (ServiceImport)";

fn metric(ctl: &ControllerHandle, name: &str, cluster: &str) -> Option<f64> {
    let prefix = format!("{name}{{cluster=\"{cluster}\"}} ");
    ctl.metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
}

/// `(address:port, cluster, ready, east_west)` of every endpoint of east's snapshot.
fn east_endpoints(dp: &Arc<StaticDataPlane>) -> Result<Vec<(String, String, bool, bool)>, String> {
    let s = dp.snapshot("east").ok_or("no snapshot of east")?;
    Ok(endpoints(&s)
        .iter()
        .map(|e: &Endpoint| {
            (
                format!("{}:{}", e.address, e.port),
                e.cluster.clone(),
                e.ready,
                e.east_west,
            )
        })
        .collect())
}

/// `(address:port, ready)` of central's east-west section entry for the import.
fn central_section(dp: &Arc<StaticDataPlane>) -> Result<Vec<(String, bool)>, String> {
    let s = dp.snapshot("central").ok_or("no snapshot of central")?;
    let b = s
        .east_west
        .iter()
        .find(|b| b.name == ECHO)
        .ok_or_else(|| format!("no east-west entry for {ECHO}: {:?}", s.east_west))?;
    Ok(b.endpoints
        .iter()
        .map(|e| (format!("{}:{}", e.address, e.port), e.ready))
        .collect())
}

async fn wait_east(dp: &Arc<StaticDataPlane>, want: &[(&str, &str, bool, bool)]) {
    let want: Vec<(String, String, bool, bool)> = want
        .iter()
        .map(|(a, c, r, e)| (a.to_string(), c.to_string(), *r, *e))
        .collect();
    eventually_async(&format!("east's endpoints {want:?}"), WAIT, || async {
        let got = east_endpoints(dp)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn east_west_listeners_and_endpoint_changes_reach_the_snapshots() {
    let env = start_env(
        &[&["central", "east"]],
        |_| true,
        |cfg| {
            for c in &mut cfg.clusters {
                c.network = if c.name == "central" { "b" } else { "a" }.into();
            }
        },
    )
    .await;
    let (east, central) = (env.c("east").clone(), env.c("central").clone());
    for (c, ip) in [(&east, "10.7.0.1"), (&central, "10.7.0.2")] {
        apply::<Service>(c, service("app", "echo")).await;
        apply::<EndpointSlice>(c, slice("app", "echo-1", "echo", &[ip], "a")).await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
    }
    apply::<GatewayClass>(&east, gateway_class(CLASS, ME)).await;
    apply::<Gateway>(&east, gateway_obj("infra", "gw", CLASS)).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;

    // Central has no proxy with an east-west listener: its endpoint is left out of east's
    // snapshot and counted; central still learns what to serve (it has no Gateway at all).
    wait_east(&env.dp, &[("10.7.0.1:8080", "east", true, false)]).await;
    eventually_async("central's section", WAIT, || async {
        let s = central_section(&env.dp)?;
        (s == [("10.7.0.2:8080".to_string(), true)])
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    eventually_async("the missing-backend gauge", WAIT, || async {
        let m = metric(&env.ctl, "meridian_east_west_missing_backends", "east");
        (m == Some(1.0)).then_some(()).ok_or(format!("{m:?}"))
    })
    .await;

    // A central proxy with a listener connects: the data plane ticks, east reaches central
    // through it.
    let listener: SocketAddr = "192.0.2.7:15443".parse().unwrap();
    env.dp
        .set_east_west("central", vec![(listener, "central-a".into())]);
    wait_east(
        &env.dp,
        &[
            ("192.0.2.7:15443", "central", true, true),
            ("10.7.0.1:8080", "east", true, false),
        ],
    )
    .await;
    assert_eq!(
        metric(&env.ctl, "meridian_east_west_missing_backends", "east"),
        Some(0.0)
    );

    // Central's endpoint turns not ready (an EndpointSlice change only): east's east-west
    // endpoint follows, and so does central's section.
    let endpoint_passes = || {
        env.ctl
            .metrics()
            .translations
            .with_label_values(&["endpoints"])
            .get()
    };
    let before = endpoint_passes();
    apply::<EndpointSlice>(
        &central,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": "app",
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.7.0.2"], "conditions": {"ready": false}, "zone": "a"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    )
    .await;
    wait_east(
        &env.dp,
        &[
            ("192.0.2.7:15443", "central", false, true),
            ("10.7.0.1:8080", "east", true, false),
        ],
    )
    .await;
    eventually_async("central's section follows", WAIT, || async {
        let s = central_section(&env.dp)?;
        (s == [("10.7.0.2:8080".to_string(), false)])
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert!(
        endpoint_passes() > before,
        "the EndpointSlice change did not take the endpoint-only path"
    );

    // The proxy leaves: central's endpoints are unreachable again.
    env.dp.set_east_west("central", vec![]);
    wait_east(&env.dp, &[("10.7.0.1:8080", "east", true, false)]).await;
    env.shutdown().await;
}
