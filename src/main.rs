//! The `meridian` binary: one executable for every role.
//!
//! ```text
//! meridian up                              the local multi-region demo (sandbox, controller,
//!                                          a proxy per region, demo backends)
//! meridian controller --cluster … [--distribution-bind ADDR]
//!                                          watch member clusters, write status, serve snapshots
//! meridian cluster  add NAME --context C --region R --controller-context CC | list | remove NAME
//!                                          member-cluster Secrets (a dedicated token per member)
//! meridian proxy    --controller URL | --snapshot FILE
//!                                          serve Gateways (data plane)
//! meridian drill    --target REGION        fail a region under load and write a report
//! meridian sandbox  --clusters a,b,c       local multi-cluster Kubernetes API
//! meridian crds     [--write DIR]          print (or write) the CRDs Meridian installs
//! meridian echo     --listen ADDR          demo backend that reports who served the request
//! ```
//! Still to come (tracked as issues): `status` and `explain`.
//!
//! This binary only dispatches: it parses the command line, sets up the process (allocator,
//! transparent-huge-page opt-out, tracing, the async runtime) and calls the entry point of the
//! crate that owns the command — `meridian-proxy`, `meridian-sandbox`, `meridian-crds`,
//! `meridian-controller` (which also starts the distribution server), `meridian-drill`, and
//! `meridian-local` (`up` and `echo`, the local demo).

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
    Echo(meridian_local::echo::EchoArgs),
    /// Run the multi-cluster controller.
    Controller(meridian_controller::ControllerArgs),
    /// Add, list or remove member clusters (kubeconfig Secrets the controller reads).
    Cluster(meridian_controller::members::cli::ClusterArgs),
    /// Run everything locally: three clusters, the controller, a proxy per region and a demo.
    Up(meridian_local::UpArgs),
    /// Fail a region, cluster or zone on purpose under load and report how traffic moved.
    Drill(meridian_drill::DrillArgs),
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
        if matches!(
            cli.command,
            Command::Up(_) | Command::Drill(_) | Command::Cluster(_)
        ) {
            "warn"
        } else {
            "info"
        },
    );
    match cli.command {
        Command::Proxy(args) => Ok(meridian_proxy::run(args)?),
        Command::Sandbox(args) => Ok(runtime()?.block_on(meridian_sandbox::run(args))?),
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
        Command::Echo(args) => Ok(runtime()?.block_on(meridian_local::echo::run(args))?),
        Command::Up(args) => Ok(runtime()?.block_on(meridian_local::run(args))?),
        Command::Drill(args) => {
            let code = runtime()?.block_on(meridian_drill::run(args))?;
            std::process::exit(code)
        }
        Command::Controller(args) => {
            Ok(runtime()?.block_on(meridian_controller::serve(args, None))?)
        }
        Command::Cluster(args) => {
            Ok(runtime()?.block_on(meridian_controller::members::cli::run(args))?)
        }
    }
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
