//! What the proxy does differently for gRPC.
//!
//! A rule translated from a GRPCRoute ([`Rule::is_grpc`]) and a gRPC call (an HTTP/2 request
//! whose content type is `application/grpc…`) change three things; HTTP/1 clients and
//! HTTPRoute rules see none of them:
//!
//! * Upstream protocol: a gRPC rule's backends are spoken to over h2c whatever their Service's
//!   `appProtocol` says (gRPC is HTTP/2; the snapshot keeps the Service's protocol so an
//!   endpoint refresh, keyed by backend name, cannot disagree with an HTTPRoute using the same
//!   Service).
//! * Retries: a gRPC call is not idempotent unless its service says so, which the proxy cannot
//!   know. A try that failed before anything was sent (connect failure, refused or ejected
//!   endpoint) moves to the next endpoint or locality as for any request; once the request went
//!   out, nothing is retried or failed over, and nothing is hedged (lean/hedge.rs only hedges
//!   HTTP/1 backends, and never a POST).
//! * Errors the proxy itself answers to a gRPC call: a gRPC client reads the status from
//!   `grpc-status`, so an HTTP 5xx would reach the application as a vague `UNKNOWN` or
//!   `INTERNAL`. Instead the proxy answers HTTP 200 with `content-type: application/grpc` and
//!   `grpc-status` / `grpc-message` in the head and no body (a trailers-only response):
//!   503, 502 and 500 (no ready endpoint, upstream failure, invalid backend: the GRPCRoute spec
//!   asks for `UNAVAILABLE` there) become `UNAVAILABLE` (14), 504 becomes `DEADLINE_EXCEEDED`
//!   (4). No route (404) stays HTTP 404, as the Gateway API expects; gRPC clients map it to
//!   `UNIMPLEMENTED` themselves. A call that fails after the response head went out is ended by
//!   resetting its stream (what the framework does), which clients see as an error too.

use meridian_model::snapshot::Rule;
use pingora_http::{RequestHeader, ResponseHeader};

/// `grpc-status` codes the proxy answers.
const UNAVAILABLE: u8 = 14;
const DEADLINE_EXCEEDED: u8 = 4;

/// Whether the request is a gRPC call: HTTP/2 with a `application/grpc` content type
/// (`application/grpc+proto` and the like included).
pub(crate) fn is_grpc_call(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_2
        && req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.len() >= 16 && ct.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc")
            })
}

/// Whether tries of `rule` may be repeated once the request was sent (not for gRPC rules).
pub(crate) fn retries_after_send(rule: &Rule) -> bool {
    !rule.is_grpc()
}

/// The gRPC status (code and message) the proxy answers instead of HTTP `code`; `None` keeps
/// the HTTP status.
pub(crate) fn status_for(code: u16) -> Option<(u8, &'static str)> {
    Some(match code {
        500 => (UNAVAILABLE, "no usable backend for this call"),
        502 => (UNAVAILABLE, "the backend failed"),
        503 => (UNAVAILABLE, "no backend endpoint is available"),
        504 => (DEADLINE_EXCEEDED, "the call timed out at the gateway"),
        _ => return None,
    })
}

/// The head of a trailers-only response carrying `status` and `message`.
pub(crate) fn trailers_only(status: u8, message: &str) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", status.to_string())?;
    // `grpc-message` is percent-encoded; our messages are plain ASCII without `%`.
    resp.insert_header("grpc-message", message)?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn req(version: http::Version, ct: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Do", None).unwrap();
        r.set_version(version);
        if let Some(ct) = ct {
            r.insert_header("content-type", ct).unwrap();
        }
        r
    }

    #[test]
    fn grpc_calls_are_h2_with_the_grpc_content_type() {
        use http::Version;
        assert!(is_grpc_call(&req(
            Version::HTTP_2,
            Some("application/grpc")
        )));
        assert!(is_grpc_call(&req(
            Version::HTTP_2,
            Some("Application/GRPC+proto")
        )));
        assert!(!is_grpc_call(&req(
            Version::HTTP_11,
            Some("application/grpc")
        )));
        assert!(!is_grpc_call(&req(
            Version::HTTP_2,
            Some("application/json")
        )));
        assert!(!is_grpc_call(&req(
            Version::HTTP_2,
            Some("application/grp")
        )));
        assert!(!is_grpc_call(&req(Version::HTTP_2, None)));
    }

    #[test]
    fn proxy_errors_map_to_grpc_statuses() {
        assert_eq!(status_for(503).map(|s| s.0), Some(UNAVAILABLE));
        assert_eq!(status_for(500).map(|s| s.0), Some(UNAVAILABLE));
        assert_eq!(status_for(504).map(|s| s.0), Some(DEADLINE_EXCEEDED));
        assert_eq!(status_for(404), None);
        let h = trailers_only(14, "x").unwrap();
        assert_eq!(h.status.as_u16(), 200);
        assert_eq!(h.headers["grpc-status"], "14");
        assert_eq!(h.headers["content-type"], "application/grpc");
    }
}
