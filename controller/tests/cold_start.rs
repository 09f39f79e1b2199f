//! A cold start at scale against the sandbox: the world (one Gateway, N HTTPRoutes with their
//! Services) is in the API before the controller starts; the controller translates it in full
//! once, writes every status, and then sees the echoes of its own writes and the Gateway's
//! `Programmed` flip. Those must cost passes proportional to what changed: the metrics' count
//! of incremental passes and the per-pass log (`MERIDIAN_LOG=meridian_controller::controller=debug`)
//! show what each did. Echoes left waiting once the writes are done are noted by a pass of
//! their own, not by the next change's. Routes default to 300 (debug builds); `COLD_START_ROUTES` sets another
//! count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::ListParams;
use meridian_controller::Controller;
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

const CLASS: &str = "meridian";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_echoes_translate_no_route() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let routes: usize = std::env::var("COLD_START_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["c0"]))
        .await
        .unwrap();
    let ep = &sb.clusters()[0];
    let c = client_for(&ep.url);
    install_crds(&c).await;
    for ns in ["infra", "app"] {
        apply::<k8s_openapi::api::core::v1::Namespace>(
            &c,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    apply::<GatewayClass>(&c, gateway_class(CLASS, ME)).await;
    apply::<Gateway>(&c, gateway_obj("infra", "gw", CLASS)).await;
    let mut i = 0;
    while i < routes {
        let batch: Vec<_> = (i..routes.min(i + 32))
            .map(|n| {
                let c = c.clone();
                async move {
                    let name = format!("r{n}");
                    apply::<Service>(&c, service("app", &name)).await;
                    let mut r = route_obj("app", &name, ("infra", "gw"), service_ref(&name, 80));
                    r["spec"]["hostnames"] = json!([format!("h{n}.example.com")]);
                    apply::<HttpRoute>(&c, r).await;
                }
            })
            .collect();
        futures::future::join_all(batch).await;
        i += 32;
    }

    // As the distributed data plane at a cold start: no proxy has connected yet (no address;
    // within the reconnect grace the state is Unknown).
    let dp = meridian_controller::StaticDataPlane::new(vec![]);
    let gw_ref = meridian_controller::ClusterGatewayRef::new(&ep.name, "infra", "gw");
    dp.set_programmed(
        gw_ref.clone(),
        Some(meridian_controller::ProgrammedState::Unknown),
    );
    let members = vec![meridian_controller::MemberCluster {
        name: ep.name.clone(),
        region: region_of(&ep.name),
        zones: vec![],
        client: c.clone(),
        network: String::new(),
    }];
    let started = Instant::now();
    let ctl = Controller::start(fast_config(members, dp.clone()))
        .await
        .unwrap();
    let routes_api: Api<HttpRoute> = Api::namespaced(c.clone(), "app");
    let gateways: Api<Gateway> = Api::namespaced(c.clone(), "infra");
    let want = i32::try_from(routes).unwrap();
    all_accepted(&routes_api, routes).await;
    let first = started.elapsed();
    // The proxy connects (an address), then acknowledges.
    dp.set_addresses(vec!["127.0.0.1".parse().unwrap()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    dp.set_programmed(gw_ref.clone(), None);
    meridian_test_support::eventually_async(
        "the Gateway Programmed with all routes attached",
        Duration::from_secs(120),
        || async {
            let gw = gateways.get("gw").await.ok()?;
            let status = gw.status?;
            let programmed = status
                .conditions
                .as_deref()
                .and_then(|cs| cond(cs, "Programmed"))
                .is_some_and(|c| c.status == "True");
            let attached = status.listeners?.first()?.attached_routes;
            (programmed && attached == want).then_some(())
        },
    )
    .await;
    let converged = started.elapsed();
    // Let the last echoes arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // No change comes after them: the echoes waiting to be noted get a pass of their own (the
    // first real change must not pay for them), which translates nothing (asserted below).
    meridian_test_support::eventually(
        "the echoes noted without another change",
        Duration::from_secs(10),
        || ctl.metrics().status_events_waiting.get() == 0,
    )
    .await;
    let metrics = ctl.metrics().encode();
    let count = |label: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("meridian_controller_translations_total")
                    && l.contains(&format!("mode=\"{label}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (full, incremental) = (count("full"), count("incremental"));
    let objects = |label: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("meridian_controller_incremental_objects_total")
                    && l.contains(&format!("object=\"{label}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (routes_translated, gateways_translated) = (objects("route"), objects("gateway"));
    println!(
        "{routes} routes: all Accepted after {first:?}, Programmed after {converged:?}; {full} full, {incremental} incremental passes; incremental passes translated {routes_translated} routes, {gateways_translated} Gateway statuses"
    );
    for l in metrics.lines().filter(|l| l.contains("status_events")) {
        println!("{l}");
    }
    // Echoes of our writes, the address arriving and the Programmed flip: no route is
    // translated again after the first full pass (its echoes are recognised).
    assert_eq!(
        routes_translated, 0.0,
        "routes translated again after the full pass"
    );
    assert!(
        incremental >= 1.0,
        "the address and the flip were incremental passes"
    );
    ctl.shutdown().await;
    sb.shutdown().await;
}

/// Waits until every one of `n` routes is Accepted by us.
async fn all_accepted(api: &Api<HttpRoute>, n: usize) {
    meridian_test_support::eventually_async(
        "every route Accepted",
        Duration::from_secs(120),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            let accepted = list
                .items
                .iter()
                .filter(|r| {
                    r.status.as_ref().is_some_and(|s| {
                        s.parents.iter().any(|p| {
                            p.controller_name == ME
                                && cond(&p.conditions, "Accepted")
                                    .is_some_and(|c| c.status == "True")
                        })
                    })
                })
                .count();
            (accepted == n).then_some(())
        },
    )
    .await;
}
