//! The read-only JSON endpoints of the controller's admin listener.
//!
//! | Path           | Answer                                                                    |
//! |----------------|---------------------------------------------------------------------------|
//! | `/v1/status`   | [`StatusView`]                                                            |
//! | `/v1/explain`  | [`ExplainView`]; query: `gateway=NS/NAME` (required), `cluster`, `host`,  |
//! |                | `path` (default `/`), `method` (default `GET`), `header=NAME:VALUE`       |
//! |                | (repeatable), `port`, `fail=CLUSTER|REGION|ZONE`                          |
//! | `/v1/events`   | the live view's event stream ([`super::live`])                            |
//! | `POST /v1/drills` | a drill started from the live view (token listeners only)              |
//!
//! Credentials ([`AdminAuth`]): with a token (`meridian controller --admin-token-file`), every
//! `/v1/` request needs `Authorization: Bearer <token>`, compared in constant time, else `401`
//! with `WWW-Authenticate: Bearer`. Without one the endpoints answer only on a loopback listener
//! (whoever reaches it is on the machine, as with the proxy's admin listener); on any other
//! address they answer `403` saying to give a token. `/healthz`, `/readyz` and `/metrics` stay as
//! they were, without credentials.
//!
//! Every client is assumed hostile: only `GET`, a query of at most [`MAX_QUERY`] bytes, at most
//! [`MAX_HEADERS`] `header` parameters, bounded values, unknown parameters refused; every
//! refusal is a `4xx` with `{"error": "…"}` saying what to change. The reconcile loop is asked
//! with a bounded wait ([`LOOP_WAIT`]): a busy or stopped loop is a `503`, never a hung request.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use meridian_model::GatewayRef;
use meridian_model::explain::{ExplainRequest, Failure};
use meridian_model::router::percent_decode;
use tokio::sync::{mpsc, oneshot};

use super::{
    Answer, Ask, ClusterExplanation, ClusterSnapshot, ExplainView, FailedView, InspectAsk,
};
use crate::watch::Msg;

/// Longest query string accepted.
pub const MAX_QUERY: usize = 8 * 1024;
/// Most `header` parameters accepted.
pub const MAX_HEADERS: usize = 32;
/// Longest single parameter value.
pub const MAX_VALUE: usize = 2048;
/// Longest wait for the reconcile loop's answer.
pub const LOOP_WAIT: Duration = Duration::from_secs(5);

/// Who may read `/v1/`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum AdminAuth {
    /// Whoever reaches the listener: it is on loopback and no token is configured.
    #[default]
    Loopback,
    /// Requests with `Authorization: Bearer <token>`.
    Token(String),
    /// Nobody: the listener is not on loopback and no token is configured.
    Closed,
}

impl std::fmt::Debug for AdminAuth {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAuth::Loopback => f.write_str("Loopback"),
            AdminAuth::Token(_) => f.write_str("Token(<redacted>)"),
            AdminAuth::Closed => f.write_str("Closed"),
        }
    }
}

impl AdminAuth {
    /// A token when one is given; otherwise open on a loopback listener, closed elsewhere.
    pub fn decide(listener: SocketAddr, token: Option<String>) -> Self {
        match token {
            Some(t) => AdminAuth::Token(t),
            None if listener.ip().is_loopback() => AdminAuth::Loopback,
            None => AdminAuth::Closed,
        }
    }

    /// Refuses a request without the credentials this listener wants.
    pub(crate) fn check(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        match self {
            AdminAuth::Loopback => Ok(()),
            AdminAuth::Closed => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "the controller's admin listener is not on loopback and has no token: start \
                 `meridian controller` with --admin-token-file FILE to serve /v1/status and \
                 /v1/explain",
            )),
            AdminAuth::Token(token) => {
                let given = authorization
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .unwrap_or_default();
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(Refusal::new(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token: give the controller's admin token \
                         (`meridian status --token-file FILE`, or the admin.json `meridian up` \
                         writes)",
                    ))
                }
            }
        }
    }
}

/// Equal without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A `4xx`/`5xx` with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// What the `/v1/` endpoints need.
#[derive(Clone)]
pub(crate) struct Inspector {
    pub tx: mpsc::Sender<Msg>,
    pub auth: AdminAuth,
    /// The live view (`/ui`, `/v1/events`, `POST /v1/drills`).
    pub live: std::sync::Arc<super::live::Live>,
}

impl Inspector {
    /// Answers a `/v1/` request.
    pub(crate) async fn respond(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        authorization: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let result = async {
            self.auth.check(authorization)?;
            if method != http::Method::GET {
                return Err(Refusal::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET: these endpoints are read-only",
                ));
            }
            let query = query.unwrap_or_default();
            if query.len() > MAX_QUERY {
                return Err(Refusal::new(
                    StatusCode::URI_TOO_LONG,
                    format!("query longer than {MAX_QUERY} bytes"),
                ));
            }
            match path {
                "/v1/status" => {
                    if !query.is_empty() {
                        return Err(Refusal::bad("/v1/status takes no parameters"));
                    }
                    match self.ask(Ask::Status).await? {
                        Answer::Status(s) => Ok(json(&s)),
                        Answer::Snapshots(_) | Answer::Live(_) => Err(internal()),
                    }
                }
                "/v1/explain" => {
                    let q = ExplainQuery::parse(query)?;
                    let asked = self
                        .ask(Ask::Snapshots {
                            cluster: q.cluster.clone(),
                        })
                        .await?;
                    let Answer::Snapshots(snapshots) = asked else {
                        return Err(internal());
                    };
                    // Compiling routers is CPU work: off the async workers.
                    tokio::task::spawn_blocking(move || explain(&q, snapshots))
                        .await
                        .map_err(|_| internal())?
                        .map(|v| json(&v))
                }
                _ => Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "unknown path: /v1/status, /v1/explain or /v1/events",
                )),
            }
        }
        .await;
        match result {
            Ok(r) => r,
            Err(refusal) => error_response(&refusal),
        }
    }

    async fn ask(&self, ask: Ask) -> Result<Answer, Refusal> {
        ask_loop(&self.tx, ask).await
    }
}

/// Asks the reconcile loop, waiting at most [`LOOP_WAIT`] to send and as long for the answer.
pub(crate) async fn ask_loop(tx: &mpsc::Sender<Msg>, ask: Ask) -> Result<Answer, Refusal> {
    let (reply, answer) = oneshot::channel();
    let busy = || {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the controller's reconcile loop did not answer within {LOOP_WAIT:?}"),
        )
    };
    let sent =
        tokio::time::timeout(LOOP_WAIT, tx.send(Msg::Inspect(InspectAsk { ask, reply }))).await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the controller is stopping",
            ));
        }
        Err(_) => return Err(busy()),
    }
    match tokio::time::timeout(LOOP_WAIT, answer).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(_)) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is stopping",
        )),
        Err(_) => Err(busy()),
    }
}

fn internal() -> Refusal {
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while answering (see the controller's log)",
    )
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(v) {
        Ok(body) => with_type(StatusCode::OK, body),
        Err(e) => error_response(&Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        )),
    }
}

pub(crate) fn error_response(r: &Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": r.message }).to_string();
    let mut resp = with_type(r.status, body.into_bytes());
    if r.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn with_type(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The parameters of `/v1/explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExplainQuery {
    pub gateway: GatewayRef,
    pub cluster: Option<String>,
    pub request: ExplainRequest,
    pub fail: Option<String>,
}

impl ExplainQuery {
    /// Parses and bounds the query string.
    pub(crate) fn parse(query: &str) -> Result<Self, Refusal> {
        let mut gateway = None;
        let mut cluster = None;
        let mut fail = None;
        let mut request = ExplainRequest {
            method: "GET".into(),
            path: "/".into(),
            ..ExplainRequest::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            if v.len() > MAX_VALUE {
                return Err(Refusal::bad(format!(
                    "parameter {k}: longer than {MAX_VALUE} bytes"
                )));
            }
            let v = v.into_owned();
            match k {
                "gateway" => {
                    gateway = Some(v.parse::<GatewayRef>().map_err(|e| {
                        Refusal::bad(format!("gateway: {e} (e.g. gateway=demo/web)"))
                    })?);
                }
                "cluster" => cluster = Some(non_empty("cluster", v)?),
                "fail" => fail = Some(non_empty("fail", v)?),
                "host" => request.host = v,
                "path" => {
                    if !v.starts_with('/') {
                        return Err(Refusal::bad(format!("path {v:?}: must start with \"/\"")));
                    }
                    request.path = v;
                }
                "method" => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(Refusal::bad(format!(
                            "method {v:?}: letters only, e.g. GET"
                        )));
                    }
                    request.method = v.to_ascii_uppercase();
                }
                "port" => {
                    request.port =
                        Some(v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                            Refusal::bad(format!("port {v:?}: expected 1 to 65535"))
                        })?);
                }
                "header" => {
                    if request.headers.len() == MAX_HEADERS {
                        return Err(Refusal::bad(format!("at most {MAX_HEADERS} headers")));
                    }
                    request.headers.push(parse_header(&v)?);
                }
                other => {
                    return Err(Refusal::bad(format!(
                        "unknown parameter {other:?}: gateway, cluster, host, path, method, \
                         header, port, fail"
                    )));
                }
            }
        }
        let gateway = gateway.ok_or_else(|| {
            Refusal::bad("gateway is required: gateway=NAMESPACE/NAME (e.g. demo/web)")
        })?;
        Ok(ExplainQuery {
            gateway,
            cluster,
            request,
            fail,
        })
    }
}

fn non_empty(name: &str, v: String) -> Result<String, Refusal> {
    if v.is_empty() {
        Err(Refusal::bad(format!("{name}: empty")))
    } else {
        Ok(v)
    }
}

/// `NAME:VALUE` with a header name of token characters.
fn parse_header(v: &str) -> Result<(String, String), Refusal> {
    let Some((name, value)) = v.split_once(':') else {
        return Err(Refusal::bad(format!(
            "header {v:?}: expected NAME:VALUE, e.g. header=x-canary:yes"
        )));
    };
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(Refusal::bad(format!(
            "header name {name:?}: not a valid HTTP header name"
        )));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(Refusal::bad(format!(
            "header {name}: the value is not a valid HTTP header value"
        )));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// Explains the request in each cluster whose snapshot serves the Gateway.
fn explain(q: &ExplainQuery, snapshots: Vec<ClusterSnapshot>) -> Result<ExplainView, Refusal> {
    if let Some(c) = &q.cluster
        && snapshots.is_empty()
    {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no member cluster {c:?} with a published snapshot (see `meridian status` for \
                 the member clusters)"
            ),
        ));
    }
    let serving: Vec<&ClusterSnapshot> = snapshots
        .iter()
        .filter(|s| {
            s.snapshot
                .gateways
                .iter()
                .any(|g| g.namespace == q.gateway.namespace && g.name == q.gateway.name)
        })
        .collect();
    if serving.is_empty() {
        let mut known: Vec<String> = snapshots
            .iter()
            .flat_map(|s| {
                s.snapshot
                    .gateways
                    .iter()
                    .map(|g| format!("{}/{}", g.namespace, g.name))
            })
            .collect();
        known.sort();
        known.dedup();
        let place = q
            .cluster
            .as_deref()
            .map_or("any member cluster".to_string(), |c| format!("cluster {c}"));
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "Gateway {} is not served in {place} (not there, not of a Meridian GatewayClass, \
                 or not accepted: see its status); Gateways served: {}",
                q.gateway,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let failed = match &q.fail {
        None => None,
        Some(name) => Some(failed_view(name, &snapshots)?),
    };
    let failure = q.fail.as_deref().map(Failure::new);
    let mut clusters = Vec::new();
    for s in serving {
        let explanation = meridian_model::explain::explain_seen(
            &s.snapshot,
            &q.gateway,
            &q.request,
            &s.proxies,
            failure.as_ref(),
        )
        .map_err(|e| Refusal::bad(format!("cluster {}: {e}", s.cluster)))?;
        clusters.push(ClusterExplanation {
            cluster: s.cluster.clone(),
            region: s.region.clone(),
            explanation,
        });
    }
    Ok(ExplainView { failed, clusters })
}

/// What `name` names among the clusters, regions and zones of the snapshots' endpoints and
/// proxies; a name that names nothing is refused (a typo must not read as "nothing changes").
fn failed_view(name: &str, snapshots: &[ClusterSnapshot]) -> Result<FailedView, Refusal> {
    let mut clusters = std::collections::BTreeSet::new();
    let mut regions = std::collections::BTreeSet::new();
    let mut zones = std::collections::BTreeSet::new();
    for s in snapshots {
        clusters.insert(s.cluster.clone());
        regions.insert(s.region.clone());
        for p in s.proxies.iter().map(|v| &v.locality) {
            regions.insert(p.region.clone());
            if !p.zone.is_empty() {
                zones.insert(p.zone.clone());
            }
        }
        for b in s.snapshot.gateways.iter().flat_map(|g| {
            g.listeners
                .iter()
                .flat_map(|l| l.routes.iter().flat_map(|r| r.rules.iter()))
                .flat_map(|r| r.backends.iter())
        }) {
            if let meridian_model::snapshot::BackendTarget::Endpoints { endpoints, .. } = &b.target
            {
                for e in endpoints {
                    clusters.insert(e.cluster.clone());
                    regions.insert(e.region.clone());
                    if !e.zone.is_empty() {
                        zones.insert(e.zone.clone());
                    }
                }
            }
        }
    }
    let mut kinds = Vec::new();
    for (kind, set) in [
        ("cluster", &clusters),
        ("region", &regions),
        ("zone", &zones),
    ] {
        if set.contains(name) {
            kinds.push(kind.to_string());
        }
    }
    if kinds.is_empty() {
        let list = |s: &std::collections::BTreeSet<String>| {
            s.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        return Err(Refusal::bad(format!(
            "fail {name:?} names no cluster, region or zone; clusters: {}; regions: {}; zones: {}",
            list(&clusters),
            list(&regions),
            list(&zones)
        )));
    }
    Ok(FailedView {
        name: name.to_string(),
        kinds,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn auth_is_decided_by_token_and_listener_address() {
        let lo: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert_eq!(AdminAuth::decide(lo, None), AdminAuth::Loopback);
        assert_eq!(AdminAuth::decide(any, None), AdminAuth::Closed);
        let t = AdminAuth::decide(any, Some("s3cret".into()));
        assert_eq!(t, AdminAuth::Token("s3cret".into()));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(t.check(Some("Bearer s3cret")).is_ok());
        assert_eq!(
            t.check(Some("Bearer s3cre")).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(t.check(None).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            AdminAuth::Closed
                .check(Some("Bearer x"))
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert!(AdminAuth::Loopback.check(None).is_ok());
    }

    #[test]
    fn explain_query_is_parsed_and_bounded() {
        let q = ExplainQuery::parse(
            "gateway=demo%2Fweb&cluster=east&host=a.example&path=%2Fapi%3Fx%3D1&method=post\
             &header=x-canary%3Ayes&header=X-Two%3A%202&port=8080&fail=us-east",
        )
        .unwrap();
        assert_eq!(q.gateway, GatewayRef::new("demo", "web"));
        assert_eq!(q.cluster.as_deref(), Some("east"));
        assert_eq!(q.request.path, "/api?x=1");
        assert_eq!(q.request.method, "POST");
        assert_eq!(q.request.port, Some(8080));
        assert_eq!(
            q.request.headers,
            [
                ("x-canary".to_string(), "yes".to_string()),
                ("X-Two".to_string(), "2".to_string())
            ]
        );
        assert_eq!(q.fail.as_deref(), Some("us-east"));

        let refused = |q: &str| ExplainQuery::parse(q).unwrap_err().message;
        assert!(refused("host=a").contains("gateway is required"));
        assert!(refused("gateway=web").contains("NAMESPACE/NAME"));
        assert!(refused("gateway=d/w&header=nocolon").contains("NAME:VALUE"));
        assert!(refused("gateway=d/w&header=bad%20name%3Av").contains("header name"));
        assert!(refused("gateway=d/w&port=0").contains("1 to 65535"));
        assert!(refused("gateway=d/w&path=api").contains("must start"));
        assert!(refused("gateway=d/w&method=G%20T").contains("letters only"));
        assert!(refused("gateway=d/w&colour=red").contains("unknown parameter"));
        assert!(refused("gateway=d/w&fail=").contains("empty"));
        let many = (0..=MAX_HEADERS)
            .map(|i| format!("header=h{i}%3Av"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(refused(&format!("gateway=d/w&{many}")).contains("at most"));
        let long = "a".repeat(MAX_VALUE + 1);
        assert!(refused(&format!("gateway=d/w&host={long}")).contains("longer than"));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
