//! One stream, as the proxy follows it: open it with the hello, split the body into lines,
//! decode each and act on it.
//!
//! ```text
//! session ─► certificate ─► POST /v1/stream ─► 200? ─┬─ follow (lines) ──────────────┐ whichever
//!                                 │ 401 / other        ├─ report traffic (forever)    │ ends first;
//!                                 ▼                    └─ renew certificate (forever) ┘ only follow does
//!                 ▼
//!            ClientError::Unauthorized / Status
//! follow: frames ─► lines ─► handle ─┬─ welcome: connected, idle bound = 3 pings + 1 s
//!                                    ├─ ping: nothing
//!                                    ├─ snapshot: held already applied? ack : apply ─► ack
//!                                    ├─ endpoints: on our base? fast path or patched apply ─► ack
//!                                    ├─ patch: on our base? patch the held snapshot ─► apply ─► ack
//!                                    │         else NACK, held snapshot untouched
//!                                    └─ undecodable: a snapshot/delta? NACK it : protocol error
//!         a transient refusal's retry timer fires ─► apply the held snapshot again
//! ```

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::apply::Held;
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
    async fn follow<T: Target>(
        &self,
        mut body: hyper::body::Incoming,
        target: &T,
        held: &mut Held,
        attempt: &mut u32,
    ) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        let mut idle = WELCOME_TIMEOUT;
        loop {
            let retry_at = held.retry_at();
            tokio::select! {
                frame = tokio::time::timeout(idle, body.frame()) => {
                    let frame = frame
                        .map_err(|_| ClientError::Silent(idle))?
                        .ok_or(ClientError::Closed)?
                        .map_err(|e| ClientError::Connection(error_chain(&e)))?;
                    let Ok(data) = frame.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
                        let line = buf.split_to(scanned + pos + 1);
                        scanned = 0;
                        if let Some(ping) = self.handle(line.freeze(), target, held).await? {
                            idle = ping.saturating_mul(3) + Duration::from_secs(1);
                            *attempt = 0;
                        }
                    }
                    scanned = buf.len();
                    if buf.len() > MAX_LINE {
                        return Err(ClientError::Protocol(format!(
                            "a stream line exceeds {MAX_LINE} bytes"
                        )));
                    }
                }
                () = sleep_until_opt(retry_at) => self.retry(target, held).await,
            }
        }
    }

    /// Handles one line; returns the ping interval when it was the welcome.
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
                    self.apply_desired(target, held).await;
                    // A big snapshot takes tens of ms to free: not on the runtime's workers.
                    if let Some(old) = old {
                        tokio::task::spawn_blocking(move || drop(old));
                    }
                }
            }
            Message::Endpoints(u) => self.endpoints(u, target, held).await?,
            Message::Patch(p) => self.patch(p, target, held).await,
        }
        Ok(None)
    }

    /// A route-level patch: applied to the held snapshot (all or nothing), which then goes to
    /// the target in full. One that does not fit is refused and changes nothing.
    async fn patch<T: Target>(&self, p: SnapshotPatch, target: &T, held: &mut Held) {
        let generation = p.generation;
        let result = match held.desired.as_mut() {
            Some(desired) => p.apply(desired).map_err(|e| e.to_string()),
            None => Err(format!(
                "a patch on generation {} but no snapshot is held",
                p.base
            )),
        };
        match result {
            Ok(()) => self.apply_desired(target, held).await,
            Err(e) => {
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
        // snapshot.
        let fast = if held.applied {
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
                held.patch(&u);
                self.apply_desired(target, held).await;
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

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
