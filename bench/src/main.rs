//! `meridian-bench`: Meridian measured side by side with its peers, in one run.
//!
//! ```text
//! cargo build --release -p meridian -p meridian-bench && target/release/meridian-bench all
//! ```
//!
//! 1. `match`: the pure route-matching cost per request at 10, 1k and 10k routes.
//! 2. `http`: one echo backend (`meridian echo`), then Meridian's proxy, nginx and haproxy in
//!    front of it with equivalent configurations (one worker each, keep-alive upstream), driven
//!    with the same `wrk` settings, interleaved, for several rounds: medians, CPU time per
//!    request of each proxy (whole process tree), ratios.
//! 3. `latency` (after `http`, on the same processes): open-loop latency p50/p99/p99.9 at
//!    25/50/75 % of each target's measured maximum, and every target at 25 % of Meridian's
//!    maximum for the added latency (see `fixed_rate`: the workspace's own open-loop generator,
//!    `meridian_drill::openloop`, because wrk2 is not packaged in Debian).
//! 4. `tls`: HTTPS throughput, TLS terminated by each proxy.
//! 5. `memory`: proxy RSS at 10 / 1k / 10k routes and per idle keep-alive connection.
//!
//! `load --port P --rate R` runs the open-loop generator alone against a running server, for
//! profiling by hand.
//!
//! `scale` (not part of `all`) measures the controller at scale: it starts the local API, a
//! controller and one proxy per cluster as processes of the meridian binary, bulk-applies
//! generated worlds of 1k / 10k (/ 50k on request) routes, and reports the apply rate,
//! convergence time, controller CPU per change by kind, apply → served latency, RSS per route
//! and translation times (see `scale`).
//!
//! Tables go to stdout as Markdown; progress to stderr. Nothing is installed: a missing tool is
//! reported with the Debian package that provides it, and the figures that need it are skipped.
//! Every run is bounded (rounds × targets × durations, start-up and answer timeouts); `all` with
//! the defaults takes about 7 minutes.
//!
//! What it owns: the benchmark runs, the processes they start (`stack`), and their tables. What
//! it may depend on: `meridian-model` (route matching, the snapshot format of the proxies it
//! starts), `meridian-drill` for its open-loop generator only, and anyhow/clap/tokio (a binary).
//! It drives the `meridian` binary as a process, never as a library; no crate depends on it.

mod fixed_rate;
mod http;
mod kapi;
mod latency;
mod matching;
mod memory;
mod scale;
mod stack;
mod sys;
mod tls;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::stack::{Kind, Proxy, Routes, Tls};

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
    All(Opts),
    /// Proxied throughput (closed loop, wrk) against peers.
    Http(Opts),
    /// Throughput, then latency at fixed rates (open loop) on the same processes.
    Latency(Opts),
    /// HTTPS throughput, TLS terminated by each proxy.
    Tls(Opts),
    /// Proxy memory by route count and per idle connection.
    Memory(Opts),
    /// Route-matching cost at several table sizes.
    Match,
    /// Open-loop load at a fixed rate against a running server (for profiling by hand).
    Load(LoadArgs),
    /// The controller at scale: bulk-apply rate, convergence, CPU per change by kind, apply →
    /// served latency, RSS per route (1k / 10k routes by default; 50k on request).
    Scale(scale::ScaleOpts),
}

/// Options of `load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// Requests per second.
    #[arg(long)]
    pub rate: f64,
    /// Seconds recorded (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Host header.
    #[arg(long, default_value = "bench")]
    pub host: String,
}

/// Options shared by the benchmarks.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Throughput rounds (each round runs every target once).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// The meridian binary (default: target/release/meridian under CARGO_TARGET_DIR or ./target).
    #[arg(long, env = "MERIDIAN_BIN")]
    pub meridian: Option<PathBuf>,
    /// A second meridian binary run as an extra proxy target `meridian-b` (for before/after
    /// comparisons in one run; the echo backend always uses --meridian).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Rates for the latency table, in % of each target's maximum.
    #[arg(long, value_delimiter = ',', default_values_t = vec![25u32, 50, 75])]
    pub rates: Vec<u32>,
    /// Seconds recorded per latency cell (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    pub latency_duration: u64,
    /// Rounds of the latency table (each round measures every cell once; medians reported).
    #[arg(long, default_value_t = 3)]
    pub latency_rounds: usize,
    /// Connections of the open-loop generator.
    #[arg(long, default_value_t = 64)]
    pub latency_connections: usize,
    /// Route-table sizes for the memory figure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 1_000, 10_000])]
    pub routes: Vec<usize>,
    /// Idle keep-alive connections for the per-connection memory figure (0 skips it).
    #[arg(long, default_value_t = 1_000)]
    pub idle: usize,
}

/// Tools and the scratch directory of one run.
pub struct Env {
    pub dir: PathBuf,
    pub meridian: PathBuf,
    pub compare: Option<PathBuf>,
    pub wrk: PathBuf,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub openssl: Option<PathBuf>,
}

impl Env {
    fn new(opts: &Opts) -> anyhow::Result<Env> {
        let wrk = sys::need("wrk", "wrk")?;
        let optional = |tool: &str, package: &str| match sys::need(tool, package) {
            Ok(p) => Some(p),
            Err(e) => {
                println!("Skipping {tool}: {e}.\n");
                None
            }
        };
        let nginx = optional("nginx", "nginx-light");
        let haproxy = optional("haproxy", "haproxy");
        let openssl = optional("openssl", "openssl");
        let meridian = meridian_bin(opts.meridian.as_ref(), opts.compare.as_ref())?;
        let dir = scratch_dir()?;
        Ok(Env {
            dir,
            meridian,
            compare: opts.compare.clone(),
            wrk,
            nginx,
            haproxy,
            openssl,
        })
    }

    /// Every proxy this run can start: (kind, name, executable).
    fn proxy_kinds(&self) -> Vec<(Kind, String, PathBuf)> {
        let mut v = vec![(
            Kind::Meridian,
            "meridian".to_string(),
            self.meridian.clone(),
        )];
        if let Some(c) = &self.compare {
            v.push((Kind::Meridian, "meridian-b".into(), c.clone()));
        }
        if let Some(n) = &self.nginx {
            v.push((Kind::Nginx, "nginx".into(), n.clone()));
        }
        if let Some(h) = &self.haproxy {
            v.push((Kind::Haproxy, "haproxy".into(), h.clone()));
        }
        v
    }

    /// Starts every proxy in front of the backend, in `dir/stage/<name>`.
    fn proxies(
        &self,
        stage: &str,
        backend_port: u16,
        routes: Routes,
        tls: Option<&Tls>,
    ) -> anyhow::Result<Vec<Proxy>> {
        let dir = self.dir.join(stage);
        self.proxy_kinds()
            .into_iter()
            .map(|(kind, name, bin)| {
                stack::start(kind, &name, &bin, &dir, backend_port, routes, tls)
            })
            .collect()
    }
}

/// The meridian binary to run (`--meridian`, else target/release/meridian under
/// CARGO_TARGET_DIR or ./target); it and `compare` must exist.
fn meridian_bin(meridian: Option<&PathBuf>, compare: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let meridian = meridian.cloned().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from);
        target.join("release/meridian")
    });
    for bin in std::iter::once(&meridian).chain(compare) {
        if !bin.exists() {
            bail!(
                "{} not found: build it first with `cargo build --release -p meridian` \
                 (or pass --meridian PATH)",
                bin.display()
            );
        }
    }
    Ok(meridian)
}

/// The run's scratch directory (configurations, logs, the local API's state).
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Throughput (and optionally latency) on plain HTTP, on one set of processes.
fn http_and_latency(env: &Env, opts: &Opts, with_latency: bool) -> anyhow::Result<()> {
    let backend = stack::backend(&env.meridian, &env.dir)?;
    let proxies = env.proxies("http", backend.port, Routes::CatchAll, None)?;
    let mut targets = vec![http::Target::direct(backend.port)];
    targets.extend(proxies.iter().map(http::Target::of));
    let maxes = http::throughput(&env.wrk, opts, &targets, "Proxied HTTP/1.1 keep-alive")?;
    if with_latency {
        section("latency");
        latency::run(opts, &targets, &maxes)?;
    }
    Ok(())
}

fn section(name: &str) {
    eprintln!("== {name} (load average {})", sys::load());
}

fn header() {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Run: {date}; {cpus} CPUs; load average at start {}.\n",
        sys::load()
    );
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let start = Instant::now();
    match cli.command {
        Cmd::Match => matching::run()?,
        Cmd::Load(a) => {
            let duration = std::time::Duration::from_secs(a.duration);
            let r = fixed_rate::run(&fixed_rate::Config {
                addr: sys::loopback(a.port),
                host: a.host,
                rate: a.rate,
                connections: a.connections,
                warmup: std::time::Duration::from_secs(1),
                duration,
            })?;
            println!(
                "{:.0} req/s due, {:.0} answered/s: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, \
                 max {:.0} µs; send delay p50 {:.0} µs, p99 {:.0} µs; {} of {} due answered, {} errors, \
                 {} unanswered; \
                 generator CPU {:.1} µs/req; answered in total (warm-up included) {}",
                a.rate,
                r.answered_per_s,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.send_delay_p50_us,
                r.send_delay_p99_us,
                r.ok,
                r.due,
                r.errors,
                r.unfinished,
                r.generator_cpu_us_per_req,
                r.total_ok
            );
        }
        Cmd::All(opts) => {
            header();
            let env = Env::new(&opts)?;
            section("match");
            matching::run()?;
            println!();
            section("http");
            http_and_latency(&env, &opts, true)?;
            section("tls");
            tls::run(&env, &opts)?;
            section("memory");
            memory::run(&env, &opts)?;
            println!(
                "Load average at the end {}; whole run {:.0} s.",
                sys::load(),
                start.elapsed().as_secs_f64()
            );
        }
        Cmd::Http(opts) => {
            header();
            http_and_latency(&Env::new(&opts)?, &opts, false)?;
        }
        Cmd::Latency(opts) => {
            header();
            http_and_latency(&Env::new(&opts)?, &opts, true)?;
        }
        Cmd::Tls(opts) => {
            header();
            tls::run(&Env::new(&opts)?, &opts)?;
        }
        Cmd::Memory(opts) => {
            header();
            memory::run(&Env::new(&opts)?, &opts)?;
        }
        Cmd::Scale(opts) => {
            header();
            let meridian = meridian_bin(opts.meridian.as_ref(), opts.compare.as_ref())?;
            let dir = scratch_dir()?;
            match scale::run(&opts, meridian, &dir) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e) => {
                    eprintln!("logs kept in {}", dir.display());
                    return Err(e);
                }
            }
        }
    }
    eprintln!("done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
