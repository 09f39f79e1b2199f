//! The sandbox driven by the real `kubectl` binary (skipped with a message when it is absent).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kube::Api;
use kube::api::{Patch, PatchParams};
use meridian_test_support::{ScratchDir, eventually_async, tool_present};
use serde_json::json;
use std::path::PathBuf;
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
    tool_present("kubectl", &["version", "--client"])
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
    let dir = ScratchDir::new("sandbox-kubectl");
    let mut cfg = meridian_sandbox::SandboxConfig::ephemeral(&["east", "west"]);
    cfg.kubeconfig_path = Some(dir.join("kubeconfig"));
    let sb = meridian_sandbox::Sandbox::start(cfg).await.unwrap();
    let k = Kubectl {
        kubeconfig: dir.join("kubeconfig"),
        cache: dir.join("cache"),
    };
    let crd_yaml = serde_yaml::to_string(&gateway_crd()).unwrap();
    dir.write("crds/gateway.yaml", &crd_yaml);
    dir.write("manifests/00-namespace.yaml", OBJECTS);
    dir.write("manifests/10-gateway.yaml", GATEWAY);
    dir.write("ssa/gw2.yaml", SSA_GATEWAY);
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
    dir.write(
        "manifests/00-namespace.yaml",
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
    eventually_async(
        "get -w printed the initial rows",
        Duration::from_secs(15),
        || {
            let lines = lines.clone();
            async move { lines.lock().unwrap().iter().any(|l| l.contains("gw1")) }
        },
    )
    .await;
    // No pause needed here: `get -w` watches from its list's resourceVersion, so the update
    // below reaches it whether its watch request is already open or not.
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
    eventually_async(
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
}

/// `kubectl get -o yaml` output shape: a `v1 List` mixing a built-in and two CRD kinds.
const LIST: &str = r#"apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: from-list
    namespace: default
  data:
    k: v
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata:
    name: listed
    namespace: default
  spec:
    gatewayClassName: meridian
    listeners:
    - name: http
      port: 80
      protocol: HTTP
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata:
    name: listed
    namespace: default
  spec:
    parentRefs:
    - name: listed
    rules:
    - backendRefs:
      - name: echo
        port: 80
"#;

fn openssl_present() -> bool {
    tool_present("openssl", &["version"])
}

/// Every imperative generator below sends its object as Kubernetes protobuf; each object is
/// then read back through the API and compared with what the command asked for. Then a
/// `kind: List` file (client-side validated against `/openapi/v2`) and `kubectl explain`
/// (OpenAPI v3 schemas from the CRDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators_list_apply_and_explain() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    if !kubectl_present() || !openssl_present() {
        return;
    }
    let dir = ScratchDir::new("sandbox-kubectl-create");
    let mut cfg = meridian_sandbox::SandboxConfig::ephemeral(&["east"]);
    cfg.kubeconfig_path = Some(dir.join("kubeconfig"));
    let sb = meridian_sandbox::Sandbox::start(cfg).await.unwrap();
    let base = sb.cluster("east").unwrap().url.clone();
    let client = kube_client(&base);
    let k = Kubectl {
        kubeconfig: dir.join("kubeconfig"),
        cache: dir.join("cache"),
    };
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    // create secret tls, with a key pair kubectl checks before it sends anything.
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=app.example.test"])
        .args(["-keyout", &path("tls.key"), "-out", &path("tls.crt")])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = k
        .ok(&[
            "create",
            "secret",
            "tls",
            "web-tls",
            "--cert",
            &path("tls.crt"),
            "--key",
            &path("tls.key"),
        ])
        .await;
    assert!(out.contains("secret/web-tls created"), "{out}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = secrets.get("web-tls").await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = s.data.unwrap();
    assert_eq!(
        data["tls.crt"].0,
        std::fs::read(dir.join("tls.crt")).unwrap()
    );
    assert_eq!(
        data["tls.key"].0,
        std::fs::read(dir.join("tls.key")).unwrap()
    );

    // create secret generic --from-literal (values with spaces and '=' survive).
    let out = k
        .ok(&[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=user=admin",
            "--from-literal=pass=s3 cr=t",
        ])
        .await;
    assert!(out.contains("secret/creds created"), "{out}");
    let s = secrets.get("creds").await.unwrap();
    // kubectl leaves the type empty; a real server defaults it to Opaque, the sandbox does not
    // default built-in kinds.
    assert!(
        matches!(s.type_.as_deref(), None | Some("Opaque")),
        "{:?}",
        s.type_
    );
    let data = s.data.unwrap();
    assert_eq!(data["user"].0, b"admin");
    assert_eq!(data["pass"].0, b"s3 cr=t");

    // create configmap --from-literal.
    let out = k
        .ok(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=a=1",
            "--from-literal=b=two",
        ])
        .await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let data = cms.get("settings").await.unwrap().data.unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("1", "two"));

    // create namespace.
    let out = k.ok(&["create", "namespace", "team"]).await;
    assert!(out.contains("namespace/team created"), "{out}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get("team").await.unwrap();
    assert_eq!(ns.metadata.name.as_deref(), Some("team"));
    assert!(ns.metadata.creation_timestamp.is_some());

    // create service clusterip NAME --tcp=80:8080, in the namespace just made.
    let out = k
        .ok(&[
            "create",
            "service",
            "clusterip",
            "web",
            "--tcp=80:8080",
            "-n",
            "team",
        ])
        .await;
    assert!(out.contains("service/web created"), "{out}");
    let services: Api<Service> = Api::namespaced(client.clone(), "team");
    let spec = services.get("web").await.unwrap().spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        spec.selector.unwrap().get("app").map(String::as_str),
        Some("web")
    );
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 80);
    assert_eq!(ports[0].target_port, Some(IntOrString::Int(8080)));
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(ports[0].name.as_deref(), Some("80-8080"));

    // create serviceaccount, then the RBAC generators, each read back with `get -o json`.
    let get_json = |args: &'static [&'static str]| {
        let k = &k;
        async move {
            let mut full = vec!["get"];
            full.extend_from_slice(args);
            full.extend_from_slice(&["-o", "json"]);
            serde_json::from_str::<serde_json::Value>(&k.ok(&full).await).unwrap()
        }
    };
    let out = k
        .ok(&["create", "serviceaccount", "bot", "-n", "team"])
        .await;
    assert!(out.contains("serviceaccount/bot created"), "{out}");
    let sa = get_json(&["serviceaccount", "bot", "-n", "team"]).await;
    assert_eq!(sa["apiVersion"], "v1");
    assert_eq!(sa["kind"], "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "bot");
    assert_eq!(sa["metadata"]["namespace"], "team");
    assert!(
        sa["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{sa}"
    );
    assert!(sa.get("automountServiceAccountToken").is_none(), "{sa}");
    // `create token` is a subresource of the account just made, and names a missing one.
    let token = k.ok(&["create", "token", "bot", "-n", "team"]).await;
    assert!(!token.trim().is_empty() && !token.trim().contains(char::is_whitespace));
    let missing = k.run(&["create", "token", "nobody", "-n", "team"]).await;
    assert!(!missing.ok, "{}", missing.stdout);
    assert!(
        missing.stderr.contains("\"nobody\" not found"),
        "{}",
        missing.stderr
    );

    let out = k
        .ok(&[
            "create",
            "role",
            "reader",
            "--verb=get",
            "--verb=list",
            "--resource=configmaps,secrets",
            "--resource-name=settings",
            "-n",
            "team",
        ])
        .await;
    assert!(
        out.contains("role.rbac.authorization.k8s.io/reader created"),
        "{out}"
    );
    let role = get_json(&["role", "reader", "-n", "team"]).await;
    assert_eq!(role["apiVersion"], "rbac.authorization.k8s.io/v1");
    assert_eq!(role["kind"], "Role");
    assert_eq!(
        role["rules"],
        json!([{
            "verbs": ["get", "list"],
            "apiGroups": [""],
            "resources": ["configmaps", "secrets"],
            "resourceNames": ["settings"],
        }])
    );

    let out = k
        .ok(&[
            "create",
            "rolebinding",
            "read",
            "--role=reader",
            "--serviceaccount=team:bot",
            "--user=alice",
            "-n",
            "team",
        ])
        .await;
    assert!(
        out.contains("rolebinding.rbac.authorization.k8s.io/read created"),
        "{out}"
    );
    let binding = get_json(&["rolebinding", "read", "-n", "team"]).await;
    assert_eq!(binding["kind"], "RoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"})
    );
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 2, "{binding}");
    assert!(subjects.contains(&json!(
        {"kind": "ServiceAccount", "name": "bot", "namespace": "team"}
    )));
    assert!(subjects.contains(&json!(
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}
    )));

    let out = k
        .ok(&[
            "create",
            "clusterrole",
            "health",
            "--verb=get",
            "--non-resource-url=/healthz",
        ])
        .await;
    assert!(
        out.contains("clusterrole.rbac.authorization.k8s.io/health created"),
        "{out}"
    );
    let cluster_role = get_json(&["clusterrole", "health"]).await;
    assert_eq!(cluster_role["kind"], "ClusterRole");
    assert!(cluster_role["metadata"].get("namespace").is_none());
    assert_eq!(
        cluster_role["rules"],
        json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}])
    );
    let out = k
        .ok(&[
            "create",
            "clusterrole",
            "gateway-view",
            "--aggregation-rule=meridian.io/aggregate-to-view=true",
        ])
        .await;
    assert!(
        out.contains("clusterrole.rbac.authorization.k8s.io/gateway-view created"),
        "{out}"
    );
    let aggregated = get_json(&["clusterrole", "gateway-view"]).await;
    assert_eq!(
        aggregated["aggregationRule"],
        json!({"clusterRoleSelectors": [{"matchLabels": {"meridian.io/aggregate-to-view": "true"}}]})
    );

    let out = k
        .ok(&[
            "create",
            "clusterrolebinding",
            "health",
            "--clusterrole=health",
            "--group=ops",
            "--serviceaccount=team:bot",
        ])
        .await;
    assert!(
        out.contains("clusterrolebinding.rbac.authorization.k8s.io/health created"),
        "{out}"
    );
    let cluster_binding = get_json(&["clusterrolebinding", "health"]).await;
    assert_eq!(cluster_binding["kind"], "ClusterRoleBinding");
    assert_eq!(
        cluster_binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "health"})
    );
    let subjects = cluster_binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 2, "{cluster_binding}");
    assert!(subjects.contains(&json!(
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "ops"}
    )));
    assert!(subjects.contains(&json!(
        {"kind": "ServiceAccount", "name": "bot", "namespace": "team"}
    )));

    // create deployment and create poddisruptionbudget (apps/v1 and policy/v1 in protobuf).
    let out = k
        .ok(&[
            "create",
            "deployment",
            "web",
            "--image=registry.example/echo:1.2",
            "--port=8080",
            "--replicas=2",
            "-n",
            "team",
            "--",
            "echo",
            "--listen=:8080",
        ])
        .await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let deployment = get_json(&["deployment", "web", "-n", "team"]).await;
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["metadata"]["labels"], json!({"app": "web"}));
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["selector"], json!({"matchLabels": {"app": "web"}}));
    assert_eq!(
        spec["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
    let containers = spec["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{deployment}");
    assert_eq!(containers[0]["name"], "echo");
    assert_eq!(containers[0]["image"], "registry.example/echo:1.2");
    assert_eq!(containers[0]["command"], json!(["echo", "--listen=:8080"]));
    assert_eq!(containers[0]["ports"], json!([{"containerPort": 8080}]));
    let out = k
        .ok(&[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=50%",
            "-n",
            "team",
        ])
        .await;
    assert!(
        out.contains("poddisruptionbudget.policy/web created"),
        "{out}"
    );
    let pdb = get_json(&["poddisruptionbudget", "web", "-n", "team"]).await;
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(
        pdb["spec"],
        json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})
    );

    // apply -f of a `kind: List` (kubectl validates its items against /openapi/v2 itself).
    for crd in ["gateways", "httproutes"] {
        let file = format!(
            "{}/../crds/{crd}.gateway.networking.k8s.io.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        k.ok(&["apply", "--server-side", "-f", &file]).await;
    }
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/gateways.gateway.networking.k8s.io",
        "crd/httproutes.gateway.networking.k8s.io",
    ])
    .await;
    dir.write("list.yaml", LIST);
    let out = k.ok(&["apply", "-f", &path("list.yaml")]).await;
    for line in [
        "configmap/from-list created",
        "gateway.gateway.networking.k8s.io/listed created",
        "httproute.gateway.networking.k8s.io/listed created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let cm = cms.get("from-list").await.unwrap();
    assert_eq!(cm.data.unwrap()["k"], "v");
    let gw = gateways(&client, "default").get("listed").await.unwrap();
    assert_eq!(gw.data["spec"]["listeners"][0]["port"], 80);
    let routes: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::core::ApiResource {
            kind: "HTTPRoute".into(),
            plural: "httproutes".into(),
            ..gateway_resource()
        },
    );
    let route = routes.get("listed").await.unwrap();
    assert_eq!(route.data["spec"]["parentRefs"][0]["name"], "listed");
    // Re-applying changes nothing. kubectl says "unchanged" only for the ConfigMap: the server
    // defaulted fields inside the Gateway's and the route's lists, and a JSON merge patch
    // replaces whole lists, so kubectl's three-way patch for them is not empty ("configured"),
    // as against a real API server. The server defaults the patched lists again: same spec, so
    // the generation stays.
    let before = (gw.metadata.generation, route.metadata.generation);
    let out = k.ok(&["apply", "-f", &path("list.yaml")]).await;
    assert!(out.contains("configmap/from-list unchanged"), "{out}");
    let gw_after = gateways(&client, "default").get("listed").await.unwrap();
    let route_after = routes.get("listed").await.unwrap();
    assert_eq!(
        (
            gw_after.metadata.generation,
            route_after.metadata.generation
        ),
        before,
        "re-applying the same List must not change a spec: {out}"
    );
    assert_eq!(gw_after.data["spec"], gw.data["spec"]);
    assert_eq!(route_after.data["spec"], route.data["spec"]);

    // explain reads the CRD schema from the OpenAPI v3 document.
    let out = k.ok(&["explain", "gateways.spec.listeners"]).await;
    for want in [
        "KIND:",
        "Gateway",
        "VERSION:",
        "FIELD: listeners <[]Object>",
        "Listeners associated with this Gateway.",
        "hostname\t<string>",
        "protocol\t<string> -required-",
    ] {
        assert!(out.contains(want), "explain lacks {want:?}:\n{out}");
    }
    let out = k.ok(&["explain", "httproutes.spec"]).await;
    assert!(out.contains("KIND:") && out.contains("HTTPRoute"), "{out}");
    assert!(out.contains("parentRefs\t<[]Object>"), "{out}");
    let out = k.ok(&["explain", "secrets"]).await;
    assert!(out.contains("built-in kind"), "{out}");

    // GRPCRoute: served from its CRD, listed with HOSTNAMES and AGE, validated by the server.
    let file = format!(
        "{}/../crds/grpcroutes.gateway.networking.k8s.io.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    k.ok(&["apply", "--server-side", "-f", &file]).await;
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/grpcroutes.gateway.networking.k8s.io",
    ])
    .await;
    dir.write("grpc.yaml", GRPC_ROUTE);
    let out = k.ok(&["apply", "-f", &path("grpc.yaml")]).await;
    assert!(
        out.contains("grpcroute.gateway.networking.k8s.io/echo created"),
        "{out}"
    );
    let out = k.ok(&["get", "grpcroutes"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "HOSTNAMES", "AGE"], "{out}");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["echo", "[\"grpc.example.com\"]"], "{out}");
    let stored = get_json(&["grpcroute", "echo"]).await;
    assert_eq!(
        stored["spec"]["rules"][0]["matches"][0]["method"]["type"], "Exact",
        "the server applies the CRD's defaults"
    );
    dir.write("bad-grpc.yaml", BAD_GRPC_ROUTE);
    let bad = k.run(&["apply", "-f", &path("bad-grpc.yaml")]).await;
    assert!(!bad.ok, "an invalid GRPCRoute was accepted: {}", bad.stdout);
    for want in [
        "The GRPCRoute \"bad\" is invalid",
        "spec.rules[0].matches[0].method",
        "needs service, method or both",
        "must be a gRPC method name",
    ] {
        assert!(bad.stderr.contains(want), "lacks {want:?}: {}", bad.stderr);
    }
    assert!(
        k.run(&["get", "grpcroute", "bad"])
            .await
            .stderr
            .contains("not found")
    );

    // TLSRoute: served from its CRD (v1 only), listed with HOSTNAMES and AGE, validated by the
    // server (hostnames required, no IP, exactly one rule, a Service backend needs a port).
    let file = format!(
        "{}/../crds/tlsroutes.gateway.networking.k8s.io.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    k.ok(&["apply", "--server-side", "-f", &file]).await;
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/tlsroutes.gateway.networking.k8s.io",
    ])
    .await;
    dir.write("tls.yaml", TLS_ROUTE);
    let out = k.ok(&["apply", "-f", &path("tls.yaml")]).await;
    assert!(
        out.contains("tlsroute.gateway.networking.k8s.io/passthrough created"),
        "{out}"
    );
    let out = k.ok(&["get", "tlsroutes"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "HOSTNAMES", "AGE"], "{out}");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["passthrough", "[\"tls.example.com\"]"], "{out}");
    let stored = get_json(&["tlsroute", "passthrough"]).await;
    assert_eq!(
        stored["spec"]["rules"][0]["backendRefs"][0]["weight"], 1,
        "the server applies the CRD's defaults"
    );
    assert_eq!(stored["spec"]["parentRefs"][0]["kind"], "Gateway");
    for (i, (manifest, want)) in [
        (BAD_TLS_ROUTE_IP, "not an IP address"),
        (BAD_TLS_ROUTE_RULES, "must have at most 1 items"),
        (
            BAD_TLS_ROUTE_PORT,
            "port is required when referring to a Service",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let file = format!("bad-tls-{i}.yaml");
        dir.write(&file, manifest);
        let bad = k.run(&["apply", "-f", &path(&file)]).await;
        assert!(!bad.ok, "an invalid TLSRoute was accepted: {}", bad.stdout);
        for want in ["The TLSRoute \"bad\" is invalid", want] {
            assert!(bad.stderr.contains(want), "lacks {want:?}: {}", bad.stderr);
        }
        assert!(
            k.run(&["get", "tlsroute", "bad"])
                .await
                .stderr
                .contains("not found")
        );
    }
    dir.write("nameless-tls.yaml", NAMELESS_TLS_ROUTE);
    let bad = k.run(&["apply", "-f", &path("nameless-tls.yaml")]).await;
    assert!(
        !bad.ok,
        "a TLSRoute without hostnames was accepted: {}",
        bad.stdout
    );
    assert!(bad.stderr.contains("spec.hostnames"), "{}", bad.stderr);

    // ListenerSet: served from its CRD (v1 only), listed with ACCEPTED, PROGRAMMED and AGE,
    // defaulted (parentRef kind, allowedRoutes) and validated by the server (listener names
    // unique, at least one listener, port range, hostname format).
    let file = format!(
        "{}/../crds/listenersets.gateway.networking.k8s.io.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    k.ok(&["apply", "--server-side", "-f", &file]).await;
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/listenersets.gateway.networking.k8s.io",
    ])
    .await;
    dir.write("lset.yaml", LISTENER_SET);
    let out = k.ok(&["apply", "-f", &path("lset.yaml")]).await;
    assert!(
        out.contains("listenerset.gateway.networking.k8s.io/extra created"),
        "{out}"
    );
    let out = k.ok(&["get", "listenersets"]).await;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "ACCEPTED", "PROGRAMMED", "AGE"], "{out}");
    assert!(k.ok(&["get", "lset", "extra"]).await.contains("extra"));
    let stored = get_json(&["listenerset", "extra"]).await;
    assert_eq!(stored["spec"]["parentRef"]["kind"], "Gateway");
    assert_eq!(
        stored["spec"]["parentRef"]["group"],
        "gateway.networking.k8s.io"
    );
    assert_eq!(
        stored["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"],
        "Same"
    );
    for (i, (manifest, want)) in [
        (
            BAD_LISTENER_SET_NAMES,
            // The list-map key given twice: refused by the schema, as a real API server does.
            "spec.listeners[1]: Duplicate value",
        ),
        (BAD_LISTENER_SET_PORT, "spec.listeners[0].port"),
        (BAD_LISTENER_SET_HOSTNAME, "spec.listeners[0].hostname"),
        (BAD_LISTENER_SET_EMPTY, "spec.listeners"),
    ]
    .into_iter()
    .enumerate()
    {
        let file = format!("bad-lset-{i}.yaml");
        dir.write(&file, manifest);
        let bad = k.run(&["apply", "-f", &path(&file)]).await;
        assert!(
            !bad.ok,
            "an invalid ListenerSet was accepted: {}",
            bad.stdout
        );
        for want in ["The ListenerSet \"bad\" is invalid", want] {
            assert!(bad.stderr.contains(want), "lacks {want:?}: {}", bad.stderr);
        }
        assert!(
            k.run(&["get", "listenerset", "bad"])
                .await
                .stderr
                .contains("not found")
        );
    }

    sb.shutdown().await;
}

const LISTENER_SET: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: extra
spec:
  parentRef:
    name: listed
  listeners:
  - name: extra
    port: 8080
    protocol: HTTP
    hostname: extra.example.com
"#;

const BAD_LISTENER_SET_NAMES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: bad
spec:
  parentRef:
    name: listed
  listeners:
  - name: same
    port: 8080
    protocol: HTTP
  - name: same
    port: 8081
    protocol: HTTP
"#;

const BAD_LISTENER_SET_PORT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: bad
spec:
  parentRef:
    name: listed
  listeners:
  - name: extra
    port: 70000
    protocol: HTTP
"#;

const BAD_LISTENER_SET_HOSTNAME: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: bad
spec:
  parentRef:
    name: listed
  listeners:
  - name: extra
    port: 8080
    protocol: HTTP
    hostname: "Not_A.Host"
"#;

const BAD_LISTENER_SET_EMPTY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: bad
spec:
  parentRef:
    name: listed
  listeners: []
"#;

const GRPC_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: echo
spec:
  parentRefs:
  - name: listed
  hostnames: ["grpc.example.com"]
  rules:
  - matches:
    - method:
        service: demo.Echo
        method: Say
    backendRefs:
    - name: echo
      port: 9000
"#;

const BAD_GRPC_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: bad
spec:
  parentRefs:
  - name: listed
  rules:
  - matches:
    - method:
        type: Exact
    - method:
        method: "not/a.method"
"#;

const TLS_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata:
  name: passthrough
spec:
  parentRefs:
  - name: listed
    sectionName: tls
  hostnames: ["tls.example.com"]
  rules:
  - backendRefs:
    - name: echo
      port: 8443
"#;

const BAD_TLS_ROUTE_IP: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata:
  name: bad
spec:
  parentRefs:
  - name: listed
  hostnames: ["10.0.0.1"]
  rules:
  - backendRefs:
    - name: echo
      port: 8443
"#;

const BAD_TLS_ROUTE_RULES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata:
  name: bad
spec:
  parentRefs:
  - name: listed
  hostnames: ["tls.example.com"]
  rules:
  - backendRefs:
    - name: echo
      port: 8443
  - backendRefs:
    - name: echo
      port: 8443
"#;

const BAD_TLS_ROUTE_PORT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata:
  name: bad
spec:
  parentRefs:
  - name: listed
  hostnames: ["tls.example.com"]
  rules:
  - backendRefs:
    - name: echo
"#;

const NAMELESS_TLS_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata:
  name: nameless
spec:
  parentRefs:
  - name: listed
  rules:
  - backendRefs:
    - name: echo
      port: 8443
"#;
