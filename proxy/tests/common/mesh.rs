//! Mesh identities for tests of the east-west hop: one CA per test binary (proxies of one test
//! binary are of one mesh), certificates issued the way a proxy gets them (own key, CSR, CA signs),
//! and a raw mutual TLS client for the east-west listener (HTTP/1.1 or h2 over ALPN).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use meridian_distribution::pki::{
    Ca, CertStore, Credentials, Peer, ProxyIdentity, TrustBundle, TrustDomain, csr_pem, new_key,
};
use meridian_model::locality::Locality;
use meridian_proxy::{ProxyConfig, ProxyHandle};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use tokio_openssl::SslStream;

/// How long test certificates live.
pub const TTL: Duration = Duration::from_secs(3600);

/// The mesh of this test binary.
pub fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(new_ca)
}

/// A CA of another mesh with the same trust domain name (its certificates must not be trusted).
pub fn new_ca() -> Ca {
    Ca::generate(&TrustDomain::default(), Duration::from_secs(24 * 3600)).unwrap()
}

/// Credentials of proxy `id` in `cluster`/`zone`, issued by `ca`.
pub fn proxy_creds(ca: &Ca, cluster: &str, zone: &str, id: &str) -> Credentials {
    let who = ProxyIdentity::new(cluster, "r1", zone, id).unwrap();
    let key = new_key().unwrap();
    let csr = csr_pem(&key, &who).unwrap();
    let pem = ca.issue_proxy(csr.as_bytes(), &who, TTL).unwrap();
    Credentials::new(pem, key, ca.trust_domain()).unwrap()
}

/// The controller's credentials, issued by the test mesh.
pub fn controller_creds() -> Credentials {
    ca().issue_server(&Peer::Controller, &["controller.example".into()], &[], TTL)
        .unwrap()
}

/// A store holding fresh credentials of proxy `id` of `cluster`, trusting the test mesh.
pub fn store(cluster: &str, zone: &str, id: &str) -> Arc<CertStore> {
    Arc::new(CertStore::with_credentials(
        ca().bundle(),
        proxy_creds(ca(), cluster, zone, id),
    ))
}

/// A proxy of the test mesh at `cluster`/`region`/`zone`, with an east-west listener on an
/// ephemeral loopback port when `east_west`; its store is returned too (to renew).
pub async fn proxy(
    cluster: &str,
    region: &str,
    zone: &str,
    east_west: bool,
) -> (ProxyHandle, Arc<CertStore>) {
    let identity = store(cluster, zone, &format!("{cluster}-{zone}"));
    let handle = ProxyHandle::start(ProxyConfig {
        admin: None,
        locality: Locality {
            cluster: cluster.into(),
            region: region.into(),
            zone: zone.into(),
        },
        east_west: east_west.then(|| "127.0.0.1:0".parse().unwrap()),
        identity: Some(identity.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    (handle, identity)
}

/// A TLS 1.3 connection to `addr`, trusting `bundle`, expecting the server name `name`,
/// presenting `creds` when given, offering `alpn` (wire format).
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    bundle: &TrustBundle,
    creds: Option<&Credentials>,
    alpn: &[u8],
) -> Result<SslStream<tokio::net::TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    let mut store = X509StoreBuilder::new().unwrap();
    for c in bundle.certs() {
        store.add_cert(c.clone()).unwrap();
    }
    b.set_cert_store(store.build());
    if let Some(c) = creds {
        b.set_private_key(c.key()).unwrap();
        b.set_certificate(c.leaf()).unwrap();
    }
    b.set_alpn_protos(alpn).unwrap();
    let ssl = b.build().configure().unwrap().into_ssl(name).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(s)
}

/// The certificate the listener at `addr` presents to a client of the test mesh.
pub async fn served_certificate(addr: SocketAddr, cluster: &str) -> X509 {
    let me = proxy_creds(ca(), "prober", "z", "prober");
    let s = connect(
        addr,
        &ca().trust_domain().cluster_dns_name(cluster),
        &ca().bundle(),
        Some(&me),
        b"\x08http/1.1",
    )
    .await
    .unwrap();
    s.ssl().peer_certificate().unwrap()
}

/// One GET of `path` naming `backend` on the east-west listener at `addr` (a proxy of
/// `cluster`), as `creds`: status, served-by and body, or why it failed (a refused handshake
/// shows as an error on the first read, TLS 1.3 settling client certificates after the
/// client's side of the handshake is done).
pub async fn get(
    addr: SocketAddr,
    cluster: &str,
    creds: Option<&Credentials>,
    backend: &str,
    h2: bool,
) -> Result<(u16, Option<String>, String), String> {
    let alpn: &[u8] = if h2 { b"\x02h2" } else { b"\x08http/1.1" };
    let tls = connect(
        addr,
        &ca().trust_domain().cluster_dns_name(cluster),
        &ca().bundle(),
        creds,
        alpn,
    )
    .await?;
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = http::Request::get(format!("https://{addr}/x"))
        .header("x-meridian-backend", backend)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let served_by = resp
        .headers()
        .get("x-meridian-served-by")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((
        status,
        served_by,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
