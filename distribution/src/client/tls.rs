//! The client's HTTPS: TLS 1.3 to the controller only, with the certificate and trust bundle the
//! proxy's [`CertStore`] holds *when each connection opens*.
//!
//! ```text
//! HttpsConnector(client_connector(None, bundle, Peer::Controller))
//!   per connection (set_callback): trust store = CertStore::bundle() now,
//!                                  certificate + key = CertStore::credentials() now (mTLS client)
//!   handshake: chain to the bundle, host name = the URL's host, identity = the controller's
//! ```
//!
//! Two clients share this: one presents the current certificate (stream, acks, traffic,
//! renewals), one never does (bootstrap: a proxy whose certificate expired must not present it).
//! Reading the store per connection instead of rebuilding a client on each renewal keeps open
//! connections (the stream) untouched and needs no coordination: the next connection simply
//! presents the new certificate.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openssl::x509::store::X509StoreBuilder;

use super::{ClientConfig, ClientError};
use crate::pki::{CertStore, Peer, client_connector};

/// An HTTPS client to the controller.
pub(super) type Https = HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTPS client trusting the store's bundle; with `present`, presenting its certificate.
pub(super) fn https(cfg: &ClientConfig, present: bool) -> Result<Https, ClientError> {
    let tls_error = |e: &dyn std::fmt::Display| ClientError::Certificate(format!("TLS: {e}"));
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    let store: Arc<CertStore> = cfg.identity.clone();
    let tls =
        client_connector(None, &store.bundle(), Peer::Controller).map_err(|e| tls_error(&e))?;
    let mut connector = HttpsConnector::with_connector(http, tls).map_err(|e| tls_error(&e))?;
    connector.set_callback(move |conf, _uri| {
        let bundle = store.bundle();
        let mut trust = X509StoreBuilder::new()?;
        for ca in bundle.certs() {
            trust.add_cert(ca.clone())?;
        }
        conf.set_verify_cert_store(trust.build())?;
        if present && let Some(c) = store.credentials() {
            conf.set_certificate(c.leaf())?;
            conf.set_private_key(c.key())?;
            for extra in &c.chain()[1..] {
                conf.add_chain_cert(extra.clone())?;
            }
        }
        Ok(())
    });
    Ok(HttpClient::builder(TokioExecutor::new()).build(connector))
}
