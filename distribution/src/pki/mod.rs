//! Identity and mutual TLS for the links between Meridian's own components.
//!
//! ```text
//!  controller                                         proxy
//!  Ca (Secret or user-provided) ── issue_server ──► controller Credentials (TLS server)
//!       ▲                                             new_key ─► csr_pem(ProxyIdentity)
//!       └──── issue_proxy(CSR, identity verified ◄──── bootstrap credential or current cert
//!             by the controller, ttl) ──────────────► proxy Credentials ─► CertStore ─► every link
//! ```
//!
//! | module | owns |
//! |---|---|
//! | `identity` | trust domains, [`Peer`] / [`ProxyIdentity`] and their SPIFFE URIs, when to renew (pure) |
//! | `ca` | [`Ca`], [`TrustBundle`], [`Credentials`]: keys, CSRs, issuing and reading certificates |
//! | `tls` | TLS 1.3 server and client settings that trust only the mesh CA, [`verified_peer`] |
//! | `store` | [`CertStore`]: the credentials presented now, swapped on renewal |

mod ca;
mod identity;
mod store;
mod tls;

pub use self::ca::{Ca, Credentials, PkiError, TrustBundle, csr_pem, new_key, peer_of};
pub use self::identity::{
    DEFAULT_TRUST_DOMAIN, IdentityError, Peer, ProxyIdentity, TrustDomain, renew_at,
};
pub use self::store::CertStore;
pub use self::tls::{
    ClientCerts, client_connector, server_acceptor, server_builder, verified_peer,
};

#[cfg(test)]
mod tests;
