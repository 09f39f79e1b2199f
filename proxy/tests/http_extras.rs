//! Over-the-wire behaviour of the experimental-channel HTTPRoute features: route retries
//! (catalogue §1.6 HTTPRouteRetry, RetryWithTimeouts, RetryConnectionError), the CORS filter
//! (routes C1..C4 of §1.6) on HTTP/1 and h2, and session persistence.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

fn fail(id: &str, n: usize, code: u16) -> Vec<(String, String)> {
    vec![
        ("x-echo-id".into(), id.into()),
        ("x-echo-fail-times".into(), n.to_string()),
        ("x-echo-fail-status".into(), code.to_string()),
    ]
}

async fn get_with(c: &reqwest::Client, port: u16, path: &str, h: &[(String, String)]) -> u16 {
    let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    get(c, port, path, &h).await.0
}

/// Catalogue R2: codes [500, 502, 503, 504], attempts 2 — one failure is retried away, three
/// are not (1 try + 2 retries), for every listed code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_listed_codes_within_two_attempts() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        let mut rule = prefix_rule("/", vec![echo_backend(&a, 1)]);
        rule["retry"] = json!({"attempts": 2, "codes": [500, 502, 503, 504]});
        p.apply(http_snapshot(1, port, vec![rule])).await.unwrap();
        let c = client();
        for code in [500u16, 502, 503, 504] {
            let before = a.count();
            let ok = get_with(&c, port, "/", &fail(&format!("one-{code}"), 1, code)).await;
            assert_eq!(ok, 200, "{code} once");
            assert_eq!(a.count() - before, 2, "{code} once: two tries");
            let before = a.count();
            let bad = get_with(&c, port, "/", &fail(&format!("three-{code}"), 3, code)).await;
            assert_eq!(bad, code, "{code} three times");
            assert_eq!(a.count() - before, 3, "{code} three times: 1 + 2 attempts");
        }
        p.shutdown().await;
    })
    .await;
}

/// The back-off is a minimum pause before each retry; the jitter adds at most half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_is_waited_before_each_retry() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        let mut rule = prefix_rule("/", vec![echo_backend(&a, 1)]);
        rule["retry"] = json!({"attempts": 2, "codes": [500], "backoffMs": 150});
        p.apply(http_snapshot(1, port, vec![rule])).await.unwrap();
        let c = client();
        let started = Instant::now();
        assert_eq!(get_with(&c, port, "/", &fail("b1", 2, 500)).await, 200);
        let took = started.elapsed();
        // Two retries: at least 2 × 150 ms, at most 2 × 225 ms plus the tries themselves.
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        p.shutdown().await;
    })
    .await;
}

/// An HTTP/1 server whose first `slow` requests wait `delay` before answering 200 (each
/// request on its own connection); counts requests.
async fn slow_first_server(slow: usize, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        for _ in 0..1000 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                if c.fetch_add(1, Ordering::SeqCst) < slow {
                    tokio::time::sleep(delay).await;
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, count)
}

/// Catalogue RetryWithTimeouts: attempts 2 with a 200 ms backendRequest timeout and no codes;
/// tries that outlast it are retried: two slow tries then a fast one → 200, three slow → 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_are_retried_within_attempts() {
    bounded(async {
        let port = free_port();
        let p = proxy().await;
        let c = client();
        for (slow, want, tries) in [(2usize, 200u16, 3usize), (3, 504, 3)] {
            let (backend_port, count) = slow_first_server(slow, Duration::from_millis(300)).await;
            let mut rule = prefix_rule(
                "/",
                vec![backend(
                    "slow",
                    1,
                    vec![json!({"address": "127.0.0.1", "port": backend_port})],
                )],
            );
            rule["retry"] = json!({"attempts": 2});
            rule["timeouts"] = json!({"backendRequestMs": 200});
            p.apply(http_snapshot(slow as u64, port, vec![rule]))
                .await
                .unwrap();
            assert_eq!(get(&c, port, "/", &[]).await.0, want, "{slow} slow tries");
            assert_eq!(count.load(Ordering::SeqCst), tries, "{slow} slow tries");
        }
        p.shutdown().await;
    })
    .await;
}

/// Catalogue RetryWithTimeouts, second route: codes [500], attempts 5, backendRequest 200 ms,
/// request 400 ms: the request timeout is the budget of all tries together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_the_budget_of_all_retries() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        let mut rule = prefix_rule("/", vec![echo_backend(&a, 1)]);
        rule["retry"] = json!({"attempts": 5, "codes": [500]});
        rule["timeouts"] = json!({"requestMs": 400, "backendRequestMs": 200});
        p.apply(http_snapshot(1, port, vec![rule])).await.unwrap();
        let c = client();
        assert_eq!(
            get_with(&c, port, "/?delay=100", &fail("w1", 1, 500)).await,
            200
        );
        let started = Instant::now();
        assert_eq!(
            get_with(&c, port, "/?delay=100", &fail("w4", 4, 500)).await,
            504
        );
        assert!(started.elapsed() < Duration::from_millis(900));
        p.shutdown().await;
    })
    .await;
}

/// A request body that was streamed past what the proxy keeps for a replay is never retried;
/// a small one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_replayable_bodies_are_retried() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        let mut rule = prefix_rule("/", vec![echo_backend(&a, 1)]);
        rule["retry"] = json!({"attempts": 2, "codes": [500]});
        p.apply(http_snapshot(1, port, vec![rule])).await.unwrap();
        let c = client();
        let post = |id: &'static str, body: Vec<u8>| {
            c.post(format!("http://127.0.0.1:{port}/"))
                .header("x-echo-id", id)
                .header("x-echo-fail-times", "1")
                .body(body)
                .send()
        };
        let small = post("small", b"hello".to_vec()).await.unwrap();
        assert_eq!(small.status(), 200);
        assert_eq!(a.count(), 2);
        // The retry carried the body again (the echo does not return bodies; its framing shows
        // what was sent).
        assert_eq!(
            a.seen()[1]
                .headers
                .get("content-length")
                .map(String::as_str),
            Some("5")
        );
        let big = post("big", vec![b'x'; 1 << 20]).await.unwrap();
        assert_eq!(big.status(), 500, "a 1 MiB streamed body is not replayed");
        assert_eq!(a.count(), 3);
        p.shutdown().await;
    })
    .await;
}

// --- CORS -------------------------------------------------------------------------------------

/// The catalogue's CORS routes C1..C4u on one listener, to backend `a`.
fn cors_rules(a: &Echo) -> Vec<Value> {
    let rule = |prefix: &str, cors: Value| {
        let mut cors = cors;
        cors["type"] = json!("cors");
        json!({"matches": [{"path": {"type": "pathPrefix", "value": prefix}}],
               "filters": [cors], "backends": [echo_backend(a, 1)]})
    };
    vec![
        rule(
            "/cors-1",
            json!({"allowOrigins": ["https://www.foo.com", "https://*.bar.com"],
                   "allowMethods": ["GET", "OPTIONS"],
                   "allowHeaders": ["x-header-1", "x-header-2"],
                   "exposeHeaders": ["x-header-3", "x-header-4"],
                   "allowCredentials": true, "maxAge": 3600}),
        ),
        rule(
            "/cors-2",
            json!({"allowOrigins": ["https://www.foo.com"], "allowMethods": ["*"]}),
        ),
        rule(
            "/cors-wildcard-origin",
            json!({"allowOrigins": ["*"], "allowMethods": ["PUT"]}),
        ),
        rule(
            "/cors-wildcard-methods-headers-unauth",
            json!({"allowOrigins": ["*"], "allowMethods": ["*"], "allowHeaders": ["*"]}),
        ),
        rule(
            "/cors-wildcard-methods-headers",
            json!({"allowOrigins": ["*"], "allowMethods": ["*"], "allowHeaders": ["*"],
                   "allowCredentials": true}),
        ),
    ]
}

/// A request's answer: status and headers (lower-case names).
async fn send(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap) {
    let mut rb = c.request(method.parse().unwrap(), url);
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let resp = rb.send().await.unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}

fn h<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// A comma-separated header as a sorted set (order and whitespace ignored).
fn set(headers: &reqwest::header::HeaderMap, name: &str) -> Vec<String> {
    let mut v: Vec<String> = h(headers, name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v
}

/// Every CORS expectation of the catalogue, through `c` (HTTP/1.1 or h2).
async fn cors_catalogue(c: &reqwest::Client, port: u16, a: &Echo) {
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let preflight = |origin: &'static str, method: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]
    };
    let before = a.count();
    // C1: exact and wildcard origins (the wildcard spans several labels).
    for origin in [
        "https://www.foo.com",
        "https://www.bar.com",
        "https://xpto.www.bar.com",
    ] {
        let (s, hd) = send(c, "OPTIONS", &url("/cors-1"), &preflight(origin, "GET")).await;
        assert!(s == 200 || s == 204, "{origin}: {s}");
        assert_eq!(h(&hd, "access-control-allow-origin"), Some(origin));
        assert_eq!(set(&hd, "access-control-allow-methods"), ["get", "options"]);
        assert_eq!(
            set(&hd, "access-control-allow-headers"),
            ["x-header-1", "x-header-2"]
        );
        assert_eq!(
            set(&hd, "access-control-expose-headers"),
            ["x-header-3", "x-header-4"]
        );
        assert_eq!(h(&hd, "access-control-max-age"), Some("3600"));
        assert_eq!(h(&hd, "access-control-allow-credentials"), Some("true"));
        assert!(set(&hd, "vary").contains(&"origin".to_string()));
    }
    let (s, hd) = send(
        c,
        "OPTIONS",
        &url("/cors-1"),
        &preflight("https://foobar.com", "GET"),
    )
    .await;
    assert!([200, 204, 403].contains(&s), "{s}");
    assert_eq!(h(&hd, "access-control-allow-origin"), None);
    assert_eq!(h(&hd, "access-control-allow-credentials"), None);
    // Preflights never reach the backend.
    assert_eq!(a.count(), before);

    // C1 actual requests.
    for origin in ["https://www.foo.com", "https://www.bar.com"] {
        let (s, hd) = send(c, "GET", &url("/cors-1"), &[("origin", origin)]).await;
        assert_eq!(s, 200);
        assert_eq!(h(&hd, "access-control-allow-origin"), Some(origin));
        assert_eq!(h(&hd, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            set(&hd, "access-control-expose-headers"),
            ["x-header-3", "x-header-4"]
        );
        assert!(set(&hd, "vary").contains(&"origin".to_string()));
    }
    let (s, hd) = send(
        c,
        "GET",
        &url("/cors-1"),
        &[("origin", "https://foobar.com")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h(&hd, "access-control-allow-origin"), None);

    // C2: methods `*` without credentials.
    let (_, hd) = send(
        c,
        "OPTIONS",
        &url("/cors-2"),
        &preflight("https://www.foo.com", "POST"),
    )
    .await;
    assert!(matches!(
        h(&hd, "access-control-allow-methods"),
        Some("POST" | "*")
    ));
    assert_eq!(
        h(&hd, "access-control-allow-origin"),
        Some("https://www.foo.com")
    );
    assert_eq!(h(&hd, "access-control-allow-credentials"), None);

    // C3: any origin, PUT, no credentials; also with a port in the origin.
    for origin in ["https://foobar.com", "https://foobar.com:12345"] {
        let (_, hd) = send(
            c,
            "OPTIONS",
            &url("/cors-wildcard-origin"),
            &preflight(origin, "PUT"),
        )
        .await;
        assert!(
            matches!(h(&hd, "access-control-allow-origin"), Some(o) if o == origin || o == "*")
        );
        assert_eq!(h(&hd, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(h(&hd, "access-control-allow-credentials"), None);
        let (s, hd) = send(
            c,
            "PUT",
            &url("/cors-wildcard-origin"),
            &[("origin", origin)],
        )
        .await;
        assert_eq!(s, 200);
        assert!(
            matches!(h(&hd, "access-control-allow-origin"), Some(o) if o == origin || o == "*")
        );
    }

    // C4 (credentials): wildcards must be answered with echoes.
    let origin = "https://other.foo.com";
    let (_, hd) = send(
        c,
        "OPTIONS",
        &url("/cors-wildcard-methods-headers"),
        &preflight(origin, "PUT"),
    )
    .await;
    assert_eq!(h(&hd, "access-control-allow-origin"), Some(origin));
    assert_eq!(h(&hd, "access-control-allow-methods"), Some("PUT"));
    assert_eq!(
        set(&hd, "access-control-allow-headers"),
        ["x-header-1", "x-header-2"]
    );
    assert_eq!(h(&hd, "access-control-allow-credentials"), Some("true"));
    let (_, hd) = send(
        c,
        "GET",
        &url("/cors-wildcard-methods-headers"),
        &[("origin", origin)],
    )
    .await;
    assert_eq!(h(&hd, "access-control-allow-origin"), Some(origin));
    assert_eq!(h(&hd, "access-control-allow-credentials"), Some("true"));

    // C4u (no credentials): `*` or echoes, never a credentials header.
    let (_, hd) = send(
        c,
        "OPTIONS",
        &url("/cors-wildcard-methods-headers-unauth"),
        &preflight(origin, "PUT"),
    )
    .await;
    assert!(matches!(h(&hd, "access-control-allow-origin"), Some(o) if o == origin || o == "*"));
    assert!(matches!(
        h(&hd, "access-control-allow-methods"),
        Some("PUT" | "*")
    ));
    let allowed = set(&hd, "access-control-allow-headers");
    assert!(allowed == ["*"] || allowed == ["x-header-1", "x-header-2"]);
    assert_eq!(h(&hd, "access-control-allow-credentials"), None);
    let (_, hd) = send(
        c,
        "GET",
        &url("/cors-wildcard-methods-headers-unauth"),
        &[("origin", origin)],
    )
    .await;
    assert!(matches!(h(&hd, "access-control-allow-origin"), Some(o) if o == origin || o == "*"));
    assert_eq!(h(&hd, "access-control-allow-credentials"), None);

    // An OPTIONS without Access-Control-Request-Method is an ordinary request: proxied.
    let before = a.count();
    let (s, _) = send(
        c,
        "OPTIONS",
        &url("/cors-1"),
        &[("origin", "https://www.foo.com")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(a.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_catalogue_over_http1_and_h2() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy().await;
        p.apply(http_snapshot(1, port, cors_rules(&a)))
            .await
            .unwrap();
        cors_catalogue(&client(), port, &a).await;
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        cors_catalogue(&h2, port, &a).await;
        p.shutdown().await;
    })
    .await;
}

// --- Session persistence ----------------------------------------------------------------------

/// The `name=value` part of the session cookie an answer sets, if any.
fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// A rule to a backend of three echo endpoints with sessions `sp`.
fn sticky_rule(echoes: &[&Echo], sp: Value) -> Value {
    let eps: Vec<Value> = echoes.iter().map(|e| e.endpoint()).collect();
    let mut three = backend("three", 1, eps);
    // One 5xx ejects an endpoint (for a long time: the test must see it stay out).
    three["target"]["failover"] = json!({"outlierDetection": {
        "consecutive5xx": 1, "baseEjectionMs": 60_000}});
    let mut rule = prefix_rule("/", vec![three]);
    rule["sessionPersistence"] = sp;
    rule
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_stick_move_on_ejection_and_ignore_forgeries() {
    bounded(async {
        let (a, b, c3) = (
            Echo::start("a").await,
            Echo::start("b").await,
            Echo::start("c").await,
        );
        let port = free_port();
        let p = proxy().await;
        p.apply(http_snapshot(
            1,
            port,
            vec![sticky_rule(&[&a, &b, &c3], json!({"name": "sid"}))],
        ))
        .await
        .unwrap();
        let c = client();
        let (s, hd, body) = get(&c, port, "/", &[]).await;
        assert_eq!(s, 200);
        let first = body["name"].as_str().unwrap().to_string();
        let cookie = set_cookie(&hd, "sid").expect("the first answer starts a session");
        let raw = hd.get("set-cookie").unwrap().to_str().unwrap();
        assert!(
            raw.contains("HttpOnly") && !raw.contains("Max-Age"),
            "{raw}"
        );
        assert!(!cookie.contains("127.0.0.1"), "opaque token: {cookie}");
        // Twenty requests of the session: the same endpoint, no new cookie.
        for i in 0..20 {
            let (s, hd, body) = get(&c, port, "/", &[("cookie", &cookie)]).await;
            assert_eq!(
                (s, body["name"].as_str()),
                (200, Some(first.as_str())),
                "{i}"
            );
            assert_eq!(set_cookie(&hd, "sid"), None, "{i}");
        }
        // Forged tokens are ignored: normal choice and a fresh cookie, no error.
        let value = cookie.split_once('=').unwrap().1.to_string();
        let mut flipped = value.clone().into_bytes();
        flipped[3] = if flipped[3] == b'0' { b'1' } else { b'0' };
        for forged in [
            format!("sid={}", String::from_utf8(flipped).unwrap()),
            "sid=garbage".to_string(),
            format!("sid={}", "f".repeat(4000)),
        ] {
            let (s, hd, _) = get(&c, port, "/", &[("cookie", &forged)]).await;
            assert_eq!(s, 200);
            assert!(set_cookie(&hd, "sid").is_some(), "{forged}");
        }
        // The session's endpoint is ejected (outlier detection: one 5xx); the next request of
        // the session is served elsewhere and the answer moves the session.
        let (s, _, _) = get(
            &c,
            port,
            "/",
            &[("cookie", &cookie), ("x-echo-status", "503")],
        )
        .await;
        assert_eq!(s, 503);
        let (s, hd, body) = get(&c, port, "/", &[("cookie", &cookie)]).await;
        assert_eq!(s, 200);
        let second = body["name"].as_str().unwrap().to_string();
        assert_ne!(second, first);
        let moved = set_cookie(&hd, "sid").expect("a moved session gets a new cookie");
        for _ in 0..10 {
            let (_, hd, body) = get(&c, port, "/", &[("cookie", &moved)]).await;
            assert_eq!(body["name"].as_str(), Some(second.as_str()));
            assert_eq!(set_cookie(&hd, "sid"), None);
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_sessions_and_permanent_cookies() {
    bounded(async {
        let (a, b) = (Echo::start("a").await, Echo::start("b").await);
        let port = free_port();
        let p = proxy().await;
        let rules = vec![
            json!({"matches": [{"path": {"type": "pathPrefix", "value": "/h"}}],
                   "backends": [backend("two", 1, vec![a.endpoint(), b.endpoint()])],
                   "sessionPersistence": {"name": "x-session", "kind": "Header"}}),
            json!({"matches": [{"path": {"type": "pathPrefix", "value": "/p"}}],
                   "backends": [backend("two", 1, vec![a.endpoint(), b.endpoint()])],
                   "sessionPersistence": {"name": "keep", "permanent": true,
                                          "absoluteTimeoutMs": 3_600_000}}),
        ];
        p.apply(http_snapshot(1, port, rules)).await.unwrap();
        let c = client();
        let (_, hd, body) = get(&c, port, "/h", &[]).await;
        let token = hd.get("x-session").unwrap().to_str().unwrap().to_string();
        let first = body["name"].as_str().unwrap().to_string();
        for _ in 0..20 {
            let (_, _, body) = get(&c, port, "/h", &[("x-session", &token)]).await;
            assert_eq!(body["name"].as_str(), Some(first.as_str()));
        }
        // A token of the /h rule does not steer the /p rule.
        let (_, hd, _) = get(&c, port, "/p", &[("cookie", &format!("keep={token}"))]).await;
        let raw = hd.get("set-cookie").unwrap().to_str().unwrap();
        assert!(
            raw.contains("Max-Age=3600") || raw.contains("Max-Age=3599"),
            "{raw}"
        );
        p.shutdown().await;
    })
    .await;
}
