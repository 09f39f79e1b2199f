//! `--controller` mode: the proxy as the [`Target`] of a distribution [`Client`].
//!
//! Each snapshot from the controller goes through [`ProxyHandle::apply`] exactly like a file
//! snapshot; its result becomes the acknowledgement. A refusal because a socket could not be
//! bound is retried every few seconds (the port may be freed), and only a change is reported
//! again. An endpoint-only delta takes [`ProxyHandle::apply_endpoints`] (no recompile of the
//! whole router) when the proxy serves its base. A route-level patch is applied by the client to
//! its held snapshot and arrives here as that whole snapshot, through [`ProxyHandle::apply`]
//! (and is persisted whole like any other). The connection status lands on `/ready` (`controller`) and in
//! `meridian_proxy_controller_connected`; the served snapshot never depends on it. The client
//! reports the per-Gateway traffic counters ([`ProxyHandle::traffic`]) back to the controller,
//! with the proxy's health view ([`ProxyHandle::health`]: its measured nearest-first region
//! order and the endpoints it ejected, with when, why and how many failures), so `meridian
//! status` and `explain` can show what the proxies see.
//!
//! With a state directory ([`follow_controller_with_state`], `--state-dir DIR`), the proxy
//! survives a restart while the controller is unreachable:
//!
//! ```text
//! restore: StateDir::load (off the workers) ─ checked? ─ ProxyHandle::apply ─ source "disk"
//!            └ refused (corrupt, other version, other cluster): moved aside, counted, logged;
//!              nothing is served until the controller answers
//! follow:  Client::run(Persisting) ─ apply / apply_endpoints ok ─ source "controller"
//!                                       └─ tick ─► keep_written: the served snapshot ─ StateDir::write
//!                                                  (off the workers; then WRITE_SPACING of rest)
//! ```
//!
//! The restored snapshot is served, never acknowledged: the client starts with nothing held, so
//! the controller's first snapshot on the new stream is applied in full and only then
//! acknowledged, whatever generation the file had (a restarted controller may number from 1
//! again). Endpoint deltas need a base the client received on this run, so none can patch the
//! restored snapshot either. Only snapshots the controller sent and the proxy applied (that is,
//! acknowledged as applied) are written.

use std::convert::Infallible;
use std::sync::{Arc, Weak};

use meridian_distribution::{
    Client, ClientStatus, EndpointChange, GatewayTrafficReport, ProxyHealth, Refused, Target,
};
use meridian_model::{Snapshot, SnapshotError};
use tokio::sync::watch;

use crate::handle::{ApplyError, ProxyHandle};
use crate::state::{ControllerLink, RestoredFrom, Served, SnapshotSource};
use crate::state_dir::{RestoreError, StateDir, WRITE_SPACING};

fn refused(e: ApplyError) -> Refused {
    Refused {
        retry_after: matches!(e, ApplyError::Bind { .. }).then_some(crate::BIND_RETRY),
        reason: e.to_string(),
    }
}

impl Target for ProxyHandle {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let result = ProxyHandle::apply(self, snapshot).await.map_err(refused);
        if result.is_ok() {
            self.shared().set_source(SnapshotSource::Controller);
        }
        result
    }

    async fn apply_endpoints(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, Refused>> {
        let result = ProxyHandle::apply_endpoints(self, generation, base, changes)
            .await
            .map(|r| r.map_err(refused));
        if matches!(result, Some(Ok(_))) {
            self.shared().set_source(SnapshotSource::Controller);
        }
        result
    }

    fn refuse(&self, reason: &str) {
        ProxyHandle::refuse(
            self,
            ApplyError::Invalid(SnapshotError::Decode(reason.to_string())),
        );
    }

    fn status(&self, status: &ClientStatus) {
        let url = self
            .shared()
            .controller()
            .map(|l| l.url)
            .unwrap_or_default();
        self.shared().set_controller(Some(ControllerLink {
            url,
            connected: status.connected,
            last_error: status.last_error.clone(),
        }));
    }

    fn traffic(&self) -> Vec<GatewayTrafficReport> {
        ProxyHandle::traffic(self)
    }

    fn health(&self) -> Option<ProxyHealth> {
        Some(ProxyHandle::health(self))
    }
}

/// Follows the controller behind `client` forever, programming `handle` with what it sends.
pub async fn follow_controller(handle: &ProxyHandle, client: &Client) -> Infallible {
    announce(handle, client);
    client.run(handle).await
}

/// [`follow_controller`] with a state directory (`--state-dir`): first serves the snapshot kept
/// in `state` if it passes its checks (`/ready` says `"source": "disk"` until the controller's
/// first snapshot is applied), then follows the controller and keeps the last snapshot applied
/// from it in `state` (written at most once per [`WRITE_SPACING`], always ending with the
/// latest).
pub async fn follow_controller_with_state(
    handle: &ProxyHandle,
    client: &Client,
    state: &StateDir,
) -> Infallible {
    // The controller link is shown before a kept snapshot is served, so `/ready` never says
    // ready without it.
    announce(handle, client);
    restore(handle, state).await;
    let (tick, ticks) = watch::channel(0u64);
    let target = Persisting {
        handle,
        applied: tick,
    };
    tokio::select! {
        never = client.run(&target) => never,
        never = keep_written(handle, state, ticks) => never,
    }
}

/// Shows the controller link `/ready` reports, not connected yet.
fn announce(handle: &ProxyHandle, client: &Client) {
    handle.shared().set_controller(Some(ControllerLink {
        url: client.url().to_string(),
        connected: false,
        last_error: None,
    }));
}

/// Loads the state file and serves it when it passes its checks; a refused one is moved aside.
/// Every outcome is logged and counted (`meridian_proxy_snapshot_restore_total{result}`).
async fn restore(handle: &ProxyHandle, state: &StateDir) {
    let shared = handle.shared();
    let path = state.path();
    shared.update_state_file(|s| s.path = path.display().to_string());
    let loader = state.clone();
    let loaded = match tokio::task::spawn_blocking(move || loader.load()).await {
        Ok(loaded) => loaded,
        Err(e) => Err(RestoreError::Unreadable {
            path: path.clone(),
            error: std::io::Error::other(format!("the loading task failed: {e}")),
        }),
    };
    let result = match loaded {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no kept snapshot; waiting for the controller");
            "none"
        }
        Ok(Some(restored)) => {
            let header = restored.header;
            // Recorded before the snapshot is served, so `/ready` never says ready from an
            // unknown source; taken back if the snapshot is refused.
            shared.set_source(SnapshotSource::Disk(RestoredFrom {
                path: path.display().to_string(),
                generation: header.generation,
                written_at: header.written_at.clone(),
            }));
            match handle.apply(restored.snapshot).await {
                Ok(generation) => {
                    tracing::warn!(
                        path = %path.display(),
                        generation,
                        written_at = %header.written_at,
                        "serving the snapshot kept on disk until the controller sends one"
                    );
                    "ok"
                }
                Err(e) => {
                    shared.clear_source();
                    // Intact but not servable now (e.g. a port still taken): kept in place,
                    // the next start may serve it, the controller's next snapshot replaces it.
                    shared.update_state_file(|s| {
                        s.last_error = Some(format!("the kept snapshot was refused: {e}"));
                    });
                    "refused"
                }
            }
        }
        Err(e) => {
            let moved = match &e {
                RestoreError::Unreadable { .. } => None,
                _ => Some(state.reject()),
            };
            match &moved {
                Some(Ok(to)) => tracing::error!(
                    error = %e,
                    moved_to = %to.display(),
                    "kept snapshot refused and moved aside; nothing is served until the \
                     controller sends a snapshot"
                ),
                Some(Err(mv)) => tracing::error!(
                    error = %e,
                    move_error = %mv,
                    "kept snapshot refused and cannot be moved aside; nothing is served until \
                     the controller sends a snapshot"
                ),
                None => tracing::error!(
                    error = %e,
                    "kept snapshot unreadable; nothing is served until the controller sends a \
                     snapshot"
                ),
            }
            shared.update_state_file(|s| s.last_error = Some(e.to_string()));
            e.metric_label()
        }
    };
    shared
        .metrics
        .snapshot_restores
        .with_label_values(&[result])
        .inc();
}

/// The proxy as the client's target, ticking `applied` after every snapshot or delta it
/// applied (and so acknowledged as applied).
struct Persisting<'a> {
    handle: &'a ProxyHandle,
    applied: watch::Sender<u64>,
}

impl Persisting<'_> {
    fn tick<V>(&self, result: &Result<V, Refused>) {
        if result.is_ok() {
            self.applied.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl Target for Persisting<'_> {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let result = Target::apply(self.handle, snapshot).await;
        self.tick(&result);
        result
    }

    async fn apply_endpoints(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, Refused>> {
        let result = Target::apply_endpoints(self.handle, generation, base, changes).await;
        if let Some(r) = &result {
            self.tick(r);
        }
        result
    }

    fn refuse(&self, reason: &str) {
        Target::refuse(self.handle, reason);
    }

    fn status(&self, status: &ClientStatus) {
        Target::status(self.handle, status);
    }

    fn traffic(&self) -> Vec<GatewayTrafficReport> {
        Target::traffic(self.handle)
    }

    fn health(&self) -> Option<ProxyHealth> {
        Target::health(self.handle)
    }
}

/// Writes the served snapshot after each tick of `applied`, then rests [`WRITE_SPACING`]: ticks
/// during a write or the rest are coalesced into one write of the then-served snapshot, so the
/// file always ends up with the last one applied.
async fn keep_written(
    handle: &ProxyHandle,
    state: &StateDir,
    mut applied: watch::Receiver<u64>,
) -> Infallible {
    let shared = handle.shared();
    // The state last written, to skip a tick whose snapshot is already on disk. Weak: an old
    // router is not kept alive for this.
    let mut last: Option<Weak<Served>> = None;
    // The last write failed: try again after the rest, tick or not (logged once per reason).
    let mut failed: Option<String> = None;
    loop {
        if failed.is_none() && applied.changed().await.is_err() {
            // The target is gone: nothing will be applied any more.
            return std::future::pending().await;
        }
        let Some(served) = shared.served.load_full() else {
            continue;
        };
        if last
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&served)))
        {
            continue;
        }
        last = Some(Arc::downgrade(&served));
        let writer = state.clone();
        // Encoding and writing a large snapshot takes a while: not on the runtime's workers
        // (and the snapshot of an endpoint delta is built there too).
        let written =
            tokio::task::spawn_blocking(move || writer.write(served.router.snapshot())).await;
        let written = match written {
            Ok(w) => w,
            Err(e) => Err(std::io::Error::other(format!(
                "the writing task failed: {e}"
            ))),
        };
        match written {
            Ok(w) => {
                if failed.take().is_some() {
                    tracing::info!(generation = w.generation, "snapshot kept on disk again");
                }
                shared.metrics.state_writes.with_label_values(&["ok"]).inc();
                shared
                    .metrics
                    .state_generation
                    .set(i64::try_from(w.generation).unwrap_or(i64::MAX));
                tracing::debug!(generation = w.generation, "snapshot kept on disk");
                shared.update_state_file(|s| {
                    s.written = Some((w.generation, w.written_at));
                    s.last_error = None;
                });
            }
            Err(e) => {
                shared
                    .metrics
                    .state_writes
                    .with_label_values(&["error"])
                    .inc();
                let reason = e.to_string();
                if failed.as_ref() != Some(&reason) {
                    tracing::warn!(
                        path = %state.path().display(),
                        error = %reason,
                        "cannot keep the snapshot on disk; the previous file stays, retrying"
                    );
                }
                last = None;
                shared.update_state_file(|s| {
                    s.last_error = Some(format!("write failed: {reason}"));
                });
                failed = Some(reason);
            }
        }
        tokio::time::sleep(WRITE_SPACING).await;
    }
}
