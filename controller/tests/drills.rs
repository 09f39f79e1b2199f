//! FailoverDrill end to end: the controller against the in-process sandbox, with a
//! [`StaticDataPlane`] whose acknowledgements can be held and whose traffic counters the tests
//! inject (a background "load" that answers from us-west while us-east is drained).
//!
//! Durations are 1–3 s and guard windows 1 s so that every drill finishes in a few seconds;
//! every wait is bounded by `common::WAIT`.
//!
//! The drills live in namespace `app` and drill Gateway `infra/gw`, which a ReferenceGrant in
//! `infra` allows; the scope tests take it away, and add Gateways of other namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use meridian_controller::{
    ActuatorFuture, ClusterGatewayRef, Controller, DrillActuator, DrillMode, DrillTarget,
    MemberCluster, StaticDataPlane,
};
use meridian_crds::mcs::ServiceExport;
use meridian_crds::meridian::{DrillPhase, FailoverDrill, FailoverDrillStatus};
use meridian_model::traffic::FailureKind;
use serde_json::{Value, json};

const CLASS: &str = "meridian";
const IMPORT_BACKEND: &str = "app/echo:80 (ServiceImport)";

/// Lets FailoverDrills of `from` name `kind`s (`Gateway` or `ServiceImport`) of `ns`.
fn drill_grant(ns: &str, from: &str, kind: &str) -> Value {
    let group = if kind == "Gateway" {
        "gateway.networking.k8s.io"
    } else {
        "multicluster.x-k8s.io"
    };
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"name": format!("drills-from-{from}"), "namespace": ns},
        "spec": {"from": [{"group": "meridian.dev", "kind": "FailoverDrill", "namespace": from}],
                 "to": [{"group": group, "kind": kind}]}})
}

/// Two clusters, each exporting `app/echo`, each with Gateway `infra/gw` routing to the
/// ServiceImport and a ReferenceGrant letting drills of `app` name `infra`'s Gateways; waits
/// until east's snapshot has endpoints of both regions.
async fn start(tweak: impl FnOnce(&mut meridian_controller::ControllerConfig)) -> Env {
    let env = start_env(&[&["east", "west"]], |_| true, tweak).await;
    env.ctl.wait_ready(WAIT).await.unwrap();
    for (i, (name, c)) in env.clients.iter().enumerate() {
        apply::<Service>(c, service("app", "echo")).await;
        let ip = format!("10.3.{i}.1");
        apply::<EndpointSlice>(
            c,
            slice("app", "echo-x", "echo", &[&ip], &format!("{name}-a")),
        )
        .await;
        apply::<ServiceExport>(c, service_export("app", "echo")).await;
        apply::<GatewayClass>(c, gateway_class(CLASS, ME)).await;
        apply::<Gateway>(c, gateway_obj("infra", "gw", CLASS)).await;
        apply::<HttpRoute>(
            c,
            route_obj("app", "web", ("infra", "gw"), import_ref("echo", 80)),
        )
        .await;
        apply::<ReferenceGrant>(c, drill_grant("infra", "app", "Gateway")).await;
    }
    for cluster in ["east", "west"] {
        let dp = env.dp.clone();
        eventually_async("endpoints of both regions", WAIT, || {
            let dp = dp.clone();
            async move {
                let s = dp.snapshot(cluster).ok_or("no snapshot")?;
                let mut regions: Vec<String> =
                    endpoints(&s).into_iter().map(|e| e.region).collect();
                regions.sort();
                regions.dedup();
                if regions == ["us-east", "us-west"] {
                    Ok(())
                } else {
                    Err(format!("{regions:?}"))
                }
            }
        })
        .await;
    }
    env
}

fn drill(name: &str, spec: Value) -> Value {
    drill_in("app", name, spec)
}

fn drill_in(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "meridian.dev/v1alpha1", "kind": "FailoverDrill",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A drain of us-east on `infra/gw`, backend `app/echo`.
fn east_down(duration: &str, guards: Value) -> Value {
    json!({"target": {"region": "us-east"},
           "scope": {"gateways": [{"namespace": "infra", "name": "gw"}],
                     "serviceImports": [{"name": "echo"}]},
           "mode": "drain", "duration": duration, "guards": guards})
}

async fn status(c: &kube::Client, name: &str) -> FailoverDrillStatus {
    status_in(c, "app", name).await
}

async fn status_in(c: &kube::Client, ns: &str, name: &str) -> FailoverDrillStatus {
    Api::<FailoverDrill>::namespaced(c.clone(), ns)
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

async fn wait_phase(c: &kube::Client, name: &str, phase: DrillPhase) -> FailoverDrillStatus {
    wait_phase_in(c, "app", name, phase).await
}

async fn wait_phase_in(
    c: &kube::Client,
    ns: &str,
    name: &str,
    phase: DrillPhase,
) -> FailoverDrillStatus {
    eventually_async(&format!("drill {ns}/{name} {phase:?}"), WAIT, || async {
        let s = status_in(c, ns, name).await;
        if s.phase == Some(phase) {
            Ok(s)
        } else {
            Err(format!("{:?}: {:?}", s.phase, s.message))
        }
    })
    .await
}

fn timeline(s: &FailoverDrillStatus) -> Vec<String> {
    s.timeline.iter().map(|e| e.type_.clone()).collect()
}

fn cond(s: &FailoverDrillStatus, t: &str) -> (String, String) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.clone(), c.reason.clone())
}

fn ts(s: &Option<String>) -> Timestamp {
    s.as_deref().expect("time set").parse().unwrap()
}

fn has_drain(dp: &StaticDataPlane, cluster: &str) -> bool {
    dp.snapshot(cluster).is_some_and(|s| !s.drains.is_empty())
}

/// Background traffic on east's `infra/gw`: 10 requests every 50 ms, answered by us-east unless
/// a drain is in east's snapshot, then by us-west — or, with `fail_when_drained`, failing.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(dp: Arc<StaticDataPlane>, fail_when_drained: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let gw = ClusterGatewayRef::new("east", "infra", "gw");
        let task = tokio::spawn(async move {
            // Bounded: at most 60 s of load.
            for _ in 0..1200 {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let drained = has_drain(&dp, "east");
                dp.add_traffic(&gw, |t| {
                    for _ in 0..10 {
                        match (drained, fail_when_drained) {
                            (false, _) => t.record(Some("us-east"), None, 800),
                            (true, false) => t.record(Some("us-west"), None, 40_000),
                            (true, true) => t.record(None, Some(FailureKind::NoEndpoint), 100),
                        }
                    }
                });
                // Kept: paces the synthetic load (ten requests every 50 ms, like a steady
                // stream), which the drill's per-second windows then see.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

async fn events_of(c: &kube::Client, name: &str) -> Vec<K8sEvent> {
    Api::<K8sEvent>::namespaced(c.clone(), "app")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

async fn wait_events(c: &kube::Client, name: &str, reasons: &[&str]) -> Vec<K8sEvent> {
    eventually_async("drill events", WAIT, || async {
        let evs = events_of(c, name).await;
        let got: Vec<String> = evs.iter().filter_map(|e| e.reason.clone()).collect();
        if reasons.iter().all(|r| got.iter().any(|g| g == r)) {
            Ok(evs)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_drill_fails_the_region_and_restores_it() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    let load = Load::start(env.dp.clone(), false);
    apply::<FailoverDrill>(
        &east,
        drill(
            "east-down",
            east_down(
                "2s",
                json!({"window": "1s", "minRequests": 5, "maxErrorPercent": 5}),
            ),
        ),
    )
    .await;

    // While it runs, every cluster's snapshot carries the drain, named as translation names
    // the ServiceImport backend.
    let phases: Arc<Mutex<Vec<DrillPhase>>> = Arc::default();
    let note = |p: Option<DrillPhase>| {
        let mut seen = phases.lock().unwrap();
        if let Some(p) = p
            && seen.last() != Some(&p)
        {
            seen.push(p);
        }
    };
    eventually_async("drain in every snapshot", WAIT, || {
        let dp = env.dp.clone();
        let east = east.clone();
        async move {
            note(status(&east, "east-down").await.phase);
            let drains: Vec<_> = ["east", "west"]
                .iter()
                .filter_map(|c| dp.snapshot(c).map(|s| s.drains))
                .collect();
            if drains.len() == 2 && drains.iter().all(|d| d.len() == 1) {
                Ok(drains)
            } else {
                Err(format!("{drains:?}"))
            }
        }
    })
    .await
    .into_iter()
    .for_each(|d| {
        let d = &d[0];
        assert_eq!(d.drill, "app/east-down");
        assert_eq!(d.region.as_deref(), Some("us-east"));
        assert_eq!((d.cluster.as_deref(), d.zone.as_deref()), (None, None));
        assert_eq!(d.gateways, ["infra/gw"]);
        assert_eq!(d.backends, [IMPORT_BACKEND]);
    });
    let snap = env.dp.snapshot("east").unwrap();
    let names: Vec<String> = snap.gateways[0].listeners[0].routes[0].rules[0]
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    assert_eq!(
        names,
        [IMPORT_BACKEND],
        "the drain names the snapshot's backend"
    );
    assert_eq!(env.ctl.metrics().drains.get(), 1);

    let s = eventually_async("drill finished", WAIT, || async {
        let s = status(&east, "east-down").await;
        note(s.phase);
        match s.phase {
            Some(p) if p.is_terminal() => Ok(s),
            p => Err(format!("{p:?} {:?}", s.message)),
        }
    })
    .await;
    load.stop().await;
    assert_eq!(s.phase, Some(DrillPhase::Succeeded), "{:?}", s.message);
    let phases = phases.lock().unwrap().clone();
    assert!(phases.contains(&DrillPhase::Running), "{phases:?}");
    assert_eq!(phases.last(), Some(&DrillPhase::Succeeded), "{phases:?}");
    assert_eq!(
        timeline(&s),
        ["Started", "TargetFailed", "Restored", "Completed"],
        "{:?}",
        s.timeline
    );
    let (start, fail, restore, done) = (
        ts(&s.start_time),
        ts(&s.fail_time),
        ts(&s.restore_time),
        ts(&s.completion_time),
    );
    assert!(start <= fail && fail <= restore && restore <= done);
    // The baseline is one window; the target stays failed for the duration.
    let failed_for = restore.duration_since(fail).as_secs_f64();
    assert!((2.0..5.0).contains(&failed_for), "failed for {failed_for}s");
    assert!(fail.duration_since(start).as_secs_f64() >= 1.0);
    assert_eq!(cond(&s, "Accepted"), ("True".into(), "Accepted".into()));
    assert_eq!(cond(&s, "Complete"), ("True".into(), "Succeeded".into()));

    // Figures: us-east answered before and after, us-west while us-east was drained.
    let f = s.figures.unwrap();
    assert!(
        f.requests_before >= 50 && f.requests_during >= 100 && f.requests_after >= 50,
        "{f:?}"
    );
    assert_eq!(
        (f.failed_before, f.failed_during, f.failed_after),
        (0, 0, 0)
    );
    assert_eq!(f.error_percent_during, Some(0.0));
    assert_eq!(f.share_before.get("us-east"), Some(&100.0), "{f:?}");
    assert!(
        f.share_during.get("us-west").copied().unwrap_or(0.0) >= 90.0,
        "{f:?}"
    );
    assert!(
        f.share_after.get("us-east").copied().unwrap_or(0.0) >= 90.0,
        "{f:?}"
    );
    assert_eq!(f.p99_ms_before, Some(1.0));
    assert_eq!(f.p99_ms_during, Some(50.0));

    // Restored: no drain in any snapshot.
    assert!(!has_drain(&env.dp, "east") && !has_drain(&env.dp, "west"));
    assert_eq!(env.ctl.metrics().drains.get(), 0);
    let evs = wait_events(
        &east,
        "east-down",
        &["Started", "TargetFailed", "Restored", "Completed"],
    )
    .await;
    assert!(
        evs.iter()
            .all(|e| e.reporting_controller.as_deref() == Some("meridian")),
        "{evs:?}"
    );
    eventually_async("drills by phase metric", WAIT, || async {
        let m = env
            .ctl
            .metrics()
            .drills
            .with_label_values(&["Succeeded"])
            .get();
        if m == 1 { Ok(()) } else { Err(format!("{m}")) }
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_time_waits_for_the_proxies_and_a_proxy_that_never_acks_fails_the_drill() {
    let env = start(|cfg| cfg.drill_ack_timeout = Duration::from_secs(2)).await;
    let east = env.c("east").clone();

    // East's proxies stop acknowledging: the drain is published but the target does not count
    // as failed, and after the ack timeout the drill fails and the drain is withdrawn.
    env.dp.hold_acks("east", true);
    apply::<FailoverDrill>(
        &east,
        drill("stuck", east_down("1s", json!({"window": "1s"}))),
    )
    .await;
    eventually_async("drain published", WAIT, || async {
        if has_drain(&env.dp, "east") {
            Ok(())
        } else {
            Err("no drain".to_string())
        }
    })
    .await;
    let s = status(&east, "stuck").await;
    assert_eq!(s.phase, Some(DrillPhase::Running));
    assert_eq!(s.fail_time, None);
    let s = wait_phase(&east, "stuck", DrillPhase::Failed).await;
    let msg = s.message.clone().unwrap();
    assert!(
        msg.contains("not acknowledged within 2s") && msg.contains("east/infra/gw"),
        "{msg}"
    );
    assert!(msg.contains("target restored"), "{msg}");
    assert_eq!(s.fail_time, None);
    assert_eq!(timeline(&s), ["Started", "Failed"]);
    assert!(!has_drain(&env.dp, "east") && !has_drain(&env.dp, "west"));

    // Acks held, then released: failTime is when the proxies acknowledged, not when the drain
    // was published.
    let env_dp = env.dp.clone();
    apply::<FailoverDrill>(
        &east,
        drill("late", east_down("1s", json!({"window": "1s"}))),
    )
    .await;
    eventually_async("second drain published", WAIT, || async {
        if has_drain(&env_dp, "east") {
            Ok(())
        } else {
            Err("no drain".to_string())
        }
    })
    .await;
    // While the acks are held, failTime stays unset (checked throughout).
    holds_for_async(
        "failTime unset while acks are held",
        Duration::from_millis(800),
        || async {
            match status(&east, "late").await.fail_time {
                None => Ok(()),
                Some(t) => Err(format!("failTime {t:?}")),
            }
        },
    )
    .await;
    let released = Timestamp::now();
    env.dp.hold_acks("east", false);
    let s = wait_phase(&east, "late", DrillPhase::Succeeded).await;
    let fail = ts(&s.fail_time);
    // RFC 3339 with milliseconds: allow for the truncation.
    assert!(
        fail.as_millisecond() >= released.as_millisecond() - 1,
        "failTime {fail} before the release {released}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_trips_on_errors_and_rolls_back_at_once() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    // Drained requests fail: the error guard must trip long before the 30 s are over.
    let load = Load::start(env.dp.clone(), true);
    apply::<FailoverDrill>(
        &east,
        drill(
            "risky",
            east_down(
                "30s",
                json!({"window": "1s", "minRequests": 20, "maxErrorPercent": "2.5"}),
            ),
        ),
    )
    .await;
    let s = wait_phase(&east, "risky", DrillPhase::Aborted).await;
    load.stop().await;
    assert!(!has_drain(&env.dp, "east") && !has_drain(&env.dp, "west"));
    let why = s.abort_reason.clone().unwrap();
    assert!(
        why.contains("error rate") && why.contains("maxErrorPercent 2.5"),
        "{why}"
    );
    assert_eq!(
        timeline(&s),
        [
            "Started",
            "TargetFailed",
            "GuardTripped",
            "Aborted",
            "Restored",
            "Completed"
        ]
    );
    let at = |t: &str| -> Timestamp {
        s.timeline
            .iter()
            .find(|e| e.type_ == t)
            .unwrap()
            .time
            .parse()
            .unwrap()
    };
    let aborted_after = at("GuardTripped")
        .duration_since(at("TargetFailed"))
        .as_secs_f64();
    assert!(aborted_after < 5.0, "tripped after {aborted_after}s");
    let rollback = at("Restored")
        .duration_since(at("GuardTripped"))
        .as_secs_f64();
    assert!(rollback < 1.0, "rollback took {rollback}s");
    assert_eq!(cond(&s, "Complete"), ("True".into(), "Aborted".into()));
    let f = s.figures.unwrap();
    assert!(
        f.failed_during > 0 && f.error_percent_during.unwrap() > 2.5,
        "{f:?}"
    );
    let evs = wait_events(&east, "risky", &["GuardTripped", "Restored"]).await;
    let tripped = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("GuardTripped"))
        .unwrap();
    assert_eq!(tripped.type_.as_deref(), Some("Warning"));
    assert!(tripped.note.as_deref().unwrap_or("").contains("error rate"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_unsupported_drills_fail_with_a_reason() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    // An unknown mode never reaches the controller: the CRD's enum refuses it, as a real API
    // server does.
    let unknown_mode = drill(
        "bad",
        json!({"target": {"region": "us-east"}, "mode": "explode", "duration": "2h"}),
    );
    let err = dyn_api::<FailoverDrill>(&east, Some("app"))
        .patch(
            "bad",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&unknown_mode),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.mode: Unsupported value: \"explode\""),
        "{err}"
    );
    // What the schema cannot express (a duration over 1h) the controller refuses.
    apply::<FailoverDrill>(
        &east,
        drill(
            "bad",
            json!({"target": {"region": "us-east"}, "duration": "2h"}),
        ),
    )
    .await;
    apply::<FailoverDrill>(
        &east,
        drill(
            "kill",
            json!({"target": {"region": "us-east"}, "mode": "kill", "duration": "1s"}),
        ),
    )
    .await;
    apply::<FailoverDrill>(
        &east,
        drill(
            "nowhere",
            json!({"target": {"region": "us-esat"}, "duration": "1s", "guards": {"window": "1s"},
                   "scope": {"gateways": [{"namespace": "infra", "name": "gw"}]}}),
        ),
    )
    .await;
    // Longer than the controller's cap (default 15m), within the CRD's 1h.
    apply::<FailoverDrill>(
        &east,
        drill(
            "long",
            json!({"target": {"region": "us-east"}, "duration": "20m",
                   "scope": {"gateways": [{"namespace": "infra", "name": "gw"}]}}),
        ),
    )
    .await;
    // Unscoped means app's own Gateways, and app has none (infra's do not count).
    apply::<FailoverDrill>(
        &east,
        drill(
            "unscoped",
            json!({"target": {"region": "us-east"}, "duration": "1s", "guards": {"window": "1s"}}),
        ),
    )
    .await;
    apply::<FailoverDrill>(
        &east,
        drill(
            "no-gw",
            json!({"target": {"region": "us-east"}, "scope": {"gateways": [{"name": "nope"}]},
                   "duration": "1s", "guards": {"window": "1s"}}),
        ),
    )
    .await;

    let s = wait_phase(&east, "bad", DrillPhase::Failed).await;
    assert_eq!(cond(&s, "Accepted"), ("False".into(), "Invalid".into()));
    assert_eq!(cond(&s, "Complete"), ("True".into(), "Failed".into()));
    let msg = s.message.unwrap();
    assert!(msg.contains("duration 2h"), "{msg}");
    assert!(s.start_time.is_none());

    let s = wait_phase(&east, "kill", DrillPhase::Failed).await;
    assert_eq!(
        cond(&s, "Accepted"),
        ("False".into(), "ModeUnsupported".into())
    );
    assert!(s.message.unwrap().contains("only mode drain works"));

    for (name, want) in [
        ("nowhere", "matches no endpoint"),
        ("no-gw", "named app/nope"),
        (
            "long",
            "duration 20m is longer than this controller's maximum of 15m (--drill-max-duration)",
        ),
        ("unscoped", "in namespace app is published"),
    ] {
        let s = wait_phase(&east, name, DrillPhase::Failed).await;
        assert_eq!(
            cond(&s, "Accepted"),
            ("False".into(), "Invalid".into()),
            "{name}"
        );
        assert!(
            s.message.clone().unwrap().contains(want),
            "{name}: {:?}",
            s.message
        );
        assert!(s.fail_time.is_none());
    }
    wait_events(&east, "bad", &["Failed"]).await;
    // Nothing was ever drained.
    assert_eq!(env.ctl.metrics().drains.get(), 0);
    assert!(!has_drain(&env.dp, "east"));
    env.shutdown().await;
}

/// Records calls; `blackhole` fails like a host without nft.
#[derive(Default)]
struct FakeActuator {
    calls: Mutex<Vec<String>>,
}

impl FakeActuator {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl DrillActuator for FakeActuator {
    fn fail(&self, mode: DrillMode, target: &DrillTarget) -> ActuatorFuture<'_> {
        let call = format!("fail {mode} {target}");
        Box::pin(async move {
            self.calls.lock().unwrap().push(call);
            match mode {
                DrillMode::Blackhole => {
                    Err("blackhole needs nft: apt-get install -y nftables".into())
                }
                _ => Ok("stopped 1 echo backend".to_string()),
            }
        })
    }

    fn restore(&self, mode: DrillMode, target: &DrillTarget) -> ActuatorFuture<'_> {
        let call = format!("restore {mode} {target}");
        Box::pin(async move {
            self.calls.lock().unwrap().push(call);
            Ok("started 1 echo backend".to_string())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actuator_fails_and_restores_kill_and_blackhole_targets() {
    let act = Arc::new(FakeActuator::default());
    let a = act.clone();
    let env = start(move |cfg| cfg.drill_actuator = Some(a)).await;
    let east = env.c("east").clone();

    apply::<FailoverDrill>(
        &east,
        drill(
            "kill",
            json!({"target": {"cluster": "east"}, "mode": "kill", "duration": "1s",
                   "guards": {"window": "1s"}, "scope": {"gateways": [{"namespace": "infra", "name": "gw"}]}}),
        ),
    )
    .await;
    let s = wait_phase(&east, "kill", DrillPhase::Succeeded).await;
    assert_eq!(
        act.calls(),
        ["fail kill cluster=east", "restore kill cluster=east"]
    );
    let failed = s
        .timeline
        .iter()
        .find(|e| e.type_ == "TargetFailed")
        .unwrap();
    assert_eq!(failed.message, "stopped 1 echo backend");
    // Kill and blackhole never drain.
    assert!(!has_drain(&env.dp, "east"));

    // The actuator refuses: Failed with its reason, and restore is still called (idempotent).
    apply::<FailoverDrill>(
        &east,
        drill(
            "hole",
            json!({"target": {"cluster": "east"}, "mode": "blackhole", "duration": "1s",
                   "guards": {"window": "1s"}, "scope": {"gateways": [{"namespace": "infra", "name": "gw"}]}}),
        ),
    )
    .await;
    let s = wait_phase(&east, "hole", DrillPhase::Failed).await;
    let msg = s.message.unwrap();
    assert!(
        msg.contains("apt-get install -y nftables") && msg.contains("target restored"),
        "{msg}"
    );
    assert_eq!(
        act.calls()[2..],
        [
            "fail blackhole cluster=east",
            "restore blackhole cluster=east"
        ]
    );

    // Deleting a running kill drill restores the target.
    apply::<FailoverDrill>(
        &east,
        drill(
            "long",
            json!({"target": {"cluster": "east"}, "mode": "kill", "duration": "60s",
                   "guards": {"window": "1s"}, "scope": {"gateways": [{"namespace": "infra", "name": "gw"}]}}),
        ),
    )
    .await;
    eventually_async("long drill failed its target", WAIT, || async {
        let s = status(&east, "long").await;
        if s.fail_time.is_some() {
            Ok(())
        } else {
            Err(format!("{:?}", s.message))
        }
    })
    .await;
    delete::<FailoverDrill>(&east, Some("app"), "long").await;
    eventually_async("restore after delete", WAIT, || async {
        let c = act.calls();
        if c.len() == 6 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    assert_eq!(
        act.calls()[4..],
        ["fail kill cluster=east", "restore kill cluster=east"]
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_drill_per_namespace_and_deleting_a_running_drill_rolls_back() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    let west = env.c("west").clone();
    apply::<FailoverDrill>(
        &east,
        drill("first", east_down("60s", json!({"window": "1s"}))),
    )
    .await;
    eventually_async("first drill failed its target", WAIT, || async {
        let s = status(&east, "first").await;
        if s.fail_time.is_some() {
            Ok(())
        } else {
            Err(format!("{:?}", s.message))
        }
    })
    .await;
    // A second drill (in another cluster) waits, naming the running one.
    apply::<FailoverDrill>(
        &west,
        drill("second", east_down("1s", json!({"window": "1s"}))),
    )
    .await;
    let s = eventually_async("second waits", WAIT, || async {
        let s = status(&west, "second").await;
        if s.conditions.iter().any(|c| c.reason == "Conflicted") {
            Ok(s)
        } else {
            Err(format!("{:?}", s.conditions))
        }
    })
    .await;
    assert_eq!(s.phase, Some(DrillPhase::Pending));
    assert_eq!(
        s.message.as_deref(),
        Some("waiting for drill app/first in east to finish (one drill runs per namespace)")
    );
    assert!(has_drain(&env.dp, "east"));

    // Deleting the running drill withdraws its drain at once; then the second one runs.
    delete::<FailoverDrill>(&east, Some("app"), "first").await;
    let deleted = tokio::time::Instant::now();
    eventually_async("drain withdrawn", WAIT, || async {
        let d = env
            .dp
            .snapshot("east")
            .map(|s| s.drains)
            .unwrap_or_default();
        if d.iter().all(|d| d.drill != "app/first") {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await;
    assert!(
        deleted.elapsed() < Duration::from_secs(3),
        "{:?}",
        deleted.elapsed()
    );
    let s = wait_phase(&west, "second", DrillPhase::Succeeded).await;
    assert_eq!(cond(&s, "Accepted"), ("True".into(), "Accepted".into()));
    assert!(!has_drain(&env.dp, "east"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_rolls_back_and_a_restarted_controller_fails_a_running_drill() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    apply::<FailoverDrill>(
        &east,
        drill("during", east_down("60s", json!({"window": "1s"}))),
    )
    .await;
    eventually_async("target failed", WAIT, || async {
        let s = status(&east, "during").await;
        if s.fail_time.is_some() {
            Ok(())
        } else {
            Err(format!("{:?}", s.message))
        }
    })
    .await;
    assert!(has_drain(&env.dp, "east"));
    let Env {
        sandboxes,
        clients,
        dp,
        ctl,
    } = env;
    ctl.shutdown().await;
    // The last snapshots the controller published carry no drain.
    assert!(!has_drain(&dp, "east") && !has_drain(&dp, "west"));
    let s = status(&east, "during").await;
    assert_eq!(s.phase, Some(DrillPhase::Failed));
    assert_eq!(
        s.message.as_deref(),
        Some("controller shut down during the drill; target restored")
    );

    // A controller that died without writing leaves the drill Running; the next one fails it.
    Api::<FailoverDrill>::namespaced(east.clone(), "app")
        .patch_status(
            "during",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "message": "running"}})),
        )
        .await
        .unwrap();
    let members = clients
        .iter()
        .map(|(name, c)| MemberCluster {
            name: name.clone(),
            region: region_of(name),
            zones: vec![],
            client: c.clone(),
            network: String::new(),
        })
        .collect();
    let dp2 = StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
    let ctl = Controller::start(fast_config(members, dp2.clone()))
        .await
        .unwrap();
    let s = eventually_async("restarted controller fails the drill", WAIT, || async {
        let s = status(&east, "during").await;
        if s.message.as_deref() == Some("controller restarted during the drill; target restored") {
            Ok(s)
        } else {
            Err(format!("{:?} {:?}", s.phase, s.message))
        }
    })
    .await;
    assert_eq!(s.phase, Some(DrillPhase::Failed));
    assert_eq!(s.timeline.last().unwrap().type_, "Failed");
    assert!(!has_drain(&dp2, "east"));
    ctl.shutdown().await;
    for sb in sandboxes.into_iter().flatten() {
        sb.shutdown().await;
    }
}

/// Gateway `ns/name` of our class listening on `port` (each Gateway its own port: Gateways
/// sharing an address and port conflict).
fn gateway_on(ns: &str, name: &str, port: u16) -> Value {
    let mut gw = gateway_obj(ns, name, CLASS);
    gw["spec"]["listeners"][0]["port"] = json!(port);
    gw
}

/// The drain of `drill` (`namespace/name`) in `cluster`'s latest snapshot.
fn drain_of(
    dp: &StaticDataPlane,
    cluster: &str,
    drill: &str,
) -> Option<meridian_model::snapshot::Drain> {
    dp.snapshot(cluster)?
        .drains
        .into_iter()
        .find(|d| d.drill == drill)
}

/// A us-east endpoint as east's snapshot has it.
fn east_endpoint(dp: &StaticDataPlane) -> meridian_model::snapshot::Endpoint {
    let s = dp.snapshot("east").unwrap();
    endpoints(&s)
        .into_iter()
        .find(|e| e.region == "us-east")
        .unwrap()
}

async fn wait_failed_target(c: &kube::Client, ns: &str, name: &str) -> FailoverDrillStatus {
    eventually_async(&format!("{ns}/{name} failed its target"), WAIT, || async {
        let s = status_in(c, ns, name).await;
        if s.fail_time.is_some() && s.phase == Some(DrillPhase::Running) {
            Ok(s)
        } else {
            Err(format!("{:?} {:?}", s.phase, s.message))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_stays_in_its_namespace_unless_a_reference_grant_allows_another() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    // app gets a Gateway of its own; infra/gw plays "another namespace".
    apply::<Gateway>(&east, gateway_on("app", "own", 8081)).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "own-r", ("app", "own"), import_ref("echo", 80)),
    )
    .await;
    let dp = env.dp.clone();
    eventually_async("app/own and infra/gw published", WAIT, || async {
        let s = dp.snapshot("east").ok_or("no snapshot")?;
        let names: Vec<String> = s
            .gateways
            .iter()
            .map(|g| format!("{}/{}", g.namespace, g.name))
            .collect();
        if names == ["app/own", "infra/gw"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;

    // Without the grant in infra, naming infra/gw is refused and nothing is drained. The drill
    // is applied only once the controller has taken the grant's deletion from its watch: the
    // two kinds come on separate watch streams, so a drill applied right after the delete could
    // be seen first and start (then be aborted when the deletion arrives) — what a real API
    // server allows too.
    let grant_events = env
        .ctl
        .metrics()
        .watch_events
        .with_label_values(&["east", "ReferenceGrant"]);
    let before = grant_events.get();
    delete::<ReferenceGrant>(&east, Some("infra"), "drills-from-app").await;
    eventually_async("the grant's deletion watched", WAIT, || async {
        if grant_events.get() > before {
            Ok(())
        } else {
            Err("no ReferenceGrant event yet".to_string())
        }
    })
    .await;
    apply::<FailoverDrill>(
        &east,
        drill("foreign", east_down("1s", json!({"window": "1s"}))),
    )
    .await;
    let s = wait_phase(&east, "foreign", DrillPhase::Failed).await;
    assert_eq!(
        cond(&s, "Accepted"),
        ("False".into(), "RefNotPermitted".into())
    );
    let msg = s.message.unwrap();
    assert!(
        msg.contains("may only target namespace(s) infra with a ReferenceGrant there")
            && msg.contains(
                "Gateway infra/gw (a ReferenceGrant in namespace infra with from {group: \
                 meridian.dev, kind: FailoverDrill, namespace: app} and to {group: \
                 gateway.networking.k8s.io, kind: Gateway, name: gw} would allow it)"
            ),
        "{msg}"
    );
    assert!(s.start_time.is_none() && s.fail_time.is_none());
    assert_eq!(env.ctl.metrics().drains.get(), 0);

    // Unscoped: only app's Gateways are drained; infra/gw keeps its us-east endpoints.
    apply::<FailoverDrill>(
        &east,
        drill(
            "own",
            json!({"target": {"region": "us-east"}, "duration": "60s", "guards": {"window": "1s"}}),
        ),
    )
    .await;
    wait_failed_target(&east, "app", "own").await;
    let drain = drain_of(&env.dp, "east", "app/own").unwrap();
    assert_eq!(drain.gateways, vec!["app/own".to_string()]);
    let snap = env.dp.snapshot("east").unwrap();
    let ep = east_endpoint(&env.dp);
    assert!(snap.is_drained("app/own", IMPORT_BACKEND, &ep));
    assert!(!snap.is_drained("infra/gw", IMPORT_BACKEND, &ep));
    // The west cluster's snapshot carries the same, named drain.
    assert_eq!(drain_of(&env.dp, "west", "app/own"), Some(drain));
    delete::<FailoverDrill>(&east, Some("app"), "own").await;
    eventually_async("own drain withdrawn", WAIT, || async {
        match drain_of(&env.dp, "east", "app/own") {
            None => Ok(()),
            Some(d) => Err(format!("{d:?}")),
        }
    })
    .await;

    // With the grant back, the same drill runs.
    apply::<ReferenceGrant>(&east, drill_grant("infra", "app", "Gateway")).await;
    apply::<FailoverDrill>(
        &east,
        drill("granted", east_down("60s", json!({"window": "1s"}))),
    )
    .await;
    wait_failed_target(&east, "app", "granted").await;
    assert!(drain_of(&env.dp, "east", "app/granted").is_some());

    // The grant removed mid-drill: aborted and restored at once.
    delete::<ReferenceGrant>(&east, Some("infra"), "drills-from-app").await;
    let removed = tokio::time::Instant::now();
    eventually_async("drain withdrawn after the grant went", WAIT, || async {
        match drain_of(&env.dp, "east", "app/granted") {
            None => Ok(()),
            Some(d) => Err(format!("{d:?}")),
        }
    })
    .await;
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed.elapsed()
    );
    let s = wait_phase(&east, "granted", DrillPhase::Aborted).await;
    assert_eq!(
        cond(&s, "Accepted"),
        ("False".into(), "RefNotPermitted".into())
    );
    assert!(
        s.abort_reason
            .as_deref()
            .is_some_and(|r| r.contains("Gateway infra/gw")),
        "{:?}",
        s.abort_reason
    );
    assert_eq!(
        timeline(&s),
        [
            "Started",
            "TargetFailed",
            "Aborted",
            "Restored",
            "Completed"
        ]
    );
    assert!(s.restore_time.is_some());
    assert_eq!(env.ctl.metrics().drains.get(), 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_of_other_namespaces_run_side_by_side_unless_their_scopes_overlap() {
    let env = start(|_| {}).await;
    let east = env.c("east").clone();
    for ns in ["team", "ops"] {
        apply::<k8s_openapi::api::core::v1::Namespace>(
            &east,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    // app/own and team/gw2, both routing to app/echo.
    apply::<Gateway>(&east, gateway_on("app", "own", 8081)).await;
    apply::<Gateway>(&east, gateway_on("team", "gw2", 8082)).await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "own-r", ("app", "own"), import_ref("echo", 80)),
    )
    .await;
    apply::<HttpRoute>(
        &east,
        route_obj("app", "gw2-r", ("team", "gw2"), import_ref("echo", 80)),
    )
    .await;
    // ops may name team's Gateways (so its drill is refused for the overlap, not the grant).
    apply::<ReferenceGrant>(&east, drill_grant("team", "ops", "Gateway")).await;
    let dp = env.dp.clone();
    eventually_async("app/own and team/gw2 published", WAIT, || async {
        let s = dp.snapshot("east").ok_or("no snapshot")?;
        let n = s
            .gateways
            .iter()
            .filter(|g| {
                matches!(
                    (g.namespace.as_str(), g.name.as_str()),
                    ("app", "own") | ("team", "gw2")
                )
            })
            .count();
        if n == 2 {
            Ok(())
        } else {
            let names: Vec<String> = s
                .gateways
                .iter()
                .map(|g| format!("{}/{}", g.namespace, g.name))
                .collect();
            Err(format!("{n} of 2: {names:?}"))
        }
    })
    .await;

    let unscoped = |duration: &str| json!({"target": {"region": "us-east"}, "duration": duration, "guards": {"window": "1s"}});
    apply::<FailoverDrill>(&east, drill_in("app", "a1", unscoped("60s"))).await;
    apply::<FailoverDrill>(&east, drill_in("team", "t1", unscoped("60s"))).await;
    // Both hold their target failed at the same time.
    wait_failed_target(&east, "app", "a1").await;
    wait_failed_target(&east, "team", "t1").await;
    assert_eq!(
        status_in(&east, "app", "a1").await.phase,
        Some(DrillPhase::Running)
    );
    let a1 = drain_of(&env.dp, "east", "app/a1").unwrap();
    let t1 = drain_of(&env.dp, "east", "team/t1").unwrap();
    assert_eq!(a1.gateways, vec!["app/own".to_string()]);
    assert_eq!(t1.gateways, vec!["team/gw2".to_string()]);
    assert_eq!(env.ctl.metrics().drains.get(), 2);

    // Overlapping (ops names team/gw2) and same-namespace drills wait, naming the running one.
    apply::<FailoverDrill>(
        &east,
        drill_in(
            "ops",
            "o1",
            json!({"target": {"region": "us-east"}, "duration": "1s", "guards": {"window": "1s"},
                   "scope": {"gateways": [{"namespace": "team", "name": "gw2"}]}}),
        ),
    )
    .await;
    apply::<FailoverDrill>(&east, drill_in("app", "a2", unscoped("1s"))).await;
    for (ns, name, want) in [
        (
            "ops",
            "o1",
            "waiting for drill team/t1 in east to finish (their scopes overlap)",
        ),
        (
            "app",
            "a2",
            "waiting for drill app/a1 in east to finish (one drill runs per namespace)",
        ),
    ] {
        let s = eventually_async(&format!("{ns}/{name} waits"), WAIT, || async {
            let s = status_in(&east, ns, name).await;
            if s.message.as_deref() == Some(want) {
                Ok(s)
            } else {
                Err(format!("{:?} {:?}", s.phase, s.message))
            }
        })
        .await;
        assert_eq!(s.phase, Some(DrillPhase::Pending));
        assert_eq!(cond(&s, "Accepted"), ("False".into(), "Conflicted".into()));
        assert!(s.start_time.is_none());
    }
    // Still running side by side, and nobody else drained anything.
    assert_eq!(env.ctl.metrics().drains.get(), 2);

    // Once the running drills go, the waiting ones run.
    delete::<FailoverDrill>(&east, Some("app"), "a1").await;
    delete::<FailoverDrill>(&east, Some("team"), "t1").await;
    wait_phase_in(&east, "ops", "o1", DrillPhase::Succeeded).await;
    wait_phase_in(&east, "app", "a2", DrillPhase::Succeeded).await;
    assert!(!has_drain(&env.dp, "east"));
    env.shutdown().await;
}
