//! The east-west hop's mutual TLS on loopback: who the listener admits, what the sender accepts,
//! and certificate renewal under load.
//!
//! ```text
//! client ─► A (east) Gateway ─ APP ─ mTLS, SNI west.proxy.meridian.mesh ─► B (west) east-west ─► echo
//! raw TLS clients (no certificate, another mesh, B's own cluster, the controller, a proxy of
//! another cluster) ─► B east-west
//! ```
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::mesh::{self, ca, controller_creds, proxy_creds};
use common::{Echo, TEST_TIMEOUT, WAIT, answered_by, client, eventually, free_port, get_url};
use meridian_distribution::pki::{CertStore, Credentials};
use meridian_model::Snapshot;
use meridian_proxy::{ProxyConfig, ProxyHandle, StartError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "default/app:80";

/// An endpoint JSON.
fn endpoint(addr: SocketAddr, cluster: &str, zone: &str, east_west: bool) -> Value {
    json!({
        "address": addr.ip().to_string(), "port": addr.port(),
        "cluster": cluster, "region": "eu-west", "zone": zone, "eastWest": east_west,
    })
}

/// A receiving proxy's snapshot: APP from `echo`.
fn receiver(generation: u64, echo: &Echo) -> Snapshot {
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "eastWest": [{"name": APP, "endpoints": [endpoint(echo.addr, "west", "z1", false)]}],
    }))
    .unwrap()
}

/// A sending proxy's snapshot: Gateway on `port`, `/` → APP over `eps`.
fn sender(generation: u64, port: u16, eps: Vec<Value>) -> Snapshot {
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": generation,
        "gateways": [{
            "namespace": "default", "name": "gw", "servedByHeader": true,
            "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                "routes": [{"namespace": "default", "name": "r", "rules": [{
                    "backends": [{"name": APP, "target": {"type": "endpoints", "endpoints": eps}}],
                }]}],
            }],
        }],
    }))
    .unwrap()
}

/// The handshake failures of B's east-west listener counted for `reason`.
fn refused(p: &ProxyHandle, reason: &str) -> u64 {
    let prefix = format!(
        "meridian_proxy_tls_handshake_failures_total{{listener=\"east-west\",reason=\"{reason}\"}} "
    );
    p.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}in {}", p.metrics_text()))
}

/// `meridian_proxy_certificate_expiry_seconds` of `p`.
fn expiry(p: &ProxyHandle) -> u64 {
    p.metrics_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("meridian_proxy_certificate_expiry_seconds ")?
                .parse()
                .ok()
        })
        .unwrap()
}

fn unix(c: &Credentials) -> u64 {
    c.not_after()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until B counted one more refused handshake for `reason` than `before`.
async fn counted(p: &ProxyHandle, reason: &str, before: u64) {
    eventually(&format!("a {reason} refusal counted"), WAIT, || {
        refused(p, reason) == before + 1
    })
    .await;
}

#[tokio::test]
async fn the_listener_admits_only_proxies_of_other_clusters_of_the_mesh() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let e1 = Echo::start("e1").await;
        let (b, b_store) = mesh::proxy("west", "eu-west", "a", true).await;
        b.apply(receiver(1, &e1)).await.unwrap();
        let addr = b.east_west_addr().unwrap();
        for reason in ["no-certificate", "unknown-ca", "wrong-identity", "other"] {
            assert_eq!(refused(&b, reason), 0);
        }
        assert_eq!(
            expiry(&b),
            unix(&b_store.credentials().unwrap()),
            "the certificate's not_after"
        );

        // No client certificate.
        let err = mesh::get(addr, "west", None, APP, false).await.unwrap_err();
        counted(&b, "no-certificate", 0).await;
        // Plain HTTP.
        let plain = client()
            .get(format!("http://{addr}/x"))
            .header("x-meridian-backend", APP)
            .send()
            .await;
        assert!(plain.is_err(), "{plain:?}");
        counted(&b, "other", 0).await;
        // A certificate of another mesh (same trust domain name, another CA).
        let foreign = proxy_creds(&mesh::new_ca(), "east", "a", "east-a");
        mesh::get(addr, "west", Some(&foreign), APP, false)
            .await
            .unwrap_err();
        counted(&b, "unknown-ca", 0).await;
        // A proxy of B's own cluster (same network: it has no business on this listener).
        let same = proxy_creds(ca(), "west", "b", "west-b");
        mesh::get(addr, "west", Some(&same), APP, false)
            .await
            .unwrap_err();
        counted(&b, "wrong-identity", 0).await;
        // The controller's certificate.
        mesh::get(addr, "west", Some(&controller_creds()), APP, false)
            .await
            .unwrap_err();
        counted(&b, "wrong-identity", 1).await;
        assert_eq!(e1.count(), 0, "nothing refused reached the backend ({err})");
        assert_eq!(b.east_west_traffic().unwrap().requests, 0);

        // A proxy of another cluster of the mesh is served.
        let east = proxy_creds(ca(), "east", "a", "east-a");
        let (status, served_by, body) = mesh::get(addr, "west", Some(&east), APP, false)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "e1");
        assert_eq!(served_by.as_deref(), Some("west/eu-west/z1"));
        // An unknown backend: a 404 naming nothing.
        let name = "default/secret-name:80";
        let (status, _, body) = mesh::get(addr, "west", Some(&east), name, false)
            .await
            .unwrap();
        assert_eq!(status, 404);
        assert_eq!(body, "not found\n");
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(refused(&b, "wrong-identity"), 2);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_east_west_listener_needs_the_mesh_identity() {
    let err = ProxyHandle::start(ProxyConfig {
        east_west: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StartError::NoIdentity(_)), "{err}");
    assert!(
        err.to_string()
            .contains("east-west needs the mesh identity (a certificate from the controller)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_listener_without_its_first_certificate_refuses_until_it_has_one() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let e1 = Echo::start("e1").await;
        // Bootstrap pending: the store trusts the mesh but holds no certificate yet.
        let store = Arc::new(CertStore::new(ca().bundle()));
        let b = ProxyHandle::start(ProxyConfig {
            east_west: Some("127.0.0.1:0".parse().unwrap()),
            identity: Some(store.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        b.apply(receiver(1, &e1)).await.unwrap();
        assert_eq!(expiry(&b), 0);
        let addr = b.east_west_addr().unwrap();
        let east = proxy_creds(ca(), "east", "a", "east-a");
        mesh::get(addr, "west", Some(&east), APP, false)
            .await
            .unwrap_err();
        counted(&b, "other", 0).await;
        // The certificate arrives: the same listener serves, no restart.
        let creds = proxy_creds(ca(), "west", "a", "west-a");
        let not_after = unix(&creds);
        store.set(creds);
        let (status, _, body) = mesh::get(addr, "west", Some(&east), APP, false)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(expiry(&b), not_after);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_sender_refuses_a_listener_of_another_cluster() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (e1, e2) = (Echo::start("e1").await, Echo::start("e2").await);
        let (b, _) = mesh::proxy("west", "eu-west", "a", true).await;
        b.apply(receiver(1, &e1)).await.unwrap();
        // C is a proxy of the mesh, but of cluster north: its certificate names
        // north.proxy.meridian.mesh, not west.
        let (c, _) = mesh::proxy("north", "eu-north", "a", true).await;
        c.apply(receiver(1, &e2)).await.unwrap();
        let (a, _) = mesh::proxy("east", "us-east", "a", false).await;
        let port = free_port();
        let c_as_west = endpoint(c.east_west_addr().unwrap(), "west", "a", true);
        let b_ep = endpoint(b.east_west_addr().unwrap(), "west", "b", true);
        let http = client();
        let url = format!("http://127.0.0.1:{port}/");

        // Only C, labelled as west: the handshake fails, the try fails, nothing reaches C.
        a.apply(sender(1, port, vec![c_as_west.clone()]))
            .await
            .unwrap();
        let (status, _, body) = get_url(&http, &url, &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(c.east_west_traffic().unwrap().requests, 0);
        assert_eq!(e2.count(), 0);

        // C and B: the failed handshake moves on to B; every GET is served by west.
        a.apply(sender(2, port, vec![c_as_west, b_ep]))
            .await
            .unwrap();
        for _ in 0..20 {
            let (status, served_by, body) = get_url(&http, &url, &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(answered_by(&body), "e1");
            assert_eq!(served_by.as_deref(), Some("west/eu-west/z1"));
        }
        assert_eq!(c.east_west_traffic().unwrap().requests, 0);
        assert_eq!(e2.count(), 0);
    })
    .await
    .unwrap();
}

/// A stand-in for a west proxy's east-west listener that records the serial of every client
/// certificate it sees and answers each request on a new connection.
async fn recording_listener(
    creds: Credentials,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let acceptor = meridian_distribution::pki::server_acceptor(
        &creds,
        &ca().bundle(),
        meridian_distribution::pki::ClientCerts::Required,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let s = seen.clone();
    tokio::spawn(async move {
        // Bounded: the test sends a handful of requests.
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
            let mut tls = pingora_core::tls::tokio_ssl::SslStream::new(ssl, tcp).unwrap();
            if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                continue;
            }
            let serial = tls
                .ssl()
                .peer_certificate()
                .map(|c| c.serial_number().to_bn().unwrap().to_vec())
                .unwrap_or_default();
            s.lock().unwrap().push(serial);
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"{"name":"recorder"}"#;
            let _ = tls
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nx-meridian-served-by: west/eu-west/z9\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            let _ = tls.shutdown().await;
        }
    });
    (addr, seen)
}

fn serial(c: &Credentials) -> Vec<u8> {
    c.leaf().serial_number().to_bn().unwrap().to_vec()
}

#[tokio::test]
async fn the_sender_presents_its_renewed_certificate_on_new_connections() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (listener, seen) = recording_listener(proxy_creds(ca(), "west", "a", "west-a")).await;
        let (a, a_store) = mesh::proxy("east", "us-east", "a", false).await;
        let port = free_port();
        a.apply(sender(1, port, vec![endpoint(listener, "west", "a", true)]))
            .await
            .unwrap();
        let http = client();
        let url = format!("http://127.0.0.1:{port}/");
        let old = serial(&a_store.credentials().unwrap());
        let (status, _, body) = get_url(&http, &url, &[]).await;
        assert_eq!(status, 200, "{body}");
        let renewed = proxy_creds(ca(), "east", "a", "east-a");
        let new = serial(&renewed);
        a_store.set(renewed);
        let (status, _, body) = get_url(&http, &url, &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(*seen.lock().unwrap(), vec![old, new]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn certificates_renewed_under_load_fail_no_request() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let e1 = Echo::start("e1").await;
        let (b, b_store) = mesh::proxy("west", "eu-west", "a", true).await;
        b.apply(receiver(1, &e1)).await.unwrap();
        let (a, a_store) = mesh::proxy("east", "us-east", "a", false).await;
        let port = free_port();
        let b_addr = b.east_west_addr().unwrap();
        a.apply(sender(1, port, vec![endpoint(b_addr, "west", "a", true)]))
            .await
            .unwrap();
        let before = mesh::served_certificate(b_addr, "west").await;
        assert_eq!(
            before.serial_number().to_bn().unwrap().to_vec(),
            serial(&b_store.credentials().unwrap())
        );

        // 2000 GETs from 4 clients (each its own connections through A).
        const TOTAL: usize = 2000;
        let done = Arc::new(AtomicUsize::new(0));
        let url = format!("http://127.0.0.1:{port}/");
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (done, url) = (done.clone(), url.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut failed = Vec::new();
                    for _ in 0..TOTAL / 4 {
                        let (status, _, body) = get_url(&http, &url, &[]).await;
                        if status != 200 {
                            failed.push((status, body));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    failed
                })
            })
            .collect();
        eventually("a third of the load sent", WAIT, || {
            done.load(Ordering::Relaxed) >= TOTAL / 3
        })
        .await;
        // Both ends renew at once, while requests are in flight.
        let (b_new, a_new) = (
            proxy_creds(ca(), "west", "a", "west-a"),
            proxy_creds(ca(), "east", "a", "east-a"),
        );
        let (b_serial, b_not_after) = (serial(&b_new), unix(&b_new));
        b_store.set(b_new);
        a_store.set(a_new);
        let at_swap = done.load(Ordering::Relaxed);
        let mut failed = Vec::new();
        for w in workers {
            failed.extend(w.await.unwrap());
        }
        assert!(at_swap < TOTAL, "the swap happened under load");
        assert!(
            failed.is_empty(),
            "{} of {TOTAL} failed: {failed:?}",
            failed.len()
        );
        assert_eq!(e1.count(), TOTAL);

        // New handshakes get the renewed certificate.
        let after = mesh::served_certificate(b_addr, "west").await;
        assert_eq!(after.serial_number().to_bn().unwrap().to_vec(), b_serial);
        assert_eq!(expiry(&b), b_not_after);
        for reason in ["no-certificate", "unknown-ca", "wrong-identity"] {
            assert_eq!(refused(&b, reason), 0, "{reason}");
        }
    })
    .await
    .unwrap();
}
