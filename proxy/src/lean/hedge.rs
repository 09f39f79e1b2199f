//! Hedged tries: an idempotent request whose first try has not answered after a short,
//! adaptive delay gets a second try at the next endpoint choice; the first answer wins and the
//! other try is cancelled. A region whose packets vanish (nothing refused, nothing reset) then
//! costs its users the hedge delay instead of the connect timeout.
//!
//! ```text
//! serve's tries loop ─► try_upstream
//!   eligible? GET/HEAD/OPTIONS/PUT/DELETE, no upgrade, no body or a Content-Length body of
//!             at most MAX_BODY (no Expect), first try, HTTP/1 backend with more than one ready
//!             endpoint (Forwarder::hedge_candidate) ─ no ─► the plain try
//!             (LeanPath::try_upstream)
//!   a small body: read whole into the retry buffer first (both tries send it)
//!   A = Forwarder::upstream_peer ─ head (request.rs) ─ attempt: connect (pool or new),
//!       head, read the first response piece
//!   A answers (or fails) within the delay ─► as a plain try
//!   delay passed: Forwarder::hedge_peer (next choice; the whole own region skipped when A
//!       is in it; one failover allowance; retry budget only when A's request went out)
//!     none ─► wait for A
//!     B = attempt ─ race A and B: the first answer wins (hedges{won} when B), the other is
//!       dropped: its connection is closed, never pooled; a try that fails while the other
//!       runs ejects its endpoint on a connect failure and the race goes on; a client that
//!       goes away meanwhile ends it (both tries dropped, nothing retried, no hedge after)
//!   winner ─► h1::resume: the response hooks and body as in any try ─ pooled if clean
//! ```
//!
//! The delay ([`Hedging::slot`]) is the 95th percentile of the backend's last
//! [`SAMPLES`] times from a try's start to its first response piece, bounded to
//! [[`MIN_DELAY`], [`MAX_DELAY`]]; with fewer than [`MIN_SAMPLES`] it is [`DEFAULT_DELAY`]. A try
//! still connecting when the delay passes counts as not answered.
//!
//! Accounting of the loser: a try cancelled after it had connected was only slower and is not
//! judged. A try cancelled while still connecting is judged as a connect timeout (ejected) only
//! when its endpoint really does not take a connection within what was left of the connect
//! timeout: one plain TCP connect in the background per endpoint at a time
//! (Forwarder::hedge_lost_connecting). A lost SYN thus costs nothing, a blackholed endpoint is
//! ejected about one connect timeout after its first lost race.
//!
//! Only the lean path hedges; the framework path (`--http1-path framework`, and HTTP/2) does
//! not. A chunked body or one larger than [`MAX_BODY`] never hedges: it would have to be held
//! whole before the first try.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora_core::protocols::http::HttpTask;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType};

use super::codec::OwnClient;
use super::codec::wire::Encoded;
use super::{LeanPath, Tried, failed, h1, request};
use crate::endpoints::EndpointKey;
use crate::gateway::{Ctx, Downstream, Forwarder, Role};

/// What the span of the try that lost a hedge race records (it was cancelled, not failed).
const HEDGE_LOST: &str = "hedge lost";

/// Shortest hedge delay.
pub const MIN_DELAY: Duration = Duration::from_millis(25);
/// Longest hedge delay.
pub const MAX_DELAY: Duration = Duration::from_millis(250);
/// Hedge delay of a backend with too little history.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(100);
/// Largest request body a request may have and still hedge (read whole before the first try,
/// sent by both tries).
pub const MAX_BODY: usize = 16 * 1024;
/// Latencies kept per backend.
pub const SAMPLES: usize = 64;
/// Latencies needed before the percentile replaces [`DEFAULT_DELAY`].
pub const MIN_SAMPLES: usize = 16;
/// The percentile is recomputed after this many new samples (not per request).
const RECOMPUTE_EVERY: u32 = 8;
/// Backends with history kept at most; beyond it the table starts over (backends come and go
/// with snapshots, and a fresh history costs only the default delay for a while).
const MAX_BACKENDS: usize = 4096;

/// Hedging state of one proxy ([`crate::state::Shared::hedging`]).
#[derive(Default)]
pub(crate) struct Hedging {
    /// Latency history per backend name.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Endpoints with a background connect check running (one per endpoint).
    checks: Mutex<HashSet<EndpointKey>>,
}

impl Hedging {
    /// The latency history of `backend`.
    pub(crate) fn slot(&self, backend: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(backend) {
            return s.clone();
        }
        if slots.len() >= MAX_BACKENDS {
            slots.clear();
        }
        let s = Arc::new(Slot::default());
        slots.insert(backend.to_string(), s.clone());
        s
    }

    /// Starts a background connect check of `key`; `false` when one is running already.
    pub(crate) fn begin_check(&self, key: EndpointKey) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
    }

    /// Ends the connect check of `key`.
    pub(crate) fn end_check(&self, key: EndpointKey) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

/// The last [`SAMPLES`] latencies of one backend and the delay derived from them.
#[derive(Default)]
pub(crate) struct Slot(Mutex<Window>);

#[derive(Default)]
struct Window {
    /// Microseconds, a ring.
    ring: Vec<u32>,
    next: usize,
    /// Samples since the delay was computed.
    fresh: u32,
    delay: Option<Duration>,
}

impl Slot {
    /// The hedge delay now.
    pub(crate) fn delay(&self) -> Duration {
        let w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.delay.unwrap_or(DEFAULT_DELAY)
    }

    /// Records the time from a try's start to its first response piece.
    pub(crate) fn observe(&self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.ring.len() < SAMPLES {
            w.ring.push(us);
        } else {
            let i = w.next;
            w.ring[i] = us;
        }
        w.next = (w.next + 1) % SAMPLES;
        w.fresh += 1;
        if w.ring.len() >= MIN_SAMPLES && (w.delay.is_none() || w.fresh >= RECOMPUTE_EVERY) {
            w.fresh = 0;
            w.delay = Some(delay_of(&w.ring));
        }
    }
}

/// The 95th percentile of `samples` (microseconds), bounded to [MIN_DELAY, MAX_DELAY].
fn delay_of(samples: &[u32]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let i = (sorted.len() * 95).div_ceil(100).saturating_sub(1);
    let p95 = sorted.get(i).copied().unwrap_or(0);
    Duration::from_micros(u64::from(p95)).clamp(MIN_DELAY, MAX_DELAY)
}

/// The body a hedged request may have.
enum Body {
    None,
    /// A `Content-Length` body of at most [`MAX_BODY`] bytes: read whole before the first try.
    Small,
}

/// Whether the client's request may be sent twice: an idempotent method, no upgrade, no body or
/// a small one with a `Content-Length` (not chunked, no `Expect: 100-continue`: that client
/// waits for an answer before it sends the body).
fn eligible(session: &mut impl Downstream) -> Option<Body> {
    use http::{Method, header};
    let head = session.req_header();
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(&head.method);
    if !idempotent || session.is_upgrade_req() {
        return None;
    }
    if session.is_body_empty() {
        return Some(Body::None);
    }
    let head = session.req_header();
    let small = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
        .is_some_and(|n| n <= MAX_BODY);
    let plain = !head.headers.contains_key(header::TRANSFER_ENCODING)
        && !head.headers.contains_key(header::EXPECT);
    (small && plain).then_some(Body::Small)
}

/// Reads a small request body whole into the session's retry buffer (a later plain try replays
/// it from there, both hedged tries send it); an error when the client does not send it whole.
async fn buffer_body(session: &mut impl Downstream) -> Result<Bytes, Box<Error>> {
    session.enable_retry_buffering();
    // Bounded: every turn reads a non-empty piece of a body of at most MAX_BODY bytes (or ends).
    for _ in 0..=MAX_BODY {
        if session.read_request_body().await?.is_none() || session.is_body_done() {
            break;
        }
    }
    match session.get_retry_buffer() {
        Some(body) if session.is_body_done() && !session.retry_buffer_truncated() => Ok(body),
        _ => Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "request body not read whole",
        )),
    }
}

/// One try of a hedged request, hedged if it does not answer in time (see the module docs);
/// a request that may not hedge gets the plain try.
pub(super) async fn try_upstream<R: Role>(
    path: &LeanPath<R>,
    session: &mut impl Downstream,
    ctx: &mut Ctx,
) -> Tried {
    let fwd = path.fwd();
    let (slot, body) = match (fwd.hedge_candidate(ctx), eligible(session)) {
        (Some(backend), Some(body)) => (fwd.shared.hedging.slot(backend), body),
        _ => return path.try_upstream(session, ctx).await,
    };
    let body = match body {
        Body::None => None,
        Body::Small => match buffer_body(session).await {
            Ok(b) => Some(b),
            Err(e) => {
                // The client's fault (gone, too slow, short): nothing to retry.
                let mut e = e.into_down();
                e.set_retry(false);
                return failed(e);
            }
        },
    };
    let peer = match fwd.upstream_peer(ctx).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let head = match request::for_h1(fwd, session, ctx).and_then(|h| Encoded::of(&h)) {
        Ok(h) => Box::new(h),
        Err(e) => {
            return Tried {
                downstream_reusable: false,
                error: Some(fwd.error_while_proxy(&peer, session, e, ctx, false)),
                upgraded: None,
            };
        }
    };
    match race(path, session, ctx, (peer, head, body.as_deref()), &slot).await {
        Ok(done) => finish(path, session, ctx, done).await,
        // Nobody waits for an answer: both tries are dropped, nothing is retried.
        Err(mut e) => {
            e.set_retry(false);
            failed(e)
        }
    }
}

/// A try's first response piece, with its connection.
struct Answered {
    up: OwnClient,
    first: HttpTask,
    /// The connection came from the pool.
    reused: bool,
}

/// How a try failed.
enum Failed {
    /// No connection (refused, timed out, TLS).
    Connect(Box<Error>),
    /// Connected (`reused`: from the pool), then the head or the response failed.
    Exchange(Box<Error>, bool),
}

impl Failed {
    fn error(&self) -> &Error {
        match self {
            Failed::Connect(e) | Failed::Exchange(e, _) => e,
        }
    }
}

/// A finished try and its peer.
struct Done {
    peer: Box<HttpPeer>,
    result: Result<Answered, Failed>,
}

/// One try up to its first response piece; `connected` turns true once it has a connection.
async fn attempt<R: Role>(
    path: &LeanPath<R>,
    peer: Box<HttpPeer>,
    head: Box<Encoded>,
    body: Option<&[u8]>,
    connected: &AtomicBool,
) -> Done {
    let result = answer(path, &peer, head, body, connected).await;
    Done { peer, result }
}

async fn answer<R: Role>(
    path: &LeanPath<R>,
    peer: &HttpPeer,
    head: Box<Encoded>,
    body: Option<&[u8]>,
    connected: &AtomicBool,
) -> Result<Answered, Failed> {
    let (mut up, reused) = path.h1_session(peer).await.map_err(|mut e| {
        e.as_up();
        Failed::Connect(e)
    })?;
    connected.store(true, Ordering::Relaxed);
    up.read_timeout = peer.options.read_timeout;
    up.write_timeout = peer.options.write_timeout;
    let sent = async {
        up.write_request_header(&head).await?;
        h1::send_body(&mut up, body, true).await
    };
    if let Err(e) = sent.await {
        return Err(Failed::Exchange(e.into_up(), reused));
    }
    match up.read_response_task().await {
        Ok(first) => Ok(Answered { up, first, reused }),
        Err(e) => Err(Failed::Exchange(e.into_up(), reused)),
    }
}

/// Runs the first try, hedges it after the delay, and returns the try that answered first (or
/// the last one to fail); that try is the context's current one. The other is dropped here,
/// which closes its connection. Meanwhile the client is watched as the exchange watches it
/// (h1.rs): a client that goes away ends the race with its error, dropping both tries.
async fn race<R: Role>(
    path: &LeanPath<R>,
    session: &mut impl Downstream,
    ctx: &mut Ctx,
    (peer, head, body): (Box<HttpPeer>, Box<Encoded>, Option<&[u8]>),
    slot: &Slot,
) -> Result<Done, Box<Error>> {
    let fwd = path.fwd();
    // Declared before the tries that borrow them (dropped after them).
    let connected_a = AtomicBool::new(false);
    let connected_b = AtomicBool::new(false);
    let started = Instant::now();
    let mut a = std::pin::pin!(attempt(path, peer, head, body, &connected_a));
    let delay = tokio::time::sleep(slot.delay());
    tokio::select! {
        biased;
        done = &mut a => {
            if done.result.is_ok() {
                slot.observe(started.elapsed());
            }
            return Ok(done);
        }
        gone = client_gone(session) => return Err(gone),
        () = delay => {}
    }
    let Some((peer_b, mut parked)) = fwd.hedge_peer(ctx, connected_a.load(Ordering::Relaxed))
    else {
        let done = tokio::select! {
            done = &mut a => done,
            gone = client_gone(session) => return Err(gone),
        };
        if done.result.is_ok() {
            slot.observe(started.elapsed());
        }
        return Ok(done);
    };
    let head_b = match request::for_h1(fwd, session, ctx).and_then(|h| Encoded::of(&h)) {
        Ok(h) => Box::new(h),
        Err(e) => {
            tracing::debug!(error = %e, "hedged try not sent");
            Forwarder::hedge_swap(ctx, &mut parked);
            Forwarder::hedge_parked_ended(ctx, &"hedge not sent");
            return tokio::select! {
                done = &mut a => Ok(done),
                gone = client_gone(session) => Err(gone),
            };
        }
    };
    // From here the context's current try is B, A is parked.
    let hedged = Instant::now();
    let mut b = std::pin::pin!(attempt(path, peer_b, head_b, body, &connected_b));
    let (mut a_live, mut b_live) = (true, true);
    // Bounded: every turn ends one of the two tries, each bounded by its connect and read
    // timeouts; the second to end returns.
    loop {
        tokio::select! {
            gone = client_gone(session) => return Err(gone),
            done = &mut a, if a_live => {
                a_live = false;
                match &done.result {
                    Ok(_) => {
                        Forwarder::hedge_swap(ctx, &mut parked);
                        if b_live {
                            Forwarder::hedge_parked_ended(ctx, &HEDGE_LOST);
                        }
                        slot.observe(started.elapsed());
                        if b_live && !connected_b.load(Ordering::Relaxed) {
                            fwd.hedge_lost_connecting(parked.key(), hedged);
                        }
                        return Ok(done);
                    }
                    Err(_) if !b_live => {
                        Forwarder::hedge_swap(ctx, &mut parked);
                        return Ok(done);
                    }
                    Err(f) => {
                        fwd.hedge_try_failed(parked.key(), f.error(), matches!(f, Failed::Connect(_)));
                        Forwarder::hedge_parked_ended(ctx, &f.error().etype().as_str());
                    }
                }
            }
            done = &mut b, if b_live => {
                b_live = false;
                match &done.result {
                    Ok(_) => {
                        fwd.shared.metrics.hedges.with_label_values(&["won"]).inc();
                        if a_live {
                            Forwarder::hedge_parked_ended(ctx, &HEDGE_LOST);
                        }
                        slot.observe(hedged.elapsed());
                        if a_live && !connected_a.load(Ordering::Relaxed) {
                            fwd.hedge_lost_connecting(parked.key(), started);
                        }
                        return Ok(done);
                    }
                    Err(_) if !a_live => return Ok(done),
                    Err(f) => {
                        let key = Forwarder::current_key(ctx);
                        fwd.hedge_try_failed(key, f.error(), matches!(f, Failed::Connect(_)));
                        // B (current) ends its span now; A's answer or failure goes on A's
                        // span once A is current again.
                        Forwarder::hedge_current_ended(ctx, &f.error().etype().as_str());
                    }
                }
            }
        }
    }
}

/// Resolves when the client goes away (or sends bytes past its request) while the tries wait
/// for an answer; stays pending otherwise.
async fn client_gone(session: &mut impl Downstream) -> Box<Error> {
    match session.read_body_or_idle(true).await {
        Err(e) => e.into_down(),
        // Bytes past the request: the exchange would fail on them too (h1.rs).
        Ok(_) => {
            Error::explain(ErrorType::ConnectionClosed, "client sent past its request").into_down()
        }
    }
}

/// The rest of the try that won (or failed last), as the plain try does it.
async fn finish<R: Role>(
    path: &LeanPath<R>,
    session: &mut impl Downstream,
    ctx: &mut Ctx,
    done: Done,
) -> Tried {
    let fwd = path.fwd();
    let Done { peer, result } = done;
    match result {
        Ok(Answered {
            mut up,
            first,
            reused,
        }) => {
            let x = h1::resume(fwd, session, &mut up, ctx, first).await;
            if x.upgraded {
                return Tried {
                    downstream_reusable: false,
                    error: None,
                    upgraded: Some(up),
                };
            }
            if x.upstream_reusable {
                up.respect_keepalive();
                if let Some(stream) = up.reuse().await {
                    path.pool
                        .put(peer.reuse_hash(), stream, peer.idle_timeout());
                }
            }
            Tried {
                downstream_reusable: x.downstream_reusable,
                error: x
                    .error
                    .map(|e| fwd.error_while_proxy(&peer, session, e, ctx, reused)),
                upgraded: None,
            }
        }
        Err(Failed::Connect(e)) => failed(fwd.fail_to_connect(&peer, ctx, e).into_up()),
        Err(Failed::Exchange(e, reused)) => Tried {
            downstream_reusable: false,
            error: Some(fwd.error_while_proxy(&peer, session, e, ctx, reused)),
            upgraded: None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn delay_is_the_bounded_p95_of_recent_latencies() {
        let slot = Slot::default();
        assert_eq!(slot.delay(), DEFAULT_DELAY, "no history");
        for _ in 0..MIN_SAMPLES - 1 {
            slot.observe(Duration::from_millis(100));
        }
        assert_eq!(slot.delay(), DEFAULT_DELAY, "too little history");
        // 2 slow answers in 64 (3 %): the p95 is a fast one, bounded below.
        let slot = Slot::default();
        for i in 0..SAMPLES {
            let ms = if i % 32 == 0 { 900 } else { 2 };
            slot.observe(Duration::from_millis(ms));
        }
        assert_eq!(slot.delay(), MIN_DELAY);
        // A slow backend: the p95 itself.
        let slot = Slot::default();
        for i in 0..SAMPLES as u64 {
            slot.observe(Duration::from_millis(100 + i));
        }
        let d = slot.delay();
        assert!(
            d >= Duration::from_millis(155) && d <= Duration::from_millis(163),
            "{d:?}"
        );
        // Bounded above, and the ring forgets old samples.
        for _ in 0..SAMPLES {
            slot.observe(Duration::from_secs(3));
        }
        assert_eq!(slot.delay(), MAX_DELAY);
        for _ in 0..SAMPLES {
            slot.observe(Duration::from_millis(1));
        }
        assert_eq!(slot.delay(), MIN_DELAY);
    }

    #[test]
    fn history_per_backend_is_bounded() {
        let h = Hedging::default();
        let a = h.slot("a");
        a.observe(Duration::from_millis(1));
        assert!(Arc::ptr_eq(&a, &h.slot("a")));
        for i in 0..MAX_BACKENDS {
            h.slot(&format!("b{i}"));
        }
        assert!(h.slots.lock().unwrap().len() <= MAX_BACKENDS);
        let key = EndpointKey::from(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(h.begin_check(key));
        assert!(!h.begin_check(key), "one check per endpoint at a time");
        h.end_check(key);
        assert!(h.begin_check(key));
    }
}
