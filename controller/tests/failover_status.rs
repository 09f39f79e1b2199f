//! End-to-end tests of FailoverPolicy status and the cluster-level circuit breaker reporting,
//! against the in-process Kubernetes API sandbox:
//!
//! - policy status: Accepted, TargetNotFound, Invalid (naming the field), Conflicted (the older
//!   policy wins, the newer names it), observedGeneration, written once (no storm);
//! - an unreachable member cluster (its sandbox stopped): the Gateway serving its last-known
//!   endpoints gets `meridian.dev/StaleEndpoints`, the member-cluster metrics say so, and both
//!   clear when the grace withdraws the endpoints, when the cluster comes back, or when a
//!   FailoverPolicy's `staleEndpointTTL` expires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use meridian_controller::{ControllerHandle, StaticDataPlane};
use meridian_crds::mcs::ServiceExport;
use meridian_crds::meridian::FailoverPolicy;
use serde_json::{Value, json};

const CLASS: &str = "meridian";
const STALE: &str = "meridian.dev/StaleEndpoints";

async fn setup_gateway(client: &kube::Client) {
    apply::<GatewayClass>(client, gateway_class(CLASS, ME)).await;
    apply::<Gateway>(client, gateway_obj("infra", "gw", CLASS)).await;
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "meridian.dev/v1alpha1", "kind": "FailoverPolicy",
        "metadata": {"name": name, "namespace": "app"}, "spec": spec})
}

fn import_target(name: &str) -> Value {
    json!([{"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": name}])
}

/// `(Accepted status, reason, message, observedGeneration, targets as (name, applied, reason))`.
type Verdict = (
    String,
    String,
    String,
    Option<i64>,
    Vec<(String, bool, String)>,
);

async fn verdict(client: &kube::Client, name: &str) -> Result<Verdict, String> {
    let p = Api::<FailoverPolicy>::namespaced(client.clone(), "app")
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    let status = p.status.ok_or("no status")?;
    let c = cond(&status.conditions, "Accepted").ok_or("no Accepted")?;
    Ok((
        c.status.clone(),
        c.reason.clone(),
        c.message.clone(),
        c.observed_generation,
        status
            .targets
            .iter()
            .map(|t| (t.target_ref.name.clone(), t.applied, t.reason.clone()))
            .collect(),
    ))
}

async fn wait_verdict(client: &kube::Client, name: &str, ok: impl Fn(&Verdict) -> bool) -> Verdict {
    eventually_async(
        &format!("status of FailoverPolicy {name}"),
        WAIT,
        || async {
            let v = verdict(client, name).await?;
            if ok(&v) { Ok(v) } else { Err(format!("{v:?}")) }
        },
    )
    .await
}

fn policy_writes(ctl: &ControllerHandle, cluster: &str) -> u64 {
    ctl.metrics()
        .status_writes
        .with_label_values(&[cluster, "FailoverPolicy", "ok"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_status_accepted_not_found_invalid_and_conflicted() {
    let env = start_env(&[&["east", "west"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    // app/echo exported from west only: a ServiceImport target exists in east by export.
    let west = env.c("west");
    apply::<Service>(west, service("app", "echo")).await;
    apply::<EndpointSlice>(west, slice("app", "echo-1", "echo", &["10.9.0.1"], "a")).await;
    apply::<ServiceExport>(west, service_export("app", "echo")).await;
    let east = env.c("east").clone();
    setup_gateway(&east).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;

    // The older policy's name sorts last, so only its age can make it win.
    let first = apply::<FailoverPolicy>(
        &east,
        policy(
            "zz-first",
            json!({"targetRefs": import_target("echo"), "geoFence": {"regions": ["us-east"]}}),
        ),
    )
    .await;
    // creationTimestamp has whole seconds: the second policy must be created in a later one.
    let created = first.metadata.creation_timestamp.unwrap().0.as_second();
    eventually("the clock to pass zz-first's creation second", WAIT, || {
        k8s_openapi::jiff::Timestamp::now().as_second() > created
    })
    .await;
    apply::<FailoverPolicy>(
        &east,
        policy(
            "aa-second",
            json!({"targetRefs": [
                {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "echo"},
                {"group": "", "kind": "Service", "name": "absent"}]}),
        ),
    )
    .await;
    apply::<FailoverPolicy>(
        &east,
        policy("missing", json!({"targetRefs": import_target("nothing")})),
    )
    .await;
    apply::<FailoverPolicy>(
        &east,
        policy(
            "broken",
            json!({"targetRefs": import_target("echo"), "failback": {"slowStart": "soon"}}),
        ),
    )
    .await;

    let first = wait_verdict(&east, "zz-first", |v| v.0 == "True").await;
    assert_eq!(first.1, "Accepted");
    assert_eq!(first.3, Some(1), "observedGeneration");
    assert_eq!(first.4, [("echo".to_string(), true, String::new())]);
    assert!(first.2.contains("ServiceImport echo"), "{first:?}");

    let second = wait_verdict(&east, "aa-second", |v| v.1 == "Conflicted").await;
    assert_eq!(second.0, "False");
    assert!(
        second.2.contains("app/zz-first"),
        "names the older: {second:?}"
    );
    assert_eq!(
        second.4,
        [
            ("echo".to_string(), false, "Conflicted".to_string()),
            ("absent".to_string(), false, "TargetNotFound".to_string()),
        ]
    );

    let missing = wait_verdict(&east, "missing", |v| v.1 == "TargetNotFound").await;
    assert_eq!(missing.0, "False");
    assert!(missing.2.contains("nothing"), "{missing:?}");

    let broken = wait_verdict(&east, "broken", |v| v.1 == "Invalid").await;
    assert_eq!(broken.0, "False");
    assert!(broken.2.contains("failback.slowStart"), "{broken:?}");
    assert_eq!(
        broken.4,
        [("echo".to_string(), false, "Invalid".to_string())]
    );

    // The winner is the one in the snapshot: its geo-fence travels with the backend.
    eventually_async("zz-first's policy in the snapshot", WAIT, || async {
        let s = env.dp.snapshot("east").ok_or("no snapshot")?;
        let b = s
            .gateways
            .first()
            .and_then(|g| g.listeners.first())
            .and_then(|l| l.routes.first())
            .and_then(|r| r.rules.first())
            .and_then(|r| r.backends.first())
            .ok_or("no backend")?;
        match &b.target {
            meridian_model::snapshot::BackendTarget::Endpoints {
                failover: Some(f), ..
            } if f.geo_fence == ["us-east"] => Ok(()),
            t => Err(format!("{t:?}")),
        }
    })
    .await;

    // A spec change: observedGeneration follows; fixing the broken policy makes it Conflicted
    // (zz-first is older and targets the same ServiceImport).
    apply::<FailoverPolicy>(
        &east,
        policy(
            "broken",
            json!({"targetRefs": import_target("echo"), "failback": {"slowStart": "5s"}}),
        ),
    )
    .await;
    let fixed = wait_verdict(&east, "broken", |v| v.3 == Some(2)).await;
    assert_eq!(
        (fixed.0.as_str(), fixed.1.as_str()),
        ("False", "Conflicted")
    );

    // Deleting the winner: aa-second takes the ServiceImport over.
    delete::<FailoverPolicy>(&east, Some("app"), "zz-first").await;
    let second = wait_verdict(&east, "aa-second", |v| v.0 == "True").await;
    assert_eq!(
        second.4,
        [
            ("echo".to_string(), true, String::new()),
            ("absent".to_string(), false, "TargetNotFound".to_string()),
        ]
    );

    // Quiet now: no further policy status writes.
    let quiet = Duration::from_millis(1000);
    let writes = settles("policy status writes", WAIT, quiet, || {
        policy_writes(&env.ctl, "east")
    })
    .await;
    holds_for(
        "no policy status writes (write storm)",
        Duration::from_millis(1500),
        || policy_writes(&env.ctl, "east") == writes,
    )
    .await;
    assert!(writes >= 5, "every policy status was written: {writes}");
    env.shutdown().await;
}

/// east serves a Gateway routing to the ServiceImport `app/echo`, exported by east and
/// central (one endpoint each; central's is 10.7.0.2).
async fn serve_echo_from(east: &kube::Client, central: &kube::Client) {
    for (c, ip) in [(east, "10.7.0.1"), (central, "10.7.0.2")] {
        apply::<Service>(c, service("app", "echo")).await;
        apply::<EndpointSlice>(c, slice("app", "echo-1", "echo", &[ip], "a")).await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
    }
    setup_gateway(east).await;
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;
}

async fn served_clusters(dp: &Arc<StaticDataPlane>) -> Result<Vec<String>, String> {
    let s = dp.snapshot("east").ok_or("no snapshot")?;
    let mut cs: Vec<String> = endpoints(&s).into_iter().map(|e| e.cluster).collect();
    cs.sort();
    Ok(cs)
}

async fn wait_served(dp: &Arc<StaticDataPlane>, want: &[&str]) {
    eventually_async(
        &format!("east's snapshot serving {want:?}"),
        WAIT,
        || async {
            let cs = served_clusters(dp).await?;
            if cs == want {
                Ok(())
            } else {
                Err(format!("{cs:?}"))
            }
        },
    )
    .await;
}

/// The StaleEndpoints condition of east's Gateway: `Some((status, reason, message))`.
async fn stale_condition(east: &kube::Client) -> Option<(String, String, String)> {
    let gw = gateway(east, "infra", "gw").await;
    let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
    cond(&conds, STALE).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn gateway_conditions(east: &kube::Client) -> Vec<(String, String)> {
    let gw = gateway(east, "infra", "gw").await;
    gw.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect()
}

/// A sample of `name{cluster}` from the Prometheus text encoding (what `/metrics` serves).
fn metric(ctl: &ControllerHandle, name: &str, cluster: &str) -> Option<f64> {
    let prefix = format!("{name}{{cluster=\"{cluster}\"}} ");
    ctl.metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_endpoints_are_reported_until_the_grace_withdraws_them() {
    let grace = Duration::from_secs(4);
    let mut env = start_env(
        &[&["east"], &["central"]],
        |_| true,
        |cfg| cfg.endpoint_grace = grace,
    )
    .await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east").clone();
    let central = env.c("central").clone();
    serve_echo_from(&east, &central).await;
    wait_served(&env.dp, &["central", "east"]).await;
    eventually_async(
        "Gateway programmed without StaleEndpoints",
        WAIT,
        || async {
            let conds = gateway_conditions(&east).await;
            if conds.contains(&("Programmed".into(), "True".into())) {
                Ok(())
            } else {
                Err(format!("{conds:?}"))
            }
        },
    )
    .await;
    assert_eq!(stale_condition(&east).await, None);
    assert_eq!(
        metric(&env.ctl, "meridian_member_cluster_reachable", "central"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &env.ctl,
            "meridian_member_cluster_stale_endpoints",
            "central"
        ),
        Some(0.0)
    );
    let contact = metric(
        &env.ctl,
        "meridian_member_cluster_seconds_since_contact",
        "central",
    )
    .unwrap();
    assert!(contact < 2.0, "probed every 300 ms: {contact}");

    // central's API goes away.
    let stopped = std::time::Instant::now();
    env.sandboxes[1].take().unwrap().shutdown().await;
    let (status, reason, message) =
        eventually_async("StaleEndpoints on east's Gateway", WAIT, || async {
            stale_condition(&east)
                .await
                .ok_or_else(|| "no condition".to_string())
        })
        .await;
    let appeared = stopped.elapsed();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ClusterUnreachable")
    );
    for want in [
        "central",
        "unreachable since",
        "last contact",
        "withdrawn at",
    ] {
        assert!(message.contains(want), "{want:?} not in {message}");
    }
    assert!(!message.contains("east"), "{message}");
    assert!(appeared < grace, "reported after {appeared:?}");
    // The endpoints are still served (the data plane judges their health) and counted.
    assert_eq!(served_clusters(&env.dp).await.unwrap(), ["central", "east"]);
    assert_eq!(
        metric(&env.ctl, "meridian_member_cluster_reachable", "central"),
        Some(0.0)
    );
    assert_eq!(
        metric(&env.ctl, "meridian_controller_cluster_reachable", "central"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &env.ctl,
            "meridian_member_cluster_stale_endpoints",
            "central"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&env.ctl, "meridian_member_cluster_stale_endpoints", "east"),
        Some(0.0)
    );
    assert_eq!(
        metric(&env.ctl, "meridian_member_cluster_reachable", "east"),
        Some(1.0)
    );
    // Spec-defined conditions are unchanged.
    let conds = gateway_conditions(&east).await;
    assert!(
        conds.contains(&("Accepted".into(), "True".into())),
        "{conds:?}"
    );
    assert!(
        conds.contains(&("Programmed".into(), "True".into())),
        "{conds:?}"
    );
    let before = metric(
        &env.ctl,
        "meridian_member_cluster_seconds_since_contact",
        "central",
    )
    .unwrap();
    // Kept: the gauge measures elapsed wall time, so wall time must pass for it to grow.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = metric(
        &env.ctl,
        "meridian_member_cluster_seconds_since_contact",
        "central",
    )
    .unwrap();
    assert!(
        after >= before + 0.5,
        "seconds since contact grows: {before} → {after}"
    );

    // Past the grace the endpoints are withdrawn and the condition goes with them.
    wait_served(&env.dp, &["east"]).await;
    eventually_async("StaleEndpoints removed after the grace", WAIT, || async {
        match stale_condition(&east).await {
            None => Ok(()),
            Some(c) => Err(format!("{c:?}")),
        }
    })
    .await;
    assert!(
        stopped.elapsed() >= grace,
        "withdrawn before the grace: {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        metric(
            &env.ctl,
            "meridian_member_cluster_stale_endpoints",
            "central"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&env.ctl, "meridian_member_cluster_reachable", "central"),
        Some(0.0)
    );
    let conds = gateway_conditions(&east).await;
    assert!(
        conds.contains(&("Programmed".into(), "True".into())),
        "{conds:?}"
    );
    env.shutdown().await;
}

/// central's API (persisted, same port) stops and comes back within the grace: the condition
/// appears and is removed once central is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_endpoints_condition_clears_when_the_cluster_is_back() {
    let dir = std::env::temp_dir().join(format!("meridian-stale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (east_sb, central_sb) = east_and_persisted_central(&dir).await;
    let port = central_sb.clusters()[0].addr.port();
    let east = client_for(&east_sb.clusters()[0].url);
    let central = client_for(&central_sb.clusters()[0].url);
    for c in [&east, &central] {
        install_crds(c).await;
        for ns in ["infra", "app"] {
            apply::<k8s_openapi::api::core::v1::Namespace>(
                c,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        }
    }
    serve_echo_from(&east, &central).await;
    let members = [("east", &east), ("central", &central)]
        .into_iter()
        .map(|(n, c)| meridian_controller::MemberCluster {
            name: n.into(),
            region: region_of(n),
            zones: vec![],
            client: c.clone(),
            network: String::new(),
        })
        .collect();
    let dp = StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
    let mut cfg = fast_config(members, dp.clone());
    cfg.endpoint_grace = Duration::from_secs(120);
    let ctl = meridian_controller::Controller::start(cfg).await.unwrap();
    wait_served(&dp, &["central", "east"]).await;

    central_sb.shutdown().await;
    eventually_async("StaleEndpoints on east's Gateway", WAIT, || async {
        match stale_condition(&east).await {
            Some(c) if c.2.contains("central") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        metric(&ctl, "meridian_member_cluster_stale_endpoints", "central"),
        Some(1.0)
    );

    let central_sb = meridian_sandbox::Sandbox::start(persisted_central(&dir, port))
        .await
        .unwrap();
    eventually_async(
        "StaleEndpoints removed once central is back",
        WAIT,
        || async {
            match stale_condition(&east).await {
                None => Ok(()),
                Some(c) => Err(format!("{c:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        metric(&ctl, "meridian_member_cluster_reachable", "central"),
        Some(1.0)
    );
    assert_eq!(
        metric(&ctl, "meridian_member_cluster_stale_endpoints", "central"),
        Some(0.0)
    );
    wait_served(&dp, &["central", "east"]).await;
    let conds = gateway_conditions(&east).await;
    assert!(
        conds.contains(&("Programmed".into(), "True".into())),
        "{conds:?}"
    );
    ctl.shutdown().await;
    central_sb.shutdown().await;
    east_sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A FailoverPolicy's staleEndpointTTL drops central's endpoints for its target long before the
/// controller-wide grace, with nothing but the clock triggering the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_endpoint_ttl_drops_endpoints_before_the_grace() {
    let mut env = start_env(
        &[&["east"], &["central"]],
        |_| true,
        |cfg| cfg.endpoint_grace = Duration::from_secs(120),
    )
    .await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east").clone();
    let central = env.c("central").clone();
    serve_echo_from(&east, &central).await;
    apply::<FailoverPolicy>(
        &east,
        policy(
            "ttl",
            json!({"targetRefs": import_target("echo"), "staleEndpointTTL": "2s"}),
        ),
    )
    .await;
    wait_verdict(&east, "ttl", |v| v.0 == "True").await;
    wait_served(&env.dp, &["central", "east"]).await;

    let stopped = std::time::Instant::now();
    env.sandboxes[1].take().unwrap().shutdown().await;
    wait_served(&env.dp, &["east"]).await;
    let dropped = stopped.elapsed();
    assert!(
        dropped >= Duration::from_secs(2) && dropped < Duration::from_secs(10),
        "dropped after {dropped:?} (TTL 2 s, grace 120 s)"
    );
    eventually_async(
        "no StaleEndpoints once the TTL dropped them",
        WAIT,
        || async {
            match stale_condition(&east).await {
                None => Ok(()),
                Some(c) => Err(format!("{c:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        metric(
            &env.ctl,
            "meridian_member_cluster_stale_endpoints",
            "central"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&env.ctl, "meridian_member_cluster_reachable", "central"),
        Some(0.0)
    );
    env.shutdown().await;
}
