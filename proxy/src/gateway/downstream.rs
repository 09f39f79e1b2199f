//! The downstream session as the roles, the [`Forwarder`](super::Forwarder) and the lean
//! HTTP/1 driver (`crate::lean`) see it: the [`Downstream`] trait, the calls they make on the
//! client's side of a request and nothing else.
//!
//! Today its one implementation is pingora-core's server session, borrowed: the framework path
//! (pingora-proxy, HTTP/2 and `--http1-path framework`) hands out the one inside its
//! `pingora_proxy::Session`, the lean driver owns its own. The trait is the seam for a session of
//! our own HTTP/1 codec (docs/benchmarks.md, "Own HTTP/1 codec"): every request decision is
//! written once against it, so a second implementation changes how bytes are read and written,
//! never what is decided.
//!
//! ```text
//! listeners.rs ─► ServerSession ─┬─ lean driver (owns it) ──────────┐
//! pingora-proxy Session ─────────┴─ as_downstream(_mut) (borrowed) ─┴─► &mut impl Downstream
//!                                                        Role::request_filter, Forwarder, lean
//! ```
//!
//! Calls are generic (`impl Downstream`), not `dyn`: each path is compiled for its session
//! type, so the seam costs nothing per request. The methods keep pingora's names and meaning;
//! the connection's own lifecycle (reuse after the response, the tunnel's raw stream) stays
//! with the driver that owns the session.

use std::future::Future;

use bytes::Bytes;
use pingora_core::protocols::Digest;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// The client side of one request: its head and body in, the response out.
pub(crate) trait Downstream: Send + Sync {
    /// Reads the next request head; `Ok(false)` when the client closed before one.
    fn read_request(&mut self) -> impl Future<Output = Result<bool>> + Send;

    /// The request head (after [`read_request`](Self::read_request)).
    fn req_header(&self) -> &RequestHeader;

    /// The request head, to be edited before it goes upstream.
    fn req_header_mut(&mut self) -> &mut RequestHeader;

    /// The next piece of the request body; `None` at its end.
    fn read_request_body(&mut self) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// The next piece of the request body, or (when `no_body_expected`) waits until the client
    /// closes or sends more than it should; used while an upstream answer is awaited.
    fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// The whole request body has been read.
    fn is_body_done(&mut self) -> bool;

    /// The request has no body at all.
    fn is_body_empty(&mut self) -> bool;

    /// Starts keeping what is read of the body, so a retry can send it again.
    fn enable_retry_buffering(&mut self);

    /// The body read so far, when retry buffering is on.
    fn get_retry_buffer(&self) -> Option<Bytes>;

    /// More body was read than the retry buffer keeps: the request cannot be replayed.
    fn retry_buffer_truncated(&self) -> bool;

    /// The request asks for a protocol upgrade.
    fn is_upgrade_req(&self) -> bool;

    /// Whether `header` accepts the request's upgrade (`None`: not applicable).
    fn is_upgrade(&self, header: &ResponseHeader) -> Option<bool>;

    /// Keeps the connection for another request after this one (`Some(idle seconds)`) or
    /// closes it after the response (`None`).
    fn set_keepalive(&mut self, duration: Option<u64>);

    /// Answers `code` with an empty body.
    fn respond_error(&mut self, code: u16) -> impl Future<Output = Result<()>> + Send;

    /// Answers with `resp` and `body`, whole.
    fn write_error_response(
        &mut self,
        resp: ResponseHeader,
        body: Bytes,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes the response head.
    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes a piece of the response body (`end`: the last one).
    fn write_response_body(
        &mut self,
        data: Bytes,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes several response pieces (head, body, end) in one go; `true` when the response
    /// is complete.
    fn response_duplex_vec(
        &mut self,
        tasks: Vec<HttpTask>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The response head as written, once it is.
    fn response_written(&self) -> Option<&ResponseHeader>;

    /// Request body bytes read from the client so far (the access log's `bytesIn`).
    fn body_bytes_read(&self) -> usize;

    /// Response body bytes written to the client so far (the access log's `bytesOut`).
    fn body_bytes_sent(&self) -> usize;

    /// The connection's facts (TLS, timings), when there is a connection.
    fn digest(&self) -> Option<&Digest>;

    /// The client's address.
    fn client_addr(&self) -> Option<&SocketAddr>;

    /// The local address the connection came in on (which listener socket).
    fn server_addr(&self) -> Option<&SocketAddr>;

    /// Closes the connection.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// pingora-core's server session, as both request paths have it.
impl Downstream for ServerSession {
    fn read_request(&mut self) -> impl Future<Output = Result<bool>> + Send {
        ServerSession::read_request(self)
    }

    fn req_header(&self) -> &RequestHeader {
        ServerSession::req_header(self)
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        ServerSession::req_header_mut(self)
    }

    fn read_request_body(&mut self) -> impl Future<Output = Result<Option<Bytes>>> + Send {
        ServerSession::read_request_body(self)
    }

    fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> impl Future<Output = Result<Option<Bytes>>> + Send {
        ServerSession::read_body_or_idle(self, no_body_expected)
    }

    fn is_body_done(&mut self) -> bool {
        ServerSession::is_body_done(self)
    }

    fn is_body_empty(&mut self) -> bool {
        ServerSession::is_body_empty(self)
    }

    fn enable_retry_buffering(&mut self) {
        ServerSession::enable_retry_buffering(self);
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        ServerSession::get_retry_buffer(self)
    }

    fn retry_buffer_truncated(&self) -> bool {
        ServerSession::retry_buffer_truncated(self)
    }

    fn is_upgrade_req(&self) -> bool {
        ServerSession::is_upgrade_req(self)
    }

    fn is_upgrade(&self, header: &ResponseHeader) -> Option<bool> {
        ServerSession::is_upgrade(self, header)
    }

    fn set_keepalive(&mut self, duration: Option<u64>) {
        ServerSession::set_keepalive(self, duration);
    }

    fn respond_error(&mut self, code: u16) -> impl Future<Output = Result<()>> + Send {
        ServerSession::respond_error(self, code)
    }

    fn write_error_response(
        &mut self,
        resp: ResponseHeader,
        body: Bytes,
    ) -> impl Future<Output = Result<()>> + Send {
        ServerSession::write_error_response(self, resp, body)
    }

    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
    ) -> impl Future<Output = Result<()>> + Send {
        ServerSession::write_response_header(self, resp)
    }

    fn write_response_body(
        &mut self,
        data: Bytes,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        ServerSession::write_response_body(self, data, end)
    }

    fn response_duplex_vec(
        &mut self,
        tasks: Vec<HttpTask>,
    ) -> impl Future<Output = Result<bool>> + Send {
        ServerSession::response_duplex_vec(self, tasks)
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        ServerSession::response_written(self)
    }

    fn body_bytes_read(&self) -> usize {
        ServerSession::body_bytes_read(self)
    }

    fn body_bytes_sent(&self) -> usize {
        ServerSession::body_bytes_sent(self)
    }

    fn digest(&self) -> Option<&Digest> {
        ServerSession::digest(self)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        ServerSession::client_addr(self)
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        ServerSession::server_addr(self)
    }

    fn shutdown(&mut self) -> impl Future<Output = ()> + Send {
        ServerSession::shutdown(self)
    }
}
