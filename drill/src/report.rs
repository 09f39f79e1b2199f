//! The drill report: `report.json` (every figure), `report.md` (tables a person reads) and
//! `timeline.svg` (the picture), all in one directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cluster::DrillView;
use super::figures::{Bin, Check, FailKind, Figures, Phase, Target};
use super::svg::{self, Marker};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report directory could not be created.
    #[error("creating the report directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// report.json could not be encoded.
    #[error("encoding report.json")]
    Encode(#[source] serde_json::Error),
    /// A file could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

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

/// report.md: a headline, the picture, then one table per concern and a note on method.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    headline(&mut s, r);
    s.push_str("![timeline](timeline.svg)\n\n");
    figures_table(&mut s, &r.figures);
    phases_table(&mut s, &r.figures);
    failures_table(&mut s, &r.figures);
    checks_table(&mut s, &r.checks);
    timeline_table(&mut s, &r.drill.status);
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

/// Title, what was done, and the result.
fn headline(s: &mut String, r: &Report) {
    let d = &r.drill;
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
}

/// The headline figures (a declarative table of rows).
fn figures_table(s: &mut String, f: &Figures) {
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
}

/// Before / during / after: requests, errors, latency, who answered.
fn phases_table(s: &mut String, f: &Figures) {
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
}

/// Failed requests by kind and phase.
fn failures_table(s: &mut String, f: &Figures) {
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
}

/// Every check with its limit and what was measured.
fn checks_table(s: &mut String, checks: &[Check]) {
    s.push_str("\n| check | limit | measured | result |\n|---|---|---|---|\n");
    for c in checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.name,
            c.limit,
            c.measured,
            if c.pass { "pass" } else { "**FAIL**" }
        );
    }
}

/// The controller's status timeline, if it wrote one.
fn timeline_table(s: &mut String, status: &DrillView) {
    if let Some(events) = status.timeline.as_array().filter(|a| !a.is_empty()) {
        s.push_str("\n| time | event | message |\n|---|---|---|\n");
        for e in events {
            let g = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let _ = writeln!(s, "| {} | {} | {} |", g("time"), g("type"), g("message"));
        }
    }
}

/// Writes report.json, report.md and timeline.svg into `dir` (created if needed).
pub fn write(dir: &Path, r: &Report) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
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
            serde_json::to_string_pretty(r).map_err(ReportError::Encode)?,
        ),
        ("report.md", markdown(r)),
        ("timeline.svg", svg::render(&title, &r.bins, &markers)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        if let Err(source) = std::fs::write(&path, text) {
            return Err(ReportError::Write { path, source });
        }
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::figures::{self, Moments, Outcome, Sample, ServedBy};

    /// A report with every section filled: figures from a drain that moved traffic, a failed
    /// check, an abort reason and a status timeline.
    pub(crate) fn sample_report() -> Report {
        let by = |r: &str| ServedBy {
            cluster: "c".into(),
            region: r.into(),
            zone: "z".into(),
        };
        let mut samples = Vec::new();
        for i in 0..400u64 {
            let region = if (100..250).contains(&i) {
                "us-west"
            } else {
                "us-east"
            };
            let outcome = if i == 120 {
                Outcome::Failed(FailKind::Connect)
            } else {
                Outcome::Answered(by(region))
            };
            samples.push(Sample {
                at_us: i * 10_000,
                latency_us: 1_500,
                outcome,
            });
        }
        let target = Target {
            region: Some("us-east".into()),
            ..Target::default()
        };
        let f = figures::figures(
            &samples,
            &target,
            Moments {
                fail_us: Some(1_000_000),
                restore_us: Some(2_500_000),
                end_us: 4_000_000,
            },
        );
        let checks = figures::checks(&f, Some(1.0), Some(200.0));
        let status = DrillView {
            phase: "Aborted".into(),
            abort_reason: Some("error rate 5 % over the guard".into()),
            timeline: serde_json::json!([{"time": "2025-01-01T00:00:01Z", "type": "Failed", "message": "us-east drained"}]),
            ..DrillView::default()
        };
        Report {
            drill: DrillInfo {
                context: "east".into(),
                namespace: "demo".into(),
                name: "d1".into(),
                gateway: "demo/web".into(),
                mode: "drain".into(),
                target,
                duration_ms: 1500,
                guard_error_percent: Some(1.0),
                guard_p99_ms: Some(200.0),
                status,
            },
            load: LoadInfo {
                url: "http://127.0.10.1:80/".into(),
                host: Some("demo.example".into()),
                rate: 100,
                warmup_ms: 1000,
                after_ms: 1500,
                request_timeout_ms: 10_000,
                max_in_flight: 256,
                started_at: "2025-01-01T00:00:00Z".into(),
                end_ms: 4000.0,
                served_by_header: 399,
                served_by_body: 0,
                served_by_unknown: 0,
            },
            moments: MomentsMs {
                created_ms: Some(900.0),
                fail_ms: Some(1000.0),
                restore_ms: Some(2500.0),
            },
            bins: figures::bins(&samples, 4_000_000),
            figures: f,
            checks,
            pass: false,
        }
    }

    #[test]
    fn markdown_has_every_section_in_order() {
        let md = markdown(&sample_report());
        let order = [
            "# Failover drill demo/d1\n",
            "Mode **drain**, target **region us-east**, for 1.5 s, through Gateway `demo/web` \
             (context `east`) at 100 req/s (http://127.0.10.1:80/, Host demo.example).",
            "Result: **FAIL** — drill phase Aborted (error rate 5 % over the guard).",
            "![timeline](timeline.svg)",
            "| requests failed | 1 |",
            "| share during the drill | us-west 100.0% |",
            "| during | 150 | 1 | 0.67 | 1.5 ms | 1.5 ms | 1.5 ms | us-west 100.0% |",
            "| connect error | 0 | 1 | 0 |",
            "| 0 failed GETs | 0 | 1 | **FAIL** |",
            "| 2025-01-01T00:00:01Z | Failed | us-east drained |",
            "Per-request timeout 10000 ms.",
        ];
        let mut at = 0;
        for part in order {
            let found = md[at..].find(part);
            assert!(found.is_some(), "{part:?} missing after byte {at}:\n{md}");
            at += found.unwrap_or(0) + part.len();
        }
        let mut r = sample_report();
        r.drill.status.timeline = serde_json::Value::Null;
        assert!(
            !markdown(&r).contains("| time | event | message |"),
            "no timeline, no table"
        );
    }
}
