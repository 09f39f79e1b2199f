//! The sandbox driven by the real `kubectl` binary (skipped with a message when it is absent).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=15s")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(Duration::from_secs(30), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(
            o.ok,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }
}

fn kubectl_present() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: `kubectl` is not on PATH; the kubectl tests need it");
    }
    found
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meridian-sandbox-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const OBJECTS: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: team
data:
  a: "1"
"#;

const GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw1
  namespace: team
spec:
  gatewayClassName: meridian
  listeners:
  - name: http
    port: 80
    protocol: HTTP
"#;

const SSA_GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw2
  namespace: team
spec:
  gatewayClassName: meridian
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_describe_wait_watch_delete() {
    if !kubectl_present() {
        return;
    }
    let dir = temp_dir("kubectl");
    let mut cfg = meridian_sandbox::SandboxConfig::ephemeral(&["east", "west"]);
    cfg.kubeconfig_path = Some(dir.join("kubeconfig"));
    let sb = meridian_sandbox::Sandbox::start(cfg).await.unwrap();
    let k = Kubectl {
        kubeconfig: dir.join("kubeconfig"),
        cache: dir.join("cache"),
    };
    let crd_yaml = serde_yaml::to_string(&gateway_crd()).unwrap();
    write(&dir.join("crds/gateway.yaml"), &crd_yaml);
    write(&dir.join("manifests/00-namespace.yaml"), OBJECTS);
    write(&dir.join("manifests/10-gateway.yaml"), GATEWAY);
    write(&dir.join("ssa/gw2.yaml"), SSA_GATEWAY);
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    // apply -f a directory of CRDs, wait for Established, then a directory of objects.
    let out = k.ok(&["apply", "-f", &path("crds")]).await;
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/gateways.gateway.networking.k8s.io created"), "{out}");
    let out = k
        .ok(&[
            "wait",
            "--for",
            "condition=established",
            "crd/gateways.gateway.networking.k8s.io",
            "--timeout=10s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");
    let out = k.ok(&["apply", "-f", &path("manifests")]).await;
    for line in [
        "namespace/team created",
        "configmap/settings created",
        "gateway.gateway.networking.k8s.io/gw1 created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let out = k.ok(&["apply", "-f", &path("manifests")]).await;
    assert!(
        out.contains("gateway.gateway.networking.k8s.io/gw1 unchanged"),
        "{out}"
    );
    // Changing a built-in and re-applying goes through the patch path.
    write(
        &dir.join("manifests/00-namespace.yaml"),
        &OBJECTS.replace("a: \"1\"", "b: \"2\""),
    );
    let out = k.ok(&["apply", "-f", &path("manifests")]).await;
    assert!(out.contains("configmap/settings configured"), "{out}");
    let client = kube_client(&sb.cluster("east").unwrap().url);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "team");
    let data = cms.get("settings").await.unwrap().data.unwrap();
    assert_eq!(data.get("b").map(String::as_str), Some("2"));
    assert!(
        !data.contains_key("a"),
        "apply removes fields dropped from the manifest: {data:?}"
    );

    // Server-side apply.
    let out = k.ok(&["apply", "--server-side", "-f", &path("ssa")]).await;
    assert!(
        out.contains("gateway.gateway.networking.k8s.io/gw2 serverside-applied"),
        "{out}"
    );
    let gw2 = gateways(&client, "team").get("gw2").await.unwrap();
    let managers: Vec<String> = gw2
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["kubectl"]);

    // get -A with the CRD's printer columns.
    let out = k.ok(&["get", "gateways", "-A"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        vec!["NAMESPACE", "NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"],
        "{out}"
    );
    let gw1_row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("gw1"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&gw1_row[..3], &["team", "gw1", "meridian"], "{out}");
    assert!(out.contains("gw2"), "{out}");

    // get -o yaml and describe.
    let yaml = k
        .ok(&["get", "gtw", "gw1", "-n", "team", "-o", "yaml"])
        .await;
    let obj: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(obj["spec"]["gatewayClassName"], "meridian");
    assert_eq!(obj["metadata"]["generation"], 1);
    let described = k.ok(&["describe", "gateway", "gw1", "-n", "team"]).await;
    assert!(
        described.contains("gw1") && described.contains("Gateway Class Name:  meridian"),
        "{described}"
    );

    // wait --for=condition=Programmed and get -w, both started before the status changes.
    let waiter = k
        .command(&[
            "wait",
            "--for=condition=Programmed",
            "gateway/gw1",
            "-n",
            "team",
            "--timeout=20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = k
        .command(&["get", "gateways", "-n", "team", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stdout = watcher.stdout.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut l = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = l.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    eventually(
        "get -w printed the initial rows",
        Duration::from_secs(15),
        || {
            let lines = lines.clone();
            async move { lines.lock().unwrap().iter().any(|l| l.contains("gw1")) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateways(&client, "team")
        .patch_status(
            "gw1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [{"type": "IPAddress", "value": "10.0.0.7"}],
                "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok",
                                "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})),
        )
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(25), waiter.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        waited.status.success(),
        "wait failed: {}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stdout).contains("condition met"));
    eventually(
        "get -w printed the updated row",
        Duration::from_secs(15),
        || {
            let lines = lines.clone();
            async move {
                lines.lock().unwrap().iter().any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() >= 4
                        && cols[0] == "gw1"
                        && cols[2] == "10.0.0.7"
                        && cols[3] == "True"
                })
            }
        },
    )
    .await;
    watcher.kill().await.unwrap();
    reader.abort();
    let out = k.ok(&["get", "gtw", "-A"]).await;
    assert!(
        out.lines()
            .any(|l| l.contains("gw1") && l.contains("10.0.0.7") && l.contains("True")),
        "{out}"
    );

    // delete, then the object is gone with a NotFound from the server.
    let out = k.ok(&["delete", "gateway", "gw1", "-n", "team"]).await;
    assert!(
        out.contains("gateway.gateway.networking.k8s.io \"gw1\" deleted"),
        "{out}"
    );
    let gone = k.run(&["get", "gateway", "gw1", "-n", "team"]).await;
    assert!(!gone.ok);
    assert!(
        gone.stderr.contains(
            "Error from server (NotFound): gateways.gateway.networking.k8s.io \"gw1\" not found"
        ),
        "{}",
        gone.stderr
    );

    // The other context is a different cluster: no Gateway kind, no team namespace.
    let west = k.run(&["--context", "west", "get", "gateways", "-A"]).await;
    assert!(
        !west.ok
            && west
                .stderr
                .contains("the server doesn't have a resource type \"gateways\""),
        "{}",
        west.stderr
    );
    let west_ns = k.ok(&["--context", "west", "get", "namespaces"]).await;
    assert!(!west_ns.contains("team"), "{west_ns}");

    // Built-in tables and namespace deletion (kubectl waits for it to disappear).
    let out = k.ok(&["get", "namespaces"]).await;
    assert!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "STATUS", "AGE"]),
        "{out}"
    );
    let out = k
        .ok(&["delete", "namespace", "team", "--timeout=20s"])
        .await;
    assert!(out.contains("namespace \"team\" deleted"), "{out}");
    let out = k.run(&["get", "namespace", "team"]).await;
    assert!(!out.ok);

    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
