//! Session persistence (HTTPRoute rule `sessionPersistence`): the first answer of a session
//! carries a token naming the endpoint that served it (a cookie, or a response header the client
//! repeats), and later requests with the token go to that endpoint while it is usable.
//!
//! ```text
//! request_filter (route.rs) ─ token in the cookie/header? ─ verify (MAC, rule, endpoint still
//!   at its index, absolute and idle timeouts) ─ valid: its backend instead of the weighted pick,
//!   its endpoint preferred (Upstream::sticky)
//! choose_endpoint (upstream.rs) ─ the preferred endpoint if ready, not ejected, not drained,
//!   inside the geo-fence, not tried yet; else the usual locality order (own region first)
//! response_filter (response.rs) ─ the answering endpoint ≠ the token's (or no token, or an
//!   idle timeout to refresh) ─ Set-Cookie / the header with a new token
//! ```
//!
//! The token is opaque and tamper-resistant: it holds the backend and endpoint *indices* of the
//! rule (never an address) and the session's start and last-use times, and is authenticated with
//! an HMAC-SHA256 over the route, rule, endpoint address and those fields, keyed by a random key
//! of this proxy process. A forged or edited token, one minted for another rule, or one whose
//! index now names another address fails the check and is ignored (normal choice, new token).
//! The key is per process: a restarted proxy (or another replica) starts new sessions.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_model::router::CompiledRule;
use meridian_model::snapshot::{BackendTarget, SessionKind, SessionPersistence};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use pingora_http::{RequestHeader, ResponseHeader};

/// Bytes of the MAC kept in a token.
const MAC_LEN: usize = 16;
/// Token layout version.
const VERSION: u8 = 1;

/// This proxy process's token key.
fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

/// What a valid token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sticky {
    /// Index of the backend in the rule.
    pub backend: usize,
    /// Index of the endpoint in the backend.
    pub endpoint: usize,
    /// Session start, seconds since the epoch.
    pub created: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The endpoint address at `(backend, endpoint)` of the rule.
fn address(rule: &CompiledRule, backend: usize, endpoint: usize) -> Option<SocketAddr> {
    match &rule.rule.backends.get(backend)?.target {
        BackendTarget::Endpoints { endpoints, .. } => {
            let e = endpoints.get(endpoint)?;
            Some(SocketAddr::new(e.address, e.port))
        }
        BackendTarget::Invalid { .. } => None,
    }
}

fn mac(rule: &CompiledRule, addr: SocketAddr, payload: &[u8]) -> Option<[u8; MAC_LEN]> {
    let pkey = PKey::hmac(key()).ok()?;
    let mut s = Signer::new(MessageDigest::sha256(), &pkey).ok()?;
    let scope = format!(
        "{}/{}#{}|{addr}|",
        rule.route_namespace, rule.route_name, rule.index
    );
    s.update(scope.as_bytes()).ok()?;
    s.update(payload).ok()?;
    let full = s.sign_to_vec().ok()?;
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(full.get(..MAC_LEN)?);
    Some(out)
}

fn payload(backend: usize, endpoint: usize, created: u64, last: u64) -> Option<Vec<u8>> {
    let mut p = Vec::with_capacity(1 + 2 + 4 + 8 + 8);
    p.push(VERSION);
    p.extend_from_slice(&u16::try_from(backend).ok()?.to_be_bytes());
    p.extend_from_slice(&u32::try_from(endpoint).ok()?.to_be_bytes());
    p.extend_from_slice(&created.to_be_bytes());
    p.extend_from_slice(&last.to_be_bytes());
    Some(p)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A token for the session served by `(backend, endpoint)` of `rule`.
pub(crate) fn mint(
    rule: &CompiledRule,
    backend: usize,
    endpoint: usize,
    created: u64,
) -> Option<String> {
    let addr = address(rule, backend, endpoint)?;
    let p = payload(backend, endpoint, created, now_secs())?;
    let m = mac(rule, addr, &p)?;
    Some(format!("{}.{}", hex(&p), hex(&m)))
}

/// Checks a token of `rule` against its MAC and the session's timeouts (`now` in seconds).
pub(crate) fn verify(
    rule: &CompiledRule,
    sp: &SessionPersistence,
    token: &str,
    now: u64,
) -> Option<Sticky> {
    let (p, m) = token.trim().split_once('.')?;
    let (p, m) = (unhex(p)?, unhex(m)?);
    if p.len() != 23 || p[0] != VERSION || m.len() != MAC_LEN {
        return None;
    }
    let backend = usize::from(u16::from_be_bytes([p[1], p[2]]));
    let endpoint = u32::from_be_bytes([p[3], p[4], p[5], p[6]]) as usize;
    let created = u64::from_be_bytes(p[7..15].try_into().ok()?);
    let last = u64::from_be_bytes(p[15..23].try_into().ok()?);
    let addr = address(rule, backend, endpoint)?;
    let want = mac(rule, addr, &p)?;
    // Constant time: a hostile client must not learn the MAC byte by byte.
    if !openssl::memcmp::eq(&want, &m) {
        return None;
    }
    let expired = |start: u64, limit: Option<u64>| {
        limit.is_some_and(|ms| now.saturating_sub(start).saturating_mul(1000) >= ms)
    };
    if expired(created, sp.absolute_timeout_ms) || expired(last, sp.idle_timeout_ms) {
        return None;
    }
    Some(Sticky {
        backend,
        endpoint,
        created,
    })
}

/// The session token the request carries, if any: the cookie or header named by `sp`.
pub(crate) fn token_of(req: &RequestHeader, sp: &SessionPersistence) -> Option<String> {
    match sp.kind {
        SessionKind::Header => req
            .headers
            .get(sp.name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        SessionKind::Cookie => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(n, _)| *n == sp.name)
            .map(|(_, v)| v.trim_matches('"').to_string()),
    }
}

/// The verified session of a request to `rule`, if it has one.
pub(crate) fn of_request(rule: &CompiledRule, req: &RequestHeader) -> Option<Sticky> {
    let sp = rule.rule.session_persistence.as_ref()?;
    verify(rule, sp, &token_of(req, sp)?, now_secs())
}

/// Adds the session token to an answer from `(backend, endpoint)` when the client needs a new
/// one: no valid session, a session on another endpoint, or an idle timeout to push back.
pub(crate) fn set_on_response(
    resp: &mut ResponseHeader,
    rule: &CompiledRule,
    had: Option<Sticky>,
    backend: usize,
    endpoint: usize,
) {
    let Some(sp) = rule.rule.session_persistence.as_ref() else {
        return;
    };
    let same = had.filter(|s| s.backend == backend && s.endpoint == endpoint);
    if same.is_some() && sp.idle_timeout_ms.is_none() {
        return;
    }
    let created = same.map_or_else(now_secs, |s| s.created);
    let Some(token) = mint(rule, backend, endpoint, created) else {
        return;
    };
    let result = match sp.kind {
        SessionKind::Header => resp.insert_header(sp.name.clone(), token),
        SessionKind::Cookie => {
            let mut cookie = format!("{}={token}; Path=/; HttpOnly", sp.name);
            if sp.permanent
                && let Some(ms) = sp.absolute_timeout_ms
            {
                // Only what is left of the session, not a new full lifetime.
                let left = (ms / 1000).saturating_sub(now_secs().saturating_sub(created));
                cookie.push_str(&format!("; Max-Age={left}"));
            }
            resp.append_header(http::header::SET_COOKIE, cookie)
                .map(drop)
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "session token not added");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use meridian_model::snapshot::Rule;
    use serde_json::json;

    use super::*;

    fn rule(sp: serde_json::Value, index: usize) -> CompiledRule {
        let be = |port: u16| {
            json!({"name": "b", "target": {"type": "endpoints", "endpoints": [
                {"address": "10.0.0.1", "port": port}, {"address": "10.0.0.2", "port": port}]}})
        };
        let rule: Rule =
            serde_json::from_value(json!({"sessionPersistence": sp, "backends": [be(80), be(81)]}))
                .unwrap();
        CompiledRule {
            route_namespace: "ns".into(),
            route_name: "r".into(),
            route_label: "ns/r".into(),
            index,
            rule,
            cumulative_weights: vec![1, 2],
        }
    }

    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        let r = rule(json!({"name": "s"}), 0);
        let sp = r.rule.session_persistence.clone().unwrap();
        let now = now_secs();
        let t = mint(&r, 1, 1, now).unwrap();
        assert!(!t.contains("10.0.0"), "opaque: {t}");
        assert_eq!(
            verify(&r, &sp, &t, now),
            Some(Sticky {
                backend: 1,
                endpoint: 1,
                created: now
            })
        );
        // Any flipped character fails.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            if b[i] == b'.' {
                continue;
            }
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(b).unwrap();
            assert_eq!(verify(&r, &sp, &forged, now), None, "{forged}");
        }
        for junk in ["", ".", "zz.zz", "01.02", &"a".repeat(10_000)] {
            assert_eq!(verify(&r, &sp, junk, now), None);
        }
        // A token of another rule does not steer this one.
        let other = rule(json!({"name": "s"}), 1);
        assert_eq!(verify(&other, &sp, &t, now), None);
    }

    #[test]
    fn timeouts_end_sessions() {
        let r = rule(
            json!({"name": "s", "absoluteTimeoutMs": 10_000, "idleTimeoutMs": 4_000}),
            0,
        );
        let sp = r.rule.session_persistence.clone().unwrap();
        let now = now_secs();
        let t = mint(&r, 0, 0, now - 5).unwrap();
        // Last use is now: within the idle timeout; started 5 s ago: within the absolute one.
        assert!(verify(&r, &sp, &t, now).is_some());
        assert!(verify(&r, &sp, &t, now + 3).is_some());
        assert_eq!(verify(&r, &sp, &t, now + 4), None, "idle");
        let t = mint(&r, 0, 0, now - 9).unwrap();
        assert!(verify(&r, &sp, &t, now).is_some());
        assert_eq!(verify(&r, &sp, &t, now + 1), None, "absolute");
    }
}
