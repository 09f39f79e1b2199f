//! RequestMirror: fire-and-forget copies of requests.
//!
//! A copy carries the method, path, query and headers as they are after the filters that come
//! before the mirror filter; it carries **no body** (bodies would need buffering or teeing the
//! downstream stream, which a later issue can add). Copies run on their own tasks, never delay or
//! fail the main request, and at most [`MAX_IN_FLIGHT`] run at once: copies over the limit are
//! dropped and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Copies in flight at once; more are dropped.
pub const MAX_IN_FLIGHT: usize = 256;
/// A copy that takes longer than this is abandoned.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers that describe one hop (or the body we do not send) and never travel with a copy.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "expect",
];

/// One request copy.
#[derive(Debug, Clone)]
pub struct Copy {
    /// Method.
    pub method: http::Method,
    /// Path and query, e.g. `/a?b=c`.
    pub path_and_query: String,
    /// Headers (Host included).
    pub headers: http::HeaderMap,
}

/// Sends mirror copies with bounded concurrency.
#[derive(Clone)]
pub struct Mirror {
    h1: Client<HttpConnector, Empty<Bytes>>,
    h2c: Client<HttpConnector, Empty<Bytes>>,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

impl Mirror {
    /// A mirror client (connections are opened lazily, on the runtime that sends copies).
    pub fn new(metrics: Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let h1 = Client::builder(TokioExecutor::new()).build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self {
            h1,
            h2c,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        }
    }

    /// Sends `copy` to `target` in the background. Returns `false` when the copy was dropped
    /// because too many are in flight.
    pub fn send(&self, target: SocketAddr, h2c: bool, copy: Copy) -> bool {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.mirror_dropped.inc();
            return false;
        };
        let uri = format!("http://{target}{}", copy.path_and_query);
        let mut builder = http::Request::builder().method(copy.method).uri(uri);
        if let Some(h) = builder.headers_mut() {
            for (name, value) in copy.headers.iter() {
                if !HOP_HEADERS.contains(&name.as_str()) {
                    h.append(name.clone(), value.clone());
                }
            }
        }
        let request = match builder.body(Empty::<Bytes>::new()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "mirror copy could not be built");
                return false;
            }
        };
        let client = if h2c {
            self.h2c.clone()
        } else {
            self.h1.clone()
        };
        self.metrics.mirror_sent.inc();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(COPY_TIMEOUT, client.request(request)).await {
                Ok(Ok(resp)) => {
                    // Drain nothing: dropping the response closes or pools the connection.
                    tracing::trace!(status = %resp.status(), %target, "mirror copy answered");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %target, "mirror copy failed"),
                Err(_) => tracing::debug!(%target, "mirror copy timed out"),
            }
        });
        true
    }
}
