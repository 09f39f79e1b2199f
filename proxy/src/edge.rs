//! Edge policy of the proxy: the forwarding-header settings (`--xff-trusted-hops`) and the loop
//! guard. The request-side work is in gateway/forwarded.rs; this module holds the settings and
//! the checks that need the proxy's own identity and sockets.
//!
//! Loop guard, two layers:
//! - an endpoint equal to one of the proxy's own listener sockets (a Gateway listener or the
//!   east-west listener; on a listener bound to `0.0.0.0`/`::`, any loopback or unspecified
//!   address with its port), an unspecified address (`0.0.0.0` connects to the local host) or a
//!   multicast address is never tried ([`Edge::refused_endpoint`]); the backend answers 503 when
//!   nothing else is left. Loopback and link-local endpoints in general are the controller's
//!   policy (`meridian controller --allow-loopback-endpoints`): a static snapshot or `meridian up`
//!   legitimately points at loopback backends.
//! - every request forwarded carries `via: 1.1 meridian-<id>` (`<id>`: random per proxy
//!   process); a request that arrives with this proxy's own entry already in `Via` went round a
//!   loop the first layer could not see (another address of this host, a NAT, a chain through
//!   other proxies) and is answered 508 Loop Detected.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use http::header::VIA;
use meridian_model::snapshot::Protocol;
use pingora_http::RequestHeader;

use crate::headers::UpstreamFields;

/// Edge settings given to [`crate::ProxyHandle::start`].
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// How many proxies in front of this one are trusted to have appended to
    /// `X-Forwarded-For` (Envoy's `xff_num_trusted_hops`). 0: the client is the peer address.
    pub xff_trusted_hops: u32,
    /// How the HTTP/1 codec spells header names it forwards (lean/codec: `--http1-path own`,
    /// and backends' responses on the lean paths; pingora-proxy's framework path keeps them).
    pub header_case: crate::HeaderCase,
}

/// `meridian proxy` flags of the edge policy.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EdgeArgs {
    /// Proxies in front of this one trusted to append to X-Forwarded-For: the client address is
    /// the Nth entry from the right of the X-Forwarded-For received (0: the connection's peer).
    /// The peer address is always appended, and with 0 X-Forwarded-Proto is always replaced.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub xff_trusted_hops: u32,
    /// How forwarded header names are spelled on HTTP/1: `normalize` (the default: common fields
    /// such as Host and Content-Type capitalised as usual, every other name in lower case, as
    /// Envoy and haproxy write them; HTTP/2 and 3 only have lower case) or `preserve` (as the
    /// client or backend sent them, for peers that wrongly compare names case-sensitively).
    /// Preserving costs about a tenth of the proxy's user-space work per request.
    #[arg(long, value_enum, default_value_t = crate::HeaderCase::Normalize, value_name = "normalize|preserve")]
    pub header_case: crate::HeaderCase,
}

impl EdgeArgs {
    /// The settings these flags ask for.
    pub fn config(&self) -> EdgeConfig {
        EdgeConfig {
            xff_trusted_hops: self.xff_trusted_hops,
            header_case: self.header_case,
        }
    }
}

/// Why an endpoint is never tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// One of this proxy's own listener sockets.
    OwnListener,
    /// `0.0.0.0` / `::`.
    Unspecified,
    /// A multicast address.
    Multicast,
}

/// The edge policy of one running proxy.
pub(crate) struct Edge {
    pub xff_trusted_hops: u32,
    /// `--header-case`, read by the lean path's codec.
    pub header_case: crate::HeaderCase,
    /// This proxy's `Via` entry, `1.1 meridian-<id>`.
    pub via: String,
    /// `via` as a header value, made once (a request without `Via` gets a clone of it).
    via_value: HeaderValue,
    /// The east-west listener's socket, when there is one.
    pub east_west: Option<SocketAddr>,
}

impl Edge {
    pub fn new(cfg: &EdgeConfig, east_west: Option<SocketAddr>) -> Edge {
        let via = format!("1.1 meridian-{:08x}", rand::random::<u32>());
        Edge {
            xff_trusted_hops: cfg.xff_trusted_hops,
            header_case: cfg.header_case,
            // Its clones share one buffer (a reference count, no copy).
            via_value: HeaderValue::from_maybe_shared(bytes::Bytes::from(via.clone()))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 meridian")),
            via,
            east_west,
        }
    }

    /// Whether `req` already passed through this proxy (its `Via` holds our entry).
    pub fn looped(&self, req: &RequestHeader) -> bool {
        req.headers
            .get_all(VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|entry| entry.trim().eq_ignore_ascii_case(&self.via))
    }

    /// Appends this proxy's `Via` entry to the request going upstream.
    pub fn add_via(&self, req: &mut impl UpstreamFields) {
        let value = {
            let mut old = req.values(&VIA).filter_map(|v| v.to_str().ok()).peekable();
            if old.peek().is_none() {
                // The usual case: a clone of the kept value shares its bytes (no allocation).
                self.via_value.clone()
            } else {
                let mut list = String::new();
                for v in old {
                    list.push_str(v);
                    list.push_str(", ");
                }
                list.push_str(&self.via);
                match HeaderValue::try_from(list) {
                    Ok(v) => v,
                    // The old entries came from header values and ours is ASCII.
                    Err(_) => self.via_value.clone(),
                }
            }
        };
        // Spelled `Via` where names keep their spelling (pingora has no title-case form of
        // `VIA`).
        if let Err(e) = req.set(&VIA, Some("Via"), value) {
            tracing::debug!(error = %e, "via header not set");
        }
    }

    /// Why `addr` may never be tried, given the Gateway listener sockets served.
    pub fn refused_endpoint(
        &self,
        addr: SocketAddr,
        listeners: Option<&HashMap<SocketAddr, Protocol>>,
    ) -> Option<Refused> {
        let ip = addr.ip();
        if ip.is_unspecified() {
            return Some(Refused::Unspecified);
        }
        if ip.is_multicast() {
            return Some(Refused::Multicast);
        }
        let own = listeners
            .into_iter()
            .flat_map(|l| l.keys())
            .chain(self.east_west.as_ref());
        for l in own {
            if l.port() == addr.port() && (l.ip() == ip || (l.ip().is_unspecified() && local(ip))) {
                return Some(Refused::OwnListener);
            }
        }
        None
    }
}

/// An address that always reaches this host.
fn local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn edge() -> Edge {
        Edge::new(
            &EdgeConfig::default(),
            Some("10.0.0.1:15443".parse().unwrap()),
        )
    }

    #[test]
    fn own_listeners_unspecified_and_multicast_are_refused() {
        let e = edge();
        let listeners: HashMap<SocketAddr, Protocol> = [
            ("127.0.0.1:8080".parse().unwrap(), Protocol::Http),
            ("0.0.0.0:9090".parse().unwrap(), Protocol::Http),
        ]
        .into();
        let l = Some(&listeners);
        let r = |a: &str| e.refused_endpoint(a.parse().unwrap(), l);
        assert_eq!(r("127.0.0.1:8080"), Some(Refused::OwnListener));
        assert_eq!(r("127.0.0.1:9090"), Some(Refused::OwnListener));
        assert_eq!(r("127.0.0.2:9090"), Some(Refused::OwnListener));
        assert_eq!(r("10.0.0.1:15443"), Some(Refused::OwnListener));
        assert_eq!(r("0.0.0.0:80"), Some(Refused::Unspecified));
        assert_eq!(r("[::]:80"), Some(Refused::Unspecified));
        assert_eq!(r("224.0.0.1:80"), Some(Refused::Multicast));
        assert_eq!(r("127.0.0.1:8081"), None);
        assert_eq!(r("10.0.0.2:9090"), None);
        assert_eq!(r("10.0.0.1:8080"), None);
    }

    #[test]
    fn via_is_appended_and_recognised() {
        let e = edge();
        let other = edge();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("via", "1.0 corp-lb").unwrap();
        assert!(!e.looped(&req));
        other.add_via(&mut req);
        assert!(!e.looped(&req), "another proxy's entry is not ours");
        e.add_via(&mut req);
        let via = req.headers.get(VIA).unwrap().to_str().unwrap().to_string();
        assert_eq!(via, format!("1.0 corp-lb, {}, {}", other.via, e.via));
        assert!(e.looped(&req));
    }
}
