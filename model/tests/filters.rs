//! Conformance tables for filters (catalogue §1.4–1.5, spec §2.6), driven through the router the
//! way the proxy uses them: route the request, take the matched rule's filter and feed it the
//! request plus what the match reported (listener port and scheme, matched prefix).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_model::filters::{
    HeaderEdit, RedirectContext, apply_header_modifier, redirect, rewrite_path,
};
use meridian_model::hostname::normalize_host;
use meridian_model::snapshot::*;
use meridian_model::{RouteMatch, Router};

/// A header list with case-insensitive names, as the proxy's header maps behave.
#[derive(Debug, Default, Clone)]
struct Headers(Vec<(String, String)>);

impl Headers {
    fn of(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl HeaderEdit for Headers {
    fn get(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!vals.is_empty()).then(|| vals.join(","))
    }
    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.0.push((name.to_string(), value.to_string()));
    }
    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

fn hv(n: &str, v: &str) -> HeaderValue {
    HeaderValue {
        name: n.to_string(),
        value: v.to_string(),
    }
}

fn modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
    HeaderModifier {
        set: set.iter().map(|(n, v)| hv(n, v)).collect(),
        add: add.iter().map(|(n, v)| hv(n, v)).collect(),
        remove: remove.iter().map(|n| n.to_string()).collect(),
    }
}

fn single_listener(l: Listener) -> Router {
    compile(vec![gateway("infra", "filters").listener(l)])
}

/// Applies every request header modifier of the matched rule, then of the chosen backend.
fn request_headers_after(m: &RouteMatch, backend: usize, start: Headers) -> Headers {
    let mut h = start;
    let rule = &m.rule.rule;
    let backend_filters = rule.backends.get(backend).map(|b| b.filters.as_slice());
    for f in rule
        .filters
        .iter()
        .chain(backend_filters.unwrap_or_default())
    {
        if let Filter::RequestHeaderModifier(hm) = f {
            apply_header_modifier(hm, &mut h);
        }
    }
    h
}

/// Header modifier routes on `/set`, `/add`, `/remove`, `/multiple`, `/case-insensitivity`.
fn header_modifier_router(on_backend: bool) -> Router {
    let table = [
        (
            "/set",
            modifier(&[("X-Header-Set", "set-overwrites-values")], &[], &[]),
        ),
        (
            "/add",
            modifier(&[], &[("X-Header-Add", "add-appends-values")], &[]),
        ),
        ("/remove", modifier(&[], &[], &["X-Header-Remove"])),
        (
            "/multiple",
            modifier(
                &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                ],
                &[
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "header-add-2"),
                    ("X-Header-Add-3", "header-add-3"),
                ],
                &["X-Header-Remove-1", "X-Header-Remove-2"],
            ),
        ),
        (
            "/case-insensitivity",
            modifier(
                &[("X-Header-Set", "header-set")],
                &[("X-Header-Add", "header-add")],
                &["X-Header-Remove"],
            ),
        ),
    ];
    let mut r = route("infra", "request-header-modifier");
    for (path, hm) in table {
        let f = Filter::RequestHeaderModifier(hm);
        let rl = if on_backend {
            let mut b = backend("v1", 1);
            b.filters.push(f);
            rule().path(path).backend(b)
        } else {
            rule().path(path).filter(f).to("v1")
        };
        r = r.rule(rl);
    }
    single_listener(listener("http", 80).route(r))
}

fn header_modifier_table(router: &Router) {
    // (path, request headers, expected present headers, expected absent headers)
    type Row<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
    );
    let rows: &[Row<'_>] = &[
        (
            "/set",
            &[("Some-Other-Header", "val")],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            &[],
        ),
        (
            "/set",
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "some-other-value"),
            ],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            &[],
        ),
        (
            "/add",
            &[("Some-Other-Header", "val")],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "add-appends-values"),
            ],
            &[],
        ),
        (
            "/add",
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "some-other-value"),
            ],
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "some-other-value,add-appends-values"),
            ],
            &[],
        ),
        (
            "/remove",
            &[("X-Header-Remove", "val")],
            &[],
            &["X-Header-Remove"],
        ),
        (
            "/multiple",
            &[
                ("X-Header-Set-2", "set-val-2"),
                ("X-Header-Add-2", "add-val-2"),
                ("X-Header-Remove-2", "remove-val-2"),
                ("Another-Header", "another-header-val"),
            ],
            &[
                ("X-Header-Set-1", "header-set-1"),
                ("X-Header-Set-2", "header-set-2"),
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "add-val-2,header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        (
            "/case-insensitivity",
            &[
                ("x-header-set", "original-val-set"),
                ("x-header-add", "original-val-add"),
                ("x-header-remove", "original-val-remove"),
                ("Another-Header", "another-header-val"),
            ],
            &[
                ("X-Header-Set", "header-set"),
                ("X-Header-Add", "original-val-add,header-add"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove"],
        ),
    ];
    for (path, start, present, absent) in rows {
        let m = matched(router, &req("hm.example", path));
        let out = request_headers_after(&m, 0, Headers::of(start));
        for (n, v) in *present {
            assert_eq!(out.get(n).as_deref(), Some(*v), "{path}: header {n}");
            assert_eq!(
                out.0
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                    .count(),
                1,
                "{path}: {n} must be one header, not several"
            );
        }
        for n in *absent {
            assert_eq!(out.get(n), None, "{path}: {n} must be gone");
        }
    }
}

#[test]
fn request_header_modifier_on_rule_table() {
    header_modifier_table(&header_modifier_router(false));
}

#[test]
fn backend_request_header_modifier_table() {
    header_modifier_table(&header_modifier_router(true));
}

#[test]
fn response_header_modifier_adds_names_in_any_case() {
    let hm = modifier(
        &[],
        &[
            ("x-lowercase-add", "lower"),
            ("x-Mixedcase-ADD-1", "mixed-1"),
            ("X-mixeDcase-add-2", "mixed-2"),
            ("X-UPPERCASE-ADD", "upper"),
        ],
        &["X-Header-Remove"],
    );
    let mut h = Headers::of(&[("x-header-remove", "x"), ("X-LOWERCASE-ADD", "first")]);
    apply_header_modifier(&hm, &mut h);
    assert_eq!(h.get("X-Lowercase-Add").as_deref(), Some("first,lower"));
    assert_eq!(h.get("x-mixedcase-add-1").as_deref(), Some("mixed-1"));
    assert_eq!(h.get("X-MIXEDCASE-ADD-2").as_deref(), Some("mixed-2"));
    assert_eq!(h.get("x-uppercase-add").as_deref(), Some("upper"));
    assert_eq!(h.get("X-Header-Remove"), None);
}

#[test]
fn backend_filters_apply_only_for_the_chosen_backend() {
    // Two backends of weight 10, each setting `Backend: <its name>`.
    let with_filter = |name: &str| {
        let mut b = backend(name, 10);
        b.filters.push(Filter::RequestHeaderModifier(modifier(
            &[("Backend", name)],
            &[],
            &[],
        )));
        b
    };
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "backend-weights").rule(
                rule()
                    .backend(with_filter("infra-backend-v1"))
                    .backend(with_filter("infra-backend-v2")),
            ),
        ),
    );
    let m = matched(&router, &req("bw.example", "/"));
    let mut seen = [0u32; 2];
    for roll in 0..m.rule.total_weight() {
        let (idx, chosen) = m.rule.pick_backend(roll).unwrap();
        let out = request_headers_after(&m, idx, Headers::default());
        assert_eq!(out.get("backend").as_deref(), Some(chosen.name.as_str()));
        seen[idx] += 1;
    }
    assert_eq!(seen, [10, 10]);
}

/// What the proxy computes for a redirect: listener scheme and port from the match, host from
/// the request without its port.
fn redirect_for(router: &Router, r: &Req) -> (u16, String) {
    let m = matched(router, r);
    let filter = m
        .rule
        .redirect()
        .unwrap_or_else(|| panic!("{} has no redirect", r.path));
    let host = normalize_host(r.host.as_deref().unwrap_or(""));
    let ctx = RedirectContext {
        scheme: match m.listener.protocol {
            Protocol::Http => "http",
            Protocol::Https | Protocol::Tls => "https",
        },
        host: &host,
        listener_port: m.listener.port,
        path: &r.path,
        query: r.query.as_deref(),
        matched_prefix: m.matched_prefix.as_deref(),
    };
    redirect(filter, &ctx)
}

fn redir() -> RequestRedirect {
    RequestRedirect {
        scheme: None,
        hostname: None,
        path: None,
        port: None,
        status_code: 302,
    }
}

trait RedirectExt {
    fn host(self, h: &str) -> Self;
    fn status(self, s: u16) -> Self;
    fn prefix(self, p: &str) -> Self;
    fn full(self, p: &str) -> Self;
    fn port(self, p: u16) -> Self;
    fn scheme(self, s: &str) -> Self;
}

impl RedirectExt for RequestRedirect {
    fn host(mut self, h: &str) -> Self {
        self.hostname = Some(h.to_string());
        self
    }
    fn status(mut self, s: u16) -> Self {
        self.status_code = s;
        self
    }
    fn prefix(mut self, p: &str) -> Self {
        self.path = Some(PathModifier::ReplacePrefixMatch(p.to_string()));
        self
    }
    fn full(mut self, p: &str) -> Self {
        self.path = Some(PathModifier::ReplaceFullPath(p.to_string()));
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    fn scheme(mut self, s: &str) -> Self {
        self.scheme = Some(s.to_string());
        self
    }
}

fn redirect_rule(path: &str, r: RequestRedirect) -> Rule {
    rule().path(path).filter(Filter::RequestRedirect(r))
}

fn check_redirects(router: &Router, rows: &[(Req, u16, &str)]) {
    let mut failures = Vec::new();
    for (r, status, location) in rows {
        let got = redirect_for(router, r);
        if got != (*status, location.to_string()) {
            failures.push(format!(
                "{} {}: want {status} {location}, got {got:?}",
                r.method, r.path
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn redirect_host_and_status() {
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "redirect-host-and-status")
                .rule(redirect_rule(
                    "/hostname-redirect",
                    redir().host("example.org"),
                ))
                .rule(redirect_rule(
                    "/host-and-status",
                    redir().host("example.org").status(301),
                )),
        ),
    );
    check_redirects(
        &router,
        &[
            (
                req("gw.example", "/hostname-redirect"),
                302,
                "http://example.org/hostname-redirect",
            ),
            (
                req("gw.example", "/host-and-status"),
                301,
                "http://example.org/host-and-status",
            ),
            // The request's port in Host is not carried into the Location; the query is.
            (
                req("gw.example:80", "/hostname-redirect/x?a=1&b=2"),
                302,
                "http://example.org/hostname-redirect/x?a=1&b=2",
            ),
        ],
    );
}

#[test]
fn redirect_path_prefix_and_full_path() {
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "redirect-path")
                .rule(redirect_rule(
                    "/original-prefix",
                    redir().prefix("/replacement-prefix"),
                ))
                .rule(redirect_rule(
                    "/full",
                    redir().full("/full-path-replacement"),
                ))
                .rule(redirect_rule(
                    "/path-and-host",
                    redir().host("example.org").prefix("/replacement-prefix"),
                ))
                .rule(redirect_rule(
                    "/path-and-status",
                    redir().prefix("/replacement-prefix").status(301),
                ))
                .rule(redirect_rule(
                    "/full-path-and-host",
                    redir().host("example.org").full("/replacement-full"),
                ))
                .rule(redirect_rule(
                    "/full-path-and-status",
                    redir().full("/replacement-full").status(301),
                ))
                .rule(redirect_rule("/strip", redir().prefix("/"))),
        ),
    );
    let h = "gw.example";
    check_redirects(
        &router,
        &[
            (
                req(h, "/original-prefix/lemon"),
                302,
                "http://gw.example/replacement-prefix/lemon",
            ),
            (
                req(h, "/full/path/original"),
                302,
                "http://gw.example/full-path-replacement",
            ),
            (
                req(h, "/path-and-host"),
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                req(h, "/path-and-status"),
                301,
                "http://gw.example/replacement-prefix",
            ),
            (
                req(h, "/full-path-and-host"),
                302,
                "http://example.org/replacement-full",
            ),
            (
                req(h, "/full-path-and-status"),
                301,
                "http://gw.example/replacement-full",
            ),
            (req(h, "/strip/a/b?x=y"), 302, "http://gw.example/a/b?x=y"),
            (req(h, "/strip"), 302, "http://gw.example/"),
        ],
    );
}

#[test]
fn redirect_port() {
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "redirect-port")
                .rule(redirect_rule("/port", redir().port(8083)))
                .rule(redirect_rule(
                    "/port-and-host",
                    redir().port(8083).host("example.org"),
                ))
                .rule(redirect_rule(
                    "/port-and-status",
                    redir().port(8083).status(301),
                ))
                .rule(redirect_rule(
                    "/port-and-host-and-status",
                    redir().port(8083).host("example.org").status(302),
                )),
        ),
    );
    let h = "gw.example";
    check_redirects(
        &router,
        &[
            (req(h, "/port"), 302, "http://gw.example:8083/port"),
            (
                req(h, "/port-and-host"),
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                req(h, "/port-and-status"),
                301,
                "http://gw.example:8083/port-and-status",
            ),
            (
                req(h, "/port-and-host-and-status"),
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
        ],
    );
}

#[test]
fn redirect_scheme() {
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "redirect-scheme")
                .rule(redirect_rule("/scheme", redir().scheme("https")))
                .rule(redirect_rule(
                    "/scheme-and-host",
                    redir().scheme("https").host("example.org"),
                ))
                .rule(redirect_rule(
                    "/scheme-and-status",
                    redir().scheme("https").status(301),
                ))
                .rule(redirect_rule(
                    "/scheme-and-host-and-status",
                    redir().scheme("https").host("example.org").status(302),
                )),
        ),
    );
    let h = "gw.example";
    check_redirects(
        &router,
        &[
            (req(h, "/scheme"), 302, "https://gw.example/scheme"),
            (
                req(h, "/scheme-and-host"),
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                req(h, "/scheme-and-status"),
                301,
                "https://gw.example/scheme-and-status",
            ),
            (
                req(h, "/scheme-and-host-and-status"),
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
        ],
    );
}

#[test]
fn redirect_303_307_308_keep_the_path() {
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "redirect-codes")
                .rule(redirect_rule("/see-other", redir().status(303)))
                .rule(redirect_rule("/temporary", redir().status(307)))
                .rule(redirect_rule("/permanent", redir().status(308))),
        ),
    );
    let h = "gw.example";
    check_redirects(
        &router,
        &[
            (
                req(h, "/see-other").method("POST"),
                303,
                "http://gw.example/see-other",
            ),
            (req(h, "/temporary"), 307, "http://gw.example/temporary"),
            (req(h, "/permanent"), 308, "http://gw.example/permanent"),
        ],
    );
}

#[test]
fn redirect_port_and_scheme_table() {
    // Every filter sets hostname example.org; the path names (filter scheme)-(filter port).
    let filters: &[(&str, Option<&str>, Option<u16>)] = &[
        ("/nil-nil", None, None),
        ("/nil-80", None, Some(80)),
        ("/nil-443", None, Some(443)),
        ("/nil-8080", None, Some(8080)),
        ("/nil-8443", None, Some(8443)),
        ("/http-nil", Some("http"), None),
        ("/http-80", Some("http"), Some(80)),
        ("/http-8080", Some("http"), Some(8080)),
        ("/https-nil", Some("https"), None),
        ("/https-443", Some("https"), Some(443)),
        ("/https-8443", Some("https"), Some(8443)),
    ];
    let routes = || {
        let mut r = route("infra", "redirect-port-and-scheme");
        for (path, scheme, port) in filters {
            let mut f = redir().host("example.org");
            f.scheme = scheme.map(str::to_string);
            f.port = *port;
            r = r.rule(redirect_rule(path, f));
        }
        r
    };
    let router = compile(vec![
        gateway("infra", "redirect")
            .listener(listener("http", 80).route(routes()))
            .listener(listener("http-8080", 8080).route(routes()))
            .listener(listener("https", 443).https("https").route(routes())),
    ]);
    let at = |port: u16, path: &str| {
        let r = req("gw.example", path).port(port);
        if port == 443 { r.sni("gw.example") } else { r }
    };
    // (listener port, path, Location without the path)
    let rows: &[(u16, &str, &str)] = &[
        (80, "/nil-nil", "http://example.org"),
        (80, "/nil-80", "http://example.org"),
        (80, "/nil-8080", "http://example.org:8080"),
        (80, "/https-nil", "https://example.org"),
        (80, "/https-443", "https://example.org"),
        (80, "/https-8443", "https://example.org:8443"),
        (8080, "/nil-nil", "http://example.org:8080"),
        (8080, "/nil-80", "http://example.org"),
        (8080, "/https-nil", "https://example.org"),
        // An explicit scheme takes its well-known port even when it equals the listener's.
        (8080, "/http-nil", "http://example.org"),
        (8080, "/http-8080", "http://example.org:8080"),
        (443, "/nil-nil", "https://example.org"),
        (443, "/nil-443", "https://example.org"),
        (443, "/nil-8443", "https://example.org:8443"),
        (443, "/http-nil", "http://example.org"),
        (443, "/http-80", "http://example.org"),
        (443, "/http-8080", "http://example.org:8080"),
        (443, "/https-nil", "https://example.org"),
    ];
    let table: Vec<(Req, u16, String)> = rows
        .iter()
        .map(|(port, path, loc)| (at(*port, path), 302, format!("{loc}{path}")))
        .collect();
    let table: Vec<(Req, u16, &str)> = table
        .iter()
        .map(|(r, s, l)| (r.clone(), *s, l.as_str()))
        .collect();
    check_redirects(&router, &table);
}

/// What the backend sees as the path after the rule's URLRewrite.
fn rewritten_path(router: &Router, r: &Req) -> String {
    let m = matched(router, r);
    let rewrite = m
        .rule
        .rule
        .filters
        .iter()
        .find_map(|f| match f {
            Filter::UrlRewrite(u) => u.path.as_ref(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{} has no path rewrite", r.path));
    rewrite_path(rewrite, &r.path, m.matched_prefix.as_deref())
}

fn rewrite_rule(prefix: &str, p: PathModifier) -> Rule {
    rule()
        .path(prefix)
        .filter(Filter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(p),
        }))
        .to("v1")
}

#[test]
fn rewrite_path_table() {
    use PathModifier::{ReplaceFullPath as Full, ReplacePrefixMatch as Prefix};
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "rewrite-path")
                .rule(rewrite_rule("/prefix/one", Prefix("/one".into())))
                .rule(rewrite_rule("/strip-prefix", Prefix("/".into())))
                .rule(rewrite_rule("/full/one", Full("/one".into())))
                .rule(rewrite_rule(
                    "/full/rewrite-path-and-modify-headers",
                    Full("/test".into()),
                ))
                .rule(rewrite_rule(
                    "/prefix/rewrite-path-and-modify-headers",
                    Prefix("/prefix".into()),
                ))
                .rule(rewrite_rule("/empty-replacement/", Prefix(String::new())))
                .rule(rewrite_rule("/trailing", Prefix("/new/".into()))),
        ),
    );
    let h = "rewrite.example";
    let rows: &[(&str, &str)] = &[
        ("/prefix/one/two", "/one/two"),
        ("/prefix/one", "/one"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/strip-prefix/", "/"),
        ("/full/one/two", "/one"),
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
        ("/empty-replacement/bar", "/bar"),
        ("/empty-replacement", "/"),
        ("/trailing/x", "/new/x"),
    ];
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(path, want)| {
            let got = rewritten_path(&router, &req(h, path));
            (got != *want).then(|| format!("{path}: want {want}, got {got}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn backend_url_rewrite_and_backend_redirect_use_the_rule_match() {
    // Same arithmetic when the filter sits on the backendRef (catalogue: BackendURLRewrite and
    // BackendRequestRedirect).
    let mut full = backend("v1", 1);
    full.filters.push(Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::ReplaceFullPath("/rewritten-full".into())),
    }));
    let mut prefix = backend("v1", 1);
    prefix.filters.push(Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::ReplacePrefixMatch("/rewritten-prefix".into())),
    }));
    let mut redirect_full = backend("v1", 1);
    redirect_full
        .filters
        .push(Filter::RequestRedirect(redir().full("/redirected-full")));
    let mut redirect_prefix = backend("v1", 1);
    redirect_prefix.filters.push(Filter::RequestRedirect(
        redir().prefix("/redirected-prefix"),
    ));
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "backend-rewrite")
                .rule(rule().path("/full").backend(full))
                .rule(rule().path("/prefix").backend(prefix)),
        ),
    );
    let redirect_router = single_listener(
        listener("http", 80).route(
            route("infra", "backend-redirect")
                .rule(rule().path("/full").backend(redirect_full))
                .rule(rule().path("/prefix").backend(redirect_prefix)),
        ),
    );
    for (path, want) in [
        ("/full/original", "http://br.example/redirected-full"),
        (
            "/prefix/original",
            "http://br.example/redirected-prefix/original",
        ),
    ] {
        let m = matched(&redirect_router, &req("br.example", path));
        let (_, b) = m.rule.pick_backend(0).unwrap();
        let Some(Filter::RequestRedirect(f)) = b.filters.first() else {
            panic!("backend filter missing");
        };
        let ctx = RedirectContext {
            scheme: "http",
            host: "br.example",
            listener_port: m.listener.port,
            path,
            query: None,
            matched_prefix: m.matched_prefix.as_deref(),
        };
        assert_eq!(redirect(f, &ctx), (302, want.to_string()), "{path}");
    }
    for (path, want) in [
        ("/full/original", "/rewritten-full"),
        ("/prefix/original", "/rewritten-prefix/original"),
    ] {
        let m = matched(&router, &req("br.example", path));
        let (_, b) = m.rule.pick_backend(0).unwrap();
        let Some(Filter::UrlRewrite(UrlRewrite { path: Some(p), .. })) = b.filters.first() else {
            panic!("backend filter missing");
        };
        assert_eq!(rewrite_path(p, path, m.matched_prefix.as_deref()), want);
    }
}

#[test]
fn rewrite_host_is_taken_from_the_matched_rule() {
    let host_rewrite = |h: &str| {
        Filter::UrlRewrite(UrlRewrite {
            hostname: Some(h.to_string()),
            path: None,
        })
    };
    let router = single_listener(
        listener("http", 80).route(
            route("infra", "rewrite-host")
                .host("rewrite.example")
                .rule(
                    rule()
                        .path("/one")
                        .filter(host_rewrite("one.example.org"))
                        .to("v1"),
                )
                .rule(rule().filter(host_rewrite("example.org")).to("v2"))
                .rule(
                    rule()
                        .path("/rewrite-host-and-modify-headers")
                        .filter(host_rewrite("test.example.org"))
                        .filter(Filter::RequestHeaderModifier(modifier(
                            &[("X-Header-Set", "set-overwrites-values")],
                            &[("X-Header-Add", "header-val-1")],
                            &["X-Header-Remove"],
                        )))
                        .to("v2"),
                ),
        ),
    );
    let rows = [
        ("/one", "v1", "one.example.org"),
        ("/two", "v2", "example.org"),
        ("/rewrite-host-and-modify-headers", "v2", "test.example.org"),
    ];
    for (path, backend, host) in rows {
        let r = req("rewrite.example", path);
        assert_eq!(send(&router, &r), backend, "{path}");
        let m = matched(&router, &r);
        let rewritten = m.rule.rule.filters.iter().find_map(|f| match f {
            Filter::UrlRewrite(u) => u.hostname.as_deref(),
            _ => None,
        });
        assert_eq!(rewritten, Some(host), "{path}");
    }
    // The headers of the last row are edited as well.
    let m = matched(
        &router,
        &req("rewrite.example", "/rewrite-host-and-modify-headers"),
    );
    let out = request_headers_after(
        &m,
        0,
        Headers::of(&[("X-Header-Add", "a"), ("X-Header-Remove", "r")]),
    );
    assert_eq!(out.get("x-header-add").as_deref(), Some("a,header-val-1"));
    assert_eq!(
        out.get("x-header-set").as_deref(),
        Some("set-overwrites-values")
    );
    assert_eq!(out.get("x-header-remove"), None);
    assert_eq!(send(&router, &req("other.example", "/one")), "404");
}
