//! End-to-end tests: the controller against the in-process Kubernetes API sandbox.
//!
//! Each test starts its own sandbox(es) and controller with a [`StaticDataPlane`], applies
//! manifests with kube-rs, and waits (bounded, see `common::WAIT`) for the status and snapshots
//! the Gateway API behaviour catalogue requires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use meridian_crds::mcs::ServiceExport;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLASS: &str = "meridian";

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Sum of status write attempts over every cluster.
fn write_attempts(env: &Env) -> u64 {
    env.clients
        .keys()
        .map(|c| env.ctl.metrics().status_write_attempts(c))
        .sum()
}

/// Waits until no status write happens for 500 ms and no echo waits for its pass (it comes
/// 250 ms after the last echo, which a loaded machine may deliver late), then asserts that
/// neither a status write nor a reconcile pass happens for 2 s more (checked throughout, not
/// only at the end).
async fn assert_no_write_storm(env: &Env) {
    let quiet = Duration::from_millis(500);
    settles("status writes", WAIT, quiet, || write_attempts(env)).await;
    eventually("the echoes noted", WAIT, || {
        env.ctl.metrics().status_events_waiting.get() == 0
    })
    .await;
    // Writes the echoes' pass may have started (a confirmed Gateway's status again) are over.
    let before = settles("status writes", WAIT, quiet, || write_attempts(env)).await;
    let passes = env.ctl.passes();
    holds_for(
        "no status writes or passes during a quiet period",
        Duration::from_secs(2),
        || {
            let now = (write_attempts(env), env.ctl.passes());
            if now == (before, passes) {
                Ok(())
            } else {
                Err(format!(
                    "(writes, passes) went from {:?} to {now:?}",
                    (before, passes)
                ))
            }
        },
    )
    .await;
}

async fn setup_gateway(client: &kube::Client) {
    apply::<GatewayClass>(client, gateway_class(CLASS, ME)).await;
    apply::<Gateway>(client, gateway_obj("infra", "gw", CLASS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_route_status_and_snapshot() {
    let env = start_env(
        &[&["east", "west", "central"]],
        |_| true,
        |cfg| cfg.admin = Some("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east");

    // GatewayClass: Accepted, supportedFeatures.
    apply::<GatewayClass>(east, gateway_class(CLASS, ME)).await;
    apply::<GatewayClass>(east, gateway_class("someone-else", "example.com/other")).await;
    eventually_async("GatewayClass Accepted", WAIT, || async {
        let gc = Api::<GatewayClass>::all(east.clone())
            .get(CLASS)
            .await
            .unwrap();
        let st = gc.status.ok_or("no status")?;
        let conds = st.conditions.unwrap_or_default();
        if csr(&conds, "Accepted") != Some(("True".into(), "Accepted".into(), Some(1))) {
            return Err(format!("{conds:?}"));
        }
        let features: Vec<String> = st
            .supported_features
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.name)
            .collect();
        if !features.iter().any(|f| f == "HTTPRoute") {
            return Err(format!("features {features:?}"));
        }
        Ok(())
    })
    .await;
    // Not ours: no status written.
    let other = Api::<GatewayClass>::all(east.clone())
        .get("someone-else")
        .await
        .unwrap();
    assert!(other.status.is_none(), "{:?}", other.status);

    // Gateway, Service, EndpointSlice, HTTPRoute.
    apply::<Gateway>(east, gateway_obj("infra", "gw", CLASS)).await;
    apply::<Service>(east, service("app", "echo")).await;
    apply::<EndpointSlice>(east, slice("app", "echo-1", "echo", &["10.1.0.5"], "z1")).await;
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;

    eventually_async(
        "Gateway Accepted/Programmed with address and attached route",
        WAIT,
        || async {
            let gw = gateway(east, "infra", "gw").await;
            let st = gw.status.ok_or("no status")?;
            let conds = st.conditions.clone().unwrap_or_default();
            let want = |t: &str| Some(("True".to_string(), t.to_string(), Some(1)));
            if csr(&conds, "Accepted") != want("Accepted")
                || csr(&conds, "Programmed") != want("Programmed")
            {
                return Err(format!("conditions {conds:?}"));
            }
            let addrs: Vec<(Option<String>, String)> = st
                .addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.r#type, a.value))
                .collect();
            if addrs != vec![(Some("IPAddress".into()), "127.0.0.1".into())] {
                return Err(format!("addresses {addrs:?}"));
            }
            let listeners = st.listeners.unwrap_or_default();
            let l = listeners.first().ok_or("no listener status")?;
            if l.attached_routes != 1 {
                return Err(format!("attachedRoutes {}", l.attached_routes));
            }
            let kinds: Vec<&str> = l
                .supported_kinds
                .iter()
                .flatten()
                .map(|k| k.kind.as_str())
                .collect();
            if kinds != ["HTTPRoute", "GRPCRoute"] {
                return Err(format!("supportedKinds {kinds:?}"));
            }
            Ok(())
        },
    )
    .await;

    let ok1 = (
        ("True".to_string(), "Accepted".to_string(), Some(1)),
        ("True".to_string(), "ResolvedRefs".to_string(), Some(1)),
    );
    eventually_async("route parent Accepted/ResolvedRefs", WAIT, || async {
        let got = our_parent(east, "app", "web").await?;
        if got == ok1 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let r = route(east, "app", "web").await;
    let p = &r.status.unwrap().parents[0];
    assert_eq!(
        p.parent_ref.group.as_deref(),
        Some("gateway.networking.k8s.io")
    );
    assert_eq!(p.parent_ref.kind.as_deref(), Some("Gateway"));
    assert_eq!(p.parent_ref.namespace.as_deref(), Some("infra"));

    // The snapshot of east carries the route with the endpoint, tagged with cluster and region.
    let snap = eventually_async("east snapshot with the endpoint", WAIT, || async {
        let s = env.dp.snapshot("east").ok_or("no snapshot")?;
        let eps = endpoints(&s);
        if eps.len() == 1 {
            Ok(s)
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await;
    let ep = &endpoints(&snap)[0];
    assert_eq!(
        (
            ep.address.to_string(),
            ep.port,
            ep.cluster.as_str(),
            ep.region.as_str(),
            ep.zone.as_str()
        ),
        ("10.1.0.5".to_string(), 8080, "east", "us-east", "z1")
    );
    let l = &snap.gateways[0].listeners[0];
    assert_eq!((l.port, l.routes[0].name.as_str()), (80, "web"));
    // Other clusters have no Gateway of ours.
    assert!(
        env.dp
            .snapshot("west")
            .is_none_or(|s| s.gateways.is_empty())
    );

    // A bad backend: ResolvedRefs False/BackendNotFound at generation 2; fixed at generation 3.
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), service_ref("missing", 80)),
    )
    .await;
    eventually_async("ResolvedRefs BackendNotFound", WAIT, || async {
        let got = our_parent(east, "app", "web").await?;
        if got.1 == ("False".into(), "BackendNotFound".into(), Some(2)) && got.0.0 == "True" {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;
    eventually_async("ResolvedRefs fixed", WAIT, || async {
        let got = our_parent(east, "app", "web").await?;
        if got.1 == ("True".into(), "ResolvedRefs".into(), Some(3)) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // An EndpointSlice change takes the incremental path and reaches the snapshot.
    let endpoint_passes = || {
        env.ctl
            .metrics()
            .translations
            .with_label_values(&["endpoints"])
            .get()
    };
    let before = endpoint_passes();
    apply::<EndpointSlice>(
        east,
        slice("app", "echo-1", "echo", &["10.1.0.5", "10.1.0.6"], "z1"),
    )
    .await;
    eventually_async("snapshot with two endpoints", WAIT, || async {
        let s = env.dp.snapshot("east").ok_or("no snapshot")?;
        let n = endpoints(&s).len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} endpoints"))
        }
    })
    .await;
    assert!(
        endpoint_passes() > before,
        "EndpointSlice change did not use refresh_endpoints"
    );

    assert_no_write_storm(&env).await;

    // Admin endpoints.
    let admin = env.ctl.admin_addr().unwrap();
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("east synced"), "{body}");
    let (code, body) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("meridian_controller_status_writes_total{cluster=\"east\",kind=\"Gateway\",result=\"ok\"}"),
        "{body}"
    );
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/nope").await.0, 404);

    // Real kubectl reads the status through the printer columns.
    if std::path::Path::new("/usr/bin/kubectl").exists() {
        let dir = std::env::temp_dir().join(format!("meridian-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            env.sandboxes[0].as_ref().unwrap().kubeconfig_yaml(),
        )
        .unwrap();
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new("/usr/bin/kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--context", "east", "get", "gateways", "-A"])
                .env("HOME", &dir)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = stdout.lines().next().unwrap_or_default();
        let row = stdout
            .lines()
            .find(|l| l.contains(" gw "))
            .unwrap_or_default();
        assert!(header.contains("PROGRAMMED"), "{stdout}");
        let cols: Vec<&str> = row.split_whitespace().collect();
        // NAMESPACE NAME CLASS ADDRESS PROGRAMMED AGE
        assert_eq!(
            &cols[..5],
            ["infra", "gw", CLASS, "127.0.0.1", "True"],
            "{stdout}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // Deleting the route detaches it: attachedRoutes back to 0, route gone from the snapshot.
    delete::<HttpRoute>(east, Some("app"), "web").await;
    eventually_async("route detached", WAIT, || async {
        let gw = gateway(east, "infra", "gw").await;
        let n = gw.status.and_then(|s| s.listeners).unwrap_or_default()[0].attached_routes;
        let s = env.dp.snapshot("east").ok_or("no snapshot")?;
        let routes = s
            .gateways
            .first()
            .map_or(0, |g| g.listeners[0].routes.len());
        if n == 0 && routes == 0 {
            Ok(())
        } else {
            Err(format!("attached {n}, routes {routes}"))
        }
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_import_gathers_endpoints_from_every_cluster() {
    let env = start_env(&[&["east", "west", "central"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    for (i, (name, c)) in env.clients.iter().enumerate() {
        apply::<Service>(c, service("app", "echo")).await;
        let ip = format!("10.2.{i}.1");
        apply::<EndpointSlice>(
            c,
            slice("app", "echo-x", "echo", &[&ip], &format!("{name}-a")),
        )
        .await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
    }
    let east = env.c("east");
    setup_gateway(east).await;
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;
    let tags = |n: usize| {
        let dp = env.dp.clone();
        async move {
            let s = dp.snapshot("east").ok_or("no snapshot")?;
            let mut tags: Vec<(String, String, String)> = endpoints(&s)
                .into_iter()
                .map(|e| (e.cluster, e.region, e.zone))
                .collect();
            tags.sort();
            if tags.len() == n {
                Ok(tags)
            } else {
                Err(format!("{tags:?}"))
            }
        }
    };
    let got = eventually_async("endpoints of three clusters", WAIT, || tags(3)).await;
    let t = |c: &str, r: &str| (c.to_string(), r.to_string(), format!("{c}-a"));
    assert_eq!(
        got,
        vec![
            t("central", "eu-central"),
            t("east", "us-east"),
            t("west", "us-west")
        ]
    );
    eventually_async("route resolved", WAIT, || async {
        let got = our_parent(east, "app", "web").await?;
        if got.1.0 == "True" {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // West stops exporting: its endpoints leave the snapshot.
    delete::<ServiceExport>(env.c("west"), Some("app"), "echo").await;
    let got = eventually_async("endpoints of two clusters", WAIT, || tags(2)).await;
    assert!(got.iter().all(|(c, _, _)| c != "west"), "{got:?}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_controllers_route_parents_are_preserved() {
    let env = start_env(&[&["east"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east");
    setup_gateway(east).await;
    apply::<Service>(east, service("app", "echo")).await;
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;
    eventually_async("our parent entry", WAIT, || async {
        our_parent(east, "app", "web").await
    })
    .await;

    // Another controller adds its own entry (read-modify-write, as the spec asks of it too).
    let api = Api::<HttpRoute>::namespaced(east.clone(), "app");
    let mut r = api.get("web").await.unwrap();
    let foreign = serde_json::from_value(json!({
        "controllerName": "example.com/other",
        "parentRef": {"name": "theirs", "namespace": "infra", "kind": "Gateway",
                      "group": "gateway.networking.k8s.io"},
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}]
    }))
    .unwrap();
    r.status.as_mut().unwrap().parents.push(foreign);
    api.replace_status("web", &PostParams::default(), &r)
        .await
        .unwrap();

    // Our status changes (new generation): the foreign entry survives, untouched.
    let mut changed = route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80));
    changed["spec"]["hostnames"] = json!(["other.example.com"]);
    apply::<HttpRoute>(east, changed).await;
    eventually_async("our entry at generation 2 next to theirs", WAIT, || async {
        let r = route(east, "app", "web").await;
        let parents = r.status.map(|s| s.parents).unwrap_or_default();
        let ours = parents
            .iter()
            .find(|p| p.controller_name == ME)
            .ok_or("ours gone")?;
        let theirs = parents
            .iter()
            .find(|p| p.controller_name == "example.com/other")
            .ok_or(format!("theirs gone: {parents:?}"))?;
        if csr(&ours.conditions, "Accepted").and_then(|c| c.2) != Some(2) {
            return Err(format!("ours not updated: {parents:?}"));
        }
        assert_eq!(theirs.parent_ref.name, "theirs");
        assert_eq!(
            theirs.conditions[0].last_transition_time.0.to_string(),
            "2024-01-01T00:00:00Z"
        );
        Ok(parents.len())
    })
    .await;
    assert_no_write_storm(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_does_not_stall_the_others() {
    // east and west in one sandbox, central alone so it can be stopped.
    let mut env = start_env(
        &[&["east", "west"], &["central"]],
        |_| true,
        |cfg| {
            cfg.endpoint_grace = Duration::from_millis(1500);
        },
    )
    .await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    for name in ["east", "central"] {
        let c = env.c(name);
        apply::<Service>(c, service("app", "echo")).await;
        apply::<EndpointSlice>(
            c,
            slice(
                "app",
                "echo-x",
                "echo",
                &[&format!("10.3.0.{}", name.len())],
                "a",
            ),
        )
        .await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
    }
    let east = env.c("east").clone();
    setup_gateway(&east).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;
    let clusters_in_snapshot = |dp: std::sync::Arc<meridian_controller::StaticDataPlane>| async move {
        let s = dp.snapshot("east").ok_or("no snapshot")?;
        let mut cs: Vec<String> = endpoints(&s).into_iter().map(|e| e.cluster).collect();
        cs.sort();
        Ok::<_, String>(cs)
    };
    eventually_async("east and central endpoints", WAIT, || async {
        let cs = clusters_in_snapshot(env.dp.clone()).await?;
        if cs == ["central", "east"] {
            Ok(())
        } else {
            Err(format!("{cs:?}"))
        }
    })
    .await;

    // Stop central's API server.
    env.sandboxes[1].take().unwrap().shutdown().await;

    // East and west keep getting status.
    let mut changed = route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80));
    changed["spec"]["hostnames"] = json!(["changed.example.com"]);
    apply::<HttpRoute>(&east, changed).await;
    eventually_async("east route status at generation 2", WAIT, || async {
        let got = our_parent(&east, "app", "web").await?;
        if got.0.2 == Some(2) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let west = env.c("west").clone();
    setup_gateway(&west).await;
    eventually_async("west Gateway Programmed", WAIT, || async {
        let gw = gateway(&west, "infra", "gw").await;
        let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
        match csr(&conds, "Programmed") {
            Some((s, _, _)) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Reported unreachable by its supervisor's probe (it may still be waiting out its probe
    // timeout: status writes to east and west, several in flight, can be quicker than that).
    eventually_async("central reported unreachable", WAIT, || async {
        match env
            .ctl
            .metrics()
            .cluster_reachable
            .with_label_values(&["central"])
            .get()
        {
            0 => Ok(()),
            other => Err(format!("cluster_reachable{{central}} = {other}")),
        }
    })
    .await;

    // Past the endpoint grace period central's endpoints are withdrawn; east's stay.
    eventually_async("central endpoints withdrawn", WAIT, || async {
        let cs = clusters_in_snapshot(env.dp.clone()).await?;
        if cs == ["east"] {
            Ok(())
        } else {
            Err(format!("{cs:?}"))
        }
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_crds_are_skipped_then_picked_up() {
    let env = start_env(&[&["east", "west"]], |c| c == "east", |_| {}).await;
    // West has no Gateway API CRDs: it still syncs (those kinds are skipped).
    env.ctl.wait_ready(WAIT).await.unwrap();
    assert_eq!(
        env.ctl
            .metrics()
            .kind_watched
            .with_label_values(&["west", "Gateway"])
            .get(),
        0
    );
    let west = env.c("west");
    install_crds(west).await;
    setup_gateway(west).await;
    eventually_async(
        "west Gateway Accepted after the CRDs appear",
        WAIT,
        || async {
            let gw = gateway(west, "infra", "gw").await;
            let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
            match csr(&conds, "Accepted") {
                Some((s, _, Some(1))) if s == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_down_from_the_start_delays_the_others_only_by_the_startup_grace() {
    let sb =
        meridian_sandbox::Sandbox::start(meridian_sandbox::SandboxConfig::ephemeral(&["east"]))
            .await
            .unwrap();
    let east = client_for(&sb.clusters()[0].url);
    install_crds(&east).await;
    for ns in ["infra", "app"] {
        apply::<k8s_openapi::api::core::v1::Namespace>(
            &east,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    setup_gateway(&east).await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let members = vec![
        meridian_controller::MemberCluster {
            name: "east".into(),
            region: "us-east".into(),
            zones: vec![],
            client: east.clone(),
            network: String::new(),
        },
        meridian_controller::MemberCluster {
            name: "gone".into(),
            region: "nowhere".into(),
            zones: vec![],
            client: client_for(&format!("http://{dead}")),
            network: String::new(),
        },
    ];
    let dp = meridian_controller::StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
    let cfg = fast_config(members, dp.clone()); // startup_grace = 3 s
    let started = std::time::Instant::now();
    let ctl = meridian_controller::Controller::start(cfg).await.unwrap();
    eventually_async(
        "east Gateway Accepted without the dead cluster",
        WAIT,
        || async {
            let gw = gateway(&east, "infra", "gw").await;
            let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
            match csr(&conds, "Accepted") {
                Some((s, _, _)) if s == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "acted before the startup grace: {waited:?}"
    );
    assert!(
        dp.snapshot("gone").is_none(),
        "published for a cluster never synced"
    );
    assert_eq!(
        ctl.readiness(),
        vec![("east".to_string(), true), ("gone".to_string(), false)]
    );
    assert!(ctl.wait_ready(Duration::from_millis(200)).await.is_err());
    ctl.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_decode_does_not_stop_the_watch() {
    let env = start_env(&[&["east"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east");
    setup_gateway(east).await;
    apply::<Service>(east, service("app", "echo")).await;
    // The API server validates against the CRD's schema, so the bad route is written while the
    // HTTPRoute CRD has a loose spec schema and stays stored after the real schema is back, as
    // objects written under an older schema do on a real cluster.
    let crds: Api<CustomResourceDefinition> = Api::all(east.clone());
    let crd_name = "httproutes.gateway.networking.k8s.io";
    let original = serde_json::to_value(crds.get(crd_name).await.unwrap()).unwrap();
    let mut loose = original.clone();
    for v in loose["spec"]["versions"].as_array_mut().unwrap() {
        v["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    let loose = crds
        .replace(
            crd_name,
            &PostParams::default(),
            &serde_json::from_value(loose).unwrap(),
        )
        .await
        .unwrap();
    let bad = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "bad", "namespace": "app"},
        "spec": {"parentRefs": "not a list"}});
    dyn_api::<HttpRoute>(east, Some("app"))
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .unwrap();
    let mut strict = original;
    strict["metadata"]["resourceVersion"] = json!(loose.metadata.resource_version);
    crds.replace(
        crd_name,
        &PostParams::default(),
        &serde_json::from_value(strict).unwrap(),
    )
    .await
    .unwrap();
    apply::<HttpRoute>(
        east,
        route_obj("app", "good", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;
    eventually_async("the good route is served", WAIT, || async {
        let got = our_parent(east, "app", "good").await?;
        let s = env.dp.snapshot("east").ok_or("no snapshot")?;
        let routes: Vec<String> = s
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .map(|r| r.name.clone())
            .collect();
        if got.0.0 == "True" && routes == ["good"] {
            Ok(())
        } else {
            Err(format!("{got:?} {routes:?}"))
        }
    })
    .await;
    assert!(
        env.ctl
            .metrics()
            .decode_errors
            .with_label_values(&["east", "HTTPRoute"])
            .get()
            >= 1
    );
    env.shutdown().await;
}

/// `meridian controller --kubeconfig F` with no --cluster: every context is a member, and each
/// client reaches its own cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_contexts_become_member_clusters() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: meridian_controller::ControllerArgs,
    }
    let sb = meridian_sandbox::Sandbox::start(meridian_sandbox::SandboxConfig::ephemeral(&[
        "east", "west",
    ]))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("meridian-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, sb.kubeconfig_yaml()).unwrap();
    // A namespace only west has, to tell the clients apart.
    let west = client_for(&sb.cluster("west").unwrap().url);
    apply::<k8s_openapi::api::core::v1::Namespace>(
        &west,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "only-west"}}),
    )
    .await;

    let cli = Cli::try_parse_from(["x", "--kubeconfig", path.to_str().unwrap()]).unwrap();
    let kc = cli.args.load_kubeconfig().unwrap();
    let specs = cli.args.cluster_specs(&kc).unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["east", "west"]);
    for spec in &specs {
        let c = meridian_controller::args::connect(&kc, spec).await.unwrap();
        let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(c)
            .get_opt("only-west")
            .await
            .unwrap();
        assert_eq!(ns.is_some(), spec.name == "west", "{}", spec.name);
    }

    let cli = Cli::try_parse_from([
        "x",
        "--kubeconfig",
        path.to_str().unwrap(),
        "--cluster",
        "main=west@eu",
    ])
    .unwrap();
    let specs = cli.args.cluster_specs(&kc).unwrap();
    assert_eq!((specs[0].context(), specs[0].region()), ("west", "eu"));
    let cli = Cli::try_parse_from([
        "x",
        "--kubeconfig",
        path.to_str().unwrap(),
        "--cluster",
        "nope",
    ])
    .unwrap();
    let spec = &cli.args.cluster_specs(&kc).unwrap()[0];
    let Err(err) = meridian_controller::args::connect(&kc, spec).await else {
        panic!("an unknown context was accepted");
    };
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
    sb.shutdown().await;
}

/// A member cluster's API killed and restarted (same port, persisted objects): its endpoints are
/// withdrawn after the grace period, come back with the fresh list, and its status is written
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_api_restart_is_picked_up() {
    let dir = std::env::temp_dir().join(format!("meridian-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (east_sb, central_sb) = east_and_persisted_central(&dir).await;
    let port = central_sb.clusters()[0].addr.port();
    let east = client_for(&east_sb.clusters()[0].url);
    let central = client_for(&central_sb.clusters()[0].url);
    for (c, ip) in [(&east, "10.4.0.1"), (&central, "10.4.0.2")] {
        install_crds(c).await;
        for ns in ["infra", "app"] {
            apply::<k8s_openapi::api::core::v1::Namespace>(
                c,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        }
        apply::<Service>(c, service("app", "echo")).await;
        apply::<EndpointSlice>(c, slice("app", "echo-x", "echo", &[ip], "a")).await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
    }
    setup_gateway(&east).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
    )
    .await;
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
    let dp = meridian_controller::StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
    let mut cfg = fast_config(members, dp.clone());
    cfg.endpoint_grace = Duration::from_millis(1000);
    let ctl = meridian_controller::Controller::start(cfg).await.unwrap();
    let clusters_served = |want: &'static [&'static str]| {
        let dp = dp.clone();
        async move {
            let s = dp.snapshot("east").ok_or("no snapshot")?;
            let mut cs: Vec<String> = endpoints(&s).into_iter().map(|e| e.cluster).collect();
            cs.sort();
            if cs == want {
                Ok(())
            } else {
                Err(format!("{cs:?}"))
            }
        }
    };
    eventually_async("both clusters' endpoints", WAIT, || {
        clusters_served(&["central", "east"])
    })
    .await;

    central_sb.shutdown().await;
    eventually_async("central withdrawn after the grace", WAIT, || {
        clusters_served(&["east"])
    })
    .await;

    let central_sb = meridian_sandbox::Sandbox::start(persisted_central(&dir, port))
        .await
        .unwrap();
    eventually_async("central endpoints back after the restart", WAIT, || {
        clusters_served(&["central", "east"])
    })
    .await;
    // Status is written in the restarted cluster too.
    setup_gateway(&central).await;
    eventually_async("central Gateway Accepted", WAIT, || async {
        let gw = gateway(&central, "infra", "gw").await;
        let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
        match csr(&conds, "Accepted") {
            Some((s, _, _)) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        ctl.metrics()
            .cluster_reachable
            .with_label_values(&["central"])
            .get(),
        1
    );
    ctl.shutdown().await;
    central_sb.shutdown().await;
    east_sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_reference_grant_revokes_access() {
    use gateway_api::referencegrants::ReferenceGrant;
    let env = start_env(&[&["east"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east");
    setup_gateway(east).await;
    apply::<Service>(east, service("other", "echo")).await;
    apply::<EndpointSlice>(east, slice("other", "echo-x", "echo", &["10.5.0.1"], "a")).await;
    apply::<ReferenceGrant>(
        east,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "allow-app", "namespace": "other"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "app"}],
                     "to": [{"group": "", "kind": "Service"}]}}),
    )
    .await;
    let mut backend = service_ref("echo", 80);
    backend["namespace"] = json!("other");
    apply::<HttpRoute>(east, route_obj("app", "web", ("infra", "gw"), backend)).await;
    let state = |resolved: &'static str, reason: &'static str, n: usize| {
        let dp = env.dp.clone();
        async move {
            let got = our_parent(east, "app", "web").await?;
            let eps = dp.snapshot("east").map_or(0, |s| endpoints(&s).len());
            if got.1.0 == resolved && got.1.1 == reason && eps == n {
                Ok(())
            } else {
                Err(format!("{got:?}, {eps} endpoints"))
            }
        }
    };
    eventually_async("granted", WAIT, || state("True", "ResolvedRefs", 1)).await;
    delete::<ReferenceGrant>(east, Some("other"), "allow-app").await;
    eventually_async("revoked", WAIT, || state("False", "RefNotPermitted", 0)).await;
    env.shutdown().await;
}

/// Route create (an HTTPRoute, then a GRPCRoute): one translation; the two status writes it
/// causes (route, Gateway) come back as watch events that are recognised as our own echo and
/// translate nothing. What translation
/// does not read (a label) translates nothing either; what it reads besides the spec (the
/// Gateway's served-by annotation) and a status someone else changed are translated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_of_our_own_status_writes_translates_nothing() {
    let env = start_env(&[&["east"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east");
    let m = env.ctl.metrics();
    let events = |outcome: &str| m.status_events.with_label_values(&[outcome]).get();
    let translations = || {
        ["full", "incremental", "endpoints"]
            .iter()
            .map(|mode| m.translations.with_label_values(&[mode]).get())
            .sum::<u64>()
    };
    setup_gateway(east).await;
    eventually_async("Gateway Accepted", WAIT, || async {
        let gw = gateway(east, "infra", "gw").await;
        let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
        csr(&conds, "Accepted")
            .filter(|c| c.0 == "True")
            .ok_or(format!("{conds:?}"))
    })
    .await;
    // Every write of the setup landed and came back.
    settles("status writes", WAIT, Duration::from_millis(500), || {
        write_attempts(&env)
    })
    .await;
    let echoes = events("echo");
    let before = translations();

    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;
    eventually_async("route Accepted, Gateway counting it", WAIT, || async {
        let accepted = our_parent(east, "app", "web").await?.0;
        let gw = gateway(east, "infra", "gw").await;
        let attached: Vec<i32> = gw
            .status
            .and_then(|s| s.listeners)
            .unwrap_or_default()
            .iter()
            .map(|l| l.attached_routes)
            .collect();
        if accepted.0 == "True" && attached == [1] {
            Ok(())
        } else {
            Err(format!("{accepted:?}, attachedRoutes {attached:?}"))
        }
    })
    .await;
    eventually("both echoes recognised", WAIT, || {
        (events("echo") >= echoes + 2).then_some(()).ok_or(format!(
            "{} echoes, {} other status events",
            events("echo") - echoes,
            events("status")
        ))
    })
    .await;
    let after = translations();
    assert_eq!(
        after - before,
        1,
        "a route create is one translation, its echoes none"
    );
    holds_for(
        "no translation for the echoes",
        Duration::from_secs(1),
        || translations() == after,
    )
    .await;

    // A GRPCRoute (another hostname: no conflict with the HTTPRoute) the same: one
    // translation, and the echoes of its status and of the Gateway's new count none.
    let echoes = events("echo");
    apply::<GrpcRoute>(
        east,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "rpc", "namespace": "app"},
            "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                     "hostnames": ["rpc.example.com"],
                     "rules": [{"backendRefs": [service_ref("echo", 80)]}]}}),
    )
    .await;
    eventually_async(
        "GRPCRoute Accepted, Gateway counting both",
        WAIT,
        || async {
            let r = Api::<GrpcRoute>::namespaced(east.clone(), "app")
                .get("rpc")
                .await
                .map_err(|e| e.to_string())?;
            let parents = r.status.map(|s| s.parents).unwrap_or_default();
            let accepted = parents
                .iter()
                .find(|p| p.controller_name == ME)
                .and_then(|p| csr(&p.conditions, "Accepted"));
            let attached: Vec<i32> = gateway(east, "infra", "gw")
                .await
                .status
                .and_then(|s| s.listeners)
                .unwrap_or_default()
                .iter()
                .map(|l| l.attached_routes)
                .collect();
            if accepted.as_ref().is_some_and(|a| a.0 == "True") && attached == [2] {
                Ok(())
            } else {
                Err(format!("{accepted:?}, attachedRoutes {attached:?}"))
            }
        },
    )
    .await;
    eventually("both GRPCRoute echoes recognised", WAIT, || {
        (events("echo") >= echoes + 2).then_some(()).ok_or(format!(
            "{} echoes, {} other status events",
            events("echo") - echoes,
            events("status")
        ))
    })
    .await;
    assert_eq!(
        translations() - after,
        1,
        "a GRPCRoute create is one translation, its echoes none"
    );
    let after = translations();
    holds_for(
        "no translation for the GRPCRoute's echoes",
        Duration::from_secs(1),
        || translations() == after,
    )
    .await;

    // A label is read by nothing in translation.
    let unread = events("unread");
    let mut labelled = route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80));
    labelled["metadata"]["labels"] = json!({"team": "web"});
    apply::<HttpRoute>(east, labelled).await;
    eventually("the label change seen", WAIT, || events("unread") > unread).await;
    holds_for(
        "no translation for a label",
        Duration::from_millis(500),
        || translations() == after,
    )
    .await;

    // The served-by annotation of a Gateway is read: translated, and it reaches the snapshot.
    let mut annotated = gateway_obj("infra", "gw", CLASS);
    annotated["metadata"]["annotations"] = json!({"meridian.dev/served-by-header": "true"});
    apply::<Gateway>(east, annotated).await;
    eventually("served-by header in the snapshot", WAIT, || {
        env.dp
            .snapshot("east")
            .is_some_and(|s| s.gateways.iter().any(|g| g.served_by_header))
    })
    .await;
    assert!(translations() > after, "the annotation was not translated");

    // Someone else clears the route's status: not our echo, so it is translated and written
    // again.
    let status_events = events("status");
    Api::<HttpRoute>::namespaced(east.clone(), "app")
        .patch_status(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"parents": []}})),
        )
        .await
        .unwrap();
    eventually_async("our status written again", WAIT, || async {
        our_parent(east, "app", "web").await.map(|p| p.0.0)
    })
    .await;
    assert!(
        events("status") > status_events,
        "the foreign change was not seen as one"
    );

    env.shutdown().await;
}

/// BackendTLSPolicy end to end: the policy's status is written per ancestor Gateway, a missing
/// CA ConfigMap makes the route's backend invalid (ResolvedRefs=False on the route, no `tls`
/// in the snapshot), and creating the ConfigMap brings the backend's TLS settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_policy_status_and_snapshot() {
    use gateway_api::backendtlspolicies::BackendTlsPolicy;
    use k8s_openapi::api::core::v1::ConfigMap;
    let env = start_env(&[&["east"]], |_| true, |_| {}).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    let east = env.c("east");
    setup_gateway(east).await;
    apply::<Service>(east, service("app", "echo")).await;
    apply::<EndpointSlice>(east, slice("app", "echo-x", "echo", &["10.5.0.1"], "a")).await;
    apply::<HttpRoute>(
        east,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;
    apply::<BackendTlsPolicy>(
        east,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "echo-tls", "namespace": "app"},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                     "validation": {"hostname": "echo.internal.example.com",
                                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "echo-ca"}]}}}),
    )
    .await;
    let state = |accepted: &'static str, route_rr: &'static str, tls: bool| {
        let dp = env.dp.clone();
        async move {
            let p = Api::<BackendTlsPolicy>::namespaced(east.clone(), "app")
                .get("echo-tls")
                .await
                .map_err(|e| e.to_string())?;
            let ancestors = p.status.map(|s| s.ancestors).unwrap_or_default();
            let [a] = ancestors.as_slice() else {
                return Err(format!("ancestors: {ancestors:?}"));
            };
            let got_accepted = csr(&a.conditions, "Accepted").ok_or("no Accepted")?;
            let route_state = our_parent(east, "app", "web").await?;
            let backend_tls = dp.snapshot("east").is_some_and(|s| {
                s.gateways.iter().any(|g| {
                    g.listeners.iter().any(|l| {
                        l.routes.iter().any(|r| {
                            r.rules
                                .iter()
                                .any(|rule| rule.backends.iter().any(|b| b.tls.is_some()))
                        })
                    })
                })
            });
            let ok = a.ancestor_ref.name == "gw"
                && a.ancestor_ref.namespace.as_deref() == Some("infra")
                && got_accepted.1 == accepted
                && got_accepted.2 == Some(1)
                && route_state.1.1 == route_rr
                && backend_tls == tls;
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "policy {got_accepted:?}, route {route_state:?}, tls in snapshot {backend_tls}"
                ))
            }
        }
    };
    eventually_async("CA ConfigMap missing", WAIT, || {
        state("NoValidCACertificate", "NoValidCACertificate", false)
    })
    .await;
    apply::<ConfigMap>(
        east,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "echo-ca", "namespace": "app"},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"}}),
    )
    .await;
    eventually_async("CA ConfigMap present", WAIT, || {
        state("Accepted", "ResolvedRefs", true)
    })
    .await;
    assert_no_write_storm(&env).await;
    env.shutdown().await;
}
