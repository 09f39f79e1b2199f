//! One drill, start to end: the state machine of a drill task.
//!
//! ```text
//!  status Running at startup ─► recover: actuator.restore (kill/blackhole), Failed
//!  plan() refuses ─► Failed (Accepted=False/Invalid|ModeUnsupported)
//!  check_grants() refuses ─► Failed (Accepted=False/RefNotPermitted)
//!  Pending (Accepted) ─► wait for the slot (Accepted=False/Conflicted naming what it waits for)
//!  check_grants() / resolve() refuses ─► Failed (Accepted=False/RefNotPermitted|Invalid)
//!  Running: Started ─► baseline (one window) ─► grants ─► fail target ─► TargetFailed (failTime)
//!     ─► every 1 s: sample, guards ─► trip: GuardTripped + Aborted
//!                   grants ─► one removed: Aborted (Accepted=False/RefNotPermitted)
//!     ─► restore ─► Restored (restoreTime) ─► after-period (one window) ─► Completed
//!        ─► Succeeded | Aborted (figures)
//!  deleted ─► restore, end (nothing to write to)   shutdown ─► restore, Failed
//! ```
//!
//! Every wait is bounded: the baseline, run and after-period by the spec, the proxies'
//! acknowledgement and the actuator by the controller's drill ack timeout, status writes and
//! Events by the write timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use meridian_crds::meridian::{DrillPhase, FailoverDrill, drill as d};
use meridian_model::Snapshot;
use meridian_model::snapshot::Drain;
use meridian_model::traffic::GatewayTraffic;
use tokio::sync::watch;
use tokio::time::Instant;

use super::manager::{DrillCtx, SlotGuard, created};
use super::plan::{
    Footprint, Plan, Refusal, Resolved, check_grants, gateway_in_scope, plan, resolve,
    scoped_gateways,
};
use super::report::{Reporter, rfc3339_millis};
use super::traffic::{Samples, figures, humantime, trip};
use super::{ActuatorError, DrillKey, DrillMode, DrillTarget};
use crate::translate::{ClusterGatewayRef, ProgrammedState};

/// How long a rollback on controller shutdown may take (the controller waits 5 s per task).
const SHUTDOWN_RESTORE: Duration = Duration::from_secs(3);

/// How often the proxies' acknowledgement is checked.
const ACK_POLL: Duration = Duration::from_millis(50);

/// Why a drill stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The drill object is gone (or was replaced): restore, write nothing.
    Deleted,
    /// The controller shuts down: restore quickly, write Failed.
    Shutdown,
}

/// The traffic counters at the end of the baseline.
struct Baseline {
    /// Traffic during the baseline window.
    before: GatewayTraffic,
    /// Totals when the target is about to fail (what "during" counts from).
    fail_base: GatewayTraffic,
}

/// Why a drill was cut short while its target was failed.
struct Trip {
    /// A ReferenceGrant the scope needs was removed (else: a guard tripped).
    revoked: bool,
    why: String,
}

/// Traffic before and while the target was failed.
struct Measured {
    before: GatewayTraffic,
    during: GatewayTraffic,
}

struct Signals {
    cancel: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
}

async fn cancelled(rx: &mut watch::Receiver<bool>) -> bool {
    rx.wait_for(|c| *c).await.map(drop).is_ok()
}

impl Signals {
    async fn stopped(&mut self) -> Stop {
        tokio::select! {
            // A closed channel means the manager is gone: the controller stops.
            c = cancelled(&mut self.cancel) => if c { Stop::Deleted } else { Stop::Shutdown },
            _ = crate::stopped(&mut self.shutdown) => Stop::Shutdown,
        }
    }

    async fn guard<F: Future>(&mut self, f: F) -> Result<F::Output, Stop> {
        tokio::select! {
            biased;
            s = self.stopped() => Err(s),
            v = f => Ok(v),
        }
    }
}

/// Runs one drill to its end. The manager spawns it once per drill uid.
pub(crate) async fn drill_task(
    ctx: Arc<DrillCtx>,
    key: DrillKey,
    drill: Arc<FailoverDrill>,
    cancel: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(client) = ctx.clients.get(&key.cluster).cloned() else {
        return;
    };
    let rep = Reporter::new(
        client,
        &key.cluster,
        &drill,
        ctx.write_timeout,
        Arc::clone(&ctx.metrics),
    );
    let mut run = Run {
        id: format!("{}/{}", key.namespace, key.name),
        ctx,
        key,
        rep,
        sig: Signals { cancel, shutdown },
    };
    run.main(&drill).await;
}

struct Run {
    ctx: Arc<DrillCtx>,
    key: DrillKey,
    /// `namespace/name`, the drain's `drill`.
    id: String,
    rep: Reporter,
    sig: Signals,
}

impl Run {
    async fn main(&mut self, drill: &FailoverDrill) {
        if self.rep.phase() == Some(DrillPhase::Running) {
            return self.recover(drill).await;
        }
        let plan = match plan(
            &drill.spec,
            &self.key.namespace,
            self.ctx.actuator.is_some(),
            self.ctx.max_duration,
        )
        .and_then(|p| self.check_grants(&p).map(|()| p))
        {
            Ok(p) => p,
            Err(r) => return self.refuse(r).await,
        };
        let ctx = Arc::clone(&self.ctx);
        let place = ctx
            .slot
            .enqueue(created(drill), self.key.clone(), Footprint::of(&plan));
        if self.wait_turn(&place).await.is_err() {
            // Nothing was done yet: nothing to restore. A deleted drill needs no status; on
            // shutdown it stays Pending and the next controller runs it.
            return;
        }
        self.execute(&plan).await;
        drop(place);
    }

    /// Waits for the run slot, keeping `Accepted` and the message current.
    async fn wait_turn(&mut self, place: &SlotGuard<'_>) -> Result<(), Stop> {
        let ctx = Arc::clone(&self.ctx);
        let mut changes = ctx.slot.subscribe();
        if self.rep.phase().is_none() {
            self.rep.status.phase = Some(DrillPhase::Pending);
            self.rep.status.message = Some("accepted".into());
            self.rep
                .condition(d::ACCEPTED, true, d::REASON_ACCEPTED, "the drill is valid");
            self.rep.write().await;
        }
        let mut noted: Option<String> = None;
        loop {
            match ctx.slot.try_take(place) {
                Ok(()) => return Ok(()),
                Err(blocked) => {
                    let msg = blocked.to_string();
                    if noted.as_deref() != Some(msg.as_str()) {
                        tracing::info!(drill = %self.key, "{msg}");
                        self.rep.status.phase = Some(DrillPhase::Pending);
                        self.rep.status.message = Some(msg.clone());
                        self.rep
                            .condition(d::ACCEPTED, false, d::REASON_CONFLICTED, &msg);
                        self.rep.write().await;
                        noted = Some(msg);
                    }
                }
            }
            // The slot state lives as long as `ctx`: `changed` cannot fail here.
            let _ = self.sig.guard(changes.changed()).await?;
        }
    }

    /// Runs a drill that has the slot: resolve, baseline, fail, hold under the guards,
    /// restore, after-period, figures. Every step that ends the drill writes its own terminal
    /// status and returns `None`.
    async fn execute(&mut self, plan: &Plan) {
        // A grant may have gone while the drill waited.
        let resolved = match self
            .check_grants(plan)
            .and_then(|()| resolve(plan, &self.id, &self.ctx.shared.published()))
        {
            Ok(r) => r,
            Err(r) => return self.refuse(r).await,
        };
        self.report_started(plan, &resolved).await;
        // From here on the drill concerns exactly the Gateways its drain names.
        let plan = &Plan {
            gateways: resolved.gateways.clone(),
            ..plan.clone()
        };
        let mut samples = Samples::default();
        self.ctx.shared.series().start(&self.key);
        let Some(baseline) = self.baseline(&mut samples, plan).await else {
            return;
        };
        // A grant removed during the baseline: nothing was failed yet, refuse.
        if let Err(r) = self.check_grants(plan) {
            return self.refuse(r).await;
        }
        let Some(fail_requested) = self.fail(plan, &resolved).await else {
            return;
        };
        let tripped = match self.hold(&mut samples, plan, fail_requested).await {
            Ok(tripped) => tripped,
            Err(stop) => return self.stopped_while_failed(plan, stop).await,
        };
        let during = samples
            .latest()
            .map(|t| t.since(&baseline.fail_base))
            .unwrap_or_default();
        let measured = Measured {
            before: baseline.before,
            during,
        };
        if self.restore(plan, tripped.as_ref(), &measured).await {
            self.after_period(&mut samples, plan, measured, tripped)
                .await;
        }
    }

    /// `Running`, `Accepted`, `Complete=False`, the Started entry and Event.
    async fn report_started(&mut self, plan: &Plan, resolved: &Resolved) {
        let started = Timestamp::now();
        let what = describe(plan, resolved);
        tracing::info!(drill = %self.key, "drill started: {what}");
        self.rep.status.phase = Some(DrillPhase::Running);
        self.rep.status.start_time = Some(rfc3339_millis(started));
        self.rep.status.message = Some(format!(
            "measuring the baseline for {}",
            humantime(plan.guards.window)
        ));
        self.rep
            .condition(d::ACCEPTED, true, d::REASON_ACCEPTED, "the drill is valid");
        self.rep.condition(
            d::COMPLETE,
            false,
            d::REASON_RUNNING,
            "the drill is running",
        );
        self.rep.timeline(d::STARTED, what.clone(), started);
        self.rep.write().await;
        self.rep.event(false, d::STARTED, &what).await;
    }

    /// Measures one window before the target fails. `None`: the drill was deleted or the
    /// controller shut down (then it is `Failed`; nothing was failed, nothing to restore).
    async fn baseline(&mut self, samples: &mut Samples, plan: &Plan) -> Option<Baseline> {
        self.sample(samples, plan);
        let base0 = samples.latest().cloned().unwrap_or_default();
        if let Err(stop) = self.measure(samples, plan, plan.guards.window).await {
            if stop == Stop::Shutdown {
                self.finish(
                    DrillPhase::Failed,
                    d::FAILED,
                    "controller shut down before the target was failed; nothing to restore".into(),
                )
                .await;
            }
            return None;
        }
        let fail_base = samples.latest().cloned().unwrap_or_default();
        Some(Baseline {
            before: fail_base.since(&base0),
            fail_base,
        })
    }

    /// Fails the target and reports `TargetFailed` (failTime). Returns when the failure was
    /// requested (the guards' windows start there); `None` when the drill ended instead (it
    /// could not be failed, was deleted, or the controller stops).
    async fn fail(&mut self, plan: &Plan, resolved: &Resolved) -> Option<Instant> {
        let ctx = Arc::clone(&self.ctx);
        let fail_requested = Instant::now();
        self.rep.status.message = Some(format!("failing the target ({})", plan.mode));
        let done = match self.sig.guard(fail_target(&ctx, plan, resolved)).await {
            Err(stop) => {
                self.stopped_while_failed(plan, stop).await;
                return None;
            }
            Ok(Err(why)) => {
                let restored = restore_target(&ctx, plan, &self.id, Some(ctx.ack_timeout)).await;
                let msg = match restored {
                    Ok(_) => format!("{why}; target restored"),
                    Err(e) => format!("{why}; restoring the target failed too: {e}"),
                };
                self.finish(DrillPhase::Failed, d::FAILED, msg).await;
                return None;
            }
            Ok(Ok(done)) => done,
        };
        let fail_time = Timestamp::now();
        let until = fail_time
            .checked_add(plan.duration)
            .map(rfc3339_millis)
            .unwrap_or_default();
        tracing::info!(drill = %self.key, "target failed: {done}");
        self.rep.status.fail_time = Some(rfc3339_millis(fail_time));
        self.rep.status.message = Some(format!("target failed until {until}"));
        self.rep.timeline(d::TARGET_FAILED, done.clone(), fail_time);
        self.rep.write().await;
        self.rep.event(false, d::TARGET_FAILED, &done).await;
        Some(fail_requested)
    }

    /// The drill's scope against the ReferenceGrants of its cluster now.
    fn check_grants(&self, plan: &Plan) -> Result<(), Refusal> {
        check_grants(plan, &self.ctx.shared.grants(&self.key.cluster))
    }

    /// Keeps the target failed for the drill's duration, sampling and checking the guards
    /// and the grants every second. `Ok(Some(_))`: a guard tripped or a grant went away.
    async fn hold(
        &mut self,
        samples: &mut Samples,
        plan: &Plan,
        fail_requested: Instant,
    ) -> Result<Option<Trip>, Stop> {
        let end = Instant::now() + plan.duration;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(None);
            }
            let next = (now + Duration::from_secs(1)).min(end);
            self.sig.guard(tokio::time::sleep_until(next)).await?;
            self.sample(samples, plan);
            if let Err(r) = self.check_grants(plan) {
                return Ok(Some(Trip {
                    revoked: true,
                    why: r.message,
                }));
            }
            if let Some(why) = samples
                .window(plan.guards.window, fail_requested)
                .and_then(|w| trip(&plan.guards, &w))
            {
                return Ok(Some(Trip {
                    revoked: false,
                    why,
                }));
            }
        }
    }

    /// Restores the target, then reports it (and a tripped guard). Restore first, write
    /// afterwards: on a trip the rollback must not wait for the API. (Not interruptible: it is
    /// what an interruption would do, and it is bounded.) `false`: restoring failed and the
    /// drill is `Failed`.
    async fn restore(&mut self, plan: &Plan, trip: Option<&Trip>, measured: &Measured) -> bool {
        let ctx = Arc::clone(&self.ctx);
        let tripped_at = Timestamp::now();
        let restored = restore_target(&ctx, plan, &self.id, Some(ctx.ack_timeout)).await;
        let restore_time = Timestamp::now();
        let tripped = trip.map(|t| t.why.as_str());
        match trip {
            Some(Trip { revoked: true, why }) => {
                tracing::warn!(drill = %self.key, "grant removed: {why}; rolled back");
                self.rep.status.abort_reason = Some(why.clone());
                self.rep
                    .condition(d::ACCEPTED, false, d::REASON_REF_NOT_PERMITTED, why);
                self.rep.timeline(
                    d::ABORTED,
                    format!("{why}; rolling back at once"),
                    tripped_at,
                );
            }
            Some(Trip {
                revoked: false,
                why,
            }) => {
                tracing::warn!(drill = %self.key, "guard tripped: {why}; rolled back");
                self.rep.status.abort_reason = Some(why.clone());
                self.rep.timeline(d::GUARD_TRIPPED, why.clone(), tripped_at);
                self.rep
                    .timeline(d::ABORTED, "rolling back at once".to_string(), tripped_at);
            }
            None => {}
        }
        let trip_event = trip.map(|t| {
            if t.revoked {
                (d::ABORTED, t.why.as_str())
            } else {
                (d::GUARD_TRIPPED, t.why.as_str())
            }
        });
        match restored {
            Ok(msg) => {
                let window = humantime(plan.guards.window);
                self.rep.status.restore_time = Some(rfc3339_millis(restore_time));
                self.rep.timeline(d::RESTORED, msg.clone(), restore_time);
                self.rep.status.message = Some(match tripped {
                    None => format!("target restored; measuring for {window}"),
                    Some(why) => {
                        format!("aborted: {why}; target restored; measuring for {window}")
                    }
                });
                self.rep.write().await;
                if let Some((reason, why)) = trip_event {
                    self.rep.event(true, reason, why).await;
                }
                self.rep.event(false, d::RESTORED, &msg).await;
                true
            }
            Err(e) => {
                if let Some((reason, why)) = trip_event {
                    self.rep.event(true, reason, why).await;
                }
                self.rep.status.figures = Some(figures(
                    &measured.before,
                    &measured.during,
                    &GatewayTraffic::default(),
                ));
                let msg = format!("restoring the target failed: {e}; restore it by hand");
                self.finish(DrillPhase::Failed, d::FAILED, msg).await;
                false
            }
        }
    }

    /// Measures one window after the restore, then ends the drill with its figures:
    /// `Succeeded`, or `Aborted` when a guard tripped. A deleted drill ends silently.
    async fn after_period(
        &mut self,
        samples: &mut Samples,
        plan: &Plan,
        measured: Measured,
        tripped: Option<Trip>,
    ) {
        self.sample(samples, plan);
        let after_base = samples.latest().cloned().unwrap_or_default();
        if self.measure(samples, plan, plan.guards.window).await == Err(Stop::Deleted) {
            return;
        }
        let after = samples
            .latest()
            .map(|t| t.since(&after_base))
            .unwrap_or_default();
        let figs = figures(&measured.before, &measured.during, &after);
        let summary = summarize(&figs);
        self.rep.status.figures = Some(figs);
        match tripped {
            None => {
                self.finish(DrillPhase::Succeeded, d::COMPLETED, summary)
                    .await
            }
            Some(Trip { why, .. }) => {
                self.finish(
                    DrillPhase::Aborted,
                    d::COMPLETED,
                    format!("aborted: {why}; {summary}"),
                )
                .await
            }
        }
    }

    /// Samples for `length` (every second), unless interrupted.
    async fn measure(
        &mut self,
        samples: &mut Samples,
        plan: &Plan,
        length: Duration,
    ) -> Result<(), Stop> {
        let end = Instant::now() + length;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            let next = (now + Duration::from_secs(1)).min(end);
            self.sig.guard(tokio::time::sleep_until(next)).await?;
            self.sample(samples, plan);
        }
    }

    /// Adds the current traffic of the scoped Gateways (every cluster) to `samples`.
    fn sample(&self, samples: &mut Samples, plan: &Plan) {
        let mut total = GatewayTraffic::default();
        for gw in scoped_gateways(plan, &self.ctx.shared.published()) {
            if let Some(t) = self.ctx.data_plane.traffic(&gw) {
                total.merge(&t);
            }
        }
        self.ctx
            .shared
            .series()
            .record(&self.key, std::time::SystemTime::now(), &total);
        samples.push(Instant::now(), total);
    }

    /// The drill was deleted or the controller stops while the target may be failed.
    async fn stopped_while_failed(&mut self, plan: &Plan, stop: Stop) {
        let ctx = Arc::clone(&self.ctx);
        match stop {
            Stop::Deleted => {
                let r = restore_target(&ctx, plan, &self.id, Some(ctx.ack_timeout)).await;
                tracing::info!(drill = %self.key, result = ?r, "drill deleted while running: target restored");
            }
            Stop::Shutdown => {
                // The reconcile loop withdraws drains from the snapshots on its way out too.
                let r = tokio::time::timeout(
                    SHUTDOWN_RESTORE,
                    restore_target(&ctx, plan, &self.id, None),
                )
                .await;
                let msg = match r {
                    Ok(Ok(_)) => {
                        "controller shut down during the drill; target restored".to_string()
                    }
                    Ok(Err(e)) => format!(
                        "controller shut down during the drill; restoring the target failed: {e}"
                    ),
                    Err(_) => "controller shut down during the drill; restoring the target did \
                               not finish in time: check it by hand"
                        .to_string(),
                };
                self.finish(DrillPhase::Failed, d::FAILED, msg).await;
            }
        }
    }

    /// A drill found `Running` when this controller started: its runner died with the previous
    /// controller. Drains died with it too; kill/blackhole targets are restored here.
    async fn recover(&mut self, drill: &FailoverDrill) {
        let mode = drill.spec.mode.unwrap_or_default();
        let target = DrillTarget {
            cluster: drill.spec.target.cluster.clone(),
            region: drill.spec.target.region.clone(),
            zone: drill.spec.target.zone.clone(),
        };
        let msg = if mode == DrillMode::Drain {
            "controller restarted during the drill; target restored".to_string()
        } else {
            match &self.ctx.actuator {
                Some(a) => {
                    match tokio::time::timeout(self.ctx.ack_timeout, a.restore(mode, &target)).await
                    {
                        Ok(Ok(_)) => {
                            "controller restarted during the drill; target restored".into()
                        }
                        Ok(Err(e)) => format!(
                            "controller restarted during the drill; restoring the target failed: {e}"
                        ),
                        Err(_) => {
                            "controller restarted during the drill; restoring the target timed \
                               out: check it by hand"
                                .into()
                        }
                    }
                }
                None => format!(
                    "controller restarted during the drill; this controller has no drill actuator \
                     to undo mode {mode}: check target {target} by hand"
                ),
            }
        };
        tracing::warn!(drill = %self.key, "{msg}");
        self.finish(DrillPhase::Failed, d::FAILED, msg).await;
    }

    async fn refuse(&mut self, r: Refusal) {
        tracing::info!(drill = %self.key, reason = r.reason, "drill refused: {}", r.message);
        self.rep.condition(d::ACCEPTED, false, r.reason, &r.message);
        self.finish(DrillPhase::Failed, d::FAILED, r.message).await;
    }

    /// Terminal phase: message, `Complete=True`, completionTime, timeline entry, Event.
    async fn finish(&mut self, phase: DrillPhase, entry: &str, message: String) {
        let now = Timestamp::now();
        self.rep.status.phase = Some(phase);
        self.rep.status.completion_time = Some(rfc3339_millis(now));
        self.rep.status.message = Some(message.clone());
        self.rep
            .condition(d::COMPLETE, true, phase.as_str(), &message);
        self.rep.timeline(entry, message.clone(), now);
        self.rep.write().await;
        let warning = phase != DrillPhase::Succeeded;
        self.rep.event(warning, entry, &message).await;
    }
}

/// What the drill does, for the Started entry.
fn describe(plan: &Plan, resolved: &Resolved) -> String {
    let named = resolved
        .gateways
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let gws = if plan.gateways.is_empty() {
        format!("the Gateways of namespace {} ({named})", plan.namespace)
    } else {
        named
    };
    let backends = if resolved.backends.is_empty() {
        "every backend".to_string()
    } else {
        resolved.backends.join(", ")
    };
    format!(
        "mode {} of {} for {}; scope: {gws}; {backends}",
        plan.mode,
        plan.target,
        humantime(plan.duration)
    )
}

fn summarize(f: &meridian_crds::meridian::DrillFigures) -> String {
    let mut s = format!(
        "requests before/during/after: {}/{}/{}; failed during: {}",
        f.requests_before, f.requests_during, f.requests_after, f.failed_during
    );
    if let Some(p) = f.error_percent_during {
        s.push_str(&format!(" ({p} %)"));
    }
    if let Some(p) = f.p99_ms_during {
        s.push_str(&format!("; p99 during: {p} ms"));
    }
    if !f.share_during.is_empty() {
        let shares: Vec<String> = f
            .share_during
            .iter()
            .map(|(r, p)| format!("{r} {p} %"))
            .collect();
        s.push_str(&format!("; share during: {}", shares.join(", ")));
    }
    s
}

/// Why the target could not be failed or restored. The message goes into the drill's status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    /// The drain was published but the proxies did not acknowledge it.
    #[error("the proxies did not take the drain: {0}")]
    DrainNotTaken(#[source] AckError),
    /// Kill and blackhole need an actuator ([`plan`] refuses such drills without one).
    #[error("mode {0} needs a drill actuator")]
    NoActuator(DrillMode),
    /// The actuator refused or failed to fail the target.
    #[error("the actuator could not {mode} {target}: {source}")]
    FailRefused {
        mode: DrillMode,
        target: DrillTarget,
        #[source]
        source: ActuatorError,
    },
    /// The actuator did not fail the target in time.
    #[error("the actuator did not {mode} {target} within {}", humantime(*.limit))]
    FailTimedOut {
        mode: DrillMode,
        target: DrillTarget,
        limit: Duration,
    },
    /// The actuator could not restore the target (its own words).
    #[error(transparent)]
    RestoreRefused(#[from] ActuatorError),
    /// The actuator did not restore the target in time.
    #[error("the actuator did not restore within {}", humantime(*.0))]
    RestoreTimedOut(Duration),
}

/// Why the proxies did not acknowledge the snapshots a drill waits for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AckError {
    /// A proxy refused the snapshot.
    #[error(
        "the proxies of Gateway {} in {} refused snapshot {generation}: {why}",
        .gateway.gateway, .gateway.cluster
    )]
    Refused {
        gateway: Box<ClusterGatewayRef>,
        generation: u64,
        why: Box<meridian_model::ProxyRefusal>,
    },
    /// Not every proxy acknowledged in time; `waiting` names the first few that did not.
    #[error("not acknowledged within {}: {}{}", humantime(*.timeout), .waiting.join(", "),
        if *.more > 0 { format!(" and {} more", .more) } else { String::new() })]
    TimedOut {
        timeout: Duration,
        waiting: Vec<String>,
        /// How many more were waited for.
        more: usize,
    },
}

/// Fails the target: publishes the drain and waits for the proxies, or calls the actuator.
/// `Ok` describes what was done.
async fn fail_target(
    ctx: &DrillCtx,
    plan: &Plan,
    resolved: &Resolved,
) -> Result<String, TargetError> {
    match plan.mode {
        DrillMode::Drain => {
            ctx.shared.set_drain(resolved.drain.clone());
            let want = Want::Has(&resolved.drain);
            let acked = wait_acked(ctx, plan, want, ctx.ack_timeout)
                .await
                .map_err(TargetError::DrainNotTaken)?;
            Ok(format!("drain of {} {acked}", plan.target))
        }
        mode => {
            let actuator = ctx.actuator.as_ref().ok_or(TargetError::NoActuator(mode))?;
            match tokio::time::timeout(ctx.ack_timeout, actuator.fail(mode, &plan.target)).await {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(source)) => Err(TargetError::FailRefused {
                    mode,
                    target: plan.target.clone(),
                    source,
                }),
                Err(_) => Err(TargetError::FailTimedOut {
                    mode,
                    target: plan.target.clone(),
                    limit: ctx.ack_timeout,
                }),
            }
        }
    }
}

/// Undoes [`fail_target`]. With `ack`, waits (bounded) for the proxies to take the drain-free
/// snapshot; a restore the proxies have not acknowledged in time is still a restore (the
/// controller no longer serves the drain), and the message says who did not answer.
async fn restore_target(
    ctx: &DrillCtx,
    plan: &Plan,
    id: &str,
    ack: Option<Duration>,
) -> Result<String, TargetError> {
    match plan.mode {
        DrillMode::Drain => {
            ctx.shared.remove_drain(id);
            let Some(timeout) = ack else {
                return Ok("drain removed".into());
            };
            Ok(
                match wait_acked(ctx, plan, Want::Lacks(id), timeout).await {
                    Ok(acked) => format!("drain removed; {acked}"),
                    Err(e) => format!("drain removed, but {e}"),
                },
            )
        }
        mode => {
            let actuator = ctx.actuator.as_ref().ok_or(TargetError::NoActuator(mode))?;
            let limit = ack.unwrap_or(SHUTDOWN_RESTORE);
            match tokio::time::timeout(limit, actuator.restore(mode, &plan.target)).await {
                Ok(r) => Ok(r?),
                Err(_) => Err(TargetError::RestoreTimedOut(limit)),
            }
        }
    }
}

/// What the snapshots a drill waits for must say about its drain. Other drills' drains come
/// and go meanwhile (drills of other namespaces run side by side), so only this drill's counts.
#[derive(Clone, Copy)]
enum Want<'a> {
    /// The drain is in the snapshot as it is.
    Has(&'a Drain),
    /// No drain of this drill (`namespace/name`) is.
    Lacks(&'a str),
}

impl Want<'_> {
    fn satisfied_by(self, drains: &[Drain]) -> bool {
        match self {
            Self::Has(d) => drains.contains(d),
            Self::Lacks(id) => drains.iter().all(|d| d.drill != id),
        }
    }
}

/// How far the proxies of one pass over the published snapshots are.
#[derive(Default)]
struct AckTally {
    acked: usize,
    no_proxy: usize,
    /// Who has not acknowledged yet, and why.
    waiting: Vec<String>,
}

/// Counts, in every published snapshot, the scoped Gateways whose proxies acknowledged a
/// snapshot whose drains satisfy `want`. `Err`: a proxy refused one.
fn tally_acks(
    ctx: &DrillCtx,
    plan: &Plan,
    want: Want<'_>,
    published: &BTreeMap<String, Arc<Snapshot>>,
) -> Result<AckTally, AckError> {
    let mut t = AckTally::default();
    for (cluster, snap) in published {
        if !want.satisfied_by(&snap.drains) {
            t.waiting
                .push(format!("{cluster}: snapshot not published yet"));
            continue;
        }
        for g in &snap.gateways {
            if !gateway_in_scope(plan, &g.namespace, &g.name) {
                continue;
            }
            let gw = ClusterGatewayRef::new(cluster.clone(), &g.namespace, &g.name);
            match ctx.data_plane.programmed(&gw) {
                ProgrammedState::Applied(n) if n >= snap.generation => t.acked += 1,
                ProgrammedState::NoProxy => t.no_proxy += 1,
                ProgrammedState::Refused(why) => {
                    return Err(AckError::Refused {
                        gateway: Box::new(gw),
                        generation: snap.generation,
                        why: Box::new(why),
                    });
                }
                ProgrammedState::Applied(n) => t.waiting.push(format!(
                    "{cluster}/{}/{} (at generation {n} of {})",
                    g.namespace, g.name, snap.generation
                )),
                ProgrammedState::Pending { .. } => t.waiting.push(format!(
                    "{cluster}/{}/{} (generation {} not acknowledged)",
                    g.namespace, g.name, snap.generation
                )),
                ProgrammedState::Unknown => t.waiting.push(format!(
                    "{cluster}/{}/{} (proxies not reconnected yet)",
                    g.namespace, g.name
                )),
            }
        }
    }
    Ok(t)
}

/// Waits until every published snapshot satisfies `want` and every connected proxy of the
/// scoped Gateways acknowledged it. `Ok` says how many acknowledged.
async fn wait_acked(
    ctx: &DrillCtx,
    plan: &Plan,
    want: Want<'_>,
    timeout: Duration,
) -> Result<String, AckError> {
    let deadline = Instant::now() + timeout;
    loop {
        let published = ctx.shared.published();
        let mut t = tally_acks(ctx, plan, want, &published)?;
        if t.waiting.is_empty() {
            let mut s = format!(
                "acknowledged by the proxies of {} Gateway(s) in {} cluster(s)",
                t.acked,
                published.len()
            );
            if t.no_proxy > 0 {
                s.push_str(&format!(
                    "; {} Gateway(s) have no connected proxy",
                    t.no_proxy
                ));
            }
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let more = t.waiting.len().saturating_sub(5);
            t.waiting.truncate(5);
            return Err(AckError::TimedOut {
                timeout,
                waiting: t.waiting,
                more,
            });
        }
        tokio::time::sleep(ACK_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
