//! Command-line arguments of `meridian controller` and how they become member-cluster clients.
//!
//! ```text
//! --kubeconfig F  (default: $KUBECONFIG list, then ~/.kube/config)
//! --cluster east=ctx-east@us-east  ─┐
//! --cluster west@us-west            ├─► Vec<ClusterSpec> ──► connect() ──► MemberCluster { client, … }
//! --clusters-file clusters.yaml    ─┘     (none given: one member per kubeconfig context)
//! --network east=net-a              ──► ClusterSpec::network (default "": one flat network)
//! --distribution-bind ADDR           ─┐
//! --gateway-addresses east=RANGE     ─┴─► distribution_flags() ──► AddressPools (checked before
//!                                                                    anything starts)
//! --ca-cert-file F --ca-key-file K    ──► ca_source() ──► mesh::prepare (else the --ca-secret
//!                                                            Secret of the first member)
//! mesh::Mesh + --distribution-name DNS|IP (repeated) ──► distribution_tls() ──► DistributionTls
//!                                       (CA, TokenReview bootstrap verifier, pool address policy)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use serde::Deserialize;

use crate::distributed::addresses::{AddressPools, AddressRange};
use crate::translate::{CONTROLLER_NAME, DurationError, parse_duration_ms};

/// A flag, a clusters file or the member list that cannot be used; checked before anything
/// starts. Each message names the flag or file and what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A cluster name that is no DNS label.
    #[error("invalid cluster name {0:?}: use 1-63 lowercase letters, digits and '-'")]
    ClusterName(String),
    /// A network name that is not one plain token.
    #[error("invalid network name {0:?}: use 1-63 letters, digits, '-', '_' and '.'")]
    NetworkName(String),
    /// `--cluster NAME[=CONTEXT][@REGION]` with an empty part.
    #[error("{value:?}: empty {part} after '{sep}'")]
    ClusterFlag {
        /// The flag's value.
        value: String,
        /// `region` or `context`.
        part: &'static str,
        /// `@` or `=`.
        sep: char,
    },
    /// `--network` without `=`.
    #[error("{0:?}: expected CLUSTER=NETWORK")]
    NetworkFlagForm(String),
    /// `--network CLUSTER=NETWORK` with an invalid network.
    #[error("{value:?}: {source}")]
    NetworkFlag {
        /// The flag's value.
        value: String,
        /// What is wrong with it.
        #[source]
        source: Box<ArgsError>,
    },
    /// `--network` names a cluster twice.
    #[error("--network: cluster {0:?} is given twice")]
    NetworkTwice(String),
    /// `--network` names a cluster that is not a member.
    #[error(
        "--network {cluster}={network}: no member cluster is named {cluster:?} (members: {})",
        .members.join(", ")
    )]
    NetworkNotAMember {
        /// The cluster named.
        cluster: String,
        /// Its network.
        network: String,
        /// The member clusters.
        members: Vec<String>,
    },
    /// A duration flag that is no Gateway API duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// The clusters file cannot be read.
    #[error("reading {}: {source}", .path.display())]
    ClustersFileRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The clusters file is not a list of clusters.
    #[error("{}: expected a list of {{name, context, region, zones, network}}: {source}", .path.display())]
    ClustersFileParse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_yaml::Error,
    },
    /// An entry of the clusters file has an invalid name or network.
    #[error("{}: {}{source}", .path.display(), .cluster.as_ref().map(|c| format!("cluster {c}: ")).unwrap_or_default())]
    ClustersFileEntry {
        /// The file.
        path: PathBuf,
        /// The entry, when its name is valid.
        cluster: Option<String>,
        /// What is wrong with it.
        #[source]
        source: Box<ArgsError>,
    },
    /// A kubeconfig context whose name cannot name a member cluster.
    #[error(
        "naming a member cluster after its kubeconfig context; use --cluster NAME=CONTEXT: {0}"
    )]
    ContextName(#[source] Box<ArgsError>),
    /// No member cluster at all.
    #[error("no member clusters: give --cluster, --clusters-file, or a kubeconfig with contexts")]
    NoClusters,
    /// Two member clusters with one name.
    #[error("cluster {0:?} is given twice")]
    ClusterTwice(String),
    /// `--gateway-addresses` without `=`.
    #[error("--gateway-addresses {0:?}: expected CLUSTER=RANGE, e.g. east=10.0.10.0/24")]
    GatewayAddressesForm(String),
    /// `--gateway-addresses CLUSTER=RANGE` with an invalid range.
    #[error("--gateway-addresses {value:?}: {reason}")]
    GatewayAddressesRange {
        /// The flag's value.
        value: String,
        /// What is wrong with the range.
        reason: String,
    },
    /// `--gateway-addresses` names a cluster twice.
    #[error("--gateway-addresses: cluster {0:?} is given twice")]
    GatewayAddressesTwice(String),
    /// `--gateway-addresses` without a distribution server.
    #[error(
        "--gateway-addresses needs --distribution-bind: addresses are handed out to Gateways \
         served by proxies that connect to this controller"
    )]
    GatewayAddressesWithoutBind,
    /// Only one of `--ca-cert-file` and `--ca-key-file`.
    #[error(
        "--ca-cert-file and --ca-key-file go together (the mesh CA's certificate and key, e.g. \
         tls.crt and tls.key of its Secret)"
    )]
    CaHalf,
}

/// A member cluster's client cannot be built from the kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig cannot be read (`path`: `--kubeconfig`; `None`: `$KUBECONFIG` or
    /// `~/.kube/config`).
    #[error("reading {}: {source}", match .path {
        Some(p) => format!("kubeconfig {}", p.display()),
        None => "the kubeconfig ($KUBECONFIG or ~/.kube/config)".to_string(),
    })]
    Kubeconfig {
        /// The file named by `--kubeconfig`.
        path: Option<PathBuf>,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// The cluster's context is missing or unusable.
    #[error("cluster {cluster}: loading kubeconfig context {context:?}: {source}")]
    Context {
        /// The member cluster.
        cluster: String,
        /// Its kubeconfig context.
        context: String,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// The client cannot be built from the context's config.
    #[error("cluster {cluster}: building {what}: {source}")]
    Client {
        /// The member cluster.
        cluster: String,
        /// `a client` or `the status-write client`.
        what: &'static str,
        /// Why (boxed: a kube error is large).
        #[source]
        source: Box<kube::Error>,
    },
}

/// Arguments of `meridian controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Kubeconfig holding one context per member cluster (default: the files listed in
    /// $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// A member cluster: NAME, the kubeconfig context (defaults to NAME) and the region (defaults
    /// to NAME). Repeat for every cluster. Without --cluster and --clusters-file every context of
    /// the kubeconfig is a member.
    #[arg(long = "cluster", value_name = "NAME[=CONTEXT][@REGION]")]
    pub clusters: Vec<ClusterSpec>,
    /// YAML list of member clusters:
    /// `- {name: east, context: ctx, region: us-east, zones: [a, b], network: net-a}`.
    #[arg(long, value_name = "FILE", conflicts_with = "clusters")]
    pub clusters_file: Option<PathBuf>,
    /// The network of a member cluster (repeat per cluster; overrides the clusters file).
    /// Clusters on one network reach each other's pod IPs directly; a cluster on another
    /// network is reached through the east-west listeners of its Meridian proxies. Clusters
    /// not named share the default network "".
    #[arg(long = "network", value_name = "CLUSTER=NETWORK")]
    pub networks: Vec<NetworkSpec>,
    /// GatewayClasses with this spec.controllerName are reconciled.
    #[arg(long, default_value = CONTROLLER_NAME)]
    pub controller_name: String,
    /// Address of the snapshot distribution server proxies connect to (`meridian controller`
    /// starts it; Gateways are then Programmed only once their proxies acknowledge).
    #[arg(long, value_name = "ADDR")]
    pub distribution_bind: Option<SocketAddr>,
    /// Without a distribution server: report every Gateway as served on these addresses and as
    /// programmed as soon as its snapshot is computed (for demos and tests; nothing is served).
    #[arg(long = "static-address", value_name = "IP")]
    pub static_addresses: Vec<IpAddr>,
    /// Admin listener with /healthz, /readyz and /metrics, and the read-only JSON of `meridian
    /// status` / `meridian explain` under /v1/.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// File holding the bearer token /v1/ requests of the admin listener must carry (e.g. a
    /// mounted Secret; trimmed, not empty). Without it /v1/ answers only on a loopback
    /// listener.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How long the endpoints of an unreachable member cluster keep being served (Gateway API
    /// duration, e.g. 5m). After that they are withdrawn until the cluster is back.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub endpoint_grace: Duration,
    /// Quiet time collected after a watch event before translating.
    #[arg(long, default_value = "30ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// The mesh CA's certificate (PEM): it issues the distribution server's certificate and
    /// the proxies'. Without `--ca-cert-file`/`--ca-key-file` the CA is kept in the
    /// `--ca-secret` Secret of the first member cluster (created there when absent).
    #[arg(long, value_name = "PATH", requires = "ca_key_file")]
    pub ca_cert_file: Option<PathBuf>,
    /// The mesh CA's private key (PEM).
    #[arg(long, value_name = "PATH", requires = "ca_cert_file")]
    pub ca_key_file: Option<PathBuf>,
    /// An extra name (DNS name or IP) of the distribution server's certificate, the one proxies
    /// reach it by (e.g. the controller Service's DNS name); repeatable. The bound IP,
    /// `localhost` and 127.0.0.1 are always included.
    #[arg(long = "distribution-name", value_name = "DNS")]
    pub distribution_names: Vec<String>,
    /// Keep loopback EndpointSlice addresses as backend endpoints (local runs whose backends
    /// listen on 127.0.0.0/8). Without it they are left out, like link-local, unspecified and
    /// multicast ones, and each HTTPRoute using them names them in its
    /// `meridian.dev/EndpointsRefused` condition.
    #[arg(long)]
    pub allow_loopback_endpoints: bool,
    /// Give every Gateway of CLUSTER its own address from RANGE (`A.B.C.D-A.B.C.E` or
    /// `A.B.C.D/N`) instead of the proxies' advertised address; repeat per cluster. The
    /// proxies bind the Gateway's address, so it must be routed to them.
    #[arg(long = "gateway-addresses", value_name = "CLUSTER=RANGE")]
    pub gateway_addresses: Vec<String>,
    /// After a start, how long a cluster whose proxies have not reconnected yet keeps the
    /// Programmed condition and addresses its Gateways' status has (instead of reporting an
    /// outage that is only the proxies reconnecting). Default: the proxies' longest reconnect
    /// delay plus a margin; 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub proxy_reconnect_grace: Duration,
    /// Run as one of several replicas: only the holder of the Lease `meridian-controller`
    /// writes status; every replica keeps its watches warm for a quick takeover.
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease, kept in the first --cluster (default:
    /// $POD_NAMESPACE, else the pod's own namespace, else meridian-system).
    #[arg(long, value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// How long a Lease not renewed keeps the other replicas waiting.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps leading without renewing the Lease (less than the lease
    /// duration, so it steps down before anyone else may take over).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// Time between two attempts to acquire or renew the Lease.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
    /// Namespace of the member-cluster Secrets (`meridian cluster add`; default:
    /// $POD_NAMESPACE, else the pod's own namespace, else meridian-system).
    #[arg(long, value_name = "NAMESPACE")]
    pub cluster_secrets_namespace: Option<String>,
    /// Longest `spec.duration` of a FailoverDrill (Gateway API duration, 1s to 1h); a drill
    /// asking for more is refused with `Accepted=False/Invalid`.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_drill_max_duration)]
    pub drill_max_duration: Duration,
    /// How many FailoverDrills may run at once (one per namespace, scopes disjoint); the others
    /// wait `Pending`.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_drills: u16,
    /// Status writes in flight at once per member cluster (1 to 256), each of a different
    /// object; a status that changes again before its write is merged into it.
    #[arg(long, value_name = "N", default_value_t = crate::writer::DEFAULT_CONCURRENCY,
        value_parser = clap::value_parser!(u16).range(1..=256))]
    pub status_write_concurrency: u16,
    /// Mesh identity: the CA Secret, the trust domain, the proxies' ServiceAccounts.
    #[command(flatten)]
    pub mesh: crate::mesh::MeshArgs,
}

/// `--drill-max-duration`: a Gateway API duration from 1s to the CRD's 1h.
fn parse_drill_max_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    let max = meridian_crds::meridian::drill::MAX_DURATION;
    if d < Duration::from_secs(1) || d > max {
        return Err(format!("{s} is not between 1s and 1h"));
    }
    Ok(d)
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    Ok(Duration::from_millis(parse_duration_ms(s)?.unwrap_or(0)))
}

/// One member cluster as configured.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Name used in snapshots, endpoint tags and logs.
    pub name: String,
    /// Kubeconfig context (defaults to `name`).
    #[serde(default)]
    pub context: Option<String>,
    /// Region (defaults to `name`).
    #[serde(default)]
    pub region: Option<String>,
    /// Zones of the cluster.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Network of the cluster's pod IPs (defaults to `""`, the network every cluster shares
    /// unless told otherwise).
    #[serde(default)]
    pub network: Option<String>,
}

impl ClusterSpec {
    /// The kubeconfig context to use.
    pub fn context(&self) -> &str {
        self.context.as_deref().unwrap_or(&self.name)
    }

    /// The region, defaulting to the cluster name.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(&self.name)
    }

    /// The network, defaulting to `""`.
    pub fn network(&self) -> &str {
        self.network.as_deref().unwrap_or("")
    }
}

/// `--network CLUSTER=NETWORK`: the network of one member cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The member cluster's name.
    pub cluster: String,
    /// Its network.
    pub network: String,
}

/// Network names show up in logs and docs only, but keep them to one plain token.
pub(crate) fn check_network(network: &str) -> Result<(), ArgsError> {
    let ok = !network.is_empty()
        && network.len() <= 63
        && network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ArgsError::NetworkName(network.to_string()))
    }
}

impl FromStr for NetworkSpec {
    type Err = ArgsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((cluster, network)) = s.split_once('=') else {
            return Err(ArgsError::NetworkFlagForm(s.to_string()));
        };
        check_name(cluster)?;
        check_network(network).map_err(|e| ArgsError::NetworkFlag {
            value: s.to_string(),
            source: Box::new(e),
        })?;
        Ok(NetworkSpec {
            cluster: cluster.to_string(),
            network: network.to_string(),
        })
    }
}

/// Sets the network of each named cluster; a cluster that is not a member, or is named twice,
/// is an error.
pub fn apply_networks(
    specs: &mut [ClusterSpec],
    networks: &[NetworkSpec],
) -> Result<(), ArgsError> {
    for (i, n) in networks.iter().enumerate() {
        if networks[..i].iter().any(|o| o.cluster == n.cluster) {
            return Err(ArgsError::NetworkTwice(n.cluster.clone()));
        }
        let members: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let Some(spec) = specs.iter_mut().find(|s| s.name == n.cluster) else {
            return Err(ArgsError::NetworkNotAMember {
                cluster: n.cluster.clone(),
                network: n.network.clone(),
                members,
            });
        };
        spec.network = Some(n.network.clone());
    }
    Ok(())
}

/// Cluster names end up in metrics labels, snapshot fields and logs: keep them DNS-label-like.
pub(crate) fn check_name(name: &str) -> Result<(), ArgsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ArgsError::ClusterName(name.to_string()))
    }
}

impl FromStr for ClusterSpec {
    type Err = ArgsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let empty = |part, sep| ArgsError::ClusterFlag {
            value: s.to_string(),
            part,
            sep,
        };
        let (rest, region) = match s.rsplit_once('@') {
            Some((rest, region)) if !region.is_empty() => (rest, Some(region.to_string())),
            Some(_) => return Err(empty("region", '@')),
            None => (s, None),
        };
        let (name, context) = match rest.split_once('=') {
            Some((name, context)) if !context.is_empty() => (name, Some(context.to_string())),
            Some(_) => return Err(empty("context", '=')),
            None => (rest, None),
        };
        check_name(name)?;
        Ok(ClusterSpec {
            name: name.to_string(),
            context,
            region,
            zones: Vec::new(),
            network: None,
        })
    }
}

/// Reads a clusters file (a YAML list of [`ClusterSpec`]).
pub fn read_clusters_file(path: &Path) -> Result<Vec<ClusterSpec>, ArgsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ArgsError::ClustersFileRead {
        path: path.to_path_buf(),
        source,
    })?;
    let specs: Vec<ClusterSpec> =
        serde_yaml::from_str(&text).map_err(|source| ArgsError::ClustersFileParse {
            path: path.to_path_buf(),
            source,
        })?;
    let entry = |cluster: Option<&str>, e: ArgsError| ArgsError::ClustersFileEntry {
        path: path.to_path_buf(),
        cluster: cluster.map(str::to_string),
        source: Box::new(e),
    };
    for s in &specs {
        check_name(&s.name).map_err(|e| entry(None, e))?;
        if let Some(n) = &s.network {
            check_network(n).map_err(|e| entry(Some(&s.name), e))?;
        }
    }
    Ok(specs)
}

/// Rejects an empty list and duplicate names.
pub fn check_unique(specs: &[ClusterSpec]) -> Result<(), ArgsError> {
    check_unique_names(specs.iter().map(|s| s.name.as_str()))
}

/// Rejects an empty list and duplicate names.
pub(crate) fn check_unique_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ArgsError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(ArgsError::ClusterTwice(name.to_string()));
        }
    }
    if seen.is_empty() {
        return Err(ArgsError::NoClusters);
    }
    Ok(())
}

impl ControllerArgs {
    /// Loads the kubeconfig these arguments name.
    pub fn load_kubeconfig(&self) -> Result<Kubeconfig, ConnectError> {
        match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
        .map_err(|source| ConnectError::Kubeconfig {
            path: self.kubeconfig.clone(),
            source,
        })
    }

    /// The member clusters: from --cluster, from --clusters-file, or every context of
    /// `kubeconfig`; with the networks of --network applied.
    pub fn cluster_specs(&self, kubeconfig: &Kubeconfig) -> Result<Vec<ClusterSpec>, ArgsError> {
        let mut specs = if let Some(path) = &self.clusters_file {
            read_clusters_file(path)?
        } else if !self.clusters.is_empty() {
            self.clusters.clone()
        } else {
            let mut specs = Vec::new();
            for c in &kubeconfig.contexts {
                check_name(&c.name).map_err(|e| ArgsError::ContextName(Box::new(e)))?;
                specs.push(ClusterSpec {
                    name: c.name.clone(),
                    context: None,
                    region: None,
                    zones: Vec::new(),
                    network: None,
                });
            }
            specs
        };
        check_unique(&specs)?;
        apply_networks(&mut specs, &self.networks)?;
        Ok(specs)
    }
}

/// `--gateway-addresses CLUSTER=RANGE` values, checked before anything starts.
fn address_pools(values: &[String]) -> Result<AddressPools, ArgsError> {
    Ok(AddressPools::new(gateway_address_ranges(values)?))
}

/// The ranges of `--gateway-addresses CLUSTER=RANGE` values, checked.
pub(crate) fn gateway_address_ranges(
    values: &[String],
) -> Result<Vec<(String, AddressRange)>, ArgsError> {
    let mut pools = Vec::new();
    for v in values {
        let Some((cluster, range)) = v.split_once('=') else {
            return Err(ArgsError::GatewayAddressesForm(v.clone()));
        };
        let range: AddressRange =
            range
                .parse()
                .map_err(|reason| ArgsError::GatewayAddressesRange {
                    value: v.clone(),
                    reason,
                })?;
        if pools.iter().any(|(c, _)| c == cluster) {
            return Err(ArgsError::GatewayAddressesTwice(cluster.to_string()));
        }
        pools.push((cluster.to_string(), range));
    }
    Ok(pools)
}

impl ControllerArgs {
    /// Checks the flags that go with `--distribution-bind` (address pools only with a
    /// distribution server; the CA files together) and returns the `--gateway-addresses` pools.
    pub fn distribution_flags(&self) -> Result<AddressPools, ArgsError> {
        let pools = address_pools(&self.gateway_addresses)?;
        if self.distribution_bind.is_none() && !pools.is_empty() {
            return Err(ArgsError::GatewayAddressesWithoutBind);
        }
        if self.ca_cert_file.is_some() != self.ca_key_file.is_some() {
            return Err(ArgsError::CaHalf);
        }
        Ok(pools)
    }

    /// Where the mesh CA comes from: `--ca-cert-file`/`--ca-key-file` when given, else `None`
    /// (the `--ca-secret` Secret of the controller's own cluster, read or created by
    /// [`crate::mesh::prepare`]).
    pub fn ca_source(&self) -> Option<crate::mesh::CaSource> {
        match (&self.ca_cert_file, &self.ca_key_file) {
            (Some(cert), Some(key)) => Some(crate::mesh::CaSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// The distribution server's identity settings: the mesh CA, the bootstrap verifier and
    /// the address policy of `mesh` ([`crate::mesh::prepare`]), plus the `--distribution-name`s
    /// as extra names of the server's certificate.
    pub fn distribution_tls(
        &self,
        mesh: &crate::mesh::Mesh,
    ) -> crate::distributed::DistributionTls {
        let (ca, verifier, addresses) = mesh.parts();
        let mut tls = crate::distributed::DistributionTls::new(ca);
        tls.bootstrap = Some(verifier);
        tls.addresses = addresses;
        for name in &self.distribution_names {
            match name.parse::<IpAddr>() {
                Ok(ip) => tls.server_names.ips.push(ip),
                Err(_) => tls.server_names.dns.push(name.clone()),
            }
        }
        tls
    }
}

impl ControllerArgs {
    /// The leader-election settings of `--leader-elect` (`None` without it), checked; the
    /// identity is `$POD_NAME`, else `HOSTNAME-PID`.
    pub fn election_config(
        &self,
    ) -> Result<Option<crate::leader::ElectionConfig>, crate::leader::ElectionError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let namespace =
            crate::members::own_namespace_from_env(self.leader_election_namespace.as_deref());
        let mut cfg =
            crate::leader::ElectionConfig::new(namespace, crate::leader::default_identity());
        cfg.lease_duration = self.leader_election_lease_duration;
        cfg.renew_deadline = self.leader_election_renew_deadline;
        cfg.retry_period = self.leader_election_retry_period;
        cfg.check()?;
        Ok(Some(cfg))
    }
}

/// A kube client for one member cluster, from its kubeconfig context.
pub async fn connect(
    kubeconfig: &Kubeconfig,
    spec: &ClusterSpec,
) -> Result<kube::Client, ConnectError> {
    let config = cluster_config(kubeconfig, spec).await?;
    client(spec, "a client", config)
}

/// A client from a member cluster's config (`what` names it in the error).
pub(crate) fn client(
    spec: &ClusterSpec,
    what: &'static str,
    config: kube::Config,
) -> Result<kube::Client, ConnectError> {
    kube::Client::try_from(config).map_err(|source| ConnectError::Client {
        cluster: spec.name.clone(),
        what,
        source: Box::new(source),
    })
}

/// The client config of a member cluster from its kubeconfig context.
pub async fn cluster_config(
    kubeconfig: &Kubeconfig,
    spec: &ClusterSpec,
) -> Result<kube::Config, ConnectError> {
    let options = KubeConfigOptions {
        context: Some(spec.context().to_string()),
        ..KubeConfigOptions::default()
    };
    kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|source| ConnectError::Context {
            cluster: spec.name.clone(),
            context: spec.context().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn cluster_flag_forms() {
        let s: ClusterSpec = "east".parse().unwrap();
        assert_eq!((s.context(), s.region()), ("east", "east"));
        let s: ClusterSpec = "east=kind-east@us-east-1".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.context(), s.region()),
            ("east", "kind-east", "us-east-1")
        );
        let s: ClusterSpec = "west@eu".parse().unwrap();
        assert_eq!((s.context(), s.region()), ("west", "eu"));
        for bad in ["", "East", "a=", "a@", "-a", "a b=c", "=ctx"] {
            assert!(bad.parse::<ClusterSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_flags_and_rejects_conflicts() {
        let cli = Cli::try_parse_from([
            "x",
            "--cluster",
            "east@us",
            "--cluster",
            "west",
            "--metrics",
            "127.0.0.1:0",
            "--endpoint-grace",
            "30s",
        ])
        .unwrap();
        assert_eq!(cli.args.clusters.len(), 2);
        assert_eq!(cli.args.endpoint_grace, Duration::from_secs(30));
        assert_eq!(cli.args.controller_name, CONTROLLER_NAME);
        assert!(Cli::try_parse_from(["x", "--cluster", "a", "--clusters-file", "f"]).is_err());
        assert!(Cli::try_parse_from(["x", "--endpoint-grace", "soon"]).is_err());
        assert!(Cli::try_parse_from(["x", "--cluster", "Bad"]).is_err());
    }

    #[test]
    fn drill_limits_have_defaults_and_bounds() {
        let cli = Cli::try_parse_from(["x", "--cluster", "east"]).unwrap();
        assert_eq!(cli.args.drill_max_duration, Duration::from_secs(15 * 60));
        assert_eq!(cli.args.max_concurrent_drills, 4);
        assert_eq!(
            cli.args.status_write_concurrency,
            crate::writer::DEFAULT_CONCURRENCY
        );
        let cli = Cli::try_parse_from([
            "x",
            "--drill-max-duration",
            "1h",
            "--max-concurrent-drills",
            "1",
            "--status-write-concurrency",
            "32",
        ])
        .unwrap();
        assert_eq!(cli.args.status_write_concurrency, 32);
        assert_eq!(cli.args.drill_max_duration, Duration::from_secs(3600));
        assert_eq!(cli.args.max_concurrent_drills, 1);
        for bad in [
            ["--drill-max-duration", "2h"],
            ["--drill-max-duration", "500ms"],
            ["--drill-max-duration", "soon"],
            ["--max-concurrent-drills", "0"],
            ["--status-write-concurrency", "0"],
            ["--status-write-concurrency", "257"],
        ] {
            let Err(err) = Cli::try_parse_from(["x", bad[0], bad[1]]) else {
                panic!("{bad:?} accepted");
            };
            assert!(err.to_string().contains(bad[0]), "{err}");
        }
        let Err(err) = Cli::try_parse_from(["x", "--drill-max-duration", "2h"]) else {
            panic!("2h accepted");
        };
        assert!(err.to_string().contains("not between 1s and 1h"), "{err}");
    }

    #[test]
    fn leader_election_flags() {
        let cli = Cli::try_parse_from(["x", "--cluster", "east"]).unwrap();
        assert!(cli.args.election_config().unwrap().is_none());
        let cli = Cli::try_parse_from([
            "x",
            "--cluster",
            "east",
            "--leader-elect",
            "--leader-election-namespace",
            "ha",
            "--cluster-secrets-namespace",
            "members",
        ])
        .unwrap();
        let cfg = cli.args.election_config().unwrap().unwrap();
        assert_eq!(cfg.namespace, "ha");
        assert_eq!(cfg.lease_name, "meridian-controller");
        assert_eq!(
            (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert_eq!(
            cli.args.cluster_secrets_namespace.as_deref(),
            Some("members")
        );
        let cli = Cli::try_parse_from([
            "x",
            "--leader-elect",
            "--leader-election-renew-deadline",
            "20s",
        ])
        .unwrap();
        let err = cli.args.election_config().unwrap_err().to_string();
        assert!(
            err.contains("renew deadline (20s) < lease duration (15s)"),
            "{err}"
        );
    }

    #[test]
    fn network_flags() {
        let n: NetworkSpec = "east=net-a".parse().unwrap();
        assert_eq!((n.cluster.as_str(), n.network.as_str()), ("east", "net-a"));
        for bad in ["east", "east=", "=net", "East=a", "east=a b", "east=a/b"] {
            assert!(bad.parse::<NetworkSpec>().is_err(), "{bad:?} accepted");
        }
        let cli = Cli::try_parse_from([
            "x",
            "--cluster",
            "east@us",
            "--cluster",
            "west",
            "--network",
            "west=b",
        ])
        .unwrap();
        let kubeconfig = Kubeconfig::default();
        let specs = cli.args.cluster_specs(&kubeconfig).unwrap();
        assert_eq!(specs[0].network(), "");
        assert_eq!(specs[1].network(), "b");

        // A cluster that is not a member, or named twice: a clear error.
        let cli = Cli::try_parse_from(["x", "--cluster", "east", "--network", "wset=b"]).unwrap();
        let err = cli.args.cluster_specs(&kubeconfig).unwrap_err().to_string();
        assert!(
            err.contains("no member cluster is named \"wset\"") && err.contains("members: east"),
            "{err}"
        );
        let twice = [
            "x",
            "--cluster",
            "east",
            "--network",
            "east=a",
            "--network",
            "east=b",
        ];
        let cli = Cli::try_parse_from(twice).unwrap();
        let err = cli.args.cluster_specs(&kubeconfig).unwrap_err().to_string();
        assert!(err.contains("given twice"), "{err}");
        assert!(Cli::try_parse_from(["x", "--network", "east"]).is_err());
    }

    /// The flags that go with the distribution server, with the message each mistake gets.
    #[test]
    fn distribution_flags() {
        let check = |extra: &[&str]| {
            let argv = ["x", "--cluster", "east"].iter().chain(extra);
            Cli::try_parse_from(argv)
                .unwrap()
                .args
                .distribution_flags()
                .map_err(|e| e.to_string())
        };
        let bind = ["--distribution-bind", "127.0.0.1:0"];
        assert!(check(&bind).is_ok());
        assert!(check(&[]).is_ok());
        // The CA files go together.
        let half = Cli::try_parse_from(["x", "--cluster", "east", "--ca-cert-file", "ca.crt"]);
        assert!(half.is_err());

        let pools =
            check(&[&bind[..], &["--gateway-addresses", "east=10.0.10.0/24"]].concat()).unwrap();
        assert!(pools.has_pool("east") && !pools.has_pool("west"));
        let err = check(&["--gateway-addresses", "east=10.0.10.0/24"]).unwrap_err();
        assert!(
            err.contains("--gateway-addresses needs --distribution-bind"),
            "{err}"
        );
        let err = check(&["--gateway-addresses", "east"]).unwrap_err();
        assert!(err.contains("expected CLUSTER=RANGE"), "{err}");
        let err = check(&["--gateway-addresses", "east=10.0.10.9-10.0.10.1"]).unwrap_err();
        assert!(
            err.starts_with("--gateway-addresses \"east=10.0.10.9-10.0.10.1\": ")
                && err.contains("empty"),
            "{err}"
        );
        let twice = [
            "--gateway-addresses",
            "east=10.0.10.0/24",
            "--gateway-addresses",
            "east=10.0.11.0/24",
        ];
        let err = check(&twice).unwrap_err();
        assert!(err.contains("cluster \"east\" is given twice"), "{err}");
    }

    #[test]
    fn clusters_file_and_duplicates() {
        let dir = std::env::temp_dir().join(format!("meridian-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("clusters.yaml");
        std::fs::write(
            &f,
            "- {name: east, context: ctx-e, region: us-east, zones: [a, b]}\n- name: west\n",
        )
        .unwrap();
        let specs = read_clusters_file(&f).unwrap();
        assert_eq!(specs[0].zones, vec!["a", "b"]);
        assert_eq!(specs[1].region(), "west");
        check_unique(&specs).unwrap();
        assert!(check_unique(&[specs[0].clone(), specs[0].clone()]).is_err());
        assert!(check_unique(&[]).is_err());
        // Networks from the file; --network overrides them.
        std::fs::write(
            &f,
            "- {name: east, network: a}\n- {name: west, network: b}\n- {name: north}\n",
        )
        .unwrap();
        let mut specs = read_clusters_file(&f).unwrap();
        let nets: Vec<&str> = specs.iter().map(ClusterSpec::network).collect();
        assert_eq!(nets, ["a", "b", ""]);
        apply_networks(&mut specs, &["west=a".parse().unwrap()]).unwrap();
        assert_eq!(specs[1].network(), "a");
        std::fs::write(&f, "- {name: east, network: 'a b'}\n").unwrap();
        let err = read_clusters_file(&f).unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid network name"),
            "{err:#}"
        );
        std::fs::write(&f, "- {name: east, colour: blue}\n").unwrap();
        let err = read_clusters_file(&f).unwrap_err();
        assert!(format!("{err:#}").contains("colour"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
