//! The drill report: `report.json` (every figure), `report.md` (tables a person reads) and
//! `timeline.svg` (the picture), all in one directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use super::cluster::DrillView;
use super::figures::{Bin, Check, FailKind, Figures, Phase, Target};
use super::svg::{self, Marker};

/// The drill as asked for and as the controller ran it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillInfo {
    /// Context of the cluster the drill was created in.
    pub context: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Gateway loaded (`namespace/name`).
    pub gateway: String,
    /// drain, kill or blackhole.
    pub mode: String,
    /// What was failed.
    pub target: Target,
    /// How long the target was meant to stay failed, ms.
    pub duration_ms: u64,
    /// Abort guard: error percent.
    pub guard_error_percent: Option<f64>,
    /// Abort guard: p99 latency, ms.
    pub guard_p99_ms: Option<f64>,
    /// Status as last read.
    pub status: DrillView,
}

/// How the load ran.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadInfo {
    /// Where requests went.
    pub url: String,
    /// Host header.
    pub host: Option<String>,
    /// Requests per second.
    pub rate: u32,
    /// Load before the drill was created, ms.
    pub warmup_ms: u64,
    /// Load after the restore, ms.
    pub after_ms: u64,
    /// Per-request timeout, ms.
    pub request_timeout_ms: u64,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Wall-clock time of the load's time 0 (RFC 3339).
    pub started_at: String,
    /// When the load stopped sending, ms since it started.
    pub end_ms: f64,
    /// Answers whose serving endpoint came from the `x-meridian-served-by` header.
    pub served_by_header: u64,
    /// … from the echo backend's body (header missing).
    pub served_by_body: u64,
    /// … not known.
    pub served_by_unknown: u64,
}

/// Fail/restore moments on the load's clock.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MomentsMs {
    /// Drill created.
    pub created_ms: Option<f64>,
    /// Target failed (status.failTime).
    pub fail_ms: Option<f64>,
    /// Target restored (status.restoreTime).
    pub restore_ms: Option<f64>,
}

/// Everything in report.json.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The drill.
    pub drill: DrillInfo,
    /// The load.
    pub load: LoadInfo,
    /// Moments.
    pub moments: MomentsMs,
    /// Figures computed from the load's samples.
    pub figures: Figures,
    /// Pass/fail checks.
    pub checks: Vec<Check>,
    /// Whether the drill succeeded and every check passed.
    pub pass: bool,
    /// Requests per 250 ms bin (the picture's data).
    pub bins: Vec<Bin>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.0} ms"))
}

fn ms1(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.1} ms"))
}

fn shares(p: &Phase) -> String {
    if p.share_by_region.is_empty() {
        return "—".into();
    }
    p.share_by_region
        .iter()
        .map(|(r, s)| format!("{r} {s:.1}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// report.md.
pub fn markdown(r: &Report) -> String {
    let f = &r.figures;
    let d = &r.drill;
    let mut s = String::new();
    let _ = writeln!(s, "# Failover drill {}/{}\n", d.namespace, d.name);
    let _ = writeln!(
        s,
        "Mode **{}**, target **{}**, for {} s, through Gateway `{}` (context `{}`) at {} req/s \
         ({}{}).\n",
        d.mode,
        d.target.describe(),
        d.duration_ms as f64 / 1000.0,
        d.gateway,
        d.context,
        r.load.rate,
        r.load.url,
        r.load
            .host
            .as_ref()
            .map(|h| format!(", Host {h}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "Result: **{}** — drill phase {}{}.\n",
        if r.pass { "PASS" } else { "FAIL" },
        if d.status.phase.is_empty() {
            "unknown"
        } else {
            &d.status.phase
        },
        d.status
            .abort_reason
            .as_ref()
            .or(d.status.message.as_ref())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    );
    s.push_str("![timeline](timeline.svg)\n\n");
    s.push_str("| figure | value |\n|---|---|\n");
    let rows = [
        ("requests sent", f.requests.to_string()),
        ("requests failed", f.failed_total.to_string()),
        (
            "home region (most answers before the fail)",
            f.home_region.clone().unwrap_or_else(|| "—".into()),
        ),
        (
            "time to detect (fail → first answer elsewhere or failure)",
            ms(f.time_to_detect_ms),
        ),
        (
            "time to shift ≥95 % away from the target (250 ms bins)",
            ms(f.time_to_shift_95_ms),
        ),
        (
            "failback (restore → ≥95 % back home, 250 ms bins)",
            ms(f.failback_ms),
        ),
        ("share during the drill", shares(&f.during)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    s.push_str("\n| phase | requests | failed | error % | p50 | p99 | max | answered by |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (name, p) in [
        ("before", &f.before),
        ("during", &f.during),
        ("after", &f.after),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.2} | {} | {} | {} | {} |",
            p.requests,
            p.failed_total,
            p.error_percent,
            ms1(p.latency.p50_ms),
            ms1(p.latency.p99_ms),
            ms1(p.latency.max_ms),
            shares(p)
        );
    }
    s.push_str("\n| failed requests by kind | before | during | after |\n|---|---:|---:|---:|\n");
    for k in FailKind::ALL {
        let n = |p: &Phase| p.failed.get(&k).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            k.label(),
            n(&f.before),
            n(&f.during),
            n(&f.after)
        );
    }
    s.push_str("\n| check | limit | measured | result |\n|---|---|---|---|\n");
    for c in &r.checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.name,
            c.limit,
            c.measured,
            if c.pass { "pass" } else { "**FAIL**" }
        );
    }
    if let Some(events) = d.status.timeline.as_array().filter(|a| !a.is_empty()) {
        s.push_str("\n| time | event | message |\n|---|---|---|\n");
        for e in events {
            let g = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let _ = writeln!(s, "| {} | {} | {} |", g("time"), g("type"), g("message"));
        }
    }
    let _ = writeln!(
        s,
        "\nLatency runs from each request's intended send time (open-loop load, no coordinated \
         omission) and covers answered requests; failures are counted by kind instead. Phases \
         split requests by intended send time at the drill's failTime and restoreTime. Per-request \
         timeout {} ms.",
        r.load.request_timeout_ms
    );
    s
}

/// Writes report.json, report.md and timeline.svg into `dir` (created if needed).
pub fn write(dir: &Path, r: &Report) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the report directory {}", dir.display()))?;
    let mut markers = Vec::new();
    if let Some(at) = r.moments.fail_ms {
        markers.push(Marker {
            id: "marker-fail",
            at_ms: at,
            label: format!("{} {}", r.drill.mode, r.drill.target.describe()),
        });
    }
    if let Some(at) = r.moments.restore_ms {
        let aborted = r.drill.status.phase == "Aborted";
        markers.push(Marker {
            id: "marker-restore",
            at_ms: at,
            label: if aborted {
                "aborted → restored".to_string()
            } else {
                "restored".to_string()
            },
        });
    }
    let title = format!(
        "{}/{}: {} {} — {} req/s through {}",
        r.drill.namespace,
        r.drill.name,
        r.drill.mode,
        r.drill.target.describe(),
        r.load.rate,
        r.drill.gateway
    );
    let files = [
        (
            "report.json",
            serde_json::to_string_pretty(r).context("encoding report.json")?,
        ),
        ("report.md", markdown(r)),
        ("timeline.svg", svg::render(&title, &r.bins, &markers)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}
