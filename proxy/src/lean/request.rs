//! The request head a try sends upstream, built from the client's head the way the framework path
//! (pingora-proxy 0.9) builds it, so a backend cannot tell the two paths apart:
//!
//! ```text
//! client head ─ clone ─ HTTP/1.1 ─ hop-by-hop headers out (RFC 9110 §7.6.1: Connection, the
//!   headers it nominates, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*,
//!   HTTP2-Settings); a WebSocket upgrade gets `Connection: Upgrade` + `Upgrade: websocket` back
//!   ─ Forwarder::upstream_request_filter (Via, x-meridian-backend)
//!   ─ authority: a target with one (absolute form) follows a Host a filter set, and Host follows
//!     the target ─ a body without framing headers goes chunked
//! HTTP/1 upstream: as is          h2c upstream: :authority from Host, Host removed
//! ```
//!
//! Only WebSocket upgrades are forwarded, as on the framework path (pingora's default
//! `H1UpgradePolicy::WebSocketOnly`): another `Upgrade` token reaches the backend as a plain
//! request, which answers it without switching.

use http::header::{self, HeaderName};
use http::{HeaderValue, Version};
use pingora_core::protocols::http::authority::{
    RawTargetAuthority, raw_target_authority, validate_request_authority,
};
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::RequestHeader;

use crate::gateway::{Ctx, Downstream, Forwarder};

/// Hop-by-hop headers no upstream request carries.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

fn invalid(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, why)
}

/// The head of a try at an HTTP/1 upstream. Errors are classified as the framework path
/// classifies them: a client head that cannot be forwarded is the client's (downstream), one a
/// filter broke is ours (internal).
pub(super) fn for_h1(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    ctx: &Ctx,
) -> Result<RequestHeader> {
    let mut req = session.req_header().clone();
    let had_host = req.headers.contains_key(header::HOST);
    let http11 = req.version == Version::HTTP_11;
    req.set_version(Version::HTTP_11);
    strip_hop_by_hop(&mut req, http11).map_err(|e| e.into_down())?;
    fwd.upstream_request_filter(&mut req, ctx)?;
    follow_host(&mut req).map_err(|e| e.into_in())?;
    // A Host-less HTTP/1.0 request in origin form stays without one.
    let target_authority = raw_target_authority(req.raw_path()).authority().is_some();
    if had_host || req.uri.authority().is_some() || target_authority {
        host_from_target(&mut req).map_err(|e| e.into_in())?;
    }
    validate_request_authority(&req).map_err(|e| e.into_in())?;
    if !session.is_body_empty()
        && !req.headers.contains_key(header::CONTENT_LENGTH)
        && !req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(req)
}

/// The head of a try at an h2c upstream: the HTTP/1 head's fields without the hop-by-hop ones,
/// `:scheme http`, `:authority` from Host (which HTTP/2 does not carry).
pub(super) fn for_h2(
    fwd: &Forwarder,
    session: &impl Downstream,
    ctx: &Ctx,
) -> Result<Box<RequestHeader>> {
    let mut req = Box::new(session.req_header().clone());
    if !req.raw_path_is_utf8() {
        return Err(invalid("a non-UTF-8 target cannot be forwarded over HTTP/2").into_down());
    }
    strip_hop_by_hop(&mut req, false).map_err(|e| e.into_down())?;
    req.set_version(Version::HTTP_2);
    fwd.upstream_request_filter(&mut req, ctx)?;
    follow_host(&mut req).map_err(|e| e.into_in())?;
    validate_request_authority(&req).map_err(|e| e.into_in())?;
    let target_authority = raw_target_authority(req.raw_path())
        .authority()
        .map(<[u8]>::to_vec);
    let path_and_query = h2_path(&req).map_err(|e| e.into_in())?;
    let host = req.remove_header(&header::HOST);
    let authority = host
        .as_ref()
        .map(HeaderValue::as_bytes)
        .or(target_authority.as_deref())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .ok_or_else(|| invalid("no authority for an HTTP/2 upstream request").into_in())?;
    let authority = http::uri::Authority::try_from(authority)
        .or_err(ErrorType::InvalidHTTPHeader, "Host is not an authority")
        .map_err(|e| e.into_in())?;
    if authority.as_str().contains('@') {
        return Err(invalid("userinfo in Host").into_in());
    }
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .or_err(ErrorType::InvalidHTTPHeader, "no HTTP/2 target from Host")
        .map_err(|e| e.into_in())?;
    req.set_uri(uri);
    Ok(req)
}

/// Removes the headers `Connection` nominates and the standard hop-by-hop ones; a WebSocket
/// upgrade from an HTTP/1.1 client keeps exactly `Connection: Upgrade` and `Upgrade: websocket`.
/// The nominations were checked by the role already (framing.rs: tokens, at most nine, no
/// protected names); checked again here so this cannot forward a forbidden one.
fn strip_hop_by_hop(req: &mut RequestHeader, http11: bool) -> Result<()> {
    let websocket = http11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if req.headers.contains_key(header::CONNECTION) {
        let mut nominated: Vec<HeaderName> = Vec::new();
        for token in req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
        {
            if nominated.len() >= crate::gateway::MAX_NOMINATIONS {
                return Err(invalid("too many Connection options"));
            }
            let name = HeaderName::from_bytes(token).or_err(
                ErrorType::InvalidHTTPHeader,
                "Connection option is not a token",
            )?;
            if matches!(
                name.as_str(),
                "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            ) {
                return Err(invalid("Connection nominates a protected header"));
            }
            nominated.push(name);
        }
        for name in &nominated {
            req.remove_header(name);
        }
    }
    // Most heads carry none of them: one pass over the few names present instead of a lookup
    // per hop-by-hop name.
    if req.headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
        for name in HOP_BY_HOP {
            req.remove_header(*name);
        }
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    Ok(())
}

/// A target with an authority (absolute form) takes the Host a filter may have set, so target and
/// Host never disagree upstream. Origin-form targets (the usual case) are left alone.
fn follow_host(req: &mut RequestHeader) -> Result<()> {
    let Some(host) = req.headers.get(header::HOST).cloned() else {
        return Ok(());
    };
    if host.as_bytes().contains(&b'@') {
        return Err(invalid("userinfo in Host"));
    }
    if let Some(current) = req.uri.authority() {
        if current.as_str().as_bytes() == host.as_bytes() {
            return Ok(());
        }
        if !req.raw_path_is_utf8() {
            return Err(invalid(
                "a non-UTF-8 target cannot take the Host's authority",
            ));
        }
        let authority = http::uri::Authority::try_from(host.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "Host is not an authority")?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = Some(authority);
        parts.path_and_query = req.uri.path_and_query().cloned();
        let uri = http::Uri::from_parts(parts).or_err(
            ErrorType::InvalidHTTPHeader,
            "target with the Host's authority",
        )?;
        req.set_uri(uri);
        return Ok(());
    }
    if let RawTargetAuthority::Absolute {
        scheme,
        authority,
        path_and_query,
    } = raw_target_authority(req.raw_path())
    {
        if authority == host.as_bytes() {
            return Ok(());
        }
        http::uri::Authority::try_from(host.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "Host is not an authority")?;
        let target = [scheme, b"://", host.as_bytes(), path_and_query].concat();
        req.set_raw_path(&target)?;
    }
    Ok(())
}

/// Host follows the target's authority when it has one; an HTTP/1.1 head always has a Host.
fn host_from_target(req: &mut RequestHeader) -> Result<()> {
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| {
            raw_target_authority(req.raw_path())
                .authority()
                .map(<[u8]>::to_vec)
        });
    let Some(authority) = authority else {
        if !req.headers.contains_key(header::HOST) {
            req.insert_header(header::HOST, "")?;
        }
        return Ok(());
    };
    if authority.contains(&b'@') {
        return Err(invalid("userinfo in the request target"));
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    if hosts.next().is_some_and(|h| h.as_bytes() == authority) && hosts.next().is_none() {
        return Ok(());
    }
    let host = HeaderValue::from_bytes(&authority).or_err(
        ErrorType::InvalidHTTPHeader,
        "target authority is not a Host value",
    )?;
    req.insert_header(header::HOST, host)
}

/// The `:path` of an HTTP/2 request: origin form as is, an absolute-form target's path and query
/// (`/` when empty).
fn h2_path(req: &RequestHeader) -> Result<http::uri::PathAndQuery> {
    let target = req.raw_path();
    let parsed = req
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if target.starts_with(b"/") || target == b"*" {
        return Ok(parsed);
    }
    match raw_target_authority(target) {
        RawTargetAuthority::None => Ok(parsed),
        RawTargetAuthority::AmbiguousAuthority => Err(invalid("ambiguous absolute-form target")),
        RawTargetAuthority::Absolute { path_and_query, .. } => {
            if path_and_query.is_empty() {
                return Ok(http::uri::PathAndQuery::from_static("/"));
            }
            let mut origin = Vec::with_capacity(path_and_query.len() + 1);
            if path_and_query.first() == Some(&b'?') {
                origin.push(b'/');
            }
            origin.extend_from_slice(path_and_query);
            http::uri::PathAndQuery::try_from(origin)
                .or_err(ErrorType::InvalidHTTPHeader, "absolute-form target path")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_headers_go_and_a_websocket_upgrade_stays() {
        let mut r = req(
            "/",
            &[
                ("connection", "keep-alive, x-gw"),
                ("x-gw", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("x-kept", "1"),
            ],
        );
        strip_hop_by_hop(&mut r, true).unwrap();
        for gone in ["connection", "x-gw", "keep-alive", "te"] {
            assert!(r.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(r.headers.get("x-kept").unwrap(), "1");

        let mut r = req(
            "/",
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
        );
        strip_hop_by_hop(&mut r, true).unwrap();
        assert_eq!(r.headers.get("connection").unwrap(), "Upgrade");
        assert_eq!(r.headers.get("upgrade").unwrap(), "websocket");

        // Another protocol, or HTTP/1.0: a plain request upstream.
        for (upgrade, http11) in [("h2c", true), ("websocket", false)] {
            let mut r = req("/", &[("connection", "Upgrade"), ("upgrade", upgrade)]);
            strip_hop_by_hop(&mut r, http11).unwrap();
            assert!(r.headers.get("upgrade").is_none(), "{upgrade}");
            assert!(r.headers.get("connection").is_none(), "{upgrade}");
        }

        let mut r = req("/", &[("connection", "host")]);
        assert!(strip_hop_by_hop(&mut r, true).is_err());
    }

    #[test]
    fn an_absolute_target_and_host_agree_upstream() {
        // A filter changed Host: the absolute-form target follows it.
        let mut r = req("http://a.example/p?q", &[("host", "b.example")]);
        follow_host(&mut r).unwrap();
        host_from_target(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"http://b.example/p?q");
        assert_eq!(r.headers.get("host").unwrap(), "b.example");

        // Origin form: Host is what it is, and an HTTP/1.1 head gets one.
        let mut r = req("/p", &[]);
        follow_host(&mut r).unwrap();
        host_from_target(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"/p");
        assert_eq!(r.headers.get("host").unwrap(), "");

        let mut r = req("/p", &[("host", "u@b")]);
        assert!(follow_host(&mut r).is_err());
    }

    #[test]
    fn an_h2_path_comes_from_the_target() {
        assert_eq!(h2_path(&req("/a?b", &[])).unwrap().as_str(), "/a?b");
        assert_eq!(h2_path(&req("http://h", &[])).unwrap().as_str(), "/");
        assert_eq!(
            h2_path(&req("http://h?x=1", &[])).unwrap().as_str(),
            "/?x=1"
        );
        assert_eq!(h2_path(&req("http://h/p", &[])).unwrap().as_str(), "/p");
    }
}
