//! Backend TLS (a snapshot backend with `tls`, from a BackendTLSPolicy) against a real TLS
//! server on loopback, on every HTTP/1 path: the right CA and name answer 200; a wrong name, a
//! wrong CA or SANs the proxy cannot verify answer 5xx; the backend never sees a cleartext byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use meridian_proxy::{Http1Path, ProxyConfig, ProxyHandle};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `cn` with DNS SANs `names`, signed by `issuer` (self-signed CA when
/// `None`).
fn cert(
    cn: &str,
    names: &[&str],
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_serial()).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
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
        let san = san.build(&ctx).unwrap();
        b.append_extension(san).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn rand_serial() -> u32 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    u32::try_from(NEXT.fetch_add(1, Ordering::Relaxed)).unwrap()
}

/// A TLS backend on loopback presenting `leaf` (for `backend.example.com`): answers every request
/// with 200 `tls-ok` and the SNI it saw; counts connections whose first byte is not a TLS
/// handshake record (cleartext).
struct TlsBackend {
    port: u16,
    cleartext: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn tls_backend(leaf: &X509, key: &PKey<Private>) -> TlsBackend {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acceptor.set_certificate(leaf).unwrap();
    acceptor.set_private_key(key).unwrap();
    let acceptor = Arc::new(acceptor.build());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cleartext = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (c, s) = (cleartext.clone(), served.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, c, s) = (acceptor.clone(), c.clone(), s.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if tcp.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                if first[0] != 0x16 {
                    c.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let sni = tls
                    .ssl()
                    .servername(openssl::ssl::NameType::HOST_NAME)
                    .unwrap_or_default()
                    .to_string();
                // Bounded: one request head of at most 16 KiB per connection.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                s.fetch_add(1, Ordering::SeqCst);
                let body = format!("{{\"tls\":\"ok\",\"sni\":\"{sni}\"}}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsBackend {
        port,
        cleartext,
        served,
        _task: task,
    }
}

fn pem(c: &X509) -> String {
    String::from_utf8(c.to_pem().unwrap()).unwrap()
}

/// A rule under `prefix` to the TLS backend with `tls` settings.
fn rule(prefix: &str, port: u16, tls: Value) -> Value {
    let mut b = backend(
        prefix,
        1,
        vec![json!({"address": "127.0.0.1", "port": port})],
    );
    b["tls"] = tls;
    prefix_rule(prefix, vec![b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_verifies_ca_and_name_on_every_path() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca_key = key();
        let ca = cert("test ca", &[], &ca_key, None);
        let other_key = key();
        let other_ca = cert("other ca", &[], &other_key, None);
        let leaf_key = key();
        let leaf = cert(
            "backend.example.com",
            &["backend.example.com"],
            &leaf_key,
            Some((&ca, &ca_key)),
        );
        let be = tls_backend(&leaf, &leaf_key).await;
        let good = pem(&ca);
        let rules = vec![
            rule(
                "/ok",
                be.port,
                json!({"hostname": "backend.example.com", "caPem": good}),
            ),
            rule(
                "/wrong-name",
                be.port,
                json!({"hostname": "other.example.com", "caPem": good}),
            ),
            rule(
                "/wrong-ca",
                be.port,
                json!({"hostname": "backend.example.com", "caPem": pem(&other_ca)}),
            ),
            rule(
                "/san",
                be.port,
                json!({"hostname": "sni.example.com", "caPem": good,
                "subjectAltNames": [{"hostname": "backend.example.com"}]}),
            ),
            rule(
                "/san-uri",
                be.port,
                json!({"hostname": "backend.example.com", "caPem": good,
                "subjectAltNames": [{"uri": "spiffe://cluster.local/ns/a/sa/b"}]}),
            ),
            rule(
                "/system",
                be.port,
                json!({"hostname": "backend.example.com"}),
            ),
        ];
        for path in [Http1Path::Own, Http1Path::Lean, Http1Path::Framework] {
            let port = free_port();
            let p = ProxyHandle::start(ProxyConfig {
                admin: Some("127.0.0.1:0".parse().unwrap()),
                http1_path: path,
                workers: workers(),
                ..Default::default()
            })
            .await
            .unwrap();
            p.apply(http_snapshot(1, port, rules.clone()))
                .await
                .unwrap();
            let c = client();
            let served_before = be.served.load(Ordering::SeqCst);
            let (s, _, body) = get(&c, port, "/ok", &[]).await;
            assert_eq!((s, &body["tls"]), (200, &json!("ok")), "{path:?}: {body}");
            assert_eq!(body["sni"], "backend.example.com", "{path:?}");
            // One Hostname SAN: verified against it; the SNI is still the hostname.
            let (s, _, body) = get(&c, port, "/san", &[]).await;
            assert_eq!(
                (s, &body["sni"]),
                (200, &json!("sni.example.com")),
                "{path:?}"
            );
            for refused in ["/wrong-name", "/wrong-ca", "/san-uri", "/system"] {
                let (s, _, _) = get(&c, port, refused, &[]).await;
                assert!((500..600).contains(&s), "{path:?} {refused}: {s}");
            }
            assert_eq!(
                be.served.load(Ordering::SeqCst) - served_before,
                2,
                "{path:?}: only the verified tries reached the backend"
            );
            p.shutdown().await;
        }
        assert_eq!(be.cleartext.load(Ordering::SeqCst), 0, "no cleartext ever");
    })
    .await
    .expect("test exceeded its time bound");
}
