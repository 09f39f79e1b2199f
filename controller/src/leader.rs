//! Leader election over a `coordination.k8s.io/v1` Lease (`meridian controller --leader-elect`).
//!
//! Several replicas run; each keeps its watches warm, and only the holder of the Lease writes
//! status. The algorithm is the one Kubernetes' own components use (client-go's
//! leaderelection), written against `Api<Lease>` so every change of the Lease is guarded by its
//! `resourceVersion`:
//!
//! ```text
//! every retry_period:  GET lease
//!   absent                      ─► create it naming us                      (409: someone else did)
//!   holder = us                 ─► PUT renewTime (resourceVersion-guarded)  ─► Leader
//!   holder empty (released), or
//!   unchanged for its leaseDuration since WE first saw this version
//!                               ─► PUT holder = us, leaseTransitions + 1      (409: lost the race)
//!   else                        ─► Follower { holder }
//! leading, no successful renewal for renew_deadline (< lease_duration) ─► Follower at once
//! shutdown while leading        ─► Follower, then PUT holder = "" (a successor takes over at
//!                                  its next retry instead of waiting for the lease to expire)
//! ```
//!
//! Why this cannot have two leaders: a follower measures expiry from the moment *it* first saw
//! the current version of the Lease, which is after the leader sent the renewal that wrote it;
//! the leader counts its deadline from the moment it sent that renewal. So the leader gives up
//! (at `renew_deadline`) before any follower may take over (at `lease_duration`), whatever the
//! wall clocks of the two say (only the rate of the monotonic clocks matters). Requests are
//! bounded by the time left to the deadline, so a hanging API server does not keep a leader in
//! office. Two candidates taking over at once are told apart by the `resourceVersion`
//! precondition: one PUT wins, the other gets 409.
//!
//! (The `kube-leader-election` crate was considered: its takeover is a merge patch without a
//! `resourceVersion` precondition, so two candidates can both believe they won, and it compares
//! the server's `renewTime` with the local wall clock.)
//!
//! [`Elector`] publishes the state as a `watch::Receiver<`[`Leadership`]`>` and as a
//! `watch::Receiver<bool>` gate the status writers wait on.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Name of the Lease the controller replicas campaign for.
pub const LEASE_NAME: &str = "meridian-controller";

/// Whether this replica leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the Lease: it writes status.
    Leader,
    /// Another replica (or nobody known: `None`) holds it.
    Follower {
        /// The holder's identity, as the Lease says.
        holder: Option<String>,
    },
}

impl Leadership {
    /// Whether this is [`Leadership::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader)
    }
}

/// A refused election setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    /// The durations do not nest.
    #[error(
        "leader election needs retry period ({retry:?}) < renew deadline ({renew:?}) < lease \
         duration ({lease:?}): the leader must give up before the lease can expire for others"
    )]
    Durations {
        /// Lease duration.
        lease: Duration,
        /// Renew deadline.
        renew: Duration,
        /// Retry period.
        retry: Duration,
    },
    /// The identity is empty.
    #[error("leader election identity is empty: set $POD_NAME")]
    NoIdentity,
}

/// How to campaign.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (unique per replica: the pod name).
    pub identity: String,
    /// How long a Lease not renewed keeps others from taking over (written into the Lease,
    /// rounded up to whole seconds).
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// Kubernetes' usual timing (15s / 10s / 2s) for the [`LEASE_NAME`] Lease.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: LEASE_NAME.to_string(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks that the durations nest and the identity is set.
    pub fn check(&self) -> Result<(), ElectionError> {
        if self.identity.trim().is_empty() {
            return Err(ElectionError::NoIdentity);
        }
        let ok = !self.retry_period.is_zero()
            && self.retry_period < self.renew_deadline
            && self.renew_deadline < self.lease_duration;
        if !ok {
            return Err(ElectionError::Durations {
                lease: self.lease_duration,
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        let ms = self.lease_duration.as_millis();
        i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX)
    }
}

/// This replica's identity: `$POD_NAME` (deploy/ sets it), else `HOSTNAME-PID`.
pub fn default_identity() -> String {
    identity_from(
        std::env::var("POD_NAME").ok().as_deref(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .as_deref(),
        std::process::id(),
    )
}

fn identity_from(pod_name: Option<&str>, hostname: Option<&str>, pid: u32) -> String {
    match pod_name.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => p.to_string(),
        None => format!(
            "{}-{pid}",
            hostname
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .unwrap_or("meridian")
        ),
    }
}

/// A running campaign. Dropping it stops campaigning *without* releasing the Lease (as a crash
/// would: others take over once it expires; this process stops leading at once);
/// [`Elector::shutdown`] releases it.
pub struct Elector {
    leadership: watch::Receiver<Leadership>,
    gate: watch::Receiver<bool>,
    outputs: Arc<Outputs>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Where the campaign publishes (shared with [`Elector`], which closes the gate when dropped).
struct Outputs {
    state: watch::Sender<Leadership>,
    gate: watch::Sender<bool>,
}

impl Elector {
    /// Starts campaigning on the current runtime.
    pub fn start(client: Client, cfg: ElectionConfig) -> Result<Self, ElectionError> {
        cfg.check()?;
        let (state_tx, leadership) = watch::channel(Leadership::Follower { holder: None });
        let (gate_tx, gate) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let outputs = Arc::new(Outputs {
            state: state_tx,
            gate: gate_tx,
        });
        let campaign = Campaign {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            last_renew: None,
            outputs: outputs.clone(),
        };
        let task = tokio::spawn(campaign.run(stop_rx));
        Ok(Self {
            leadership,
            gate,
            outputs,
            stop,
            task: Some(task),
        })
    }

    /// The current leadership, updated as it changes.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// `true` while this replica leads: status writers wait for it.
    pub fn write_gate(&self) -> watch::Receiver<bool> {
        self.gate.clone()
    }

    /// Steps down (the gate closes first) and releases the Lease so a successor takes over at
    /// its next attempt; then stops.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Gate first: nothing of this process writes once it stopped campaigning.
            self.outputs.gate.send_replace(false);
            self.outputs
                .state
                .send_replace(Leadership::Follower { holder: None });
        }
    }
}

/// The version of the Lease last seen, and when this replica first saw it.
struct Observed {
    resource_version: String,
    at: Instant,
}

enum Attempt {
    Leading,
    Held(Option<String>),
}

struct Campaign {
    api: Api<Lease>,
    cfg: ElectionConfig,
    observed: Option<Observed>,
    /// While leading: when the last successful renewal was sent.
    last_renew: Option<Instant>,
    outputs: Arc<Outputs>,
}

impl Campaign {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(identity = %self.cfg.identity, lease = %format!("{}/{}", self.cfg.namespace, self.cfg.lease_name), "campaigning for leadership");
        loop {
            let started = Instant::now();
            let budget = match self.last_renew {
                Some(t) => (t + self.cfg.renew_deadline).saturating_duration_since(started),
                None => self.cfg.renew_deadline,
            };
            let attempt = tokio::select! {
                r = tokio::time::timeout(budget, self.try_acquire_or_renew()) => r,
                _ = crate::stopped(&mut stop) => break,
            };
            match attempt {
                Ok(Ok(Attempt::Leading)) => {
                    self.last_renew = Some(started);
                    self.publish(Leadership::Leader);
                }
                Ok(Ok(Attempt::Held(holder))) => {
                    self.last_renew = None;
                    self.publish(Leadership::Follower { holder });
                }
                Ok(Err(e)) => {
                    tracing::warn!(identity = %self.cfg.identity, error = %e, "leader election: Lease request failed");
                }
                Err(_) => {
                    tracing::warn!(identity = %self.cfg.identity, "leader election: Lease request timed out");
                }
            }
            self.step_down_if_overdue();
            let mut wake = started + self.cfg.retry_period;
            if let Some(t) = self.last_renew {
                wake = wake.min(t + self.cfg.renew_deadline);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = crate::stopped(&mut stop) => break,
            }
            self.step_down_if_overdue();
        }
        self.release().await;
    }

    /// A leader that could not renew within the renew deadline is a follower from now on.
    fn step_down_if_overdue(&mut self) {
        if let Some(t) = self.last_renew
            && Instant::now() >= t + self.cfg.renew_deadline
        {
            tracing::error!(identity = %self.cfg.identity, deadline = ?self.cfg.renew_deadline, "could not renew the Lease in time; stepping down");
            self.last_renew = None;
            self.publish(Leadership::Follower { holder: None });
        }
    }

    fn publish(&self, state: Leadership) {
        let leads = state.is_leader();
        let set_gate = || {
            self.outputs.gate.send_if_modified(|g| {
                let differs = *g != leads;
                *g = leads;
                differs
            })
        };
        // The gate closes before anyone is told we follow, and opens only after.
        if !leads {
            set_gate();
        }
        let changed = self.outputs.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state.clone();
                true
            }
        });
        if leads {
            set_gate();
        }
        if changed {
            match &state {
                Leadership::Leader => {
                    tracing::info!(identity = %self.cfg.identity, "leading: this replica writes status")
                }
                Leadership::Follower { holder } => tracing::info!(
                    identity = %self.cfg.identity, holder = holder.as_deref().unwrap_or("-"),
                    "following"
                ),
            }
        }
    }

    fn observe(&mut self, lease: &Lease) -> Instant {
        let rv = lease.resource_version().unwrap_or_default();
        match &self.observed {
            Some(o) if o.resource_version == rv => o.at,
            _ => {
                let at = Instant::now();
                self.observed = Some(Observed {
                    resource_version: rv,
                    at,
                });
                at
            }
        }
    }

    fn lease_spec(&self, old: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let ours = old.is_some_and(|s| s.holder_identity.as_deref() == Some(&self.cfg.identity));
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_seconds()),
            acquire_time: if ours {
                old.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: match old {
                None => Some(0),
                Some(s) if ours => s.lease_transitions,
                Some(s) => Some(s.lease_transitions.unwrap_or(0).saturating_add(1)),
            },
            ..old.cloned().unwrap_or_default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.lease_name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.lease_spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Held(None)),
                Err(e) => Err(e),
            };
        };
        let seen_at = self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if let Some(h) = &holder
            && *h != self.cfg.identity
        {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.cfg.lease_duration, Duration::from_secs);
            if Instant::now() < seen_at + duration {
                return Ok(Attempt::Held(holder));
            }
            tracing::info!(identity = %self.cfg.identity, expired = %h, "the Lease expired; taking over");
        }
        lease.spec = Some(self.lease_spec(Some(&spec)));
        // The resourceVersion of what we read guards the write: of two candidates, one wins.
        match self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Held(holder)),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it: holder cleared, so a follower takes it at once.
    async fn release(&mut self) {
        let was_leading = self.last_renew.take().is_some();
        self.publish(Leadership::Follower { holder: None });
        if !was_leading {
            return;
        }
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.cfg.lease_name).await? else {
                return Ok(false);
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(false);
            };
            if spec.holder_identity.as_deref() != Some(&self.cfg.identity) {
                return Ok(false);
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now.clone());
            spec.acquire_time = Some(now);
            self.api
                .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout(self.cfg.renew_deadline, release).await {
            Ok(Ok(true)) => tracing::info!(identity = %self.cfg.identity, "released the Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(identity = %self.cfg.identity, error = %e, "could not release the Lease; it expires on its own")
            }
            Err(_) => {
                tracing::warn!(identity = %self.cfg.identity, "releasing the Lease timed out; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_must_nest() {
        let mut cfg = ElectionConfig::new("ns", "me");
        assert_eq!(cfg.check(), Ok(()));
        assert_eq!(cfg.lease_seconds(), 15);
        cfg.lease_duration = Duration::from_millis(1500);
        assert_eq!(
            cfg.lease_seconds(),
            2,
            "rounded up: others wait at least as long"
        );
        let err = cfg.check().unwrap_err().to_string();
        assert!(
            err.contains("renew deadline (10s) < lease duration (1.5s)"),
            "{err}"
        );
        cfg = ElectionConfig::new("ns", " ");
        assert_eq!(cfg.check(), Err(ElectionError::NoIdentity));
    }

    #[test]
    fn identity_is_the_pod_name_else_host_and_pid() {
        assert_eq!(identity_from(Some("ctl-7f9"), Some("h"), 1), "ctl-7f9");
        assert_eq!(identity_from(Some(""), Some("box\n"), 42), "box-42");
        assert_eq!(identity_from(None, None, 42), "meridian-42");
    }
}
