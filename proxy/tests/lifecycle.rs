//! Snapshot lifecycle (swap under load, refusals, file watching), admin endpoints, HTTPS by SNI,
//! and request hygiene.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use meridian_proxy::ApplyError;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_swap_under_load_drops_no_request() {
    bounded(async {
        let (a, b) = (Echo::start("a").await, Echo::start("b").await);
        let port = free_port();
        let p = Arc::new(proxy().await);
        p.apply(http_snapshot(
            1,
            port,
            vec![prefix_rule("/", vec![echo_backend(&a, 1)])],
        ))
        .await
        .unwrap();
        let swapped = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (swapped, done) = (swapped.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let c = client();
                let (mut ok, mut failed, mut stale_after_swap) = (0u32, 0u32, 0u32);
                let mut names = std::collections::HashSet::new();
                // Until the test has seen load on both sides of the swap; bounded regardless.
                let end = Instant::now() + Duration::from_secs(30);
                while !done.load(Ordering::Acquire) && Instant::now() < end {
                    let was_swapped = swapped.load(Ordering::Acquire);
                    match c.get(format!("http://127.0.0.1:{port}/load")).send().await {
                        Ok(r) if r.status() == 200 => {
                            let body: serde_json::Value =
                                serde_json::from_str(&r.text().await.unwrap()).unwrap();
                            let name = body["name"].as_str().unwrap().to_string();
                            if was_swapped && name != "b" {
                                stale_after_swap += 1;
                            }
                            names.insert(name);
                            ok += 1;
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed, stale_after_swap, names)
            }));
        }
        // The swap happens under load: once the old backend has answered a good number of
        // requests, and the load goes on until the new one has too.
        eventually("load on the old route", WAIT, || a.count() >= 60).await;
        p.apply(http_snapshot(
            2,
            port,
            vec![prefix_rule("/", vec![echo_backend(&b, 1)])],
        ))
        .await
        .unwrap();
        swapped.store(true, Ordering::Release);
        eventually("load on the new route", WAIT, || b.count() >= 60).await;
        done.store(true, Ordering::Release);
        let mut total = 0;
        let mut all_names = std::collections::HashSet::new();
        for w in workers {
            let (ok, failed, stale, names) = w.await.unwrap();
            assert_eq!(failed, 0, "requests failed during the swap");
            assert_eq!(
                stale, 0,
                "a request started after the swap saw the old route"
            );
            total += ok;
            all_names.extend(names);
        }
        assert!(total > 100, "too little load: {total}");
        assert!(
            all_names.contains("a") && all_names.contains("b"),
            "{all_names:?}"
        );
        assert_eq!(p.generation(), Some(2));
        Arc::try_unwrap(p).ok().unwrap().shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_snapshots_are_refused_and_the_old_one_keeps_serving() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        let good = || vec![prefix_rule("/", vec![echo_backend(&a, 1)])];
        p.apply(http_snapshot(1, port, good())).await.unwrap();

        // A regular expression that does not compile.
        let bad_regex = vec![json!({
            "matches": [{"path": {"type": "regularExpression", "value": "/(unclosed"}}],
            "backends": [echo_backend(&a, 1)],
        })];
        let err = p
            .apply(http_snapshot(2, port, bad_regex))
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("regular expression"), "{err}");
        assert_eq!(p.generation(), Some(1));
        assert_eq!(get(&client(), port, "/", &[]).await.0, 200);

        // A socket another process holds: the whole snapshot is refused, including the socket
        // that could be bound.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let extra = free_port();
        let snap = snapshot(
            3,
            vec![
                http_listener("http", port, None, good()),
                http_listener("extra", extra, None, good()),
                http_listener("taken", taken_port, None, good()),
            ],
        );
        let err = p.apply(snap).await.unwrap_err();
        match &err {
            ApplyError::Bind { socket, reason } => {
                assert_eq!(socket.port(), taken_port);
                assert!(reason.to_lowercase().contains("in use"), "{reason}");
            }
            other => panic!("expected a bind error, got {other}"),
        }
        assert_eq!(p.generation(), Some(1));
        assert!(p.last_error().unwrap().contains(&taken_port.to_string()));
        assert_eq!(p.bound_sockets().len(), 1);
        // The extra socket was released again.
        std::net::TcpListener::bind(("127.0.0.1", extra)).unwrap();
        assert_eq!(get(&client(), port, "/", &[]).await.0, 200);

        // /ready tells the refusal.
        let admin = p.admin_addr().unwrap();
        let ready = client()
            .get(format!("http://{admin}/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        let body: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
        assert_eq!(body["generation"], 1);
        assert!(
            body["lastError"]
                .as_str()
                .unwrap()
                .contains("cannot listen")
        );
        drop(taken);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_stops_accepting_and_new_one_serves() {
    bounded(async {
        let a = Echo::start("a").await;
        let (p1, p2) = (free_port(), free_port());
        let p = proxy().await;
        let rules = || vec![prefix_rule("/", vec![echo_backend(&a, 1)])];
        p.apply(http_snapshot(1, p1, rules())).await.unwrap();
        assert_eq!(get(&client(), p1, "/", &[]).await.0, 200);
        p.apply(http_snapshot(2, p2, rules())).await.unwrap();
        assert_eq!(get(&client(), p2, "/", &[]).await.0, 200);
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", p1))
                .await
                .is_err()
        );
        assert_eq!(
            p.bound_sockets(),
            vec![format!("127.0.0.1:{p2}").parse().unwrap()]
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_on_a_removed_listener_finishes() {
    bounded(async {
        let a = Echo::start("a").await;
        let (p1, p2) = (free_port(), free_port());
        let p = Arc::new(proxy().await);
        let rules = || vec![prefix_rule("/", vec![echo_backend(&a, 1)])];
        p.apply(http_snapshot(1, p1, rules())).await.unwrap();
        let slow = tokio::spawn(async move { get(&client(), p1, "/?delay=800", &[]).await.0 });
        eventually("the slow request to reach the backend", WAIT, || {
            a.count() == 1
        })
        .await;
        p.apply(http_snapshot(2, p2, rules())).await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", p1))
                .await
                .is_err()
        );
        assert_eq!(slow.await.unwrap(), 200);
        Arc::try_unwrap(p).ok().unwrap().shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        let admin = p.admin_addr().unwrap();
        let c = client();
        let fetch = |path: &'static str| {
            let c = c.clone();
            async move {
                let r = c.get(format!("http://{admin}{path}")).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        assert_eq!(fetch("/healthz").await.0, 200);
        assert_eq!(fetch("/ready").await.0, 503);
        p.apply(http_snapshot(
            7,
            port,
            vec![prefix_rule("/", vec![echo_backend(&a, 1)])],
        ))
        .await
        .unwrap();
        let (s, body) = fetch("/ready").await;
        assert_eq!(s, 200);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["generation"],
            7
        );
        let (s, body) = fetch("/config_dump").await;
        assert_eq!(s, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(dump["generation"], 7);
        assert_eq!(
            dump["snapshot"]["gateways"][0]["listeners"][0]["port"],
            port
        );
        assert_eq!(get(&c, port, "/x", &[]).await.0, 200);
        assert_eq!(get(&c, port, "/x", &[]).await.0, 200);
        // A request is counted once its response is on its way (pingora's logging phase): with
        // workers (MERIDIAN_TEST_WORKERS) that runs on another thread than this scrape.
        let metrics =
            meridian_test_support::eventually_async("both requests counted", WAIT, || async move {
                let (s, metrics) = fetch("/metrics").await;
                let counted = metrics
                    .lines()
                    .any(|l| l.starts_with("meridian_proxy_requests_total{") && l.ends_with(" 2"));
                match s == 200 && counted {
                    true => Ok(metrics),
                    false => Err(format!("{s}: {metrics}")),
                }
            })
            .await;
        assert!(
            metrics.contains("meridian_proxy_snapshot_generation 7"),
            "{metrics}"
        );
        let line = metrics
            .lines()
            .find(|l| l.starts_with("meridian_proxy_requests_total{"))
            .unwrap();
        assert!(line.contains("route=\"default/r\""), "{line}");
        assert!(line.contains("status=\"200\""), "{line}");
        assert!(line.ends_with(" 2"), "{line}");
        assert!(
            metrics
                .contains("meridian_proxy_upstream_latency_seconds_count{route=\"default/r\"} 2")
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_file_is_watched_and_reloaded() {
    bounded(async {
        let (a, b) = (Echo::start("a").await, Echo::start("b").await);
        let port = free_port();
        let p = proxy().await;
        let dir = std::env::temp_dir().join(format!(
            "meridian-proxy-watch-{}-{}",
            std::process::id(),
            port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("snapshot.json");
        let write = |s: &str| std::fs::write(&file, s).unwrap();
        let json_of = |generation: u64, e: &Echo| {
            serde_json::to_string(&http_snapshot(
                generation,
                port,
                vec![prefix_rule("/", vec![echo_backend(e, 1)])],
            ))
            .unwrap()
        };
        write(&json_of(1, &a));
        let steps = async {
            let wait_gen = |g: u64| {
                let p = &p;
                async move {
                    eventually(&format!("generation {g} served"), WAIT, || {
                        p.generation() == Some(g)
                    })
                    .await;
                }
            };
            wait_gen(1).await;
            assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "a");
            write("{ not json");
            eventually("the broken file refused", WAIT, || p.last_error().is_some()).await;
            assert_eq!(p.generation(), Some(1));
            assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "a");
            write(&json_of(2, &b));
            wait_gen(2).await;
            assert_eq!(get(&client(), port, "/", &[]).await.2["name"], "b");
            assert_eq!(p.last_error(), None);
        };
        tokio::select! {
            () = meridian_proxy::watch_file(&p, file.clone()) => panic!("watch_file returned"),
            () = steps => {}
        }
        std::fs::remove_dir_all(&dir).unwrap();
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_transfer_encoding_is_refused() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        p.apply(http_snapshot(
            1,
            port,
            vec![prefix_rule("/", vec![echo_backend(&a, 1)])],
        ))
        .await
        .unwrap();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert_eq!(a.count(), 0);
        p.shutdown().await;
    })
    .await;
}

mod tls {
    use super::*;
    use http_body_util::BodyExt;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509NameBuilder};

    /// A self-signed certificate for `names`: (cert PEM, key PEM).
    fn self_signed(names: &[&str]) -> (String, String) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", names[0]).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        let mut san = SubjectAlternativeName::new();
        for n in names {
            san.dns(n);
        }
        let san = san.build(&b.x509v3_context(None, None)).unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        (
            String::from_utf8(cert.to_pem().unwrap()).unwrap(),
            String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        )
    }

    /// One request over TLS with this SNI and Host; returns (ALPN, status, body JSON).
    async fn request(
        port: u16,
        sni: &str,
        host: &str,
        alpn: &[u8],
    ) -> (Option<Vec<u8>>, u16, serde_json::Value) {
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector.set_verify(SslVerifyMode::NONE);
        connector.set_alpn_protos(alpn).unwrap();
        let ssl = connector
            .build()
            .configure()
            .unwrap()
            .into_ssl(sni)
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut tls = pingora_core::tls::tokio_ssl::SslStream::new(ssl, tcp).unwrap();
        std::pin::Pin::new(&mut tls).connect().await.unwrap();
        let negotiated = tls.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = http::Request::builder()
            .uri("/tls")
            .header("host", host)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = if negotiated.as_deref() == Some(b"h2") {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = format!("https://{host}/tls").parse().unwrap();
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            negotiated,
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_listener_picks_by_sni_and_answers_421_for_another_listeners_host() {
        bounded(async {
            let (a, b) = (Echo::start("a").await, Echo::start("b").await);
            let (cert, key) = self_signed(&["a.example.com", "b.example.com"]);
            let port = free_port();
            let https = |name: &str, host: &str, e: &Echo| {
                json!({
                    "name": name, "address": "127.0.0.1", "port": port, "protocol": "HTTPS",
                    "hostname": host,
                    "tls": {"certificates": [{"certPem": cert, "keyPem": key}]},
                    "routes": [{"namespace": "default", "name": name,
                                "rules": [prefix_rule("/", vec![echo_backend(e, 1)])]}],
                })
            };
            let p = proxy().await;
            p.apply(snapshot(
                1,
                vec![
                    https("a", "a.example.com", &a),
                    https("b", "b.example.com", &b),
                ],
            ))
            .await
            .unwrap();
            let h1 = b"\x08http/1.1";
            let (alpn, s, body) = request(port, "a.example.com", "a.example.com", h1).await;
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
            assert_eq!((s, body["name"].as_str()), (200, Some("a")));
            let (_, s, body) = request(port, "b.example.com", "b.example.com", h1).await;
            assert_eq!((s, body["name"].as_str()), (200, Some("b")));
            // SNI chose listener a; Host belongs to listener b.
            let (_, s, _) = request(port, "a.example.com", "b.example.com", h1).await;
            assert_eq!(s, 421);
            // ALPN h2 is offered and preferred.
            let (alpn, s, body) = request(
                port,
                "a.example.com",
                "a.example.com",
                b"\x02h2\x08http/1.1",
            )
            .await;
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
            assert_eq!((s, body["name"].as_str()), (200, Some("a")));
            // The config dump never shows private keys.
            let admin = p.admin_addr().unwrap();
            let dump = client()
                .get(format!("http://{admin}/config_dump"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(!dump.contains("PRIVATE KEY"));
            assert!(dump.contains("<redacted>"));
            p.shutdown().await;
        })
        .await;
    }
}
