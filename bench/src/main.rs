//! `meridian-bench`: Meridian measured side by side with its peers, in one run.
//!
//! ```text
//! cargo build --release && cargo run --release -p meridian-bench -- all
//! ```
//!
//! 1. `http`: starts one echo backend (`meridian echo`), then Meridian's proxy, nginx and haproxy
//!    in front of it with equivalent configurations (one worker each, keep-alive upstream), and
//!    drives the backend directly and each proxy with the same `wrk` settings, interleaved, for
//!    several rounds. Prints medians, CPU time per request of each proxy, and ratios.
//! 2. `match`: the pure route-matching cost per request at 10, 1k and 10k routes.
//!
//! Nothing is installed: a missing tool is reported with the Debian package that provides it.
//! Every run is bounded (rounds × targets × duration, plus start-up timeouts).

mod http;
mod matching;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "meridian-bench",
    about = "Meridian vs nginx/haproxy/direct, side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every benchmark in turn.
    All(http::HttpArgs),
    /// Proxied throughput and latency against peers.
    Http(http::HttpArgs),
    /// Route-matching cost at several table sizes.
    Match,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::All(args) => {
            matching::run()?;
            println!();
            http::run(&args)
        }
        Cmd::Http(args) => http::run(&args),
        Cmd::Match => matching::run(),
    }
}
