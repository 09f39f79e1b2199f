//! The reconnect grace of [`DistributedDataPlane`] on tokio's paused clock: a Gateway of a
//! cluster no proxy has reported for is `Unknown` exactly until the grace ends, then the truth,
//! and `changes()` ticks at that instant (so the controller writes it). The restart tests
//! (`restart.rs`) show the same end to end on the wall clock; here the timing itself is checked,
//! to the millisecond, without waiting for it.
//!
//! The distribution server is real (it binds a loopback port), but no proxy connects: nothing
//! here waits on the network, so the paused clock only moves when a test advances it (or when
//! every task is idle and a timer is due, which the tests account for).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use meridian_controller::{
    AddressPools, ClusterGatewayRef, DataPlane, DistributedDataPlane, ProgrammedState,
};
use meridian_distribution::{DistributionServer, ServerConfig};
use meridian_model::Snapshot;
use serde_json::json;
use tokio::time::{Instant, advance};

const GRACE: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

async fn data_plane(grace: Duration) -> Arc<DistributedDataPlane> {
    let ca = meridian_distribution::pki::Ca::generate(
        &meridian_distribution::pki::TrustDomain::default(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), Arc::new(ca));
    let server = DistributionServer::start(cfg).await.unwrap();
    DistributedDataPlane::new(Arc::new(server), AddressPools::default(), grace)
}

/// A snapshot of cluster `east` holding Gateway `infra/gw` (no listeners).
fn snapshot() -> Snapshot {
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 0,
        "gateways": [{"namespace": "infra", "name": "gw", "listeners": []}],
    }))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_gateway_is_unknown_until_the_grace_ends_then_the_truth_with_a_tick() {
    let started = Instant::now();
    let dp = data_plane(GRACE).await;
    let gw = ClusterGatewayRef::new("east", "infra", "gw");
    let mut changes = dp.changes();
    changes.mark_unchanged();

    // Nothing published yet (Pending) and, once published, no proxy at all (NoProxy): both
    // are Unknown for the whole grace.
    assert_eq!(dp.programmed(&gw), ProgrammedState::Unknown);
    dp.publish("east", std::sync::Arc::new(snapshot()), None);
    assert_eq!(dp.programmed(&gw), ProgrammedState::Unknown);
    // The publish itself may tick (the server's own change): take it.
    tokio::task::yield_now().await;
    changes.mark_unchanged();

    advance(GRACE - MS).await;
    assert_eq!(dp.programmed(&gw), ProgrammedState::Unknown);
    assert!(
        !changes.has_changed().unwrap(),
        "a tick before the grace ended"
    );

    advance(MS).await;
    changes.changed().await.unwrap();
    assert_eq!(
        started.elapsed(),
        GRACE,
        "the tick comes when the grace ends, not later"
    );
    assert_eq!(dp.programmed(&gw), ProgrammedState::NoProxy);
}

#[tokio::test(start_paused = true)]
async fn every_cluster_shares_the_grace_and_it_ticks_once() {
    let dp = data_plane(GRACE).await;
    let (east, west) = (
        ClusterGatewayRef::new("east", "infra", "gw"),
        ClusterGatewayRef::new("west", "infra", "gw"),
    );
    let mut changes = dp.changes();
    changes.mark_unchanged();
    assert_eq!(dp.programmed(&east), ProgrammedState::Unknown);
    assert_eq!(dp.programmed(&west), ProgrammedState::Unknown);

    advance(GRACE).await;
    changes.changed().await.unwrap();
    // West never had a snapshot: Pending (sent nothing yet), no longer Unknown.
    assert_eq!(
        dp.programmed(&east),
        ProgrammedState::Pending { waiting: vec![] }
    );
    assert_eq!(
        dp.programmed(&west),
        ProgrammedState::Pending { waiting: vec![] }
    );

    // Much later: no second tick from the grace.
    advance(GRACE * 10).await;
    tokio::task::yield_now().await;
    assert!(!changes.has_changed().unwrap(), "the grace ticked twice");
}

#[tokio::test(start_paused = true)]
async fn without_a_grace_the_truth_comes_at_once() {
    let dp = data_plane(Duration::ZERO).await;
    let gw = ClusterGatewayRef::new("east", "infra", "gw");
    dp.publish("east", std::sync::Arc::new(snapshot()), None);
    assert_eq!(dp.programmed(&gw), ProgrammedState::NoProxy);
}
