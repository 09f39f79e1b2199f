//! `timeline.svg`: answers per second by serving region over time (by when they arrived, so a
//! stall shows as a gap), failures in red, and the
//! fail/restore moments as labelled vertical lines. Plain SVG written by hand (no fonts or
//! scripts needed), so it renders on GitHub and in any browser.
//!
//! Layout: regions are stacked areas, bottom to top in name order; failures sit on top in red.
//! The y axis is answers per second (bin count × bins per second).

use std::fmt::Write as _;

use super::figures::{BIN_US, Bin};

/// A labelled vertical line.
pub struct Marker {
    /// Element id (`marker-fail`, `marker-restore`); tests look for it.
    pub id: &'static str,
    /// When, ms since the load started.
    pub at_ms: f64,
    /// Text next to the line.
    pub label: String,
}

const W: f64 = 960.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;
const PALETTE: [&str; 6] = [
    "#3b82f6", "#10b981", "#f59e0b", "#8b5cf6", "#06b6d4", "#64748b",
];
const FAILED: &str = "#dc2626";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about `target` ticks over `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Plot area and scales: milliseconds to x, answers per second to y.
struct Plot {
    end_ms: f64,
    ymax: f64,
    ystep: f64,
    /// Plot width and height.
    pw: f64,
    ph: f64,
}

impl Plot {
    fn new(bins: &[Bin], per_sec: f64) -> Self {
        let end_ms = bins
            .last()
            .map_or(1000.0, |b| b.start_ms as f64 + BIN_US as f64 / 1000.0);
        let peak = bins
            .iter()
            .map(|b| (b.by_region.values().sum::<u64>() + b.failed) as f64 * per_sec)
            .fold(0.0, f64::max)
            .max(1.0);
        let ystep = nice_step(peak, 5.0);
        // Headroom above the peak so the top edge and the marker labels stay readable.
        let ymax = (peak * 1.15 / ystep).ceil() * ystep;
        Self {
            end_ms,
            ymax,
            ystep,
            pw: W - LEFT - RIGHT,
            ph: H - TOP - BOTTOM,
        }
    }

    fn x(&self, ms: f64) -> f64 {
        LEFT + ms / self.end_ms * self.pw
    }

    fn y(&self, v: f64) -> f64 {
        TOP + self.ph - v / self.ymax * self.ph
    }
}

/// One stacked series: name, colour, answers per second per bin.
type Layer<'a> = (String, &'a str, Vec<f64>);

/// Renders the picture: frame and title, grid and axes, stacked areas, markers, legend.
pub fn render(title: &str, bins: &[Bin], markers: &[Marker]) -> String {
    let per_sec = 1_000_000.0 / BIN_US as f64;
    let plot = Plot::new(bins, per_sec);
    let layers = layers(bins, per_sec);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    grid(&mut s, &plot);
    areas(&mut s, &plot, bins, &layers);
    draw_markers(&mut s, &plot, markers);
    legend(&mut s, &plot, &layers);
    s.push_str("</svg>\n");
    s
}

/// Grid, y axis in answers per second and x axis in seconds.
fn grid(s: &mut String, plot: &Plot) {
    let (pw, ph, end_ms) = (plot.pw, plot.ph, plot.end_ms);
    let mut v = 0.0;
    while v <= plot.ymax + 1e-9 {
        let yy = plot.y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0
        );
        v += plot.ystep;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">answers / s</text>"#,
        TOP + ph / 2.0
    );
    // X axis in seconds.
    let xstep = nice_step(end_ms / 1000.0, 10.0);
    let mut t = 0.0;
    while t * 1000.0 <= end_ms + 1e-6 {
        let xx = plot.x(t * 1000.0);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#9ca3af"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 18.0
        );
        t += xstep;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the load started (answers by arrival, bins of {} ms)</text>"#,
        LEFT + pw / 2.0,
        H - 10.0,
        BIN_US / 1000
    );
}

/// One layer per region (name order, palette colours), then failures in red.
fn layers(bins: &[Bin], per_sec: f64) -> Vec<Layer<'static>> {
    let regions: Vec<String> = {
        let mut r: Vec<String> = bins
            .iter()
            .flat_map(|b| b.by_region.keys().cloned())
            .collect();
        r.sort();
        r.dedup();
        r
    };
    regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let vals = bins
                .iter()
                .map(|b| b.by_region.get(r).copied().unwrap_or(0) as f64 * per_sec)
                .collect();
            (r.clone(), PALETTE[i % PALETTE.len()], vals)
        })
        .chain(std::iter::once((
            "failed".to_string(),
            FAILED,
            bins.iter().map(|b| b.failed as f64 * per_sec).collect(),
        )))
        .collect()
}

/// Stacked areas: each layer's top edge left to right, then the layer below right to left; the
/// axes are drawn over them.
fn areas(s: &mut String, plot: &Plot, bins: &[Bin], layers: &[Layer<'_>]) {
    let (pw, ph) = (plot.pw, plot.ph);
    let (x, y) = (|ms| plot.x(ms), |v| plot.y(v));
    let mut base = vec![0.0; bins.len()];
    let bin_ms = BIN_US as f64 / 1000.0;
    for (name, color, vals) in layers {
        if vals.iter().all(|v| *v == 0.0) && name == "failed" {
            continue;
        }
        let top: Vec<f64> = base.iter().zip(vals).map(|(b, v)| b + v).collect();
        let mut d = String::new();
        for (i, b) in bins.iter().enumerate() {
            let (x0, x1) = (x(b.start_ms as f64), x(b.start_ms as f64 + bin_ms));
            let cmd = if i == 0 { 'M' } else { 'L' };
            let _ = write!(
                d,
                "{cmd}{x0:.1},{:.1} L{x1:.1},{:.1} ",
                y(top[i]),
                y(top[i])
            );
        }
        for (i, b) in bins.iter().enumerate().rev() {
            let (x0, x1) = (x(b.start_ms as f64), x(b.start_ms as f64 + bin_ms));
            let _ = write!(d, "L{x1:.1},{:.1} L{x0:.1},{:.1} ", y(base[i]), y(base[i]));
        }
        let _ = writeln!(
            s,
            r#"<path class="area" data-series="{}" d="{}Z" fill="{color}" fill-opacity="0.85" stroke="{color}" stroke-width="0.5"/>"#,
            esc(name),
            d.trim_end()
        );
        base = top;
    }
    // Axes on top of the areas.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#111827"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#111827"/>"##,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
}

/// The fail/restore moments as labelled dashed lines.
fn draw_markers(s: &mut String, plot: &Plot, markers: &[Marker]) {
    for (i, m) in markers.iter().enumerate() {
        let xx = plot.x(m.at_ms.clamp(0.0, plot.end_ms));
        // Labels alternate height so close markers stay readable.
        let ly = TOP + 14.0 + (i % 2) as f64 * 16.0;
        let _ = writeln!(
            s,
            r##"<g id="{}"><line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#111827" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{ly:.1}" font-weight="bold">{}</text></g>"##,
            m.id,
            TOP + plot.ph,
            xx + 4.0,
            esc(&m.label)
        );
    }
}

/// Legend right of the plot (failures only when there were any).
fn legend(s: &mut String, plot: &Plot, layers: &[Layer<'_>]) {
    let lx = LEFT + plot.pw + 16.0;
    let mut ly = TOP + 8.0;
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{ly}" font-weight="bold">served by</text>"#
    );
    for (name, color, vals) in layers {
        if name == "failed" && vals.iter().all(|v| *v == 0.0) {
            continue;
        }
        ly += 20.0;
        let label = if name == "failed" {
            "failed requests"
        } else {
            name
        };
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="14" height="14" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 11.0,
            lx + 20.0,
            esc(label)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn picture_has_areas_markers_legend_and_escapes_text() {
        let bins: Vec<Bin> = (0..8)
            .map(|i| Bin {
                start_ms: i * 250,
                by_region: BTreeMap::from([(
                    if i < 4 { "us-east" } else { "us-west" }.to_string(),
                    25,
                )]),
                failed: u64::from(i == 4),
            })
            .collect();
        let svg = render(
            "drill <east>",
            &bins,
            &[
                Marker {
                    id: "marker-fail",
                    at_ms: 1000.0,
                    label: "fail".into(),
                },
                Marker {
                    id: "marker-restore",
                    at_ms: 1800.0,
                    label: "restore".into(),
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(r#"id="marker-fail""#) && svg.contains(r#"id="marker-restore""#));
        assert!(
            svg.contains(r#"data-series="us-east""#) && svg.contains(r#"data-series="us-west""#)
        );
        assert!(svg.contains(r#"data-series="failed""#) && svg.contains("failed requests"));
        assert!(svg.contains("drill &lt;east&gt;") && !svg.contains("<east>"));
        // 25 per 250 ms bin is 100 req/s; the 100 tick is on the axis.
        assert!(svg.contains(">100</text>"), "{svg}");
    }

    #[test]
    fn no_failures_no_red_layer() {
        let bins = vec![Bin {
            start_ms: 0,
            by_region: BTreeMap::from([("a".to_string(), 3)]),
            failed: 0,
        }];
        let svg = render("t", &bins, &[]);
        assert!(!svg.contains(r#"data-series="failed""#));
        assert!(!svg.contains(FAILED));
    }

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(230.0, 5.0), 50.0);
        assert_eq!(nice_step(14.0, 10.0), 2.0);
    }
}
