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
use meridian_test_support::{ScratchDir, tool_present};
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
    if !tool_present("kubectl", &["version", "--client"]) {
        return;
    }
    let dir = ScratchDir::new("sandbox-realcrds");
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

    // Every example users copy applies cleanly under the schemas (kubectl sends
    // fieldValidation=Strict, so an unknown field would fail too).
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    if examples.is_dir() {
        for sub in ["demo", ""] {
            let path = examples.join(sub).to_string_lossy().into_owned();
            let (ok, out, err) = kubectl(vec!["apply".into(), "-f".into(), path.clone()]).await;
            assert!(ok, "kubectl apply -f {path}:\n{out}\n{err}");
            assert!(!out.contains("unchanged") || sub.is_empty(), "{out}");
        }
        let (ok, out, err) = kubectl(vec![
            "get".into(),
            "httproutes".into(),
            "-A".into(),
            "-o".into(),
            "json".into(),
        ])
        .await;
        assert!(ok, "{err}");
        let list: Value = serde_json::from_str(&out).unwrap();
        let items = list["items"].as_array().unwrap();
        assert!(items.len() >= 5, "{out}");
        for r in items {
            // Defaults were filled in: every rule has matches, every backendRef a weight.
            for rule in r["spec"]["rules"].as_array().unwrap() {
                assert!(
                    rule["matches"].as_array().is_some_and(|m| !m.is_empty()),
                    "{r}"
                );
                for b in rule["backendRefs"].as_array().into_iter().flatten() {
                    assert!(b["weight"].is_i64() && b["kind"].is_string(), "{r}");
                }
            }
        }
    } else {
        eprintln!("SKIPPED examples: {} is absent", examples.display());
    }

    // The schema travels with the CRDs: kubectl sees the server's 422 and Strict refusals.
    let manifest = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_string_lossy().into_owned()
    };
    let bad_port = manifest(
        "bad-port.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n\
         spec:\n  gatewayClassName: meridian\n  listeners:\n  - {name: http, port: 0, protocol: HTTP}\n",
    );
    for server_side in [false, true] {
        let mut args = vec!["apply".to_string(), "-f".into(), bad_port.clone()];
        if server_side {
            args.push("--server-side".into());
        }
        let (ok, out, err) = kubectl(args).await;
        assert!(!ok, "accepted port 0: {out}");
        assert!(
            err.contains("is invalid: spec.listeners[0].port: Invalid value: 0: spec.listeners[0].port in body should be greater than or equal to 1"),
            "{err}"
        );
    }
    let unknown = manifest(
        "unknown.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n\
         spec:\n  gatewayClassName: meridian\n  bogus: 1\n  listeners:\n  - {name: http, port: 80, protocol: HTTP}\n",
    );
    let (ok, _, err) = kubectl(vec!["apply".into(), "-f".into(), unknown.clone()]).await;
    assert!(!ok);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    // --validate=false sends fieldValidation=Ignore: the field is pruned and the apply succeeds.
    let (ok, _, err) = kubectl(vec![
        "apply".into(),
        "--validate=false".into(),
        "-f".into(),
        unknown,
    ])
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(vec![
        "get".into(),
        "gateway".into(),
        "gw".into(),
        "-o".into(),
        "json".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let gw: Value = serde_json::from_str(&out).unwrap();
    assert!(gw["spec"].get("bogus").is_none(), "{gw}");
    assert_eq!(
        gw["spec"]["listeners"][0]["allowedRoutes"],
        json!({"namespaces": {"from": "Same"}})
    );
    let https_passthrough = manifest(
        "passthrough.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw2, namespace: default}\n\
         spec:\n  gatewayClassName: meridian\n  listeners:\n  - {name: https, port: 443, protocol: HTTPS, tls: {mode: Passthrough}}\n",
    );
    let (ok, _, err) = kubectl(vec!["apply".into(), "-f".into(), https_passthrough]).await;
    assert!(!ok);
    assert!(
        err.contains("spec.listeners: Invalid value: \"array\": tls.mode of an HTTPS listener must be Terminate"),
        "{err}"
    );

    // BackendTLSPolicy: a valid one applies and lists with its AGE column; the standard
    // channel's rules refuse both CA sources at once, an IP as hostname and a non-Service target.
    let policy = |name: &str, target_kind: &str, hostname: &str, well_known: bool| {
        let well_known = if well_known {
            "\n    wellKnownCACertificates: System"
        } else {
            ""
        };
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  targetRefs:\n  - {{group: \"\", kind: {target_kind}, name: backend}}\n  validation:\n    hostname: {hostname}\n\
             \x20   caCertificateRefs:\n    - {{group: \"\", kind: ConfigMap, name: backend-ca}}{well_known}\n"
        )
    };
    let good = manifest(
        "btls.yaml",
        &policy("btls", "Service", "backend.example.com", false),
    );
    let (ok, out, err) = kubectl(vec!["apply".into(), "-f".into(), good]).await;
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = kubectl(vec!["get".into(), "backendtlspolicies".into()]).await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "AGE"],
        "{out}"
    );
    assert!(out.contains("btls "), "{out}");
    for (file, body, message) in [
        (
            "btls-both.yaml",
            policy("both", "Service", "backend.example.com", true),
            "caCertificateRefs and wellKnownCACertificates may not both be set",
        ),
        (
            "btls-ip.yaml",
            policy("ip", "Service", "10.0.0.1", false),
            "hostname must be a DNS name, not an IP address",
        ),
        (
            "btls-kind.yaml",
            policy("kind", "Deployment", "backend.example.com", false),
            "a targetRef must refer to a core Service",
        ),
    ] {
        let path = manifest(file, &body);
        let (ok, out, err) = kubectl(vec!["apply".into(), "-f".into(), path]).await;
        assert!(!ok, "accepted {file}: {out}");
        assert!(err.contains(message), "{file}: {err}");
    }
    sb.shutdown().await;
}

/// Objects are checked against the shipped schemas through the kube-rs client: 422 with the
/// field path, defaults filled in, CEL rules enforced, status writes checked on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_schemas_validate_and_default_custom_objects() {
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
        api.create(&PostParams::default(), &typed).await.unwrap();
    }
    let gws = gateways(&client, "default");

    // Out of range: a 422 kube-rs parses, and the Status body exactly as the real server has it.
    let mut bad = gateway("gw", "meridian");
    bad.data["spec"]["listeners"][0]["port"] = json!(0);
    let err = gws.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let raw_bad = send_json(
        &base,
        "POST",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
        "application/json",
        &serde_json::to_value(&bad).unwrap(),
    )
    .await;
    assert_eq!(raw_bad.status, 422);
    let body = raw_bad.json();
    let message =
        "Invalid value: 0: spec.listeners[0].port in body should be greater than or equal to 1";
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("Gateway.gateway.networking.k8s.io \"gw\" is invalid: spec.listeners[0].port: {message}"),
               "reason": "Invalid",
               "details": {"name": "gw", "group": "gateway.networking.k8s.io", "kind": "Gateway",
                           "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "spec.listeners[0].port"}]},
               "code": 422})
    );
    assert!(
        gws.get_opt("gw").await.unwrap().is_none(),
        "nothing was stored"
    );

    // CEL: a TLS listener needs tls, an HTTP one may not have it.
    let mut tls = gateway("gw", "meridian");
    tls.data["spec"]["listeners"][0]["protocol"] = json!("TLS");
    let err = gws.create(&PostParams::default(), &tls).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("a TLS listener needs tls with a mode"),
        "{err}"
    );

    // Defaults on create: listener allowedRoutes, and for a route without rules the spec's
    // catch-all rule; backendRef group/kind/weight.
    gws.create(&PostParams::default(), &gateway("gw", "meridian"))
        .await
        .unwrap();
    let gw = gws.get("gw").await.unwrap();
    assert_eq!(
        gw.data["spec"]["listeners"][0]["allowedRoutes"],
        json!({"namespaces": {"from": "Same"}})
    );
    let route_api = kube::core::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    };
    let routes: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &route_api);
    let route: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw"}]}
    }))
    .unwrap();
    routes.create(&PostParams::default(), &route).await.unwrap();
    let r = routes.get("r").await.unwrap();
    assert_eq!(
        r.data["spec"]["rules"],
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}])
    );
    assert_eq!(
        r.data["spec"]["parentRefs"][0],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"})
    );
    let patch = json!({"spec": {"rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}});
    let r = routes
        .patch("r", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        r.data["spec"]["rules"][0],
        json!({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
               "backendRefs": [{"group": "", "kind": "Service", "name": "svc", "port": 80, "weight": 1}]})
    );
    // A merge patch that breaks a CEL rule: refused, the stored route unchanged.
    let redirect = json!({"spec": {"rules": [{"backendRefs": [{"name": "svc", "port": 80}],
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "x.example.com"}}]}]}});
    let err = routes
        .patch("r", &PatchParams::default(), &Patch::Merge(&redirect))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.rules[0]: Invalid value: \"object\": a RequestRedirect filter cannot be combined with backendRefs"), "{err}");
    assert_eq!(routes.get("r").await.unwrap().data["spec"], r.data["spec"]);

    // Status writes validate the status part: a bad condition status is refused, a good SSA
    // status write (as the controller sends it) is accepted and keeps its fields.
    let bad_status = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw"}, "status": {"conditions": [{"type": "Accepted", "status": "Maybe",
        "reason": "Accepted", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
    let err = gws
        .patch_status(
            "gw",
            &PatchParams::apply("ctrl").force(),
            &Patch::Apply(&bad_status),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("status.conditions[0].status: Unsupported value: \"Maybe\""),
        "{err}"
    );
    let mut good_status = bad_status.clone();
    good_status["status"]["conditions"][0]["status"] = json!("True");
    let gw = gws
        .patch_status(
            "gw",
            &PatchParams::apply("ctrl").force(),
            &Patch::Apply(&good_status),
        )
        .await
        .unwrap();
    assert_eq!(gw.data["status"]["conditions"][0]["status"], "True");
    sb.shutdown().await;
}
