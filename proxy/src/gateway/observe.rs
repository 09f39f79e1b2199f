//! The [`Forwarder`]'s observability hooks, shared by both proxies: trace context and access log
//! facts gathered along the request, the line and the spans written at its end.
//!
//! ```text
//! begin (top of each Role::request_filter) ─ off (no access log, no exporter)? nothing
//!   ─ RequestTrace from traceparent/tracestate (trace.rs) ─ sampled for the log? Host and path
//!     as received
//! upstream_peer ─ try_started: a span id per try
//! upstream_request_filter ─ traceparent (trace id, the try's span id), tracestate
//! fail_to_connect / error_while_proxy / upstream_response_filter ─ try_ended: error or status
//! logging ─ finish: the access log line (accesslog.rs) and, when exported and sampled, the
//!   request span with a child span per try (trace.rs)
//! ```

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use http::{HeaderName, HeaderValue};
use meridian_model::locality;
use meridian_model::snapshot::BackendTarget;
use meridian_model::traffic::FailureKind;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use pingora_error::{ErrorType, OrErr};
use pingora_http::RequestHeader;

use super::ctx::{Ctx, Observed, TrySpan, Upstream};
use super::{Downstream, Forwarder};
use crate::accesslog::{Line, UpstreamField, timestamp};
use crate::headers::UpstreamFields;
use crate::trace::{self, RequestTrace, SpanRecord, TRACEPARENT, TRACESTATE};

/// The trace context's fields as names (the hooks edit upstream heads by name).
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);

/// Where an upstream endpoint is: address, cluster, region, zone (behind an east-west hop: what
/// the remote proxy says), and its locality tier.
struct Where<'a> {
    address: String,
    cluster: &'a str,
    region: &'a str,
    zone: &'a str,
    tier: Option<usize>,
}

impl Forwarder {
    /// Starts observing a request, if access logs or tracing are on: its trace context, and for
    /// a request the log samples, its Host and path as received.
    pub(super) fn begin(&self, session: &impl Downstream, ctx: &mut Ctx) {
        let log = self.shared.access_log.as_ref();
        if log.is_none() && self.shared.spans.is_none() {
            return;
        }
        let req = session.req_header();
        let values =
            |name: &'static str| req.headers.get_all(name).into_iter().map(|v| v.as_bytes());
        let trace = RequestTrace::from_headers(values(TRACEPARENT), values(TRACESTATE));
        let sampled = log.is_some_and(|l| l.sampled());
        let (host, path) = if sampled {
            (host(req), path(req, log.is_some_and(|l| l.query)))
        } else {
            (String::new(), String::new())
        };
        let now = SystemTime::now();
        ctx.obs = Some(Box::new(Observed {
            wall_start: now
                .checked_sub(ctx.outcome.started.elapsed())
                .unwrap_or(now),
            log: sampled,
            host,
            path,
            trace,
            first_try: None,
            tries: Vec::new(),
        }));
    }

    /// Sets the trace headers of an upstream try: our `traceparent` (the try's span as the
    /// parent) replaces the client's, valid or not; `tracestate` only with a valid parent.
    pub(super) fn trace_upstream(
        upstream: &mut impl UpstreamFields,
        ctx: &Ctx,
    ) -> pingora_error::Result<()> {
        let Some(obs) = ctx.obs.as_deref() else {
            return Ok(());
        };
        let span = obs.tries.last().map_or(obs.trace.span_id, |t| t.span_id);
        let traceparent = HeaderValue::try_from(obs.trace.traceparent(span)).or_err(
            ErrorType::InternalError,
            "traceparent is not a header value",
        )?;
        upstream.set(&TRACEPARENT_NAME, None, traceparent)?;
        match &obs.trace.state {
            Some(s) => {
                let state = HeaderValue::try_from(s.as_str())
                    .or_err(ErrorType::InternalError, "tracestate is not a header value")?;
                upstream.set(&TRACESTATE_NAME, None, state)?;
            }
            None => upstream.remove(&TRACESTATE_NAME),
        }
        Ok(())
    }

    /// Writes the request's access log line and exports its spans (see [`Self::begin`]).
    pub(super) fn finish_observed(
        &self,
        session: &impl Downstream,
        ctx: &Ctx,
        status: u16,
        failure: Option<FailureKind>,
    ) {
        let Some(obs) = ctx.obs.as_deref() else {
            return;
        };
        let now = Instant::now();
        let end = SystemTime::now();
        let up = ctx.upstream.as_ref();
        let last = up.and_then(|u| self.where_of(u, None));
        let failure = failure.map(crate::traffic::kind_label);
        if obs.log
            && let Some(log) = &self.shared.access_log
        {
            let listener = ctx.routing.listener.as_deref();
            let gateway = listener.map(|l| format!("{}/{}", l.gateway_namespace, l.gateway_name));
            let upstream_head_ms = match (obs.first_try, ctx.outcome.head_at) {
                (Some(first), Some(head)) => Some(millis(head.saturating_duration_since(first))),
                _ => None,
            };
            let req = session.req_header();
            log.write(&Line {
                time: timestamp(obs.wall_start),
                cluster: &self.shared.locality.cluster,
                gateway: gateway.as_deref().unwrap_or(""),
                listener: listener.map_or("", |l| l.name.as_str()),
                route: ctx.route_label(),
                rule: ctx.routing.rule.as_ref().map(|r| r.index),
                method: req.method.as_str(),
                host: &obs.host,
                path: &obs.path,
                status,
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                duration_ms: millis(now.saturating_duration_since(ctx.outcome.started)),
                upstream_head_ms,
                upstream: last.as_ref().map(|w| UpstreamField {
                    address: w.address.clone(),
                    cluster: w.cluster,
                    region: w.region,
                    zone: w.zone,
                }),
                tier: last.as_ref().and_then(|w| w.tier),
                attempts: up.map_or(0, |u| u.tried.len()),
                failure,
                trace_id: Some(obs.trace.trace_id_hex()),
                span_id: Some(obs.trace.span_id_hex()),
                client: ctx.routing.client,
            });
        }
        if let Some(spans) = &self.shared.spans
            && obs.trace.sampled()
        {
            self.export_spans(spans, session, ctx, obs, end, status, failure);
        }
    }

    /// The request span and one child span per try.
    #[allow(clippy::too_many_arguments)]
    fn export_spans(
        &self,
        spans: &trace::Exporter,
        session: &impl Downstream,
        ctx: &Ctx,
        obs: &Observed,
        end: SystemTime,
        status: u16,
        failure: Option<&'static str>,
    ) {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let route = ctx.route_label().to_string();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new(
                "meridian.attempts",
                i64::try_from(obs.tries.len()).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(l) = ctx.routing.listener.as_deref() {
            attributes.push(KeyValue::new(
                "meridian.gateway",
                format!("{}/{}", l.gateway_namespace, l.gateway_name),
            ));
            attributes.push(KeyValue::new("meridian.listener", l.name.clone()));
        }
        if !route.is_empty() {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        if let Some(f) = failure {
            attributes.push(KeyValue::new("error.type", f));
        }
        let name = match route.is_empty() {
            true => Cow::Owned(method.clone()),
            false => Cow::Owned(format!("{method} {route}")),
        };
        spans.export(
            &obs.trace,
            SpanRecord {
                name,
                span_id: obs.trace.span_id,
                parent: obs.trace.parent,
                remote_parent: obs.trace.parent.is_some(),
                kind: SpanKind::Server,
                start: obs.wall_start,
                end,
                attributes,
                error: (status >= 500 || failure.is_some())
                    .then(|| failure.unwrap_or("server error").to_string()),
            },
        );
        let up = ctx.upstream.as_ref();
        for t in &obs.tries {
            let mut attributes = vec![
                KeyValue::new("http.request.method", method.clone()),
                KeyValue::new("server.address", t.addr.ip().to_string()),
                KeyValue::new("server.port", i64::from(t.addr.port())),
            ];
            if let Some(w) = up.and_then(|u| self.where_of(u, Some(t.index))) {
                attributes.push(KeyValue::new(
                    "meridian.endpoint.cluster",
                    w.cluster.to_string(),
                ));
                attributes.push(KeyValue::new(
                    "meridian.endpoint.region",
                    w.region.to_string(),
                ));
                attributes.push(KeyValue::new("meridian.endpoint.zone", w.zone.to_string()));
                if let Some(tier) = w.tier {
                    attributes.push(KeyValue::new(
                        "meridian.tier",
                        i64::try_from(tier).unwrap_or(i64::MAX),
                    ));
                }
            }
            if let Some(s) = t.status {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            if let Some(e) = &t.error {
                attributes.push(KeyValue::new("error.type", e.clone()));
            }
            spans.export(
                &obs.trace,
                SpanRecord {
                    name: Cow::Owned(format!("{method} upstream")),
                    span_id: t.span_id,
                    parent: Some(obs.trace.span_id),
                    remote_parent: false,
                    kind: SpanKind::Client,
                    start: t.start,
                    end: t.end.unwrap_or(end),
                    attributes,
                    error: t.error.clone().or_else(|| {
                        t.status
                            .filter(|s| *s >= 500)
                            .map(|s| format!("status {s}"))
                    }),
                },
            );
        }
    }

    /// Where the endpoint of try `index` (default: the last try) is, and its locality tier for
    /// this proxy.
    fn where_of<'a>(&self, up: &'a Upstream, index: Option<usize>) -> Option<Where<'a>> {
        let current = up.current.as_ref()?;
        let index = index.unwrap_or(current.index);
        let BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } = &up.target.backend()?.target
        else {
            return None;
        };
        let e = endpoints.get(index)?;
        // The order the choice used: this proxy's measured nearest regions (health.rs).
        let nearest = self.shared.rtt.order();
        let plan = locality::plan(
            endpoints,
            &self.shared.locality,
            failover.as_ref(),
            &nearest,
        );
        let tier = plan.tiers.iter().position(|t| t.members.contains(&index));
        let mut w = Where {
            address: std::net::SocketAddr::new(e.address, e.port).to_string(),
            cluster: &e.cluster,
            region: &e.region,
            zone: &e.zone,
            tier,
        };
        // Behind an east-west hop the remote proxy says where the request was served.
        if index == current.index
            && let Some(remote) = current.remote_served_by.as_deref()
        {
            let mut parts = remote.splitn(3, '/');
            if let (Some(c), Some(r), Some(z)) = (parts.next(), parts.next(), parts.next()) {
                (w.cluster, w.region, w.zone) = (c, r, z);
            }
        }
        Some(w)
    }
}

/// A new try at `addr` (endpoint `index`): its span starts.
pub(super) fn try_started(ctx: &mut Ctx, addr: std::net::SocketAddr, index: usize) {
    let Some(obs) = ctx.obs.as_deref_mut() else {
        return;
    };
    obs.first_try.get_or_insert_with(Instant::now);
    obs.tries.push(TrySpan {
        span_id: trace::new_span_id(),
        start: SystemTime::now(),
        end: None,
        addr,
        index,
        status: None,
        error: None,
    });
}

/// The last try ended: with a response head (`status`) or an error.
pub(super) fn try_ended(ctx: &mut Ctx, status: Option<u16>, error: Option<&dyn std::fmt::Display>) {
    let Some(t) = ctx.obs.as_deref_mut().and_then(|o| o.tries.last_mut()) else {
        return;
    };
    if t.end.is_some() {
        return;
    }
    t.end = Some(SystemTime::now());
    t.status = status;
    t.error = error.map(ToString::to_string);
}

/// A hedge swapped which of its two tries is current (upstream.rs `hedge_swap`): the current
/// try's span stays the last, so [`try_ended`] records the answer on the try that gave it.
pub(super) fn hedge_swapped(ctx: &mut Ctx) {
    if let Some(obs) = ctx.obs.as_deref_mut()
        && let n @ 2.. = obs.tries.len()
    {
        obs.tries.swap(n - 1, n - 2);
    }
}

/// The other try of a hedged pair (not the current one) ended: it lost the race, failed, or
/// was never sent. Its span ends now with `why`; a span already ended keeps what it has.
pub(super) fn hedge_other_ended(ctx: &mut Ctx, why: &dyn std::fmt::Display) {
    let Some(obs) = ctx.obs.as_deref_mut() else {
        return;
    };
    let Some(n) = obs.tries.len().checked_sub(2) else {
        return;
    };
    let t = &mut obs.tries[n];
    if t.end.is_none() {
        t.end = Some(SystemTime::now());
        t.error = Some(why.to_string());
    }
}

/// The Host of the request as received (lossy for non-UTF-8 bytes), else the target's authority.
fn host(req: &RequestHeader) -> String {
    match req.headers.get(http::header::HOST) {
        Some(h) => String::from_utf8_lossy(h.as_bytes()).into_owned(),
        None => req
            .uri
            .authority()
            .map_or_else(String::new, |a| a.to_string()),
    }
}

/// The request target's path as received (lossy for non-UTF-8 bytes), without the query
/// unless `query`.
fn path(req: &RequestHeader, query: bool) -> String {
    let raw = req.raw_path();
    let raw = match (query, raw.iter().position(|&b| b == b'?')) {
        (false, Some(q)) => &raw[..q],
        _ => raw,
    };
    String::from_utf8_lossy(raw).into_owned()
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::accesslog::Line;

    #[test]
    fn path_drops_the_query_unless_asked_and_replaces_bad_bytes() {
        let req = RequestHeader::build("GET", b"/a/\xff\"b?token=s", None).unwrap();
        assert_eq!(path(&req, false), "/a/\u{fffd}\"b");
        assert_eq!(path(&req, true), "/a/\u{fffd}\"b?token=s");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", http::HeaderValue::from_bytes(b"h\xfe\"").unwrap())
            .unwrap();
        assert_eq!(host(&req), "h\u{fffd}\"");
    }

    /// Whatever a field holds (newlines, quotes, control characters, replacement characters),
    /// the encoded line is one line of valid JSON giving the same text back.
    #[test]
    fn hostile_fields_encode_as_one_json_line() {
        let hostile = "a\nb\r\"c\\d\u{0}\u{1b}[31m\u{fffd}\u{2028}";
        let line = Line {
            time: String::new(),
            cluster: hostile,
            gateway: hostile,
            listener: hostile,
            route: hostile,
            rule: None,
            method: hostile,
            host: hostile,
            path: hostile,
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            upstream_head_ms: None,
            upstream: None,
            tier: None,
            attempts: 0,
            failure: None,
            trace_id: None,
            span_id: None,
            client: None,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["path"], hostile);
        assert_eq!(back["host"], hostile);
    }
}
