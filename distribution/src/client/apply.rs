//! Applying and acknowledging: what the client holds across reconnects ([`Held`]), handing it
//! to the target, retrying transient refusals and sending acks.
//!
//! ```text
//! apply_desired ─► Target::apply ─► outcome ─┬─ Ok: applied, ack Applied, status.generation
//!                                            └─ Refused: ack Refused; retry_after? ─► retry
//!   refused, and the batch passed through earlier states (Held::passed)? first: apply them
//!   newest first until one is taken ─► ack Applied; then the refused one again ─► outcome
//! retry (timer) ─► Target::apply ─► Ok: ack Applied │ Refused: ack only when the reason changed
//! ack ─► POST /v1/ack, up to ACK_TRIES tries of ACK_TIMEOUT (a lost ack is repaired by the
//!        resync after the next reconnect); a 503 (the request reached a follower replica
//!        through the controller Service: acks travel on their own connections) is tried again
//!        on a new connection, which may reach the leader
//! ```

use std::time::Duration;

use http::StatusCode;
use meridian_model::Snapshot;
use tokio::time::Instant;

use super::{Client, Refused, Target, error_chain};
use crate::protocol::{Ack, AckResult, EndpointsUpdate, patch_endpoints};

/// Bound of one acknowledgement request.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries per acknowledgement.
const ACK_TRIES: u32 = 5;
/// States of one batch kept to fall back to (each shares its routes with the held snapshot: a
/// few hundred kB at 50k routes). A batch whose newest this many states are all refused falls
/// back to what the target served before it.
const PASSED_KEPT: usize = 16;

/// What survives reconnects.
#[derive(Default)]
pub(super) struct Held {
    /// The last snapshot received (what the controller wants served).
    pub(super) desired: Option<Snapshot>,
    /// Whether `desired` is what the target serves.
    pub(super) applied: bool,
    /// `desired` changed and is to be applied once the lines that arrived together are all
    /// handled: a proxy that fell behind applies the newest state once, not every step to it.
    pub(super) deferred: bool,
    /// The states this batch passed through before `desired`, oldest first (at most
    /// [`PASSED_KEPT`]): had each line been applied in turn, the target would serve the newest
    /// of them it takes when it refuses `desired`, so [`Client::apply_desired`] falls back to it.
    passed: Vec<Snapshot>,
    /// When to try applying `desired` again, with the interval and the reason it failed last
    /// time.
    retry: Option<(Instant, Duration, String)>,
}

impl Held {
    /// Whether the target already serves exactly `snapshot`.
    pub(super) fn serves(&self, snapshot: &Snapshot) -> bool {
        self.applied && self.desired.as_ref() == Some(snapshot)
    }

    /// When the held snapshot is to be applied again, if it is.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry.as_ref().map(|(at, _, _)| *at)
    }

    /// What `desired` is before a line changes it, to keep when the change succeeds: a state of
    /// this batch the target has not been given yet (`None` when the target was given it, or
    /// nothing is held).
    pub(super) fn before_change(&self) -> Option<Snapshot> {
        if self.deferred {
            self.desired.clone()
        } else {
            None
        }
    }

    /// `desired` changed from `before` ([`Held::before_change`]): the target is to be given it
    /// by the batch's end, and `before` is kept to fall back to.
    pub(super) fn defer(&mut self, before: Option<Snapshot>) {
        if let Some(before) = before {
            if self.passed.len() == PASSED_KEPT {
                drop_off_workers(vec![self.passed.remove(0)]);
            }
            self.passed.push(before);
        }
        self.applied = false;
        self.deferred = true;
    }

    /// Forgets what the controller wants (it sent something we cannot decode).
    pub(super) fn forget(&mut self) {
        self.desired = None;
        self.applied = false;
        self.deferred = false;
        drop_off_workers(std::mem::take(&mut self.passed));
        self.retry = None;
    }

    /// Patches the held snapshot with the endpoint delta `u` and numbers it `u.generation`.
    pub(super) fn patch(&mut self, u: &EndpointsUpdate) {
        if let Some(desired) = self.desired.as_mut() {
            patch_endpoints(desired, &u.changes);
            desired.generation = u.generation;
        }
    }
}

/// Frees snapshots on the blocking pool: a big one takes tens of ms to free, not on the
/// runtime's workers.
pub(super) fn drop_off_workers(s: Vec<Snapshot>) {
    if !s.is_empty() {
        tokio::task::spawn_blocking(move || drop(s));
    }
}

impl Client {
    /// Applies `held.desired` and acknowledges the outcome: the one path by which what the
    /// stream's lines asked for reaches the target (a batch of one line or of many).
    ///
    /// When the target refuses it and the batch passed through other states, the target ends
    /// as if each line had been applied in turn: the newest earlier state it takes is applied
    /// and acknowledged, then `desired` is given again so that its refusal is the one recorded
    /// and acknowledged last (and a transient one retried), exactly as in the line-by-line order.
    pub(super) async fn apply_desired<T: Target>(&self, target: &T, held: &mut Held) {
        held.deferred = false;
        let passed = std::mem::take(&mut held.passed);
        let Some(snapshot) = held.desired.clone() else {
            drop_off_workers(passed);
            return;
        };
        let generation = snapshot.generation;
        let again = (!passed.is_empty()).then(|| snapshot.clone());
        let mut result = target.apply(snapshot).await;
        if let (Err(_), Some(again)) = (&result, again)
            && self.serve_newest_taken(passed, target).await
        {
            result = target.apply(again).await;
        }
        self.outcome(generation, result, target, held).await;
    }

    /// Applies the states of `passed` newest first until the target takes one, and
    /// acknowledges that one; whether one was taken.
    async fn serve_newest_taken<T: Target>(&self, mut passed: Vec<Snapshot>, target: &T) -> bool {
        let mut taken = false;
        while let Some(s) = passed.pop() {
            let generation = s.generation;
            if target.apply(s).await.is_ok() {
                self.acked(generation, target).await;
                taken = true;
                break;
            }
        }
        drop_off_workers(passed);
        taken
    }

    /// Records and acknowledges what applying `generation` gave.
    pub(super) async fn outcome<T: Target>(
        &self,
        generation: u64,
        result: Result<u64, Refused>,
        target: &T,
        held: &mut Held,
    ) {
        match result {
            Ok(_) => {
                held.applied = true;
                held.retry = None;
                self.acked(generation, target).await;
            }
            Err(r) => {
                held.applied = false;
                held.retry = r
                    .retry_after
                    .map(|d| (Instant::now() + d, d, r.reason.clone()));
                self.ack(generation, AckResult::Refused { reason: r.reason })
                    .await;
            }
        }
    }

    /// Tries the held snapshot again (its refusal was transient). Only a success or a new reason
    /// is acknowledged, so a port that stays taken does not flood the controller with NACKs.
    pub(super) async fn retry<T: Target>(&self, target: &T, held: &mut Held) {
        let Some((_, every, old_reason)) = held.retry.take() else {
            return;
        };
        let Some(s) = held.desired.clone() else {
            return;
        };
        let generation = s.generation;
        match target.apply(s).await {
            Ok(_) => {
                held.applied = true;
                self.acked(generation, target).await;
            }
            Err(r) => {
                held.retry = r
                    .retry_after
                    .map(|d| (Instant::now() + d.max(every), d, r.reason.clone()));
                if r.reason != old_reason {
                    self.ack(generation, AckResult::Refused { reason: r.reason })
                        .await;
                }
            }
        }
    }

    /// Acknowledges `generation` as applied and shows it in the status.
    pub(super) async fn acked<T: Target>(&self, generation: u64, target: &T) {
        self.ack(generation, AckResult::Applied).await;
        self.set_status(target, |s| s.generation = Some(generation));
    }

    /// Sends one acknowledgement, with a few bounded tries. A lost ack is repaired by the resync
    /// after the next reconnect.
    pub(super) async fn ack(&self, generation: u64, result: AckResult) {
        self.send_ack(Ack {
            proxy_id: self.cfg.hello.proxy_id.clone(),
            generation,
            result,
            resync: false,
        })
        .await;
    }

    /// Refuses a patch that does not fit the held snapshot and asks for the full snapshot
    /// (a lost one is repaired by the next reconnect, which starts with a full snapshot).
    pub(super) async fn refuse_patch(&self, generation: u64, reason: String) {
        self.send_ack(Ack {
            proxy_id: self.cfg.hello.proxy_id.clone(),
            generation,
            result: AckResult::Refused { reason },
            resync: true,
        })
        .await;
    }

    async fn send_ack(&self, ack: Ack) {
        let generation = ack.generation;
        let body = match serde_json::to_vec(&ack) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an ack");
                return;
            }
        };
        for try_no in 1..=ACK_TRIES {
            let req = match self.request("/v1/ack", body.clone()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build an ack");
                    return;
                }
            };
            match tokio::time::timeout(ACK_TIMEOUT, self.http.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => return,
                Ok(Ok(resp))
                    if matches!(
                        resp.status(),
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    ) =>
                {
                    tracing::error!(
                        generation,
                        "the controller refused our client certificate for an ack"
                    );
                    return;
                }
                Ok(Ok(resp)) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    // A follower (it closed the connection): the next one may reach the leader.
                    tracing::debug!(generation, try_no, "ack reached a follower replica; again");
                }
                Ok(Ok(resp)) => {
                    tracing::warn!(generation, status = %resp.status(), "ack not accepted");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(generation, try_no, error = %error_chain(&e), "ack failed");
                }
                Err(_) => tracing::warn!(generation, try_no, "ack timed out"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
