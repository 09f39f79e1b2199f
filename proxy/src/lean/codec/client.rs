//! [`OwnClient`]: one HTTP/1 exchange with a backend on our own codec, over pingora's
//! [`Stream`] (plain or TLS), in place of pingora-core's client session under the lean driver.
//!
//! ```text
//! write_request_header: request line + fields into one buffer, one write (+ flush)
//!   body framing from the head: chunked | Content-Length | none
//! write_body / finish_body: chunk framing or a Content-Length countdown
//! read_response_task: the head parsed where the bytes lie (httparse), then body pieces
//!   by framing (RFC 9112 section 6.3):
//!     HEAD, 1xx, 204, 304 ─ no body; a 101 to an upgrade request ─ the tunnel's
//!     Transfer-Encoding ending in chunked ─ ChunkedDecoder; other codings ─ until close
//!     Content-Length (equal duplicates are one) ─ countdown; none ─ until close
//!   body bytes that came with the head are the next piece without a system call
//! respect_keepalive + reuse: the stream back for the pool only when both messages ended,
//!   nothing was read past the response, and version and `Connection` allow it
//! ```
//!
//! What it saves against pingora-core's session (docs/benchmarks.md, "Session 11: own upstream
//! HTTP/1 client session"): the head is not copied into a second buffer before parsing, header
//! names and values are slices of the one frozen head, and no body buffer is allocated per
//! response (pieces are split off the read buffer). The rules (keep-alive, retryable errors,
//! framing, limits) are pingora-core 0.9.1's, so both paths treat backends alike.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{StatusCode, Version, header};
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::HttpTask;
use pingora_error::{Error, ErrorType, OrErr, Result, RetryType};
use pingora_http::ResponseHeader;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::HeaderCase;
use super::body::{BodyState, Take};
use super::chunked::ChunkedDecoder;
use super::head::MAX_HEADERS;
use super::wire::{HeadFacts, Lengths, Sending, WireHead, connection_tokens};

/// Longest response head read (pingora-core's limit for responses).
const MAX_RESPONSE_HEAD: usize = 1024 * 1024 - 1;
/// Buffer space made ready before a read.
const READ_SPACE: usize = 4096;
/// Body pieces up to this size are framed into one buffer with their chunk framing; larger ones
/// are written as they are between the framing.
const COALESCE: usize = 16 * 1024;

/// Where a response field lies in the buffer: `(start, len)` of its name and of its value.
type FieldSpan = ((usize, usize), (usize, usize));

/// One HTTP/1 exchange with a backend on our own codec.
pub(crate) struct OwnClient {
    stream: Stream,
    /// Bytes read and not yet handed on: the rest of a head being read, then body bytes.
    buf: BytesMut,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// A response with one invalid `Content-Length` is read until close instead of refused
    /// (the peer's `allow_h1_response_invalid_content_length`).
    allow_invalid_length: bool,
    sending: Sending,
    /// No final response head yet (none read, or only 1xx ones).
    awaiting_head: bool,
    /// The response body, once the final head set its framing.
    receiving: BodyState,
    /// The request went out with `HEAD`: its response has no body whatever it says.
    head_request: bool,
    /// The request asked for an upgrade (`Connection: upgrade` + `Upgrade`).
    upgrade_request: bool,
    /// The request said `Connection: close` (`Some(false)`) or `keep-alive` (`Some(true)`).
    request_keepalive: Option<bool>,
    response: Option<RespSummary>,
    upgraded: bool,
    /// The response's end was read with more bytes behind it: the backend said more than one
    /// response; the connection is not reused.
    overread: bool,
    keepalive: bool,
    /// How response heads are parsed: with or without the names' spelling.
    case: HeaderCase,
}

/// What keep-alive needs of the final response head.
#[derive(Debug, Clone, Copy)]
struct RespSummary {
    status: StatusCode,
    version: Version,
    /// `Connection` said keep-alive (`Some(true)`) or close (`Some(false)`).
    keepalive: Option<bool>,
    transfer_encoding: bool,
    close_delimited: bool,
}

impl OwnClient {
    /// A client session on `stream` (new or from the pool); `allow_invalid_length` as the peer's
    /// options say.
    pub(crate) fn new(stream: Stream, allow_invalid_length: bool) -> Self {
        OwnClient {
            stream,
            buf: BytesMut::new(),
            read_timeout: None,
            write_timeout: None,
            allow_invalid_length,
            sending: Sending::Done,
            awaiting_head: true,
            receiving: BodyState::Done,
            head_request: false,
            upgrade_request: false,
            request_keepalive: None,
            response: None,
            upgraded: false,
            overread: false,
            keepalive: false,
            case: HeaderCase::default(),
        }
    }

    /// Parses this connection's response heads with `case` (the default: [`HeaderCase::Normalize`]).
    pub(crate) fn header_case(mut self, case: HeaderCase) -> Self {
        self.case = case;
        self
    }

    /// Sends the request head; the body (if its framing announces one) follows with
    /// [`write_body`](Self::write_body) and [`finish_body`](Self::finish_body).
    pub(crate) async fn write_request_header<H: WireHead + ?Sized>(
        &mut self,
        req: &H,
    ) -> Result<()> {
        // Encoded in the read buffer, which holds nothing before the response (a new session),
        // sized for the reads that follow: the head and the response share one allocation.
        let reuse = self.buf.is_empty();
        let mut out = if reuse {
            std::mem::take(&mut self.buf)
        } else {
            BytesMut::new()
        };
        out.reserve(req.size_hint().max(READ_SPACE));
        let result = match req.encode(&mut out) {
            Ok(facts) => self.write_head(&out, &facts).await,
            Err(e) => Err(e),
        };
        if reuse {
            out.clear();
            self.buf = out;
        }
        result
    }

    /// Sends an encoded request head and takes note of what it asks for.
    async fn write_head(&mut self, out: &[u8], facts: &HeadFacts) -> Result<()> {
        self.head_request = facts.head_request;
        self.upgrade_request = facts.upgrade();
        self.request_keepalive = facts.keepalive;
        self.sending = facts.sending();
        self.write(out, "while writing request headers").await
    }

    /// Writes a piece of the request body by its framing. Bytes past a `Content-Length` are
    /// dropped (the client side framed the body by that length already).
    pub(crate) async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        match self.sending {
            Sending::Done => Ok(()),
            Sending::Length(left) => {
                let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                self.sending = if left == 0 {
                    Sending::Done
                } else {
                    Sending::Length(left)
                };
                self.write(&data[..n], "while writing request body").await
            }
            Sending::Chunked if data.is_empty() => Ok(()),
            Sending::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                if data.len() <= COALESCE {
                    let mut out = BytesMut::with_capacity(size.len() + data.len() + 2);
                    out.extend_from_slice(size.as_bytes());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                    self.write(&out, "while writing request body").await
                } else {
                    self.write(size.as_bytes(), "while writing request body")
                        .await?;
                    self.write(data, "while writing request body").await?;
                    self.write(b"\r\n", "while writing request body").await
                }
            }
        }
    }

    /// Ends the request body: the last chunk when chunked; a `Content-Length` body cut short is
    /// an error (the backend would wait for the rest).
    pub(crate) async fn finish_body(&mut self) -> Result<()> {
        match self.sending {
            Sending::Done => Ok(()),
            Sending::Chunked => {
                self.sending = Sending::Done;
                self.write(b"0\r\n\r\n", "while finishing request body")
                    .await
            }
            Sending::Length(left) => Error::e_explain(
                ErrorType::WriteError,
                format!("request body ended {left} bytes before its Content-Length"),
            ),
        }
    }

    /// Writes `data` whole and flushes it, within the write timeout.
    async fn write(&mut self, data: &[u8], what: &'static str) -> Result<()> {
        let stream = &mut self.stream;
        let written = async move {
            stream.write_all(data).await?;
            stream.flush().await
        };
        let result = match self.write_timeout {
            Some(t) => match tokio::time::timeout(t, written).await {
                Ok(r) => r,
                Err(_) => return Error::e_explain(ErrorType::WriteTimedout, what),
            },
            None => written.await,
        };
        result.map_err(|e| match e.kind() {
            ErrorKind::TimedOut => Error::because(ErrorType::WriteTimedout, what, e),
            _ => Error::because(ErrorType::WriteError, what, e),
        })
    }

    /// Reads more bytes into the buffer within the read timeout; `Ok(0)` at the end of stream.
    async fn fill(&mut self, what: &'static str) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SPACE / 4 {
            self.buf.reserve(READ_SPACE);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let result = match self.read_timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return Error::e_explain(ErrorType::ReadTimedout, what),
            },
            None => read.await,
        };
        result.map_err(|e| {
            // An OS error on a pooled connection is what a backend that closed it while idle
            // looks like: retried when the connection was reused (as pingora-core does); a TLS
            // error is not.
            let os = e.raw_os_error().is_some();
            let mut err = Error::because(ErrorType::ReadError, what, e);
            if os {
                err.retry = RetryType::ReusedOnly;
            }
            err
        })
    }

    /// The next piece of the response: a head (1xx ones first, then the final one, with
    /// whether the body already ended), body pieces, then [`HttpTask::Done`].
    pub(crate) async fn read_response_task(&mut self) -> Result<HttpTask> {
        if self.awaiting_head {
            let head = self.read_head().await?;
            // A 1xx head leaves the final one still to come.
            let end = !self.awaiting_head && self.receiving.is_done();
            return Ok(HttpTask::Header(head, end));
        }
        if self.receiving.is_done() {
            return Ok(HttpTask::Done);
        }
        let piece = self.read_piece().await?;
        let end = self.receiving.is_done();
        Ok(if self.upgraded {
            HttpTask::UpgradedBody(piece, end)
        } else {
            HttpTask::Body(piece, end)
        })
    }

    /// Reads and parses the next response head; sets the body's framing for a final one.
    async fn read_head(&mut self) -> Result<Box<ResponseHeader>> {
        // Bounded: every turn parses the buffer or reads at least one more byte (the end of
        // stream and errors return), and the head's size is capped.
        loop {
            if !self.buf.is_empty()
                && let Some(head) = self.parse_head()?
            {
                return Ok(head);
            }
            if self.buf.len() > MAX_RESPONSE_HEAD {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("response head larger than {MAX_RESPONSE_HEAD} bytes"),
                );
            }
            let already = self.buf.len();
            if self.fill("while reading response headers").await? == 0 {
                let mut e = Error::explain(
                    ErrorType::ConnectionClosed,
                    format!("while reading response headers, bytes already read: {already}"),
                );
                // A pooled connection the backend closed: the request may go on a fresh one.
                e.retry = RetryType::ReusedOnly;
                return Err(e);
            }
        }
    }

    /// Parses a head at the start of the buffer; `None` while it is partial.
    fn parse_head(&mut self) -> Result<Option<Box<ResponseHeader>>> {
        // Not initialised up front (256 empty fields cost more than parsing a short head).
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let mut config = httparse::ParserConfig::default();
        // What pingora-core's client accepts from backends.
        config.allow_spaces_after_header_name_in_responses(true);
        config.allow_obsolete_multiline_headers_in_responses(true);
        let len = match config.parse_response_with_uninit_headers(&mut resp, &self.buf, &mut fields)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(Error::because(
                    ErrorType::InvalidHTTPHeader,
                    "while parsing response headers",
                    e,
                ));
            }
        };
        let (Some(code), Some(minor)) = (resp.code, resp.version) else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "incomplete status line");
        };
        // Offsets into the buffer, so the fields can be cut out of the frozen head below
        // without copying them.
        // Inline for the usual few fields: no allocation per response for them.
        let base = self.buf.as_ptr() as usize;
        let spans: SmallVec<[FieldSpan; 24]> = resp
            .headers
            .iter()
            .map(|f| {
                let name = f.name.as_ptr() as usize - base;
                let value = f.value.as_ptr() as usize - base;
                ((name, f.name.len()), (value, f.value.len()))
            })
            .collect();
        let fields = spans.len();
        let status = StatusCode::from_u16(code)
            .or_err(ErrorType::InvalidHTTPHeader, "invalid status code")?;
        // Only a phrase other than the status's own is kept (and copied).
        let reason = resp
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .map(str::to_owned);
        let head_bytes = self.buf.split_to(len).freeze();
        // Room for the field the response filters add (served-by); our `Date` and
        // `Connection` are written beside the head, not into it (session.rs, put_fields), and
        // a route's header filters that add fields grow it.
        let room = Some(fields + 1);
        let mut head = Box::new(match self.case {
            HeaderCase::Normalize => ResponseHeader::build_no_case(status, room)?,
            HeaderCase::Preserve => ResponseHeader::build(status, room)?,
        });
        head.set_version(if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
        head.set_reason_phrase(reason.as_deref())?;
        let mut lengths = Lengths::default();
        let mut transfer_encoding: Option<bool> = None;
        let mut keepalive = None;
        for &((n, nl), (v, vl)) in &spans {
            let name = head_bytes.slice(n..n + nl);
            let value = head_bytes.slice(v..v + vl);
            if name.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str().as_bytes()) {
                lengths.add(&value);
            } else if name.eq_ignore_ascii_case(header::TRANSFER_ENCODING.as_str().as_bytes()) {
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .map(<[u8]>::trim_ascii)
                    .unwrap_or_default();
                transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(header::CONNECTION.as_str().as_bytes()) {
                keepalive = connection_tokens(&value).or(keepalive);
            }
            head.append_header(name, pingora_http::header_value_from_raw(value))
                .map_err(|e| {
                    Error::because(
                        ErrorType::InvalidHTTPHeader,
                        "while parsing response headers",
                        e,
                    )
                })?;
        }
        let status = head.status;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the final head is still to come.
            return Ok(Some(head));
        }
        if transfer_encoding.is_some() && lengths.seen {
            // Transfer-Encoding overrides Content-Length (RFC 9112 section 6.3).
            head.remove_header(&header::CONTENT_LENGTH);
        }
        let mut close_delimited = false;
        self.awaiting_head = false;
        self.receiving = if self.head_request
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        {
            BodyState::Done
        } else if status == StatusCode::SWITCHING_PROTOCOLS {
            // Everything after a 101 to an upgrade request is the upgraded protocol's (the
            // tunnel takes it with `into_parts`); a 101 to any other request is refused by the
            // driver.
            self.upgraded = self.upgrade_request;
            close_delimited = true;
            BodyState::UntilClose
        } else {
            match transfer_encoding {
                Some(true) => BodyState::Chunked(ChunkedDecoder::new()),
                Some(false) => {
                    close_delimited = true;
                    BodyState::UntilClose
                }
                None => match lengths.framing() {
                    Ok(Some(0)) => BodyState::Done,
                    Ok(Some(n)) => BodyState::Length(n),
                    Ok(None) => {
                        close_delimited = true;
                        BodyState::UntilClose
                    }
                    Err(why) if self.allow_invalid_length && lengths.single => {
                        tracing::debug!(why, "invalid Content-Length read as close-delimited");
                        close_delimited = true;
                        BodyState::UntilClose
                    }
                    Err(why) => return Error::e_explain(ErrorType::InvalidHTTPHeader, why),
                },
            }
        };
        self.response = Some(RespSummary {
            status,
            version: head.version,
            keepalive,
            transfer_encoding: transfer_encoding.is_some(),
            close_delimited,
        });
        if self.receiving.is_done() && !self.buf.is_empty() {
            self.overread = true;
        }
        Ok(Some(head))
    }

    /// The next body piece by its framing; `None` at the end of a close-delimited body.
    async fn read_piece(&mut self) -> Result<Option<Bytes>> {
        if self.awaiting_head {
            return Ok(None);
        }
        // Bounded: every turn takes a piece, ends, or reads at least one more byte.
        loop {
            let taken = self
                .receiving
                .take(&mut self.buf)
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?;
            if self.receiving.is_done() && !self.buf.is_empty() {
                // Bytes behind the response's end: the backend said more than one response.
                self.overread = true;
            }
            match taken {
                Take::Piece(piece) => return Ok(Some(piece)),
                Take::End => return Ok(None),
                Take::More => {}
            }
            if self.fill("while reading response body").await? == 0 {
                if self.receiving.at_close() {
                    return Ok(None);
                }
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "backend closed before the end of the response body",
                );
            }
        }
    }

    /// The request asked for an upgrade and the backend answered 101.
    pub(crate) fn was_upgraded(&self) -> bool {
        self.upgraded
    }

    /// Decides whether the connection may be reused: as pingora-core's session decides it.
    pub(crate) fn respect_keepalive(&mut self) {
        let Some(resp) = self.response else {
            self.keepalive = false;
            return;
        };
        self.keepalive = if self.upgraded
            || resp.status == StatusCode::SWITCHING_PROTOCOLS
            || resp.close_delimited
            || self.overread
            // RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 response closes.
            || (resp.version == Version::HTTP_10 && resp.transfer_encoding)
        {
            false
        } else {
            match (self.request_keepalive, resp.keepalive) {
                (Some(false), _) => false,
                (_, Some(k)) => k,
                (_, None) => resp.version == Version::HTTP_11,
            }
        };
    }

    /// The stream for the pool when the exchange ended cleanly and keep-alive allows it;
    /// otherwise the connection is shut down.
    pub(crate) async fn reuse(mut self) -> Option<Stream> {
        let clean = !self.awaiting_head
            && self.receiving.is_done()
            && self.sending == Sending::Done
            && self.buf.is_empty();
        if self.keepalive && clean {
            return Some(self.stream);
        }
        // Best effort: a TLS backend gets its close_notify; errors change nothing.
        let _ = self.stream.shutdown().await;
        None
    }

    /// The stream and the bytes already read past the 101 (the upgraded protocol's first).
    pub(crate) fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::Method;
    use pingora_core::protocols::l4::stream::Stream as L4;
    use pingora_http::RequestHeader;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A client on one end of a loopback connection and the raw backend end.
    async fn pair() -> (OwnClient, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let stream: Stream = Box::new(L4::from(client.unwrap()));
        (OwnClient::new(stream, false), server.unwrap().0)
    }

    fn get(path: &str) -> Box<RequestHeader> {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        req.insert_header("Host", "backend").unwrap();
        Box::new(req)
    }

    /// Reads what the backend end received until `want` bytes came.
    async fn received(server: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        server.read_exact(&mut got).await.unwrap();
        got
    }

    /// All pieces of the response until Done: (head, concatenated body, pieces seen).
    async fn whole(c: &mut OwnClient) -> (Box<ResponseHeader>, Vec<u8>) {
        let mut head = None;
        let mut body = Vec::new();
        for _ in 0..1000 {
            match c.read_response_task().await.unwrap() {
                HttpTask::Header(h, end) => {
                    let informational = h.status.is_informational();
                    if !informational {
                        head = Some(h);
                    }
                    if end {
                        break;
                    }
                }
                HttpTask::Body(b, end) | HttpTask::UpgradedBody(b, end) => {
                    if let Some(b) = b {
                        body.extend_from_slice(&b);
                    }
                    if end {
                        break;
                    }
                }
                HttpTask::Done => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        (head.unwrap(), body)
    }

    #[tokio::test]
    async fn a_get_goes_up_as_written_and_a_length_framed_answer_keeps_the_connection() {
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/a?b=1")).await.unwrap();
        c.finish_body().await.unwrap();
        let want = b"GET /a?b=1 HTTP/1.1\r\nHost: backend\r\n\r\n";
        assert_eq!(received(&mut s, want.len()).await, want);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: Kept\r\n\r\nhello")
            .await
            .unwrap();
        let (head, body) = whole(&mut c).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["x-case"], "Kept");
        assert_eq!(body, b"hello");
        c.respect_keepalive();
        assert!(c.reuse().await.is_some());
    }

    #[tokio::test]
    async fn chunked_answers_split_anywhere_decode_whole() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for cut in [1, 20, 45, 50, 60, answer.len() - 1] {
            let (mut c, mut s) = pair().await;
            c.write_request_header(&get("/")).await.unwrap();
            let (first, rest) = answer.split_at(cut);
            let task = tokio::spawn(async move {
                s.write_all(first).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
                s.write_all(rest).await.unwrap();
                s
            });
            let (head, body) = whole(&mut c).await;
            assert_eq!(head.status, 200, "cut {cut}");
            assert_eq!(body, b"hello world", "cut {cut}");
            let _s = task.await.unwrap();
            c.respect_keepalive();
            assert!(c.reuse().await.is_some(), "cut {cut}");
        }
    }

    #[tokio::test]
    async fn an_unframed_answer_ends_at_close_and_is_not_reused() {
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        let want = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n";
        assert_eq!(received(&mut s, want.len()).await, want);
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
            .await
            .unwrap();
        drop(s);
        let (_, body) = whole(&mut c).await;
        assert_eq!(body, b"until close");
        c.respect_keepalive();
        assert!(c.reuse().await.is_none());
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_they_say() {
        for (method, status) in [("HEAD", 200), ("GET", 204), ("GET", 304)] {
            let (mut c, mut s) = pair().await;
            let mut req = get("/");
            req.set_method(method.parse().unwrap());
            c.write_request_header(&req).await.unwrap();
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n");
            s.write_all(answer.as_bytes()).await.unwrap();
            match c.read_response_task().await.unwrap() {
                HttpTask::Header(h, end) => {
                    assert_eq!(h.status, status);
                    assert!(end, "{method} {status}");
                }
                other => panic!("{other:?}"),
            }
            c.respect_keepalive();
            assert!(c.reuse().await.is_some(), "{method} {status}");
        }
    }

    #[tokio::test]
    async fn informational_heads_come_before_the_final_one() {
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            match c.read_response_task().await.unwrap() {
                HttpTask::Header(h, _) => statuses.push(h.status.as_u16()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(statuses, [100, 103, 200]);
        match c.read_response_task().await.unwrap() {
            HttpTask::Body(Some(b), true) => assert_eq!(&b[..], b"ok"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn ambiguous_lengths_are_refused_and_equal_ones_are_one() {
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
            .await
            .unwrap();
        let e = c.read_response_task().await.unwrap_err();
        assert_eq!(*e.etype(), ErrorType::InvalidHTTPHeader);

        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!(whole(&mut c).await.1, b"abc");

        // Transfer-Encoding beats Content-Length, which is dropped from the head.
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = whole(&mut c).await;
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(body, b"x");
    }

    #[tokio::test]
    async fn bytes_past_the_response_keep_the_connection_out_of_the_pool() {
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
            .await
            .unwrap();
        assert_eq!(whole(&mut c).await.1, b"ok");
        c.respect_keepalive();
        assert!(c.reuse().await.is_none());
    }

    #[tokio::test]
    async fn keepalive_follows_version_and_connection() {
        for (answer, reused) in [
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        ] {
            let (mut c, mut s) = pair().await;
            c.write_request_header(&get("/")).await.unwrap();
            s.write_all(answer.as_bytes()).await.unwrap();
            whole(&mut c).await;
            c.respect_keepalive();
            assert_eq!(c.reuse().await.is_some(), reused, "{answer}");
        }
        // The request's `Connection: close` wins over the backend's keep-alive.
        let (mut c, mut s) = pair().await;
        let mut req = get("/");
        req.insert_header("Connection", "close").unwrap();
        c.write_request_header(&req).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        whole(&mut c).await;
        c.respect_keepalive();
        assert!(c.reuse().await.is_none());
    }

    #[tokio::test]
    async fn request_bodies_are_framed_by_their_head() {
        let (mut c, mut s) = pair().await;
        let mut req = get("/");
        req.set_method(Method::POST);
        req.insert_header("Transfer-Encoding", "chunked").unwrap();
        c.write_request_header(&req).await.unwrap();
        c.write_body(b"hello").await.unwrap();
        c.write_body(b"").await.unwrap();
        c.finish_body().await.unwrap();
        let want = b"POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(received(&mut s, want.len()).await, want);

        let (mut c, mut s) = pair().await;
        let mut req = get("/");
        req.set_method(Method::POST);
        req.insert_header("Content-Length", "3").unwrap();
        c.write_request_header(&req).await.unwrap();
        c.write_body(b"ab").await.unwrap();
        assert!(
            c.finish_body().await.is_err(),
            "a body cut short is an error"
        );
        c.write_body(b"cdef").await.unwrap();
        c.finish_body().await.unwrap();
        let want = b"POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(received(&mut s, want.len()).await, want);
    }

    #[tokio::test]
    async fn a_closed_pooled_connection_is_retryable_and_a_garbled_head_is_not() {
        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        let want = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n";
        // Read first: a socket closed with unread bytes answers with a reset, not an end.
        assert_eq!(received(&mut s, want.len()).await, want);
        drop(s);
        let e = c.read_response_task().await.unwrap_err();
        assert_eq!(*e.etype(), ErrorType::ConnectionClosed);
        assert!(matches!(e.retry, RetryType::ReusedOnly));

        let (mut c, mut s) = pair().await;
        c.write_request_header(&get("/")).await.unwrap();
        s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
        let e = c.read_response_task().await.unwrap_err();
        assert_eq!(*e.etype(), ErrorType::InvalidHTTPHeader);
    }

    #[tokio::test]
    async fn a_101_to_an_upgrade_hands_over_the_bytes_behind_it() {
        let (mut c, mut s) = pair().await;
        let mut req = get("/ws");
        req.insert_header("Connection", "Upgrade").unwrap();
        req.insert_header("Upgrade", "websocket").unwrap();
        c.write_request_header(&req).await.unwrap();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
            .await
            .unwrap();
        match c.read_response_task().await.unwrap() {
            HttpTask::Header(h, false) => assert_eq!(h.status, 101),
            other => panic!("{other:?}"),
        }
        assert!(c.was_upgraded());
        let (_, leftover) = c.into_parts();
        assert_eq!(&leftover[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn a_version_other_than_http1_is_refused_before_anything_is_written() {
        let (mut c, _s) = pair().await;
        let mut req = get("/");
        req.set_version(Version::HTTP_2);
        let e = c.write_request_header(&req).await.unwrap_err();
        assert_eq!(*e.etype(), ErrorType::InvalidHTTPHeader);
    }
}
