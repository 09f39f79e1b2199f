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
//! meridian status   [-o json] [--watch]    clusters, proxies, Gateways, backends (from the
//!                                          controller's admin listener)
//! meridian explain  --gateway NS/NAME --host H --path P [--fail REGION|ZONE|CLUSTER]
//!                                          which rule and endpoints serve a request
//! ```
//!
//! Installed as `kubectl-meridian` (a symlink or copy on PATH), the same binary is the kubectl
//! plugin: `kubectl meridian status` runs it with argv[0] `kubectl-meridian`, and help and
//! errors then name the command `kubectl meridian`.
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
    /// Clusters, proxies, Gateways and backends across every member cluster, from the
    /// controller.
    Status(meridian_controller::inspect::cli::StatusArgs),
    /// Which listener, rule and endpoints would serve a request (and where it goes if a
    /// region, zone or cluster fails), from the controller's live data; nothing is sent.
    Explain(meridian_controller::inspect::cli::ExplainArgs),
}

/// The name the kubectl plugin is installed under (`kubectl meridian …` runs it).
const KUBECTL_PLUGIN: &str = "kubectl-meridian";

/// Parses the command line; invoked as the kubectl plugin, help and errors say
/// `kubectl meridian`.
fn parse_cli() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let as_plugin = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == KUBECTL_PLUGIN);
    if !as_plugin {
        return Cli::parse();
    }
    let matches = Cli::command()
        .name("kubectl meridian")
        .bin_name("kubectl meridian")
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, one per line; never a backtrace (RUST_BACKTRACE is for panics,
            // and a refused bind or a bad kubeconfig is not one).
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = parse_cli();
    // mimalloc's arenas backed by transparent huge pages cost ~8 MiB of RSS and ~9 KiB per route
    // at 1k routes; without THP the CPU gain stays (docs/benchmarks.md, "Allocator"). Failing is
    // harmless: the process only uses more memory. The local API alone keeps THP: its memory
    // grows with every write it keeps (object versions, watch history), and first touches of
    // fresh 4 KiB pages were a tenth of its CPU in a cold start's status writes (issue #20),
    // while its RSS has no budget.
    if !matches!(cli.command, Command::Sandbox(_))
        && let Err(e) = nix::sys::prctl::set_thp_disable(true)
    {
        eprintln!("note: could not opt out of transparent huge pages: {e}");
    }
    // `up` talks to a person through its own progress lines; component logs would drown them.
    init_tracing(
        if matches!(
            cli.command,
            Command::Up(_)
                | Command::Drill(_)
                | Command::Cluster(_)
                | Command::Status(_)
                | Command::Explain(_)
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
        Command::Status(args) => {
            Ok(runtime()?.block_on(meridian_controller::inspect::cli::status(args))?)
        }
        Command::Explain(args) => {
            Ok(runtime()?.block_on(meridian_controller::inspect::cli::explain(args))?)
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
