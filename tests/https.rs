//! `examples/https/` end to end: `meridian up`, then exactly the shell lines its README documents
//! (openssl makes the certificate, `kubectl create secret tls`, `kubectl apply`, `kubectl wait`),
//! then real HTTPS through the region's proxy, trusting only that certificate, with SNI = the
//! listener hostname, answered by the demo echo backend.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meridian_test_support::tool_present;
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;

mod common;

const HOST: &str = "secure.example.com";

/// The fenced ```sh blocks of a Markdown file, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Runs a README block with bash (stop at the first failing line) in `work`.
fn run_block(block: &str, work: &Path, cache: &Path) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(work)
        .env("KUBECACHEDIR", cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README block failed:\n{block}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One HTTPS request to `addr:443`, trusting only `ca`, with SNI and Host `host`.
fn https_get(addr: &str, host: &str, ca: &Path, path: &str) -> Result<(X509, String), String> {
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_ca_file(ca).map_err(|e| e.to_string())?;
    let connector = b.build();
    let tcp = TcpStream::connect((addr, 443)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // `connect` sends `host` as SNI and checks the certificate names it.
    let mut tls = connector.connect(host, tcp).map_err(|e| e.to_string())?;
    let peer = tls.ssl().peer_certificate().ok_or("no peer certificate")?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // A peer that closes without close_notify is fine once the response is in.
    let _ = tls.read_to_end(&mut out);
    Ok((peer, String::from_utf8_lossy(&out).into_owned()))
}

#[test]
fn https_example_terminates_tls_with_the_secret_kubectl_made() {
    if !common::have_kubectl() || !tool_present("openssl", &["version"]) {
        eprintln!("SKIP: kubectl and openssl are needed (the example's README uses both)");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("examples/https/README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert_eq!(blocks.len(), 2, "README has a set-up and a try-it block");
    for needed in [
        "openssl req -x509",
        "kubectl --context east -n demo create secret tls secure-example",
        "kubectl --context east apply -f examples/https/gateway.yaml",
    ] {
        assert!(blocks[0].contains(needed), "set-up block runs `{needed}`");
    }

    let dir = std::env::temp_dir().join(format!("meridian-https-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.join("state");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let up = common::start_up(&state, &[], &[]);
    // The README runs from the repository root with `up`'s default state directory.
    std::os::unix::fs::symlink(repo.join("examples"), work.join("examples")).unwrap();
    std::os::unix::fs::symlink(&state, work.join(".meridian")).unwrap();
    let cache = dir.join("kube-cache");

    let out = run_block(&blocks[0], &work, &cache);
    assert!(out.contains("secret/secure-example created"), "{out}");
    assert!(
        out.contains("gateway.gateway.networking.k8s.io/secure created"),
        "{out}"
    );
    assert!(out.contains("condition met"), "{out}");

    let status = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(state.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(&cache)
        .args([
            "--context",
            "east",
            "-n",
            "demo",
            "get",
            "gateway",
            "secure",
        ])
        .arg("-o=jsonpath={.status.addresses[0].value}")
        .output()
        .unwrap();
    let addr = String::from_utf8_lossy(&status.stdout).trim().to_string();
    assert!(
        addr.starts_with("127.0.10.") && addr != "127.0.10.1",
        "the HTTPS Gateway gets its own address in east, next to demo/web's: {addr:?}"
    );

    let ca = work.join("secure-example.crt");
    let (peer, answer) = https_get(&addr, HOST, &ca, "/hello").unwrap();
    let expected = X509::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    assert_eq!(
        peer.to_der().unwrap(),
        expected.to_der().unwrap(),
        "the proxy serves the certificate from the Secret"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["path"], "/hello", "{body}");
    assert_eq!(
        v["region"], "us-east",
        "east's proxy serves from its region: {body}"
    );

    // No listener has a certificate for another name: the handshake fails.
    let other = https_get(&addr, "other.example.com", &ca, "/hello");
    assert!(other.is_err(), "{other:?}");

    // The README's try-it lines, as a user runs them in the same shell (its exports apply).
    if tool_present("curl", &["--version"]) {
        let exports: String = blocks[0]
            .lines()
            .filter(|l| l.starts_with("export "))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = run_block(&format!("{exports}{}", blocks[1]), &work, &cache);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["path"], "/hello", "{out}");
    }

    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
