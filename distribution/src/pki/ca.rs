//! The mesh CA and the certificates it issues, with OpenSSL (the TLS library pingora uses too).
//!
//! ```text
//! Ca::generate / Ca::from_pem ──► issue_proxy(CSR, ProxyIdentity, ttl) ──► leaf PEM (the proxy keeps its key)
//!                              └─► issue_server(key, Peer::Controller, names, ttl) ─► Credentials
//! Credentials::from_pem(chain, key) ─► checked: key matches, one identity URI, validity read
//! ```
//!
//! Keys are ECDSA P-256. A proxy makes its key itself and sends only a CSR: its private key never
//! leaves the process. The CA ignores every name a CSR asks for and writes the ones it verified.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use openssl::asn1::{Asn1Integer, Asn1Time, Asn1TimeRef};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder, X509Ref, X509Req, X509ReqBuilder};

use super::identity::{Peer, ProxyIdentity, TrustDomain};

/// Certificates start this long before they are issued, so a peer whose clock is a little
/// behind does not refuse a fresh one. At most a quarter of the lifetime: a short-lived
/// certificate (seconds, in tests) would otherwise be due for renewal (two thirds into its
/// validity) before it was even issued.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why a certificate or key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// OpenSSL failed (a malformed PEM, an unsupported key, ...).
    #[error("{what}: {source}")]
    OpenSsl {
        /// What was being done.
        what: String,
        /// OpenSSL's errors.
        source: openssl::error::ErrorStack,
    },
    /// Input that parses but cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A name that cannot be part of an identity.
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
}

/// Adds context to an OpenSSL error.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, PkiError>;
}

impl<T> Context<T> for Result<T, openssl::error::ErrorStack> {
    fn ctx(self, what: impl Into<String>) -> Result<T, PkiError> {
        self.map_err(|source| PkiError::OpenSsl {
            what: what.into(),
            source,
        })
    }
}

/// A new ECDSA P-256 private key.
pub fn new_key() -> Result<PKey<Private>, PkiError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ctx("EC group")?;
    let ec = EcKey::generate(&group).ctx("generating a key")?;
    PKey::from_ec_key(ec).ctx("generating a key")
}

/// A certificate signing request for `who`, signed with `key` (PEM). The names in it are only a
/// courtesy: the CA writes the names it verified.
pub fn csr_pem(key: &PKey<Private>, who: &ProxyIdentity) -> Result<String, PkiError> {
    let mut b = X509ReqBuilder::new().ctx("CSR")?;
    let mut name = X509NameBuilder::new().ctx("CSR")?;
    name.append_entry_by_nid(Nid::COMMONNAME, &who.proxy_id)
        .ctx("CSR subject")?;
    b.set_subject_name(&name.build()).ctx("CSR subject")?;
    b.set_pubkey(key).ctx("CSR key")?;
    b.sign(key, MessageDigest::sha256())
        .ctx("signing the CSR")?;
    let pem = b.build().to_pem().ctx("encoding the CSR")?;
    String::from_utf8(pem).map_err(|e| PkiError::Invalid(e.to_string()))
}

/// The mesh's certificate authority: its certificate, key and trust domain.
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA for `td`, valid for `validity`.
    pub fn generate(td: &TrustDomain, validity: Duration) -> Result<Ca, PkiError> {
        let key = new_key()?;
        let mut name = X509NameBuilder::new().ctx("CA name")?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Meridian")
            .ctx("CA name")?;
        name.append_entry_by_nid(Nid::COMMONNAME, &format!("Meridian mesh CA {td}"))
            .ctx("CA name")?;
        let name = name.build();
        let mut b = X509Builder::new().ctx("CA certificate")?;
        b.set_version(2).ctx("CA certificate")?;
        let serial = random_serial()?;
        b.set_serial_number(&serial).ctx("CA serial")?;
        b.set_subject_name(&name).ctx("CA subject")?;
        b.set_issuer_name(&name).ctx("CA issuer")?;
        b.set_pubkey(&key).ctx("CA key")?;
        set_validity(&mut b, validity)?;
        b.append_extension(BasicConstraints::new().critical().ca().build().ctx("CA")?)
            .ctx("CA basic constraints")?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .ctx("CA")?,
        )
        .ctx("CA key usage")?;
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .ctx("CA key id")?;
        b.append_extension(ski).ctx("CA key id")?;
        let san = SubjectAlternativeName::new()
            .uri(&td.uri())
            .build(&b.x509v3_context(None, None))
            .ctx("CA trust domain")?;
        b.append_extension(san).ctx("CA trust domain")?;
        b.sign(&key, MessageDigest::sha256())
            .ctx("signing the CA")?;
        Ok(Ca {
            cert: b.build(),
            key,
            trust_domain: td.clone(),
        })
    }

    /// A CA from PEM (a `kubernetes.io/tls` Secret's `tls.crt` / `tls.key`, e.g. one cert-manager
    /// issued). Its trust domain is its `spiffe://` URI SAN, else `fallback`.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        fallback: &TrustDomain,
    ) -> Result<Ca, PkiError> {
        let cert = X509::from_pem(cert_pem).ctx("reading the CA certificate")?;
        let key = PKey::private_key_from_pem(key_pem).ctx("reading the CA key")?;
        if !cert.public_key().ctx("CA public key")?.public_eq(&key) {
            return Err(PkiError::Invalid(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        let is_ca = cert
            .to_text()
            .ok()
            .and_then(|t| String::from_utf8(t).ok())
            .is_some_and(|t| t.contains("CA:TRUE"));
        if !is_ca {
            return Err(PkiError::Invalid(
                "the CA certificate is not a CA (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        let trust_domain = uris(&cert)
            .iter()
            .find_map(|u| TrustDomain::from_ca_uri(u))
            .unwrap_or_else(|| fallback.clone());
        Ok(Ca {
            cert,
            key,
            trust_domain,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate (PEM): what every component trusts.
    pub fn cert_pem(&self) -> Result<String, PkiError> {
        pem_string(self.cert.to_pem().ctx("encoding the CA certificate")?)
    }

    /// The CA key (PEM), to store it in a Secret.
    pub fn key_pem(&self) -> Result<String, PkiError> {
        pem_string(
            self.key
                .private_key_to_pem_pkcs8()
                .ctx("encoding the CA key")?,
        )
    }

    /// The trust bundle of this CA.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle {
            certs: vec![self.cert.clone()],
            trust_domain: self.trust_domain.clone(),
        }
    }

    /// A certificate for proxy `who` with the public key of `csr_pem` (whose signature must
    /// verify), valid for `ttl`, usable as a TLS client and server (east-west). PEM, leaf first.
    pub fn issue_proxy(
        &self,
        csr_pem: &[u8],
        who: &ProxyIdentity,
        ttl: Duration,
    ) -> Result<String, PkiError> {
        let csr = X509Req::from_pem(csr_pem).ctx("reading the CSR")?;
        let key = csr.public_key().ctx("reading the CSR's key")?;
        if !csr.verify(&key).ctx("verifying the CSR")? {
            return Err(PkiError::Invalid(
                "the CSR's signature does not verify".into(),
            ));
        }
        let names = vec![San::Dns(self.trust_domain.cluster_dns_name(&who.cluster))];
        let cert = self.issue(&key, &who.proxy_id, &Peer::Proxy(who.clone()), &names, ttl)?;
        pem_string(cert.to_pem().ctx("encoding the certificate")?)
    }

    /// A server certificate and key for `peer` (the controller) with extra DNS names and IP
    /// addresses it is reached at, valid for `ttl`.
    pub fn issue_server(
        &self,
        peer: &Peer,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<Credentials, PkiError> {
        let key = new_key()?;
        let mut names: Vec<San> = dns.iter().cloned().map(San::Dns).collect();
        names.extend(ips.iter().map(|ip| San::Ip(*ip)));
        let cn = match peer {
            Peer::Controller => "meridian-controller".to_string(),
            Peer::Proxy(p) => p.proxy_id.clone(),
        };
        let cert = self.issue(&key, &cn, peer, &names, ttl)?;
        let pem = pem_string(cert.to_pem().ctx("encoding the certificate")?)?;
        Credentials::new(pem, key, &self.trust_domain)
    }

    fn issue<T: HasPublic>(
        &self,
        key: &PKeyRef<T>,
        cn: &str,
        peer: &Peer,
        names: &[San],
        ttl: Duration,
    ) -> Result<X509, PkiError> {
        let mut name = X509NameBuilder::new().ctx("subject")?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Meridian")
            .ctx("subject")?;
        name.append_entry_by_nid(Nid::COMMONNAME, cn)
            .ctx("subject")?;
        let mut b = X509Builder::new().ctx("certificate")?;
        b.set_version(2).ctx("certificate")?;
        let serial = random_serial()?;
        b.set_serial_number(&serial).ctx("serial")?;
        b.set_subject_name(&name.build()).ctx("subject")?;
        b.set_issuer_name(self.cert.subject_name()).ctx("issuer")?;
        b.set_pubkey(key).ctx("public key")?;
        set_validity(&mut b, ttl)?;
        b.append_extension(BasicConstraints::new().critical().build().ctx("leaf")?)
            .ctx("basic constraints")?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .ctx("key usage")?,
        )
        .ctx("key usage")?;
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()
                .ctx("extended key usage")?,
        )
        .ctx("extended key usage")?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&self.cert), None))
            .ctx("authority key id")?;
        b.append_extension(aki).ctx("authority key id")?;
        let mut san = SubjectAlternativeName::new();
        san.uri(&peer.uri(&self.trust_domain));
        for n in names {
            match n {
                San::Dns(d) => san.dns(d),
                San::Ip(ip) => san.ip(&ip.to_string()),
            };
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .ctx("subject alternative names")?;
        b.append_extension(san).ctx("subject alternative names")?;
        b.sign(&self.key, MessageDigest::sha256())
            .ctx("signing the certificate")?;
        Ok(b.build())
    }
}

enum San {
    Dns(String),
    Ip(IpAddr),
}

/// The CA certificates a component trusts, and the mesh's trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    certs: Vec<X509>,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("certs", &self.certs.len())
            .finish()
    }
}

impl TrustBundle {
    /// Every certificate of a PEM bundle (one or more CAs: during a CA rotation both). The trust
    /// domain is the first `spiffe://` URI SAN among them, else `fallback`.
    pub fn from_pem(pem: &[u8], fallback: &TrustDomain) -> Result<TrustBundle, PkiError> {
        let certs = X509::stack_from_pem(pem).ctx("reading the CA bundle")?;
        if certs.is_empty() {
            return Err(PkiError::Invalid(
                "the CA bundle holds no certificate".into(),
            ));
        }
        let trust_domain = certs
            .iter()
            .flat_map(|c| uris(c))
            .find_map(|u| TrustDomain::from_ca_uri(&u))
            .unwrap_or_else(|| fallback.clone());
        Ok(TrustBundle {
            certs,
            trust_domain,
        })
    }

    /// The certificates.
    pub fn certs(&self) -> &[X509] {
        &self.certs
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The bundle as PEM.
    pub fn to_pem(&self) -> Result<String, PkiError> {
        let mut out = Vec::new();
        for c in &self.certs {
            out.extend(c.to_pem().ctx("encoding the CA bundle")?);
        }
        pem_string(out)
    }
}

/// A certificate chain (leaf first) and its private key, checked to belong together and to name
/// exactly one identity of the mesh.
#[derive(Clone)]
pub struct Credentials {
    chain: Vec<X509>,
    key: PKey<Private>,
    peer: Peer,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("peer", &self.peer)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a PEM chain (leaf first) for `key`.
    pub fn new(
        chain_pem: String,
        key: PKey<Private>,
        td: &TrustDomain,
    ) -> Result<Credentials, PkiError> {
        let chain = X509::stack_from_pem(chain_pem.as_bytes()).ctx("reading the certificate")?;
        let Some(leaf) = chain.first() else {
            return Err(PkiError::Invalid("no certificate in the chain".into()));
        };
        if !leaf.public_key().ctx("certificate key")?.public_eq(&key) {
            return Err(PkiError::Invalid(
                "the certificate is not for this key".into(),
            ));
        }
        let peer = peer_of(leaf, td)?;
        let not_before = system_time(leaf.not_before())?;
        let not_after = system_time(leaf.not_after())?;
        Ok(Credentials {
            chain,
            key,
            peer,
            not_before,
            not_after,
        })
    }

    /// Reads a PEM chain and a PEM key.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &[u8],
        td: &TrustDomain,
    ) -> Result<Credentials, PkiError> {
        let key = PKey::private_key_from_pem(key_pem).ctx("reading the private key")?;
        Credentials::new(chain_pem.to_string(), key, td)
    }

    /// Who the certificate names.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &X509 {
        &self.chain[0]
    }

    /// The whole chain, leaf first.
    pub fn chain(&self) -> &[X509] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PKey<Private> {
        &self.key
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to renew (two thirds into the lifetime).
    pub fn renew_at(&self) -> SystemTime {
        super::identity::renew_at(self.not_before, self.not_after)
    }
}

/// The one identity URI SAN of `cert` in trust domain `td`.
pub fn peer_of(cert: &X509Ref, td: &TrustDomain) -> Result<Peer, PkiError> {
    let found: Vec<Peer> = uris(cert)
        .iter()
        .filter_map(|u| Peer::from_uri(u, td).ok())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(PkiError::Invalid(format!(
            "the certificate names no identity of trust domain {td}"
        ))),
        _ => Err(PkiError::Invalid(
            "the certificate names more than one identity".into(),
        )),
    }
}

/// Every URI SAN of `cert`.
pub(crate) fn uris(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.uri().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set_validity(b: &mut X509Builder, ttl: Duration) -> Result<(), PkiError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| PkiError::Invalid(format!("clock before 1970: {e}")))?;
    let start = now.saturating_sub(BACKDATE.min(ttl / 4)).as_secs();
    let end = now.saturating_add(ttl).as_secs();
    let to_time = |s: u64| {
        i64::try_from(s)
            .map_err(|_| PkiError::Invalid("time out of range".into()))
            .and_then(|s| Asn1Time::from_unix(s).ctx("validity"))
    };
    let (start, end) = (to_time(start)?, to_time(end)?);
    b.set_not_before(&start).ctx("validity")?;
    b.set_not_after(&end).ctx("validity")?;
    Ok(())
}

fn random_serial() -> Result<Asn1Integer, PkiError> {
    let mut bn = BigNum::new().ctx("serial")?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false).ctx("serial")?;
    bn.to_asn1_integer().ctx("serial")
}

/// An ASN.1 time as a `SystemTime`.
pub(crate) fn system_time(t: &Asn1TimeRef) -> Result<SystemTime, PkiError> {
    let epoch = Asn1Time::from_unix(0).ctx("epoch")?;
    let d = epoch.diff(t).ctx("certificate time")?;
    let secs = i64::from(d.days) * 86_400 + i64::from(d.secs);
    let secs = u64::try_from(secs)
        .map_err(|_| PkiError::Invalid("certificate time before 1970".into()))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn pem_string(pem: Vec<u8>) -> Result<String, PkiError> {
    String::from_utf8(pem).map_err(|e| PkiError::Invalid(e.to_string()))
}
