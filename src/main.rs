//! The `meridian` binary: one executable for every role.
//!
//! ```text
//! meridian proxy    --snapshot FILE        serve a snapshot (data plane)
//! meridian sandbox  --clusters a,b,c       local multi-cluster Kubernetes API
//! meridian crds     [--write DIR]          print (or write) the CRDs Meridian installs
//! meridian echo     --listen ADDR          demo backend that reports who served the request
//! ```
//! Roles still to come (controller, up, drill, status, explain) are tracked as issues and are not
//! listed until they work.

mod echo;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(args) => meridian_proxy::run(args),
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
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
