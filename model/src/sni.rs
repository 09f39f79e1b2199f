//! SNI routing of TLS passthrough listeners ([`Protocol::Tls`], TLSRoute).
//!
//! A passthrough connection has no request: the only thing the proxy can route on is the server
//! name of the ClientHello. The compiled [`Router`] already ranks hosts the way TLSRoute needs,
//! so an SNI is looked up as a request whose `Host` is the name and whose path is `/` (a TLSRoute
//! rule has no matches, which the router compiles as the catch-all `PathPrefix /`):
//!
//! ```text
//! raw SNI ─► normalize_sni (lower case, one trailing dot dropped; empty, IP literal, bad
//!            label ⇒ refused: RFC 6066 forbids IPs in SNI)
//!         ─► listener of the socket: exact hostname > longest wildcard suffix > none
//!         ─► route bucket of that listener: exact effective hostname > longest wildcard
//!            suffix (`*.example.com` never matches `example.com`) > hostname-less
//!         ─► ties (two routes with one hostname): older, then `namespace/name` — the
//!            controller already leaves only the oldest per hostname (TLSRoute conflicts)
//! ```
//!
//! Pure: no I/O, so every rule is a table test (`tests/sni.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::router::{Decision, ListenerInfo, Request, RouteMatch, Router};
use crate::snapshot::Protocol;

/// Why a server name cannot be routed on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The ClientHello carried no server name (or an empty one).
    #[error("no server name")]
    Missing,
    /// The name is an IP address (RFC 6066: SNI carries DNS names only).
    #[error("server name {0:?} is an IP address")]
    IpAddress(String),
    /// Not a DNS name: empty label, bad character, label or name too long, wildcard.
    #[error("server name {0:?} is not a DNS name")]
    NotDnsName(String),
}

/// The name as routing compares it: ASCII lower case, without one trailing dot. Refuses what
/// no TLSRoute hostname can match anyway, so a hostile name never reaches the router.
pub fn normalize_sni(raw: &str) -> Result<String, SniError> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err(SniError::Missing);
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(SniError::IpAddress(raw.to_string()));
    }
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(SniError::NotDnsName(raw.to_string()));
    }
    Ok(name.to_ascii_lowercase())
}

/// Where a passthrough connection goes.
#[derive(Debug, Clone)]
pub enum SniDecision {
    /// The TLSRoute rule whose backends serve the connection.
    Matched(RouteMatch),
    /// The socket has passthrough listeners but none of their routes takes this name.
    NoRoute,
    /// The socket has no passthrough listener (not in the snapshot, or HTTP/HTTPS).
    NotPassthrough,
}

/// The TLSRoute rule for a connection on `local` with server name `sni` (already normalised by
/// [`normalize_sni`]).
pub fn route(router: &Router, local: SocketAddr, sni: &str) -> SniDecision {
    let no_headers: &[(&str, &str)] = &[];
    let req = Request {
        local,
        sni: None,
        host: Some(sni),
        method: "GET",
        path: "/",
        query: None,
        headers: &no_headers,
    };
    let passthrough = |l: &Arc<ListenerInfo>| l.protocol == Protocol::Tls;
    match router.route(&req) {
        Decision::Matched(m) if passthrough(&m.listener) => SniDecision::Matched(m),
        Decision::NotFound { listener } | Decision::Misdirected { listener }
            if passthrough(&listener) =>
        {
            SniDecision::NoRoute
        }
        _ if router
            .sockets()
            .any(|(a, p)| a == local && p == Protocol::Tls) =>
        {
            SniDecision::NoRoute
        }
        _ => SniDecision::NotPassthrough,
    }
}
