//! Request routing and the REST verbs.
//!
//! Paths: health (`/healthz`, `/livez`, `/readyz`), `/version`, discovery (`/api`, `/apis`, ...),
//! OpenAPI (`/openapi/v2`, `/openapi/v3[/...]`, see [`crate::openapi`]), and resources:
//! `/api/v1/...` or `/apis/{g}/{v}/...` followed by `[namespaces/{ns}/]{plural}[/{name}[/status]]`
//! (the legacy `/watch/` prefix is accepted). Verbs map as GET → get/list/watch, POST → create,
//! PUT → update, PATCH → patch (merge, JSON, strategic, apply), DELETE → delete/deletecollection.
//!
//! POST and PUT bodies (and DeleteOptions bodies) may be JSON (`application/json`, or no
//! Content-Type, as kube-apiserver defaults), YAML (`application/yaml`), or Kubernetes protobuf
//! (`application/vnd.kubernetes.protobuf`, what kubectl's `create secret|configmap|namespace|service`
//! generators send; decoded into the same JSON by [`crate::protobuf`]); PATCH bodies are one of
//! the four patch types ([`crate::patch`]). Any other Content-Type is a 415 before the body is
//! decoded, as on a real server; this also refuses the `text/plain` and form bodies a web page
//! may send cross-site without a preflight (see [`crate::guard`] for the `Host`/`Origin` side).
//! Answers are always JSON, which clients that prefer protobuf accept because client-go decodes
//! by the response Content-Type.
//!
//! Before routing, every request is authenticated ([`crate::auth`]: no credentials, the admin
//! token, a ServiceAccount token, or 401; `Impersonate-User`/`-Group` switch to another identity
//! if the caller may impersonate it) and, unless it is the admin, authorized ([`crate::rbac`],
//! 403 otherwise). Three endpoints exist for that machinery: the ServiceAccount `token`
//! subresource (TokenRequest, `kubectl create token`), `TokenReview` (is this token valid here,
//! and whose is it; answered from the same tokens, never stored) and `SelfSubjectAccessReview`
//! (`kubectl auth can-i`), answered from the same rules.
//!
//! Every handler returns `Result<Response, ApiError>`; errors become `Status` bodies, and a panic
//! inside a handler is caught and answered with a 500 Status instead of dropping the connection.

use crate::apply::server_side_apply;
use crate::auth::{self, Identity};
use crate::discovery;
use crate::error::{ApiError, MAX_BODY_BYTES};
use crate::openapi;
use crate::patch::{self, PatchKind};
use crate::protobuf;
use crate::rbac::{self, RequestAttributes, ResourceAttributes};
use crate::registry::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{Body, Cluster};
use crate::store::{DeleteOutcome, ObjKey, Stored, WriteMode, in_version, to_version};
use crate::table::{self, Format};
use crate::watch::{WatchRequest, WatchStart, watch_body};
use bytes::Bytes;
use futures::FutureExt;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// Default watch duration when the client gives no `timeoutSeconds` (the real server picks
/// 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Entry point for one request.
pub async fn handle(
    cluster: Arc<Cluster>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match AssertUnwindSafe(route(cluster, req)).catch_unwind().await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error_response(&e),
        Err(_) => {
            tracing::error!(%method, %path, "handler panicked");
            error_response(&ApiError::internal(
                "internal error while handling the request",
            ))
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    Ok(resp)
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes)).boxed_unsync()
}

fn response(code: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    response(code, "application/json", full(v.to_string().into_bytes()))
}

/// A stored object in the version `t` asks for: its stored encoding as it is when it is in that
/// version already (the usual case; no copy, no encoding), else a converted copy.
fn object_response(code: u16, t: &Target, obj: Arc<Stored>) -> Response<Body> {
    if in_version(&obj, &t.rt, &t.version) {
        let body = Full::new(obj.json()).boxed_unsync();
        return response(code, "application/json", body);
    }
    json_response(code, &to_version(Stored::unshare(obj), &t.rt, &t.version))
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(secs) = e
        .details
        .as_ref()
        .and_then(|d| d["retryAfterSeconds"].as_u64())
    {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    r
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn header(parts: &Parts, name: http::header::HeaderName) -> &str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `?fieldValidation=` of a write (see [`crate::schema::FieldValidation`]).
fn field_validation(q: &Query) -> Result<crate::schema::FieldValidation, ApiError> {
    crate::schema::FieldValidation::from_query(q.get("fieldValidation").map(String::as_str))
}

fn q_bool(q: &Query, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

async fn route(cluster: Arc<Cluster>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let segs: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let query = parse_query(parts.uri.query());
    let identity = authenticate(&cluster, &parts)?;
    if identity != Identity::Admin {
        let attrs = RequestAttributes::from_request(&parts.method, &s, &query, parts.uri.path());
        let decision = rbac::authorize(&cluster.lock(), &identity, &attrs);
        if let Err(e) = decision {
            cluster.record_denial(rbac::Denial::of(&identity, &attrs));
            return Err(e);
        }
    }
    if let Some(conflict) = cluster.take_status_conflict(&parts.method, &s) {
        return Err(conflict);
    }
    let get_only = |v: Option<Value>| -> Result<Response<Body>, ApiError> {
        if parts.method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        v.map(|v| json_response(200, &v))
            .ok_or_else(ApiError::unknown_resource)
    };
    match s.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => Ok(response(
            200,
            "text/plain; charset=utf-8",
            full(b"ok".to_vec()),
        )),
        ["version"] => get_only(Some(discovery::version_info())),
        ["api"] => get_only(Some(discovery::api_versions(&cluster.addr.to_string()))),
        ["apis"] => get_only(Some(discovery::api_group_list(&cluster.lock().registry))),
        ["apis", g] => get_only(discovery::api_group(&cluster.lock().registry, g)),
        ["api", "v1"] => get_only(discovery::resource_list(&cluster.lock().registry, "", "v1")),
        ["apis", g, v] => get_only(discovery::resource_list(&cluster.lock().registry, g, v)),
        ["openapi", "v2"] => {
            if parts.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            if openapi::v2_wants_protobuf(header(&parts, ACCEPT)) {
                Ok(response(
                    200,
                    openapi::V2_PROTOBUF_RESPONSE,
                    full(openapi::v2_protobuf()),
                ))
            } else {
                get_only(Some(openapi::v2_json(&cluster.lock())))
            }
        }
        ["openapi", "v3"] => get_only(Some(openapi::v3_root(&cluster.lock()))),
        ["openapi", "v3", "api", v] => get_only(openapi::v3_gv(&cluster.lock(), "", v)),
        ["openapi", "v3", "apis", g, v] => get_only(openapi::v3_gv(&cluster.lock(), g, v)),
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] => self_subject_access_review(&cluster, &identity, parts, body).await,
        ["api", "v1", rest @ ..] => resource(cluster, "", "v1", rest, parts, body, query).await,
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            resource(cluster, &g, &v, rest, parts, body, query).await
        }
        _ => Err(ApiError::unknown_resource()),
    }
}

/// Who the request acts as (see [`crate::auth`]): the authenticated identity, or the user it
/// impersonates if it may (403 otherwise); 401 for credentials the cluster does not accept.
fn authenticate(cluster: &Cluster, parts: &Parts) -> Result<Identity, ApiError> {
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| ApiError::unauthorized()))
        .transpose()?;
    let caller = cluster.authenticate(authorization)?;
    let text = |v: &http::HeaderValue| {
        v.to_str()
            .map(str::to_string)
            .map_err(|_| ApiError::bad_request("impersonation headers must be text"))
    };
    let groups = parts
        .headers
        .get_all("impersonate-group")
        .iter()
        .map(text)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(user) = parts
        .headers
        .get("impersonate-user")
        .map(text)
        .transpose()?
    else {
        if !groups.is_empty() {
            return Err(ApiError::bad_request(
                "Impersonate-Group requires Impersonate-User",
            ));
        }
        return Ok(caller);
    };
    let target = Identity::impersonated(&user, groups.clone());
    if caller != Identity::Admin {
        // The caller needs `impersonate` on the user (or ServiceAccount) and on each group.
        let state = cluster.lock();
        let asks = match &target {
            Identity::ServiceAccount { namespace, name } => {
                vec![("serviceaccounts", namespace.clone(), name.clone())]
            }
            _ => vec![("users", String::new(), user.clone())],
        };
        let groups = groups.iter().map(|g| ("groups", String::new(), g.clone()));
        for (resource, namespace, name) in asks.into_iter().chain(groups) {
            let attrs = RequestAttributes::Resource(ResourceAttributes {
                verb: "impersonate".into(),
                resource: resource.into(),
                namespace,
                name,
                ..ResourceAttributes::default()
            });
            rbac::authorize(&state, &caller, &attrs)?;
        }
    }
    Ok(target)
}

/// A parsed resource URL.
struct Target {
    rt: Arc<ResourceType>,
    version: String,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
    /// The `token` subresource of a ServiceAccount (TokenRequest).
    token: bool,
    watch_path: bool,
}

fn parse_target(
    cluster: &Cluster,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target, ApiError> {
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (ns, plural, name, sub) = match rest {
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        ["namespaces", ns, plural] if *plural != "status" && *plural != "finalize" => {
            (Some(*ns), *plural, None, None)
        }
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::unknown_resource()),
    };
    let rt = cluster
        .lock()
        .registry
        .find(group, version, plural)
        .ok_or_else(ApiError::unknown_resource)?;
    if ns.is_some() && !rt.namespaced {
        return Err(ApiError::unknown_resource());
    }
    let (status, token) = match sub {
        None => (false, false),
        Some("status") if rt.status_subresource => (true, false),
        Some("token") if rt.group.is_empty() && rt.plural == "serviceaccounts" => (false, true),
        Some(_) => return Err(ApiError::unknown_resource()),
    };
    if watch_path && name.is_some() && status {
        return Err(ApiError::unknown_resource());
    }
    Ok(Target {
        rt,
        version: version.to_string(),
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
        status,
        token,
        watch_path,
    })
}

async fn resource(
    cluster: Arc<Cluster>,
    group: &str,
    version: &str,
    rest: &[&str],
    parts: Parts,
    body: Incoming,
    q: Query,
) -> Result<Response<Body>, ApiError> {
    let t = parse_target(&cluster, group, version, rest)?;
    if t.rt.create_only {
        return token_review(&cluster, &t, parts, body).await;
    }
    let accept = header(&parts, ACCEPT).to_string();
    let format = Format::from_accept(&accept, q.get("includeObject").map(String::as_str));
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    if !dry_run && parts.method != Method::GET {
        // A write that commits goes to the log: wait while the log writer is far behind.
        cluster.room_to_write().await?;
    }
    match (&parts.method, &t.name) {
        (&Method::POST, Some(name)) if t.token => {
            let body = read_object(&parts, body).await?;
            create_token(&cluster, &t, name, &body)
        }
        _ if t.token => Err(ApiError::method_not_allowed()),
        (&Method::GET, Some(name)) if !t.watch_path => get(&cluster, &t, name, format),
        (&Method::GET, _) if t.watch_path || q_bool(&q, "watch") => watch(cluster, t, &q, format),
        (&Method::GET, None) => list(&cluster, &t, &q, format),
        (&Method::POST, None) => {
            let obj = read_object(&parts, body).await?;
            let fv = field_validation(&q)?;
            let created = cluster.write(|s| {
                s.with_field_validation(fv, |s| {
                    s.create_shared(&t.rt, t.ns.as_deref(), obj, dry_run)
                })
            })?;
            Ok(object_response(201, &t, created))
        }
        (&Method::PUT, Some(name)) => {
            let obj = read_object(&parts, body).await?;
            let mode = if t.status {
                WriteMode::Status
            } else {
                WriteMode::Main
            };
            let fv = field_validation(&q)?;
            let updated = cluster.write(|s| {
                s.with_field_validation(fv, |s| {
                    s.update_shared(&t.rt, t.ns.as_deref(), name, obj, mode, dry_run)
                })
            })?;
            Ok(object_response(200, &t, updated))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchKind::from_content_type(header(&parts, CONTENT_TYPE))?;
            let bytes = read_body(&parts, body).await?;
            patch(&cluster, &t, name, kind, &bytes, &q, dry_run)
        }
        (&Method::DELETE, Some(name)) if !t.status => {
            let opts = read_optional(&parts, body).await?;
            let ns = t.ns.clone().unwrap_or_default();
            let out = cluster.write(|s| s.delete(&t.rt, &ns, name, &opts, dry_run))?;
            Ok(match out {
                DeleteOutcome::Pending(o) => json_response(200, &to_version(o, &t.rt, &t.version)),
                DeleteOutcome::Deleted(o) if t.rt.custom => {
                    json_response(200, &to_version(o, &t.rt, &t.version))
                }
                DeleteOutcome::Deleted(o) => json_response(200, &success_status(&t.rt, &o)),
            })
        }
        (&Method::DELETE, None) => {
            let opts = read_optional(&parts, body).await?;
            delete_collection(&cluster, &t, &q, &opts, dry_run)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The strings of a JSON array field (`spec.audiences`); anything else is none.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A 400 unless the body's `apiVersion`/`kind` (when given) are `authentication.k8s.io/v1`
/// `kind`, as the real server's decoder answers for a body of another type.
fn expect_kind(body: &Value, kind: &str) -> Result<(), ApiError> {
    let api_version = body["apiVersion"]
        .as_str()
        .unwrap_or("authentication.k8s.io/v1");
    if api_version != "authentication.k8s.io/v1" {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version (authentication.k8s.io/v1)"
        )));
    }
    let sent = body["kind"].as_str().unwrap_or(kind);
    if sent != kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({sent}) does not match the expected kind ({kind})"
        )));
    }
    Ok(())
}

/// TokenRequest: mints a token for the ServiceAccount `name` and answers with the TokenRequest,
/// its `status` carrying the token and its expiry.
fn create_token(
    cluster: &Cluster,
    t: &Target,
    name: &str,
    request: &Value,
) -> Result<Response<Body>, ApiError> {
    let kind = request["kind"].as_str().unwrap_or("TokenRequest");
    if kind != "TokenRequest" {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind (TokenRequest)"
        )));
    }
    let spec = &request["spec"];
    let (seconds, expires) = auth::expiry_from_request(name, spec["expirationSeconds"].as_i64())?;
    let ns = t.ns.as_deref().unwrap_or("");
    let mut terms = auth::TokenTerms::api_token(expires);
    let audiences = strings(&spec["audiences"]);
    if !audiences.is_empty() {
        terms.audiences = audiences;
    }
    terms.bound_ref = spec.get("boundObjectRef").filter(|r| !r.is_null()).cloned();
    let issued = cluster.mint_token(ns, name, &terms)?;
    Ok(json_response(
        201,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::util::now_rfc3339()},
            "spec": {
                "audiences": terms.audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": terms.bound_ref.unwrap_or(Value::Null),
            },
            "status": {"token": issued.token, "expirationTimestamp": issued.expiration_timestamp},
        }),
    ))
}

/// TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`): whether `spec.token` is
/// valid on this cluster for one of `spec.audiences` (none: the API server's own audience), and
/// whose it is. As on a real server the review is answered `201` either way, with
/// `status.authenticated` and `status.user` or with `status.error`, and nothing is stored; an
/// empty token is a 400. Any other method on the collection is a 405 (the resource has no
/// get, list or watch), any path below it a 404.
async fn token_review(
    cluster: &Cluster,
    t: &Target,
    parts: Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    if t.name.is_some() || t.watch_path {
        return Err(ApiError::unknown_resource());
    }
    if parts.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let mut review = read_object(&parts, body).await?;
    expect_kind(&review, "TokenReview")?;
    let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let audiences = strings(&review["spec"]["audiences"]);
    // Serialized as the real server's Go types are: `authenticated` and `error` only when set,
    // `user` always (an empty object when the token is not valid).
    let status = match cluster.review_token(&token, &audiences) {
        Ok(r) => {
            let mut user = json!({
                "username": r.identity.user(),
                "groups": r.identity.groups(),
            });
            if !r.uid.is_empty() {
                user["uid"] = json!(r.uid);
            }
            if !r.extra.is_empty() {
                user["extra"] = json!(r.extra);
            }
            json!({"authenticated": true, "user": user, "audiences": r.audiences})
        }
        Err(why) => json!({"user": {}, "error": why}),
    };
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    if let Some(meta) = review["metadata"].as_object_mut() {
        meta.entry("creationTimestamp").or_insert(Value::Null);
    }
    review["status"] = status;
    Ok(json_response(201, &review))
}

/// SelfSubjectAccessReview (`kubectl auth can-i`): whether the caller may do what the spec
/// describes, decided as a real request of theirs would be.
async fn self_subject_access_review(
    cluster: &Cluster,
    identity: &Identity,
    parts: Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let mut review = read_object(&parts, body).await?;
    let spec = &review["spec"];
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let attrs = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), None) => RequestAttributes::Resource(ResourceAttributes {
            verb: text(r, "verb"),
            group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
        }),
        (None, Some(n)) => RequestAttributes::NonResource {
            verb: text(n, "verb"),
            path: text(n, "path"),
        },
        _ => {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                "SelfSubjectAccessReview.authorization.k8s.io",
                "",
                "spec.resourceAttributes",
                "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    let status = match rbac::decide(&cluster.lock(), identity, &attrs) {
        Ok(rbac::Allowed(reason)) if reason.is_empty() => json!({"allowed": true}),
        Ok(rbac::Allowed(reason)) => json!({"allowed": true, "reason": reason}),
        Err(rbac::Denied(reason)) if reason.is_empty() => json!({"allowed": false}),
        Err(rbac::Denied(reason)) => json!({"allowed": false, "reason": reason}),
    };
    review["status"] = status;
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    Ok(json_response(201, &review))
}

fn success_status(rt: &ResourceType, obj: &Value) -> Value {
    let mut details = json!({
        "name": obj["metadata"]["name"],
        "kind": rt.plural,
        "uid": obj["metadata"]["uid"],
    });
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// Bodies past the limit are still read (and discarded) up to this size, so that the client,
/// which is usually still sending, sees the 413 instead of a broken pipe.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads and discards a body, up to [`DRAIN_LIMIT`].
async fn drain(body: &mut Incoming) -> Result<(), hyper::Error> {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        seen += frame?.data_ref().map_or(0, Bytes::len);
        if seen > DRAIN_LIMIT {
            break;
        }
    }
    Ok(())
}

async fn read_body(parts: &Parts, mut body: Incoming) -> Result<Bytes, ApiError> {
    let declared = header(parts, CONTENT_LENGTH).parse::<usize>().ok();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let mut too_large = declared.is_some_and(|l| l > MAX_BODY_BYTES);
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("error reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > MAX_BODY_BYTES {
            too_large = true;
            buf = Vec::new();
        }
        if seen > DRAIN_LIMIT {
            break;
        }
        if !too_large {
            buf.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(ApiError::too_large());
    }
    Ok(Bytes::from(buf))
}

/// What a POST, PUT or DELETE body is written in, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    /// `application/json`, or no Content-Type at all: kube-apiserver reads a body without one
    /// with its first serializer, JSON.
    Json,
    /// `application/yaml`.
    Yaml,
    /// `application/vnd.kubernetes.protobuf` (see [`protobuf`]).
    Protobuf,
}

/// The body media types a real API server reads for create, update and delete, in its order.
const BODY_MEDIA_TYPES: &str =
    "application/json, application/yaml, application/vnd.kubernetes.protobuf";

impl BodyFormat {
    /// The format a Content-Type names, or 415 for any other (`text/plain`, form encodings, a
    /// YAML or protobuf flavour the real server does not read). Parameters such as `charset`
    /// are ignored, as the real server ignores them. Refusing everything else is also what keeps
    /// a web page from writing here: the only types a browser may POST cross-site without asking
    /// first are `text/plain` and the two form encodings.
    fn of(content_type: &str) -> Result<BodyFormat, ApiError> {
        if content_type.trim().is_empty() {
            return Ok(BodyFormat::Json);
        }
        let base = content_type.split(';').next().unwrap_or("").trim();
        if base.eq_ignore_ascii_case("application/json") {
            Ok(BodyFormat::Json)
        } else if base.eq_ignore_ascii_case("application/yaml") {
            Ok(BodyFormat::Yaml)
        } else if protobuf::is_protobuf(base) {
            Ok(BodyFormat::Protobuf)
        } else {
            Err(ApiError::unsupported_media_type(
                content_type,
                BODY_MEDIA_TYPES,
            ))
        }
    }
}

/// The request's Content-Type ("" when there is none); one that is not text is a 415.
fn content_type(parts: &Parts) -> Result<&str, ApiError> {
    match parts.headers.get(CONTENT_TYPE) {
        None => Ok(""),
        Some(v) => v.to_str().map_err(|_| {
            ApiError::unsupported_media_type(
                &String::from_utf8_lossy(v.as_bytes()),
                BODY_MEDIA_TYPES,
            )
        }),
    }
}

/// The body's format, checked before the body is read. A refused body is still drained (up
/// to [`DRAIN_LIMIT`]) so that a client that is still sending sees the 415, not a broken pipe.
async fn checked_format(parts: &Parts, body: &mut Incoming) -> Result<BodyFormat, ApiError> {
    match content_type(parts).and_then(BodyFormat::of) {
        Ok(f) => Ok(f),
        Err(e) => {
            let _ = drain(body).await;
            Err(e)
        }
    }
}

/// A POST or PUT body: Content-Type checked, then read and decoded into one object.
async fn read_object(parts: &Parts, mut body: Incoming) -> Result<Value, ApiError> {
    let format = checked_format(parts, &mut body).await?;
    decode_object(&read_body(parts, body).await?, format)
}

/// A DELETE body (DeleteOptions), which may be empty; a non-empty one is held to the same
/// media types as a create.
async fn read_optional(parts: &Parts, mut body: Incoming) -> Result<Value, ApiError> {
    let format = checked_format(parts, &mut body).await?;
    let bytes = read_body(parts, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    decode_object(&bytes, format)
}

/// Decodes a JSON, YAML or Kubernetes protobuf document.
fn decode_value(bytes: &[u8], format: BodyFormat) -> Result<Value, ApiError> {
    if format == BodyFormat::Protobuf {
        // kubectl's imperative `create secret|configmap|namespace|service` send built-in kinds
        // this way; the object is stored as the JSON it would have sent otherwise.
        return protobuf::decode(bytes);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let yaml = format == BodyFormat::Yaml;
    let json_err = if yaml {
        None
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => return Ok(v),
            Err(e) => Some(e),
        }
    };
    match (json_err, yaml) {
        (Some(e), false) => Err(ApiError::bad_request(format!(
            "couldn't get version/kind; json parse error: {e}"
        ))),
        _ => serde_yaml::from_slice::<Value>(bytes)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}"))),
    }
}

fn decode_object(bytes: &[u8], format: BodyFormat) -> Result<Value, ApiError> {
    let v = decode_value(bytes, format)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a single JSON/YAML object",
        ));
    }
    Ok(v)
}

fn get(
    cluster: &Cluster,
    t: &Target,
    name: &str,
    format: Format,
) -> Result<Response<Body>, ApiError> {
    let obj = cluster
        .lock()
        .get_shared(&t.rt, t.ns.as_deref().unwrap_or(""), name)
        .ok_or_else(|| ApiError::not_found(&t.rt.group, &t.rt.plural, name))?;
    if format == Format::Object {
        return Ok(object_response(200, t, obj));
    }
    let obj = to_version(Stored::unshare(obj), &t.rt, &t.version);
    Ok(match format {
        Format::Metadata => json_response(200, &table::partial_metadata(&obj)),
        Format::Table(include) => {
            let rv = obj["metadata"]["resourceVersion"].clone();
            json_response(
                200,
                &table::table(
                    &t.rt,
                    &t.version,
                    &[obj],
                    json!({"resourceVersion": rv}),
                    include,
                ),
            )
        }
        Format::Object => json_response(200, &obj),
    })
}

fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    ))
}

fn encode_continue(key: &ObjKey) -> String {
    let raw = format!("{}\u{0}{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<ObjKey, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ns, name) = s.split_once('\u{0}').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

fn list(
    cluster: &Cluster,
    t: &Target,
    q: &Query,
    format: Format,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(q)?;
    let limit: usize = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
    };
    let after = match q.get("continue").map(String::as_str) {
        None | Some("") => None,
        Some(c) => Some(decode_continue(c)?),
    };
    let (items, more, remaining, rv) = {
        let state = cluster.lock();
        let mut items = Vec::new();
        let mut next_key = None;
        let mut remaining = 0usize;
        // Pointers only under the lock: the objects are encoded (or copied to convert) after.
        for (key, obj) in state.list_shared(&t.rt, t.ns.as_deref(), after.as_ref()) {
            if !labels.matches(obj) || !fields.matches(obj) {
                continue;
            }
            if limit > 0 && items.len() >= limit {
                remaining += 1;
                continue;
            }
            items.push(Arc::clone(obj));
            next_key = Some(key.clone());
        }
        let more = if remaining > 0 { next_key } else { None };
        (items, more, remaining, state.rv)
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(k) = more {
        meta["continue"] = json!(encode_continue(&k));
        meta["remainingItemCount"] = json!(remaining);
    }
    if format == Format::Object {
        return Ok(object_list(t, &meta, &items));
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|o| to_version(o.value().clone(), &t.rt, &t.version))
        .collect();
    Ok(match format {
        Format::Table(include) => {
            json_response(200, &table::table(&t.rt, &t.version, &items, meta, include))
        }
        Format::Metadata => json_response(
            200,
            &json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": items.iter().map(table::partial_metadata).collect::<Vec<_>>(),
            }),
        ),
        Format::Object => json_response(
            200,
            &json!({
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version(&t.version),
                "metadata": meta,
                "items": items,
            }),
        ),
    })
}

/// A `<Kind>List` of `items`, built from the stored objects' encodings: one already in the
/// asked version (the usual case) is copied in as it is, without encoding it again or the copy
/// converting it takes.
fn object_list(t: &Target, meta: &Value, items: &[Arc<Stored>]) -> Response<Body> {
    let api_version = t.rt.api_version(&t.version);
    let head = json!({
        "kind": t.rt.list_kind,
        "apiVersion": api_version,
        "metadata": meta,
    });
    let versioned = |o: &Value| {
        o.get("kind").and_then(Value::as_str) == Some(t.rt.kind.as_str())
            && o.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str())
    };
    let mut out = head.to_string().into_bytes();
    // One allocation for the whole body (the encodings are made here if nothing made them yet).
    let sizes: usize = items
        .iter()
        .filter(|o| versioned(o))
        .map(|o| o.json().len() + 1)
        .sum();
    out.reserve(sizes + 16);
    // `{...}` of the head without its closing brace, then the items.
    out.pop();
    out.extend_from_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if versioned(o) {
            out.extend_from_slice(&o.json());
        } else {
            // Encoding a `Value` into a Vec cannot fail (its map keys are strings).
            let converted = to_version(o.value().clone(), &t.rt, &t.version);
            let _ = serde_json::to_writer(&mut out, &converted);
        }
    }
    out.extend_from_slice(b"]}");
    response(200, "application/json", full(out))
}

fn watch(
    cluster: Arc<Cluster>,
    t: Target,
    q: &Query,
    format: Format,
) -> Result<Response<Body>, ApiError> {
    let (mut labels, mut fields) = selectors(q)?;
    if let Some(name) = &t.name {
        // `/watch/.../{name}` is a watch with a name field selector.
        fields = FieldSelector::parse(&format!("metadata.name={name}"))?;
        labels = LabelSelector::default();
    }
    let timeout = match q.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => DEFAULT_WATCH_TIMEOUT,
        Some(s) => Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s}")))?,
        ),
    };
    let start =
        if q_bool(q, "sendInitialEvents") {
            WatchStart::InitialEvents
        } else {
            match q.get("resourceVersion").map(String::as_str) {
                None | Some("") | Some("0") => WatchStart::Current,
                Some(rv) => WatchStart::From(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv}"))
                })?),
            }
        };
    let req = WatchRequest {
        rt: t.rt,
        version: t.version,
        namespace: t.ns,
        labels,
        fields,
        start,
        bookmarks: q_bool(q, "allowWatchBookmarks"),
        timeout,
        format,
    };
    Ok(response(200, "application/json", watch_body(cluster, req)))
}

fn patch(
    cluster: &Cluster,
    t: &Target,
    name: &str,
    kind: PatchKind,
    bytes: &[u8],
    q: &Query,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let body = match kind {
        PatchKind::Apply => decode_value(bytes, BodyFormat::Yaml)?,
        _ => decode_value(bytes, BodyFormat::Json)?,
    };
    let mode = if t.status {
        WriteMode::Status
    } else {
        WriteMode::Main
    };
    let ns = t.ns.as_deref();
    let manager = q.get("fieldManager").map(String::as_str).unwrap_or("");
    if kind == PatchKind::Apply && manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml requests must set fieldManager",
        ));
    }
    let force = q_bool(q, "force");
    let fv = field_validation(q)?;
    let (code, obj) = cluster.write(|s| s.with_field_validation(fv, |s| -> Result<(u16, Value), ApiError> {
        let live = s.get(&t.rt, ns.unwrap_or(""), name).cloned();
        match kind {
            PatchKind::Apply => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("the apply body must be a single object"));
                }
                let body_name = body["metadata"]["name"].as_str().unwrap_or("");
                if body_name != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({name})"
                    )));
                }
                let result = server_side_apply(&t.rt, live.as_ref(), &body, manager, force, mode)?;
                match live {
                    None if mode == WriteMode::Status => {
                        Err(ApiError::not_found(&t.rt.group, &t.rt.plural, name))
                    }
                    None => Ok((201, s.create(&t.rt, ns, result, dry_run)?)),
                    Some(_) => Ok((200, s.update(&t.rt, ns, name, result, mode, dry_run)?)),
                }
            }
            _ => {
                let live = live.ok_or_else(|| ApiError::not_found(&t.rt.group, &t.rt.plural, name))?;
                let mut doc = to_version(live, &t.rt, &t.version);
                match kind {
                    PatchKind::Merge => patch::merge_patch(&mut doc, &body),
                    PatchKind::Json => patch::json_patch(&mut doc, &body)?,
                    PatchKind::Strategic => patch::strategic_merge(&mut doc, &body, &t.rt),
                    PatchKind::Apply => {}
                }
                Ok((200, s.update(&t.rt, ns, name, doc, mode, dry_run)?))
            }
        }
    }))?;
    Ok(json_response(code, &to_version(obj, &t.rt, &t.version)))
}

fn delete_collection(
    cluster: &Cluster,
    t: &Target,
    q: &Query,
    opts: &Value,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    if t.status {
        return Err(ApiError::method_not_allowed());
    }
    let (labels, fields) = selectors(q)?;
    let items = cluster.write(|s| -> Result<Vec<Value>, ApiError> {
        let keys: Vec<ObjKey> = s
            .list(&t.rt, t.ns.as_deref(), None)
            .filter(|(_, o)| labels.matches(o) && fields.matches(o))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for (ns, name) in keys {
            // An object can vanish mid-collection (a namespace taking its contents with it).
            match s.delete(&t.rt, &ns, &name, opts, dry_run) {
                Ok(DeleteOutcome::Deleted(o) | DeleteOutcome::Pending(o)) => out.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })?;
    let rv = cluster.lock().rv;
    let items: Vec<Value> = items
        .into_iter()
        .map(|o| to_version(o, &t.rt, &t.version))
        .collect();
    Ok(json_response(
        200,
        &json!({
            "kind": t.rt.list_kind,
            "apiVersion": t.rt.api_version(&t.version),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn continue_tokens_roundtrip_and_reject_garbage() {
        let k = ("ns-1".to_string(), "name.x".to_string());
        assert_eq!(decode_continue(&encode_continue(&k)).unwrap(), k);
        assert_eq!(decode_continue("zz").unwrap_err().code, 400);
        assert_eq!(decode_continue("abc").unwrap_err().code, 400);
    }

    #[test]
    fn body_decoding() {
        let json = BodyFormat::Json;
        assert!(decode_object(b"{\"a\":1}", json).is_ok());
        assert!(decode_object(b"a: 1\n", BodyFormat::Yaml).is_ok());
        assert_eq!(decode_object(b"{nope", json).unwrap_err().code, 400);
        assert_eq!(decode_object(b"[1]", json).unwrap_err().code, 400);
        assert_eq!(decode_object(b"", json).unwrap_err().code, 400);
        // Kubernetes protobuf without the magic prefix is malformed (400).
        assert_eq!(
            decode_object(b"x", BodyFormat::Protobuf).unwrap_err().code,
            400
        );
        assert_eq!(
            decode_object(b"a: [", BodyFormat::Yaml).unwrap_err().code,
            400
        );
    }

    #[test]
    fn body_media_types_are_the_real_servers() {
        for (ct, want) in [
            ("", BodyFormat::Json),
            ("application/json", BodyFormat::Json),
            ("Application/JSON; charset=utf-8", BodyFormat::Json),
            ("application/yaml", BodyFormat::Yaml),
            ("application/yaml;charset=UTF-8", BodyFormat::Yaml),
            ("application/vnd.kubernetes.protobuf", BodyFormat::Protobuf),
        ] {
            assert_eq!(BodyFormat::of(ct).unwrap(), want, "{ct}");
        }
        for ct in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/x-yaml",
            "text/yaml",
            "application/x-protobuf",
            "application/json-seq",
            "*/*",
            "; charset=utf-8",
            "application/jsonx",
        ] {
            let e = BodyFormat::of(ct).unwrap_err();
            assert_eq!((e.code, e.reason), (415, "UnsupportedMediaType"), "{ct}");
            assert!(e.message.contains(BODY_MEDIA_TYPES), "{}", e.message);
        }
    }
}
