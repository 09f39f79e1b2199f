//! The secure link from the command line, as an install runs it: `meridian controller
//! --distribution-bind` against a Kubernetes API (the sandbox) makes its mesh CA Secret and
//! publishes the trust bundle ConfigMap; `meridian proxy --ca-file <that bundle>
//! --bootstrap-token-file <a ServiceAccount token>` trades the token for a certificate and
//! serves the Gateway, which turns Programmed=True (its `--east-west` listener runs on the same
//! certificate). A token of another ServiceAccount, or one
//! for the Kubernetes API's audience, gets no certificate, and the proxy's `/ready` says why.
//!
//! ```text
//! sandbox east ◄─ kubectl (CRDs, namespace, ServiceAccounts, Gateway, create token)
//!   ▲ CA Secret, ConfigMap meridian-ca, TokenReviews, Gateway status
//! meridian controller --distribution-bind P ◄─ mTLS ─ meridian proxy --ca-file --bootstrap-token-file
//! ```
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_sandbox::{Sandbox, SandboxConfig};
use meridian_test_support::{ScratchDir, Stop, eventually_blocking, free_port};

mod common;

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(30);

/// `kubectl --kubeconfig K --context east ARGS` with `stdin`: (success, stdout, stderr).
fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = common::kubectl_east(kubeconfig, cache, args, Some(stdin));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The body of `GET path` on `addr`.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

/// `meridian proxy` following `controller` as cluster east with `token_file` (and `extra` flags).
fn proxy(
    controller: &str,
    ca_file: &Path,
    token_file: &Path,
    id: &str,
    admin: &str,
    extra: &[&str],
) -> Stop {
    Stop(
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["proxy", "--controller", controller])
            .args([
                "--cluster",
                "east",
                "--region",
                "us-east",
                "--zone",
                "us-east-a",
            ])
            .args(["--proxy-id", id, "--admin", admin])
            .args(["--advertise-address", "127.0.20.1"])
            .arg("--ca-file")
            .arg(ca_file)
            .arg("--bootstrap-token-file")
            .arg(token_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// The proxy's `/ready` JSON once its controller link reports an error.
fn refused_reason(admin: &str) -> String {
    eventually_blocking(
        "the proxy reports why it has no certificate",
        WAIT,
        POLL,
        || {
            let body = http_get(admin, "/ready")?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            assert_eq!(v["ready"], false, "a refused proxy serves nothing: {body}");
            match v["controller"]["lastError"].as_str() {
                Some(e) if !e.is_empty() => Ok(e.to_string()),
                _ => Err(body),
            }
        },
    )
}

#[test]
fn a_proxy_bootstraps_from_the_command_line_and_wrong_tokens_are_refused() {
    if !common::have_kubectl() {
        eprintln!("SKIP: kubectl is not installed");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sb = rt
        .block_on(Sandbox::start(SandboxConfig::ephemeral(&["east"])))
        .unwrap();
    let dir = ScratchDir::new("secure-links");
    let kubeconfig = dir.write("kubeconfig", &sb.kubeconfig_yaml());
    let cache = dir.join("kube-cache");
    let k = |args: &[&str], stdin: &str| kubectl(&kubeconfig, &cache, args, stdin);

    // What an install brings: the CRDs, the proxies' namespace and ServiceAccount (and one that
    // is not a proxy's), a GatewayClass and a Gateway.
    let crds = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("crds")
        .output()
        .unwrap();
    let crds = String::from_utf8(crds.stdout).unwrap();
    let (ok, _, err) = k(&["apply", "--server-side", "-f", "-"], &crds);
    assert!(ok, "CRDs: {err}");
    // (Applied as YAML: the sandbox decodes ServiceAccounts from JSON only, and `kubectl
    // create serviceaccount` sends protobuf.)
    let accounts = "apiVersion: v1\nkind: Namespace\nmetadata: {name: meridian-system}\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n\
                    apiVersion: v1\nkind: ServiceAccount\n\
                    metadata: {name: meridian-proxy, namespace: meridian-system}\n---\n\
                    apiVersion: v1\nkind: ServiceAccount\n\
                    metadata: {name: intruder, namespace: meridian-system}\n";
    let (ok, _, err) = k(&["apply", "-f", "-"], accounts);
    assert!(ok, "namespaces and ServiceAccounts: {err}");
    let port = free_port();
    let gateway = format!(
        "{}\n---\n{}",
        include_str!("../examples/demo/10-gatewayclass.yaml"),
        include_str!("../examples/demo/20-gateway.yaml")
            .replace("port: 80", &format!("port: {port}"))
    );
    let (ok, _, err) = k(&["apply", "-f", "-"], &gateway);
    assert!(ok, "Gateway: {err}");

    // The controller, as deploy/ runs it (no CA files: its CA Secret is created in east).
    let bind = format!("127.0.0.1:{}", free_port());
    let controller = Stop(
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--cluster", "east@us-east", "--distribution-bind", &bind])
            .args(["--gateway-addresses", "east=127.0.20.1-127.0.20.9"])
            .env("POD_NAMESPACE", "meridian-system")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The trust bundle a proxy pod mounts as --ca-file.
    let bundle = eventually_blocking("the trust bundle ConfigMap", WAIT, POLL, || {
        let (ok, out, err) = k(
            &[
                "-n",
                "meridian-system",
                "get",
                "configmap",
                "meridian-ca",
                r#"-o=jsonpath={.data.ca\.crt}"#,
            ],
            "",
        );
        if ok && out.contains("BEGIN CERTIFICATE") {
            Ok(out)
        } else {
            Err(format!("{out}{err}"))
        }
    });
    let (ok, kind, err) = k(
        &[
            "-n",
            "meridian-system",
            "get",
            "secret",
            "meridian-ca",
            "-o=jsonpath={.type}",
        ],
        "",
    );
    assert!(
        ok && kind == "kubernetes.io/tls",
        "the CA Secret: {kind} {err}"
    );
    let ca_file = dir.write("ca.crt", &bundle);
    let token = |account: &str, audience: Option<&str>| -> PathBuf {
        let mut args = vec!["-n", "meridian-system", "create", "token", account];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        let (ok, out, err) = k(&args, "");
        assert!(ok, "token of {account}: {err}");
        dir.write(
            format!("{account}-{}.token", audience.unwrap_or("api")),
            out.trim(),
        )
    };
    let controller_url = format!("https://{bind}");

    // The proxy's own account, audience meridian: a certificate, the snapshot, Programmed.
    let admin = format!("127.0.0.1:{}", free_port());
    let good = proxy(
        &controller_url,
        &ca_file,
        &token("meridian-proxy", Some("meridian")),
        "east-1",
        &admin,
        // East-west from the command line: the listener presents the certificate the
        // controller link bootstrapped (one store for both).
        &["--east-west", "127.0.0.1:0"],
    );
    let address = eventually_blocking("Gateway demo/web Programmed=True", WAIT, POLL, || {
        let (_, out, err) = k(
            &[
                "-n",
                "demo",
                "get",
                "gateway",
                "web",
                r#"-o=jsonpath={.status.conditions[?(@.type=="Programmed")].status} {.status.addresses[0].value}"#,
            ],
            "",
        );
        match out.strip_prefix("True ") {
            Some(a) => Ok(a.trim().to_string()),
            None => Err(format!("{out}{err}")),
        }
    });
    assert_eq!(address, "127.0.20.1");
    let metrics = http_get(&admin, "/metrics").unwrap();
    let expiry: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meridian_proxy_certificate_expiry_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no expiry metric: {metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry > now + 60, "expiry {expiry}, now {now}");
    assert!(
        metrics.contains(
            r#"meridian_proxy_tls_handshake_failures_total{listener="east-west",reason="no-certificate"} 0"#
        ),
        "the east-west listener runs with the mesh identity: {metrics}"
    );
    drop(good);

    // Another ServiceAccount of the same cluster: refused by name.
    let admin = format!("127.0.0.1:{}", free_port());
    let intruder = proxy(
        &controller_url,
        &ca_file,
        &token("intruder", Some("meridian")),
        "east-2",
        &admin,
        &[],
    );
    let why = refused_reason(&admin);
    assert!(
        why.contains("system:serviceaccount:meridian-system:intruder"),
        "{why}"
    );
    drop(intruder);

    // The proxy's account, but a token for the Kubernetes API: no bootstrap credential.
    let admin = format!("127.0.0.1:{}", free_port());
    let api = proxy(
        &controller_url,
        &ca_file,
        &token("meridian-proxy", None),
        "east-3",
        &admin,
        &[],
    );
    let why = refused_reason(&admin);
    assert!(why.contains("did not accept the token"), "{why}");
    drop(api);

    // The controller first: it would log the sandbox's absence.
    drop(controller);
    rt.block_on(sb.shutdown());
}
