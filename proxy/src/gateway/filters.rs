//! Request-side HTTPRoute filters of the Gateway proxy: redirects (answered here), header edits,
//! URL rewrites and mirrors. Response header edits run in the [`Forwarder`]'s
//! `response_filter`.
//!
//! [`Forwarder`]: super::Forwarder

use std::net::SocketAddr;

use meridian_model::cors;
use meridian_model::filters::{self, RedirectContext};
use meridian_model::router::RouteMatch;
use meridian_model::snapshot::{
    BackendProtocol, BackendTarget, Cors, Filter, Protocol, RequestMirror, RequestRedirect,
    UrlRewrite,
};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::route::local_addr;
use super::{BACKEND_HEADER, Downstream};
use crate::drain::GatewayEntry;
use crate::endpoints;
use crate::headers::ReqEdit;
use crate::mirror;
use crate::state::Shared;

/// The Host header, or the `:authority` of an HTTP/2 request.
pub(super) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Writes a redirect for `r` (of the rule or backend `m` matched) and ends the request.
pub(super) async fn redirect(
    session: &mut impl Downstream,
    r: &RequestRedirect,
    m: &RouteMatch,
) -> Result<bool> {
    let local = local_addr(session);
    let req = session.req_header();
    let host = request_host(req)
        .map(meridian_model::hostname::normalize_host)
        .or_else(|| local.map(|l| l.ip().to_string().into()))
        .unwrap_or_default();
    let scheme = match m.listener.protocol {
        Protocol::Http => "http",
        // A passthrough listener never reaches request filters; named for completeness.
        Protocol::Https | Protocol::Tls => "https",
    };
    let path = req.uri.path().to_string();
    let query = req.uri.query().map(str::to_string);
    let (status, location) = filters::redirect(
        r,
        &RedirectContext {
            scheme,
            host: &host,
            listener_port: m.listener.port,
            path: &path,
            query: query.as_deref(),
            matched_prefix: m.matched_prefix.as_deref(),
        },
    );
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("location", location)?;
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp)).await?;
    Ok(true)
}

/// The rule's CORS filter, if it has one.
pub(super) fn rule_cors(filters: &[Filter]) -> Option<&Cors> {
    filters.iter().find_map(|f| match f {
        Filter::Cors(c) => Some(c),
        _ => None,
    })
}

/// What a CORS rule does with a request before it goes upstream: a preflight is answered here
/// (204; the allow headers only when the origin is allowed), an actual request's `Origin` is
/// kept for the response (`Ok(Some(origin))`).
pub(super) async fn cors_request(
    session: &mut impl Downstream,
    c: &Cors,
) -> Result<std::result::Result<Option<String>, ()>> {
    let req = session.req_header();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let origin = header("origin");
    let request_method = header(cors::REQUEST_METHOD);
    if !cors::is_preflight(
        req.method.as_str(),
        origin.as_deref(),
        request_method.as_deref(),
    ) {
        return Ok(Ok(origin));
    }
    let (Some(origin), Some(method)) = (origin, request_method) else {
        return Ok(Ok(None));
    };
    let headers = cors::preflight_headers(
        c,
        &origin,
        &method,
        header(cors::REQUEST_HEADERS).as_deref(),
    );
    let mut resp = ResponseHeader::build(204, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header("vary", "Origin")?;
    // A 204 has no body and carries no Content-Length.
    session.write_response_header(Box::new(resp)).await?;
    Ok(Err(()))
}

/// Adds a CORS rule's headers to an actual response: `Vary: Origin` always, the allow and
/// expose headers when the request's `origin` is allowed (replacing the backend's own).
pub(super) fn cors_response(resp: &mut ResponseHeader, c: &Cors, origin: Option<&str>) {
    let vary = match resp.headers.get("vary").and_then(|v| v.to_str().ok()) {
        Some(v)
            if v.split(',')
                .any(|x| x.trim().eq_ignore_ascii_case("origin")) =>
        {
            None
        }
        Some(v) if !v.trim().is_empty() => Some(format!("{v}, Origin")),
        _ => Some("Origin".to_string()),
    };
    if let Some(v) = vary
        && let Err(e) = resp.insert_header("vary", v)
    {
        tracing::debug!(error = %e, "vary header not added");
    }
    let Some(origin) = origin else {
        return;
    };
    let names: Vec<String> = resp
        .headers
        .keys()
        .map(|k| k.as_str().to_string())
        .collect();
    for (name, value) in cors::actual_headers(c, origin, names.iter().map(String::as_str)) {
        if let Err(e) = resp.insert_header(name, value) {
            tracing::debug!(error = %e, header = name, "CORS header not added");
        }
    }
}

/// Applies one request-side filter (not redirects). `original_path` is the path the router
/// matched, which prefix rewrites are relative to.
pub(super) fn apply_request_filter(
    shared: &Shared,
    f: &Filter,
    req: &mut RequestHeader,
    original_path: &str,
    matched_prefix: Option<&str>,
    gateway: Option<&GatewayEntry>,
) {
    match f {
        Filter::RequestHeaderModifier(m) => {
            filters::apply_header_modifier(m, &mut ReqEdit(req));
        }
        Filter::UrlRewrite(r) => rewrite(req, r, original_path, matched_prefix),
        Filter::RequestMirror(m) => mirror(shared, req, m, gateway),
        // Response edits run in `response_filter`; redirects and CORS preflights are handled by
        // the caller, CORS response headers in `response_filter`.
        Filter::ResponseHeaderModifier(_) | Filter::RequestRedirect(_) | Filter::Cors(_) => {}
    }
}

fn rewrite(req: &mut RequestHeader, r: &UrlRewrite, original_path: &str, prefix: Option<&str>) {
    if let Some(host) = &r.hostname
        && let Err(e) = req.insert_header(http::header::HOST, host.as_str())
    {
        tracing::debug!(error = %e, "host rewrite skipped");
    }
    if let Some(p) = &r.path {
        // Both path modifiers keep the request's query.
        let new_path = filters::rewrite_path(p, original_path, prefix);
        let pq = match req.uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = req.uri.authority().cloned();
        match pq.parse::<http::uri::PathAndQuery>() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(e) => {
                tracing::debug!(error = %e, "path rewrite produced an invalid path; skipped");
                return;
            }
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => req.set_uri(uri),
            Err(e) => tracing::debug!(error = %e, "path rewrite skipped"),
        }
    }
}

/// Sends a copy of the request (head only) to an endpoint of the mirror backend, for
/// `m.percent` of requests.
fn mirror(shared: &Shared, req: &RequestHeader, m: &RequestMirror, gateway: Option<&GatewayEntry>) {
    if m.percent <= 0.0 || (m.percent < 100.0 && rand::random::<f64>() * 100.0 >= m.percent) {
        return;
    }
    let BackendTarget::Endpoints { protocol, .. } = &m.backend.target else {
        return;
    };
    let Some((target, east_west)) = mirror_endpoint(shared, m, gateway) else {
        return;
    };
    let Some(headers) = mirror_headers(req, &m.backend.name, east_west) else {
        return;
    };
    let path_and_query = req
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    shared.mirror.send(
        target,
        *protocol == BackendProtocol::H2c,
        mirror::Copy {
            method: req.method.clone(),
            path_and_query,
            headers,
        },
    );
}

/// The endpoint a mirror copy goes to (same choice as for a request, nothing tried yet) and
/// whether it is a remote proxy's east-west listener.
fn mirror_endpoint(
    shared: &Shared,
    m: &RequestMirror,
    gateway: Option<&GatewayEntry>,
) -> Option<(SocketAddr, bool)> {
    let BackendTarget::Endpoints {
        endpoints,
        failover,
        ..
    } = &m.backend.target
    else {
        return None;
    };
    let drain = gateway.and_then(|g| g.backend_drain(&m.backend.name));
    endpoints::choose(
        endpoints,
        &m.backend.name,
        endpoints::Vantage {
            me: &shared.locality,
            nearest: &shared.rtt.order(),
        },
        failover.as_ref(),
        &shared.ejections,
        &[],
        drain.as_deref(),
    )
    .ok()
    .and_then(|i| endpoints.get(i))
    .map(|e| (SocketAddr::new(e.address, e.port), e.east_west))
}

/// The headers of a mirror copy: the request's, naming `backend` for an east-west hop and with
/// a Host. `None` when the backend name cannot be sent.
fn mirror_headers(req: &RequestHeader, backend: &str, east_west: bool) -> Option<http::HeaderMap> {
    let mut headers = req.headers.clone();
    headers.remove(BACKEND_HEADER);
    if east_west {
        // A copy the remote proxy could not place is not worth sending.
        let v = http::HeaderValue::from_str(backend).ok()?;
        headers.insert(BACKEND_HEADER, v);
    }
    // An HTTP/2 request has no Host header; the copy needs one.
    if !headers.contains_key(http::header::HOST)
        && let Some(a) = req.uri.authority()
        && let Ok(v) = http::HeaderValue::from_str(a.as_str())
    {
        headers.insert(http::header::HOST, v);
    }
    Some(headers)
}
