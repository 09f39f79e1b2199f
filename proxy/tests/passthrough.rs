//! TLS passthrough listeners (TLSRoute) end to end on loopback: two real TLS servers behind a
//! proxy that never terminates TLS. The client verifies the backend's own certificate through
//! the proxy; the SNI picks the route; unknown names, garbage and silence are closed and
//! counted; a dead local endpoint sends new connections to the next locality before any byte
//! goes upstream; a relayed connection outlives the snapshot that routed it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meridian_model::locality::Locality;
use meridian_proxy::{ProxyConfig, ProxyHandle};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `cn` with DNS SANs `names`, signed by `issuer` (a self-signed CA when
/// `None`).
fn cert(
    cn: &str,
    names: &[&str],
    serial: u32,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match issuer {
        None => {
            b.set_issuer_name(&name).unwrap();
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
        }
        Some((ca, _)) => b.set_issuer_name(ca.subject_name()).unwrap(),
    }
    if !names.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for n in names {
            san.dns(n);
        }
        let ctx = b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None);
        b.append_extension(san.build(&ctx).unwrap()).unwrap();
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
        .unwrap();
    b.build()
}

/// A TLS server on loopback presenting `leaf`: after the handshake it answers every line with
/// `<tag> <line>`, until the client closes.
struct TlsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

async fn tls_server(tag: &'static str, leaf: &X509, key: &PKey<Private>) -> TlsServer {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acceptor.set_certificate(leaf).unwrap();
    acceptor.set_private_key(key).unwrap();
    let acceptor = Arc::new(acceptor.build());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(tls);
                let mut line = String::new();
                // Bounded by the client: each round answers one line or ends.
                while matches!(lines.read_line(&mut line).await, Ok(n) if n > 0) {
                    let reply = format!("{tag} {line}");
                    if lines.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    TlsServer { addr, task }
}

/// A client session through the proxy: the TLS stream, and the CN of the certificate it saw.
type Session = (tokio_openssl::SslStream<TcpStream>, String);

/// Connects to `proxy` with SNI `sni`, verifying the server certificate against `ca` and the
/// name; `Err` when the connection is closed or the handshake fails.
async fn connect(proxy: SocketAddr, sni: &str, ca: &X509) -> Result<Session, String> {
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.cert_store_mut().add_cert(ca.clone()).unwrap();
    let config = c.build().configure().unwrap();
    let ssl = config.into_ssl(sni).unwrap();
    let tcp = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut tls)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let cn = tls
        .ssl()
        .peer_certificate()
        .and_then(|c| {
            c.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .next()
                .and_then(|e| e.data().to_string().ok())
        })
        .unwrap_or_default();
    Ok((tls, cn))
}

/// Sends `line` and reads the answer line.
async fn ask(s: &mut Session, line: &str) -> String {
    s.0.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    // Bounded: one short line.
    while out.len() < 256 {
        match s.0.read(&mut byte).await {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => out.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8(out).unwrap()
}

fn endpoint(addr: SocketAddr, region: &str, zone: &str) -> Value {
    json!({"address": addr.ip().to_string(), "port": addr.port(),
           "cluster": "c1", "region": region, "zone": zone})
}

fn tls_route(name: &str, hostnames: &[&str], backend: &str, endpoints: Vec<Value>) -> Value {
    json!({"namespace": "default", "name": name, "kind": "TLSRoute", "hostnames": hostnames,
           "rules": [{"backends": [backend_json(backend, endpoints)]}]})
}

fn backend_json(name: &str, endpoints: Vec<Value>) -> Value {
    backend(name, 1, endpoints)
}

fn passthrough_snapshot(
    generation: u64,
    port: u16,
    routes: Vec<Value>,
) -> meridian_model::Snapshot {
    snapshot(
        generation,
        vec![
            json!({"name": "tls", "address": "127.0.0.1", "port": port, "protocol": "TLS",
                    "routes": routes}),
        ],
    )
}

fn passthrough_count(proxy: &ProxyHandle, result: &str) -> f64 {
    metric_sum(
        &proxy.metrics_text(),
        &format!("meridian_proxy_passthrough_connections_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_without_terminating() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca_key = key();
        let ca = cert("test ca", &[], 1, &ca_key, None);
        let (a_key, b_key) = (key(), key());
        let a_leaf = cert(
            "a.example.com",
            &["a.example.com"],
            2,
            &a_key,
            Some((&ca, &ca_key)),
        );
        let b_leaf = cert(
            "b.example.com",
            &["*.b.example.com"],
            3,
            &b_key,
            Some((&ca, &ca_key)),
        );
        let a_local = tls_server("a-local", &a_leaf, &a_key).await;
        let a_remote = tls_server("a-remote", &a_leaf, &a_key).await;
        let b = tls_server("b", &b_leaf, &b_key).await;

        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            locality: Locality {
                cluster: "c1".into(),
                region: "us-east".into(),
                zone: "us-east-1a".into(),
            },
            workers: workers(),
            ..Default::default()
        })
        .await
        .unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let routes = vec![
            tls_route(
                "a",
                &["a.example.com"],
                "default/a:443",
                vec![
                    endpoint(a_local.addr, "us-east", "us-east-1a"),
                    endpoint(a_remote.addr, "us-west", "us-west-1a"),
                ],
            ),
            tls_route(
                "b",
                &["*.b.example.com"],
                "default/b:443",
                vec![endpoint(b.addr, "us-east", "us-east-1a")],
            ),
        ];
        proxy
            .apply(passthrough_snapshot(1, port, routes.clone()))
            .await
            .unwrap();

        // SNI a.example.com: backend A's own certificate, verified by the client, and the bytes
        // of the session reach the nearest endpoint.
        let mut a = connect(addr, "a.example.com", &ca).await.unwrap();
        assert_eq!(a.1, "a.example.com");
        assert_eq!(ask(&mut a, "hello").await, "a-local hello");
        // SNI under the wildcard: B.
        let mut bs = connect(addr, "x.b.example.com", &ca).await.unwrap();
        assert_eq!(bs.1, "b.example.com");
        assert_eq!(ask(&mut bs, "hi").await, "b hi");

        // Unknown SNI: closed before any handshake byte comes back.
        assert!(connect(addr, "c.example.com", &ca).await.is_err());
        // The apex of the wildcard is not under it.
        assert!(connect(addr, "b.example.com", &ca).await.is_err());
        eventually("two no_route closes counted", WAIT, || {
            passthrough_count(&proxy, "no_route") >= 2.0
        })
        .await;

        // A garbage first packet: closed, counted, and the proxy keeps serving.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "garbage must be closed: {n:?}");
        eventually("an invalid close counted", WAIT, || {
            passthrough_count(&proxy, "invalid") >= 1.0
        })
        .await;
        // A ClientHello without a server name: closed too.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&hello_without_sni()).await.unwrap();
        let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "no SNI must be closed: {n:?}");
        eventually("a no_server_name close counted", WAIT, || {
            passthrough_count(&proxy, "no_server_name") >= 1.0
        })
        .await;

        // The relayed sessions are still up, and a snapshot that drops route b leaves its
        // session running while new connections to b are closed.
        let mut without_b = routes.clone();
        without_b.pop();
        proxy
            .apply(passthrough_snapshot(2, port, without_b))
            .await
            .unwrap();
        assert_eq!(ask(&mut bs, "still").await, "b still");
        assert!(connect(addr, "x.b.example.com", &ca).await.is_err());

        // The local endpoint of A dies: the next connection's connect is refused, the endpoint
        // is ejected and the other region serves it, before any byte went upstream.
        a_local.task.abort();
        let _ = a_local.task.await;
        drop(a);
        let mut a2 = connect(addr, "a.example.com", &ca).await.unwrap();
        assert_eq!(a2.1, "a.example.com");
        assert_eq!(ask(&mut a2, "again").await, "a-remote again");
        // Ejected (by this connection's refused connect, or by a health probe that got there
        // first): the health view names it.
        let dead = a_local.addr.to_string();
        assert!(
            proxy.health().ejected.iter().any(|e| e.address == dead),
            "{:?}",
            proxy.health().ejected
        );
        // Ejected: the following connections go straight to the remote region.
        let mut a3 = connect(addr, "a.example.com", &ca).await.unwrap();
        assert_eq!(ask(&mut a3, "once more").await, "a-remote once more");
        // The sessions that ended were relayed ones (a, closed above).
        eventually("a relayed session counted", WAIT, || {
            passthrough_count(&proxy, "relayed") >= 1.0
        })
        .await;

        drop((a2, a3, bs));
        // The listener leaves the snapshot: the port closes.
        proxy.apply(snapshot(3, vec![])).await.unwrap();
        eventually("the passthrough socket to close", WAIT, || {
            !proxy.bound_sockets().contains(&addr)
        })
        .await;
        proxy.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_oversized_clients_are_closed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            limits: meridian_proxy::Limits {
                header_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            workers: workers(),
            ..Default::default()
        })
        .await
        .unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        proxy
            .apply(passthrough_snapshot(1, port, vec![]))
            .await
            .unwrap();
        // Silence: closed after the header timeout.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        eventually("a timeout close counted", WAIT, || {
            passthrough_count(&proxy, "timeout") >= 1.0
        })
        .await;
        // A ClientHello announcing more than 16 KiB: closed without waiting for it.
        let mut big = TcpStream::connect(addr).await.unwrap();
        big.write_all(&[22, 3, 1, 0x40, 0x00, 1, 0, 0x50, 0x00])
            .await
            .unwrap();
        let n = tokio::time::timeout(WAIT, big.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        eventually("an invalid close counted", WAIT, || {
            passthrough_count(&proxy, "invalid") >= 1.0
        })
        .await;
        proxy.shutdown().await;
    })
    .await
    .unwrap();
}

/// A minimal well-formed ClientHello with no extensions.
fn hello_without_sni() -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    let mut msg = vec![1, 0, 0, u8::try_from(body.len()).unwrap()];
    msg.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1, 0, u8::try_from(msg.len()).unwrap()];
    rec.extend_from_slice(&msg);
    rec
}
