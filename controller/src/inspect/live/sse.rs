//! One `/v1/events` stream: a snapshot, then updates and keep-alive comments, until the stream's
//! lifetime ends or the controller stops.
//!
//! ```text
//!  open ─► wait (bounded) for a current frame ─► "event: snapshot"
//!    └─ loop: frame changed ─► "event: update"  (the latest only: missed ones are skipped)
//!             keep-alive due ─► ": keep-alive"
//!             lifetime over / hub gone ─► end (the page reconnects)
//! ```
//!
//! hyper asks for the next chunk only after it wrote the previous one, so a client that reads
//! slowly holds one chunk here and the socket's buffer, nothing more; the slot (a semaphore
//! permit) is released when the stream is dropped.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{AdminBody, Frame, LiveConfig};

/// What the stream holds between chunks.
struct State {
    rx: watch::Receiver<Option<Frame>>,
    started: bool,
    keep_alive: Interval,
    ends: Instant,
    period: std::time::Duration,
    _slot: super::StreamSlot,
}

/// The body of one event stream.
pub(super) fn stream(
    rx: watch::Receiver<Option<Frame>>,
    slot: super::StreamSlot,
    cfg: &LiveConfig,
) -> AdminBody {
    let mut keep_alive = tokio::time::interval_at(Instant::now() + cfg.keep_alive, cfg.keep_alive);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        rx,
        started: false,
        keep_alive,
        ends: Instant::now() + cfg.lifetime,
        period: cfg.period,
        _slot: slot,
    };
    let chunks = futures::stream::unfold(state, |mut st| async move {
        let chunk = next(&mut st).await?;
        st.keep_alive.reset();
        Some((Ok::<_, Infallible>(BodyFrame::data(chunk)), st))
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// The next chunk, or `None` to end the stream.
async fn next(st: &mut State) -> Option<Bytes> {
    if !st.started {
        st.started = true;
        // Reconnect after 2 s (for EventSource clients; the page has its own backoff).
        let mut out = b"retry: 2000\n\n".to_vec();
        let frame = current(st).await?;
        out.extend_from_slice(&event("snapshot", &frame));
        return Some(Bytes::from(out));
    }
    tokio::select! {
        changed = st.rx.changed() => {
            changed.ok()?;
            let frame = st.rx.borrow_and_update().clone()?;
            Some(event("update", &frame))
        }
        _ = st.keep_alive.tick() => Some(Bytes::from_static(b": keep-alive\n\n")),
        () = tokio::time::sleep_until(st.ends) => None,
    }
}

/// A frame the hub confirmed within two periods; waits for one (the hub was just woken) up to
/// twice the loop's bounded wait, then takes what there is. A hub with nothing by then (or
/// stopping) ends the stream: the page retries.
async fn current(st: &mut State) -> Option<Frame> {
    let deadline = Instant::now() + super::super::admin::LOOP_WAIT * 2;
    loop {
        if let Some(f) = st.rx.borrow_and_update().clone()
            && f.checked.elapsed() <= st.period * 2
        {
            return Some(f);
        }
        match tokio::time::timeout_at(deadline, st.rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => return st.rx.borrow_and_update().clone(),
        }
    }
}

/// `id: N`, `event: NAME`, `data: JSON` (one line: serde_json escapes newlines in strings).
fn event(name: &str, f: &Frame) -> Bytes {
    let mut out = Vec::with_capacity(f.json.len() + 48);
    out.extend_from_slice(format!("id: {}\nevent: {name}\ndata: ", f.seq).as_bytes());
    out.extend_from_slice(&f.json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
