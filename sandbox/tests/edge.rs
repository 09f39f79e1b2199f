//! The local API keeps web pages out and its files private: bodies in media types a real API
//! server does not read get 415 and change nothing; on a loopback bind a `Host` that is not
//! localhost, a loopback IP or an allowed name gets 403, and so does any non-loopback `Origin`;
//! state files and the kubeconfig are written 0600 (directories 0700), on every rewrite. Raw
//! sockets on loopback, so every header is exactly what a browser would send.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_sandbox::{Sandbox, SandboxConfig, SandboxError};
use meridian_test_support::{ScratchDir, eventually, tool_present};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// One HTTP/1.1 exchange over a fresh connection: `head` is the request line plus headers
/// (without the blank line); `Content-Length` and `Connection: close` are added. Returns the
/// status and the body parsed as JSON (`Null` when it is not JSON).
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        resp
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("exchange timed out");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn cm(name: &str) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
        .to_string()
        .into_bytes()
}

fn assert_status(status: u16, body: &Value, code: u16, reason: &str) {
    assert_eq!(status, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

/// Whether a ConfigMap exists in `default`, asked the way kubectl would.
async fn exists(base: &str, name: &str) -> bool {
    let r = get_json(base, &format!("{CMS}/{name}")).await;
    assert!(matches!(r.status, 200 | 404), "{}", r.text());
    r.status == 200
}

/// The body a web page's `fetch(url, {method: "POST", body: "..."})` sends cross-site without
/// a preflight: the JSON of a ConfigMap as `text/plain`. It used to be parsed and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_a_browser_may_send_cross_site_get_415_and_create_nothing() {
    let sb = start(&["c1"]).await;
    let (base, addr) = (sb.clusters()[0].url.clone(), sb.clusters()[0].addr);
    let host = format!("Host: 127.0.0.1:{}", addr.port());

    for (i, ct) in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
        "application/x-yaml",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("csrf-{i}");
        let (status, body) = exchange(
            addr,
            &format!("POST {CMS} HTTP/1.1\r\n{host}\r\nContent-Type: {ct}"),
            &cm(&name),
        )
        .await;
        assert_status(status, &body, 415, "UnsupportedMediaType");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&format!("({ct})")), "{message}");
        assert!(
            message.contains(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf"
            ),
            "{message}"
        );
        assert!(!exists(&base, &name).await, "{ct} created {name}");
    }
    let list = get_json(&base, CMS).await.json();
    assert_eq!(list["items"], json!([]), "nothing was created: {list}");

    // The same bytes as JSON are created (so the 415 is about the media type alone), with or
    // without a charset; without any Content-Type they are JSON, as on a real API server.
    for (name, ct) in [
        ("as-json", "Content-Type: application/json"),
        (
            "as-json-charset",
            "Content-Type: application/json; charset=utf-8",
        ),
        ("no-type", "X-Nothing: 1"),
    ] {
        let (status, body) = exchange(
            addr,
            &format!("POST {CMS} HTTP/1.1\r\n{host}\r\n{ct}"),
            &cm(name),
        )
        .await;
        assert_eq!(status, 201, "{ct}: {body}");
        assert!(exists(&base, name).await);
    }

    // An update or a delete in the wrong media type changes nothing either.
    let mut changed: Value = serde_json::from_slice(&cm("as-json")).unwrap();
    changed["data"]["k"] = json!("changed");
    let (status, body) = exchange(
        addr,
        &format!("PUT {CMS}/as-json HTTP/1.1\r\n{host}\r\nContent-Type: text/plain"),
        changed.to_string().as_bytes(),
    )
    .await;
    assert_status(status, &body, 415, "UnsupportedMediaType");
    let (status, body) = exchange(
        addr,
        &format!("DELETE {CMS}/as-json HTTP/1.1\r\n{host}\r\nContent-Type: text/plain"),
        br#"{"propagationPolicy":"Background"}"#,
    )
    .await;
    assert_status(status, &body, 415, "UnsupportedMediaType");
    let kept = get_json(&base, &format!("{CMS}/as-json")).await.json();
    assert_eq!(kept["data"]["k"], "v", "{kept}");
    // A PATCH has its own four media types; JSON itself is not one of them.
    let (status, body) = exchange(
        addr,
        &format!("PATCH {CMS}/as-json HTTP/1.1\r\n{host}\r\nContent-Type: application/json"),
        br#"{"data":{"k":"patched"}}"#,
    )
    .await;
    assert_status(status, &body, 415, "UnsupportedMediaType");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/merge-patch+json"),
        "{body}"
    );
    let (status, body) = exchange(
        addr,
        &format!(
            "PATCH {CMS}/as-json HTTP/1.1\r\n{host}\r\nContent-Type: application/merge-patch+json; charset=utf-8"
        ),
        br#"{"data":{"k":"patched"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["k"], "patched");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_or_origin_gets_403_loopback_names_work() {
    let sb = start(&["c1"]).await;
    let (base, addr) = (sb.clusters()[0].url.clone(), sb.clusters()[0].addr);
    let port = addr.port();
    let post = |host: &str, extra: &str| {
        format!("POST {CMS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json{extra}")
    };

    // DNS rebinding: the page's own name, now resolving to 127.0.0.1.
    let (status, body) = exchange(addr, &post("evil.example", ""), &cm("rebound")).await;
    assert_status(status, &body, 403, "Forbidden");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("host \"evil.example\""), "{message}");
    assert!(message.contains("--allowed-host evil.example"), "{message}");
    let (status, body) = exchange(
        addr,
        &post(&format!("evil.example:{port}"), ""),
        &cm("rebound"),
    )
    .await;
    assert_status(status, &body, 403, "Forbidden");
    // Reads are refused too: a rebound page could otherwise read Secrets.
    let (status, body) = exchange(
        addr,
        &format!("GET /api/v1/secrets HTTP/1.1\r\nHost: evil.example:{port}"),
        b"",
    )
    .await;
    assert_status(status, &body, 403, "Forbidden");

    // Cross-site: the right Host, but a page of another origin.
    let (status, body) = exchange(
        addr,
        &post(
            &format!("127.0.0.1:{port}"),
            "\r\nOrigin: http://evil.example",
        ),
        &cm("cross-site"),
    )
    .await;
    assert_status(status, &body, 403, "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("origin \"http://evil.example\""),
        "{body}"
    );
    let (status, _) = exchange(
        addr,
        &post(&format!("localhost:{port}"), "\r\nOrigin: null"),
        &cm("null-origin"),
    )
    .await;
    assert_eq!(status, 403);
    for name in ["rebound", "cross-site", "null-origin"] {
        assert!(!exists(&base, name).await, "{name} was created");
    }

    // What kubectl and kube-rs send: a loopback Host (any spelling, any port), no Origin. A
    // local page (an origin on localhost) is the user's own.
    for (name, host, extra) in [
        ("by-localhost", format!("localhost:{port}"), ""),
        ("by-ip", format!("127.0.0.1:{port}"), ""),
        ("by-bare-localhost", "localhost".to_string(), ""),
        (
            "by-local-page",
            format!("localhost:{port}"),
            "\r\nOrigin: http://localhost:3000",
        ),
    ] {
        let (status, body) = exchange(addr, &post(&host, extra), &cm(name)).await;
        assert_eq!(status, 201, "{host}: {body}");
        assert!(exists(&base, name).await);
    }
    // A kube-rs client (Host from its URL) works as before.
    let client = kube_client(&base);
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 4);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_are_served_and_bad_ones_refused_at_start() {
    let sb = Sandbox::start(SandboxConfig {
        allowed_hosts: vec!["Sandbox.Test".into()],
        ..SandboxConfig::ephemeral(&["c1"])
    })
    .await
    .unwrap();
    let (base, addr) = (sb.clusters()[0].url.clone(), sb.clusters()[0].addr);
    let head = |host: &str| {
        format!("POST {CMS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json")
    };
    let (status, body) = exchange(
        addr,
        &head(&format!("sandbox.test:{}", addr.port())),
        &cm("named"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = exchange(
        addr,
        &format!("{}\r\nOrigin: https://sandbox.test", head("sandbox.test")),
        &cm("named-page"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = exchange(addr, &head("other.test"), &cm("other")).await;
    assert_status(status, &body, 403, "Forbidden");
    assert!(exists(&base, "named").await);
    assert!(!exists(&base, "other").await);
    sb.shutdown().await;

    for bad in ["http://sandbox.test", "sandbox.test:80", ""] {
        let err = Sandbox::start(SandboxConfig {
            allowed_hosts: vec![bad.into()],
            ..SandboxConfig::ephemeral(&["c1"])
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(matches!(err, SandboxError::InvalidAllowedHost(_)), "{err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_and_kubeconfig_are_private() {
    let scratch = ScratchDir::new("sandbox-edge-modes");
    // A directory the sandbox creates (with a missing parent), and files an older version left
    // world-readable.
    let dir = scratch.join("new/state");
    let kubeconfig = scratch.write("kube/config", "stale: true\n");
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = SandboxConfig {
        state_dir: Some(dir.clone()),
        kubeconfig_path: Some(kubeconfig.clone()),
        enforce_rbac: true,
        ..SandboxConfig::ephemeral(&["east"])
    };
    let sb = Sandbox::start(cfg.clone()).await.unwrap();
    assert_eq!(mode(&dir), 0o700, "state dir");
    assert_eq!(mode(&scratch.join("new")), 0o700, "its parent, created too");
    assert_eq!(mode(&kubeconfig), 0o600, "kubeconfig rewritten");
    let admin = sb.admin_token("east").unwrap();
    assert!(
        std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .contains(&admin),
        "this kubeconfig carries the admin token"
    );

    // The background writer's snapshot.
    let base = sb.clusters()[0].url.clone();
    let auth = format!("Bearer {admin}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    assert_eq!(
        raw(&base, "POST", CMS, &headers, cm("one")).await.status,
        201
    );
    let state = dir.join("east.json");
    eventually("east.json written", Duration::from_secs(10), || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"one\""))
    })
    .await;
    assert_eq!(mode(&state), 0o600, "snapshot");

    // A snapshot someone made world-readable is rewritten 0600.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        raw(&base, "POST", CMS, &headers, cm("two")).await.status,
        201
    );
    eventually("east.json rewritten", Duration::from_secs(10), || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"two\""))
    })
    .await;
    assert_eq!(mode(&state), 0o600, "rewritten snapshot");
    // And the flush of a stop.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    sb.stop_cluster("east").await.unwrap();
    assert_eq!(mode(&state), 0o600, "snapshot flushed on stop");
    sb.restart_cluster("east", None).await.unwrap();
    sb.shutdown().await;
    assert_eq!(mode(&state), 0o600, "final snapshot");

    // No temp files are left behind, and the state loads again.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["east.json"]);
    let sb = Sandbox::start(cfg).await.unwrap();
    let auth = format!("Bearer {}", sb.admin_token("east").unwrap());
    let r = raw(
        &sb.clusters()[0].url,
        "GET",
        &format!("{CMS}/two"),
        &[("authorization", auth.as_str())],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    sb.shutdown().await;
}

/// kubectl's writes (create, apply client- and server-side, the three patch types, replace,
/// edit, label, delete) all send media types the server reads, through a kubeconfig that names
/// the server `localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_writes_pass_the_media_type_and_host_checks() {
    if !tool_present("kubectl", &["version", "--client"]) {
        eprintln!("kubectl not installed; skipping");
        return;
    }
    let sb = start(&["c1"]).await;
    let scratch = ScratchDir::new("sandbox-edge-kubectl");
    let port = sb.clusters()[0].addr.port();
    let kubeconfig = scratch.write(
        "kubeconfig",
        &meridian_sandbox::kubeconfig::render(&[(
            "c1".to_string(),
            format!("http://localhost:{port}"),
        )]),
    );
    let cache = scratch.join("cache");
    // `kubectl edit` runs $EDITOR on a temp file: a sed that changes one value.
    let editor = scratch.write(
        "edit.sh",
        "#!/bin/sh\nsed -i 's/edited: \"no\"/edited: \"yes\"/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manifest = scratch.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\n  namespace: default\ndata:\n  edited: \"no\"\n",
    );
    let kubectl = async |args: &[&str]| -> String {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--request-timeout=15s")
            .args(args)
            .env("KUBE_EDITOR", &editor)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl {args:?}: {text}");
        text
    };
    let m = manifest.to_str().unwrap();
    assert!(
        kubectl(&["create", "-f", m])
            .await
            .contains("configmap/smoke created")
    );
    assert!(
        kubectl(&["apply", "-f", m])
            .await
            .contains("configmap/smoke")
    );
    kubectl(&["apply", "--server-side", "-f", m]).await;
    kubectl(&[
        "patch",
        "configmap",
        "smoke",
        "-p",
        r#"{"data":{"merge":"1"}}"#,
    ])
    .await;
    kubectl(&[
        "patch",
        "configmap",
        "smoke",
        "--type=merge",
        "-p",
        r#"{"data":{"m2":"1"}}"#,
    ])
    .await;
    kubectl(&[
        "patch",
        "configmap",
        "smoke",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/j","value":"1"}]"#,
    ])
    .await;
    kubectl(&["label", "configmap", "smoke", "tier=edge"]).await;
    kubectl(&["edit", "configmap", "smoke"]).await;
    let got: Value =
        serde_json::from_str(&kubectl(&["get", "configmap", "smoke", "-o", "json"]).await).unwrap();
    assert_eq!(got["data"]["edited"], "yes", "{got}");
    for k in ["merge", "m2", "j"] {
        assert_eq!(got["data"][k], "1", "{got}");
    }
    assert_eq!(got["metadata"]["labels"]["tier"], "edge");
    let replaced = scratch.write(
        "cm2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\n  namespace: default\ndata:\n  only: \"this\"\n",
    );
    kubectl(&["replace", "-f", replaced.to_str().unwrap()]).await;
    kubectl(&["create", "configmap", "generated", "--from-literal=a=b"]).await;
    kubectl(&["delete", "configmap", "smoke", "generated"]).await;
    let left = get_json(&sb.clusters()[0].url, CMS).await.json();
    assert_eq!(left["items"], json!([]), "{left}");
    sb.shutdown().await;
}
