//! The member-Secret watcher: a kube-runtime watcher on the labelled Secrets of one namespace,
//! turned into [`MembershipEvent`]s.
//!
//! [`Membership`] keeps, per Secret, the last version that parsed (and was not in conflict with
//! another member) and the current error, so that
//! - an unchanged Secret seen again (a re-list after a watch restart) emits nothing;
//! - an edit that breaks a Secret emits `Invalid` (logged, counted in
//!   `meridian_member_secret_errors_total{secret}`) and its member keeps running on its last
//!   good version: a typo never takes a cluster away;
//! - a Secret naming a cluster that is already a member (a `--cluster` flag or another Secret)
//!   is refused the same way;
//! - Secrets gone while the watch was down are removed when the re-list completes (`InitDone`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{
    MEMBER_LABEL, MEMBER_LABEL_VALUE, MemberSecretError, MemberSpec, ParsedMember, member_config,
    parse_member_secret,
};

/// A member cluster from a Secret, ready to connect to.
#[derive(Clone)]
pub struct Member {
    /// The Secret's name.
    pub secret: String,
    /// The member cluster.
    pub spec: MemberSpec,
    /// Its client config (from the Secret's kubeconfig).
    pub config: kube::Config,
    /// Its API server URL.
    pub server: String,
}

// By hand: the config holds credentials, logs need only where it points.
impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("secret", &self.secret)
            .field("spec", &self.spec)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A change of the members the Secrets describe.
#[derive(Debug)]
pub enum MembershipEvent {
    /// A new member cluster: start watching it.
    Added(Member),
    /// A member whose Secret changed (region, network, pool or kubeconfig): reconnect.
    Changed(Member),
    /// A member whose Secret is gone (or now names another cluster): stop watching it and
    /// withdraw its endpoints after the stale-endpoint grace.
    Removed {
        /// The Secret's name.
        secret: String,
        /// The member cluster's name.
        cluster: String,
    },
    /// A Secret that cannot be used as it is. A member it described before keeps running.
    Invalid {
        /// The Secret's name.
        secret: String,
        /// What is wrong and how to fix it.
        error: MemberSecretError,
    },
}

/// Metrics of the member-Secret watcher.
#[derive(Clone)]
pub struct MemberMetrics {
    /// `meridian_member_secret_errors_total{secret}`: Secrets found invalid (each new error once).
    pub secret_errors: IntCounterVec,
    /// `meridian_member_secret_clusters`: member clusters currently defined by Secrets.
    pub clusters: IntGauge,
    /// `meridian_member_secret_invalid`: labelled Secrets currently invalid.
    pub invalid: IntGauge,
}

impl MemberMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let secret_errors = IntCounterVec::new(
            Opts::new(
                "meridian_member_secret_errors_total",
                "Member-cluster Secrets found invalid, by Secret",
            ),
            &["secret"],
        )?;
        let clusters = IntGauge::new(
            "meridian_member_secret_clusters",
            "Member clusters currently defined by Secrets",
        )?;
        let invalid = IntGauge::new(
            "meridian_member_secret_invalid",
            "Labelled member-cluster Secrets that are currently invalid",
        )?;
        registry.register(Box::new(secret_errors.clone()))?;
        registry.register(Box::new(clusters.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        Ok(Self {
            secret_errors,
            clusters,
            invalid,
        })
    }
}

/// What the Secrets seen so far define.
struct Membership {
    /// Cluster names of the `--cluster` flags: a Secret may not redefine them.
    reserved: BTreeSet<String>,
    /// Per Secret, the last good version.
    good: BTreeMap<String, ParsedMember>,
    /// Per Secret, its current error.
    bad: BTreeMap<String, MemberSecretError>,
    /// Secrets listed since the watcher (re)started, until the list is complete.
    relisted: Option<BTreeSet<String>>,
    metrics: MemberMetrics,
    namespace: String,
}

impl Membership {
    fn new(namespace: &str, reserved: BTreeSet<String>, metrics: MemberMetrics) -> Self {
        Self {
            reserved,
            good: BTreeMap::new(),
            bad: BTreeMap::new(),
            relisted: None,
            metrics,
            namespace: namespace.to_string(),
        }
    }

    async fn handle(&mut self, event: watcher::Event<Secret>) -> Vec<MembershipEvent> {
        let events = match event {
            watcher::Event::Init => {
                self.relisted = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(s) => {
                if let Some(seen) = &mut self.relisted {
                    seen.insert(s.name_any());
                }
                self.apply(&s).await
            }
            watcher::Event::InitDone => self.forget_unlisted(),
            watcher::Event::Apply(s) => self.apply(&s).await,
            watcher::Event::Delete(s) => self.delete(&s.name_any()),
        };
        self.metrics.clusters.set(self.good.len() as i64);
        self.metrics.invalid.set(self.bad.len() as i64);
        events
    }

    /// The Secrets not listed again are gone.
    fn forget_unlisted(&mut self) -> Vec<MembershipEvent> {
        let Some(seen) = self.relisted.take() else {
            return Vec::new();
        };
        self.bad.retain(|name, _| seen.contains(name));
        let gone: Vec<String> = self
            .good
            .keys()
            .filter(|name| !seen.contains(*name))
            .cloned()
            .collect();
        gone.iter().flat_map(|name| self.delete(name)).collect()
    }

    fn delete(&mut self, secret: &str) -> Vec<MembershipEvent> {
        self.bad.remove(secret);
        match self.good.remove(secret) {
            Some(old) => {
                tracing::info!(secret, cluster = %old.spec.name, "member cluster Secret deleted");
                vec![MembershipEvent::Removed {
                    secret: secret.to_string(),
                    cluster: old.spec.name,
                }]
            }
            None => Vec::new(),
        }
    }

    /// The cluster name `parsed` claims, unless a flag or another Secret has it.
    fn check_unique(&self, parsed: &ParsedMember) -> Result<(), MemberSecretError> {
        let cluster = &parsed.spec.name;
        let taken_by = if self.reserved.contains(cluster) {
            Some("a --cluster flag of the controller".to_string())
        } else {
            self.good
                .values()
                .find(|m| m.secret != parsed.secret && &m.spec.name == cluster)
                .map(|m| format!("Secret {}", m.secret))
        };
        match taken_by {
            Some(by) => Err(MemberSecretError::ClusterTaken {
                cluster: cluster.clone(),
                by,
            }),
            None => Ok(()),
        }
    }

    async fn apply(&mut self, secret: &Secret) -> Vec<MembershipEvent> {
        let name = secret.name_any();
        let checked = match parse_member_secret(secret) {
            Ok(p) => self.check_unique(&p).map(|()| p),
            Err(e) => Err(e),
        };
        let parsed = match checked {
            Ok(p) => p,
            Err(e) => return self.refuse(name, e),
        };
        let old = self.good.get(&name);
        if old.is_some_and(|o| o.same_as(&parsed)) {
            self.bad.remove(&name);
            return Vec::new();
        }
        let config = match member_config(&parsed).await {
            Ok(c) => c,
            Err(e) => return self.refuse(name, e),
        };
        let member = Member {
            secret: name.clone(),
            spec: parsed.spec.clone(),
            config,
            server: parsed.server.clone(),
        };
        let mut events = Vec::new();
        match old {
            Some(o) if o.spec.name != parsed.spec.name => {
                tracing::info!(secret = %name, from = %o.spec.name, to = %parsed.spec.name, "member cluster Secret renamed its cluster");
                events.push(MembershipEvent::Removed {
                    secret: name.clone(),
                    cluster: o.spec.name.clone(),
                });
                events.push(MembershipEvent::Added(member));
            }
            Some(_) => {
                tracing::info!(secret = %name, cluster = %parsed.spec.name, server = %parsed.server, "member cluster Secret changed");
                events.push(MembershipEvent::Changed(member));
            }
            None => {
                tracing::info!(secret = %name, cluster = %parsed.spec.name, region = %parsed.spec.region, server = %parsed.server, "member cluster from Secret");
                events.push(MembershipEvent::Added(member));
            }
        }
        self.bad.remove(&name);
        self.good.insert(name, parsed);
        events
    }

    /// Reports an invalid Secret once per distinct error; a member it defined stays.
    fn refuse(&mut self, secret: String, error: MemberSecretError) -> Vec<MembershipEvent> {
        if self.bad.get(&secret) == Some(&error) {
            return Vec::new();
        }
        let kept = self.good.get(&secret).map(|m| m.spec.name.clone());
        tracing::error!(
            namespace = %self.namespace, secret = %secret, error = %error,
            kept_running = kept.as_deref().unwrap_or("-"),
            "member cluster Secret is invalid; fix it (a member it defined keeps its last good version)"
        );
        self.metrics
            .secret_errors
            .with_label_values(&[&secret])
            .inc();
        self.bad.insert(secret.clone(), error.clone());
        vec![MembershipEvent::Invalid { secret, error }]
    }
}

/// Watches the member-cluster Secrets of `namespace` and sends what changes on `events` until
/// `shutdown` turns true or the receiver is gone. `reserved`: the names of the `--cluster`
/// members, which no Secret may take. Watch errors are logged and retried with backoff.
pub async fn watch_member_secrets(
    client: Client,
    namespace: String,
    reserved: BTreeSet<String>,
    metrics: MemberMetrics,
    events: mpsc::Sender<MembershipEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let selector = format!("{MEMBER_LABEL}={MEMBER_LABEL_VALUE}");
    let mut stream = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut membership = Membership::new(&namespace, reserved, metrics);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = crate::stopped(&mut shutdown) => return,
        };
        let event = match next {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                tracing::warn!(namespace = %namespace, error = %e, "member cluster Secrets: watch failed; retrying with backoff");
                continue;
            }
            None => return,
        };
        for e in membership.handle(event).await {
            if events.send(e).await.is_err() {
                return;
            }
        }
    }
}

/// [`watch_member_secrets`] on its own task.
pub fn spawn_member_watcher(
    client: Client,
    namespace: String,
    reserved: BTreeSet<String>,
    metrics: MemberMetrics,
    events: mpsc::Sender<MembershipEvent>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(watch_member_secrets(
        client, namespace, reserved, metrics, events, shutdown,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::members::member_secret;

    const KUBECONFIG: &str = "\
clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
";

    fn secret(cluster: &str, region: &str) -> Secret {
        let spec = MemberSpec {
            name: cluster.into(),
            region: region.into(),
            zones: vec![],
            network: String::new(),
            gateway_addresses: None,
        };
        member_secret("ns", &spec, KUBECONFIG)
    }

    fn names(events: &[MembershipEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                MembershipEvent::Added(m) => format!("added {}", m.spec.name),
                MembershipEvent::Changed(m) => format!("changed {}", m.spec.name),
                MembershipEvent::Removed { cluster, .. } => format!("removed {cluster}"),
                MembershipEvent::Invalid { secret, .. } => format!("invalid {secret}"),
            })
            .collect()
    }

    fn membership() -> Membership {
        let metrics = MemberMetrics::register(&Registry::new()).unwrap();
        Membership::new("ns", BTreeSet::from(["local".to_string()]), metrics)
    }

    #[tokio::test]
    async fn a_relist_removes_secrets_deleted_while_the_watch_was_down() {
        let mut m = membership();
        let mut all = Vec::new();
        for s in [secret("east", "r"), secret("west", "r")] {
            all.extend(m.handle(watcher::Event::Apply(s)).await);
        }
        assert_eq!(names(&all), ["added east", "added west"]);
        // The watch restarts; only east is listed again, unchanged.
        assert!(m.handle(watcher::Event::Init).await.is_empty());
        assert!(
            m.handle(watcher::Event::InitApply(secret("east", "r")))
                .await
                .is_empty(),
            "an unchanged Secret emits nothing"
        );
        let done = m.handle(watcher::Event::InitDone).await;
        assert_eq!(names(&done), ["removed west"]);
        assert_eq!(m.metrics.clusters.get(), 1);
    }

    #[tokio::test]
    async fn renaming_the_cluster_of_a_secret_removes_the_old_member_first() {
        let mut m = membership();
        m.handle(watcher::Event::Apply(secret("east", "r"))).await;
        let mut renamed = secret("north", "r");
        renamed.metadata.name = Some("meridian-cluster-east".into());
        let events = m.handle(watcher::Event::Apply(renamed)).await;
        assert_eq!(names(&events), ["removed east", "added north"]);
        // The flag's cluster is not for Secrets to take.
        let events = m.handle(watcher::Event::Apply(secret("local", "r"))).await;
        let [MembershipEvent::Invalid { error, .. }] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(error.to_string().contains("a --cluster flag"), "{error}");
        assert_eq!(m.metrics.invalid.get(), 1);
    }
}
