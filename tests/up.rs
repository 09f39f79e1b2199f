//! `meridian up` end to end, as README's first command runs it: a real process, real kubectl,
//! real HTTP to every region's Gateway address.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_test_support::eventually_blocking;

mod common;

/// Interval between two `kubectl get` polls.
const POLL: Duration = Duration::from_millis(200);

fn get(addr: &str) -> String {
    get_path(addr, "/hello")
}

fn get_path(addr: &str, path: &str) -> String {
    get_port_path(addr, 80, path)
}

fn get_port_path(addr: &str, port: u16, path: &str) -> String {
    try_get(addr, port, path).unwrap()
}

/// `GET path` on `addr:port`; the error when the connection fails (a listener not bound yet).
fn try_get(addr: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect((addr, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn up_serves_every_region_from_its_own_backends() {
    if !common::have_kubectl() {
        eprintln!("SKIP: kubectl is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("meridian-up-test-{}", std::process::id()));
    let up = common::start_up(&dir, &[], &[]);
    let programmed_after = up.programmed_after;
    let programmed_after = programmed_after.expect("up prints the time until all Programmed");
    assert!(
        programmed_after > 0.0 && programmed_after < 120.0,
        "{programmed_after}"
    );
    println!("all Gateways Programmed {programmed_after:.1} s after start");

    let kubeconfig = dir.join("kubeconfig");
    for (ctx, addr, region) in [
        ("east", "127.0.10.1", "us-east"),
        ("west", "127.0.11.1", "us-west"),
        ("central", "127.0.12.1", "eu-central"),
    ] {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            // A private discovery cache: ports are reused across runs.
            .arg("--cache-dir")
            .arg(dir.join("kube-cache"))
            .args(["--context", ctx, "get", "gateways", "-A", "--no-headers"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        let cols: Vec<&str> = text.split_whitespace().collect();
        // NAMESPACE NAME CLASS ADDRESS PROGRAMMED AGE
        assert_eq!(
            &cols[..5],
            ["demo", "web", "meridian", addr, "True"],
            "{ctx}: {text} {err}"
        );

        let answer = get(addr);
        assert!(answer.starts_with("HTTP/1.1 200"), "{ctx}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["region"], region,
            "{ctx} must be served in its own region: {body}"
        );
        assert_eq!(v["zone"], format!("{region}-a"), "same zone first: {body}");
        assert_eq!(v["path"], "/hello");
    }

    // Every request through the demo's proxies is a line in DIR/access.log, and up says so.
    let log = dir.join("access.log");
    let said = (0..50).find_map(|_| {
        let line = up.lines.recv_timeout(Duration::from_millis(200)).ok()?;
        line.contains("access.log").then_some(line)
    });
    let said = said.expect("up names its access log");
    assert!(said.contains(&log.display().to_string()), "{said}");
    let path = format!("/access-log-check-{}", std::process::id());
    assert!(get_path("127.0.11.1", &format!("{path}?token=x")).starts_with("HTTP/1.1 200"));
    let line: serde_json::Value = eventually_blocking(
        "the request's access log line",
        Duration::from_secs(10),
        POLL,
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(&path))
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        },
    );
    assert_eq!(line["cluster"], "west", "{line}");
    assert_eq!(line["gateway"], "demo/web", "{line}");
    assert_eq!(line["host"], "demo", "{line}");
    assert_eq!(line["path"], path, "no query: {line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream"]["region"], "us-west", "{line}");
    assert_eq!(line["upstream"]["zone"], "us-west-a", "{line}");
    assert_eq!(line["tier"], 0, "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");

    // The mesh identity, as a real install has it: the CA Secret in the first cluster only,
    // its certificate as the trust bundle ConfigMap in every cluster.
    let kubectl_in = |ctx: &str, args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(dir.join("kube-cache"))
            .args(["--context", ctx, "-n", "meridian-system"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, secret, err) = kubectl_in(
        "east",
        &[
            "get",
            "secret",
            "meridian-ca",
            r#"-o=jsonpath={.type} {.data.tls\.crt}"#,
        ],
    );
    assert!(ok, "the CA Secret in east: {err}");
    let (kind, crt) = secret.split_once(' ').unwrap();
    assert_eq!(kind, "kubernetes.io/tls");
    let ca_pem = String::from_utf8(openssl::base64::decode_block(crt.trim()).unwrap()).unwrap();
    assert!(ca_pem.contains("BEGIN CERTIFICATE"), "{ca_pem}");
    for ctx in ["east", "west", "central"] {
        let (ok, bundle, err) = kubectl_in(
            ctx,
            &[
                "get",
                "configmap",
                "meridian-ca",
                r#"-o=jsonpath={.data.ca\.crt}"#,
            ],
        );
        assert!(ok, "{ctx}: the trust bundle ConfigMap: {err}");
        assert_eq!(bundle.trim(), ca_pem.trim(), "{ctx}: the bundle is the CA");
        if ctx != "east" {
            let (ok, _, _) = kubectl_in(ctx, &["get", "secret", "meridian-ca"]);
            assert!(!ok, "{ctx}: the CA key stays in the first cluster only");
        }
    }
    // Every proxy bootstrapped a certificate naming its cluster (printed with the time it
    // took) and its metrics show it unexpired.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (ctx, region) in [
        ("east", "us-east"),
        ("west", "us-west"),
        ("central", "eu-central"),
    ] {
        // "bootstrap: east (east-proxy) certificate spiffe://meridian.mesh/cluster/east/… after
        // 0.05 s, first snapshot applied after 0.31 s"
        let line = up
            .startup
            .iter()
            .find(|l| l.starts_with(&format!("bootstrap: {ctx} ")))
            .unwrap_or_else(|| panic!("no bootstrap line for {ctx}: {:#?}", up.startup));
        assert!(
            line.contains(&format!(
                "certificate spiffe://meridian.mesh/cluster/{ctx}/region/{region}/zone/{region}-a/proxy/{ctx}-proxy after "
            )) && line.contains("first snapshot applied after"),
            "{line}"
        );
        println!("{line}");
        // "proxy: east (us-east, zone us-east-a) serves at …, admin http://A"
        let admin = up
            .startup
            .iter()
            .find(|l| l.starts_with(&format!("proxy: {ctx} ")))
            .and_then(|l| l.split("admin http://").nth(1))
            .and_then(|s| s.split(',').next())
            .unwrap()
            .to_string();
        let (host, port) = admin.rsplit_once(':').unwrap();
        let mut s = TcpStream::connect((host, port.parse::<u16>().unwrap())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut metrics = String::new();
        s.read_to_string(&mut metrics).unwrap();
        let expiry: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("meridian_proxy_certificate_expiry_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no certificate expiry metric"));
        assert!(
            expiry > now + 60.0,
            "{ctx}: the proxy's certificate expires at {expiry}, now is {now}"
        );
    }

    // Every example users copy is accepted by the running controller.
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(dir.join("kube-cache"))
            .args(["--context", "east"])
            .args(args)
            .output()
            .unwrap()
    };
    // Top-level files only: examples/https/ needs a certificate and Secret made first (its
    // README's steps), which tests/https.rs runs.
    let mut routes = Vec::new();
    for entry in std::fs::read_dir("examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let out = kubectl(&["apply", "-f", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            for kind in ["httproute", "grpcroute", "tlsroute"] {
                if let Some(name) = line.strip_prefix(&format!("{kind}.gateway.networking.k8s.io/"))
                {
                    routes.push((kind, name.split_whitespace().next().unwrap().to_string()));
                }
            }
        }
    }
    assert!(
        routes.iter().filter(|(k, _)| *k == "httproute").count() >= 6,
        "examples define HTTPRoutes: {routes:?}"
    );
    assert!(
        routes.iter().any(|(k, _)| *k == "grpcroute"),
        "examples define a GRPCRoute: {routes:?}"
    );
    assert!(
        routes.iter().any(|(k, _)| *k == "tlsroute"),
        "examples define a TLSRoute: {routes:?}"
    );
    assert!(
        routes.contains(&("httproute", "team".to_string())),
        "examples define an HTTPRoute on a ListenerSet: {routes:?}"
    );
    let jsonpath = r#"-o=jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}"#;
    for (kind, route) in &routes {
        eventually_blocking(
            &format!("example {kind} {route} Accepted"),
            Duration::from_secs(30),
            POLL,
            || {
                let out = kubectl(&["get", kind, "-n", "demo", route, jsonpath]);
                let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if status == "True" {
                    Ok(())
                } else {
                    Err(status)
                }
            },
        );
    }

    // examples/listenerset.yaml: the ListenerSet is attached to Gateway `shared` and its
    // listener on port 8080 is served on that Gateway's address, reaching the echo backends.
    let address = eventually_blocking(
        "the ListenerSet Accepted and Programmed, its Gateway Programmed with an address",
        Duration::from_secs(30),
        POLL,
        || {
            let set = kubectl(&[
                "get",
                "listenerset",
                "-n",
                "demo",
                "team-listeners",
                r#"-o=jsonpath={.status.conditions[?(@.type=="Accepted")].status} {.status.conditions[?(@.type=="Programmed")].status} {.status.listeners[0].attachedRoutes}"#,
            ]);
            let set = String::from_utf8_lossy(&set.stdout).to_string();
            if set != "True True 1" {
                return Err(format!("ListenerSet: {set:?}"));
            }
            let gw = kubectl(&[
                "get",
                "gateway",
                "-n",
                "demo",
                "shared",
                r#"-o=jsonpath={.status.attachedListenerSets} {.status.addresses[0].value}"#,
            ]);
            let gw = String::from_utf8_lossy(&gw.stdout).to_string();
            match gw.strip_prefix("1 ") {
                Some(addr) if !addr.trim().is_empty() => Ok(addr.trim().to_string()),
                _ => Err(format!("Gateway: {gw:?}")),
            }
        },
    );
    let answer = eventually_blocking(
        "a request through the ListenerSet's listener answered",
        Duration::from_secs(30),
        POLL,
        || {
            let answer = try_get(&address, 8080, "/team").map_err(|e| e.to_string())?;
            if answer.starts_with("HTTP/1.1 200") {
                Ok(answer)
            } else {
                Err(answer)
            }
        },
    );
    let region_of = |answer: &str| -> String {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["region"].as_str().unwrap_or(body).to_string()
    };
    // Served in east's own region, except for the share examples/failover-policy.yaml sends from
    // us-east to us-west (`weights`: 10 %): of 20 requests at least 12 stay in us-east (9 or more
    // of 20 going west at 10 % has a chance of about 1e-5), and none leaves for another region.
    let mut regions = vec![region_of(&answer)];
    for _ in 1..20 {
        let answer = get_port_path(&address, 8080, "/team");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        regions.push(region_of(&answer));
    }
    let east = regions.iter().filter(|r| *r == "us-east").count();
    assert!(
        east >= 12 && regions.iter().all(|r| r == "us-east" || r == "us-west"),
        "served in east's own region (10 % may go to us-west): {regions:?}"
    );
    // The Gateway's own port 80 has no route for /team: the listeners are kept apart.
    assert!(get_port_path(&address, 80, "/team").starts_with("HTTP/1.1 404"));

    // A second Gateway in the same region gets its own address, so it can listen on port 80 too.
    let second = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: second, namespace: demo}
spec:
  gatewayClassName: meridian
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: second, namespace: demo}
spec:
  parentRefs: [{name: second}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /second}}]
      backendRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: echo, port: 80}]
"#;
    let mut apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .args(["--context", "east", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut apply.stdin.take().unwrap(), second.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success(), "apply the second Gateway");
    let address = eventually_blocking(
        "the second Gateway Programmed",
        Duration::from_secs(30),
        POLL,
        || {
            let out = kubectl(&[
                "get",
                "gateway",
                "-n",
                "demo",
                "second",
                r#"-o=jsonpath={.status.conditions[?(@.type=="Programmed")].status} {.status.addresses[0].value}"#,
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            match text.strip_prefix("True ") {
                Some(addr) => Ok(addr.trim().to_string()),
                None => Err(text),
            }
        },
    );
    // Its own address from the region's pool (the examples' Gateways took some already).
    assert!(
        address.starts_with("127.0.10.") && address != "127.0.10.1",
        "the second Gateway's own address: {address}"
    );
    let answer = get_path(&address, "/second");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The first Gateway still answers on its own address.
    assert!(get("127.0.10.1").starts_with("HTTP/1.1 200"));

    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
