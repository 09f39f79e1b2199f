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
//! 2. Install Meridian's CRDs and the `meridian` GatewayClass in every cluster
//!    (`install_meridian`).
//! 3. Start the distribution server and the controller (`start_controller`, through the
//!    controller crate's `DistributedDataPlane`, as `meridian controller` runs it), then one proxy
//!    per cluster (`start_proxies`); proxy `i` advertises `127.0.(10+i).1`, so every region has its
//!    own address for port 80.
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

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use meridian_controller::distributed::DistributedDataPlane;
use meridian_controller::distributed::addresses::{AddressPools, AddressRange};
use meridian_controller::{Controller, ControllerConfig, ControllerHandle, MemberCluster};
use meridian_distribution::{Client, ClientConfig, DistributionServer, Hello, ServerConfig};
use meridian_model::locality::Locality;
use meridian_proxy::{ProxyConfig, ProxyHandle};
use meridian_sandbox::{Sandbox, SandboxConfig};

use crate::actuator::LocalBackends;
use crate::{apply, echo};

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

fn plan(args: &UpArgs) -> anyhow::Result<Vec<ClusterPlan>> {
    let mut out: Vec<ClusterPlan> = Vec::new();
    for (i, spec) in args.clusters.iter().enumerate() {
        let (name, region) = spec
            .split_once('@')
            .unwrap_or((spec.as_str(), spec.as_str()));
        if name.is_empty() || region.is_empty() {
            bail!("--clusters entry {spec:?}: expected NAME@REGION, e.g. east@us-east");
        }
        if out.iter().any(|c| c.name == name) {
            bail!("--clusters: cluster {name:?} is listed twice");
        }
        if i >= 50 {
            bail!("--clusters: at most 50 clusters");
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
        bail!("--clusters: name at least one cluster");
    }
    Ok(out)
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// Whether this process may bind port 80 (root or CAP_NET_BIND_SERVICE).
fn can_bind_low_ports(addr: Ipv4Addr) -> Result<(), String> {
    match std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(addr), 80)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(
            "port 80 needs root or CAP_NET_BIND_SERVICE: run `sudo meridian up`, or grant the \
             capability once with `sudo setcap cap_net_bind_service=+ep $(command -v meridian)`"
                .to_string(),
        ),
        Err(e) => Err(format!("{addr}:80 cannot be bound: {e}")),
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

async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in meridian_crds::all_crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply("meridian-up").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("installing CRD {name}"))?;
    }
    Ok(())
}

/// Polls each cluster's `demo/web` Gateway until it is Programmed, printing changes.
async fn wait_programmed(
    clients: &[(String, kube::Client)],
    timeout: Duration,
) -> anyhow::Result<()> {
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
                    match cond {
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
            bail!("Gateways not Programmed after {timeout:?} (see the lines above for why)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Sends one request to each region's Gateway address and reports who answered.
async fn probe_regions(plans: &[ClusterPlan]) {
    for c in plans {
        let addr = SocketAddr::new(IpAddr::V4(c.proxy_address), 80);
        let answer = match http_get(addr).await {
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

async fn http_get(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .context("timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or("no status line"));
    }
    Ok(body.to_string())
}

/// Runs until Ctrl-C: the numbered steps of the module docs, one function each.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let plans = plan(&args)?;
    let sandbox_dir = prepare_state_dir(&args)?;
    warn_if_port_80_is_closed(&plans);
    let kubeconfig = args.state_dir.join("kubeconfig");

    let (sandbox, clients) = start_sandbox(&args, &plans, sandbox_dir, &kubeconfig).await?;
    install_meridian(&clients).await?;
    // The demo backends live in the drill actuator so kill/blackhole drills can stop them.
    let backends = Arc::new(LocalBackends::new());
    let control = start_controller(&args, &plans, &clients, backends.clone()).await?;
    let proxies = start_proxies(&args, &plans, &control).await?;
    if !args.no_demo {
        start_demo(&plans, &clients, &backends).await?;
        wait_demo(&plans, &clients, started).await?;
    }
    print_try(&args, &plans, &kubeconfig, &proxies);

    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    stop(sandbox, clients, &backends, control, proxies).await;
    Ok(())
}

/// Creates the state directory; with `--fresh`, forgets the saved objects. Returns the
/// sandbox's directory.
fn prepare_state_dir(args: &UpArgs) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state directory {}", args.state_dir.display()))?;
    let sandbox_dir = args.state_dir.join("sandbox");
    if args.fresh && sandbox_dir.exists() {
        std::fs::remove_dir_all(&sandbox_dir)
            .with_context(|| format!("removing {}", sandbox_dir.display()))?;
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
) -> anyhow::Result<(Sandbox, Vec<(String, kube::Client)>)> {
    let sandbox = Sandbox::start(SandboxConfig {
        clusters: plans.iter().map(|c| c.name.clone()).collect(),
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: args.base_port,
        state_dir: Some(sandbox_dir),
        kubeconfig_path: Some(kubeconfig.to_path_buf()),
        ..SandboxConfig::default()
    })
    .await
    .with_context(|| {
        format!(
            "starting the sandbox on ports {}.. (another `meridian up` running? pick --base-port)",
            args.base_port
        )
    })?;
    let mut clients = Vec::new();
    for ep in sandbox.clusters() {
        let config = kube::Config::new(ep.url.parse().context("sandbox URL")?);
        clients.push((ep.name.clone(), kube::Client::try_from(config)?));
        say(format!("sandbox: cluster {} at {}", ep.name, ep.url));
    }
    Ok((sandbox, clients))
}

/// Step 2: CRDs and the GatewayClass in every cluster.
async fn install_meridian(clients: &[(String, kube::Client)]) -> anyhow::Result<()> {
    for (name, client) in clients {
        install_crds(client)
            .await
            .with_context(|| format!("cluster {name}"))?;
        apply::apply_yaml(client, DEMO[1].1)
            .await
            .with_context(|| format!("GatewayClass in {name}"))?;
    }
    say("crds: Gateway API, MCS and the `meridian` GatewayClass installed in every cluster");
    Ok(())
}

/// The controller and the distribution server its proxies follow.
struct Control {
    server: Arc<DistributionServer>,
    controller: ControllerHandle,
    /// `http://` URL of the distribution server.
    url: String,
    /// Bearer token the proxies present.
    token: String,
}

/// Step 3a: the distribution server and the controller, through the controller crate's
/// [`DistributedDataPlane`] as `meridian controller --distribution-bind` runs it.
async fn start_controller(
    args: &UpArgs,
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    backends: Arc<LocalBackends>,
) -> anyhow::Result<Control> {
    let token = format!("{:032x}", rand::random::<u128>());
    let server = DistributionServer::start(ServerConfig::new(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.distribution_port),
        Some(token.clone()),
    ))
    .await
    .with_context(|| {
        format!(
            "starting the distribution server on port {}",
            args.distribution_port
        )
    })?;
    let server = Arc::new(server);
    let url = format!("http://{}", server.local_addr());
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
    let controller = Controller::start(controller_config).await?;
    say(format!(
        "controller: watching {} clusters, serving snapshots at {url}",
        plans.len()
    ));
    Ok(Control {
        server,
        controller,
        url,
        token,
    })
}

/// Every Gateway of a region gets its own address from 127.0.(10+i).0/24 (the first one
/// created, demo/web, gets the proxy's advertised .1), so examples can all use port 80.
fn address_pools(plans: &[ClusterPlan]) -> anyhow::Result<AddressPools> {
    let pools = plans
        .iter()
        .map(|p| {
            let first = p.proxy_address;
            let [a, b, c, _] = first.octets();
            // .254 is the east-west listener's (--multi-network).
            AddressRange::new(first, Ipv4Addr::new(a, b, c, 253)).map(|r| (p.name.clone(), r))
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    Ok(AddressPools::new(pools))
}

/// A running proxy and the task that keeps it following the controller.
struct Proxy {
    handle: Arc<ProxyHandle>,
    task: tokio::task::JoinHandle<()>,
    admin: SocketAddr,
}

/// Step 3b: one proxy per cluster, each following the controller.
async fn start_proxies(
    args: &UpArgs,
    plans: &[ClusterPlan],
    control: &Control,
) -> anyhow::Result<Vec<Proxy>> {
    let mut proxies = Vec::new();
    for (i, c) in plans.iter().enumerate() {
        let port = if args.admin_base_port == 0 {
            0
        } else {
            args.admin_base_port + i as u16
        };
        let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        proxies.push(start_proxy(args, c, admin, control).await?);
    }
    Ok(proxies)
}

async fn start_proxy(
    args: &UpArgs,
    c: &ClusterPlan,
    admin: SocketAddr,
    control: &Control,
) -> anyhow::Result<Proxy> {
    let handle = Arc::new(
        ProxyHandle::start(ProxyConfig {
            admin: Some(admin),
            locality: Locality {
                cluster: c.name.clone(),
                region: c.region.clone(),
                zone: c.zones[0].clone(),
            },
            east_west: args.multi_network.then(|| {
                let [a, b, c, _] = c.proxy_address.octets();
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, 254)), 15443)
            }),
        })
        .await
        .with_context(|| format!("starting the proxy of {} (admin {admin})", c.name))?,
    );
    let client = Client::new(ClientConfig::new(
        control.url.clone(),
        Some(control.token.clone()),
        Hello {
            proxy_id: format!("{}-proxy", c.name),
            cluster: c.name.clone(),
            region: c.region.clone(),
            zone: c.zones[0].clone(),
            gateways: None,
            address: Some(c.proxy_address.to_string()),
            east_west: handle.east_west_addr().map(|a| a.to_string()),
        },
    ))?;
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
    })
}

/// Step 4: echo backends in two zones per region, and the demo manifests in every cluster.
async fn start_demo(
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    backends: &LocalBackends,
) -> anyhow::Result<()> {
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
                .with_context(|| format!("starting the echo backend of zone {zone}"))?;
        }
    }
    for (c, (name, client)) in plans.iter().zip(clients) {
        for (file, text) in DEMO {
            apply::apply_yaml(client, text)
                .await
                .with_context(|| format!("applying examples/demo/{file} to {name}"))?;
        }
        apply::apply_object(client, &endpoint_slice(c), "demo")
            .await
            .with_context(|| format!("EndpointSlice in {name}"))?;
    }
    say("demo: echo backends in two zones per region; examples/demo applied to every cluster");
    Ok(())
}

/// Step 5: every Gateway Programmed, and each region answering.
async fn wait_demo(
    plans: &[ClusterPlan],
    clients: &[(String, kube::Client)],
    started: Instant,
) -> anyhow::Result<()> {
    wait_programmed(clients, Duration::from_secs(60)).await?;
    say(format!(
        "programmed: every Gateway Programmed=True in every cluster {:.1} s after start",
        started.elapsed().as_secs_f64()
    ));
    probe_regions(plans).await;
    Ok(())
}

/// What to try now.
fn print_try(args: &UpArgs, plans: &[ClusterPlan], kubeconfig: &Path, proxies: &[Proxy]) {
    let kc = kubeconfig.display();
    say("");
    say("Meridian is up. Try:");
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
    control.controller.shutdown().await;
    for Proxy { handle, task, .. } in proxies {
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
