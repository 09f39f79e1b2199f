//! Message framing at the edge: what the proxy refuses on top of pingora's own checks, and the
//! `Connection`-nominated header removal that must happen before the route's filters run.
//!
//! What pingora 0.9.1 refuses by itself while reading the request head (answered 400, connection
//! closed; proved by `proxy/tests/framing.rs`): a `Content-Length` with a sign, a non-digit or two
//! different values; `Transfer-Encoding` whose last coding is not `chunked`; `Transfer-Encoding`
//! on HTTP/1.0; and, while reading the body, a chunk size that is not hexadecimal. When
//! `Transfer-Encoding` and `Content-Length` arrive together pingora drops `Content-Length`, frames
//! by the chunked coding and closes the connection after the response (RFC 9112 §6.1), so no
//! request can be smuggled behind it.
//!
//! What [`check`] adds (400, connection closed):
//! - a `Content-Length` list, even of equal values (`5, 5`, or two `Content-Length: 5` lines).
//!   RFC 9112 §6.3 lets a recipient either refuse it or collapse it to one value; pingora frames
//!   the body by the collapsed value but forwards the list as is, and the next hop may read it
//!   differently. Refusing is the simplest behaviour that cannot disagree with any backend, and no
//!   correct client sends a list.
//! - a `Connection` header nominating a header the proxy itself sets or routes on (`host`,
//!   `x-forwarded-*`), a pseudo-header, a name that is not an HTTP token, or more than
//!   [`MAX_NOMINATIONS`] names (pingora would fail the same request later, when it is already
//!   routed, with a less clear 5xx).
//!
//! [`strip_nominated`]: `Connection: x-gw` makes `x-gw` hop-by-hop. Pingora removes nominated
//! headers just before the upstream request filter, so after the route's filters: a client could
//! strip a header a `RequestHeaderModifier` sets. The Gateway proxy therefore removes the
//! nominated headers itself before routing, and takes their names out of `Connection`; the
//! standard hop-by-hop names (`close`, `keep-alive`, `upgrade`, …) stay for pingora, which handles
//! them (and filters may not touch those: `meridian_model::headers::FILTER_RESERVED`).

use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use crate::headers::Refusal;

/// Most names a `Connection` header may nominate (pingora refuses ten or more).
pub(crate) const MAX_NOMINATIONS: usize = 9;

/// Connection options pingora itself removes or handles; they stay in `Connection`.
const STANDARD: &[&str] = &[
    "close",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "transfer-encoding",
    "connection",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Headers a client may not declare hop-by-hop: the proxy routes on or sets them.
const PROTECTED: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn bad(reason: &'static str) -> Refusal {
    Refusal {
        status: 400,
        reason,
    }
}

/// The framing and `Connection` checks of the module docs.
pub(crate) fn check(req: &RequestHeader) -> Result<(), Refusal> {
    let mut cl = req.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = cl.next()
        && (cl.next().is_some() || first.as_bytes().contains(&b','))
    {
        return Err(bad("Content-Length list"));
    }
    let mut count = 0;
    for token in nominations(req) {
        count += 1;
        if count > MAX_NOMINATIONS {
            return Err(bad("too many Connection options"));
        }
        if token.is_empty() || !token.iter().all(|&b| is_tchar(b)) {
            return Err(bad("Connection option is not a token"));
        }
        if PROTECTED
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(token))
        {
            return Err(bad("Connection nominates a protected header"));
        }
    }
    Ok(())
}

/// Removes every header the `Connection` header nominates (but the standard hop-by-hop ones,
/// left to pingora) and takes those names out of `Connection`. Run after [`check`].
pub(crate) fn strip_nominated(req: &mut RequestHeader) {
    let mut keep: Vec<String> = Vec::new();
    let mut remove: Vec<HeaderName> = Vec::new();
    for token in nominations(req) {
        let Ok(name) = HeaderName::from_bytes(token) else {
            continue;
        };
        if STANDARD.contains(&name.as_str()) {
            keep.push(name.as_str().to_string());
        } else {
            remove.push(name);
        }
    }
    if remove.is_empty() {
        return;
    }
    for name in &remove {
        req.remove_header(name);
    }
    req.remove_header(&CONNECTION);
    if !keep.is_empty() {
        // Lower-case tokens joined by ", " are a valid header value.
        if let Ok(v) = HeaderValue::from_str(&keep.join(", "))
            && let Err(e) = req.insert_header(CONNECTION, v)
        {
            tracing::debug!(error = %e, "Connection header not rewritten");
        }
    }
}

/// The options of every `Connection` header, trimmed, empty ones skipped.
fn nominations(req: &RequestHeader) -> impl Iterator<Item = &[u8]> {
    req.headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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

    #[test]
    fn content_length_lists_are_refused() {
        assert!(check(&req(&[("Content-Length", "5")])).is_ok());
        for bad in [
            vec![("Content-Length", "5, 5")],
            vec![("Content-Length", "5,5")],
            vec![("Content-Length", "5"), ("Content-Length", "5")],
        ] {
            assert_eq!(check(&req(&bad)).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn protected_or_malformed_nominations_are_refused() {
        assert!(check(&req(&[("Connection", "keep-alive, x-gw")])).is_ok());
        for v in [
            "X-Forwarded-For",
            "host",
            ":authority",
            "\"x-gw\"",
            "a,b,c,d,e,f,g,h,i,j",
        ] {
            assert!(check(&req(&[("Connection", v)])).is_err(), "{v}");
        }
    }

    #[test]
    fn nominated_headers_go_and_standard_options_stay() {
        let mut r = req(&[
            ("Connection", "keep-alive, X-Gw"),
            ("Connection", "x-other"),
            ("x-gw", "client"),
            ("x-other", "1"),
            ("x-kept", "1"),
        ]);
        strip_nominated(&mut r);
        assert!(r.headers.get("x-gw").is_none());
        assert!(r.headers.get("x-other").is_none());
        assert_eq!(r.headers.get("x-kept").unwrap(), "1");
        let conn: Vec<_> = r.headers.get_all(CONNECTION).iter().collect();
        assert_eq!(conn, ["keep-alive"]);

        let mut r = req(&[("Connection", "x-gw"), ("x-gw", "client")]);
        strip_nominated(&mut r);
        assert!(r.headers.get(CONNECTION).is_none());
        assert!(r.headers.get("x-gw").is_none());

        // Nothing custom nominated: the request is left alone.
        let mut r = req(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
        strip_nominated(&mut r);
        assert_eq!(r.headers.get(CONNECTION).unwrap(), "Upgrade");
        assert_eq!(r.headers.get("upgrade").unwrap(), "websocket");
    }
}
