//! The running controller follows the member-cluster Secrets: [`follow_member_secrets`] turns
//! the watcher's [`MembershipEvent`]s into [`Members`] calls.
//!
//! ```text
//! Secret watcher ─► Added(m)   ─► clients from m.config (status writes: for_status_writes)
//!                               ─► add_cluster   (already a member, e.g. after a failed remove:
//!                                                 replace_cluster)
//!                   Changed(m) ─► replace_cluster (not a member, e.g. its add failed: add)
//!                   Removed    ─► remove_cluster (watchers and writes stop now, endpoints go
//!                                                 after the endpoint grace)
//!                   Invalid    ─► nothing more (the watcher logged and counted it; a member it
//!                                 described keeps running)
//! ```

use std::collections::BTreeSet;

use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Member, MemberMetrics, MembershipEvent, spawn_member_watcher};
use crate::controller::{MemberCluster, MemberError, Members};

/// Why a member from a Secret could not be connected.
#[derive(Debug, thiserror::Error)]
#[error("member cluster {cluster} (Secret {secret}): cannot build a client: {source}")]
pub struct MemberClientError {
    /// The member cluster.
    pub cluster: String,
    /// Its Secret.
    pub secret: String,
    /// Why.
    #[source]
    pub source: Box<kube::Error>,
}

/// The member cluster a Secret describes, with the client its status writes go through.
pub fn member_cluster(m: &Member) -> Result<(MemberCluster, Client), MemberClientError> {
    let err = |source| MemberClientError {
        cluster: m.spec.name.clone(),
        secret: m.secret.clone(),
        source: Box::new(source),
    };
    let client = Client::try_from(m.config.clone()).map_err(err)?;
    let write_client =
        Client::try_from(crate::writer::for_status_writes(m.config.clone())).map_err(err)?;
    let cluster = MemberCluster::new(
        m.spec.name.clone(),
        m.spec.region.clone(),
        m.spec.zones.clone(),
        client,
    )
    .with_network(m.spec.network.clone());
    Ok((cluster, write_client))
}

/// Applies one membership event to the running controller; errors are logged (the next edit of
/// the Secret tries again).
pub async fn apply_membership_event(members: &Members, event: MembershipEvent) {
    let (m, changed) = match event {
        MembershipEvent::Added(m) => (m, false),
        MembershipEvent::Changed(m) => (m, true),
        MembershipEvent::Removed { secret, cluster } => {
            match members.remove_cluster(&cluster).await {
                Ok(()) | Err(MemberError::NotMember(_)) => {}
                Err(e) => {
                    tracing::warn!(%secret, %cluster, error = %e, "member cluster not removed")
                }
            }
            return;
        }
        MembershipEvent::Invalid { .. } => return,
    };
    let (cluster, write_client) = match member_cluster(&m) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "member cluster Secret not applied");
            return;
        }
    };
    let pool = m.spec.gateway_addresses;
    let first = if changed {
        members
            .replace_cluster(cluster.clone(), write_client.clone(), pool)
            .await
    } else {
        members
            .add_cluster(cluster.clone(), write_client.clone(), pool)
            .await
    };
    // The controller's view and the Secrets' can differ (an earlier call failed): do the other.
    let result = match first {
        Err(MemberError::NotMember(_)) => members.add_cluster(cluster, write_client, pool).await,
        Err(MemberError::AlreadyMember(_)) => {
            members.replace_cluster(cluster, write_client, pool).await
        }
        other => other,
    };
    match result {
        Ok(()) => {
            tracing::info!(secret = %m.secret, cluster = %m.spec.name, server = %m.server, "member cluster from Secret applied")
        }
        Err(e) => {
            tracing::warn!(secret = %m.secret, cluster = %m.spec.name, error = %e, "member cluster from Secret not applied")
        }
    }
}

/// Watches the member-cluster Secrets of `namespace` (through `client`, the controller's own
/// cluster) and applies them to the running controller until `shutdown` turns true. `reserved`:
/// the `--cluster` names, which Secrets may not take.
pub fn follow_member_secrets(
    members: Members,
    client: Client,
    namespace: String,
    reserved: BTreeSet<String>,
    metrics: MemberMetrics,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Small: the watcher waits while a change is applied (each is quick).
    let (tx, mut rx) = mpsc::channel(16);
    tracing::info!(%namespace, "following member-cluster Secrets");
    let watcher = spawn_member_watcher(client, namespace, reserved, metrics, tx, shutdown);
    tokio::spawn(async move {
        // Ends when the watcher does (shutdown), which drops the sender.
        while let Some(event) = rx.recv().await {
            apply_membership_event(&members, event).await;
        }
        let _ = watcher.await;
    })
}
