//! What the server asks its owner (the controller) before it lets a proxy in: whether a
//! bootstrap credential is good for a first certificate ([`BootstrapVerifier`]) and whether a
//! proxy may advertise an address ([`AddressPolicy`]).
//!
//! ```text
//! POST /v1/certificate without a client certificate
//!   Authorization: Bearer <credential> ─► BootstrapVerifier::verify(claim) ─► BootstrapGrant
//!        (the controller: TokenReview in the claimed cluster)   │ region, zones, bound proxy id
//!                                                               ▼
//!                                     Ca::issue_proxy(CSR, ProxyIdentity{cluster, region, zone, id})
//! POST /v1/stream (mutual TLS) ─► hello names the certificate's identity? ─► AddressPolicy::allows
//! ```
//!
//! Both are traits so this crate stays free of Kubernetes: the controller implements them with
//! its member clusters' clients and address pools.

use std::future::Future;
use std::pin::Pin;

/// What a proxy without a certificate claims to be, with the credential that should prove it.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapClaim {
    /// The member cluster the proxy says it runs in.
    pub cluster: String,
    /// The zone it says it runs in.
    pub zone: String,
    /// The id it asks for.
    pub proxy_id: String,
    /// The bootstrap credential (a ServiceAccount token for the `meridian` audience, or a join
    /// token).
    pub credential: String,
}

impl std::fmt::Debug for BootstrapClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential.
        f.debug_struct("BootstrapClaim")
            .field("cluster", &self.cluster)
            .field("zone", &self.zone)
            .field("proxy_id", &self.proxy_id)
            .finish_non_exhaustive()
    }
}

/// What a verified credential allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapGrant {
    /// The region of the claimed cluster (written into the certificate).
    pub region: String,
    /// The zones of that cluster; the claimed zone must be one of them (empty: any zone).
    pub zones: Vec<String>,
    /// The proxy id the credential is bound to (a pod-bound token names its pod); when set,
    /// the claimed id must equal it.
    pub proxy_id: Option<String>,
}

/// Why a credential was not good enough. The `reason` label goes to metrics, the message to
/// the proxy's log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BootstrapRefusal {
    /// Short label: `unknown-cluster`, `invalid-credential`, `wrong-account`, `unavailable`, ...
    pub reason: &'static str,
    /// What to tell the proxy (never the credential).
    pub message: String,
    /// `true` when the verifier could not decide (the cluster's API server is down): the
    /// server answers `503` so the proxy retries, instead of `401`.
    pub transient: bool,
}

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Verifies bootstrap credentials (the controller: a TokenReview in the claimed cluster).
pub trait BootstrapVerifier: Send + Sync + 'static {
    /// Whether `claim.credential` proves the proxy runs in `claim.cluster`.
    fn verify<'a>(
        &'a self,
        claim: &'a BootstrapClaim,
    ) -> BoxFuture<'a, Result<BootstrapGrant, BootstrapRefusal>>;
}

/// Which addresses the proxies of a cluster may advertise (the controller: its address pools).
pub trait AddressPolicy: Send + Sync + 'static {
    /// Whether a proxy of `cluster` may advertise `address` (an IP or a host name) for Gateway
    /// `status.addresses`. The server has already refused unspecified, multicast and broadcast
    /// IPs.
    fn allows(&self, cluster: &str, address: &str) -> bool;
}

/// Allows every concrete address (no pools configured).
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyAddress;

impl AddressPolicy for AnyAddress {
    fn allows(&self, _cluster: &str, _address: &str) -> bool {
        true
    }
}
