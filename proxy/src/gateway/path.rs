//! Request path normalisation on the Gateway listeners, before routing: the request head's path
//! is replaced by its normal form ([`meridian_model::path`]), so the router, the rule and backend
//! filters (URL rewrite, redirect, mirror) and the backend all see one path, and a spelling such
//! as `/public/%2e%2e/admin` cannot match a rule on `/public` and then be read as `/admin` by a
//! backend.
//!
//! ```text
//! request_filter ─ hygiene ─ normalize_request ─ route …
//!                             path already normal        → head untouched
//!                             path changed               → head's path replaced, query kept
//!                               origin-form / HTTP/2        URI rebuilt (scheme, authority kept)
//!                               absolute-form (HTTP/1)      target kept absolute, path replaced
//!                             bad escape, %2F with reject,
//!                             not "/…", "*" but for OPTIONS,
//!                             target not UTF-8              → 400 (plain text), no backend
//! ```

use std::borrow::Cow;

use meridian_model::path::{PathError, PathNormalization, normalize_path};
use pingora_http::RequestHeader;

/// Why a request's path is refused (answered 400).
#[derive(Debug, thiserror::Error)]
pub(super) enum PathRefusal {
    #[error("bad request path: {0}")]
    Path(#[from] PathError),
    /// `*` is the target of `OPTIONS *` only (RFC 9112 §3.2.4).
    #[error("bad request path: \"*\" is only valid with OPTIONS")]
    Asterisk,
    /// A raw byte sequence that is not UTF-8 has no reliable meaning to match on.
    #[error("bad request path: the request target is not UTF-8")]
    NotUtf8,
    /// The normalised target does not fit pingora's request head (not expected: the normal
    /// form is plain ASCII path characters).
    #[error("bad request path: {0}")]
    Rebuild(String),
}

/// Replaces the request's path by its normal form; leaves the head as it is when the path is
/// already normal.
pub(super) fn normalize_request(
    req: &mut RequestHeader,
    cfg: &PathNormalization,
) -> Result<(), PathRefusal> {
    if !req.raw_path_is_utf8() {
        return Err(PathRefusal::NotUtf8);
    }
    let path = req.uri.path();
    if path == "*" {
        return if req.method == http::Method::OPTIONS {
            Ok(())
        } else {
            Err(PathRefusal::Asterisk)
        };
    }
    let normal = match normalize_path(path, cfg)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(p) => p,
    };
    let new_pq = match req.uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let old_pq = req
        .uri
        .path_and_query()
        .map_or("", |pq| pq.as_str())
        .to_string();
    let raw = req.raw_path();
    // An HTTP/1 absolute-form target (`GET http://host/p`): pingora keeps the whole target for
    // the wire and only its path in the URI. Keep the target absolute with the new path, so the
    // authority pingora reconciles against Host stays what the client sent.
    if raw != old_pq.as_bytes() && !old_pq.is_empty() && raw.ends_with(old_pq.as_bytes()) {
        let mut target = raw[..raw.len() - old_pq.len()].to_vec();
        target.extend_from_slice(new_pq.as_bytes());
        return req
            .set_raw_path(&target)
            .map_err(|e| PathRefusal::Rebuild(e.to_string()));
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = req.uri.scheme().cloned();
    parts.authority = req.uri.authority().cloned();
    parts.path_and_query = Some(
        new_pq
            .parse::<http::uri::PathAndQuery>()
            .map_err(|e| PathRefusal::Rebuild(e.to_string()))?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|e| PathRefusal::Rebuild(e.to_string()))?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use meridian_model::path::EscapedSlashes;

    use super::*;

    fn head(method: &str, target: &[u8]) -> RequestHeader {
        RequestHeader::build(method, target, None).unwrap()
    }

    #[test]
    fn origin_form_path_replaced_query_kept() {
        let mut req = head("GET", b"/public/%2e%2e/admin?x=%2e%2e&y=//");
        normalize_request(&mut req, &PathNormalization::default()).unwrap();
        assert_eq!(req.uri.path(), "/admin");
        assert_eq!(req.raw_path(), b"/admin?x=%2e%2e&y=//");
    }

    #[test]
    fn absolute_form_stays_absolute() {
        let mut req = head("GET", b"http://example.com:8080//public/../admin?q=1");
        normalize_request(&mut req, &PathNormalization::default()).unwrap();
        assert_eq!(req.uri.path(), "/admin");
        assert_eq!(req.raw_path(), b"http://example.com:8080/admin?q=1");
    }

    #[test]
    fn http2_uri_keeps_scheme_and_authority() {
        let mut req = head("GET", b"/");
        req.set_uri("https://example.com/a/./b//c?q".parse().unwrap());
        normalize_request(&mut req, &PathNormalization::default()).unwrap();
        assert_eq!(req.uri.to_string(), "https://example.com/a/b/c?q");
    }

    #[test]
    fn normal_paths_are_left_alone() {
        let mut req = head("GET", b"http://example.com/admin?q=%zz");
        normalize_request(&mut req, &PathNormalization::default()).unwrap();
        assert_eq!(req.raw_path(), b"http://example.com/admin?q=%zz");
    }

    #[test]
    fn refusals() {
        let reject = PathNormalization {
            escaped_slashes: EscapedSlashes::Reject,
            ..Default::default()
        };
        for (method, target, cfg) in [
            ("GET", &b"/%zz"[..], PathNormalization::default()),
            ("GET", b"/a%4", PathNormalization::default()),
            ("GET", b"*", PathNormalization::default()),
            ("GET", b"/a%2Fb", reject),
            ("GET", b"/caf\xe9", PathNormalization::default()),
        ] {
            let mut req = head(method, target);
            let before = req.raw_path().to_vec();
            assert!(
                normalize_request(&mut req, &cfg).is_err(),
                "{}",
                String::from_utf8_lossy(target)
            );
            // A refused request's head is not touched.
            assert_eq!(req.raw_path(), before);
        }
        let mut options = head("OPTIONS", b"*");
        normalize_request(&mut options, &PathNormalization::default()).unwrap();
        assert_eq!(options.raw_path(), b"*");
    }
}
