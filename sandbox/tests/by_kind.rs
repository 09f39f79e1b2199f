//! Per-write work that does not grow with the store (issue #20), seen from a client: watches
//! that only their own kind's writes concern, and a persistence log that has every write soon
//! after it is answered.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::{ScratchDir, eventually};
use std::time::Duration;

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some([("v".to_string(), "1".to_string())].into());
    c
}

/// The next event of a watch stream (5 s at most).
async fn next<K: std::fmt::Debug>(
    s: &mut futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
) -> WatchEvent<K> {
    match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("no watch event: {other:?}"),
    }
}

fn secret(name: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_other_kinds_do_not_expire_a_watch() {
    let mut cfg = SandboxConfig::ephemeral(&["c1"]);
    cfg.history_window = 5;
    // The count alone decides what falls out (no 75 s floor), so the test can outgrow it.
    cfg.history_min_age = std::time::Duration::ZERO;
    cfg.bookmark_interval = None;
    let sb = Sandbox::start(cfg).await.unwrap();
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let first = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let rv = first.metadata.resource_version.unwrap();

    let mut open = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    // Four times the window, all of another kind.
    for i in 0..20 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{i}")))
            .await
            .unwrap();
    }
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();
    match next(&mut open).await {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("b")),
        other => panic!("the open watch should see b, got {other:?}"),
    }

    // Resuming from the same resourceVersion now: no ConfigMap event fell out of the window,
    // so there is nothing to re-list.
    let mut resumed = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut resumed).await {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("b")),
        other => panic!("the resumed watch should see b, got {other:?}"),
    }
    // The Secrets' own window did move on: resuming Secrets from there is 410.
    let mut old = secrets
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut old).await {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 for Secrets, got {other:?}"),
    }
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_dir_holds_every_answered_write_while_running() {
    let scratch = ScratchDir::new("sandbox-by-kind-log");
    let dir = scratch.join("state");
    let sb = Sandbox::start(SandboxConfig {
        state_dir: Some(dir.clone()),
        ..SandboxConfig::ephemeral(&["east"])
    })
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube_client(&sb.clusters()[0].url), "default");
    let mut last_rv = 0u64;
    for i in 0..50 {
        let c = cms
            .create(&PostParams::default(), &cm(&format!("cm-{i}")))
            .await
            .unwrap();
        last_rv = c.metadata.resource_version.unwrap().parse().unwrap();
    }
    // What a crash would leave: copy the files as they are (log first: a compaction between
    // the two copies then shows up as a newer snapshot, which holds everything).
    let copy = scratch.join("copy");
    eventually(
        "a copy of the state dir has all 50 writes",
        Duration::from_secs(10),
        || {
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            for f in ["east.log", "east.json"] {
                if let Ok(bytes) = std::fs::read(dir.join(f)) {
                    std::fs::write(copy.join(f), bytes).unwrap();
                }
            }
            let (state, _) = meridian_sandbox::persist::load(&copy, "east", 100).unwrap();
            let rt = state.registry.by_key("configmaps").unwrap();
            state.rv >= last_rv
                && (0..50).all(|i| state.get(&rt, "default", &format!("cm-{i}")).is_some())
        },
    )
    .await;
    sb.shutdown().await;
}
