//! Latency at fixed request rates, coordinated-omission safe (see [`crate::fixed_rate`]).
//!
//! Two tables:
//! 1. each target at 25 / 50 / 75 % of its *own* maximum (from the throughput run): how each
//!    system behaves at the same relative load;
//! 2. every target at one *common* rate, 25 % of Meridian's maximum: the latency each proxy adds
//!    over the direct connection at the same offered load (the targets.md goal).
//!
//! Every cell is measured `--latency-rounds` times; rounds are interleaved (round by round, rate
//! by rate, target by target) so a burst of load from elsewhere on the machine hits different
//! cells in different rounds, and each column shows the median over the rounds.

use std::time::Duration;

use crate::Opts;
use crate::fixed_rate::{self, Report};
use crate::http::Target;
use crate::sys::{cpu_ticks_tree, loopback, median};

/// One open-loop run, and the target's CPU µs per answered request during it (warm-up
/// included on both sides of the division, so the ratio holds).
fn measure(opts: &Opts, t: &Target, rate: f64) -> anyhow::Result<Cell> {
    let before = t.pid.and_then(cpu_ticks_tree);
    let r = fixed_rate::run(&fixed_rate::Config {
        addr: loopback(t.port),
        host: "bench".into(),
        rate,
        connections: opts.latency_connections,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(opts.latency_duration),
    })?;
    let after = t.pid.and_then(cpu_ticks_tree);
    let answered = r.total_ok + r.total_errors;
    let cpu = match (before, after) {
        (Some(b), Some(a)) if answered > 0 => {
            // Clock ticks are 1/100 s.
            Some(a.saturating_sub(b) as f64 * 10_000.0 / answered as f64)
        }
        _ => None,
    };
    eprintln!(
        "latency: {:<12} {:>7.0} req/s → p50 {:>7.0} µs p99 {:>8.0} µs p99.9 {:>8.0} µs \
         (send delay p99 {:.0} µs, {} errors, {} unfinished, CPU {} µs/req, generator CPU \
         {:.1} µs/req)",
        t.name,
        rate,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.send_delay_p99_us,
        r.errors,
        r.unfinished,
        cpu_cell(cpu),
        r.generator_cpu_us_per_req
    );
    Ok((r, cpu))
}

fn cpu_cell(cpu: Option<f64>) -> String {
    cpu.map_or("–".into(), |c| format!("{c:.1}"))
}

fn flags(r: &Report) -> String {
    let mut f = Vec::new();
    if r.errors > 0 {
        f.push(format!("{} errors", r.errors));
    }
    // Half the requests waited a millisecond before a connection could even send them: the
    // machine (generator + target + backend) did not keep up with the schedule.
    if r.send_delay_p50_us > 1_000.0 {
        f.push("saturated".into());
    }
    if r.unfinished > 0 {
        f.push(format!(
            "{} of {} unanswered (overloaded)",
            r.unfinished, r.due
        ));
    }
    if f.is_empty() {
        "–".into()
    } else {
        f.join(", ")
    }
}

/// One measured cell: the generator's report and the target's CPU µs per request.
type Cell = (Report, Option<f64>);

/// One cell over several rounds: the median of every figure, the sum of the failures.
fn combine(runs: &[Cell]) -> Cell {
    let m = |f: fn(&Report) -> f64| median(runs.iter().map(|(r, _)| f(r)).collect());
    let cpus: Vec<f64> = runs.iter().filter_map(|(_, c)| *c).collect();
    let r = Report {
        due: runs.iter().map(|(r, _)| r.due).sum(),
        ok: runs.iter().map(|(r, _)| r.ok).sum(),
        errors: runs.iter().map(|(r, _)| r.errors).sum(),
        unfinished: runs.iter().map(|(r, _)| r.unfinished).sum(),
        p50_us: m(|r| r.p50_us),
        p99_us: m(|r| r.p99_us),
        p999_us: m(|r| r.p999_us),
        max_us: m(|r| r.max_us),
        send_delay_p99_us: m(|r| r.send_delay_p99_us),
        send_delay_p50_us: m(|r| r.send_delay_p50_us),
        generator_cpu_us_per_req: m(|r| r.generator_cpu_us_per_req),
        answered_per_s: m(|r| r.answered_per_s),
        total_ok: runs.iter().map(|(r, _)| r.total_ok).sum(),
        total_errors: runs.iter().map(|(r, _)| r.total_errors).sum(),
    };
    (r, (!cpus.is_empty()).then(|| median(cpus)))
}

/// Every cell of both tables, one entry per round.
struct Cells {
    /// `own[target][rate]`: each target at each % of its own maximum.
    own: Vec<Vec<Vec<Cell>>>,
    /// `same[target]`: each target at the common rate.
    same: Vec<Vec<Cell>>,
}

/// `targets[i]` can sustain `maxes[i]` req/s (closed loop); prints both tables.
pub fn run(opts: &Opts, targets: &[Target], maxes: &[f64]) -> anyhow::Result<()> {
    let rounds = opts.latency_rounds.max(1);
    let meridian = targets.iter().position(|t| t.name == "meridian");
    let direct = targets.iter().position(|t| t.name == "direct");
    let base_pct = opts.rates.first().copied().unwrap_or(25);
    let common = meridian.map(|m| maxes[m] * f64::from(base_pct) / 100.0);
    let cells = measure_rounds(opts, targets, maxes, common, rounds)?;
    print_own_table(opts, targets, maxes, &cells.own, rounds);
    if let (Some(rate), Some(d)) = (common, direct) {
        print_added_table(targets, &cells.same, rate, base_pct, d, rounds);
    }
    Ok(())
}

/// Measures every cell `rounds` times, interleaved (module docs).
fn measure_rounds(
    opts: &Opts,
    targets: &[Target],
    maxes: &[f64],
    common: Option<f64>,
    rounds: usize,
) -> anyhow::Result<Cells> {
    let mut own: Vec<Vec<Vec<Cell>>> = vec![vec![Vec::new(); opts.rates.len()]; targets.len()];
    let mut same: Vec<Vec<Cell>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        eprintln!("latency round {} of {rounds}", round + 1);
        for (j, &pct) in opts.rates.iter().enumerate() {
            for (i, t) in targets.iter().enumerate() {
                own[i][j].push(measure(opts, t, maxes[i] * f64::from(pct) / 100.0)?);
            }
        }
        if let Some(rate) = common {
            for (i, t) in targets.iter().enumerate() {
                same[i].push(measure(opts, t, rate)?);
            }
        }
    }
    Ok(Cells { own, same })
}

/// Table 1: each target at each % of its own maximum.
fn print_own_table(
    opts: &Opts,
    targets: &[Target],
    maxes: &[f64],
    own: &[Vec<Vec<Cell>>],
    rounds: usize,
) {
    println!(
        "## Latency at fixed rates (open loop, from due time; {} connections; 1 s warm-up + {} s \
         per cell; median of {rounds} interleaved rounds)",
        opts.latency_connections, opts.latency_duration
    );
    println!();
    println!(
        "| target | % of own max | rate req/s | answered/s | p50 µs | p99 µs | p99.9 µs | max µs | \
         send delay p50 / p99 µs | CPU µs/req | generator CPU µs/req | problems |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (i, t) in targets.iter().enumerate() {
        for (j, &pct) in opts.rates.iter().enumerate() {
            let (r, cpu) = combine(&own[i][j]);
            println!(
                "| {} | {pct} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {} | \
                 {:.1} | {} |",
                t.name,
                maxes[i] * f64::from(pct) / 100.0,
                r.answered_per_s,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.send_delay_p50_us,
                r.send_delay_p99_us,
                cpu_cell(cpu),
                r.generator_cpu_us_per_req,
                flags(&r)
            );
        }
    }
    println!();
}

/// Table 2: every target at the common rate, and what it adds over the direct connection
/// (`targets[direct]`).
fn print_added_table(
    targets: &[Target],
    same: &[Vec<Cell>],
    rate: f64,
    base_pct: u32,
    direct: usize,
    rounds: usize,
) {
    println!(
        "## Added latency at one rate: {rate:.0} req/s ({base_pct} % of Meridian's max), every \
         target (median of {rounds} rounds)"
    );
    println!();
    println!(
        "| target | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | \
         CPU µs/req | problems |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let base = combine(&same[direct]).0;
    for (i, t) in targets.iter().enumerate() {
        let (r, cpu) = combine(&same[i]);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            t.name,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.p50_us - base.p50_us,
            r.p99_us - base.p99_us,
            r.p999_us - base.p999_us,
            cpu_cell(cpu),
            flags(&r)
        );
    }
    println!();
}
