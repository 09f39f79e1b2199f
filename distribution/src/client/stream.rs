//! One stream, as the proxy follows it: open it with the hello, split the body into lines,
//! decode each and act on it.
//!
//! ```text
//! session ─► certificate ─► POST /v1/stream ─► 200? ─┬─ follow (lines) ──────────────┐ whichever
//!                                 │ 401 / other        ├─ report traffic (forever)    │ ends first;
//!                                 ▼                    └─ renew certificate (forever) ┘ only follow does
//!                 ▼
//!            ClientError::Unauthorized / Status
//! reader task: frames ─► lines ─► channel (read ahead while the target applies)
//! follow: the next line + every line already read ─► batch ─► handle each:
//!           ├─ welcome: connected, idle bound = 3 pings + 1 s
//!           ├─ ping: nothing
//!           ├─ snapshot: held already applied? ack : replace the held snapshot (deferred)
//!           ├─ endpoints: on our base? target serves it and nothing deferred? fast path ─► ack
//!           │             : patch the held snapshot (deferred)
//!           ├─ patch: on our base? patch the held snapshot (deferred)
//!           │         else apply what is deferred, then NACK; held snapshot untouched
//!           └─ undecodable: a snapshot/delta? apply what is deferred, then NACK it
//!                           : protocol error
//!         end of batch (or a line ending the stream): anything deferred? apply_desired
//!           ─► ack its generation (refused? fall back to the newest state of the batch the
//!              target takes, ack it, and NACK the refused one last)
//!         a transient refusal's retry timer fires ─► apply the held snapshot again
//! ```
//!
//! Batches: while the target applies one snapshot (a full router compile, ~0.1 s at 50k
//! routes), the controller may send several more changes. Applying each of them in turn would
//! let a proxy that is slower than the stream of changes fall further behind with every one
//! (seconds at 50k routes with a change every 100 ms). Every line already received is
//! therefore handled before the target is given the result, once; the acknowledgement of the
//! newest generation covers the ones before it (the server counts "acked it or newer").
//!
//! A batch ends where applying its lines one by one would have ended: every state goes to the
//! target through the one path ([`Client::apply_desired`], so a persisting target keeps what it
//! applied, a refusal is recorded and acknowledged the same way), a line that is refused on its
//! own (undecodable, a patch on another base) first lets the lines before it be applied, and a
//! refused newest state falls back to the newest earlier state of the batch the target takes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::apply::{Held, drop_off_workers};
use super::{Client, ClientError, Target, error_chain};
use meridian_model::patch::SnapshotPatch;

use crate::protocol::{
    AckResult, CAPABILITY_PATCH, EndpointsUpdate, Message, Peek, StreamHello, Welcome,
};

/// Longest stream line accepted (a full snapshot).
const MAX_LINE: usize = 512 * 1024 * 1024;
/// Lines longer than this are decoded on the blocking pool.
const BIG_LINE: usize = 256 * 1024;
/// Silence tolerated before the welcome line.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// One stream, until it ends. `Ok(())` never happens today (the server only ends streams by
    /// closing them); kept for a future graceful goodbye.
    pub(super) async fn session<T: Target>(
        &self,
        target: &T,
        held: &mut Held,
        attempt: &mut u32,
    ) -> Result<(), ClientError> {
        self.ensure_certificate(target).await?;
        let hello = StreamHello {
            hello: self.cfg.hello.clone(),
            capabilities: if self.cfg.patches {
                vec![CAPABILITY_PATCH.to_string()]
            } else {
                Vec::new()
            },
        };
        let hello = serde_json::to_vec(&hello)
            .map_err(|e| ClientError::Protocol(format!("cannot encode hello: {e}")))?;
        let req = self.request("/v1/stream", hello)?;
        let resp = tokio::time::timeout(WELCOME_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| ClientError::Silent(WELCOME_TIMEOUT))?
            .map_err(|e| ClientError::Connection(error_chain(&e)))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = body_text(resp.into_body(), Duration::from_secs(2)).await;
            return Err(if status == StatusCode::UNAUTHORIZED {
                ClientError::Unauthorized(body)
            } else {
                ClientError::Status { status, body }
            });
        }
        tokio::select! {
            r = self.follow(resp.into_body(), target, held, attempt) => r,
            never = self.report_traffic(target) => match never {},
            never = self.renew_certificates(target) => match never {},
        }
    }

    /// Reads the stream's lines until it ends.
    ///
    /// A reader task splits the body into lines while the target applies: what arrived
    /// meanwhile is then handled as one batch (the target gets the end state once, see
    /// `Held::deferred`), so a proxy slower than the changes catches up instead of falling
    /// further behind. The reader holds at most [`READ_AHEAD`] lines; beyond that the stream
    /// pushes back and the server's feed skips to its newest version.
    async fn follow<T: Target>(
        &self,
        body: hyper::body::Incoming,
        target: &T,
        held: &mut Held,
        attempt: &mut u32,
    ) -> Result<(), ClientError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reader = AbortOnDrop(tokio::spawn(read_lines(body, tx)));
        let mut idle = WELCOME_TIMEOUT;
        loop {
            let retry_at = held.retry_at();
            tokio::select! {
                first = tokio::time::timeout(idle, rx.recv()) => {
                    let first = first
                        .map_err(|_| ClientError::Silent(idle))?
                        .ok_or(ClientError::Closed)?;
                    let mut ended = None;
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some(item) = next.take() {
                        match item {
                            Ok(line) => batch.push(line),
                            Err(e) => {
                                ended = Some(e);
                                break;
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    let handled = self.handle_batch(batch, target, held).await;
                    if let Some(ping) = handled? {
                        idle = ping.saturating_mul(3) + Duration::from_secs(1);
                        *attempt = 0;
                    }
                    if let Some(e) = ended {
                        drop(reader);
                        return Err(e);
                    }
                }
                () = sleep_until_opt(retry_at) => self.retry(target, held).await,
            }
        }
    }

    /// Handles the lines that were ready together, then hands the target the end state once if
    /// any of them changed what it should serve (also when a line ends the stream: what was
    /// received is served while reconnecting). Returns the ping interval of a welcome among them.
    async fn handle_batch<T: Target>(
        &self,
        batch: Vec<Bytes>,
        target: &T,
        held: &mut Held,
    ) -> Result<Option<Duration>, ClientError> {
        let mut welcome = None;
        let mut result = Ok(());
        for line in batch {
            match self.handle(line, target, held).await {
                Ok(Some(ping)) => welcome = Some(ping),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if held.deferred {
            self.apply_desired(target, held).await;
        }
        result.map(|()| welcome)
    }

    /// Handles one line; returns the ping interval when it was the welcome. A line that changes
    /// what the target should serve changes the held snapshot and marks it `deferred`; the
    /// batch applies it ([`Client::handle_batch`]).
    async fn handle<T: Target>(
        &self,
        line: Bytes,
        target: &T,
        held: &mut Held,
    ) -> Result<Option<Duration>, ClientError> {
        let msg = match decode(&line).await? {
            Ok(m) => m,
            Err(e) => {
                return self
                    .undecodable(&line, e, target, held)
                    .await
                    .map(|()| None);
            }
        };
        match msg {
            Message::Welcome(w) => return Ok(Some(self.welcomed(&w, target))),
            Message::Ping => {}
            Message::Snapshot(s) => {
                if held.serves(&s) {
                    // A resync of what we serve already.
                    self.acked(s.generation, target).await;
                } else {
                    let old = held.desired.replace(*s);
                    // Kept when an earlier line of the batch made it (the target has not been
                    // given it); else freed off the workers (tens of ms for a big one).
                    if held.deferred {
                        held.defer(old);
                    } else {
                        held.defer(None);
                        drop_off_workers(old.into_iter().collect());
                    }
                }
            }
            Message::Endpoints(u) => self.endpoints(u, target, held).await?,
            Message::Patch(p) => self.patch(p, target, held).await,
        }
        Ok(None)
    }

    /// A route-level patch: applied to the held snapshot (all or nothing), which then goes to
    /// the target in full at the end of the batch. One that does not fit is refused and changes
    /// nothing.
    async fn patch<T: Target>(&self, p: SnapshotPatch, target: &T, held: &mut Held) {
        let generation = p.generation;
        let before = held.before_change();
        let result = match held.desired.as_mut() {
            Some(desired) => p.apply(desired).map_err(|e| e.to_string()),
            None => Err(format!(
                "a patch on generation {} but no snapshot is held",
                p.base
            )),
        };
        match result {
            Ok(()) => held.defer(before),
            Err(e) => {
                // What earlier lines of the batch asked for is served (and acknowledged) first,
                // as if each line had been applied on its own.
                if held.deferred {
                    self.apply_desired(target, held).await;
                }
                let reason = format!("patch to generation {generation} does not apply: {e}");
                tracing::warn!(%reason, "patch refused; the controller sends the full snapshot");
                target.refuse(&reason);
                self.refuse_patch(generation, reason).await;
            }
        }
    }

    /// The stream is live: marks the client connected; returns the server's ping interval.
    fn welcomed<T: Target>(&self, w: &Welcome, target: &T) -> Duration {
        self.set_status(target, |s| {
            s.connected = true;
            s.last_error = None;
            s.connects += 1;
        });
        tracing::info!(url = %self.base, "connected to the controller");
        Duration::from_millis(w.ping_interval_ms)
    }

    /// An endpoint delta: only on the generation we hold (else the stream is resynced).
    async fn endpoints<T: Target>(
        &self,
        u: EndpointsUpdate,
        target: &T,
        held: &mut Held,
    ) -> Result<(), ClientError> {
        let holding = held.desired.as_ref().map(|d| d.generation);
        if holding != Some(u.base) {
            return Err(ClientError::Protocol(format!(
                "endpoint update on generation {} but we hold {holding:?}; resyncing",
                u.base,
            )));
        }
        // The target serves the base: hand it the delta, not a patched copy of the whole
        // snapshot. (Not when a change before it in the batch is still to be applied: the
        // target does not serve the base then.)
        let fast = if held.applied && !held.deferred {
            target
                .apply_endpoints(u.generation, u.base, &u.changes)
                .await
        } else {
            None
        };
        match fast {
            Some(result) => {
                // Acknowledged first; the held copy is patched right after, before the next
                // line or a retry can read it.
                self.outcome(u.generation, result, target, held).await;
                held.patch(&u);
            }
            None => {
                // Patched in place: it is what the controller wants, whatever apply says.
                let before = held.before_change();
                held.patch(&u);
                held.defer(before);
            }
        }
        Ok(())
    }

    /// A line that does not decode: a snapshot or delta is refused (NACK with the decoding
    /// error), anything else ends the stream.
    async fn undecodable<T: Target>(
        &self,
        line: &[u8],
        e: serde_json::Error,
        target: &T,
        held: &mut Held,
    ) -> Result<(), ClientError> {
        match serde_json::from_slice::<Peek>(line) {
            Ok(
                Peek::Snapshot { generation }
                | Peek::Endpoints { generation }
                | Peek::Patch { generation },
            ) => {
                // What earlier lines of the batch asked for is served first, as if each line
                // had been applied on its own.
                if held.deferred {
                    self.apply_desired(target, held).await;
                }
                let reason = format!("generation {generation} does not decode: {e}");
                target.refuse(&reason);
                // We no longer know what the controller wants; the next delta forces a resync.
                held.forget();
                self.ack(generation, AckResult::Refused { reason }).await;
                Ok(())
            }
            Ok(Peek::Welcome {} | Peek::Ping) | Err(_) => Err(ClientError::Protocol(format!(
                "undecodable stream line: {e}"
            ))),
        }
    }
}

/// Decodes one line; the outer error is the decoding task failing, the inner one the line.
async fn decode(line: &Bytes) -> Result<Result<Message, serde_json::Error>, ClientError> {
    if line.len() > BIG_LINE {
        // ~100 ms for a 10k-route snapshot: not on a worker that also serves requests.
        let l = line.clone();
        tokio::task::spawn_blocking(move || serde_json::from_slice::<Message>(&l))
            .await
            .map_err(|e| ClientError::Protocol(format!("decoding task failed: {e}")))
    } else {
        Ok(serde_json::from_slice::<Message>(line))
    }
}

/// The trimmed text of an error answer, read for at most `within` (empty when it does not
/// arrive).
pub(super) async fn body_text(body: hyper::body::Incoming, within: Duration) -> String {
    tokio::time::timeout(within, body.collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default()
}

/// Splits the stream body into lines for [`Client::follow`]; the last item is the error that
/// ended the stream.
async fn read_lines(
    mut body: hyper::body::Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, ClientError>>,
) {
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    loop {
        let data = match body.frame().await {
            None => Err(ClientError::Closed),
            Some(Err(e)) => Err(ClientError::Connection(error_chain(&e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
        };
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = buf.split_to(scanned + pos + 1).freeze();
            scanned = 0;
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        scanned = buf.len();
        if buf.len() > MAX_LINE {
            let _ = tx
                .send(Err(ClientError::Protocol(format!(
                    "a stream line exceeds {MAX_LINE} bytes"
                ))))
                .await;
            return;
        }
    }
}

/// Stream lines read ahead of the one being handled.
const READ_AHEAD: usize = 1024;

/// Aborts the reader task when the stream is left.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
