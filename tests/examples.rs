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
    assert!(
        commands[0].starts_with("cargo run --release -- "),
        "first command runs meridian: {}",
        commands[0]
    );
    assert!(
        commands[1].starts_with("cargo fmt --all"),
        "second command is the test command: {}",
        commands[1]
    );
    assert!(commands[1].contains("cargo test --workspace"));
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    assert!(
        ci.contains("cargo fmt --all"),
        ".ci/run must read the test command from README"
    );
}
