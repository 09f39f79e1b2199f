//! `meridian proxy` alone, for profiling and before/after CPU-per-request rounds of the data
//! plane (docs/benchmarks.md, "Lean path: per-request cost cuts (session 7)"): the same entry
//! point (`meridian_proxy::run`), allocator (mimalloc), transparent-huge-page opt-out and log
//! filter (`MERIDIAN_LOG`) as the `meridian` binary, without the controller, sandbox and kube
//! client, so a release build after a change to proxy/ or model/ relinks much less.
//!
//! `cargo build --release -p meridian-bench --example meridian_proxy`, then
//! `meridian_proxy --snapshot snap.json --workers 1` (any `meridian proxy` flags).

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    proxy: meridian_proxy::ProxyArgs,
}

fn main() -> anyhow::Result<()> {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("note: could not opt out of transparent huge pages: {e}");
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(meridian_proxy::run(cli.proxy)?)
}
