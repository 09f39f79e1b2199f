//! The admin listener (hyper 1, loopback by default).
//!
//! | Path           | Answer                                                                  |
//! |----------------|-------------------------------------------------------------------------|
//! | `/healthz`     | 200 while the process runs                                              |
//! | `/ready`       | 200 once a snapshot is served, else 503; JSON with generation, source,  |
//! |                | error, the controller link (`controller: {url, connected, lastError}`   |
//! |                | or null) and the state file (`stateFile` or null)                       |
//! | `/config_dump` | the served snapshot (private keys redacted), generation, source, error  |
//! | `/metrics`     | Prometheus text                                                         |
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
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::{Shared, SnapshotSource};

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
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
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &shared)) }
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
            redact_keys(&mut snapshot);
            json_reply(
                StatusCode::OK,
                &json!({
                    "generation": generation,
                    "source": shared.source().as_ref().map(SnapshotSource::label),
                    "lastError": shared.last_error(),
                    "snapshot": snapshot,
                }),
            )
        }
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

/// Private keys never leave the proxy.
fn redact_keys(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k == "keyPem" {
                    *val = Value::String("<redacted>".to_string());
                } else {
                    redact_keys(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_keys),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_redacted_everywhere() {
        let mut v = json!({"a": [{"tls": {"certificates": [{"certPem": "C", "keyPem": "K"}]}}]});
        redact_keys(&mut v);
        assert_eq!(v["a"][0]["tls"]["certificates"][0]["keyPem"], "<redacted>");
        assert_eq!(v["a"][0]["tls"]["certificates"][0]["certPem"], "C");
    }
}
