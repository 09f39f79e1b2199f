//! What mutual TLS adds to the east-west hop: the same requests through a sending proxy, an
//! east-west listener and an echo backend, once over plain HTTP and once over mutual TLS 1.3,
//! side by side in one process (docs/benchmarks.md records the runs).
//!
//! ```text
//! cargo run --release -p meridian-proxy --example east_west_latency -- --requests 2000
//!
//! client ─ keep-alive ─► A (east) Gateway ─ pooled ─► B (west) east-west ─► echo
//!                                          plain HTTP  |  mutual TLS 1.3 (ECDSA P-256)
//! ```
//!
//! Rows: `direct` (client → echo, the floor), `plain` and `mtls` (client → A → B → echo), and
//! the hop's connection set-up alone (`tcp connect` vs `mTLS handshake` to B's listener), since
//! pooling hides the handshake from steady-state requests. Rounds interleave the variants so a
//! burst of load from elsewhere on the machine hits each of them. Closed loop, one request at a
//! time: latency, not throughput. The plain variant uses a test-only switch
//! (`ProxyConfig::east_west_plaintext`) that the command line does not offer.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_distribution::pki::{
    Ca, CertStore, Credentials, ProxyIdentity, TrustDomain, csr_pem, new_key,
};
use meridian_model::Snapshot;
use meridian_model::locality::Locality;
use meridian_proxy::{ProxyConfig, ProxyHandle};
use meridian_test_support::{Echo, free_port};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use pingora_core::tls::tokio_ssl::SslStream;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Requests per variant (split over the rounds).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Rounds (variants interleaved within each).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Fresh connections per set-up row (split over the rounds).
    #[arg(long, default_value_t = 200)]
    connects: usize,
}

const APP: &str = "default/app:80";
const TTL: Duration = Duration::from_secs(3600);

fn creds(ca: &Ca, cluster: &str) -> Credentials {
    let who = ProxyIdentity::new(cluster, "r", "z", &format!("{cluster}-1")).unwrap();
    let key = new_key().unwrap();
    let pem = ca
        .issue_proxy(csr_pem(&key, &who).unwrap().as_bytes(), &who, TTL)
        .unwrap();
    Credentials::new(pem, key, ca.trust_domain()).unwrap()
}

/// One A → B pair: the Gateway port of A and B's east-west address.
async fn pair(ca: &Ca, echo: &Echo, plaintext: bool) -> (u16, SocketAddr, Vec<ProxyHandle>) {
    let identity = |cluster: &str| {
        (!plaintext).then(|| Arc::new(CertStore::with_credentials(ca.bundle(), creds(ca, cluster))))
    };
    let locality = |cluster: &str| Locality {
        cluster: cluster.into(),
        region: cluster.into(),
        zone: "z".into(),
    };
    let b = ProxyHandle::start(ProxyConfig {
        locality: locality("west"),
        east_west: Some("127.0.0.1:0".parse().unwrap()),
        identity: identity("west"),
        east_west_plaintext: plaintext,
        ..Default::default()
    })
    .await
    .unwrap();
    let b_addr = b.east_west_addr().unwrap();
    let snapshot = |v: serde_json::Value| -> Snapshot { serde_json::from_value(v).unwrap() };
    b.apply(snapshot(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA, "generation": 1,
        "eastWest": [{"name": APP, "endpoints": [{
            "address": "127.0.0.1", "port": echo.addr.port(), "cluster": "west", "region": "west",
        }]}],
    })))
    .await
    .unwrap();
    let a = ProxyHandle::start(ProxyConfig {
        locality: locality("east"),
        identity: identity("east"),
        east_west_plaintext: plaintext,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = free_port();
    a.apply(snapshot(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA, "generation": 1,
        "gateways": [{"namespace": "default", "name": "gw", "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
            "routes": [{"namespace": "default", "name": "r", "rules": [{"backends": [{
                "name": APP, "target": {"type": "endpoints", "endpoints": [{
                    "address": "127.0.0.1", "port": b_addr.port(), "cluster": "west",
                    "region": "west", "zone": "z", "eastWest": true,
                }]},
            }]}]}],
        }]}],
    })))
    .await
    .unwrap();
    (port, b_addr, vec![a, b])
}

/// `n` sequential GETs of `url` on one keep-alive client: each one's latency.
async fn gets(c: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let resp = c.get(url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        resp.bytes().await.unwrap();
        out.push(t.elapsed());
    }
    out
}

/// `n` fresh TCP connections to `addr`, or mutual TLS handshakes as `me` when given (one
/// connector, as a proxy keeps one: building it reads the system's CA files).
async fn connects(addr: SocketAddr, me: Option<(&Ca, &Credentials)>, n: usize) -> Vec<Duration> {
    let connector = me.map(|(ca, creds)| {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
        let mut store = X509StoreBuilder::new().unwrap();
        for c in ca.bundle().certs() {
            store.add_cert(c.clone()).unwrap();
        }
        b.set_cert_store(store.build());
        b.set_private_key(creds.key()).unwrap();
        b.set_certificate(creds.leaf()).unwrap();
        (b.build(), ca.trust_domain().cluster_dns_name("west"))
    });
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // As pingora's upstream connections: no Nagle delay between handshake records.
        tcp.set_nodelay(true).unwrap();
        if let Some((connector, name)) = &connector {
            let ssl = connector.configure().unwrap().into_ssl(name).unwrap();
            let mut s = SslStream::new(ssl, tcp).unwrap();
            std::pin::Pin::new(&mut s).connect().await.unwrap();
        }
        out.push(t.elapsed());
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn row(name: &str, mut v: Vec<Duration>, base: Option<(f64, f64)>) -> (f64, f64) {
    v.sort();
    let (p50, p99) = (pct(&v, 0.50), pct(&v, 0.99));
    let added = base.map_or(String::new(), |(b50, b99)| {
        format!("{:+.0} / {:+.0}", p50 - b50, p99 - b99)
    });
    println!("| {name} | {} | {p50:.0} | {p99:.0} | {added} |", v.len());
    (p50, p99)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let rounds = args.rounds.max(1);
    let per = (args.requests / rounds).max(1);
    let conn_per = (args.connects / rounds).max(1);
    let ca = Ca::generate(&TrustDomain::default(), TTL).unwrap();
    let echo = Echo::start("echo").await;
    let (plain_port, plain_b, _plain) = pair(&ca, &echo, true).await;
    let (mtls_port, mtls_b, _mtls) = pair(&ca, &echo, false).await;
    let me = creds(&ca, "bench");
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let urls = [
        format!("http://{}/", echo.addr),
        format!("http://127.0.0.1:{plain_port}/"),
        format!("http://127.0.0.1:{mtls_port}/"),
    ];
    // Warm-up: connections, pools, allocator.
    for u in &urls {
        gets(&c, u, 200).await;
    }
    let (mut direct, mut plain, mut mtls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tcp, mut hs) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("round {}/{rounds}", r + 1);
        direct.extend(gets(&c, &urls[0], per).await);
        plain.extend(gets(&c, &urls[1], per).await);
        mtls.extend(gets(&c, &urls[2], per).await);
        tcp.extend(connects(plain_b, None, conn_per).await);
        hs.extend(connects(mtls_b, Some((&ca, &me)), conn_per).await);
    }
    println!("| path | samples | p50 (µs) | p99 (µs) | added p50 / p99 (µs) |");
    println!("|---|---:|---:|---:|---|");
    row("client → echo (direct)", direct, None);
    let base = row("client → A → B → echo, plain hop", plain, None);
    row("client → A → B → echo, mTLS hop", mtls, Some(base));
    let base = row("hop set-up: TCP connect to B", tcp, None);
    row("hop set-up: TCP + mTLS 1.3 handshake to B", hs, Some(base));
}
