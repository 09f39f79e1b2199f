//! `meridian status` and `meridian explain` on the demo: a real `meridian up`, the commands as
//! a user runs them (no flags: they find the controller through the state directory's
//! admin.json), their JSON checked field by field, `--fail us-east`, the kubectl plugin, and
//! the errors a user meets (unknown Gateway, bad header, wrong token, no controller).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use meridian_test_support::eventually_blocking;
use serde_json::Value;

mod common;

fn meridian(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `status` JSON once every proxy acknowledged the latest generation and every cluster's
/// backends show the demo's six zones (right after `up` a publish may still be in flight, and the
/// other clusters' exported endpoints may not have reached every cluster's ServiceImport yet).
fn settled_status(dir: &Path) -> Value {
    let mut last = Value::Null;
    eventually_blocking(
        "every proxy holds its cluster's latest snapshot",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            last = json_of(&meridian(dir, &["status", "-o", "json"]));
            let proxies = last["proxies"].as_array().cloned().unwrap_or_default();
            if proxies.len() == 3
                && proxies.iter().all(|p| {
                    p["connected"] == true
                        // Each proxy reports its own health view with its traffic counters.
                        && p["healthReported"] == true
                        && p["ackedGeneration"].is_u64()
                        && p["ackedGeneration"] == p["currentGeneration"]
                })
                && all_zones_known(&last)
            {
                Ok(())
            } else {
                Err(format!("{:#}", last["proxies"]))
            }
        },
    );
    last
}

/// Every cluster's first backend lists endpoints in all six demo zones.
fn all_zones_known(s: &Value) -> bool {
    let clusters = s["backends"].as_array().cloned().unwrap_or_default();
    clusters.len() == 3
        && clusters.iter().all(|c| {
            c["backends"][0]["zones"]
                .as_array()
                .is_some_and(|z| z.len() == 6)
        })
}

fn check_status(s: &Value) {
    let clusters = s["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["east", "west", "central"]);
    for c in clusters {
        assert_eq!(c["reachable"], true, "{c}");
        assert_eq!(c["synced"], true, "{c}");
        assert!(c["apiLatencyMs"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["lastContact"].is_string(), "{c}");
        assert!(c["secondsSinceContact"].as_f64().unwrap() < 60.0, "{c}");
        assert!(c["unreachableSince"].is_null(), "{c}");
    }
    let east = &clusters[0];
    assert_eq!(east["region"], "us-east");
    assert_eq!(east["zones"], serde_json::json!(["us-east-a", "us-east-b"]));

    let proxy = s["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cluster"] == "east")
        .unwrap();
    assert_eq!(proxy["id"], "east-proxy");
    assert_eq!(proxy["region"], "us-east");
    assert_eq!(proxy["zone"], "us-east-a");
    assert_eq!(proxy["address"], "127.0.10.1");
    assert!(proxy["connectedSince"].as_str().unwrap().contains('T'));
    // The proxy's own view: its measured region order (values on loopback are all near 0 ms,
    // so no order is asserted) and how many endpoints it ejected.
    let nearest = proxy["nearestRegions"].as_array().unwrap();
    assert!(nearest.len() <= 2, "{proxy}");
    for r in nearest {
        assert!(
            ["us-west", "eu-central"].contains(&r["region"].as_str().unwrap()),
            "{r}"
        );
        assert!(r["rttMs"].as_f64().is_none_or(|ms| ms >= 0.0), "{r}");
    }
    assert!(proxy["ejectedEndpoints"].is_u64(), "{proxy}");
    assert_eq!(proxy["ejectedTruncated"], false);

    for (cluster, address) in [
        ("east", "127.0.10.1"),
        ("west", "127.0.11.1"),
        ("central", "127.0.12.1"),
    ] {
        let gw = s["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["cluster"] == cluster && g["name"] == "web")
            .unwrap_or_else(|| panic!("no demo/web of {cluster}: {:#}", s["gateways"]));
        assert_eq!(gw["namespace"], "demo");
        assert_eq!(gw["class"], "meridian");
        assert_eq!(gw["programmed"]["status"], "True", "{gw}");
        assert_eq!(gw["addresses"], serde_json::json!([address]));
        assert_eq!(gw["listeners"][0]["name"], "http");
        assert_eq!(gw["listeners"][0]["port"], 80);
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 1, "{gw}");
        assert!(gw["snapshotGeneration"].is_u64(), "{gw}");
    }

    let east_backends = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["cluster"] == "east")
        .unwrap();
    let echo = &east_backends["backends"][0];
    assert!(echo["name"].as_str().unwrap().contains("echo"), "{echo}");
    // Two healthy endpoints per region, one per zone.
    let zones = echo["zones"].as_array().unwrap();
    assert_eq!(zones.len(), 6, "{echo}");
    for z in zones {
        assert_eq!(
            (z["endpoints"].as_u64(), z["healthy"].as_u64()),
            (Some(1), Some(1)),
            "{z}"
        );
        assert!(z["ejected"].is_u64(), "{z}");
    }
    assert!(echo["ejected"].is_array(), "{echo}");
    // East's proxy (zone us-east-a) serves from its own zone.
    let tier = &echo["tiers"][0];
    assert_eq!(tier["zone"], "us-east-a", "{echo}");
    assert_eq!(tier["tier"], 0);
    assert_eq!(tier["kind"], "zone");
    assert_eq!(tier["servingRegion"], "us-east");
}

fn check_explain(dir: &Path) {
    let args = [
        "explain",
        "-o",
        "json",
        "--gateway",
        "demo/web",
        "--context",
        "east",
        "--host",
        "demo",
        "--path",
        "/hello",
    ];
    let v = json_of(&meridian(dir, &args));
    assert!(v["failed"].is_null());
    let clusters = v["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0]["cluster"], "east");
    assert_eq!(clusters[0]["region"], "us-east");
    let e = &clusters[0]["explanation"];
    assert_eq!(e["gateway"], "demo/web");
    assert_eq!(e["decision"], "matched");
    assert!(e["status"].is_null());
    assert_eq!(e["listener"], "http");
    assert_eq!(e["rule"]["route"], "demo/echo");
    assert_eq!(e["rule"]["rule"], 0);
    assert_eq!(e["request"]["path"], "/hello");
    let from = &e["backends"][0]["from"][0];
    assert_eq!(e["backends"][0]["sharePercent"], 100.0);
    assert_eq!(
        (&from["cluster"], &from["zone"]),
        (&"east".into(), &"us-east-a".into())
    );
    assert_eq!(from["proxyFailed"], false);
    let order: Vec<&str> = from["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["endpoint"]["zone"].as_str().unwrap())
        .collect();
    // Own zone, own region, then the other regions in the order east's proxy measured (on
    // loopback every round trip is near 0 ms: which region comes first is not asserted).
    assert_eq!(order[..2], ["us-east-a", "us-east-b"]);
    let mut others = order[2..].to_vec();
    others.sort();
    assert_eq!(
        others,
        ["eu-central-a", "eu-central-b", "us-west-a", "us-west-b"]
    );
    assert_eq!(
        order[2][..7],
        order[3][..7],
        "a region's zones stay together"
    );
    assert_eq!(from["order"][0]["endpoint"]["address"], "127.0.100.1:8080");
    let source = from["regionOrder"]["source"].as_str().unwrap();
    assert!(["measured", "alphabetical"].contains(&source), "{from}");
    if source == "measured" {
        assert_eq!(from["regionOrder"]["measuredBy"], "east-proxy");
    }

    // --fail us-east: the region's endpoints are ejected and east's proxy is down with them;
    // the request goes to the next region, eu-central (alphabetical: no FailoverPolicy).
    let mut failing = args.to_vec();
    failing.extend(["--fail", "us-east"]);
    let v = json_of(&meridian(dir, &failing));
    assert_eq!(v["failed"]["name"], "us-east");
    assert_eq!(v["failed"]["kinds"], serde_json::json!(["region"]));
    let e = &v["clusters"][0]["explanation"];
    assert_eq!(e["failed"], "us-east");
    let from = &e["backends"][0]["from"][0];
    assert_eq!(from["proxyFailed"], true);
    let first = &from["order"][0];
    assert_eq!(
        first["endpoint"]["region"], from["tiers"][2]["region"],
        "the first other region of the proxy's order"
    );
    assert_ne!(first["endpoint"]["region"], "us-east");
    assert_eq!(first["endpoint"]["state"], "healthy");
    assert_eq!(first["tier"], 2);
    let last = from["order"].as_array().unwrap().last().unwrap();
    assert_eq!(last["endpoint"]["region"], "us-east");
    assert_eq!(last["endpoint"]["state"], "failed");
    assert!(
        last["why"].as_str().unwrap().contains("last resort"),
        "{last}"
    );

    // Without --context: every cluster serving the Gateway; west keeps its own region.
    let v = json_of(&meridian(
        dir,
        &[
            "explain",
            "-o",
            "json",
            "--gateway",
            "demo/web",
            "--fail",
            "us-east",
        ],
    ));
    let by_cluster: Vec<(&str, &str)> = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap(),
                c["explanation"]["backends"][0]["from"][0]["order"][0]["endpoint"]["region"]
                    .as_str()
                    .unwrap(),
            )
        })
        .collect();
    // East goes to another region (which one is the proxy's measurement on loopback).
    assert_eq!(by_cluster[0].0, "east");
    assert!(
        ["eu-central", "us-west"].contains(&by_cluster[0].1),
        "{by_cluster:?}"
    );
    assert_eq!(
        by_cluster[1..],
        [("west", "us-west"), ("central", "eu-central")]
    );

    // Text output names the same decision.
    let text = meridian(
        dir,
        &[
            "explain",
            "--gateway",
            "demo/web",
            "--context",
            "east",
            "--fail",
            "us-east",
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("what if us-east (region) fails"), "{text}");
    assert!(text.contains("demo/echo rule 0"), "{text}");
    assert!(text.contains("other regions: "), "{text}");
}

fn check_errors(dir: &Path) {
    let out = meridian(dir, &["explain", "--gateway", "demo/nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Gateway demo/nope is not served"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("demo/web"),
        "lists what is served: {}",
        stderr(&out)
    );

    let out = meridian(
        dir,
        &["explain", "--gateway", "demo/web", "--header", "x-canary"],
    );
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stderr(&out).contains("NAME=VALUE"), "{}", stderr(&out));

    let out = meridian(dir, &["explain", "--gateway", "demo/web", "--fail", "mars"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("names no cluster, region or zone"),
        "{}",
        stderr(&out)
    );

    let out = meridian(
        dir,
        &["explain", "--gateway", "demo/web", "--context", "nowhere"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));

    // The admin listener wants the token from admin.json.
    let admin: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("admin.json")).unwrap()).unwrap();
    let authority = admin["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap();
    let answer = raw_get(authority, "/v1/status", Some("Bearer wrong"));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{answer}"
    );
    let answer = raw_get(authority, "/v1/status", None);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let token = format!("Bearer {}", admin["token"].as_str().unwrap());
    let answer = raw_get(authority, "/v1/status", Some(&token));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw_get(authority, "/v1/explain?colour=red", Some(&token));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Probes stay open.
    assert!(raw_get(authority, "/healthz", None).starts_with("HTTP/1.1 200"));

    // No controller there: says what to do.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let out = meridian(dir, &["status", "--controller", &url]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Is it running?"), "{}", stderr(&out));
    let empty = dir.join("no-such-state");
    let out = meridian(&empty, &["status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("meridian up"), "{}", stderr(&out));
}

fn raw_get(authority: &str, path: &str, authorization: Option<&str>) -> String {
    let mut s = TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `kubectl meridian status`: kubectl finds `kubectl-meridian` on PATH and runs it.
fn check_kubectl_plugin(dir: &Path) {
    if !common::have_kubectl() {
        eprintln!("SKIP kubectl plugin: kubectl is not installed");
        return;
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("kubectl-meridian");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_meridian"), &plugin).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args(["meridian", "status", "-o", "json", "--state-dir"])
        .arg(dir)
        .env("PATH", &path)
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["clusters"].as_array().unwrap().len(), 3);
    // Usage errors name the plugin as the user typed it.
    let out = Command::new("kubectl")
        .args(["meridian", "explain"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("kubectl meridian explain"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_and_explain_on_the_demo() {
    let dir = std::env::temp_dir().join(format!("meridian-status-test-{}", std::process::id()));
    let up = common::start_up(&dir, &[], &[]);
    assert!(
        up.startup.iter().any(|l| l.contains("meridian status")),
        "up prints the hint: {:#?}",
        up.startup
    );
    let status = settled_status(&dir);
    check_status(&status);

    let table = meridian(&dir, &["status"]);
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    for section in [
        "CLUSTERS",
        "PROXIES",
        "GATEWAYS",
        "BACKENDS",
        "east-proxy",
        "tier 0 zone",
        "NEAREST REGIONS (RTT)",
        "EJECTED",
    ] {
        assert!(text.contains(section), "{section} missing:\n{text}");
    }
    // --watch refreshes (bounded here by --count) and exits cleanly.
    let out = meridian(
        &dir,
        &[
            "status",
            "-o",
            "json",
            "--watch",
            "--interval",
            "1s",
            "--count",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    check_explain(&dir);
    check_errors(&dir);
    check_kubectl_plugin(&dir);
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
