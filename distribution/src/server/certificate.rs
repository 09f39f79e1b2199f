//! `POST /v1/certificate`: a proxy's first certificate (bootstrap) or its next one (renewal).
//!
//! ```text
//! body {cluster, zone, proxyId, csr}
//!  ├─ verified proxy certificate ─► renewal: the body names exactly its identity? (403)
//!  │                                 ─► issue for that identity (region from the certificate)
//!  ├─ the controller's certificate ─► 403 (no proxy)
//!  └─ none ─► Authorization: Bearer <credential>? (401) ─► bootstrap configured? (403)
//!             ─► BootstrapVerifier::verify ─► refusal: 401 | transient: 503 + Retry-After
//!             ─► grant: zone among its zones, bound id equal? (403)
//!             ─► issue for {cluster, grant.region, zone, proxyId}
//! issue: Ca::issue_proxy(csr, identity, proxy_cert_ttl) ─► 200 {certificate, caBundle} | 400 bad CSR
//! ```
//!
//! The CA writes only the names verified here; whatever else the CSR asks for is ignored.
//! Certificates may be issued by any replica (no leader needed): every replica holds the CA.

use http::{HeaderMap, StatusCode, header};

use super::Inner;
use super::admission::BootstrapClaim;
use crate::pki::{Peer, ProxyIdentity};
use crate::protocol::{CertificateRequest, CertificateResponse};

/// Seconds a proxy waits before asking again after a transient refusal.
pub(super) const RETRY_AFTER_SECS: u64 = 5;

/// A refused certificate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) status: StatusCode,
    /// Metric label.
    pub(super) reason: &'static str,
    pub(super) message: String,
}

fn refused(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        status,
        reason,
        message: message.into(),
    }
}

impl Inner {
    /// Handles a decoded certificate request from a connection that presented `peer`.
    pub(super) async fn certificate(
        &self,
        body: CertificateRequest,
        peer: Option<&Peer>,
        headers: &HeaderMap,
    ) -> Result<CertificateResponse, Refused> {
        let result = self.decide(&body, peer, headers).await;
        let (who, kind) = match result {
            Ok(x) => x,
            Err(r) => {
                self.metrics
                    .certificate_refused
                    .with_label_values(&[r.reason])
                    .inc();
                tracing::warn!(cluster = %body.cluster, proxy = %body.proxy_id, reason = r.reason, message = %r.message.trim(), "certificate refused");
                return Err(r);
            }
        };
        let issued = self
            .ca
            .issue_proxy(body.csr.as_bytes(), &who, self.proxy_cert_ttl)
            .map_err(|e| refused(StatusCode::BAD_REQUEST, "bad-csr", format!("{e}\n")))
            .and_then(|certificate| {
                let ca_bundle = self.ca.bundle().to_pem().map_err(|e| {
                    refused(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("cannot encode the CA bundle: {e}\n"),
                    )
                })?;
                Ok(CertificateResponse {
                    certificate,
                    ca_bundle,
                })
            });
        match &issued {
            Ok(_) => {
                self.metrics
                    .certificates_issued
                    .with_label_values(&[kind])
                    .inc();
                tracing::info!(%who, kind, "certificate issued");
            }
            Err(r) => {
                self.metrics
                    .certificate_refused
                    .with_label_values(&[r.reason])
                    .inc();
            }
        }
        issued
    }

    /// The identity to certify and whether it is a `bootstrap` or a `renewal`.
    async fn decide(
        &self,
        body: &CertificateRequest,
        peer: Option<&Peer>,
        headers: &HeaderMap,
    ) -> Result<(ProxyIdentity, &'static str), Refused> {
        match peer {
            Some(Peer::Proxy(who)) => {
                let same = body.cluster == who.cluster
                    && body.zone == who.zone
                    && body.proxy_id == who.proxy_id;
                if !same {
                    return Err(refused(
                        StatusCode::FORBIDDEN,
                        "identity-mismatch",
                        format!(
                            "a renewal keeps the identity of the client certificate ({who}); \
                             this request names proxy {:?} of cluster {:?} in zone {:?}\n",
                            body.proxy_id, body.cluster, body.zone
                        ),
                    ));
                }
                Ok((who.clone(), "renewal"))
            }
            Some(Peer::Controller) => Err(refused(
                StatusCode::FORBIDDEN,
                "not-a-proxy",
                "the controller's certificate cannot get a proxy certificate\n",
            )),
            None => self
                .bootstrap(body, headers)
                .await
                .map(|w| (w, "bootstrap")),
        }
    }

    /// A first certificate, on the strength of a bootstrap credential.
    async fn bootstrap(
        &self,
        body: &CertificateRequest,
        headers: &HeaderMap,
    ) -> Result<ProxyIdentity, Refused> {
        let credential = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let Some(credential) = credential else {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "no-credential",
                "a first certificate needs a bootstrap credential (Authorization: Bearer \
                 <ServiceAccount or join token>); a renewal needs the current client \
                 certificate\n",
            ));
        };
        let Some(verifier) = &self.bootstrap else {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "bootstrap-disabled",
                "bootstrap disabled: this controller issues no first certificates (renewals \
                 only); give the proxy a certificate another way\n",
            ));
        };
        // The names must be able to form an identity before anyone is asked about them.
        if let Err(e) = ProxyIdentity::new(&body.cluster, "region", &body.zone, &body.proxy_id) {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("{e}\n"),
            ));
        }
        let claim = BootstrapClaim {
            cluster: body.cluster.clone(),
            zone: body.zone.clone(),
            proxy_id: body.proxy_id.clone(),
            credential: credential.to_string(),
        };
        let grant = verifier.verify(&claim).await.map_err(|r| {
            if r.transient {
                refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "cannot verify the bootstrap credential now: {}\n",
                        r.message
                    ),
                )
            } else {
                refused(
                    StatusCode::UNAUTHORIZED,
                    r.reason,
                    format!("bootstrap credential refused: {}\n", r.message),
                )
            }
        })?;
        if !grant.zones.is_empty() && !grant.zones.contains(&body.zone) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "zone",
                format!(
                    "zone {:?} is not a zone of cluster {:?} ({})\n",
                    body.zone,
                    body.cluster,
                    grant.zones.join(", ")
                ),
            ));
        }
        if let Some(bound) = &grant.proxy_id
            && bound != &body.proxy_id
        {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "proxy-id",
                format!(
                    "the credential is bound to proxy {bound:?}, not {:?}\n",
                    body.proxy_id
                ),
            ));
        }
        ProxyIdentity::new(&body.cluster, &grant.region, &body.zone, &body.proxy_id).map_err(|e| {
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the cluster's region cannot be part of an identity: {e}\n"),
            )
        })
    }
}
