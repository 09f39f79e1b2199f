//! The live view in a real browser: headless Chromium, driven over WebDriver (chromedriver,
//! `fantoccini`), against `meridian up` as a person runs it.
//!
//! ```text
//!  meridian up ─ prints "live view: http://127.0.0.1:P/ui#token=…"
//!  chromedriver ◄── fantoccini: open that URL
//!    page: three regions, demo/web Programmed in each, token gone from the address bar,
//!          the drill form offered (token listener)
//!  meridian drill --target us-east (a second process: load through east's Gateway + the drill)
//!    page: share of us-east near 100 % ─► the drill fails us-east ─► us-east near 0 %, another
//!          region takes it (timed: from the drill's failTime on the page to the share on screen)
//!          ─► screenshot ─► drill Succeeded with its figures
//!  page: "Start drill…" ─► confirmation ─► POST /v1/drills ─► the new drill shows up
//! ```
//!
//! Skipped with a message when `chromium` or `chromedriver` is missing (`.ci/run` installs them
//! through `./dev`). The screenshot goes to the test's scratch directory; with
//! `MERIDIAN_UPDATE_SCREENSHOT=1` it replaces `docs/img/live-view.png` (README's picture).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use meridian_test_support::{ScratchDir, Stop, free_port, wait_or_kill};
use serde_json::Value;

mod common;

/// `name` on PATH, or at its Debian location.
fn find_tool(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .chain([Path::new("/usr/bin").join(n)])
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}

/// Runs `script` in the page; its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Polls `script` every 200 ms until `ok(value)`, for at most `within`; the value.
async fn wait_js(
    c: &Client,
    what: &str,
    within: Duration,
    script: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = js(c, script).await;
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SHARES: &str = "return Object.fromEntries([...document.querySelectorAll('[id^=share-]')]\
    .map(e => [e.id.slice(6), parseFloat(e.textContent)]))";

fn share(v: &Value, region: &str) -> f64 {
    v[region].as_f64().unwrap_or(-1.0)
}

#[test]
fn live_view_shows_the_regions_and_a_drill_moving_traffic_in_a_browser() {
    let (Some(chromium), Some(driver)) = (
        find_tool(&["chromium", "chromium-browser"]),
        find_tool(&["chromedriver"]),
    ) else {
        eprintln!(
            "SKIP: the live view browser test needs chromium and chromedriver (Debian: apt-get \
             install chromium chromium-driver; ./dev installs them)"
        );
        return;
    };
    let dir = ScratchDir::new("liveview");
    let port = free_port();
    let chromedriver = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let chromedriver = Stop(chromedriver);

    let up = common::start_up(&dir.join("state"), &[], &[("MERIDIAN_LOG", "error")]);
    let url = live_url(&up.lines);
    assert!(url.contains("/ui#token="), "{url}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drive(&chromium, port, &url, &dir));
    drop(up);
    drop(chromedriver);
}

/// The "live view: URL" line `up` printed with what to try.
fn live_url(lines: &mpsc::Receiver<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(500))
            && let Some(rest) = l.trim().strip_prefix("live view: ")
        {
            return rest.split_whitespace().next().unwrap().to_string();
        }
    }
    panic!("meridian up printed no \"live view:\" line");
}

async fn drive(chromium: &str, port: u16, url: &str, dir: &ScratchDir) {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1700", "--hide-scrollbars"],
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    // chromedriver takes a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    c.goto(url).await.unwrap();

    // Three regions, each cluster's demo Gateway Programmed.
    let regions = wait_js(
        &c,
        "three regions on the page",
        Duration::from_secs(30),
        "return [...new Set([...document.querySelectorAll('[data-region]')].map(e => e.dataset.region))].sort()",
        |v| v.as_array().is_some_and(|a| a.len() == 3),
    )
    .await;
    assert_eq!(
        regions,
        serde_json::json!(["eu-central", "us-east", "us-west"])
    );
    wait_js(
        &c,
        "demo/web Programmed in every cluster",
        Duration::from_secs(30),
        "const g = [...document.querySelectorAll('[data-gateway=\"demo/web\"]')];\
         return g.length + ' ' + g.filter(e => e.dataset.programmed === 'true').length",
        |v| v == "3 3",
    )
    .await;
    let text = c
        .find(Locator::Css("#regions"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("Programmed") && text.contains("reachable"),
        "{text}"
    );
    // The token left the address bar; this token listener offers to start drills.
    assert_eq!(js(&c, "return location.hash").await, "");
    c.find(Locator::Css("#drill-form")).await.unwrap();

    // A drill as the tests run it: load through east's Gateway, us-east drained.
    let kubeconfig = dir.join("state").join("kubeconfig");
    let report = dir.join("report");
    let mut drill = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("drill")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--report")
        .arg(&report)
        .args([
            "--target",
            "us-east",
            "--mode",
            "drain",
            "--warmup",
            "4s",
            "--duration",
            "8s",
            "--after",
            "4s",
            "--load",
            "100",
            "--guard-window",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Before the drill, east's traffic is served at home.
    wait_js(
        &c,
        "us-east serving east's load",
        Duration::from_secs(20),
        SHARES,
        |v| share(v, "us-east") >= 90.0,
    )
    .await;
    // Per zone too: east's proxy (zone us-east-a) is served from its own zone.
    wait_js(
        &c,
        "zone us-east-a serving east's load",
        Duration::from_secs(10),
        "return [...document.querySelectorAll('tr[data-serving-zone]')].map(e => e.dataset.servingZone)",
        |v| v.as_array().is_some_and(|a| a.iter().any(|z| z == "us-east-a")),
    )
    .await;
    // The drill fails us-east: the page shows it running with its fail marker.
    let fail_seen = {
        wait_js(
            &c,
            "the running drill's failTime",
            Duration::from_secs(30),
            "return document.querySelectorAll('.drill[data-phase=Running] .marker-fail').length",
            |v| v.as_u64().is_some_and(|n| n > 0),
        )
        .await;
        Instant::now()
    };
    let moved = wait_js(
        &c,
        "the share moving away from us-east",
        Duration::from_secs(10),
        SHARES,
        |v| {
            share(v, "us-east") <= 5.0
                && (share(v, "us-west") >= 50.0 || share(v, "eu-central") >= 50.0)
        },
    )
    .await;
    let took = fail_seen.elapsed();
    println!("live view: share moved on screen {took:?} after the fail marker showed: {moved}");
    assert!(took <= Duration::from_secs(6), "{took:?}");
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = if std::env::var_os("MERIDIAN_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/live-view.png")
    } else {
        dir.join("live-view.png")
    };
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();
    println!(
        "live view: screenshot {} ({} bytes)",
        shot.display(),
        png.len()
    );

    // The drill ends; the page shows it Succeeded with its figures and us-east back.
    let exit = wait_or_kill(&mut drill, Duration::from_secs(60));
    assert!(exit.in_time, "meridian drill ran past 60 s");
    wait_js(
        &c,
        "the drill Succeeded with figures",
        Duration::from_secs(15),
        "const d = document.querySelector('.drill[data-phase=Succeeded]');\
         return d ? d.querySelectorAll('table tr').length : 0",
        |v| v.as_u64().is_some_and(|n| n >= 4),
    )
    .await;

    // Reloaded after the drill (the page has no samples of it now): the picture of its traffic
    // comes from what the controller sampled, not only its moments.
    c.refresh().await.unwrap();
    let pic = wait_js(
        &c,
        "the finished drill's traffic picture after a reload",
        Duration::from_secs(15),
        "const d = document.querySelector('.drill[data-phase=Succeeded]');\
         const svg = d && d.querySelector('svg[aria-label*=\"requests per second\"]');\
         const p = svg && svg.querySelector('polygon');\
         return p ? p.points.numberOfItems / 2 : 0",
        // The controller sampled the drill each second for its baseline, its 8 s and the
        // window after (11 points here); the reloaded page's own samples within the drill's
        // window (it ended moments ago, and the window reaches 5 s past the end) are fewer.
        |v| v.as_u64().is_some_and(|n| n >= 8),
    )
    .await;
    println!(
        "live view: after a reload the finished drill is drawn from the controller's series ({pic} samples)"
    );

    // Starting a drill from the page: the button asks first, then the drill exists.
    c.find(Locator::Css("#drill-duration"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    c.find(Locator::Css("#drill-duration"))
        .await
        .unwrap()
        .send_keys("3s")
        .await
        .unwrap();
    c.find(Locator::Css("#drill-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let ask = c
        .find(Locator::Css("#confirm-text"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ask.contains("Fail region") && ask.contains("3s"), "{ask}");
    c.find(Locator::Css("#confirm-yes"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        &c,
        "the page's drill created and shown",
        Duration::from_secs(20),
        "return [...document.querySelectorAll('.drill')].map(d => d.dataset.drill)\
         .filter(n => n.startsWith('live-')).length",
        |v| v.as_u64().is_some_and(|n| n > 0),
    )
    .await;
    c.close().await.unwrap();
}
