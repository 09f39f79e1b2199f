//! Filter arithmetic: header edits, redirect locations and path rewrites, as pure functions.
//!
//! The proxy implements [`HeaderEdit`] over its header types and calls these; everything that the
//! conformance suite checks byte-for-byte (Location ports, `//`-free prefix rewrites, `add` joined
//! with a plain comma) is decided here and table-tested.

use crate::headers::is_filter_reserved;
use crate::snapshot::{HeaderModifier, PathModifier, RequestRedirect};

/// Mutable access to a header map. Names given to these methods may be in any case.
pub trait HeaderEdit {
    /// Current value (repeated headers joined with `,`).
    fn get(&self, name: &str) -> Option<String>;
    /// Replaces every value of `name` with `value`.
    fn set(&mut self, name: &str, value: &str);
    /// Removes every value of `name`.
    fn remove(&mut self, name: &str);
}

/// Applies a header modifier: `set`, then `add` (appended to an existing value with `,`), then
/// `remove`. Edits of hop-by-hop or framing headers ([`is_filter_reserved`]) are skipped:
/// validation refuses them, this is the last line of defence.
pub fn apply_header_modifier(m: &HeaderModifier, headers: &mut impl HeaderEdit) {
    for hv in m.set.iter().filter(|hv| !is_filter_reserved(&hv.name)) {
        headers.set(&hv.name, &hv.value);
    }
    for hv in m.add.iter().filter(|hv| !is_filter_reserved(&hv.name)) {
        match headers.get(&hv.name) {
            Some(old) if !old.is_empty() => headers.set(&hv.name, &format!("{old},{}", hv.value)),
            _ => headers.set(&hv.name, &hv.value),
        }
    }
    for name in m.remove.iter().filter(|n| !is_filter_reserved(n)) {
        headers.remove(name);
    }
}

/// Replaces the matched prefix (or the whole path) of `path`.
///
/// `matched_prefix` is the normalised `PathPrefix` value that matched (`/` or `/a/b`, no trailing
/// slash). The result never contains `//` at the seam and always starts with `/`.
pub fn rewrite_path(modifier: &PathModifier, path: &str, matched_prefix: Option<&str>) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = match matched_prefix {
                Some("/") | None => path,
                Some(p) => path.get(p.len()..).unwrap_or(""),
            };
            let head = replacement.trim_end_matches('/');
            let rest = if rest.starts_with('/') || rest.is_empty() {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            let joined = format!("{head}{rest}");
            if joined.is_empty() {
                "/".to_string()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// What a redirect needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct RedirectContext<'a> {
    /// `http` or `https`: the listener's scheme.
    pub scheme: &'a str,
    /// Request host without port.
    pub host: &'a str,
    /// Port of the listener that received the request.
    pub listener_port: u16,
    /// Request path.
    pub path: &'a str,
    /// Request query without `?`.
    pub query: Option<&'a str>,
    /// Normalised matched `PathPrefix`, if the match was a prefix.
    pub matched_prefix: Option<&'a str>,
}

/// The status code and `Location` of a redirect.
///
/// Port rules (Gateway API): an explicit port wins; otherwise a filter that names a scheme takes
/// that scheme's well-known port (even when it equals the listener's scheme: `http` on an
/// HTTP :8080 listener redirects to port 80), and a filter without a scheme keeps the listener's
/// port; 80 for http and 443 for https are never written.
pub fn redirect(r: &RequestRedirect, ctx: &RedirectContext<'_>) -> (u16, String) {
    let scheme = r.scheme.as_deref().unwrap_or(ctx.scheme);
    let host = r.hostname.as_deref().unwrap_or(ctx.host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        // Our only schemes are http and https, both with a well-known port that is not written.
        (None, Some(_)) => None,
        (None, None) => Some(ctx.listener_port),
    };
    let port =
        port.filter(|&p| !((scheme == "http" && p == 80) || (scheme == "https" && p == 443)));
    let path = match &r.path {
        Some(m) => rewrite_path(m, ctx.path, ctx.matched_prefix),
        None => ctx.path.to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p.to_string());
    }
    location.push_str(&path);
    if let Some(q) = ctx.query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    (r.status_code, location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::HeaderValue;

    #[derive(Default)]
    struct Map(Vec<(String, String)>);
    impl HeaderEdit for Map {
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
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn header_add_joins_with_plain_comma_and_is_case_insensitive() {
        let mut h = Map(vec![("x-header-add".into(), "original-val-add".into())]);
        let m = HeaderModifier {
            set: vec![hv("X-Header-Set", "set-overwrites-values")],
            add: vec![hv("X-Header-Add", "header-add")],
            remove: vec!["X-Header-Remove".into()],
        };
        h.0.push(("x-header-set".into(), "old".into()));
        h.0.push(("x-header-remove".into(), "gone".into()));
        apply_header_modifier(&m, &mut h);
        assert_eq!(
            h.get("x-header-add").as_deref(),
            Some("original-val-add,header-add")
        );
        assert_eq!(
            h.get("X-HEADER-SET").as_deref(),
            Some("set-overwrites-values")
        );
        assert_eq!(h.get("x-header-remove"), None);
    }

    #[test]
    fn header_add_on_absent_header_sets_it() {
        let mut h = Map::default();
        let m = HeaderModifier {
            add: vec![hv("X-Header-Add", "add-appends-values")],
            ..Default::default()
        };
        apply_header_modifier(&m, &mut h);
        assert_eq!(h.get("x-header-add").as_deref(), Some("add-appends-values"));
    }

    #[test]
    fn edits_of_framing_headers_are_skipped() {
        let mut h = Map(vec![
            ("content-length".into(), "5".into()),
            ("host".into(), "a.example".into()),
        ]);
        let m = HeaderModifier {
            set: vec![hv("Content-Length", "0"), hv("x-ok", "1")],
            add: vec![hv("Transfer-Encoding", "chunked")],
            remove: vec!["Host".into()],
        };
        apply_header_modifier(&m, &mut h);
        assert_eq!(h.get("content-length").as_deref(), Some("5"));
        assert_eq!(h.get("transfer-encoding"), None);
        assert_eq!(h.get("host").as_deref(), Some("a.example"));
        assert_eq!(h.get("x-ok").as_deref(), Some("1"));
    }

    #[test]
    fn prefix_rewrite_table() {
        let p = |v: &str| PathModifier::ReplacePrefixMatch(v.into());
        let cases = [
            ("/one", "/prefix/one/two", "/prefix/one", "/one/two"),
            ("/", "/strip-prefix/three", "/strip-prefix", "/three"),
            ("/", "/strip-prefix", "/strip-prefix", "/"),
            ("", "/strip-prefix/three", "/strip-prefix", "/three"),
            (
                "/prefix",
                "/prefix/rewrite-path-and-modify-headers/one",
                "/prefix/rewrite-path-and-modify-headers",
                "/prefix/one",
            ),
            ("/xyz", "/foo/bar", "/foo", "/xyz/bar"),
            ("/xyz/", "/foo/bar", "/foo", "/xyz/bar"),
            ("/api", "/foo", "/", "/api/foo"),
            (
                "/rewritten-prefix",
                "/prefix/original",
                "/prefix",
                "/rewritten-prefix/original",
            ),
        ];
        for (repl, path, prefix, want) in cases {
            assert_eq!(
                rewrite_path(&p(repl), path, Some(prefix)),
                want,
                "{repl} {path} {prefix}"
            );
        }
        assert_eq!(
            rewrite_path(
                &PathModifier::ReplaceFullPath("/one".into()),
                "/full/one/two",
                Some("/full/one")
            ),
            "/one"
        );
    }

    fn redir(scheme: Option<&str>, port: Option<u16>) -> RequestRedirect {
        RequestRedirect {
            scheme: scheme.map(Into::into),
            hostname: Some("example.org".into()),
            path: None,
            port,
            status_code: 302,
        }
    }

    #[test]
    fn redirect_port_and_scheme_table() {
        // (listener scheme, listener port, filter scheme, filter port, expected location)
        let cases = [
            ("http", 80, None, None, "http://example.org/"),
            ("http", 80, None, Some(80), "http://example.org/"),
            ("http", 80, None, Some(8080), "http://example.org:8080/"),
            ("http", 80, Some("https"), None, "https://example.org/"),
            ("http", 80, Some("https"), Some(443), "https://example.org/"),
            (
                "http",
                80,
                Some("https"),
                Some(8443),
                "https://example.org:8443/",
            ),
            ("http", 8080, None, None, "http://example.org:8080/"),
            ("http", 8080, None, Some(80), "http://example.org/"),
            ("http", 8080, Some("https"), None, "https://example.org/"),
            ("https", 443, None, None, "https://example.org/"),
            ("https", 443, None, Some(443), "https://example.org/"),
            ("https", 443, None, Some(8443), "https://example.org:8443/"),
            ("https", 443, Some("http"), None, "http://example.org/"),
            ("https", 443, Some("http"), Some(80), "http://example.org/"),
            (
                "https",
                443,
                Some("http"),
                Some(8080),
                "http://example.org:8080/",
            ),
        ];
        for (ls, lp, fs, fp, want) in cases {
            let ctx = RedirectContext {
                scheme: ls,
                host: "gw.example",
                listener_port: lp,
                path: "/",
                query: None,
                matched_prefix: Some("/"),
            };
            assert_eq!(
                redirect(&redir(fs, fp), &ctx).1,
                want,
                "{ls}:{lp} {fs:?} {fp:?}"
            );
        }
    }

    #[test]
    fn redirect_keeps_request_parts_and_status() {
        let r = RequestRedirect {
            scheme: None,
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch(
                "/replacement-prefix".into(),
            )),
            port: None,
            status_code: 301,
        };
        let ctx = RedirectContext {
            scheme: "http",
            host: "gw.example",
            listener_port: 80,
            path: "/original-prefix/lemon",
            query: Some("a=b"),
            matched_prefix: Some("/original-prefix"),
        };
        assert_eq!(
            redirect(&r, &ctx),
            (
                301,
                "http://gw.example/replacement-prefix/lemon?a=b".to_string()
            )
        );
    }
}
