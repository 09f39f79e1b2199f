//! The [`Forwarder`]'s response side, shared by both proxies: the upstream response head
//! (outlier detection, retry on a listed status, latency), the response going downstream
//! (served-by header, response header filters), failures answered by the proxy and the
//! per-request counters.
//!
//! ```text
//! upstream_response_filter ─ 1xx: answered only by a 101 ─ deadline passed? 504
//!                          ─ east-west hop: remote served-by, or the remote proxy's refusal
//!                          ─ outlier detection ─ listed status with retries left? retry
//!                          ─ upstream latency (once) ─ answered
//! response_filter ─ strip a hop's served-by ─ served-by (Gateway switch, endpoint answers)
//!                 ─ session token for a new or moved session (session.rs)
//!                 ─ ResponseHeaderModifier: rule, then backend ─ CORS headers (Vary: Origin;
//!                   allow-origin/-credentials/expose-headers for an allowed Origin)
//! fail_to_proxy ─ status for the error (504/503/…) ─ failure kind ─ answer if nothing was sent
//! logging ─ failure kind ─ Gateway traffic counters ─ failure log line ─ access log line and
//!           spans (observe.rs, when on) ─ requests metric
//! ```

use std::time::Instant;

use meridian_model::filters;
use meridian_model::snapshot::{BackendTarget, Filter};
use meridian_model::traffic::FailureKind;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::FailToProxy;

use super::ctx::{Ctx, LatencyClock, Routing, Upstream};
use super::{Downstream, SERVED_BY_HEADER, east_west, ms, status_error};
use crate::endpoints;
use crate::headers::RespEdit;

use super::Forwarder;

impl Forwarder {
    /// The response head from an endpoint: decides whether it goes downstream (the endpoint
    /// answered) or the request is retried.
    pub fn upstream_response_filter(
        &self,
        session: &impl Downstream,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            // A protocol switch is the endpoint's final answer; `100 Continue` is not.
            ctx.outcome.answered = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
            return Ok(());
        }
        super::observe::try_ended(ctx, Some(resp.status.as_u16()), None);
        if let Some(up) = ctx.upstream.as_mut() {
            if up.deadline_passed() {
                // The whole-request deadline covers the wait for the response header: a header
                // that arrives after it is too late, whatever it says.
                ctx.outcome.failure = Some(FailureKind::Timeout);
                let mut e = status_error(504, "request timeout");
                e.set_retry(false);
                return Err(e);
            }
            let code = resp.status.as_u16();
            if up.east_west_hop() && !east_west::take_remote_served_by(up, resp) {
                // The remote proxy answered itself: no endpoint there, unknown backend, …
                return self.east_west_refusal(session, resp, up, &mut ctx.outcome, code);
            }
            self.detect_outlier(up, code);
            if self.retry_on_status(up, code) {
                let mut e = Error::explain(ErrorType::HTTPStatus(code), "retrying on status");
                e.set_retry(true);
                return Err(e);
            }
            self.observe_latency(up, &ctx.routing);
            // The failover metrics: which tier answers (failover.rs).
            if let (Some(b), Some(t)) = (up.target.backend(), &up.current) {
                let drain = up.target.drain.as_deref();
                self.shared.tiers.served(&self.shared, b, t.index, drain);
            }
        }
        ctx.outcome.answered = true;
        Ok(())
    }

    /// Feeds the status to the backend's outlier detection, which may eject the endpoint.
    fn detect_outlier(&self, up: &Upstream, code: u16) {
        let (
            Some(t),
            Some(BackendTarget::Endpoints {
                failover: Some(f), ..
            }),
        ) = (&up.current, up.target.backend().map(|b| &b.target))
        else {
            return;
        };
        let Some(od) = f.outlier_detection.as_deref() else {
            return;
        };
        if self.shared.ejections.response(
            t.key,
            code,
            od.consecutive_5xx,
            ms(Some(od.base_ejection_ms)).unwrap_or(endpoints::BASE_EJECTION),
            ms(Some(od.max_ejection_ms)).unwrap_or(endpoints::MAX_EJECTION),
        ) {
            self.shared.metrics.ejections.inc();
            tracing::info!(endpoint = %t.key, status = code, "endpoint ejected by outlier detection");
        }
    }

    /// A status the rule's retry policy lists, with retries left and time before the deadline:
    /// spends a retry and marks it as ours (see `error_while_proxy`).
    fn retry_on_status(&self, up: &mut Upstream, code: u16) -> bool {
        let listed = up
            .target
            .rule
            .rule
            .retry
            .as_ref()
            .is_some_and(|r| r.codes.contains(&code));
        if !(listed && up.left.retries > 0 && !up.deadline_passed()) {
            return false;
        }
        up.left.retries -= 1;
        up.status_retry = true;
        up.backoff = up.retry_backoff();
        self.count_retry("status");
        true
    }

    /// Observes the time from the first try to the first response head, once per request.
    fn observe_latency(&self, up: &mut Upstream, routing: &Routing) {
        if let LatencyClock::Running(start) = up.latency {
            up.latency = LatencyClock::Observed;
            self.shared
                .metrics
                .upstream_latency
                .with_label_values(&[routing.route_label()])
                .observe(start.elapsed().as_secs_f64());
        }
    }

    /// The response going downstream: served-by header and the response header filters.
    pub fn response_filter(resp: &mut ResponseHeader, ctx: &mut Ctx) {
        if ctx.east_west_hop() {
            // Passed on below only when this Gateway shows where requests were served.
            resp.remove_header(SERVED_BY_HEADER);
        }
        if ctx.outcome.answered && !(resp.status.is_informational() && resp.status != 101) {
            ctx.outcome.head_at.get_or_insert_with(Instant::now);
            if ctx
                .routing
                .gateway
                .as_ref()
                .is_some_and(|g| g.served_by_header)
                && let Some(v) = ctx.served_by()
                && let Err(e) = resp.insert_header(SERVED_BY_HEADER, v)
            {
                tracing::debug!(error = %e, "served-by header not added");
            }
        }
        let Some(rule) = &ctx.routing.rule else {
            return;
        };
        // An endpoint's answer on a rule with session persistence: the session's token.
        if rule.rule.session_persistence.is_some()
            && ctx.outcome.answered
            && let Some(up) = &ctx.upstream
            && let Some(t) = &up.current
        {
            super::session::set_on_response(
                resp,
                rule,
                ctx.routing.sticky,
                up.target.index,
                t.index,
            );
        }
        let backend_filters = ctx.backend().map(|b| b.filters.as_slice());
        for f in rule
            .rule
            .filters
            .iter()
            .chain(backend_filters.unwrap_or_default())
        {
            if let Filter::ResponseHeaderModifier(hm) = f {
                filters::apply_header_modifier(hm, &mut RespEdit(resp));
            }
        }
        if let Some(c) = super::filters::rule_cors(&rule.rule.filters) {
            super::filters::cors_response(resp, c, ctx.routing.cors_origin.as_deref());
        }
    }

    /// The request failed: answers the status that fits the error (unless something was sent
    /// already) and records the failure kind.
    pub async fn fail_to_proxy(
        session: &mut impl Downstream,
        e: &Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        let deadline_passed = ctx.deadline_passed();
        let code = error_status(e, deadline_passed);
        if ctx.outcome.failure.is_none() && !client_went_away(e) {
            ctx.outcome.failure = failure_kind(e, ctx.status_retry(), deadline_passed);
        }
        // Only answer if nothing was sent yet; otherwise the connection is just closed.
        let code = if session.response_written().is_some() {
            0
        } else {
            code
        };
        if code > 0
            && let Err(err) = super::respond_status(session, code).await
        {
            tracing::debug!(error = %err, "could not send the error response");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the finished request: the Gateway's traffic counters and the requests metric
    /// (`listener` label), and logs a failure. pingora logs every failed request at error level,
    /// client disconnects included (a load test's closing connections alone make hundreds of
    /// lines), so both proxies suppress that and this reports failures instead, at a level that
    /// fits the cause.
    pub fn logging(&self, session: &impl Downstream, e: Option<&Error>, ctx: &Ctx, listener: &str) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let failure = match ctx.outcome.failure {
            Some(f) => Some(f),
            None if status >= 500 && ctx.outcome.answered => Some(FailureKind::Upstream5xx),
            None if status >= 500 => Some(FailureKind::Other),
            None => None,
        };
        if let Some(g) = &ctx.routing.gateway {
            let (region, zone) = ctx.answered_locality();
            let head = ctx.outcome.head_at.unwrap_or_else(Instant::now);
            let latency_us = u64::try_from(
                head.saturating_duration_since(ctx.outcome.started)
                    .as_micros(),
            )
            .unwrap_or(u64::MAX);
            g.traffic.record(region, zone, failure, latency_us);
        }
        if let Some(e) = e {
            log_failure(e, ctx, listener, failure, status);
        }
        self.finish_observed(session, ctx, status, failure);
        let mut digits = [0u8; 3];
        self.shared
            .metrics
            .requests
            .with_label_values(&[
                listener,
                ctx.route_label(),
                status_label(status, &mut digits),
            ])
            .inc();
    }
}

/// The `status` label of `code` (0 when nothing was answered), written into `digits`: no
/// String per request.
fn status_label(code: u16, digits: &mut [u8; 3]) -> &str {
    let code = code.min(999);
    for (i, d) in digits.iter_mut().enumerate() {
        let place = [100, 10, 1][i];
        // A decimal digit: always ASCII.
        *d = b'0' + u8::try_from(code / place % 10).unwrap_or(0);
    }
    let start = match code {
        100.. => 0,
        10..=99 => 1,
        _ => 2,
    };
    std::str::from_utf8(&digits[start..]).unwrap_or("0")
}

/// The failure log line: debug for a client that went away, warn for the rest.
fn log_failure(e: &Error, ctx: &Ctx, listener: &str, failure: Option<FailureKind>, status: u16) {
    let upstream = ctx.upstream.as_ref();
    let current = upstream.and_then(Upstream::current_addr);
    let attempts = upstream.map_or(0, |u| u.tried.len());
    if client_went_away(e) {
        tracing::debug!(
            upstream = ?current,
            attempts,
            error = %e,
            "client went away"
        );
    } else {
        tracing::warn!(
            listener = %listener,
            route = %ctx.route_label(),
            client = ?ctx.routing.client,
            upstream = ?current,
            served_by = ctx.served_by().as_deref().unwrap_or(""),
            attempts,
            failure = failure.map_or("", crate::traffic::kind_label),
            status,
            error = %e,
            "request failed"
        );
    }
}

/// The status answered for the error that ended a request.
fn error_status(e: &Error, deadline_passed: bool) -> u16 {
    if deadline_passed {
        return 504;
    }
    match e.etype() {
        ErrorType::HTTPStatus(c) => *c,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => match e.esource() {
            // Envoy-like: connect failure or reset before a response is a 503.
            ErrorSource::Upstream => 503,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// The client closed or broke its connection (or stopped reading): nothing to report.
pub(super) fn client_went_away(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        )
}

/// What kind of failure `e` (the error that ended the request) is, for the traffic counters.
/// `None` for errors that are not the backend's or the proxy's fault (the client's).
fn failure_kind(e: &Error, status_retry: bool, deadline_passed: bool) -> Option<FailureKind> {
    if deadline_passed {
        return Some(FailureKind::Timeout);
    }
    match e.etype() {
        // The endpoint answered a listed status and the retry could not happen.
        ErrorType::HTTPStatus(c) if status_retry => (*c >= 500).then_some(FailureKind::Upstream5xx),
        ErrorType::HTTPStatus(504) => Some(FailureKind::Timeout),
        ErrorType::HTTPStatus(503) => Some(FailureKind::NoEndpoint),
        ErrorType::HTTPStatus(c) => (*c >= 500).then_some(FailureKind::Other),
        // A connect timeout means the endpoint could not be reached, like a refusal.
        ErrorType::ConnectTimedout => Some(FailureKind::Connect),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *e.esource() == ErrorSource::Upstream =>
        {
            Some(FailureKind::Timeout)
        }
        _ => match e.esource() {
            ErrorSource::Upstream => Some(FailureKind::Connect),
            ErrorSource::Downstream => None,
            ErrorSource::Internal | ErrorSource::Unset => Some(FailureKind::Other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_codes_in_decimal() {
        let mut digits = [0u8; 3];
        for code in [0u16, 7, 42, 101, 200, 404, 503, 999] {
            assert_eq!(status_label(code, &mut digits), code.to_string());
        }
        assert_eq!(status_label(1000, &mut digits), "999");
    }
}
