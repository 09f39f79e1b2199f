//! TLS settings of Meridian's own links: TLS 1.3 only, certificates of the mesh CA only, and the
//! identity of the other end read from its verified certificate.
//!
//! ```text
//! server_acceptor(creds, bundle, ClientCerts::…) ─► SslAcceptor (one per certificate renewal)
//! client_connector(creds?, bundle, expect) ─► SslConnectorBuilder (the server must name `expect`)
//! verified_peer(ssl, td) ─► the Peer the other end's verified certificate names
//! ```

use openssl::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslConnector, SslConnectorBuilder, SslMethod, SslRef,
    SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509StoreBuilder;

use super::ca::{Context, Credentials, PkiError, TrustBundle, peer_of};
use super::identity::{Peer, TrustDomain};

/// Whether a server asks its clients for certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client must present a certificate of the mesh (the handshake fails otherwise).
    Required,
    /// A client may present one; without, the connection is up but anonymous (the
    /// distribution server's bootstrap endpoint, where a proxy gets its first certificate).
    Optional,
}

/// A TLS 1.3 server presenting `creds`, trusting `bundle` for client certificates.
pub fn server_acceptor(
    creds: &Credentials,
    bundle: &TrustBundle,
    clients: ClientCerts,
) -> Result<SslAcceptor, PkiError> {
    let mut b = server_builder(creds, bundle, clients)?;
    b.set_session_id_context(b"meridian")
        .ctx("TLS session context")?;
    Ok(b.build())
}

/// The builder behind [`server_acceptor`], for callers that add their own settings.
pub fn server_builder(
    creds: &Credentials,
    bundle: &TrustBundle,
    clients: ClientCerts,
) -> Result<SslAcceptorBuilder, PkiError> {
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).ctx("TLS server")?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .ctx("TLS version")?;
    b.set_private_key(creds.key()).ctx("TLS server key")?;
    b.set_certificate(creds.leaf())
        .ctx("TLS server certificate")?;
    for extra in &creds.chain()[1..] {
        b.add_extra_chain_cert(extra.clone()).ctx("TLS chain")?;
    }
    b.check_private_key().ctx("TLS server key")?;
    let mut store = X509StoreBuilder::new().ctx("trust store")?;
    for ca in bundle.certs() {
        store.add_cert(ca.clone()).ctx("trust store")?;
    }
    b.set_verify_cert_store(store.build()).ctx("trust store")?;
    let mode = match clients {
        ClientCerts::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        ClientCerts::Optional => SslVerifyMode::PEER,
    };
    b.set_verify(mode);
    Ok(b)
}

/// A TLS 1.3 client trusting only `bundle`, presenting `creds` when given, that accepts only a
/// server whose certificate names `expect` (checked during the handshake, on top of the host
/// name check the caller does with the connector).
pub fn client_connector(
    creds: Option<&Credentials>,
    bundle: &TrustBundle,
    expect: Peer,
) -> Result<SslConnectorBuilder, PkiError> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).ctx("TLS client")?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .ctx("TLS version")?;
    let mut store = X509StoreBuilder::new().ctx("trust store")?;
    for ca in bundle.certs() {
        store.add_cert(ca.clone()).ctx("trust store")?;
    }
    b.set_verify_cert_store(store.build()).ctx("trust store")?;
    if let Some(c) = creds {
        b.set_private_key(c.key()).ctx("TLS client key")?;
        b.set_certificate(c.leaf()).ctx("TLS client certificate")?;
        for extra in &c.chain()[1..] {
            b.add_extra_chain_cert(extra.clone()).ctx("TLS chain")?;
        }
    }
    let td = bundle.trust_domain().clone();
    b.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
        if !ok || ctx.error_depth() != 0 {
            return ok;
        }
        // The leaf: chain and host name already checked; now who it names.
        ctx.current_cert()
            .is_some_and(|c| peer_of(c, &td).is_ok_and(|p| p == expect))
    });
    Ok(b)
}

/// Who the other end of an established connection is, from its verified certificate; `None`
/// when it presented none (or one that names no identity of `td`).
pub fn verified_peer(ssl: &SslRef, td: &TrustDomain) -> Option<Peer> {
    if ssl.verify_result() != openssl::x509::X509VerifyResult::OK {
        return None;
    }
    let cert = ssl.peer_certificate()?;
    peer_of(&cert, td).ok()
}
