//! Adapters between pingora's header types and the model's header traits, plus the cheap request
//! hygiene checks the proxy adds on top of pingora.
//!
//! What pingora 0.9.1 already does for HTTP/1.1 requests: rejects invalid or conflicting
//! `Content-Length` values (`validate_request`), and when `Transfer-Encoding` and `Content-Length`
//! both arrive it drops `Content-Length`, frames by `Transfer-Encoding` and disables keep-alive on
//! that connection (so a CL.TE desync cannot poison the next request); it caps the header block at
//! 1 MiB and 256 headers. What it lets through and [`check_request`] refuses:
//! `Transfer-Encoding` values other than a single `chunked` (lists, unknown codings, repeated
//! headers: 400), more than [`MAX_HEADERS`] headers or a header block above [`MAX_HEADER_BYTES`]
//! (431).

use std::borrow::Cow;

use http::{HeaderName, HeaderValue};
use meridian_model::filters::HeaderEdit;
use meridian_model::router::HeaderSource;
use pingora_http::{RequestHeader, ResponseHeader};

/// Most request headers accepted (Envoy's edge default).
pub const MAX_HEADERS: usize = 100;
/// Largest request header block accepted, names and values summed.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Joins every value of `name` with `,`; non-UTF-8 values are skipped.
fn joined<'a>(map: &'a http::HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut values = map.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let mut out: Option<String> = None;
    for v in values {
        let s = out.get_or_insert_with(|| first.to_string());
        s.push(',');
        s.push_str(v);
    }
    Some(match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(first),
    })
}

/// Request headers as the router reads them.
pub struct ReqHeaders<'a>(pub &'a RequestHeader);

impl HeaderSource for ReqHeaders<'_> {
    fn header(&self, lower_name: &str) -> Option<Cow<'_, str>> {
        joined(&self.0.headers, lower_name)
    }
}

/// The fields of a request on its way upstream, as the upstream hooks
/// (`Forwarder::upstream_request_filter`) read and edit them: pingora's `RequestHeader` on the
/// framework path and for h2c backends, or the lean path's edits over the client's own head
/// (lean/request.rs), which sends the client's fields without copying them into a second map.
/// Edits behave as `http::HeaderMap`'s: a field set in place of existing ones takes the first
/// one's position, a removed and set again one goes last.
pub trait UpstreamFields {
    /// The values of `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> + 'a;

    /// `name` gets `value` alone; `spelled` is how an HTTP/1 head that keeps the names'
    /// spelling writes it (`None`: as pingora writes a name it has no spelling for).
    fn set(
        &mut self,
        name: &HeaderName,
        spelled: Option<&'static str>,
        value: HeaderValue,
    ) -> pingora_error::Result<()>;

    /// Every value of `name` goes.
    fn remove(&mut self, name: &HeaderName);
}

impl UpstreamFields for RequestHeader {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.headers.get_all(name).iter()
    }

    fn set(
        &mut self,
        name: &HeaderName,
        spelled: Option<&'static str>,
        value: HeaderValue,
    ) -> pingora_error::Result<()> {
        match spelled {
            Some(s) => self.insert_header(s, value),
            None => self.insert_header(name.clone(), value),
        }
    }

    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

/// Writes `ip` as text to `out`: IPv4 digit by digit (`write!` spent about 1 000 instructions per
/// request on it, a quarter of the forwarding headers' cost), IPv6 as `Display` writes it.
pub(crate) fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(out, "{ip}");
        }
    }
}

/// Request headers as filters edit them.
pub struct ReqEdit<'a>(pub &'a mut RequestHeader);

impl HeaderEdit for ReqEdit<'_> {
    fn get(&self, name: &str) -> Option<String> {
        joined(&self.0.headers, &name.to_ascii_lowercase()).map(Cow::into_owned)
    }
    fn set(&mut self, name: &str, value: &str) {
        // Invalid names or values were refused by validation; a failure here only skips the edit.
        if let Err(e) = self.0.insert_header(name.to_string(), value) {
            tracing::debug!(error = %e, name, "request header edit skipped");
        }
    }
    fn remove(&mut self, name: &str) {
        self.0.remove_header(name);
    }
}

/// Response headers as filters edit them.
pub struct RespEdit<'a>(pub &'a mut ResponseHeader);

impl HeaderEdit for RespEdit<'_> {
    fn get(&self, name: &str) -> Option<String> {
        joined(&self.0.headers, &name.to_ascii_lowercase()).map(Cow::into_owned)
    }
    fn set(&mut self, name: &str, value: &str) {
        if let Err(e) = self.0.insert_header(name.to_string(), value) {
            tracing::debug!(error = %e, name, "response header edit skipped");
        }
    }
    fn remove(&mut self, name: &str) {
        self.0.remove_header(name);
    }
}

/// A request refused before routing, with the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400 or 431.
    pub status: u16,
    /// For the log.
    pub reason: &'static str,
}

/// Cheap checks on the parsed request header (see the module docs).
pub fn check_request(req: &RequestHeader) -> Result<(), Refusal> {
    let headers = &req.headers;
    if headers.len() > MAX_HEADERS {
        return Err(Refusal {
            status: 431,
            reason: "too many request headers",
        });
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Refusal {
            status: 431,
            reason: "request header block too large",
        });
    }
    let mut te = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        let single_chunked = first
            .to_str()
            .map(|v| v.trim().eq_ignore_ascii_case("chunked"))
            .unwrap_or(false);
        if !single_chunked || te.next().is_some() {
            return Err(Refusal {
                status: 400,
                reason: "unsupported Transfer-Encoding",
            });
        }
        if headers.contains_key(http::header::CONTENT_LENGTH) {
            return Err(Refusal {
                status: 400,
                reason: "both Content-Length and Transfer-Encoding",
            });
        }
    }
    Ok(())
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
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.168.100.255",
            "9.99.100.109",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    #[test]
    fn repeated_headers_are_joined_with_a_comma() {
        let r = req(&[("X-A", "1"), ("x-a", "2"), ("X-B", "3")]);
        let h = ReqHeaders(&r);
        assert_eq!(h.header("x-a").as_deref(), Some("1,2"));
        assert_eq!(h.header("x-b").as_deref(), Some("3"));
        assert_eq!(h.header("x-c"), None);
    }

    #[test]
    fn transfer_encoding_variants_are_refused() {
        assert!(check_request(&req(&[("Transfer-Encoding", "chunked")])).is_ok());
        assert!(check_request(&req(&[("Transfer-Encoding", "Chunked ")])).is_ok());
        for bad in [
            vec![("Transfer-Encoding", "gzip, chunked")],
            vec![("Transfer-Encoding", "xchunked")],
            vec![
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
            vec![("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
        ] {
            assert_eq!(
                check_request(&req(&bad)).unwrap_err().status,
                400,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_limits_answer_431() {
        let many: Vec<(String, String)> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(check_request(&req(&refs)).unwrap_err().status, 431);
        let big = "v".repeat(MAX_HEADER_BYTES);
        assert_eq!(
            check_request(&req(&[("x-big", &big)])).unwrap_err().status,
            431
        );
    }
}
