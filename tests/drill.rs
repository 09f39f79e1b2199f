//! `meridian drill` end to end against `meridian up`, as a person runs them: two real processes,
//! drills in drain, kill and (with nft and root) blackhole mode, and an abort guard.
//!
//! Only one `up` can run on a machine at a time (fixed loopback addresses), so everything happens
//! in one test, in order, and `up` is stopped on every path (the guard's Drop).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Stop, lines};
use meridian_test_support::process::{rest, wait_or_kill};

/// A plain HTTP/1.1 GET; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    report: serde_json::Value,
    dir: PathBuf,
}

/// Runs `meridian drill` with a hard deadline; the report must exist afterwards.
fn drill(kubeconfig: &Path, report: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("drill")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--report")
        .arg(report)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(&mut child, "drill");
    let mut child = Stop(child);
    let exit = wait_or_kill(&mut child.0, Duration::from_secs(90));
    assert!(exit.in_time, "meridian drill {args:?} ran past 90 s");
    let code = exit.status.and_then(|s| s.code());
    // Its last lines: the reader thread passes them on until the pipe closes.
    let stdout = rest(&rx, Duration::from_secs(10));
    let json = std::fs::read_to_string(report.join("report.json"))
        .unwrap_or_else(|e| panic!("report.json of {args:?}: {e}\n{}", stdout.join("\n")));
    Run {
        code,
        stdout: stdout.join("\n"),
        report: serde_json::from_str(&json).unwrap(),
        dir: report.to_path_buf(),
    }
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// What every completed drill of us-east must show: no failed GET, ≥95 % served elsewhere while
/// us-east was down, back home afterwards, and the report files with the picture's markers.
fn assert_clean_failover(run: &Run, mode: &str) {
    let r = &run.report;
    let f = &r["figures"];
    println!(
        "{mode}: detect {} ms, shift95 {} ms, failback {} ms, failed {}, p99 before/during/after {}/{}/{} ms",
        f["timeToDetectMs"],
        f["timeToShift95Ms"],
        f["failbackMs"],
        f["failedTotal"],
        f["before"]["latency"]["p99Ms"],
        f["during"]["latency"]["p99Ms"],
        f["after"]["latency"]["p99Ms"]
    );
    assert_eq!(run.code, Some(0), "{mode}: exit status\n{}", run.stdout);
    assert_eq!(r["drill"]["status"]["phase"], "Succeeded", "{mode}");
    assert_eq!(r["pass"], true, "{mode}");
    assert_eq!(f["failedTotal"], 0, "{mode}: 0 failed GETs: {f}");
    assert_eq!(f["homeRegion"], "us-east", "{mode}");
    assert!(num(&f["requests"]) > 500.0, "{mode}: load ran: {f}");
    // While us-east was failed, (almost) every answer came from elsewhere.
    let east_during = f["during"]["shareByRegion"]["us-east"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        east_during <= 5.0,
        "{mode}: us-east share during {east_during} %"
    );
    assert!(
        num(&f["timeToShift95Ms"]) <= 1000.0,
        "{mode}: 95 % shift (goal <= 1 s): {f}"
    );
    assert!(f["timeToDetectMs"].is_number(), "{mode}");
    // After the restore, traffic came back to the local region.
    assert!(
        f["failbackMs"].is_number(),
        "{mode}: no failback within the after window; bins after the restore:\n{}\nfigures: {f}",
        bins_after_restore(r)
    );
    let east_after = num(&f["after"]["shareByRegion"]["us-east"]);
    assert!(
        east_after >= 50.0,
        "{mode}: us-east share after {east_after} %"
    );
    assert_eq!(
        r["load"]["servedByHeader"], r["figures"]["requests"],
        "{mode}: header on every answer"
    );
    let md = std::fs::read_to_string(run.dir.join("report.md")).unwrap();
    assert!(md.contains("| time to shift ≥95 %"), "{md}");
    let svg = std::fs::read_to_string(run.dir.join("timeline.svg")).unwrap();
    assert!(svg.contains(r#"id="marker-fail""#) && svg.contains(r#"id="marker-restore""#));
    // One area per serving region: home, and wherever traffic went (no policy: any region).
    assert!(svg.matches(r#"class="area""#).count() >= 2, "{svg}");
    assert!(svg.contains(r#"data-series="us-east""#));
}

/// The report's 250 ms bins from the restore moment on, one line each ("+250 ms us-east 20
/// us-west 5 failed 0"), and the controller's timeline: what a failed failback check prints.
fn bins_after_restore(r: &serde_json::Value) -> String {
    let restore = r["moments"]["restoreMs"].as_f64().unwrap_or(f64::MAX);
    let mut out = Vec::new();
    for b in r["bins"].as_array().into_iter().flatten() {
        let start = b["startMs"].as_f64().unwrap_or(0.0);
        if start + 250.0 < restore {
            continue;
        }
        let regions = b["byRegion"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(format!(
            "  {:+.0} ms {regions} failed {}",
            start - restore,
            b["failed"]
        ));
    }
    out.push(format!(
        "  moments {}; controller timeline {}",
        r["moments"], r["drill"]["status"]["timeline"]
    ));
    out.join("\n")
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = common::kubectl_east(kubeconfig, cache, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_usable() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    root && Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn drills_fail_a_region_and_bring_it_back() {
    if !common::have_kubectl() {
        eprintln!("SKIP: kubectl is not installed");
        return;
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("meridian-drill-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The abort drill makes the proxies log every 503 it causes; errors are enough here.
    let up = common::start_up(&dir.join("state"), &[], &[("MERIDIAN_LOG", "error")]);
    let kubeconfig = dir.join("state").join("kubeconfig");
    let cache = dir.join("kube-cache");
    // Short phases: the controller's guard window is also its baseline and after-period.
    let common = [
        "--target",
        "us-east",
        "--warmup",
        "2s",
        "--duration",
        "4s",
        "--after",
        "4s",
        "--load",
        "100",
        "--guard-window",
        "1s",
    ];

    // 1. Drain: the proxies stop using us-east; nothing is broken.
    let run = drill(
        &kubeconfig,
        &dir.join("drain"),
        &[&common[..], &["--mode", "drain"]].concat(),
    );
    assert_clean_failover(&run, "drain");
    assert!(
        run.stdout.contains("drill phase Succeeded"),
        "{}",
        run.stdout
    );

    // 2. Kill: us-east's backends are stopped (connections refused) and restarted.
    let run = drill(
        &kubeconfig,
        &dir.join("kill"),
        &[&common[..], &["--mode", "kill"]].concat(),
    );
    assert_clean_failover(&run, "kill");

    // 3. Blackhole: us-east's packets are dropped. Requests caught on a silent endpoint wait for
    //    the proxy's connect timeout / TCP user timeout (2 s) and then move on: slow, not failed.
    if nft_usable() {
        let run = drill(
            &kubeconfig,
            &dir.join("blackhole"),
            &[&common[..], &["--mode", "blackhole"]].concat(),
        );
        let f = &run.report["figures"];
        println!(
            "blackhole: detect {} ms, shift95 {} ms, failback {} ms, failed {} {}, p99 during {} ms",
            f["timeToDetectMs"],
            f["timeToShift95Ms"],
            f["failbackMs"],
            f["failedTotal"],
            f["failed"],
            f["during"]["latency"]["p99Ms"]
        );
        assert_eq!(run.report["drill"]["status"]["phase"], "Succeeded");
        assert_eq!(num(&f["failedTotal"]), 0.0, "blackhole: failed GETs: {f}");
        assert!(
            num(&f["timeToShift95Ms"]) <= 3000.0,
            "blackhole: 95 % shift (goal <= 3 s): {f}"
        );
        assert!(f["failbackMs"].is_number(), "blackhole: failback: {f}");
        assert!(num(&f["after"]["shareByRegion"]["us-east"]) >= 50.0);
        let svg = std::fs::read_to_string(run.dir.join("timeline.svg")).unwrap();
        assert!(svg.contains(r#"id="marker-fail""#) && svg.contains(r#"id="marker-restore""#));
        // The table is gone after the restore.
        let tables = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains("meridian-drill-"),
            "nft table left behind"
        );
    } else {
        eprintln!("SKIP blackhole drill: needs root and a working nft");
    }

    // 4. Abort guard: a geo-fence keeps demo/echo in us-east, so draining us-east leaves no
    //    endpoint: 503s, the 5 % error guard trips, the drill is aborted and us-east restored.
    let policy = r#"
apiVersion: meridian.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: fence-east, namespace: demo}
spec:
  targetRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: echo}]
  geoFence: {regions: [us-east]}
"#;
    kubectl(&kubeconfig, &cache, &["apply", "-f", "-"], Some(policy));
    let run = drill(
        &kubeconfig,
        &dir.join("abort"),
        &[
            "--target",
            "us-east",
            "--warmup",
            "2s",
            "--duration",
            "30s",
            "--after",
            "3s",
            "--load",
            "100",
            "--guard-window",
            "1s",
            "--guard-error-percent",
            "5",
            "--mode",
            "drain",
        ],
    );
    kubectl(
        &kubeconfig,
        &cache,
        &["delete", "failoverpolicy", "-n", "demo", "fence-east"],
        None,
    );
    let r = &run.report;
    let st = &r["drill"]["status"];
    println!("abort: {}", st["abortReason"]);
    assert_eq!(run.code, Some(3), "aborted drills exit 3\n{}", run.stdout);
    assert_eq!(st["phase"], "Aborted");
    assert!(
        run.stdout.contains("drill Aborted:"),
        "the CLI says why: {}",
        run.stdout
    );
    let reason = st["abortReason"].as_str().unwrap();
    assert!(run.stdout.contains(reason), "{}", run.stdout);
    // Restored at once, long before the 30 s duration.
    let (fail, restore) = (
        num(&r["moments"]["failMs"]),
        num(&r["moments"]["restoreMs"]),
    );
    assert!(
        restore - fail < 10_000.0,
        "restored {} ms after the fail",
        restore - fail
    );
    assert!(num(&r["figures"]["during"]["errorPercent"]) > 5.0);
    assert!(
        r["figures"]["failbackMs"].is_number(),
        "traffic back after the abort"
    );
    assert_eq!(r["pass"], false);

    drop(up);

    // 5. Multi-network: every cluster on a network of its own, so the us-east proxy reaches the
    //    other regions only through their proxies' east-west listeners. A kill drill of us-east
    //    must still lose nothing, and the other regions' proxies must have served it.
    let up = common::start_up(
        &dir.join("state-multi-network"),
        &["--multi-network"],
        &[("MERIDIAN_LOG", "error")],
    );
    let kubeconfig = dir.join("state-multi-network").join("kubeconfig");
    let run = drill(
        &kubeconfig,
        &dir.join("multi-network"),
        &[&common[..], &["--mode", "kill"]].concat(),
    );
    assert_clean_failover(&run, "multi-network kill");
    // "proxy: central (eu-central, zone eu-central-a) serves at …, admin http://A, east-west E"
    let mut east_west_served = 0.0;
    for line in up.startup.iter().filter(|l| l.contains(", east-west ")) {
        let admin = line
            .split("admin http://")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap();
        let metrics = http_get(admin, "/metrics");
        east_west_served += metrics
            .lines()
            .filter(|l| {
                l.starts_with("meridian_proxy_gateway_requests_total")
                    && l.contains(r#"gateway="east-west""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    let during = num(&run.report["figures"]["during"]["requests"]);
    assert!(
        east_west_served >= during * 0.9,
        "the drill's {during} requests during the kill went through east-west listeners \
         ({east_west_served} counted)"
    );
    drop(up);
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}
