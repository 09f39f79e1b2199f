//! Runs the multi-cluster sandbox on its own (the `meridian sandbox` command does the same).
//!
//! How to run:
//!   cargo run -p meridian-sandbox --example sandbox -- --clusters east,west --base-port 6550 --no-persist
//!   KUBECONFIG=.meridian/sandbox/kubeconfig kubectl --context east get namespaces
//!   curl -s http://127.0.0.1:6550/readyz

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: meridian_sandbox::SandboxArgs,
}

#[tokio::main]
async fn main() -> Result<(), meridian_sandbox::SandboxError> {
    meridian_sandbox::run(Cli::parse().args).await
}
