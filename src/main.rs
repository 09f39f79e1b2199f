//! The `meridian` binary: one executable for every role.
//!
//! ```text
//! meridian up                              the local multi-region demo (sandbox, controller,
//!                                          a proxy per region, demo backends)
//! meridian controller --cluster … [--distribution-bind ADDR]
//!                                          watch member clusters, write status, serve snapshots
//! meridian proxy    --controller URL | --snapshot FILE
//!                                          serve Gateways (data plane)
//! meridian drill    --target REGION        fail a region under load and write a report
//! meridian sandbox  --clusters a,b,c       local multi-cluster Kubernetes API
//! meridian crds     [--write DIR]          print (or write) the CRDs Meridian installs
//! meridian echo     --listen ADDR          demo backend that reports who served the request
//! ```
//! Still to come (tracked as issues): `status` and `explain`.

mod apply;
mod dataplane;
mod drill;
mod echo;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

// The proxy allocates and frees per-request buffers (pingora); glibc malloc/free was ~15 % of
// its CPU in a profile. mimalloc saves ~2.5 µs CPU per request at full load (alternated A/B of
// the same commit); with transparent huge pages on it costs ~8 MiB base RSS, so `main` turns
// THP off for the process (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "meridian",
    version,
    about = "Multi-cluster Gateway API traffic controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data-plane proxy.
    Proxy(meridian_proxy::ProxyArgs),
    /// Run the local multi-cluster Kubernetes API sandbox.
    Sandbox(meridian_sandbox::SandboxArgs),
    /// Print the CRDs Meridian installs, or write them to a directory.
    Crds {
        /// Write one YAML file per CRD into this directory instead of printing.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Run a demo echo backend.
    Echo(echo::EchoArgs),
    /// Run the multi-cluster controller.
    Controller {
        #[command(flatten)]
        args: meridian_controller::ControllerArgs,
        /// Bearer token proxies must present to the distribution server.
        #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Accept proxies without a token (local runs only).
        #[arg(long)]
        insecure: bool,
        /// Give every Gateway of CLUSTER its own address from RANGE (`A.B.C.D-A.B.C.E` or
        /// `A.B.C.D/N`) instead of the proxies' advertised address; repeat per cluster. The
        /// proxies bind the Gateway's address, so it must be routed to them.
        #[arg(long = "gateway-addresses", value_name = "CLUSTER=RANGE")]
        gateway_addresses: Vec<String>,
        /// After a start, how long a cluster whose proxies have not reconnected yet keeps the
        /// Programmed condition and addresses its Gateways' status has (instead of reporting an
        /// outage that is only the proxies reconnecting). Default: the proxies' longest
        /// reconnect delay plus a margin; 0 turns it off.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        proxy_reconnect_grace: std::time::Duration,
    },
    /// Run everything locally: three clusters, the controller, a proxy per region and a demo.
    Up(up::UpArgs),
    /// Fail a region, cluster or zone on purpose under load and report how traffic moved.
    Drill(drill::DrillArgs),
}

fn main() -> anyhow::Result<()> {
    // mimalloc's arenas backed by transparent huge pages cost ~8 MiB of RSS and ~9 KiB per route
    // at 1k routes; without THP the CPU gain stays (docs/benchmarks.md, "Allocator"). Failing is
    // harmless: the process only uses more memory.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("note: could not opt out of transparent huge pages: {e}");
    }
    let cli = Cli::parse();
    // `up` talks to a person through its own progress lines; component logs would drown them.
    init_tracing(
        if matches!(cli.command, Command::Up(_) | Command::Drill(_)) {
            "warn"
        } else {
            "info"
        },
    );
    match cli.command {
        Command::Proxy(args) => Ok(meridian_proxy::run(args)?),
        Command::Sandbox(args) => runtime()?.block_on(meridian_sandbox::run(args)),
        Command::Crds { write: None } => {
            let yaml =
                meridian_crds::render_yaml(&meridian_crds::all_crds()).context("rendering CRDs")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Crds { write: Some(dir) } => {
            let files = meridian_crds::write_files(&dir)
                .with_context(|| format!("writing CRDs into {}", dir.display()))?;
            for f in files {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::Echo(args) => runtime()?.block_on(echo::run(args)),
        Command::Up(args) => runtime()?.block_on(up::run(args)),
        Command::Drill(args) => {
            let code = runtime()?.block_on(drill::run(args))?;
            std::process::exit(code)
        }
        Command::Controller {
            args,
            token,
            insecure,
            gateway_addresses,
            proxy_reconnect_grace,
        } => {
            let pools = address_pools(&gateway_addresses)?;
            runtime()?.block_on(controller(
                args,
                token,
                insecure,
                pools,
                proxy_reconnect_grace,
            ))
        }
    }
}

/// A Gateway API duration (`10s`, `1m30s`, `500ms`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    Ok(std::time::Duration::from_millis(
        meridian_controller::translate::parse_duration_ms(s)?.unwrap_or(0),
    ))
}

/// `meridian controller`: with `--distribution-bind` the proxies get their snapshots from this
/// process and Gateways are Programmed only once they acknowledge them.
async fn controller(
    args: meridian_controller::ControllerArgs,
    token: Option<String>,
    insecure: bool,
    pools: dataplane::addresses::AddressPools,
    reconnect_grace: std::time::Duration,
) -> anyhow::Result<()> {
    let Some(bind) = args.distribution_bind else {
        if !pools.is_empty() {
            anyhow::bail!(
                "--gateway-addresses needs --distribution-bind: addresses are handed out to \
                 Gateways served by proxies that connect to this controller"
            );
        }
        return meridian_controller::serve(args, None).await;
    };
    if token.is_none() && !insecure {
        anyhow::bail!(
            "--distribution-bind needs --token (or MERIDIAN_TOKEN) so only your proxies connect; \
             pass --insecure to run without one on a trusted local machine"
        );
    }
    let mut cfg = meridian_distribution::ServerConfig::new(bind, token);
    cfg.insecure = insecure;
    let server = meridian_distribution::DistributionServer::start(cfg)
        .await
        .with_context(|| format!("starting the distribution server on {bind}"))?;
    tracing::info!(addr = %server.local_addr(), "distribution server listening");
    let data_plane =
        dataplane::DistributedDataPlane::new(std::sync::Arc::new(server), pools, reconnect_grace);
    meridian_controller::serve(args, Some(data_plane)).await
}

/// `--gateway-addresses CLUSTER=RANGE` values, checked before anything starts.
fn address_pools(values: &[String]) -> anyhow::Result<dataplane::addresses::AddressPools> {
    let mut pools = Vec::new();
    for v in values {
        let Some((cluster, range)) = v.split_once('=') else {
            anyhow::bail!(
                "--gateway-addresses {v:?}: expected CLUSTER=RANGE, e.g. east=10.0.10.0/24"
            );
        };
        let range: dataplane::addresses::AddressRange = range
            .parse()
            .map_err(|e| anyhow::anyhow!("--gateway-addresses {v:?}: {e}"))?;
        if pools.iter().any(|(c, _)| c == cluster) {
            anyhow::bail!("--gateway-addresses: cluster {cluster:?} is given twice");
        }
        pools.push((cluster.to_string(), range));
    }
    Ok(dataplane::addresses::AddressPools::new(pools))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
