//! Forwarding headers on requests of the Gateway listeners, as Envoy does with
//! `use_remote_address: true` and `xff_num_trusted_hops: N` (`--xff-trusted-hops N`, default 0):
//!
//! - `X-Forwarded-For`: the connection's peer address is always appended to what the client sent
//!   (all `X-Forwarded-For` lines joined into one, then `, <peer>`). Nothing is removed: a
//!   backend that wants the client address reads the entry the proxy vouches for, not the
//!   leftmost one.
//! - The client address: with N = 0 the peer address; with N > 0 the Nth entry from the right of
//!   the `X-Forwarded-For` received (the entry the last trusted proxy appended). With fewer
//!   than N entries every entry came through trusted proxies, so the leftmost one; an entry that
//!   is not an IP address falls back to the peer. It is kept for the request's log line.
//! - `X-Forwarded-Proto`: `http` or `https` by the listener's protocol. With N = 0 it is always
//!   replaced (a client cannot claim `https` over plain HTTP); with N > 0 a value received is
//!   kept (the trusted proxy in front terminated the client's connection).
//! - `Forwarded` (RFC 7239) is left as it is: the proxy neither reads nor writes it, so a backend
//!   must not trust it from the edge.
//!
//! The east-west listener receives requests from other proxies of the mesh (mutual TLS) and
//! leaves these headers as the sending proxy set them.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use crate::headers::push_ip;

/// The names as constants: looked up without parsing text on every request.
const XFF: HeaderName = HeaderName::from_static(XFF_TEXT);
const XFP: HeaderName = HeaderName::from_static(XFP_TEXT);
const XFF_TEXT: &str = "x-forwarded-for";
const XFP_TEXT: &str = "x-forwarded-proto";
/// Room for the peer address in a new list (the longest IPv6 text is 45 bytes).
const PEER_LEN: usize = 45;

/// Applies the forwarding headers (module docs); returns the client address.
pub(super) fn apply(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    https: bool,
    trusted_hops: u32,
) -> Option<IpAddr> {
    // Entries borrowed from the head: one String (the new list) per request, none per entry.
    let mut list = String::new();
    let client = {
        let received: Vec<&str> = req
            .headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if peer.is_some() {
            let len: usize = received.iter().map(|e| e.len() + 2).sum();
            list.reserve(len + PEER_LEN);
            for e in &received {
                list.push_str(e);
                list.push_str(", ");
            }
        }
        client_address(&received, peer, trusted_hops)
    };
    if let Some(peer) = peer {
        push_ip(&mut list, peer);
        // `HeaderValue` takes the String's buffer as it is (no copy).
        match HeaderValue::try_from(list) {
            Ok(v) => set(req, XFF_TEXT, v),
            // The received entries came from header values, so this cannot happen; keep going
            // with the peer alone rather than forward an unchecked list.
            Err(_) => set(req, XFF_TEXT, HeaderValue::try_from(peer.to_string()).ok()),
        }
    }
    if trusted_hops == 0 || !req.headers.contains_key(&XFP) {
        let proto = if https { "https" } else { "http" };
        set(req, XFP_TEXT, Some(HeaderValue::from_static(proto)));
    }
    client
}

fn set(req: &mut RequestHeader, name: &'static str, value: impl Into<Option<HeaderValue>>) {
    let Some(value) = value.into() else { return };
    if let Err(e) = req.insert_header(name, value) {
        tracing::debug!(error = %e, name, "forwarding header not set");
    }
}

/// The client address of the module docs.
fn client_address(received: &[&str], peer: Option<IpAddr>, trusted_hops: u32) -> Option<IpAddr> {
    let n = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    if n == 0 || received.is_empty() {
        return peer;
    }
    let entry = match received.len().checked_sub(n) {
        Some(i) => &received[i],
        None => &received[0],
    };
    parse_entry(entry).or(peer)
}

/// An `X-Forwarded-For` entry: an IP address, optionally `[v6]` or `v4:port`.
fn parse_entry(e: &str) -> Option<IpAddr> {
    if let Ok(ip) = e.parse() {
        return Some(ip);
    }
    if let Some(inner) = e.strip_prefix('[').and_then(|r| r.split(']').next()) {
        return inner.parse().ok();
    }
    e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, n: &str) -> Vec<&'a str> {
        r.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    const PEER: &str = "192.0.2.7";

    #[test]
    fn no_trusted_hops_appends_the_peer_and_trusts_only_it() {
        let peer = Some(PEER.parse().unwrap());
        let mut r = req(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("X-Forwarded-For", "3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=9.9.9.9"),
        ]);
        let client = apply(&mut r, peer, false, 0);
        assert_eq!(client, peer);
        assert_eq!(
            get(&r, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7"]
        );
        assert_eq!(get(&r, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&r, "forwarded"), ["for=9.9.9.9"]);

        let mut r = req(&[]);
        assert_eq!(apply(&mut r, peer, true, 0), peer);
        assert_eq!(get(&r, "x-forwarded-for"), [PEER]);
        assert_eq!(get(&r, "x-forwarded-proto"), ["https"]);
    }

    #[test]
    fn trusted_hops_pick_the_entry_the_last_trusted_proxy_appended() {
        let peer = Some(PEER.parse().unwrap());
        let xff = [("x-forwarded-for", "6.6.6.6, 1.1.1.1, 10.0.0.2")];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(apply(&mut req(&xff), peer, false, 1), ip("10.0.0.2"));
        assert_eq!(apply(&mut req(&xff), peer, false, 2), ip("1.1.1.1"));
        assert_eq!(apply(&mut req(&xff), peer, false, 3), ip("6.6.6.6"));
        assert_eq!(apply(&mut req(&xff), peer, false, 9), ip("6.6.6.6"));
        // Nothing received: the peer.
        assert_eq!(apply(&mut req(&[]), peer, false, 1), peer);
        // Not an address: the peer.
        let junk = [("x-forwarded-for", "unknown")];
        assert_eq!(apply(&mut req(&junk), peer, false, 1), peer);
        let v6 = [("x-forwarded-for", "[2001:db8::1]:443")];
        assert_eq!(apply(&mut req(&v6), peer, false, 1), ip("2001:db8::1"));
        // A trusted proxy's X-Forwarded-Proto is kept; set when missing.
        let mut r = req(&[("x-forwarded-proto", "https")]);
        apply(&mut r, peer, false, 1);
        assert_eq!(get(&r, "x-forwarded-proto"), ["https"]);
        let mut r = req(&[]);
        apply(&mut r, peer, false, 1);
        assert_eq!(get(&r, "x-forwarded-proto"), ["http"]);
    }
}
