//! HTTP header names that Meridian's own components agree on: the proxy sets them, the drill
//! client and tests read them. Defined once here because the model is the crate every side already
//! shares.

/// Response header naming the endpoint that answered, `<cluster>/<region>/<zone>` (set when the
/// Gateway asks for it with the `meridian.dev/served-by-header` annotation; always on east-west
/// responses).
pub const SERVED_BY: &str = "x-meridian-served-by";

/// Request header naming the backend (`Backend::name`) on a hop to a remote proxy's east-west
/// listener. Only proxies set it: a client's is dropped.
pub const BACKEND: &str = "x-meridian-backend";

/// Headers that describe the connection or the message framing rather than the request or
/// response itself: hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `keep-alive` and
/// `proxy-connection`), the framing headers `content-length` and `transfer-encoding` (RFC 9112
/// §6), and `host`, which the proxy routes on. A header filter (`RequestHeaderModifier`,
/// `ResponseHeaderModifier`) may not set, add or remove any of them: an edit made after the
/// message was parsed would change how the next hop frames or routes it. The controller drops a
/// rule whose filter names one (`UnsupportedValue`); the proxy refuses a snapshot that carries
/// one and, defensively, skips such an edit.
pub const FILTER_RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Whether a header filter may not touch `name` (case-insensitive, see [`FILTER_RESERVED`]).
pub fn is_filter_reserved(name: &str) -> bool {
    FILTER_RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_match_case_insensitively() {
        for n in [
            "Content-Length",
            "TRANSFER-ENCODING",
            "host",
            "Connection",
            "te",
        ] {
            assert!(is_filter_reserved(n), "{n}");
        }
        for n in ["x-gw", "content-type", "hosts", "x-forwarded-for", "tee"] {
            assert!(!is_filter_reserved(n), "{n}");
        }
    }
}
