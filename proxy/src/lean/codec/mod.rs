//! Our own HTTP/1 codec: the client side of the lean driver's requests (`--http1-path own`, the
//! default) without pingora-core's server session, and the backend side of every lean path's
//! HTTP/1 tries without its client session (client.rs), whose per-request
//! cost docs/benchmarks.md ("Own HTTP/1 codec") measured.
//!
//! ```text
//! bytes from the client ─► head.rs: parse_head (httparse in place) ─► pingora_http RequestHeader
//!                                     + BodyFraming (length / chunked / none), smuggling rules,
//!                                     pingora-core's limits, request-target encoding retry
//!                        ─► chunked.rs: ChunkedDecoder strips chunk framing off the body
//! session.rs: OwnSession over pingora's Stream (plain, TLS, mTLS): Downstream + Connection;
//!             body, retry buffer, keep-alive, response framing, leftovers for the next request
//! client.rs:  OwnClient, the upstream side: request head and body framing, response heads
//!             (1xx, final) and bodies (length / chunked / until close), keep-alive for the pool
//! wire.rs:    request heads as bytes (WireHead: a RequestHeader, the lean path's Overlay of the
//!             client's head, or one encoded ahead for a hedged pair) and what their fields say
//! ```

mod body;
pub(crate) mod chunked;
mod client;
pub(crate) mod head;
mod session;
pub(crate) mod wire;

pub(crate) use client::OwnClient;

/// How our codec spells the header names it writes (`meridian proxy --header-case`).
///
/// HTTP/1 field names are case-insensitive (RFC 9110 section 5.1) and HTTP/2 and 3 carry them in
/// lower case; keeping each name's spelling as received costs a second map per head (pingora's
/// case map: built while parsing, cloned with the head, walked when writing, dropped), about 9 %
/// of the user-space instructions of a proxied request (docs/benchmarks.md, "Session 18").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HeaderCase {
    /// Names go out as pingora writes heads without a case map: the common fields in their
    /// usual capitals (`Host`, `Content-Type`, `Content-Length`, `Date`, `Connection`,
    /// `Transfer-Encoding`, `Server`, `Set-Cookie`, `Cache-Control`, `Age`, `Accept-Ranges`,
    /// `Content-Encoding`), every other name in lower case (as Envoy and haproxy write them).
    #[default]
    Normalize,
    /// Names go out as the client or backend spelled them (nginx's behaviour), for peers that
    /// wrongly match names case-sensitively.
    Preserve,
}
pub(crate) use session::{HEAD_TOO_LARGE, Kept, OwnSession};

/// Why bytes from the client are not a request we serve; each maps to the answer (400 or 431)
/// the session writes before it closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// The head is not HTTP/1 (httparse refused it, or it is not UTF-8 where it must be).
    Malformed(&'static str),
    /// The head is longer than [`head::MAX_HEAD`] or has more than [`head::MAX_HEADERS`] fields
    /// (431, the error type [`HEAD_TOO_LARGE`]).
    TooLarge,
    /// Framing that two parties could read differently (request smuggling): refused.
    Ambiguous(&'static str),
    /// A chunked body whose framing is broken.
    BadChunk(&'static str),
}

impl CodecError {
    /// The status the client is answered with.
    pub(crate) fn status(self) -> u16 {
        match self {
            CodecError::TooLarge => 431,
            _ => 400,
        }
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Malformed(why) => write!(f, "malformed request head: {why}"),
            CodecError::TooLarge => f.write_str("request head too large"),
            CodecError::Ambiguous(why) => write!(f, "ambiguous request framing: {why}"),
            CodecError::BadChunk(why) => write!(f, "bad chunked body: {why}"),
        }
    }
}

impl std::error::Error for CodecError {}
