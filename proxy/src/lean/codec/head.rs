//! Request heads: httparse reads the head where it lies in the connection's buffer, then it is
//! built into pingora_http's `RequestHeader` (what the roles read and edit) with the body's
//! framing decided by the smuggling rules (RFC 9112 section 6):
//!
//! - `Transfer-Encoding` and `Content-Length` together: refused (two readers could split the
//!   body differently);
//! - `Transfer-Encoding` whose last coding is not `chunked`: refused (the body's end would only
//!   be the connection's);
//! - `Transfer-Encoding` on an HTTP/1.0 request: refused (1.0 has no chunked framing);
//! - several `Content-Length` fields, or one with several values, that differ: refused; equal
//!   ones are one length;
//! - a `Content-Length` that is not all digits (sign, space, empty) or overflows: refused.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_http::RequestHeader;

use super::CodecError;

/// Longest request head read (request line and fields, up to the empty line).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a request head.
pub(crate) const MAX_HEADERS: usize = 128;

/// How the request body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (no framing field, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked: decoded by [`ChunkedDecoder`](super::chunked::ChunkedDecoder).
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub header: RequestHeader,
    /// Bytes of the buffer the head took; the body (or the next request) starts there.
    pub len: usize,
    pub body: BodyFraming,
}

/// Parses the request head at the start of `buf`; `Ok(None)` while it is incomplete (read
/// more and call again with the longer buffer).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, CodecError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(CodecError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(CodecError::TooLarge),
        Err(_) => return Err(CodecError::Malformed("not an HTTP/1 request head")),
    };
    if len > MAX_HEAD {
        return Err(CodecError::TooLarge);
    }
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(CodecError::Malformed("incomplete request line"));
    };
    let mut header = RequestHeader::build(method, path.as_bytes(), Some(req.headers.len()))
        .map_err(|_| CodecError::Malformed("invalid method or target"))?;
    header.set_version(if minor == 0 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    });
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    for field in req.headers.iter() {
        if field.name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str()) {
            for value in field.value.split(|&b| b == b',') {
                let n = parse_length(value.trim_ascii())?;
                if length.is_some_and(|l| l != n) {
                    return Err(CodecError::Ambiguous("differing Content-Length values"));
                }
                length = Some(n);
            }
        } else if field.name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str()) {
            // Only the last coding of the last field decides whether the body is chunked.
            let last = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                .unwrap_or_default();
            transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
        header
            .append_header(field.name.to_string(), field.value)
            .map_err(|_| CodecError::Malformed("invalid header field"))?;
    }
    let body = match (transfer_encoding, length) {
        (Some(_), Some(_)) => {
            return Err(CodecError::Ambiguous(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        (Some(_), None) if minor == 0 => {
            return Err(CodecError::Ambiguous("Transfer-Encoding on HTTP/1.0"));
        }
        (Some(false), None) => {
            return Err(CodecError::Ambiguous(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        (Some(true), None) => BodyFraming::Chunked,
        (None, Some(n)) if n > 0 => BodyFraming::Length(n),
        (None, _) => BodyFraming::Empty,
    };
    Ok(Some(Head { header, len, body }))
}

/// A `Content-Length` value: digits only (no sign, no space inside), within u64.
fn parse_length(value: &[u8]) -> Result<u64, CodecError> {
    const BAD: CodecError = CodecError::Ambiguous("invalid Content-Length");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(BAD)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parsed(raw: &str) -> Head {
        parse_head(raw.as_bytes()).unwrap().unwrap()
    }

    fn refused(raw: &str) -> CodecError {
        parse_head(raw.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_head_becomes_a_request_header_with_its_length() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nNEXT";
        let head = parsed(raw);
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(head.header.method, http::Method::GET);
        assert_eq!(head.header.uri.path(), "/a");
        assert_eq!(head.header.uri.query(), Some("b=1"));
        assert_eq!(head.header.version, http::Version::HTTP_11);
        assert_eq!(head.header.headers.get_all("x-two").iter().count(), 2);
        assert_eq!(head.body, BodyFraming::Empty);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_an_endless_one_is_too_large() {
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        while endless.len() <= MAX_HEAD {
            endless.extend_from_slice(b"X-Pad: 0123456789abcdef\r\n");
        }
        assert_eq!(parse_head(&endless).unwrap_err(), CodecError::TooLarge);
        assert_eq!(CodecError::TooLarge.status(), 431);
    }

    #[test]
    fn too_many_fields_are_too_large() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(refused(&raw), CodecError::TooLarge);
    }

    #[test]
    fn garbage_is_malformed() {
        let e = refused("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n");
        assert!(matches!(e, CodecError::Malformed(_)), "{e:?}");
        assert_eq!(e.status(), 400);
        assert!(matches!(
            refused("\x01\x02 junk\r\n\r\n"),
            CodecError::Malformed(_)
        ));
    }

    #[test]
    fn body_framing_follows_the_fields() {
        let h = parsed("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = parsed("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Empty);
        let h = parsed("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        // Repeated equal lengths are one length.
        let h = parsed("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7, 7\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(7));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            let e = refused(raw);
            assert!(matches!(e, CodecError::Ambiguous(_)), "{raw:?}: {e:?}");
            assert_eq!(e.status(), 400);
        }
    }
}
