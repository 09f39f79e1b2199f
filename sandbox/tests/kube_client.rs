//! The sandbox driven by the real kube-rs client and kube-runtime watcher.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::eventually_async;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn cm(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"v": data}
    }))
    .unwrap()
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_conflicts_and_not_found() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1 = created.resource_version().unwrap();

    let (code, reason) = api_err(
        cms.create(&PostParams::default(), &cm("a", "1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let mut fresh = cms.get("a").await.unwrap();
    fresh.data = Some([("v".to_string(), "2".to_string())].into());
    let updated = cms
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(updated.resource_version().unwrap(), rv1);

    // Replacing with the stale object (old resourceVersion) is a conflict.
    let (code, reason) = api_err(
        cms.replace("a", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Namespaces must exist.
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    match missing
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.message, "namespaces \"nowhere\" not found");
        }
        e => panic!("{e:?}"),
    }

    let deleted = cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "built-ins answer a Success Status");
    let (code, reason) = api_err(cms.get("a").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert!(cms.get_opt("a").await.unwrap().is_none());

    // Default namespaces exist; server version is served.
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|n| n.name_any())
        .collect();
    for n in ["default", "kube-public", "kube-system"] {
        assert!(names.contains(&n.to_string()), "{names:?}");
    }
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_delay_deletion_until_removed() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut c = cm("held", "1");
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let out = cms.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = out
        .left()
        .expect("object returned while finalizers hold it");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_with_limit_and_continue() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..25 {
        let mut c = cm(&format!("cm-{i:02}"), "x");
        c.metadata.labels = Some(
            [(
                "parity".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into(),
        );
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(10);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.metadata.resource_version.is_some());
        seen.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
        assert!(pages < 10, "paging does not terminate");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(seen, expected);

    // Selectors combine with paging.
    let odd = cms
        .list(&ListParams::default().labels("parity in (odd)").limit(5))
        .await
        .unwrap();
    assert_eq!(odd.items.len(), 5);
    assert_eq!(odd.metadata.remaining_item_count, Some(7));
    let not_even = cms
        .list(&ListParams::default().labels("parity notin (even)"))
        .await
        .unwrap();
    assert_eq!(not_even.items.len(), 12);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=cm-03"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    let none = cms
        .list(&ListParams::default().labels("!parity"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    sb.shutdown().await;
}

/// A small deterministic generator so the operation sequence is reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_converges_over_a_long_change_sequence() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let drive = tokio::spawn(async move {
        let mut s = stream;
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                panic!("watcher error: {e}");
            }
        }
    });
    reader.wait_until_ready().await.unwrap();

    let mut rng = Lcg(42);
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for step in 0..300 {
        let name = format!("obj-{}", rng.next(40));
        match (expected.contains_key(&name), rng.next(3)) {
            (false, _) => {
                cms.create(&PostParams::default(), &cm(&name, &step.to_string()))
                    .await
                    .unwrap();
                expected.insert(name, step.to_string());
            }
            (true, 0) => {
                cms.delete(&name, &DeleteParams::default()).await.unwrap();
                expected.remove(&name);
            }
            (true, _) => {
                cms.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"v": step.to_string()}})),
                )
                .await
                .unwrap();
                expected.insert(name, step.to_string());
            }
        }
    }
    let server: BTreeMap<String, String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| (c.name_any(), c.data.unwrap_or_default()["v"].clone()))
        .collect();
    assert_eq!(server, expected, "the store itself applied every operation");
    eventually_async(
        "reflector matches the store",
        Duration::from_secs(20),
        || {
            let reader = reader.clone();
            let expected = expected.clone();
            async move {
                let cache: BTreeMap<String, String> = reader
                    .state()
                    .iter()
                    .map(|c| {
                        (
                            c.name_any(),
                            c.data.clone().unwrap_or_default()["v"].clone(),
                        )
                    })
                    .collect();
                cache == expected
            }
        },
    )
    .await;
    drive.abort();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_version_gets_410_and_watcher_relists() {
    let mut cfg = SandboxConfig::ephemeral(&["c1"]);
    cfg.history_window = 10;
    // The count alone decides what falls out (no 75 s floor), so the test can outgrow it.
    cfg.history_min_age = std::time::Duration::ZERO;
    cfg.bookmark_interval = None;
    let sb = Sandbox::start(cfg).await.unwrap();
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // A raw watch from a compacted resourceVersion: one ERROR event with 410 Expired.
    for i in 0..15 {
        cms.create(&PostParams::default(), &cm(&format!("filler-{i}"), "x"))
            .await
            .unwrap();
    }
    let mut raw = cms
        .watch(&WatchParams::default().timeout(5), "1")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), raw.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Error(s))) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // The kube-runtime watcher re-lists (a new Init) after its resume RV was compacted.
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (reader, writer) = reflector::store::<ConfigMap>();
    let cfg = watcher::Config::default().labels("watched=yes").timeout(1);
    let counter = inits.clone();
    let stream = reflector(writer, watcher(cms.clone(), cfg)).boxed();
    let drive = tokio::spawn(async move {
        let mut s = stream;
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Init) = ev {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    reader.wait_until_ready().await.unwrap();
    let mut watched = cm("watched-1", "1");
    watched.metadata.labels = Some([("watched".to_string(), "yes".to_string())].into());
    cms.create(&PostParams::default(), &watched).await.unwrap();
    eventually_async("watcher sees watched-1", Duration::from_secs(5), || {
        let r = reader.clone();
        async move { r.state().len() == 1 }
    })
    .await;
    // Push the watcher's last seen resourceVersion out of the 10-event window.
    for i in 0..30 {
        cms.create(&PostParams::default(), &cm(&format!("noise-{i}"), "x"))
            .await
            .unwrap();
    }
    eventually_async(
        "watcher re-listed after 410",
        Duration::from_secs(10),
        || {
            let n = inits.clone();
            async move { n.load(std::sync::atomic::Ordering::SeqCst) >= 2 }
        },
    )
    .await;
    // And it still follows changes afterwards.
    watched.metadata.name = Some("watched-2".into());
    cms.create(&PostParams::default(), &watched).await.unwrap();
    eventually_async(
        "watcher sees watched-2 after the re-list",
        Duration::from_secs(10),
        || {
            let r = reader.clone();
            async move { r.state().len() == 2 }
        },
    )
    .await;

    // compact_history forces the same from the outside.
    assert!(sb.compact_history("c1"));
    assert!(!sb.compact_history("nope"));
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let before: u64 = rv.parse::<u64>().unwrap() - 1;
    let mut raw = cms
        .watch(&WatchParams::default().timeout(5), &before.to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), raw.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Error(s))) => assert_eq!(s.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    drive.abort();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_modifications_bookmarks_and_selector_transitions() {
    let mut cfg = SandboxConfig::ephemeral(&["c1"]);
    cfg.bookmark_interval = Some(Duration::from_millis(200));
    let sb = Sandbox::start(cfg).await.unwrap();
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut c = cm("t", "1");
    c.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    let created = cms.create(&PostParams::default(), &c).await.unwrap();
    let rv = created.resource_version().unwrap();
    let mut wp = WatchParams::default().labels("team=a").timeout(10);
    wp.bookmarks = true;
    let mut events = cms.watch(&wp, &rv).await.unwrap().boxed();
    cms.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while kinds.len() < 3 && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(Ok(WatchEvent::Modified(o)))) => {
                kinds.push(format!("MODIFIED {}", o.data.unwrap()["v"]))
            }
            Ok(Some(Ok(WatchEvent::Deleted(o)))) => kinds.push(format!("DELETED {}", o.name_any())),
            Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                assert!(!b.metadata.resource_version.is_empty());
                kinds.push("BOOKMARK".into());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds[0], "MODIFIED 2");
    assert_eq!(
        kinds[1], "DELETED t",
        "leaving the selector is a DELETED event"
    );
    assert_eq!(kinds[2], "BOOKMARK");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_initial_events() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}"), "x"))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().streaming_lists()),
    )
    .boxed();
    let drive = tokio::spawn(async move {
        let mut s = stream;
        while s.next().await.is_some() {}
    });
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.state().len(), 3);
    drive.abort();
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_generation_and_ssa_condition_merge() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    install_gateway_crd(&client).await;
    let gws = gateways(&client, "default");
    let gw = gws
        .create(&PostParams::default(), &gateway("gw", "meridian"))
        .await
        .unwrap();
    assert_eq!(gw.metadata.generation, Some(1));

    // Two field managers apply different conditions on the status subresource.
    let status_of = |t: &str, mgr_gen: i64| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
               "status": {"conditions": [{"type": t, "status": "True", "reason": t, "message": "",
                                          "observedGeneration": mgr_gen, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})
    };
    gws.patch_status(
        "gw",
        &PatchParams::apply("controller-a").force(),
        &Patch::Apply(status_of("Accepted", 1)),
    )
    .await
    .unwrap();
    let after = gws
        .patch_status(
            "gw",
            &PatchParams::apply("controller-b").force(),
            &Patch::Apply(status_of("Programmed", 1)),
        )
        .await
        .unwrap();
    let types: Vec<String> = after.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, vec!["Accepted", "Programmed"]);
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    // Re-applying one manager's condition updates it in place.
    let mut again = status_of("Accepted", 1);
    again["status"]["conditions"][0]["status"] = json!("False");
    let after = gws
        .patch_status(
            "gw",
            &PatchParams::apply("controller-a").force(),
            &Patch::Apply(again),
        )
        .await
        .unwrap();
    let conds = after.data["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 2);
    assert_eq!(conds[0]["status"], "False");

    // The status subresource ignores spec changes.
    let mut obj = gws.get("gw").await.unwrap();
    obj.data["spec"]["gatewayClassName"] = json!("other");
    obj.data["status"]["addresses"] = json!([{"value": "10.1.1.1"}]);
    let st = gws
        .replace_status("gw", &PostParams::default(), &obj)
        .await
        .unwrap();
    assert_eq!(st.data["spec"]["gatewayClassName"], "meridian");
    assert_eq!(st.data["status"]["addresses"][0]["value"], "10.1.1.1");
    assert_eq!(st.metadata.generation, Some(1));
    // The same status again changes nothing: no new resourceVersion.
    let same = gws
        .replace_status("gw", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), st.resource_version());
    assert_eq!(same.data, st.data);

    // The main resource ignores status; a spec change bumps generation, a label change does not.
    let mut obj = gws.get("gw").await.unwrap();
    obj.data["status"] = json!({"addresses": []});
    obj.data["spec"]["gatewayClassName"] = json!("changed");
    let main = gws
        .replace("gw", &PostParams::default(), &obj)
        .await
        .unwrap();
    assert_eq!(main.data["spec"]["gatewayClassName"], "changed");
    assert_eq!(main.data["status"]["addresses"][0]["value"], "10.1.1.1");
    assert_eq!(main.metadata.generation, Some(2));
    let labelled = gws
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));
    // A no-op patch does not produce a new resourceVersion.
    let same = gws
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), labelled.resource_version());

    // Objects are served in every CRD version.
    let v1beta1 = kube::core::ApiResource {
        version: "v1beta1".into(),
        api_version: "gateway.networking.k8s.io/v1beta1".into(),
        ..gateway_resource()
    };
    let old: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &v1beta1);
    let o = old.get("gw").await.unwrap();
    assert_eq!(
        o.types.unwrap().api_version,
        "gateway.networking.k8s.io/v1beta1"
    );

    // SSA on the main resource: listeners merge by name; two managers conflict without force.
    let listeners = |mgr: &str, port: i64| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "ssa"},
               "spec": {"gatewayClassName": "meridian", "listeners": [{"name": mgr, "port": port, "protocol": "HTTP"}]}})
    };
    let created = gws
        .patch(
            "ssa",
            &PatchParams::apply("one"),
            &Patch::Apply(listeners("one", 80)),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let both = gws
        .patch(
            "ssa",
            &PatchParams::apply("two"),
            &Patch::Apply(listeners("two", 81)),
        )
        .await
        .unwrap();
    assert_eq!(both.data["spec"]["listeners"].as_array().unwrap().len(), 2);
    let mut clash = listeners("two", 81);
    clash["spec"]["gatewayClassName"] = json!("different");
    let (code, reason) = api_err(
        gws.patch(
            "ssa",
            &PatchParams::apply("two"),
            &Patch::Apply(clash.clone()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let forced = gws
        .patch(
            "ssa",
            &PatchParams::apply("two").force(),
            &Patch::Apply(clash),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["gatewayClassName"], "different");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_deletion_unregisters_and_namespace_deletion_cascades() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    install_gateway_crd(&client).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let ns = nss.get("team").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "team"
    );
    let gws = gateways(&client, "team");
    gws.create(&PostParams::default(), &gateway("g1", "x"))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();

    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert!(nss.get_opt("team").await.unwrap().is_none());
    assert!(cms.get_opt("c").await.unwrap().is_none());
    assert!(gws.get_opt("g1").await.unwrap().is_none());

    let gws = gateways(&client, "default");
    gws.create(&PostParams::default(), &gateway("g2", "x"))
        .await
        .unwrap();
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get("gateways.gateway.networking.k8s.io")
        .await
        .unwrap();
    let conds = crd.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    crds.delete(
        "gateways.gateway.networking.k8s.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    let (code, _) = api_err(gws.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 404, "the kind is gone with its CRD");
    // Re-creating the CRD does not resurrect old objects.
    install_gateway_crd(&client).await;
    assert!(
        gws.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_are_isolated() {
    let sb = start(&["east", "west", "central"]).await;
    assert_eq!(sb.clusters().len(), 3);
    let ports: std::collections::BTreeSet<u16> =
        sb.clusters().iter().map(|c| c.addr.port()).collect();
    assert_eq!(ports.len(), 3);
    let east = kube_client(&sb.cluster("east").unwrap().url);
    let west = kube_client(&sb.cluster("west").unwrap().url);
    let central = kube_client(&sb.cluster("central").unwrap().url);
    install_gateway_crd(&east).await;
    let e: Api<ConfigMap> = Api::namespaced(east.clone(), "default");
    let w: Api<ConfigMap> = Api::namespaced(west.clone(), "default");
    e.create(&PostParams::default(), &cm("only-east", "1"))
        .await
        .unwrap();
    w.create(&PostParams::default(), &cm("only-west", "1"))
        .await
        .unwrap();
    assert!(w.get_opt("only-east").await.unwrap().is_none());
    assert!(e.get_opt("only-west").await.unwrap().is_none());
    // The CRD exists only in east.
    assert!(
        gateways(&east, "default")
            .list(&ListParams::default())
            .await
            .is_ok()
    );
    let (code, _) = api_err(
        gateways(&central, "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    // Deleting a default namespace in one cluster leaves the others alone.
    let cnss: Api<Namespace> = Api::all(central.clone());
    cnss.delete("kube-public", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cnss.get_opt("kube-public").await.unwrap().is_none());
    assert!(
        Api::<Namespace>::all(west)
            .get_opt("kube-public")
            .await
            .unwrap()
            .is_some()
    );
    // The kubeconfig has one context per cluster.
    let kc: kube::config::Kubeconfig = serde_yaml::from_str(&sb.kubeconfig_yaml()).unwrap();
    let ctx: Vec<String> = kc.contexts.iter().map(|c| c.name.clone()).collect();
    assert_eq!(ctx, vec!["east", "west", "central"]);
    let opts = kube::config::KubeConfigOptions {
        context: Some("west".into()),
        ..Default::default()
    };
    let cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .unwrap();
    let via_kc: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
    assert!(via_kc.get_opt("only-west").await.unwrap().is_some());
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_survives_restart() {
    let dir =
        std::env::temp_dir().join(format!("meridian-sandbox-persist-{}", uuid::Uuid::new_v4()));
    let mut cfg = SandboxConfig::ephemeral(&["p1"]);
    cfg.state_dir = Some(dir.clone());
    cfg.kubeconfig_path = Some(dir.join("kubeconfig"));
    let sb = Sandbox::start(cfg.clone()).await.unwrap();
    let client = kube_client(&sb.clusters()[0].url);
    install_gateway_crd(&client).await;
    gateways(&client, "default")
        .create(&PostParams::default(), &gateway("kept", "c"))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let last = cms
        .create(&PostParams::default(), &cm("kept", "1"))
        .await
        .unwrap();
    let rv: u64 = last.resource_version().unwrap().parse().unwrap();
    assert!(dir.join("kubeconfig").exists());
    sb.shutdown().await;
    assert!(dir.join("p1.json").exists());

    let sb = Sandbox::start(cfg).await.unwrap();
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert_eq!(cms.get("kept").await.unwrap().data.unwrap()["v"], "1");
    assert_eq!(
        gateways(&client, "default").get("kept").await.unwrap().data["spec"]["gatewayClassName"],
        "c"
    );
    let next = cms
        .create(&PostParams::default(), &cm("new", "1"))
        .await
        .unwrap();
    let rv2: u64 = next.resource_version().unwrap().parse().unwrap();
    assert!(
        rv2 > rv,
        "resourceVersion continues after a restart ({rv2} > {rv})"
    );
    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_kinds_the_controller_uses() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::events::v1::Event as EventV1;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);

    // Services get a cluster IP and port defaults; a selector change bumps generation.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10.96."));
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
    // Strategic merge on built-ins merges ports by port.
    let patched = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ports": [{"port": 443, "name": "https"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().ports.unwrap().len(), 2);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(secrets.get("tls").await.unwrap().data.unwrap().len(), 2);

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let es: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &es).await.unwrap();
    let found = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);

    // Leases: the optimistic-concurrency pattern leader election relies on.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let l: Lease = serde_json::from_value(json!({"metadata": {"name": "meridian"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).unwrap();
    let l = leases.create(&PostParams::default(), &l).await.unwrap();
    let mut take_a = l.clone();
    take_a.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("meridian", &PostParams::default(), &take_a)
        .await
        .unwrap();
    let mut take_b = l.clone();
    take_b.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let (code, _) = api_err(
        leases
            .replace("meridian", &PostParams::default(), &take_b)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409, "only one candidate wins the lease");

    // The kube-runtime event recorder (events.k8s.io/v1; the second publish patches the series).
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "meridian".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        kind: Some("Service".into()),
        api_version: Some("v1".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "Synced".into(),
        note: Some("hello".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<EventV1> = Api::namespaced(client.clone(), "default");
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].reason.as_deref(), Some("Synced"));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_and_metadata_watchers() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("m1", "1"))
        .await
        .unwrap();
    let listed = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].name_any(), "m1");
    assert_eq!(
        listed.items[0].types.as_ref().unwrap().kind,
        "PartialObjectMetadata"
    );

    let meta_api: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "default");
    let mut stream = watcher(meta_api, watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut created = false;
    while tokio::time::Instant::now() < deadline && !seen.contains(&"m2".to_string()) {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        match ev.unwrap() {
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => seen.push(o.name_any()),
            watcher::Event::InitDone if !created => {
                created = true;
                cms.create(&PostParams::default(), &cm("m2", "1"))
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(seen, vec!["m1", "m2"]);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_changes_committed_before_it_started() {
    let sb = start(&["c1"]).await;
    let client = kube_client(&sb.clusters()[0].url);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("early-{i}"), "x"))
            .await
            .unwrap();
    }
    cms.delete("early-1", &DeleteParams::default())
        .await
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut got = Vec::new();
    while got.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
        {
            Some(Ok(WatchEvent::Added(o))) => got.push(format!("ADDED {}", o.name_any())),
            Some(Ok(WatchEvent::Deleted(o))) => got.push(format!("DELETED {}", o.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            "ADDED early-0",
            "ADDED early-1",
            "ADDED early-2",
            "DELETED early-1"
        ]
    );
    sb.shutdown().await;
}
