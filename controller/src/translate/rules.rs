//! Route rules → snapshot rules, with every API default applied. HTTPRoute rules as they are;
//! GRPCRoute rules after module `grpc` converted them to the same shapes.
//!
//! Defaults (the CRDs we install carry none): omitted `rules` ⇒ one rule matching `PathPrefix /`;
//! a match without `path` ⇒ `PathPrefix /`; path type `PathPrefix`, value `/`; header and query
//! match type `Exact`; redirect status 302; backendRef group `""` and kind `Service`, namespace
//! the route's; weight 1; mirror 100 %; a `0s` timeout disables the timeout.
//!
//! What the upstream CEL rules would reject is rejected here, per rule:
//! * a value the proxy cannot serve (bad path, header name, regex, status code, weight, timeout,
//!   `backendRequest` > `request`, …) drops the rule with **UnsupportedValue**;
//! * a header filter that edits a hop-by-hop or framing header (`connection`, `content-length`,
//!   `host`, … — [`meridian_model::headers::FILTER_RESERVED`]) drops the rule with
//!   **UnsupportedValue** naming the header;
//! * `RequestRedirect` together with `URLRewrite` or with backendRefs drops the rule with
//!   **IncompatibleFilters**;
//! * as a last line, every kept rule is compiled by the proxy's own router
//!   ([`meridian_model::Router::compile`]), so a snapshot is never refused because of one route.
//!
//! The experimental rule fields `retry` and `sessionPersistence` (read beside the standard type,
//! `crate::world::HttpRouteWithExtras`) and the `CORS` filter are translated with their
//! defaults (retry attempts 2, session name `meridian-session`, CORS `maxAge` 5); their invalid
//! values drop the rule with **UnsupportedValue** like any other.
//!
//! Filters the data plane does not implement (`ExtensionRef`, and `RequestRedirect` /
//! `URLRewrite` / `CORS` inside a backendRef) must not be skipped (spec: requests they would have handled
//! get an error), so the rule — or that backend — is kept with an invalid target: its requests
//! get 500, and the route reports `PartiallyInvalid`.
//!
//! Invalid backends (see [`super::backend`]) keep their weight with `BackendTarget::Invalid`, so
//! their share of requests gets 500 while the rule and the route stay Accepted.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use gateway_api::httproutes::*;
use meridian_crds::rule_extras::{RuleExtras, RuleRetry, RuleSessionPersistence};
use meridian_model::Router;
use meridian_model::snapshot::{
    Backend, BackendTarget, BackendTls, Cors, Filter, Gateway, HeaderMatch, HeaderModifier,
    HeaderValue, Listener, Match, PathMatch, PathModifier, Protocol, QueryParamMatch,
    RequestMirror, RequestRedirect, Retry, Route, RouteKind, Rule, SessionKind, SessionPersistence,
    Snapshot, Timeouts, UrlRewrite, ValueMatchType,
};

use super::backend::{self, BackendRef};
use super::{Ctx, Problem};

/// The outcome of translating a route's rules (once per route per cluster).
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteRules {
    /// Kept rules, in spec order.
    pub rules: Vec<Rule>,
    /// Number of rules in the spec (after defaulting).
    pub total: usize,
    /// Dropped rules: index and why.
    pub dropped: Vec<(usize, Problem)>,
    /// Unresolvable references of kept rules, in order (the first gives the ResolvedRefs reason).
    pub unresolved: Vec<Problem>,
    /// Kept rules or backends that answer 500 because of an unsupported filter.
    pub degraded: Vec<String>,
    /// Backends' endpoints the address policy left out (`backend: address (why), …`).
    pub refused: Vec<String>,
}

fn unsupported(message: impl Into<String>) -> Problem {
    Problem::new("UnsupportedValue", message)
}

/// Translates the rules of a route of kind `kind` in `namespace`. `invalid[i]`, when given,
/// drops rule `i` before translation (what a GRPCRoute's conversion found, module `grpc`).
/// `extras[i]`, when given, are rule `i`'s experimental fields (HTTPRoute `retry` and
/// `sessionPersistence`, or why they could not be read).
pub(crate) fn translate_rules(
    ctx: &Ctx<'_>,
    kind: RouteKind,
    namespace: &str,
    rules: Option<&[HttpRouteRules]>,
    invalid: &[Option<Problem>],
    extras: &[Result<RuleExtras, String>],
    cache: &mut backend::Cache,
) -> RouteRules {
    cache.referrer = kind;
    let default_rule = [HttpRouteRules::default()];
    let rules: &[HttpRouteRules] = match rules {
        Some(r) => r,
        None => &default_rule,
    };
    let mut out = RouteRules {
        total: rules.len(),
        ..RouteRules::default()
    };
    for (idx, rule) in rules.iter().enumerate() {
        if let Some(Some(p)) = invalid.get(idx) {
            out.dropped.push((idx, p.clone()));
            continue;
        }
        let mut unresolved = Vec::new();
        let mut degraded = Vec::new();
        let translated = translate_rule(
            ctx,
            namespace,
            idx,
            rule,
            cache,
            &mut unresolved,
            &mut degraded,
        )
        .and_then(|mut r| {
            match extras.get(idx) {
                Some(Ok(x)) => {
                    r.retry = x.retry.as_ref().map(translate_retry).transpose()?;
                    r.session_persistence = x
                        .session_persistence
                        .as_ref()
                        .map(translate_session_persistence)
                        .transpose()?;
                    check_with_proxy(&r)?;
                }
                Some(Err(why)) => return Err(unsupported(why.clone())),
                None => {}
            }
            Ok(r)
        });
        match translated {
            Ok(r) => {
                out.rules.push(r);
                out.unresolved.extend(unresolved);
                out.degraded.extend(degraded);
            }
            Err(p) => out.dropped.push((idx, p)),
        }
    }
    let mut refused = std::mem::take(&mut cache.refused);
    refused.sort();
    refused.dedup();
    out.refused = refused;
    out
}

fn translate_rule(
    ctx: &Ctx<'_>,
    namespace: &str,
    idx: usize,
    rule: &HttpRouteRules,
    cache: &mut backend::Cache,
    unresolved: &mut Vec<Problem>,
    degraded: &mut Vec<String>,
) -> Result<Rule, Problem> {
    let HttpRouteRules {
        backend_refs,
        filters,
        matches,
        name,
        timeouts,
    } = rule;
    let matches = matches
        .iter()
        .flatten()
        .map(translate_match)
        .collect::<Result<Vec<_>, _>>()?;
    let timeouts = translate_timeouts(timeouts.as_ref())?;

    let mut out_filters = Vec::new();
    let mut unsupported_filter = None;
    for f in filters.iter().flatten() {
        match translate_filter(ctx, namespace, f, cache, unresolved)? {
            Translated::Filter(f) => out_filters.push(f),
            Translated::Unsupported(what) => unsupported_filter = Some(what),
        }
    }
    check_filter_set(&out_filters)?;
    let has_redirect = out_filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    let backend_refs = backend_refs.as_deref().unwrap_or_default();
    if has_redirect && !backend_refs.is_empty() {
        return Err(Problem::new(
            "IncompatibleFilters",
            "RequestRedirect cannot be combined with backendRefs",
        ));
    }

    let mut backends = Vec::with_capacity(backend_refs.len());
    for b in backend_refs {
        backends.push(translate_backend(
            ctx, namespace, b, cache, unresolved, degraded, idx,
        )?);
    }

    let mut rule = Rule {
        name: name.clone(),
        matches,
        filters: out_filters,
        backends,
        timeouts,
        retry: None,
        session_persistence: None,
    };
    if let Some(what) = unsupported_filter {
        // The filter must not be skipped: every request of this rule gets 500 instead.
        degraded.push(format!(
            "Dropped Rule {idx}: filter {what} is not supported; its requests get 500"
        ));
        rule.filters.clear();
        rule.backends = vec![Backend {
            name: format!("rule {idx} ({what})"),
            weight: 1,
            filters: Vec::new(),
            target: BackendTarget::Invalid {
                reason: "UnsupportedFilter".to_string(),
            },
            tls: None,
        }];
    }
    check_with_proxy(&rule)?;
    Ok(rule)
}

fn translate_backend(
    ctx: &Ctx<'_>,
    namespace: &str,
    b: &HttpRouteRulesBackendRefs,
    cache: &mut backend::Cache,
    unresolved: &mut Vec<Problem>,
    degraded: &mut Vec<String>,
    idx: usize,
) -> Result<Backend, Problem> {
    let HttpRouteRulesBackendRefs {
        filters,
        group,
        kind,
        name,
        namespace: ref_ns,
        port,
        weight,
    } = b;
    let weight = match weight {
        None => 1,
        Some(w) => u32::try_from(*w)
            .ok()
            .filter(|w| *w <= 1_000_000)
            .ok_or_else(|| {
                unsupported(format!(
                    "backendRef {name}: weight {w} is outside 0–1000000"
                ))
            })?,
    };
    let r = BackendRef {
        group: group.as_deref().unwrap_or(""),
        kind: kind.as_deref().unwrap_or("Service"),
        namespace: ref_ns.as_deref().unwrap_or(namespace),
        name,
        port: *port,
    };
    let mut out_filters = Vec::new();
    let mut unsupported_filter = None;
    for f in filters.iter().flatten() {
        let f = as_rule_filter(f)?;
        match f.r#type {
            // Answered before a backend is chosen (redirect, CORS preflight) or changing what
            // chose it (rewrite): only rule-level.
            HttpRouteRulesFiltersType::RequestRedirect
            | HttpRouteRulesFiltersType::UrlRewrite
            | HttpRouteRulesFiltersType::Cors => {
                unsupported_filter = Some(format!("{:?} in a backendRef", f.r#type));
                continue;
            }
            _ => {}
        }
        match translate_filter(ctx, namespace, &f, cache, unresolved)? {
            Translated::Filter(f) => out_filters.push(f),
            Translated::Unsupported(what) => unsupported_filter = Some(what),
        }
    }
    check_filter_set(&out_filters)?;
    let (target, tls) = if let Some(what) = unsupported_filter {
        degraded.push(format!(
            "Dropped Rule {idx} backend {}: filter {what} is not supported; its share of requests gets 500",
            r.display()
        ));
        out_filters.clear();
        let target = BackendTarget::Invalid {
            reason: "UnsupportedFilter".to_string(),
        };
        (target, None)
    } else {
        resolve_with_tls(ctx, namespace, r, cache, unresolved)
    };
    Ok(Backend {
        name: r.display(),
        weight,
        filters: out_filters,
        target,
        tls,
    })
}

/// Resolves a backend and, for a Service, the BackendTLSPolicy that applies to it. A reference
/// that does not resolve, or a policy that cannot be met, makes the backend Invalid (500, never
/// cleartext to a backend that expects TLS) and is noted in `unresolved`.
fn resolve_with_tls(
    ctx: &Ctx<'_>,
    namespace: &str,
    r: BackendRef<'_>,
    cache: &mut backend::Cache,
    unresolved: &mut Vec<Problem>,
) -> (BackendTarget, Option<Box<BackendTls>>) {
    let resolved = backend::resolve(ctx, namespace, r, cache).and_then(|t| {
        let tls = match (r.group, r.kind) {
            ("", "Service") => {
                super::backend_tls::for_service(ctx, r.namespace, r.name, r.port)?.map(Box::new)
            }
            _ => None,
        };
        Ok((t, tls))
    });
    match resolved {
        Ok(ok) => ok,
        Err(p) => {
            let reason = p.reason.to_string();
            unresolved.push(p);
            (BackendTarget::Invalid { reason }, None)
        }
    }
}

/// BackendRef filters have their own generated types with the same shape as rule filters; one
/// serde round trip lets a single translator (which destructures every field) serve both.
fn as_rule_filter(f: &HttpRouteRulesBackendRefsFilters) -> Result<HttpRouteRulesFilters, Problem> {
    serde_json::to_value(f)
        .and_then(serde_json::from_value)
        .map_err(|e| unsupported(format!("backendRef filter: {e}")))
}

fn translate_match(m: &HttpRouteRulesMatches) -> Result<Match, Problem> {
    let HttpRouteRulesMatches {
        headers,
        method,
        path,
        query_params,
    } = m;
    Ok(Match {
        path: path.as_ref().map(path_match).unwrap_or_default(),
        headers: headers.iter().flatten().map(header_match).collect(),
        query_params: query_params
            .iter()
            .flatten()
            .map(query_param_match)
            .collect(),
        method: method.as_ref().map(|m| method_name(m).to_string()),
        grpc: None,
    })
}

/// A path match; type `PathPrefix` and value `/` by default.
fn path_match(p: &HttpRouteRulesMatchesPath) -> PathMatch {
    let HttpRouteRulesMatchesPath { r#type, value } = p;
    let value = value.clone().unwrap_or_else(|| "/".to_string());
    match r#type
        .as_ref()
        .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
    {
        HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
        HttpRouteRulesMatchesPathType::PathPrefix => PathMatch::PathPrefix(value),
        HttpRouteRulesMatchesPathType::RegularExpression => PathMatch::RegularExpression(value),
    }
}

/// A header match; type `Exact` by default.
fn header_match(h: &HttpRouteRulesMatchesHeaders) -> HeaderMatch {
    let HttpRouteRulesMatchesHeaders {
        name,
        r#type,
        value,
    } = h;
    HeaderMatch {
        name: name.clone(),
        value: value.clone(),
        kind: match r#type {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                ValueMatchType::RegularExpression
            }
            Some(HttpRouteRulesMatchesHeadersType::Exact) | None => ValueMatchType::Exact,
        },
    }
}

/// A query parameter match; type `Exact` by default.
fn query_param_match(q: &HttpRouteRulesMatchesQueryParams) -> QueryParamMatch {
    let HttpRouteRulesMatchesQueryParams {
        name,
        r#type,
        value,
    } = q;
    QueryParamMatch {
        name: name.clone(),
        value: value.clone(),
        kind: match r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                ValueMatchType::RegularExpression
            }
            Some(HttpRouteRulesMatchesQueryParamsType::Exact) | None => ValueMatchType::Exact,
        },
    }
}

fn method_name(m: &HttpRouteRulesMatchesMethod) -> &'static str {
    match m {
        HttpRouteRulesMatchesMethod::Get => "GET",
        HttpRouteRulesMatchesMethod::Head => "HEAD",
        HttpRouteRulesMatchesMethod::Post => "POST",
        HttpRouteRulesMatchesMethod::Put => "PUT",
        HttpRouteRulesMatchesMethod::Delete => "DELETE",
        HttpRouteRulesMatchesMethod::Connect => "CONNECT",
        HttpRouteRulesMatchesMethod::Options => "OPTIONS",
        HttpRouteRulesMatchesMethod::Trace => "TRACE",
        HttpRouteRulesMatchesMethod::Patch => "PATCH",
    }
}

/// Parses a Gateway API duration (GEP-2257: `500ms`, `1s`, `1m30s`, `1h`) into milliseconds;
/// `0s` (any zero duration) means "no timeout" and gives `None`.
pub fn parse_duration_ms(s: &str) -> Result<Option<u64>, DurationError> {
    let d = gateway_api::Duration::from_str(s).map_err(|reason| DurationError::Invalid {
        value: s.to_string(),
        reason,
    })?;
    if d.is_zero() {
        return Ok(None);
    }
    u64::try_from(d.as_millis())
        .map(Some)
        .map_err(|_| DurationError::TooLong(s.to_string()))
}

/// Why [`parse_duration_ms`] refuses a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a GEP-2257 duration.
    #[error("invalid duration {value:?}: {reason}")]
    Invalid {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More milliseconds than fit in 64 bits.
    #[error("duration {0:?} is too long")]
    TooLong(String),
}

/// Retries when `retry` gives no `attempts` (the spec leaves the number to implementations).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Most retries a rule may ask for (the proxy refuses more, `meridian_model::validate`).
const MAX_RETRY_ATTEMPTS: i64 = 10;

/// `rules[].retry` (experimental channel): attempts 0–10 (default
/// [`DEFAULT_RETRY_ATTEMPTS`]), codes 400–599, backoff a Gateway API duration (`0s`: none).
fn translate_retry(r: &RuleRetry) -> Result<Retry, Problem> {
    let attempts = match r.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(a) if (0..=MAX_RETRY_ATTEMPTS).contains(&a) => a as u32,
        Some(a) => {
            return Err(unsupported(format!(
                "retry.attempts {a} is outside 0–{MAX_RETRY_ATTEMPTS}"
            )));
        }
    };
    let mut codes = Vec::new();
    for &c in r.codes.iter().flatten() {
        match u16::try_from(c).ok().filter(|c| (400..=599).contains(c)) {
            Some(c) if !codes.contains(&c) => codes.push(c),
            Some(_) => {}
            None => {
                return Err(unsupported(format!(
                    "retry.codes: {c} is not an error status (400–599)"
                )));
            }
        }
    }
    let backoff_ms = match &r.backoff {
        None => None,
        Some(b) => parse_duration_ms(b).map_err(|e| unsupported(format!("retry.backoff: {e}")))?,
    };
    Ok(Retry {
        attempts,
        codes,
        backoff_ms,
    })
}

/// The session name when `sessionName` is not given.
pub const DEFAULT_SESSION_NAME: &str = "meridian-session";

/// `rules[].sessionPersistence` (experimental channel): type `Cookie` (default) or `Header`,
/// the name a token (≤ 128 characters), `cookieConfig` only for cookies, lifetime `Permanent`
/// only with an `absoluteTimeout`.
fn translate_session_persistence(
    sp: &RuleSessionPersistence,
) -> Result<SessionPersistence, Problem> {
    let kind = match sp.kind.as_deref() {
        None | Some("Cookie") => SessionKind::Cookie,
        Some("Header") => SessionKind::Header,
        Some(other) => {
            return Err(unsupported(format!(
                "sessionPersistence.type {other:?} is not Cookie or Header"
            )));
        }
    };
    let name = sp
        .session_name
        .clone()
        .unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string());
    let duration = |field: &str, v: &Option<String>| -> Result<Option<u64>, Problem> {
        match v {
            None => Ok(None),
            Some(s) => parse_duration_ms(s)
                .map_err(|e| unsupported(format!("sessionPersistence.{field}: {e}"))),
        }
    };
    let absolute_timeout_ms = duration("absoluteTimeout", &sp.absolute_timeout)?;
    let idle_timeout_ms = duration("idleTimeout", &sp.idle_timeout)?;
    let lifetime = sp
        .cookie_config
        .as_ref()
        .and_then(|c| c.lifetime_type.as_deref());
    if sp.cookie_config.is_some() && kind == SessionKind::Header {
        return Err(unsupported(
            "sessionPersistence.cookieConfig may only be set with type Cookie",
        ));
    }
    let permanent = match lifetime {
        None | Some("Session") => false,
        Some("Permanent") if absolute_timeout_ms.is_some() => true,
        Some("Permanent") => {
            return Err(unsupported(
                "sessionPersistence.cookieConfig.lifetimeType Permanent needs an absoluteTimeout",
            ));
        }
        Some(other) => {
            return Err(unsupported(format!(
                "sessionPersistence.cookieConfig.lifetimeType {other:?} is not Permanent or Session"
            )));
        }
    };
    Ok(SessionPersistence {
        name,
        kind,
        absolute_timeout_ms,
        idle_timeout_ms,
        permanent,
    })
}

/// A CORS filter, defaults applied (`maxAge` 5 s): origins `*` or `scheme://host[:port]`
/// (the host may hold `*` wildcards), a `*` method only alone, `maxAge` at least 1.
fn translate_cors(c: &HttpRouteRulesFiltersCors) -> Result<Cors, Problem> {
    let HttpRouteRulesFiltersCors {
        allow_credentials,
        allow_headers,
        allow_methods,
        allow_origins,
        expose_headers,
        max_age,
    } = c;
    let origins = allow_origins.clone().unwrap_or_default();
    for o in &origins {
        let ok = o == "*"
            || o.split_once("://").is_some_and(|(scheme, authority)| {
                !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                    && !authority.is_empty()
                    && !authority
                        .bytes()
                        .any(|b| b"/?#@ ".contains(&b) || b.is_ascii_control())
            });
        if !ok {
            return Err(unsupported(format!(
                "CORS allowOrigins {o:?} is not * or scheme://host[:port]"
            )));
        }
    }
    let methods = allow_methods.clone().unwrap_or_default();
    if methods.len() > 1 && methods.iter().any(|m| m == "*") {
        return Err(unsupported(
            "CORS allowMethods: * must be the only method when present",
        ));
    }
    let max_age = match max_age {
        None => 5,
        Some(a) if *a >= 1 => *a as u32,
        Some(a) => {
            return Err(unsupported(format!("CORS maxAge {a} is below 1")));
        }
    };
    Ok(Cors {
        allow_origins: origins,
        allow_methods: methods,
        allow_headers: allow_headers.clone().unwrap_or_default(),
        expose_headers: expose_headers.clone().unwrap_or_default(),
        allow_credentials: allow_credentials.unwrap_or(false),
        max_age,
    })
}

fn translate_timeouts(t: Option<&HttpRouteRulesTimeouts>) -> Result<Timeouts, Problem> {
    let Some(HttpRouteRulesTimeouts {
        backend_request,
        request,
    }) = t
    else {
        return Ok(Timeouts::default());
    };
    let parse = |field: &str, v: &Option<String>| -> Result<Option<u64>, Problem> {
        match v {
            None => Ok(None),
            Some(s) => {
                parse_duration_ms(s).map_err(|e| unsupported(format!("timeouts.{field}: {e}")))
            }
        }
    };
    let request_ms = parse("request", request)?;
    let backend_request_ms = parse("backendRequest", backend_request)?;
    if let (Some(r), Some(b)) = (request_ms, backend_request_ms)
        && b > r
    {
        return Err(unsupported(format!(
            "timeouts.backendRequest ({b}ms) must not be longer than timeouts.request ({r}ms)"
        )));
    }
    Ok(Timeouts {
        request_ms,
        backend_request_ms,
    })
}

// A short-lived return value, moved once into the rule: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Translated {
    Filter(Filter),
    /// A filter type the data plane does not implement (named for the status message).
    Unsupported(String),
}

macro_rules! header_modifier {
    ($m:expr) => {{
        let m = $m;
        HeaderModifier {
            set: m
                .set
                .iter()
                .flatten()
                .map(|h| HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            add: m
                .add
                .iter()
                .flatten()
                .map(|h| HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            remove: m.remove.clone().unwrap_or_default(),
        }
    }};
}

/// Refuses a header filter that sets, adds or removes a hop-by-hop or framing header
/// ([`meridian_model::headers::FILTER_RESERVED`]): an edit after parsing would change how the
/// next hop frames or routes the message. The rule is dropped with `UnsupportedValue`, naming the
/// headers (the proxy would refuse the whole snapshot otherwise).
fn no_reserved_headers(ty: &str, m: HeaderModifier) -> Result<HeaderModifier, Problem> {
    let mut reserved: Vec<&str> = m
        .set
        .iter()
        .chain(&m.add)
        .map(|h| h.name.as_str())
        .chain(m.remove.iter().map(String::as_str))
        .filter(|n| meridian_model::headers::is_filter_reserved(n))
        .collect();
    if reserved.is_empty() {
        return Ok(m);
    }
    reserved.dedup();
    Err(unsupported(format!(
        "filter {ty} may not edit hop-by-hop or framing header(s) {}",
        reserved.join(", ")
    )))
}

fn missing(ty: &str, field: &str) -> Problem {
    unsupported(format!("filter type {ty} without its {field:?} field"))
}

/// One route filter: the model's filter, a filter the proxy does not implement (ExtensionRef:
/// reported, not applied), or why the filter is invalid. A mirror's unresolved
/// backend goes to `unresolved` (the filter stays, its target invalid).
fn translate_filter(
    ctx: &Ctx<'_>,
    namespace: &str,
    f: &HttpRouteRulesFilters,
    cache: &mut backend::Cache,
    unresolved: &mut Vec<Problem>,
) -> Result<Translated, Problem> {
    let HttpRouteRulesFilters {
        cors,
        extension_ref,
        request_header_modifier,
        request_mirror,
        request_redirect,
        response_header_modifier,
        r#type,
        url_rewrite,
    } = f;
    Ok(Translated::Filter(match r#type {
        HttpRouteRulesFiltersType::RequestHeaderModifier => {
            let m = request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("RequestHeaderModifier", "requestHeaderModifier"))?;
            Filter::RequestHeaderModifier(no_reserved_headers(
                "RequestHeaderModifier",
                header_modifier!(m),
            )?)
        }
        HttpRouteRulesFiltersType::ResponseHeaderModifier => {
            let m = response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("ResponseHeaderModifier", "responseHeaderModifier"))?;
            Filter::ResponseHeaderModifier(no_reserved_headers(
                "ResponseHeaderModifier",
                header_modifier!(m),
            )?)
        }
        HttpRouteRulesFiltersType::RequestRedirect => {
            let r = request_redirect
                .as_ref()
                .ok_or_else(|| missing("RequestRedirect", "requestRedirect"))?;
            Filter::RequestRedirect(translate_redirect(r)?)
        }
        HttpRouteRulesFiltersType::UrlRewrite => {
            let u = url_rewrite
                .as_ref()
                .ok_or_else(|| missing("URLRewrite", "urlRewrite"))?;
            Filter::UrlRewrite(translate_url_rewrite(u)?)
        }
        HttpRouteRulesFiltersType::RequestMirror => {
            let m = request_mirror
                .as_ref()
                .ok_or_else(|| missing("RequestMirror", "requestMirror"))?;
            Filter::RequestMirror(translate_mirror(ctx, namespace, m, cache, unresolved)?)
        }
        HttpRouteRulesFiltersType::ExtensionRef => {
            let what = match extension_ref {
                Some(HttpRouteRulesFiltersExtensionRef { group, kind, name }) => {
                    format!("ExtensionRef {kind}.{group} {name}")
                }
                None => "ExtensionRef".to_string(),
            };
            return Ok(Translated::Unsupported(what));
        }
        HttpRouteRulesFiltersType::Cors => {
            let c = cors.as_ref().ok_or_else(|| missing("CORS", "cors"))?;
            Filter::Cors(translate_cors(c)?)
        }
    }))
}

fn translate_url_rewrite(u: &HttpRouteRulesFiltersUrlRewrite) -> Result<UrlRewrite, Problem> {
    let HttpRouteRulesFiltersUrlRewrite { hostname, path } = u;
    let path = path
        .as_ref()
        .map(|p| {
            let HttpRouteRulesFiltersUrlRewritePath {
                replace_full_path,
                replace_prefix_match,
                r#type,
            } = p;
            match r#type {
                HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath => {
                    path_modifier(true, replace_full_path)
                }
                HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch => {
                    path_modifier(false, replace_prefix_match)
                }
            }
        })
        .transpose()?;
    Ok(UrlRewrite {
        hostname: hostname.clone(),
        path,
    })
}

/// A mirror filter: its share of requests and its backend (resolved like a backendRef).
fn translate_mirror(
    ctx: &Ctx<'_>,
    namespace: &str,
    m: &HttpRouteRulesFiltersRequestMirror,
    cache: &mut backend::Cache,
    unresolved: &mut Vec<Problem>,
) -> Result<RequestMirror, Problem> {
    let HttpRouteRulesFiltersRequestMirror {
        backend_ref,
        fraction,
        percent,
    } = m;
    let percent = mirror_percent(*percent, fraction.as_ref())?;
    let HttpRouteRulesFiltersRequestMirrorBackendRef {
        group,
        kind,
        name,
        namespace: ref_ns,
        port,
    } = backend_ref;
    let r = BackendRef {
        group: group.as_deref().unwrap_or(""),
        kind: kind.as_deref().unwrap_or("Service"),
        namespace: ref_ns.as_deref().unwrap_or(namespace),
        name,
        port: *port,
    };
    let (target, tls) = resolve_with_tls(ctx, namespace, r, cache, unresolved);
    Ok(RequestMirror {
        backend: Backend {
            name: r.display(),
            weight: 1,
            filters: Vec::new(),
            target,
            tls,
        },
        percent,
    })
}

/// `percent` or `fraction` (exclusive; neither: every request) as a percentage.
fn mirror_percent(
    percent: Option<i32>,
    fraction: Option<&HttpRouteRulesFiltersRequestMirrorFraction>,
) -> Result<f64, Problem> {
    match (percent, fraction) {
        (Some(_), Some(_)) => Err(unsupported(
            "requestMirror: percent and fraction are exclusive",
        )),
        (None, None) => Ok(100.0),
        (Some(p), None) if (0..=100).contains(&p) => Ok(f64::from(p)),
        (Some(p), None) => Err(unsupported(format!(
            "requestMirror: percent {p} is outside 0–100"
        ))),
        (
            None,
            Some(HttpRouteRulesFiltersRequestMirrorFraction {
                denominator,
                numerator,
            }),
        ) => {
            let d = denominator.unwrap_or(100);
            if d <= 0 || *numerator < 0 || *numerator > d {
                return Err(unsupported(format!(
                    "requestMirror: fraction {numerator}/{d} is not within 0–1"
                )));
            }
            Ok(f64::from(*numerator) * 100.0 / f64::from(d))
        }
    }
}

fn translate_redirect(
    r: &HttpRouteRulesFiltersRequestRedirect,
) -> Result<RequestRedirect, Problem> {
    let HttpRouteRulesFiltersRequestRedirect {
        hostname,
        path,
        port,
        scheme,
        status_code,
    } = r;
    let status_code = match status_code.unwrap_or(302) {
        c @ (301 | 302 | 303 | 307 | 308) => c as u16,
        c => {
            return Err(unsupported(format!(
                "requestRedirect: statusCode {c} is not 301/302/303/307/308"
            )));
        }
    };
    let port = port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| unsupported(format!("requestRedirect: port {p} is outside 1–65535")))
        })
        .transpose()?;
    let path = path
        .as_ref()
        .map(|p| {
            let HttpRouteRulesFiltersRequestRedirectPath {
                replace_full_path,
                replace_prefix_match,
                r#type,
            } = p;
            match r#type {
                HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                    path_modifier(true, replace_full_path)
                }
                HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                    path_modifier(false, replace_prefix_match)
                }
            }
        })
        .transpose()?;
    Ok(RequestRedirect {
        scheme: scheme.as_ref().map(|s| {
            match s {
                HttpRouteRulesFiltersRequestRedirectScheme::Http => "http",
                HttpRouteRulesFiltersRequestRedirectScheme::Https => "https",
            }
            .to_string()
        }),
        hostname: hostname.clone(),
        path,
        port,
        status_code,
    })
}

fn path_modifier(full: bool, value: &Option<String>) -> Result<PathModifier, Problem> {
    match (full, value) {
        (true, Some(v)) => Ok(PathModifier::ReplaceFullPath(v.clone())),
        (false, Some(v)) => Ok(PathModifier::ReplacePrefixMatch(v.clone())),
        (true, None) => Err(unsupported(
            "path type ReplaceFullPath without replaceFullPath",
        )),
        (false, None) => Err(unsupported(
            "path type ReplacePrefixMatch without replacePrefixMatch",
        )),
    }
}

/// CEL rules of the upstream CRD on the filter list of one rule (or backendRef).
fn check_filter_set(filters: &[Filter]) -> Result<(), Problem> {
    let count = |p: fn(&Filter) -> bool| filters.iter().filter(|f| p(f)).count();
    let redirects = count(|f| matches!(f, Filter::RequestRedirect(_)));
    let rewrites = count(|f| matches!(f, Filter::UrlRewrite(_)));
    if redirects > 0 && rewrites > 0 {
        return Err(Problem::new(
            "IncompatibleFilters",
            "RequestRedirect and URLRewrite cannot be combined",
        ));
    }
    for (name, n) in [
        (
            "RequestHeaderModifier",
            count(|f| matches!(f, Filter::RequestHeaderModifier(_))),
        ),
        (
            "ResponseHeaderModifier",
            count(|f| matches!(f, Filter::ResponseHeaderModifier(_))),
        ),
        ("RequestRedirect", redirects),
        ("URLRewrite", rewrites),
        ("CORS", count(|f| matches!(f, Filter::Cors(_)))),
    ] {
        if n > 1 {
            return Err(unsupported(format!(
                "filter {name} may appear at most once"
            )));
        }
    }
    Ok(())
}

/// Compiles the rule alone with the proxy's router: whatever the proxy would refuse is refused
/// here, per rule. Endpoints are stripped first — they are valid by construction and can be many.
fn check_with_proxy(rule: &Rule) -> Result<(), Problem> {
    fn strip(b: &Backend) -> Backend {
        Backend {
            name: b.name.clone(),
            weight: b.weight,
            filters: b.filters.iter().map(strip_filter).collect(),
            target: BackendTarget::Invalid {
                reason: String::new(),
            },
            tls: None,
        }
    }
    fn strip_filter(f: &Filter) -> Filter {
        match f {
            Filter::RequestMirror(m) => Filter::RequestMirror(RequestMirror {
                backend: strip(&m.backend),
                percent: m.percent,
            }),
            other => other.clone(),
        }
    }
    let probe = Rule {
        name: rule.name.clone(),
        matches: rule.matches.clone(),
        filters: rule.filters.iter().map(strip_filter).collect(),
        backends: rule.backends.iter().map(strip).collect(),
        timeouts: rule.timeouts.clone(),
        retry: rule.retry.clone(),
        session_persistence: rule.session_persistence.clone(),
    };
    let mut snapshot = Snapshot::empty(0);
    snapshot.gateways.push(Gateway {
        namespace: "probe".to_string(),
        name: "probe".to_string(),
        listeners: vec![Listener {
            name: "probe".to_string(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 1,
            protocol: Protocol::Http,
            hostname: None,
            tls: None,
            routes: vec![
                Route {
                    namespace: "probe".to_string(),
                    name: "probe".to_string(),
                    kind: Default::default(),
                    created_at: 0,
                    hostnames: Vec::new(),
                    rules: vec![probe],
                }
                .into(),
            ],
        }],
        served_by_header: false,
    });
    Router::compile(snapshot)
        .map(drop)
        .map_err(|e| unsupported(strip_probe_location(&e.to_string())))
}

/// The probe's location prefix means nothing to a user; keep the part after the rule index.
fn strip_probe_location(msg: &str) -> String {
    match msg.find("rule 0") {
        Some(i) => msg[i + "rule 0".len()..]
            .trim_start_matches([':', ' '])
            .to_string(),
        None => msg.to_string(),
    }
}
