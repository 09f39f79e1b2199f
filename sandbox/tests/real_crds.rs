//! The CRDs Meridian ships (the generated YAML under the repository's `crds/` directory) load
//! into the sandbox and behave: registration, printer columns, SSA list markers, kubectl apply.
//! Reads the YAML files rather than depending on the `meridian-crds` crate, so the sandbox's
//! tests build on their own; skipped with a message when the files are absent.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::PathBuf;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn shipped_crds() -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(crd_dir()) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] == "CustomResourceDefinition" {
                out.push(v);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_crds_register_and_serve_their_kinds() {
    let crds = shipped_crds();
    if crds.is_empty() {
        eprintln!("SKIPPED: no CRD YAML found under {}", crd_dir().display());
        return;
    }
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    let client = kube_client(&base);
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        let typed: CustomResourceDefinition = serde_json::from_value(crd.clone()).unwrap();
        let created = api.create(&PostParams::default(), &typed).await.unwrap();
        let conds = created.status.unwrap().conditions.unwrap();
        assert!(
            conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        );
        // Every served version answers a list.
        let group = crd["spec"]["group"].as_str().unwrap();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap();
        for v in crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["served"] == true)
        {
            let path = format!("/apis/{group}/{}/{plural}", v["name"].as_str().unwrap());
            assert_eq!(get_json(&base, &path).await.status, 200, "{path}");
        }
    }

    // A Gateway shows the upstream columns, and status SSA from two managers merges conditions.
    if crds
        .iter()
        .any(|c| c["metadata"]["name"] == "gateways.gateway.networking.k8s.io")
    {
        let gws = gateways(&client, "default");
        gws.create(&PostParams::default(), &gateway("gw", "meridian"))
            .await
            .unwrap();
        for (mgr, t) in [("a", "Accepted"), ("b", "Programmed")] {
            let body = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
                "status": {"addresses": [{"type": "IPAddress", "value": "10.9.9.9"}],
                           "conditions": [{"type": t, "status": "True", "reason": t, "message": "", "observedGeneration": 1,
                                           "lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
            gws.patch_status("gw", &PatchParams::apply(mgr).force(), &Patch::Apply(body))
                .await
                .unwrap();
        }
        let accept = [(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )];
        let t = raw(
            &base,
            "GET",
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
            &accept,
            Vec::new(),
        )
        .await
        .json();
        let cols: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, vec!["Name", "Class", "Address", "Programmed", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "meridian");
        assert_eq!(cells[2], "10.9.9.9");
        assert_eq!(cells[3], "True");
        let gw = gws.get("gw").await.unwrap();
        assert_eq!(gw.data["status"]["conditions"].as_array().unwrap().len(), 2);
    }
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_shipped_crd_directory() {
    if shipped_crds().is_empty() {
        eprintln!("SKIPPED: no CRD YAML found under {}", crd_dir().display());
        return;
    }
    let has_kubectl = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_kubectl {
        eprintln!("SKIPPED: `kubectl` is not on PATH");
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "meridian-sandbox-realcrds-{}",
        uuid::Uuid::new_v4()
    ));
    let mut cfg = meridian_sandbox::SandboxConfig::ephemeral(&["c1"]);
    cfg.kubeconfig_path = Some(dir.join("kubeconfig"));
    let sb = meridian_sandbox::Sandbox::start(cfg).await.unwrap();
    let kubectl = |args: Vec<String>| {
        let mut c = tokio::process::Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(dir.join("cache"));
        c.arg("--request-timeout=15s").args(args).kill_on_drop(true);
        async move {
            let o = tokio::time::timeout(std::time::Duration::from_secs(60), c.output())
                .await
                .unwrap()
                .unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        }
    };
    let dir_arg = crd_dir().to_string_lossy().into_owned();
    let (ok, out, err) = kubectl(vec![
        "apply".into(),
        "--server-side".into(),
        "-f".into(),
        dir_arg.clone(),
    ])
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("gateways.gateway.networking.k8s.io serverside-applied"),
        "{out}"
    );
    let (ok, out, err) = kubectl(vec!["get".into(), "crds".into()]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("httproutes.gateway.networking.k8s.io"),
        "{out}"
    );
    let (ok, _, err) = kubectl(vec![
        "wait".into(),
        "--for=condition=established".into(),
        "crd".into(),
        "--all".into(),
        "--timeout=10s".into(),
    ])
    .await;
    assert!(ok, "{err}");
    // A plain resource miss makes kubectl refresh its discovery cache (filled during the apply,
    // before the CRDs existed); a category lookup alone would not.
    let (ok, _, err) = kubectl(vec![
        "get".into(),
        "gateways,httproutes".into(),
        "-A".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(vec!["get".into(), "gateway-api".into(), "-A".into()]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("No resources found") || out.is_empty(),
        "{out}"
    );
    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
