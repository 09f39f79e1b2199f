//! The controller against member API servers that go away and come back, with every status
//! version the API server stored recorded by a watch:
//!
//! - a Gateway's cluster is down while a member cluster's outage makes its status
//!   `StaleEndpoints=True`; the member comes back first, then the Gateway's cluster: the outdated
//!   status never lands (it is superseded while still queued), and the final status is right;
//! - an API server that answers plain-text `404 page not found` while it starts: the status
//!   write is kept (not dropped as "object deleted") and lands promptly once the server is
//!   ready, although its backoff had grown to seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use meridian_controller::{ClusterGatewayRef, ControllerHandle, ProgrammedState, ProxyRefusal};
use meridian_crds::mcs::ServiceExport;
use tokio::time::Instant;

const CLASS: &str = "meridian";
const STALE: &str = "meridian.dev/StaleEndpoints";

/// One stored version of `infra/gw`: its resourceVersion and `(type, status, reason)` of each
/// condition.
#[derive(Clone, Debug)]
struct Version {
    resource_version: String,
    conditions: Vec<(String, String, String)>,
}

impl Version {
    fn has(&self, type_: &str, status: &str) -> bool {
        self.conditions
            .iter()
            .any(|(t, s, _)| t == type_ && s == status)
    }
}

/// Records every version of `infra/gw` the API server stores. The sandbox keeps its watch
/// history across a stop, so the resumed watch sees each version even after an outage.
fn record(client: &kube::Client) -> (Arc<Mutex<Vec<Version>>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Gateway> = Api::namespaced(client.clone(), "infra");
    let sink = Arc::clone(&log);
    let task = tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=gw");
        let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
        while let Some(gw) = stream.next().await {
            let Ok(gw) = gw else { continue };
            let conditions = gw
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.type_, c.status, c.reason))
                .collect();
            sink.lock().unwrap().push(Version {
                resource_version: gw.metadata.resource_version.unwrap_or_default(),
                conditions,
            });
        }
    });
    (log, task)
}

/// Waits until the recorder has seen the version the API server holds now.
async fn caught_up(client: &kube::Client, log: &Mutex<Vec<Version>>) {
    let rv = gateway(client, "infra", "gw")
        .await
        .metadata
        .resource_version
        .unwrap();
    eventually_async("the recorder to catch up", WAIT, || async {
        if log.lock().unwrap().iter().any(|v| v.resource_version == rv) {
            Ok(())
        } else {
            Err(format!("not seen yet: {rv}"))
        }
    })
    .await;
}

fn gateway_writes(ctl: &ControllerHandle, cluster: &str, result: &str) -> u64 {
    ctl.metrics()
        .status_writes
        .with_label_values(&[cluster, "Gateway", result])
        .get()
}

fn pending(ctl: &ControllerHandle, cluster: &str) -> i64 {
    ctl.metrics()
        .status_pending
        .with_label_values(&[cluster])
        .get()
}

/// `meridian_member_cluster_stale_endpoints{cluster}`, set at the end of every pass.
fn stale_endpoints(ctl: &ControllerHandle, cluster: &str) -> Option<i64> {
    let prefix = format!("meridian_member_cluster_stale_endpoints{{cluster=\"{cluster}\"}} ");
    ctl.metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
}

async fn conditions(client: &kube::Client) -> Vec<(String, String, String)> {
    gateway(client, "infra", "gw")
        .await
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_status_computed_while_the_gateways_cluster_was_down_never_lands_late() {
    let env = start_env(
        &[&["east"], &["central"]],
        |_| true,
        |cfg| cfg.endpoint_grace = Duration::from_secs(120),
    )
    .await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east").clone();
    let central = env.c("central").clone();
    // east's Gateway serves the ServiceImport app/echo, exported by central only: east's own
    // outage leaves it nothing stale, central's makes it StaleEndpoints=True.
    apply::<Service>(&central, service("app", "echo")).await;
    apply::<EndpointSlice>(&central, slice("app", "echo-1", "echo", &["10.7.0.2"], "a")).await;
    apply::<ServiceExport>(&central, service_export("app", "echo")).await;
    apply::<GatewayClass>(&east, gateway_class(CLASS, ME)).await;
    apply::<Gateway>(&east, gateway_obj("infra", "gw", CLASS)).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;
    eventually_async(
        "east's Gateway programmed, serving central",
        WAIT,
        || async {
            let c = conditions(&east).await;
            let served = env.dp.snapshot("east").map(|s| endpoints(&s).len());
            if c.iter().any(|(t, s, _)| t == "Programmed" && s == "True") && served == Some(1) {
                Ok(())
            } else {
                Err(format!("{c:?}, endpoints {served:?}"))
            }
        },
    )
    .await;
    let (log, recorder) = record(&east);
    caught_up(&east, &log).await;
    let east_sb = env.sandboxes[0].as_ref().unwrap();
    let central_sb = env.sandboxes[1].as_ref().unwrap();

    // The Gateway's own cluster goes down, then the member: StaleEndpoints=True is computed
    // for east's Gateway and cannot be written.
    east_sb.stop_cluster("east").await.unwrap();
    let failed = gateway_writes(&env.ctl, "east", "error");
    central_sb.stop_cluster("central").await.unwrap();
    eventually_async("a failed write of the stale status", WAIT, || async {
        let n = gateway_writes(&env.ctl, "east", "error");
        if n > failed {
            Ok(())
        } else {
            Err(format!("{n} failed writes"))
        }
    })
    .await;
    assert_eq!(
        pending(&env.ctl, "east"),
        1,
        "the stale status waits for east"
    );
    assert_eq!(stale_endpoints(&env.ctl, "central"), Some(1));

    // central comes back (east still down): the stale status is outdated before it landed.
    central_sb.restart_cluster("central", None).await.unwrap();
    // A pass with central reachable: it no longer counts central's endpoints as stale.
    eventually_async("a pass with central back", WAIT, || async {
        match stale_endpoints(&env.ctl, "central") {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Then east: whatever is written now must not carry StaleEndpoints=True.
    east_sb.restart_cluster("east", None).await.unwrap();
    let back = Instant::now();
    eventually_async("east's writer idle", WAIT, || async {
        let n = pending(&env.ctl, "east");
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} pending"))
        }
    })
    .await;
    let settled = back.elapsed();
    assert!(settled < Duration::from_secs(5), "took {settled:?}");
    let c = conditions(&east).await;
    assert!(!c.iter().any(|(t, _, _)| t == STALE), "{c:?}");
    assert!(
        c.iter().any(|(t, s, _)| t == "Programmed" && s == "True"),
        "{c:?}"
    );
    caught_up(&east, &log).await;
    let versions = log.lock().unwrap().clone();
    let late: Vec<&Version> = versions.iter().filter(|v| v.has(STALE, "True")).collect();
    assert!(
        late.is_empty(),
        "a status computed while central was down landed after it was back: {late:?}"
    );
    recorder.abort();
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_by_a_starting_api_server_lands_promptly_once_it_is_ready() {
    let env = start_env(
        &[&["east"]],
        |_| true,
        // Long backoffs: only the event (the API answering again) can make the write prompt.
        |cfg| cfg.write_backoff_max = Duration::from_secs(30),
    )
    .await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east").clone();
    apply::<GatewayClass>(&east, gateway_class(CLASS, ME)).await;
    apply::<Gateway>(&east, gateway_obj("infra", "gw", CLASS)).await;
    eventually_async("the Gateway programmed", WAIT, || async {
        let c = conditions(&east).await;
        if c.iter().any(|(t, s, _)| t == "Programmed" && s == "True") {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;

    // The API server restarts and answers plain-text 404s while it starts; meanwhile the
    // proxies refuse the configuration, so the Gateway's status must change.
    let sb = env.sandboxes[0].as_ref().unwrap();
    sb.stop_cluster("east").await.unwrap();
    sb.restart_cluster("east", None).await.unwrap();
    sb.set_starting("east", None).unwrap();
    env.dp.set_programmed(
        ClusterGatewayRef::new("east", "infra", "gw"),
        Some(ProgrammedState::Refused(ProxyRefusal::new(
            "p-1",
            "bad listener",
        ))),
    );
    // Five attempts: the next one is due 4 s after the last.
    eventually_async("five not-ready attempts", WAIT, || async {
        let n = gateway_writes(&env.ctl, "east", "not_ready");
        if n >= 5 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    assert_eq!(gateway_writes(&env.ctl, "east", "gone"), 0, "not dropped");
    assert_eq!(pending(&env.ctl, "east"), 1, "kept");

    sb.set_starting("east", Some(Duration::ZERO)).unwrap();
    let ready = Instant::now();
    eventually_async("Programmed=False/Invalid written", WAIT, || async {
        let c = conditions(&east).await;
        if c.iter()
            .any(|(t, s, r)| t == "Programmed" && s == "False" && r == "Invalid")
        {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    let took = ready.elapsed();
    assert!(took < Duration::from_secs(2), "landed {took:?} after ready");
    env.shutdown().await;
}
