//! What `meridian drill` asks the Kubernetes API: the kubeconfig context, the Gateway to load,
//! and the FailoverDrill it creates and watches.
//!
//! Every failure here is a user-facing message that says what is wrong and how to fix it.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use meridian_crds::meridian::FailoverDrill;

/// Annotation that makes the proxies add `x-meridian-served-by`.
pub const SERVED_BY_ANNOTATION: &str = "meridian.dev/served-by-header";

/// A client for one context of a kubeconfig.
pub struct Cluster {
    /// Context name.
    pub context: String,
    /// Client.
    pub client: kube::Client,
}

/// Reads the kubeconfig and names its contexts (in file order).
pub fn read_kubeconfig(path: &Path) -> anyhow::Result<Kubeconfig> {
    if !path.exists() {
        bail!(
            "kubeconfig {} does not exist: run `meridian up` first (it writes .meridian/kubeconfig) \
             or pass --kubeconfig FILE",
            path.display()
        );
    }
    let kc = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    if kc.contexts.is_empty() {
        bail!("kubeconfig {} has no contexts", path.display());
    }
    Ok(kc)
}

/// Context names in file order.
pub fn contexts(kc: &Kubeconfig) -> Vec<String> {
    kc.contexts.iter().map(|c| c.name.clone()).collect()
}

/// A client for `context` (default: the first context in the file).
pub async fn connect(kc: &Kubeconfig, context: Option<&str>) -> anyhow::Result<Cluster> {
    let names = contexts(kc);
    let context = match context {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => bail!(
            "context {c:?} is not in the kubeconfig; its contexts are: {}",
            names.join(", ")
        ),
        None => names
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("the kubeconfig has no contexts"))?,
    };
    let opts = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc.clone(), &opts)
        .await
        .with_context(|| format!("kubeconfig context {context}"))?;
    let client = kube::Client::try_from(config)
        .with_context(|| format!("building a client for context {context}"))?;
    Ok(Cluster { context, client })
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

/// Parses `--gateway ns/name` (a bare name means namespace `default`).
pub fn parse_gateway_ref(s: &str) -> anyhow::Result<(String, String)> {
    let (ns, name) = s.split_once('/').unwrap_or(("default", s));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        bail!("--gateway {s:?}: expected NAMESPACE/NAME, e.g. demo/web");
    }
    Ok((ns.to_string(), name.to_string()))
}

/// Finds the Gateway: the one named, else the only one, else the first in namespace `demo`.
pub async fn find_gateway(
    cluster: &Cluster,
    wanted: Option<&(String, String)>,
) -> anyhow::Result<GatewayTarget> {
    let api: Api<Gateway> = Api::all(cluster.client.clone());
    let list = api.list(&ListParams::default()).await.with_context(|| {
        format!(
            "listing Gateways in context {} (is the cluster up? `meridian up` starts one locally)",
            cluster.context
        )
    })?;
    let mut gws: Vec<Gateway> = list.items;
    gws.sort_by_key(|g| (g.metadata.namespace.clone(), g.metadata.name.clone()));
    let key = |g: &Gateway| {
        format!(
            "{}/{}",
            g.metadata.namespace.as_deref().unwrap_or_default(),
            g.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let known = || gws.iter().map(key).collect::<Vec<_>>().join(", ");
    let gw = match wanted {
        Some((ns, name)) => gws
            .iter()
            .find(|g| {
                g.metadata.namespace.as_deref() == Some(ns.as_str())
                    && g.metadata.name.as_deref() == Some(name.as_str())
            })
            .ok_or_else(|| {
                anyhow!(
                    "Gateway {ns}/{name} not found in context {}; Gateways there: {}",
                    cluster.context,
                    if gws.is_empty() {
                        "none".into()
                    } else {
                        known()
                    }
                )
            })?,
        None => match gws.as_slice() {
            [] => bail!(
                "no Gateway in context {}: apply one (e.g. `kubectl apply -f examples/demo/`) or \
                 run `meridian up`",
                cluster.context
            ),
            [only] => only,
            several => several
                .iter()
                .find(|g| g.metadata.namespace.as_deref() == Some("demo"))
                .ok_or_else(|| {
                    anyhow!(
                        "several Gateways in context {} and none in namespace demo: pass \
                         --gateway NAMESPACE/NAME (one of {})",
                        cluster.context,
                        known()
                    )
                })?,
        },
    };
    let gw_key = key(gw);
    let namespace = gw.metadata.namespace.clone().unwrap_or_default();
    let name = gw.metadata.name.clone().unwrap_or_default();
    let address = gw
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.first())
        .map(|a| a.value.clone())
        .ok_or_else(|| {
            anyhow!(
                "Gateway {gw_key} has no address in its status yet (is it Programmed? see \
                 `kubectl --context {} get gateway -n {namespace} {name}`), or pass --url",
                cluster.context
            )
        })?;
    let port = gw
        .spec
        .listeners
        .iter()
        .find(|l| l.protocol == "HTTP")
        .map(|l| l.port)
        .ok_or_else(|| anyhow!("Gateway {gw_key} has no HTTP listener; pass --url"))?;
    let port = u16::try_from(port).map_err(|_| anyhow!("Gateway {gw_key}: port {port}"))?;
    let served_by_header = gw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVED_BY_ANNOTATION))
        .is_some_and(|v| v == "true");
    let hostname = route_hostname(cluster, &namespace, &name).await?;
    Ok(GatewayTarget {
        namespace,
        name,
        address,
        port,
        hostname,
        served_by_header,
    })
}

/// First hostname of the first HTTPRoute (by namespace/name) attached to the Gateway; a wildcard
/// hostname gets a concrete first label.
async fn route_hostname(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<Option<String>> {
    let api: Api<HttpRoute> = Api::all(cluster.client.clone());
    let mut routes = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing HTTPRoutes in context {}", cluster.context))?
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
pub async fn create_drill(cluster: &Cluster, drill: &FailoverDrill) -> anyhow::Result<()> {
    let ns = drill.metadata.namespace.clone().unwrap_or_default();
    match drills(cluster, &ns)
        .create(&PostParams::default(), drill)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => bail!(
            "the FailoverDrill CRD is not installed in context {} ({}): restart `meridian up` \
             (it installs Meridian's CRDs) or run `meridian crds | kubectl apply -f -`",
            cluster.context,
            e.message
        ),
        Err(e) => Err(e).with_context(|| format!("creating the FailoverDrill in {ns}")),
    }
}

/// Reads the drill's status.
pub async fn get_drill(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<DrillView> {
    let d = drills(cluster, ns)
        .get(name)
        .await
        .with_context(|| format!("reading FailoverDrill {ns}/{name}"))?;
    Ok(view(&d))
}

/// Deletes the drill (the controller rolls back a running one).
pub async fn delete_drill(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<()> {
    drills(cluster, ns)
        .delete(name, &Default::default())
        .await
        .with_context(|| format!("deleting FailoverDrill {ns}/{name}"))?;
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
