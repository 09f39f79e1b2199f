//! Fault injection: a cluster's API stopped, restarted on the same address with its objects,
//! answering like a starting kube-apiserver (plain-text `404 page not found`), and refusing a
//! given number of status writes with 409 Conflict.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{PostParams, WatchEvent, WatchParams};
use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::eventually_async;
use serde_json::json;
use std::time::Duration;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": "1"}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_refuses_then_serves_its_objects_again_on_the_same_address() {
    let sb = start(&["east", "west"]).await;
    let url = sb.clusters()[0].url.clone();
    let client = kube_client(&url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    // A watch open across the stop is cut, not left hanging.
    let mut watch = cms
        .watch(&WatchParams::default().timeout(290), &rv)
        .await
        .unwrap()
        .boxed();

    sb.stop_cluster("east").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                Some(Ok(e)) => panic!("unexpected event {e:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the open watch was not cut");
    let err = cms.get("a").await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a stopped API answers nothing: {err:?}"
    );
    // The other cluster is not affected.
    let west: Api<ConfigMap> = Api::namespaced(kube_client(&sb.clusters()[1].url), "default");
    west.create(&PostParams::default(), &cm("w")).await.unwrap();
    sb.stop_cluster("east").await.unwrap();

    sb.restart_cluster("east", None).await.unwrap();
    assert_eq!(sb.clusters()[0].url, url, "same address");
    let again = cms.get("a").await.unwrap();
    assert_eq!(again.metadata.uid, created.metadata.uid);
    // The watch history survived: a resume from before the stop sees what happened after.
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();
    let mut resumed = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .unwrap();
    match first {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected b's ADDED, got {other:?}"),
    }
    assert!(sb.stop_cluster("nowhere").await.is_err());
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_cluster_answers_plain_text_404_until_it_is_ready() {
    let sb = start(&["east"]).await;
    let base = sb.clusters()[0].url.clone();
    let client = kube_client(&base);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();

    sb.set_starting("east", None).unwrap();
    for path in [
        "/api/v1/namespaces/default/configmaps/a",
        "/apis",
        "/version",
    ] {
        let r = raw(&base, "GET", path, &[], Vec::new()).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.content_type.starts_with("text/plain"), "{path}");
        assert_eq!(r.text(), "404 page not found\n", "{path}");
    }
    // What kube-rs makes of it: a 404 without the NotFound reason of a real Status.
    match cms.get("a").await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert!(!s.is_not_found(), "{s:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    sb.set_starting("east", Some(Duration::ZERO)).unwrap();
    assert_eq!(
        cms.get("a").await.unwrap().metadata.name.as_deref(),
        Some("a")
    );
    // A real NotFound is still a Status with reason NotFound.
    match cms.get("gone").await.unwrap_err() {
        kube::Error::Api(s) => assert!(s.is_not_found(), "{s:?}"),
        other => panic!("expected an API error, got {other:?}"),
    }

    // Restarted "starting" for a while: 404 first, then served without further action.
    sb.stop_cluster("east").await.unwrap();
    let restarted = std::time::Instant::now();
    sb.restart_cluster("east", Some(Duration::from_millis(400)))
        .await
        .unwrap();
    assert_eq!(
        raw(&base, "GET", "/api/v1/namespaces", &[], Vec::new())
            .await
            .status,
        404
    );
    eventually_async(
        "the restarted cluster ready",
        Duration::from_secs(10),
        || async { cms.get("a").await.is_ok() },
    )
    .await;
    assert!(restarted.elapsed() >= Duration::from_millis(400));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_cluster_is_flushed_when_stopped() {
    let dir = std::env::temp_dir().join(format!("meridian-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sb = Sandbox::start(SandboxConfig {
        state_dir: Some(dir.clone()),
        ..SandboxConfig::ephemeral(&["east"])
    })
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube_client(&sb.clusters()[0].url), "default");
    cms.create(&PostParams::default(), &cm("kept"))
        .await
        .unwrap();
    sb.stop_cluster("east").await.unwrap();
    let file = std::fs::read_to_string(dir.join("east.json")).unwrap();
    assert!(file.contains("\"kept\""), "snapshot written on stop");
    sb.restart_cluster("east", None).await.unwrap();
    assert!(cms.get("kept").await.is_ok());
    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armed_status_conflicts_refuse_that_many_status_writes_and_store_nothing() {
    let sb = start(&["east"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    install_gateway_crd(&client).await;
    let gws = gateways(&client, "default");
    gws.create(&PostParams::default(), &gateway("gw", "meridian"))
        .await
        .unwrap();
    sb.conflict_status_writes("east", "gateway.networking.k8s.io", "gateways", 2)
        .unwrap();
    let mut obj = gws.get("gw").await.unwrap();
    obj.data["status"] = json!({"addresses": [{"value": "10.1.1.1"}]});
    let before = obj.metadata.resource_version.clone();
    for _ in 0..2 {
        match gws.replace_status("gw", &PostParams::default(), &obj).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
                assert_eq!(
                    s.message,
                    "Operation cannot be fulfilled on gateways.gateway.networking.k8s.io \"gw\": \
                     the object has been modified; please apply your changes to the latest \
                     version and try again"
                );
            }
            other => panic!("expected a 409, got {other:?}"),
        }
    }
    // Nothing was stored, and the read was not refused.
    let stored = gws.get("gw").await.unwrap();
    assert_eq!(stored.metadata.resource_version, before);
    assert!(
        stored
            .data
            .get("status")
            .is_none_or(|s| s.get("addresses").is_none())
    );
    // The third write is the server's own again.
    let written = gws
        .replace_status("gw", &PostParams::default(), &obj)
        .await
        .unwrap();
    assert_eq!(written.data["status"]["addresses"][0]["value"], "10.1.1.1");
    // Armed again and disarmed: nothing is refused.
    sb.conflict_status_writes("east", "gateway.networking.k8s.io", "gateways", 5)
        .unwrap();
    sb.conflict_status_writes("east", "gateway.networking.k8s.io", "gateways", 0)
        .unwrap();
    let mut again = written.clone();
    again.data["status"]["addresses"][0]["value"] = json!("10.2.2.2");
    gws.replace_status("gw", &PostParams::default(), &again)
        .await
        .unwrap();
    sb.shutdown().await;
}
