//! The proxy's certificate: getting the first one, renewing it, and the bootstrap credential.
//!
//! ```text
//! ensure_certificate (before every stream)
//!   store holds a certificate naming us, valid past the next minute? ─► done
//!   else obtain: new key + CSR ─► POST /v1/certificate {cluster, zone, proxyId, csr}
//!        current certificate still valid (names us)? ─► over mTLS (renewal)
//!        else bootstrap credential? ─► anonymous TLS + Authorization: Bearer <credential>
//!        else ─► ClientError::NoCredential (status, backoff)
//!   200 {certificate, caBundle} ─► names us? ─► CertStore::set_bundle + set
//! renew_certificates (beside an open stream, forever)
//!   sleep until renew_at (2/3 of the life, minus up to 5 % jitter) ─► obtain
//!   failed? log, back off (jittered, ≤ backoff_max), again; expired meanwhile ─► bootstrap
//! ```
//!
//! The private key never leaves the process: only its CSR is sent. The controller decides the
//! region (from the bootstrap credential's cluster), so a proxy whose hello says another region
//! gets a clear error here instead of a `403` on its hello.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use rand::Rng;

use super::stream::body_text;
use super::{Client, ClientError, Target, error_chain};
use crate::pki::{Credentials, Peer, TrustBundle, csr_pem, new_key};
use crate::protocol::{CertificateRequest, CertificateResponse};

/// A certificate expiring sooner than this is replaced before a stream opens.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// Bound of one certificate request.
const CERT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// What proves a proxy may get its first certificate.
#[derive(Clone)]
pub enum BootstrapCredential {
    /// The token itself.
    Token(String),
    /// A file holding it, read at each use: a projected ServiceAccount token is rotated on disk
    /// by the kubelet.
    File(PathBuf),
}

impl std::fmt::Debug for BootstrapCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        match self {
            BootstrapCredential::Token(_) => f.write_str("Token(..)"),
            BootstrapCredential::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl BootstrapCredential {
    /// The credential now (trimmed); an empty one is an error.
    pub fn read(&self) -> Result<String, ClientError> {
        let token = match self {
            BootstrapCredential::Token(t) => t.trim().to_string(),
            BootstrapCredential::File(p) => std::fs::read_to_string(p)
                .map_err(|e| {
                    ClientError::Certificate(format!(
                        "cannot read the bootstrap token file {}: {e}",
                        p.display()
                    ))
                })?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err(ClientError::Certificate(
                "the bootstrap credential is empty".into(),
            ));
        }
        Ok(token)
    }
}

impl Client {
    /// The store's credentials when they name this proxy.
    fn own_credentials(&self) -> Option<Arc<Credentials>> {
        self.cfg
            .identity
            .credentials()
            .filter(|c| c.peer().proxy() == Some(&self.who))
    }

    /// Makes sure the store holds a certificate naming this proxy, valid for at least another
    /// minute (see the module docs).
    pub(super) async fn ensure_certificate<T: Target>(
        &self,
        target: &T,
    ) -> Result<(), ClientError> {
        let now = SystemTime::now();
        let current = self.own_credentials();
        if current
            .as_ref()
            .is_some_and(|c| c.not_after() > now + EXPIRY_MARGIN)
        {
            return Ok(());
        }
        let renewal = current.is_some_and(|c| c.not_after() > now);
        self.obtain(renewal, target).await
    }

    /// Renews the certificate at its renewal time, again and again (beside an open stream,
    /// which is never touched).
    pub(super) async fn renew_certificates<T: Target>(&self, target: &T) -> Infallible {
        let mut failures: u32 = 0;
        loop {
            let now = SystemTime::now();
            let due = self.own_credentials().map_or(now, |c| jittered(&c));
            if let Ok(wait) = due.duration_since(now) {
                tokio::time::sleep(wait).await;
            }
            let renewal = self
                .own_credentials()
                .is_some_and(|c| c.not_after() > SystemTime::now());
            match self.obtain(renewal, target).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::warn!(error = %e, renewal, "certificate renewal failed; retrying");
                    tokio::time::sleep(self.backoff(failures)).await;
                    failures = failures.saturating_add(1);
                }
            }
        }
    }

    /// Gets a new certificate: over mTLS (`renewal`) or with the bootstrap credential.
    async fn obtain<T: Target>(&self, renewal: bool, target: &T) -> Result<(), ClientError> {
        let credential = if renewal {
            None
        } else {
            let Some(b) = &self.cfg.bootstrap else {
                return Err(ClientError::NoCredential(self.who.to_string()));
            };
            Some(b.read()?)
        };
        let pki = |e: crate::pki::PkiError| ClientError::Certificate(e.to_string());
        let key = new_key().map_err(pki)?;
        let body = CertificateRequest {
            cluster: self.who.cluster.clone(),
            zone: self.who.zone.clone(),
            proxy_id: self.who.proxy_id.clone(),
            csr: csr_pem(&key, &self.who).map_err(pki)?,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        let mut req = Request::post(format!("{}/v1/certificate", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(c) = &credential {
            req = req.header(header::AUTHORIZATION, format!("Bearer {c}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))?;
        let http = if renewal { &self.http } else { &self.anon };
        let resp = tokio::time::timeout(CERT_TIMEOUT, http.request(req))
            .await
            .map_err(|_| ClientError::NoAnswer(CERT_TIMEOUT))?
            .map_err(|e| ClientError::Connection(error_chain(&e)))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = body_text(resp.into_body(), Duration::from_secs(2)).await;
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    ClientError::Unauthorized(format!("{status}: {body}"))
                }
                _ => ClientError::Status { status, body },
            });
        }
        let answer = tokio::time::timeout(
            CERT_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| ClientError::NoAnswer(CERT_TIMEOUT))?
        .map_err(|e| ClientError::Connection(e.to_string()))?
        .to_bytes();
        let answer: CertificateResponse = serde_json::from_slice(&answer)
            .map_err(|e| ClientError::Protocol(format!("certificate answer: {e}")))?;
        let store = &self.cfg.identity;
        let td = store.bundle().trust_domain().clone();
        let bundle = TrustBundle::from_pem(answer.ca_bundle.as_bytes(), &td).map_err(pki)?;
        let creds =
            Credentials::new(answer.certificate, key, bundle.trust_domain()).map_err(pki)?;
        if creds.peer() != &Peer::Proxy(self.who.clone()) {
            return Err(ClientError::Certificate(format!(
                "the controller certified {} but this proxy says hello as {} (is --region \
                 right?)",
                creds.peer(),
                self.who
            )));
        }
        let expiry = creds.not_after();
        store.set_bundle(bundle);
        store.set(creds);
        self.set_status(target, |s| s.certificate_expiry = Some(expiry));
        tracing::info!(
            proxy = %self.who,
            kind = if renewal { "renewal" } else { "bootstrap" },
            expires_in = ?expiry.duration_since(SystemTime::now()).unwrap_or_default(),
            "certificate obtained"
        );
        Ok(())
    }
}

/// When to renew `c`: at its renewal time, up to 5 % of its lifetime earlier, so proxies
/// started together do not renew together.
fn jittered(c: &Credentials) -> SystemTime {
    let life = c
        .not_after()
        .duration_since(c.not_before())
        .unwrap_or_default();
    let max = life / 20;
    let early = rand::rng().random_range(0..=max.as_millis().min(u128::from(u64::MAX)) as u64);
    c.renew_at() - Duration::from_millis(early)
}
