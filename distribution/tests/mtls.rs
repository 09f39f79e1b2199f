//! The distribution link over mutual TLS (issue #16): every abuse a shared bearer token allowed
//! is refused now — the same request that worked before, from the wrong client — first
//! certificates with a bootstrap credential, renewals over mTLS, and certificates of both ends
//! rotating under load without dropping the stream. Loopback, every wait bounded.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meridian_distribution::client::BootstrapCredential;
use meridian_distribution::pki::{CertStore, Credentials, Peer, ProxyIdentity, csr_pem, new_key};
use meridian_distribution::protocol::{CertificateRequest, CertificateResponse};
use meridian_distribution::server::{
    AddressPolicy, BootstrapClaim, BootstrapGrant, BootstrapRefusal, BootstrapVerifier, BoxFuture,
};
use meridian_distribution::{
    Client, ClientConfig, ClientError, ClientStatus, DistributionServer, GatewayRef,
    GatewayTrafficReport, Hello, ProgrammedState, Refused, ServerConfig, Target,
};
use meridian_model::Snapshot;
use meridian_model::traffic::{FailureKind, GatewayTraffic};
use mesh::{Https, Resp, metric};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test exceeded its time bound");
}

/// Accepts token `good` for cluster `east` (region `us-east`, zones `a` and `b`), `bound-p9`
/// likewise but bound to proxy `p9`; `flaky` cannot be checked now; anything else is refused.
struct FakeVerifier;

impl BootstrapVerifier for FakeVerifier {
    fn verify<'a>(
        &'a self,
        claim: &'a BootstrapClaim,
    ) -> BoxFuture<'a, Result<BootstrapGrant, BootstrapRefusal>> {
        Box::pin(async move {
            let grant = |proxy_id: Option<&str>| BootstrapGrant {
                region: "us-east".into(),
                zones: vec!["a".into(), "b".into()],
                proxy_id: proxy_id.map(Into::into),
            };
            match (claim.credential.as_str(), claim.cluster.as_str()) {
                ("good", "east") => Ok(grant(None)),
                ("bound-p9", "east") => Ok(grant(Some("p9"))),
                ("flaky", _) => Err(BootstrapRefusal {
                    reason: "unavailable",
                    message: "the API server of east does not answer".into(),
                    transient: true,
                }),
                _ => Err(BootstrapRefusal {
                    reason: "invalid-credential",
                    message: "the token is not valid for this cluster".into(),
                    transient: false,
                }),
            }
        })
    }
}

/// Addresses of cluster east: 10.0.10.0/24 and `gw.east.example`.
struct EastPool;

impl AddressPolicy for EastPool {
    fn allows(&self, cluster: &str, address: &str) -> bool {
        cluster == "east" && (address.starts_with("10.0.10.") || address == "gw.east.example")
    }
}

async fn server_with(f: impl FnOnce(&mut ServerConfig)) -> DistributionServer {
    let mut cfg = mesh::server_config("127.0.0.1:0".parse().unwrap());
    cfg.ping_interval = Duration::from_millis(100);
    cfg.bootstrap = Some(Arc::new(FakeVerifier));
    f(&mut cfg);
    DistributionServer::start(cfg).await.unwrap()
}

async fn server() -> DistributionServer {
    server_with(|_| {}).await
}

fn hello(id: &str) -> Hello {
    Hello {
        proxy_id: id.into(),
        cluster: "east".into(),
        region: "us-east".into(),
        zone: "a".into(),
        gateways: None,
        address: None,
        east_west: None,
    }
}

fn url(srv: &DistributionServer, path: &str) -> String {
    format!("https://{}{path}", srv.local_addr())
}

/// `POST /v1/stream` with `said` as the proxy whose certificate names `cert`.
async fn open_as(srv: &DistributionServer, cert: &Hello, said: &Hello) -> Resp {
    Https::proxy(cert)
        .post(url(srv, "/v1/stream"), serde_json::to_vec(said).unwrap())
        .await
}

/// Waits for the first line of an open stream (the welcome).
async fn welcomed(resp: &mut Resp) {
    let first = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"{\"welcome\""), "{first:?}");
}

fn sample(text: &str, name: &str, label: &str, value: &str) -> f64 {
    metric(text, &format!("{name}{{{label}=\"{value}\"}} ")).unwrap_or(0.0)
}

#[tokio::test]
async fn a_plaintext_client_fails_the_handshake() {
    bounded(async {
        let srv = server().await;
        // What a proxy sent before: plain HTTP.
        let body = serde_json::to_vec(&hello("p1")).unwrap();
        let mut tcp = tokio::net::TcpStream::connect(srv.local_addr())
            .await
            .unwrap();
        let head = format!(
            "POST /v1/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
            .await
            .expect("the server closes a plaintext connection");
        assert!(
            !out.starts_with(b"HTTP/"),
            "an HTTP answer to plaintext: {out:?}"
        );
        assert!(srv.state().is_empty());
        meridian_test_support::eventually("the failure counted", WAIT, || {
            sample(
                &srv.metrics_text(),
                "meridian_distribution_tls_handshake_failures_total",
                "reason",
                "no-tls",
            ) >= 1.0
        })
        .await;
        // The client refuses to even try.
        let cfg = ClientConfig::new(
            format!("http://{}", srv.local_addr()),
            hello("p1"),
            mesh::store_for(&hello("p1")),
            None,
        );
        let err = Client::new(cfg).err().unwrap();
        assert!(
            matches!(&err, ClientError::InvalidUrl { reason, .. } if reason.contains("TLS")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_401() {
    bounded(async {
        let srv = server().await;
        let anon = Https::anonymous();
        let body = serde_json::to_vec(&hello("p1")).unwrap();
        let r = anon.post(url(&srv, "/v1/stream"), body).await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.contains("client certificate is needed"));
        for path in ["/v1/ack", "/v1/traffic"] {
            let r = anon.post(url(&srv, path), "{}").await;
            assert_eq!(r.status(), 401, "{path}");
        }
        // The controller's own certificate is no proxy's either.
        let ca = mesh::ca();
        let ctl = ca
            .issue_server(&Peer::Controller, &[], &[], Duration::from_secs(600))
            .unwrap();
        let r = Https::new(&ca.bundle(), Some(&ctl))
            .post(
                url(&srv, "/v1/stream"),
                serde_json::to_vec(&hello("p1")).unwrap(),
            )
            .await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.contains("controller's certificate"));
        assert!(srv.state().is_empty());
        assert!(
            sample(
                &srv.metrics_text(),
                "meridian_distribution_unauthorized_total",
                "path",
                "/v1/stream"
            ) >= 2.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_certificate_of_another_mesh_fails_the_handshake() {
    bounded(async {
        let srv = server().await;
        let who = mesh::identity_of(&hello("p1"));
        let foreign = CertStore::issued(&mesh::other_ca(), &who, Duration::from_secs(600)).unwrap();
        let creds = foreign.credentials().unwrap();
        // Trusting our CA, presenting theirs: the server refuses the handshake.
        let https = Https::new(&mesh::ca().bundle(), Some(&creds));
        let req = http::Request::post(url(&srv, "/v1/stream"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&hello("p1")).unwrap(),
            )))
            .unwrap();
        let err = https.try_send(req).await.err().unwrap();
        assert!(!err.is_empty());
        // Trusting only their CA: the client refuses our server.
        let https = Https::new(&foreign.bundle(), Some(&creds));
        let req = http::Request::get(url(&srv, "/healthz"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let err = https.try_send(req).await.err().unwrap();
        assert!(err.contains("certificate"), "{err}");
        assert!(srv.state().is_empty());
        // Counted after the client saw the failure: wait for it.
        meridian_test_support::eventually("both failures counted", WAIT, || {
            let m = srv.metrics_text();
            let n = sample(
                &m,
                "meridian_distribution_tls_handshake_failures_total",
                "reason",
                "bad-certificate",
            );
            (n >= 2.0).then_some(()).ok_or(m)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_hello_for_another_cluster_zone_region_or_id_is_refused() {
    bounded(async {
        let srv = server().await;
        srv.publish("west", Snapshot::empty(1)).unwrap();
        let cert = hello("p1");
        for (said, reason) in [
            (
                Hello {
                    cluster: "west".into(),
                    ..hello("p1")
                },
                "cluster",
            ),
            (
                Hello {
                    zone: "b".into(),
                    ..hello("p1")
                },
                "zone",
            ),
            (
                Hello {
                    region: "eu".into(),
                    ..hello("p1")
                },
                "region",
            ),
            (hello("p2"), "proxy-id"),
        ] {
            let r = open_as(&srv, &cert, &said).await;
            assert_eq!(r.status(), 403, "{reason}");
            let text = r.text().await;
            assert!(text.contains("client certificate"), "{reason}: {text}");
            assert_eq!(
                sample(
                    &srv.metrics_text(),
                    "meridian_distribution_hello_refused_total",
                    "reason",
                    reason
                ),
                1.0,
                "{reason}"
            );
        }
        assert!(srv.state().is_empty(), "{:?}", srv.state());
        // The hello of the certificate works.
        let mut ok = open_as(&srv, &cert, &cert).await;
        assert_eq!(ok.status(), 200);
        welcomed(&mut ok).await;
    })
    .await;
}

#[tokio::test]
async fn addresses_outside_the_pool_and_unspecified_ones_are_refused() {
    bounded(async {
        let srv = server_with(|c| c.addresses = Arc::new(EastPool)).await;
        let with = |a: &str| Hello {
            address: Some(a.into()),
            ..hello("p1")
        };
        for bad in ["10.9.9.9", "0.0.0.0", "gw.west.example", "239.1.1.1"] {
            let r = open_as(&srv, &hello("p1"), &with(bad)).await;
            assert_eq!(r.status(), 403, "{bad}");
            assert!(r.text().await.contains("address"), "{bad}");
        }
        // Even without any pool, 0.0.0.0 is no address.
        let open_srv = server().await;
        let r = open_as(&open_srv, &hello("p1"), &with("0.0.0.0")).await;
        assert_eq!(r.status(), 403);
        assert!(srv.state().is_empty() && open_srv.state().is_empty());
        let mut ok = open_as(&srv, &hello("p1"), &with("10.0.10.7")).await;
        assert_eq!(ok.status(), 200);
        welcomed(&mut ok).await;
        let gw = GatewayRef::new("ns", "web");
        assert_eq!(srv.addresses("east", &gw), vec!["10.0.10.7".to_string()]);
    })
    .await;
}

#[tokio::test]
async fn an_east_west_listener_on_another_host_is_refused() {
    bounded(async {
        let srv = server_with(|c| c.addresses = Arc::new(EastPool)).await;
        let with = |ew: &str| Hello {
            east_west: Some(ew.into()),
            ..hello("p1")
        };
        // The connection comes from 127.0.0.1: another host's IP is refused.
        let r = open_as(&srv, &hello("p1"), &with("10.1.2.3:15443")).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.contains("not on this proxy's host"));
        assert!(srv.east_west("east").is_empty());
        // A pool address (a LoadBalancer of the cluster) is allowed.
        let mut ok = open_as(&srv, &hello("p1"), &with("10.0.10.9:15443")).await;
        assert_eq!(ok.status(), 200);
        welcomed(&mut ok).await;
        drop(ok);
        // Its own host (loopback here) is allowed.
        let mut ok = open_as(&srv, &hello("p1"), &with("127.0.0.1:15443")).await;
        assert_eq!(ok.status(), 200);
        welcomed(&mut ok).await;
        assert_eq!(
            srv.east_west("east"),
            vec![("127.0.0.1:15443".parse().unwrap(), "a".to_string())]
        );
    })
    .await;
}

#[tokio::test]
async fn acks_and_traffic_for_another_proxy_are_refused() {
    bounded(async {
        let srv = server().await;
        let g = srv.publish("east", Snapshot::empty(1)).unwrap().generation;
        let mut s1 = open_as(&srv, &hello("p1"), &hello("p1")).await;
        welcomed(&mut s1).await;
        let mut s2 = open_as(&srv, &hello("p2"), &hello("p2")).await;
        welcomed(&mut s2).await;
        let p2 = Https::proxy(&hello("p2"));
        let refusal = json!({"proxyId": "p1", "generation": g,
            "result": {"status": "refused", "reason": "forged"}});
        let r = p2.post(url(&srv, "/v1/ack"), refusal.to_string()).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.contains("\"p2\""));
        let p1_state = srv
            .state()
            .into_iter()
            .find(|p| p.proxy_id == "p1")
            .unwrap();
        assert_eq!(p1_state.last_refusal, None, "p2 refused for p1");
        assert_eq!(
            srv.programmed("east", g),
            ProgrammedState::Pending {
                waiting: vec!["p1".into(), "p2".into()]
            }
        );
        let report = json!({"proxyId": "p1", "gateways": [
            {"namespace": "ns", "name": "web", "traffic": {"requests": 9}}]});
        let r = p2.post(url(&srv, "/v1/traffic"), report.to_string()).await;
        assert_eq!(r.status(), 403);
        assert_eq!(srv.traffic("east", &GatewayRef::new("ns", "web")), None);
        // Its own ack goes through.
        let applied = json!({"proxyId": "p2", "generation": g, "result": {"status": "applied"}});
        let r = p2.post(url(&srv, "/v1/ack"), applied.to_string()).await;
        assert_eq!(r.status(), 204);
    })
    .await;
}

#[tokio::test]
async fn forged_counters_are_refused_and_the_sums_stay() {
    bounded(async {
        let srv = server().await;
        let mut s = open_as(&srv, &hello("p1"), &hello("p1")).await;
        welcomed(&mut s).await;
        let p1 = Https::proxy(&hello("p1"));
        let web = GatewayRef::new("ns", "web");
        let report = |t: &GatewayTraffic| {
            json!({"proxyId": "p1", "gateways": [
                {"namespace": "ns", "name": "web", "traffic": t}]})
            .to_string()
        };
        let mut good = GatewayTraffic::default();
        for _ in 0..10 {
            good.record(Some("us-east"), None, 1_000);
        }
        good.record(Some("us-east"), Some(FailureKind::Connect), 30_000);
        let r = p1.post(url(&srv, "/v1/traffic"), report(&good)).await;
        assert_eq!(r.status(), 204);
        assert_eq!(srv.traffic("east", &web), Some(good.clone()));

        let mut more_failures = good.clone();
        more_failures.failed.insert(FailureKind::Timeout, 100);
        let mut decrease = good.clone();
        decrease.requests -= 1;
        decrease.by_region.insert("us-east".into(), 10);
        decrease.latency = GatewayTraffic::default().latency;
        let mut absurd = good.clone();
        absurd.requests = 1_000_000_000_000;
        for (forged, reason) in [
            (&more_failures, "failures"),
            (&decrease, "decrease"),
            (&absurd, "rate"),
        ] {
            let r = p1.post(url(&srv, "/v1/traffic"), report(forged)).await;
            assert_eq!(r.status(), 400, "{reason}");
            assert_eq!(srv.traffic("east", &web), Some(good.clone()), "{reason}");
            assert_eq!(
                sample(
                    &srv.metrics_text(),
                    "meridian_distribution_traffic_refused_total",
                    "reason",
                    reason
                ),
                1.0,
                "{reason}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_second_proxy_cannot_kick_a_stream_of_another_id() {
    bounded(async {
        let srv = server().await;
        let mut s1 = open_as(&srv, &hello("p1"), &hello("p1")).await;
        welcomed(&mut s1).await;
        // p2 says hello as p1: refused, and p1's stream lives on.
        let r = open_as(&srv, &hello("p2"), &hello("p1")).await;
        assert_eq!(r.status(), 403);
        let g = srv.publish("east", Snapshot::empty(1)).unwrap().generation;
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, async {
            while !String::from_utf8_lossy(&buf).contains("\"snapshot\"") {
                buf.extend_from_slice(&s1.chunk().await.unwrap().expect("p1's stream ended"));
            }
        })
        .await
        .unwrap();
        let st = srv.state();
        assert_eq!(st.len(), 1);
        assert!(st[0].connected && st[0].proxy_id == "p1");
        assert_eq!(
            srv.programmed("east", g),
            ProgrammedState::Pending {
                waiting: vec!["p1".into()]
            }
        );
    })
    .await;
}

/// A certificate request by hand: a new key, its CSR, the body naming `who`.
fn cert_request(who: &Hello) -> (openssl::pkey::PKey<openssl::pkey::Private>, String) {
    let key = new_key().unwrap();
    let id = ProxyIdentity::new(&who.cluster, "ignored", &who.zone, &who.proxy_id).unwrap();
    let body = CertificateRequest {
        cluster: who.cluster.clone(),
        zone: who.zone.clone(),
        proxy_id: who.proxy_id.clone(),
        csr: csr_pem(&key, &id).unwrap(),
    };
    (key, serde_json::to_string(&body).unwrap())
}

async fn bootstrap(srv: &DistributionServer, who: &Hello, token: Option<&str>) -> Resp {
    let (_, body) = cert_request(who);
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    Https::anonymous()
        .post_with(url(srv, "/v1/certificate"), body, &headers)
        .await
}

#[tokio::test]
async fn bootstrap_issues_certificates_only_for_what_the_credential_proves() {
    bounded(async {
        let srv = server().await;
        // Good token: a certificate naming the claim, with the region the controller knows.
        let (key, body) = cert_request(&hello("p1"));
        let r = Https::anonymous()
            .post_with(
                url(&srv, "/v1/certificate"),
                body,
                &[("authorization", "Bearer good")],
            )
            .await;
        assert_eq!(r.status(), 200);
        let answer: CertificateResponse = serde_json::from_str(&r.text().await).unwrap();
        let td = mesh::ca().trust_domain().clone();
        let creds = Credentials::new(answer.certificate, key, &td).unwrap();
        assert_eq!(
            creds.peer().uri(&td),
            "spiffe://meridian.mesh/cluster/east/region/us-east/zone/a/proxy/p1"
        );
        assert_eq!(answer.ca_bundle, mesh::ca().bundle().to_pem().unwrap());

        let cases: [(Hello, Option<&str>, u16, &str); 7] = [
            (hello("p1"), Some("bad"), 401, "refused"),
            (hello("p1"), None, 401, "bootstrap credential"),
            (
                Hello {
                    zone: "c".into(),
                    ..hello("p1")
                },
                Some("good"),
                403,
                "zone \"c\"",
            ),
            (hello("p1"), Some("bound-p9"), 403, "bound to proxy \"p9\""),
            (
                Hello {
                    cluster: "west".into(),
                    ..hello("p1")
                },
                Some("good"),
                401,
                "not valid",
            ),
            (hello("p1"), Some("flaky"), 503, "does not answer"),
            (hello("p9"), Some("bound-p9"), 200, "BEGIN CERTIFICATE"),
        ];
        for (who, token, status, text) in cases {
            let r = bootstrap(&srv, &who, token).await;
            assert_eq!(r.status(), status, "{token:?} {who:?}");
            if status == 503 {
                assert_eq!(r.headers()["retry-after"], "5");
            }
            let body = r.text().await;
            assert!(body.contains(text), "{token:?}: {body}");
        }
        // A CSR that is no CSR.
        let bad = json!({"cluster": "east", "zone": "a", "proxyId": "p1", "csr": "nope"});
        let r = Https::anonymous()
            .post_with(
                url(&srv, "/v1/certificate"),
                bad.to_string(),
                &[("authorization", "Bearer good")],
            )
            .await;
        assert_eq!(r.status(), 400);
        let m = srv.metrics_text();
        let issued = |kind| {
            sample(
                &m,
                "meridian_distribution_certificates_issued_total",
                "kind",
                kind,
            )
        };
        assert_eq!(issued("bootstrap"), 2.0);
        let refused = |reason| {
            sample(
                &m,
                "meridian_distribution_certificate_refused_total",
                "reason",
                reason,
            )
        };
        assert_eq!(refused("zone"), 1.0);
        assert_eq!(refused("unavailable"), 1.0);
        assert_eq!(refused("bad-csr"), 1.0);

        // Without a verifier: no first certificates.
        let closed = server_with(|c| c.bootstrap = None).await;
        let r = bootstrap(&closed, &hello("p1"), Some("good")).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.contains("bootstrap disabled"));
    })
    .await;
}

#[tokio::test]
async fn renewals_over_mtls_keep_the_identity() {
    bounded(async {
        let srv = server_with(|c| c.bootstrap = None).await;
        let me = hello("p1");
        let store = mesh::store_for(&me);
        let https = Https::new(&store.bundle(), store.credentials().as_deref());
        let (key, body) = cert_request(&me);
        let r = https.post(url(&srv, "/v1/certificate"), body).await;
        assert_eq!(r.status(), 200, "renewal works without bootstrap");
        let answer: CertificateResponse = serde_json::from_str(&r.text().await).unwrap();
        let td = mesh::ca().trust_domain().clone();
        let renewed = Credentials::new(answer.certificate, key, &td).unwrap();
        assert_eq!(renewed.peer(), store.credentials().unwrap().peer());
        // Naming another identity (zone, id, cluster) in a renewal: refused.
        for other in [
            Hello {
                zone: "b".into(),
                ..hello("p1")
            },
            hello("p2"),
            Hello {
                cluster: "west".into(),
                ..hello("p1")
            },
        ] {
            let (_, body) = cert_request(&other);
            let r = https.post(url(&srv, "/v1/certificate"), body).await;
            assert_eq!(r.status(), 403, "{other:?}");
            assert!(r.text().await.contains("keeps the identity"));
        }
        let m = srv.metrics_text();
        assert_eq!(
            sample(
                &m,
                "meridian_distribution_certificates_issued_total",
                "kind",
                "renewal"
            ),
            1.0
        );
    })
    .await;
}

/// Applies anything; reports counters that grow on every read.
#[derive(Default)]
struct Growing {
    requests: AtomicU64,
}

impl Target for Growing {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        Ok(snapshot.generation)
    }

    fn traffic(&self) -> Vec<GatewayTrafficReport> {
        let n = self.requests.fetch_add(7, Ordering::Relaxed) + 7;
        vec![GatewayTrafficReport {
            namespace: "ns".into(),
            name: "web".into(),
            traffic: GatewayTraffic {
                requests: n,
                ..Default::default()
            },
        }]
    }
}

fn run(
    client: Client,
    target: Arc<Growing>,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<ClientStatus>) {
    let status = client.status();
    let task = tokio::spawn(async move {
        let _ = client.run(&*target).await;
    });
    (task, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_a_certificate_bootstraps_and_follows() {
    bounded(async {
        let srv = server().await;
        let g = srv.publish("east", Snapshot::empty(1)).unwrap().generation;
        // The token as a projected ServiceAccount token would be: a file.
        let dir = std::env::temp_dir().join(format!("meridian-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, "good\n").unwrap();
        let store = Arc::new(CertStore::new(mesh::ca().bundle()));
        let mut cfg = ClientConfig::new(
            url(&srv, ""),
            hello("p1"),
            store.clone(),
            Some(BootstrapCredential::File(token_file.clone())),
        );
        cfg.backoff_initial = Duration::from_millis(20);
        let started = Instant::now();
        let (task, mut status) = run(Client::new(cfg).unwrap(), Arc::new(Growing::default()));
        let s = tokio::time::timeout(WAIT, status.wait_for(|s| s.generation == Some(g)))
            .await
            .unwrap()
            .unwrap()
            .clone();
        let took = started.elapsed();
        println!("time from client start to first snapshot applied, with bootstrap: {took:?}");
        assert!(s.certificate_expiry.is_some());
        assert_eq!(
            store.credentials().unwrap().peer(),
            &Peer::Proxy(mesh::identity_of(&hello("p1")))
        );
        assert_eq!(srv.programmed("east", g), ProgrammedState::Applied(g));
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);

        // No certificate and no credential: a clear error, retried with backoff.
        let cfg = ClientConfig::new(
            url(&srv, ""),
            hello("p2"),
            Arc::new(CertStore::new(mesh::ca().bundle())),
            None,
        );
        let (task, mut status) = run(Client::new(cfg).unwrap(), Arc::new(Growing::default()));
        let s = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert!(
            s.last_error
                .as_deref()
                .unwrap()
                .contains("no bootstrap credential"),
            "{s:?}"
        );
        // A refused credential says so.
        task.abort();
        let cfg = ClientConfig::new(
            url(&srv, ""),
            hello("p3"),
            Arc::new(CertStore::new(mesh::ca().bundle())),
            Some(BootstrapCredential::Token("bad".into())),
        );
        let (task, mut status) = run(Client::new(cfg).unwrap(), Arc::new(Growing::default()));
        let s = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
            .await
            .unwrap()
            .unwrap()
            .clone();
        let err = s.last_error.unwrap();
        assert!(
            err.contains("refused our client certificate or bootstrap credential"),
            "{err}"
        );
        task.abort();
        assert!(srv.state().iter().all(|p| p.proxy_id == "p1"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_dropping_the_stream() {
    bounded(async {
        let srv = server_with(|c| {
            c.server_cert_ttl = Duration::from_secs(3);
            c.proxy_cert_ttl = Duration::from_secs(3);
        })
        .await;
        let me = hello("p1");
        let store = Arc::new(
            CertStore::issued(&mesh::ca(), &mesh::identity_of(&me), Duration::from_secs(3))
                .unwrap(),
        );
        let mut cfg = ClientConfig::new(
            url(&srv, ""),
            me,
            store,
            Some(BootstrapCredential::Token("good".into())),
        );
        cfg.traffic_interval = Duration::from_millis(100);
        let target = Arc::new(Growing::default());
        let (task, mut status) = run(Client::new(cfg).unwrap(), target.clone());
        tokio::time::timeout(WAIT, status.wait_for(|s| s.connected))
            .await
            .unwrap()
            .unwrap();

        // ~8 s of publishing: every generation must be acknowledged before the next one.
        let started = Instant::now();
        let mut published = 0;
        let mut changes = srv.subscribe();
        while started.elapsed() < Duration::from_secs(8) {
            published += 1;
            let g = srv
                .publish("east", Snapshot::empty(published))
                .unwrap()
                .generation;
            tokio::time::timeout(WAIT, async {
                while srv.programmed("east", g) != ProgrammedState::Applied(g) {
                    changes.changed().await.unwrap();
                }
            })
            .await
            .unwrap_or_else(|_| panic!("generation {g} not acknowledged"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m = srv.metrics_text();
        let renewals = sample(
            &m,
            "meridian_distribution_certificates_issued_total",
            "kind",
            "renewal",
        );
        let server_renewals = metric(
            &m,
            "meridian_distribution_server_certificate_renewals_total ",
        )
        .unwrap_or(0.0);
        println!(
            "{published} generations published and acknowledged; {renewals} proxy and \
             {server_renewals} server certificate renewals"
        );
        assert!(renewals >= 2.0, "proxy certificate renewals: {renewals}");
        assert!(
            server_renewals >= 2.0,
            "server certificate renewals: {server_renewals}"
        );
        let s = status.borrow().clone();
        assert_eq!(s.connects, 1, "the stream dropped: {s:?}");
        assert!(s.connected);
        assert_eq!(
            metric(&m, "meridian_distribution_nacks_total{cluster=\"east\"} "),
            None
        );
        assert!(
            !m.lines()
                .any(|l| l.starts_with("meridian_distribution_traffic_refused_total{")),
            "a traffic report was refused"
        );
        assert!(
            metric(
                &m,
                "meridian_distribution_traffic_reports_total{cluster=\"east\"} "
            )
            .unwrap()
                >= 20.0
        );
        assert_eq!(
            sample(
                &m,
                "meridian_distribution_tls_handshake_failures_total",
                "reason",
                "bad-certificate"
            ),
            0.0
        );
        assert!(s.certificate_expiry.is_some());
        task.abort();
    })
    .await;
}

#[test]
fn certificate_requests_round_trip() {
    let v: Value = serde_json::to_value(CertificateRequest {
        cluster: "east".into(),
        zone: "a".into(),
        proxy_id: "p1".into(),
        csr: "x".into(),
    })
    .unwrap();
    assert_eq!(
        v,
        json!({"cluster": "east", "zone": "a", "proxyId": "p1", "csr": "x"})
    );
}
