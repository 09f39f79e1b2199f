//! [`OwnSession`]: one HTTP/1 request of a client connection, read and answered by our own codec
//! over pingora's [`Stream`] (plain or TLS: the same digests, addresses and buffering as on the
//! pingora-core path), implementing [`Downstream`] for the roles, the Forwarder and the lean
//! driver, and [`Connection`] for the driver's lifecycle.
//!
//! ```text
//! new(stream, bytes left by the previous request)
//!   read_request: parse_head where the bytes lie (head.rs); read more only when it is partial
//!   body by its framing: Content-Length countdown | ChunkedDecoder | after a 101: until close
//!     retry buffer: what was read, up to 64 KiB (then truncated: no replay)
//!   response: head (+ Date, Connection) and the body pieces that came with it in one write;
//!     a body framed by Content-Length as is, chunked when the head says so, close-delimited
//!     otherwise (connection closed after it); HEAD, 204 and 304 never carry a body
//!   finish: keep-alive? drain a small unread body, then the stream and the bytes already read
//!     past this request (a pipelined request) go back to the accept loop
//! ```
//!
//! The rules follow pingora-core 0.9.1's server session, so both HTTP/1 paths answer alike:
//! keep-alive from the version and `Connection` (1.1 on unless `close`, 1.0 only with
//! `keep-alive`), closed when the response starts before the request body was read whole, when
//! the response is close-delimited or a 101; body reads time out after 60 s; bytes a client sends
//! while its response is awaited are kept for its next request (pingora-core refuses them unless
//! its pipelining is on).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, Version, header};
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::http::authority::validate_request_authority;
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::http::error_resp::gen_error_response;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::{Digest, Stream};
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::{BodyState, Take};
use super::chunked::ChunkedDecoder;
use super::head::{BodyFraming, parse_head};
use super::wire;
use super::{CodecError, HeaderCase};
use crate::gateway::Downstream;
use crate::lean::Connection;
use crate::limits::ConnClock;

/// The error of a head above the parse limits (answered 431 by the driver).
pub(crate) const HEAD_TOO_LARGE: ErrorType = ErrorType::Custom("request head too large");

/// Buffer space made ready before a read into the read buffer.
const READ_SPACE: usize = 4096;
/// Most request body bytes kept for a retry (pingora-core's limit).
const RETRY_LIMIT: usize = 64 * 1024;
/// A body read waiting this long fails (pingora-core's default downstream read timeout).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Body pieces up to this size are copied behind the head into one write; larger ones are
/// written as they are (the buffered stream still sends the head with them).
const COALESCE: usize = 16 * 1024;
/// Most unread request body drained before a kept-alive connection takes its next request; a
/// longer rest closes the connection instead.
const MAX_DRAIN: usize = 1024 * 1024;

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// No final response head yet.
    Unset,
    /// This many bytes are still to go.
    Length(u64),
    Chunked,
    /// Until the connection closes.
    UntilClose,
    /// Ended (a terminating chunk written, or the connection is to close).
    Done,
}

/// One request of an HTTP/1 client connection on our own codec.
pub(crate) struct OwnSession {
    stream: Stream,
    /// Bytes read and not consumed: the rest of the head being read, then body bytes, then the
    /// start of a pipelined request.
    buf: BytesMut,
    digest: Digest,
    req: RequestHeader,
    reading: BodyState,
    body_empty: bool,
    retry: Option<BytesMut>,
    retry_truncated: bool,
    /// The client's request allows keep-alive (version, `Connection`, framing).
    client_keepalive: bool,
    keepalive: bool,
    /// Requests this connection may still serve after this one (`None`: no limit).
    reuses_remaining: Option<u32>,
    half_closed: bool,
    /// The response head as the hooks left it (our `Date` and `Connection` were written
    /// beside it, not into it: put_fields).
    written: Option<Box<ResponseHeader>>,
    writing: Writing,
    upgraded: bool,
    bytes_read: usize,
    bytes_sent: usize,
    clock: Option<Arc<ConnClock>>,
    /// How request heads are parsed: with or without the names' spelling (the response heads
    /// the roles hand us keep what they were built with).
    case: HeaderCase,
}

/// What a kept-alive connection hands to the next request.
pub(crate) struct Kept {
    pub stream: Stream,
    /// Bytes already read past this request (a pipelined request's); empty ones hold no memory.
    pub leftover: BytesMut,
    pub reuses_remaining: Option<u32>,
    /// The connection's digest (addresses, TLS, timing): the same for every request of it, so
    /// it is made once per connection rather than once per request.
    pub digest: Digest,
}

impl OwnSession {
    /// The session of the next request on `stream`; `leftover` are bytes the previous request
    /// read past its end, `reuses_remaining` how many more requests the connection may serve
    /// after this one, `clock` the connection's deadlines (told when the head is read),
    /// `digest` the one the previous request of the connection kept (`None`: read it from the
    /// stream).
    pub(crate) fn new(
        stream: Stream,
        leftover: BytesMut,
        reuses_remaining: Option<u32>,
        digest: Option<Digest>,
        clock: Option<Arc<ConnClock>>,
    ) -> Self {
        let digest = digest.unwrap_or_else(|| Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        OwnSession {
            stream,
            buf: leftover,
            digest,
            req: RequestHeader::from(http::Request::new(()).into_parts().0),
            reading: BodyState::Done,
            body_empty: true,
            retry: None,
            retry_truncated: false,
            client_keepalive: false,
            keepalive: false,
            reuses_remaining,
            half_closed: false,
            written: None,
            writing: Writing::Unset,
            upgraded: false,
            bytes_read: 0,
            bytes_sent: 0,
            clock,
            case: HeaderCase::default(),
        }
    }

    /// Parses this connection's request heads with `case` (the default: [`HeaderCase::Normalize`]).
    pub(crate) fn header_case(mut self, case: HeaderCase) -> Self {
        self.case = case;
        self
    }

    fn will_keepalive(&self) -> bool {
        self.keepalive && self.reuses_remaining != Some(0)
    }

    /// Takes a parsed head: the body's framing, keep-alive, the authority checks.
    fn start(&mut self, head: super::head::Head) -> Result<()> {
        self.req = head.header;
        self.body_empty = head.body == BodyFraming::Empty;
        self.reading = match head.body {
            BodyFraming::Empty => BodyState::Done,
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
        };
        self.client_keepalive = connection_keepalive(&self.req)
            .unwrap_or(self.req.version == Version::HTTP_11)
            && !head.close;
        self.keepalive = self.client_keepalive;
        // An absolute-form target and `Host` must agree, `Host` must be single, no userinfo.
        validate_request_authority(&self.req)
    }

    /// Makes room for a read into `buf`.
    fn reserve(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_SPACE / 4 {
            self.buf.reserve(READ_SPACE);
        }
    }

    /// The next piece of the body by its framing (no timeout, no accounting).
    async fn read_piece(&mut self) -> Result<Option<Bytes>> {
        // Bounded: every turn takes a piece, ends, or reads at least one more byte (the
        // client's end of stream ends it).
        loop {
            match self
                .reading
                .take(&mut self.buf)
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?
            {
                Take::Piece(piece) => return Ok(Some(piece)),
                Take::End => return Ok(None),
                Take::More => {}
            }
            self.reserve();
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .or_err(ErrorType::ReadError, "reading the request body")?;
            if n == 0 {
                if self.reading.at_close() {
                    return Ok(None);
                }
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "client closed before the end of the request body",
                );
            }
        }
    }

    /// Writes the response head into `out`; `false` when it is not to be written (a second
    /// final head).
    fn put_head(&mut self, head: Box<ResponseHeader>, out: &mut BytesMut) -> Result<bool> {
        if let Some(written) = &self.written
            && (!written.status.is_informational() || self.upgraded)
        {
            tracing::debug!("a response head was already written; another one is dropped");
            return Ok(false);
        }
        if !matches!(self.reading, BodyState::Done) {
            // Answered before the request was read whole: the unread rest would be taken for
            // the next request.
            self.keepalive = false;
        }
        let status = head.status;
        let is_final = status == StatusCode::SWITCHING_PROTOCOLS || !status.is_informational();
        if is_final {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                self.keepalive = false;
            }
            self.writing = if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
                || self.req.method == Method::HEAD
            {
                Writing::Length(0)
            } else if self.is_upgrade(&head) == Some(true) {
                // Everything after the 101 is the upgraded protocol's, both ways.
                self.upgraded = true;
                self.reading = BodyState::UntilClose;
                Writing::UntilClose
            } else {
                response_framing(&head)
            };
            if self.writing == Writing::UntilClose {
                self.keepalive = false;
            }
        }
        // A final head gets our `Date` and `Connection`, in place of the backend's (where its
        // first one was) or after its fields, as `insert_header` would put them; written
        // straight into `out` instead of into the head's map (two name conversions and map
        // edits per response).
        let ours = (!status.is_informational()).then(|| {
            let connection = if self.will_keepalive() {
                "keep-alive"
            } else {
                "close"
            };
            (get_cached_date(), HeaderValue::from_static(connection))
        });
        let version: &[u8] = match head.version {
            Version::HTTP_10 => b"HTTP/1.0 ",
            Version::HTTP_11 => b"HTTP/1.1 ",
            _ => {
                return Error::e_explain(
                    ErrorType::WriteError,
                    "response version other than HTTP/1.x",
                );
            }
        };
        out.extend_from_slice(version);
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        if let Some(reason) = head.get_reason_phrase() {
            out.extend_from_slice(reason.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        match &ours {
            None => head.header_to_h1_wire(out),
            Some((date, connection)) => put_fields(&head, date, connection, out),
        }
        out.extend_from_slice(b"\r\n");
        if let Writing::Length(0) = self.writing {
            self.writing = Writing::Done;
        }
        self.written = Some(head);
        Ok(true)
    }

    /// Frames `data` as the response body into `out` (or straight to the stream when large).
    async fn put_body(&mut self, data: &[u8], out: &mut BytesMut) -> Result<()> {
        let data = match self.writing {
            Writing::Length(left) => {
                let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                self.writing = if left == 0 {
                    Writing::Done
                } else {
                    Writing::Length(left)
                };
                &data[..n]
            }
            Writing::UntilClose => data,
            Writing::Chunked if !data.is_empty() => {
                put_chunk_size(data.len(), out);
                self.emit(data, out).await?;
                out.extend_from_slice(b"\r\n");
                self.bytes_sent += data.len();
                return Ok(());
            }
            // Nothing (more) may go out.
            Writing::Chunked | Writing::Unset | Writing::Done => return Ok(()),
        };
        self.emit(data, out).await?;
        self.bytes_sent += data.len();
        Ok(())
    }

    /// Appends `data` to `out`, or writes `out` and then `data` when `data` is large.
    async fn emit(&mut self, data: &[u8], out: &mut BytesMut) -> Result<()> {
        if data.len() <= COALESCE {
            out.extend_from_slice(data);
            return Ok(());
        }
        self.write(out).await?;
        out.clear();
        self.stream
            .write_all(data)
            .await
            .or_err(ErrorType::WriteError, "writing the response body")
    }

    /// Ends the response body into `out` (the last chunk of a chunked one).
    fn put_end(&mut self, out: &mut BytesMut) {
        match self.writing {
            Writing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                self.writing = Writing::Done;
            }
            Writing::Length(_) => {
                // Shorter than announced: the client waits for bytes that never come unless
                // the connection closes.
                self.keepalive = false;
                self.writing = Writing::Done;
            }
            Writing::UntilClose => self.writing = Writing::Done,
            Writing::Unset | Writing::Done => {}
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(bytes)
            .await
            .or_err(ErrorType::WriteError, "writing the response")
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream
            .flush()
            .await
            .or_err(ErrorType::WriteError, "flushing the response")
    }

    /// Ends the response body and sends what is buffered.
    async fn finish_body(&mut self) -> Result<()> {
        let mut out = BytesMut::new();
        self.put_end(&mut out);
        self.write(&out).await?;
        self.flush().await
    }
}

/// Writes `head`'s fields with `date` and `connection` in place of its own `Date` and
/// `Connection` (at the first of each), or after them: the bytes `insert_header` of both and
/// `header_to_h1_wire` give, names spelled as the head's case map says or as pingora writes a
/// name without one.
fn put_fields(
    head: &ResponseHeader,
    date: &HeaderValue,
    connection: &HeaderValue,
    out: &mut BytesMut,
) {
    let (mut date_sent, mut connection_sent) = (false, false);
    let mut spelled = head.case_header_iter();
    for (name, value) in &head.headers {
        let case = spelled.next().map(|(c, _)| c.as_slice());
        let ours = if *name == header::DATE {
            Some((std::mem::replace(&mut date_sent, true), date))
        } else if *name == header::CONNECTION {
            Some((std::mem::replace(&mut connection_sent, true), connection))
        } else {
            None
        };
        match ours {
            // A second field of the name: gone, as `insert_header` leaves one.
            Some((true, _)) => {}
            Some((false, v)) => wire::field(wire::titled(name).as_bytes(), v.as_bytes(), out),
            None => {
                let written = case.unwrap_or_else(|| wire::titled(name).as_bytes());
                wire::field(written, value.as_bytes(), out);
            }
        }
    }
    if !date_sent {
        wire::field(b"Date", date.as_bytes(), out);
    }
    if !connection_sent {
        wire::field(b"Connection", connection.as_bytes(), out);
    }
}

/// Writes a chunk-size line (`len` in hex, CRLF) without allocating.
fn put_chunk_size(len: usize, out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut at = digits.len();
    let mut n = len;
    for _ in 0..digits.len() {
        at -= 1;
        digits[at] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// What `Connection` says about keep-alive: `close` wins, then `keep-alive`.
fn connection_keepalive(req: &RequestHeader) -> Option<bool> {
    let mut keepalive = None;
    for value in req.headers.get_all(header::CONNECTION) {
        for token in value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
        {
            if token.eq_ignore_ascii_case(b"close") {
                return Some(false);
            }
            if token.eq_ignore_ascii_case(b"keep-alive") {
                keepalive = Some(true);
            }
        }
    }
    keepalive
}

/// The framing a final response head announces: chunked when its last transfer coding is,
/// else its `Content-Length`, else until the connection closes.
fn response_framing(head: &ResponseHeader) -> Writing {
    if let Some(te) = head
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let last = te
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .map(<[u8]>::trim_ascii)
            .unwrap_or_default();
        if last.eq_ignore_ascii_case(b"chunked") {
            return Writing::Chunked;
        }
    }
    let length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match length {
        Some(0) => Writing::Length(0),
        Some(n) => Writing::Length(n),
        None => Writing::UntilClose,
    }
}

fn codec_error(e: CodecError) -> Box<Error> {
    let etype = if e.status() == 431 {
        HEAD_TOO_LARGE
    } else {
        ErrorType::InvalidHTTPHeader
    };
    Error::explain(etype, e.to_string())
}

impl Downstream for OwnSession {
    async fn read_request(&mut self) -> Result<bool> {
        // Bounded: every turn reads at least one byte or returns, and parse_head refuses a head
        // longer than its limit.
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, self.case) {
                    Ok(Some(head)) => {
                        self.start(head)?;
                        return Ok(true);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(codec_error(e)),
                }
            }
            self.reserve();
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Ok(false),
                Ok(0) => {
                    return Error::e_explain(
                        ErrorType::ConnectionClosed,
                        "client closed in the request head",
                    );
                }
                Ok(_) => {}
                // Nothing of a request yet: a closed or timed-out idle connection.
                Err(e) if self.buf.is_empty() => {
                    tracing::debug!(error = %e, "no request head");
                    return Ok(false);
                }
                Err(e) => {
                    return Error::e_because(ErrorType::ReadError, "reading the request head", e);
                }
            }
        }
    }

    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        let piece = match tokio::time::timeout(BODY_READ_TIMEOUT, self.read_piece()).await {
            Ok(piece) => piece?,
            Err(_) => {
                return Error::e_explain(ErrorType::ReadTimedout, "reading the request body");
            }
        };
        if let Some(piece) = &piece {
            self.bytes_read += piece.len();
            if let Some(retry) = self.retry.as_mut()
                && !self.retry_truncated
            {
                if retry.len() + piece.len() > RETRY_LIMIT {
                    self.retry_truncated = true;
                    *retry = BytesMut::new();
                } else {
                    retry.extend_from_slice(piece);
                }
            }
        }
        Ok(piece)
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if !(no_body_expected || matches!(self.reading, BodyState::Done)) {
            return self.read_request_body().await;
        }
        let why = if self.written.is_none() {
            "client closed before the response head"
        } else {
            "client closed before the response body's end"
        };
        if self.half_closed {
            return Error::e_explain(ErrorType::ConnectionClosed, why);
        }
        if self.buf.is_empty() {
            self.reserve();
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .or_err(ErrorType::ReadError, "waiting for the response")?;
            if n == 0 {
                self.half_closed = true;
                self.keepalive = false;
                return Error::e_explain(ErrorType::ConnectionClosed, why);
            }
        }
        // Bytes past the request: the next (pipelined) request's, kept in the buffer for it.
        // Nothing more to do here until the response is done.
        std::future::pending().await
    }

    fn is_body_done(&mut self) -> bool {
        matches!(self.reading, BodyState::Done)
    }

    fn is_body_empty(&mut self) -> bool {
        self.body_empty
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry.is_none() {
            self.retry = Some(BytesMut::new());
        }
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        if self.retry_truncated {
            return None;
        }
        self.retry
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| Bytes::copy_from_slice(b))
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry_truncated
    }

    fn is_upgrade_req(&self) -> bool {
        self.req.version == Version::HTTP_11 && self.req.headers.contains_key(header::UPGRADE)
    }

    fn is_upgrade(&self, header: &ResponseHeader) -> Option<bool> {
        self.is_upgrade_req().then(|| {
            header.status == StatusCode::SWITCHING_PROTOCOLS && header.version == Version::HTTP_11
        })
    }

    fn set_keepalive(&mut self, duration: Option<u64>) {
        // The proxy may close a connection the client would keep, never keep one the client
        // did not ask to keep (pingora-core only respects an explicit `Connection: close`).
        self.keepalive = duration.is_some() && self.client_keepalive;
    }

    async fn respond_error(&mut self, code: u16) -> Result<()> {
        self.write_error_response(gen_error_response(code), Bytes::new())
            .await
    }

    async fn write_error_response(&mut self, resp: ResponseHeader, body: Bytes) -> Result<()> {
        // An answer of the proxy's own closes the connection (as pingora-core's does).
        self.keepalive = false;
        if let Some(written) = &self.written
            && (!written.status.is_informational() || written.status == 101)
        {
            return Ok(());
        }
        self.write_response_header(Box::new(resp)).await?;
        self.write_response_body(body, true).await
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>) -> Result<()> {
        let mut out = BytesMut::with_capacity(512);
        if !self.put_head(resp, &mut out)? {
            return Ok(());
        }
        self.write(&out).await?;
        if !matches!(self.writing, Writing::Length(_)) {
            // Informational, bodyless, chunked or close-delimited: the client may need it now.
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if data.is_empty() && !end {
            return Ok(());
        }
        let mut out = BytesMut::new();
        self.put_body(&data, &mut out).await?;
        if end {
            self.put_end(&mut out);
        }
        self.write(&out).await?;
        if end || matches!(self.writing, Writing::Chunked | Writing::UntilClose) {
            self.flush().await?;
        }
        Ok(())
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut out = BytesMut::new();
        let mut end = false;
        for task in tasks {
            end = match task {
                HttpTask::Header(head, end) => {
                    if out.capacity() == 0 {
                        out.reserve(512);
                    }
                    self.put_head(head, &mut out).map_err(|e| e.into_down())?;
                    end
                }
                HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                    if let Some(data) = data {
                        self.put_body(&data, &mut out)
                            .await
                            .map_err(|e| e.into_down())?;
                    }
                    end
                }
                // HTTP/1 trailers are not sent (as on pingora's path).
                HttpTask::Trailer(_) | HttpTask::Done => true,
                HttpTask::Failed(e) => {
                    // What is already framed still goes out.
                    self.write(&out).await.map_err(|e| e.into_down())?;
                    self.flush().await.map_err(|e| e.into_down())?;
                    return Err(e);
                }
            };
        }
        if end {
            self.put_end(&mut out);
        }
        self.write(&out).await.map_err(|e| e.into_down())?;
        self.flush().await.map_err(|e| e.into_down())?;
        Ok(end || self.writing == Writing::Done)
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.written.as_deref()
    }

    fn body_bytes_read(&self) -> usize {
        self.bytes_read
    }

    fn body_bytes_sent(&self) -> usize {
        self.bytes_sent
    }

    fn digest(&self) -> Option<&Digest> {
        Some(&self.digest)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.digest.socket_digest.as_ref()?.peer_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.digest.socket_digest.as_ref()?.local_addr()
    }

    async fn shutdown(&mut self) {
        if let Err(e) = self.stream.shutdown().await {
            tracing::debug!(error = %e, "shutting the client connection down");
        }
    }
}

impl Connection for OwnSession {
    type Reused = Kept;

    fn header_read(&mut self) {
        if let Some(clock) = &self.clock {
            clock.busy();
        }
    }

    fn on_proxy_failure(&mut self, _e: Box<Error>) {
        // Nothing to clean up beyond what `finish` and dropping the session do.
    }

    async fn finish(mut self) -> Option<Kept> {
        if let Err(e) = self.finish_body().await {
            tracing::debug!(error = %e, "response not finished");
            return None;
        }
        if !self.will_keepalive() {
            self.shutdown().await;
            return None;
        }
        // Bounded by MAX_DRAIN: a longer unread body closes the connection instead.
        let mut drained = 0;
        while !matches!(self.reading, BodyState::Done) {
            match self.read_request_body().await {
                Ok(Some(piece)) => {
                    drained += piece.len();
                    if drained > MAX_DRAIN {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "request body not drained");
                    return None;
                }
            }
        }
        let leftover = if self.buf.is_empty() {
            // Held by an idle connection otherwise.
            BytesMut::new()
        } else {
            self.buf
        };
        Some(Kept {
            stream: self.stream,
            leftover,
            reuses_remaining: self.reuses_remaining.map(|n| n.saturating_sub(1)),
            digest: self.digest,
        })
    }

    fn into_stream(self) -> Option<Stream> {
        Some(self.stream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A session on one end of a loopback connection, the client on the other.
    async fn pair(leftover: &[u8]) -> (OwnSession, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(L4Stream::from(server));
        let session = OwnSession::new(stream, BytesMut::from(leftover), None, None, None);
        (session, client)
    }

    /// What the client receives until the proxy closes or `until` has arrived.
    async fn received(client: &mut TcpStream, until: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Bounded by the timeout: a missing answer fails the test instead of hanging it.
        let read = async {
            while !String::from_utf8_lossy(&got).contains(until) {
                let n = client.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        String::from_utf8(got).unwrap()
    }

    fn ok(len: usize) -> Box<ResponseHeader> {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-length", len).unwrap();
        Box::new(h)
    }

    #[tokio::test]
    async fn pipelined_requests_are_served_in_turn_from_the_leftover_bytes() {
        let (mut s, mut client) = pair(b"").await;
        client
            .write_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read_request().await.unwrap());
        assert_eq!(s.req_header().uri.path(), "/a");
        assert_eq!(&s.read_request_body().await.unwrap().unwrap()[..], b"hello");
        assert!(s.is_body_done());
        assert_eq!(s.read_request_body().await.unwrap(), None);
        s.response_duplex_vec(vec![
            HttpTask::Header(ok(2), false),
            HttpTask::Body(Some(Bytes::from_static(b"ok")), true),
        ])
        .await
        .unwrap();
        let kept = s.finish().await.unwrap();
        assert!(kept.leftover.starts_with(b"GET /b"));
        let answer = received(&mut client, "ok").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Connection: keep-alive\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        let mut next = OwnSession::new(kept.stream, kept.leftover, None, Some(kept.digest), None);
        assert!(next.read_request().await.unwrap());
        assert_eq!(next.req_header().uri.path(), "/b");
        assert!(next.is_body_empty());
    }

    #[tokio::test]
    async fn a_chunked_body_split_anywhere_is_decoded_and_kept_for_a_retry() {
        let (mut s, mut client) = pair(b"").await;
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let (head, body) = raw.split_at(50);
        client.write_all(head).await.unwrap();
        assert!(s.read_request().await.unwrap());
        s.enable_retry_buffering();
        let write = async {
            for piece in body.chunks(3) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        };
        let read = async {
            let mut got = Vec::new();
            // Bounded by the body's length: every piece is non-empty until the end.
            for _ in 0..body.len() {
                match s.read_request_body().await.unwrap() {
                    Some(piece) => got.extend_from_slice(&piece),
                    None => break,
                }
            }
            got
        };
        let ((), got) = tokio::join!(write, read);
        assert_eq!(got, b"hello world");
        assert!(s.is_body_done());
        assert_eq!(&s.get_retry_buffer().unwrap()[..], b"hello world");
        assert_eq!(s.body_bytes_read(), 11);
    }

    #[tokio::test]
    async fn a_body_beyond_the_retry_limit_truncates_the_retry_buffer() {
        let (mut s, mut client) = pair(b"").await;
        let len = RETRY_LIMIT + 1;
        let mut raw = format!("PUT / HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        raw.resize(raw.len() + len, b'x');
        let write = client.write_all(&raw);
        let read = async {
            assert!(s.read_request().await.unwrap());
            s.enable_retry_buffering();
            let mut n = 0;
            // Bounded: every piece is non-empty until the declared length.
            for _ in 0..len {
                match s.read_request_body().await.unwrap() {
                    Some(piece) => n += piece.len(),
                    None => break,
                }
            }
            n
        };
        let (written, n) = tokio::join!(write, read);
        written.unwrap();
        assert_eq!(n, len);
        assert!(s.retry_buffer_truncated());
        assert_eq!(s.get_retry_buffer(), None);
    }

    #[tokio::test]
    async fn an_unframed_response_to_a_http10_client_is_close_delimited() {
        let (mut s, mut client) = pair(b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(s.read_request().await.unwrap());
        let head = Box::new(ResponseHeader::build(200, None).unwrap());
        s.response_duplex_vec(vec![
            HttpTask::Header(head, false),
            HttpTask::Body(Some(Bytes::from_static(b"abc")), true),
        ])
        .await
        .unwrap();
        assert!(
            s.finish().await.is_none(),
            "a close-delimited body ends the connection"
        );
        let answer = received(&mut client, "\u{0}").await;
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nabc"), "{answer}");
    }

    #[tokio::test]
    async fn chunked_responses_are_framed_and_head_and_204_carry_no_body() {
        let (mut s, mut client) = pair(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(s.read_request().await.unwrap());
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.insert_header("transfer-encoding", "chunked").unwrap();
        s.write_response_header(Box::new(head)).await.unwrap();
        s.write_response_body(Bytes::from_static(b"hello"), false)
            .await
            .unwrap();
        s.write_response_body(Bytes::new(), true).await.unwrap();
        assert_eq!(s.body_bytes_sent(), 5);
        let answer = received(&mut client, "0\r\n\r\n").await;
        assert!(
            answer.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{answer}"
        );

        for (request, status) in [
            ("HEAD / HTTP/1.1\r\n\r\n", 200),
            ("GET / HTTP/1.1\r\n\r\n", 204),
        ] {
            let (mut s, mut client) = pair(request.as_bytes()).await;
            assert!(s.read_request().await.unwrap());
            let mut head = ResponseHeader::build(status, None).unwrap();
            head.insert_header("content-length", "10").unwrap();
            let done = s
                .response_duplex_vec(vec![
                    HttpTask::Header(Box::new(head), false),
                    HttpTask::Body(Some(Bytes::from_static(b"0123456789")), false),
                ])
                .await
                .unwrap();
            assert!(
                done,
                "{request:?}: a bodyless response is complete with its head"
            );
            drop(s);
            let answer = received(&mut client, "\u{0}").await;
            assert!(answer.ends_with("\r\n\r\n"), "{request:?}: {answer}");
        }
    }

    #[tokio::test]
    async fn waiting_for_the_answer_keeps_early_bytes_and_notices_a_close() {
        let (mut s, mut client) = pair(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(s.read_request().await.unwrap());
        client.write_all(b"GET /next").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), s.read_body_or_idle(true));
        assert!(
            waited.await.is_err(),
            "bytes of a next request are no reason to stop"
        );
        assert!(s.buf.starts_with(b"GET /next"));

        let (mut s, client) = pair(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(s.read_request().await.unwrap());
        drop(client);
        let e = s.read_body_or_idle(true).await.unwrap_err();
        assert_eq!(*e.etype(), ErrorType::ConnectionClosed);
        assert!(!s.will_keepalive());
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        for (len, line) in [
            (1, "1\r\n"),
            (255, "FF\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "FFFFFFFFFFFFFFFF\r\n"),
        ] {
            let mut out = BytesMut::new();
            put_chunk_size(len, &mut out);
            assert_eq!(&out[..], line.as_bytes());
        }
    }

    #[tokio::test]
    async fn keep_alive_follows_the_version_and_connection() {
        for (request, keep) in [
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            let (mut s, _client) = pair(request.as_bytes()).await;
            assert!(s.read_request().await.unwrap());
            assert_eq!(s.will_keepalive(), keep, "{request:?}");
            // The server's keep-alive never overrides the client's wish.
            s.set_keepalive(Some(60));
            assert_eq!(s.will_keepalive(), keep, "{request:?}");
            s.set_keepalive(None);
            assert!(!s.will_keepalive());
        }
    }

    #[tokio::test]
    async fn an_oversized_head_is_too_large_and_garbage_malformed() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let (mut s, _client) = pair(&raw).await;
        let e = s.read_request().await.unwrap_err();
        assert_eq!(*e.etype(), HEAD_TOO_LARGE);
        let (mut s, _client) = pair(b"\x01\x02 nonsense\r\n\r\n").await;
        let e = s.read_request().await.unwrap_err();
        assert_eq!(*e.etype(), ErrorType::InvalidHTTPHeader);
        // A client that closes before sending anything is no error.
        let (mut s, client) = pair(b"").await;
        drop(client);
        assert!(!s.read_request().await.unwrap());
    }

    /// Our `Date` and `Connection` go where `insert_header` puts them, with the bytes
    /// `header_to_h1_wire` writes, with and without the names' spelling kept.
    #[test]
    fn date_and_connection_are_written_as_inserted() {
        let heads: &[&[(&str, &str)]] = &[
            &[],
            &[("Content-Type", "text/plain"), ("X-A", "1")],
            &[
                ("connection", "close"),
                ("X-A", "1"),
                ("DATE", "yesterday"),
                ("x-a", "2"),
                ("date", "again"),
            ],
        ];
        let date = HeaderValue::from_static("Tue, 08 Dec 2026 00:00:00 GMT");
        let connection = HeaderValue::from_static("keep-alive");
        for preserve in [false, true] {
            for fields in heads {
                let mut head = if preserve {
                    ResponseHeader::build(200, None).unwrap()
                } else {
                    ResponseHeader::build_no_case(200, None).unwrap()
                };
                for (n, v) in *fields {
                    head.append_header(n.to_string(), *v).unwrap();
                }
                let mut ours = BytesMut::new();
                put_fields(&head, &date, &connection, &mut ours);
                head.insert_header(header::DATE, date.clone()).unwrap();
                head.insert_header(header::CONNECTION, connection.clone())
                    .unwrap();
                let mut theirs = BytesMut::new();
                head.header_to_h1_wire(&mut theirs);
                assert_eq!(ours, theirs, "preserve {preserve}, {fields:?}");
            }
        }
    }
}
