//! Access logs and traces of the proxy: a request's access log line holds every field with the
//! right values, sampling 0 writes nothing, hostile paths and hosts stay one valid JSON line;
//! `traceparent` is propagated (kept when valid, replaced when absent or invalid) and the
//! request's spans reach an OTLP/HTTP receiver (a small hyper server here decoding
//! `ExportTraceServiceRequest`) with the caller's span as the parent. Loopback only, every wait
//! bounded.
#![allow(clippy::unwrap_used)]

mod common;
/// Only the trace tests need an OTLP receiver (and its protobuf crates).
#[path = "common/otlp.rs"]
mod otlp;

use std::path::Path;

use common::*;
use meridian_proxy::{
    AccessLogConfig, AccessLogTarget, Http1Path, ProxyConfig, ProxyHandle, TraceConfig,
};
use meridian_test_support::ScratchDir;
use otlp::{attribute, hex, otlp_receiver};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A proxy with `cfg` serving one route `default/r` (rule 0, prefix `/`) to `echo`, whose
/// endpoint is in cluster `c1`, region `eu`, zone `eu-1`.
async fn proxy_to(echo: &Echo, cfg: ProxyConfig) -> (ProxyHandle, u16) {
    let proxy = ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        workers: workers(),
        ..cfg
    })
    .await
    .unwrap();
    let port = free_port();
    let mut endpoint = echo.endpoint();
    endpoint["cluster"] = json!("c1");
    endpoint["region"] = json!("eu");
    endpoint["zone"] = json!("eu-1");
    proxy
        .apply(http_snapshot(
            1,
            port,
            vec![prefix_rule(
                "/",
                vec![backend(&echo.name, 1, vec![endpoint])],
            )],
        ))
        .await
        .unwrap();
    (proxy, port)
}

fn log_to(path: &Path, sample: f64) -> AccessLogConfig {
    AccessLogConfig {
        target: AccessLogTarget::File(path.to_path_buf()),
        sample,
        query: false,
    }
}

/// The lines of the access log at `path` once it has `n` (each parsed as JSON).
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    eventually(&format!("{n} access log lines"), WAIT, || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        (lines.len() >= n).then(|| {
            lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        })
    })
    .await
}

/// One raw HTTP/1.1 request (`head` without the final blank line); the response as bytes.
async fn raw(port: u16, head: &[u8]) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(head).await.unwrap();
    tcp.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn a_request_gets_a_line_with_every_field() {
    every_field(Http1Path::Lean).await;
}

#[tokio::test]
async fn a_request_on_the_own_codec_gets_the_same_line() {
    every_field(Http1Path::Own).await;
}

#[tokio::test]
async fn a_request_on_the_framework_path_gets_the_same_line() {
    every_field(Http1Path::Framework).await;
}

/// One request through a proxy serving HTTP/1 with `path`: its line holds every field.
async fn every_field(path: Http1Path) {
    let dir = ScratchDir::new("accesslog");
    let log = dir.join("access.log");
    let echo = Echo::start("logged").await;
    let (_proxy, port) = proxy_to(
        &echo,
        ProxyConfig {
            access_log: log_to(&log, 1.0),
            http1_path: path,
            locality: meridian_model::locality::Locality {
                cluster: "home".into(),
                region: "us".into(),
                zone: "us-1".into(),
            },
            ..Default::default()
        },
    )
    .await;
    let resp = client()
        .post(format!("http://127.0.0.1:{port}/items/7?token=secret"))
        .header("host", "shop.example")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("authorization", "Bearer hunter2")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();

    let line = lines(&log, 1).await.remove(0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("hunter2"), "a header value leaked: {text}");
    assert!(!text.contains("secret"), "the query leaked: {text}");
    assert_eq!(line["cluster"], "home");
    assert_eq!(line["gateway"], "default/gw");
    assert_eq!(line["listener"], "http");
    assert_eq!(line["route"], "default/r");
    assert_eq!(line["rule"], 0);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "shop.example");
    assert_eq!(line["path"], "/items/7");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], body.len());
    let total = line["duration_ms"].as_f64().unwrap();
    let head = line["upstream_head_ms"].as_f64().unwrap();
    assert!(
        head > 0.0 && head <= total,
        "head {head} ms, total {total} ms"
    );
    assert_eq!(
        line["upstream"],
        json!({"address": echo.addr.to_string(), "cluster": "c1", "region": "eu", "zone": "eu-1"})
    );
    // The only region with endpoints, though not the proxy's: the first tier.
    assert_eq!(line["tier"], 0);
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["failure"], Value::Null);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["trace_id"], TRACE);
    let span = line["span_id"].as_str().unwrap();
    assert!(span.len() == 16 && span != PARENT, "{span}");
    // The time is the request's, in RFC 3339.
    let time: jiff::Timestamp = line["time"].as_str().unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(time);
    assert!(
        age.as_secs_f64() < 60.0 && age.as_secs_f64() >= 0.0,
        "{time}"
    );
    // Upstream the trace goes on with our try's span as the parent.
    let seen = echo.seen().pop().unwrap();
    let up = &seen.headers["traceparent"];
    assert!(up.starts_with(&format!("00-{TRACE}-")), "{up}");
    assert!(!up.contains(PARENT), "{up}");
}

#[tokio::test]
async fn a_failed_request_logs_its_failure_and_attempts() {
    let dir = ScratchDir::new("accesslog-fail");
    let log = dir.join("access.log");
    let proxy = ProxyHandle::start(ProxyConfig {
        access_log: log_to(&log, 1.0),
        workers: workers(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A closed port: every try is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let port = free_port();
    let endpoint = json!({"address": "127.0.0.1", "port": closed.port()});
    proxy
        .apply(http_snapshot(
            1,
            port,
            vec![prefix_rule("/", vec![backend("dead", 1, vec![endpoint])])],
        ))
        .await
        .unwrap();
    let (status, _, _) = get(&client(), port, "/x", &[]).await;
    assert_eq!(status, 503);
    let line = lines(&log, 1).await.remove(0);
    assert_eq!(line["status"], 503);
    assert_eq!(line["failure"], "connect");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["upstream"]["address"], closed.to_string());
    assert_eq!(line["upstream_head_ms"], Value::Null);
}

#[tokio::test]
async fn sampling_zero_writes_no_line() {
    let dir = ScratchDir::new("accesslog-zero");
    let log = dir.join("access.log");
    let echo = Echo::start("unlogged").await;
    let (proxy, port) = proxy_to(
        &echo,
        ProxyConfig {
            access_log: log_to(&log, 0.0),
            ..Default::default()
        },
    )
    .await;
    let c = client();
    for _ in 0..20 {
        let (status, headers, _) = get(&c, port, "/x", &[]).await;
        assert_eq!(status, 200);
        assert!(headers.get("traceparent").is_none());
    }
    assert_eq!(echo.count(), 20);
    // The log is never opened, and with tracing off too the client's headers pass untouched.
    assert!(!log.exists(), "sampling 0 opened the log");
    let (_, _, body) = get(&c, port, "/x", &[("traceparent", "garbage")]).await;
    assert_eq!(body["headers"]["traceparent"], "garbage");
    assert!(!log.exists());
    assert_eq!(
        metric_sum(
            &proxy.metrics_text(),
            "meridian_proxy_access_log_dropped_total"
        ),
        0.0
    );
}

#[tokio::test]
async fn hostile_paths_and_hosts_stay_one_valid_json_line() {
    let dir = ScratchDir::new("accesslog-hostile");
    let log = dir.join("access.log");
    let echo = Echo::start("hostile").await;
    let (_proxy, port) = proxy_to(
        &echo,
        ProxyConfig {
            access_log: log_to(&log, 1.0),
            ..Default::default()
        },
    )
    .await;
    // Requests the HTTP/1 parser refuses (a raw newline ends the line; bytes above 0x7e in
    // the target, DEL in a header) never become requests and get no line: what reaches the
    // log is every byte the parser lets through. Non-UTF-8 bytes become U+FFFD.
    let requests: [&[u8]; 3] = [
        b"GET /a\"b\\c/%0a%0d?x=y HTTP/1.1\r\nHost: h\r\n",
        b"GET /ok HTTP/1.1\r\nHost: h\"o\\st\xff\xfe\r\n",
        b"GET /\"},\"status\":1,\"x\":{\"y\":\" HTTP/1.1\r\nHost: \"evil\"\r\n",
    ];
    for r in requests {
        let resp = raw(port, r).await;
        assert!(
            resp.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
    let lines = lines(&log, requests.len()).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), requests.len(), "{text}");
    assert!(text.ends_with('\n'));
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/a\"b\\c/%0a%0d"), "{paths:?}");
    assert!(
        paths.contains(&"/\"},\"status\":1,\"x\":{\"y\":\""),
        "{paths:?}"
    );
    let hosts: Vec<&str> = lines.iter().map(|l| l["host"].as_str().unwrap()).collect();
    assert!(hosts.contains(&"h\"o\\st\u{fffd}\u{fffd}"), "{hosts:?}");
    assert!(hosts.contains(&"\"evil\""), "{hosts:?}");
    // The injected `"status":1` did not become a field.
    for l in &lines {
        assert_eq!(l["status"], 200, "{l}");
    }
}

/// Spans received by the test's OTLP/HTTP receiver.
#[tokio::test]
async fn spans_reach_the_otlp_receiver_with_the_callers_parent() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Attr;
    let (receiver, spans) = otlp_receiver().await;
    let echo = Echo::start("traced").await;
    let (_proxy, port) = proxy_to(
        &echo,
        ProxyConfig {
            tracing: TraceConfig {
                otlp_endpoint: Some(format!("http://{receiver}")),
            },
            ..Default::default()
        },
    )
    .await;
    let (status, _, body) = get(
        &client(),
        port,
        "/traced",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let upstream = body["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(body["headers"]["tracestate"], "vendor=abc");
    let try_span = upstream.split('-').nth(2).unwrap().to_string();
    assert!(
        upstream.starts_with(&format!("00-{TRACE}-")) && try_span != PARENT,
        "{upstream}"
    );

    let (server, client_span) = eventually("the request's spans at the receiver", WAIT, || {
        let spans = spans.lock().unwrap();
        let server = spans
            .iter()
            .find(|s| hex(&s.parent_span_id) == PARENT)?
            .clone();
        let client = spans
            .iter()
            .find(|s| s.parent_span_id == server.span_id)?
            .clone();
        Some((server, client))
    })
    .await;
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(server.kind, 2, "server kind");
    assert_eq!(server.name, "GET default/r");
    assert_eq!(
        attribute(&server, "http.response.status_code"),
        Some(&Attr::IntValue(200))
    );
    assert_eq!(
        attribute(&server, "meridian.gateway"),
        Some(&Attr::StringValue("default/gw".into()))
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    // The try: its span id is the parent the endpoint saw.
    assert_eq!(hex(&client_span.trace_id), TRACE);
    assert_eq!(hex(&client_span.span_id), try_span);
    assert_eq!(client_span.kind, 3, "client kind");
    assert_eq!(
        attribute(&client_span, "server.port"),
        Some(&Attr::IntValue(i64::from(echo.addr.port())))
    );
    assert_eq!(
        attribute(&client_span, "meridian.endpoint.region"),
        Some(&Attr::StringValue("eu".into()))
    );
    assert_eq!(
        attribute(&client_span, "meridian.tier"),
        Some(&Attr::IntValue(0))
    );
    assert_eq!(
        attribute(&client_span, "http.response.status_code"),
        Some(&Attr::IntValue(200))
    );
}

#[tokio::test]
async fn absent_and_invalid_traceparents_are_replaced() {
    let (receiver, spans) = otlp_receiver().await;
    let echo = Echo::start("replaced").await;
    let (_proxy, port) = proxy_to(
        &echo,
        ProxyConfig {
            tracing: TraceConfig {
                otlp_endpoint: Some(format!("http://{receiver}")),
            },
            ..Default::default()
        },
    )
    .await;
    let c = client();
    let invalid = [
        None,
        Some(format!("00-{TRACE}-{PARENT}")),
        Some(format!("00-{TRACE}-{PARENT}-01-extra")),
        Some(format!("ff-{TRACE}-{PARENT}-01")),
        Some(format!("00-{}-{PARENT}-01", "0".repeat(32))),
        Some(format!("00-{TRACE}-{}-01", "0".repeat(16))),
    ];
    let mut trace_ids = Vec::new();
    for sent in &invalid {
        let mut headers = vec![("tracestate", "vendor=stale")];
        if let Some(tp) = sent {
            headers.push(("traceparent", tp.as_str()));
        }
        let (status, _, body) = get(&c, port, "/x", &headers).await;
        assert_eq!(status, 200);
        let up = body["headers"]["traceparent"].as_str().unwrap();
        assert_ne!(Some(up), sent.as_deref());
        let parts: Vec<&str> = up.split('-').collect();
        assert_eq!(parts.len(), 4, "{up}");
        assert_eq!(parts[0], "00");
        assert!(
            parts[1].len() == 32 && parts[1] != "0".repeat(32) && parts[1] != TRACE,
            "{up}"
        );
        assert!(
            parts[2].len() == 16 && parts[2] != "0".repeat(16) && parts[2] != PARENT,
            "{up}"
        );
        assert_eq!(parts[3], "01", "a new trace is sampled");
        // The tracestate of an invalid parent is not passed on.
        assert!(body["headers"].get("tracestate").is_none(), "{body}");
        trace_ids.push(parts[1].to_string());
    }
    trace_ids.sort();
    trace_ids.dedup();
    assert_eq!(
        trace_ids.len(),
        invalid.len(),
        "every request starts its own trace"
    );
    // Each new trace's request span is a root.
    eventually("a root span per request", WAIT, || {
        let spans = spans.lock().unwrap();
        trace_ids.iter().all(|t| {
            spans
                .iter()
                .any(|s| hex(&s.trace_id) == *t && s.parent_span_id.is_empty() && s.kind == 2)
        })
    })
    .await;
}
