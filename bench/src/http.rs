//! Closed-loop throughput with `wrk`: direct vs Meridian vs nginx vs haproxy, in one run.
//!
//! The same `wrk` command drives every target; targets are interleaved within each round so
//! drift on a shared machine hits all of them; medians over rounds. CPU time per request is read
//! from `/proc` over each proxy's whole process tree (nginx works in its worker, not its master).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::Opts;
use crate::stack::Proxy;
use crate::sys::{cpu_ticks_tree, median};

/// Something `wrk` can drive.
pub struct Target {
    pub name: String,
    pub port: u16,
    /// Process whose CPU is sampled (with its children); `None` for the direct backend.
    pub pid: Option<u32>,
    pub tls: bool,
}

impl Target {
    pub fn direct(port: u16) -> Target {
        Target {
            name: "direct".into(),
            port,
            pid: None,
            tls: false,
        }
    }

    pub fn of(p: &Proxy) -> Target {
        Target {
            name: p.name.clone(),
            port: p.port,
            pid: Some(p.pid),
            tls: p.tls,
        }
    }
}

#[derive(Default, Clone)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: Option<f64>,
    errors: u64,
}

fn parse_latency_us(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

fn run_wrk(
    wrk: &Path,
    t: &Target,
    connections: usize,
    duration: u64,
    sample_cpu: bool,
) -> anyhow::Result<Sample> {
    let pid = t.pid.filter(|_| sample_cpu);
    let before = pid.and_then(cpu_ticks_tree);
    let scheme = if t.tls { "https" } else { "http" };
    let out = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{duration}s"),
            "--latency",
            "--timeout",
            "5s",
            &format!("{scheme}://127.0.0.1:{}/", t.port),
        ])
        .output()
        .context("running wrk")?;
    let after = pid.and_then(cpu_ticks_tree);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = Sample::default();
    let mut requests = 0u64;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            s.p50_us = parse_latency_us(v).unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("99%") {
            s.p99_us = parse_latency_us(v).unwrap_or(0.0);
        } else if l.contains("requests in") {
            requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            s.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            s.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if s.rps == 0.0 {
        bail!(
            "wrk printed no throughput for {} (port {}):\n{text}{}",
            t.name,
            t.port,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let (Some(b), Some(a)) = (before, after)
        && requests > 0
    {
        // Clock ticks are 1/100 s on Linux.
        s.cpu_us_per_req = Some((a.saturating_sub(b)) as f64 * 10_000.0 / requests as f64);
    }
    Ok(s)
}

/// Runs `wrk` against every target (warm-up, then interleaved rounds), prints a table under
/// `title` and returns the median req/s of each target, in order.
pub fn throughput(
    wrk: &Path,
    opts: &Opts,
    targets: &[Target],
    title: &str,
) -> anyhow::Result<Vec<f64>> {
    for t in targets {
        run_wrk(wrk, t, opts.connections, 1, false)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    for round in 0..opts.rounds {
        for (i, t) in targets.iter().enumerate() {
            let s = run_wrk(wrk, t, opts.connections, opts.duration, true)?;
            eprintln!(
                "round {}: {:<12} {:>9.0} req/s p50 {:>6.0} µs p99 {:>6.0} µs cpu {}",
                round + 1,
                t.name,
                s.rps,
                s.p50_us,
                s.p99_us,
                s.cpu_us_per_req
                    .map_or("–".into(), |c| format!("{c:.1} µs/req"))
            );
            samples[i].push(s);
        }
    }

    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let rps: Vec<f64> = (0..targets.len()).map(|i| med(i, |s| s.rps)).collect();
    let find = |n: &str| targets.iter().position(|t| t.name == n).map(|i| rps[i]);
    let direct = find("direct");
    let nginx = find("nginx");
    println!(
        "## {title}: wrk -t1 -c{}, {} s × {} rounds, interleaved (medians)",
        opts.connections, opts.duration, opts.rounds
    );
    println!();
    println!("| target | req/s | p50 µs | p99 µs | CPU µs/req | vs direct | vs nginx | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, t) in targets.iter().enumerate() {
        let cpu: Vec<f64> = samples[i].iter().filter_map(|s| s.cpu_us_per_req).collect();
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            t.name,
            rps[i],
            med(i, |s| s.p50_us),
            med(i, |s| s.p99_us),
            if cpu.is_empty() {
                "–".to_string()
            } else {
                format!("{:.1}", median(cpu))
            },
            direct.map_or("–".into(), |d| format!("{:.2}", rps[i] / d)),
            nginx.map_or("–".into(), |n| format!("{:.2}", rps[i] / n)),
            errors
        );
    }
    println!();
    Ok(rps)
}
