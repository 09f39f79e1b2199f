//! Request heads on their way to an HTTP/1 backend, as bytes: [`WireHead`] is anything the
//! client codec (client.rs) can encode and send. It is pingora_http's `RequestHeader` (tests,
//! and the lean path's copy of an absolute-form request), the lean path's edits over the
//! client's own head (lean/request.rs: the client's fields go out without being copied into a
//! second header map first), or such a head encoded ahead of time (a hedged pair's, sent
//! twice).
//!
//! While the fields are written, [`HeadFacts`] takes note of what the client codec needs
//! of them (body framing, keep-alive, upgrade), so none of them is looked up again by name.

use bytes::BytesMut;
use http::{HeaderName, Method, Version, header};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;

use super::head::parse_length;

/// A request head the client codec can send.
pub(crate) trait WireHead {
    /// Appends the request line, the fields and the empty line to `out`; what the fields said.
    fn encode(&self, out: &mut BytesMut) -> Result<HeadFacts>;

    /// About how many bytes [`encode`](Self::encode) writes (room made before).
    fn size_hint(&self) -> usize;
}

/// Appends `METHOD target HTTP/1.x\r\n`; a target with bytes no request line may carry (RFC 9112
/// section 3.2), or a version other than HTTP/1.x, is refused before anything is written.
pub(crate) fn request_line(
    method: &Method,
    target: &[u8],
    version: Version,
    out: &mut BytesMut,
) -> Result<()> {
    if target
        .iter()
        .any(|&b| matches!(b, 0 | b'\n' | b'\r' | b' '))
    {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "request-line contains forbidden delimiter bytes",
        );
    }
    let version: &[u8] = match version {
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        Version::HTTP_11 => b" HTTP/1.1\r\n",
        _ => {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "request version other than HTTP/1.x to an HTTP/1 backend",
            );
        }
    };
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target);
    out.extend_from_slice(version);
    Ok(())
}

/// Appends one field: `name: value\r\n`.
pub(crate) fn field(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How pingora_http writes a name it has no spelling for (a head without its case map): these
/// common fields capitalised, every other name as `HeaderName` holds it (lower case). The lean
/// path writes names exactly as pingora would (the unit test below compares the two).
pub(crate) fn titled(name: &HeaderName) -> &str {
    match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ => name.as_str(),
    }
}

/// What the client codec needs to know of the fields of a request head it sends, collected as
/// they are written.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadFacts {
    /// The method is `HEAD`: the response has no body, whatever it says.
    pub head_request: bool,
    upgrade_field: bool,
    connection_upgrade: bool,
    /// `Connection` said close (`Some(false)`) or keep-alive (`Some(true)`).
    pub keepalive: Option<bool>,
    /// The last `Transfer-Encoding` field's last coding is `chunked`.
    chunked: bool,
    lengths: Lengths,
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sending {
    /// This many bytes are still to go.
    Length(u64),
    Chunked,
    Done,
}

impl HeadFacts {
    pub(crate) fn new(method: &Method) -> Self {
        HeadFacts {
            head_request: *method == Method::HEAD,
            ..HeadFacts::default()
        }
    }

    /// Takes note of one field as it goes out.
    pub(crate) fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONNECTION {
            self.connection_upgrade |= has_token(value, b"upgrade");
            if let Some(k) = connection_tokens(value) {
                // Any field saying close wins (as a reduce with `&&` over the fields).
                self.keepalive = Some(self.keepalive.map_or(k, |before| before && k));
            }
        } else if *name == header::UPGRADE {
            self.upgrade_field = true;
        } else if *name == header::TRANSFER_ENCODING {
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == header::CONTENT_LENGTH {
            self.lengths.add(value);
        }
    }

    /// The request asks for an upgrade (`Connection: upgrade` and an `Upgrade` field).
    pub(crate) fn upgrade(&self) -> bool {
        self.upgrade_field && self.connection_upgrade
    }

    /// The body's framing: chunked wins over a length; no framing is no body (requests are
    /// never close-delimited).
    pub(crate) fn sending(&self) -> Sending {
        if self.chunked {
            return Sending::Chunked;
        }
        match self.lengths.framing() {
            Ok(Some(n)) if n > 0 => Sending::Length(n),
            _ => Sending::Done,
        }
    }
}

/// `Some(false)` when a `Connection` value says close, `Some(true)` when it says keep-alive.
pub(crate) fn connection_tokens(value: &[u8]) -> Option<bool> {
    if has_token(value, b"close") {
        Some(false)
    } else if has_token(value, b"keep-alive") {
        Some(true)
    } else {
        None
    }
}

pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// `Content-Length` fields of one message: equal values (also comma-joined) are one length;
/// differing or malformed ones are an error.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lengths {
    value: Option<u64>,
    error: Option<&'static str>,
    pub seen: bool,
    /// Exactly one field with one token (a peer may read it as close-delimited if invalid).
    pub single: bool,
}

impl Lengths {
    pub(crate) fn add(&mut self, field: &[u8]) {
        self.single = !self.seen && !field.contains(&b',');
        self.seen = true;
        for token in field.split(|&b| b == b',') {
            match parse_length(token.trim_ascii()).ok() {
                Some(n) if self.value.is_some_and(|v| v != n) => {
                    self.error = Some("differing Content-Length values");
                }
                Some(n) => self.value = Some(n),
                None => self.error = Some("invalid Content-Length"),
            }
        }
    }

    pub(crate) fn framing(&self) -> std::result::Result<Option<u64>, &'static str> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.value),
        }
    }
}

/// pingora_http's head as it is: its fields in order, spelled as its case map says (or as
/// [`titled`] when it has none).
impl WireHead for RequestHeader {
    fn encode(&self, out: &mut BytesMut) -> Result<HeadFacts> {
        request_line(&self.method, self.raw_path(), self.version, out)?;
        let mut facts = HeadFacts::new(&self.method);
        let mut spelled = self.case_header_iter();
        for (name, value) in &self.headers {
            let written = match spelled.next() {
                Some((case, _)) => case.as_slice(),
                None => titled(name).as_bytes(),
            };
            field(written, value.as_bytes(), out);
            facts.field(name, value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        Ok(facts)
    }

    fn size_hint(&self) -> usize {
        256 + 48 * self.headers.len()
    }
}

impl<T: WireHead + ?Sized> WireHead for Box<T> {
    fn encode(&self, out: &mut BytesMut) -> Result<HeadFacts> {
        (**self).encode(out)
    }

    fn size_hint(&self) -> usize {
        (**self).size_hint()
    }
}

/// A head encoded ahead of time, with what its fields said (a hedged pair's head, sent by both
/// tries).
pub(crate) struct Encoded {
    bytes: BytesMut,
    facts: HeadFacts,
}

impl Encoded {
    pub(crate) fn of(head: &impl WireHead) -> Result<Encoded> {
        let mut bytes = BytesMut::with_capacity(head.size_hint());
        let facts = head.encode(&mut bytes)?;
        Ok(Encoded { bytes, facts })
    }
}

impl WireHead for Encoded {
    fn encode(&self, out: &mut BytesMut) -> Result<HeadFacts> {
        out.extend_from_slice(&self.bytes);
        Ok(self.facts.clone())
    }

    fn size_hint(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Our spelling of names without a case map is pingora's, for the names it capitalises and
    /// for any other.
    #[test]
    fn names_are_spelled_as_pingora_spells_them() {
        let names = [
            header::ACCEPT_RANGES,
            header::AGE,
            header::CACHE_CONTROL,
            header::CONNECTION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::CONTENT_LENGTH,
            header::DATE,
            header::TRANSFER_ENCODING,
            header::HOST,
            header::SERVER,
            header::SET_COOKIE,
            header::VIA,
            header::USER_AGENT,
            header::ACCEPT,
            HeaderName::from_static("x-forwarded-for"),
        ];
        for name in names {
            let mut req = RequestHeader::build_no_case("GET", b"/", None).unwrap();
            req.insert_header(name.clone(), "v").unwrap();
            let mut pingora = Vec::new();
            req.header_to_h1_wire(&mut pingora);
            assert_eq!(
                String::from_utf8(pingora).unwrap(),
                format!("{}: v\r\n", titled(&name))
            );
        }
    }

    #[test]
    fn facts_are_read_off_the_fields() {
        let mut req = RequestHeader::build_no_case("HEAD", b"/", None).unwrap();
        req.append_header("connection", "keep-alive, Upgrade")
            .unwrap();
        req.append_header("upgrade", "websocket").unwrap();
        req.append_header("content-length", "5, 5").unwrap();
        let mut out = BytesMut::new();
        let facts = req.encode(&mut out).unwrap();
        assert!(facts.head_request && facts.upgrade());
        assert_eq!(facts.keepalive, Some(true));
        assert_eq!(facts.sending(), Sending::Length(5));
        assert_eq!(
            &out[..],
            b"HEAD / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nupgrade: websocket\r\nContent-Length: 5, 5\r\n\r\n"
        );

        // A later close wins; the last Transfer-Encoding decides chunked over a length.
        let mut req = RequestHeader::build_no_case("POST", b"/", None).unwrap();
        req.append_header("connection", "keep-alive").unwrap();
        req.append_header("connection", "close").unwrap();
        req.append_header("transfer-encoding", "gzip").unwrap();
        req.append_header("transfer-encoding", "gzip, chunked")
            .unwrap();
        req.append_header("content-length", "3").unwrap();
        let facts = req.encode(&mut BytesMut::new()).unwrap();
        assert_eq!(facts.keepalive, Some(false));
        assert!(!facts.upgrade() && !facts.head_request);
        assert_eq!(facts.sending(), Sending::Chunked);

        let mut req = RequestHeader::build_no_case("POST", b"/", None).unwrap();
        req.append_header("content-length", "3").unwrap();
        req.append_header("content-length", "4").unwrap();
        let facts = req.encode(&mut BytesMut::new()).unwrap();
        assert_eq!(facts.sending(), Sending::Done);
    }
}
