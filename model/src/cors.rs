//! CORS arithmetic (HTTPRoute `CORS` filter), as pure functions: which origins match, what a
//! preflight is answered with, and which headers an actual response gets.
//!
//! ```text
//! request with Origin ─┬─ OPTIONS + Access-Control-Request-Method = preflight:
//! │                    │    the proxy answers 204 itself ─ origin allowed? allow-origin,
//! │                    │    -credentials, -methods, -headers, expose-headers, max-age
//! │                    │    (not allowed: only Vary)
//! │                    └─ otherwise an actual request: proxied; the answer gets allow-origin,
//! │                         -credentials and expose-headers when the origin is allowed
//! └─ every answer of a CORS rule gets `Vary: Origin` (caches must not mix origins)
//! ```
//!
//! The fetch standard's credential rule: a credentialed answer may not use `*` for the origin,
//! methods, headers or exposed headers (browsers read it as a literal name), so with
//! `allowCredentials` the origin is echoed, a `*` of methods/headers echoes what the preflight
//! asked for, and a `*` of exposed headers names the response's own headers.

use crate::snapshot::Cors;

/// `Access-Control-Allow-Origin`.
pub const ALLOW_ORIGIN: &str = "access-control-allow-origin";
/// `Access-Control-Allow-Credentials`.
pub const ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
/// `Access-Control-Allow-Methods`.
pub const ALLOW_METHODS: &str = "access-control-allow-methods";
/// `Access-Control-Allow-Headers`.
pub const ALLOW_HEADERS: &str = "access-control-allow-headers";
/// `Access-Control-Expose-Headers`.
pub const EXPOSE_HEADERS: &str = "access-control-expose-headers";
/// `Access-Control-Max-Age`.
pub const MAX_AGE: &str = "access-control-max-age";
/// `Access-Control-Request-Method` (preflight request).
pub const REQUEST_METHOD: &str = "access-control-request-method";
/// `Access-Control-Request-Headers` (preflight request).
pub const REQUEST_HEADERS: &str = "access-control-request-headers";

/// Whether `origin` (`scheme://host[:port]`) matches one of the filter's origins. `*` alone
/// matches every origin; elsewhere `*` stands for one or more characters of the host (so
/// `https://*.bar.com` matches `https://www.bar.com` and `https://a.b.bar.com`, not
/// `https://bar.com`). Letters are compared without regard to case.
pub fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    let origin = origin.trim();
    if origin.is_empty() || origin == "null" {
        // An opaque origin matches only `*`.
        return origin == "null" && cors.allow_origins.iter().any(|o| o == "*");
    }
    cors.allow_origins
        .iter()
        .any(|p| p == "*" || glob(p.as_bytes(), origin.as_bytes()))
}

/// `*` = one or more bytes that are not `/`; everything else case-insensitive. Iterative, so
/// a hostile origin cannot make it recurse deep.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last `*` seen and where in `text` its match would continue.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            // `*` must eat at least one byte.
            if text[t] == b'/' {
                return false;
            }
            star = Some((p, t + 1));
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            // `st <= t < text.len()`: the star's end lies in the text.
            if text[st] == b'/' {
                return false;
            }
            // Let the star eat one more byte.
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].is_empty()
}

/// The headers of a preflight answer for `origin`, asking for `method` and `headers` (the
/// raw `Access-Control-Request-Headers`). Empty when the origin is not allowed: the answer then
/// carries only `Vary`, and the browser refuses the actual request.
pub fn preflight_headers(
    cors: &Cors,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !origin_allowed(cors, origin) {
        return out;
    }
    out.push((ALLOW_ORIGIN, allow_origin(cors, origin)));
    if cors.allow_credentials {
        out.push((ALLOW_CREDENTIALS, "true".to_string()));
    }
    let star = |l: &[String]| l.iter().any(|x| x == "*");
    let methods = if star(&cors.allow_methods) {
        if cors.allow_credentials {
            method.trim().to_string()
        } else {
            "*".to_string()
        }
    } else {
        cors.allow_methods.join(", ")
    };
    if !methods.is_empty() {
        out.push((ALLOW_METHODS, methods));
    }
    let requested = headers.map(str::trim).unwrap_or_default();
    let allow_headers = if star(&cors.allow_headers) {
        if cors.allow_credentials {
            requested.to_string()
        } else {
            "*".to_string()
        }
    } else {
        cors.allow_headers.join(", ")
    };
    if !allow_headers.is_empty() {
        out.push((ALLOW_HEADERS, allow_headers));
    }
    // A credentialed `*` cannot be spelled out before there is a response; leave it off.
    let credentialed_star = cors.allow_credentials && star(&cors.expose_headers);
    if !cors.expose_headers.is_empty() && !credentialed_star {
        out.push((EXPOSE_HEADERS, cors.expose_headers.join(", ")));
    }
    out.push((MAX_AGE, cors.max_age.to_string()));
    out
}

/// The headers an actual answer to a request from `origin` gets; `response_headers` are the
/// names of the response's own headers (a credentialed `*` of exposed headers lists them).
/// Empty when the origin is not allowed.
pub fn actual_headers<'a>(
    cors: &Cors,
    origin: &str,
    response_headers: impl Iterator<Item = &'a str>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !origin_allowed(cors, origin) {
        return out;
    }
    out.push((ALLOW_ORIGIN, allow_origin(cors, origin)));
    if cors.allow_credentials {
        out.push((ALLOW_CREDENTIALS, "true".to_string()));
    }
    let expose = if cors.expose_headers.iter().any(|x| x == "*") && cors.allow_credentials {
        response_headers.collect::<Vec<_>>().join(", ")
    } else {
        cors.expose_headers.join(", ")
    };
    if !expose.is_empty() {
        out.push((EXPOSE_HEADERS, expose));
    }
    out
}

/// `*` when any origin is allowed and the answer is not credentialed; the origin itself
/// otherwise.
fn allow_origin(cors: &Cors, origin: &str) -> String {
    if !cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
        "*".to_string()
    } else {
        origin.trim().to_string()
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &str, origin: Option<&str>, request_method: Option<&str>) -> bool {
    method.eq_ignore_ascii_case("OPTIONS") && origin.is_some() && request_method.is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], methods: &[&str], headers: &[&str], creds: bool) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: methods.iter().map(|s| s.to_string()).collect(),
            allow_headers: headers.iter().map(|s| s.to_string()).collect(),
            expose_headers: Vec::new(),
            allow_credentials: creds,
            max_age: 5,
        }
    }

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn origin_table() {
        let c = cors(
            &["https://www.foo.com", "https://*.bar.com"],
            &[],
            &[],
            true,
        );
        for (origin, want) in [
            ("https://www.foo.com", true),
            ("HTTPS://WWW.FOO.COM", true),
            ("https://www.bar.com", true),
            ("https://xpto.www.bar.com", true),
            ("https://bar.com", false),
            ("https://.bar.com", false),
            ("https://foobar.com", false),
            ("http://www.foo.com", false),
            ("https://www.foo.com.evil", false),
            ("https://evil/x.bar.com", false),
            ("", false),
            ("null", false),
        ] {
            assert_eq!(origin_allowed(&c, origin), want, "{origin}");
        }
        let any = cors(&["*"], &[], &[], false);
        assert!(origin_allowed(&any, "https://foobar.com:12345"));
        assert!(origin_allowed(&any, "null"));
        let ported = cors(&["https://*.example.com:8443"], &[], &[], false);
        assert!(origin_allowed(&ported, "https://a.example.com:8443"));
        assert!(!origin_allowed(&ported, "https://a.example.com"));
    }

    #[test]
    fn glob_stays_linear_on_hostile_input() {
        let c = cors(&["https://*.*.*.*.*.*.*.*.z"], &[], &[], false);
        let origin = format!("https://{}", "a.".repeat(5000));
        assert!(!origin_allowed(&c, &origin));
    }

    #[test]
    fn preflight_lists_or_echoes_per_the_credentials_rule() {
        let mut c1 = cors(
            &["https://www.foo.com", "https://*.bar.com"],
            &["GET", "OPTIONS"],
            &["x-header-1", "x-header-2"],
            true,
        );
        c1.expose_headers = vec!["x-header-3".into(), "x-header-4".into()];
        c1.max_age = 3600;
        let h = preflight_headers(&c1, "https://xpto.www.bar.com", "GET", Some("x-header-1"));
        assert_eq!(get(&h, ALLOW_ORIGIN), Some("https://xpto.www.bar.com"));
        assert_eq!(get(&h, ALLOW_METHODS), Some("GET, OPTIONS"));
        assert_eq!(get(&h, ALLOW_HEADERS), Some("x-header-1, x-header-2"));
        assert_eq!(get(&h, EXPOSE_HEADERS), Some("x-header-3, x-header-4"));
        assert_eq!(get(&h, MAX_AGE), Some("3600"));
        assert_eq!(get(&h, ALLOW_CREDENTIALS), Some("true"));
        assert!(preflight_headers(&c1, "https://foobar.com", "GET", None).is_empty());

        // Wildcards with credentials: echo; without: `*`.
        let c4 = cors(&["*"], &["*"], &["*"], true);
        let h = preflight_headers(
            &c4,
            "https://other.foo.com",
            "PUT",
            Some("x-header-1, x-header-2"),
        );
        assert_eq!(get(&h, ALLOW_ORIGIN), Some("https://other.foo.com"));
        assert_eq!(get(&h, ALLOW_METHODS), Some("PUT"));
        assert_eq!(get(&h, ALLOW_HEADERS), Some("x-header-1, x-header-2"));
        assert_eq!(get(&h, ALLOW_CREDENTIALS), Some("true"));
        let c4u = cors(&["*"], &["*"], &["*"], false);
        let h = preflight_headers(&c4u, "https://other.foo.com", "PUT", Some("x-header-1"));
        assert_eq!(get(&h, ALLOW_ORIGIN), Some("*"));
        assert_eq!(get(&h, ALLOW_METHODS), Some("*"));
        assert_eq!(get(&h, ALLOW_HEADERS), Some("*"));
        assert_eq!(get(&h, ALLOW_CREDENTIALS), None);
    }

    #[test]
    fn actual_answer_headers() {
        let mut c = cors(&["https://www.foo.com"], &["GET"], &[], true);
        c.expose_headers = vec!["*".into()];
        let h = actual_headers(
            &c,
            "https://www.foo.com",
            ["x-a", "content-type"].into_iter(),
        );
        assert_eq!(get(&h, ALLOW_ORIGIN), Some("https://www.foo.com"));
        assert_eq!(get(&h, ALLOW_CREDENTIALS), Some("true"));
        assert_eq!(get(&h, EXPOSE_HEADERS), Some("x-a, content-type"));
        assert!(actual_headers(&c, "https://foobar.com", std::iter::empty()).is_empty());
        let any = cors(&["*"], &["PUT"], &[], false);
        let h = actual_headers(&any, "https://foobar.com", std::iter::empty());
        assert_eq!(get(&h, ALLOW_ORIGIN), Some("*"));
        assert_eq!(get(&h, ALLOW_CREDENTIALS), None);
        assert!(is_preflight("OPTIONS", Some("o"), Some("GET")));
        assert!(!is_preflight("OPTIONS", Some("o"), None));
        assert!(!is_preflight("GET", Some("o"), Some("GET")));
    }
}
