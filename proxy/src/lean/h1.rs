//! One try at an HTTP/1 upstream, in the connection's own task: the request head, then one
//! `select!` loop that moves the request body up and the response down as either side is ready
//! (a backend may answer before it has read the whole body), with no channel in between.
//!
//! ```text
//! head (request.rs) ─ write upstream ─ retry buffering on (a retry replays the body)
//! loop until request sent and response done:
//!   upstream ready ─ head: Forwarder::upstream_response_filter (retry on status, outlier
//!                     detection, east-west refusal) ─ a 101 must answer an upgrade request
//!                     ─ unframed body? chunked ─ Forwarder::response_filter ─ write it, with
//!                     the first body chunk when it is already buffered (one send)
//!                  ─ body chunk / end: write it
//!   client ready   ─ body chunk: write upstream (end: finish the body)
//!                  ─ body done: watch for the client going away (ConnectionClosed)
//! ```
//!
//! The upstream connection goes back to the pool only when both messages ended cleanly; a 101
//! leaves both connections to the tunnel (tunnel.rs).

use futures::FutureExt;
use http::header;
use pingora_core::protocols::http::HttpTask;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

use super::codec::OwnClient;
use super::request;
use crate::gateway::{Ctx, Downstream, Forwarder};

/// How an exchange ended.
pub(super) struct Exchanged {
    pub downstream_reusable: bool,
    pub upstream_reusable: bool,
    pub error: Option<Box<Error>>,
    /// A 101 went downstream: both connections now belong to the tunnel.
    pub upgraded: bool,
}

impl Exchanged {
    fn failed(upstream_reusable: bool, error: Box<Error>) -> Exchanged {
        Exchanged {
            downstream_reusable: false,
            upstream_reusable,
            error: Some(error),
            upgraded: false,
        }
    }
}

/// Sends the request to `up` and its response to the client.
pub(super) async fn exchange(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    up: &mut OwnClient,
    peer: &HttpPeer,
    ctx: &mut Ctx,
) -> Exchanged {
    up.read_timeout = peer.options.read_timeout;
    up.write_timeout = peer.options.write_timeout;
    let written = match request::for_h1(fwd, session, ctx) {
        Ok(head) => up.write_request_header(&head).await,
        // Nothing was written: the connection is as clean as it came.
        Err(e) => return Exchanged::failed(true, e),
    };
    if let Err(e) = written {
        return Exchanged::failed(false, e.into_up());
    }
    session.enable_retry_buffering();
    exchanged(pump(fwd, session, up, ctx, None).await)
}

/// Goes on with an exchange whose request went up whole and whose first response piece `first`
/// was read already: a hedged try that answered first (hedge.rs).
pub(super) async fn resume(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    up: &mut OwnClient,
    ctx: &mut Ctx,
    first: HttpTask,
) -> Exchanged {
    exchanged(pump(fwd, session, up, ctx, Some(first)).await)
}

fn exchanged(pumped: Result<Pumped>) -> Exchanged {
    match pumped {
        Ok(p) => Exchanged {
            downstream_reusable: p.downstream_reusable,
            upstream_reusable: p.upstream_reusable,
            error: None,
            upgraded: p.upgraded,
        },
        Err(e) => Exchanged::failed(false, e),
    }
}

struct Pumped {
    downstream_reusable: bool,
    upstream_reusable: bool,
    upgraded: bool,
}

impl Pumped {
    /// A 101 went down: both connections now belong to the tunnel (tunnel.rs).
    const UPGRADED: Pumped = Pumped {
        downstream_reusable: false,
        upstream_reusable: false,
        upgraded: true,
    };
}

/// `first`: the first response piece, already read (hedge.rs; the request went up whole).
async fn pump(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    up: &mut OwnClient,
    ctx: &mut Ctx,
    first: Option<HttpTask>,
) -> Result<Pumped> {
    let mut upstream_reusable = true;
    // An upstream write that failed: reported only if the response cannot be read either (a
    // backend may refuse a body and still answer).
    let mut send_error: Option<Box<Error>> = None;
    let mut request_done = session.is_body_done();
    // A retry replays what the client sent so far; a bodyless request ends here.
    let replay = session.get_retry_buffer();
    if first.is_none()
        && (replay.is_some() || session.is_body_empty())
        && let Err(e) = send_body(up, replay.as_deref(), request_done).await
    {
        upstream_reusable = false;
        request_done = true;
        send_error = Some(e);
    }
    let mut response_done = false;
    // A hedged try (hedge.rs): the request went up whole, its first response piece is here.
    if let Some(task) = first {
        request_done = true;
        match forward(fwd, session, up, ctx, task).await? {
            Forwarded::More => {}
            Forwarded::Done => response_done = true,
            Forwarded::Upgraded => return Ok(Pumped::UPGRADED),
        }
    }
    // Bounded by the two messages: every turn reads a piece of one of them or ends with an
    // error (the client's idle watch fails when it goes away or sends past its body).
    while !(request_done && response_done) {
        // Biased to the request body: body bytes that came with the head are taken before a
        // response head goes downstream (a response written while the request body is still
        // unread makes pingora close the client connection; the framework path reads first).
        tokio::select! {
            biased;
            body = session.read_body_or_idle(request_done) => {
                let body = body.map_err(|e| e.into_down())?;
                let end = body.is_none() || session.is_body_done();
                if send_error.is_none()
                    && let Err(e) = send_body(up, body.as_deref(), end).await
                {
                    upstream_reusable = false;
                    send_error = Some(e);
                }
                request_done = end;
            }
            task = up.read_response_task(), if !response_done => {
                let task = match task {
                    Ok(t) => t,
                    Err(e) => return Err(send_error.unwrap_or(e).into_up()),
                };
                match forward(fwd, session, up, ctx, task).await? {
                    Forwarded::More => {}
                    Forwarded::Done => response_done = true,
                    Forwarded::Upgraded => return Ok(Pumped::UPGRADED),
                }
            }
        }
    }
    // The request could not be sent whole: the client's connection holds unread body bytes.
    Ok(Pumped {
        downstream_reusable: send_error.is_none(),
        upstream_reusable,
        upgraded: false,
    })
}

/// Writes a piece of the request body upstream; `end` finishes it (the last chunk).
pub(super) async fn send_body(up: &mut OwnClient, data: Option<&[u8]>, end: bool) -> Result<()> {
    if let Some(d) = data.filter(|d| !d.is_empty()) {
        up.write_body(d).await.map_err(|e| e.into_up())?;
    }
    if end {
        up.finish_body().await.map_err(|e| e.into_up())?;
    }
    Ok(())
}

enum Forwarded {
    More,
    Done,
    Upgraded,
}

/// Sends one piece of the response downstream, the head through the response hooks first.
async fn forward(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    up: &mut OwnClient,
    ctx: &mut Ctx,
    task: HttpTask,
) -> Result<Forwarded> {
    let mut tasks = Vec::with_capacity(2);
    let mut upgraded = false;
    match task {
        HttpTask::Header(mut head, end) => {
            fwd.upstream_response_filter(session, &mut head, ctx)?;
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                if !(up.was_upgraded() && session.is_upgrade(&head) == Some(true)) {
                    return Err(Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "101 to a request that is no upgrade",
                    )
                    .into_up());
                }
                upgraded = true;
            }
            frame_downstream(session, &mut head, end);
            Forwarder::response_filter(&mut head, ctx);
            let informational = head.status.is_informational();
            tasks.push(HttpTask::Header(head, end));
            // The first body chunk usually came in the same read as the head: one send for both.
            if !end
                && !informational
                && let Some(next) = up.read_response_task().now_or_never()
            {
                tasks.push(next.map_err(|e| e.into_up())?);
            }
        }
        HttpTask::Trailer(_) => return Ok(Forwarded::More),
        HttpTask::Failed(e) => return Err(e),
        other => tasks.push(other),
    }
    let done = session
        .response_duplex_vec(tasks)
        .await
        .map_err(|e| e.into_down())?;
    Ok(if upgraded {
        Forwarded::Upgraded
    } else if done {
        Forwarded::Done
    } else {
        Forwarded::More
    })
}

/// A response without framing headers (close-delimited, HTTP/1.0 style) goes downstream
/// chunked, so the client's connection can be kept.
fn frame_downstream(session: &impl Downstream, head: &mut ResponseHeader, end: bool) {
    let no_body = session.req_header().method == http::Method::HEAD
        || matches!(head.status.as_u16(), 204 | 304);
    if no_body
        || end
        || head.status.is_informational()
        || head.headers.contains_key(header::TRANSFER_ENCODING)
        || head.headers.contains_key(header::CONTENT_LENGTH)
    {
        return;
    }
    head.set_version(http::Version::HTTP_11);
    if let Err(e) = head.insert_header(header::TRANSFER_ENCODING, "chunked") {
        tracing::debug!(error = %e, "response not converted to chunked");
    }
}
