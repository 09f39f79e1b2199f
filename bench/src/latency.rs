//! Latency at fixed request rates, coordinated-omission safe (see [`crate::openloop`]).
//!
//! Two tables:
//! 1. each target at 25 / 50 / 75 % of its *own* maximum (from the throughput run): how each
//!    system behaves at the same relative load;
//! 2. every target at one *common* rate, 25 % of Meridian's maximum: the latency each proxy adds
//!    over the direct connection at the same offered load (the targets.md goal).
//!
//! Runs are interleaved (rate by rate, target by target), one run per cell.

use std::time::Duration;

use crate::Opts;
use crate::http::Target;
use crate::openloop::{self, Report};
use crate::sys::{cpu_ticks_tree, loopback};

/// One open-loop run, and the target's CPU µs per answered request during it (warm-up
/// included on both sides of the division, so the ratio holds).
fn measure(opts: &Opts, t: &Target, rate: f64) -> anyhow::Result<(Report, Option<f64>)> {
    let before = t.pid.and_then(cpu_ticks_tree);
    let r = openloop::run(&openloop::Config {
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

/// `targets[i]` can sustain `maxes[i]` req/s (closed loop); prints both tables.
pub fn run(opts: &Opts, targets: &[Target], maxes: &[f64]) -> anyhow::Result<()> {
    let mut own: Vec<Vec<(Report, Option<f64>)>> = vec![Vec::new(); targets.len()];
    for &pct in &opts.rates {
        for (i, t) in targets.iter().enumerate() {
            let r = measure(opts, t, maxes[i] * f64::from(pct) / 100.0)?;
            own[i].push(r);
        }
    }
    println!(
        "## Latency at fixed rates (open loop, from due time; {} connections, 1 s warm-up + {} s \
         per cell)",
        opts.latency_connections, opts.latency_duration
    );
    println!();
    println!(
        "| target | % of own max | rate req/s | achieved | p50 µs | p99 µs | p99.9 µs | max µs | \
         send delay p50 / p99 µs | CPU µs/req | generator CPU µs/req | problems |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (i, t) in targets.iter().enumerate() {
        for (j, &pct) in opts.rates.iter().enumerate() {
            let (r, cpu) = &own[i][j];
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
                cpu_cell(*cpu),
                r.generator_cpu_us_per_req,
                flags(r)
            );
        }
    }
    println!();

    let Some(m) = targets.iter().position(|t| t.name == "meridian") else {
        return Ok(());
    };
    let Some(d) = targets.iter().position(|t| t.name == "direct") else {
        return Ok(());
    };
    let base_pct = opts.rates.first().copied().unwrap_or(25);
    let common = maxes[m] * f64::from(base_pct) / 100.0;
    let mut same = Vec::new();
    for t in targets {
        let r = measure(opts, t, common)?;
        same.push(r);
    }
    println!(
        "## Added latency at one rate: {common:.0} req/s ({base_pct} % of Meridian's max), \
         every target"
    );
    println!();
    println!(
        "| target | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | \
         CPU µs/req | problems |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (i, t) in targets.iter().enumerate() {
        let (r, cpu) = &same[i];
        let b = &same[d].0;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            t.name,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.p50_us - b.p50_us,
            r.p99_us - b.p99_us,
            r.p999_us - b.p999_us,
            cpu_cell(*cpu),
            flags(r)
        );
    }
    println!();
    Ok(())
}
