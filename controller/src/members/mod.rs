//! Member clusters from Secrets: clusters that join and leave while the controller runs.
//!
//! Besides its `--cluster` flags, the controller reads member clusters from Secrets in its own
//! namespace, the pattern platform teams know from Istio's remote secrets:
//!
//! ```text
//! Secret meridian-cluster-east  (namespace: --cluster-secrets-namespace, default $POD_NAMESPACE,
//!   labels:      meridian.dev/member-cluster: "true"          the pod's namespace file, meridian-system)
//!   annotations: meridian.dev/cluster: east                    required, a DNS label
//!                meridian.dev/region: us-east                  required
//!                meridian.dev/zones: us-east-1a,us-east-1b     optional, comma-separated
//!                meridian.dev/network: net-a                   optional (default: the shared network "")
//!                meridian.dev/gateway-addresses: 10.0.10.0/24  optional, the cluster's Gateway address pool
//!   data:        kubeconfig: <a kubeconfig with one context, a bearer token or client certificate
//!                             given inline; no exec plugins, no auth providers, no file paths>
//!
//!      │ kube-runtime watcher (label selector, one namespace)
//!      ▼
//! Membership (per Secret: the last good member, or the error)        ──► MembershipEvent
//!   new valid Secret ─► Added(Member)        edited, still valid ─► Changed(Member)
//!   deleted Secret   ─► Removed{cluster}     invalid ─► Invalid{error} (+ log, + metric); a member
//!                                            it described before keeps running on its last good version
//! ```
//!
//! [`secret`](parse_member_secret) parses a Secret into a [`MemberSpec`] and a client config with
//! errors that say what is wrong and how to fix it; [`watcher`](spawn_member_watcher) turns the
//! watch stream into [`MembershipEvent`]s on a channel; [`cli`] is `meridian cluster
//! add|list|remove`, which writes such Secrets with a token of a dedicated service account of the
//! member cluster (never the user's own credentials).
//!
//! [`follow`](follow_member_secrets) applies the events to the running controller
//! ([`crate::Members`]): `meridian controller` follows the Secrets of its own namespace.

pub mod cli;
mod follow;
mod secret;
mod watcher;

use std::path::Path;

use crate::distributed::addresses::AddressRange;

pub use follow::{
    MemberClientError, apply_membership_event, follow_member_secrets, member_cluster,
};
pub use secret::{
    MemberSecretError, ParsedMember, member_config, member_secret, parse_member_secret,
    secret_name_for,
};
pub use watcher::{
    Member, MemberMetrics, MembershipEvent, spawn_member_watcher, watch_member_secrets,
};

/// Label that marks a Secret as describing a member cluster (value [`MEMBER_LABEL_VALUE`]).
pub const MEMBER_LABEL: &str = "meridian.dev/member-cluster";
/// The value of [`MEMBER_LABEL`].
pub const MEMBER_LABEL_VALUE: &str = "true";
/// Annotation: the member cluster's name (a DNS label, unique among all members).
pub const CLUSTER_ANNOTATION: &str = "meridian.dev/cluster";
/// Annotation: the member cluster's region.
pub const REGION_ANNOTATION: &str = "meridian.dev/region";
/// Annotation: the member cluster's zones, comma-separated.
pub const ZONES_ANNOTATION: &str = "meridian.dev/zones";
/// Annotation: the network of the member cluster's pod IPs.
pub const NETWORK_ANNOTATION: &str = "meridian.dev/network";
/// Annotation: the range Gateways of the member cluster get their addresses from.
pub const ADDRESSES_ANNOTATION: &str = "meridian.dev/gateway-addresses";
/// Data key of the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// Namespace of the Secrets (and of the leader-election Lease) when nothing else says.
pub const DEFAULT_NAMESPACE: &str = "meridian-system";
/// Where a pod finds the namespace it runs in (mounted with its service-account token).
pub const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A member cluster as a Secret describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Name used in snapshots, endpoint tags, metrics and logs.
    pub name: String,
    /// Region of the cluster.
    pub region: String,
    /// Zones of the cluster.
    pub zones: Vec<String>,
    /// Network of the cluster's pod IPs (`""`: the network every cluster shares).
    pub network: String,
    /// Addresses for the cluster's Gateways (`None`: the proxies' advertised address).
    pub gateway_addresses: Option<AddressRange>,
}

/// The controller's own namespace, where member Secrets and the Lease live: the flag, else
/// `$POD_NAMESPACE` (the downward API of deploy/), else the pod's namespace file, else
/// [`DEFAULT_NAMESPACE`]. Blank values count as absent.
pub fn own_namespace(
    flag: Option<&str>,
    pod_namespace_env: Option<&str>,
    namespace_file: Option<&str>,
) -> String {
    [flag, pod_namespace_env, namespace_file]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string()
}

/// [`own_namespace`] with `$POD_NAMESPACE` and [`POD_NAMESPACE_FILE`] read from the process.
pub fn own_namespace_from_env(flag: Option<&str>) -> String {
    let env = std::env::var("POD_NAMESPACE").ok();
    let file = std::fs::read_to_string(Path::new(POD_NAMESPACE_FILE)).ok();
    own_namespace(flag, env.as_deref(), file.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_prefers_flag_then_env_then_file() {
        assert_eq!(own_namespace(Some("a"), Some("b"), Some("c")), "a");
        assert_eq!(own_namespace(None, Some("b"), Some("c\n")), "b");
        assert_eq!(own_namespace(None, None, Some("c\n")), "c");
        assert_eq!(own_namespace(None, Some(" "), None), DEFAULT_NAMESPACE);
        assert_eq!(own_namespace(None, None, None), DEFAULT_NAMESPACE);
    }
}
