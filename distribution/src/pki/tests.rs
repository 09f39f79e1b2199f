#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::time::Duration;

use openssl::ssl::{Ssl, SslConnector, SslMethod, SslVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_openssl::SslStream;

use super::*;

fn proxy(cluster: &str, id: &str) -> ProxyIdentity {
    ProxyIdentity::new(cluster, "r1", "z1", id).unwrap()
}

/// A proxy's credentials the way a proxy gets them: own key, CSR, CA signs.
fn proxy_creds(ca: &Ca, who: &ProxyIdentity, ttl: Duration) -> Credentials {
    let key = new_key().unwrap();
    let csr = csr_pem(&key, who).unwrap();
    let pem = ca.issue_proxy(csr.as_bytes(), who, ttl).unwrap();
    Credentials::new(pem, key, ca.trust_domain()).unwrap()
}

/// The controller's credentials, reached as `ctl`.
fn controller_creds(ca: &Ca) -> Credentials {
    ca.issue_server(
        &Peer::Controller,
        &["ctl".into()],
        &[],
        Duration::from_secs(600),
    )
    .unwrap()
}

fn mesh(name: &str) -> Ca {
    Ca::generate(&TrustDomain::new(name).unwrap(), Duration::from_secs(3600)).unwrap()
}

/// Runs one handshake over an in-memory pipe; the server's view of the client, or why it failed.
async fn handshake(
    server: openssl::ssl::SslAcceptor,
    client: openssl::ssl::SslConnectorBuilder,
    host: &str,
) -> Result<Option<Peer>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let td = TrustDomain::new("a.mesh").unwrap();
    let srv = tokio::spawn(async move {
        let ssl = Ssl::new(server.context()).unwrap();
        let mut s = SslStream::new(ssl, a).unwrap();
        Pin::new(&mut s).accept().await.map_err(|e| e.to_string())?;
        let peer = verified_peer(s.ssl(), &td);
        s.write_all(b"hi").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let ssl = client.build().configure().unwrap().into_ssl(host).unwrap();
    let mut c = SslStream::new(ssl, b).unwrap();
    let client_result = Pin::new(&mut c).connect().await.map_err(|e| e.to_string());
    let mut buf = [0u8; 2];
    let read = match client_result {
        Ok(()) => c.read_exact(&mut buf).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    drop(c);
    let server_result = srv.await.unwrap();
    read?;
    server_result
}

#[tokio::test]
async fn mutual_tls_names_both_ends() {
    let ca = mesh("a.mesh");
    let ctl = ca
        .issue_server(
            &Peer::Controller,
            &["meridian.example".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(600),
        )
        .unwrap();
    let who = proxy("us-east", "p1");
    let p = proxy_creds(&ca, &who, Duration::from_secs(600));
    assert_eq!(p.peer(), &Peer::Proxy(who.clone()));
    let acceptor = server_acceptor(&ctl, &ca.bundle(), ClientCerts::Required).unwrap();
    let client = client_connector(Some(&p), &ca.bundle(), Peer::Controller).unwrap();
    let seen = handshake(acceptor, client, "127.0.0.1").await.unwrap();
    assert_eq!(seen, Some(Peer::Proxy(who)));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_or_anonymous() {
    let ca = mesh("a.mesh");
    let ctl = controller_creds(&ca);
    let required = server_acceptor(&ctl, &ca.bundle(), ClientCerts::Required).unwrap();
    let client = client_connector(None, &ca.bundle(), Peer::Controller).unwrap();
    assert!(handshake(required, client, "ctl").await.is_err());
    let optional = server_acceptor(&ctl, &ca.bundle(), ClientCerts::Optional).unwrap();
    let client = client_connector(None, &ca.bundle(), Peer::Controller).unwrap();
    assert_eq!(handshake(optional, client, "ctl").await.unwrap(), None);
}

#[tokio::test]
async fn another_mesh_is_refused_both_ways() {
    let ours = mesh("a.mesh");
    let theirs = mesh("a.mesh");
    let ctl = controller_creds(&ours);
    // A client certificate of another CA (same trust domain name even).
    let foreign = proxy_creds(&theirs, &proxy("us-east", "p1"), Duration::from_secs(600));
    let acceptor = server_acceptor(&ctl, &ours.bundle(), ClientCerts::Optional).unwrap();
    let client = client_connector(Some(&foreign), &ours.bundle(), Peer::Controller).unwrap();
    assert!(handshake(acceptor, client, "ctl").await.is_err());
    // A client that trusts another CA does not accept our server.
    let acceptor = server_acceptor(&ctl, &ours.bundle(), ClientCerts::Optional).unwrap();
    let client = client_connector(None, &theirs.bundle(), Peer::Controller).unwrap();
    assert!(handshake(acceptor, client, "ctl").await.is_err());
}

#[tokio::test]
async fn a_proxy_certificate_cannot_pose_as_the_controller() {
    let ca = mesh("a.mesh");
    let who = proxy("us-east", "p1");
    let p = proxy_creds(&ca, &who, Duration::from_secs(600));
    let dns = ca.trust_domain().cluster_dns_name("us-east");
    let acceptor = server_acceptor(&p, &ca.bundle(), ClientCerts::Optional).unwrap();
    // Right host name, right CA, wrong identity.
    let client = client_connector(None, &ca.bundle(), Peer::Controller).unwrap();
    assert!(handshake(acceptor, client, &dns).await.is_err());
    // The same server is fine for a client that expects exactly that proxy.
    let acceptor = server_acceptor(&p, &ca.bundle(), ClientCerts::Optional).unwrap();
    let client = client_connector(None, &ca.bundle(), Peer::Proxy(who)).unwrap();
    assert!(handshake(acceptor, client, &dns).await.is_ok());
}

#[tokio::test]
async fn host_names_are_checked() {
    let ca = mesh("a.mesh");
    let ctl = controller_creds(&ca);
    let acceptor = server_acceptor(&ctl, &ca.bundle(), ClientCerts::Optional).unwrap();
    let client = client_connector(None, &ca.bundle(), Peer::Controller).unwrap();
    assert!(handshake(acceptor, client, "elsewhere").await.is_err());
}

#[tokio::test]
async fn tls_1_2_is_refused() {
    let ca = mesh("a.mesh");
    let ctl = controller_creds(&ca);
    let acceptor = server_acceptor(&ctl, &ca.bundle(), ClientCerts::Optional).unwrap();
    let mut old = SslConnector::builder(SslMethod::tls_client()).unwrap();
    old.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    old.set_verify(openssl::ssl::SslVerifyMode::NONE);
    assert!(handshake(acceptor, old, "ctl").await.is_err());
}

#[test]
fn certificates_carry_identity_validity_and_the_cluster_name() {
    let ca = mesh("a.mesh");
    let who = proxy("eu-central", "gw-1");
    let before = std::time::SystemTime::now();
    let c = proxy_creds(&ca, &who, Duration::from_secs(900));
    let life = c.not_after().duration_since(c.not_before()).unwrap();
    // Backdated a minute for clock skew.
    assert!((959..=961).contains(&life.as_secs()), "{life:?}");
    assert!(c.renew_at() > before);
    let dns: Vec<String> = c
        .leaf()
        .subject_alt_names()
        .unwrap()
        .iter()
        .filter_map(|n| n.dnsname().map(str::to_string))
        .collect();
    assert_eq!(dns, ["eu-central.proxy.a.mesh"]);
}

#[test]
fn bad_input_is_refused_with_reasons() {
    let ca = mesh("a.mesh");
    let who = proxy("us-east", "p1");
    let err = ca.issue_proxy(b"not a csr", &who, Duration::from_secs(60));
    assert!(err.unwrap_err().to_string().contains("CSR"));
    // A CSR whose signature does not match its key.
    let key = new_key().unwrap();
    let csr = csr_pem(&key, &who).unwrap();
    let tampered = csr.replace('A', "B");
    assert!(
        ca.issue_proxy(tampered.as_bytes(), &who, Duration::from_secs(60))
            .is_err()
    );
    // Credentials for the wrong key.
    let pem = ca
        .issue_proxy(csr.as_bytes(), &who, Duration::from_secs(60))
        .unwrap();
    let err = Credentials::new(pem, new_key().unwrap(), ca.trust_domain()).unwrap_err();
    assert!(err.to_string().contains("not for this key"), "{err}");
    // A CA whose key is not its own.
    let other = mesh("a.mesh");
    let err = Ca::from_pem(
        ca.cert_pem().unwrap().as_bytes(),
        other.key_pem().unwrap().as_bytes(),
        &TrustDomain::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn a_ca_round_trips_through_pem_with_its_trust_domain() {
    let ca = mesh("prod.example");
    let back = Ca::from_pem(
        ca.cert_pem().unwrap().as_bytes(),
        ca.key_pem().unwrap().as_bytes(),
        &TrustDomain::default(),
    )
    .unwrap();
    assert_eq!(back.trust_domain().as_str(), "prod.example");
    let bundle = TrustBundle::from_pem(
        ca.bundle().to_pem().unwrap().as_bytes(),
        &TrustDomain::default(),
    )
    .unwrap();
    assert_eq!(bundle.trust_domain().as_str(), "prod.example");
    // A leaf is no CA.
    let leaf = proxy_creds(&ca, &proxy("a", "p"), Duration::from_secs(60));
    let key = leaf.key().private_key_to_pem_pkcs8().unwrap();
    let pem = leaf.leaf().to_pem().unwrap();
    assert!(Ca::from_pem(&pem, &key, &TrustDomain::default()).is_err());
}

#[test]
fn short_lived_certificates_are_not_due_before_they_are_issued() {
    let ca = mesh("a.mesh");
    let before = std::time::SystemTime::now();
    let c = proxy_creds(&ca, &proxy("a", "p"), Duration::from_secs(4));
    // Backdated by a quarter of the lifetime, not a minute: renewal is still ahead.
    assert!(c.renew_at() > before, "{c:?}");
    assert!(c.not_after() > before + Duration::from_secs(3));
}

#[test]
fn an_issued_store_holds_the_identity_and_trusts_the_ca() {
    let ca = mesh("a.mesh");
    let who = proxy("east", "p1");
    let store = CertStore::issued(&ca, &who, Duration::from_secs(60)).unwrap();
    let creds = store.credentials().unwrap();
    assert_eq!(creds.peer(), &Peer::Proxy(who));
    assert_eq!(
        store.bundle().to_pem().unwrap(),
        ca.bundle().to_pem().unwrap()
    );
    let ticks = store.subscribe();
    store.set((*creds).clone());
    assert!(ticks.has_changed().unwrap());
}
