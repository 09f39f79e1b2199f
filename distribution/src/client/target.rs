//! What the client programs: the [`Target`] trait (the proxy implements it) and the
//! [`Refused`] answer of a target that cannot serve a snapshot.

use std::future::Future;
use std::time::Duration;

use meridian_model::Snapshot;

use super::ClientStatus;
use crate::protocol::{EndpointChange, GatewayTrafficReport, ProxyHealth};

/// Why a target refused a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Sent to the controller with the NACK.
    pub reason: String,
    /// Try the same snapshot again after this long (e.g. a port that could not be bound).
    pub retry_after: Option<Duration>,
}

/// What the client programs: the proxy (see `meridian_proxy`), or a stand-in in benchmarks.
pub trait Target: Send + Sync {
    /// Applies a full snapshot; returns the generation now served. On error the previous
    /// snapshot must keep serving.
    fn apply(&self, snapshot: Snapshot) -> impl Future<Output = Result<u64, Refused>> + Send;

    /// Applies an endpoint-only change: the snapshot of generation `base`, which the target
    /// serves (its last successful `apply` or `apply_endpoints`), with the endpoint lists of
    /// `changes` patched in by backend name and numbered `generation`. Must end in the same
    /// state, and the same refusals, as `apply` of that patched snapshot. `None` when the
    /// target has no fast path or does not serve `base`: the client then calls `apply` with the
    /// patched snapshot. The default has no fast path.
    fn apply_endpoints(
        &self,
        _generation: u64,
        _base: u64,
        _changes: &[EndpointChange],
    ) -> impl Future<Output = Option<Result<u64, Refused>>> + Send {
        std::future::ready(None)
    }

    /// Records a snapshot refused before `apply` (it did not decode).
    fn refuse(&self, _reason: &str) {}

    /// Called whenever the connection status changes.
    fn status(&self, _status: &ClientStatus) {}

    /// Cumulative traffic counters per Gateway, reported to the server about once a second
    /// (`POST /v1/traffic`). Targets that count nothing report nothing.
    fn traffic(&self) -> Vec<GatewayTrafficReport> {
        Vec::new()
    }

    /// The target's own health view (measured region order, ejected endpoints), sent with the
    /// traffic report when it changed. Targets without one report `None`.
    fn health(&self) -> Option<ProxyHealth> {
        None
    }
}
