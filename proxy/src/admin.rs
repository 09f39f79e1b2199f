//! The admin listener (hyper 1, loopback by default).
//!
//! | Path           | Credentials       | Answer                                                  |
//! |----------------|-------------------|---------------------------------------------------------|
//! | `/healthz`     | never             | 200 while the process runs                              |
//! | `/ready`       | never             | 200 once a snapshot is served, else 503; JSON with      |
//! |                |                   | generation, source, error, the controller link          |
//! |                |                   | (`controller: {url, connected, lastError}` or null) and |
//! |                |                   | the state file (`stateFile` or null) and the mesh       |
//! |                |                   | identity (`identity: {uri, notAfter, renewAt}` or null) |
//! | `/config_dump` | with a token      | the served snapshot (secrets redacted), generation,     |
//! |                |                   | source, error, `nearestRegions` (measured failover      |
//! |                |                   | order without a policy, with each region's round trip)  |
//! | `/metrics`     | with a token      | Prometheus text                                         |
//! | `/healthz/gateway/NS/NAME` | never | 200 when this region can serve the Gateway from its   |
//! |                |                   | own endpoints, else 503 (404 unknown Gateway); JSON     |
//! |                |                   | with the backends that have no local endpoint; for      |
//! |                |                   | DNS/GSLB health checks (`?minPercent=P`: the share of   |
//! |                |                   | backends that must be servable locally, default 100)    |
//! | anything else  | with a token      | 404                                                     |
//!
//! Credentials: with [`AdminAuth::Token`] every path but `/healthz` and `/ready` (what kubelet
//! probes, which carry no credentials) needs `Authorization: Bearer <token>`, compared in
//! constant time; anything else is a `401` with `WWW-Authenticate: Bearer`, counted in
//! `meridian_proxy_admin_refused_total{path}` (the path label is one of the known paths or
//! `other`, so scanners cannot grow the metric). Whether a token is needed is decided by whoever
//! starts the proxy: `meridian proxy` (cli.rs) refuses a non-loopback `--admin` without
//! `--admin-token-file` unless `--admin-insecure` is given. Client certificates are not
//! supported yet.
//!
//! `/config_dump` redacts, wherever they sit in the snapshot ([`redact`]): private keys
//! (`keyPem`), any field whose name contains `token` or `password`, and the value of every
//! name/value pair (header modifier `set`/`add`, header and query parameter matches, in rules,
//! backends and mirror backends alike) whose name carries credentials ([`secret_header`]). The
//! name stays visible, the value reads `<redacted>`.
//!
//! `identity` shows the certificate the proxy presents on the east-west hop as it is now (a
//! renewal shows at the next request): its `spiffe://` URI, its end of validity and when it is
//! due for renewal, both RFC 3339. Nothing secret: no key, no PEM. It is null without an
//! identity, and before the first certificate arrives. It does not affect readiness: a proxy
//! serves its Gateways' traffic without one; `meridian_proxy_certificate_expiry_seconds` is the
//! number to alert on.
//!
//! `source` says where the served snapshot came from: `file` (`--snapshot`), `controller`, or
//! `disk` (restored from `--state-dir` at start; `restored: {path, generation, writtenAt}` tells
//! which), null before the first one. A proxy serving a restored snapshot is ready (200): it
//! serves the last configuration it acknowledged, and taking every proxy out of its load
//! balancer because the controller is down would turn a control-plane outage into a data-plane
//! one. Whoever wants to know watches `source` or `meridian_proxy_snapshot_source{source="disk"}`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meridian_distribution::pki::CertStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::{Shared, SnapshotSource};

/// What the admin listener shows in place of a secret.
const REDACTED: &str = "<redacted>";

/// Who may read the admin paths other than `/healthz` and `/ready`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum AdminAuth {
    /// Whoever reaches the socket (a loopback address, or `--admin-insecure`).
    #[default]
    None,
    /// Requests with `Authorization: Bearer <token>`.
    Token(String),
}

impl std::fmt::Debug for AdminAuth {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAuth::None => f.write_str("None"),
            AdminAuth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl AdminAuth {
    /// Whether a request with these headers may read a protected path.
    fn admits(&self, headers: &http::HeaderMap) -> bool {
        match self {
            AdminAuth::None => true,
            AdminAuth::Token(expected) => bearer(headers)
                .is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares a presented secret with the expected one in time that depends only on the expected
/// one's length: no early exit on the first differing byte, so response times tell an attacker
/// nothing about how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// Paths answered without credentials: kubelet probes carry none, nor do the health checks of
/// global load balancers (`/healthz/gateway/…`, which shows only Gateway and backend names and
/// booleans).
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/ready") || path.starts_with(GSLB_PREFIX)
}

/// Prefix of the per-Gateway health endpoint for global load balancers.
const GSLB_PREFIX: &str = "/healthz/gateway/";
/// Longest path the Gateway health endpoint reads (a namespace and a name are at most 63 and
/// 253 bytes).
const GSLB_MAX_PATH: usize = GSLB_PREFIX.len() + 63 + 1 + 253;
/// Most backends named in a 503's reason (the rest are counted).
const GSLB_MAX_NAMED: usize = 32;

/// The `path` label of a refused request: a known path, else `other` (the label set stays
/// bounded whatever is asked for).
fn path_label(path: &str) -> &'static str {
    match path {
        "/config_dump" => "/config_dump",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    auth: Arc<AdminAuth>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        let auth = auth.clone();
                        async move { Ok::<_, Infallible>(guarded(&req, &shared, &auth)) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                });
            }
        }
    }
}

/// [`answer`], behind the credential check of protected paths.
fn guarded<B>(req: &Request<B>, shared: &Shared, auth: &AdminAuth) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if open_path(path) || auth.admits(req.headers()) {
        return answer(req, shared);
    }
    let label = path_label(path);
    shared
        .metrics
        .admin_refused
        .with_label_values(&[label])
        .inc();
    tracing::debug!(path = label, "admin request without a valid token refused");
    let mut resp = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "unauthorized: send `Authorization: Bearer <admin token>` (the proxy's \
         --admin-token-file)\n"
            .to_string(),
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    resp
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn answer<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let served = shared.served.load_full();
    let generation = served.as_ref().map(|s| s.router.generation());
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/ready" => {
            let status = if served.is_some() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let source = shared.source();
            json_reply(
                status,
                &json!({
                    "ready": served.is_some(),
                    "generation": generation,
                    "source": source.as_ref().map(SnapshotSource::label),
                    "restored": match &source {
                        Some(SnapshotSource::Disk(r)) => json!({
                            "path": r.path,
                            "generation": r.generation,
                            "writtenAt": r.written_at,
                        }),
                        _ => Value::Null,
                    },
                    "lastError": shared.last_error(),
                    "controller": shared.controller().map(|c| json!({
                        "url": c.url,
                        "connected": c.connected,
                        "lastError": c.last_error,
                    })),
                    "stateFile": shared.state_file().map(|f| json!({
                        "path": f.path,
                        "generation": f.written.as_ref().map(|w| w.0),
                        "writtenAt": f.written.as_ref().map(|w| w.1.clone()),
                        "lastError": f.last_error,
                    })),
                    "identity": shared.identity.as_deref().map_or(Value::Null, identity),
                }),
            )
        }
        "/config_dump" => {
            let mut snapshot = match &served {
                Some(s) => {
                    serde_json::to_value(s.router.snapshot().as_ref()).unwrap_or(Value::Null)
                }
                None => Value::Null,
            };
            redact(&mut snapshot);
            json_reply(
                StatusCode::OK,
                &json!({
                    "generation": generation,
                    "source": shared.source().as_ref().map(SnapshotSource::label),
                    "lastError": shared.last_error(),
                    "nearestRegions": nearest_regions(shared),
                    "snapshot": snapshot,
                }),
            )
        }
        p if p.starts_with(GSLB_PREFIX) => gateway_health(p, req.uri().query(), shared),
        "/metrics" => match shared.metrics.render() {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("metrics encoding failed: {e}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /ready, /config_dump, /metrics\n".to_string(),
        ),
    }
}

/// `/config_dump`'s `nearestRegions`: the order in which this proxy fails over to other regions
/// without a policy (health.rs: smoothed connect round trip of its probes, with hysteresis),
/// each with its round trip in milliseconds.
fn nearest_regions(shared: &Shared) -> Value {
    let (rtt, order) = shared.rtt.view();
    Value::Array(
        order
            .iter()
            .map(|r| {
                json!({
                    "region": r,
                    "rttMs": rtt.get(r).map(|d| d.as_secs_f64() * 1000.0),
                })
            })
            .collect(),
    )
}

/// `GET /healthz/gateway/NS/NAME[?minPercent=P]`: 200 when this proxy's region can serve the
/// Gateway from local endpoints: at least `P` % (default 100) of the backends of its routes
/// have a ready endpoint in this region that is neither ejected nor drained; else 503. The JSON
/// names the Gateway, the region, the counts and the backends without a local endpoint;
/// nothing else (no addresses). 404 for a Gateway this proxy does not serve, 400 for a path
/// or query it cannot read.
fn gateway_health(path: &str, query: Option<&str>, shared: &Shared) -> Response<Full<Bytes>> {
    let bad = |why: &str| json_reply(StatusCode::BAD_REQUEST, &json!({ "error": why }));
    if path.len() > GSLB_MAX_PATH || query.is_some_and(|q| q.len() > 64) {
        return bad("path too long");
    }
    let Some((ns, name)) = path
        .strip_prefix(GSLB_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
    else {
        return bad("expected /healthz/gateway/NAMESPACE/NAME");
    };
    let min_percent = match query.map(|q| q.strip_prefix("minPercent=").map(str::parse::<u32>)) {
        None => 100,
        Some(Some(Ok(p))) if p <= 100 => p,
        Some(_) => return bad("expected ?minPercent=0..100"),
    };
    let region = shared.locality.region.as_str();
    let gateway = format!("{ns}/{name}");
    let served = shared.served.load_full();
    let found = served.as_ref().and_then(|s| {
        let gw = s
            .router
            .snapshot()
            .gateways
            .iter()
            .find(|g| g.namespace == ns && g.name == name)?;
        Some(crate::failover::local_backends(
            shared,
            gw,
            s.gateways.gateway(ns, name),
        ))
    });
    let Some(backends) = found else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({ "gateway": gateway, "region": region, "healthy": false,
                     "reason": "this proxy does not serve the Gateway" }),
        );
    };
    let total = backends.len();
    let unservable: Vec<&str> = backends
        .iter()
        .filter(|(_, local)| !local)
        .map(|(b, _)| b.as_str())
        .collect();
    let servable = total - unservable.len();
    let healthy = servable * 100 >= total * min_percent as usize;
    json_reply(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({
            "gateway": gateway,
            "region": region,
            "healthy": healthy,
            "backends": total,
            "servableLocally": servable,
            "minPercent": min_percent,
            "withoutLocalEndpoints": unservable.iter().take(GSLB_MAX_NAMED).collect::<Vec<_>>(),
        }),
    )
}

/// `/ready`'s `identity`: who the current certificate names and when it ends and is renewed;
/// null before the first certificate.
fn identity(store: &CertStore) -> Value {
    let Some(creds) = store.credentials() else {
        return Value::Null;
    };
    json!({
        "uri": creds.peer().uri(store.bundle().trust_domain()),
        "notAfter": rfc3339(creds.not_after()),
        "renewAt": rfc3339(creds.renew_at()),
    })
}

/// A point in time as RFC 3339 (UTC); null if it is outside what a timestamp can hold (a
/// certificate's dates come from whoever issued it).
fn rfc3339(t: std::time::SystemTime) -> Value {
    jiff::Timestamp::try_from(t).map_or(Value::Null, |ts| Value::String(ts.to_string()))
}

/// Removes every secret from a snapshot's JSON, in place: private keys, fields named like a
/// token or password, and the values of name/value pairs whose name carries credentials.
///
/// It walks the JSON rather than the typed snapshot so that nothing added to the snapshot later
/// slips through for lack of a case here: a header pair is recognised by its shape (an object
/// with string `name` and `value`), which is how [`meridian_model::snapshot::HeaderValue`],
/// [`meridian_model::snapshot::HeaderMatch`] and
/// [`meridian_model::snapshot::QueryParamMatch`] serialize, wherever they sit.
pub(crate) fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let secret_pair = matches!(
                (map.get("name"), map.get("value")),
                (Some(Value::String(name)), Some(Value::String(_))) if secret_header(name)
            );
            for (k, val) in map.iter_mut() {
                if secret_field(k) || (secret_pair && k == "value") {
                    *val = Value::String(REDACTED.to_string());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Fields whose value is a secret whatever object holds them.
fn secret_field(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "keypem" || key.contains("token") || key.contains("password")
}

/// Header (or query parameter) names whose values carry credentials: the well-known ones, and
/// any name containing `token`, `secret`, `password` or `api-key` (`api_key` too), ignoring
/// case.
pub(crate) fn secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('_', "-");
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie" | "x-api-key"
    ) || ["token", "secret", "password", "api-key"]
        .iter()
        .any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use meridian_model::Snapshot;

    use super::*;

    #[test]
    fn private_keys_and_token_or_password_fields_are_redacted_everywhere() {
        let mut v = json!({"a": [{"tls": {"certificates": [{"certPem": "C", "keyPem": "K"}]}}],
            "b": {"bearerToken": "T", "Password": "P", "passwordFile": {"x": 1}, "name": "n"}});
        redact(&mut v);
        assert_eq!(v["a"][0]["tls"]["certificates"][0]["keyPem"], REDACTED);
        assert_eq!(v["a"][0]["tls"]["certificates"][0]["certPem"], "C");
        assert_eq!(v["b"]["bearerToken"], REDACTED);
        assert_eq!(v["b"]["Password"], REDACTED);
        assert_eq!(
            v["b"]["passwordFile"], REDACTED,
            "whatever the value's type"
        );
        assert_eq!(v["b"]["name"], "n");
    }

    #[test]
    fn credential_header_names_are_recognised_ignoring_case() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "SET-COOKIE",
            "x-api-key",
            "X-Auth-Token",
            "x-vault-token",
            "X-Client-Secret",
            "db_password",
            "my-api-key-v2",
            "X_API_KEY",
        ] {
            assert!(secret_header(name), "{name}");
        }
        for name in [
            "x-tenant",
            "host",
            "content-type",
            "x-request-id",
            "user-agent",
        ] {
            assert!(!secret_header(name), "{name}");
        }
    }

    /// A header modifier carrying one credential and one ordinary header in `set` and `add`.
    fn modifier(kind: &str, secret: &str) -> Value {
        json!({"type": kind,
            "set": [{"name": "Authorization", "value": format!("Bearer {secret}-set")},
                    {"name": "x-tenant", "value": "blue"}],
            "add": [{"name": "x-api-key", "value": format!("{secret}-add")}],
            "remove": ["cookie"]})
    }

    /// Every place a snapshot carries a header (or query parameter) value, each with a secret
    /// named after where it sits; parsed as a [`Snapshot`] so the shapes are the model's own.
    fn snapshot_with_secrets() -> Value {
        let backend = |name: &str, filters: Vec<Value>| {
            json!({"name": name, "filters": filters,
                "target": {"type": "endpoints", "endpoints": [{"address": "127.0.0.1", "port": 8080}]}})
        };
        let rule = json!({
            "matches": [{
                "headers": [{"name": "cookie", "value": "session=s-match"},
                            {"name": "x-tenant", "value": "blue", "type": "exact"}],
                "queryParams": [{"name": "access_token", "value": "s-query"},
                                {"name": "page", "value": "2"}],
            }],
            "filters": [
                modifier("requestHeaderModifier", "s-rule-req"),
                modifier("responseHeaderModifier", "s-rule-resp"),
                {"type": "requestMirror", "backend": backend("mirror",
                    vec![modifier("requestHeaderModifier", "s-mirror")])},
                {"type": "requestRedirect", "hostname": "example.com"},
            ],
            "backends": [backend("b", vec![
                modifier("responseHeaderModifier", "s-backend"),
                json!({"type": "requestMirror", "backend": backend("mirror2",
                    vec![modifier("requestHeaderModifier", "s-backend-mirror")])}),
            ])],
        });
        let snapshot: Snapshot = serde_json::from_value(json!({
            "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
            "generation": 1,
            "gateways": [{"namespace": "default", "name": "gw", "listeners": [{
                "name": "https", "address": "127.0.0.1", "port": 8443, "protocol": "HTTPS",
                "tls": {"certificates": [{"certPem": "CERT", "keyPem": "s-key"}]},
                "routes": [{"namespace": "default", "name": "r", "rules": [rule]}],
            }]}],
        }))
        .unwrap();
        serde_json::to_value(&snapshot).unwrap()
    }

    #[test]
    fn config_dump_shows_no_credential_header_value_anywhere_in_the_snapshot() {
        let mut v = snapshot_with_secrets();
        let before = v.to_string();
        for place in [
            "s-key",
            "s-match",
            "s-query",
            "s-rule-req",
            "s-rule-resp",
            "s-mirror",
            "s-backend",
            "s-backend-mirror",
        ] {
            assert!(before.contains(place), "the fixture carries {place}");
        }
        redact(&mut v);
        let after = v.to_string();
        assert!(!after.contains("s-"), "a secret survived: {after}");

        let rule = &v["gateways"][0]["listeners"][0]["routes"][0]["rules"][0];
        // Names stay visible; ordinary values and everything else are untouched.
        let m = &rule["matches"][0];
        assert_eq!(
            m["headers"][0],
            json!({"name": "cookie", "value": REDACTED, "type": "exact"})
        );
        assert_eq!(m["headers"][1]["value"], "blue");
        assert_eq!(m["queryParams"][0]["name"], "access_token");
        assert_eq!(m["queryParams"][0]["value"], REDACTED);
        assert_eq!(m["queryParams"][1]["value"], "2");
        let req = &rule["filters"][0];
        assert_eq!(
            req["set"][0],
            json!({"name": "Authorization", "value": REDACTED})
        );
        assert_eq!(req["set"][1], json!({"name": "x-tenant", "value": "blue"}));
        assert_eq!(
            req["add"][0],
            json!({"name": "x-api-key", "value": REDACTED})
        );
        assert_eq!(req["remove"], json!(["cookie"]));
        assert_eq!(rule["filters"][3]["hostname"], "example.com");
        let mirror = &rule["backends"][0]["filters"][1]["backend"];
        assert_eq!(mirror["name"], "mirror2");
        assert_eq!(mirror["filters"][0]["set"][1]["value"], "blue");
        assert_eq!(
            v["gateways"][0]["listeners"][0]["tls"]["certificates"][0]["certPem"],
            "CERT"
        );
    }

    #[test]
    fn only_a_matching_bearer_token_is_admitted() {
        let auth = AdminAuth::Token("s3cret".to_string());
        let with = |value: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).unwrap(),
            );
            h
        };
        assert!(auth.admits(&with("Bearer s3cret")));
        assert!(auth.admits(&with("bearer  s3cret ")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3CRET",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!auth.admits(&with(wrong)), "{wrong}");
        }
        assert!(!auth.admits(&http::HeaderMap::new()));
        assert!(AdminAuth::None.admits(&http::HeaderMap::new()));
        assert_eq!(format!("{auth:?}"), "Token(<redacted>)");
    }

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
