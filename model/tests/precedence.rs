//! The tail of the precedence order (spec §2.1.3 items 6–8): when two matches tie on path,
//! method, headers and query parameters, the older route wins, then the route first in
//! `namespace/name` order, then the first rule of a route, then the first match of a rule —
//! across all routes of the selected listener, regardless of their order in the snapshot.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_model::snapshot::Route;

fn listener_with(routes: Vec<Route>) -> meridian_model::Router {
    let mut l = listener("http", 80);
    l.routes = routes.into_iter().map(Into::into).collect();
    compile(vec![gateway("infra", "same-namespace").listener(l)])
}

/// Compiles the routes in the given order and in reverse, and expects the same winner both ways.
fn winner_both_orders(routes: Vec<Route>, r: &Req) -> String {
    let forward = send(&listener_with(routes.clone()), r);
    let mut reversed = routes;
    reversed.reverse();
    let backward = send(&listener_with(reversed), r);
    assert_eq!(forward, backward, "snapshot order changed the winner");
    forward
}

#[test]
fn precedence_older_route_wins_a_full_tie() {
    let routes = vec![
        route("infra", "a-newer")
            .created(200)
            .rule(rule().path("/tie").to("v1")),
        route("infra", "z-older")
            .created(100)
            .rule(rule().path("/tie").to("v2")),
    ];
    assert_eq!(winner_both_orders(routes, &req("p.example", "/tie")), "v2");
}

#[test]
fn precedence_creation_time_ranks_below_every_match_criterion() {
    // The newer route wins whenever its match is more specific on any criterion.
    let cases: &[(&str, meridian_model::snapshot::Match, Req)] = &[
        (
            "longer prefix",
            m().prefix("/tie/deeper"),
            req("p.example", "/tie/deeper"),
        ),
        ("exact path", m().exact("/tie"), req("p.example", "/tie")),
        (
            "method",
            m().prefix("/tie").method("GET"),
            req("p.example", "/tie"),
        ),
        (
            "header",
            m().prefix("/tie").header("x", "1"),
            req("p.example", "/tie").header("X", "1"),
        ),
        (
            "query",
            m().prefix("/tie").query("q", "1"),
            req("p.example", "/tie?q=1"),
        ),
    ];
    for (what, newer_match, r) in cases {
        let routes = vec![
            route("infra", "older")
                .created(1)
                .rule(rule().path("/tie").to("v1")),
            route("infra", "newer")
                .created(2)
                .rule(rule().when(newer_match.clone()).to("v2")),
        ];
        assert_eq!(winner_both_orders(routes, r), "v2", "{what}");
    }
}

#[test]
fn precedence_namespace_then_name_breaks_a_creation_time_tie() {
    let r = req("p.example", "/same");
    // Namespace decides before name: `a/zzz` beats `b/aaa`.
    let routes = vec![
        route("b", "aaa")
            .created(5)
            .rule(rule().path("/same").to("v1")),
        route("a", "zzz")
            .created(5)
            .rule(rule().path("/same").to("v2")),
    ];
    assert_eq!(winner_both_orders(routes, &r), "v2");
    // Same namespace: the name decides.
    let routes = vec![
        route("infra", "route-b")
            .created(5)
            .rule(rule().path("/same").to("v1")),
        route("infra", "route-a")
            .created(5)
            .rule(rule().path("/same").to("v3")),
    ];
    assert_eq!(winner_both_orders(routes, &r), "v3");
    // Creation time still decides before the name.
    let routes = vec![
        route("infra", "route-b")
            .created(4)
            .rule(rule().path("/same").to("v1")),
        route("infra", "route-a")
            .created(5)
            .rule(rule().path("/same").to("v3")),
    ];
    assert_eq!(winner_both_orders(routes, &r), "v1");
}

#[test]
fn precedence_rule_order_then_match_order_within_a_route() {
    let r = req("p.example", "/same").header("h", "1");
    // Two rules tie: the first one in the route wins.
    let router = listener_with(vec![
        route("infra", "rules")
            .rule(rule().when(m().prefix("/same").header("h", "1")).to("v2"))
            .rule(rule().when(m().prefix("/same").header("h", "1")).to("v1")),
    ]);
    assert_eq!(send(&router, &r), "v2");
    let got = matched(&router, &r);
    assert_eq!(got.rule.index, 0);

    // Within one rule, the first of two tying matches is the one reported, which matters for the
    // matched prefix: both are prefixes of the same length.
    let router = listener_with(vec![
        route("infra", "matches").rule(
            rule()
                .when(m().prefix("/same/").header("h", "1"))
                .when(m().prefix("/same").header("h", "1"))
                .to("v1"),
        ),
    ]);
    let got = matched(&router, &r);
    assert_eq!(got.matched_prefix.as_deref(), Some("/same"));
}

#[test]
fn precedence_a_better_match_in_a_later_rule_beats_an_earlier_rule() {
    // Rule order only breaks ties: a longer prefix in rule 2 beats rule 1.
    let router = listener_with(vec![
        route("infra", "ordered")
            .rule(rule().path("/a").to("v1"))
            .rule(rule().path("/a/b").to("v2")),
    ]);
    check(
        &router,
        &[
            (req("p.example", "/a/b/c"), "v2"),
            (req("p.example", "/a/c"), "v1"),
        ],
    );
}

#[test]
fn precedence_is_computed_across_routes_not_per_route() {
    // The old route has a short prefix; a newer route's longer prefix must still win for its
    // paths, and the old route keeps the rest.
    let routes = vec![
        route("infra", "old").created(1).rule(rule().to("v1")),
        route("infra", "new")
            .created(9)
            .rule(rule().path("/new").to("v2"))
            .rule(rule().when(m().method("POST")).to("v3")),
    ];
    let router = listener_with(routes.clone());
    check(
        &router,
        &[
            (req("p.example", "/new/x"), "v2"),
            (req("p.example", "/old"), "v1"),
            // Method beats the old route's bare `/` at the same prefix length.
            (req("p.example", "/old").method("POST"), "v3"),
        ],
    );
    let r = req("p.example", "/new");
    assert_eq!(winner_both_orders(routes, &r), "v2");
}

#[test]
fn precedence_identifies_the_winning_route_and_rule() {
    let router = listener_with(vec![
        route("team-b", "checkout")
            .created(3)
            .rule(rule().path("/").to("v1"))
            .rule(rule().path("/cart").to("v2")),
        route("team-a", "checkout")
            .created(3)
            .rule(rule().path("/cart").to("v3")),
    ]);
    let got = matched(&router, &req("p.example", "/cart/1"));
    assert_eq!(
        (
            got.rule.route_namespace.as_str(),
            got.rule.route_name.as_str(),
            got.rule.index
        ),
        ("team-a", "checkout", 0)
    );
    let got = matched(&router, &req("p.example", "/"));
    assert_eq!(
        (got.rule.route_namespace.as_str(), got.rule.index),
        ("team-b", 0)
    );
}
