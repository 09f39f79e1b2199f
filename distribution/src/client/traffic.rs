//! Traffic reports: while a stream is open, the target's cumulative counters and its health view
//! ([`Target::health`]) go to `POST /v1/traffic` every `traffic_interval` when either changed
//! since the last accepted report (the health view by [`ProxyHealth::same_view`]: round-trip
//! noise alone is no change).
//!
//! A report that fails is logged at debug and not retried: the next tick sends the then-current
//! counters, which include everything (they are cumulative).

use std::convert::Infallible;
use std::time::Duration;

use super::stream::body_text;
use super::{Client, ClientError, Target, error_chain};
use crate::protocol::{GatewayTrafficReport, ProxyHealth, TrafficReport};

/// Bound of one traffic report request.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(3);

impl Client {
    /// Reports the target's traffic every `traffic_interval` while the stream is open (the
    /// caller drops this future when the stream ends).
    pub(super) async fn report_traffic<T: Target>(&self, target: &T) -> Infallible {
        let every = self.cfg.traffic_interval;
        if every.is_zero() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per stream: a new stream may reach a server that has never seen our counters.
        let mut last_sent: Option<(Vec<GatewayTrafficReport>, Option<ProxyHealth>)> = None;
        loop {
            tick.tick().await;
            let gateways = target.traffic();
            let health = target.health();
            let nothing = gateways.is_empty() && health.is_none();
            if nothing
                || last_sent
                    .as_ref()
                    .is_some_and(|(g, h)| *g == gateways && same_health(h, &health))
            {
                continue;
            }
            let report = TrafficReport {
                proxy_id: self.cfg.hello.proxy_id.clone(),
                gateways,
                health,
            };
            match self.send_traffic(&report).await {
                Ok(()) => last_sent = Some((report.gateways, report.health)),
                Err(e) => {
                    tracing::debug!(error = %e, "traffic report not delivered; retrying next tick")
                }
            }
        }
    }

    /// One traffic report, one try.
    async fn send_traffic(&self, report: &TrafficReport) -> Result<(), ClientError> {
        let body = serde_json::to_vec(report)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the report: {e}")))?;
        let req = self.request("/v1/traffic", body)?;
        let resp = tokio::time::timeout(TRAFFIC_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| ClientError::NoAnswer(TRAFFIC_TIMEOUT))?
            .map_err(|e| ClientError::Connection(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = body_text(resp.into_body(), Duration::from_secs(1)).await;
        Err(ClientError::Status { status, body })
    }
}

fn same_health(sent: &Option<ProxyHealth>, now: &Option<ProxyHealth>) -> bool {
    match (sent, now) {
        (Some(a), Some(b)) => a.same_view(b),
        (None, None) => true,
        _ => false,
    }
}
