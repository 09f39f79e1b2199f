//! Keeps web pages out: the `Host` and `Origin` checks run before anything else of a request.
//!
//! The sandbox serves plain HTTP on loopback and, by default, treats a request without
//! credentials as the admin. A web page the user happens to visit can reach such a server in two
//! ways, and both are refused here with a `403` Status that names what was refused and how to
//! allow it:
//!
//! - **DNS rebinding.** The page's own name is re-pointed at `127.0.0.1`, so the browser treats
//!   the sandbox as same-origin and can read its answers. The request then carries the attacker's
//!   name in `Host`. When the listener is bound to a loopback address, the only `Host` values
//!   accepted are `localhost`, loopback IP literals (`127.0.0.0/8`, `::1`), and names configured
//!   with `--allowed-host` ([`crate::SandboxConfig::allowed_hosts`]), with any port. A request
//!   without `Host` (HTTP/1.0) is accepted: browsers always send one. On any other bind address
//!   the operator has chosen to serve the network under names the sandbox cannot know, so `Host`
//!   is not checked there.
//! - **Cross-site requests** (CSRF). A page on another origin may send simple requests
//!   (`text/plain` POSTs) without asking first; it cannot read the answer, but a create would
//!   still happen. Browsers put an `Origin` header on such requests; kubectl, kube-rs and other
//!   API clients never send one. A request whose `Origin` is not a loopback origin (`localhost`,
//!   a loopback IP, or an allowed host, any scheme and port; `null` is not) is refused on every
//!   bind address.
//!
//! The body media-type check (`415` for `text/plain` and form encodings) lives in
//! [`crate::http`]; together with this module it closes the simple-request route.

use crate::error::ApiError;
use http::header::{HOST, ORIGIN};
use http::{HeaderMap, Uri};
use std::net::IpAddr;
use url::Host;

/// Which hosts and origins a cluster answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// Whether `Host` is checked: the listener is bound to a loopback address.
    check_host: bool,
    /// Names (and IP literals) allowed besides `localhost` and loopback addresses.
    allowed: Vec<Host>,
}

/// An `--allowed-host` value that is not a host name or IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid allowed host {0:?}: give a DNS name or an IP address, without scheme, port or path (e.g. sandbox.test)"
)]
pub struct InvalidAllowedHost(pub String);

impl HostPolicy {
    /// The policy of a listener bound to `bind` that also serves the names in `allowed`.
    pub fn new(bind: IpAddr, allowed: &[String]) -> Result<HostPolicy, InvalidAllowedHost> {
        let allowed = allowed
            .iter()
            .map(|a| parse_host(a.trim()).ok_or_else(|| InvalidAllowedHost(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostPolicy {
            check_host: is_loopback(bind),
            allowed,
        })
    }

    /// `Ok` if the request may go on; a 403 `Forbidden` Status otherwise.
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
        if self.check_host {
            // An absolute-form request target carries its own authority; check both.
            let authority = uri.authority().map(|a| a.as_str().to_string());
            let host_headers = headers
                .get_all(HOST)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            for host in authority.into_iter().chain(host_headers) {
                let name = strip_port(&host).and_then(parse_host);
                if !name.is_some_and(|h| self.allows(&h)) {
                    return Err(refused_host(&host));
                }
            }
        }
        for origin in headers.get_all(ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            // `null` (sandboxed frames, local files) and anything that is no URL have no host.
            let host = url::Url::parse(&origin)
                .ok()
                .and_then(|u| u.host().map(|h| h.to_owned()));
            if !host.is_some_and(|h| self.allows(&h)) {
                return Err(refused_origin(&origin));
            }
        }
        Ok(())
    }

    fn allows(&self, host: &Host) -> bool {
        match host {
            Host::Domain(d) => {
                d.trim_end_matches('.').eq_ignore_ascii_case("localhost")
                    || self.allowed.contains(host)
            }
            Host::Ipv4(ip) => ip.is_loopback() || self.allowed.contains(host),
            Host::Ipv6(ip) => is_loopback(IpAddr::V6(*ip)) || self.allowed.contains(host),
        }
    }
}

fn refused_host(host: &str) -> ApiError {
    let name = strip_port(host).unwrap_or(host);
    ApiError::forbidden(format!(
        "host {host:?} is not allowed: this API listens on a loopback address and answers only requests for localhost or a loopback IP, to keep web pages out (DNS rebinding); to serve it under this name, start the sandbox with --allowed-host {name} (SandboxConfig::allowed_hosts)"
    ))
}

fn refused_origin(origin: &str) -> ApiError {
    ApiError::forbidden(format!(
        "origin {origin:?} is not allowed: requests from web pages on other sites are refused (cross-site request forgery); API clients send no Origin header, and origins on localhost, a loopback IP or a name given with --allowed-host (SandboxConfig::allowed_hosts) are accepted"
    ))
}

/// Loopback for IPv4 `127.0.0.0/8`, IPv6 `::1` and IPv4-mapped loopback (`::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A host name or IP literal (IPv6 in brackets or bare), normalised the way URLs are.
fn parse_host(s: &str) -> Option<Host> {
    if s.is_empty() {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(match ip {
            IpAddr::V4(v4) => Host::Ipv4(v4),
            IpAddr::V6(v6) => Host::Ipv6(v6),
        });
    }
    // `Host::parse` accepts characters no DNS name has (`_`, `%`); a name must be a plain
    // hostname here, so that an allowed host matches exactly what a browser sends.
    let plain = s.starts_with('[')
        || s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !plain {
        return None;
    }
    match Host::parse(s).ok()? {
        Host::Domain(d) => Some(Host::Domain(d.to_ascii_lowercase())),
        h => Some(h),
    }
}

/// `name`, `name:port`, `[v6]` or `[v6]:port` without the port; `None` for a malformed port.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(rest.strip_prefix(':')?)
        };
        (&host[..=end], port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    match port {
        None => Some(name),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(name)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn loopback(allowed: &[&str]) -> HostPolicy {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        HostPolicy::new(IpAddr::V4(Ipv4Addr::LOCALHOST), &allowed).unwrap()
    }

    #[test]
    fn loopback_hosts_pass_and_others_are_refused() {
        let p = loopback(&["Sandbox.Test"]);
        let uri: Uri = "/api".parse().unwrap();
        for ok in [
            "localhost",
            "localhost:6550",
            "LOCALHOST:1",
            "localhost.:80",
            "127.0.0.1:6550",
            "127.3.4.5",
            "[::1]:6550",
            "[::1]",
            "[::ffff:127.0.0.1]:9",
            "sandbox.test:6550",
            "SANDBOX.test",
        ] {
            assert!(p.check(&headers(&[("host", ok)]), &uri).is_ok(), "{ok}");
        }
        assert!(
            p.check(&HeaderMap::new(), &uri).is_ok(),
            "no Host (HTTP/1.0)"
        );
        for bad in [
            "evil.example",
            "evil.example:6550",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:6550",
            "[2001:db8::1]:6550",
            "localhost:65536x",
            "localhost:",
            "",
            "local_host",
            "[::1",
        ] {
            let e = p.check(&headers(&[("host", bad)]), &uri).unwrap_err();
            assert_eq!((e.code, e.reason), (403, "Forbidden"), "{bad}");
            assert!(e.message.contains("--allowed-host"), "{}", e.message);
        }
        // A second Host header or an absolute-form target cannot smuggle another name past.
        let two = headers(&[("host", "localhost"), ("host", "evil.example")]);
        assert!(p.check(&two, &uri).is_err());
        let absolute: Uri = "http://evil.example/api".parse().unwrap();
        assert!(
            p.check(&headers(&[("host", "localhost")]), &absolute)
                .is_err()
        );
    }

    #[test]
    fn host_is_not_checked_off_loopback_but_origin_is() {
        let p = HostPolicy::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), &[]).unwrap();
        let uri: Uri = "/api".parse().unwrap();
        assert!(
            p.check(&headers(&[("host", "build-box.lan:6550")]), &uri)
                .is_ok()
        );
        let e = p
            .check(&headers(&[("origin", "http://evil.example")]), &uri)
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("\"http://evil.example\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn origins() {
        let p = loopback(&["sandbox.test"]);
        let uri: Uri = "/api".parse().unwrap();
        for ok in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:8080",
            "http://sandbox.test",
        ] {
            assert!(p.check(&headers(&[("origin", ok)]), &uri).is_ok(), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "null",
            "file://",
            "garbage",
            "http://localhost.evil.example",
        ] {
            assert_eq!(
                p.check(&headers(&[("origin", bad)]), &uri)
                    .unwrap_err()
                    .code,
                403,
                "{bad}"
            );
        }
    }

    #[test]
    fn allowed_hosts_must_be_names_or_addresses() {
        let any = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for ok in ["sandbox.test", "10.1.2.3", "::1", "[fe80::1]", "my-box"] {
            assert!(HostPolicy::new(any, &[ok.to_string()]).is_ok(), "{ok}");
        }
        for bad in ["", "http://x", "x:80", "a/b", "a b", "under_score"] {
            assert_eq!(
                HostPolicy::new(any, &[bad.to_string()]).unwrap_err(),
                InvalidAllowedHost(bad.to_string()),
                "{bad}"
            );
        }
    }
}
