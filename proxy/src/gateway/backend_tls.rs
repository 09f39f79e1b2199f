//! TLS from the proxy to a backend a BackendTLSPolicy names ([`BackendTls`] in the snapshot).
//!
//! ```text
//! peer_of ─ backend.tls? ─► scheme HTTPS, SNI = hostname, verify the chain against the CA
//!                           bundle (none: the system trust store), verify the name:
//!                             no subjectAltNames    → hostname
//!                             one Hostname SAN      → that name (the hostname is accepted too:
//!                                                     pingora always adds the SNI)
//!                             URI SANs, or several  → not verifiable here: the try fails (502)
//!                                                     rather than trusting any name
//!           ALPN: http/1.1; only h2 for an h2c backend and for every gRPC rule's backend
//!           (HTTP/2 over TLS; a server choosing no ALPN gets HTTP/1.1, pingora's fallback)
//! ```
//!
//! Pooled connections are keyed by pingora's `reuse_hash` (address, scheme, SNI, verification
//! flags, alternative name) plus `group_key`, which we set to a hash of the CA bundle: a TLS
//! connection is never handed to a plaintext peer, nor one verified against another CA. Both
//! HTTP/1 paths (lean/own and the framework's) and h2 connect through pingora's connector with
//! these settings. East-west tries are unaffected: the remote proxy originates the backend TLS.
//!
//! Parsed CA bundles are cached by their text (few distinct bundles; bounded), so a try does
//! not parse PEM again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use meridian_model::snapshot::{BackendTls, SubjectAltName};
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::{HttpPeer, Scheme};

/// Most distinct CA bundles kept parsed.
const MAX_CACHED: usize = 256;

type Cas = Arc<Box<[X509]>>;

static CACHE: Mutex<Option<HashMap<u64, Cas>>> = Mutex::new(None);

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The certificates of a PEM bundle; empty (every handshake fails) when it holds none.
fn cas(pem: &str, key: u64) -> Cas {
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(&key) {
        return c.clone();
    }
    let parsed: Cas = match X509::stack_from_pem(pem.as_bytes()) {
        Ok(certs) if !certs.is_empty() => Arc::new(certs.into_boxed_slice()),
        Ok(_) | Err(_) => {
            tracing::warn!("backend CA bundle holds no usable certificate: TLS tries fail");
            Arc::new(Box::new([]))
        }
    };
    if map.len() >= MAX_CACHED {
        map.clear();
    }
    map.insert(key, parsed.clone());
    parsed
}

/// Turns `peer` into a verified TLS peer per `tls`.
pub(super) fn secure(peer: &mut HttpPeer, tls: &BackendTls) {
    peer.scheme = Scheme::HTTPS;
    peer.sni = tls.hostname.clone();
    peer.options.verify_cert = true;
    peer.options.verify_hostname = true;
    let mut unverifiable = false;
    match tls.subject_alt_names.as_slice() {
        [] => {}
        [SubjectAltName::Hostname(name)] => peer.options.alternative_cn = Some(name.clone()),
        _ => unverifiable = true,
    }
    let key = tls.ca_pem.as_deref().map_or(0, hash_of);
    peer.group_key = key;
    peer.options.ca = if unverifiable {
        tracing::debug!(sni = %tls.hostname, "subjectAltNames this proxy cannot verify: the try fails");
        Some(Arc::new(Box::new([])))
    } else {
        tls.ca_pem.as_deref().map(|pem| cas(pem, key))
    };
}
