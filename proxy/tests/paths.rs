//! Path normalisation at the edge, over raw sockets (an HTTP client library would clean the
//! paths up before sending them): spellings of `/admin` that used to match a rule on `/public`
//! reach the admin backend as `/admin`, encoded slashes follow `--escaped-slashes`, malformed
//! escapes get 400 without touching a backend, and URL rewrites and redirects work on the
//! normal form.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use meridian_model::path::{EscapedSlashes, PathNormalization};
use meridian_proxy::{ProxyConfig, ProxyHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for one exchange.
const EXCHANGE: Duration = Duration::from_secs(5);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

/// A response read to the end of the connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `GET {target}` as written (no client-side clean-up) with `Connection: close` and reads
/// the whole answer.
async fn raw_get(port: u16, target: &str) -> Resp {
    tokio::time::timeout(EXCHANGE, async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let req = format!("GET {target} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        Resp {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer to GET {target} within {EXCHANGE:?}"))
}

async fn proxy_with(paths: PathNormalization) -> ProxyHandle {
    ProxyHandle::start(ProxyConfig {
        paths,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `/admin` → admin, `/public` → public, on one listener.
struct Site {
    port: u16,
    admin: Echo,
    public: Echo,
    proxy: ProxyHandle,
}

async fn site(paths: PathNormalization) -> Site {
    let (admin, public) = (Echo::start("admin").await, Echo::start("public").await);
    let port = free_port();
    let proxy = proxy_with(paths).await;
    let rules = vec![
        prefix_rule("/admin", vec![echo_backend(&admin, 1)]),
        prefix_rule("/public", vec![echo_backend(&public, 1)]),
    ];
    proxy.apply(http_snapshot(1, port, rules)).await.unwrap();
    Site {
        port,
        admin,
        public,
        proxy,
    }
}

/// The backend that answered and the path it saw.
fn served(r: &Resp) -> (u16, String, String) {
    let body = r.json();
    (
        r.status,
        body["name"].as_str().unwrap_or("").to_string(),
        body["path"].as_str().unwrap_or("").to_string(),
    )
}

fn ok(backend: &str, path: &str) -> (u16, String, String) {
    (200, backend.to_string(), path.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_admin_reach_the_admin_backend_as_admin() {
    bounded(async {
        let s = site(PathNormalization::default()).await;
        for target in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2e/admin",
            "//admin",
            "/public/./../admin",
            "/public//..//admin",
            "/%61dmin",
        ] {
            let r = raw_get(s.port, target).await;
            assert_eq!(served(&r), ok("admin", "/admin"), "{target}: {r:?}");
        }
        // The query is forwarded untouched (its dots and escapes are not path syntax).
        let r = raw_get(s.port, "/public/%2e%2e/admin/x?next=/../%2e%2e&y=%7e").await;
        assert_eq!(
            served(&r),
            ok("admin", "/admin/x?next=/../%2e%2e&y=%7e"),
            "{r:?}"
        );
        // An absolute-form target is normalised the same way.
        let target = "http://gw.example/public/../admin";
        let r = raw_get(s.port, target).await;
        assert_eq!(served(&r), ok("admin", "/admin"), "{r:?}");
        // None of them reached the public backend; a plain public path still does, and `..`
        // never climbs above the root.
        assert_eq!(s.public.count(), 0, "{:?}", s.public.seen());
        let r = raw_get(s.port, "/public/a/./b/../c").await;
        assert_eq!(served(&r), ok("public", "/public/a/c"), "{r:?}");
        let r = raw_get(s.port, "/../../public").await;
        assert_eq!(served(&r), ok("public", "/public"), "{r:?}");
        assert!(
            s.admin
                .seen()
                .iter()
                .all(|seen| seen.path.starts_with("/admin"))
        );
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_kept_by_default() {
    bounded(async {
        let s = site(PathNormalization::default()).await;
        // Kept encoded (upper-case hex), part of the segment, not a separator.
        let r = raw_get(s.port, "/public/a%2fb").await;
        assert_eq!(served(&r), ok("public", "/public/a%2Fb"), "{r:?}");
        let r = raw_get(s.port, "/public/a%5cb\\c").await;
        assert_eq!(served(&r), ok("public", "/public/a%5Cb%5Cc"), "{r:?}");
        // `public%2F..%2Fadmin` is one segment: it is neither under /public nor /admin.
        let r = raw_get(s.port, "/public%2F..%2Fadmin").await;
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(s.admin.count() + s.public.count(), 2);
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_refused_with_reject() {
    bounded(async {
        let s = site(PathNormalization {
            escaped_slashes: EscapedSlashes::Reject,
            ..Default::default()
        })
        .await;
        for target in ["/public/a%2Fb", "/public/a%5cb", "/public/a\\b"] {
            let r = raw_get(s.port, target).await;
            assert_eq!(r.status, 400, "{target}: {r:?}");
            assert!(r.body.contains("refused"), "{target}: {r:?}");
        }
        // Other escapes are fine.
        let r = raw_get(s.port, "/public/a%20b").await;
        assert_eq!(served(&r), ok("public", "/public/a%20b"), "{r:?}");
        assert_eq!((s.admin.count(), s.public.count()), (0, 1));
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_separators_with_decode() {
    bounded(async {
        let s = site(PathNormalization {
            escaped_slashes: EscapedSlashes::Decode,
            ..Default::default()
        })
        .await;
        for target in [
            "/public%2F..%2Fadmin",
            "/public\\..\\admin",
            "/public%5c%2e%2e/admin",
        ] {
            let r = raw_get(s.port, target).await;
            assert_eq!(served(&r), ok("admin", "/admin"), "{target}: {r:?}");
        }
        let r = raw_get(s.port, "/public/a%2Fb").await;
        assert_eq!(served(&r), ok("public", "/public/a/b"), "{r:?}");
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slashes_not_merged_when_switched_off() {
    bounded(async {
        let s = site(PathNormalization {
            merge_slashes: false,
            ..Default::default()
        })
        .await;
        // `//admin` has an empty first segment: no rule matches it.
        assert_eq!(raw_get(s.port, "//admin").await.status, 404);
        let r = raw_get(s.port, "/public//x/../y").await;
        assert_eq!(served(&r), ok("public", "/public//y"), "{r:?}");
        // Dot segments are still removed.
        let r = raw_get(s.port, "/public/../admin").await;
        assert_eq!(served(&r), ok("admin", "/admin"), "{r:?}");
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_paths_get_400_and_reach_no_backend() {
    bounded(async {
        let s = site(PathNormalization::default()).await;
        for target in ["/public/%zz", "/admin%4", "/public/%", "/public/%g1/x"] {
            let r = raw_get(s.port, target).await;
            assert_eq!(r.status, 400, "{target}: {r:?}");
            assert!(r.body.contains("percent-escape"), "{target}: {r:?}");
            assert_eq!(r.header("connection"), Some("close"), "{target}: {r:?}");
        }
        // `*` is OPTIONS-only.
        assert_eq!(raw_get(s.port, "*").await.status, 400);
        assert_eq!((s.admin.count(), s.public.count()), (0, 0));
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_redirects_work_on_the_normal_form() {
    bounded(async {
        let a = Echo::start("a").await;
        let port = free_port();
        let p = proxy_with(PathNormalization::default()).await;
        let rules = vec![
            json!({"matches": [{"path": {"type": "pathPrefix", "value": "/api"}}],
                   "filters": [{"type": "urlRewrite",
                                "path": {"type": "replacePrefixMatch", "value": "/v2"}}],
                   "backends": [echo_backend(&a, 1)]}),
            json!({"matches": [{"path": {"type": "pathPrefix", "value": "/old"}}],
                   "filters": [{"type": "requestRedirect", "statusCode": 301,
                                "path": {"type": "replacePrefixMatch", "value": "/new"}}]}),
        ];
        p.apply(http_snapshot(1, port, rules)).await.unwrap();
        let r = raw_get(port, "/x/../api//users/%2e/42?q=1").await;
        assert_eq!(served(&r), ok("a", "/v2/users/42?q=1"), "{r:?}");
        let r = raw_get(port, "/old/./a/../%62").await;
        assert_eq!(r.status, 301, "{r:?}");
        assert_eq!(
            r.header("location"),
            Some(format!("http://gw.example:{port}/new/b").as_str()),
            "{r:?}"
        );
        p.shutdown().await;
    })
    .await;
}

#[test]
fn command_line_flags_set_the_path_settings() {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: meridian_proxy::ProxyArgs,
    }

    let defaults = Cli::try_parse_from(["meridian"]).unwrap().proxy;
    assert!(defaults.merge_slashes);
    assert_eq!(defaults.escaped_slashes, EscapedSlashes::Keep);
    let set = Cli::try_parse_from([
        "meridian",
        "--merge-slashes",
        "false",
        "--escaped-slashes",
        "reject",
    ])
    .unwrap()
    .proxy;
    assert!(!set.merge_slashes);
    assert_eq!(set.escaped_slashes, EscapedSlashes::Reject);
    let err = Cli::try_parse_from(["meridian", "--escaped-slashes", "drop"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("keep, reject or decode"), "{err}");
}
