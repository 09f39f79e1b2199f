//! What `meridian drill` asks the Kubernetes API: the kubeconfig context, the Gateway to load,
//! and the FailoverDrill it creates and watches.
//!
//! Every failure here is a user-facing message that says what is wrong and how to fix it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use meridian_crds::meridian::FailoverDrill;

/// Annotation that makes the proxies add `x-meridian-served-by`.
pub const SERVED_BY_ANNOTATION: &str = "meridian.dev/served-by-header";

/// What went wrong talking to the Kubernetes API; each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig file is missing.
    #[error(
        "kubeconfig {} does not exist: run `meridian up` first (it writes .meridian/kubeconfig) \
         or pass --kubeconfig FILE",
        path.display()
    )]
    NoKubeconfig {
        /// The path given.
        path: PathBuf,
    },
    /// The kubeconfig file could not be read or parsed.
    #[error("reading kubeconfig {}", path.display())]
    ReadKubeconfig {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// The kubeconfig names no context.
    #[error("kubeconfig {} has no contexts", path.display())]
    NoContexts {
        /// The path given.
        path: PathBuf,
    },
    /// `--context` names a context the kubeconfig does not have.
    #[error(
        "context {context:?} is not in the kubeconfig; its contexts are: {}",
        known.join(", ")
    )]
    UnknownContext {
        /// The context asked for.
        context: String,
        /// The kubeconfig's contexts.
        known: Vec<String>,
    },
    /// A kubeconfig without contexts was given to [`connect`].
    #[error("the kubeconfig has no contexts")]
    EmptyKubeconfig,
    /// The context's settings do not make a client configuration.
    #[error("kubeconfig context {context}")]
    Context {
        /// The context.
        context: String,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// The client could not be built.
    #[error("building a client for context {context}")]
    Client {
        /// The context.
        context: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing Gateways failed.
    #[error(
        "listing Gateways in context {context} (is the cluster up? `meridian up` starts one \
         locally)"
    )]
    ListGateways {
        /// The context.
        context: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing HTTPRoutes failed.
    #[error("listing HTTPRoutes in context {context}")]
    ListRoutes {
        /// The context.
        context: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Gateway asked for is not there.
    #[error(
        "Gateway {namespace}/{name} not found in context {context}; Gateways there: {}",
        list_or_none(known)
    )]
    GatewayNotFound {
        /// Namespace asked for.
        namespace: String,
        /// Name asked for.
        name: String,
        /// The context.
        context: String,
        /// Gateways in the context (`namespace/name`).
        known: Vec<String>,
    },
    /// No Gateway at all.
    #[error(
        "no Gateway in context {context}: apply one (e.g. `kubectl apply -f examples/demo/`) or \
         run `meridian up`"
    )]
    NoGateway {
        /// The context.
        context: String,
    },
    /// Several Gateways and none in namespace `demo`.
    #[error(
        "several Gateways in context {context} and none in namespace demo: pass --gateway \
         NAMESPACE/NAME (one of {})",
        known.join(", ")
    )]
    SeveralGateways {
        /// The context.
        context: String,
        /// Gateways in the context (`namespace/name`).
        known: Vec<String>,
    },
    /// The Gateway has no status address yet.
    #[error(
        "Gateway {namespace}/{name} has no address in its status yet (is it Programmed? see \
         `kubectl --context {context} get gateway -n {namespace} {name}`), or pass --url"
    )]
    NoAddress {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The context.
        context: String,
    },
    /// The Gateway has no HTTP listener.
    #[error("Gateway {gateway} has no HTTP listener; pass --url")]
    NoHttpListener {
        /// `namespace/name`.
        gateway: String,
    },
    /// The HTTP listener's port is not a TCP port.
    #[error("Gateway {gateway}: port {port}")]
    Port {
        /// `namespace/name`.
        gateway: String,
        /// The port in the spec.
        port: i32,
    },
    /// The FailoverDrill CRD is missing.
    #[error(
        "the FailoverDrill CRD is not installed in context {context} ({message}): restart \
         `meridian up` (it installs Meridian's CRDs) or run `meridian crds | kubectl apply -f -`"
    )]
    NoDrillCrd {
        /// The context.
        context: String,
        /// The API server's message.
        message: String,
    },
    /// Creating the FailoverDrill failed.
    #[error("creating the FailoverDrill in {namespace}")]
    Create {
        /// Namespace.
        namespace: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// Reading the FailoverDrill failed.
    #[error("reading FailoverDrill {namespace}/{name}")]
    Get {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// Deleting the FailoverDrill failed.
    #[error("deleting FailoverDrill {namespace}/{name}")]
    Delete {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
}

fn list_or_none(known: &[String]) -> String {
    if known.is_empty() {
        "none".into()
    } else {
        known.join(", ")
    }
}

/// A client for one context of a kubeconfig.
pub struct Cluster {
    /// Context name.
    pub context: String,
    /// Client.
    pub client: kube::Client,
}

/// Reads the kubeconfig and names its contexts (in file order).
pub fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ClusterError> {
    if !path.exists() {
        return Err(ClusterError::NoKubeconfig {
            path: path.to_path_buf(),
        });
    }
    let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::ReadKubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    if kc.contexts.is_empty() {
        return Err(ClusterError::NoContexts {
            path: path.to_path_buf(),
        });
    }
    Ok(kc)
}

/// Context names in file order.
pub fn contexts(kc: &Kubeconfig) -> Vec<String> {
    kc.contexts.iter().map(|c| c.name.clone()).collect()
}

/// A client for `context` (default: the first context in the file).
pub async fn connect(kc: &Kubeconfig, context: Option<&str>) -> Result<Cluster, ClusterError> {
    let names = contexts(kc);
    let context = match context {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ClusterError::UnknownContext {
                context: c.to_string(),
                known: names,
            });
        }
        None => names
            .first()
            .cloned()
            .ok_or(ClusterError::EmptyKubeconfig)?,
    };
    let opts = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc.clone(), &opts)
        .await
        .map_err(|source| ClusterError::Context {
            context: context.clone(),
            source,
        })?;
    let client = kube::Client::try_from(config).map_err(|source| ClusterError::Client {
        context: context.clone(),
        source: Box::new(source),
    })?;
    Ok(Cluster { context, client })
}

/// Test fixtures other modules' tests share.
#[cfg(test)]
pub(crate) mod tests {
    use super::GatewayTarget;

    /// `demo/web` as `meridian up` serves it in us-east.
    pub(crate) fn demo_gateway() -> GatewayTarget {
        GatewayTarget {
            namespace: "demo".into(),
            name: "web".into(),
            address: "127.0.10.1".into(),
            port: 80,
            hostname: None,
            served_by_header: true,
        }
    }
}

/// The Gateway the drill loads, and where to reach it.
#[derive(Clone, Debug)]
pub struct GatewayTarget {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// First status address.
    pub address: String,
    /// Port of the first HTTP listener.
    pub port: u16,
    /// First hostname of an HTTPRoute attached to it, if any.
    pub hostname: Option<String>,
    /// Whether the Gateway asks proxies for the served-by header.
    pub served_by_header: bool,
}

impl GatewayTarget {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Finds the Gateway: the one named, else the only one, else the first in namespace `demo`;
/// then where to reach it and the hostname to ask for.
pub async fn find_gateway(
    cluster: &Cluster,
    wanted: Option<&(String, String)>,
) -> Result<GatewayTarget, ClusterError> {
    let api: Api<Gateway> = Api::all(cluster.client.clone());
    let mut gws = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ClusterError::ListGateways {
            context: cluster.context.clone(),
            source: Box::new(source),
        })?
        .items;
    gws.sort_by_key(|g| (g.metadata.namespace.clone(), g.metadata.name.clone()));
    let gw = pick_gateway(&gws, wanted, &cluster.context)?;
    let mut target = reach(gw, &cluster.context)?;
    target.hostname = route_hostname(cluster, &target.namespace, &target.name).await?;
    Ok(target)
}

/// `namespace/name` of a Gateway.
fn gateway_key(g: &Gateway) -> String {
    format!(
        "{}/{}",
        g.metadata.namespace.as_deref().unwrap_or_default(),
        g.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The Gateway to load among `gws` (sorted by namespace/name): the one named, else the only
/// one, else the first in namespace `demo`.
fn pick_gateway<'a>(
    gws: &'a [Gateway],
    wanted: Option<&(String, String)>,
    context: &str,
) -> Result<&'a Gateway, ClusterError> {
    let known = || gws.iter().map(gateway_key).collect::<Vec<_>>();
    if let Some((ns, name)) = wanted {
        return gws
            .iter()
            .find(|g| {
                g.metadata.namespace.as_deref() == Some(ns.as_str())
                    && g.metadata.name.as_deref() == Some(name.as_str())
            })
            .ok_or_else(|| ClusterError::GatewayNotFound {
                namespace: ns.clone(),
                name: name.clone(),
                context: context.to_string(),
                known: known(),
            });
    }
    match gws {
        [] => Err(ClusterError::NoGateway {
            context: context.to_string(),
        }),
        [only] => Ok(only),
        several => several
            .iter()
            .find(|g| g.metadata.namespace.as_deref() == Some("demo"))
            .ok_or_else(|| ClusterError::SeveralGateways {
                context: context.to_string(),
                known: known(),
            }),
    }
}

/// Where to reach a Gateway: its first status address and first HTTP listener's port, and
/// whether it asks for the served-by header (the hostname is filled in later).
fn reach(gw: &Gateway, context: &str) -> Result<GatewayTarget, ClusterError> {
    let gateway = gateway_key(gw);
    let namespace = gw.metadata.namespace.clone().unwrap_or_default();
    let name = gw.metadata.name.clone().unwrap_or_default();
    let address = gw
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.first())
        .map(|a| a.value.clone())
        .ok_or_else(|| ClusterError::NoAddress {
            namespace: namespace.clone(),
            name: name.clone(),
            context: context.to_string(),
        })?;
    let port = gw
        .spec
        .listeners
        .iter()
        .find(|l| l.protocol == "HTTP")
        .map(|l| l.port)
        .ok_or_else(|| ClusterError::NoHttpListener {
            gateway: gateway.clone(),
        })?;
    let port = u16::try_from(port).map_err(|_| ClusterError::Port { gateway, port })?;
    let served_by_header = gw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVED_BY_ANNOTATION))
        .is_some_and(|v| v == "true");
    Ok(GatewayTarget {
        namespace,
        name,
        address,
        port,
        hostname: None,
        served_by_header,
    })
}

/// First hostname of the first HTTPRoute (by namespace/name) attached to the Gateway; a wildcard
/// hostname gets a concrete first label.
async fn route_hostname(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Result<Option<String>, ClusterError> {
    let api: Api<HttpRoute> = Api::all(cluster.client.clone());
    let mut routes = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ClusterError::ListRoutes {
            context: cluster.context.clone(),
            source: Box::new(source),
        })?
        .items;
    routes.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    for r in routes {
        let rns = r.metadata.namespace.as_deref().unwrap_or("default");
        let attached = r.spec.parent_refs.iter().flatten().any(|p| {
            p.name == name
                && p.namespace.as_deref().unwrap_or(rns) == ns
                && p.kind.as_deref().is_none_or(|k| k == "Gateway")
        });
        if !attached {
            continue;
        }
        if let Some(h) = r.spec.hostnames.iter().flatten().next() {
            return Ok(Some(match h.strip_prefix("*.") {
                Some(rest) => format!("drill.{rest}"),
                None => h.clone(),
            }));
        }
    }
    Ok(None)
}

/// What the CLI reads from a drill's status.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillView {
    /// Pending, Running, Succeeded, Aborted, Failed (empty until the controller sees the drill).
    pub phase: String,
    /// Status message.
    pub message: Option<String>,
    /// Why the drill was aborted.
    pub abort_reason: Option<String>,
    /// When the controller started the drill.
    pub start_time: Option<String>,
    /// When the target counted as failed.
    pub fail_time: Option<String>,
    /// When the target was restored.
    pub restore_time: Option<String>,
    /// When the drill ended.
    pub completion_time: Option<String>,
    /// Status timeline, as the controller wrote it.
    pub timeline: serde_json::Value,
    /// The controller's own figures (from the proxies' traffic counters).
    pub figures: serde_json::Value,
    /// Conditions, as written.
    pub conditions: serde_json::Value,
}

impl DrillView {
    /// Whether the drill is over.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Aborted" | "Failed")
    }
}

fn view(d: &FailoverDrill) -> DrillView {
    let Some(st) = &d.status else {
        return DrillView::default();
    };
    let json = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
    DrillView {
        phase: st.phase.map(|p| p.as_str().to_string()).unwrap_or_default(),
        message: st.message.clone(),
        abort_reason: st.abort_reason.clone(),
        start_time: st.start_time.clone(),
        fail_time: st.fail_time.clone(),
        restore_time: st.restore_time.clone(),
        completion_time: st.completion_time.clone(),
        timeline: json(serde_json::to_value(&st.timeline)),
        figures: json(serde_json::to_value(&st.figures)),
        conditions: json(serde_json::to_value(&st.conditions)),
    }
}

fn drills(cluster: &Cluster, ns: &str) -> Api<FailoverDrill> {
    Api::namespaced(cluster.client.clone(), ns)
}

/// Creates the drill; a missing CRD gets a message saying how to install it.
pub async fn create_drill(cluster: &Cluster, drill: &FailoverDrill) -> Result<(), ClusterError> {
    let ns = drill.metadata.namespace.clone().unwrap_or_default();
    match drills(cluster, &ns)
        .create(&PostParams::default(), drill)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(ClusterError::NoDrillCrd {
            context: cluster.context.clone(),
            message: e.message,
        }),
        Err(source) => Err(ClusterError::Create {
            namespace: ns,
            source: Box::new(source),
        }),
    }
}

/// Reads the drill's status.
pub async fn get_drill(cluster: &Cluster, ns: &str, name: &str) -> Result<DrillView, ClusterError> {
    let d = drills(cluster, ns)
        .get(name)
        .await
        .map_err(|source| ClusterError::Get {
            namespace: ns.to_string(),
            name: name.to_string(),
            source: Box::new(source),
        })?;
    Ok(view(&d))
}

/// Deletes the drill (the controller rolls back a running one).
pub async fn delete_drill(cluster: &Cluster, ns: &str, name: &str) -> Result<(), ClusterError> {
    drills(cluster, ns)
        .delete(name, &Default::default())
        .await
        .map_err(|source| ClusterError::Delete {
            namespace: ns.to_string(),
            name: name.to_string(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// Localities (`cluster/region/zone`) seen answering: used to tell a user which regions exist.
#[derive(Debug, Default)]
pub struct Known {
    /// Clusters.
    pub clusters: BTreeSet<String>,
    /// Regions.
    pub regions: BTreeSet<String>,
    /// Zones.
    pub zones: BTreeSet<String>,
}
