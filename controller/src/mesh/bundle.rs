//! The trust bundle in every member cluster: ConfigMap `meridian-ca` (key `ca.crt`) in the
//! controller's namespace, which the proxies of that cluster mount as their `--ca-file`.
//!
//! ```text
//! member directory (ControllerHandle::member_directory) ── changed ──► for every member:
//!   one task per cluster: server-side apply of the ConfigMap (field manager "meridian")
//!     failed ─► retry after 0.25 s, 0.5 s, … up to 30 s; other clusters do not wait for it
//!     applied ─► again every RESYNC (someone deleted or edited it)
//!   a member that joins or reconnects gets a new task; one that leaves has its task stopped
//! ```
//!
//! Server-side apply makes it idempotent (the same content changes nothing) and needs only
//! `patch` on that one ConfigMap name in each cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{BUNDLE_CONFIGMAP, BUNDLE_KEY, MANAGED_BY, MANAGED_BY_LABEL};
use crate::controller::MemberDirectory;

/// First pause after a failed apply; doubles up to [`BACKOFF_MAX`].
const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest pause between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an applied bundle is applied again.
const RESYNC: Duration = Duration::from_secs(600);

/// The ConfigMap carrying `ca_pem` in `namespace`.
pub fn bundle_configmap(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(BUNDLE_CONFIGMAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            ..ObjectMeta::default()
        },
        data: Some([(BUNDLE_KEY.to_string(), ca_pem.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// Applies the bundle ConfigMap once through `client` (server-side apply).
pub async fn apply_bundle(
    client: kube::Client,
    namespace: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut cm = serde_json::to_value(bundle_configmap(namespace, ca_pem))
        .map_err(kube::Error::SerdeError)?;
    // Server-side apply wants the kind spelled out.
    cm["apiVersion"] = "v1".into();
    cm["kind"] = "ConfigMap".into();
    api.patch(
        BUNDLE_CONFIGMAP,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(drop)
}

/// Publishes the trust bundle to every member cluster.
#[derive(Clone, Debug)]
pub struct BundlePublisher {
    namespace: String,
    ca_pem: String,
    backoff_initial: Duration,
    backoff_max: Duration,
    resync: Duration,
}

impl BundlePublisher {
    /// Publishes `ca_pem` into `namespace` of each member.
    pub fn new(namespace: String, ca_pem: String) -> Self {
        Self {
            namespace,
            ca_pem,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            resync: RESYNC,
        }
    }

    /// The same with other retry pauses (tests).
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Follows `directory` until `shutdown` turns true (or the directory's controller is gone):
    /// each change starts the bundle anew in every member (applying the same content again
    /// changes nothing; a reconnected member may be another API server).
    pub fn spawn(
        self,
        mut directory: watch::Receiver<MemberDirectory>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tasks: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
            loop {
                let members = directory.borrow_and_update().clone();
                for (_, t) in std::mem::take(&mut tasks) {
                    t.abort();
                }
                for (name, entry) in members {
                    let task =
                        tokio::spawn(self.clone().publish(name.clone(), entry.cluster.client));
                    tasks.insert(name, task);
                }
                tokio::select! {
                    changed = directory.changed() => if changed.is_err() { break },
                    _ = crate::stopped(&mut shutdown) => break,
                }
            }
            for (_, t) in tasks {
                t.abort();
            }
        })
    }

    /// Applies the bundle in one cluster until it lands, then again every `resync`; runs until
    /// aborted.
    async fn publish(self, cluster: String, client: kube::Client) {
        let mut pause = self.backoff_initial;
        let mut failures = 0u32;
        loop {
            match apply_bundle(client.clone(), &self.namespace, &self.ca_pem).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(%cluster, failures, "mesh trust bundle published after retries");
                    } else {
                        tracing::debug!(%cluster, "mesh trust bundle published");
                    }
                    failures = 0;
                    pause = self.backoff_initial;
                    tokio::time::sleep(self.resync).await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%cluster, namespace = %self.namespace, error = %e, retry_in = ?pause, "mesh trust bundle not published");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.backoff_max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_carries_the_pem_and_our_label() {
        let cm = bundle_configmap("meridian-system", "PEM");
        assert_eq!(cm.metadata.name.as_deref(), Some("meridian-ca"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("meridian-system"));
        assert_eq!(
            cm.metadata.labels.unwrap_or_default()["app.kubernetes.io/managed-by"],
            "meridian"
        );
        assert_eq!(cm.data.unwrap_or_default()["ca.crt"], "PEM");
    }
}
