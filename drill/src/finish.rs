//! Steps 4 and 5 of a drill: the figures and checks from what the load saw, the report that
//! records them ([`build_report`]), the summary printed at the end, and the exit status
//! ([`verdict`]).

use std::sync::atomic::Ordering;

use crate::args::DrillArgs;
use crate::drive::{Observed, wall_offset_ms};
use crate::figures::{self, FailKind, Moments, Sample};
use crate::preflight::Setup;
use crate::report;

/// Step 4: figures and checks from what the load saw, with everything the report records.
pub(crate) fn build_report(
    args: &DrillArgs,
    s: &Setup,
    name: &str,
    o: &Observed,
) -> report::Report {
    let (p, gw, samples, view) = (&s.p, &s.gw, &o.samples, &o.view);
    let end_us = samples.iter().map(|s| s.at_us).max().map_or(0, |m| m + 1);
    let fail_ms = wall_offset_ms(o.t0_wall, view.fail_time.as_deref());
    let restore_ms = wall_offset_ms(o.t0_wall, view.restore_time.as_deref());
    let to_us = |ms: Option<f64>| ms.map(|v| (v.max(0.0) * 1000.0) as u64);
    let figures = figures::figures(
        samples,
        &p.target,
        Moments {
            fail_us: to_us(fail_ms),
            restore_us: to_us(restore_ms),
            end_us,
        },
    );
    let checks = figures::checks(
        &figures,
        args.guard_error_percent,
        p.guard_p99.map(|d| d.as_secs_f64() * 1000.0),
    );
    let all_pass = checks.iter().all(|c| c.pass);
    report::Report {
        drill: report::DrillInfo {
            context: s.home.context.clone(),
            namespace: gw.namespace.clone(),
            name: name.to_string(),
            gateway: gw.key(),
            mode: args.mode.as_str().into(),
            target: p.target.clone(),
            duration_ms: p.duration.as_millis() as u64,
            guard_error_percent: args.guard_error_percent,
            guard_p99_ms: p.guard_p99.map(|d| d.as_secs_f64() * 1000.0),
            status: view.clone(),
        },
        load: report::LoadInfo {
            url: s.url.to_string(),
            host: s.host.clone(),
            rate: p.rate,
            warmup_ms: p.warmup.as_millis() as u64,
            after_ms: p.after.as_millis() as u64,
            request_timeout_ms: p.timeout.as_millis() as u64,
            max_in_flight: args.max_in_flight,
            started_at: o.t0_wall.to_string(),
            end_ms: end_us as f64 / 1000.0,
            served_by_header: o.sources.header.load(Ordering::Relaxed),
            served_by_body: o.sources.body.load(Ordering::Relaxed),
            served_by_unknown: o.sources.unknown.load(Ordering::Relaxed),
        },
        moments: report::MomentsMs {
            created_ms: o.created_ms,
            fail_ms,
            restore_ms,
        },
        // Answers are binned by arrival: the picture runs until the last one.
        bins: figures::bins(
            samples,
            samples
                .iter()
                .map(Sample::done_us)
                .max()
                .map_or(0, |m| m + 1),
        ),
        figures,
        checks,
        pass: succeeded(o) && all_pass,
    }
}

fn succeeded(o: &Observed) -> bool {
    o.view.phase == "Succeeded" && !o.interrupted
}

/// Step 5: the exit status (module docs), with the line that explains it.
pub(crate) fn verdict(r: &report::Report, o: &Observed) -> i32 {
    let view = &o.view;
    if o.interrupted {
        println!("drill interrupted");
        3
    } else if !succeeded(o) {
        println!(
            "drill {}: {}",
            if view.phase.is_empty() {
                "did not run"
            } else {
                &view.phase
            },
            view.abort_reason
                .as_deref()
                .or(view.message.as_deref())
                .unwrap_or("no reason given by the controller")
        );
        3
    } else if !r.checks.iter().all(|c| c.pass) {
        println!("drill succeeded, but checks failed (see above)");
        2
    } else {
        0
    }
}

/// The figures and checks, in a few lines.
pub(crate) fn print_summary(r: &report::Report) {
    let f = &r.figures;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "figures: detect {}, shift ≥95% {}, failback {}, requests {} failed {} ({})",
        ms(f.time_to_detect_ms),
        ms(f.time_to_shift_95_ms),
        ms(f.failback_ms),
        f.requests,
        f.failed_total,
        FailKind::ALL
            .iter()
            .map(|k| format!("{} {}", f.failed.get(k).copied().unwrap_or(0), k.label()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, ph) in [
        ("before", &f.before),
        ("during", &f.during),
        ("after", &f.after),
    ] {
        println!(
            "  {name:<6} {:>6} requests, p50 {}, p99 {}, {}",
            ph.requests,
            ph.latency
                .p50_ms
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            ph.latency
                .p99_ms
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            ph.share_by_region
                .iter()
                .map(|(r, s)| format!("{r} {s:.1}%"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for c in &r.checks {
        println!(
            "  {} {}: {} (limit {})",
            if c.pass { "pass" } else { "FAIL" },
            c.name,
            c.measured,
            c.limit
        );
    }
}
