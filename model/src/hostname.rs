//! Hostname rules of the Gateway API: wildcard matching, listener/route intersection and
//! specificity.
//!
//! A wildcard `*.example.com` matches one or more labels in front of `example.com` and never the
//! apex `example.com` itself. Hostnames compare case-insensitively; callers pass lower-case values
//! (the router lower-cases the request's Host once).

use std::cmp::Ordering;

/// Strips a port from a Host header value (`example.com:8080` → `example.com`, `[::1]:80` →
/// `[::1]`) and lower-cases it. Borrowed when nothing needs lower-casing (the usual Host of a
/// request, so routing one allocates nothing here).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop anything after `]`.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let name = without_port.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Whether `pattern` (exact or `*.suffix`) matches the concrete `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // `*.example.com`: host must end with `.example.com` and have at least one more label.
        Some(suffix) => host.len() > suffix.len() && ends_with_ignore_case(host, suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

fn ends_with_ignore_case(host: &str, suffix: &str) -> bool {
    host.len() >= suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The intersection of a listener hostname and a route hostname, or `None` if they do not
/// intersect. The result is the more specific of the two.
///
/// ```
/// use meridian_model::hostname::intersect;
/// assert_eq!(intersect(Some("*.example.com"), "foo.example.com").as_deref(), Some("foo.example.com"));
/// assert_eq!(intersect(Some("very.specific.com"), "*.specific.com").as_deref(), Some("very.specific.com"));
/// assert_eq!(intersect(Some("*.foo.example.com"), "*.example.com").as_deref(), Some("*.foo.example.com"));
/// assert_eq!(intersect(Some("*.example.com"), "example.com"), None);
/// assert_eq!(intersect(None, "a.b").as_deref(), Some("a.b"));
/// ```
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(listener) = listener else {
        return Some(route.to_ascii_lowercase());
    };
    let l_wild = listener.starts_with('*');
    let r_wild = route.starts_with('*');
    let result = match (l_wild, r_wild) {
        (false, false) => listener.eq_ignore_ascii_case(route).then_some(listener),
        (false, true) => matches(route, listener).then_some(listener),
        (true, false) => matches(listener, route).then_some(route),
        (true, true) => {
            // The longer wildcard is the narrower one; it must sit inside the other.
            let (narrow, wide) = if listener.len() >= route.len() {
                (listener, route)
            } else {
                (route, listener)
            };
            (narrow.eq_ignore_ascii_case(wide) || ends_with_ignore_case(narrow, &wide[1..]))
                .then_some(narrow)
        }
    };
    result.map(str::to_ascii_lowercase)
}

/// Specificity of a hostname pattern, used to pick the most specific listener and to order route
/// hostnames: exact names beat wildcards, longer wildcards beat shorter ones, and a missing
/// hostname (`None`) is the least specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Specificity {
    /// An exact hostname.
    Exact,
    /// A wildcard with this many characters after `*`.
    Wildcard(usize),
    /// No hostname: matches everything.
    Any,
}

impl Specificity {
    /// Specificity of an optional pattern.
    pub fn of(pattern: Option<&str>) -> Self {
        match pattern {
            None => Specificity::Any,
            Some(p) if p.starts_with('*') => Specificity::Wildcard(p.len() - 1),
            Some(_) => Specificity::Exact,
        }
    }
}

impl Ord for Specificity {
    /// `Greater` means more specific.
    fn cmp(&self, other: &Self) -> Ordering {
        use Specificity::*;
        match (self, other) {
            (Exact, Exact) | (Any, Any) => Ordering::Equal,
            (Exact, _) => Ordering::Greater,
            (_, Exact) => Ordering::Less,
            (Wildcard(a), Wildcard(b)) => a.cmp(b),
            (Wildcard(_), Any) => Ordering::Greater,
            (Any, Wildcard(_)) => Ordering::Less,
        }
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Whether a string is a valid listener/route hostname pattern (RFC 1123 labels, optional
/// leading `*.`, no IP addresses, no port).
pub fn is_valid_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    if name.is_empty() || name.len() > 253 || name.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_never_matches_apex() {
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"), "spans labels");
        assert!(!matches("*.example.com", "aexample.com"));
    }

    #[test]
    fn host_port_is_ignored_and_case_folded() {
        assert_eq!(
            normalize_host("Very.Specific.com:1234"),
            "very.specific.com"
        );
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
    }

    #[test]
    fn intersection_table() {
        let cases: &[(Option<&str>, &str, Option<&str>)] = &[
            (None, "x.com", Some("x.com")),
            (
                Some("very.specific.com"),
                "very.specific.com",
                Some("very.specific.com"),
            ),
            (
                Some("very.specific.com"),
                "*.specific.com",
                Some("very.specific.com"),
            ),
            (Some("very.specific.com"), "non.matching.com", None),
            (
                Some("*.wildcard.io"),
                "foo.wildcard.io",
                Some("foo.wildcard.io"),
            ),
            (
                Some("*.wildcard.io"),
                "foo.bar.wildcard.io",
                Some("foo.bar.wildcard.io"),
            ),
            (Some("*.wildcard.io"), "wildcard.io", None),
            (
                Some("*.wildcard.io"),
                "*.wildcard.io",
                Some("*.wildcard.io"),
            ),
            (
                Some("*.example.com"),
                "*.foo.example.com",
                Some("*.foo.example.com"),
            ),
            (
                Some("*.foo.example.com"),
                "*.example.com",
                Some("*.foo.example.com"),
            ),
            (
                Some("abc.foo.example.com"),
                "*.example.com",
                Some("abc.foo.example.com"),
            ),
            (
                Some("*.anotherwildcard.io"),
                "*.nonmatchingwildcard.io",
                None,
            ),
            (Some("*.a.io"), "*.ba.io", None),
        ];
        for (l, r, want) in cases {
            assert_eq!(
                intersect(*l, r).as_deref(),
                *want,
                "listener {l:?} route {r}"
            );
        }
    }

    #[test]
    fn specificity_orders_exact_then_longer_wildcard_then_any() {
        let exact = Specificity::of(Some("a.b.c"));
        let long = Specificity::of(Some("*.foo.example.com"));
        let short = Specificity::of(Some("*.example.com"));
        let any = Specificity::of(None);
        assert!(exact > long && long > short && short > any);
    }

    #[test]
    fn pattern_validation() {
        assert!(is_valid_pattern("*.example.com"));
        assert!(is_valid_pattern("a-b.example"));
        assert!(!is_valid_pattern("1.2.3.4"));
        assert!(!is_valid_pattern("a..b"));
        assert!(!is_valid_pattern("*"));
        assert!(!is_valid_pattern("a.*.b"));
        assert!(!is_valid_pattern("-a.b"));
    }
}
