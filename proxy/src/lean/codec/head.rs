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
//! - a `Content-Length` that is not all digits (sign, space, empty) or overflows: refused;
//! - `Transfer-Encoding` and `Content-Length` together: the body is framed by the chunked coding,
//!   `Content-Length` is dropped and the connection closes after the response (RFC 9112 section
//!   6.1), so nothing can hide behind the body (what pingora-core's session does too; the role's
//!   `headers::check_request` then refuses the request outright).
//!
//! Limits are pingora-core's (so both HTTP/1 paths answer alike): a head of at most
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields is parsed; beyond that the client gets 431. The
//! role's own, tighter limits (`headers::MAX_HEADERS`, `headers::MAX_HEADER_BYTES`: 431) apply
//! afterwards on both paths.
//!
//! A request target with bytes httparse refuses (a space, `"`, `<`, `>`, controls, non-ASCII)
//! gets a second chance, as on pingora's path: those bytes are percent-encoded and the head is
//! parsed again; only a head that still does not parse is answered 400.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Method};
use pingora_http::RequestHeader;
use smallvec::SmallVec;

use super::{CodecError, HeaderCase};

/// Longest request head read (request line and fields, up to the empty line): pingora-core's
/// limit (1 MiB less a byte), far above the role's 64 KiB of field bytes, so that limit decides.
pub(crate) const MAX_HEAD: usize = 1024 * 1024 - 1;
/// Most header fields parsed in a request head (pingora-core's); the role refuses more than
/// `headers::MAX_HEADERS` (100) afterwards.
pub(crate) const MAX_HEADERS: usize = 256;

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
    /// Bytes the head took off the front of the connection's buffer.
    pub len: usize,
    pub body: BodyFraming,
    /// The connection must close after this request (`Transfer-Encoding` and
    /// `Content-Length` came together).
    pub close: bool,
}

/// Parses the request head at the start of `buf` and takes it off `buf` (which then starts at
/// the body, or at the next request); `Ok(None)` while it is incomplete (read more and call
/// again), with nothing taken.
pub(crate) fn parse_head(buf: &mut BytesMut, case: HeaderCase) -> Result<Option<Head>, CodecError> {
    match parse_in(buf, case) {
        Err(Refused::Target) => {}
        Err(Refused::Codec(e)) => return Err(e),
        Ok(head) => return Ok(head),
    }
    // The request target has bytes httparse refuses: encode them in a copy of the head (the
    // body and any pipelined request after it stay where they are) and parse that.
    let end = head_end(buf).unwrap_or(buf.len());
    let malformed = CodecError::Malformed("not an HTTP/1 request head");
    let escaped = escape_target(&buf[..end]).ok_or(malformed)?;
    let grown = escaped.len() - end;
    let mut copy = BytesMut::from(&escaped[..]);
    match parse_in(&mut copy, case) {
        Ok(Some(mut head)) => {
            // `len` counts bytes of the connection's buffer, not of the escaped copy.
            head.len -= grown;
            buf.advance(head.len);
            Ok(Some(head))
        }
        Ok(None) if buf.len() > MAX_HEAD => Err(CodecError::TooLarge),
        Ok(None) => Ok(None),
        Err(Refused::Target) => Err(malformed),
        Err(Refused::Codec(e)) => Err(e),
    }
}

/// Why [`parse_in`] refused a head.
enum Refused {
    /// httparse refused a token or the version: maybe a request target to encode.
    Target,
    Codec(CodecError),
}

impl From<CodecError> for Refused {
    fn from(e: CodecError) -> Self {
        Refused::Codec(e)
    }
}

/// Where a header field lies in the head: `(start, len)` of its name and of its value.
#[derive(Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn of(part: (u32, u32)) -> std::ops::Range<usize> {
        part.0 as usize..(part.0 + part.1) as usize
    }
}

/// Fields added to the client's head (`X-Forwarded-For`, `X-Forwarded-Proto`): room made for
/// them when the head's map is built, so it does not grow. What goes upstream on top of the
/// client's fields (`Via`, trace context, the backend's name) is not added to this head
/// (lean/request.rs, `Overlay`); a route's header filters that add fields grow it. A map for at
/// most six fields stays under mimalloc's small-block size (1 KiB), where an allocation costs
/// about half as much.
const ROOM_FOR_ADDED_FIELDS: usize = 2;

/// Parses the head at the start of `buf`; on success the head is split off `buf` and frozen, and
/// the request's field names and values are slices of it (no copy, no allocation per field
/// beyond a non-standard name's lower-cased form).
fn parse_in(buf: &mut BytesMut, case: HeaderCase) -> Result<Option<Head>, Refused> {
    // Inline for the usual few fields. Neither this nor httparse's field array is initialised
    // up front: writing 256 empty fields cost more than parsing a short head.
    let mut spans: SmallVec<[Span; 24]> = SmallVec::new();
    // Offsets only, so the borrow of `buf` ends before the head is split off it.
    let (len, method, target, minor) = {
        let bytes: &[u8] = buf;
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(bytes, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
                return Err(CodecError::TooLarge.into());
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(CodecError::TooLarge.into()),
            Err(httparse::Error::Token | httparse::Error::Version) => return Err(Refused::Target),
            Err(_) => return Err(CodecError::Malformed("not an HTTP/1 request head").into()),
        };
        if len > MAX_HEAD {
            return Err(CodecError::TooLarge.into());
        }
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(CodecError::Malformed("incomplete request line").into());
        };
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| CodecError::Malformed("invalid method or target"))?;
        // Every slice httparse hands out lies inside `bytes`, which is at most MAX_HEAD long.
        let base = bytes.as_ptr() as usize;
        let at = |part: &[u8]| ((part.as_ptr() as usize - base) as u32, part.len() as u32);
        spans.extend(req.headers.iter().map(|field| Span {
            name: at(field.name.as_bytes()),
            value: at(field.value),
        }));
        (len, method, at(path.as_bytes()), minor)
    };
    let head = buf.split_to(len).freeze();
    let target = &head[Span::of(target)];
    let room = Some(spans.len() + ROOM_FOR_ADDED_FIELDS);
    let mut header = match case {
        HeaderCase::Normalize => RequestHeader::build_no_case(method, target, room),
        HeaderCase::Preserve => RequestHeader::build(method, target, room),
    }
    .map_err(|_| CodecError::Malformed("invalid method or target"))?;
    header.set_version(if minor == 0 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    });
    let mut length: Option<u64> = None;
    let mut length_error: Option<CodecError> = None;
    let mut transfer_encoding: Option<bool> = None;
    for span in &spans {
        let name = head.slice(Span::of(span.name));
        let value = head.slice(Span::of(span.value));
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            // Checked below, only when no Transfer-Encoding overrides it.
            for value in value.split(|&b| b == b',') {
                match parse_length(value.trim_ascii()) {
                    Ok(n) if length.is_some_and(|l| l != n) => {
                        length_error =
                            Some(CodecError::Ambiguous("differing Content-Length values"));
                    }
                    Ok(n) => length = Some(n),
                    Err(e) => length_error = Some(e),
                }
            }
        } else if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str().as_bytes()) {
            // Only the last coding of the last field decides whether the body is chunked.
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                .unwrap_or_default();
            transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
        // The same check as `HeaderValue::from_bytes`, without its copy.
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| CodecError::Malformed("invalid header field"))?;
        header
            .append_header(name, value)
            .map_err(|_| CodecError::Malformed("invalid header field"))?;
    }
    let mut close = false;
    let body = match transfer_encoding {
        Some(_) if minor == 0 => {
            return Err(CodecError::Ambiguous("Transfer-Encoding on HTTP/1.0").into());
        }
        Some(false) => {
            return Err(CodecError::Ambiguous("Transfer-Encoding does not end in chunked").into());
        }
        Some(true) => {
            if header.headers.contains_key(CONTENT_LENGTH) {
                // Chunked wins; the length goes, and so does the connection afterwards.
                header.remove_header(&CONTENT_LENGTH);
                close = true;
            }
            BodyFraming::Chunked
        }
        None => {
            if let Some(e) = length_error {
                return Err(e.into());
            }
            match length {
                Some(n) if n > 0 => BodyFraming::Length(n),
                _ => BodyFraming::Empty,
            }
        }
    };
    Ok(Some(Head {
        header,
        len,
        body,
        close,
    }))
}

/// Where the head in `buf` ends (past its empty line), if it is whole.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// `head` with its request target's refused bytes percent-encoded (controls, space, `"`, `<`,
/// `>`, non-ASCII); `None` when the first line is no `METHOD target HTTP/x[.y]` or nothing
/// needed encoding (parsing again would refuse it again).
fn escape_target(head: &[u8]) -> Option<Vec<u8>> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = &head[..line_end];
    let method = line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    if method == 0 || line.get(method) != Some(&b' ') {
        return None;
    }
    let start = method + 1;
    // The target runs to the last " HTTP/<digit>" of the line.
    let end = (start + 1..line.len()).rev().find(|&at| {
        line[at..].starts_with(b" HTTP/") && line.get(at + 6).is_some_and(u8::is_ascii_digit)
    })?;
    let target = &line[start..end];
    // A target that is not UTF-8 stays refused.
    std::str::from_utf8(target).ok()?;
    let refused = |b: u8| !(0x20..0x7f).contains(&b) || matches!(b, b' ' | b'"' | b'<' | b'>');
    if !target.iter().any(|&b| refused(b)) {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + 2 * target.len());
    out.extend_from_slice(&head[..start]);
    for &b in target {
        if refused(b) {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&head[end..]);
    Some(out)
}

/// A `Content-Length` value: digits only (no sign, no space inside), within u64.
pub(crate) fn parse_length(value: &[u8]) -> Result<u64, CodecError> {
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
        parse_head(&mut BytesMut::from(raw), HeaderCase::Preserve)
            .unwrap()
            .unwrap()
    }

    fn refused(raw: &str) -> CodecError {
        parse_head(&mut BytesMut::from(raw), HeaderCase::Preserve).unwrap_err()
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
        // Names keep the client's case on the way out (they are slices of the head).
        let mut wire = Vec::new();
        head.header.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"Host: x\r\nX-Two: 1\r\nX-Two: 2\r\n");
        // Without the case map the common fields go out capitalised as usual and the others in
        // lower case: the same fields in the same order.
        let lower = parse_head(&mut BytesMut::from(raw), HeaderCase::Normalize)
            .unwrap()
            .unwrap();
        assert_eq!(lower.len, head.len);
        let mut wire = Vec::new();
        lower.header.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"Host: x\r\nx-two: 1\r\nx-two: 2\r\n");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_an_endless_one_is_too_large() {
        // Nothing is taken off the buffer while the head is partial.
        let partial = &b"GET / HTTP/1.1\r\nHost: x\r\n"[..];
        let mut buf = BytesMut::from(partial);
        assert!(
            parse_head(&mut buf, HeaderCase::Preserve)
                .unwrap()
                .is_none()
        );
        assert_eq!(&buf[..], partial);
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        while endless.len() <= MAX_HEAD {
            endless.extend_from_slice(b"X-Pad: 0123456789abcdef\r\n");
        }
        assert_eq!(
            parse_head(&mut BytesMut::from(&endless[..]), HeaderCase::Preserve).unwrap_err(),
            CodecError::TooLarge
        );
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

    #[test]
    fn chunked_with_a_length_frames_by_chunks_without_the_length_and_closes() {
        let h =
            parsed("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        assert!(h.close);
        assert!(!h.header.headers.contains_key(CONTENT_LENGTH));
        // A bad length does not matter when chunked frames the body.
        let h =
            parsed("POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        assert!(!parsed("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").close);
    }

    #[test]
    fn limits_are_pingoras() {
        // As many fields as pingora parses: accepted here (the role refuses above 100).
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        assert_eq!(
            parsed(&(raw.clone() + "\r\n")).header.headers.len(),
            MAX_HEADERS
        );
        raw.push_str("X-One-More: v\r\n\r\n");
        assert_eq!(refused(&raw), CodecError::TooLarge);
        // Fields just under the role's 64 KiB plus a long request line: parsed, as pingora does.
        let target = format!("/{}", "t".repeat(8 * 1024));
        let value = "v".repeat(64 * 1024 - 10);
        let raw = format!("GET {target} HTTP/1.1\r\nX-Big: {value}\r\n\r\n");
        assert!(raw.len() > 64 * 1024);
        assert_eq!(parsed(&raw).header.uri.path(), target);
    }

    #[test]
    fn a_target_with_refused_bytes_is_encoded_and_parsed_again() {
        let raw = "GET /a b\"c<d>\u{e9} HTTP/1.1\r\nHost: x\r\n\r\nNEXT";
        let mut buf = BytesMut::from(raw);
        let head = parse_head(&mut buf, HeaderCase::Preserve).unwrap().unwrap();
        assert_eq!(head.header.uri.path(), "/a%20b%22c%3Cd%3E%C3%A9");
        // `len` is the original head's length, and that much left the buffer: the next request
        // starts right after it.
        assert_eq!(&raw.as_bytes()[head.len..], b"NEXT");
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(head.header.headers.get("host").unwrap(), "x");
        // Still incomplete after encoding: more bytes are awaited, none taken.
        let partial = &b"GET /a b HTTP/1.1\r\nHost: x\r\n"[..];
        let mut buf = BytesMut::from(partial);
        assert!(
            parse_head(&mut buf, HeaderCase::Preserve)
                .unwrap()
                .is_none()
        );
        assert_eq!(&buf[..], partial);
        // Nothing to encode, or no request line: 400.
        for bad in [
            "GET /a HTTP/1.x\r\n\r\n",
            "GET /a b HTTP/x\r\n\r\n",
            " /a HTTP/1.1\r\n\r\n",
        ] {
            let e = refused(bad);
            assert!(matches!(e, CodecError::Malformed(_)), "{bad:?}: {e:?}");
        }
    }
}
