//! W3C trace context and OpenTelemetry spans of the requests a proxy serves.
//!
//! ```text
//! request head ─ traceparent valid? ─ yes: its trace id, its span id as our parent, its sampled
//!              │                        flag; tracestate kept
//!              └ no (absent, wrong length, version ff, all-zero ids, upper-case hex, repeated):
//!                a new trace id, sampled; tracestate dropped (it belongs to the invalid parent)
//!   request span id: new ─ each upstream try: a new span id, sent upstream as
//!   `traceparent: 00-<trace id>-<try span id>-<flags>` (replacing whatever the client sent)
//! logging (end of request) ─ sampled and --otlp-endpoint set? ─ request span (server kind) and
//!   one child span per try (client kind: endpoint, cluster/region/zone, tier, status) handed
//!   to the SDK's batch span processor ─ its own thread, bounded queue (full: span dropped,
//!   the request never waits) ─ OTLP/HTTP protobuf exporter ─ [`HyperExport`]: a hyper client
//!   on the proxy's control runtime
//! ```
//!
//! Spans are recorded as finished `SpanData` when the request ends, not through the SDK's
//! `Tracer`: the proxy already keeps the times and facts of the request and its tries in its
//! context (gateway/ctx.rs), and the ids have to be ours before the first try (they go into the
//! upstream `traceparent`). Everything between the record and the wire is the OpenTelemetry SDK's
//! batch processor and OTLP exporter.
//!
//! Off (no access log, no `--otlp-endpoint`), the proxy does not look at or touch trace headers
//! and a request's context holds nothing for them.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

use meridian_model::locality::Locality;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` passed on (the W3C limit a vendor must accept): a longer one is dropped.
const MAX_TRACESTATE: usize = 512;
/// Spans waiting for export; beyond, new spans are dropped (the SDK counts and logs them).
const QUEUE: usize = 8192;
/// One OTLP request's time limit: a collector that hangs costs the export thread, never requests.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The sampled bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// Trace settings of a proxy ([`crate::ProxyConfig::tracing`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// OTLP/HTTP collector (`http://host:4318`; `/v1/traces` is added to a URL without a
    /// path). `None`: no spans are exported (trace headers are still handled while the access
    /// log is on, so its lines carry trace ids).
    pub otlp_endpoint: Option<String>,
}

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// `--otlp-endpoint` is not an http URL.
    #[error(
        "--otlp-endpoint {0}: not an http:// URL (OTLP over HTTP/protobuf, e.g. http://collector:4318)"
    )]
    Endpoint(String),
    /// The OTLP exporter refuses its settings.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The trace context of one request: where its spans hang and what goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The request's own span.
    pub span_id: [u8; 8],
    /// The caller's span, from a valid incoming `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    /// The incoming `tracestate`, passed on with a valid parent only.
    pub state: Option<String>,
}

impl RequestTrace {
    /// The context of a request with these `traceparent` and `tracestate` header values: the
    /// caller's trace when its `traceparent` is valid (exactly one), else a new sampled trace.
    pub fn from_headers<'a>(
        traceparent: impl Iterator<Item = &'a [u8]>,
        tracestate: impl Iterator<Item = &'a [u8]>,
    ) -> RequestTrace {
        let mut parents = traceparent;
        let parsed = match (parents.next(), parents.next()) {
            (Some(v), None) => parse_traceparent(v),
            _ => None,
        };
        match parsed {
            Some(p) => RequestTrace {
                trace_id: p.trace_id,
                span_id: new_span_id(),
                parent: Some(p.parent),
                flags: p.flags & SAMPLED,
                state: join_tracestate(tracestate),
            },
            None => RequestTrace {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent: None,
                flags: SAMPLED,
                state: None,
            },
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `traceparent` of an upstream try whose span is `span`.
    pub fn traceparent(&self, span: [u8; 8]) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &span);
        let _ = write!(s, "-{:02x}", self.flags);
        s
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

/// A valid `traceparent`'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent: [u8; 8],
    pub flags: u8,
}

/// Parses a `traceparent` value (W3C Trace Context level 1): `version-traceid-parentid-flags`
/// in lower-case hex. Version `ff` is invalid; version `00` is exactly 55 characters; a later
/// version may carry more after a `-`, which is ignored. All-zero ids are invalid.
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let v = value.trim_ascii();
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(v, 0)?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(v, 3 + 2 * i)?;
    }
    let mut parent = [0u8; 8];
    for (i, b) in parent.iter_mut().enumerate() {
        *b = hex_byte(v, 36 + 2 * i)?;
    }
    let flags = hex_byte(v, 53)?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent,
        flags,
    })
}

/// The byte written as two lower-case hex digits at `v[at..at + 2]`.
fn hex_byte(v: &[u8], at: usize) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(*v.get(at)?)? << 4 | digit(*v.get(at + 1)?)?)
}

/// Every `tracestate` value joined by commas (several headers are one list), if it is text and
/// not over the limit.
fn join_tracestate<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut joined = String::new();
    for v in values {
        let v = std::str::from_utf8(v).ok()?.trim();
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    (!joined.is_empty()).then_some(joined)
}

/// A new random span id (never all zero).
pub(crate) fn new_span_id() -> [u8; 8] {
    loop_nonzero(|| rand::random::<u64>().to_be_bytes())
}

fn new_trace_id() -> [u8; 16] {
    loop_nonzero(|| rand::random::<u128>().to_be_bytes())
}

/// `make()` until it is not all zero: at most a few tries (a zero draw is a 2^-64 event).
fn loop_nonzero<const N: usize>(make: impl Fn() -> [u8; N]) -> [u8; N] {
    for _ in 0..8 {
        let id = make();
        if id != [0; N] {
            return id;
        }
    }
    let mut id = [0; N];
    id[N - 1] = 1;
    id
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// One finished span of a request, in the proxy's terms.
pub(crate) struct SpanRecord {
    pub name: Cow<'static, str>,
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    /// The parent is the caller's (remote) span.
    pub remote_parent: bool,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub error: Option<String>,
}

/// The OTLP exporter of a proxy: the SDK's batch span processor in front of the OTLP/HTTP
/// exporter.
pub(crate) struct Exporter {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter to `endpoint` whose HTTP requests run on `runtime` (the proxy's control
    /// runtime); spans carry the proxy's `locality` as resource attributes.
    pub fn start(
        endpoint: &str,
        locality: &Locality,
        runtime: tokio::runtime::Handle,
    ) -> Result<Exporter, TraceError> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(HyperExport::new(runtime))
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let mut attributes = Vec::new();
        for (key, value) in [
            ("meridian.cluster", &locality.cluster),
            ("cloud.region", &locality.region),
            ("cloud.availability_zone", &locality.zone),
        ] {
            if !value.is_empty() {
                attributes.push(KeyValue::new(key, value.clone()));
            }
        }
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name("meridian-proxy")
                .with_attributes(attributes)
                .build(),
        );
        Ok(Exporter {
            processor,
            scope: InstrumentationScope::builder("meridian-proxy").build(),
        })
    }

    /// Queues `span` of the request traced by `trace` (never blocks: a full queue drops it).
    pub fn export(&self, trace: &RequestTrace, span: SpanRecord) {
        let state = trace
            .state
            .as_deref()
            .and_then(|s| TraceState::from_key_value(parse_state(s)).ok())
            .unwrap_or_default();
        let context = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::new(trace.flags),
            false,
            state,
        );
        let status = match span.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        };
        self.processor.on_end(SpanData {
            span_context: context,
            parent_span_id: span.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: span.remote_parent,
            span_kind: span.kind,
            name: span.name,
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Exports what is queued (bounded by the export timeout); the proxy's shutdown calls it.
    pub fn flush(&self) {
        if let Err(e) = self.processor.force_flush() {
            tracing::debug!(error = %e, "spans not flushed");
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.processor.shutdown_with_timeout(Duration::from_secs(2)) {
            tracing::debug!(error = %e, "span exporter shut down with an error");
        }
    }
}

/// `key=value` members of a `tracestate` list (members that are not pairs are skipped).
fn parse_state(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|m| {
            let (k, v) = m.trim().split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The OTLP traces URL for `--otlp-endpoint`: as given when it has a path, else with
/// `/v1/traces`.
pub(crate) fn traces_url(endpoint: &str) -> Result<String, TraceError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| TraceError::Endpoint(endpoint.to_string()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(TraceError::Endpoint(endpoint.to_string()));
    }
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_string(),
    })
}

/// The OTLP exporter's HTTP client: hyper (already the proxy's), with every request run as a
/// task on the proxy's control runtime. The SDK's batch processor drives the exporter from its
/// own thread, outside any runtime; the task's handle can be awaited from there.
#[derive(Debug, Clone)]
pub(crate) struct HyperExport {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HyperExport {
    fn new(runtime: tokio::runtime::Handle) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        HyperExport { runtime, client }
    }
}

#[async_trait::async_trait]
impl HttpClient for HyperExport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let exchange = async {
                let resp = client
                    .request(http::Request::from_parts(parts, Full::new(body)))
                    .await?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(r) => r,
                Err(_) => Err("OTLP request timed out".into()),
            }
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed() {
        let p = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.parent), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
        // A later version may append fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(parse_traceparent(future.as_bytes()).unwrap().flags, 0);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_keeps_a_valid_parent_and_replaces_an_invalid_one() {
        let t = RequestTrace::from_headers(
            [GOOD.as_bytes()].into_iter(),
            [b"a=1".as_slice(), b"b=2".as_slice()].into_iter(),
        );
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_ne!(t.span_id, [0; 8]);
        assert_eq!(t.state.as_deref(), Some("a=1,b=2"));
        let up = t.traceparent([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            up,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert!(parse_traceparent(up.as_bytes()).is_some());

        // Two traceparent headers are no valid parent; the tracestate goes with it.
        let t = RequestTrace::from_headers(
            [GOOD.as_bytes(), GOOD.as_bytes()].into_iter(),
            [b"a=1".as_slice()].into_iter(),
        );
        assert_eq!(t.parent, None);
        assert_eq!(t.state, None);
        assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled());
        assert!(parse_traceparent(t.traceparent(t.span_id).as_bytes()).is_some());
    }

    #[test]
    fn the_traces_url_gets_the_signal_path_when_it_has_none() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/custom/traces").unwrap(),
            "http://c:4318/custom/traces"
        );
        assert!(traces_url("https://c:4318").is_err());
        assert!(traces_url("not a url").is_err());
    }
}
