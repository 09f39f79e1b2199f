//! One try at an h2c upstream (a backend with `protocol: h2c`) for an HTTP/1 client: one stream of
//! a pooled HTTP/2 connection. The request goes first (head, then the body as the client sends
//! it), then the response comes back: h2c backends here are gRPC-style services that answer
//! after the request, and a stream needs no duplex loop to stay correct.
//!
//! ```text
//! head (request.rs: :authority from Host) ─ body (retry buffer first) ─ end of stream
//! ─ response head: Forwarder::upstream_response_filter ─ HTTP/1.1, chunked unless it has a
//!   Content-Length (HEAD, 204, 304 have no body) ─ Forwarder::response_filter ─ body ─ end
//! ```

use bytes::Bytes;
use http::header;
use pingora_core::protocols::http::v2::client::Http2Session;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};

use super::request;
use crate::gateway::{Ctx, Downstream, Forwarder};

/// Sends the request on a stream of `up` and its response to the client; whether the client's
/// connection can take another request, and the error that ended the try.
pub(super) async fn exchange(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    up: &mut Http2Session,
    peer: &HttpPeer,
    ctx: &mut Ctx,
) -> (bool, Option<Box<Error>>) {
    up.read_timeout = peer.options.read_timeout;
    up.write_timeout = peer.options.write_timeout;
    match run(fwd, session, up, ctx).await {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e)),
    }
}

async fn run(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    up: &mut Http2Session,
    ctx: &mut Ctx,
) -> Result<()> {
    let head = request::for_h2(fwd, session, ctx)?;
    let empty = session.is_body_empty();
    let end_on_head = empty && head.send_end_stream().unwrap_or(true);
    up.write_request_header(head, end_on_head)
        .map_err(|e| e.into_up())?;
    session.enable_retry_buffering();
    if !end_on_head {
        send_body(session, up).await?;
    }
    up.read_response_header().await.map_err(|e| e.into_up())?;
    let mut head = Box::new(
        up.response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no h2 response head"))?
            .clone(),
    );
    fwd.upstream_response_filter(session, &mut head, ctx)?;
    Forwarder::response_filter(&mut head, ctx);
    head.set_version(http::Version::HTTP_11);
    let no_body = session.req_header().method == http::Method::HEAD
        || matches!(head.status.as_u16(), 204 | 304);
    if !no_body
        && !head.status.is_informational()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    let finished = up.response_finished();
    session
        .write_response_header(head)
        .await
        .map_err(|e| e.into_down())?;
    if finished {
        return session
            .write_response_body(Bytes::new(), true)
            .await
            .map_err(|e| e.into_down());
    }
    // Bounded by the response: every turn reads a piece of it or ends.
    loop {
        let piece = up.read_response_body().await.map_err(|e| e.into_up())?;
        let end = piece.is_none() || up.response_finished();
        session
            .write_response_body(piece.unwrap_or_default(), end)
            .await
            .map_err(|e| e.into_down())?;
        if end {
            return Ok(());
        }
    }
}

/// The request body: what a previous try buffered, then the rest as the client sends it.
async fn send_body(session: &mut impl Downstream, up: &mut Http2Session) -> Result<()> {
    if let Some(replay) = session.get_retry_buffer() {
        let end = session.is_body_done();
        up.write_request_body(replay, end)
            .await
            .map_err(|e| e.into_up())?;
    }
    // Bounded by the client's body: every turn reads a piece of it or ends.
    while !session.is_body_done() {
        let piece = session
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?;
        let end = piece.is_none() || session.is_body_done();
        if let Some(p) = piece.filter(|p| !p.is_empty()) {
            up.write_request_body(p, end)
                .await
                .map_err(|e| e.into_up())?;
        } else if end {
            break;
        }
    }
    up.finish_request_body().map_err(|e| e.into_up())
}
