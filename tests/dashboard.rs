//! examples/grafana/meridian.json is a valid Grafana dashboard whose queries use only metrics
//! the code registers.
//!
//! ```text
//! dashboard JSON ─ parse ─ panels: unique ids, a grid position, Prometheus targets (refId, expr)
//!   each expr ─ every `meridian_…` name (a histogram's _bucket/_sum/_count on its base name)
//!               ─ must be a metric name registered by the proxy, the controller or the
//!                 distribution server: the string literals `"meridian_…"` in the non-test
//!                 code of proxy/src, controller/src and distribution/src (each metric is
//!                 registered under such a literal)
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// Every `"meridian_…"` string literal in the `.rs` files under `dir`, test modules excluded
/// (everything after a `#[cfg(test)]` line: test modules come last in this code base).
fn registered_names(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            registered_names(&path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, _) in code.match_indices("\"meridian_") {
            let rest = &code[i + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if rest[end..].starts_with('"') {
                out.insert(rest[..end].to_string());
            }
        }
    }
}

/// The `meridian_…` names an expression queries.
fn queried(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("meridian_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_registered_metrics() {
    let text = std::fs::read_to_string("examples/grafana/meridian.json").unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());

    let mut registered = BTreeSet::new();
    for dir in ["proxy/src", "controller/src", "distribution/src"] {
        registered_names(Path::new(dir), &mut registered);
    }
    // The scan finds the metrics every dashboard section is built on.
    for known in [
        "meridian_proxy_requests_total",
        "meridian_controller_translate_seconds",
        "meridian_distribution_propagation_seconds",
    ] {
        assert!(
            registered.contains(known),
            "{known} not found: {registered:?}"
        );
    }

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut graphs = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: id repeated"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        assert!(p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(t["refId"].as_str().is_some(), "{title}: refId");
            let expr = t["expr"].as_str().unwrap();
            let names = queried(expr);
            assert!(
                !names.is_empty(),
                "{title}: {expr} queries no Meridian metric"
            );
            for name in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| registered.contains(*b)))
                    .unwrap_or(&name);
                assert!(
                    registered.contains(base),
                    "{title}: {name} is not a registered metric (in {expr})"
                );
                used.insert(base.to_string());
            }
        }
    }
    assert!(graphs >= 10, "{graphs} graphs");
    // The template variable's query too.
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(def) = v["definition"].as_str() {
            for name in queried(def) {
                assert!(registered.contains(&name), "variable {}: {name}", v["name"]);
            }
        }
    }
    // What the dashboard promises to show.
    for must in [
        "meridian_proxy_gateway_requests_total",
        "meridian_proxy_requests_total",
        "meridian_proxy_upstream_latency_seconds",
        "meridian_proxy_endpoint_ejections_total",
        "meridian_proxy_gateway_failures_total",
        "meridian_distribution_propagation_seconds",
        "meridian_controller_translate_seconds",
        "meridian_member_cluster_api_latency_seconds",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
}

#[test]
fn a_misspelt_metric_is_caught() {
    let mut registered = BTreeSet::new();
    registered_names(Path::new("proxy/src"), &mut registered);
    assert!(registered.contains("meridian_proxy_upstream_latency_seconds"));
    assert!(!registered.contains("meridian_proxy_upstream_latency_second"));
    assert_eq!(
        queried("histogram_quantile(0.9, rate(meridian_proxy_x_bucket[5m])) + meridian_y"),
        ["meridian_proxy_x_bucket", "meridian_y"]
    );
}
