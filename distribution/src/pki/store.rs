//! [`CertStore`]: the credentials a component presents now and the CAs it trusts, swapped
//! atomically on renewal. Connections read it when they start, so a renewal never touches a
//! connection that is already up.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use std::time::Duration;

use super::ca::{Ca, Credentials, PkiError, TrustBundle, csr_pem, new_key};
use super::identity::ProxyIdentity;

/// Current credentials (none before the first certificate) and trust bundle.
pub struct CertStore {
    creds: ArcSwapOption<Credentials>,
    bundle: ArcSwap<TrustBundle>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("creds", &self.creds.load())
            .field("bundle", &self.bundle.load())
            .finish()
    }
}

impl CertStore {
    /// A store trusting `bundle`, without credentials yet.
    pub fn new(bundle: TrustBundle) -> Self {
        CertStore {
            creds: ArcSwapOption::empty(),
            bundle: ArcSwap::from_pointee(bundle),
            changes: watch::channel(0).0,
        }
    }

    /// A store with credentials already.
    pub fn with_credentials(bundle: TrustBundle, creds: Credentials) -> Self {
        let s = CertStore::new(bundle);
        s.set(creds);
        s
    }

    /// A store trusting `ca` and holding a certificate for `who` issued directly by it (a
    /// fresh key, its CSR, [`Ca::issue_proxy`]): for proxies started in the controller's own
    /// process (`meridian up`) and tests, which need no bootstrap.
    pub fn issued(ca: &Ca, who: &ProxyIdentity, ttl: Duration) -> Result<CertStore, PkiError> {
        let key = new_key()?;
        let csr = csr_pem(&key, who)?;
        let pem = ca.issue_proxy(csr.as_bytes(), who, ttl)?;
        let creds = Credentials::new(pem, key, ca.trust_domain())?;
        Ok(CertStore::with_credentials(ca.bundle(), creds))
    }

    /// The credentials to present now.
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.creds.load_full()
    }

    /// The CAs to trust now.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.load_full()
    }

    /// Replaces the credentials (a renewal).
    pub fn set(&self, creds: Credentials) {
        self.creds.store(Some(Arc::new(creds)));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Replaces the trust bundle (a CA rotation).
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ticks on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
