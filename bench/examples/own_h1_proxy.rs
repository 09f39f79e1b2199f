//! The floor of our own HTTP/1 codec (docs/benchmarks.md, "Own HTTP/1 codec (session 8)"): a bare
//! fixed-peer HTTP/1 proxy whose heads are parsed by `httparse` in place and written by us, for
//! CPU-per-request comparisons with `hyper_proxy.rs`, `pingora_core_proxy.rs` and nginx only.
//!
//! ```text
//! one current-thread runtime ─ accept (TCP_NODELAY) ─ task per connection, one read buffer each:
//!   loop: parse the head in place (more bytes only when it is incomplete)
//!     ─ the upstream head written into a reusable buffer (hop-by-hop headers dropped)
//!       + the request body bytes already read ─ one write
//!     ─ an upstream from the idle list (or a new connection) ─ rest of the request body streamed
//!     ─ response head parsed in place ─ our head + the body bytes already read ─ one write
//!     ─ rest of the response body streamed ─ upstream back to the idle list when clean
//! ```
//!
//! Framing follows RFC 9112 section 6: Content-Length or chunked bodies are streamed (chunked
//! bytes forwarded as they are, their sizes checked), a request with both Content-Length and
//! Transfer-Encoding, a duplicate Content-Length, a Transfer-Encoding that does not end in
//! chunked or a bad chunk size is answered 400. A response with neither is read until the
//! backend closes, and the client connection closes after it. An idle upstream connection found
//! closed (no byte of the answer yet) gets the request once more on a new connection when the
//! whole request is still in the head buffer.
//! Why this shape: every system call here is one nginx makes too (a read per message when the
//! bytes are there, a write per message), the task parks only when the socket is empty, and no
//! socket is read to check it or shut down; no timeouts, routing, filters or counters.
//!
//! `heads` (the third argument) puts pingora's head types in between, as the lean path would
//! keep them: each parsed head becomes a `pingora_http` `RequestHeader` / `ResponseHeader`
//! (case-preserving header inserts), the request head is cloned for upstream (the lean path's
//! request.rs does), and both heads are written from those types; `raw` (the default) writes
//! them straight from the parsed bytes.
//!
//! `cargo build --release -p meridian-bench --example own_h1_proxy`, then
//! `own_h1_proxy LISTEN BACKEND [raw|heads]` (e.g. `127.0.0.1:18081 127.0.0.1:18080`).

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BytesMut};
use pingora_http::{RequestHeader, ResponseHeader, header_value_from_slice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request or response head (bytes) and most header lines.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// A read asks for at least this much room.
const READ_SIZE: usize = 4096;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: own_h1_proxy LISTEN BACKEND [raw|heads]";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let backend: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let heads = match args.next().as_deref() {
        None | Some("raw") => false,
        Some("heads") => true,
        Some(_) => anyhow::bail!(usage),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(listen, backend, heads))
}

struct Proxy {
    backend: SocketAddr,
    /// Heads go through pingora_http's types (`heads`).
    heads: bool,
    /// Idle upstream connections, checked only when a request finds them dead.
    idle: Mutex<Vec<Side>>,
}

async fn serve(listen: SocketAddr, backend: SocketAddr, heads: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let proxy = Arc::new(Proxy {
        backend,
        heads,
        idle: Mutex::default(),
    });
    // Runs until the process is stopped (a benchmark target).
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors or the like: the next accept may succeed, so wait a bit
                // instead of spinning or stopping.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // A client that reset its connection before this point is no reason to stop.
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("client: {e}");
            continue;
        }
        tokio::spawn(connection(Side::new(tcp), proxy.clone()));
    }
}

/// One end of the proxy: a socket and the bytes read from it and not yet used.
struct Side {
    io: TcpStream,
    buf: BytesMut,
}

impl Side {
    fn new(io: TcpStream) -> Side {
        Side {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Reads what the socket has (0 = closed). tokio clears the socket's readiness on a short
    /// read, so the next call parks without a failing `recvfrom` first.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            // Moves unread bytes to the front of the allocation when there is room there.
            self.buf.reserve(READ_SIZE);
        }
        self.io.read_buf(&mut self.buf).await
    }
}

/// How a message body ends.
#[derive(Debug)]
enum Body {
    /// So many bytes left (0: no body or all sent).
    Length(u64),
    Chunked(Chunk),
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl Body {
    fn done(&self) -> bool {
        matches!(self, Body::Length(0) | Body::Chunked(Chunk::Done))
    }

    /// How many of `data`'s leading bytes belong to this body (all complete framing); the
    /// state moves past them.
    fn take(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        match self {
            Body::Length(left) => {
                let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Ok(n)
            }
            Body::UntilClose => Ok(data.len()),
            Body::Chunked(state) => scan_chunked(state, data),
        }
    }
}

/// Walks chunked framing over `data`; stops at an incomplete size line, chunk end or trailer.
fn scan_chunked(state: &mut Chunk, data: &[u8]) -> Result<usize, &'static str> {
    let mut at = 0;
    // Every turn consumes bytes or returns.
    loop {
        let rest = &data[at..];
        match *state {
            Chunk::Done => return Ok(at),
            Chunk::Data(left) => {
                let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                at += n;
                if n as u64 == left {
                    *state = Chunk::DataEnd;
                } else {
                    *state = Chunk::Data(left - n as u64);
                    return Ok(at);
                }
            }
            Chunk::DataEnd => {
                if rest.len() < 2 {
                    return Ok(at);
                }
                if &rest[..2] != b"\r\n" {
                    return Err("chunk not followed by CRLF");
                }
                at += 2;
                *state = Chunk::Size;
            }
            Chunk::Size | Chunk::Trailer => {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    return if rest.len() > MAX_LINE {
                        Err("chunk line too long")
                    } else {
                        Ok(at)
                    };
                };
                let line = &rest[..=nl];
                at += nl + 1;
                if *state == Chunk::Trailer {
                    if line == b"\r\n" || line == b"\n" {
                        *state = Chunk::Done;
                    }
                    continue;
                }
                match httparse::parse_chunk_size(line) {
                    Ok(httparse::Status::Complete((_, 0))) => *state = Chunk::Trailer,
                    Ok(httparse::Status::Complete((_, size))) => *state = Chunk::Data(size),
                    _ => return Err("invalid chunk size"),
                }
            }
        }
    }
}

/// What the proxy needs from a request head.
struct RequestHead {
    len: usize,
    body: Body,
    keep_alive: bool,
    is_head: bool,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Parses a request head at the start of `buf` and writes the upstream head into `out`; `None`
/// while it is incomplete.
fn parse_request(
    buf: &[u8],
    out: &mut Vec<u8>,
    heads: bool,
) -> Result<Option<RequestHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed head"),
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err("malformed head");
    };
    let mut keep_alive = req.version == Some(1);
    let (mut length, mut chunked, mut te) = (None, false, false);
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("duplicate Content-Length");
            }
            length = Some(parse_length(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
            if has_token(h.value, "upgrade") {
                out.extend_from_slice(b"connection: upgrade\r\n");
            }
        }
        if hop_by_hop(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = match (te, length) {
        (true, Some(_)) => return Err("both Content-Length and Transfer-Encoding"),
        (true, None) if !chunked => return Err("Transfer-Encoding does not end in chunked"),
        (true, None) => Body::Chunked(Chunk::Size),
        (false, length) => Body::Length(length.unwrap_or(0)),
    };
    if heads {
        via_request_header(&req, out)?;
    }
    Ok(Some(RequestHead {
        len,
        body,
        keep_alive,
        is_head: method == "HEAD",
    }))
}

/// `heads`: the request as pingora's `RequestHeader` (what the lean path's roles read), cloned
/// for upstream without hop-by-hop headers and written from that clone into `out`.
fn via_request_header(
    req: &httparse::Request<'_, '_>,
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let bad = |_| "head not representable";
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let mut head =
        RequestHeader::build(method, path.as_bytes(), Some(req.headers.len())).map_err(bad)?;
    for h in req.headers.iter() {
        head.append_header(h.name.to_string(), header_value_from_slice(h.value))
            .map_err(bad)?;
    }
    let mut up = head.clone();
    for name in ["connection", "keep-alive", "proxy-connection", "te"] {
        if up.headers.contains_key(name) {
            up.remove_header(name);
        }
    }
    out.clear();
    out.extend_from_slice(up.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(up.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    up.header_to_h1_wire(out);
    if upgrade(req.headers) {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// `heads`: the response as pingora's `ResponseHeader` (what the response hooks get), its
/// status line and header lines written from it into `out` (the caller ends the head).
fn via_response_header(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let bad = |_| "head not representable";
    let mut head = ResponseHeader::build(status, Some(resp.headers.len())).map_err(bad)?;
    for h in resp.headers.iter() {
        if hop_by_hop(h.name) {
            continue;
        }
        head.append_header(h.name.to_string(), header_value_from_slice(h.value))
            .map_err(bad)?;
    }
    out.clear();
    let reason = head
        .get_reason_phrase()
        .or(head.status.canonical_reason())
        .unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", head.status.as_u16());
    head.header_to_h1_wire(out);
    if upgrade(resp.headers) {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    Ok(())
}

/// The head asks to switch protocols (a `Connection: upgrade` token).
fn upgrade(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection") && has_token(h.value, "upgrade"))
}

fn parse_length(value: &[u8]) -> Result<u64, &'static str> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err("invalid Content-Length");
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("invalid Content-Length")
}

/// What the proxy needs from a response head.
struct ResponseHead {
    len: usize,
    status: u16,
    body: Body,
    /// The backend keeps the connection open after this response.
    keep_alive: bool,
}

/// Parses a response head at the start of `buf` and writes the client's head into `out`.
fn parse_response(
    buf: &[u8],
    out: &mut Vec<u8>,
    to_head: bool,
    heads: bool,
) -> Result<Option<ResponseHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let status = resp.code.ok_or("malformed response head")?;
    let mut keep_alive = resp.version == Some(1);
    let (mut length, mut chunked, mut te) = (None, false, false);
    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let l = parse_length(h.value)?;
            if length.is_some_and(|prev| prev != l) {
                return Err("conflicting Content-Length");
            }
            length = Some(l);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
            if status == 101 {
                out.extend_from_slice(b"connection: upgrade\r\n");
            }
        }
        if hop_by_hop(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let body = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::Length(0)
    } else if te && chunked {
        Body::Chunked(Chunk::Size)
    } else if te {
        Body::UntilClose
    } else if let Some(l) = length {
        Body::Length(l)
    } else {
        Body::UntilClose
    };
    if heads {
        via_response_header(&resp, status, out)?;
    }
    if matches!(body, Body::UntilClose) {
        // The client learns the end from the close.
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        keep_alive,
    }))
}

fn invalid(e: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Moves the rest of `body` from `from` to `to`; true when it ended with `from` closing.
async fn stream_body(body: &mut Body, from: &mut Side, to: &mut TcpStream) -> io::Result<bool> {
    // Bounded by the message: every turn forwards bytes, reads bytes or ends.
    while !body.done() {
        let n = body.take(&from.buf).map_err(invalid)?;
        if n > 0 {
            to.write_all(&from.buf[..n]).await?;
            from.buf.advance(n);
            continue;
        }
        if from.fill().await? == 0 {
            return match body {
                Body::UntilClose => Ok(true),
                _ => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        }
    }
    Ok(false)
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Serves the requests of one client connection until it closes or fails.
async fn connection(mut client: Side, proxy: Arc<Proxy>) {
    let (mut up_head, mut down_head) = (Vec::new(), Vec::new());
    // Bounded by the client: every turn serves one request.
    loop {
        let head = loop {
            match parse_request(&client.buf, &mut up_head, proxy.heads) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    let _ = client.io.write_all(BAD_REQUEST).await;
                    eprintln!("client: {e}");
                    return;
                }
            }
            match client.fill().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        client.buf.advance(head.len);
        match proxy
            .exchange(&mut client, head, &mut up_head, &mut down_head)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(Failed::BadRequest(e)) => {
                eprintln!("client: {e}");
                let _ = client.io.write_all(BAD_REQUEST).await;
                return;
            }
            Err(Failed::BeforeAnswer(e)) => {
                eprintln!("upstream: {e}");
                let _ = client
                    .io
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
            Err(Failed::After(e)) => {
                eprintln!("proxy: {e}");
                return;
            }
        }
    }
}

enum Failed {
    /// The request body's framing is broken (a bad chunk size): 400, nothing went down yet.
    BadRequest(io::Error),
    /// Nothing went to the client yet: it can get an error answer.
    BeforeAnswer(io::Error),
    After(io::Error),
}

impl Proxy {
    /// One request and its response; true when the client connection can take another.
    async fn exchange(
        &self,
        client: &mut Side,
        mut head: RequestHead,
        up_head: &mut Vec<u8>,
        down_head: &mut Vec<u8>,
    ) -> Result<bool, Failed> {
        let (mut up, mut reused) = match self.take_idle() {
            Some(up) => (up, true),
            None => (self.connect().await.map_err(Failed::BeforeAnswer)?, false),
        };
        // The head with the body bytes already read: one write.
        let n = head
            .body
            .take(&client.buf)
            .map_err(|e| Failed::BadRequest(invalid(e)))?;
        up_head.extend_from_slice(&client.buf[..n]);
        client.buf.advance(n);
        // The whole request is in `up_head`: it can go once more on a new connection when an
        // idle one turns out to be closed by the backend.
        let whole = head.body.done();
        if let Err(e) = up.io.write_all(up_head).await {
            if !(reused && whole) {
                return Err(Failed::BeforeAnswer(e));
            }
            (up, reused) = (self.resend(up_head).await?, false);
        }
        stream_body(&mut head.body, client, &mut up.io)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => Failed::BadRequest(e),
                _ => Failed::BeforeAnswer(e),
            })?;
        // Every turn reads a head; 1xx heads go down and the next one follows.
        let (up_keep_alive, closed) = loop {
            let resp = match parse_response(&up.buf, down_head, head.is_head, self.heads) {
                Ok(Some(resp)) => resp,
                Ok(None) => match up.fill().await {
                    Ok(0) | Err(_) if reused && up.buf.is_empty() && whole => {
                        // The idle connection had been closed by the backend.
                        (up, reused) = (self.resend(up_head).await?, false);
                        continue;
                    }
                    Ok(0) => {
                        return Err(Failed::BeforeAnswer(io::ErrorKind::UnexpectedEof.into()));
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(Failed::BeforeAnswer(e)),
                },
                Err(e) => return Err(Failed::BeforeAnswer(invalid(e))),
            };
            up.buf.advance(resp.len);
            if resp.status == 101 {
                client
                    .io
                    .write_all(down_head)
                    .await
                    .map_err(Failed::After)?;
                tunnel(client, up).await;
                return Ok(false);
            }
            let mut body = resp.body;
            let n = body.take(&up.buf).map_err(|e| Failed::After(invalid(e)))?;
            down_head.extend_from_slice(&up.buf[..n]);
            up.buf.advance(n);
            client
                .io
                .write_all(down_head)
                .await
                .map_err(Failed::After)?;
            if (100..200).contains(&resp.status) {
                continue;
            }
            let closed = stream_body(&mut body, &mut up, &mut client.io)
                .await
                .map_err(Failed::After)?;
            break (resp.keep_alive, closed);
        };
        if up_keep_alive && !closed && up.buf.is_empty() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(up);
        }
        Ok(head.keep_alive && !closed)
    }

    fn take_idle(&self) -> Option<Side> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// A new upstream connection with the whole request (`up_head`) written to it.
    async fn resend(&self, up_head: &[u8]) -> Result<Side, Failed> {
        let mut up = self.connect().await.map_err(Failed::BeforeAnswer)?;
        up.io
            .write_all(up_head)
            .await
            .map_err(Failed::BeforeAnswer)?;
        Ok(up)
    }

    async fn connect(&self) -> io::Result<Side> {
        let tcp = TcpStream::connect(self.backend).await?;
        tcp.set_nodelay(true)?;
        Ok(Side::new(tcp))
    }
}

/// After a 101: the bytes each side sent early, then bytes both ways until both sides close.
async fn tunnel(client: &mut Side, mut up: Side) {
    if !client.buf.is_empty() && up.io.write_all(&client.buf).await.is_err() {
        return;
    }
    if !up.buf.is_empty() && client.io.write_all(&up.buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client.io, &mut up.io).await;
}
