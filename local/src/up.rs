//! `meridian up`: the whole product on one machine, in one process.
//!
//! ```text
//!  sandbox (one Kubernetes API per cluster) ──watch──► controller ──publish──► distribution server
//!        ▲  CRDs, GatewayClass, demo manifests                                   │ snapshots / acks
//!        │                                                                       ▼
//!  kubectl --kubeconfig DIR/kubeconfig                          one proxy per region (127.0.1N.1)
//!                                                                                │ locality-aware
//!                                                                                ▼
//!                                                       demo echo backends, two zones per region
//! ```
//!
//! 0. Plan the clusters (`plan`: names, regions, zones, addresses) and prepare the state directory.
//! 1. Start the sandbox with the requested clusters and write `DIR/kubeconfig` (`start_sandbox`).
//! 2. Install Meridian's CRDs and the `meridian` GatewayClass in every cluster, and what a
//!    proxy install brings: namespace `meridian-system` and ServiceAccount `meridian-proxy`
//!    (`install_meridian`).
//! 3. Set up the mesh identity as `meridian controller` does (`meridian_controller::mesh::prepare`:
//!    the CA Secret `meridian-system/meridian-ca` read or created in the first cluster, the
//!    TokenReview bootstrap verifier, the per-region address pools as the address policy), start
//!    the distribution server with it and the controller, and attach the mesh to the controller
//!    (`start_controller`): the trust bundle ConfigMap `meridian-ca` lands in every cluster.
//!    The controller's admin listener (127.0.0.1, `--controller-admin-port`) gets a random
//!    token; both go to `DIR/admin.json` (mode 0600), where `meridian status` and `meridian
//!    explain` find them without flags. The live view's URL (`/ui`, the token in its fragment)
//!    is printed with what to try.
//!    Then one proxy per cluster (`start_proxies`), each appending its access log to
//!    `DIR/access.log` (one JSON line per request; printed with what to try), bootstrapped like a real one: it waits for
//!    its cluster's ConfigMap (its trust bundle), gets a ServiceAccount token for audience
//!    `meridian` from the TokenRequest API, and its distribution client trades that token for a
//!    certificate naming its cluster, region, zone and proxy id (`POST /v1/certificate`, checked
//!    with a TokenReview) and renews it. The proxy's one `CertStore` also serves the east-west hop
//!    of `--multi-network` (mutual TLS). Proxy `i` advertises `127.0.(10+i).1`, so every region
//!    has its own address for port 80. Each proxy prints the time from its start to its first
//!    certificate and to its first applied snapshot (`report_bootstrap`).
//! 4. With the demo (`start_demo`): start echo backends (`127.0.(100+i).{1,2}:8080`, zones
//!    `<region>-a/-b`) and apply `examples/demo/` plus each cluster's EndpointSlice to every
//!    cluster.
//! 5. Wait until every Gateway is `Programmed=True` and check each region answers (`wait_demo`),
//!    print what to try (`print_try`), and run until Ctrl-C, then stop everything in reverse
//!    order (`stop`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use meridian_controller::distributed::DistributedDataPlane;
use meridian_controller::distributed::addresses::{AddressPools, AddressRange};
use meridian_controller::mesh::{self, ServiceAccountRef};
use meridian_controller::{Controller, ControllerConfig, ControllerHandle, MemberCluster};
use meridian_distribution::client::BootstrapCredential;
use meridian_distribution::pki::{CertStore, TrustBundle, TrustDomain};
use meridian_distribution::{
    Client, ClientConfig, ClientStatus, DistributionServer, Hello, ServerConfig,
};
use meridian_model::locality::Locality;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use meridian_sandbox::{Sandbox, SandboxConfig};
use tokio::sync::watch;

use crate::actuator::{ActuatorError, LocalBackends};
use crate::apply::ApplyError;
use crate::{apply, echo};

/// An error of another workspace crate (sandbox, controller, distribution, proxy), kept whole as
/// the source of an [`UpError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why `meridian up` could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A `--clusters` entry is not NAME@REGION.
    #[error("--clusters entry {0:?}: expected NAME@REGION, e.g. east@us-east")]
    ClusterSpec(String),
    /// A cluster is named twice.
    #[error("--clusters: cluster {0:?} is listed twice")]
    DuplicateCluster(String),
    /// More clusters than addresses.
    #[error("--clusters: at most 50 clusters")]
    TooManyClusters,
    /// No cluster.
    #[error("--clusters: name at least one cluster")]
    NoClusters,
    /// The state directory could not be prepared.
    #[error("{doing} {}", path.display())]
    StateDir {
        /// `creating state directory`, `removing` or `writing`.
        doing: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox did not start.
    #[error(
        "starting the sandbox on ports {base_port}.. (another `meridian up` running? pick \
         --base-port)"
    )]
    Sandbox {
        /// `--base-port`.
        base_port: u16,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A sandbox cluster's URL or client.
    #[error("a client for sandbox cluster {cluster}")]
    SandboxClient {
        /// The cluster.
        cluster: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A CRD was not installed.
    #[error("cluster {cluster}: installing CRD {crd}")]
    Crd {
        /// The cluster.
        cluster: String,
        /// The CRD's name.
        crd: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// One of Meridian's CRDs has no name (a bug in meridian-crds).
    #[error("cluster {0}: CRD without a name")]
    CrdWithoutName(String),
    /// A manifest was not applied.
    #[error("{what}")]
    Apply {
        /// What, where (e.g. `GatewayClass in east`).
        what: String,
        /// Why.
        #[source]
        source: ApplyError,
    },
    /// The distribution server did not start.
    #[error("starting the distribution server on port {port}")]
    Distribution {
        /// `--distribution-port`.
        port: u16,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A region's address pool is invalid.
    #[error("address pool: {0}")]
    AddressPool(String),
    /// The controller did not start.
    #[error("starting the controller")]
    Controller(#[source] BoxError),
    /// The mesh identity (CA Secret, bootstrap verifier, address policy) cannot be set up.
    #[error("setting up the mesh identity (CA Secret in cluster {cluster})")]
    Identity {
        /// The cluster holding the CA Secret.
        cluster: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A proxy's namespace, ServiceAccount or bootstrap token cannot be made.
    #[error("cluster {cluster}: {what}")]
    ProxyAccount {
        /// The cluster.
        cluster: String,
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A cluster's trust bundle ConfigMap did not appear or holds no usable CA.
    #[error("cluster {cluster}: trust bundle ConfigMap {namespace}/{name}: {reason}")]
    Bundle {
        /// The cluster.
        cluster: String,
        /// The ConfigMap's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A proxy did not start.
    #[error("starting the proxy of {cluster} (admin {admin})")]
    Proxy {
        /// Its cluster.
        cluster: String,
        /// Its admin address.
        admin: SocketAddr,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A demo echo backend did not start.
    #[error("starting the echo backend of zone {zone}")]
    Echo {
        /// Its zone.
        zone: String,
        /// Why.
        #[source]
        source: ActuatorError,
    },
    /// The demo Gateways did not become Programmed.
    #[error("Gateways not Programmed after {0:?} (see the lines above for why)")]
    NotProgrammed(Duration),
    /// Waiting for Ctrl-C failed.
    #[error("waiting for Ctrl-C")]
    Signal(#[source] std::io::Error),
}

const DEMO: [(&str, &str); 5] = [
    (
        "00-namespace.yaml",
        include_str!("../../examples/demo/00-namespace.yaml"),
    ),
    (
        "10-gatewayclass.yaml",
        include_str!("../../examples/demo/10-gatewayclass.yaml"),
    ),
    (
        "20-gateway.yaml",
        include_str!("../../examples/demo/20-gateway.yaml"),
    ),
    (
        "30-service.yaml",
        include_str!("../../examples/demo/30-service.yaml"),
    ),
    (
        "40-httproute.yaml",
        include_str!("../../examples/demo/40-httproute.yaml"),
    ),
];

/// Arguments of `meridian up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the sandbox keeps its objects and the kubeconfig is written.
    #[arg(long, default_value = ".meridian")]
    pub state_dir: PathBuf,
    /// Member clusters as NAME@REGION, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "east@us-east,west@us-west,central@eu-central"
    )]
    pub clusters: Vec<String>,
    /// Start only the sandbox, the controller and the proxies (no echo backends, no manifests).
    #[arg(long)]
    pub no_demo: bool,
    /// First Kubernetes API port; cluster i listens on base + i.
    #[arg(long, default_value_t = 6550)]
    pub base_port: u16,
    /// Port of the distribution server proxies connect to.
    #[arg(long, default_value_t = 6600)]
    pub distribution_port: u16,
    /// Port of the controller's admin listener on 127.0.0.1 (healthz, readyz, metrics and the
    /// `/v1/` JSON of `meridian status` / `explain`); 0 picks a free one. Either way its URL and
    /// token go to STATE_DIR/admin.json, where those commands find them.
    #[arg(long, default_value_t = 0)]
    pub controller_admin_port: u16,
    /// First proxy admin port (healthz, ready, config_dump, metrics); proxy i uses base + i.
    /// 0 picks free ports.
    #[arg(long, default_value_t = 15000)]
    pub admin_base_port: u16,
    /// Start from an empty sandbox (deletes the saved objects in the state directory).
    #[arg(long)]
    pub fresh: bool,
    /// Put every cluster on a network of its own, as if pod IPs were not routable between
    /// regions: a proxy then reaches another region's backends through that region's proxy
    /// (its east-west listener, `127.0.(10+i).254:15443`), never directly.
    #[arg(long)]
    pub multi_network: bool,
}

struct ClusterPlan {
    name: String,
    region: String,
    zones: [String; 2],
    proxy_address: Ipv4Addr,
    backends: [Ipv4Addr; 2],
}

fn plan(args: &UpArgs) -> Result<Vec<ClusterPlan>, UpError> {
    let mut out: Vec<ClusterPlan> = Vec::new();
    for (i, spec) in args.clusters.iter().enumerate() {
        let (name, region) = spec
            .split_once('@')
            .unwrap_or((spec.as_str(), spec.as_str()));
        if name.is_empty() || region.is_empty() {
            return Err(UpError::ClusterSpec(spec.clone()));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(UpError::DuplicateCluster(name.to_string()));
        }
        if i >= 50 {
            return Err(UpError::TooManyClusters);
        }
        let i = i as u8;
        out.push(ClusterPlan {
            name: name.to_string(),
            region: region.to_string(),
            zones: [format!("{region}-a"), format!("{region}-b")],
            proxy_address: Ipv4Addr::new(127, 0, 10 + i, 1),
            backends: [
                Ipv4Addr::new(127, 0, 100 + i, 1),
                Ipv4Addr::new(127, 0, 100 + i, 2),
            ],
        });
    }
    if out.is_empty() {
        return Err(UpError::NoClusters);
    }
    Ok(out)
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// Why the proxies will not be able to serve port 80.
#[derive(Debug, thiserror::Error)]
enum Port80 {
    #[error(
        "port 80 needs root or CAP_NET_BIND_SERVICE: run `sudo meridian up`, or grant the \
         capability once with `sudo setcap cap_net_bind_service=+ep $(command -v meridian)`"
    )]
    NeedsPrivilege,
    #[error("{addr}:80 cannot be bound: {error}")]
    Bind {
        addr: Ipv4Addr,
        error: std::io::Error,
    },
}

/// Whether this process may bind port 80 (root or CAP_NET_BIND_SERVICE).
fn can_bind_low_ports(addr: Ipv4Addr) -> Result<(), Port80> {
    match std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(addr), 80)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Port80::NeedsPrivilege),
        Err(error) => Err(Port80::Bind { addr, error }),
    }
}

fn endpoint_slice(c: &ClusterPlan) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("echo-{}", c.name),
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": "echo"}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": c.backends.iter().zip(&c.zones).map(|(ip, zone)| serde_json::json!({
            "addresses": [ip.to_string()],
            "zone": zone,
            "conditions": {"ready": true}
        })).collect::<Vec<_>>()
    })
}

async fn install_crds(cluster: &str, client: &kube::Client) -> Result<(), UpError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in meridian_crds::all_crds() {
        let name = crd
            .metadata
            .name
            .clone()
            .ok_or_else(|| UpError::CrdWithoutName(cluster.to_string()))?;
        api.patch(
            &name,
            &PatchParams::apply("meridian-up").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|source| UpError::Crd {
            cluster: cluster.to_string(),
            crd: name.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// Polls each cluster's `demo/web` Gateway until it is Programmed, printing changes.
async fn wait_programmed(
    clients: &[(String, kube::Client)],
    timeout: Duration,
) -> Result<(), UpError> {
    let deadline = Instant::now() + timeout;
    let mut done = vec![false; clients.len()];
    let mut last: Vec<String> = vec![String::new(); clients.len()];
    while done.iter().any(|d| !d) {
        for (i, (name, client)) in clients.iter().enumerate() {
            if done[i] {
                continue;
            }
            let api: Api<gateway_api::gateways::Gateway> = Api::namespaced(client.clone(), "demo");
            let state = match api.get_opt("web").await {
                Ok(Some(gw)) => {
                    let cond = gw
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|cs| cs.iter().find(|c| c.type_ == "Programmed").cloned());
                    // The demo's HTTPRoute must be attached too: a Gateway is Programmed as soon
                    // as its listeners are served, which can be before the route is translated.
                    let attached: i32 = gw
                        .status
                        .as_ref()
                        .and_then(|s| s.listeners.as_ref())
                        .map_or(0, |ls| ls.iter().map(|l| l.attached_routes).sum());
                    match cond {
                        Some(c) if c.status == "True" && attached == 0 => {
                            "Programmed, waiting for the demo route to attach".to_string()
                        }
                        Some(c) if c.status == "True" => {
                            done[i] = true;
                            let addr = gw
                                .status
                                .as_ref()
                                .and_then(|s| s.addresses.as_ref())
                                .and_then(|a| a.first())
                                .map(|a| a.value.clone())
                                .unwrap_or_default();
                            format!("Programmed at {addr}")
                        }
                        Some(c) => format!("not programmed yet: {} ({})", c.reason, c.message),
                        None => "waiting for the controller".to_string(),
                    }
                }
                Ok(None) => "Gateway demo/web not found".to_string(),
                Err(e) => format!("API error: {e}"),
            };
            if state != last[i] {
                say(format!("  gateway demo/web in {name}: {state}"));
                last[i] = state;
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        if Instant::now() > deadline {
            return Err(UpError::NotProgrammed(timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// How long the startup probe of one region keeps asking while the answer is a 404 or 503.
const PROBE_PATIENCE: Duration = Duration::from_secs(3);

/// Sends a request to each region's Gateway address and reports who answered. The route's
/// status can be written a moment before the proxy applies the snapshot that serves it, so a
/// 404 or 503 (no route, no endpoint yet) is asked again, a few times, before it is printed.
async fn probe_regions(plans: &[ClusterPlan]) {
    for c in plans {
        let addr = SocketAddr::new(IpAddr::V4(c.proxy_address), 80);
        let deadline = Instant::now() + PROBE_PATIENCE;
        let mut pause = Duration::from_millis(20);
        let result = loop {
            let r = http_get(addr).await;
            let transient =
                matches!(&r, Err(NoAnswer::Status(s)) if s.contains(" 404") || s.contains(" 503"));
            if !transient || Instant::now() + pause > deadline {
                break r;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        };
        let answer = match result {
            Ok(body) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_string))
                .map_or_else(
                    || format!("answered: {body}"),
                    |n| format!("answered by {n}"),
                ),
            Err(e) => format!("did not answer: {e}"),
        };
        say(format!(
            "  http://{}/  ({}, {}) {answer}",
            c.proxy_address, c.name, c.region
        ));
    }
}

/// Why a region did not answer the startup probe (printed, not fatal).
#[derive(Debug, thiserror::Error)]
enum NoAnswer {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    /// The status line of an answer other than 200.
    #[error("{0}")]
    Status(String),
}

async fn http_get(addr: SocketAddr) -> Result<String, NoAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| NoAnswer::Timeout)??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("no status line");
        return Err(NoAnswer::Status(status.to_string()));
    }
    Ok(body.to_string())
}

/// Runs until Ctrl-C: the numbered steps of the module docs, one function each.
pub async fn run(args: UpArgs) -> Result<(), UpError> {
    let started = Instant::now();
    let plans = plan(&args)?;
    let sandbox_dir = prepare_state_dir(&args)?;
    warn_if_port_80_is_closed(&plans);
    let kubeconfig = args.state_dir.join("kubeconfig");

    let place = MeshPlace::new()?;
    let (sandbox, clients) = start_sandbox(&args, &plans, sandbox_dir, &kubeconfig).await?;
    install_meridian(&clients, &place).await?;
    // The demo backends live in the drill actuator so kill/blackhole drills can stop them.
    let backends = Arc::new(LocalBackends::new());
    let control = start_controller(&args, &plans, &clients, backends.clone()).await?;
    let mut proxies = start_proxies(&args, &plans, &clients, &place, &control).await?;
    if !args.no_demo {
        start_demo(&plans, &clients, &backends).await?;
        wait_demo(&plans, &clients, started).await?;
        // Every proxy acknowledged a snapshot: their bootstrap lines are printed (or about
        // to be) — keep them above "Meridian is up".
        for p in &mut proxies {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut p.report).await;
        }
    }
    print_try(
        &args,
        &plans,
        &kubeconfig,
        &proxies,
        control.live_url.as_deref(),
    );

    tokio::signal::ctrl_c().await.map_err(UpError::Signal)?;
    stop(sandbox, clients, &backends, control, proxies).await;
    Ok(())
}

/// Creates the state directory; with `--fresh`, forgets the saved objects. Returns the
/// sandbox's directory.
fn prepare_state_dir(args: &UpArgs) -> Result<PathBuf, UpError> {
    std::fs::create_dir_all(&args.state_dir).map_err(|source| UpError::StateDir {
        doing: "creating state directory",
        path: args.state_dir.clone(),
        source,
    })?;
    let sandbox_dir = args.state_dir.join("sandbox");
    if args.fresh && sandbox_dir.exists() {
        std::fs::remove_dir_all(&sandbox_dir).map_err(|source| UpError::StateDir {
            doing: "removing",
            path: sandbox_dir.clone(),
            source,
        })?;
    }
    Ok(sandbox_dir)
}

/// A warning, not an error: everything else works, and the Gateways say why they do not serve.
fn warn_if_port_80_is_closed(plans: &[ClusterPlan]) {
    if let Err(why) = can_bind_low_ports(plans[0].proxy_address) {
        say(format!("warning: {why}"));
        say("         Gateways will report Programmed=False with the bind error until then.");
    }
}

/// Step 1: one Kubernetes API per cluster, the kubeconfig, and a client per cluster.
async fn start_sandbox(
    args: &UpArgs,
    plans: &[ClusterPlan],
    sandbox_dir: PathBuf,
    kubeconfig: &Path,
) -> Result<(Sandbox, Vec<(String, kube::Client)>), UpError> {
    let sandbox = Sandbox::start(SandboxConfig {
        clusters: plans.iter().map(|c| c.name.clone()).collect(),
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: args.base_port,
        state_dir: Some(sandbox_dir),
        kubeconfig_path: Some(kubeconfig.to_path_buf()),
        ..SandboxConfig::default()
    })
    .await
    .map_err(|e| UpError::Sandbox {
        base_port: args.base_port,
        source: e.into(),
    })?;
    let mut clients = Vec::new();
    for ep in sandbox.clusters() {
        let client_error = |source: BoxError| UpError::SandboxClient {
            cluster: ep.name.clone(),
            source,
        };
        let url = ep.url.parse().map_err(|e| client_error(Box::new(e)))?;
        let client = kube::Client::try_from(kube::Config::new(url))
            .map_err(|e| client_error(Box::new(e)))?;
        clients.push((ep.name.clone(), client));
        say(format!("sandbox: cluster {} at {}", ep.name, ep.url));
    }
    Ok((sandbox, clients))
}

/// Where the mesh objects live: the controller's namespace (the CA Secret in the first
/// cluster, the trust bundle ConfigMap in each) and the proxies' ServiceAccount.
struct MeshPlace {
    /// The controller's namespace (`meridian-system` unless `POD_NAMESPACE` says otherwise).
    namespace: String,
    /// The ServiceAccount proxies bootstrap with.
    proxy_account: ServiceAccountRef,
}

impl MeshPlace {
    fn new() -> Result<MeshPlace, UpError> {
        let proxy_account: ServiceAccountRef = mesh::DEFAULT_PROXY_SERVICE_ACCOUNT
            .parse()
            .map_err(|e: mesh::MeshArgsError| UpError::Controller(e.into()))?;
        Ok(MeshPlace {
            namespace: meridian_controller::members::own_namespace_from_env(None),
            proxy_account,
        })
    }
}

/// Step 2: CRDs and the GatewayClass in every cluster, and the namespace and ServiceAccount a
/// proxy install brings.
async fn install_meridian(
    clients: &[(String, kube::Client)],
    place: &MeshPlace,
) -> Result<(), UpError> {
    for (name, client) in clients {
        install_crds(name, client).await?;
        apply::apply_yaml(client, DEMO[1].1)
            .await
            .map_err(|source| UpError::Apply {
                what: format!("GatewayClass in {name}"),
                source,
            })?;
        let mut namespaces = vec![place.namespace.as_str()];
        if place.proxy_account.namespace != place.namespace {
            namespaces.push(&place.proxy_account.namespace);
        }
        for ns in namespaces {
            let obj = serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
            });
            apply::apply_object(client, &obj, ns)
                .await
                .map_err(|source| UpError::Apply {
                    what: format!("namespace {ns} in {name}"),
                    source,
                })?;
        }
        let sa = serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": place.proxy_account.name, "namespace": place.proxy_account.namespace}
        });
        apply::apply_object(client, &sa, &place.proxy_account.namespace)
            .await
            .map_err(|source| UpError::Apply {
                what: format!("ServiceAccount {} in {name}", place.proxy_account),
                source,
            })?;
    }
    say(format!(
        "crds: Gateway API, MCS and the `meridian` GatewayClass installed in every cluster, \
         with namespace {} and the proxies' ServiceAccount {}",
        place.namespace, place.proxy_account
    ));
    Ok(())
}

/// The controller and the distribution server its proxies follow.
struct Control {
    server: Arc<DistributionServer>,
    controller: ControllerHandle,
    /// `https://` URL of the distribution server.
    url: String,
    /// The live view's URL with the admin token in its fragment (`None`: no admin listener).
    live_url: Option<String>,
    /// Publishes the trust bundle ConfigMap to every cluster until `stop_mesh` turns true.
    bundle_publisher: tokio::task::JoinHandle<()>,
    stop_mesh: watch::Sender<bool>,
}

/// `meridian controller`'s arguments for what `mesh::prepare` reads: the per-region address
/// pools as `--gateway-addresses` (the address policy), the CA Secret and proxy ServiceAccount
/// at their defaults.
fn mesh_args(plans: &[ClusterPlan]) -> Result<meridian_controller::ControllerArgs, UpError> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: meridian_controller::ControllerArgs,
    }
    let mut argv = vec!["meridian-up".to_string()];
    for (name, range) in pool_ranges(plans)? {
        argv.push("--gateway-addresses".into());
        argv.push(format!("{name}={range}"));
    }
    <Cli as clap::Parser>::try_parse_from(argv)
        .map(|c| c.args)
        .map_err(|e| UpError::AddressPool(e.to_string()))
}

/// Step 3a: the distribution server and the controller, through the controller crate's
/// [`DistributedDataPlane`] as `meridian controller --distribution-bind` runs it.
async fn start_controller(
    args: &UpArgs,
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    backends: Arc<LocalBackends>,
) -> Result<Control, UpError> {
    let distribution_error = |e: BoxError| UpError::Distribution {
        port: args.distribution_port,
        source: e,
    };
    // The mesh identity as `meridian controller --distribution-bind` sets it up: the CA Secret
    // in the first cluster (kept across runs of the same state directory), bootstrap with
    // ServiceAccount tokens checked by TokenReviews, addresses from each region's pool.
    let home = &clients[0];
    let identity_error = |source: BoxError| UpError::Identity {
        cluster: home.0.clone(),
        source,
    };
    let mesh = mesh::prepare(&mesh_args(plans)?, home.1.clone(), None)
        .await
        .map_err(|e| identity_error(e.into()))?;
    let (ca, verifier, addresses) = mesh.parts();
    let mut server_config = ServerConfig::new(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.distribution_port),
        ca,
    );
    server_config.bootstrap = Some(verifier);
    server_config.addresses = addresses;
    let server = DistributionServer::start(server_config)
        .await
        .map_err(|e| distribution_error(e.into()))?;
    let server = Arc::new(server);
    let url = format!("https://{}", server.local_addr());
    let data_plane = DistributedDataPlane::with_pools(server.clone(), address_pools(plans)?);
    let members = plans
        .iter()
        .zip(clients)
        .map(|(p, (_, client))| MemberCluster {
            name: p.name.clone(),
            region: p.region.clone(),
            zones: p.zones.to_vec(),
            client: client.clone(),
            network: if args.multi_network {
                p.name.clone()
            } else {
                String::new()
            },
        })
        .collect();
    let mut controller_config = ControllerConfig::new(members, data_plane);
    controller_config.drill_actuator = Some(backends);
    // `meridian status` / `explain` read the admin listener with this token (admin.json).
    controller_config.admin = Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        args.controller_admin_port,
    ));
    let admin_token = format!("{:032x}", rand::random::<u128>());
    controller_config.admin_token = Some(admin_token.clone());
    // The demo's backends listen on loopback addresses.
    controller_config.allow_loopback_endpoints = true;
    let controller = Controller::start(controller_config)
        .await
        .map_err(|e| UpError::Controller(e.into()))?;
    let live_url = write_admin_file(&args.state_dir, &controller, admin_token)?;
    let (stop_mesh, stop_rx) = watch::channel(false);
    let bundle_publisher = mesh
        .attach(controller.member_directory(), stop_rx)
        .map_err(|e| identity_error(e.into()))?;
    say(format!(
        "controller: watching {} clusters, serving snapshots at {url}; mesh CA in Secret \
         {}/{} of {}, trust bundle ConfigMap {} in every cluster",
        plans.len(),
        mesh.bundle_namespace,
        mesh::DEFAULT_CA_SECRET,
        home.0,
        mesh::BUNDLE_CONFIGMAP,
    ));
    Ok(Control {
        server,
        controller,
        url,
        live_url,
        bundle_publisher,
        stop_mesh,
    })
}

/// Writes `DIR/admin.json`: where the controller's admin listener is and its token, so
/// `meridian status` / `explain` (and `kubectl meridian …`) work without flags. Returns the live
/// view's URL, the token in its fragment: the browser never sends a fragment, and the page moves
/// the token into the tab's sessionStorage and out of the address bar.
fn write_admin_file(
    state_dir: &Path,
    controller: &ControllerHandle,
    token: String,
) -> Result<Option<String>, UpError> {
    let Some(addr) = controller.admin_addr() else {
        return Ok(None);
    };
    let live_url = format!("http://{addr}/ui#token={token}");
    let endpoint = meridian_controller::inspect::cli::AdminEndpoint {
        url: format!("http://{addr}"),
        token: Some(token),
    };
    let path = endpoint
        .write(state_dir)
        .map_err(|source| UpError::StateDir {
            doing: "writing",
            path: state_dir.join(meridian_controller::inspect::cli::ADMIN_FILE),
            source,
        })?;
    say(format!(
        "controller: admin listener http://{addr}; `meridian status` and `meridian explain` \
         read it from {}",
        path.display()
    ));
    Ok(Some(live_url))
}

/// Every Gateway of a region gets its own address from 127.0.(10+i).0/24 (the first one
/// created, demo/web, gets the proxy's advertised .1), so examples can all use port 80.
fn address_pools(plans: &[ClusterPlan]) -> Result<AddressPools, UpError> {
    Ok(AddressPools::new(pool_ranges(plans)?))
}

/// Each region's pool: `127.0.(10+i).1-253`.
fn pool_ranges(plans: &[ClusterPlan]) -> Result<Vec<(String, AddressRange)>, UpError> {
    plans
        .iter()
        .map(|p| {
            let first = p.proxy_address;
            let [a, b, c, _] = first.octets();
            // .254 is the east-west listener's (--multi-network).
            AddressRange::new(first, Ipv4Addr::new(a, b, c, 253))
                .map(|r| (p.name.clone(), r))
                .map_err(|e| UpError::AddressPool(e.to_string()))
        })
        .collect()
}

/// A running proxy and the task that keeps it following the controller.
struct Proxy {
    handle: Arc<ProxyHandle>,
    task: tokio::task::JoinHandle<()>,
    admin: SocketAddr,
    /// Prints the time to its first certificate and first applied snapshot, then ends.
    report: tokio::task::JoinHandle<()>,
}

/// Step 3b: one proxy per cluster, each bootstrapping its identity and following the
/// controller.
async fn start_proxies(
    args: &UpArgs,
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    place: &MeshPlace,
    control: &Control,
) -> Result<Vec<Proxy>, UpError> {
    let mut proxies = Vec::new();
    for (i, (c, (_, client))) in plans.iter().zip(clients).enumerate() {
        let port = if args.admin_base_port == 0 {
            0
        } else {
            args.admin_base_port + i as u16
        };
        let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        proxies.push(start_proxy(args, c, client, place, admin, control).await?);
    }
    Ok(proxies)
}

/// How long a proxy waits for its cluster's trust bundle ConfigMap (the controller publishes
/// it right after it starts).
const BUNDLE_WAIT: Duration = Duration::from_secs(30);
/// How long `report_bootstrap` waits for a first certificate and a first snapshot.
const BOOTSTRAP_REPORT_WAIT: Duration = Duration::from_secs(60);

/// The CA bundle of `cluster`'s `meridian-ca` ConfigMap (what a proxy pod mounts as
/// `--ca-file`), polled until it appears (bounded by [`BUNDLE_WAIT`]).
async fn read_bundle(
    cluster: &str,
    client: &kube::Client,
    namespace: &str,
) -> Result<TrustBundle, UpError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let bundle_error = |reason: String| UpError::Bundle {
        cluster: cluster.to_string(),
        namespace: namespace.to_string(),
        name: mesh::BUNDLE_CONFIGMAP.to_string(),
        reason,
    };
    let deadline = Instant::now() + BUNDLE_WAIT;
    let mut last = String::from("not published yet");
    while Instant::now() < deadline {
        match api.get_opt(mesh::BUNDLE_CONFIGMAP).await {
            Ok(Some(cm)) => {
                let pem = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(mesh::BUNDLE_KEY))
                    .ok_or_else(|| bundle_error(format!("no key {}", mesh::BUNDLE_KEY)))?;
                return TrustBundle::from_pem(pem.as_bytes(), &TrustDomain::default())
                    .map_err(|e| bundle_error(e.to_string()));
            }
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(bundle_error(format!(
        "still absent after {BUNDLE_WAIT:?} ({last})"
    )))
}

/// A token of the proxies' ServiceAccount in `cluster` for audience `meridian`, from the
/// TokenRequest API: what a projected token volume gives a proxy pod.
async fn proxy_token(
    cluster: &str,
    client: &kube::Client,
    account: &ServiceAccountRef,
) -> Result<String, UpError> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![mesh::PROXY_TOKEN_AUDIENCE.to_string()]),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let what = || format!("a TokenRequest for ServiceAccount {account}");
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &account.namespace)
        .create_token_request(&account.name, &PostParams::default(), &request)
        .await
        .map_err(|e| UpError::ProxyAccount {
            cluster: cluster.to_string(),
            what: what(),
            source: e.into(),
        })?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpError::ProxyAccount {
            cluster: cluster.to_string(),
            what: what(),
            source: "the answer holds no token".into(),
        })
}

async fn start_proxy(
    args: &UpArgs,
    c: &ClusterPlan,
    client: &kube::Client,
    place: &MeshPlace,
    admin: SocketAddr,
    control: &Control,
) -> Result<Proxy, UpError> {
    let proxy_error = |source: BoxError| UpError::Proxy {
        cluster: c.name.clone(),
        admin,
        source,
    };
    let proxy_id = format!("{}-proxy", c.name);
    // What a proxy pod is given: the trust bundle of its cluster and a bootstrap token.
    let bundle = read_bundle(&c.name, client, &place.namespace).await?;
    let token = proxy_token(&c.name, client, &place.proxy_account).await?;
    let started = Instant::now();
    // One identity for both links: the client below bootstraps and renews the certificate in
    // it, and the east-west hop presents whatever it holds now.
    let identity = Arc::new(CertStore::new(bundle));
    let handle = Arc::new(
        ProxyHandle::start(ProxyConfig {
            admin: Some(admin),
            // Loopback, and a local run: no admin token.
            admin_auth: AdminAuth::None,
            locality: Locality {
                cluster: c.name.clone(),
                region: c.region.clone(),
                zone: c.zones[0].clone(),
            },
            east_west: args.multi_network.then(|| {
                let [a, b, c, _] = c.proxy_address.octets();
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, 254)), 15443)
            }),
            identity: Some(identity.clone()),
            east_west_plaintext: false,
            // The proxy's defaults (merge slashes, keep %2F/%5C encoded).
            paths: Default::default(),
            // The proxy's default timeouts and connection cap (docs/proxy.md).
            limits: Default::default(),
            edge: Default::default(),
            // The lean HTTP/1 path, as `meridian proxy` by default.
            http1_path: Default::default(),
            // Connections on this process's runtime, shared with the rest of `meridian up`.
            workers: 0,
            // Every proxy appends to the one `DIR/access.log` (each line written whole; the
            // `cluster` field tells the proxies apart). No trace export: no collector here.
            access_log: meridian_proxy::AccessLogConfig {
                target: meridian_proxy::AccessLogTarget::File(access_log_path(args)),
                ..Default::default()
            },
            tracing: Default::default(),
        })
        .await
        .map_err(|e| proxy_error(e.into()))?,
    );
    let hello = Hello {
        proxy_id: proxy_id.clone(),
        cluster: c.name.clone(),
        region: c.region.clone(),
        zone: c.zones[0].clone(),
        gateways: None,
        address: Some(c.proxy_address.to_string()),
        east_west: handle.east_west_addr().map(|a| a.to_string()),
    };
    let client = Client::new(ClientConfig::new(
        control.url.clone(),
        hello,
        identity.clone(),
        Some(BootstrapCredential::Token(token)),
    ))
    .map_err(|e| proxy_error(e.into()))?;
    let report = tokio::spawn(report_bootstrap(
        format!("{} ({proxy_id})", c.name),
        identity,
        client.status(),
        started,
    ));
    let h = handle.clone();
    let task = tokio::spawn(async move {
        meridian_proxy::follow_controller(&h, &client).await;
    });
    let admin = handle.admin_addr().unwrap_or(admin);
    let east_west = handle
        .east_west_addr()
        .map(|a| format!(", east-west {a}"))
        .unwrap_or_default();
    say(format!(
        "proxy: {} ({}, zone {}) serves at {}, admin http://{admin}{east_west}",
        c.name, c.region, c.zones[0], c.proxy_address
    ));
    Ok(Proxy {
        handle,
        task,
        admin,
        report,
    })
}

/// Prints, once, how long after `started` the proxy `who` held its first certificate (and
/// whom it names) and applied its first snapshot:
/// `bootstrap: east (east-proxy) certificate spiffe://… after 0.05 s, first snapshot applied
/// after 0.31 s`. Gives up after [`BOOTSTRAP_REPORT_WAIT`], saying what the client last saw.
async fn report_bootstrap(
    who: String,
    identity: Arc<CertStore>,
    mut status: watch::Receiver<ClientStatus>,
    started: Instant,
) {
    let mut changes = identity.subscribe();
    let certificate = tokio::time::timeout(BOOTSTRAP_REPORT_WAIT, async {
        let _ = changes.wait_for(|_| identity.credentials().is_some()).await;
        started.elapsed()
    })
    .await;
    let Ok(cert_after) = certificate else {
        let last = status.borrow().last_error.clone().unwrap_or_default();
        say(format!(
            "bootstrap: {who} has no certificate after {BOOTSTRAP_REPORT_WAIT:?}: {last}"
        ));
        return;
    };
    let names = identity
        .credentials()
        .map(|c| c.peer().uri(identity.bundle().trust_domain()))
        .unwrap_or_default();
    let snapshot = tokio::time::timeout(BOOTSTRAP_REPORT_WAIT, async {
        let _ = status.wait_for(|s| s.generation.is_some()).await;
        started.elapsed()
    })
    .await;
    let snapshot = match snapshot {
        Ok(after) => format!("first snapshot applied after {:.2} s", after.as_secs_f64()),
        Err(_) => format!("no snapshot applied after {BOOTSTRAP_REPORT_WAIT:?}"),
    };
    say(format!(
        "bootstrap: {who} certificate {names} after {:.2} s, {snapshot}",
        cert_after.as_secs_f64()
    ));
}

/// Step 4: echo backends in two zones per region, and the demo manifests in every cluster.
async fn start_demo(
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    backends: &LocalBackends,
) -> Result<(), UpError> {
    for c in plans {
        for (ip, zone) in c.backends.iter().zip(&c.zones) {
            let echo_args = echo::EchoArgs {
                listen: SocketAddr::new(IpAddr::V4(*ip), 8080),
                name: format!("echo-{zone}"),
                cluster: c.name.clone(),
                region: c.region.clone(),
                zone: zone.clone(),
            };
            backends
                .start(echo_args)
                .await
                .map_err(|source| UpError::Echo {
                    zone: zone.clone(),
                    source,
                })?;
        }
    }
    for (c, (name, client)) in plans.iter().zip(clients) {
        for (file, text) in DEMO {
            apply::apply_yaml(client, text)
                .await
                .map_err(|source| UpError::Apply {
                    what: format!("applying examples/demo/{file} to {name}"),
                    source,
                })?;
        }
        apply::apply_object(client, &endpoint_slice(c), "demo")
            .await
            .map_err(|source| UpError::Apply {
                what: format!("EndpointSlice in {name}"),
                source,
            })?;
    }
    say("demo: echo backends in two zones per region; examples/demo applied to every cluster");
    Ok(())
}

/// Step 5: every Gateway Programmed, and each region answering.
async fn wait_demo(
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    started: Instant,
) -> Result<(), UpError> {
    wait_programmed(clients, Duration::from_secs(60)).await?;
    say(format!(
        "programmed: every Gateway Programmed=True in every cluster {:.1} s after start",
        started.elapsed().as_secs_f64()
    ));
    probe_regions(plans).await;
    Ok(())
}

/// `DIR/access.log`: where every proxy of `meridian up` writes its access log.
pub fn access_log_path(args: &UpArgs) -> PathBuf {
    args.state_dir.join(ACCESS_LOG)
}

/// The access log's file name in the state directory.
pub const ACCESS_LOG: &str = "access.log";

/// What to try now.
fn print_try(
    args: &UpArgs,
    plans: &[ClusterPlan],
    kubeconfig: &Path,
    proxies: &[Proxy],
    live_url: Option<&str>,
) {
    let kc = kubeconfig.display();
    say("");
    say("Meridian is up. Try:");
    if let Some(url) = live_url {
        // "live view: URL" is also what tests look for.
        say(format!(
            "  live view: {url}    # regions, traffic, failover and drills in a browser"
        ));
    }
    say(format!(
        "  kubectl --kubeconfig {kc} --context {} get gateways -A",
        plans[0].name
    ));
    say(format!(
        "  kubectl --kubeconfig {kc} --context {} get httproutes -n demo -o yaml",
        plans[0].name
    ));
    // Without the demo no Gateway exists yet, so the proxies answer nothing worth curling.
    if !args.no_demo {
        for c in plans {
            say(format!(
                "  curl -s http://{}/    # {} ({})",
                c.proxy_address, c.name, c.region
            ));
        }
    }
    if let Some(p) = proxies.first() {
        say(format!(
            "  curl -s http://{}/config_dump    # what the {} proxy serves",
            p.admin, plans[0].name
        ));
    }
    say(format!(
        "  tail -f {}    # access log: one JSON line per request through the proxies",
        access_log_path(args).display()
    ));
    let state = if args.state_dir == Path::new(".meridian") {
        String::new()
    } else {
        format!(" --state-dir {}", args.state_dir.display())
    };
    say(format!(
        "  meridian status{state}    # clusters, proxies, Gateways, backends and the tiers in use"
    ));
    if !args.no_demo {
        say(format!(
            "  meridian explain{state} --gateway demo/web --context {} --host demo --path / --fail {}    # where a request goes, and if a region fails",
            plans[0].name, plans[0].region
        ));
        say(
            "  kubectl meridian status    # the same as a kubectl plugin, once kubectl-meridian is on PATH: \
             ln -s \"$(command -v meridian)\" ~/.local/bin/kubectl-meridian",
        );
    }
    if !args.no_demo {
        say(format!(
            "  meridian drill --kubeconfig {kc} --target {} --mode kill --duration 10s    # fail a region under load, get a report",
            plans[0].region
        ));
    }
    say("Stop with Ctrl-C.");
}

/// Stops everything in reverse order of dependence: backends, controller, proxies, then the
/// distribution server and the sandbox.
async fn stop(
    sandbox: Sandbox,
    clients: Vec<(String, kube::Client)>,
    backends: &LocalBackends,
    control: Control,
    proxies: Vec<Proxy>,
) {
    say("stopping…");
    backends.shutdown().await;
    let _ = control.stop_mesh.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), control.bundle_publisher).await;
    control.controller.shutdown().await;
    for Proxy {
        handle,
        task,
        report,
        ..
    } in proxies
    {
        report.abort();
        task.abort();
        let _ = task.await;
        if let Ok(h) = Arc::try_unwrap(handle) {
            h.shutdown().await;
        }
    }
    drop(clients);
    if let Ok(server) = Arc::try_unwrap(control.server) {
        server.shutdown().await;
    }
    sandbox.shutdown().await;
    say("stopped");
}
