//! Where `meridian controller` gets the configuration of its `--cluster` members.
//!
//! ```text
//! --kubeconfig F                          ─► that file               (a flag always wins)
//! $KUBECONFIG set                         ─► those files
//! ~/.kube/config exists                   ─► that file
//! $KUBERNETES_SERVICE_HOST set (a pod)    ─► in-cluster: the pod's service-account token and CA
//!                                            (kube::Config::incluster); exactly one --cluster
//!                                            NAME@REGION names the cluster the pod runs in, the
//!                                            other members come from Secrets (crate::members)
//! none of these                           ─► an error listing the four ways
//! ```
//!
//! [`choose`] is the decision alone, over what [`Available::from_env`] found, so it is tested
//! without a pod.

use std::path::PathBuf;

use crate::args::{
    ArgsError, ClusterSpec, ConnectError, ControllerArgs, apply_networks, check_unique,
    read_clusters_file,
};

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The kubeconfig named by `--kubeconfig`.
    File(PathBuf),
    /// `$KUBECONFIG`, else `~/.kube/config`.
    DefaultKubeconfig,
    /// The pod's service account.
    InCluster,
}

/// What the process can use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Available {
    /// `--kubeconfig`.
    pub flag: Option<PathBuf>,
    /// `$KUBECONFIG` is set and not empty.
    pub env_kubeconfig: bool,
    /// `~/.kube/config` exists.
    pub home_kubeconfig: bool,
    /// `$KUBERNETES_SERVICE_HOST` is set and not empty (the process runs in a pod).
    pub service_host: bool,
}

impl Available {
    /// What this process has.
    pub fn from_env(flag: Option<PathBuf>) -> Self {
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let home_kubeconfig = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".kube").join("config"))
            .is_some_and(|p| p.is_file());
        Self {
            flag,
            env_kubeconfig: set("KUBECONFIG"),
            home_kubeconfig,
            service_host: set("KUBERNETES_SERVICE_HOST"),
        }
    }
}

/// No configuration at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no Kubernetes configuration: pass --kubeconfig FILE, set $KUBECONFIG, create \
     ~/.kube/config, or run in a pod with a service account (KUBERNETES_SERVICE_HOST is not set)"
)]
pub struct NoConfig;

/// The configuration to use: a kubeconfig whenever one is there, in-cluster otherwise.
pub fn choose(available: &Available) -> Result<ConfigSource, NoConfig> {
    if let Some(f) = &available.flag {
        return Ok(ConfigSource::File(f.clone()));
    }
    if available.env_kubeconfig || available.home_kubeconfig {
        return Ok(ConfigSource::DefaultKubeconfig);
    }
    if available.service_host {
        return Ok(ConfigSource::InCluster);
    }
    Err(NoConfig)
}

/// Why the `--cluster` members cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    /// No configuration source at all.
    #[error(transparent)]
    NoConfig(#[from] NoConfig),
    /// In a pod, the `--cluster` list does not name exactly the one cluster the pod runs in.
    #[error(transparent)]
    InCluster(#[from] InClusterSpecError),
    /// A flag or the member list is unusable.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The kubeconfig or one of its contexts is unusable.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `KUBERNETES_SERVICE_HOST` is set but the pod's credentials cannot be read.
    #[error(
        "in-cluster configuration (KUBERNETES_SERVICE_HOST is set): is the service-account \
         token mounted (automountServiceAccountToken)? {0}"
    )]
    Pod(#[source] kube::config::InClusterError),
}

/// In a pod without a kubeconfig, the `--cluster` list must be the one cluster the pod runs in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InClusterSpecError {
    /// No `--cluster` at all.
    #[error(
        "running in a pod without a kubeconfig: name the cluster it runs in with --cluster \
         NAME@REGION (other members come from cluster Secrets: meridian cluster add)"
    )]
    None,
    /// `--cluster NAME=CONTEXT`: there is no context in a pod.
    #[error(
        "--cluster {name}={context}: there is no kubeconfig in this pod, so no context to use; \
         write --cluster {name}@{region}"
    )]
    Context {
        /// The cluster's name.
        name: String,
        /// The context given.
        context: String,
        /// Its region.
        region: String,
    },
    /// More than one member.
    #[error(
        "running in a pod without a kubeconfig, the service account reaches only the cluster \
         the pod runs in, but {} clusters are given ({}): keep one --cluster and add the others \
         with `meridian cluster add`",
        .0.len(),
        .0.join(", ")
    )]
    Many(Vec<String>),
}

/// In a pod the member list is the one cluster the pod runs in: one spec, without a context.
pub fn check_in_cluster_specs(specs: &[ClusterSpec]) -> Result<(), InClusterSpecError> {
    match specs {
        [] => Err(InClusterSpecError::None),
        [one] => match &one.context {
            Some(ctx) => Err(InClusterSpecError::Context {
                name: one.name.clone(),
                context: ctx.clone(),
                region: one.region().to_string(),
            }),
            None => Ok(()),
        },
        many => Err(InClusterSpecError::Many(
            many.iter().map(|s| s.name.clone()).collect(),
        )),
    }
}

/// The `--cluster` members with their client configs, from the source [`choose`] picks.
pub async fn static_members(
    args: &ControllerArgs,
) -> Result<Vec<(ClusterSpec, kube::Config)>, MembersError> {
    let source = choose(&Available::from_env(args.kubeconfig.clone()))?;
    if source != ConfigSource::InCluster {
        let kubeconfig = args.load_kubeconfig()?;
        let specs = args.cluster_specs(&kubeconfig)?;
        let mut members = Vec::new();
        for spec in specs {
            let config = crate::args::cluster_config(&kubeconfig, &spec).await?;
            members.push((spec, config));
        }
        return Ok(members);
    }
    let mut specs = match &args.clusters_file {
        Some(path) => read_clusters_file(path)?,
        None => args.clusters.clone(),
    };
    check_in_cluster_specs(&specs)?;
    check_unique(&specs)?;
    apply_networks(&mut specs, &args.networks)?;
    let config = kube::Config::incluster().map_err(MembersError::Pod)?;
    tracing::info!(server = %config.cluster_url, "in-cluster configuration (the pod's service account)");
    Ok(specs.into_iter().map(|s| (s, config.clone())).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_kubeconfig_wins_and_in_cluster_is_the_fallback() {
        let none = Available::default();
        assert_eq!(choose(&none), Err(NoConfig));
        let msg = NoConfig.to_string();
        assert!(
            msg.contains("--kubeconfig")
                && msg.contains("$KUBECONFIG")
                && msg.contains("~/.kube/config")
                && msg.contains("KUBERNETES_SERVICE_HOST"),
            "{msg}"
        );
        let pod = Available {
            service_host: true,
            ..none.clone()
        };
        assert_eq!(choose(&pod), Ok(ConfigSource::InCluster));
        // A flag overrides the pod's own configuration, and so does a kubeconfig on disk.
        let flag = Available {
            flag: Some("k.yaml".into()),
            ..pod.clone()
        };
        assert_eq!(choose(&flag), Ok(ConfigSource::File("k.yaml".into())));
        for a in [
            Available {
                env_kubeconfig: true,
                ..pod.clone()
            },
            Available {
                home_kubeconfig: true,
                ..pod.clone()
            },
            Available {
                home_kubeconfig: true,
                ..none.clone()
            },
        ] {
            assert_eq!(choose(&a), Ok(ConfigSource::DefaultKubeconfig), "{a:?}");
        }
    }

    #[test]
    fn in_cluster_takes_exactly_one_cluster_without_a_context() {
        let spec = |s: &str| s.parse::<ClusterSpec>().unwrap();
        check_in_cluster_specs(&[spec("east@us-east")]).unwrap();
        let e = check_in_cluster_specs(&[]).unwrap_err().to_string();
        assert!(e.contains("--cluster NAME@REGION"), "{e}");
        let e = check_in_cluster_specs(&[spec("east=ctx@us-east")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no context to use; write --cluster east@us-east"),
            "{e}"
        );
        let e = check_in_cluster_specs(&[spec("east"), spec("west")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 clusters are given (east, west)") && e.contains("meridian cluster add"),
            "{e}"
        );
    }
}
