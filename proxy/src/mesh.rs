//! The proxy's mesh identity on the east-west hop: mutual TLS 1.3 with certificates of the mesh
//! CA, read from the proxy's [`CertStore`] for every new connection (a renewal swaps the store;
//! nothing restarts and connections already up are left alone).
//!
//! ```text
//! receiving (east-west listener, listeners.rs)
//!   TLS 1.3 only, client certificate required, no session tickets (every connection verifies)
//!   certificate callback, per handshake: our current chain + key, the current bundle as trust
//!     store, and a verify callback that accepts only a proxy of another cluster of the mesh
//!   handshake failed ─► meridian_proxy_tls_handshake_failures_total{listener="east-west",reason}
//!                       no-certificate | unknown-ca | wrong-identity | other
//! sending (a try or a health probe at an endpoint marked east_west)
//!   TLS, our current chain + key as client certificate, the bundle as the only trust, SNI and
//!   host name `<endpoint's cluster>.proxy.<trust domain>`: only a proxy of the cluster the
//!   endpoint belongs to has that name, so a listener of another cluster fails the handshake
//!   (a failed try, like a refused connection)
//! ```
//!
//! The host name is a DNS SAN the CA writes only into certificates of that cluster's proxies
//! (`TrustDomain::cluster_dns_name`). The trust store and client certificate are converted once
//! per change of the store (kept by pointer), not per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use meridian_distribution::pki::{CertStore, Credentials, Peer, TrustBundle, TrustDomain, peer_of};
use pingora_core::protocols::tls::CaType;
use pingora_core::tls::error::ErrorStack;
use pingora_core::tls::ext;
use pingora_core::tls::ssl::{Ssl, SslConnector, SslMethod, SslRef, SslVerifyMode, SslVersion};
use pingora_core::tls::x509::store::{X509Store, X509StoreBuilder};
use pingora_core::tls::x509::{X509StoreContextRef, X509VerifyResult};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;

/// Why an east-west handshake was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client presented no certificate (or spoke no TLS at the point it had to).
    NoCertificate,
    /// The client's certificate does not chain to the mesh CA.
    UnknownCa,
    /// A certificate of the mesh, but not of a proxy of another cluster (our own cluster, the
    /// controller, no identity).
    WrongIdentity,
    /// Anything else: plaintext, a timeout, an expired certificate, no certificate of our own
    /// yet.
    Other,
}

impl HandshakeFailure {
    /// Every reason, so the counter shows zeros too.
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::NoCertificate,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::WrongIdentity,
        HandshakeFailure::Other,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no-certificate",
            HandshakeFailure::UnknownCa => "unknown-ca",
            HandshakeFailure::WrongIdentity => "wrong-identity",
            HandshakeFailure::Other => "other",
        }
    }

    fn code(self) -> u8 {
        match self {
            HandshakeFailure::NoCertificate => 1,
            HandshakeFailure::UnknownCa => 2,
            HandshakeFailure::WrongIdentity => 3,
            HandshakeFailure::Other => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        HandshakeFailure::ALL.into_iter().find(|f| f.code() == c)
    }

    /// What a failed handshake's error says when no callback recorded a reason.
    pub fn of_error(e: &dyn std::fmt::Display) -> Self {
        if e.to_string().contains("peer did not return a certificate") {
            HandshakeFailure::NoCertificate
        } else {
            HandshakeFailure::Other
        }
    }
}

/// What one handshake's callbacks found (set from OpenSSL's verify callback, read after a failed
/// handshake).
#[derive(Debug, Default)]
pub(crate) struct Verdict(AtomicU8);

impl Verdict {
    fn set(&self, f: HandshakeFailure) {
        self.0.store(f.code(), Ordering::Release);
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<HandshakeFailure> {
        HandshakeFailure::from_code(self.0.load(Ordering::Acquire))
    }
}

/// The trust bundle converted for OpenSSL, with the bundle it came from.
struct Trust {
    bundle: Arc<TrustBundle>,
    cas: Arc<CaType>,
    store: X509Store,
}

/// The client certificate converted for pingora, with the credentials it came from.
struct ClientCert {
    creds: Arc<Credentials>,
    cert_key: Arc<CertKey>,
}

/// The health probes' TLS client, with the credentials and bundle it came from.
struct ProbeConnector {
    creds: Arc<Credentials>,
    bundle: Arc<TrustBundle>,
    connector: SslConnector,
}

/// The proxy's mesh identity as both ends of the east-west hop use it.
pub(crate) struct Mesh {
    store: Arc<CertStore>,
    trust: ArcSwapOption<Trust>,
    client: ArcSwapOption<ClientCert>,
    probe: ArcSwapOption<ProbeConnector>,
}

/// Verify errors that mean "not signed by a CA we trust".
const UNKNOWN_CA: [i32; 6] = [
    2,  // X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    7,  // X509_V_ERR_CERT_SIGNATURE_FAILURE
    18, // X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19, // X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20, // X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21, // X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
];

impl Mesh {
    pub fn new(store: Arc<CertStore>) -> Self {
        Mesh {
            store,
            trust: ArcSwapOption::empty(),
            client: ArcSwapOption::empty(),
            probe: ArcSwapOption::empty(),
        }
    }

    /// Unix time of the current certificate's end of validity; 0 without one.
    pub fn expiry_unix(&self) -> i64 {
        self.store
            .credentials()
            .and_then(|c| c.not_after().duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    /// The current bundle, converted (again only when it changed).
    fn trust(&self) -> Result<Arc<Trust>, ErrorStack> {
        let bundle = self.store.bundle();
        if let Some(t) = self.trust.load_full()
            && Arc::ptr_eq(&t.bundle, &bundle)
        {
            return Ok(t);
        }
        let mut b = X509StoreBuilder::new()?;
        for ca in bundle.certs() {
            b.add_cert(ca.clone())?;
        }
        let cas: Box<[_]> = bundle.certs().to_vec().into_boxed_slice();
        let t = Arc::new(Trust {
            bundle,
            cas: Arc::new(cas),
            store: b.build(),
        });
        self.trust.store(Some(t.clone()));
        Ok(t)
    }

    /// The current credentials as a pingora client certificate (`None` before the first one).
    fn client_cert(&self) -> Option<Arc<CertKey>> {
        let creds = self.store.credentials()?;
        if let Some(c) = self.client.load_full()
            && Arc::ptr_eq(&c.creds, &creds)
        {
            return Some(c.cert_key.clone());
        }
        let cert_key = Arc::new(CertKey::new(creds.chain().to_vec(), creds.key().clone()));
        self.client.store(Some(Arc::new(ClientCert {
            creds,
            cert_key: cert_key.clone(),
        })));
        Some(cert_key)
    }

    /// The name a proxy of `cluster` answers to on the east-west hop.
    pub fn server_name(&self, cluster: &str) -> String {
        self.store.bundle().trust_domain().cluster_dns_name(cluster)
    }

    /// Sender: makes `peer` (a remote proxy's east-west listener in `cluster`) a mutual TLS
    /// peer. Without a certificate of our own or with a bundle OpenSSL refuses, the peer trusts
    /// nothing, so the handshake fails and the try fails like a refused connection.
    pub fn secure_peer(&self, peer: &mut HttpPeer, cluster: &str) {
        peer.scheme = pingora_core::upstreams::peer::Scheme::HTTPS;
        peer.sni = self.server_name(cluster);
        peer.client_cert_key = self.client_cert();
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.ca = Some(match self.trust() {
            Ok(t) => t.cas.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "mesh trust bundle unusable: east-west tries fail");
                Arc::new(Box::new([]))
            }
        });
    }

    /// Receiver, once per handshake (from the certificate callback): presents our current
    /// certificate, trusts the current bundle and admits only a proxy of another cluster.
    /// `Err` says why the handshake cannot succeed (no certificate of our own yet).
    pub fn accept(&self, ssl: &mut SslRef, verdict: Arc<Verdict>) -> Result<(), String> {
        let Some(creds) = self.store.credentials() else {
            verdict.set(HandshakeFailure::Other);
            return Err("no certificate of our own yet (first bootstrap pending)".into());
        };
        let trust = self.trust().map_err(|e| format!("trust bundle: {e}"))?;
        let installed = ext::ssl_use_certificate(ssl, creds.leaf())
            .and_then(|()| ext::ssl_use_private_key(ssl, creds.key()))
            .and_then(|()| {
                creds.chain()[1..]
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            })
            .and_then(|()| ext::ssl_set_verify_cert_store(ssl, &trust.store));
        if let Err(e) = installed {
            verdict.set(HandshakeFailure::Other);
            return Err(format!("installing our certificate: {e}"));
        }
        let own_cluster = creds.peer().proxy().map(|p| p.cluster.clone());
        let td = trust.bundle.trust_domain().clone();
        ssl.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |ok, ctx| check_client(ok, ctx, &td, own_cluster.as_deref(), &verdict),
        );
        Ok(())
    }

    /// Health probes: a TLS client for a remote proxy of `cluster`, like a try's (`None`
    /// without a certificate of our own).
    pub fn probe_ssl(&self, cluster: &str) -> Option<Ssl> {
        let creds = self.store.credentials()?;
        let trust = self.trust().ok()?;
        let name = trust.bundle.trust_domain().cluster_dns_name(cluster);
        let cached = self
            .probe
            .load_full()
            .filter(|p| Arc::ptr_eq(&p.creds, &creds) && Arc::ptr_eq(&p.bundle, &trust.bundle));
        let connector = match cached {
            Some(p) => p,
            None => {
                // Built once per renewal: a connector reads the system's CA files when made.
                let built = probe_connector(&creds, &trust)
                    .inspect_err(
                        |e| tracing::debug!(error = %e, "east-west probe TLS setup failed"),
                    )
                    .ok()?;
                let p = Arc::new(ProbeConnector {
                    creds,
                    bundle: trust.bundle.clone(),
                    connector: built,
                });
                self.probe.store(Some(p.clone()));
                p
            }
        };
        connector
            .connector
            .configure()
            .and_then(|c| c.into_ssl(&name))
            .inspect_err(|e| tracing::debug!(error = %e, "east-west probe TLS setup failed"))
            .ok()
    }
}

/// The health probes' TLS client for the credentials and bundle it was made from.
fn probe_connector(creds: &Credentials, trust: &Trust) -> Result<SslConnector, ErrorStack> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_cert_store(clone_store(trust)?);
    b.set_private_key(creds.key())?;
    b.set_certificate(creds.leaf())?;
    for c in &creds.chain()[1..] {
        b.add_extra_chain_cert(c.clone())?;
    }
    Ok(b.build())
}

/// A fresh store with the bundle's certificates (a connector takes its store by value).
fn clone_store(t: &Trust) -> Result<X509Store, ErrorStack> {
    let mut b = X509StoreBuilder::new()?;
    for ca in t.bundle.certs() {
        b.add_cert(ca.clone())?;
    }
    Ok(b.build())
}

/// OpenSSL's verify callback of the east-west listener: the chain must verify against the
/// bundle, and the leaf must name a proxy of the mesh from a cluster other than ours.
fn check_client(
    ok: bool,
    ctx: &mut X509StoreContextRef,
    td: &TrustDomain,
    own_cluster: Option<&str>,
    verdict: &Verdict,
) -> bool {
    if !ok {
        let raw = ctx.error().as_raw();
        verdict.set(if UNKNOWN_CA.contains(&raw) {
            HandshakeFailure::UnknownCa
        } else {
            HandshakeFailure::Other
        });
        return false;
    }
    if ctx.error_depth() != 0 {
        return true;
    }
    let peer = ctx.current_cert().and_then(|c| peer_of(c, td).ok());
    let admitted = match (&peer, own_cluster) {
        (Some(Peer::Proxy(p)), Some(own)) => p.cluster != own,
        _ => false,
    };
    if !admitted {
        verdict.set(HandshakeFailure::WrongIdentity);
        ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
        tracing::info!(
            peer = %peer.map_or_else(|| "no identity of this mesh".to_string(), |p| p.to_string()),
            "east-west client refused: only proxies of other clusters may use this listener"
        );
    }
    admitted
}
