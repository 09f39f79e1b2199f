//! The examples users copy must do what their READMEs say.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use meridian_model::snapshot::{BackendTarget, Filter};
use meridian_model::{Decision, Request};

fn route_of(
    router: &meridian_model::Router,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Decision {
    let local: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    router.route(&Request {
        local,
        sni: None,
        host: Some(host),
        method: "GET",
        path,
        query: None,
        headers: &headers,
    })
}

#[test]
fn basic_snapshot_routes_as_its_readme_says() {
    let text = std::fs::read_to_string("examples/snapshot/basic.json").unwrap();
    let router = meridian_model::load(&text).unwrap();

    // Canary header → api-v2 only.
    let Decision::Matched(m) = route_of(
        &router,
        "shop.example.com",
        "/api/items",
        &[("x-canary", "true")],
    ) else {
        panic!("canary request did not match");
    };
    let names: Vec<&str> = m
        .rule
        .rule
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(names, ["demo/api-v2:80"]);

    // Plain request → the 90/10 split.
    let Decision::Matched(m) = route_of(&router, "shop.example.com", "/api/items", &[]) else {
        panic!("plain request did not match");
    };
    let weights: Vec<u32> = m.rule.rule.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
    assert!(
        m.rule
            .rule
            .backends
            .iter()
            .all(|b| matches!(b.target, BackendTarget::Endpoints { .. }))
    );

    // /old-shop → a 301 redirect rule.
    let Decision::Matched(m) = route_of(&router, "shop.example.com", "/old-shop", &[]) else {
        panic!("redirect request did not match");
    };
    assert!(
        matches!(m.rule.rule.filters.first(), Some(Filter::RequestRedirect(r)) if r.status_code == 301)
    );

    // Another host → 404.
    assert!(matches!(
        route_of(&router, "other.example.com", "/api", &[]),
        Decision::NotFound { .. }
    ));
}

#[test]
fn readme_opens_with_the_demo_and_test_commands_and_ci_runs_the_latter() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("    ") && !l.trim().is_empty())
        .take(2)
        .map(str::trim)
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "README must open with two indented commands"
    );
    // Both go through ./dev, which installs the system packages a fresh machine lacks before it
    // runs cargo (calling cargo directly fails there: pingora's build needs cmake).
    assert_eq!(commands[0], "./dev up", "first command runs the demo");
    assert_eq!(commands[1], "./dev test", "second command runs the tests");
    let dev = std::fs::read_to_string("dev").unwrap();
    for needed in [
        "cmake",
        "pkg-config",
        "libssl-dev",
        "nftables",
        "apt-get install",
    ] {
        assert!(dev.contains(needed), "./dev must install {needed}");
    }
    for step in [
        "cargo fmt --all --check",
        "cargo clippy --workspace --all-targets -- -D warnings",
        "cargo test --workspace",
        "cargo run --release --bin meridian -- up",
    ] {
        assert!(dev.contains(step), "./dev must run `{step}`");
    }
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    assert!(
        ci.contains("./dev test") && ci.contains("README.md"),
        ".ci/run must read the test command from README"
    );
}

#[test]
fn dev_script_explains_its_mistakes() {
    let out = std::process::Command::new("bash")
        .args(["dev", "no-such-command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown command 'no-such-command'"), "{err}");
    assert!(
        err.contains("./dev test"),
        "usage lists the commands: {err}"
    );
}
