//! Conformance tables for request matching inside one listener (catalogue §1.2, spec §2.1):
//! path kinds, headers, methods, query parameters and how they rank against each other.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn one_route(r: meridian_model::snapshot::Route) -> meridian_model::Router {
    compile(vec![
        gateway("infra", "same-namespace").listener(listener("http", 80).route(r)),
    ])
}

#[test]
fn simple_same_namespace_route_without_matches_serves_everything() {
    let router = one_route(route("infra", "simple").rule(rule().to("v1")));
    check(
        &router,
        &[
            (req("any.example", "/"), "v1"),
            (req("any.example", "/deep/path"), "v1"),
            (req("any.example", "/").no_host(), "v1"),
        ],
    );
}

#[test]
fn matching_longer_prefix_and_header_only_match_rank_as_implicit_root_prefix() {
    // Rule A: prefix / OR version=one → v1; rule B: prefix /v2 OR version=two → v2.
    let router = one_route(
        route("infra", "matching")
            .rule(
                rule()
                    .when(m().prefix("/"))
                    .when(m().header("version", "one"))
                    .to("v1"),
            )
            .rule(
                rule()
                    .when(m().prefix("/v2"))
                    .when(m().header("version", "two"))
                    .to("v2"),
            ),
    );
    let h = "matching.example";
    check(
        &router,
        &[
            (req(h, "/"), "v1"),
            (req(h, "/example"), "v1"),
            (req(h, "/").header("Version", "one"), "v1"),
            (req(h, "/v2"), "v2"),
            (req(h, "/v2/"), "v2"),
            (req(h, "/v2/example"), "v2"),
            // 1 header beats 0 headers at the same (implicit `/`) prefix.
            (req(h, "/").header("Version", "two"), "v2"),
            // Prefixes are whole path segments.
            (req(h, "/v2example"), "v1"),
            (req(h, "/foo/v2/example"), "v1"),
        ],
    );
}

#[test]
fn matching_across_routes_merges_rules_of_routes_sharing_a_hostname() {
    let p1 = route("infra", "across-1")
        .hosts(&["example.com", "example.net"])
        .rule(
            rule()
                .when(m().prefix("/"))
                .when(m().header("version", "one"))
                .to("v1"),
        );
    let p2 = route("infra", "across-2").host("example.com").rule(
        rule()
            .when(m().prefix("/v2"))
            .when(m().header("version", "two"))
            .to("v2"),
    );
    let router = compile(vec![
        gateway("infra", "same-namespace").listener(listener("http", 80).route(p1).route(p2)),
    ]);
    check(
        &router,
        &[
            (req("example.com", "/"), "v1"),
            (req("example.com", "/example"), "v1"),
            (req("example.net", "/example"), "v1"),
            (
                req("example.com", "/example").header("Version", "one"),
                "v1",
            ),
            (req("example.com", "/v2"), "v2"),
            (req("example.com", "/v2/example"), "v2"),
            (req("example.com", "/").header("Version", "two"), "v2"),
            // P2 does not serve example.net.
            (req("example.net", "/v2"), "v1"),
            (req("example.org", "/"), "404"),
        ],
    );
}

#[test]
fn exact_path_matching_is_whole_path_and_case_sensitive() {
    let router = one_route(
        route("infra", "exact")
            .rule(rule().when(m().exact("/one")).to("v1"))
            .rule(rule().when(m().exact("/two")).to("v2")),
    );
    let h = "exact.example";
    check(
        &router,
        &[
            (req(h, "/one"), "v1"),
            (req(h, "/two"), "v2"),
            (req(h, "/"), "404"),
            (req(h, "/one/example"), "404"),
            (req(h, "/two/"), "404"),
            (req(h, "/Two"), "404"),
            (req(h, "/one?x=y"), "v1"),
        ],
    );
}

#[test]
fn path_match_order_exact_beats_prefix_and_longest_prefix_wins() {
    let router = one_route(
        route("infra", "order")
            .rule(rule().when(m().exact("/match")).to("v1"))
            .rule(rule().when(m().exact("/match/exact")).to("v2"))
            .rule(rule().when(m().exact("/match/exact/one")).to("v3"))
            .rule(rule().when(m().prefix("/match/")).to("v3"))
            .rule(rule().when(m().prefix("/match/prefix/")).to("v1"))
            .rule(rule().when(m().prefix("/match/prefix/one")).to("v2")),
    );
    let h = "order.example";
    check(
        &router,
        &[
            (req(h, "/match/exact/one"), "v3"),
            (req(h, "/match/exact"), "v2"),
            (req(h, "/match"), "v1"),
            (req(h, "/match/prefix/one/any"), "v2"),
            (req(h, "/match/prefix/any"), "v1"),
            (req(h, "/match/any"), "v3"),
            // Not in the catalogue, but implied: the prefix `/match/` also covers `/match/`.
            (req(h, "/match/"), "v3"),
            (req(h, "/matches"), "404"),
        ],
    );
}

#[test]
fn prefix_is_segment_wise_and_ignores_a_trailing_slash_in_the_value() {
    let router = one_route(
        route("infra", "prefixes")
            .rule(rule().path("/v2").to("v2"))
            .rule(rule().path("/abc/").to("v3"))
            .rule(rule().path("/").to("v1")),
    );
    let h = "prefix.example";
    check(
        &router,
        &[
            (req(h, "/v2"), "v2"),
            (req(h, "/v2/"), "v2"),
            (req(h, "/v2/x/y"), "v2"),
            (req(h, "/v2example"), "v1"),
            (req(h, "/V2"), "v1"),
            // `/abc/` ≡ `/abc`: matches the bare segment too, but not `/abcd`.
            (req(h, "/abc"), "v3"),
            (req(h, "/abc/"), "v3"),
            (req(h, "/abc/d"), "v3"),
            (req(h, "/abcd"), "v1"),
            // Path elements are compared one by one: an empty element is not `v2`'s child.
            (req(h, "/x/v2"), "v1"),
        ],
    );
}

#[test]
fn prefix_compares_empty_path_elements_too() {
    // Spec: PathPrefix matches element by element of the path split by `/`, so `/a//b` has the
    // elements `a`, ``, `b` and is not under the prefix `/a/b`, although it is under `/a`.
    let router = one_route(
        route("infra", "empty-elements")
            .rule(rule().path("/a/b").to("v2"))
            .rule(rule().path("/a").to("v1")),
    );
    let h = "elements.example";
    check(
        &router,
        &[
            (req(h, "/a/b"), "v2"),
            (req(h, "/a/b/"), "v2"),
            (req(h, "/a//b"), "v1"),
            (req(h, "/a/"), "v1"),
            (req(h, "/a//"), "v1"),
            (req(h, "//a/b"), "404"),
        ],
    );
}

#[test]
fn regex_path_must_match_the_whole_path_and_ranks_between_exact_and_prefix() {
    let router = one_route(
        route("infra", "regex")
            .rule(rule().when(m().regex("/api/v[0-9]+")).to("v2"))
            .rule(rule().when(m().exact("/api/v1")).to("v3"))
            .rule(rule().path("/api").to("v1")),
    );
    let h = "regex.example";
    check(
        &router,
        &[
            (req(h, "/api/v7"), "v2"),
            (req(h, "/api/v12"), "v2"),
            // Exact beats the regex.
            (req(h, "/api/v1"), "v3"),
            // Full match: neither a longer path nor an embedded occurrence matches.
            (req(h, "/api/v7/users"), "v1"),
            (req(h, "/x/api/v7"), "404"),
            (req(h, "/api/vx"), "v1"),
        ],
    );
}

#[test]
fn regex_alternation_cannot_escape_the_full_match_anchors() {
    // `^(?:a|b)$` — the alternation must stay inside the anchors.
    let router = one_route(
        route("infra", "alternation")
            .rule(rule().when(m().regex("/one|/two")).to("v2"))
            .rule(rule().when(m().header_re("x-tier", "gold|silver")).to("v3")),
    );
    let h = "alt.example";
    check(
        &router,
        &[
            (req(h, "/one"), "v2"),
            (req(h, "/two"), "v2"),
            (req(h, "/one/more"), "404"),
            (req(h, "/pre/two"), "404"),
            (req(h, "/three").header("X-Tier", "silver"), "v3"),
            (req(h, "/three").header("X-Tier", "silverish"), "404"),
            (req(h, "/three").header("X-Tier", "xgold"), "404"),
        ],
    );
}

#[test]
fn header_matching_names_case_insensitive_more_headers_win_ties_go_to_first_rule() {
    let router = one_route(
        route("infra", "headers")
            .rule(rule().when(m().header("version", "one")).to("v1"))
            .rule(rule().when(m().header("version", "two")).to("v2"))
            .rule(
                rule()
                    .when(m().header("version", "two").header("color", "orange"))
                    .to("v1"),
            )
            .rule(
                rule()
                    .when(m().header("color", "blue"))
                    .when(m().header("color", "green"))
                    .to("v1"),
            )
            .rule(
                rule()
                    .when(m().header("color", "red"))
                    .when(m().header("color", "yellow"))
                    .to("v2"),
            ),
    );
    let h = "headers.example";
    check(
        &router,
        &[
            (req(h, "/").header("Version", "one"), "v1"),
            (req(h, "/").header("Version", "two"), "v2"),
            (
                req(h, "/")
                    .header("Version", "two")
                    .header("Color", "orange"),
                "v1",
            ),
            // Both the version=two rule and the color=blue rule match with one header: the first
            // rule in the list wins.
            (
                req(h, "/").header("Version", "two").header("Color", "blue"),
                "v2",
            ),
            (req(h, "/").header("Color", "orange"), "404"),
            (req(h, "/").header("Some-Other-Header", "one"), "404"),
            (req(h, "/").header("Color", "blue"), "v1"),
            (req(h, "/").header("Color", "green"), "v1"),
            (req(h, "/").header("Color", "red"), "v2"),
            (req(h, "/").header("Color", "yellow"), "v2"),
            (req(h, "/").header("Color", "purple"), "404"),
            (req(h, "/").header("VERSION", "one"), "v1"),
            // Values are exact.
            (req(h, "/").header("Version", "ONE"), "404"),
            (req(h, "/"), "404"),
        ],
    );
}

#[test]
fn header_regex_value_and_repeated_request_headers() {
    let router = one_route(
        route("infra", "header-regex")
            .rule(rule().when(m().header_re("x-id", "[0-9]{3}")).to("v2"))
            .rule(rule().when(m().header("x-list", "a,b")).to("v3")),
    );
    let h = "hre.example";
    check(
        &router,
        &[
            (req(h, "/").header("X-Id", "123"), "v2"),
            (req(h, "/").header("X-Id", "1234"), "404"),
            (req(h, "/").header("X-Id", "12"), "404"),
            // Repeated headers are seen joined with `,`.
            (
                req(h, "/").header("x-list", "a").header("X-List", "b"),
                "v3",
            ),
        ],
    );
}

#[test]
fn method_matching_head_is_not_get_path_beats_method_method_beats_header() {
    let router = one_route(
        route("infra", "methods")
            .rule(rule().when(m().method("POST")).to("v1"))
            .rule(rule().when(m().method("GET")).to("v2"))
            .rule(rule().when(m().prefix("/path1").method("GET")).to("v1"))
            .rule(
                rule()
                    .when(m().header("version", "one").method("PUT"))
                    .to("v2"),
            )
            .rule(
                rule()
                    .when(m().prefix("/path2").header("version", "two").method("POST"))
                    .to("v3"),
            )
            .rule(
                rule()
                    .when(m().prefix("/path3").method("PATCH"))
                    .when(
                        m().prefix("/path4")
                            .header("version", "three")
                            .method("DELETE"),
                    )
                    .to("v1"),
            )
            .rule(rule().path("/path5").to("v1"))
            .rule(rule().when(m().method("PATCH")).to("v2"))
            .rule(rule().when(m().header("version", "four")).to("v3")),
    );
    let h = "methods.example";
    check(
        &router,
        &[
            (req(h, "/").method("POST"), "v1"),
            (req(h, "/").method("GET"), "v2"),
            (req(h, "/").method("HEAD"), "404"),
            (req(h, "/path1").method("GET"), "v1"),
            (req(h, "/").method("PUT").header("version", "one"), "v2"),
            (
                req(h, "/path2").method("POST").header("version", "two"),
                "v3",
            ),
            (req(h, "/path3").method("PATCH"), "v1"),
            (
                req(h, "/path4").method("DELETE").header("version", "three"),
                "v1",
            ),
            (req(h, "/").method("PUT"), "404"),
            (req(h, "/path4").method("DELETE"), "404"),
            (req(h, "/path5").method("PATCH"), "v1"),
            (req(h, "/").method("PATCH").header("version", "four"), "v2"),
            // Methods are exact: no case folding.
            (req(h, "/").method("get"), "404"),
        ],
    );
}

#[test]
fn query_param_matching_case_sensitive_counts_and_ranks_below_path_and_headers() {
    let router = one_route(
        route("infra", "query")
            .rule(rule().when(m().query("animal", "whale")).to("v1"))
            .rule(rule().when(m().query("animal", "dolphin")).to("v2"))
            .rule(
                rule()
                    .when(m().query("animal", "dolphin").query("color", "blue"))
                    .when(m().query("ANIMAL", "Whale"))
                    .to("v3"),
            )
            .rule(
                rule()
                    .when(m().prefix("/path1").query("animal", "whale"))
                    .to("v1"),
            )
            .rule(
                rule()
                    .when(m().header("version", "one").query("animal", "whale"))
                    .to("v2"),
            )
            .rule(
                rule()
                    .when(
                        m().prefix("/path2")
                            .header("version", "two")
                            .query("animal", "whale"),
                    )
                    .to("v3"),
            )
            .rule(
                rule()
                    .when(m().prefix("/path3").query("animal", "shark"))
                    .when(
                        m().prefix("/path4")
                            .header("version", "three")
                            .query("animal", "kraken"),
                    )
                    .to("v1"),
            )
            .rule(rule().path("/path5").to("v1"))
            .rule(rule().when(m().query("animal", "hydra")).to("v2"))
            .rule(rule().when(m().header("version", "four")).to("v3")),
    );
    let h = "query.example";
    check(
        &router,
        &[
            (req(h, "/?animal=whale"), "v1"),
            (req(h, "/?animal=dolphin"), "v2"),
            (req(h, "/?animal=dolphin&color=blue"), "v3"),
            (req(h, "/?ANIMAL=Whale"), "v3"),
            (req(h, "/?animal=whale&otherparam=irrelevant"), "v1"),
            (req(h, "/?animal=dolphin&color=yellow"), "v2"),
            (req(h, "/?color=blue"), "404"),
            (req(h, "/?animal=dog"), "404"),
            (req(h, "/?animal=whaledolphin"), "404"),
            (req(h, "/"), "404"),
            (req(h, "/path1?animal=whale"), "v1"),
            (req(h, "/?animal=whale").header("version", "one"), "v2"),
            (req(h, "/path2?animal=whale").header("version", "two"), "v3"),
            (req(h, "/path3?animal=shark"), "v1"),
            (
                req(h, "/path4?animal=kraken").header("version", "three"),
                "v1",
            ),
            (req(h, "/?animal=shark"), "404"),
            (req(h, "/path4?animal=kraken"), "404"),
            (req(h, "/path5?animal=hydra"), "v1"),
            (req(h, "/?animal=hydra").header("version", "four"), "v3"),
        ],
    );
}

#[test]
fn query_param_uses_the_first_value_and_decodes_percent_escapes() {
    let router = one_route(
        route("infra", "query-first")
            .rule(rule().when(m().query("animal", "whale")).to("v1"))
            .rule(rule().when(m().query("q", "a b&c")).to("v2"))
            .rule(rule().when(m().query_re("id", "[0-9]+")).to("v3")),
    );
    let h = "qfirst.example";
    check(
        &router,
        &[
            (req(h, "/?animal=whale&animal=dolphin"), "v1"),
            (req(h, "/?animal=dolphin&animal=whale"), "404"),
            (req(h, "/?q=a%20b%26c"), "v2"),
            (req(h, "/?id=42"), "v3"),
            (req(h, "/?id=42x"), "404"),
            (req(h, "/?id="), "404"),
            (req(h, "/?&&animal=whale&"), "v1"),
        ],
    );
}

#[test]
fn matched_prefix_is_reported_normalised_for_rewrites() {
    let router = one_route(
        route("infra", "prefix-report")
            .rule(rule().path("/strip-prefix/").to("v1"))
            .rule(rule().when(m().exact("/exact")).to("v1"))
            .rule(rule().to("v2")),
    );
    let h = "report.example";
    let cases: &[(&str, Option<&str>)] = &[
        ("/strip-prefix/three", Some("/strip-prefix")),
        ("/exact", None),
        ("/other", Some("/")),
    ];
    for (path, want) in cases {
        let got = matched(&router, &req(h, path));
        assert_eq!(got.matched_prefix.as_deref(), *want, "{path}");
    }
}

#[test]
fn named_rule_routes_like_an_unnamed_one() {
    let mut named = rule().path("/named").to("v1");
    named.name = Some("named-rule".to_string());
    let router = one_route(
        route("infra", "named-rule")
            .rule(named)
            .rule(rule().path("/unnamed").to("v2")),
    );
    let h = "named.example";
    check(
        &router,
        &[
            (req(h, "/named"), "v1"),
            (req(h, "/unnamed"), "v2"),
            (req(h, "/"), "404"),
        ],
    );
    let got = matched(&router, &req(h, "/named"));
    assert_eq!(got.rule.rule.name.as_deref(), Some("named-rule"));
}

#[test]
fn cross_namespace_route_serves_its_own_namespace_backend() {
    let router = compile(vec![
        gateway("gateway-conformance-infra", "backend-namespaces").listener(
            listener("http", 80).route(
                route("gateway-conformance-web-backend", "cross-namespace")
                    .rule(rule().to("web-backend")),
            ),
        ),
    ]);
    let got = matched(&router, &req("cross.example", "/"));
    assert_eq!(got.rule.route_namespace, "gateway-conformance-web-backend");
    assert_eq!(got.listener.gateway_namespace, "gateway-conformance-infra");
    assert_eq!(send(&router, &req("cross.example", "/")), "web-backend");
}
